"""Log-determinants and tr f(A) by stochastic Lanczos quadrature vs dense references."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

import matfree
from matfree import matrices, operators

N = 40


@functools.cache
def spd(cond=100.0, dtype=jnp.float64):
    return matrices.spd_matrix(jax.random.PRNGKey(0), N, cond=cond, dtype=dtype)


def dense_logdet(A):
    sign, value = jnp.linalg.slogdet(A)
    assert sign > 0
    return value


@pytest.fixture(scope="module")
def points():
    return jax.random.uniform(jax.random.PRNGKey(1), (N, 2), minval=-2.0, maxval=2.0)


@functools.partial(
    jax.jit,
    static_argnames=(
        "depth",
        "num_probes",
        "method",
        "probes",
        "chunk_size",
        "gradient",
        "throw",
    ),
)
def logdet_of(A, key, scale=1.0, precond=None, **kwargs):
    """`logdet(scale * A)` through a dense matvec; one compile per configuration."""
    like = jnp.zeros(A.shape[0], A.dtype)
    return matfree.logdet(
        lambda v: scale * (A @ v), like, key=key, precond=precond, **kwargs
    )


UNIT = {"depth": N, "num_probes": N, "probes": "unit"}
RANDOM = {"depth": 10, "num_probes": 10}
KEY = jax.random.PRNGKey(0)


def test_unit_probes_full_depth_exact():
    A = spd()
    est = logdet_of(A, KEY, **UNIT)
    assert jnp.allclose(est.value, dense_logdet(A), rtol=1e-12, atol=1e-12)
    assert est.std_error == 0
    assert est.status == 0
    assert est.num_matvecs == N * N
    eigs = jnp.linalg.eigvalsh(A)
    assert jnp.allclose(est.ritz_min, eigs[0]) and jnp.allclose(est.ritz_max, eigs[-1])


def test_unit_probes_exact_with_early_breakdown():
    # Diagonal matrix: every unit vector spans an invariant subspace at step 1.
    d = jnp.linspace(0.5, 3.0, N)
    est = logdet_of(jnp.diag(d), KEY, **UNIT)
    assert jnp.allclose(est.value, jnp.sum(jnp.log(d)), rtol=1e-12)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_random_probes_statistically_consistent(probes):
    A = spd(cond=10.0)

    def one(key):
        return matfree.logdet(
            lambda v: A @ v, jnp.zeros(N), key=key, depth=15, num_probes=20, probes=probes
        )

    keys = jax.random.split(jax.random.PRNGKey(2), 50)
    est = jax.jit(jax.vmap(one))(keys)
    z = (est.value - dense_logdet(A)) / est.std_error
    assert jnp.all(jnp.abs(z) < 4.5)
    assert jnp.abs(jnp.mean(z)) < 4 / jnp.sqrt(50)  # unbiased up to the quadrature error
    assert jnp.all(est.status == 0)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def value_grad_samples(A, s, chunk_size):
    def f(s):
        est = logdet_of(A, KEY, s, depth=12, num_probes=12, chunk_size=chunk_size)
        return est.value, est.samples

    return jax.value_and_grad(f, has_aux=True)(s)


def test_chunks_match_one_block():
    A = spd()
    (full, samples_full), grad_full = value_grad_samples(A, 1.5, None)
    # 5 does not divide 12: the last chunk is padded with zero probes.
    (batched, samples_batched), grad_batched = value_grad_samples(A, 1.5, 5)
    assert jnp.allclose(full, batched, rtol=1e-12)
    assert jnp.allclose(samples_full, samples_batched, rtol=1e-12)
    assert jnp.allclose(grad_full, grad_batched, rtol=1e-12)
    # And the unbatched estimate is right on average: d/ds log det(sA) = n / s.
    assert jnp.abs(grad_full - N / 1.5) < 1e-8


def kernel_logdet(params, x, **kwargs):
    mv = operators.kernel_matvec(
        x,
        lengthscale=params["lengthscale"],
        variance=params["variance"],
        noise=params["noise"],
        rows_per_block=16,
    )
    return matfree.logdet(mv, jnp.zeros(x.shape[0]), **kwargs).value


def dense_kernel_logdet(params, x):
    K = operators.kernel_matrix(
        x, x, lengthscale=params["lengthscale"], variance=params["variance"]
    )
    return dense_logdet(K + params["noise"] * jnp.eye(x.shape[0]))


PARAMS = {"lengthscale": 0.8, "variance": 1.3, "noise": 0.2}


def test_kernel_gradient_exact_with_unit_probes(points):
    kw = {"key": None, "depth": N, "num_probes": N, "probes": "unit", "chunk_size": 20}
    value, grad = jax.jit(jax.value_and_grad(lambda p: kernel_logdet(p, points, **kw)))(
        PARAMS
    )
    ref_value, ref_grad = jax.value_and_grad(dense_kernel_logdet)(PARAMS, points)
    assert jnp.allclose(value, ref_value, rtol=1e-10)
    for name in PARAMS:
        assert jnp.allclose(grad[name], ref_grad[name], rtol=1e-8), name


def test_kernel_gradient_random_probes_consistent(points):
    # The gradient of the estimator is an unbiased estimate of the gradient.
    kw = {"depth": 25, "num_probes": 10}
    grad_fn = jax.jit(
        jax.vmap(
            jax.grad(lambda p, k: kernel_logdet(p, points, key=k, **kw)), in_axes=(None, 0)
        )
    )
    grads = grad_fn(PARAMS, jax.random.split(jax.random.PRNGKey(4), 40))
    ref = jax.grad(dense_kernel_logdet)(PARAMS, points)
    for name in PARAMS:
        g = grads[name]
        assert jnp.abs(jnp.mean(g) - ref[name]) < 4.5 * jnp.std(g) / jnp.sqrt(40), name


def test_gradient_matches_finite_differences_below_full_depth(points):
    # Fixed probes, depth < n: the adjoint gradient of the quadrature itself.
    @jax.jit
    def f(lengthscale, noise):
        p = {"lengthscale": lengthscale, "variance": 1.0, "noise": noise}
        return kernel_logdet(p, points, key=jax.random.PRNGKey(5), depth=8, num_probes=3)

    check_grads(f, (0.8, 0.3), order=1, modes=["rev"])


def test_trace_funm_polynomial_and_exp():
    A = spd(cond=10.0) / 10.0

    @jax.jit
    def estimates(A):
        mv = lambda v: A @ v  # noqa: E731
        sq = matfree.trace_funm(
            lambda x: x**2, mv, jnp.zeros(N), key=None, depth=2, num_probes=N, probes="unit"
        )
        ex = matfree.trace_funm(
            jnp.exp, mv, jnp.zeros(N), key=jax.random.PRNGKey(6), depth=8, num_probes=30
        )
        return sq, ex

    # Gauss quadrature is exact for polynomials of degree < 2 depth.
    sq, ex = estimates(A)
    assert jnp.allclose(sq.value, jnp.sum(A * A), rtol=1e-12)
    assert sq.status == 0
    ref = jnp.trace(jax.scipy.linalg.expm(A))
    assert jnp.abs(ex.value - ref) < 4 * ex.std_error


class Jacobi(eqx.Module):
    """An exact diagonal (Jacobi) preconditioner for the tests."""

    diag: jax.Array

    def inv_sqrt(self, v):
        return v / jnp.sqrt(self.diag)

    def logdet(self):
        return jnp.sum(jnp.log(self.diag))


@functools.cache
def badly_scaled():
    s = jnp.logspace(0.0, 3.0, N)
    return s[:, None] * spd(cond=5.0) * s[None, :]


def test_preconditioned_more_accurate():
    A = badly_scaled()
    P = Jacobi(jnp.diag(A))
    plain = logdet_of(A, jax.random.PRNGKey(7), **RANDOM)
    pre = logdet_of(A, jax.random.PRNGKey(7), precond=P, **RANDOM)
    ref = dense_logdet(A)
    # The Jacobi-scaled spectrum is well conditioned: depth 10 suffices, while
    # the plain quadrature (condition number ~2e3) is still biased.
    assert jnp.abs(pre.value - ref) < 4 * pre.std_error
    assert jnp.abs(pre.value - ref) < jnp.abs(plain.value - ref) / 5
    assert pre.ritz_max / pre.ritz_min < 10


def test_preconditioned_exact_value_and_gradient():
    A = badly_scaled()

    @jax.jit
    def f(s):
        P = Jacobi(s * jnp.diag(A))  # the gradient flows through P as well
        return logdet_of(A, KEY, s, precond=P, **UNIT).value

    value, grad = jax.value_and_grad(f)(2.0)
    assert jnp.allclose(value, dense_logdet(2.0 * A), rtol=1e-10)
    assert jnp.allclose(grad, N / 2.0, rtol=1e-8)


def test_with_matfree_precond_jacobi():
    from matfree import precond

    A = badly_scaled()
    est = logdet_of(A, KEY, precond=precond.jacobi(jnp.diag(A)), **UNIT)
    assert jnp.allclose(est.value, dense_logdet(A), rtol=1e-10)


def test_not_spd_is_flagged_and_raises():
    A = spd() - 5.0 * jnp.eye(N)
    est = logdet_of(A, KEY, throw=False, **RANDOM)
    assert est.status == matfree.status.Status.NOT_POSITIVE_DEFINITE
    assert est.ritz_min <= 0
    assert jnp.isnan(est.value) and jnp.isnan(est.std_error)
    with pytest.raises(Exception, match="not positive definite"):
        logdet_of(A, KEY, **RANDOM).value.block_until_ready()


def test_non_finite_is_flagged_and_raises():
    A = spd().at[3, 3].set(jnp.nan)
    est = logdet_of(A, KEY, throw=False, **RANDOM)
    assert est.status == matfree.status.Status.NONFINITE
    assert jnp.isnan(est.value)
    with pytest.raises(Exception, match="non-finite values"):
        logdet_of(A, KEY, **RANDOM).value.block_until_ready()


@pytest.mark.parametrize("method", ["hutchinson", "xtrace"])
def test_throw_under_jit_holds_whichever_field_is_read(method):
    # The check is attached to the whole result: reading only `std_error` or
    # `samples` under `jit` still raises.
    A = spd() - 5.0 * jnp.eye(N)
    for field in ("std_error", "samples", "ritz_max"):
        with pytest.raises(Exception, match="not positive definite"):
            out = getattr(logdet_of(A, KEY, method=method, **RANDOM), field)
            jax.block_until_ready(out)


def test_gradient_autodiff_matches_adjoint_and_supports_jvp():
    A = spd(cond=10.0)

    def f(s, gradient):
        return logdet_of(A, KEY, s, gradient=gradient, **RANDOM).value

    g_adjoint = jax.grad(f)(1.3, "adjoint")
    g_autodiff = jax.grad(f)(1.3, "autodiff")
    assert jnp.allclose(g_adjoint, g_autodiff, rtol=1e-8)
    _, tangent = jax.jvp(lambda s: f(s, "autodiff"), (1.3,), (1.0,))
    assert jnp.allclose(tangent, g_autodiff, rtol=1e-8)

    def g(s):  # not under `jit`: the error is raised while tracing the jvp
        like = jnp.zeros(N)
        return matfree.logdet(lambda v: s * (A @ v), like, key=KEY, **RANDOM).value

    with pytest.raises(TypeError, match='gradient="autodiff"'):
        jax.jvp(g, (1.3,), (1.0,))


def test_float32():
    A = spd(cond=10.0, dtype=jnp.float32)
    ref = dense_logdet(A.astype(jnp.float64))

    @jax.jit
    def f(s):
        est = logdet_of(A, KEY, s, **UNIT)
        return est.value, est

    (value, est), grad = jax.value_and_grad(f, has_aux=True)(jnp.float32(2.0))
    assert value.dtype == jnp.float32
    assert jnp.abs(value - (ref + N * jnp.log(2.0))) < 1e-5 * jnp.abs(ref)
    assert jnp.abs(grad - N / 2.0) < 1e-4 * N
    est = logdet_of(A, jax.random.PRNGKey(9), **RANDOM)
    assert est.value.dtype == jnp.float32
    assert jnp.abs(est.value - ref) < 4 * est.std_error


def test_pytree_vectors():
    A = spd()
    like = (jnp.zeros(30), jnp.zeros(10))
    flat = jax.flatten_util.ravel_pytree(like)[1]
    mv = lambda v: flat(A @ jax.flatten_util.ravel_pytree(v)[0])  # noqa: E731
    est = jax.jit(lambda: matfree.logdet(mv, like, key=None, **UNIT))()
    assert jnp.allclose(est.value, dense_logdet(A))


def _mv(v):
    return 2.0 * v


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"depth": 0}, ValueError, r"`depth` must satisfy 1 <= depth <= n = 10"),
        ({"depth": 11}, ValueError, r"`depth` must satisfy 1 <= depth <= n = 10"),
        ({"depth": 3.0}, TypeError, "`depth` must be a static Python int"),
        ({"num_probes": 0}, ValueError, "`num_probes` must be at least 1"),
        ({"chunk_size": 0}, ValueError, "`chunk_size` must be at least 1 and at most 4"),
        ({"chunk_size": 5}, ValueError, "`chunk_size` must be at least 1 and at most 4"),
        ({"gradient": "custom"}, ValueError, "`gradient` must be one of"),
        ({"probes": "unit"}, ValueError, "needs `num_probes` == n = 10"),
        ({"probes": "sobol"}, ValueError, "`probes` must be one of"),
        ({"key": None}, TypeError, "`key` is required"),
        ({"precond": object()}, TypeError, "`precond` must have methods `inv_sqrt"),
        (
            {"method": "hutch"},
            ValueError,
            r"`method` must be one of \('hutchinson', 'hutch\+\+', 'xtrace'\)",
        ),
        (
            {"method": "hutch++", "num_probes": 2},
            ValueError,
            r'at least 3 for `method="hutch\+\+"`',
        ),
        (
            {"method": "hutch++", "num_probes": 33},
            ValueError,
            r"// 3 must be at most n = 10",
        ),
        (
            {"method": "hutch++", "probes": "unit", "num_probes": 10},
            ValueError,
            "needs no variance reduction",
        ),
        (
            {"method": "hutch++", "key": None},
            TypeError,
            "`key` is required",
        ),
        (
            {"method": "xtrace", "num_probes": 1},
            ValueError,
            r'at least 2 for `method="xtrace"`',
        ),
        (
            {"method": "xtrace", "num_probes": 22},
            ValueError,
            r'// 2 must be at most n = 10 for `method="xtrace"`',
        ),
        (
            {"method": "xtrace", "probes": "unit", "num_probes": 10},
            ValueError,
            r"needs no variance reduction; use `method=\"hutchinson\"`, not 'xtrace'",
        ),
        (
            {"method": "xtrace", "key": None},
            TypeError,
            "`key` is required",
        ),
    ],
)
def test_errors(kwargs, error, match):
    kwargs = {"key": jax.random.PRNGKey(0), "depth": 3, "num_probes": 4, **kwargs}
    with pytest.raises(error, match=match):
        matfree.logdet(_mv, jnp.zeros(10), **kwargs)


def test_like_and_f_errors():
    A = jnp.eye(5)
    kw = {"key": jax.random.PRNGKey(0), "depth": 2, "num_probes": 2}
    with pytest.raises(ValueError, match="`matvec` could not be applied to `like`"):
        matfree.logdet(lambda v: A @ v, jnp.zeros(4), **kw)
    with pytest.raises(ValueError, match="a square operator"):
        matfree.logdet(lambda v: jnp.ones((3, 5)) @ v, jnp.zeros(5), **kw)
    with pytest.raises(TypeError, match="`f` must be a callable"):
        matfree.trace_funm(3.0, lambda v: A @ v, jnp.zeros(5), **kw)


# Hutch++ for matrix functions. A low-rank-plus-identity SPD matrix: log(A) has
# a few large eigenvalues (log 1e2 .. log 1e4) and a small tail (|log| <= 0.23).
N_LR, RANK = 60, 4


@functools.cache
def low_rank_plus_identity():
    eigs = jnp.concatenate(
        [jnp.geomspace(1e2, 1e4, RANK), jnp.linspace(0.8, 1.25, N_LR - RANK)]
    )
    return matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(11), eigs)


@functools.partial(jax.jit, static_argnames=("method",))
def logdet_over_keys(A, keys, method):
    def one(key):
        like = jnp.zeros(A.shape[0])
        return matfree.logdet(
            lambda v: A @ v, like, key=key, depth=12, num_probes=15, method=method
        )

    return jax.vmap(one)(keys)


def test_hutchpp_unbiased_and_smaller_spread_than_hutchinson():
    A = low_rank_plus_identity()
    ref = dense_logdet(A)
    num_keys = 100
    keys = jax.random.split(jax.random.PRNGKey(12), num_keys)
    hpp = logdet_over_keys(A, keys, "hutch++")
    hutch = logdet_over_keys(A, keys, "hutchinson")
    assert jnp.all(hpp.status == 0)
    assert jnp.all(hpp.num_matvecs == 15 * 12)  # equal budget
    assert jnp.all(hutch.num_matvecs == 15 * 12)
    assert hpp.samples.shape == (num_keys, 15 - 2 * 5)
    # Unbiased: the mean over keys is within a few standard errors of the mean.
    err = hpp.value - ref
    assert jnp.abs(jnp.mean(err)) < 4 * jnp.std(err) / jnp.sqrt(num_keys)
    # The reported standard error describes the actual spread ...
    ratio = jnp.mean(hpp.std_error) / jnp.std(err)
    assert 0.6 < ratio < 1.5
    assert jnp.mean(jnp.abs(err) < 4 * hpp.std_error) > 0.9
    # ... which is several times smaller than Hutchinson's at the same budget
    # (the sketch of m/3 = 5 >= rank 4 vectors removes the large eigenvalues).
    assert jnp.std(err) < jnp.std(hutch.value - ref) / 4
    assert jnp.mean(hpp.std_error) < jnp.mean(hutch.std_error) / 4


N_SMALL = 12


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def hutchpp_full_sketch(A, w, theta, chunk_size):
    """Hutch++ with k = num_probes // 3 = n and depth = n: exact up to rounding."""

    def f(theta):
        mv = lambda v: A @ v + theta * (w * v)  # noqa: E731
        est = matfree.logdet(
            mv,
            jnp.zeros(N_SMALL),
            key=jax.random.PRNGKey(13),
            depth=N_SMALL,
            num_probes=3 * N_SMALL,
            method="hutch++",
            chunk_size=chunk_size,
        )
        return est.value, est

    return jax.value_and_grad(f, has_aux=True)(theta)


