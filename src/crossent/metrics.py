r"""Streaming evaluation of a classifier's predictions: cross-entropy and calibration.

:class:`Evaluator` takes predictions and labels batch by batch (:meth:`Evaluator.update`),
keeps only fixed-size running sums, combines with other evaluators
(:meth:`Evaluator.merge`: other processes, threads or Dask workers) and reports
(:meth:`Evaluator.result`):

- the mean cross-entropy :math:`\bar\ell = \sum_i \ell_i / \sum_i w_{y_i}` in nats, in
  bits (:math:`\bar\ell / \ln 2`) and as perplexity :math:`e^{\bar\ell}`, with the
  library's semantics for class weights, label smoothing and ``eps``
  (:func:`crossent.cross_entropy`, :func:`crossent.nll_loss`,
  :func:`crossent.softmax_cross_entropy`);
- accuracy (the arg-max class is the label) and top-*k* accuracy (fewer than *k* classes
  score strictly higher than the label);
- the Brier score :math:`\frac1N \sum_i \sum_c (p_{ic} - [c = y_i])^2`, or
  :math:`\frac1N \sum_i (p_i - y_i)^2` for binary predictions;
- the expected calibration error of the top-label confidence over ``n_bins`` equal-width
  bins, :math:`\mathrm{ECE} = \sum_b \frac{n_b}{N} |\mathrm{acc}_b - \mathrm{conf}_b|`
  (Guo et al., 2017), and the reliability diagram it comes from;
- the normalized cross-entropy :math:`\bar\ell / H(\pi)`, :math:`\pi` the (weighted) label
  distribution: the cross-entropy of the best constant prediction is :math:`H(\pi)`, so
  values below 1 mean the model beats the base rate (for binary tasks, He et al., 2014);
- per class: support, mean loss, accuracy (recall); the *k* worst examples; a histogram of
  the per-example losses.

Everything is accumulated in float64 with compensated (Neumaier) sums of per-block sums,
so that the figures do not depend on how the data were split into batches or on the order
of merges beyond about 1e-14 relative. Per-example values are computed in float64, except
the softmax of float32 logits (more than 32 classes, no weights or label smoothing), which
is computed in float32, the precision of the logits themselves (within 1e-7 nats per
example), and summed in float64.

Plain logits and probabilities (no weights or label smoothing) are scored from a few
per-row statistics (maximum, arg-max, the exp-sums, the rank of the label), computed in one
pass over each row by the optional C extension ``crossent._cmetrics``, or by NumPy with the
same float32 exponential, operation by operation, when it is not built: both give the same
figures to 1e-12 relative. Rows with NaN or infinite scores are scored on the general path,
row by row.

Examples
--------
>>> import numpy as np
>>> from crossent.metrics import Evaluator
>>> ev = Evaluator()
>>> ev.update(np.array([[0.1, 0.3, 0.6]]), np.array([0]))
>>> ev.update(np.array([[0.2, 0.3, 0.5]]), np.array([2]))
>>> r = ev.result()
>>> round(r.cross_entropy, 8), r.accuracy
(1.49786614, 0.5)
>>> r.input["kind"], r.input["assumed"]
('probs', True)
"""

from __future__ import annotations

import collections
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from ._binary import binary_cross_entropy, sigmoid_binary_cross_entropy
from ._categorical import cross_entropy, nll_loss, softmax_cross_entropy
from ._errors import CrossEntropyError, InvalidOptionError, ShapeMismatchError
from ._eval.errors import (
    DataError,
    DataFileError,
    LabelError,
    MissingDependencyError,
    PredictionError,
)
from ._validation import check_eps, check_ignore_index, check_unit_interval

__all__ = [
    "Evaluator",
    "EvaluationResult",
    "evaluate",
    "detect_input",
    "DataError",
    "LabelError",
    "PredictionError",
    "DataFileError",
    "MissingDependencyError",
    "INPUT_KINDS",
]

InputKind = Literal["probs", "logits", "log-probs"]
INPUT_KINDS = ("probs", "logits", "log-probs")
_INPUT_NAMES = {
    "probs": "probabilities",
    "logits": "logits",
    "log-probs": "log-probabilities",
}
# per-example loss histogram: [0, 1e-6), then 10 bins per decade up to 1e3, then [1e3, inf]
HIST_EDGES = np.concatenate([[0.0], np.logspace(-6.0, 3.0, 91), [np.inf]])


def _hist_bins(loss: np.ndarray) -> np.ndarray:
    """Histogram bin of each loss: ``floor(10 (log10(loss) + 6)) + 1`` clipped to the
    ``HIST_EDGES`` bins (a formula, not a search: 5x faster, and the same per value)."""
    with np.errstate(all="ignore"):
        b = np.floor(10.0 * (np.log10(loss) + 6.0)) + 1.0
    b = np.where(loss < 1e-6, 0.0, b)
    return np.clip(b, 0, len(HIST_EDGES) - 2).astype(np.intp)
_DETECT_ROWS = 4096
_BLOCK_ELEMENTS = 1 << 19  # float64 elements per NumPy compute block (stays in cache)
_SMALL_C = 32  # up to this many classes, blocks are scored classes-first
# elements per block on the per-row statistics path (the C kernel reads each row once and
# re-reads it from L1, so blocks need not fit in cache: bigger blocks, less Python per row)
_STATS_BLOCK_ELEMENTS = 1 << 22

try:  # the per-row statistics kernels (optional: NumPy computes the same figures)
    from . import _cmetrics
except ImportError:  # pragma: no cover - built without a C compiler
    _cmetrics = None


def _exp_f32(x: np.ndarray) -> np.ndarray:
    """``exp`` of float32 values <= 0, operation by operation as ``_cmetrics.c``'s
    ``exp_f32`` (so that the C and NumPy paths give the same bits): Cody-Waite reduction,
    ``1 + (r + r^2 Q(r))`` with Q of degree 4, the scale 2^n taken from the bits of ``t``;
    x is clamped at -104, where the result is already 0."""
    f = np.float32
    x = np.asarray(x, dtype=np.float32)
    lo = f(-104.0)
    magic = f(12583103.0)  # 1.5 * 2^23 + 191
    with np.errstate(all="ignore"):
        xc = np.where(x < lo, lo, x)
        t = xc * _EXP_F32_LOG2E + magic
        n = t - magic
        r = (xc - n * _EXP_F32_LN2[0]) - n * _EXP_F32_LN2[1]
        q = _EXP_F32_Q[0] * r + _EXP_F32_Q[1]
        for c in _EXP_F32_Q[2:]:
            q = q * r + c
        p = (r + (r * r) * q) + f(1.0)
        scale = (t.view(np.uint32) << np.uint32(23)).view(np.float32)
        return p * scale * f(2.0 ** -64)


def _f32(*hexes: str) -> tuple[np.float32, ...]:
    return tuple(np.float32(float.fromhex(h)) for h in hexes)


_EXP_F32_LOG2E = _f32("0x1.715476p+0")[0]
_EXP_F32_LN2 = _f32("0x1.62e4p-1", "0x1.7f7d1cp-20")  # ln2 = hi + lo, n * hi exact
_EXP_F32_Q = _f32("0x1.6a243ep-10", "0x1.1239d6p-7", "0x1.5558f2p-5", "0x1.555492p-3",
                  "0x1.fffffcp-2")


_MAX_KERNEL_COLUMNS = 2**31 - 65  # _cmetrics.c: MAX_COLUMNS


def _rows_ok(x: np.ndarray) -> bool:
    """Rows of contiguous float32/float64 elements (what the kernels read), 1 to 2^31 - 65
    of them (the kernels' column indices are int32 lanes)."""
    return (x.ndim == 2 and x.dtype in (np.float32, np.float64) and x.dtype.isnative
            and 1 <= x.shape[1] <= _MAX_KERNEL_COLUMNS
            and x.strides[1] == x.itemsize and x.strides[0] % x.itemsize == 0
            and x.strides[0] >= 0)


