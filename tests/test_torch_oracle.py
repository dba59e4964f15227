"""PyTorch as the oracle: every option combination PyTorch also has gives PyTorch's numbers.

crossent claims to equal ``torch.nn.functional.cross_entropy`` / ``nll_loss`` /
``binary_cross_entropy`` / ``binary_cross_entropy_with_logits`` "for every option PyTorch has".
These tests draw shapes, dtypes and options with hypothesis, compute crossent's result and
PyTorch's result *in float64 on the very same input values* (half-precision and float32
inputs are first rounded to their dtype, and the rounded values are what both sides see), and
compare to float rounding: ~1e-12 for float64, ~1e-5 for float32 and for float16/bfloat16
(crossent computes those in float32), half-precision gradients to their own precision.

Inputs are given to crossent as NumPy arrays or as PyTorch tensors, with the class axis
anywhere (``axis=`` positive or negative); PyTorch always gets it at dim 1 (0 for 1-D input).
NumPy logits run crossent's compiled kernels where they are built, and the array-API
reference with ``CROSSENT_DISABLE_KERNELS=1``: both paths are checked (PyTorch tensors
always take the reference path).

Deliberate differences from PyTorch are *not* tested here (they are documented choices):
``0 * inf = 0`` where PyTorch gives NaN (zero target/weight on a ``-inf`` logit or a zero
probability), and BCE's logs are not clamped at -100. The generators below keep away from
those inputs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import crossent  # noqa: E402
from conftest import to_numpy  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

FLOATS = ("float64", "float32", "float16", "bfloat16")
REDUCTIONS = ("none", "mean", "sum")
TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
}
INT_RANGE = {"int64": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1), "uint8": (0, 255)}

# Relative tolerance of loss values (half precision is computed in float32) ...
VALUE_RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-5}
# ... and of gradients, which come back in the input's dtype.
GRAD_RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def rounded(a: Any, dtype: str) -> np.ndarray:
    """float64 values exactly representable in ``dtype`` (round-to-nearest, as a cast does)."""
    t = torch.from_numpy(np.array(a, dtype=np.float64, order="C"))  # (keeps 0-d arrays 0-d)
    return t.to(TORCH_DTYPES[dtype]).to(torch.float64).numpy()


def to_lib(a: Any, lib: str, dtype: str) -> Any:
    """A NumPy array as an array of ``lib`` ("numpy" or "torch") with dtype ``dtype``."""
    a = np.asarray(a)
    if lib == "numpy":
        return a.astype(dtype)
    t = torch.from_numpy(np.array(a, order="C"))
    return t.to(TORCH_DTYPES[dtype])


def t64(a: Any) -> Any:
    return torch.from_numpy(np.array(a, dtype=np.float64, order="C"))


def _scale(expected: np.ndarray, floor: float) -> float:
    finite = expected[np.isfinite(expected)]
    return max(floor, float(np.abs(finite).max())) if finite.size else floor


def assert_close(
    actual: Any,
    expected: Any,
    rtol: float,
    what: str = "",
    *,
    grad: bool = False,
    scale: float = 0.0,
) -> None:
    """Equal to ``rtol`` (NaN where NaN, inf where inf), absolute slack ``rtol * scale``.

    The scale is ``max(1, max|expected|)`` for losses; for gradients (whose entries are
    O(1/denominator)) it is ``max|expected|`` or the given ``scale``, the magnitude of the
    terms the gradient is computed from, whichever is larger: a gradient entry that is a small
    difference of O(scale) terms is only determined to ``rtol * scale`` in the input's dtype.
    """
    a = to_numpy(actual).astype(np.float64)
    e = to_numpy(expected).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != torch's {e.shape}"
    atol = rtol * max(_scale(e, 1e-300 if grad else 1.0), scale)
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=what)


def check_result_type(result: Any, lib: str, dtype: str) -> None:
    """crossent returns arrays of the input's library, float32 for half-precision input."""
    want = "float64" if dtype == "float64" else "float32"
    if lib == "torch":
        assert isinstance(result, torch.Tensor), type(result)
        assert result.dtype == TORCH_DTYPES[want], result.dtype
    else:
        # (0-d results may come back as NumPy scalars: see test_numpy_zero_d_results_are_arrays)
        assert isinstance(result, (np.ndarray, np.generic)), type(result)
        assert result.dtype == np.dtype(want), result.dtype


