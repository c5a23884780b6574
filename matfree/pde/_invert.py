"""`invert`: fit a coefficient field to observations of the solution, with optax."""

from __future__ import annotations

import time as _time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from matfree import _checks
from matfree.pde import _data, _operators


class InversionResult(NamedTuple):
    """The result of `invert`.

    Attributes
    ----------
    field
        The fitted coefficient field `k = exp(theta)`, shape `(ny, nx)`.
    theta
        The fitted unconstrained parameter `log k`.
    loss
        Loss history, shape `(num_steps,)`: the loss at the iterate before each
        optimiser step.
    seconds
        Wall time per optimisation step, shape `(num_steps,)` (the first
        includes compilation).
    """

    field: jax.Array
    theta: jax.Array
    loss: jax.Array
    seconds: np.ndarray


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
):
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
        Show a progress bar (tqdm if installed, else a printed line every
        10% of the steps).

    Returns
    -------
    InversionResult
        The fitted field, `theta`, the loss history and seconds per step.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import pde
    >>> k, u0 = jnp.full((6, 6), 2.0), pde.bumps((6, 6), [(0.5, 0.5)])
    >>> obs = pde.simulate(k, u0, [0.01], depth=12)
    >>> res = pde.invert(obs, u0, [0.01], depth=12, num_steps=60, progress=False)
    >>> bool(res.loss[-1] < 1e-2 * res.loss[0])
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
    optimizer = optax.adam(0.05) if optimizer is None else optimizer
    theta = jnp.full(shape, jnp.log(float(init)), dtype=u0.dtype)
    _operators.check_field(theta)

    def loss_fn(theta):
        value = misfit(
            jnp.exp(theta),
            u0,
            times,
            observations,
            depth=depth,
            num_substeps=num_substeps,
            operator=operator,
        )
        return value + smoothness * smoothness_penalty(theta)

    @jax.jit
    def step(theta, state):
        value, grad = jax.value_and_grad(loss_fn)(theta)
        updates, state = optimizer.update(grad, state, theta)
        return optax.apply_updates(theta, updates), state, value

    state = optimizer.init(theta)
    losses, seconds = [], []
    bar = _progress(num_steps) if progress else None
    for i in range(num_steps):
        t0 = _time.perf_counter()
        theta, state, value = step(theta, state)
        value = float(value)
        seconds.append(_time.perf_counter() - t0)
        losses.append(value)
        if bar is not None:
            bar(i, value)
    if bar is not None:
        bar(None, None)
    return InversionResult(jnp.exp(theta), theta, jnp.asarray(losses), np.asarray(seconds))


def _progress(total):
    """Return `update(i, loss)`; `update(None, None)` closes the bar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None

    if tqdm is not None:
        bar = tqdm(total=total, desc="invert")

        def update(i, loss):
            if i is None:
                bar.close()
                return
            bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
            bar.update(1)

        return update

    every = max(1, total // 10)

    def update(i, loss):
        if i is not None and ((i + 1) % every == 0 or i + 1 == total):
            print(f"invert: step {i + 1}/{total}, loss {loss:.3e}", flush=True)

    return update
