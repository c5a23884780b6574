"""matfree demo: fit Gaussian-process hyperparameters matrix-free at 20,000 points.

1. Draws noisy data from a GP prior with known hyperparameters (an ARD RBF
   kernel in 2-D): y = (K + noise I)^{1/2} z by Lanczos (`matfree.sqrt_action`),
   never forming the 20,000 x 20,000 kernel matrix.
2. Fits the hyperparameters from a wrong start by maximising the log marginal
   likelihood: preconditioned CG (`matfree.solve`) for y^T K^{-1} y, stochastic
   Lanczos quadrature (`matfree.logdet`) for log det K, Adam on the
   unconstrained scale (`matfree.gp.fit`, progress bar).
3. Prints true vs recovered hyperparameters and the test RMSE, and saves a
   figure: the loss curve and predictions with uncertainty on a slice.

Run with `make demo`; `python examples/demo.py --n 5000 --steps 30` for a
shorter run, `--small` for a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from matfree import gp

jax.config.update("jax_enable_x64", True)

TRUE = {"lengthscale": [0.15, 0.35], "variance": 1.5, "noise": 0.1}
START = {"lengthscale": [1.0, 1.0], "variance": 0.5, "noise": 0.5}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n",
        type=int,
        default=20_000,
        help="training points (20,000: ~3 min of fitting here)",
    )
    parser.add_argument("--n-test", type=int, default=2_000, help="test points")
    parser.add_argument("--steps", type=int, default=40, help="Adam steps")
    parser.add_argument("--lr", type=float, default=0.15, help="Adam learning rate")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--depth", type=int, default=6, help="Lanczos depth (SLQ)")
    parser.add_argument("--rank", type=int, default=150, help="preconditioner rank")
    parser.add_argument("--rtol", type=float, default=1e-2, help="CG tolerance")
    parser.add_argument("--float64", action="store_true", help="double precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo.png")
    parser.add_argument("--small", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    if args.small:
        args.n, args.n_test, args.steps, args.rank = 600, 200, 15, 50
    dtype = jnp.float64 if args.float64 else jnp.float32
    true = {k: jnp.asarray(v, dtype) for k, v in TRUE.items()}
    start = {k: jnp.asarray(v, dtype) for k, v in START.items()}
    key_x, key_y, key_fit = jax.random.split(jax.random.PRNGKey(args.seed), 3)

    n_all = args.n + args.n_test
    print(
        f"[1/4] sampling y ~ GP(0, rbf) + noise at {n_all:,} points in 2-D "
        f"({jnp.dtype(dtype).name}), matrix-free"
    )
    t0 = time.perf_counter()
    X_all = jax.random.uniform(key_x, (n_all, 2), dtype)
    depth = min(80, n_all)
    y_all = jax.jit(lambda k: gp.sample_prior(true, X_all, key=k, depth=depth).value)(key_y)
    y_all.block_until_ready()
    print(f"      Lanczos depth {depth}: {time.perf_counter() - t0:.1f} s")
    X, y = X_all[: args.n], y_all[: args.n]
    X_test, y_test = X_all[args.n :], y_all[args.n :]

    opts = {
        "kernel": "rbf",
        "num_probes": args.probes,
        "depth": min(args.depth, args.n),
        "precond_rank": min(args.rank, args.n),
        "rtol": args.rtol,
    }
    print(
        f"[2/4] fitting {args.n:,} points from a wrong start, {args.steps} Adam steps "
        f"(probes {args.probes}, depth {opts['depth']}, preconditioner rank "
        f"{opts['precond_rank']}, CG rtol {args.rtol:g})"
    )
    t0 = time.perf_counter()
    res = gp.fit(
        start,
        X,
        y,
        key=key_fit,
        optimizer=optax.adam(args.lr),
        num_steps=args.steps,
        **opts,
    )
    per_step = float(np.median(res.seconds[1:])) if args.steps > 1 else res.seconds[0]
    print(f"      {time.perf_counter() - t0:.1f} s ({per_step:.2f} s/step)")

    print("[3/4] true vs recovered hyperparameters")
    print(f"      {'':12s} {'true':>16s} {'start':>16s} {'recovered':>16s}")
    for k in ("lengthscale", "variance", "noise"):
        row = [np.array2string(np.asarray(p[k]), precision=3) for p in (true, start)]
        row.append(np.array2string(np.asarray(res.params[k]), precision=3))
        print(f"      {k:12s} {row[0]:>16s} {row[1]:>16s} {row[2]:>16s}")

    predict_opts = {"kernel": "rbf", "precond_rank": opts["precond_rank"], "rtol": 1e-3}
    t0 = time.perf_counter()
    mean = gp.predict(res.params, X, y, X_test, variance=False, **predict_opts).mean
    rmse = float(jnp.sqrt(jnp.mean((mean - y_test) ** 2)))
    mean_true = gp.predict(true, X, y, X_test, variance=False, **predict_opts).mean
    rmse_true = float(jnp.sqrt(jnp.mean((mean_true - y_test) ** 2)))
    print(
        f"      test RMSE {rmse:.4f} (true hyperparameters: {rmse_true:.4f}; noise floor "
        f"sqrt(noise) = {float(jnp.sqrt(true['noise'])):.4f}) "
        f"[{time.perf_counter() - t0:.1f} s]"
    )

    print("[4/4] figure")
    s = jnp.linspace(0, 1, 200, dtype=dtype)
    X_slice = jnp.stack([s, jnp.full_like(s, 0.5)], axis=1)
    m, v, _ = gp.predict(res.params, X, y, X_slice, chunk_size=100, **predict_opts)
    sd = jnp.sqrt(v + res.params["noise"])
    near = jnp.abs(X_test[:, 1] - 0.5) < 0.02

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(np.arange(1, args.steps + 1), res.losses)
    ax1.set_xlabel("Adam step")
    ax1.set_ylabel("negative log marginal likelihood / n")
    ax1.set_title(f"Fitting {args.n:,} points (stochastic estimate)")
    ax2.fill_between(s, m - 2 * sd, m + 2 * sd, alpha=0.3, label="mean ± 2 sd (with noise)")
    ax2.plot(s, m, "C0", label="predictive mean")
    ax2.plot(X_test[near, 0], y_test[near], "k.", ms=4, label="test data near the slice")
    ax2.set_xlabel("x1 (x2 = 0.5)")
    ax2.set_title(f"Predictions on a slice (test RMSE {rmse:.3f})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"      saved {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
