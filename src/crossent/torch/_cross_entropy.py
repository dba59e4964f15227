"""Drop-in ``torch.nn.functional.cross_entropy`` and ``torch.nn.CrossEntropyLoss``.

Same signature, defaults and numbers as PyTorch (class axis 1, ``(N, C, d1, ..., dk)``
inputs, class-index or probability targets, ``weight``, ``ignore_index``,
``label_smoothing``, ``reduction``), plus crossent's options (``z_loss``, ``softcap``,
``return_lse``) and ``num_items`` for exact gradient accumulation.

How it runs:

* Arguments are validated by crossent's own machinery
  (:func:`crossent._categorical._prepare`), so bad input raises a
  :class:`crossent.CrossEntropyError` naming the argument, never a device-side assert.
* A :class:`torch.autograd.Function` computes the per-example loss and log-sum-exp and
  saves only the input, the targets, the weights and the per-example lse for backward
  (PyTorch saves an ``(N, C)`` log-softmax). The backward pass recomputes the softmax from
  the saved lse: one read of the logits, one write of the gradient.
* On CPU tensors (float32, float64, bfloat16, float16) both passes run crossent's fused C
  kernel directly on the tensors' memory (zero-copy when the class axis has unit stride,
  as for ``(N, C)`` inputs, and for contiguous ``(N, C, d...)`` inputs with class-index
  targets: the kernels' planar layout; others are read through one class-last copy).
* On other devices, and for anything the kernel cannot take, a pure-PyTorch path runs the
  same math (crossent's reference implementation) over chunks of rows, so that no
  ``(N, C)`` float32 temporary exists besides the gradient itself.
* Reduction happens outside the Function, in PyTorch, on the per-example loss: ``"mean"``
  divides by PyTorch's denominator (the sum of the targets' class weights, ignored
  examples excluded), or by ``num_items`` when given.
* The common CPU call (``_plain_cross_entropy``: float32/float64, class indices, no class
  weight, z-loss, softcap, ``num_items`` or autocast) skips the validation above: the
  kernel checks the labels, and a reduced loss is one autograd node that sums and divides
  with the same ops (``_ReducedSoftmaxCrossEntropy``): the same bits as the general path.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _kernels
from .._categorical import _prepare
from .._errors import CrossEntropyTypeError, InvalidOptionError
from .._reference import (
    softcap_logits,
    softmax_grad_index,
    softmax_grad_soft,
    softmax_loss,
)
from .._validation import check_nonnegative, check_softcap

__all__ = ["cross_entropy", "CrossEntropyLoss"]

# The pure-PyTorch path processes this many logits at a time (rows of C elements):
# 4 Mi elements, 16 MiB per float32 temporary.
_CHUNK_ELEMENTS = 1 << 22

_disable_compile = getattr(getattr(torch, "compiler", None), "disable", None)
if _disable_compile is None:  # pragma: no cover - torch < 2.1
    import torch._dynamo

    _disable_compile = torch._dynamo.disable


@dataclass(frozen=True)
class _Plan:
    """The non-tensor facts of one call (shared by forward and backward)."""

    xp: Any  # array-API namespace of torch (for crossent._reference)
    axis: int  # the class axis of the input
    eps: float  # label smoothing
    z_loss: float
    softcap: float | None
    cdt: torch.dtype  # compute dtype
    code: int | None  # the C kernel's storage code, or None: the pure-PyTorch path
    w_sum: float  # sum of the class weights (or C): the kernel's smoothing term


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------


def _rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` as ``(rows, C)``, class axis last with unit stride: a view where possible."""
    if axis == 1 and t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] == 1):
        return t  # (already rows: no reshape, ~1 us a call)
    c = t.shape[axis]
    r = (t if axis == t.dim() - 1 else t.movedim(axis, -1)).reshape(-1, c)
    if c > 1 and r.stride(1) != 1:
        r = r.contiguous()
    return r


