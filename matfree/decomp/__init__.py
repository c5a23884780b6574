"""Krylov decompositions of matrix-free operators, with adjoint gradients.

- `lanczos`: symmetric operators, `A Q^T = Q^T T + r e_k^T` (T tridiagonal).
- `arnoldi`: general square operators, `A Q^T = Q^T H + r e_k^T` (H Hessenberg).
"""

from matfree.decomp._arnoldi import ArnoldiResult, arnoldi
from matfree.decomp._lanczos import LanczosResult, lanczos

__all__ = ["ArnoldiResult", "LanczosResult", "arnoldi", "lanczos"]
