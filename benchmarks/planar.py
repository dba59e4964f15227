"""``python -m benchmarks.planar``: cross-entropy on ``(N, C, d...)`` logits (segmentation
maps, sequence models' ``(B, V, T)``) — the class axis in the middle, as PyTorch lays them
out — where crossent reads the logits in place (the planar layout of the tile kernels).

Per shape, in one process with the same threads for everyone, each implementation's calls
back to back (``--interleave``: round-robin, one call of each per round):

- fwd: the mean loss. ``crossent`` (NumPy, ``axis=1``), ``crossent.torch``
  (``crossent.torch.cross_entropy``), ``torch`` (``F.cross_entropy`` eager),
  ``torch.compile`` (of the same);
- grad: the mean loss and its gradient. ``crossent`` (``softmax_cross_entropy_value_and_grad``,
  ``axis=1``), ``crossent.out`` (the same into a reused ``out=`` buffer),
  ``crossent.torch`` / ``torch`` / ``torch.compile`` (+ ``torch.autograd.grad``);
- the limits measured in the same run: one read pass over the logits (fwd) and one read +
  write pass into resident pages (grad), in the same number of threads.

    python -m benchmarks.planar                  # the default shapes
    python -m benchmarks.planar --quick          # one small shape, a few seconds
    python -m benchmarks.planar --shapes 8x21x256x256,2x19x512x1024 --threads 2

Round-robin shows what a PyTorch program sees: after a torch op, PyTorch's OpenMP threads
spin for milliseconds (libgomp's default), taking the CPUs crossent's own threads would
use; ``OMP_WAIT_POLICY=passive`` stops that (see the README).

Writes ``planar-<time>-<commit>.csv`` and ``.md`` (median, p20/p80, machine, versions,
threads) into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._machine import load_average, machine_info, now_iso
from ._measure import Cell, LimitPasses, round_robin

DEFAULT_SHAPES = ["8x21x256x256", "4x150x128x128", "2x19x512x1024", "16x10x64x64"]
QUICK_SHAPES = ["4x21x64x64"]
IMPLS = ("crossent", "crossent.out", "crossent.torch", "torch", "torch.compile")


def _parse(shapes: str) -> list[tuple[int, ...]]:
    out = []
    for s in shapes.split(","):
        dims = tuple(int(v) for v in s.lower().split("x"))
        if len(dims) < 3:
            raise SystemExit(f"--shapes: {s!r} needs N x C x d1 [x d2 ...]")
        out.append(dims)
    return out


def _cells(mode: str, x: np.ndarray, y: np.ndarray, threads: int) -> list[Cell]:
    import crossent

    crossent.set_num_threads(threads)
    cells: list[Cell] = []

    def add(name: str, fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> None:
        cell = Cell(name=name, kind="impl", fn=fn)
        if setup is not None:
            t0 = time.perf_counter()
            try:
                setup()
            except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal
                cell.fail(exc)
            cell.setup_s = time.perf_counter() - t0
        cells.append(cell)

    if mode == "fwd":
        add("crossent", lambda: crossent.softmax_cross_entropy(x, y, axis=1, reduction="mean"))
    else:
        out = np.empty_like(x)
        add("crossent", lambda: crossent.softmax_cross_entropy_value_and_grad(
            x, y, axis=1, reduction="mean"))
        add("crossent.out", lambda: crossent.softmax_cross_entropy_value_and_grad(
            x, y, axis=1, reduction="mean", out=out))
    try:
        import torch
        import torch.nn.functional as F

        from crossent.torch import cross_entropy as ce_torch
    except ImportError:
        return cells
    torch.set_num_threads(threads)
    yt = torch.from_numpy(y)
    xt = torch.from_numpy(x)
    compiled = torch.compile(F.cross_entropy, dynamic=False)
    for name, f in (("crossent.torch", ce_torch), ("torch", F.cross_entropy),
                    ("torch.compile", compiled)):
        if mode == "fwd":
            fn = (lambda f=f: f(xt, yt))
        else:
            xg = xt.clone().requires_grad_(True)

            def fn(f=f, xg=xg):
                loss = f(xg, yt)
                (g,) = torch.autograd.grad(loss, xg)
                return loss.detach(), g
        add(name, fn, setup=fn if name == "torch.compile" else None)
    return cells


def run(shapes: list[tuple[int, ...]], threads: int, repeats: int, budget: float,
        interleave: bool = False) -> list[dict]:
    rows = []
    for shape in shapes:
        n, c = shape[0], shape[1]
        rng = np.random.default_rng(0)
        x = (rng.standard_normal(shape, dtype=np.float32) * 2).astype(np.float32)
        y = rng.integers(0, c, (n,) + shape[2:]).astype(np.int64)
        limits = LimitPasses(x.reshape(n, -1), threads)
        try:
            for mode in ("fwd", "grad"):
                cells = _cells(mode, x, y, threads)
                lim = Cell(name="read pass" if mode == "fwd" else "read + write pass", kind="limit",
                           fn=limits.read if mode == "fwd" else limits.read_write)
                for cell in cells + [lim]:
                    if cell.ok:
                        cell.fn()  # warm-up (pages, pools, caches)
                la0 = load_average()[0]
                if interleave:
                    round_robin(cells + [lim], repeats, 3, budget)
                else:
                    for cell in [lim] + cells:
                        round_robin([cell], repeats, 3, budget)
                lim_s = lim.summary()["median_s"]
                for cell in cells + [lim]:
                    s = cell.summary()
                    rows.append({
                        "shape": "x".join(map(str, shape)), "mode": mode, "impl": cell.name,
                        "kind": cell.kind, "threads": threads, **s,
                        "x_limit": (s["median_s"] / lim_s) if s["median_s"] and lim_s else None,
                        "setup_s": cell.setup_s, "error": cell.error, "load_avg": la0,
                    })
                    cell.release()
        finally:
            limits.close()
    return rows


def _fmt(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t * 1e3:.2f} ms" if t >= 1e-3 else f"{t * 1e6:.0f} µs"


def report(rows: list[dict], info: dict, versions: dict, argv: list[str],
           interleave: bool = False) -> str:
    lines = [f"# crossent on (N, C, d...) logits — {now_iso()}", "",
             f"- run: `python -m benchmarks.planar {' '.join(argv)}`, commit `{info['git_commit']}`",
             f"- machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs, "
             f"{info['usable_cpus']} usable; {info['platform']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             f"- threads: {rows[0]['threads'] if rows else '?'} for everyone; timing: "
             + ("round-robin" if interleave else "each implementation's calls back to back")
             + f"; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
             "", "| N×C×d | mode | implementation | median | p20–p80 | × limit | ÷ torch eager |",
             "|---|---|---|---|---|---|---|"]
    eager = {(r["shape"], r["mode"]): r["median_s"] for r in rows if r["impl"] == "torch"}
    for r in rows:
        ref = eager.get((r["shape"], r["mode"]))
        ratio = (r["median_s"] / ref) if ref and r["median_s"] else None
        name = f"*{r['impl']}*" if r["kind"] == "limit" else r["impl"]
        x_limit = "—" if r["x_limit"] is None else f"{r['x_limit']:.2f}"
        vs_eager = "—" if ratio is None else f"{ratio:.2f}"
        lines.append(
            f"| {r['shape']} | {r['mode']} | {name} | {_fmt(r['median_s'])} | "
            f"{_fmt(r['p20_s'])}–{_fmt(r['p80_s'])} | {x_limit} | {vs_eager} |"
            + (f" {r['error']}" if r["error"] else ""))
    lines += ["", "fwd: the mean loss; grad: the mean loss and its gradient. × limit: median over "
              "the read pass (fwd) or the read + write pass (grad) in the same run. "
              "÷ torch eager < 1: faster than `F.cross_entropy`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.planar", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=None, help="comma-separated NxCxd1[xd2...]")
    p.add_argument("--quick", action="store_true", help="one small shape, a few seconds")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per cell")
    p.add_argument("--interleave", action="store_true",
                   help="round-robin: one call of each implementation per round")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    shapes = _parse(a.shapes or ",".join(QUICK_SHAPES if a.quick else DEFAULT_SHAPES))
    rows = run(shapes, a.threads, a.repeats, a.budget, a.interleave)
    info = machine_info()
    import crossent

    versions = {"numpy": np.__version__, "crossent": crossent.__version__,
                "crossent ISA": crossent.show_config(print_out=False)["kernels"]["isa"]}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    md = report(rows, info, versions, argv, a.interleave)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"planar-{time.strftime('%Y%m%d-%H%M%S')}-{info['git_commit'][:7]}"
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    Path(f"{stem}.md").write_text(md)
    print(f"wrote {stem}.csv and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
