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

Complex Hermitian `A` (and complex-valued `f`, e.g. `exp(-i t lambda)`): JAX
pairs cotangents without conjugation, so `vbar = f(A)^T ybar =
conj(conj(f)(A) conj(ybar))` (Lanczos on `conj(ybar)`), and the operator's
cotangent pairs `conj(z_i)` with `dA y_j`; for real `A` and `f` these reduce
to the formulas above.

Cost of the backward pass: `k` matvecs (Lanczos on `ybar`) and one VJP of the
matvec applied to `k` vectors at once; memory `O(n k)`.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from matfree import _dense, _flat, decomp
from matfree._flat import safe_norm
from matfree.decomp._krylov import check_real_for_adjoint
from matfree.funm import _common, _diag


def lanczos_action(f, fn, depth, reortho, v, params, s, prepare=None, prepare_args=()):
    """Return `(f(A) v, (T, |v|, aux))` with `f(lambda, s, aux)` elementwise.

    `fn(x, *params)` is the flat matvec of a symmetric `A`; `s` is a pytree of
    parameters of `f` (e.g. the time of an exponential, or the values a user's
    `f` closes over, hoisted by `_dense.hoist`), differentiable: its cotangent
    is `ybar^T (d_s f)(A) v` from the Krylov space of `v`. `f` itself must not
    close over traced values.
    `prepare(prepare_args, T, residual, |v|, s) -> aux` (all arguments without
    gradient) may choose constants for `f` from the decomposition, e.g. a step
    length. `prepare` must not close over traced arrays (under `jax.checkpoint`
    the forward pass is traced again, and a closed-over tracer would leak):
    pass them in the pytree `prepare_args` instead.
    `T`, `|v|` and `aux` are returned for diagnostics and carry no gradient.
    """
    if prepare is None:

        def prepare(*_):
            return ()

    prepare_args = jax.tree_util.tree_map(jax.lax.stop_gradient, prepare_args)
    y, T, c, aux = _action(f, prepare, fn, depth, reortho, v, params, s, prepare_args)
    stop = jax.lax.stop_gradient
    return y, (stop(T), stop(c), jax.tree_util.tree_map(stop, aux))


def _lanczos(fn, params, v, depth, reortho):
    # A zero vector (e.g. a zero cotangent) has no Krylov space, but f(A) 0 = 0:
    # `decompose` runs on a stand-in unit vector and returns |v| = 0.
    res, c = _common.decompose(
        decomp.lanczos, lambda x: fn(x, *params), v, depth=depth, reortho=reortho
    )
    # f may be infinite on the stand-in's Ritz values; use T = I there.
    T = jnp.where(c > 0, res.tridiag(), jnp.eye(depth, dtype=res.diag.dtype))
    return res.basis, T, res.residual, c


def _apply(f, s, aux, Q, T, c):
    w, S = jnp.linalg.eigh(T)
    return c * (Q.T @ (S @ (f(w, s, aux) * S[0]))), w, S


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _action(f, prepare, fn, depth, reortho, v, params, s, prepare_args):
    return _forward(f, prepare, fn, depth, reortho, v, params, s, prepare_args)[0]


def _forward(f, prepare, fn, depth, reortho, v, params, s, prepare_args):
    Q, T, r, c = _lanczos(fn, params, v, depth, reortho)
    stop = jax.lax.stop_gradient
    aux = prepare(prepare_args, stop(T), stop(r), stop(c), stop(s))
    aux = jax.tree_util.tree_map(stop, aux)
    y, w, S = _apply(f, s, aux, Q, T, c)
    return (y, T, c, aux), (Q, w, S, c, params, s, aux, zero_cotangents(prepare_args))