@contextlib.contextmanager
def reference_path(disable_kernels: bool) -> Iterator[None]:
    """Force crossent's array-API reference path (no compiled kernels) inside the block."""
    if not disable_kernels:
        yield
        return
    old = os.environ.get("CROSSENT_DISABLE_KERNELS")
    os.environ["CROSSENT_DISABLE_KERNELS"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["CROSSENT_DISABLE_KERNELS"]
        else:
            os.environ["CROSSENT_DISABLE_KERNELS"] = old


# --------------------------------------------------------------------------------------------
# categorical cases
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    lib: str  # library of the arrays handed to crossent
    dtype: str  # dtype of the input handed to crossent
    x: np.ndarray  # float64 values (exact in dtype), PyTorch layout: class axis cd
    cd: int  # class dim in PyTorch layout (1, or 0 for a 1-D input)
    pos: int  # where the class axis is in crossent's layout
    axis: int  # the axis argument crossent gets (pos, or pos - ndim)
    kind: str  # "index" or "soft"
    target: np.ndarray  # int64 class indices, or float64 probabilities (PyTorch layout)
    tdtype: str  # dtype of the target handed to crossent
    weight: np.ndarray | None
    weight_lib: str  # "numpy" or the input's library
    ignore_index: int | None
    label_smoothing: float
    reduction: str
    disable_kernels: bool = False  # NumPy input: force the reference path

    def path(self) -> contextlib.AbstractContextManager[None]:
        return reference_path(self.disable_kernels)

    @property
    def n_classes(self) -> int:
        return int(self.x.shape[self.cd])

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(self.x.shape) if i != self.cd)

    @property
    def torch_ignore_index(self) -> int:
        return -100 if self.ignore_index is None else self.ignore_index

    def ignored(self) -> np.ndarray:
        if self.kind != "index" or self.ignore_index is None:
            return np.zeros(self.example_shape, dtype=bool)
        return np.asarray(self.target == self.ignore_index)

    def to_crossent_layout(self, a: np.ndarray) -> np.ndarray:
        return np.moveaxis(a, self.cd, self.pos)

    def from_crossent_layout(self, a: Any) -> np.ndarray:
        return np.moveaxis(to_numpy(a), self.pos, self.cd)

    def crossent_input(self, values: np.ndarray | None = None, dtype: str | None = None) -> Any:
        values = self.x if values is None else values
        return to_lib(self.to_crossent_layout(values), self.lib, dtype or self.dtype)

    def crossent_target(self) -> Any:
        if self.kind == "index":
            return to_lib(self.target.astype(self.tdtype), self.lib, self.tdtype)
        return to_lib(self.to_crossent_layout(self.target), self.lib, self.tdtype)

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            axis=self.axis,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )
        if self.weight is not None:
            lib = self.lib if self.weight_lib == "lib" else "numpy"
            kw["weight"] = to_lib(self.weight, lib, "float64")
        return kw

    # --- the PyTorch side, always float64 on the same values ---------------------------------

    def torch_target(self) -> Any:
        if self.kind == "index":
            return torch.from_numpy(self.target.astype(np.int64))
        return t64(self.target)

    def torch_weight(self) -> Any:
        return None if self.weight is None else t64(self.weight)

    def torch_kwargs(self, reduction: str | None = None, smoothing: bool = True) -> dict[str, Any]:
        kw = dict(
            weight=self.torch_weight(),
            ignore_index=self.torch_ignore_index,
            reduction=reduction or self.reduction,
        )
        if smoothing:
            kw["label_smoothing"] = self.label_smoothing
        return kw

    def z_loss_parts(self, lse: Any) -> tuple[Any, Any]:
        """Per-example ``w_y * lse**2`` (0 where ignored) and the mean's denominator."""
        if self.kind == "soft":
            return lse * lse, float(np.prod(self.example_shape))
        keep = torch.from_numpy(np.array(~self.ignored()))
        t = torch.from_numpy(np.array(np.where(self.ignored(), 0, self.target), dtype=np.int64))
        w = self.torch_weight()
        w_y = torch.ones(t.shape, dtype=torch.float64) if w is None else w[t]
        w_y = torch.where(keep, w_y, torch.zeros((), dtype=torch.float64))
        # where (not a product) so that ignored examples get an exactly-zero gradient
        term = torch.where(keep, w_y * lse * lse, torch.zeros((), dtype=torch.float64))
        return term, w_y.sum()


@st.composite
def categorical_cases(
    draw: Any,
    *,
    kinds: tuple[str, ...] = ("index", "index", "soft"),
    dtypes: tuple[str, ...] = FLOATS,
    libs: tuple[str, ...] = ("numpy", "torch"),
    smoothing: bool = True,
    mask: bool = True,
    reductions: tuple[str, ...] = REDUCTIONS,
) -> Case:
    lib = draw(st.sampled_from(libs))
    dtype = draw(st.sampled_from([d for d in dtypes if not (lib == "numpy" and d == "bfloat16")]))
    C = draw(st.integers(1, 7))
    layout = draw(st.sampled_from(["1d", "2d", "2d", "kd", "kd"]))
    if layout == "1d":
        shape: tuple[int, ...] = (C,)
        cd = 0
    else:
        N = draw(st.integers(0, 6))
        extra = draw(st.lists(st.integers(1, 3), max_size=2)) if layout == "kd" else []
        shape = (N, C, *extra)
        cd = 1
    ndim = len(shape)
    pos = draw(st.integers(0, ndim - 1))
    axis = draw(st.sampled_from([pos, pos - ndim]))
    ex_shape = tuple(s for i, s in enumerate(shape) if i != cd)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    scale = draw(st.sampled_from([0.5, 2.0, 8.0]))
    offset = draw(st.sampled_from([0.0, 0.0, 30.0, -30.0]))
    x = rng.standard_normal(shape) * scale + offset
    eps = draw(st.sampled_from([0.0, 0.0, 1.0]) | st.floats(0.0, 1.0)) if smoothing else 0.0
    reduction = draw(st.sampled_from(reductions))
    weight = None if draw(st.booleans()) else rng.integers(0, 13, C) / 4.0  # exact in bf16
    weight_lib = draw(st.sampled_from(["numpy", "lib"]))
    kind = draw(st.sampled_from(kinds))

    if kind == "index":
        tdtype = draw(st.sampled_from(["int64", "int32", "uint8"]))
        ignore_index = draw(st.sampled_from([None, -100, -1, 0, C, 255]))
        target = rng.integers(0, C, ex_shape)
        lo, hi = INT_RANGE[tdtype]
        if ignore_index is not None and lo <= ignore_index <= hi:
            frac = draw(st.sampled_from([0.0, 0.4, 0.4, 1.0]))
            target = np.where(rng.random(ex_shape) < frac, ignore_index, target)
        target = np.asarray(target, dtype=np.int64)
        if mask and eps == 0.0 and C > 1 and draw(st.booleans()):
            # -inf logits (masked classes), never on the target class, one finite per row
            valid = (target >= 0) & (target < C)
            keep = np.where(valid, target, rng.integers(0, C, ex_shape))
            classes = np.arange(C).reshape((C,) + (1,) * (ndim - 1 - cd))
            m = (rng.random(shape) < 0.4) & (classes != np.expand_dims(keep, cd))
            x = np.where(m, -np.inf, x)
    else:
        tdtype = dtype
        ignore_index = draw(st.sampled_from([None, -100]))
        tmode = draw(st.sampled_from(["dirichlet", "uniform", "onehot", "sparse"]))
        if tmode == "onehot":
            q = np.eye(C)[rng.integers(0, C, ex_shape)]
        elif tmode == "uniform":
            q = rng.random(ex_shape + (C,))
        else:
            q = rng.dirichlet(np.ones(C), size=ex_shape) if C > 1 else np.ones(ex_shape + (1,))
            if tmode == "sparse":
                q = np.where(rng.random(q.shape) < 0.4, 0.0, q)
        target = rounded(np.moveaxis(q, -1, cd), dtype)

    return Case(
        lib=lib,
        dtype=dtype,
        x=rounded(x, dtype),
        cd=cd,
        pos=pos,
        axis=axis,
        kind=kind,
        target=target,
        tdtype=tdtype,
        weight=weight,
        weight_lib=weight_lib,
        ignore_index=ignore_index,
        label_smoothing=float(eps),
        reduction=reduction,
        disable_kernels=lib == "numpy" and draw(st.booleans()),
    )


