"""``python -m benchmarks.eval_files``: ``crossent eval`` on big files, against reading them.

Three measurements, each ``crossent eval`` run in a fresh child process (wall time and the
child's peak RSS from ``wait4``):

1. a ``.npy`` of float32 logits (``--size-gb``, C = ``--classes``) with labels in a second
   ``.npy``: evaluation throughput against the plain read of the same file in the same run
   (sequential ``readinto`` of 16 MB chunks, in a child process too, after a warm-up read
   so that both see the same page cache);
2. a Parquet dataset of the same size (a directory of part files, a fixed-size-list logits
   column and an int64 label column): against the plain read of the same columns with
   ``pyarrow.parquet.ParquetFile.iter_batches`` (decoded, not converted to NumPy);
3. scikit-learn's ``log_loss`` on the largest float64 probability matrix this machine holds
   comfortably (``--sklearn-gb``, default: a fifth of the available memory, at most 2 GB),
   side by side with ``crossent.metrics.Evaluator`` on the same array in memory, and with
   ``crossent eval`` on the same data saved as ``.npy`` (file to number), checking that the
   numbers agree to 1e-9.

Goals (from the issue): throughput >= 70 % of the read speed, peak RSS <= 300 MB, and >= 20x
faster than scikit-learn with the same number to 1e-9.

    python -m benchmarks.eval_files                 # 5 GB files (needs ~12 GB of disk)
    python -m benchmarks.eval_files --size-gb 1 --keep --dir /data/bench
    python -m benchmarks.eval_files --quick         # 0.2 GB, a minute or two

The files are generated in chunks (bounded memory) in ``--dir`` (default: a temporary
directory, removed at the end unless ``--keep``), and reused when they exist with the
same size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GB = 1 << 30
CHUNK = 16 << 20


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def _logits_chunks(n_rows: int, n_classes: int, seed: int = 0, rows_per: int | None = None):
    rng = np.random.default_rng(seed)
    rows_per = rows_per or max(1, (64 << 20) // (4 * n_classes))
    for a in range(0, n_rows, rows_per):
        n = min(rows_per, n_rows - a)
        z = rng.standard_normal((n, n_classes), dtype=np.float32) * np.float32(2.0)
        y = rng.integers(0, n_classes, n)
        z[np.arange(n), y] += np.float32(7.0)  # a model that is right ~70% of the time
        yield a, z, y


def make_npy(path: Path, labels: Path, n_rows: int, n_classes: int) -> None:
    if path.exists() and labels.exists():
        hdr = np.load(path, mmap_mode="r")
        if hdr.shape == (n_rows, n_classes):
            return
    z_out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, n_classes))
    y_out = np.lib.format.open_memmap(labels, mode="w+", dtype=np.int64, shape=(n_rows,))
    for a, z, y in _logits_chunks(n_rows, n_classes):
        z_out[a:a + len(y)] = z
        y_out[a:a + len(y)] = y
        z_out.flush()
    del z_out, y_out


def make_parquet(d: Path, n_rows: int, n_classes: int, part_bytes: int = 512 << 20) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = d / "_rows"
    if marker.exists() and marker.read_text() == f"{n_rows}x{n_classes}":
        return
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    rows_per_part = max(1, part_bytes // (4 * n_classes))
    rg_rows = max(1, (64 << 20) // (4 * n_classes))
    writer = None
    part = 0
    in_part = 0
    for _, z, y in _logits_chunks(n_rows, n_classes, rows_per=rg_rows):
        if writer is None:
            schema = pa.schema([("logits", pa.list_(pa.float32(), n_classes)), ("label", pa.int64())])
            writer = pq.ParquetWriter(d / f"part-{part:05d}.parquet", schema, compression="snappy")
        t = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), n_classes),
                      "label": y})
        writer.write_table(t, row_group_size=rg_rows)
        in_part += len(y)
        if in_part >= rows_per_part:
            writer.close()
            writer, part, in_part = None, part + 1, 0
    if writer is not None:
        writer.close()
    marker.write_text(f"{n_rows}x{n_classes}")


# --------------------------------------------------------------------------------------
# timed child processes
# --------------------------------------------------------------------------------------


# Runs a script or module and then reports the process's own peak RSS (VmHWM). wait4's
# ru_maxrss is not used: on Linux it includes the parent's RSS at fork/exec time.
HWM = """
import runpy, sys
def _hwm():
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kind, target, *rest = sys.argv[1:]
sys.argv = [target, *rest]
code = 0
try:
    if kind == 'module':
        runpy.run_module(target, run_name='__main__', alter_sys=True)
    else:
        exec(compile(target, '<bench>', 'exec'), {'__name__': '__main__'})
except SystemExit as e:
    code = e.code or 0