def _chunks(n_rows: int, n_classes: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``_CHUNK_ELEMENTS`` logits each."""
    step = max(1, _CHUNK_ELEMENTS // max(1, n_classes))
    return [(a, min(n_rows, a + step)) for a in range(0, n_rows, step)]


def _index_parts(y: torch.Tensor, w: torch.Tensor | None) -> tuple[Any, Any, Any]:
    """``(ignored mask, safe class index, w_y)`` from kernel-style targets (-1 = ignored)."""
    ignored = y < 0
    ys = torch.clamp(y, min=0)
    w_y = None if w is None else torch.where(ignored, 0.0, w[ys])
    return ignored, ys, w_y


def _smoothed_weighted(q: torch.Tensor, w: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
    """Soft targets: ``w_c * ((1 - eps) q_c + eps / C)``."""
    eps = plan.eps
    if eps:
        q = (1.0 - eps) * q + eps / q.shape[-1]
    return q if w is None else w * q


# --------------------------------------------------------------------------------------------
# the pure-PyTorch path (crossent's reference math, row chunk by row chunk)
# --------------------------------------------------------------------------------------------


def _rows_loss(
    xr: torch.Tensor, y: Any, q: Any, w: Any, plan: _Plan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(loss, lse)`` of ``(rows, C)`` logits; differentiable in ``xr``."""
    xp = plan.xp
    z = softcap_logits(xp, xr.to(plan.cdt), plan.softcap)
    if q is None:
        ignored, ys, w_y = _index_parts(y, w)
        loss, lse, _, _ = softmax_loss(xp, z, ys, w, w_y, None, plan.eps, plan.z_loss)
        loss = torch.where(ignored, 0.0, loss)
    else:
        wq = _smoothed_weighted(q, w, plan)
        loss, lse, _, _ = softmax_loss(xp, z, None, w, None, wq, plan.eps, plan.z_loss)
    return loss, lse


def _rows_grad(
    xr: torch.Tensor, y: Any, q: Any, w: Any, lse: torch.Tensor, g: Any, g_lse: Any, plan: _Plan
) -> torch.Tensor:
    """Gradient w.r.t. ``xr`` of ``sum(g * loss + g_lse * lse)``, from the saved lse."""
    xp = plan.xp
    z = softcap_logits(xp, xr.to(plan.cdt), plan.softcap)
    s = z - lse[:, None]  # exp(s) is the softmax
    lse_s = torch.zeros_like(lse)
    if g is None:
        dz = torch.zeros_like(s)
    elif q is None:
        ignored, ys, w_y = _index_parts(y, w)
        g = torch.where(ignored, 0.0, g)  # an all-ignored mean sends g = inf
        dz = softmax_grad_index(xp, s, lse_s, lse, ys, g, w, w_y, plan.eps, plan.z_loss)
        dz = torch.where(ignored[:, None], 0.0, dz)
    else:
        dz = softmax_grad_soft(xp, s, lse_s, lse, _smoothed_weighted(q, w, plan), g, plan.z_loss)
    if g_lse is not None:
        dz = dz + g_lse[:, None] * torch.exp(s)
    if plan.softcap is not None:
        t = z / plan.softcap
        dz = dz * (1.0 - t * t)
    return dz


def _sl(t: Any, a: int, b: int) -> Any:
    return None if t is None else t[a:b]


def _torch_forward(xr, y, q, w, plan):  # type: ignore[no-untyped-def]
    n_rows, n_classes = xr.shape
    loss = torch.empty(n_rows, dtype=plan.cdt, device=xr.device)
    lse = torch.empty(n_rows, dtype=plan.cdt, device=xr.device)
    for a, b in _chunks(n_rows, n_classes):
        loss[a:b], lse[a:b] = _rows_loss(xr[a:b], _sl(y, a, b), _sl(q, a, b), w, plan)
    return loss, lse


def _torch_backward(xr, y, q, w, lse, g, g_lse, plan, grad):  # type: ignore[no-untyped-def]
    n_rows, n_classes = xr.shape
    for a, b in _chunks(n_rows, n_classes):
        grad[a:b] = _rows_grad(
            xr[a:b], _sl(y, a, b), _sl(q, a, b), w, lse[a:b], _sl(g, a, b), _sl(g_lse, a, b), plan
        )


# --------------------------------------------------------------------------------------------
# the fused C kernel (CPU)
# --------------------------------------------------------------------------------------------


def _ptr(t: Any) -> int:
    return 0 if t is None else int(t.data_ptr())


def _kernel_rows(x, plan, q):  # type: ignore[no-untyped-def]
    """The logits as the kernel reads them: ``(x, S)`` for the planar layout (C-contiguous
    ``(N, C, d...)`` with class-index targets: read in place, S = prod(d)), else
    ``(rows, 0)`` (a class-last ``(rows, C)`` view or copy)."""
    if q is None and plan.axis != x.dim() - 1:
        inner = _kernels.planar_inner(tuple(x.shape), plan.axis, x.is_contiguous())
        if inner:
            return x, inner
    return _rows(x, plan.axis), 0


def _kernel_shape(xr, plan, inner):  # type: ignore[no-untyped-def]
    """(rows, classes, row stride) of what _kernel_rows returned"""
    if not inner:
        return xr.shape[0], xr.shape[1], xr.stride(0)
    n_classes = xr.shape[plan.axis]
    return xr.numel() // n_classes, n_classes, 0


def _kernel_forward(xr, y, q, w, plan, ignored_rows=True, inner=0, keep_loss=True,
                    want_lse=True, grad=None, g_row=None):  # type: ignore[no-untyped-def]
    """Per-row (loss, lse). ``keep_loss=False``: the loss in this thread's reused scratch
    (only summed: no fresh pages per call, ~1 ms per million rows); ``want_lse=False``:
    lse not stored (None). With ``grad`` (laid out as ``xr``, or as the logits in the
    planar layout) the gradient too, in the same pass, for the upstream value ``g_row``
    (a 0-d array) of every row."""
    n_rows, n_classes, row_stride = _kernel_shape(xr, plan, inner)
    if keep_loss:
        loss = torch.empty(n_rows, dtype=plan.cdt)
    else:
        loss = torch.from_numpy(_kernels._loss_buffer(n_rows, _NP_FLOATS[plan.cdt], keep=False))
    lse = torch.empty(n_rows, dtype=plan.cdt) if want_lse else None
    _kernels.launch(
        plan.code,
        xr.data_ptr(),
        n_rows,
        n_classes,
        row_stride,
        loss_ptr=loss.data_ptr(),
        lse_ptr=_ptr(lse),
        y_ptr=_ptr(y),
        q_ptr=_ptr(q),
        w_ptr=_ptr(w),
        w_sum=plan.w_sum,
        label_smoothing=plan.eps,
        z_loss=plan.z_loss,
        softcap=plan.softcap,
        ignored_rows=ignored_rows,
        inner=inner,
        g_ptr=0 if grad is None else g_row,
        g_stride=0,
        grad_ptr=_ptr(grad),
        grad_stride=0 if grad is None or inner else grad.stride(0),
    )
    return loss, lse


def _kernel_backward(xr, y, q, w, lse, g, plan, grad, inner=0):  # type: ignore[no-untyped-def]
    n_rows, n_classes, row_stride = _kernel_shape(xr, plan, inner)
    # A reduced loss's upstream reaches here as one value expanded over the rows (stride
    # 0): the kernel reads it with stride 0 instead of from a copy with N entries (fresh
    # pages on every step). No g: only the lse output is differentiated, g = 0.
    if g is None:
        g = torch.zeros((), dtype=plan.cdt).expand(n_rows)
    g = g.to(plan.cdt)
    g_stride = 0 if g.stride(0) == 0 else 1
    if g_stride:
        g = g.contiguous()
    # with the forward's lse the kernel writes the gradient only (loss and lse not stored)
    _kernels.launch(
        plan.code,
        xr.data_ptr(),
        n_rows,
        n_classes,
        row_stride,
        y_ptr=_ptr(y),
        q_ptr=_ptr(q),
        w_ptr=_ptr(w),
        w_sum=plan.w_sum,
        label_smoothing=plan.eps,
        z_loss=plan.z_loss,
        softcap=plan.softcap,
        g_ptr=g.data_ptr(),
        g_stride=g_stride,
        grad_ptr=grad.data_ptr(),
        grad_stride=0 if inner else grad.stride(0),
        lse_in_ptr=lse.data_ptr(),
        inner=inner,
    )


# --------------------------------------------------------------------------------------------
# the autograd Function
# --------------------------------------------------------------------------------------------


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Per-example ``(loss, lse)``; saves only x, targets, weights and lse for backward.

    ``y``: int64 class indices per row, -1 for ignored rows (or None); ``q``: soft targets
    as ``(rows, C)`` in the compute dtype (or None); ``w``: class weights (or None).
    ``ignored_rows=False``: every label must be a class index (the kernel refuses -1 too,
    raising ``IndexError``).
    """

    @staticmethod
    @_disable_compile
    def forward(ctx, x, y, q, w, plan, ignored_rows):  # type: ignore[no-untyped-def,override]
        ctx.set_materialize_grads(False)
        if plan.code is not None:
            xr, inner = _kernel_rows(x, plan, q)
            loss, lse = _kernel_forward(xr, y, q, w, plan, ignored_rows, inner)
        else:
            loss, lse = _torch_forward(_rows(x, plan.axis), y, q, w, plan)
        ctx.plan = plan
        ctx.save_for_backward(x, y, q, w, lse)
        return loss, lse

    @staticmethod
    def backward(ctx, g_loss, g_lse):  # type: ignore[no-untyped-def,override]
        return _backward(ctx, g_loss, g_lse)


@_disable_compile  # (a backward called inside a compiled function must not be traced)
def _backward(ctx, g_loss, g_lse):  # type: ignore[no-untyped-def]
    x, y, q, w, lse = ctx.saved_tensors
    plan = ctx.plan
    if not ctx.needs_input_grad[0] or (g_loss is None and g_lse is None):
        return None, None, None, None, None, None
    if torch.is_grad_enabled():
        # create_graph=True: a gradient that is itself differentiable (double backward,
        # Hessian-vector products), through the reference math.
        return _differentiable_grad(x, y, q, w, g_loss, g_lse, plan), None, None, None, None, None
    if plan.code is not None and g_lse is None:
        xr, inner = _kernel_rows(x, plan, q)
        if inner:  # the planar layout: the gradient in the logits' own (contiguous) layout
            grad = torch.empty(x.shape, dtype=x.dtype)
            _kernel_backward(xr, y, q, w, lse, g_loss, plan, grad, inner)
            return grad, None, None, None, None, None
    xr = _rows(x, plan.axis)
    grad = torch.empty(xr.shape, dtype=x.dtype, device=x.device)
    if plan.code is not None and g_lse is None:
        _kernel_backward(xr, y, q, w, lse, g_loss, plan, grad)
    else:  # (the kernel has no term for a gradient flowing into the lse output)
        _torch_backward(xr, y, q, w, lse, g_loss, g_lse, plan, grad)
    if plan.axis == x.dim() - 1:  # (2-d input: no movedim, ~5 us a call)
        return grad.view(x.shape), None, None, None, None, None
    moved = x.movedim(plan.axis, -1).shape
    return grad.view(moved).movedim(-1, plan.axis), None, None, None, None, None


def _differentiable_grad(x, y, q, w, g_loss, g_lse, plan):  # type: ignore[no-untyped-def]
    with torch.enable_grad():
        loss, lse = _rows_loss(_rows(x, plan.axis), y, q, w, plan)
        outs = [t for t, g in ((loss, g_loss), (lse, g_lse)) if g is not None]
        grads = [g for g in (g_loss, g_lse) if g is not None]
        (dx,) = torch.autograd.grad(outs, x, grads, create_graph=True)
    return dx


def _reduce(loss: torch.Tensor, denom: float | None) -> torch.Tensor:
    """The general path's reduction (``torch.sum``, then for the mean over its denominator
    ``denom`` in the loss's dtype: NaN for 0), bit for bit, for a loss that needs no
    gradient; ``denom`` None: the sum. The division is done by NumPy on the sum's value:
    one torch op on a 0-d tensor costs ~2.5 us, a sixth of a 64 x 10 call, and both divide
    the same two float32 (float64) values."""
    out = torch.sum(loss)
    if denom is None:
        return out
    t = _NP_FLOATS[loss.dtype]
    return torch.from_numpy(np.asarray(t(out.item()) / t(_nonzero_denominator(denom))))


# Logits up to this size get their reduced loss's gradient in the forward pass, from the
# same single pass as the loss (the fused kernel of softmax_cross_entropy_value_and_grad):
# one read of the logits and one kernel call instead of two of each. The gradient is then
# held from forward to backward, as PyTorch holds its (N, C) log-softmax, where the lean
# design holds the per-row lse only; larger logits (vocabulary-sized) keep the lean design
# and the backward recomputes from the lse. Measured (A/B, float32, 2 threads, forward +
# backward): 64 x 10 -6 %, 4096 x 64 -22 %, (8, 21, 64, 64) -35 %, (8, 21, 256, 256)
# 23 -> 18 ms.
_EAGER_GRAD_BYTES = 64 << 20


class _ReducedSoftmaxCrossEntropy(torch.autograd.Function):
    """The plain path's ``"mean"``/``"sum"`` loss as one autograd node.

    The general path's graph is the per-example Function, a view, ``sum`` and ``div``:
    three more nodes, ~15 us of a 64 x 10 training step. Here the reduction runs inside
    the forward with the same ops, and the backward turns the scalar upstream into the
    per-row one as DivBackward and SumBackward would (``g / N``, expanded with stride 0).
    Loss and lse are the general path's bit for bit, and so is the gradient computed in
    the backward; a gradient computed in the forward (``_EAGER_GRAD_BYTES``) comes from the
    fused pass's formula (softmax from the exp-sum instead of ``exp(z - lse)``): the same
    to float rounding, and it is used only for an upstream value of exactly 1 (the common
    ``loss.backward()``), once (autograd may keep it as ``x.grad`` and add to it in
    place). ``y`` is int64 class indices, all in ``[0, C)`` or -1 with ``ignored_rows``
    (the kernel checks: anything else raises ``IndexError``).
    """

    @staticmethod
    @_disable_compile
    def forward(ctx, x, y, plan, denom, ignored_rows):  # type: ignore[no-untyped-def,override]
        ctx.set_materialize_grads(False)
        xr, inner = _kernel_rows(x, plan, None)  # (x itself unless a copy is needed)
        grad = g_row = None
        if x.numel() * x.element_size() <= _EAGER_GRAD_BYTES:
            t = _NP_FLOATS[plan.cdt]
            g_row = np.asarray(t(1) if denom is None else t(1) / t(_nonzero_denominator(denom)))
            grad = torch.empty(x.shape if inner else xr.shape, dtype=x.dtype)
        loss, lse = _kernel_forward(xr, y, None, None, plan, ignored_rows, inner,
                                    keep_loss=False, grad=grad, g_row=g_row)
        ctx.plan, ctx.denom, ctx.grad = plan, denom, grad
        ctx.save_for_backward(x, y, lse)  # (x itself: a double backward differentiates it)
        return _reduce(loss, denom)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def,override]
        return _reduced_backward(ctx, g)


@_disable_compile
def _reduced_backward(ctx, g):  # type: ignore[no-untyped-def]
    none = (None,) * 4
    if g is None or not ctx.needs_input_grad[0]:
        return (None,) + none
    x, y, lse = ctx.saved_tensors
    eager, ctx.grad = ctx.grad, None  # (handed over at most once)
    if (eager is not None and not torch.is_grad_enabled() and g.dtype == x.dtype
            and g.device.type == "cpu" and g.item() == 1.0):
        return (eager.view(x.shape),) + none
    n_rows = y.shape[0]
    denom = None if ctx.denom is None else _nonzero_denominator(ctx.denom)
    if torch.is_grad_enabled() or g.dtype != x.dtype or g.device.type != "cpu":
        # create_graph=True (through the reference math), or an upstream gradient in
        # another dtype: DivBackward's and SumBackward's own ops
        g_rows = (g if denom is None else g / denom).expand(n_rows)
        if torch.is_grad_enabled():
            return (_differentiable_grad(x, y, None, None, g_rows, None, ctx.plan),) + none
        xr, inner = _kernel_rows(x, ctx.plan, None)
        grad = torch.empty(xr.shape if not inner else x.shape, dtype=x.dtype)
        _kernel_backward(xr, y, None, None, lse, g_rows, ctx.plan, grad, inner)
        return (grad.view(x.shape),) + none
    # g / denominator as DivBackward computes it (the same two values divided in x's
    # dtype), one value read by the kernel for every row (SumBackward's expand; ignored
    # rows get 0): no torch op
    t = _NP_FLOATS[x.dtype]
    g_row = np.asarray(t(g.item()) if denom is None else t(g.item()) / t(denom))
    xr, inner = _kernel_rows(x, ctx.plan, None)
    grad = torch.empty(xr.shape if not inner else x.shape, dtype=x.dtype)
    _kernels.launch(ctx.plan.code, xr.data_ptr(), n_rows, x.shape[1], 0 if inner else xr.stride(0),
                    y_ptr=y.data_ptr(), g_ptr=g_row, g_stride=0, grad_ptr=grad.data_ptr(),
                    lse_in_ptr=lse.data_ptr(), label_smoothing=ctx.plan.eps, inner=inner)
    return (grad.view(x.shape),) + none


# --------------------------------------------------------------------------------------------
# the public function
# --------------------------------------------------------------------------------------------


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # pragma: no cover - torch < 2.4
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled()) if device_type == "cuda" else False


def _upcast(t: Any) -> Any:
    """Autocast's float32 policy: half-precision floating tensors become float32."""
    if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def _detach(t: Any) -> Any:
    return t.detach() if isinstance(t, torch.Tensor) else t


def _check_device(name: str, t: Any, input: torch.Tensor) -> None:
    if isinstance(t, torch.Tensor) and t.device != input.device:
        raise CrossEntropyTypeError(
            f"{name} is on device {t.device} but input is on device {input.device}; "
            "pass both on the same device",
            argument=name,
            value=str(t.device),
            expected=str(input.device),
        )


def _check_num_items(num_items: Any, reduction: str) -> Any:
    if num_items is None:
        return None
    if reduction == "none":
        raise InvalidOptionError(
            "num_items divides the summed loss (reduction='sum' or 'mean'); with "
            "reduction='none' there is nothing to divide",
            argument="num_items",
            value=num_items,
            expected="None with reduction='none'",
        )
    if isinstance(num_items, torch.Tensor):
        if num_items.numel() != 1 or num_items.dtype.is_complex or num_items.dtype == torch.bool:
            raise InvalidOptionError(
                f"num_items is a tensor of shape {tuple(num_items.shape)} and dtype "
                f"{num_items.dtype}; expected one real number",
                argument="num_items",
                value=tuple(num_items.shape),
                expected="a number > 0 (or a one-element tensor)",
            )
        return num_items.reshape(())
    v = check_nonnegative("num_items", num_items)
    if v <= 0.0:
        raise InvalidOptionError(
            f"num_items = {num_items!r} must be > 0: it is the number of non-ignored "
            "targets over all micro-batches",
            argument="num_items",
            value=num_items,
            expected="a finite number > 0",
        )
    return v


def _kernel_code(input: torch.Tensor, cdt: torch.dtype) -> int | None:
    if input.device.type != "cpu" or input.numel() == 0 or not _kernels.available():
        return None
    if type(input) is not torch.Tensor and not isinstance(input, torch.nn.Parameter):
        return None  # tensor subclasses (fake, functional, ...) have no plain memory
    code = _kernels.storage_code(str(input.dtype).removeprefix("torch."))
    if code is None or cdt != (torch.float64 if code == 1 else torch.float32):
        return None
    return code


_INDEX_DTYPES = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})
_PLAIN_CODES = {torch.float32: 0, torch.float64: 1}
_torch_xp: Any = None
_NP_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}
_plain_plans: dict[tuple[int, int, float], _Plan] = {}


