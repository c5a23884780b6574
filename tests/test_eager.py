"""Eager calls (no outer `jit`) reuse one compiled program per operator structure."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matfree
from matfree import _eager, decomp, eig, stochtrace


def _maps():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _matrices(n, count, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    return [jax.random.normal(k, (n, n)) / (2 * np.sqrt(n)) for k in keys]


def test_exp_action_reuses_one_program_and_is_correct():
    b = jnp.ones(12)
    matfree.exp_action.programs.clear()
    for A in _matrices(12, 6):
        res = matfree.exp_action(lambda x, A=A: A @ x, b, depth=12)
        ref = jax.scipy.linalg.expm(A) @ b
        np.testing.assert_allclose(res.value, ref, rtol=1e-8)
    assert len(matfree.exp_action.programs) == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc")
def test_many_eager_calls_leave_a_bounded_footprint():
    b = jnp.ones(10)
    mats = _matrices(10, 60, seed=1)
    matfree.exp_action(lambda x: mats[0] @ x, b, depth=6)
    before = _maps()
    for A in mats:
        matfree.exp_action(lambda x, A=A: A @ x, b, depth=6)
    # Without reuse every call compiles and adds ~100 memory maps.
    assert _maps() - before < 50


def test_new_shapes_get_new_programs_within_the_bound(monkeypatch):
    monkeypatch.setattr(_eager, "MAX_PROGRAMS", 2)
    matfree.exp_action.programs.clear()
    for n in (4, 5, 6):
        A = jnp.eye(n) * 0.5
        res = matfree.exp_action(lambda x, A=A: A @ x, jnp.ones(n), depth=n)
        np.testing.assert_allclose(res.value, jnp.exp(0.5) * jnp.ones(n), rtol=1e-10)
    assert len(matfree.exp_action.programs) == 2


def test_transformed_calls_pass_through():
    A = _matrices(8, 1)[0]
    b = jnp.ones(8)
    matfree.exp_action.programs.clear()

    def loss(A):
        return jnp.sum(matfree.exp_action(lambda x: A @ x, b, depth=8).value)

    g = jax.grad(loss)(A)
    g_jit = jax.jit(jax.grad(loss))(A)
    np.testing.assert_allclose(g, g_jit, rtol=1e-8)
    ref = jax.grad(lambda A: jnp.sum(jax.scipy.linalg.expm(A) @ b))(A)
    np.testing.assert_allclose(g, ref, rtol=1e-6)
    assert len(matfree.exp_action.programs) == 0


def test_switch_off_with_environment_variable(monkeypatch):
    monkeypatch.setenv("MATFREE_EAGER_CACHE", "0")
    matfree.exp_action.programs.clear()
    A = _matrices(6, 1)[0]
    matfree.exp_action(lambda x: A @ x, jnp.ones(6), depth=6)
    assert len(matfree.exp_action.programs) == 0


def test_pytree_vectors_and_solve_batched_and_precond():
    A = jnp.diag(jnp.arange(1.0, 7.0))

    def mv(x):
        return {"a": A[:3, :3] @ x["a"], "b": A[3:, 3:] @ x["b"]}

    b = {"a": jnp.ones(3), "b": jnp.ones(3)}
    sol = matfree.solve(mv, b, rtol=1e-12)
    np.testing.assert_allclose(sol.value["b"], 1.0 / jnp.arange(4.0, 7.0), rtol=1e-10)

    B = jnp.stack([jnp.ones(6), jnp.arange(6.0)])
    matfree.solve.programs.clear()
    for scale in (1.0, 2.0):
        s_arr = jnp.asarray(scale)  # an array: data; a Python float would be structure
        sol = matfree.solve(
            lambda x, s=s_arr: s * (A @ x),
            B,
            batched=True,
            rtol=1e-12,
            precond=lambda x: x / jnp.diag(A),
        )
        np.testing.assert_allclose(sol.value, B / (scale * jnp.diag(A)), rtol=1e-10)
    # Two closures (new `s`, new preconditioner lambda), one structure: one program.
    assert len(matfree.solve.programs) == 1


def test_rectangular_lsqr_and_other_verbs():
    R = jax.random.normal(jax.random.PRNGKey(3), (7, 4))
    b = jnp.arange(7.0)
    sol = matfree.solve(lambda x: R @ x, b, method="lsqr", x0=jnp.zeros(4), rtol=1e-12)
    np.testing.assert_allclose(sol.value, jnp.linalg.lstsq(R, b)[0], rtol=1e-8)

    S = R.T @ R + jnp.eye(4)
    res = decomp.lanczos(lambda x: S @ x, jnp.ones(4), depth=4)
    np.testing.assert_allclose(
        jnp.linalg.eigvalsh(
            jnp.diag(res.diag) + jnp.diag(res.offdiag, 1) + jnp.diag(res.offdiag, -1)
        ),
        jnp.linalg.eigvalsh(S),
        rtol=1e-10,
    )
    est = stochtrace.trace(
        lambda x: S @ x, jnp.zeros(4), key=None, num_probes=4, probes="unit"
    )
    np.testing.assert_allclose(est.value, jnp.trace(S), rtol=1e-12)
    ld = matfree.logdet(
        lambda x: S @ x, jnp.zeros(4), key=None, depth=4, num_probes=4, probes="unit"
    )
    np.testing.assert_allclose(ld.value, jnp.linalg.slogdet(S)[1], rtol=1e-10)
    ext = eig.extreme(lambda x: S @ x, jnp.ones(4), num_eigenpairs=1, depth=4)
    np.testing.assert_allclose(ext.eigenvalues[-1], jnp.linalg.eigvalsh(S)[-1], rtol=1e-10)


def test_errors_keep_their_messages():
    A = jnp.eye(5)
    with pytest.raises(ValueError, match="depth"):
        matfree.exp_action(lambda x: A @ x, jnp.ones(5), depth=0)
    with pytest.raises(Exception, match="NaN or inf"):
        matfree.exp_action(lambda x: jnp.nan * (A @ x), jnp.ones(5), depth=3)
    res = matfree.exp_action(lambda x: jnp.nan * (A @ x), jnp.ones(5), depth=3, throw=False)
    assert int(res.status) == int(matfree.status.Status.NONFINITE)
