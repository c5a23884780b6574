"""Preconditioners: exact algebra against dense matrices, fewer CG iterations."""

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads
from solver_helpers import dense_solve

import matfree
from matfree import matrices, operators, precond
from matfree._dense import funm_sym

N = 200


@pytest.fixture(scope="module")
def kernel_problem():
    x = jax.random.uniform(jax.random.PRNGKey(0), (N, 2))
    K = operators.kernel_matrix(x, x, lengthscale=0.3)
    b = jnp.sin(3 * x[:, 0]) + x[:, 1]
    return x, K, b


def _dense(P, n):
    return jax.vmap(P, out_axes=1)(jnp.eye(n))


def test_pivoted_cholesky_cuts_cg_iterations_threefold(kernel_problem):
    _x, K, b = kernel_problem
    noise = 1e-2
    A = K + noise * jnp.eye(N)
    P = precond.pivoted_cholesky(lambda i: K[i], jnp.diag(K), rank=40, shift=noise)
    plain = dense_solve(A, b, 1e-8)
    pre = dense_solve(A, b, 1e-8, precond=P)
    assert bool(plain.converged) and bool(pre.converged)
    assert 3 * int(pre.num_steps) <= int(plain.num_steps)
    assert jnp.allclose(pre.value, jnp.linalg.solve(A, b), rtol=1e-5)
    # P^{-1} A is much better conditioned than A.
    M = _dense(P, N) @ A
    assert float(jnp.linalg.cond(M)) < float(jnp.linalg.cond(A)) / 100


def test_nystrom_cuts_cg_iterations(kernel_problem):
    _x, K, b = kernel_problem
    A = K + 1e-2 * jnp.eye(N)
    P = precond.nystrom(lambda v: K @ v, b, key=jax.random.PRNGKey(1), rank=40, shift=1e-2)
    plain = dense_solve(A, b, 1e-8)
    pre = dense_solve(A, b, 1e-8, precond=P)  # the same compile as for pivchol
    assert bool(pre.converged)
    assert 3 * int(pre.num_steps) <= int(plain.num_steps)


@pytest.mark.parametrize("kind", ["jacobi", "pivoted_cholesky", "nystrom"])
def test_inverse_inv_sqrt_and_logdet_against_dense(kind, kernel_problem):
    _, K, _ = kernel_problem
    n = 50
    K = K[:n, :n]
    if kind == "jacobi":
        P = precond.jacobi(jnp.linspace(1.0, 5.0, n))
    elif kind == "pivoted_cholesky":
        P = precond.pivoted_cholesky(lambda i: K[i], jnp.diag(K), rank=10, shift=0.1)
    else:
        P = precond.nystrom(
            lambda v: K @ v, jnp.zeros(n), key=jax.random.PRNGKey(2), rank=10, shift=0.1
        )
    Pinv = _dense(P, n)
    Pinv_sqrt = _dense(P.inv_sqrt, n)
    assert jnp.allclose(Pinv, Pinv.T, atol=1e-12)
    assert bool(jnp.all(jnp.linalg.eigvalsh(Pinv) > 0))
    assert jnp.allclose(Pinv_sqrt @ Pinv_sqrt, Pinv, rtol=1e-9, atol=1e-12)
    sign, logdet_inv = jnp.linalg.slogdet(Pinv)
    assert sign == 1
    assert jnp.allclose(P.logdet(), -logdet_inv, rtol=1e-10)
    # log det A = log det P + log det(P^{-1/2} A P^{-1/2})
    A = K + 0.1 * jnp.eye(n)
    inner = Pinv_sqrt @ A @ Pinv_sqrt
    assert jnp.allclose(
        P.logdet() + jnp.linalg.slogdet(inner)[1], jnp.linalg.slogdet(A)[1], rtol=1e-9
    )


def test_pivoted_cholesky_full_rank_is_exact(kernel_problem):
    _, K, _ = kernel_problem
    K = K[:20, :20] + 1e-6 * jnp.eye(20)
    P = precond.pivoted_cholesky(lambda i: K[i], jnp.diag(K), rank=20, shift=1e-3)
    assert jnp.allclose(_dense(P, 20), jnp.linalg.inv(K + 1e-3 * jnp.eye(20)), rtol=1e-6)


