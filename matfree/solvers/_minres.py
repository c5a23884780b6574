"""Preconditioned MINRES for symmetric (possibly indefinite) operators.

Complex vectors: the operator must be Hermitian; the Lanczos coefficients and
the Givens rotations of the recurrence are then real.
"""

from __future__ import annotations

import jax.numpy as jnp

from matfree.solvers import _common as c


def minres(mv, pc, B, X0, tol, maxiter, *, differentiable, history):
    """Preconditioned MINRES on a block `B` (m, n); see `matfree.solve`.

    The Paige–Saunders recurrence (as in `scipy.sparse.linalg.minres`).
    Without a preconditioner the stopping test uses the recurrence's residual
    norm `phibar` (equal to `|b - A x|` in exact arithmetic). With one,
    `phibar` measures the residual in the `P^{-1}` norm, so the residual
    `b - A x` is updated alongside the iterate (via `A w`) and the stopping
    test uses its Euclidean norm. The preconditioner must be symmetric
    positive definite.

    References
    ----------
    C. C. Paige, M. A. Saunders. Solution of sparse indefinite systems of
    linear equations. SIAM J. Numer. Anal. 12 (1975).
    """
    m = B.shape[0]
    track = pc is not None  # update the residual explicitly
    pc = c.identity if pc is None else pc
    X = jnp.zeros_like(B) if X0 is None else X0
    R = B if X0 is None else B - mv(X0)
    Y = pc(R)
    beta1sq = c.rdot(R, Y)
    beta1 = jnp.sqrt(jnp.maximum(beta1sq, 0))
    res = c.norm(R)
    flag = c.initial_flag(res, tol)
    flag = jnp.where((flag == c.RUNNING) & ~(beta1sq > 0), c.BREAKDOWN, flag)
    zeros = jnp.zeros((m,), beta1.dtype)  # real, also for complex (Hermitian) A
    zero = jnp.zeros_like(B)
    k = jnp.zeros((m,), jnp.int32)
    hist = c.new_history(res, maxiter, history)
    # The per-column scalars in one array: one buffer of the loop state.
    scal = jnp.stack([zeros, beta1, zeros, zeros, beta1, -jnp.ones_like(beta1), zeros])
    vecs = (X, R, R, R, Y, zero, zero, zero, zero) if track else (X, R, R, zero, zero)
    state = (scal, vecs, k, flag, hist)

    def cond(state):
        *_, k, flag, _ = state
        return jnp.any(c.active(flag, k, maxiter))

    def body(state):
        scal, vecs, k, flag, hist = state
        oldb, beta, dbar, epsln, phibar, cs, sn = scal
        if track:
            X, R, r1, r2, Y, W, W2, AW, AW2 = vecs
        else:
            X, r1, r2, W, W2 = vecs
            Y = r2
        act = c.stepping(flag, k, maxiter)
        V = Y * c.col(c.div(jnp.ones_like(beta), beta))
        AV = mv(V)
        Y = AV - c.col(c.div(beta, oldb)) * r1
        alfa = c.rdot(V, Y)
        Y = Y - c.col(c.div(alfa, beta)) * r2
        r1, r2 = r2, Y
        Y = pc(r2)
        oldb = beta
        betasq = c.rdot(r2, Y)
        broke = betasq < 0
        beta = jnp.sqrt(jnp.maximum(betasq, 0))
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = jnp.sqrt(gbar**2 + beta**2)
        broke = broke | (gamma == 0)
        cs = c.div(gbar, gamma)
        sn = c.div(beta, gamma)
        phi = jnp.where(act, cs * phibar, 0)
        phibar = jnp.where(act, sn * phibar, phibar)
        W, W2 = (V - c.col(oldeps) * W2 - c.col(delta) * W) * c.col(c.div(1, gamma)), W
        X = X + c.col(phi) * W
        if track:
            AW, AW2 = (
                (AV - c.col(oldeps) * AW2 - c.col(delta) * AW) * c.col(c.div(1, gamma)),
                AW,
            )
            R = R - c.col(phi) * AW
            res = c.norm(R)
        else:
            res = jnp.abs(phibar)
        k = k + act
        hist = c.record(hist, k, act, res)
        flag = c.update_flag(flag, act, res, tol, broke=broke)
        scal = jnp.stack([oldb, beta, dbar, epsln, phibar, cs, sn])
        vecs = (X, R, r1, r2, Y, W, W2, AW, AW2) if track else (X, r1, r2, W, W2)
        return scal, vecs, k, flag, hist

    _, vecs, k, flag, hist = c.loop(cond, body, state, maxiter, differentiable)
    return c.Raw(vecs[0], k, flag, hist)
