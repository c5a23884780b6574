r"""Gaussian-process regression whose kernel matrix is never formed.

Exact GP regression with a kernel `k` (`"rbf"`, `"matern12"`, `"matern32"`,
`"matern52"`, ARD lengthscales) and Gaussian observation noise:
`y ~ N(0, K + noise I)`. Kernel matvecs are computed in row blocks
(`matfree.operators.kernel_matvec`), so memory is `O(rows_per_block n)`.

- `log_marginal_likelihood`: `-1/2 (y^T K^{-1} y + log det K + n log 2 pi)`
  with preconditioned CG (`matfree.solve`) and stochastic Lanczos quadrature
  (`matfree.logdet`), and its gradient; `method="cholesky"` is the exact
  dense reference.
- `fit`: optax training loop on unconstrained parameters with a progress bar.
- `predict`: predictive mean and variance; `sample_prior`: samples of the
  prior via `matfree.sqrt_action`.

Parameters are a dict in natural units,
`{"lengthscale": scalar or (d,), "variance": scalar, "noise": scalar}`.
"""

from matfree.gp._data import load_protein
from matfree.gp._fit import FitResult, fit
from matfree.gp._lml import LMLResult, log_marginal_likelihood
from matfree.gp._params import KERNELS, constrain, unconstrain
from matfree.gp._predict import Prediction, Samples, predict, sample_prior

__all__ = [
    "KERNELS",
    "FitResult",
    "LMLResult",
    "Prediction",
    "Samples",
    "constrain",
    "fit",
    "load_protein",
    "log_marginal_likelihood",
    "predict",
    "sample_prior",
    "unconstrain",
]
