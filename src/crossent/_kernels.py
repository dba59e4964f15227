"""Dispatch to the compiled kernels (``crossent._ckernels``), and their configuration.

The kernels take rows laid out contiguously along the class axis, in float32, float64,
bfloat16 or float16. :func:`softmax_ce` decides whether a validated problem fits (a NumPy
array of a supported dtype whose compute dtype the kernel shares; a layout it can read,
copying only when the class axis is not contiguous) and otherwise returns None, so that
the caller uses the reference implementation: both give the same results to float rounding.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import Any

import numpy as np

from ._backend import _INT64, memo, zero_dim
from ._reference import divide_by_denominator


def _load_kernels() -> Any:
    """The kernels built for the best x86-64 level this processor runs (vectors as wide as
    its registers: setup.py builds ``_ckernels_v4`` for AVX-512 and ``_ckernels_v3`` for
    AVX2), else the baseline ``_ckernels``; None without a compiled extension (the
    reference path then runs). ``CROSSENT_KERNELS_ISA=base|v3|v4`` caps the choice."""
    import importlib

    try:
        base = importlib.import_module(f"{__package__}._ckernels")
    except ImportError:  # pragma: no cover - exercised by the no-extension CI job
        return None
    cap = os.environ.get("CROSSENT_KERNELS_ISA", "") or "v4"
    if cap not in ("v4", "v3", "base"):
        import warnings

        warnings.warn(f"CROSSENT_KERNELS_ISA={cap!r} is not one of 'v4', 'v3', 'base' (the "
                      "most capable kernel build to use); ignored: using the best build for "
                      "this processor", RuntimeWarning, stacklevel=2)
        cap = "v4"
    levels = {"x86-64-v4": ["v4", "v3"], "x86-64-v3": ["v3"]}.get(base.cpu(), [])
    allowed = {"v4": ["v4", "v3"], "v3": ["v3"]}.get(cap, [])
    for level in levels:
        if level in allowed:
            try:
                return importlib.import_module(f"{__package__}._ckernels_{level}")
            except ImportError:  # that module was not built (its compiler flags failed)
                continue
    return base


_ckernels = _load_kernels()

__all__ = [
    "available",
    "get_num_threads",
    "set_num_threads",
    "softmax_ce",
    "plain_softmax_ce",
    "plain_options",
    "nll_rows",
    "launch",
    "storage_code",
    "kernel_info",
]

_DT_CODES = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}
# A thread per this many elements at most (the kernels' item size, ITEM_MIN_ELEMENTS): a
# pool helper that is awake takes half of a 32k-element call (512 x 100 forward 69 -> 55
# us); one that sleeps joins too late and costs the caller only the wake-up call.
_MIN_ELEMENTS_PER_THREAD = 1 << 14
# With fewer rows than threads, the class axis is split over threads when each gets at
# least this many classes (three pool jobs per row, joined in between): one 128256-class
# row, forward 63 -> 49 us, loss + gradient 98 -> 76 us on 2 threads.
_WIDE_MIN_CLASSES = 1 << 15

_num_threads: int | None = None
_last_path = "none"
_last_wide = 0  # threads that shared each row's classes in the last launch (0: rows split)


def available() -> bool:
    """Whether the compiled kernels were built and can be used."""
    return _ckernels is not None and os.environ.get("CROSSENT_DISABLE_KERNELS", "") in ("", "0")


def set_num_threads(n: int | None) -> None:
    """Set the number of threads the compiled kernels use.

    The default is ``CROSSENT_NUM_THREADS`` if set; else, when PyTorch is imported,
    ``torch.get_num_threads()``, so that a PyTorch program is not oversubscribed; else the
    number of CPUs this process may run on. Small inputs use fewer threads (one per 16 K
    elements at most): the threads are a persistent pool whose helpers claim work as they
    come, but waking one still costs more than such a share of the work.

    Parameters
    ----------
    n : int >= 1, or None
        The thread count; ``None`` returns to the default.

    Examples
    --------
    >>> import crossent
    >>> crossent.set_num_threads(1)
    >>> crossent.get_num_threads()
    1
    >>> crossent.set_num_threads(None)
    """
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            from ._errors import InvalidOptionError

            raise InvalidOptionError(
                f"num_threads = {n!r} must be a positive integer (or None for the default)",
                argument="num_threads",
                value=n,
                expected="integer >= 1",
            )
    _num_threads = n


def get_num_threads() -> int:
    """The number of threads the compiled kernels use (see :func:`set_num_threads`).

    Examples
    --------
    >>> import crossent
    >>> crossent.get_num_threads() >= 1
    True
    """
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("CROSSENT_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return max(1, int(torch.get_num_threads()))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def kernel_info() -> dict[str, Any]:
    """What :func:`crossent.show_config` reports about the kernels."""
    return {
        "built": _ckernels is not None,
        "enabled": available(),
        "isa": _ckernels.isa() if _ckernels is not None else None,
        "float16": bool(_ckernels.HAVE_F16) if _ckernels is not None else False,
        "num_threads": get_num_threads(),
        "last_path": _last_path,
    }


def _note(path: str) -> None:
    global _last_path
    _last_path = path


def dtype_name(dtype: Any) -> str:
    """``dtype.name``, memoised (NumPy computes it in Python, ~1.5 us)."""
    return memo(("name", dtype), lambda: dtype.name)


def storage_code(dtype_name: str) -> int | None:
    """The kernels' code for a storage dtype name ('float32', 'bfloat16', ...), or None."""
    code = _DT_CODES.get(dtype_name)
    if code == 3 and not (_ckernels is not None and _ckernels.HAVE_F16):
        return None
    return code


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` as (rows, C) with unit stride along C: a view where possible, else a copy."""
    n_classes = a.shape[axis]
    last = axis in (-1, a.ndim - 1)  # (np.moveaxis costs more than a small kernel call)
    r = (a if last else np.moveaxis(a, axis, -1)).reshape(-1, n_classes)
    if r.strides[1] != r.itemsize or r.strides[0] < 0 or r.strides[0] % r.itemsize:
        r = np.ascontiguousarray(r)
    return r


# The planar layout (class axis in the middle of C-contiguous logits, PyTorch's
# (N, C, d...)) goes to the kernel as it is: a tile of 16 examples reads C columns of
# 64 bytes each, C streams a plane apart, with no transposed copy. Measured (2 threads,
# float32, ms, forward / loss + gradient, class-last copy -> in place): (8, 21, 256, 256)
# 22.3 / 35.9 -> 4.3 / 10.4; (4, 300, 8192) 37 / 59 -> 3.6 / 6.7; (2, 32000, 128)
# 18 / 35 -> 6.7 / 11; but (4, 4000, 2) 0.06 / 0.15 -> 0.17 / 0.22: with fewer than
# _PLANAR_MIN_INNER examples per plane a tile's lanes are mostly idle. The tiles' scratch
# is 2 * 64 bytes per class and thread, hence the bound on C.
_PLANAR_MIN_INNER = 4
_PLANAR_MAX_CLASSES = 1 << 16


def planar_inner(shape: tuple[int, ...], axis: int, c_contiguous: bool) -> int:
    """S, the elements after the class axis, for C-contiguous logits the kernel reads in
    place (the planar layout, see ``launch``); 0 when they go through a class-last copy."""
    axis = axis % len(shape)
    if axis == len(shape) - 1 or shape[axis] > _PLANAR_MAX_CLASSES or not c_contiguous:
        return 0
    inner = math.prod(shape[axis + 1:])  # (np.prod of a tuple: ~10 us)
    return inner if inner >= _PLANAR_MIN_INNER else 0


def _threads(elements: int) -> int:
    per_thread = min(_MIN_ELEMENTS_PER_THREAD, _WIDE_MIN_CLASSES)
    if elements < 2 * per_thread:  # one thread whatever the count (which costs a syscall)
        return 1
    return max(1, min(get_num_threads(), elements // per_thread))


def launch(
    code: int,
    x_ptr: int,
    n_rows: int,
    n_cols: int,
    row_stride: int,
    *,
    loss_ptr: int = 0,
    lse_ptr: int = 0,
    y_ptr: int = 0,
    q_ptr: int = 0,
    w_ptr: int = 0,
    w_sum: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    g_ptr: int = 0,
    g_stride: int = 1,
    grad_ptr: int = 0,
    grad_stride: int | None = None,
    lse_in_ptr: int = 0,
    n_threads: int | None = None,
    ignored_rows: bool = True,
    inner: int = 0,
) -> None:
    """Run the fused kernel on raw buffers (NumPy ``ctypes.data``, torch ``data_ptr()``).

    ``code``: storage dtype (see ``_DT_CODES``) of ``x`` and of the gradient. Rows of
    ``n_cols`` contiguous elements, ``row_stride`` elements apart. ``y``: int64 class
    indices, -1 for ignored rows; or ``q``: soft targets, contiguous rows in the compute
    dtype (float64 for float64 storage, else float32), as are ``w``, the per-row upstream
    gradient ``g`` (``g_stride=0``: one value for every row) and the outputs ``loss`` and
    ``lse``. With ``lse_in`` (the forward pass's
    lse) only the gradient is computed, in one read of ``x`` and one write of the gradient;
    ``loss`` and ``lse`` may then be 0 (not written).
    Rows are split over threads; with fewer rows than threads, each row's class axis is
    (when every thread gets ``_WIDE_MIN_CLASSES`` classes or more), with the same results.
    The caller validates everything; the kernel trusts its arguments except the labels,
    which it checks again: a label outside ``[-1, n_cols)`` (with ``ignored_rows=False``,
    outside ``[0, n_cols)``: no -1 allowed either) raises ``IndexError`` naming the least
    bad row, rather than reading outside the row.
    ``inner=S > 0``: the planar layout instead of rows, C-contiguous ``(N, C, S)`` logits
    and gradient with the class axis in the middle (``n_rows = N * S`` examples, example
    ``n * S + s``; ``row_stride``/``grad_stride`` unused); class-index targets only.
    """
    global _last_wide
    _last_wide = _ckernels.softmax_ce(
        code,
        x_ptr,
        n_rows,
        n_cols,
        row_stride,
        y_ptr,
        q_ptr,
        w_ptr,
        float(label_smoothing),
        float(z_loss),
        0.0 if softcap is None else float(softcap),
        float(n_cols) if w_sum is None else float(w_sum),
        loss_ptr,
        lse_ptr,
        g_ptr,
        grad_ptr,
        n_cols if grad_stride is None else grad_stride,
        _threads(n_rows * n_cols) if n_threads is None else n_threads,
        lse_in_ptr,
        _WIDE_MIN_CLASSES,
        g_stride,
        ignored_rows,
        inner,
    )


class _Operands:
    """A validated problem's arrays in the layout and dtypes the kernels take."""

    def __init__(self, p: Any, code: int, planar: bool = False) -> None:
        self.code = code
        self.dtype = np.float64 if code == 1 else np.float32
        x = p.input
        # inner > 0: the logits as they are, C-contiguous (N, C, S) (see launch's `inner`)
        self.inner = (planar_inner(x.shape, p.axis, x.flags.c_contiguous)
                      if planar and p.kind == "index" else 0)
        if self.inner:
            self.rows = x
            self.n_classes = x.shape[p.axis]
            self.n_rows = x.size // self.n_classes
        else:
            self.rows = _rows(x, p.axis)
            self.n_rows, self.n_classes = self.rows.shape
        self.y = self.q = self.w = None
        if p.kind == "index":
            y = np.where(p.ignored, -1, p.y) if p.ignored is not None else p.y
            self.y = np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
        else:
            q = _rows(np.asarray(p.target, dtype=self.dtype), p.axis)
            self.q = np.ascontiguousarray(q)  # contiguous rows of exactly C values
        if p.w is not None:
            self.w = np.ascontiguousarray(p.w, dtype=self.dtype)

    @staticmethod
    def of(p: Any, planar: bool = False) -> "_Operands | None":
        """The operands, or None (noting the reference path) when the kernels do not fit."""
        import array_api_compat

        x = p.input
        if available() and array_api_compat.is_numpy_array(x) and x.size:
            code = storage_code(dtype_name(x.dtype))
            if code is not None and np.dtype(p.dtype) == (np.float64 if code == 1 else np.float32):
                return _Operands(p, code, planar)
        _note("reference")
        return None

    @staticmethod
    def ptr(a: np.ndarray | None) -> int:
        return 0 if a is None else a.ctypes.data


_scratch = threading.local()


def _loss_buffer(n: int, dtype: Any, keep: bool) -> np.ndarray:
    """The per-row loss buffer: a fresh array when it is returned (``keep``), else this
    thread's reused scratch, so that a reduced loss does not pay the page faults of a
    fresh N-sized array on every call (~1 ms per million rows on this class of VM)."""
    if keep:
        return np.empty(n, dtype=dtype)
    bufs = _scratch.__dict__  # this thread's, keyed by the dtype
    buf = bufs.get(dtype)
    if buf is None or buf.size < n:
        buf = bufs[dtype] = np.empty(max(n, 1), dtype=dtype)
    return buf[:n]


def softmax_ce(
    p: Any,
    z_loss: float,
    softcap: float | None,
    with_grad: bool,
    grad_output: Any,
    out: Any = None,
    want_lse: bool = True,
):
    """Run the fused kernel on a validated problem; None if it does not fit.

    Returns ``(reduced loss, lse, dlogits or None)`` exactly like the reference path (lse
    None when not ``want_lse``: then it is not even stored).
    """
    ops = _Operands.of(p, planar=True)
    if ops is None:
        return None
    x, xp, kernel_dtype = p.input, p.xp, ops.dtype
    rows, n_rows, n_classes = ops.rows, ops.n_rows, ops.n_classes
    w_sum = float(n_classes) if ops.w is None else float(np.sum(ops.w, dtype=np.float64))
    loss = _loss_buffer(n_rows, kernel_dtype, keep=p.reduction == "none")
    lse = np.empty(n_rows, dtype=kernel_dtype) if want_lse else None
    g = grad = None
    g_stride = 1
    into_out = False
    if with_grad:
        # a reduced loss's upstream (1/N, or grad_output / denominator) is one value: the
        # kernel reads it with stride 0 rather than from an N-sized array built per call
        # (whose fresh pages cost more than the 1M x 10 gradient pass itself on this VM)
        g = np.asarray(p.upstream(grad_output, full=False), dtype=kernel_dtype)
        g_stride = 0 if g.size == 1 else 1
        g = g.reshape(1) if g.size == 1 else np.ascontiguousarray(
            np.broadcast_to(g, p.example_shape)).reshape(-1)
        grad = None
        if out is not None:
            # write straight into the caller's buffer when its rows can be addressed
            # (always for a C-contiguous out; out may be the logits themselves)
            view = out if p.axis == out.ndim - 1 or ops.inner else np.moveaxis(out, p.axis, -1)
            if view.flags.c_contiguous:
                grad = view if ops.inner else view.reshape(n_rows, n_classes)
                into_out = True
        if grad is None:
            grad = np.empty(x.shape if ops.inner else (n_rows, n_classes), dtype=x.dtype)
    launch(
        ops.code,
        rows.ctypes.data,
        n_rows,
        n_classes,
        rows.strides[0] // rows.itemsize,
        y_ptr=ops.ptr(ops.y),
        q_ptr=ops.ptr(ops.q),
        w_ptr=ops.ptr(ops.w),
        w_sum=w_sum,
        label_smoothing=p.label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        loss_ptr=loss.ctypes.data,
        lse_ptr=0 if lse is None else lse.ctypes.data,
        g_ptr=0 if g is None else g.ctypes.data,
        g_stride=g_stride,
        grad_ptr=0 if grad is None else grad.ctypes.data,
        inner=ops.inner,
    )
    _note(f"kernel ({dtype_name(x.dtype)})")
    shape = p.example_shape
    result = p.reduce(xp.reshape(loss, shape))
    dlogits = None
    if grad is not None and ops.inner:
        dlogits = grad  # (the planar layout: the logits' own shape)
    elif grad is not None:
        dlogits = grad.reshape(shape + (n_classes,))
        if p.axis != dlogits.ndim - 1:
            dlogits = np.moveaxis(dlogits, -1, p.axis)
        if out is not None:
            if not into_out:
                out[...] = dlogits  # out's rows were not addressable: copy once
            dlogits = out
    return result, None if lse is None else zero_dim(xp.reshape(lse, shape)), dlogits


_PLAIN_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
_plain_saw_outside = False  # the last plain call had labels outside [0, C) (ignored ones)
_PLAIN_PATHS = {0: "kernel (float32)", 1: "kernel (float64)"}


def plain_options(reduction: Any, label_smoothing: Any, z_loss: Any) -> float | None:
    """The label smoothing of a plain call (the fast paths of the NumPy and PyTorch APIs):
    reduction one of the three names, smoothing a Python number in [0, 1], no z-loss; None
    for anything else (the general path then checks it and names what is wrong)."""
    if type(reduction) is not str or reduction not in ("none", "mean", "sum"):
        return None
    if type(label_smoothing) not in (float, int) or not 0.0 <= label_smoothing <= 1.0:
        return None
    if type(z_loss) not in (float, int) or z_loss != 0:
        return None
    return float(label_smoothing)


def plain_softmax_ce(
    logits: Any,
    target: Any,
    axis: Any,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    reduction: Any,
    with_grad: bool,
    grad_output: Any,
    out: Any,
    want_lse: bool,
):
    """The common NumPy call, in a few Python steps: float32/float64 logits with the class
    axis last (or C-contiguous ones the kernel reads in place: the planar layout),
    class-index labels in ``[0, C)`` or equal to ``ignore_index``, float class
    weights or none, no z-loss, soft-capping or ``grad_output``. Returns what
    :func:`softmax_ce` returns for it, bit for bit, or None for anything else (the general
    path then validates, raises the precise error for bad input, and runs).

    The general path's validation and dispatch cost ~25 us a call (array-API namespace,
    option checks, a problem object): 64 x 10 took 33 us where PyTorch takes 11.
    """
    if type(logits) is not np.ndarray or type(target) is not np.ndarray:
        return None
    if softcap is not None or grad_output is not None:
        return None
    code = _PLAIN_CODES.get(logits.dtype)
    ndim = logits.ndim
    if code is None or ndim == 0 or type(axis) is not int or not -ndim <= axis < ndim:
        return None
    inner = 0  # the class axis not last: C-contiguous logits read in place (planar layout)
    if axis % ndim != ndim - 1:
        inner = planar_inner(logits.shape, axis, logits.flags.c_contiguous)
        if not inner:
            return None
    eps = plain_options(reduction, label_smoothing, z_loss)
    if eps is None:
        return None
    axis %= ndim
    shape = logits.shape[:axis] + logits.shape[axis + 1:]
    n_classes = logits.shape[axis]
    if target.shape != shape or target.dtype.kind not in "iu" or n_classes == 0:
        return None
    n_rows = logits.size // n_classes
    if n_rows == 0 or not available():
        return None
    if ignore_index is not None and type(ignore_index) is not int:
        return None
    dtype = np.float64 if code == 1 else np.float32
    w = None
    if weight is not None:  # float class weights, none negative (NaN passes, as there)
        if (type(weight) is not np.ndarray or weight.shape != (n_classes,)
                or weight.dtype.kind != "f" or (weight < 0).any()):
            return None
        w = np.ascontiguousarray(weight, dtype=dtype)
    global _plain_saw_outside
    y = target.reshape(-1)
    denom: Any = float(n_rows)  # what "mean" divides by, as _Problem.denominator
    ignored = None
    # Optimistic: int64 labels go to the kernel as they are, which refuses (IndexError)
    # any outside [0, C) - then the labels are scanned as below and the call runs again
    # (the next call scans first). Two reductions over the labels cost ~5 % at 1M x 10.
    # Not when out= may be the logits: the refused call has written part of the gradient
    # over them, and the second would read that.
    optimistic = (w is None and y.dtype == _INT64 and y.flags.c_contiguous
                  and not _plain_saw_outside
                  and (ignore_index is None or not 0 <= ignore_index < n_classes)
                  and (out is None or not np.may_share_memory(out, logits)))
    lo, hi = (0, 0) if optimistic else (int(np.minimum.reduce(y)), int(np.maximum.reduce(y)))
    if ignore_index is not None and lo <= ignore_index <= hi:
        # ignored examples (padding): the kernel takes -1 for them; the mean divides by the
        # count of the others, summed as the general path sums it (a float32 count is
        # exact below 2^24 examples only: larger calls take the general path)
        if n_rows >= 1 << 24:
            return None
        ignored = y == ignore_index
        kept = y[~ignored]
        if kept.size:
            lo, hi = int(np.minimum.reduce(kept)), int(np.maximum.reduce(kept))
        else:
            lo, hi = 0, 0
        if lo < 0 or hi >= n_classes:
            return None
        denom = np.sum(np.logical_not(ignored).astype(dtype))
    elif lo < 0 or hi >= n_classes:
        return None
    if w is not None:  # "mean" over the targets' weights, taken and summed as there
        w_y = np.take(w, y if ignored is None else np.where(ignored, 0, y)).reshape(shape)
        denom = np.sum(w_y if ignored is None else np.where(ignored.reshape(shape), 0.0, w_y))
    if ignored is not None:  # (int64 first: -1 in the labels' own dtype wraps for uint8)
        y = np.where(ignored, -1, y.astype(_INT64, copy=False))

    grad = None
    if with_grad and out is not None:
        if (type(out) is not np.ndarray or out.shape != logits.shape or out.dtype != logits.dtype
                or not out.flags.writeable or not out.flags.c_contiguous):
            return None
        grad = out if inner else out.reshape(n_rows, n_classes)
    if y.dtype != _INT64 or not y.flags.c_contiguous:
        y = np.ascontiguousarray(y, dtype=_INT64)
    rows = logits if inner else _rows(logits, -1)
    loss = _loss_buffer(n_rows, dtype, keep=reduction == "none")
    lse = np.empty(n_rows, dtype=dtype) if want_lse else None
    g = None
    if with_grad:
        # as _Problem.upstream(None, full=False): ones, over the denominator for "mean"
        g = np.ones((), dtype=dtype)
        if reduction == "mean":
            with np.errstate(all="ignore"):  # 1/0: every example ignored
                g = divide_by_denominator(np, g, denom)
        g = np.asarray(g, dtype=dtype).reshape(1)
        if grad is None:
            grad = np.empty(logits.shape if inner else (n_rows, n_classes), dtype=logits.dtype)
    global _last_wide, _last_path
    # launch()'s arguments, positionally, the arrays themselves (the kernel takes their
    # buffers: `.ctypes.data` cost ~1 us an array)
    try:
        _last_wide = _ckernels.softmax_ce(
            code, rows, n_rows, n_classes, rows.strides[0] // rows.itemsize, y, None, w,
            float(eps), 0.0, 0.0,
            float(n_classes) if w is None else float(np.sum(w, dtype=np.float64)),
            loss, lse, g, grad, n_classes,
            _threads(n_rows * n_classes), None, _WIDE_MIN_CLASSES, 0, not optimistic, inner,
        )
    except IndexError:
        if not optimistic:
            raise
        _plain_saw_outside = True  # (scanned below; out= and loss are overwritten)
        return plain_softmax_ce(logits, target, axis, weight, ignore_index, label_smoothing,
                                z_loss, softcap, reduction, with_grad, grad_output, out, want_lse)
    if not optimistic and ignored is None:
        _plain_saw_outside = False
    _last_path = _PLAIN_PATHS[code]
    if reduction == "none":
        result = zero_dim(loss.reshape(shape))
    else:  # as _Problem.reduce: np.sum (add.reduce) over the example shape
        with np.errstate(all="ignore"):
            total = np.add.reduce(loss.reshape(shape), axis=None)
            result = zero_dim(total if reduction == "sum" else divide_by_denominator(np, total, denom))
    dlogits = None
    if with_grad:
        dlogits = out if out is not None else grad.reshape(logits.shape)
    return result, None if lse is None else zero_dim(lse.reshape(shape)), dlogits


def nll_rows(p: Any, probs: bool, clip: float) -> Any:
    """cross_entropy / nll_loss over whole rows (probability targets or label smoothing).

    Returns the reduced loss, or None when the kernel does not fit (then, and when a value
    is out of range, the caller's reference path runs and raises the precise error).
    """
    ops = _Operands.of(p)
    if ops is None:
        return None
    rows = ops.rows
    loss = np.empty(ops.n_rows, dtype=ops.dtype)
    bad = _ckernels.nll_rows(
        ops.code,
        rows.ctypes.data,
        ops.n_rows,
        ops.n_classes,
        rows.strides[0] // rows.itemsize,
        int(probs),
        float(clip),
        ops.ptr(ops.y),
        ops.ptr(ops.q),
        ops.ptr(ops.w),
        p.label_smoothing,
        loss.ctypes.data,
        _threads(ops.n_rows * ops.n_classes),
    )
    if bad >= 0:
        return None
    _note(f"kernel ({dtype_name(p.input.dtype)})")
    return p.reduce(p.xp.reshape(loss, p.example_shape))
