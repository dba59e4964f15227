"""Categorical cross-entropy: probabilities, log-probabilities and logits in.

Each public function validates its arguments (:mod:`crossent._validation`), moves the class
axis last, computes in the compute dtype (float32 for half-precision input) with the
array-agnostic reference (:mod:`crossent._reference`), and reduces exactly as PyTorch does.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

from . import _kernels
from ._backend import (
    as_array_like,
    compute_dtype,
    index_dtype,
    namespace_of,
    quiet,
    zero_dim,
)
from ._errors import InvalidDTypeError, InvalidOptionError, ShapeMismatchError
from ._reference import (
    divide_by_denominator,
    gather_last,
    index_loss,
    soft_loss,
    softcap_logits,
    softmax_grad_index,
    softmax_grad_soft,
    softmax_loss,
)
from ._validation import (
    ValueGuard,
    check_axis,
    check_broadcastable,
    check_class_weight,
    check_eps,
    check_ignore_index,
    check_nonnegative,
    check_reduction,
    check_softcap,
    check_unit_interval,
    class_index_error,
    negative_error,
    range_error,
    target_kind,
)

__all__ = [
    "cross_entropy",
    "nll_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_value_and_grad",
]

Reduction = Literal["none", "mean", "sum"]
F = TypeVar("F", bound=Callable[..., Any])

# Parameter descriptions shared by the docstrings below (numpydoc sections are filled in by
# `_doc` so that each option is described once and identically everywhere).
_PARAMS = {
    "target": """target : array_like
        Either integer class indices, with the shape of the input without ``axis``, or
        floating class probabilities (soft or one-hot labels) with the input's shape.""",
    "axis": """axis : int, default -1
        The class axis. Every other axis is a batch axis (examples, tokens, pixels).""",
    "weight": """weight : array_like of shape (C,), optional
        Per-class weights, >= 0. With class-index targets the loss of example ``i`` is
        multiplied by ``weight[target_i]`` and the mean divides by the sum of those weights
        (PyTorch's weighted mean). With probability targets each class term is weighted and
        the mean still divides by the number of examples (PyTorch's rule, pytorch#107680:
        one-hot and index targets then give different weighted means).""",
    "ignore_index": """ignore_index : int, optional
        A target value whose examples give loss 0 and gradient 0 and do not count in the
        mean. If every example is ignored, the mean is ``0 / 0 = nan``, as in PyTorch.
        With probability targets only a negative value (PyTorch's default -100) is accepted,
        and it has no effect.""",
    "label_smoothing": """label_smoothing : float in [0, 1], default 0
        Mixes the target with the uniform distribution: ``q = (1 - eps) q + eps / C``. With
        index targets the loss is ``(1 - eps) w_y nll_i + (eps / C) sum_c w_c (-log p_c)``,
        the mean dividing both terms by the same sum of ``w_y``, exactly as PyTorch.""",
    "reduction": """reduction : {"none", "mean", "sum"}, default "none"
        ``"none"`` returns one loss per example (the textbook definition); ``"mean"`` and
        ``"sum"`` reduce over every example as described above.""",
    "z_loss": """z_loss : float >= 0, default 0
        Adds ``z_loss * lse_i**2`` to each example's loss (PaLM's auxiliary loss, which
        keeps the log-partition function near 0). With class weights and index targets the
        term is weighted by ``w_y`` like the rest of the example's loss, so the weighted
        mean stays invariant to rescaling the weights; with probability targets it is not
        weighted. Ignored examples contribute nothing; the mean uses the cross-entropy
        term's denominator.""",
    "softcap": """softcap : float > 0, optional
        Applies ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2). A
        ``-inf`` logit then becomes ``-softcap``: it is no longer masked.""",
    "return_lse": """return_lse : bool, default False
        Also return the per-example log-sum-exp of the (soft-capped) logits, for every
        example, ignored ones included.""",
}


def _doc(func: F) -> F:
    doc = func.__doc__ or ""
    for name, text in _PARAMS.items():
        doc = doc.replace("{" + name + "}", text)
    func.__doc__ = doc
    return func


