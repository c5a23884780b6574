"""Right-preconditioned BiCGStab for general square operators."""

from __future__ import annotations

import jax.numpy as jnp

from matfree.solvers import _common as c


def bicgstab(mv, pc, B, X0, tol, maxiter, *, differentiable, history):
    """Right-preconditioned BiCGStab on a block `B` (m, n); see `matfree.solve`.

    Short recurrences, two matvecs per iteration. Stops after the half step
    when `|s| <= tol`. Reports a breakdown when `rho = r_0^T r` or
    `r_0^T A p` vanish, or when the stabilisation step stagnates (`omega = 0`).

    References
    ----------
    H. A. van der Vorst. Bi-CGSTAB: a fast and smoothly converging variant of
    Bi-CG for the solution of nonsymmetric linear systems. SIAM J. Sci. Stat.
    Comput. 13 (1992).
    """
    m = B.shape[0]
    pc = c.identity if pc is None else pc
    X, R, flag, k, hist = c.start(mv, B, X0, tol, maxiter, history)
    ones = jnp.ones((m,), B.dtype)
    state = (X, R, R, jnp.zeros_like(B), jnp.zeros_like(B), ones, ones, ones, k, flag, hist)

    def cond(state):
        *_, k, flag, _ = state
        return jnp.any(c.active(flag, k, maxiter))

    def body(state):
        X, R, Rhat, P, V, rho, alpha, omega, k, flag, hist = state
        act = c.stepping(flag, k, maxiter)
        rho_new = c.dot(Rhat, R)
        beta = c.div(rho_new, rho) * c.div(alpha, omega)
        P = R + c.col(beta) * (P - c.col(omega) * V)
        Phat = pc(P)
        V = mv(Phat)
        rv = c.dot(Rhat, V)
        alpha = c.div(rho_new, rv)
        S = R - c.col(alpha) * V
        half = c.norm(S) <= tol
        Shat = pc(S)
        T = mv(Shat)
        omega = jnp.where(half, 0, c.div(c.dot(T, S), c.dot(T, T)))
        a_eff = jnp.where(act, alpha, 0)
        o_eff = jnp.where(act, omega, 0)
        X = X + c.col(a_eff) * Phat + c.col(o_eff) * Shat
        R = jnp.where(c.col(act), S - c.col(omega) * T, R)
        res = c.norm(R)
        broke = (rho_new == 0) | (rv == 0) | ((omega == 0) & ~half)
        k = k + act
        hist = c.record(hist, k, act, res)
        flag = c.update_flag(flag, act, res, tol, broke=broke)
        # Keep the recurrence scalars of stopped columns finite and inert.
        omega = jnp.where(omega == 0, 1, omega)
        return X, R, Rhat, P, V, rho_new, alpha, omega, k, flag, hist

    X, *_, k, flag, hist = c.loop(cond, body, state, maxiter, differentiable)
    return c.Raw(X, k, flag, hist)