def test_pivoted_cholesky_pivots_follow_the_greedy_rule(kernel_problem):
    # A kernel matrix with a varying diagonal, so that the first pivot means something.
    _, K, _ = kernel_problem
    n, rank, noise = 50, 10, 0.1
    D = 1 + jnp.sin(jnp.arange(n)) ** 2
    K = D[:, None] * K[:n, :n] * D[None, :]
    f = jax.jit(
        lambda K: precond.pivoted_cholesky(
            lambda i: K[i], jnp.diag(K), rank=rank, shift=noise
        )
    )
    P = f(K)
    piv = P.pivots
    assert piv.shape == (rank,) and jnp.issubdtype(piv.dtype, jnp.integer)
    assert len(set(piv.tolist())) == rank
    assert int(piv[0]) == int(jnp.argmax(jnp.diag(K)))
    # Each pivot is the largest remaining diagonal of the (dense) Schur complement.
    for j in range(1, rank):
        S = piv[:j]
        schur = jnp.diag(K) - jnp.sum(K[:, S] * jnp.linalg.solve(K[S][:, S], K[S]).T, 1)
        assert int(piv[j]) == int(jnp.argmax(schur.at[S].set(-jnp.inf))), j
    # The factor is the Nystrom approximation at the pivots: L L^T = K_XS K_SS^{-1} K_SX.
    nys = K[:, piv] @ jnp.linalg.solve(K[piv][:, piv], K[piv])
    LLt = P.factor @ P.factor.T
    assert jnp.allclose(LLt, nys, rtol=1e-8, atol=1e-10)
    assert float(P.shift) == noise
    P0 = precond.pivoted_cholesky(lambda i: K[i], jnp.diag(K), rank=rank, shift=noise)
    assert jnp.allclose(P0.factor, P.factor, rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_pivoted_cholesky_pivots_are_distinct_past_the_numerical_rank(dtype):
    # A smooth kernel on 40 close points has numerical rank far below 40: the remaining
    # pivots have (near-)zero Schur diagonal but are never repeated.
    x = jnp.linspace(0, 0.5, 40, dtype=dtype)[:, None]
    K = operators.kernel_matrix(x, x, lengthscale=jnp.asarray(0.5, dtype))
    P = precond.pivoted_cholesky(lambda i: K[i], jnp.diag(K), rank=40, shift=1e-2)
    assert sorted(P.pivots.tolist()) == list(range(40))
    assert P.factor.dtype == P.shift.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(P.factor)))
    # Zero columns past the numerical rank: P^{-1/2} stays finite and SPD.
    W = P.inv_sqrt(jnp.eye(40, dtype=dtype))
    assert bool(jnp.all(jnp.isfinite(W)))
    assert bool(jnp.all(jnp.linalg.eigvalsh(W.astype(jnp.float64)) > 0))
    assert bool(jnp.isfinite(P.logdet()))


def test_jacobi_from_estimated_diagonal_fixes_bad_scaling():
    A0 = matrices.spd_matrix(jax.random.PRNGKey(3), 60, 10.0)
    D = jnp.logspace(0, 3, 60)
    A = D[:, None] * A0 * D[None, :]
    b = jnp.ones(60)
    exact = precond.estimate_diagonal(lambda v: A @ v, b, num_probes=60)
    assert jnp.allclose(exact, jnp.diag(A))
    P = precond.jacobi(exact)
    plain = dense_solve(A, b, 1e-8, maxiter=2000)
    pre = dense_solve(A, b, 1e-8, precond=P)
    assert bool(pre.converged)
    assert 3 * int(pre.num_steps) <= int(plain.num_steps)


def test_estimate_diagonal_probing_and_stochastic():
    mv = operators.laplace_2d((6, 7), shift=1.0)
    like = jnp.zeros(42)
    assert jnp.allclose(precond.estimate_diagonal(mv, like, num_probes=15), 5.0)
    D = jnp.linspace(1.0, 2.0, 42)
    est = precond.estimate_diagonal(
        lambda v: D * v, like, num_probes=3, key=jax.random.PRNGKey(0)
    )
    assert jnp.allclose(est, D)  # exact for a diagonal operator
    est = precond.estimate_diagonal(mv, like, num_probes=4000, key=jax.random.PRNGKey(0))
    assert jnp.allclose(est, 5.0, atol=0.15)


def test_precond_under_jit_and_grad_of_solve():
    A = matrices.spd_matrix(jax.random.PRNGKey(4), 30, 100.0)

    @jax.jit
    def f(d, b):
        P = precond.jacobi(d)
        return matfree.solve(lambda v: A @ v, b, precond=P, rtol=1e-12).value.sum()

    g = jax.grad(f, argnums=(0, 1))(jnp.diag(A), jnp.ones(30))
    assert jnp.allclose(g[0], 0.0)  # the solution does not depend on P
    assert jnp.allclose(g[1], jnp.linalg.solve(A, jnp.ones(30)), rtol=1e-8)


