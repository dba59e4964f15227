"""Shared fixtures: the ``xp`` fixture runs a test over every installed array library.

Tests written against ``xp`` build their inputs with NumPy, convert them with
``xp_asarray`` and read results back with ``to_numpy``, so one test body checks the
same numbers on NumPy, array-api-strict, PyTorch and JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

# JAX computes in float32 unless told otherwise; float64 references need x64.
try:
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover - jax is an optional extra
    pass

# (library that must be installed, array-API namespace used by the tests)
_BACKENDS = {
    "numpy": ("numpy", "array_api_compat.numpy"),
    "array_api_strict": ("array_api_strict", "array_api_strict"),
    "torch": ("torch", "array_api_compat.torch"),
    "jax": ("jax", "jax.numpy"),
}


@pytest.fixture(params=list(_BACKENDS))
def xp(request: pytest.FixtureRequest) -> Any:
    """The array-API namespace under test (skipped only if its library is not installed)."""
    library, namespace = _BACKENDS[request.param]
    pytest.importorskip(library)
    return importlib.import_module(namespace)


def xp_asarray(xp: Any, a: Any, dtype: Any = None) -> Any:
    """A NumPy array (or list) as an array of ``xp``; ``dtype`` is a NumPy dtype name."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype)
    if "torch" in xp.__name__:
        return xp.from_numpy(a.copy(order="C"))  # keeps 0-d arrays 0-d
    return xp.asarray(a)


def to_numpy(x: Any) -> np.ndarray:
    """Any library's array (or a Python number) as a NumPy array."""
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    mod = type(x).__module__
    if mod.startswith("array_api_strict"):
        return np.from_dlpack(x)
    return np.asarray(x)


def library_of(x: Any) -> str:
    """``"numpy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"`` ... for an array."""
    return type(x).__module__.split(".")[0].replace("jaxlib", "jax")


def tolerance(dtype: Any) -> float:
    """Relative tolerance derived from the dtype's machine epsilon (array-api-extra style)."""
    return float(np.finfo(np.dtype(dtype)).eps) ** 0.5 if np.dtype(dtype).itemsize < 4 else 64 * float(
        np.finfo(np.dtype(dtype)).eps
    )


def have(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
