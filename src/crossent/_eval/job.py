"""An evaluation job: which files, which columns, which options; planned once, scored by
row ranges (the whole file on one machine, or one partition per Dask task).

:func:`plan` opens the predictions (and labels) once, resolves the columns, checks the row
counts, reads the first rows to learn the class count and what the predictions are
(probabilities, logits, log-probabilities), and returns a picklable :class:`Plan`.
:meth:`Plan.score` streams a row range through a :class:`crossent.metrics.Evaluator`
with bounded memory, the reading running one chunk ahead in a background thread.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .._errors import InvalidOptionError
from ..metrics import Evaluator, detect_input
from .errors import DataError, LabelError, PredictionError
from .readers import (
    DEFAULT_CHUNK_BYTES,
    Batch,
    Dataset,
    LabelMapper,
    _LengthMismatch,
    align,
    open_dataset,
    prefetch,
)

__all__ = ["Source", "Plan", "plan", "Progress"]

_DETECT_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where predictions or labels come from (picklable: workers reopen it)."""

    path: str
    fmt: str | None = None
    delimiter: str | None = None
    header: bool | None = None  # CSV: None decides from the first row
    pred_cols: tuple[str, ...] | None = None
    label_col: str | None = None

    def open(self, *, preds: bool, labels: bool) -> Dataset:
        ds = open_dataset(self.path, fmt=self.fmt, delimiter=self.delimiter, header=self.header)
        ds.select(preds=preds, labels=labels,
                  pred_cols=list(self.pred_cols) if self.pred_cols else None,
                  label_col=self.label_col)
        return ds


@dataclass
class Plan:
    """A resolved job. ``kind``/``reason``: what the predictions are taken to be."""

    predictions: Source
    labels: Source | None
    options: dict[str, Any]
    requested_input: str
    kind: str
    reason: str
    n_rows: int | None
    n_classes: int
    binary: bool
    class_names: list[str] | None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    threads: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- datasets
    def open(self) -> tuple[Dataset, Dataset]:
        """(predictions dataset, labels dataset); the same object when labels are in the
        predictions file."""
        if self.labels is None:
            ds = self.predictions.open(preds=True, labels=True)
            return ds, ds
        return (self.predictions.open(preds=True, labels=False),
                self.labels.open(preds=False, labels=True))

    def new_evaluator(self) -> Evaluator:
        ev = Evaluator(input=self.kind, n_classes=self.n_classes,
                       class_names=self.class_names, **self.options)
        ev.requested_input = self.requested_input
        ev.kind_reason = self.reason
        return ev

    # ----------------------------------------------------------------- scoring
    def score(self, start: int = 0, stop: int | None = None,
              progress: Progress | None = None) -> Evaluator:
        """Score rows ``[start, stop)`` (all rows by default) into a new evaluator."""
        if self.threads is not None:
            from .._kernels import set_num_threads

            set_num_threads(self.threads)
        pred_ds, label_ds = self.open()
        ev = self.new_evaluator()
        mapper = LabelMapper(self.class_names, label_ds.path, label_ds.label_column)
        batches = _batches(pred_ds, label_ds, start, stop, self.chunk_bytes)
        unit_bytes = progress is not None and progress.unit == "B"
        seen_bytes = 0
        it = prefetch(batches, depth=1)

        def stream() -> Iterator[tuple[Any, Any, int]]:
            nonlocal seen_bytes
            for b in it:
                if b.n == 0:
                    continue
                yield b.preds, mapper(b.labels, b.start), b.start
                if progress is not None:
                    if unit_bytes:
                        now = getattr(pred_ds, "bytes_read", 0)
                        progress.update(now - seen_bytes)
                        seen_bytes = now
                    else:
                        progress.update(b.n)

        try:
            ev._update_stream(stream())  # noqa: SLF001 - the evaluator is ours, discarded on error
        except (LabelError, PredictionError) as e:
            raise _locate(e, pred_ds, label_ds) from e.__cause__
        finally:
            it.close()
        return ev

    def partitions(self, target_rows: int) -> list[tuple[int, int | None]]:
        pred_ds, label_ds = self.open()
        if label_ds is not pred_ds and (pred_ds.n_rows is None or label_ds.n_rows is None):
            # a CSV side: its row count is unknown, so only a single pass over both files
            # can check that they have the same number of rows
            return [(0, None)]
        return pred_ds.partitions(target_rows)

    def sources(self) -> dict[str, Any]:
        return dict(self.info)


def _locate(e: Any, pred_ds: Dataset, label_ds: Dataset) -> Any:
    if isinstance(e, LabelError):
        return e.located(file=label_ds.path, column=label_ds.label_column)
    col = e.column
    if isinstance(col, (int, np.integer)):
        col = pred_ds.describe_pred_column(int(col))
    err = type(e)(e.problem, file=e.file or pred_ds.path, row=e.row, column=col,
                  expected=e.expected, value=e.value, argument=e.argument, hint=e.hint)
    return err


