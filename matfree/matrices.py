"""Matrices with a chosen spectrum, for tests, docs and benchmarks."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_orthogonal(key, n: int, dtype=float) -> jax.Array:
    """A Haar-random orthogonal `(n, n)` matrix."""
    X = jax.random.normal(key, (n, n), dtype=dtype)
    Q, R = jnp.linalg.qr(X)
    return Q * jnp.sign(jnp.diag(R))[None, :]


def symmetric_matrix_from_eigenvalues(key, eigvals: jax.Array) -> jax.Array:
    """A dense symmetric matrix `Q diag(eigvals) Q^T` with random orthogonal `Q`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> A = symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(0), jnp.arange(1.0, 4.0))
    >>> jnp.allclose(jnp.linalg.eigvalsh(A), jnp.arange(1.0, 4.0))
    Array(True, dtype=bool)
    """
    Q = random_orthogonal(key, eigvals.shape[0], eigvals.dtype)
    A = (Q * eigvals[None, :]) @ Q.T
    return (A + A.T) / 2


def spd_matrix(key, n: int, cond: float = 100.0, dtype=float) -> jax.Array:
    """A symmetric positive definite matrix with log-spaced eigenvalues in `[1, cond]`."""
    eigvals = jnp.logspace(0.0, jnp.log10(cond), n, dtype=dtype)
    return symmetric_matrix_from_eigenvalues(key, eigvals)


def nonsymmetric_matrix_from_eigenvalues(
    key, eigvals: jax.Array, *, eigvec_cond: float = 10.0
) -> jax.Array:
    """A dense non-symmetric matrix `V diag(eigvals) V^{-1}` with real eigenvalues.

    `V` has singular values log-spaced in `[1, eigvec_cond]`, so the
    departure from normality is controlled.
    """
    n = eigvals.shape[0]
    k1, k2 = jax.random.split(key)
    U = random_orthogonal(k1, n, eigvals.dtype)
    W = random_orthogonal(k2, n, eigvals.dtype)
    s = jnp.logspace(0.0, jnp.log10(eigvec_cond), n, dtype=eigvals.dtype)
    V = (U * s[None, :]) @ W.T
    return (V * eigvals[None, :]) @ jnp.linalg.inv(V)


def hilbert(n: int, dtype=float) -> jax.Array:
    """The (severely ill-conditioned) Hilbert matrix `1 / (i + j + 1)`."""
    i = jnp.arange(n, dtype=dtype)
    return 1.0 / (i[:, None] + i[None, :] + 1.0)
