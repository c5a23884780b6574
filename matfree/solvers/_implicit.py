"""The solve on flat blocks, and its implicit-differentiation rule.

The rule is a `custom_jvp`: the tangent of the solution is linear in the
tangents of `b` and of the operator's parameters, and every solve it needs is
a `jax.lax.custom_linear_solve`, which JAX transposes into the adjoint solve.
So forward mode (`jax.jvp`, `jax.jacfwd`), reverse mode (`jax.grad`) and
higher derivatives (`jax.hessian`, grad of grad) all work, with memory
independent of the number of iterations.

Which function of `b` the solve computes decides its derivative:

- `"cg"`, `"gmres"`, `"bicgstab"`, `"gcr"`: `x = A^{-1} b`, so
  `dx = A^{-1} (db - dA x)`; the reverse mode is one adjoint solve with
  `A^T` (same method; the transposed operator and preconditioner come from
  `jax.linear_transpose`).
- `"minres"` (symmetric, possibly singular but consistent): MINRES from zero
  stays in the range of `A` and returns the minimum-norm solution
  `x = A^+ b`. Its derivative (with `y = x - x0`, `delta = A^+ y` and
  `w = dA^T delta`) is `dx = A^+ (db - dA x - A w) + w`, which is
  `A^{-1} (db - dA x)` when `A` is non-singular. `A^+ c` for a vector `c`
  that need not lie in the range of `A` is computed by two consistent MINRES
  solves, `A^+ c = A^+ (A^+ (A c))`. (The term `(A^2)^+ dA^T r` of an
  inconsistent system is dropped: MINRES reports such a system as
  not converged, and for a converged one `r` is below the tolerance.)
- `"lsqr"`: `y = x - x0 = Ã^+ [b - A x0; 0]` with `Ã = [A; damp I]`, the
  minimum-norm least-squares solution, for any rank. With
  `N = A^T A + damp^2 I`, `nu = N^+ y` and `w = dA^T (A nu)`,
  `dy = N^+ (A^T (db - dA x - A dx0 - A w) - damp^2 w + dA^T r) + w`. `N^+ c`
  is two LSQR solves: `Ã^+ ((Ã^T)^+ c)`, the first a least-squares problem
  with `Ã^T`, the second consistent; `nu` (with `y` in the range of `N`) is
  one CG solve with `N`.

Complex vectors: read `^T` above as the conjugate transpose `^H` (the
normal operator is `A^H A + damp^2 I`; "symmetric" means Hermitian). JAX's
reverse mode transposes without conjugation, so the transposed solve of a
Hermitian `A` (whose transpose is `conj(A)`) is `conj(A^{-1} conj(c))`, the
same method on the same operator; for the general methods it is the solve
with `A^T` from `jax.linear_transpose`, as for real `A`.

These are the derivatives of `jnp.linalg.pinv(A) @ b` (checked in the tests
against its automatic derivatives); the rank must not change under the
perturbation. The tolerances and the preconditioner get no derivatives
(`damp` included).

A derivative that cannot be computed is NaN: every solve of the rule whose
status is not `OK` (an adjoint solve that did not converge) gives NaN in its
column, and with `throw=True` raises the message of its status code. The rule
solves to the tolerances of the forward solve and scales every right-hand side
by its largest entry, so tiny (or zero) tangents and cotangents give tiny (or
zero) derivatives, never NaN.

Second derivatives of the minimum-norm solutions (`"minres"`, `"lsqr"`) are
exact only for non-singular (full-rank) problems: the derivative of an inner
solve is taken as that of an inverse.

`gradient="autodiff"` differentiates through the iterations instead (memory
grows with `maxiter`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

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


def adjoint(mv, like):
    """The adjoint `A^H` (conjugate transpose) of `mv`; the transpose for real `A`."""
    t = transpose(mv, like)
    return lambda Y: jnp.conj(t(jnp.conj(Y)))


def _self_adjoint_solve(matvec, C, solve):
    """`custom_linear_solve` for a symmetric (real) or Hermitian (complex) operator.

    JAX transposes without conjugation: the transpose of a Hermitian `A` is
    `conj(A)`, whose inverse is `conj . A^{-1} . conj` (the same solve).
    """
    if not jnp.issubdtype(C.dtype, jnp.complexfloating):
        return jax.lax.custom_linear_solve(matvec, C, solve, symmetric=True)

    def solve_t(mv, C):
        return jnp.conj(solve(mv, jnp.conj(C)))

    return jax.lax.custom_linear_solve(matvec, C, solve, solve_t)


def solve_block(spec, fn, pfn, B, X0, like, params, pparams, tols):
    """Solve on a block `B` (m, n_b); returns `(X, num_steps, flag, history)`."""
    if spec.gradient == "adjoint":
        return _solve_implicit(spec, fn, pfn, B, X0, like, params, pparams, tols)
    return _forward(spec, fn, pfn, B, X0, like, params, pparams, tols, True)


def _forward(spec, fn, pfn, B, X0, like, params, pparams, tols, differentiable):
    rtol, atol, damp = tols
    mv = _flat.map_rows(fn, params)
    pc = None if pfn is None else _flat.map_rows(pfn, pparams)
    kw = {"differentiable": differentiable, "history": spec.history}
    if spec.method == "lsqr":
        mvT = adjoint(mv, like)

        def run(Bs, X0s, tol):
            return lsqr(
                mv, mvT, Bs, X0s, tol, spec.maxiter, rtol=rtol, damp=damp, like=like, **kw
            )

    else:
        method = {"cg": cg, "minres": minres, "bicgstab": bicgstab}.get(spec.method)
        if method is None:
            method = functools.partial(
                {"gmres": gmres, "gcr": gcr}[spec.method], restart=spec.restart
            )

        def run(Bs, X0s, tol):
            return method(mv, pc, Bs, X0s, tol, spec.maxiter, **kw)

    return _scaled(run, B, X0 if spec.x0_given else None, rtol, atol)


def _scaled(run, B, X0, rtol, atol):
    """`run` on `B` with every column divided by its largest entry (scale invariance)."""
    s = jnp.max(jnp.abs(B), axis=1)
    s = jnp.where((s > 0) & jnp.isfinite(s), s, 1)
    Bs = B / c.col(s)
    X0s = None if X0 is None else X0 / c.col(s)
    tol = jnp.maximum(rtol * c.norm(Bs), atol / s)
    raw = run(Bs, X0s, tol)
    hist = None if raw.history is None else raw.history * c.col(s)
    return raw.x * c.col(s), raw.num_steps, raw.flag, hist


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _solve_implicit(spec, fn, pfn, B, X0, like, params, pparams, tols):
    return _forward(spec, fn, pfn, B, X0, like, params, pparams, tols, False)


def _jvp(spec, fn, pfn, primals, tangents):
    B, X0, like, params, pparams, tols = primals
    dB, dX0, _, dparams, _, _ = tangents
    out = _solve_implicit(spec, fn, pfn, *primals)
    rule = _Rule(spec, fn, pfn, like, params, pparams, tols)
    dX = rule.tangent(B, X0, out[0], dB, dX0, dparams)
    return out, (dX, *(_zero_tangent(x) for x in out[1:]))


_solve_implicit.defjvp(_jvp, symbolic_zeros=True)


def _zero_tangent(x):
    if x is None:
        return None
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return np.zeros(x.shape, jax.dtypes.float0)
    return jnp.zeros_like(x)


def _is_zero(t):
    return t is None or isinstance(t, SymbolicZero)


def _checked(X, flag, throw):
    """NaN in the columns whose solve failed; with `throw`, raise its message."""
    X = jnp.where(c.col(flag == c.CONVERGED), X, jnp.nan)
    if throw:
        X = status.error_if(X, c.to_status(flag))
    return X


def _worse(flag1, flag2):
    """The first failure of two solves run one after the other."""
    return jnp.where(flag1 == c.CONVERGED, flag2, flag1)


class _Rule:
    """The derivative of the solution at the primal point (see the module docstring)."""

    def __init__(self, spec, fn, pfn, like, params, pparams, tols):
        self.spec = spec._replace(x0_given=False, history=False)
        self.fn, self.pfn, self.like = fn, pfn, like
        self.params, self.pparams, self.tols = params, pparams, tols
        self.A = _flat.map_rows(fn, params)

    def _solve(self, fn, pfn, C, method=None):
        spec = self.spec if method is None else self.spec._replace(method=method)
        args = (spec, fn, pfn, C, None, C, self.params, self.pparams, self.tols, False)
        X, _, flag, _ = _forward(*args)
        return X, flag

    def _lsq(self, mv, mvT, C, like):
        """Minimum-norm least squares `mv^+ C` by undamped LSQR."""
        rtol, atol, _ = self.tols
        maxiter = self.spec.maxiter

        def run(Bs, X0s, tol):
            kw = {"rtol": rtol, "damp": jnp.zeros_like(rtol), "like": like}
            return lsqr(
                mv, mvT, Bs, None, tol, maxiter, differentiable=False, history=False, **kw
            )

        X, _, flag, _ = _scaled(run, C, None, rtol, atol)
        return X, flag

    def inverse(self, C):
        """`A^{-1} C`, transposable: its transpose is the adjoint solve with `A^T`."""
        fn, pfn, throw = self.fn, self.pfn, self.spec.throw

        def solve(_, C):
            return _checked(*self._solve(fn, pfn, C), throw)

        if self.spec.method in SYMMETRIC:
            return _self_adjoint_solve(self.A, C, solve)
        fnT = _transpose_fn(fn)
        pfnT = None if pfn is None else _transpose_fn(pfn)

        def solve_t(_, C):
            return _checked(*self._solve(fnT, pfnT, C), throw)

        return jax.lax.custom_linear_solve(self.A, C, solve, solve_t)

    def pinv_symmetric(self, C, consistent=False):
        """`A^+ C` for symmetric `A` by MINRES, transposable.

        One solve if `C` is in the range of `A`, else two consistent ones,
        `A^+ (A^+ (A C))`.
        """
        fn, pfn, throw = self.fn, self.pfn, self.spec.throw

        def solve(_, C):
            if consistent:
                return _checked(*self._solve(fn, pfn, C), throw)
            Z, flag1 = self._solve(fn, pfn, self.A(C))
            X, flag2 = self._solve(fn, pfn, Z)
            return _checked(X, _worse(flag1, flag2), throw)

        return _self_adjoint_solve(self.A, C, solve)

    def pinv_normal(self, C, B, consistent=False):
        """`N^+ C` with `N = A^T A + damp^2 I`, transposable.

        Two LSQR solves with `Ã = [A; damp I]`: `N^+ = Ã^+ (Ã^T)^+`; one CG
        solve with `N` if `C` is in the range of `N`.
        """
        A, like, throw = self.A, self.like, self.spec.throw
        AT = adjoint(A, like)
        damp = self.tols[2]
        n_b = B.shape[1]

        def At(X):
            return jnp.concatenate([A(X), damp * X], axis=1)

        def AtT(Z):
            return AT(Z[:, :n_b]) + damp * Z[:, n_b:]

        like_z = jnp.zeros((like.shape[0], n_b + like.shape[1]), like.dtype)

        def solve(_, C):
            if consistent:
                return _checked(*self._solve(fn_normal, None, C, method="cg"), throw)
            Z, flag1 = self._lsq(AtT, At, C, like_z)
            X, flag2 = self._lsq(At, AtT, Z, like)
            return _checked(X, _worse(flag1, flag2), throw)

        def fn_normal(x, *p):
            Ap = _flat.map_rows(self.fn, p)
            return adjoint(Ap, x[None])(Ap(x[None]))[0] + damp**2 * x

        def normal(X):
            return AT(A(X)) + damp**2 * X

        return _self_adjoint_solve(normal, C, solve)

    def tangent(self, B, X0, X, dB, dX0, dparams):
        """The tangent of the solution `X` (linear in `dB`, `dX0`, `dparams`)."""
        A, fn, params, like = self.A, self.fn, self.params, self.like
        method = self.spec.method
        moved = not all(_is_zero(t) for t in dparams)
        dparams = tuple(
            jnp.zeros_like(p) if _is_zero(t) else t
            for t, p in zip(dparams, params, strict=True)
        )

        def dA(V):  # the tangent of the operator, applied to V
            return jax.jvp(lambda *p: _flat.map_rows(fn, p)(V), params, dparams)[1]

        def dAT(W):  # its adjoint (transpose for real A), applied to W
            def AT_W(*p):
                return adjoint(_flat.map_rows(fn, p), like)(W)

            return jax.jvp(AT_W, params, dparams)[1]

        rhs = jnp.zeros_like(B) if _is_zero(dB) else dB
        if moved:
            rhs = rhs - dA(X)
        if method not in ("minres", "lsqr"):
            # x = A^{-1} b for every x0: no derivative w.r.t. x0.
            return self.inverse(rhs)
        use_x0 = X0 is not None and not _is_zero(dX0)
        Y = X - X0 if X0 is not None else X
        if use_x0:
            rhs = rhs - A(dX0)
        if method == "minres":
            if moved:
                W = dAT(self.pinv_symmetric(Y, consistent=True))
                rhs = rhs - A(W)
            dY = self.pinv_symmetric(rhs)
        else:
            damp = self.tols[2]
            AT = adjoint(A, like)
            C = AT(rhs)
            if moved:
                W = dAT(A(self.pinv_normal(Y, B, consistent=True)))
                C = C - AT(A(W)) - damp**2 * W + dAT(B - A(X))
            dY = self.pinv_normal(C, B)
        if moved:
            dY = dY + W
        return dY + dX0 if use_x0 else dY


def _transpose_fn(fn):
    """`fnT(y, *params) = A(params)^T y` for a flat matvec `fn(x, *params)`."""

    def fnT(y, *p):
        return jax.linear_transpose(lambda x: fn(x, *p), y)(y)[0]

    return fnT
