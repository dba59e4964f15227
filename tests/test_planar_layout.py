"""The planar layout: C-contiguous logits with the class axis in the middle (PyTorch's
``(N, C, d1, ..., dk)``: segmentation maps, sequence models with ``(B, V, T)`` logits) go
to the kernel as they are, a tile of 16 consecutive examples reading each class as 16
consecutive values, instead of through a transposed class-last copy.

The results must be the class-last path's: bit for bit where both run the tile kernels
(float32 C <= 80, float64 C <= 40: the same values reach the same lanes), to float
rounding elsewhere; the gradient is written in the logits' own layout."""

from __future__ import annotations

import numpy as np
import pytest

import crossent
from crossent import _kernels

from test_kernels import KERNEL_MODULES  # noqa: E402  (the modules this processor runs)

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="compiled kernels not built")


@pytest.fixture(params=KERNEL_MODULES,
                ids=[m.__name__.rsplit(".", 1)[-1] if m else "none" for m in KERNEL_MODULES])
def each_isa(request, monkeypatch):
    """The kernel-level tests run in each instruction set's module the processor runs."""
    if request.param is not None:
        monkeypatch.setattr(_kernels, "_ckernels", request.param)
    return request.param

STORAGE = ["float32", "float64", "bfloat16"]


def _launch_both(x, y, dtype, opts, mode, threads):
    """Loss, lse and gradient of (N, C, S) logits through the planar kernel and through the
    class-last rows of the same values."""
    n, c, s = x.shape
    code = _kernels.storage_code(dtype)
    cdt = np.float64 if dtype == "float64" else np.float32
    w = opts.get("w")
    rows = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(n * s, c)
    g = (np.arange(n * s) % 7 + 1).astype(cdt) / 8
    lse_saved = None
    results = []
    for planar in (True, False):
        src = x if planar else rows
        loss = np.full(n * s, np.nan, cdt)
        lse = np.full(n * s, np.nan, cdt)
        grad = np.full(src.shape, 9, dtype=x.dtype)
        kw = dict(y_ptr=y.ctypes.data, w_ptr=0 if w is None else w.ctypes.data,
                  w_sum=None if w is None else float(w.sum(dtype=np.float64)),
                  label_smoothing=opts.get("eps", 0.0), z_loss=opts.get("z_loss", 0.0),
                  softcap=opts.get("softcap"), n_threads=threads,
                  inner=s if planar else 0)
        stride = 0 if planar else c
        if mode == "forward":
            _kernels.launch(code, src.ctypes.data, n * s, c, stride, loss_ptr=loss.ctypes.data,
                            lse_ptr=lse.ctypes.data, **kw)
            grad = None
        elif mode == "grad":
            _kernels.launch(code, src.ctypes.data, n * s, c, stride, loss_ptr=loss.ctypes.data,
                            lse_ptr=lse.ctypes.data, g_ptr=g.ctypes.data, grad_ptr=grad.ctypes.data,
                            grad_stride=None if planar else c, **kw)
        else:  # the gradient from a saved lse (the autograd backward)
            if lse_saved is None:
                lse_saved = np.empty(n * s, cdt)
                _kernels.launch(code, rows.ctypes.data, n * s, c, c, loss_ptr=loss.ctypes.data,
                                lse_ptr=lse_saved.ctypes.data,
                                **{k: v for k, v in kw.items() if k != "inner"})
            loss = lse = None
            _kernels.launch(code, src.ctypes.data, n * s, c, stride, g_ptr=g.ctypes.data,
                            grad_ptr=grad.ctypes.data, lse_in_ptr=lse_saved.ctypes.data,
                            grad_stride=None if planar else c, **kw)
        if grad is not None and planar:
            grad = np.ascontiguousarray(np.moveaxis(grad, 1, -1)).reshape(n * s, c)
        results.append([a for a in (loss, lse, grad) if a is not None])
    return results


def _as_float64(a):
    return np.asarray(a).astype(np.float64)


@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("n, c, s", [(2, 10, 37), (3, 5, 16), (1, 3, 4), (2, 80, 21), (2, 33, 130),
                                     (2, 150, 19), (1, 700, 40)])
