r"""Preconditioners: approximate inverses of symmetric positive definite operators.

Each preconditioner `P ≈ A` is a small `equinox.Module`, callable as
`P(v) = P^{-1} v`, with `inverse(v) = P^{-1} v`, `sqrt(v) = P^{1/2} v`,
`inv_sqrt(v) = P^{-1/2} v`, `matvec(v) = P v` and `logdet() = log det P`,
so that it serves both `matfree.solve(..., precond=P)` and preconditioned
log-determinants, `log det A = log det P + log det(P^{-1/2} A P^{-1/2})`.
Every method accepts a vector `(n,)` or a block `(m, n)` of `m` vectors
(rows), and is differentiable with respect to the preconditioner's arrays.

- `jacobi(diagonal)` (`P = diag(A)`): cheap, for operators with a varying
  diagonal; `estimate_diagonal` gets the diagonal from matvecs.
- `pivoted_cholesky(row_fn, diagonal, rank=, shift=)` (`P = L L^T + shift I`):
  the standard preconditioner for kernel matrices plus noise, built from
  `rank` rows of the matrix.
- `nystrom(matvec, like, key=, rank=, shift=)`: a randomised Nyström
  approximation from `rank` matvecs, for operators with a decaying spectrum
  (plus a shift) whose rows are not available.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from matfree import _checks, _dense, _eager, _flat

__all__ = [
    "Jacobi",
    "LowRank",
    "estimate_diagonal",
    "jacobi",
    "nystrom",
    "pivoted_cholesky",
]


def _check_block(v, n: int, name: str = "v"):
    """A vector `(n,)` or a block of rows `(m, n)`."""
    if jnp.ndim(v) not in (1, 2) or jnp.shape(v)[-1] != n:
        msg = (
            f"`{name}` must be a vector of shape ({n},) or a block of rows (m, {n}); "
            f"got shape {jnp.shape(v)}."
        )
        raise ValueError(msg)


class Jacobi(eqx.Module):
    """The diagonal preconditioner `P = diag(d)`, `d > 0`; see `jacobi`.

    Every method accepts a vector `(n,)` or a block of rows `(m, n)`.
    """

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
        """`P^{-1} v` (the preconditioner)."""
        return self.inverse(v)

    def inverse(self, v):
        """`P^{-1} v`."""
        _check_block(v, self.diagonal.shape[0])
        return v / self.diagonal

    def matvec(self, v):
        """`P v`."""
        _check_block(v, self.diagonal.shape[0])
        return v * self.diagonal

    def sqrt(self, v):
        """`P^{1/2} v`."""
        _check_block(v, self.diagonal.shape[0])
        return v * jnp.sqrt(self.diagonal)

    def inv_sqrt(self, v):
        """`P^{-1/2} v`."""
        _check_block(v, self.diagonal.shape[0])
        return v / jnp.sqrt(self.diagonal)

    def logdet(self):
        """`log det P`."""
        return jnp.sum(jnp.log(self.diagonal))


# f(P) = f(s) I + B phi(G) B^T for P = B B^T + s I and G = B^T B, with
# phi(lam) = (f(s + lam) - f(s)) / lam. In terms of mu = lam / s,
# phi(lam) = s^p psi(mu) with a fixed psi that is smooth at mu = 0 (no 0/0):
#   f(x) = 1/x:      p = -2,   psi(mu) = -1 / (1 + mu)
#   f(x) = x^(-1/2): p = -3/2, psi(mu) = -1 / (sqrt(1 + mu) (1 + sqrt(1 + mu)))
#   f(x) = x^(1/2):  p = -1/2, psi(mu) = 1 / (1 + sqrt(1 + mu))


def _sqrt0(x):
    """`sqrt(x)` for `x >= 0` with a zero (not infinite) gradient at 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


def _psi_inverse(mu):
    return -1 / (1 + mu)


def _psi_inv_sqrt(mu):
    r = jnp.sqrt(1 + mu)
    return -1 / (r * (1 + r))


def _psi_sqrt(mu):
    return 1 / (1 + jnp.sqrt(1 + mu))


