"""The solve on flat blocks, and its implicit-differentiation rule.

`x = A^{-1} b` is differentiated by one adjoint solve `A^T lambda = xbar`
(same method; the transposed operator and preconditioner come from
`jax.linear_transpose` of the flat matvec) and one VJP of the matvec at the
solution: `bbar = lambda`, `thetabar = -(d/dtheta A(theta) x)^T lambda`. For
least squares (LSQR) `x = (A^T A + d^2 I)^{-1} A^T b`, the adjoint solves
`(A^T A + d^2 I) mu = xbar` by CG and then `bbar = A mu`, `thetabar =
(d/dtheta A mu)^T r - (d/dtheta A x)^T A mu` with `r = b - A x`.

Memory does not grow with the number of iterations. Both the forward and the
adjoint solve are scale invariant: every right-hand side is divided by its
largest entry before the iteration, so tiny (or zero) cotangents give tiny
(or zero) gradients, never NaN.

The rule supports reverse mode only. `gradient="autodiff"` differentiates
through the iterations instead (forward mode, higher derivatives; memory grows with
`maxiter`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from matfree import _flat, status
from matfree.solvers import _common as c
from matfree.solvers._bicgstab import bicgstab
from matfree.solvers._cg import cg
from matfree.solvers._gcr import gcr
from matfree.solvers._gmres import gmres
from matfree.solvers._lsqr import lsqr
from matfree.solvers._minres import minres

SYMMETRIC = ("cg", "minres")


class Spec(NamedTuple):
    """Static configuration of one solve."""

    method: str
    maxiter: int
    restart: int
    history: bool
    x0_given: bool
    throw: bool
    gradient: str  # "adjoint" | "autodiff"


def transpose(mv, like):
    """The transpose of the linear block map `mv`, for inputs shaped like `like`."""
    t = jax.linear_transpose(mv, like)
    return lambda Y: t(Y)[0]


def solve_block(spec, fn, pfn, B, X0, like, params, pparams, tols):
    """Solve on a block `B` (m, n_b); returns `(X, num_steps, flag, history)`."""
    if spec.gradient == "adjoint":
        return _solve_implicit(spec, fn, pfn, B, X0, like, params, pparams, tols)
    return _forward(spec, fn, pfn, B, X0, like, params, pparams, tols, True)


def _forward(spec, fn, pfn, B, X0, like, params, pparams, tols, differentiable):
    rtol, atol, damp = tols
    mv = _flat.map_rows(fn, params)
    pc = None if pfn is None else _flat.map_rows(pfn, pparams)
    # Scale invariance: divide each column by its largest entry.
    s = jnp.max(jnp.abs(B), axis=1)
    s = jnp.where((s > 0) & jnp.isfinite(s), s, 1)
    Bs = B / c.col(s)
    X0s = X0 / c.col(s) if spec.x0_given else None
    tol = jnp.maximum(rtol * c.norm(Bs), atol / s)
    kw = {"differentiable": differentiable, "history": spec.history}
    if spec.method == "lsqr":
        mvT = transpose(mv, like)
        raw = lsqr(
            mv, mvT, Bs, X0s, tol, spec.maxiter, rtol=rtol, damp=damp, like=like, **kw
        )
    else:
        method = {"cg": cg, "minres": minres, "bicgstab": bicgstab}.get(spec.method)
        if method is None:
            method = functools.partial(
                {"gmres": gmres, "gcr": gcr}[spec.method], restart=spec.restart
            )
        raw = method(mv, pc, Bs, X0s, tol, spec.maxiter, **kw)
    hist = None if raw.history is None else raw.history * c.col(s)
    return raw.x * c.col(s), raw.num_steps, raw.flag, hist


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _solve_implicit(spec, fn, pfn, B, X0, like, params, pparams, tols):
    return _forward(spec, fn, pfn, B, X0, like, params, pparams, tols, False)


def _fwd(spec, fn, pfn, B, X0, like, params, pparams, tols):
    out = _forward(spec, fn, pfn, B, X0, like, params, pparams, tols, False)
    return out, (out[0], B, X0, like, params, pparams, tols)


def _bwd(spec, fn, pfn, residuals, cotangents):
    X, B, X0, like, params, pparams, tols = residuals
    Xbar = cotangents[0]
    m = B.shape[0]
    mv = _flat.map_rows(fn, params)
    adj = spec._replace(x0_given=False, history=False, gradient="adjoint")
    if spec.method == "lsqr":
        damp = tols[2]

        def normal(x, *p):
            A = _flat.map_rows(fn, p)
            At = transpose(A, x[None])
            return At(A(x[None]))[0] + damp**2 * x

        Mu, _, flag, _ = _forward(
            adj._replace(method="cg"),
            normal,
            None,
            Xbar,
            None,
            like,
            params,
            (),
            tols,
            False,
        )
        R = B - mv(X)

        def both(*p):
            return _flat.map_rows(fn, p)(jnp.concatenate([Mu, X]))

        AMuX, vjp = jax.vjp(both, *params)
        AMu = AMuX[:m]
        pbar = vjp(jnp.concatenate([R, -AMu]))
        Bbar = AMu
    else:
        if spec.method in SYMMETRIC:
            fnT, pfnT = fn, pfn
        else:
            fnT = _transpose_fn(fn)
            pfnT = None if pfn is None else _transpose_fn(pfn)
        Lam, _, flag, _ = _forward(
            adj, fnT, pfnT, Xbar, None, Xbar, params, pparams, tols, False
        )
        _, vjp = jax.vjp(lambda *p: _flat.map_rows(fn, p)(X), *params)
        pbar = vjp(-Lam)
        Bbar = Lam
    if spec.throw:
        # The adjoint solve of the gradient: the same status codes and messages.
        Bbar = status.error_if(Bbar, c.to_status(flag))
    zeros = functools.partial(jax.tree_util.tree_map, jnp.zeros_like)
    return Bbar, zeros(X0), zeros(like), tuple(pbar), zeros(pparams), zeros(tols)


def _transpose_fn(fn):
    """`fnT(y, *params) = A(params)^T y` for a flat matvec `fn(x, *params)`."""

    def fnT(y, *p):
        return jax.linear_transpose(lambda x: fn(x, *p), y)(y)[0]

    return fnT


_solve_implicit.defvjp(_fwd, _bwd)
