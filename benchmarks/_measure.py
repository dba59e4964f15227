"""Timing, per-call peak memory, CPU pressure, and the bandwidth limit (read / write passes).

Method (after /work/shared/research/cpu-baselines.md, the earlier measurements on this kind
of machine):

- Peak extra memory of one call: ``gc.collect()`` + ``malloc_trim(0)``, reset the kernel's
  peak-RSS counter (``echo 5 > /proc/self/clear_refs``), call, then ``VmHWM - VmRSS(before)``.
  This counts every allocator alike (NumPy, PyTorch, XLA, C ``malloc``), outputs included.
- Timed calls run back to back per implementation (warm-up, one memory-measured call, then
  the repeats), so its pages stay resident as in a training loop; ``--interleave`` runs them
  round-robin instead (one call of each per round: drifting background load hits everyone
  alike, but on this VM pages freed for more than ~2 s go back to the host and the next
  fresh allocation faults them in again, which penalises implementations that allocate).
- The limit is measured in the same process, in short blocks between the implementations'
  blocks (so its samples span the group): one read pass over the logits in ``threads`` Python threads (NumPy reductions release the GIL), one read + write
  pass into a preallocated, already-touched array, and one write into freshly allocated
  pages (first touch: this is what any function that returns a new gradient pays).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _malloc_trim = _libc.malloc_trim
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _malloc_trim = None


# --------------------------------------------------------------------------- process state

def _status_bytes() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def trim() -> None:
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_pressure_us() -> int | None:
    """Total µs some runnable task waited for a CPU (/proc/pressure/cpu 'some'), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    for part in line.split():
                        if part.startswith("total="):
                            return int(part[6:])
    except (OSError, ValueError):
        pass
    return None


def peak_call(fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
    """One call of ``fn``: (its result, seconds, peak extra bytes or None)."""
    trim()
    ok = reset_peak()
    before = _status_bytes().get("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    t = time.perf_counter() - t0
    hwm = _status_bytes().get("VmHWM")
    peak = (hwm - before) if ok and before is not None and hwm is not None else None
    return out, t, peak


# --------------------------------------------------------------------------- timing cells

@dataclass
class Cell:
    """One implementation (or limit pass) in one group, and what was measured of it."""

    name: str
    kind: str                      # "impl" or "limit"
    fn: Callable[[], Any] | None
    label: str = ""
    setup_s: float | None = None   # compile / first-call time, excluded from the timings
    first_s: float | None = None   # first call after setup (cold pages)
    peak_bytes: int | None = None
    times: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    pressure_us: float | None = 0.0
    error: str = ""
    note: str = ""
    acc_loss: float | None = None
    acc_grad: float | None = None

    @property
    def ok(self) -> bool:
        return self.fn is not None and not self.error

    def release(self) -> None:
        """Drop the callable (and what it holds: device copies, compiled graphs)."""
        self.fn = None

    def fail(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        self.fn = None

    def summary(self) -> dict:
        t = np.asarray(self.times, dtype=np.float64)
        wall = float(t.sum()) if t.size else 0.0
        out = {
            "repeats": int(t.size),
            "median_s": float(np.median(t)) if t.size else None,
            "p20_s": float(np.percentile(t, 20)) if t.size else None,
            "p80_s": float(np.percentile(t, 80)) if t.size else None,
            "min_s": float(t.min()) if t.size else None,
            "cpu_util": (self.cpu_s / wall) if wall > 0 else None,
            "cpu_pressure": (self.pressure_us / 1e6 / wall)
            if wall > 0 and self.pressure_us is not None else None,
        }
        return out


def timed_call(cell: Cell) -> None:
    """One timed call; the garbage collector is off during it (no collection pause lands in
    one implementation's time: large arrays are freed by reference counting anyway)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        p0 = cpu_pressure_us()
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = cell.fn()
        t1 = time.perf_counter()
        c1 = time.process_time()
        p1 = cpu_pressure_us()
        del out  # freeing the result is not timed (the same for everyone)
    finally:
        if enabled:
            gc.enable()
    cell.times.append(t1 - t0)
    cell.cpu_s += c1 - c0
    if p0 is None or p1 is None or cell.pressure_us is None:
        cell.pressure_us = None
    else:
        cell.pressure_us += p1 - p0


def round_robin(cells: list[Cell], repeats: int, min_repeats: int, budget_s: float,
                progress: Callable[[str], None] | None = None) -> None:
    """Time the cells one call each per round, until each has ``repeats`` calls, or at least
    ``min_repeats`` and ``budget_s`` seconds of timed calls."""
    active = [c for c in cells if c.ok]
    rounds = 0
    while active:
        rounds += 1
        for c in list(active):
            try:
                timed_call(c)
            except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal
                c.fail(exc)
                active.remove(c)
                continue
            n = len(c.times)
            if n >= repeats or (n >= min_repeats and sum(c.times) >= budget_s):
                active.remove(c)
        if progress is not None:
            progress(f"round {rounds}: {len(active)} still timing")


# --------------------------------------------------------------------------- the limit

def _raw_view(a: np.ndarray) -> np.ndarray:
    """The buffer as a plain NumPy dtype of the same item size (bfloat16 -> uint16), flat."""
    raw = {2: np.uint16, 4: np.float32, 8: np.float64}[a.dtype.itemsize]
    return a.reshape(-1).view(raw)


def _row_blocks(flat: np.ndarray, n_rows: int, n_cols: int, k: int) -> list[np.ndarray]:
    bounds = [n_rows * i // k for i in range(k + 1)]
    return [flat[bounds[i] * n_cols: bounds[i + 1] * n_cols] for i in range(k)]


class LimitPasses:
    """Read / write passes over the logits in ``threads`` threads (persistent pool)."""

    def __init__(self, x: np.ndarray, threads: int):
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(max_workers=self.threads)
        n, c = x.shape
        self.shape = (n, c)
        self.src = _raw_view(x)
        self.src_blocks = _row_blocks(self.src, n, c, self.threads)
        self._dst = None
        self._dst_blocks = None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._dst = self._dst_blocks = None

    def read(self):
        return list(self.pool.map(np.max, self.src_blocks))

    def _ensure_dst(self):
        if self._dst is None:
            self._dst = np.empty_like(self.src)
            self._dst.fill(0)  # touched: the timed copies write to resident pages
            self._dst_blocks = _row_blocks(self._dst, *self.shape, self.threads)

    def read_write(self):
        self._ensure_dst()
        list(self.pool.map(np.copyto, self._dst_blocks, self.src_blocks))
        return None

    def alloc_write(self):
        dst = np.empty_like(self.src)
        blocks = _row_blocks(dst, *self.shape, self.threads)
        list(self.pool.map(np.copyto, blocks, self.src_blocks))
        return dst
