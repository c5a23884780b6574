"""Benchmark: log-determinants of RBF kernel matrices, and trace-estimator variance.

(1) `matfree.logdet` (stochastic Lanczos quadrature on a blocked kernel matvec)
    vs dense Cholesky `slogdet` (kernel matrix formed, `jnp.linalg.cholesky`):
    value time, value+gradient time (w.r.t. lengthscale, variance, noise),
    compile time, peak temporary memory (XLA memory analysis), and the relative
    error of the estimate and of its gradient vs dense.
(2) Variance of Hutchinson, Hutch++ and XTrace at equal matvec budgets.

Run: `.venv/bin/python benchmarks/bench_logdet.py [--quick]`. Writes
`benchmarks/results/logdet.md` and `benchmarks/figures/logdet_*.png`.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import _util  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
import matplotlib.pyplot as plt  # noqa: E402

import matfree  # noqa: E402
from matfree import matrices, operators  # noqa: E402

LOAD = _util.load_note()  # at import: before this run adds its own load

ROOT = pathlib.Path(__file__).parent
PARAMS = {"lengthscale": 0.2, "variance": 1.0, "noise": 1e-2}
MAX_DENSE_BYTES = 12e9  # skip a dense run whose XLA temporaries exceed this


def points(n, d=2):
    return jax.random.uniform(jax.random.PRNGKey(0), (n, d), dtype=jnp.float64)


def slq_logdet(params, x, key, depth, num_probes, chunk_size):
    mv = operators.kernel_matvec(
        x,
        lengthscale=params["lengthscale"],
        variance=params["variance"],
        noise=params["noise"],
        rows_per_block=512,
    )
    est = matfree.logdet(
        mv,
        jnp.zeros(x.shape[0]),
        key=key,
        depth=depth,
        num_probes=num_probes,
        chunk_size=chunk_size,
    )
    return est.value


def dense_logdet(params, x):
    K = operators.kernel_matrix(
        x, x, lengthscale=params["lengthscale"], variance=params["variance"]
    )
    K = K + params["noise"] * jnp.eye(x.shape[0])
    L = jnp.linalg.cholesky(K)
    return 2 * jnp.sum(jnp.log(jnp.diag(L)))


def timed(fn, args, reps):
    """Compile time, median run time, temp bytes, and the output."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem else float("nan")
    times = []
    if reps == 1:  # large sizes: the first run after compilation is the measurement
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        return compile_s, time.perf_counter() - t0, temp, out
    out = jax.block_until_ready(compiled(*args))  # warm-up
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times), temp, out


def dense_fits(fn, args):
    mem = jax.jit(fn).lower(*args).compile().memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", 0) if mem else 0
    return temp <= MAX_DENSE_BYTES, temp


def rel(a, b):
    return float(abs(a - b) / abs(b))


def bench_kernel(sizes, depth, num_probes, chunk_size, reps, log):
    rows = []
    key = jax.random.PRNGKey(1)
    for n in sizes:
        x = points(n)
        r = reps if n <= 4096 else 1
        log(f"n={n}: SLQ value (depth={depth}, probes={num_probes}) ...")

        def value(p, x=x):
            return slq_logdet(p, x, key, depth, num_probes, chunk_size)

        c_v, t_v, m_v, est = timed(value, (PARAMS,), r)
        log(f"  {t_v:.2f} s (compile {c_v:.1f} s); value+grad ...")
        c_g, t_g, m_g, (_, grad) = timed(jax.value_and_grad(value), (PARAMS,), r)
        log(f"  {t_g:.2f} s (compile {c_g:.1f} s)")
        row = {
            "n": n,
            "slq_value_s": t_v,
            "slq_grad_s": t_g,
            "slq_compile_s": c_v + c_g,
            "slq_mem": max(m_v, m_g),
            "reps": r,
        }

        def dense(p, x=x):
            return dense_logdet(p, x)

        ok, temp = dense_fits(jax.value_and_grad(dense), (PARAMS,))
        if ok:
            log(f"  dense value ... (XLA temporaries of value+grad {temp / 1e9:.1f} GB)")
            _, d_v, dm_v, ref = timed(dense, (PARAMS,), r)
            log(f"  {d_v:.2f} s; dense value+grad ...")
            _, d_g, dm_g, (_, ref_grad) = timed(jax.value_and_grad(dense), (PARAMS,), r)
            log(f"  {d_g:.2f} s")
            row |= {
                "dense_value_s": d_v,
                "dense_grad_s": d_g,
                "dense_mem": max(dm_v, dm_g),
                "err_value": rel(est, ref),
                "err_grad": {k: rel(grad[k], ref_grad[k]) for k in PARAMS},
            }
        else:
            log(f"  dense skipped: XLA temporaries {temp / 1e9:.1f} GB > budget")
            row |= {"dense_skipped_bytes": temp}
        rows.append(row)
    return rows