def _logit_stats(x: np.ndarray, y: np.ndarray, *, use_c: bool | None = None) -> tuple[np.ndarray, ...]:
    """Per-row ``(m, z_y, e_y, s1, s2, above, pred)`` of logits: the maximum, the label's
    logit, ``e_y = exp(z_y - m)``, ``s1``/``s2`` the sums of ``e_c = exp(z_c - m)`` and of
    ``e_c^2`` over every class but the (first) arg-max ``pred``, and ``above`` the number of
    classes scoring strictly higher than the label, and ``bad``: the rows whose maximum is
    not finite or whose sums are NaN (their other values are meaningless: the caller scores
    them on the general path). The exponentials are float32 for float32 logits
    (``_exp_f32``), float64 otherwise; the sums are float64.

    ``use_c``: the C kernel (default: when built); else NumPy, which gives the same
    figures to ~1e-15 relative.
    """
    n = y.shape[0]
    if use_c is None:
        use_c = _cmetrics is not None
    if use_c and _cmetrics is not None and _rows_ok(x):
        out = np.empty((6, n), dtype=np.float64)
        pred = np.empty(n, dtype=np.int64)
        y = np.ascontiguousarray(y, dtype=np.int64)
        n_bad = _cmetrics.logit_rows(
            0 if x.dtype == np.float32 else 1, x.ctypes.data, n, x.shape[1],
            x.strides[0] // x.itemsize, y.ctypes.data, *(out[i].ctypes.data for i in range(6)),
            pred.ctypes.data)
        m, zy, ey, s1, s2, above = out
        bad = None
        if n_bad:
            bad = ~(np.isfinite(m) & np.isfinite(s1) & np.isfinite(s2))
        return m, zy, ey, s1, s2, above, pred, bad
    r = np.arange(n)
    with np.errstate(all="ignore"):
        m = np.max(x, axis=1)
        bad = ~np.isfinite(m)
        if np.any(bad):
            m = np.where(bad, 0.0, m).astype(x.dtype)
        else:
            bad = None
        zy = x[r, y]
        above = np.count_nonzero(x > zy[:, None], axis=1).astype(np.float64)
        top = x == m[:, None]
        ties = np.count_nonzero(top, axis=1).astype(np.float64)
        if x.dtype == np.float32:
            e = _exp_f32(x - m[:, None]).astype(np.float64)
            ey = _exp_f32(zy - m).astype(np.float64)
        else:
            e = np.exp(x - m[:, None])
            ey = np.exp(zy - m)
        e[top] = 0.0
        s1 = np.sum(e, axis=1) + (ties - 1.0)
        s2 = np.einsum("ij,ij->i", e, e) + (ties - 1.0)
        nonfinite = ~(np.isfinite(s1) & np.isfinite(s2))
        if np.any(nonfinite):
            bad = nonfinite if bad is None else bad | nonfinite
        pred = np.argmax(x, axis=1).astype(np.int64)
    return (m.astype(np.float64), zy.astype(np.float64), ey, s1, s2, above, pred, bad)


def _prob_stats(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Per-row ``(m, lo, sum, p_y, sq, above, pred)`` of probabilities (max, min, row sum,
    the label's probability, ``sum_{c != y} p_c^2``, classes strictly above the label,
    first arg-max) and ``bad`` (rows holding NaN, None if none) from the C kernel; None
    without it or for other layouts (the NumPy path computes the same figures)."""
    if _cmetrics is None or not _rows_ok(x):
        return None
    n = y.shape[0]
    out = np.empty((6, n), dtype=np.float64)
    pred = np.empty(n, dtype=np.int64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    n_bad = _cmetrics.prob_rows(
        0 if x.dtype == np.float32 else 1, x.ctypes.data, n, x.shape[1],
        x.strides[0] // x.itemsize, y.ctypes.data, *(out[i].ctypes.data for i in range(6)),
        pred.ctypes.data)
    m, lo, sm, py, sq, above = out
    bad = (np.isnan(sm) | np.isnan(sq) | np.isnan(py)) if n_bad else None
    return m, lo, sm, py, sq, above, pred, bad


# --------------------------------------------------------------------------------------
# compensated float64 accumulation
# --------------------------------------------------------------------------------------


class _Sum:
    """A float64 array (or scalar) accumulated with Neumaier's compensated summation.

    ``value = s + c``; adding ``x`` is exact up to one rounding of the total, so the order in
    which block sums arrive does not matter beyond ~1 ulp of the result.
    """

    __slots__ = ("s", "c")

    def __init__(self, shape: int | tuple[int, ...] = ()) -> None:
        self.s = np.zeros(shape, dtype=np.float64)
        self.c = np.zeros(shape, dtype=np.float64)

    @staticmethod
    def _two_sum(s: Any, x: Any) -> tuple[Any, Any]:
        t = s + x
        err = np.where(np.abs(s) >= np.abs(x), (s - t) + x, (x - t) + s)
        return t, np.where(np.isfinite(t), err, 0.0)

    def add(self, x: Any, index: Any = None) -> None:
        with np.errstate(all="ignore"):
            if index is None:
                t, err = self._two_sum(self.s, x)
                self.s = np.asarray(t, dtype=np.float64)
                self.c = self.c + err
            else:
                t, err = self._two_sum(self.s[index], x)
                self.s[index] = t
                self.c[index] += err

    def merge(self, other: _Sum) -> None:
        with np.errstate(all="ignore"):
            t, err = self._two_sum(self.s, other.s)
            self.s = np.asarray(t, dtype=np.float64)
            self.c = self.c + other.c + err

    def value(self) -> Any:
        with np.errstate(all="ignore"):
            v = self.s + self.c
            return np.where(np.isfinite(self.s), v, self.s)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Any library's array (PyTorch, JAX, CuPy, lists ...) as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch (autograd, GPU, bfloat16)
        t = x.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):
            t = t.float()
        return t.numpy()
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    try:
        return np.asarray(x)
    except Exception:  # noqa: BLE001 - array-API objects without __array__
        try:
            return np.from_dlpack(x)
        except Exception as exc:  # noqa: BLE001
            raise CrossEntropyError(
                f"{name} of type {type(x).__name__} cannot be converted to a NumPy array",
                argument=name,
                value=type(x).__name__,
                expected="an array",
            ) from exc


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i[0]) for i in np.nonzero(mask))


def _logsumexp_rows(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        m = np.max(x, axis=1)
        m = np.where(np.isfinite(m), m, 0.0)
        return m + np.log(np.sum(np.exp(x - m[:, None]), axis=1))


def detect_input(predictions: Any, *, sum_tol: float = 1e-2) -> tuple[InputKind, str]:
    """Guess whether predictions are probabilities, logits or log-probabilities.

    Looks at the first rows only (finite values; NaN and infinities are skipped):

    - one value per example (binary): probabilities if every value is in [0, 1], else logits;
    - rows of class scores: probabilities if every value is in [0, 1] and each row sums to 1
      within ``sum_tol``; log-probabilities if every value is <= 0 and each row's
      log-sum-exp is 0 within ``sum_tol``; else logits.

    Parameters
    ----------
    predictions : array_like of shape (N,), (N, 1) or (N, C)
    sum_tol : float, default 0.01
        Tolerance on row sums of probabilities (and on the log-sum-exp of log-probabilities).

    Returns
    -------
    kind : {"probs", "logits", "log-probs"}
    reason : str
        Why, in words (for the report).

    Examples
    --------
    >>> import numpy as np
    >>> from crossent.metrics import detect_input
    >>> detect_input(np.array([[0.1, 0.9], [0.5, 0.5]]))
    ('probs', 'values in [0, 1], rows sum to 1')
    >>> detect_input(np.array([[2.0, -1.0], [0.3, 0.1]]))[0]
    'logits'
    """
    x = _to_numpy(predictions, "predictions")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    with np.errstate(all="ignore"):
        x = np.asarray(x[:_DETECT_ROWS], dtype=np.float64)
        if x.ndim == 1:
            f = x[np.isfinite(x)]
            if f.size and np.all((f >= 0.0) & (f <= 1.0)):
                return "probs", "binary, values in [0, 1]"
            return "logits", "binary, values outside [0, 1]"
        rows = x[np.all(np.isfinite(x) | (x == -np.inf), axis=1)]
        if rows.size == 0:
            return "logits", "no finite rows to look at"
        fin = rows[np.isfinite(rows)]
        if np.all((fin >= 0.0) & (fin <= 1.0)) and not np.any(np.isinf(rows)):
            s = rows.sum(axis=1)
            if np.all(np.abs(s - 1.0) <= sum_tol):
                return "probs", "values in [0, 1], rows sum to 1"
            return "logits", "values in [0, 1] but rows do not sum to 1"
        if np.all(fin <= 0.0):
            if np.all(np.abs(_logsumexp_rows(rows)) <= sum_tol):
                return "log-probs", "values <= 0, rows' log-sum-exp is 0"
        return "logits", "values outside [0, 1]"


# --------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """What :meth:`Evaluator.result` reports. ``str(result)`` is the human-readable table;
    :meth:`to_dict` the JSON-ready dictionary (``crossent eval --json``).

    Attributes
    ----------
    n : int
        Examples scored (rows minus ignored ones).
    n_rows, n_ignored, n_nan : int
        Rows seen, rows whose label is ``ignore_index``, scored rows whose loss is NaN.
    n_classes : int
        Number of classes (2 for binary predictions).
    binary : bool
        One probability or logit of the positive class per example.
    input : dict
        What the predictions were taken to be: ``kind`` ("probs", "logits", "log-probs"),
        ``assumed`` (detected rather than given), ``reason``, ``binary``, ``n_classes``.
    cross_entropy : float
        Mean loss in nats, :math:`\\sum_i \\ell_i / \\sum_i w_{y_i}` (the library's
        ``reduction="mean"`` over all examples).
    cross_entropy_bits, perplexity : float
        :math:`\\bar\\ell / \\ln 2` and :math:`e^{\\bar\\ell}`.
    accuracy, top_k_accuracy : float
        Share of examples whose arg-max class is the label / whose label is among the
        ``top_k`` highest scores (``top_k`` is capped at ``n_classes``).
    brier, ece : float
        Brier score and expected calibration error (``n_bins`` bins).
    normalized_cross_entropy, label_entropy : float
        :math:`\\bar\\ell / H(\\pi)` and :math:`H(\\pi)` (nats) of the label distribution.
    per_class : list of dict
        ``class``, ``name``, ``support``, ``mean_loss``, ``accuracy`` for every class.
    worst : list of dict
        The worst examples, highest loss first: ``row``, ``loss``, ``label``,
        ``predicted``, ``p_label`` (predicted probability of the label).
    reliability : list of dict
        Per confidence bin: ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy``.
    loss_histogram : dict
        ``edges`` (nats) and ``counts`` of the per-example losses.
    options : dict
        ``weight``, ``ignore_index``, ``label_smoothing``, ``eps``.
    """

    n: int
    n_rows: int
    n_ignored: int
    n_nan: int
    n_classes: int
    binary: bool
    input: dict[str, Any]
    cross_entropy: float
    cross_entropy_bits: float
    perplexity: float
    accuracy: float
    top_k: int
    top_k_accuracy: float
    brier: float
    ece: float
    n_bins: int
    normalized_cross_entropy: float
    label_entropy: float
    per_class: list[dict[str, Any]]
    worst: list[dict[str, Any]]
    reliability: list[dict[str, Any]]
    loss_histogram: dict[str, list[Any]]
    options: dict[str, Any]
    class_names: list[str] | None = None
    sources: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: infinities and NaN become the strings ``"inf"``,
        ``"-inf"``, ``"nan"`` (``float()`` reads them back), so the output is strict JSON."""
        d = {
            "n": self.n,
            "n_rows": self.n_rows,
            "n_ignored": self.n_ignored,
            "n_nan": self.n_nan,
            "n_classes": self.n_classes,
            "binary": self.binary,
            "input": self.input,
            "cross_entropy": self.cross_entropy,
            "cross_entropy_bits": self.cross_entropy_bits,
            "perplexity": self.perplexity,
            "accuracy": self.accuracy,
            "top_k": self.top_k,
            "top_k_accuracy": self.top_k_accuracy,
            "brier": self.brier,
            "ece": self.ece,
            "n_bins": self.n_bins,
            "normalized_cross_entropy": self.normalized_cross_entropy,
            "label_entropy": self.label_entropy,
            "per_class": self.per_class,
            "worst": self.worst,
            "reliability": self.reliability,
            "loss_histogram": self.loss_histogram,
            "options": self.options,
            "class_names": self.class_names,
        }
        if self.sources:
            d["sources"] = self.sources
        return _jsonable(d)

    def __str__(self) -> str:
        from ._eval.report import format_report

        return format_report(self)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.nan
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))


