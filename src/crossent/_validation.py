"""Validation of options, shapes, dtypes and values: every bad input gets a clear error.

Messages name the argument, the offending value (and its index, for array elements) and
what was expected. Value checks need to read the data: for concrete arrays they raise; for
traced or lazy arrays (``jax.jit``, Dask), where raising is impossible, :class:`ValueGuard`
turns the affected examples' loss into NaN instead, so a bad label is never a silently
plausible number (the trap optax#1185 and TF-on-GPU users fall into).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

from ._backend import is_concrete, isdtype
from ._errors import (
    InvalidDTypeError,
    InvalidOptionError,
    ProbabilityRangeError,
    ShapeMismatchError,
    TargetOutOfRangeError,
)

REDUCTIONS = ("none", "mean", "sum")


def _real(name: str, value: Any) -> float:
    """A real-number option as a float; bools and strings are refused, not coerced
    (``softcap=True`` must not silently mean a cap of 1)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, (bool, np.bool_, str, bytes)) and hasattr(value, "__float__"):
        dtype = getattr(value, "dtype", None)
        if getattr(value, "shape", ()) == () and "bool" not in str(dtype):
            try:  # 0-d arrays of any library
                return float(value)
            except (TypeError, ValueError):
                pass
    raise InvalidOptionError(
        f"{name} = {value!r} is not a real number",
        argument=name,
        value=value,
        expected="a real number",
    )


def check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise InvalidOptionError(
            f"reduction = {reduction!r} is not one of 'none', 'mean', 'sum'",
            argument="reduction",
            value=reduction,
            expected="'none', 'mean' or 'sum'",
        )
    return reduction


def check_axis(axis: Any, ndim: int, input_name: str = "input") -> int:
    """Normalise ``axis`` to ``[0, ndim)``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise InvalidOptionError(
            f"axis = {axis!r} is not an integer",
            argument="axis",
            value=axis,
            expected="an integer",
        )
    axis = int(axis)
    if ndim == 0:
        raise ShapeMismatchError(
            f"{input_name} is 0-dimensional; expected at least one dimension, the class axis",
            argument=input_name,
            value=(),
            expected="ndim >= 1",
        )
    if not -ndim <= axis < ndim:
        raise InvalidOptionError(
            f"axis = {axis} is out of range for input with {ndim} dimension"
            f"{'s' if ndim != 1 else ''} (expected {-ndim} <= axis < {ndim})",
            argument="axis",
            value=axis,
            expected=f"{-ndim} <= axis < {ndim}",
        )
    return axis % ndim


def check_unit_interval(name: str, value: Any) -> float:
    v = _real(name, value)
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise InvalidOptionError(
            f"{name} = {v!r} is outside [0, 1]",
            argument=name,
            value=v,
            expected="0 <= value <= 1",
        )
    return v


def check_nonnegative(name: str, value: Any) -> float:
    v = _real(name, value)
    if not (v >= 0.0 and math.isfinite(v)):
        raise InvalidOptionError(
            f"{name} = {v!r} must be a finite number >= 0",
            argument=name,
            value=v,
            expected="finite value >= 0",
        )
    return v


def check_eps(eps: Any) -> float:
    v = _real("eps", eps)
    if not 0.0 <= v < 0.5:
        raise InvalidOptionError(
            f"eps = {v!r} is outside [0, 0.5): probabilities are clipped to [eps, 1 - eps]",
            argument="eps",
            value=v,
            expected="0 <= eps < 0.5",
        )
    return v


def check_softcap(softcap: Any) -> float | None:
    if softcap is None:
        return None
    v = _real("softcap", softcap)
    if not (v > 0.0 and math.isfinite(v)):
        raise InvalidOptionError(
            f"softcap = {v!r} must be a finite number > 0 (or None for no cap)",
            argument="softcap",
            value=v,
            expected="finite value > 0, or None",
        )
    return v


def check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise InvalidOptionError(
            f"ignore_index = {ignore_index!r} is not an integer (or None)",
            argument="ignore_index",
            value=ignore_index,
            expected="an integer or None",
        )
    return int(ignore_index)


def _shape(shape: Any) -> tuple[Any, ...]:
    return tuple(shape)


def target_kind(xp: Any, input: Any, target: Any, axis: int, argument: str = "input") -> str:
    """``"index"`` for integer class indices, ``"soft"`` for class probabilities."""
    in_shape = _shape(input.shape)
    ex_shape = in_shape[:axis] + in_shape[axis + 1 :]
    t_shape = _shape(target.shape)
    dt = target.dtype
    if isdtype(xp, dt, "bool") or not isdtype(xp, dt, ("integral", "real floating")):
        raise InvalidDTypeError(
            f"target has dtype {dt}; expected integer class indices (shape {ex_shape}) or "
            f"floating class probabilities (shape {in_shape})",
            argument="target",
            value=str(dt),
            expected="integer or real floating dtype",
        )
    if isdtype(xp, dt, "integral"):
        if t_shape != ex_shape:
            raise ShapeMismatchError(
                f"target has shape {t_shape} but {argument} has shape {in_shape}: integer "
                f"class-index targets need shape {ex_shape} ({argument}'s shape without the "
                f"class axis {axis}); floating probability targets need shape {in_shape}",
                argument="target",
                value=t_shape,
                expected=str(ex_shape),
            )
        return "index"
    if t_shape != in_shape:
        hint = (
            "; it looks like class indices stored as floats: pass an integer array "
            "(e.g. target.astype(int))"
            if t_shape == ex_shape
            else ""
        )
        raise ShapeMismatchError(
            f"target is floating with shape {t_shape} but {argument} has shape {in_shape}: "
            f"floating targets are class probabilities and need shape {in_shape}; integer "
            f"class-index targets need shape {ex_shape}{hint}",
            argument="target",
            value=t_shape,
            expected=str(in_shape),
        )
    return "soft"


def check_class_weight(xp: Any, weight: Any, n_classes: int, axis: int) -> None:
    if not xp.isdtype(weight.dtype, ("real floating", "integral")) or xp.isdtype(
        weight.dtype, "bool"
    ):
        raise InvalidDTypeError(
            f"weight has dtype {weight.dtype}; expected real numbers, one per class",
            argument="weight",
            value=str(weight.dtype),
            expected="real floating dtype",
        )
    if _shape(weight.shape) != (n_classes,):
        raise ShapeMismatchError(
            f"weight has shape {_shape(weight.shape)}; expected ({n_classes},): one weight per "
            f"class along axis {axis}",
            argument="weight",
            value=_shape(weight.shape),
            expected=f"({n_classes},)",
        )


def check_broadcastable(name: str, shape: Any, to_shape: Any, what: str) -> None:
    s, t = _shape(shape), _shape(to_shape)
    ok = len(s) <= len(t) and all(a == 1 or a == b for a, b in zip(s[::-1], t[::-1]))
    if not ok:
        raise ShapeMismatchError(
            f"{name} has shape {s}, which does not broadcast to {what} {t}",
            argument=name,
            value=s,
            expected=f"broadcastable to {t}",
        )


def _first_index(xp: Any, mask: Any) -> tuple[int, ...]:
    if mask.ndim == 0:
        return ()
    return tuple(int(i[0]) for i in xp.nonzero(mask))


def _scalar(x: Any) -> Any:
    """A 0-d array element as a Python int (integer dtypes, exactly) or float."""
    import array_api_compat

    try:
        xp = array_api_compat.array_namespace(x)
        if xp.isdtype(x.dtype, ("integral", "bool")):
            return int(x)
    except (TypeError, AttributeError):
        pass
    v = float(x)
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


def _fmt_index(name: str, index: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(map(str, index))}]" if index else name


class ValueGuard:
    """Checks on array values: raise for concrete arrays, NaN-poison for traced ones.

    ``bad`` accumulates, per example, whether any check failed (traced arrays only);
    :meth:`poison` applies it to a per-example result.
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.bad: Any = None

    def check(
        self,
        bad: Any,
        error: Callable[[tuple[int, ...]], Exception],
        example_bad: Callable[[Any], Any] | None = None,
    ) -> None:
        """``bad``: boolean mask of offending elements. ``error(index)`` builds the exception.

        ``example_bad`` maps ``bad`` to a per-example mask (for traced arrays); by default
        ``bad`` is already per example (or a scalar that poisons everything).
        """
        xp = self.xp
        # Decided per mask, not per argument: inside jax.jit even operations on concrete
        # (closed-over) arrays give tracers, which cannot be read.
        if is_concrete(bad):
            if bool(xp.any(bad)):
                raise error(_first_index(xp, bad))
            return
        rows = example_bad(bad) if example_bad is not None else bad
        self.bad = rows if self.bad is None else xp.logical_or(self.bad, rows)

    def poison(self, values: Any, extra_dims: int = 0) -> Any:
        """Set the examples a check flagged to NaN (``extra_dims`` trailing class dims)."""
        if self.bad is None:
            return values
        bad = self.bad
        for _ in range(extra_dims):
            bad = bad[..., None]
        return self.xp.where(bad, float("nan"), values)


