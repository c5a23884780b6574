"""The Laplace evidence (log marginal likelihood) and its calibration."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from matfree import _checks, precond, slq
from matfree import status as _status
from matfree._fit import FitResult, check_optimizer, minimize
from matfree.laplace import _curvature, _model

METHODS = ("slq", "dense")
PRECONDS = ("diagonal",)


class Evidence(NamedTuple):
    """The result of `log_evidence`.

    Attributes
    ----------
    value
        The Laplace approximation of `log p(D)`: `log_likelihood +
        log_prior + P/2 log(2 pi) - logdet / 2` (a scalar; differentiable
        in the prior precision and `sigma`).
    status
        `0`, or a `matfree.status` code: the log-determinant's
        (`NOT_POSITIVE_DEFINITE`, `NONFINITE`), `INVALID_INPUT` for a
        non-positive prior precision or `sigma` met under `jit`, `NONFINITE`.
    log_likelihood
        `log p(D | theta*)`, with constants.
    log_prior
        `log N(theta* | 0, A^{-1})`, with constants.
    logdet
        `log det(G + A)` of the posterior precision (estimate).
    logdet_std_error
        Standard error of the stochastic log-determinant over the probes
        (`0` for `method="dense"` and unit probes); the value's stochastic
        error is half of it.
    """

    value: jax.Array
    status: jax.Array
    log_likelihood: jax.Array
    log_prior: jax.Array
    logdet: jax.Array
    logdet_std_error: jax.Array


def prior_flat(prior_precision, problem: _model.Problem):
    """The prior precision as a flat vector `(P,)` and its run-time status.

    A scalar (one for all parameters), or a pytree with the structure of the
    parameters whose leaves broadcast to the parameter leaves (a scalar per
    leaf, i.e. per layer's weight and bias, or one value per parameter).
    """
    params, dtype = problem.params, problem.dtype
    if isinstance(prior_precision, int | float) or (
        hasattr(prior_precision, "shape") and jnp.ndim(prior_precision) == 0
    ):
        a = jnp.full(problem.size, jnp.asarray(prior_precision, dtype))
    else:
        struct = jax.tree_util.tree_structure(params)
        got = jax.tree_util.tree_structure(prior_precision)
        if got != struct:
            msg = (
                "`prior_precision` must be a positive scalar, or a pytree with the "
                "structure of the model's parameters (`eqx.filter(model, "
                "eqx.is_array)`) holding a scalar per leaf or an array per leaf; got "
                f"a pytree of structure {got}. Build one with "
                "`jax.tree_util.tree_map(lambda p: 1.0, eqx.filter(model, eqx.is_array))`."
            )
            raise ValueError(msg)

        def leaf(a, p):
            a = jnp.asarray(a, dtype)
            try:
                return jnp.broadcast_to(a, p.shape)
            except ValueError:
                msg = (
                    f"each leaf of `prior_precision` must be a scalar or have the shape "
                    f"of its parameter leaf {p.shape}; got shape {a.shape}."
                )
                raise ValueError(msg) from None

        tree = jax.tree_util.tree_map(leaf, prior_precision, params)
        a = jax.flatten_util.ravel_pytree(tree)[0]
    concrete = not isinstance(a, jax.core.Tracer)
    if concrete and not (np.all(np.asarray(a) > 0) and np.all(np.isfinite(a))):
        msg = (
            "`prior_precision` must be positive and finite; got values in "
            f"[{float(jnp.min(a))}, {float(jnp.max(a))}]. Optimise its logarithm "
            "(as `calibrate` does) to keep it positive."
        )
        raise ValueError(msg)
    code = _status.first((~jnp.all(a > 0), _status.Status.INVALID_INPUT))
    return a, code


def log_evidence(
    model,
    X,
    y,
    *,
    likelihood: str,
    prior_precision,
    sigma=None,
    key=None,
    method: str = "slq",
    depth: int = 30,
    num_probes: int = 16,
    probes: str = "rademacher",
    precond: str | None = None,
    chunk_size: int | None = None,
    probe_chunk_size: int | None = None,
    gradient: str = "adjoint",
    throw: bool = True,
) -> Evidence:
    r"""The Laplace approximation of the log marginal likelihood, with the full GGN.

    At the MAP parameters `theta*` (the model as given),

    `log p(D) ≈ log p(D | theta*) + log p(theta*) + P/2 log(2 pi)
    - 1/2 log det(G + A)`,

    with `G` the generalised Gauss–Newton matrix (`ggn`), `A` the diagonal
    prior precision and `p(theta) = N(0, A^{-1})`. The log-determinant of
    the full `P x P` matrix `G + A` comes from stochastic Lanczos quadrature
    (`matfree.logdet`) on the GGN matvec, never forming it. Differentiable
    (reverse mode) in `prior_precision` and `sigma`: `gradient="adjoint"`
    uses the Lanczos adjoint (memory independent of `depth`).

    Parameters
    ----------
    model, X, y, likelihood, sigma
        As in `ggn`; the model's parameters should be a MAP estimate.
    prior_precision
        Positive: a scalar, or a pytree like the parameters
        (`eqx.filter(model, eqx.is_array)`) with a scalar per leaf (per
        layer) or an array per leaf (per parameter).
    key
        A `jax.random` key for the probes (`method="slq"`, not with
        `probes="unit"`).
    method
        `"slq"` (default, matrix-free) or `"dense"` (forms `G + A` from `P`
        GGN products and takes `slogdet`: the exact reference for small `P`).
    depth, num_probes, probes
        Of `matfree.logdet`: Lanczos steps per probe, number of probes,
        probe distribution (`"unit"` with `num_probes = depth = P` is exact).
    precond
        `None` or `"diagonal"`: precondition the log-determinant with
        `diag(G) + A` (the exact GGN diagonal, `diagonal`), which removes
        the scale differences between layers: smaller quadrature error and
        variance at the same depth. The value and gradient stay unbiased.
    chunk_size
        Examples per sequential chunk of each GGN product (memory bounded by
        one chunk); the result does not depend on it.
    probe_chunk_size
        Probes per sequential chunk of the log-determinant (its
        `chunk_size`): memory `O(P depth probe_chunk_size)`.
    gradient
        `"adjoint"` (default) or `"autodiff"` (see `matfree.logdet`).
    throw
        Raise on a non-zero status (default); else inspect `status`.

    Returns
    -------
    Evidence

    References
    ----------
    D. J. C. MacKay. A practical Bayesian framework for backpropagation
    networks. Neural Computation, 1992. E. Daxberger, A. Kristiadi, A.
    Immer, R. Eschenhagen, M. Bauer, P. Hennig. Laplace Redux — effortless
    Bayesian deep learning. NeurIPS 2021.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.MLP(2, 3, 8, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (20, 2))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> exact = log_evidence(model, X, y, likelihood="classification",
    ...                      prior_precision=1.0, method="dense").value
    >>> est = log_evidence(model, X, y, likelihood="classification",
    ...                    prior_precision=1.0, key=jax.random.PRNGKey(2),
    ...                    depth=20, num_probes=50)
    >>> bool(jnp.abs(est.value - exact) < 4 * est.logdet_std_error / 2)
    True
    """
    method = _checks.check_choice(method, "method", METHODS)
    gradient = _checks.check_gradient(gradient)
    if precond is not None:
        _checks.check_choice(precond, "precond", PRECONDS)
    problem = _model.setup(
        model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=chunk_size
    )
    a, code_prior = prior_flat(prior_precision, problem)
    code_sigma = jnp.int32(0)
    if problem.sigma is not None:
        code_sigma = _status.first((~(problem.sigma > 0), _status.Status.INVALID_INPUT))
    if method == "slq" and probes != "unit":
        _checks.check_key(key, "the probes of `method='slq'` are random")
    opts = {
        "key": key,
        "depth": depth,
        "num_probes": num_probes,
        "probes": probes,
        "precond": precond,
        "probe_chunk_size": probe_chunk_size,
        "gradient": gradient,
    }
    result = _evidence(problem, a, method, opts)
    code = _status.first(
        (code_prior != 0, code_prior),
        (code_sigma != 0, code_sigma),
        (result.status != 0, result.status),
        (~jnp.isfinite(result.value), _status.Status.NONFINITE),
    )
    result = result._replace(status=code)
    return _status.error_if(result, code) if throw else result


def _evidence(problem: _model.Problem, a, method, opts) -> Evidence:
    theta = problem.flat
    out = _model.batch_forward(problem.params, problem.static, problem.X)
    w = jnp.ones(problem.X.shape[0], problem.dtype)
    loglik = _model.log_likelihood(problem.likelihood, out, problem.y, w, problem.sigma)
    P = problem.size
    log_prior = 0.5 * (
        jnp.sum(jnp.log(a)) - theta @ (a * theta) - P * math.log(2 * math.pi)
    )
    G = _curvature.ggn_flat(problem)

    def matvec(v):
        return G(v) + a * v

    if method == "dense":
        M = jax.vmap(matvec)(jnp.eye(P, dtype=problem.dtype))
        M = (M + M.T) / 2
        sign, ld = jnp.linalg.slogdet(M)
        code = _status.first((sign <= 0, _status.Status.NOT_POSITIVE_DEFINITE))
        ld_se = jnp.zeros((), problem.dtype)
    else:
        P_ = None
        if opts["precond"] == "diagonal":
            d = jax.lax.stop_gradient(_curvature.ggn_diagonal_flat(problem))
            if problem.sigma is not None:  # regression: diag(G) ∝ 1 / sigma^2, live
                s0 = jax.lax.stop_gradient(problem.sigma)
                d = d * (s0 / problem.sigma) ** 2
            P_ = precond.jacobi(d + a)
        est = slq.logdet(
            matvec,
            theta,
            key=opts["key"],
            depth=_checks.check_depth(opts["depth"], P),
            num_probes=opts["num_probes"],
            probes=opts["probes"],
            chunk_size=opts["probe_chunk_size"],
            precond=P_,
            gradient=opts["gradient"],
            throw=False,
        )
        ld, ld_se, code = est.value, est.std_error, est.status
    value = loglik + log_prior + 0.5 * P * math.log(2 * math.pi) - 0.5 * ld
    return Evidence(value, code, loglik, log_prior, ld, ld_se)


class Hyperparameters(NamedTuple):
    """Calibrated hyperparameters (the `params` of `calibrate`'s `FitResult`)."""

    prior_precision: object
    sigma: object


def calibrate(
    model,
    X,
    y,
    *,
    likelihood: str,
    prior_precision=1.0,
    sigma=None,
    key=None,
    optimizer=None,
    num_steps: int = 100,
    progress: bool = True,
    throw: bool = True,
    **evidence_options,
) -> FitResult:
    r"""Calibrate the prior precision (and `sigma`) by maximising the evidence.

    Minimises `-log_evidence(...).value / n` over the logarithms of the prior
    precision and, for regression, of `sigma`, with an optax optimiser (the
    shared loop of `matfree.gp.fit`: a jit-compiled step, a progress bar).
    With `method="slq"` each step draws fresh probes, so the loss curve is
    noisy; the gradient is that of the estimate (`gradient="adjoint"`).

    Parameters
    ----------
    model, X, y, likelihood
        As in `log_evidence`; the model holds the MAP parameters.
    prior_precision
        The initial prior precision: a scalar or a pytree (see
        `log_evidence`); its structure is kept.
    sigma
        The initial observation noise (regression only; calibrated too).
    key
        A `jax.random` key (split into one per step; not needed for
        `method="dense"`).
    optimizer
        An `optax.GradientTransformation`; default `optax.adam(0.1)`.
    num_steps
        Number of optimisation steps.
    progress
        Print a progress bar.
    throw
        Raise at the first step with a non-zero status; `False` stops there.
    **evidence_options
        Passed to `log_evidence` (`method=`, `depth=`, `num_probes=`,
        `precond=`, `chunk_size=`, ...).

    Returns
    -------
    FitResult
        `params` is a `Hyperparameters(prior_precision, sigma)` in natural
        units (`sigma=None` for classification); `raw` their logarithms.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.MLP(2, 2, 8, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (30, 2))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> res = calibrate(model, X, y, likelihood="classification", method="dense",
    ...                 num_steps=20, progress=False)
    >>> bool(res.losses[-1] < res.losses[0])
    True
    """
    problem = _model.setup(model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=None)
    prior_flat(prior_precision, problem)  # validate
    num_steps = _checks.check_int(num_steps, "num_steps")
    optimizer = check_optimizer(optimizer, optax.adam(0.1))
    if evidence_options.get("method", "slq") == "slq":
        _checks.check_key(key, "each step draws fresh probes")
    else:
        key = None
    dtype = problem.dtype
    raw = {
        "prior_precision": jax.tree_util.tree_map(
            lambda a: jnp.log(jnp.asarray(a, dtype)), prior_precision
        ),
        "sigma": None if problem.sigma is None else jnp.log(problem.sigma),
    }
    n = problem.X.shape[0]

    def constrain(raw):
        sig = None if raw["sigma"] is None else jnp.exp(raw["sigma"])
        return Hyperparameters(jax.tree_util.tree_map(jnp.exp, raw["prior_precision"]), sig)

    def loss(raw, key):
        h = constrain(raw)
        res = log_evidence(
            model,
            X,
            y,
            likelihood=likelihood,
            prior_precision=h.prior_precision,
            sigma=h.sigma,
            key=key,
            throw=False,
            **evidence_options,
        )
        return -res.value / n, res.status

    raw, losses, seconds, status, evaluations = minimize(
        loss,
        raw,
        optimizer=optimizer,
        num_steps=num_steps,
        key=key,
        progress=progress,
        label="laplace.calibrate",
        throw=throw,
    )
    return FitResult(constrain(raw), raw, losses, seconds, status, evaluations)
