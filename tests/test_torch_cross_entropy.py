"""crossent.torch.cross_entropy / CrossEntropyLoss: PyTorch's numbers, less memory.

The oracle is ``torch.nn.functional.cross_entropy`` evaluated in float64 on the very same
input values (half-precision and float32 inputs are rounded to their dtype first, and the
rounded values are what both sides see): values to ~1e-12 for float64 and ~1e-5 for
float32 and half precision (computed in float32), gradients to their dtype's precision.
Both implementations are exercised: the fused C kernel (CPU tensors) and the chunked
pure-PyTorch path (other devices; forced here with ``CROSSENT_DISABLE_KERNELS=1`` and a
small chunk size so that several chunks run). z-loss and softcap, which PyTorch lacks, are
checked against crossent's own reference (``softmax_cross_entropy_value_and_grad``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import crossent  # noqa: E402
from crossent import _kernels  # noqa: E402
from crossent.torch import _cross_entropy as ce_mod  # noqa: E402
from crossent.torch._cross_entropy import CrossEntropyLoss, cross_entropy  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = ("float64", "float32", "bfloat16", "float16")
REDUCTIONS = ("mean", "sum", "none")
DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Relative tolerance of loss values (half precision is computed in float32) ...
VALUE_RTOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 1e-5, "float16": 1e-5}
# ... and of gradients, which come back in the input's dtype (rounded to it).
GRAD_RTOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 8e-3, "float16": 1e-3}
KERNELS = _kernels.available()
PATHS = ("kernel", "torch") if KERNELS else ("torch",)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def path(which: str, chunk: int = 37) -> Iterator[None]:
    """Run on the C kernel ("kernel") or on the chunked pure-PyTorch path ("torch")."""
    old_env = os.environ.get("CROSSENT_DISABLE_KERNELS")
    old_chunk = ce_mod._CHUNK_ELEMENTS
    try:
        if which == "torch":
            os.environ["CROSSENT_DISABLE_KERNELS"] = "1"
            ce_mod._CHUNK_ELEMENTS = chunk  # several chunks even for small inputs
        yield
    finally:
        ce_mod._CHUNK_ELEMENTS = old_chunk
        if old_env is None:
            os.environ.pop("CROSSENT_DISABLE_KERNELS", None)
        else:
            os.environ["CROSSENT_DISABLE_KERNELS"] = old_env


def expected_path(which: str, dtype: str) -> str:
    if which == "kernel" and _kernels.storage_code(dtype) is not None:
        return f"torch kernel ({dtype})"
    return "torch chunked"


def rounded(a: np.ndarray, dtype: str) -> torch.Tensor:
    """float64 values exactly representable in ``dtype``, as a float64 tensor."""
    return torch.from_numpy(np.array(a, dtype=np.float64)).to(DTYPES[dtype]).double()


def close(actual: Any, expected: Any, rtol: float, what: str, floor: float = 1e-300) -> None:
    """Equal to ``rtol``, with absolute slack ``rtol * max(floor, max|expected|)``: a loss
    (floor 1) or gradient entry that is a small difference of larger terms is only
    determined to that precision (PyTorch's own float64 loss of a confident row is not
    accurate to 1e-12 relative)."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    finite = expected[torch.isfinite(expected)]
    scale = max(floor, float(finite.abs().max())) if finite.numel() else floor
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def grad_scale(
    target: torch.Tensor,
    weight: Any,
    ignore_index: int,
    reduction: str,
    go: torch.Tensor,
    class_dim: int,
) -> float:
    """The magnitude of the terms a gradient entry is a difference of: ``g_i * w * sum(q)``
    (``g_i``: the upstream gradient per example, ``1 / denominator`` for a mean)."""
    unit = float(go.abs().max()) if go.numel() else 1.0
    wmax = 1.0 if weight is None else float(weight.max())
    if target.dtype.is_floating_point:
        qsum = max(1.0, float(target.sum(class_dim).max())) if target.numel() else 1.0
        denom = max(1, target.numel() // target.shape[class_dim])
    else:
        qsum = 1.0
        valid = target != ignore_index
        w_y = weight[target[valid]] if weight is not None else torch.ones(int(valid.sum()))
        denom = float(w_y.sum()) or 1.0
    if reduction == "mean":
        unit /= denom
    return unit * wmax * qsum


def run_both(
    x64: torch.Tensor,
    dtype: str,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    grad_output: torch.Tensor | None = None,
    which: str = "kernel",
) -> None:
    """crossent on ``x64`` cast to ``dtype`` versus PyTorch in float64 on the same values."""
    xd = x64.to(DTYPES[dtype])
    ours_x = xd.detach().clone().requires_grad_()
    ref_x = xd.detach().double().requires_grad_()
    soft = target.dtype.is_floating_point
    ours_t = target.to(DTYPES[dtype]) if soft else target
    ref_t = ours_t.double() if soft else target
    ours_w = None if weight is None else weight.to(DTYPES[dtype])
    ref_w = None if weight is None else ours_w.double()
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    with path(which):
        loss = cross_entropy(ours_x, ours_t, ours_w, **kw)
        taken = _kernels._last_path
        go = grad_output if grad_output is not None else torch.ones(())
        (loss * go.to(loss.dtype)).sum().backward()
    ref = F.cross_entropy(ref_x, ref_t, ref_w, **kw)
    (ref * go.double()).sum().backward()
    assert taken == expected_path(which, dtype)
    cdt = torch.float64 if dtype == "float64" else torch.float32
    assert loss.dtype == cdt and loss.shape == ref.shape
    close(loss, ref, VALUE_RTOL[dtype], "loss", floor=1.0)
    assert ours_x.grad.dtype == xd.dtype and ours_x.grad.shape == xd.shape
    close(
        ours_x.grad,
        ref_x.grad,
        GRAD_RTOL[dtype],
        "gradient",
        floor=grad_scale(
            ref_t, ref_w, ignore_index, reduction, go, class_dim=1 if xd.ndim >= 2 else 0
        ),
    )
    if not soft:  # ignored examples: exactly zero gradient
        ignored = (target == ignore_index).unsqueeze(1 if xd.ndim >= 2 else 0).expand_as(xd)
        assert torch.all(ours_x.grad[ignored] == 0)


# --------------------------------------------------------------------------------------------
# PyTorch's options: hypothesis over every combination, both paths
# --------------------------------------------------------------------------------------------


@st.composite
def problems(draw: Any) -> dict[str, Any]:
    dtype = draw(st.sampled_from(FLOATS))
    n_classes = draw(st.sampled_from([1, 2, 5, 33, 70]))  # tile kernel (<= 32) and row kernel
    layout = draw(st.sampled_from(["NC", "NC", "NCd", "NCdd", "C"]))
    n = draw(st.integers(1, 9))
    spatial = {"NC": (), "NCd": (3,), "NCdd": (2, 2), "C": ()}[layout]
    shape = (n_classes,) if layout == "C" else (n, n_classes) + spatial
    ex_shape = () if layout == "C" else (n,) + spatial
    soft = draw(st.booleans())
    return dict(
        dtype=dtype,
        shape=shape,
        ex_shape=ex_shape,
        soft=soft,
        weighted=draw(st.booleans()),
        ignore_index=-100 if soft else draw(st.sampled_from([-100, -1, 0, 2])),
        ignored=draw(st.sampled_from([0.0, 0.3, 1.0])),
        label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        scale=draw(st.sampled_from([1.0, 8.0])),
        which=draw(st.sampled_from(PATHS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=100, **SETTINGS)
@given(problems())
def test_equals_pytorch(pb: dict[str, Any]) -> None:
    rng = np.random.default_rng(pb["seed"])
    shape, ex_shape, n_classes = (
        pb["shape"],
        pb["ex_shape"],
        pb["shape"][1 if len(pb["shape"]) > 1 else 0],
    )
    x = rounded(rng.standard_normal(shape) * pb["scale"], pb["dtype"])
    if pb["soft"]:
        target = torch.from_numpy(rng.random(shape))
    else:
        target = torch.as_tensor(np.asarray(rng.integers(0, n_classes, ex_shape)))
        mask = torch.as_tensor(np.asarray(rng.random(ex_shape) < pb["ignored"]))
        target = torch.where(mask, pb["ignore_index"], target)
    weight = torch.from_numpy(rng.integers(0, 17, n_classes) / 8.0) if pb["weighted"] else None
    go = None
    if pb["reduction"] == "none":
        go = torch.as_tensor(np.asarray(rng.random(ex_shape))).float()
    run_both(
        x,
        pb["dtype"],
        target,
        weight=weight,
        ignore_index=pb["ignore_index"],
        reduction=pb["reduction"],
        label_smoothing=pb["label_smoothing"],
        grad_output=go,
        which=pb["which"],
    )


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_nan(which: str, dtype: str, weighted: bool) -> None:
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.full((4,), -100)
    w = torch.arange(1.0, 7.0, dtype=torch.float64) if weighted else None
    run_both(x, dtype, y, weight=w, which=which)
    assert torch.isnan(cross_entropy(x, y, w))


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.5, 1.0])
def test_zero_total_weight_mean_is_nan(which: str, label_smoothing: float) -> None:
    """Every target's class weight 0: PyTorch's mean is NaN (0/0 meets x/0), and so is the
    gradient of each example that is not ignored."""
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, -100, 1])
    w = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    for dtype in ("float64", "float32"):
        run_both(x, dtype, y, weight=w, label_smoothing=label_smoothing, which=which)
    xg = x.clone().requires_grad_()
    with path(which):
        loss = cross_entropy(xg, y, w, label_smoothing=label_smoothing)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(xg.grad[[0, 1, 3]]).all()
    assert (xg.grad[2] == 0).all()


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kdim_and_large_classes(which: str, soft: bool, reduction: str) -> None:
    """(N, C, d1, d2) with C = 300 (rows kernel, several chunks on the torch path)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 300, 4, 5, dtype=torch.float64, generator=g) * 3
    if soft:
        y = torch.softmax(torch.randn(3, 300, 4, 5, dtype=torch.float64, generator=g), 1)
    else:
        y = torch.randint(0, 300, (3, 4, 5), generator=g)
        y[0, 1] = -100
    go = torch.rand(3, 4, 5, generator=g) if reduction == "none" else None
    w = torch.rand(300, dtype=torch.float64, generator=g)
    for dtype in ("float32", "float64"):
        run_both(
            x,
            dtype,
            y,
            weight=w,
            reduction=reduction,
            label_smoothing=0.05,
            grad_output=go,
            which=which,
        )


VIEWS = {
    "transposed": lambda b: b[:12, :12].t(),  # class axis stride 12: a class-last copy
    "sliced": lambda b: b[::3, 1:13],  # row stride 3 * 16, unit class stride: zero-copy
    "broadcast": lambda b: b[:1, :12].expand(12, 12),  # row stride 0
    "kdim-channels-last": lambda b: b[:12, :12].reshape(3, 4, 12).permute(0, 2, 1),
}


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_strided_inputs(which: str, view: str, dtype: str) -> None:
    """Views of a leaf: read in place where the class axis has unit stride, gradients exact."""
    base = torch.randn(40, 16, dtype=torch.float64).to(DTYPES[dtype])
    b1, b2 = base.clone().requires_grad_(), base.double().requires_grad_()
    x1, x2 = VIEWS[view](b1), VIEWS[view](b2)
    y = torch.randint(0, 12, x1.shape[:1] + x1.shape[2:])
    with path(which):
        loss = cross_entropy(x1, y, label_smoothing=0.1)
    ref = F.cross_entropy(x2, y, label_smoothing=0.1)
    loss.backward()
    ref.backward()
    close(loss, ref, VALUE_RTOL[dtype], "loss", floor=1.0)
    close(b1.grad, b2.grad, GRAD_RTOL[dtype], "gradient")


def test_float32_input_float64_targets_promote_like_pytorch() -> None:
    x = torch.randn(5, 4, requires_grad=True)
    q = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    ours = cross_entropy(x, q)
    ref = F.cross_entropy(x, q)
    assert ours.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("tdtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_target_dtypes(tdtype: Any) -> None:
    x = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(cross_entropy(x, y.to(tdtype)), F.cross_entropy(x, y))


def test_empty_batch() -> None:
    x = torch.randn(0, 5, requires_grad=True)
    y = torch.zeros(0, dtype=torch.int64)
    for reduction in REDUCTIONS:
        ours, ref = (
            cross_entropy(x, y, reduction=reduction),
            F.cross_entropy(x, y, reduction=reduction),
        )
        torch.testing.assert_close(ours, ref, equal_nan=True)
    cross_entropy(x, y, reduction="sum").backward()
    assert x.grad.shape == (0, 5)


# --------------------------------------------------------------------------------------------
# crossent's options (z_loss, softcap, return_lse): crossent's reference as the oracle
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, **SETTINGS)
@given(
    dtype=st.sampled_from(FLOATS),
    soft=st.booleans(),
    weighted=st.booleans(),
    z_loss=st.sampled_from([0.0, 1e-2]),
    softcap=st.sampled_from([None, 2.0]),
    label_smoothing=st.sampled_from([0.0, 0.2]),
    reduction=st.sampled_from(REDUCTIONS),
    n_classes=st.sampled_from([3, 40]),
    which=st.sampled_from(PATHS),
    seed=st.integers(0, 2**32 - 1),
)
def test_z_loss_softcap_equal_crossent_reference(
    dtype: str,
    soft: bool,
    weighted: bool,
    z_loss: float,
    softcap: Any,
    label_smoothing: float,
    reduction: str,
    n_classes: int,
    which: str,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    shape = (7, n_classes, 2)
    x = rounded(rng.standard_normal(shape) * 4, dtype).to(DTYPES[dtype])
    if soft:
        y = torch.from_numpy(rng.random(shape)).to(x.dtype)
    else:
        y = torch.from_numpy(rng.integers(0, n_classes, (7, 2)))
        y[0, 0] = -100
    w = torch.from_numpy(rng.integers(0, 9, n_classes) / 4.0).to(x.dtype) if weighted else None
    go = torch.from_numpy(rng.random((7, 2))).float() if reduction == "none" else None
    kw = dict(weight=w, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    xr = x.detach().clone().requires_grad_()
    with path(which):
        (loss, lse) = cross_entropy(xr, y, reduction=reduction, return_lse=True, **kw)
        (loss * (go if go is not None else 1.0)).sum().backward()
    # the reference, on the same tensors (crossent's array-API path, class axis 1)
    cdt = torch.float64 if dtype == "float64" else torch.float32
    gref = None if go is None else go.to(cdt)
    (ref, ref_lse), ref_grad = crossent.softmax_cross_entropy_value_and_grad(
        x,
        y,
        axis=1,
        ignore_index=-100,
        reduction=reduction,
        return_lse=True,
        grad_output=gref,
        **kw,
    )
    rtol = VALUE_RTOL[dtype] * 10
    close(loss, ref, rtol, "loss", floor=1.0)
    close(lse, ref_lse, rtol, "lse", floor=1.0)
    close(xr.grad, ref_grad, GRAD_RTOL[dtype] * 10, "gradient")


@pytest.mark.parametrize("which", PATHS)
def test_lse_is_logsumexp_and_differentiable(which: str) -> None:
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, -100, 4, 8])
    with path(which):
        loss, lse = cross_entropy(x, y, return_lse=True, reduction="sum")
        (loss + 0.3 * (lse**2).sum()).backward()
    x2 = x.detach().clone().requires_grad_()
    ref_lse = torch.logsumexp(x2, 1)
    (F.cross_entropy(x2, y, reduction="sum") + 0.3 * (ref_lse**2).sum()).backward()
    torch.testing.assert_close(lse, ref_lse.detach(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-13)
    # only the lse used
    x.grad = None
    with path(which):
        cross_entropy(x, y, return_lse=True)[1].sum().backward()
    torch.testing.assert_close(x.grad, torch.softmax(x.detach(), 1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("which", PATHS)
def test_double_backward(which: str) -> None:
    """create_graph=True gives a differentiable gradient: Hessian-vector products match."""
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 2, -100, 6, 0])
    w = torch.rand(7, dtype=torch.float64)
    v = torch.randn(5, 7, dtype=torch.float64)
    hv = []
    for f in (cross_entropy, F.cross_entropy):
        with path(which):
            (g,) = torch.autograd.grad(f(x, y, w, label_smoothing=0.1), x, create_graph=True)
            (h,) = torch.autograd.grad((g * v).sum(), x)
        hv.append(h)
    torch.testing.assert_close(hv[0], hv[1], rtol=1e-10, atol=1e-12)


def test_gradient_for_soft_targets_and_weights() -> None:
    """Targets (and weights) that require grad get gradients, as in PyTorch."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1).requires_grad_()
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    grads = []
    for f in (cross_entropy, F.cross_entropy):
        loss = f(x, q, w, label_smoothing=0.1)
        grads.append(torch.autograd.grad(loss, (x, q, w)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------
# gradient accumulation: num_items
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_accumulated_gradients_equal_full_batch(
    which: str, weighted: bool, label_smoothing: float
) -> None:
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(8, 11).double()
    x = torch.randn(30, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 11, (30,), generator=g)
    y[torch.rand(30, generator=g) < 0.3] = -100  # micro-batches with different counts
    w = torch.rand(11, dtype=torch.float64, generator=g) if weighted else None
    kw = dict(weight=w, label_smoothing=label_smoothing)
    with path(which):
        # full batch, mean
        logits = model(x)
        logits.retain_grad()
        full = cross_entropy(logits, y, **kw)
        full.backward()
        full_grads = [p.grad.clone() for p in model.parameters()]
        full_logit_grad = logits.grad.clone()
        model.zero_grad()
        # micro-batches, sum / global denominator
        valid = y != -100
        num_items = float(w[y[valid]].sum()) if weighted else int(valid.sum())
        total = 0.0
        for idx in torch.arange(30).split([7, 13, 10]):
            lg = model(x[idx])
            lg.retain_grad()
            loss = cross_entropy(lg, y[idx], reduction="sum", num_items=num_items, **kw)
            loss.backward()
            total += float(loss.detach())
            assert torch.equal(lg.grad, full_logit_grad[idx])  # bit for bit
    torch.testing.assert_close(total, float(full.detach()), rtol=1e-14, atol=0)
    for p, fg in zip(model.parameters(), full_grads):
        torch.testing.assert_close(p.grad, fg, rtol=1e-13, atol=1e-15)
    # without num_items, per-micro-batch means do not add up to the full batch
    model.zero_grad()
    for idx in torch.arange(30).split([7, 13, 10]):
        (cross_entropy(model(x[idx]), y[idx], **kw) / 3).backward()
    assert not torch.allclose(model.weight.grad, full_grads[0], rtol=1e-6)


def test_num_items_forms() -> None:
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, -100, 1])
    ref = F.cross_entropy(x, y, reduction="sum") / 10
    for n in (10, 10.0, torch.tensor(10), torch.tensor([10.0])):
        torch.testing.assert_close(cross_entropy(x, y, reduction="sum", num_items=n), ref)
        torch.testing.assert_close(cross_entropy(x, y, num_items=n), ref)  # mean: overridden
    torch.testing.assert_close(CrossEntropyLoss(reduction="sum")(x, y, num_items=10), ref)


