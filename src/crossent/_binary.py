"""Binary (and multi-label) cross-entropy: one independent Bernoulli per element."""

from __future__ import annotations

import math
from typing import Any, Literal

from ._backend import as_array_like, compute_dtype, namespace_of, quiet, zero_dim
from ._errors import InvalidDTypeError, ShapeMismatchError
from ._reference import zero_times_inf
from ._validation import (
    ValueGuard,
    check_broadcastable,
    check_eps,
    check_reduction,
    negative_error,
    range_error,
)

__all__ = ["binary_cross_entropy", "sigmoid_binary_cross_entropy"]

Reduction = Literal["none", "mean", "sum"]


class _Binary:
    """Validated ``input``/``target``/``weight`` of one binary call, in the compute dtype."""

    def __init__(self, input: Any, target: Any, weight: Any, reduction: Any, input_name: str):
        xp, input = namespace_of(input, input_name)
        self.xp, self.input = xp, input
        self.reduction = check_reduction(reduction)
        cdt = compute_dtype(xp, input.dtype, input_name)
        target = as_array_like(xp, input, target, "target")
        if not xp.isdtype(target.dtype, ("bool", "integral", "real floating")):
            raise InvalidDTypeError(
                f"target has dtype {target.dtype}; expected labels in [0, 1] "
                "(floating, integer or boolean)",
                argument="target",
                value=str(target.dtype),
                expected="real dtype",
            )
        if tuple(target.shape) != tuple(input.shape):
            raise ShapeMismatchError(
                f"target has shape {tuple(target.shape)} but {input_name} has shape "
                f"{tuple(input.shape)}: binary cross-entropy needs one label per element, "
                "the same shape",
                argument="target",
                value=tuple(target.shape),
                expected=str(tuple(input.shape)),
            )
        if xp.isdtype(target.dtype, "real floating"):
            cdt = xp.result_type(cdt, target.dtype)
        self.guard = ValueGuard(xp)
        if not xp.isdtype(target.dtype, "bool"):
            self.guard.check(
                xp.logical_or(target < 0, target > 1),
                range_error("target", target, 0.0, 1.0, ": binary targets must be in [0, 1]"),
            )
        self.x = xp.astype(input, cdt, copy=False)
        self.t = xp.astype(target, cdt, copy=False)
        self.weight = self.elementwise("weight", weight)

    def elementwise(self, name: str, value: Any) -> Any:
        """A non-negative weight broadcastable to the input, in the compute dtype (or None)."""
        if value is None:
            return None
        xp = self.xp
        v = as_array_like(xp, self.input, value, name)
        if xp.isdtype(v.dtype, "bool") or not xp.isdtype(v.dtype, ("integral", "real floating")):
            raise InvalidDTypeError(
                f"{name} has dtype {v.dtype}; expected real numbers",
                argument=name,
                value=str(v.dtype),
                expected="real floating dtype",
            )
        check_broadcastable(name, v.shape, self.input.shape, "the input shape")
        self.guard.check(v < 0, negative_error(name, v, "weights"), example_bad=xp.any)
        return xp.astype(v, self.x.dtype, copy=False)

    def reduce(self, loss: Any) -> Any:
        xp = self.xp
        if self.weight is not None:
            loss = zero_times_inf(xp, self.weight, loss)
        loss = self.guard.poison(loss)
        if self.reduction == "none":
            return zero_dim(loss)
        total = xp.sum(loss)
        if self.reduction == "mean":
            total = total / float(math.prod(tuple(loss.shape)))
        return zero_dim(total)


