"""`exp_action(..., tol=)` chooses its substeps: SciPy's `expm_multiply` test cases.

The matrices follow scipy/sparse/linalg/tests/test_expm_multiply.py (seed
1234, n = 40): inverses of Gaussian matrices at t in {0.2, 1, 1.5}, sparse
random matrices (density 0.05) at t = 1, and inverses at 14 times in
[0.1, 3.2]. Only `tol=1e-9` and `depth=10` are set; every case must be within
relative error 1e-7 of the dense exponential (measured: at most 1.3e-9).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse

import matfree
from matfree.status import Status

TOL = 1e-9


def scipy_cases():
    rng = np.random.RandomState(1234)
    As, vs, ts = [], [], []
    for _ in range(10):
        for t in (0.2, 1.0, 1.5):
            As.append(scipy.linalg.inv(rng.randn(40, 40)))
            vs.append(rng.randn(40))
            ts.append(t)
    for i in range(10):
        As.append(scipy.sparse.random(40, 40, density=0.05, random_state=i).toarray())
        vs.append(rng.randn(40))
        ts.append(1.0)
    for t in np.linspace(0.1, 3.2, 14):
        As.append(scipy.linalg.inv(rng.randn(40, 40)))
        vs.append(rng.randn(40))
        ts.append(t)
    return np.array(As), np.array(vs), np.array(ts)


def expm_action(A, v, t):
    return jax.vmap(lambda A, v, t: jax.scipy.linalg.expm(t * A) @ v)(A, v, t)


def rel(a, b):
    return jnp.linalg.norm(a - b, axis=-1) / jnp.linalg.norm(b, axis=-1)


@jax.jit
@jax.vmap
def adaptive(A, v, t):
    res = matfree.exp_action(lambda x: A @ x, v, t=t, depth=10, tol=TOL, throw=False)
    return res.value, res.status, res.num_substeps


def test_scipy_expm_multiply_cases_with_only_tol():
    As, vs, ts = scipy_cases()
    assert max(np.abs(A).sum(0).max() * t for A, t in zip(As, ts, strict=True)) > 300
    value, code, steps = adaptive(As, vs, ts)
    errors = rel(value, expm_action(As, vs, ts))
    assert float(jnp.max(errors)) <= 1e-7
    assert np.all(np.asarray(code) == Status.OK)
    assert int(jnp.max(steps)) > 1  # some cases need several substeps


def test_sparse_case_from_the_issue():
    """40x40 sparse random, |A|_1 = 2.7: one substep at depth 10 is not enough."""
    A = scipy.sparse.random(40, 40, density=0.05, random_state=3).toarray()
    A = jnp.asarray(A / np.abs(A).sum(0).max() * 2.7)
    v = jnp.asarray(np.random.RandomState(1).randn(40))
    res = matfree.exp_action(lambda x: A @ x, v, depth=10, tol=TOL)
    ref = jax.scipy.linalg.expm(A) @ v
    assert int(res.status) == Status.OK
    assert int(res.num_substeps) >= 2
    assert int(res.num_matvecs) == 10 * int(res.num_substeps)
    assert float(rel(res.value, ref)) <= 1e-8
    assert float(res.error_estimate) <= TOL


def test_float32():
    """float32, `tol=1e-5`: within 1e-4 of the float64 exponential."""
    As, vs, ts = scipy_cases()
    As, vs, ts = As[:12], vs[:12], ts[:12]
    ref = expm_action(As, vs, ts)

    @jax.jit
    @jax.vmap
    def run(A, v, t):
        res = matfree.exp_action(lambda x: A @ x, v, t=t, depth=10, tol=1e-5, throw=False)
        return res.value, res.status

    value, code = run(As.astype(np.float32), vs.astype(np.float32), ts.astype(np.float32))
    assert value.dtype == jnp.float32
    assert np.all(np.asarray(code) == Status.OK)
    assert float(jnp.max(rel(value, ref))) <= 1e-4


def test_symmetric_stiff_operator():
    """t |A| = 2000: the first substep is far shorter than t (no guess needed)."""
    rng = np.random.RandomState(0)
    Q, _ = np.linalg.qr(rng.randn(60, 60))
    A = jnp.asarray((Q * -np.logspace(-1, 3, 60)) @ Q.T)
    v = jnp.asarray(rng.randn(60))
    res = matfree.exp_action(lambda x: A @ x, v, t=2.0, depth=10, symmetric=True, tol=TOL)
    ref = jax.scipy.linalg.expm(2.0 * A) @ v
    assert int(res.status) == Status.OK
    assert int(res.num_substeps) > 10
    assert float(rel(res.value, ref)) <= 1e-7


@pytest.mark.parametrize("gradient", ["adjoint", "autodiff"])
def test_gradients_match_the_dense_exponential(gradient):
    As, vs, _ = scipy_cases()
    A, v, t = jnp.asarray(As[2]), jnp.asarray(vs[2]), 1.5  # 3 adaptive substeps
    u = jnp.cos(jnp.arange(40.0))

    def loss(A, v, t):
        out = matfree.exp_action(
            lambda x: A @ x, v, t=t, depth=10, tol=1e-10, gradient=gradient
        ).value
        return jnp.dot(u, out)

    def loss_ref(A, v, t):
        return jnp.dot(u, jax.scipy.linalg.expm(t * A) @ v)

    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(A, v, t)
    g_ref = jax.grad(loss_ref, argnums=(0, 1, 2))(A, v, t)
    for a, b in zip(g, g_ref, strict=True):
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) <= 1e-7


def test_the_bound_on_substeps_is_reported_and_raised():
    As, vs, _ = scipy_cases()
    A, v = jnp.asarray(As[2]), jnp.asarray(vs[2])

    def run(v, throw):
        return matfree.exp_action(
            lambda x: A @ x, v, t=1.5, depth=4, tol=TOL, num_substeps=2, throw=throw
        )

    res = jax.jit(lambda v: run(v, False))(v)
    assert int(res.status) == Status.NOT_CONVERGED
    assert int(res.num_substeps) == 2
    assert float(res.error_estimate) > TOL
    with pytest.raises(eqx.EquinoxRuntimeError, match="`num_substeps`"):
        run(v, True).value.block_until_ready()
