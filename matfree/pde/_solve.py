"""`solve`: u(t) = expm(t A(k)) u0 through `matfree.exp_action`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from matfree import _checks, status
from matfree.funm import FunmResult, _exp
from matfree.pde import _operators
from matfree.status import Status


def solve(
    k,
    u0,
    t,
    *,
    depth: int,
    operator: _operators.Operator | None = None,
    num_substeps: int | None = None,
    tol=None,
    gradient: str = "adjoint",
    throw: bool = True,
) -> FunmResult:
    r"""Return `u(t) = expm(t A(k)) u0`, the solution of `du/dt = A(k) u` at time `t`.

    `A(k)` is `operator(k)` (default: `diffusion(k)`, symmetric negative
    definite, through Lanczos; `AdvectionDiffusion(velocity)` goes through
    Arnoldi). The exponential action is `matfree.exp_action` with `depth`
    Krylov steps per substep; gradients w.r.t. `k`, `u0`, `t` (and the
    operator's arrays, e.g. `velocity`) come from the adjoint of the Krylov
    decomposition, with memory `O(n (depth + num_substeps))`.

    Choosing `depth` and `num_substeps`: the spectrum of `A` reaches
    `spectral_bound(k) ~ 8 max(k) (n_x + 1)^2`, so `t |A|` grows with the grid
    and the Krylov method needs `depth^2 / num_substeps` of the order of
    `t |A|`; `suggest_num_substeps` turns the Hochbruck–Lubich bound into a
    number. **Gradients converge later than values** (by about one order of
    magnitude with the two-sided rule of `exp_action`; see the docs page).
    When you differentiate, ask for a relative accuracy
    `1e-3 x` what you need of the value (e.g. `rtol=1e-10` in
    `suggest_num_substeps`), and check the gradient once at twice the depth.

    Parameters
    ----------
    k
        Positive coefficient field, shape `(ny, nx)`. Non-positive entries raise
        `ValueError` (concrete `k`) or, traced under `jit`/`grad`, give status
        `INVALID_INPUT` and a NaN value (raised with `throw=True`).
    u0
        Initial condition, shape `(ny, nx)`, same dtype as `k`.
    t
        Final time, a scalar `>= 0` (may be traced and differentiated).
    depth
        Krylov depth per substep, a static int, `1 <= depth <= ny * nx`.
    operator
        A `matfree.pde.Operator`: `Diffusion()` (default) or
        `AdvectionDiffusion(velocity)`.
    num_substeps
        Static number of equal substeps of `[0, t]` (without `tol`; `None`:
        one), or the maximum number of adaptive substeps (with `tol`;
        `None`: 1000).
    tol
        Optional relative tolerance of `exp_action`'s adaptive substepping:
        the substeps are then chosen automatically.
    gradient
        `"adjoint"` (default): the custom rules of `exp_action` (reverse mode
        only); `"autodiff"` differentiates through the loops (forward mode too).
    throw
        If `True` (default), a non-zero `status` (a non-positive traced `k`,
        or a failed `exp_action`) raises via `matfree.status.error_if`, also
        under `jit`, whichever field is read; with a non-symmetric operator
        a gradient whose own error estimate fails is NaN (whatever `throw`)
        and, with `throw=True`, the backward pass raises (see
        `matfree.exp_action`).

    Returns
    -------
    FunmResult
        `value` is `u(t)`, shape `(ny, nx)`; `status`, `error_estimate`,
        `num_substeps` and `num_matvecs` as in `exp_action`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import pde
    >>> k = jnp.ones((8, 8))
    >>> y, x = pde.grid((8, 8))
    >>> u0 = jnp.sin(jnp.pi * x) * jnp.sin(jnp.pi * y)
    >>> u = pde.solve(k, u0, 0.01, depth=8).value
    >>> lam = -2 * 4 * 81 * jnp.sin(jnp.pi / 18) ** 2  # discrete eigenvalue
    >>> bool(jnp.allclose(u, jnp.exp(0.01 * lam) * u0))
    True
    """
    operator = _operators.Diffusion() if operator is None else operator
    if not isinstance(operator, _operators.Operator):
        msg = (
            "`operator` must be a `matfree.pde.Operator`, e.g. `pde.Diffusion()` or "
            f"`pde.AdvectionDiffusion(velocity)`; got {type(operator).__name__}."
        )
        raise TypeError(msg)
    k = _operators.check_field(k)
    operator.check(k)
    u0 = check_initial(u0, k)
    check_time(t)
    res = _exp.run(
        operator(k),
        u0,
        t=t,
        depth=depth,
        symmetric=operator.symmetric,
        num_substeps=num_substeps,
        tol=tol,
        reortho=True,
        gradient=gradient,
        throw=False,  # the forward status is combined with `k`'s below
        throw_gradient=throw,
    )
    invalid = ~jnp.all(k > 0)  # only possible for a traced `k` (checked above)
    code = jnp.where(invalid, jnp.int32(Status.INVALID_INPUT), res.status)
    value = jnp.where(invalid, jnp.nan, res.value)
    result = res._replace(value=value, status=code)
    return status.error_if(result, code) if throw else result


def check_initial(u0, k, name: str = "u0"):
    """Check that `u0` is a floating field on the grid of `k`, with its dtype."""
    u0 = jnp.asarray(u0)
    if u0.shape != k.shape:
        msg = (
            f"`{name}` must have the grid shape of `k`, {k.shape}; got shape "
            f"{u0.shape}. Use one (ny, nx) grid for the coefficient field and the "
            "solution (for several initial conditions, `jax.vmap` over them)."
        )
        raise ValueError(msg)
    if u0.dtype != k.dtype:
        msg = (
            f"`{name}` and `k` must have the same dtype; got {u0.dtype} and "
            f"{k.dtype}. Cast one of them, e.g. `{name}.astype(k.dtype)`."
        )
        raise TypeError(msg)
    return u0


def check_time(t) -> None:
    """Raise `ValueError` for a concrete negative (or non-finite) time."""
    if jnp.ndim(t) != 0:
        msg = f"`t` must be a scalar time; got shape {jnp.shape(t)}."
        raise ValueError(msg)
    if isinstance(t, jax.core.Tracer):
        return
    t_np = float(np.asarray(t))
    if not (math.isfinite(t_np) and t_np >= 0):
        msg = (
            f"`t` must be finite and non-negative; got t={t_np}. The diffusion "
            "equation cannot be run backward in time (expm(t A) u0 with t < 0 "
            "amplifies high frequencies without bound)."
        )
        raise ValueError(msg)


def suggest_num_substeps(k, t, *, depth: int, rtol: float = 1e-8, operator=None) -> int:
    """Number of equal substeps for which `solve` reaches `rtol` (a priori bound).

    Uses the Hochbruck–Lubich bound for symmetric negative semidefinite
    operators: a substep of length `tau` has relative error below `rtol` at
    depth `m` if `tau |A| <= 4 m^2 / (5 log(10 / rtol))`, with `|A|` bounded by
    `operator.spectral_bound(k)` (Gershgorin). The bound is pessimistic for
    smooth `u0`; for non-symmetric operators it is a heuristic. Needs a
    concrete `k` and `t` (it returns a static int).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> suggest_num_substeps(jnp.ones((31, 31)), 0.01, depth=20)
    6
    """
    operator = _operators.Diffusion() if operator is None else operator
    depth = _checks.check_int(depth, "depth")
    check_time(t)
    if isinstance(k, jax.core.Tracer) or isinstance(t, jax.core.Tracer):
        msg = (
            "`suggest_num_substeps` needs concrete `k` and `t` (it returns a static "
            "int); call it outside `jit`, e.g. with a bound on k."
        )
        raise TypeError(msg)
    bound = float(operator.spectral_bound(k)) * float(t)
    per_step = 4 * depth**2 / (5 * math.log(10 / rtol))
    return max(1, math.ceil(bound / per_step))


def grid(shape):
    """Node coordinates `(y, x)`, each of shape `(ny, nx)`, of the interior grid.

    Examples
    --------
    >>> y, x = grid((1, 3))
    >>> x
    Array([[0.25, 0.5 , 0.75]], dtype=float64)
    """
    ny, nx = (_checks.check_int(s, "shape") for s in shape)
    ys = jnp.arange(1, ny + 1) / (ny + 1)
    xs = jnp.arange(1, nx + 1) / (nx + 1)
    return tuple(jnp.meshgrid(ys, xs, indexing="ij"))
