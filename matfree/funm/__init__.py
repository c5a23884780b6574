"""Matrix functions applied to vectors: `f(A) v`, `expm(t A) v`, `A^{±1/2} v`.

All actions reduce `f(A) v` to a small dense matrix function through
`matfree.decomp.lanczos` (symmetric) or `matfree.decomp.arnoldi` (general),
and are differentiable through custom rules: for symmetric operators, a second
Lanczos run on the cotangent (`_two_sided`); otherwise the Arnoldi adjoint.

Run-time problems are reported in one way: a `FunmInfo` returned with
`return_info=True` (field `status`, explained by `STATUS_MESSAGES`), and an
error raised by default (`throw=True`, via `equinox.error_if`, under `jit`
too). Trace-time mistakes (shapes, `depth`, non-callables, `t < 0`) raise
`ValueError`/`TypeError` immediately.
"""

from matfree.funm._action import funm_action, sqrt_action
from matfree.funm._common import STATUS_MESSAGES, FunmInfo
from matfree.funm._exp import exp_action

__all__ = ["STATUS_MESSAGES", "FunmInfo", "exp_action", "funm_action", "sqrt_action"]
