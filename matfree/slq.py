r"""Log-determinants and traces of matrix functions by stochastic Lanczos quadrature.

`tr f(A) = E[z^T f(A) z]` for probes with `E[z z^T] = I`, and each quadratic
form is approximated by Gauss quadrature from a Lanczos run started at `z`:
`z^T f(A) z ≈ |z|^2 e_1^T f(T) e_1` (exact for polynomials of degree
`< 2 depth`). All probes of a batch run as one block Lanczos iteration (one
batched matvec per step); gradients come from the Lanczos adjoint and the
tie-safe derivative of `f(T)` (no backpropagation through loops).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from matfree import _checks, _dense, _flat, decomp, stochtrace

__all__ = ["SLQEstimate", "logdet", "trace_funm"]

STATUS_OK = 0
STATUS_NOT_POSITIVE = 1
STATUS_NONFINITE = 2
STATUS_MESSAGES = (
    "ok",
    "Ritz values are not positive: the operator is not symmetric positive definite "
    "(log-determinant undefined).",
    "non-finite values (NaN or inf) in the operator's output or the estimate.",
)


class SLQEstimate(NamedTuple):
    """The result of `trace_funm` and `logdet`.

    Attributes
    ----------
    estimate
        The estimate of `tr f(A)` (or `log det A`), a scalar. NaN only when
        `status != 0` (see there).
    std_error
        Standard error of the Monte-Carlo average over probes (`0` for
        `probes="unit"`, `inf` for a single random probe). It does not
        include the quadrature (depth) error.
    samples
        The per-probe quadrature values `|z|^2 e_1^T f(T) e_1`, shape
        `(num_probes,)` (times `n` for unit probes).
    num_matvecs
        Products with the operator: `num_probes * depth` (a static int).
    ritz_min, ritz_max
        The smallest and largest Ritz value over all probes: bounds inside the
        spectrum of the (preconditioned) operator.
    status
        `0` ok; `1` a Ritz value is not positive although `f` needs a
        positive spectrum (`logdet`): the operator is not SPD; `2` non-finite
        values. With `throw=True` a non-zero status raises.
    """

    estimate: jax.Array
    std_error: jax.Array
    samples: jax.Array
    num_matvecs: int
    ritz_min: jax.Array
    ritz_max: jax.Array
    status: jax.Array


def trace_funm(
    f,
    matvec,
    like,
    *,
    key,
    depth: int,
    num_probes: int,
    probes: str = "rademacher",
    batch_size: int | None = None,
    precond=None,
    positive: bool = False,
    throw: bool = False,
) -> SLQEstimate:
    r"""Estimate `tr f(A)` of a symmetric operator by stochastic Lanczos quadrature.

    Parameters
    ----------
    f
        A scalar function applied to eigenvalues, e.g. `jnp.log`, `jnp.exp`,
        `lambda x: x ** 2`. It must be differentiable (for gradients).
    matvec
        A JAX-traceable callable `v -> A v` of a symmetric operator.
        Gradients reach every array it closes over.
    like
        A vector (array or pytree) like the ones `matvec` accepts.
    key
        A `jax.random` key for the probes (`None` only with `probes="unit"`).
    depth
        Lanczos steps per probe, a static int in `[1, n]`. The quadrature is
        exact for polynomials `f` of degree `< 2 depth`; for smooth `f` the
        error decays geometrically in `depth` at a rate set by the condition
        number (see the guide "Choosing depth and probes").
    num_probes
        Number of probes `m` (a static int `>= 1`).
    probes
        `"rademacher"` (default), `"gaussian"`, or `"unit"` (deterministic:
        all `n` unit vectors, `num_probes == n`; with `depth == n` the result
        is exact up to rounding).
    batch_size
        If given, the probes run in sequential batches of this size
        (`jax.lax.map`, each batch rematerialised in the backward pass), so
        memory is `O(n depth batch_size)` for the value and the gradient.
        Must divide `num_probes`. Default: all probes in one batch.
    precond
        Optional preconditioner: an object with `inv_sqrt(v)` (a symmetric
        `P^{-1/2} v`) and `logdet()`. Then `f` is applied to
        `P^{-1/2} A P^{-1/2}` (only meaningful for `f = log`, see `logdet`).
    positive
        If `True`, `f` needs a positive spectrum: non-positive Ritz values set
        `status = 1` (used by `logdet`).
    throw
        Raise (via `equinox.error_if`) on a non-zero status.

    Returns
    -------
    SLQEstimate

    Notes
    -----
    Memory: `O(n depth b)` for `b` probes per batch (value and gradient).
    Matvecs: `num_probes * depth`; the gradient costs about one more pass
    (each adjoint step is one VJP of the batched matvec), two with
    `batch_size` (rematerialisation).

    References
    ----------
    S. Ubaru, J. Chen, Y. Saad. Fast estimation of tr(f(A)) via stochastic
    Lanczos quadrature. SIAM J. Matrix Anal. Appl., 38(4), 2017.

    G. H. Golub, G. Meurant. Matrices, Moments and Quadrature with
    Applications. Princeton University Press, 2010.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> A = jnp.diag(jnp.arange(1.0, 6.0))
    >>> est = trace_funm(lambda x: x**2, lambda v: A @ v, jnp.zeros(5), key=None,
    ...                  depth=5, num_probes=5, probes="unit")
    >>> jnp.round(est.estimate, 8)
    Array(55., dtype=float64)
    """
    _checks.check_callable(f, "f")
    _checks.check_callable(matvec)
    if precond is not None:
        matvec = _preconditioned(matvec, precond)
    _, op = _flat.flatten(matvec, like, name="like")
    n = op.size
    depth = _checks.check_depth(depth, n)
    kind = stochtrace.check_probes(probes)
    num_probes = _checks.check_int(num_probes, "num_probes")
    if batch_size is None:
        batch_size = num_probes
    batch_size = _checks.check_int(batch_size, "batch_size", maximum=num_probes)
    if num_probes % batch_size:
        msg = (
            f"`batch_size` must divide `num_probes`; got num_probes={num_probes} and "
            f"batch_size={batch_size}. Choose e.g. batch_size="
            f"{_largest_divisor(num_probes, batch_size)}."
        )
        raise ValueError(msg)
    Z = stochtrace.sample_probes(key, num_probes, n, kind=kind, dtype=op.dtype)

    def quadrature(Zb):
        res = decomp.lanczos(op, Zb, depth, batched=True)
        T = res.tridiag()
        e1_fT_e1 = _dense.funm_sym(f, T)[:, 0, 0]
        ritz = jax.lax.stop_gradient(jnp.linalg.eigvalsh(T))
        return res.init_norm**2 * e1_fT_e1, ritz.min(), ritz.max(), res.status

    if batch_size == num_probes:
        samples, rmin, rmax, lstatus = quadrature(Z)
    else:
        Zb = Z.reshape(num_probes // batch_size, batch_size, n)
        samples, rmin, rmax, lstatus = jax.lax.map(jax.checkpoint(quadrature), Zb)
        samples, lstatus = samples.reshape(-1), lstatus.reshape(-1)
    rmin, rmax = jnp.min(rmin), jnp.max(rmax)
    if kind == "unit":
        samples = n * samples
    est, se = stochtrace._mean_and_std_error(samples, kind == "unit")
    if precond is not None:
        est = est + precond.logdet()
    finite = jnp.isfinite(est) & jnp.all(lstatus != 2) & jnp.isfinite(rmin)
    status = jnp.where(finite, STATUS_OK, STATUS_NONFINITE)
    if positive:
        not_positive = jnp.isfinite(rmin) & (rmin <= 0)
        status = jnp.where(not_positive, STATUS_NOT_POSITIVE, status)
    status = status.astype(jnp.int32)
    if throw:
        est = eqx.branched_error_if(est, status != 0, status, STATUS_MESSAGES)
    return SLQEstimate(est, se, samples, num_probes * depth, rmin, rmax, status)


def logdet(
    matvec,
    like,
    *,
    key,
    depth: int,
    num_probes: int,
    probes: str = "rademacher",
    batch_size: int | None = None,
    precond=None,
    throw: bool = False,
) -> SLQEstimate:
    r"""Estimate `log det A` of a symmetric positive definite operator.

    Stochastic Lanczos quadrature of `tr log(A)` (see `trace_funm` for the
    parameters, the memory and the cost). If the operator turns out not to be
    SPD (a Ritz value `<= 0`), `status` is `1` and the estimate is NaN;
    `throw=True` raises instead.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v` of an SPD operator.
    like
        A vector (array or pytree) like the ones `matvec` accepts.
    key
        A `jax.random` key (`None` only with `probes="unit"`).
    depth
        Lanczos steps per probe, `1 <= depth <= n`. Gradients need more depth
        than values to converge; check both (guide "Choosing depth and probes").
    num_probes
        Number of probes; the standard error falls like `1 / sqrt(num_probes)`.
    probes
        `"rademacher"` (default), `"gaussian"`, or `"unit"` (`num_probes == n`,
        deterministic, exact with `depth == n`).
    batch_size
        Probes per sequential batch (bounded memory), dividing `num_probes`.
    precond
        Optional SPD preconditioner `P ≈ A`: an object with `inv_sqrt(v)` (the
        symmetric `P^{-1/2} v`) and `logdet()`. Uses
        `log det A = log det P + log det(P^{-1/2} A P^{-1/2})`; the second term
        has a better-conditioned spectrum near 1, so both the quadrature error
        and the variance shrink. E.g. `matfree.precond`.
    throw
        Raise on a non-SPD operator or non-finite values.

    Returns
    -------
    SLQEstimate

    References
    ----------
    S. Ubaru, J. Chen, Y. Saad. Fast estimation of tr(f(A)) via stochastic
    Lanczos quadrature. SIAM J. Matrix Anal. Appl., 38(4), 2017.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from matfree import test_util
    >>> A = test_util.spd_matrix(jax.random.PRNGKey(0), 50, cond=10.0)
    >>> est = logdet(lambda v: A @ v, jnp.zeros(50), key=jax.random.PRNGKey(1),
    ...              depth=15, num_probes=20)
    >>> ref = jnp.linalg.slogdet(A)[1]
    >>> bool(jnp.abs(est.estimate - ref) < 4 * est.std_error)
    True
    """
    return trace_funm(
        jnp.log,
        matvec,
        like,
        key=key,
        depth=depth,
        num_probes=num_probes,
        probes=probes,
        batch_size=batch_size,
        precond=precond,
        positive=True,
        throw=throw,
    )


def _preconditioned(matvec, precond):
    for name in ("inv_sqrt", "logdet"):
        if not callable(getattr(precond, name, None)):
            msg = (
                f"`precond` must have methods `inv_sqrt(v)` and `logdet()`; "
                f"{type(precond).__name__} has no `{name}`. Use e.g. "
                "`matfree.precond.jacobi(...)`."
            )
            raise TypeError(msg)

    def mv(v):
        return precond.inv_sqrt(matvec(precond.inv_sqrt(v)))

    return mv


def _largest_divisor(m: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if m % d == 0)
