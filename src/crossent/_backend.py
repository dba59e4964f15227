"""Array-library plumbing: which namespace, which device, which dtype, eager or traced.

Everything library-specific lives here, so that the reference implementation
(:mod:`crossent._reference`) is written once against the array API standard. Libraries are
recognised through :mod:`array_api_compat`, which detects them via ``sys.modules`` and so
never imports a framework the caller has not imported already.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

from ._errors import CrossEntropyTypeError, InvalidDTypeError

__all__ = [
    "namespace_of",
    "as_array_like",
    "is_concrete",
    "stop_gradient",
    "compute_dtype",
    "index_dtype",
    "isdtype",
    "memo",
    "quiet",
    "zero_dim",
]


def _library_name(x: Any) -> str:
    t = type(x)
    return f"{t.__module__.split('.')[0]}.{t.__qualname__}"


_INT64 = np.dtype(np.int64)


# The namespaces of exact np.ndarray and torch.Tensor (not subclasses: a subclass may
# bring its own), without array_namespace's checks on every call (~2.5 us each).
_XP_OF_TYPE: dict = {}


def _namespace_of_type(x: Any) -> Any:
    t = type(x)
    xp = _XP_OF_TYPE.get(t)
    if xp is None:
        xp = array_api_compat.array_namespace(x)
        if t is np.ndarray or (t.__module__ == "torch" and t.__name__ == "Tensor"):
            _XP_OF_TYPE[t] = xp
    return xp


def namespace_of(input: Any, argument: str = "input") -> tuple[Any, Any]:
    """Return ``(xp, array)`` for the main input; Python sequences become NumPy arrays."""
    xp = _XP_OF_TYPE.get(type(input))
    if xp is not None:  # the common cases, without array_namespace's lookups
        return xp, input
    if not array_api_compat.is_array_api_obj(input):
        if isinstance(input, (list, tuple, int, float, np.generic)):
            input = _convert(np.asarray, input, argument)
        else:
            raise CrossEntropyTypeError(
                f"{argument} is a {type(input).__name__}; expected an array (NumPy, PyTorch, "
                "JAX, CuPy, Dask or any array-API array) or a nested list of numbers",
                argument=argument,
                value=type(input).__name__,
                expected="an array",
            )
    return _namespace_of_type(input), input


def as_array_like(xp: Any, like: Any, value: Any, argument: str) -> Any:
    """Bring ``value`` into the namespace and onto the device of ``like``.

    Arrays of the same library pass through. Python numbers and sequences and NumPy arrays
    are converted (a NumPy class-weight vector with a PyTorch input is an everyday case);
    an array of another library is rejected rather than silently copied across devices.
    """
    if _XP_OF_TYPE.get(type(value)) is xp:
        return value
    if array_api_compat.is_array_api_obj(value):
        other = _namespace_of_type(value)
        if other is xp:
            return value
        if not array_api_compat.is_numpy_array(value):
            raise CrossEntropyTypeError(
                f"{argument} is a {_library_name(value)} but input is a {_library_name(like)}; "
                "pass both from the same array library (NumPy arrays and Python lists are "
                "converted automatically)",
                argument=argument,
                value=_library_name(value),
                expected=_library_name(like),
            )
    elif not isinstance(value, (list, tuple, int, float, np.generic)):
        raise CrossEntropyTypeError(
            f"{argument} is a {type(value).__name__}; expected an array or a list of numbers",
            argument=argument,
            value=type(value).__name__,
            expected="an array",
        )
    device = array_api_compat.device(like)
    return _convert(lambda v: xp.asarray(v, device=device), value, argument)


def _convert(asarray: Any, value: Any, argument: str) -> Any:
    """``asarray(value)``, with the library's own conversion errors made ours."""
    try:
        return asarray(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CrossEntropyTypeError(
            f"{argument} could not be converted to an array ({exc}); expected a "
            "rectangular array of numbers",
            argument=argument,
            value=type(value).__name__,
            expected="a rectangular array of numbers",
        ) from exc


def is_concrete(x: Any) -> bool:
    """Whether the values of ``x`` can be read now (to validate them and raise).

    Traced JAX values (inside ``jax.jit``/``jax.grad``) and Dask graphs cannot be read
    without breaking the trace or computing the graph; for those, invalid entries turn the
    affected results into NaN instead of raising.
    """
    if array_api_compat.is_jax_array(x):
        import jax

        return not isinstance(x, jax.core.Tracer)
    if array_api_compat.is_dask_array(x):
        return False
    return not array_api_compat.is_lazy_array(x)


def stop_gradient(x: Any) -> Any:
    """Detach ``x`` from autograd where the library has the notion.

    Used on the row maximum of a log-sum-exp: its contribution to the gradient is exactly
    zero in exact arithmetic, and detaching it keeps rounding noise out of the gradient.
    """
    if array_api_compat.is_torch_array(x):
        return x.detach()
    if array_api_compat.is_jax_array(x):
        import jax

        return jax.lax.stop_gradient(x)
    return x


def _is_half(xp: Any, dtype: Any) -> bool:
    return bool(xp.finfo(dtype).bits < 32)


# Small per-call helpers are memoised on (namespace, dtype): NumPy's ``isdtype`` and
# ``dtype.name`` are Python code (~1.5 us each) and a call asked them half a dozen times,
# a third of a 64 x 10 call's time. Namespaces are long-lived modules; dtypes are few.
_MEMO: dict = {}
_MEMO_MAX = 4096


def memo(key: Any, compute: Any) -> Any:
    """``compute()``, remembered under ``key`` once it has returned (errors are not)."""
    try:
        return _MEMO[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable dtype: not memoised
        return compute()
    value = compute()
    if len(_MEMO) < _MEMO_MAX:
        _MEMO[key] = value
    return value


def isdtype(xp: Any, dtype: Any, kind: Any) -> bool:
    """``xp.isdtype(dtype, kind)``, memoised."""
    return memo(("isdtype", id(xp), dtype, kind), lambda: bool(xp.isdtype(dtype, kind)))


def compute_dtype(xp: Any, dtype: Any, argument: str) -> Any:
    """The dtype to compute in for a floating ``dtype``: float16/bfloat16 accumulate in float32."""
    return memo(("compute", id(xp), dtype), lambda: _compute_dtype(xp, dtype, argument))


def _compute_dtype(xp: Any, dtype: Any, argument: str) -> Any:
    if getattr(dtype, "name", None) == "bfloat16" and array_api_compat.is_numpy_namespace(xp):
        return xp.float32  # NumPy's bfloat16 (ml_dtypes) is outside the array API
    if not xp.isdtype(dtype, "real floating"):
        raise InvalidDTypeError(
            f"{argument} has dtype {dtype}; expected a real floating dtype "
            "(float16, bfloat16, float32 or float64)",
            argument=argument,
            value=str(dtype),
            expected="real floating dtype",
        )
    return xp.float32 if _is_half(xp, dtype) else dtype


def index_dtype(xp: Any, like: Any) -> Any:
    """The library's default indexing dtype (int64, or int32 for JAX without x64)."""
    if isinstance(like, np.ndarray):
        return _INT64
    device = array_api_compat.device(like)
    return memo(("index", id(xp), device),
                 lambda: xp.__array_namespace_info__().default_dtypes(device=device)["indexing"])


def zero_dim(x: Any) -> Any:
    """A reduction's result as a 0-d array: NumPy reductions return scalars instead."""
    return np.asarray(x) if isinstance(x, np.generic) else x


@contextlib.contextmanager
def quiet(xp: Any) -> Iterator[None]:
    """Silence NumPy's floating-point warnings inside a loss computation.

    ``inf`` (a zero probability) and NaN (NaN input) are documented results here, not
    accidents, so ``log(0)`` must not print a RuntimeWarning to the user.
    """
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(
        xp
    ):
        with np.errstate(all="ignore"):
            yield
    else:
        yield
