"""crossent.torch.linear_cross_entropy: equal to the naive linear + cross-entropy.

The reference is ``F.cross_entropy(F.linear(h, W, b), y, ...)`` in float64 (plus the z-loss
and softcap terms, which PyTorch lacks), differentiated by autograd. Chunk sizes are chosen
not to divide N or V, and ``(rows, classes)`` chunks exercise the vocabulary-tiled path.
"""

from __future__ import annotations

import itertools
import math
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent  # noqa: E402
from crossent.torch import _linear  # noqa: E402
from crossent.torch._linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402

N, H, V = 37, 8, 29

# option sets: (weight, label_smoothing, z_loss, softcap, soft targets)
OPTION_SETS = {
    "plain": (False, 0.0, 0.0, None, False),
    "weight": (True, 0.0, 0.0, None, False),
    "smoothing": (False, 0.2, 0.0, None, False),
    "weight+smoothing": (True, 0.2, 0.0, None, False),
    "z_loss": (False, 0.0, 1e-2, None, False),
    "softcap": (False, 0.0, 0.0, 3.0, False),
    "all": (True, 0.3, 1e-2, 2.5, False),
    "smoothing=1": (True, 1.0, 0.0, None, False),
    "soft": (False, 0.0, 0.0, None, True),
    "soft+weight+smoothing": (True, 0.2, 0.0, None, True),
    "soft+all": (True, 0.1, 1e-2, 3.0, True),
}
CHUNKS = {"default": None, "rows=5": 5, "rows=7,classes=6": (7, 6)}


def reference(z, y, *, weight=None, reduction="mean", ignore_index=-100, eps=0.0, zl=0.0, cap=None):
    """The naive loss from full logits (float64), with crossent's z-loss and softcap."""
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    lse = torch.logsumexp(z, -1)
    if y.is_floating_point():
        C = z.shape[-1]
        wq = ((1 - eps) * y + eps / C) * (weight if weight is not None else 1.0)
        loss = -(wq * torch.log_softmax(z, -1)).sum(-1) + zl * lse**2
        den = loss.new_tensor(float(loss.numel()))
    else:
        loss = F.cross_entropy(
            z, y, weight=weight, ignore_index=ignore_index, label_smoothing=eps, reduction="none"
        )
        valid = y != ignore_index
        wy = weight[torch.where(valid, y, 0)] if weight is not None else torch.ones_like(loss)
        wy = wy * valid
        loss = loss + zl * wy * lse**2
        den = wy.sum()
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / den


