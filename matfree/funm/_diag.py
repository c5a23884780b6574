"""Functions of a small non-symmetric matrix by diagonalisation.

`f(H) = V f(Lambda) V^{-1}` with the (complex) eigendecomposition of `H`, and a
custom JVP by the Daleckii–Krein formula for diagonalisable matrices,
`df(H)[E] = V (F o (V^{-1} E V)) V^{-1}` with `F` the divided differences of
`f` on the eigenvalues (`f'` on ties), so repeated semisimple eigenvalues give
finite derivatives.

Limits: `H` must be diagonalisable with a well-conditioned eigenbasis: the
result loses about `log10(cond(V))` digits, and a defective `H` (a Jordan
block) is outside the method's scope. `cond(V)` is returned alongside for the
callers to report. `f` must accept complex arrays, be analytic near the
eigenvalues, and satisfy `f(conj(z)) = conj(f(z))` so that `f(H)` is real for
real `H` (`jnp.exp`, `jnp.log`, `jnp.sqrt`, `jnp.sin`, rational functions).
For complex `H` the result is complex and no symmetry of `f` is needed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from matfree import _dense


def funm_diag(f, H: jax.Array) -> jax.Array:
    """Return the real matrix `f(H)` of a real square matrix by diagonalisation.

    `f` may close over traced values (`lambda x: x**p`): they are
    differentiated (`_dense.hoist`).
    """
    pure, consts = _dense.hoist(f, complex_dtype(H.dtype))
    return _funm_diag(pure, H, consts)


def complex_dtype(dtype):
    """The complex dtype of the precision of the real `dtype`."""
    return (jnp.zeros((), dtype) * 1j).dtype


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _funm_diag(f, H, consts):
    w, V = jnp.linalg.eig(H)
    Vinv = jnp.linalg.inv(V)
    return _like(H, (V * f(w, consts)[..., None, :]) @ Vinv)


def _like(H, X):
    """`X` in the dtype of `H`: the real part for real `H` (see the module docstring)."""
    if jnp.issubdtype(H.dtype, jnp.complexfloating):
        return X.astype(H.dtype)
    return jnp.real(X).astype(H.dtype)


def eigvec_condition(H: jax.Array) -> jax.Array:
    """2-norm condition number of the eigenvector matrix of `H` (no gradient)."""
    _, V = jnp.linalg.eig(jax.lax.stop_gradient(H))
    s = jnp.linalg.svd(V, compute_uv=False)
    return (s[..., 0] / s[..., -1]).astype(jnp.finfo(H.dtype).dtype)


@_funm_diag.defjvp
def _funm_diag_jvp(f, primals, tangents):
    (H, consts), (dH, dconsts) = primals, tangents
    w, V = jnp.linalg.eig(H)
    Vinv = jnp.linalg.inv(V)
    fw, dfw = jax.jvp(lambda c: f(w, c), (consts,), (dconsts,))
    out = _like(H, (V * fw[..., None, :]) @ Vinv)
    fx = functools.partial(_with_consts, f, consts)
    inner = _divided_differences(fx, w, w) * (Vinv @ dH.astype(V.dtype) @ V)
    inner = inner + jnp.eye(w.shape[-1], dtype=w.dtype) * dfw[..., None, :]
    return out, _like(H, V @ inner @ Vinv)


def _with_consts(f, consts, x):
    return f(x, consts)


def funm_diag_pure(f, H, consts):
    """`funm_diag` for `f(x, consts)` whose constants are already hoisted."""
    return _funm_diag(f, H, consts)


def frechet_block(f, G, K):
    """The (1, 2) block of `f([[G, e_1 e_1^T], [0, K]])` for real square `G`, `K`.

    From the eigendecompositions `G = X M X^{-1}`, `K = Y Theta Y^{-1}`:
    `X (F o (X^{-1} e_1 e_1^T Y)) Y^{-1}` with `F_ij = f[mu_i, theta_j]`
    (`f'` at ties), so `G` and `K` may share eigenvalues. `f` takes complex
    arrays. Returns a real matrix.
    """
    mu, X = jnp.linalg.eig(G)
    theta, Y = jnp.linalg.eig(K)
    Xinv, Yinv = jnp.linalg.inv(X), jnp.linalg.inv(Y)
    F = _divided_differences(f, mu, theta)
    inner = F * (Xinv[:, 0][:, None] * Y[0][None, :])
    return _like(G, X @ inner @ Yinv)


def _divided_differences(f, u, w):
    """`F_ij = (f(u_i) - f(w_j)) / (u_i - w_j)`, `f'` at (near) ties; leading axes batch."""
    ui, wj = u[..., :, None], w[..., None, :]
    gap = ui - wj
    top = jnp.maximum(jnp.max(jnp.abs(u), axis=-1), jnp.max(jnp.abs(w), axis=-1))
    scale = jnp.maximum(top, 1.0)[..., None, None]
    tie = jnp.abs(gap) <= jnp.sqrt(jnp.finfo(u.dtype).eps) * scale
    safe_gap = jnp.where(tie, 1.0, gap)
    diff = (f(ui) - f(wj)) / safe_gap
    mid = jnp.where(tie, (ui + wj) / 2, ui)
    _, fprime = jax.jvp(f, (mid,), (jnp.ones_like(mid),))
    return jnp.where(tie, fprime, diff)
