"""Fitting GP hyperparameters with optax (the shared loop of `matfree._fit`)."""

from __future__ import annotations

import optax

from matfree import _checks
from matfree._fit import FitResult, check_optimizer, check_tol, has_linesearch, minimize
from matfree.gp import _lml, _params


def fit(
    params,
    X,
    y,
    *,
    key,
    optimizer=None,
    num_steps: int = 100,
    fixed_probes: bool | None = None,
    tol: float | None = None,
    progress: bool = True,
    throw: bool = True,
    **lml_options,
) -> FitResult:
    """Fit GP hyperparameters by maximising the log marginal likelihood.

    Minimises `-log_marginal_likelihood(...).value / n` with an optax
    optimizer on the unconstrained (softplus) scale, so every parameter stays
    positive. The step (value, gradient, update) is one jit-compiled function.

    Two ways to fit, chosen by the optimizer:

    - **stochastic** (the default, `optax.adam(0.1)`): each step draws fresh
      probes, so the loss is noisy and does not settle; give Adam a decaying
      rate (`optax.adam(optax.cosine_decay_schedule(0.1, num_steps))`) to
      make it settle.
    - **deterministic** (`optimizer=optax.lbfgs()`): the probes are drawn once
      from `key` and kept for every step (`fixed_probes=True`, the default
      for optimisers with a line search), so the loss is a fixed function of
      the hyperparameters (the iterative path's estimate with those probes,
      exactly `-log_marginal_likelihood(p, X, y, key=key).value / n`), the
      line search is sound and the loss decreases monotonically. Pass `tol` to
      stop once it has converged. This is the common practice of exact-GP
      libraries (L-BFGS with fixed probes).

    Parameters
    ----------
    params
        Initial hyperparameters in natural units (see
        `log_marginal_likelihood`).
    X, y
        Training inputs `(n, d)` and targets `(n,)`.
    key
        A `jax.random` key: the probes of every step (`fixed_probes=True`),
        or split into one key per step.
    optimizer
        An `optax.GradientTransformation`; default `optax.adam(0.1)`.
        With a line search (`optax.lbfgs()`), each step evaluates the loss
        at the line search's trial points too (see `num_evaluations`).
    num_steps
        Number of optimisation steps (a static int); with `tol`, the most
        steps.
    fixed_probes
        `True`: the same probes (from `key`) in every step, a deterministic
        loss; `False`: fresh probes in every step. `None` (default): `True`
        for an optimizer with a line search (`optax.lbfgs`,
        `optax.scale_by_zoom_linesearch`, `optax.scale_by_backtracking_linesearch`),
        else `False`. Fixed probes make the fit converge to the optimum of one
        estimate of the loss, whose error is that of a single evaluation
        (`LMLResult.logdet_std_error`); fresh probes average it out over the
        steps but never settle at a constant rate. With fixed probes the
        gradient defaults to `gradient="adjoint"`, the exact derivative of
        the estimated loss (a line search needs it; pass `gradient=` to
        override).
    tol
        `None` (default): run `num_steps` steps. A positive number: stop once
        the loss changed by less than `tol` over the last 5 steps (the
        loss is per data point); if `num_steps` steps do not get there the
        status is `NOT_CONVERGED` (raised with `throw=True`). Meaningful with
        a deterministic loss (`fixed_probes=True` or `method="cholesky"`).
        A line search that finds no decrease also leaves the loss unchanged,
        so `tol` is met there too: with `gradient="hutchinson"` passed
        explicitly, the gradient is not the exact derivative of the estimated
        value, and near the estimate's noise floor it may stop being a
        descent direction before the loss is stationary (a step with the line
        search's maximum of evaluations and no decrease in `num_evaluations`
        shows it); the default `"adjoint"` keeps value and gradient
        consistent.
    progress
        Print a progress bar with the current loss and the step rate.
    throw
        Raise at the first step whose log marginal likelihood has a non-zero
        status (e.g. a CG solve that did not converge), or if `tol` is not
        reached; `False` stops the loop there and returns the last good
        iterate with that status.
    **lml_options
        Passed to `log_marginal_likelihood` (e.g. `kernel=`, `method=`,
        `gradient=`, `num_probes=`, `depth=`, `precond_rank=`, `rtol=`,
        `rows_per_block=`, `mesh=`: the sharded kernel matvec,
        `docs/sharding.md`; `materialize=True`: the kernel matrix stored once
        per evaluation, several times faster where `n^2` numbers fit).

    Returns
    -------
    FitResult
        `params` (natural units), `raw` (the softplus-inverse), `losses`
        (the loss before each step), `seconds` (per step, the first with
        compilation), `status` and `num_evaluations` (loss evaluations per
        step: their sum is the work in epochs).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax
    >>> X = jnp.linspace(0, 1, 40)[:, None]
    >>> y = jnp.sin(6 * X[:, 0])
    >>> p0 = {"lengthscale": 1.0, "variance": 1.0, "noise": 0.1}
    >>> res = fit(p0, X, y, key=jax.random.PRNGKey(0), num_steps=30,
    ...           progress=False, method="cholesky")
    >>> bool(res.losses[-1] < res.losses[0])
    True

    L-BFGS, stopped by a tolerance (on the iterative path the probes would be
    fixed); the loss decreases at every step:

    >>> y = y + 0.1 * jnp.cos(37 * X[:, 0])
    >>> res = fit(p0, X, y, key=jax.random.PRNGKey(0), optimizer=optax.lbfgs(),
    ...           num_steps=50, tol=1e-6, progress=False, method="cholesky")
    >>> int(res.status), bool(jnp.all(jnp.diff(res.losses) <= 1e-12))
    (0, True)
    >>> int(res.num_evaluations.sum()) >= len(res.losses)
    True
    """
    X, y = _params.check_data(X, y)
    params = _params.check_params(params, X.shape[1], X.dtype)
    num_steps = _checks.check_int(num_steps, "num_steps")
    optimizer = check_optimizer(optimizer, optax.adam(0.1))
    tol = check_tol(tol)
    _checks.check_key(key, "the probes are random")
    raw = _params.unconstrain(params)
    if fixed_probes is None:
        fixed_probes = has_linesearch(optimizer, raw)
    elif not isinstance(fixed_probes, bool):
        msg = (
            "`fixed_probes` must be True (the same probes in every step), False "
            f"(fresh probes) or None (True for a line search); got {fixed_probes!r}."
        )
        raise TypeError(msg)
    if fixed_probes and lml_options.get("method", "iterative") == "iterative":
        # A line search needs the derivative of the loss it evaluates.
        lml_options = {"gradient": "adjoint", **lml_options}
    n = X.shape[0]

    def loss(raw, key):
        p = _params.constrain(raw)
        res = _lml.log_marginal_likelihood(p, X, y, key=key, throw=False, **lml_options)
        return -res.value / n, res.status

    raw, losses, seconds, status, evaluations = minimize(
        loss,
        raw,
        optimizer=optimizer,
        num_steps=num_steps,
        key=key,
        fixed_key=fixed_probes,
        tol=tol,
        progress=progress,
        label="gp.fit",
        throw=throw,
    )
    return FitResult(_params.constrain(raw), raw, losses, seconds, status, evaluations)


__all__ = ["FitResult", "fit"]
