"""Lanczos and Arnoldi values against dense references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matfree import decomp, matrices, operators


def _sym(n, seed=0, dtype=float):
    eigvals = jnp.linspace(1.0, 10.0, n, dtype=dtype) ** 2
    return matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(seed), eigvals)


def _nonsym(n, seed=0):
    eigvals = jnp.linspace(-2.0, 3.0, n)
    return matrices.nonsymmetric_matrix_from_eigenvalues(jax.random.PRNGKey(seed), eigvals)


@pytest.mark.parametrize("n", [1, 7, 40])
def test_lanczos_full_depth_reproduces_eigenvalues(n):
    A = _sym(n)
    v0 = jax.random.normal(jax.random.PRNGKey(3), (n,))
    res = decomp.lanczos(lambda v: A @ v, v0, depth=n)
    expected = jnp.linalg.eigvalsh(A)
    assert jnp.allclose(jnp.linalg.eigvalsh(res.tridiag()), expected, rtol=1e-10)
    assert int(res.num_steps) == n
    assert int(res.status) == 0


@pytest.mark.parametrize("n", [1, 7, 30])
def test_arnoldi_full_depth_reproduces_eigenvalues(n):
    A = _nonsym(n)
    v0 = jax.random.normal(jax.random.PRNGKey(3), (n,))
    res = decomp.arnoldi(lambda v: A @ v, v0, depth=n)
    got = np.sort_complex(np.linalg.eigvals(np.asarray(res.hessenberg)))
    expected = np.sort_complex(np.linspace(-2.0, 3.0, n).astype(complex))
    assert np.allclose(got, expected, atol=1e-8)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_lanczos_relation_and_orthogonality(k):
    n = 50
    A = _sym(n)
    v0 = jax.random.normal(jax.random.PRNGKey(1), (n,))
    res = decomp.lanczos(lambda v: A @ v, v0, depth=k)
    Q, T = res.basis, res.tridiag()
    assert Q.shape == (k, n) and res.diag.shape == (k,) and res.offdiag.shape == (k - 1,)
    e_k = jnp.zeros(k).at[-1].set(1.0)
    lhs = A @ Q.T
    rhs = Q.T @ T + res.residual[:, None] * e_k[None, :]
    assert jnp.allclose(lhs, rhs, atol=1e-10 * jnp.linalg.norm(A))
    assert jnp.allclose(Q @ Q.T, jnp.eye(k), atol=1e-12)
    assert jnp.allclose(Q[0], v0 / jnp.linalg.norm(v0))
    assert jnp.allclose(res.init_norm, jnp.linalg.norm(v0))
    assert jnp.all(res.offdiag >= 0)
    assert jnp.allclose(Q @ res.residual, 0.0, atol=1e-10)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_arnoldi_relation_and_orthogonality(k):
    n = 50
    A = _nonsym(n)
    v0 = jax.random.normal(jax.random.PRNGKey(1), (n,))
    res = decomp.arnoldi(lambda v: A @ v, v0, depth=k)
    Q, H = res.basis, res.hessenberg
    assert jnp.allclose(jnp.tril(H, -2), 0.0)
    e_k = jnp.zeros(k).at[-1].set(1.0)
    rhs = Q.T @ H + res.residual[:, None] * e_k[None, :]
    assert jnp.allclose(A @ Q.T, rhs, atol=1e-10 * jnp.linalg.norm(A))
    assert jnp.allclose(Q @ Q.T, jnp.eye(k), atol=1e-12)
    assert jnp.allclose(Q[0], v0 / jnp.linalg.norm(v0))


def test_lanczos_float32_keeps_orthogonality_and_eigenvalues():
    n = 60
    A = _sym(n, dtype=jnp.float32)
    v0 = jax.random.normal(jax.random.PRNGKey(1), (n,), dtype=jnp.float32)
    res = decomp.lanczos(lambda v: A @ v, v0, depth=n)
    assert res.basis.dtype == jnp.float32
    assert jnp.allclose(res.basis @ res.basis.T, jnp.eye(n), atol=1e-5)
    evals = jnp.linalg.eigvalsh(res.tridiag())
    assert jnp.allclose(evals, jnp.linalg.eigvalsh(A), rtol=1e-4)


def test_lanczos_without_reortho_loses_orthogonality_reortho_keeps_it():
    # The reason full re-orthogonalisation is the default.
    n = 100
    A = _sym(n)
    v0 = jnp.ones(n)
    plain = decomp.lanczos(lambda v: A @ v, v0, depth=60, reortho=False)
    full = decomp.lanczos(lambda v: A @ v, v0, depth=60)
    err = lambda Q: jnp.max(jnp.abs(Q @ Q.T - jnp.eye(60)))  # noqa: E731
    assert err(full.basis) < 1e-12
    assert err(plain.basis) > 1e-6


def test_arnoldi_float32():
    n = 30
    A = _nonsym(n).astype(jnp.float32)
    v0 = jnp.ones(n, dtype=jnp.float32)
    res = decomp.arnoldi(lambda v: A @ v, v0, depth=20)
    Q = res.basis
    assert jnp.allclose(Q @ Q.T, jnp.eye(20), atol=1e-5)
    e_k = jnp.zeros(20).at[-1].set(1.0)
    rhs = Q.T @ res.hessenberg + res.residual[:, None] * e_k[None, :]
    assert jnp.allclose(A @ Q.T, rhs, atol=1e-4 * jnp.linalg.norm(A))


def test_pytree_vectors():
    n1, n2 = 4, 6
    A = _sym(n1 + n2)

    def matvec(tree):
        flat = jnp.concatenate([tree["a"], tree["b"].reshape(-1)])
        out = A @ flat
        return {"a": out[:n1], "b": out[n1:].reshape(2, 3)}

    v0 = {"a": jnp.ones(n1), "b": jnp.arange(6.0).reshape(2, 3)}
    res = decomp.lanczos(matvec, v0, depth=5)
    flat_v0 = jnp.concatenate([v0["a"], v0["b"].reshape(-1)])
    ref = decomp.lanczos(lambda v: A @ v, flat_v0, depth=5)
    assert res.basis["a"].shape == (5, n1) and res.basis["b"].shape == (5, 2, 3)
    assert jnp.allclose(res.basis["a"], ref.basis[:, :n1])
    assert jnp.allclose(res.diag, ref.diag)
    assert res.residual["b"].shape == (2, 3)
    res_arn = decomp.arnoldi(matvec, v0, depth=5)
    assert jnp.allclose(res_arn.basis["b"].reshape(5, -1), ref.basis[:, n1:])


def test_jit_vmap_and_batched_agree():
    n, k = 20, 6
    A = _sym(n)
    V0 = jax.random.normal(jax.random.PRNGKey(2), (3, n))
    run = jax.jit(lambda v: decomp.lanczos(lambda x: A @ x, v, depth=k))
    vm = jax.vmap(run)(V0)
    bat = decomp.lanczos(lambda x: A @ x, V0, depth=k, batched=True)
    assert vm.basis.shape == bat.basis.shape == (3, k, n)
    assert jnp.allclose(vm.basis, bat.basis) and jnp.allclose(vm.diag, bat.diag)
    one = run(V0[1])
    assert jnp.allclose(one.offdiag, bat.offdiag[1])
    arn_b = decomp.arnoldi(lambda x: A @ x, V0, depth=k, batched=True)
    arn_v = jax.vmap(lambda v: decomp.arnoldi(lambda x: A @ x, v, depth=k))(V0)
    assert jnp.allclose(arn_b.hessenberg, arn_v.hessenberg)


def test_vmap_over_operator_parameters():
    n, k = 16, 4
    A = _sym(n)
    scales = jnp.array([1.0, 2.0, 3.0])

    def diag_of(s):
        return decomp.lanczos(lambda x: s * (A @ x), jnp.ones(n), depth=k).diag

    out = jax.vmap(diag_of)(scales)
    assert jnp.allclose(out, scales[:, None] * diag_of(1.0)[None, :])


def test_kernel_operator_matches_dense():
    x = jax.random.uniform(jax.random.PRNGKey(0), (70, 2))
    mv = operators.kernel_matvec(x, lengthscale=0.3, noise=0.1, rows_per_block=16)
    K = operators.kernel_matrix(x, x, lengthscale=0.3) + 0.1 * jnp.eye(70)
    a = decomp.lanczos(mv, jnp.ones(70), depth=10)
    b = decomp.lanczos(lambda v: K @ v, jnp.ones(70), depth=10)
    assert jnp.allclose(a.diag, b.diag) and jnp.allclose(a.basis, b.basis, atol=1e-10)
