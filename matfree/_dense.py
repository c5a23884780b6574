"""Functions of small dense matrices, with derivatives that survive ties.

The Krylov layers reduce `f(A)` to `f(T)` for a small `k x k` matrix. For
symmetric `T` we use the eigendecomposition, but differentiate with the
Daleckii–Krein formula (divided differences of `f` on the eigenvalues), which
stays finite when Ritz values coincide; differentiating `jnp.linalg.eigh`
directly would divide by zero there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def hoist(f, dtype):
    """`f` as `(pure, consts)`: `pure(x, consts) == f(x)` elementwise on `dtype` arrays.

    `consts` are the values `f` closes over that may carry a derivative (e.g. a
    parameter `p` in `lambda x: x**p` under `jax.grad`), hoisted by
    `jax.closure_convert` from a trace of `f` on a scalar; `pure` applies that
    trace to every entry of `x`. Custom derivative rules take `pure` as a
    static argument and `consts` as differentiable ones: a function that closes
    over a tracer cannot be a static argument (the tracer would escape).
    Where `f` cannot be traced on a scalar of `dtype`, `f` itself is returned
    with no constants.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> pure, consts = hoist(jnp.exp, jnp.float64)
    >>> consts
    []
    >>> pure(jnp.zeros(2), consts)
    Array([1., 1.], dtype=float64)
    """
    try:
        converted, consts = jax.closure_convert(f, jnp.zeros((), dtype))
    except Exception:  # noqa: BLE001 - f fails on scalars; it may close over nothing
        return lambda x, _: f(x), []

    def pure(x, consts):
        x = jnp.asarray(x)
        out = jax.vmap(lambda xi: converted(xi, *consts))(jnp.ravel(x))
        return jnp.reshape(out, x.shape)

    return pure, list(consts)


def funm_sym(f, T: jax.Array) -> jax.Array:
    """Return `f(T)` for a symmetric matrix `T` (batched over leading axes).

    `f` is a scalar function applied elementwise to the eigenvalues, e.g.
    `jnp.log`, `jnp.exp`, `jnp.sqrt`. Its derivative (for `jax.grad`) is taken
    with `jax.grad(f)` and divided differences; repeated eigenvalues are fine.
    `f` may close over traced values (`lambda x: x**p`): they are differentiated.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> T = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    >>> jnp.allclose(funm_sym(jnp.exp, T), jax.scipy.linalg.expm(T))
    Array(True, dtype=bool)
    """
    pure, consts = hoist(f, T.dtype)
    return _funm_sym(pure, T, consts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _funm_sym(f, T, consts):
    w, V = jnp.linalg.eigh(T)
    return (V * f(w, consts)[..., None, :]) @ jnp.swapaxes(V, -1, -2)


def divided_differences(f, w: jax.Array) -> jax.Array:
    """Matrix of first divided differences `f[w_i, w_j]`, `f'(w_i)` on ties."""
    return divided_differences_between(f, w, w)


def divided_differences_between(f, u: jax.Array, w: jax.Array) -> jax.Array:
    """Matrix `f[u_i, w_j]` of divided differences, `f'` at (near) ties."""

    def fprime(x):  # elementwise f' by one JVP; f may be complex-valued
        return jax.jvp(f, (x,), (jnp.ones_like(x),))[1]

    wi, wj = u[..., :, None], w[..., None, :]
    gap = wi - wj
    top = jnp.maximum(jnp.max(jnp.abs(u), axis=-1), jnp.max(jnp.abs(w), axis=-1))
    scale = jnp.maximum(top[..., None, None], 1.0)
    tie = jnp.abs(gap) <= jnp.sqrt(jnp.finfo(w.dtype).eps) * scale
    safe_gap = jnp.where(tie, 1.0, gap)
    diff = (f(wi) - f(wj)) / safe_gap
    return jnp.where(tie, fprime((wi + wj) / 2), diff)


@_funm_sym.defjvp
def _funm_sym_jvp(f, primals, tangents):
    (T, consts), (dT, dconsts) = primals, tangents
    _, out, dout = _funm_sym_and_tangent(f, T, dT, consts, dconsts)
    return out, dout


def funm_sym_eigvals(f, T: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return `f(T)` (as `funm_sym`) and the eigenvalues of `T`, from one `eigh`.

    The eigenvalues carry no derivative (their tangent is zero): they are for
    diagnostics such as Ritz bounds. One decomposition instead of two also
    avoids two batched LAPACK `eigh` calls in one XLA CPU program, which can
    deadlock on small machines.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> fT, w = funm_sym_eigvals(jnp.exp, jnp.diag(jnp.array([1.0, 2.0])))
    >>> w
    Array([1., 2.], dtype=float64)
    """
    pure, consts = hoist(f, T.dtype)
    return _funm_sym_eigvals(pure, T, consts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _funm_sym_eigvals(f, T, consts):
    w, V = jnp.linalg.eigh(T)
    return (V * f(w, consts)[..., None, :]) @ jnp.swapaxes(V, -1, -2), w


@_funm_sym_eigvals.defjvp
def _funm_sym_eigvals_jvp(f, primals, tangents):
    (T, consts), (dT, dconsts) = primals, tangents
    w, out, dout = _funm_sym_and_tangent(f, T, dT, consts, dconsts)
    return (out, w), (dout, jnp.zeros_like(w))


def _funm_sym_and_tangent(f, T, dT, consts, dconsts):
    """Eigenvalues of `T`, `f(T)` and its derivative along `dT` and `dconsts`.

    `f(x, consts)` is elementwise in `x`; the derivative w.r.t. its constants is
    `V diag(d_consts f(w)) V^T`.
    """
    w, V = jnp.linalg.eigh(T)
    Vt = jnp.swapaxes(V, -1, -2)
    fw, dfw = jax.jvp(lambda c: f(w, c), (consts,), (dconsts,))
    out = (V * fw[..., None, :]) @ Vt
    dT = (dT + jnp.swapaxes(dT, -1, -2)) / 2
    inner = divided_differences(lambda x: f(x, consts), w) * (Vt @ dT @ V)
    return w, out, V @ inner @ Vt + (V * dfw[..., None, :]) @ Vt
