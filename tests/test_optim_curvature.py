"""Hessian-free, Krylov subspace descent and natural gradient against dense references."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from matfree import optim
from matfree.status import Status


def _logistic(n=120, d=5, seed=0):
    """Logistic regression with an L2 term, split as model outputs and a loss on them.

    The outputs include `w` itself, so the Gauss-Newton matrix of `loss(model(w))`
    is the exact Hessian (and the Fisher of the Bernoulli likelihood plus prior).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.where(X @ rng.normal(size=d) + rng.normal(size=n) > 0, 1.0, -1.0)
    lam = 1.0 / n

    def model(w):
        return X @ w, w

    def loss(out):
        z, w = out
        return jnp.mean(jnp.logaddexp(0.0, -y * z)) + 0.5 * lam * w @ w

    def f(w):
        return loss(model(w))

    w = np.zeros(d)  # dense Newton in NumPy: the reference minimiser
    for _ in range(50):
        s = 1 / (1 + np.exp(y * (X @ w)))
        g = -(X.T @ (y * s)) / n + lam * w
        H = (X.T * (s * (1 - s))) @ X / n + lam * np.eye(d)
        w = w - np.linalg.solve(H, g)
    return f, model, loss, jnp.asarray(w)


def _mlp(seed=0):
    X = jax.random.normal(jax.random.PRNGKey(seed), (64, 3))
    y = jnp.sin(X @ jnp.array([1.0, -2.0, 0.5]))
    params = {
        "W1": 0.5 * jax.random.normal(jax.random.PRNGKey(1), (3, 8)),
        "b1": jnp.zeros(8),
        "W2": 0.5 * jax.random.normal(jax.random.PRNGKey(2), (8,)),
    }

    def model_on(Xb):
        return lambda p: jnp.tanh(Xb @ p["W1"] + p["b1"]) @ p["W2"]

    def loss_on(yb):
        return lambda out: 0.5 * jnp.mean((out - yb) ** 2)

    def f(p):
        return loss_on(y)(model_on(X)(p))

    # The curvature on a mini-batch of 16, the objective on all 64 points.
    return f, model_on(X[:16]), loss_on(y[:16]), params


def _run(opt, f, x, num_steps, **extra):
    state = opt.init(x)

    @jax.jit
    def step(x, state):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = opt.update(grad, state, x, value_fn=f, value=value, **extra)
        return optax.apply_updates(x, updates), state

    losses = [float(f(x))]
    for _ in range(num_steps):
        x, state = step(x, state)
        losses.append(float(f(x)))
    return x, state, losses


OPTIMISERS = {
    "hessian_free": lambda: optim.hessian_free(damping=1e-2),
    "ksd": lambda: optim.krylov_subspace_descent(depth=3, num_inner=3),
}


@pytest.mark.parametrize("name", OPTIMISERS)
def test_logistic_regression_reaches_the_reference_minimiser(name):
    f, model, loss, w_star = _logistic()
    opt = OPTIMISERS[name]()
    w, state, _ = _run(opt, f, jnp.zeros(5), 15, model_fn=model, loss_fn=loss)
    assert jnp.linalg.norm(w - w_star) <= 1e-8 * jnp.linalg.norm(w_star)
    assert int(state.status) == Status.OK
    assert int(state.num_grads) >= 15 and int(state.num_curvature) > 15


def test_hessian_free_least_squares_float32():
    X = jax.random.normal(jax.random.PRNGKey(3), (30, 4), jnp.float32)
    y = jax.random.normal(jax.random.PRNGKey(4), (30,), jnp.float32)

    def model(w):
        return X @ w

    def loss(out):
        return 0.5 * jnp.mean((out - y) ** 2)

    def f(w):
        return loss(model(w))

    opt = optim.hessian_free(damping=1e-3)
    w, state, _ = _run(opt, f, jnp.zeros(4, jnp.float32), 6, model_fn=model, loss_fn=loss)
    w_ref = jnp.linalg.lstsq(X.astype(float), y.astype(float))[0]
    assert w.dtype == jnp.float32 and state.damping.dtype == jnp.float32
    assert jnp.linalg.norm(w - w_ref) <= 1e-4 * jnp.linalg.norm(w_ref)


def test_hessian_free_ggn_fn_matches_model_and_loss():
    f, model, loss, _ = _logistic(seed=1)

    def ggn(w, v):
        out, jv = jax.jvp(model, (w,), (v,))
        hjv = jax.jvp(jax.grad(loss), (out,), (jv,))[1]
        return jax.vjp(model, w)[1](hjv)[0]

    opt = optim.hessian_free()
    w1, _, _ = _run(opt, f, jnp.zeros(5), 3, model_fn=model, loss_fn=loss)
    w2, _, _ = _run(opt, f, jnp.zeros(5), 3, ggn_fn=ggn)
    assert jnp.allclose(w1, w2, rtol=1e-10)


@pytest.mark.parametrize("name", OPTIMISERS)
def test_hessian_path_without_a_model(name):
    f, _, _, w_star = _logistic(seed=2)
    w, _, _ = _run(OPTIMISERS[name](), f, jnp.zeros(5), 12)
    assert jnp.linalg.norm(w - w_star) <= 1e-8 * jnp.linalg.norm(w_star)


