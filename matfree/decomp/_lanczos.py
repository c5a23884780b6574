"""Lanczos tridiagonalisation of symmetric operators, with an adjoint VJP."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from matfree import _adjoint, _checks, _eager
from matfree._flat import safe_norm
from matfree.decomp import _krylov


class LanczosResult(NamedTuple):
    """The result of `lanczos`: `A Q^T = Q^T T + residual e_k^T`.

    Attributes
    ----------
    basis
        Orthonormal Krylov basis, shape `(k, n)`: rows `q_1 .. q_k` with
        `q_1 = v0 / |v0|`. For pytree vectors, a pytree like `v0` whose
        leaves have a leading axis of size `k`.
    diag
        Diagonal of the tridiagonal matrix `T`, shape `(k,)`.
    offdiag
        Off-diagonal of `T`, shape `(k-1,)`, nonnegative. A zero entry marks
        an invariant subspace (see `num_steps`).
    residual
        The unnormalised next Lanczos vector `beta_k q_{k+1}`, shape like `v0`.
    init_norm
        `|v0|`, a scalar.
    num_steps
        Number of steps before an invariant subspace of `A` was found (the
        dimension of the Krylov space of `v0`, capped at `depth`). Equal to
        `depth` unless the iteration broke down. After a breakdown the basis
        is continued with deterministic vectors orthogonal to the Krylov space
        (a zero in `offdiag`), so the decomposition stays exact and orthonormal.
    status
        A `matfree.status.Status` code: `OK`; `NONFINITE` (NaN or inf in `v0`
        or in the operator's output); `ZERO_VECTOR` (`v0` is zero: the Krylov
        space is empty, and every field but `init_norm = 0`, `num_steps` and
        `status` is NaN). A breakdown (invariant subspace) is not a failure:
        it is reported in `num_steps`.
    """

    basis: Any
    diag: jax.Array
    offdiag: jax.Array
    residual: Any
    init_norm: jax.Array
    num_steps: jax.Array
    status: jax.Array

    def tridiag(self) -> jax.Array:
        """Return the dense tridiagonal matrix `T`, shape `(..., k, k)`."""
        return _tridiag(self.diag, self.offdiag)


@_eager.reuse_compiled(
    operators=("matvec",), template=_eager.first("v0", batched="batched")
)
def lanczos(
    matvec,
    v0,
    *,
    depth: int,
    reortho: bool = True,
    gradient: str = "adjoint",
    batched: bool = False,
    throw: bool = True,
) -> LanczosResult:
    r"""Lanczos tridiagonalisation of a symmetric operator.

    Runs `depth` steps of the Lanczos iteration from `v0` and returns an
    orthonormal basis `Q` (rows), a symmetric tridiagonal `T` and a residual
    with `A Q^T = Q^T T + residual e_k^T`.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v` of a symmetric operator. It may
        close over arrays (parameters, data); gradients reach them.
    v0
        Start vector: an array of shape `(n,)` or a pytree of arrays, of a
        floating or complex dtype. For complex vectors the operator must be
        Hermitian (`A^H = A`); the basis is complex, `T` is real.
    depth
        Number of steps `k`, a static int with `1 <= k <= n`.
    reortho
        Re-orthogonalise every new vector against the whole basis (default).
        Needed for float32 and for depths where orthogonality is lost; turn
        off only for cheap, well-conditioned float64 problems.
    gradient
        `"adjoint"` (default): differentiate with the adjoint system of
        Krämer et al. (NeurIPS 2024): memory `O(n k)`, one matvec per step
        and parameter VJPs of the matvec on the `k` basis vectors in chunks
        of steps sized from the operator (all `k` at once for a blocked
        kernel matvec, one or a few steps for a stencil);
        reverse mode only (`jax.jvp` raises). `"autodiff"`: differentiate
        through the loop (forward mode, higher derivatives; memory `O(n k^2)`
        with `reortho`).
        For symmetric operators the adjoint returns the gradient of the
        symmetric parameterisation: gradients w.r.t. parameters of a
        symmetric `matvec` are exact, a raw dense matrix gets the gradient
        projected on symmetric matrices. Complex dtypes: the backward pass
        of `"adjoint"` raises `NotImplementedError`; use `"autodiff"`.
    batched
        If `True`, `v0` has a leading batch axis `(m, ...)` and the `m`
        iterations run together: one batched matvec per step (forward and
        adjoint). All result fields get a leading axis `m`.
    throw
        If `True` (default), a non-zero `status` raises (via
        `matfree.status.error_if`, also under `jit`) whichever field of the
        result is read. `False`: only report it in `status`.

    Returns
    -------
    LanczosResult

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import decomp
    >>> A = jnp.diag(jnp.arange(1.0, 6.0))
    >>> res = decomp.lanczos(lambda v: A @ v, jnp.ones(5), depth=5)
    >>> jnp.allclose(jnp.linalg.eigvalsh(res.tridiag()), jnp.arange(1.0, 6.0))
    Array(True, dtype=bool)

    References
    ----------
    N. Krämer, P. Moreno-Muñoz, H. Roy, S. Hauberg. Gradients of functions of
    large matrices. NeurIPS 2024.
    """
    _checks.check_callable(matvec)
    gradient = _checks.check_gradient(gradient, allowed=_krylov.GRADIENTS)
    V0, op, unravel_batch = _krylov.flatten_block(matvec, v0, batched)
    depth = _checks.check_depth(depth, op.size)
    impl = _lanczos_adjoint if gradient == "adjoint" else _lanczos_impl
    out = _adjoint.call(impl, gradient, op.fn, depth, bool(reortho), V0, op.params)
    Q, a, b, r, c, num_steps, status = out
    result = LanczosResult(
        basis=unravel_batch(Q),
        diag=a,
        offdiag=b,
        residual=unravel_batch(r),
        init_norm=c,
        num_steps=num_steps,
        status=status,
    )
    return _krylov.finish(result, zero=c == 0, batched=batched, throw=throw)


def _lanczos_impl(fn, depth, reortho, V0, params):
    """Forward pass on a block `V0` (m, n). Differentiable by autodiff too."""
    m, n = V0.shape
    mv = _krylov.batched(fn, params)
    Q1, c = _krylov.normalise_start(V0)
    # The basis buffer has exactly `depth` rows (the last step's next vector is
    # not stored) and the residual is carried, not stacked over the steps: the
    # forward pass (and the residuals of the adjoint) hold one basis, not two.
    Q = jnp.zeros((m, depth, n), V0.dtype).at[:, 0].set(Q1)

    def step(carry, i):
        Q, q_prev, b_prev, _ = carry
        q = Q[:, i]
        w = mv(q)
        a = jnp.real(jnp.sum(jnp.conj(q) * w, axis=1))  # real for Hermitian A
        u = w - a[:, None] * q - b_prev[:, None] * q_prev
        if reortho:  # twice is enough (Kahan, Parlett): keeps float32 orthogonal
            u, _ = _krylov.project_out(Q, u)
            u, _ = _krylov.project_out(Q, u)
        b = safe_norm(u)
        broke = (b <= _krylov.breakdown_tol(w)) & (i < depth - 1)
        q_next = jax.lax.cond(
            jnp.any(broke),
            lambda: jnp.where(
                broke[:, None],
                _krylov.restart_vectors(Q, i),
                u / jnp.where(broke, 1.0, b)[:, None],
            ),
            lambda: u / jnp.where(b > 0, b, 1.0)[:, None],
        )
        b = jnp.where(broke, 0.0, b)
        Q = _krylov.set_next(Q, i, q_next)
        return (Q, q_next, b, u), (a, b, broke)

    init = (Q, jnp.zeros_like(V0), jnp.zeros((m,), c.dtype), jnp.zeros_like(V0))
    (Q, _, _, r), (a, b, broke) = jax.lax.scan(step, init, jnp.arange(depth))
    a, b, broke = a.T, b.T, broke.T
    first = jnp.argmax(jnp.concatenate([broke[:, :-1], jnp.ones((m, 1), bool)], 1), 1)
    num_steps = (first + 1).astype(jnp.int32)
    status = _krylov.status_of(c, a, r)
    return Q, a, b[:, :-1], r, c, num_steps, status


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _lanczos_adjoint(fn, depth, reortho, V0, params):
    return _lanczos_impl(fn, depth, reortho, V0, params)


def _lanczos_fwd(fn, depth, reortho, V0, params):
    V0, params, active = _krylov.unwrap_primals(V0, params)
    out = _lanczos_impl(fn, depth, reortho, V0, params)
    return out, (out, params, active)


def _lanczos_bwd(fn, depth, reortho, residuals, cotangents):
    (Q, a, b, r, c, _, _), params, active = residuals
    _krylov.check_real_for_adjoint(Q.dtype, "decomp.lanczos")
    Qbar, abar, bbar, rbar, cbar = _krylov.instantiate(
        cotangents[:5], (Q, a, b, r, c), keep_none=(True, False, False, True, False)
    )
    T = _tridiag(a, b)
    Tbar = _tridiag_lower(abar, bbar)
    v0bar, pbar = _krylov.adjoint(
        fn,
        params,
        Q,
        T,
        r,
        c,
        Qbar,
        Tbar,
        rbar,
        cbar,
        b != 0,
        tridiagonal=True,
        active=active.value,
    )
    return v0bar, pbar


_lanczos_adjoint.defvjp(_lanczos_fwd, _lanczos_bwd, symbolic_zeros=True)


def _tridiag(a, b):
    """Dense symmetric tridiagonal matrices from diagonals (batched)."""

    def one(a, b):
        return jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)

    return jnp.vectorize(one, signature="(k),(j)->(k,k)")(a, b)


def _tridiag_lower(a, b):
    """Dense lower-bidiagonal matrices from diagonals (batched)."""

    def one(a, b):
        return jnp.diag(a) + jnp.diag(b, -1)

    return jnp.vectorize(one, signature="(k),(j)->(k,k)")(a, b)