def binary_cross_entropy(
    probs: Any,
    target: Any,
    *,
    weight: Any = None,
    reduction: Reduction = "none",
    eps: float = 0.0,
) -> Any:
    r"""Binary cross-entropy of predicted probabilities, element by element.

    .. math::

        \ell = -w \, \bigl(t \log p + (1 - t) \log(1 - p)\bigr)

    with ``0 log 0 = 0``, computed with ``log1p(-p)`` so that small probabilities of the
    negative class keep their precision.

    Parameters
    ----------
    probs : array_like
        Predicted probabilities of the positive class, in [0, 1], any shape.
    target : array_like
        Labels in [0, 1] (soft labels allowed), the same shape as ``probs``; integer and
        boolean labels are accepted.
    weight : array_like, optional
        Non-negative per-element weights, broadcastable to ``probs`` (PyTorch's rescaling
        weight; it is not a per-class weight).
    reduction : {"none", "mean", "sum"}, default "none"
        ``"mean"`` averages over all elements, weighted or not (as PyTorch).
    eps : float in [0, 0.5), default 0
        Clip probabilities to ``[eps, 1 - eps]``. The default is exact: a confident wrong
        prediction (``p = 0``, ``t = 1``) costs ``inf``. PyTorch instead clamps each log
        at -100, so its loss never exceeds 100 per element.

    Returns
    -------
    array
        Element-wise losses, or a 0-d array (float32 for half-precision input).

    Raises
    ------
    CrossEntropyError
        For probabilities or targets outside [0, 1], mismatched shapes, negative weights or
        an unknown reduction.

    Examples
    --------
    >>> import numpy as np, crossent
    >>> crossent.binary_cross_entropy(np.array([0.9, 0.2, 0.5]), np.array([1, 0, 1]))
    array([0.10536052, 0.22314355, 0.69314718])
    """
    e = check_eps(eps)
    b = _Binary(probs, target, weight, reduction, "probs")
    xp = b.xp
    b.guard.check(
        xp.logical_or(b.input < 0, b.input > 1),
        range_error(
            "probs",
            b.input,
            0.0,
            1.0,
            ": binary_cross_entropy expects probabilities (for logits use "
            "sigmoid_binary_cross_entropy)",
        ),
    )
    with quiet(xp):
        p = b.x if e == 0.0 else xp.clip(b.x, e, 1.0 - e)
        t = b.t
        loss = zero_times_inf(xp, t, -xp.log(p)) + zero_times_inf(xp, 1.0 - t, -xp.log1p(-p))
        return b.reduce(loss)


def _softplus(xp: Any, x: Any) -> Any:
    """``log(1 + exp(x))`` without overflow: ``max(x, 0) + log1p(exp(-|x|))``."""
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid_binary_cross_entropy(
    logits: Any,
    target: Any,
    *,
    weight: Any = None,
    pos_weight: Any = None,
    reduction: Reduction = "none",
) -> Any:
    r"""Binary cross-entropy of the sigmoid of logits (PyTorch's ``BCEWithLogits``).

    .. math::

        \ell = w \, \bigl(\mathrm{pw} \cdot t \cdot \operatorname{softplus}(-x)
               + (1 - t) \operatorname{softplus}(x)\bigr)

    since :math:`-\log\sigma(x) = \operatorname{softplus}(-x)` and
    :math:`-\log(1-\sigma(x)) = \operatorname{softplus}(x)`; stable for any logits, with
    ``0 * inf = 0`` so that a ``-inf`` logit with target 0 costs 0 (PyTorch returns NaN
    there, pytorch#49844).

    Parameters
    ----------
    logits : array_like
        Logits of the positive class, any shape.
    target : array_like
        Labels in [0, 1], the same shape as ``logits``.
    weight : array_like, optional
        Non-negative per-element weights, broadcastable to ``logits``.
    pos_weight : array_like, optional
        Non-negative weight of the positive term, broadcastable to ``logits`` (usually one
        per label, shape ``(C,)`` for ``(N, C)`` logits): ``n_negative / n_positive``
        balances a rare positive class.
    reduction : {"none", "mean", "sum"}, default "none"
        ``"mean"`` averages over all elements.

    Returns
    -------
    array
        Element-wise losses, or a 0-d array (float32 for half-precision input).

    Raises
    ------
    CrossEntropyError
        For targets outside [0, 1], mismatched shapes, negative weights or an unknown
        reduction.

    Examples
    --------
    >>> import numpy as np, crossent
    >>> crossent.sigmoid_binary_cross_entropy(np.array([2.0, -1.0, 0.0]), np.array([1, 0, 1]))
    array([0.12692801, 0.31326169, 0.69314718])
    """
    b = _Binary(logits, target, weight, reduction, "logits")
    xp = b.xp
    pw = b.elementwise("pos_weight", pos_weight)
    with quiet(xp):
        x, t = b.x, b.t
        pos = t if pw is None else pw * t
        loss = zero_times_inf(xp, pos, _softplus(xp, -x)) + zero_times_inf(
            xp, 1.0 - t, _softplus(xp, x)
        )
        return b.reduce(loss)
