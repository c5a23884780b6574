"""The GP's operators: the kernel matvec `K + noise I` and its preconditioner.

Shared by `log_marginal_likelihood`, `predict` and `sample_prior`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree import operators, precond


def stored_kernel(params, X, *, kernel, rows_per_block, materialize):
    """`K` formed once at `stop_gradient(params)` for `materialize=True`, else `None`."""
    if not materialize:
        return None
    p = jax.lax.stop_gradient(params)
    return operators._kernel_matrix_blocked(
        X, p["lengthscale"], p["variance"], kernel=kernel, rows_per_block=rows_per_block
    )


def kernel_operator(params, X, *, kernel, rows_per_block, mesh=None, K=None):
    """The matvec of `K + noise I`, computed in row blocks (accepts `(n,)` or `(n, m)`).

    With a `mesh`, rows are sharded over its devices (`operators.kernel_matvec`).
    With a stored `K` (`stored_kernel`, at the same `params`), each matvec is a
    product with `K`; gradients to `params` still recompute row blocks.
    """
    if K is not None:
        return operators._stored_kernel_matvec(
            K,
            X,
            params["lengthscale"],
            params["variance"],
            params["noise"],
            kernel=kernel,
            rows_per_block=rows_per_block,
        )
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


def pivots(params, X, *, kernel, rank, K=None):
    """Indices of `rank` greedy pivots of a partial pivoted Cholesky of `K` (no gradient).

    The pivots of `matfree.precond.pivoted_cholesky` (largest remaining
    diagonal of the Schur complement); the indices are needed to rebuild the
    factor differentiably (`factor`). Rows are read from a stored `K` if given.
    """
    p = jax.lax.stop_gradient(params)
    kw = {"kernel": kernel, "lengthscale": p["lengthscale"], "variance": p["variance"]}

    def row_fn(i):
        if K is not None:
            return K[i]
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


def preconditioner(params, X, *, kernel, rank, K=None):
    """`(P, piv)`: the pivoted-Cholesky preconditioner `B B^T + noise I` (no gradient)."""
    p = jax.lax.stop_gradient(params)
    piv = pivots(p, X, kernel=kernel, rank=rank, K=K)
    # Not the `LowRank` of `precond.pivoted_cholesky` (same pivots): `P` must equal
    # `B B^T + noise I` for the differentiable `B = factor(...)`, jitter included,
    # which the Hutchinson control variate subtracts; otherwise the trace estimate is
    # biased by `tr((P_B^{-1} - P^{-1}) dP_B)`. The two factors also differ past the
    # numerical rank (zero columns there vs the jittered solve).
    return precond.LowRank(factor(p, X, piv, kernel=kernel), p["noise"]), piv
