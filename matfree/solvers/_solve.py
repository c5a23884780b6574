"""`matfree.solve`: one verb for the Krylov solvers, and its `Solution`."""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from matfree import _checks, _flat
from matfree.solvers import _common as c
from matfree.solvers import _implicit

METHODS = ("cg", "minres", "gmres", "bicgstab", "lsqr", "gcr")


class Solution(NamedTuple):
    """The result of `matfree.solve`.

    For `batched=True`, `value` has the shape of `b` (a trailing axis of
    size `m`) and every other field has a leading axis of size `m`.

    Attributes
    ----------
    value
        The approximate solution `x`, shaped like `b` (like `x0` for a
        rectangular `"lsqr"` problem).
    converged
        Whether the method's stopping test held: `|r| <= max(rtol |b|, atol)`
        for the updated residual `r` of the recurrence; for `"lsqr"` also
        `|A^T r - damp^2 x| <= rtol |A|_F |r|` (a least-squares solution).
    num_steps
        Iterations taken. One iteration is one matvec for CG, MINRES, GMRES
        (one Arnoldi step) and GCR, two for BiCGStab and LSQR (`A` and `A^T`).
    residual_norm
        `|b - A x|`, recomputed from `value` with one extra matvec.
    status
        `0` converged, `1` `maxiter` reached, `2` breakdown, `3` indefinite
        operator (CG), `4` non-finite values.
    breakdown
        `status == 2`: a division by zero in the recurrence (e.g. a
        non-SPD preconditioner, a stagnating BiCGStab, a singular operator).
    indefinite
        `status == 3`: CG met `p^T A p <= 0` and stopped without taking
        the step; `value` is the last iterate.
    residual_history
        With `history=True`: residual norms of the recurrence, shape
        `(maxiter + 1,)`, entry `0` the initial residual, padded with NaN
        after `num_steps`. Otherwise `None`.
    """

    value: Any
    converged: jax.Array
    num_steps: jax.Array
    residual_norm: jax.Array
    status: jax.Array
    breakdown: jax.Array
    indefinite: jax.Array
    residual_history: jax.Array | None


