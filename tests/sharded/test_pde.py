"""`pde.diffusion(k, mesh=)`, `pde.solve(..., operator=pde.Diffusion(mesh=))`.

The stencil with a halo exchange equals the unsharded one.

The grid's rows are split over 4 host devices; each device exchanges one
row of `u` and of `k` with each neighbour (`jax.lax.ppermute`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from matfree import pde
from tests.sharded import helpers

helpers.require_mesh()

SHAPE = (16, 8)


def test_matvec_solution_and_gradient_equal_the_unsharded():
    k = jnp.exp(jnp.sin(jnp.arange(128.0)).reshape(SHAPE))
    u0 = jnp.cos(jnp.arange(128.0) / 5).reshape(SHAPE)

    def program(k, u0, mesh):
        op = pde.Diffusion(mesh=mesh)
        u = pde.solve(k, u0, 1e-3, depth=12, num_substeps=2, operator=op).value
        return jnp.sum(u**2), (pde.diffusion(k, mesh=mesh)(u0), u)

    def both(mesh):
        def f(k, u0):
            grad, (Au, u) = jax.grad(lambda k: program(k, u0, mesh), has_aux=True)(k)
            return Au, u, grad

        return jax.jit(f)

    one = both(None)(k, u0)
    sk, su = helpers.shard(k, P("data", None)), helpers.shard(u0, P("data", None))
    f4 = both(helpers.mesh())
    compiled = f4.lower(sk, su).compile()
    four = compiled(sk, su)
    for name, a, b in zip(("matvec", "solution", "gradient"), four, one, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)
        assert helpers.is_sharded(a, 0), name
    # A halo exchange, not a gather.
    text = compiled.as_text()
    assert helpers.all_gather_shapes(text) == []
    assert "collective-permute" in text


def test_the_mesh_must_divide_the_rows():
    k = jnp.ones((10, 4))
    with pytest.raises(ValueError, match="one axis whose size divides the grid's rows"):
        pde.diffusion(k, mesh=helpers.mesh())
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        pde.diffusion(k, mesh="data")
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        pde.Diffusion(mesh="data")
    op = pde.Diffusion(mesh=helpers.mesh())
    with pytest.raises(ValueError, match="one axis whose size divides the grid's rows"):
        pde.solve(k, k, 0.1, depth=4, operator=op)
