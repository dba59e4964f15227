"""The plain NumPy path (``_kernels.plain_softmax_ce``): the common call (float32/float64
logits, class axis last, every label a class index or ignore_index, float class weights
or none, no z-loss, soft-capping or grad_output) skips the general validation and dispatch. It must give the general path's
results bit for bit — values, dtypes, 0-d arrays, ``out=`` identity — and hand everything
else, bad input above all, to the general path, which raises the precise error."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import crossent
from crossent import _kernels

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="compiled kernels not built")


def _general_only(monkeypatch):
    monkeypatch.setattr(_kernels, "plain_softmax_ce", lambda *a, **k: None)


def _calls(x, y, opts):
    out = {}
    out["fwd"] = crossent.softmax_cross_entropy(x, y, **opts)
    out["fwd_lse"] = crossent.softmax_cross_entropy(x, y, return_lse=True, **opts)
    out["vag"] = crossent.softmax_cross_entropy_value_and_grad(x, y, **opts)
    out["vag_lse"] = crossent.softmax_cross_entropy_value_and_grad(x, y, return_lse=True, **opts)
    return out


def _assert_same(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same(u, v)
        return
    assert type(a) is type(b) is np.ndarray
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (1, 5), (64, 10), (33, 97), (3, 4, 130), (5, 2000)])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="mean"), dict(reduction="sum"),
                                  dict(label_smoothing=0.1, reduction="mean"),
                                  dict(label_smoothing=1, reduction="sum"),
                                  dict(ignore_index=-100), dict(axis=-1, z_loss=0.0),
                                  dict(weight="w", reduction="mean"),
                                  dict(weight="w", label_smoothing=0.1, reduction="sum")])
def test_plain_path_gives_the_general_paths_bits(monkeypatch, dtype, shape, opts):
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * 3).astype(dtype)
    if x.size > 2:
        x.reshape(-1)[1] = np.nan  # NaN propagates to its row alike
    y = rng.integers(0, shape[-1], shape[:-1])
    if opts.get("weight") == "w":
        opts = dict(opts, weight=(rng.random(shape[-1]) + 0.1).astype(dtype))
    taken = []
    real = _kernels.plain_softmax_ce
    with monkeypatch.context() as m:
        m.setattr(_kernels, "plain_softmax_ce", lambda *a: taken.append(real(*a)) or taken[-1])
        plain = _calls(x, y, opts)
    assert len(taken) == 4 and all(r is not None for r in taken)  # the plain path ran
    assert _kernels.kernel_info()["last_path"] == f"kernel ({dtype})"
    with monkeypatch.context() as m:
        _general_only(m)
        general = _calls(x, y, opts)
    for key in plain:
        _assert_same(plain[key], general[key])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ignore_index, which", [(-100, "some"), (-100, "all"), (2, "some"), (2, "first"),
                                                 (2, "absent")])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_plain_path_with_ignored_examples_gives_the_general_paths_bits(monkeypatch, dtype, reduction,
                                                                      ignore_index, which,
                                                                      label_smoothing, weighted):
    """Labels equal to ignore_index (padding) stay on the plain path, with or without class
    weights: loss 0 and gradient 0 there, "mean" over the other examples (or their targets'
    weights; NaN when there are none), as the general path."""
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(37, 120)) * 3).astype(dtype)
    y = rng.integers(0, 120, 37)
    y[y == 2] = 3
    if which == "some":
        y[::4] = ignore_index
    elif which == "all":
        y[:] = ignore_index
    elif which == "first":
        y[0] = ignore_index  # ("absent": between the least and the largest label, on none)
    opts = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    if weighted:  # "mean" over the targets' weights; float64 weights cast to the compute dtype
        opts["weight"] = rng.random(120) + 0.05
        opts["weight"][5] = 0.0
    taken = []
    real = _kernels.plain_softmax_ce
    with monkeypatch.context() as m:
        m.setattr(_kernels, "plain_softmax_ce", lambda *a: taken.append(real(*a)) or taken[-1])
        plain = _calls(x, y, opts)
    assert all(r is not None for r in taken)
    with monkeypatch.context() as m:
        _general_only(m)
        general = _calls(x, y, opts)
    for key in plain:
        _assert_same(plain[key], general[key])
    loss, grad = plain["vag"]
    ignored = y == ignore_index
    assert not grad[ignored].any()
    if reduction == "mean" and which == "all":
        assert np.isnan(loss)


@pytest.mark.parametrize("ydtype", ["uint8", "int8", "int16", "uint32", "int64"])
@pytest.mark.parametrize("which", ["all", "some"])
def test_ignored_labels_of_every_integer_dtype_are_marked_for_the_kernel(monkeypatch, ydtype, which):
    """Regression: ignored labels were replaced by -1 in the labels' own dtype, which wraps to
    255 for uint8: the kernel read past the row (a garbage loss of 5.6e275, found by the
    PyTorch oracle test's hypothesis run with one uint8 label equal to ignore_index=0)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(9, 4))
    y = rng.integers(1, 4, 9).astype(ydtype)
    y[::2] = 0
    if which == "all":
        y[:] = 0
    opts = dict(ignore_index=0, weight=np.array([1.5, 1.0, 0.5, 2.0]))
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, y, **opts)
    with monkeypatch.context() as m:
        _general_only(m)
        ref = crossent.softmax_cross_entropy_value_and_grad(x, y, **opts)
    _assert_same((loss, grad), ref)
    assert not loss[y == 0].any() and not grad[y == 0].any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_plain_path_writes_into_out_as_the_general_path_does(monkeypatch, dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 120)).astype(dtype)
    y = rng.integers(0, 120, 40)
    out = np.empty_like(x)
    loss, g = crossent.softmax_cross_entropy_value_and_grad(x, y, reduction="mean", out=out)
    assert g is out
    with monkeypatch.context() as m:
        _general_only(m)
        ref_loss, ref = crossent.softmax_cross_entropy_value_and_grad(x, y, reduction="mean")
    _assert_same((loss, out), (ref_loss, ref))
    # in place: the logits become their gradient
    x2 = x.copy()
    loss2, g2 = crossent.softmax_cross_entropy_value_and_grad(x2, y, reduction="mean", out=x2)
    assert g2 is x2
    _assert_same((loss2, x2), (ref_loss, ref))


