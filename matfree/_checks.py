"""Trace-time validation shared by every public verb.

One style of message: name the argument in backticks, say what was expected,
what was received, and how to fix it.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp

GRADIENTS = ("adjoint", "autodiff", "hutchinson")


def check_choice(value, name: str, choices) -> str:
    """Return `value` if it is one of `choices` (strings), else raise a `ValueError`.

    The one message for every string option of the library.
    """
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        msg = f"`{name}` must be one of {choices}; got {name}={value!r}."
        raise ValueError(msg)
    return value


def check_gradient(gradient, allowed=("adjoint", "autodiff")) -> str:
    """Check the `gradient=` keyword against the values a verb supports.

    The values mean the same everywhere (see `docs/conventions.md`):
    `"adjoint"` the library's custom reverse-mode rule (decomposition
    adjoint, two-sided rule, implicit differentiation), `"autodiff"` JAX's
    autodiff through the iterations (forward mode and higher derivatives),
    `"hutchinson"` a stochastic estimate of the gradient of a log-determinant.
    """
    if gradient in GRADIENTS and gradient not in allowed:
        msg = (
            f"`gradient={gradient!r}` is not available here; this function supports "
            f"gradient in {tuple(allowed)}."
        )
        raise ValueError(msg)
    return check_choice(gradient, "gradient", allowed)


def check_key(key, why: str = "the probes are random") -> None:
    """Raise a `TypeError` if a required random `key` is missing."""
    if key is None:
        msg = f"`key` is required ({why}); pass e.g. `key=jax.random.PRNGKey(0)`."
        raise TypeError(msg)


def check_callable(fn, name: str = "matvec") -> None:
    """Raise a `TypeError` unless `fn` is callable."""
    if not callable(fn):
        msg = (
            f"`{name}` must be a callable `v -> A v`; got an object of type "
            f"{type(fn).__name__}. Wrap a dense matrix as `lambda v: A @ v`."
        )
        raise TypeError(msg)


def check_int(value, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return `value` as a Python int, or raise if it is not a static int in range."""
    if isinstance(value, bool | jax.core.Tracer):
        msg = f"`{name}` must be a static Python int; got {value!r}."
        raise TypeError(msg)
    try:
        value = operator.index(value)
    except TypeError:
        msg = f"`{name}` must be a static Python int; got {type(value).__name__} {value!r}."
        raise TypeError(msg) from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        msg = f"`{name}` must be at least {minimum}{upper}; got {name}={value}."
        raise ValueError(msg)
    return value


def check_depth(depth, n: int) -> int:
    """Check a Krylov depth against the operator size `n`."""
    if isinstance(depth, bool) or not isinstance(depth, int | jnp.integer):
        msg = f"`depth` must be a static Python int; got {type(depth).__name__} {depth!r}."
        raise TypeError(msg)
    depth = int(depth)
    if not 1 <= depth <= n:
        msg = (
            f"`depth` must satisfy 1 <= depth <= n = {n} (the size of the vector); "
            f"got depth={depth}. A Krylov space of a size-{n} operator has at most "
            f"{n} dimensions."
        )
        raise ValueError(msg)
    return depth


COMPLEX_VERBS = (
    "`solve`, `decomp.lanczos`, `decomp.arnoldi`, `funm_action`, `sqrt_action`, "
    "`exp_action`, `trace`, `stochtrace.diagonal`, `trace_funm`, `logdet`, "
    "`eig.extreme` and `eig.spectral_density`"
)


