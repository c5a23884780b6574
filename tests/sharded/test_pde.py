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

    velocity = jnp.stack([jnp.cos(k), jnp.sin(3 * k)])

    def program(k, u0, mesh):
        op = pde.Diffusion(mesh=mesh)
        u = pde.solve(k, u0, 1e-3, depth=12, num_substeps=2, operator=op).value
        # The non-symmetric operator (Arnoldi) with its own halo of b_y.
        op = pde.AdvectionDiffusion(velocity, mesh=mesh)
        w = pde.solve(k, u0, 1e-3, depth=12, num_substeps=2, operator=op).value
        Au = pde.diffusion(k, mesh=mesh)(u0)
        Bu = pde.advection_diffusion(k, velocity, mesh=mesh)(u0)
        return jnp.sum(u**2) + jnp.sum(w * u0), (Au, Bu, u, w)

    def both(mesh):
        def f(k, u0):
            grad, aux = jax.grad(lambda k: program(k, u0, mesh), has_aux=True)(k)
            return (*aux, grad)

        return jax.jit(f)

    one = both(None)(k, u0)
    sk, su = helpers.shard(k, P("data", None)), helpers.shard(u0, P("data", None))
    f4 = both(helpers.mesh())
    compiled = f4.lower(sk, su).compile()
    four = compiled(sk, su)
    names = ("matvec", "advection matvec", "solution", "advection solution", "gradient")
    for name, a, b in zip(names, four, one, strict=True):
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
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        pde.AdvectionDiffusion(jnp.zeros((2, 10, 4)), mesh=4)
