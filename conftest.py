"""Doctest configuration: doctests run in float64, like the test suite."""

import jax

jax.config.update("jax_enable_x64", True)
# Tests are dominated by compilation; XLA's optimisation passes cost ~40% of
# the suite's time and change no result beyond rounding.
jax.config.update("jax_disable_most_optimizations", True)