def make(seed, *, n=N, h=H, v=V, soft=False, weighted=False, bias=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    W = torch.randn(v, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    w = torch.rand(v, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    if soft:
        y = torch.softmax(2 * torch.randn(n, v, generator=g, dtype=torch.float64), -1)
    else:
        y = torch.randint(0, v, (n,), generator=g)
        y[::5] = -100
    return hid, W, b, w, y


def grads_of(loss, params, grad_output):
    return torch.autograd.grad(loss, params, grad_output)


@pytest.mark.parametrize("chunk", list(CHUNKS.values()), ids=list(CHUNKS))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", list(OPTION_SETS.values()), ids=list(OPTION_SETS))
def test_matches_naive(opts, reduction, bias, chunk):
    weighted, eps, zl, cap, soft = opts
    hid, W, b, w, y = make(7, soft=soft, weighted=weighted, bias=bias)
    params = [hid, W] + ([b] if bias else [])
    go = torch.randn(N, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)

    out = linear_cross_entropy(
        hid, W, y, linear_bias=b, weight=w, reduction=reduction, label_smoothing=eps,
        z_loss=zl, softcap=cap, chunk_size=chunk,
    )  # fmt: skip
    ref = reference(F.linear(hid, W, b), y, weight=w, reduction=reduction, eps=eps, zl=zl, cap=cap)
    assert out.dtype == torch.float64 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads_of(out, params, go), grads_of(ref, params, go)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_float32_matches_naive_and_default_plan_tiles_huge_vocabularies(monkeypatch):
    """Shrink the memory budget so that the default plan must tile the vocabulary."""
    hid, W, b, w, y = make(3, n=50, v=300, bias=True, weighted=True, dtype=torch.float32)
    ref = reference(F.linear(hid, W, b).double(), y, weight=w.double(), eps=0.1, zl=1e-3)
    ref_g = grads_of(ref, [hid, W, b], None)
    for budget in (None, 300 * 4 * 4):
        if budget is not None:
            monkeypatch.setattr(_linear, "_LOGITS_BUDGET", budget)
            monkeypatch.setattr(_linear, "_WORK_BUDGET", 64 * 4 * 16)
            plan = _linear._plan(50, 300, H, torch.float32, _cfg(), None, None)
            assert plan.tiled and plan.tile < 300
        out = linear_cross_entropy(hid, W, y, linear_bias=b, weight=w, label_smoothing=0.1, z_loss=1e-3)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=1e-6)
        for got, want in zip(grads_of(out, [hid, W, b], None), ref_g):
            torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-6)


def _cfg():
    return _linear._Config(n_classes=V, kind="index", eps=0.0, z_loss=0.0, cap=None, reduction="mean", cdt=torch.float32)


def test_unfused_softmax_path(monkeypatch):
    """The path used off the CPU (explicit exp instead of the in-place fused softmax)."""
    monkeypatch.setattr(_linear, "_softmax_inplace", lambda z: False)
    for opts in OPTION_SETS.values():
        weighted, eps, zl, cap, soft = opts
        hid, W, b, w, y = make(11, soft=soft, weighted=weighted, bias=True)
        out = linear_cross_entropy(
            hid, W, y, linear_bias=b, weight=w, label_smoothing=eps, z_loss=zl, softcap=cap,
            chunk_size=6,
        )  # fmt: skip
        ref = reference(F.linear(hid, W, b), y, weight=w, eps=eps, zl=zl, cap=cap)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        for got, want in zip(grads_of(out, [hid, W, b], None), grads_of(ref, [hid, W, b], None)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def _rel(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("policy", [None, "compact", "accurate"])
@pytest.mark.parametrize("chunk", [None, 64, (100, 700)], ids=["default", "rows", "tiles"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision(dtype, chunk, policy):
    """Half-precision weights: loss in float32 close to the float64 loss of the rounded
    inputs, gradients in the input dtype about as accurate as the naive half path."""
    g = torch.Generator().manual_seed(1)
    n, h, v = 500, 64, 1500
    h0 = torch.randn(n, h, generator=g).to(dtype)
    W0 = (torch.randn(v, h, generator=g) * 0.1).to(dtype)
    b0 = torch.randn(v, generator=g).to(dtype)
    y = torch.randint(0, v, (n,), generator=g)
    y[::7] = -100
    kw = dict(label_smoothing=0.1)

    def run(fn, cast):
        p = [x.detach().clone().to(cast).requires_grad_() for x in (h0, W0, b0)]
        loss = fn(*p)
        return loss, torch.autograd.grad(loss, p)

    ref, ref_g = run(lambda a, B, c: F.cross_entropy(F.linear(a, B, c), y, **kw), torch.float64)
    naive, naive_g = run(lambda a, B, c: F.cross_entropy(F.linear(a, B, c), y, **kw), dtype)
    opts = None if policy is None else torch.nn.LinearCrossEntropyOptions(acc_policy=policy)
    ours, ours_g = run(
        lambda a, B, c: linear_cross_entropy(a, B, y, linear_bias=c, chunk_size=chunk, options=opts, **kw),
        dtype,
    )
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) <= 1e-4 * abs(ref.item())
    for got, nv, want in zip(ours_g, naive_g, ref_g):
        assert got.dtype == dtype
        naive_err = _rel(nv, want) if torch.isfinite(nv).all() else 1.0
        assert _rel(got, want) <= max(1.6 * naive_err, 2 * float(torch.finfo(dtype).eps))


def test_batch_shapes_and_unbatched_input():
    hid, W, _, _, y = make(2, n=12)
    h3 = hid.detach().reshape(3, 4, H).requires_grad_()
    out = linear_cross_entropy(h3, W, y.reshape(3, 4), reduction="none")
    assert out.shape == (3, 4)
    ref = reference(F.linear(h3.reshape(-1, H), W), y, reduction="none").reshape(3, 4)
    torch.testing.assert_close(out, ref)
    one = linear_cross_entropy(hid[0], W, y[1], reduction="none")
    assert one.shape == ()
    torch.testing.assert_close(one, F.cross_entropy(F.linear(hid[0], W), y[1], reduction="none"))


def test_ignore_index_semantics():
    hid, W, _, _, y = make(4)
    y_all = torch.full((N,), -100)
    loss = linear_cross_entropy(hid, W, y_all)
    assert torch.isnan(loss)  # 0 / 0, as PyTorch
    gh, gw = torch.autograd.grad(loss, [hid, W])
    assert not gh.any() and not gw.any()
    assert linear_cross_entropy(hid, W, y_all, reduction="sum").item() == 0.0
    y7 = torch.where(y == -100, 7, y)
    torch.testing.assert_close(
        linear_cross_entropy(hid, W, y7, ignore_index=7),
        F.cross_entropy(F.linear(hid, W), y7, ignore_index=7),
    )
    # None means -100, as in torch.nn.functional.linear_cross_entropy
    torch.testing.assert_close(linear_cross_entropy(hid, W, y, ignore_index=None), linear_cross_entropy(hid, W, y))


def test_ignored_rows_get_zero_gradient_even_with_nan():
    hid, W, _, _, y = make(5)
    h = hid.detach().clone()
    h[0] = math.nan  # y[0] is ignored
    h.requires_grad_()
    loss = linear_cross_entropy(h, W, y)
    assert torch.isfinite(loss)
    (gh,) = torch.autograd.grad(loss, [h])
    assert not gh[0].any() and torch.isfinite(gh).all()
    # (the weight gradient sees 0 * NaN through the matmul, exactly as the naive path)
    h2 = hid.detach().clone()
    h2[1] = math.nan  # not ignored: its loss is NaN
    assert torch.isnan(linear_cross_entropy(h2, W, y, reduction="none")[1])


def test_confident_rows_keep_relative_precision():
    """A tiny loss (p_y within 1e-7 of 1) keeps its relative precision in float32."""
    W = torch.eye(4, dtype=torch.float32) * 20.0
    hid = torch.tensor([[1.0, 0.2, 0.1, 0.0], [0.9, 0.0, 0.0, 0.3]], requires_grad=True)
    y = torch.tensor([0, 0])
    out = linear_cross_entropy(hid, W, y, reduction="none")
    ref = reference(F.linear(hid.double(), W.double()), y, reduction="none")
    assert (ref < 1e-5).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=0)
    (gh,) = torch.autograd.grad(out.sum(), [hid])
    (gr,) = torch.autograd.grad(ref.sum(), [hid])
    torch.testing.assert_close(gh.double(), gr.double(), rtol=1e-4, atol=1e-12)


def test_large_logits_are_finite():
    hid, W, _, _, y = make(6, dtype=torch.float32)
    big = (hid.detach() * 1e4).requires_grad_()
    out = linear_cross_entropy(big, W, y, label_smoothing=0.1)
    ref = reference(F.linear(big.double(), W.double()), y, eps=0.1)
    assert torch.isfinite(out)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=0)


def test_backward_twice_and_partial_requires_grad():
    hid, W, b, _, y = make(8, bias=True)
    loss = linear_cross_entropy(hid, W, y, linear_bias=b, chunk_size=5)
    g1 = torch.autograd.grad(loss, [hid, W, b], retain_graph=True)
    g2 = torch.autograd.grad(loss, [hid, W, b])  # recomputed from the saved statistics
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c)
    # only the weight requires grad
    h0 = hid.detach()
    loss = linear_cross_entropy(h0, W, y)
    (gw,) = torch.autograd.grad(loss, [W])
    torch.testing.assert_close(gw, torch.autograd.grad(F.cross_entropy(F.linear(h0, W), y), [W])[0])
    with torch.no_grad():
        out = linear_cross_entropy(hid, W, y)
    assert not out.requires_grad
    torch.testing.assert_close(out, F.cross_entropy(F.linear(hid, W), y).detach())


def test_grad_accumulates_into_existing_grads():
    hid, W, _, _, y = make(9)
    for _ in range(2):
        linear_cross_entropy(hid, W, y).backward()
    ref_h, ref_w = torch.autograd.grad(F.cross_entropy(F.linear(hid, W), y), [hid, W])
    torch.testing.assert_close(hid.grad, 2 * ref_h)
    torch.testing.assert_close(W.grad, 2 * ref_w)


def test_no_logits_sized_allocation():
    """The chunked path never allocates anything near the (N, V) logits."""
    from torch.profiler import ProfilerActivity, profile

    n, h, v = 512, 16, 4096
    hid, W, _, _, y = make(10, n=n, h=h, v=v, dtype=torch.float32)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        linear_cross_entropy(hid, W, y, chunk_size=64).backward()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert sizes, "the profiler recorded no allocations"
    assert max(sizes) <= n * v * 4 // 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        F.cross_entropy(F.linear(hid, W), y).backward()
    assert max(e.cpu_memory_usage for e in prof.events()) >= n * v * 4  # the check can see it


def test_drop_in_for_torch_linear_cross_entropy():
    hid, W, b, w, y = make(12, bias=True, weighted=True, dtype=torch.float32)
    kw = dict(linear_bias=b, weight=w.float(), label_smoothing=0.0, ignore_index=None)
    ours = linear_cross_entropy(hid, W, y, **kw, options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=5))
    theirs = F.linear_cross_entropy(hid, W, y, **kw)
    torch.testing.assert_close(ours, theirs)
    for a, c in zip(torch.autograd.grad(ours, [hid, W, b]), torch.autograd.grad(theirs, [hid, W, b])):
        torch.testing.assert_close(a, c)


