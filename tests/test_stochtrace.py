"""Stochastic trace and diagonal estimators against dense references."""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

import matfree
from matfree import matrices, stochtrace

N = 60
NUM_KEYS = 400


@functools.cache
def low_rank_plus_noise(dtype=jnp.float64):
    """Five eigenvalues 100 (the low-rank part) and a flat tail in [0.1, 1]."""
    ev = jnp.concatenate([jnp.full(5, 100.0), jnp.linspace(0.1, 1.0, N - 5)])
    return matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(1), ev).astype(
        dtype
    )


@functools.cache
def estimates(method, probes, num_probes=30):
    """Estimates over many keys (one compile per method and probe kind)."""
    A = low_rank_plus_noise()

    def one(key):
        return matfree.trace(
            lambda v: A @ v,
            jnp.zeros(N),
            key=key,
            num_probes=num_probes,
            method=method,
            probes=probes,
        )

    keys = jax.random.split(jax.random.PRNGKey(0), NUM_KEYS)
    return jax.jit(jax.vmap(one))(keys)


@functools.partial(jax.jit, static_argnames=("num_probes", "method", "probes", "throw"))
def trace_of(A, key, *, num_probes, method="hutchinson", probes="rademacher", throw=True):
    like = jnp.zeros(A.shape[0], A.dtype)
    return matfree.trace(
        lambda v: A @ v,
        like,
        key=key,
        num_probes=num_probes,
        method=method,
        probes=probes,
        throw=throw,
    )


CASES = [(m, p) for m in stochtrace.METHODS for p in ("rademacher", "gaussian")]


@pytest.mark.parametrize(("method", "probes"), CASES)
def test_trace_unbiased(method, probes):
    est = estimates(method, probes)
    truth = jnp.trace(low_rank_plus_noise())
    spread = jnp.std(est.value) / jnp.sqrt(NUM_KEYS)
    assert jnp.abs(jnp.mean(est.value) - truth) < 4 * spread
    assert est.num_matvecs[0] == 30
    assert jnp.all(jnp.isfinite(est.std_error))


@pytest.mark.parametrize(("method", "probes"), CASES)
def test_std_error_matches_spread(method, probes):
    est = estimates(method, probes)
    ratio = jnp.mean(est.std_error) / jnp.std(est.value)
    assert 0.6 < ratio < 1.4


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_variance_reduction_on_low_rank_plus_noise(probes):
    hutch = jnp.std(estimates("hutchinson", probes).value)
    for method in ("hutch++", "xtrace"):
        assert jnp.std(estimates(method, probes).value) < hutch / 10


def test_hutchinson_variance_formula():
    # Var of the Gaussian Hutchinson mean is 2 |A|_F^2 / m.
    A = low_rank_plus_noise()
    est = estimates("hutchinson", "gaussian")
    expected = jnp.sqrt(2 * jnp.sum(A**2) / 30)
    assert jnp.abs(jnp.std(est.value) / expected - 1) < 0.15


def test_unit_probes_exact():
    A = low_rank_plus_noise()
    est = matfree.trace(
        lambda v: A @ v, jnp.zeros(N), key=None, num_probes=N, probes="unit"
    )
    assert jnp.allclose(est.value, jnp.trace(A), rtol=1e-13)
    assert est.std_error == 0


def test_low_rank_exact_for_sketch_methods():
    # Rank-5 PSD matrix: a sketch of >= 5 vectors captures it exactly.
    U = jax.random.normal(jax.random.PRNGKey(2), (N, 5))
    A = U @ U.T
    for method in ("hutch++", "xtrace"):
        est = trace_of(A, jax.random.PRNGKey(3), num_probes=30, method=method)
        assert jnp.allclose(est.value, jnp.trace(A), rtol=1e-8), method
        assert jnp.isfinite(est.std_error)


def test_pytree_vectors():
    A = low_rank_plus_noise()
    like = {"a": jnp.zeros(20), "b": jnp.zeros((4, 10))}
    flat = jax.flatten_util.ravel_pytree(like)[1]

    def mv(v):
        return flat(A @ jax.flatten_util.ravel_pytree(v)[0])

    est = matfree.trace(mv, like, key=None, num_probes=N, probes="unit")
    assert jnp.allclose(est.value, jnp.trace(A))
    d = stochtrace.diagonal(mv, like, key=None, num_probes=N, probes="unit")
    assert jnp.allclose(jax.flatten_util.ravel_pytree(d.value)[0], jnp.diag(A))


@pytest.mark.parametrize("method", stochtrace.METHODS)
def test_gradient_wrt_closed_over_matrix(method):
    B = jax.random.normal(jax.random.PRNGKey(4), (N, N))

    @jax.jit
    def f(B):
        return trace_of(B @ B.T, jax.random.PRNGKey(5), num_probes=30, method=method).value

    check_grads(f, (B,), order=1, modes=["rev"])


