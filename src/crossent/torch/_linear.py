"""Fused linear + cross-entropy for large vocabularies, without materialising the logits.

``linear_cross_entropy(h, W, y)`` equals ``cross_entropy(h @ W.T + b, y)`` but never holds
the ``(N, V)`` logits: rows are processed in chunks (and, for huge vocabularies, the
vocabulary in tiles), and for each chunk the loss *and* the gradients of ``h``, ``W`` and
``b`` are computed at once (Liger-style), so the backward pass only scales them by the
upstream gradient. Peak extra memory is one ``(rows, V)`` logits chunk plus one float32
work block, O(N·H + V·H + chunk·V) in all.

The math on one block of logits (rows x a slice of the classes) is shared with the
vocab-parallel functions (:mod:`crossent.torch._parallel`): a block yields per-row
*statistics* (its maximum, the sum of the other exponentials, the target logit, the
label-smoothing sums) that merge exactly across vocabulary tiles or across ranks, and the
gradient of a block needs only the merged statistics.

Numerics follow crossent's conventions (:mod:`crossent._reference`): every log-sum-exp is
``m + log1p(sum_{k != argmax} exp(z_k - m))`` (merged across blocks without cancellation;
within one block holding all classes, ``-log p_y = log1p(sum_{k != y} p_k / p_y)``, as
precise), smoothing sums add non-negative terms only, the target entry of the gradient
uses ``expm1``, and everything is accumulated in float32 (float64 for float64 inputs)
whatever the input precision.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, cast

import torch
from torch import Tensor

from .._errors import (
    CrossEntropyTypeError,
    InvalidDTypeError,
    InvalidOptionError,
    ProbabilityRangeError,
    ShapeMismatchError,
)
from .._validation import (
    check_ignore_index,
    check_nonnegative,
    check_reduction,
    check_softcap,
    check_unit_interval,
    class_index_error,
    negative_error,
)

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]

# Memory plan: one (rows, V) logits chunk in the weight's dtype, of at most N/_MIN_CHUNKS
# rows (but at least _MIN_ROWS) and at most _LOGITS_BUDGET bytes (big matmuls). The
# elementwise passes run on cache-sized blocks of its rows, of at most _WORK_BUDGET bytes
# in float32 (in place, or a float32 copy for half precision; softcap keeps a second).
_LOGITS_BUDGET = 256 << 20
_WORK_BUDGET = 4 << 20
_MIN_ROWS = 16
_MIN_CHUNKS = 8
# The gradient of a half-precision weight: each row chunk's product is summed in float32
# inside the matmul; the chunks' products are then added up in a float32 buffer when that
# buffer (plus one product) takes at most _FP32_DW_BUDGET bytes, else in the weight's
# dtype (one rounding per row chunk, at most _MIN_CHUNKS of them unless N is large: the
# memory of an LLM head's float32 gradient would dwarf everything else here).
_FP32_DW_BUDGET = 16 << 20

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The chunk loops (data-dependent control flow, in-place ops on views of reused buffers)
# run eagerly under torch.compile: one graph break per call, and a backward started inside
# a compiled function is not traced either.
_disable_compile: Any = getattr(getattr(torch, "compiler", None), "disable", None)
if _disable_compile is None:  # pragma: no cover - torch < 2.1
    import torch._dynamo

    _disable_compile = torch._dynamo.disable


# --------------------------------------------------------------------------------------
# Configuration and targets
# --------------------------------------------------------------------------------------


@dataclass
class _Config:
    """The options of one call, validated; ``n_classes`` is the global class count."""

    n_classes: int
    kind: str  # "index" or "soft"
    eps: float
    z_loss: float
    cap: Optional[float]
    reduction: str
    cdt: torch.dtype  # compute dtype: float32, or float64 for float64 inputs
    class_weight: Optional[Tensor] = None  # (n_classes,) in cdt
    w_sum: float = 0.0  # sum of class weights (n_classes without weights)

    def weight_slice(self, start: int, size: int) -> Optional[Tensor]:
        if self.class_weight is None:
            return None
        return self.class_weight[start : start + size]

    def block_weight_sum(self, start: int, size: int) -> Any:
        w = self.weight_slice(start, size)
        return float(size) if w is None else w.sum()


@dataclass
class _Targets:
    """Per-example target data, flattened to N rows.

    Index targets: ``y`` holds the class (-1 where ignored, so it falls in no block),
    ``wy`` the weight of the target class (0 where ignored; None without class weights),
    ``valid`` the non-ignored mask. Soft targets: ``q`` is the (N, V_local) probability
    block of this process (user dtype).
    """

    kind: str
    y: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    wy: Optional[Tensor] = None
    q: Optional[Tensor] = None

    def rows(self, r0: int, r1: int) -> "_Targets":
        s = slice(r0, r1)
        return _Targets(
            kind=self.kind,
            y=None if self.y is None else self.y[s],
            valid=None if self.valid is None else self.valid[s],
            wy=None if self.wy is None else self.wy[s],
            q=None if self.q is None else self.q[s],
        )


def _ones_wy(t: _Targets, cdt: torch.dtype) -> Tensor:
    """Weight of each example's target class (1, or 0 where ignored)."""
    if t.wy is not None:
        return t.wy
    assert t.valid is not None
    return t.valid.to(cdt)


def _denominator(t: _Targets, cfg: _Config, n: int) -> Tensor:
    """What ``"mean"`` divides by: sum of target weights of non-ignored examples."""
    if t.kind == "soft":
        return torch.tensor(float(n), dtype=cfg.cdt)
    assert t.valid is not None
    if t.wy is not None:
        return t.wy.sum()
    return t.valid.sum().to(cfg.cdt)


def _upstream(t: _Targets, cfg: _Config, n: int, grad_output: Optional[Tensor], device: Any) -> Tensor:
    """Per-example weight ``g_i`` of the gradient (grad_output, the mean's 1/denominator,
    0 for ignored examples)."""
    cdt = cfg.cdt
    if grad_output is None:
        g = torch.ones(n, dtype=cdt, device=device)
    elif grad_output.dim() == 0 or cfg.reduction != "none":
        g = grad_output.reshape(()).to(cdt).expand(n).clone()
    else:
        g = grad_output.reshape(n).to(cdt).clone()
    if cfg.reduction == "mean":
        den = _denominator(t, cfg, n).to(device)
        g = g / den
    if t.kind == "index":
        assert t.valid is not None
        g = torch.where(t.valid, g, torch.zeros((), dtype=cdt, device=device))
    return g


# --------------------------------------------------------------------------------------
# Block statistics: what one block of logits contributes, and how blocks merge
# --------------------------------------------------------------------------------------