def _backward(f, prepare, fn, depth, reortho, residuals, cotangents):
    del prepare
    Q, w, S, c, params, s, aux, prepare_args_bar = residuals
    ybar = cotangents[0]
    # JAX pairs cotangents without conjugation: vbar = f(A)^T ybar, which for
    # Hermitian A is conj(fbar(A) conj(ybar)) with fbar = conj(f) (the same as
    # f(A) ybar for real A and real f). Lanczos runs on u = conj(ybar).
    Qc, Tc, _, cc = _lanczos(fn, params, jnp.conj(ybar), depth, reortho)
    wc, Sc = jnp.linalg.eigh(Tc)
    vbar = jnp.conj(cc * (Qc.T @ (Sc @ (jnp.conj(f(wc, s, aux)) * Sc[0]))))

    # Daleckii–Krein across the two Ritz sets: F[i, j] = f[mu_i, theta_j];
    # sum(ybar * L_f(A, dA) v) = sum_ij M_ij z_i^H dA y_j.
    F = _dense.divided_differences_between(lambda x: f(x, s, aux), wc, w)
    M = F * (cc * Sc[0])[:, None] * (c * S[0])[None, :]
    G = S @ M.T @ Sc.T  # coefficients in the two Lanczos bases
    _, vjp = jax.vjp(lambda X, *p: jax.vmap(lambda x: fn(x, *p))(X), Q, *params)
    pbar = list(vjp(G @ jnp.conj(Qc))[1:])

    # d/ds ybar^T f(A, s) v = ybar^T (d_s f)(A, s) v, from the Krylov space of v.
    _, vjp_s = jax.vjp(lambda s: c * (Q.T @ (S @ (f(w, s, aux) * S[0]))), s)
    (sbar,) = vjp_s(ybar)
    # A NaN cotangent gives NaN (the zero-vector guard of `_lanczos` would
    # otherwise turn it into a zero gradient).
    out = nan_where(~jnp.all(jnp.isfinite(ybar)), (vbar, pbar, sbar))
    return (*out, prepare_args_bar)


