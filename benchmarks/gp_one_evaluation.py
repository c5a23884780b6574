"""One evaluation of the GP fit's loss (value + gradient) on protein, with its CG steps.

The loss of `bench_gp_fit.py` (Matérn-3/2 ARD, `bench_gp.CFG`'s probes and depth, CG rtol
`--rtol`, pivoted Cholesky of rank `--rank`, `gradient=--gradient`) at the
hyperparameters of the 8,000-row fit's optimum (short lengthscales: the
late evaluations of a fit), compiled ahead of time; prints the loss per
point, the CG steps, the evaluation's wall time and the compile time. Used to
see why an evaluation at all 36,584 training rows costs ~43x one at 8,000
rows (issue #16.4).

Usage:
    python benchmarks/gp_one_evaluation.py --rows 10000 --rank 15    # 8,000 training rows
    python benchmarks/gp_one_evaluation.py --rows 0 --rank 100 --materialize
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_gp import CFG  # noqa: E402  GPyTorch's settings, shared with the fit benchmark

# The 8,000-row fit's optimum (benchmarks/results/gp_fit_10000_adjoint.log), float32.
OPTIMUM = {
    "lengthscale": [0.4388, 1.2707, 1.3327, 0.2149, 0.4404, 0.3874, 0.1481, 0.4128, 0.4868],
    "noise": 0.1374,
    "variance": 0.6713,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10000, help="rows of protein (0: all)")
    ap.add_argument("--rank", type=int, default=CFG["rank"])
    ap.add_argument("--rtol", type=float, default=CFG["rtol"])
    ap.add_argument("--gradient", default="adjoint", choices=("hutchinson", "adjoint"))
    ap.add_argument("--materialize", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from matfree import gp

    jax.config.update("jax_enable_x64", True)
    d = gp.load_protein(n=args.rows or None, dtype="float32", seed=0)
    X, y = jnp.asarray(d["X_train"]), jnp.asarray(d["y_train"])
    n = X.shape[0]
    p = {k: jnp.asarray(v, jnp.float32) for k, v in OPTIMUM.items()}
    opts = {
        "kernel": "matern32",
        "num_probes": CFG["probes"],
        "depth": CFG["depth"],
        "rtol": args.rtol,
        "precond_rank": args.rank,
        "gradient": args.gradient,
        "materialize": args.materialize,
    }

    def loss(p):
        r = gp.log_marginal_likelihood(
            p, X, y, key=jax.random.PRNGKey(0), throw=False, **opts
        )
        return -r.value / n, (r.cg_num_steps, r.status)

    f = jax.jit(jax.value_and_grad(loss, has_aux=True))
    t0 = time.perf_counter()
    compiled = f.lower(p).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    (v, (steps, status)), _ = jax.block_until_ready(compiled(p))
    t = time.perf_counter() - t0
    print(
        f"n={n} materialize={args.materialize} rank={args.rank} rtol={args.rtol} "
        f"gradient={args.gradient}: loss/pt {float(v):.4f}, CG steps {int(steps)}, "
        f"status {int(status)}, evaluation {t:.1f} s (compile {t_compile:.1f} s)"
    )


if __name__ == "__main__":
    main()