def torch_softmax_reference(
    case: Case,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: np.ndarray | float | None = None,
    need_grad: bool = False,
) -> tuple[Any, Any, Any]:
    """(loss, lse, dlogits in PyTorch layout) from F.cross_entropy and autograd, float64."""
    x = t64(case.x).requires_grad_(need_grad)
    z = softcap * torch.tanh(x / softcap) if softcap is not None else x
    loss = F.cross_entropy(z, case.torch_target(), **case.torch_kwargs())
    lse = torch.logsumexp(z, dim=case.cd)
    if z_loss:
        term, den = case.z_loss_parts(lse)
        if case.reduction == "none":
            loss = loss + z_loss * term
        elif case.reduction == "sum":
            loss = loss + z_loss * term.sum()
        else:
            loss = loss + z_loss * term.sum() / den
    grad = None
    if need_grad:
        go = 1.0 if grad_output is None else grad_output
        if case.reduction == "none":
            go_t = torch.broadcast_to(t64(go), loss.shape)
            (go_t * loss).sum().backward()
        else:
            (float(go) * loss).backward()
        grad = x.grad
    return loss.detach(), lse.detach(), grad


def softmax_grad_scale(case: Case, grad_output: Any, z_loss: float, lse: Any) -> float:
    """``max|g_i| * max|A_i|``: upstream gradient times the softmax coefficient (see the
    value_and_grad docstring), the magnitude of the terms every gradient entry is made of."""
    g = 1.0 if grad_output is None else float(np.max(np.abs(grad_output), initial=0.0))
    if case.reduction == "mean":
        if case.kind == "soft":
            den = float(np.prod(case.example_shape))
        else:
            kept = np.asarray(np.where(case.ignored(), -1, case.target)).reshape(-1)
            kept = kept[kept >= 0]
            den = float(kept.size if case.weight is None else case.weight[kept].sum())
        g = g / den if den > 0 else 0.0  # den = 0: the reference is NaN or 0 anyway
    w = 1.0 if case.weight is None else float(np.max(case.weight, initial=0.0))
    lse = to_numpy(lse)
    lse = lse[np.isfinite(lse)]
    z_term = 2.0 * z_loss * float(np.max(np.abs(lse), initial=0.0))
    if case.kind == "index":  # A = (1 - eps) w_y + (eps / C) W + 2 z w_y lse
        return g * w * (1.0 + z_term)
    mass = max(1.0, float(np.max(np.sum(case.target, axis=case.cd), initial=0.0)))
    return g * (w * mass + z_term)  # A = sum_c w_c q'_c + 2 z lse (z-loss unweighted)


def draw_grad_output(draw: Any, case: Case, rng: np.random.Generator) -> Any:
    """None, a scalar, or (reduction="none") an array broadcastable to the example shape."""
    ex = case.example_shape
    if case.reduction != "none":
        mode = draw(st.sampled_from(["default", "float", "array"]))
        value = float(rounded(rng.standard_normal() * 2, "float32"))
        return None if mode == "default" else value if mode == "float" else np.asarray(value)
    shapes = [None, (), ex, ex]
    if len(ex) >= 1:
        shapes += [ex[1:], (1,) + ex[1:]]
    shape = draw(st.sampled_from(shapes))
    if shape is None:
        return None
    return rounded(rng.standard_normal(shape) * 2, "float32")  # exact in the compute dtype


# --------------------------------------------------------------------------------------------
# softmax_cross_entropy vs F.cross_entropy
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, **SETTINGS)
@given(case=categorical_cases(), return_lse=st.booleans())
def test_softmax_cross_entropy_matches_torch(case: Case, return_lse: bool):
    with case.path():
        out = crossent.softmax_cross_entropy(
            case.crossent_input(), case.crossent_target(), return_lse=return_lse, **case.kwargs()
        )
    loss, lse = out if return_lse else (out, None)
    ref_loss, ref_lse, _ = torch_softmax_reference(case)
    check_result_type(loss, case.lib, case.dtype)
    assert_close(loss, ref_loss, VALUE_RTOL[case.dtype], f"loss {case}")
    if lse is not None:
        check_result_type(lse, case.lib, case.dtype)
        assert_close(lse, ref_lse, VALUE_RTOL[case.dtype], f"lse {case}")


