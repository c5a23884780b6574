"""Synthetic data: smooth random coefficient fields, initial conditions, observations."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from matfree import _checks
from matfree import status as _status
from matfree.pde import _operators, _solve


def random_field(key, shape, *, num_modes: int = 4, mean=1.0, contrast=3.0):
    """A smooth random positive field: `mean * contrast ** g`, `max |g| = 1`.

    `g` is a sum of cosine modes `cos(p pi x) cos(q pi y)`, `1 <= p, q <=
    num_modes`, with standard normal weights scaled by `1 / (p^2 + q^2)`, so
    the field lies in `[mean / contrast, mean * contrast]`.

    Examples
    --------
    >>> import jax
    >>> k = random_field(jax.random.PRNGKey(0), (16, 16), contrast=2.0)
    >>> bool(k.min() >= 0.5 and k.max() <= 2.0)
    True
    """
    num_modes = _checks.check_int(num_modes, "num_modes")
    y, x = _solve.grid(shape)
    p = jnp.arange(1, num_modes + 1)
    weights = jax.random.normal(key, (num_modes, num_modes))
    weights = weights / (p[:, None] ** 2 + p[None, :] ** 2)
    cy = jnp.cos(jnp.pi * p[:, None, None] * y)  # (modes, ny, nx)
    cx = jnp.cos(jnp.pi * p[:, None, None] * x)
    g = jnp.einsum("pq,pij,qij->ij", weights, cy, cx)
    g = g / jnp.max(jnp.abs(g))
    return mean * contrast**g


def bumps(shape, centers, *, width=0.1):
    """Gaussian bumps `exp(-|z - c|^2 / (2 width^2))`, one per center, `(m, ny, nx)`.

    Examples
    --------
    >>> u0 = bumps((8, 8), [(0.5, 0.5), (0.25, 0.75)])
    >>> u0.shape
    (2, 8, 8)
    """
    centers = jnp.asarray(centers, dtype=float)
    if centers.ndim != 2 or centers.shape[1] != 2:
        msg = (
            "`centers` must have shape (m, 2), one (y, x) pair per bump; got shape "
            f"{centers.shape}."
        )
        raise ValueError(msg)
    y, x = _solve.grid(shape)
    d2 = (y - centers[:, 0, None, None]) ** 2 + (x - centers[:, 1, None, None]) ** 2
    return jnp.exp(-d2 / (2 * width**2))


def simulate(k, u0, times, *, depth: int, num_substeps: int = 1, operator=None):
    """Solutions at increasing `times`, shape `(len(times), *u0.shape)`.

    `u0` is one initial condition `(ny, nx)` or a stack `(m, ny, nx)`; each
    interval between consecutive times is one `solve` (with `num_substeps`
    substeps of `depth`), so the result is differentiable w.r.t. `k` and `u0`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> k = jnp.ones((6, 6))
    >>> u0 = bumps((6, 6), [(0.5, 0.5)])
    >>> simulate(k, u0, [0.0, 0.01, 0.02], depth=10).shape
    (3, 1, 6, 6)
    """
    k = _operators.check_field(k)
    times = check_times(times)
    u0 = jnp.asarray(u0)
    batched = u0.ndim == 3
    _solve.check_initial(u0[0] if batched else u0, k)

    _operators.check_positive(k)
    out, status = trajectory(k, u0, times, depth, num_substeps, operator)
    return _status.error_if(out, status)


def trajectory(k, u0, times, depth, num_substeps, operator):
    """`(solutions, status)` at `times` (checked) without raising: `simulate`'s core."""
    batched = jnp.ndim(u0) == 3
    out, codes = [], []
    u, previous = u0, 0.0
    for time in times:
        dt = jnp.asarray(time - previous, k.dtype)
        u, code = _advance(k, u, dt, depth, num_substeps, operator, batched)
        previous = time
        out.append(u)
        codes.append(code)
    codes = jnp.stack(codes)
    return jnp.stack(out), codes[jnp.argmax(codes != 0)]


@eqx.filter_jit
def _advance(k, u, dt, depth, num_substeps, operator, batched):
    def one(u):
        r = _solve.solve(
            k, u, dt, depth=depth, num_substeps=num_substeps, operator=operator, throw=False
        )
        return r.value, r.status

    if not batched:
        return one(u)
    values, codes = jax.vmap(one)(u)
    return values, codes[jnp.argmax(codes != 0)]


def check_times(times) -> list[float]:
    """Concrete, non-negative, non-decreasing observation times, as floats."""
    try:
        values = [float(s) for s in np.atleast_1d(np.asarray(times, dtype=float))]
    except (TypeError, jax.errors.TracerArrayConversionError):
        msg = "`times` must be a concrete 1-D sequence of floats (not traced)."
        raise TypeError(msg) from None
    if not values:
        msg = "`times` must contain at least one time."
        raise ValueError(msg)
    if values[0] < 0 or any(b < a for a, b in itertools.pairwise(values)):
        msg = (
            f"`times` must be non-negative and non-decreasing; got {values}. The "
            "diffusion equation cannot be run backward in time."
        )
        raise ValueError(msg)
    return values


def add_noise(key, u, *, relative=0.01):
    """`u` plus Gaussian noise of standard deviation `relative * std(u)`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> u = jnp.ones((4, 4)).at[0].set(3.0)
    >>> add_noise(jax.random.PRNGKey(0), u, relative=0.0).shape
    (4, 4)
    """
    scale = relative * jnp.std(u)
    return u + scale * jax.random.normal(key, jnp.shape(u), jnp.result_type(u))
