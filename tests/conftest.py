"""Test configuration: float64 on, warnings are errors (see pyproject)."""

import jax

jax.config.update("jax_enable_x64", True)
# Tests are dominated by compilation; XLA's optimisation passes cost ~40% of
# the suite's time and change no result beyond rounding.
jax.config.update("jax_disable_most_optimizations", True)
