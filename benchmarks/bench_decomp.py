"""Lanczos forward vs adjoint gradient vs autodiff through the loop.

For a matrix-free 2-D stencil operator and a blocked RBF kernel operator,
times (median of repeats, compile separately) and XLA's peak-memory estimate
of: the forward decomposition; the gradient with the adjoint (`gradient="adjoint"`);
the gradient by autodiff through the loop. The differentiated quantity is the
Lanczos quadrature `|v|^2 e1^T log(T) e1` (a spectral quantity), w.r.t. the
operator's parameter and the start vector.

Run: `python benchmarks/bench_decomp.py [--quick]`.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _util

from matfree import _dense, decomp, operators

jax.config.update("jax_enable_x64", True)

LOAD = _util.load_note()  # at import: before this run adds its own load


def make_problem(kind, n):
    if kind == "stencil":
        side = round(n**0.5)
        shape = (side, n // side)

        def make_matvec(theta):
            return operators.laplace_2d(shape, scale=theta, shift=1.0)

        theta0 = jnp.asarray(1.0)
    else:
        x = jax.random.uniform(jax.random.PRNGKey(0), (n, 2))

        def make_matvec(theta):
            return operators.kernel_matvec(
                x, lengthscale=theta, noise=1e-1, rows_per_block=min(1024, n)
            )

        theta0 = jnp.asarray(0.2)
    n_eff = n if kind == "kernel" else round(n**0.5) * (n // round(n**0.5))
    v0 = jax.random.normal(jax.random.PRNGKey(1), (n_eff,))
    return make_matvec, theta0, v0


def spectral(make_matvec, depth, gradient):
    def f(theta, v0):
        res = decomp.lanczos(make_matvec(theta), v0, depth=depth, gradient=gradient)
        return res.init_norm**2 * _dense.funm_sym(jnp.log, res.tridiag())[0, 0]

    return f


def run(configs, repeats):
    rows = []
    for kind, n, depths in configs:
        make_matvec, theta0, v0 = make_problem(kind, n)
        for depth in depths:
            f_adj = spectral(make_matvec, depth, "adjoint")
            f_loop = spectral(make_matvec, depth, "autodiff")
            fns = {
                "forward": f_adj,
                "grad (adjoint)": jax.grad(f_adj, argnums=(0, 1)),
                "grad (autodiff loop)": jax.grad(f_loop, argnums=(0, 1)),
            }
            row = {"op": kind, "n": v0.shape[0], "depth": depth}
            for name, fn in fns.items():
                compiled, t_compile = _util.compile_jit(fn, theta0, v0)
                t = _util.median_time(compiled, theta0, v0, repeats=repeats)
                row[name] = (t, t_compile, _util.peak_bytes(compiled))
                print(
                    f"{kind:8s} n={v0.shape[0]:7d} depth={depth:3d} {name:22s}"
                    f" {t:8.4f} s (compile {t_compile:.2f} s)"
                    f" peak {_util.fmt_bytes(row[name][2])}",
                    flush=True,
                )
            rows.append(row)
    return rows


def report(rows, repeats):
    lines = [
        "## Lanczos: forward, adjoint gradient, autodiff through the loop",
        "",
        f"Machine: {_util.machine()}; {LOAD}. float64, full re-orthogonalisation.",
        f"Median of {repeats} runs after a warm-up (one run where a run exceeds 5 s); compile time separate; peak memory",
        "is XLA's compiled-memory estimate (arguments + outputs + temporaries).",
        "Quantity: `|v|^2 e1^T log(T) e1`, gradient w.r.t. the operator parameter and `v`.",
        "",
        "| operator | n | depth | forward [s] | adjoint grad [s] | loop grad [s] "
        "| adjoint / forward | adjoint / loop | peak fwd | peak adjoint | peak loop "
        "| compile fwd / adj / loop [s] |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        f, a, lp = r["forward"], r["grad (adjoint)"], r["grad (autodiff loop)"]
        lines.append(
            f"| {r['op']} | {r['n']} | {r['depth']} | {f[0]:.4f} | {a[0]:.4f} | {lp[0]:.4f} "
            f"| {a[0] / f[0]:.2f} | {a[0] / lp[0]:.2f} | {_util.fmt_bytes(f[2])} "
            f"| {_util.fmt_bytes(a[2])} | {_util.fmt_bytes(lp[2])} "
            f"| {f[1]:.1f} / {a[1]:.1f} / {lp[1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["op"], r["n"]) for r in rows})
    fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), 6.5), squeeze=False)
    for j, key in enumerate(keys):
        sel = [r for r in rows if (r["op"], r["n"]) == key]
        depths = [r["depth"] for r in sel]
        for name, style in [
            ("forward", "k-o"),
            ("grad (adjoint)", "C0-s"),
            ("grad (autodiff loop)", "C3-^"),
        ]:
            axes[0, j].plot(depths, [r[name][0] for r in sel], style, label=name)
            axes[1, j].plot(depths, [r[name][2] / 2**20 for r in sel], style, label=name)
        axes[0, j].set_title(f"{key[0]}, n={key[1]}")
        axes[0, j].set_ylabel("time [s]")
        axes[1, j].set_ylabel("peak memory [MiB]")
        axes[1, j].set_xlabel("depth")
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    path = _util.figure_path("decomp")
    fig.savefig(path, dpi=110)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    args = parser.parse_args()
    if args.quick:
        configs = [("stencil", 400, [5, 10]), ("kernel", 300, [5, 10])]
        repeats = 1
    else:
        configs = [
            ("stencil", 10_000, [10, 20, 40, 80]),
            ("stencil", 100_000, [10, 20, 40, 80]),
            ("kernel", 4_096, [10, 20, 40, 80]),
            ("kernel", 10_000, [10, 40]),
        ]
        repeats = 3
    rows = run(configs, repeats)
    text = report(rows, repeats)
    fig = plot(rows)
    text += f"\n![Lanczos timings and memory](figures/{fig.rsplit('/', 1)[1]})\n"
    if not args.quick:
        print("wrote", _util.write_section("decomp", text))
    print(text)


if __name__ == "__main__":
    main()
