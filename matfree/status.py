"""One vocabulary for run-time conditions: status codes, messages, `throw`.

Every verb that can fail at run time (under `jit`, where no Python exception
can be raised from traced values) reports the condition in the `status` field
of its result: one integer code per condition, the same code in every module.
With `throw=True` (the default of every verb) a non-zero status raises an
error via `equinox.error_if` carrying `message(status)`, attached to *every*
array of the result, so the check holds whichever output a caller reads.

Codes
-----
| code | name | meaning |
|---|---|---|
| 0 | `OK` | no problem |
| 1 | `NOT_CONVERGED` | a tolerance was not reached within the iteration limit |
| 2 | `BREAKDOWN` | a division by zero in a solver's recurrence |
| 3 | `NOT_POSITIVE_DEFINITE` | curvature or a Ritz value `<= 0` where SPD is needed |
| 4 | `NONFINITE` | NaN or inf in the input, the operator's output or the result |
| 5 | `ZERO_VECTOR` | a start vector is zero: the Krylov space is empty |
| 6 | `NOT_SYMMETRIC` | a symmetric method met a non-symmetric operator |
| 7 | `ILL_CONDITIONED` | an ill-conditioned small eigenbasis makes `f(H)` inaccurate |
| 8 | `INVALID_INPUT` | an argument checked at run time is out of its domain |
| 9 | `STAGNATED` | an iteration made no progress over a full cycle |

An invariant subspace found early by Lanczos or Arnoldi ("happy breakdown") is
*information*, not a failure: it is exact and reported in `num_steps`, never
in `status`.

Examples
--------
>>> import jax.numpy as jnp
>>> import matfree
>>> A = jnp.array([[1.0, 0.0], [0.0, -1.0]])  # indefinite
>>> sol = matfree.solve(lambda v: A @ v, jnp.ones(2), method="cg", throw=False)
>>> matfree.status.Status(int(sol.status)).name
'NOT_POSITIVE_DEFINITE'
>>> matfree.status.message(sol.status)[:40]
'the operator is not positive definite (C'
"""

from __future__ import annotations

import enum

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MESSAGES", "Status", "error_if", "first", "message"]


class Status(enum.IntEnum):
    """The run-time conditions, one code each (see the module docstring)."""

    OK = 0
    NOT_CONVERGED = 1
    BREAKDOWN = 2
    NOT_POSITIVE_DEFINITE = 3
    NONFINITE = 4
    ZERO_VECTOR = 5
    NOT_SYMMETRIC = 6
    ILL_CONDITIONED = 7
    INVALID_INPUT = 8
    STAGNATED = 9


MESSAGES = (
    "ok.",
    "did not converge: the iteration limit (`maxiter`, `depth`, `num_substeps` or "
    "`restart` cycles) was reached before the tolerance. Raise the limit, loosen the "
    "tolerance or use a preconditioner (the result's residual or error estimate says "
    "how far it got).",
    "the iteration broke down (a division by zero in its recurrence: a singular "
    "operator, a non-SPD preconditioner, or a stagnating BiCGStab). Try another "
    "`method` or a preconditioner.",
    "the operator is not positive definite (CG met `p^T A p <= 0`, or a Ritz value is "
    "`<= 0` where a log-determinant or square root needs a positive spectrum). Check "
    "the matvec, add a shift, or use `method='minres'` for symmetric indefinite "
    "systems.",
    "non-finite values (NaN or inf) in the input vector, the operator's output or the "
    "result. Check the inputs and the matvec; for `exp_action` with a large "
    "`t * |A|`, use `tol=` or more `num_substeps`.",
    "the start vector is zero, so the Krylov space is empty and the result carries no "
    "information. Pass a non-zero (e.g. random) start vector.",
    "the operator is not symmetric (`x^T A y != y^T A x` for two Krylov vectors), but "
    "the method needs a symmetric one. Use a method for general operators "
    "(`symmetric=False`, `method='gmres'`) or fix the matvec.",
    "the small projected (Hessenberg) matrix has an ill-conditioned eigenbasis, so "
    "f(H) by diagonalisation is inaccurate. Use `exp_action` for the exponential, "
    "`symmetric=True` for a symmetric operator, or a smaller `depth`.",
    "an argument that can only be checked at run time is out of its domain (e.g. a "
    "negative time `t`, a non-positive coefficient field `k`, a non-positive "
    "hyperparameter).",
    "the iteration stagnated: a full restart cycle did not reduce the residual. "
    "Increase `restart`, use a preconditioner or another `method`.",
)


def message(code) -> str:
    """The message of a status code (a Python int or a concrete scalar array).

    Examples
    --------
    >>> message(1).startswith("did not converge")
    True
    """
    code = int(np.asarray(code))
    if not 0 <= code < len(MESSAGES):
        msg = f"`code` must be a status code in 0..{len(MESSAGES) - 1}; got {code}."
        raise ValueError(msg)
    return MESSAGES[code]


def first(*conditions) -> jax.Array:
    """The code of the first `(flag, code)` pair whose flag holds, else `OK`.

    Flags are boolean arrays (broadcast together); the result is `int32`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> int(first((jnp.array(False), Status.NONFINITE), (True, Status.NOT_CONVERGED)))
    1
    """
    status = jnp.int32(Status.OK)
    for flag, code in reversed(conditions):
        status = jnp.where(flag, jnp.int32(code), status)
    return status


def error_if(tree, status):
    """Return `tree` with a run-time error attached if any `status` is non-zero.

    The error (via `equinox.branched_error_if`) carries the message of the
    first non-zero code and is attached to every array leaf of `tree` at once,
    so it is raised whichever part of the result is used, also under `jit`.
    Under `jax.jit` the message arrives wrapped in an XLA runtime error; wrap
    your program in `equinox.filter_jit` to read it first, or set
    `EQX_ON_ERROR=nan` to get NaNs instead (see `docs/conventions.md`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = error_if(jnp.ones(2), jnp.int32(0))  # status 0: nothing happens
    """
    flat = jnp.ravel(jnp.asarray(status))
    bad = flat != Status.OK
    code = flat[jnp.argmax(bad)]
    messages = tuple(f"matfree: {m}" for m in MESSAGES)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    floats = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
    others = [x for x, f in zip(leaves, floats, strict=True) if not f]
    # The error is raised on a scalar `token` (zero, or NaN under
    # EQX_ON_ERROR=nan) that is added to every floating leaf, not on the leaves
    # themselves: `equinox` routes its arrays through a host callback placed on
    # one device, which would replicate a sharded result (and gather it) under a
    # device mesh (`docs/sharding.md`). Integer leaves (counters, codes) are small
    # and carry the error directly.
    token = jnp.zeros((), jnp.result_type(float))
    token, others = eqx.branched_error_if((token, others), jnp.any(bad), code, messages)
    others = iter(others)
    out = [
        x + token.astype(jnp.result_type(x)) if f else next(others)
        for x, f in zip(leaves, floats, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)
