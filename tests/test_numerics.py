"""Numerical accuracy: mpmath references, special values, gradients, half precision, invariances.

In the style of SciPy's ``logsumexp`` tests: every float result is compared with a value
computed by mpmath at 50 significant digits from the *exact* values of the inputs (the
floats as stored), so the tolerance measures the library's rounding error alone.

Tolerances. float64 results must be within ``1e-14`` relative, float32 results within
``1e-6`` relative, plus an explicit allowance for the conditioning of the problem: the
shifted logits ``s_c = z_c - max(z)`` cannot be formed without a rounding error of
``u |s_c|`` (``u`` the unit roundoff), and ``exp`` turns that into a *relative* error of
``u |s_c|`` in ``exp(s_c)``. The allowance is ``K u sum_c |dL/dz_c| |s_c|`` (first-order
error propagation with the exact gradient, also from mpmath); it is zero when the rounding
cannot happen (e.g. integer logits) and small compared with ``1e-14 L`` unless terms with
``|s_c|`` in the hundreds dominate the loss (soft-capping and z_loss add their own
first-order terms, see :func:`mp_softmax_ce`). No absolute tolerance beyond the dtype's
underflow threshold is allowed: the library claims relative accuracy for tiny losses.

The ``xp`` fixture runs the library-facing tests over NumPy, array-api-strict, PyTorch and
JAX; NumPy input goes through the compiled kernels (``crossent._kernels``) and the other
libraries through the reference implementation, so both are held to the same references. JAX compiles every primitive anew for each new shape and dtype (seconds for the first
call), so the tests share a few shapes: one-row tables ``(1, 3)``, batches ``(3, 5)``, and
JAX gets ``(3, 5)`` with every option switched on in the hypothesis tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mpmath import mp, mpf

import crossent
from conftest import have, to_numpy, xp_asarray

DPS = 50  # mpmath precision of every reference (set locally: mp.workdps, no global state)

inf = math.inf
nan = math.nan

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # reproducible: a failure here is a bug, not bad luck
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SMALL_SETTINGS = settings(SETTINGS, max_examples=20)

DTYPES = ["float32", "float64"]
RTOL = {"float32": 1e-6, "float64": 1e-14}
# Near the smallest normal number relative accuracy is impossible (and XLA on CPU flushes
# subnormals to zero, also in intermediate results), so this is the only absolute tolerance.
ATOL = {"float32": 64 * float(np.finfo(np.float32).tiny), "float64": 64 * float(np.finfo(np.float64).tiny)}
HUGE = {"float32": float(np.float32(1e30)), "float64": 1e300}
# exp(s) underflows to 0 below this: larger |s| never reach the result.
EXP_RANGE = {"float32": 104.0, "float64": 746.0}
K = 2  # allowance factor on the first-order error bound


def unit_roundoff(dtype: str) -> float:
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def is_jax(xp: Any) -> bool:
    return xp.__name__.startswith("jax")


def np_(x: Any) -> np.ndarray:
    return np.asarray(to_numpy(x), dtype=np.float64)


def xs(xp: Any, a: Any, dtype: str | None = None) -> Any:
    return xp_asarray(xp, np.asarray(a), dtype)


def mul0(c: Any, v: Any) -> Any:
    """``c * v`` with ``0 * inf = 0`` (the library's convention), in mpmath."""
    return mpf(0) if c == 0 else c * v


# ----------------------------------------------------------------------------------------
# mpmath references
# ----------------------------------------------------------------------------------------


def mp_softmax_ce(
    x: np.ndarray,
    target: np.ndarray,
    *,
    weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    dtype: str = "float64",
) -> dict[str, list[Any]]:
    """Exact per-example loss, gradient (w.r.t. ``x``) and error allowances, class axis last.

    ``target`` holds class indices (shape ``(N,)``) or probabilities (shape ``(N, C)``);
    every input is read at its exact stored value. Only finite logits.
    """
    soft = target.ndim == x.ndim
    u = unit_roundoff(dtype)
    out: dict[str, list[Any]] = {
        "loss": [], "grad": [], "loss_slack": [], "grad_atol": [], "lse": [], "lse_slack": []
    }
    with mp.workdps(DPS):
        eps, zl = mpf(label_smoothing), mpf(z_loss)
        n_cls = x.shape[-1]
        w = [mpf(1)] * n_cls if weight is None else [mpf(float(v)) for v in weight]
        for i in range(x.shape[0]):
            row = [mpf(float(v)) for v in x[i]]
            if softcap is not None:
                cap = mpf(softcap)
                z = [cap * mp.tanh(v / cap) for v in row]
                dcap = [1 - mp.tanh(v / cap) ** 2 for v in row]
            else:
                z, dcap = row, [mpf(1)] * n_cls
            # the reference must not lose precision either: 1 + 1e-300 is 1 at 50 digits, so
            # lse - z_c is formed as log1p(sum of the non-maximal terms) + (max - z_c)
            m = max(z)
            top = z.index(m)
            e = [mp.exp(v - m) for v in z]
            rest = mp.fsum(t for c, t in enumerate(e) if c != top)
            total = 1 + rest
            lse_s = mp.log1p(rest)
            lse = m + lse_s
            p = [t / total for t in e]
            nll = [lse_s + (m - v) for v in z]
            if not soft:
                y = int(target[i])
                wy = w[y]
                loss = (
                    (1 - eps) * wy * nll[y]
                    + eps / n_cls * mp.fsum(wc * nc for wc, nc in zip(w, nll))
                    + zl * wy * lse**2
                )
                a = (1 - eps) * wy + eps / n_cls * mp.fsum(w) + 2 * zl * wy * lse
                g = [p[c] * a - eps / n_cls * w[c] for c in range(n_cls)]
                one_minus_py = mp.fsum(t for c, t in enumerate(e) if c != y) / total
                g[y] = -(1 - eps) * wy * one_minus_py + p[y] * (a - (1 - eps) * wy) - eps / n_cls * wy
                # magnitude of the terms the gradient formula adds (its absolute error scale).
                # The target class is computed as (1 - eps) w_y expm1(s_y - lse_s) + p_y (A -
                # (1 - eps) w_y) - ...: p_y - 1 without cancellation; A - (1 - eps) w_y is
                # formed by a subtraction (error u A) unless it is exactly 0 (no smoothing,
                # no z_loss).
                mag = [p[c] * abs(a) + eps / n_cls * w[c] for c in range(n_cls)]
                mag[y] = (
                    (1 - eps) * wy * one_minus_py
                    + p[y] * (abs(a) if (eps > 0 or zl > 0) else 0)
                    + eps / n_cls * w[y]
                )
                zw = wy
            else:
                qq = [wc * ((1 - eps) * mpf(float(q)) + eps / n_cls) for wc, q in zip(w, target[i])]
                loss = mp.fsum(mul0(q, nc) for q, nc in zip(qq, nll)) + zl * lse**2
                a = mp.fsum(qq) + 2 * zl * lse
                g = [p[c] * a - qq[c] for c in range(n_cls)]
                mag = [p[c] * abs(a) + qq[c] for c in range(n_cls)]
                zw = mpf(1)
            # rounding of s_c (and of the capped logits) is amplified by exp
            spread = [abs(v - m) + (3 * abs(v) if softcap is not None else 0) for v in z]
            lse_err = abs(m) + lse_s  # lse = m + lse_s is rounded at this scale
            slack = mp.fsum(abs(gc) * sc for gc, sc in zip(g, spread))
            slack += 2 * zl * zw * abs(lse) * lse_err
            visible = [sc for sc, v in zip(spread, z) if m - v < EXP_RANGE[dtype]]
            mag = [mc + p[c] * 2 * zl * zw * lse_err for c, mc in enumerate(mag)]
            out["loss"].append(loss)
            out["lse"].append(lse)
            # lse = m + lse_s: absolute error u (|m| + lse_s), plus the s_c roundings via p_c
            out["lse_slack"].append(K * u * (lse_err + mp.fsum(pc * sc for pc, sc in zip(p, spread))))
            out["grad"].append([gc * dc for gc, dc in zip(g, dcap)])
            out["loss_slack"].append(K * u * slack)
            # p_c = exp(s_c - lse_s): relative error u (|s_c| + lse_s) from its arguments
            out["grad_atol"].append(K * u * max(mag) * (1 + lse_s + max(visible)))
    return out


def assert_mp_close(
    got: Any, exact: list[Any], dtype: str, slack: list[Any] | None = None, rtol: float | None = None
) -> None:
    """Each ``got`` within ``rtol |exact| + slack`` (``inf`` where ``exact`` overflows)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    assert got.shape == (len(exact),)
    rtol = RTOL[dtype] if rtol is None else rtol
    with mp.workdps(DPS):
        _assert_mp_close(got, exact, dtype, slack, rtol)


def _assert_mp_close(got: np.ndarray, exact: list[Any], dtype: str, slack: Any, rtol: float) -> None:
    big = mpf(float(np.finfo(np.dtype(dtype)).max))
    for i, (g, e) in enumerate(zip(got, exact)):
        if mp.isnan(e):
            assert math.isnan(g), (i, g, e)
            continue
        if mp.isinf(e) or abs(e) > big * (1 + mpf(2) ** -20):
            assert g == (inf if e > 0 else -inf), (i, g, mp.nstr(e, 20))
            continue
        if abs(e) > big * (1 - mpf(2) ** -20):
            continue  # rounds to the largest float or to inf: both are right
        tol = rtol * abs(e) + ATOL[dtype] + (slack[i] if slack is not None else 0)
        err = abs(mpf(float(g)) - e)
        assert err <= tol, (
            f"element {i}: got {g!r}, exact {mp.nstr(e, 20)}, rel. error "
            f"{mp.nstr(err / abs(e), 3) if e else 'n/a'}, tolerance {mp.nstr(tol, 3)}"
        )


def assert_grad_close(got: Any, ref: dict[str, list[Any]], dtype: str, rtol: float | None = None) -> None:
    got = np.asarray(got, dtype=np.float64)
    rtol = RTOL[dtype] if rtol is None else rtol
    with mp.workdps(DPS):
        for i, (grow, erow, atol) in enumerate(zip(got, ref["grad"], ref["grad_atol"])):
            for c, (g, e) in enumerate(zip(grow, erow)):
                err = abs(mpf(float(g)) - e)
                tol = rtol * abs(e) + atol + ATOL[dtype]
                assert err <= tol, (
                    f"dlogits[{i}, {c}]: got {g!r}, exact {mp.nstr(e, 20)}, tolerance {mp.nstr(tol, 3)}"
                )


# ----------------------------------------------------------------------------------------
# hypothesis strategies
# ----------------------------------------------------------------------------------------

GRID = (3, 5)  # the batch shape shared by the tests (and the only one JAX sees in hypothesis)


@st.composite
def shapes(draw: Any, xp: Any) -> tuple[int, int]:
    if is_jax(xp):
        return GRID
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 3, 5, 10, 50]) | st.integers(1, 50))
    return n, c


@st.composite
def logit_batches(draw: Any, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """Logits spanning tiny to huge magnitudes, and confident rows (handled by the caller)."""
    n, c = shape
    width = 32 if dtype == "float32" else 64
    style = draw(st.sampled_from(["wide", "scaled", "confident"]))
    if style == "wide":  # hypothesis's floats: 0, ±tiny, ±huge, integers, boundaries
        b = HUGE[dtype]
        elems = st.floats(-b, b, width=width, allow_subnormal=False)
        return draw(hnp.arrays(np.dtype(dtype), (n, c), elements=elems))
    unit = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-1, 1, allow_subnormal=False)))
    if style == "scaled":
        scale = draw(st.sampled_from([1e-30, 1e-8, 1.0, 8.0, 40.0, 1e4, HUGE[dtype]]))
        return (unit * scale).astype(dtype)
    # confident: every row has one class ahead by a margin; loss ~ exp(-margin) down to 1e-30
    # (float32) or 1e-300 (float64). The caller puts the target on that class.
    top = 68.0 if dtype == "float32" else 690.0
    margin = draw(st.floats(10.0, top))
    x = unit * draw(st.sampled_from([1.0, 3.0]))
    x[np.arange(n), np.argmax(x, axis=-1)] += margin
    return x.astype(dtype)


@st.composite
def index_targets(draw: Any, x: np.ndarray) -> np.ndarray:
    n, c = x.shape
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    confident = draw(st.booleans())
    return np.argmax(x, axis=-1).astype(np.int64) if confident else y


@st.composite
def soft_targets(draw: Any, shape: tuple[int, int], dtype: str) -> np.ndarray:
    width = 32 if dtype == "float32" else 64
    kind = draw(st.sampled_from(["free", "normalised", "onehot"]))
    if kind == "onehot":
        y = draw(hnp.arrays(np.int64, (shape[0],), elements=st.integers(0, shape[1] - 1)))
        return np.eye(shape[1], dtype=dtype)[y]
    q = draw(hnp.arrays(np.dtype(dtype), shape, elements=st.just(0.0) | st.floats(2.0**-66, 1, width=width)))
    if kind == "normalised":
        s = q.sum(-1, keepdims=True, dtype=np.float64)
        q = np.where(s > 0, q / np.where(s > 0, s, 1), 1.0 / shape[1]).astype(dtype)
    return q


def weight_values(dtype: str) -> Any:
    """Non-negative weights. Not below ~1e-3: ``w * q`` must not underflow to 0, which would
    turn the (exact) inf of a positive mass on a zero probability into 0 * inf = 0."""
    width = 32 if dtype == "float32" else 64
    return st.sampled_from([0.0, 0.5, 1.0, 3.0]) | st.floats(2.0**-10, 10, width=width)


def class_weights(c: int, dtype: str, optional: bool = True) -> Any:
    w = hnp.arrays(np.dtype(dtype), (c,), elements=weight_values(dtype))
    return st.none() | w if optional else w


def loss_options(xp: Any, c: int, dtype: str) -> Any:
    """Options for the logits losses. JAX always gets every option (one compiled structure)."""
    on = is_jax(xp)
    return st.fixed_dictionaries(
        {
            "weight": class_weights(c, dtype, optional=not on),
            "label_smoothing": st.sampled_from([0.1, 1.0]) | st.floats(0.01, 1.0)
            if on
            else st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0, 1),
            "z_loss": st.sampled_from([1e-4, 0.5]) if on else st.sampled_from([0.0, 1e-4, 0.5]),
            "softcap": st.sampled_from([30.0, 2.0]) if on else st.sampled_from([None, 30.0, 2.0]),
        }
    )


# ----------------------------------------------------------------------------------------
# 1. mpmath references over the whole input range
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_softmax_cross_entropy_index_targets_match_mpmath(xp, dtype, data):
    x = data.draw(logit_batches(data.draw(shapes(xp)), dtype), label="logits")
    y = data.draw(index_targets(x), label="target")
    ref = mp_softmax_ce(x, y, dtype=dtype)
    (loss, lse), grad = crossent.softmax_cross_entropy_value_and_grad(
        xs(xp, x), xs(xp, y), return_lse=True
    )
    assert to_numpy(loss).dtype == np.dtype(dtype)
    assert_mp_close(np_(loss), ref["loss"], dtype, ref["loss_slack"])
    assert_grad_close(np_(grad), ref, dtype)
    assert_mp_close(np_(lse), ref["lse"], dtype, ref["lse_slack"])
    if not is_jax(xp):  # (JAX: spare the compilation of a second function)
        got = np_(crossent.softmax_cross_entropy(xs(xp, x), xs(xp, y)))
        np.testing.assert_array_equal(got, np_(loss))


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_softmax_cross_entropy_index_targets_with_options_match_mpmath(xp, dtype, data):
    x = data.draw(logit_batches(data.draw(shapes(xp)), dtype), label="logits")
    y = data.draw(index_targets(x), label="target")
    opts = data.draw(loss_options(xp, x.shape[1], dtype), label="options")
    ref = mp_softmax_ce(x, y, dtype=dtype, **opts)
    kw = dict(opts)
    if kw["weight"] is not None:
        kw["weight"] = xs(xp, kw["weight"])
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, y), **kw)
    assert_mp_close(np_(loss), ref["loss"], dtype, ref["loss_slack"])
    assert_grad_close(np_(grad), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_softmax_cross_entropy_soft_targets_match_mpmath(xp, dtype, data):
    shape = data.draw(shapes(xp))
    x = data.draw(logit_batches(shape, dtype), label="logits")
    q = data.draw(soft_targets(shape, dtype), label="target")
    opts = data.draw(loss_options(xp, shape[1], dtype), label="options")
    ref = mp_softmax_ce(x, q, dtype=dtype, **opts)
    kw = dict(opts)
    if kw["weight"] is not None:
        kw["weight"] = xs(xp, kw["weight"])
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, q), **kw)
    assert_mp_close(np_(loss), ref["loss"], dtype, ref["loss_slack"])
    assert_grad_close(np_(grad), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@SMALL_SETTINGS
@given(data=st.data())
def test_softmax_cross_entropy_reductions_match_mpmath(dtype, reduction, data):
    """PyTorch's reductions, weighted mean (divide by sum of w_y) and ignore_index included."""
    x = data.draw(logit_batches((6, 7), dtype), label="logits")
    y = data.draw(index_targets(x), label="target")
    ignore = data.draw(hnp.arrays(bool, (6,)), label="ignored")
    y = np.where(ignore, -100, y)
    w = data.draw(class_weights(7, dtype), label="weight")
    zl = data.draw(st.sampled_from([0.0, 1e-3]))
    ls = data.draw(st.sampled_from([0.0, 0.2]))
    kept = y != -100
    ref = mp_softmax_ce(x[kept], y[kept], weight=w, label_smoothing=ls, z_loss=zl, dtype=dtype)
    total = mp.fsum(ref["loss"])
    slack = mp.fsum(ref["loss_slack"])
    if reduction == "mean":  # (mpf sums and quotients below are exact enough at 53+ bits)
        denom = mp.fsum(mpf(float(w[t])) for t in y[kept]) if w is not None else mpf(int(kept.sum()))
        # a zero total weight (everything ignored, or zero weights) gives NaN, as in PyTorch
        exact = total / denom if denom else mpf("nan")
        slack = slack / denom if denom else 0
    else:
        exact = total
    got = crossent.softmax_cross_entropy(
        x, y, weight=w, ignore_index=-100, label_smoothing=ls, z_loss=zl, reduction=reduction
    )
    assert got.shape == () and got.dtype == np.dtype(dtype)
    # summing n rounded non-negative terms adds at most n u relative
    assert_mp_close(got, [exact], dtype, [slack], rtol=RTOL[dtype] + 8 * unit_roundoff(dtype))


def test_weighted_mean_with_zero_total_weight_is_nan(xp):
    """PyTorch's rule: mean = sum(loss) / sum(w_y) is NaN when sum(w_y) = 0, also when label
    smoothing makes the summed loss positive (not inf), and when every example is ignored."""
    x = xs(xp, [[1.0, 2.0, 3.0, 0.0, 1.0], [0.0, 1.0, 0.0, 2.0, 1.0], [3.0, 2.0, 1.0, 0.0, 0.0]])
    w = xs(xp, [0.0, 1.0, 1.0, 2.0, 1.0])
    for kw in (dict(weight=w), dict(weight=w, label_smoothing=0.2), dict(weight=w, z_loss=0.1)):
        assert np.isnan(np_(crossent.softmax_cross_entropy(x, xs(xp, [0, 0, 0]), reduction="mean", **kw)))
    got = crossent.softmax_cross_entropy(x, xs(xp, [-100, -100, -100]), ignore_index=-100, reduction="mean")
    assert np.isnan(np_(got))


@pytest.mark.parametrize(
    "dtype, margins",
    [
        ("float32", [10, 20, 40]),
        ("float32", [46, 60, 80]),  # loss 1.4e-20 at margin 46, down to 2.6e-35
        ("float64", [10, 46, 100]),  # 1e-20 at margin 46
        ("float64", [300, 500, 700]),  # down to 1.4e-304
    ],
)
def test_confident_rows_keep_relative_accuracy_log1p_trick_and_liger_1329(xp, dtype, margins):
    """lse = m + log1p(sum of the other terms): loss ~ exp(-margin) to full relative accuracy.

    ``log(sum(exp(s)))`` would round ``1 + 1e-20`` to 1 and return a loss of 0. The integer
    logits make ``s = z - max`` exact, so the tolerance is purely the dtype's ``rtol``.
    Also the gradient: the target class's ``p_y - 1`` must be ~ -1e-20, not 0 nor noise
    (``expm1``, the regression of Liger PR #1329), and the other classes' tiny ``p_k``
    must be relatively accurate.
    """
    c = GRID[1]
    x = np.array([[0.0, -m, -m - 1.0, -m - 2.0, -m - 9.0] for m in margins], dtype=dtype)
    y = np.zeros(len(margins), dtype=np.int64)
    ref = mp_softmax_ce(x, y, dtype=dtype)
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, y))
    got, g = np_(loss), np_(grad)
    assert (got > 0).all(), got  # not rounded away
    assert (g[:, 0] < 0).all(), g[:, 0]
    assert_mp_close(got, ref["loss"], dtype)
    for i in range(len(margins)):
        for k in range(c):
            e = ref["grad"][i][k]
            assert abs(mpf(float(g[i, k])) - e) <= RTOL[dtype] * abs(e) + ATOL[dtype], (i, k, g[i, k], e)
    # the same in a shifted frame (max not at 0, s exact again)
    loss2 = crossent.softmax_cross_entropy(xs(xp, x + 1024.0), xs(xp, y))
    assert_mp_close(np_(loss2), ref["loss"], dtype)


