"""The compiled kernels against the reference implementation, and their elementary functions.

The kernel path and the array-API reference must agree to float rounding for every option,
for shapes that do not fit the SIMD width or the thread split, for strided and
non-contiguous layouts (which must be copied or refused, never misread), for special
values, and for any thread count.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import crossent
from crossent import _kernels

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="C kernels not built")


def _kernel_modules() -> list:
    """The kernel modules this processor runs: the baseline (16-byte vectors) and those
    built for its x86-64 levels (AVX2: 32 bytes, AVX-512: 64)."""
    import importlib

    try:
        base = importlib.import_module("crossent._ckernels")
    except ImportError:
        return [None]
    names = {"x86-64-v4": ["_ckernels_v3", "_ckernels_v4"],
             "x86-64-v3": ["_ckernels_v3"]}.get(base.cpu(), [])
    mods = [base]
    for name in names:
        with contextlib.suppress(ImportError):
            mods.append(importlib.import_module(f"crossent.{name}"))
    return mods


KERNEL_MODULES = _kernel_modules()


@pytest.fixture(autouse=True, params=KERNEL_MODULES,
                ids=[m.__name__.rsplit(".", 1)[-1] if m else "none" for m in KERNEL_MODULES])
def kernel_module(request, monkeypatch):
    """Every test here runs in each instruction set's module the processor supports."""
    if request.param is not None:
        monkeypatch.setattr(_kernels, "_ckernels", request.param)
    return request.param


def test_the_best_module_is_loaded(kernel_module, monkeypatch):
    best = _kernels._load_kernels()
    assert best.__name__ == KERNEL_MODULES[-1].__name__
    for cap, name in [("v3", "_ckernels_v3"), ("base", "_ckernels")]:
        monkeypatch.setenv("CROSSENT_KERNELS_ISA", cap)
        expect = name if any(m.__name__.endswith(name) for m in KERNEL_MODULES) else "_ckernels"
        assert _kernels._load_kernels().__name__.endswith(expect)
    assert "-byte vectors" in kernel_module.isa()
    monkeypatch.setenv("CROSSENT_KERNELS_ISA", "avx9")
    with pytest.warns(RuntimeWarning, match=r"CROSSENT_KERNELS_ISA='avx9' is not one of 'v4', 'v3', 'base'"):
        assert _kernels._load_kernels().__name__ == best.__name__


@contextlib.contextmanager
def reference_only(monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("CROSSENT_DISABLE_KERNELS", "1")
        yield


def both(monkeypatch, func, *args, **kwargs):
    """(reference result, kernel result); asserts that the kernel really ran."""
    with reference_only(monkeypatch):
        ref = func(*args, **kwargs)
        assert _kernels.kernel_info()["last_path"] == "reference"
    got = func(*args, **kwargs)
    assert _kernels.kernel_info()["last_path"].startswith("kernel"), _kernels.kernel_info()
    return ref, got


def assert_close(got, ref, dtype):
    tol = 2e-6 if np.dtype(dtype) != np.float64 else 1e-13
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


OPTIONS = [
    dict(),
    dict(reduction="mean"),
    dict(label_smoothing=0.2, reduction="sum"),
    dict(weight="w", reduction="mean"),
    dict(weight="w", label_smoothing=0.1, ignore_index=-100, reduction="mean"),
    dict(z_loss=1e-2, softcap=3.0),
    dict(weight="w", z_loss=0.1, label_smoothing=1.0, reduction="mean"),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n, c", [(1, 1), (7, 3), (7, 17), (5, 1023), (3, 2500), (33, 16), (70, 10), (70, 29)])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_kernel_equals_reference(monkeypatch, dtype, n, c, opts, kind):
    rng = np.random.default_rng(n * 1000 + c)
    x = (rng.normal(size=(n, c)) * 4).astype(dtype)
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = rng.random(c) + 0.1
    if kind == "index":
        t = rng.integers(0, c, n)
        if "ignore_index" in opts and n > 1:
            t[1] = -100
    else:
        opts.pop("ignore_index", None)  # class-index targets only
        t = rng.dirichlet(np.ones(c), n).astype(dtype)
    (ref, rgrad), (got, grad) = both(
        monkeypatch, crossent.softmax_cross_entropy_value_and_grad, x, t, **opts
    )
    assert_close(got, ref, dtype)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    assert_close(grad, rgrad, dtype)
    (ref_l, ref_lse), (got_l, got_lse) = both(
        monkeypatch, crossent.softmax_cross_entropy, x, t, return_lse=True, **opts
    )
    assert_close(got_l, ref_l, dtype)
    assert_close(got_lse, ref_lse, dtype)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_strided_and_non_contiguous_layouts(monkeypatch, axis):
    rng = np.random.default_rng(1)
    big = rng.normal(size=(6, 20, 9)).astype(np.float32)
    x = big[:, ::2, 1:8]  # strided in every axis
    assert not x.flags.c_contiguous
    shape = list(x.shape)
    del shape[axis]
    t = rng.integers(0, x.shape[axis], size=shape)
    (ref, rg), (got, g) = both(
        monkeypatch, crossent.softmax_cross_entropy_value_and_grad, x, t, axis=axis, label_smoothing=0.1
    )
    assert_close(got, ref, np.float32)
    assert_close(g, rg, np.float32)
    assert g.shape == x.shape
    rows = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    assert_close(crossent.softmax_cross_entropy(rows, t, label_smoothing=0.1), ref, np.float32)


def test_padded_rows_are_read_with_their_stride(monkeypatch):
    rng = np.random.default_rng(2)
    padded = rng.normal(size=(9, 40)).astype(np.float32)
    padded[:, 31:] = np.nan  # must never be read
    x = padded[:, :31]
    t = rng.integers(0, 31, 9)
    ref, got = both(monkeypatch, crossent.softmax_cross_entropy, x, t)
    assert np.isfinite(got).all()
    assert_close(got, ref, np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_special_values(monkeypatch, dtype):
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [0.0, -inf, 1.0, 2.0],  # masked class
            [-inf, -inf, -inf, -inf],  # all masked: undefined
            [1e30, -1e30, 0.0, 5.0],  # huge logits: exact finite loss
            [nan, 0.0, 1.0, 2.0],  # NaN propagates
            [inf, 0.0, 1.0, 2.0],  # +inf logit
            [3.0, 3.0, 3.0, 3.0],  # ties at the maximum
        ],
        dtype=dtype,
    )
    t = np.array([0, 0, 1, 1, 1, 2])
    for opts in [dict(), dict(label_smoothing=0.1), dict(z_loss=1e-3)]:
        (ref, rg), (got, g) = both(monkeypatch, crossent.softmax_cross_entropy_value_and_grad, x, t, **opts)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isnan(g), np.isnan(rg))
        fin = np.isfinite(ref)
        assert_close(got[fin], ref[fin], dtype)
        np.testing.assert_array_equal(got[~fin], ref[~fin])
    got = crossent.softmax_cross_entropy(x, t)
    assert np.isfinite(got[0])
    assert got[2] == pytest.approx(2e30, rel=1e-6)


