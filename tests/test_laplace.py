"""matfree.laplace against dense references on a tiny MLP (float64)."""

import math

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from matfree import laplace
from matfree.status import Status

N, D_IN, C = 13, 3, 3


def _mlp(key, out=C, dtype=jnp.float64, width=8):
    model = eqx.nn.MLP(D_IN, out, width, 1, activation=jnp.tanh, key=key)
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if eqx.is_array(x) else x, model
    )


@pytest.fixture(scope="module")
def clf():
    model = _mlp(jax.random.PRNGKey(0))
    X = jax.random.normal(jax.random.PRNGKey(1), (N, D_IN))
    y = jax.random.randint(jax.random.PRNGKey(2), (N,), 0, C)
    return model, X, y


@pytest.fixture(scope="module")
def reg():
    model = _mlp(jax.random.PRNGKey(3), out="scalar")
    X = jax.random.normal(jax.random.PRNGKey(4), (N, D_IN))
    y = jnp.sin(X[:, 0])
    return model, X, y


def _flat(model):
    params, static = eqx.partition(model, eqx.is_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    return theta, lambda t, x: eqx.combine(unravel(t), static)(x), unravel


def _dense_ggn(model, X, likelihood, sigma=None):
    """sum_i J_i^T H_i J_i from jax.jacfwd (the independent reference)."""
    theta, f, _ = _flat(model)
    J = jax.vmap(lambda x: jax.jacfwd(lambda t: f(t, x))(theta))(X)
    out = jax.vmap(lambda x: f(theta, x))(X)
    if likelihood == "classification":
        p = jax.nn.softmax(out, axis=-1)
        H = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
        return jnp.einsum("ncp,ncd,ndq->pq", J, H, J)
    J = J.reshape(J.shape[0], -1, theta.shape[0])
    return jnp.einsum("ncp,ncq->pq", J, J) / sigma**2


def _dense_nll(model, X, y, likelihood, sigma=None):
    theta, f, _ = _flat(model)

    def nll(t):
        out = jax.vmap(lambda x: f(t, x))(X)
        if likelihood == "classification":
            logp = jax.nn.log_softmax(out)
            return -jnp.sum(logp[jnp.arange(y.shape[0]), y])
        r = y - out
        return jnp.sum(r**2 / (2 * sigma**2) + jnp.log(sigma) + 0.5 * math.log(2 * math.pi))

    return theta, nll


def _dense_evidence(model, X, y, a, likelihood, sigma=None):
    """The Laplace evidence with slogdet of the dense GGN + A (flat prior `a`)."""
    theta, nll = _dense_nll(model, X, y, likelihood, sigma)
    G = _dense_ggn(model, X, likelihood, sigma)
    P = theta.shape[0]
    a = jnp.broadcast_to(a, (P,))
    log_prior = 0.5 * (
        jnp.sum(jnp.log(a)) - theta @ (a * theta) - P * math.log(2 * math.pi)
    )
    ld = jnp.linalg.slogdet(G + jnp.diag(a))[1]
    return -nll(theta) + log_prior + 0.5 * P * math.log(2 * math.pi) - 0.5 * ld


def _tree_flat(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


def _ones(model):
    return jax.tree_util.tree_map(jnp.ones_like, eqx.filter(model, eqx.is_array))


# -- curvature --------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_ggn_matvec_equals_the_dense_ggn(clf, reg, likelihood, chunk_size):
    model, X, y = clf if likelihood == "classification" else reg
    sigma = None if likelihood == "classification" else 0.3
    G = laplace.ggn(model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=chunk_size)
    ref = _dense_ggn(model, X, likelihood, sigma)
    theta, _, unravel = _flat(model)
    V = jax.random.normal(jax.random.PRNGKey(5), (3, theta.shape[0]))
    for v in V:
        got = _tree_flat(G(unravel(v)))
        assert jnp.allclose(got, ref @ v, rtol=1e-10, atol=1e-10)
    # under jit and vmap (on flat vectors through the pytree operator)
    mv = jax.jit(jax.vmap(lambda v: _tree_flat(G(unravel(v)))))
    assert jnp.allclose(mv(V), V @ ref.T, rtol=1e-10, atol=1e-10)


def test_ggn_in_float32_matches_float64(clf):
    model, X, y = clf
    m32 = _mlp(jax.random.PRNGKey(0), dtype=jnp.float32)
    G = laplace.ggn(m32, X.astype(jnp.float32), y, likelihood="classification")
    ref = _dense_ggn(model, X, "classification")
    _, _, unravel = _flat(m32)
    v = jnp.ones(ref.shape[0], jnp.float32)
    got = _tree_flat(G(unravel(v)))
    assert got.dtype == jnp.float32
    assert jnp.allclose(got, ref @ v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_hessian_matvec_equals_the_dense_hessian(clf, reg, likelihood):
    model, X, y = clf if likelihood == "classification" else reg
    sigma = None if likelihood == "classification" else 0.3
    H = laplace.hessian(model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=4)
    theta, nll = _dense_nll(model, X, y, likelihood, sigma)
    ref = jax.hessian(nll)(theta)
    _, _, unravel = _flat(model)
    v = jax.random.normal(jax.random.PRNGKey(6), theta.shape)
    assert jnp.allclose(_tree_flat(H(unravel(v))), ref @ v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_exact_diagonal_equals_the_dense_diagonal(clf, reg, likelihood):
    model, X, y = clf if likelihood == "classification" else reg
    sigma = None if likelihood == "classification" else 0.3
    ref = jnp.diag(_dense_ggn(model, X, likelihood, sigma))
    d = laplace.diagonal(model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=5)
    assert jnp.allclose(_tree_flat(d.value), ref, rtol=1e-10, atol=1e-12)
    assert int(d.status) == 0 and d.num_matvecs == 0
    P = ref.shape[0]
    unit = laplace.diagonal(
        model,
        X,
        y,
        likelihood=likelihood,
        sigma=sigma,
        method="stochastic",
        probes="unit",
        num_probes=P,
    )
    assert jnp.allclose(_tree_flat(unit.value), ref, rtol=1e-10, atol=1e-12)
    est = laplace.diagonal(
        model,
        X,
        y,
        likelihood=likelihood,
        sigma=sigma,
        method="stochastic",
        key=jax.random.PRNGKey(0),
        num_probes=400,
    )
    err = jnp.abs(_tree_flat(est.value) - ref)
    # Rademacher: entrywise error within 5 standard errors (stated stochastic tolerance)
    assert jnp.all(err <= 5 * _tree_flat(est.std_error) + 1e-12)


# -- evidence ---------------------------------------------------------------


def _per_leaf(model, values):
    params = eqx.filter(model, eqx.is_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    return jax.tree_util.tree_unflatten(tree, list(values[: len(leaves)]))


def test_evidence_dense_and_exact_slq_equal_the_dense_reference(clf):
    model, X, y = clf
    ref = _dense_evidence(model, X, y, 0.7, "classification")
    dense = laplace.log_evidence(
        model, X, y, likelihood="classification", prior_precision=0.7, method="dense"
    )
    assert jnp.allclose(dense.value, ref, rtol=1e-12)
    P = _flat(model)[0].shape[0]
    exact = laplace.log_evidence(
        model,
        X,
        y,
        likelihood="classification",
        prior_precision=0.7,
        probes="unit",
        num_probes=P,
        depth=P,
        chunk_size=4,
    )
    assert jnp.allclose(exact.value, ref, rtol=1e-9)
    assert float(exact.logdet_std_error) == 0.0


def test_evidence_gradient_equals_the_dense_gradient_exactly(clf, reg):
    model, X, y = reg
    P = _flat(model)[0].shape[0]
    leaves = len(jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))
    a0 = jnp.linspace(0.5, 2.0, leaves)

    def flat_prior(a):
        tree = _per_leaf(model, a)
        tree = jax.tree_util.tree_map(
            lambda s, p: jnp.broadcast_to(s, p.shape), tree, eqx.filter(model, eqx.is_array)
        )
        return _tree_flat(tree)

    def ours(a, s):
        return laplace.log_evidence(
            model,
            X,
            y,
            likelihood="regression",
            prior_precision=_per_leaf(model, a),
            sigma=s,
            probes="unit",
            num_probes=P,
            depth=P,
        ).value

    def ref(a, s):
        return _dense_evidence(model, X, y, flat_prior(a), "regression", s)

    ours = jax.jit(ours)
    got = jax.jit(jax.grad(ours, argnums=(0, 1)))(a0, 0.4)
    want = jax.grad(ref, argnums=(0, 1))(a0, 0.4)
    assert jnp.allclose(ours(a0, 0.4), ref(a0, 0.4), rtol=1e-9)
    assert jnp.allclose(got[0], want[0], rtol=1e-7, atol=1e-9)
    assert jnp.allclose(got[1], want[1], rtol=1e-7)
    # and against finite differences of our own value (adjoint path, reverse mode)
    check_grads(lambda s: ours(a0, s), (0.4,), order=1, modes=["rev"], atol=1e-5)


def test_evidence_random_probes_within_stated_tolerance_and_jit(clf):
    model, X, y = clf
    a = 1.3
    ref = _dense_evidence(model, X, y, a, "classification")
    ref_grad = jax.grad(lambda a: _dense_evidence(model, X, y, a, "classification"))(a)
    m = 60

    def f(a, key, precond):
        return laplace.log_evidence(
            model,
            X,
            y,
            likelihood="classification",
            prior_precision=a,
            key=key,
            depth=25,
            num_probes=m,
            precond=precond,
            probe_chunk_size=20,
            throw=False,
        )

    res = jax.jit(lambda a, k: f(a, k, "diagonal"))(a, jax.random.PRNGKey(7))
    assert int(res.status) == 0
    # value error = half the log-det error: within 4 standard errors
    assert abs(float(res.value - ref)) < 4 * float(res.logdet_std_error) / 2
    # d/da of -logdet/2 is -tr((G + A)^{-1})/2, estimated by Hutchinson on C = (G + A)^{-1}:
    # standard deviation sqrt(2 (|C|_F^2 - sum_i C_ii^2) / m) / 2 for Rademacher probes
    Cinv = jnp.linalg.inv(
        _dense_ggn(model, X, "classification") + a * jnp.eye(_flat(model)[0].shape[0])
    )
    sd = 0.5 * jnp.sqrt(2 * (jnp.sum(Cinv**2) - jnp.sum(jnp.diag(Cinv) ** 2)) / m)
    g = jax.jit(jax.grad(lambda a: f(a, jax.random.PRNGKey(7), None).value))(a)
    assert abs(float(g - ref_grad)) < 4 * float(sd)


def test_evidence_preconditioned_equals_unpreconditioned_exactly(reg):
    model, X, y = reg
    P = _flat(model)[0].shape[0]

    def f(s, precond):
        return laplace.log_evidence(
            model,
            X,
            y,
            likelihood="regression",
            prior_precision=2.0,
            sigma=s,
            probes="unit",
            num_probes=P,
            depth=P,
            precond=precond,
        ).value

    va, ga = jax.jit(jax.value_and_grad(lambda s: f(s, None)))(0.5)
    vb, gb = jax.jit(jax.value_and_grad(lambda s: f(s, "diagonal")))(0.5)
    assert jnp.allclose(va, vb, rtol=1e-9)
    assert jnp.allclose(ga, gb, rtol=1e-7)


def test_non_positive_prior_under_jit_is_a_status(clf):
    model, X, y = clf

    def f(a):
        return laplace.log_evidence(
            model,
            X,
            y,
            likelihood="classification",
            prior_precision=a,
            method="dense",
            throw=False,
        )

    res = jax.jit(f)(-1.0)
    assert int(res.status) == Status.INVALID_INPUT
    with pytest.raises(Exception, match="out of its domain"):
        jax.block_until_ready(
            eqx.filter_jit(
                lambda a: (
                    laplace.log_evidence(
                        model,
                        X,
                        y,
                        likelihood="classification",
                        prior_precision=a,
                        method="dense",
                    ).value
                )
            )(-1.0)
        )


# -- calibration -------------------------------------------------------------


def test_calibrate_reaches_the_dense_optimum(reg):
    model, X, y = reg
    res = laplace.calibrate(
        model,
        X,
        y,
        likelihood="regression",
        sigma=1.0,
        method="dense",
        num_steps=150,
        progress=False,
    )
    assert res.losses[-1] < res.losses[0]
    a, s = res.params.prior_precision, res.params.sigma

    def ref(a, s):
        return _dense_evidence(model, X, y, a, "regression", s)

    ga, gs = jax.grad(ref, argnums=(0, 1))(a, s)
    # stationary: the gradient w.r.t. the logarithms is small compared with n
    assert abs(float(ga * a)) < 0.05 * N and abs(float(gs * s)) < 0.05 * N


def test_calibrate_prints_progress(clf, capsys):
    model, X, y = clf
    res = laplace.calibrate(
        model,
        X,
        y,
        likelihood="classification",
        key=jax.random.PRNGKey(0),
        num_steps=3,
        depth=10,
        num_probes=4,
    )
    assert "laplace.calibrate" in capsys.readouterr().out
    assert res.losses.shape == (3,) and int(res.status) == 0


def test_grid_search_picks_the_smallest_validation_nll(clf):
    model, X, y = clf
    grid = jnp.array([0.1, 1.0, 10.0])
    res = laplace.grid_search(
        model, X, y, X, y, likelihood="classification", prior_precisions=grid
    )
    for a, nll in zip(grid, res.nll, strict=True):
        post = laplace.posterior(
            model,
            X,
            y,
            likelihood="classification",
            prior_precision=a,
            structure="diagonal",
        )
        probs = laplace.predict(post, X).probs
        assert jnp.allclose(laplace.nll(probs, y), nll)
    assert float(res.value) == float(grid[jnp.argmin(res.nll)])


# -- posterior samples and prediction ---------------------------------------


def test_samples_are_the_dense_inverse_square_root(clf):
    model, X, y = clf
    theta = _flat(model)[0]
    P = theta.shape[0]
    A = _dense_ggn(model, X, "classification") + 0.5 * jnp.eye(P)
    post = laplace.posterior(
        model, X, y, likelihood="classification", prior_precision=0.5, precond=None
    )
    s = laplace.sample(post, key=jax.random.PRNGKey(0), num_samples=3, depth=P)
    Z = jax.random.normal(jax.random.PRNGKey(0), (3, P))
    w, Q = jnp.linalg.eigh(A)
    want = Z @ (Q * w**-0.5) @ Q.T
    assert jnp.allclose(s.deltas, want, rtol=1e-7, atol=1e-9)
    # preconditioned: D^{-1/2} (D^{-1/2} A D^{-1/2})^{-1/2} z, D = diag(A)
    postp = laplace.posterior(model, X, y, likelihood="classification", prior_precision=0.5)
    sp = laplace.sample(postp, key=jax.random.PRNGKey(0), num_samples=3, depth=P)
    dinv = jnp.diag(A) ** -0.5
    wb, Qb = jnp.linalg.eigh(dinv[:, None] * A * dinv[None, :])
    want_p = (Z @ (Qb * wb**-0.5) @ Qb.T) * dinv
    assert jnp.allclose(sp.deltas, want_p, rtol=1e-7, atol=1e-9)
    assert jnp.allclose(
        _tree_flat(jax.tree_util.tree_map(lambda x: x[1], s.value)), theta + want[1]
    )


def test_samples_have_the_dense_posterior_covariance(reg):
    model, X, y = reg
    P = _flat(model)[0].shape[0]
    A = _dense_ggn(model, X, "regression", 0.5) + 2.0 * jnp.eye(P)
    post = laplace.posterior(
        model, X, y, likelihood="regression", sigma=0.5, prior_precision=2.0
    )
    m = 1500
    s = laplace.sample(post, key=jax.random.PRNGKey(1), num_samples=m, depth=20)
    # whitened by the dense precision, the samples are N(0, I):
    # E |S - I|_F^2 = (P^2 + P) / m for the empirical covariance S of m samples
    L = jnp.linalg.cholesky(A)
    U = s.deltas @ L
    S = U.T @ U / m
    tol = 1.5 * math.sqrt((P**2 + P) / m)
    assert float(jnp.linalg.norm(S - jnp.eye(P))) < tol
    # the diagonal approximation is detectably wrong at this tolerance
    postd = laplace.posterior(
        model,
        X,
        y,
        likelihood="regression",
        sigma=0.5,
        prior_precision=2.0,
        structure="diagonal",
    )
    sd = laplace.sample(postd, key=jax.random.PRNGKey(1), num_samples=m)
    Ud = sd.deltas @ L
    assert float(jnp.linalg.norm(Ud.T @ Ud / m - jnp.eye(P))) > tol


def test_linearised_prediction_matches_the_dense_glm(clf):
    model, X, y = clf
    theta, f, _ = _flat(model)
    P = theta.shape[0]
    Xn = jax.random.normal(jax.random.PRNGKey(9), (4, D_IN))
    J = jax.vmap(lambda x: jax.jacfwd(lambda t: f(t, x))(theta))(Xn)  # (4, C, P)
    G = _dense_ggn(model, X, "classification")
    mean = jax.vmap(lambda x: f(theta, x))(Xn)
    # diagonal structure: exact variance
    postd = laplace.posterior(
        model,
        X,
        y,
        likelihood="classification",
        prior_precision=0.5,
        structure="diagonal",
    )
    pd = laplace.predict(postd, Xn)
    var_d = jnp.einsum("ncp,p->nc", J**2, 1 / (jnp.diag(G) + 0.5))
    assert jnp.allclose(pd.mean, mean) and jnp.allclose(pd.variance, var_d, rtol=1e-10)
    probit = jax.nn.softmax(mean / jnp.sqrt(1 + math.pi / 8 * var_d), axis=-1)
    assert jnp.allclose(pd.probs, probit)
    # full structure: sample variance within 4 standard errors of the dense J S J^T
    post = laplace.posterior(model, X, y, likelihood="classification", prior_precision=0.5)
    m = 1000
    pf = laplace.predict(post, Xn, key=jax.random.PRNGKey(1), num_samples=m, depth=P)
    cov = jnp.linalg.inv(G + 0.5 * jnp.eye(P))
    var = jnp.einsum("ncp,pq,ncq->nc", J, cov, J)
    assert jnp.all(jnp.abs(pf.variance - var) < 4 * var * math.sqrt(2 / m))
    mc = laplace.predict(post, Xn, key=jax.random.PRNGKey(1), method="mc", num_samples=50)
    assert mc.probs.shape == (4, C) and jnp.allclose(mc.probs.sum(-1), 1.0)


# -- metrics ----------------------------------------------------------------


def test_metrics_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 4, 200)
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.minimum((np.ceil(conf * 10) - 1).astype(int), 9)
    ece = (
        sum(
            abs((pred[bins == b] == y[bins == b]).mean() - conf[bins == b].mean())
            * (bins == b).sum()
            for b in range(10)
            if (bins == b).any()
        )
        / 200
    )
    assert np.isclose(laplace.ece(probs, y, num_bins=10), ece)
    assert np.isclose(laplace.accuracy(probs, y), (pred == y).mean())
    assert np.isclose(laplace.nll(probs, y), -np.log(probs[np.arange(200), y]).mean())
    assert np.isclose(laplace.confidence(probs), conf.mean())
    r = laplace.reliability(probs, y, num_bins=10)
    assert int(r.count.sum()) == 200


# -- errors ------------------------------------------------------------------


class _IntLeaf(eqx.Module):
    w: jax.Array
    idx: jax.Array

    def __call__(self, x):
        return self.w @ x


def test_error_non_float_parameter_leaf(clf):
    _, X, y = clf
    bad = _IntLeaf(jnp.ones((C, D_IN)), jnp.arange(3))
    with pytest.raises(TypeError, match=r"parameter leaf of dtype int.*\.idx"):
        laplace.ggn(bad, X, y, likelihood="classification")


def test_error_mixed_dtypes(clf):
    _, X, y = clf
    bad = _IntLeaf(jnp.ones((C, D_IN)), jnp.ones(3, jnp.float32))
    with pytest.raises(TypeError, match="one dtype"):
        laplace.ggn(bad, X, y, likelihood="classification")


def test_error_not_a_model(clf):
    _, X, y = clf
    with pytest.raises(TypeError, match="`model` must be a callable"):
        laplace.ggn(3.0, X, y, likelihood="classification")
    with pytest.raises(ValueError, match="no array leaves"):
        laplace.ggn(lambda x: x, X, y, likelihood="classification")


def test_error_mismatched_batches(clf):
    model, X, y = clf
    with pytest.raises(ValueError, match="same number of examples"):
        laplace.log_evidence(
            model,
            X,
            y[:-1],
            likelihood="classification",
            prior_precision=1.0,
            method="dense",
        )
    with pytest.raises(ValueError, match="could not be applied to one example"):
        laplace.ggn(model, X[:, :2], y, likelihood="classification")
    with pytest.raises(ValueError, match="at least one example"):
        laplace.ggn(model, X[:0], y[:0], likelihood="classification")
    with pytest.raises(TypeError, match="`X` must be a floating"):
        laplace.ggn(model, X.astype(int), y, likelihood="classification")


def test_error_model_output_does_not_match_the_likelihood(clf, reg):
    model, X, y = clf
    rmodel, _, ry = reg
    with pytest.raises(ValueError, match="one logit per class"):
        laplace.ggn(rmodel, X, y, likelihood="classification")
    with pytest.raises(ValueError, match="shape of one target"):
        laplace.ggn(model, X, ry, likelihood="regression", sigma=1.0)
    with pytest.raises(TypeError, match="integer class labels"):
        laplace.ggn(model, X, y.astype(float), likelihood="classification")
    with pytest.raises(ValueError, match=r"labels in 0\.\.2"):
        laplace.ggn(model, X, y + 3, likelihood="classification")
    with pytest.raises(TypeError, match="floating targets"):
        laplace.ggn(rmodel, X, jnp.zeros(N, int), likelihood="regression", sigma=1.0)
    with pytest.raises(ValueError, match="`likelihood` must be one of"):
        laplace.ggn(model, X, y, likelihood="poisson")


def test_error_sigma(clf, reg):
    model, X, y = clf
    rmodel, _, ry = reg
    with pytest.raises(ValueError, match="only used with"):
        laplace.ggn(model, X, y, likelihood="classification", sigma=1.0)
    with pytest.raises(TypeError, match=r"`sigma` .* is required"):
        laplace.ggn(rmodel, X, ry, likelihood="regression")
    with pytest.raises(ValueError, match="`sigma` must be positive"):
        laplace.ggn(rmodel, X, ry, likelihood="regression", sigma=0.0)
    with pytest.raises(ValueError, match="`sigma` must be a scalar"):
        laplace.ggn(rmodel, X, ry, likelihood="regression", sigma=jnp.ones(2))


def test_error_prior_precision(clf):
    model, X, y = clf
    kw = {"likelihood": "classification", "method": "dense"}
    with pytest.raises(ValueError, match="`prior_precision` must be positive"):
        laplace.log_evidence(model, X, y, prior_precision=0.0, **kw)
    with pytest.raises(ValueError, match="`prior_precision` must be positive"):
        laplace.log_evidence(model, X, y, prior_precision=-1.0, **kw)
    leaves = len(jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))
    tree = _per_leaf(model, [1.0] * (leaves - 1) + [-1.0])
    with pytest.raises(ValueError, match="`prior_precision` must be positive"):
        laplace.posterior(model, X, y, prior_precision=tree, likelihood="classification")
    with pytest.raises(ValueError, match="structure of the model's parameters"):
        laplace.log_evidence(model, X, y, prior_precision=[1.0, 2.0], **kw)
    tree = _per_leaf(model, [jnp.ones(7)] * leaves)
    with pytest.raises(ValueError, match="each leaf of `prior_precision`"):
        laplace.log_evidence(model, X, y, prior_precision=tree, **kw)


def test_error_options(clf):
    model, X, y = clf
    kw = {"likelihood": "classification", "prior_precision": 1.0}
    with pytest.raises(TypeError, match="`key` is required"):
        laplace.log_evidence(model, X, y, **kw)
    with pytest.raises(ValueError, match="`method` must be one of"):
        laplace.log_evidence(model, X, y, method="kfac", **kw)
    with pytest.raises(ValueError, match="`precond` must be one of"):
        laplace.log_evidence(model, X, y, method="dense", precond="kfac", **kw)
    with pytest.raises(ValueError, match="`depth` must satisfy"):
        laplace.log_evidence(model, X, y, key=jax.random.PRNGKey(0), depth=10**6, **kw)
    with pytest.raises(ValueError, match="`chunk_size` must be at least 1"):
        laplace.ggn(model, X, y, likelihood="classification", chunk_size=0)
    with pytest.raises(ValueError, match="`structure` must be one of"):
        laplace.posterior(model, X, y, structure="kron", **kw)
    with pytest.raises(ValueError, match="`precond` must be one of"):
        laplace.posterior(model, X, y, precond="lowrank", **kw)
    with pytest.raises(TypeError, match="`key` is required"):
        laplace.diagonal(model, X, y, likelihood="classification", method="stochastic")
    with pytest.raises(TypeError, match="`key` is required"):
        laplace.calibrate(model, X, y, likelihood="classification")
    with pytest.raises(TypeError, match="`optimizer` must be an"):
        laplace.calibrate(
            model, X, y, likelihood="classification", method="dense", optimizer="adam"
        )


def test_error_prediction_inputs(clf):
    model, X, y = clf
    post = laplace.posterior(model, X, y, likelihood="classification", prior_precision=1.0)
    with pytest.raises(TypeError, match="`posterior` must be a"):
        laplace.predict(model, X)
    with pytest.raises(TypeError, match="`posterior` must be a"):
        laplace.sample(model, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`X_new` must have the shape"):
        laplace.predict(post, X[:, :2], key=jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="`key` is required"):
        laplace.predict(post, X)
    with pytest.raises(ValueError, match="`method` must be one of"):
        laplace.predict(post, X, key=jax.random.PRNGKey(0), method="probit")
    with pytest.raises(ValueError, match="`prior_precisions` must be a non-empty"):
        laplace.grid_search(
            model, X, y, X, y, likelihood="classification", prior_precisions=1.0
        )
    with pytest.raises(ValueError, match="`probs` must be floating"):
        laplace.ece(jnp.ones(3), y)
    with pytest.raises(ValueError, match="`y` must be integer labels"):
        laplace.accuracy(jnp.ones((N, C)), y[:-1])
    with pytest.raises(ValueError, match="must have one shape"):
        laplace.gaussian_nll(jnp.ones(3), jnp.ones(2), jnp.ones(3))


def test_a_failed_sample_is_a_status_not_nan(clf):
    model, X, y = clf
    for precond in (None, "diagonal"):
        post = laplace.posterior(
            model, X, y, likelihood="classification", prior_precision=1.0, precond=precond
        )
        bad = eqx.tree_at(lambda p: p.prior, post, -10.0 * jnp.ones_like(post.prior))
        s = laplace.sample(
            bad, key=jax.random.PRNGKey(0), num_samples=2, depth=5, throw=False
        )
        assert int(s.status) == Status.NOT_POSITIVE_DEFINITE
    with pytest.raises(Exception, match="not positive definite"):
        laplace.sample(bad, key=jax.random.PRNGKey(0), num_samples=2, depth=5)