# --- probabilities, log-probabilities, binary ------------------------------------------


def mp_prob_ce(
    logp: list[list[Any]], target: np.ndarray, weight: Any, ls: float
) -> list[Any]:
    """Exact loss from exact log-probabilities (``-inf`` allowed), ``0 * inf = 0``."""
    out = []
    with mp.workdps(DPS):
        eps = mpf(ls)
        n_cls = len(logp[0])
        w = [mpf(1)] * n_cls if weight is None else [mpf(float(v)) for v in weight]
        for i, row in enumerate(logp):
            neg = [-v for v in row]
            if target.ndim == 1:
                y = int(target[i])
                loss = mpf(0)
                if eps < 1:
                    loss = (1 - eps) * mul0(w[y], neg[y])
                if eps > 0:
                    loss += eps / n_cls * mp.fsum(mul0(wc, nc) for wc, nc in zip(w, neg))
            else:
                qq = [wc * ((1 - eps) * mpf(float(q)) + eps / n_cls) for wc, q in zip(w, target[i])]
                loss = mp.fsum(mul0(q, nc) for q, nc in zip(qq, neg))
            out.append(loss)
    return out


def _log_exact(v: float) -> Any:
    return mp.log(mpf(v)) if v > 0 else mpf("-inf")


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_cross_entropy_and_nll_loss_match_mpmath(xp, dtype, data):
    """Probabilities from 0 (loss inf) through 1e-38/1e-308 to 1; log-probabilities to -1e300."""
    shape = data.draw(shapes(xp))
    width = 32 if dtype == "float32" else 64
    probs = data.draw(
        hnp.arrays(np.dtype(dtype), shape, elements=st.floats(0, 1, width=width, allow_subnormal=False)),
        label="probs",
    )
    soft = data.draw(st.booleans(), label="soft")
    target = (
        data.draw(soft_targets(shape, dtype), label="q")
        if soft
        else data.draw(hnp.arrays(np.int64, (shape[0],), elements=st.integers(0, shape[1] - 1)), label="y")
    )
    # JAX: weights always, smoothing with soft targets only (index targets keep the gather path)
    w = data.draw(class_weights(shape[1], dtype, optional=not is_jax(xp)), label="weight")
    ls = data.draw(st.sampled_from([0.3] if soft else [0.0]) if is_jax(xp) else st.sampled_from([0.0, 0.3]),
                   label="label_smoothing")
    kw = dict(weight=None if w is None else xs(xp, w), label_smoothing=ls)
    with mp.workdps(DPS):
        exact = mp_prob_ce([[_log_exact(float(v)) for v in r] for r in probs], target, w, ls)
    got = crossent.cross_entropy(xs(xp, probs), xs(xp, target), **kw)
    assert_mp_close(np_(got), exact, dtype)

    # nll_loss on log-probabilities anywhere in [-huge, 0], -inf included
    logp = data.draw(
        hnp.arrays(
            np.dtype(dtype),
            shape,
            elements=st.floats(-HUGE[dtype], 0, width=width, allow_subnormal=False) | st.just(-inf),
        ),
        label="log_probs",
    )
    with mp.workdps(DPS):
        exact = mp_prob_ce([[mpf(float(v)) for v in r] for r in logp], target, w, ls)
    got = crossent.nll_loss(xs(xp, logp), xs(xp, target), **kw)
    assert_mp_close(np_(got), exact, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_binary_cross_entropies_match_mpmath(xp, dtype, data):
    shape = data.draw(shapes(xp))
    width = 32 if dtype == "float32" else 64
    unit = st.floats(0, 1, width=width, allow_subnormal=False)
    t = data.draw(
        hnp.arrays(np.dtype(dtype), shape, elements=st.sampled_from([0.0, 1.0]) | unit), label="target"
    )
    weights = hnp.arrays(np.dtype(dtype), shape, elements=weight_values(dtype))
    w = data.draw(weights if is_jax(xp) else st.none() | weights, label="w")
    p = data.draw(hnp.arrays(np.dtype(dtype), shape, elements=unit), label="probs")
    with mp.workdps(DPS):
        exact = []
        for idx in np.ndindex(shape):
            pe, te = mpf(float(p[idx])), mpf(float(t[idx]))
            v = mul0(te, -_log_exact(float(p[idx]))) + mul0(1 - te, -(mp.log1p(-pe) if pe < 1 else mpf("-inf")))
            exact.append(v if w is None else mul0(mpf(float(w[idx])), v))
    got = crossent.binary_cross_entropy(xs(xp, p), xs(xp, t), weight=None if w is None else xs(xp, w))
    # XLA's float64 log1p on CPU is up to 129 ulp off for arguments in (-0.53, -0.28)
    # (jax-ml/jax#39707, fixed by openxla/xla#46765): log1p(-p) for p near 0.41.
    rtol = 3e-14 if is_jax(xp) and dtype == "float64" else None
    assert_mp_close(np_(got), exact, dtype, rtol=rtol)

    # sigmoid: logits over the whole range; -log sigmoid(x) = softplus(-x) is ~exp(x) for x << 0
    b = HUGE[dtype]
    x = data.draw(
        hnp.arrays(np.dtype(dtype), shape, elements=st.floats(-b, b, width=width, allow_subnormal=False)
                   | st.floats(-80, 80, width=width)),
        label="logits",
    )
    pos_weights = hnp.arrays(np.dtype(dtype), (shape[1],), elements=weight_values(dtype))
    pw = data.draw(pos_weights if is_jax(xp) else st.none() | pos_weights, label="pw")
    with mp.workdps(DPS):
        exact = []
        for idx in np.ndindex(shape):
            xe, te = mpf(float(x[idx])), mpf(float(t[idx]))
            pos = te if pw is None else mpf(float(pw[idx[-1]])) * te
            v = pos * mp.log1p(mp.exp(-xe)) + (1 - te) * mp.log1p(mp.exp(xe))
            exact.append(v if w is None else mpf(float(w[idx])) * v)
    got = crossent.sigmoid_binary_cross_entropy(
        xs(xp, x), xs(xp, t), weight=None if w is None else xs(xp, w), pos_weight=None if pw is None else xs(xp, pw)
    )
    assert_mp_close(np_(got), exact, dtype)


VOCAB = 32000


# (JAX left out for compile time: its reductions are XLA's, and passed when checked.)
@pytest.mark.parametrize("xp", ["numpy", "array_api_strict", "torch"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_vocabulary_class_sums_stay_accurate(xp, dtype):
    """Soft targets and label smoothing sum C terms per row: a language-model vocabulary must
    not cost accuracy (plain left-to-right accumulation drifts by ~C u, which is 1e-3 relative
    in float32 at C = 32000; pairwise summation stays near log2(C) u).

    Equal logits (log-probabilities) make every -log p_c the same number, so the exact loss
    is that number times the exact sum of the smoothed target, here 1 or sum(q)."""
    c = VOCAB
    x = np.zeros((1, c), dtype=dtype)
    onehot = np.zeros((1, c), dtype=dtype)
    onehot[0, 7] = 1.0
    uniform = np.full((1, c), 1.0 / c, dtype=dtype)
    usum = math.fsum(uniform[0].astype(np.float64))  # exact: the values are dyadic
    log_c = math.log(c)
    lp = np.full((1, c), -log_c, dtype=dtype)
    neg_lp = -float(lp[0, 0])
    neg_log_p = -math.log(float(uniform[0, 0]))
    y = np.array([7])
    cases = [
        ("softmax_soft_smoothing", crossent.softmax_cross_entropy, x, onehot, dict(label_smoothing=0.1), log_c),
        ("softmax_soft_uniform", crossent.softmax_cross_entropy, x, uniform, {}, log_c * usum),
        ("softmax_index_smoothing", crossent.softmax_cross_entropy, x, y, dict(label_smoothing=0.1), log_c),
        ("value_and_grad_soft_smoothing", lambda *a, **k: crossent.softmax_cross_entropy_value_and_grad(*a, **k)[0],
         x, onehot, dict(label_smoothing=0.1), log_c),
        ("nll_soft_smoothing", crossent.nll_loss, lp, onehot, dict(label_smoothing=0.1), neg_lp),
        ("nll_index_smoothing", crossent.nll_loss, lp, y, dict(label_smoothing=0.1), neg_lp),
        ("cross_entropy_soft_uniform", crossent.cross_entropy, uniform, uniform, {}, neg_log_p * usum),
        ("cross_entropy_index_smoothing", crossent.cross_entropy, uniform, y, dict(label_smoothing=0.1), neg_log_p),
    ]
    errors = {}
    for name, f, inp, t, kw, exact in cases:
        got = float(np_(f(xs(xp, inp), xs(xp, t), **kw))[0])
        errors[name] = abs(got - exact) / exact
    bad = {k: f"{v:.1e}" for k, v in errors.items() if v > RTOL[dtype]}
    assert not bad, f"relative errors above {RTOL[dtype]:g}: {bad}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_threaded_kernel_gives_the_rows_of_single_threaded_calls(dtype):
    """NumPy input of 140 K elements is split over threads by the compiled kernel: every row
    must come out bit for bit as from small (single-threaded) calls."""
    rng = np.random.default_rng(11)
    n, c = 20000, 7
    x = (rng.normal(size=(n, c)) * 10.0 ** rng.integers(-3, 4, size=(n, 1))).astype(dtype)
    y = rng.integers(0, c, size=n)
    w = rng.uniform(0, 2, size=c).astype(dtype)
    for kw in (dict(), dict(weight=w, label_smoothing=0.1, z_loss=1e-4, softcap=30.0)):
        loss, grad = crossent.softmax_cross_entropy_value_and_grad(x, y, **kw)
        parts = [crossent.softmax_cross_entropy_value_and_grad(x[i : i + 997], y[i : i + 997], **kw)
                 for i in range(0, n, 997)]
        np.testing.assert_array_equal(loss, np.concatenate([p[0] for p in parts]))
        np.testing.assert_array_equal(grad, np.concatenate([p[1] for p in parts]))


# ----------------------------------------------------------------------------------------
# 2. special values
# ----------------------------------------------------------------------------------------

L2 = math.log(2.0)
L3 = math.log(3.0)


def _per_row(xp: Any, f: Any, rows: Any, targets: Any, dtype: str, **kw: Any) -> np.ndarray:
    """``f`` on each one-example batch ``rows[i:i+1]``: one value per table row.

    One row per call keeps every table in the same ``(1, C)`` shape (JAX compiles once)."""
    out = []
    for row, t in zip(rows, targets):
        t = np.asarray([t])
        t = t.astype(dtype) if t.dtype.kind == "f" else t
        out.append(np_(f(xs(xp, np.asarray([row], dtype=dtype)), xs(xp, t), **kw))[0])
    return np.array(out)


def _assert_table(got: np.ndarray, expected: list[float], ids: list[str], rtol: float) -> None:
    for g, e, name in zip(got, expected, ids):
        if math.isnan(e):
            assert math.isnan(g), (name, g)
        elif math.isinf(e) or e == 0.0:
            assert g == e, (name, g, e)
        else:
            assert abs(g - e) <= rtol * abs(e), (name, g, e)


def _table_ids(table: list[Any]) -> list[str]:
    return [row[0] for row in table]


# (id, logits row, class-index target, exact loss)
SOFTMAX_INDEX_TABLE = [
    ("plain", [0.0, 0.0, 0.0], 1, L3),
    ("masked_other_class", [-inf, 0.0, 1.0], 2, math.log1p(math.exp(-1.0))),
    ("masked_other_classes", [-inf, -inf, 5.0], 2, 0.0),
    ("masked_other_tie", [-inf, 0.0, 0.0], 1, L2),
    ("masked_target", [-inf, 0.0, 1.0], 0, inf),
    ("all_masked", [-inf, -inf, -inf], 0, nan),
    ("posinf_target", [inf, 0.0, 1.0], 0, nan),  # lse = inf (documented): inf - inf
    ("posinf_other", [inf, 0.0, 1.0], 1, inf),
    ("two_posinf", [inf, inf, 0.0], 0, nan),
    ("posinf_and_masked_target", [inf, -inf, 0.0], 1, inf),
    ("nan_target", [nan, 0.0, 1.0], 0, nan),
    ("nan_other", [nan, 0.0, 1.0], 2, nan),
    ("nan_with_masked", [nan, -inf, 0.0], 2, nan),
    ("nan_with_posinf", [nan, inf, 0.0], 2, nan),
    ("huge_gap_wrong", [1e30, -1e30, 0.0], 1, 2e30),
    ("huge_gap_right", [1e30, -1e30, 0.0], 0, 0.0),
    ("huge_negative_row", [-1e30, -1e30, -1e30], 0, L3),
    ("huge_positive_row", [1e30, 1e30, 1e30], 2, L3),
    ("tiny_logits", [1e-30, -1e-30, 0.0], 1, L3 + 1e-30),
    ("exp_overflow_without_shift", [1000.0, 999.0, 0.0], 1, 1.0 + math.log1p(math.exp(-1.0))),
    ("exp_underflow_without_shift", [-1000.0, -1001.0, -2000.0], 0, math.log1p(math.exp(-1.0))),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_special_values(xp, dtype):
    ids, rows, y, expected = zip(*SOFTMAX_INDEX_TABLE)
    got = _per_row(xp, crossent.softmax_cross_entropy, rows, y, dtype)
    _assert_table(got, list(expected), list(ids), RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_class_special_values(xp, dtype):
    """C = 1: the loss is 0 for every finite logit; an all-masked or +inf row is NaN."""
    x = np.array([[5.0], [-1e30], [1e30], [0.0], [-inf], [inf], [nan]], dtype=dtype)
    got = np_(crossent.softmax_cross_entropy(xs(xp, x), xs(xp, np.zeros(7, dtype=np.int64))))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 0.0, nan, nan, nan])


def test_float32_extremes_give_finite_loss(xp):
    """±1e30 in float32: finite (lse never forms exp(1e30), nor squares it without z_loss).

    Only when the exact loss itself exceeds float32's range (3e38 + 3e38) is it inf.
    """
    rows = [[1e30, -1e30, 0.0], [-1e30, 1e30, 0.0], [3e38, -3e38, 0.0], [3e38, 3e38, 3e38], [-3e38, -3e38, -3e38]]
    got = _per_row(xp, crossent.softmax_cross_entropy, rows, [0, 0, 1, 0, 1], "float32")
    assert got[0] == 0.0
    assert got[1] == np.float32(2e30)
    assert got[2] == inf  # exact 6e38 > float32 max
    np.testing.assert_allclose(got[3:], [L3, L3], rtol=1e-6)
    # smoothing: (1 - eps) nll_y + eps / 3 sum_c nll_c, eps = 0.75
    got = _per_row(xp, crossent.softmax_cross_entropy, rows[:2], [0, 0], "float32", label_smoothing=0.75)
    np.testing.assert_allclose(got, [0.25 * (2e30 + 1e30), 0.25 * 2e30 + 0.25 * (2e30 + 1e30)], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_z_loss_does_not_overflow_before_the_loss_does(xp, dtype):
    """``z_loss * lse**2`` is representable although ``lse**2`` alone is not.

    float32: lse = 1e20, lse**2 = 1e40 > 3.4e38, but 1e-4 * lse**2 = 1e36 is a float32.
    The exact loss is finite, so the result must be (within rtol), not inf.
    """
    big = 1e20 if dtype == "float32" else 1e155  # lse**2 overflows, z_loss * lse**2 does not
    x = np.array([[big, 0.0, 0.0]], dtype=dtype)
    y = np.array([0])
    ref = mp_softmax_ce(x, y, z_loss=1e-4, dtype=dtype)
    assert ref["loss"][0] < mpf(float(np.finfo(np.dtype(dtype)).max))
    got = np_(crossent.softmax_cross_entropy(xs(xp, x), xs(xp, y), z_loss=1e-4))
    assert_mp_close(got, ref["loss"], dtype, ref["loss_slack"])


@pytest.mark.parametrize("n_classes", [2, 300])  # the small-C tiles and the row kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_z_loss_with_a_weight_below_one_does_not_overflow_before_the_loss_does(xp, dtype, n_classes):
    """Regression (hypothesis, float64 x = 1.3407807929942597e156, weight 0.5, z_loss 1e-4):
    ``(z_loss * lse) * lse`` overflowed to inf although ``w_y * z_loss * lse**2`` is 0.75
    of the largest float; the weight now comes first."""
    fmax = float(np.finfo(np.dtype(dtype)).max)
    big = math.sqrt(1.5 / 1e-4) * math.sqrt(fmax)  # z_loss lse^2 = 1.5 max: the weight brings it in
    x = np.zeros((1, n_classes), dtype=dtype)
    x[0, 0] = big
    y = np.array([0])
    w = np.linspace(0.5, 1.0, n_classes).astype(dtype)
    ref = mp_softmax_ce(x, y, weight=w, z_loss=1e-4, dtype=dtype)
    assert mpf(fmax) / 2 < ref["loss"][0] < mpf(fmax)
    got = np_(crossent.softmax_cross_entropy(xs(xp, x), xs(xp, y), weight=xs(xp, w), z_loss=1e-4))
    assert_mp_close(got, ref["loss"], dtype, ref["loss_slack"])
    # a zero weight cancels an infinite z-loss term (0 * inf = 0), NaN still propagates
    x2 = np.array([[np.inf, 0.0], [np.nan, 0.0]], dtype=dtype)
    got = np_(crossent.softmax_cross_entropy(xs(xp, x2), xs(xp, np.array([1, 1])),
                                             weight=xs(xp, np.array([1.0, 0.0], dtype=dtype)),
                                             z_loss=1e-4))
    assert got[0] == 0.0 and math.isnan(got[1])


# (id, logits row, probability target row, exact loss)
SOFTMAX_SOFT_TABLE = [
    ("zero_target_on_masked_class", [-inf, 0.0, 0.0], [0.0, 0.5, 0.5], L2),  # 0 log 0 = 0
    ("mass_on_masked_class", [-inf, 0.0, 0.0], [0.5, 0.5, 0.0], inf),
    ("all_zero_target", [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], 0.0),
    ("all_zero_target_masked", [-inf, 0.0, 0.0], [0.0, 0.0, 0.0], 0.0),
    ("all_zero_target_nan_logit", [nan, 2.0, 3.0], [0.0, 0.0, 0.0], nan),  # NaN never hidden
    ("nan_logit_zero_target_there", [nan, 2.0, 3.0], [0.0, 1.0, 0.0], nan),
    ("nan_target", [1.0, 2.0, 3.0], [nan, 0.5, 0.5], nan),
    ("posinf_all_target_there", [inf, 0.0, 0.0], [1.0, 0.0, 0.0], nan),  # inf - inf
    ("all_masked", [-inf, -inf, -inf], [0.0, 1.0, 0.0], nan),
    ("huge_gap", [1e30, -1e30, 0.0], [0.5, 0.5, 0.0], 1e30),
    ("unnormalised_target", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 3 * L3),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_target_special_values(xp, dtype):
    ids, rows, q, expected = zip(*SOFTMAX_SOFT_TABLE)
    got = _per_row(xp, crossent.softmax_cross_entropy, rows, q, dtype)
    _assert_table(got, list(expected), list(ids), RTOL[dtype])


def test_posinf_logit_with_zero_target_probability_gives_inf_like_the_index_target(xp):
    """Logits [inf, 0, 0]: predicting class 1 costs lse - z_1 = inf (p_1 -> 0).

    Index target 1 gives inf; the same target one-hot, [0, 1, 0], must give inf as well: the
    class with the +inf logit has target probability 0 and contributes nothing (it must not
    turn the loss into NaN via 0 * (inf - inf)). Its own term is 0 * (lse - z_0) with
    ``lse - z_0 -> 0`` in the limit, so 0 is also what the math says for it.
    """
    x = xs(xp, [[inf, 0.0, 0.0]])
    index = np_(crossent.softmax_cross_entropy(x, xs(xp, [1])))
    onehot = np_(crossent.softmax_cross_entropy(x, xs(xp, [[0.0, 1.0, 0.0]])))
    assert index[0] == inf
    assert onehot[0] == inf, onehot


# (id, logits row, target, options, exact loss); weight [0, 1, 2] where given
W3 = [0.0, 1.0, 2.0]
ZERO_WEIGHT_TABLE = [
    ("zero_weight_masked_target", [-inf, 0.0, 0.0], 0, dict(weight=W3), 0.0),  # 0 * inf = 0
    ("weighted_masked_other", [-inf, 0.0, 0.0], 1, dict(weight=W3), L2),
    ("zero_weight_nan_row", [nan, 0.0, 0.0], 0, dict(weight=W3), nan),  # 0 * NaN stays NaN
    ("zero_weight_posinf_target", [inf, 0.0, 0.0], 0, dict(weight=W3), nan),
    # smoothing reads every class: the masked class has weight 0, so it costs nothing ...
    ("smoothing_masked_zero_weight", [-inf, 0.0, 0.0], 1, dict(weight=W3, label_smoothing=0.3),
     0.7 * L2 + 0.1 * 3 * L2),
    ("smoothing_masked_zero_weight_target", [-inf, 0.0, 0.0], 0, dict(weight=W3, label_smoothing=0.3),
     0.1 * 3 * L2),
    # ... and without the zero weight it is inf (eps / C * (-log 0))
    ("smoothing_masked_unweighted", [-inf, 0.0, 0.0], 1, dict(label_smoothing=0.3), inf),
    ("z_loss_zero_weight_masked_target", [-inf, 0.0, 0.0], 0, dict(weight=W3, z_loss=0.1), 0.0),
    ("soft_zero_weight_on_masked", [-inf, 0.0, 0.0], [0.5, 0.5, 0.0], dict(weight=W3), 0.5 * L2),
    ("soft_zero_weight_all_zero_target", [nan, 0.0, 0.0], [0.0, 0.0, 0.0], dict(weight=W3), nan),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ZERO_WEIGHT_TABLE, ids=_table_ids(ZERO_WEIGHT_TABLE))
def test_zero_weight_times_infinity_is_zero(xp, dtype, case):
    """A class with weight 0 contributes 0 even when its probability is 0 (logit -inf), as in
    ``xlogy``; a NaN is still never hidden."""
    name, row, t, opts, expected = case
    opts = {k: (xs(xp, np.asarray(v, dtype=dtype)) if k == "weight" else v) for k, v in opts.items()}
    got = _per_row(xp, crossent.softmax_cross_entropy, [row], [t], dtype, **opts)
    _assert_table(got, [expected], [name], RTOL[dtype])


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(weight=[1.0, 2.0, 0.5, 1.0, 3.0]), dict(label_smoothing=0.1), dict(z_loss=1e-3),
     dict(softcap=5.0), dict(soft=True)],
    ids=["plain", "weight", "smoothing", "z_loss", "softcap", "soft"],
)
@pytest.mark.parametrize("col", [0, 2])  # 2 is the target of the poisoned row
def test_nan_poisons_its_row_only_and_every_reduction(xp, opts, col):
    """NaN anywhere in a row: that row's loss and gradient are NaN, the other rows are not
    touched, and mean/sum are NaN (never hidden)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=GRID)
    y = np.array([1, 2, 4])
    opts = dict(opts)
    target = np.eye(5)[y] * 0.75 + 0.05 if opts.pop("soft", False) else y
    if "weight" in opts:
        opts["weight"] = xs(xp, opts["weight"])
    clean_loss, clean_grad = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, target), **opts)
    bad = x.copy()
    bad[1, col] = nan
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(xs(xp, bad), xs(xp, target), **opts)
    loss, grad = np_(loss), np_(grad)
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    keep = [0, 2]
    np.testing.assert_array_equal(loss[keep], np_(clean_loss)[keep])
    np.testing.assert_array_equal(grad[keep], np_(clean_grad)[keep])
    for reduction in ("mean", "sum"):
        total = crossent.softmax_cross_entropy(xs(xp, bad), xs(xp, target), reduction=reduction, **opts)
        assert np.isnan(np_(total))


def test_nan_in_an_ignored_row_is_ignored(xp):
    """An ignored example gives loss 0 and gradient 0 whatever its logits (NaN, ±inf)."""
    x = np.array([[nan, 0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, -1.0, 0.5], [-inf, -inf, inf, nan, -inf]])
    y = np.array([-100, 2, -100])
    w = np.array([1.0, 1.0, 2.0, 0.5, 3.0])
    X, Y = xs(xp, x), xs(xp, y)
    for kw in (dict(), dict(weight=w, label_smoothing=0.2, z_loss=1e-2)):
        xkw = {k: (xs(xp, v) if k == "weight" else v) for k, v in kw.items()}
        loss, grad = crossent.softmax_cross_entropy_value_and_grad(X, Y, ignore_index=-100, **xkw)
        loss, grad = np_(loss), np_(grad)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        np.testing.assert_array_equal(loss[[0, 2]], 0.0)
        np.testing.assert_array_equal(grad[[0, 2]], 0.0)
        ref_loss, ref_grad = crossent.softmax_cross_entropy_value_and_grad(x[1:2], y[1:2], **kw)
        np.testing.assert_allclose(loss[1], ref_loss[0], rtol=1e-13)
        np.testing.assert_allclose(grad[1], ref_grad[0], rtol=1e-13, atol=1e-16)
        # the mean counts the one kept example only; the sum is that example's loss
        for reduction in ("mean", "sum"):
            got = np_(crossent.softmax_cross_entropy(X, Y, ignore_index=-100, reduction=reduction, **xkw))
            ref = crossent.softmax_cross_entropy(x[1:2], y[1:2], reduction=reduction, **kw)
            np.testing.assert_allclose(got, ref, rtol=1e-13)


# (id, probability row, class-index target, options, exact loss)
PROBS_TABLE = [
    ("textbook", [0.25, 0.25, 0.5], 2, {}, L2),
    ("zero_probability", [0.0, 0.5, 0.5], 0, {}, inf),
    ("probability_one", [1.0, 0.0, 0.0], 0, {}, 0.0),
    ("nan_target_probability", [nan, 0.5, 0.5], 0, {}, nan),
    ("smoothing_reads_zero", [0.0, 1.0, 0.0], 1, dict(label_smoothing=0.3), inf),
    ("smoothing_reads_nan", [nan, 0.5, 0.5], 1, dict(label_smoothing=0.3), nan),
    ("zero_weight_zero_probability", [0.0, 0.5, 0.5], 0, dict(weight=W3), 0.0),
    ("eps_clips_zero", [0.0, 0.5, 0.5], 0, dict(eps=2.0**-20), 20 * L2),
    ("eps_clips_one", [1.0, 0.0, 0.0], 0, dict(eps=2.0**-20), -math.log1p(-(2.0**-20))),
    ("eps_keeps_nan", [nan, 0.5, 0.5], 0, dict(eps=2.0**-20), nan),
    ("eps_inside_range_is_exact", [0.25, 0.25, 0.5], 2, dict(eps=0.125), L2),
    ("eps_clips_smoothed_zeros", [1.0, 0.0, 0.0], 0, dict(eps=0.25, label_smoothing=0.3),
     0.8 * -math.log(0.75) + 0.2 * -math.log(0.25)),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_special_values(xp, dtype):
    """Probabilities 0 and 1 (loss inf and 0), NaN, and eps clipping; nll_loss on the logs."""
    for name, row, y, opts, expected in PROBS_TABLE:
        kw = {k: (xs(xp, np.asarray(v, dtype=dtype)) if k == "weight" else v) for k, v in opts.items()}
        got = _per_row(xp, crossent.cross_entropy, [row], [y], dtype, **kw)
        _assert_table(got, [expected], [name], RTOL[dtype])
        if "eps" not in opts:  # the same through nll_loss on log-probabilities
            with np.errstate(divide="ignore"):
                logp = np.log(np.asarray(row, dtype=dtype))
            got = _per_row(xp, crossent.nll_loss, [logp], [y], dtype, **kw)
            _assert_table(got, [expected], ["nll_loss:" + name], RTOL[dtype])


def test_cross_entropy_reads_only_the_target_probability(xp):
    """Documented: with index targets and no smoothing only ``probs[i, y_i]`` is read, so a NaN
    elsewhere in the row does not poison the loss, as in ``torch.nn.functional.nll_loss``.
    Pinned so that a change is deliberate."""
    probs = np.array([[nan, 0.5, 0.5]])
    got = np_(crossent.cross_entropy(xs(xp, probs), xs(xp, np.array([1]))))
    np.testing.assert_allclose(got, [L2], rtol=1e-15)
    got = np_(crossent.nll_loss(xs(xp, np.log(probs)), xs(xp, np.array([1]))))
    np.testing.assert_allclose(got, [L2], rtol=1e-15)


# (id, probability, target, options, exact loss)
BCE_TABLE = [
    ("p0_t1", 0.0, 1.0, {}, inf),
    ("p0_t0", 0.0, 0.0, {}, 0.0),
    ("p1_t1", 1.0, 1.0, {}, 0.0),
    ("p1_t0", 1.0, 0.0, {}, inf),
    ("p0_soft", 0.0, 0.5, {}, inf),
    ("half_half", 0.5, 0.5, {}, L2),
    ("nan_t1", nan, 1.0, {}, nan),
    ("nan_t0", nan, 0.0, {}, nan),
    ("log1p_small_p", 2.0**-30, 0.0, {}, -math.log1p(-(2.0**-30))),  # ~9.3e-10, relative
    ("eps_clips_p0", 0.0, 1.0, dict(eps=2.0**-20), 20 * L2),
    ("eps_clips_p1", 1.0, 0.0, dict(eps=2.0**-20), 20 * L2),
    ("eps_clips_p1_t1", 1.0, 1.0, dict(eps=2.0**-20), -math.log1p(-(2.0**-20))),
    ("eps_keeps_nan", nan, 1.0, dict(eps=2.0**-20), nan),
    ("zero_weight_inf", 0.0, 1.0, dict(weight=0.0), 0.0),
    ("zero_weight_nan", nan, 1.0, dict(weight=0.0), nan),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_special_values(xp, dtype):
    for name, p, t, opts, expected in BCE_TABLE:
        kw = {k: (xs(xp, np.array([v], dtype=dtype)) if k == "weight" else v) for k, v in opts.items()}
        got = np_(crossent.binary_cross_entropy(
            xs(xp, np.array([p], dtype=dtype)), xs(xp, np.array([t], dtype=dtype)), **kw))
        _assert_table(got, [expected], [name], RTOL[dtype])


# (id, logit, target, options, exact loss)
SIGMOID_TABLE = [
    ("posinf_t1", inf, 1.0, {}, 0.0),
    ("posinf_t0", inf, 0.0, {}, inf),
    ("neginf_t0", -inf, 0.0, {}, 0.0),  # PyTorch: nan (pytorch#49844)
    ("neginf_t1", -inf, 1.0, {}, inf),
    ("posinf_soft", inf, 0.5, {}, inf),
    ("nan_t0", nan, 0.0, {}, nan),
    ("nan_t1", nan, 1.0, {}, nan),
    ("zero_soft", 0.0, 0.5, {}, L2),
    ("huge_right", 1e30, 1.0, {}, 0.0),
    ("huge_wrong", 1e30, 0.0, {}, 1e30),
    ("huge_negative_wrong", -1e30, 1.0, {}, 1e30),
    ("huge_negative_right", -1e30, 0.0, {}, 0.0),
    ("tiny_loss", 50.0, 1.0, {}, math.log1p(math.exp(-50.0))),  # 1.9e-22, relative accuracy
    ("tiny_loss_negative", -50.0, 0.0, {}, math.log1p(math.exp(-50.0))),
    ("zero_pos_weight_masked", -inf, 1.0, dict(pos_weight=0.0), 0.0),
    ("zero_weight_inf", inf, 0.0, dict(weight=0.0), 0.0),
    ("zero_weight_nan", nan, 0.0, dict(weight=0.0), nan),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_binary_cross_entropy_special_values(xp, dtype):
    for name, x, t, opts, expected in SIGMOID_TABLE:
        kw = {k: xs(xp, np.array([v], dtype=dtype)) for k, v in opts.items()}
        got = np_(crossent.sigmoid_binary_cross_entropy(
            xs(xp, np.array([x], dtype=dtype)), xs(xp, np.array([t], dtype=dtype)), **kw))
        _assert_table(got, [expected], [name], RTOL[dtype])


@pytest.mark.parametrize("func", ["binary_cross_entropy", "sigmoid_binary_cross_entropy"])
def test_binary_nan_poisons_element_and_reductions(xp, func):
    f = getattr(crossent, func)
    x = np.array([[0.25, nan, 0.5, 0.75, 1.0], [0.5, 0.75, 0.0, 0.125, 0.5], [0.5] * 5])
    t = np.array([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0], [0.5] * 5])
    got = np_(f(xs(xp, x), xs(xp, t)))
    assert np.isnan(got[0, 1]) and np.isfinite(np.delete(got.ravel(), 1)).all()
    for reduction in ("mean", "sum"):
        assert np.isnan(np_(f(xs(xp, x), xs(xp, t), reduction=reduction)))


# ----------------------------------------------------------------------------------------
# 3. gradients
# ----------------------------------------------------------------------------------------

W5 = [1.0, 2.0, 0.5, 0.0, 1.5]

# (id, options, target kind, logits shape); targets are drawn in `_grad_case`
GRAD_CASES = [
    ("plain_none", dict(), "index", (3, 5)),
    ("plain_mean", dict(reduction="mean"), "index", (3, 5)),
    ("plain_sum", dict(reduction="sum"), "index", (3, 5)),
    ("weight_mean", dict(weight=W5, reduction="mean"), "index", (3, 5)),
    ("ignore_index_mean", dict(ignore_index=-100, reduction="mean"), "index", (3, 5)),
    ("weight_ignore_mean", dict(weight=W5, ignore_index=-100, reduction="mean"), "index", (3, 5)),
    ("label_smoothing", dict(label_smoothing=0.2, reduction="sum"), "index", (3, 5)),
    ("weight_label_smoothing", dict(weight=W5, label_smoothing=0.3, reduction="mean"), "index", (3, 5)),
    ("z_loss", dict(z_loss=0.05), "index", (3, 5)),
    ("weight_z_loss", dict(weight=W5, z_loss=0.05, reduction="mean"), "index", (3, 5)),
    ("softcap", dict(softcap=2.0), "index", (3, 5)),
    ("everything", dict(weight=W5, ignore_index=-100, label_smoothing=0.1, z_loss=0.02, softcap=3.0,
                        reduction="mean"), "index", (3, 5)),
    ("soft", dict(), "soft", (3, 5)),
    ("soft_weight_smoothing_mean", dict(weight=W5, label_smoothing=0.2, reduction="mean"), "soft", (3, 5)),
    ("soft_z_loss_softcap_sum", dict(z_loss=0.05, softcap=2.5, reduction="sum"), "soft", (3, 5)),
    ("kdim_axis1", dict(axis=1, weight=W5, label_smoothing=0.1, z_loss=0.01), "index", (2, 5, 3)),
    ("kdim_axis1_mean_ignore", dict(axis=1, ignore_index=-100, reduction="mean"), "index", (2, 5, 3)),
    ("kdim_axis1_soft", dict(axis=1, z_loss=0.01), "soft", (2, 5, 3)),
]


def _grad_case(case: tuple[Any, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Any]:
    """Logits, target, options and grad_output (an array for reduction="none")."""
    _, opts, kind, shape = case
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=shape)
    axis = opts.get("axis", -1)
    c = shape[axis]
    ex_shape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    if kind == "index":
        t = rng.integers(0, c, size=ex_shape)
        if "ignore_index" in opts:
            t.reshape(-1)[1] = -100
    else:
        t = rng.dirichlet(np.ones(c), size=ex_shape)
        t = np.moveaxis(t, -1, axis)
    opts = dict(opts)
    if opts.get("reduction", "none") == "none":
        g = rng.uniform(0.5, 2.0, size=ex_shape)
    else:
        g = 1.7
    return x, t, opts, g


def _np_objective(x: np.ndarray, t: np.ndarray, opts: dict[str, Any], g: Any) -> float:
    loss = crossent.softmax_cross_entropy(x, t, **opts)
    return float(np.sum(g * loss))


BACKENDS = ["numpy", "array_api_strict", "torch", "jax"]
# JAX compiles each new option structure (about a second each): it checks a subset that
# still exercises every option, both target kinds and a K-dimensional input.
JAX_GRAD_CASES = {"plain_none", "everything", "soft_weight_smoothing_mean", "soft_z_loss_softcap_sum",
                  "kdim_axis1"}


def _backend_case_params(cases: list[Any]) -> list[Any]:
    return [
        pytest.param(b, case, id=f"{b}-{case[0]}")
        for b in BACKENDS
        for case in cases
        if b != "jax" or case[0] in JAX_GRAD_CASES
    ]


@pytest.mark.parametrize("xp, case", _backend_case_params(GRAD_CASES), indirect=["xp"])
def test_value_and_grad_matches_central_differences(xp, case):
    """float64 central differences (step 1e-6, error ~1e-10) of the NumPy loss."""
    x, t, opts, g = _grad_case(case)
    kw = {k: (xs(xp, v) if k == "weight" else v) for k, v in opts.items()}
    go = xs(xp, g) if isinstance(g, np.ndarray) else g
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, t), grad_output=go, **kw)
    grad = np_(grad)
    assert grad.shape == x.shape
    np.testing.assert_allclose(np_(loss), crossent.softmax_cross_entropy(x, t, **opts), rtol=1e-13)
    fd = np.zeros_like(x)
    h = 1e-6
    for idx in np.ndindex(x.shape):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        fd[idx] = (_np_objective(xp_, t, opts, g) - _np_objective(xm, t, opts, g)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in GRAD_CASES if len(c[3]) == 2], ids=lambda c: c[0])
def test_value_and_grad_matches_mpmath_gradient(case, dtype):
    """The analytic gradient against the exact one (reduction="none", unit grad_output)."""
    x, t, opts, _ = _grad_case(case, seed=1)
    x = x.astype(dtype)
    if "ignore_index" in opts:
        t = np.where(t == -100, 0, t)
    t = t.astype(dtype) if t.dtype.kind == "f" else t
    w = None if "weight" not in opts else np.asarray(opts["weight"], dtype=dtype)
    ref = mp_softmax_ce(x, t, weight=w, label_smoothing=opts.get("label_smoothing", 0.0),
                        z_loss=opts.get("z_loss", 0.0), softcap=opts.get("softcap"), dtype=dtype)
    loss, grad = crossent.softmax_cross_entropy_value_and_grad(
        x, t, weight=w, label_smoothing=opts.get("label_smoothing", 0.0),
        z_loss=opts.get("z_loss", 0.0), softcap=opts.get("softcap"))
    assert grad.dtype == np.dtype(dtype)
    assert_mp_close(loss, ref["loss"], dtype, ref["loss_slack"])
    assert_grad_close(grad, ref, dtype)


def _torch_grad(x: np.ndarray, t: np.ndarray, opts: dict[str, Any], g: Any, dtype: str) -> np.ndarray:
    """Gradient of ``sum(g * loss)`` by torch autograd through crossent's reference."""
    import torch

    z = torch.tensor(x.astype(dtype), requires_grad=True)
    tt = torch.from_numpy(t.astype(dtype) if t.dtype.kind == "f" else t)
    kw = {k: (torch.tensor(np.asarray(v, dtype=dtype)) if k == "weight" else v) for k, v in opts.items()}
    loss = crossent.softmax_cross_entropy(z, tt, **kw)
    (loss * torch.as_tensor(g, dtype=loss.dtype)).sum().backward()
    return z.grad.numpy()


def _jax_grad(x: np.ndarray, t: np.ndarray, opts: dict[str, Any], g: Any, dtype: str) -> np.ndarray:
    """Gradient of ``sum(g * loss)`` by ``jax.grad`` through crossent's reference."""
    import jax
    import jax.numpy as jnp

    tt = jnp.asarray(t.astype(dtype) if t.dtype.kind == "f" else t)
    kw = {k: (jnp.asarray(np.asarray(v, dtype=dtype)) if k == "weight" else v) for k, v in opts.items()}
    gg = jnp.asarray(g, dtype=dtype)
    return np.asarray(jax.jit(jax.grad(lambda a: jnp.sum(gg * crossent.softmax_cross_entropy(a, tt, **kw))))(
        jnp.asarray(x.astype(dtype))))


def _analytic(x: np.ndarray, t: np.ndarray, opts: dict[str, Any], g: Any, dtype: str) -> np.ndarray:
    kw = {k: (np.asarray(v, dtype=dtype) if k == "weight" else v) for k, v in opts.items()}
    tt = t.astype(dtype) if t.dtype.kind == "f" else t
    _, grad = crossent.softmax_cross_entropy_value_and_grad(
        x.astype(dtype), tt, grad_output=np.asarray(g, dtype=dtype), **kw)
    assert grad.dtype == np.dtype(dtype)
    return grad


AUTODIFF = [
    pytest.param(_torch_grad, id="torch", marks=pytest.mark.skipif(not have("torch"), reason="torch")),
    pytest.param(_jax_grad, id="jax", marks=pytest.mark.skipif(not have("jax"), reason="jax")),
]
AUTODIFF_CASES = [
    pytest.param(autodiff.values[0], case, id=f"{autodiff.id}-{case[0]}", marks=autodiff.marks)
    for autodiff in AUTODIFF
    for case in GRAD_CASES
    if autodiff.id != "jax" or case[0] in JAX_GRAD_CASES
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("autodiff, case", AUTODIFF_CASES)
def test_value_and_grad_matches_autodiff_through_the_reference(autodiff, case, dtype):
    """The analytic gradient equals autodiff (torch autograd, jax.grad) through the loss."""
    x, t, opts, g = _grad_case(case, seed=2)
    auto = autodiff(x, t, opts, g, dtype)
    analytic = _analytic(x, t, opts, g, dtype)
    assert np.isfinite(auto).all()
    tol = 1e-12 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(analytic, auto, rtol=tol, atol=tol * np.abs(auto).max())


NEG = -inf
# (id, logits, class-index target or probability rows, options): finite logits, or -inf in
# classes that are not the target (no label smoothing, whose loss would be inf)
FINITE_GRAD_CASES = [
    ("moderate", [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [2, 0], dict(reduction="sum")),
    ("ties_at_max", [[5.0, 5.0, 1.0], [2.0, 2.0, 2.0]], [0, 2], dict(reduction="mean")),
    ("confident", [[0.0, -60.0, -80.0], [50.0, 0.0, -50.0]], [0, 0], dict(reduction="sum")),
    ("huge_float32_range", [[1e30, -1e30, 0.0], [-1e30, 1e30, 1e30]], [1, 0], dict(reduction="sum")),
    ("all_options_finite", [[1.0, -3.0, 20.0], [0.5, 0.5, -0.5]], [0, 1],
     dict(weight=[1.0, 0.0, 2.0], label_smoothing=0.3, z_loss=1e-3, softcap=10.0, reduction="mean")),
    ("masked_others", [[NEG, 0.0, 1.0], [NEG, NEG, 3.0]], [2, 2], dict(reduction="sum")),
    ("masked_weighted_z_loss", [[NEG, 0.0, 1.0], [2.0, NEG, NEG]], [1, 0],
     dict(weight=[0.0, 1.0, 3.0], z_loss=1e-2, reduction="mean")),
    ("masked_softcap", [[NEG, 0.0, 1.0], [NEG, 4.0, NEG]], [2, 1], dict(softcap=5.0, reduction="sum")),
    ("masked_ignored_row", [[NEG, 0.0, 1.0], [0.0, NEG, 1.0]], [2, -100],
     dict(ignore_index=-100, reduction="mean")),
    ("masked_soft_zero_mass", [[NEG, 0.0, 1.0], [NEG, NEG, 3.0]], [[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]],
     dict(weight=[1.0, 1.0, 2.0], z_loss=1e-3, reduction="sum")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FINITE_GRAD_CASES, ids=_table_ids(FINITE_GRAD_CASES))
@pytest.mark.parametrize("autodiff", AUTODIFF)
def test_autodiff_through_the_reference_is_finite(autodiff, case, dtype):
    """No NaN gradient from the differentiable path (inf-safe shift, 0 * inf guards).

    The masked (-inf) classes must get gradient exactly 0, like the analytic one."""
    _, x, t, opts = case
    x, t = np.array(x), np.array(t)
    auto = autodiff(x, t, opts, 1.0, dtype)
    analytic = _analytic(x, t, opts, 1.0, dtype)
    assert np.isfinite(auto).all(), auto
    assert np.isfinite(analytic).all(), analytic
    masked = np.isneginf(x)
    np.testing.assert_array_equal(auto[masked], 0.0)
    np.testing.assert_array_equal(analytic[masked], 0.0)
    # absolute scale: the gradient's terms are O(1) (p_k and the one-hot 1). Autodiff forms
    # p_y - 1 by subtraction, so in a confident row it returns 0 where the exact (and the
    # analytic) gradient is -1e-22: autodiff is accurate only to that scale.
    tol = 1e-12 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(analytic, auto, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------
# 4. half precision
# ----------------------------------------------------------------------------------------


def _half(lib: str, a: np.ndarray, dtype: str) -> Any:
    if lib == "numpy":
        return a.astype(dtype)
    if lib == "torch":
        import torch

        return torch.from_numpy(a.astype(np.float32)).to(getattr(torch, dtype))
    import jax.numpy as jnp

    return jnp.asarray(a.astype(np.float32)).astype(getattr(jnp, dtype))


def _upcast(lib: str, h: Any) -> Any:
    if lib == "torch":
        return h.float()
    if lib == "numpy":
        return h.astype(np.float32)
    import jax.numpy as jnp

    return h.astype(jnp.float32)


def _int_array(lib: str, a: np.ndarray) -> Any:
    if lib == "torch":
        import torch

        return torch.from_numpy(a)
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    return a


def _dtype_name(a: Any) -> str:
    return str(a.dtype).replace("torch.", "")


HALF = [
    pytest.param("numpy", "float16", id="numpy-float16"),
    pytest.param("torch", "float16", id="torch-float16", marks=pytest.mark.skipif(not have("torch"), reason="torch")),
    pytest.param("torch", "bfloat16", id="torch-bfloat16", marks=pytest.mark.skipif(not have("torch"), reason="torch")),
    pytest.param("jax", "float16", id="jax-float16", marks=pytest.mark.skipif(not have("jax"), reason="jax")),
    pytest.param("jax", "bfloat16", id="jax-bfloat16", marks=pytest.mark.skipif(not have("jax"), reason="jax")),
]


@pytest.mark.parametrize("lib, dtype", HALF)
def test_half_precision_equals_float32_on_upcast_values(lib, dtype):
    """float16/bfloat16 logits: the result is float32 and *equal* to the float32 computation
    on the upcast values (the upcast is exact); the gradient comes back in the logits' dtype,
    equal to the float32 gradient rounded to it."""
    rng = np.random.default_rng(3)
    x = rng.normal(scale=4.0, size=GRID)
    x[0, 1] = -inf  # masked class
    x[1, 0] = 60000.0 if dtype == "float16" else 1e30  # near the top of the half range
    x[2] = [-30000.0, 0.25, 2.0 ** -14, 0.0, 8.0]
    y = np.array([2, 4, 1])
    h = _half(lib, x, dtype)
    yy = _int_array(lib, y)
    f32 = _upcast(lib, h)
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0], dtype=np.float32)
    for kw in (dict(), dict(weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=20.0, reduction="mean")):
        (loss, lse), grad = crossent.softmax_cross_entropy_value_and_grad(h, yy, return_lse=True, **kw)
        (loss32, lse32), grad32 = crossent.softmax_cross_entropy_value_and_grad(f32, yy, return_lse=True, **kw)
        assert _dtype_name(loss) == "float32" and _dtype_name(lse) == "float32"
        assert _dtype_name(grad) == dtype
        np.testing.assert_array_equal(to_numpy(loss), to_numpy(loss32))
        np.testing.assert_array_equal(to_numpy(lse), to_numpy(lse32))
        np.testing.assert_array_equal(np_(grad), np_(_half(lib, np_(grad32), dtype)))
        assert np.isfinite(to_numpy(loss)).all()
        plain = crossent.softmax_cross_entropy(h, yy, **kw)
        np.testing.assert_array_equal(to_numpy(plain), to_numpy(loss32))
    # probability targets in the same half dtype also accumulate in float32
    q = _half(lib, np.full((3, 5), 0.2), dtype)
    soft = crossent.softmax_cross_entropy(h, q)
    assert _dtype_name(soft) == "float32"
    assert np.isinf(to_numpy(soft)[0])  # mass 0.2 on the masked class
    np.testing.assert_array_equal(to_numpy(soft), to_numpy(crossent.softmax_cross_entropy(f32, _upcast(lib, q))))


@pytest.mark.parametrize("lib, dtype", HALF)
def test_half_precision_binary_and_probability_losses_accumulate_in_float32(lib, dtype):
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.99, size=GRID)
    p[0, 0] = 0.0
    t = (rng.uniform(size=GRID) > 0.5).astype(np.float32)
    y = np.array([0, 1, 4])
    hp, ht = _half(lib, p, dtype), _half(lib, t, dtype)
    for f, args in (
        (crossent.binary_cross_entropy, (hp, ht)),
        (crossent.sigmoid_binary_cross_entropy, (hp * 40 - 20, ht)),
    ):
        got = f(*args)
        assert _dtype_name(got) == "float32"
        ref = f(*(_upcast(lib, a) for a in args))
        np.testing.assert_array_equal(to_numpy(got), to_numpy(ref))
    yy = _int_array(lib, y)
    got = crossent.cross_entropy(hp, yy)
    assert _dtype_name(got) == "float32"
    np.testing.assert_array_equal(to_numpy(got), to_numpy(crossent.cross_entropy(_upcast(lib, hp), yy)))
    assert to_numpy(got)[0] == inf


# ----------------------------------------------------------------------------------------
# 5. invariances
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@SMALL_SETTINGS
@given(data=st.data())
def test_shift_invariance(xp, dtype, data):
    """softmax(z + c) = softmax(z): the loss and gradient of z + c_i equal those of z.

    Logits are multiples of 1/8 and shifts integers, so ``z + c`` is exact and the only
    difference is rounding inside the computation (here none at all: s = z - max is the
    same float in both frames)."""
    n, c = data.draw(shapes(xp))
    k = data.draw(hnp.arrays(np.int64, (n, c), elements=st.integers(-800, 800)))
    x = (k / 8.0).astype(dtype)
    shift = data.draw(hnp.arrays(np.int64, (n, 1), elements=st.integers(-1000, 1000))).astype(dtype)
    y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    ls = data.draw(st.sampled_from([0.25] if is_jax(xp) else [0.0, 0.25]))
    a = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, y), label_smoothing=ls)
    b = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x + shift), xs(xp, y), label_smoothing=ls)
    u = unit_roundoff(dtype)
    np.testing.assert_allclose(np_(b[0]), np_(a[0]), rtol=8 * u, atol=0)
    np.testing.assert_allclose(np_(b[1]), np_(a[1]), rtol=8 * u, atol=8 * u)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [2.0, 0.001, 7.3])
