"""Gradients of `exp_action(symmetric=False)` against the dense `expm` VJP (issue #11).

The operator is 1-D upwind advection-diffusion (n = 200, t |A| = 550), the
start vector a bump. Differentiating the Arnoldi approximation (the old rule,
still `gradient="autodiff"`) gives a gradient w.r.t. `v` that is wrong by a
factor up to 1e13, even where the value has converged to 1e-13; the
two-sided rule converges with the value, and the backward pass raises when
its own error estimate says it has not.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

import matfree
from matfree import matrices
from matfree.funm import _two_sided

N = 200
H = 1.0 / (N + 1)
X = jnp.arange(1, N + 1) * H
PARAMS = (1e-2, 1.0)  # diffusion, velocity
V = jnp.exp(-(((X - 0.3) / 0.05) ** 2))
SMOOTH = jnp.sin(jnp.pi * X) * (1 + X)  # a cotangent that vanishes at the walls
ROUGH = jnp.cos(7 * X) + X  # one that does not: weight on the stiff modes


def advection_diffusion(D, b):
    def matvec(u):
        up = jnp.concatenate([u[1:], jnp.zeros(1, u.dtype)])
        down = jnp.concatenate([jnp.zeros(1, u.dtype), u[:-1]])
        return D * (up - 2 * u + down) / H**2 - b * (u - down) / H

    return matvec


def dense(D, b):
    return jax.vmap(advection_diffusion(D, b), out_axes=1)(jnp.eye(N))


T = 550.0 / float(jnp.linalg.norm(dense(*PARAMS), 2))


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
COTANGENTS = {"smooth": SMOOTH, "rough": ROUGH}


@functools.cache
def reference(name):
    """Value and gradients w.r.t. (D, b, v, t) of `w^T expm(tA) v`, dense."""
    w = COTANGENTS[name]

    def loss(D, b, v, t):
        return w @ (jax.scipy.linalg.expm(t * dense(D, b)) @ v)

    value = jax.scipy.linalg.expm(T * dense(*PARAMS)) @ V
    return value, jax.jit(jax.grad(loss, (0, 1, 2, 3)))(*PARAMS, V, T)


def krylov(name, **kwargs):
    """Value, error estimate and gradients w.r.t. (D, b, v, t) from `exp_action`."""
    w = COTANGENTS[name]

    def loss(D, b, v, t):
        res = matfree.exp_action(advection_diffusion(D, b), v, t=t, **kwargs)
        return w @ res.value, (res.value, res.error_estimate)

    grad = jax.jit(jax.grad(loss, (0, 1, 2, 3), has_aux=True))
    grads, (value, estimate) = grad(*PARAMS, V, T)
    return value, estimate, grads


def test_gradient_converges_with_the_value_where_the_loop_derivative_does_not():
    """Converged value (1e-13): the two-sided gradients reach 1e-10.

    Measured: value 1.2e-13; gradients (D, b, v, t) 3.7e-12, 2.8e-11, 1.1e-12,
    1.6e-11. Autodiff through Arnoldi: the gradient w.r.t. `v` is 1.2e-3 off.
    """
    value_ref, g_ref = reference("smooth")
    value, _, g = krylov("smooth", depth=30, num_substeps=16)
    assert rel(value, value_ref) < 1e-11
    for a, b in zip(g, g_ref, strict=True):
        assert rel(a, b) < 1e-10
    _, _, g_loop = krylov("smooth", depth=30, num_substeps=16, gradient="autodiff")
    assert rel(g_loop[2], g_ref[2]) > 1e-5  # the old rule, for the record
    for i in (0, 1, 3):  # its parameter gradients are fine
        assert rel(g_loop[i], g_ref[i]) < 1e-10


def test_unconverged_gradient_trails_the_value_by_at_most_100x():
    """4 substeps: value 6.1e-5; gradients 7.6e-6, 2.6e-3, 1.2e-4, 1.6e-3.

    The old rule (autodiff through the loop) gives 6.1e9 for `v` here. With
    `throw=True` (default) the backward pass accepts it: the adjoint's estimate
    is within 100x of the value's.
    """
    value_ref, g_ref = reference("smooth")
    value, _, g = krylov("smooth", depth=30, num_substeps=4)
    value_err = rel(value, value_ref)
    assert 1e-6 < value_err < 1e-3  # genuinely unconverged
    for a, b in zip(g, g_ref, strict=True):
        assert rel(a, b) < 100 * value_err


def test_backward_pass_raises_when_the_adjoint_has_not_converged(monkeypatch):
    """A rough cotangent: its own Krylov approximation has not converged.

    Over whole substeps (`ADJOINT_SPLIT = 1`), measured: value 6.1e-5,
    gradients 3.4e-3, 2.5e-3, 4.1e-3, 2.2e-3 (the old rule: 1.6e10 for `v`);
    `throw=True` raises in the backward pass, naming the fix; with
    `throw=False` the gradient that failed its check is NaN (every component:
    the failure shows without an exception). By default the failing substeps'
    adjoints are recomputed over 4 pieces: gradients 3.7e-5, 3.7e-6, 6.1e-6,
    3.5e-6, and nothing is raised.
    """
    _, g_ref = reference("rough")
    monkeypatch.setattr(_two_sided, "ADJOINT_SPLIT", 1)
    with pytest.raises(RUNTIME_ERRORS, match="the gradient did not converge"):
        krylov("rough", depth=30, num_substeps=4)
    value, _, g = krylov("rough", depth=30, num_substeps=4, throw=False)
    assert jnp.all(jnp.isfinite(value))  # the value is unaffected
    for a in g:
        assert jnp.all(jnp.isnan(a))
    monkeypatch.undo()
    _, _, g = krylov("rough", depth=30, num_substeps=4)
    for a, b in zip(g, g_ref, strict=True):
        assert rel(a, b) < 1e-4
    # Enough substeps: the adjoint converges over whole substeps.
    _, _, g = krylov("rough", depth=30, num_substeps=16)
    for a, b in zip(g, g_ref, strict=True):
        assert rel(a, b) < 1e-9


def test_adaptive_substeps_and_a_traced_tol():
    """`tol=1e-8`: gradients within 100 tol (measured 1.1e-8 .. 4.7e-8).

    `tol` is traced (an argument of the jitted function): the step-size
    choice must not close over it (it did, and failed to lower, before).
    """
    _, g_ref = reference("smooth")

    @jax.jit
    def grads(tol):
        def loss(D, b, v, t):
            op = advection_diffusion(D, b)
            return (
                SMOOTH
                @ matfree.exp_action(op, v, t=t, depth=30, num_substeps=16, tol=tol).value
            )

        return jax.grad(loss, (0, 1, 2, 3))(*PARAMS, V, T)

    for a, b in zip(grads(1e-8), g_ref, strict=True):
        assert rel(a, b) < 100 * 1e-8


def test_float32():
    """float32 against the float64 dense reference (measured below 1e-4)."""
    _, g_ref = reference("smooth")

    def loss(D, b, v, t):
        op = advection_diffusion(D, b)
        res = matfree.exp_action(op, v, t=t, depth=30, num_substeps=16)
        return SMOOTH.astype(jnp.float32) @ res.value

    args = (jnp.float32(PARAMS[0]), jnp.float32(PARAMS[1]), V.astype(jnp.float32))
    g = jax.jit(jax.grad(loss, (0, 1, 2, 3)))(*args, jnp.float32(T))
    for a, b in zip(g, g_ref, strict=True):
        assert a.dtype == jnp.float32
        assert rel(a, b) < 1e-3


def test_jit_vmap_and_check_grads_on_a_small_matrix():
    n = 12
    lam = jnp.linspace(-2.0, 0.5, n)
    A = matrices.nonsymmetric_matrix_from_eigenvalues(jax.random.PRNGKey(0), lam)
    vs = jax.random.normal(jax.random.PRNGKey(1), (3, n))
    u = jnp.cos(jnp.arange(n))

    def loss(s, v, t):
        res = matfree.exp_action(lambda x: s * (A @ x), v, t=t, depth=n)
        return jnp.sum(jnp.sin(u * res.value))

    def loss_ref(s, v, t):
        return jnp.sum(jnp.sin(u * (jax.scipy.linalg.expm(t * s * A) @ v)))

    grad = jax.grad(loss, (0, 1, 2))
    g = jax.jit(jax.vmap(grad, in_axes=(None, 0, None)))(0.7, vs, 1.3)
    g_ref = jax.vmap(jax.grad(loss_ref, (0, 1, 2)), in_axes=(None, 0, None))(0.7, vs, 1.3)
    for a, b in zip(g, g_ref, strict=True):
        assert jnp.allclose(a, b, rtol=1e-9, atol=1e-11)
    check_grads(jax.jit(loss), (0.7, vs[0], 1.3), order=1, modes=["rev"])


def test_zero_vector_and_zero_cotangent_give_zero_gradients():
    A = dense(*PARAMS)[:20, :20]

    def loss(v, w):
        # Full depth: the adjoint is exact. (At a short depth a zero `v` raises
        # in the backward pass: its value 0 is exact, so the gradient must be.)
        res = matfree.exp_action(lambda x: A @ x, v, t=1e-3, depth=20)
        return w @ res.value

    grads = jax.jit(jax.grad(loss, (0, 1)))
    g_v, _ = grads(jnp.ones(20), jnp.zeros(20))
    assert jnp.array_equal(g_v, jnp.zeros(20))
    _, g_w = grads(jnp.zeros(20), jnp.ones(20))
    assert jnp.array_equal(g_w, jnp.zeros(20))