@pytest.mark.parametrize("view", ["class_stride", "row_stride", "reversed", "transposed"])
def test_plain_path_reads_strided_logits_correctly(monkeypatch, view):
    """Views the kernel cannot read as rows are copied first; row-strided ones are read in
    place (their buffer passed with its layout); the results are the contiguous array's."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(30, 200)).astype(np.float32)
    x = {"class_stride": base[:, ::2], "row_stride": base[::3, :50], "reversed": base[::-1],
         "transposed": base.T[:100].T}[view]
    y = rng.integers(0, x.shape[-1], x.shape[0])
    got = crossent.softmax_cross_entropy_value_and_grad(x, y, reduction="sum")
    ref = crossent.softmax_cross_entropy_value_and_grad(np.ascontiguousarray(x), y, reduction="sum")
    _assert_same(got, ref)


def test_read_only_logits_and_labels_are_read():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(16, 90)).astype(np.float32)
    y = rng.integers(0, 90, 16)
    ref = crossent.softmax_cross_entropy(x, y)
    x.flags.writeable = False
    y.flags.writeable = False
    _assert_same(crossent.softmax_cross_entropy(x, y), ref)


@pytest.mark.parametrize("case", ["label_too_big", "negative_label", "ignored_and_bad_label", "float_labels",
                                  "int_logits", "read_only_out", "wrong_out_dtype", "list_input",
                                  "axis_0", "int_weight", "negative_weight", "weight_shape",
                                  "grad_output", "bad_reduction", "bad_smoothing"])
def test_everything_else_takes_the_general_path(case):
    """Anything the plain path does not handle reaches the general path: the same results
    where the call is valid, the general path's precise error where it is not."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.integers(0, 6, 8)
    kwargs = {}
    error = None
    if case == "label_too_big":
        y[3] = 6
        error = "target"
    elif case == "negative_label":
        y[2] = -1
        error = "target"
    elif case == "ignored_and_bad_label":
        y[2] = -100
        y[5] = 9
        kwargs["ignore_index"] = -100
        error = "target"
    elif case == "float_labels":
        y = y.astype(np.float32)
        error = "target"
    elif case == "int_logits":
        x = (x * 10).astype(np.int32)
        error = "logits"
    elif case == "read_only_out":
        out = np.empty_like(x)
        out.flags.writeable = False
        kwargs["out"] = out
        error = "out"
    elif case == "wrong_out_dtype":
        kwargs["out"] = np.empty(x.shape, np.float64)
        error = "out"
    elif case == "list_input":
        x = x.tolist()
    elif case == "axis_0":
        x = np.ascontiguousarray(x.T)
        kwargs["axis"] = 0
    elif case == "int_weight":
        kwargs["weight"] = np.arange(1, 7)
    elif case == "negative_weight":
        kwargs["weight"] = np.linspace(-0.5, 1.5, 6).astype(np.float32)
        error = "weight"
    elif case == "weight_shape":
        kwargs["weight"] = np.ones(5, np.float32)
        error = "weight"
    elif case == "grad_output":
        kwargs["grad_output"] = np.float32(2.0)
        kwargs["reduction"] = "sum"
    elif case == "bad_reduction":
        kwargs["reduction"] = "avg"
        error = "reduction"
    elif case == "bad_smoothing":
        kwargs["label_smoothing"] = 1.5
        error = "label_smoothing"
    if error is not None:
        with pytest.raises(crossent.CrossEntropyError) as info:
            crossent.softmax_cross_entropy_value_and_grad(x, y, **kwargs)
        assert info.value.argument == error
        return
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, y, **kwargs)
    assert np.all(np.isfinite(np.asarray(loss)))
    assert grad.shape == np.shape(x)


