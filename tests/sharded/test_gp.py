"""`matfree.gp` with `mesh=`: the sharded kernel matvec equals the single-device one.

Rows of X over 4 host devices, blocks of rows within each device
(`jax.shard_map`); the matvec's only collectives are the all-gathers of the
vector and of X.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from matfree import gp, operators
from tests.sharded import helpers

helpers.require_mesh()

N, D = 64, 2


@pytest.fixture(scope="module")
def data():
    X = jax.random.uniform(jax.random.PRNGKey(0), (N, D))
    y = jnp.sin(4 * X[:, 0]) + 0.1 * jnp.cos(9 * X[:, 1])
    p = {"lengthscale": jnp.array([0.3, 0.5]), "variance": 1.2, "noise": 0.05}
    return X, y, p


def test_kernel_matvec_equals_the_unsharded_matvec(data):
    X, _, p = data
    kw = {"lengthscale": p["lengthscale"], "variance": 1.2, "noise": 0.05}
    V = jnp.cos(jnp.arange(N * 3).reshape(N, 3) / 7.0)
    mesh = helpers.mesh()

    def both(X, V):
        mv = operators.kernel_matvec(X, rows_per_block=8, mesh=mesh, **kw)
        return mv(V[:, 0]), mv(V)

    f = jax.jit(both)
    sX, sV = helpers.shard(X, P("data", None)), helpers.shard(V, P("data", None))
    compiled = f.lower(sX, sV).compile()
    vec, mat = compiled(sX, sV)
    ref = operators.kernel_matvec(X, rows_per_block=8, **kw)
    np.testing.assert_allclose(vec, ref(V[:, 0]), rtol=1e-12)
    np.testing.assert_allclose(mat, ref(V), rtol=1e-12)
    assert helpers.is_sharded(vec, 0)
    assert helpers.is_sharded(mat, 0)
    # Each matvec gathers X (n d numbers; XLA shares it between the two
    # matvecs) and its vector (n or n m), nothing else.
    assert sorted(helpers.all_gather_shapes(compiled.as_text())) == [N, N * D, N * 3]


def test_log_marginal_likelihood_and_gradient_equal_the_unsharded(data):
    X, y, p = data
    key = jax.random.PRNGKey(3)
    opts = {"key": key, "num_probes": 4, "depth": 8, "precond_rank": 8, "rtol": 1e-10}
    opts["rows_per_block"] = 8

    def lml(p, X, y, mesh):
        return gp.log_marginal_likelihood(p, X, y, mesh=mesh, **opts).value

    grad = jax.value_and_grad(lml)
    v1, g1 = jax.jit(lambda p, X, y: grad(p, X, y, None))(p, X, y)
    sX, sy = helpers.shard(X, P("data", None)), helpers.shard(y)
    v4, g4 = jax.jit(lambda p, X, y: grad(p, X, y, helpers.mesh()))(p, sX, sy)
    np.testing.assert_allclose(v4, v1, rtol=1e-10)
    for k in p:
        np.testing.assert_allclose(g4[k], g1[k], rtol=1e-8, err_msg=k)


def test_predict_equals_the_unsharded(data):
    X, y, p = data
    Xs = jnp.array([[0.2, 0.4], [0.7, 0.1]])
    # A tight tolerance: CG's rounding differs between the runs by ~ rtol.
    opts = {"precond_rank": 0, "rows_per_block": 8, "chunk_size": 2, "rtol": 1e-12}
    one = gp.predict(p, X, y, Xs, **opts)
    sX, sy = helpers.shard(X, P("data", None)), helpers.shard(y)
    four = gp.predict(p, sX, sy, Xs, mesh=helpers.mesh(), **opts)
    np.testing.assert_allclose(four.mean, one.mean, rtol=1e-8)
    np.testing.assert_allclose(four.variance, one.variance, rtol=1e-8)


def test_a_mesh_that_does_not_divide_the_rows_is_an_error(data):
    X, y, p = data
    with pytest.raises(ValueError, match="4 devices, which do not divide the 62 rows"):
        gp.log_marginal_likelihood(
            p,
            X[:62],
            y[:62],
            key=jax.random.PRNGKey(0),
            precond_rank=8,
            mesh=helpers.mesh(),
        )


def test_fit_and_sample_prior_equal_the_unsharded(data):
    X, y, p = data
    sX, sy = helpers.shard(X, P("data", None)), helpers.shard(y)
    opts = {"key": jax.random.PRNGKey(5), "num_steps": 3, "progress": False}
    opts |= {"num_probes": 4, "depth": 8, "precond_rank": 8, "rows_per_block": 8}
    one = gp.fit(p, X, y, **opts)
    four = gp.fit(p, sX, sy, mesh=helpers.mesh(), **opts)
    np.testing.assert_allclose(four.losses, one.losses, rtol=1e-10)
    for k in p:
        np.testing.assert_allclose(four.params[k], one.params[k], rtol=1e-8, err_msg=k)
    kw = {"key": jax.random.PRNGKey(6), "num_samples": 2, "depth": 20, "rows_per_block": 8}
    one = gp.sample_prior(p, X, **kw)
    four = gp.sample_prior(p, sX, mesh=helpers.mesh(), **kw)
    np.testing.assert_allclose(four.value, one.value, rtol=1e-8, atol=1e-10)
    assert helpers.is_sharded(four.value, 1)
