r"""The log marginal likelihood of a GP: matrix-free and exact (Cholesky)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from matfree import _checks, operators, precond, slq, solvers
from matfree import status as _status
from matfree.gp import _params
from matfree.gp._operator import (
    factor,
    kernel_operator,
    matmat_operator,
    preconditioner,
    stored_kernel,
)

METHODS = ("iterative", "cholesky")
GRADIENTS = ("hutchinson", "adjoint")


class LMLResult(NamedTuple):
    """The result of `log_marginal_likelihood`.

    Attributes
    ----------
    value
        The log marginal likelihood (a scalar; differentiable).
    status
        `0` if it was computed without a run-time problem, else a code of
        `matfree.status` (`NOT_CONVERGED` for a CG solve that did not reach
        `rtol`, the log-determinant's status, `NONFINITE`).
    cg_num_steps
        The largest number of CG iterations over the right-hand sides (`0`
        for `method="cholesky"`).
    logdet_std_error
        Standard error of the stochastic log-determinant over the probes
        (`0` for `method="cholesky"`); the value's stochastic error is about
        half of it.
    """

    value: jax.Array
    status: jax.Array
    cg_num_steps: jax.Array
    logdet_std_error: jax.Array


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
    rows_per_block: int = 128,
    mesh=None,
    materialize: bool = False,
    throw: bool = True,
) -> LMLResult:
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
        `"iterative"` (matrix-free, memory `O(rows_per_block n + n (num_probes
        + depth))`) or `"cholesky"` (exact, dense `O(n^2)` memory, the
        reference for small `n`).
    gradient
        How the iterative path differentiates (`docs/conventions.md`).
        `"hutchinson"` (default; use it for fitting): one batched CG solve of
        `K [y, z_1..z_m]` with probes `z_i ~ N(0, P)` (`P` the
        preconditioner), and the gradient from `y^T K^{-1} dK K^{-1} y` and
        Hutchinson's estimate of `tr(K^{-1} dK) ≈ mean_i (K^{-1} z_i)^T dK
        P^{-1} z_i` (Gardner et al. 2018) with the control variate `log det
        P`, which costs one VJP of the kernel matmat; the log-determinant
        value comes from `matfree.logdet` without differentiation.
        `"adjoint"`: the exact derivative of the log-determinant estimate
        itself, through `matfree.logdet` (Lanczos adjoint: about `depth` more
        kernel VJPs), and `-a^T dK a` for the quadratic term at the CG
        solution `a` (what implicit differentiation of the solve gives: its
        adjoint system is the same one, so no second CG solve is run).
        Both are unbiased for the exact gradient up to the CG and quadrature
        errors. Both give first derivatives in reverse mode (`jax.grad`);
        a second derivative is not that of the estimate.
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
    rows_per_block
        Rows of the kernel matrix computed at once inside a matvec (memory
        `O(rows_per_block n)`); results do not depend on it beyond rounding.
    mesh
        `None`, or a `jax.sharding.Mesh`: the kernel matvec is split by rows
        over all its devices (`jax.shard_map`, one all-gather of the vector
        and of `X` per matvec; `n` must be divisible by the number of
        devices); shard `X` and `y` over the mesh too (`docs/sharding.md`).
        The result equals the unsharded one to rounding.
    materialize
        Form the kernel matrix once per call and reuse it in every CG and
        Lanczos matvec (`operators.kernel_matvec(materialize=True)`): memory
        `n^2` numbers instead of `rows_per_block n`, several times faster
        where it fits (`benchmarks/RESULTS.md`); the gradient still
        recomputes row blocks. Not with `mesh`.
    throw
        Raise if `status` is non-zero (a CG solve that did not converge, a
        failed log-determinant); `False` returns the result with its status.

    Returns
    -------
    LMLResult
        `value` (the log marginal likelihood), `status`, `cg_num_steps`,
        `logdet_std_error`.

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
    >>> exact = log_marginal_likelihood(p, X, y, method="cholesky").value
    >>> lml = jax.jit(lambda p, key: log_marginal_likelihood(
    ...     p, X, y, key=key, num_probes=8, depth=10, precond_rank=20).value)
    >>> est = lml(p, jax.random.PRNGKey(0))
    >>> bool(jnp.abs(est - exact) < 0.5)
    True
    """
    kernel = _params.check_kernel(kernel)
    method = _checks.check_choice(method, "method", METHODS)
    gradient = _checks.check_gradient(gradient, GRADIENTS)
    X, y = _params.check_data(X, y)
    n, d = X.shape
    params = _params.check_params(params, d, X.dtype)
    if method == "cholesky":
        result = _cholesky(params, X, y, kernel)
    else:
        _checks.check_key(key, "the probes of `method='iterative'` are random")
        opts = {
            "kernel": kernel,
            "gradient": gradient,
            "num_probes": _checks.check_int(num_probes, "num_probes"),
            "depth": _checks.check_depth(depth, n),
            "rank": _checks.check_int(precond_rank, "precond_rank", minimum=0, maximum=n),
            "rtol": jnp.asarray(rtol, X.dtype),
            "maxiter": min(n, 1000)
            if maxiter is None
            else _checks.check_int(maxiter, "maxiter"),
            "rows_per_block": _checks.check_int(rows_per_block, "rows_per_block"),
            "mesh": None if mesh is None else _checks.check_mesh(mesh, n),
            "materialize": _checks.check_materialize(materialize, mesh),
        }
        result = _iterative(params, X, y, key, **opts)
    return _status.error_if(result, result.status) if throw else result


def _cholesky(params, X, y, kernel) -> LMLResult:
    const = X.shape[0] * math.log(2 * math.pi)
    value = _dense_lml(params, X, y, kernel) - const / 2
    status = _status.first((~jnp.isfinite(value), _status.Status.NONFINITE))
    zero = jnp.zeros((), X.dtype)
    return LMLResult(value, status, jnp.int32(0), zero)


def _iterative(
    params,
    X,
    y,
    key,
    *,
    kernel,
    gradient,
    num_probes,
    depth,
    rank,
    rtol,
    maxiter,
    rows_per_block,
    mesh,
    materialize,
) -> LMLResult:
    n = X.shape[0]
    K = stored_kernel(
        params, X, kernel=kernel, rows_per_block=rows_per_block, materialize=materialize
    )
    blocking = {"rows_per_block": rows_per_block, "mesh": mesh, "K": K}
    P, piv = None, None
    if rank:
        P, piv = preconditioner(params, X, kernel=kernel, rank=rank, K=K)
    key_solve, key_logdet = jax.random.split(key)
    args = (params, X, y, kernel, blocking, P, rtol, maxiter)
    if gradient == "hutchinson":
        quad, trace_term, sol = _hutchinson(*args, key_solve, num_probes, piv)
        ld_params, P_ld = jax.lax.stop_gradient(params), P
    else:
        quad, sol = _adjoint_quad(*args)
        trace_term = 0.0
        # log det A = log det P + log det(P^{-1/2} A P^{-1/2}) with a differentiable P:
        # the exact log det P is the control variate of the value *and* the gradient.
        ld_params = params
        P_ld = None if P is None else _differentiable(params, X, piv, kernel)
    matvec = kernel_operator(ld_params, X, kernel=kernel, **blocking)
    if gradient == "hutchinson":
        matvec = matmat_operator(matvec)
    ld = slq.logdet(
        matvec,
        y,
        key=key_logdet,
        depth=depth,
        num_probes=num_probes,
        precond=P_ld,
        throw=False,
    )
    logdet = ld.value
    if gradient == "hutchinson":
        logdet = jax.lax.stop_gradient(logdet)
    value = -(quad + logdet + trace_term + n * math.log(2 * math.pi)) / 2
    status = _status.first(
        (ld.status != 0, ld.status),
        (~jnp.all(sol.converged), _status.Status.NOT_CONVERGED),
        (~jnp.isfinite(value), _status.Status.NONFINITE),
    )
    return LMLResult(value, status, jnp.max(sol.num_steps), ld.std_error)


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


def _hutchinson(params, X, y, kernel, blocking, P, rtol, maxiter, key, num_probes, piv):
    n = X.shape[0]
    W = jax.random.rademacher(key, (num_probes, n), dtype=X.dtype)
    # z = P^{1/2} w ~ N(0, P) (approximately, for Rademacher w); P^{-1} z = P^{-1/2} w.
    Z, V = (W, W) if P is None else (P.sqrt(W), P.inv_sqrt(W))
    stopped = jax.lax.stop_gradient(params)
    mv_stop = matmat_operator(kernel_operator(stopped, X, kernel=kernel, **blocking))
    rhs = jnp.concatenate([jax.lax.stop_gradient(y)[None], Z])  # (1 + num_probes, n)
    sol = solvers.solve(
        mv_stop, rhs, precond=P, rtol=rtol, maxiter=maxiter, batched=True, throw=False
    )
    S = jax.lax.stop_gradient(sol.value)
    alpha, U = S[0], S[1:]
    mv = kernel_operator(params, X, kernel=kernel, **blocking)
    KM = mv(jnp.concatenate([alpha[None], V]).T).T  # one kernel matmat on columns
    quad = 2 * alpha @ y - alpha @ KM[0]
    tr = jnp.sum(U * KM[1:]) / num_probes
    if P is not None:
        # Control variate: log det P exactly minus its Hutchinson estimate with the
        # same probes, tr(P^{-1} dP) ≈ mean_i (P^{-1} z_i)^T dP (P^{-1} z_i).
        P_diff = _differentiable(params, X, piv, kernel)
        tr = tr - jnp.sum(V * P_diff.matvec(V)) / num_probes + P_diff.logdet()
    return quad, tr - jax.lax.stop_gradient(tr), sol


def _adjoint_quad(params, X, y, kernel, blocking, P, rtol, maxiter):
    """`y^T K^{-1} y` as `2 a^T y - a^T K a` at the CG solution `a` of `K a = y`.

    `a` is a constant: the gradient is `2 a^T dy - a^T dK a`, what differentiating
    the solve (implicit differentiation) gives, since its adjoint system `K l = y` is
    the same system and its CG solve would return `a` again. One CG solve, not two.
    """
    stopped = jax.lax.stop_gradient(params)
    mv_stop = kernel_operator(stopped, X, kernel=kernel, **blocking)
    b = jax.lax.stop_gradient(y)
    sol = solvers.solve(mv_stop, b, precond=P, rtol=rtol, maxiter=maxiter, throw=False)
    a = jax.lax.stop_gradient(sol.value)
    mv = kernel_operator(params, X, kernel=kernel, **blocking)
    return 2 * a @ y - a @ mv(a), sol


def _differentiable(params, X, piv, kernel):
    """`B B^T + noise I` at the same pivots, differentiable in `params`."""
    return precond.LowRank(factor(params, X, piv, kernel=kernel), params["noise"])