@settings(max_examples=60, **SETTINGS)
@given(
    case=categorical_cases(),
    z_loss=st.sampled_from([0.0, 0.0, 1e-4, 0.1, 1.0]),
    softcap=st.sampled_from([None, None, 0.5, 3.0, 30.0]),
    return_lse=st.booleans(),
    data=st.data(),
)
def test_value_and_grad_matches_torch_autograd(case, z_loss, softcap, return_lse, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    go = draw_grad_output(data.draw, case, rng)
    go_arg = go if not isinstance(go, np.ndarray) else to_lib(go, case.lib, "float32")
    with case.path():
        out, grad = crossent.softmax_cross_entropy_value_and_grad(
            case.crossent_input(),
            case.crossent_target(),
            z_loss=z_loss,
            softcap=softcap,
            return_lse=return_lse,
            grad_output=go_arg,
            **case.kwargs(),
        )
    loss, lse = out if return_lse else (out, None)
    ref_loss, ref_lse, ref_grad = torch_softmax_reference(
        case, z_loss=z_loss, softcap=softcap, grad_output=go, need_grad=True
    )
    what = f"{case} z_loss={z_loss} softcap={softcap} grad_output={go!r}"
    check_result_type(loss, case.lib, case.dtype)
    assert_close(loss, ref_loss, VALUE_RTOL[case.dtype], "loss " + what)
    if lse is not None:
        assert_close(lse, ref_lse, VALUE_RTOL[case.dtype], "lse " + what)
    # the gradient has the logits' shape, layout, library and dtype
    if case.lib == "torch":
        assert isinstance(grad, torch.Tensor) and grad.dtype == TORCH_DTYPES[case.dtype]
    else:
        assert isinstance(grad, np.ndarray) and grad.dtype == np.dtype(case.dtype)
    assert tuple(grad.shape) == case.to_crossent_layout(case.x).shape
    scale = softmax_grad_scale(case, go, z_loss, ref_lse)
    assert_close(
        case.from_crossent_layout(grad), ref_grad, GRAD_RTOL[case.dtype], "grad " + what,
        grad=True, scale=scale,
    )


@settings(max_examples=40, **SETTINGS)
@given(
    case=categorical_cases(libs=("torch",)),
    z_loss=st.sampled_from([0.0, 0.0, 0.1]),
    softcap=st.sampled_from([None, None, 3.0]),
    data=st.data(),
)
def test_autograd_through_crossent_matches_torch(case, z_loss, softcap, data):
    """loss.backward() through crossent on torch tensors gives F.cross_entropy's gradient."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    go = draw_grad_output(data.draw, case, rng)
    x = case.crossent_input().requires_grad_(True)
    loss = crossent.softmax_cross_entropy(
        x, case.crossent_target(), z_loss=z_loss, softcap=softcap, **case.kwargs()
    )
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    g = 1.0 if go is None else go
    if case.reduction == "none":
        (torch.as_tensor(g, dtype=loss.dtype) * loss).sum().backward()
    else:
        (float(g) * loss).backward()
    ref_loss, ref_lse, ref_grad = torch_softmax_reference(
        case, z_loss=z_loss, softcap=softcap, grad_output=go, need_grad=True
    )
    what = f"{case} z_loss={z_loss} softcap={softcap} grad_output={go!r}"
    assert_close(loss.detach(), ref_loss, VALUE_RTOL[case.dtype], "loss " + what)
    assert x.grad is not None and x.grad.dtype == TORCH_DTYPES[case.dtype]
    scale = softmax_grad_scale(case, go, z_loss, ref_lse)
    assert_close(
        case.from_crossent_layout(x.grad), ref_grad, GRAD_RTOL[case.dtype], "grad " + what,
        grad=True, scale=scale,
    )


# --------------------------------------------------------------------------------------------
# nll_loss and cross_entropy (probabilities)
# --------------------------------------------------------------------------------------------


def log_softmax64(case: Case) -> np.ndarray:
    return torch.log_softmax(t64(case.x), dim=case.cd).numpy()


def bounded_probs(case: Case) -> np.ndarray:
    """softmax of logits squashed to [-4, 4] (p >= 4.8e-5 > 0), exact 0 on masked classes."""
    z = np.where(np.isneginf(case.x), -np.inf, 4.0 * np.tanh(case.x / 8.0))
    return rounded(torch.softmax(t64(z), dim=case.cd).numpy(), case.dtype)


@settings(max_examples=40, **SETTINGS)
@given(case=categorical_cases(kinds=("index",), smoothing=False))
def test_nll_loss_matches_torch_nll_loss(case: Case):
    lp = rounded(log_softmax64(case), case.dtype)
    with case.path():
        out = crossent.nll_loss(case.crossent_input(lp), case.crossent_target(), **case.kwargs())
    ref = F.nll_loss(t64(lp), case.torch_target(), **case.torch_kwargs(smoothing=False))
    check_result_type(out, case.lib, case.dtype)
    assert_close(out, ref, VALUE_RTOL[case.dtype], str(case))


@settings(max_examples=40, **SETTINGS)
@given(case=categorical_cases(dtypes=("float64", "float32"), mask=False))
def test_nll_loss_smoothing_and_soft_targets_match_torch_cross_entropy(case: Case):
    """On normalised log-probabilities cross_entropy's log_softmax is the identity."""
    lp = rounded(log_softmax64(case), case.dtype)
    with case.path():
        out = crossent.nll_loss(case.crossent_input(lp), case.crossent_target(), **case.kwargs())
    ref = F.cross_entropy(t64(lp), case.torch_target(), **case.torch_kwargs())
    check_result_type(out, case.lib, case.dtype)
    assert_close(out, ref, VALUE_RTOL[case.dtype], str(case))


@settings(max_examples=40, **SETTINGS)
@given(case=categorical_cases(kinds=("index",), smoothing=False))
def test_cross_entropy_of_probs_matches_torch_nll_of_log(case: Case):
    p = bounded_probs(case)
    with case.path():
        out = crossent.cross_entropy(
            case.crossent_input(p), case.crossent_target(), **case.kwargs()
        )
    ref = F.nll_loss(torch.log(t64(p)), case.torch_target(), **case.torch_kwargs(smoothing=False))
    check_result_type(out, case.lib, case.dtype)
    assert_close(out, ref, VALUE_RTOL[case.dtype], str(case))


@settings(max_examples=40, **SETTINGS)
@given(case=categorical_cases(dtypes=("float64", "float32"), mask=False))
def test_cross_entropy_of_probs_matches_torch_cross_entropy_of_log(case: Case):
    p = bounded_probs(case)
    with case.path():
        out = crossent.cross_entropy(
            case.crossent_input(p), case.crossent_target(), **case.kwargs()
        )
    ref = F.cross_entropy(torch.log(t64(p)), case.torch_target(), **case.torch_kwargs())
    check_result_type(out, case.lib, case.dtype)
    assert_close(out, ref, VALUE_RTOL[case.dtype], str(case))


@settings(max_examples=30, **SETTINGS)
@given(
    case=categorical_cases(libs=("torch",), kinds=("index",), smoothing=False, mask=False),
    probs=st.booleans(),
)
def test_autograd_through_nll_loss_and_cross_entropy_matches_torch(case: Case, probs: bool):
    """Gradients w.r.t. log-probabilities / probabilities, through crossent, on torch tensors."""
    if probs:
        v = bounded_probs(case)
        fn, ref_in = crossent.cross_entropy, lambda a: torch.log(a)
    else:
        v = rounded(log_softmax64(case), case.dtype)
        fn, ref_in = crossent.nll_loss, lambda a: a
    a = case.crossent_input(v).requires_grad_(True)
    loss = fn(a, case.crossent_target(), **case.kwargs())
    loss.sum().backward()
    ref_a = t64(v).requires_grad_(True)
    ref = F.nll_loss(ref_in(ref_a), case.torch_target(), **case.torch_kwargs(smoothing=False))
    ref.sum().backward()
    assert_close(loss.detach(), ref.detach(), VALUE_RTOL[case.dtype], str(case))
    assert_close(
        case.from_crossent_layout(a.grad), ref_a.grad, GRAD_RTOL[case.dtype], str(case), grad=True
    )


# --------------------------------------------------------------------------------------------
# binary cross-entropy
# --------------------------------------------------------------------------------------------


@dataclass
class BinaryCase:
    lib: str
    dtype: str
    x: np.ndarray  # probabilities or logits, float64, exact in dtype
    target: np.ndarray  # float64 labels in [0, 1]
    tdtype: str  # dtype handed to crossent: the float dtype, "int64" or "bool"
    weight: np.ndarray | None
    pos_weight: np.ndarray | None
    reduction: str
    logits: bool = False

    def crossent_args(self) -> tuple[Any, Any, dict[str, Any]]:
        x = to_lib(self.x, self.lib, self.dtype)
        if self.tdtype == "bool":
            t = self.target.astype(bool)
            t = t if self.lib == "numpy" else torch.from_numpy(np.array(t, order="C"))
        else:
            t = to_lib(self.target, self.lib, self.tdtype)
        kw: dict[str, Any] = dict(reduction=self.reduction)
        if self.weight is not None:
            kw["weight"] = to_lib(self.weight, self.lib, "float64")
        return x, t, kw

    def torch_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(reduction=self.reduction)
        if self.weight is not None:
            kw["weight"] = t64(self.weight)
        return kw


def _broadcastable_shape(draw: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    k = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - k :]
    return tuple(draw(st.sampled_from([1, s])) for s in tail)


@st.composite
def binary_cases(draw: Any, *, logits: bool, grad: bool = False) -> BinaryCase:
    lib = draw(st.sampled_from(["numpy", "torch"] if not grad else ["torch"]))
    dtype = draw(st.sampled_from([d for d in FLOATS if not (lib == "numpy" and d == "bfloat16")]))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tmode = draw(st.sampled_from(["hard", "soft", "int", "bool"]))
    hard = tmode != "soft"
    t = rng.integers(0, 2, shape).astype(np.float64) if hard else rounded(rng.random(shape), dtype)
    tdtype = {"hard": dtype, "soft": dtype, "int": "int64", "bool": "bool"}[tmode]
    if logits:
        scale = draw(st.sampled_from([1.0, 10.0, 50.0]))
        x = rounded(rng.standard_normal(shape) * scale, dtype)
    else:
        # away from 0 and 1 by more than e^-100 (PyTorch clamps each log at -100)
        lo = {"float64": 1e-40, "float32": 1e-7, "float16": 1e-2, "bfloat16": 1e-2}[dtype]
        if grad:
            lo = max(lo, 1e-3)  # PyTorch's BCE gradient clamps p (1 - p) at 1e-12
        z = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 8.0, 40.0]))
        p = 1.0 / (1.0 + np.exp(-z))
        x = rounded(np.clip(p, lo, 1.0 - max(lo, 1e-6 if dtype == "float32" else 1e-15)), dtype)
        if hard and not grad and draw(st.booleans()):
            # exact 0 / 1 where the label agrees: 0 * log 0 = 0 in both libraries
            x = np.where(rng.random(shape) < 0.3, t, x)
        assert np.all((x > 0) | (t == 0)) and np.all((x < 1) | (t == 1))
    weight = pos_weight = None
    if draw(st.booleans()):
        weight = rng.integers(0, 13, _broadcastable_shape(draw, shape)) / 4.0
    if logits and draw(st.booleans()):
        pos_weight = rng.integers(0, 13, _broadcastable_shape(draw, shape)) / 4.0
    return BinaryCase(
        lib=lib,
        dtype=dtype,
        x=x,
        target=t,
        tdtype=tdtype,
        weight=weight,
        pos_weight=pos_weight,
        reduction=draw(st.sampled_from(REDUCTIONS)),
        logits=logits,
    )


