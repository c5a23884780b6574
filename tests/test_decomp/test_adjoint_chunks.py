"""The adjoint's parameter VJP in chunks of steps equals the one-shot contraction."""

import jax
import jax.numpy as jnp
import pytest

from matfree import _dense, _flat, decomp, operators
from matfree.decomp import _krylov

SHAPE = (3, 4)  # a 12-point stencil: full depth is cheap and exact


def _spectral(scale, v):
    lap = operators.laplace_2d(SHAPE, scale=scale, shift=0.5)
    res = decomp.lanczos(lap, v, depth=v.size)
    return res.init_norm**2 * _dense.funm_sym(jnp.log, res.tridiag())[0, 0]


def _dense_spectral(scale, v):
    lap = operators.laplace_2d(SHAPE, scale=scale, shift=0.5)
    A = jax.vmap(lap, out_axes=1)(jnp.eye(v.size, dtype=v.dtype))
    w, V = jnp.linalg.eigh(A)
    return v @ (V * jnp.log(w)) @ V.T @ v


@pytest.mark.parametrize(
    ("dtype", "sizes", "rtol"),
    [(jnp.float64, (1, 5, 12), 1e-12), (jnp.float32, (5, 12), 1e-5)],
)
def test_chunked_parameter_vjp_equals_one_shot_and_dense(monkeypatch, dtype, sizes, rtol):
    # k = 12 steps; 5 does not divide 12 (three chunks, the last one padded).
    v = jax.random.normal(jax.random.PRNGKey(0), (12,), dtype)
    scale = jnp.asarray(0.7, dtype)
    grads = {}
    for size in sizes:
        monkeypatch.setattr(_krylov, "chunk_steps", lambda *_, size=size: size)
        grads[size] = jax.grad(_spectral, (0, 1))(scale, v)
    one_shot = grads[12]
    for size in sizes:
        for got, want in zip(grads[size], one_shot, strict=True):
            assert got.dtype == dtype
            assert jnp.allclose(got, want, rtol=rtol, atol=rtol * jnp.max(jnp.abs(want)))
    ref = jax.grad(_dense_spectral, (0, 1))(
        scale.astype(jnp.float64), v.astype(jnp.float64)
    )
    tol = 1e-8 if dtype == jnp.float64 else 1e-3
    for got, want in zip(one_shot, ref, strict=True):
        assert jnp.allclose(got, want, rtol=tol, atol=tol * jnp.max(jnp.abs(want)))


def test_chunked_arnoldi_parameter_vjp_equals_dense(monkeypatch):
    n = 12
    w = jax.random.normal(jax.random.PRNGKey(3), (n,))
    v = jax.random.normal(jax.random.PRNGKey(2), (n,))
    upper = jnp.diag(jnp.ones(n - 1), 1)  # non-symmetric

    def op(scale):
        lap = operators.laplace_2d(SHAPE, scale=scale)
        return lambda u: -lap(u) + upper @ u

    def via_arnoldi(scale, v):
        res = decomp.arnoldi(op(scale), v, depth=n)
        return w @ (
            res.init_norm * res.basis.T @ jax.scipy.linalg.expm(res.hessenberg)[:, 0]
        )

    def dense(scale, v):
        A = jax.vmap(op(scale), out_axes=1)(jnp.eye(n))
        return w @ jax.scipy.linalg.expm(A) @ v

    monkeypatch.setattr(_krylov, "chunk_steps", lambda *_: 5)
    got = jax.grad(via_arnoldi, (0, 1))(0.3, v)
    want = jax.grad(dense, (0, 1))(0.3, v)
    for a, b in zip(got, want, strict=True):
        assert jnp.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_chunk_rule_one_chunk_for_kernels_several_for_stencils():
    # Traced only (jaxprs of the matvec's VJP), nothing compiled.
    x = jax.random.uniform(jax.random.PRNGKey(0), (256, 2))
    depth = 20

    def steps(make, n):
        out = []

        def f(theta):
            flat, op = _flat.flatten(make(theta), jnp.ones(n), name="v0")
            active = tuple(jnp.ndim(p) == 0 for p in op.params)  # the scalar theta
            out.append(
                _krylov.chunk_steps(op.fn, op.params, active, 1, depth, n, flat.dtype)
            )
            return theta

        jax.make_jaxpr(f)(1.0)
        return out[0]

    kernel = steps(
        lambda ell: operators.kernel_matvec(x, lengthscale=ell, rows_per_block=64), 256
    )
    stencil = steps(lambda s: operators.laplace_2d((64, 64), scale=s), 4096)
    assert kernel == depth
    assert 1 <= stencil < depth


def test_gradient_with_a_parameter_that_is_not_differentiated():
    # The matrix is a traced parameter of the operator (an argument of jit)
    # but only the scalar is differentiated: the chunk rule must pair each
    # parameter with its own shape (it once paired the scalar with the matrix).
    n = 12
    key1, key2 = jax.random.split(jax.random.PRNGKey(5))
    B = jax.random.normal(key1, (n, n))
    M = B @ B.T / n + jnp.eye(n)
    v = jax.random.normal(key2, (n,))

    def via_lanczos(s, M):
        res = decomp.lanczos(lambda u: M @ u + s * u, v, depth=n)
        return res.init_norm**2 * _dense.funm_sym(jnp.log, res.tridiag())[0, 0]

    def dense(s, M):
        w, V = jnp.linalg.eigh(M + s * jnp.eye(n))
        return v @ (V * jnp.log(w)) @ V.T @ v

    got = jax.jit(jax.grad(via_lanczos))(0.5, M)
    want = jax.grad(dense)(0.5, M)
    assert jnp.allclose(got, want, rtol=1e-9)