def test_gradient_of_unbiased_estimate_is_unbiased():
    # d/ds tr(s A) = tr(A): the mean gradient over keys matches.
    A = low_rank_plus_noise()

    def f(s, key):
        return matfree.trace(
            lambda v: s * (A @ v), jnp.zeros(N), key=key, num_probes=6
        ).value

    g = jax.jit(jax.vmap(jax.grad(f), in_axes=(None, 0)))(
        2.0, jax.random.split(jax.random.PRNGKey(6), NUM_KEYS)
    )
    assert jnp.abs(jnp.mean(g) - jnp.trace(A)) < 4 * jnp.std(g) / jnp.sqrt(NUM_KEYS)


def test_float32():
    A = low_rank_plus_noise(jnp.float32)
    for method in stochtrace.METHODS:
        est = trace_of(A, jax.random.PRNGKey(7), num_probes=30, method=method)
        assert est.value.dtype == jnp.float32
        assert jnp.abs(est.value - jnp.trace(A)) < 5 * est.std_error + 1e-3


def test_diagonal_unbiased_and_exact_cases():
    A = low_rank_plus_noise()
    keys = jax.random.split(jax.random.PRNGKey(8), NUM_KEYS)

    def one(key):
        return stochtrace.diagonal(lambda v: A @ v, jnp.zeros(N), key=key, num_probes=10)

    d = jax.jit(jax.vmap(one))(keys)
    spread = jnp.std(d.value, axis=0) / jnp.sqrt(NUM_KEYS)
    assert jnp.all(jnp.abs(jnp.mean(d.value, axis=0) - jnp.diag(A)) < 4.5 * spread)
    ratio = jnp.mean(d.std_error, axis=0) / jnp.std(d.value, axis=0)
    assert jnp.all((ratio > 0.6) & (ratio < 1.4))
    # Rademacher probes are exact on diagonal matrices.
    D = jnp.diag(jnp.arange(1.0, 9.0))
    d = stochtrace.diagonal(lambda v: D @ v, jnp.zeros(8), key=keys[0], num_probes=3)
    assert jnp.allclose(d.value, jnp.arange(1.0, 9.0))
    d = stochtrace.diagonal(
        lambda v: A @ v, jnp.zeros(N), key=keys[0], num_probes=10, probes="gaussian"
    )
    assert d.value.shape == (N,)


def test_single_probe_has_infinite_std_error():
    A = low_rank_plus_noise()
    est = matfree.trace(
        lambda v: A @ v, jnp.zeros(N), key=jax.random.PRNGKey(0), num_probes=1
    )
    assert jnp.isinf(est.std_error)
    assert jnp.isfinite(est.value)


def test_non_finite_is_flagged_and_raises():
    A = low_rank_plus_noise().at[2, 2].set(jnp.inf)
    for method in stochtrace.METHODS:
        est = trace_of(A, jax.random.PRNGKey(0), num_probes=30, method=method, throw=False)
        assert est.status == matfree.status.Status.NONFINITE
        assert jnp.isnan(est.value)  # not computed: NaN and a non-zero status
    assert trace_of(low_rank_plus_noise(), jax.random.PRNGKey(0), num_probes=30).status == 0
    with pytest.raises(Exception, match="non-finite values"):
        matfree.trace(
            lambda v: A @ v, jnp.zeros(N), key=jax.random.PRNGKey(0), num_probes=3
        )
    d = stochtrace.diagonal(
        lambda v: A @ v, jnp.zeros(N), key=jax.random.PRNGKey(0), num_probes=3, throw=False
    )
    assert d.status == matfree.status.Status.NONFINITE
    assert jnp.all(jnp.isnan(d.value))
    with pytest.raises(Exception, match="non-finite values"):
        stochtrace.diagonal(
            lambda v: A @ v, jnp.zeros(N), key=jax.random.PRNGKey(0), num_probes=3
        )


@pytest.mark.parametrize("method", stochtrace.METHODS)
def test_throw_under_jit_holds_whichever_field_is_read(method):
    # The check is attached to the whole result: reading only `std_error`
    # (or `value`) under `jit` still raises.
    A = low_rank_plus_noise().at[2, 2].set(jnp.nan)
    key = jax.random.PRNGKey(0)

    def trace_field(A, field):
        return getattr(trace_of(A, key, num_probes=30, method=method), field)

    for field in ("std_error", "value"):
        with pytest.raises(Exception, match="non-finite values"):
            jax.block_until_ready(jax.jit(trace_field, static_argnums=1)(A, field))

    @jax.jit
    def diagonal_se(A):
        return stochtrace.diagonal(lambda v: A @ v, jnp.zeros(N), key=key, num_probes=3)

    with pytest.raises(Exception, match="non-finite values"):
        jax.block_until_ready(diagonal_se(A).std_error)