@settings(max_examples=50, **SETTINGS)
@given(case=binary_cases(logits=False))
def test_binary_cross_entropy_matches_torch(case: BinaryCase):
    x, t, kw = case.crossent_args()
    out = crossent.binary_cross_entropy(x, t, **kw)
    ref = F.binary_cross_entropy(t64(case.x), t64(case.target), **case.torch_kwargs())
    check_result_type(out, case.lib, case.dtype)
    assert_close(out, ref, VALUE_RTOL[case.dtype], str(case))


@settings(max_examples=50, **SETTINGS)
@given(case=binary_cases(logits=True))
def test_sigmoid_binary_cross_entropy_matches_torch(case: BinaryCase):
    x, t, kw = case.crossent_args()
    tkw = case.torch_kwargs()
    if case.pos_weight is not None:
        kw["pos_weight"] = to_lib(case.pos_weight, case.lib, "float64")
        tkw["pos_weight"] = t64(case.pos_weight)
    out = crossent.sigmoid_binary_cross_entropy(x, t, **kw)
    ref = F.binary_cross_entropy_with_logits(t64(case.x), t64(case.target), **tkw)
    check_result_type(out, case.lib, case.dtype)
    assert_close(out, ref, VALUE_RTOL[case.dtype], str(case))


@settings(max_examples=30, **SETTINGS)
@given(case=st.one_of(binary_cases(logits=True, grad=True), binary_cases(logits=False, grad=True)))
def test_autograd_through_binary_losses_matches_torch(case: BinaryCase):
    x, t, kw = case.crossent_args()
    x.requires_grad_(True)
    ref_x = t64(case.x).requires_grad_(True)
    tkw = case.torch_kwargs()
    if case.logits:
        if case.pos_weight is not None:
            kw["pos_weight"] = t64(case.pos_weight)
            tkw["pos_weight"] = t64(case.pos_weight)
        out = crossent.sigmoid_binary_cross_entropy(x, t, **kw)
        ref = F.binary_cross_entropy_with_logits(ref_x, t64(case.target), **tkw)
    else:
        out = crossent.binary_cross_entropy(x, t, **kw)
        ref = F.binary_cross_entropy(ref_x, t64(case.target), **tkw)
    out.sum().backward()
    ref.sum().backward()
    assert_close(out.detach(), ref.detach(), VALUE_RTOL[case.dtype], str(case))
    assert x.grad is not None and x.grad.dtype == TORCH_DTYPES[case.dtype]
    # d loss / d logit = w (pw t (sigmoid - 1) + (1 - t) sigmoid): terms of size w * max(1, pw)
    scale = max(1.0, float(np.max(case.weight, initial=0.0)) if case.weight is not None else 1.0)
    if case.pos_weight is not None:
        scale *= max(1.0, float(np.max(case.pos_weight, initial=0.0)))
    assert_close(x.grad, ref_x.grad, GRAD_RTOL[case.dtype], str(case), grad=True, scale=scale)


