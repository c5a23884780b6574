"""The GP's operators: the kernel matvec `K + noise I` and its preconditioner.

Shared by `log_marginal_likelihood`, `predict` and `sample_prior`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree import operators, precond


def kernel_operator(params, X, *, kernel, rows_per_block, mesh=None):
    """The matvec of `K + noise I`, computed in row blocks (accepts `(n,)` or `(n, m)`).

    With a `mesh`, rows are sharded over its devices (`operators.kernel_matvec`).
    """
    return operators.kernel_matvec(
        X,
        kernel=kernel,
        lengthscale=params["lengthscale"],
        variance=params["variance"],
        noise=params["noise"],
        rows_per_block=rows_per_block,
        mesh=mesh,
    )


def matmat_operator(matvec):
    """`matvec` whose `vmap` over vectors is one matmat on columns (no autodiff).

    The Krylov methods `vmap` the matvec over a block of vectors `(m, n)`;
    the kernel matvec is faster on columns `(n, m)`. Used only where no
    gradient flows (`jax.custom_batching.custom_vmap` has no reverse mode).
    """

    @jax.custom_batching.custom_vmap
    def mv(v):
        return matvec(v)

    @mv.def_vmap
    def _rule(axis_size, in_batched, v):
        del axis_size, in_batched
        return matvec(v.T).T, True

    return mv


def pivots(params, X, *, kernel, rank):
    """Indices of `rank` greedy pivots of a partial pivoted Cholesky of `K` (no gradient).

    The pivots of `matfree.precond.pivoted_cholesky` (largest remaining
    diagonal of the Schur complement); the indices are needed to rebuild the
    factor differentiably (`factor`).
    """
    p = jax.lax.stop_gradient(params)
    kw = {"kernel": kernel, "lengthscale": p["lengthscale"], "variance": p["variance"]}

    def row_fn(i):
        return operators.kernel_matrix(X[i][None], X, **kw)[0]

    diagonal = p["variance"] * jnp.ones(X.shape[0], X.dtype)
    return precond.pivoted_cholesky(row_fn, diagonal, rank=rank, shift=p["noise"]).pivots


def factor(params, X, piv, *, kernel):
    """`B` (n, k) with `B B^T = K[:, S] (K[S, S] + j I)^{-1} K[S, :]` for pivots `S`.

    Differentiable in `params`; `j` is a small jitter relative to the variance.
    """
    kw = {
        "kernel": kernel,
        "lengthscale": params["lengthscale"],
        "variance": params["variance"],
    }
    XS = X[piv]
    jitter = (1e-8 if X.dtype == jnp.float64 else 1e-4) * params["variance"]
    C = jnp.linalg.cholesky(
        operators.kernel_matrix(XS, XS, **kw) + jitter * jnp.eye(len(piv), dtype=X.dtype)
    )
    KXS = operators.kernel_matrix(X, XS, **kw)
    return jax.scipy.linalg.solve_triangular(C, KXS.T, lower=True).T


def preconditioner(params, X, *, kernel, rank):
    """`(P, piv)`: the pivoted-Cholesky preconditioner `B B^T + noise I` (no gradient)."""
    p = jax.lax.stop_gradient(params)
    piv = pivots(p, X, kernel=kernel, rank=rank)
    # Not the `LowRank` of `precond.pivoted_cholesky` (same pivots): `P` must equal
    # `B B^T + noise I` for the differentiable `B = factor(...)`, jitter included,
    # which the Hutchinson control variate subtracts; otherwise the trace estimate is
    # biased by `tr((P_B^{-1} - P^{-1}) dP_B)`. The two factors also differ past the
    # numerical rank (zero columns there vs the jittered solve).
    return precond.LowRank(factor(p, X, piv, kernel=kernel), p["noise"]), piv
