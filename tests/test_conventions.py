"""The conventions of `docs/conventions.md`, checked by introspection on every public verb.

A new module or verb that drifts from the vocabulary fails here, not in review.
"""

import inspect
import types
import typing

import pytest

import matfree

RETIRED = {
    "custom_vjp": "gradient",
    "implicit": "gradient",
    "return_info": "the result's fields",
    "return_pivots": "the result's fields",
    "batch_size": "chunk_size",
    "block_size": "rows_per_block",
    "kind": "probes",
}
# `noise` is the GP's observation-noise variance; elsewhere a shift is `shift`.
NOISE_ALLOWED = ("matfree.gp", "matfree.operators")
KEYWORD_ONLY = (
    "throw",
    "gradient",
    "depth",
    "batched",
    "key",
    "rank",
    "shift",
    "chunk_size",
    "rows_per_block",
    "mesh",
    "materialize",
)
GRADIENTS = ("adjoint", "autodiff", "hutchinson")

# Verbs not yet migrated to the vocabulary (issue #10). Each is a strict
# xfail: when a verb is fixed its entry must be deleted, and the list must end
# empty. Nothing may be added to it.
DRIFT = {}


def _params(test, items):
    out = []
    for name, item in items:
        marks = ()
        if f"{test}[{name}]" in DRIFT:
            marks = pytest.mark.xfail(strict=True, reason="not yet migrated (#10)")
        out.append(pytest.param(name, item, marks=marks, id=name))
    return out


def _public_modules():
    mods = {"matfree": matfree}
    for name in dir(matfree):
        obj = getattr(matfree, name)
        if isinstance(obj, types.ModuleType) and obj.__name__.startswith("matfree."):
            mods[obj.__name__] = obj
    return mods


def _public_functions():
    seen = {}
    for modname, mod in _public_modules().items():
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if inspect.isfunction(obj) and obj.__module__.startswith("matfree"):
                seen.setdefault(f"{obj.__module__}.{obj.__qualname__}", (modname, obj))
    return sorted(seen.items())


def _public_results():
    seen = {}
    for mod in _public_modules().values():
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
                seen[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(seen.items())


FUNCTIONS = _public_functions()
RESULTS = _public_results()


def test_the_walk_finds_the_verbs():
    names = {name.rsplit(".", 1)[-1] for name, _ in FUNCTIONS}
    verbs = ("lanczos", "arnoldi", "solve", "funm_action", "logdet", "trace", "fit")
    # The application modules too (they must be exported to be walked).
    verbs += ("log_evidence", "calibrate", "sample", "predict", "newton_krylov")
    for verb in verbs:
        assert verb in names


@pytest.mark.parametrize(
    ("name", "item"), _params("test_keywords_follow_the_conventions", FUNCTIONS)
)
def test_keywords_follow_the_conventions(name, item):
    _, fn = item
    params = inspect.signature(fn).parameters
    for p in params.values():
        assert p.name not in RETIRED, (
            f"{name}: `{p.name}` is retired; use {RETIRED[p.name]} (docs/conventions.md)"
        )
        if p.name == "noise":
            assert fn.__module__.startswith(NOISE_ALLOWED), f"{name}: use `shift`"
        if p.name in KEYWORD_ONLY:
            first_key = p.name == "key" and next(iter(params)) == "key"
            assert p.kind is p.KEYWORD_ONLY or first_key, (
                f"{name}: `{p.name}` must be keyword-only"
            )
    if "throw" in params:
        assert params["throw"].default is True, f"{name}: `throw` must default to True"
    if "gradient" in params:
        assert params["gradient"].default in GRADIENTS, name


@pytest.mark.parametrize(
    ("name", "item"),
    _params("test_verbs_that_throw_return_a_result_with_status", FUNCTIONS),
)
def test_verbs_that_throw_return_a_result_with_status(name, item):
    _, fn = item
    result = typing.get_type_hints(fn).get("return")
    if "throw" not in inspect.signature(fn).parameters:
        has_status = isinstance(result, type) and "status" in getattr(result, "_fields", ())
        assert not has_status, f"{name} returns a status but takes no `throw`"
        return
    assert isinstance(result, type) and hasattr(result, "_fields"), (
        f"{name} takes `throw` but is not annotated to return a NamedTuple result"
    )
    assert "status" in result._fields, f"{name}: {result.__name__} has no `status`"


@pytest.mark.parametrize(
    ("name", "cls"), _params("test_results_name_their_single_output_value", RESULTS)
)
def test_results_name_their_single_output_value(name, cls):
    assert "estimate" not in cls._fields, f"{name}: the main output is `value`"
    if "status" in cls._fields:
        assert cls._fields.index("status") >= 1, name
