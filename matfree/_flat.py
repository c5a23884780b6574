"""Flat views of matrix-free operators on pytree vectors.

Every algorithm in the library works on flat 1-D vectors. `flatten` turns a
user's `matvec` on pytrees into `fn(x, *params)` on flat vectors, with every
array the matvec closes over hoisted into `params` (closure conversion), so
that custom VJP rules can return cotangents for them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp

from matfree import _checks


class FlatOperator(NamedTuple):
    """A matvec on flat vectors with its closed-over arrays made explicit.

    For a square operator `unravel_out is unravel` and `out_size == size`; for
    a rectangular one (`flatten(..., out_like=b)`, e.g. LSQR) the input is
    shaped like `v` and the output like `out_like`.
    """

    fn: Any  # fn(x, *params) -> A x, x of shape (size,), A x of shape (out_size,)
    params: list
    unravel: Any  # flat (size,) -> pytree like the user's (input) vector
    size: int
    dtype: Any
    unravel_out: Any = None  # flat (out_size,) -> pytree like `out_like`
    out_size: int | None = None

    def __call__(self, x):
        return self.fn(x, *self.params)

    def rows(self, X):
        """The matvec applied to every row of a flat block `X` (m, size)."""
        return map_rows(self.fn, self.params)(X)


def flatten(
    matvec,
    v,
    *,
    name: str = "v",
    matvec_name: str = "matvec",
    out_like=None,
    out_name: str = "b",
    complex_ok: bool = False,
) -> tuple[jax.Array, FlatOperator]:
    """Validate `matvec` against `v` and return `(flat_v, flat_operator)`.

    Square operators (`out_like=None`): `matvec(v)` must have the structure,
    shapes and dtype of `v`. Rectangular operators: pass the output template
    `out_like` (named `out_name` in messages); `matvec(v)` must then be shaped
    like `out_like`, and `v` only gives the input's structure. `complex_ok`
    accepts complex dtypes (for the verbs that support them).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> R = jnp.ones((3, 2))
    >>> x, op = flatten(lambda v: R @ v, jnp.zeros(2), out_like=jnp.zeros(3))
    >>> (op.size, op.out_size), op(jnp.ones(2))
    ((2, 3), Array([2., 2., 2.], dtype=float64))
    """
    if out_like is None:
        dtype = _checks.check_operator(
            matvec, v, name=name, matvec_name=matvec_name, complex_ok=complex_ok
        )
    else:
        dtype = _check_rectangular(
            matvec, v, out_like, name, matvec_name, out_name, complex_ok
        )
    flat, unravel = jax.flatten_util.ravel_pytree(v)
    if out_like is None:
        unravel_out, out_size = unravel, flat.shape[0]
    else:
        flat_out, unravel_out = jax.flatten_util.ravel_pytree(out_like)
        out_size = flat_out.shape[0]

    def mv(x):
        return jax.flatten_util.ravel_pytree(matvec(unravel(x)))[0]

    fn, params = jax.closure_convert(mv, flat)
    op = FlatOperator(
        fn, list(params), unravel, flat.shape[0], dtype, unravel_out, out_size
    )
    return flat, op


def _check_rectangular(matvec, v, out_like, name, matvec_name, out_name, complex_ok):
    """The checks of `flatten` for an operator from `v`-like to `out_like`-like vectors."""
    _checks.check_callable(matvec, matvec_name)
    dtype = _checks.check_floating_vector(out_like, out_name, complex_ok=complex_ok)
    vdtype = _checks.check_floating_vector(v, name, complex_ok=complex_ok)
    if vdtype != dtype:
        msg = f"`{name}` must have the dtype of `{out_name}` ({dtype}); got {vdtype}."
        raise TypeError(msg)
    try:
        out = jax.eval_shape(matvec, v)
    except Exception as err:
        msg = (
            f"`{matvec_name}` could not be applied to a vector shaped like `{name}`: "
            f"{type(err).__name__}: {err}. For a rectangular operator pass `{name}` "
            "(e.g. zeros) to give the shape of its input."
        )
        raise ValueError(msg) from err
    shapes_out = [(leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(out)]
    shapes_want = [
        (jnp.shape(leaf), jnp.result_type(leaf))
        for leaf in jax.tree_util.tree_leaves(out_like)
    ]
    same_tree = jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(out_like)
    if not same_tree or shapes_out != shapes_want:
        msg = (
            f"`{matvec_name}(x)` must be shaped like `{out_name}`; got {shapes_out} for "
            f"`{out_name}` {shapes_want}. Check the shapes of `{out_name}` and `{name}`."
        )
        raise ValueError(msg)
    return dtype


def map_rows(fn, params):
    """The flat matvec `fn(x, *params)` applied to every row of a block `X` (m, n).

    The one place where a matvec is batched over vectors: Krylov methods run
    on blocks of vectors and call it once per step. A block of one row calls
    `fn` directly (no `vmap`), so a custom batching rule is not needed there.
    """
    batched = jax.vmap(lambda x: fn(x, *params))

    def apply(X):
        if X.shape[0] == 1:
            return fn(X[0], *params)[None]
        return batched(X)

    return apply


def unravel_rows(op: FlatOperator, rows: jax.Array):
    """Map a stack of flat vectors (..., n) to pytrees with the same leading axes."""
    fn = op.unravel
    for _ in range(rows.ndim - 1):
        fn = jax.vmap(fn)
    return fn(rows)


def vdot(x, y, axis=-1):
    """Inner products `sum(conj(x) * y)` along `axis` (conjugate-linear in `x`).

    The one inner product of the library; for real arrays `conj` is a no-op.
    """
    return jnp.sum(jnp.conj(x) * y, axis=axis)


def sq_norm(x, axis=-1):
    """Squared Euclidean norms `sum(|x|^2)` along `axis`, real for complex `x`."""
    return jnp.sum(jnp.real(jnp.conj(x) * x), axis=axis)


def real_dtype(dtype):
    """The real dtype of the same precision (float64 for complex128)."""
    return jnp.finfo(dtype).dtype


def safe_norm(x, axis=-1):
    """Euclidean norm whose gradient at zero is zero instead of NaN (real for complex)."""
    sq = sq_norm(x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
