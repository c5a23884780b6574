"""`funm_action` and `sqrt_action`: f(A) v by one Krylov projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree import _adjoint, _checks, _dense, _eager, _flat, decomp, status
from matfree.funm import _common, _diag, _two_sided
from matfree.funm._common import FunmResult
from matfree.status import Status


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("v"))
def funm_action(
    f,
    matvec,
    v,
    *,
    depth: int,
    symmetric: bool = True,
    reortho: bool = True,
    gradient: str = "adjoint",
    throw: bool = True,
) -> FunmResult:
    r"""Compute `f(A) v` from `depth` Krylov steps, differentiably.

    Symmetric (default): `depth` Lanczos steps give `A Q^T ~ Q^T T` and
    `f(A) v ~ |v| Q^T f(T) e_1`, with `f(T)` from the eigendecomposition of the
    small tridiagonal `T` (derivatives by the Daleckii–Krein formula, finite for
    repeated Ritz values). General (`symmetric=False`): Arnoldi and
    `f(H) = V f(Lambda) V^{-1}` by diagonalising the small Hessenberg `H`.

    Gradients w.r.t. `v` and every array `matvec` closes over need no
    backpropagation through a loop (memory `O(n depth)`). Symmetric path: a
    second Lanczos run on the cotangent `ybar` gives `vbar = f(A) ybar` and the
    operator's cotangent by the Daleckii–Krein formula across the two Ritz
    sets (one VJP of the matvec over `depth` vectors). This differentiates
    `f(A) v` itself, not its Krylov approximation, and stays accurate when `v`
    is smooth (little weight on much of the spectrum), where differentiating
    the decomposition can be wrong by orders of magnitude even though the
    value is exact. General path: likewise, Arnoldi on `A^T` from `ybar`
    (a VJP of the matvec) gives `vbar = f(A^T) ybar`, and the operator's
    cotangent is the Fréchet derivative of `f` across the two Krylov spaces
    (divided differences of `f` between the two sets of Ritz values); an
    adjoint Hessenberg matrix with an ill-conditioned eigenbasis gives a NaN
    gradient.

    Parameters
    ----------
    f
        Scalar function applied elementwise to eigenvalues, e.g. `jnp.log`,
        `jnp.tanh`. With `symmetric=False` it must accept complex arrays and
        satisfy `f(conj(z)) = conj(f(z))` (true for real-analytic `jnp`
        functions). `f` may close over traced values, e.g.
        `jax.grad(lambda p: ... funm_action(lambda x: x**p, ...) ...)`: they
        are differentiated like the operator's parameters (by the Krylov
        approximation of `(d_p f)(A) v`).
    matvec
        JAX-traceable `v -> A v` of a square operator; symmetric unless
        `symmetric=False`.
    v
        Vector, array of shape `(n,)` or a pytree of arrays, of a floating or
        complex dtype. For complex `v`, `symmetric=True` means a Hermitian
        operator, and `f` may be complex-valued on its real eigenvalues (e.g.
        `lambda lam: jnp.exp(-1j * t * lam)` for `expm(-i t A) v`).
    depth
        Krylov depth `k`, a static int with `1 <= k <= n`. `k = n` is exact (up
        to rounding). For `k << n` the error is governed by how well a
        polynomial of degree `k - 1` approximates `f` on the spectrum: for the
        symmetric path, `|error| <= 2 |v| min_p max_{lambda in [a, b]} |f - p|`
        on the spectral interval `[a, b]`. Gradients converge more slowly than
        values: check them at a larger depth (see the docs page).
    symmetric
        `True`: Lanczos (requires a symmetric operator; a cheap run-time check
        with two extra matvecs reports generic non-symmetry as status
        `NOT_SYMMETRIC`). `False`: Arnoldi with diagonalisation of `H`;
        accurate when `H` has a well-conditioned eigenbasis (its condition
        number above `eps^{-1/2}` is reported as status `ILL_CONDITIONED`;
        defective `H` is out of scope).
        For the exponential of a non-symmetric operator use `exp_action`,
        which uses a scaling-and-squaring Padé method instead.
    reortho
        Full re-orthogonalisation in Lanczos (Arnoldi always re-orthogonalises).
    gradient
        `"adjoint"` (default): the custom gradient rules above (reverse mode
        only; `jax.jvp` raises). `"autodiff"`: differentiate through the loops
        (forward mode too, more memory).
    throw
        If `True` (default), a non-zero `status` raises (via
        `matfree.status.error_if`, also under `jit`) whichever field of the
        result is read. With `throw=False`, check `status` yourself: the value
        is then NaN where f(A) v could not be computed.

    Returns
    -------
    FunmResult
        `value` is `f(A) v`, like `v`; `error_estimate` is `None`,
        `num_substeps` is `1`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import matfree
    >>> A = jnp.diag(jnp.arange(1.0, 6.0))
    >>> v = jnp.ones(5)
    >>> fv = matfree.funm_action(jnp.log, lambda x: A @ x, v, depth=5)
    >>> jnp.allclose(fv.value, jnp.log(jnp.arange(1.0, 6.0)))
    Array(True, dtype=bool)

    References
    ----------
    N. Krämer, P. Moreno-Muñoz, H. Roy, S. Hauberg. Gradients of functions of
    large matrices. NeurIPS 2024. N. J. Higham. Functions of Matrices, SIAM 2008
    (Sec. 4.5 for diagonalisation and its limits).
    """
    check_elementwise(f)
    gradient = _checks.check_gradient(gradient, allowed=_common.GRADIENTS)
    flat, op = _flat.flatten(matvec, v, complex_ok=True)
    depth = _checks.check_depth(depth, op.size)
    if symmetric:
        args = (f, op, flat, depth, reortho, gradient)
        value, status = _adjoint.call(lanczos_funm, gradient, *args)
        num_matvecs = depth + 2
    else:
        check_complex_ok(f)
        args = (f, op, flat, depth, gradient)
        value, status = _adjoint.call(arnoldi_funm, gradient, *args)
        num_matvecs = depth
    result = _result(op.unravel(value), status, num_matvecs)
    return _common.finish(result, throw=throw)


@_eager.reuse_compiled(operators=("matvec",), template=_eager.first("v"))
def sqrt_action(
    matvec,
    v,
    *,
    depth: int,
    inverse: bool = False,
    reortho: bool = True,
    gradient: str = "adjoint",
    throw: bool = True,
) -> FunmResult:
    r"""Compute `A^{1/2} v` or `A^{-1/2} v` for a symmetric positive definite `A`.

    `depth` Lanczos steps and the square root (or inverse square root) of the
    Ritz values. `A^{-1/2} z` with `z ~ N(0, I)` samples `N(0, A^{-1})`;
    `A^{1/2} z` samples `N(0, A)`.

    Accuracy: the error is at most `2 |v|` times the best uniform polynomial
    approximation error of degree `depth - 1` of `sqrt` (or `1/sqrt`) on
    `[lambda_min, lambda_max]`; it decays roughly like
    `((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^depth` for the condition number
    `kappa` (like conjugate gradients). Gradients need a larger depth than
    values to converge (see the docs page).

    Parameters
    ----------
    matvec
        JAX-traceable `v -> A v` of a symmetric positive definite operator.
    v
        Vector, shape `(n,)` or a pytree.
    depth
        Lanczos depth, a static int with `1 <= depth <= n`.
    inverse
        `False`: `A^{1/2} v`; `True`: `A^{-1/2} v`.
    reortho, gradient
        As in `funm_action`.
    throw
        Raise if the status is not ok (default). A non-positive Ritz value
        (the operator is not positive definite) is status
        `NOT_POSITIVE_DEFINITE`; with `throw=False` the value is then NaN and
        `status` reports it.

    Returns
    -------
    FunmResult
        `value` is `A^{1/2} v` or `A^{-1/2} v`, like `v`; `error_estimate` is
        `None`, `num_substeps` is `1`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import matfree
    >>> A = jnp.diag(jnp.array([1.0, 4.0, 9.0]))
    >>> matfree.sqrt_action(lambda x: A @ x, jnp.ones(3), depth=3).value
    Array([1., 2., 3.], dtype=float64)
    >>> res = matfree.sqrt_action(lambda x: -A @ x, jnp.ones(3), depth=3, throw=False)
    >>> matfree.status.Status(int(res.status)).name
    'NOT_POSITIVE_DEFINITE'
    """
    gradient = _checks.check_gradient(gradient, allowed=_common.GRADIENTS)
    flat, op = _flat.flatten(matvec, v, complex_ok=True)
    depth = _checks.check_depth(depth, op.size)
    f = jax.lax.rsqrt if inverse else jnp.sqrt
    args = (f, op, flat, depth, reortho, gradient)
    value, status = _adjoint.call(
        lambda *a: lanczos_funm(*a, positive=True), gradient, *args
    )
    return _common.finish(_result(op.unravel(value), status, depth + 2), throw=throw)


def lanczos_funm(f, op, flat, depth, reortho, gradient, *, positive=False):
    """`|v| Q^T f(T) e_1` from Lanczos on the flat operator, and a status code.

    With `gradient="adjoint"`, gradients come from the two-sided rule in
    `_two_sided` (a second Lanczos run on the cotangent), which differentiates
    `f(A) v` itself rather than its Krylov approximation; otherwise autodiff
    runs through the loop.
    """
    if gradient == "adjoint":
        # The values f closes over (e.g. `p` in `lambda x: x**p`) become
        # differentiable arguments of the rule.
        pure, consts = _dense.hoist(f, _flat.real_dtype(flat.dtype))
        value, (T, c, _) = _two_sided.lanczos_action(
            lambda x, s, aux: pure(x, s),
            op.fn,
            depth,
            reortho,
            flat,
            op.params,
            consts,
        )
    else:
        res, c = _common.decompose(
            decomp.lanczos,
            _matvec(op),
            flat,
            depth=depth,
            reortho=reortho,
            gradient="autodiff",
        )
        # f(T) may be infinite for a zero v's stand-in; f(A) 0 = 0 anyway.
        T = jnp.where(c > 0, res.tridiag(), jnp.eye(depth, dtype=res.diag.dtype))
        value = c * (res.basis.T @ _dense.funm_sym(f, T)[:, 0])
    not_symmetric = _common.symmetry_defect(op, flat) if op.size > 1 else False
    conditions = [
        (not_symmetric, Status.NOT_SYMMETRIC),
        (~_common.all_finite(T), Status.NONFINITE),
    ]
    if positive:
        ritz_min = jnp.min(jnp.linalg.eigvalsh(jax.lax.stop_gradient(T)))
        conditions.append((~(ritz_min > 0), Status.NOT_POSITIVE_DEFINITE))
    conditions.append((~_common.all_finite(value), Status.NONFINITE))
    return value, status.first(*conditions)


def arnoldi_funm(f, op, flat, depth, gradient):
    """`|v| Q^T f(H) e_1` from Arnoldi and diagonalisation of `H`, and a status.

    With `gradient="adjoint"`, gradients come from the two-sided rule in
    `_two_sided` (Arnoldi on `A^T` from the cotangent, and the Fréchet
    derivative across the two Krylov spaces); otherwise autodiff runs through
    the loop.
    """
    if gradient == "adjoint":
        pure, consts = _dense.hoist(f, _diag.complex_dtype(flat.dtype))
        value, H, c = _two_sided.arnoldi_funm(pure, op.fn, depth, flat, op.params, consts)
    else:
        res, c = _common.decompose(
            decomp.arnoldi, _matvec(op), flat, depth=depth, gradient=gradient
        )
        H = jnp.where(c > 0, res.hessenberg, jnp.eye(depth, dtype=flat.dtype))
        value = c * (res.basis.T @ _diag.funm_diag(f, H)[:, 0])
    finite = _common.all_finite(value, H)
    H_safe = jnp.where(finite, H, jnp.eye(depth, dtype=flat.dtype))
    cond = _diag.eigvec_condition(H_safe)
    ill = ~(cond <= 1 / jnp.sqrt(jnp.finfo(flat.dtype).eps))
    return value, status.first((~finite, Status.NONFINITE), (ill, Status.ILL_CONDITIONED))


def check_elementwise(f):
    """Trace-time check that `f` is a callable mapping arrays to same-shape arrays."""
    if not callable(f):
        msg = (
            f"`f` must be a callable scalar function applied elementwise to "
            f"eigenvalues (e.g. `jnp.exp`); got an object of type {type(f).__name__}."
        )
        raise TypeError(msg)
    x = jax.ShapeDtypeStruct((3,), jnp.float32)
    try:
        out = jax.eval_shape(f, x)
    except Exception as err:
        msg = (
            "`f` could not be applied to an array of eigenvalues: "
            f"{type(err).__name__}: {err}"
        )
        raise TypeError(msg) from err
    if getattr(out, "shape", None) != (3,):
        msg = (
            "`f` must act elementwise (map an array of eigenvalues to an array of "
            f"the same shape); f(x) for x of shape (3,) has shape "
            f"{getattr(out, 'shape', type(out).__name__)}. Use e.g. `jnp.exp`."
        )
        raise ValueError(msg)
    _check_acts_elementwise(f)


def _check_acts_elementwise(f):
    """Check on a probe with distinct entries that `f(x)[i]` depends on `x[i]` only.

    Skipped where `f` cannot be evaluated on concrete numbers at trace time
    (it closes over traced values): the shape check above still holds there.
    """
    try:
        with jax.ensure_compile_time_eval():
            x = jnp.asarray([0.75, 1.5, 2.25], dtype=jnp.float32)
            whole = f(x)
            parts = jnp.concatenate([jnp.reshape(f(x[i : i + 1]), (1,)) for i in range(3)])
            if isinstance(whole, jax.core.Tracer) or isinstance(parts, jax.core.Tracer):
                return
            same = bool(jnp.allclose(whole, parts, rtol=1e-5, atol=1e-6, equal_nan=True))
    except Exception:  # noqa: BLE001 - f that fails here fails later with its own error
        return
    if not same:
        msg = (
            "`f` must act elementwise (each entry of f(x) a function of the same "
            "entry of x only, like `jnp.exp`); f([0.75, 1.5, 2.25]) differs from "
            "applying f to each entry alone. Matrix functions are defined through "
            "the eigenvalues one at a time."
        )
        raise ValueError(msg)


def check_complex_ok(f):
    """Trace-time check that `f` accepts complex arrays (needed for Arnoldi)."""
    x = jax.ShapeDtypeStruct((3,), jnp.complex64)
    try:
        out = jax.eval_shape(f, x)
    except Exception as err:
        msg = (
            "`symmetric=False` applies `f` to complex eigenvalues, but `f` failed on "
            f"a complex array ({type(err).__name__}: {err}). Use `jnp` functions that "
            "accept complex input, or `symmetric=True` for a symmetric operator."
        )
        raise TypeError(msg) from err
    if not jnp.issubdtype(out.dtype, jnp.complexfloating):
        msg = (
            "`symmetric=False` applies `f` to complex eigenvalues, but `f` returned "
            f"{out.dtype} for complex input (it must return complex values, e.g. "
            "`jnp.exp`, not `jnp.abs` or a real cast)."
        )
        raise TypeError(msg)


def _matvec(op):
    return lambda x: op.fn(x, *op.params)


def _result(value, code, num_matvecs) -> FunmResult:
    return FunmResult(
        value=value,
        status=code,
        error_estimate=None,
        num_substeps=jnp.int32(1),
        num_matvecs=jnp.int32(num_matvecs),
    )
