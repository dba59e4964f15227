"""Fused linear + cross-entropy: crossent vs PyTorch's chunked path vs the naive path.

Run from the repository root::

    python -m benchmarks.linear_cross_entropy            # the issue's sizes (slow on a CPU)
    python -m benchmarks.linear_cross_entropy --quick    # a smoke run, about a minute
    python benchmarks/linear_cross_entropy.py --help

The README's table was made with one thread on one core::

    taskset -c 1 python -m benchmarks.linear_cross_entropy --threads 1 --max-gib 12 \
        --out benchmarks/results

Each (size, dtype, method) runs in a fresh child process: it builds ``h`` (N, H),
``W`` (V, H) (both requiring grad) and the targets, then times one forward + backward of

- ``crossent``: ``crossent.torch.linear_cross_entropy(h, W, y)`` (default chunking),
- ``torch chunked``: ``F.linear_cross_entropy(h, W, y, options=LinearCrossEntropyOptions())``,
- ``naive``: ``F.cross_entropy(F.linear(h, W), y)``.

Peak extra memory is the kernel's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` after ``gc`` + ``malloc_trim``) minus the RSS before the call
(inputs and parameters) minus the bytes of the gradients (``h.grad``, ``W.grad``): what the
method needs beyond the inputs, the parameters and their gradients. A case whose naive
logits would not fit in the available memory is skipped and says so.

``--threads T`` sets ``torch.set_num_threads(T)`` (and ``OMP_NUM_THREADS``,
``CROSSENT_NUM_THREADS``) in every child; ``--out DIR`` writes the table with the machine,
versions, command and threads to ``DIR/linear_cross_entropy-<time>.md`` and the rows to a
``.csv`` next to it.

Timings on a shared machine are noisy: the table prints the load average next to each row,
and ``--repeat`` runs every case several times (a fresh process each, the methods
round-robin so that drifting background load hits them alike) and reports the median and
the fastest run.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

METHODS = ("crossent", "torch chunked", "naive")
FULL_SIZES = [(4096, 1024, 65536), (4096, 2048, 65536), (4096, 1024, 131072), (4096, 2048, 131072)]
QUICK_SIZES = [(1024, 512, 16384)]
DTYPES = ("float32", "bfloat16")


# ----------------------------------------------------------------------------- child side


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    return out


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # pragma: no cover - old kernels, some containers
        return False


def _child(method: str, n: int, h_dim: int, v: int, dtype_name: str, seed: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    if threads > 0:
        torch.set_num_threads(threads)

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    from crossent.torch._linear import linear_cross_entropy

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, h_dim, generator=g, dtype=dtype) * (h_dim**-0.5)).requires_grad_()
    W = (torch.randn(v, h_dim, generator=g, dtype=dtype) * 0.02).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    y[::17] = -100  # some ignored tokens (padding), as in real batches

    if method == "crossent":

        def run() -> Any:
            return linear_cross_entropy(h, W, y)

    elif method == "torch chunked":
        opts = torch.nn.LinearCrossEntropyOptions()

        def run() -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return F.linear_cross_entropy(h, W, y, options=opts)

    elif method == "naive":

        def run() -> Any:
            return F.cross_entropy(F.linear(h, W), y)

    else:
        raise SystemExit(f"unknown method {method!r}")

    # warm-up on a tiny problem: library loading and one-time initialisation stay out of
    # the time and the memory of the measured call
    h_full, W_full, y_full = h, W, y
    h = h_full[:16].detach().requires_grad_()
    W = W_full[:64].detach().requires_grad_()
    y = torch.randint(0, 64, (16,), generator=g)
    run().backward()
    h, W, y = h_full, W_full, y_full
    del h_full, W_full, y_full

    _trim()
    before = _status()["VmRSS"]
    exact = _reset_peak()
    t0 = time.perf_counter()
    loss = run()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    peak = _status()["VmHWM"]
    assert h.grad is not None and W.grad is not None
    grads = h.grad.numel() * h.grad.element_size() + W.grad.numel() * W.grad.element_size()
    return {
        "forward_s": t1 - t0,
        "total_s": t2 - t0,
        "extra_bytes": peak - before - grads,
        "peak_exact": exact,
        "loss": float(loss.detach().float()),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------- parent side


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # pragma: no cover


def _estimate_bytes(method: str, n: int, h: int, v: int, dtype: str) -> int:
    """Rough peak of one case (inputs + gradients + working set), to skip what cannot fit."""
    isz = 4 if dtype == "float32" else 2
    base = 2 * (n * h + v * h) * isz
    if method == "naive":
        return base + 4 * n * v * isz
    if method == "torch chunked":
        return base + 3 * v * h * 4 + 256 * 2**20
    return base + 256 * 2**20


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    if threads > 0:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CROSSENT_NUM_THREADS"):
            env[k] = str(threads)
    return env


def _run_case(
    method: str, n: int, h: int, v: int, dtype: str, seed: int, timeout: float, threads: int
) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", method,
        str(n), str(h), str(v), dtype, str(seed), str(threads),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(threads)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_s(t: float) -> str:
    return f"{t:.1f}" if t >= 10 else f"{t:.3g}"


def _fmt_mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one small size (smoke run)")
    p.add_argument("--sizes", help="comma-separated NxHxV, e.g. 4096x1024x65536")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="float32,bfloat16")
    p.add_argument("--methods", default=",".join(METHODS), help=",".join(METHODS))
    p.add_argument("--repeat", type=int, default=1, help="fresh-process runs per case (median)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch's default)")
    p.add_argument("--max-gib", type=float, default=0.0,
                   help="skip cases estimated above this many GiB (default: 90%% of available memory)")
    p.add_argument("--out", help="write a markdown table and a CSV here (a directory)")
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        method, n, h, v, dtype, seed, threads = args.child
        print(json.dumps(_child(method, int(n), int(h), int(v), dtype, int(seed), int(threads))))
        return 0

    sizes: list
    if args.sizes:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    out = _Output(args, argv)
    out.emit(f"# linear + cross-entropy, forward + backward, {os.cpu_count()} CPUs, "
             f"{_available_bytes() / 2**30:.1f} GiB available at start")  # fmt: skip
    out.emit(f"# {args.repeat} fresh-process run(s) per case, round-robin; time = median "
             "forward + backward, min = fastest run; memory = median peak extra; goals (crossent "
             "rows): memory <= 10 % of naive and <= torch chunked, time <= naive and < torch "
             "chunked")  # fmt: skip
    out.emit("")
    out.emit("| N | H | V | dtype | method | time (s) | min (s) | fwd (s) | peak extra (MiB) | "
             "vs naive memory | vs naive time | goals | loss | load avg |")  # fmt: skip
    out.emit("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for n, h, v in sizes:
        for dtype in dtypes:
            runs: dict = {m: [] for m in methods}
            skipped: dict = {}
            for method in methods:
                need = _estimate_bytes(method, n, h, v, dtype)
                limit = args.max_gib * 2**30 if args.max_gib > 0 else 0.9 * _available_bytes()
                if need > limit:
                    skipped[method] = f"not run: needs ~{need / 2**30:.1f} GiB (limit {limit / 2**30:.0f} GiB)"
            # round-robin repeats: background load drifts hit every method alike
            for _ in range(args.repeat):
                for method in methods:
                    if method not in skipped:
                        runs[method].append(
                            _run_case(method, n, h, v, dtype, args.seed, args.timeout, args.threads)
                        )
            rows = {}
            for method in methods:
                ok = [r for r in runs[method] if "error" not in r]
                if method in skipped or not ok:
                    rows[method] = {"error": skipped.get(method) or runs[method][0]["error"]}
                    continue
                rows[method] = {
                    "total_s": statistics.median(r["total_s"] for r in ok),
                    "min_s": min(r["total_s"] for r in ok),
                    "forward_s": statistics.median(r["forward_s"] for r in ok),
                    "extra_bytes": statistics.median(r["extra_bytes"] for r in ok),
                    "loss": ok[0]["loss"],
                    "load": os.getloadavg()[0],
                    "runs": ok,
                }
            naive = rows.get("naive", {})
            for method in methods:
                r = rows[method]
                results.append({"N": n, "H": h, "V": v, "dtype": dtype, "method": method, **r})
                out.row(results[-1])
                if "error" in r:
                    out.emit(f"| {n} | {h} | {v} | {dtype} | {method} | — | — | — | — | — | — | — | — | {r['error']} |")
                    continue
                vs_mem = vs_t = "—"
                if "extra_bytes" in naive and naive["extra_bytes"] > 0:
                    vs_mem = f"{100 * r['extra_bytes'] / naive['extra_bytes']:.1f} %"
                    vs_t = f"{r['total_s'] / naive['total_s']:.2f}×"
                goals = _goals(r, rows) if method == "crossent" else ""
                out.emit(
                    f"| {n} | {h} | {v} | {dtype} | {method} | {_fmt_s(r['total_s'])} | "
                    f"{_fmt_s(r['min_s'])} | {_fmt_s(r['forward_s'])} | {_fmt_mib(r['extra_bytes'])} | {vs_mem} | {vs_t} | "
                    f"{goals} | {r['loss']:.6g} | {r['load']:.1f} |"
                )
    out.emit("")
    out.emit(f"Finished {_machine_module().now_iso()}; load average at the end "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _goals(r: dict, rows: dict) -> str:
    """The issue's goals for a crossent row: memory <= 10 % of naive and <= torch chunked;
    time <= naive and < torch chunked (a peer that did not run counts as met)."""
    naive, chunked = rows.get("naive", {}), rows.get("torch chunked", {})
    mem = time_ = True
    if "extra_bytes" in naive:
        mem &= r["extra_bytes"] <= 0.10 * naive["extra_bytes"]
        time_ &= r["total_s"] <= naive["total_s"]
    if "extra_bytes" in chunked:
        mem &= r["extra_bytes"] <= chunked["extra_bytes"]
        time_ &= r["total_s"] < chunked["total_s"]
    return f"memory {'met' if mem else '**missed**'}, time {'met' if time_ else '**missed**'}"


def _machine_module() -> Any:
    try:
        from benchmarks import _machine
    except ImportError:  # run as a script: benchmarks/ is not a package on sys.path
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from benchmarks import _machine
    return _machine


def _versions() -> str:
    out = []
    for name in ("torch", "numpy"):
        try:
            mod = __import__(name)
            out.append(f"{name} {mod.__version__}")
        except ImportError:  # pragma: no cover
            pass
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    sys.path.insert(0, src)
    try:
        import crossent

        out.append(f"crossent {crossent.__version__} ({os.path.dirname(crossent.__file__)})")
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    finally:
        sys.path.remove(src)
    return ", ".join(out)


class _Output:
    """Prints the table; with ``--out`` also writes it (markdown, with the machine, versions,
    command and threads) and the rows (CSV), updated after every row."""

    def __init__(self, args: Any, argv: Any) -> None:
        self.lines: list = []
        self.rows: list = []
        self.md = self.csv = None
        if not args.out:
            return
        mach = _machine_module()
        info = mach.machine_info()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        os.makedirs(args.out, exist_ok=True)
        self.md = os.path.join(args.out, f"linear_cross_entropy-{stamp}.md")
        self.csv = os.path.join(args.out, f"linear_cross_entropy-{stamp}.csv")
        cmd = " ".join(["python -m benchmarks.linear_cross_entropy", *(sys.argv[1:] if argv is None else argv)])
        try:
            affinity = sorted(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            affinity = []
        threads = args.threads if args.threads > 0 else "torch's default"
        self.header = [
            f"# Fused linear + cross-entropy: crossent vs PyTorch — {mach.now_iso()}",
            "",
            f"- command: `{cmd}` (CSV: `{os.path.basename(self.csv)}`)",
            f"- machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs; this run pinned "
            f"to CPUs {affinity}; {info['platform']}; {_available_bytes() / 2**30:.1f} GiB available",
            f"- threads: {threads} (torch.set_num_threads and OMP/MKL/CROSSENT_NUM_THREADS in every child)",
            f"- versions: python {info['python']}, {_versions()}; commit `{info['git_commit']}`",
            f"- load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
            "(other processes share the machine: timings are noisy)",
            "- memory: peak RSS of forward + backward beyond inputs, parameters and their gradients",
            "",
        ]

    def emit(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)
        if self.md:
            with open(self.md, "w") as f:
                f.write("\n".join(self.header + self.lines) + "\n")

    def row(self, r: dict) -> None:
        if not self.csv:
            return
        self.rows.append({k: v for k, v in r.items() if k != "runs"})
        keys = ["N", "H", "V", "dtype", "method", "total_s", "min_s", "forward_s", "extra_bytes",
                "loss", "load", "error"]  # fmt: skip
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in self.rows:
                w.writerow({k: row.get(k, "") for k in keys})


if __name__ == "__main__":
    sys.exit(main())
