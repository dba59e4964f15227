"""Bad input: every mistake is a clear ``crossent.CrossEntropyError``, never a wrong number.

The contract checked here, for every public function and (through the ``xp`` fixture) every
array library:

* a bad input raises a :class:`crossent.CrossEntropyError` subclass that is also the builtin
  exception that fits (``ValueError``, ``TypeError``, ``IndexError``);
* its message names the argument, the offending value (with its index for array elements)
  and what was expected, and the attributes ``argument``, ``value``, ``index``,
  ``expected`` carry the same;
* NaN is not an error: it propagates to the affected example's loss;
* inside ``jax.jit``, where raising is impossible, the affected examples get NaN (never 0,
  never a plausible number) and the valid ones stay exact.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest

import crossent
from conftest import to_numpy, xp_asarray

_MISSING = object()


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def check_error(
    excinfo: pytest.ExceptionInfo,
    cls: type,
    *,
    argument: str,
    value: Any = _MISSING,
    index: Any = _MISSING,
    builtins: tuple[type, ...] = (),
    message: tuple[str, ...] = (),
) -> crossent.CrossEntropyError:
    """The raised error has the right class, builtin bases, attributes and message."""
    err = excinfo.value
    assert isinstance(err, crossent.CrossEntropyError), type(err)
    assert isinstance(err, cls), type(err)
    for b in builtins:
        assert isinstance(err, b), (type(err), b)
    msg = str(err)
    assert err.argument == argument, (err.argument, msg)
    assert re.search(rf"\b{re.escape(argument)}\b", msg), msg
    assert isinstance(err.expected, str) and err.expected, err.expected
    if value is not _MISSING:
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(err.value, float) and math.isnan(err.value), err.value
            assert "nan" in msg, msg
        else:
            assert err.value == value, (err.value, value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert str(err.value) in msg, msg
    if index is not _MISSING:
        assert err.index == index, (err.index, index)
        if index:
            loc = f"{argument}[{', '.join(map(str, index))}]"
            assert loc in msg, (loc, msg)
    for pattern in message:
        assert re.search(pattern, msg), (pattern, msg)
    return err


class Cat(NamedTuple):
    """A categorical loss, its input argument's name and how to make a valid input."""

    name: str
    fn: Callable[..., Any]
    arg: str
    from_probs: Callable[[np.ndarray], np.ndarray]

    def loss(self, *args: Any, **kwargs: Any) -> np.ndarray:
        out = self.fn(*args, **kwargs)
        if self.name == "softmax_cross_entropy_value_and_grad":
            out = out[0]
        return to_numpy(out)


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(p)


CATS = {
    "cross_entropy": Cat("cross_entropy", crossent.cross_entropy, "probs", lambda p: p),
    "nll_loss": Cat("nll_loss", crossent.nll_loss, "log_probs", _log),
    "softmax_cross_entropy": Cat(
        "softmax_cross_entropy", crossent.softmax_cross_entropy, "logits", _log
    ),
    "softmax_cross_entropy_value_and_grad": Cat(
        "softmax_cross_entropy_value_and_grad",
        crossent.softmax_cross_entropy_value_and_grad,
        "logits",
        _log,
    ),
}
SOFTMAX = ["softmax_cross_entropy", "softmax_cross_entropy_value_and_grad"]


@pytest.fixture(params=list(CATS))
def cat(request: pytest.FixtureRequest) -> Cat:
    return CATS[request.param]


@pytest.fixture(params=["cross_entropy", "softmax_cross_entropy"])
def cat2(request: pytest.FixtureRequest) -> Cat:
    """Two of the four (the index validation is shared): for dtype and layout variants."""
    return CATS[request.param]


@pytest.fixture(params=SOFTMAX)
def softmax(request: pytest.FixtureRequest) -> Cat:
    return CATS[request.param]


BINARY = {
    "binary_cross_entropy": (crossent.binary_cross_entropy, "probs"),
    "sigmoid_binary_cross_entropy": (crossent.sigmoid_binary_cross_entropy, "logits"),
}
ALL_FUNCS = [c.fn for c in CATS.values()] + [f for f, _ in BINARY.values()]


@pytest.fixture(params=list(BINARY))
def binary(request: pytest.FixtureRequest) -> tuple[Callable[..., Any], str]:
    return BINARY[request.param]


# Two examples, three classes: every probability in (0, 1), rows sum to 1.
P = np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])


def probs(n: int = 2, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.05, 1.0, size=(n, c))
    return a / a.sum(axis=-1, keepdims=True)


