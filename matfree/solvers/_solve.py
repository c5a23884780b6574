"""`matfree.solve`: one verb for the Krylov solvers, and its `Solution`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from matfree import _checks, _eager, _flat, status
from matfree.solvers import _common as c
from matfree.solvers import _implicit

METHODS = ("cg", "minres", "gmres", "bicgstab", "lsqr", "gcr")


class Solution(NamedTuple):
    """The result of `matfree.solve`.

    With `batched=True`, every field has a leading axis of size `m` (one
    entry per right-hand side).

    Attributes
    ----------
    value
        The approximate solution `x`, shaped like `b` (like `x0` for a
        rectangular `"lsqr"` problem).
    status
        A `matfree.status.Status` code: `OK` (converged), `NOT_CONVERGED`
        (`maxiter` reached), `BREAKDOWN` (a division by zero in the
        recurrence: a non-SPD preconditioner, a stagnating BiCGStab, a
        singular operator), `NOT_POSITIVE_DEFINITE` (CG met `p^T A p <= 0` and
        stopped without taking the step; `value` is the last iterate) or
        `NONFINITE` (NaN or inf in `b`, `x0` or the operator's output;
        `value` and `residual_norm` are then NaN, for every method).
    converged
        `status == OK`: the method's stopping test held,
        `|r| <= max(rtol |b|, atol)` for the updated residual `r` of the
        recurrence; for `"lsqr"` also `|A^T r - damp^2 x| <= rtol |A|_F |r|`
        (a least-squares solution).
    num_steps
        Iterations taken. One iteration is one matvec for CG, MINRES, GMRES
        (one Arnoldi step) and GCR, two for BiCGStab and LSQR (`A` and `A^T`).
    residual_norm
        `|b - A x|`, recomputed from `value` with one extra matvec.
    residual_history
        With `history=True`: residual norms of the recurrence, shape
        `(maxiter + 1,)`, entry `0` the initial residual, padded with NaN
        after `num_steps`. Otherwise `None`.
    """

    value: Any
    status: jax.Array
    converged: jax.Array
    num_steps: jax.Array
    residual_norm: jax.Array
    residual_history: jax.Array | None


class _Problem(NamedTuple):
    """A solve on flat blocks: operator, preconditioner, block of right-hand sides."""

    op: _flat.FlatOperator  # x (n_x,) -> A x (n_b,)
    pop: _flat.FlatOperator | None  # the preconditioner on (n_b,)
    B: jax.Array  # (m, n_b)
    X0: jax.Array | None  # (m, n_x)


@_eager.reuse_compiled(
    operators=("matvec", "precond"),
    template=_eager.first("x0", fallback="b", batched="batched"),
)
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
    symmetric: bool | None = None,
    restart: int = 30,
    damp=0.0,
    history: bool = False,
    gradient: str = "adjoint",
    batched: bool = False,
    throw: bool = True,
) -> Solution:
    r"""Solve `A x = b` (or `min |A x - b|`) with a Krylov method, matrix-free.

    Parameters
    ----------
    matvec
        A JAX-traceable linear callable `v -> A v`. It may close over arrays;
        gradients reach them (by implicit differentiation, see `gradient`).
    b
        Right-hand side: an array `(n,)` or a pytree of arrays of one floating
        or complex dtype (complex: inner products conjugate, "symmetric" means
        Hermitian, see the docs page "Complex numbers"). With `batched=True`,
        every leaf has a leading axis of size `m` (e.g. `b` of shape
        `(m, n)`): `m` systems solved together.
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
        Initial guess, shaped like the solution (default zero; with
        `batched=True` with the same leading axis `m` as `b`). For a
        rectangular `"lsqr"` problem it is required: it gives the shape of `x`.
    rtol, atol
        Stop when `|b - A x| <= max(rtol |b|, atol)`. Default `rtol`: `1e-6`
        in float64, `1e-4` in float32 and `1e-2` in lower precision.
    maxiter
        Static bound on the number of iterations (matrix-vector products);
        default `10 n`. For `"gmres"` and `"gcr"` with `gradient="adjoint"`
        and `history=False` the default is `10 n` restart *cycles*
        (`10 n restart` iterations), as in SciPy and `jax.scipy`: restarted
        methods can need many cycles on ill-conditioned problems (a 1-D
        Laplacian, n = 300, needs about 10,000 GMRES(30) iterations), and a
        cycle that makes no progress ends the iteration with `STAGNATED`.
    symmetric
        Declare whether `A` is symmetric (Hermitian for complex `A`). `False`
        with `"cg"` or `"minres"` is an error. (Symmetry is not checked numerically.)
    restart
        Krylov dimension per cycle of `"gmres"` and `"gcr"`; capped at `n`.
        Memory `O(n restart)` per right-hand side; a larger `restart` makes
        each cycle stronger (`restart = n` is full GMRES).
    damp
        Damping (ridge) parameter of `"lsqr"`:
        `min |A x - b|^2 + damp^2 |x|^2`. With `x0`, the damping applies to
        the correction `x - x0` (as in `scipy.sparse.linalg.lsqr`).
    history
        Record the residual norm after every iteration.
    gradient
        `"adjoint"` (default): implicit differentiation, each derivative one
        more solve with the same method (memory independent of the number
        of iterations). Forward mode (`jax.jvp`, `jax.jacfwd`), reverse mode
        (`jax.grad`) and higher derivatives (`jax.hessian`) all work. For
        `"lsqr"` and `"minres"` it is the derivative of the minimum-norm
        solution `A^+ b`, also for rank-deficient or singular (consistent)
        problems; for the other methods that of `A^{-1} b`. A derivative whose
        solve fails is NaN (and raises with `throw=True`). `"autodiff"`:
        differentiate through the iterations (memory grows with `maxiter`,
        as the loop runs to `maxiter` with frozen steps).
    batched
        Solve `m` systems whose right-hand sides are stacked along a leading
        axis of `b` (shape `(m, n)`), in one loop with one batched matvec per
        step (the matvec is `vmap`-ed over the rows, which lets e.g. a kernel
        matvec share its kernel evaluations). Each row stops on its own
        tolerance; every field of the `Solution` gets the leading axis `m`.
    throw
        With `True` (default), a non-zero `status` raises (via
        `matfree.status.error_if`, attached to every field of the result, also
        under `jit`); a solve of a derivative (the adjoint solve of a
        gradient, the tangent solve of `jax.jvp`) raises likewise if it does
        not converge. With `False`, inspect `status` yourself; a derivative
        that could not be computed is NaN.

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

    Two right-hand sides along a leading axis:

    >>> B = jnp.array([[1.0, 2.0], [0.0, 1.0]])
    >>> sol = matfree.solve(lambda v: A @ v, B, batched=True)
    >>> sol.value.shape, sol.num_steps.shape
    ((2, 2), (2,))
    """
    _check_options(method, symmetric, gradient)
    problem = _flatten_problem(matvec, b, x0, precond, method=method, batched=batched)
    n_x = problem.op.size
    dtype = problem.op.dtype
    restart = min(_checks.check_int(restart, "restart"), n_x)
    maxiter = _checks.check_int(
        _default_maxiter(method, n_x, restart, gradient, history)
        if maxiter is None
        else maxiter,
        "maxiter",
    )
    tols = _tolerances(rtol, atol, damp, dtype)
    spec = _implicit.Spec(
        method, maxiter, restart, bool(history), x0 is not None, bool(throw), gradient
    )
    X, num_steps, flag, hist = _run(spec, problem, tols)
    result = _result(problem, X, num_steps, flag, hist, maxiter)
    if throw:
        result = status.error_if(result, result.status)
    if batched:
        return result._replace(value=_flat.unravel_rows(problem.op, result.value))
    return jax.tree_util.tree_map(lambda x: x[0], result)._replace(
        value=problem.op.unravel(result.value[0])
    )


def _default_maxiter(method, n, restart, gradient, history) -> int:
    """`10 n` iterations; `10 n` restart cycles for GMRES/GCR where affordable.

    With `gradient="autodiff"` the loop runs to `maxiter` and stores its state
    per step, and a history buffer has `maxiter + 1` entries: there the bound
    stays `10 n`.
    """
    if method in ("gmres", "gcr") and gradient == "adjoint" and not history:
        return 10 * n * restart
    return 10 * n


def _check_options(method, symmetric, gradient):
    _checks.check_choice(method, "method", METHODS)
    _checks.check_gradient(gradient, allowed=("adjoint", "autodiff"))
    if symmetric is False and method in _implicit.SYMMETRIC:
        msg = (
            f"`method={method!r}` needs a symmetric operator, but `symmetric=False` "
            "was given; use `method='gmres'`, `'bicgstab'` or `'gcr'` for "
            "non-symmetric operators."
        )
        raise ValueError(msg)


def _flatten_problem(matvec, b, x0, precond, *, method, batched) -> _Problem:
    """Validate the operator, `b`, `x0` and `precond`; flatten them to blocks."""
    _checks.check_callable(matvec)
    _checks.check_floating_vector(b, "b", complex_ok=True)
    b_ex, stack = _unbatch(b, "b", batched)
    if method == "lsqr":
        if precond is not None:
            msg = "`precond` is not supported by `method='lsqr'`; pass `precond=None`."
            raise ValueError(msg)
        x_ex = b_ex if x0 is None else _unbatch(x0, "x0", batched)[0]
        # Without `x0`, `x` is shaped like `b` (a square least-squares problem).
        _, op = _flat.flatten(
            matvec, x_ex, name="x0", out_like=b_ex, out_name="b", complex_ok=True
        )
    else:
        _, op = _flat.flatten(matvec, b_ex, name="b", complex_ok=True)
        if x0 is not None:
            _check_like(x0, b, "x0", "b")
    pop = None
    if precond is not None:
        _, pop = _flat.flatten(
            precond, b_ex, name="b", matvec_name="precond", complex_ok=True
        )
    B = stack(b)
    X0 = None if x0 is None else stack(x0)
    if X0 is not None and X0.shape[0] != B.shape[0]:
        msg = (
            f"`x0` and `b` must have the same batch size; got {X0.shape[0]}, {B.shape[0]}."
        )
        raise ValueError(msg)
    return _Problem(op, pop, B, X0)


def _tolerances(rtol, atol, damp, dtype):
    dtype = _flat.real_dtype(dtype)  # tolerances are real, also for complex `b`
    if rtol is None:
        rtol = {8: 1e-6, 4: 1e-4}.get(jnp.dtype(dtype).itemsize, 1e-2)
    rtol = _nonnegative(rtol, "rtol", dtype)
    atol = _nonnegative(atol, "atol", dtype)
    damp = _nonnegative(damp, "damp", dtype)
    return rtol, atol, damp


def _run(spec, problem, tols):
    """The solve on the flat block, with the differentiation rule of `spec.gradient`."""
    op, pop, B, X0 = problem
    m = B.shape[0]
    like = jnp.zeros((m, op.size), op.dtype) if X0 is None else X0
    pfn, pparams = (None, ()) if pop is None else (pop.fn, tuple(pop.params))
    args = (spec, op.fn, pfn, B, X0, like, tuple(op.params), pparams, tols)
    return _implicit.solve_block(*args)


def _result(problem, X, num_steps, flag, hist, maxiter) -> Solution:
    """The `Solution` on the flat block (every field with the leading axis m)."""
    R = problem.B - problem.op.rows(X)
    res = c.norm(R)
    code = c.to_status(flag)
    code = jnp.where(jnp.isfinite(res) | (code != 0), code, status.Status.NONFINITE)
    code = code.astype(jnp.int32)
    # One behaviour for every method: what could not be computed is NaN.
    nonfinite = code == status.Status.NONFINITE
    X = jnp.where(nonfinite[:, None], jnp.nan, X)
    res = jnp.where(nonfinite, jnp.nan, res)
    if hist is not None:
        steps = jnp.arange(maxiter + 1)
        hist = jnp.where(steps[None, :] <= num_steps[:, None], hist, jnp.nan)
    return Solution(
        value=X,
        status=code,
        converged=code == status.Status.OK,
        num_steps=num_steps,
        residual_norm=res,
        residual_history=hist,
    )


def _unbatch(v, name, batched):
    """Return `(one_vector, stack)`; `stack(v)` gives the flat block (m, n)."""
    if not batched:

        def stack1(v):
            return jax.flatten_util.ravel_pytree(v)[0][None]

        return v, stack1
    leaves = jax.tree_util.tree_leaves(v)
    if any(jnp.ndim(x) < 1 for x in leaves):
        msg = (
            f"`{name}` must have a leading batch axis on every leaf when "
            "`batched=True` (e.g. shape (m, n) for m right-hand sides)."
        )
        raise ValueError(msg)
    m = jnp.shape(leaves[0])[0]
    if any(jnp.shape(x)[0] != m for x in leaves):
        msg = f"all leaves of `{name}` must have the same leading batch size; got {m}."
        raise ValueError(msg)

    def stack(v):
        return jax.vmap(lambda u: jax.flatten_util.ravel_pytree(u)[0])(v)

    return jax.tree_util.tree_map(lambda x: x[0], v), stack


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


def _nonnegative(value, name, dtype):
    if jnp.ndim(value) != 0:
        msg = f"`{name}` must be a scalar; got shape {jnp.shape(value)}."
        raise ValueError(msg)
    if not isinstance(value, jax.core.Tracer) and not np.asarray(value) >= 0:
        msg = f"`{name}` must be nonnegative; got {name}={value!r}."
        raise ValueError(msg)
    return jnp.asarray(value, dtype)
