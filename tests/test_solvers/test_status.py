"""Run-time conditions: reported in the `Solution`, raised with `throw=True`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from solver_helpers import N, dense_solve, solve_and_grad

import matfree
from matfree import matrices, precond
from matfree.status import Status

# Solves go through the shared jitted `solve_and_grad` / `dense_solve` (rtol
# 1e-6 is the float64 default), so tests with the same method, shape and
# options share one compile (also with test_methods and test_gradients).


def _spd():
    return matrices.spd_matrix(jax.random.PRNGKey(0), N, 1e4)


def test_nonconvergence_is_reported():
    A = _spd()
    b = jnp.ones(N)
    sol = dense_solve(A, b, 1e-12, maxiter=3)
    assert not bool(sol.converged)
    assert int(sol.status) == 1
    assert int(sol.num_steps) == 3
    assert float(sol.residual_norm) > 1e-12 * float(jnp.linalg.norm(b))
    assert bool(jnp.all(jnp.isfinite(sol.value)))


def test_nonconvergence_raises_with_throw():
    A = _spd()
    with pytest.raises(eqx.EquinoxRuntimeError, match="did not converge"):
        # eager: under `jit` the error surfaces as a JaxRuntimeError
        matfree.solve(lambda v: A @ v, jnp.ones(N), maxiter=3, rtol=1e-12, throw=True)


def test_cg_reports_indefinite_operator():
    eigs = jnp.concatenate([-jnp.ones(5), jnp.linspace(1.0, 10.0, N - 5)])
    A = matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(1), eigs)
    b = jnp.ones(N)
    sol = solve_and_grad(A, b, b, 1e-6, method="cg")[0]
    assert int(sol.status) == matfree.status.Status.NOT_POSITIVE_DEFINITE
    assert not bool(sol.converged)
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive definite"):
        matfree.solve(lambda v: A @ v, b, method="cg", throw=True)
    # MINRES handles the same operator.
    sol = solve_and_grad(A, b, b, 1e-10, method="minres")[0]
    assert bool(sol.converged)
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), rtol=1e-6)


def test_cg_reports_a_negative_definite_operator_at_the_first_step():
    sol = matfree.solve(lambda v: -v, jnp.ones(4), method="cg", throw=False)
    assert int(sol.status) == matfree.status.Status.NOT_POSITIVE_DEFINITE
    assert int(sol.num_steps) == 1
    assert bool(jnp.all(sol.value == 0))


def test_bicgstab_breakdown_is_reported():
    # A rotation: r0^T A r0 = 0, so r_hat^T A p vanishes at the first step.
    A = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    sol = matfree.solve(
        lambda v: A @ v, jnp.array([1.0, 0.0]), method="bicgstab", throw=False
    )
    assert int(sol.status) == 2
    assert not bool(sol.converged)
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="broke down"):
        matfree.solve(lambda v: A @ v, jnp.array([1.0, 0.0]), method="bicgstab", throw=True)
    # GMRES solves it.
    sol = matfree.solve(lambda v: A @ v, jnp.array([1.0, 0.0]), method="gmres")
    assert bool(sol.converged)
    assert jnp.allclose(sol.value, jnp.array([0.0, 1.0]))


def test_cg_with_indefinite_preconditioner_reports_breakdown():
    A = _spd()
    d = jnp.ones(N).at[3].set(-1.0)
    sol = dense_solve(A, jnp.ones(N), 1e-6, precond=precond.jacobi(1 / d))
    assert int(sol.status) in (2, 3)
    assert not bool(sol.converged)


def test_nonfinite_values_are_reported():
    A = _spd()
    b = jnp.ones(N).at[0].set(jnp.nan)
    sol = solve_and_grad(A, b, b, 1e-6, method="cg")[0]
    assert int(sol.status) == 4
    assert not bool(sol.converged)
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        matfree.solve(lambda v: A @ v, b, throw=True)
    # An operator whose output is infinite: A v + inf * v[0].
    Ainf, b1 = A.at[:, 0].add(jnp.inf), jnp.ones(N)
    sol = solve_and_grad(Ainf, b1, b1, 1e-6, method="gmres")[0]
    assert int(sol.status) == 4


@pytest.mark.parametrize("method", ["cg", "minres", "gmres", "bicgstab", "gcr", "lsqr"])
def test_nonfinite_input_gives_nan_value_in_every_method(method):
    A = _spd()
    b = jnp.ones(N).at[0].set(jnp.nan)
    sol = matfree.solve(lambda v: A @ v, b, method=method, throw=False)
    assert int(sol.status) == int(Status.NONFINITE)
    assert bool(jnp.all(jnp.isnan(sol.value)))
    assert bool(jnp.isnan(sol.residual_norm))


def test_throw_passes_on_success_and_under_jit():
    A = _spd()
    x = dense_solve(A, jnp.ones(N), 1e-6, throw=True).value  # jitted
    assert jnp.allclose(x, jnp.linalg.solve(A, jnp.ones(N)), rtol=1e-4)


def test_throw_is_attached_to_every_field_under_jit():
    A = _spd()

    @jax.jit
    def steps(b):  # reads only `num_steps`, never `value` or `status`
        return matfree.solve(lambda v: A @ v, b, maxiter=3, rtol=1e-12).num_steps

    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(steps(jnp.ones(N)))

    @jax.jit
    def norms(B):
        sol = matfree.solve(lambda v: A @ v, B, maxiter=3, rtol=1e-12, batched=True)
        return sol.residual_norm

    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(norms(jnp.ones((2, N))))


def test_status_codes_are_those_of_matfree_status():
    A = _spd()
    sol = dense_solve(A, jnp.ones(N), 1e-12, maxiter=3)
    assert int(sol.status) == matfree.status.Status.NOT_CONVERGED
    assert matfree.status.message(sol.status).startswith("did not converge")


def test_throw_covers_the_adjoint_solve_of_the_gradient():
    # The forward solve converges in one step (b is an eigenvector of A), the
    # adjoint solve with a generic cotangent needs four: maxiter=1 stops it.
    A = jnp.diag(jnp.array([1.0, 2.0, 3.0, 4.0]))
    b = jnp.array([1.0, 0.0, 0.0, 0.0])
    w = jnp.array([1.0, 2.0, 3.0, 4.0])

    def loss(b):
        return jnp.dot(w, matfree.solve(lambda v: A @ v, b, maxiter=1).value)

    assert jnp.allclose(loss(b), 1.0)
    # The adjoint solve runs inside the compiled `custom_linear_solve`: the
    # message arrives as it does under `jax.jit` (wrapped in an XLA error).
    # (Which exception class wraps it depends on JAX's dispatch path: an XLA
    # runtime error, or a ValueError when the compiled solve is cached.)
    errors = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError, ValueError)
    with pytest.raises(errors, match="did not converge"):
        jax.grad(loss)(b)
