"""One child process: ``python -m benchmarks._worker SPEC.json OUT.jsonl``.

It pins itself to ``threads`` CPUs and sets every library's thread count *before*
importing PyTorch or JAX (XLA sizes its CPU thread pool from the process's CPU affinity;
there is no XLA flag that limits it reliably), then runs each (shape, dtype, mode) group of
the spec and appends one JSON line per group to OUT.jsonl (so a crash loses only the group
it happened in).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
import traceback

K_ROWS = 256  # rows of the float64 accuracy reference


_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"  {time.perf_counter() - _T0:6.1f}s {msg}", file=sys.stderr, flush=True)


def _pin(threads: int) -> list[int]:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return []


def _env_report(threads: int, cpus: list[int]) -> dict:
    import crossent

    env: dict = {"threads": threads, "affinity": cpus,
                 "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}
    versions = {}
    for dist in ("numpy", "scipy", "ml_dtypes", "torch", "jax", "jaxlib", "optax", "crossent"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = ""
    env["versions"] = versions
    k = crossent.show_config(print_out=False)["kernels"]
    env["crossent_isa"] = k["isa"] or ""
    env["crossent_kernels"] = "enabled" if k["enabled"] else ("built, disabled" if k["built"]
                                                               else "not built")
    env["crossent_threads"] = crossent.get_num_threads()
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["torch_interop_threads"] = torch.get_num_interop_threads()
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if "jax" in sys.modules:
        import jax

        env["jax_devices"] = [str(d) for d in jax.devices()]
    return env


def make_data(n: int, c: int, dtype: str, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c), dtype=np.float32)
    x *= 2.0
    if dtype == "bfloat16":
        import ml_dtypes

        x = x.astype(ml_dtypes.bfloat16)
    elif dtype != "float32":
        x = x.astype(dtype)
    y = rng.integers(0, c, size=n, dtype=np.int64)
    return x, y


def _setup(cell, name: str, mode: str, x, y, threads: int, tag: str) -> None:
    from . import _impls

    try:
        fn, setup_s, note = _impls.SETUPS[name](mode, x, y, threads)
        cell.fn, cell.setup_s, cell.note = fn, setup_s, note
    except Exception as exc:  # noqa: BLE001 - a missing or failing peer is reported
        cell.fail(exc)
        _log(f"{tag} {name}: setup failed: {cell.error}")


def _prepare(cell, mode: str, refs: tuple, n: int, tag: str) -> None:
    """Warm up (one call, two when it is fast), then one memory-measured call, which also
    gives the accuracy. A failure removes the cell from the timings."""
    from . import _impls, _measure

    if not cell.ok:
        return
    try:
        t0 = time.perf_counter()
        cell.fn()
        cell.first_s = time.perf_counter() - t0
        if cell.first_s < 1.0:
            cell.fn()
        out, _, cell.peak_bytes = _measure.peak_call(cell.fn)
        if cell.kind == "impl":
            cell.acc_loss, cell.acc_grad = _impls.accuracy(mode, out, *refs, n)
        del out
    except Exception as exc:  # noqa: BLE001
        cell.fail(exc)
        _log(f"{tag} {cell.name}: failed: {cell.error}")


def _time_block(cell, repeats: int, min_repeats: int, budget_s: float) -> None:
    """Back-to-back timed calls: ``repeats``, or ``min_repeats`` once past ``budget_s``."""
    from . import _measure

    spent = 0.0
    while cell.ok and len(cell.times) < repeats:
        try:
            _measure.timed_call(cell)
        except Exception as exc:  # noqa: BLE001
            cell.fail(exc)
            break
        spent += cell.times[-1]
        if len(cell.times) >= min_repeats and spent >= budget_s:
            break


def run_group(group: dict, spec: dict) -> dict:
    from . import _impls, _measure
    from ._machine import load_average

    n, c, dtype, mode = group["n"], group["c"], group["dtype"], group["mode"]
    threads = spec["threads"]
    interleave = spec.get("interleave", False)
    tag = f"[{n}x{c} {dtype} {mode}]"
    t_group = time.perf_counter()
    load0 = load_average()[0]
    x, y = make_data(n, c, dtype, spec["seed"])
    _log(f"{tag} data ready ({x.nbytes / 2**20:.0f} MiB, {time.perf_counter() - t_group:.1f} s)")

    refs = (*_impls.reference_rows(x, y, K_ROWS),
            _impls.reference_mean(x, y) if mode == "grad" else None)

    limits = _measure.LimitPasses(x, threads)
    lim_cells = [_measure.Cell("read", "limit", limits.read,
                               f"read pass: np.max over row blocks, {threads} threads")]
    if mode == "grad":
        lim_cells.append(_measure.Cell("read+write", "limit", limits.read_write,
                                       f"read+write: np.copyto into a preallocated array, "
                                       f"{threads} threads"))
        lim_cells.append(_measure.Cell("alloc+write", "limit", limits.alloc_write,
                                       f"alloc+write: np.copyto into a fresh np.empty, "
                                       f"{threads} threads (first touch)"))
    for lc in lim_cells:
        _prepare(lc, mode, refs, n, tag)
    impl_cells = [_measure.Cell(name, "impl", None, _impls.LABELS[(mode, name)])
                  for name in group["impls"]]

    def limit_block():
        for lc in lim_cells:
            for _ in range(spec["limit_repeats"]):
                if lc.ok:
                    try:
                        _measure.timed_call(lc)
                    except Exception as exc:  # noqa: BLE001
                        lc.fail(exc)

    if interleave:
        for cell in impl_cells:
            _setup(cell, cell.name, mode, x, y, threads, tag)
            _prepare(cell, mode, refs, n, tag)
        _measure.round_robin(lim_cells + impl_cells, spec["repeats"], spec["min_repeats"],
                             spec["budget_s"])
    else:
        # one implementation at a time (its pages stay warm, as in a training loop), set up
        # right before and released right after (JAX's device copy, compiled graphs); the
        # limit passes run between the blocks, so their samples span the whole group
        limit_block()
        for cell in impl_cells:
            _setup(cell, cell.name, mode, x, y, threads, tag)
            _prepare(cell, mode, refs, n, tag)
            _time_block(cell, spec["repeats"], spec["min_repeats"], spec["budget_s"])
            s = cell.summary()
            if cell.ok:
                _log(f"{tag} {cell.name:14s} median {s['median_s'] * 1e3:10.2f} ms "
                     f"(n={s['repeats']}, cpu {s['cpu_util'] or 0:.1f})")
            cell.release()
            _measure.trim()
            limit_block()
    limits.close()
    load1 = load_average()[0]

    rows = []
    for cell in lim_cells + impl_cells:
        s = cell.summary()
        rows.append({
            "impl": cell.name, "kind": cell.kind, "label": cell.label, **s,
            "setup_s": cell.setup_s, "first_call_s": cell.first_s,
            "peak_extra_bytes": cell.peak_bytes, "acc_loss": cell.acc_loss,
            "acc_grad": cell.acc_grad, "note": cell.note, "error": cell.error,
        })
        if cell.error:
            _log(f"{tag} {cell.name:14s} FAILED {cell.error}")
        elif cell.kind == "limit" or interleave:
            _log(f"{tag} {cell.name:14s} median {s['median_s'] * 1e3:10.2f} ms "
                 f"(n={s['repeats']}, cpu {s['cpu_util'] or 0:.1f})")
    return {"group": group, "input_bytes": int(x.nbytes), "load1_start": load0,
            "load1_end": load1, "wall_s": time.perf_counter() - t_group, "rows": rows}


def main(argv: list[str]) -> int:
    spec_path, out_path = argv[1], argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    threads = spec["threads"]
    cpus = _pin(threads)
    groups = spec["groups"]
    need_torch = any(i.startswith("torch") for g in groups for i in g["impls"])
    need_jax = any(i == "jax" for g in groups for i in g["impls"])
    if need_torch:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
    if need_jax:
        import jax

        jax.config.update("jax_platforms", "cpu")
    import crossent

    crossent.set_num_threads(threads)
    env = _env_report(threads, cpus)
    # PyTorch + JAX leave ~10^6 objects to the cycle collector: a full gc.collect() took
    # 0.5 s on a loaded 2-vCPU machine. Freeze them out of it (the per-call memory
    # measurement collects before each call).
    import gc

    gc.collect()
    gc.freeze()
    with open(out_path, "a") as out:
        out.write(json.dumps({"env": env}) + "\n")
        out.flush()
        for group in groups:
            try:
                result = run_group(group, spec)
            except Exception as exc:  # noqa: BLE001 - keep going with the next group
                traceback.print_exc()
                result = {"group": group, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(result) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
