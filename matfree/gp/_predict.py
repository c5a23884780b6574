"""GP prediction (mean and variance) and prior samples, matrix-free."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from matfree import _checks, funm, operators, solvers
from matfree.gp import _lml, _params


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
    block_size: int = 128,
    batch_size: int = 128,
):
    r"""Predictive mean and variance of the latent function at `X_new`.

    Mean `k_*^T (K + s I)^{-1} y`; variance
    `k(x_*, x_*) - k_*^T (K + s I)^{-1} k_*` (add `params["noise"]` for the
    variance of a new observation). The iterative path solves with
    preconditioned CG: one solve for the mean, and for the variances batched
    solves with the columns `k_*` for `batch_size` test points at a time
    (one kernel matmat per CG step and batch). This is exact up to the CG
    tolerance `rtol` (the variance error is about `rtol |k_*|^2 / s`), at
    the cost of `m / batch_size` batched solves for `m` test points; memory
    `O(n (batch_size + block_size))`.

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
        Also compute the variances (else `None` is returned for them).
    precond_rank, rtol, maxiter, block_size
        As in `log_marginal_likelihood` (here `rtol` defaults to `1e-6`).
    batch_size
        Test points per batched variance solve.

    Returns
    -------
    mean, var
        Arrays of shape `(m,)` (`var` is `None` if `variance=False`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = jnp.linspace(0, 1, 30)[:, None]
    >>> y = jnp.sin(6 * X[:, 0])
    >>> p = {"lengthscale": 0.3, "variance": 1.0, "noise": 0.01}
    >>> Xs = jnp.array([[0.25], [0.75]])
    >>> m1, v1 = predict(p, X, y, Xs, precond_rank=10)
    >>> m2, v2 = predict(p, X, y, Xs, method="cholesky")
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

    if method == "cholesky":
        K = operators.kernel_matrix(X, X, **kw) + p["noise"] * jnp.eye(n, dtype=X.dtype)
        L = jnp.linalg.cholesky(K)
        Ks = cross(X_new)
        mean = Ks @ jax.scipy.linalg.cho_solve((L, True), y)
        if not variance:
            return mean, None
        A = jax.scipy.linalg.solve_triangular(L, Ks.T, lower=True)
        return mean, p["variance"] - jnp.sum(A * A, axis=0)
    if method != "iterative":
        msg = f"`method` must be one of {_lml.METHODS}; got method={method!r}."
        raise ValueError(msg)
    precond_rank = _checks.check_int(precond_rank, "precond_rank", minimum=0, maximum=n)
    block_size = _checks.check_int(block_size, "block_size")
    batch_size = _checks.check_int(batch_size, "batch_size")
    maxiter = min(n, 1000) if maxiter is None else _checks.check_int(maxiter, "maxiter")
    static = (kernel, bool(variance), precond_rank, maxiter, block_size, batch_size)
    mean, var = _predict_iterative(p, X, y, X_new, jnp.asarray(rtol, X.dtype), *static)
    return mean, (var if variance else None)


@functools.partial(jax.jit, static_argnums=tuple(range(5, 11)))
def _predict_iterative(
    p, X, y, X_new, rtol, kernel, variance, precond_rank, maxiter, block_size, batch_size
):
    d = X.shape[1]
    kw = {"kernel": kernel, "lengthscale": p["lengthscale"], "variance": p["variance"]}

    def cross(rows):  # k(rows, X), shape (len(rows), n)
        return operators.kernel_matrix(rows, X, **kw)

    mv = _lml.kernel_operator(p, X, kernel=kernel, block_size=block_size)
    P = (
        _lml.preconditioner(p, X, kernel=kernel, rank=precond_rank)[0]
        if precond_rank
        else None
    )
    opts = {"precond": P, "rtol": rtol, "maxiter": maxiter}
    alpha = solvers.solve(mv, y, **opts).value
    m = X_new.shape[0]
    bs = min(batch_size, m)
    nb = -(-m // bs)
    Xb = jnp.pad(X_new, ((0, nb * bs - m), (0, 0))).reshape(nb, bs, d)

    def one_batch(rows):
        Ks = cross(rows)  # (bs, n)
        mean = Ks @ alpha
        if not variance:
            return mean, mean
        S = solvers.solve(mv, Ks.T, batched=True, **opts).value  # (n, bs)
        return mean, p["variance"] - jnp.sum(Ks.T * S, axis=0)

    mean, var = jax.lax.map(one_batch, Xb)
    return mean.reshape(-1)[:m], jnp.maximum(var.reshape(-1)[:m], 0)


def sample_prior(
    params,
    X,
    *,
    key,
    kernel: str = "rbf",
    num_samples: int | None = None,
    depth: int = 100,
    block_size: int = 128,
):
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
    block_size
        Rows per kernel block.

    Returns
    -------
    Array
        The samples.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jnp.linspace(0, 1, 200)[:, None]
    >>> p = {"lengthscale": 0.2, "variance": 1.0, "noise": 0.1}
    >>> y = sample_prior(p, X, key=jax.random.PRNGKey(0), depth=40)
    >>> y.shape
    (200,)
    """
    kernel = _params.check_kernel(kernel)
    X, _ = _params.check_data(X)
    n, d = X.shape
    p = _params.check_params(params, d, X.dtype)
    depth = _checks.check_depth(depth, n)
    block_size = _checks.check_int(block_size, "block_size")
    return _sample(p, X, key, kernel, num_samples, depth, block_size)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _sample(p, X, key, kernel, num_samples, depth, block_size):
    n = X.shape[0]
    mv = _lml.kernel_operator(p, X, kernel=kernel, block_size=block_size)
    shape = (n,) if num_samples is None else (num_samples, n)
    Z = jax.random.normal(key, shape, X.dtype)

    def one(z):
        return funm.sqrt_action(mv, z, depth=depth).value

    return one(Z) if num_samples is None else jax.lax.map(one, Z)
