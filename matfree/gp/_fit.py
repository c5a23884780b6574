"""Fitting GP hyperparameters with optax, with a print-based progress bar."""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import jax
import numpy as np
import optax

from matfree import _checks
from matfree.gp import _lml, _params


class FitResult(NamedTuple):
    """The result of `fit`.

    Attributes
    ----------
    params
        The fitted hyperparameters in natural units (a dict).
    losses
        The loss history, shape `(num_steps,)`: the negative log marginal
        likelihood per data point at the parameters before each step
        (stochastic for the iterative path).
    seconds_per_step
        Wall-clock seconds per step after the first (compiling) one.
    """

    params: dict
    losses: np.ndarray
    seconds_per_step: float


def fit(
    params,
    X,
    y,
    *,
    key,
    optimizer=None,
    num_steps: int = 100,
    progress: bool = True,
    **lml_options,
) -> FitResult:
    """Fit GP hyperparameters by maximising the log marginal likelihood.

    Minimises `-log_marginal_likelihood(...) / n` with an optax optimizer on
    the unconstrained (softplus) scale, so every parameter stays positive.
    Each step draws fresh probes; the step (value, gradient, update) is one
    jit-compiled function.

    Parameters
    ----------
    params
        Initial hyperparameters in natural units (see
        `log_marginal_likelihood`).
    X, y
        Training inputs `(n, d)` and targets `(n,)`.
    key
        A `jax.random` key; split into one key per step.
    optimizer
        An `optax.GradientTransformation`; default `optax.adam(0.1)`.
    num_steps
        Number of optimisation steps (a static int).
    progress
        Print a progress bar with the current loss and the step rate.
    **lml_options
        Passed to `log_marginal_likelihood` (e.g. `kernel=`, `method=`,
        `num_probes=`, `depth=`, `precond_rank=`, `rtol=`, `block_size=`).

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jnp.linspace(0, 1, 40)[:, None]
    >>> y = jnp.sin(6 * X[:, 0])
    >>> p0 = {"lengthscale": 1.0, "variance": 1.0, "noise": 0.1}
    >>> res = fit(p0, X, y, key=jax.random.PRNGKey(0), num_steps=30,
    ...           progress=False, method="cholesky")
    >>> bool(res.losses[-1] < res.losses[0])
    True
    """
    X, y = _params.check_data(X, y)
    params = _params.check_params(params, X.shape[1], X.dtype)
    num_steps = _checks.check_int(num_steps, "num_steps")
    if optimizer is None:
        optimizer = optax.adam(0.1)
    if not isinstance(optimizer, optax.GradientTransformation):
        msg = (
            "`optimizer` must be an `optax.GradientTransformation`, e.g. "
            f"`optax.adam(0.1)`; got {type(optimizer).__name__}."
        )
        raise TypeError(msg)
    n = X.shape[0]

    def loss(raw, key):
        p = _params.constrain(raw)
        return -_lml.log_marginal_likelihood(p, X, y, key=key, **lml_options) / n

    @jax.jit
    def step(raw, state, key):
        value, grad = jax.value_and_grad(loss)(raw, key)
        updates, state = optimizer.update(grad, state, raw)
        return optax.apply_updates(raw, updates), state, value

    raw = _params.unconstrain(params)
    state = optimizer.init(raw)
    keys = jax.random.split(key, num_steps)
    losses = np.empty(num_steps)
    bar = _Progress(num_steps) if progress else None
    t_first = t0 = time.perf_counter()
    for i in range(num_steps):
        raw, state, value = step(raw, state, keys[i])
        losses[i] = float(value)
        if i == 0:
            t0 = time.perf_counter()
        if bar is not None:
            bar.update(i + 1, losses[i], time.perf_counter() - t0, t0 - t_first)
    if bar is not None:
        bar.close()
    rate = (time.perf_counter() - t0) / max(num_steps - 1, 1)
    return FitResult(_params.constrain(raw), losses, rate)


class _Progress:
    """A one-line progress bar (carriage return on a terminal, else a line per 10%)."""

    def __init__(self, total, width=24, stream=None):
        self.total, self.width = total, width
        self.stream = sys.stdout if stream is None else stream
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.every = max(total // 10, 1)

    def update(self, i, loss, elapsed, compile_s):
        if not self.tty and i % self.every and i != self.total and i != 1:
            return
        done = int(self.width * i / self.total)
        rate = (
            f"{elapsed / (i - 1):.2f} s/step"
            if i > 1
            else f"compile+step {compile_s:.1f} s"
        )
        line = (
            f"[{'#' * done}{'.' * (self.width - done)}] {i}/{self.total} "
            f"loss {loss: .4f}  {rate}"
        )
        end = "\r" if self.tty and i != self.total else "\n"
        print(line, end=end, file=self.stream, flush=True)

    def close(self):
        self.stream.flush()


__all__ = ["FitResult", "fit"]
