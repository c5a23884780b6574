r"""Log-determinants and traces of matrix functions by stochastic Lanczos quadrature.

`tr f(A) = E[z^T f(A) z]` for probes with `E[z z^T] = I`, and each quadratic
form is approximated by Gauss quadrature from a Lanczos run started at `z`:
`z^T f(A) z ≈ |z|^2 e_1^T f(T) e_1` (exact for polynomials of degree
`< 2 depth`). All probes of a chunk run as one block Lanczos iteration (one
batched matvec per step); with `gradient="adjoint"` (default) gradients come
from the Lanczos adjoint and the tie-safe derivative of `f(T)` (no
backpropagation through loops), with `gradient="autodiff"` from JAX's
autodiff through the loop (forward mode too).

Three estimators of the average over probes (`method=`):

- `"hutchinson"`: the plain average of the quadratic forms (default).
- `"hutch++"`: a sketch `Q = orth(f(A) S)` takes the large eigenvalues of
  `f(A)` exactly (`tr Q^T f(A) Q` by quadrature on the columns of `Q`) and
  Hutchinson estimates the rest from projected probes (Hutch++ for matrix
  functions; Meyer, Musco, Musco, Woodruff 2021; Chen, Hallman 2023).
- `"xtrace"`: every probe serves both the sketch and the correction
  (leave-one-out; Epperly, Tropp, Webber 2024), with `f(A) Ω` and `f(A) Q`
  from Lanczos actions and the diagonal quadratic forms by quadrature.

The three estimators are implemented once (`matfree._estimators`, shared with
`matfree.trace`), given the Lanczos quadratic forms and actions of `f(A)`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from matfree import _checks, _dense, _eager, _estimators, _flat, decomp, solvers, status

__all__ = ["SLQEstimate", "logdet", "trace_funm"]

METHODS = _estimators.METHODS


class SLQEstimate(NamedTuple):
    """The result of `trace_funm` and `logdet`.

    Attributes
    ----------
    value
        The estimate of `tr f(A)` (or `log det A`), a scalar. NaN exactly
        when `status != 0` (see there).
    std_error
        Standard error of the Monte-Carlo average over probes (`0` for
        `probes="unit"`, `inf` for a single random probe). It does not
        include the quadrature (depth) error. For `method="hutch++"` it is
        the standard error of the Hutchinson part on the projected probes
        (the sketch part has no Monte-Carlo error given the sketch).
    samples
        The per-probe quadrature values `|z|^2 e_1^T f(T) e_1`, shape
        `(num_probes,)` (times `n` for unit probes). For `method="hutch++"`
        only the Hutchinson part's values for the projected probes
        `(I - QQ^T) g`, shape `(num_probes - 2 (num_probes // 3),)`; then
        `value - mean(samples)` is the sketch part `tr(Q^T f(A) Q)`.
        For `method="xtrace"` the `s = num_probes // 2` leave-one-out
        estimates of `tr f(A)`, shape `(s,)`; `value` is their mean and
        `std_error` their standard deviation over `sqrt(s)`.
    num_matvecs
        Products with the operator (a static int): `num_probes * depth` for
        `"hutchinson"` and `"hutch++"`, `2 (num_probes // 2) * depth` for
        `"xtrace"` (one less Lanczos run than `num_probes` if it is odd).
    ritz_min, ritz_max
        The smallest and largest Ritz value over all probes: bounds inside the
        spectrum of the (preconditioned) operator.
    status
        A `matfree.status` code: `0` (`OK`); `3` (`NOT_POSITIVE_DEFINITE`) a
        Ritz value is not positive although `f` needs a positive spectrum
        (`logdet`): the operator is not SPD; `4` (`NONFINITE`) non-finite
        values in the operator's output or the estimate. Then `value` and
        `std_error` are NaN. With `throw=True` a non-zero status raises.
    """

    value: jax.Array
    std_error: jax.Array
    samples: jax.Array
    num_matvecs: int
    ritz_min: jax.Array
    ritz_max: jax.Array
    status: jax.Array


@_eager.reuse_compiled(operators=("matvec", "precond"), template=_eager.first("like"))
def trace_funm(
    f,
    matvec,
    like,
    *,
    key,
    depth: int,
    num_probes: int,
    method: str = "hutchinson",
    probes: str = "rademacher",
    chunk_size: int | None = None,
    precond=None,
    positive: bool = False,
    gradient: str = "adjoint",
    throw: bool = True,
) -> SLQEstimate:
    r"""Estimate `tr f(A)` of a symmetric operator by stochastic Lanczos quadrature.

    Parameters
    ----------
    f
        A scalar function applied to eigenvalues, e.g. `jnp.log`, `jnp.exp`,
        `lambda x: x ** 2`. It must be differentiable (for gradients).
    matvec
        A JAX-traceable callable `v -> A v` of a symmetric operator
        (Hermitian for complex dtypes). Gradients reach every array it
        closes over.
    like
        A vector (array or pytree) like the ones `matvec` accepts: float32,
        float64, complex64 or complex128. For a Hermitian complex operator
        the Lanczos tridiagonal matrix is real, so the estimate is real (for
        a real `f`); the probes are real (`E[z z^H] = I`), `method` must be
        `"hutchinson"`, and gradients need `gradient="autodiff"` (see the
        docs page "Complex numbers").
    key
        A `jax.random` key for the probes (`None` only with `probes="unit"`).
    depth
        Lanczos steps per probe, a static int in `[1, n]`. The quadrature is
        exact for polynomials `f` of degree `< 2 depth`; for smooth `f` the
        error decays geometrically in `depth` at a rate set by the condition
        number (see the guide "Choosing depth and probes").
    num_probes
        Number of probes `m` (a static int `>= 1`; `>= 3` for `"hutch++"`,
        `>= 2` for `"xtrace"`). Every method spends `m` Lanczos runs of
        `depth` steps (`"xtrace"`: `2 (m // 2)`).
    method
        `"hutchinson"` (default): the average of `m` quadratic forms.
        `"hutch++"`: variance reduction for spectra of `f(A)` with a few
        large eigenvalues. A sketch of `k = m // 3` probes `S` gives
        `Q = orth(f(A) S)` (Lanczos actions, `k` runs); `tr(Q^T f(A) Q)` is
        computed by quadrature on the `k` columns of `Q` and the remaining
        `m - 2k` probes `g` estimate `tr f(A) - tr(Q^T f(A) Q)` from the
        quadratic forms of `(I - QQ^T) g`. Needs `m // 3 <= n`.
        `"xtrace"`: `s = m // 2` probes `Ω` serve both as the sketch and
        as the Hutchinson probes (leave one out; see Notes). Two Lanczos runs
        per probe: the actions `f(A) Ω` and `f(A) Q` for `Q = orth(f(A) Ω)`.
        Needs `m // 2 <= n`.
    probes
        `"rademacher"` (default), `"gaussian"`, or `"unit"` (deterministic:
        all `n` unit vectors, `num_probes == n`; with `depth == n` the result
        is exact up to rounding; `"hutchinson"` only: the sketch methods need
        random probes).
    chunk_size
        If given, the probes run in sequential chunks of this many
        (`jax.lax.map`, each chunk rematerialised in the backward pass), so
        memory is `O(n depth chunk_size)` for the value and the gradient; the
        result does not depend on it (up to rounding). An int in
        `[1, num_probes]`; default: all probes in one chunk. With `"hutch++"`
        and `"xtrace"` both stages (the sketch and the quadratic forms or
        actions) are chunked; a last incomplete chunk is padded with zero
        vectors (which cost matvecs but contribute nothing).
    precond
        Optional preconditioner: an object with `inv_sqrt(v)` (a symmetric
        `P^{-1/2} v`) and `logdet()`. Then `f` is applied to
        `P^{-1/2} A P^{-1/2}` (only meaningful for `f = log`, see `logdet`).
    positive
        If `True`, `f` needs a positive spectrum: non-positive Ritz values set
        `status = 3` (`NOT_POSITIVE_DEFINITE`; used by `logdet`).
    gradient
        `"adjoint"` (default): reverse mode through the Lanczos adjoint
        (memory independent of `depth`; `jax.jvp` raises; real dtypes only:
        for complex ones the backward pass raises a `NotImplementedError`).
        `"autodiff"`: JAX differentiates through the Lanczos loop (forward
        mode and higher derivatives too; memory grows with `depth`).
    throw
        If `True` (default), a non-zero status raises (via
        `matfree.status.error_if`, attached to every field of the result, also
        under `jit`); with `False`, inspect `status` yourself.

    Returns
    -------
    SLQEstimate

    Notes
    -----
    Memory: `O(n depth b)` for `b` probes per chunk (value and gradient).
    Matvecs: `num_probes * depth` (`2 (num_probes // 2) * depth` for
    `"xtrace"`); the gradient costs about one more pass (one batched
    matvec per adjoint step) plus VJPs of the matvec on the basis vectors
    of a chunk of probes (all steps at once for a kernel matvec, chunks of
    steps for a stencil), and a further pass with `chunk_size`
    (rematerialisation). Measured on a blocked RBF kernel matvec (depth
    30, 16 probes, quiet 2-core CPU): value+gradient 2.8x the value time at
    n = 4096, 2.5x at n = 16,384 (`benchmarks/RESULTS.md`).

    Hutch++: with `P = QQ^T`, `tr f(A) = tr(Q^T f(A) Q) + E[g^T (I - P) f(A)
    (I - P) g]` for any `Q` independent of `g`, so the estimator is unbiased
    up to the quadrature error whatever the accuracy of the sketch actions
    `f(A) S` (they only decide how much variance is removed). Its variance is
    that of Hutchinson on `(I - P) f(A) (I - P)`: small when `f(A)` has a few
    dominant eigenvalues (e.g. `log` of a low-rank-plus-identity matrix with
    large low-rank part). When `k = m // 3` is at least the rank of interest
    the remainder vanishes; with `k = n` and `depth = n` the estimate is exact.
    Gradients flow through the sketch (the QR of `f(A) S` is differentiated
    by `jnp.linalg.qr`) and the Lanczos adjoints. The "Krylov-aware" variant
    (Chen, Hallman 2023), which reuses the block Krylov space of the sketch
    for the exact part, is not implemented.

    XTrace: with `s = m // 2` probes `ω_i` (rows of `Ω`), `Y = f(A) Ω^T = QR`
    and `Q_i = orth(f(A) Ω_{-i}^T)` (leave `ω_i` out), sample `i` is
    `tr(Q_i^T f(A) Q_i) + u_i^T f(A) u_i` with `u_i = (I - Q_i Q_i^T) ω_i`;
    the estimate is their mean. `Q_i` does not depend on `ω_i`, so with exact
    actions each sample is unbiased, and all of them come from the small
    matrices `R`, `Q^T Ω^T`, `H = Q^T f(A) Q`, `Ω f(A) Q` and the diagonal of
    `Ω f(A) Ω^T` by rank-one downdates (`matfree.trace` shares this code).
    Here `f(A) Ω^T` and `f(A) Q` are Lanczos actions `|x| V^T f(T) e_1`. The
    diagonal terms `ω_i^T f(A) ω_i` and `q_j^T f(A) q_j` are taken by Gauss
    quadrature `|x|^2 e_1^T f(T) e_1` from the same runs (free; equal to
    `x^T` times the action up to rounding, exact for polynomials of degree
    `< 2 depth`). The off-diagonal terms `q_j^T f(A) q_k` (symmetrised) and
    `ω_i^T f(A) q_j` (the average of the actions on `ω_i` and on `q_j`) come
    from actions, exact only for degree `< depth`. Unlike Hutch++, whose
    sketch errors only cost variance, these action errors enter the estimate
    as a bias (measured: comparable to the quadrature bias of Hutchinson at
    the same depth; see the guide "Choosing depth and probes"). XTrace is
    exact up to rounding when `f(A)` has rank `< m // 2` (e.g. `log` of the
    identity plus a low-rank matrix) and `depth` reaches the Krylov
    dimension; like Hutch++ it pays off when `f(A)` is nearly low rank.
    Gradients flow through the QR of `f(A) Ω^T` (`jnp.linalg.qr`) and the
    Lanczos adjoints; the QR derivative needs `f(A) Ω^T` to have full column
    rank, so where `f(A)` has rank `< m // 2` the value is exact but the
    gradient is not reliable (use fewer probes or Hutch++ there).

    References
    ----------
    S. Ubaru, J. Chen, Y. Saad. Fast estimation of tr(f(A)) via stochastic
    Lanczos quadrature. SIAM J. Matrix Anal. Appl., 38(4), 2017.

    R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff. Hutch++: Optimal
    stochastic trace estimation. SOSA, 2021 (Section 5: matrix functions via
    Krylov actions).

    T. Chen, E. Hallman. Krylov-aware stochastic trace estimation. SIAM J.
    Matrix Anal. Appl., 44(3), 2023.

    E. N. Epperly, J. A. Tropp, R. J. Webber. XTrace: Making the most of every
    sample in stochastic trace estimation. SIAM J. Matrix Anal. Appl., 45(1),
    2024.

    G. H. Golub, G. Meurant. Matrices, Moments and Quadrature with
    Applications. Princeton University Press, 2010.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> A = jnp.diag(jnp.arange(1.0, 6.0))
    >>> est = trace_funm(lambda x: x**2, lambda v: A @ v, jnp.zeros(5), key=None,
    ...                  depth=5, num_probes=5, probes="unit")
    >>> jnp.round(est.value, 8)
    Array(55., dtype=float64)
    """
    _checks.check_callable(f, "f")
    _checks.check_callable(matvec)
    gradient = _checks.check_gradient(gradient)
    if precond is not None:
        matvec = _preconditioned(matvec, precond)
    _, op = _flat.flatten(matvec, like, name="like", complex_ok=True)
    depth = _checks.check_depth(depth, op.size)
    options = _estimators.check_options(
        method, probes, num_probes, op.size, op.dtype, chunk_size=chunk_size
    )
    quadform, action = _lanczos_forms(f, op, depth, gradient)
    est = _estimators.estimate(quadform, action, key, options)
    value = est.value
    if precond is not None:
        value = value + precond.logdet()
    return _result(est, value, depth, positive, throw)


def _result(est, value, depth, positive, throw):
    """The `SLQEstimate` of a core estimate: Ritz extremes, status, NaN, `throw`."""
    # Each stage (the sketch, then the quadratic forms) reports its own Ritz
    # values: NaNs from `f` of a non-positive spectrum may propagate into the
    # sketch's Q, but the sketch's Ritz values stay finite.
    stages = est.aux if isinstance(est.aux, list) else [est.aux]
    rmin = jnp.min(jnp.concatenate([a["ritz_min"] for a in stages]))
    rmax = jnp.max(jnp.concatenate([a["ritz_max"] for a in stages]))
    finite = jnp.all(jnp.concatenate([a["finite"] for a in stages]))
    finite = finite & jnp.isfinite(value) & jnp.isfinite(rmin)
    not_positive = jnp.any(
        jnp.array([jnp.isfinite(m) & (m <= 0) for m in map(_stage_min, stages)])
    )
    code = status.first(
        (positive & not_positive, status.Status.NOT_POSITIVE_DEFINITE),
        (~finite, status.Status.NONFINITE),
    )
    failed = code != status.Status.OK
    value = jnp.where(failed, jnp.nan, value)
    std_error = jnp.where(failed, jnp.nan, est.std_error)
    result = SLQEstimate(
        value, std_error, est.samples, est.num_rows * depth, rmin, rmax, code
    )
    return status.error_if(result, code) if throw else result


def _stage_min(aux):
    return jnp.min(aux["ritz_min"])


def _lanczos_forms(f, op, depth, gradient):
    """The quadratic forms and actions of `f(A)` for the estimator core.

    `quadform(Z)`: rows `z` -> `|z|^2 e_1^T f(T) e_1` (Gauss quadrature).
    `action(Z)`: rows `z` -> the Lanczos approximation `|z| V^T f(T) e_1` of
    `f(A) z` and the quadrature of `z^T f(A) z` from the same run. Both pass
    per-row Ritz extremes and finiteness flags as `aux`.
    """

    def quadform(Z):
        res, fT, aux = _lanczos_f(f, op, depth, Z, gradient)
        return res.init_norm**2 * fT[:, 0, 0], aux

    def action(Z):
        res, fT, aux = _lanczos_f(f, op, depth, Z, gradient)
        Y = res.init_norm[:, None] * jnp.einsum("bkn,bk->bn", res.basis, fT[:, :, 0])
        return Y, res.init_norm**2 * fT[:, 0, 0], aux

    return quadform, action


def _lanczos_f(f, op, depth, Zb, gradient):
    """Batched Lanczos from the rows of `Zb`; `f(T)` and per-row Ritz extremes.

    Zero start vectors (padding, or probes projected to zero) give `T = I`
    there, so `f(T)` stays finite and their contributions, scaled by
    `|z| = 0`, vanish; their Ritz values are ignored.
    """
    res = decomp.lanczos(op, Zb, depth=depth, batched=True, gradient=gradient, throw=False)
    started = res.init_norm > 0
    finite = (
        jnp.isfinite(res.init_norm)
        & jnp.all(jnp.isfinite(res.diag), axis=-1)
        & jnp.all(jnp.isfinite(res.offdiag), axis=-1)
    )
    eye = jnp.eye(depth, dtype=res.diag.dtype)
    T = jnp.where((started & finite)[:, None, None], res.tridiag(), eye)
    # One eigendecomposition for f(T) and the Ritz values.
    fT, ritz = _dense.funm_sym_eigvals(f, T)
    ritz = jax.lax.stop_gradient(ritz)
    rmin = jnp.where(started, ritz[:, 0], jnp.inf)
    rmax = jnp.where(started, ritz[:, -1], -jnp.inf)
    aux = {"ritz_min": rmin, "ritz_max": rmax, "finite": finite}
    return res, fT, aux


@_eager.reuse_compiled(operators=("matvec", "precond"), template=_eager.first("like"))
def logdet(
    matvec,
    like,
    *,
    key,
    depth: int,
    num_probes: int,
    method: str = "hutchinson",
    probes: str = "rademacher",
    chunk_size: int | None = None,
    precond=None,
    gradient: str = "adjoint",
    throw: bool = True,
) -> SLQEstimate:
    r"""Estimate `log det A` of a symmetric positive definite operator.

    Stochastic Lanczos quadrature of `tr log(A)` (see `trace_funm` for the
    parameters, the memory and the cost). If the operator turns out not to be
    SPD (a Ritz value `<= 0`), `throw=True` (default) raises; with
    `throw=False` the `status` is `3` (`NOT_POSITIVE_DEFINITE`) and the value
    is NaN.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v` of an SPD operator (Hermitian
        positive definite for complex dtypes; the log-determinant is real).
    like
        A vector (array or pytree) like the ones `matvec` accepts: float32,
        float64, complex64 or complex128 (complex: `method="hutchinson"`,
        real probes, and `gradient="autodiff"` or `"hutchinson"`).
    key
        A `jax.random` key (`None` only with `probes="unit"`).
    depth
        Lanczos steps per probe, `1 <= depth <= n`. Gradients need more depth
        than values to converge; check both (guide "Choosing depth and probes").
    num_probes
        Number of probes (Lanczos runs); the standard error falls like
        `1 / sqrt(num_probes)` (faster for the sketch methods on nearly
        low-rank `log A`).
    method
        `"hutchinson"` (default), `"hutch++"` or `"xtrace"`: variance
        reduction when `log A` has a few eigenvalues much larger in magnitude
        than the rest (e.g. identity plus a low-rank matrix with large
        eigenvalues), at about the same number of matvecs. `"xtrace"` takes
        its cross terms from Lanczos actions, whose error adds to the
        quadrature bias (little, in the measurements of the guide "Choosing
        depth and probes"). See `trace_funm`.
    probes
        `"rademacher"` (default), `"gaussian"`, or `"unit"` (`num_probes == n`,
        deterministic, exact with `depth == n`; `"hutchinson"` only).
    chunk_size
        Probes per sequential chunk (bounded memory); the result does not
        depend on it.
    precond
        Optional SPD preconditioner `P ≈ A`: an object with `inv_sqrt(v)` (the
        symmetric `P^{-1/2} v`) and `logdet()`. Uses
        `log det A = log det P + log det(P^{-1/2} A P^{-1/2})`; the second term
        has a better-conditioned spectrum near 1, so both the quadrature error
        and the variance shrink. E.g. `matfree.precond`.
    gradient
        `"adjoint"` (default, the Lanczos adjoint, reverse mode; real dtypes
        only), `"autodiff"` (through the loop; forward mode too; see
        `trace_funm`) or `"hutchinson"`: the stochastic estimate
        `d log det A = tr(A^{-1} dA) ≈ mean_i (A^{-1} z_i)^H dA z_i` with the
        same probes `z_i` as the value's Hutchinson average and one batched CG
        solve `A^{-1} z_i` (`matfree.solve`, default `rtol`, no
        preconditioner; a failed solve sets `status = 1`, `NOT_CONVERGED`).
        The value is the one of `gradient="adjoint"`; the gradient is
        unbiased up to the CG tolerance (not the derivative of the Lanczos
        estimate), and every autodiff mode works. Real and complex dtypes.
    throw
        If `True` (default), raise on a non-SPD operator or non-finite values;
        with `False`, inspect `status` (`3` not SPD, `4` non-finite).

    Returns
    -------
    SLQEstimate

    References
    ----------
    S. Ubaru, J. Chen, Y. Saad. Fast estimation of tr(f(A)) via stochastic
    Lanczos quadrature. SIAM J. Matrix Anal. Appl., 38(4), 2017.

    R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff. Hutch++: Optimal
    stochastic trace estimation. SOSA, 2021.

    E. N. Epperly, J. A. Tropp, R. J. Webber. XTrace: Making the most of every
    sample in stochastic trace estimation. SIAM J. Matrix Anal. Appl., 2024.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from matfree import matrices
    >>> A = matrices.spd_matrix(jax.random.PRNGKey(0), 50, cond=10.0)
    >>> est = logdet(lambda v: A @ v, jnp.zeros(50), key=jax.random.PRNGKey(1),
    ...              depth=15, num_probes=20)
    >>> ref = jnp.linalg.slogdet(A)[1]
    >>> bool(jnp.abs(est.value - ref) < 4 * est.std_error)
    True
    >>> est = logdet(lambda v: A @ v, jnp.zeros(50), key=jax.random.PRNGKey(1),
    ...              depth=15, num_probes=21, method="hutch++")
    >>> bool(jnp.abs(est.value - ref) < 4 * est.std_error)
    True
    >>> est = logdet(lambda v: A @ v, jnp.zeros(50), key=jax.random.PRNGKey(1),
    ...              depth=15, num_probes=20, method="xtrace")
    >>> bool(jnp.abs(est.value - ref) < 4 * est.std_error)
    True
    """
    gradient = _checks.check_gradient(gradient, GRADIENTS_LOGDET)
    inner = "autodiff" if gradient == "hutchinson" else gradient
    est = trace_funm(
        jnp.log,
        matvec,
        like,
        key=key,
        depth=depth,
        num_probes=num_probes,
        method=method,
        probes=probes,
        chunk_size=chunk_size,
        precond=precond,
        positive=True,
        gradient=inner,
        throw=throw and gradient != "hutchinson",
    )
    if gradient != "hutchinson":
        return est
    return _hutchinson_gradient(est, matvec, like, key, num_probes, probes, throw)


GRADIENTS_LOGDET = ("adjoint", "autodiff", "hutchinson")


def _hutchinson_gradient(est, matvec, like, key, num_probes, probes, throw):
    """Attach the gradient `mean_i Re (A^{-1} z_i)^H dA z_i` to a stopped value."""
    est = est._replace(
        value=jax.lax.stop_gradient(est.value),
        std_error=jax.lax.stop_gradient(est.std_error),
        samples=jax.lax.stop_gradient(est.samples),
    )
    _, op = _flat.flatten(matvec, like, name="like", complex_ok=True)
    Z = _estimators.sample_probes(key, num_probes, op.size, probes=probes, dtype=op.dtype)
    sol = solvers.solve(lambda x: op(x), Z, method="cg", batched=True, throw=False)
    W = jax.lax.stop_gradient(sol.value)
    scale = op.size / num_probes if probes == "unit" else 1.0 / num_probes
    surrogate = scale * jnp.real(jnp.sum(jnp.conj(W) * jax.vmap(op)(Z)))
    value = est.value + (surrogate - jax.lax.stop_gradient(surrogate))
    solved = jnp.all(sol.status == status.Status.OK)
    code = status.first(
        (est.status != status.Status.OK, est.status),
        (~solved, status.Status.NOT_CONVERGED),
    )
    value = jnp.where(code != status.Status.OK, jnp.nan, value)
    result = est._replace(value=value, status=code)
    return status.error_if(result, code) if throw else result


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