def test_hutchpp_exact_value_and_gradient_when_sketch_spans_space():
    A = matrices.spd_matrix(jax.random.PRNGKey(14), N_SMALL, cond=50.0)
    w = jnp.linspace(0.5, 2.0, N_SMALL)
    theta = 0.7

    def dense(theta):
        return dense_logdet(A + theta * jnp.diag(w))

    ref, ref_grad = jax.value_and_grad(dense)(theta)
    (value, est), grad = hutchpp_full_sketch(A, w, theta, None)
    assert est.status == 0
    assert jnp.allclose(value, ref, rtol=1e-10)
    assert jnp.allclose(grad, ref_grad, rtol=1e-8)
    # Sequential batches (9 does not divide the sketch size 12: zero padding)
    # give the same value and gradient.
    (value_b, _), grad_b = hutchpp_full_sketch(A, w, theta, 9)
    assert jnp.allclose(value_b, value, rtol=1e-12)
    assert jnp.allclose(grad_b, grad, rtol=1e-10)


@pytest.mark.parametrize(("method", "num_probes"), [("hutch++", 9), ("xtrace", 10)])
def test_sketch_gradient_matches_finite_differences_below_full_depth(method, num_probes):
    # Fixed probes, depth < n, sketch smaller than n: the gradient of the
    # estimator (through the sketch's Lanczos actions, the QR and the
    # quadrature) is the derivative of the estimate.
    A = spd(cond=10.0)

    def f(scale):
        kw = {"depth": 8, "num_probes": num_probes, "method": method}
        return logdet_of(A, KEY, scale, **kw).value

    check_grads(f, (1.3,), order=1, modes=["rev"])


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_sketch_flags_not_spd_and_float32(method):
    est = logdet_of(spd() - 5.0 * jnp.eye(N), KEY, method=method, throw=False, **RANDOM)
    assert est.status == matfree.status.Status.NOT_POSITIVE_DEFINITE
    assert est.ritz_min <= 0
    assert jnp.isnan(est.value)  # not computed: NaN with a non-zero status
    A = spd(cond=10.0, dtype=jnp.float32)
    est = logdet_of(A, jax.random.PRNGKey(9), method=method, **RANDOM)
    assert est.value.dtype == jnp.float32
    assert est.status == 0
    assert jnp.all(jnp.isfinite(est.samples)) and jnp.isfinite(est.std_error)
    ref = dense_logdet(A.astype(jnp.float64))
    assert jnp.abs(est.value - ref) < 4 * est.std_error