class LowRank(eqx.Module):
    r"""The preconditioner `P = B B^T + s I` for a factor `B` (n, k) and a shift `s > 0`.

    The form of the pivoted-Cholesky (`B = L`, `s = shift`) and the Nyström
    preconditioner (see `nystrom`). Functions of `P` use the small Gram matrix
    `G = B^T B` (k, k): `f(P) v = f(s) v + B phi(G) B^T v` with
    `phi(lam) = (f(s + lam) - f(s)) / lam` evaluated as a symmetric matrix
    function of `G` (an eigendecomposition with divided-difference
    derivatives: no SVD, finite gradients at repeated or zero eigenvalues),
    and `log det P = log det(I + G / s) + n log s`. The three `k x k`
    matrices are computed once, when `P` is built (`O(n k^2 + k^3)`); an
    application then costs `O(n k)` (`O(m n k)` for a block of `m` rows). Everything is
    differentiable with respect to `factor` and `shift`.

    Attributes
    ----------
    factor
        `B`, shape `(n, k)`; its columns may be zero (e.g. past the
        numerical rank of a pivoted Cholesky factor).
    shift
        `s`, a positive scalar of the dtype of `factor` (a Python number is
        cast to it).
    pivots
        The pivot indices `(k,)` of `pivoted_cholesky`, in the order chosen;
        `None` for a `LowRank` from another constructor.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> B = jnp.array([[1.0], [1.0]])
    >>> P = LowRank(B, 1.0)  # P = [[2, 1], [1, 2]]
    >>> P.matvec(jnp.array([1.0, 0.0]))
    Array([2., 1.], dtype=float64)
    >>> jnp.allclose(P.sqrt(P.sqrt(jnp.array([1.0, 0.0]))), jnp.array([2.0, 1.0]))
    Array(True, dtype=bool)
    >>> P(jnp.eye(2))  # rows of P^{-1}
    Array([[ 0.66666667, -0.33333333],
           [-0.33333333,  0.66666667]], dtype=float64)
    >>> jnp.allclose(P.logdet(), jnp.log(3.0))
    Array(True, dtype=bool)
    """

    factor: jax.Array
    shift: jax.Array
    pivots: jax.Array | None = None
    # The k x k matrices s^p psi(G / s) of the inverse, inverse square root and
    # square root, computed once here (not once per application inside a solver's
    # loop, where XLA would repeat the eigendecompositions every step).
    _small: tuple = eqx.field(repr=False)

    def __init__(self, factor, shift, pivots=None):
        self.factor = jnp.asarray(factor)
        if isinstance(shift, int | float):
            shift = jnp.asarray(shift, self.factor.dtype)
        self.shift = jnp.asarray(shift)
        self.pivots = pivots
        B, s = self.factor, self.shift
        if B.ndim == 2 and jnp.ndim(s) == 0 and B.dtype == s.dtype:  # else: check_init
            G = (B.T @ B) / s
            self._small = tuple(
                s**power * _dense.funm_sym(psi, G)
                for power, psi in (
                    (-2, _psi_inverse),
                    (-1.5, _psi_inv_sqrt),
                    (-0.5, _psi_sqrt),
                )
            )
        else:
            self._small = ()

    def __check_init__(self):
        B, s = self.factor, self.shift
        if B.ndim != 2 or jnp.ndim(s) != 0:
            msg = (
                "`factor` must have shape (n, k) and `shift` be a scalar; got shapes "
                f"{B.shape} and {jnp.shape(s)}."
            )
            raise ValueError(msg)
        if not jnp.issubdtype(B.dtype, jnp.floating) or B.dtype != s.dtype:
            msg = (
                "`factor` and `shift` need one floating dtype; got "
                f"{B.dtype} and {s.dtype}. Cast `shift` to the dtype of `factor`."
            )
            raise TypeError(msg)

    def _funm(self, v, f_of_s, which):
        """`f(P) v = f(s) v + B M B^T v` with the precomputed `M = s^p psi(G / s)`."""
        B = self.factor
        _check_block(v, B.shape[0])
        return f_of_s * v + ((v @ B) @ self._small[which]) @ B.T

    def __call__(self, v):
        """`P^{-1} v` (the preconditioner)."""
        return self.inverse(v)

    def inverse(self, v):
        """`P^{-1} v`."""
        return self._funm(v, 1 / self.shift, 0)

    def inv_sqrt(self, v):
        """`P^{-1/2} v` (the symmetric inverse square root)."""
        return self._funm(v, jax.lax.rsqrt(self.shift), 1)

    def sqrt(self, v):
        """`P^{1/2} v` (the symmetric square root)."""
        return self._funm(v, jnp.sqrt(self.shift), 2)

    def matvec(self, v):
        """`P v`."""
        B = self.factor
        _check_block(v, B.shape[0])
        return self.shift * v + (v @ B) @ B.T

    def logdet(self):
        """`log det P = log det(I + B^T B / s) + n log s`."""
        B, s = self.factor, self.shift
        n, k = B.shape
        C = jnp.linalg.cholesky(jnp.eye(k, dtype=B.dtype) + (B.T @ B) / s)
        return 2 * jnp.sum(jnp.log(jnp.diag(C))) + n * jnp.log(s)


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


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("like"))
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
        return jnp.sum(Z * _flat.map_rows(matvec, ())(Z), axis=0)
    Z = jax.random.rademacher(key, (num_probes, n), dtype=like.dtype)
    return jnp.mean(Z * _flat.map_rows(matvec, ())(Z), axis=0)