sys.stdout.flush()
sys.stderr.write(f'\\nVMHWM {_hwm()}\\n')
sys.exit(code)
"""


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``[kind, target, *args]`` through the HWM wrapper (kind: "module" or "code");
    wall seconds, peak RSS (MB) of that process, stdout."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", HWM, *args], capture_output=True,
                       env=dict(os.environ, **(env or {})))
    wall = time.perf_counter() - t0
    err = p.stderr.decode()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({p.returncode}):\n{err}")
    rss = float(err.rsplit("VMHWM", 1)[1].split()[0])
    return {"wall_s": wall, "peak_rss_mb": rss, "stdout": p.stdout.decode()}


READ_NPY = """
import sys, numpy as np
path = sys.argv[1]
buf = np.empty(16 << 20, dtype=np.uint8)
total = 0
with open(path, 'rb') as f:
    while True:
        n = f.readinto(memoryview(buf))
        if not n:
            break
        total += int(buf[:n:4096].sum() >= 0) * n   # touch the data
print(total)
"""

READ_PARQUET = """
import sys, os, pyarrow.parquet as pq
d = sys.argv[1]
rows = 0
for name in sorted(os.listdir(d)):
    if name.endswith('.parquet'):
        pf = pq.ParquetFile(os.path.join(d, name), buffer_size=1 << 20, pre_buffer=False)
        for b in pf.iter_batches(batch_size=4096, columns=['logits', 'label']):
            rows += b.num_rows