def solve(
    matvec,
    b,
    *,
    method: str = "cg",
    precond=None,
    x0=None,
    rtol=None,
    atol=0.0,
    maxiter: int | None = None,
    throw: bool = False,
    symmetric: bool | None = None,
    restart: int = 30,
    damp=0.0,
    history: bool = False,
    implicit: bool = True,
    batched: bool = False,
) -> Solution:
    r"""Solve `A x = b` (or `min |A x - b|`) with a Krylov method, matrix-free.

    Parameters
    ----------
    matvec
        A JAX-traceable linear callable `v -> A v`. It may close over arrays;
        gradients reach them (by implicit differentiation, see `implicit`).
    b
        Right-hand side: an array `(n,)` or a pytree of arrays of one floating
        dtype. With `batched=True`, every leaf has a trailing axis of size
        `m` (e.g. `b` of shape `(n, m)`): `m` systems solved together.
    method
        `"cg"` (symmetric positive definite), `"minres"` (symmetric,
        possibly indefinite), `"gmres"` (general; restarted GMRES(`restart`)),
        `"bicgstab"` (general, short recurrences, two matvecs per step),
        `"gcr"` (general; restarted generalised conjugate residual; allows a
        varying preconditioner), `"lsqr"` (least squares, also rectangular and
        damped; uses the transpose of `matvec`, derived automatically).
    precond
        An approximate inverse `v -> P^{-1} v` (a callable, e.g. from
        `matfree.precond`). Symmetric positive definite for `"cg"` and
        `"minres"`; applied on the right for `"gmres"`/`"bicgstab"`/`"gcr"`.
        Not supported for `"lsqr"`. The adjoint solve uses it too.
    x0
        Initial guess, shaped like the solution (default zero). For a
        rectangular `"lsqr"` problem it is required: it gives the shape of `x`.
    rtol, atol
        Stop when `|b - A x| <= max(rtol |b|, atol)`. Default `rtol`: `1e-6`
        in float64, `1e-4` in float32 and `1e-2` in lower precision.
    maxiter
        Static bound on the number of iterations; default `10 n`.
    throw
        Raise (via `equinox.error_if`) on non-convergence, breakdown, an
        indefinite operator in CG or non-finite values, also when the adjoint
        solve of the gradient does not converge. Without it, these are
        reported in the `Solution` fields.
    symmetric
        Declare whether `A` is symmetric. `False` with `"cg"` or `"minres"`
        is an error. (Symmetry is not checked numerically.)
    restart
        Krylov dimension per cycle of `"gmres"` and `"gcr"`; capped at `n`.
    damp
        Damping (ridge) parameter of `"lsqr"`:
        `min |A x - b|^2 + damp^2 |x|^2`. With `x0`, the damping applies to
        the correction `x - x0` (as in `scipy.sparse.linalg.lsqr`).
    history
        Record the residual norm after every iteration.
    implicit
        Differentiate by an adjoint solve (memory independent of the number
        of iterations; reverse mode only). `False` differentiates through the
        iterations (forward mode and higher derivatives; memory grows with
        `maxiter`, as the loop runs to `maxiter` with frozen steps).
    batched
        Solve for `m` right-hand sides, stacked along a trailing axis of `b`,
        in one loop with one batched matvec per step (the matvec is `vmap`-ed
        over the columns, which lets e.g. a kernel matvec share its kernel
        evaluations). Each column stops on its own tolerance.

    Returns
    -------
    Solution

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import matfree
    >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> sol = matfree.solve(lambda v: A @ v, jnp.array([1.0, 2.0]), method="cg")
    >>> jnp.allclose(sol.value, jnp.linalg.solve(A, jnp.array([1.0, 2.0])))
    Array(True, dtype=bool)
    >>> bool(sol.converged), int(sol.num_steps)
    (True, 2)
    """
    if not isinstance(method, str) or method not in METHODS:
        msg = f"`method` must be one of {METHODS}; got method={method!r}."
        raise ValueError(msg)
    if symmetric is False and method in _implicit.SYMMETRIC:
        msg = (
            f"`method={method!r}` needs a symmetric operator, but `symmetric=False` "
            "was given; use `method='gmres'`, `'bicgstab'` or `'gcr'` for "
            "non-symmetric operators."
        )
        raise ValueError(msg)
    _checks.check_callable(matvec)
    dtype = _checks.check_floating_vector(b, "b")
    b_ex, m, stack = _unbatch(b, "b", batched)

    if method == "lsqr":
        if precond is not None:
            msg = "`precond` is not supported by `method='lsqr'`; pass `precond=None`."
            raise ValueError(msg)
        x_ex = b_ex if x0 is None else _unbatch(x0, "x0", batched)[0]
        fn, params, unravel_x, n_x = _flatten_rect(matvec, b_ex, x_ex, dtype)
        unravel_b = jax.flatten_util.ravel_pytree(b_ex)[1]
    else:
        _, op = _flat.flatten(matvec, b_ex, name="b")
        fn, params, unravel_x, n_x = op.fn, op.params, op.unravel, op.size
        unravel_b = op.unravel
        if x0 is not None:
            _check_like(x0, b, "x0", "b")
    pfn, pparams = None, ()
    if precond is not None:
        _checks.check_operator(precond, b_ex, name="b", matvec_name="precond")
        pflat, _ = jax.flatten_util.ravel_pytree(b_ex)

        def pmv(x):
            return jax.flatten_util.ravel_pytree(precond(unravel_b(x)))[0]

        pfn, pparams = jax.closure_convert(pmv, pflat)
        pparams = tuple(pparams)

    maxiter = _checks.check_int(10 * n_x if maxiter is None else maxiter, "maxiter")
    restart = min(_checks.check_int(restart, "restart"), n_x)
    if rtol is None:
        rtol = {8: 1e-6, 4: 1e-4}.get(jnp.dtype(dtype).itemsize, 1e-2)
    rtol = _nonnegative(rtol, "rtol", dtype)
    atol = _nonnegative(atol, "atol", dtype)
    damp = _nonnegative(damp, "damp", dtype)

    B = stack(b)
    X0 = None if x0 is None else stack(x0)
    like = jnp.zeros((m, n_x), dtype) if X0 is None else X0
    spec = _implicit.Spec(
        method, maxiter, restart, bool(history), X0 is not None, bool(throw), bool(implicit)
    )
    X, num_steps, flag, hist = _implicit.solve_block(
        spec, fn, pfn, B, X0, like, tuple(params), pparams, (rtol, atol, damp)
    )
    R = B - _implicit.block(fn, params, m)(X)
    res = c.norm(R)
    status = jnp.where(flag == c.RUNNING, c.MAXITER, flag).astype(jnp.int32)
    status = jnp.where(jnp.isfinite(res) | (status != 0), status, c.NONFINITE)
    if hist is not None:
        steps = jnp.arange(maxiter + 1)
        hist = jnp.where(steps[None, :] <= num_steps[:, None], hist, jnp.nan)
    if throw:
        X = eqx.branched_error_if(X, status != 0, jnp.max(status), c.STATUS_MESSAGES)
    if batched:
        value = jax.vmap(unravel_x, in_axes=0, out_axes=-1)(X)
        sq = slice(None)
    else:
        value = unravel_x(X[0])
        sq = 0
    return Solution(
        value=value,
        converged=(status == c.CONVERGED)[sq],
        num_steps=num_steps[sq],
        residual_norm=res[sq],
        status=status[sq],
        breakdown=(status == c.BREAKDOWN)[sq],
        indefinite=(status == c.INDEFINITE)[sq],
        residual_history=None if hist is None else hist[sq],
    )