def test_kernel_takes_array_buffers_and_releases_them():
    """The kernel entry point takes NumPy arrays as well as addresses: a read-only output
    is refused with an error (never written), and every buffer view is released after the
    call, on success and on error (a view left behind would hold a reference)."""
    ck = _kernels._ckernels
    x = np.random.default_rng(2).normal(size=(4, 7)).astype(np.float32)
    y = np.array([0, 6, 3, 1], dtype=np.int64)
    loss = np.zeros(4, np.float32)
    args = [0, x, 4, 7, 7, y, None, None, 0.0, 0.0, 0.0, 7.0, loss, None, None, None, 7, 1]
    refs = [sys.getrefcount(a) for a in (x, y, loss)]
    ck.softmax_ce(*args)
    np.testing.assert_array_equal(loss, crossent.softmax_cross_entropy(x, y))
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises((BufferError, ValueError)):
        ck.softmax_ce(*(args[:12] + [read_only] + args[13:]))
    assert not read_only.any()
    assert [sys.getrefcount(a) for a in (x, y, loss)] == refs


def test_labels_outside_the_classes_are_remembered_not_trusted(monkeypatch):
    """int64 labels go to the kernel unscanned, which refuses any outside [0, C); the call
    then scans them (ignored examples, or the general path's error) and runs again, and
    the next call scans first. Every call of a sequence that switches between clean,
    padded and bad labels gives the general path's bits (or its error)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    clean = rng.integers(0, 12, 300)
    padded = clean.copy()
    padded[::7] = -100
    bad = clean.copy()
    bad[150] = 12
    out = np.empty_like(x)
    for y in [clean, padded, padded, clean, clean, bad, clean, padded, bad, padded]:
        for opts in (dict(reduction="mean", ignore_index=-100), dict(reduction="none", ignore_index=-100)):
            if y is bad:
                with pytest.raises(crossent.TargetOutOfRangeError, match=r"target\[150\] = 12"):
                    crossent.softmax_cross_entropy_value_and_grad(x, y, out=out, **opts)
                continue
            got = crossent.softmax_cross_entropy_value_and_grad(x, y, out=out, **opts)
            assert got[1] is out
            got = (got[0], out.copy())
            with monkeypatch.context() as m:
                _general_only(m)
                want = crossent.softmax_cross_entropy_value_and_grad(x, y, **opts)
            _assert_same(got, want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, axis", [((2, 7, 5, 6), 1), ((3, 9, 40), 1), ((6, 4, 3), 0),
                                         ((2, 130, 9), -2)])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="mean", label_smoothing=0.2),
                                  dict(ignore_index=-100, reduction="mean"),
                                  dict(weight="w", reduction="sum")])
def test_plain_path_reads_the_planar_layout_with_the_general_paths_bits(monkeypatch, dtype, shape,
                                                                        axis, opts):
    """C-contiguous logits with the class axis not last take the plain path too (the
    kernel reads them in place): values, lse and gradient are the general path's."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * 3).astype(dtype)
    x.reshape(-1)[3] = np.nan
    c = shape[axis]
    ex_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    y = rng.integers(0, c, ex_shape)
    if "ignore_index" in opts:
        y.reshape(-1)[::5] = -100
    if opts.get("weight") == "w":
        opts = dict(opts, weight=(rng.random(c) + 0.1).astype(dtype))
    opts = dict(opts, axis=axis)
    taken = []
    real = _kernels.plain_softmax_ce
    with monkeypatch.context() as m:
        m.setattr(_kernels, "plain_softmax_ce", lambda *a: taken.append(real(*a)) or taken[-1])
        plain = _calls(x, y, opts)
    assert taken and all(r is not None for r in taken)
    with monkeypatch.context() as m:
        _general_only(m)
        general = _calls(x, y, opts)
    for key in plain:
        _assert_same(plain[key], general[key])
    assert plain["vag"][1].shape == x.shape


def test_in_place_with_padding_labels_is_not_computed_from_a_half_written_gradient(monkeypatch):
    """Regression (this round's optimistic labels): with out= the logits themselves, a call
    whose labels the kernel refused (padding) had already written part of the gradient
    over the logits, and its rerun read them: a wrong loss and gradient. In-place calls
    scan the labels first."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50_000, 12)).astype(np.float32)
    y = rng.integers(0, 12, 50_000)
    y[-5:] = -100
    want = crossent.softmax_cross_entropy_value_and_grad(x, y, ignore_index=-100,
                                                         reduction="mean")
    monkeypatch.setattr(_kernels, "_plain_saw_outside", False)  # as after a clean call
    xc = x.copy()
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(xc, y, ignore_index=-100,
                                                               reduction="mean", out=xc)
    assert grad is xc
    _assert_same((loss, grad), want)
