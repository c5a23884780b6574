"""Preconditioned conjugate gradients for symmetric positive definite operators.

Complex vectors: the operator (and preconditioner) must be Hermitian positive
definite; the inner products conjugate their first argument and the step
lengths are real.
"""

from __future__ import annotations

import jax.numpy as jnp

from matfree.solvers import _common as c


def cg(mv, pc, B, X0, tol, maxiter, *, differentiable, history):
    """Preconditioned CG on a block `B` (m, n); see `matfree.solve`.

    Stops a column when `|r| <= tol`, and reports non-positive curvature
    `p^T A p <= 0` (an indefinite operator) instead of stepping.

    References
    ----------
    M. R. Hestenes, E. Stiefel. Methods of conjugate gradients for solving
    linear systems. J. Res. Nat. Bur. Standards 49 (1952).
    """
    if pc is None and B.shape[0] == 1:
        return _cg_one(mv, B, X0, tol, maxiter, differentiable, history)
    X, R, flag, k, hist = c.start(mv, B, X0, tol, maxiter, history)
    Z = R if pc is None else pc(R)
    rz = c.rdot(R, Z)
    state = (X, R, Z, rz, k, flag, hist)

    def cond(state):
        *_, k, flag, _ = state
        return jnp.any(c.active(flag, k, maxiter))

    def body(state):
        X, R, P, rz, k, flag, hist = state
        act = c.stepping(flag, k, maxiter)
        AP = mv(P)
        pAp = c.rdot(P, AP)
        indefinite = act & ~(pAp > 0)
        step = act & ~indefinite
        alpha = jnp.where(step, c.div(rz, pAp), 0)
        X = X + c.col(alpha) * P
        R = R - c.col(alpha) * AP
        if pc is None:
            Z = R
            rz_new = c.rdot(R, R)
            res = jnp.sqrt(rz_new)
            broke = None  # r^T r = 0 means converged
        else:
            Z = pc(R)
            rz_new = c.rdot(R, Z)
            res = c.norm(R)
            # A non-SPD preconditioner shows as r^T M r <= 0 for r != 0.
            broke = ~(rz_new > 0)
        beta = jnp.where(step, c.div(rz_new, rz), 0)
        P = Z + c.col(beta) * P
        # Unmasked: a column that does not step keeps its `R` (so `rz_new` is
        # its old `rz`) or stops (indefinite), and its `beta` is masked above.
        rz = rz_new
        k = k + act
        hist = c.record(hist, k, act, res)
        flag = c.update_flag(flag, act, res, tol, broke=broke, indefinite=indefinite)
        return X, R, P, rz, k, flag, hist

    X, *_, k, flag, hist = c.loop(cond, body, state, maxiter, differentiable)
    return c.Raw(X, k, flag, hist)


def _cg_one(mv, B, X0, tol, maxiter, differentiable, history):
    """Unpreconditioned CG on one column: `cg` with one kernel less per step.

    The same arithmetic and status as `cg`. The loop body runs only while the
    column is active, so nothing is masked; and instead of a status updated
    in every step, the state keeps the last `p^T A p` next to `r^T r`, and
    `status` derives the flag from them, inside the loop condition and once
    at the end (before the first step: the flag of `c.start`).
    """
    X, R, flag0, k, hist = c.start(mv, B, X0, tol, maxiter, history)
    rr = c.rdot(R, R)
    pAp = jnp.ones_like(rr)  # positive: no indefinite step yet

    def status(rr, pAp, k):
        flag = c.update_flag(flag0, True, jnp.sqrt(rr), tol, indefinite=~(pAp > 0))
        return jnp.where(k == 0, flag0, flag)

    def cond(state):
        _, _, _, rr, pAp, k, _ = state
        return jnp.any(c.active(status(rr, pAp, k), k, maxiter))

    def body(state):
        X, R, P, rr, _, k, hist = state
        AP = mv(P)
        pAp = c.rdot(P, AP)
        alpha = jnp.where(pAp > 0, c.div(rr, pAp), 0)
        X = X + c.col(alpha) * P
        R = R - c.col(alpha) * AP
        rr_new = c.rdot(R, R)
        P = R + c.col(jnp.where(pAp > 0, c.div(rr_new, rr), 0)) * P
        k = k + 1
        hist = c.record(hist, k, True, jnp.sqrt(rr_new))
        return X, R, P, rr_new, pAp, k, hist

    state = (X, R, R, rr, pAp, k, hist)
    X, _, _, rr, pAp, k, hist = c.loop(cond, body, state, maxiter, differentiable)
    return c.Raw(X, k, status(rr, pAp, k), hist)
