"""Natural gradient with a damped Fisher matrix solved by CG."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from matfree import _checks
from matfree.optim import _common as c
from matfree.solvers._solve import solve


class NaturalGradientState(NamedTuple):
    """The state of `natural_gradient`.

    Attributes
    ----------
    count, num_curvature
        Steps and Fisher-vector products (CG iterations plus one residual check).
    direction
        The last natural-gradient direction (flat), CG's next start.
    solver_status
        `matfree.status` code of the last CG solve.
    """

    count: jax.Array
    num_curvature: jax.Array
    direction: jax.Array
    solver_status: jax.Array


def natural_gradient(
    learning_rate: float,
    *,
    damping: float = 1e-3,
    maxiter: int = 20,
    rtol: float = 1e-3,
) -> optax.GradientTransformationExtraArgs:
    r"""Natural gradient descent: `-learning_rate (F + damping I)^{-1} g` by CG.

    `F` is the Fisher information of a likelihood model. For a negative
    log-likelihood `loss_fn(outputs)` of an exponential family in its natural
    parameters (Gaussian mean with unit variance, Bernoulli/categorical
    logits), the Fisher equals the Gauss-Newton matrix `J^T H_loss J`; pass
    `model_fn` and `loss_fn` to `update` (closing over a mini-batch), or
    `fisher_fn(params, v) -> F v`. The damped system is solved by
    `matfree.solve` (CG, warm-started from the previous direction, `maxiter`
    iterations at most, tolerance `rtol`). No objective value is needed, so
    it chains with other transformations like `optax.sgd` does.

    Parameters
    ----------
    learning_rate
        The step length on the natural gradient.
    damping
        Tikhonov damping `> 0` added to the Fisher.
    maxiter, rtol
        CG's iteration bound (static) and relative tolerance.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        Its state is a `NaturalGradientState`. A non-finite gradient raises.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import optim
    >>> X = jnp.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> y = jnp.array([0.0, 1.0, 3.0])
    >>> def model(w):
    ...     return X @ w
    >>> def nll(out):  # Gaussian, unit variance: Fisher = X^T X
    ...     return 0.5 * jnp.sum((out - y) ** 2)
    >>> opt = optim.natural_gradient(1.0, damping=1e-9, rtol=1e-10)
    >>> w = jnp.zeros(2)
    >>> g = jax.grad(lambda w: nll(model(w)))(w)
    >>> upd, state = opt.update(g, opt.init(w), w, model_fn=model, loss_fn=nll)
    >>> bool(jnp.allclose(w + upd, jnp.linalg.lstsq(X, y)[0], atol=1e-6))
    True
    """
    maxiter = _checks.check_int(maxiter, "maxiter")
    for value, name in ((learning_rate, "learning_rate"), (damping, "damping")):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            msg = f"`{name}` must be a positive float; got {name}={value!r}."
            raise ValueError(msg)

    def init(params):
        x, _ = c.flat(params)
        zero = jnp.zeros((), c.INT)
        return NaturalGradientState(zero, zero, jnp.zeros_like(x), zero)

    def update(
        updates, state, params=None, *, model_fn=None, loss_fn=None, fisher_fn=None, **extra
    ):
        del extra
        c.require_params(params, "natural_gradient")
        g, unravel = c.flat(updates)
        g = c.check_finite(g, jnp.zeros((), g.dtype), g)
        F = c.curvature(
            "natural_gradient",
            params,
            None,
            None,
            model_fn=model_fn,
            loss_fn=loss_fn,
            ggn_fn=fisher_fn,
            hessian_ok=False,
        )
        sol = solve(
            lambda v: F(v) + damping * v,
            g,
            x0=state.direction,
            rtol=rtol,
            maxiter=maxiter,
            throw=False,
        )
        direction = jnp.where(jnp.all(jnp.isfinite(sol.value)), sol.value, g)
        new_state = NaturalGradientState(
            count=state.count + 1,
            num_curvature=state.num_curvature + sol.num_steps.astype(c.INT) + 2,
            direction=direction,
            solver_status=sol.status.astype(c.INT),
        )
        return unravel(-learning_rate * direction), new_state

    return optax.GradientTransformationExtraArgs(init, update)