# ------------------------------------------------------- the thread pool

@pytest.mark.parametrize("n, c", [(4099, 10), (300, 257), (40, 3000)])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.1),
                                  dict(label_smoothing=0.1, z_loss=1e-3, softcap=5.0)])
def test_thread_counts_give_identical_results(monkeypatch, n, c, opts):
    """Rows are split into items that whichever thread is free claims: every row must get
    the one-thread bits (tile and row kernels, forward and gradient), for any thread count,
    more threads than cores included, the split forced at these small sizes."""
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(n, c)) * 3).astype(np.float32)
    t = rng.integers(0, c, n)
    monkeypatch.setattr(_kernels, "_MIN_ELEMENTS_PER_THREAD", 1)
    outs = []
    try:
        for threads in (1, 2, 3, 8):
            _kernels.set_num_threads(threads)
            for _ in range(3):  # helpers awake (spinning) and asleep
                outs.append(crossent.softmax_cross_entropy_value_and_grad(x, t, **opts))
    finally:
        _kernels.set_num_threads(None)
    for loss, grad in outs[1:]:
        np.testing.assert_array_equal(loss, outs[0][0])
        np.testing.assert_array_equal(grad.view(np.uint32), outs[0][1].view(np.uint32))


def test_calls_from_several_python_threads_at_once():
    """The kernels release the GIL: calls from several Python threads overlap. The pool runs
    one job at a time (the others run on their callers' threads); every result must be the
    one the call gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    problems = [((rng.normal(size=(2000, c)) * 2).astype(np.float32), rng.integers(0, c, 2000))
                for c in (7, 100, 700, 40)]
    alone = [crossent.softmax_cross_entropy_value_and_grad(x, t) for x, t in problems]

    def run(k):
        x, t = problems[k % len(problems)]
        return k % len(problems), crossent.softmax_cross_entropy_value_and_grad(x, t)

    with ThreadPoolExecutor(4) as ex:
        for k, (loss, grad) in ex.map(run, range(64)):
            np.testing.assert_array_equal(loss, alone[k][0])
            np.testing.assert_array_equal(grad, alone[k][1])


_FORK_SCRIPT = """
import os, sys
import numpy as np
import crossent
from crossent import _kernels
assert _kernels.available()
rng = np.random.default_rng(13)
x = rng.normal(size=(5000, 64)).astype(np.float32)
t = rng.integers(0, 64, 5000)
crossent.set_num_threads(2)
want = crossent.softmax_cross_entropy(x, t)  # the parent's pool is running now
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # the child: only this thread survived the fork
    got = crossent.softmax_cross_entropy(x, t)
    os.write(w, b"same" if np.array_equal(got, want) else b"diff")
    os._exit(0)
os.close(w)
verdict = os.read(r, 4)
_, status = os.waitpid(pid, 0)
print(verdict.decode(), os.waitstatus_to_exitcode(status), _kernels._ckernels.__name__)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_a_working_pool(kernel_module):
    """fork() keeps only the forking thread: the child's pool must start its own workers
    (a child waiting for the parent's workers would hang). Run in a fresh interpreter that
    has imported nothing multi-threaded but crossent, with this test's build."""
    import os
    import subprocess
    import sys

    name = kernel_module.__name__.rsplit(".", 1)[-1]
    isa = {"_ckernels": "base", "_ckernels_v3": "v3", "_ckernels_v4": "v4"}[name]
    env = dict(os.environ, CROSSENT_KERNELS_ISA=isa)
    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    verdict, code, module = done.stdout.split()
    assert (verdict, code) == ("same", "0")
    assert module.rsplit(".", 1)[-1] == name


def test_probability_kernel_reports_the_least_bad_row_across_items():
    """nll_rows' rows are claimed in items by the threads: the error names the first bad
    element in row order, whichever item a thread finished first."""
    x = np.full((40_000, 5), 0.2)
    x[30_000, 1] = 1.5
    x[5_000, 4] = -0.25
    crossent.set_num_threads(2)
    try:
        with pytest.raises(crossent.ProbabilityRangeError, match=r"probs\[5000, 4\] = -0.25"):
            crossent.cross_entropy(x, np.zeros(40_000, dtype=np.int64), label_smoothing=0.1)
    finally:
        crossent.set_num_threads(None)


