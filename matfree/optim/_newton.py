"""Inexact Newton: `H p = -g` by a Krylov method to a forcing tolerance, Armijo steps."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from matfree import _checks
from matfree.optim import _common as c
from matfree.solvers._solve import solve

METHODS = ("cg", "minres", "gmres", "gcr")
FORCINGS = ("superlinear", "quadratic", "eisenstat-walker")


class NewtonState(NamedTuple):
    """The state of `newton_krylov`: counters and diagnostics of the last step.

    Attributes
    ----------
    count
        Steps taken.
    num_values, num_grads, num_curvature
        Work so far: objective values (line search; the incoming `value` is not
        counted), gradients (the incoming one and one linearisation per step)
        and Hessian-vector products (the inner solver's iterations plus its
        final residual check).
    num_fallbacks
        Steps where the Krylov direction was not a descent direction (or not
        finite) and `-g` was used instead.
    step_size
        The step length accepted by the line search in the last step.
    forcing
        The relative tolerance of the last inner solve.
    solver_status
        `matfree.status` code of the last inner solve (`NOT_CONVERGED` or
        `NOT_POSITIVE_DEFINITE` are expected in an inexact Newton method).
    status
        `OK`, or `NOT_CONVERGED` when the last line search found no decrease
        (the update was then zero).
    grad_norm
        `|g|` at the start of the last step.
    """

    count: jax.Array
    num_values: jax.Array
    num_grads: jax.Array
    num_curvature: jax.Array
    num_fallbacks: jax.Array
    step_size: jax.Array
    forcing: jax.Array
    solver_status: jax.Array
    status: jax.Array
    grad_norm: jax.Array


def newton_krylov(
    *,
    method: str = "cg",
    forcing="superlinear",
    maxiter: int | None = None,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_backtracks: int = 30,
) -> optax.GradientTransformationExtraArgs:
    r"""Inexact (truncated) Newton with a Krylov solver, as an optax transformation.

    Each update solves `H p = -g` (Hessian-vector products by
    forward-over-reverse differentiation of `value_fn`) with `matfree.solve`
    to the relative tolerance `eta` (the forcing term), makes sure `p` is a
    descent direction (else uses `-g`), and returns `t p` with `t` from
    Armijo backtracking on `value_fn`. Pass the objective through the
    update's extra arguments, as for `optax.lbfgs`:
    `opt.update(grad, state, params, value_fn=f, value=f(params))`
    (`value` is optional and saves one evaluation). `updates` must be the
    gradient of `value_fn` at `params`.

    Parameters
    ----------
    method
        The inner solver: `"cg"` (Newton-CG, for convex objectives; it stops
        at negative curvature and returns its last iterate, a descent
        direction), `"minres"` (symmetric indefinite Hessians), `"gmres"` or
        `"gcr"` (non-symmetric, e.g. an inexact Hessian).
    forcing
        The relative tolerance of the inner solve: `"superlinear"`
        `min(0.5, sqrt|g|)`, `"quadratic"` `min(0.5, |g|)`,
        `"eisenstat-walker"` (choice 2: `0.9 (|g_k| / |g_{k-1}|)^2`,
        safeguarded, capped at 0.5), or a positive float (a constant
        tolerance).
    maxiter
        Static bound on the inner iterations per step (default: the solver's,
        `10 n`).
    c1, shrink, max_backtracks
        Armijo constant, backtracking factor and the most backtracking steps.
        Trial points where `value_fn` is not finite are rejected.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        Its state is a `NewtonState`. A NaN or inf in the incoming gradient or
        value raises an error (also under `jit`): the step cannot be computed.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from matfree import optim
    >>> A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
    >>> b = jnp.array([1.0, -1.0])
    >>> def f(x):
    ...     return 0.5 * x @ A @ x - b @ x
    >>> opt = optim.newton_krylov(forcing=1e-12)
    >>> x = jnp.zeros(2)
    >>> state = opt.init(x)
    >>> updates, state = opt.update(jax.grad(f)(x), state, x, value_fn=f)
    >>> x = optax.apply_updates(x, updates)
    >>> bool(jnp.allclose(x, jnp.linalg.solve(A, b)))
    True
    >>> int(state.num_curvature)  # two CG steps and a residual check
    3
    """
    _checks.check_choice(method, "method", METHODS)
    if isinstance(forcing, str):
        _checks.check_choice(forcing, "forcing", FORCINGS)
    elif (
        isinstance(forcing, bool) or not isinstance(forcing, int | float) or not forcing > 0
    ):
        msg = (
            f"`forcing` must be one of {FORCINGS} or a positive float (a constant "
            f"relative tolerance); got forcing={forcing!r}."
        )
        raise ValueError(msg)
    if maxiter is not None:
        maxiter = _checks.check_int(maxiter, "maxiter")
    max_backtracks = _checks.check_int(max_backtracks, "max_backtracks", minimum=0)
    c.check_armijo(c1, shrink)

    def init(params):
        x, _ = c.flat(params)
        dtype = x.dtype
        zero_i = jnp.zeros((), c.INT)
        return NewtonState(
            count=zero_i,
            num_values=zero_i,
            num_grads=zero_i,
            num_curvature=zero_i,
            num_fallbacks=zero_i,
            step_size=jnp.zeros((), dtype),
            forcing=jnp.full((), 0.5, dtype),
            solver_status=zero_i,
            status=zero_i,
            grad_norm=jnp.full((), jnp.inf, dtype),
        )

    def update(updates, state, params=None, *, value_fn=None, value=None, **extra_args):
        del extra_args
        f, x, g, f0, nv = c.start(updates, params, value_fn, value, "newton_krylov")
        gnorm = jnp.linalg.norm(g)
        eta = _forcing(forcing, gnorm, state).astype(x.dtype)

        hvp = c.hvp_fn(f, x)
        sol = solve(hvp, -g, method=method, rtol=eta, maxiter=maxiter, throw=False)
        p, slope, fallback = c.descent_or_gradient(g, sol.value)
        t, _, nls, ok = c.armijo(
            f, x, p, f0, slope, c1=c1, shrink=shrink, maxiter=max_backtracks
        )
        new_state = NewtonState(
            count=state.count + 1,
            num_values=state.num_values + nv + nls,
            num_grads=state.num_grads + 2,
            num_curvature=state.num_curvature + sol.num_steps.astype(c.INT) + 1,
            num_fallbacks=state.num_fallbacks + fallback.astype(c.INT),
            step_size=t,
            forcing=eta,
            solver_status=sol.status.astype(c.INT),
            status=jnp.where(ok, 0, 1).astype(c.INT),
            grad_norm=gnorm,
        )
        return c.unravel_like(params, t * p), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _forcing(forcing, gnorm, state):
    if not isinstance(forcing, str):
        return jnp.asarray(forcing, gnorm.dtype)
    if forcing == "superlinear":
        return jnp.minimum(0.5, jnp.sqrt(gnorm))
    if forcing == "quadratic":
        return jnp.minimum(0.5, gnorm)
    # Eisenstat-Walker choice 2 (gamma = 0.9, alpha = 2) with its safeguard.
    prev = state.grad_norm
    ratio = jnp.where(jnp.isfinite(prev) & (prev > 0), gnorm / prev, 1.0)
    eta = 0.9 * ratio**2
    guard = 0.9 * state.forcing**2
    eta = jnp.where(guard > 0.1, jnp.maximum(eta, guard), eta)
    eta = jnp.where(jnp.isfinite(prev), eta, 0.5)
    return jnp.clip(eta, jnp.finfo(gnorm.dtype).eps, 0.5)