@pytest.mark.parametrize(
    "opts",
    [dict(), dict(z_loss=0.1), dict(label_smoothing=0.1, z_loss=0.05, ignore_index=-100, softcap=3.0)],
    ids=["plain", "z_loss", "smoothing_z_loss_ignore_softcap"],
)
def test_weighted_mean_is_invariant_to_scaling_the_weights(xp, dtype, scale, opts):
    """PyTorch's weighted mean divides by sum(w_y): scaling every weight changes nothing.
    z_loss is weighted by w_y too (documented), so it keeps the invariance."""
    rng = np.random.default_rng(5)
    x = rng.normal(scale=3.0, size=GRID).astype(dtype)
    y = np.array([0, 3, 4])
    if "ignore_index" in opts:
        y[1] = -100
    w = np.array([1.0, 0.5, 2.0, 0.25, 4.0], dtype=dtype)
    X, Y = xs(xp, x), xs(xp, y)
    a, ga = crossent.softmax_cross_entropy_value_and_grad(X, Y, weight=xs(xp, w), reduction="mean", **opts)
    b, gb = crossent.softmax_cross_entropy_value_and_grad(
        X, Y, weight=xs(xp, (w * scale).astype(dtype)), reduction="mean", **opts)
    tol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(np_(b), np_(a), rtol=tol)
    np.testing.assert_allclose(np_(gb), np_(ga), rtol=tol, atol=tol * np.abs(np_(ga)).max())


