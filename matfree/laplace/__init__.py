r"""Laplace approximations of neural networks with the full GGN, matrix-free.

For an equinox model trained to its MAP parameters `theta*`, the linearised
Laplace approximation is the Gaussian `N(theta*, (G + A)^{-1})` with `G` the
generalised Gauss–Newton (GGN) matrix of the negative log-likelihood and `A`
the (diagonal) prior precision. `G` is `P x P` for `P` parameters and is never
formed: it is used through GGN-vector products (`jax.linearize` of the
network and its transpose, summed over chunks of data).

- Curvature: `ggn` and `hessian` (operators), `diagonal` (exact from
  per-example Jacobians, or stochastic).
- Evidence: `log_evidence`, the Laplace log marginal likelihood with
  `log det(G + A)` of the full GGN by stochastic Lanczos quadrature
  (`matfree.logdet`), differentiable in the prior precision and the noise.
- Calibration: `calibrate` (evidence maximisation with optax) and
  `grid_search` (validation NLL).
- Prediction: `posterior`, `sample` (by `matfree.sqrt_action`), `predict`
  (linearised predictive with the probit approximation, or Monte Carlo).
- Metrics: `accuracy`, `nll`, `gaussian_nll`, `ece`, `reliability`,
  `confidence`.

Likelihoods: `"classification"` (softmax cross-entropy on logits) and
`"regression"` (Gaussian with noise standard deviation `sigma`).
"""

from matfree._fit import FitResult
from matfree.laplace._curvature import diagonal, ggn, hessian
from matfree.laplace._evidence import (
    Evidence,
    Hyperparameters,
    calibrate,
    log_evidence,
)
from matfree.laplace._metrics import (
    Reliability,
    accuracy,
    confidence,
    ece,
    gaussian_nll,
    nll,
    reliability,
)
from matfree.laplace._model import LIKELIHOODS
from matfree.laplace._predict import (
    GridResult,
    Posterior,
    Prediction,
    Samples,
    grid_search,
    posterior,
    predict,
    sample,
)
from matfree.stochtrace import DiagonalEstimate

__all__ = [
    "LIKELIHOODS",
    "DiagonalEstimate",
    "Evidence",
    "FitResult",
    "GridResult",
    "Hyperparameters",
    "Posterior",
    "Prediction",
    "Reliability",
    "Samples",
    "accuracy",
    "calibrate",
    "confidence",
    "diagonal",
    "ece",
    "gaussian_nll",
    "ggn",
    "grid_search",
    "hessian",
    "log_evidence",
    "nll",
    "posterior",
    "predict",
    "reliability",
    "sample",
]
