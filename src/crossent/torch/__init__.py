"""crossent for PyTorch: drop-in cross-entropy, fused linear cross-entropy, vocab-parallel.

Imported on demand (``import crossent.torch``); PyTorch is an optional extra.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "crossent.torch needs PyTorch, which is not installed: pip install 'crossent[torch]'"
    ) from exc

from ._cross_entropy import CrossEntropyLoss, cross_entropy
from ._linear import LinearCrossEntropyLoss, linear_cross_entropy
from ._parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "linear_cross_entropy",
    "LinearCrossEntropyLoss",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
