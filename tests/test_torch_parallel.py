"""Vocab-parallel cross-entropy: 2 and 3 gloo processes on this machine give the loss and
gradients of the single-process computation, for every option, with vocabularies that do
not divide evenly over the ranks."""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import crossent  # noqa: E402

N, H = 23, 6

# (class weights, label_smoothing, z_loss, softcap, soft targets, bias, reduction, chunk_size)
COMBOS = [
    (False, 0.0, 0.0, None, False, False, "mean", None),
    (True, 0.0, 0.0, None, False, True, "sum", 4),
    (False, 0.3, 0.0, None, False, False, "none", (5, 3)),
    (True, 0.3, 0.0, None, False, True, "mean", 7),
    (False, 0.0, 1e-2, None, False, False, "mean", (4, 4)),
    (False, 0.0, 0.0, 2.5, False, True, "none", None),
    (True, 0.2, 1e-2, 2.5, False, True, "mean", 5),
    (True, 1.0, 0.0, None, False, False, "sum", None),
    (False, 0.0, 0.0, None, True, False, "mean", 4),
    (True, 0.2, 1e-2, 3.0, True, True, "none", (6, 5)),
]


def reference(z, y, weight, reduction, eps, zl, cap):
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    lse = torch.logsumexp(z, -1)
    if y.is_floating_point():
        C = z.shape[-1]
        wq = ((1 - eps) * y + eps / C) * (weight if weight is not None else 1.0)
        loss = -(wq * torch.log_softmax(z, -1)).sum(-1) + zl * lse**2
        den = loss.new_tensor(float(loss.numel()))
    else:
        loss = F.cross_entropy(z, y, weight=weight, label_smoothing=eps, reduction="none")
        valid = y != -100
        wy = (weight[torch.where(valid, y, 0)] if weight is not None else torch.ones_like(loss)) * valid
        loss = loss + zl * wy * lse**2
        den = wy.sum()
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / den


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"{what}: {m}")


def _check_combo(i, combo, rank, start, stop, V):
    from crossent.torch._parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

    weighted, eps, zl, cap, soft, bias, reduction, chunk = combo
    g = torch.Generator().manual_seed(100 + i)
    dt = torch.float64
    h = torch.randn(N, H, generator=g, dtype=dt)
    W = torch.randn(V, H, generator=g, dtype=dt)
    b = torch.randn(V, generator=g, dtype=dt) if bias else None
    w = torch.rand(V, generator=g, dtype=dt) + 0.1 if weighted else None
    if soft:
        y = torch.softmax(2 * torch.randn(N, V, generator=g, dtype=dt), -1)
    else:
        y = torch.randint(0, V, (N,), generator=g)
        y[::4] = -100
    go = torch.randn(N, generator=g, dtype=dt) if reduction == "none" else torch.tensor(0.7, dtype=dt)
    y_mine = y[:, start:stop] if soft else y
    tag = f"combo {i} {combo} rank {rank}"

    # single-process reference on the full vocabulary
    hr, Wr = h.clone().requires_grad_(), W.clone().requires_grad_()
    br = b.clone().requires_grad_() if bias else None
    ref = reference(F.linear(hr, Wr, br), y, w, reduction, eps, zl, cap)
    ref_g = torch.autograd.grad(ref, [hr, Wr] + ([br] if bias else []), go)

    # sharded output projection
    hp = h.clone().requires_grad_()
    Wp = W[start:stop].clone().requires_grad_()
    bp = b[start:stop].clone().requires_grad_() if bias else None
    out = vocab_parallel_linear_cross_entropy(
        hp, Wp, y_mine, linear_bias=bp, weight=w, reduction=reduction, label_smoothing=eps,
        z_loss=zl, softcap=cap, chunk_size=chunk,
    )  # fmt: skip
    _close(out, ref, f"{tag} linear loss")
    got = torch.autograd.grad(out, [hp, Wp] + ([bp] if bias else []), go)
    _close(got[0], ref_g[0], f"{tag} d input")
    _close(got[1], ref_g[1][start:stop], f"{tag} d weight shard")
    if bias:
        _close(got[2], ref_g[2][start:stop], f"{tag} d bias shard")

    # sharded logits
    z = F.linear(h, W, b)
    zr = z.clone().requires_grad_()
    zs = z[:, start:stop].clone().requires_grad_()
    out = vocab_parallel_cross_entropy(
        zs, y_mine, weight=w, reduction=reduction, label_smoothing=eps, z_loss=zl, softcap=cap
    )
    ref = reference(zr, y, w, reduction, eps, zl, cap)
    _close(out, ref, f"{tag} logits loss")
    _close(torch.autograd.grad(out, zs, go)[0], torch.autograd.grad(ref, zr, go)[0][:, start:stop], f"{tag} d logits")


def _worker(rank, world, port, sizes):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        _worker_checks(rank, world, sizes)
    finally:
        dist.destroy_process_group()


