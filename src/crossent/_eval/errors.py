"""Errors of the evaluator: bad data in files or arrays, unreadable files, missing extras.

All derive from :class:`crossent.CrossEntropyError`, so ``except crossent.CrossEntropyError``
still catches everything, and carry where the problem is (``file``, ``row``, ``column``)
as attributes as well as in the one-line message.
"""

from __future__ import annotations

from typing import Any

from .._errors import CrossEntropyError, CrossEntropyValueError

__all__ = [
    "DataError",
    "LabelError",
    "PredictionError",
    "DataFileError",
    "MissingDependencyError",
    "ClusterError",
    "EXTRAS",
]

# extra of crossent that provides each optional module
EXTRAS = {
    "pyarrow": "eval",
    "matplotlib": "plot",
    "distributed": "dask",
    "dask": "dask",
    "tqdm": "progress",
}


def _fmt_column(column: Any) -> str:
    if isinstance(column, str):
        return f"column {column!r}"
    return f"column {column}"


class DataError(CrossEntropyValueError):
    """Bad values in the predictions or labels: a cell, a row, or their counts.

    Attributes
    ----------
    file : str or None
        The file (or directory) the data came from; None for in-memory arrays.
    row : int or None
        The 0-based row (example) number, counted over the whole input.
    column : str or int or None
        The column name (or index) within the file.
    problem : str
        What is wrong, without the location.
    expected : str or None
        What would have been accepted.

    The message is ``"{file}: row {row}, column {column}: {problem}; expected {expected}"``
    with the parts that are known.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: Any = None,
        expected: str | None = None,
        value: Any = None,
        argument: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.row = row
        self.column = column
        self.hint = hint
        super().__init__(
            self._message(problem, file, row, column, expected, hint),
            argument=argument,
            value=value,
            index=None if row is None else (int(row),),
            expected=expected,
        )

    @staticmethod
    def _message(
        problem: str, file: str | None, row: int | None, column: Any, expected: str | None,
        hint: str | None,
    ) -> str:
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(_fmt_column(column))
        head = ", ".join(where)
        parts = [p for p in (file, head) if p]
        msg = ": ".join(parts + [problem]) if parts else problem
        if expected:
            msg += f"; expected {expected}"
        if hint:
            msg += f" ({hint})"
        return msg

    def located(
        self,
        *,
        file: str | None = None,
        column: Any = None,
        row_offset: int = 0,
        hint: str | None = None,
    ) -> DataError:
        """A copy of this error with the file / column filled in (known ones are kept) and
        the row shifted by ``row_offset``."""
        err = type(self)(
            self.problem,
            file=self.file if self.file is not None else file,
            row=None if self.row is None else self.row + row_offset,
            column=self.column if self.column is not None else column,
            expected=self.expected,
            value=self.value,
            argument=self.argument,
            hint=self.hint if self.hint is not None else hint,
        )
        err.__cause__ = self.__cause__
        return err

    def __reduce__(self) -> Any:  # pickles across Dask workers with its context
        return (
            _rebuild,
            (type(self), self.problem, dict(file=self.file, row=self.row, column=self.column,
                                            expected=self.expected, value=self.value,
                                            argument=self.argument, hint=self.hint)),
        )


def _rebuild(cls: type, problem: str, kwargs: dict[str, Any]) -> Any:
    return cls(problem, **kwargs)


class LabelError(DataError):
    """A label is out of range, not an integer, missing, or an unknown class name."""


class PredictionError(DataError):
    """A prediction is not a number, missing, or not a probability where one is needed."""


class DataFileError(CrossEntropyError, OSError):
    """A file is missing, unreadable, truncated, or not in the format its name says.

    Attributes
    ----------
    file : str
        The file's path.
    """

    def __init__(self, problem: str, *, file: str, expected: str | None = None) -> None:
        self.problem = problem
        self.file = file
        msg = f"{file}: {problem}"
        if expected:
            msg += f"; expected {expected}"
        CrossEntropyError.__init__(self, msg, argument="file", value=file, expected=expected)

    def __str__(self) -> str:  # OSError's __str__ would print errno-style text
        return str(self.args[0])

    def __reduce__(self) -> Any:
        return (_rebuild_file, (type(self), self.problem, self.file, self.expected))


def _rebuild_file(cls: type, problem: str, file: str, expected: str | None) -> Any:
    return cls(problem, file=file, expected=expected)


class MissingDependencyError(CrossEntropyError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, purpose: str) -> None:
        extra = EXTRAS.get(module, module)
        super().__init__(
            f"{purpose} needs {module}, which is not installed: "
            f"pip install 'crossent[{extra}]'",
            argument=module,
            value=module,
            expected=f"crossent[{extra}] installed",
        )
        self.module = module
        self.extra = extra

    def __reduce__(self) -> Any:
        return (_rebuild_missing, (type(self), self.module, str(self)))


def _rebuild_missing(cls: Any, module: str, message: str) -> Any:
    err = cls.__new__(cls)
    CrossEntropyError.__init__(err, message, argument=module, value=module)
    err.module = module
    err.extra = EXTRAS.get(module, module)
    return err


def require(module: str, purpose: str) -> Any:
    """Import an optional module, or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], purpose) from exc


class ClusterError(CrossEntropyError, ConnectionError):
    """The Dask cluster cannot be reached or started."""
