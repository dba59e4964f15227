"""``python -m benchmarks``: plan the groups, run them in child processes, report."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from . import _impls, _machine, _report

FULL_SHAPES = [(1_000_000, 10), (100_000, 1_000), (8_192, 32_000), (4_096, 128_256)]
QUICK_SHAPES = [(32_768, 10), (512, 32_000)]
# a training step's batch, not the memory-bound regime: per-call overhead, thread start-up
SMALL_SHAPES = [(64, 10), (512, 100), (256, 1_000), (4_096, 64)]
BF16_MIN_CLASSES = 32_000  # "auto" dtypes: bfloat16 too for LLM-vocabulary shapes
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"

NOTES = [
    "- **median, p20–p80**: of the timed calls, back to back per implementation after its "
    "warm-up (one call, two when it takes under 1 s) and one memory-measured call; at most "
    "`--repeats`, at least `--min-repeats`, fewer once past `--budget` seconds (slow peers). "
    "Compile / jit time is excluded (CSV column `setup_s`). Each implementation is set up "
    "right before its block and released after it.",
    "- **× fastest**: median / the fastest implementation's median in the same group. "
    "**× read pass** (forward) / **× read + write pass** (loss + gradient): median / the "
    "limit measured in the same process (short blocks of it run between the implementations' "
    "blocks, so its samples span the group): `np.max` over row blocks of the same "
    "array in `threads` Python threads (the GIL is released), resp. `np.copyto` of it into "
    "a preallocated, already-touched array. *alloc + write* is the same copy into a fresh "
    "`np.empty` (first touch of new pages): what any API that returns a new gradient pays.",
    "- **cpu**: process CPU-seconds per wall-second during the timed calls (2.0 = two "
    "threads busy). **wait**: share of that time some task waited for a CPU "
    "(`/proc/pressure/cpu` some, system-wide; capped at 100% here): high = the machine was "
    "shared, numbers are noisy.",
    "- **peak extra**: `VmHWM − VmRSS` around one call after `gc.collect()` + "
    "`malloc_trim(0)`, with the kernel's peak counter reset (`/proc/self/clear_refs`); "
    "counts NumPy, PyTorch, XLA and C allocations alike, outputs included (the gradient is "
    "1.00× the input). × input = multiple of the logits array's size.",
    "- **err**: forward: max |loss − float64 loss| over the first 256 rows. Loss + gradient: "
    "|mean loss − float64 mean over all rows| / max |N·grad − (softmax − onehot)| over the "
    "first 256 rows. bfloat16 rows compare with the float64 loss of the bfloat16 logits; "
    "PyTorch and JAX return bfloat16 losses for bfloat16 input, crossent float32.",
    "- NumPy and SciPy have no bfloat16 arithmetic: their bfloat16 rows upcast to float32 "
    "inside the timed call. PyTorch tensors share the NumPy array's memory; JAX gets its own "
    "device copy (made before timing).",
]


def _parse_shape(tok: str) -> tuple[int, int, list[str] | None]:
    tok = tok.strip().replace("_", "").lower()
    dtypes = None
    if ":" in tok:
        tok, dt = tok.split(":", 1)
        dtypes = [d for d in dt.split("+") if d]
    try:
        n, c = (int(v) for v in tok.replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {tok!r} is not NxC (e.g. 8192x32000)")
    return n, c, dtypes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark crossent's softmax cross-entropy against NumPy, SciPy, PyTorch "
                    "(eager, torch.compile) and JAX/optax, next to the memory-bandwidth "
                    "limit measured in the same run. Writes a CSV and latest.md.")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: shapes {', '.join(f'{n}x{c}' for n, c in QUICK_SHAPES)}, "
                        "3 repeats, all groups in one child process (about a minute)")
    p.add_argument("--small", action="store_true",
                   help=f"latency run: training-batch shapes "
                        f"{', '.join(f'{n}x{c}' for n, c in SMALL_SHAPES)} (calls of 10 us to "
                        "1 ms: dispatch and thread start-up, not bandwidth), 301 repeats, one "
                        "child; results in the small/ subfolder")
    p.add_argument("--shapes", type=lambda s: [_parse_shape(t) for t in s.split(",") if t],
                   help="comma-separated NxC, optionally NxC:dtype[+dtype] "
                        "(default: 1000000x10,100000x1000,8192x32000,4096x128256)")
    p.add_argument("--dtypes", default="auto",
                   help="comma-separated float32,bfloat16, or 'auto' (float32 everywhere, "
                        f"bfloat16 too where C >= {BF16_MIN_CLASSES}) [default: auto]")
    p.add_argument("--modes", default="fwd,grad",
                   help="fwd (per-example loss), grad (mean loss + gradient) [default: both]")
    p.add_argument("--only", default=None,
                   help="comma-separated implementations (globs allowed, e.g. 'crossent,torch*'); "
                        f"known: {', '.join(_impls.IMPL_NAMES)}. The limit passes always run.")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per implementation at most [default 11; quick 3]")
    p.add_argument("--min-repeats", type=int, default=3,
                   help="timed calls at least, even past the budget [default 3]")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per implementation and group after which it "
                        "stops at --min-repeats [default 5; quick 0.5]")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every library [default: the CPUs this process may use, "
                        f"here {_machine.usable_cpus()}]")
    p.add_argument("--isolate", choices=("group", "none"), default=None,
                   help="'group': a fresh child process per (shape, dtype, mode) group "
                        "(no allocator / first-touch carry-over; default), 'none': one child "
                        "for all groups (default with --quick)")
    p.add_argument("--interleave", action="store_true",
                   help="time round-robin (one call of each implementation per round) instead "
                        "of back-to-back blocks: fairer under drifting load, but on this VM "
                        "it adds page re-faults to every implementation that allocates")
    p.add_argument("--limit-repeats", type=int, default=3,
                   help="limit-pass calls per block between implementations [default 3]")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per child process before it is killed [default 1200; quick 300]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None,
                   help="results folder [default benchmarks/results; "
                        "quick: its quick/ subfolder, which git ignores]")
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    p.add_argument("--render", type=Path, metavar="CSV",
                   help="only re-render the markdown of an existing results CSV (written "
                        "next to it as latest.md) and print it")
    return p


def _select_impls(only: str | None) -> list[str]:
    if not only:
        return list(_impls.IMPL_NAMES)
    pats = [t.strip() for t in only.split(",") if t.strip()]
    bad = [t for t in pats if not any(fnmatch.fnmatchcase(n, t) for n in _impls.IMPL_NAMES)]
    if bad:
        raise SystemExit(f"--only: no implementation matches {', '.join(bad)}; "
                         f"known: {', '.join(_impls.IMPL_NAMES)}")
    # the reused-buffer variant runs with crossent (it is crossent, not a peer)
    pats += ["crossent.out"] if "crossent" in pats else []
    return [n for n in _impls.IMPL_NAMES if any(fnmatch.fnmatchcase(n, t) for t in pats)]


def build_plan(args) -> list[dict]:
    preset = QUICK_SHAPES if args.quick else SMALL_SHAPES if args.small else FULL_SHAPES
    shapes = args.shapes or [(n, c, None) for n, c in preset]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in _impls.MODES:
            raise SystemExit(f"--modes: unknown mode {m!r}; known: {', '.join(_impls.MODES)}")
    chosen = _select_impls(args.only)
    plan = []
    for n, c, dts in shapes:
        if dts is None:
            if args.dtypes == "auto":
                dts = ["float32"] + (["bfloat16"] if c >= BF16_MIN_CLASSES else [])
            else:
                dts = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        for dt in dts:
            if dt not in ("float32", "bfloat16"):
                raise SystemExit(f"dtype {dt!r}: float32 or bfloat16")
            for m in modes:
                impls = [i for i in chosen if i in _impls.available(m)]
                plan.append({"n": n, "c": c, "dtype": dt, "mode": m, "impls": impls})
    return plan


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "CROSSENT_NUM_THREADS"):
        env[var] = str(threads)
    root = str(_machine.REPO_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_child(groups: list[dict], spec: dict, timeout: float) -> tuple[dict, list[dict]]:
    """Run groups in one child process; (env report, group results)."""
    with tempfile.TemporaryDirectory(prefix="crossent-bench-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        out_path = Path(tmp) / "out.jsonl"
        spec_path.write_text(json.dumps({**spec, "groups": groups}))
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks._worker", str(spec_path),
                                 str(out_path)], cwd=_machine.REPO_ROOT,
                                env=_child_env(spec["threads"]), stdout=sys.stderr,
                                start_new_session=True)
        err = None
        try:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                err = f"child process exited with status {rc}" + (
                    " (killed: out of memory?)" if rc in (-9, 137) else "")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its workers
            proc.wait()
            err = f"child process killed after the {timeout:.0f} s timeout"
        env, results = {}, []
        if out_path.exists():
            for line in out_path.read_text().splitlines():
                rec = json.loads(line)
                if "env" in rec:
                    env = rec["env"]
                else:
                    results.append(rec)
    done = {json.dumps(r["group"], sort_keys=True) for r in results}
    for g in groups:
        if json.dumps(g, sort_keys=True) not in done:
            results.append({"group": g, "error": err or "no result from the child process"})
    return env, results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        return render(args.render)
    quick, small = args.quick, args.small
    if quick and small:
        raise SystemExit("--quick and --small are two different presets: choose one")
    threads = args.threads or _machine.usable_cpus()
    repeats = args.repeats or (3 if quick else 301 if small else 11)
    min_repeats = min(args.min_repeats, repeats)
    budget = args.budget if args.budget is not None else (0.5 if quick else 5.0)
    isolate = args.isolate or ("none" if quick or small else "group")
    timeout = args.timeout or (300.0 if quick else 1200.0)
    out_dir = args.output or (DEFAULT_RESULTS / "quick" if quick
                              else DEFAULT_RESULTS / "small" if small else DEFAULT_RESULTS)
    plan = build_plan(args)

    if args.list:
        for g in plan:
            print(f"{g['n']}x{g['c']} {g['dtype']} {g['mode']}: {', '.join(g['impls'])}")
        return 0

    t_start = time.perf_counter()
    machine = _machine.machine_info()
    date = _machine.now_iso()
    load_start = _machine.load_average()
    print(f"crossent benchmarks: {len(plan)} groups, {threads} threads, "
          f"{'one child per group' if isolate == 'group' else 'one child'}; "
          f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}",
          file=sys.stderr, flush=True)
    spec = {"threads": threads, "repeats": repeats, "min_repeats": min_repeats,
            "budget_s": budget, "seed": args.seed, "interleave": args.interleave,
            "limit_repeats": args.limit_repeats}
    env: dict = {}
    results: list[dict] = []
    batches = [[g] for g in plan] if isolate == "group" else [plan]
    for i, batch in enumerate(batches, 1):
        if isolate == "group":
            g = batch[0]
            print(f"[{i}/{len(batches)}] {g['n']}x{g['c']} {g['dtype']} {g['mode']}",
                  file=sys.stderr, flush=True)
        e, res = run_child(batch, spec, timeout)
        env = env or e
        results += res
    wall = time.perf_counter() - t_start
    load_end = _machine.load_average()

    _report.add_ratios([r for r in results if "rows" in r])
    v = env.get("versions", {})
    if argv is None:
        argv = sys.argv[1:]
    meta = {
        "date": date, "git_commit": machine["git_commit"],
        "command": " ".join(["python -m benchmarks", *argv]),
        "run": "quick" if quick else "small" if small else (
            "custom" if (args.shapes or args.only or args.modes != "fwd,grad") else "full"),
        "run_wall_s": wall,
        "run_load_start": " ".join(f"{v_:.2f}" for v_ in load_start),
        "run_load_end": " ".join(f"{v_:.2f}" for v_ in load_end),
        "repeats_max": repeats, "min_repeats": min_repeats, "budget_s": budget,
        "timing": "round-robin" if args.interleave else "back to back per implementation",
        "isolate": ("a fresh child process per group" if isolate == "group"
                    else "one child process for all groups"),
        "cpu_model": machine["cpu_model"], "logical_cpus": machine["logical_cpus"],
        "physical_cores": machine["physical_cores"], "usable_cpus": machine["usable_cpus"],
        "platform": machine["platform"], "thp": machine["thp"], "python": machine["python"],
        **{k: v.get(k, "") for k in ("numpy", "scipy", "ml_dtypes", "torch", "jax", "jaxlib",
                                     "optax", "crossent")},
        "crossent_isa": env.get("crossent_isa", ""),
        "crossent_kernels": env.get("crossent_kernels", ""),
        "torch_cpu_capability": env.get("torch_cpu_capability", ""),
        "threads": threads, "torch_threads": env.get("torch_threads"),
        "torch_interop_threads": env.get("torch_interop_threads"),
        "crossent_threads": env.get("crossent_threads"),
        "xla_flags": env.get("xla_flags", ""), "affinity": env.get("affinity", ""),
    }
    rows = _report.flat_rows(results, meta)

    out_dir.mkdir(parents=True, exist_ok=True)
    if quick and args.output is None:
        (out_dir / ".gitignore").write_text("# smoke runs (python -m benchmarks --quick)\n*\n")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    commit7 = machine["git_commit"][:7] or "nogit"
    csv_path = out_dir / f"{'quick-' if quick else ''}{stamp}-{commit7}.csv"
    _report.write_csv(csv_path, rows)
    # render from the CSV just written: the CSV is the record, the markdown a view of it
    md = _report.markdown(_report.read_csv(csv_path), NOTES)
    md = md.replace("\n\n", f"\n\n- CSV: `{csv_path.name}`\n", 1)
    (out_dir / "latest.md").write_text(md)
    print(md)
    print(f"wrote {csv_path} and {out_dir / 'latest.md'} ({wall:.0f} s)", file=sys.stderr)
    # exit status 1 when crossent itself or a whole group failed (a peer that is not
    # installed or fails is reported in the table, not fatal)
    bad = [r for r in rows if r.get("error") and r.get("impl") in ("crossent", "*")]
    return 1 if bad else 0


def render(csv_path: Path) -> int:
    """Re-render the markdown report of an existing CSV (next to it, as latest.md)."""
    rows = _report.read_csv(csv_path)
    md = _report.markdown(rows, NOTES)
    md = md.replace("\n\n", f"\n\n- CSV: `{csv_path.name}`\n", 1)
    (csv_path.parent / "latest.md").write_text(md)
    print(md)
    return 0