def asarray0(xp: Any, a: Any, dtype: str | None = None) -> Any:
    """Like ``xp_asarray`` but keeps 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    a = np.asarray(a, dtype=dtype)
    if xp.__name__ == "torch":
        return xp.from_numpy(a.copy())
    return xp.asarray(a)


# --------------------------------------------------------------------------------------
# class-index targets outside [0, C)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 3, 10**9, -100])
def test_target_out_of_range_names_first_index_value_and_range(xp, cat, bad):
    x = xp_asarray(xp, cat.from_probs(P))
    t = xp_asarray(xp, [2, bad], "int64")
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        cat.fn(x, t)
    check_error(
        ei,
        crossent.TargetOutOfRangeError,
        argument="target",
        value=bad,
        index=(1,),
        builtins=(IndexError, ValueError),
        message=(rf"target\[1\] = {bad}\b", r"\[0, 3\)", r"3 classes"),
    )


def test_first_offending_target_is_reported(xp, cat):
    x = xp_asarray(xp, cat.from_probs(probs(4)))
    t = xp_asarray(xp, [0, 7, -1, 5], "int64")
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        cat.fn(x, t)
    check_error(ei, crossent.TargetOutOfRangeError, argument="target", value=7, index=(1,))


def test_target_out_of_range_in_k_dim_input_reports_index_tuple(xp, cat2):
    p = np.moveaxis(probs(2 * 4).reshape(2, 4, 3), -1, 1)  # (N, C, H)
    t = np.array([[0, 1, 2, 0], [1, 2, 3, 9]])
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        cat2.fn(xp_asarray(xp, cat2.from_probs(p)), xp_asarray(xp, t), axis=1)
    check_error(
        ei,
        crossent.TargetOutOfRangeError,
        argument="target",
        value=3,
        index=(1, 2),
        message=(r"target\[1, 2\] = 3\b", r"\[0, 3\)"),
    )


def test_target_out_of_range_with_ignore_index_mentions_it(xp, cat):
    x = xp_asarray(xp, cat.from_probs(P))
    t = xp_asarray(xp, [-100, -1], "int64")
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        cat.fn(x, t, ignore_index=-100)
    check_error(
        ei,
        crossent.TargetOutOfRangeError,
        argument="target",
        value=-1,
        index=(1,),
        message=(r"ignore_index\s*=\s*-100",),
    )


def test_zero_dim_target_out_of_range(xp, cat):
    x = asarray0(xp, cat.from_probs(np.array([0.2, 0.8])))
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        cat.fn(x, asarray0(xp, 2, "int64"))
    check_error(
        ei, crossent.TargetOutOfRangeError, argument="target", value=2, index=(),
        message=(r"target = 2\b",),
    )


@pytest.mark.parametrize("dtype, bad", [("uint8", 255), ("uint8", 3), ("int32", -5), ("int8", 127)])
def test_small_integer_target_dtypes_out_of_range(xp, cat2, dtype, bad):
    x = xp_asarray(xp, cat2.from_probs(P))
    t = xp_asarray(xp, [0, bad], dtype)
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        cat2.fn(x, t, ignore_index=-100)
    check_error(ei, crossent.TargetOutOfRangeError, argument="target", value=bad, index=(1,))


@pytest.mark.parametrize("dtype, n_classes, label", [("int8", 200, 127), ("uint8", 300, 255)])
def test_class_count_beyond_target_dtype_range_is_fine(xp, dtype, n_classes, label):
    # C does not fit the target dtype: every value of the dtype is a valid class (no wrap).
    # (The index validation is shared by all four categorical losses.)
    x = xp_asarray(xp, np.full((2, n_classes), 1.0 / n_classes))
    t = xp_asarray(xp, [0, label], dtype)
    out = to_numpy(crossent.cross_entropy(x, t, ignore_index=-100))
    np.testing.assert_allclose(out, np.full(2, math.log(n_classes)), rtol=1e-12)


def test_ignore_index_that_does_not_fit_target_dtype_never_matches(xp, cat2):
    x = xp_asarray(xp, cat2.from_probs(P))
    # uint8 targets cannot hold -100: in-range targets work, nothing is ignored.
    out = cat2.loss(x, xp_asarray(xp, [2, 1], "uint8"), ignore_index=-100)
    np.testing.assert_allclose(out, -np.log([P[0, 2], P[1, 1]]), rtol=1e-12)
    out = cat2.loss(x, xp_asarray(xp, [2, 1], "int32"), ignore_index=2**40)
    np.testing.assert_allclose(out, -np.log([P[0, 2], P[1, 1]]), rtol=1e-12)
    # 156 wraps to -100 in int8: a -100 target must NOT be silently ignored.
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        cat2.fn(x, xp_asarray(xp, [-100, 1], "int8"), ignore_index=156)
    check_error(ei, crossent.TargetOutOfRangeError, argument="target", value=-100, index=(0,))
    with pytest.raises(crossent.TargetOutOfRangeError):
        cat2.fn(x, xp_asarray(xp, [2**31 - 1, 1], "int32"), ignore_index=2**40)


def test_ignore_index_in_target_dtype_works(xp, cat2):
    x = xp_asarray(xp, cat2.from_probs(P))
    out = cat2.loss(x, xp_asarray(xp, [-100, 1], "int8"), ignore_index=-100)
    np.testing.assert_allclose(out, [0.0, -np.log(P[1, 1])], rtol=1e-12)


def test_huge_target_value_is_reported_exactly(xp):
    # The offending value must be the one in the array, not a float rounding of it.
    big = int(np.iinfo(np.int64).max)
    x = xp_asarray(xp, np.zeros((2, 3)))
    with pytest.raises(crossent.TargetOutOfRangeError) as ei:
        crossent.softmax_cross_entropy(x, xp_asarray(xp, [0, big], "int64"))
    check_error(
        ei, crossent.TargetOutOfRangeError, argument="target", value=big, index=(1,),
        message=(rf"target\[1\] = {big}\b",),
    )


@pytest.mark.parametrize("bad", ["x", 1.0, True, 1.5])
def test_ignore_index_not_an_integer(cat, bad):
    with pytest.raises(crossent.InvalidOptionError) as ei:
        cat.fn(cat.from_probs(P), np.array([0, 1]), ignore_index=bad)
    check_error(ei, crossent.InvalidOptionError, argument="ignore_index", value=bad,
                builtins=(ValueError,))


# --------------------------------------------------------------------------------------
# target shape and dtype
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (2, 1), (1, 2), ()])
def test_integer_target_shape_mismatch(xp, cat, shape):
    t = np.zeros(shape, dtype=np.int64)
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), asarray0(xp, t))
    check_error(
        ei,
        crossent.ShapeMismatchError,
        argument="target",
        value=shape,
        builtins=(ValueError,),
        message=(re.escape(str(shape)), re.escape("(2, 3)"), re.escape("(2,)"), cat.arg),
    )


def test_integer_one_hot_target_is_a_shape_error_not_a_wrong_number(xp, cat):
    onehot = np.eye(3, dtype=np.int64)[[2, 0]]
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, onehot))
    check_error(ei, crossent.ShapeMismatchError, argument="target", value=(2, 3),
                message=(r"float", re.escape("(2,)")))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_float_target_with_index_shape_hints_at_casting_to_int(xp, cat, dtype):
    t = xp_asarray(xp, [2.0, 0.0], dtype)
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), t)
    check_error(
        ei,
        crossent.ShapeMismatchError,
        argument="target",
        value=(2,),
        message=(r"class indices stored as floats", r"integer", r"int\b", re.escape("(2, 3)")),
    )


def test_float_target_with_other_shape_has_no_cast_hint(xp, cat):
    t = xp_asarray(xp, np.full((2, 4), 0.25))
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), t)
    err = check_error(ei, crossent.ShapeMismatchError, argument="target", value=(2, 4),
                      message=(re.escape("(2, 3)"),))
    assert "stored as floats" not in str(err)


@pytest.mark.parametrize("dtype, pattern", [("bool", r"bool"), ("complex128", r"complex")])
def test_bool_and_complex_targets_are_dtype_errors(xp, cat, dtype, pattern):
    t = xp_asarray(xp, [1, 0], dtype)
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), t)
    err = check_error(ei, crossent.InvalidDTypeError, argument="target", builtins=(TypeError,),
                      message=(pattern, r"integer", r"floating"))
    assert re.search(pattern, str(err.value))


@pytest.mark.parametrize("dtype, pattern", [("int64", r"int64"), ("bool", r"bool"),
                                            ("complex128", r"complex128")])
def test_non_floating_input_is_a_dtype_error(xp, cat, dtype, pattern):
    x = xp_asarray(xp, [[1, 0, 0], [0, 1, 0]], dtype)
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        cat.fn(x, xp_asarray(xp, [0, 1], "int64"))
    check_error(ei, crossent.InvalidDTypeError, argument=cat.arg, builtins=(TypeError,),
                message=(pattern, r"real floating"))


# --------------------------------------------------------------------------------------
# probabilities / log-probabilities that are read outside their range
# --------------------------------------------------------------------------------------


def test_cross_entropy_only_checks_the_gathered_probabilities(xp):
    # Non-target entries out of [0, 1] are never read without label smoothing.
    p = np.array([[0.5, 7.0, -3.0], [2.0, 0.25, 0.5]])
    out = to_numpy(crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, [0, 1])))
    np.testing.assert_allclose(out, -np.log([0.5, 0.25]), rtol=1e-12)


@pytest.mark.parametrize("bad", [1.5, -0.25])
def test_cross_entropy_gathered_probability_out_of_range(xp, bad):
    p = np.array([[0.5, 0.25, 0.25], [0.2, 0.3, bad]])
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, [0, 2]))
    check_error(
        ei,
        crossent.ProbabilityRangeError,
        argument="probs",
        value=bad,
        index=(1, 2),
        builtins=(ValueError,),
        message=(r"\[0, 1\]", r"softmax_cross_entropy"),
    )


def test_cross_entropy_gathered_index_is_in_user_layout_axis0(xp):
    p = P.T.copy()  # (C, N), class axis 0
    p[1, 1] = 4.0  # example 1, class 1 (its target)
    p[2, 0] = 9.0  # example 0, class 2 (not its target)
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, [0, 1]), axis=0)
    check_error(ei, crossent.ProbabilityRangeError, argument="probs", value=4, index=(1, 1),
                message=(r"probs\[1, 1\] = 4\b",))


def test_cross_entropy_gathered_index_is_in_user_layout_k_dim(xp):
    p = np.moveaxis(probs(2 * 3).reshape(2, 3, 3), -1, 1).copy()  # (N, C, H)
    t = np.array([[0, 1, 2], [2, 0, 1]])
    p[1, 0, 1] = 1.25  # example (1, 1), its target class 0
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, t), axis=1)
    check_error(ei, crossent.ProbabilityRangeError, argument="probs", value=1.25,
                index=(1, 0, 1), message=(r"probs\[1, 0, 1\] = 1\.25",))


@pytest.mark.parametrize("axis", [-1, 0])
def test_cross_entropy_label_smoothing_checks_every_probability(xp, axis):
    p = np.array([[0.5, 0.25, 0.25], [0.2, 1.75, 0.3]])  # bad entry: not a target
    if axis == 0:
        p = p.T.copy()  # the bad entry stays at [1, 1]
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, [0, 2]), axis=axis,
                               label_smoothing=0.1)
    check_error(ei, crossent.ProbabilityRangeError, argument="probs", value=1.75, index=(1, 1))


def test_cross_entropy_label_smoothing_reports_user_layout_axis0(xp):
    p = P.T.copy()  # (C, N)
    p[2, 0] = -0.5
    p[1, 1] = 3.0  # first in row-major order of the user's array
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, [0, 0]), axis=0,
                               label_smoothing=0.2)
    check_error(ei, crossent.ProbabilityRangeError, argument="probs", value=3, index=(1, 1))


def test_cross_entropy_soft_targets_check_every_probability(xp):
    p = np.array([[0.5, 0.25, 0.25], [0.2, 0.3, 1.5]])
    q = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # 1.5 has target probability 0
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, q))
    check_error(ei, crossent.ProbabilityRangeError, argument="probs", value=1.5, index=(1, 2))


def test_cross_entropy_ignored_example_probability_is_not_checked(xp):
    p = np.array([[0.5, 0.25, 0.25], [5.0, 0.3, 0.3]])
    out = to_numpy(
        crossent.cross_entropy(xp_asarray(xp, p), xp_asarray(xp, [1, -100]), ignore_index=-100)
    )
    np.testing.assert_allclose(out, [-np.log(0.25), 0.0], rtol=1e-12)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_ignored_example_row_is_not_checked_with_label_smoothing(xp, name):
    # An ignored example's row is not read by the loss (it is 0), with or without smoothing:
    # a padding row must not raise only because label_smoothing > 0.
    cat = CATS[name]
    x = cat.from_probs(P.copy())
    x[1] = 5.0  # garbage padding row (out of range for both probs and log_probs)
    out = cat.loss(xp_asarray(xp, x), xp_asarray(xp, [1, -100]), ignore_index=-100,
                   label_smoothing=0.1)
    assert out[1] == 0.0 and np.isfinite(out[0])


def test_nll_loss_positive_gathered_log_probability(xp):
    lp = np.log(P)
    lp[0, 1] = 0.5  # target of example 0
    lp[1, 0] = 2.0  # not a target: never read
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.nll_loss(xp_asarray(xp, lp), xp_asarray(xp, [1, 2]))
    check_error(ei, crossent.ProbabilityRangeError, argument="log_probs", value=0.5,
                index=(0, 1), builtins=(ValueError,), message=(r"\[-inf, 0\]", r"<= 0"))
    out = to_numpy(crossent.nll_loss(xp_asarray(xp, lp), xp_asarray(xp, [0, 2])))
    np.testing.assert_allclose(out, [-lp[0, 0], -lp[1, 2]], rtol=1e-12)


@pytest.mark.parametrize("kw", [{"label_smoothing": 0.1}, {"soft": True}])
def test_nll_loss_checks_every_log_probability_when_all_are_read(xp, kw):
    lp = np.log(P)
    lp[1, 0] = 2.0
    if kw.get("soft"):
        t, kw = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), {}
    else:
        t = np.array([1, 2])
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.nll_loss(xp_asarray(xp, lp), xp_asarray(xp, t), **kw)
    check_error(ei, crossent.ProbabilityRangeError, argument="log_probs", value=2, index=(1, 0))


@pytest.mark.parametrize("bad", [1.25, -0.5])
def test_soft_target_outside_unit_interval(xp, cat, bad):
    q = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    q[1, 2] = bad
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, q))
    check_error(ei, crossent.ProbabilityRangeError, argument="target", value=bad, index=(1, 2),
                message=(r"\[0, 1\]",))


def test_soft_target_out_of_range_axis0_index_in_user_layout(xp, cat):
    q = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]).T.copy()  # (C, N)
    q[2, 1] = 2.0
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P.T.copy())), xp_asarray(xp, q), axis=0)
    check_error(ei, crossent.ProbabilityRangeError, argument="target", value=2, index=(2, 1))


# --------------------------------------------------------------------------------------
# NaN is not an error
# --------------------------------------------------------------------------------------


def test_nan_input_propagates_to_that_example_only(xp, cat):
    x = cat.from_probs(P.copy())
    x[0, 1] = np.nan
    out = cat.loss(xp_asarray(xp, x), xp_asarray(xp, [1, 2]))
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1], -np.log(P[1, 2]), rtol=1e-12)


def test_nan_input_with_soft_targets_and_smoothing_is_not_an_error(xp, cat):
    x = cat.from_probs(P.copy())
    x[1, 0] = np.nan
    q = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = cat.loss(xp_asarray(xp, x), xp_asarray(xp, q), label_smoothing=0.1)
    assert np.isnan(out[1]) and np.isfinite(out[0])


def test_nan_logit_in_a_non_target_class_gives_nan(xp, softmax):
    x = np.log(P)
    x[0, 0] = np.nan
    out = softmax.loss(xp_asarray(xp, x), xp_asarray(xp, [1, 2]))
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1], -np.log(P[1, 2]), rtol=1e-12)


def test_binary_nan_propagates_elementwise(xp, binary):
    fn, _ = binary
    x = np.array([0.25, np.nan, 0.75])
    out = to_numpy(fn(xp_asarray(xp, x), xp_asarray(xp, [1.0, 0.0, 1.0])))
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))


# --------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf, -math.inf])
def test_label_smoothing_out_of_range(cat, bad):
    with pytest.raises(crossent.InvalidOptionError) as ei:
        cat.fn(cat.from_probs(P), np.array([0, 1]), label_smoothing=bad)
    check_error(ei, crossent.InvalidOptionError, argument="label_smoothing", value=bad,
                builtins=(ValueError,), message=(r"\[0, 1\]",))


@pytest.mark.parametrize("bad", [None, [0.1], object()])
def test_label_smoothing_not_a_number(cat, bad):
    with pytest.raises(crossent.InvalidOptionError) as ei:
        cat.fn(cat.from_probs(P), np.array([0, 1]), label_smoothing=bad)
    check_error(ei, crossent.InvalidOptionError, argument="label_smoothing",
                message=(r"not a real number",))


@pytest.mark.parametrize(
    "option, value",
    [
        ("label_smoothing", "0.1"),
        ("z_loss", "0.5"),
        ("softcap", "30"),
        ("eps", "0.1"),
        ("label_smoothing", True),
        ("z_loss", True),
        ("softcap", True),
    ],
)
def test_numeric_option_of_wrong_type_is_rejected(option, value):
    # `_validation._real` means to reject bools and non-numbers, but then falls back to
    # float(value), which accepts True (-> 1.0) and numeric strings ("0.1" -> 0.1).
    fn = crossent.cross_entropy if option == "eps" else crossent.softmax_cross_entropy
    x = P if option == "eps" else np.log(P)
    with pytest.raises(crossent.InvalidOptionError) as ei:
        fn(x, np.array([0, 1]), **{option: value})
    check_error(ei, crossent.InvalidOptionError, argument=option, value=value,
                message=(r"not a real number",))


def test_boundary_option_values_are_accepted():
    t = np.array([1, 2])
    for ls in (0.0, 1.0, 0, 1, np.float32(0.5)):
        crossent.cross_entropy(P, t, label_smoothing=ls)
    crossent.softmax_cross_entropy(np.log(P), t, z_loss=0.0, softcap=1e-3)
    crossent.softmax_cross_entropy(np.log(P), t, z_loss=0, softcap=None)
    np.testing.assert_allclose(crossent.cross_entropy(P, t, eps=0.0), -np.log([P[0, 1], P[1, 2]]))
    crossent.cross_entropy(P, t, eps=0.4999)
    crossent.binary_cross_entropy(P, np.ones((2, 3)), eps=0)


@pytest.mark.parametrize("bad", [-1e-3, math.nan, math.inf])
def test_z_loss_negative_nan_or_inf(softmax, bad):
    with pytest.raises(crossent.InvalidOptionError) as ei:
        softmax.fn(np.log(P), np.array([0, 1]), z_loss=bad)
    check_error(ei, crossent.InvalidOptionError, argument="z_loss", value=bad,
                builtins=(ValueError,), message=(r">= 0",))


@pytest.mark.parametrize("bad", [0.0, -5.0, math.inf, math.nan])
def test_softcap_not_positive_finite(softmax, bad):
    with pytest.raises(crossent.InvalidOptionError) as ei:
        softmax.fn(np.log(P), np.array([0, 1]), softcap=bad)
    check_error(ei, crossent.InvalidOptionError, argument="softcap", value=bad,
                builtins=(ValueError,), message=(r"> 0",))


@pytest.mark.parametrize("fn", [crossent.cross_entropy, crossent.binary_cross_entropy])
@pytest.mark.parametrize("bad", [-0.01, 0.5, 1.0, math.nan, math.inf])
def test_eps_outside_half_open_interval(fn, bad):
    t = np.array([0, 1]) if fn is crossent.cross_entropy else np.array([[0.0, 1, 0], [1, 0, 0]])
    with pytest.raises(crossent.InvalidOptionError) as ei:
        fn(P, t, eps=bad)
    check_error(ei, crossent.InvalidOptionError, argument="eps", value=bad,
                builtins=(ValueError,), message=(re.escape("[0, 0.5)"),))


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("bad", ["avg", "Mean", "", None, 1, ("mean",)])
def test_reduction_unknown_or_not_a_string(fn, bad):
    t = np.array([0, 1]) if fn in [c.fn for c in CATS.values()] else np.zeros((2, 3))
    x = np.log(P) if fn in (crossent.nll_loss,) else P
    with pytest.raises(crossent.InvalidOptionError) as ei:
        fn(x, t, reduction=bad)
    check_error(ei, crossent.InvalidOptionError, argument="reduction", value=bad,
                builtins=(ValueError,), message=(re.escape(repr(bad)), r"'none'", r"'mean'",
                                                 r"'sum'"))


@pytest.mark.parametrize("bad", [2, -3, 10])
def test_axis_out_of_range(xp, cat, bad):
    with pytest.raises(crossent.InvalidOptionError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, [0, 1]), axis=bad)
    check_error(ei, crossent.InvalidOptionError, argument="axis", value=bad,
                builtins=(ValueError,), message=(rf"axis = {bad}\b", r"-2 <= axis < 2"))


@pytest.mark.parametrize("bad", [1.0, True, False, "1", None, np.float64(1.0)])
def test_axis_not_an_integer(cat, bad):
    with pytest.raises(crossent.InvalidOptionError) as ei:
        cat.fn(cat.from_probs(P), np.array([0, 1]), axis=bad)
    check_error(ei, crossent.InvalidOptionError, argument="axis", value=bad,
                message=(r"not an integer",))


def test_numpy_integer_axis_is_accepted(cat):
    out = cat.loss(cat.from_probs(P), np.array([1, 2]), axis=np.int64(-1))
    np.testing.assert_allclose(out, -np.log([P[0, 1], P[1, 2]]), rtol=1e-12)


def test_zero_dim_input_is_a_shape_error(xp, cat):
    x = asarray0(xp, cat.from_probs(np.array(0.5)))
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(x, asarray0(xp, 0, "int64"))
    assert isinstance(ei.value, ValueError)
    assert re.search(r"0-dimensional", str(ei.value))
    assert re.search(r"class axis", str(ei.value))
    assert ei.value.value == ()


def test_zero_dim_input_error_names_the_functions_argument(cat):
    # The error says "input", but the argument of e.g. cross_entropy is called "probs".
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(cat.from_probs(np.array(0.5)), np.array(0))
    check_error(ei, crossent.ShapeMismatchError, argument=cat.arg, value=())


@pytest.mark.parametrize("kind", ["index", "soft"])
def test_input_with_zero_classes(xp, cat, kind):
    x = xp_asarray(xp, np.zeros((2, 0)))
    t = xp_asarray(xp, np.zeros(2, dtype=np.int64) if kind == "index" else np.zeros((2, 0)))
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(x, t)
    check_error(ei, crossent.ShapeMismatchError, argument=cat.arg, value=(2, 0),
                message=(r"0 classes", r"at least one class"))


# --------------------------------------------------------------------------------------
# class weights
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["index", "soft"])
def test_negative_class_weight_reports_index(xp, cat, kind):
    t = np.array([0, 1]) if kind == "index" else np.array([[1.0, 0, 0], [0, 1.0, 0]])
    w = xp_asarray(xp, [1.0, 2.0, -0.5])  # the negative class is not even a target
    with pytest.raises(crossent.InvalidOptionError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, t), weight=w)
    check_error(ei, crossent.InvalidOptionError, argument="weight", value=-0.5, index=(2,),
                builtins=(ValueError,), message=(r"weight\[2\] = -0\.5", r">= 0"))


@pytest.mark.parametrize("shape", [(2,), (4,), (1, 3), (3, 1), ()])
def test_class_weight_wrong_shape(xp, cat, shape):
    w = asarray0(xp, np.ones(shape))
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, [0, 1]), weight=w)
    check_error(ei, crossent.ShapeMismatchError, argument="weight", value=shape,
                message=(re.escape("(3,)"),))


@pytest.mark.parametrize("dtype, pattern", [("bool", r"bool"), ("complex128", r"complex")])
def test_class_weight_wrong_dtype(xp, cat, dtype, pattern):
    w = xp_asarray(xp, [1, 0, 1], dtype)
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, [0, 1]), weight=w)
    check_error(ei, crossent.InvalidDTypeError, argument="weight", builtins=(TypeError,),
                message=(pattern,))


def test_integer_class_weight_is_accepted(xp, cat):
    w = xp_asarray(xp, [1, 2, 3], "int64")
    out = cat.loss(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, [1, 2]), weight=w)
    np.testing.assert_allclose(out, [-2 * np.log(P[0, 1]), -3 * np.log(P[1, 2])], rtol=1e-12)


def test_weight_from_another_library_is_a_type_error(cat):
    torch = pytest.importorskip("torch")
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        cat.fn(cat.from_probs(P), np.array([0, 1]), weight=torch.ones(3, dtype=torch.float64))
    check_error(ei, crossent.CrossEntropyTypeError, argument="weight", builtins=(TypeError,),
                message=(r"torch", r"numpy", r"same array library"))
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        cat.fn(torch.from_numpy(cat.from_probs(P)), torch.tensor([0, 1]), weight=jnp.ones(3))
    check_error(ei, crossent.CrossEntropyTypeError, argument="weight", message=(r"jax", r"torch"))


def test_target_from_another_library_is_a_type_error(cat):
    torch = pytest.importorskip("torch")
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        cat.fn(cat.from_probs(P), torch.tensor([0, 1]))
    check_error(ei, crossent.CrossEntropyTypeError, argument="target", message=(r"torch",))


def test_numpy_weight_and_target_are_converted(xp, cat):
    x = xp_asarray(xp, cat.from_probs(P))
    w = np.array([1.0, 2.0, 3.0])
    ref = cat.loss(x, xp_asarray(xp, [1, 2]), weight=xp_asarray(xp, w))
    np.testing.assert_allclose(cat.loss(x, np.array([1, 2]), weight=w), ref, rtol=1e-12)
    np.testing.assert_allclose(cat.loss(x, [1, 2], weight=[1.0, 2.0, 3.0]), ref, rtol=1e-12)
    np.testing.assert_allclose(ref, [-2 * np.log(P[0, 1]), -3 * np.log(P[1, 2])], rtol=1e-12)


def test_numpy_weight_with_torch_float32_input_keeps_float32(cat):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(cat.from_probs(P).astype(np.float32))
    out = cat.fn(x, torch.tensor([1, 2]), weight=np.array([1.0, 2.0, 3.0]))
    if isinstance(out, tuple):
        out = out[0]
    assert out.dtype == torch.float32


# --------------------------------------------------------------------------------------
# ignore_index with probability targets, grad_output
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ii", [0, 2, 5])
def test_nonnegative_ignore_index_with_probability_targets(xp, cat, ii):
    q = xp_asarray(xp, [[1.0, 0, 0], [0, 1.0, 0]])
    with pytest.raises(crossent.InvalidOptionError) as ei:
        cat.fn(xp_asarray(xp, cat.from_probs(P)), q, ignore_index=ii)
    check_error(ei, crossent.InvalidOptionError, argument="ignore_index", value=ii,
                message=(r"probability targets", r"None"))


def test_negative_ignore_index_with_probability_targets_is_allowed(xp, cat):
    q = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    out = cat.loss(xp_asarray(xp, cat.from_probs(P)), xp_asarray(xp, q), ignore_index=-100)
    np.testing.assert_allclose(out, -np.log([P[0, 0], P[1, 1]]), rtol=1e-12)


VG = crossent.softmax_cross_entropy_value_and_grad


@pytest.mark.parametrize("shape", [(3,), (2, 1), (1, 2), (2, 2)])
def test_grad_output_not_broadcastable_with_reduction_none(xp, shape):
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        VG(xp_asarray(xp, np.log(P)), xp_asarray(xp, [0, 1]),
           grad_output=asarray0(xp, np.ones(shape)))
    check_error(ei, crossent.ShapeMismatchError, argument="grad_output", value=shape,
                message=(r"broadcast", re.escape("(2,)")))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(1,), (2,)])
def test_grad_output_must_be_scalar_when_reduced(xp, reduction, shape):
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        VG(xp_asarray(xp, np.log(P)), xp_asarray(xp, [0, 1]), reduction=reduction,
           grad_output=asarray0(xp, np.ones(shape)))
    check_error(ei, crossent.ShapeMismatchError, argument="grad_output", value=shape,
                message=(r"scalar", re.escape(repr(reduction))))


def test_grad_output_valid_shapes_work(xp):
    x, t = xp_asarray(xp, np.log(P)), xp_asarray(xp, [0, 1])
    _, g_ref = VG(x, t)
    _, g = VG(x, t, grad_output=xp_asarray(xp, [2.0]))
    np.testing.assert_allclose(to_numpy(g), 2 * to_numpy(g_ref), rtol=1e-12)
    _, g = VG(x, t, reduction="sum", grad_output=3.0)
    np.testing.assert_allclose(to_numpy(g), 3 * to_numpy(g_ref), rtol=1e-12)


def test_grad_output_wrong_dtype_or_library(xp):
    x, t = xp_asarray(xp, np.log(P)), xp_asarray(xp, [0, 1])
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        VG(x, t, grad_output=xp_asarray(xp, [True, False]))
    check_error(ei, crossent.InvalidDTypeError, argument="grad_output", message=(r"bool",))
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        VG(x, t, grad_output="ones")
    check_error(ei, crossent.CrossEntropyTypeError, argument="grad_output",
                builtins=(TypeError,), message=(r"\bstr\b",))


def test_grad_output_from_another_library():
    torch = pytest.importorskip("torch")
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        VG(np.log(P), np.array([0, 1]), grad_output=torch.ones(2, dtype=torch.float64))
    check_error(ei, crossent.CrossEntropyTypeError, argument="grad_output",
                message=(r"torch", r"numpy"))


# --------------------------------------------------------------------------------------
# binary cross-entropy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1.5, -0.1])
def test_binary_probs_outside_unit_interval(xp, bad):
    p = np.array([[0.5, 0.25], [bad, 0.75]])
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        crossent.binary_cross_entropy(xp_asarray(xp, p), xp_asarray(xp, np.ones((2, 2))))
    check_error(ei, crossent.ProbabilityRangeError, argument="probs", value=bad, index=(1, 0),
                builtins=(ValueError,), message=(r"\[0, 1\]", r"sigmoid_binary_cross_entropy"))


@pytest.mark.parametrize("dtype, bad", [("float64", 1.5), ("float32", -0.5), ("int64", 2),
                                        ("int64", -1), ("uint8", 255)])
def test_binary_target_outside_unit_interval(xp, binary, dtype, bad):
    fn, _ = binary
    t = np.array([[1, 0], [0, 1]], dtype=dtype)
    t[0, 1] = bad
    with pytest.raises(crossent.ProbabilityRangeError) as ei:
        fn(xp_asarray(xp, np.full((2, 2), 0.5)), xp_asarray(xp, t))
    check_error(ei, crossent.ProbabilityRangeError, argument="target", value=bad, index=(0, 1),
                message=(r"\[0, 1\]",))


def test_binary_bool_and_integer_targets_work(xp, binary):
    fn, _ = binary
    x = xp_asarray(xp, [0.25, 0.75])
    ref = to_numpy(fn(x, xp_asarray(xp, [1.0, 0.0])))
    np.testing.assert_allclose(to_numpy(fn(x, xp_asarray(xp, [True, False]))), ref, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(fn(x, xp_asarray(xp, [1, 0], "uint8"))), ref, rtol=1e-12)


@pytest.mark.parametrize("shape", [(3,), (2, 1), (1, 2, 3), (3, 2), ()])
def test_binary_target_shape_mismatch(xp, binary, shape):
    fn, arg = binary
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        fn(xp_asarray(xp, np.full((2, 3), 0.5)), asarray0(xp, np.zeros(shape)))
    check_error(ei, crossent.ShapeMismatchError, argument="target", value=shape,
                message=(re.escape(str(shape)), re.escape("(2, 3)"), arg))


def test_binary_complex_target_and_integer_input(xp, binary):
    fn, arg = binary
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        fn(xp_asarray(xp, [0.5, 0.5]), xp_asarray(xp, [1, 0], "complex128"))
    check_error(ei, crossent.InvalidDTypeError, argument="target", builtins=(TypeError,),
                message=(r"complex",))
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        fn(xp_asarray(xp, [1, 0], "int64"), xp_asarray(xp, [1, 0], "int64"))
    check_error(ei, crossent.InvalidDTypeError, argument=arg, message=(r"int",))


def _binary_weight_cases():
    cases = [(f, name, "weight") for name, (f, _) in BINARY.items()]
    return cases + [(crossent.sigmoid_binary_cross_entropy, "sigmoid_binary_cross_entropy",
                     "pos_weight")]


WEIGHT_CASES = _binary_weight_cases()
WEIGHT_IDS = [f"{n}-{w}" for _, n, w in WEIGHT_CASES]


@pytest.mark.parametrize("fn, _name, wname", WEIGHT_CASES, ids=WEIGHT_IDS)
def test_binary_negative_weight_reports_index(xp, fn, _name, wname):
    x, t = xp_asarray(xp, np.full((2, 3), 0.5)), xp_asarray(xp, np.ones((2, 3)))
    with pytest.raises(crossent.InvalidOptionError) as ei:
        fn(x, t, **{wname: xp_asarray(xp, [1.0, -2.0, 0.5])})
    check_error(ei, crossent.InvalidOptionError, argument=wname, value=-2, index=(1,),
                message=(rf"{wname}\[1\] = -2\b", r">= 0"))
    with pytest.raises(crossent.InvalidOptionError) as ei:
        fn(x, t, **{wname: xp_asarray(xp, [[1.0, 1, 1], [1, 1, -0.5]])})
    check_error(ei, crossent.InvalidOptionError, argument=wname, value=-0.5, index=(1, 2))


@pytest.mark.parametrize("fn, _name, wname", WEIGHT_CASES, ids=WEIGHT_IDS)
@pytest.mark.parametrize("shape", [(2,), (3, 3), (1, 2, 3), (4, 1)])
def test_binary_weight_not_broadcastable(xp, fn, _name, wname, shape):
    x, t = xp_asarray(xp, np.full((2, 3), 0.5)), xp_asarray(xp, np.ones((2, 3)))
    with pytest.raises(crossent.ShapeMismatchError) as ei:
        fn(x, t, **{wname: asarray0(xp, np.ones(shape))})
    check_error(ei, crossent.ShapeMismatchError, argument=wname, value=shape,
                message=(r"broadcast", re.escape("(2, 3)")))


@pytest.mark.parametrize("fn, _name, wname", WEIGHT_CASES, ids=WEIGHT_IDS)
def test_binary_weight_wrong_dtype_or_library(fn, _name, wname):
    x, t = np.full((2, 3), 0.5), np.ones((2, 3))
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        fn(x, t, **{wname: np.array([True, False, True])})
    check_error(ei, crossent.InvalidDTypeError, argument=wname, message=(r"bool",))
    torch = pytest.importorskip("torch")
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        fn(x, t, **{wname: torch.ones(3, dtype=torch.float64)})
    check_error(ei, crossent.CrossEntropyTypeError, argument=wname, message=(r"torch",))
    # the other way round: a NumPy weight with a torch input is converted
    out = fn(torch.from_numpy(x), torch.from_numpy(t), **{wname: np.array([1.0, 2.0, 0.0])})
    assert isinstance(out, torch.Tensor)


# --------------------------------------------------------------------------------------
# inputs that are not arrays
# --------------------------------------------------------------------------------------


NOT_ARRAYS = [{"a": 1}, "0.5", {0.1, 0.9}, None, object()]


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", NOT_ARRAYS, ids=lambda b: type(b).__name__)
def test_input_not_an_array(fn, bad):
    arg = "probs" if fn in (crossent.cross_entropy, crossent.binary_cross_entropy) else (
        "log_probs" if fn is crossent.nll_loss else "logits")
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        fn(bad, np.array([0]))
    check_error(ei, crossent.CrossEntropyTypeError, argument=arg, value=type(bad).__name__,
                builtins=(TypeError,), message=(rf"\b{type(bad).__name__}\b", r"array"))


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", NOT_ARRAYS, ids=lambda b: type(b).__name__)
def test_target_not_an_array(fn, bad):
    x = np.log(P) if fn is crossent.nll_loss else P
    with pytest.raises(crossent.CrossEntropyTypeError) as ei:
        fn(x, bad)
    check_error(ei, crossent.CrossEntropyTypeError, argument="target", value=type(bad).__name__,
                builtins=(TypeError,), message=(rf"\b{type(bad).__name__}\b",))


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
def test_list_of_strings_input_is_a_dtype_error(fn):
    with pytest.raises(crossent.InvalidDTypeError) as ei:
        fn([["a", "b"]], np.array([0]))
    assert isinstance(ei.value, TypeError)


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
def test_ragged_nested_list_input_is_a_crossent_error(fn):
    # np.asarray raises a bare NumPy ValueError ("inhomogeneous shape") today.
    with pytest.raises(crossent.CrossEntropyError):
        fn([[0.25, 0.75], [0.5]], np.array([0, 1]))


@pytest.mark.parametrize("bad", [[0, None], [[1.0, 0.0, 0.0], [0.5]]], ids=["none", "ragged"])
def test_unconvertible_list_target_is_a_crossent_error(xp, bad):
    # Each library's asarray raises its own error (RuntimeError in torch, ValueError in jax).
    with pytest.raises(crossent.CrossEntropyError) as ei:
        crossent.softmax_cross_entropy(xp_asarray(xp, np.log(P)), bad)
    assert ei.value.argument == "target"


# --------------------------------------------------------------------------------------
# jax.jit: no raising possible, so affected examples are NaN and the rest exact
# --------------------------------------------------------------------------------------


@pytest.fixture
def jax():
    return pytest.importorskip("jax")


def _jit(jax, fn, **kw):
    return jax.jit(lambda x, t: fn(x, t, **kw))


def test_jit_out_of_range_labels_give_nan(jax, cat):
    jnp = jax.numpy
    p = probs(4, seed=1)
    t = np.array([0, 3, -1, 10**9])
    out = _jit(jax, cat.fn)(jnp.asarray(cat.from_probs(p)), jnp.asarray(t))
    loss = to_numpy(out[0] if isinstance(out, tuple) else out)
    assert np.all(np.isnan(loss[1:])), loss
    np.testing.assert_allclose(loss[0], -np.log(p[0, 0]), rtol=1e-12)
    out = _jit(jax, cat.fn, reduction="mean")(jnp.asarray(cat.from_probs(p)), jnp.asarray(t))
    assert np.isnan(to_numpy(out[0] if isinstance(out, tuple) else out))  # not a plausible mean


def test_jit_uint8_and_ignored_labels(jax, cat2):
    jnp = jax.numpy
    p = probs(3, seed=2)
    x = jnp.asarray(cat2.from_probs(p))
    out = _jit(jax, cat2.fn)(x, jnp.asarray(np.array([1, 200, 2], dtype=np.uint8)))
    loss = to_numpy(out[0] if isinstance(out, tuple) else out)
    assert np.isnan(loss[1])
    np.testing.assert_allclose(loss[[0, 2]], -np.log([p[0, 1], p[2, 2]]), rtol=1e-12)
    # an ignored label is 0, not NaN; the bad one next to it is still NaN
    out = _jit(jax, cat2.fn, ignore_index=-100)(x, jnp.asarray([-100, 5, 0]))
    loss = to_numpy(out[0] if isinstance(out, tuple) else out)
    assert loss[0] == 0.0 and np.isnan(loss[1])
    np.testing.assert_allclose(loss[2], -np.log(p[2, 0]), rtol=1e-12)


def test_jit_value_and_grad_poisons_the_bad_rows_gradient(jax):
    jnp = jax.numpy
    x = np.log(probs(3, seed=3))
    (loss, g) = _jit(jax, VG)(jnp.asarray(x), jnp.asarray([0, 7, 1]))
    (loss_ok, g_ok) = VG(x, np.array([0, 0, 1]))
    loss, g = to_numpy(loss), to_numpy(g)
    assert np.isnan(loss[1]) and np.all(np.isnan(g[1]))
    np.testing.assert_allclose(loss[[0, 2]], loss_ok[[0, 2]], rtol=1e-12)
    np.testing.assert_allclose(g[[0, 2]], g_ok[[0, 2]], rtol=1e-12, atol=1e-15)


def test_jit_negative_class_weight_gives_nan(jax, cat):
    jnp = jax.numpy
    x = jnp.asarray(cat.from_probs(P))
    f = jax.jit(lambda x, t, w: cat.fn(x, t, weight=w))
    out = f(x, jnp.asarray([1, 2]), jnp.asarray([1.0, -1.0, 1.0]))
    loss = to_numpy(out[0] if isinstance(out, tuple) else out)
    assert np.isnan(loss[0]), loss  # the example whose class weight is negative
    out = f(x, jnp.asarray([1, 2]), jnp.asarray([1.0, 1.0, 1.0]))
    loss = to_numpy(out[0] if isinstance(out, tuple) else out)
    np.testing.assert_allclose(loss, -np.log([P[0, 1], P[1, 2]]), rtol=1e-12)


def test_jit_soft_target_out_of_range_gives_nan(jax, cat):
    jnp = jax.numpy
    q = np.array([[0.0, 1.0, 0.0], [0.0, 1.5, -0.5]])
    out = _jit(jax, cat.fn)(jnp.asarray(cat.from_probs(P)), jnp.asarray(q))
    loss = to_numpy(out[0] if isinstance(out, tuple) else out)
    assert np.isnan(loss[1])
    np.testing.assert_allclose(loss[0], -np.log(P[0, 1]), rtol=1e-12)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_jit_read_value_out_of_range_gives_nan(jax, name):
    jnp = jax.numpy
    cat = CATS[name]
    x = cat.from_probs(P.copy())
    x[0, 1] = 1.5 if name == "cross_entropy" else 0.5  # target of example 0
    x[1, 0] = 2.0  # not read
    loss = to_numpy(_jit(jax, cat.fn)(jnp.asarray(x), jnp.asarray([1, 2])))
    assert np.isnan(loss[0])
    np.testing.assert_allclose(loss[1], -np.log(P[1, 2]), rtol=1e-12)
    loss = to_numpy(_jit(jax, cat.fn, label_smoothing=0.1)(jnp.asarray(x), jnp.asarray([1, 2])))
    assert np.all(np.isnan(loss))


def test_jit_binary_bad_values_give_nan(jax, binary):
    jnp = jax.numpy
    fn, arg = binary
    x = np.array([0.25, 0.5, 0.75])
    t = np.array([1.0, 2.0, 0.0])
    loss = to_numpy(_jit(jax, fn)(jnp.asarray(x), jnp.asarray(t)))
    ok = to_numpy(fn(x, np.array([1.0, 1.0, 0.0])))
    assert np.isnan(loss[1])
    np.testing.assert_allclose(loss[[0, 2]], ok[[0, 2]], rtol=1e-12)
    f = jax.jit(lambda x, t, w: fn(x, t, weight=w))
    loss = to_numpy(f(jnp.asarray(x), jnp.asarray([1.0, 1.0, 0.0]), jnp.asarray([1.0, -1.0, 1.0])))
    assert np.isnan(loss[1])
    if arg == "probs":
        loss = to_numpy(_jit(jax, fn)(jnp.asarray([0.25, 1.5, 0.75]), jnp.asarray([1.0, 1, 0])))
        assert np.isnan(loss[1])
        np.testing.assert_allclose(loss[[0, 2]], ok[[0, 2]], rtol=1e-12)
    else:
        g = jax.jit(lambda x, t, w: fn(x, t, pos_weight=w))
        loss = to_numpy(g(jnp.asarray(x), jnp.asarray([1.0, 1.0, 0.0]),
                          jnp.asarray([1.0, -1.0, 1.0])))
        assert np.isnan(loss[1])


@pytest.mark.parametrize(
    "fn, wname",
    [
        (crossent.softmax_cross_entropy, "weight"),
        (crossent.sigmoid_binary_cross_entropy, "weight"),
        (crossent.sigmoid_binary_cross_entropy, "pos_weight"),
        (crossent.binary_cross_entropy, "weight"),
    ],
    ids=["softmax-weight", "sigmoid-weight", "sigmoid-pos_weight", "bce-weight"],
)
def test_jit_traced_weight_with_constant_input(jax, fn, wname):
    # Input and target are concrete (closed over), only the weight is traced: the value
    # check must not try to read the traced weight (TracerBoolConversionError).
    jnp = jax.numpy
    if fn is crossent.softmax_cross_entropy:
        x, t, w = jnp.asarray(np.log(P)), jnp.asarray([1, 2]), [1.0, 1.0, -1.0]
    else:
        x, t, w = jnp.asarray([0.25, 0.75]), jnp.asarray([1.0, 0.0]), [1.0, -1.0]
    f = jax.jit(lambda w: fn(x, t, **{wname: w}))
    loss = to_numpy(f(jnp.asarray(w)))
    assert np.isnan(loss[-1]), loss


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "bad_label"])
@pytest.mark.parametrize(
    "fn", [crossent.softmax_cross_entropy, crossent.cross_entropy,
           crossent.sigmoid_binary_cross_entropy], ids=lambda f: f.__name__)
def test_jit_with_closed_over_concrete_arrays(jax, fn, valid):
    # Inside jax.jit, operations on closed-over (concrete) arrays are staged: the check
    # masks are tracers even though every argument is concrete. The call must still work
    # (and NaN-poison a bad label), not fail with TracerBoolConversionError.
    jnp = jax.numpy
    if fn is crossent.sigmoid_binary_cross_entropy:
        x, t = jnp.asarray([0.5, -1.0]), jnp.asarray([1.0, 0.0 if valid else 3.0])
        ref = to_numpy(fn(np.asarray([0.5, -1.0]), np.asarray([1.0, 0.0])))
    else:
        x = jnp.asarray(P if fn is crossent.cross_entropy else np.log(P))
        t = jnp.asarray([1, 2 if valid else 3])
        ref = -np.log([P[0, 1], P[1, 2]])
    loss = to_numpy(jax.jit(lambda s: s * fn(x, t))(1.0))
    np.testing.assert_allclose(loss[0], ref[0], rtol=1e-12)
    if valid:
        np.testing.assert_allclose(loss[1], ref[1], rtol=1e-12)
    else:
        assert np.isnan(loss[1])
