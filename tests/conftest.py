"""Test configuration: float64 on, warnings are errors (see pyproject)."""

import jax

jax.config.update("jax_enable_x64", True)