def _unbatch(v, name, batched):
    """Return `(one_vector, m, stack)`; `stack(v)` gives the flat block (m, n)."""
    if not batched:

        def stack1(v):
            return jax.flatten_util.ravel_pytree(v)[0][None]

        return v, 1, stack1
    leaves = jax.tree_util.tree_leaves(v)
    if any(jnp.ndim(x) < 1 for x in leaves):
        msg = (
            f"`{name}` must have a trailing batch axis on every leaf when "
            "`batched=True` (e.g. shape (n, m) for m right-hand sides)."
        )
        raise ValueError(msg)
    m = jnp.shape(leaves[0])[-1]
    if any(jnp.shape(x)[-1] != m for x in leaves):
        msg = f"all leaves of `{name}` must have the same trailing batch size; got {m}."
        raise ValueError(msg)

    def stack(v):
        return jax.vmap(lambda u: jax.flatten_util.ravel_pytree(u)[0], in_axes=-1)(v)

    return jax.tree_util.tree_map(lambda x: x[..., 0], v), m, stack


def _check_like(x0, b, name, other):
    s0, s1 = jax.tree_util.tree_structure(x0), jax.tree_util.tree_structure(b)
    l0, l1 = jax.tree_util.tree_leaves(x0), jax.tree_util.tree_leaves(b)
    if s0 != s1 or any(
        jnp.shape(u) != jnp.shape(v) or jnp.result_type(u) != jnp.result_type(v)
        for u, v in zip(l0, l1, strict=True)
    ):
        msg = (
            f"`{name}` must have the structure, shapes and dtype of `{other}`; got "
            f"{[(jnp.shape(u), str(jnp.result_type(u))) for u in l0]} and "
            f"{[(jnp.shape(v), str(jnp.result_type(v))) for v in l1]}."
        )
        raise ValueError(msg)


def _flatten_rect(matvec, b, x, dtype):
    """Flatten a possibly rectangular operator `x -> A x` with `A x` like `b`."""
    xdtype = _checks.check_floating_vector(x, "x0")
    if xdtype != dtype:
        msg = f"`x0` must have the dtype of `b` ({dtype}); got {xdtype}."
        raise TypeError(msg)
    try:
        out = jax.eval_shape(matvec, x)
    except Exception as err:
        msg = (
            f"`matvec` could not be applied to a vector shaped like `x0` (or `b` "
            f"when `x0` is None): {type(err).__name__}: {err}. For a rectangular "
            "operator pass `x0` (e.g. zeros) to give the shape of `x`."
        )
        raise ValueError(msg) from err
    shapes_out = [(leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(out)]
    shapes_b = [
        (jnp.shape(leaf), jnp.result_type(leaf)) for leaf in jax.tree_util.tree_leaves(b)
    ]
    same_tree = jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(b)
    if not same_tree or shapes_out != shapes_b:
        msg = (
            f"`matvec(x)` must be shaped like `b`; got {shapes_out} for `b` "
            f"{shapes_b}. Check the shapes of `b` and `x0`."
        )
        raise ValueError(msg)
    xflat, unravel_x = jax.flatten_util.ravel_pytree(x)

    def mv(v):
        return jax.flatten_util.ravel_pytree(matvec(unravel_x(v)))[0]

    fn, params = jax.closure_convert(mv, xflat)
    return fn, list(params), unravel_x, xflat.shape[0]


def _nonnegative(value, name, dtype):
    if jnp.ndim(value) != 0:
        msg = f"`{name}` must be a scalar; got shape {jnp.shape(value)}."
        raise ValueError(msg)
    if not isinstance(value, jax.core.Tracer) and not np.asarray(value) >= 0:
        msg = f"`{name}` must be nonnegative; got {name}={value!r}."
        raise ValueError(msg)
    return jnp.asarray(value, dtype)