def bench_trace_variance(budgets, num_keys, log):
    n = 1000
    eigvals = jnp.concatenate(
        [
            100.0 * 0.7 ** jnp.arange(20.0),
            jax.random.uniform(jax.random.PRNGKey(2), (n - 20,)),
        ]
    )
    A = matrices.symmetric_matrix_from_eigenvalues(jax.random.PRNGKey(3), eigvals)
    truth = float(jnp.sum(eigvals))
    keys = jax.random.split(jax.random.PRNGKey(4), num_keys)
    out = {}
    for method in ("hutchinson", "hutch++", "xtrace"):
        errs = []
        for m in budgets:

            def one(key, m=m, method=method):
                return matfree.trace(
                    lambda v: A @ v, jnp.zeros(n), key=key, num_probes=m, method=method
                ).value

            est = jax.jit(jax.vmap(one))(keys)
            errs.append(float(jnp.sqrt(jnp.mean((est - truth) ** 2)) / truth))
        out[method] = errs
        log(f"  {method}: relative RMS error {[f'{e:.2e}' for e in errs]}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    if args.quick:
        sizes, depth, probes, chunk, reps = [512, 1024], 10, 4, None, 1
        budgets, num_keys = [6, 12, 24], 50
    else:
        sizes, depth, probes, chunk, reps = [2048, 4096, 16384], 30, 16, None, 3
        budgets, num_keys = [6, 12, 24, 48, 96, 192], 300

    def log(msg):
        print(msg, flush=True)

    log(f"jax {jax.__version__}, devices {jax.devices()}; {LOAD}")
    rows = bench_kernel(sizes, depth, probes, chunk, reps, log)
    log("trace estimators at equal matvec budget (n=1000, 20 decaying + flat noise) ...")
    variance = bench_trace_variance(budgets, num_keys, log)
    write_results(args, rows, variance, budgets, depth, probes, num_keys)


def write_results(args, rows, variance, budgets, depth, probes, num_keys):
    figdir = ROOT / "figures"
    figdir.mkdir(exist_ok=True)
    (ROOT / "results").mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ns = [r["n"] for r in rows]
    axes[0].loglog(ns, [r["slq_value_s"] for r in rows], "o-", label="SLQ value")
    axes[0].loglog(ns, [r["slq_grad_s"] for r in rows], "s-", label="SLQ value+grad")
    dn = [r["n"] for r in rows if "dense_value_s" in r]
    axes[0].loglog(
        dn,
        [r["dense_value_s"] for r in rows if "dense_value_s" in r],
        "o--",
        label="dense Cholesky value",
    )
    axes[0].loglog(
        dn,
        [r["dense_grad_s"] for r in rows if "dense_grad_s" in r],
        "s--",
        label="dense Cholesky value+grad",
    )
    axes[0].set(
        xlabel="n", ylabel="seconds", title=f"RBF logdet (depth {depth}, {probes} probes)"
    )
    axes[0].legend()
    for method, errs in variance.items():
        axes[1].loglog(budgets, errs, "o-", label=method)
    axes[1].set(xlabel="matvecs", ylabel="relative RMS error", title="trace estimators")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(figdir / f"logdet{suffix}.png", dpi=120)

    import scipy

    lines = [
        f"## Log-determinants and trace estimators{' (quick run)' if args.quick else ''}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {LOAD}. "
        f"jax {jax.__version__}, jaxlib "
        f"{jax.lib.__version__ if hasattr(jax.lib, '__version__') else jax.__version__}, "
        f"scipy {scipy.__version__}, float64.",
        "",
        f"RBF kernel, d=2, points uniform in [0,1]^2, lengthscale {PARAMS['lengthscale']}, "
        f"noise {PARAMS['noise']}; SLQ with depth {depth}, {probes} Rademacher probes, "
        "kernel matvec in row blocks of 512. Gradient w.r.t. lengthscale, variance, noise. "
        "Times are medians of `reps` runs after a warm-up (reps = 1: a single run, no "
        "warm-up); compile time separate.",
        "",
        "| n | SLQ value (s) | SLQ value+grad (s) | grad/value | SLQ compile (s) | "
        "dense value (s) | dense value+grad (s) | dense/SLQ (value+grad) | SLQ temp MB | "
        "dense temp MB | rel. err value | rel. err grad (l, v, s) | reps |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        if "dense_value_s" in r:
            g = r["err_grad"]
            dense = (
                f"{r['dense_value_s']:.2f} | {r['dense_grad_s']:.2f} | "
                f"{r['dense_grad_s'] / r['slq_grad_s']:.2f} | {r['slq_mem'] / 1e6:.0f} | "
                f"{r['dense_mem'] / 1e6:.0f} | {r['err_value']:.1e} | "
                f"{g['lengthscale']:.1e}, {g['variance']:.1e}, {g['noise']:.1e}"
            )
        else:
            dense = (
                f"skipped (needs {r['dense_skipped_bytes'] / 1e9:.1f} GB) | - | - | "
                f"{r['slq_mem'] / 1e6:.0f} | - | - | -"
            )
        lines.append(
            f"| {r['n']} | {r['slq_value_s']:.2f} | {r['slq_grad_s']:.2f} | "
            f"{r['slq_grad_s'] / r['slq_value_s']:.2f} | {r['slq_compile_s']:.1f} | "
            f"{dense} | {r['reps']} |"
        )
    lines += [
        "",
        "Trace estimators at equal matvec budget: relative RMS error over "
        f"{num_keys} keys, n=1000, eigenvalues 100·0.7^k (k<20) plus uniform noise "
        "in [0,1], Rademacher.",
        "",
        "| matvecs | " + " | ".join(variance) + " |",
        "|---|" + "---|" * len(variance),
    ]
    for i, m in enumerate(budgets):
        lines.append(
            f"| {m} | " + " | ".join(f"{variance[k][i]:.2e}" for k in variance) + " |"
        )
    lines += ["", f"Figure: `benchmarks/figures/logdet{suffix}.png`", ""]
    (ROOT / "results" / f"logdet{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
