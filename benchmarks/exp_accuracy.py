"""Exhaustive accuracy of the kernels' float32 exp/expm1/tanh/log/log1p against libm.

Every float32 in each function's range of interest is evaluated by the compiled kernel and
compared with NumPy's float64 result (correctly rounded for these purposes), in ulps of
the float32 result. The unit tests sample every 61st/4099th value; this runs all of them
(about 2^31 inputs in all; a minute or two on one core).

    python benchmarks/exp_accuracy.py            # all functions
    python benchmarks/exp_accuracy.py exp log    # some
    python benchmarks/exp_accuracy.py exp_neg    # the row kernels' fast exp: exp's bits?

`exp_neg` (the fast exp of the exp-sum pass) must give exactly exp's bits wherever the
kernels use it: every s <= 0 where the build scales with AVX-512's scalef, every s >= -87
elsewhere (blocks with smaller values take exp itself). It is checked bit for bit over all
float32 s <= 0 (-inf included), and the mismatches below -87 reported separately.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from crossent import _kernels

# (name, reference, lowest input, highest input): the ranges the kernels evaluate.
# exp: z - max(z) <= 0 down to where exp underflows to 0, and up to overflow.
RANGES = [
    ("exp", np.exp, -104.0, 88.72),
    ("expm1", np.expm1, -104.0, 30.0),
    ("tanh", np.tanh, -30.0, 30.0),
    ("log", np.log, 1e-45, 3.4e38),
    ("log1p", np.log1p, -0.99999994, 3.4e38),
]
CHUNK = 1 << 24


def _segments(lo: float, hi: float):
    """Bit ranges of all float32 in [lo, hi], split at zero (the bit order flips)."""
    out = []
    if lo < 0:
        a, b = np.float32(min(hi, -0.0)).view(np.int32), np.float32(lo).view(np.int32)
        out.append((int(a), int(b)))
    if hi >= 0:
        a, b = np.float32(max(lo, 0.0)).view(np.int32), np.float32(hi).view(np.int32)
        out.append((int(a), int(b)))
    return out


def worst_ulps(name: str, ref, lo: float, hi: float) -> tuple[float, float, int]:
    worst, where, count = 0.0, float("nan"), 0
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    for a, b in _segments(lo, hi):
        for start in range(a, b + 1, CHUNK):
            x = np.arange(start, min(start + CHUNK, b + 1), dtype=np.int64).astype(np.int32).view(np.float32)
            got = np.empty_like(x)
            _kernels._ckernels.elementwise(name, 0, x.ctypes.data, got.ctypes.data, x.size)
            exact = ref(x.astype(np.float64))
            spacing = np.maximum(np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64), tiny)
            with np.errstate(invalid="ignore"):
                err = np.abs(got.astype(np.float64) - exact) / spacing
            err[np.isinf(exact) & (got.astype(np.float64) == exact)] = 0.0
            i = int(np.nanargmax(err))
            if err[i] > worst:
                worst, where = float(err[i]), float(x[i])
            count += x.size
    return worst, where, count


def fast_exp_mismatches() -> tuple[int, int, int]:
    """(mismatches at s >= -87, mismatches below -87, inputs) of exp_neg against exp."""
    above = below = count = 0
    a, b = int(np.float32(-0.0).view(np.int32)), int(np.float32(-np.inf).view(np.int32))
    for start in range(a, b + 1, CHUNK):
        x = np.arange(start, min(start + CHUNK, b + 1), dtype=np.int64).astype(np.int32).view(np.float32)
        got, ref = np.empty_like(x), np.empty_like(x)
        _kernels._ckernels.elementwise("exp_neg", 0, x.ctypes.data, got.ctypes.data, x.size)
        _kernels._ckernels.elementwise("exp", 0, x.ctypes.data, ref.ctypes.data, x.size)
        bad = got.view(np.uint32) != ref.view(np.uint32)
        above += int(np.count_nonzero(bad & (x >= -87.0)))
        below += int(np.count_nonzero(bad & (x < -87.0)))
        count += x.size
    return above, below, count


def main(argv: list[str]) -> int:
    if not _kernels.available():
        print("the compiled kernels are not built")
        return 1
    names = set(argv) or {r[0] for r in RANGES} | {"exp_neg"}
    print(f"{'function':8} {'inputs':>14} {'max ulp':>8}  at x")
    for name, ref, lo, hi in RANGES:
        if name in names:
            t = time.perf_counter()
            worst, where, count = worst_ulps(name, ref, lo, hi)
            print(f"{name:8} {count:>14,} {worst:8.3f}  {where!r}  ({time.perf_counter() - t:.0f} s)")
    if "exp_neg" in names:
        t = time.perf_counter()
        above, below, count = fast_exp_mismatches()
        exact = bool(_kernels._ckernels.EXPNEG_EXACT_F32)
        print(f"exp_neg  {count:>14,} inputs s <= 0: {above} differ from exp at s >= -87, {below} "
              f"below ({'must be 0: used everywhere' if exact else 'not used there'}; "
              f"{time.perf_counter() - t:.0f} s)")
        if above or (exact and below):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
