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


def ggn_fn(model_fn, loss_fn, params):
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


def zeros_like_flat(x):
    return jnp.zeros_like(x)
