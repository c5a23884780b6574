"""`exp_action`: expm(tA) v by Krylov time stepping with error estimates."""

from __future__ import annotations

import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np

from matfree import _adjoint, _checks, _dense, _eager, _flat, decomp, status
from matfree._flat import safe_norm
from matfree.funm import _common, _two_sided
from matfree.funm._common import FunmResult
from matfree.status import Status

# With `tol` and `num_substeps=None`: the bound on the number of adaptive substeps.
DEFAULT_MAX_SUBSTEPS = 1000


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("v"))
def exp_action(
    matvec,
    v,
    *,
    t=1.0,
    depth: int,
    symmetric: bool = False,
    num_substeps: int | None = None,
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
    adjoint's error like the value's (Saad's estimate for `expm(tau A^T) ybar`);
    where it exceeds 100 times `tol` (without `tol`: 100 times the value's
    estimate, and `sqrt(eps)`) -- a cotangent with more weight on the stiff
    modes than `v` -- the adjoint of that substep is recomputed over four
    pieces; if that fails too, the gradient is NaN and, with `throw=True`, the
    backward pass raises. With several
    uniform substeps each substep is checkpointed, so gradient memory is
    `O(n (depth + num_substeps))`, at the price of recomputing each substep's
    forward pass in the backward pass; the adaptive loop (`tol`) keeps
    `O(sqrt(num_substeps))` checkpoints (`equinox`'s checkpointed while loop).

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
        Static int `s >= 1` or `None` (default). Without `tol`: `[0, t]` is
        split into `s` equal substeps (`None`: one). Pick `s` from an estimate
        of `|A|` (e.g. Gershgorin, or the largest Ritz value): for a symmetric
        operator with spectrum of width `|A|`, a substep of length `tau`
        reaches relative error `delta` at depth `k` if
        `tau |A| <= 4 k^2 / (5 log(10 / delta))` (Hochbruck–Lubich bound), so
        `s = ceil(t |A| 5 log(10 / delta) / (4 k^2))` suffices; e.g. depth 40,
        `delta = 1e-10`: `s = ceil(t |A| / 50)`. For non-normal operators take
        more. With `tol`: the *maximum* number of adaptive substeps, a bound
        on the work under `jit` (`None`: 1000); the steps themselves are
        chosen by `tol`. If the bound is hit, the last substep covers what
        remains and the status is `NOT_CONVERGED` (raise `num_substeps`).
    tol
        `None` (default) or a relative tolerance (scalar, may be traced):
        the substeps are then chosen automatically, with no estimate of
        `|A|` needed. Each substep, from the state `w`, is the longest of a
        ladder of halvings `remaining * 2^{-j}` (`j < 48`, so a first step may
        be far shorter than `t`), refined by eight equally spaced lengths
        between the accepted rung and the next longer one, whose error
        estimate, relative to `min(|w|, |expm(tau A) w|)`, is below
        `tol * tau / t / 10` (a safety factor of 10, since the estimate is
        the leading term only); the steps are then balanced so that no short
        last step remains. The iteration stops once `t` is reached (a while
        loop: under `vmap` it runs until every member is done). The
        estimates of all candidates come from the one Krylov decomposition
        per substep (by the eigendecomposition of the tridiagonal matrix, or
        for Arnoldi by squaring one augmented exponential), so rejected
        candidates cost no matvecs. If the summed relative estimate exceeds
        `tol`, status `NOT_CONVERGED` is reported. The step sizes are treated
        as constants for differentiation, so the result is differentiable;
        the estimate controls the value, and the backward pass checks the
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
        value is then NaN). For `symmetric=False`, a gradient whose own error
        estimate fails (see above) is NaN, whatever `throw`; with
        `throw=True` the backward pass also raises.

    Returns
    -------
    FunmResult
        `value` is `expm(t A) v`, like `v`; `error_estimate` the sum over
        substeps of the relative error estimates (each relative to the
        smaller of the state's norms at the start and end of its substep),
        `num_substeps` the substeps taken, `num_matvecs` the operator
        applications.

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

    With a tolerance the substeps are chosen for you; here `t |A| = 300`:

    >>> B = jnp.diag(jnp.linspace(-100.0, 0.0, 50)) + jnp.eye(50, k=1)
    >>> w = jnp.ones(50)
    >>> res = matfree.exp_action(lambda x: B @ x, w, t=3.0, depth=10, tol=1e-6)
    >>> int(res.status), int(res.num_substeps) > 1
    (0, True)
    >>> ref = jax.scipy.linalg.expm(3.0 * B) @ w
    >>> bool(jnp.linalg.norm(res.value - ref) <= 1e-6 * jnp.linalg.norm(ref))
    True

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
    estimate fails (non-symmetric path; the gradient is NaN either way);
    callers that collect the forward status themselves (`pde.solve`) pass
    `throw=False, throw_gradient=True`.
    """
    gradient = _checks.check_gradient(gradient, allowed=_common.GRADIENTS)
    flat, op = _flat.flatten(matvec, v, complex_ok=True)
    depth = _checks.check_depth(depth, op.size)
    if num_substeps is None:
        num_substeps = 1 if tol is None else DEFAULT_MAX_SUBSTEPS
    num_substeps = _checks.check_int(num_substeps, "num_substeps")
    rdtype = _flat.real_dtype(flat.dtype)  # times and tolerances are real
    t = _check_time(t, rdtype)
    if tol is not None:
        tol = _check_tol(tol, rdtype)

    step = _make_step(op, depth, symmetric, reortho, gradient, tol, throw_gradient)
    if tol is None:
        run = _adjoint.call(_uniform, gradient, step, flat, t, num_substeps)
    else:
        # "checkpointed": a while loop, reverse mode with O(sqrt(num_substeps))
        # checkpoints; "bounded" (nested scans) also differentiates in forward mode.
        kind = "checkpointed" if gradient == "adjoint" else "bounded"
        run = _adjoint.call(_adaptive, gradient, step, flat, t, tol, num_substeps, kind)
    value, rel_est, steps = run

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

    One Krylov decomposition of `w`; `choose(estimator, *args) ->
    (fraction, relative estimate)` picks the substep as a fraction of `t`
    (constant for differentiation), given the `_Estimator` of the
    decomposition. `estimate` is `|w|` times the relative estimate. `choose`
    must not close over traced arrays: the custom gradient rules run it inside
    `jax.checkpoint`, which traces it again; its traced inputs travel in `args`.
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
        fraction, rel = choose(_Estimator(K, h, t, symmetric), *args)
        fraction = jax.lax.stop_gradient(fraction)
        tau = t * fraction
        if symmetric:
            y = _dense.funm_sym(jnp.exp, tau * K)[:, 0]
        else:
            y = jax.scipy.linalg.expm(tau * K)[:, 0]
        estimate = jax.lax.stop_gradient(c * rel)
        return c * (res.basis.T @ y), estimate, fraction

    def _two_sided_step(w, t, choose, args):
        # Symmetric operators: gradients by a second Lanczos run on the
        # cotangent (see `_two_sided`), accurate even for smooth `w`.
        def prepare(args, K, r, c, t0):
            fraction, rel = choose(_Estimator(K, safe_norm(r), t0, True), *args)
            return fraction, c * rel

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
            fraction, rel = choose(_Estimator(H, safe_norm(r), t0, False), *args)
            return fraction, c * rel

        return _two_sided.arnoldi_exp(
            op.fn, depth, prepare, w, op.params, t, tol, args, throw=throw
        )

    return step


class _Estimator:
    """Saad's a-posteriori estimate of one substep, relative to the state's size.

    For a step of length `tau = t f` from `w` (Krylov matrix `K`, residual
    norm `h`), the estimate `h tau |e_k^T phi_1(tau K) e_1|` of
    `|expm(tau A) w - approximation| / |w|` is divided by
    `min(1, |expm(tau K) e_1|)`: relative to the smaller of the state's size at
    the start and at the end of the step, so that a step over which the
    solution decays is measured against what is left of it. No gradients.
    """

    def __init__(self, K, h, t, symmetric):
        stop = jax.lax.stop_gradient
        self.K, self.h, self.t = stop(K), stop(h), stop(t)
        self.symmetric = symmetric
        if symmetric:
            self.lam, V = jnp.linalg.eigh(self.K)
            self.first, self.last = V[0], V[-1]

    def at(self, fractions):
        """Relative estimates at arbitrary step fractions (a 1-D array)."""
        taus = self.t * fractions
        if self.symmetric:
            z = taus[:, None] * self.lam[None, :]
            small = jnp.abs(z) < 1e-8
            phi = jnp.where(small, 1.0 + z / 2, jnp.expm1(z) / jnp.where(small, 1.0, z))
            last = taus * (phi @ (self.last * self.first))
            size = jnp.sqrt(jnp.sum((jnp.exp(z) * self.first) ** 2, axis=1))
            return self._relative(last, size)
        return jax.vmap(lambda tau: self._from_expm(_augmented_expm(self.K, tau)))(taus)

    def ladder(self, top, num):
        """Relative estimates at `top * 2^{-j}`, `j < num`, and a `refine` function.

        `refine(j, num_fine)` gives the estimates at
        `top 2^{-j} (1 + i / num_fine)`, `0 < i < num_fine` (num_fine a power
        of two), between rungs `j` and `j - 1`. For Arnoldi the augmented
        exponential is computed once, at the smallest step, and the others by
        squaring it and by products (`expm(a M) = expm(M)^a` for integer `a`):
        two small exponentials per substep instead of one per candidate.
        """
        fractions = top * 0.5 ** jnp.arange(num, dtype=top.dtype)
        if self.symmetric:

            def refine(j, num_fine):
                i = jnp.arange(1, num_fine, dtype=top.dtype)
                return self.at(fractions[j] * (1 + i / num_fine))

            return self.at(fractions), refine

        def square(E, _):
            return E @ E, E

        E_min = _augmented_expm(self.K, self.t * fractions[-1])
        _, Es = jax.lax.scan(square, E_min, None, length=num)
        Es = Es[::-1]  # Es[j] = expm(M(t fractions[j]))
        ests = jax.vmap(self._from_expm)(Es)

        def refine(j, num_fine):
            # expm(M(tau (1 + i/m))) = expm(M(tau)) expm(M(tau/m))^i, tau/m a rung.
            m_log2 = int(np.log2(num_fine))
            small = Es[jnp.minimum(j + m_log2, num - 1)]

            def mult(E, _):
                E = E @ small
                return E, E

            _, Ef = jax.lax.scan(mult, Es[j], None, length=num_fine - 1)
            return jax.vmap(self._from_expm)(Ef)

        return ests, refine

    def _from_expm(self, E):
        k = self.K.shape[0]
        size = safe_norm(E[:k, 0])
        return self._relative(E[k - 1, k], size)

    def _relative(self, last, size):
        est = self.h * jnp.abs(last)
        return est / jnp.minimum(1.0, size)


def _augmented_expm(K, tau):
    """The augmented exponential of one step.

    `expm([[tau K, tau e_1], [0, 0]]) = [[expm(tau K), tau phi_1(tau K) e_1], [0, 1]]`.

    Squaring it doubles `tau`.
    """
    k = K.shape[0]
    M = jnp.zeros((k + 1, k + 1), K.dtype).at[:k, :k].set(tau * K).at[0, k].set(tau)
    return jax.scipy.linalg.expm(M)


def _uniform(step, w, t, num_substeps):
    fraction = 1.0 / num_substeps

    def choose(estimator):
        f = jnp.asarray(fraction, _flat.real_dtype(w.dtype))
        return f, estimator.at(f[None])[0]

    def relative(est, w):
        return est / jnp.maximum(jax.lax.stop_gradient(safe_norm(w)), _tiny(w))

    if num_substeps == 1:
        value, est, _ = step(w, t, choose, ())
        return value, relative(est, w), jnp.int32(1)

    @jax.checkpoint
    def body(w, _):
        w_new, est, _ = step(w, t, choose, ())
        return w_new, relative(est, w)

    value, ests = jax.lax.scan(body, w, None, length=num_substeps)
    return value, jnp.sum(ests), jnp.int32(num_substeps)


# The adaptive step search: a ladder of `_NUM_RUNGS` halvings of the remaining
# time (down to 2^-47 of it, so a first step may be far shorter than `t`),
# then `_NUM_FINE` - 1 equally spaced candidates between the chosen rung and
# the next longer one (a step at most 12.5 % shorter than the longest one
# accepted by the estimate).
_NUM_RUNGS = 48
_NUM_FINE = 8
# A step is accepted if its estimate is below `_SAFETY * tol * fraction`: the
# estimate is the leading term of the error, and a cotangent may weigh the
# stiff modes more than `w` does (the backward pass checks the adjoint's
# estimate against `100 tol fraction`).
_SAFETY = 0.1


def _adaptive(step, w, t, tol, max_substeps, kind):
    """Adaptive substeps: the longest candidate step whose estimate meets `tol`.

    The loop is a bounded while loop (`max_substeps` iterations at most) that
    stops once `t` is reached; `kind` is the `equinox.internal.while_loop`
    kind ("checkpointed": reverse-mode differentiation with checkpoints,
    "bounded": forward and reverse mode).
    """
    dtype = _flat.real_dtype(w.dtype)  # times and estimates are real

    def cond(carry):
        _, remaining, _, steps = carry
        return (remaining > 0) & (steps < max_substeps)

    def body(carry):
        w, remaining, est_sum, steps = carry
        last = steps == max_substeps - 1
        args = (remaining, tol, last)
        w_new, est, fraction = step(w, t, _choose_adaptive, args)
        rel = est / jnp.maximum(jax.lax.stop_gradient(safe_norm(w)), _tiny(w))
        # The substep that covers the remaining time ends the iteration.
        remaining = jnp.where(fraction >= remaining, 0.0, remaining - fraction)
        return (w_new, remaining, est_sum + rel, steps + 1)

    # t == 0 needs no substep: expm(0) v = v.
    remaining0 = jnp.where(jax.lax.stop_gradient(t) > 0, 1.0, 0.0).astype(dtype)
    init = (w, remaining0, jnp.asarray(0.0, dtype), jnp.int32(0))
    value, _, est, steps = eqxi.while_loop(
        cond, body, init, max_steps=max_substeps, kind=kind
    )
    return value, est, steps


def _choose_adaptive(estimator, remaining, tol, last):
    """The longest candidate substep whose relative estimate is below `tol * fraction`.

    Rungs `remaining * 2^-j`; then the longest accepted candidate between
    the longest accepted rung and the next longer one. If no candidate is
    accepted, the shortest rung; in the last allowed substep, all that remains.
    """
    ests, refine = estimator.ladder(remaining, _NUM_RUNGS)
    fractions = remaining * 0.5 ** jnp.arange(_NUM_RUNGS, dtype=remaining.dtype)
    ok = ests <= _SAFETY * tol * fractions
    j = jnp.where(jnp.any(ok), jnp.argmax(ok), _NUM_RUNGS - 1)
    f, est = fractions[j], ests[j]

    # Between rung j and rung j - 1 (only if j > 0 and rung j was accepted).
    fine = fractions[j] * (1 + jnp.arange(1, _NUM_FINE, dtype=f.dtype) / _NUM_FINE)
    fine_ests = refine(j, _NUM_FINE)
    fine_ok = (fine_ests <= _SAFETY * tol * fine) & (j > 0) & ok[j]
    i = (_NUM_FINE - 2) - jnp.argmax(fine_ok[::-1])  # the longest accepted
    f = jnp.where(jnp.any(fine_ok), fine[i], f)
    est = jnp.where(jnp.any(fine_ok), fine_ests[i], est)

    # Balance: `m` equal steps cover what remains where steps of `f` would need
    # `m` too (no short last step, which would cost a whole Krylov run).
    m = jnp.ceil(remaining / f * (1 - 4 * jnp.finfo(f.dtype).eps))
    balanced = (m > 1) & ok[j] & ~last
    f = jnp.where(balanced, remaining / jnp.maximum(m, 1.0), f)
    est = jnp.where(balanced, estimator.at(f[None])[0], est)

    f = jnp.where(last, remaining, f)  # rung 0 is all that remains
    est = jnp.where(last, ests[0], est)
    return f, est


def _tiny(x):
    return jnp.finfo(x.dtype).tiny


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
