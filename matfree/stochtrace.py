r"""Stochastic trace and diagonal estimation of matrix-free operators.

`trace` estimates `tr(A)` from products `A z` with random probes `z`:

- `"hutchinson"`: the sample mean of `z^T A z` (Hutchinson 1989;
  Rademacher probes minimise its variance among i.i.d. probe entries).
- `"hutch++"`: a low-rank sketch captures the large eigenvalues exactly and
  Hutchinson estimates the rest (Meyer, Musco, Musco, Woodruff 2021).
- `"xtrace"`: exchangeable low-rank-plus-Hutchinson estimator that uses
  every probe both for the sketch and for the correction (Epperly, Tropp,
  Webber 2024).

`diagonal` estimates `diag(A)` as the mean of `z * (A z)` (Bekas,
Kokiopoulou, Saad 2007).

All estimators return their standard error alongside the estimate, run every
matvec of one sketch as one batched matvec (`jax.vmap`), and are
differentiable w.r.t. every array the matvec closes over.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from matfree import _checks, _flat

__all__ = ["DiagonalEstimate", "TraceEstimate", "diagonal", "sample_probes", "trace"]

METHODS = ("hutchinson", "hutch++", "xtrace")
PROBES = ("rademacher", "gaussian", "unit")


class TraceEstimate(NamedTuple):
    """The result of `trace`.

    Attributes
    ----------
    estimate
        The trace estimate, a scalar.
    std_error
        Its estimated standard error (the sample standard deviation of the
        per-probe estimates divided by the square root of their number;
        `inf` when it cannot be estimated from a single sample; `0` for the
        deterministic `probes="unit"`).
    num_matvecs
        The number of products with the operator that were used (a static
        int).
    status
        `0` ok; `2` non-finite values (NaN or inf) in the operator's output or
        the estimate (then the estimate is not finite either).
    """

    estimate: jax.Array
    std_error: jax.Array
    num_matvecs: int
    status: jax.Array


class DiagonalEstimate(NamedTuple):
    """The result of `diagonal`.

    Attributes
    ----------
    estimate
        The estimated diagonal, shaped like `like`.
    std_error
        Entry-wise standard errors, shaped like `like`.
    num_matvecs
        The number of products with the operator that were used.
    status
        `0` ok; `2` non-finite values in the operator's output.
    """

    estimate: Any
    std_error: Any
    num_matvecs: int
    status: jax.Array


def sample_probes(key, num_probes: int, n: int, *, kind: str = "rademacher", dtype=float):
    """Return `num_probes` probe vectors of size `n`, shape `(num_probes, n)`.

    `kind` is `"rademacher"` (entries +-1), `"gaussian"` (standard normal) or
    `"unit"` (the unit vectors `e_1, ..., e_n`; needs `num_probes == n`, no
    `key`). Every kind satisfies `E[z z^T] = I` (for `"unit"`, up to the factor
    `n`, which the estimators account for).

    Examples
    --------
    >>> import jax
    >>> Z = sample_probes(jax.random.PRNGKey(0), 3, 4)
    >>> Z.shape, bool(jax.numpy.all(jax.numpy.abs(Z) == 1))
    ((3, 4), True)
    """
    kind = check_probes(kind)
    if kind == "unit":
        if num_probes != n:
            msg = (
                f'`probes="unit"` uses every unit vector and needs `num_probes` == n '
                f"= {n}; got num_probes={num_probes}. Use random probes for fewer."
            )
            raise ValueError(msg)
        return jnp.eye(n, dtype=dtype)
    check_key(key, kind)
    if kind == "rademacher":
        return jax.random.rademacher(key, (num_probes, n), dtype=dtype)
    return jax.random.normal(key, (num_probes, n), dtype=dtype)


def check_probes(kind) -> str:
    """Check the `probes` argument."""
    if kind not in PROBES:
        msg = f"`probes` must be one of {PROBES}; got {kind!r}."
        raise ValueError(msg)
    return kind


def check_key(key, kind) -> None:
    """Check that a random key was given for random probes."""
    if key is None:
        msg = (
            f'`key` is required for random probes (probes="{kind}"); pass e.g. '
            '`key=jax.random.PRNGKey(0)`, or use `probes="unit"` (deterministic).'
        )
        raise TypeError(msg)


def _mean_and_std_error(samples, deterministic: bool):
    """Sample mean over the leading axis and its standard error."""
    m = samples.shape[0]
    mean = jnp.mean(samples, axis=0)
    if deterministic:
        return mean, jnp.zeros_like(mean)
    if m == 1:
        return mean, jnp.full_like(mean, jnp.inf)
    var = jnp.sum((samples - mean) ** 2, axis=0) / (m - 1)
    return mean, jnp.sqrt(var / m)


def trace(
    matvec,
    like,
    *,
    key,
    num_probes: int,
    method: str = "hutchinson",
    probes: str = "rademacher",
    throw: bool = False,
) -> TraceEstimate:
    r"""Estimate the trace of a square operator from matrix-vector products.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v`. For `"hutch++"` and `"xtrace"`
        the estimators are designed for symmetric (ideally positive
        semi-definite) `A`; `"hutchinson"` works for any square `A`.
    like
        A vector (array or pytree) with the structure, shape and dtype that
        `matvec` accepts. Only its structure is used.
    key
        A `jax.random` key for the probes (`None` only with `probes="unit"`).
    num_probes
        The matvec budget `m` (a static int `>= 1`). `"hutchinson"` uses `m`
        probes; `"hutch++"` (`m >= 3`) sketches with `m // 3` vectors, spends
        `m // 3` products on the sketch's range and the rest on Hutchinson;
        `"xtrace"` (`m >= 2`) uses `m // 2` probes, each applied twice.
    method
        `"hutchinson"` (default), `"hutch++"` or `"xtrace"`.
    probes
        Distribution of the probe entries: `"rademacher"` (default),
        `"gaussian"`, or `"unit"` (`"hutchinson"` only, `num_probes == n`:
        the exact trace from all unit vectors).
    throw
        Raise (via `equinox.error_if`) if values are not finite, instead of
        only reporting it in `status`.

    Returns
    -------
    TraceEstimate
        `estimate`, `std_error`, `num_matvecs`, `status`.

    Notes
    -----
    Hutchinson: `tr(A) ≈ (1/m) Σ z_i^T A z_i`, variance `2 |A|_F^2 / m` for
    Gaussian and `2 (|A|_F^2 - Σ A_ii^2) / m` for Rademacher probes.

    Hutch++: with `Q = orth(A S)` for a sketch `S` of `m/3` probes,
    `tr(A) ≈ tr(Q^T A Q) + (3/m) Σ g_i^T (I - QQ^T) A (I - QQ^T) g_i`. For PSD
    `A` it needs `O(1/ε)` instead of `O(1/ε^2)` products for relative error `ε`.

    XTrace: with `s = m/2` probes `Ω` and `Q = orth(A Ω)`, it averages over `i`
    the estimates `tr(Q_i^T A Q_i) + ω_i^T (I - Q_i Q_i^T) A (I - Q_i Q_i^T)
    ω_i` with `Q_i = orth(A Ω_{-i})` (leave one out), computed from `A Ω` and
    `A Q` by rank-one downdates (no extra products). Each term is unbiased; the
    standard error is the one of the paper. XTrace needs `A Ω` to have full
    column rank (operator rank at least `m // 2`); on rank-deficient sketches it
    regularises the downdate and the estimate stays finite but the standard
    error loses meaning.

    References
    ----------
    M. F. Hutchinson. A stochastic estimator of the trace of the influence
    matrix for Laplacian smoothing splines. Commun. Stat. Simul. Comput., 1989.

    R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff. Hutch++: Optimal
    stochastic trace estimation. SOSA, 2021.

    E. N. Epperly, J. A. Tropp, R. J. Webber. XTrace: Making the most of every
    sample in stochastic trace estimation. SIAM J. Matrix Anal. Appl., 2024.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> A = jnp.diag(jnp.arange(1.0, 101.0))
    >>> est = trace(lambda v: A @ v, jnp.zeros(100), key=jax.random.PRNGKey(0),
    ...             num_probes=30, method="xtrace")
    >>> bool(jnp.abs(est.estimate - 5050.0) < 4 * est.std_error + 1e-6)
    True
    """
    _checks.check_callable(matvec)
    _, op = _flat.flatten(matvec, like, name="like")
    n = op.size
    if method not in METHODS:
        msg = f"`method` must be one of {METHODS}; got {method!r}."
        raise ValueError(msg)
    kind = check_probes(probes)
    minimum = {"hutchinson": 1, "hutch++": 3, "xtrace": 2}[method]
    num_probes = _checks.check_int(num_probes, "num_probes", minimum=minimum)
    if kind == "unit" and method != "hutchinson":
        msg = (
            '`probes="unit"` is exact and needs no variance reduction; use '
            f'`method="hutchinson"`, not {method!r}.'
        )
        raise ValueError(msg)
    mv = jax.vmap(op)  # one batched matvec per block of probes

    if method == "hutchinson":
        Z = sample_probes(key, num_probes, n, kind=kind, dtype=op.dtype)
        samples = jnp.sum(Z * mv(Z), axis=1)
        if kind == "unit":
            samples = n * samples
        est, se = _mean_and_std_error(samples, kind == "unit")
        return _trace_result(est, se, num_probes, throw)

    if method == "hutch++":
        k = num_probes // 3
        if k > n:
            msg = (
                f'`num_probes` // 3 must be at most n = {n} for `method="hutch++"`; '
                f"got num_probes={num_probes}."
            )
            raise ValueError(msg)
        key_s, key_g = jax.random.split(_check_random_key(key, kind))
        S = sample_probes(key_s, k, n, kind=kind, dtype=op.dtype)
        G = sample_probes(key_g, num_probes - 2 * k, n, kind=kind, dtype=op.dtype)
        Q, _ = jnp.linalg.qr(mv(S).T)  # (n, k)
        Qt = Q.T
        low_rank = jnp.sum(Qt * mv(Qt))
        Gp = G - (G @ Q) @ Qt  # (I - QQ^T) g, rows
        samples = jnp.sum(Gp * mv(Gp), axis=1)
        est, se = _mean_and_std_error(samples, False)
        return _trace_result(low_rank + est, se, num_probes, throw)

    # XTrace
    s = num_probes // 2
    if s > n:
        msg = (
            f'`num_probes` // 2 must be at most n = {n} for `method="xtrace"`; '
            f"got num_probes={num_probes}."
        )
        raise ValueError(msg)
    Om = sample_probes(_check_random_key(key, kind), s, n, kind=kind, dtype=op.dtype)
    samples = _xtrace_samples(mv, Om)
    est, se = _mean_and_std_error(samples, False)
    return _trace_result(est, se, 2 * s, throw)


def _status(*arrays):
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in arrays]))
    return jnp.where(finite, 0, 2).astype(jnp.int32)


def _raise_if(x, status, throw):
    if throw:
        msg = "non-finite values (NaN or inf) in the operator's output or the estimate."
        x = eqx.error_if(x, status != 0, msg)
    return x


def _trace_result(est, se, num_matvecs, throw):
    status = _status(est)
    return TraceEstimate(_raise_if(est, status, throw), se, num_matvecs, status)


def _check_random_key(key, kind):
    check_key(key, kind)
    return key


def _xtrace_samples(mv, Om):
    """Leave-one-out estimates of XTrace for probes `Om` (s, n) (rows)."""
    Y = mv(Om)  # A omega_i, rows (s, n)
    Q, R = jnp.linalg.qr(Y.T)  # (n, s), (s, s)
    Qt = Q.T
    Z = mv(Qt)  # A q_j, rows (s, n)
    d = jnp.sum(Om * Y, axis=1)
    return _xtrace_loo(R, Qt @ Om.T, Qt @ Z.T, Om @ Z.T, d)


def _xtrace_loo(R, W, H, M, d):
    r"""The `s` leave-one-out estimates of XTrace from its sketch's small matrices.

    For a symmetric `F` (`A` for `trace`, `f(A)` for `matfree.slq`), probes
    `Ω` (rows `ω_i`) and `F Ω^T = Q R` (thin QR), sample `i` is
    `tr(Q_i^T F Q_i) + u_i^T F u_i` with `Q_i = orth(F Ω_{-i}^T)` (leave one
    out) and `u_i = (I - Q_i Q_i^T) ω_i`. It needs no product with `F`
    beyond `F Ω^T` and `F Q`: `Q_i Q_i^T = Q (I - s_i s_i^T) Q^T` with `s_i`
    the normalised `i`-th column of `R^{-T}` (a rank-one downdate), so
    everything is a function of the `(s, s)` matrices below.

    Parameters
    ----------
    R
        The triangular factor of `F Ω^T = Q R`; column `i` is `Q^T F ω_i`.
    W
        `Q^T Ω^T`.
    H
        `Q^T F Q` (only its symmetric part enters).
    M
        `Ω F Q`: row `i` is `ω_i^T F Q`.
    d
        `diag(Ω F Ω^T)`, shape `(s,)`.

    Returns
    -------
    The `s` estimates, each unbiased for `tr F` when the products are exact.
    """
    # s_i: the unit vector orthogonal to the other columns of R. A (near)
    # rank-deficient sketch gets its tiny pivots floored so that R^{-T} stays
    # finite.
    diag = jnp.diagonal(R)
    floor = jnp.finfo(R.dtype).eps * jnp.max(jnp.abs(diag))
    diag_safe = jnp.where(jnp.abs(diag) > floor, diag, jnp.where(diag < 0, -floor, floor))
    R_safe = R - jnp.diag(diag) + jnp.diag(diag_safe)
    eye = jnp.eye(R.shape[0], dtype=R.dtype)
    Sm = jax.scipy.linalg.solve_triangular(R_safe, eye, trans="T", lower=False)
    Sm = Sm / jnp.linalg.norm(Sm, axis=0, keepdims=True)
    # Low-rank part: tr(Q_i^T F Q_i) = tr(H) - s_i^T H s_i.
    low_rank = jnp.trace(H) - jnp.sum(Sm * (H @ Sm), axis=0)
    # u_i = omega_i - Q v_i with v_i = w_i - s_i (s_i^T w_i), as columns of V.
    V = W - Sm * jnp.sum(Sm * W, axis=0)
    # u_i^T F u_i = omega_i^T F omega_i - omega_i^T F Q v_i - v_i^T Q^T F omega_i
    #               + v_i^T H v_i.
    cross = jnp.sum(M.T * V, axis=0) + jnp.sum(R * V, axis=0)
    return low_rank + d - cross + jnp.sum(V * (H @ V), axis=0)


def diagonal(
    matvec,
    like,
    *,
    key,
    num_probes: int,
    probes: str = "rademacher",
    throw: bool = False,
) -> DiagonalEstimate:
    r"""Estimate the diagonal of a square operator: the mean of `z ⊙ (A z)`.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v`.
    like
        A vector (array or pytree) like the ones `matvec` accepts.
    key
        A `jax.random` key (`None` only with `probes="unit"`).
    num_probes
        Number of probes (a static int `>= 1`), applied as one batched matvec.
    probes
        `"rademacher"` (default; exact for diagonal `A`), `"gaussian"`, or
        `"unit"` (`num_probes == n`; exact).
    throw
        Raise (via `equinox.error_if`) if values are not finite.

    Returns
    -------
    DiagonalEstimate
        `estimate` and `std_error` shaped like `like`, `num_matvecs`, `status`.

    Notes
    -----
    Entry `i` of the estimate has variance `Σ_{j≠i} A_ij^2 / m` for
    Rademacher probes.

    References
    ----------
    C. Bekas, E. Kokiopoulou, Y. Saad. An estimator for the diagonal of a
    matrix. Appl. Numer. Math., 2007.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> A = jnp.diag(jnp.arange(1.0, 5.0))
    >>> d = diagonal(lambda v: A @ v, jnp.zeros(4), key=jax.random.PRNGKey(0),
    ...              num_probes=2)
    >>> d.estimate
    Array([1., 2., 3., 4.], dtype=float64)
    """
    _checks.check_callable(matvec)
    _, op = _flat.flatten(matvec, like, name="like")
    kind = check_probes(probes)
    num_probes = _checks.check_int(num_probes, "num_probes")
    Z = sample_probes(key, num_probes, op.size, kind=kind, dtype=op.dtype)
    samples = Z * jax.vmap(op)(Z)
    if kind == "unit":
        samples = op.size * samples
    est, se = _mean_and_std_error(samples, kind == "unit")
    status = _status(est)
    est = _raise_if(est, status, throw)
    return DiagonalEstimate(op.unravel(est), op.unravel(se), num_probes, status)
