"""Derivatives of minimum-norm solutions (`"lsqr"`, `"minres"`) on rank-deficient
and singular problems, against the automatic derivatives of `jnp.linalg.pinv`;
NaN and `throw` when a solve of a derivative fails."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import matfree

M_ROWS, N_COLS, RANK = 40, 15, 5
W = jnp.cos(jnp.arange(N_COLS * 1.0))


def _rank_deficient(dtype=jnp.float64):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    A = jax.random.normal(k1, (M_ROWS, RANK)) @ jax.random.normal(k2, (RANK, N_COLS))
    b = jax.random.normal(k3, (M_ROWS,))  # not in the range: a least-squares problem
    return (A / 3).astype(dtype), b.astype(dtype)


def _singular_symmetric(n=N_COLS, nullity=4, dtype=jnp.float64):
    key = jax.random.PRNGKey(4)
    Q, _ = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    half = (n - nullity) // 2
    eigs = jnp.concatenate(
        [
            jnp.zeros(nullity),
            jnp.linspace(1, 5, half),
            -jnp.linspace(1, 5, n - nullity - half),
        ]
    )
    S = (Q * eigs) @ Q.T
    S = (S + S.T) / 2
    b = S @ jnp.sin(jnp.arange(n) + 1.0)  # consistent
    return S.astype(dtype), b.astype(dtype)


@jax.jit
def _lsqr_loss_and_grad(A, b, x0, rtol):
    def loss(A, b, x0):
        sol = matfree.solve(
            lambda v: A @ v, b, method="lsqr", x0=x0, rtol=rtol, throw=False
        )
        return jnp.dot(W, sol.value), sol

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(A, b, x0)


@jax.jit
def _minres_loss_and_grad(S, b, x0, rtol):
    def loss(S, b, x0):
        sol = matfree.solve(
            lambda v: S @ v, b, method="minres", x0=x0, rtol=rtol, throw=False
        )
        return jnp.dot(W, sol.value), sol

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(S, b, x0)


def _pinv_loss(A, b, x0, rtol=None):
    """`x = x0 + A^+ (b - A x0)`: what LSQR (undamped) and MINRES return."""
    return jnp.dot(W, x0 + jnp.linalg.pinv(A, rtol=rtol) @ (b - A @ x0))


def _relerr(a, e):
    return float(jnp.linalg.norm(a - e) / jnp.linalg.norm(e))


@pytest.mark.parametrize("case", ["lsqr", "minres"])
def test_gradient_is_that_of_the_pseudo_inverse(case):
    if case == "lsqr":
        A, b = _rank_deficient()
        run = _lsqr_loss_and_grad
    else:
        A, b = _singular_symmetric()
        run = _minres_loss_and_grad
    x0 = 0.1 * jnp.cos(jnp.arange(N_COLS * 1.0))
    for x0_ in (jnp.zeros(N_COLS), x0):
        (_, sol), grads = run(A, b, x0_, 1e-10)
        assert int(sol.status) == 0
        ref_x = x0_ + jnp.linalg.pinv(A) @ (b - A @ x0_)
        assert _relerr(sol.value, ref_x) <= 1e-8
        refs = jax.grad(_pinv_loss, argnums=(0, 1, 2))(A, b, x0_)
        # before: |grad b| ~ 1e16 (the adjoint solve diverged on the null space)
        for g, r in zip(grads, refs, strict=True):
            assert _relerr(g, r) <= 1e-7


def test_forward_mode_matches_pinv_and_reverse_mode():
    A, b = _rank_deficient()
    x0 = jnp.zeros(N_COLS)
    dA = jnp.sin(jnp.arange(A.size * 1.0)).reshape(A.shape)
    db = jnp.cos(jnp.arange(b.size * 1.0))

    def loss(A, b):
        return _lsqr_loss_and_grad(A, b, x0, 1e-10)[0][0]

    _, t = jax.jit(lambda A, b: jax.jvp(loss, (A, b), (dA, db)))(A, b)
    _, t_ref = jax.jvp(lambda A, b: _pinv_loss(A, b, x0), (A, b), (dA, db))
    (_, _), (gA, gb, _) = _lsqr_loss_and_grad(A, b, x0, 1e-10)
    assert jnp.allclose(t, t_ref, rtol=1e-7)
    assert jnp.allclose(t, jnp.sum(gA * dA) + jnp.dot(gb, db), rtol=1e-7)


def test_damped_lsqr_with_x0_gradient():
    A, b = _rank_deficient()
    x0 = 0.1 * jnp.cos(jnp.arange(N_COLS * 1.0))
    damp = 0.7

    @jax.jit
    def loss(A, b, x0):
        sol = matfree.solve(lambda v: A @ v, b, method="lsqr", x0=x0, damp=damp, rtol=1e-12)
        return jnp.dot(W, sol.value)

    def dense(A, b, x0):
        N = A.T @ A + damp**2 * jnp.eye(N_COLS)
        return jnp.dot(W, x0 + jnp.linalg.solve(N, A.T @ (b - A @ x0)))

    assert jnp.allclose(loss(A, b, x0), dense(A, b, x0), rtol=1e-9)
    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(A, b, x0)
    ref = jax.grad(dense, argnums=(0, 1, 2))(A, b, x0)
    for a, e in zip(g, ref, strict=True):
        assert _relerr(a, e) <= 1e-7


@pytest.mark.parametrize("case", ["lsqr", "minres"])
def test_unconverged_gradient_error_is_of_the_order_of_the_value_error(case):
    # Stated factor: relative gradient error <= 10 max(relative value error, rtol).
    if case == "lsqr":
        A, b = _rank_deficient()
        run = _lsqr_loss_and_grad
    else:
        A, b = _singular_symmetric()
        run = _minres_loss_and_grad
    x0 = jnp.zeros(N_COLS)
    ref_x = jnp.linalg.pinv(A) @ b
    refs = jax.grad(_pinv_loss, argnums=(0, 1))(A, b, x0)
    for rtol in (1e-2, 1e-4):
        (_, sol), grads = run(A, b, x0, rtol)
        value_err = _relerr(sol.value, ref_x)
        for g, r in zip(grads[:2], refs, strict=True):
            assert _relerr(g, r) <= 10 * max(value_err, rtol)


def test_failed_adjoint_solve_gives_nan_and_raises_with_throw():
    # The forward solve converges in one step (b is an eigenvector of A); the
    # adjoint solve with a generic cotangent needs four: maxiter=1 stops it.
    A = jnp.diag(jnp.array([1.0, 2.0, 3.0, 4.0]))
    b = jnp.array([1.0, 0.0, 0.0, 0.0])
    w = jnp.array([1.0, 2.0, 3.0, 4.0])

    def loss(b, throw):
        sol = matfree.solve(lambda v: A @ v, b, maxiter=1, throw=throw)
        return jnp.dot(w, sol.value), sol.status

    g, code = jax.grad(loss, has_aux=True)(b, False)
    assert int(code) == 0  # the value is fine ...
    assert bool(jnp.all(jnp.isnan(g)))  # ... its gradient could not be computed
    _, t = jax.jvp(lambda b: loss(b, False)[0], (b,), (w,))
    assert bool(jnp.isnan(t))  # the tangent solve likewise
    # (Which exception class wraps it depends on JAX's dispatch path: an XLA
    # runtime error, or a ValueError when the compiled solve is cached.)
    errors = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError, ValueError)
    with pytest.raises(errors, match="did not converge"):
        jax.grad(loss, has_aux=True)(b, True)


def test_float32_rank_deficient_gradient():
    A, b = _rank_deficient(jnp.float32)
    x0 = jnp.zeros(N_COLS, jnp.float32)
    (_, sol), (gA, gb, _) = _lsqr_loss_and_grad(A, b, x0, jnp.float32(1e-5))
    A64, b64, x64 = A.astype(float), b.astype(float), x0.astype(float)
    # the rank of the float32 matrix: singular values below 1e-5 |A| are zero
    rA, rb, _ = jax.grad(_pinv_loss, argnums=(0, 1, 2))(A64, b64, x64, 1e-5)
    assert int(sol.status) == 0
    assert _relerr(gb, rb) <= 1e-3 and _relerr(gA, rA) <= 1e-3


def test_batched_and_vmapped_gradients_agree():
    S, b = _singular_symmetric()
    B = jnp.stack([b, 2 * b, S @ jnp.cos(jnp.arange(N_COLS * 1.0))])

    def loss_batched(S, B):
        sol = matfree.solve(lambda v: S @ v, B, method="minres", batched=True, rtol=1e-10)
        return jnp.sum(sol.value @ W)

    def ref(S, B):
        return jnp.sum((jnp.linalg.pinv(S) @ B.T).T @ W)

    g = jax.jit(jax.grad(loss_batched, argnums=(0, 1)))(S, B)
    r = jax.grad(ref, argnums=(0, 1))(S, B)
    assert _relerr(g[0], r[0]) <= 1e-7 and _relerr(g[1], r[1]) <= 1e-7
