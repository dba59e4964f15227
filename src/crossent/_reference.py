"""The array-agnostic reference implementation: cross-entropy math on validated arrays.

Everything here is written against the array API standard (``xp`` is the caller's
namespace), takes arrays whose class axis is already last and whose dtype is the compute
dtype, and does no validation: :mod:`crossent._categorical` and :mod:`crossent._binary`
prepare the inputs. It is also the differentiable path: PyTorch autograd and ``jax.grad``
trace through these functions, so no step may produce a NaN gradient for finite inputs.

Numerical conventions, shared by every loss:

* log-sum-exp subtracts the row maximum (the "inf-safe" shift: a row whose maximum is
  ``±inf`` or NaN is shifted by 0, so ``+inf`` gives ``lse = inf`` and NaN stays NaN), and
  keeps the maximal term out of the sum, ``lse = m + log1p(sum_{k != argmax} exp(z_k - m))``,
  which is accurate to the last bit for confident rows whose loss is tiny (as in SciPy's
  ``logsumexp``).
* ``0 * inf = 0``: a class with zero target probability (or zero weight) contributes
  nothing even when its probability is 0 (logit ``-inf``), as in ``xlogy``. Every other
  product is plain IEEE arithmetic, so NaN inputs propagate.
* Sums of non-negative terms only: ``sum_c w_c (lse - z_c)`` is evaluated as
  ``W * lse + sum_c w_c * (-s_c)`` with ``s_c = z_c - m <= 0``, both non-negative, so
  there is no cancellation even for logits of ``±1e30``.
"""

from __future__ import annotations

from typing import Any

from ._backend import stop_gradient

__all__ = [
    "softcap_logits",
    "shifted_logsumexp",
    "gather_last",
    "zero_times_inf",
    "z_loss_term",
    "index_loss",
    "soft_loss",
    "softmax_loss",
    "softmax_grad_index",
    "softmax_grad_soft",
]


def divide_by_denominator(xp: Any, value: Any, denom: Any) -> Any:
    """``value / denom`` for a ``"mean"``, NaN where the denominator is 0 (all examples
    ignored, or all their target weights 0), as in PyTorch (which divides each term by it,
    so with label smoothing ``x/0 = inf`` meets ``0/0 = nan``). ``denom``: a Python float
    (examples counted) or a 0-d array (a sum of weights or of kept examples)."""
    if isinstance(denom, float):
        return value / denom if denom != 0.0 else value * float("nan")
    return xp.where(denom == 0.0, float("nan"), value / denom)


def softcap_logits(xp: Any, x: Any, softcap: float | None) -> Any:
    """``softcap * tanh(x / softcap)`` (Gemma 2), or ``x`` unchanged when ``softcap`` is None."""
    if softcap is None:
        return x
    return softcap * xp.tanh(x / softcap)


def shifted_logsumexp(xp: Any, z: Any) -> tuple[Any, Any, Any]:
    """Return ``(s, lse_s, m)`` with ``s = z - m`` and ``lse_s = log(sum(exp(s)))`` on the last axis.

    ``m`` is the row maximum (0 where it is not finite); ``lse = m + lse_s``.
    ``lse_s`` is computed as ``log1p(rest + (top - 1))`` where ``top`` sums the maximal
    terms (each exactly ``exp(0) = 1``, so ``top - 1`` is exact) and ``rest`` the others:
    the tiny ``rest`` of a confident row is not rounded away by adding it to 1.
    """
    m = xp.max(z, axis=-1, keepdims=True)
    m = stop_gradient(xp.where(xp.isfinite(m), m, 0.0))
    s = z - m
    e = xp.exp(s)
    is_top = s == 0.0
    # `top` is computed from `e` (not counted) so autograd sees d(top)/ds = exp(s) = 1.
    top = xp.sum(xp.where(is_top, e, 0.0), axis=-1)
    rest = xp.sum(xp.where(is_top, 0.0, e), axis=-1)
    lse_s = xp.log1p(rest + (top - 1.0))
    return s, lse_s, m[..., 0]


def gather_last(xp: Any, a: Any, index: Any) -> Any:
    """``a[..., index[...]]``: one element per row along the last axis."""
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(a, index[..., None], axis=-1)[..., 0]
    onehot = xp.arange(a.shape[-1], device=_device(a)) == index[..., None]
    return xp.sum(xp.where(onehot, a, 0.0), axis=-1)