@pytest.mark.parametrize("bad_label", [-2, 0, 1, 2**31, 2**63 - 1, -(2**63)])
@pytest.mark.parametrize("n, c, threads", [(50, 10, 1), (4000, 12, 2), (300, 700, 2), (1, 70_000, 2)])
@pytest.mark.parametrize("mode", ["forward", "grad", "grad_from_lse"])
def test_kernel_refuses_a_label_outside_the_row(bad_label, n, c, threads, mode):
    """The kernels index a row by its label; the callers validate labels, and the kernel
    checks them again so that a slip there is an IndexError naming the least bad row,
    never a read outside the row (one happened: uint8 labels wrapped to 255). Covers
    tiles (C = 10, 12), row kernels, the wide mode (one row split over 2 threads) and the
    autograd backward from a saved lse; labels C and -2 are the first ones outside."""
    bad_label = {0: c, 1: c + 1}.get(bad_label, bad_label)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, c)).astype(np.float32)
    y = rng.integers(-1, c, n).astype(np.int64)
    bad_rows = [n - 1] if n < 3 else [n // 2, n - 1, n // 3 + 1]
    y[bad_rows] = bad_label
    loss = np.zeros(n, np.float32)
    lse = np.zeros(n, np.float32)
    grad = np.zeros((n, c), np.float32)
    g = np.ones(n, np.float32)
    kw = dict(y_ptr=y.ctypes.data, n_threads=threads)
    if mode == "forward":
        kw.update(loss_ptr=loss.ctypes.data, lse_ptr=lse.ctypes.data)
    elif mode == "grad":
        kw.update(loss_ptr=loss.ctypes.data, g_ptr=g.ctypes.data, grad_ptr=grad.ctypes.data)
    else:
        kw.update(g_ptr=g.ctypes.data, grad_ptr=grad.ctypes.data, lse_in_ptr=lse.ctypes.data)
    with pytest.raises(IndexError) as info:
        _kernels.launch(_kernels.storage_code("float32"), x.ctypes.data, n, c, c, **kw)
    first = min(bad_rows)
    assert f"y[{first}] = {bad_label} is outside [-1, {c})" in str(info.value)
    # the valid labels still work after a refused call (the pool is not left stuck)
    y[bad_rows] = 0
    _kernels.launch(_kernels.storage_code("float32"), x.ctypes.data, n, c, c, **kw)


@pytest.mark.parametrize("n, c", [(50, 10), (4000, 12), (300, 700)])
def test_kernel_without_ignored_rows_refuses_minus_one(n, c):
    """ignored_rows=False (the torch plain path, which leaves the label check to the
    kernel): every label must be a class index; -1 is refused like any other."""
    x = np.zeros((n, c), np.float32)
    y = np.full(n, c - 1, np.int64)
    loss = np.zeros(n, np.float32)
    args = (_kernels.storage_code("float32"), x.ctypes.data, n, c, c)
    _kernels.launch(*args, y_ptr=y.ctypes.data, loss_ptr=loss.ctypes.data, ignored_rows=False)
    np.testing.assert_allclose(loss, np.log(c), rtol=1e-6)
    y[n // 2] = -1
    _kernels.launch(*args, y_ptr=y.ctypes.data, loss_ptr=loss.ctypes.data)  # -1: ignored
    with pytest.raises(IndexError, match=rf"y\[{n // 2}\] = -1 is outside \[0, {c}\)"):
        _kernels.launch(*args, y_ptr=y.ctypes.data, loss_ptr=loss.ctypes.data, ignored_rows=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c", range(1, 90))
def test_small_class_counts_every_width(monkeypatch, c, dtype):
    # rows of up to 80 classes (float64: 40): 16 rows per tile, transposed in registers 16
    # columns at a time, only the columns below C computed (each width its own specialised
    # transpose); past the threshold the row kernels, and 89 rows: a partial last tile
    rng = np.random.default_rng(c)
    x = (rng.normal(size=(89, c)) * 4).astype(dtype)
    t = rng.integers(0, c, 89)
    (ref, rgrad), (got, grad) = both(
        monkeypatch, crossent.softmax_cross_entropy_value_and_grad, x, t, label_smoothing=0.1
    )
    assert_close(got, ref, dtype)
    assert_close(grad, rgrad, dtype)
    (ref, _), (got, _) = both(monkeypatch, crossent.softmax_cross_entropy, x, t, return_lse=True)
    assert_close(got, ref, dtype)


def test_set_num_threads_validates():
    with pytest.raises(crossent.CrossEntropyError, match="num_threads"):
        _kernels.set_num_threads(0)


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("n, c, cap", [(11, 37, 5.0), (70, 10, None), (70, 29, 5.0), (50, 64, None),
                                       (45, 80, 5.0), (40, 300, None), (3, 3000, 5.0)])
def test_half_precision_storage(monkeypatch, storage, n, c, cap):
    if storage == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = ml_dtypes.bfloat16
    else:
        dtype = np.float16
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(n, c)) * 3).astype(dtype)
    t = rng.integers(0, c, n)
    (ref, rg), (got, g) = both(monkeypatch, crossent.softmax_cross_entropy_value_and_grad, x, t, softcap=cap)
    assert got.dtype == np.float32 and g.dtype == x.dtype
    assert_close(got, ref, np.float32)
    # the gradient is rounded once to the storage dtype: within one half-precision ulp
    np.testing.assert_allclose(g.astype(np.float64), rg.astype(np.float64), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------ elementary functions

def _ulps32(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Error in float32 ulps of the exact (float64) value."""
    exact32 = exact.astype(np.float32)
    spacing = np.spacing(np.abs(exact32)).astype(np.float64)
    spacing = np.maximum(spacing, np.float64(np.finfo(np.float32).smallest_subnormal))
    return np.abs(got.astype(np.float64) - exact) / spacing


def _all_float32_between(lo: float, hi: float, stride: int) -> np.ndarray:
    """Every `stride`-th float32 in [lo, hi] (stride 1 = all of them): the negative ones
    from -0.0 outwards and the non-negative ones from +0.0 up, each by its bit pattern
    (both zeros are in the range when zero is)."""
    bits = []
    if lo <= 0.0:  # the negative side: bit patterns grow with the magnitude
        near, far = np.float32(min(hi, -0.0)), np.float32(lo)
        if near <= 0.0:
            a, b = int(near.view(np.uint32)) | 0x80000000, int(far.view(np.uint32)) | 0x80000000
            bits.append(np.arange(a, b + 1, stride, dtype=np.uint32))
    if hi >= 0.0:
        a = int(np.float32(max(lo, 0.0)).view(np.uint32)) & 0x7FFFFFFF
        b = int(np.float32(hi).view(np.uint32)) & 0x7FFFFFFF
        bits.append(np.arange(a, b + 1, stride, dtype=np.uint32))
    return np.concatenate(bits).view(np.float32)


def test_all_float32_between_handles_zero_ends():
    # regression: hi = -0.0 or +0.0 made a segment of 2^31 bit patterns (or NaNs)
    assert np.array_equal(_all_float32_between(-1e-45, 0.0, 1).view(np.uint32),
                          np.array([0x80000000, 0x80000001, 0], dtype=np.uint32))
    got = _all_float32_between(-1e-44, -0.0, 1)  # -0.0 and 7 subnormals, and +0.0
    assert np.array_equal(got.view(np.uint32),
                          np.array([0x80000000 + i for i in range(8)] + [0], dtype=np.uint32))
    x = _all_float32_between(-104.0, 88.72, 61)
    assert x.min() >= -104.0 and x.max() <= 88.72 and not np.isnan(x).any()


def _elementwise(name: str, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    code = 0 if x.dtype == np.float32 else 1
    _kernels._ckernels.elementwise(name, code, x.ctypes.data, out.ctypes.data, x.size)
    return out


def test_exp_f32_within_2_ulp_of_libm_over_the_softmax_range():
    # exp is evaluated at z - max(z) <= 0 (and above 0 only for +inf rows): sample every
    # 61st float32 in [-104, 89]; benchmarks/exp_accuracy.py runs all of them.
    x = _all_float32_between(-104.0, 88.72, 61)
    got = _elementwise("exp", x)
    exact = np.exp(x.astype(np.float64))
    ulps = _ulps32(got, exact)
    assert ulps.max() <= 2.0, (x[np.argmax(ulps)], ulps.max())


def test_exp_special_values():
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -104.5, 89.0, -87.5, -103.9], dtype=np.float32)
    got = _elementwise("exp", x)
    assert got[0] == 0.0 and got[1] == np.inf and np.isnan(got[2])
    assert got[3] == 1.0 and got[4] == 1.0 and got[5] == 0.0 and got[6] == np.inf
    assert got[7] > 0 and got[8] > 0  # subnormal results are kept
    x64 = np.array([-np.inf, np.inf, np.nan, -745.2, 709.8, -700.0], dtype=np.float64)
    g64 = _elementwise("exp", x64)
    assert g64[0] == 0 and g64[1] == np.inf and np.isnan(g64[2]) and g64[3] == 0 and g64[4] == np.inf
    assert g64[5] == pytest.approx(np.exp(-700.0), rel=1e-15)


def test_vector_exp_gives_the_scalar_exps_bits_where_the_row_kernels_use_it():
    # the row kernels' vector exp must give exp's bits for every s the kernels hand it, so
    # that a row's loss never depends on which of the two computed it. With AVX-512 (its
    # scale instruction rounds into the subnormal range as exp does) that is every s <= 0,
    # and the kernels use it on every block; elsewhere (the scale is an integer add) every
    # finite s >= FAST_EXP_MIN, and 0 for -inf and below -88.03.
    exact = _kernels._ckernels.EXPNEG_EXACT_F32
    lo = -110.0 if exact else -87.0
    top = int(np.float32(lo).view(np.uint32))
    x = np.concatenate([np.arange(0x80000000, top + 1, 7, dtype=np.uint32).view(np.float32),
                        np.array([lo, -0.0, 0.0, -1e-45], dtype=np.float32)])
    assert np.array_equal(_elementwise("exp_neg", x).view(np.uint32),
                          _elementwise("exp", x).view(np.uint32))
    special = np.array([-np.inf, -1e30, -88.03, -88.5, -200.0, np.nan], dtype=np.float32)
    got = _elementwise("exp_neg", special)
    if exact:
        assert np.array_equal(got[:5].view(np.uint32),
                              _elementwise("exp", special[:5]).view(np.uint32))
        assert got[2] > 0 and got[3] > 0  # subnormal, as exp's
    else:
        assert np.all(got[:5] == 0.0)
    assert np.isnan(got[5])
    exact64 = _kernels._ckernels.EXPNEG_EXACT_F64
    lo64 = -760.0 if exact64 else -708.0
    x64 = np.concatenate([np.random.default_rng(3).uniform(lo64, 0.0, 200_000), [lo64, 0.0]])
    assert np.array_equal(_elementwise("exp_neg", x64), _elementwise("exp", x64))
    special64 = np.array([-np.inf, -1e300, -709.5, -745.0, np.nan])
    got64 = _elementwise("exp_neg", special64)
    if exact64:
        assert np.array_equal(got64[:4], _elementwise("exp", special64[:4]))
        assert got64[2] > 0 and got64[3] > 0  # subnormal, as exp's
    else:
        assert np.all(got64[:4] == 0.0)
    assert np.isnan(got64[4])


@pytest.mark.parametrize("c", [10, 700])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_probabilities_in_the_subnormal_range_are_kept_in_every_block(monkeypatch, c, dtype):
    # s = z - max where exp(s) is subnormal (float32: -104..-87, float64: -745..-708).
    # With AVX-512 the fast exp runs there (no least-value test); elsewhere such a block
    # takes the general exp. Either way the gradient entry is exp's value (not 0, not a
    # wrong subnormal).
    info = np.finfo(dtype)
    lo, hi = (-103.0, -87.5) if dtype == "float32" else (-744.0, -708.5)
    rng = np.random.default_rng(c)
    x = np.zeros((40, c), dtype)
    x[:, 1:] = rng.uniform(lo, hi, (40, c - 1)).astype(dtype)
    t = rng.integers(0, c, 40)
    (ref, rgrad), (got, grad) = both(
        monkeypatch, crossent.softmax_cross_entropy_value_and_grad, x, t
    )
    assert_close(got, ref, dtype)
    # the max is 0 and every other term is below the smallest normal
    exact = np.exp(x[:, 1:].astype(np.float64)) if dtype == "float32" else np.exp(
        x[:, 1:].astype(np.longdouble))
    off = np.ones_like(exact, dtype=bool)
    off[np.arange(40), t - 1] = t == 0  # the target entries are p - 1
    tiny = exact[off] > info.smallest_subnormal
    assert np.all(grad[:, 1:][off][tiny] > 0)
    np.testing.assert_allclose(grad[:, 1:][off].astype(exact.dtype), exact[off], rtol=0,
                               atol=float(info.smallest_subnormal))


@pytest.mark.parametrize("name", ["exp", "expm1", "tanh"])
def test_vector_forms_give_the_scalar_functions_bits(name):
    # exp/expm1/tanh have one body, instantiated for float and for vectors (general-path
    # blocks, tile gradients and softcap use the vector forms): same bits everywhere
    x = np.concatenate([_all_float32_between(-110.0, 95.0, 4099),
                        np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -104.0, 88.72, -18.0,
                                  20.0, 0.34657359, -0.34657359, 0.55, -0.55], dtype=np.float32)])
    assert np.array_equal(_elementwise("v" + name, x).view(np.uint32),
                          _elementwise(name, x).view(np.uint32))


def test_exp_f64_accuracy():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-745, 709, 200_000), rng.uniform(-1, 1, 100_000)])
    got = _elementwise("exp", x)
    exact = np.exp(x)
    rel = np.abs(got - exact) / np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
    normal = exact > np.finfo(np.float64).tiny
    assert rel[normal].max() <= 4 * np.finfo(np.float64).eps


@pytest.mark.parametrize("name, ref", [("expm1", np.expm1), ("tanh", np.tanh)])
def test_expm1_and_tanh_f32(name, ref):
    x = _all_float32_between(-30.0, 30.0, 997)
    got = _elementwise(name, x)
    ulps = _ulps32(got, ref(x.astype(np.float64)))
    assert ulps.max() <= 4.0, (name, x[np.argmax(ulps)], ulps.max())


@pytest.mark.parametrize("name, ref, lo, hi", [
    ("log", np.log, 1e-45, 3e38),
    ("log1p", np.log1p, -0.999, 3e38),
])
def test_log_and_log1p_f32_within_2_ulp(name, ref, lo, hi):
    x = _all_float32_between(lo, hi, 4099)
    got = _elementwise(name, x)
    ulps = _ulps32(got, ref(x.astype(np.float64)))
    assert ulps.max() <= 2.0, (name, x[np.argmax(ulps)], ulps.max())


def test_log_special_values():
    for dtype in (np.float32, np.float64):
        x = np.array([0.0, -0.0, -1.0, np.inf, np.nan, 1.0], dtype=dtype)
        got = _elementwise("log", x)
        assert got[0] == -np.inf and got[1] == -np.inf and np.isnan(got[2])
        assert got[3] == np.inf and np.isnan(got[4]) and got[5] == 0.0
        g1 = _elementwise("log1p", np.array([-1.0, np.inf, np.nan, 1e-30, -2.0], dtype=dtype))
        assert g1[0] == -np.inf and g1[1] == np.inf and np.isnan(g1[2]) and g1[3] == dtype(1e-30)
        assert np.isnan(g1[4])


def test_log_f64_accuracy():
    rng = np.random.default_rng(6)
    x = np.concatenate([10.0 ** rng.uniform(-307, 307, 200_000), rng.uniform(0.5, 2, 100_000)])
    for name, ref in [("log", np.log), ("log1p", np.log1p)]:
        got = _elementwise(name, x)
        exact = ref(x)
        rel = np.abs(got - exact) / np.abs(exact)
        assert rel[exact != 0].max() <= 4 * np.finfo(np.float64).eps, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c", [5, 300])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.1, z_loss=1e-2, softcap=4.0)])
def test_gradient_from_a_saved_lse_equals_the_fused_gradient(dtype, c, opts):
    """The autograd backward path: one read of x and one write, given the forward's lse."""
    rng = np.random.default_rng(7)
    n = 37
    x = (rng.normal(size=(n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    y[3] = -1  # ignored
    g = rng.random(n).astype(dtype)
    (_, lse), ref = crossent.softmax_cross_entropy_value_and_grad(
        x, np.where(y < 0, -100, y), ignore_index=-100, grad_output=g, return_lse=True, **opts)
    code = _kernels.storage_code(dtype)
    y64 = y.astype(np.int64)
    lse = np.ascontiguousarray(lse, dtype=dtype)
    grad = np.full((n, c), np.nan, dtype=dtype)
    _kernels.launch(code, x.ctypes.data, n, c, c, y_ptr=y64.ctypes.data,
                    label_smoothing=opts.get("label_smoothing", 0.0), z_loss=opts.get("z_loss", 0.0),
                    softcap=opts.get("softcap"), g_ptr=g.ctypes.data, grad_ptr=grad.ctypes.data,
                    lse_in_ptr=lse.ctypes.data)
    assert_close(grad, ref, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c", [3, 10, 64, 100, 300])
def test_gradient_from_a_saved_lse_on_special_rows(dtype, c):
    """The backward from a saved lse takes the fast exp wherever every z - lse <= 0 (the
    forward's lse is never below the row maximum); rows with -inf, +-1e30, probabilities
    in the subnormal range and NaN must still get softmax - onehot (NaN: their own row
    only), in tiles (C <= 80) and row kernels, full and partial tiles."""
    rng = np.random.default_rng(11)
    n = 37
    x = rng.normal(size=(n, c)) * 3
    x[1, ::2] = -np.inf
    x[2, :] = -np.linspace(0, 200, c)  # exp(z - lse) down to 0 through the subnormals
    x[3, :] = 0.0
    x[3, c // 2] = 1e30
    x[4, :] = -1e30
    x[4, 0] = 1e30
    x[5, c - 1] = np.nan
    x[20:36, :] = -np.linspace(0, 120, c)  # a whole tile of them
    x = x.astype(dtype)
    y = rng.integers(0, c, n)
    y[1] = 1  # a finite entry
    (_, lse) = crossent.softmax_cross_entropy(x, y, return_lse=True)
    lse = np.ascontiguousarray(lse, dtype=dtype)
    g = np.full(n, 0.75, dtype=dtype)
    grad = np.full((n, c), 7.0, dtype=dtype)
    _kernels.launch(_kernels.storage_code(dtype), x.ctypes.data, n, c, c,
                    y_ptr=y.astype(np.int64).ctypes.data, g_ptr=g.ctypes.data,
                    grad_ptr=grad.ctypes.data, lse_in_ptr=lse.ctypes.data)
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        m = x64.max(axis=1, keepdims=True)
        e = np.exp(x64 - m)
        ref = 0.75 * e / e.sum(axis=1, keepdims=True)
        # p_y - 1 as minus the other classes' share: 1 - p_y would round to 0 for a
        # confident row, where the kernel (expm1) keeps the value
        rows = np.arange(n)
        others = np.where(np.eye(c, dtype=bool)[y], 0.0, e).sum(axis=1)
        ref[rows, y] = -0.75 * others / e.sum(axis=1)
    assert np.isnan(grad[5]).all() and not np.isnan(np.delete(grad, 5, axis=0)).any()
    tiny = np.finfo(dtype).smallest_subnormal
    eps = 4e-6 if dtype == "float32" else 1e-13
    ok = np.isnan(ref) | (np.abs(grad - ref) <= eps * np.abs(ref) + 2 * tiny)
    assert ok.all(), (np.argwhere(~ok)[:5], grad[~ok][:5], ref[~ok][:5])


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("kernels", [True, False])
def test_gradient_into_a_caller_buffer_and_in_place(monkeypatch, axis, kernels):
    if not kernels:
        monkeypatch.setenv("CROSSENT_DISABLE_KERNELS", "1")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(9, 40)).astype(np.float32)
    y = rng.integers(0, x.shape[axis], x.shape[1 - (axis % 2)] if axis == 0 else 9)
    loss, ref = crossent.softmax_cross_entropy_value_and_grad(x, y, axis=axis, label_smoothing=0.1)
    out = np.full_like(x, np.nan)
    loss2, g = crossent.softmax_cross_entropy_value_and_grad(x, y, axis=axis, label_smoothing=0.1, out=out)
    assert g is out
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(loss2, loss)
    x2 = x.copy()
    _, g2 = crossent.softmax_cross_entropy_value_and_grad(x2, y, axis=axis, label_smoothing=0.1, out=x2)
    assert g2 is x2
    np.testing.assert_allclose(x2, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n, c, wide", [(70, 5, False), (9, 300, False), (1, 3000, True)])
@pytest.mark.parametrize("saved_lse", [False, True])
def test_one_upstream_value_for_every_row_gives_the_per_row_arrays_bits(monkeypatch, dtype, n, c, wide,
                                                                        saved_lse):
    """A reduced loss's upstream is one value read with stride 0 (no N-sized array per
    call): the gradient must have the bits of the same value repeated per row, in the
    tile (small C), row, wide (class axis split) and saved-lse (autograd) paths."""
    if wide:
        monkeypatch.setattr(_kernels, "_WIDE_MIN_CLASSES", 1000)
    rng = np.random.default_rng(23)
    x = (rng.normal(size=(n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n).astype(np.int64)
    y[n // 2] = -1  # ignored: its gradient row is zero whatever g says
    code = _kernels.storage_code(dtype)
    lse = np.empty(n, dtype=dtype)
    loss = np.empty(n, dtype=dtype)
    _kernels.launch(code, x.ctypes.data, n, c, c, y_ptr=y.ctypes.data, label_smoothing=0.1,
                    loss_ptr=loss.ctypes.data, lse_ptr=lse.ctypes.data)
    one = np.array([1 / 7], dtype=dtype)
    grads = []
    for g, stride in ((np.repeat(one, n), 1), (one, 0)):
        grad = np.full((n, c), np.nan, dtype=dtype)
        kw = dict(lse_in_ptr=lse.ctypes.data) if saved_lse else dict(loss_ptr=loss.ctypes.data)
        _kernels.launch(code, x.ctypes.data, n, c, c, y_ptr=y.ctypes.data, label_smoothing=0.1,
                        g_ptr=g.ctypes.data, g_stride=stride, grad_ptr=grad.ctypes.data,
                        n_threads=2, **kw)
        grads.append(grad)
    assert _kernels._last_wide == (2 if wide else 0)
    np.testing.assert_array_equal(grads[1].view(np.uint8), grads[0].view(np.uint8))
    assert not np.isnan(grads[1]).any() and not grads[1][n // 2].any()
    with pytest.raises(ValueError, match="g_stride"):
        _kernels.launch(code, x.ctypes.data, n, c, c, y_ptr=y.ctypes.data, loss_ptr=loss.ctypes.data,
                        g_ptr=one.ctypes.data, g_stride=2, grad_ptr=grads[0].ctypes.data)


@pytest.mark.parametrize("opts", [dict(reduction="mean"), dict(reduction="sum", grad_output=2.5),
                                  dict(reduction="mean", label_smoothing=0.1, z_loss=1e-3)])
def test_reduced_loss_and_gradient_build_no_per_row_temporaries(opts):
    """With out= and a reduced loss, a call allocates nothing the size of the batch: the
    per-row losses go to a reused scratch buffer and the upstream gradient is one value.
    (Fresh N-sized temporaries cost their page faults on every call: on a 2-vCPU VM
    1M x 10 loss + gradient took 14 ms instead of 10.) Class weights and ignored rows
    still build per-example vectors when the problem is validated (w[y], the ignore mask)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    n, c = 20_000, 10
    x = rng.normal(size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    out = np.empty_like(x)
    ref = crossent.softmax_cross_entropy_value_and_grad(x, y, **opts)  # (also warms the scratch)
    tracemalloc.start()
    try:
        loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, y, out=out, **opts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _kernels.kernel_info()["last_path"].startswith("kernel")
    assert grad is out
    np.testing.assert_array_equal(out, ref[1])
    np.testing.assert_array_equal(loss, ref[0])
    assert peak < n * 4 // 4, f"{peak} bytes traced during the call (N = {n})"


def test_out_is_validated():
    x = np.zeros((2, 3), dtype=np.float32)
    y = np.array([0, 1])
    for bad in [np.zeros((2, 3)), np.zeros((3, 2), np.float32), [[0.0] * 3] * 2]:
        with pytest.raises(crossent.CrossEntropyError, match="out"):
            crossent.softmax_cross_entropy_value_and_grad(x, y, out=bad)


@pytest.mark.parametrize("func, make", [
    (crossent.cross_entropy, lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)),
    (crossent.nll_loss, lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))),
], ids=["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opts", [
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.3, weight="w", ignore_index=-100, reduction="mean"),
    dict(label_smoothing=1.0, reduction="sum"),
    dict(soft=True),
    dict(soft=True, weight="w", label_smoothing=0.2, reduction="mean"),
], ids=str)
def test_probability_kernels_equal_reference(monkeypatch, func, make, dtype, opts):
    rng = np.random.default_rng(9)
    n, c = 21, 37
    x = make(rng.normal(size=(n, c)) * 3).astype(dtype)
    x[2, 5] = 0.0 if func is crossent.cross_entropy else -np.inf  # zero probability
    opts = dict(opts)
    if opts.pop("soft", False):
        t = rng.dirichlet(np.ones(c), n).astype(dtype)
        t[2, 5] = 0.0  # 0 * log 0 = 0
        t[2] /= t[2].sum()
    else:
        t = rng.integers(0, c, n)
        t[4] = -100
        t[2] = 6
    if opts.get("weight") == "w":
        opts["weight"] = rng.random(c) + 0.1
    if "ignore_index" not in opts and not np.issubdtype(t.dtype, np.floating):
        t[4] = 1
    kw = dict(eps=1e-7) if func is crossent.cross_entropy and "label_smoothing" in opts else {}
    for extra in ({}, kw):
        ref, got = both(monkeypatch, func, x, t, **opts, **extra)
        assert_close(got, ref, dtype)


def test_probability_kernel_reports_the_exact_bad_element():
    x = np.full((4, 5), 0.2)
    x[2, 3] = 1.5
    with pytest.raises(crossent.ProbabilityRangeError, match=r"probs\[2, 3\] = 1.5"):
        crossent.cross_entropy(x, np.array([0, 1, 2, 3]), label_smoothing=0.1)


# ------------------------------------------------------- wide rows: the class axis split

def _row_problem(storage, opts, kind, n, c, seed, ignored_row):
    """(logits, targets, options) for the row-kernel tests: logits in `storage`, class
    indices (one row ignored where the options have ignore_index) or soft targets, and a
    class weight drawn where the options ask for one."""
    if storage == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dtype = np.dtype(storage)
    ftype = np.float64 if storage == "float64" else np.float32
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, c)) * 4).astype(dtype)
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = (rng.random(c) + 0.1).astype(ftype)
    if kind == "index":
        t = rng.integers(0, c, n)
        if "ignore_index" in opts:
            t[ignored_row] = -100
    else:
        opts.pop("ignore_index", None)
        t = rng.dirichlet(np.ones(c), n).astype(ftype)
    return x, t, opts


@pytest.mark.parametrize("storage", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("opts", OPTIONS[1:] + [dict()], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_wide_rows_split_over_threads_give_the_same_bits(monkeypatch, storage, opts, kind):
    """Fewer rows than threads: each row's classes are split over the threads; loss and
    gradient must be bit for bit those of one thread (the partial sums combine in order)."""
    # classes not a multiple of the block (256) nor of the vector width
    x, t, opts = _row_problem(storage, opts, kind, n=3, c=5003, seed=5, ignored_row=1)
    x[0, 17] = -np.inf
    monkeypatch.setattr(_kernels, "_WIDE_MIN_CLASSES", 1000)
    results = {}
    for threads in (1, 4):
        crossent.set_num_threads(threads)
        try:
            loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, t, **opts)
            results[threads] = (np.asarray(loss), np.asarray(grad))
            assert _kernels._last_wide == (4 if threads == 4 else 0)
        finally:
            crossent.set_num_threads(None)
    np.testing.assert_array_equal(results[4][0], results[1][0])
    np.testing.assert_array_equal(results[4][1].astype(np.float64), results[1][1].astype(np.float64))
    with reference_only(monkeypatch):
        ref, rgrad = crossent.softmax_cross_entropy_value_and_grad(x, t, **opts)
    assert_close(results[4][0], ref, "float64" if storage == "float64" else "float32")


@pytest.mark.parametrize("n, c", [(32, 5), (48, 3), (33, 16), (64, 29), (40, 1), (33, 80), (17, 64),
                                  (40, 77)])
def test_small_c_gradient_stores_stay_inside_the_output(n, c):
    """Regression: the small-C tiles store gradient rows by whole vectors; a vector that
    ran past the tile's last row wrote beyond the output (heap corruption at N = 32, C = 5)."""
    rng = np.random.default_rng(n + c)
    x = rng.normal(size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    buf = np.full(n * c + 64, 7.0, dtype=np.float32)
    out = buf[: n * c].reshape(n, c)
    _, grad = crossent.softmax_cross_entropy_value_and_grad(x, y, out=out, label_smoothing=0.1)
    assert grad is out
    np.testing.assert_array_equal(buf[n * c :], 7.0)
    _, ref = crossent.softmax_cross_entropy_value_and_grad(x, y, label_smoothing=0.1)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("storage", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_gradient_pass_overlapped_with_the_next_row_gives_each_rows_own_bits(monkeypatch, storage, opts, kind):
    """Rows of 16 KB or more: row r's gradient is written while row r + 1's exps are
    computed. Every row must get the bits it gets computed alone, and match the reference;
    an odd C puts the rows at every alignment."""
    n = 5
    x, t, opts = _row_problem(storage, opts, kind, n=n, c=8209, seed=21, ignored_row=2)
    crossent.set_num_threads(1)
    try:
        loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, t, **opts)
        assert _kernels.kernel_info()["last_path"].startswith("kernel")
        if opts.get("reduction", "none") == "none":
            alone = [crossent.softmax_cross_entropy_value_and_grad(x[i:i + 1], t[i:i + 1], **opts)
                     for i in range(n)]
            np.testing.assert_array_equal(np.asarray(loss), np.concatenate([a[0] for a in alone]))
            np.testing.assert_array_equal(np.asarray(grad).view(np.uint8),
                                          np.concatenate([np.asarray(a[1]) for a in alone]).view(np.uint8))
    finally:
        crossent.set_num_threads(None)
    with reference_only(monkeypatch):
        ref, rgrad = crossent.softmax_cross_entropy_value_and_grad(x, t, **opts)
    assert_close(loss, ref, np.float32 if storage != "float64" else np.float64)
    if storage == "bfloat16":
        np.testing.assert_allclose(np.asarray(grad, np.float64), np.asarray(rgrad, np.float64),
                                   rtol=1e-2, atol=1e-3)
    else:
        assert_close(grad, rgrad, x.dtype)


@pytest.mark.parametrize("storage", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("c", [97, 700, 3001])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_rows_finished_together_give_each_row_its_own_bits(monkeypatch, storage, c, opts, kind):
    """Past the tiles' C, rows are finished (log1p, the loss, the gradient's factors) a
    vector lane per row: 16 rows at a time in the forward (8 in float64), as many as keep
    their exponentials within 8 KB with the gradient, one row splat over the lanes where
    it is longer. A row must get the same bits whichever lane and batch it took: the
    forward's loss is value_and_grad's, and a row computed alone or shifted by a few rows
    among others gets its bits computed with all rows. Rows of every log1p branch: a
    confident one, one with -inf logits, one with NaN."""
    n = 37
    x, t, opts = _row_problem(storage, opts, kind, n=n, c=c, seed=31, ignored_row=5)
    x[3, 1] = 90.0
    x[7, : c // 2] = -np.inf
    x[9, 2] = np.nan
    crossent.set_num_threads(1)
    try:
        loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, t, **opts)
        assert _kernels.kernel_info()["last_path"].startswith("kernel")
        np.testing.assert_array_equal(np.asarray(crossent.softmax_cross_entropy(x, t, **opts)), loss)
        if opts.get("reduction", "none") == "none":
            for rows in [slice(i, i + 1) for i in (0, 3, 5, 7, 9, n - 1)] + [slice(3, None), slice(1, 30)]:
                part_loss, part_grad = crossent.softmax_cross_entropy_value_and_grad(x[rows], t[rows], **opts)
                np.testing.assert_array_equal(np.asarray(part_loss), np.asarray(loss)[rows])
                np.testing.assert_array_equal(np.asarray(part_grad).view(np.uint8),
                                              np.asarray(grad)[rows].view(np.uint8))
                np.testing.assert_array_equal(np.asarray(crossent.softmax_cross_entropy(x[rows], t[rows], **opts)),
                                              part_loss)
    finally:
        crossent.set_num_threads(None)
    with reference_only(monkeypatch):
        ref, rgrad = crossent.softmax_cross_entropy_value_and_grad(x, t, **opts)
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(ref))
    fin = np.isfinite(ref)
    assert_close(np.asarray(loss)[fin], np.asarray(ref)[fin], np.float32 if storage != "float64" else np.float64)


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_big_gradients_written_with_streaming_stores_equal_the_cached_path(storage):
    """A gradient of 16 MiB or more is written with streaming (non-temporal) stores; odd C:
    rows start at every alignment. The bits must be those of the same rows computed in
    pieces small enough to be written with plain stores; a single row (its class axis split
    over the threads) must agree with one thread's result."""
    if storage == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dtype = np.dtype(storage)
    itemsize = np.dtype(dtype).itemsize
    c = 65537
    n = (16 << 20) // (c * itemsize) + 2  # just over the streaming threshold
    rng = np.random.default_rng(17)
    x = (rng.normal(size=(n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    _, big = crossent.softmax_cross_entropy_value_and_grad(x, y, reduction="sum")
    pieces = [crossent.softmax_cross_entropy_value_and_grad(x[a:a + 8], y[a:a + 8], reduction="sum")[1]
              for a in range(0, n, 8)]
    np.testing.assert_array_equal(np.asarray(big).view(np.uint8),
                                  np.concatenate(pieces).view(np.uint8))
    wide = np.ascontiguousarray(x.reshape(-1)[: (16 << 20) // itemsize + 3])[None, :]
    results = []
    for threads in (1, 2):
        crossent.set_num_threads(threads)
        try:
            results.append(np.asarray(crossent.softmax_cross_entropy_value_and_grad(wide, y[:1])[1]))
        finally:
            crossent.set_num_threads(None)
    np.testing.assert_array_equal(results[0].view(np.uint8), results[1].view(np.uint8))
