"""Matrix-free operators: stencils and kernel matrices computed in row blocks.

Every constructor returns a plain callable `matvec(v) -> A v` that closes over
its arrays, ready for `matfree.decomp`, `matfree.solve` and the matrix
functions; gradients reach the closed-over arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from matfree import _checks
from matfree.decomp._krylov import merge_live

KERNELS = ("rbf", "matern12", "matern32", "matern52")


def laplace_2d(shape: tuple[int, int], *, scale=1.0, shift=0.0):
    """Return the matvec of `shift * I + scale * L` for the 5-point Laplacian `L`.

    `L` is the negative discrete Laplacian on a `shape = (ny, nx)` grid with
    zero Dirichlet boundary and unit spacing (symmetric positive definite,
    eigenvalues in `(0, 8)`). Vectors are flat, of size `ny * nx`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> mv = laplace_2d((3, 3))
    >>> mv(jnp.ones(9)).reshape(3, 3)[1, 1]
    Array(0., dtype=float64)
    """
    ny, nx = (_checks.check_int(s, "shape") for s in shape)

    def matvec(v):
        u = v.reshape(ny, nx)
        up = jnp.pad(u, 1)
        lap = 4 * u - up[:-2, 1:-1] - up[2:, 1:-1] - up[1:-1, :-2] - up[1:-1, 2:]
        return (shift * u + scale * lap).reshape(-1)

    return matvec


def _sqdist(x, y, lengthscale):
    x = x / lengthscale
    y = y / lengthscale
    d2 = jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2 * x @ y.T
    return jnp.maximum(d2, 0.0)


def _safe_sqrt(x):
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def kernel_matrix(x, y, *, kernel: str = "rbf", lengthscale=1.0, variance=1.0):
    """Dense kernel matrix `k(x_i, y_j)`, shapes `(n, d)`, `(m, d)` -> `(n, m)`.

    Kernels (ARD: `lengthscale` scalar or shape `(d,)`; `r = |(x - y) / l|`):
    `"rbf"`: `variance * exp(-r^2 / 2)`; `"matern12"`: `variance * exp(-r)`;
    `"matern32"`: `variance * (1 + sqrt(3) r) exp(-sqrt(3) r)`;
    `"matern52"`: `variance * (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)`.
    """
    d2 = _sqdist(x, y, lengthscale)
    if kernel == "rbf":
        k = jnp.exp(-d2 / 2)
    elif kernel == "matern12":
        k = jnp.exp(-_safe_sqrt(d2))
    elif kernel == "matern32":
        r = jnp.sqrt(3.0) * _safe_sqrt(d2)
        k = (1 + r) * jnp.exp(-r)
    elif kernel == "matern52":
        r = jnp.sqrt(5.0) * _safe_sqrt(d2)
        k = (1 + r + r**2 / 3) * jnp.exp(-r)
    else:
        msg = f"`kernel` must be one of {KERNELS}; got {kernel!r}."
        raise ValueError(msg)
    return variance * k


def kernel_matvec(
    x,
    *,
    kernel: str = "rbf",
    lengthscale=1.0,
    variance=1.0,
    noise=0.0,
    rows_per_block: int = 512,
    mesh=None,
    materialize: bool = False,
):
    """Return the matvec of `K + noise * I` with `K = kernel_matrix(x, x)`.

    The kernel matrix is never formed: rows are computed in blocks of
    `rows_per_block` (memory `O(rows_per_block * n)`, also in the backward pass, where
    blocks are recomputed). The matvec accepts a vector `(n,)` or a matrix
    `(n, m)` of right-hand sides, which share the kernel evaluations.

    With a `jax.sharding.Mesh` as `mesh`, the rows are split over all the
    mesh's devices (`n` must be divisible by their number) and each device
    computes its rows in blocks of `rows_per_block` (`jax.shard_map`): one
    matvec all-gathers the vector and the inputs `x` (`n (d + m)` numbers)
    and returns the product sharded by rows like the vector
    (`docs/sharding.md`). The result equals the unsharded matvec to rounding.

    With `materialize=True` the matrix `K` is formed once, when the matvec
    is built (memory `n^2` numbers, `0.8 GB` at `n = 10^4` in float64), and
    each matvec is one matrix product: several times faster where a matvec
    is repeated (a CG solve, a Lanczos run) and `K` fits in memory. The
    gradient w.r.t. `x`, `lengthscale` and `variance` still recomputes the
    kernel in row blocks of `rows_per_block` (a custom VJP), so the backward
    pass needs no `n^2` cotangent. First derivatives (`jax.grad`, `jax.jvp`)
    equal the matrix-free ones; for higher derivatives (`jax.hessian`, grad
    of grad) use `materialize=False`. Not with `mesh`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (10, 2))
    >>> mv = kernel_matvec(x, lengthscale=0.5, noise=0.1, rows_per_block=4)
    >>> K = kernel_matrix(x, x, lengthscale=0.5) + 0.1 * jnp.eye(10)
    >>> v = jnp.arange(10.0)
    >>> jnp.allclose(mv(v), K @ v)
    Array(True, dtype=bool)
    """
    if kernel not in KERNELS:
        msg = f"`kernel` must be one of {KERNELS}; got {kernel!r}."
        raise ValueError(msg)
    x = jnp.asarray(x)
    if x.ndim != 2:
        msg = f"`x` must have shape (n, d); got shape {x.shape}."
        raise ValueError(msg)
    rows_per_block = _checks.check_int(rows_per_block, "rows_per_block")
    _checks.check_materialize(materialize, mesh)
    if mesh is not None:
        return _sharded_kernel_matvec(
            x, mesh, kernel, lengthscale, variance, noise, rows_per_block
        )
    kw = {"kernel": kernel, "rows_per_block": rows_per_block}
    if materialize:
        K = _kernel_matrix_blocked(x, lengthscale, variance, **kw)
        return _stored_kernel_matvec(K, x, lengthscale, variance, noise, **kw)

    def matvec(v):
        return _blocked_apply(x, lengthscale, variance, v, **kw) + noise * v

    return matvec


def _row_blocks(x, rows_per_block):
    n = x.shape[0]
    rows_per_block = min(rows_per_block, n)
    num_blocks = -(-n // rows_per_block)
    pad = num_blocks * rows_per_block - n
    return jnp.pad(x, ((0, pad), (0, 0))).reshape(num_blocks, rows_per_block, -1)


def _blocked_apply(x, lengthscale, variance, v, *, kernel, rows_per_block):
    """`K v` with `K = kernel_matrix(x, x)` computed (and differentiated) in row blocks."""
    n = x.shape[0]
    xb = _row_blocks(x, rows_per_block)

    @jax.checkpoint
    def rows(xi):
        return (
            kernel_matrix(xi, x, kernel=kernel, lengthscale=lengthscale, variance=variance)
            @ v
        )

    out = jax.lax.map(rows, xb)
    return out.reshape((-1, *v.shape[1:]))[:n]


def _kernel_matrix_blocked(x, lengthscale, variance, *, kernel, rows_per_block):
    """`kernel_matrix(x, x)` formed in row blocks (memory `n^2` + a block); no gradient.

    Blocks are written in place into one `(n, n)` buffer; the last block is
    shifted to end at row `n` (rows computed twice, identically), so no padded
    copy of the matrix is ever made.
    """
    n = x.shape[0]
    b = min(rows_per_block, n)
    kw = {"kernel": kernel, "lengthscale": lengthscale, "variance": variance}

    def body(i, K):
        start = jnp.minimum(i * b, n - b)
        xi = jax.lax.dynamic_slice_in_dim(x, start, b)
        return jax.lax.dynamic_update_slice_in_dim(K, kernel_matrix(xi, x, **kw), start, 0)

    K = jax.lax.fori_loop(0, -(-n // b), body, jnp.zeros((n, n), x.dtype))
    return jax.lax.stop_gradient(K)


def _stored_kernel_matvec(K, x, lengthscale, variance, noise, *, kernel, rows_per_block):
    """The matvec of `K + noise I` for a stored `K = kernel_matrix(x, x)`.

    Forward: one product with `K`. Derivatives: a custom JVP, `K dv` plus the
    tangent of the blocked matvec (`_blocked_apply`) in the perturbed ones of
    `x`, `lengthscale`, `variance` (`symbolic_zeros`: a data set `x` that is
    not differentiated costs nothing). Reverse mode transposes it, so the
    parameter cotangent of a batch of vectors is one blocked recomputation
    whose kernel blocks are shared by the batch, as for the matrix-free
    matvec. `K` (computed at stopped parameters) gets no tangent, so
    derivatives beyond the first that pass through the vector's path (a
    gradient w.r.t. `v`, differentiated again w.r.t. the parameters) miss the
    parameters' effect on `K`: first derivatives only.
    """
    kw = {"kernel": kernel, "rows_per_block": rows_per_block}

    @jax.custom_jvp
    def apply(K, x, lengthscale, variance, v):
        return K @ v

    def apply_jvp(primals, tangents):
        K, x, ls, var, v = primals
        tangents = tangents[1:]  # `K` is stopped: no tangent
        out = apply(K, x, ls, var, v)
        zero = jax.custom_derivatives.SymbolicZero
        live = [not isinstance(t, zero) for t in tangents[:3]]
        tangent = None
        if any(live):

            def blocked(*lp):
                return _blocked_apply(*merge_live((x, ls, var), live, lp), v, **kw)

            lp = [p for p, a in zip((x, ls, var), live, strict=True) if a]
            lt = [t for t, a in zip(tangents[:3], live, strict=True) if a]
            tangent = jax.jvp(blocked, lp, lt)[1]
        if not isinstance(tangents[3], zero):
            dv = apply(K, x, ls, var, tangents[3])
            tangent = dv if tangent is None else tangent + dv
        if tangent is None:
            tangent = jnp.zeros_like(out)
        return out, tangent

    apply.defjvp(apply_jvp, symbolic_zeros=True)
    ls = jnp.asarray(lengthscale, x.dtype)
    var = jnp.asarray(variance, x.dtype)

    def matvec(v):
        return apply(K, x, ls, var, v) + noise * v

    return matvec


def _sharded_kernel_matvec(x, mesh, kernel, lengthscale, variance, noise, rows_per_block):
    n = x.shape[0]
    _checks.check_mesh(mesh, n)
    axes = tuple(mesh.axis_names)
    local = n // mesh.size
    rows_per_block = min(rows_per_block, local)
    num_blocks = -(-local // rows_per_block)
    pad = num_blocks * rows_per_block - local
    rows_spec = jax.sharding.PartitionSpec(axes)
    repl = jax.sharding.PartitionSpec()

    def local_matvec(x_local, v_local, lengthscale, variance):
        # The one collective of a kernel matvec: every device needs all of
        # `v` (and of `x`) for its rows of `K v`.
        x_all = jax.lax.all_gather(x_local, axes, tiled=True)
        v_all = jax.lax.all_gather(v_local, axes, tiled=True)
        xb = jnp.pad(x_local, ((0, pad), (0, 0))).reshape(num_blocks, rows_per_block, -1)

        @jax.checkpoint
        def rows(xi):
            kw = {"kernel": kernel, "lengthscale": lengthscale, "variance": variance}
            return kernel_matrix(xi, x_all, **kw) @ v_all

        out = jax.lax.map(rows, xb)
        return out.reshape((num_blocks * rows_per_block, *v_local.shape[1:]))[:local]

    sharded = jax.shard_map(
        local_matvec,
        mesh=mesh,
        in_specs=(rows_spec, rows_spec, repl, repl),
        out_specs=rows_spec,
    )

    def matvec(v):
        ls = jnp.asarray(lengthscale, x.dtype)
        var = jnp.asarray(variance, x.dtype)
        return sharded(x, v, ls, var) + noise * v

    return matvec