def _device(a: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(a)


def zero_times_inf(xp: Any, coef: Any, neg: Any) -> Any:
    """``coef * neg`` with ``0 * (±inf) = 0``: a class with zero target weight contributes
    nothing, also where its logit is ``-inf`` (masked) or ``+inf`` (a row shifted by 0)."""
    return xp.where(xp.logical_and(coef == 0.0, xp.isinf(neg)), 0.0, coef * neg)


def z_loss_term(xp: Any, z_loss: float, lse: Any, w_y: Any | None) -> Any:
    """``z_loss * w_y * lse**2``, as ``((w_y * z_loss) * lse) * lse`` so that it overflows
    only where the result does (``lse**2`` alone overflows for ``lse > 1.8e19`` in float32;
    ``(z_loss * lse) * lse`` before the weight where ``w_y < 1``), with ``0 * inf = 0``
    for a zero weight."""
    if w_y is None:
        return (z_loss * lse) * lse
    term = ((w_y * z_loss) * lse) * lse
    return xp.where(xp.logical_and(w_y == 0.0, xp.isinf(lse)), 0.0, term)


def index_loss(
    xp: Any,
    a: Any,
    b: Any | None,
    b_y: Any,
    w: Any | None,
    w_y: Any | None,
    label_smoothing: float,
) -> Any:
    """Per-example loss for class-index targets, from ``-log p_c = a - b_c``.

    For logits ``a = lse_s``, ``b = s``; for log-probabilities ``a = 0``, ``b = log p``.
    ``b`` (the full rows) is only read when label smoothing needs every class.
    Loss = ``(1 - eps) * w_y * (a - b_y) + (eps / C) * sum_c w_c * (a - b_c)``.
    """
    eps = label_smoothing
    loss: Any = 0.0
    if eps < 1.0:
        nll = a - b_y
        term = nll if w_y is None else zero_times_inf(xp, w_y, nll)
        loss = term if eps == 0.0 else (1.0 - eps) * term
    if eps > 0.0:
        assert b is not None
        n_classes = b.shape[-1]
        if w is None:
            smooth = n_classes * a + xp.sum(-b, axis=-1)
        else:
            smooth = xp.sum(w) * a + xp.sum(zero_times_inf(xp, w, -b), axis=-1)
        loss = loss + (eps / n_classes) * smooth
    return loss


def soft_loss(xp: Any, a: Any | None, b: Any, wq: Any) -> Any:
    """Per-example loss for probability targets: ``sum_c wq_c * (a - b_c)``.

    ``wq`` is the (smoothed, class-weighted) target distribution; ``a`` is None for
    log-probabilities (``a = 0``). ``a * sum(wq)`` keeps a NaN ``a`` (a NaN logit anywhere
    in the row) visible even where ``wq`` is all zero.
    """
    loss = xp.sum(zero_times_inf(xp, wq, -b), axis=-1)
    if a is not None:
        loss = a * xp.sum(wq, axis=-1) + loss
    return loss


def softmax_loss(
    xp: Any,
    z: Any,
    y: Any | None,
    w: Any | None,
    w_y: Any | None,
    wq: Any | None,
    label_smoothing: float,
    z_loss: float,
) -> tuple[Any, Any, Any, Any]:
    """Per-example loss of (capped) logits ``z``, class axis last: ``(loss, lse, s, lse_s)``.

    Class-index targets ``y`` (with class weights ``w``, ``w_y``), or probability targets
    given as ``wq`` (smoothed and class-weighted, ``y`` None). Ignored examples are not
    masked here: the caller zeroes them.
    """
    s, lse_s, m = shifted_logsumexp(xp, z)
    lse = m + lse_s
    if wq is None:
        s_y = gather_last(xp, s, y)
        loss = index_loss(xp, lse_s, s if label_smoothing > 0.0 else None, s_y, w, w_y,
                          label_smoothing)
        if z_loss:
            loss = loss + z_loss_term(xp, z_loss, lse, w_y)
    else:
        loss = soft_loss(xp, lse_s, s, wq)
        if z_loss:
            loss = loss + z_loss_term(xp, z_loss, lse, None)
    return loss, lse, s, lse_s


def softmax_grad_index(
    xp: Any,
    s: Any,
    lse_s: Any,
    lse: Any,
    y: Any,
    g: Any,
    w: Any | None,
    w_y: Any | None,
    label_smoothing: float,
    z_loss: float,
) -> Any:
    """Gradient w.r.t. the (capped) logits of ``sum_i g_i * loss_i``, class-index targets.

    ``dz_k = g * (p_k * A - (1 - eps) w_y [k == y] - (eps / C) w_k)`` with
    ``A = (1 - eps) w_y + (eps / C) W + 2 z_loss w_y lse``. The target column is recomputed
    with ``p_y - 1 = expm1(s_y - lse_s)``: for a confident row ``p_y`` is within an ulp of 1
    and the plain difference would lose every significant digit (Liger PR #1329).
    """
    n_classes = s.shape[-1]
    eps = label_smoothing
    one = 1.0 if w_y is None else w_y
    w_sum = float(n_classes) if w is None else xp.sum(w)
    coef = (1.0 - eps) * one + (eps / n_classes) * w_sum
    if z_loss:
        coef = coef + (2.0 * z_loss) * one * lse
    p = xp.exp(s - lse_s[..., None])
    dz = p * coef[..., None] if not isinstance(coef, float) else p * coef
    if eps > 0.0:
        dz = dz - (eps / n_classes) * (1.0 if w is None else w)
    s_y = gather_last(xp, s, y)
    p_y = xp.exp(s_y - lse_s)
    dz_y = (
        (1.0 - eps) * one * xp.expm1(s_y - lse_s)
        + p_y * (coef - (1.0 - eps) * one)
        - (eps / n_classes) * one
    )
    onehot = xp.arange(n_classes, device=_device(s)) == y[..., None]
    dz = xp.where(onehot, dz_y[..., None], dz)
    return g[..., None] * dz


def softmax_grad_soft(xp: Any, s: Any, lse_s: Any, lse: Any, wq: Any, g: Any, z_loss: float) -> Any:
    """Gradient for probability targets: ``dz_k = g * (p_k * (sum(wq) + 2 z lse) - wq_k)``."""
    coef = xp.sum(wq, axis=-1)
    if z_loss:
        coef = coef + (2.0 * z_loss) * lse
    p = xp.exp(s - lse_s[..., None])
    return g[..., None] * (p * coef[..., None] - wq)
