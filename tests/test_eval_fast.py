"""The fast paths of ``crossent eval``: the per-row statistics kernel (``_cmetrics``) and
its NumPy replica give the same figures (1e-12 relative), and memory-mapped ``.npy``
chunks read the same rows as the buffered reader."""

from __future__ import annotations

import numpy as np
import pytest

from crossent import metrics
from crossent._eval.readers import NpyDataset
from crossent.metrics import Evaluator

needs_c = pytest.mark.skipif(metrics._cmetrics is None, reason="_cmetrics not built")
# the instruction sets this processor runs the kernels in (x86-64-v4, x86-64-v3, sse2, ...)
ISAS = metrics._cmetrics.isa()[1] if metrics._cmetrics is not None else ()


@pytest.fixture(params=ISAS or [None])
def isa(request):
    """Run the test with the kernels of each instruction set this processor supports."""
    if request.param is None:
        pytest.skip("_cmetrics not built")
    before = metrics._cmetrics.isa()[0]
    metrics._cmetrics.isa(request.param)
    yield request.param
    metrics._cmetrics.isa(before)

KEYS = ("cross_entropy", "brier", "ece", "accuracy", "top_k_accuracy",
        "normalized_cross_entropy")


def _logits(rng, n, c, dtype):
    z = (rng.normal(size=(n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    z[np.arange(n), y] += dtype(4.0)
    z[::7, 1] = z[::7, 0]  # ties (some of them for the maximum)
    z[::11] = np.round(z[::11])  # more ties
    z[3::13, c - 1] = -np.inf  # masked classes (finite maximum)
    z[5, :] = z[5, 0]  # a row of equal logits
    return z, y


def _every_float32(lo: float, hi: float, stride: int) -> np.ndarray:
    """Every `stride`-th float32 in [lo, hi] (lo <= hi <= -0.0), in bit order."""
    a, b = np.float32(hi).view(np.int32), np.float32(lo).view(np.int32)
    return np.arange(int(a), int(b) + 1, stride, dtype=np.int64).astype(np.int32).view(np.float32)


def _ulps32(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Error in float32 ulps of the exact (float64) value; subnormal ulps below 2^-126."""
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    spacing = np.maximum(spacing, float(np.finfo(np.float32).smallest_subnormal))
    return np.abs(got.astype(np.float64) - exact) / spacing


def test_exp_f32_accuracy():
    # the NumPy replica (same bits as the C exp, see below): within 1 ulp of e^x at every
    # 61st float32 of [-104, 0] (all of them: 0.989 ulp at most), subnormal results too
    x = _every_float32(-104.0, -0.0, 61)
    x = np.concatenate([x, np.float32([-87.33655, -87.3366, -103.27893, -103.97208])])
    got = metrics._exp_f32(x)
    ulps = _ulps32(got, np.exp(x.astype(np.float64)))
    assert ulps.max() < 1.0, (x[np.argmax(ulps)], ulps.max())
    special = metrics._exp_f32(np.float32([0.0, -0.0, -1e-30, -104.0, -104.5, -1e30, -np.inf, np.nan]))
    assert list(special[:3]) == [1.0, 1.0, 1.0] and not special[3:7].any()
    assert np.isnan(special[7])


def test_exp_f32_bits(isa):
    rng = np.random.default_rng(0)
    x = -np.abs(rng.normal(size=200_003) * 40).astype(np.float32)
    x[:11] = [0.0, -1e-30, -87.3, -103.99, -104.0, -104.01, -np.inf, -150.0, np.nan, -0.0, -1e-45]
    x = np.concatenate([x, _every_float32(-104.0, -0.0, 4099)])
    ref = metrics._exp_f32(x)
    for mode in (0, 1):  # the scalar exp and the vector exp of the row kernels
        out = np.full_like(x, 7.0)
        metrics._cmetrics.exp_f32(x.ctypes.data, out.ctypes.data, x.size, mode)
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), mode


def test_exp_f64_accuracy(isa):
    # the float64 exp of the kernels (float64 logits): within ~1 ulp of e^x (1.02 at most
    # in a wider sample) against long double exp, the scalar and vector exps the same bits
    rng = np.random.default_rng(1)
    x = np.concatenate([-rng.uniform(0, 746, 300_000), -rng.uniform(0, 1, 100_000),
                        -(2.0 ** rng.uniform(-60, 9.5, 100_001))])
    x[:8] = [0.0, -0.0, -1e-300, -708.4, -745.1, -746.0, -800.0, -np.inf]
    outs = []
    for mode in (0, 1):
        out = np.full_like(x, 7.0)
        metrics._cmetrics.exp_f64(x.ctypes.data, out.ctypes.data, x.size, mode)
        outs.append(out)
    assert np.array_equal(outs[0].view(np.uint64), outs[1].view(np.uint64))
    got = outs[0]
    assert list(got[:3]) == [1.0, 1.0, 1.0] and not got[5:8].any() and got[4] > 0
    if np.finfo(np.longdouble).nmant < 60:
        pytest.skip("no extended-precision long double for the reference")
    exact = np.exp(x.astype(np.longdouble))
    spacing = np.spacing(np.abs(exact.astype(np.float64))).astype(np.longdouble)
    spacing = np.maximum(spacing, np.longdouble(np.finfo(np.float64).smallest_subnormal))
    ulps = np.asarray(np.abs(got.astype(np.longdouble) - exact) / spacing, dtype=np.float64)
    assert ulps.max() < 1.1, (x[np.argmax(ulps)], ulps.max())


@pytest.mark.parametrize("c", [2, 5, 33, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_stats_c_vs_numpy(isa, c, dtype):
    rng = np.random.default_rng(c)
    z, y = _logits(rng, 500, c, dtype)
    a = metrics._logit_stats(z, y, use_c=True)
    b = metrics._logit_stats(z, y, use_c=False)
    assert a[7] is None and b[7] is None
    names = ("m", "zy", "ey", "s1", "s2", "above", "pred")
    for name, u, v in zip(names, a, b):
        if name in ("pred", "above", "m", "zy"):
            assert np.array_equal(u, v), name
        else:
            np.testing.assert_allclose(u, v, rtol=1e-13, atol=0, err_msg=name)
    assert np.array_equal(a[6], np.argmax(z, axis=1))
    # rows that the general path must take: NaN, +inf, all -inf
    z2 = z.copy()
    z2[7, 0] = np.nan
    z2[8, 1] = np.inf
    z2[9] = -np.inf
    for use_c in (True, False):
        bad = metrics._logit_stats(z2, y, use_c=use_c)[7]
        assert list(np.flatnonzero(bad)) == [7, 8, 9]


_LOGIT_NAMES = ("m", "zy", "ey", "s1", "s2", "above", "pred")


def _check_logit_stats(z, y):
    """The C kernel against its NumPy replica, row by row: the same maximum, label logit,
    rank and arg-max, the same e_y bits for float32 (the same exp), sums to 1e-13."""
    a = metrics._logit_stats(z, y, use_c=True)
    b = metrics._logit_stats(z, y, use_c=False)
    bad = np.zeros(len(y), dtype=bool) if b[7] is None else b[7]
    got_bad = np.zeros(len(y), dtype=bool) if a[7] is None else a[7]
    assert np.array_equal(got_bad, bad)
    ok = ~bad
    for name, u, v in zip(_LOGIT_NAMES, a, b):
        u, v = u[ok], v[ok]
        if name in ("pred", "above", "m", "zy") or (name == "ey" and z.dtype == np.float32):
            assert np.array_equal(u, v), (name, np.flatnonzero(u != v)[:5])
        else:
            np.testing.assert_allclose(u, v, rtol=1e-13, atol=0, err_msg=name)
    return a


def _edge_logits(rng, n, c, dtype):
    """Rows that exercise every block layout of the kernels: ties of the maximum within a
    block, across blocks and in the overlapping last block, -inf, labels in the first and
    last columns, rows of equal values, maxima in the first and the last column."""
    z = (rng.normal(size=(n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    y[::5] = 0
    y[1::5] = c - 1
    z[2::7, c - 1] = z[2::7].max(axis=1) + 1  # maximum in the last column
    z[3::7, 0] = z[3::7].max(axis=1) + 1  # maximum in the first column
    z[4::7, :] = np.round(z[4::7, :])  # many ties
    top = z[5::7].max(axis=1)
    z[5::7, c - 1] = top  # the maximum twice (or more), the last copy in the last column
    z[5::7, c // 2] = top
    z[6::7, c - 1] = -np.inf
    z[7::11, :] = dtype(1.5)  # all equal: every column maximal
    if c > 2:
        z[8::11, 1:] = -np.inf  # only the first column finite
        z[9::11, c - 2] = z[9::11].max(axis=1) + 2  # in the overlap of the last block
    z[10::13, :] -= dtype(90)  # exponentials in the subnormal range
    z[10::13, 0] = z[10::13].max(axis=1) + 95
    return z, y


@pytest.mark.parametrize("c", [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 100, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_rows_layouts(isa, c, dtype):
    rng = np.random.default_rng(1000 + c)
    # 301 rows: short rows go through the kernel in groups of 4, the last one alone
    z, y = _edge_logits(rng, 301, c, dtype)
    a = _check_logit_stats(z, y)
    assert np.array_equal(a[6], np.argmax(z, axis=1))  # the first arg-max
    # strided rows: a column slice of a wider array (row stride > C) and every 3rd row
    wide = np.full((301, c + 5), np.nan, dtype=dtype)
    wide[:, 2:c + 2] = z
    _check_logit_stats(wide[:, 2:c + 2], y)
    _check_logit_stats(z[::3], y[::3])


@pytest.mark.parametrize("c", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_rows_irregular(isa, c, dtype):
    rng = np.random.default_rng(c)
    z, y = _edge_logits(rng, 63, c, dtype)
    z[1, c - 1] = np.nan  # NaN in the last column (the last block's fresh lanes)
    z[2, 0] = np.nan
    z[3, c // 2] = np.inf
    z[4] = -np.inf
    z[5] = np.nan
    z[6, :] = np.inf
    if c > 16:
        z[7, c - 17] = np.nan  # a column the overlapping last block revisits
    planted = {1, 2, 3, 4, 5, 6} | ({7} if c > 16 else set())
    _check_logit_stats(z, y)  # the same rows flagged as NumPy's
    bad = metrics._logit_stats(z, y, use_c=True)[7]
    expect = set(np.flatnonzero(bad))
    assert planted <= expect  # (and the generator's own all -inf rows for c = 1)
    out = np.empty((6, len(y)))
    pred = np.empty(len(y), dtype=np.int64)
    y64 = y.astype(np.int64)
    n_bad = metrics._cmetrics.logit_rows(
        0 if dtype == np.float32 else 1, z.ctypes.data, len(y), c, c, y64.ctypes.data,
        *(out[i].ctypes.data for i in range(6)), pred.ctypes.data)
    assert n_bad == len(expect)
    assert ((pred >= 0) & (pred < c)).all()  # in range, even for irregular rows


def _prob_stats_numpy(p, y):
    r = np.arange(len(y))
    p64 = p.astype(np.float64)
    py = p64[r, y]
    sq = np.einsum("ij,ij->i", p64, p64) - py * py  # reference only: exact enough here
    keep = np.ones_like(p64, dtype=bool)
    keep[r, y] = False
    sq = np.where(keep, p64 * p64, 0.0).sum(axis=1)
    return (p64.max(axis=1), p64.min(axis=1), p64.sum(axis=1), py, sq,
            np.count_nonzero(p > p[r, y][:, None], axis=1).astype(np.float64),
            np.argmax(p, axis=1))


@pytest.mark.parametrize("c", [1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 100, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prob_rows_layouts(isa, c, dtype):
    rng = np.random.default_rng(2000 + c)
    z, y = _edge_logits(rng, 301, c, np.float64)
    z = np.where(np.isfinite(z), z, -50.0)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[11::17] = np.round(p[11::17], 1)  # ties, zeros
    p = p.astype(dtype)
    wide = np.zeros((301, c + 3), dtype=dtype)
    wide[:, 1:c + 1] = p
    for q, yy in ((p, y), (wide[:, 1:c + 1], y), (p[::3], y[::3])):
        got = metrics._prob_stats(q, yy)
        assert got is not None and got[7] is None
        want = _prob_stats_numpy(q, yy)
        for name, u, v in zip(("m", "lo", "sum", "py", "sq", "above", "pred"), got, want):
            if name in ("sum", "sq"):
                np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-300, err_msg=name)
            else:
                assert np.array_equal(u, v), name
    q = p.copy()
    q[3, c - 1] = np.nan
    q[4, 0] = np.nan
    bad = metrics._prob_stats(q, y)[7]
    assert set(np.flatnonzero(bad)) == {3, 4}


@needs_c
def test_isa_switch():
    cur, names = metrics._cmetrics.isa()
    assert cur == names[0] and len(set(names)) == len(names)
    for name in names:
        assert metrics._cmetrics.isa(name)[0] == name
    metrics._cmetrics.isa(cur)
    with pytest.raises(ValueError):
        metrics._cmetrics.isa("no-such-isa")
    assert metrics._cmetrics.isa()[0] == cur


def _both(monkeypatch, x, y, **kw):
    """The figures with the C kernel and without it (NumPy)."""
    ev = Evaluator(**kw)
    ev.update(x, y)
    fast = ev.result().to_dict()
    with monkeypatch.context() as mp:
        mp.setattr(metrics, "_cmetrics", None)
        ev = Evaluator(**kw)
        ev.update(x, y)
        slow = ev.result().to_dict()
    return fast, slow


def _same(a, b, rel=1e-12):
    assert a["n"] == b["n"] and a["n_nan"] == b["n_nan"]
    for k in KEYS:
        if isinstance(a[k], str) or isinstance(b[k], str):
            assert a[k] == b[k], k
        else:
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-300), k
    assert [w["row"] for w in a["worst"]] == [w["row"] for w in b["worst"]]
    for u, v in zip(a["worst"], b["worst"]):
        assert u["predicted"] == v["predicted"]
        if not isinstance(u["loss"], str):
            assert u["loss"] == pytest.approx(v["loss"], rel=1e-12)
            assert u["p_label"] == pytest.approx(v["p_label"], rel=1e-12, abs=1e-300)
    assert a["loss_histogram"]["counts"] == b["loss_histogram"]["counts"]
    assert [r["count"] for r in a["reliability"]] == [r["count"] for r in b["reliability"]]
    for u, v in zip(a["per_class"], b["per_class"]):
        assert u["support"] == v["support"]
        if not isinstance(u["mean_loss"], str):
            assert u["mean_loss"] == pytest.approx(v["mean_loss"], rel=1e-12)


@needs_c
@pytest.mark.parametrize("c", [3, 40, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluator_c_vs_numpy_logits(monkeypatch, c, dtype):
    rng = np.random.default_rng(10 + c)
    z, y = _logits(rng, 3000, c, dtype)
    _same(*_both(monkeypatch, z, y, input="logits", top_k=2))
    # NaN / inf / all -inf rows take the general path, row by row
    z[17, 1] = np.nan
    z[18, 0] = np.inf
    z[19] = -np.inf
    z[2000, 0] = np.nan
    fast, slow = _both(monkeypatch, z, y, input="logits")
    _same(fast, slow)
    assert fast["n_nan"] >= 3  # the NaN rows (an +inf logit: as the library says)


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 1e-7])
def test_evaluator_c_vs_numpy_probs(monkeypatch, dtype, eps):
    rng = np.random.default_rng(3)
    z, y = _logits(rng, 3000, 50, np.float64)
    z[3::13, 2] = -40.0
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[10, :] = 0.0
    p[10, 3] = 1.0  # a certain row, right or wrong
    p = p.astype(dtype)
    _same(*_both(monkeypatch, p, y, input="probs", eps=eps))
    p[11, 0] = np.nan
    _same(*_both(monkeypatch, p, y, input="probs", eps=eps))


@needs_c
def test_probs_errors_same_with_kernel(monkeypatch):
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(40), size=100)
    y = rng.integers(0, 40, 100)
    for bad, what in ((-0.25, "out of range"), (1.5, "out of range")):
        q = p.copy()
        q[37, 5] = bad
        msgs = []
        for c in (metrics._cmetrics, None):
            monkeypatch.setattr(metrics, "_cmetrics", c)
            with pytest.raises(metrics.PredictionError) as e:
                Evaluator(input="probs").update(q, y)
            msgs.append((str(e.value), e.value.row, e.value.column))
        assert msgs[0] == msgs[1] and msgs[0][1] == 37 and what in msgs[0][0]
    q = p.copy()
    q[42] *= 1.5
    with pytest.raises(metrics.PredictionError) as e:
        Evaluator(input="probs").update(q, y)
    assert e.value.row == 42


@pytest.mark.parametrize("chunks", [[1000], [1, 999], [333, 333, 334], [10] * 100])
def test_stats_path_chunking(chunks):
    rng = np.random.default_rng(5)
    z, y = _logits(rng, 1000, 200, np.float32)
    ref = Evaluator(input="logits")
    ref.update(z, y)
    ev = Evaluator(input="logits")
    a = 0
    for n in chunks:
        ev.update(z[a:a + n], y[a:a + n])
        a += n
    _same(ev.result().to_dict(), ref.result().to_dict())


def test_npy_mapped_chunks(tmp_path):
    rng = np.random.default_rng(6)
    z = rng.normal(size=(1037, 13)).astype(np.float32)
    path = tmp_path / "z.npy"
    np.save(path, z)
    for start, stop, chunk in ((0, None, 4096), (5, 900, 1000), (1000, 1037, 64), (7, 8, 10**6)):
        got = {}
        for mapped in (True, False):
            ds = NpyDataset(str(path))
            ds.select(preds=True, labels=False, pred_cols=None, label_col=None)
            ds.arr.mappable = mapped
            parts = [(b.start, np.array(b.preds)) for b in ds.batches(start, stop, chunk)]
            assert all(p.shape[0] <= max(1, chunk // 52) for _, p in parts)
            got[mapped] = np.concatenate([p for _, p in parts])
            assert parts[0][0] == start
        want = z[start:stop]
        assert np.array_equal(got[True], want) and np.array_equal(got[False], want)
