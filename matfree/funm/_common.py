"""Shared pieces of the matrix-function actions: run-time reporting, checks.

Every action (`funm_action`, `exp_action`, `sqrt_action`) returns a plain
vector like `v`. Run-time problems are reported in one way: a `FunmInfo`
(returned with `return_info=True`) whose `status` is nonzero, and, by default
(`throw=True`), an error raised via `equinox.error_if` -- under `jit` too.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from matfree._flat import safe_norm

STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_NOT_POSITIVE = 2
STATUS_NOT_SYMMETRIC = 3
STATUS_ILL_CONDITIONED = 4
STATUS_NOT_CONVERGED = 5
STATUS_NEGATIVE_TIME = 6

STATUS_MESSAGES = (
    "ok",
    "non-finite values (NaN or inf) in `v`, in the operator's output, or in "
    "f of the small projected matrix. Check the inputs; for `exp_action` with "
    "a large t*|A| increase `num_substeps`.",
    "the operator has non-positive Ritz values, so it is not positive definite "
    "and its square root is not defined. `sqrt_action` needs a symmetric "
    "positive definite operator (add a shift, or check the matvec).",
    "`symmetric=True` but the operator is not symmetric (x^T A y != y^T A x "
    "for two Krylov vectors). Pass `symmetric=False` (Arnoldi) or fix the matvec.",
    "the projected Hessenberg matrix has an ill-conditioned (nearly defective) "
    "eigenbasis, so f(H) by diagonalisation is inaccurate. Use `exp_action` for "
    "the exponential, `symmetric=True` for symmetric operators, or reduce `depth`.",
    "`exp_action` did not reach `tol` within `num_substeps` steps of `depth`: "
    "increase `num_substeps` or `depth` (see `FunmInfo.error_estimate`).",
    "`t` is negative; `exp_action` needs t >= 0 (for exp(-sA) v pass the matvec of -A).",
)


class FunmInfo(NamedTuple):
    """Run-time diagnostics of a matrix-function action.

    Attributes
    ----------
    status
        `0` ok. Otherwise the first problem found: `1` non-finite values;
        `2` non-positive Ritz values in `sqrt_action`; `3` `symmetric=True`
        but the operator is not symmetric; `4` ill-conditioned eigenbasis of
        the Hessenberg matrix (general `f`, `symmetric=False`); `5`
        `exp_action` did not reach `tol`; `6` negative `t`.
        `matfree.funm.STATUS_MESSAGES[status]` explains each code.
    error_estimate
        A-posteriori estimate of the relative error `|approx - f(A) v| / |v|`
        (`exp_action`: the sum over substeps of Saad's estimate; NaN where no
        estimate is available, i.e. in `funm_action` and `sqrt_action`).
    num_substeps
        Number of Krylov steps (substeps) that were run (`1` for
        `funm_action` and `sqrt_action`).
    num_matvecs
        Number of operator applications in the forward pass.
    """

    status: jax.Array
    error_estimate: jax.Array
    num_substeps: jax.Array
    num_matvecs: jax.Array


def finish(value, info: FunmInfo, *, return_info: bool, throw: bool):
    """Attach the run-time check to `value` and return what the caller asked for."""
    if throw:
        status = info.status
        value = jax.tree_util.tree_map(
            lambda x: eqx.branched_error_if(x, status != 0, status, STATUS_MESSAGES),
            value,
        )
    return (value, info) if return_info else value


def first_problem(*conditions):
    """Status code of the first true `(flag, code)` pair, else `STATUS_OK`."""
    status = jnp.int32(STATUS_OK)
    for flag, code in reversed(conditions):
        status = jnp.where(flag, jnp.int32(code), status)
    return status


def all_finite(*arrays):
    """True if every entry of every array (and pytree leaf) is finite."""
    ok = jnp.bool_(True)
    for a in jax.tree_util.tree_leaves(arrays):
        ok = ok & jnp.all(jnp.isfinite(a))
    return ok


def symmetry_defect(op, x):
    """Cheap symmetry check with two matvecs, `|x^T A y - y^T A x|`, relative.

    `x = v / |v|`, `y = A x / |A x|`. Returns a boolean: True if the operator is
    evidently not symmetric. Detects generic non-symmetry; an `x` that is an
    eigenvector of `A` makes the check vacuous (then it reports symmetric).
    """
    tiny = jnp.finfo(x.dtype).tiny
    x = jax.lax.stop_gradient(x)
    x = x / jnp.maximum(safe_norm(x), tiny)
    params = [jax.lax.stop_gradient(p) for p in op.params]
    Ax = op.fn(x, *params)
    nAx = safe_norm(Ax)
    Ay = op.fn(Ax / jnp.maximum(nAx, tiny), *params)
    defect = jnp.abs(jnp.dot(x, Ay) - nAx)
    scale = jnp.maximum(nAx, safe_norm(Ay))
    return defect > jnp.sqrt(jnp.finfo(x.dtype).eps) * scale
