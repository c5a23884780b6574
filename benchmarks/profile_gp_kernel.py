"""Profile of the GP kernel matmat, float32 vs float64 (issue #16.1).

Times, per 10^8 kernel entries (n = 10,000, d = 9, m = 11 right-hand sides,
Matérn-3/2), the pieces of `matfree.operators.kernel_matvec`: the squared
distances (a matmul with d = 9 plus a broadcast add), the Matérn formula
(sqrt, exp), `exp` alone, and the product with the right-hand sides; then one
kernel matmat and its VJP w.r.t. lengthscale and variance as the library does
them, and a candidate that was *not* adopted: a fused symmetric-tile matmat
(each off-diagonal tile of the upper triangle evaluated once and used twice,
distances summed coordinate by coordinate inside the kernel's loop fusion)
with a hand-written VJP that accumulates the cotangents tile by tile. The
candidate is exact (checked here against `jax.grad` of the dense kernel) but
on XLA's CPU backend its scanned tiles ran slower than the row blocks; see
`benchmarks/RESULTS.md` (GP section, "profile").

Usage: python benchmarks/profile_gp_kernel.py [--n 10000] [--dtype float64]
Report CPU time (`time.process_time`) on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from matfree import operators  # noqa: E402


def _unit_kernel(kernel, d2):
    """`(k / variance, (dk / d d2) / variance)` as functions of the squared distance."""
    if kernel == "rbf":
        k = jnp.exp(-d2 / 2)
        return k, -k / 2
    if kernel == "matern12":
        r = operators._safe_sqrt(d2)
        k = jnp.exp(-r)
        return k, jnp.where(r > 0, -k / (2 * jnp.where(r > 0, r, 1.0)), 0.0)
    if kernel == "matern32":
        r = jnp.sqrt(3.0) * operators._safe_sqrt(d2)
        e = jnp.exp(-r)
        return (1 + r) * e, -1.5 * e
    r = jnp.sqrt(5.0) * operators._safe_sqrt(d2)  # matern52
    e = jnp.exp(-r)
    return (1 + r + r * r / 3) * e, -(5.0 / 6.0) * (1 + r) * e


def _tile_d2(xi, xjT):
    """Squared distances `(b, b)` of scaled points `xi (b, d)`, `xjT (d, b)`."""
    d2 = jnp.zeros((xi.shape[0], xjT.shape[1]), xi.dtype)
    for p in range(xi.shape[1]):  # unrolled: one fused elementwise loop
        t = xi[:, p, None] - xjT[p][None, :]
        d2 = d2 + t * t
    return d2


def _tile_pairs(num_tiles):
    i, j = np.triu_indices(num_tiles)
    return np.asarray(i, np.int32), np.asarray(j, np.int32)


def _sym_setup(x, lengthscale, tile):
    n, d = x.shape
    ls = jnp.broadcast_to(jnp.asarray(lengthscale, x.dtype), (d,))
    num = -(-n // tile)
    pad = num * tile - n
    xs = jnp.pad(x / ls, ((0, pad), (0, 0))).reshape(num, tile, d)
    return ls, xs, num, pad


def _sym_forward(kernel, tile, x, lengthscale, variance, V):
    n, m = V.shape
    _, xs, num, pad = _sym_setup(x, lengthscale, tile)
    xsT = jnp.swapaxes(xs, 1, 2)
    Vt = jnp.pad(V, ((0, pad), (0, 0))).reshape(num, tile, m)
    VtT = jnp.swapaxes(Vt, 1, 2)
    # Row contributions `K_ij V_j` in `out`; column contributions `(V_i^T K_ij)`
    # in `outT`, kept transposed (a transposed-operand product is slower).
    init = (jnp.zeros_like(Vt), jnp.zeros_like(VtT))

    def body(carry, ij):
        out, outT = carry
        i, j = ij
        # The barrier keeps the tile slices out of the kernel's loop fusion.
        xi, xjT = jax.lax.optimization_barrier((xs[i], xsT[j]))
        k, _ = _unit_kernel(kernel, _tile_d2(xi, xjT))
        out = out.at[i].add(k @ Vt[j])
        outT = outT.at[j].add(jnp.where(i == j, 0.0, 1.0) * (VtT[i] @ k))
        return (out, outT), None

    (out, outT), _ = jax.lax.scan(body, init, _tile_pairs(num))
    out = out + jnp.swapaxes(outT, 1, 2)
    return jnp.asarray(variance, V.dtype) * out.reshape(num * tile, m)[:n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sym_matmat(kernel, tile, x, lengthscale, variance, V):
    return _sym_forward(kernel, tile, x, lengthscale, variance, V)


def _sym_matmat_fwd(kernel, tile, x, lengthscale, variance, V):
    out = _sym_forward(kernel, tile, x, lengthscale, variance, V)
    return out, (x, lengthscale, variance, V)


def _sym_matmat_bwd(kernel, tile, res, G):
    x, lengthscale, variance, V = res
    n, m = V.shape
    d = x.shape[1]
    ls, xs, num, pad = _sym_setup(x, lengthscale, tile)
    xsT = jnp.swapaxes(xs, 1, 2)
    var = jnp.asarray(variance, V.dtype)
    Vt = jnp.pad(V, ((0, pad), (0, 0))).reshape(num, tile, m)
    Gt = jnp.pad(G, ((0, pad), (0, 0))).reshape(num, tile, m)
    zero = jnp.zeros((), V.dtype)
    init = (jnp.zeros_like(Vt), jnp.zeros_like(xs), zero)

    def body(carry, ij):
        V_bar, xs_bar, var_bar = carry
        i, j = ij
        off = jnp.where(i == j, 0.0, 1.0).astype(V.dtype)
        xi, xj, xjT = jax.lax.optimization_barrier((xs[i], xs[j], xsT[j]))
        k, dk = _unit_kernel(kernel, _tile_d2(xi, xjT))
        # dL/dK_ab for the entries (a in tile i, b in tile j) and, off the
        # diagonal, for their mirror images (b, a): the same kernel value.
        A = Gt[i] @ Vt[j].T + off * (Vt[i] @ Gt[j].T)
        V_bar = V_bar.at[i].add(k @ Gt[j])
        V_bar = V_bar.at[j].add(off * (k.T @ Gt[i]))
        var_bar = var_bar + jnp.sum(A * k)
        C = A * dk  # dL/d d2_ab (variance applied at the end)
        Cx = C @ xj
        CTx = C.T @ xi
        rows, cols = jnp.sum(C, 1), jnp.sum(C, 0)
        # d2_ab = |xs_a - xs_b|^2:  d/dxs_a = 2 (xs_a - xs_b), d/dxs_b = -2 (...).
        xs_bar = xs_bar.at[i].add(2 * (rows[:, None] * xi - Cx))
        xs_bar = xs_bar.at[j].add(2 * (cols[:, None] * xj - CTx))
        return (V_bar, xs_bar, var_bar), None

    (V_bar, xs_bar, var_bar), _ = jax.lax.scan(body, init, _tile_pairs(num))
    V_bar = var * V_bar.reshape(num * tile, m)[:n]
    xs_bar = var * xs_bar.reshape(num * tile, d)[:n]
    # xs = x / ls:  x_bar = xs_bar / ls,  ls_bar_p = -sum_a xs_bar_ap x_ap / ls_p^2.
    x_bar = xs_bar / ls
    ls_bar = -jnp.sum(xs_bar * x, 0) / ls**2
    ls_bar = ls_bar.reshape(lengthscale.shape) if lengthscale.ndim else jnp.sum(ls_bar)
    return x_bar, ls_bar, var_bar, V_bar


_sym_matmat.defvjp(_sym_matmat_fwd, _sym_matmat_bwd)


def candidate_matvec(x, kernel, lengthscale, variance, tile):
    def matvec(V):
        ls = jnp.asarray(lengthscale, V.dtype)
        return _sym_matmat(kernel, tile, x, ls, jnp.asarray(variance, V.dtype), V)

    return matvec


def cpu_time(fn, *args, repeats=3):
    """Smallest CPU time (all threads) and wall time of `fn(*args)` after a warm-up."""
    jax.block_until_ready(fn(*args))
    cpu, wall = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return min(cpu), min(wall)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--rows", type=int, default=128, help="rows_per_block")
    ap.add_argument("--tile", type=int, default=512, help="the candidate's tile side")
    a = ap.parse_args()
    n, d, m, dt = a.n, 9, 11, a.dtype
    X = jax.random.normal(jax.random.PRNGKey(0), (n, d), dtype=dt)
    V = jax.random.normal(jax.random.PRNGKey(1), (n, m), dtype=dt)
    ls, var = jnp.ones(d, dt), jnp.asarray(1.0, dt)
    scale = 1e8 / (a.rows * n)  # per 10^8 entries
    xb = X[: a.rows]
    D2 = operators._sqdist(xb, X, 1.0)

    def m32(d2):
        r = jnp.sqrt(3 * d2)
        return (1 + r) * jnp.exp(-r)

    pieces = {
        "distances (matmul d=9 + add)": (lambda a, b: operators._sqdist(a, b, 1.0), xb, X),
        "Matérn-3/2 formula (sqrt, exp)": (m32, D2),
        "exp alone": (lambda x: jnp.exp(-x), D2),
        "product with 11 RHS": (lambda k, v: k @ v, D2, V),
    }
    print(f"{dt}, n = {n}, block {a.rows} x {n}; CPU s per 1e8 entries (wall):")
    for name, (fn, *args) in pieces.items():
        c, w = cpu_time(jax.jit(fn), *args)
        print(f"  {name}: {c * scale:.3f} ({w * scale:.3f})")

    def library(ls, var, V):
        mv = operators.kernel_matvec(
            X, kernel="matern32", lengthscale=ls, variance=var, rows_per_block=a.rows
        )
        return mv(V)

    def candidate(ls, var, V):
        return candidate_matvec(X, "matern32", ls, var, a.tile)(V)

    for name, f in (("library", library), ("candidate", candidate)):
        grad = jax.grad(lambda ls, var, V, f=f: jnp.sum(V * f(ls, var, V)), argnums=(0, 1))
        c1, w1 = cpu_time(jax.jit(f), ls, var, V)
        c2, w2 = cpu_time(jax.jit(grad), ls, var, V)
        print(f"  {name}: matmat {c1:.3f} s CPU ({w1:.3f} wall), VJP {c2:.3f} ({w2:.3f})")
    # The candidate is exact: value and gradient against the dense kernel.
    x, W = X[:300], V[:300]

    def dense(ls, var):
        K = operators.kernel_matrix(x, x, kernel="matern32", lengthscale=ls, variance=var)
        return jnp.sum(W * (K @ W))

    def cand(ls, var):
        return jnp.sum(W * candidate_matvec(x, "matern32", ls, var, 64)(W))

    err = [
        float(jnp.max(jnp.abs(p - q)) / jnp.max(jnp.abs(q)))
        for p, q in zip(
            jax.grad(cand, (0, 1))(ls, var), jax.grad(dense, (0, 1))(ls, var), strict=True
        )
    ]
    print(f"  candidate vs dense gradient, max relative error: {max(err):.1e}")


if __name__ == "__main__":
    main()