def _plain_plan(code: int, n_classes: int, eps: float) -> _Plan:
    """The plain path's plans, one per (dtype, C, smoothing): a frozen dataclass costs
    ~2 us to build, a tenth of a 64 x 10 call."""
    global _torch_xp
    key = (code, n_classes, eps)
    plan = _plain_plans.get(key)
    if plan is None:
        if _torch_xp is None:
            import array_api_compat

            _torch_xp = array_api_compat.array_namespace(torch.empty(0))
        if len(_plain_plans) >= 256:
            _plain_plans.clear()
        plan = _plain_plans[key] = _Plan(
            xp=_torch_xp, axis=1, eps=eps, z_loss=0.0, softcap=None,
            cdt=torch.float64 if code == 1 else torch.float32, code=code, w_sum=float(n_classes))
    return plan


def _plain_cross_entropy(
    input: Any,
    target: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    return_lse: bool,
    num_items: Any,
) -> Any:
    """The common call in a few Python steps: a CPU ``(N, C)`` float32/float64 tensor (or
    a contiguous ``(N, C, d...)`` one the kernel reads in place: the planar layout),
    class indices in ``[0, C)`` or equal to an ``ignore_index`` outside it, no class
    weight, z-loss, soft-capping or autocast, ``num_items`` a number or None. Loss and lse
    are the general path's bit for bit, and so is the gradient (but for one computed in
    the forward: see ``_ReducedSoftmaxCrossEntropy``), without its validation (~30 us a
    call: the array-API namespace, option checks, a problem object): the kernel itself
    refuses any label outside ``[0, C)``, and then (as for anything else) this returns
    None and the general path validates, raises the precise error, or handles
    ``ignore_index``. A reduced loss that needs a gradient is one autograd node
    (``_ReducedSoftmaxCrossEntropy``); without a gradient no Function is built at all. No torch op touches the whole batch before the
    kernel runs: one would wake PyTorch's OpenMP threads, which then spin for milliseconds
    on the CPUs the kernel's threads need ((8, 21, 256, 256): 8.1 ms instead of 4.2)."""
    if type(input) is not torch.Tensor and type(input) is not torch.nn.Parameter:
        return None
    if type(target) is not torch.Tensor or weight is not None or softcap is not None:
        return None
    code = _PLAIN_CODES.get(input.dtype)
    if code is None or input.ndim < 2 or input.device.type != "cpu":
        return None
    if num_items is not None and (type(num_items) not in (int, float) or reduction == "none"
                                  or not 0 < num_items < math.inf):
        return None  # (a tensor, or an error the general path names)
    n_classes = input.shape[1]
    n_rows = input.shape[0] if input.ndim == 2 else target.numel()
    if (target.dtype not in _INDEX_DTYPES or n_rows * n_classes == 0
            or target.shape != input.shape[:1] + input.shape[2:]):
        return None
    if input.ndim > 2 and not _kernels.planar_inner(tuple(input.shape), 1, input.is_contiguous()):
        return None  # (a class-last copy first: the general path)
    eps = _kernels.plain_options(reduction, label_smoothing, z_loss)
    if eps is None:
        return None
    if target.device.type != "cpu" or _autocast_enabled("cpu") or not _kernels.available():
        return None
    if ignore_index is not None:
        if type(ignore_index) is not int:
            return None
        # an ignore_index that is a class index too: the kernel would take such labels
        # for classes, so they are looked for (outside [0, C) the kernel refuses them)
        if 0 <= ignore_index < n_classes and bool((target == ignore_index).any()):
            return None
    y = (target if target.dtype == torch.int64 else target.to(torch.int64)).contiguous()
    y = y.view(-1) if y.ndim != 1 else y
    plan = _plain_plan(code, n_classes, eps)
    grad = torch.is_grad_enabled() and input.requires_grad
    mean = reduction == "mean" or num_items is not None  # (num_items divides "sum" too)
    # ignore_index outside [0, C) (-100 padding, 255 in segmentation maps): the kernel
    # refuses such labels; they are then mapped to its "ignored" -1 (NumPy, on the labels'
    # memory: a torch op here would wake PyTorch's threads) and the kernel runs again. A
    # call after one that had ignored labels maps first. (Mean denominators are counts,
    # exact in float32 below 2^24, as the general path's.)
    may_ignore = (ignore_index is not None and not 0 <= ignore_index < n_classes
                  and n_rows < 1 << 24)
    denom, ignored_rows = float(n_rows), False
    for attempt in (0, 1):
        if may_ignore and (attempt or _plain_saw_ignored[0]):
            mapped = _map_ignored(y, ignore_index)
            if mapped is False:
                return None  # a label -1 that is not ignore_index: the general path names it
            _plain_saw_ignored[0] = mapped is not None
            if mapped is None and attempt:
                return None  # refused for another label
            if mapped is not None:
                y, denom = mapped
                ignored_rows = True
        if num_items is not None:
            denom = float(num_items)
        try:
            if grad and reduction != "none" and not return_lse:
                out = _ReducedSoftmaxCrossEntropy.apply(input, y, plan, denom if mean else None,
                                                        ignored_rows)
            elif grad:
                loss, lse = _SoftmaxCrossEntropy.apply(input, y, None, None, plan, ignored_rows)
            else:
                xr, inner = _kernel_rows(input, plan, None)
                loss, lse = _kernel_forward(xr, y, None, None, plan, ignored_rows, inner,
                                            keep_loss=reduction == "none", want_lse=return_lse)
            break
        except IndexError:  # a label outside [0, C): ignore_index, or the general path names it
            if ignored_rows or not may_ignore:
                return None
    _kernels._note("torch kernel (float64)" if code == 1 else "torch kernel (float32)")
    if grad and reduction != "none" and not return_lse:
        return out
    if input.ndim > 2:
        loss = loss.view(target.shape)
        lse = None if lse is None else lse.view(target.shape)
    if reduction == "none":
        out = loss
    elif grad:  # the general path's autograd ops: sum, then over the denominator
        out = torch.sum(loss)
        if mean:
            out = out / _nonzero_denominator(denom)  # (num_items: > 0 as it is)
    else:
        out = _reduce(loss, denom if mean else None)
    return (out, lse) if return_lse else out


