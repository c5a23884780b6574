"""`funm_action` and `sqrt_action` against dense references of chosen spectrum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

import matfree
from matfree import matrices
from matfree.status import Status

KEY = jax.random.PRNGKey(3)
N = 30


@pytest.fixture(scope="module")
def orth():
    return matrices.random_orthogonal(KEY, N)


@pytest.fixture(scope="module")
def vec():
    return jax.random.normal(jax.random.PRNGKey(1), (N,))


def dense_sym_funm(f, Q, theta, v):
    """Exact `f(Q diag(theta) Q^T) v`, differentiable in `theta` also with ties."""
    return Q @ (f(theta) * (Q.T @ v))


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("f", [jnp.exp, jnp.tanh])
def test_symmetric_full_depth_is_exact(f, orth, vec):
    theta = jnp.logspace(-1, 1, N)
    A = (orth * theta) @ orth.T
    out = matfree.funm_action(f, lambda x: A @ x, vec, depth=N).value
    assert rel(out, dense_sym_funm(f, orth, theta, vec)) < 1e-12


def test_symmetric_depth_below_n_meets_polynomial_bound(orth, vec):
    """|f(A)v - approx| <= 2 |v| E_{k-1}(f) on [lambda_min, lambda_max] (docs' bound)."""
    theta = jnp.logspace(0, 2, N)
    A = (orth * theta) @ orth.T
    grid = np.linspace(1.0, 100.0, 20001)
    for f, fnp in [(jnp.log, np.log), (jax.lax.rsqrt, lambda x: x**-0.5)]:
        ref = dense_sym_funm(f, orth, theta, vec)
        for k in (4, 10):
            out = matfree.funm_action(f, lambda x: A @ x, vec, depth=k).value
            cheb = np.polynomial.Chebyshev.interpolate(fnp, k - 1, domain=[1.0, 100.0])
            best = np.max(np.abs(fnp(grid) - cheb(grid)))  # >= best approximation error
            err = float(jnp.linalg.norm(out - ref))
            assert err <= 2 * float(jnp.linalg.norm(vec)) * best
            assert err > 1e-12  # not exact: the bound is what is being tested


def test_nonsymmetric_full_depth_matches_scipy(vec):
    lam = jnp.linspace(0.5, 3.0, N)
    B = matrices.nonsymmetric_matrix_from_eigenvalues(KEY, lam, eigvec_cond=5.0)
    for f, ref_fn in [(jnp.log, scipy.linalg.logm), (jnp.sqrt, scipy.linalg.sqrtm)]:
        out = matfree.funm_action(f, lambda x: B @ x, vec, depth=N, symmetric=False).value
        ref = np.real(ref_fn(np.asarray(B))) @ np.asarray(vec)
        assert rel(out, ref) < 1e-10


def test_sqrt_action_full_depth_and_sampling_identity(orth, vec):
    theta = jnp.logspace(-1, 1, N)
    A = (orth * theta) @ orth.T
    half = matfree.sqrt_action(lambda x: A @ x, vec, depth=N).value
    inv_half = matfree.sqrt_action(lambda x: A @ x, vec, depth=N, inverse=True).value
    assert rel(half, dense_sym_funm(jnp.sqrt, orth, theta, vec)) < 1e-12
    assert (
        rel(inv_half, jnp.asarray(np.real(scipy.linalg.sqrtm(np.linalg.inv(A))) @ vec))
        < 1e-10
    )
    # A^{1/2} A^{-1/2} v = v
    back = matfree.sqrt_action(lambda x: A @ x, inv_half, depth=N).value
    assert rel(back, vec) < 1e-12


def test_zero_vector_gives_zero(orth):
    A = (orth * jnp.logspace(-1, 1, N)) @ orth.T
    info = matfree.sqrt_action(lambda x: A @ x, jnp.zeros(N), depth=5, inverse=True)
    assert jnp.array_equal(info.value, jnp.zeros(N))
    assert int(info.status) == Status.OK
    assert info.error_estimate is None
    assert int(info.num_substeps) == 1


def test_gradients_match_dense_symmetric(orth, vec):
    """Gradients w.r.t. the spectrum (closed over by matvec) and v, at full depth."""
    theta = jnp.logspace(-1, 1, N)
    u = jnp.cos(jnp.arange(N))

    def loss(theta, v):
        A = (orth * theta) @ orth.T
        return u @ matfree.funm_action(jnp.log, lambda x: A @ x, v, depth=N).value

    def loss_ref(theta, v):
        return u @ dense_sym_funm(jnp.log, orth, theta, v)

    g = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, vec)
    g_ref = jax.grad(loss_ref, argnums=(0, 1))(theta, vec)
    assert rel(g[0], g_ref[0]) < 1e-10
    assert rel(g[1], g_ref[1]) < 1e-10