@pytest.mark.parametrize("opts", [{}, {"eps": 0.2}, {"w": True, "eps": 0.1},
                                  {"z_loss": 1e-2, "softcap": 3.0}])
@pytest.mark.parametrize("mode", ["forward", "grad", "grad_from_lse"])
def test_planar_kernel_equals_the_class_last_rows(each_isa, dtype, n, c, s, opts, mode):
    """Every option, partial tiles (S not a multiple of 16; S < 16), tiles that end at a
    plane's end, ignored examples, special values."""
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        storage = ml_dtypes.bfloat16
    else:
        storage = np.dtype(dtype)
    rng = np.random.default_rng(n * 1000 + c + s)
    x = (rng.normal(size=(n, c, s)) * 3).astype(storage)
    x[0, :, 1] = -np.inf
    x[0, 1, 1] = 0.5  # one finite class in an example of -inf logits
    x[-1, c // 2, s - 1] = 1e30
    if s > 3:
        x[0, c - 1, 3] = np.nan  # NaN: its own example only
    y = rng.integers(-1, c, (n, s)).astype(np.int64)  # -1: ignored
    y[0, 1] = 1
    opts = dict(opts)
    cdt = np.float64 if dtype == "float64" else np.float32
    if opts.pop("w", False):
        opts["w"] = rng.uniform(0.5, 2.0, c).astype(cdt)
    planar, rows = _launch_both(x, y, dtype, opts, mode, threads=1)
    exact = c <= (40 if dtype == "float64" else 80)  # both in the tile kernels
    for a, b in zip(planar, rows):
        a64, b64 = _as_float64(a), _as_float64(b)
        assert np.array_equal(np.isnan(a64), np.isnan(b64))
        if exact:
            assert np.array_equal(np.nan_to_num(a64), np.nan_to_num(b64))
        else:
            tol = 1e-12 if dtype == "float64" else (1e-2 if dtype == "bfloat16" else 2e-6)
            np.testing.assert_allclose(np.nan_to_num(a64), np.nan_to_num(b64), rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 2])
