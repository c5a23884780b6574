"""`exp_action`: expm(tA) v by Krylov time stepping with error estimates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from matfree import _adjoint, _checks, _dense, _eager, _flat, decomp, status
from matfree._flat import safe_norm
from matfree.funm import _common, _two_sided
from matfree.funm._common import FunmResult
from matfree.status import Status

# Candidate step sizes in the adaptive mode: remaining * RATIO**j, j < NUM.
_CANDIDATE_RATIO = 0.5**0.5
_NUM_CANDIDATES = 16


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("v"))
def exp_action(
    matvec,
    v,
    *,
    t=1.0,
    depth: int,
    symmetric: bool = False,
    num_substeps: int = 1,
    tol=None,
    reortho: bool = True,
    gradient: str = "adjoint",
    throw: bool = True,
) -> FunmResult:
    r"""Compute `expm(t A) v` by Krylov projections over substeps of `[0, t]`.

    Each substep of length `tau` runs `depth` Arnoldi (or, with
    `symmetric=True`, Lanczos) steps from the current vector `w` and sets
    `w <- |w| Q^T expm(tau H) e_1`. The small exponential is computed by
    scaling-and-squaring Padé (`jax.scipy.linalg.expm`) for Arnoldi, and by the
    eigendecomposition of the tridiagonal matrix (tie-safe derivatives) for
    Lanczos. Each substep also evaluates Saad's a-posteriori estimate of its
    error, `|w| h_{k+1,k} tau |e_k^T phi_1(tau H) e_1|`
    (`phi_1(z) = (e^z - 1)/z`), the leading term of the error expansion and an
    upper bound for dissipative operators whose residual keeps its sign
    (Saad 1992; Hochbruck, Lubich, Selhofer 1998).

    Gradients w.r.t. `v`, `t` and every array `matvec` closes over come from
    two-sided rules that differentiate `expm(tA) v` itself, not its Krylov
    approximation: for `symmetric=True` a second Lanczos run on the cotangent
    (as in `funm_action`); otherwise a second Arnoldi run on `A^T` (a VJP of
    the matvec) from the cotangent `ybar` gives `vbar = expm(tau A^T) ybar`,
    and the operator's cotangent, the time integral
    `int_0^tau expm((tau-s) A^T) ybar (expm(s A) v)^T ds`, comes from the
    block-triangular exponential of the two Hessenberg matrices and one VJP of
    the matvec over the `depth` basis vectors. The backward pass estimates the
    adjoint's error like the value's (Saad's estimate for `expm(tau A^T) ybar`)
    and, with `throw=True`, raises if it exceeds 100 times `tol` (without
    `tol`: 100 times the value's estimate, and `sqrt(eps)`): a cotangent with
    more weight on the stiff modes than `v` needs more substeps. With several
    substeps each substep is checkpointed, so gradient memory is
    `O(n (depth + num_substeps))`, at the price of recomputing each substep's
    forward pass in the backward pass.

    Parameters
    ----------
    matvec
        JAX-traceable `v -> A v` of a square operator.
    v
        Vector, shape `(n,)` or a pytree, of a floating or complex dtype. For
        the Schrödinger-type `expm(-i t H) v` with Hermitian `H`, pass the
        matvec of `-1j * H` and a complex `v` (the default Arnoldi path), or
        use `funm_action(lambda lam: jnp.exp(-1j * t * lam), ...)` with the
        matvec of `H` (Lanczos). See the docs page "Complex numbers".
    t
        Time, a real scalar `>= 0` (may be traced and differentiated).
    depth
        Krylov depth per substep, static, `1 <= depth <= n`.
    symmetric
        Use Lanczos (cheaper) for a symmetric (complex: Hermitian) operator; a
        two-matvec check reports generic non-symmetry as status
        `NOT_SYMMETRIC`.
    num_substeps
        Static int `s >= 1`. Without `tol`: `[0, t]` is split into `s` equal
        substeps. With `tol`: the maximum number of adaptive substeps. Pick it
        from an estimate of `|A|` (e.g. Gershgorin, or the largest Ritz value):
        for a symmetric operator with spectrum of width `|A|`, a substep of
        length `tau` reaches relative error `delta` at depth `k` if
        `tau |A| <= 4 k^2 / (5 log(10 / delta))` (Hochbruck–Lubich bound), so
        `s = ceil(t |A| 5 log(10 / delta) / (4 k^2))` suffices; e.g. depth 40,
        `delta = 1e-10`: `s = ceil(t |A| / 50)`. For non-normal operators take
        more.
    tol
        `None` (default) or a relative tolerance (scalar, may be traced). With
        `tol`, each substep takes the longest step among
        `remaining * 2^{-j/2}`, `j = 0..15`, whose estimate is below
        `tol |v| tau / t`, and the iteration stops once `t` is reached, so
        fewer than `num_substeps` substeps may run (under `vmap` all
        `num_substeps` are computed and masked). The last allowed substep
        covers whatever time remains; if the summed estimate then exceeds
        `tol |v|`, status `NOT_CONVERGED` is reported. The step sizes are treated as
        constants for differentiation, so the result is differentiable.
        The estimate controls the value; the backward pass checks the
        gradient's own estimate against `100 * tol` (see `throw`).
    reortho
        Full re-orthogonalisation in Lanczos (Arnoldi always does it).
    gradient
        `"adjoint"` (default): the custom gradient rules above (reverse mode
        only; `jax.jvp` raises). `"autodiff"` differentiates the loops
        (forward mode too, more memory). Both rules support complex dtypes
        (JAX's convention for complex cotangents).
    throw
        If `True` (default), a non-zero `status` raises (via
        `matfree.status.error_if`, also under `jit`) whichever field of the
        result is read. A traced negative `t` is status `INVALID_INPUT` (the
        value is then NaN). For `symmetric=False`, it also raises in the
        backward pass when the gradient's error estimate fails (see above);
        `throw=False` accepts that gradient.

    Returns
    -------
    FunmResult
        `value` is `expm(t A) v`, like `v`; `error_estimate` the summed
        relative error estimate, `num_substeps` the substeps taken,
        `num_matvecs` the operator applications.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import jax.scipy.linalg
    >>> import matfree
    >>> A = jnp.array([[-2.0, 1.0, 0.0], [0.5, -1.0, 0.3], [0.0, 0.2, -3.0]])
    >>> v = jnp.array([1.0, 2.0, 3.0])
    >>> ev = matfree.exp_action(lambda x: A @ x, v, t=0.5, depth=3)
    >>> jnp.allclose(ev.value, jax.scipy.linalg.expm(0.5 * A) @ v)
    Array(True, dtype=bool)

    References
    ----------
    Y. Saad. Analysis of some Krylov subspace approximations to the matrix
    exponential operator. SIAM J. Numer. Anal. 29 (1992).
    M. Hochbruck, C. Lubich. On Krylov subspace approximations to the matrix
    exponential operator. SIAM J. Numer. Anal. 34 (1997).
    R. B. Sidje. Expokit. ACM TOMS 24 (1998).
    """
    return run(
        matvec,
        v,
        t=t,
        depth=depth,
        symmetric=symmetric,
        num_substeps=num_substeps,
        tol=tol,
        reortho=reortho,
        gradient=gradient,
        throw=throw,
        throw_gradient=throw,
    )


def run(
    matvec,
    v,
    *,
    t,
    depth,
    symmetric,
    num_substeps,
    tol,
    reortho,
    gradient,
    throw,
    throw_gradient,
) -> FunmResult:
    """`exp_action` with separate switches for the forward and backward checks.

    `throw_gradient` raises in the backward pass when the adjoint's error
    estimate fails (non-symmetric path); callers that collect the forward
    status themselves (`pde.solve`) pass `throw=False, throw_gradient=True`.
    """
    gradient = _checks.check_gradient(gradient, allowed=_common.GRADIENTS)
    flat, op = _flat.flatten(matvec, v, complex_ok=True)
    depth = _checks.check_depth(depth, op.size)
    num_substeps = _checks.check_int(num_substeps, "num_substeps")
    rdtype = _flat.real_dtype(flat.dtype)  # times and tolerances are real
    t = _check_time(t, rdtype)
    if tol is not None:
        tol = _check_tol(tol, rdtype)

    step = _make_step(op, depth, symmetric, reortho, gradient, tol, throw_gradient)
    if tol is None:
        run = _adjoint.call(_uniform, gradient, step, flat, t, num_substeps)
    else:
        run = _adjoint.call(_adaptive, gradient, step, flat, t, tol, num_substeps)
    value, est, steps = run

    vnorm = jax.lax.stop_gradient(safe_norm(flat))
    rel_est = est / jnp.where(vnorm > 0, vnorm, 1.0)
    conditions = []
    if symmetric and op.size > 1:
        conditions.append((_common.symmetry_defect(op, flat), Status.NOT_SYMMETRIC))
    negative = ~(t >= 0)
    conditions.append((negative, Status.INVALID_INPUT))
    conditions.append((~_common.all_finite(value), Status.NONFINITE))
    if tol is not None:
        conditions.append((~(rel_est <= tol), Status.NOT_CONVERGED))
    extra = 2 if symmetric and op.size > 1 else 0
    result = FunmResult(
        value=op.unravel(jnp.where(negative, jnp.nan, value)),
        status=status.first(*conditions),
        error_estimate=rel_est,
        num_substeps=steps,
        num_matvecs=(steps * depth + extra).astype(jnp.int32),
    )
    return _common.finish(result, throw=throw)


def _make_step(op, depth, symmetric, reortho, gradient, tol=None, throw=False):
    """Return `step(w, t, choose, args) -> (expm(tau A) w, estimate, tau / t)`.

    One Krylov decomposition of `w`; `choose(estimates_fn, *args) -> fraction`
    picks the substep as a fraction of `t` (constant for differentiation),
    given a function that evaluates the error estimate at candidate step
    lengths. `choose` must not close over traced arrays: the custom gradient
    rules run it inside `jax.checkpoint`, which traces it again; its traced
    inputs travel in `args`.
    """

    def matvec(x):
        return op.fn(x, *op.params)

    def step(w, t, choose, args):
        if symmetric and gradient == "adjoint":
            return _two_sided_step(w, t, choose, args)
        if gradient == "adjoint":
            return _arnoldi_step(w, t, choose, args)
        if symmetric:
            res, c = _common.decompose(
                decomp.lanczos, matvec, w, depth=depth, reortho=reortho, gradient=gradient
            )
            K = res.tridiag()
        else:
            res, c = _common.decompose(
                decomp.arnoldi, matvec, w, depth=depth, gradient=gradient
            )
            K = res.hessenberg
        K = jnp.where(c > 0, K, 0.0)
        h = safe_norm(jax.lax.stop_gradient(res.residual))
        estimates = _estimator(K, h, c, t, symmetric)
        fraction = jax.lax.stop_gradient(choose(estimates, *args))
        tau = t * fraction
        if symmetric:
            y = _dense.funm_sym(jnp.exp, tau * K)[:, 0]
        else:
            y = jax.scipy.linalg.expm(tau * K)[:, 0]
        return c * (res.basis.T @ y), estimates(fraction[None])[0], fraction

    def _two_sided_step(w, t, choose, args):
        # Symmetric operators: gradients by a second Lanczos run on the
        # cotangent (see `_two_sided`), accurate even for smooth `w`.
        def prepare(args, K, r, c, t0):
            estimates = _estimator(K, safe_norm(r), c, t0, True)
            fraction = choose(estimates, *args)
            return fraction, estimates(fraction[None])[0]

        def f(lam, t, aux):
            return jnp.exp(t * aux[0] * lam)

        value, (_, _, (fraction, estimate)) = _two_sided.lanczos_action(
            f, op.fn, depth, reortho, w, op.params, t, prepare, args
        )
        return value, estimate, fraction

    def _arnoldi_step(w, t, choose, args):
        # General operators: gradients by a second Arnoldi run, on A^T from the
        # cotangent, and the block-triangular exponential (see `_two_sided`).
        def prepare(args, H, r, c, t0):
            estimates = _estimator(H, safe_norm(r), c, t0, False)
            fraction = choose(estimates, *args)
            return fraction, estimates(fraction[None])[0]

        return _two_sided.arnoldi_exp(
            op.fn, depth, prepare, w, op.params, t, tol, args, throw=throw
        )

    return step


def _estimator(K, h, c, t, symmetric):
    """Saad's a-posteriori error estimate as a function of the step fractions."""
    c0, K0, t0 = (jax.lax.stop_gradient(x) for x in (c, K, t))

    def estimates(fractions):
        taus = t0 * fractions
        return c0 * h * jnp.abs(_phi1_last(K0, taus, symmetric)) * taus

    return estimates


def _phi1_last(K, taus, symmetric):
    """`e_k^T phi_1(tau K) e_1` for each `tau` in `taus` (no gradient)."""
    k = K.shape[0]
    if symmetric:
        lam, V = jnp.linalg.eigh(K)
        z = taus[:, None] * lam[None, :]
        small = jnp.abs(z) < 1e-8
        phi = jnp.where(small, 1.0 + z / 2, jnp.expm1(z) / jnp.where(small, 1.0, z))
        return phi @ (V[k - 1] * V[0])

    def one(tau):
        M = jnp.zeros((k + 1, k + 1), K.dtype)
        M = M.at[:k, :k].set(tau * K).at[0, k].set(1.0)
        return jax.scipy.linalg.expm(M)[k - 1, k]

    return jax.vmap(one)(taus)


def _uniform(step, w, t, num_substeps):
    fraction = 1.0 / num_substeps

    def choose(_):
        return jnp.asarray(fraction, _flat.real_dtype(w.dtype))

    if num_substeps == 1:
        value, est, _ = step(w, t, choose, ())
        return value, est, jnp.int32(1)

    @jax.checkpoint
    def body(w, _):
        w, est, _ = step(w, t, choose, ())
        return w, est

    value, ests = jax.lax.scan(body, w, None, length=num_substeps)
    return value, jnp.sum(ests), jnp.int32(num_substeps)


def _adaptive(step, w, t, tol, num_substeps):
    """Adaptive substeps: the longest candidate step whose estimate meets `tol`."""
    dtype = _flat.real_dtype(w.dtype)
    ratios = jnp.asarray(_CANDIDATE_RATIO, dtype) ** jnp.arange(
        _NUM_CANDIDATES, dtype=dtype
    )
    budget = tol * jax.lax.stop_gradient(safe_norm(w))

    def take_step(carry, last):
        w, remaining, _, est_sum, steps = carry
        fractions = remaining * ratios  # candidate substeps, as fractions of t

        w_new, est, fraction = step(w, t, _choose_adaptive, (fractions, budget, last))
        # The substep that covers the remaining time ends the iteration.
        done = fraction >= remaining
        return (w_new, remaining - fraction, done, est_sum + est, steps + 1)

    @jax.checkpoint
    def body(carry, i):
        last = i == num_substeps - 1
        carry = jax.lax.cond(carry[2], lambda c: c, lambda c: take_step(c, last), carry)
        return carry, None

    # t == 0 needs no substep: expm(0) v = v.
    done0 = ~(jax.lax.stop_gradient(t) > 0)
    init = (w, jnp.asarray(1.0, dtype), done0, jnp.asarray(0.0, dtype), jnp.int32(0))
    (value, _, _, est, steps), _ = jax.lax.scan(body, init, jnp.arange(num_substeps))
    return value, est, steps


def _choose_adaptive(estimates, fractions, budget, last):
    """The longest candidate substep whose estimate meets the budget."""
    ok = estimates(fractions) <= budget * fractions
    j = jnp.where(jnp.any(ok), jnp.argmax(ok), _NUM_CANDIDATES - 1)
    return fractions[jnp.where(last, 0, j)]


def _check_time(t, dtype):
    """`t` as a scalar array of `dtype`; a concrete negative `t` is an error."""
    if jnp.ndim(t) != 0:
        msg = f"`t` must be a scalar; got shape {jnp.shape(t)}."
        raise ValueError(msg)
    if not isinstance(t, jax.core.Tracer):
        t_np = np.asarray(t)
        if t_np.dtype.kind not in "fiu":
            msg = f"`t` must be a real scalar; got dtype {t_np.dtype}."
            raise TypeError(msg)
        if not (np.isfinite(t_np) and t_np >= 0):
            msg = (
                f"`t` must be finite and non-negative; got t={t_np}. For "
                "expm(-s A) v pass the matvec of -A and t=s."
            )
            raise ValueError(msg)
    return jnp.asarray(t, dtype)


def _check_tol(tol, dtype):
    """`tol` as a scalar array; a concrete non-positive `tol` is an error."""
    ok = jnp.ndim(tol) == 0
    if ok and not isinstance(tol, jax.core.Tracer):
        tol_np = np.asarray(tol)
        ok = np.issubdtype(tol_np.dtype, np.floating) and bool(tol_np > 0)
    if not ok:
        msg = (
            "`tol` must be a positive scalar (a relative tolerance, e.g. 1e-8) or "
            f"None; got {tol!r}."
        )
        raise ValueError(msg)
    return jnp.asarray(tol, dtype)
