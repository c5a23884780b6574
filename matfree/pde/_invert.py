"""`invert`: fit a coefficient field to observations of the solution, with optax."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from matfree import _checks
from matfree import status as _status
from matfree._fit import FitResult, check_optimizer, minimize
from matfree.pde import _data, _operators


def misfit(k, u0, times, observations, *, depth, num_substeps=1, operator=None):
    """Relative squared misfit `|simulate(k) - obs|^2 / |obs|^2`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import pde
    >>> k, u0 = jnp.ones((6, 6)), pde.bumps((6, 6), [(0.5, 0.5)])
    >>> obs = pde.simulate(k, u0, [0.01], depth=12)
    >>> float(misfit(k, u0, [0.01], obs, depth=12)) < 1e-20
    True
    """
    pred = _data.simulate(
        k, u0, times, depth=depth, num_substeps=num_substeps, operator=operator
    )
    return jnp.sum((pred - observations) ** 2) / jnp.sum(observations**2)


def smoothness_penalty(theta):
    """Mean squared difference of neighbouring values of `theta` (both axes)."""
    return jnp.mean(jnp.diff(theta, axis=0) ** 2) + jnp.mean(jnp.diff(theta, axis=1) ** 2)


def invert(
    observations,
    u0,
    times,
    *,
    depth: int,
    num_substeps: int = 1,
    operator=None,
    init=1.0,
    smoothness=0.0,
    optimizer=None,
    num_steps: int = 100,
    progress: bool = True,
    throw: bool = True,
) -> FitResult:
    r"""Fit the coefficient field `k` so that `simulate(k, u0, times)` matches data.

    Minimises `misfit(k) + smoothness * smoothness_penalty(theta)` over
    `theta = log k` (positivity by the exponential transform), starting from
    the flat field `k = init`, with an optax optimiser. Each step takes one
    gradient through `solve` (adjoint of the Krylov decomposition, memory
    linear in `n depth`). Choose `depth`/`num_substeps` for the *largest*
    field you expect (see `suggest_num_substeps` and the gradient note in
    `solve`).

    Parameters
    ----------
    observations
        Shape `(len(times), *u0.shape)`, as returned by `simulate`.
    u0
        Initial condition(s), `(ny, nx)` or `(m, ny, nx)`.
    times
        Concrete, non-decreasing observation times `>= 0`.
    depth, num_substeps, operator
        Passed to `solve`.
    init
        Positive scalar: the flat starting field.
    smoothness
        Weight of the smoothness penalty on `log k` (`0` switches it off).
    optimizer
        An `optax.GradientTransformation`; default `optax.adam(0.05)`.
    num_steps
        Number of optimiser steps.
    progress
        Show a one-line progress bar with the loss and the time per step.
    throw
        Raise at the first step whose loss has a non-zero status (a solve
        that failed, a non-finite loss); `False` stops the loop there and
        returns the last good iterate with that status.

    Returns
    -------
    FitResult
        `params` (the fitted field `k`, `(ny, nx)`), `raw` (`theta = log
        k`), `losses` (the loss before each step), `seconds` (per step, the
        first with compilation) and `status`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import pde
    >>> k, u0 = jnp.full((6, 6), 2.0), pde.bumps((6, 6), [(0.5, 0.5)])
    >>> obs = pde.simulate(k, u0, [0.01], depth=12)
    >>> res = pde.invert(obs, u0, [0.01], depth=12, num_steps=60, progress=False)
    >>> bool(res.losses[-1] < 1e-2 * res.losses[0])
    True
    """
    num_steps = _checks.check_int(num_steps, "num_steps")
    u0 = jnp.asarray(u0)
    shape = u0.shape[-2:]
    times = _data.check_times(times)
    observations = jnp.asarray(observations)
    expected = (len(times), *u0.shape)
    if observations.shape != expected:
        msg = (
            f"`observations` must have shape (len(times), *u0.shape) = {expected}; "
            f"got shape {observations.shape}."
        )
        raise ValueError(msg)
    if not (np.ndim(init) == 0 and float(init) > 0):
        msg = f"`init` must be a positive scalar (the flat starting field); got {init!r}."
        raise ValueError(msg)
    optimizer = check_optimizer(optimizer, optax.adam(0.05))
    theta = jnp.full(shape, jnp.log(float(init)), dtype=u0.dtype)
    _operators.check_field(theta)

    def loss(theta, key):
        del key
        pred, status = _data.trajectory(
            jnp.exp(theta), u0, times, depth, num_substeps, operator
        )
        value = jnp.sum((pred - observations) ** 2) / jnp.sum(observations**2)
        value = value + smoothness * smoothness_penalty(theta)
        bad = (status == _status.Status.OK) & ~jnp.isfinite(value)
        return value, jnp.where(bad, jnp.int32(_status.Status.NONFINITE), status)

    theta, losses, seconds, status, evaluations = minimize(
        loss,
        theta,
        optimizer=optimizer,
        num_steps=num_steps,
        progress=progress,
        label="pde.invert",
        throw=throw,
    )
    return FitResult(jnp.exp(theta), theta, losses, seconds, status, evaluations)
