"""Krylov solvers for `A x = b` with implicit differentiation.

`solve(matvec, b, method=...)` with `method` one of `"cg"`, `"minres"`,
`"gmres"`, `"bicgstab"`, `"lsqr"`, `"gcr"`; it returns a `Solution`.
"""

from matfree.solvers._solve import METHODS, Solution, solve

__all__ = ["METHODS", "Solution", "solve"]
