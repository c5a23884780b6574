"""GP prediction (mean and variance) and prior samples, matrix-free."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from matfree import _checks, funm, operators, solvers
from matfree import status as _status
from matfree.gp import _params
from matfree.gp._lml import METHODS
from matfree.gp._operator import kernel_operator, preconditioner, stored_kernel


class Prediction(NamedTuple):
    """The result of `predict`.

    Attributes
    ----------
    mean
        The predictive mean of the latent function, shape `(m,)`.
    variance
        The predictive variance of the latent function, shape `(m,)` (add
        `params["noise"]` for a new observation); `None` with `variance=False`.
    status
        `0`, or a code of `matfree.status` (`NOT_CONVERGED` if a CG solve did
        not reach `rtol`, `NONFINITE`).
    """

    mean: jax.Array
    variance: jax.Array | None
    status: jax.Array


class Samples(NamedTuple):
    """The result of `sample_prior`.

    Attributes
    ----------
    value
        The samples, shape `(n,)` or `(num_samples, n)`.
    status
        `0`, or a code of `matfree.status` from the square-root action.
    """

    value: jax.Array
    status: jax.Array


def predict(
    params,
    X,
    y,
    X_new,
    *,
    kernel: str = "rbf",
    method: str = "iterative",
    variance: bool = True,
    precond_rank: int = 100,
    rtol=1e-6,
    maxiter: int | None = None,
    rows_per_block: int = 128,
    chunk_size: int = 128,
    mesh=None,
    materialize: bool = False,
    throw: bool = True,
) -> Prediction:
    r"""Predictive mean and variance of the latent function at `X_new`.

    Mean `k_*^T (K + s I)^{-1} y`; variance
    `k(x_*, x_*) - k_*^T (K + s I)^{-1} k_*` (add `params["noise"]` for the
    variance of a new observation). The iterative path solves with
    preconditioned CG: one solve for the mean, and for the variances batched
    solves with the columns `k_*` for `chunk_size` test points at a time
    (one kernel matmat per CG step and chunk). This is exact up to the CG
    tolerance `rtol` (the variance error is about `rtol |k_*|^2 / s`), at
    the cost of `m / chunk_size` batched solves for `m` test points; memory
    `O(n (chunk_size + rows_per_block))`.

    Parameters
    ----------
    params
        Hyperparameters in natural units.
    X, y
        Training inputs `(n, d)` and targets `(n,)`.
    X_new
        Test inputs `(m, d)`.
    kernel
        The kernel name.
    method
        `"iterative"` or `"cholesky"` (dense reference).
    variance
        Also compute the variances (else the result's `variance` is `None`).
    precond_rank, rtol, maxiter, rows_per_block, mesh, materialize
        As in `log_marginal_likelihood` (here `rtol` defaults to `1e-6`;
        with a `mesh`, the training solves use the sharded kernel matvec;
        `materialize=True` stores the training kernel matrix for all solves).
    chunk_size
        Test points per batched variance solve (processed in sequential
        chunks; the result does not depend on it).
    throw
        Raise if `status` is non-zero; `False` returns it in the result.

    Returns
    -------
    Prediction
        `mean`, `variance` (each `(m,)`; `variance` is `None` with
        `variance=False`) and `status`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.linspace(0, 1, 30)[:, None]
    >>> y = jnp.sin(6 * X[:, 0])
    >>> p = {"lengthscale": 0.3, "variance": 1.0, "noise": 0.01}
    >>> Xs = jnp.array([[0.25], [0.75]])
    >>> m1, v1, _ = predict(p, X, y, Xs, precond_rank=10)
    >>> m2, v2, _ = predict(p, X, y, Xs, method="cholesky")
    >>> bool(jnp.allclose(m1, m2, atol=1e-5) and jnp.allclose(v1, v2, atol=1e-5))
    True
    """
    kernel = _params.check_kernel(kernel)
    X, y = _params.check_data(X, y)
    X_new, _ = _params.check_data(X_new)
    if X_new.shape[1] != X.shape[1] or X_new.dtype != X.dtype:
        msg = (
            f"`X_new` must have the width and dtype of `X` ({X.shape[1]}, {X.dtype}); "
            f"got shape {X_new.shape} and dtype {X_new.dtype}."
        )
        raise ValueError(msg)
    n, d = X.shape
    p = _params.check_params(params, d, X.dtype)
    kw = {"kernel": kernel, "lengthscale": p["lengthscale"], "variance": p["variance"]}

    def cross(rows):  # k(rows, X), shape (len(rows), n)
        return operators.kernel_matrix(rows, X, **kw)

    method = _checks.check_choice(method, "method", METHODS)
    if method == "cholesky":
        mean, var = _predict_cholesky(p, X, y, X_new, kernel, bool(variance))
        finite = jnp.isfinite(mean).all() & (
            True if var is None else jnp.isfinite(var).all()
        )
        status = _status.first((~finite, _status.Status.NONFINITE))
    else:
        precond_rank = _checks.check_int(precond_rank, "precond_rank", minimum=0, maximum=n)
        rows_per_block = _checks.check_int(rows_per_block, "rows_per_block")
        chunk_size = _checks.check_int(chunk_size, "chunk_size")
        if maxiter is None:
            maxiter = min(n, 1000)
        maxiter = _checks.check_int(maxiter, "maxiter")
        if mesh is not None:
            _checks.check_mesh(mesh, n)
        static = (kernel, bool(variance), precond_rank, maxiter, rows_per_block, chunk_size)
        static += (mesh, _checks.check_materialize(materialize, mesh))
        rtol = jnp.asarray(rtol, X.dtype)
        mean, var, status = _predict_iterative(p, X, y, X_new, rtol, *static)
        var = var if variance else None
    result = Prediction(mean, var, status)
    return _status.error_if(result, status) if throw else result


def _predict_cholesky(p, X, y, X_new, kernel, variance):
    n = X.shape[0]
    kw = {"kernel": kernel, "lengthscale": p["lengthscale"], "variance": p["variance"]}
    K = operators.kernel_matrix(X, X, **kw) + p["noise"] * jnp.eye(n, dtype=X.dtype)
    L = jnp.linalg.cholesky(K)
    Ks = operators.kernel_matrix(X_new, X, **kw)
    mean = Ks @ jax.scipy.linalg.cho_solve((L, True), y)
    if not variance:
        return mean, None
    A = jax.scipy.linalg.solve_triangular(L, Ks.T, lower=True)
    return mean, p["variance"] - jnp.sum(A * A, axis=0)


@functools.partial(jax.jit, static_argnums=tuple(range(5, 13)))
def _predict_iterative(
    p,
    X,
    y,
    X_new,
    rtol,
    kernel,
    variance,
    precond_rank,
    maxiter,
    rows_per_block,
    chunk_size,
    mesh,
    materialize,
):
    d = X.shape[1]
    kw = {"kernel": kernel, "lengthscale": p["lengthscale"], "variance": p["variance"]}

    def cross(rows):  # k(rows, X), shape (len(rows), n)
        return operators.kernel_matrix(rows, X, **kw)

    blocking = {"rows_per_block": rows_per_block, "mesh": mesh}
    K = stored_kernel(
        p, X, kernel=kernel, rows_per_block=rows_per_block, materialize=materialize
    )
    mv = kernel_operator(p, X, kernel=kernel, K=K, **blocking)
    P = None
    if precond_rank:
        P = preconditioner(p, X, kernel=kernel, rank=precond_rank, K=K)[0]
    opts = {"precond": P, "rtol": rtol, "maxiter": maxiter, "throw": False}
    sol = solvers.solve(mv, y, **opts)
    alpha = sol.value
    m = X_new.shape[0]
    bs = min(chunk_size, m)
    nb = -(-m // bs)
    Xb = jnp.pad(X_new, ((0, nb * bs - m), (0, 0))).reshape(nb, bs, d)

    def one_chunk(rows):
        Ks = cross(rows)  # (bs, n)
        mean = Ks @ alpha
        if not variance:
            return mean, mean, jnp.array(True)
        S = solvers.solve(mv, Ks, batched=True, **opts)  # (bs, n)
        var = p["variance"] - jnp.sum(Ks * S.value, axis=1)
        return mean, var, jnp.all(S.converged)

    mean, var, converged = jax.lax.map(one_chunk, Xb)
    mean, var = mean.reshape(-1)[:m], jnp.maximum(var.reshape(-1)[:m], 0)
    status = _status.first(
        (~(jnp.all(sol.converged) & jnp.all(converged)), _status.Status.NOT_CONVERGED),
        (~(jnp.isfinite(mean).all() & jnp.isfinite(var).all()), _status.Status.NONFINITE),
    )
    return mean, var, status


def sample_prior(
    params,
    X,
    *,
    key,
    kernel: str = "rbf",
    num_samples: int | None = None,
    depth: int = 100,
    rows_per_block: int = 128,
    mesh=None,
    materialize: bool = False,
    throw: bool = True,
) -> Samples:
    r"""Sample noisy observations `y ~ N(0, K + noise I)` at `X`, matrix-free.

    `y = (K + noise I)^{1/2} z` with `z ~ N(0, I)`, computed by
    `matfree.sqrt_action` (Lanczos of depth `depth`; the noise bounds the
    spectrum from below, so the square root converges at a rate set by
    `sqrt(lambda_max / noise)`; check the depth on a small problem).
    Samples of the latent function alone are the `noise -> 0` limit, which
    needs a much larger depth.

    Parameters
    ----------
    params
        Hyperparameters in natural units.
    X
        Inputs `(n, d)`.
    key
        A `jax.random` key.
    kernel
        The kernel name.
    num_samples
        `None` for one sample `(n,)`, else `(num_samples, n)`.
    depth
        Lanczos depth (static, at most `n`).
    rows_per_block
        Rows of the kernel matrix computed at once inside a matvec.
    mesh
        `None`, or a `jax.sharding.Mesh`: the kernel matvec is split by rows
        over all its devices (`jax.shard_map`, one all-gather of the vector
        and of `X` per matvec; `n` must be divisible by the number of
        devices); shard `X` and `y` over the mesh too (`docs/sharding.md`).
        The result equals the unsharded one to rounding.
    materialize
        Form the kernel matrix once and reuse it in every Lanczos matvec
        (memory `n^2` numbers; as in `log_marginal_likelihood`).
    throw
        Raise if `status` is non-zero; `False` returns it in the result.

    Returns
    -------
    Samples
        `value` (the samples) and `status`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jnp.linspace(0, 1, 200)[:, None]
    >>> p = {"lengthscale": 0.2, "variance": 1.0, "noise": 0.1}
    >>> y = sample_prior(p, X, key=jax.random.PRNGKey(0), depth=40).value
    >>> y.shape
    (200,)
    """
    kernel = _params.check_kernel(kernel)
    X, _ = _params.check_data(X)
    n, d = X.shape
    p = _params.check_params(params, d, X.dtype)
    depth = _checks.check_depth(depth, n)
    rows_per_block = _checks.check_int(rows_per_block, "rows_per_block")
    if mesh is not None:
        _checks.check_mesh(mesh, n)
    materialize = _checks.check_materialize(materialize, mesh)
    args = (kernel, num_samples, depth, rows_per_block, mesh, materialize)
    result = Samples(*_sample(p, X, key, *args))
    return _status.error_if(result, result.status) if throw else result


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _sample(p, X, key, kernel, num_samples, depth, rows_per_block, mesh, materialize):
    n = X.shape[0]
    K = stored_kernel(
        p, X, kernel=kernel, rows_per_block=rows_per_block, materialize=materialize
    )
    mv = kernel_operator(p, X, kernel=kernel, rows_per_block=rows_per_block, mesh=mesh, K=K)
    shape = (n,) if num_samples is None else (num_samples, n)
    Z = jax.random.normal(key, shape, X.dtype)

    def one(z):
        r = funm.sqrt_action(mv, z, depth=depth, throw=False)
        return r.value, r.status

    if num_samples is None:
        return one(Z)
    Y, status = jax.lax.map(one, Z)
    return Y, status[jnp.argmax(status != 0)]
