"""One compiled program for repeated eager calls.

A verb called from plain Python (no outer `jit`) traces its loops again on
every call, because the user's matvec is a new Python closure each time
(`lambda x: A @ x` with a new `A`). JAX then compiles every loop body anew:
hundreds of milliseconds per call and memory that the process never gets back.

`reuse_compiled` wraps a public verb. On an eager call it traces each
operator argument once on its template vector, turning `lambda x: A @ x` into
a jaxpr (its structure) plus the arrays it closes over (its data). The verb
then runs under `equinox.filter_jit` with the operator replaced by an
`_Operator` whose structure is a static, hashable field and whose data are
ordinary arguments. Two calls whose operators have the same structure and
shapes share one compiled program, whatever the arrays hold.
Python numbers a matvec closes over are part of its structure (they are
literals in the jaxpr): a value that changes between calls should be an array.

Calls made under a JAX transformation (`jit`, `grad`, `vmap`, ...) are passed
through untouched: the outer transformation already compiles once. So are
operators that cannot be traced on their template (the verb's own checks then
report the problem). Set the environment variable `MATFREE_EAGER_CACHE=0` to
switch the mechanism off.

The compiled programs are kept per verb in a least-recently-used table of
`MAX_PROGRAMS` entries (one per operator structure and set of non-array
arguments: a new `lambda` for `f` counts as new), so a script that calls a verb with ever
new shapes keeps a bounded number of programs alive.
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
import threading
import types
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

MAX_PROGRAMS = 32


class _Structure:
    """The hashable structure of a traced operator: its jaxpr and pytree shapes."""

    __slots__ = ("_hash", "in_shapes", "in_tree", "jaxpr", "key", "out_tree")

    def __init__(self, jaxpr, in_tree, out_tree, in_shapes):
        self.jaxpr = jaxpr
        self.in_tree = in_tree
        self.out_tree = out_tree
        self.in_shapes = in_shapes
        self.key = (str(jaxpr), in_tree, out_tree, in_shapes)
        self._hash = hash(self.key)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _Structure) and self.key == other.key


class _Operator(eqx.Module):
    """A traced operator: static structure, dynamic closed-over arrays."""

    consts: list
    structure: _Structure = eqx.field(static=True)

    def __call__(self, x):
        leaves, tree = jax.tree_util.tree_flatten(x)
        shapes = tuple(jnp.shape(leaf) for leaf in leaves)
        if tree != self.structure.in_tree or shapes != self.structure.in_shapes:
            msg = (
                f"internal: operator traced on {self.structure.in_shapes} called on "
                f"{shapes}; set MATFREE_EAGER_CACHE=0 and report this."
            )
            raise ValueError(msg)
        out = jax.core.eval_jaxpr(self.structure.jaxpr, self.consts, *leaves)
        return jax.tree_util.tree_unflatten(self.structure.out_tree, out)


def _enabled() -> bool:
    return os.environ.get("MATFREE_EAGER_CACHE", "1") != "0"


def _under_transformation() -> bool:
    """Whether this call runs inside `jit`, `grad`, `vmap`, ... (not at top level).

    A function argument may close over traced values where no argument shows
    one (`jax.grad(lambda p: funm_action(lambda x: x**p, ...))`), so the
    arguments alone cannot tell.
    """
    try:
        from jax._src import core

        return not core.trace_ctx.is_top_level()
    except (ImportError, AttributeError):  # a JAX without this internal: be safe
        return True


def _static_key(args, kwargs):
    """The non-array part of the arguments as a hashable key, or None."""
    static = eqx.filter((args, kwargs), eqx.is_array, inverse=True)
    leaves, tree = jax.tree_util.tree_flatten(static)
    key = (tuple(leaves), tree)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _is_function(fn) -> bool:
    return isinstance(fn, types.FunctionType | types.MethodType | functools.partial)


def hoist(fn, *example):
    """`fn` as `pure(consts, *args)`, the arrays it closes over made arguments.

    Traces `fn` once on `example` (arrays or pytrees). Returns
    `(pure, consts, jaxpr, out_tree)`. Compiled code that calls `pure` with
    `consts` as arguments takes the data as inputs instead of folding it in as
    constants, and code traced on another closure of the same structure gives
    the same `jaxpr`.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example)
    out_tree = jax.tree_util.tree_structure(out_shape)
    jaxpr = closed.jaxpr

    def pure(consts, *args):
        out = jax.core.eval_jaxpr(jaxpr, consts, *jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(out_tree, out)

    return pure, list(closed.consts), jaxpr, out_tree


def _trace(fn, template):
    """`fn` as an `_Operator` traced on `template`, or None where that fails."""
    try:
        _, consts, jaxpr, out_tree = hoist(fn, template)
    except Exception:  # noqa: BLE001 - the verb's own checks report the problem
        return None
    leaves, in_tree = jax.tree_util.tree_flatten(template)
    in_shapes = tuple(jnp.shape(leaf) for leaf in leaves)
    return _Operator(consts, _Structure(jaxpr, in_tree, out_tree, in_shapes))


def reuse_compiled(*, operators: tuple[str, ...], template):
    """Decorate a verb so that eager calls share compiled programs.

    Parameters
    ----------
    operators
        Names of the verb's operator arguments (callables on vectors).
    template
        `template(arguments) -> vector` picks, from the bound arguments
        (a dict), the vector the operators act on (one problem, unbatched).
    """

    def decorate(verb):
        signature = inspect.signature(verb)
        programs: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        lock = threading.Lock()

        def program(key):
            with lock:
                if key in programs:
                    programs.move_to_end(key)
                    return programs[key]
                compiled = eqx.filter_jit(verb)
                programs[key] = compiled
                while len(programs) > MAX_PROGRAMS:
                    programs.popitem(last=False)
                return compiled

        @functools.wraps(verb)
        def wrapper(*args, **kwargs):
            if not _enabled() or _under_transformation():
                return verb(*args, **kwargs)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return verb(*args, **kwargs)
            arguments = bound.arguments
            try:
                vector = template(arguments)
            except Exception:  # noqa: BLE001 - the verb's own checks report it
                return verb(*args, **kwargs)
            for name in operators:
                fn = arguments.get(name)
                if fn is None:
                    continue
                if not _is_function(fn):
                    # An operator object (a NamedTuple, an equinox Module):
                    # `filter_jit` splits its arrays from its structure.
                    continue
                traced = _trace(fn, vector)
                if traced is None:
                    return verb(*args, **kwargs)
                arguments[name] = traced
            static = _static_key(bound.args, bound.kwargs)
            if static is None:
                return verb(*args, **kwargs)
            return program(static)(*bound.args, **bound.kwargs)

        wrapper.programs = programs
        return wrapper

    return decorate


def first(name: str, fallback: str | None = None, batched: str | None = None):
    """A `template` that takes argument `name` (or `fallback` where it is None).

    With `batched`, the named boolean argument says whether the vector carries
    a leading batch axis; the template is then its first row.
    """

    def template(arguments):
        vector = arguments.get(name)
        if vector is None and fallback is not None:
            vector = arguments[fallback]
        if batched is not None and arguments.get(batched, False):
            vector = jax.tree_util.tree_map(lambda a: a[0], vector)
        return vector

    return template
