"""Matrix functions applied to vectors: `f(A) v`, `expm(t A) v`, `A^{±1/2} v`.

All actions reduce `f(A) v` to a small dense matrix function through
`matfree.decomp.lanczos` (symmetric) or `matfree.decomp.arnoldi` (general),
and are differentiable through custom rules (`gradient="adjoint"`): for
symmetric operators, a second Lanczos run on the cotangent (`_two_sided`);
for `exp_action` with a general operator, a second Arnoldi run on `A^T` and
a block-triangular exponential (`_two_sided`); otherwise (`funm_action` with
`symmetric=False`) the Arnoldi adjoint. `gradient="autodiff"` differentiates through
the loops instead.

Every action returns a `FunmResult` (`value`, `status`, `error_estimate`,
`num_substeps`, `num_matvecs`). Run-time problems are reported in `status`
(a `matfree.status.Status` code) and raised by default (`throw=True`, via
`matfree.status.error_if`, under `jit` too, whichever field is read).
Trace-time mistakes (shapes, `depth`, non-callables, a concrete `t < 0`)
raise `ValueError`/`TypeError` immediately.
"""

from matfree.funm._action import funm_action, sqrt_action
from matfree.funm._common import FunmResult
from matfree.funm._exp import exp_action

__all__ = ["FunmResult", "exp_action", "funm_action", "sqrt_action"]
