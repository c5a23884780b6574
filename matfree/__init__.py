"""matfree: differentiable, matrix-free linear algebra in JAX."""

from matfree import decomp

__all__ = ["decomp"]
__version__ = "0.1.0"