print(rows)
"""


def timed_read(kind: str, path: Path) -> dict[str, Any]:
    code = READ_NPY if kind == "npy" else READ_PARQUET
    return run_child(["code", code, str(path)])


def timed_eval(args: list[str]) -> dict[str, Any]:
    r = run_child(["module", "crossent", "eval", *args, "--json", "--no-progress"])
    r["result"] = json.loads(r["stdout"])
    return r


def _dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*.parquet"))


def compare_read(kind: str, data: Path, eval_args: list[str], repeats: int) -> dict[str, Any]:
    size = _dir_bytes(data)
    timed_read(kind, data)  # warm the page cache (both runs see the same cache)
    reads, evals = [], []
    for _ in range(repeats):
        reads.append(timed_read(kind, data))
        evals.append(timed_eval(eval_args))
    read = min(reads, key=lambda r: r["wall_s"])
    ev = min(evals, key=lambda r: r["wall_s"])
    return {
        "bytes": size,
        "read_s": read["wall_s"],
        "read_gb_s": size / read["wall_s"] / 1e9,
        "read_rss_mb": read["peak_rss_mb"],
        "eval_s": ev["wall_s"],
        "eval_gb_s": size / ev["wall_s"] / 1e9,
        "eval_rss_mb": max(e["peak_rss_mb"] for e in evals),
        "ratio": read["wall_s"] / ev["wall_s"],
        "cross_entropy": ev["result"]["cross_entropy"],
        "n": ev["result"]["n"],
    }


# --------------------------------------------------------------------------------------
# scikit-learn
# --------------------------------------------------------------------------------------


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * GB


def compare_sklearn(d: Path, size_gb: float, n_classes: int) -> dict[str, Any]:
    try:
        from sklearn.metrics import log_loss
    except ImportError:
        return {"skipped": "scikit-learn is not installed (pip install scikit-learn)"}
    from crossent.metrics import Evaluator

    n_rows = max(1000, int(size_gb * GB) // (8 * n_classes))
    rng = np.random.default_rng(1)
    probs = np.empty((n_rows, n_classes))
    y = rng.integers(0, n_classes, n_rows)
    step = max(1, (64 << 20) // (8 * n_classes))
    for a in range(0, n_rows, step):
        z = rng.standard_normal((min(step, n_rows - a), n_classes)) * 2.0
        z[np.arange(len(z)), y[a:a + len(z)]] += 2.5
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        probs[a:a + len(z)] = z
    kw = ({"y_proba": probs} if "y_proba" in log_loss.__code__.co_varnames else {})
    t0 = time.perf_counter()
    ref = log_loss(y, **kw) if kw else log_loss(y, probs)
    t_sk = time.perf_counter() - t0
    Evaluator(input="probs").update(probs[:1000], y[:1000])  # imports, thread pool
    ev = Evaluator(input="probs")
    t0 = time.perf_counter()
    ev.update(probs, y)
    ours = ev.result().cross_entropy
    t_ours = time.perf_counter() - t0
    np.save(d / "sk_probs.npy", probs)
    np.save(d / "sk_labels.npy", y)
    del probs
    t0 = time.perf_counter()
    cli = timed_eval([str(d / "sk_probs.npy"), "--labels", str(d / "sk_labels.npy"),
                      "--input", "probs"])
    return {
        "shape": [n_rows, n_classes],
        "gb": n_rows * n_classes * 8 / GB,
        "sklearn_s": t_sk,
        "crossent_s": t_ours,
        "speedup": t_sk / t_ours,
        "cli_s": cli["wall_s"],
        "cli_speedup": t_sk / cli["wall_s"],
        "sklearn_log_loss": ref,
        "crossent_cross_entropy": ours,
        "cli_cross_entropy": cli["result"]["cross_entropy"],
        "rel_diff": abs(ours - ref) / ref,
        "cli_rel_diff": abs(cli["result"]["cross_entropy"] - ref) / ref,
    }


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> str:
    lines = [f"# crossent eval on big files ({res['machine']})", ""]
    lines.append("| input | size | plain read | crossent eval | eval / read speed | "
                 "peak RSS eval (read) | n | cross-entropy |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name in ("npy", "parquet"):
        r = res.get(name)
        if not r:
            continue
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |||||||")
            continue
        ok = "✓" if r["ratio"] >= 0.7 else "✗"
        okm = "✓" if r["eval_rss_mb"] <= 300 else "✗"
        lines.append(
            f"| {name} | {r['bytes'] / GB:.2f} GiB | {r['read_s']:.2f} s ({r['read_gb_s']:.2f} GB/s)"
            f" | {r['eval_s']:.2f} s ({r['eval_gb_s']:.2f} GB/s) | {100 * r['ratio']:.0f} % {ok}"
            f" | {r['eval_rss_mb']:.0f} MB {okm} ({r['read_rss_mb']:.0f} MB) | {r['n']:,}"
            f" | {r['cross_entropy']:.10f} |")
    sk = res.get("sklearn")
    if sk:
        lines.append("")
        if "skipped" in sk:
            lines.append(f"scikit-learn: skipped ({sk['skipped']})")
        else:
            lines.append(
                f"scikit-learn `log_loss` on {sk['shape'][0]:,} x {sk['shape'][1]} float64 "
                f"probabilities ({sk['gb']:.2f} GiB, in memory): {sk['sklearn_s']:.2f} s; "
                f"`crossent.metrics.Evaluator` (every figure, not just the loss): "
                f"{sk['crossent_s']:.3f} s = **{sk['speedup']:.1f}x** "
                f"({'✓' if sk['speedup'] >= 20 else '✗'} goal 20x); `crossent eval` on the "
                f"same data as .npy (process start and file read included): {sk['cli_s']:.2f} s"
                f" = {sk['cli_speedup']:.1f}x. Same number: |Δ|/loss = {sk['rel_diff']:.1e} "
                f"(in memory), {sk['cli_rel_diff']:.1e} (CLI) "
                f"({'✓' if max(sk['rel_diff'], sk['cli_rel_diff']) <= 1e-9 else '✗'} 1e-9).")
    lines.append("")
    lines.append(f"CPUs {res['cpus']}, load average at start {res['load']}. Each figure: "
                 f"the fastest of {res['repeats']} runs, each in a fresh process after a "
                 "warm-up read (page cache warm for both).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.eval_files",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=5.0, help="size of each file (default 5)")
    ap.add_argument("--classes", type=int, default=1000, help="classes (default 1000)")
    ap.add_argument("--quick", action="store_true", help="0.2 GB files, one repeat")
    ap.add_argument("--dir", type=Path, help="where to put the files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sklearn-gb", type=float,
                    help="size of the scikit-learn comparison (default: min(2, RAM/5) GB)")
    ap.add_argument("--skip", default="", help="comma-separated: npy,parquet,sklearn")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if args.quick:
        args.size_gb, args.repeats = min(args.size_gb, 0.2), 1
        args.sklearn_gb = args.sklearn_gb or 0.1
    skip = set(filter(None, args.skip.split(",")))
    tmp = None
    d = args.dir
    if d is None:
        tmp = tempfile.mkdtemp(prefix="crossent-eval-bench-")
        d = Path(tmp)
    d.mkdir(parents=True, exist_ok=True)
    n_rows = max(1, int(args.size_gb * GB) // (4 * args.classes))
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "repeats": args.repeats,
        "size_gb": args.size_gb,
        "classes": args.classes,
    }
    try:
        if "npy" not in skip:
            print(f"generating {n_rows:,} x {args.classes} float32 logits (.npy) ...", file=sys.stderr)
            make_npy(d / "logits.npy", d / "labels.npy", n_rows, args.classes)
            print("timing .npy ...", file=sys.stderr)
            res["npy"] = compare_read("npy", d / "logits.npy",
                                      [str(d / "logits.npy"), "--labels", str(d / "labels.npy"),
                                       "--input", "logits"], args.repeats)
            if not args.keep:
                (d / "logits.npy").unlink()
        if "parquet" not in skip:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                res["parquet"] = {"skipped": "pyarrow is not installed"}
            else:
                print("generating the Parquet dataset ...", file=sys.stderr)
                make_parquet(d / "parquet", n_rows, args.classes)
                print("timing Parquet ...", file=sys.stderr)
                res["parquet"] = compare_read("parquet", d / "parquet",
                                              [str(d / "parquet"), "--input", "logits"],
                                              args.repeats)
        if "sklearn" not in skip:
            gb = args.sklearn_gb or min(2.0, _available_bytes() / 5 / GB)
            print(f"scikit-learn comparison ({gb:.2f} GB) ...", file=sys.stderr)
            res["sklearn"] = compare_sklearn(d, gb, 100)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    text = report(res)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
