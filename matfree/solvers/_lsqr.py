"""LSQR for least-squares problems `min |A x - b|^2 + damp^2 |x|^2`."""

from __future__ import annotations

import jax.numpy as jnp

from matfree.solvers import _common as c


def lsqr(mv, mvT, B, X0, tol, maxiter, *, differentiable, history, rtol, damp, like):
    """LSQR on a block `B` (m, n_rows) with `A: (n,) -> (n_rows,)`.

    Golub–Kahan bidiagonalisation with the Paige–Saunders updates, as in
    `scipy.sparse.linalg.lsqr`. A column stops when the residual is small
    (`|r| <= tol`, a consistent system) or when the normal-equations residual
    is small relative to the residual (`|A^T r - damp^2 x| <= rtol |A| |r|`,
    with the running estimate of the Frobenius norm `|A|`). The residual `r`
    includes the damping term. `like` is the flat initial guess (m, n).
    `mvT` is the adjoint `A^H` (the transpose for real `A`).

    References
    ----------
    C. C. Paige, M. A. Saunders. LSQR: an algorithm for sparse linear equations
    and sparse least squares. ACM Trans. Math. Softw. 8 (1982).
    """
    m = B.shape[0]
    X = jnp.zeros_like(like) if X0 is None else X0
    U = B if X0 is None else B - mv(X0)
    beta = c.norm(U)
    U = U * c.col(c.div(1, beta))
    V = mvT(U)
    alpha = c.norm(V)
    V = V * c.col(c.div(1, alpha))
    res = beta
    flag = c.initial_flag(res, tol)
    # A^T b = 0: x = 0 solves the least-squares problem.
    flag = jnp.where((flag == c.RUNNING) & (alpha == 0), c.CONVERGED, flag)
    zeros = jnp.zeros((m,), beta.dtype)  # real: the bidiagonal is real for complex A
    k = jnp.zeros((m,), jnp.int32)
    hist = c.new_history(res, maxiter, history)
    scal = (alpha, beta, alpha, zeros, zeros)  # alpha, phibar, rhobar, anorm2, res2
    state = (X, U, V, V, scal, k, flag, hist)
    damp2 = damp**2

    def cond(state):
        *_, k, flag, _ = state
        return jnp.any(c.active(flag, k, maxiter))

    def body(state):
        X, U, V, W, scal, k, flag, hist = state
        alpha, phibar, rhobar, anorm2, res2 = scal
        act = c.stepping(flag, k, maxiter)
        U = mv(V) - c.col(alpha) * U
        beta = c.norm(U)
        U = U * c.col(c.div(1, beta))
        anorm2 = anorm2 + alpha**2 + beta**2 + damp2
        V = mvT(U) - c.col(beta) * V
        alpha = c.norm(V)
        V = V * c.col(c.div(1, alpha))
        rhobar1 = jnp.sqrt(rhobar**2 + damp2)
        cs1 = c.div(rhobar, rhobar1)
        sn1 = c.div(damp, rhobar1)
        psi = sn1 * phibar
        phibar = cs1 * phibar
        rho = jnp.sqrt(rhobar1**2 + beta**2)
        cs = c.div(rhobar1, rho)
        sn = c.div(beta, rho)
        theta = sn * alpha
        rhobar = -cs * alpha
        phi = cs * phibar
        phibar = sn * phibar
        step = jnp.where(act, c.div(phi, rho), 0)
        X = X + c.col(step) * W
        W = V - c.col(c.div(theta, rho)) * W
        res2 = res2 + psi**2
        res = jnp.sqrt(phibar**2 + res2)
        arnorm = alpha * jnp.abs(sn * phi)
        small = arnorm <= rtol * jnp.sqrt(anorm2) * res
        k = k + act
        hist = c.record(hist, k, act, res)
        flag = c.update_flag(flag, act, jnp.where(small, 0, res), tol)
        flag = jnp.where(act & ~jnp.isfinite(res), c.NONFINITE, flag)
        scal = (alpha, phibar, rhobar, anorm2, res2)
        return X, U, V, W, scal, k, flag, hist

    X, *_, k, flag, hist = c.loop(cond, body, state, maxiter, differentiable)
    return c.Raw(X, k, flag, hist)
