"""`funm_action` and `sqrt_action`: f(A) v by one Krylov projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree import _checks, _dense, _flat, decomp
from matfree.funm import _common, _diag, _two_sided


def funm_action(
    f,
    matvec,
    v,
    *,
    depth: int,
    symmetric: bool = True,
    reortho: bool = True,
    custom_vjp: bool = True,
    return_info: bool = False,
    throw: bool = True,
):
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
    value is exact. General path: the adjoint of `matfree.decomp.arnoldi`.

    Parameters
    ----------
    f
        Scalar function applied elementwise to eigenvalues, e.g. `jnp.log`,
        `jnp.tanh`. With `symmetric=False` it must accept complex arrays and
        satisfy `f(conj(z)) = conj(f(z))` (true for real-analytic `jnp`
        functions).
    matvec
        JAX-traceable `v -> A v` of a square operator; symmetric unless
        `symmetric=False`.
    v
        Vector, array of shape `(n,)` or a pytree of arrays.
    depth
        Krylov depth `k`, a static int with `1 <= k <= n`. `k = n` is exact (up
        to rounding). For `k << n` the error is governed by how well a
        polynomial of degree `k - 1` approximates `f` on the spectrum: for the
        symmetric path, `|error| <= 2 |v| min_p max_{lambda in [a, b]} |f - p|`
        on the spectral interval `[a, b]`. Gradients converge more slowly than
        values: check them at a larger depth (see the docs page).
    symmetric
        `True`: Lanczos (requires a symmetric operator; a cheap run-time check
        with two extra matvecs reports generic non-symmetry as status `3`).
        `False`: Arnoldi with diagonalisation of `H`; accurate when `H` has a
        well-conditioned eigenbasis (its condition number above
        `eps^{-1/2}` is reported as status `4`; defective `H` is out of scope).
        For the exponential of a non-symmetric operator use `exp_action`,
        which uses a scaling-and-squaring Padé method instead.
    reortho
        Full re-orthogonalisation in Lanczos (Arnoldi always re-orthogonalises).
    custom_vjp
        Use the custom gradient rules above (reverse mode only). `False`
        differentiates through the loops (forward mode too, more memory).
    return_info
        Also return a `FunmInfo` with the run-time status.
    throw
        Raise (via `equinox.error_if`, also under `jit`) if the status is not
        ok. With `throw=False`, pass `return_info=True` and check
        `info.status` yourself: the value is then NaN where f(A) v could not be
        computed.

    Returns
    -------
    value
        `f(A) v`, like `v`. With `return_info=True`, a tuple `(value, info)`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import matfree
    >>> A = jnp.diag(jnp.arange(1.0, 6.0))
    >>> v = jnp.ones(5)
    >>> fv = matfree.funm_action(jnp.log, lambda x: A @ x, v, depth=5)
    >>> jnp.allclose(fv, jnp.log(jnp.arange(1.0, 6.0)))
    Array(True, dtype=bool)

    References
    ----------
    N. Krämer, P. Moreno-Muñoz, H. Roy, S. Hauberg. Gradients of functions of
    large matrices. NeurIPS 2024. N. J. Higham. Functions of Matrices, SIAM 2008
    (Sec. 4.5 for diagonalisation and its limits).
    """
    check_elementwise(f)
    flat, op = _flat.flatten(matvec, v)
    depth = _checks.check_depth(depth, op.size)
    if symmetric:
        value, status = lanczos_funm(f, op, flat, depth, reortho, custom_vjp)
        num_matvecs = depth + 2
    else:
        check_complex_ok(f)
        value, status = arnoldi_funm(f, op, flat, depth, custom_vjp)
        num_matvecs = depth
    info = _make_info(status, num_matvecs, flat.dtype)
    return _common.finish(op.unravel(value), info, return_info=return_info, throw=throw)


