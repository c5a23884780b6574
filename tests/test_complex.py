"""Complex vectors and operators: values and gradients against dense references.

The same kinds of cases as the real tests: Hermitian positive definite and
indefinite operators (CG, MINRES, Lanczos), general complex ones (GMRES,
BiCGStab, GCR, LSQR, Arnoldi), `expm(-i t H) v`, in complex128 with complex64
separately. Gradients of real-valued losses follow JAX's convention for
complex cotangents and are compared with autodiff through the dense reference
(`jnp.linalg.solve`, `jax.scipy.linalg.expm`, `eigh`) and with
`jax.test_util.check_grads`. Gradients w.r.t. a Hermitian operator's matrix
are compared on Hermitian directions only (the projection `(G + G^H) / 2`
under JAX's pairing `Re sum(G * E)`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import matfree
from matfree import decomp
from matfree.status import Status

N = 12
T_EXP = 0.7


def _problem(dtype=jnp.complex128, n=N, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    hpd = M @ M.conj().T / n + np.eye(n)
    herm = (M + M.conj().T) / 4  # Hermitian, indefinite
    general = M / np.sqrt(n) + 2 * np.eye(n)
    v = rng.normal(size=n) + 1j * rng.normal(size=n)
    c = rng.normal(size=n) + 1j * rng.normal(size=n)
    return [jnp.asarray(x, dtype) for x in (hpd, herm, general, v, c)]


HPD, HERM, GEN, V, C = _problem()


def _herm(X):
    return (X + X.conj().T) / 2


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _loss(x, c=C):
    """A real-valued loss of a complex vector (neither holomorphic nor real-linear)."""
    return jnp.real(jnp.vdot(c, x)) + jnp.sum(jnp.abs(x - 0.3) ** 2)


CASES = {  # method: (operator, dense reference x = ref(A, b))
    "cg": (HPD, jnp.linalg.solve),
    "minres": (HERM, jnp.linalg.solve),
    "gmres": (GEN, jnp.linalg.solve),
    "bicgstab": (GEN, jnp.linalg.solve),
    "gcr": (GEN, jnp.linalg.solve),
    "lsqr": (GEN, jnp.linalg.solve),
}


def _solve(A, b, method, **kw):
    return matfree.solve(lambda x: A @ x, b, method=method, rtol=1e-12, **kw).value


@pytest.mark.parametrize("method", list(CASES))
def test_solve_value_and_gradient(method):
    A, ref = CASES[method]
    x = _solve(A, V, method)
    assert x.dtype == jnp.complex128
    assert _rel(x, ref(A, V)) < 1e-10

    def loss(A, b):
        return _loss(_solve(A, b, method))

    gA, gb = jax.grad(loss, argnums=(0, 1))(A, V)
    rA, rb = jax.grad(lambda A, b: _loss(ref(A, b)), argnums=(0, 1))(A, V)
    if method in ("cg", "minres"):  # only Hermitian directions are meaningful
        gA, rA = _herm(gA), _herm(rA)
    assert _rel(gA, rA) < 1e-9
    assert _rel(gb, rb) < 1e-9


def test_solve_check_grads_and_autodiff():
    # check_grads (finite differences in complex directions) on b and A.
    check_grads(lambda b: _loss(_solve(GEN, b, "gmres")), (V,), order=1, modes=["rev"])
    check_grads(lambda s: _loss(_solve(HPD + s * GEN, V, "gmres")), (0.1,), 1, ["rev"])
    # gradient="autodiff" agrees with the implicit rule.
    g1 = jax.grad(lambda b: _loss(_solve(HPD, b, "cg")))(V)
    g2 = jax.grad(lambda b: _loss(_solve(HPD, b, "cg", gradient="autodiff")))(V)
    assert _rel(g1, g2) < 1e-9
    # forward mode through the implicit rule
    _, dx = jax.jvp(lambda b: _solve(GEN, b, "gmres"), (V,), (C,))
    assert _rel(dx, jnp.linalg.solve(GEN, C)) < 1e-10


def test_solve_rectangular_lsqr():
    rng = np.random.default_rng(3)
    R = jnp.asarray(rng.normal(size=(16, N)) + 1j * rng.normal(size=(16, N)))
    b = jnp.asarray(rng.normal(size=16) + 1j * rng.normal(size=16))
    x0 = jnp.zeros(N, jnp.complex128)

    def lsq(R, b):
        sol = matfree.solve(lambda x: R @ x, b, method="lsqr", x0=x0, rtol=1e-12)
        return sol.value

    ref = jnp.linalg.lstsq(R, b)[0]
    assert _rel(lsq(R, b), ref) < 1e-9
    g = jax.grad(lambda R, b: _loss(lsq(R, b)), argnums=(0, 1))(R, b)
    r = jax.grad(lambda R, b: _loss(jnp.linalg.pinv(R) @ b), argnums=(0, 1))(R, b)
    assert _rel(g[0], r[0]) < 1e-8
    assert _rel(g[1], r[1]) < 1e-8


def test_solve_jit_vmap_batched():
    B = jnp.stack([V, C, V * 1j])
    ref = jnp.linalg.solve(HPD, B.T).T

    @jax.jit
    def batched(B):
        return matfree.solve(lambda x: HPD @ x, B, rtol=1e-12, batched=True).value

    assert _rel(batched(B), ref) < 1e-10
    mapped = jax.jit(jax.vmap(lambda b: _solve(HPD, b, "cg")))(B)
    assert _rel(mapped, ref) < 1e-10


def test_solve_complex64():
    hpd, _, gen, v, _ = _problem(jnp.complex64)
    for method, A in (("cg", hpd), ("minres", hpd), ("gmres", gen), ("bicgstab", gen)):
        sol = matfree.solve(lambda x, A=A: A @ x, v, method=method)
        assert sol.value.dtype == jnp.complex64
        ref = np.linalg.solve(np.asarray(A, np.complex128), np.asarray(v, np.complex128))
        assert _rel(sol.value.astype(jnp.complex128), jnp.asarray(ref)) < 1e-3
        assert sol.residual_norm.dtype == jnp.float32


def test_lanczos_hermitian():
    res = decomp.lanczos(lambda x: HERM @ x, V, depth=N)
    Q, T = res.basis, res.tridiag()
    assert res.diag.dtype == jnp.float64 and Q.dtype == jnp.complex128
    eN = jnp.eye(N)[-1]
    assert jnp.linalg.norm(HERM @ Q.T - Q.T @ T - jnp.outer(res.residual, eN)) < 1e-12
    assert jnp.linalg.norm(Q.conj() @ Q.T - jnp.eye(N)) < 1e-12
    assert jnp.allclose(jnp.linalg.eigvalsh(T), jnp.linalg.eigvalsh(HERM), atol=1e-12)
    assert jnp.allclose(Q[0], V / jnp.linalg.norm(V))

    def loss(A, grad):
        r = decomp.lanczos(lambda x: A @ x, V, depth=4, gradient=grad)
        return jnp.sum(r.diag**2) + jnp.sum(r.offdiag)

    check_grads(lambda A: loss(A, "autodiff"), (HERM,), order=1, modes=["rev"])
    with pytest.raises(NotImplementedError, match=r"decomp\.lanczos` supports real dtypes"):
        jax.grad(loss)(HERM, "adjoint")


def test_arnoldi_general():
    k = 8
    res = decomp.arnoldi(lambda x: GEN @ x, V, depth=k)
    Q, H = res.basis, res.hessenberg
    assert H.dtype == jnp.complex128
    ek = jnp.eye(k)[-1]
    assert jnp.linalg.norm(GEN @ Q.T - Q.T @ H - jnp.outer(res.residual, ek)) < 1e-12
    assert jnp.linalg.norm(Q.conj() @ Q.T - jnp.eye(k)) < 1e-12
    assert jnp.allclose(H, Q.conj() @ GEN @ Q.T, atol=1e-12)

    def loss(A, grad):
        r = decomp.arnoldi(lambda x: A @ x, V, depth=4, gradient=grad)
        return jnp.sum(jnp.abs(r.hessenberg) ** 2)

    check_grads(lambda A: loss(A, "autodiff"), (GEN,), order=1, modes=["rev"])
    with pytest.raises(NotImplementedError, match='gradient="autodiff"'):
        jax.grad(loss)(GEN, "adjoint")


def _schroedinger_ref(H, v, t):
    return jax.scipy.linalg.expm(-1j * t * H) @ v


def _exp_arnoldi(H, v, t, **kw):
    return matfree.exp_action(lambda x: -1j * (H @ x), v, t=t, depth=N, **kw).value


def _exp_lanczos(H, v, t, **kw):
    f = lambda lam: jnp.exp(-1j * t * lam)  # noqa: E731
    return matfree.funm_action(f, lambda x: H @ x, v, depth=N, **kw).value


@pytest.mark.parametrize("path", [_exp_arnoldi, _exp_lanczos])
def test_schroedinger_value_and_gradient(path):
    ref = _schroedinger_ref(HERM, V, T_EXP)
    y = path(HERM, V, T_EXP)
    assert _rel(y, ref) < 1e-12
    # the norm is conserved (unitary propagator)
    assert abs(jnp.linalg.norm(y) - jnp.linalg.norm(V)) < 1e-12

    def loss(H, v, t, fn):
        return _loss(fn(H, v, t))

    # t is an argument of exp_action; for funm_action it is a constant in `f`.
    args = (0, 1, 2) if path is _exp_arnoldi else (0, 1)
    g = jax.grad(loss, argnums=args)(HERM, V, T_EXP, path)
    r = jax.grad(loss, argnums=args)(HERM, V, T_EXP, _schroedinger_ref)
    assert _rel(_herm(g[0]), _herm(r[0])) < 1e-10
    assert _rel(g[1], r[1]) < 1e-10
    if path is _exp_arnoldi:
        assert abs(g[2] - r[2]) < 1e-10 * abs(r[2])
        check_grads(lambda v: loss(HERM, v, T_EXP, path), (V,), order=1, modes=["rev"])


def test_exp_and_funm_other_paths():
    # exp(t H) with Lanczos (symmetric=True), its gradient in t and H
    def loss(H, t):
        y = matfree.exp_action(lambda x: H @ x, V, t=t, depth=N, symmetric=True).value
        return _loss(y)

    def loss_ref(H, t):
        return _loss(jax.scipy.linalg.expm(t * H) @ V)

    g, r = jax.grad(loss, (0, 1))(HERM, T_EXP), jax.grad(loss_ref, (0, 1))(HERM, T_EXP)
    assert _rel(_herm(g[0]), _herm(r[0])) < 1e-10 and abs(g[1] - r[1]) < 1e-9
    # a general complex operator, uniform and adaptive substeps
    ref = jax.scipy.linalg.expm(T_EXP * GEN) @ V
    y = matfree.exp_action(lambda x: GEN @ x, V, t=T_EXP, depth=N).value
    assert _rel(y, ref) < 1e-12
    res = matfree.exp_action(
        lambda x: GEN @ x, V, t=T_EXP, depth=8, num_substeps=20, tol=1e-8
    )
    assert _rel(res.value, ref) < 1e-8 and res.error_estimate < 1e-8
    # funm_action on a general complex operator (Arnoldi), autodiff gradient
    f = matfree.funm_action(jnp.exp, lambda x: GEN @ x, V, depth=N, symmetric=False)
    assert _rel(f.value, jax.scipy.linalg.expm(GEN) @ V) < 1e-11

    def loss_gen(A, grad):
        fv = matfree.funm_action(
            jnp.exp, lambda x: A @ x, V, depth=N, symmetric=False, gradient=grad
        )
        return _loss(fv.value)

    g = jax.grad(loss_gen)(GEN, "autodiff")
    r = jax.grad(lambda A: _loss(jax.scipy.linalg.expm(A) @ V))(GEN)
    assert _rel(g, r) < 1e-9
    with pytest.raises(NotImplementedError, match=r"funm_action\(symmetric=False\)"):
        jax.grad(loss_gen)(GEN, "adjoint")
    # sqrt of a Hermitian positive definite operator
    w, S = jnp.linalg.eigh(HPD)
    sq = matfree.sqrt_action(lambda x: HPD @ x, V, depth=N).value
    assert _rel(sq, S @ (jnp.sqrt(w) * (S.conj().T @ V))) < 1e-11
    # a non-Hermitian operator with symmetric=True is reported
    bad = matfree.funm_action(jnp.exp, lambda x: GEN @ x, V, depth=4, throw=False)
    assert int(bad.status) == Status.NOT_SYMMETRIC


def test_exp_jit_vmap():
    Vs = jnp.stack([V, C])
    fn = jax.jit(jax.vmap(lambda v: _exp_arnoldi(HERM, v, T_EXP)))
    ref = jax.vmap(lambda v: _schroedinger_ref(HERM, v, T_EXP))(Vs)
    assert _rel(fn(Vs), ref) < 1e-12


def test_exp_complex64():
    _, herm, _, v, c = _problem(jnp.complex64)
    ref = _schroedinger_ref(herm.astype(jnp.complex128), v.astype(jnp.complex128), T_EXP)
    for path in (_exp_arnoldi, _exp_lanczos):
        y = path(herm, v, T_EXP)
        assert y.dtype == jnp.complex64
        assert _rel(y.astype(jnp.complex128), ref) < 1e-5
    # the gradient keeps the precision (two-sided Lanczos rule; the Arnoldi
    # rule is checked in complex128 above and compiles slowly)
    g = jax.grad(lambda v: _loss(_exp_lanczos(herm, v, T_EXP), c))(v)
    g_ref = jax.grad(lambda v: _loss(_schroedinger_ref(herm, v, T_EXP), c))(v)
    assert g.dtype == jnp.complex64
    assert _rel(g.astype(jnp.complex128), g_ref.astype(jnp.complex128)) < 1e-4


def test_dtype_errors():
    with pytest.raises(TypeError, match="`b` must have a floating or complex dtype"):
        matfree.solve(lambda x: x, jnp.ones(3, int))
    with pytest.raises(TypeError, match="Complex dtypes are supported by `solve`"):
        matfree.precond.nystrom(
            lambda x: x, jnp.zeros(3, complex), key=jax.random.PRNGKey(0), rank=1
        )
    with pytest.raises(TypeError, match="changed the dtype"):
        matfree.solve(lambda x: GEN @ x, jnp.ones(N))
