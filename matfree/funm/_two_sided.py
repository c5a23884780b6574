"""Gradients of `f(A) v` (symmetric `A`) from a second Lanczos run on the cotangent.

Differentiating the Lanczos decomposition of `v` gives the derivative of the
*approximation* `p_v(A) v`, where `p_v` interpolates `f` at the Ritz values of
`v`. When `v` has little weight on part of the spectrum (a smooth state of a
diffusion, say), `p_v` is poor there, and so is that derivative: the value can
be exact to 1e-15 while the gradient is wrong by orders of magnitude.

This rule differentiates `f(A) v` itself instead. For a cotangent `ybar`:

- `vbar = f(A) ybar` (A is symmetric), by Lanczos on `ybar`;
- the derivative w.r.t. the operator is the Daleckii–Krein formula
  `ybar^T L_f(A, dA) v = sum_ij f[mu_i, theta_j] (z_i . ybar)(z_i^T dA y_j)(y_j . v)`
  with Ritz pairs `(theta_j, y_j)` from the Krylov space of `v` and
  `(mu_i, z_i)` from that of `ybar`; it is exact when both spaces are
  invariant, and converges as fast as the two values do. The sum is one VJP of
  the batched matvec over the `k` basis vectors of `v`.

Cost of the backward pass: `k` matvecs (Lanczos on `ybar`) and one VJP of the
matvec applied to `k` vectors at once; memory `O(n k)`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from matfree import _dense, decomp
from matfree.funm import _common


def lanczos_action(f, fn, depth, reortho, v, params, s, prepare=None):
    """Return `(f(A) v, (T, |v|, aux))` with `f(lambda, s, aux)` elementwise.

    `fn(x, *params)` is the flat matvec of a symmetric `A`; `s` is a scalar
    parameter of `f` (e.g. the time of an exponential), differentiable.
    `prepare(T, residual, |v|, s) -> aux` (all arguments without gradient)
    may choose constants for `f` from the decomposition, e.g. a step length.
    `T`, `|v|` and `aux` are returned for diagnostics and carry no gradient.
    """
    if prepare is None:

        def prepare(*_):
            return ()

    y, T, c, aux = _action(f, prepare, fn, depth, reortho, v, params, s)
    stop = jax.lax.stop_gradient
    return y, (stop(T), stop(c), jax.tree_util.tree_map(stop, aux))


def _lanczos(fn, params, v, depth, reortho):
    # A zero vector (e.g. a zero cotangent) has no Krylov space, but f(A) 0 = 0:
    # `decompose` runs on a stand-in unit vector and returns |v| = 0.
    res, c = _common.decompose(
        decomp.lanczos, lambda x: fn(x, *params), v, depth=depth, reortho=reortho
    )
    # f may be infinite on the stand-in's Ritz values; use T = I there.
    T = jnp.where(c > 0, res.tridiag(), jnp.eye(depth, dtype=v.dtype))
    return res.basis, T, res.residual, c


def _apply(f, s, aux, Q, T, c):
    w, S = jnp.linalg.eigh(T)
    return c * (Q.T @ (S @ (f(w, s, aux) * S[0]))), w, S


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _action(f, prepare, fn, depth, reortho, v, params, s):
    return _forward(f, prepare, fn, depth, reortho, v, params, s)[0]


def _forward(f, prepare, fn, depth, reortho, v, params, s):
    Q, T, r, c = _lanczos(fn, params, v, depth, reortho)
    stop = jax.lax.stop_gradient
    aux = jax.tree_util.tree_map(stop, prepare(stop(T), stop(r), stop(c), stop(s)))
    y, w, S = _apply(f, s, aux, Q, T, c)
    return (y, T, c, aux), (Q, w, S, c, params, s, aux)


def _backward(f, prepare, fn, depth, reortho, residuals, cotangents):
    del prepare
    Q, w, S, c, params, s, aux = residuals
    ybar = cotangents[0]
    Qc, Tc, _, cc = _lanczos(fn, params, ybar, depth, reortho)
    vbar, wc, Sc = _apply(f, s, aux, Qc, Tc, cc)

    # Daleckii–Krein across the two Ritz sets: F[i, j] = f[mu_i, theta_j].
    F = _dense.divided_differences_between(lambda x: f(x, s, aux), wc, w)
    M = F * (cc * Sc[0])[:, None] * (c * S[0])[None, :]
    G = S @ M.T @ Sc.T  # coefficients in the two Lanczos bases
    _, vjp = jax.vjp(lambda X, *p: jax.vmap(lambda x: fn(x, *p))(X), Q, *params)
    pbar = list(vjp(G @ Qc)[1:])

    # d/ds ybar^T f(A, s) v, from the Krylov space of v.
    dfds = jax.vmap(jax.grad(f, argnums=1), in_axes=(0, None, None))(w, s, aux)
    sbar = jnp.dot(ybar, c * (Q.T @ (S @ (dfds * S[0]))))
    return vbar, pbar, sbar.astype(jnp.result_type(s))


_action.defvjp(_forward, _backward)