# --------------------------------------------------------------------------------------------
# memory, torch.compile, autocast, the module
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("soft", [False, True])
def test_saves_only_lse_not_softmax(which: str, soft: bool) -> None:
    """Backward keeps the logits themselves, the targets, and per-row vectors: no softmax."""
    x = torch.randn(64, 100, requires_grad=True)
    y = torch.softmax(torch.randn(64, 100), 1) if soft else torch.randint(0, 100, (64,))
    saved: list[torch.Tensor] = []
    with (
        path(which),
        torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t),
    ):
        loss = cross_entropy(x, y, torch.rand(100))
    big = [t for t in saved if t.numel() >= 64 * 100]
    assert all(t.data_ptr() in (x.data_ptr(), y.data_ptr()) for t in big), [t.shape for t in big]
    assert sum(t.numel() for t in saved if t.numel() < 64 * 100) <= 4 * 64 + 100
    loss.backward()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile(backend: str) -> None:
    """Under torch.compile the loss is a graph break (run eagerly), results unchanged."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    x, y = torch.randn(32, 8), torch.randint(0, 5, (32,))

    def step(f: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = f(model(x), y, label_smoothing=0.1)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    compiled = torch.compile(lambda: step(cross_entropy), backend=backend)
    (loss, grads), (ref, ref_grads) = compiled(), step(F.cross_entropy)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    fn = torch.compile(lambda a, b: cross_entropy(a, b, reduction="none"), backend=backend)
    torch.testing.assert_close(fn(x[:, :5], y), F.cross_entropy(x[:, :5], y, reduction="none"))


@pytest.mark.parametrize("which", PATHS)
def test_autocast(which: str) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 10)
    x, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    out = []
    for f in (cross_entropy, F.cross_entropy):
        lin.zero_grad()
        with path(which), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = lin(x)
            assert logits.dtype == torch.bfloat16
            loss = f(logits, y, label_smoothing=0.1)
        loss.backward()
        out.append((loss, lin.weight.grad.clone()))
    (loss, grad), (ref, ref_grad) = out
    assert loss.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-2, atol=1e-3)  # bf16 gradient of logits


def test_module() -> None:
    w = torch.rand(5)
    ours = CrossEntropyLoss(w, ignore_index=1, reduction="sum", label_smoothing=0.2)
    ref = torch.nn.CrossEntropyLoss(w, ignore_index=1, reduction="sum", label_smoothing=0.2)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight"}
    x, y = torch.randn(7, 5, 3), torch.randint(0, 5, (7, 3))
    torch.testing.assert_close(ours(x, y), ref(x, y))
    assert "label_smoothing=0.2" in repr(ours)
    assert "z_loss=0.5" in repr(CrossEntropyLoss(z_loss=0.5))
    loss, lse = CrossEntropyLoss(return_lse=True, softcap=3.0)(x, y)
    assert loss.shape == () and lse.shape == (7, 3)
    # PyTorch's legacy flags, positional like PyTorch's constructor
    with pytest.warns(UserWarning):
        legacy = CrossEntropyLoss(None, False)
    assert legacy.reduction == "sum"
    with pytest.warns(UserWarning):
        torch.testing.assert_close(
            cross_entropy(x, y, size_average=False), F.cross_entropy(x, y, reduction="sum")
        )
    with pytest.raises(crossent.InvalidOptionError):
        CrossEntropyLoss(z_loss=-1.0)


@pytest.mark.parametrize("which", PATHS)
def test_no_grad_and_inference_mode(which: str) -> None:
    x, y = torch.randn(5, 4, requires_grad=True), torch.tensor([0, 1, 2, 3, -100])
    ref = F.cross_entropy(x, y)
    for mode in (torch.no_grad, torch.inference_mode):
        with path(which), mode():
            loss = cross_entropy(x, y)
        assert not loss.requires_grad
        torch.testing.assert_close(loss, ref.detach())


def test_weight_as_list_or_numpy() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    ref = F.cross_entropy(x, y, torch.tensor([1.0, 2.0, 3.0]))
    for w in ([1.0, 2.0, 3.0], np.array([1.0, 2.0, 3.0])):
        torch.testing.assert_close(cross_entropy(x, y, w), ref)
    torch.testing.assert_close(CrossEntropyLoss([1.0, 2.0, 3.0])(x, y), ref)


# --------------------------------------------------------------------------------------------
# bad input: crossent's errors, never a device assert
# --------------------------------------------------------------------------------------------


BAD = [
    (
        lambda x: (x, torch.tensor([0, 1, 5, 2])),
        {},
        crossent.TargetOutOfRangeError,
        "target\\[2\\] = 5",
    ),
    (lambda x: (x, torch.tensor([0, -1, 2, 2])), {}, IndexError, "out of range"),
    (lambda x: (x, torch.tensor([0, 1, 2])), {}, crossent.ShapeMismatchError, "shape"),
    (
        lambda x: (x, torch.tensor([0.0, 1.0, 2.0, 1.0])),
        {},
        crossent.ShapeMismatchError,
        "indices stored as floats",
    ),
    (lambda x: (x, torch.full((4, 3), 1.5)), {}, crossent.ProbabilityRangeError, "target"),
    (
        lambda x: (x, torch.rand(4, 3)),
        {"ignore_index": 0},
        crossent.InvalidOptionError,
        "ignore_index",
    ),
    (
        lambda x: (x, torch.tensor([True, False, True, True])),
        {},
        crossent.InvalidDTypeError,
        "dtype",
    ),
    (lambda x: (x.long(), torch.tensor([0, 1, 2, 1])), {}, crossent.InvalidDTypeError, "input"),
    (
        lambda x: (x.numpy(), torch.tensor([0, 1, 2, 1])),
        {},
        crossent.CrossEntropyTypeError,
        "torch.Tensor",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"reduction": "avg"},
        crossent.InvalidOptionError,
        "reduction",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"label_smoothing": 1.5},
        crossent.InvalidOptionError,
        "label_smoothing",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"weight": torch.ones(4)},
        crossent.ShapeMismatchError,
        "weight",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"weight": torch.tensor([1.0, -1.0, 1.0])},
        crossent.InvalidOptionError,
        "negative",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"z_loss": -0.1},
        crossent.InvalidOptionError,
        "z_loss",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"softcap": 0.0},
        crossent.InvalidOptionError,
        "softcap",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"num_items": 0},
        crossent.InvalidOptionError,
        "num_items",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"num_items": 3, "reduction": "none"},
        crossent.InvalidOptionError,
        "num_items",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1])),
        {"num_items": torch.ones(2)},
        crossent.InvalidOptionError,
        "num_items",
    ),
    (
        lambda x: (x, torch.tensor([0, 1, 2, 1], device="meta")),
        {},
        crossent.CrossEntropyTypeError,
        "device",
    ),
    (lambda x: (x.sum(), torch.tensor(0)), {}, crossent.ShapeMismatchError, "0-dimensional"),
    (
        lambda x: (x[:, :0], torch.tensor([0, 0, 0, 0])),
        {},
        crossent.ShapeMismatchError,
        "0 classes",
    ),
]


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("make, kw, error, match", BAD)
def test_bad_input_raises_crossent_errors(
    which: str, make: Any, kw: dict, error: type, match: str
) -> None:
    x = torch.randn(4, 3)
    inp, target = make(x)
    with path(which), pytest.raises(error, match=match) as info:
        cross_entropy(inp, target, **kw)
    assert isinstance(info.value, crossent.CrossEntropyError)


# --------------------------------------------------------------------------------------------
# the real client: examples/train_mlp_digits.py
# --------------------------------------------------------------------------------------------


def _example() -> Any:
    file = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_mlp_digits.py"
    spec = importlib.util.spec_from_file_location("train_mlp_digits", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_example_mlp_digits_same_loss_curve(dtype: Any, tol: float) -> None:
    pytest.importorskip("sklearn")
    ref, ours = _example().compare(2, dtype=dtype, label_smoothing=0.1)
    assert len(ref.losses) == len(ours.losses) == 2 * 23
    np.testing.assert_allclose(ours.losses, ref.losses, rtol=tol, atol=tol)
    assert ours.losses[-1] < 0.5 * ours.losses[0]  # it trains
    assert ours.test_accuracy == ref.test_accuracy > 0.8


def test_example_main_prints_both_curves(capsys: Any) -> None:
    pytest.importorskip("sklearn")
    _example().main(["--epochs", "1"])
    out = capsys.readouterr().out
    assert "torch.nn.functional" in out and "crossent.torch" in out and "test accuracy" in out


@pytest.mark.skipif(not KERNELS, reason="C kernels not built")
@pytest.mark.parametrize("c", [7, 300])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_backward_reads_one_upstream_value(monkeypatch: pytest.MonkeyPatch, c: int,
                                                   reduction: str) -> None:
    """A reduced loss's backward hands the kernel one value expanded over the rows (stride
    0); the kernel reads it in place (no copy with N entries per step) and must give the
    bits that the same values as a per-row tensor give."""
    seen: list[Any] = []
    original = ce_mod._kernel_backward

    def spy(xr, y, q, w, lse, g, plan, grad):  # type: ignore[no-untyped-def]
        seen.append((g.stride(0), g.detach().clone().contiguous()))
        original(xr, y, q, w, lse, g, plan, grad)

    monkeypatch.setattr(ce_mod, "_kernel_backward", spy)
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(45, c, generator=gen) * 3).requires_grad_()
    y = torch.randint(0, c, (45,), generator=gen)
    y[4] = -100
    w = torch.rand(c, generator=gen)
    with path("kernel"):
        cross_entropy(x, y, w, reduction=reduction, label_smoothing=0.1).backward()
        assert _kernels._last_path == "torch kernel (float32)"
    assert len(seen) == 1 and seen[0][0] == 0
    per_row = seen[0][1]
    assert per_row.stride(0) == 1
    x2 = x.detach().clone().requires_grad_()
    with path("kernel"):
        loss = cross_entropy(x2, y, w, reduction="none", label_smoothing=0.1)
        loss.backward(per_row)
    assert seen[1][0] == 1
    assert torch.equal(x.grad.view(torch.int32), x2.grad.view(torch.int32))
    ref = x.detach().clone().requires_grad_()
    F.cross_entropy(ref, y, w, reduction=reduction, label_smoothing=0.1).backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-7)