def class_index_error(
    target: Any, n_classes: int, ignore_index: int | None
) -> Callable[[tuple[int, ...]], Exception]:
    def make(index: tuple[int, ...]) -> Exception:
        value = _scalar(target[index]) if index else _scalar(target)
        ign = "" if ignore_index is None else f" or equal ignore_index={ignore_index}"
        return TargetOutOfRangeError(
            f"{_fmt_index('target', index)} = {value} is out of range: class indices must be "
            f"in [0, {n_classes}) for an input with {n_classes} classes{ign}",
            argument="target",
            value=value,
            index=index,
            expected=f"0 <= target < {n_classes}",
        )

    return make


def range_error(
    name: str,
    array: Any,
    low: float,
    high: float,
    advice: str,
    to_user_index: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None,
    source: Any = None,
) -> Callable[[tuple[int, ...]], Exception]:
    """Error for an element of ``array`` outside ``[low, high]``.

    ``source``/``to_user_index``: when ``array`` is a gathered view, the element is read from
    ``array`` but reported at its position in the user's array.
    """

    def make(index: tuple[int, ...]) -> Exception:
        value = _scalar(array[index]) if index else _scalar(array)
        where = to_user_index(index) if to_user_index is not None else index
        lo = "-inf" if low == -math.inf else f"{low:g}"
        return ProbabilityRangeError(
            f"{_fmt_index(name, where)} = {value!r} is outside [{lo}, {high:g}]{advice}",
            argument=name,
            value=value,
            index=where,
            expected=f"{lo} <= {name} <= {high:g}",
        )

    return make


def negative_error(name: str, array: Any, what: str) -> Callable[[tuple[int, ...]], Exception]:
    def make(index: tuple[int, ...]) -> Exception:
        value = _scalar(array[index]) if index else _scalar(array)
        return InvalidOptionError(
            f"{_fmt_index(name, index)} = {value!r} is negative: {what} must be >= 0",
            argument=name,
            value=value,
            index=index,
            expected=">= 0",
        )

    return make