def zero_cotangents(tree):
    """Zero cotangents for arguments that get none (`float0` for int and bool)."""

    def zero(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return np.zeros(x.shape, dtype=jax.dtypes.float0)

    return jax.tree_util.tree_map(zero, tree)


_action.defvjp(_forward, _backward)


# ------------------------------------------------------------------ Arnoldi
#
# Non-symmetric operators, f = exp. With Arnoldi on v, `A Q^T = Q^T H + r e_k^T`
# and `y = c Q^T expm(tau H) e_1` (`c = |v|`). For a cotangent `ybar`, the
# exact gradients of `ybar^T expm(tau A) v` are
#
# - `vbar = expm(tau A^T) ybar`, approximated by Arnoldi on `A^T` from `ybar`:
#   `A^T P^T = P^T G + s e_k^T`, `vbar ~ cbar P^T expm(tau G) e_1`;
# - the operator's cotangent, the time integral
#   `Abar = int_0^tau expm((tau - s) A^T) ybar (expm(s A) v)^T ds`. Inserting both
#   Krylov approximations gives `Abar ~ c cbar P^T W Q` with
#   `W = int_0^tau expm((tau - s) G) e_1 e_1^T expm(s H^T) ds`, the (1, 2) block of
#   `expm(tau [[G, e_1 e_1^T], [0, H^T]])` (Van Loan 1978). The parameter
#   cotangent `sum_ij c cbar W_ij p_i^T (dA) q_j` is one VJP of the matvec on
#   the `k` rows of `Q` with cotangent rows `c cbar W^T P`;
# - `d/dtau = ybar^T A y ~ c ybar^T (Q^T H u + r u_k)`, `u = expm(tau H) e_1`.
#
# Complex `A` and `v`: JAX's cotangents pair without conjugation, so `A^T` is
# the plain transpose (the VJP of the matvec) and the formulas hold unchanged;
# the Arnoldi runs use the conjugating inner product. The cotangent of the real
# time `tau` is the real part of its pairing.
#
# Both Krylov approximations are exact when their spaces are invariant, so the
# gradient converges as the value and the adjoint value do. The adjoint's own
# error is estimated like the value's (Saad's estimate for `expm(tau A^T) ybar`).


GRADIENT_NOT_CONVERGED = (
    "matfree: the gradient did not converge: in the backward pass of `exp_action` "
    "(non-symmetric operator), the error estimate of the adjoint Krylov "
    "approximation expm(tau A^T) ybar exceeds 100 times `tol` (without `tol`: 100 "
    "times the value's own estimate, and sqrt(eps)), also with the substep split into "
    "4 pieces -- the cotangent has more weight on the stiff part of the spectrum than "
    "the value. Lower `tol`, raise `num_substeps` (without `tol`) or `depth`. (With "
    "`throw=False` such a gradient is NaN.)"
)

# The gradient may trail the value by this factor before the backward pass
# raises (relative error estimates per substep, against `tol` or the value's).
GRADIENT_FACTOR = 100.0


def arnoldi_exp(fn, depth, prepare, w, params, t, tol, prepare_args=(), *, throw):
    """Return `(expm(tau A) w, estimate, fraction)` with `tau = t * fraction`.

    `fn(x, *params)` is the flat matvec of a general `A`.
    `prepare(prepare_args, H, residual, |w|, t) -> (fraction, estimate)` (all
    arguments without gradient; no closed-over tracers, as in
    `lanczos_action`) picks the substep from the decomposition. Gradients
    w.r.t. `w`, `params` and `t` come from the two-sided rule above
    (`fraction` is a constant). In the backward pass, with `throw`, the
    adjoint's relative error estimate (Saad's estimate for
    `expm(tau A^T) ybar`, relative to `|ybar|`) is checked per substep against
    `GRADIENT_FACTOR * tol * fraction` (the value's own criterion, loosened
    by the factor), or without `tol` (`None`) against
    `max(GRADIENT_FACTOR * estimate / |w|, sqrt(eps))`; a failure makes the
    cotangents NaN and, with `throw`, raises `GRADIENT_NOT_CONVERGED`.
    """
    if tol is None:
        tol = -1.0  # marks "no tolerance": compare with the value's estimate
    tol = jax.lax.stop_gradient(jnp.asarray(tol, _flat.real_dtype(w.dtype)))
    prepare_args = jax.tree_util.tree_map(jax.lax.stop_gradient, prepare_args)
    args = (w, params, t, tol, prepare_args)
    y, est, fraction = _arnoldi_exp(fn, depth, prepare, throw, *args)
    stop = jax.lax.stop_gradient
    return y, stop(est), stop(fraction)


def adjoint_limit(tol, fraction, estimate, c):
    """The largest acceptable relative error estimate of one adjoint substep."""
    value_rel = estimate / jnp.where(c > 0, c, 1.0)
    floor = jnp.sqrt(jnp.finfo(c.dtype).eps)
    relative = jnp.maximum(GRADIENT_FACTOR * value_rel, floor)
    return jnp.where(tol >= 0, GRADIENT_FACTOR * tol * fraction, relative)


def _arnoldi(matvec, v, depth):
    res, c = _common.decompose(decomp.arnoldi, matvec, v, depth=depth, gradient="autodiff")
    H = jnp.where(c > 0, res.hessenberg, 0.0)
    return res.basis, H, res.residual, c


def _expm_e1(K):
    return jax.scipy.linalg.expm(K)[:, 0]


def _transposed(fn, params, like):
    _, vjp = jax.vjp(lambda x: fn(x, *params), like)
    return lambda x: vjp(x)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _arnoldi_exp(fn, depth, prepare, throw, w, params, t, tol, prepare_args):
    args = (w, params, t, tol, prepare_args)
    return _arnoldi_exp_fwd(fn, depth, prepare, throw, *args)[0]


def _arnoldi_exp_fwd(fn, depth, prepare, throw, w, params, t, tol, prepare_args):
    del throw
    Q, H, r, c = _arnoldi(lambda x: fn(x, *params), w, depth)
    stop = jax.lax.stop_gradient
    fraction, est = prepare(prepare_args, stop(H), stop(r), stop(c), stop(t))
    fraction, est = stop(fraction), stop(est)
    u = _expm_e1(t * fraction * H)
    y = c * (Q.T @ u)
    zeros = zero_cotangents((tol, prepare_args))
    limit = adjoint_limit(tol, fraction, est, c)
    return (y, est, fraction), (Q, H, r, c, u, params, t, fraction, limit, zeros)


def _arnoldi_exp_bwd(fn, depth, prepare, throw, residuals, cotangents):
    del prepare
    Q, H, r, c, u, params, t, fraction, limit, zeros = residuals
    ybar = cotangents[0]
    tau = t * fraction

    # The adjoint over the whole substep; if its estimate fails (a cotangent
    # rougher than the state), again over `ADJOINT_SPLIT` equal pieces.
    def pieces(m):
        return _adjoint_pieces(fn, params, depth, Q, H, c, ybar, tau, m)

    whole = pieces(1)
    split = jax.lax.cond(
        (safe_norm(ybar) > 0) & ~(whole[2] <= limit),
        lambda: pieces(ADJOINT_SPLIT),
        lambda: whole,
    )
    vbar, rows, adjoint_estimate = split
    bad = (safe_norm(ybar) > 0) & ~(adjoint_estimate <= limit)
    if throw:
        vbar = eqx.error_if(vbar, bad, GRADIENT_NOT_CONVERGED)

    _, vjp = jax.vjp(lambda *p: jax.vmap(lambda x: fn(x, *p))(Q), *params)
    pbar = list(vjp(rows))

    dy = c * (Q.T @ (H @ u) + r * u[-1])
    # JAX's pairing is bilinear (no conjugation); a real `t` gets the real part.
    tbar = jnp.real(fraction * jnp.sum(ybar * dy))
    # A gradient that fails its own error check is NaN (with `throw`, it raises);
    # so is one from a NaN cotangent (a later substep's failure), which the
    # zero-vector guard of the Arnoldi run would otherwise turn into zero.
    bad = bad | ~jnp.all(jnp.isfinite(ybar))
    out = nan_where(bad, (vbar, pbar, tbar.astype(jnp.result_type(t))))
    return (*out, *zeros)


def nan_where(bad, tree):
    """`tree` with its floating-point leaves set to NaN where `bad` (a scalar)."""

    def one(x):
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            return jnp.where(bad, jnp.nan, x)
        return x

    return jax.tree_util.tree_map(one, tree)


# Pieces of a substep for the adjoint when the whole substep's adjoint estimate fails.
ADJOINT_SPLIT = 4


def _adjoint_pieces(fn, params, depth, Q, H, c, ybar, tau, m):
    """`(vbar, cotangent rows for Q, summed relative estimate)` over `m` pieces.

    Backward over pieces `[a, a + dt]`, `dt = tau / m`: `z <- expm(dt A^T) z`
    by Arnoldi on `A^T` from `z` (`z = ybar` first), and the piece of the
    time integral `int expm((a + dt - s) A^T) z (expm(s A) w)^T ds` with the
    forward state `expm(s A) w = c Q^T expm((s - a) H) expm(a H) e_1`: the
    (1, 2) block of `expm(dt [[G, e_1 u_a^T], [0, H^T]])`, `u_a = expm(a H) e_1`.
    """
    k = H.shape[0]
    dt = tau / m
    transposed = _transposed(fn, params, ybar)
    e_1 = jnp.zeros(k, H.dtype).at[0].set(1.0)

    # One compiled piece, scanned (backwards in time from the end of the substep).
    def piece(carry, j):
        z, rows, total = carry
        a = tau - (j + 1) * dt
        u_a = jnp.where(j < m - 1, _expm_e1(a * H), e_1)
        P, G, s, cbar = _arnoldi(transposed, z, depth)
        total = total + safe_norm(s) * dt * jnp.abs(phi1_last(dt * G))
        E = jnp.zeros((k, k), H.dtype).at[0, :].set(u_a)
        Z = jnp.block([[G, E], [jnp.zeros_like(G), H.T]])
        W = c * cbar * jax.scipy.linalg.expm(dt * Z)[:k, k:]
        z = cbar * (P.T @ _expm_e1(dt * G))
        return (z, rows + W.T @ P, total), None

    init = (ybar, jnp.zeros_like(Q), jnp.zeros((), _flat.real_dtype(ybar.dtype)))
    (z, rows, total), _ = jax.lax.scan(piece, init, jnp.arange(m))
    return z, rows, total


_arnoldi_exp.defvjp(_arnoldi_exp_fwd, _arnoldi_exp_bwd)


def phi1_last(K):
    """`e_k^T phi_1(K) e_1`, `phi_1(z) = (e^z - 1) / z`, by an augmented exponential."""
    k = K.shape[0]
    M = jnp.zeros((k + 1, k + 1), K.dtype).at[:k, :k].set(K).at[0, k].set(1.0)
    return jax.scipy.linalg.expm(M)[k - 1, k]


# ------------------------------------------------------- Arnoldi, general f
#
# `y = c Q^T f(H) e_1` from Arnoldi on v, `f(H)` by diagonalisation
# (`_diag.funm_diag`). For a cotangent `ybar`, as for the exponential above:
#
# - `vbar = f(A^T) ybar ~ cbar P^T f(G) e_1`, Arnoldi on `A^T` from `ybar`;
# - the operator's cotangent is the Fréchet derivative
#   `Abar = L_f(A^T, ybar v^T)`, the (1, 2) block of
#   `f([[A^T, ybar v^T], [0, A^T]])`. Inserting both Krylov spaces gives
#   `Abar ~ c cbar P^T W Q`, `W` the (1, 2) block of `f([[G, e_1 e_1^T], [0, H^T]])`,
#   computed from the two eigendecompositions, `G = X M X^{-1}`,
#   `H^T = Y Theta Y^{-1}`: `W = X (F o (X^{-1} e_1 e_1^T Y)) Y^{-1}` with
#   `F_ij = f[mu_i, theta_j]` (`f'` at ties: at full depth `G` and `H^T` share
#   their eigenvalues, and the 2k x 2k matrix is defective, so it is not
#   diagonalised itself);
# - the values `f` closes over (`consts`): `ybar^T (d f)(A) v` from the
#   Krylov space of `v`.
#
# Exact when both Krylov spaces are invariant; no error estimate (there is
# none for the value either). An adjoint Hessenberg matrix with an
# ill-conditioned eigenbasis (as the forward pass reports for `H`) gives a NaN
# gradient.


def arnoldi_funm(f, fn, depth, v, params, consts):
    """Return `(f(A) v, H, |v|)` with `f(x, consts)` elementwise (complex `x`).

    `fn(x, *params)` is the flat matvec of a general `A`. Gradients w.r.t.
    `v`, `params` and `consts` come from the two-sided rule above; `H` and
    `|v|` carry no gradient (diagnostics).
    """
    y, H, c = _arnoldi_funm(f, fn, depth, v, params, consts)
    stop = jax.lax.stop_gradient
    return y, stop(H), stop(c)


def _arnoldi_general(matvec, v, depth):
    res, c = _common.decompose(decomp.arnoldi, matvec, v, depth=depth, gradient="autodiff")
    # f may be singular at 0 (sqrt): a zero vector's stand-in uses H = I.
    H = jnp.where(c > 0, res.hessenberg, jnp.eye(depth, dtype=v.dtype))
    return res.basis, H, c


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _arnoldi_funm(f, fn, depth, v, params, consts):
    return _arnoldi_funm_fwd(f, fn, depth, v, params, consts)[0]


def _arnoldi_funm_fwd(f, fn, depth, v, params, consts):
    Q, H, c = _arnoldi_general(lambda x: fn(x, *params), v, depth)
    y = c * (Q.T @ _diag.funm_diag_pure(f, H, consts)[:, 0])
    return (y, H, c), (Q, H, c, params, consts)


def _arnoldi_funm_bwd(f, fn, depth, residuals, cotangents):
    Q, H, c, params, consts = residuals
    ybar = cotangents[0]
    # The Fréchet-derivative rule below is derived for real operators.
    check_real_for_adjoint(ybar.dtype, "funm_action(symmetric=False)")

    # vbar = f(A^T) ybar, by Arnoldi on A^T (a VJP of the matvec).
    P, G, cbar = _arnoldi_general(_transposed(fn, params, ybar), ybar, depth)
    vbar = cbar * (P.T @ _diag.funm_diag_pure(f, G, consts)[:, 0])

    # The Fréchet derivative across the two Krylov spaces.
    W = c * cbar * _diag.frechet_block(lambda x: f(x, consts), G, H.T)
    _, vjp = jax.vjp(lambda *p: jax.vmap(lambda x: fn(x, *p))(Q), *params)
    pbar = list(vjp(W.T @ P))

    # The values f closes over, from the Krylov space of v.
    _, vjp_c = jax.vjp(lambda k: c * (Q.T @ _diag.funm_diag_pure(f, H, k)[:, 0]), consts)
    (consts_bar,) = vjp_c(ybar)

    cond = _diag.eigvec_condition(G)
    bad = ~(cond <= 1 / jnp.sqrt(jnp.finfo(G.dtype).eps)) & (cbar > 0)
    bad = bad | ~jnp.all(jnp.isfinite(ybar))
    return nan_where(bad, (vbar, pbar, consts_bar))


_arnoldi_funm.defvjp(_arnoldi_funm_fwd, _arnoldi_funm_bwd)