# XTrace for matrix functions (the same low-rank-plus-identity matrix and
# budget as for Hutch++ above; s = 15 // 2 = 7 > RANK probes).


def test_xtrace_unbiased_and_smaller_spread_than_hutchinson():
    A = low_rank_plus_identity()
    ref = dense_logdet(A)
    num_keys = 100
    keys = jax.random.split(jax.random.PRNGKey(12), num_keys)
    xt = logdet_over_keys(A, keys, "xtrace")
    hutch = logdet_over_keys(A, keys, "hutchinson")
    assert jnp.all(xt.status == 0)
    assert jnp.all(xt.num_matvecs == 2 * 7 * 12)  # two Lanczos runs per probe
    assert xt.samples.shape == (num_keys, 7)  # the leave-one-out estimates
    assert jnp.allclose(jnp.mean(xt.samples, axis=1), xt.value, rtol=1e-12)
    # Unbiased: the mean over keys is within a few standard errors of the mean.
    err = xt.value - ref
    assert jnp.abs(jnp.mean(err)) < 4 * jnp.std(err) / jnp.sqrt(num_keys)
    # The reported standard error describes the actual spread ...
    ratio = jnp.mean(xt.std_error) / jnp.std(err)
    assert 0.6 < ratio < 1.5
    assert jnp.mean(jnp.abs(err) < 4 * xt.std_error) > 0.9
    # ... which is several times smaller than Hutchinson's at the same
    # `num_probes` (measured: about 8 times).
    assert jnp.std(err) < jnp.std(hutch.value - ref) / 4
    assert jnp.mean(xt.std_error) < jnp.mean(hutch.std_error) / 4


