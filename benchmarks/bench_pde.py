"""Benchmark `matfree.pde.solve` (Krylov exp-action) against diffrax on diffusion.

Usage: python benchmarks/bench_pde.py [--quick]

Problem: du/dt = div(k grad u) on the unit square, zero Dirichlet, 5-point
finite volumes (`matfree.pde.diffusion`), k a smooth random field in
[0.5, 2], u0 a sum of Gaussian bumps, final time T. Loss
L(k) = |u(T; k) - d|^2 / 2 for noisy data d.

Methods (all float64, same matvec):
- Krylov: `pde.solve` (Lanczos, adjoint VJP), depth D, S equal substeps.
- Dopri5 + BacksolveAdjoint (diffrax), PID controller, rtol = atol = tol.
- Tsit5 + RecursiveCheckpointAdjoint (diffrax), PID controller, rtol = atol = tol.

(a) Work-precision: forward error |u - u_ref| / |u_ref| and gradient error
    |dL/dk - g_ref| / |g_ref| against the number of forward matvecs and the
    seconds of one value-and-gradient evaluation. Reference: Krylov at depth
    80 with twice the S of the Hochbruck-Lubich bound at rtol 1e-14,
    cross-checked with scipy.sparse.linalg.expm_multiply (value) and Krylov at
    depth 60 (value and gradient).
(b) Inversion: Adam (lr 0.05) on theta = log k from k = 1 for a fixed number of
    steps with each method at the cheapest setting whose gradient error in (a)
    is below 1e-4; test loss (held-out initial condition), parameter RMSE
    (of log k) and seconds per step (median, compile excluded).

Writes benchmarks/results/pde.md and benchmarks/figures/pde.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as ssl  # noqa: E402

from matfree import pde  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _util  # noqa: E402

T = 0.005
DEPTH = 30
GRAD_TARGET = 1e-4
STAGES = 6  # new vector-field evaluations per Dopri5/Tsit5 step (FSAL)


def log(*args):
    print(*args, flush=True)


def scipy_matrix(k):
    """Sparse matrix of `pde.diffusion(k)`: -Dx^T Kx Dx / hx^2 - Dy^T Ky Dy / hy^2."""
    k = np.asarray(k)
    ny, nx = k.shape
    hy, hx = 1 / (ny + 1), 1 / (nx + 1)
    kx, ky = (np.asarray(a) for a in pde._operators.face_coefficients(jnp.asarray(k)))

    def diff(m):  # (m + 1, m): face f carries u_f - u_{f-1}
        return sp.diags([np.ones(m), -np.ones(m)], [0, -1], shape=(m + 1, m))

    Dx = sp.kron(sp.identity(ny), diff(nx))
    Dy = sp.kron(diff(ny), sp.identity(nx))
    A = (
        -(Dx.T @ sp.diags(kx.ravel()) @ Dx) / hx**2
        - (Dy.T @ sp.diags(ky.ravel()) @ Dy) / hy**2
    )
    return A.tocsr()


# ------------------------------------------------------------------ methods


def krylov(depth, substeps):
    def solve(k, u0):
        return pde.solve(k, u0, T, depth=depth, num_substeps=substeps)

    return solve, depth * substeps + 2


def diffrax_solver(name, tol):
    if name == "dopri5+backsolve":
        solver, adjoint = (
            diffrax.Dopri5(),
            diffrax.BacksolveAdjoint(solver=diffrax.Dopri5()),
        )
    else:
        solver, adjoint = diffrax.Tsit5(), diffrax.RecursiveCheckpointAdjoint()
    term = diffrax.ODETerm(lambda s, y, k: pde.diffusion(k)(y))

    def solve_with_stats(k, u0):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0=0.0,
            t1=T,
            dt0=None,
            y0=u0,
            args=k,
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            adjoint=adjoint,
            saveat=diffrax.SaveAt(t1=True),
            max_steps=50_000,
        )
        return sol.ys[0], sol.stats["num_steps"]

    return solve_with_stats


def value_and_grad_fn(solve_with_stats, data):
    """(k, u0) -> (u(T), dL/dk, steps) for L = |u - data|^2 / 2."""

    def fn(k, u0):
        u, vjp, steps = jax.vjp(lambda k: solve_with_stats(k, u0), k, has_aux=True)
        (g,) = vjp(u - data)
        return u, g, steps

    return fn


def no_stats(solve):
    return lambda k, u0: (solve(k, u0), jnp.int32(0))


def timed(fn, args, repeats):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = _util.block(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _util.block(compiled(*args))
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), compile_s, _util.peak_bytes(compiled)


def relerr(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# -------------------------------------------------------------- experiments


def setup(n):
    shape = (n, n)
    k_true = pde.random_field(jax.random.PRNGKey(0), shape, contrast=2.0)
    train = pde.bumps(shape, [(0.3, 0.3), (0.3, 0.7), (0.7, 0.5)], width=0.1).sum(0)
    test = pde.bumps(shape, [(0.5, 0.3), (0.6, 0.75)], width=0.12).sum(0)
    return shape, k_true, train, test


def reference(k, u0, data, n):
    """Deep Krylov reference (depth 80, twice the a-priori substeps), cross-checked."""
    s1 = 2 * pde.suggest_num_substeps(k, T, depth=60, rtol=1e-14)
    s2 = 2 * pde.suggest_num_substeps(k, T, depth=80, rtol=1e-14)
    u1, g1, _ = jax.jit(value_and_grad_fn(no_stats(krylov(60, s1)[0]), data))(k, u0)
    u2, g2, _ = jax.jit(value_and_grad_fn(no_stats(krylov(80, s2)[0]), data))(k, u0)
    u_sp = ssl.expm_multiply(T * scipy_matrix(k), np.asarray(u0).ravel()).reshape(n, n)
    checks = {
        f"krylov(80, {s2}) vs expm_multiply (value)": relerr(u2, jnp.asarray(u_sp)),
        f"krylov(80, {s2}) vs krylov(60, {s1}) (value)": relerr(u2, u1),
        f"krylov(80, {s2}) vs krylov(60, {s1}) (gradient)": relerr(g2, g1),
    }
    return u2, g2, checks


def work_precision(n, k, u0, data, u_ref, g_ref, substeps, tols, repeats):
    rows = []
    for s in substeps:
        solve, mv = krylov(DEPTH, s)
        (u, g, _), sec, comp, mem = timed(
            value_and_grad_fn(no_stats(solve), data), (k, u0), repeats
        )
        rows.append(
            (
                "krylov",
                f"D={DEPTH},S={s}",
                mv,
                relerr(u, u_ref),
                relerr(g, g_ref),
                sec,
                comp,
                mem,
            )
        )
        log(f"  n={n} {rows[-1][:6]}")
    for name in ("dopri5+backsolve", "tsit5+checkpoint"):
        for tol in tols:
            sws = diffrax_solver(name, tol)
            (u, g, steps), sec, comp, mem = timed(
                value_and_grad_fn(sws, data), (k, u0), repeats
            )
            steps = int(steps)
            mv = STAGES * steps + 1
            rows.append(
                (
                    name,
                    f"tol={tol:.0e}",
                    mv,
                    relerr(u, u_ref),
                    relerr(g, g_ref),
                    sec,
                    comp,
                    mem,
                )
            )
            log(f"  n={n} {rows[-1][:6]}")
    return rows


def pick(rows, method):
    mine = [r for r in rows if r[0] == method]
    ok = [r for r in mine if r[4] <= GRAD_TARGET]
    return min(ok, key=lambda r: r[5]) if ok else min(mine, key=lambda r: r[4])


def inversion(n, shape, k_true, train, test, chosen, num_steps):
    data_solve = krylov(60, pde.suggest_num_substeps(k_true, T, depth=60, rtol=1e-14))[0]
    noise = 0.01
    clean = jax.jit(data_solve)(k_true, train)
    data = pde.add_noise(jax.random.PRNGKey(1), clean, relative=noise)
    test_data = jax.jit(data_solve)(k_true, test)
    out = []
    for method, setting, solve in chosen:

        def loss(theta, solve=solve):
            u = solve(jnp.exp(theta), train)
            return jnp.sum((u - data) ** 2) / jnp.sum(data**2)

        opt = optax.adam(0.05)

        @jax.jit
        def step(theta, state, loss=loss, opt=opt):
            value, grad = jax.value_and_grad(loss)(theta)
            updates, state = opt.update(grad, state, theta)
            return optax.apply_updates(theta, updates), state, value

        theta = jnp.zeros(shape)
        state = opt.init(theta)
        secs, losses = [], []
        for _ in range(num_steps):
            t0 = time.perf_counter()
            theta, state, value = _util.block(step(theta, state))
            secs.append(time.perf_counter() - t0)
            losses.append(float(value))
        test_loss = float(
            jnp.sum((jax.jit(solve)(jnp.exp(theta), test) - test_data) ** 2)
            / jnp.sum(test_data**2)
        )
        rmse = float(jnp.sqrt(jnp.mean((theta - jnp.log(k_true)) ** 2)))
        per_step = statistics.median(secs[1:])
        out.append(
            (method, setting, losses[-1], test_loss, rmse, per_step, secs[0] - per_step)
        )
        log(f"  n={n} inversion {out[-1]}")
    rmse0 = float(jnp.sqrt(jnp.mean(jnp.log(k_true) ** 2)))
    return out, rmse0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        grids, substeps, tols, repeats, num_steps = (12,), {12: [1]}, [1e-6], 1, 3
    else:
        grids = (64, 128)
        substeps = {64: [1, 2, 4, 8], 128: [2, 4, 8, 16]}
        tols, repeats, num_steps = [1e-4, 1e-6, 1e-8], 3, 20
    log(_util.machine())
    results = {}
    for n in grids:
        shape, k_true, train, test = setup(n)
        log(
            f"grid {n}x{n}: |A| <= {float(pde.spectral_bound(k_true)):.3g}, T|A| <= {T * float(pde.spectral_bound(k_true)):.3g}"
        )
        data = pde.add_noise(jax.random.PRNGKey(2), train, relative=0.1)
        k_eval = jnp.sqrt(k_true)  # an intermediate iterate, not the truth
        u_ref, g_ref, checks = reference(k_eval, train, data, n)
        log(f"  reference checks: {checks}")
        rows = work_precision(
            n, k_eval, train, data, u_ref, g_ref, substeps[n], tols, repeats
        )
        chosen = []
        for method in ("krylov", "dopri5+backsolve", "tsit5+checkpoint"):
            r = pick(rows, method)
            if method == "krylov":
                s = int(r[1].split("S=")[1])
                solve = krylov(DEPTH, s)[0]
            else:
                sws = diffrax_solver(method, float(r[1].split("=")[1]))
                solve = lambda k, u0, sws=sws: sws(k, u0)[0]  # noqa: E731
            chosen.append((method, r[1], solve))
        inv, rmse0 = inversion(n, shape, k_true, train, test, chosen, num_steps)
        results[n] = (rows, checks, inv, rmse0)
    write(results, args.quick, num_steps)


def write(results, quick, num_steps):
    fig, axes = plt.subplots(
        2, len(results), figsize=(5.5 * len(results), 8), squeeze=False
    )
    colors = {"krylov": "C0", "dopri5+backsolve": "C1", "tsit5+checkpoint": "C2"}
    for j, (n, (rows, _, _, _)) in enumerate(results.items()):
        for method, c in colors.items():
            mine = [r for r in rows if r[0] == method]
            mv = [r[2] for r in mine]
            axes[0, j].loglog(
                mv, [max(r[3], 1e-17) for r in mine], "o-", color=c, label=f"{method} value"
            )
            axes[0, j].loglog(
                mv, [max(r[4], 1e-17) for r in mine], "s--", color=c, label=f"{method} grad"
            )
            axes[1, j].loglog(
                [r[5] for r in mine],
                [max(r[4], 1e-17) for r in mine],
                "s--",
                color=c,
                label=method,
            )
        axes[0, j].set(
            title=f"{n}x{n}: error vs forward matvecs",
            xlabel="forward matvecs",
            ylabel="relative error",
        )
        axes[1, j].set(
            title=f"{n}x{n}: gradient error vs time",
            xlabel="seconds per value+gradient",
            ylabel="relative gradient error",
        )
        axes[0, j].legend(fontsize=7)
        axes[1, j].legend(fontsize=7)
    fig.tight_layout()
    name = "pde_quick" if quick else "pde"
    fig.savefig(_util.figure_path(name), dpi=110)

    lines = [
        f"# PDE coefficient inversion: Krylov exp-action vs diffrax{' (quick)' if quick else ''}",
        "",
    ]
    lines += [
        f"Machine: {_util.machine()}; diffrax {diffrax.__version__}; optax {optax.__version__}.",
        "",
    ]
    lines += [
        f"du/dt = div(k grad u), unit square, zero Dirichlet, T = {T}, k in [0.5, 2] "
        "(evaluated at sqrt(k_true) for (a)), float64. Timings are medians after a "
        "warm-up on a shared 2-core CPU (provisional). Matvecs: forward pass only "
        f"(Krylov: depth x substeps + 2 symmetry check; diffrax: {STAGES} x steps + 1).",
        "",
    ]
    for n, (rows, checks, inv, rmse0) in results.items():
        lines += [
            f"## {n}x{n} grid",
            "",
            "Reference cross-checks (relative differences):",
            "",
        ]
        lines += [f"- {k}: {v:.1e}" for k, v in checks.items()]
        lines += ["", "### (a) Work-precision (value + gradient w.r.t. k)", ""]
        lines += [
            "| method | setting | fwd matvecs | value err | grad err | s / (value+grad) | compile s | peak memory |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1e} | {r[4]:.1e} | {r[5]:.4f} | {r[6]:.1f} | {_util.fmt_bytes(r[7])} |"
            )
        lines += [
            "",
            f"### (b) Inversion, {num_steps} Adam steps from k = 1 (RMSE of log k at start: {rmse0:.3f})",
            "",
        ]
        lines += [
            f"Each method at its cheapest setting with gradient error <= {GRAD_TARGET:.0e} in (a) (else its most accurate).",
            "",
        ]
        lines += [
            "| method | setting | train loss | test loss | RMSE log k | s / step | ratio to Krylov | compile s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = inv[0][5]
        for r in inv:
            lines.append(
                f"| {r[0]} | {r[1]} | {r[2]:.3e} | {r[3]:.3e} | {r[4]:.4f} | {r[5]:.4f} | {r[5] / base:.2f} | {r[6]:.1f} |"
            )
        lines.append("")
    path = _util.write_section("pde_quick" if quick else "pde", "\n".join(lines))
    log(f"wrote {path} and {_util.figure_path(name)}")


if __name__ == "__main__":
    main()
