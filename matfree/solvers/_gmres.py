"""Restarted GMRES(k) with right preconditioning for general square operators."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree.solvers import _common as c


def gmres(mv, pc, B, X0, tol, maxiter, *, differentiable, history, restart):
    """Restarted, right-preconditioned GMRES on a block `B` (m, n).

    Arnoldi with classical Gram–Schmidt applied twice (two matrix products per
    step instead of `j` dot products), Givens rotations for the residual
    estimate after every step, and an early exit inside a cycle. The product
    of the rotations is kept as a small dense orthogonal matrix `Q` of size
    `restart + 1`: a new Hessenberg column is rotated by one small matvec
    `Q h`, the new rotation is one small matrix product, and the residual
    estimate is `beta |Q[j + 1, 0]|` (no per-step loop over earlier
    rotations). One iteration is one Arnoldi step (one matvec); `maxiter`
    bounds their total.
    The residual `b - A x` is recomputed at every restart. Right
    preconditioning keeps the residual the unpreconditioned one.

    References
    ----------
    Y. Saad, M. H. Schultz. GMRES: a generalized minimal residual algorithm for
    solving nonsymmetric linear systems. SIAM J. Sci. Stat. Comput. 7 (1986).
    """
    m, n = B.shape
    kk = restart
    pc = c.identity if pc is None else pc
    X, R, flag, k, hist = c.start(mv, B, X0, tol, maxiter, history)
    rows = jnp.arange(kk + 1)
    eye = jnp.eye(kk + 1, dtype=B.dtype)

    def cycle(X, R, k, flag, hist):
        beta = c.norm(R)
        V = jnp.zeros((m, kk + 1, n), B.dtype).at[:, 0].set(R * c.col(c.div(1, beta)))
        H = jnp.zeros((m, kk + 1, kk), B.dtype)  # rotated: upper triangular
        # The product of the Givens rotations so far, as a small dense matrix.
        Q = jnp.broadcast_to(eye, (m, kk + 1, kk + 1))
        steps = jnp.zeros((m,), jnp.int32)
        inner = (V, H, Q, steps, k, flag, hist, jnp.int32(0))

        def cond(s):
            *_, k, flag, _, j = s
            return (j < kk) & jnp.any(c.active(flag, k, maxiter))

        def body(s):
            V, H, Q, steps, k, flag, hist, j = s
            act = c.stepping(flag, k, maxiter)
            w = mv(pc(V[:, j]))
            # Rows of V past j are zero, so no mask is needed.
            h = jnp.einsum("mkn,mn->mk", jnp.conj(V), w)
            w = w - jnp.einsum("mk,mkn->mn", h, V)
            h2 = jnp.einsum("mkn,mn->mk", jnp.conj(V), w)
            w = w - jnp.einsum("mk,mkn->mn", h2, V)
            hn = c.norm(w)
            V = jax.lax.dynamic_update_index_in_dim(
                V, (w * c.col(c.div(1, hn)))[:, None], j + 1, axis=1
            )
            ej, ej1 = (rows == j).astype(B.dtype), (rows == j + 1).astype(B.dtype)
            h = h + h2 + c.col(hn) * ej1
            # Apply the previous rotations with one small matvec, then the new one.
            h = jnp.einsum("mik,mk->mi", Q, h)
            a, b = h[:, j], h[:, j + 1]
            # The (complex) Givens rotation [[conj c, conj s], [-s, c]] maps
            # (a, b) to (r, 0) with r = |(a, b)| real.
            r = jnp.sqrt(jnp.real(jnp.conj(a) * a + jnp.conj(b) * b))
            cj, sj = c.div(a, r), c.div(b, r)
            cj = jnp.where(r == 0, 1, cj)
            cj, sj = cj[:, None, None], sj[:, None, None]
            P, P1 = ej[:, None] * ej[None, :], ej1[:, None] * ej1[None, :]
            G = (
                eye
                + (jnp.conj(cj) - 1) * P
                + (cj - 1) * P1
                + jnp.conj(sj) * (ej[:, None] * ej1[None, :])
                - sj * (ej1[:, None] * ej[None, :])
            )
            Q = jnp.einsum("mik,mkl->mil", G, Q)
            h = jnp.where(rows < j, h, 0) + c.col(r) * ej
            Hj = jnp.where(c.col(act), h, H[:, :, j])
            H = jax.lax.dynamic_update_index_in_dim(H, Hj[:, :, None], j, axis=2)
            res = jnp.abs(beta * Q[:, j + 1, 0])
            steps = steps + act
            k = k + act
            hist = c.record(hist, k, act, res)
            # r == 0 only if the Krylov space is exhausted without convergence.
            flag = c.update_flag(flag, act, res, tol, broke=r == 0)
            return V, H, Q, steps, k, flag, hist, j + 1

        V, H, Q, steps, k, flag, hist, _ = c.loop(cond, body, inner, kk, differentiable)
        g = c.col(beta) * Q[:, :, 0]
        # Solve the small triangular systems on each column's own steps.
        idx = jnp.arange(kk)
        valid = idx[None, :] < steps[:, None]
        Rm = H[:, :kk, :]
        Rm = jnp.where(valid[:, :, None] & valid[:, None, :], Rm, 0)
        Rm = Rm + jnp.where(valid, 0, 1)[:, :, None] * jnp.eye(kk, dtype=B.dtype)
        diag_ok = jnp.all(jnp.diagonal(Rm, axis1=1, axis2=2) != 0, axis=1)
        Rm = Rm + jnp.where(diag_ok, 0, 1)[:, None, None] * jnp.eye(kk, dtype=B.dtype)
        y = jax.vmap(
            lambda Rm_, g_: jax.scipy.linalg.solve_triangular(Rm_, g_, lower=False)
        )(Rm, jnp.where(valid, g[:, :kk], 0))
        y = jnp.where(c.col(diag_ok), y, 0)
        X = X + pc(jnp.einsum("mk,mkn->mn", y, V[:, :kk]))
        flag = jnp.where(diag_ok | (flag != c.RUNNING), flag, c.BREAKDOWN)
        R = B - mv(X)
        flag = c.stagnated(flag, steps == kk, beta, c.norm(R))
        return X, R, k, flag, hist

    def outer_cond(s):
        _, _, k, flag, _ = s
        return jnp.any(c.active(flag, k, maxiter))

    def outer_body(s):
        return cycle(*s)

    num_cycles = -(-maxiter // kk)
    X, _, k, flag, hist = c.loop(
        outer_cond, outer_body, (X, R, k, flag, hist), num_cycles, differentiable
    )
    return c.Raw(X, k, flag, hist)