def test_sample_probes():
    key = jax.random.PRNGKey(0)
    Z = stochtrace.sample_probes(key, 3, 4, probes="gaussian", dtype=jnp.float32)
    assert Z.shape == (3, 4) and Z.dtype == jnp.float32
    assert jnp.array_equal(stochtrace.sample_probes(None, 4, 4, probes="unit"), jnp.eye(4))
    with pytest.raises(ValueError, match="`probes` must be one of"):
        stochtrace.sample_probes(key, 3, 4, probes="normal")
    with pytest.raises(TypeError, match="`key` is required"):
        stochtrace.sample_probes(None, 3, 4)


def _mv(v):
    return 2.0 * v


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_probes": 0}, ValueError, "`num_probes` must be at least 1"),
        ({"num_probes": 2.5}, TypeError, "`num_probes` must be a static Python int"),
        (
            {"num_probes": 2, "method": "hutch++"},
            ValueError,
            "`num_probes` must be at least 3",
        ),
        (
            {"num_probes": 1, "method": "xtrace"},
            ValueError,
            "`num_probes` must be at least 2",
        ),
        ({"num_probes": 33, "method": "hutch++"}, ValueError, r"`num_probes` // 3 must be"),
        ({"num_probes": 22, "method": "xtrace"}, ValueError, r"`num_probes` // 2 must be"),
        ({"num_probes": 3, "method": "hutch"}, ValueError, "`method` must be one of"),
        ({"num_probes": 3, "probes": "normal"}, ValueError, "`probes` must be one of"),
        ({"num_probes": 3, "probes": "unit"}, ValueError, "needs `num_probes` == n"),
        ({"num_probes": 3, "key": None}, TypeError, "`key` is required"),
        (
            {"num_probes": 6, "key": None, "method": "xtrace"},
            TypeError,
            "`key` is required",
        ),
        (
            {"num_probes": 10, "probes": "unit", "method": "xtrace"},
            ValueError,
            '`probes="unit"` is exact',
        ),
    ],
)
def test_errors(kwargs, error, match):
    kwargs = {"key": jax.random.PRNGKey(0), **kwargs}
    with pytest.raises(error, match=match):
        matfree.trace(_mv, jnp.zeros(10), **kwargs)


def test_like_must_match_operator():
    A = jnp.eye(5)
    with pytest.raises(ValueError, match="`matvec` could not be applied to `like`"):
        matfree.trace(
            lambda v: A @ v, jnp.zeros(4), key=jax.random.PRNGKey(0), num_probes=2
        )
    with pytest.raises(TypeError, match="`like` must have a floating or complex dtype"):
        matfree.trace(_mv, jnp.zeros(4, int), key=jax.random.PRNGKey(0), num_probes=2)
    with pytest.raises(TypeError, match="`matvec` must be a callable"):
        matfree.trace(A, jnp.zeros(5), key=jax.random.PRNGKey(0), num_probes=2)
    with pytest.raises(ValueError, match="`num_probes` must be at least 1"):
        stochtrace.diagonal(_mv, jnp.zeros(5), key=jax.random.PRNGKey(0), num_probes=0)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32, jnp.complex128])
def test_sketch_qr_is_a_thin_qr(dtype):
    # The sketch's QR uses inner products only (it stays sharded on a mesh);
    # it must be a QR to rounding also for ill-conditioned and rank-deficient
    # sketches: columns 1..3 span 2 dimensions, column 4 is zero, and the
    # singular values of the rest spread over 1e-6..1.
    from matfree._estimators import qr_rows

    k1, k2 = jax.random.split(jax.random.PRNGKey(4))
    Y = jax.random.normal(k1, (7, 50))
    if jnp.issubdtype(dtype, jnp.complexfloating):
        Y = Y + 1j * jax.random.normal(k2, (7, 50))
    Y = Y * jnp.logspace(0, -6, 7)[:, None]
    Y = Y.at[2].set(Y[0] - 3 * Y[1]).at[4].set(0).astype(dtype)
    Qt, R = jax.jit(qr_rows)(Y)
    eps = jnp.finfo(dtype).eps
    assert Qt.dtype == R.dtype == dtype
    assert jnp.allclose(jnp.triu(R), R)
    assert jnp.linalg.norm(R.T @ Qt - Y) <= 10 * eps * jnp.linalg.norm(Y)
    gram = jnp.conj(Qt) @ Qt.T
    ones = jnp.ones(7).at[4].set(0)  # the zero column gets a zero row
    assert jnp.linalg.norm(gram - jnp.diag(ones)) <= 20 * eps
    # Full rank: the same factorisation as LAPACK's up to the signs of the rows.
    full = jnp.array([0, 1, 3, 5, 6])
    _, R = jax.jit(qr_rows)(Y[full])
    ref = jnp.linalg.qr(Y[full].T)[1]
    assert jnp.allclose(jnp.abs(R), jnp.abs(ref), rtol=100 * eps, atol=100 * eps)