def test_planar_kernel_splits_over_threads_with_the_same_bits(each_isa, threads):
    """Items of rows cut across planes: tiles stop at each plane's end."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 12, 3001)).astype(np.float32)
    y = rng.integers(0, 12, (7, 3001)).astype(np.int64)
    one = _launch_both(x, y, "float32", {"eps": 0.1}, "grad", threads=1)[0]
    many = _launch_both(x, y, "float32", {"eps": 0.1}, "grad", threads=threads)[0]
    for a, b in zip(one, many):
        assert np.array_equal(a, b)


def test_planar_kernel_refuses_soft_targets_and_ragged_rows(each_isa):
    x = np.zeros((2, 3, 8), np.float32)
    q = np.zeros((2, 3, 8), np.float32)
    y = np.zeros((2, 8), np.int64)
    loss = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match="planar layout"):
        _kernels.launch(0, x.ctypes.data, 16, 3, 0, q_ptr=q.ctypes.data, loss_ptr=loss.ctypes.data,
                        inner=8)
    with pytest.raises(ValueError, match="planar layout"):
        _kernels.launch(0, x.ctypes.data, 15, 3, 0, y_ptr=y.ctypes.data, loss_ptr=loss.ctypes.data,
                        inner=8)


# ---------------------------------------------------------------------------- the NumPy API


def _reference(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setenv("CROSSENT_DISABLE_KERNELS", "1")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("shape, axis", [((2, 7, 5, 6), 1), ((3, 9, 40), 1), ((6, 4, 3), 0),
                                         ((2, 3, 120, 2), 1), ((2, 200, 18), 1)])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="mean", label_smoothing=0.1),
                                  dict(weight="w", ignore_index=-100, reduction="mean"),
                                  dict(reduction="sum", z_loss=1e-3, softcap=5.0)])
def test_numpy_api_reads_the_class_axis_in_place(monkeypatch, shape, axis, opts):
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * 2).astype(np.float32)
    c = shape[axis]
    ex_shape = shape[:axis] + shape[axis + 1:]
    y = rng.integers(0, c, ex_shape)
    y.reshape(-1)[::5] = -100
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(0.5, 2, c).astype(np.float32)
    if "ignore_index" not in opts:
        y = np.abs(y) % c
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, y, axis=axis, **opts)
    assert crossent.show_config(print_out=False)["kernels"]["last_path"] == "kernel (float32)"
    ref_loss, ref_grad = _reference(monkeypatch, crossent.softmax_cross_entropy_value_and_grad,
                                    x, y, axis=axis, **opts)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-6, atol=2e-7)
    assert grad.shape == x.shape and grad.flags.c_contiguous
    fwd = crossent.softmax_cross_entropy(x, y, axis=axis, **opts)
    np.testing.assert_array_equal(fwd, loss)  # the forward's loss is value_and_grad's
    # into a caller's buffer, and in place (out is the logits)
    out = np.empty_like(x)
    loss2, grad2 = crossent.softmax_cross_entropy_value_and_grad(x, y, axis=axis, out=out, **opts)
    assert grad2 is out
    np.testing.assert_array_equal(out, grad)
    xc = x.copy()
    crossent.softmax_cross_entropy_value_and_grad(xc, y, axis=axis, out=xc, **opts)
    np.testing.assert_array_equal(xc, grad)


@pytest.mark.parametrize("make", ["strided", "soft_targets", "two_per_plane"])
def test_other_layouts_still_go_through_a_class_last_copy(monkeypatch, make):
    """A non-contiguous array, soft targets, and planes of fewer than 4 examples use the
    class-last path; the answers are the same."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6, 10)).astype(np.float32)
    y = rng.integers(0, 6, (4, 10))
    if make == "strided":
        x = x[:, :, ::2]
        y = y[:, ::2]
    elif make == "soft_targets":
        y = np.moveaxis(np.eye(6, dtype=np.float32)[y], -1, 1)
    else:
        x = x[:, :, :2].copy()
        y = y[:, :2]
    assert _kernels.planar_inner(x.shape, 1, x.flags.c_contiguous) == 0 or make == "soft_targets"
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, y, axis=1, reduction="sum")
    ref_loss, ref_grad = _reference(monkeypatch, crossent.softmax_cross_entropy_value_and_grad,
                                    x, y, axis=1, reduction="sum")
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-6, atol=2e-7)


# ----------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (3, 21, 33), (2, 150, 9)])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.1, ignore_index=3),
                                  dict(weight=True, reduction="sum")])
def test_torch_reads_n_c_d_inputs_in_place(dtype, shape, opts):
    """``crossent.torch.cross_entropy`` on ``(N, C, d...)`` tensors (the segmentation
    layout) against PyTorch: loss and gradient; channels-last memory is already class-last
    and takes the rows path."""
    torch = pytest.importorskip("torch")
    from crossent.torch import cross_entropy

    g = torch.Generator().manual_seed(sum(shape))
    tdt = getattr(torch, dtype)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    opts = dict(opts)
    if opts.pop("weight", False):
        opts["weight"] = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == "bfloat16" else dict(rtol=1e-5, atol=1e-6)
    layouts = [torch.contiguous_format] + ([torch.channels_last] if len(shape) == 4 else [])
    for fmt in layouts:
        x = x64.to(tdt).clone(memory_format=fmt).requires_grad_(True)
        ref_x = x.detach().double().requires_grad_(True)
        w = opts.get("weight")
        kw = dict(opts, weight=None if w is None else w.to(torch.float64 if dtype == "float64"
                                                            else torch.float32))
        loss = cross_entropy(x, y, **kw)
        loss.backward()
        ref = torch.nn.functional.cross_entropy(ref_x, y, **dict(opts, weight=w))
        ref.backward()
        torch.testing.assert_close(loss.double(), ref, **tol)
        torch.testing.assert_close(x.grad.double(), ref_x.grad, **tol)
        assert x.grad.shape == x.shape
