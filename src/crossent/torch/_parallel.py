"""Vocab-parallel cross-entropy over ``torch.distributed``.

Each rank holds a contiguous slice of the vocabulary: a shard of the logits
(:func:`vocab_parallel_cross_entropy`) or of the output projection
(:func:`vocab_parallel_linear_cross_entropy`). Every rank reduces its own classes to
per-example statistics (maximum, sum of exponentials without one argmax term, target
logit, label-smoothing sums: :mod:`crossent.torch._linear`), and two all-reduces merge
them exactly — a MAX of the maxima, then one SUM of a small packed tensor — so no rank
ever holds the full logits and the merged log-sum-exp keeps crossent's precision. Any
backend works (gloo on CPU, nccl on GPUs).

Label smoothing uses the *global* class count ``C`` (Megatron-LM's vocab-parallel loss
divides by the local one). The backward pass of :func:`vocab_parallel_cross_entropy` needs
no communication at all (the forward saved the merged statistics); that of
:func:`vocab_parallel_linear_cross_entropy` only all-reduces the gradient of the
replicated ``input`` (for ``"mean"``/``"sum"`` even that happens in forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import Tensor

from .._errors import InvalidOptionError, ShapeMismatchError
from ._linear import (
    _WORK_BUDGET,
    _block_grad,
    _block_stats,
    _cat_stats,
    _check_float,
    _check_options,
    _check_tensor,
    _Config,
    _contig_view,
    _disable_compile,
    _from_rebased,
    _apply_linear,
    _prepare_config,
    _prepare_linear,
    _rebase,
    _reduce,
    _row_loss,
    _slice_stats,
    _softmax_from_lse,
    _Stats,
    _Targets,
    _upstream,
)

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]


# --------------------------------------------------------------------------------------
# Process group and vocabulary layout
# --------------------------------------------------------------------------------------


def _dist() -> Any:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise InvalidOptionError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group "
            "first (or use the single-process linear_cross_entropy / cross_entropy)",
            argument="group",
            value=None,
            expected="an initialized torch.distributed process group",
        )
    return dist


@dataclass
class _Layout:
    group: Any
    world: int
    rank: int
    start: int  # this rank's first class
    size: int  # this rank's number of classes
    n_classes: int  # global
    max_size: int  # largest shard (for chunk plans every rank agrees on)


def _layout(dist: Any, group: Any, size: int, vocab_start: Any, device: Any) -> _Layout:
    """All-gather every rank's (start, size) and check that the shards tile [0, C)."""
    rank = dist.get_rank(group)
    if rank < 0:
        raise InvalidOptionError(
            "this process is not a member of the given process group",
            argument="group",
            value=group,
            expected="a group containing this rank",
        )
    world = dist.get_world_size(group)
    if vocab_start is not None and (
        isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0
    ):
        raise InvalidOptionError(
            f"vocab_start = {vocab_start!r} is not a non-negative integer (or None)",
            argument="vocab_start",
            value=vocab_start,
            expected="an int >= 0, or None for shards in rank order",
        )
    mine = torch.tensor([-1 if vocab_start is None else vocab_start, size], dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    pairs = [(int(p[0]), int(p[1])) for p in parts]
    given = [s >= 0 for s, _ in pairs]
    if any(given) and not all(given):
        raise InvalidOptionError(
            "vocab_start was given on some ranks and not on others; give it on every rank "
            "or on none (then the shards are laid out in rank order)",
            argument="vocab_start",
            value=vocab_start,
            expected="the same choice on every rank",
        )
    if not any(given):
        starts, acc = [], 0
        for _, s in pairs:
            starts.append(acc)
            acc += s
        pairs = [(st, s) for st, (_, s) in zip(starts, pairs)]
    C = sum(s for _, s in pairs)
    pos = 0
    for st, s in sorted(pairs):
        if st != pos:
            raise ShapeMismatchError(
                f"the vocabulary shards (start, size) per rank {pairs} do not tile [0, {C}): "
                f"expected a shard starting at {pos}, found one at {st}",
                argument="vocab_start",
                value=pairs,
                expected="contiguous, non-overlapping shards covering every class once",
            )
        pos += s
    start = pairs[rank][0]
    return _Layout(
        group=group, world=world, rank=rank, start=start, size=size, n_classes=C,
        max_size=max(s for _, s in pairs),
    )  # fmt: skip


def _dist_merger(dist: Any, group: Any) -> Any:
    """Merge this rank's per-example statistics with every other rank's: one MAX and one
    SUM all-reduce. Exact: the sum of exponentials is ``1 + rest`` with every term of
    ``rest`` non-negative (the ranks holding the maximum count how many they are)."""

    def merge(st: _Stats) -> _Stats:
        nan = torch.isnan(st.m)
        m_loc = torch.where(nan, -math.inf, st.m)
        m = m_loc.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        cols = _rebase(replace(st, m=m_loc), m)
        cols.append(nan.to(m.dtype))
        pack = torch.stack(cols, 1)
        dist.all_reduce(pack, op=dist.ReduceOp.SUM, group=group)
        total = list(pack.unbind(1))
        any_nan = total.pop() > 0
        return _from_rebased(torch.where(any_nan, math.nan, m), total, st)

    return merge


# --------------------------------------------------------------------------------------
# Sharded logits
# --------------------------------------------------------------------------------------


@dataclass
class _ShardCall:
    cfg: _Config
    tgt: _Targets
    layout: _Layout
    rows: int  # rows per float32 work block


class _VocabParallelCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    @_disable_compile
    def forward(ctx: Any, logits: Tensor, call: _ShardCall) -> Tensor:  # type: ignore[override]
        cfg, tgt, lay = call.cfg, call.tgt, call.layout
        N, Vl = logits.shape
        cdt = cfg.cdt
        r = call.rows
        work = torch.empty(r * Vl, dtype=cdt, device=logits.device)
        tbuf = torch.empty(r * Vl, dtype=cdt, device=logits.device) if cfg.cap is not None else None
        parts = []
        for r0 in range(0, N, r):
            r1 = min(N, r0 + r)
            k = r1 - r0
            w = _contig_view(work, k, Vl)
            w.copy_(logits[r0:r1])
            t = None if tbuf is None else _contig_view(tbuf, k, Vl)
            rows = tgt.rows(r0, r1)
            q = None if rows.q is None else rows.q.to(cdt)
            st = _block_stats(w, t, rows, lay.start, cfg, q)
            st.u = None
            parts.append(st)
        local = _cat_local(parts, logits.new_empty(0, dtype=cdt), tgt, cfg)
        local.wsum = cfg.block_weight_sum(lay.start, Vl)
        merged = _dist_merger(_dist(), lay.group)(local).finalize()
        loss = _row_loss(merged, tgt, cfg)
        ctx.call = call
        ctx.stats = merged
        ctx.save_for_backward(logits)
        return _reduce(loss, tgt, cfg)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_disable_compile
    def backward(ctx: Any, grad_output: Tensor) -> Any:  # type: ignore[override]
        call: _ShardCall = ctx.call
        (logits,) = ctx.saved_tensors
        cfg, tgt, lay = call.cfg, call.tgt, call.layout
        N, Vl = logits.shape
        cdt = cfg.cdt
        g = _upstream(tgt, cfg, N, grad_output, logits.device)
        grad = torch.empty_like(logits)
        r = call.rows
        same = logits.dtype == cdt
        work = None if same else torch.empty(r * Vl, dtype=cdt, device=logits.device)
        tbuf = torch.empty(r * Vl, dtype=cdt, device=logits.device) if cfg.cap is not None else None
        for r0 in range(0, N, r):
            r1 = min(N, r0 + r)
            k = r1 - r0
            w = grad[r0:r1] if same else _contig_view(work, k, Vl)  # type: ignore[arg-type]
            w.copy_(logits[r0:r1])
            t = None if tbuf is None else _contig_view(tbuf, k, Vl)
            st = _slice_stats(ctx.stats, r0, r1)
            _softmax_from_lse(w, t, st, cfg)
            rows = tgt.rows(r0, r1)
            q = None if rows.q is None else rows.q.to(cdt)
            _block_grad(w, t, None, st, rows, lay.start, cfg, g[r0:r1], q)
            if not same:
                grad[r0:r1].copy_(w)
        return grad, None


def _cat_local(parts: list, empty: Tensor, tgt: _Targets, cfg: _Config) -> _Stats:
    if parts:
        st = _cat_stats(parts)
        assert st is not None
        return st
    # no rows: empty statistics of the right kind
    e = empty
    return _Stats(
        m=e, rest=e, zy=e if tgt.kind == "index" else None,
        smooth=e if cfg.eps > 0 else None, sq=e if tgt.kind == "soft" else None,
        dq=e if tgt.kind == "soft" else None,
    )  # fmt: skip


def vocab_parallel_cross_entropy(
    logits_shard: Tensor,
    target: Tensor,
    *,
    group: Any = None,
    vocab_start: Optional[int] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    ignore_index: Optional[int] = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
) -> Tensor:
    r"""Cross-entropy of logits whose class axis is sharded over the ranks of ``group``.

    Every rank passes its shard ``logits_shard`` (..., V_r) of the full (..., C) logits
    (class axis last) and the same ``target``; every rank gets the loss of the full
    logits, and the gradient of its own shard. No rank ever holds the full logits: the
    per-example maximum, sum of exponentials, target logit and smoothing sums are merged
    with one MAX and one SUM all-reduce; the backward pass needs no communication.

    Parameters
    ----------
    logits_shard : Tensor of shape (..., V_r)
        This rank's classes ``[vocab_start, vocab_start + V_r)``. Shards may differ in
        size (a vocabulary that does not divide evenly).
    target : Tensor
        Global class indices in ``[0, C)`` of shape ``logits_shard.shape[:-1]`` (the same
        on every rank), or this rank's slice of probability targets, shaped like the shard.
    group : ProcessGroup, optional
        The ranks sharing the vocabulary (default: the default group). Any backend.
    vocab_start : int, optional
        This rank's first class. Default: shards are laid out in rank order. (One
        all-gather of the shard sizes happens on every call to know ``C``.)
    weight : Tensor of shape (C,), optional
        Class weights for the *whole* vocabulary (the same on every rank).
    reduction, ignore_index, label_smoothing, z_loss, softcap
        As in :func:`crossent.torch.linear_cross_entropy`; label smoothing spreads
        ``eps`` over the global ``C`` classes.

    Returns
    -------
    Tensor
        The loss (identical on every rank): a scalar, or ``logits_shard.shape[:-1]`` with
        ``reduction="none"``; float32 for half-precision logits.

    Notes
    -----
    Every rank must call with the same target, options and batch shape (collectives are
    matched by order).
    """
    return _vocab_parallel_cross_entropy(
        logits_shard, target, group, vocab_start, weight, reduction, ignore_index,
        label_smoothing, z_loss, softcap,
    )  # fmt: skip


@_disable_compile  # collectives and chunk loops run eagerly: one graph break
def _vocab_parallel_cross_entropy(
    logits_shard: Any,
    target: Any,
    group: Any,
    vocab_start: Any,
    weight: Any,
    reduction: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
) -> Tensor:
    dist = _dist()
    x = _check_tensor("logits_shard", logits_shard)
    _check_float("logits_shard", x)
    opts = _check_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ShapeMismatchError(
            f"logits_shard has shape {tuple(x.shape)}; expected (..., V_r) with V_r >= 1 "
            "classes of this rank",
            argument="logits_shard",
            value=tuple(x.shape),
            expected="(..., V_r), V_r >= 1",
        )
    Vl = x.shape[-1]
    lay = _layout(dist, group, Vl, vocab_start, x.device)
    batch = tuple(x.shape[:-1])
    cfg, tgt = _prepare_config(x, "logits_shard", target, weight, Vl, lay.n_classes, opts)
    rows = max(1, _WORK_BUDGET // (Vl * 4))
    call = _ShardCall(cfg=cfg, tgt=tgt, layout=lay, rows=rows)
    out = _VocabParallelCrossEntropyFunction.apply(x.reshape(-1, Vl), call)
    return out.reshape(batch) if cfg.reduction == "none" else out


# --------------------------------------------------------------------------------------
# Sharded output projection
# --------------------------------------------------------------------------------------


def _input_grad_reducer(dist: Any, group: Any) -> Any:
    """Sum the gradient of the replicated input over the ranks (half precision in float32)."""

    def reduce(dh: Tensor) -> Tensor:
        if dh.dtype in (torch.float32, torch.float64):
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=group)
            return dh
        acc = dh.to(torch.float32)
        dist.all_reduce(acc, op=dist.ReduceOp.SUM, group=group)
        return dh.copy_(acc)

    return reduce


def vocab_parallel_linear_cross_entropy(
    input: Tensor,
    linear_weight_shard: Tensor,
    target: Tensor,
    *,
    linear_bias: Optional[Tensor] = None,
    group: Any = None,
    vocab_start: Optional[int] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    ignore_index: Optional[int] = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    chunk_size: Any = None,
    reduce_input_grad: bool = True,
) -> Tensor:
    r""":func:`crossent.torch.linear_cross_entropy` with the output projection sharded over
    the vocabulary: each rank holds ``linear_weight_shard`` (V_r, H) (and its slice of
    ``linear_bias``), the same ``input`` (..., H) and the same ``target``.

    Rows are processed in chunks as in the single-process function; for each chunk the
    per-example statistics are merged across ranks (one MAX and one SUM all-reduce of a
    few numbers per row), so no rank ever holds more than a ``(chunk, V_r)`` block of
    logits. Every rank returns the full loss and the gradients of its own weight and
    bias shard; the gradient of ``input`` is summed over the ranks (one all-reduce; pass
    ``reduce_input_grad=False`` to get this rank's partial sum instead, e.g. when a
    tensor-parallel layer before it all-reduces in its own backward).

    Parameters are those of :func:`crossent.torch.linear_cross_entropy` and of
    :func:`vocab_parallel_cross_entropy` (``group``, ``vocab_start``, ``weight`` for the
    whole vocabulary, label smoothing over the global class count). ``chunk_size`` must be
    the same on every rank (the default is: it is planned from the largest shard).
    """
    return _vocab_parallel_linear_cross_entropy(
        input, linear_weight_shard, target, linear_bias, group, vocab_start, weight, reduction,
        ignore_index, label_smoothing, z_loss, softcap, chunk_size, reduce_input_grad,
    )  # fmt: skip


@_disable_compile  # collectives and chunk loops run eagerly: one graph break
def _vocab_parallel_linear_cross_entropy(
    input: Any,
    linear_weight_shard: Any,
    target: Any,
    linear_bias: Any,
    group: Any,
    vocab_start: Any,
    weight: Any,
    reduction: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    chunk_size: Any,
    reduce_input_grad: Any,
) -> Tensor:
    dist = _dist()
    W = _check_tensor("linear_weight_shard", linear_weight_shard)
    h = _check_tensor("input", input)
    if W.dim() != 2 or W.shape[0] == 0:
        raise ShapeMismatchError(
            f"linear_weight_shard has shape {tuple(W.shape)}; expected (V_r, in_features) "
            "with V_r >= 1",
            argument="linear_weight_shard",
            value=tuple(W.shape),
            expected="(V_r, in_features)",
        )
    if not isinstance(reduce_input_grad, bool):
        raise InvalidOptionError(
            f"reduce_input_grad = {reduce_input_grad!r} is not a bool",
            argument="reduce_input_grad",
            value=reduce_input_grad,
            expected="True or False",
        )
    lay = _layout(dist, group, W.shape[0], vocab_start, W.device)
    h2, W, b, call, batch = _prepare_linear(
        h, W, target, linear_bias, weight, reduction, ignore_index, label_smoothing, z_loss,
        softcap, chunk_size, None, n_classes=lay.n_classes, vocab_start=lay.start,
        v_plan=lay.max_size,
    )  # fmt: skip
    call.merger = _dist_merger(dist, lay.group)
    if reduce_input_grad:
        call.finish_dh = _input_grad_reducer(dist, lay.group)
    return _apply_linear(h2, W, b, call, batch)
