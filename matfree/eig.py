r"""Eigenvalues of symmetric matrix-free operators: extreme pairs and spectral densities.

- `extreme`: a few largest or smallest eigenpairs from one Lanczos run, with
  Ritz residual norms and a convergence flag per pair.
- `spectral_density`: a smoothed estimate of the eigenvalue density by
  stochastic Lanczos quadrature, e.g. for plotting Hessian spectra.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp

from matfree import _checks, _eager, _flat, decomp, status, stochtrace
from matfree.status import Status

__all__ = ["Eigenpairs", "SpectralDensity", "extreme", "spectral_density"]


class Eigenpairs(NamedTuple):
    """The result of `extreme`.

    Attributes
    ----------
    eigenvalues
        Ritz values, shape `(k,)`, ordered from the extreme inwards (descending
        for `which="largest"`, ascending for `which="smallest"`).
    eigenvectors
        Ritz vectors (unit norm), shape `(k, n)`; for pytree vectors a pytree
        like `v0` with a leading axis `k`.
    residual_norms
        `|A y - θ y|` for each pair, shape `(k,)`, computed from the Lanczos
        relation as `|r| |e_depth^T s|` (no extra matvecs).
    converged
        `residual_norms <= tol * max(|θ|)`, shape `(k,)`.
    num_matvecs
        Products with the operator (`depth`, times the number of start
        vectors with `block=True`).
    max_multiplicity
        The number of start vectors `p` (1 unless `block=True`): Lanczos from
        `p` vectors finds at most `p` copies of a repeated eigenvalue. With
        `p = 1` a second copy is not found and the next value returned is the
        next *distinct* eigenvalue; each returned pair is still a true,
        converged eigenpair (`converged` cannot see the missing copy), so the
        list of the `k` extreme eigenvalues is only complete up to
        multiplicity `max_multiplicity`.
    status
        A `matfree.status.Status` code: `OK`; `ZERO_VECTOR` (`v0` is zero;
        all other fields but `num_matvecs` are NaN or False); `NONFINITE`
        (NaN or inf in `v0` or the operator's output; NaN results);
        `NOT_CONVERGED` (some pair misses `tol`; the values are returned).
    """

    eigenvalues: jax.Array
    eigenvectors: Any
    residual_norms: jax.Array
    converged: jax.Array
    num_matvecs: int
    max_multiplicity: int
    status: jax.Array


class SpectralDensity(NamedTuple):
    """The result of `spectral_density`.

    Attributes
    ----------
    grid
        Points `t` at which the density is evaluated, shape `(num_points,)`.
    density
        Estimated density of the eigenvalue distribution `(1/n) Σ_i δ(t - λ_i)`
        convolved with a Gaussian of standard deviation `smoothing`, on `grid`;
        it integrates to about 1.
    nodes
        Gauss quadrature nodes (Ritz values) per probe, shape `(m, depth)`.
    weights
        Quadrature weights per probe, shape `(m, depth)`, scaled so that their
        total over all probes averages to 1.
    smoothing
        The Gaussian standard deviation used.
    status
        A `matfree.status.Status` code: `OK` or `NONFINITE` (NaN or inf in the
        operator's output or the density; the density is then NaN).
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array
    smoothing: jax.Array
    status: jax.Array


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("v0", batched="block"))
def extreme(
    matvec,
    v0,
    *,
    num_eigenpairs: int,
    depth: int,
    which: str = "largest",
    tol=None,
    block: bool = False,
    gradient: str = "adjoint",
    throw: bool = True,
) -> Eigenpairs:
    r"""A few extreme eigenpairs of a symmetric operator by the Lanczos method.

    Runs `depth` Lanczos steps (full re-orthogonalisation) from `v0` and
    returns the `k` extreme Ritz pairs with their residual norms. Extreme,
    well-separated eigenvalues converge first; the Ritz values approach the
    eigenvalues from inside the spectrum, with error proportional to the
    squared residual over the gap to the rest of the spectrum. Increase `depth`
    until `converged` holds (there is no restart). A single start vector finds
    one copy of a multiple eigenvalue: the next Ritz value returned is the next
    distinct eigenvalue. To resolve multiplicities up to `p`, start from `p`
    vectors (`block=True`, block Lanczos); the result's `max_multiplicity`
    says which case you are in.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v` of a symmetric operator.
    v0
        The start vector (array or pytree). A random vector is a good choice;
        it must not be orthogonal to the wanted eigenvectors. With
        `block=True`, `p` start vectors along a leading axis (shape `(p, n)`).
        Floating or complex dtypes: for a complex (Hermitian) operator the
        eigenvalues and residual norms are real and the eigenvectors complex
        (each up to a phase); `gradient="adjoint"` is then real-only (its
        backward pass raises), use `gradient="autodiff"`.
    num_eigenpairs
        Number of eigenpairs `k`, a static int with `1 <= k <= depth`.
    depth
        Krylov depth, a static int with `1 <= depth <= n`.
    which
        `"largest"` (algebraically largest, default) or `"smallest"`.
    tol
        Relative residual tolerance of `converged`: `|A y - θ y| <= tol |θ|_max`.
        Default `sqrt(eps)` of the dtype.
    block
        If `True`, `v0` holds `p` start vectors along a leading axis and the
        iteration is block Lanczos: `depth` block steps of `p` matvecs each,
        a basis of `depth p` vectors (full re-orthogonalisation, deflation of
        dependent directions), Rayleigh–Ritz on it, exact residual norms.
        It finds eigenvalues of multiplicity up to `p`. Then `depth` may be at
        most `n // p`, and `num_eigenpairs` at most `depth p`. Derivatives of
        the block path are taken through its loop (`gradient` is not used).
    gradient
        How the Lanczos decomposition is differentiated: `"adjoint"` (default,
        reverse mode, memory `O(n depth)`) or `"autodiff"` (through the loop;
        forward mode too). See `matfree.decomp.lanczos`.
    throw
        If `True` (default), a non-zero `status` (a pair did not converge, a
        zero start vector, non-finite values) raises via
        `matfree.status.error_if`, also under `jit`, whichever field is read.

    Returns
    -------
    Eigenpairs

    Notes
    -----
    Eigenvalues are differentiable (through the Lanczos adjoint and the
    eigendecomposition of the tridiagonal matrix) when they are simple.

    References
    ----------
    C. Lanczos. An iteration method for the solution of the eigenvalue problem
    of linear differential and integral operators. J. Res. Nat. Bur. Std., 1950.

    B. N. Parlett. The Symmetric Eigenvalue Problem. SIAM, 1998 (Ch. 13).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> d = jnp.linspace(0.0, 1.0, 100).at[-2:].set(jnp.array([2.0, 3.0]))
    >>> res = extreme(lambda v: d * v, jnp.ones(100), num_eigenpairs=2, depth=30)
    >>> jnp.round(res.eigenvalues, 10), res.converged
    (Array([3., 2.], dtype=float64), Array([ True,  True], dtype=bool))
    """
    _checks.check_callable(matvec)
    _checks.check_choice(which, "which", ("largest", "smallest"))
    gradient = _checks.check_gradient(gradient, allowed=("adjoint", "autodiff"))
    if block:
        return _extreme_block(matvec, v0, num_eigenpairs, depth, which, tol, throw)
    _, op = _flat.flatten(matvec, v0, name="v0", complex_ok=True)
    depth = _checks.check_depth(depth, op.size)
    k = _checks.check_int(num_eigenpairs, "num_eigenpairs", maximum=depth)
    res = decomp.lanczos(matvec, v0, depth=depth, gradient=gradient, throw=False)
    failed = res.status != Status.OK
    # Keep eigh away from NaN (zero or non-finite v0); the outputs become NaN.
    # T is real also for a complex (Hermitian) operator.
    T = jnp.where(failed, jnp.eye(depth, dtype=res.diag.dtype), res.tridiag())
    Q = jax.vmap(lambda q: jax.flatten_util.ravel_pytree(q)[0])(res.basis)
    theta, S = jnp.linalg.eigh(T)
    if which == "largest":
        theta, S = theta[::-1], S[:, ::-1]
    theta, S = theta[:k], S[:, :k]
    Y = S.T @ Q  # (k, n)
    resid = _flat.safe_norm(jax.flatten_util.ravel_pytree(res.residual)[0]) * jnp.abs(S[-1])
    if tol is None:
        tol = jnp.sqrt(jnp.finfo(op.dtype).eps)
    scale = jnp.max(jnp.abs(theta))
    converged = (resid <= tol * scale) & ~failed
    theta, Y, resid = (jnp.where(failed, jnp.nan, x) for x in (theta, Y, resid))
    code = status.first((failed, res.status), (~jnp.all(converged), Status.NOT_CONVERGED))
    vectors = _flat.unravel_rows(op, Y)
    result = Eigenpairs(theta, vectors, resid, converged, depth, 1, code)
    return status.error_if(result, code) if throw else result


def _extreme_block(matvec, V0, num_eigenpairs, depth, which, tol, throw):
    """`extreme` with `p` start vectors: block Lanczos and Rayleigh–Ritz."""
    leaves = jax.tree_util.tree_leaves(V0)
    if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
        msg = "`v0` must carry a leading axis of start vectors with `block=True`."
        raise ValueError(msg)
    p = int(jnp.shape(leaves[0])[0])
    if any(jnp.shape(x)[0] != p for x in leaves):
        msg = "Every leaf of `v0` must have the same leading axis (the start vectors)."
        raise ValueError(msg)
    first = jax.tree_util.tree_map(lambda x: x[0], V0)
    _, op = _flat.flatten(matvec, first, name="v0[0]", complex_ok=True)
    n = op.size
    depth = _checks.check_int(depth, "depth", maximum=max(n // p, 1))
    k = _checks.check_int(num_eigenpairs, "num_eigenpairs", maximum=depth * p)
    V = jax.vmap(lambda v: jax.flatten_util.ravel_pytree(v)[0])(V0)  # (p, n)
    basis, images, valid = _block_lanczos(op, V, depth)
    finite = jnp.all(jnp.isfinite(V)) & jnp.all(jnp.isfinite(images))
    finite = finite & jnp.all(jnp.isfinite(basis))
    empty = ~jnp.any(valid)
    failed = empty | ~finite
    basis = jnp.where(failed, 0, basis)
    images = jnp.where(failed, 0, images)
    T = jnp.conj(basis) @ images.T  # <b_i, A b_j>, Hermitian
    T = 0.5 * (T + jnp.conj(T.T))
    # Deflated (zero) basis rows give spurious zero Ritz values: move them to
    # the far end of the spectrum, away from the wanted one.
    far = 1 + 2 * jnp.max(jnp.abs(T))
    far = -far if which == "largest" else far
    T = T + jnp.diag(jnp.where(valid, 0, far))
    theta, S = jnp.linalg.eigh(T)
    if which == "largest":
        theta, S = theta[::-1], S[:, ::-1]
    theta, S = theta[:k], S[:, :k]
    real = jnp.arange(k) < jnp.sum(valid)  # pairs from the valid subspace
    Y = S.T @ basis
    resid = _flat.safe_norm(S.T @ images - theta[:, None] * Y)
    if tol is None:
        tol = jnp.sqrt(jnp.finfo(op.dtype).eps)
    scale = jnp.max(jnp.where(real, jnp.abs(theta), 0))
    converged = (resid <= tol * scale) & real & ~failed
    bad = failed | ~real
    theta = jnp.where(bad, jnp.nan, theta)
    resid = jnp.where(bad, jnp.nan, resid)
    Y = jnp.where(bad[:, None], jnp.nan, Y)
    code = status.first(
        (empty & finite, Status.ZERO_VECTOR),
        (~finite, Status.NONFINITE),
        (~jnp.all(converged), Status.NOT_CONVERGED),
    )
    vectors = _flat.unravel_rows(op, Y)
    result = Eigenpairs(theta, vectors, resid, converged, depth * p, p, code)
    return status.error_if(result, code) if throw else result


def _block_lanczos(op, V, depth):
    """Block Krylov basis of `depth` blocks from the rows of `V`, and its images.

    Returns `(basis, images, valid)`: orthonormal rows `(depth p, n)` (zero
    where a direction was deflated), `A` applied to each row, and the mask of
    non-deflated rows. Full re-orthogonalisation (twice) against all earlier
    blocks keeps the basis orthonormal to rounding.
    """
    p, n = V.shape
    m = depth * p
    eps = jnp.finfo(V.dtype).eps

    def orthonormalise(W, basis):
        for _ in range(2):
            W = W - (W @ jnp.conj(basis.T)) @ basis
        norms = _flat.safe_norm(W)
        Q, R = jnp.linalg.qr(W.T)
        scale = jnp.maximum(jnp.max(norms), jnp.finfo(V.dtype).tiny)
        keep = jnp.abs(jnp.diagonal(R)) > 100 * eps * n * scale
        keep = keep & (jnp.max(norms) > 0)
        return jnp.where(keep[:, None], Q.T, 0), keep

    basis = jnp.zeros((m + p, n), V.dtype)
    images = jnp.zeros((m, n), V.dtype)
    valid = jnp.zeros((m + p,), bool)
    Q0, keep0 = orthonormalise(V, basis)
    basis = basis.at[:p].set(Q0)
    valid = valid.at[:p].set(keep0)

    def step(i, carry):
        basis, images, valid = carry
        Qi = jax.lax.dynamic_slice_in_dim(basis, i * p, p)
        W = op.rows(Qi)
        images = jax.lax.dynamic_update_slice_in_dim(images, W, i * p, 0)
        Qn, keep = orthonormalise(W, basis)
        basis = jax.lax.dynamic_update_slice_in_dim(basis, Qn, (i + 1) * p, 0)
        valid = jax.lax.dynamic_update_slice_in_dim(valid, keep, (i + 1) * p, 0)
        return basis, images, valid

    basis, images, valid = jax.lax.fori_loop(0, depth, step, (basis, images, valid))
    return basis[:m], images, valid[:m]


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("like"))
def spectral_density(
    matvec,
    like,
    *,
    key,
    depth: int,
    num_probes: int,
    grid=256,
    smoothing=None,
    probes: str = "rademacher",
    throw: bool = True,
) -> SpectralDensity:
    r"""Estimate the spectral density of a symmetric operator by Lanczos quadrature.

    For each probe `z`, Lanczos gives nodes `θ_j` (Ritz values) and weights
    `|z|^2 s_{1j}^2 / n` of the Gauss quadrature of the measure
    `z^T δ(t - A) z / n`; their average over probes is an unbiased estimate of
    the eigenvalue distribution `(1/n) Σ_i δ(t - λ_i)` at the resolution of the
    quadrature. Convolving with a Gaussian of width `smoothing` gives a density
    to plot (e.g. of a neural-network Hessian).

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v` of a symmetric operator.
    like
        A vector (array or pytree) like the ones `matvec` accepts; floating or
        complex dtypes (a Hermitian operator: real nodes, weights and density;
        real probes).
    key
        A `jax.random` key for the probes.
    depth
        Lanczos steps per probe (`1 <= depth <= n`); the density resolves
        features of width about `(λ_max - λ_min) / depth`.
    num_probes
        Number of probes (one batched Lanczos run).
    grid
        Evaluation points (a 1-D array), or an int: that many equispaced points
        covering the Ritz values plus three `smoothing` widths (default 256).
    smoothing
        Standard deviation of the Gaussian kernel (a scalar). Default: 1 % of
        the width of the estimated spectrum.
    probes
        `"rademacher"` (default) or `"gaussian"`.
    throw
        If `True` (default), a non-zero `status` (non-finite values) raises via
        `matfree.status.error_if`, also under `jit`, whichever field is read.

    Returns
    -------
    SpectralDensity

    References
    ----------
    L. Lin, Y. Saad, C. Yang. Approximating spectral densities of large
    matrices. SIAM Review, 58(1), 2016.

    B. Ghorbani, S. Krishnan, Y. Xiao. An investigation into neural net
    optimization via Hessian eigenvalue density. ICML, 2019.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> A = jnp.diag(jnp.linspace(0.0, 1.0, 200))
    >>> sd = spectral_density(lambda v: A @ v, jnp.zeros(200),
    ...                       key=jax.random.PRNGKey(0), depth=30, num_probes=10)
    >>> area = jnp.sum(sd.density) * (sd.grid[1] - sd.grid[0])
    >>> bool(jnp.abs(area - 1.0) < 1e-2)
    True
    """
    _checks.check_callable(matvec)
    _, op = _flat.flatten(matvec, like, name="like", complex_ok=True)
    real = _flat.real_dtype(op.dtype)  # nodes, weights, grid: real also for complex
    n = op.size
    depth = _checks.check_depth(depth, n)
    num_probes = _checks.check_int(num_probes, "num_probes")
    _checks.check_choice(probes, "probes", ("rademacher", "gaussian"))
    _checks.check_key(key)
    if isinstance(grid, int) and not isinstance(grid, bool):
        num_points = _checks.check_int(grid, "grid", minimum=2)
    else:
        num_points = None
        grid = jnp.asarray(grid, real)
        if grid.ndim != 1:
            msg = f"`grid` must be an int or a 1-D array of points; got shape {grid.shape}."
            raise ValueError(msg)
    Z = stochtrace.sample_probes(key, num_probes, n, probes=probes, dtype=op.dtype)
    res = decomp.lanczos(op, Z, depth=depth, batched=True, throw=False)
    finite = jnp.all(res.status == Status.OK)
    # Keep the (batched) eigh away from NaN; the density becomes NaN below.
    T = jnp.where(finite, res.tridiag(), jnp.eye(depth, dtype=real))
    nodes, S = jnp.linalg.eigh(T)
    weights = (res.init_norm**2 / n)[:, None] * S[:, 0, :] ** 2
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    if smoothing is None:
        smoothing = 0.01 * jnp.maximum(hi - lo, jnp.finfo(real).tiny ** 0.5)
    smoothing = jnp.asarray(smoothing, real)
    if num_points is not None:
        grid = jnp.linspace(lo - 3 * smoothing, hi + 3 * smoothing, num_points)
    u = (grid[:, None] - nodes.reshape(-1)[None, :]) / smoothing
    kern = jnp.exp(-0.5 * u**2) / (smoothing * jnp.sqrt(2 * jnp.pi))
    density = kern @ weights.reshape(-1) / num_probes
    finite = finite & jnp.all(jnp.isfinite(density))
    density = jnp.where(finite, density, jnp.nan)
    code = status.first((~finite, Status.NONFINITE))
    result = SpectralDensity(grid, density, nodes, weights, smoothing, code)
    return status.error_if(result, code) if throw else result