def _batches(pred_ds: Dataset, label_ds: Dataset, start: int, stop: int | None,
             chunk_bytes: int) -> Iterator[Batch]:
    if label_ds is pred_ds:
        yield from pred_ds.batches(start, stop, chunk_bytes)
        return
    try:
        yield from align(pred_ds.batches(start, stop, chunk_bytes),
                         label_ds.batches(start, stop, chunk_bytes))
    except _LengthMismatch as m:
        short, long_ = (pred_ds, label_ds) if m.preds_ended else (label_ds, pred_ds)
        n_short = f" ({short.n_rows})" if short.n_rows is not None else ""
        n_long = f" ({long_.n_rows})" if long_.n_rows is not None else ""
        raise DataError(
            f"{short.path} has fewer rows{n_short} than {long_.path}{n_long}",
            expected="one label per prediction row",
        ) from None


# --------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------


def plan(
    predictions: Source,
    labels: Source | None,
    *,
    input: str = "auto",
    classes: list[str] | None = None,
    options: dict[str, Any] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Plan:
    """Open the inputs, resolve columns and class names, check row counts, and learn the
    class count and input kind from the first rows."""
    options = dict(options or {})
    probe = Evaluator(input=input, **options)  # validates the options first (usage errors)
    del probe
    p = Plan(predictions=predictions, labels=labels, options=options,
             requested_input=input, kind="logits", reason="", n_rows=None,
             n_classes=0, binary=False, class_names=None, chunk_bytes=chunk_bytes)
    pred_ds, label_ds = p.open()
    if label_ds is not pred_ds:
        if (pred_ds.n_rows is not None and label_ds.n_rows is not None
                and pred_ds.n_rows != label_ds.n_rows):
            raise DataError(
                f"{pred_ds.path} has {pred_ds.n_rows} rows but {label_ds.path} has "
                f"{label_ds.n_rows}", expected="one label per prediction row",
            )
    p.n_rows = pred_ds.n_rows if pred_ds.n_rows is not None else label_ds.n_rows
    # the first rows: class count, binary or not, what the values are
    first = None
    for b in _batches(pred_ds, label_ds, 0, None, min(chunk_bytes, _DETECT_BYTES)):
        if b.n:
            first = b
            break
    if first is None or first.preds is None:
        raise DataError("no rows: the input is empty", file=pred_ds.path,
                        expected="at least one row of predictions")
    x = first.preds
    binary = x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1)
    p.binary = binary
    p.n_classes = 2 if binary else int(x.shape[1])
    if not binary and p.n_classes < 2:  # pragma: no cover - (N, 1) is binary
        raise DataError(f"predictions have shape {x.shape}", file=pred_ds.path,
                        expected="at least 2 classes, or one value per row (binary)")
    names = classes if classes is not None else pred_ds.class_names
    if names is not None and len(names) != p.n_classes:
        if classes is not None:
            raise InvalidOptionError(
                f"{len(classes)} class names given but the predictions have "
                f"{p.n_classes} classes" + (" (binary: the negative class first, then the "
                                            "positive one)" if binary else ""),
                argument="classes", value=len(classes), expected=f"{p.n_classes} names",
            )
        names = None
    p.class_names = list(names) if names is not None else None
    if input == "auto":
        x_f = np.asarray(x, dtype=np.float64) if x.dtype.kind in "iub" else x
        p.kind, p.reason = detect_input(x_f, sum_tol=options.get("sum_tol", 1e-2))
    else:
        p.kind, p.reason = input, "given"
    p.info = {
        "predictions": pred_ds.path,
        "format": pred_ds.format,
        "prediction_columns": pred_ds.pred_columns if pred_ds.pred_columns else
        getattr(pred_ds, "pred_key", None),
        "labels": label_ds.path,
        "label_column": label_ds.label_column,
        "dtype": str(x.dtype),
    }
    return p


# --------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr (tqdm when installed, else a one-line fallback); silent
    when stderr is not a terminal or when disabled."""

    def __init__(self, total: int | None, unit: str, desc: str, enabled: bool) -> None:
        self.unit = unit
        self.total = total
        self.n = 0
        self.enabled = enabled and _isatty(sys.stderr)
        self.bar: Any = None
        self._last = 0.0
        self.desc = desc
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, unit=unit, unit_scale=True, desc=desc,
                            file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if not self.enabled or n <= 0:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        import time

        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        if self.total:
            frac = min(1.0, self.n / self.total)
            width = 30
            full = int(frac * width)
            sys.stderr.write(f"\r{self.desc} [{'#' * full}{'.' * (width - full)}] "
                             f"{100 * frac:5.1f}%")
        else:
            sys.stderr.write(f"\r{self.desc} {self.n:,} {self.unit}")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_for(p: Plan, enabled: bool) -> Progress:
    pred_ds, _ = p.open() if enabled and _isatty(sys.stderr) else (None, None)
    if pred_ds is None:
        return Progress(None, "rows", "", False)
    total, unit = pred_ds.progress_total()
    return Progress(total, unit, "crossent eval", enabled)

