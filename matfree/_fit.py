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
        The loss at the iterate before each step, shape `(num_steps,)`, or
        shorter when a convergence tolerance (`gp.fit(tol=)`) stopped the
        loop early: one entry per step taken.
    seconds
        Wall-clock seconds of each step, same shape as `losses`; the first
        includes compilation.
    status
        `0` if every step's loss was computed without a run-time problem
        (and, with a tolerance, the loop converged), else the non-zero
        status (`matfree.status`) of the step at which the loop stopped:
        with `throw=False` a bad step ends the loop, `params` and `raw` are
        the last iterate whose loss was fine and the entries of `losses` and
        `seconds` after it are NaN (`throw=True` raises there). With a
        tolerance, `NOT_CONVERGED` if `num_steps` steps did not reach it.
    num_evaluations
        Evaluations of the loss (value and gradient, or value alone inside a
        backtracking line search) in each step, same shape as `losses`
        (integers; `0` after a bad step). `1` per step for a plain optimiser;
        a line search (`optax.lbfgs`) adds its trial points, and with a
        deterministic loss the step reuses the line search's value and
        gradient at the accepted point. Their sum is the work in epochs.
    """

    params: Any
    raw: Any
    losses: np.ndarray
    seconds: np.ndarray
    status: jax.Array
    num_evaluations: np.ndarray


class Minimized(NamedTuple):
    """What `minimize` returns (the fields of `FitResult` but `params`)."""

    raw: Any
    losses: np.ndarray
    seconds: np.ndarray
    status: jax.Array
    num_evaluations: np.ndarray


# `tol`: the loss must change by less than `tol` over this many evaluations (epochs).
WINDOW = 5


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


def check_tol(tol):
    """Return `tol` as a positive Python float, or `None`."""
    if tol is None:
        return None
    try:
        value = float(tol)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        value = None
    if isinstance(tol, bool) or value is None or not (np.isfinite(value) and value > 0):
        msg = (
            "`tol` must be None or a positive number (the largest change of the "
            f"loss over {WINDOW} evaluations that counts as converged, e.g. 1e-3); "
            f"got tol={tol!r}."
        )
        raise ValueError(msg)
    return value


_LINESEARCH_STATES = (
    optax.ScaleByZoomLinesearchState,
    optax.ScaleByBacktrackingLinesearchState,
)


def has_linesearch(optimizer, raw) -> bool:
    """Whether `optimizer` (e.g. `optax.lbfgs()`) runs a line search."""
    state = optimizer.init(raw)
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, _LINESEARCH_STATES))
    return any(isinstance(x, _LINESEARCH_STATES) for x in leaves)


def _linesearch_cache(state):
    """The line search's value and gradient at the current iterate, if it stores both."""
    value = optax.tree.get(state, "value", None)
    grad = optax.tree.get(state, "grad", None)
    if value is None or grad is None:
        return None
    return value, grad


def _converged(losses, evaluations, tol) -> bool:
    """Whether the loss changed by less than `tol` over the last `WINDOW` evaluations.

    `losses[k]` is the loss at iterate `k`, reached after `evaluations[:k].sum()`
    evaluations; compare the last iterate with those at least `WINDOW`
    evaluations back (the latest such one and every iterate after it).
    """
    work = np.concatenate([[0], np.cumsum(evaluations)])  # work[k]: iterate k reached
    back = np.nonzero(work[-1] - work >= WINDOW)[0]
    if not back.size:
        return False
    recent = losses[back[-1] :]
    return bool(recent.max() - recent.min() < tol)


