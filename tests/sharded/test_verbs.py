"""Every Krylov verb on a sharded vector and operator equals the single-device result.

A stencil operator (`jnp.roll`) and a dense matrix sharded by rows, vectors
sharded over a 1-D mesh "data" of 4 host devices, under `jit`: the values
and gradients equal the unsharded run to rounding, the n-sized outputs stay
sharded, and the compiled program gathers no Krylov basis (the stencil needs
no all-gather at all; the dense matvec gathers the n-vector it multiplies).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import matfree
from matfree import decomp, eig, stochtrace
from tests.sharded import helpers

helpers.require_mesh()

N = 128
DEPTH = 10


def stencil(diag):
    def mv(v):
        return diag * v - 0.5 * (jnp.roll(v, 1) + jnp.roll(v, -1))

    return mv


def verbs(matvec, b):
    """One program with every verb (one compilation for all of them)."""
    key = jax.random.PRNGKey(0)
    out = {}
    for method in ("cg", "minres", "gmres", "bicgstab", "gcr", "lsqr"):
        out[method] = matfree.solve(matvec, b, method=method, rtol=1e-10).value
    out["lanczos"] = decomp.lanczos(matvec, b, depth=DEPTH).basis
    out["arnoldi"] = decomp.arnoldi(matvec, b, depth=DEPTH).basis
    out["funm_action"] = matfree.funm_action(jnp.log, matvec, b, depth=DEPTH).value
    out["exp_action"] = matfree.exp_action(matvec, -0.1 * b, depth=DEPTH).value
    out["logdet"] = matfree.logdet(matvec, b, key=key, depth=DEPTH, num_probes=4).value
    out["sqrt_action"] = matfree.sqrt_action(matvec, b, depth=DEPTH).value
    out["trace"] = matfree.trace(matvec, b, key=key, num_probes=4).value
    out["trace_funm"] = matfree.trace_funm(
        jnp.sqrt, matvec, b, key=key, depth=DEPTH, num_probes=4
    ).value
    out["trace_hutchpp"] = matfree.trace(
        matvec, b, key=key, num_probes=6, method="hutch++"
    ).value
    out["diagonal"] = stochtrace.diagonal(matvec, b, key=key, num_probes=4).value
    density = eig.spectral_density(matvec, b, key=key, depth=DEPTH, num_probes=2)
    out["density_nodes"], out["density_weights"] = density.nodes, density.weights
    # Close eigenvalues: not converged at this depth, the same in both runs.
    eigs = eig.extreme(matvec, b, num_eigenpairs=2, depth=20, throw=False)
    out["eig_status"] = eigs.status
    out["eigenvalues"] = eigs.eigenvalues
    # Eigenvectors up to sign.
    out["eigenvectors"] = eigs.eigenvectors * jnp.sign(eigs.eigenvectors[:, :1])
    return out


def losses(diag, b):
    mv = stencil(diag)
    key = jax.random.PRNGKey(1)
    ld = matfree.logdet(mv, b, key=key, depth=DEPTH, num_probes=4).value
    x = matfree.solve(mv, b, method="cg", rtol=1e-10).value
    s = matfree.sqrt_action(mv, b, depth=DEPTH).value
    tf = matfree.trace_funm(jnp.sqrt, mv, b, key=key, depth=DEPTH, num_probes=4).value
    return ld + jnp.sum(x**2) + jnp.sum(s * b) + tf


@pytest.fixture(scope="module")
def problem():
    diag = 2.0 + jnp.linspace(0.0, 8.0, N)
    b = jnp.cos(0.3 * jnp.arange(N))
    return diag, b


@pytest.fixture(scope="module")
def stencil_runs(problem):
    diag, b = problem
    f = jax.jit(lambda d, b: verbs(stencil(d), b))
    compiled = f.lower(helpers.shard(diag), helpers.shard(b)).compile()
    return f(diag, b), compiled(helpers.shard(diag), helpers.shard(b)), compiled


def test_stencil_values_equal_the_single_device_values(stencil_runs):
    single, sharded, _ = stencil_runs
    for name, value in single.items():
        np.testing.assert_allclose(
            sharded[name], value, rtol=1e-10, atol=1e-12, err_msg=name
        )


def test_stencil_outputs_stay_sharded(stencil_runs):
    _, sharded, _ = stencil_runs
    vectors = ("cg", "minres", "gmres", "bicgstab", "gcr", "lsqr")
    vectors += ("funm_action", "exp_action", "sqrt_action")
    for name in (*vectors, "diagonal"):
        assert helpers.is_sharded(sharded[name], 0), name
    for name in ("lanczos", "arnoldi", "eigenvectors"):
        assert sharded[name].shape[1] == N
        assert helpers.is_sharded(sharded[name], 1), name


def test_stencil_program_gathers_nothing(stencil_runs):
    *_, compiled = stencil_runs
    assert helpers.all_gather_shapes(compiled.as_text()) == []


def test_gradients_equal_the_single_device_gradients(problem):
    diag, b = problem
    grad = jax.jit(jax.grad(losses, argnums=(0, 1)))
    sd, sb = helpers.shard(diag), helpers.shard(b)
    compiled = grad.lower(sd, sb).compile()
    single, sharded = grad(diag, b), compiled(sd, sb)
    for s, g in zip(sharded, single, strict=True):
        np.testing.assert_allclose(s, g, rtol=1e-10, atol=1e-12)
        assert helpers.is_sharded(s, 0)
    assert helpers.all_gather_shapes(compiled.as_text()) == []


def test_dense_row_sharded_matrix_gathers_only_the_vector(problem):
    diag, b = problem
    A = jnp.diag(diag) + 0.1 * jnp.cos(jnp.arange(N)[:, None] * jnp.arange(N) / N)
    A = A @ A.T / N + jnp.eye(N)

    def two_verbs(A, b):
        mv = lambda v: A @ v  # noqa: E731
        x = matfree.solve(mv, b, method="cg", rtol=1e-10).value
        return x, decomp.lanczos(mv, b, depth=DEPTH).basis

    f = jax.jit(two_verbs)
    sA, sb = helpers.shard(A, P("data", None)), helpers.shard(b)
    compiled = f.lower(sA, sb).compile()
    single, sharded = f(A, b), compiled(sA, sb)
    for s, v in zip(sharded, single, strict=True):
        np.testing.assert_allclose(s, v, rtol=1e-10, atol=1e-12)
    assert helpers.is_sharded(sharded[0], 0)
    assert helpers.is_sharded(sharded[1], 1)
    gathers = helpers.all_gather_shapes(compiled.as_text())
    # The matvec gathers the n-vector it multiplies; nothing basis-sized.
    assert gathers
    assert max(gathers) <= N


def test_float32_solve_and_lanczos_equal_the_single_device_run(problem):
    diag, b = (x.astype(jnp.float32) for x in problem)

    def two_verbs(d, b):
        x = matfree.solve(stencil(d), b, method="cg", rtol=1e-5).value
        return x, decomp.lanczos(stencil(d), b, depth=DEPTH).basis

    f = jax.jit(two_verbs)
    sd, sb = helpers.shard(diag), helpers.shard(b)
    compiled = f.lower(sd, sb).compile()
    single, sharded = f(diag, b), compiled(sd, sb)
    for s, v in zip(sharded, single, strict=True):
        assert s.dtype == jnp.float32
        np.testing.assert_allclose(s, v, rtol=1e-5, atol=1e-6)
    assert helpers.is_sharded(sharded[0], 0)
    assert helpers.is_sharded(sharded[1], 1)
    assert helpers.all_gather_shapes(compiled.as_text()) == []