@dataclass
class _Stats:
    """Per-row statistics of the logits of one block (rows x a slice of classes), or of the
    merged blocks. All tensors have shape (rows,) in the compute dtype.

    ``m``: maximum logit; ``rest``: sum of ``exp(z - m)`` over all classes but one argmax
    (so the block's sum of exponentials is ``1 + rest``); ``zy``: the target logit when the
    target lies in the block, else 0; ``smooth``: ``sum_c w_c (m - z_c)`` (label smoothing,
    >= 0); ``sq``/``dq``: soft targets, ``sum_c q'_c`` and ``sum_c q'_c (m - z_c)`` with
    ``q' = w ((1 - eps) q + eps / C)``; ``wsum``: the block's class-weight sum; ``u``: the
    block's work buffer holds ``exp(z - m) / u`` (None: 1).
    """

    m: Tensor
    rest: Tensor
    zy: Optional[Tensor]
    smooth: Optional[Tensor] = None
    sq: Optional[Tensor] = None
    dq: Optional[Tensor] = None
    wsum: Any = 0.0
    u: Optional[Tensor] = None
    lse_s: Optional[Tensor] = field(default=None, repr=False)

    def finalize(self) -> "_Stats":
        """Fill ``lse_s = log1p(rest)`` (the log-sum-exp is ``m + lse_s``)."""
        if self.lse_s is None:
            self.lse_s = torch.log1p(self.rest)
        return self

    @property
    def lse(self) -> Tensor:
        assert self.lse_s is not None
        return self.m + self.lse_s

    def factor(self, merged: "_Stats") -> Tensor:
        """Multiplier turning this block's work buffer into the global softmax."""
        assert merged.lse_s is not None
        f = torch.exp(self.m - merged.m - merged.lse_s)
        return f if self.u is None else f * self.u


def _zero_times(coef: Any, x: Tensor) -> Tensor:
    """``coef * x`` with ``0 * inf = 0`` (``coef`` >= 0 a weight, ``x`` >= 0)."""
    if isinstance(coef, (int, float)):
        return x * coef if coef != 0 else torch.zeros_like(x)
    return torch.where(coef == 0, torch.zeros((), dtype=x.dtype, device=x.device), coef * x)


def _neg_dot(s: Tensor, w: Optional[Tensor]) -> Tensor:
    """``sum_c w_c * (-s_c)`` per row for shifted logits ``s <= 0``, with ``0 * inf = 0``."""
    if w is None:
        return -s.sum(1)
    out = -(s @ w)
    bad = torch.isnan(out)
    if bool(bad.any()):  # 0 * inf (a zero weight on a -inf logit) or NaN logits
        sb = s[bad]
        out[bad] = torch.where(w == 0, torch.zeros((), dtype=s.dtype, device=s.device), -sb * w).sum(1)
    return out


def _neg_dot_rows(s: Tensor, q: Tensor) -> Tensor:
    """``sum_c q_c * (-s_c)`` per row (soft targets), with ``0 * inf = 0``."""
    prod = s * q
    prod.masked_fill_(q == 0, 0.0)
    return -prod.sum(1)


def _apply_softcap(z: Tensor, t: Optional[Tensor], cap: Optional[float]) -> None:
    """``z <- cap * tanh(z / cap)`` in place, keeping ``tanh`` in ``t`` for the gradient."""
    if cap is None:
        return
    assert t is not None
    torch.div(z, cap, out=t)
    t.tanh_()
    torch.mul(t, cap, out=z)


def _softmax_inplace(z: Tensor) -> bool:
    """Softmax over rows in place with one fused kernel (CPU); False if unavailable."""
    if z.device.type != "cpu":
        return False
    try:
        torch._softmax(z, 1, False, out=z)
    except (RuntimeError, TypeError, AttributeError):  # pragma: no cover - torch internals
        return False
    return True


def _block_stats(
    z: Tensor,
    t: Optional[Tensor],
    rows: _Targets,
    start: int,
    cfg: _Config,
    q: Optional[Tensor] = None,
    whole: bool = False,
) -> _Stats:
    """Statistics of the logits block ``z`` (rows x classes ``[start, start + width)`` of
    the global class range). ``z`` (compute dtype) is overwritten with ``exp(z - m) / u``;
    softcap is applied first (``t`` keeps the tanh for the gradient). ``whole``: the block
    holds all the classes (no merge follows), which allows a faster path."""
    _apply_softcap(z, t, cfg.cap)
    width = z.shape[1]
    fast = whole and rows.kind == "index" and z.device.type == "cpu"
    if fast:
        m2 = torch.amax(z, 1, keepdim=True)
        am = None
    else:
        m2, am = torch.max(z, 1, keepdim=True)
    m = m2[:, 0]
    zy = yls = None
    if rows.kind == "index":
        assert rows.y is not None
        yl = rows.y - start
        inb = (yl >= 0) & (yl < width)
        yls = torch.where(inb, yl, 0)[:, None]
        zy = torch.where(inb, z.gather(1, yls)[:, 0], 0.0)
    if not whole:
        neg = torch.isneginf(m2)
        if bool(neg.any()):
            # A row whose block is entirely -inf: compute on zeros; its weight exp(m - M) is 0.
            z.masked_fill_(neg, 0.0)
            m2 = torch.where(neg, 0.0, m2)
    w = cfg.weight_slice(start, width)
    wsum = cfg.block_weight_sum(start, width)
    smooth = sq = dq = None
    shifted = cfg.eps > 0.0 or rows.kind == "soft"
    if shifted:
        z.sub_(m2)  # s = z - m <= 0: the sums below add non-negative terms only
        if cfg.eps > 0.0:
            smooth = _neg_dot(z, w)
        if rows.kind == "soft":
            assert q is not None
            qw = q if w is None else q * w
            sq = (1.0 - cfg.eps) * qw.sum(1)
            dq = (1.0 - cfg.eps) * _neg_dot_rows(z, qw)
            if cfg.eps > 0.0:
                assert smooth is not None
                sq = sq + (cfg.eps / cfg.n_classes) * wsum
                dq = dq + (cfg.eps / cfg.n_classes) * smooth
    if fast and _softmax_inplace(z):
        # -log p_y = log1p(sum_{k != y} p_k / p_y): no argmax needed, and as precise as the
        # argmax form where it matters (a confident, correct row has y = argmax)
        assert yls is not None and zy is not None and rows.valid is not None
        py = z.gather(1, yls)
        z.scatter_(1, yls, 0.0)
        others = z.sum(1)
        z.scatter_(1, yls, py)
        py = py[:, 0]
        nll = torch.log1p(others / py)
        under = rows.valid & (py == 0)  # p_y underflows: log-sum-exp from the largest p
        if bool(under.any()):
            nll[under] = -torch.log(z[under].amax(1)) + (m[under] - zy[under])
        lse_s = torch.where(rows.valid, (zy - m) + nll, 0.0)
        st = _Stats(m=m, rest=torch.expm1(lse_s), zy=zy, smooth=smooth, wsum=wsum, lse_s=lse_s)
        st.u = 1.0 + st.rest
        return st
    if am is None:
        am = torch.argmax(z, 1, keepdim=True)
    if _softmax_inplace(z):
        # z = p = exp(s) / (1 + rest); rest from the sum without the argmax term
        pmax = z.gather(1, am)
        z.scatter_(1, am, 0.0)
        rest = z.sum(1) / pmax[:, 0]
        z.scatter_(1, am, pmax)
        u = 1.0 + rest
    else:
        if not shifted:
            z.sub_(m2)
        z.exp_()
        z.scatter_(1, am, 0.0)
        rest = z.sum(1)
        z.scatter_(1, am, 1.0)
        u = None
    return _Stats(m=m, rest=rest, zy=zy, smooth=smooth, sq=sq, dq=dq, wsum=wsum, u=u)


