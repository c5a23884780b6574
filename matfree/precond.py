r"""Preconditioners: approximate inverses of symmetric positive definite operators.

Each preconditioner `P ≈ A` is a small `equinox.Module`, callable as
`P(v) = P^{-1} v`, with `inv_sqrt(v) = P^{-1/2} v` and `logdet() = log det P`,
so that it serves both `matfree.solve(..., precond=P)` and preconditioned
log-determinants, `log det A = log det P + log det(P^{-1/2} A P^{-1/2})`.
Vectors are flat arrays of shape `(n,)`.

- `jacobi(diagonal)` (`P = diag(A)`): cheap, for operators with a varying
  diagonal; `estimate_diagonal` gets the diagonal from matvecs.
- `pivoted_cholesky(row_fn, diagonal, rank, noise)` (`P = L L^T + s I`): the
  standard preconditioner for kernel matrices plus noise, built from `rank`
  rows of the matrix.
- `nystrom(matvec, like, key=, rank=, shift=)`: a randomised Nyström
  approximation from `rank` matvecs, for operators with a decaying spectrum
  (plus a shift) whose rows are not available.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from matfree import _checks

__all__ = [
    "Jacobi",
    "LowRank",
    "estimate_diagonal",
    "jacobi",
    "nystrom",
    "pivoted_cholesky",
]


class Jacobi(eqx.Module):
    """The diagonal preconditioner `P = diag(d)`, `d > 0`; see `jacobi`."""

    diagonal: jax.Array

    def __check_init__(self):
        d = self.diagonal
        if d.ndim != 1 or not jnp.issubdtype(d.dtype, jnp.floating):
            msg = (
                f"`diagonal` must be a floating vector of shape (n,); got shape "
                f"{d.shape} and dtype {d.dtype}."
            )
            raise ValueError(msg)

    def __call__(self, v):
        """`P^{-1} v`."""
        return v / self.diagonal

    def inv_sqrt(self, v):
        """`P^{-1/2} v`."""
        return v / jnp.sqrt(self.diagonal)

    def logdet(self):
        """`log det P`."""
        return jnp.sum(jnp.log(self.diagonal))


class LowRank(eqx.Module):
    r"""`P = U diag(values) U^T + complement (I - U U^T)` with orthonormal `U` (n, k).

    The form of the pivoted-Cholesky (`values = s^2 + noise`,
    `complement = noise`) and the Nyström preconditioner (`values = lambda +
    shift`, `complement = lambda_k + shift`). `P^{-1}`, `P^{-1/2}` and
    `log det P` cost `O(n k)`.
    """

    basis: jax.Array
    values: jax.Array
    complement: jax.Array

    def __check_init__(self):
        U, d, s = self.basis, self.values, self.complement
        if U.ndim != 2 or d.shape != (U.shape[1],) or jnp.ndim(s) != 0:
            msg = (
                "`basis` must have shape (n, k), `values` shape (k,) and "
                f"`complement` be a scalar; got {U.shape}, {d.shape}, {jnp.shape(s)}."
            )
            raise ValueError(msg)
        if not U.dtype == d.dtype == s.dtype:
            msg = (
                "`basis`, `values`, `complement` need one dtype; got "
                f"{U.dtype}, {d.dtype}, {s.dtype}."
            )
            raise TypeError(msg)

    def _apply(self, v, fn):
        coef = self.basis.T @ v
        rest = v - self.basis @ coef
        return self.basis @ (fn(self.values) * coef) + fn(self.complement) * rest

    def __call__(self, v):
        """`P^{-1} v`."""
        return self._apply(v, lambda x: 1 / x)

    def inv_sqrt(self, v):
        """`P^{-1/2} v`."""
        return self._apply(v, jax.lax.rsqrt)

    def logdet(self):
        """`log det P`."""
        n, k = self.basis.shape
        return jnp.sum(jnp.log(self.values)) + (n - k) * jnp.log(self.complement)


def jacobi(diagonal) -> Jacobi:
    """The Jacobi (diagonal) preconditioner `P = diag(diagonal)`.

    Use it when the diagonal of `A` varies over orders of magnitude (badly
    scaled unknowns); it does nothing for a constant diagonal (e.g. a
    Laplacian). The diagonal must be positive.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> P = jacobi(jnp.array([1.0, 4.0]))
    >>> P(jnp.array([1.0, 1.0]))
    Array([1.  , 0.25], dtype=float64)
    """
    diagonal = jnp.asarray(diagonal)
    _checks.check_floating_vector(diagonal, "diagonal")
    return Jacobi(diagonal)


def estimate_diagonal(matvec, like, *, num_probes: int, key=None):
    """Estimate the diagonal of `A` from `num_probes` matvecs.

    With `key=None`, deterministic probing: probe `j` is the indicator of the
    indices `i = j mod num_probes`; exact if `A[i, l] = 0` whenever
    `0 < |i - l|` is a multiple of `num_probes` (e.g. a banded matrix of
    half-bandwidth `< num_probes`). With a `key`, the stochastic estimator
    `sum_j z_j * (A z_j) / num_probes` with Rademacher probes (Bekas et al.
    2007; unbiased, variance from the off-diagonal entries). The probes run as
    one batched matvec.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import operators
    >>> d = estimate_diagonal(operators.laplace_2d((4, 4)), jnp.zeros(16), num_probes=9)
    >>> jnp.allclose(d, 4.0)
    Array(True, dtype=bool)

    References
    ----------
    C. Bekas, E. Kokiopoulou, Y. Saad. An estimator for the diagonal of a
    matrix. Appl. Numer. Math. 57 (2007).
    """
    _checks.check_operator(matvec, like, name="like")
    like = jnp.asarray(like)
    if like.ndim != 1:
        msg = f"`like` must be a flat vector of shape (n,); got shape {like.shape}."
        raise ValueError(msg)
    n = like.shape[0]
    num_probes = _checks.check_int(num_probes, "num_probes")
    if key is None:
        num_probes = min(num_probes, n)
        Z = jnp.arange(n)[None, :] % num_probes == jnp.arange(num_probes)[:, None]
        Z = Z.astype(like.dtype)
        return jnp.sum(Z * jax.vmap(matvec)(Z), axis=0)
    Z = jax.random.rademacher(key, (num_probes, n), dtype=like.dtype)
    return jnp.mean(Z * jax.vmap(matvec)(Z), axis=0)


def pivoted_cholesky(
    row_fn, diagonal, rank: int, noise, *, return_pivots: bool = False
) -> LowRank | tuple[LowRank, jax.Array]:
    r"""Partial pivoted Cholesky preconditioner `P = L L^T + noise I` of `K + noise I`.

    Greedily picks the `rank` pivots with the largest remaining diagonal of
    the Schur complement (each index at most once) and builds `L` (n, rank)
    from the matrix rows at the pivots, so that `L L^T = K[:, S] K[S, S]^{-1}
    K[S, :]` for the pivots `S`; `P^{-1}` is then applied via the thin SVD of
    `L` (equivalent to the Woodbury identity). Once the remaining diagonal
    falls to `eps * max(diagonal)` (numerical rank reached), further pivots
    add zero columns to `L`; they are still distinct, taken in order of the
    remaining diagonal. This is the standard preconditioner for Gaussian
    process kernel matrices `K + noise I` with a decaying spectrum (Gardner
    et al. 2018): with a modest rank it removes the large eigenvalues of
    `K`, so CG converges in far fewer iterations. Cost: `rank` rows,
    `O(n rank^2)`.

    Parameters
    ----------
    row_fn
        `i -> K[i, :]` for a (traced) integer index `i`, shape `(n,)`; e.g.
        `lambda i: operators.kernel_matrix(x[i][None], x)[0]`.
    diagonal
        The diagonal of `K`, shape `(n,)` (without the noise).
    rank
        Number of pivots, a static int `1 <= rank <= n`.
    noise
        The shift `s > 0`.
    return_pivots
        Also return the pivot indices (e.g. to rebuild the factor
        differentiably from `K[:, S]` and `K[S, S]`).

    Returns
    -------
    P
        The preconditioner, a `LowRank` with `values = s_i^2 + noise` (`s_i`
        the singular values of `L`) and `complement = noise`.
    pivots
        Only with `return_pivots=True` (then the tuple `(P, pivots)`): the
        integer indices `S` (rank,) of the chosen rows, in the order chosen;
        `pivots[0]` is the argmax of `diagonal`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from matfree import operators
    >>> x = jnp.linspace(0, 1, 20)[:, None]
    >>> K = operators.kernel_matrix(x, x)
    >>> P = pivoted_cholesky(lambda i: K[i], jnp.diag(K), 5, 1e-2)
    >>> v = jnp.ones(20)
    >>> w = P(K @ v + 1e-2 * v)
    >>> bool(jnp.linalg.norm(w - v) < 1e-2 * jnp.linalg.norm(v))
    True

    With the pivots (here the two ends of the grid come first):

    >>> P, piv = pivoted_cholesky(lambda i: K[i], jnp.diag(K), 5, 1e-2,
    ...                           return_pivots=True)
    >>> piv.shape, [int(i) for i in piv[:2]]
    ((5,), [0, 19])

    References
    ----------
    H. Harbrecht, M. Peters, R. Schneider. On the low-rank approximation by the
    pivoted Cholesky decomposition. Appl. Numer. Math. 62 (2012).
    J. Gardner, G. Pleiss, D. Bindel, K. Weinberger, A. Wilson. GPyTorch:
    blackbox matrix-matrix Gaussian process inference with GPU acceleration.
    NeurIPS 2018.
    """
    _checks.check_callable(row_fn, "row_fn")
    diagonal = jnp.asarray(diagonal)
    dtype = _checks.check_floating_vector(diagonal, "diagonal")
    if diagonal.ndim != 1:
        msg = f"`diagonal` must have shape (n,); got shape {diagonal.shape}."
        raise ValueError(msg)
    n = diagonal.shape[0]
    rank = _checks.check_int(rank, "rank", maximum=n)
    row_shape = jax.eval_shape(row_fn, jnp.int32(0))
    if row_shape.shape != (n,):
        msg = (
            f"`row_fn(i)` must return a row of shape ({n},) like `diagonal`; got "
            f"shape {row_shape.shape}."
        )
        raise ValueError(msg)
    noise = jnp.asarray(noise, dtype)
    tiny = jnp.finfo(dtype).eps * jnp.max(jnp.abs(diagonal))

    def step(j, carry):
        L, d, picked, pivots = carry
        i = jnp.argmax(jnp.where(picked, -jnp.inf, d))
        pivot = d[i]
        ok = pivot > tiny
        row = row_fn(i).astype(dtype) - L.T @ L[:, i]
        ell = jnp.where(ok, row / jnp.sqrt(jnp.where(ok, pivot, 1)), 0)
        ell = ell.at[i].set(jnp.where(ok, jnp.sqrt(jnp.where(ok, pivot, 1)), 0))
        L = L.at[j].set(ell)
        d = d - ell**2
        return L, d, picked.at[i].set(True), pivots.at[j].set(i)

    L0 = jnp.zeros((rank, n), dtype)
    init = (L0, diagonal.astype(dtype), jnp.zeros((n,), bool), jnp.zeros((rank,), int))
    L, _, _, pivots = jax.lax.fori_loop(0, rank, step, init)
    U, s, _ = jnp.linalg.svd(L.T, full_matrices=False)
    P = LowRank(U, s**2 + noise, noise)
    if return_pivots:
        return P, pivots
    return P


def nystrom(matvec, like, *, key, rank: int, shift=0.0) -> LowRank:
    r"""Randomised Nyström preconditioner of `A + shift I` from `rank` matvecs.

    Computes a stable rank-`rank` Nyström approximation `U diag(lam) U^T` of
    the PSD operator `A` from a Gaussian sketch (one batched matvec) and
    returns `P` with `P^{-1} = (lam_k + shift) U (diag(lam) + shift)^{-1} U^T
    + (I - U U^T)` (up to the scale `lam_k + shift`, which CG ignores). Use it
    for operators with a fast-decaying spectrum whose entries are not
    available (Hessians, Gauss–Newton matrices); choose `rank` above the
    number of eigenvalues larger than `shift`. If `A` already contains the
    shift (e.g. `K + noise I`), `shift=0` works too.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from matfree import matrices
    >>> lam = jnp.concatenate([jnp.array([1e3, 1e2, 1e1]), jnp.zeros(17)])
    >>> A = matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(0), lam)
    >>> key = jax.random.PRNGKey(1)
    >>> P = nystrom(lambda v: A @ v, jnp.zeros(20), key=key, rank=5, shift=1.0)
    >>> M = jax.vmap(P)(A + jnp.eye(20)).T  # P^{-1} (A + I)
    >>> bool(jnp.linalg.cond(M) < 1.01)
    True

    References
    ----------
    Z. Frangella, J. A. Tropp, M. Udell. Randomized Nyström preconditioning.
    SIAM J. Matrix Anal. Appl. 44 (2023).
    """
    _checks.check_operator(matvec, like, name="like")
    like = jnp.asarray(like)
    if like.ndim != 1:
        msg = f"`like` must be a flat vector of shape (n,); got shape {like.shape}."
        raise ValueError(msg)
    n = like.shape[0]
    dtype = like.dtype
    rank = _checks.check_int(rank, "rank", maximum=n)
    shift = jnp.asarray(shift, dtype)
    Omega = jax.random.normal(key, (n, rank), dtype)
    Omega, _ = jnp.linalg.qr(Omega)
    Y = jax.vmap(matvec, in_axes=1, out_axes=1)(Omega)
    nu = jnp.sqrt(n) * jnp.finfo(dtype).eps * jnp.linalg.norm(Y)
    Y = Y + nu * Omega
    C = jnp.linalg.cholesky((Omega.T @ Y + Y.T @ Omega) / 2)
    Bt = jax.scipy.linalg.solve_triangular(C, Y.T, lower=True)
    U, s, _ = jnp.linalg.svd(Bt.T, full_matrices=False)
    lam = jnp.maximum(s**2 - nu, 0)
    # The complement takes the smallest retained eigenvalue (Frangella et al.).
    complement = lam[-1] + shift
    complement = jnp.where(complement > 0, complement, jnp.finfo(dtype).tiny)
    return LowRank(U, jnp.maximum(lam + shift, complement), complement)
