"""The plain path of ``crossent.torch.cross_entropy`` (``_plain_cross_entropy``): a CPU
``(N, C)`` float32/float64 tensor with valid class indices and no weight, z-loss,
soft-capping, ``num_items`` or autocast skips the general validation. Loss, lse, gradient
and autograd graph must be the general path's, bit for bit; everything else (bad input
above all) must reach the general path and its precise errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import crossent  # noqa: E402
from crossent import _kernels  # noqa: E402
from crossent.torch import _cross_entropy as ce_mod  # noqa: E402
from crossent.torch._cross_entropy import cross_entropy  # noqa: E402

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="compiled kernels not built")


def _run(x, y, opts):
    xg = x.clone().requires_grad_(True)
    out = cross_entropy(xg, y, **opts)
    loss = out[0] if isinstance(out, tuple) else out
    grad_fn = type(loss.grad_fn).__name__
    (loss.sum() + (out[1].sum() * 0.5 if isinstance(out, tuple) else 0)).backward()
    values = out if isinstance(out, tuple) else (out,)
    return [v.detach() for v in values], xg.grad, grad_fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 3), (64, 10), (37, 130), (5, 3000)])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="sum"), dict(reduction="none"),
                                  dict(label_smoothing=0.2), dict(return_lse=True),
                                  dict(ignore_index=-1, reduction="none"),
                                  dict(label_smoothing=1, return_lse=True, reduction="sum")])
@pytest.mark.parametrize("ydtype", [torch.int64, torch.int32, torch.uint8])
def test_plain_path_gives_the_general_paths_bits(monkeypatch, dtype, shape, opts, ydtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    x[0, 1] = float("nan")  # NaN reaches its row's loss and gradient alike
    y = torch.randint(0, shape[1], (shape[0],), generator=g).to(ydtype)
    taken = []
    real = ce_mod._plain_cross_entropy
    with monkeypatch.context() as m:
        m.setattr(ce_mod, "_plain_cross_entropy", lambda *a: taken.append(real(*a)) or taken[-1])
        plain = _run(x, y, opts)
    assert len(taken) == 1 and taken[0] is not None  # the plain path ran
    assert _kernels.kernel_info()["last_path"] == f"torch kernel ({str(dtype)[6:]})"
    with monkeypatch.context() as m:
        m.setattr(ce_mod, "_plain_cross_entropy", lambda *a: None)
        general = _run(x, y, opts)
    assert plain[2] == general[2]  # the same autograd graph (e.g. DivBackward0)
    for a, b in zip(plain[0] + [plain[1]], general[0] + [general[1]]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_plain_path_matches_pytorch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (64,), generator=g)
    ours = cross_entropy(x, y, label_smoothing=0.1)
    (gx,) = torch.autograd.grad(ours, x)
    ref = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
    (rx,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", ["label_too_big", "negative_label", "ignored_label", "float_target",
                                  "weight", "z_loss", "softcap", "num_items", "three_dims", "autocast",
                                  "bf16", "bad_reduction", "bad_smoothing", "list_input"])
def test_everything_else_takes_the_general_path(monkeypatch, case):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    y = torch.randint(0, 6, (8,), generator=g)
    kwargs = {}
    error = None
    if case == "label_too_big":
        y[3] = 6
        error = "target"
    elif case == "negative_label":
        y[2] = -5
        error = "target"
    elif case == "ignored_label":
        y[2] = -100
    elif case == "float_target":
        y = torch.softmax(torch.randn(8, 6, generator=g), dim=1)
    elif case == "weight":
        kwargs["weight"] = torch.linspace(0.5, 1.5, 6)
    elif case == "z_loss":
        kwargs["z_loss"] = 1e-3
    elif case == "softcap":
        kwargs["softcap"] = 5.0
    elif case == "num_items":
        kwargs.update(num_items=5, reduction="sum")
    elif case == "three_dims":
        x = torch.randn(2, 6, 4, generator=g)
        y = torch.randint(0, 6, (2, 4), generator=g)
    elif case == "bf16":
        x = x.to(torch.bfloat16)
    elif case == "bad_reduction":
        kwargs["reduction"] = "avg"
        error = "reduction"
    elif case == "bad_smoothing":
        kwargs["label_smoothing"] = -0.5
        error = "label_smoothing"
    elif case == "list_input":
        x = x.tolist()
        error = "input"
    calls = []
    real = ce_mod._plain_cross_entropy
    monkeypatch.setattr(ce_mod, "_plain_cross_entropy", lambda *a: calls.append(real(*a)) or calls[-1])
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case == "autocast" else torch.autocast("cpu", enabled=False)
    with ctx:
        if error is not None:
            with pytest.raises(crossent.CrossEntropyError) as info:
                cross_entropy(x, y, **kwargs)
            assert info.value.argument == error
        else:
            loss = cross_entropy(x, y, **kwargs)
            assert torch.isfinite(loss).all()
    assert all(r is None for r in calls)
