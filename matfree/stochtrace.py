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
differentiable w.r.t. every array the matvec closes over. The estimators are
implemented once (in `matfree._estimators`) and shared with `matfree.slq`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from matfree import _checks, _eager, _estimators, _flat, status
from matfree._estimators import sample_probes

__all__ = ["DiagonalEstimate", "TraceEstimate", "diagonal", "sample_probes", "trace"]

METHODS = _estimators.METHODS
PROBES = _estimators.PROBES


class TraceEstimate(NamedTuple):
    """The result of `trace`.

    Attributes
    ----------
    value
        The trace estimate, a scalar (NaN when `status != 0`).
    std_error
        Its estimated standard error (the sample standard deviation of the
        per-probe estimates divided by the square root of their number;
        `inf` when it cannot be estimated from a single sample; `0` for the
        deterministic `probes="unit"`).
    num_matvecs
        The number of products with the operator that were used (a static
        int).
    status
        A `matfree.status` code: `0` (`OK`) or `4` (`NONFINITE`: NaN or inf
        in the operator's output or the estimate; then `value` is NaN). With
        `throw=True` a non-zero status raises.
    """

    value: jax.Array
    std_error: jax.Array
    num_matvecs: int
    status: jax.Array


class DiagonalEstimate(NamedTuple):
    """The result of `diagonal`.

    Attributes
    ----------
    value
        The estimated diagonal, shaped like `like` (NaN when `status != 0`).
    std_error
        Entry-wise standard errors, shaped like `like`.
    num_matvecs
        The number of products with the operator that were used.
    status
        `0` (`OK`) or `4` (`NONFINITE`: non-finite values in the operator's
        output). With `throw=True` a non-zero status raises.
    """

    value: Any
    std_error: Any
    num_matvecs: int
    status: jax.Array


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("like"))
def trace(
    matvec,
    like,
    *,
    key,
    num_probes: int,
    method: str = "hutchinson",
    probes: str = "rademacher",
    throw: bool = True,
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
        `matvec` accepts. Only its structure is used. Floating or complex
        dtypes; for a complex operator the trace is complex, the probes are
        real (unbiased: `E[z z^T] = I`) and `method="hutchinson"` is required
        (see the docs page "Complex numbers").
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
        If `True` (default), a non-zero status raises (via
        `matfree.status.error_if`, attached to every field of the result, also
        under `jit`). With `False`, inspect `status` yourself.

    Returns
    -------
    TraceEstimate
        `value`, `std_error`, `num_matvecs`, `status`.

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
    >>> bool(jnp.abs(est.value - 5050.0) < 4 * est.std_error + 1e-6)
    True
    """
    _checks.check_callable(matvec)
    _, op = _flat.flatten(matvec, like, name="like", complex_ok=True)
    options = _estimators.check_options(method, probes, num_probes, op.size, op.dtype)
    mv = jax.vmap(op)  # one batched matvec per block of probes

    def quadform(Z):
        return jnp.sum(Z * mv(Z), axis=1), None

    def action(Z):
        AZ = mv(Z)
        return AZ, jnp.sum(Z * AZ, axis=1), None

    est = _estimators.estimate(quadform, action, key, options)
    code = status.first((~jnp.isfinite(est.value), status.Status.NONFINITE))
    value, se = _nan_if(code, est.value, est.std_error)
    result = TraceEstimate(value, se, est.num_rows, code)
    return status.error_if(result, code) if throw else result


def _nan_if(code, *arrays):
    """Set `arrays` to NaN where `code` is non-zero (a result that was not computed)."""
    return tuple(jnp.where(code != 0, jnp.nan, a) for a in arrays)


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("like"))
def diagonal(
    matvec,
    like,
    *,
    key,
    num_probes: int,
    probes: str = "rademacher",
    throw: bool = True,
) -> DiagonalEstimate:
    r"""Estimate the diagonal of a square operator: the mean of `z ⊙ (A z)`.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v`.
    like
        A vector (array or pytree) like the ones `matvec` accepts; floating or
        complex dtypes (complex operators: real probes, complex diagonal).
    key
        A `jax.random` key (`None` only with `probes="unit"`).
    num_probes
        Number of probes (a static int `>= 1`), applied as one batched matvec.
    probes
        `"rademacher"` (default; exact for diagonal `A`), `"gaussian"`, or
        `"unit"` (`num_probes == n`; exact).
    throw
        If `True` (default), a non-zero status raises (attached to every field
        of the result); with `False`, inspect `status` yourself.

    Returns
    -------
    DiagonalEstimate
        `value` and `std_error` shaped like `like`, `num_matvecs`, `status`.

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
    >>> d.value
    Array([1., 2., 3., 4.], dtype=float64)
    """
    _checks.check_callable(matvec)
    _, op = _flat.flatten(matvec, like, name="like", complex_ok=True)
    options = _estimators.check_options("hutchinson", probes, num_probes, op.size)
    probes, num_probes = options.probes, options.num_probes
    Z = sample_probes(key, num_probes, op.size, probes=probes, dtype=op.dtype)
    samples = Z * jax.vmap(op)(Z)
    if probes == "unit":
        samples = op.size * samples
    mean, se = _estimators.mean_and_std_error(samples, deterministic=probes == "unit")
    code = status.first((~jnp.all(jnp.isfinite(mean)), status.Status.NONFINITE))
    mean, se = _nan_if(code, mean, se)
    result = DiagonalEstimate(op.unravel(mean), op.unravel(se), num_probes, code)
    return status.error_if(result, code) if throw else result
