"""The one optimisation loop of the applications (`gp.fit`, `pde.invert`).

A jit-compiled step (value, gradient, optax update) in a Python loop with a
one-line progress bar, returning a `FitResult`. The loss reports a status
with its value; a non-zero status stops the loop with the status message
(`throw=True`) or is kept in the result (`throw=False`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from matfree import _eager
from matfree import status as _status


class FitResult(NamedTuple):
    """The result of a fitting loop (`matfree.gp.fit`, `matfree.pde.invert`).

    Attributes
    ----------
    params
        The fitted parameters in natural units (a GP's hyperparameter dict,
        a PDE's coefficient field).
    raw
        The unconstrained variable that was optimised (softplus-inverse of
        the GP hyperparameters, `log k` of a PDE field).
    losses
        The loss at the iterate before each step, shape `(num_steps,)`.
    seconds
        Wall-clock seconds of each step, shape `(num_steps,)`; the first
        includes compilation.
    status
        `0` if every step's loss was computed without a run-time problem,
        else the non-zero status (`matfree.status`) of the step at which the
        loop stopped: with `throw=False` a bad step ends the loop, `params`
        and `raw` are the last iterate whose loss was fine and the entries of
        `losses` and `seconds` after it are NaN (`throw=True` raises there).
    """

    params: Any
    raw: Any
    losses: np.ndarray
    seconds: np.ndarray
    status: jax.Array


def check_optimizer(optimizer, default):
    """Return `optimizer`, or `default` if `None`; raise unless it is an optax one."""
    optimizer = default if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        msg = (
            "`optimizer` must be an `optax.GradientTransformation`, e.g. "
            f"`optax.adam(0.1)`; got {type(optimizer).__name__}."
        )
        raise TypeError(msg)
    return optimizer


def minimize(
    loss,
    raw,
    *,
    optimizer,
    num_steps: int,
    key=None,
    progress: bool = True,
    label: str = "fit",
    throw: bool = True,
) -> tuple[Any, np.ndarray, np.ndarray, jax.Array]:
    """Minimise `loss` over `raw` with an optax optimiser; return the iterate and history.

    `loss(raw, key) -> (value, status)` (`key=None`: `loss(raw, None)`). With a
    `key`, step `i` uses `jax.random.split(key, num_steps)[i]` (fresh probes);
    `value_fn` for optimisers with a line search (`optax.lbfgs`) uses the
    step's key, so the objective is deterministic within a step.

    Returns `(raw, losses, seconds, status)`. A step whose loss has a
    non-zero status raises (`throw=True`) or stops the loop (`throw=False`):
    `raw` is then the last iterate whose loss was fine, and the losses and
    seconds of the steps not taken are NaN.
    """
    keys = [None] * num_steps if key is None else jax.random.split(key, num_steps)
    # The data the loss closes over become arguments, not constants XLA folds
    # (90-130 s of compilation per Laplace fit at digits size).
    pure, consts, _, _ = _eager.hoist(loss, raw, keys[0] if num_steps else None)

    @jax.jit
    def step(raw, state, key, consts):
        def loss_(r, k):
            return pure(consts, r, k)

        def value_fn(r):
            return loss_(r, key)[0]

        (value, status), grad = jax.value_and_grad(loss_, has_aux=True)(raw, key)
        updates, state = optimizer.update(
            grad, state, raw, value=value, grad=grad, value_fn=value_fn
        )
        return optax.apply_updates(raw, updates), state, value, status

    state = optimizer.init(raw)
    losses, seconds = np.full(num_steps, np.nan), np.full(num_steps, np.nan)
    code = _status.Status.OK
    bar = Progress(num_steps, label) if progress else None
    for i in range(num_steps):
        t0 = time.perf_counter()
        new_raw, state, value, status = step(raw, state, keys[i], consts)
        code = int(status)
        seconds[i], losses[i] = time.perf_counter() - t0, float(value)
        if code != _status.Status.OK:
            if throw:
                msg = f"matfree: {label}: step {i}: {_status.message(code)}"
                raise eqx.EquinoxRuntimeError(msg)
            break  # `raw` is the last iterate whose loss was fine
        raw = new_raw
        if bar is not None:
            bar.update(i + 1, losses[i], seconds[1 : i + 1].sum(), seconds[0])
    if bar is not None:
        bar.close()
    return raw, losses, seconds, jnp.int32(code)


class Progress:
    """A one-line progress bar: carriage returns on a terminal, else a line per 10%."""

    def __init__(self, total, label="fit", width=24, stream=None):
        self.total, self.label, self.width = total, label, width
        self.stream = sys.stdout if stream is None else stream
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.every = max(total // 10, 1)

    def update(self, i, loss, elapsed, compile_s):
        """Show step `i` of `total` with the loss and the time per step."""
        if not self.tty and i % self.every and i != self.total and i != 1:
            return
        done = int(self.width * i / self.total)
        rate = (
            f"{elapsed / (i - 1):.2f} s/step"
            if i > 1
            else f"compile+step {compile_s:.1f} s"
        )
        line = (
            f"{self.label} [{'#' * done}{'.' * (self.width - done)}] {i}/{self.total} "
            f"loss {loss: .4e}  {rate}"
        )
        end = "\r" if self.tty and i != self.total else "\n"
        print(line, end=end, file=self.stream, flush=True)

    def close(self):
        """Flush the stream."""
        self.stream.flush()
