"""Machinery shared by the Krylov solvers.

Every method runs on a *block* of `m` right-hand sides at once, shape
`(m, n)`: one batched matvec per step. Per-column scalars have shape `(m,)`.
A column that has stopped (converged, broke down, ...) keeps running through
the loop with step lengths masked to zero, so its iterate no longer changes;
the loop ends when no column is active.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from matfree._flat import safe_norm, sq_norm, vdot
from matfree.status import Status

RUNNING = -1  # internal: still iterating (reported as NOT_CONVERGED at the end)
CONVERGED = Status.OK
MAXITER = Status.NOT_CONVERGED
BREAKDOWN = Status.BREAKDOWN
INDEFINITE = Status.NOT_POSITIVE_DEFINITE
NONFINITE = Status.NONFINITE
STAGNATED = Status.STAGNATED
# A restart cycle that reduces the residual by less than this fraction made no
# progress (restarted GMRES/GCR are monotone: a cycle never increases it).
STAGNATION = 1e-6


def stagnated(flag, cycle_complete, res_start, res_end):
    """Mark running columns whose completed restart cycle made no progress."""
    stuck = (flag == RUNNING) & cycle_complete & (res_end > (1 - STAGNATION) * res_start)
    return jnp.where(stuck, STAGNATED, flag).astype(jnp.int32)


def to_status(flag):
    """The `matfree.status` code of a final flag: `RUNNING` becomes `NOT_CONVERGED`."""
    return jnp.where(flag == RUNNING, MAXITER, flag).astype(jnp.int32)


class Raw(NamedTuple):
    """What a method returns on the block: iterate, steps, status, history."""

    x: jax.Array  # (m, n)
    num_steps: jax.Array  # (m,) int32
    flag: jax.Array  # (m,) int32, RUNNING where stopped by maxiter
    history: Any  # (m, maxiter + 1) or None


def div(a, b):
    """`a / b`, and zero where `b == 0`; safe for autodiff."""
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1), 0)


def dot(X, Y):
    """Column-wise inner products `sum(conj(X) * Y)` of two blocks (m, n) -> (m,)."""
    return vdot(X, Y)


def rdot(X, Y):
    """The real part of `dot`: for Hermitian methods, where `<x, A x>` is real."""
    return jnp.real(vdot(X, Y))


def norm(X):
    """Column-wise Euclidean norms (m, n) -> (m,); zero gradient at 0, NaN stays NaN."""
    sq = sq_norm(X)
    return jnp.where(sq == 0, 0, safe_norm(X, axis=-1) + jnp.where(jnp.isnan(sq), sq, 0))


def col(s):
    """A per-column scalar (m,) as a column (m, 1) for broadcasting."""
    return s[:, None]


def initial_flag(res, tol):
    """Status before the first step: converged, running or non-finite."""
    flag = jnp.where(res <= tol, CONVERGED, RUNNING)
    return jnp.where(jnp.isfinite(res), flag, NONFINITE).astype(jnp.int32)


def start(mv, B, X0, tol, maxiter, history):
    """Shared start of every iteration: `(X, R, flag, k, hist)`.

    Initial guess (zero unless `X0`), residual `B - A X`, its norm, the
    initial status, zero step counts and the residual-history buffer.
    """
    X = jnp.zeros_like(B) if X0 is None else X0
    R = B if X0 is None else B - mv(X0)
    res = norm(R)
    flag = initial_flag(res, tol)
    k = jnp.zeros((B.shape[0],), jnp.int32)
    return X, R, flag, k, new_history(res, maxiter, history)


def update_flag(flag, act, res, tol, broke=None, indefinite=None):
    """Update the status of the columns that were active in this step."""
    # int32 constants: the chain of `where`s stays int32 (no int64 and cast).
    new = jnp.where(res <= tol, jnp.int32(CONVERGED), jnp.int32(RUNNING))
    if broke is not None:
        new = jnp.where(broke & (new != CONVERGED), BREAKDOWN, new)
    if indefinite is not None:
        new = jnp.where(indefinite, INDEFINITE, new)
    new = jnp.where(jnp.isfinite(res), new, NONFINITE)
    return jnp.where(act, new, flag).astype(jnp.int32)


def active(flag, num_steps, maxiter):
    """Columns that take another step."""
    return (flag == RUNNING) & (num_steps < maxiter)


def stepping(flag, num_steps, maxiter):
    """`active` inside a loop body whose condition is `any(active(...))`.

    A block of one column is active whenever the body runs (`loop` runs it
    only while its condition holds), so the mask is the constant `True` and
    every `where` on it folds away at compile time.
    """
    if flag.shape[0] == 1:
        return jnp.ones(flag.shape, bool)
    return active(flag, num_steps, maxiter)


def new_history(res, maxiter, enabled):
    """A residual-history buffer with the initial residual in column 0."""
    if not enabled:
        return None
    h = jnp.full((res.shape[0], maxiter + 1), jnp.nan, res.dtype)
    return h.at[:, 0].set(res)


def record(history, num_steps, act, res):
    """Write `res` at position `num_steps` for the active columns."""
    if history is None:
        return None
    rows = jnp.arange(history.shape[0])
    old = history[rows, num_steps]
    return history.at[rows, num_steps].set(jnp.where(act, res, old))


def loop(cond, body, init, maxiter: int, differentiable: bool):
    """`while_loop`, or a static-length loop that autodiff can reverse through."""
    if not differentiable:
        return jax.lax.while_loop(cond, body, init)

    def step(_, state):
        return jax.lax.cond(cond(state), body, lambda s: s, state)

    return jax.lax.fori_loop(0, maxiter, step, init)


def identity(X):
    """The identity preconditioner."""
    return X