def test_errors():
    with pytest.raises(
        ValueError, match=r"`diagonal` must be a floating vector of shape \(n,\)"
    ):
        precond.Jacobi(jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="real floating dtype"):
        precond.jacobi(jnp.ones(3, int))
    with pytest.raises(ValueError, match=r"`factor` must have shape \(n, k\)"):
        precond.LowRank(jnp.ones(4), 1.0)
    with pytest.raises(ValueError, match="`shift` be a scalar"):
        precond.LowRank(jnp.ones((4, 2)), jnp.ones(2))
    with pytest.raises(TypeError, match="need one floating dtype"):
        precond.LowRank(jnp.ones((4, 2)), jnp.array(1.0, jnp.float32))
    with pytest.raises(ValueError, match=r"a block of rows \(m, 4\)"):
        precond.LowRank(jnp.ones((4, 2)), 1.0)(jnp.ones(3))
    with pytest.raises(ValueError, match=r"a block of rows \(m, 3\)"):
        precond.jacobi(jnp.ones(3)).sqrt(jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="`rank` must be at least 1 and at most 3"):
        precond.pivoted_cholesky(lambda i: jnp.ones(3), jnp.ones(3), rank=4, shift=1.0)
    with pytest.raises(
        ValueError, match=r"`row_fn\(i\)` must return a row of shape \(3,\)"
    ):
        precond.pivoted_cholesky(lambda i: jnp.ones(4), jnp.ones(3), rank=2, shift=1.0)
    with pytest.raises(TypeError, match="`row_fn` must be a callable"):
        precond.pivoted_cholesky(jnp.ones(3), jnp.ones(3), rank=2, shift=1.0)
    with pytest.raises(TypeError, match="positional arguments"):
        precond.pivoted_cholesky(lambda i: jnp.ones(3), jnp.ones(3), 2, 1.0)
    with pytest.raises(ValueError, match="`rank` must be at least 1"):
        precond.nystrom(lambda v: v, jnp.ones(3), key=jax.random.PRNGKey(0), rank=0)
    with pytest.raises(TypeError, match="`key` is required"):
        precond.nystrom(lambda v: v, jnp.ones(3), key=None, rank=1)
    with pytest.raises(ValueError, match=r"`like` must be a flat vector"):
        precond.estimate_diagonal(lambda v: v, jnp.ones((2, 2)), num_probes=2)


def test_only_pivoted_cholesky_has_pivots(kernel_problem):
    _, K, b = kernel_problem
    P = precond.nystrom(lambda v: K @ v, b, key=jax.random.PRNGKey(1), rank=5, shift=0.1)
    assert P.pivots is None
    assert precond.LowRank(jnp.ones((3, 1)), 1.0).pivots is None


# LowRank: P = B B^T + s I. Dense references by jnp.linalg.eigh of P.


def _dense_funm(B, s, f):
    """`f(P)` for the dense `P`; `f(P)` by `jnp.linalg` where it has a closed form.

    `P` has the eigenvalue `s` with multiplicity `n - k`, where differentiating
    `jnp.linalg.eigh` divides by zero: the square roots use the dense
    `matfree._dense.funm_sym` (eigenvalues with divided-difference derivatives).
    """
    P = B @ B.T + s * jnp.eye(B.shape[0], dtype=B.dtype)
    if f == "matvec":
        return P
    if f == "inverse":
        return jnp.linalg.inv(P)
    return funm_sym(jnp.sqrt if f == "sqrt" else lambda w: 1 / jnp.sqrt(w), P)


DENSE = {m: m for m in ("inverse", "inv_sqrt", "sqrt", "matvec")}


def _factor(dtype=jnp.float64, n=12, k=4, key=5):
    B = jax.random.normal(jax.random.PRNGKey(key), (n, k), dtype)
    return B.at[:, -1].set(B[:, 0])  # a repeated column: G has a zero eigenvalue


@pytest.mark.parametrize("method", ["inverse", "inv_sqrt", "sqrt", "matvec"])
def test_lowrank_functions_against_dense_vector_and_block(method):
    B, s = _factor(), jnp.asarray(0.3)
    P = precond.LowRank(B, s)
    F = _dense_funm(B, s, DENSE[method])
    V = jnp.cos(jnp.arange(3 * 12.0)).reshape(3, 12)  # a block of 3 rows
    fn = getattr(P, method)
    assert jnp.allclose(fn(V), V @ F.T, rtol=1e-10, atol=1e-12)
    assert jnp.allclose(fn(V[1]), F @ V[1], rtol=1e-10, atol=1e-12)
    if method == "inverse":
        assert jnp.allclose(P(V), fn(V))


def test_lowrank_logdet_against_dense():
    B, s = _factor(), jnp.asarray(0.3)
    P = precond.LowRank(B, s)
    dense = jnp.linalg.slogdet(B @ B.T + s * jnp.eye(12))[1]
    assert jnp.allclose(P.logdet(), dense, rtol=1e-12)


