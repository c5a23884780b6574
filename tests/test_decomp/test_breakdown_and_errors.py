"""Invariant subspaces (breakdown), run-time status, and trace-time errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from matfree import _dense, decomp, matrices

METHODS = [decomp.lanczos, decomp.arnoldi]


def _relation_error(res, A):
    H = res.hessenberg if hasattr(res, "hessenberg") else res.tridiag()
    k = H.shape[0]
    e_k = jnp.zeros(k).at[-1].set(1.0)
    Q = res.basis
    return jnp.max(jnp.abs(A @ Q.T - Q.T @ H - res.residual[:, None] * e_k[None, :]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [3, 8])
def test_identity_breaks_down_after_one_step_exactly(method, k):
    n = 8
    A = jnp.eye(n)
    v0 = jnp.arange(1.0, n + 1)
    res = method(lambda v: A @ v, v0, k)
    leaves = jax.tree_util.tree_leaves(res)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert int(res.num_steps) == 1
    assert int(res.status) == 0
    assert _relation_error(res, A) < 1e-12
    assert jnp.allclose(res.basis @ res.basis.T, jnp.eye(k), atol=1e-12)
    H = res.hessenberg if hasattr(res, "hessenberg") else res.tridiag()
    assert jnp.allclose(jnp.linalg.eigvals(H).real, 1.0)


def test_eigenvector_start_breaks_down_and_gradients_are_exact_and_finite():
    n = 10
    eigvals = jnp.linspace(1.0, 4.0, n)
    Qd = matrices.random_orthogonal(jax.random.PRNGKey(0), n)
    A0 = (Qd * eigvals) @ Qd.T
    v0 = 2.0 * Qd[:, 3]

    def quad(s, v, custom):
        res = decomp.lanczos(lambda x: s * (A0 @ x), v, 5, custom_vjp=custom)
        return res.init_norm**2 * _dense.funm_sym(jnp.exp, res.tridiag())[0, 0]

    res = decomp.lanczos(lambda x: A0 @ x, v0, 5)
    assert int(res.num_steps) == 1 and res.offdiag[0] == 0.0
    dense = lambda s, v: v @ jax.scipy.linalg.expm(s * A0) @ v  # noqa: E731
    assert jnp.allclose(quad(1.0, v0, True), dense(1.0, v0))
    g = jax.grad(quad, (0, 1))(1.0, v0, True)
    g_ref = jax.grad(dense, (0, 1))(1.0, v0)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
    assert jnp.allclose(g[0], g_ref[0]) and jnp.allclose(g[1], g_ref[1], atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_invariant_subspace_of_dimension_three(method):
    # v0 in the span of three eigenvectors: Krylov space has dimension 3.
    n = 12
    eigvals = jnp.linspace(1.0, 5.0, n)
    Qd = matrices.random_orthogonal(jax.random.PRNGKey(1), n)
    A = (Qd * eigvals) @ Qd.T
    v0 = Qd[:, 0] + Qd[:, 5] + Qd[:, 9]
    res = method(lambda x: A @ x, v0, 6)
    assert int(res.num_steps) == 3
    assert _relation_error(res, A) < 1e-10
    assert jnp.allclose(res.basis @ res.basis.T, jnp.eye(6), atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_at_breakdown_is_finite(method):
    n = 6

    def f(s, v):
        res = method(lambda x: s * x, v, n)
        return jnp.sum(jax.tree_util.tree_leaves(res)[0]) + res.init_norm

    g = jax.grad(f, (0, 1))(2.0, jnp.ones(n))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)


def test_zero_start_vector_is_reported_not_nan():
    A = jnp.eye(4) * 2.0
    for method in METHODS:
        res = method(lambda v: A @ v, jnp.zeros(4), 3)
        assert int(res.status) == 1
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(res))
        with pytest.raises(eqx.EquinoxRuntimeError, match="start vector `v0` is zero"):
            method(lambda v: A @ v, jnp.zeros(4), 3, throw=True)
    g = jax.grad(lambda v: decomp.lanczos(lambda x: A @ x, v, 2).init_norm)(jnp.zeros(4))
    assert jnp.all(jnp.isfinite(g))


def test_nonfinite_values_are_reported_and_raise_on_request():
    A = jnp.eye(4)
    v0 = jnp.array([1.0, jnp.nan, 0.0, 1.0])
    for method in METHODS:
        assert int(method(lambda v: A @ v, v0, 2).status) == 2
        with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
            eqx.filter_jit(lambda v, m=method: m(lambda x: A @ x, v, 2, throw=True).status)(
                v0
            )


@pytest.mark.parametrize("method", METHODS)
def test_depth_out_of_range(method):
    A = jnp.eye(5)
    with pytest.raises(ValueError, match=r"`depth` must satisfy 1 <= depth <= n = 5"):
        method(lambda v: A @ v, jnp.ones(5), 0)
    with pytest.raises(ValueError, match=r"got depth=6"):
        method(lambda v: A @ v, jnp.ones(5), 6)
    with pytest.raises(TypeError, match="`depth` must be a static Python int"):
        method(lambda v: A @ v, jnp.ones(5), 2.0)


@pytest.mark.parametrize("method", METHODS)
def test_bad_operators_and_vectors(method):
    A = jnp.ones((5, 5))
    with pytest.raises(TypeError, match="`matvec` must be a callable"):
        method(A, jnp.ones(5), 2)
    with pytest.raises(ValueError, match="`matvec` could not be applied to `v0`"):
        method(lambda v: A @ v, jnp.ones(4), 2)
    rect = jnp.ones((3, 5))
    with pytest.raises(ValueError, match="same shape"):
        method(lambda v: rect @ v, jnp.ones(5), 2)
    with pytest.raises(TypeError, match="changed the dtype"):
        method(lambda v: (A @ v).astype(jnp.float32), jnp.ones(5), 2)
    with pytest.raises(TypeError, match="real floating dtype"):
        method(lambda v: v, jnp.arange(5), 2)
    with pytest.raises(ValueError, match="same structure"):
        method(lambda v: {"x": v}, jnp.ones(5), 2)
    with pytest.raises(ValueError, match="leading batch axis"):
        method(lambda v: v, jnp.ones(()), 1, batched=True)
