"""The two-sided gradient rule of the symmetric matrix-function path.

Differentiating a Lanczos decomposition of a *smooth* vector (little weight on
most of the spectrum) gives the derivative of a poor polynomial approximation;
`funm_action`/`exp_action` instead run Lanczos on the cotangent too, which
differentiates `f(A) v` itself. These tests use such a vector.
"""

import jax
import jax.numpy as jnp

import matfree
from matfree import decomp, matrices, operators

N = 12
SHAPE = (N, N)


def _operator(s):
    return operators.laplace_2d(SHAPE, scale=-s)  # symmetric negative definite


def _smooth_vector():
    y, x = jnp.meshgrid(jnp.linspace(0, 1, N), jnp.linspace(0, 1, N), indexing="ij")
    bump = jnp.exp(-((y - 0.3) ** 2 + (x - 0.6) ** 2) / 0.02).reshape(-1)
    A = jax.vmap(_operator(1.0), out_axes=1)(jnp.eye(N * N))
    return jax.scipy.linalg.expm(3.0 * A) @ bump  # diffused: smooth


def test_exp_action_gradient_is_accurate_for_smooth_vectors():
    v = _smooth_vector()
    w = jax.random.normal(jax.random.PRNGKey(0), (N * N,))

    def dense(s, v):
        A = jax.vmap(_operator(s), out_axes=1)(jnp.eye(N * N))
        return w @ jax.scipy.linalg.expm(A) @ v

    def krylov(s, v):
        return w @ matfree.exp_action(_operator(s), v, depth=30, symmetric=True).value

    g = jax.grad(krylov, (0, 1))(2.0, v)
    g_ref = jax.grad(dense, (0, 1))(2.0, v)
    assert jnp.allclose(krylov(2.0, v), dense(2.0, v), rtol=1e-12)
    assert jnp.allclose(g[0], g_ref[0], rtol=1e-9)
    assert jnp.allclose(g[1], g_ref[1], rtol=1e-9, atol=1e-12 * jnp.max(jnp.abs(g_ref[1])))

    # Differentiating the decomposition itself is far less accurate here.
    def via_decomposition(s, v):
        res = decomp.lanczos(_operator(s), v, depth=30)
        fT = jax.scipy.linalg.expm(res.tridiag())[:, 0]
        return w @ (res.init_norm * res.basis.T @ fT)

    g_dec = jax.grad(via_decomposition, 1)(2.0, v)
    err_dec = jnp.linalg.norm(g_dec - g_ref[1]) / jnp.linalg.norm(g_ref[1])
    err_two = jnp.linalg.norm(g[1] - g_ref[1]) / jnp.linalg.norm(g_ref[1])
    assert err_two < 1e-3 * err_dec


def test_funm_action_gradient_matches_dense_with_parameters_and_time():
    n = 40
    A0 = matrices.spd_matrix(jax.random.PRNGKey(1), n, cond=30.0)
    v = jax.random.normal(jax.random.PRNGKey(2), (n,))
    w = jax.random.normal(jax.random.PRNGKey(3), (n,))

    def krylov(s, t, v):
        return (
            w
            @ matfree.exp_action(
                lambda x: -s * (A0 @ x), v, t=t, depth=25, symmetric=True
            ).value
        )

    def dense(s, t, v):
        return w @ jax.scipy.linalg.expm(-t * s * A0) @ v

    g = jax.grad(krylov, (0, 1, 2))(0.1, 0.7, v)
    g_ref = jax.grad(dense, (0, 1, 2))(0.1, 0.7, v)
    for a, b in zip(g, g_ref, strict=True):
        assert jnp.allclose(a, b, rtol=1e-9, atol=1e-12)

    def log_action(s, v):
        return w @ matfree.funm_action(jnp.log, lambda x: s * (A0 @ x), v, depth=n).value

    def log_dense(s, v):
        lam, V = jnp.linalg.eigh(s * A0)
        return w @ (V * jnp.log(lam)) @ V.T @ v

    g = jax.grad(log_action, (0, 1))(1.5, v)
    g_ref = jax.grad(log_dense, (0, 1))(1.5, v)
    assert jnp.allclose(g[0], g_ref[0], rtol=1e-8)
    assert jnp.allclose(g[1], g_ref[1], rtol=1e-8, atol=1e-10)


def test_zero_cotangent_gives_zero_gradient():
    A0 = matrices.spd_matrix(jax.random.PRNGKey(1), 10)

    def f(s, v):
        return 0.0 * jnp.sum(matfree.sqrt_action(lambda x: s * (A0 @ x), v, depth=5).value)

    g = jax.grad(f, (0, 1))(1.0, jnp.ones(10))
    assert g[0] == 0.0 and jnp.all(g[1] == 0.0)


def test_nan_cotangent_gives_nan_gradient():
    """A NaN cotangent (e.g. from a failed check downstream) is not turned into 0.

    The zero-vector guard of the second Lanczos run saw `|ybar| = NaN` as zero.
    """
    A0 = matrices.spd_matrix(jax.random.PRNGKey(1), 10)

    def f(s, v):
        y = matfree.sqrt_action(lambda x: s * (A0 @ x), v, depth=5).value
        return jnp.nan * jnp.sum(y)

    g = jax.jit(jax.grad(f, (0, 1)))(1.0, jnp.ones(10))
    assert jnp.isnan(g[0]) and jnp.all(jnp.isnan(g[1]))
