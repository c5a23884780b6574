"""`exp_action` against `jax.scipy.linalg.expm` on matrices of chosen spectrum."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import matfree
from matfree import matrices
from matfree.status import Status

N = 40
Q = matrices.random_orthogonal(jax.random.PRNGKey(4), N)
V0 = jax.random.normal(jax.random.PRNGKey(5), (N,))


def sym(theta):
    return (Q * theta) @ Q.T


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("symmetric", [True, False])
def test_full_depth_is_exact(symmetric):
    A = sym(jnp.linspace(-5.0, 1.0, N))
    if not symmetric:
        lam = jnp.linspace(-5.0, 1.0, N)
        A = matrices.nonsymmetric_matrix_from_eigenvalues(jax.random.PRNGKey(6), lam)
    out = matfree.exp_action(lambda x: A @ x, V0, t=0.7, depth=N, symmetric=symmetric).value
    assert rel(out, jax.scipy.linalg.expm(0.7 * A) @ V0) < 1e-12


def hochbruck_lubich(rho, k):
    """Error bound, |v| = 1, A symmetric with spectrum in [-4 rho, 0] (HL 1997, Thm 2)."""
    if k >= 2 * rho:
        return 10 / rho * np.exp(-rho) * (np.e * rho / k) ** k
    assert k >= np.sqrt(4 * rho)
    return 10 * np.exp(-(k**2) / (5 * rho))


def test_depth_below_n_meets_hochbruck_lubich_bound():
    rho = 5.0
    A = sym(jnp.linspace(-4 * rho, 0.0, N))
    v = V0 / jnp.linalg.norm(V0)
    ref = jax.scipy.linalg.expm(A) @ v
    run = jax.jit(
        jax.vmap(
            lambda k: jnp.stack(
                [
                    matfree.exp_action(lambda x: A @ x, v, depth=d, symmetric=True).value
                    for d in (6, 10, 14)
                ]
            )
        )
    )
    outs = run(jnp.zeros(1))[0]
    for out, k in zip(outs, (6, 10, 14), strict=True):
        err = float(jnp.linalg.norm(out - ref))
        assert 1e-14 < err <= hochbruck_lubich(rho, k)


def test_substeps_handle_large_t_norm_and_estimate_bounds_error():
    """t |A| = 200, depth 20: one substep errs by ~1e-3, 20 substeps reach 1e-12.

    For this dissipative symmetric operator Saad's estimate is an upper bound.
    """
    A = sym(-jnp.linspace(0.0, 1000.0, N))
    ref = jax.scipy.linalg.expm(0.2 * A) @ V0
    errors = []
    for s in (1, 20):
        info = matfree.exp_action(
            lambda x: A @ x, V0, t=0.2, depth=20, num_substeps=s, symmetric=True
        )
        out = info.value
        err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(V0))
        assert err <= float(info.error_estimate)
        errors.append(err)
    assert errors[0] > 1e-4
    assert errors[1] < 1e-12


@pytest.mark.parametrize("symmetric", [True, False])
def test_tol_stops_early_and_meets_tolerance(symmetric):
    A = sym(-jnp.logspace(-1, 3, N))
    ref = jax.scipy.linalg.expm(2.0 * A) @ V0
    info = matfree.exp_action(
        lambda x: A @ x,
        V0,
        t=2.0,
        depth=20,
        num_substeps=200,
        tol=1e-8,
        symmetric=symmetric,
    )
    out = info.value
    assert int(info.status) == 0
    assert int(info.num_substeps) < 200  # stopped early
    assert int(info.num_matvecs) == 20 * int(info.num_substeps) + (2 if symmetric else 0)
    assert float(info.error_estimate) <= 1e-8
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(V0)) <= 1e-8


def test_tol_not_reached_is_reported_and_raised():
    A = sym(-jnp.logspace(-1, 3, N))
    run = jax.jit(
        lambda v: matfree.exp_action(
            lambda x: A @ x,
            v,
            t=2.0,
            depth=5,
            num_substeps=2,
            tol=1e-10,
            throw=False,
        )
    )
    info = run(V0)
    assert int(info.status) == Status.NOT_CONVERGED
    assert float(info.error_estimate) > 1e-10
    with pytest.raises(eqx.EquinoxRuntimeError, match="did not converge"):
        matfree.exp_action(
            lambda x: A @ x, V0, t=2.0, depth=5, num_substeps=2, tol=1e-10
        ).value.block_until_ready()


@pytest.mark.parametrize(
    ("num_substeps", "tol", "depth"), [(1, None, 26), (4, None, 20), (30, 1e-12, 20)]
)
def test_gradients_match_dense(num_substeps, tol, depth):
    """Gradients w.r.t. the spectrum, v and t, at depths where they have converged.

    t |A| = 32: one substep needs depth 26 for the gradient to reach 1e-8
    (depth 20 gives the value to ~1e-11 but the gradient only to 2e-8).
    """
    theta = -jnp.logspace(-1, 1.5, N)
    u = jnp.cos(jnp.arange(N))

    @jax.jit
    def loss(theta, v, t):
        A = sym(theta)
        out = matfree.exp_action(
            lambda x: A @ x, v, t=t, depth=depth, num_substeps=num_substeps, tol=tol
        ).value
        return jnp.sum(jnp.sin(u * out))

    def loss_ref(theta, v, t):
        return jnp.sum(jnp.sin(u * (Q @ (jnp.exp(t * theta) * (Q.T @ v)))))

    g = jax.grad(loss, argnums=(0, 1, 2))(theta, V0, 1.0)
    g_ref = jax.grad(loss_ref, argnums=(0, 1, 2))(theta, V0, 1.0)
    for a, b in zip(g, g_ref, strict=True):
        assert rel(a, b) < 1e-8
    if num_substeps == 4:
        check_grads(loss, (theta, V0, 1.0), order=1, modes=["rev"])


def test_nonsymmetric_gradient_and_degenerate_identity():
    lam = jnp.linspace(-3.0, 0.0, N)
    Vm = Q @ jnp.diag(jnp.logspace(0, 0.5, N))
    Vinv = jnp.linalg.inv(Vm)
    u = jnp.cos(jnp.arange(N))

    def loss(lam, v):
        B = (Vm * lam) @ Vinv
        return u @ matfree.exp_action(lambda x: B @ x, v, depth=25, num_substeps=2).value

    def loss_ref(lam, v):
        return u @ (Vm @ (jnp.exp(lam) * (Vinv @ v)))

    g = jax.grad(loss, argnums=(0, 1))(lam, V0)
    g_ref = jax.grad(loss_ref, argnums=(0, 1))(lam, V0)
    assert rel(g[0], g_ref[0]) < 1e-8
    assert rel(g[1], g_ref[1]) < 1e-8

    # A = c I: breakdown after one step, Ritz values all equal.
    def loss_c(c, v):
        return jnp.sum(
            matfree.exp_action(lambda x: c * x, v, depth=4, symmetric=True).value ** 2
        )

    g_c, g_v = jax.grad(loss_c, argnums=(0, 1))(-0.5, V0)
    assert jnp.allclose(g_c, 2 * jnp.exp(-1.0) * jnp.sum(V0**2), rtol=1e-12)
    assert jnp.allclose(g_v, 2 * jnp.exp(-1.0) * V0, rtol=1e-12)


def test_vmap_t_zero_and_float32():
    A = sym(jnp.linspace(-2.0, 0.0, N))
    ts = jnp.array([0.0, 0.5, 1.0])
    outs = jax.vmap(
        lambda t: (
            matfree.exp_action(
                lambda x: A @ x, V0, t=t, depth=N, tol=1e-10, num_substeps=3
            ).value
        )
    )(ts)
    for t, out in zip(ts, outs, strict=True):
        assert rel(out, jax.scipy.linalg.expm(t * A) @ V0) < 1e-10

    A32, v32 = A.astype(jnp.float32), V0.astype(jnp.float32)
    out = matfree.exp_action(lambda x: A32 @ x, v32, depth=20, num_substeps=2).value
    assert out.dtype == jnp.float32
    assert rel(out, jax.scipy.linalg.expm(A) @ V0) < 1e-5