def test_xtrace_exact_when_log_is_low_rank():
    # log(A) has rank RANK: every leave-one-out sketch of s - 1 >= RANK vectors
    # spans its range, and the Krylov spaces have dimension <= RANK + 1.
    eigs = jnp.concatenate([jnp.geomspace(1e1, 1e3, RANK), jnp.ones(N_SMALL - RANK)])
    A = matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(16), eigs)
    ref = dense_logdet(A)
    # An odd budget: s = 13 // 2 = 6 probes, two Lanczos runs each.
    est = logdet_of(A, KEY, depth=N_SMALL, num_probes=13, method="xtrace")
    assert est.status == 0
    assert est.num_matvecs == 2 * 6 * N_SMALL
    assert est.samples.shape == (6,)
    assert jnp.allclose(est.samples, ref, rtol=1e-10)
    assert jnp.allclose(est.value, ref, rtol=1e-10)
    assert est.std_error < 1e-10 * jnp.abs(ref)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def xtrace_value_and_grad(M, chunk_size):
    """XTrace at depth n for `logdet(I + M M^T)` and its gradient w.r.t. `M`."""

    def f(M):
        est = matfree.logdet(
            lambda v: v + M @ (M.T @ v),
            jnp.zeros(N_SMALL),
            key=jax.random.PRNGKey(17),
            depth=N_SMALL,
            num_probes=10,
            method="xtrace",
            chunk_size=chunk_size,
        )
        return est.value, est

    return jax.value_and_grad(f, has_aux=True)(M)