# --------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------


class _Block:
    """The sums of one scored block of rows (what :meth:`Evaluator._accumulate` adds)."""

    def __init__(self, n_ignored: int, y: np.ndarray, rows: np.ndarray) -> None:
        self.n_ignored = n_ignored
        self.n = 0
        self.y, self.rows = y, rows
        self.worst: tuple[Any, ...] | None = None

    def set(
        self, loss: np.ndarray, denom: np.ndarray | None, brier: np.ndarray, conf: np.ndarray,
        pred: np.ndarray, p_label: np.ndarray, correct: np.ndarray, topk: np.ndarray,
        *, worst_k: int, n_classes: int, n_bins: int,
    ) -> None:
        y, rows = self.y, self.rows
        n = y.shape[0]
        self.n = n
        nan = np.isnan(loss)
        self.n_nan = int(np.count_nonzero(nan))
        self.n_correct = int(np.count_nonzero(correct))
        self.n_topk = int(np.count_nonzero(topk))
        self.loss_sum = np.sum(loss)  # pairwise summation within the block
        self.denom_sum = float(n) if denom is None else np.sum(denom)
        self.brier_sum = np.sum(brier)
        # histogram of the losses (NaN left out)
        self.hist = np.bincount(_hist_bins(loss[~nan]), minlength=len(HIST_EDGES) - 1)
        # reliability bins of the top-label confidence (NaN left out)
        ok = ~np.isnan(conf)
        cb = np.clip((conf[ok] * n_bins).astype(np.int64), 0, n_bins - 1)
        self.bin_count = np.bincount(cb, minlength=n_bins)
        self.bin_correct = np.bincount(cb, weights=correct[ok], minlength=n_bins).astype(np.int64)
        self.bin_conf = np.bincount(cb, weights=conf[ok], minlength=n_bins)
        # per class; with few rows and many classes only the classes present
        self.classes: np.ndarray | None = None
        if n_classes > 4 * n:
            self.classes, idx = np.unique(y, return_inverse=True)
            m = len(self.classes)
        else:
            idx, m = y, n_classes
        self.support = np.bincount(idx, minlength=m)
        self.class_correct = np.bincount(idx, weights=correct, minlength=m).astype(np.int64)
        self.class_loss = np.bincount(idx, weights=loss, minlength=m)
        self.class_denom = None if denom is None else np.bincount(idx, weights=denom, minlength=m)
        # worst examples: the block's top k by loss (NaN first), ties to the lower row
        if worst_k:
            key = np.where(nan, np.inf, loss)
            if n > worst_k:
                part = np.argpartition(-key, worst_k - 1)[:worst_k]
                kth = key[part].min()
                sel = np.union1d(part[key[part] > kth], np.flatnonzero(key == kth)[:worst_k])
            else:
                sel = np.arange(n)
            self.worst = (rows[sel], loss[sel], y[sel], pred[sel], p_label[sel])
        del self.y, self.rows



