"""The exceptions crossent raises for bad input.

One base class, :class:`CrossEntropyError`, so that ``except crossent.CrossEntropyError``
catches everything the library rejects; each concrete error also derives from the builtin
exception a Python user would expect (``ValueError``, ``TypeError``, ``IndexError``), so
code written against NumPy or PyTorch error types keeps working.

Every error carries its context as attributes (``argument``, ``value``, ``index``,
``expected``), not only in the message, so that tools (the evaluator, a training loop) can
report or act on it without parsing text.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CrossEntropyError",
    "CrossEntropyValueError",
    "CrossEntropyTypeError",
    "InvalidOptionError",
    "ShapeMismatchError",
    "TargetOutOfRangeError",
    "ProbabilityRangeError",
    "InvalidDTypeError",
]


class CrossEntropyError(Exception):
    """Base class of every error crossent raises for bad input.

    Attributes
    ----------
    argument : str or None
        The name of the offending argument (``"target"``, ``"weight"``, ...).
    value : Any
        The offending value (an option, an element, a shape or a dtype).
    index : tuple of int or None
        Where the offending element sits in ``argument``, when it is an array element.
    expected : str or None
        What would have been accepted.
    """

    def __init__(
        self,
        message: str,
        *,
        argument: str | None = None,
        value: Any = None,
        index: tuple[int, ...] | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.argument = argument
        self.value = value
        self.index = index
        self.expected = expected


class CrossEntropyValueError(CrossEntropyError, ValueError):
    """An argument has the right type but an unacceptable value."""


class CrossEntropyTypeError(CrossEntropyError, TypeError):
    """An argument has the wrong type (or array dtype, or array library)."""


class InvalidOptionError(CrossEntropyValueError):
    """A keyword option (``reduction``, ``axis``, ``label_smoothing``, ...) is out of range."""


class ShapeMismatchError(CrossEntropyValueError):
    """The shapes of ``input``, ``target``, ``weight`` or ``grad_output`` do not fit together."""


class TargetOutOfRangeError(CrossEntropyValueError, IndexError):
    """A class-index target lies outside ``[0, C)`` and is not ``ignore_index``.

    Also an ``IndexError``, as PyTorch raises for the same mistake.
    """


class ProbabilityRangeError(CrossEntropyValueError):
    """A probability (or log-probability, or target probability) is outside its range."""


class InvalidDTypeError(CrossEntropyTypeError):
    """An array has a dtype the function cannot use (e.g. a boolean target)."""
