"""The `gradient="adjoint"` paths: explain JAX's forward-mode error.

JAX refuses `jax.jvp` through a `custom_vjp` with a generic message. Every
verb with a custom reverse-mode rule runs it through `call`, so that the
error names the keyword that switches to differentiating through the loop.
"""

from __future__ import annotations

FORWARD_MODE_MESSAGE = (
    '`gradient="adjoint"` supports reverse mode only (jax.grad, jax.vjp); for '
    'forward mode (jax.jvp, jax.jacfwd, higher derivatives) pass `gradient="autodiff"`.'
)


def call(fn, gradient: str, *args):
    """Return `fn(*args)`; re-raise JAX's forward-mode error naming `gradient`."""
    try:
        return fn(*args)
    except TypeError as err:
        if gradient == "adjoint" and "forward-mode" in str(err):
            raise TypeError(FORWARD_MODE_MESSAGE) from err
        raise
