"""crossent: cross-entropy loss, exact, for any array library.

The textbook loss of a classifier's predicted probabilities ``y_hat`` and labels ``y`` is
``-log y_hat[i, y_i]``:

>>> import numpy as np, crossent
>>> crossent.cross_entropy(np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]]), np.array([0, 2]))
array([2.30258509, 0.69314718])

:func:`softmax_cross_entropy` takes logits (what to train with) and every option PyTorch,
Keras and optax offer; :func:`softmax_cross_entropy_value_and_grad` adds the gradient.
Inputs may come from NumPy, PyTorch, JAX, CuPy, Dask or any array-API library; results
stay in that library and on that device.
"""

from __future__ import annotations

from ._binary import binary_cross_entropy, sigmoid_binary_cross_entropy
from ._categorical import (
    cross_entropy,
    nll_loss,
    softmax_cross_entropy,
    softmax_cross_entropy_value_and_grad,
)
from ._config import show_config
from ._errors import (
    CrossEntropyError,
    CrossEntropyTypeError,
    CrossEntropyValueError,
    InvalidDTypeError,
    InvalidOptionError,
    ProbabilityRangeError,
    ShapeMismatchError,
    TargetOutOfRangeError,
)

from ._kernels import get_num_threads, set_num_threads

__version__ = "0.1.0"


def __getattr__(name: str):  # PEP 562: submodules with optional dependencies, on demand
    if name in ("metrics", "torch"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'crossent' has no attribute {name!r}")


__all__ = [
    "cross_entropy",
    "nll_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_value_and_grad",
    "binary_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "show_config",
    "set_num_threads",
    "get_num_threads",
    "CrossEntropyError",
    "CrossEntropyValueError",
    "CrossEntropyTypeError",
    "InvalidOptionError",
    "ShapeMismatchError",
    "TargetOutOfRangeError",
    "ProbabilityRangeError",
    "InvalidDTypeError",
]
