"""How accurate are the gradients? Value error against gradient error, path by path.

For each differentiable path of the library, sweep the knob that sets the
accuracy of the value (Krylov depth or solver tolerance) from unconverged to
converged, and measure in float64 against a dense reference:

- the relative error of the value,
- the relative error of the gradient of `<w, value>` with respect to the
  vector (`v` or `b`) and to the operator's parameters (a scale `s` and a
  diagonal `d` the matvec closes over),

both with the default rule (`gradient="adjoint"`) and with differentiation
through the loop (`gradient="autodiff"`). The figure and the table feed
`docs/gradient_accuracy.md`.

Run: `python benchmarks/bench_gradient_accuracy.py` (about 20 minutes on the shared 2-core machine).
"""

from __future__ import annotations

import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import matfree  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "figures" / "gradient_accuracy.png"
N = 120


def laplacian(n):
    return (2.0 * jnp.eye(n) - jnp.eye(n, k=1) - jnp.eye(n, k=-1)) * (n + 1) ** 2 / n**2


def advection(n):
    """Upwind first difference: strongly non-normal with the diffusion part."""
    return (jnp.eye(n) - jnp.eye(n, k=-1)) * (n + 1) / n


def relerr(a, b):
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True))
    den = sum(float(jnp.sum(y**2)) for y in b)
    return float(np.sqrt(num / den))


