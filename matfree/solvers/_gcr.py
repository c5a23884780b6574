"""Restarted generalised conjugate residual method GCR(k)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree.solvers import _common as c


def gcr(mv, pc, B, X0, tol, maxiter, *, differentiable, history, restart):
    """Restarted, preconditioned GCR on a block `B` (m, n); see `matfree.solve`.

    Keeps up to `restart` search directions `p_i` and their images
    `q_i = A p_i`, orthonormal in the `q`s (Gram–Schmidt applied twice), so
    that every step minimises `|b - A x|` over the stored directions. After
    `restart` steps the directions are dropped (restart). The preconditioner
    may change from step to step (flexible), e.g. an inner iteration.

    References
    ----------
    S. C. Eisenstat, H. C. Elman, M. H. Schultz. Variational iterative methods
    for nonsymmetric systems of linear equations. SIAM J. Numer. Anal. 20
    (1983).
    """
    m, n = B.shape
    kk = restart
    pc = c.identity if pc is None else pc
    X, R, flag, k, hist = c.start(mv, B, X0, tol, maxiter, history)
    rows = jnp.arange(kk)
    Pb = jnp.zeros((m, kk, n), B.dtype)
    Qb = jnp.zeros((m, kk, n), B.dtype)
    # The residual norm at the start of the current cycle (for stagnation).
    state = (X, R, Pb, Qb, jnp.int32(0), k, flag, hist, c.norm(R))

    def cond(state):
        *_, k, flag, _, _ = state
        return jnp.any(c.active(flag, k, maxiter))

    def body(state):
        X, R, Pb, Qb, j, k, flag, hist, res0 = state
        act = c.stepping(flag, k, maxiter)
        U = pc(R)
        C = mv(U)
        # Stale directions of the previous cycle (rows >= j) are masked out,
        # so a restart costs nothing. Gram-Schmidt twice on the `q`s; the `p`s
        # follow with one combined update.
        mask = (rows < j).astype(B.dtype)
        h = jnp.einsum("mkn,mn->mk", jnp.conj(Qb), C) * mask
        C = C - jnp.einsum("mk,mkn->mn", h, Qb)
        h2 = jnp.einsum("mkn,mn->mk", jnp.conj(Qb), C) * mask
        C = C - jnp.einsum("mk,mkn->mn", h2, Qb)
        U = U - jnp.einsum("mk,mkn->mn", h + h2, Pb)
        nc = c.norm(C)
        inv = c.div(1, nc)
        Q = C * c.col(inv)
        P = U * c.col(inv)
        alpha = jnp.where(act, c.dot(Q, R), 0)
        X = X + c.col(alpha) * P
        R = R - c.col(alpha) * Q
        res = c.norm(R)
        Pb = jax.lax.dynamic_update_index_in_dim(Pb, P[:, None], j, axis=1)
        Qb = jax.lax.dynamic_update_index_in_dim(Qb, Q[:, None], j, axis=1)
        k = k + act
        hist = c.record(hist, k, act, res)
        # `A u` in the span of the stored images: the residual cannot move in
        # this cycle any more (GCR stagnates on operators whose symmetric part
        # is indefinite, e.g. [[0, 1], [1, 0]]).
        flag = c.update_flag(flag, act, res, tol)
        flag = jnp.where(act & (nc == 0) & (flag == c.RUNNING), c.STAGNATED, flag)
        end = j + 1 == kk
        flag = jnp.where(act, c.stagnated(flag, end, res0, res), flag)
        res0 = jnp.where(end, res, res0)
        j = jnp.where(end, 0, j + 1)
        return X, R, Pb, Qb, j, k, flag, hist, res0

    X, *_, k, flag, hist, _ = c.loop(cond, body, state, maxiter, differentiable)
    return c.Raw(X, k, flag, hist)