def test_gradients_converge_at_moderate_depth_and_check_grads(orth, vec):
    """Depth 16 < n = 30 on a spectrum in [1, 4]: gradient converged to 1e-8."""
    theta = jnp.linspace(1.0, 4.0, N)

    def loss(theta, v):
        A = (orth * theta) @ orth.T
        return jnp.sum(
            matfree.sqrt_action(lambda x: A @ x, v, depth=16, inverse=True).value ** 2
        )

    def loss_ref(theta, v):
        return jnp.sum(dense_sym_funm(jax.lax.rsqrt, orth, theta, v) ** 2)

    loss = jax.jit(loss)
    g = jax.grad(loss, argnums=(0, 1))(theta, vec)
    g_ref = jax.grad(loss_ref, argnums=(0, 1))(theta, vec)
    assert rel(g[0], g_ref[0]) < 1e-8
    assert rel(g[1], g_ref[1]) < 1e-8
    check_grads(loss, (theta, vec), order=1, modes=["rev"])


@pytest.mark.parametrize(("f", "depth"), [(jnp.exp, 3), (jax.lax.rsqrt, N)])
def test_repeated_eigenvalues_give_finite_exact_gradients(f, depth, orth, vec):
    """Three distinct eigenvalues, each ten times: Lanczos breaks down after 3 steps.

    Depth 3 is exact; depth N continues past the breakdown and T has tenfold
    repeated Ritz values. Gradients w.r.t. the three eigenvalues (directions
    that keep the ties) and w.r.t. v are finite and exact in both cases.
    """
    u = jnp.sin(jnp.arange(N))

    def loss(phi, v):
        A = (orth * jnp.repeat(phi, N // 3)) @ orth.T
        return u @ matfree.funm_action(f, lambda x: A @ x, v, depth=depth).value

    def loss_ref(phi, v):
        return u @ dense_sym_funm(f, orth, jnp.repeat(phi, N // 3), v)

    phi = jnp.array([0.5, 1.0, 2.0])
    g = jax.grad(loss, argnums=(0, 1))(phi, vec)
    g_ref = jax.grad(loss_ref, argnums=(0, 1))(phi, vec)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
    assert rel(g[0], g_ref[0]) < 1e-10
    assert rel(g[1], g_ref[1]) < 1e-10


def test_multiple_of_identity_gradient(vec):
    """A = c I: the Krylov space has dimension 1 (breakdown) and T has ties."""

    def loss(c, v):
        return jnp.sum(matfree.sqrt_action(lambda x: c * x, v, depth=4).value ** 2)

    g_c, g_v = jax.grad(loss, argnums=(0, 1))(2.0, vec)
    assert jnp.allclose(g_c, jnp.sum(vec**2), rtol=1e-12)  # d/dc (c |v|^2)
    assert jnp.allclose(g_v, 2 * 2.0 * vec, rtol=1e-12)


def test_gradients_match_dense_nonsymmetric(vec):
    lam = jnp.linspace(0.5, 3.0, N)
    V = matrices.random_orthogonal(KEY, N) @ jnp.diag(jnp.logspace(0, 0.7, N))
    Vinv = jnp.linalg.inv(V)
    u = jnp.cos(jnp.arange(N))

    def loss(lam, v):
        B = (V * lam) @ Vinv
        return (
            u
            @ matfree.funm_action(
                jnp.log, lambda x: B @ x, v, depth=N, symmetric=False
            ).value
        )

    def loss_ref(lam, v):
        return u @ (V @ (jnp.log(lam) * (Vinv @ v)))

    loss = jax.jit(loss)
    g = jax.grad(loss, argnums=(0, 1))(lam, vec)
    g_ref = jax.grad(loss_ref, argnums=(0, 1))(lam, vec)
    assert rel(g[0], g_ref[0]) < 1e-8
    assert rel(g[1], g_ref[1]) < 1e-8
    check_grads(loss, (lam, vec), order=1, modes=["rev"])


def test_vmap_jit_and_pytree(orth, vec):
    theta = jnp.logspace(-1, 1, N)
    A = (orth * theta) @ orth.T
    V = jnp.stack([vec, 2 * vec + 1])

    @jax.jit
    @jax.vmap
    def batched(v):
        return matfree.funm_action(jnp.log, lambda x: A @ x, v, depth=N).value

    out = batched(V)
    for i in range(2):
        assert rel(out[i], dense_sym_funm(jnp.log, orth, theta, V[i])) < 1e-12

    # pytree vector: {"a": first 10, "b": the rest}, same operator
    def mv_tree(t):
        x = A @ jnp.concatenate([t["a"], t["b"]])
        return {"a": x[:10], "b": x[10:]}

    tree = {"a": vec[:10], "b": vec[10:]}
    out = matfree.sqrt_action(mv_tree, tree, depth=N).value
    ref = dense_sym_funm(jnp.sqrt, orth, theta, vec)
    assert rel(jnp.concatenate([out["a"], out["b"]]), ref) < 1e-12


def test_float32(orth, vec):
    theta = jnp.logspace(-1, 1, N).astype(jnp.float32)
    Q = orth.astype(jnp.float32)
    v = vec.astype(jnp.float32)
    A = (Q * theta) @ Q.T
    out = matfree.sqrt_action(lambda x: A @ x, v, depth=N, inverse=True).value
    assert out.dtype == jnp.float32
    assert rel(out, dense_sym_funm(jax.lax.rsqrt, Q, theta, v)) < 1e-4

    def loss(theta):
        A = (Q * theta) @ Q.T
        return jnp.sum(matfree.funm_action(jnp.log, lambda x: A @ x, v, depth=N).value ** 2)

    g = jax.grad(loss)(theta)
    g_ref = jax.grad(lambda th: jnp.sum(dense_sym_funm(jnp.log, Q, th, v) ** 2))(theta)
    assert g.dtype == jnp.float32
    assert rel(g, g_ref) < 1e-3


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradient_autodiff_agrees_with_adjoint(orth, symmetric):
    A = (orth * jnp.logspace(-1, 1, N)) @ orth.T
    v = jnp.linspace(1.0, 2.0, N)

    def f(s, gradient):
        mv = lambda x: s * (A @ x)  # noqa: E731
        out = matfree.funm_action(
            jnp.exp, mv, v, depth=N, symmetric=symmetric, gradient=gradient
        )
        return jnp.sum(out.value**2)

    g_adj = jax.grad(f)(0.5, "adjoint")
    g_ad = jax.grad(f)(0.5, "autodiff")
    assert jnp.allclose(g_adj, g_ad, rtol=1e-8)
    _, tangent = jax.jvp(lambda s: f(s, "autodiff"), (0.5,), (1.0,))
    assert jnp.allclose(tangent, g_ad, rtol=1e-8)
