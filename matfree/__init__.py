"""matfree: differentiable, matrix-free linear algebra in JAX."""

from matfree import (
    decomp,
    eig,
    funm,
    gp,
    laplace,
    matrices,
    operators,
    optim,
    pde,
    precond,
    slq,
    solvers,
    status,
    stochtrace,
)
from matfree.funm import FunmResult, exp_action, funm_action, sqrt_action
from matfree.slq import logdet, trace_funm
from matfree.solvers import Solution, solve
from matfree.stochtrace import trace

__all__ = [
    "FunmResult",
    "Solution",
    "decomp",
    "eig",
    "exp_action",
    "funm",
    "funm_action",
    "gp",
    "laplace",
    "logdet",
    "matrices",
    "operators",
    "optim",
    "pde",
    "precond",
    "slq",
    "solve",
    "solvers",
    "sqrt_action",
    "status",
    "stochtrace",
    "trace",
    "trace_funm",
]
__version__ = "0.1.0"
