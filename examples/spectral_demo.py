"""matfree demo: Lanczos on a 65,536-dimensional matrix-free operator, and gradients.

The operator is `A(s) = I + s L`, `L` the 5-point Laplacian on a 256 x 256 grid,
available only as a matvec (a stencil; the matrix is never formed). Its
eigenvalues are known in closed form, so every number below is checked.

1. Lanczos from a random vector: extreme Ritz values vs exact eigenvalues.
2. Stochastic Lanczos quadrature of log det A(s) (exact value known) and its
   derivative d/ds, through the adjoint of the Lanczos iteration, vs the exact
   derivative tr(A^{-1} L).
3. A figure: Ritz-value convergence and the estimated spectral density.

Run with `python examples/spectral_demo.py` (`--grid 128` for a faster run,
`--small` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

from matfree import _dense, decomp, operators

jax.config.update("jax_enable_x64", True)


def exact_eigenvalues(ny, nx, s):
    """Eigenvalues of I + s L for the Dirichlet 5-point Laplacian."""
    ky = 4 * jnp.sin(jnp.pi * jnp.arange(1, ny + 1) / (2 * (ny + 1))) ** 2
    kx = 4 * jnp.sin(jnp.pi * jnp.arange(1, nx + 1) / (2 * (nx + 1))) ** 2
    lap = (ky[:, None] + kx[None, :]).reshape(-1)
    return jnp.sort(1.0 + s * lap), jnp.sort(lap)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=256, help="grid side (n = grid^2)")
    parser.add_argument("--depth", type=int, default=60)
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--out", default="spectral_demo.png")
    parser.add_argument("--small", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    if args.small:
        args.grid, args.depth, args.probes = 16, 12, 4

    shape = (args.grid, args.grid)
    n = args.grid**2
    s = 0.5
    print(f"[1/3] operator: I + s*Laplacian on a {shape[0]}x{shape[1]} grid, n = {n:,}")
    evals, lap_evals = exact_eigenvalues(*shape, s)

    v0 = jax.random.normal(jax.random.PRNGKey(0), (n,))
    ritz_history = []
    for depth in sorted({10, 20, 40, args.depth} & set(range(args.depth + 1))):
        t0 = time.perf_counter()
        res = jax.jit(
            lambda v, d=depth: decomp.lanczos(
                operators.laplace_2d(shape, scale=s, shift=1.0), v, depth=d
            )
        )(v0)
        ritz = jnp.linalg.eigvalsh(res.tridiag())
        ritz_history.append((depth, ritz))
        print(
            f"      depth {depth:3d}: largest Ritz value {ritz[-1]:.6f} "
            f"(exact {evals[-1]:.6f}), smallest {ritz[0]:.6f} (exact {evals[0]:.6f}) "
            f"[{time.perf_counter() - t0:.2f} s]"
        )

    print(f"[2/3] log det A(s) by stochastic Lanczos quadrature, {args.probes} probes")

    def logdet(s, key):
        probes = jax.random.rademacher(key, (args.probes, n), dtype=float)
        mv = operators.laplace_2d(shape, scale=s, shift=1.0)
        res = decomp.lanczos(mv, probes, depth=args.depth, batched=True)
        quad = _dense.funm_sym(jnp.log, res.tridiag())[:, 0, 0] * res.init_norm**2
        return jnp.mean(quad), jnp.std(quad) / jnp.sqrt(args.probes)

    value_and_grad = jax.jit(jax.value_and_grad(lambda s, k: logdet(s, k)[0]))
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    est, stderr = jax.jit(logdet)(s, key)
    t_value = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, grad = value_and_grad(s, key)
    t_grad = time.perf_counter() - t0
    exact = jnp.sum(jnp.log(evals))
    exact_grad = jnp.sum(lap_evals / (1.0 + s * lap_evals))  # tr(A^{-1} L)
    print(f"      estimate {est:,.2f} +- {stderr:,.2f}   exact {exact:,.2f}")
    print(
        f"      d/ds: adjoint {grad:,.2f}   exact {exact_grad:,.2f}   "
        f"(value {t_value:.2f} s, value+grad {t_grad:.2f} s incl. compile)"
    )

    print("[3/3] figure")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for depth, ritz in ritz_history:
        ax1.plot(
            ritz, jnp.full_like(ritz, depth), "|", markersize=10, label=f"depth {depth}"
        )
    ax1.axvline(evals[0], color="k", lw=0.5)
    ax1.axvline(evals[-1], color="k", lw=0.5)
    ax1.set_xlabel("Ritz values")
    ax1.set_ylabel("depth")
    ax1.set_title("Ritz values converge to the extreme eigenvalues")
    res = decomp.lanczos(
        operators.laplace_2d(shape, scale=s, shift=1.0),
        jax.random.rademacher(key, (8, n), dtype=float),
        depth=args.depth,
        batched=True,
    )
    w, V = jnp.linalg.eigh(res.tridiag())
    grid = jnp.linspace(evals[0] - 0.2, evals[-1] + 0.2, 400)
    width = 0.05 * (evals[-1] - evals[0])
    dens = jnp.mean(
        jnp.sum(
            V[:, 0, :, None] ** 2
            * jnp.exp(-0.5 * ((grid[None, None] - w[..., None]) / width) ** 2),
            axis=1,
        ),
        axis=0,
    ) / (width * jnp.sqrt(2 * jnp.pi))
    ax2.hist(evals, bins=80, density=True, alpha=0.4, label="exact eigenvalues")
    ax2.plot(grid, dens, "C3", label="Lanczos quadrature")
    ax2.set_xlabel("eigenvalue")
    ax2.set_title("Spectral density")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"      saved {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
