"""Shared machinery of the Lanczos and Arnoldi iterations.

Both iterations run on a *block* of `m` independent start vectors at once
(shape `(m, n)`): one batched matvec per step. The adjoint runs backwards
with one product `A^T lambda` per step on vectors only, and contracts the
cotangents of the operator's parameters in VJPs of the matvec applied to
chunks of basis vectors: one chunk of all `m k` vectors where the matvec's
VJP shares work between vectors (a blocked kernel matvec), several small
chunks where it does not (a stencil), to bound memory (`chunk_steps`).
"""

from __future__ import annotations

import math

import jax
import jax.extend.core
import jax.flatten_util
import jax.numpy as jnp

from matfree import _flat, status
from matfree._flat import safe_norm

GRADIENTS = ("adjoint", "autodiff")


def flatten_block(matvec, v0, batched):
    """Flatten `v0` (or a batch of them) and `matvec` to the block form (m, n).

    Returns `(V0, op, unravel_batch)`: the block `(m, n)` (`m = 1` without
    `batched`), the flat operator, and a function that turns a block of rows
    `(m, ..., n)` back into pytrees like `v0`.
    """
    if batched:
        leaves = jax.tree_util.tree_leaves(v0)
        if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
            msg = "`v0` must have a leading batch axis on every leaf when `batched=True`."
            raise ValueError(msg)
        m = jnp.shape(leaves[0])[0]
        if any(jnp.shape(x)[0] != m for x in leaves):
            msg = (
                "all leaves of `v0` must have the same leading batch size "
                "when `batched=True`."
            )
            raise ValueError(msg)
        example = jax.tree_util.tree_map(lambda x: x[0], v0)
        _, op = _flat.flatten(matvec, example, name="v0", complex_ok=True)
        V0 = jax.vmap(lambda v: jax.flatten_util.ravel_pytree(v)[0])(v0)
    else:
        flat, op = _flat.flatten(matvec, v0, name="v0", complex_ok=True)
        V0 = flat[None]

    def unravel_batch(X):
        return _flat.unravel_rows(op, X)

    return V0, op, unravel_batch


def finish(result, *, zero, batched, throw):
    """Mark a decomposition of a zero start vector as NaN; attach `throw`.

    `zero` (m,) flags zero start vectors: every field except `init_norm`,
    `num_steps` and `status` becomes NaN (the decomposition does not exist).
    With `throw`, a non-zero `status` raises whichever field is read.
    """
    keep = ("init_norm", "num_steps", "status")

    def nan_where_zero(name, x):
        if name in keep:
            return x
        mask = zero.reshape(zero.shape + (1,) * (jnp.ndim(x) - 1))
        return jnp.where(mask, jnp.nan, x)

    fields = {}
    for name, value in result._asdict().items():
        fields[name] = jax.tree_util.tree_map(
            lambda x, name=name: nan_where_zero(name, x), value
        )
    result = type(result)(**fields)
    if not batched:
        result = jax.tree_util.tree_map(lambda x: x[0], result)
    if throw:
        result = status.error_if(result, result.status)
    return result


def batched(fn, params):
    """Apply the flat matvec `fn(x, *params)` to every row of `X` (m, n)."""
    return lambda X: jax.vmap(lambda x: fn(x, *params))(X)


def set_next(Q, i, q_next):
    """Store `q_next` as row `i + 1` of the basis `Q` (m, k, n); dropped at `i = k - 1`."""
    k = Q.shape[1]
    j = jnp.minimum(i + 1, k - 1)
    return Q.at[:, j].set(jnp.where(i < k - 1, q_next, Q[:, j]))


def _jaxpr_bytes(jaxpr):
    """Bytes of every value a jaxpr computes (sub-jaxprs counted once).

    An upper bound on the temporaries of the compiled program (XLA fuses
    many of them away); used only to compare two sizes of one program.
    """
    total = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = v.aval
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += math.prod(aval.shape) * jnp.dtype(aval.dtype).itemsize
        for value in eqn.params.values():
            items = value if isinstance(value, (tuple, list)) else (value,)
            for sub in items:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _jaxpr_bytes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _jaxpr_bytes(sub)
    return total


