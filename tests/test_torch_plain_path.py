"""The plain path of ``crossent.torch.cross_entropy`` (``_plain_cross_entropy``): a CPU
``(N, C)`` float32/float64 tensor with valid class indices and no weight, z-loss,
soft-capping, ``num_items`` or autocast skips the general validation. Loss, lse and
gradient (also without a gradient, twice differentiated, with other upstream dtypes) must
be the general path's, bit for bit, though a reduced loss is one autograd node here;
everything else (bad input above all) must reach the general path and its precise errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import crossent  # noqa: E402
from crossent import _kernels  # noqa: E402
from crossent.torch import _cross_entropy as ce_mod  # noqa: E402
from crossent.torch._cross_entropy import cross_entropy  # noqa: E402

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="compiled kernels not built")


@pytest.fixture(autouse=True)
def lean_backward(monkeypatch):
    """The bit-for-bit comparisons run with the gradient computed in the backward (as the
    general path does); a gradient computed in the forward has its own tests below."""
    monkeypatch.setattr(ce_mod, "_EAGER_GRAD_BYTES", 0)


def _run(x, y, opts, upstream=1.7):
    xg = x.clone().requires_grad_(True)
    out = cross_entropy(xg, y, **opts)
    loss = out[0] if isinstance(out, tuple) else out
    grad_fn = type(loss.grad_fn).__name__
    # an upstream value other than 1 (and not a power of 2): g / N is rounded
    (loss.sum() * upstream + (out[1].sum() * 0.5 if isinstance(out, tuple) else 0)).backward()
    values = out if isinstance(out, tuple) else (out,)
    return [v.detach() for v in values], xg.grad, grad_fn


def _assert_same_bits(got, want):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def _general_path(monkeypatch):
    monkeypatch.setattr(ce_mod, "_plain_cross_entropy", lambda *a: None)


def _assert_plain_equals_general(monkeypatch, x, y, opts, grad):
    """The plain path runs (returns a result) and gives the general path's values, lse
    and (``grad``) gradient bit for bit; without ``grad`` the input needs none."""
    results = []
    for general in (False, True):
        with monkeypatch.context() as m:
            taken = []
            if general:
                _general_path(m)
            else:
                real = ce_mod._plain_cross_entropy
                m.setattr(ce_mod, "_plain_cross_entropy",
                          lambda *a: taken.append(real(*a)) or taken[-1])
            if grad:
                values, dx, _ = _run(x, y, opts)
                results.append(values + [dx])
            else:
                out = cross_entropy(x, y, **opts)
                results.append(list(out) if isinstance(out, tuple) else [out])
            if not general:
                assert taken and taken[0] is not None
    _assert_same_bits(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 3), (64, 10), (37, 130), (5, 3000)])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="sum"), dict(reduction="none"),
                                  dict(label_smoothing=0.2), dict(return_lse=True),
                                  dict(ignore_index=-1, reduction="none"),
                                  dict(label_smoothing=1, return_lse=True, reduction="sum")])
@pytest.mark.parametrize("ydtype", [torch.int64, torch.int32, torch.uint8])
def test_plain_path_gives_the_general_paths_bits(monkeypatch, dtype, shape, opts, ydtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    x[0, 1] = float("nan")  # NaN reaches its row's loss and gradient alike
    y = torch.randint(0, shape[1], (shape[0],), generator=g).to(ydtype)
    taken = []
    real = ce_mod._plain_cross_entropy
    with monkeypatch.context() as m:
        m.setattr(ce_mod, "_plain_cross_entropy", lambda *a: taken.append(real(*a)) or taken[-1])
        plain = _run(x, y, opts)
    assert len(taken) == 1 and taken[0] is not None  # the plain path ran
    assert _kernels.kernel_info()["last_path"] == f"torch kernel ({str(dtype)[6:]})"
    with monkeypatch.context() as m:
        _general_path(m)
        general = _run(x, y, opts)
    if opts.get("reduction", "mean") != "none" and not opts.get("return_lse"):
        # the reduced loss is one autograd node (the general path: Function, view, sum, div)
        assert plain[2] == "_ReducedSoftmaxCrossEntropyBackward"
    _assert_same_bits(plain[0] + [plain[1]], general[0] + [general[1]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "plain_tensor"])
def test_plain_path_without_a_gradient_gives_the_general_paths_bits(monkeypatch, dtype, reduction, how):
    """No gradient wanted: the kernel runs without an autograd Function; the mean's
    division (done on the sum's value) must round as the general path's torch op does."""
    g = torch.Generator().manual_seed(5)
    for n, c in [(1, 3), (3, 7), (64, 10), (999, 130)]:  # N = 3, 7, 999: g / N is rounded
        x = torch.randn(n, c, generator=g, dtype=dtype) * 4
        y = torch.randint(0, c, (n,), generator=g)
        if how != "plain_tensor":
            x.requires_grad_(True)
        ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(how, torch.enable_grad)
        results = []
        for general in (False, True):
            with monkeypatch.context() as m, ctx():
                if general:
                    _general_path(m)
                out = cross_entropy(x, y, reduction=reduction, label_smoothing=0.05)
            assert out.grad_fn is None
            results.append(out)
        _assert_same_bits([results[0]], [results[1]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_loss_double_backward_and_other_upstreams(monkeypatch, dtype, reduction):
    """The reduced node's backward with create_graph=True (a Hessian-vector product), and
    with an upstream gradient in another dtype, equals the general path's."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(13, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 6, (13,), generator=g)
    v = torch.randn(13, 6, generator=g, dtype=dtype)
    results = []
    for general in (False, True):
        with monkeypatch.context() as m:
            if general:
                _general_path(m)
            xg = x.clone().requires_grad_(True)
            loss = cross_entropy(xg, y, reduction=reduction, label_smoothing=0.1)
            (gx,) = torch.autograd.grad(loss * 3.0, xg, create_graph=True)
            (hv,) = torch.autograd.grad((gx * v).sum(), xg)
            other = torch.float64 if dtype == torch.float32 else torch.float32
            xg2 = x.clone().requires_grad_(True)
            cross_entropy(xg2, y, reduction=reduction).backward(torch.tensor(0.3, dtype=other))
            results.append([gx.detach(), hv, xg2.grad])
    _assert_same_bits(results[0], results[1])
    ref = torch.nn.functional.cross_entropy(x.clone().requires_grad_(True), y, reduction=reduction)
    assert ref.dtype == dtype


@pytest.mark.parametrize("ignore_index", [0, 3, 5, -1, -100, 6])
def test_an_ignore_index_that_is_a_class_index_is_honoured(monkeypatch, ignore_index):
    """The plain path hands labels to the kernel, which knows no ignore_index: labels
    equal to an ignore_index inside [0, C) must still be ignored (general path), and an
    ignore_index that no label equals changes nothing."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g)
    y = torch.randint(0, 6, (40,), generator=g)
    y[:5] = 3
    got = cross_entropy(x, y, ignore_index=ignore_index)
    ref = torch.nn.functional.cross_entropy(x, y, ignore_index=ignore_index)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


def test_plain_path_matches_pytorch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (64,), generator=g)
    ours = cross_entropy(x, y, label_smoothing=0.1)
    (gx,) = torch.autograd.grad(ours, x)
    ref = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
    (rx,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", ["label_too_big", "negative_label", "minus_one_label", "float_target",
                                  "weight", "z_loss", "softcap", "num_items", "three_dims", "autocast",
                                  "bf16", "bad_reduction", "bad_smoothing", "list_input"])
def test_everything_else_takes_the_general_path(monkeypatch, case):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    y = torch.randint(0, 6, (8,), generator=g)
    kwargs = {}
    error = None
    if case == "label_too_big":
        y[3] = 6
        error = "target"
    elif case == "negative_label":
        y[2] = -5
        error = "target"
    elif case == "minus_one_label":  # the kernel's own "ignored" marker: refused, not ignored
        y[7] = -1
        error = "target"
    elif case == "float_target":
        y = torch.softmax(torch.randn(8, 6, generator=g), dim=1)
    elif case == "weight":
        kwargs["weight"] = torch.linspace(0.5, 1.5, 6)
    elif case == "z_loss":
        kwargs["z_loss"] = 1e-3
    elif case == "softcap":
        kwargs["softcap"] = 5.0
    elif case == "num_items":  # a tensor (a number takes the plain path)
        kwargs.update(num_items=torch.tensor(5.0), reduction="sum")
    elif case == "three_dims":  # not contiguous: read through a class-last copy
        x = torch.randn(2, 4, 6, generator=g).transpose(1, 2)
        y = torch.randint(0, 6, (2, 4), generator=g)
    elif case == "bf16":
        x = x.to(torch.bfloat16)
    elif case == "bad_reduction":
        kwargs["reduction"] = "avg"
        error = "reduction"
    elif case == "bad_smoothing":
        kwargs["label_smoothing"] = -0.5
        error = "label_smoothing"
    elif case == "list_input":
        x = x.tolist()
        error = "input"
    calls = []
    real = ce_mod._plain_cross_entropy
    monkeypatch.setattr(ce_mod, "_plain_cross_entropy", lambda *a: calls.append(real(*a)) or calls[-1])
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case == "autocast" else torch.autocast("cpu", enabled=False)
    with ctx:
        if error is not None:
            with pytest.raises(crossent.CrossEntropyError) as info:
                cross_entropy(x, y, **kwargs)
            assert info.value.argument == error
        else:
            loss = cross_entropy(x, y, **kwargs)
            assert torch.isfinite(loss).all()
    assert all(r is None for r in calls)


@pytest.mark.parametrize("view", ["transposed", "column_slice", "every_other_row", "expanded"])
@pytest.mark.parametrize("grad", [False, True])
def test_views_are_read_through_their_strides(monkeypatch, view, grad):
    """The plain path reads the input's memory directly: rows with a stride (a slice), a
    class axis without unit stride (a transpose: read through a copy) and a broadcast row
    (stride 0) must give the general path's bits."""
    g = torch.Generator().manual_seed(6)
    base = torch.randn(24, 30, generator=g)
    make = {"transposed": lambda b: b.t()[:, :20],
            "column_slice": lambda b: b[:, 3:17],
            "every_other_row": lambda b: b[::2],
            "expanded": lambda b: b[5].expand(24, 30)}[view]
    results = []
    for general in (False, True):
        with monkeypatch.context() as m:
            if general:
                _general_path(m)
            b = base.clone().requires_grad_(grad)
            x = make(b)
            y = torch.randint(0, x.shape[1], (x.shape[0],), generator=torch.Generator().manual_seed(1))
            loss = cross_entropy(x, y, label_smoothing=0.1)
            if grad:
                loss.backward()
            results.append([loss.detach()] + ([b.grad] if grad else []))
    _assert_same_bits(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 7, 4), (3, 5, 6, 7), (2, 90, 33)])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="sum", label_smoothing=0.3),
                                  dict(reduction="none"), dict(return_lse=True)])
