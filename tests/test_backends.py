"""Every function on every array library: same numbers, results in the caller's library.

The ``xp`` fixture (conftest.py) runs each test over NumPy, array-api-strict, PyTorch and
JAX. NumPy float64 results are the reference; each library must return its own array type,
in the input's floating dtype family, equal to the reference to dtype-derived tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import crossent
from conftest import have, library_of, to_numpy, xp_asarray

Y_HAT = np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]])
Y = np.array([0, 2])
TEXTBOOK = np.array([2.30258509, 0.69314718])


def _rng_case(seed: int = 0, n: int = 5, c: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, c))
    target = rng.integers(0, c, size=n)
    soft = rng.dirichlet(np.ones(c), size=n)
    return logits, target, soft


def _check(result: Any, xp: Any, expected: np.ndarray, rtol: float = 1e-12) -> None:
    assert library_of(result) == library_of(xp.asarray(0.0)), type(result)
    got = to_numpy(result)
    assert got.shape == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)


def test_textbook_example(xp):
    got = crossent.cross_entropy(xp_asarray(xp, Y_HAT), xp_asarray(xp, Y))
    _check(got, xp, TEXTBOOK, rtol=1e-8)
    assert xp.isdtype(got.dtype, "real floating")


def test_textbook_example_from_lists_gives_numpy():
    got = crossent.cross_entropy(Y_HAT.tolist(), Y.tolist())
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, TEXTBOOK, rtol=1e-8)


def test_logits_counterpart_of_textbook_example(xp):
    logits = np.log(Y_HAT) + np.array([[5.0], [-3.0]])  # per-row shifts leave softmax alone
    _check(crossent.softmax_cross_entropy(xp_asarray(xp, logits), xp_asarray(xp, Y)), xp, TEXTBOOK, 1e-8)
    _check(crossent.nll_loss(xp_asarray(xp, np.log(Y_HAT)), xp_asarray(xp, Y)), xp, TEXTBOOK, 1e-8)


OPTIONS = [
    dict(),
    dict(reduction="mean"),
    dict(reduction="sum", label_smoothing=0.2),
    dict(weight=[1.0, 2.0, 0.5, 3.0], reduction="mean"),
    dict(weight=[1.0, 2.0, 0.5, 3.0], ignore_index=1, label_smoothing=0.1, reduction="mean"),
    dict(z_loss=1e-2, softcap=4.0, reduction="sum"),
    dict(axis=0),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_softmax_cross_entropy_matches_numpy(xp, opts):
    logits, target, soft = _rng_case()
    if opts.get("axis") == 0:
        logits, soft = logits.T.copy(), soft.T.copy()
    for t in (target, soft):
        if t is soft and "ignore_index" in opts:
            continue
        ref = crossent.softmax_cross_entropy(logits, t, **opts)
        kw = dict(opts)
        if "weight" in kw:
            kw["weight"] = xp_asarray(xp, kw["weight"])
        got = crossent.softmax_cross_entropy(xp_asarray(xp, logits), xp_asarray(xp, t), **kw)
        _check(got, xp, ref)
        (loss, lse), grad = crossent.softmax_cross_entropy_value_and_grad(
            xp_asarray(xp, logits), xp_asarray(xp, t), return_lse=True, **kw
        )
        (rloss, rlse), rgrad = crossent.softmax_cross_entropy_value_and_grad(
            logits, t, return_lse=True, **opts
        )
        _check(loss, xp, rloss)
        _check(lse, xp, rlse)
        _check(grad, xp, rgrad)


@pytest.mark.parametrize(
    "func, make_input",
    [
        (crossent.cross_entropy, lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)),
        (crossent.nll_loss, lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))),
    ],
    ids=["cross_entropy", "nll_loss"],
)
@pytest.mark.parametrize("opts", OPTIONS[:5], ids=lambda o: ",".join(o) or "default")
def test_probability_inputs_match_logits(xp, func, make_input, opts):
    logits, target, _ = _rng_case(1)
    ref = crossent.softmax_cross_entropy(logits, target, **opts)
    got = func(xp_asarray(xp, make_input(logits)), xp_asarray(xp, target), **opts)
    _check(got, xp, ref, rtol=1e-10)


def test_binary_losses_match_numpy(xp):
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=4.0, size=(4, 3))
    target = rng.random((4, 3))
    probs = 1.0 / (1.0 + np.exp(-logits))
    ref = crossent.sigmoid_binary_cross_entropy(logits, target, pos_weight=[1.0, 2.0, 0.5])
    got = crossent.sigmoid_binary_cross_entropy(
        xp_asarray(xp, logits), xp_asarray(xp, target), pos_weight=xp_asarray(xp, [1.0, 2.0, 0.5])
    )
    _check(got, xp, ref)
    plain = crossent.sigmoid_binary_cross_entropy(logits, target, reduction="mean")
    _check(crossent.binary_cross_entropy(xp_asarray(xp, probs), xp_asarray(xp, target), reduction="mean"), xp, plain, 1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_result_dtype_follows_input(xp, dtype):
    logits, target, _ = _rng_case(3)
    got = crossent.softmax_cross_entropy(xp_asarray(xp, logits, dtype), xp_asarray(xp, target))
    assert to_numpy(got).dtype == np.dtype(dtype)
    ref = crossent.softmax_cross_entropy(logits.astype(dtype).astype(np.float64), target)
    _check(got, xp, ref, rtol=1e-6 if dtype == "float32" else 1e-12)


@pytest.mark.skipif(not have("torch"), reason="needs torch")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_precision_accumulates_in_float32(dtype):
    import torch

    logits, target, _ = _rng_case(4, n=6, c=9)
    x = torch.tensor(logits, dtype=getattr(torch, dtype))
    got = crossent.softmax_cross_entropy(x, torch.tensor(target))
    assert got.dtype == torch.float32
    ref = crossent.softmax_cross_entropy(x.float().double().numpy(), target)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)
    _, grad = crossent.softmax_cross_entropy_value_and_grad(x, torch.tensor(target))
    assert grad.dtype == x.dtype


@pytest.mark.skipif(not have("jax"), reason="needs jax")
class TestJax:
    def test_jit_gives_the_eager_result(self):
        import jax
        import jax.numpy as jnp

        logits, target, soft = _rng_case(5)
        f = jax.jit(lambda a, b: crossent.softmax_cross_entropy(
            a, b, label_smoothing=0.1, z_loss=1e-3, reduction="mean"))
        for t in (target, soft):
            ref = crossent.softmax_cross_entropy(logits, t, label_smoothing=0.1, z_loss=1e-3, reduction="mean")
            np.testing.assert_allclose(np.asarray(f(jnp.asarray(logits), jnp.asarray(t))), ref, rtol=1e-12)

    def test_jit_float32_with_int32_labels(self):
        import jax
        import jax.numpy as jnp

        logits, target, _ = _rng_case(6)
        got = jax.jit(crossent.softmax_cross_entropy)(
            jnp.asarray(logits, dtype=jnp.float32), jnp.asarray(target, dtype=jnp.int32))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), crossent.softmax_cross_entropy(logits, target), rtol=1e-5)

    def test_jit_out_of_range_label_gives_nan_not_a_number(self):
        import jax
        import jax.numpy as jnp

        logits, _, _ = _rng_case(7, n=3, c=4)
        got = np.asarray(jax.jit(crossent.softmax_cross_entropy)(jnp.asarray(logits), jnp.asarray([0, 4, -1])))
        assert np.isfinite(got[0]) and np.isnan(got[1]) and np.isnan(got[2])

    def test_grad_equals_value_and_grad(self):
        import jax
        import jax.numpy as jnp

        logits, target, _ = _rng_case(8)
        w = np.array([1.0, 0.5, 2.0, 1.5])
        kw = dict(weight=w, label_smoothing=0.15, z_loss=1e-2, softcap=5.0, reduction="mean")
        g = jax.grad(lambda a: crossent.softmax_cross_entropy(a, jnp.asarray(target), **kw))(jnp.asarray(logits))
        _, ref = crossent.softmax_cross_entropy_value_and_grad(logits, target, **kw)
        np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-10, atol=1e-14)

    def test_grad_is_finite_with_masked_classes(self):
        import jax
        import jax.numpy as jnp

        logits = jnp.asarray([[0.0, -jnp.inf, 1.0], [-jnp.inf, 2.0, -jnp.inf]])
        g = jax.grad(lambda a: crossent.softmax_cross_entropy(a, jnp.asarray([2, 1]), reduction="sum"))(logits)
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.skipif(not have("torch"), reason="needs torch")
def test_torch_autograd_through_the_reference():
    import torch

    logits, target, _ = _rng_case(9)
    x = torch.tensor(logits, requires_grad=True)
    crossent.softmax_cross_entropy(x, torch.tensor(target), label_smoothing=0.3, reduction="mean").backward()
    _, ref = crossent.softmax_cross_entropy_value_and_grad(logits, target, label_smoothing=0.3, reduction="mean")
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-10, atol=1e-14)
    masked = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    crossent.softmax_cross_entropy(masked, torch.tensor([0]), reduction="sum").backward()
    assert torch.isfinite(masked.grad).all()


@pytest.mark.skipif(not have("dask"), reason="needs dask")
def test_dask_arrays_stay_lazy_and_poison_bad_labels():
    import dask.array as da

    logits, target, _ = _rng_case(10, n=6)
    x = da.from_array(logits, chunks=(2, 4))
    got = crossent.softmax_cross_entropy(x, da.from_array(target, chunks=2), label_smoothing=0.1)
    assert isinstance(got, da.Array)
    np.testing.assert_allclose(got.compute(), crossent.softmax_cross_entropy(logits, target, label_smoothing=0.1), rtol=1e-12)
    bad = target.copy()
    bad[3] = 99
    out = crossent.softmax_cross_entropy(x, da.from_array(bad, chunks=2)).compute()
    assert np.isnan(out[3]) and np.isfinite(np.delete(out, 3)).all()


def test_mixed_libraries_numpy_weight_is_converted(xp):
    logits, target, _ = _rng_case(11)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    got = crossent.softmax_cross_entropy(xp_asarray(xp, logits), xp_asarray(xp, target), weight=w, reduction="mean")
    _check(got, xp, crossent.softmax_cross_entropy(logits, target, weight=w, reduction="mean"))
