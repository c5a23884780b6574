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
    """A matvec on flat vectors with its closed-over arrays made explicit."""

    fn: Any  # fn(x, *params) -> A x, x of shape (n,)
    params: list
    unravel: Any  # flat (n,) -> pytree like the user's vector
    size: int
    dtype: Any

    def __call__(self, x):
        return self.fn(x, *self.params)


def flatten(matvec, v, *, name: str = "v") -> tuple[jax.Array, FlatOperator]:
    """Validate `matvec` against `v` and return `(flat_v, flat_operator)`."""
    dtype = _checks.check_operator(matvec, v, name=name)
    flat, unravel = jax.flatten_util.ravel_pytree(v)

    def mv(x):
        return jax.flatten_util.ravel_pytree(matvec(unravel(x)))[0]

    fn, params = jax.closure_convert(mv, flat)
    return flat, FlatOperator(fn, list(params), unravel, flat.shape[0], dtype)


def map_rows(fn, params):
    """The flat matvec `fn(x, *params)` applied to every row of a block `X` (m, n).

    The one place where a matvec is batched over vectors: Krylov methods run
    on blocks of vectors and call it once per step.
    """
    return jax.vmap(lambda x: fn(x, *params))


def unravel_rows(op: FlatOperator, rows: jax.Array):
    """Map a stack of flat vectors (..., n) to pytrees with the same leading axes."""
    fn = op.unravel
    for _ in range(rows.ndim - 1):
        fn = jax.vmap(fn)
    return fn(rows)


def safe_norm(x, axis=-1):
    """Euclidean norm whose gradient at zero is zero instead of NaN."""
    sq = jnp.sum(x * x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
