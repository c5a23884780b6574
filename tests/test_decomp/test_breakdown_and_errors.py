"""Invariant subspaces (breakdown), run-time status, and trace-time errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from matfree import _dense, decomp, matrices
from matfree.status import Status

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
    res = method(lambda v: A @ v, v0, depth=k)
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
        res = decomp.lanczos(
            lambda x: s * (A0 @ x), v, depth=5, gradient="adjoint" if custom else "autodiff"
        )
        return res.init_norm**2 * _dense.funm_sym(jnp.exp, res.tridiag())[0, 0]

    res = decomp.lanczos(lambda x: A0 @ x, v0, depth=5)
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
    res = method(lambda x: A @ x, v0, depth=6)
    assert int(res.num_steps) == 3
    assert _relation_error(res, A) < 1e-10
    assert jnp.allclose(res.basis @ res.basis.T, jnp.eye(6), atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_at_breakdown_is_finite(method):
    n = 6

    def f(s, v):
        res = method(lambda x: s * x, v, depth=n)
        return jnp.sum(jax.tree_util.tree_leaves(res)[0]) + res.init_norm

    g = jax.grad(f, (0, 1))(2.0, jnp.ones(n))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)


def test_zero_start_vector_is_nan_with_status_zero_vector():
    A = jnp.eye(4) * 2.0
    for method in METHODS:
        res = method(lambda v: A @ v, jnp.zeros(4), depth=3, throw=False)
        assert int(res.status) == Status.ZERO_VECTOR
        assert float(res.init_norm) == 0.0
        assert bool(jnp.all(jnp.isnan(res.basis)))
        assert bool(jnp.all(jnp.isnan(res.residual)))
        with pytest.raises(eqx.EquinoxRuntimeError, match="start vector is zero"):
            method(lambda v: A @ v, jnp.zeros(4), depth=3)
    g = jax.grad(
        lambda v: decomp.lanczos(lambda x: A @ x, v, depth=2, throw=False).init_norm
    )(jnp.zeros(4))
    assert jnp.all(jnp.isfinite(g))


def test_nonfinite_values_are_reported_and_raise_by_default():
    A = jnp.eye(4)
    v0 = jnp.array([1.0, jnp.nan, 0.0, 1.0])
    for method in METHODS:
        res = method(lambda v: A @ v, v0, depth=2, throw=False)
        assert int(res.status) == Status.NONFINITE
        with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
            eqx.filter_jit(lambda v, m=method: m(lambda x: A @ x, v, depth=2).status)(v0)


@pytest.mark.parametrize(
    ("method", "field"),
    [
        (decomp.lanczos, "basis"),
        (decomp.lanczos, "diag"),
        (decomp.arnoldi, "basis"),
        (decomp.arnoldi, "hessenberg"),
    ],
)
def test_throw_holds_under_jit_whichever_field_is_read(method, field):
    A = jnp.eye(4)

    @jax.jit
    def read(v):
        return getattr(method(lambda x: A @ x, v, depth=2), field)

    read(jnp.ones(4))  # ok: no error
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(read(jnp.array([1.0, jnp.nan, 0.0, 1.0])))
    with pytest.raises(Exception, match="start vector is zero"):
        jax.block_until_ready(read(jnp.zeros(4)))


@pytest.mark.parametrize("method", METHODS)
def test_breakdown_is_not_a_failure(method):
    res = method(lambda v: v, jnp.ones(4), depth=3)  # throw=True: no error
    assert int(res.num_steps) == 1
    assert int(res.status) == Status.OK


@pytest.mark.parametrize("method", METHODS)
def test_bad_gradient_keyword(method):
    with pytest.raises(ValueError, match="`gradient` must be one of"):
        method(lambda v: v, jnp.ones(4), depth=2, gradient="implicit")
    with pytest.raises(ValueError, match="not available here"):
        method(lambda v: v, jnp.ones(4), depth=2, gradient="hutchinson")


@pytest.mark.parametrize("method", METHODS)
def test_depth_out_of_range(method):
    A = jnp.eye(5)
    with pytest.raises(ValueError, match=r"`depth` must satisfy 1 <= depth <= n = 5"):
        method(lambda v: A @ v, jnp.ones(5), depth=0)
    with pytest.raises(ValueError, match=r"got depth=6"):
        method(lambda v: A @ v, jnp.ones(5), depth=6)
    with pytest.raises(TypeError, match="`depth` must be a static Python int"):
        method(lambda v: A @ v, jnp.ones(5), depth=2.0)


@pytest.mark.parametrize("method", METHODS)
def test_bad_operators_and_vectors(method):
    A = jnp.ones((5, 5))
    with pytest.raises(TypeError, match="`matvec` must be a callable"):
        method(A, jnp.ones(5), depth=2)
    with pytest.raises(ValueError, match="`matvec` could not be applied to `v0`"):
        method(lambda v: A @ v, jnp.ones(4), depth=2)
    rect = jnp.ones((3, 5))
    with pytest.raises(ValueError, match="same shape"):
        method(lambda v: rect @ v, jnp.ones(5), depth=2)
    with pytest.raises(TypeError, match="changed the dtype"):
        method(lambda v: (A @ v).astype(jnp.float32), jnp.ones(5), depth=2)
    with pytest.raises(TypeError, match="floating or complex dtype"):
        method(lambda v: v, jnp.arange(5), depth=2)
    with pytest.raises(ValueError, match="same structure"):
        method(lambda v: {"x": v}, jnp.ones(5), depth=2)
    with pytest.raises(ValueError, match="leading batch axis"):
        method(lambda v: v, jnp.ones(()), depth=1, batched=True)