def test_lowrank_with_zero_factor_is_the_shift():
    P = precond.LowRank(jnp.zeros((5, 3)), 4.0)
    v = jnp.arange(5.0)
    assert jnp.allclose(P.inv_sqrt(v), v / 2) and jnp.allclose(P.sqrt(v), 2 * v)
    assert jnp.allclose(P(v), v / 4) and jnp.allclose(P.logdet(), 5 * jnp.log(4.0))
    g = jax.grad(lambda B: jnp.sum(precond.LowRank(B, 4.0).inv_sqrt(v)))(jnp.zeros((5, 3)))
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("method", ["inverse", "inv_sqrt", "sqrt", "matvec", "logdet"])
def test_lowrank_gradients_against_dense(method):
    B, s = _factor(), jnp.asarray(0.3)
    V = jnp.sin(jnp.arange(2 * 12.0)).reshape(2, 12)
    W = jnp.cos(jnp.arange(2 * 12.0)).reshape(2, 12)

    def loss(B, s):
        P = precond.LowRank(B, s)
        if method == "logdet":
            return P.logdet()
        return jnp.sum(W * getattr(P, method)(V))

    def dense(B, s):
        if method == "logdet":
            return jnp.linalg.slogdet(B @ B.T + s * jnp.eye(12))[1]
        return jnp.sum(W * (V @ _dense_funm(B, s, DENSE[method]).T))

    # The dense reference has distinct eigenvalues only without the repeated column.
    B = B.at[:, -1].add(0.5)
    g = jax.grad(loss, argnums=(0, 1))(B, s)
    gd = jax.grad(dense, argnums=(0, 1))(B, s)
    assert jnp.allclose(g[0], gd[0], rtol=1e-8, atol=1e-10)
    assert jnp.allclose(g[1], gd[1], rtol=1e-8)
    check_grads(loss, (B, s), order=1, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)


def test_lowrank_gradients_at_ties_and_zero_columns_are_finite_and_correct():
    # G has a zero and a repeated eigenvalue; check against finite differences.
    B = _factor().at[:, 1].set(0.0)
    s = jnp.asarray(0.3)

    def loss(B, s):
        P = precond.LowRank(B, s)
        v = jnp.linspace(-1.0, 1.0, 12)
        return jnp.sum(jnp.sin(P.inv_sqrt(v))) + jnp.sum(P.sqrt(v) ** 2) + P.logdet()

    g = jax.grad(loss, argnums=(0, 1))(B, s)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
    check_grads(loss, (B, s), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_lowrank_float32():
    B, s = _factor(jnp.float32), jnp.asarray(0.3, jnp.float32)
    P = precond.LowRank(B, s)
    assert precond.LowRank(B, 0.3).shift.dtype == jnp.float32  # a Python shift is cast
    B64, s64 = B.astype(jnp.float64), s.astype(jnp.float64)
    v = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32)
    for method in ("inverse", "inv_sqrt", "sqrt", "matvec"):
        out = getattr(P, method)(v)
        assert out.dtype == jnp.float32
        ref = _dense_funm(B64, s64, DENSE[method]) @ v.astype(jnp.float64)
        assert jnp.allclose(out, ref, rtol=1e-4, atol=1e-4), method
    assert jnp.allclose(
        P.logdet(), jnp.linalg.slogdet(B64 @ B64.T + s64 * jnp.eye(12))[1], rtol=1e-5
    )
    g = jax.grad(
        lambda B: (
            jnp.sum(precond.LowRank(B, s).inv_sqrt(v) ** 2) + precond.LowRank(B, s).logdet()
        )
    )(B)
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


def test_jacobi_functions_vector_and_block():
    d = jnp.linspace(1.0, 4.0, 6)
    P = precond.jacobi(d)
    V = jnp.arange(12.0).reshape(2, 6)
    assert jnp.allclose(P.sqrt(P.sqrt(V)), P.matvec(V)) and jnp.allclose(P.matvec(V), V * d)
    assert jnp.allclose(P.inv_sqrt(P.inv_sqrt(V)), P(V)) and jnp.allclose(
        P.inverse(V[0]), V[0] / d
    )
    assert jnp.allclose(P.sqrt(P.inv_sqrt(V)), V)


def test_solve_is_differentiable_through_a_lowrank_preconditioner(kernel_problem):
    _, K, b = kernel_problem
    A = K + 1e-2 * jnp.eye(N)
    P0 = precond.pivoted_cholesky(lambda i: K[i], jnp.diag(K), rank=10, shift=1e-2)

    @jax.jit
    def f(factor, shift, b):
        P = precond.LowRank(factor, shift)
        return matfree.solve(lambda v: A @ v, b, precond=P, rtol=1e-12).value.sum()

    g = jax.grad(f, argnums=(0, 1, 2))(P0.factor, P0.shift, b)
    assert jnp.allclose(g[0], 0.0) and jnp.allclose(g[1], 0.0)  # x does not depend on P
    assert jnp.allclose(g[2], jnp.linalg.solve(A, jnp.ones(N)), rtol=1e-8)
