"""PDE coefficient inversion through matrix exponentials.

Matrix-free finite-volume operators on the unit square (`diffusion`,
`advection_diffusion`), their solutions `u(t) = expm(t A(k)) u0` via
`matfree.exp_action` (`solve`, differentiable w.r.t. the coefficient field),
synthetic data (`random_field`, `bumps`, `simulate`, `add_noise`) and fitting
the field to observations with optax (`invert`).
"""

from matfree._fit import FitResult
from matfree.pde._data import add_noise, bumps, random_field, simulate
from matfree.pde._invert import invert, misfit, smoothness_penalty
from matfree.pde._operators import (
    AdvectionDiffusion,
    Diffusion,
    Operator,
    advection_diffusion,
    diffusion,
    spectral_bound,
)
from matfree.pde._solve import grid, solve, suggest_num_substeps

__all__ = [
    "AdvectionDiffusion",
    "Diffusion",
    "FitResult",
    "Operator",
    "add_noise",
    "advection_diffusion",
    "bumps",
    "diffusion",
    "grid",
    "invert",
    "misfit",
    "random_field",
    "simulate",
    "smoothness_penalty",
    "solve",
    "spectral_bound",
    "suggest_num_substeps",
]
