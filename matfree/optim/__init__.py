r"""Second-order optimisers on Krylov methods, as optax transformations.

Every optimiser is an `optax.GradientTransformationExtraArgs`: it composes
with `optax.chain`, compiles under `jax.jit`, and its state is a pytree of
fixed structure (no recompilation across steps) that counts the work done:
objective values (`num_values`), gradients (`num_grads`) and
curvature-vector products (`num_curvature`). The objective reaches the
update through its extra arguments, as for `optax.lbfgs`:

    updates, state = opt.update(grad, state, params, value_fn=f)

- `newton_krylov`: inexact Newton (`H p = -g` by CG, MINRES, GMRES or GCR
  from `matfree.solve` to a forcing tolerance; Armijo backtracking).
- `load_a9a`: the a9a classification data set (LIBSVM), for the examples.
"""

from matfree.optim._data import load_a9a
from matfree.optim._newton import NewtonState, newton_krylov

__all__ = ["NewtonState", "load_a9a", "newton_krylov"]