@dataclass
class _Problem:
    """Validated arrays of one call, class axis last, in the compute dtype."""

    xp: Any
    input: Any  # the caller's array, original layout and dtype
    dtype: Any  # the compute dtype
    kind: str  # "index" or "soft"
    target: Any  # the caller's target, original layout
    y: Any  # index targets: class indices safe to gather with (0 where invalid/ignored)
    ignored: Any  # index targets: bool mask of ignored examples, or None
    q: Any  # soft targets: class axis last, compute dtype
    w: Any  # class weights in the compute dtype, or None
    w_y: Any  # index targets with weights: weight of each example's class, 0 if ignored
    axis: int
    label_smoothing: float
    reduction: str
    guard: ValueGuard

    @functools.cached_property
    def x(self) -> Any:
        """The input with the class axis last, in the compute dtype (made on first use:
        the compiled kernels read the caller's array directly)."""
        xp = self.xp
        return xp.moveaxis(xp.astype(self.input, self.dtype, copy=False), self.axis, -1)

    @property
    def n_classes(self) -> int:
        return int(self.input.shape[self.axis])

    @property
    def example_shape(self) -> tuple[int, ...]:
        shape = tuple(self.input.shape)
        return shape[: self.axis] + shape[self.axis + 1 :]

    def gathered_input(self) -> Any:
        """``input[..., target]`` per example, in the compute dtype (only N values cast)."""
        xp = self.xp
        g = gather_last(xp, xp.moveaxis(self.input, self.axis, -1), self.y)
        return xp.astype(g, self.dtype, copy=False)

    def user_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """Position in the caller's input of example ``index``'s target class."""
        cls = int(self.target[index]) if index else int(self.target)
        return index[: self.axis] + (cls,) + index[self.axis :]

    def check_read_values(
        self, name: str, full: Any | None, gathered: Any | None, low: float, high: float, advice: str
    ) -> None:
        """Range-check the input values the loss reads (all of them, or the gathered ones)."""
        xp = self.xp
        if full is not None:
            bad = xp.logical_or(full < low, full > high)
            if self.ignored is not None:  # ignored examples are not read
                bad = xp.logical_and(bad, xp.logical_not(xp.expand_dims(self.ignored, axis=self.axis)))
            self.guard.check(
                bad,
                range_error(name, full, low, high, advice),
                example_bad=lambda b: xp.any(b, axis=self.axis),
            )
        else:
            bad = xp.logical_or(gathered < low, gathered > high)
            if self.ignored is not None:
                bad = xp.logical_and(bad, xp.logical_not(self.ignored))
            self.guard.check(
                bad,
                range_error(name, gathered, low, high, advice, to_user_index=self.user_index),
            )

    def smoothed_weighted_target(self) -> Any:
        """Soft targets: ``w_c * ((1 - eps) q_c + eps / C)``."""
        eps = self.label_smoothing
        q = self.q if eps == 0.0 else (1.0 - eps) * self.q + eps / self.n_classes
        return q if self.w is None else self.w * q

    def finish(self, loss: Any) -> Any:
        """Zero ignored examples and NaN-poison examples a traced check flagged."""
        xp = self.xp
        if self.ignored is not None:
            loss = xp.where(self.ignored, 0.0, loss)
        return self.guard.poison(loss)

    def denominator(self) -> Any:
        """What ``"mean"`` divides by (PyTorch's rules, see the ``weight`` docs)."""
        xp = self.xp
        if self.kind == "soft" or (self.w is None and self.ignored is None):
            return float(math.prod(self.example_shape))
        if self.w is not None:
            return xp.sum(self.w_y)
        return xp.sum(xp.astype(xp.logical_not(self.ignored), self.dtype, copy=False))

    def reduce(self, loss: Any) -> Any:
        if self.reduction == "none":
            return zero_dim(loss)
        total = self.xp.sum(loss)
        if self.reduction == "sum":
            return zero_dim(total)
        return zero_dim(self.per_denominator(total))

    def per_denominator(self, value: Any) -> Any:
        """``value / denominator`` (see :func:`divide_by_denominator`)."""
        return divide_by_denominator(self.xp, value, self.denominator())

    def upstream(self, grad_output: Any, *, full: bool = True) -> Any:
        """Per-example weight ``g_i`` of the gradient of the reduced loss.

        ``full=False``: only broadcastable to the example shape (one value for a reduced
        loss), and not yet zeroed for ignored examples (the kernels skip those rows).
        """
        xp = self.xp
        shape = self.example_shape
        if grad_output is None:
            g = xp.ones(shape if full else (), dtype=self.dtype, device=_device(self.input))
        else:
            go = as_array_like(xp, self.input, grad_output, "grad_output")
            if not xp.isdtype(go.dtype, ("real floating", "integral")):
                raise InvalidDTypeError(
                    f"grad_output has dtype {go.dtype}; expected real numbers",
                    argument="grad_output",
                    value=str(go.dtype),
                    expected="real floating dtype",
                )
            if self.reduction == "none":
                check_broadcastable("grad_output", go.shape, shape, "the per-example loss shape")
            elif go.ndim != 0:
                raise ShapeMismatchError(
                    f"grad_output has shape {tuple(go.shape)}; with reduction="
                    f"{self.reduction!r} the loss is a scalar, so grad_output must be a scalar",
                    argument="grad_output",
                    value=tuple(go.shape),
                    expected="()",
                )
            g = xp.astype(go, self.dtype, copy=False)
            if full:
                g = xp.broadcast_to(g, shape)
        if self.reduction == "mean":
            g = self.per_denominator(g)
        if not full:
            return g
        if self.ignored is not None:
            g = xp.where(self.ignored, 0.0, g)
        return g

    def to_input_layout(self, d: Any) -> Any:
        """A class-last gradient back to the caller's layout and dtype."""
        xp = self.xp
        d = self.guard.poison(d, extra_dims=1)
        if self.ignored is not None:
            d = xp.where(self.ignored[..., None], 0.0, d)
        d = xp.moveaxis(d, -1, self.axis)
        return xp.astype(d, self.input.dtype, copy=False)


