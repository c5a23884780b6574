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
- `hessian_free`: Hessian-free optimisation (Martens 2010): damped
  Gauss-Newton steps by warm-started CG, CG-iterate backtracking,
  Levenberg-Marquardt damping, curvature on a mini-batch.
- `krylov_subspace_descent`: Krylov subspace descent (Vinyals & Povey 2012):
  a Lanczos basis of the curvature's Krylov space from the gradient, plus
  the previous step; a few Newton steps on the objective in that subspace.
- `natural_gradient`: `-lr (F + damping I)^{-1} g` with the Fisher (the
  Gauss-Newton matrix of a likelihood model) solved by CG.
- `load_a9a`: the a9a classification data set (LIBSVM), for the examples.
"""

from matfree.optim._data import load_a9a
from matfree.optim._hessian_free import HessianFreeState, hessian_free
from matfree.optim._ksd import KSDState, krylov_subspace_descent
from matfree.optim._natural import NaturalGradientState, natural_gradient
from matfree.optim._newton import NewtonState, newton_krylov

__all__ = [
    "HessianFreeState",
    "KSDState",
    "NaturalGradientState",
    "NewtonState",
    "hessian_free",
    "krylov_subspace_descent",
    "load_a9a",
    "natural_gradient",
    "newton_krylov",
]
