"""Complex operators in the trace estimators: `logdet`, `trace_funm`, `trace`, `diagonal`.

Hermitian positive definite operators for the Lanczos quadrature (real
tridiagonal, real estimates), general complex ones for `trace` and
`diagonal`. Values are compared with dense references (`slogdet`, `eigh`,
`jnp.trace`, `jnp.diag`) with unit probes at full depth (exact up to
rounding) and, for random probes, with the exact quadratic forms of the same
probes. Gradients of the real-valued estimates are compared with autodiff
through the dense reference on Hermitian directions (`(G + G^H) / 2`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import matfree
from matfree import stochtrace
from matfree._estimators import sample_probes

N = 12


def _problem(dtype=jnp.complex128, n=N, seed=1):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    hpd = M @ M.conj().T / n + np.eye(n)
    general = M / np.sqrt(n) + 2 * np.eye(n)
    return jnp.asarray(hpd, dtype), jnp.asarray(general, dtype)


HPD, GEN = _problem()
LIKE = jnp.zeros(N, jnp.complex128)


def _herm(X):
    return (X + X.conj().T) / 2


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _logdet(A, gradient, probes="unit", key=None, num_probes=N):
    return matfree.logdet(
        lambda v: A @ v,
        jnp.zeros(A.shape[0], A.dtype),
        key=key,
        depth=A.shape[0],
        num_probes=num_probes,
        probes=probes,
        gradient=gradient,
    )


def _dense_logdet(A):
    return jnp.linalg.slogdet(A)[1]


def _dense_trace_f(f, A):
    w, V = jnp.linalg.eigh(A)
    return jnp.real(jnp.trace((V * f(w)) @ V.conj().T))


@pytest.mark.parametrize("gradient", ["adjoint", "autodiff", "hutchinson"])
def test_logdet_value_unit_probes(gradient):
    est = _logdet(HPD, gradient)
    assert est.value.dtype == jnp.float64
    assert abs(float(est.value - _dense_logdet(HPD))) < 1e-12 * abs(
        float(_dense_logdet(HPD))
    )


def test_logdet_random_probes_match_exact_quadratic_forms():
    """Random real probes: each sample is `z^H log(A) z` (Gauss quadrature, full depth)."""
    key = jax.random.PRNGKey(3)
    est = _logdet(HPD, "autodiff", probes="rademacher", key=key, num_probes=8)
    Z = sample_probes(key, 8, N, probes="rademacher", dtype=jnp.complex128)
    w, V = jnp.linalg.eigh(HPD)
    logA = (V * jnp.log(w)) @ V.conj().T
    exact = jnp.real(jnp.einsum("in,nm,im->i", Z.conj(), logA, Z))
    assert _rel(est.samples, exact) < 1e-12
    assert abs(float(est.value - jnp.mean(exact))) < 1e-12 * abs(float(jnp.mean(exact)))
    assert est.std_error.dtype == jnp.float64


def test_trace_funm_complex_value():
    def f(x):
        return jnp.exp(-x / 4)

    est = matfree.trace_funm(f, lambda v: HPD @ v, LIKE, key=None, depth=N,
                             num_probes=N, probes="unit")  # fmt: skip
    ref = _dense_trace_f(f, HPD)
    assert abs(float(est.value - ref)) < 1e-12 * abs(float(ref))


@pytest.mark.parametrize(("gradient", "tol"), [("autodiff", 1e-10), ("hutchinson", 1e-5)])
def test_logdet_gradient(gradient, tol):
    G = jax.grad(lambda A: _logdet(A, gradient).value)(HPD)
    G_ref = jax.grad(_dense_logdet)(HPD)
    assert _rel(_herm(G), _herm(G_ref)) < tol


def test_logdet_gradient_closure_check_grads():
    """`check_grads` on a real parameter of a complex Hermitian operator."""
    E = _herm(GEN)

    def loss(s):
        return _logdet(HPD + s * E, "autodiff").value

    check_grads(loss, (jnp.float64(0.1),), order=1, modes=["fwd", "rev"])
    d_ref = jax.grad(lambda s: _dense_logdet(HPD + s * E))(0.1)
    d_hutch = jax.grad(lambda s: _logdet(HPD + s * E, "hutchinson").value)(0.1)
    assert abs(float(d_hutch - d_ref)) < 1e-5 * abs(float(d_ref))
    # Forward mode works with the Hutchinson gradient too.
    _, t = jax.jvp(lambda s: _logdet(HPD + s * E, "hutchinson").value, (0.1,), (1.0,))
    assert abs(float(t - d_ref)) < 1e-5 * abs(float(d_ref))


def test_logdet_hutchinson_gradient_random_probes_unbiased():
    """The Hutchinson gradient `mean Re (A^{-1} z)^H dA z` within its Monte-Carlo error."""
    E = _herm(GEN)
    key = jax.random.PRNGKey(0)
    d = jax.grad(lambda s: _logdet(HPD + s * E, "hutchinson", "rademacher", key, 64).value)(
        0.0
    )
    d_ref = jax.grad(lambda s: _dense_logdet(HPD + s * E))(0.0)
    # The exact variance of the estimator with Rademacher probes.
    B = jnp.linalg.solve(HPD, E)
    Bs = (B + B.T) / 2  # z^T B z for real z sees only the (complex) symmetric part
    var = 2 * (jnp.sum(jnp.abs(jnp.real(Bs)) ** 2) - jnp.sum(jnp.real(jnp.diag(Bs)) ** 2))
    assert jnp.all(jnp.abs(d - d_ref) < 5 * jnp.sqrt(var / 64))


def test_logdet_hutchinson_gradient_real_dtypes():
    """`gradient="hutchinson"` is new for real operators too; `trace_funm` lacks it."""
    A = jnp.real(HPD) + 0.0
    G = jax.grad(lambda A: _logdet(A, "hutchinson").value)(A)
    G_ref = jax.grad(_dense_logdet)(A)
    assert G.dtype == jnp.float64
    assert _rel((G + G.T) / 2, (G_ref + G_ref.T) / 2) < 1e-5
    with pytest.raises(ValueError, match="`gradient='hutchinson'` is not available"):
        matfree.trace_funm(jnp.log, lambda v: A @ v, jnp.zeros(N), key=None, depth=N,
                           num_probes=N, probes="unit", gradient="hutchinson")  # fmt: skip


def test_logdet_adjoint_gradient_raises_for_complex():
    with pytest.raises(NotImplementedError, match='pass `gradient="autodiff"`'):
        jax.grad(lambda A: _logdet(A, "adjoint").value)(HPD)


def test_sketch_methods_refuse_complex():
    for method in ("hutch++", "xtrace"):
        with pytest.raises(ValueError, match='For complex operators use `method="hutch'):
            matfree.logdet(lambda v: HPD @ v, LIKE, key=jax.random.PRNGKey(0), depth=4,
                           num_probes=6, method=method)  # fmt: skip
        with pytest.raises(ValueError, match="supports real dtypes only; got complex128"):
            matfree.trace(lambda v: GEN @ v, LIKE, key=jax.random.PRNGKey(0),
                          num_probes=6, method=method)  # fmt: skip


def test_logdet_complex64():
    hpd, _ = _problem(jnp.complex64)
    ref = _dense_logdet(HPD)
    for gradient in ("autodiff", "hutchinson"):
        est = _logdet(hpd, gradient)
        assert est.value.dtype == jnp.float32
        assert abs(float(est.value) - float(ref)) < 1e-5 * abs(float(ref))
    G = jax.grad(lambda A: _logdet(A, "autodiff").value)(hpd)
    assert G.dtype == jnp.complex64
    assert _rel(_herm(G), _herm(jax.grad(_dense_logdet)(HPD))) < 1e-4


def test_trace_and_diagonal_complex():
    est = matfree.trace(lambda v: GEN @ v, LIKE, key=None, num_probes=N, probes="unit")
    assert est.value.dtype == jnp.complex128
    assert abs(complex(est.value - jnp.trace(GEN))) < 1e-13 * abs(complex(jnp.trace(GEN)))
    key = jax.random.PRNGKey(2)
    est = matfree.trace(lambda v: GEN @ v, LIKE, key=key, num_probes=400)
    assert est.std_error.dtype == jnp.float64
    assert abs(complex(est.value - jnp.trace(GEN))) < 4 * float(est.std_error)
    # The same probes' quadratic forms z^T A z, exactly.
    Z = sample_probes(key, 400, N, dtype=jnp.complex128)
    assert jnp.all(jnp.imag(Z) == 0)
    exact = jnp.mean(jnp.einsum("in,nm,im->i", Z, GEN, Z))
    assert abs(complex(est.value - exact)) < 1e-13 * abs(complex(exact))
    d = stochtrace.diagonal(lambda v: GEN @ v, LIKE, key=None, num_probes=N, probes="unit")
    assert _rel(d.value, jnp.diag(GEN)) < 1e-14
    d = stochtrace.diagonal(lambda v: GEN @ v, LIKE, key=key, num_probes=200)
    assert d.std_error.dtype == jnp.float64
    assert jnp.all(jnp.abs(d.value - jnp.diag(GEN)) < 5 * d.std_error)


def test_trace_complex_gradient_and_complex64():
    def loss(A):
        est = matfree.trace(lambda v: A @ v, jnp.zeros(N, A.dtype), key=None,
                            num_probes=N, probes="unit")  # fmt: skip
        return jnp.abs(est.value) ** 2

    G = jax.grad(loss)(GEN)
    G_ref = jax.grad(lambda A: jnp.abs(jnp.trace(A)) ** 2)(GEN)
    assert _rel(G, G_ref) < 1e-13
    gen64 = GEN.astype(jnp.complex64)
    est = matfree.trace(lambda v: gen64 @ v, jnp.zeros(N, jnp.complex64), key=None,
                        num_probes=N, probes="unit")  # fmt: skip
    assert est.value.dtype == jnp.complex64
    assert abs(complex(est.value - jnp.trace(GEN))) < 1e-5 * abs(complex(jnp.trace(GEN)))


HERM = _herm(GEN) - 2 * jnp.eye(N)  # Hermitian, indefinite
V0 = jnp.asarray(np.random.default_rng(2).normal(size=(2, N, 2)) @ np.array([1, 1j]))


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_eig_extreme_hermitian(which, block):
    """Real eigenvalues; complex eigenvectors up to phase: `|<u, u_ref>| = 1`."""
    v0, depth = (V0, N // 2) if block else (V0[0], N)
    res = matfree.eig.extreme(lambda v: HERM @ v, v0, num_eigenpairs=3, depth=depth,
                              which=which, block=block)  # fmt: skip
    w, U = jnp.linalg.eigh(HERM)
    if which == "largest":
        w, U = w[::-1], U[:, ::-1]
    assert res.eigenvalues.dtype == jnp.float64
    assert res.eigenvectors.dtype == jnp.complex128
    assert jnp.max(jnp.abs(res.eigenvalues - w[:3])) < 1e-12
    overlap = jnp.abs(jnp.sum(U[:, :3].conj().T * res.eigenvectors, axis=1))
    assert jnp.max(jnp.abs(overlap - 1)) < 1e-10
    assert bool(jnp.all(res.converged))


def test_eig_extreme_gradient_and_complex64():
    def top(A, gradient):
        v0 = jnp.ones(N, A.dtype)
        res = matfree.eig.extreme(lambda v: A @ v, v0, num_eigenpairs=1, depth=N,
                                  gradient=gradient)  # fmt: skip
        return res.eigenvalues[0]

    G = jax.grad(top)(HERM, "autodiff")
    G_ref = jax.grad(lambda A: jnp.linalg.eigh(A)[0][-1])(HERM)
    assert _rel(_herm(G), _herm(G_ref)) < 1e-10
    with pytest.raises(NotImplementedError, match='pass `gradient="autodiff"`'):
        jax.grad(top)(HERM, "adjoint")
    lam = top(HERM.astype(jnp.complex64), "autodiff")
    assert lam.dtype == jnp.float32
    assert abs(float(lam) - float(jnp.linalg.eigh(HERM)[0][-1])) < 1e-5


def test_spectral_density_hermitian():
    res = matfree.eig.spectral_density(lambda v: HERM @ v, LIKE, key=jax.random.PRNGKey(0),
                                       depth=N, num_probes=4)  # fmt: skip
    assert res.density.dtype == res.nodes.dtype == jnp.float64
    w = jnp.linalg.eigh(HERM)[0]
    assert jnp.max(jnp.abs(jnp.sort(res.nodes, axis=1) - w)) < 1e-12  # full depth
    assert abs(float(jnp.sum(res.weights)) / 4 - 1) < 1e-12  # |z|^2 = n (Rademacher)