_plain_saw_ignored = [False]  # the last plain call that could have ignored labels had some


def _map_ignored(y: torch.Tensor, ignore_index: int) -> Any:
    """``(labels with ignore_index as -1, the other labels' count)``; None when no label is
    ignore_index; False when some label is -1 but ignore_index is not (the kernel would
    take it for ignored: the general path names it)."""
    yn = y.numpy()
    hit = yn == ignore_index
    n_hit = int(np.count_nonzero(hit))
    if not n_hit:
        return None
    if ignore_index != -1 and bool((yn == -1).any()):
        return False
    return torch.from_numpy(np.where(hit, -1, yn)), float(yn.size - n_hit)


@_disable_compile
def _cross_entropy(
    input: Any,
    target: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    return_lse: bool,
    num_items: Any,
) -> Any:
    if not isinstance(input, torch.Tensor):
        raise CrossEntropyTypeError(
            f"input is a {type(input).__name__}; crossent.torch.cross_entropy expects a "
            "torch.Tensor (crossent.softmax_cross_entropy takes any array library)",
            argument="input",
            value=type(input).__name__,
            expected="torch.Tensor",
        )
    plain = _plain_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                                 z_loss, softcap, return_lse, num_items)
    if plain is not None:
        return plain
    zl = check_nonnegative("z_loss", z_loss)
    cap = check_softcap(softcap)
    _check_device("target", target, input)
    _check_device("weight", weight, input)
    device_type = input.device.type
    autocast = _autocast_enabled(device_type)
    if autocast:  # cross_entropy is on autocast's float32 list, as in PyTorch
        input, target, weight = _upcast(input), _upcast(target), _upcast(weight)
    axis = 1 if input.ndim >= 2 else 0
    p = _prepare(
        input.detach(),
        _detach(target),
        input_name="input",
        axis=axis,
        weight=_detach(weight),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    n_items = _check_num_items(num_items, p.reduction)
    shape = p.example_shape

    with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
        if any(isinstance(t, torch.Tensor) and t.requires_grad for t in (target, weight)):
            # Gradients for the targets or the weights: autograd through the reference.
            from .._categorical import softmax_cross_entropy

            loss, lse = softmax_cross_entropy(
                input,
                target,
                axis=axis,
                weight=weight,
                ignore_index=ignore_index,
                label_smoothing=p.label_smoothing,
                z_loss=zl,
                softcap=cap,
                reduction="none",
                return_lse=True,
            )
            _kernels._note("torch reference (autograd)")
        else:
            code = _kernel_code(input, p.dtype)
            n_classes = p.n_classes
            y = q = None
            if p.kind == "index":
                y = p.y if p.ignored is None else torch.where(p.ignored, -1, p.y)
                y = y.reshape(-1).contiguous()
            else:
                q = p.q.reshape(-1, n_classes)
                if code is not None:
                    q = q.contiguous()
            w = None if p.w is None else p.w.contiguous()
            w_sum = float(n_classes)
            if w is not None and code is not None:
                w_sum = float(torch.sum(w, dtype=torch.float64))
            plan = _Plan(
                xp=p.xp,
                axis=axis,
                eps=p.label_smoothing,
                z_loss=zl,
                softcap=cap,
                cdt=p.dtype,
                code=code,
                w_sum=w_sum,
            )
            loss, lse = _SoftmaxCrossEntropy.apply(input, y, q, w, plan, True)
            loss, lse = loss.view(shape), lse.view(shape)
            _kernels._note(
                f"torch kernel ({str(input.dtype).removeprefix('torch.')})"
                if code is not None
                else "torch chunked"
            )
        if p.reduction == "none":
            out = loss
        else:
            out = torch.sum(loss)
            if n_items is not None:
                out = out / n_items
            elif p.reduction == "mean":
                out = out / _nonzero_denominator(p.denominator())
    return (out, lse) if return_lse else out


def _nonzero_denominator(denom: Any) -> Any:
    """The mean's denominator, NaN where it is 0 (every example ignored, or every target's
    class weight 0): the mean is then NaN, and so is the gradient of every example that is
    not ignored (ignored ones get 0), as in PyTorch, where ``0/0`` meets ``x/0 = inf``."""
    if isinstance(denom, float):
        return denom if denom != 0.0 else float("nan")
    return torch.where(denom == 0.0, float("nan"), denom)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    num_items: Any = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
) -> Any:
    r"""``torch.nn.functional.cross_entropy``, with less time and memory, and more options.

    Same arguments, defaults and results as PyTorch: logits ``input`` of shape ``(C,)``,
    ``(N, C)`` or ``(N, C, d1, ..., dk)`` (class axis 1), ``target`` either class indices
    (shape ``(N, d1, ..., dk)``) or class probabilities (the input's shape). Forward values
    and gradients equal PyTorch's to float rounding for every option PyTorch has.

    Parameters
    ----------
    input : torch.Tensor
        Logits, float32, float64, bfloat16 or float16, on any device.
    target : torch.Tensor
        Class indices (any integer dtype) or class probabilities in [0, 1].
    weight : torch.Tensor of shape (C,), optional
        Class weights >= 0. With index targets ``"mean"`` divides by the sum of the
        targets' weights; with probability targets by the number of examples (PyTorch's
        rule).
    ignore_index : int, default -100
        Index targets equal to it give loss 0 and gradient 0 and do not count in the mean
        (an all-ignored mean is NaN, as in PyTorch). With probability targets only a
        negative value is accepted, and it has no effect.
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0
    z_loss : float >= 0, default 0
        Adds ``z_loss * w_y * lse**2`` per non-ignored example (unweighted for probability
        targets); ``"mean"`` divides it by the cross-entropy's denominator.
    softcap : float > 0, optional
        ``softcap * tanh(input / softcap)`` before the softmax (Gemma 2).
    return_lse : bool, default False
        Also return the per-example log-sum-exp (differentiable), ignored examples included.
    num_items : number or one-element tensor, optional
        The denominator of a mean over several micro-batches: the number of non-ignored
        targets in the whole batch (with class weights, the sum of their weights). The
        result is ``sum(loss) / num_items``, so that gradients accumulated over
        micro-batches equal those of one full-batch ``"mean"`` step exactly. Needs
        ``reduction="sum"`` (or ``"mean"``, which it then overrides).
    size_average, reduce : deprecated
        PyTorch's legacy reduction flags, mapped to ``reduction`` as PyTorch does.

    Returns
    -------
    torch.Tensor, or (loss, lse) with ``return_lse=True``
        The loss (0-d, or per example with ``reduction="none"``) in the compute dtype:
        float32 for float16/bfloat16 input (accumulated in float32; PyTorch rounds the
        result to the input dtype), else the input's dtype.

    Raises
    ------
    crossent.CrossEntropyError
        For a class index outside ``[0, C)`` that is not ``ignore_index`` (also an
        ``IndexError``), probability targets outside [0, 1], mismatched shapes, dtypes
        or devices, and options out of range: on every device, never a device assert.

    Notes
    -----
    CPU tensors run crossent's fused C kernel in place (no copy for ``(N, C)`` input); other
    devices a chunked PyTorch implementation. Either way only the per-example log-sum-exp
    is saved for backward, not an ``(N, C)`` softmax. Under ``torch.compile`` the call is a
    graph break (it runs eagerly); under ``torch.autocast`` half-precision inputs are cast
    to float32, as PyTorch does for ``cross_entropy``.

    Examples
    --------
    >>> import torch
    >>> from crossent.torch import cross_entropy
    >>> logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], requires_grad=True)
    >>> loss = cross_entropy(logits, torch.tensor([2, 0]))
    >>> loss
    tensor(1.4076, grad_fn=<_ReducedSoftmaxCrossEntropyBackward>)
    >>> loss.backward()
    >>> logits.grad
    tensor([[ 0.0450,  0.1224, -0.1674],
            [-0.4550,  0.1224,  0.3326]])
    """
    if size_average is not None or reduce is not None:
        from torch.nn import _reduction

        reduction = _reduction.legacy_get_string(size_average, reduce)
    return _cross_entropy(
        input,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        return_lse,
        num_items,
    )


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    r"""``torch.nn.CrossEntropyLoss`` backed by :func:`crossent.torch.cross_entropy`.

    A subclass of PyTorch's module with its constructor (``weight`` is a buffer, so it moves
    with ``.to()`` and is in the ``state_dict``), plus ``z_loss``, ``softcap`` and
    ``return_lse``; ``forward`` also takes ``num_items`` (see :func:`cross_entropy`).

    Examples
    --------
    >>> import torch
    >>> from crossent.torch import CrossEntropyLoss
    >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    >>> loss_fn(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2]))
    tensor(0.5076)
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        return_lse: bool = False,
    ) -> None:
        if weight is not None and not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight)
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = check_nonnegative("z_loss", z_loss)
        self.softcap = check_softcap(softcap)
        self.return_lse = bool(return_lse)

    def forward(self, input: torch.Tensor, target: torch.Tensor, *, num_items: Any = None) -> Any:  # type: ignore[override]
        return cross_entropy(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            return_lse=self.return_lse,
            num_items=num_items,
        )

    def extra_repr(self) -> str:
        parts = []
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.reduction != "mean":
            parts.append(f"reduction={self.reduction!r}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.return_lse:
            parts.append("return_lse=True")
        return ", ".join(parts)
