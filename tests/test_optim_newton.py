"""Inexact Newton (`matfree.optim.newton_krylov`) against dense references."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from matfree import matrices, optim
from matfree.status import Status


def _quadratic(n, dtype, seed=0):
    eigs = jnp.linspace(1.0, 10.0, n)
    A = matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(seed), eigs)
    A = A.astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(seed + 1), (n,), dtype)

    def f(x):
        return 0.5 * x @ (A @ x) - b @ x

    return f, jnp.linalg.solve(A, b)


def _one(opt, f, x, g):
    """One jitted update from a fresh state (jit: eager while-loops are slow)."""
    return jax.jit(lambda x, g: opt.update(g, opt.init(x), x, value_fn=f))(x, g)


def _run(opt, f, x, num_steps):
    state = opt.init(x)

    @jax.jit
    def step(x, state):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = opt.update(grad, state, x, value_fn=f, value=value)
        return optax.apply_updates(x, updates), state

    for _ in range(num_steps):
        x, state = step(x, state)
    return x, state


@pytest.mark.parametrize("method", ["cg", "minres", "gmres", "gcr"])
def test_quadratic_one_step_to_machine_precision_in_at_most_n_krylov_steps(method):
    n = 12
    f, x_star = _quadratic(n, jnp.float64)
    x, state = _run(optim.newton_krylov(method=method, forcing=1e-14), f, jnp.zeros(n), 1)
    assert jnp.linalg.norm(x - x_star) <= 1e-12 * jnp.linalg.norm(x_star)
    # Krylov steps = curvature products minus the solver's final residual check.
    assert int(state.num_curvature) - 1 <= n
    assert int(state.status) == Status.OK and int(state.num_fallbacks) == 0
    assert float(state.step_size) == 1.0


@pytest.mark.parametrize("forcing", ["superlinear", "quadratic", "eisenstat-walker"])
def test_quadratic_adaptive_forcing_reaches_machine_precision(forcing):
    n = 12
    f, x_star = _quadratic(n, jnp.float64, seed=3)
    x, state = _run(optim.newton_krylov(forcing=forcing), f, jnp.zeros(n), 12)
    assert jnp.linalg.norm(x - x_star) <= 1e-12 * jnp.linalg.norm(x_star)
    assert int(state.count) == 12 and int(state.num_grads) == 24


def test_quadratic_float32():
    n = 10
    f, x_star = _quadratic(n, jnp.float32, seed=5)
    x, state = _run(optim.newton_krylov(), f, jnp.zeros(n, jnp.float32), 12)
    assert x.dtype == jnp.float32 and state.step_size.dtype == jnp.float32
    assert jnp.linalg.norm(x - x_star) <= 1e-5 * jnp.linalg.norm(x_star)


def _logistic(seed=0, n=200, d=6):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w_true = rng.normal(size=d)
    y = np.where(X @ w_true + 0.5 * rng.normal(size=n) > 0, 1.0, -1.0)
    lam = 1.0 / n

    def f(w):
        return jnp.mean(jnp.logaddexp(0.0, -y * (X @ w))) + 0.5 * lam * w @ w

    # Dense reference: exact Newton with the dense Hessian, in NumPy.
    w = np.zeros(d)
    for _ in range(50):
        s = 1 / (1 + np.exp(y * (X @ w)))
        g = -(X.T @ (y * s)) / n + lam * w
        H = (X.T * (s * (1 - s))) @ X / n + lam * np.eye(d)
        w = w - np.linalg.solve(H, g)
    return f, jnp.asarray(w)


@pytest.mark.parametrize("method", ["cg", "gmres"])
def test_logistic_regression_reaches_the_reference_minimiser(method):
    f, w_star = _logistic()
    w, state = _run(optim.newton_krylov(method=method), f, jnp.zeros(6), 12)
    assert jnp.linalg.norm(w - w_star) <= 1e-10 * jnp.linalg.norm(w_star)
    assert int(state.num_fallbacks) == 0


def _mlp():
    key = jax.random.PRNGKey(0)
    X = jax.random.normal(key, (64, 3))
    y = jnp.sin(X @ jnp.array([1.0, -2.0, 0.5]))
    params = {
        "W1": 0.5 * jax.random.normal(jax.random.PRNGKey(1), (3, 8)),
        "b1": jnp.zeros(8),
        "W2": 0.5 * jax.random.normal(jax.random.PRNGKey(2), (8,)),
    }

    def f(p):
        h = jnp.tanh(X @ p["W1"] + p["b1"])
        return jnp.mean((h @ p["W2"] - y) ** 2)

    return f, params


@pytest.mark.parametrize(("method", "factor"), [("cg", 0.2), ("minres", 0.5)])
def test_mlp_loss_decreases_monotonically(method, factor):
    # MINRES solves the indefinite Newton system; at saddle-like points its
    # direction points uphill and the step falls back to -g, so it is slower.
    f, params = _mlp()
    opt = optim.newton_krylov(method=method, maxiter=20)
    state = opt.init(params)
    losses = [float(f(params))]
    step = jax.jit(
        lambda p, s: opt.update(jax.grad(f)(p), s, p, value_fn=f),
    )
    for _ in range(10):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        losses.append(float(f(params)))
    assert all(b <= a for a, b in itertools.pairwise(losses))
    assert losses[-1] < factor * losses[0]


def test_no_recompilation_across_steps():
    f, _ = _quadratic(6, jnp.float64)
    opt = optim.newton_krylov(forcing="eisenstat-walker")
    traces = []

    @jax.jit
    def step(x, state):
        traces.append(1)
        updates, state = opt.update(jax.grad(f)(x), state, x, value_fn=f)
        return optax.apply_updates(x, updates), state

    x = jnp.zeros(6)
    state = opt.init(x)
    for _ in range(5):
        x, state = step(x, state)
    assert len(traces) == 1
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(opt.init(x))


def test_inside_optax_chain_matches_the_plain_optimiser():
    f, w_star = _logistic(seed=2)
    chained = optax.chain(optax.clip_by_global_norm(1e6), optim.newton_krylov())
    w1, state = _run(chained, f, jnp.zeros(6), 10)
    w2, _ = _run(optim.newton_krylov(), f, jnp.zeros(6), 10)
    assert jnp.allclose(w1, w2, rtol=1e-12)
    assert jnp.linalg.norm(w1 - w_star) <= 1e-10 * jnp.linalg.norm(w_star)
    assert int(optax.tree_utils.tree_get(state, "count")) == 10


def test_non_descent_direction_falls_back_to_the_gradient():
    # MINRES solves the indefinite Newton system exactly; here its solution
    # points uphill (g^T H^{-1} g < 0), so the safeguard steps along -g.
    def f(x):
        return 0.5 * x[0] ** 2 - x[1] ** 2 + x[1] ** 4

    x = jnp.array([0.01, 0.3])
    g = jax.grad(f)(x)
    H = jax.hessian(f)(x)
    assert g @ jnp.linalg.solve(H, -g) > 0  # the Newton direction is uphill
    opt = optim.newton_krylov(method="minres", forcing=1e-12)
    updates, state = _one(opt, f, x, g)
    assert int(state.num_fallbacks) == 1
    assert jnp.allclose(updates, -float(state.step_size) * g)
    assert f(x + updates) < f(x)


def test_nonfinite_trial_points_are_rejected_by_the_line_search():
    def f(x):
        return jnp.sum((x - 3.0) ** 2) + jnp.where(jnp.any(x > 2.5), jnp.nan, 0.0)

    x = jnp.zeros(2)
    opt = optim.newton_krylov(forcing=1e-12)
    updates, state = _one(opt, f, x, jax.grad(f)(x))
    assert jnp.allclose(updates, 1.5)  # the full step to 3 was rejected, t = 1/2
    assert float(state.step_size) == 0.5 and int(state.status) == Status.OK


def test_failed_line_search_gives_a_zero_step_and_a_status():
    def f(x):
        return jnp.sum(x**2) + jnp.where(jnp.linalg.norm(x) > 0, jnp.inf, 0.0) + 0.0 * x[0]

    x = jnp.array([1.0, 1.0])
    opt = optim.newton_krylov(max_backtracks=3)
    updates, state = _one(opt, lambda z: f(z - x), x, 2 * x)
    assert jnp.all(updates == 0) and int(state.status) == Status.NOT_CONVERGED


def test_nonfinite_gradient_or_value_raises():
    f, _ = _quadratic(4, jnp.float64)
    opt = optim.newton_krylov()
    x = jnp.zeros(4)
    step = eqx.filter_jit(lambda g, v: opt.update(g, opt.init(x), x, value_fn=f, value=v))
    with pytest.raises(Exception, match="non-finite values"):
        step(jnp.array([1.0, jnp.nan, 0.0, 0.0]), 1.0)
    with pytest.raises(Exception, match="non-finite values"):
        step(jnp.ones(4), jnp.inf)


def test_bad_objective_and_arguments_raise_clear_errors():
    opt = optim.newton_krylov()
    x = jnp.zeros(3)
    state = opt.init(x)
    with pytest.raises(ValueError, match="`value_fn` must return a scalar"):
        opt.update(x, state, x, value_fn=lambda z: z**2)
    with pytest.raises(TypeError, match="`value_fn` must return a real floating scalar"):
        opt.update(x, state, x, value_fn=lambda z: jnp.int32(1))
    with pytest.raises(TypeError, match="`value_fn` is required"):
        opt.update(x, state, x)
    with pytest.raises(TypeError, match="`value_fn` must be a callable"):
        opt.update(x, state, x, value_fn=3.0)
    with pytest.raises(ValueError, match="`params` is required"):
        opt.update(x, state, value_fn=jnp.sum)
    with pytest.raises(ValueError, match="`updates` must be the gradient"):
        opt.update(jnp.zeros(2), state, x, value_fn=jnp.sum)
    with pytest.raises(ValueError, match="`value` must return a scalar"):
        opt.update(x, state, x, value_fn=jnp.sum, value=jnp.zeros(2))


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match=r"`method` must be one of \('cg'"):
        optim.newton_krylov(method="lsqr")
    with pytest.raises(ValueError, match="`forcing` must be one of"):
        optim.newton_krylov(forcing="fast")
    with pytest.raises(ValueError, match=r"or a positive float"):
        optim.newton_krylov(forcing=-1.0)
    with pytest.raises(ValueError, match=r"`c1` \(the Armijo constant\)"):
        optim.newton_krylov(c1=2.0)
    with pytest.raises(ValueError, match=r"`shrink` \(the backtracking factor\)"):
        optim.newton_krylov(shrink=1.0)
    with pytest.raises(ValueError, match="`maxiter` must be at least 1"):
        optim.newton_krylov(maxiter=0)
