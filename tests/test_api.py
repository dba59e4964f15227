"""The public surface: ``__all__`` is complete and every public function is documented."""

from __future__ import annotations

import inspect

import crossent


def test_all_is_complete_and_sorted_into_existing_names():
    public = {
        name
        for name, obj in vars(crossent).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
    }
    assert set(crossent.__all__) == public
    assert len(crossent.__all__) == len(set(crossent.__all__))


def test_contract_names_exist():
    for name in [
        "cross_entropy",
        "nll_loss",
        "softmax_cross_entropy",
        "softmax_cross_entropy_value_and_grad",
        "binary_cross_entropy",
        "sigmoid_binary_cross_entropy",
        "CrossEntropyError",
    ]:
        assert name in crossent.__all__


def test_every_error_is_a_crossentropy_error_and_a_builtin():
    for name in crossent.__all__:
        obj = getattr(crossent, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, crossent.CrossEntropyError)
            if obj is not crossent.CrossEntropyError:
                assert issubclass(obj, (ValueError, TypeError))


LOSSES = [
    "cross_entropy",
    "nll_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_value_and_grad",
    "binary_cross_entropy",
    "sigmoid_binary_cross_entropy",
]


def test_public_functions_have_formula_example_and_parameters():
    for name in crossent.__all__:
        obj = getattr(crossent, name)
        if inspect.isfunction(obj):
            doc = obj.__doc__ or ""
            if name in LOSSES:
                assert "math::" in doc, name
            assert ">>> " in doc, name
            for param in inspect.signature(obj).parameters:
                assert f"{param} :" in doc, (name, param)
            assert "{" + "target}" not in doc  # templates were filled in


def test_keyword_contract():
    sig = inspect.signature(crossent.softmax_cross_entropy)
    assert list(sig.parameters) == [
        "logits", "target", "axis", "weight", "ignore_index", "label_smoothing",
        "z_loss", "softcap", "reduction", "return_lse",
    ]
    vg = inspect.signature(crossent.softmax_cross_entropy_value_and_grad)
    assert list(vg.parameters) == list(sig.parameters) + ["grad_output", "out"]
    for p in list(sig.parameters.values())[2:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["reduction"].default == "none"


def test_py_typed_is_shipped():
    import importlib.resources

    assert importlib.resources.files("crossent").joinpath("py.typed").is_file()