# --------------------------------------------------------------------------------------------
# explicit cases
# --------------------------------------------------------------------------------------------


def _explicit(
    x: np.ndarray,
    target: np.ndarray,
    *,
    lib: str = "numpy",
    dtype: str = "float64",
    cd: int = 1,
    pos: int | None = None,
    weight: np.ndarray | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    tdtype: str | None = None,
) -> Case:
    kind = "index" if np.issubdtype(np.asarray(target).dtype, np.integer) else "soft"
    pos = cd if pos is None else pos
    return Case(
        lib=lib,
        dtype=dtype,
        x=rounded(x, dtype),
        cd=cd,
        pos=pos,
        axis=pos,
        kind=kind,
        target=np.asarray(target) if kind == "index" else rounded(target, dtype),
        tdtype=tdtype or ("int64" if kind == "index" else dtype),
        weight=weight,
        weight_lib="numpy",
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )


def _check_all(case: Case, z_loss: float = 0.0, go: Any = None) -> None:
    """Loss, value_and_grad and autograd-through against PyTorch for one explicit case."""
    ref_loss, ref_lse, ref_grad = torch_softmax_reference(
        case, z_loss=z_loss, grad_output=go, need_grad=True
    )
    scale = softmax_grad_scale(case, go, z_loss, ref_lse)
    rtol, grtol = VALUE_RTOL[case.dtype], GRAD_RTOL[case.dtype]
    x, t, kw = case.crossent_input(), case.crossent_target(), case.kwargs()
    for disable_kernels in (False, True) if case.lib == "numpy" else (False,):
        what = f"{case} z_loss={z_loss} disable_kernels={disable_kernels}"
        with reference_path(disable_kernels):
            loss = crossent.softmax_cross_entropy(x, t, z_loss=z_loss, **kw)
            loss2, grad = crossent.softmax_cross_entropy_value_and_grad(
                x, t, z_loss=z_loss, grad_output=go, **kw
            )
        assert_close(loss, ref_loss, rtol, f"loss {what}")
        assert_close(loss2, ref_loss, rtol, f"value_and_grad loss {what}")
        grad = case.from_crossent_layout(grad)
        assert_close(grad, ref_grad, grtol, f"grad {what}", grad=True, scale=scale)
    if case.lib == "torch":
        x = case.crossent_input().requires_grad_(True)
        out = crossent.softmax_cross_entropy(x, t, z_loss=z_loss, **kw)
        g = torch.as_tensor(1.0 if go is None else go, dtype=out.dtype)
        (g * out).sum().backward()
        grad = case.from_crossent_layout(x.grad)
        assert_close(grad, ref_grad, grtol, f"autograd {case}", grad=True, scale=scale)