def minimize(
    loss,
    raw,
    *,
    optimizer,
    num_steps: int,
    key=None,
    fixed_key: bool = False,
    tol: float | None = None,
    progress: bool = True,
    label: str = "fit",
    throw: bool = True,
) -> Minimized:
    """Minimise `loss` over `raw` with an optax optimiser; return the iterate and history.

    `loss(raw, key) -> (value, status)` (`key=None`: `loss(raw, None)`). With a
    `key`, step `i` uses `jax.random.split(key, num_steps)[i]` (fresh probes),
    or `key` itself in every step if `fixed_key` (a deterministic loss).
    `value_fn` for optimisers with a line search (`optax.lbfgs`) uses the
    step's key, so the objective is deterministic within a step; it is NaN
    where the loss's status is non-zero, so the line search backs off. With a
    deterministic loss (`key=None` or `fixed_key`) and a line search that
    stores its value and gradient, a step reuses them instead of evaluating
    the loss again at the accepted point.

    `tol`: stop after the first step at which the losses of the iterates of
    the last `WINDOW` evaluations (epochs: one per step for a plain
    optimiser, more with a line search) differ by less than `tol` (status 0);
    if that never happens within `num_steps`, the status is `NOT_CONVERGED`
    (raised with `throw=True`).

    A step whose loss has a non-zero status raises (`throw=True`) or stops
    the loop (`throw=False`): `raw` is then the last iterate whose loss was
    fine, and the losses and seconds of the steps not taken are NaN.
    """
    deterministic = key is None or fixed_key
    if key is None or fixed_key:
        keys = [key] * num_steps
    else:
        keys = jax.random.split(key, num_steps)
    # The data the loss closes over become arguments, not constants XLA folds
    # (90-130 s of compilation per Laplace fit at digits size).
    pure, consts, _, _ = _eager.hoist(loss, raw, keys[0] if num_steps else None)
    state = optimizer.init(raw)
    reuse = deterministic and _linesearch_cache(state) is not None
    ok = jnp.int32(_status.Status.OK)

    def step(raw, state, key, consts):
        def loss_(r, k):
            return pure(consts, r, k)

        def like_raw(tree):  # a line search may promote float32 trial points
            return jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), tree, raw)

        def value_fn(r):
            value, status = loss_(like_raw(r), key)
            return jnp.where(status == _status.Status.OK, value, jnp.nan)

        def evaluate(raw):
            (value, status), grad = jax.value_and_grad(loss_, has_aux=True)(raw, key)
            return value, jnp.asarray(status, jnp.int32), grad, jnp.int32(1)

        if reuse:
            cached_value, cached_grad = _linesearch_cache(state)
            dtype = jax.eval_shape(loss_, raw, key)[0].dtype
            value, status, grad, evals = jax.lax.cond(
                jnp.isfinite(cached_value),
                lambda raw: (
                    jnp.asarray(cached_value, dtype),
                    ok,
                    like_raw(cached_grad),
                    jnp.int32(0),
                ),
                evaluate,
                raw,
            )
        else:
            value, status, grad, evals = evaluate(raw)
        updates, state = optimizer.update(
            grad, state, raw, value=value, grad=grad, value_fn=value_fn
        )
        searched = optax.tree.get(state, "num_linesearch_steps", None)
        if searched is not None:
            evals = evals + jnp.asarray(searched, jnp.int32)
        return optax.apply_updates(raw, updates), state, value, status, evals

    if num_steps:
        # optax's line-search states start weakly typed and come back strong:
        # give the initial state the types of the updated one (one compilation).
        shapes = jax.eval_shape(step, raw, state, keys[0], consts)[1]
        state = jax.tree.map(lambda x, s: jnp.asarray(x, s.dtype), state, shapes)
    step = jax.jit(step)

    losses, seconds = np.full(num_steps, np.nan), np.full(num_steps, np.nan)
    evaluations = np.zeros(num_steps, dtype=np.int64)
    code = _status.Status.OK
    bar = Progress(num_steps, label) if progress else None
    taken = num_steps
    for i in range(num_steps):
        t0 = time.perf_counter()
        new_raw, state, value, status, evals = step(raw, state, keys[i], consts)
        code = int(status)
        seconds[i], losses[i] = time.perf_counter() - t0, float(value)
        if code != _status.Status.OK:
            if throw:
                msg = f"matfree: {label}: step {i}: {_status.message(code)}"
                raise eqx.EquinoxRuntimeError(msg)
            break  # `raw` is the last iterate whose loss was fine
        evaluations[i] = int(evals)
        raw = new_raw
        if bar is not None:
            total = int(evaluations[: i + 1].sum())
            bar.update(i + 1, losses[i], seconds[1 : i + 1].sum(), seconds[0], total)
        if tol is not None and _converged(losses[: i + 1], evaluations[:i], tol):
            taken = i + 1
            break
    else:
        if tol is not None:
            code = _status.Status.NOT_CONVERGED
            if throw:
                msg = (
                    f"matfree: {label}: did not converge: the loss did not change by "
                    f"less than tol={tol:g} over {WINDOW} evaluations within "
                    f"num_steps={num_steps} steps (last losses "
                    f"{np.array2string(losses[-3:], precision=6)}); raise `num_steps`, "
                    "or pass `throw=False` to keep the iterate"
                )
                raise eqx.EquinoxRuntimeError(msg)
    if bar is not None:
        bar.close()
    return Minimized(
        raw,
        losses[:taken],
        seconds[:taken],
        jnp.int32(code),
        evaluations[:taken],
    )


class Progress:
    """A one-line progress bar: carriage returns on a terminal, else a line per 10%.

    Off a terminal it also prints a line whenever `every_s` seconds have passed
    since the last one, so a slow fit shows its progress in a log file.
    """

    def __init__(self, total, label="fit", width=24, stream=None, every_s=10.0):
        self.total, self.label, self.width = total, label, width
        self.stream = sys.stdout if stream is None else stream
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.every = max(total // 10, 1)
        self.every_s, self.last = every_s, time.perf_counter()

    def update(self, i, loss, elapsed, compile_s, evaluations=None):
        """Show step `i` of `total` with the loss, the time per step and the evaluations."""
        now = time.perf_counter()
        due = now - self.last >= self.every_s
        if not self.tty and i % self.every and i != self.total and i != 1 and not due:
            return
        self.last = now
        done = int(self.width * i / self.total)
        rate = (
            f"{elapsed / (i - 1):.2f} s/step"
            if i > 1
            else f"compile+step {compile_s:.1f} s"
        )
        evals = "" if evaluations is None else f"  {evaluations} evaluations"
        line = (
            f"{self.label} [{'#' * done}{'.' * (self.width - done)}] {i}/{self.total} "
            f"loss {loss: .4e}  {rate}{evals}"
        )
        end = "\r" if self.tty and i != self.total else "\n"
        self.open = end == "\r"
        print(line, end=end, file=self.stream, flush=True)

    def close(self):
        """End an open line (a loop stopped early) and flush the stream."""
        if getattr(self, "open", False):
            print(file=self.stream)
        self.stream.flush()
