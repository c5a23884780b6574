"""Shared machinery of the Lanczos and Arnoldi iterations.

Both iterations run on a *block* of `m` independent start vectors at once
(shape `(m, n)`): one batched matvec per step, and one VJP of the batched
matvec per adjoint step, so that cotangents of the operator's parameters are
contracted over the block once (not formed per vector and then summed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree._flat import safe_norm

STATUS_OK = 0
STATUS_ZERO_V0 = 1
STATUS_NONFINITE = 2

STATUS_MESSAGES = (
    "ok",
    "the start vector `v0` is zero: the Krylov space is empty (the result is zero).",
    "non-finite values (NaN or inf) in `v0` or in the operator's output.",
)


def batched(fn, params):
    """Apply the flat matvec `fn(x, *params)` to every row of `X` (m, n)."""
    return lambda X: jax.vmap(lambda x: fn(x, *params))(X)


def normalise_start(V0):
    """Return `(Q1, c)` with `Q1 = V0 / |V0|` row-wise; zero rows stay zero."""
    c = safe_norm(V0)
    Q1 = V0 / jnp.where(c > 0, c, 1.0)[:, None]
    return Q1, c


def project_out(basis, u):
    """Remove from `u` (m, n) its components along the rows of `basis` (m, j, n)."""
    coeffs = jnp.einsum("mjn,mn->mj", basis, u)
    return u - jnp.einsum("mj,mjn->mn", coeffs, basis), coeffs


def breakdown_tol(w):
    """Residual norms at or below this (row-wise) count as an invariant subspace."""
    eps = jnp.finfo(w.dtype).eps
    return 100 * eps * safe_norm(w)


def restart_vectors(basis, i):
    """Unit vectors orthogonal to `basis` (m, j, n), deterministic in the step `i`.

    Used to continue the iteration after an invariant subspace was found, so
    that the returned basis stays orthonormal and the small matrix keeps its
    meaning (its eigenvalues remain Ritz values of the operator).
    """
    m, _, n = basis.shape
    key = jax.random.fold_in(jax.random.PRNGKey(1234), i)
    z = jax.random.normal(key, (m, n), dtype=basis.dtype)
    z, _ = project_out(basis, z)
    z, _ = project_out(basis, z)
    z = jax.lax.stop_gradient(z)
    return z / safe_norm(z)[:, None]


def status_of(c, *arrays):
    """Status code per block row: ok, zero start vector, or non-finite values."""
    finite = jnp.isfinite(c)
    for a in arrays:
        finite = finite & jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
    status = jnp.where(c > 0, STATUS_OK, STATUS_ZERO_V0)
    return jnp.where(finite, status, STATUS_NONFINITE).astype(jnp.int32)


def adjoint(fn, params, Q, H, r, c, Qbar, Hbar, rbar, cbar, subdiag_valid):
    """Adjoint of an Arnoldi-type decomposition `A Q^T = Q^T H + r e_k^T`.

    Implements the adjoint system of Krämer et al. (NeurIPS 2024) for the
    constraints `A Q^T - Q^T H - r e_k^T = 0`, `Q Q^T = I`, `Q r = 0` and
    `c q_1 = v0`, solved backwards in `k` steps. Each step calls the VJP of the
    batched matvec once (this yields both `A^T lambda_j` and the parameter
    cotangent), and re-projects the multiplier against the basis, mirroring
    the full re-orthogonalisation of the forward pass.

    The Lanczos adjoint is the special case `H = T` with cotangent
    `Hbar = diag(abar) + subdiag(bbar)`: the orthogonality constraints of a
    symmetric decomposition are redundant, and this choice of multipliers is
    the one that keeps every multiplier's components along the basis fixed.

    Shapes (block of m): Q (m, k, n), H (m, k, k), r (m, n), c (m,),
    subdiag_valid (m, k-1) False where the iteration broke down (restarted).
    Returns `(v0bar, params_bar)`.
    """
    m, k, _ = Q.shape
    dtype = Q.dtype

    def matvec_vjp(X, Lam):
        _, vjp = jax.vjp(lambda X_, *p: batched(fn, p)(X_), X, *params)
        out = vjp(Lam)
        return out[0], out[1:]

    # Breakdown positions carry no gradient through the (non-differentiable)
    # zero sub-diagonal entry: the restart vector is treated as a constant.
    sub = jnp.arange(k - 1)
    Hbar = Hbar.at[:, sub + 1, sub].multiply(subdiag_valid.astype(dtype))

    # Initial multiplier: lambda_k = (I - Q^T Q) rbar + Q^T Hbar[:, k].
    gamma = Hbar[:, :, k - 1] - jnp.einsum("mkn,mn->mk", Q, rbar)
    lam_last = rbar + jnp.einsum("mk,mkn->mn", gamma, Q)
    Lam = jnp.zeros_like(Q).at[:, k - 1].set(lam_last)
    Gam = jnp.zeros((m, k, k), dtype)
    pbar0 = jax.tree_util.tree_map(jnp.zeros_like, list(params))
    v0bar0 = jnp.zeros_like(r)
    idx = jnp.arange(k)

    def body(carry, j):
        Lam, Gam, pbar, v0bar = carry
        q_j = Q[:, j]
        lam_j = Lam[:, j]
        At_lam, pbar_j = matvec_vjp(q_j, lam_j)
        pbar = jax.tree_util.tree_map(jnp.add, pbar, list(pbar_j))

        upper = (idx >= j).astype(dtype)  # H[j, i] for i >= j
        later = (idx > j).astype(dtype)  # Gamma[i, j] for i > j, known already
        z = (
            Qbar[:, j]
            + At_lam
            - jnp.einsum("mi,min->mn", H[:, j, :] * upper, Lam)
            + gamma[:, j, None] * r
            + jnp.einsum("mi,min->mn", Gam[:, j, :] * later, Q)
        )
        lower = (idx <= j).astype(dtype)  # basis vectors q_i, i <= j
        zq = jnp.einsum("min,mn->mi", Q, z) * lower
        z_perp = z - jnp.einsum("mi,min->mn", zq, Q)

        # j >= 1: multiplier lambda_{j-1} and the column j of Gamma.
        jm1 = jnp.maximum(j - 1, 0)
        h = H[:, j, jm1]
        ok = (h != 0) & (j >= 1)
        h_safe = jnp.where(ok, h, 1.0)
        hbar_col = Hbar[:, :, jm1] * lower
        lam_prev = jnp.where(ok[:, None], z_perp / h_safe[:, None], 0.0) + jnp.einsum(
            "mi,min->mn", hbar_col, Q
        )
        gam_col = (jnp.where(ok, h, 0.0)[:, None] * hbar_col - zq) * lower
        write = j >= 1
        Lam = jnp.where(write, Lam.at[:, jm1].set(lam_prev), Lam)
        # Gamma is symmetric: column j is read in later steps as row i < j.
        Gam = jnp.where(write, Gam.at[:, :, j].set(gam_col), Gam)

        # j == 0: the cotangent of v0.
        c_safe = jnp.where(c > 0, c, 1.0)
        v0bar_j = jnp.where(
            (c > 0)[:, None], z_perp / c_safe[:, None] + cbar[:, None] * Q[:, 0], 0.0
        )
        v0bar = jnp.where(j == 0, v0bar_j, v0bar)
        return (Lam, Gam, pbar, v0bar), None

    (_, _, pbar, v0bar), _ = jax.lax.scan(
        body, (Lam, Gam, pbar0, v0bar0), jnp.arange(k - 1, -1, -1)
    )
    return v0bar, pbar
