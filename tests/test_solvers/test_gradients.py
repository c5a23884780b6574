"""Implicit differentiation: against dense gradients, autodiff through the loop,
and `check_grads`; zero and tiny cotangents."""

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads
from solver_helpers import N, solve_and_grad

import matfree
from matfree import matrices, operators, precond


def _matrix(method, theta):
    """A matrix of the right class for `method`, depending smoothly on `theta`."""
    key = jax.random.PRNGKey(7)
    if method == "cg":
        eigs = jnp.logspace(0, 2, N)
    elif method == "minres":
        eigs = jnp.concatenate([-jnp.logspace(0, 2, N // 2), jnp.logspace(0, 2, N // 2)])
    else:
        eigs = jnp.linspace(1.0, 50.0, N)
        A = matrices.nonsymmetric_matrix_from_eigenvalues(key, eigs, eigvec_cond=3.0)
        return A + theta * jnp.diag(jnp.arange(N) / N)
    A = matrices.symmetric_matrix_from_eigenvalues(key, eigs)
    return A + theta * jnp.diag(jnp.arange(N) / N)


METHODS = ["cg", "minres", "gmres", "bicgstab", "gcr", "lsqr"]


def _loss(method, gradient, rtol=1e-12):
    w = jnp.cos(jnp.arange(N))
    # The loop reference runs to `maxiter` (frozen after convergence): keep it short.
    maxiter = None if gradient == "adjoint" else 2 * N

    def loss(theta, b):
        A = _matrix(method, theta)
        sol = matfree.solve(
            lambda v: A @ v, b, method=method, rtol=rtol, gradient=gradient, maxiter=maxiter
        )
        return jnp.dot(w, sol.value)

    return loss


def _dense_loss(method):
    w = jnp.cos(jnp.arange(N))
    return lambda theta, b: jnp.dot(w, jnp.linalg.solve(_matrix(method, theta), b))


def _theta_and_matrix_gradients(method, gradient):
    """Gradients w.r.t. every entry of `A(theta)` and `b`, and by the chain rule
    w.r.t. `theta` (`dA/dtheta = diag(arange(N) / N)`)."""
    A = _matrix(method, 0.3)
    b = jnp.sin(jnp.arange(N) + 1.0)
    w = jnp.cos(jnp.arange(N))
    # The loop reference runs to `maxiter` (frozen after convergence): keep it short.
    maxiter = None if gradient == "adjoint" else 2 * N
    _, gA, gb = solve_and_grad(
        A, b, w, 1e-12, method=method, gradient=gradient, maxiter=maxiter
    )
    return jnp.dot(jnp.diag(gA), jnp.arange(N) / N), gA, gb


@pytest.mark.parametrize("method", METHODS)
def test_adjoint_gradient_matches_dense_and_loop(method):
    b = jnp.sin(jnp.arange(N) + 1.0)
    theta = 0.3
    g = _theta_and_matrix_gradients(method, "adjoint")
    g_dense = jax.grad(_dense_loss(method), argnums=(0, 1))(theta, b)
    assert jnp.allclose(g[0], g_dense[0], rtol=1e-7)
    assert jnp.allclose(g[2], g_dense[1], rtol=1e-7, atol=1e-10)
    # every entry of the matrix gradient, normwise
    w = jnp.cos(jnp.arange(N))
    gA_dense = jax.grad(lambda A: jnp.dot(w, jnp.linalg.solve(A, b)))(
        _matrix(method, theta)
    )
    assert float(jnp.linalg.norm(g[1] - gA_dense)) <= 1e-7 * float(
        jnp.linalg.norm(gA_dense)
    )
    if method in ("cg", "gmres"):
        g_loop = _theta_and_matrix_gradients(method, "autodiff")
        assert jnp.allclose(g[0], g_loop[0], rtol=1e-7)
        assert jnp.allclose(g[2], g_loop[2], rtol=1e-7, atol=1e-10)
        # CG through the loop is differentiable only along symmetric directions
        # (it solves A x = b only for symmetric A): compare those parts.
        sym = (lambda G: (G + G.T) / 2) if method == "cg" else (lambda G: G)
        err = jnp.linalg.norm(sym(g[1]) - sym(g_loop[1]))
        assert float(err) <= 1e-7 * float(jnp.linalg.norm(sym(g_loop[1])))


@pytest.mark.parametrize("method", ["cg", "bicgstab"])
def test_check_grads_reverse_mode(method):
    b = jnp.sin(jnp.arange(N) + 1.0)
    # jitted: the many evaluations of `check_grads` share one compile
    loss = jax.jit(_loss(method, "adjoint"))
    check_grads(loss, (0.3, b), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_autodiff_gradient_supports_forward_mode():
    b = jnp.sin(jnp.arange(N) + 1.0)
    f = _loss("cg", "autodiff")
    jvp = jax.jit(lambda t: jax.jvp(lambda t: f(t, b), (t,), (1.0,))[1])(0.3)
    assert jnp.allclose(jvp, jax.grad(_dense_loss("cg"))(0.3, b), rtol=1e-7)


def test_lsqr_rectangular_damped_gradient():
    key = jax.random.PRNGKey(8)
    A0 = jax.random.normal(key, (40, 15))
    b = jax.random.normal(jax.random.PRNGKey(9), (40,))
    w = jnp.cos(jnp.arange(15))

    dA = A0 * jnp.arange(15) / 15  # A(s) = A0 (1 + s arange(15) / 15)

    def dense(s, b, damp):
        A = A0 + s * dA
        return jnp.dot(w, jnp.linalg.solve(A.T @ A + damp**2 * jnp.eye(15), A.T @ b))

    x0 = jnp.zeros(15)
    for damp in (0.0, 2.0):  # `damp` is traced: one compile
        _, gA, gb = solve_and_grad(A0 + 0.5 * dA, b, w, 1e-13, x0, damp, method="lsqr")
        g = (jnp.sum(gA * dA), gb)  # chain rule to `s`
        gd = jax.grad(dense, argnums=(0, 1))(0.5, b, damp)
        assert jnp.allclose(g[0], gd[0], rtol=1e-7)
        assert jnp.allclose(g[1], gd[1], rtol=1e-7, atol=1e-11)


def test_gradient_reaches_kernel_parameters_with_preconditioner():
    x = jax.random.normal(jax.random.PRNGKey(0), (40, 2))
    b = jnp.sin(x[:, 0])
    P = precond.pivoted_cholesky(
        lambda i: operators.kernel_matrix(x[i][None], x)[0],
        jnp.ones(40),
        rank=8,
        shift=1e-2,
    )

    def loss(params, b):
        ls, noise = params
        mv = operators.kernel_matvec(x, lengthscale=ls, noise=noise, rows_per_block=20)
        return jnp.sum(matfree.solve(mv, b, precond=P, rtol=1e-12).value ** 2)

    def dense(params, b):
        ls, noise = params
        K = operators.kernel_matrix(x, x, lengthscale=ls) + noise * jnp.eye(40)
        return jnp.sum(jnp.linalg.solve(K, b) ** 2)

    params = (jnp.array(1.0), jnp.array(1e-2))
    g = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, b)
    gd = jax.grad(dense, argnums=(0, 1))(params, b)
    for a, e in zip(
        jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(gd), strict=True
    ):
        assert jnp.allclose(a, e, rtol=1e-6)


def test_batched_gradient_matches_vmap_of_dense():
    A0 = matrices.spd_matrix(jax.random.PRNGKey(3), N, 50.0)
    B = jnp.cos(jnp.arange(N * 3.0)).reshape(3, N)  # 3 right-hand sides (rows)

    def loss(s, B):
        A = A0 + s * jnp.eye(N)
        return jnp.sum(
            matfree.solve(lambda v: A @ v, B, batched=True, rtol=1e-12).value ** 2
        )

    def dense(s, B):
        return jnp.sum(jnp.linalg.solve(A0 + s * jnp.eye(N), B.T) ** 2)

    g = jax.jit(jax.grad(loss, argnums=(0, 1)))(0.5, B)
    gd = jax.grad(dense, argnums=(0, 1))(0.5, B)
    assert jnp.allclose(g[0], gd[0], rtol=1e-7)
    assert jnp.allclose(g[1], gd[1], rtol=1e-7)


@pytest.mark.parametrize("method", ["cg", "gmres", "lsqr"])
def test_zero_and_tiny_cotangents_float32(method):
    A = _matrix(method, 0.3).astype(jnp.float32)
    b = jnp.ones(N, jnp.float32)

    for scale in (0.0, 1e-30):
        # the gradient of scale * sum(x), default float32 rtol
        w = jnp.full(N, scale, jnp.float32)
        _, gA, gb = solve_and_grad(A, b, w, method=method)
        assert bool(jnp.all(jnp.isfinite(gA))) and bool(jnp.all(jnp.isfinite(gb)))
        if scale == 0.0:
            assert bool(jnp.all(gA == 0)) and bool(jnp.all(gb == 0))
        else:
            assert bool(jnp.any(gb != 0))
            ref = jnp.linalg.solve(A.T.astype(float), jnp.ones(N)) * 1e-30
            if method != "lsqr":
                assert jnp.allclose(gb, ref, rtol=1e-2, atol=1e-36)


def test_zero_right_hand_side_gradient_is_finite():
    A = _matrix("cg", 0.3)
    # grad of sum(solve(A, b)) at b = 0 (rtol 1e-6, the float64 default)
    _, _, g = solve_and_grad(A, jnp.zeros(N), jnp.ones(N), 1e-6, method="cg")
    assert jnp.allclose(g, jnp.linalg.solve(A, jnp.ones(N)), rtol=1e-5)


def test_pytree_gradient():
    A = matrices.spd_matrix(jax.random.PRNGKey(3), 6, 10.0)

    def matvec(t):
        w = A @ jnp.concatenate([t["u"], t["v"]])
        return {"u": w[:2], "v": w[2:]}

    def loss(b):
        x = matfree.solve(matvec, b, rtol=1e-12).value
        return jnp.sum(x["u"]) + 2 * jnp.sum(x["v"])

    g = jax.jit(jax.grad(loss))({"u": jnp.ones(2), "v": jnp.ones(4)})
    expected = jnp.linalg.solve(A, jnp.array([1.0, 1, 2, 2, 2, 2]))
    assert jnp.allclose(g["u"], expected[:2]) and jnp.allclose(g["v"], expected[2:])