def _rebase(b: _Stats, m: Tensor) -> list:
    """The terms one block contributes to merged statistics of maximum ``m >= b.m``, as a
    list of per-row columns to be *summed* over blocks (or ranks): ``[rest, tie, zy?,
    smooth?, sq?, dq?]`` (the optional ones where the block has them). The merged ``rest``
    is the sum of the first column plus the sum of the second minus 1 (every block holding
    the maximum counts its argmax term as one): all terms are non-negative, so the merge is
    exact (no cancellation)."""
    tie = b.m == m
    shift = m - b.m
    cols = [torch.where(tie, b.rest, (1.0 + b.rest) * torch.exp(-shift)), tie.to(m.dtype)]
    if b.zy is not None:
        cols.append(b.zy)
    if b.smooth is not None:
        cols.append(b.smooth + _zero_times(b.wsum, shift))
    if b.sq is not None:
        assert b.dq is not None
        cols.append(b.sq)
        cols.append(b.dq + _zero_times(b.sq, shift))
    return cols


def _from_rebased(m: Tensor, total: list, like: _Stats) -> _Stats:
    """Merged statistics from the column sums of :func:`_rebase` (``like``: any one block,
    for which optional statistics exist)."""
    rest = total[0] + (total[1] - 1.0)
    rest_cols = iter(total[2:])
    zy = None if like.zy is None else next(rest_cols)
    smooth = None if like.smooth is None else next(rest_cols)
    sq = dq = None
    if like.sq is not None:
        sq, dq = next(rest_cols), next(rest_cols)
    return _Stats(m=m, rest=rest, zy=zy, smooth=smooth, sq=sq, dq=dq)


def _merge_blocks(blocks: list) -> _Stats:
    """Exact merge of the statistics of vocabulary blocks of the same rows."""
    if len(blocks) == 1:
        b = blocks[0]
        return _Stats(m=b.m, rest=b.rest, zy=b.zy, smooth=b.smooth, sq=b.sq, dq=b.dq, wsum=b.wsum)
    m = torch.stack([b.m for b in blocks]).amax(0)
    total: list = []
    for b in blocks:
        cols = _rebase(b, m)
        total = cols if not total else [a + c for a, c in zip(total, cols)]
    st = _from_rebased(m, total, blocks[0])
    st.wsum = sum((b.wsum for b in blocks), 0.0)
    return st


# A merger turns the statistics of this process's classes into global ones
# (identity in one process; all-reduces in the vocab-parallel functions).
Merger = Callable[[_Stats], _Stats]


def _local_merger(st: _Stats) -> _Stats:
    return _Stats(
        m=st.m, rest=st.rest, zy=st.zy, smooth=st.smooth, sq=st.sq, dq=st.dq, wsum=st.wsum,
        lse_s=st.lse_s,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Loss and gradient from merged statistics
# --------------------------------------------------------------------------------------


def _row_loss(st: _Stats, rows: _Targets, cfg: _Config) -> Tensor:
    """Per-example loss from merged, finalized statistics (0 for ignored examples)."""
    assert st.lse_s is not None
    eps, zl, C = cfg.eps, cfg.z_loss, cfg.n_classes
    lse_s = st.lse_s
    if rows.kind == "soft":
        assert st.sq is not None and st.dq is not None
        loss = st.sq * lse_s + st.dq
        if zl:
            lse = st.lse
            loss = loss + zl * (lse * lse)
        return loss
    assert st.zy is not None and rows.valid is not None
    weighted = rows.wy is not None
    wy = _ones_wy(rows, cfg.cdt)
    loss = torch.zeros_like(lse_s)
    if eps < 1.0:
        nll = lse_s + (st.m - st.zy)  # both terms >= 0
        term = _zero_times(wy, nll) if weighted else nll
        loss = term if eps == 0.0 else (1.0 - eps) * term
    if eps > 0.0:
        assert st.smooth is not None
        loss = loss + (eps / C) * (cfg.w_sum * lse_s + st.smooth)
    if zl:
        lse = st.lse
        lse2 = lse * lse
        loss = loss + zl * (_zero_times(wy, lse2) if weighted else lse2)
    return torch.where(rows.valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))


def _block_grad(
    z: Tensor,
    t: Optional[Tensor],
    scale: Optional[Tensor],
    st: _Stats,
    rows: _Targets,
    start: int,
    cfg: _Config,
    g: Tensor,
    q: Optional[Tensor] = None,
) -> None:
    """Overwrite the block ``z`` (holding ``softmax * (1 / scale)`` of the capped logits,
    for classes ``[start, start + width)``) with the gradient of ``sum_i g_i loss_i`` with
    respect to the block's (uncapped) logits. ``st``: merged, finalized statistics."""
    assert st.lse_s is not None
    eps, zl, C = cfg.eps, cfg.z_loss, cfg.n_classes
    width = z.shape[1]
    lse = st.lse
    w = cfg.weight_slice(start, width)
    if rows.kind == "index":
        wy = _ones_wy(rows, cfg.cdt)
        A = (1.0 - eps) * wy + (eps / C) * cfg.w_sum
        if zl:
            A = A + (2.0 * zl) * wy * lse
    else:
        assert st.sq is not None
        A = st.sq
        if zl:
            A = A + (2.0 * zl) * lse
    alpha = g * A
    if scale is not None:
        alpha = alpha * scale
    z.mul_(alpha[:, None])
    if rows.kind == "soft":
        assert q is not None
        qw = q if w is None else q * w
        z.addcmul_(qw, (-(1.0 - eps) * g)[:, None])
    if eps > 0.0:
        vec = w if w is not None else torch.ones(width, dtype=z.dtype, device=z.device)
        z.addr_(g * (eps / C), vec, alpha=-1.0)
    if rows.kind == "index":
        assert rows.y is not None and st.zy is not None
        yl = rows.y - start
        inb = (yl >= 0) & (yl < width)
        yls = torch.where(inb, yl, 0)[:, None]
        d = (st.zy - st.m) - st.lse_s  # log p_y
        py = torch.exp(d)
        val = (1.0 - eps) * wy * torch.expm1(d) + py * (A - (1.0 - eps) * wy)
        if eps > 0.0:
            val = val - (eps / C) * wy
        val = g * val
        z.scatter_(1, yls, torch.where(inb, val, z.gather(1, yls)[:, 0])[:, None])
    if cfg.cap is not None:
        assert t is not None
        t.mul_(t)
        z.addcmul_(z, t, value=-1.0)  # times 1 - tanh^2
    # Examples with zero upstream weight (ignored ones) get an exact zero gradient, even
    # where their logits are NaN.
    zero = (g == 0) & ~(torch.isfinite(lse) & torch.isfinite(st.m))
    if bool(zero.any()):
        z.masked_fill_(zero[:, None], 0.0)