@pytest.mark.parametrize("grad", [True, False])
def test_plain_path_reads_n_c_d_inputs_with_the_general_paths_bits(monkeypatch, dtype, shape, opts,
                                                                    grad):
    """Contiguous (N, C, d...) logits take the plain path too (the kernel reads them in
    place): loss, lse and gradient equal the general path's bit for bit."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    x.view(-1)[5] = float("nan")
    y = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    _assert_plain_equals_general(monkeypatch, x, y, opts, grad)


@pytest.mark.parametrize("shape", [(40, 6), (2, 21, 9, 7)])
@pytest.mark.parametrize("ignore_index, labels", [(-100, "some"), (255, "some"), (-1, "some"),
                                                  (-100, "all"), (255, "none")])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="sum", label_smoothing=0.2),
                                  dict(reduction="none", return_lse=True)])
@pytest.mark.parametrize("grad", [True, False])
def test_plain_path_maps_ignored_labels_with_the_general_paths_bits(monkeypatch, shape, ignore_index,
                                                                    labels, opts, grad):
    """ignore_index outside [0, C) (padding -100, 255 in segmentation maps, -1): the plain
    path maps those labels to the kernel's "ignored" and divides the mean by the count of
    the others; all ignored: a NaN mean and a zero gradient, as the general path. Called
    after a call with and without ignored labels (the path remembers which it saw)."""
    g = torch.Generator().manual_seed(len(shape) + abs(ignore_index))
    x = torch.randn(shape, generator=g) * 2
    y = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    if labels == "some":
        y.view(-1)[::3] = ignore_index
    elif labels == "all":
        y.fill_(ignore_index)
    opts = dict(opts, ignore_index=ignore_index)
    for before in (False, True):
        ce_mod._plain_saw_ignored[0] = before
        _assert_plain_equals_general(monkeypatch, x, y, opts, grad)


def test_a_minus_one_label_is_an_error_unless_it_is_ignore_index():
    x = torch.randn(10, 4)
    y = torch.randint(0, 4, (10,))
    y[2], y[5] = -100, -1
    with pytest.raises(crossent.TargetOutOfRangeError, match=r"target\[5\] = -1"):
        cross_entropy(x, y)  # ignore_index=-100: -100 is ignored, -1 is not a class
    y[2] = 0  # ignore_index=-1: the -1 labels are ignored
    ref = torch.nn.functional.cross_entropy(x, y, ignore_index=-1)
    torch.testing.assert_close(cross_entropy(x, y, ignore_index=-1), ref)
    assert torch.isfinite(ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 10), (37, 130), (2, 21, 9, 7)])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="sum", label_smoothing=0.2),
                                  dict(ignore_index=255, num_items=50, reduction="sum")])
def test_gradient_computed_in_the_forward(monkeypatch, dtype, shape, opts):
    """Logits up to _EAGER_GRAD_BYTES get their gradient from the forward's single pass:
    the loss is the general path's bit for bit, the gradient the same to float rounding;
    it is handed over once (a second backward with retain_graph recomputes it, and
    changing the first in place does not change the second) and only for an upstream
    value of 1 (any other recomputes it: the general path's bits)."""
    monkeypatch.setattr(ce_mod, "_EAGER_GRAD_BYTES", 64 << 20)
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    y = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    y.view(-1)[::4] = 255 if "ignore_index" in opts else y.view(-1)[::4]
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-15)
    with monkeypatch.context() as m:
        _general_path(m)
        ref, ref_grad, _ = _run(x, y, opts, upstream=1.0)
        _, ref_grad3, _ = _run(x, y, opts, upstream=3.0)
    xg = x.clone().requires_grad_(True)
    loss = cross_entropy(xg, y, **opts)
    assert type(loss.grad_fn).__name__ == "_ReducedSoftmaxCrossEntropyBackward"
    assert torch.equal(loss.detach(), ref[0])
    (first,) = torch.autograd.grad(loss, xg, retain_graph=True)
    torch.testing.assert_close(first, ref_grad, **tol)
    first.mul_(0)  # (autograd may hand it to x.grad, which optimizers change in place)
    (second,) = torch.autograd.grad(loss, xg, retain_graph=True)
    assert torch.equal(second, ref_grad)  # recomputed from the lse: the general path's bits
    xg3 = x.clone().requires_grad_(True)
    (cross_entropy(xg3, y, **opts) * 3.0).backward()
    assert torch.equal(xg3.grad, ref_grad3)