def sqrt_action(
    matvec,
    v,
    *,
    depth: int,
    inverse: bool = False,
    reortho: bool = True,
    custom_vjp: bool = True,
    return_info: bool = False,
    throw: bool = True,
):
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
    reortho, custom_vjp
        As in `funm_action`.
    return_info
        Also return a `FunmInfo`.
    throw
        Raise if the status is not ok (default). A non-positive Ritz value
        (the operator is not positive definite) is status `2`; with
        `throw=False` the value is then NaN and only `info.status` reports it.

    Returns
    -------
    value
        `A^{1/2} v` or `A^{-1/2} v`, like `v`; with `return_info=True` a tuple
        `(value, info)`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import matfree
    >>> A = jnp.diag(jnp.array([1.0, 4.0, 9.0]))
    >>> matfree.sqrt_action(lambda x: A @ x, jnp.ones(3), depth=3)
    Array([1., 2., 3.], dtype=float64)
    >>> value, info = matfree.sqrt_action(
    ...     lambda x: -A @ x, jnp.ones(3), depth=3, throw=False, return_info=True
    ... )
    >>> int(info.status)  # not positive definite
    2
    """
    flat, op = _flat.flatten(matvec, v)
    depth = _checks.check_depth(depth, op.size)
    f = jax.lax.rsqrt if inverse else jnp.sqrt
    value, status = lanczos_funm(f, op, flat, depth, reortho, custom_vjp, positive=True)
    info = _make_info(status, depth + 2, flat.dtype)
    return _common.finish(op.unravel(value), info, return_info=return_info, throw=throw)


def lanczos_funm(f, op, flat, depth, reortho, custom_vjp, *, positive=False):
    """`|v| Q^T f(T) e_1` from Lanczos on the flat operator, and a status code.

    With `custom_vjp`, gradients come from the two-sided rule in
    `_two_sided` (a second Lanczos run on the cotangent), which differentiates
    `f(A) v` itself rather than its Krylov approximation; otherwise autodiff
    runs through the loop.
    """
    if custom_vjp:
        value, (T, c, _) = _two_sided.lanczos_action(
            lambda x, s, aux: f(x),
            op.fn,
            depth,
            reortho,
            flat,
            op.params,
            jnp.zeros((), flat.dtype),
        )
    else:
        res = decomp.lanczos(_matvec(op), flat, depth, reortho=reortho, custom_vjp=False)
        c = res.init_norm
        # A zero start vector gives T = 0; f(0) may be infinite, but f(A) 0 = 0.
        T = jnp.where(c > 0, res.tridiag(), jnp.eye(depth, dtype=flat.dtype))
        value = c * (res.basis.T @ _dense.funm_sym(f, T)[:, 0])
    not_symmetric = _common.symmetry_defect(op, flat) if op.size > 1 else False
    conditions = [
        (not_symmetric, _common.STATUS_NOT_SYMMETRIC),
        (~_common.all_finite(T), _common.STATUS_NONFINITE),
    ]
    if positive:
        ritz_min = jnp.min(jnp.linalg.eigvalsh(jax.lax.stop_gradient(T)))
        conditions.append((~(ritz_min > 0), _common.STATUS_NOT_POSITIVE))
    conditions.append((~_common.all_finite(value), _common.STATUS_NONFINITE))
    return value, _common.first_problem(*conditions)


def arnoldi_funm(f, op, flat, depth, custom_vjp):
    """`|v| Q^T f(H) e_1` from Arnoldi and diagonalisation of `H`, and a status."""
    res = decomp.arnoldi(_matvec(op), flat, depth, custom_vjp=custom_vjp)
    c = res.init_norm
    H = jnp.where(c > 0, res.hessenberg, jnp.eye(depth, dtype=flat.dtype))
    value = c * (res.basis.T @ _diag.funm_diag(f, H)[:, 0])
    finite = _common.all_finite(value, H)
    H_safe = jnp.where(finite, H, jnp.eye(depth, dtype=flat.dtype))
    cond = _diag.eigvec_condition(H_safe)
    ill = ~(cond <= 1 / jnp.sqrt(jnp.finfo(flat.dtype).eps))
    return value, _common.first_problem(
        (~finite, _common.STATUS_NONFINITE), (ill, _common.STATUS_ILL_CONDITIONED)
    )


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


def _make_info(status, num_matvecs, dtype):
    return _common.FunmInfo(
        status=status,
        error_estimate=jnp.asarray(jnp.nan, dtype),
        num_substeps=jnp.int32(1),
        num_matvecs=jnp.int32(num_matvecs),
    )