def problem(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    v = jax.random.normal(k1, (N,))
    w = jax.random.normal(k2, (N,))
    d = 0.5 * jax.random.uniform(k3, (N,))
    return v, w, d


def sweep_exp(symmetric, knobs, gradient):
    """exp(t A) v with A = -s L + diag(d) (symmetric) or -(s L + c C) + diag(d)."""
    v, w, d = problem()
    L = laplacian(N)
    C = advection(N) * 8.0
    # t |A| about 40 (symmetric) and 20 (general): one substep converges by depth 40.
    t = 10.0 if symmetric else 1.0

    def dense_A(s, d):
        A = -s * L + jnp.diag(d)
        return A if symmetric else A - C

    def ref(v, s, d):
        return jax.scipy.linalg.expm(t * dense_A(s, d)) @ v

    def ours(depth):
        def f(v, s, d):
            A = dense_A(s, d)
            res = matfree.exp_action(
                lambda x: A @ x,
                v,
                t=t,
                depth=depth,
                symmetric=symmetric,
                gradient=gradient,
                throw=False,
            )
            return res.value

        return f

    return _sweep(ref, ours, knobs, (v, 1.0, d), w)


def sweep_sqrt(knobs, gradient):
    """A^{-1/2} v with A = s L + diag(1 + d) (SPD)."""
    v, w, d = problem()
    L = laplacian(N)

    def dense_A(s, d):
        return s * L + jnp.diag(1.0 + d)

    def ref(v, s, d):
        lam, Q = jnp.linalg.eigh(dense_A(s, d))
        return Q @ ((Q.T @ v) / jnp.sqrt(lam))

    def ours(depth):
        def f(v, s, d):
            A = dense_A(s, d)
            res = matfree.sqrt_action(
                lambda x: A @ x,
                v,
                depth=depth,
                inverse=True,
                gradient=gradient,
                throw=False,
            )
            return res.value

        return f

    return _sweep(ref, ours, knobs, (v, 0.05, d), w)


def sweep_solve(method, knobs, gradient):
    """A x = b with A = s L + diag(0.01 + d) (SPD), solved to `rtol`."""
    v, w, d = problem()
    L = laplacian(N)

    def dense_A(s, d):
        return s * L + jnp.diag(0.01 + d)

    def ref(b, s, d):
        return jnp.linalg.solve(dense_A(s, d), b)

    def ours(rtol):
        def f(b, s, d):
            A = dense_A(s, d)
            sol = matfree.solve(
                lambda x: A @ x,
                b,
                method=method,
                rtol=rtol,
                maxiter=10 * N,
                gradient=gradient,
                throw=False,
            )
            return sol.value

        return f

    return _sweep(ref, ours, knobs, (v, 1.0, d), w)


def sweep_logdet(knobs, gradient):
    """log det A with A = s L + diag(1 + d), unit probes (no sampling error)."""
    _, _, d = problem()
    L = laplacian(N)

    def dense_A(s, d):
        return s * L + jnp.diag(1.0 + d)

    def ref(_, s, d):
        return jnp.linalg.slogdet(dense_A(s, d))[1]

    def ours(depth):
        def f(_, s, d):
            A = dense_A(s, d)
            est = matfree.logdet(
                lambda x: A @ x,
                jnp.zeros(N),
                key=None,
                depth=depth,
                num_probes=N,
                probes="unit",
                gradient=gradient,
                throw=False,
            )
            return est.value

        return f

    return _sweep(ref, ours, knobs, (jnp.zeros(N), 0.05, d), jnp.ones(()), vector=False)


def _sweep(ref, ours, knobs, args, w, vector=True):
    def loss(f):
        return lambda *a: jnp.vdot(w, f(*a))

    argnums = (0, 1, 2) if vector else (1, 2)
    value_ref = ref(*args)
    grad_ref = jax.grad(loss(ref), argnums=argnums)(*args)
    rows = []
    for knob in knobs:
        f = ours(knob)
        value = f(*args)
        grads = jax.grad(loss(f), argnums=argnums)(*args)
        rows.append(
            dict(
                knob=knob,
                value=relerr(value, value_ref),
                grad_vector=relerr(grads[0], grad_ref[0]) if vector else float("nan"),
                grad_params=relerr(grads[-2:], grad_ref[-2:]),
            )
        )
    return rows


def main():
    depths = [4, 6, 8, 12, 16, 20, 30, 40]
    rtols = [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12]
    paths = {
        "exp_action, symmetric": (lambda g: sweep_exp(True, depths, g), "depth"),
        "exp_action, non-symmetric": (lambda g: sweep_exp(False, depths, g), "depth"),
        "sqrt_action(inverse=True)": (lambda g: sweep_sqrt(depths, g), "depth"),
        "solve, cg": (lambda g: sweep_solve("cg", rtols, g), "rtol"),
        "solve, minres": (lambda g: sweep_solve("minres", rtols, g), "rtol"),
        "logdet (unit probes)": (lambda g: sweep_logdet(depths, g), "depth"),
    }
    results = {}
    for name, (run, knob) in paths.items():
        for gradient in ("adjoint", "autodiff"):
            print(f"{name}, gradient={gradient!r}", flush=True)
            results[name, gradient] = (knob, run(gradient))

    print()
    print(
        "| path | gradient | knob | value error | grad error (vector) | "
        "grad error (parameters) |"
    )
    print("|---|---|---|---|---|---|")
    for (name, gradient), (knob, rows) in results.items():
        for r in rows:
            gv = "—" if np.isnan(r["grad_vector"]) else f"{r['grad_vector']:.1e}"
            print(
                f"| {name} | {gradient} | {knob}={r['knob']:g} | {r['value']:.1e} | "
                f"{gv} | {r['grad_params']:.1e} |"
            )
    print()
    print("Worst ratio gradient error / value error where the value error > 1e-13:")
    for (name, gradient), (_, rows) in results.items():
        ratios = [
            max(r["grad_params"], 0 if np.isnan(r["grad_vector"]) else r["grad_vector"])
            / r["value"]
            for r in rows
            if r["value"] > 1e-13
        ]
        worst = max(ratios) if ratios else float("nan")
        print(f"- {name}, {gradient}: {worst:.2g}")
    print(
        f"\nMachine: {platform.machine()}, {platform.python_version()}, "
        f"jax {jax.__version__}, float64."
    )
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for name, _ in results))
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5), constrained_layout=True)
    for ax, name in zip(axes.flat, names, strict=False):
        for gradient, marker in (("adjoint", "o"), ("autodiff", "x")):
            _, rows = results[name, gradient]
            val = np.array([max(r["value"], 1e-17) for r in rows])
            gp = np.array([max(r["grad_params"], 1e-17) for r in rows])
            ax.loglog(val, gp, marker=marker, ls="-", label=f"{gradient}: d/d params")
            gv = np.array([r["grad_vector"] for r in rows])
            if not np.all(np.isnan(gv)):
                ax.loglog(
                    val,
                    np.maximum(gv, 1e-17),
                    marker=marker,
                    ls=":",
                    label=f"{gradient}: d/d vector",
                )
        lo, hi = 1e-16, 1e1
        ax.loglog([lo, hi], [lo, hi], color="gray", lw=0.8)
        ax.loglog([lo, hi], [10 * lo, 10 * hi], color="gray", lw=0.8, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, 1e3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("relative error of the value")
        ax.set_ylabel("relative error of the gradient")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Gradient error against value error (gray: equal, dashed: 10x)")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    print(f"saved {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