@pytest.mark.parametrize("name", OPTIMISERS)
def test_mlp_loss_decreases_with_a_curvature_mini_batch(name):
    f, model, loss, params = _mlp()
    opt = OPTIMISERS[name]()
    _, _, losses = _run(opt, f, params, 10, model_fn=model, loss_fn=loss)
    assert all(b <= a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 0.3 * losses[0]


def test_hessian_free_damping_adapts_by_the_reduction_ratio():
    f, model, loss, params = _mlp()
    opt = optim.hessian_free(damping=10.0)
    _, state, _ = _run(opt, f, params, 4, model_fn=model, loss_fn=loss)
    # A quadratic model that predicts well (ratio > 3/4) lowers the damping.
    assert float(state.ratio) > 0.75 and float(state.damping) < 10.0


def test_natural_gradient_is_newton_for_a_canonical_glm():
    # Bernoulli logits + Gaussian prior: the Fisher is the Hessian, so natural
    # gradient with step 1 is Newton's method and converges quadratically.
    f, model, loss, w_star = _logistic(seed=3)
    opt = optim.natural_gradient(1.0, damping=1e-12, rtol=1e-12, maxiter=10)
    w = jnp.zeros(5)
    state = opt.init(w)
    step = jax.jit(
        lambda w, s: opt.update(jax.grad(f)(w), s, w, model_fn=model, loss_fn=loss)
    )
    for _ in range(8):
        updates, state = step(w, state)
        w = optax.apply_updates(w, updates)
    assert jnp.linalg.norm(w - w_star) <= 1e-10 * jnp.linalg.norm(w_star)
    assert int(state.count) == 8 and int(state.solver_status) == Status.OK


CHAINED = {
    **OPTIMISERS,
    # The curvature batch (16 points) gives a Fisher of rank <= 16 for 41
    # parameters: the damping must carry the rest (no line search here).
    "natural_gradient": lambda: optim.natural_gradient(0.5, damping=0.1),
}


@pytest.mark.parametrize("name", CHAINED)
def test_no_recompilation_and_inside_optax_chain(name):
    f, model, loss, params = _mlp()
    opt = optax.chain(optax.clip_by_global_norm(10.0), CHAINED[name]())
    traces = []

    @jax.jit
    def step(p, state):
        traces.append(1)
        value, grad = jax.value_and_grad(f)(p)
        updates, state = opt.update(
            grad, state, p, value_fn=f, value=value, model_fn=model, loss_fn=loss
        )
        return optax.apply_updates(p, updates), state

    state = opt.init(params)
    structure = jax.tree_util.tree_structure(state)
    losses = [float(f(params))]
    for _ in range(4):
        params, state = step(params, state)
        losses.append(float(f(params)))
    assert len(traces) == 1
    assert jax.tree_util.tree_structure(state) == structure
    assert int(optax.tree_utils.tree_get(state, "count")) == 4
    assert losses[-1] < losses[0]


def test_bad_curvature_arguments_raise_clear_errors():
    f, model, loss, _ = _logistic()
    w = jnp.zeros(5)
    g = jax.grad(f)(w)
    for opt in (optim.hessian_free(), optim.krylov_subspace_descent(depth=2)):
        state = opt.init(w)
        with pytest.raises(TypeError, match="`value_fn` is required"):
            opt.update(g, state, w, model_fn=model, loss_fn=loss)
        with pytest.raises(ValueError, match="`model_fn` and `loss_fn` go together"):
            opt.update(g, state, w, value_fn=f, model_fn=model)
        with pytest.raises(ValueError, match="not both"):
            opt.update(g, state, w, value_fn=f, model_fn=model, loss_fn=loss, ggn_fn=model)
        with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
            opt.update(g, state, w, value_fn=f, model_fn=model, loss_fn=lambda o: o[0])
        with pytest.raises(TypeError, match="`ggn_fn` must be a callable"):
            opt.update(g, state, w, value_fn=f, ggn_fn=1.0)
    ng = optim.natural_gradient(0.1)
    with pytest.raises(TypeError, match="needs the curvature"):
        ng.update(g, ng.init(w), w)
    with pytest.raises(ValueError, match="`params` is required"):
        ng.update(g, ng.init(w), model_fn=model, loss_fn=loss)


def test_nonfinite_gradient_raises():
    f, model, loss, _ = _logistic()
    w = jnp.zeros(5)
    bad = jnp.full(5, jnp.nan)
    for opt in (optim.hessian_free(), optim.krylov_subspace_descent(depth=2)):
        step = eqx.filter_jit(lambda g, o=opt: o.update(g, o.init(w), w, value_fn=f))
        with pytest.raises(Exception, match="non-finite values"):
            step(bad)
    ng = optim.natural_gradient(0.1)
    step = eqx.filter_jit(
        lambda g: ng.update(g, ng.init(w), w, model_fn=model, loss_fn=loss)
    )
    with pytest.raises(Exception, match="non-finite values"):
        step(bad)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="`damping` must be a positive float"):
        optim.hessian_free(damping=0.0)
    with pytest.raises(ValueError, match="`tol` must be a positive float"):
        optim.hessian_free(tol=-1.0)
    with pytest.raises(ValueError, match=r"`warm_start` must be in \[0, 1\]"):
        optim.hessian_free(warm_start=2.0)
    with pytest.raises(ValueError, match="`maxiter` must be at least 1"):
        optim.hessian_free(maxiter=0)
    with pytest.raises(TypeError, match="`depth` must be a static Python int"):
        optim.krylov_subspace_descent(depth=2.5)
    with pytest.raises(ValueError, match="`num_inner` must be at least 1"):
        optim.krylov_subspace_descent(num_inner=0)
    with pytest.raises(ValueError, match=r"`depth` must satisfy 1 <= depth <= n = 5"):
        optim.krylov_subspace_descent(depth=6).init(jnp.zeros(5))
    with pytest.raises(ValueError, match="`learning_rate` must be a positive float"):
        optim.natural_gradient(-1.0)
    with pytest.raises(ValueError, match="`damping` must be a positive float"):
        optim.natural_gradient(0.1, damping=0.0)