# --------------------------------------------------------------------------------------
# The chunked engine for linear + cross-entropy
# --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    rows: int  # rows per logits chunk
    sub_rows: int  # rows per float32 work block
    tile: int  # classes per vocabulary tile
    tiled: bool  # two sweeps over vocabulary tiles (else one pass over full rows)
    fp32_dw: bool  # accumulate a half-precision weight gradient in a float32 buffer
    exact_dw: bool  # ... from float32 matmuls of the float32 gradient blocks (slower)


def _plan(
    n: int,
    v: int,
    h: int,
    w_dtype: torch.dtype,
    cfg: _Config,
    chunk_size: Any,
    acc_policy: Optional[str],
    v_plan: Optional[int] = None,
) -> _Plan:
    """Chunk sizes. ``v_plan``: the vocabulary size to plan for (the largest shard in the
    vocab-parallel case, so that every rank loops over the same row chunks)."""
    vp = v if v_plan is None else v_plan
    isz = torch.empty((), dtype=w_dtype).element_size()
    half = w_dtype != cfg.cdt
    n1 = max(n, 1)
    if isinstance(chunk_size, tuple):
        rows, tile = chunk_size
        tile = min(tile, vp)
    elif chunk_size is not None:
        rows, tile = chunk_size, vp
    else:
        rows = min(_LOGITS_BUDGET // max(1, vp * isz), max(_MIN_ROWS, -(-n1 // _MIN_CHUNKS)))
        tile = vp
        if rows < _MIN_ROWS:  # a vocabulary too large for even a few full rows: tile it
            rows = min(n1, 64)
            tile = max(1, _WORK_BUDGET // (rows * 4))
    rows = max(1, min(rows, n1))
    if tile < vp:
        sub = rows  # tiles are processed whole
    else:  # cache-sized blocks for the elementwise passes (also in place, float32)
        sub = max(1, min(rows, _WORK_BUDGET // max(1, tile * 4)))
    exact_dw = half and acc_policy in ("accurate", "balanced")
    if acc_policy == "compact":
        fp32_dw = False
    else:
        fp32_dw = half and (exact_dw or v * h * 6 <= _FP32_DW_BUDGET)
    return _Plan(
        rows=rows, sub_rows=sub, tile=min(tile, max(v, 1)), tiled=tile < vp, fp32_dw=fp32_dw,
        exact_dw=exact_dw,
    )  # fmt: skip


def _logits_into(out: Tensor, h: Tensor, W: Tensor, b: Optional[Tensor]) -> Tensor:
    if b is None:
        return torch.mm(h, W.t(), out=out)
    return torch.addmm(b, h, W.t(), out=out)


def _contig_view(buf: Tensor, rows: int, cols: int) -> Tensor:
    return buf.view(-1)[: rows * cols].view(rows, cols)


@dataclass
class _Result:
    loss: Optional[Tensor]  # (N,) per-example loss, compute dtype
    stats: Optional[_Stats]  # merged per-row statistics (N,), finalized
    dh: Optional[Tensor]
    dW: Optional[Tensor]
    db: Optional[Tensor]


def _cat_stats(parts: list) -> Optional[_Stats]:
    if not parts:
        return None

    def cat(name: str) -> Optional[Tensor]:
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else torch.cat(vals)

    m, rest = cat("m"), cat("rest")
    assert m is not None and rest is not None
    return _Stats(
        m=m, rest=rest, zy=cat("zy"), smooth=cat("smooth"), sq=cat("sq"), dq=cat("dq"),
        lse_s=cat("lse_s"),
    )  # fmt: skip


def _slice_stats(st: _Stats, r0: int, r1: int) -> _Stats:
    def sl(x: Optional[Tensor]) -> Optional[Tensor]:
        return None if x is None else x[r0:r1]

    return _Stats(
        m=st.m[r0:r1], rest=st.rest[r0:r1], zy=sl(st.zy), smooth=sl(st.smooth), sq=sl(st.sq),
        dq=sl(st.dq), lse_s=sl(st.lse_s),
    )  # fmt: skip


def _softmax_from_lse(z: Tensor, t: Optional[Tensor], st: _Stats, cfg: _Config) -> None:
    """``z <- softmax`` of the (capped) logits block in place, from the merged, finalized
    statistics of its rows (``t`` keeps the tanh of the softcap for the gradient)."""
    _apply_softcap(z, t, cfg.cap)
    z.sub_(st.lse[:, None]).exp_()


def _linear_engine(
    h: Tensor,
    W: Tensor,
    b: Optional[Tensor],
    tgt: _Targets,
    cfg: _Config,
    plan: _Plan,
    *,
    vocab_start: int = 0,
    g: Optional[Tensor] = None,
    need: tuple = (False, False, False),
    saved: Optional[_Stats] = None,
    merger: Merger = _local_merger,
) -> _Result:
    """Loss (and, with ``g``, gradients) of ``cross_entropy(h @ W.T + b)`` chunk by chunk.

    ``h`` (N, H), ``W`` (V, H) this process's classes ``[vocab_start, vocab_start + V)``.
    ``g`` (N,): per-example upstream weights; ``need``: which of (dh, dW, db) to compute.
    ``saved``: merged statistics from an earlier pass (then the loss is not recomputed and
    ``merger`` is not called: no communication). Returns the per-example loss and merged
    statistics (when computed), ``dh`` partial over this process's classes.
    """
    N, H = h.shape
    V = W.shape[0]
    cdt = cfg.cdt
    dev = h.device
    half = W.dtype != cdt
    want_grad = g is not None
    need_dh, need_dW, need_db = need if want_grad else (False, False, False)
    R, r, T = plan.rows, plan.sub_rows, plan.tile
    tiled = plan.tiled

    zbuf = torch.empty(R * min(T, V), dtype=W.dtype, device=dev)
    work_rows = R if tiled else r
    wbuf = torch.empty(work_rows * min(T, V), dtype=cdt, device=dev) if half else None
    tbuf = torch.empty(work_rows * min(T, V), dtype=cdt, device=dev) if cfg.cap is not None else None

    dh = torch.empty_like(h) if need_dh else None
    fp32_dw = need_dW and half and plan.fp32_dw
    # written by the first row chunk's matmul (no zero fill of a V x H buffer)
    dW = torch.empty_like(W) if need_dW and not fp32_dw else None
    dW32 = torch.zeros(W.shape, dtype=cdt, device=dev) if fp32_dw else None
    exact_dw = fp32_dw and plan.exact_dw
    # one chunk's half-precision product, added to dW32
    prod = torch.empty(W.shape, dtype=W.dtype, device=dev) if fp32_dw and not exact_dw else None
    db32 = torch.zeros(V, dtype=cdt, device=dev) if need_db else None
    loss = torch.empty(N, dtype=cdt, device=dev) if saved is None else None
    parts: list = []

    def work_of(zv: Tensor, k: int, cols: int) -> Tensor:
        if not half:
            return zv
        assert wbuf is not None
        wv = _contig_view(wbuf, k, cols)
        wv.copy_(zv)
        return wv

    def t_of(k: int, cols: int) -> Optional[Tensor]:
        return None if tbuf is None else _contig_view(tbuf, k, cols)

    def accumulate_w(work: Tensor, h_rows: Tensor, v0: int, v1: int) -> None:
        """Float32 pieces of the weight/bias gradients from a float32 gradient block."""
        if exact_dw:
            assert dW32 is not None
            dW32[v0:v1].addmm_(work.t(), h_rows.to(cdt))
        if db32 is not None:
            db32[v0:v1].add_(work.sum(0))

    def weight_grad(z: Tensor, h_rows: Tensor, v0: int, v1: int, first: bool) -> None:
        """Add ``z.T @ h_rows`` (the gradient block, in the weight's dtype) to the gradient
        of ``W[v0:v1]``; the first row chunk writes it (no zero fill of a V x H buffer)."""
        if dW is not None:
            if first:
                torch.mm(z.t(), h_rows, out=dW[v0:v1])
            else:
                dW[v0:v1].addmm_(z.t(), h_rows)
        elif prod is not None:
            assert dW32 is not None
            dW32[v0:v1].add_(torch.mm(z.t(), h_rows, out=prod[v0:v1]))

    for r0 in range(0, N, R):
        r1 = min(N, r0 + R)
        n = r1 - r0
        hr = h[r0:r1]
        rows = tgt.rows(r0, r1)
        if not tiled:
            z = _contig_view(zbuf, n, V)
            _logits_into(z, hr, W, b)
            for s0 in range(0, n, r):
                s1 = min(n, s0 + r)
                k = s1 - s0
                srows = rows.rows(s0, s1)
                work = work_of(z[s0:s1], k, V)
                t = t_of(k, V)
                q = None if srows.q is None else srows.q.to(cdt)
                a0, a1 = r0 + s0, r0 + s1
                if saved is None:
                    whole = merger is _local_merger
                    local = _block_stats(work, t, srows, vocab_start, cfg, q, whole=whole)
                    st = merger(local).finalize()
                    assert loss is not None
                    loss[a0:a1] = _row_loss(st, srows, cfg)
                    parts.append(st)
                    if merger is _local_merger:  # one block: the factor is exactly 1 / u
                        scale = None if local.u is not None else 1.0 / (1.0 + local.rest)
                    else:
                        scale = local.factor(st)
                else:
                    st = _slice_stats(saved, a0, a1)
                    _softmax_from_lse(work, t, st, cfg)
                    scale = None
                if want_grad:
                    assert g is not None
                    _block_grad(work, t, scale, st, srows, vocab_start, cfg, g[a0:a1], q)
                    accumulate_w(work, hr[s0:s1], 0, V)
                    if half:
                        z[s0:s1].copy_(work)
            if want_grad:
                if dh is not None:
                    torch.mm(z, W, out=dh[r0:r1])
                weight_grad(z, hr, 0, V, r0 == 0)
            continue

        # Vocabulary tiles: a first sweep for the statistics, a second for the gradients.
        tiles = [(v0, min(V, v0 + T)) for v0 in range(0, V, T)]
        q_rows = None if rows.q is None else rows.q
        if saved is None:
            blocks = []
            for v0, v1 in tiles:
                z = _contig_view(zbuf, n, v1 - v0)
                _logits_into(z, hr, W[v0:v1], None if b is None else b[v0:v1])
                work = work_of(z, n, v1 - v0)
                q = None if q_rows is None else q_rows[:, v0:v1].to(cdt)
                blocks.append(_block_stats(work, t_of(n, v1 - v0), rows, vocab_start + v0, cfg, q))
            st = merger(_merge_blocks(blocks)).finalize()
            assert loss is not None
            loss[r0:r1] = _row_loss(st, rows, cfg)
            parts.append(st)
        else:
            st = _slice_stats(saved, r0, r1)
        if not want_grad:
            continue
        assert g is not None
        dh_acc = torch.zeros((n, H), dtype=cdt, device=dev) if dh is not None else None
        for v0, v1 in tiles:
            z = _contig_view(zbuf, n, v1 - v0)
            Wt = W[v0:v1]
            _logits_into(z, hr, Wt, None if b is None else b[v0:v1])
            work = work_of(z, n, v1 - v0)
            t = t_of(n, v1 - v0)
            _softmax_from_lse(work, t, st, cfg)
            q = None if q_rows is None else q_rows[:, v0:v1].to(cdt)
            _block_grad(work, t, None, st, rows, vocab_start + v0, cfg, g[r0:r1], q)
            accumulate_w(work, hr, v0, v1)
            if half:
                z.copy_(work)
            if dh_acc is not None:
                dh_acc.add_(torch.mm(z, Wt))
            weight_grad(z, hr, v0, v1, r0 == 0)
        if dh is not None:
            assert dh_acc is not None
            dh[r0:r1].copy_(dh_acc)

    if dW is not None and N == 0:
        dW.zero_()
    if dW32 is not None:
        dW = dW32.to(W.dtype)
    db = None
    if db32 is not None:
        db = db32.to(b.dtype if b is not None else W.dtype)
    return _Result(loss=loss, stats=_cat_stats(parts) if saved is None else saved, dh=dh, dW=dW, db=db)


def _reduce(loss_rows: Tensor, tgt: _Targets, cfg: _Config) -> Tensor:
    if cfg.reduction == "none":
        return loss_rows
    total = loss_rows.sum()
    if cfg.reduction == "sum":
        return total
    return total / _denominator(tgt, cfg, loss_rows.shape[0]).to(total.device)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_tensor(name: str, x: Any) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise CrossEntropyTypeError(
            f"{name} is a {type(x).__name__}; expected a torch.Tensor",
            argument=name,
            value=type(x).__name__,
            expected="torch.Tensor",
        )
    return x


def _check_float(name: str, x: Tensor) -> None:
    if x.dtype not in _FLOATS:
        raise InvalidDTypeError(
            f"{name} has dtype {x.dtype}; expected float16, bfloat16, float32 or float64",
            argument=name,
            value=str(x.dtype),
            expected="a real floating dtype",
        )


def _check_same(name: str, x: Tensor, ref: Tensor, ref_name: str) -> None:
    if x.dtype != ref.dtype:
        raise InvalidDTypeError(
            f"{name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}; expected the "
            f"same dtype (as torch.nn.functional.linear does)",
            argument=name,
            value=str(x.dtype),
            expected=str(ref.dtype),
        )
    if x.device != ref.device:
        raise CrossEntropyTypeError(
            f"{name} is on {x.device} but {ref_name} is on {ref.device}; expected one device",
            argument=name,
            value=str(x.device),
            expected=str(ref.device),
        )


def _check_chunk_size(chunk_size: Any) -> Any:
    def ok(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1

    if chunk_size is None:
        return None
    if isinstance(chunk_size, (tuple, list)) and len(chunk_size) == 2 and all(ok(v) for v in chunk_size):
        return (int(chunk_size[0]), int(chunk_size[1]))
    if ok(chunk_size):
        return int(chunk_size)
    raise InvalidOptionError(
        f"chunk_size = {chunk_size!r} is not a positive integer (rows per chunk), a pair "
        "(rows, classes) of positive integers, or None",
        argument="chunk_size",
        value=chunk_size,
        expected="None, an int >= 1, or (rows, classes)",
    )


def _options_settings(options: Any) -> tuple:
    """(batch_chunk_size, acc_policy) from a torch.nn.LinearCrossEntropyOptions."""
    if options is None:
        return None, None
    if not hasattr(options, "acc_policy") or not hasattr(options, "batch_chunk_size"):
        raise InvalidOptionError(
            f"options = {options!r} is not a torch.nn.LinearCrossEntropyOptions",
            argument="options",
            value=options,
            expected="torch.nn.LinearCrossEntropyOptions or None",
        )
    return options.batch_chunk_size, options.acc_policy


def _first_true(mask: Tensor) -> tuple:
    idx = mask.nonzero()[0]
    return tuple(int(i) for i in idx)


def _check_weight(weight: Any, n_classes: int, device: Any, cdt: torch.dtype, local: int = -1) -> Optional[Tensor]:
    """Class weights of shape (C,) (or ``local`` classes), >= 0, as a compute-dtype tensor."""
    if weight is None:
        return None
    w = weight if isinstance(weight, torch.Tensor) else torch.as_tensor(weight)
    if w.dtype == torch.bool or w.is_complex():
        raise InvalidDTypeError(
            f"weight has dtype {w.dtype}; expected real numbers, one per class",
            argument="weight",
            value=str(w.dtype),
            expected="real floating dtype",
        )
    if tuple(w.shape) != (n_classes,):
        raise ShapeMismatchError(
            f"weight has shape {tuple(w.shape)}; expected ({n_classes},): one weight per class",
            argument="weight",
            value=tuple(w.shape),
            expected=f"({n_classes},)",
        )
    bad = w < 0
    if bool(bad.any()):
        raise negative_error("weight", w, "class weights")(_first_true(bad))
    return w.detach().to(device=device, dtype=cdt)


def _prepare_targets(
    target: Any,
    batch_shape: tuple,
    n_local: int,
    n_classes: int,
    ignore_index: int,
    cfg_weight: Optional[Tensor],
    device: Any,
    cdt: torch.dtype,
    input_name: str,
) -> _Targets:
    """Validate ``target`` (class indices of shape ``batch_shape``, or probabilities of
    shape ``batch_shape + (n_local,)``) and flatten it."""
    t = target if isinstance(target, torch.Tensor) else torch.as_tensor(target, device=device)
    if t.device != device:
        raise CrossEntropyTypeError(
            f"target is on {t.device} but {input_name} is on {device}; expected one device",
            argument="target",
            value=str(t.device),
            expected=str(device),
        )
    ex_shape = tuple(batch_shape)
    soft_shape = ex_shape + (n_local,)
    shape = tuple(t.shape)
    if t.dtype == torch.bool or t.is_complex():
        raise InvalidDTypeError(
            f"target has dtype {t.dtype}; expected integer class indices (shape {ex_shape}) or "
            f"floating class probabilities (shape {soft_shape})",
            argument="target",
            value=str(t.dtype),
            expected="integer or real floating dtype",
        )
    n = int(math.prod(ex_shape))
    if not t.is_floating_point():
        if shape != ex_shape:
            raise ShapeMismatchError(
                f"target has shape {shape}: integer class-index targets need shape {ex_shape} "
                f"({input_name}'s shape without the feature axis); floating probability "
                f"targets need shape {soft_shape}",
                argument="target",
                value=shape,
                expected=str(ex_shape),
            )
        ign = t == ignore_index
        bad = ((t < 0) | (t >= n_classes)) & ~ign
        if bool(bad.any()):
            raise class_index_error(t, n_classes, ignore_index)(_first_true(bad))
        flat = t.reshape(n).to(torch.long)
        valid = ~ign.reshape(n)
        y = torch.where(valid, flat, -1)
        wy = None
        if cfg_weight is not None:
            wy = torch.where(valid, cfg_weight[torch.where(valid, flat, 0)], 0.0)
        return _Targets(kind="index", y=y, valid=valid, wy=wy)
    if shape != soft_shape:
        hint = (
            "; it looks like class indices stored as floats: pass an integer tensor "
            "(target.long())"
            if shape == ex_shape
            else ""
        )
        raise ShapeMismatchError(
            f"target is floating with shape {shape}: probability targets need shape "
            f"{soft_shape}; integer class-index targets need shape {ex_shape}{hint}",
            argument="target",
            value=shape,
            expected=str(soft_shape),
        )
    if ignore_index >= 0:
        raise InvalidOptionError(
            f"ignore_index = {ignore_index} applies to class-index targets only; with "
            "probability targets give ignored examples an all-zero target row",
            argument="ignore_index",
            value=ignore_index,
            expected="a negative value (the default -100) with probability targets",
        )
    bad = (t < 0) | (t > 1)
    if bool(bad.any()):
        idx = _first_true(bad)
        value = float(t[idx])
        raise ProbabilityRangeError(
            f"target[{', '.join(map(str, idx))}] = {value!r} is outside [0, 1]: probability "
            "targets must be in [0, 1]",
            argument="target",
            value=value,
            index=idx,
            expected="0 <= target <= 1",
        )
    return _Targets(kind="soft", q=t.detach().reshape(n, n_local))


def _check_options(
    reduction: Any, ignore_index: Any, label_smoothing: Any, z_loss: Any, softcap: Any
) -> tuple:
    reduction = check_reduction(reduction)
    ii = check_ignore_index(ignore_index)
    if ii is None:  # torch's linear_cross_entropy maps None to -100
        ii = -100
    eps = check_unit_interval("label_smoothing", label_smoothing)
    zl = check_nonnegative("z_loss", z_loss)
    cap = check_softcap(softcap)
    return reduction, ii, eps, zl, cap


def _check_no_grad_needed(name: str, x: Any) -> None:
    if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
        raise InvalidOptionError(
            f"{name} requires grad, but linear_cross_entropy does not differentiate with "
            f"respect to {name}; pass {name}.detach()",
            argument=name,
            value="requires_grad=True",
            expected="a tensor that does not require grad",
        )


# --------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------


@dataclass
class _Call:
    """Everything the autograd function needs besides the differentiable tensors.

    The vocab-parallel function (:mod:`crossent.torch._parallel`) sets ``vocab_start`` (this
    rank's first class), ``merger`` (all-reduces of the statistics) and ``finish_dh`` (the
    all-reduce of the gradient of the replicated input)."""

    cfg: _Config
    tgt: _Targets
    plan: _Plan
    precompute: bool  # compute the gradients in forward (scalar reductions)
    need: tuple = (False, False, False)
    vocab_start: int = 0
    merger: Merger = _local_merger
    finish_dh: Optional[Callable[[Tensor], Tensor]] = None


def _engine_grads(call: _Call, res: _Result) -> tuple:
    dh = res.dh
    if dh is not None and call.finish_dh is not None:
        dh = call.finish_dh(dh)
    return dh, res.dW, res.db


class _LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    @_disable_compile
    def forward(ctx: Any, h: Tensor, W: Tensor, b: Optional[Tensor], call: _Call) -> Tensor:  # type: ignore[override]
        cfg, tgt = call.cfg, call.tgt
        g = _upstream(tgt, cfg, h.shape[0], None, h.device) if call.precompute else None
        res = _linear_engine(
            h, W, b, tgt, cfg, call.plan, vocab_start=call.vocab_start, g=g, need=call.need,
            merger=call.merger,
        )  # fmt: skip
        assert res.loss is not None
        ctx.call = call
        ctx.stats = res.stats
        ctx.grads = _engine_grads(call, res) if call.precompute else None
        ctx.save_for_backward(h, W, b)
        return _reduce(res.loss, tgt, cfg)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> Any:  # type: ignore[override]
        return _linear_backward(ctx, grad_output)


@_disable_compile  # (a backward started inside a compiled function is not traced)
def _linear_backward(ctx: Any, grad_output: Tensor) -> tuple:
    call: _Call = ctx.call
    h, W, b = ctx.saved_tensors
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
    if ctx.grads is not None:
        dh, dW, db = ctx.grads
        ctx.grads = None  # handed over: a second backward recomputes
        if not bool(torch.all(grad_output == 1)):
            go = grad_output.reshape(())
            for x in (dh, dW, db):
                if x is not None:
                    x.mul_(go)
    else:
        g = _upstream(call.tgt, call.cfg, h.shape[0], grad_output, h.device)
        # saved statistics: no merge, so no communication besides finish_dh
        res = _linear_engine(
            h, W, b, call.tgt, call.cfg, call.plan, vocab_start=call.vocab_start, g=g,
            need=need, saved=ctx.stats,
        )  # fmt: skip
        dh, dW, db = _engine_grads(call, res)
    return (
        dh if need[0] else None,
        dW if need[1] else None,
        db if need[2] else None,
        None,
    )


def _prepare_linear(
    input: Any,
    linear_weight: Any,
    target: Any,
    linear_bias: Any,
    weight: Any,
    reduction: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    chunk_size: Any,
    options: Any,
    n_classes: Optional[int] = None,
    vocab_start: int = 0,
    v_plan: Optional[int] = None,
) -> tuple:
    """Validate a (vocab-parallel) linear cross-entropy call.

    Returns ``(h2, W, b, call, batch_shape)``; ``n_classes``/``vocab_start``: the global
    class count and this process's first class (vocab-parallel), default ``W``'s rows.
    """
    h = _check_tensor("input", input)
    W = _check_tensor("linear_weight", linear_weight)
    _check_float("input", h)
    reduction, ii, eps, zl, cap = _check_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    chunk = _check_chunk_size(chunk_size)
    bcs, policy = _options_settings(options)
    if chunk is None and bcs is not None:
        chunk = _check_chunk_size(bcs)
    if h.dim() < 1:
        raise ShapeMismatchError(
            "input is 0-dimensional; expected shape (..., in_features)",
            argument="input",
            value=(),
            expected="(..., in_features)",
        )
    if W.dim() != 2:
        extra = (
            " (K-dimensional losses with linear_weight of shape (C, d_1, ..., in_features) "
            "are not supported)"
            if W.dim() > 2
            else ""
        )
        raise ShapeMismatchError(
            f"linear_weight has shape {tuple(W.shape)}; expected (num_classes, in_features){extra}",
            argument="linear_weight",
            value=tuple(W.shape),
            expected="(num_classes, in_features)",
        )
    _check_same("linear_weight", W, h, "input")
    H = h.shape[-1]
    V = W.shape[0]
    if W.shape[1] != H:
        raise ShapeMismatchError(
            f"linear_weight has shape {tuple(W.shape)} but input has {H} features (shape "
            f"{tuple(h.shape)}); expected linear_weight of shape (num_classes, {H})",
            argument="linear_weight",
            value=tuple(W.shape),
            expected=f"(num_classes, {H})",
        )
    if V == 0:
        raise ShapeMismatchError(
            "linear_weight has 0 rows: expected at least one class",
            argument="linear_weight",
            value=tuple(W.shape),
            expected="at least one class",
        )
    b = None
    if linear_bias is not None:
        b = _check_tensor("linear_bias", linear_bias)
        _check_same("linear_bias", b, h, "input")
        if tuple(b.shape) != (V,):
            raise ShapeMismatchError(
                f"linear_bias has shape {tuple(b.shape)}; expected ({V},), one per class",
                argument="linear_bias",
                value=tuple(b.shape),
                expected=f"({V},)",
            )
    C = V if n_classes is None else n_classes
    batch = tuple(h.shape[:-1])
    opts = (reduction, ii, eps, zl, cap)
    cfg, tgt = _prepare_config(h, "input", target, weight, V, C, opts, no_grad_checks=True)
    h2 = h.reshape(-1, H)
    n = h2.shape[0]
    plan = _plan(n, V, H, W.dtype, cfg, chunk, policy, v_plan)
    grad_on = torch.is_grad_enabled()
    need = (
        grad_on and h.requires_grad,
        grad_on and W.requires_grad,
        grad_on and b is not None and b.requires_grad,
    )
    precompute = reduction != "none" and any(need)
    call = _Call(cfg=cfg, tgt=tgt, plan=plan, precompute=precompute, need=need, vocab_start=vocab_start)
    return h2, W, b, call, batch


def _prepare_config(
    x: Tensor,
    x_name: str,
    target: Any,
    weight: Any,
    n_local: int,
    n_classes: int,
    options: tuple,
    no_grad_checks: bool = False,
) -> tuple:
    """``(cfg, tgt)`` for input ``x`` (..., features) whose ``n_local`` classes are part of
    ``n_classes``; ``options``: the validated ``(reduction, ignore_index, eps, z_loss, cap)``;
    ``no_grad_checks``: refuse a ``weight`` or ``target`` that requires grad."""
    reduction, ii, eps, zl, cap = options
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    cw = _check_weight(weight, n_classes, x.device, cdt)
    if no_grad_checks:
        _check_no_grad_needed("weight", weight)
        _check_no_grad_needed("target", target)
    batch = tuple(x.shape[:-1])
    tgt = _prepare_targets(target, batch, n_local, n_classes, ii, cw, x.device, cdt, x_name)
    cfg = _Config(
        n_classes=n_classes, kind=tgt.kind, eps=eps, z_loss=zl, cap=cap, reduction=reduction,
        cdt=cdt, class_weight=cw, w_sum=float(n_classes) if cw is None else float(cw.sum()),
    )  # fmt: skip
    return cfg, tgt


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    ignore_index: Optional[int] = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    chunk_size: Any = None,
    options: Any = None,
) -> Tensor:
    r"""Cross-entropy of a linear layer's output, without materialising the logits.

    Equal to ``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)``
    (and a drop-in for PyTorch 2.13's ``torch.nn.functional.linear_cross_entropy``) but
    computed chunk by chunk: peak extra memory is one ``(chunk, V)`` block of logits, not
    ``(N, V)``. For ``"mean"``/``"sum"`` the gradients of ``input``, ``linear_weight`` and
    ``linear_bias`` are computed during the forward pass and only scaled in backward; for
    ``"none"`` backward recomputes the logits chunk by chunk with the per-example upstream
    gradient folded in before anything is summed.

    Parameters
    ----------
    input : Tensor of shape (..., H)
        Hidden states (any batch shape; PyTorch accepts (H,) and (N, H)).
    linear_weight : Tensor of shape (V, H)
        The output projection (same dtype and device as ``input``).
    target : Tensor
        Class indices of shape ``input.shape[:-1]`` (integer dtype), or class
        probabilities of shape ``input.shape[:-1] + (V,)`` (floating).
    linear_bias : Tensor of shape (V,), optional
    weight : Tensor of shape (V,), optional
        Per-class weights >= 0; the mean divides by the sum of the target classes' weights.
    reduction : {"mean", "sum", "none"}, default "mean"
    ignore_index : int, default -100
        Targets equal to it give loss 0, gradient 0 and do not count in the mean (``None``
        means -100, as in PyTorch). All examples ignored: the mean is NaN, as in PyTorch.
    label_smoothing : float in [0, 1], default 0
        ``(1 - eps) w_y nll + (eps / V) sum_c w_c (-log p_c)``, same denominator.
    z_loss : float >= 0, default 0
        Adds ``z_loss * w_y * lse**2`` per non-ignored example (unweighted with
        probability targets); the mean uses the cross-entropy denominator.
    softcap : float > 0, optional
        ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2).
    chunk_size : int or (int, int), optional
        Rows per chunk, or ``(rows, classes)`` to also tile the vocabulary (then the
        logits are computed twice: once for the log-sum-exp, once for the gradients).
        Default: N/8 rows (at least 16), fewer if one chunk of logits would take more
        than 256 MiB; the vocabulary is tiled only when even 16 full rows would not fit.
        Half precision and softcap add float32 work blocks of at most 4 MiB.
    options : torch.nn.LinearCrossEntropyOptions, optional
        Accepted for drop-in compatibility (chunking is always on): ``batch_chunk_size``
        is used as ``chunk_size``, and ``acc_policy`` chooses how the gradient of a
        half-precision weight is accumulated over row chunks (see Notes).

    Returns
    -------
    Tensor
        A scalar, or per-example losses of shape ``input.shape[:-1]`` (``"none"``); float32
        for float16/bfloat16 inputs (float64 for float64), which are accumulated in float32.

    Raises
    ------
    CrossEntropyError
        For mismatched shapes, dtypes or devices, a target outside ``[0, V)`` that is not
        ``ignore_index``, negative class weights, probability targets outside [0, 1], or an
        option out of range.

    Notes
    -----
    Half precision (float16/bfloat16): the matmuls run in the input dtype (the hardware's
    fast path, float32 accumulation inside), the softmax, the loss and the logit gradients
    in float32; the gradient of ``input`` is one matmul per row chunk. The gradient of the
    weight sums one matmul product per row chunk: in a float32 buffer when that buffer is
    small (<= 16 MiB), else in the weight's dtype (one rounding per chunk; default chunks
    are at least N/8 rows) so that no float32 copy of an LLM head's gradient is ever held.
    ``options=LinearCrossEntropyOptions(acc_policy="accurate")`` (or ``"balanced"``)
    computes it from float32 matmuls into a float32 buffer instead (exact, slower on CPUs
    without fast float32 matmul, V·H·4 extra bytes); ``"compact"`` forces the
    weight-dtype accumulation.

    Examples
    --------
    >>> import torch
    >>> from crossent.torch import linear_cross_entropy
    >>> h = torch.randn(6, 4, requires_grad=True)
    >>> W = torch.randn(10, 4, requires_grad=True)
    >>> y = torch.tensor([1, 0, 9, -100, 3, 3])
    >>> loss = linear_cross_entropy(h, W, y, chunk_size=4)
    >>> ref = torch.nn.functional.cross_entropy(h @ W.T, y)
    >>> torch.allclose(loss, ref)
    True
    >>> loss.backward()
    """
    return _linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
        label_smoothing, z_loss, softcap, chunk_size, options,
    )  # fmt: skip


@_disable_compile  # validation and the chunk loops run eagerly: one graph break
def _linear_cross_entropy(*args: Any) -> Tensor:
    return _apply_linear(*_prepare_linear(*args))


def _apply_linear(h2: Tensor, W: Tensor, b: Optional[Tensor], call: _Call, batch: tuple) -> Tensor:
    out = _LinearCrossEntropyFunction.apply(h2, W, b, call)
    return out.reshape(batch) if call.cfg.reduction == "none" else out


class LinearCrossEntropyLoss(torch.nn.Module):
    r"""A linear layer followed by cross-entropy, fused: :func:`linear_cross_entropy` as a
    module, with the constructor of PyTorch 2.13's ``torch.nn.LinearCrossEntropyLoss``
    (it owns ``self.linear``, a ``torch.nn.Linear(in_features, num_classes)``) plus
    ``z_loss``, ``softcap`` and ``chunk_size``.

    Examples
    --------
    >>> import torch
    >>> from crossent.torch import LinearCrossEntropyLoss
    >>> loss_fn = LinearCrossEntropyLoss(4, 10, bias=True, label_smoothing=0.1)
    >>> loss = loss_fn(torch.randn(8, 4), torch.randint(0, 10, (8,)))
    >>> loss.backward()
    >>> loss_fn.linear.weight.grad.shape
    torch.Size([10, 4])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple = (),
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
        reduction: str = "mean",
        weight: Optional[Tensor] = None,
        ignore_index: Optional[int] = -100,
        label_smoothing: float = 0.0,
        options: Any = None,
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
        chunk_size: Any = None,
    ) -> None:
        super().__init__()
        if tuple(out_features) != ():
            raise InvalidOptionError(
                f"out_features = {tuple(out_features)!r}: K-dimensional losses are not "
                "supported; expected ()",
                argument="out_features",
                value=tuple(out_features),
                expected="()",
            )
        check_reduction(reduction)
        check_unit_interval("label_smoothing", label_smoothing)
        check_nonnegative("z_loss", z_loss)
        check_softcap(softcap)
        check_ignore_index(ignore_index)
        _check_chunk_size(chunk_size)
        self.num_classes = num_classes
        self.out_features = ()
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = chunk_size
        self.options = options
        self.linear = torch.nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        if weight is not None:
            _check_weight(weight, num_classes, torch.device("cpu"), torch.float64)
        self.register_buffer("weight", weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return linear_cross_entropy(
            input,
            self.linear.weight,
            target,
            linear_bias=self.linear.bias,
            weight=cast(Optional[Tensor], self.weight),
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
            options=self.options,
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        return ", ".join(parts)
