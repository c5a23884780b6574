"""Fitting GP hyperparameters with optax (the shared loop of `matfree._fit`)."""

from __future__ import annotations

import optax

from matfree import _checks
from matfree._fit import FitResult, check_optimizer, minimize
from matfree.gp import _lml, _params


def fit(
    params,
    X,
    y,
    *,
    key,
    optimizer=None,
    num_steps: int = 100,
    progress: bool = True,
    throw: bool = True,
    **lml_options,
) -> FitResult:
    """Fit GP hyperparameters by maximising the log marginal likelihood.

    Minimises `-log_marginal_likelihood(...).value / n` with an optax
    optimizer on the unconstrained (softplus) scale, so every parameter stays
    positive. Each step draws fresh probes; the step (value, gradient,
    update) is one jit-compiled function.

    Parameters
    ----------
    params
        Initial hyperparameters in natural units (see
        `log_marginal_likelihood`).
    X, y
        Training inputs `(n, d)` and targets `(n,)`.
    key
        A `jax.random` key; split into one key per step.
    optimizer
        An `optax.GradientTransformation`; default `optax.adam(0.1)`.
        Optimisers with a line search (`optax.lbfgs`) work too (the step's
        probes are fixed within a step).
    num_steps
        Number of optimisation steps (a static int).
    progress
        Print a progress bar with the current loss and the step rate.
    throw
        Raise at the first step whose log marginal likelihood has a non-zero
        status (e.g. a CG solve that did not converge); `False` stops the
        loop there and returns the last good iterate with that status.
    **lml_options
        Passed to `log_marginal_likelihood` (e.g. `kernel=`, `method=`,
        `gradient=`, `num_probes=`, `depth=`, `precond_rank=`, `rtol=`,
        `rows_per_block=`, `mesh=`: the sharded kernel matvec,
        `docs/sharding.md`).

    Returns
    -------
    FitResult
        `params` (natural units), `raw` (the softplus-inverse), `losses`
        (the loss before each step), `seconds` (per step, the first with
        compilation) and `status`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jnp.linspace(0, 1, 40)[:, None]
    >>> y = jnp.sin(6 * X[:, 0])
    >>> p0 = {"lengthscale": 1.0, "variance": 1.0, "noise": 0.1}
    >>> res = fit(p0, X, y, key=jax.random.PRNGKey(0), num_steps=30,
    ...           progress=False, method="cholesky")
    >>> bool(res.losses[-1] < res.losses[0])
    True
    """
    X, y = _params.check_data(X, y)
    params = _params.check_params(params, X.shape[1], X.dtype)
    num_steps = _checks.check_int(num_steps, "num_steps")
    optimizer = check_optimizer(optimizer, optax.adam(0.1))
    _checks.check_key(key, "each step draws fresh probes")
    n = X.shape[0]

    def loss(raw, key):
        p = _params.constrain(raw)
        res = _lml.log_marginal_likelihood(p, X, y, key=key, throw=False, **lml_options)
        return -res.value / n, res.status

    raw, losses, seconds, status = minimize(
        loss,
        _params.unconstrain(params),
        optimizer=optimizer,
        num_steps=num_steps,
        key=key,
        progress=progress,
        label="gp.fit",
        throw=throw,
    )
    return FitResult(_params.constrain(raw), raw, losses, seconds, status)


__all__ = ["FitResult", "fit"]