def dense_xtrace(M):
    """The XTrace estimate of `tr log(I + M M^T)` with exact products, same probes."""
    w, V = jnp.linalg.eigh(jnp.eye(N_SMALL) + M @ M.T)
    L = (V * jnp.log(w)) @ V.T
    return matfree.trace(
        lambda v: L @ v,
        jnp.zeros(N_SMALL),
        key=jax.random.PRNGKey(17),
        num_probes=10,
        method="xtrace",
    ).value


def test_xtrace_value_and_gradient_match_dense_xtrace_at_full_depth():
    # XTrace is not exact for a full-rank log(A) (s = 5 < n), but at depth n
    # the Lanczos actions and quadratures are exact, so value and gradient
    # (through both Lanczos stages, the QR and the downdates) equal those of
    # the same estimator with dense products, differentiated by autodiff.
    M = jax.random.normal(jax.random.PRNGKey(18), (N_SMALL, N_SMALL)) / 2
    ref, ref_grad = jax.value_and_grad(dense_xtrace)(M)
    (value, est), grad = xtrace_value_and_grad(M, None)
    assert est.status == 0
    assert jnp.allclose(value, ref, rtol=1e-10)
    assert jnp.allclose(grad, ref_grad, rtol=1e-8, atol=1e-8 * jnp.max(jnp.abs(ref_grad)))
    # Sequential batches (2 does not divide s = 5: zero padding) agree.
    (value_b, _), grad_b = xtrace_value_and_grad(M, 2)
    assert jnp.allclose(value_b, value, rtol=1e-12)
    assert jnp.allclose(grad_b, grad, rtol=1e-10, atol=1e-10 * jnp.max(jnp.abs(grad)))
