"""Shared pieces of the optimisers: objective checks, line search, curvature products."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

from matfree import status

INT = jnp.int32


def require_params(params, name: str):
    """Raise unless `params` was passed to `update` (the optimisers need it)."""
    if params is None:
        msg = (
            f"`params` is required by `{name}`'s update: call "
            "`opt.update(grads, state, params, value_fn=f)`."
        )
        raise ValueError(msg)


def require_value_fn(value_fn, name: str):
    """Raise a `TypeError` unless the objective was passed as `value_fn=`."""
    if value_fn is None:
        msg = (
            f"`value_fn` is required by `{name}`'s update (the objective, for the "
            "line search and the curvature): call "
            "`opt.update(grads, state, params, value_fn=f)` with `f(params) -> scalar`."
        )
        raise TypeError(msg)
    if not callable(value_fn):
        msg = (
            "`value_fn` must be a callable `params -> scalar`; got "
            f"{type(value_fn).__name__}."
        )
        raise TypeError(msg)


def check_scalar(value, name: str = "value_fn"):
    """Raise at trace time unless the objective's value is a real floating scalar."""
    if jnp.shape(value) != ():
        msg = (
            f"`{name}` must return a scalar (the objective); got shape "
            f"{jnp.shape(value)}. Reduce it, e.g. with `jnp.mean` or `jnp.sum`."
        )
        raise ValueError(msg)
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
        msg = (
            f"`{name}` must return a real floating scalar; got dtype "
            f"{jnp.result_type(value)}."
        )
        raise TypeError(msg)
    return value


def flat(tree):
    """Ravel a pytree of one floating dtype: `(vector, unravel)`."""
    return jax.flatten_util.ravel_pytree(tree)


def flat_objective(value_fn, params):
    """The objective on flat vectors, with its scalar check; `(f, x0, unravel)`."""
    x0, unravel = flat(params)

    def f(x):
        return check_scalar(value_fn(unravel(x)))

    return f, x0, unravel


def check_finite(tree, value, grad):
    """Attach an error (always raised) if the value or the gradient is not finite."""
    ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    code = jnp.where(ok, INT(status.Status.OK), INT(status.Status.NONFINITE))
    return status.error_if(tree, code)


def armijo(f, x, p, f0, slope, *, c1, shrink, maxiter, t0=1.0):
    """Backtrack until `f(x + t p) <= f0 + c1 t slope`; non-finite trials are rejected.

    A relative slack of a few ulps of `|f0|` lets the test hold at the
    objective's rounding level (near a minimiser `f0 + c1 t slope` is below
    the rounding error of `f`). Returns `(t, f_new, num_evals, ok)`; on
    failure `t = 0` and `f_new = f0`.
    """
    dtype = f0.dtype
    slack = 8 * jnp.finfo(dtype).eps * jnp.abs(f0)

    def trial(t):
        ft = f(x + t * p)
        return jnp.where(jnp.isfinite(ft), ft, jnp.inf)

    def accept(t, ft):
        return ft <= f0 + c1 * t * slope + slack

    t0 = jnp.asarray(t0, dtype)
    f_t0 = trial(t0)

    def cond(carry):
        t, ft, k = carry
        return (~accept(t, ft)) & (k < maxiter)

    def body(carry):
        t, _, k = carry
        t = t * shrink
        return t, trial(t), k + 1

    t, ft, k = jax.lax.while_loop(cond, body, (t0, f_t0, INT(0)))
    ok = accept(t, ft)
    return jnp.where(ok, t, 0.0), jnp.where(ok, ft, f0), k + 1, ok


def hvp_fn(f, x):
    """Hessian-vector products of `f` at `x` by forward-over-reverse (linearised once)."""
    _, lin = jax.linearize(jax.grad(f), x)
    return lin