def test_module_matches_torch_module():
    torch.manual_seed(0)
    w = torch.rand(V) + 0.5
    ours = LinearCrossEntropyLoss(H, V, bias=True, weight=w, label_smoothing=0.1, chunk_size=6)
    theirs = torch.nn.LinearCrossEntropyLoss(H, V, bias=True, weight=w, label_smoothing=0.1)
    theirs.load_state_dict(ours.state_dict())
    hid = torch.randn(N, H)
    y = torch.randint(0, V, (N,))
    a, c = ours(hid, y), theirs(hid, y)
    torch.testing.assert_close(a, c)
    a.backward()
    c.backward()
    torch.testing.assert_close(ours.linear.weight.grad, theirs.linear.weight.grad)
    torch.testing.assert_close(ours.linear.bias.grad, theirs.linear.bias.grad)
    assert "label_smoothing=0.1" in repr(ours)
    zl = LinearCrossEntropyLoss(H, V, z_loss=1e-3, softcap=5.0, reduction="sum")
    out = zl(hid, y)
    ref = reference(F.linear(hid.double(), zl.linear.weight.double()), y, reduction="sum", zl=1e-3, cap=5.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_exported_from_crossent_torch():
    import crossent.torch as ct

    assert ct.linear_cross_entropy is linear_cross_entropy
    assert ct.LinearCrossEntropyLoss is LinearCrossEntropyLoss


# ----------------------------------------------------------------------------- errors


def _args():
    hid, W, b, w, y = make(13, bias=True, weighted=True)
    return hid, W, y


BAD_CALLS = {
    "reduction": (dict(reduction="avg"), crossent.CrossEntropyError, "reduction"),
    "label_smoothing": (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    "z_loss": (dict(z_loss=-1.0), ValueError, "z_loss"),
    "softcap": (dict(softcap=0.0), ValueError, "softcap"),
    "softcap_bool": (dict(softcap=True), ValueError, "softcap"),
    "chunk_size": (dict(chunk_size=0), ValueError, "chunk_size"),
    "chunk_pair": (dict(chunk_size=(4, 0)), ValueError, "chunk_size"),
    "weight_shape": (dict(weight=torch.ones(V + 1)), ValueError, "weight"),
    "weight_negative": (dict(weight=-torch.ones(V)), ValueError, "weight"),
    "bias_shape": (dict(linear_bias=torch.zeros(V + 1, dtype=torch.float64)), ValueError, "linear_bias"),
    "bias_dtype": (dict(linear_bias=torch.zeros(V)), TypeError, "linear_bias"),
    "ignore_index": (dict(ignore_index=1.5), ValueError, "ignore_index"),
    "options": (dict(options="fast"), ValueError, "options"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_options(name):
    kw, exc, arg = BAD_CALLS[name]
    hid, W, y = _args()
    with pytest.raises(exc) as info:
        linear_cross_entropy(hid, W, y, **kw)
    assert isinstance(info.value, crossent.CrossEntropyError)
    assert info.value.argument == arg


def test_bad_targets_and_shapes():
    hid, W, y = _args()
    y_bad = y.clone()
    y_bad[3] = V
    with pytest.raises(IndexError) as info:
        linear_cross_entropy(hid, W, y_bad)
    assert isinstance(info.value, crossent.CrossEntropyError) and info.value.index == (3,)
    assert f"target[3] = {V}" in str(info.value)
    with pytest.raises(crossent.CrossEntropyError, match="class indices stored as floats"):
        linear_cross_entropy(hid, W, y.double())
    with pytest.raises(crossent.CrossEntropyError, match="dtype torch.bool"):
        linear_cross_entropy(hid, W, y > 0)
    with pytest.raises(crossent.CrossEntropyError, match="shape"):
        linear_cross_entropy(hid, W, y[:-1])
    soft = torch.softmax(torch.randn(N, V, dtype=torch.float64), -1)
    with pytest.raises(crossent.CrossEntropyError, match="ignore_index"):
        linear_cross_entropy(hid, W, soft, ignore_index=0)
    with pytest.raises(crossent.CrossEntropyError, match="outside"):
        linear_cross_entropy(hid, W, soft + 1)
    with pytest.raises(crossent.CrossEntropyError, match="requires grad"):
        linear_cross_entropy(hid, W, soft.clone().requires_grad_())
    with pytest.raises(crossent.CrossEntropyError, match="input has 8 features"):
        linear_cross_entropy(hid, W[:, :-1], y)
    with pytest.raises(crossent.CrossEntropyError, match="K-dimensional"):
        linear_cross_entropy(hid, W.reshape(V, 1, H), y)
    with pytest.raises(TypeError, match="same dtype"):
        linear_cross_entropy(hid, W.float(), y)
    with pytest.raises(TypeError, match="torch.Tensor"):
        linear_cross_entropy(hid.tolist(), W, y)
    with pytest.raises(TypeError, match="dtype"):
        linear_cross_entropy(hid.to(torch.int64), W.to(torch.int64), y)
    with pytest.raises(crossent.CrossEntropyError, match="out_features"):
        LinearCrossEntropyLoss(H, V, out_features=(2,))


def test_every_option_combination_quickly():
    """All 2**5 x 3 combinations once more, at one chunk size, on a smaller problem."""
    for weighted, eps, zl, cap, soft, reduction in itertools.product(
        [False, True], [0.0, 0.4], [0.0, 1e-2], [None, 2.0], [False, True], ["mean", "sum", "none"]
    ):
        hid, W, b, w, y = make(21, n=9, v=11, soft=soft, weighted=weighted, bias=True)
        out = linear_cross_entropy(
            hid, W, y, linear_bias=b, weight=w, reduction=reduction, label_smoothing=eps,
            z_loss=zl, softcap=cap, chunk_size=(4, 5),
        )  # fmt: skip
        ref = reference(F.linear(hid, W, b), y, weight=w, reduction=reduction, eps=eps, zl=zl, cap=cap)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        go = torch.ones_like(out)
        for a, c in zip(grads_of(out, [hid, W, b], go), grads_of(ref, [hid, W, b], go)):
            torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ a real client


def _tiny_lm():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tiny_lm.py"
    spec = importlib.util.spec_from_file_location("tiny_lm_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_language_model_trains():
    """The example's decoder-only LM, a few steps on tiny sizes: the fused loss follows
    the naive one step by step (same seed, same data) and the loss goes down."""
    lm = _tiny_lm()
    cfg = lm.Config(vocab=96, d_model=16, n_layers=1, n_heads=2, seq_len=8, batch=8, steps=6, chunk_size=7)
    fused = lm.train(cfg)
    naive = lm.train(lm.Config(**{**cfg.__dict__, "naive": True}))
    assert all(math.isfinite(x) for x in fused)
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(naive), rtol=1e-4, atol=1e-5)
    longer = lm.train(lm.Config(**{**cfg.__dict__, "steps": 60, "lr": 1e-2}))
    assert sum(longer[-10:]) / 10 < sum(longer[:10]) / 10 - 0.5
    assert lm.main(["--steps", "2", "--vocab", "64", "--d-model", "16", "--seq-len", "8", "--batch", "4"]) == 0


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_module_matches_eager(backend):
    """A compiled model whose loss is linear_cross_entropy (forward *and* backward inside the
    compiled function) runs, with the loss a graph break, and matches eager exactly."""
    torch._dynamo.reset()
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(8, 16)
            self.head = torch.nn.Linear(16, 50)
            self.loss = LinearCrossEntropyLoss(16, 50, bias=True, label_smoothing=0.1, chunk_size=4)

        def forward(self, x, y):
            hid = torch.tanh(self.body(x))
            a = linear_cross_entropy(hid, self.head.weight, y, linear_bias=self.head.bias, z_loss=1e-3)
            return a + self.loss(hid, y)

    model = Model()
    x, y = torch.randn(3, 5, 8), torch.randint(0, 50, (3, 5))
    y[0, 0] = -100

    def step():
        model.zero_grad()
        loss = model(x, y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    ref, ref_grads = step()
    for _ in range(2):  # the second call reuses the compiled graphs
        loss, grads = torch.compile(step, backend=backend)()
        torch.testing.assert_close(loss, ref, rtol=0, atol=0)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # forward compiled alone, backward outside; per-example losses
    compiled = torch.compile(model, backend=backend)
    model.zero_grad()
    compiled(x, y).backward()
    for p, b in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, b, rtol=0, atol=0)
    fn = torch.compile(lambda a, w, t: linear_cross_entropy(a, w, t, reduction="none"), backend=backend)
    hid = torch.randn(5, 16)
    torch.testing.assert_close(
        fn(hid, model.head.weight, y[0]), linear_cross_entropy(hid, model.head.weight, y[0], reduction="none")
    )


@pytest.mark.parametrize("opts", list(OPTION_SETS.values()), ids=list(OPTION_SETS))
def test_block_merge_equals_single_block(opts):
    """Statistics of vocabulary blocks merged with _rebase/_merge_blocks equal those of one
    block holding every class (the identity the tiled path and the ranks rely on)."""
    weighted, eps, zl, cap, soft = opts
    hid, W, _, w, y = make(21, soft=soft, weighted=weighted, v=29)
    z = (hid @ W.T).detach()
    cw = None if w is None else w
    cfg = _linear._Config(
        n_classes=29, kind="soft" if soft else "index", eps=eps, z_loss=zl, cap=cap,
        reduction="mean", cdt=torch.float64, class_weight=cw, w_sum=29.0 if cw is None else float(cw.sum()),
    )  # fmt: skip
    if soft:
        tgt = _linear._Targets(kind="soft", q=y)
    else:
        valid = y != -100
        wy = None if cw is None else torch.where(valid, cw[torch.where(valid, y, 0)], 0.0)
        tgt = _linear._Targets(kind="index", y=torch.where(valid, y, -1), valid=valid, wy=wy)

    def stats(v0, v1):
        t = torch.empty(z.shape[0], v1 - v0, dtype=torch.float64) if cap is not None else None
        q = None if not soft else y[:, v0:v1]
        return _linear._block_stats(z[:, v0:v1].clone(), t, tgt, v0, cfg, q)

    one = _linear._merge_blocks([stats(0, 29)]).finalize()
    merged = _linear._merge_blocks([stats(0, 7), stats(7, 20), stats(20, 29)]).finalize()
    torch.testing.assert_close(merged.lse, one.lse)
    for name in ("zy", "smooth", "sq", "dq"):
        a, b = getattr(merged, name), getattr(one, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(_linear._row_loss(merged, tgt, cfg), _linear._row_loss(one, tgt, cfg))
