"""Every mode through every verb with a `gradient=` keyword: forward mode works
with `gradient="autodiff"` (and agrees with the default rule's reverse mode);
forward mode through a `gradient="adjoint"` rule raises an error that names
`gradient="autodiff"`, eagerly, under an outer `jax.jit`, and for
forward-over-reverse (`jax.hessian`). (`solve` supports every mode by
default: tests/test_solvers/test_solve_modes.py.)"""

import jax
import jax.numpy as jnp
import pytest

import matfree

A = jnp.diag(jnp.linspace(1.0, 2.0, 6)) + 0.1
V = jnp.cos(jnp.arange(6.0))
KEY = jax.random.PRNGKey(0)


def _mv(s):
    return lambda x: s * (A @ x)


VERBS = {
    "logdet": lambda s, g: (
        matfree.logdet(_mv(s), V, key=KEY, depth=6, num_probes=2, gradient=g).value
    ),
    "trace_funm": lambda s, g: (
        matfree.trace_funm(
            jnp.sqrt, _mv(s), V, key=KEY, depth=6, num_probes=2, gradient=g
        ).value
    ),
    "funm_action": lambda s, g: jnp.sum(
        matfree.funm_action(jnp.sqrt, _mv(s), V, depth=6, gradient=g).value
    ),
    "funm_action_nonsymmetric": lambda s, g: jnp.sum(
        matfree.funm_action(jnp.exp, _mv(s), V, depth=6, symmetric=False, gradient=g).value
    ),
    "exp_action": lambda s, g: jnp.sum(
        matfree.exp_action(_mv(s), V, depth=6, symmetric=True, gradient=g).value
    ),
    "sqrt_action": lambda s, g: jnp.sum(
        matfree.sqrt_action(_mv(s), V, depth=6, gradient=g).value
    ),
    "lanczos": lambda s, g: jnp.sum(
        matfree.decomp.lanczos(_mv(s), V, depth=3, gradient=g).diag
    ),
    "arnoldi": lambda s, g: jnp.sum(
        matfree.decomp.arnoldi(_mv(s), V, depth=3, gradient=g).hessenberg
    ),
    "eig.extreme": lambda s, g: jnp.sum(
        matfree.eig.extreme(_mv(s), V, num_eigenpairs=1, depth=6, gradient=g).eigenvalues
    ),
}
MESSAGE = 'pass `gradient="autodiff"`'


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_forward_mode_through_the_adjoint_names_the_keyword(verb):
    f = VERBS[verb]

    def jvp(s, g):
        return jax.jvp(lambda s: f(s, g), (s,), (1.0,))[1]

    with pytest.raises(TypeError, match=MESSAGE):
        jvp(1.0, "adjoint")
    with pytest.raises(TypeError, match=MESSAGE):  # under an outer jit too
        jax.jit(jvp, static_argnums=1)(1.0, "adjoint")
    # the keyword it names works, and agrees with the reverse-mode default
    t = jax.jit(jvp, static_argnums=1)(1.0, "autodiff")
    g = jax.jit(jax.grad(f), static_argnums=1)(1.0, "adjoint")
    assert jnp.allclose(t, g, rtol=1e-8)


def test_hessian_through_the_adjoint_names_the_keyword():
    # Item 6: jax.hessian of a symmetric exp_action by default.
    f = VERBS["exp_action"]
    with pytest.raises(TypeError, match=MESSAGE):
        jax.jit(jax.hessian(lambda s: f(s, "adjoint")))(1.0)
    h = jax.jit(jax.hessian(lambda s: f(s, "autodiff")))(1.0)
    expm = jax.scipy.linalg.expm
    h_ref = jax.hessian(lambda s: jnp.sum(expm(s * A) @ V))(1.0)
    assert jnp.allclose(h, h_ref, rtol=1e-8)


def test_forward_mode_with_a_zero_tangent_is_not_refused():
    # A JVP that does not reach the verb's inputs is not forward mode through it.
    def f(s):
        return s * VERBS["lanczos"](1.0, "adjoint")

    _, t = jax.jit(lambda s: jax.jvp(f, (s,), (1.0,)))(2.0)
    assert jnp.allclose(t, VERBS["lanczos"](1.0, "adjoint"))


@pytest.mark.parametrize("verb", ["exp_action", "logdet"])
def test_grad_of_grad_through_the_adjoint_matches_autodiff(verb):
    # Reverse over reverse differentiates the adjoint rule itself; at full depth
    # (an invariant Krylov space) it equals the second derivative.
    f = VERBS[verb]
    gg = jax.jit(jax.grad(jax.grad(lambda s: f(s, "adjoint"))))(1.3)
    h = jax.jit(jax.hessian(lambda s: f(s, "autodiff")))(1.3)
    assert jnp.allclose(gg, h, rtol=1e-10)


def test_jvp_of_a_jitted_function_keeps_jaxs_message():
    # The one case the verbs cannot see (documented in docs/conventions.md and
    # docs/adjoint.md): `jit` traces without the tangent. JAX's message is
    # pinned here so that a change in JAX shows.
    f = jax.jit(lambda s: VERBS["sqrt_action"](s, "adjoint"))
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        jax.jvp(f, (1.0,), (1.0,))