def merge_live(params, active, live):
    """`params` with its active entries (`active[i]` true) replaced, in order, by `live`."""
    it = iter(live)
    return [next(it) if a else p for p, a in zip(params, active, strict=True)]


def chunk_steps(fn, params, active, m, k, n, dtype):
    """Steps per chunk of the parameter VJP in the adjoint, from the operator.

    The parameter cotangent `sum_j lambda_j^T (dA/dp) q_j` is contracted in
    VJPs of the batched matvec on `c` steps (`m c` vectors) at a time. The
    cost of one such VJP is estimated from its jaxpr (traced, not compiled)
    on one and on two vectors: `per` bytes of temporaries per vector, `shared`
    bytes that do not grow with the vectors (a kernel block and its VJP,
    recomputed once per chunk). A chunk costs `shared + m c (per + row)`,
    `row` for storing one multiplier. Chunks may use the larger of `shared`
    (paid anyway, so a kernel matvec gets one chunk and evaluates its blocks
    once) and half the basis (`m k row / 2`): the adjoint then holds the basis
    plus at most half a basis more, the bound behind "adjoint memory about
    the forward's" for operators whose VJP shares nothing (a stencil gets
    chunks of one or a few steps).
    """
    live = [p for p, a in zip(params, active, strict=True) if a]
    if not live:
        return k

    def vjp_of(X, L, *ps):  # `ps`: every parameter, active or not, in order
        live_p = [p for p, a in zip(ps, active, strict=True) if a]

        def apply(*lp):
            return batched(fn, merge_live(ps, active, lp))(X)

        return jax.vjp(apply, *live_p)[1](L)

    def cost(b):
        vec = jax.ShapeDtypeStruct((b, n), dtype)
        args = [jax.ShapeDtypeStruct(jnp.shape(p), jnp.result_type(p)) for p in params]
        return _jaxpr_bytes(jax.make_jaxpr(vjp_of)(vec, vec, *args).jaxpr)

    one, two = cost(1), cost(2)
    per = max(two - one, 0)
    shared = max(one - per, 0)
    row = n * jnp.dtype(dtype).itemsize
    budget = max(shared, m * k * row // 2)
    c = int(min(max(budget // (m * (per + row)), 1), k))
    num_chunks = -(-k // c)
    return -(-k // num_chunks)  # balanced: at most num_chunks - 1 padded steps


def normalise_start(V0):
    """Return `(Q1, c)` with `Q1 = V0 / |V0|` row-wise; zero rows stay zero."""
    c = safe_norm(V0)
    Q1 = V0 / jnp.where(c > 0, c, 1.0)[:, None]
    return Q1, c


def project_out(basis, u):
    """Remove from `u` (m, n) its components along the rows of `basis` (m, j, n).

    The coefficients are the inner products `<q_j, u> = sum(conj(q_j) * u)`.
    """
    coeffs = jnp.einsum("mjn,mn->mj", jnp.conj(basis), u)
    return u - jnp.einsum("mj,mjn->mn", coeffs, basis), coeffs


def breakdown_tol(w):
    """Residual norms at or below this (row-wise) count as an invariant subspace."""
    eps = jnp.finfo(w.dtype).eps
    return 100 * eps * safe_norm(w)


def restart_vectors(basis, i):
    """Unit vectors orthogonal to `basis` (m, j, n), deterministic in the step `i`.

    Used to continue the iteration after an invariant subspace was found, so
    that the returned basis stays orthonormal and the small matrix keeps its
    meaning (its eigenvalues remain Ritz values of the operator).
    """
    m, _, n = basis.shape
    # A cheap deterministic pseudo-random vector (no PRNG: keeps compile fast).
    idx = jnp.arange(n, dtype=_flat.real_dtype(basis.dtype))
    z = jnp.sin(idx * 12.9898 + (i + 1) * 78.233) * 43758.5453
    z = jnp.broadcast_to(z - jnp.floor(z) - 0.5, (m, n)).astype(basis.dtype)
    z, _ = project_out(basis, z)
    z, _ = project_out(basis, z)
    z = jax.lax.stop_gradient(z)
    return z / safe_norm(z)[:, None]


def check_real_for_adjoint(dtype, name):
    """Raise in the backward pass of a decomposition adjoint on complex vectors."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        msg = (
            f'`gradient="adjoint"` of `{name}` supports real dtypes only; got {dtype}. '
            'For complex vectors and operators pass `gradient="autodiff"`.'
        )
        raise NotImplementedError(msg)


def status_of(c, *arrays):
    """Status code per block row: `OK`, `NONFINITE` or `ZERO_VECTOR`.

    Non-finite values (in `v0` or the operator's output) come first: a NaN
    start vector has a NaN norm, not a zero one.
    """
    finite = jnp.isfinite(c)
    for a in arrays:
        finite = finite & jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
    return status.first(
        (~finite, status.Status.NONFINITE), (c == 0, status.Status.ZERO_VECTOR)
    )


class Static:
    """A pytree node without leaves: carries Python data through residuals."""

    def __init__(self, value):
        self.value = value


jax.tree_util.register_pytree_node(
    Static, lambda s: ((), s.value), lambda value, _: Static(value)
)


def unwrap_primals(V0, params):
    """Strip the `CustomVJPPrimal` wrappers that `symbolic_zeros=True` adds.

    Returns `(V0, params, active)`, `active` a `Static` tuple saying which
    params are perturbed (need a cotangent). The adjoint differentiates the
    matvec w.r.t. those only: e.g. a kernel matvec closes over its data points,
    and their cotangent would cost as much as the kernel itself.
    """

    def value(x):
        return x.value if isinstance(x, jax.custom_derivatives.CustomVJPPrimal) else x

    def perturbed(x):
        return (
            x.perturbed if isinstance(x, jax.custom_derivatives.CustomVJPPrimal) else True
        )

    active = Static(tuple(perturbed(p) for p in params))
    return value(V0), [value(p) for p in params], active


def instantiate(cotangents, primals, keep_none):
    """Replace symbolic-zero cotangents by zeros, or by `None` where allowed."""
    out = []
    for ct, x, none_ok in zip(cotangents, primals, keep_none, strict=True):
        if isinstance(ct, jax.custom_derivatives.SymbolicZero):
            ct = None if none_ok else jnp.zeros_like(x)
        out.append(ct)
    return out


def adjoint(
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
    subdiag_valid,
    *,
    tridiagonal,
    active=None,
):
    """Adjoint of an Arnoldi-type decomposition `A Q^T = Q^T H + r e_k^T`.

    Implements the adjoint system of Krämer et al. (NeurIPS 2024) for the
    constraints `A Q^T - Q^T H - r e_k^T = 0`, `Q Q^T = I`, `Q r = 0` and
    `c q_1 = v0`, solved backwards in `k` steps. Each step applies `A^T` once
    to the block of multipliers (a plain matvec for Lanczos, a VJP with
    respect to the vector for Arnoldi) and re-projects the multiplier against
    the basis, mirroring the full re-orthogonalisation of the forward pass.
    The parameter cotangent `sum_j lambda_j^T (dA) q_j` is contracted in
    chunks of `c` steps (`chunk_steps`, from the operator): the recursion
    runs `c` steps, keeps their multipliers, and one VJP of the matvec on
    the chunk's `m c` basis vectors adds their contribution. For a kernel
    matvec, whose parameter VJP recomputes every kernel block, `c = k`: one
    sweep over the blocks instead of `k` (storing the `k` multipliers, like
    the basis). For a stencil, small chunks keep the multipliers and the
    VJP's temporaries to a fraction of the basis. Without perturbed
    parameters nothing is stored.

    The Lanczos adjoint is the special case `H = T` with cotangent
    `Hbar = diag(abar) + subdiag(bbar)`: the orthogonality constraints of a
    symmetric decomposition are redundant, and this choice of multipliers is
    the one that keeps every multiplier's components along the basis fixed.
    With `tridiagonal=True` the recursion needs only two multipliers at a
    time; otherwise all `k` (Arnoldi).

    Shapes (block of m): Q (m, k, n), H (m, k, k), r (m, n), c (m,),
    subdiag_valid (m, k-1) False where the iteration broke down (restarted).
    `Qbar` and `rbar` may be `None` (zero cotangents). `active` (a tuple of
    bools) selects the params that need a cotangent; the others get zeros
    without being differentiated. Returns `(v0bar, params_bar)`.
    """
    m, k, _ = Q.shape
    dtype = Q.dtype
    params = list(params)
    active = (True,) * len(params) if active is None else tuple(active)
    live = [p for p, a in zip(params, active, strict=True) if a]

    def merge(live_params):
        return merge_live(params, active, live_params)

    def transposed(X, Lam):
        """`A^T lambda` for the rows of `Lam`; `X` (like `Lam`) only fixes shapes."""
        if tridiagonal:  # Lanczos: A is symmetric, A^T lambda = A lambda.
            return batched(fn, params)(Lam)
        _, vjp = jax.vjp(batched(fn, params), X)
        return vjp(Lam)[0]

    # Breakdown positions carry no gradient through the (non-differentiable)
    # zero sub-diagonal entry: the restart vector is treated as a constant.
    sub = jnp.arange(k - 1)
    Hbar = Hbar.at[:, sub + 1, sub].multiply(subdiag_valid.astype(dtype))

    # Initial multiplier: lambda_k = (I - Q^T Q) rbar + Q^T Hbar[:, k].
    gamma = Hbar[:, :, k - 1]
    if rbar is not None:
        gamma = gamma - jnp.einsum("mkn,mn->mk", Q, rbar)
    lam_last = jnp.einsum("mk,mkn->mn", gamma, Q)
    if rbar is not None:
        lam_last = lam_last + rbar
    if tridiagonal:
        lams = (lam_last, jnp.zeros_like(lam_last))  # (lambda_j, lambda_{j+1})
    else:
        lams = jnp.zeros_like(Q).at[:, k - 1].set(lam_last)
    Gam = jnp.zeros((m, k, k), dtype)
    v0bar0 = jnp.zeros_like(r)
    idx = jnp.arange(k)

    def body(carry, j):
        lams, Gam, v0bar = carry
        q_j = Q[:, j]
        if tridiagonal:
            lam_j, lam_next = lams
            jp1 = jnp.minimum(j + 1, k - 1)
            h_next = jnp.where(j + 1 < k, H[:, j, jp1], 0.0)
            H_lam = H[:, j, j, None] * lam_j + h_next[:, None] * lam_next
        else:
            lam_j = lams[:, j]
            upper = (idx >= j).astype(dtype)  # H[j, i] for i >= j
            H_lam = jnp.einsum("mi,min->mn", H[:, j, :] * upper, lams)
        At_lam = transposed(q_j, lam_j)

        z0 = At_lam - H_lam + gamma[:, j, None] * r
        if Qbar is not None:
            z0 = z0 + Qbar[:, j]
        # Two passes over the basis per step: project, then combine.
        # The multiplier's components along q_i, i <= j, are set exactly (the
        # backward counterpart of re-orthogonalisation); those along q_i, i > j,
        # come from Gamma (symmetric: column j is read later as row i < j).
        later = (idx > j).astype(dtype)
        lower = (idx <= j).astype(dtype)
        # Classical Gram-Schmidt twice, as in the forward pass: z0 can be much
        # larger than its part orthogonal to q_1..q_j (which is divided by a
        # possibly tiny h_{j,j-1} below), and one pass leaves O(eps |z0|).
        zq1 = jnp.einsum("min,mn->mi", Q, z0) * lower
        z0 = z0 - jnp.einsum("mi,min->mn", zq1, Q)
        zq2 = jnp.einsum("min,mn->mi", Q, z0) * lower
        zq = zq1 + zq2
        coeff = Gam[:, j, :] * later - zq2  # z_perp = z0 + coeff @ Q

        # j >= 1: lambda_{j-1} = z_perp / h + Hbar[:j+1, j-1] @ Q and Gamma[:, j].
        # j == 0: the cotangent of v0 = z_perp / c + cbar q_1.
        jm1 = jnp.maximum(j - 1, 0)
        h = H[:, j, jm1]
        ok = jnp.where(j >= 1, h != 0, c > 0)
        denom = jnp.where(ok, jnp.where(j >= 1, h, c), 1.0)
        hbar_col = Hbar[:, :, jm1] * lower * (j >= 1)
        weights = jnp.where(ok[:, None], coeff / denom[:, None], 0.0) + hbar_col
        out = jnp.where(ok[:, None], z0 / denom[:, None], 0.0)
        out = out + jnp.einsum("mi,min->mn", weights, Q)

        gam_col = (jnp.where(ok, h, 0.0)[:, None] * hbar_col - zq) * lower
        Gam = Gam.at[:, :, j].set(jnp.where(j >= 1, gam_col, Gam[:, :, j]))
        if tridiagonal:
            lams = (out, lam_j)
        else:
            lams = lams.at[:, jm1].set(jnp.where(j >= 1, out, lams[:, jm1]))
        v0bar_j = jnp.where((c > 0)[:, None], out + cbar[:, None] * Q[:, 0], 0.0)
        v0bar = jnp.where(j == 0, v0bar_j, v0bar)
        # The multiplier of the constraint at step j pairs with q_j in the
        # parameter cotangent sum_j lambda_j^T (dA) q_j (collected per chunk).
        return (lams, Gam, v0bar), (lam_j if live else None)

    carry = (lams, Gam, v0bar0)
    if not live:
        (_, _, v0bar), _ = jax.lax.scan(body, carry, jnp.arange(k - 1, -1, -1))
        return v0bar, [jnp.zeros_like(p) for p in params]

    chunk = chunk_steps(fn, params, active, m, k, Q.shape[2], dtype)
    size = int(min(max(chunk, 1), k))
    num_chunks = -(-k // size)
    padded = num_chunks * size != k

    def step(carry, j):
        if not padded:
            return body(carry, j)
        # The last chunk runs past j = 0: those steps change nothing and
        # give a zero multiplier (no contribution to the cotangent).
        zero = jnp.zeros((m, Q.shape[2]), dtype)
        return jax.lax.cond(
            j >= 0, body, lambda carry, _: (carry, zero), carry, jnp.maximum(j, 0)
        )

    def one_chunk(state, js):
        carry, pbar = state
        carry, lam_c = jax.lax.scan(step, carry, js)  # (size, m, n), steps js
        # One VJP of the matvec on the chunk's m*size basis vectors: the
        # parameter cotangent sum_j lambda_j^T (dA/dp) q_j over the chunk.
        Qc = jnp.swapaxes(jnp.take(Q, jnp.maximum(js, 0), axis=1), 0, 1)
        Qc = Qc.reshape(size * m, -1)
        _, vjp = jax.vjp(lambda *p: batched(fn, merge(p))(Qc), *live)
        ct = vjp(lam_c.reshape(size * m, -1))
        return (carry, [p + g for p, g in zip(pbar, ct, strict=True)]), None

    steps = jnp.arange(k - 1, k - 1 - num_chunks * size, -1).reshape(num_chunks, size)
    pbar0 = [jnp.zeros_like(p) for p in live]
    if num_chunks == 1:
        ((_, _, v0bar), pbar), _ = one_chunk((carry, pbar0), steps[0])
    else:
        ((_, _, v0bar), pbar), _ = jax.lax.scan(one_chunk, (carry, pbar0), steps)
    return v0bar, merge(pbar)
