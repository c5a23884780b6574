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


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def funm_diag(f, H: jax.Array) -> jax.Array:
    """Return `f(H)` by diagonalisation: real for real `H`, complex for complex `H`."""
    w, V = jnp.linalg.eig(H)
    Vinv = jnp.linalg.inv(V)
    return _like(H, (V * f(w)[..., None, :]) @ Vinv)


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


def _divided_differences_complex(f, w):
    wi, wj = w[..., :, None], w[..., None, :]
    gap = wi - wj
    scale = jnp.maximum(jnp.max(jnp.abs(w), axis=-1, keepdims=True)[..., None], 1.0)
    eps = jnp.finfo(w.dtype).eps
    tie = jnp.abs(gap) <= jnp.sqrt(eps) * scale
    safe_gap = jnp.where(tie, 1.0, gap)
    diff = (f(wi) - f(wj)) / safe_gap
    mid = (wi + wj) / 2
    _, fprime = jax.jvp(f, (mid,), (jnp.ones_like(mid),))
    return jnp.where(tie, fprime, diff)


@funm_diag.defjvp
def _funm_diag_jvp(f, primals, tangents):
    (H,), (dH,) = primals, tangents
    w, V = jnp.linalg.eig(H)
    Vinv = jnp.linalg.inv(V)
    out = _like(H, (V * f(w)[..., None, :]) @ Vinv)
    inner = _divided_differences_complex(f, w) * (Vinv @ dH.astype(V.dtype) @ V)
    return out, _like(H, V @ inner @ Vinv)