def test_soft_target_weighted_mean_scales_with_the_weights():
    """Documented contrast (pytorch#107680): with probability targets the weighted mean divides
    by N, so scaling the weights scales the loss."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 4))
    q = rng.dirichlet(np.ones(4), size=5)
    w = np.array([1.0, 0.5, 2.0, 0.25])
    a = crossent.softmax_cross_entropy(x, q, weight=w, reduction="mean")
    b = crossent.softmax_cross_entropy(x, q, weight=4 * w, reduction="mean")
    np.testing.assert_allclose(b, 4 * a, rtol=1e-15)


@pytest.mark.parametrize(
    "opts",
    [dict(reduction="none"), dict(reduction="sum"), dict(reduction="mean"),
     dict(label_smoothing=0.3, reduction="mean"), dict(z_loss=0.01, reduction="sum"),
     dict(softcap=2.0, label_smoothing=0.1, reduction="none"),
     dict(weight=[1.0, 2.0, 0.0, 0.5, 1.0], reduction="none"),
     dict(weight=[1.0, 2.0, 0.0, 0.5, 1.0], label_smoothing=0.2, reduction="sum"),
     dict(axis=0, reduction="mean")],
    ids=["none", "sum", "mean", "smoothing_mean", "z_loss_sum", "softcap_smoothing",
         "weight_none", "weight_smoothing_sum", "axis0_mean"],
)
def test_index_targets_equal_one_hot_targets(xp, opts):
    """As in optax's tests: integer labels == one-hot probabilities, value and gradient."""
    rng = np.random.default_rng(7)
    x = rng.normal(scale=3.0, size=GRID)
    y = np.array([1, 4, 0])
    x[0, (y[0] + 1) % 5] = -inf  # a masked non-target class: 0 * log 0 on the one-hot side
    onehot = np.eye(5)[y]
    opts = dict(opts)
    if opts.get("axis") == 0:
        x, onehot = x.T.copy(), onehot.T.copy()
    if "weight" in opts:
        opts["weight"] = xs(xp, opts["weight"])
    if opts.get("label_smoothing"):
        x[np.isinf(x)] = -30.0  # smoothing puts mass on every class
    a, ga = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, y), **opts)
    b, gb = crossent.softmax_cross_entropy_value_and_grad(xs(xp, x), xs(xp, onehot), **opts)
    np.testing.assert_allclose(np_(b), np_(a), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(np_(gb), np_(ga), rtol=1e-12, atol=1e-15)


def test_one_hot_weighted_mean_differs_from_index_weighted_mean():
    """The documented divergence: index targets divide by sum(w_y), one-hot by N."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 3))
    y = np.array([0, 1, 2, 2])
    w = np.array([1.0, 2.0, 3.0])
    a = crossent.softmax_cross_entropy(x, y, weight=w, reduction="mean")
    b = crossent.softmax_cross_entropy(x, np.eye(3)[y], weight=w, reduction="mean")
    np.testing.assert_allclose(b * 4, a * w[y].sum(), rtol=1e-14)
