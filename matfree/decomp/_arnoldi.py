"""Arnoldi iteration for general square operators, with an adjoint VJP."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from matfree import _adjoint, _checks, _eager
from matfree._flat import safe_norm
from matfree.decomp import _krylov


class ArnoldiResult(NamedTuple):
    """The result of `arnoldi`: `A Q^T = Q^T H + residual e_k^T`.

    Attributes
    ----------
    basis
        Orthonormal Krylov basis, shape `(k, n)` (rows), `q_1 = v0 / |v0|`;
        for pytree vectors a pytree with leading axis `k`.
    hessenberg
        Upper Hessenberg matrix `H = Q A Q^T`, shape `(k, k)`. A zero on the
        sub-diagonal marks an invariant subspace (see `num_steps`).
    residual
        The unnormalised next Arnoldi vector `h_{k+1,k} q_{k+1}`.
    init_norm
        `|v0|`.
    num_steps
        Steps before an invariant subspace was found (`depth` if none). The
        basis is continued after a breakdown with deterministic vectors
        orthogonal to the Krylov space, so the relation stays exact.
    status
        A `matfree.status.Status` code: `OK`, `NONFINITE` (NaN or inf in `v0`
        or the operator's output) or `ZERO_VECTOR` (`v0` is zero; every field
        but `init_norm = 0`, `num_steps` and `status` is NaN). A breakdown is
        information (`num_steps`), not a failure.
    """

    basis: Any
    hessenberg: jax.Array
    residual: Any
    init_norm: jax.Array
    num_steps: jax.Array
    status: jax.Array


@_eager.reuse_compiled(
    operators=("matvec",), template=_eager.first("v0", batched="batched")
)
def arnoldi(
    matvec,
    v0,
    *,
    depth: int,
    gradient: str = "adjoint",
    batched: bool = False,
    throw: bool = True,
) -> ArnoldiResult:
    r"""Arnoldi iteration: an orthonormal Krylov basis and a Hessenberg matrix.

    Runs `depth` steps from `v0` with classical Gram–Schmidt applied twice
    (full re-orthogonalisation) and returns `Q`, `H` and a residual with
    `A Q^T = Q^T H + residual e_k^T`.

    Parameters
    ----------
    matvec
        A JAX-traceable callable `v -> A v` of a square operator; it may close
        over arrays, and gradients reach them.
    v0
        Start vector, an array of shape `(n,)` or a pytree, of a floating or
        complex dtype (complex: `H = Q^* A Q^T` is complex, the inner
        products conjugate the basis).
    depth
        Number of steps `k`, a static int with `1 <= k <= n`.
    gradient
        `"adjoint"` (default): differentiate with the adjoint system of
        Krämer et al. (NeurIPS 2024): memory `O(n k)`, one VJP of `matvec`
        with respect to the vector per step (it supplies the transposed
        products, so no transposed operator is needed) and parameter VJPs
        on the `k` basis vectors in chunks of steps sized from the operator;
        reverse mode only (`jax.jvp` raises).
        `"autodiff"` differentiates through the loop (forward mode, higher
        derivatives; memory `O(n k^2)`). Complex dtypes: the backward pass
        of `"adjoint"` raises `NotImplementedError`; use `"autodiff"`.
    batched
        If `True`, `v0` has a leading batch axis `(m, ...)` and the iterations
        run as a block (one batched matvec per step). All result fields get a
        leading axis `m`.
    throw
        If `True` (default), a non-zero `status` raises (via
        `matfree.status.error_if`, also under `jit`) whichever field of the
        result is read. `False`: only report it in `status`.

    Returns
    -------
    ArnoldiResult

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import decomp
    >>> A = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 4.0]])
    >>> res = decomp.arnoldi(lambda v: A @ v, jnp.ones(3), depth=3)
    >>> ev = jnp.sort(jnp.linalg.eigvals(res.hessenberg).real)
    >>> jnp.allclose(ev, jnp.array([2.0, 3.0, 4.0]))
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
    impl = _arnoldi_adjoint if gradient == "adjoint" else _arnoldi_impl
    out = _adjoint.call(impl, gradient, op.fn, depth, V0, op.params)
    Q, H, r, c, num_steps, status = out
    result = ArnoldiResult(
        basis=unravel_batch(Q),
        hessenberg=H,
        residual=unravel_batch(r),
        init_norm=c,
        num_steps=num_steps,
        status=status,
    )
    return _krylov.finish(result, zero=c == 0, batched=batched, throw=throw)


def _arnoldi_impl(fn, depth, V0, params):
    m, n = V0.shape
    mv = _krylov.batched(fn, params)
    Q1, c = _krylov.normalise_start(V0)
    # `depth` rows (the last next vector is not stored); the residual is
    # carried, not stacked over the steps: one basis in memory, not two.
    Q = jnp.zeros((m, depth, n), V0.dtype).at[:, 0].set(Q1)

    def step(carry, i):
        Q, _ = carry
        w = mv(Q[:, i])
        u, h1 = _krylov.project_out(Q, w)
        u, h2 = _krylov.project_out(Q, u)
        h = h1 + h2
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
        return (Q, u), (h, b, broke)

    (Q, r), (h, b, broke) = jax.lax.scan(step, (Q, jnp.zeros_like(V0)), jnp.arange(depth))
    # h: (k, m, k) columns of H; b: (k, m) sub-diagonal entries.
    H = jnp.transpose(h, (1, 2, 0))
    i = jnp.arange(depth - 1)
    H = H.at[:, i + 1, i].set(b.T[:, :-1])
    broke = broke.T
    first = jnp.argmax(jnp.concatenate([broke[:, :-1], jnp.ones((m, 1), bool)], 1), 1)
    num_steps = (first + 1).astype(jnp.int32)
    status = _krylov.status_of(c, H, r)
    return Q, H, r, c, num_steps, status


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _arnoldi_adjoint(fn, depth, V0, params):
    return _arnoldi_impl(fn, depth, V0, params)


def _arnoldi_fwd(fn, depth, V0, params):
    V0, params, active = _krylov.unwrap_primals(V0, params)
    out = _arnoldi_impl(fn, depth, V0, params)
    return out, (out, params, active)


def _arnoldi_bwd(fn, depth, residuals, cotangents):
    (Q, H, r, c, _, _), params, active = residuals
    _krylov.check_real_for_adjoint(Q.dtype, "decomp.arnoldi")
    Qbar, Hbar, rbar, cbar = _krylov.instantiate(
        cotangents[:4], (Q, H, r, c), keep_none=(True, False, True, False)
    )
    k = H.shape[-1]
    # Only the Hessenberg pattern of H is an output; ignore cotangents below it.
    Hbar = Hbar * jnp.triu(jnp.ones((k, k), H.dtype), -1)
    sub = jnp.arange(k - 1)
    valid = H[:, sub + 1, sub] != 0
    return _krylov.adjoint(
        fn,
        params,
        Q,
        H,
        r,
        c,
        Qbar,
        Hbar,
        rbar,
        cbar,
        valid,
        tridiagonal=False,
        active=active.value,
    )


_arnoldi_adjoint.defvjp(_arnoldi_fwd, _arnoldi_bwd, symbolic_zeros=True)