def ggn_fn_of(model_fn, loss_fn, params):
    """Generalised Gauss-Newton products `J^T H_L J v` on flat vectors.

    `model_fn(params) -> outputs`, `loss_fn(outputs) -> scalar`. The model is
    linearised once (`jax.linearize` for `J`, `jax.vjp` for `J^T`), the loss's
    Hessian applied by forward-over-reverse.
    """
    x, unravel = flat(params)

    def model(x):
        return model_fn(unravel(x))

    out, jvp = jax.linearize(model, x)
    _, vjp = jax.vjp(model, x)
    check_scalar(loss_fn(out), "loss_fn")
    _, hl = jax.linearize(jax.grad(loss_fn), out)

    def product(v):
        return vjp(hl(jvp(v)))[0]

    return product


def curvature(name, params, f, x, *, model_fn, loss_fn, ggn_fn, hessian_ok=True):
    """The curvature-vector product on flat vectors, from the update's extra arguments.

    A user's `ggn_fn(params, v) -> G v`, or `model_fn` with `loss_fn` (the
    Gauss-Newton matrix `J^T H_loss J`), or, if `hessian_ok`, the Hessian of
    the flat objective `f` by forward-over-reverse.
    """
    if ggn_fn is not None:
        if model_fn is not None or loss_fn is not None:
            msg = f"`{name}`: pass either `ggn_fn` or `model_fn` and `loss_fn`, not both."
            raise ValueError(msg)
        if not callable(ggn_fn):
            msg = f"`ggn_fn` must be a callable `(params, v) -> G v`; got {ggn_fn!r}."
            raise TypeError(msg)
        _, unravel = flat(params)
        return lambda v: flat(ggn_fn(params, unravel(v)))[0]
    if (model_fn is None) != (loss_fn is None):
        msg = (
            f"`{name}`: `model_fn` and `loss_fn` go together (the Gauss-Newton matrix "
            "is `J^T H_loss J`, `J` the Jacobian of `model_fn`); pass both."
        )
        raise ValueError(msg)
    if model_fn is not None:
        return ggn_fn_of(model_fn, loss_fn, params)
    if not hessian_ok:
        msg = (
            f"`{name}` needs the curvature: pass `model_fn=` and `loss_fn=` (the "
            "Fisher of a likelihood model equals its Gauss-Newton matrix) or "
            "`fisher_fn=` to `update`."
        )
        raise TypeError(msg)
    return hvp_fn(f, x)


def start(updates, params, value_fn, value, name):
    """Validate an update's inputs; return `(f, x, g, f0, num_values)` on flat vectors.

    `f` is the flat objective, `x` the flat parameters, `g` the flat incoming
    gradient and `f0` the value at `x` (evaluated unless `value` is given;
    `num_values` says whether it was). A non-finite `g` or `f0` raises.
    """
    require_params(params, name)
    require_value_fn(value_fn, name)
    f, x, _ = flat_objective(value_fn, params)
    g, _ = flat(updates)
    if g.shape != x.shape:
        msg = (
            "`updates` must be the gradient of `value_fn` at `params` (same "
            f"structure and size); got size {g.shape[0]}, expected {x.shape[0]}."
        )
        raise ValueError(msg)
    if value is None:
        f0, nv = f(x), INT(1)
    else:
        f0, nv = check_scalar(jnp.asarray(value), "value"), INT(0)
    f0 = f0.astype(x.dtype)
    g = g.astype(x.dtype)
    g, f0 = check_finite((g, f0), f0, g)
    return f, x, g, f0, nv


def descent_or_gradient(g, p):
    """`(p, g^T p, fell_back)`: `p` if finite and downhill, else `-g`."""
    slope = g @ p
    descent = jnp.all(jnp.isfinite(p)) & (slope < 0)
    fallback = (~descent) & jnp.any(g != 0)
    p = jnp.where(descent, p, -g)
    slope = jnp.where(descent, slope, -(g @ g))
    return p, slope, fallback


def unravel_like(params, v):
    """The flat vector `v` as a pytree shaped like `params`."""
    return flat(params)[1](v)


def check_armijo(c1, shrink):
    """Check the line-search constants at construction."""
    if not 0 < c1 < 1:
        msg = f"`c1` (the Armijo constant) must be in (0, 1); got c1={c1!r}."
        raise ValueError(msg)
    if not 0 < shrink < 1:
        msg = f"`shrink` (the backtracking factor) must be in (0, 1); got {shrink!r}."
        raise ValueError(msg)
