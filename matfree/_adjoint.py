"""The `gradient="adjoint"` paths: explain JAX's forward-mode error.

JAX refuses `jax.jvp` through a `custom_vjp` with a generic message
("can't apply forward-mode autodiff (jvp) to a custom_vjp function"), and
under `jax.jit` only when it compiles, far from the call that caused it.
Every verb with a custom reverse-mode rule runs it through `call`, which
raises a `TypeError` naming the keyword that switches to differentiating
through the loop (`gradient="autodiff"`) as soon as it sees the rule traced
in forward mode: eagerly, under an outer `jax.jit`, and for forward-over-
reverse (`jax.hessian`). (`matfree.solve` needs none of this: its implicit
rule is a custom JVP, so every mode works.)
"""

from __future__ import annotations

import jax

try:  # The tracer types tell forward mode (JVP) from reverse mode (linearize).
    from jax._src.interpreters.ad import JVPTracer, LinearizeTracer, Zero
except ImportError:  # pragma: no cover - a JAX without them: rely on `call`'s except
    JVPTracer = LinearizeTracer = Zero = None

FORWARD_MODE_MESSAGE = (
    '`gradient="adjoint"` supports reverse mode only (jax.grad, jax.vjp); for '
    'forward mode (jax.jvp, jax.jacfwd, higher derivatives) pass `gradient="autodiff"`.'
)


def call(fn, gradient: str, *args):
    """Return `fn(*args)`; raise naming `gradient` where JAX would refuse forward mode.

    Examples
    --------
    >>> import jax
    >>> def f(x):
    ...     return call(lambda x: x * 2, "adjoint", x)
    >>> try:
    ...     jax.jit(lambda x: jax.jvp(f, (x,), (1.0,)))(1.0)
    ... except TypeError as err:
    ...     print(str(err)[:33])
    `gradient="adjoint"` supports rev
    >>> float(jax.grad(f)(1.0))
    2.0
    """
    if gradient == "adjoint" and _forward_mode(args):
        raise TypeError(FORWARD_MODE_MESSAGE)
    try:
        return fn(*args)
    except TypeError as err:
        if gradient == "adjoint" and "forward-mode" in str(err):
            raise TypeError(FORWARD_MODE_MESSAGE) from err
        raise


def _forward_mode(args) -> bool:
    """Whether an argument carries a non-zero forward-mode (JVP) tangent.

    Looks through reverse-mode (linearize) tracers to their primals, so that
    forward over reverse (`jax.hessian`) counts too.
    """
    if JVPTracer is None:  # pragma: no cover
        return False
    for leaf in _leaves(args, depth=3):
        while isinstance(leaf, jax.core.Tracer):
            if isinstance(leaf, JVPTracer):
                if not isinstance(leaf.tangent, Zero):
                    return True
                leaf = leaf.primal
            elif isinstance(leaf, LinearizeTracer):
                leaf = leaf.primal
            else:
                leaf = getattr(leaf, "val", None)  # e.g. a vmap tracer
    return False


def _leaves(tree, depth):
    """The array leaves of `tree`, and of what its callables close over."""
    out = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if depth > 0 and callable(leaf) and not isinstance(leaf, jax.Array):
            inner = [getattr(leaf, name, None) for name in ("args", "keywords", "func")]
            cells = getattr(leaf, "__closure__", None) or ()
            inner += [cell.cell_contents for cell in cells]
            out += _leaves(inner, depth - 1)
        else:
            out.append(leaf)
    return out
