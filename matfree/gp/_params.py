"""GP hyperparameters: validation and the unconstrained (softplus) transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from matfree import operators

KERNELS = operators.KERNELS
NAMES = ("lengthscale", "variance", "noise")


def check_kernel(kernel) -> str:
    """Raise a `ValueError` unless `kernel` names a known kernel."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        msg = f"`kernel` must be one of {KERNELS}; got kernel={kernel!r}."
        raise ValueError(msg)
    return kernel


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_data(X, y=None):
    """Return `(X, y)` as arrays of one floating dtype after checking their shapes.

    Non-finite values are rejected when the data are concrete (not traced).
    """
    X = jnp.asarray(X)
    if X.ndim != 2:
        msg = f"`X` must have shape (n, d); got shape {X.shape}. Use X[:, None] for 1-D."
        raise ValueError(msg)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        msg = (
            f"`X` must be a floating array; got dtype {X.dtype}. Cast with X.astype(float)."
        )
        raise TypeError(msg)
    if _concrete(X) and not np.all(np.isfinite(np.asarray(X))):
        msg = "`X` contains non-finite values (NaN or inf); remove or impute them."
        raise ValueError(msg)
    if y is None:
        return X, None
    y = jnp.asarray(y, X.dtype)
    if y.shape != (X.shape[0],):
        msg = (
            f"`X` and `y` must have matching shapes (n, d) and (n,); got X.shape="
            f"{X.shape} and y.shape={y.shape}."
        )
        raise ValueError(msg)
    if _concrete(y) and not np.all(np.isfinite(np.asarray(y))):
        msg = "`y` contains non-finite values (NaN or inf); remove or impute them."
        raise ValueError(msg)
    return X, y


def check_params(params, d: int, dtype):
    """Return the hyperparameters as arrays of `dtype`, checking names, shapes, signs."""
    if not isinstance(params, dict) or set(params) != set(NAMES):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        msg = f"`params` must be a dict with keys {NAMES}; got {got}."
        raise ValueError(msg)
    out = {k: jnp.asarray(params[k], dtype) for k in NAMES}
    if out["lengthscale"].shape not in ((), (d,)):
        msg = (
            f"`params['lengthscale']` must be a scalar or have shape ({d},) (one per "
            f"input dimension); got shape {out['lengthscale'].shape}."
        )
        raise ValueError(msg)
    for k in ("variance", "noise"):
        if out[k].shape != ():
            msg = f"`params[{k!r}]` must be a scalar; got shape {out[k].shape}."
            raise ValueError(msg)
    for k in NAMES:
        if _concrete(out[k]) and not np.all(np.asarray(out[k]) > 0):
            msg = (
                f"`params[{k!r}]` must be positive and finite; got {np.asarray(out[k])}. "
                "Optimise on the unconstrained scale (`gp.unconstrain`/`gp.constrain`) "
                "to keep it positive."
            )
            raise ValueError(msg)
    return out


def constrain(raw):
    """Map unconstrained parameters to natural units by `softplus`.

    The inverse of `unconstrain`. `fit` optimises on this scale, so the
    hyperparameters stay positive.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> p = {"lengthscale": jnp.array([0.5, 2.0]), "variance": 1.0, "noise": 0.1}
    >>> q = constrain(unconstrain(p))
    >>> bool(jnp.allclose(q["lengthscale"], p["lengthscale"]))
    True
    """
    return jax.tree_util.tree_map(jax.nn.softplus, raw)


def unconstrain(params):
    """Map positive parameters to the unconstrained scale (inverse softplus)."""

    def inv_softplus(x):
        x = jnp.asarray(x, float) if not hasattr(x, "dtype") else x
        return x + jnp.log(-jnp.expm1(-x))

    return jax.tree_util.tree_map(inv_softplus, params)
