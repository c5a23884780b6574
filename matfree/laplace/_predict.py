"""The Laplace posterior: samples and the linearised (GLM) predictive."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp

from matfree import _checks
from matfree import status as _status
from matfree.funm import sqrt_action
from matfree.laplace import _curvature, _evidence, _metrics, _model

STRUCTURES = ("full", "diagonal")
PREDICT_METHODS = ("linearised", "mc")


class Posterior(eqx.Module):
    """A Laplace posterior `N(theta*, (G + A)^{-1})`; built by `posterior`.

    Attributes
    ----------
    problem
        The validated model, data and likelihood (MAP parameters, `sigma`).
    prior
        The prior precision as a flat vector `(P,)`.
    structure
        `"full"` (the GGN as an operator) or `"diagonal"` (its exact diagonal).
    diag
        The exact GGN diagonal `(P,)` for `"diagonal"` and for `"full"` with
        `precond="diagonal"`, else `None`.
    precond
        `"diagonal"` or `None`: whether `"full"` samples are preconditioned.
    """

    problem: Any
    prior: jax.Array
    structure: str = eqx.field(static=True)
    diag: Any = None
    precond: Any = eqx.field(static=True, default=None)

    @property
    def size(self) -> int:
        """The number of parameters `P`."""
        return self.problem.size

    def precision(self, v):
        """The posterior precision times a flat vector: `(G + A) v`."""
        if self.structure == "diagonal":
            return (self.diag + self.prior) * v
        return _curvature.ggn_flat(self.problem)(v) + self.prior * v


def posterior(
    model,
    X,
    y,
    *,
    likelihood: str,
    prior_precision,
    sigma=None,
    structure: str = "full",
    precond: str | None = "diagonal",
    chunk_size: int | None = None,
) -> Posterior:
    r"""The Laplace posterior of a trained model: `N(theta*, (G + A)^{-1})`.

    Parameters
    ----------
    model, X, y, likelihood, sigma, chunk_size
        As in `ggn`; the model holds the MAP parameters `theta*`.
    prior_precision
        Positive scalar or pytree (see `log_evidence`).
    structure
        `"full"` (default): the full GGN, used through its matvec only
        (samples by Lanczos, `matfree.sqrt_action`). `"diagonal"`: the exact
        GGN diagonal (`diagonal`), the usual cheap approximation.
    precond
        `"diagonal"` (default) or `None`. For `"full"`: draw samples as
        `D^{-1/2} (D^{-1/2} (G + A) D^{-1/2})^{-1/2} z` with `D = diag(G) + A`
        (the exact GGN diagonal). They have the same covariance `(G + A)^{-1}`,
        but the Lanczos iteration runs on a better-conditioned matrix, so a
        small `depth` is far more accurate when layers differ in scale.

    Returns
    -------
    Posterior

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.Linear(3, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    >>> post = posterior(model, X, jnp.zeros((5, 1)), likelihood="regression",
    ...                  sigma=1.0, prior_precision=1.0, structure="diagonal")
    >>> post.size
    4
    """
    structure = _checks.check_choice(structure, "structure", STRUCTURES)
    if precond is not None:
        _checks.check_choice(precond, "precond", ("diagonal",))
    problem = _model.setup(
        model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=chunk_size
    )
    a, _ = _evidence.prior_flat(prior_precision, problem)
    need_diag = structure == "diagonal" or precond == "diagonal"
    diag = _curvature.ggn_diagonal_flat(problem) if need_diag else None
    precond = precond if structure == "full" else None
    return Posterior(problem, a, structure, diag, precond)


class Samples(NamedTuple):
    """The result of `sample`.

    Attributes
    ----------
    value
        Parameter samples, a pytree like the parameters with a leading axis
        `num_samples`.
    status
        `0`, or the status of a Lanczos inverse square root
        (`NOT_POSITIVE_DEFINITE`, `NONFINITE`).
    deltas
        The flat deviations `theta - theta*`, shape `(num_samples, P)`.
    """

    value: Any
    status: jax.Array
    deltas: jax.Array


def _check_posterior(post):
    if not isinstance(post, Posterior):
        msg = (
            "`posterior` must be a `matfree.laplace.Posterior` (from "
            f"`matfree.laplace.posterior(...)`); got {type(post).__name__}."
        )
        raise TypeError(msg)


def _default_depth(depth, P):
    return min(50, P) if depth is None else _checks.check_depth(depth, P)


def sample(
    posterior: Posterior,
    *,
    key,
    num_samples: int = 100,
    depth: int | None = None,
    throw: bool = True,
) -> Samples:
    r"""Samples of the Laplace posterior: `theta* + (G + A)^{-1/2} z`, `z ~ N(0, I)`.

    For `structure="full"` the inverse square root acts by `depth` Lanczos
    steps on the posterior precision (`matfree.sqrt_action(...,
    inverse=True)`), one run per sample; the error decays like that of CG on
    `G + A` (see `matfree.sqrt_action`), so check the predictive against a
    larger `depth`: an unconverged inverse square root inflates the variance
    in the data-informed directions. With the posterior's `precond="diagonal"`
    (default) Lanczos runs on the diagonally scaled precision (same
    covariance, better conditioned). For `"diagonal"` the samples are exact.

    Parameters
    ----------
    posterior
        From `posterior`.
    key
        A `jax.random` key.
    num_samples
        Number of samples.
    depth
        Lanczos depth (`"full"` only); default `min(50, P)`.
    throw
        Raise on a non-zero status (default).

    Returns
    -------
    Samples

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.Linear(3, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    >>> post = posterior(model, X, jnp.zeros((5, 1)), likelihood="regression",
    ...                  sigma=1.0, prior_precision=1.0)
    >>> s = sample(post, key=jax.random.PRNGKey(2), num_samples=4, depth=4)
    >>> s.value.weight.shape
    (4, 1, 3)
    """
    _check_posterior(posterior)
    _checks.check_key(key, "the samples are random")
    num_samples = _checks.check_int(num_samples, "num_samples")
    depth = _default_depth(depth, posterior.size)
    result = _sample(posterior, key, num_samples, depth)
    return _status.error_if(result, result.status) if throw else result


@eqx.filter_jit
def _sample(posterior, key, num_samples, depth) -> Samples:
    P = posterior.size
    Z = jax.random.normal(key, (num_samples, P), posterior.problem.dtype)
    if posterior.structure == "diagonal":
        D = Z / jnp.sqrt(posterior.diag + posterior.prior)
        code = jnp.int32(0)
    else:
        scale = jnp.ones(P, Z.dtype)
        if posterior.precond == "diagonal":
            scale = jax.lax.rsqrt(posterior.diag + posterior.prior)

        def matvec(v):
            return scale * posterior.precision(scale * v)

        def one(z):
            res = sqrt_action(matvec, z, depth=depth, inverse=True, throw=False)
            return scale * res.value, res.status

        D, codes = jax.lax.map(one, Z)
        code = jnp.max(codes)
        if posterior.precond == "diagonal":
            bad = ~jnp.all(posterior.diag + posterior.prior > 0)
            code = jnp.where(bad, jnp.int32(_status.Status.NOT_POSITIVE_DEFINITE), code)
    code = _status.first(
        (code != 0, code), (~jnp.all(jnp.isfinite(D)), _status.Status.NONFINITE)
    )
    theta = posterior.problem.flat
    value = jax.vmap(posterior.problem.unravel)(theta + D)
    return Samples(value, code, D)


class Prediction(NamedTuple):
    """The result of `predict`.

    Attributes
    ----------
    mean
        The predictive mean of the network output, `(m, *out_shape)`
        (logits for classification): `f(x, theta*)` for
        `method="linearised"`, the sample mean for `"mc"`.
    status
        `0`, or the status of the posterior samples.
    variance
        The predictive variance of each output (its marginal, not the
        covariance between outputs), `(m, *out_shape)`; for regression
        without the observation noise (add `sigma**2` for `y`).
    probs
        Classification: class probabilities `(m, C)` — the probit
        approximation `softmax(mean / sqrt(1 + pi/8 variance))` for
        `"linearised"`, the average softmax over samples for `"mc"`.
        `None` for regression.
    """

    mean: jax.Array
    status: jax.Array
    variance: jax.Array
    probs: Any


def predict(
    posterior: Posterior,
    X_new,
    *,
    key=None,
    method: str = "linearised",
    num_samples: int = 100,
    depth: int | None = None,
    throw: bool = True,
) -> Prediction:
    r"""The Laplace predictive on new inputs: linearised (GLM) or Monte Carlo.

    `method="linearised"` (default): the network linearised at `theta*`,
    `f(x, theta) ≈ f(x, theta*) + J(x) (theta - theta*)`, so the outputs are
    Gaussian with mean `f(x, theta*)`. Their variance is exact for
    `structure="diagonal"` (`sum_p J_cp^2 / (G_pp + A_pp)` from per-example
    Jacobians) and, for `"full"`, the sample variance of `J(x) delta_s`
    (`jax.jvp`) over posterior samples `delta_s` (`sample`). Classification
    probabilities by the probit approximation `softmax(mu / sqrt(1 + pi/8
    s^2))` (MacKay 1992). `method="mc"`: the samples pushed through the
    full network; probabilities are the average softmax.

    Parameters
    ----------
    posterior
        From `posterior`.
    X_new
        Inputs `(m, ...)` like the training inputs.
    key
        A `jax.random` key (needed unless `"linearised"` with `"diagonal"`).
    method
        `"linearised"` or `"mc"`.
    num_samples, depth
        Posterior samples and their Lanczos depth (see `sample`).
    throw
        Raise on a non-zero status (default).

    Returns
    -------
    Prediction

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.Linear(3, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    >>> post = posterior(model, X, jnp.zeros((5, 1)), likelihood="regression",
    ...                  sigma=1.0, prior_precision=1.0, structure="diagonal")
    >>> pred = predict(post, X)
    >>> pred.mean.shape, pred.variance.shape
    ((5, 1), (5, 1))
    """
    _check_posterior(posterior)
    method = _checks.check_choice(method, "method", PREDICT_METHODS)
    problem = posterior.problem
    X_new = jnp.asarray(X_new)
    if X_new.ndim < 1 or X_new.shape[1:] != problem.X.shape[1:]:
        msg = (
            f"`X_new` must have the shape of the training inputs after the batch axis, "
            f"{problem.X.shape[1:]}; got X_new.shape={X_new.shape}."
        )
        raise ValueError(msg)
    X_new = X_new.astype(problem.X.dtype)
    if method == "mc" or posterior.structure == "full":
        _checks.check_key(key, "the posterior samples are random")
        num_samples = _checks.check_int(num_samples, "num_samples")
        depth = _default_depth(depth, posterior.size)
    mean, code, variance, probs = _predict(
        posterior, X_new, key, method, num_samples, depth
    )
    result = Prediction(mean, code, variance, probs)
    return _status.error_if(result, code) if throw else result


@eqx.filter_jit
def _predict(posterior, X_new, key, method, num_samples, depth):
    """The compiled core of `predict` (cached on the posterior's structure)."""
    problem = posterior.problem
    params, static = problem.params, problem.static
    mean = _model.batch_forward(params, static, X_new)
    code = jnp.int32(0)
    if method == "linearised" and posterior.structure == "diagonal":
        variance = _diagonal_variance(posterior, X_new)
        samples_out = None
    else:
        s = _sample(posterior, key, num_samples, depth)
        code = s.status
        if method == "linearised":

            def push(delta):
                d = problem.unravel(delta)
                return jax.jvp(
                    lambda p: _model.batch_forward(p, static, X_new), (params,), (d,)
                )[1]

            samples_out = mean + jax.lax.map(push, s.deltas)
        else:
            samples_out = jax.lax.map(
                lambda p: _model.batch_forward(p, static, X_new), s.value
            )
            mean = jnp.mean(samples_out, axis=0)
        variance = jnp.var(samples_out, axis=0)
    probs = None
    if problem.likelihood == "classification":
        if method == "mc":
            probs = jnp.mean(jax.nn.softmax(samples_out, axis=-1), axis=0)
        else:
            probs = jax.nn.softmax(mean / jnp.sqrt(1 + math.pi / 8 * variance), axis=-1)
    code = _status.first(
        (code != 0, code),
        (~jnp.all(jnp.isfinite(variance)), _status.Status.NONFINITE),
    )
    return mean, code, variance, probs


def _diagonal_variance(posterior, X_new):
    """`sum_p J_cp(x)^2 / (G_pp + A_pp)` for every input and output (exact)."""
    problem = posterior.problem
    params, static = problem.params, problem.static
    inv = 1.0 / (posterior.diag + posterior.prior)

    def one(x):
        out, vjp = jax.vjp(lambda p: _model.forward(p, static, x), params)
        k = out.size

        def row(e):
            g = vjp(e.reshape(out.shape))[0]
            return jnp.sum(jax.flatten_util.ravel_pytree(g)[0] ** 2 * inv)

        return jax.vmap(row)(jnp.eye(k, dtype=out.dtype)).reshape(out.shape)

    return jax.lax.map(one, X_new)


class GridResult(NamedTuple):
    """The result of `grid_search`.

    Attributes
    ----------
    value
        The prior precision of the grid with the lowest validation NLL.
    status
        `0`, or the first non-zero status of a prediction on the grid.
    nll
        The validation NLL (mean per example) at every grid point.
    """

    value: jax.Array
    status: jax.Array
    nll: jax.Array


def grid_search(
    model,
    X,
    y,
    X_val,
    y_val,
    *,
    likelihood: str,
    prior_precisions,
    sigma=None,
    structure: str = "diagonal",
    key=None,
    num_samples: int = 100,
    depth: int | None = None,
    chunk_size: int | None = None,
    throw: bool = True,
) -> GridResult:
    r"""Choose a scalar prior precision by the validation NLL of the predictive.

    The practitioners' baseline to `calibrate` (used e.g. by laplace-torch's
    `method="gridsearch"`): for each candidate, the posterior (`posterior`)
    and its linearised predictive (`predict`) on `(X_val, y_val)`, scored by
    the mean negative log predictive density.

    Parameters
    ----------
    model, X, y, likelihood, sigma, structure, chunk_size
        As in `posterior`.
    X_val, y_val
        Validation data.
    prior_precisions
        The candidates, a 1-D array of positive numbers.
    key, num_samples, depth
        As in `predict` (samples are needed for `structure="full"`).
    throw
        Raise on a non-zero status (default).

    Returns
    -------
    GridResult

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.MLP(2, 2, 8, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (30, 2))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> res = grid_search(model, X, y, X, y, likelihood="classification",
    ...                   prior_precisions=jnp.array([0.1, 1.0, 10.0]))
    >>> res.nll.shape
    (3,)
    """
    grid = jnp.asarray(prior_precisions)
    if grid.ndim != 1 or grid.shape[0] == 0:
        msg = (
            "`prior_precisions` must be a non-empty 1-D array of candidates; got "
            f"shape {grid.shape}."
        )
        raise ValueError(msg)
    val = _model.setup(
        model, X_val, y_val, likelihood=likelihood, sigma=sigma, chunk_size=None
    )
    nlls, codes = [], []
    base = posterior(
        model,
        X,
        y,
        likelihood=likelihood,
        prior_precision=grid[0],
        sigma=sigma,
        structure=structure,
        chunk_size=chunk_size,
    )
    for a in grid:
        prior, _ = _evidence.prior_flat(a, base.problem)  # checks a > 0
        post = Posterior(base.problem, prior, structure, base.diag)
        pred = predict(
            post, val.X, key=key, num_samples=num_samples, depth=depth, throw=False
        )
        if likelihood == "classification":
            nlls.append(_metrics.nll(pred.probs, val.y))
        else:
            var = pred.variance + val.sigma**2
            nlls.append(_metrics.gaussian_nll(pred.mean, var, val.y))
        codes.append(pred.status)
    nll = jnp.stack(nlls)
    code = _status.first(*[(c != 0, c) for c in codes])
    code = _status.first((code != 0, code), (~jnp.all(jnp.isfinite(nll)), 4))
    best = grid[jnp.argmin(jnp.where(jnp.isfinite(nll), nll, jnp.inf))]
    result = GridResult(best, code, nll)
    return _status.error_if(result, code) if throw else result