def _sce(case: Case, **extra: Any) -> Any:
    """crossent.softmax_cross_entropy on the case's crossent-side arrays."""
    with case.path():
        return crossent.softmax_cross_entropy(
            case.crossent_input(), case.crossent_target(), **case.kwargs(), **extra
        )


X43 = np.random.default_rng(20240917).standard_normal((4, 3)) * 2
W3 = np.array([0.5, 2.0, 1.25])


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "target, ignore_index",
    [
        (np.array(2), None),
        (np.array(1), -100),
        (np.array(-100), -100),
        (np.array([0.2, 0.0, 0.8]), None),
    ],
    ids=["index", "index-kept", "index-ignored", "soft"],
)
@pytest.mark.parametrize("weight", [None, W3], ids=["unweighted", "weighted"])
def test_one_dimensional_input_with_scalar_target(lib, reduction, target, ignore_index, weight):
    """(C,) logits with a 0-d index target or a (C,) probability target, as PyTorch allows."""
    case = _explicit(
        X43[0], target, lib=lib, cd=0, weight=weight, ignore_index=ignore_index,
        label_smoothing=0.1, reduction=reduction,
    )
    _check_all(case, z_loss=0.01)
    assert tuple(_sce(case).shape) == ()


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("weight", [None, W3], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2)])
def test_empty_batch(lib, reduction, kind, weight, shape):
    """N = 0: losses of shape (0, ...), sum 0, mean 0/0 = nan, as in PyTorch."""
    x = np.zeros(shape)
    ex = (shape[0],) + shape[2:]
    target = np.zeros(ex, dtype=np.int64) if kind == "index" else np.zeros(shape)
    case = _explicit(x, target, lib=lib, weight=weight, ignore_index=-100, reduction=reduction,
                     label_smoothing=0.2)
    ref, _, _ = torch_softmax_reference(case)
    out = _sce(case)
    assert_close(out, ref, 1e-12, str(case))
    if reduction == "mean":
        assert np.isnan(to_numpy(out))
    _check_all(case)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("weight", [None, W3], ids=["unweighted", "weighted"])
def test_all_examples_ignored(lib, reduction, label_smoothing, weight):
    """Every target equals ignore_index: zeros, sum 0, mean nan, gradient 0 (PyTorch's rule)."""
    target = np.full((4,), 7, dtype=np.int64)
    case = _explicit(X43, target, lib=lib, weight=weight, ignore_index=7, reduction=reduction,
                     label_smoothing=label_smoothing)
    ref, _, ref_grad = torch_softmax_reference(case, need_grad=True)
    expected = {"none": np.zeros(4), "sum": 0.0, "mean": np.nan}[reduction]
    np.testing.assert_array_equal(to_numpy(ref), expected)  # PyTorch's rule ...
    np.testing.assert_array_equal(to_numpy(_sce(case)), expected)  # ... is crossent's
    np.testing.assert_array_equal(to_numpy(ref_grad), np.zeros((4, 3)))
    _check_all(case, z_loss=0.5)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weighted_one_hot_and_index_targets_follow_torch_separately(
    lib, label_smoothing, reduction
):
    """pytorch#107680: one-hot and index targets give different weighted means, in both."""
    y = np.array([0, 2, 1, 2])
    kw = dict(lib=lib, weight=W3, label_smoothing=label_smoothing, reduction=reduction)
    case_i = _explicit(X43, y, **kw)
    case_s = _explicit(X43, np.eye(3)[y], **kw)
    _check_all(case_i)
    _check_all(case_s)
    if reduction != "none":
        ri, rs = float(_sce(case_i)), float(_sce(case_s))
        if reduction == "mean":
            assert abs(ri - rs) > 1e-3  # the denominators differ: sum of w_y vs N
        elif label_smoothing == 0.0:
            assert ri == pytest.approx(rs, rel=1e-12)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("tdtype", ["int64", "int32", "uint8"])
