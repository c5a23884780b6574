"""Shared pieces of the matrix-function actions: the result type, run-time checks.

Every action (`funm_action`, `exp_action`, `sqrt_action`) returns a
`FunmResult`. Run-time problems are reported in its `status`
(`matfree.status` codes), and, by default (`throw=True`), raised via
`matfree.status.error_if` whichever field is read -- under `jit` too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from matfree import status as _status
from matfree._flat import safe_norm, vdot

GRADIENTS = ("adjoint", "autodiff")


class FunmResult(NamedTuple):
    """The result of a matrix-function action (`funm_action`, `exp_action`, `sqrt_action`).

    Attributes
    ----------
    value
        `f(A) v`, like `v` (NaN where it could not be computed, e.g. the
        square root of an operator that is not positive definite).
    status
        A `matfree.status.Status` code: `OK`; `NOT_SYMMETRIC` (`symmetric=True`
        but the operator is evidently not symmetric); `NONFINITE` (NaN or inf
        in `v`, the operator's output or the result); `NOT_POSITIVE_DEFINITE`
        (`sqrt_action`: a Ritz value `<= 0`); `ILL_CONDITIONED`
        (`funm_action(symmetric=False)`: ill-conditioned eigenbasis of the
        Hessenberg matrix); `NOT_CONVERGED` (`exp_action(tol=...)` did not
        reach `tol`); `INVALID_INPUT` (`exp_action`: a traced `t < 0`).
        `matfree.status.message(status)` explains each code.
    error_estimate
        `exp_action`: a-posteriori estimate of the relative error
        `|approx - expm(tA) v| / |v|` (the sum over substeps of Saad's
        estimate). `None` for `funm_action` and `sqrt_action`, which have no
        estimate.
    num_substeps
        Number of Krylov projections (substeps) that were run (`1` for
        `funm_action` and `sqrt_action`).
    num_matvecs
        Number of operator applications in the forward pass.
    """

    value: Any
    status: jax.Array
    error_estimate: jax.Array | None
    num_substeps: jax.Array
    num_matvecs: jax.Array


def finish(result: FunmResult, *, throw: bool) -> FunmResult:
    """With `throw`, attach the run-time check to every field of `result`."""
    if throw:
        return _status.error_if(result, result.status)
    return result


def decompose(method, matvec, v, **kwargs):
    """Run `method` (`decomp.lanczos` or `decomp.arnoldi`) on `v`; return `(res, |v|)`.

    A zero `v` has an empty Krylov space (`decomp` reports NaN and
    `ZERO_VECTOR`), but `f(A) 0 = 0` needs none: a unit vector stands in and
    the caller multiplies by `|v| = 0`. Use the returned norm, not
    `res.init_norm`.
    """
    # A NaN or inf in v is no zero vector: |v| = NaN makes the result NaN
    # (status NONFINITE); `safe_norm` alone would read it as 0.
    c = jnp.where(jnp.all(jnp.isfinite(v)), safe_norm(v), jnp.nan)
    e1 = jnp.zeros_like(v).at[0].set(1.0)
    res = method(matvec, jnp.where(c > 0, v, e1), throw=False, **kwargs)
    return res, c


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
    defect = jnp.abs(vdot(x, Ay) - nAx)  # x^H A y for complex (Hermitian) A
    scale = jnp.maximum(nAx, safe_norm(Ay))
    return defect > jnp.sqrt(jnp.finfo(x.dtype).eps) * scale