def pivoted_cholesky(row_fn, diagonal, *, rank: int, shift) -> LowRank:
    r"""Partial pivoted Cholesky preconditioner `P = L L^T + shift I` of `K + shift I`.

    Greedily picks the `rank` pivots with the largest remaining diagonal of
    the Schur complement (each index at most once) and builds `L` (n, rank)
    from the matrix rows at the pivots, so that `L L^T = K[:, S] K[S, S]^{-1}
    K[S, :]` for the pivots `S`. Once the remaining diagonal falls to
    `eps * max(diagonal)` (numerical rank reached), further pivots add zero
    columns to `L`; they are still distinct, taken in order of the remaining
    diagonal. This is the standard preconditioner for Gaussian process kernel
    matrices `K + noise I` with a decaying spectrum (Gardner et al. 2018):
    with a modest rank it removes the large eigenvalues of `K`, so CG
    converges in far fewer iterations. Cost: `rank` rows, `O(n rank^2)`.

    Parameters
    ----------
    row_fn
        `i -> K[i, :]` for a (traced) integer index `i`, shape `(n,)`; e.g.
        `lambda i: operators.kernel_matrix(x[i][None], x)[0]`.
    diagonal
        The diagonal of `K`, shape `(n,)` (without the shift).
    rank
        Number of pivots, a static int `1 <= rank <= n`.
    shift
        The shift `s > 0` (for a GP, the noise variance).

    Returns
    -------
    LowRank
        `P` with `factor = L` (n, rank), `shift = s` and `pivots` the integer
        indices `S` (rank,) of the chosen rows, in the order chosen
        (`pivots[0]` is the argmax of `diagonal`); e.g. to rebuild the factor
        differentiably from `K[:, S]` and `K[S, S]`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from matfree import operators
    >>> x = jnp.linspace(0, 1, 20)[:, None]
    >>> K = operators.kernel_matrix(x, x)
    >>> P = pivoted_cholesky(lambda i: K[i], jnp.diag(K), rank=5, shift=1e-2)
    >>> v = jnp.ones(20)
    >>> w = P(K @ v + 1e-2 * v)
    >>> bool(jnp.linalg.norm(w - v) < 1e-2 * jnp.linalg.norm(v))
    True

    The pivots (here the two ends of the grid come first):

    >>> P.factor.shape, [int(i) for i in P.pivots[:2]]
    ((20, 5), [0, 19])

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
    shift = jnp.asarray(shift, dtype)
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
    return LowRank(L.T, shift, pivots)


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("like"))
def nystrom(matvec, like, *, key, rank: int, shift=0.0) -> LowRank:
    r"""Randomised Nyström preconditioner of `A + shift I` from `rank` matvecs.

    Computes a stable rank-`rank` Nyström approximation `U diag(lam) U^T` of
    the PSD operator `A` from a Gaussian sketch (one batched matvec) and
    returns `P = U diag(lam + shift) U^T + (lam_k + shift) (I - U U^T)`,
    i.e. the `LowRank` with `factor = U diag(lam - lam_k)^{1/2}` and
    `shift = lam_k + shift` (so `P^{-1}` is, up to the scale `lam_k + shift`
    which CG ignores, `(lam_k + shift) U (diag(lam) + shift)^{-1} U^T
    + (I - U U^T)`). Use it
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
    >>> M = P(A + jnp.eye(20)).T  # P^{-1} (A + I), applied to the rows
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
    _checks.check_key(key, "the sketch is random")
    rank = _checks.check_int(rank, "rank", maximum=n)
    shift = jnp.asarray(shift, dtype)
    Omega = jax.random.normal(key, (n, rank), dtype)
    Omega, _ = jnp.linalg.qr(Omega)
    Y = _flat.map_rows(matvec, ())(Omega.T).T
    nu = jnp.sqrt(n) * jnp.finfo(dtype).eps * jnp.linalg.norm(Y)
    Y = Y + nu * Omega
    C = jnp.linalg.cholesky((Omega.T @ Y + Y.T @ Omega) / 2)
    Bt = jax.scipy.linalg.solve_triangular(C, Y.T, lower=True)
    U, s, _ = jnp.linalg.svd(Bt.T, full_matrices=False)
    lam = jnp.maximum(s**2 - nu, 0)
    # The complement takes the smallest retained eigenvalue (Frangella et al.).
    complement = lam[-1] + shift
    complement = jnp.where(complement > 0, complement, jnp.finfo(dtype).tiny)
    gap = jnp.maximum(lam + shift, complement) - complement  # lam - lam_k, >= 0
    return LowRank(U * _sqrt0(gap), complement)