def _worker_checks(rank, world, sizes):
    from crossent.torch._linear import linear_cross_entropy
    from crossent.torch._parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

    V = sum(sizes)
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    for i, combo in enumerate(COMBOS):
        _check_combo(i, combo, rank, start, stop, V)

    # shards given by vocab_start, in reverse rank order
    rev = list(reversed(sizes))
    my_start = sum(rev[: world - 1 - rank])
    g = torch.Generator().manual_seed(7)
    z = torch.randn(N, V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (N,), generator=g)
    zs = z[:, my_start : my_start + sizes[rank]].clone().requires_grad_()
    out = vocab_parallel_cross_entropy(zs, y, vocab_start=my_start, label_smoothing=0.1)
    _close(out, F.cross_entropy(z, y, label_smoothing=0.1), "vocab_start layout")

    # a masked (-inf) class range, a whole shard of -inf on one row
    zm = z.clone()
    zm[0, : sizes[0]] = -torch.inf  # rank 0's whole shard
    zm[1, 3] = -torch.inf
    y2 = y.clone()
    y2[0] = V - 1
    zs = zm[:, start:stop].clone().requires_grad_()
    out = vocab_parallel_cross_entropy(zs, y2, reduction="none")
    _close(out, F.cross_entropy(zm, y2, reduction="none"), "masked classes")
    assert torch.isfinite(torch.autograd.grad(out.sum(), zs)[0]).all()

    # half precision: the sharded computation equals the single-process one
    hb = torch.randn(40, 16, generator=g).bfloat16()
    Wb = (torch.randn(V * 3, 16, generator=g) * 0.3).bfloat16()
    yb = torch.randint(0, V * 3, (40,), generator=g)
    s3 = [3 * s for s in sizes]
    a, c = sum(s3[:rank]), sum(s3[: rank + 1])
    h1, W1 = hb.clone().requires_grad_(), Wb.clone().requires_grad_()
    single = linear_cross_entropy(h1, W1, yb, label_smoothing=0.1, z_loss=1e-3)
    sg = torch.autograd.grad(single, [h1, W1])
    h2, W2 = hb.clone().requires_grad_(), Wb[a:c].clone().requires_grad_()
    par = vocab_parallel_linear_cross_entropy(h2, W2, yb, label_smoothing=0.1, z_loss=1e-3)
    pg = torch.autograd.grad(par, [h2, W2])
    assert par.dtype == torch.float32 and pg[1].dtype == torch.bfloat16
    torch.testing.assert_close(par, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pg[0].float(), sg[0].float(), rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(pg[1].float(), sg[1][a:c].float(), rtol=2e-2, atol=1e-3)

    # backward twice, and the partial input gradient
    h3, W3 = hb.double().requires_grad_(), Wb[a:c].double().requires_grad_()
    loss = vocab_parallel_linear_cross_entropy(h3, W3, yb, chunk_size=7)
    g1 = torch.autograd.grad(loss, [h3, W3], retain_graph=True)
    g2 = torch.autograd.grad(loss, [h3, W3])
    _close(g1[0], g2[0], "second backward")
    part = vocab_parallel_linear_cross_entropy(h3, W3, yb, reduce_input_grad=False)
    (dpart,) = torch.autograd.grad(part, [h3])
    dist.all_reduce(dpart)
    _close(dpart, g1[0], "reduce_input_grad=False")

    # errors are raised on every rank alike (after the same collectives)
    bad = vocab_parallel_cross_entropy
    try:
        bad(zs.detach(), y, vocab_start=0 if rank == 0 else None)
    except crossent.CrossEntropyError as exc:
        assert exc.argument == "vocab_start"
    else:  # pragma: no cover
        raise AssertionError("mixed vocab_start accepted")
    try:
        bad(zs.detach(), y, vocab_start=0)  # every shard claims the same range
    except crossent.CrossEntropyError as exc:
        assert "do not tile" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("overlapping shards accepted")
    y_bad = y.clone()
    y_bad[2] = V
    try:
        bad(zs.detach(), y_bad)
    except IndexError as exc:
        assert isinstance(exc, crossent.CrossEntropyError) and f"[0, {V})" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("out-of-range target accepted")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sizes", [[10, 7], [5, 13, 11]], ids=["2 ranks", "3 ranks"])
def test_matches_single_process(sizes):
    ctx = mp.spawn(_worker, args=(len(sizes), _free_port(), sizes), nprocs=len(sizes), join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:  # pragma: no cover - a hang, not a result
            for p in ctx.processes:
                p.kill()
            pytest.fail("the gloo processes did not finish within 240 s")


def test_needs_an_initialized_process_group():
    from crossent.torch._parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(crossent.CrossEntropyError, match="init_process_group"):
        vocab_parallel_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(crossent.CrossEntropyError, match="init_process_group"):
        vocab_parallel_linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2]))


def test_exported_from_crossent_torch():
    import crossent.torch as ct
    from crossent.torch import _parallel

    assert ct.vocab_parallel_cross_entropy is _parallel.vocab_parallel_cross_entropy
    assert ct.vocab_parallel_linear_cross_entropy is _parallel.vocab_parallel_linear_cross_entropy