def check_floating_vector(v, name: str, *, complex_ok: bool = False) -> jnp.dtype:
    """Check that all leaves of `v` are floating arrays of one dtype; return it.

    With `complex_ok`, complex dtypes (complex64, complex128) are accepted
    too (the verbs of `COMPLEX_VERBS`, see `docs/complex.md`).
    """
    leaves = jax.tree_util.tree_leaves(v)
    if not leaves:
        msg = f"`{name}` must contain at least one array; got an empty pytree."
        raise ValueError(msg)
    dtypes = {jnp.result_type(leaf) for leaf in leaves}
    if len(dtypes) > 1:
        msg = (
            f"all leaves of `{name}` must have the same dtype; got "
            f"{sorted(str(d) for d in dtypes)}. Cast them to one floating dtype."
        )
        raise TypeError(msg)
    (dtype,) = dtypes
    if complex_ok and not jnp.issubdtype(dtype, jnp.inexact):
        msg = (
            f"`{name}` must have a floating or complex dtype (float32, float64, "
            f"complex64 or complex128); got {dtype}. Cast it, e.g. "
            f"`{name}.astype(float)`."
        )
        raise TypeError(msg)
    if not complex_ok and jnp.issubdtype(dtype, jnp.complexfloating):
        msg = (
            f"`{name}` must have a real floating dtype (float32 or float64) here; got "
            f"{dtype}. Complex dtypes are supported by {COMPLEX_VERBS}."
        )
        raise TypeError(msg)
    if not jnp.issubdtype(dtype, jnp.inexact):
        msg = (
            f"`{name}` must have a real floating dtype (float32 or float64); got "
            f"{dtype}. Cast it, e.g. `{name}.astype(float)`."
        )
        raise TypeError(msg)
    if sum(jnp.size(leaf) for leaf in leaves) == 0:
        msg = f"`{name}` must not be empty; got size 0."
        raise ValueError(msg)
    return dtype


def check_operator(
    matvec, v, *, name: str = "v", matvec_name: str = "matvec", complex_ok: bool = False
):
    """Check that `matvec(v)` is defined and has the structure, shapes and dtype of `v`.

    Returns the dtype of `v`. Evaluates `matvec` abstractly (no FLOPs).
    """
    check_callable(matvec, matvec_name)
    dtype = check_floating_vector(v, name, complex_ok=complex_ok)
    try:
        out = jax.eval_shape(matvec, v)
    except Exception as err:
        msg = (
            f"`{matvec_name}` could not be applied to `{name}` "
            f"(shape {_describe(v)}): {type(err).__name__}: {err}"
        )
        raise ValueError(msg) from err
    struct_in = jax.tree_util.tree_structure(v)
    struct_out = jax.tree_util.tree_structure(out)
    if struct_in != struct_out:
        msg = (
            f"`{matvec_name}` must return a vector with the same structure as `{name}`; "
            f"got input {struct_in} and output {struct_out}."
        )
        raise ValueError(msg)
    for leaf_in, leaf_out in zip(
        jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(out), strict=True
    ):
        if jnp.shape(leaf_in) != leaf_out.shape:
            msg = (
                f"`{matvec_name}` must map a vector to a vector of the same shape "
                f"(a square operator); `{name}` has shape {jnp.shape(leaf_in)} but "
                f"`{matvec_name}({name})` has shape {leaf_out.shape}. Check that "
                f"`{name}` has the size the operator expects."
            )
            raise ValueError(msg)
        if jnp.result_type(leaf_in) != leaf_out.dtype:
            msg = (
                f"`{matvec_name}` changed the dtype: `{name}` is "
                f"{jnp.result_type(leaf_in)} but `{matvec_name}({name})` is "
                f"{leaf_out.dtype}. Use one dtype for the vector and the operator's "
                f"arrays (e.g. cast `{name}` to {leaf_out.dtype})."
            )
            raise TypeError(msg)
    return dtype


def _describe(v) -> str:
    shapes = [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(v)]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def check_materialize(materialize, mesh):
    """Validate a `materialize=` option (a bool; not together with a `mesh`)."""
    if not isinstance(materialize, bool):
        msg = f"`materialize` must be True or False; got {materialize!r}."
        raise TypeError(msg)
    if materialize and mesh is not None:
        msg = (
            "`materialize=True` does not take a `mesh` (the stored kernel matrix would "
            "sit whole on each device); pass `materialize=False` to shard the matvec."
        )
        raise ValueError(msg)
    return materialize


def check_mesh(mesh, n):
    """Validate a `mesh=` option: a `jax.sharding.Mesh` whose size divides `n`."""
    if not isinstance(mesh, jax.sharding.Mesh):
        msg = f"`mesh` must be a jax.sharding.Mesh (e.g. jax.make_mesh); got {mesh!r}."
        raise TypeError(msg)
    if n % mesh.size:
        msg = (
            f"`mesh` has {mesh.size} devices, which do not divide the {n} rows; "
            "pad the data or use a mesh whose size divides the number of rows."
        )
        raise ValueError(msg)
    return mesh
