"""Extreme eigenpairs and spectral densities against `jnp.linalg.eigh`."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matfree import eig, matrices
from matfree.status import Status

N = 80
# Well-separated extremes, a cluster in the middle.
EIGVALS = jnp.concatenate(
    [jnp.array([0.01, 0.1]), jnp.linspace(1.0, 2.0, N - 4), jnp.array([5.0, 8.0])]
)


@functools.cache
def matrix(dtype=jnp.float64):
    A = matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(0), EIGVALS)
    return A.astype(dtype)


V0 = jax.random.normal(jax.random.PRNGKey(1), (N,))


@functools.partial(jax.jit, static_argnames=("k", "depth", "which", "throw"))
def extreme_of(A, v0, *, k, depth, which="largest", tol=None, throw=True):
    return eig.extreme(
        lambda v: A @ v,
        v0,
        num_eigenpairs=k,
        depth=depth,
        which=which,
        tol=tol,
        throw=throw,
    )


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_extreme_pairs_match_eigh(which):
    A = matrix()
    res = extreme_of(A, V0, k=2, depth=40, which=which)
    w, V = jnp.linalg.eigh(A)
    if which == "largest":
        w, V = w[::-1], V[:, ::-1]
    assert jnp.allclose(res.eigenvalues, w[:2], rtol=1e-10)
    overlap = jnp.abs(jnp.sum(res.eigenvectors * V[:, :2].T, axis=1))
    assert jnp.allclose(overlap, 1.0, atol=1e-8)
    actual = jnp.linalg.norm(
        res.eigenvectors @ A - res.eigenvalues[:, None] * res.eigenvectors, axis=1
    )
    assert jnp.allclose(res.residual_norms, actual, rtol=1e-3, atol=1e-12)
    assert jnp.all(res.converged)
    assert res.status == 0
    assert res.num_matvecs == 40


def test_unconverged_pairs_are_flagged():
    A = matrix()
    res = extreme_of(A, V0, k=4, depth=12, tol=1e-8, throw=False)
    assert int(res.status) == Status.NOT_CONVERGED
    w = jnp.linalg.eigvalsh(A)[::-1]
    # The two outliers converge, the cluster edge does not at this depth.
    assert bool(res.converged[0]) and not bool(res.converged[3])
    assert jnp.abs(res.eigenvalues[3] - w[3]) > 1e-8
    # Ritz values lie inside the spectrum (interlacing).
    assert jnp.all(res.eigenvalues <= w[:4] + 1e-12)
    with pytest.raises(Exception, match="did not converge"):
        eig.extreme(lambda v: A @ v, V0, num_eigenpairs=4, depth=12, tol=1e-8)


def test_gradient_of_largest_eigenvalue():
    A = matrix()
    B = jax.random.normal(jax.random.PRNGKey(2), (N, N))
    B = (B + B.T) / 2

    def f(t):
        M = A + t * B
        return extreme_of(M, V0, k=1, depth=40).eigenvalues[0]

    def ref(t):
        return jnp.linalg.eigvalsh(A + t * B)[-1]

    g = jax.jit(jax.grad(f))(0.01)
    assert jnp.allclose(g, jax.grad(ref)(0.01), rtol=1e-8)


def test_vmap_over_start_vectors_and_pytrees():
    A = matrix()
    V0s = jax.random.normal(jax.random.PRNGKey(3), (3, N))
    res = jax.vmap(lambda v: extreme_of(A, v, k=1, depth=40))(V0s)
    assert jnp.allclose(res.eigenvalues[:, 0], 8.0, rtol=1e-10)
    like = {"a": V0[:50], "b": V0[50:]}

    def mv(v):
        x = jnp.concatenate([v["a"], v["b"]])
        y = A @ x
        return {"a": y[:50], "b": y[50:]}

    res = eig.extreme(mv, like, num_eigenpairs=1, depth=40)
    assert res.eigenvectors["a"].shape == (1, 50)
    assert jnp.allclose(res.eigenvalues[0], 8.0)


def test_float32():
    A = matrix(jnp.float32)
    res = extreme_of(A, V0.astype(jnp.float32), k=2, depth=40)
    assert res.eigenvalues.dtype == jnp.float32
    assert jnp.allclose(res.eigenvalues, jnp.array([8.0, 5.0]), rtol=1e-5)
    assert jnp.all(res.converged)  # default tol: sqrt(eps) of float32


@functools.partial(jax.jit, static_argnames=("depth", "num_probes", "grid"))
def density_of(A, key, *, depth, num_probes, grid=200, smoothing=None):
    like = jnp.zeros(A.shape[0], A.dtype)
    return eig.spectral_density(
        lambda v: A @ v,
        like,
        key=key,
        depth=depth,
        num_probes=num_probes,
        grid=grid,
        smoothing=smoothing,
    )


def smoothed_density(eigvals, grid, sigma):
    u = (grid[:, None] - eigvals[None, :]) / sigma
    return jnp.mean(jnp.exp(-0.5 * u**2), axis=1) / (sigma * jnp.sqrt(2 * jnp.pi))


def test_spectral_density_matches_smoothed_eigenvalues():
    eigvals = jnp.concatenate([jnp.linspace(0.0, 1.0, 100), jnp.linspace(3.0, 3.5, 50)])
    A = matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(4), eigvals)
    sd = density_of(A, jax.random.PRNGKey(5), depth=40, num_probes=30, smoothing=0.1)
    ref = smoothed_density(eigvals, sd.grid, 0.1)
    dx = sd.grid[1] - sd.grid[0]
    assert jnp.abs(jnp.sum(sd.density) * dx - 1.0) < 1e-3
    assert jnp.sum(jnp.abs(sd.density - ref)) * dx < 0.1  # L1 distance
    # The first moment is the Hutchinson estimate of tr(A) / n.
    mean = jnp.sum(sd.weights * sd.nodes) / 30
    assert jnp.abs(mean - jnp.mean(eigvals)) < 0.05
    assert sd.nodes.shape == (30, 40) and sd.weights.shape == (30, 40)
    assert sd.grid[0] < 0.0 and sd.grid[-1] > 3.5


def test_spectral_density_on_given_grid_with_default_smoothing():
    A = matrix()
    grid = jnp.linspace(-1.0, 9.0, 50)
    sd = eig.spectral_density(
        lambda v: A @ v,
        jnp.zeros(N),
        key=jax.random.PRNGKey(6),
        depth=10,
        num_probes=4,
        grid=grid,
    )
    assert jnp.array_equal(sd.grid, grid)
    assert jnp.allclose(sd.smoothing, 0.01 * (sd.nodes.max() - sd.nodes.min()))
    assert jnp.all(sd.density >= 0)


def _mv(v):
    return 2.0 * v


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_eigenpairs": 0}, ValueError, "`num_eigenpairs` must be at least 1"),
        (
            {"num_eigenpairs": 6},
            ValueError,
            "`num_eigenpairs` must be at least 1 and at most 5",
        ),
        ({"depth": 11}, ValueError, r"`depth` must satisfy 1 <= depth <= n = 10"),
        ({"which": "middle"}, ValueError, "`which` must be one of"),
        ({"gradient": "implicit"}, ValueError, "`gradient` must be one of"),
    ],
)
def test_extreme_errors(kwargs, error, match):
    kwargs = {"num_eigenpairs": 2, "depth": 5, **kwargs}
    with pytest.raises(error, match=match):
        eig.extreme(_mv, jnp.ones(10), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_probes": 0}, ValueError, "`num_probes` must be at least 1"),
        ({"depth": 0}, ValueError, r"`depth` must satisfy"),
        ({"probes": "unit"}, ValueError, "`probes` must be one of"),
        ({"key": None}, TypeError, "`key` is required"),
        ({"grid": jnp.zeros((2, 2))}, ValueError, "`grid` must be an int or a 1-D array"),
        ({"grid": 1}, ValueError, "`grid` must be at least 2"),
    ],
)
def test_density_errors(kwargs, error, match):
    kwargs = {"key": jax.random.PRNGKey(0), "depth": 3, "num_probes": 2, **kwargs}
    with pytest.raises(error, match=match):
        eig.spectral_density(_mv, jnp.ones(10), **kwargs)


def test_like_must_match_operator():
    A = jnp.eye(5)
    with pytest.raises(ValueError, match="`matvec` could not be applied to `v0`"):
        eig.extreme(lambda v: A @ v, jnp.ones(4), num_eigenpairs=1, depth=2)
    with pytest.raises(ValueError, match="`matvec` could not be applied to `like`"):
        eig.spectral_density(
            lambda v: A @ v, jnp.ones(4), key=jax.random.PRNGKey(0), depth=2, num_probes=1
        )


def test_zero_start_vector_is_nan_and_zero_vector():
    A = matrix()
    res = eig.extreme(lambda v: A @ v, jnp.zeros(N), num_eigenpairs=2, depth=5, throw=False)
    assert int(res.status) == Status.ZERO_VECTOR
    assert bool(jnp.all(jnp.isnan(res.eigenvalues)))
    assert bool(jnp.all(jnp.isnan(res.eigenvectors)))
    assert not bool(jnp.any(res.converged))

    @jax.jit
    def vectors(v):
        return eig.extreme(lambda x: A @ x, v, num_eigenpairs=2, depth=5).eigenvectors

    with pytest.raises(Exception, match="start vector is zero"):
        jax.block_until_ready(vectors(jnp.zeros(N)))


def test_spectral_density_reports_nonfinite_values():
    def run(throw):
        return eig.spectral_density(
            lambda v: v * jnp.nan,
            jnp.zeros(10),
            key=jax.random.PRNGKey(0),
            depth=3,
            num_probes=2,
            grid=jnp.linspace(0.0, 1.0, 5),
            smoothing=0.1,
            throw=throw,
        )

    sd = run(False)
    assert int(sd.status) == Status.NONFINITE
    assert bool(jnp.all(jnp.isnan(sd.density)))
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(jax.jit(lambda: run(True).density)())


def test_extreme_gradient_autodiff_agrees_with_adjoint():
    A = matrix()

    def f(t, gradient):
        M = A + t * jnp.eye(N)
        mv = lambda v: M @ v  # noqa: E731
        res = eig.extreme(mv, V0, num_eigenpairs=1, depth=40, gradient=gradient)
        return res.eigenvalues[0]

    assert jnp.allclose(jax.grad(f)(0.1, "adjoint"), 1.0, rtol=1e-8)
    assert jnp.allclose(jax.grad(f)(0.1, "autodiff"), 1.0, rtol=1e-8)


def _laplacian_2d(m):
    L1 = 2 * jnp.eye(m) - jnp.eye(m, k=1) - jnp.eye(m, k=-1)
    return jnp.kron(L1, jnp.eye(m)) + jnp.kron(jnp.eye(m), L1)


def test_single_start_vector_misses_a_double_eigenvalue_and_says_so():
    L = _laplacian_2d(12)
    truth = jnp.linalg.eigvalsh(L)[:4]  # [l1, l2, l2, l3]: l2 is double
    v0 = jax.random.normal(jax.random.PRNGKey(0), (144,))
    res = eig.extreme(lambda v: L @ v, v0, num_eigenpairs=3, depth=60, which="smallest")
    assert res.max_multiplicity == 1
    np.testing.assert_allclose(res.eigenvalues, truth[jnp.array([0, 1, 3])], rtol=1e-8)


@pytest.mark.parametrize("which", ["smallest", "largest"])
def test_block_start_resolves_multiplicity(which):
    L = _laplacian_2d(12)
    lam = jnp.linalg.eigvalsh(L)
    truth = lam[:4] if which == "smallest" else lam[::-1][:4]
    V0 = jax.random.normal(jax.random.PRNGKey(1), (2, 144))
    res = eig.extreme(
        lambda v: L @ v, V0, num_eigenpairs=4, depth=60, which=which, block=True
    )
    np.testing.assert_allclose(res.eigenvalues, truth, rtol=1e-8)
    assert res.max_multiplicity == 2
    assert res.num_matvecs == 120
    assert bool(jnp.all(res.converged))
    Y = res.eigenvectors
    np.testing.assert_allclose(Y @ Y.T, jnp.eye(4), atol=1e-8)
    np.testing.assert_allclose(
        jnp.linalg.norm(Y @ L - res.eigenvalues[:, None] * Y, axis=1),
        res.residual_norms,
        atol=1e-10,
    )


def test_block_start_exact_when_the_space_is_exhausted_and_differentiable():
    d = jnp.arange(1.0, 7.0)
    V0 = jax.random.normal(jax.random.PRNGKey(2), (2, 6))

    def top(s):
        res = eig.extreme(lambda v: s * d * v, V0, num_eigenpairs=3, depth=3, block=True)
        return res.eigenvalues

    np.testing.assert_allclose(top(1.0), [6.0, 5.0, 4.0], rtol=1e-12)
    np.testing.assert_allclose(jax.grad(lambda s: jnp.sum(top(s)))(2.0), 15.0, rtol=1e-10)
    np.testing.assert_allclose(jax.jit(top)(1.0), [6.0, 5.0, 4.0], rtol=1e-12)


def test_block_start_failures_and_errors():
    d = jnp.arange(1.0, 7.0)
    res = eig.extreme(
        lambda v: d * v,
        jnp.zeros((2, 6)),
        num_eigenpairs=2,
        depth=2,
        block=True,
        throw=False,
    )
    assert int(res.status) == int(Status.ZERO_VECTOR)
    assert bool(jnp.all(jnp.isnan(res.eigenvalues)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="start vector is zero"):
        eig.extreme(
            lambda v: d * v, jnp.zeros((2, 6)), num_eigenpairs=2, depth=2, block=True
        )
    # Two equal start vectors span one direction: too small a space, not converged.
    res = eig.extreme(
        lambda v: d * v,
        jnp.ones((2, 6)),
        num_eigenpairs=3,
        depth=3,
        block=True,
        throw=False,
    )
    assert int(res.status) == int(Status.NOT_CONVERGED)
    nan_start = jnp.ones((2, 6)).at[0, 0].set(jnp.nan)
    res = eig.extreme(
        lambda v: d * v, nan_start, num_eigenpairs=1, depth=2, block=True, throw=False
    )
    assert int(res.status) == int(Status.NONFINITE)
    with pytest.raises(ValueError, match="leading axis of start vectors"):
        eig.extreme(lambda v: d * v, jnp.ones(()), num_eigenpairs=1, depth=1, block=True)
    with pytest.raises(ValueError, match="`depth`"):
        eig.extreme(
            lambda v: d * v, jnp.ones((2, 6)), num_eigenpairs=1, depth=4, block=True
        )
    with pytest.raises(ValueError, match="`num_eigenpairs`"):
        eig.extreme(
            lambda v: d * v, jnp.ones((2, 6)), num_eigenpairs=5, depth=2, block=True
        )