@pytest.mark.parametrize("ignore_index", [None, -100, 255, 1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_integer_target_dtypes(lib, tdtype, ignore_index, reduction):
    """int32 / uint8 class indices give PyTorch's int64 result; an ignore_index the dtype
    cannot hold (-100 for uint8) ignores nothing, as no int64 target equals it either."""
    y = np.array([[0, 2], [1, 2], [2, 0]])
    lo, hi = INT_RANGE[tdtype]
    if ignore_index is not None and lo <= ignore_index <= hi:
        y = np.where(np.array([[True, False], [False, False], [False, True]]), ignore_index, y)
    x = np.random.default_rng(1).standard_normal((3, 3, 2))
    case = _explicit(x, y, lib=lib, weight=W3, ignore_index=ignore_index, reduction=reduction,
                     label_smoothing=0.25, tdtype=tdtype)
    _check_all(case, z_loss=0.1)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("pos", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_k_dimensional_input_any_class_axis(lib, pos, kind):
    """(N, C, d1, d2) in PyTorch's layout; for crossent the class axis moved to ``pos``."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3, 2)) * 3
    if kind == "index":
        target = rng.integers(0, 4, (2, 3, 2))
        target[0, 1, 1] = -100
    else:
        target = rng.dirichlet(np.ones(4), size=(2, 3, 2)).transpose(0, 3, 1, 2)
    for reduction in REDUCTIONS:
        case = _explicit(x, target, lib=lib, pos=pos, weight=np.array([1.0, 0.5, 2.0, 0.0]),
                         ignore_index=-100, label_smoothing=0.1, reduction=reduction)
        _check_all(case, z_loss=0.01)
        case.axis = pos - 4  # the negative spelling of the same axis
        _check_all(case, z_loss=0.01)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_low_precision_torch_inputs_compute_in_float32(dtype, kind):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6)) * 4
    target = rng.integers(0, 6, 5) if kind == "index" else rng.dirichlet(np.ones(6), size=5)
    case = _explicit(x, target, lib="torch", dtype=dtype, weight=np.arange(6) / 4.0,
                     label_smoothing=0.1, reduction="none")
    out = _sce(case)
    assert out.dtype == torch.float32
    ref, _, _ = torch_softmax_reference(case)
    assert_close(out, ref, 1e-5, str(case))
    # and PyTorch's own float32 result on the same values upcast to float32
    x32 = torch.from_numpy(case.x).float()
    t = case.torch_target() if kind == "index" else case.torch_target().float()
    w32 = t64(case.weight).float()
    ref32 = F.cross_entropy(x32, t, weight=w32, label_smoothing=0.1, reduction="none")
    assert_close(out, ref32, 1e-5, str(case))
    _check_all(case, z_loss=0.01)


@pytest.mark.parametrize(
    "lib, disable_kernels", [("numpy", False), ("numpy", True), ("torch", False)]
)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.5, 1.0])
def test_zero_total_weight_mean_is_nan_as_in_torch(lib, disable_kernels, label_smoothing):
    """No example ignored, but every target class has weight 0: PyTorch's weighted mean is
    ``(1 - eps) * 0/0 + eps * smooth/0 = nan`` (and so is its gradient)."""
    y = np.array([0, 1, 0, 1])
    case = _explicit(X43, y, lib=lib, weight=np.array([0.0, 0.0, 1.0]),
                     label_smoothing=label_smoothing, reduction="mean")
    case.disable_kernels = disable_kernels
    ref, _, ref_grad = torch_softmax_reference(case, need_grad=True)
    assert np.isnan(to_numpy(ref)) and np.all(np.isnan(to_numpy(ref_grad)))
    assert_close(_sce(case), ref, 1e-12, str(case))
    with case.path():
        _, grad = crossent.softmax_cross_entropy_value_and_grad(
            case.crossent_input(), case.crossent_target(), **case.kwargs()
        )
    assert_close(grad, ref_grad, 1e-12, str(case), grad=True)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_broadcast_weights(lib, reduction):
    """weight / pos_weight of shapes (), (C,), (N, 1), (N, C) against PyTorch's broadcasting."""
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.99, (3, 4))
    x = rng.standard_normal((3, 4)) * 3
    t = rng.integers(0, 2, (3, 4)).astype(np.float64)
    weights = [np.array(0.5), np.array([1.0, 0.0, 2.0, 0.25]), np.array([[1.0], [2.0], [0.0]]),
               rng.random((3, 4))]
    for w in weights:
        case = BinaryCase(lib, "float64", p, t, "float64", w, None, reduction)
        a, b, kw = case.crossent_args()
        ref = F.binary_cross_entropy(t64(p), t64(t), **case.torch_kwargs())
        assert_close(crossent.binary_cross_entropy(a, b, **kw), ref, 1e-12, str(case))
        pos_weights = [
            np.array([3.0, 1.0, 0.0, 0.5]), np.array(2.0), np.array([[0.5], [4.0], [1.0]])
        ]
        for pw in [None, *pos_weights]:
            case = BinaryCase(lib, "float64", x, t, "float64", w, pw, reduction, logits=True)
            a, b, kw = case.crossent_args()
            tkw = case.torch_kwargs()
            if pw is not None:
                kw["pos_weight"], tkw["pos_weight"] = to_lib(pw, lib, "float64"), t64(pw)
            ref = F.binary_cross_entropy_with_logits(t64(x), t64(t), **tkw)
            assert_close(crossent.sigmoid_binary_cross_entropy(a, b, **kw), ref, 1e-12, str(case))


@pytest.mark.parametrize("disable_kernels", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_and_numpy_inputs_give_their_own_array_types(reduction, disable_kernels):
    """Torch tensors in, torch tensors out (and the same numbers as NumPy in, NumPy out)."""
    x = np.random.default_rng(5).standard_normal((3, 4))
    y = np.array([0, 3, 1])
    for fn, inp in [
        (crossent.softmax_cross_entropy, x),
        (crossent.nll_loss, torch.log_softmax(t64(x), 1).numpy()),
        (crossent.cross_entropy, torch.softmax(t64(x), 1).numpy()),
    ]:
        out_t = fn(torch.from_numpy(inp), torch.from_numpy(y), axis=1, reduction=reduction)
        with reference_path(disable_kernels):
            out_n = fn(inp, y, axis=1, reduction=reduction)
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
        assert isinstance(out_n, np.ndarray) and out_n.dtype == np.float64
        np.testing.assert_allclose(out_t.numpy(), out_n, rtol=1e-15, atol=0)
        ref = F.nll_loss(torch.log_softmax(t64(x), 1), torch.from_numpy(y), reduction=reduction)
        assert_close(out_t, ref, 1e-12, fn.__name__)


@pytest.mark.parametrize("disable_kernels", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_numpy_zero_d_results_are_arrays(reduction, disable_kernels):
    """A 0-d result from NumPy input is a 0-d ndarray (as reduced results are), not a scalar."""
    x = np.array([0.5, -1.0, 2.0])
    y = np.array(1)
    p, t = np.array(0.3), np.array(1.0)
    with reference_path(disable_kernels):
        outs = {
            "softmax_cross_entropy": crossent.softmax_cross_entropy(x, y, reduction=reduction),
            "lse": crossent.softmax_cross_entropy(x, y, reduction=reduction, return_lse=True)[1],
            "nll_loss": crossent.nll_loss(np.log(np.array([0.2, 0.8])), y, reduction=reduction),
            "binary_cross_entropy": crossent.binary_cross_entropy(p, t, reduction=reduction),
            "sigmoid_binary_cross_entropy": crossent.sigmoid_binary_cross_entropy(
                p, t, reduction=reduction
            ),
        }
    for name, out in outs.items():
        assert isinstance(out, np.ndarray) and out.shape == (), (name, type(out))