def _device(x: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(x)


def _representable(xp: Any, dtype: Any, value: int) -> bool:
    info = xp.iinfo(dtype)
    return bool(info.min <= value <= info.max)


def _plain_labels(xp: Any, target: Any, n_classes: int, ignore_index: Any) -> bool:
    """Whether every label is a class index and none equals ``ignore_index``. NumPy and
    PyTorch targets only: under ``jax.jit`` even a concrete target becomes a tracer once an
    operation touches it, and Dask would compute its graph."""
    import array_api_compat

    if not (array_api_compat.is_numpy_array(target) or array_api_compat.is_torch_array(target)):
        return False
    if math.prod(target.shape) == 0:
        return False
    if array_api_compat.is_torch_array(target):
        lo_t, hi_t = target.aminmax()  # one pass (and one call) instead of two
        lo, hi = int(lo_t), int(hi_t)
    else:
        lo, hi = int(xp.min(target)), int(xp.max(target))
    return 0 <= lo and hi < n_classes and not (ignore_index is not None and lo <= ignore_index <= hi)


def _prepare(
    input: Any,
    target: Any,
    *,
    input_name: str,
    axis: Any,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    reduction: Any,
) -> _Problem:
    xp, input = namespace_of(input, input_name)
    reduction = check_reduction(reduction)
    eps = check_unit_interval("label_smoothing", label_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    axis = check_axis(axis, input.ndim, input_name)
    cdt = compute_dtype(xp, input.dtype, input_name)
    target = as_array_like(xp, input, target, "target")
    kind = target_kind(xp, input, target, axis, input_name)
    n_classes = int(input.shape[axis])
    if n_classes == 0:
        raise ShapeMismatchError(
            f"{input_name} has shape {tuple(input.shape)}: 0 classes along axis {axis}; "
            "expected at least one class",
            argument=input_name,
            value=tuple(input.shape),
            expected="at least one class",
        )
    w = None
    if weight is not None:
        w = as_array_like(xp, input, weight, "weight")
        check_class_weight(xp, w, n_classes, axis)
    guard = ValueGuard(xp)
    if w is not None:
        guard.check(w < 0, negative_error("weight", w, "class weights"), example_bad=xp.any)

    y = ignored = q = w_y = None
    if kind == "index" and _plain_labels(xp, target, n_classes, ignore_index):
        # the common case, checked with two reductions instead of several masks the size of
        # the target (each a pass and a fresh allocation: ~5 ms at a million labels)
        y = xp.astype(target, index_dtype(xp, input), copy=False)
    elif kind == "index":
        dt = target.dtype
        if ignore_index is not None and _representable(xp, dt, ignore_index):
            ignored = target == ignore_index
        valid = target >= 0
        if _representable(xp, dt, n_classes):
            valid = xp.logical_and(valid, target < n_classes)
        bad = xp.logical_not(valid)
        if ignored is not None:
            bad = xp.logical_and(bad, xp.logical_not(ignored))
        guard.check(bad, class_index_error(target, n_classes, ignore_index))
        y = xp.astype(xp.where(valid, target, 0), index_dtype(xp, input), copy=False)
    else:
        if ignore_index is not None and ignore_index >= 0:
            raise InvalidOptionError(
                f"ignore_index = {ignore_index} applies to class-index targets only; with "
                "probability targets give the ignored examples an all-zero target row, or "
                "leave ignore_index=None",
                argument="ignore_index",
                value=ignore_index,
                expected="None (or a negative value) with probability targets",
            )
        cdt = xp.result_type(cdt, target.dtype)
        guard.check(
            xp.logical_or(target < 0, target > 1),
            range_error("target", target, 0.0, 1.0, ": probability targets must be in [0, 1]"),
            example_bad=lambda b: xp.any(b, axis=axis),
        )
        q = xp.moveaxis(xp.astype(target, cdt, copy=False), axis, -1)

    if w is not None:
        w = xp.astype(w, cdt, copy=False)
        if kind == "index":
            flat = xp.take(w, xp.reshape(y, (-1,)), axis=0)
            w_y = xp.reshape(flat, tuple(y.shape))
            if ignored is not None:
                w_y = xp.where(ignored, 0.0, w_y)
    return _Problem(
        xp=xp,
        input=input,
        dtype=cdt,
        kind=kind,
        target=target,
        y=y,
        ignored=ignored,
        q=q,
        w=w,
        w_y=w_y,
        axis=axis,
        label_smoothing=eps,
        reduction=reduction,
        guard=guard,
    )


def _loss_from_log_probs(p: _Problem, b: Any | None, b_y: Any | None) -> Any:
    """Reduced loss from log-probabilities ``b`` (full rows) or ``b_y`` (gathered)."""
    xp = p.xp
    if p.kind == "index":
        if b_y is None:
            b_y = gather_last(xp, b, p.y)
        loss = index_loss(xp, 0.0, b, b_y, p.w, p.w_y, p.label_smoothing)
    else:
        loss = soft_loss(xp, None, b, p.smoothed_weighted_target())
    return p.reduce(p.finish(loss))


def _needs_full_rows(p: _Problem) -> bool:
    return p.kind == "soft" or p.label_smoothing > 0.0


@_doc
def cross_entropy(
    probs: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "none",
    eps: float = 0.0,
) -> Any:
    r"""Cross-entropy of predicted class probabilities: the textbook definition.

    .. math::

        \ell_i = -\log \hat y_{i, y_i}
        \qquad\text{or, for probability targets,}\qquad
        \ell_i = -\sum_c q_{ic} \log \hat y_{ic}

    Only the probabilities the loss reads are touched: with class-index targets and no
    label smoothing, one per example.

    Parameters
    ----------
    probs : array_like
        Predicted probabilities in [0, 1] (any array library; lists become NumPy arrays).
    {target}
    {axis}
    {weight}
    {ignore_index}
    {label_smoothing}
    {reduction}
    eps : float in [0, 0.5), default 0
        Clip probabilities to ``[eps, 1 - eps]`` before the log. The default 0 is exact: a
        zero probability of the target class gives ``inf``.

    Returns
    -------
    array
        Per-example losses (``reduction="none"``) or a 0-d array, of the input's array
        library and device; float32 for float16/bfloat16 input.

    Raises
    ------
    CrossEntropyError
        For a target outside ``[0, C)``, a probability (that the loss reads) outside
        [0, 1], mismatched shapes, a wrong dtype or an option out of range. NaN
        probabilities are not an error: they give NaN losses.

    See Also
    --------
    softmax_cross_entropy : the same loss from logits, which is what to train with.

    Examples
    --------
    >>> import numpy as np, crossent
    >>> y_hat = np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]])
    >>> y = np.array([0, 2])
    >>> crossent.cross_entropy(y_hat, y)
    array([2.30258509, 0.69314718])
    >>> crossent.cross_entropy(y_hat, y, reduction="mean")
    array(1.49786614)
    """
    e = check_eps(eps)
    p = _prepare(
        probs,
        target,
        input_name="probs",
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    xp = p.xp
    advice = ": cross_entropy expects probabilities (for logits use softmax_cross_entropy)"
    with quiet(xp):
        if _needs_full_rows(p):
            fused = _kernels.nll_rows(p, probs=True, clip=e)
            if fused is not None:
                return fused
            p.check_read_values("probs", p.input, None, 0.0, 1.0, advice)
            x = p.x if e == 0.0 else xp.clip(p.x, e, 1.0 - e)
            return _loss_from_log_probs(p, xp.log(x), None)
        p_y = p.gathered_input()
        p.check_read_values("probs", None, p_y, 0.0, 1.0, advice)
        if e:
            p_y = xp.clip(p_y, e, 1.0 - e)
        return _loss_from_log_probs(p, None, xp.log(p_y))


@_doc
def nll_loss(
    log_probs: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "none",
) -> Any:
    r"""Negative log-likelihood of predicted log-probabilities.

    .. math::

        \ell_i = -w_{y_i} \log p_{i, y_i}
        \qquad\text{or}\qquad
        \ell_i = -\sum_c w_c q_{ic} \log p_{ic}

    The same as :func:`cross_entropy` with ``log_probs = log(probs)``, and as
    ``torch.nn.functional.nll_loss`` (which has no label smoothing or probability targets;
    here both work as in ``torch.nn.functional.cross_entropy``).

    Parameters
    ----------
    log_probs : array_like
        Log-probabilities, <= 0 (``-inf`` is a zero probability), e.g. ``log_softmax``.
    {target}
    {axis}
    {weight}
    {ignore_index}
    {label_smoothing}
    {reduction}

    Returns
    -------
    array
        Per-example losses or a 0-d array (float32 for half-precision input).

    Raises
    ------
    CrossEntropyError
        For a target outside ``[0, C)``, a log-probability (that the loss reads) above 0,
        mismatched shapes, a wrong dtype or an option out of range.

    Examples
    --------
    >>> import numpy as np, crossent
    >>> log_p = np.log(np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]]))
    >>> crossent.nll_loss(log_p, np.array([0, 2]))
    array([2.30258509, 0.69314718])
    >>> crossent.nll_loss(log_p, np.array([0, 2]), weight=np.array([2.0, 1.0, 1.0]))
    array([4.60517019, 0.69314718])
    """
    p = _prepare(
        log_probs,
        target,
        input_name="log_probs",
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    xp = p.xp
    advice = ": log-probabilities must be <= 0 (for logits use softmax_cross_entropy)"
    with quiet(xp):
        if _needs_full_rows(p):
            fused = _kernels.nll_rows(p, probs=False, clip=0.0)
            if fused is not None:
                return fused
            p.check_read_values("log_probs", p.input, None, -math.inf, 0.0, advice)
            return _loss_from_log_probs(p, p.x, None)
        lp_y = p.gathered_input()
        p.check_read_values("log_probs", None, lp_y, -math.inf, 0.0, advice)
        return _loss_from_log_probs(p, None, lp_y)


def _softmax(
    logits: Any,
    target: Any,
    *,
    axis: Any,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    reduction: Any,
    with_grad: bool,
    grad_output: Any = None,
    out: Any = None,
    want_lse: bool = True,
) -> tuple[Any, Any, Any]:
    """``(reduced loss, lse, dlogits or None)``: the one implementation of the logits path
    (lse may be None when not ``want_lse``)."""
    plain = _kernels.plain_softmax_ce(logits, target, axis, weight, ignore_index, label_smoothing,
                                      z_loss, softcap, reduction, with_grad, grad_output, out,
                                      want_lse)
    if plain is not None:
        return plain
    zl = check_nonnegative("z_loss", z_loss)
    cap = check_softcap(softcap)
    p = _prepare(
        logits,
        target,
        input_name="logits",
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    xp = p.xp
    eps = p.label_smoothing
    with quiet(xp):
        if out is not None:
            _check_out(p, out)
        fused = _kernels.softmax_ce(p, zl, cap, with_grad, grad_output, out, want_lse)
        if fused is not None:
            return fused
        z = softcap_logits(xp, p.x, cap)
        wq = p.smoothed_weighted_target() if p.kind == "soft" else None
        loss, lse, s, lse_s = softmax_loss(xp, z, p.y, p.w, p.w_y, wq, eps, zl)
        result = p.reduce(p.finish(loss))
        grad = None
        if with_grad:
            g = p.upstream(grad_output)
            if p.kind == "index":
                dz = softmax_grad_index(xp, s, lse_s, lse, p.y, g, p.w, p.w_y, eps, zl)
            else:
                dz = softmax_grad_soft(xp, s, lse_s, lse, wq, g, zl)
            if cap is not None:
                t = z / cap
                dz = dz * (1.0 - t * t)
            grad = p.to_input_layout(dz)
            if out is not None:
                grad = _write_out(xp, out, grad)
    return result, zero_dim(lse), grad


def _check_out(p: _Problem, out: Any) -> None:
    """``out`` must be a writable array of the logits' library, shape and dtype."""
    import array_api_compat

    ok_lib = array_api_compat.is_array_api_obj(out) and array_api_compat.array_namespace(out) is p.xp
    if not ok_lib or tuple(out.shape) != tuple(p.input.shape) or out.dtype != p.input.dtype:
        raise InvalidOptionError(
            f"out must be an array of the logits' library with shape {tuple(p.input.shape)} "
            f"and dtype {p.input.dtype}; got {type(out).__name__} with shape "
            f"{tuple(getattr(out, 'shape', ()))} and dtype {getattr(out, 'dtype', None)}",
            argument="out",
            value=type(out).__name__,
            expected=f"array of shape {tuple(p.input.shape)}, dtype {p.input.dtype}",
        )
    if not array_api_compat.is_writeable_array(out):
        raise InvalidOptionError(
            f"out is a read-only {type(out).__name__}: the gradient cannot be written into it "
            "(JAX arrays are immutable; use the returned gradient instead)",
            argument="out",
            value=type(out).__name__,
            expected="a writable array",
        )


def _write_out(xp: Any, out: Any, grad: Any) -> Any:
    import array_api_compat

    if array_api_compat.is_torch_array(out):
        with __import__("torch").no_grad():
            out.copy_(grad)
    else:
        out[...] = grad
    return out


@_doc
def softmax_cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: Reduction = "none",
    return_lse: bool = False,
) -> Any:
    r"""Cross-entropy of the softmax of logits: the loss to train a classifier with.

    .. math::

        \ell_i = \operatorname{lse}(z_i) - z_{i, y_i},
        \qquad \operatorname{lse}(z_i) = \log \sum_c e^{z_{ic}}

    computed with a stable log-sum-exp (never as ``log(softmax(z))``): finite for any
    finite logits (``±1e30`` in float32 included), ``-inf`` allowed for masked classes,
    NaN logits give NaN for their example. Equal to ``torch.nn.functional.cross_entropy``
    for every option PyTorch has, and to optax's ``softmax_cross_entropy`` (soft targets)
    and ``softmax_cross_entropy_with_integer_labels``.

    Parameters
    ----------
    logits : array_like
        Unnormalised log-probabilities.
    {target}
    {axis}
    {weight}
    {ignore_index}
    {label_smoothing}
    {z_loss}
    {softcap}
    {reduction}
    {return_lse}

    Returns
    -------
    loss : array
        Per-example losses or a 0-d array, in the input's array library and on its device;
        float32 for float16/bfloat16 logits (accumulated in float32).
    lse : array
        Only with ``return_lse=True``: ``(loss, lse)``.

    Raises
    ------
    CrossEntropyError
        For a target outside ``[0, C)`` (traced JAX/Dask arrays get NaN for that example
        instead, since they cannot raise), mismatched shapes, a wrong dtype, or an option
        out of range.

    Notes
    -----
    A probability target of 0 on a class whose logit is ``-inf`` contributes 0 (``0 log 0
    = 0``), where PyTorch returns NaN.

    References
    ----------
    Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022 (z-loss).
    Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024
    (logit soft-capping).

    Examples
    --------
    >>> import numpy as np, crossent
    >>> logits = np.log(np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]]))
    >>> crossent.softmax_cross_entropy(logits, np.array([0, 2]))
    array([2.30258509, 0.69314718])
    >>> crossent.softmax_cross_entropy(logits + 7.0, np.array([0, 2]), reduction="mean")
    array(1.49786614)
    >>> loss, lse = crossent.softmax_cross_entropy(
    ...     logits, np.array([0, -100]), ignore_index=-100, return_lse=True)
    >>> loss
    array([2.30258509, 0.        ])
    >>> np.allclose(lse, 0.0)  # the logits were log-probabilities: log-sum-exp 0
    True
    """
    loss, lse, _ = _softmax(
        logits,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        with_grad=False,
        want_lse=bool(return_lse),
    )
    return (loss, lse) if return_lse else loss


@_doc
def softmax_cross_entropy_value_and_grad(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: Reduction = "none",
    return_lse: bool = False,
    grad_output: Any = None,
    out: Any = None,
) -> Any:
    r""":func:`softmax_cross_entropy` and its gradient with respect to the logits.

    For class-index targets, with :math:`p = \mathrm{softmax}(z)`,

    .. math::

        \frac{\partial \ell_i}{\partial z_{ik}} = p_{ik} A_i
            - (1 - \varepsilon) w_{y_i} [k = y_i] - \frac{\varepsilon}{C} w_k,
        \quad A_i = (1-\varepsilon) w_{y_i} + \frac{\varepsilon}{C} \sum_c w_c
            + 2 \lambda_z w_{y_i} \operatorname{lse}(z_i)

    and for probability targets :math:`q'` (smoothed, weighted)
    :math:`\partial \ell_i / \partial z_{ik} = p_{ik} (\sum_c q'_{ic} + 2 \lambda_z
    \operatorname{lse}_i) - q'_{ik}`; soft-capping multiplies by :math:`1 - \tanh^2`.
    The gradient is that of the reduced loss; with ``reduction="none"`` it is the gradient
    of ``sum(grad_output * loss)``. Ignored examples get a zero gradient, even where their
    logits are NaN. This lets NumPy users train without an autograd framework.

    Parameters
    ----------
    logits : array_like
        Unnormalised log-probabilities.
    {target}
    {axis}
    {weight}
    {ignore_index}
    {label_smoothing}
    {z_loss}
    {softcap}
    {reduction}
    {return_lse}
    grad_output : array_like, optional
        The upstream gradient: broadcastable to the per-example loss shape with
        ``reduction="none"``, a scalar otherwise. Defaults to ones.
    out : array, optional
        Write the gradient into this array (same library, shape and dtype as ``logits``)
        and return it: no allocation, which spares the first-touch page faults of a fresh
        (N, C) buffer in a training loop. ``out`` may be ``logits`` itself (in place: the
        logits are overwritten by their gradient, as Liger and flash-attn do).

    Returns
    -------
    (loss, dlogits) or ((loss, lse), dlogits)
        ``dlogits`` has the shape, dtype and layout of ``logits``; the second form (with
        ``return_lse=True``) mirrors ``jax.value_and_grad(..., has_aux=True)``.

    Examples
    --------
    >>> import numpy as np, crossent
    >>> logits = np.array([[1.0, 2.0, 3.0]])
    >>> loss, dlogits = crossent.softmax_cross_entropy_value_and_grad(
    ...     logits, np.array([2]), reduction="mean")
    >>> loss
    array(0.40760596)
    >>> dlogits  # softmax(logits) - onehot(target)
    array([[ 0.09003057,  0.24472847, -0.33475904]])
    """
    loss, lse, grad = _softmax(
        logits,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        with_grad=True,
        grad_output=grad_output,
        out=out,
        want_lse=bool(return_lse),
    )
    return ((loss, lse), grad) if return_lse else (loss, grad)
