"""crossent.metrics: the streaming evaluator against the library, plain NumPy references
and scikit-learn; chunking and merge-order invariance; errors."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crossent
from crossent.metrics import (
    DataError,
    Evaluator,
    LabelError,
    PredictionError,
    detect_input,
    evaluate,
)

REL = 1e-12


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _reference(p, y, k=5, n_bins=15):
    """Plain NumPy definitions of the figures, from probabilities ``p`` (N, C)."""
    n, c = p.shape
    r = np.arange(n)
    onehot = np.zeros_like(p)
    onehot[r, y] = 1.0
    pred = p.argmax(1)
    conf = p[r, pred]
    correct = pred == y
    above = (p > p[r, y][:, None]).sum(1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    freq = np.bincount(y, minlength=c) / n
    nz = freq[freq > 0]
    return {
        "accuracy": correct.mean(),
        "top_k_accuracy": (above < min(k, c)).mean(),
        "brier": ((p - onehot) ** 2).sum(1).mean(),
        "ece": ece,
        "label_entropy": -(nz * np.log(nz)).sum(),
    }


def _data(seed=0, n=500, c=6, scale=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * scale
    y = rng.integers(0, c, n)
    return z, y


# ----------------------------------------------------------------------------- basics


def test_textbook_example_every_figure():
    r = evaluate(np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]]), np.array([0, 2]))
    ce = (math.log(10) + math.log(2)) / 2
    assert r.cross_entropy == pytest.approx(ce, rel=1e-15)
    assert r.cross_entropy_bits == pytest.approx(ce / math.log(2), rel=1e-15)
    assert r.perplexity == pytest.approx(math.exp(ce), rel=1e-15)
    assert r.accuracy == 0.5
    assert r.top_k == 3 and r.top_k_accuracy == 1.0
    assert r.brier == pytest.approx((1.26 + 0.38) / 2, rel=1e-14)
    assert r.ece == pytest.approx(0.5 * 0.6 + 0.5 * 0.5, rel=1e-14)  # bins 9 and 7
    assert r.label_entropy == pytest.approx(math.log(2))
    assert r.normalized_cross_entropy == pytest.approx(ce / math.log(2))
    assert [c["support"] for c in r.per_class] == [1, 0, 1]
    assert r.per_class[0]["mean_loss"] == pytest.approx(math.log(10))
    assert math.isnan(r.per_class[1]["mean_loss"])
    assert [(w["row"], w["label"], w["predicted"]) for w in r.worst] == [(0, 0, 2), (1, 2, 2)]
    assert r.input == {"kind": "probs", "name": "probabilities", "assumed": True,
                       "reason": "values in [0, 1], rows sum to 1", "binary": False,
                       "n_classes": 3}
    d = r.to_dict()
    for key in ("n", "cross_entropy", "cross_entropy_bits", "perplexity", "accuracy",
                "top_k_accuracy", "brier", "ece", "per_class", "worst", "input"):
        assert key in d
    assert d["per_class"][1]["mean_loss"] == "nan"  # strict JSON
    assert "cross-entropy" in str(r)


@pytest.mark.parametrize("kind", ["probs", "logits", "log-probs"])
def test_figures_match_plain_numpy(kind):
    z, y = _data(1, n=2000, c=7)
    p = _softmax(z)
    x = {"probs": p, "logits": z + 3.0, "log-probs": np.log(p)}[kind]
    r = evaluate(x, y, input=kind, top_k=3, n_bins=10)
    ref = _reference(p, y, k=3, n_bins=10)
    ce = -np.log(p[np.arange(len(y)), y]).mean()
    assert r.cross_entropy == pytest.approx(ce, rel=1e-12)
    for key, v in ref.items():
        assert getattr(r, key) == pytest.approx(v, rel=1e-9, abs=1e-14), key
    per_class = [-np.log(p[y == c, c]).mean() for c in range(7)]
    np.testing.assert_allclose([c["mean_loss"] for c in r.per_class], per_class, rtol=1e-12)
    np.testing.assert_array_equal([c["support"] for c in r.per_class], np.bincount(y, minlength=7))


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"weight": [1.0, 2.0, 0.5, 0.0, 3.0]},
        {"ignore_index": -100},
        {"label_smoothing": 0.1},
        {"weight": [1.0, 2.0, 0.5, 0.1, 3.0], "ignore_index": 2, "label_smoothing": 0.2},
    ],
)
@pytest.mark.parametrize("kind", ["probs", "logits", "log-probs"])
def test_cross_entropy_is_the_librarys_mean(kind, opts):
    z, y = _data(2, n=300, c=5)
    if opts.get("ignore_index") == -100:
        y[::7] = -100
    p = _softmax(z)
    x = {"probs": p, "logits": z, "log-probs": np.log(p)}[kind]
    fn = {"probs": crossent.cross_entropy, "logits": crossent.softmax_cross_entropy,
          "log-probs": crossent.nll_loss}[kind]
    kw = dict(opts)
    if "weight" in kw:
        kw["weight"] = np.array(kw["weight"])
    expected = float(fn(x, y, reduction="mean", **kw))
    r = evaluate(x, y, input=kind, **opts)
    assert r.cross_entropy == pytest.approx(expected, rel=1e-12)
    if "ignore_index" in opts:
        assert r.n_ignored == int(np.sum(y == opts["ignore_index"]))
        assert r.n == len(y) - r.n_ignored


def test_eps_clips_probabilities_like_the_library():
    p = np.array([[0.0, 1.0], [0.5, 0.5]])
    y = np.array([0, 1])
    assert math.isinf(evaluate(p, y).cross_entropy)
    r = evaluate(p, y, eps=1e-7)
    assert r.cross_entropy == pytest.approx(
        float(crossent.cross_entropy(p, y, eps=1e-7, reduction="mean")), rel=1e-14)


def test_sklearn_agrees():
    metrics = pytest.importorskip("sklearn.metrics")
    z, y = _data(3, n=3000, c=8)
    p = _softmax(z)
    r = evaluate(p, y, top_k=3)
    kw = {"y_proba": p} if "y_proba" in metrics.log_loss.__code__.co_varnames else {}
    ll = metrics.log_loss(y, **kw) if kw else metrics.log_loss(y, p)
    assert r.cross_entropy == pytest.approx(ll, rel=1e-12)
    assert r.accuracy == pytest.approx(metrics.accuracy_score(y, p.argmax(1)))
    assert r.top_k_accuracy == pytest.approx(metrics.top_k_accuracy_score(y, p, k=3))
    pb = _softmax(z[:, :2])[:, 1]
    yb = (y % 2).astype(int)
    rb = evaluate(pb, yb)
    assert rb.brier == pytest.approx(metrics.brier_score_loss(yb, pb), rel=1e-12)


# ----------------------------------------------------------------------------- binary


@pytest.mark.parametrize("opts", [{}, {"weight": [0.5, 2.0]}, {"label_smoothing": 0.3},
                                  {"weight": [0.0, 2.0], "label_smoothing": 0.1}])
def test_binary_is_the_two_class_problem(opts):
    rng = np.random.default_rng(4)
    x = rng.normal(size=400) * 3
    y = rng.integers(0, 2, 400)
    two = np.stack([np.zeros_like(x), x], axis=1)
    kw = dict(opts)
    if "weight" in kw:
        kw["weight"] = np.array(kw["weight"])
    expected = float(crossent.softmax_cross_entropy(two, y, reduction="mean", **kw))
    r_logit = evaluate(x, y, input="logits", **opts)
    assert r_logit.binary and r_logit.n_classes == 2
    assert r_logit.cross_entropy == pytest.approx(expected, rel=1e-12)
    p = 1.0 / (1.0 + np.exp(-x))
    r_prob = evaluate(p, y, input="probs", **opts)
    assert r_prob.cross_entropy == pytest.approx(expected, rel=1e-9)
    r_col = evaluate(p[:, None], y, input="probs", **opts)  # one column = binary
    assert r_col.binary and r_col.cross_entropy == r_prob.cross_entropy
    assert r_prob.brier == pytest.approx(np.mean((p - y) ** 2), rel=1e-12)
    assert r_prob.accuracy == pytest.approx(np.mean((p > 0.5) == y))
    base = np.mean(y)
    h = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    if not opts:
        assert r_prob.normalized_cross_entropy == pytest.approx(r_prob.cross_entropy / h)


def test_binary_logits_are_exact_in_the_tails():
    x = np.array([40.0, -40.0, 800.0, -800.0])
    y = np.array([1, 0, 0, 1])
    r = evaluate(x, y, input="logits", worst=4)
    losses = sorted(w["loss"] for w in r.worst)
    assert losses[0] == pytest.approx(math.exp(-40), rel=1e-15)
    assert losses[1] == pytest.approx(math.exp(-40), rel=1e-15)
    assert losses[2] == losses[3] == pytest.approx(800.0, rel=1e-15)


# ----------------------------------------------------------------------------- detection


def test_detect_input():
    p = _softmax(_data()[0])
    assert detect_input(p)[0] == "probs"
    assert detect_input(np.log(p))[0] == "log-probs"
    assert detect_input(_data()[0])[0] == "logits"
    assert detect_input(np.array([0.1, 0.9]))[0] == "probs"
    assert detect_input(np.array([-2.0, 3.0]))[0] == "logits"
    kind, why = detect_input(np.array([[0.2, 0.2], [0.3, 0.3]]))
    assert kind == "logits" and "do not sum" in why


def test_auto_detection_is_reported_and_enforced():
    p = _softmax(_data()[0])
    y = _data()[1]
    ev = Evaluator()
    ev.update(p[:100], y[:100])
    assert ev.result().input["assumed"] is True
    bad = p[100:200] * 1.5
    with pytest.raises(PredictionError, match="--input logits") as info:
        ev.update(bad, y[100:200])
    assert info.value.row == 100
    assert ev.n_rows == 100  # the failed update changed nothing


# ----------------------------------------------------------------------------- invariance


def _figures(r):
    return np.array([r.cross_entropy, r.brier, r.ece, r.accuracy, r.top_k_accuracy,
                     r.normalized_cross_entropy] + [c["mean_loss"] for c in r.per_class])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(0, 3000), max_size=6),
    order=st.randoms(use_true_random=False),
    kind=st.sampled_from(["probs", "logits", "log-probs"]),
    weighted=st.booleans(),
)
def test_chunking_and_merge_order_do_not_change_the_figures(cuts, order, kind, weighted):
    z, y = _data(5, n=3000, c=9, scale=4.0)
    p = _softmax(z)
    x = {"probs": p, "logits": z, "log-probs": np.log(p)}[kind]
    opts = dict(input=kind, weight=np.linspace(0.5, 2.0, 9) if weighted else None,
                label_smoothing=0.05 if weighted else 0.0, worst=7)
    whole = Evaluator(**opts)
    whole.update(x, y)
    bounds = sorted(set([0, 3000] + cuts))
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        ev = Evaluator(**opts)
        ev.update(x[a:b], y[a:b], row_offset=a)
        parts.append(ev)
    order.shuffle(parts)
    merged = parts[0]
    for ev in parts[1:]:
        merged.merge(ev)
    r1, r2 = whole.result(), merged.result()
    np.testing.assert_allclose(_figures(r2), _figures(r1), rtol=REL, atol=0)
    assert r1.worst == r2.worst
    assert r1.loss_histogram == r2.loss_histogram
    assert [b["count"] for b in r1.reliability] == [b["count"] for b in r2.reliability]


def test_big_batches_use_blocks_and_threads_the_same():
    z, y = _data(6, n=60_000, c=20)
    ev1 = Evaluator(input="logits")
    ev1.update(z, y)
    ev2 = Evaluator(input="logits")
    for a in range(0, 60_000, 777):
        ev2.update(z[a:a + 777], y[a:a + 777])
    np.testing.assert_allclose(_figures(ev1.result()), _figures(ev2.result()), rtol=REL)
    crossent.set_num_threads(1)
    try:
        ev3 = Evaluator(input="logits")
        ev3.update(z, y)
    finally:
        crossent.set_num_threads(None)
    np.testing.assert_allclose(_figures(ev1.result()), _figures(ev3.result()), rtol=REL)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_update_stream_matches_update(threads, kind, monkeypatch):
    """The command line's pipelined loop (blocks of the next batch scored while the earlier
    ones are added) gives the figures, worst rows and counts of one update per batch."""
    import crossent.metrics as m

    monkeypatch.setattr(m, "_BLOCK_ELEMENTS", 1 << 12)  # several blocks per batch
    monkeypatch.setattr(m, "_STATS_BLOCK_ELEMENTS", 1 << 13)
    z, y = _data(11, n=20_000, c=12)
    x = z if kind == "logits" else _softmax(z)
    cuts = [0, 1, 4000, 4000, 9001, 20_000]  # an empty batch, a one-row batch
    crossent.set_num_threads(threads)
    try:
        ev1 = Evaluator(input=kind, worst=9)
        for a, b in zip(cuts[:-1], cuts[1:]):
            ev1.update(x[a:b], y[a:b], row_offset=a)
        ev2 = Evaluator(input=kind, worst=9)
        ev2._update_stream((x[a:b], y[a:b], a) for a, b in zip(cuts[:-1], cuts[1:]))
    finally:
        crossent.set_num_threads(None)
    assert ev2.n_rows == ev1.n_rows == 20_000
    assert ev2.result().to_dict() == ev1.result().to_dict()


@pytest.mark.parametrize("threads", [1, 2])
def test_update_stream_error_names_the_row(threads, monkeypatch):
    import crossent.metrics as m

    monkeypatch.setattr(m, "_BLOCK_ELEMENTS", 1 << 12)
    monkeypatch.setattr(m, "_STATS_BLOCK_ELEMENTS", 1 << 13)
    z, y = _data(12, n=12_000, c=5)
    y[10_123] = 5
    crossent.set_num_threads(threads)
    try:
        ev = Evaluator(input="logits")
        with pytest.raises(LabelError, match="out of range") as info:
            ev._update_stream((z[a:a + 3000], y[a:a + 3000], a) for a in range(0, 12_000, 3000))
    finally:
        crossent.set_num_threads(None)
    assert info.value.row == 10_123 and info.value.value == 5


def test_many_classes_few_rows_and_pickling():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(64, 5000))
    y = rng.integers(0, 5000, 64)
    ev = Evaluator(input="logits")
    for a in range(0, 64, 3):
        ev.update(z[a:a + 3], y[a:a + 3])
    r = ev.result()
    assert r.cross_entropy == pytest.approx(
        float(crossent.softmax_cross_entropy(z, y, reduction="mean")), rel=1e-12)
    assert sum(c["support"] for c in r.per_class) == 64
    ev2 = pickle.loads(pickle.dumps(ev))
    assert ev2.result().to_dict() == r.to_dict()


# ----------------------------------------------------------------------------- inputs


def test_other_array_libraries_and_dtypes():
    z, y = _data(8, n=200, c=4)
    ref = evaluate(z, y, input="logits").cross_entropy
    assert evaluate(z.astype(np.float32), y, input="logits").cross_entropy == pytest.approx(ref, rel=1e-6)
    assert evaluate(z.tolist(), y.tolist(), input="logits").cross_entropy == pytest.approx(ref, rel=1e-15)
    torch = pytest.importorskip("torch")
    t = torch.tensor(z, requires_grad=True)
    assert evaluate(t, torch.tensor(y), input="logits").cross_entropy == pytest.approx(ref, rel=1e-15)
    assert evaluate(t.to(torch.bfloat16), torch.tensor(y), input="logits").cross_entropy == pytest.approx(ref, rel=1e-2)


def test_token_shaped_predictions_are_flattened():
    z, y = _data(9, n=240, c=11)
    r1 = evaluate(z.reshape(4, 60, 11), y.reshape(4, 60), input="logits")
    r2 = evaluate(z, y, input="logits")
    assert r1.cross_entropy == r2.cross_entropy and r1.n == 240


def test_nan_predictions_propagate_and_are_counted():
    z, y = _data(10, n=50, c=3)
    z[7, 1] = np.nan
    r = evaluate(z, y, input="logits")
    assert r.n_nan == 1 and math.isnan(r.cross_entropy)
    assert r.worst[0]["row"] == 7  # NaN ranks first
    assert not math.isnan(r.accuracy) and not math.isnan(r.ece)


def test_float_labels_must_be_integral():
    p = np.array([[0.4, 0.6], [0.5, 0.5]])
    assert evaluate(p, np.array([1.0, 0.0])).n == 2
    with pytest.raises(LabelError, match="not an integer"):
        evaluate(p, np.array([1.0, 0.5]))


# ----------------------------------------------------------------------------- errors


def test_label_errors_name_the_global_row():
    z, y = _data(11, n=100, c=4)
    y[63] = 4
    ev = Evaluator(input="logits")
    with pytest.raises(LabelError) as info:
        ev.update(z[50:], y[50:], row_offset=50)
    assert info.value.row == 63 and "[0, 4)" in str(info.value)
    assert isinstance(info.value, crossent.CrossEntropyError)
    assert ev.n_rows == 0 and ev.n == 0


def test_probability_errors():
    with pytest.raises(PredictionError, match="out of range") as info:
        evaluate(np.array([[0.5, 0.5], [1.5, -0.5]]), np.array([0, 1]), input="probs")
    assert info.value.row == 1 and info.value.column == 0
    with pytest.raises(PredictionError, match="sum to 0.6"):
        evaluate(np.array([[0.5, 0.5], [0.3, 0.3]]), np.array([0, 1]), input="probs")
    with pytest.raises(PredictionError, match="log-probabilities <= 0"):
        evaluate(np.array([[0.1, -3.0]]), np.array([0]), input="log-probs")


def test_shape_and_option_errors():
    with pytest.raises(crossent.ShapeMismatchError):
        evaluate(np.zeros((3, 2)), np.zeros(4, dtype=int))
    ev = Evaluator(input="logits")
    ev.update(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(crossent.ShapeMismatchError, match="3"):
        ev.update(np.zeros((2, 4)), np.array([0, 1]))
    with pytest.raises(crossent.InvalidOptionError):
        Evaluator(input="probabilities")
    with pytest.raises(crossent.InvalidOptionError):
        Evaluator(label_smoothing=1.5)
    with pytest.raises(crossent.InvalidOptionError):
        Evaluator(weight=[1.0, -1.0])
    with pytest.raises(crossent.InvalidOptionError):
        Evaluator(top_k=0)
    with pytest.raises(crossent.InvalidOptionError, match="different options"):
        Evaluator(top_k=2).merge(Evaluator(top_k=3))
    with pytest.raises(DataError, match="empty"):
        Evaluator().result()


def test_reset_keeps_the_options():
    ev = Evaluator(input="logits", top_k=2, worst=3)
    ev.update(np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    ev.reset()
    assert ev.n_rows == 0 and ev.top_k == 2 and ev.worst_k == 3
    ev.update(np.zeros((2, 5)), np.array([0, 4]))
    assert ev.result().n_classes == 5


def test_a_failed_update_changes_nothing():
    ev = Evaluator(input="logits", weight=[1.0, 2.0])
    with pytest.raises(crossent.InvalidOptionError, match="2 entries"):
        ev.update(np.zeros((3, 4)), np.array([0, 1, 2]))
    assert ev.n_classes is None and ev.n_rows == 0
    z, y = _data(12, n=200_000, c=4)  # several blocks; the bad label is in a late one
    ev = Evaluator(input="logits")
    ev.update(z[:10], y[:10])
    before = ev.result().to_dict()
    y_bad = y.copy()
    y_bad[-5] = 7
    with pytest.raises(LabelError):
        ev.update(z, y_bad, row_offset=10)
    assert ev.result().to_dict() == before


def test_float32_logits_are_scored_to_float32_precision():
    """float32 logits: the softmax in float32 (their own precision), sums in float64."""
    z, y = _data(13, n=5000, c=50, scale=5.0)
    z32 = z.astype(np.float32)
    r32 = evaluate(z32, y, input="logits")
    r64 = evaluate(z32.astype(np.float64), y, input="logits")
    assert r32.cross_entropy == pytest.approx(r64.cross_entropy, rel=1e-7)
    assert r32.brier == pytest.approx(r64.brier, rel=1e-6)
    assert r32.accuracy == r64.accuracy and r32.top_k_accuracy == r64.top_k_accuracy
    for a, b in zip(r32.worst, r64.worst):
        assert a["row"] == b["row"] and a["loss"] == pytest.approx(b["loss"], abs=1e-6)
