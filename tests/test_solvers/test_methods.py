"""Each method against a dense solve, on matrices with a chosen spectrum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from solver_helpers import N, dense_solve, solve_and_grad

import matfree
from matfree import matrices

COND = 1e3


def _spd(dtype, n=N):
    return matrices.spd_matrix(jax.random.PRNGKey(1), n, COND, dtype)


def _indefinite(dtype, n=N):
    half = jnp.logspace(0, jnp.log10(COND), n // 2, dtype=dtype)
    eigs = jnp.concatenate([-half, half])
    return matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(2), eigs)


def _nonsymmetric(dtype, n=N):
    eigs = jnp.linspace(1.0, 100.0, n, dtype=dtype)
    A = matrices.nonsymmetric_matrix_from_eigenvalues(
        jax.random.PRNGKey(3), eigs, eigvec_cond=5.0
    )
    return A.astype(dtype)


MATRICES = {
    "cg": _spd,
    "minres": _indefinite,
    "gmres": _nonsymmetric,
    "bicgstab": _nonsymmetric,
    "gcr": _nonsymmetric,
    "lsqr": _nonsymmetric,
}


def _rhs(dtype, shape=(N,)):
    return jax.random.normal(jax.random.PRNGKey(4), shape, dtype)


@pytest.mark.parametrize("method", list(MATRICES))
def test_float64_matches_dense_solve(method):
    A = MATRICES[method](jnp.float64)
    b = _rhs(jnp.float64)
    rtol = 1e-10
    # shares its compile with the gradient tests
    sol, _, _ = solve_and_grad(A, b, b, rtol, method=method)
    expected = jnp.linalg.solve(A, b)
    assert bool(sol.converged)
    assert int(sol.status) == 0
    assert 0 < int(sol.num_steps) <= 10 * N
    # The true residual is recomputed; allow rounding drift of the recurrence.
    assert float(sol.residual_norm) <= 10 * rtol * float(jnp.linalg.norm(b))
    cond = jnp.linalg.cond(A)
    err = jnp.linalg.norm(sol.value - expected) / jnp.linalg.norm(expected)
    assert float(err) <= 10 * float(cond) * rtol


@pytest.mark.parametrize("method", list(MATRICES))
def test_float32_matches_dense_solve(method):
    A = MATRICES[method](jnp.float32)
    A = A / 10.0 if method == "lsqr" else A
    b = _rhs(jnp.float32)
    # default float32 rtol; shares its compile with the float32 gradient tests
    sol, _, _ = solve_and_grad(A, b, b, method=method)
    assert sol.value.dtype == jnp.float32
    assert bool(sol.converged)
    # default float32 rtol = 1e-4
    assert float(sol.residual_norm) <= 3e-4 * float(jnp.linalg.norm(b))
    expected = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    err = np.linalg.norm(np.asarray(sol.value, np.float64) - expected)
    assert err <= 1e-4 * float(jnp.linalg.cond(A)) * np.linalg.norm(expected)


def test_lsqr_rectangular_and_damped_match_lstsq_and_ridge():
    key = jax.random.PRNGKey(5)
    # (40, 15): the shapes of the rectangular gradient test, one compile for both
    A = jax.random.normal(key, (40, 15)) * jnp.logspace(0, 2, 15)[None, :]
    b = _rhs(jnp.float64, (40,))
    x0 = jnp.zeros(15)
    w = jnp.ones(15)
    sol, _, _ = solve_and_grad(A, b, w, 1e-12, x0, method="lsqr")
    expected = jnp.linalg.lstsq(A, b)[0]
    assert bool(sol.converged)
    assert sol.value.shape == (15,)
    assert jnp.allclose(sol.value, expected, rtol=1e-7, atol=1e-9)
    assert jnp.allclose(sol.residual_norm, jnp.linalg.norm(b - A @ expected), rtol=1e-8)
    damp = 3.0
    sol, _, _ = solve_and_grad(A, b, w, 1e-12, x0, damp, method="lsqr")
    ridge = jnp.linalg.solve(A.T @ A + damp**2 * jnp.eye(15), A.T @ b)
    assert bool(sol.converged)
    assert jnp.allclose(sol.value, ridge, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["cg", "gmres"])
def test_batched_right_hand_sides_share_one_loop(method):
    # n = 40, not N: the batched run (a matmul) and the single one (a matvec)
    # round differently; at n = 40 both CG runs take 76 steps, at n = 30 the
    # residual sits at the tolerance after 51 steps and they differ by one.
    n = 40
    A = MATRICES[method](jnp.float64, n)
    B = _rhs(jnp.float64, (n, 3)).T * jnp.array([1.0, 1e-3, 1e3])[:, None]
    B = B.at[1].set(0.0)  # a zero right-hand side converges in zero steps
    sol = dense_solve(A, B, 1e-10, method=method, batched=True)
    assert sol.value.shape == (3, n)
    assert sol.num_steps.shape == sol.converged.shape == sol.residual_norm.shape == (3,)
    assert sol.status.shape == (3,)
    assert bool(jnp.all(sol.converged))
    assert int(sol.num_steps[1]) == 0
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, B.T).T, rtol=1e-6, atol=1e-12)
    # the same as separate solves, row by row
    one = dense_solve(A, B[2], 1e-10, method=method)
    assert int(one.num_steps) == int(sol.num_steps[2])
    assert jnp.allclose(one.value, sol.value[2], rtol=1e-12)


def test_batched_counts_one_batched_matvec_per_step():
    A = _spd(jnp.float64)
    calls = []

    def matvec(v):
        calls.append(v.shape)
        return A @ v

    B = _rhs(jnp.float64, (N, 4)).T
    jax.make_jaxpr(lambda B: matfree.solve(matvec, B, batched=True).value)(B)
    # Traced: shape check, loop body, final residual -- every call on one vector
    # under vmap, never a Python loop over the 4 columns.
    assert len(calls) <= 5


def test_vmap_over_solve_equals_batched():
    A = _spd(jnp.float64)
    B = _rhs(jnp.float64, (3, N))
    f = jax.vmap(lambda b: matfree.solve(lambda v: A @ v, b, rtol=1e-10).value)
    assert jnp.allclose(f(B), jnp.linalg.solve(A, B.T).T, rtol=1e-6)


def test_pytree_right_hand_side():
    A = _spd(jnp.float64)

    def matvec(tree):
        v = jnp.concatenate([tree["a"], tree["b"].reshape(-1)])
        w = A @ v
        return {"a": w[:10], "b": w[10:].reshape(4, 5)}

    b = {"a": jnp.ones(10), "b": jnp.arange(20.0).reshape(4, 5)}
    sol = matfree.solve(matvec, b, method="minres", rtol=1e-10)
    flat = jnp.linalg.solve(A, jnp.concatenate([b["a"], b["b"].reshape(-1)]))
    assert jnp.allclose(sol.value["a"], flat[:10], rtol=1e-6)
    assert jnp.allclose(sol.value["b"].reshape(-1), flat[10:], rtol=1e-6)


@pytest.mark.parametrize("method", ["cg", "bicgstab"])
def test_initial_guess_and_history(method):
    A = MATRICES[method](jnp.float64)
    b = _rhs(jnp.float64)
    exact = jnp.linalg.solve(A, b)
    sol = dense_solve(A, b, 1e-8, exact, method=method, history=True)
    assert int(sol.num_steps) == 0
    assert jnp.allclose(sol.value, exact)
    sol = dense_solve(A, b, 1e-8, jnp.zeros(N), method=method, history=True)
    k = int(sol.num_steps)
    hist = sol.residual_history
    assert hist.shape == (10 * N + 1,)
    assert jnp.allclose(hist[0], jnp.linalg.norm(b))
    assert bool(jnp.all(jnp.isfinite(hist[: k + 1])))
    assert bool(jnp.all(jnp.isnan(hist[k + 1 :])))
    assert float(hist[k]) <= 1e-8 * float(jnp.linalg.norm(b))


def test_gmres_restart_small_still_converges():
    A = _nonsymmetric(jnp.float64)
    b = _rhs(jnp.float64)
    full = solve_and_grad(A, b, b, 1e-10, method="gmres")[0]  # restart = 30 = N
    short = dense_solve(A, b, 1e-10, method="gmres", restart=5)
    assert bool(full.converged) and bool(short.converged)
    assert int(full.num_steps) <= int(short.num_steps)
    assert jnp.allclose(short.value, jnp.linalg.solve(A, b), rtol=1e-6)


def test_jit_with_traced_tolerance():
    A = _spd(jnp.float64)
    b = _rhs(jnp.float64)

    # `dense_solve` is jitted with `rtol` traced: one compiled loop for both.
    def steps(rtol):
        return int(solve_and_grad(A, b, b, rtol, method="cg")[0].num_steps)

    assert steps(1e-2) < steps(1e-10)


def test_zero_right_hand_side_gives_zero():
    A = _nonsymmetric(jnp.float64)
    for method in ("gmres", "bicgstab", "gcr"):
        sol = solve_and_grad(A, jnp.zeros(N), jnp.zeros(N), 1e-10, method=method)[0]
        assert bool(sol.converged)
        assert int(sol.num_steps) == 0
        assert bool(jnp.all(sol.value == 0))


def test_batched_every_field_has_the_leading_axis():
    A = _spd(jnp.float64)
    B = _rhs(jnp.float64, (N, 2)).T
    X0 = jnp.zeros((2, N))
    sol = dense_solve(A, B, 1e-8, X0, batched=True, history=True)
    for name, field in sol._asdict().items():
        assert field.shape[0] == 2, name
    assert sol.residual_history.shape == (2, 10 * N + 1)
    one = dense_solve(A, B[1], 1e-8, X0[1], history=True)
    # a matmul and a matvec round differently: compare the first steps only
    assert jnp.allclose(one.residual_history[:10], sol.residual_history[1, :10], rtol=1e-8)
