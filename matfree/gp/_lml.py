r"""The log marginal likelihood of a GP: matrix-free and exact (Cholesky)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from matfree import _checks, operators, precond, slq, solvers
from matfree.gp import _params

METHODS = ("iterative", "cholesky")
GRADIENTS = ("hutchinson", "adjoint")


class LMLInfo(NamedTuple):
    """Diagnostics of `log_marginal_likelihood(..., return_info=True)`.

    Attributes
    ----------
    cg_converged
        Whether the CG solve with `y` converged (all probe solves too, for
        `gradient="hutchinson"`).
    cg_num_steps
        The largest number of CG iterations over the right-hand sides.
    logdet_std_error
        Standard error of the stochastic log-determinant (over probes).
    status
        `0` ok; `1` CG did not converge; `2` the log-determinant failed
        (non-positive Ritz values or non-finite values).
    """

    cg_converged: jax.Array
    cg_num_steps: jax.Array
    logdet_std_error: jax.Array
    status: jax.Array


def kernel_operator(params, X, *, kernel, block_size):
    """The matvec of `K + noise I`, blocked (accepts `(n,)` or `(n, m)`)."""
    return operators.kernel_matvec(
        X,
        kernel=kernel,
        lengthscale=params["lengthscale"],
        variance=params["variance"],
        noise=params["noise"],
        block_size=block_size,
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
    _, piv = precond.pivoted_cholesky(
        row_fn, diagonal, rank, p["noise"], return_pivots=True
    )
    return piv


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
    # which the Hutchinson control variate (`_hutchinson`) subtracts; otherwise the
    # trace estimate is biased by `tr((P_B^{-1} - P^{-1}) dP_B)`. The two factors also
    # differ past the numerical rank (zero columns there vs the jittered solve).
    B = factor(p, X, piv, kernel=kernel)
    U, s, _ = jnp.linalg.svd(B, full_matrices=False)
    return precond.LowRank(U, s**2 + p["noise"], p["noise"]), piv


def _logdet_lowrank(B, noise):
    """`log det(B B^T + noise I)` for `B` (n, k), differentiable."""
    n, k = B.shape
    M = B.T @ B + noise * jnp.eye(k, dtype=B.dtype)
    return 2 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(M)))) + (n - k) * jnp.log(noise)


def log_marginal_likelihood(
    params,
    X,
    y,
    *,
    key=None,
    kernel: str = "rbf",
    method: str = "iterative",
    gradient: str = "hutchinson",
    num_probes: int = 16,
    depth: int = 20,
    precond_rank: int = 100,
    rtol=1e-3,
    maxiter: int | None = None,
    block_size: int = 128,
    return_info: bool = False,
):
    r"""Log marginal likelihood `log N(y | 0, K + noise I)` of a GP, and its gradient.

    `-1/2 (y^T (K + s I)^{-1} y + log det(K + s I) + n log 2 pi)` for the
    kernel matrix `K` of `X` and the noise variance `s`. The iterative path
    never forms `K`: it solves with preconditioned CG (`matfree.solve`, a
    partial pivoted Cholesky preconditioner of rank `precond_rank`) and
    estimates the log-determinant by stochastic Lanczos quadrature
    (`matfree.logdet`, same preconditioner, `num_probes` Rademacher probes of
    depth `depth`). Differentiable w.r.t. `params` and `y` (reverse mode).

    Parameters
    ----------
    params
        `{"lengthscale": scalar or (d,), "variance": scalar, "noise": scalar}`,
        positive, in natural units.
    X, y
        Inputs `(n, d)` and targets `(n,)`, finite, of one floating dtype.
    key
        A `jax.random` key for the probes (iterative path only).
    kernel
        `"rbf"`, `"matern12"`, `"matern32"` or `"matern52"`.
    method
        `"iterative"` (matrix-free, memory `O(block_size n + n (num_probes
        + depth))`) or `"cholesky"` (exact, dense `O(n^2)` memory, the
        reference for small `n`).
    gradient
        How the iterative path differentiates.
        `"hutchinson"` (default): one batched CG solve of `K [y, z_1..z_m]`
        with probes `z_i ~ N(0, P)` (`P` the preconditioner), and the
        gradient from `y^T K^{-1} dK K^{-1} y` and Hutchinson's estimate of
        `tr(K^{-1} dK) ≈ mean_i (K^{-1} z_i)^T dK P^{-1} z_i` (Gardner et al.
        2018), which costs one VJP of the kernel matmat; the log-determinant
        value comes from `matfree.logdet` without differentiation.
        `"adjoint"`: differentiate through `matfree.solve` (implicit, one
        adjoint CG solve) and `matfree.logdet` (Lanczos adjoint): about
        `depth` more kernel VJPs, more accurate gradients of the SLQ
        estimate itself. Both are unbiased for the exact gradient up to the
        CG and quadrature errors.
    num_probes, depth
        Probes and Lanczos depth of the log-determinant (static ints).
    precond_rank
        Rank of the pivoted Cholesky preconditioner (`0`: none).
    rtol
        Relative CG tolerance. The quadratic term's error is second order
        in the CG error (the value uses `2 a^T y - a^T K a`, exact at the
        solution `a`).
    maxiter
        CG iteration bound (default `min(n, 1000)`).
    block_size
        Rows per kernel block (memory `O(block_size n)`); results do not
        depend on it beyond rounding.
    return_info
        Also return an `LMLInfo` (CG convergence, SLQ standard error).

    Returns
    -------
    value
        The log marginal likelihood (a scalar); with `return_info=True` the
        tuple `(value, info)`.

    Notes
    -----
    The preconditioner is built from `stop_gradient(params)`: the exact
    value and gradient do not depend on it, and the estimators stay
    unbiased, so no gradient flows through the pivoted Cholesky.

    References
    ----------
    J. Gardner, G. Pleiss, D. Bindel, K. Weinberger, A. Wilson. GPyTorch:
    blackbox matrix-matrix Gaussian process inference with GPU acceleration.
    NeurIPS 2018.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jnp.linspace(0, 1, 50)[:, None]
    >>> y = jnp.sin(6 * X[:, 0])
    >>> p = {"lengthscale": 0.3, "variance": 1.0, "noise": 0.01}
    >>> exact = log_marginal_likelihood(p, X, y, method="cholesky")
    >>> lml = jax.jit(lambda p, key: log_marginal_likelihood(
    ...     p, X, y, key=key, num_probes=8, depth=10, precond_rank=20))
    >>> est = lml(p, jax.random.PRNGKey(0))
    >>> bool(jnp.abs(est - exact) < 0.5)
    True
    """
    kernel = _params.check_kernel(kernel)
    if method not in METHODS:
        msg = f"`method` must be one of {METHODS}; got method={method!r}."
        raise ValueError(msg)
    if gradient not in GRADIENTS:
        msg = f"`gradient` must be one of {GRADIENTS}; got gradient={gradient!r}."
        raise ValueError(msg)
    X, y = _params.check_data(X, y)
    n, d = X.shape
    params = _params.check_params(params, d, X.dtype)
    const = n * math.log(2 * math.pi)
    if method == "cholesky":
        value = _dense_lml(params, X, y, kernel) - const / 2
        if return_info:
            zero = jnp.zeros((), X.dtype)
            info = LMLInfo(jnp.array(True), jnp.array(0), zero, jnp.array(0, jnp.int32))
            return value, info
        return value
    if key is None:
        msg = "`key` is required for `method='iterative'` (the probes are random)."
        raise ValueError(msg)
    num_probes = _checks.check_int(num_probes, "num_probes")
    depth = _checks.check_depth(depth, n)
    precond_rank = _checks.check_int(precond_rank, "precond_rank", minimum=0, maximum=n)
    block_size = _checks.check_int(block_size, "block_size")
    maxiter = min(n, 1000) if maxiter is None else _checks.check_int(maxiter, "maxiter")
    rtol = jnp.asarray(rtol, X.dtype)
    P, piv = None, None
    if precond_rank:
        P, piv = preconditioner(params, X, kernel=kernel, rank=precond_rank)
    key_solve, key_logdet = jax.random.split(key)
    args = (params, X, y, kernel, block_size, P, rtol, maxiter)
    if gradient == "hutchinson":
        quad, trace_term, sol = _hutchinson(*args, key_solve, num_probes, piv)
        ld_params = jax.lax.stop_gradient(params)
    else:
        quad, sol = _adjoint_quad(*args)
        trace_term = 0.0
        ld_params = params
    matvec = kernel_operator(ld_params, X, kernel=kernel, block_size=block_size)
    if gradient == "hutchinson":
        matvec = matmat_operator(matvec)
    ld = slq.logdet(
        matvec,
        y,
        key=key_logdet,
        depth=depth,
        num_probes=num_probes,
        precond=P,
        throw=False,
    )
    logdet = ld.value
    if gradient == "hutchinson":
        logdet = jax.lax.stop_gradient(logdet)
    value = -(quad + logdet + trace_term + const) / 2
    if not return_info:
        return value
    converged = jnp.all(sol.converged)
    status = jnp.where(converged, 0, 1)
    status = jnp.where(ld.status != 0, 2, status).astype(jnp.int32)
    info = LMLInfo(converged, jnp.max(sol.num_steps), ld.std_error, status)
    return value, info


def _dense_lml(params, X, y, kernel):
    K = operators.kernel_matrix(
        X,
        X,
        kernel=kernel,
        lengthscale=params["lengthscale"],
        variance=params["variance"],
    )
    L = jnp.linalg.cholesky(K + params["noise"] * jnp.eye(X.shape[0], dtype=X.dtype))
    a = jax.scipy.linalg.solve_triangular(L, y, lower=True)
    return -(a @ a) / 2 - jnp.sum(jnp.log(jnp.diag(L)))


def _hutchinson(params, X, y, kernel, block_size, P, rtol, maxiter, key, num_probes, piv):
    n = X.shape[0]
    W = jax.random.rademacher(key, (n, num_probes), dtype=X.dtype)
    if P is None:
        Z, V = W, W
    else:
        # z = P^{1/2} w ~ N(0, P) (approximately, for Rademacher w); P^{-1} z = P^{-1/2} w.
        Z = _lowrank_apply(P, W, jnp.sqrt)
        V = _lowrank_apply(P, W, jax.lax.rsqrt)
    stopped = jax.lax.stop_gradient(params)
    mv_stop = matmat_operator(
        kernel_operator(stopped, X, kernel=kernel, block_size=block_size)
    )
    B = jnp.concatenate([jax.lax.stop_gradient(y)[:, None], Z], axis=1)
    sol = solvers.solve(mv_stop, B, precond=P, rtol=rtol, maxiter=maxiter, batched=True)
    S = jax.lax.stop_gradient(sol.value)
    alpha, U = S[:, 0], S[:, 1:]
    mv = kernel_operator(params, X, kernel=kernel, block_size=block_size)
    KM = mv(jnp.concatenate([alpha[:, None], V], axis=1))
    quad = 2 * alpha @ y - alpha @ KM[:, 0]
    tr = jnp.sum(U * KM[:, 1:]) / num_probes
    if P is not None:
        # Control variate: log det P exactly minus its Hutchinson estimate with the
        # same probes, tr(P^{-1} dP) ≈ mean_i (P^{-1} z_i)^T dP (P^{-1} z_i).
        B = factor(params, X, piv, kernel=kernel)
        PV = B @ (B.T @ V) + params["noise"] * V
        tr = tr - jnp.sum(V * PV) / num_probes + _logdet_lowrank(B, params["noise"])
    return quad, tr - jax.lax.stop_gradient(tr), sol


def _adjoint_quad(params, X, y, kernel, block_size, P, rtol, maxiter):
    mv = kernel_operator(params, X, kernel=kernel, block_size=block_size)
    sol = solvers.solve(mv, y, precond=P, rtol=rtol, maxiter=maxiter)
    return y @ sol.value, sol


def _lowrank_apply(P, W, fn):
    """`fn(P) W` for a `precond.LowRank` `P` and a block `W` (n, m)."""
    coef = P.basis.T @ W
    rest = W - P.basis @ coef
    return P.basis @ (fn(P.values)[:, None] * coef) + fn(P.complement) * rest
