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


@needs_c
def test_exp_f32_bits():
    rng = np.random.default_rng(0)
    x = -np.abs(rng.normal(size=200_003) * 40).astype(np.float32)
    x[:11] = [0.0, -1e-30, -87.3, -103.99, -104.0, -104.01, -np.inf, -150.0, np.nan, -0.0, -1e-45]
    x = np.concatenate([x, _every_float32(-104.0, -0.0, 4099)])
    out = np.full_like(x, 7.0)
    metrics._cmetrics.exp_f32(x.ctypes.data, out.ctypes.data, x.size)
    ref = metrics._exp_f32(x)
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))


@needs_c
@pytest.mark.parametrize("c", [2, 5, 33, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_stats_c_vs_numpy(c, dtype):
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