class Evaluator:
    r"""Streaming cross-entropy, accuracy and calibration of a classifier's predictions.

    Feed it batches with :meth:`update` (inside a training loop, or from a file reader),
    combine partial evaluators with :meth:`merge`, read the figures with :meth:`result`.
    Memory is fixed: a few arrays of ``n_classes`` and ``n_bins`` entries and the ``worst``
    examples, whatever the number of rows.

    The loss of example *i* follows the library exactly: with class weights :math:`w`,
    label smoothing :math:`\varepsilon` and :math:`p = \mathrm{softmax}(z)` (or the
    given probabilities, clipped to ``[eps, 1 - eps]``),

    .. math::

        \ell_i = (1-\varepsilon)\, w_{y_i} (-\log p_{i y_i})
                 + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{ic}),
        \qquad \bar\ell = \frac{\sum_i \ell_i}{\sum_i w_{y_i}}

    which is ``crossent.softmax_cross_entropy(z, y, weight=w, label_smoothing=eps,
    reduction="mean")`` over all the rows (``cross_entropy`` for probabilities, ``nll_loss``
    for log-probabilities). Binary predictions (one probability or logit of class 1 per
    example) are scored as the two-class problem they are.

    Parameters
    ----------
    input : {"auto", "probs", "logits", "log-probs"}, default "auto"
        What the predictions are. ``"auto"`` decides from the first batch
        (:func:`detect_input`) and says so in ``result().input``; later batches that do not
        fit (e.g. values above 1 after probabilities were detected) raise an error.
        Probabilities and log-probabilities are checked row by row (values in range, rows
        summing to 1 within ``sum_tol``).
    n_classes : int, optional
        Number of classes; taken from the first batch when not given (2 for binary).
    weight : array_like of shape (C,), optional
        Per-class weights >= 0 (the loss's ``weight``); accuracy and calibration stay
        unweighted.
    ignore_index : int, optional
        Examples with this label are skipped (counted in ``n_ignored``).
    label_smoothing : float in [0, 1], default 0
    eps : float in [0, 0.5), default 0
        Clip probabilities to ``[eps, 1 - eps]`` in the loss (probability input only).
    top_k : int >= 1, default 5
        For the top-*k* accuracy (capped at the number of classes).
    n_bins : int >= 1, default 15
        Confidence bins of the calibration error and reliability diagram.
    worst : int >= 0, default 10
        How many of the worst examples to keep.
    sum_tol : float, default 0.01
        Tolerance on the row sums of probabilities.
    class_names : sequence of str, optional
        For the report only (labels given to :meth:`update` are class indices).

    Examples
    --------
    Scoring a model batch by batch, e.g. in a PyTorch evaluation loop (any array library
    works; values are copied to NumPy):

    >>> import numpy as np
    >>> from crossent.metrics import Evaluator
    >>> rng = np.random.default_rng(0)
    >>> logits, labels = rng.normal(size=(1000, 5)), rng.integers(0, 5, 1000)
    >>> ev = Evaluator(input="logits", top_k=2)
    >>> for start in range(0, 1000, 256):
    ...     ev.update(logits[start:start + 256], labels[start:start + 256])
    >>> r = ev.result()
    >>> import crossent
    >>> bool(np.isclose(r.cross_entropy,
    ...                 crossent.softmax_cross_entropy(logits, labels, reduction="mean")))
    True
    >>> r.n, r.top_k
    (1000, 2)

    Two halves scored separately (two processes, two Dask workers) and merged give the
    same figures:

    >>> a, b = Evaluator(input="logits"), Evaluator(input="logits")
    >>> a.update(logits[:400], labels[:400])
    >>> b.update(logits[400:], labels[400:], row_offset=400)
    >>> abs(a.merge(b).result().cross_entropy - r.cross_entropy) < 1e-12
    True
    """

    def __init__(
        self,
        *,
        input: str = "auto",
        n_classes: int | None = None,
        weight: Any = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        eps: float = 0.0,
        top_k: int = 5,
        n_bins: int = 15,
        worst: int = 10,
        sum_tol: float = 1e-2,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if input not in ("auto",) + INPUT_KINDS:
            raise InvalidOptionError(
                f"input = {input!r} is not one of 'auto', 'probs', 'logits', 'log-probs'",
                argument="input",
                value=input,
                expected="'auto', 'probs', 'logits' or 'log-probs'",
            )
        self.requested_input = input
        self.kind: str | None = None if input == "auto" else input
        self.kind_reason = "given" if input != "auto" else ""
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
        self.eps = check_eps(eps)
        self.ignore_index = check_ignore_index(ignore_index)
        for name, v, lo in (("top_k", top_k, 1), ("n_bins", n_bins, 1), ("worst", worst, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise InvalidOptionError(
                    f"{name} = {v!r} must be an integer >= {lo}",
                    argument=name,
                    value=v,
                    expected=f"integer >= {lo}",
                )
        self.top_k, self.n_bins, self.worst_k = int(top_k), int(n_bins), int(worst)
        if not (isinstance(sum_tol, (int, float)) and 0 < sum_tol < 1):
            raise InvalidOptionError(
                f"sum_tol = {sum_tol!r} must be a number in (0, 1)",
                argument="sum_tol",
                value=sum_tol,
                expected="0 < sum_tol < 1",
            )
        self.sum_tol = float(sum_tol)
        self.weight: np.ndarray | None = None
        if weight is not None:
            w = np.asarray(_to_numpy(weight, "weight"))
            if w.ndim != 1 or w.dtype.kind not in "fiu" or w.size == 0:
                raise InvalidOptionError(
                    f"weight must be a 1-D array of numbers, one per class; got shape "
                    f"{w.shape} and dtype {w.dtype}",
                    argument="weight",
                    value=w.shape,
                    expected="shape (C,)",
                )
            w = w.astype(np.float64)
            if np.any(~(w >= 0)) or not np.all(np.isfinite(w)):
                i = _first(~((w >= 0) & np.isfinite(w)))[0]
                raise InvalidOptionError(
                    f"weight[{i}] = {w[i]!r}: class weights must be finite and >= 0",
                    argument="weight",
                    value=float(w[i]),
                    index=(i,),
                    expected="finite value >= 0",
                )
            self.weight = w
        self.class_names = list(class_names) if class_names is not None else None
        self.n_classes: int | None = None
        self.binary: bool | None = None
        if n_classes is not None:
            if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
                raise InvalidOptionError(
                    f"n_classes = {n_classes!r} must be an integer >= 2",
                    argument="n_classes",
                    value=n_classes,
                    expected="integer >= 2",
                )
            self._set_classes(int(n_classes))
        self.n_rows = 0  # rows seen (ignored ones included)
        self._next_row = 0
        self.n_ignored = 0
        self.n = 0
        self.n_nan = 0
        self.n_correct = 0
        self.n_topk = 0
        self._loss = _Sum()
        self._denom = _Sum()
        self._brier = _Sum()
        self._hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
        self._bin_count = np.zeros(self.n_bins, dtype=np.int64)
        self._bin_correct = np.zeros(self.n_bins, dtype=np.int64)
        self._bin_conf = _Sum(self.n_bins)
        # worst examples: row, loss, label, predicted, p_label
        self._worst_row = np.zeros(0, dtype=np.int64)
        self._worst_loss = np.zeros(0, dtype=np.float64)
        self._worst_label = np.zeros(0, dtype=np.int64)
        self._worst_pred = np.zeros(0, dtype=np.int64)
        self._worst_p = np.zeros(0, dtype=np.float64)

    # ---------------------------------------------------------------- configuration

    def _set_classes(self, n_classes: int, binary: bool | None = None) -> None:
        if self.n_classes is not None:
            if n_classes != self.n_classes:
                raise ShapeMismatchError(
                    f"predictions have {n_classes} classes but earlier ones had "
                    f"{self.n_classes}",
                    argument="predictions",
                    value=n_classes,
                    expected=f"{self.n_classes} classes",
                )
            if binary is not None and self.binary is not None and binary != self.binary:
                raise ShapeMismatchError(
                    "predictions switched between one value per example (binary) and one "
                    "column per class",
                    argument="predictions",
                    value=binary,
                    expected="the same layout in every batch",
                )
            if binary is not None:
                self.binary = binary
            return
        if self.weight is not None and self.weight.shape[0] != n_classes:
            raise InvalidOptionError(
                f"weight has {self.weight.shape[0]} entries but the predictions have "
                f"{n_classes} classes",
                argument="weight",
                value=self.weight.shape[0],
                expected=f"{n_classes} weights, one per class",
            )
        if self.class_names is not None and len(self.class_names) != n_classes:
            raise InvalidOptionError(
                f"{len(self.class_names)} class names given but the predictions have "
                f"{n_classes} classes",
                argument="class_names",
                value=len(self.class_names),
                expected=f"{n_classes} names",
            )
        self.n_classes = n_classes
        self.binary = binary
        self._support = np.zeros(n_classes, dtype=np.int64)
        self._class_correct = np.zeros(n_classes, dtype=np.int64)
        self._class_loss = _Sum(n_classes)
        self._class_denom = _Sum(n_classes) if self.weight is not None else None

    def _config(self) -> tuple[Any, ...]:
        w = None if self.weight is None else tuple(self.weight.tolist())
        return (self.label_smoothing, self.eps, self.ignore_index, self.top_k, self.n_bins,
                self.worst_k, w)

    # ---------------------------------------------------------------- updates

    def update(self, predictions: Any, labels: Any, *, row_offset: int | None = None) -> None:
        """Add a batch.

        Parameters
        ----------
        predictions : array_like of shape (N, C), (N,) or (N, 1)
            Class scores per example (probabilities, logits or log-probabilities; see
            ``input``), or one value per example for a binary task (probability or logit
            of class 1). Higher-dimensional arrays ``(..., C)`` (tokens of a language
            model) are flattened to rows. Any array library; float16/bfloat16 are fine.
        labels : array_like of int, shape (N,) (or the predictions' shape without C)
            Class indices in ``[0, C)``, or ``ignore_index``.
        row_offset : int, optional
            Row number of the batch's first example (for the worst examples and error
            messages); defaults to the number of rows added so far.

        Raises
        ------
        LabelError
            For a label out of range or not an integer (``row`` tells which).
        PredictionError
            For predictions that are not numbers, or not probabilities (log-probabilities)
            where those were given or detected.
        crossent.ShapeMismatchError
            For mismatched lengths, or a class count that changes between batches.
        """
        start = self._next_row if row_offset is None else int(row_offset)
        prepared = self._prepare(predictions, labels, start)
        if prepared is None:
            return
        x, y, n_classes, binary = prepared
        # an update that fails changes nothing: snapshot the (small) state when a failure
        # could come after a change (the first update, or several blocks)
        several = x.shape[0] > self._block_rows(x, binary, n_classes)
        saved = copy.deepcopy(self.__dict__) if self.n_classes is None or several else None
        try:
            self._begin(x, n_classes, binary)
            self._run_blocks(x, y, start)
        except BaseException:
            if saved is not None:
                self.__dict__.clear()
                self.__dict__.update(saved)
            raise
        self._count(x.shape[0], start)

    def _prepare(self, predictions: Any, labels: Any,
                 start: int) -> tuple[np.ndarray, np.ndarray, int, bool] | None:
        """Checked NumPy arrays of a batch: ``(x, y, n_classes, binary)``; None for an empty
        batch (which only fixes the class count). Changes no other state."""
        x = _to_numpy(predictions, "predictions")
        y = _to_numpy(labels, "labels")
        if x.dtype.kind not in "f":
            if x.dtype.kind in "iub" and x.size:
                x = x.astype(np.float64)
            elif x.dtype.kind == "V" and x.dtype.itemsize == 2 and x.dtype.names is None:
                try:  # bfloat16 (ml_dtypes)
                    x = x.astype(np.float32)
                except (TypeError, ValueError):
                    raise PredictionError(
                        f"predictions have dtype {x.dtype}", expected="floating-point numbers",
                        value=str(x.dtype), argument="predictions") from None
            elif x.size == 0:
                x = x.astype(np.float64)
            else:
                raise PredictionError(
                    f"predictions have dtype {x.dtype}",
                    expected="floating-point numbers",
                    value=str(x.dtype),
                    argument="predictions",
                )
        binary = x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1 and
                                 self.binary is not False and self.n_classes in (None, 2))
        if x.ndim == 0:
            raise ShapeMismatchError(
                "predictions are a scalar; expected one row per example",
                argument="predictions", value=(), expected="shape (N, C) or (N,)",
            )
        if binary:
            x = x.reshape(-1)
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                y = y.reshape(-1) if y.size == x.shape[0] else y
        elif x.ndim > 2:
            if tuple(y.shape) != tuple(x.shape[:-1]):
                raise ShapeMismatchError(
                    f"labels have shape {tuple(y.shape)} but predictions have shape "
                    f"{tuple(x.shape)}",
                    argument="labels", value=tuple(y.shape), expected=str(tuple(x.shape[:-1])),
                )
            x = x.reshape(-1, x.shape[-1])
            y = y.reshape(-1)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ShapeMismatchError(
                f"{x.shape[0]} predictions but labels have shape {tuple(y.shape)}",
                argument="labels",
                value=tuple(y.shape),
                expected=f"({x.shape[0]},): one label per example",
            )
        n_classes = 2 if binary else int(x.shape[1])
        if not binary and n_classes < 2:
            raise ShapeMismatchError(
                f"predictions have shape {tuple(x.shape)}: {n_classes} class",
                argument="predictions", value=tuple(x.shape),
                expected="at least 2 columns, or one value per example (binary)",
            )
        if x.shape[0] == 0:
            self._set_classes(n_classes, binary)
            return None
        return x, self._labels_as_int(y, start), n_classes, binary

    def _begin(self, x: np.ndarray, n_classes: int, binary: bool) -> None:
        """Fix the class count and (from the first batch) the input kind."""
        self._set_classes(n_classes, binary)
        if self.kind is None:
            self.kind, self.kind_reason = detect_input(x, sum_tol=self.sum_tol)

    def _count(self, n: int, start: int) -> None:
        self.n_rows += n
        self._next_row = max(self._next_row, start + n)

    def _jobs(self, x: np.ndarray, y: np.ndarray, start: int) -> list[tuple[Any, Any, int]]:
        """The blocks of a batch, as ``_compute_block`` arguments."""
        block = self._block_rows(x, bool(self.binary), self.n_classes or 1)
        return [(x[b:b + block], y[b:b + block], start + b) for b in range(0, x.shape[0], block)]

    def _update_stream(self, batches: Iterable[tuple[Any, Any, int]]) -> None:
        """``update`` over a stream of ``(predictions, labels, row_offset)`` batches, the
        command line's loop: the blocks of the next batches are scored on the pool while
        this thread adds the results of the earlier ones, so that the threads do not wait
        for the Python work between batches (a tenth of the time on a 5 GiB file). Not
        transactional: after an error the evaluator holds part of the batches (the caller
        discards it)."""
        pool = _pool()
        pending: collections.deque[Any] = collections.deque()
        depth = 0 if pool is None else 2 * pool._max_workers  # noqa: SLF001
        try:
            for predictions, labels, start in batches:
                prepared = self._prepare(predictions, labels, start)
                if prepared is None:
                    continue
                x, y, n_classes, binary = prepared
                self._begin(x, n_classes, binary)
                for job in self._jobs(x, y, start):
                    if pool is None:
                        self._accumulate(self._compute_block(*job))
                        continue
                    pending.append(pool.submit(self._compute_block, *job))
                    while len(pending) > depth:
                        self._accumulate(pending.popleft().result())
                self._count(x.shape[0], start)
            while pending:
                self._accumulate(pending.popleft().result())
        finally:
            for fut in pending:
                fut.cancel()

    def _run_blocks(self, x: np.ndarray, y: np.ndarray, start: int) -> None:
        """Score ``x`` block by block (on up to ``get_num_threads()`` threads: NumPy and the
        kernels release the GIL) and accumulate the block results in order."""
        jobs = self._jobs(x, y, start)
        if len(jobs) == 1:
            self._accumulate(self._compute_block(*jobs[0]))
            return
        pool = _pool()
        if pool is None:
            for job in jobs:
                self._accumulate(self._compute_block(*job))
            return
        # at most 2 blocks per thread in flight: bounded memory, results in block order
        pending: list[Any] = []
        depth = 2 * pool._max_workers  # noqa: SLF001
        for job in jobs:
            pending.append(pool.submit(self._compute_block, *job))
            if len(pending) >= depth:
                self._accumulate(pending.pop(0).result())
        try:
            for fut in pending:
                self._accumulate(fut.result())
        finally:
            for fut in pending:
                fut.cancel()

    def _stats_path(self, x: np.ndarray) -> bool:
        """Whether multi-class blocks are scored from per-row statistics (plain logits or
        probabilities, no class weights or label smoothing)."""
        return (self.weight is None and self.label_smoothing == 0.0
                and self.kind in ("logits", "probs") and x.ndim == 2)

    def _block_rows(self, x: np.ndarray, binary: bool, n_classes: int) -> int:
        per_row = 1 if binary else max(1, n_classes)
        if not binary and _cmetrics is not None and self._stats_path(x) and _rows_ok(x):
            from ._kernels import get_num_threads

            # one block per thread at least; within [_BLOCK_ELEMENTS, _STATS_BLOCK_ELEMENTS]
            per_thread = -(-x.shape[0] * per_row // max(1, get_num_threads()))
            elements = min(_STATS_BLOCK_ELEMENTS, max(_BLOCK_ELEMENTS, per_thread))
            return max(1, elements // per_row)
        return max(1, _BLOCK_ELEMENTS // per_row)

    def _labels_as_int(self, y: np.ndarray, start: int) -> np.ndarray:
        if y.dtype.kind in "iu":
            return y.astype(np.int64, copy=False)
        if y.dtype.kind == "b":
            return y.astype(np.int64)
        if y.dtype.kind == "f":
            with np.errstate(all="ignore"):
                bad = ~(np.isfinite(y) & (y == np.round(y)))
            if np.any(bad):
                i = _first(bad)[0]
                raise LabelError(
                    f"label {y[i]!r} is not an integer class index",
                    row=start + i, value=float(y[i]), argument="labels",
                    expected="integer class indices",
                )
            return y.astype(np.int64)
        raise LabelError(
            f"labels have dtype {y.dtype}",
            argument="labels", value=str(y.dtype),
            expected="integer class indices (map class names to indices first)",
        )

    def _kind_hint(self) -> str | None:
        if self.requested_input == "auto":
            return (f"the predictions were taken to be {_INPUT_NAMES[self.kind or 'logits']} "
                    f"from the first rows ({self.kind_reason}); pass input='logits' "
                    "(--input logits) if they are scores")
        return None

    def _compute_block(self, x: np.ndarray, y: np.ndarray, start: int) -> _Block:
        """Score one block of rows (pure: reads the options only, safe on any thread)."""
        C = self.n_classes
        assert C is not None
        rows = start + np.arange(y.shape[0], dtype=np.int64)
        n_ign = 0
        # ignored examples leave; the rest must be in range
        if self.ignore_index is not None:
            keep = y != self.ignore_index
            n_ign = int(y.shape[0] - np.count_nonzero(keep))
            if n_ign:
                x, y, rows = x[keep], y[keep], rows[keep]
        blk = _Block(n_ign, y, rows)
        if y.shape[0] == 0:
            return blk
        bad = (y < 0) | (y >= C)
        if np.any(bad):
            i = _first(bad)[0]
            ign = "" if self.ignore_index is None else f" or {self.ignore_index} (ignored)"
            raise LabelError(
                f"label {int(y[i])} is out of range",
                row=int(rows[i]), value=int(y[i]), argument="labels",
                expected=f"a class index in [0, {C}){ign}",
            )
        with np.errstate(all="ignore"):
            if self.binary:
                out = self._binary_block(x, y, rows)
            else:
                out = self._multiclass_block(x, y, rows)
        blk.set(*out, worst_k=self.worst_k, n_classes=C, n_bins=self.n_bins)
        return blk

    def _check_probs(self, x: np.ndarray, rows: np.ndarray, log: bool, small: bool = False) -> None:
        """Range-check probabilities (log-probabilities); NaN passes (it propagates)."""
        hi = np.fmax.reduce(x, axis=None)  # two fast reductions; the mask only on failure
        lo = np.fmin.reduce(x, axis=None)
        if (hi <= 0.0) if log else (lo >= 0.0 and hi <= 1.0):
            return
        if np.isnan(hi):  # all NaN
            return
        if log:
            bad = x > 0.0
            what, expected = "log-probability", "log-probabilities <= 0"
        else:
            bad = (x < 0.0) | (x > 1.0)
            what, expected = "probability", "probabilities in [0, 1]"
        if np.any(bad):
            idx = _first(bad.T if small else bad)
            col = idx[1] if len(idx) > 1 else None
            v = float((x.T if small else x)[idx])
            raise PredictionError(
                f"{what} {v!r} is out of range",
                row=int(rows[idx[0]]), column=col, value=v, argument="predictions",
                expected=expected, hint=self._kind_hint(),
            )

    def _check_sums(self, s: np.ndarray, rows: np.ndarray, log: bool) -> None:
        bad = np.abs(s - 1.0) > self.sum_tol  # NaN rows pass: NaN propagates to the loss
        if np.any(bad):
            i = _first(bad)[0]
            what = "exp(log-probabilities) of the row sum to" if log else "probabilities of the row sum to"
            raise PredictionError(
                f"{what} {float(s[i]):.6g}",
                row=int(rows[i]), value=float(s[i]), argument="predictions",
                expected=f"rows summing to 1 (within {self.sum_tol:g})",
                hint=self._kind_hint(),
            )

    def _multiclass_block(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[Any, ...]:
        if self._stats_path(x):
            # float32 exponentials only for float32 logits with many classes (as the
            # library); few classes cost little and keep float64 everywhere
            if x.dtype not in (np.float32, np.float64) or x.shape[1] <= _SMALL_C:
                x = x.astype(np.float64)
            out = self._stats_block(x, y, rows)
            if out is not None:
                return out
        return self._general_block(x, y, rows)

    def _stats_block(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[Any, ...] | None:
        """Plain logits or probabilities from a few per-row statistics (one pass of the C
        kernel, or NumPy). Rows with NaN or infinite maxima are scored on the general path,
        row by row, so that no figure depends on how rows were grouped into blocks. None:
        no statistics for this input (probabilities without the kernel)."""
        C = int(x.shape[1])
        k = min(self.top_k, C)
        if self.kind == "logits":
            m, zy, ey, s1, s2, above, pred, bad = _logit_stats(x, y)
            big_s = 1.0 + s1
            loss = np.log1p(s1) + (m - zy)  # lse - z_y, lse = m + log1p(s1) as the library
            hit = pred == y
            p_label = ey / big_s
            conf = 1.0 / big_s
            # sum_c (p_c - [c = y])^2 without cancellation for confident, correct rows
            brier = np.where(
                hit,
                (s2 + s1 * s1) / (big_s * big_s),
                (1.0 + s2) / (big_s * big_s) + (1.0 - 2.0 * p_label),
            )
        else:
            st = _prob_stats(x, y)
            if st is None:
                return None
            m, lo, sm, p_label, sq, above, pred, bad = st
            if np.any(lo < 0.0) or np.any(m > 1.0):
                self._check_probs(x, rows, log=False)  # raises, naming the value
            self._check_sums(sm, rows, log=False)
            p = p_label if self.eps == 0.0 else np.clip(p_label, self.eps, 1.0 - self.eps)
            loss = -np.log(p)
            hit = pred == y
            conf = m
            d = p_label - 1.0
            brier = sq + d * d
        topk = above < k if k < C else np.ones(y.shape[0], dtype=bool)
        out = [loss, None, brier, conf, pred, p_label, hit, topk]
        if bad is not None:
            idx = np.flatnonzero(bad)
            gen = self._general_block(x[idx], y[idx], rows[idx])
            for j, v in enumerate(gen):
                if out[j] is not None:
                    out[j] = np.array(out[j], copy=True)
                    out[j][idx] = v
        return tuple(out)

    def _general_block(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[Any, ...]:
        kind = self.kind
        n = y.shape[0]
        C = int(x.shape[1])
        r = np.arange(n)
        small = C <= _SMALL_C
        if small:
            # few classes: a classes-first float64 copy, so that every per-row reduction
            # runs along contiguous memory (NumPy reduces short rows ~10x slower)
            xc = np.array(x.T, dtype=np.float64, order="C")
            ax, einsum = 0, "ij,ij->j"
            m = np.max(xc, axis=0)
            pred = _argmax_first(xc, m)
        else:
            xc = x if x.dtype == np.float32 or x.dtype == np.float64 else x.astype(np.float64)
            ax, einsum = 1, "ij,ij->i"
            pred = np.argmax(xc, axis=1)
            m = xc[r, pred]

        def at(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
            return a[idx, r] if small else a[r, idx]

        def put(a: np.ndarray, idx: np.ndarray, v: Any) -> None:
            if small:
                a[idx, r] = v
            else:
                a[r, idx] = v

        def col(v: np.ndarray) -> np.ndarray:  # a per-row value broadcast over classes
            return v[None, :] if small else v[:, None]

        # arg-max, gathers and comparisons in the input's dtype (exact; float32 input is
        # read at half the bandwidth), everything else in float64
        x_y = at(xc, y)
        k = min(self.top_k, C)
        # top-k: fewer than k classes score strictly higher than the label. Rows whose
        # arg-max is the label have none; only the others are compared (for a good model,
        # a small share of the rows)
        topk = np.ones(n, dtype=bool)
        if k < C:
            miss = np.flatnonzero(pred != y)
            if 2 * miss.size > n:  # mostly wrong: compare every row (no gather copy)
                topk = np.count_nonzero(xc > col(x_y), axis=ax) < k
            elif miss.size:
                sub = xc[:, miss] if small else xc[miss]
                above = sub > (x_y[miss][None, :] if small else x_y[miss][:, None])
                topk[miss] = np.count_nonzero(above, axis=ax) < k
        x_y = x_y.astype(np.float64)
        x_m = np.asarray(m, dtype=np.float64)
        denom = None if self.weight is None else self.weight[y]
        # our float64 copy (overwritten below); the library computes the loss on it
        x64 = xc if small else np.array(xc, dtype=np.float64, order="C")
        kw: dict[str, Any] = dict(axis=ax, weight=self.weight,
                                  label_smoothing=self.label_smoothing)
        if kind == "probs":
            self._check_probs(x64, rows, log=False, small=small)
            self._check_sums(np.sum(x64, axis=ax), rows, log=False)
            loss = cross_entropy(x64, y, eps=self.eps, **kw)
            p = x64
            p_label, conf = x_y.copy(), x_m.copy()
            p_y_minus_1 = x_y - 1.0
        elif kind == "log-probs":
            self._check_probs(x64, rows, log=True, small=small)
            loss = nll_loss(x64, y, **kw)
            p = np.exp(x64, out=x64)
            self._check_sums(np.sum(p, axis=ax), rows, log=True)
            p_label, conf = np.exp(x_y), np.exp(x_m)
            p_y_minus_1 = np.expm1(x_y)
        else:
            loss, lse = softmax_cross_entropy(x64, y, return_lse=True, **kw)
            lse = np.asarray(lse, dtype=np.float64)
            p = np.exp(np.subtract(x64, col(lse), out=x64), out=x64)
            p_label, conf = np.exp(x_y - lse), np.exp(x_m - lse)
            p_y_minus_1 = np.expm1(x_y - lse)
        # p_y - 1 computed directly so that confident, correct rows keep their tiny
        # Brier score exact
        put(p, y, p_y_minus_1)
        brier = np.einsum(einsum, p, p)
        loss = np.asarray(loss, dtype=np.float64)
        nan_row = np.isnan(loss) | np.isnan(conf)
        correct = (pred == y) & ~nan_row
        topk &= ~nan_row
        return loss, denom, brier, conf, pred, p_label, correct, topk

    def _binary_block(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[Any, ...]:
        kind = self.kind
        x64 = np.asarray(x, dtype=np.float64)
        ones, zeros = np.ones_like(x64), np.zeros_like(x64)
        if kind == "probs":
            self._check_probs(x64, rows, log=False)
            l1 = np.asarray(binary_cross_entropy(x64, ones, eps=self.eps))  # -log p
            l0 = np.asarray(binary_cross_entropy(x64, zeros, eps=self.eps))  # -log(1 - p)
            p1, p0 = x64, 1.0 - x64
        elif kind == "log-probs":
            self._check_probs(x64, rows, log=True)
            l1 = -x64
            l0 = -np.log(-np.expm1(x64))
            p1, p0 = np.exp(x64), -np.expm1(x64)
        else:
            l1 = np.asarray(sigmoid_binary_cross_entropy(x64, ones))  # softplus(-x)
            l0 = np.asarray(sigmoid_binary_cross_entropy(x64, zeros))  # softplus(x)
            p1, p0 = np.exp(-l1), np.exp(-l0)
        w = self.weight
        eps = self.label_smoothing
        l_y = np.where(y == 1, l1, l0)
        loss = l_y if w is None else _mul0(w[y], l_y)
        if eps > 0.0:
            w0, w1 = (1.0, 1.0) if w is None else (w[0], w[1])
            loss = (1.0 - eps) * loss + (eps / 2.0) * (_mul0(w0, l0) + _mul0(w1, l1))
        denom = None if w is None else w[y]
        pred = (p1 > p0).astype(np.int64)
        p_label = np.where(y == 1, p1, p0)
        conf = np.maximum(p1, p0)
        nan_row = np.isnan(loss) | np.isnan(conf)
        correct = (pred == y) & ~nan_row
        topk = correct if self.top_k < 2 else ~nan_row
        miss = np.where(y == 1, p0, p1)  # |p_1 - y|
        brier = miss * miss
        return loss, denom, brier, conf, pred, p_label, correct, topk

    def _accumulate(self, b: _Block) -> None:
        """Add one scored block's sums (on the calling thread, in block order)."""
        self.n_ignored += b.n_ignored
        if not b.n:
            return
        C = self.n_classes
        assert C is not None
        self.n += b.n
        self.n_nan += b.n_nan
        self.n_correct += b.n_correct
        self.n_topk += b.n_topk
        self._loss.add(b.loss_sum)
        self._denom.add(b.denom_sum)
        self._brier.add(b.brier_sum)
        self._hist += b.hist
        self._bin_count += b.bin_count
        self._bin_correct += b.bin_correct
        self._bin_conf.add(b.bin_conf)
        if b.classes is None:
            self._support += b.support
            self._class_correct += b.class_correct
            self._class_loss.add(b.class_loss)
            if self._class_denom is not None:
                self._class_denom.add(b.class_denom)
        else:
            u = b.classes
            self._support[u] += b.support
            self._class_correct[u] += b.class_correct
            self._class_loss.add(b.class_loss, u)
            if self._class_denom is not None:
                self._class_denom.add(b.class_denom, u)
        if self.worst_k and b.worst is not None:
            self._add_worst(*b.worst)

    def _add_worst(self, row: Any, loss: Any, label: Any, pred: Any, p: Any) -> None:
        rows = np.concatenate([self._worst_row, row])
        losses = np.concatenate([self._worst_loss, loss])
        labels = np.concatenate([self._worst_label, label])
        preds = np.concatenate([self._worst_pred, pred])
        ps = np.concatenate([self._worst_p, p])
        key = np.where(np.isnan(losses), np.inf, losses)
        order = np.lexsort((rows, -key))[: self.worst_k]
        self._worst_row, self._worst_loss = rows[order], losses[order]
        self._worst_label, self._worst_pred, self._worst_p = labels[order], preds[order], ps[order]

    # ---------------------------------------------------------------- merging

    def merge(self, other: Evaluator) -> Evaluator:
        """Add another evaluator's examples to this one (in place) and return ``self``.

        Both must have the same options and class count (an evaluator that has seen no
        rows adopts the other's). The figures do not depend on the order of merges
        beyond about 1e-14 relative; the worst examples are ranked by loss, ties by row.

        Raises
        ------
        crossent.InvalidOptionError
            If the options, class counts or input kinds differ.
        """
        if not isinstance(other, Evaluator):
            raise InvalidOptionError(
                f"can only merge another Evaluator, not {type(other).__name__}",
                argument="other", value=type(other).__name__, expected="an Evaluator",
            )
        if self._config() != other._config():
            raise InvalidOptionError(
                "cannot merge evaluators with different options "
                f"(label_smoothing, eps, ignore_index, top_k, n_bins, worst, weight): "
                f"{self._config()} vs {other._config()}",
                argument="other", value=other._config(), expected=str(self._config()),
            )
        if other.n_classes is not None:
            if self.n_classes is None:
                self._set_classes(other.n_classes, other.binary)
            else:
                self._set_classes(other.n_classes, other.binary)
        if other.kind is not None and other.n_rows:
            if self.kind is None or not self.n_rows:
                self.kind, self.kind_reason = other.kind, other.kind_reason
            elif self.kind != other.kind:
                raise InvalidOptionError(
                    f"cannot merge evaluators of {_INPUT_NAMES[self.kind]} and of "
                    f"{_INPUT_NAMES[other.kind]}: pass the same input= to both",
                    argument="other", value=other.kind, expected=self.kind,
                )
        if self.class_names is None and other.class_names is not None:
            self.class_names = list(other.class_names)
        for name in ("n_rows", "n_ignored", "n", "n_nan", "n_correct", "n_topk"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self._next_row = max(self._next_row, other._next_row)
        self._loss.merge(other._loss)
        self._denom.merge(other._denom)
        self._brier.merge(other._brier)
        self._hist += other._hist
        self._bin_count += other._bin_count
        self._bin_correct += other._bin_correct
        self._bin_conf.merge(other._bin_conf)
        if other.n_classes is not None:
            self._support += other._support
            self._class_correct += other._class_correct
            self._class_loss.merge(other._class_loss)
            if self._class_denom is not None and other._class_denom is not None:
                self._class_denom.merge(other._class_denom)
        if self.worst_k:
            self._add_worst(other._worst_row, other._worst_loss, other._worst_label,
                            other._worst_pred, other._worst_p)
        return self

    def reset(self) -> None:
        """Forget all examples (keep the options); e.g. at the start of each epoch."""
        self.__init__(  # type: ignore[misc]
            input=self.requested_input, n_classes=self.n_classes if self.n_rows == 0 else None,
            weight=self.weight, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, eps=self.eps, top_k=self.top_k,
            n_bins=self.n_bins, worst=self.worst_k, sum_tol=self.sum_tol,
            class_names=self.class_names,
        )

    # ---------------------------------------------------------------- the figures

    def result(self) -> EvaluationResult:
        """The figures over every example added so far.

        Raises
        ------
        DataError
            If no rows were added (empty input).
        """
        if self.n_rows == 0 or self.n_classes is None:
            raise DataError("no predictions: the input is empty",
                            expected="at least one row", argument="predictions")
        C = self.n_classes
        n = self.n
        loss_sum = float(self._loss.value())
        denom = float(self._denom.value())
        ce = _ratio(loss_sum, denom)
        with np.errstate(all="ignore"):
            bits = ce / math.log(2.0) if not math.isnan(ce) else math.nan
            ppl = float(np.exp(np.float64(ce)))
        # label distribution (weighted like the loss's denominator) and its entropy
        if self._class_denom is not None:
            wc = self._class_denom.value()
        else:
            wc = self._support.astype(np.float64)
        tot = wc.sum()
        if tot > 0:
            pi = wc / tot
            nz = pi[pi > 0]
            h = float(-np.sum(nz * np.log(nz)))
        else:
            h = math.nan
        nce = _ratio(ce, h) if h == h and h > 0 else math.nan
        bin_count = self._bin_count
        conf_sum = self._bin_conf.value()
        scored = int(bin_count.sum())
        ece = 0.0
        reliability = []
        for b in range(self.n_bins):
            c = int(bin_count[b])
            conf_b = _ratio(float(conf_sum[b]), c) if c else math.nan
            acc_b = _ratio(int(self._bin_correct[b]), c) if c else math.nan
            if c:
                ece += c / scored * abs(acc_b - conf_b)
            reliability.append({"lower": b / self.n_bins, "upper": (b + 1) / self.n_bins,
                                "count": c, "confidence": conf_b, "accuracy": acc_b})
        if not scored:
            ece = math.nan
        class_loss = self._class_loss.value()
        class_denom = (self._class_denom.value() if self._class_denom is not None
                       else self._support.astype(np.float64))
        per_class = []
        for c in range(C):
            s = int(self._support[c])
            per_class.append({
                "class": c,
                "name": self.class_names[c] if self.class_names else str(c),
                "support": s,
                "mean_loss": _ratio(float(class_loss[c]), float(class_denom[c])) if s else math.nan,
                "accuracy": _ratio(int(self._class_correct[c]), s) if s else math.nan,
            })
        worst: list[dict[str, Any]] = [
            {"row": int(r), "loss": float(lo), "label": int(la), "predicted": int(pr),
             "p_label": float(p)}
            for r, lo, la, pr, p in zip(self._worst_row, self._worst_loss, self._worst_label,
                                        self._worst_pred, self._worst_p)
        ]
        if self.class_names:
            names = self.class_names
            for w in worst:
                w["label_name"] = names[int(w["label"])]
                w["predicted_name"] = names[int(w["predicted"])]
        kind = self.kind or "logits"
        return EvaluationResult(
            n=n,
            n_rows=self.n_rows,
            n_ignored=self.n_ignored,
            n_nan=self.n_nan,
            n_classes=C,
            binary=bool(self.binary),
            input={
                "kind": kind,
                "name": _INPUT_NAMES[kind],
                "assumed": self.requested_input == "auto",
                "reason": self.kind_reason,
                "binary": bool(self.binary),
                "n_classes": C,
            },
            cross_entropy=ce,
            cross_entropy_bits=bits,
            perplexity=ppl,
            accuracy=_ratio(self.n_correct, n) if n else math.nan,
            top_k=min(self.top_k, C),
            top_k_accuracy=_ratio(self.n_topk, n) if n else math.nan,
            brier=_ratio(float(self._brier.value()), n) if n else math.nan,
            ece=ece,
            n_bins=self.n_bins,
            normalized_cross_entropy=nce,
            label_entropy=h,
            per_class=per_class,
            worst=worst,
            reliability=reliability,
            loss_histogram={"edges": HIST_EDGES.tolist(), "counts": self._hist.tolist()},
            options={
                "weight": None if self.weight is None else self.weight.tolist(),
                "ignore_index": self.ignore_index,
                "label_smoothing": self.label_smoothing,
                "eps": self.eps,
                "sum_tol": self.sum_tol,
            },
            class_names=self.class_names,
        )


_POOL: Any = None
_POOL_SIZE = 0


def _pool() -> Any:
    """A shared thread pool of ``crossent.get_num_threads()`` threads (None for one)."""
    global _POOL, _POOL_SIZE
    from ._kernels import get_num_threads

    n = get_num_threads()
    if n <= 1:
        return None
    if _POOL is None or _POOL_SIZE != n:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="crossent-eval")
        _POOL_SIZE = n
    return _POOL


def _argmax_first(xc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``argmax`` along axis 0 of a classes-first block (first maximum; rows whose maximum
    is NaN get class 0: their loss is NaN and they count as wrong)."""
    pred = np.zeros(xc.shape[1], dtype=np.intp)
    for c in range(xc.shape[0] - 1, 0, -1):
        np.copyto(pred, c, where=xc[c] == m)
    return pred


def _mul0(w: Any, l: Any) -> Any:
    """``w * l`` with ``0 * inf = 0`` (a zero weight cancels an infinite loss)."""
    with np.errstate(all="ignore"):
        return np.where(np.asarray(w) == 0.0, 0.0, np.asarray(w) * l)


def evaluate(
    predictions: Any,
    labels: Any,
    **options: Any,
) -> EvaluationResult:
    """Evaluate predictions in one call: ``Evaluator(**options)``, one update, the result.

    Parameters
    ----------
    predictions, labels : array_like
        As for :meth:`Evaluator.update`.
    **options
        Keyword arguments of :class:`Evaluator`.

    Returns
    -------
    EvaluationResult

    Examples
    --------
    >>> import numpy as np
    >>> from crossent.metrics import evaluate
    >>> r = evaluate(np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]]), np.array([0, 2]))
    >>> round(r.cross_entropy, 8), round(r.cross_entropy_bits, 8), round(r.perplexity, 6)
    (1.49786614, 2.16096405, 4.472136)
    >>> [w["row"] for w in r.worst]
    [0, 1]
    """
    ev = Evaluator(**options)
    ev.update(predictions, labels)
    return ev.result()
