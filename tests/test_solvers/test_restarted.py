"""Restarted GMRES and GCR: defaults that converge where SciPy's do; stagnation reported."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import matfree
from matfree.status import Status


def _laplacian(n, shift=0.0):
    return 2.0 * jnp.eye(n) - jnp.eye(n, k=1) - jnp.eye(n, k=-1) - shift * jnp.eye(n)


@pytest.mark.parametrize("method", ["gmres", "gcr"])
@pytest.mark.parametrize("shift", [0.0, 0.5])  # SPD, and symmetric indefinite
def test_default_limits_converge_on_a_1d_laplacian(method, shift):
    # SciPy's gmres needs ~10,500 GMRES(20) iterations here (its `maxiter`
    # counts restart cycles); the old default of 10 n = 3,000 iterations
    # stopped at a relative residual of 6e-3.
    A = _laplacian(300, shift)
    b = jnp.ones(300)
    sol = matfree.solve(lambda v: A @ v, b, method=method, rtol=1e-5)
    assert int(sol.status) == Status.OK
    assert int(sol.num_steps) > 3000
    x = np.linalg.solve(np.asarray(A), np.asarray(b))
    assert np.linalg.norm(np.asarray(A) @ np.asarray(sol.value) - b) <= 1e-5 * np.sqrt(300)
    assert np.linalg.norm(sol.value - x) / np.linalg.norm(x) < 1e-2


def test_gcr_stagnation_is_detected_and_named():
    # The residual is A-orthogonal to A r: GCR cannot move (GMRES can).
    A = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    b = jnp.array([1.0, 0.0])
    sol = matfree.solve(lambda v: A @ v, b, method="gcr", throw=False)
    assert int(sol.status) == Status.STAGNATED
    assert int(sol.num_steps) <= 2
    with pytest.raises(eqx.EquinoxRuntimeError, match="stagnated"):
        matfree.solve(lambda v: A @ v, b, method="gcr")
    ok = matfree.solve(lambda v: A @ v, b, method="gmres")
    np.testing.assert_allclose(ok.value, [0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("method", ["gmres", "gcr"])
def test_a_cycle_without_progress_stops_the_iteration(method):
    # A rotation by 90 degrees in each plane: GMRES(1)/GCR(1) cannot reduce
    # the residual (x^T A x = 0), so the first cycle already stagnates.
    n = 6
    A = jnp.kron(jnp.eye(n // 2), jnp.array([[0.0, -1.0], [1.0, 0.0]]))
    b = jnp.ones(n)
    sol = matfree.solve(lambda v: A @ v, b, method=method, restart=1, throw=False)
    assert int(sol.status) == Status.STAGNATED
    assert int(sol.num_steps) < 10


def test_autodiff_keeps_the_iteration_bound_and_says_what_to_raise():
    A = _laplacian(300)
    b = jnp.ones(300)
    sol = matfree.solve(
        lambda v: A @ v, b, method="gmres", rtol=1e-5, gradient="autodiff", throw=False
    )
    assert int(sol.status) == Status.NOT_CONVERGED
    assert int(sol.num_steps) == 3000
    assert "`restart`" in matfree.status.message(Status.NOT_CONVERGED)
    assert "`restart`" in matfree.status.message(Status.STAGNATED)
