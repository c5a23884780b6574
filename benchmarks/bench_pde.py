"""Benchmark `matfree.pde.solve` (Krylov exp-action) against diffrax on diffusion.

Usage: python benchmarks/bench_pde.py [--quick] [--grids 64 128]

Problem: du/dt = div(k grad u) on the unit square, zero Dirichlet, 5-point
finite volumes (`matfree.pde.diffusion`), k a smooth random field in
[0.5, 2], u0 a sum of Gaussian bumps, final time T. Loss
L(k) = |u(T; k) - d|^2 / 2 for noisy data d (10% noise: a rough cotangent).

Methods (all float64, same matvec):
- Krylov: `pde.solve` (Lanczos; gradients by the two-sided rule of
  `matfree.exp_action`), depth D, S equal substeps.
- Dopri5 + BacksolveAdjoint (diffrax), PID controller, rtol = atol = tol.
- Tsit5 + RecursiveCheckpointAdjoint (diffrax), PID controller, rtol = atol = tol.
A configuration that raises (e.g. `max_steps` reached) or returns non-finite
values is recorded as a "failed: <reason>" row; the run goes on.

(a) Work-precision: forward error |u - u_ref| / |u_ref|, gradient error
    |dL/dk - g_ref| / |g_ref| and directional-derivative error
    |<dL/dk, e> - D_fd| / |D_fd| against the number of forward matvecs and the
    seconds of one value-and-gradient evaluation.
    Value reference: Krylov at depth 80 with twice the substeps of the
    Hochbruck-Lubich bound at rtol 1e-14, cross-checked with
    scipy.sparse.linalg.expm_multiply and Krylov at depth 60.
    Gradient references: (i) D_fd, a central finite difference of that
    converged value along a fixed random direction e, Richardson-extrapolated
    (h = 1e-3, 5e-4, 2.5e-4; the spread of two extrapolations is its error
    estimate); (ii) g_ref, the Krylov gradient of the value reference, checked
    against D_fd and against the depth-60 gradient.
(b) Inversion: Adam (lr 0.05) on theta = log k from k = 1 for a fixed number of
    steps with each method at the cheapest setting whose gradient errors in (a)
    are below 1e-4; test loss (held-out initial condition), parameter RMSE
    (of log k) and seconds per step (median, compile excluded).
(c) Memory: XLA's compiled-memory estimate of the Krylov value+gradient
    against depth (one substep): linear in n * depth.

Writes benchmarks/results/pde.md and benchmarks/figures/pde.png
(`--quick`: pde_quick.md / pde_quick.png).
"""

from __future__ import annotations

import argparse
import math
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
import matplotlib.ticker  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _util  # noqa: E402

T = 0.005
DEPTH = 30
GRAD_TARGET = 1e-4
STAGES = 6  # new vector-field evaluations per Dopri5/Tsit5 step (FSAL)
MAX_STEPS = 4096  # diffrax; > 10x the steps Tsit5 needs on 128x128
FD_STEPS = (1e-3, 5e-4, 2.5e-4)
FD_CHECK = (
    "finite-difference directional derivative D_fd: spread of two "
    "Richardson extrapolations (its error estimate)"
)
METHODS = ("krylov", "dopri5+backsolve", "tsit5+checkpoint")


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
        return pde.solve(k, u0, T, depth=depth, num_substeps=substeps).value

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
            max_steps=MAX_STEPS,
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


def reason(exc):
    """One short line naming why a configuration failed."""
    text = " ".join(str(exc).split())
    for marker in ("maximum number of solver steps", "max_steps", "non-finite"):
        i = text.find(marker)
        if i >= 0:
            return text[i : i + 90].split(" ---")[0].rstrip(" .")
    return f"{type(exc).__name__}: {text[:90]}"


# -------------------------------------------------------------- experiments


def setup(n):
    shape = (n, n)
    k_true = pde.random_field(jax.random.PRNGKey(0), shape, contrast=2.0)
    train = pde.bumps(shape, [(0.3, 0.3), (0.3, 0.7), (0.7, 0.5)], width=0.1).sum(0)
    test = pde.bumps(shape, [(0.5, 0.3), (0.6, 0.75)], width=0.12).sum(0)
    return shape, k_true, train, test


def reference(k, u0, data, direction, n):
    """Deep Krylov value/gradient, cross-checked; finite-difference directional derivative."""
    s1 = 2 * pde.suggest_num_substeps(k, T, depth=60, rtol=1e-14)
    s2 = 2 * pde.suggest_num_substeps(k, T, depth=80, rtol=1e-14)
    u1, g1, _ = jax.jit(value_and_grad_fn(no_stats(krylov(60, s1)[0]), data))(k, u0)
    u2, g2, _ = jax.jit(value_and_grad_fn(no_stats(krylov(80, s2)[0]), data))(k, u0)
    u_sp = ssl.expm_multiply(T * scipy_matrix(k), np.asarray(u0).ravel()).reshape(n, n)

    solve_ref = krylov(80, s2)[0]
    loss = jax.jit(lambda k: jnp.sum((solve_ref(k, u0) - data) ** 2) / 2)
    fd = [
        float((loss(k + h * direction) - loss(k - h * direction)) / (2 * h))
        for h in FD_STEPS
    ]
    rich = [(4 * fd[i + 1] - fd[i]) / 3 for i in range(len(fd) - 1)]
    dd_fd = rich[-1]
    fd_err = abs(rich[-1] - rich[-2]) / abs(dd_fd)
    dd_ref = float(jnp.vdot(g2, direction))
    checks = {
        f"krylov(80, {s2}) vs expm_multiply (value)": relerr(u2, jnp.asarray(u_sp)),
        f"krylov(80, {s2}) vs krylov(60, {s1}) (value)": relerr(u2, u1),
        f"krylov(80, {s2}) vs krylov(60, {s1}) (gradient)": relerr(g2, g1),
        FD_CHECK: fd_err,
        f"krylov(80, {s2}) directional derivative vs D_fd": abs(dd_ref - dd_fd)
        / abs(dd_fd),
        f"krylov(60, {s1}) directional derivative vs D_fd": abs(
            float(jnp.vdot(g1, direction)) - dd_fd
        )
        / abs(dd_fd),
    }
    return u2, g2, dd_fd, checks


def row(method, setting, **kw):
    r = dict(method=method, setting=setting, failed=None)
    r.update(kw)
    return r


def run_config(method, setting, fn, args, repeats, refs, count_mv):
    u_ref, g_ref, dd_fd, direction = refs
    try:
        (u, g, steps), sec, comp, mem = timed(fn, args, repeats)
        if not (bool(jnp.all(jnp.isfinite(u))) and bool(jnp.all(jnp.isfinite(g)))):
            msg = "non-finite value or gradient"
            raise FloatingPointError(msg)
    except Exception as exc:  # noqa: BLE001 - record any solver failure and go on
        return row(method, setting, failed=reason(exc))
    dd = float(jnp.vdot(g, direction))
    return row(
        method,
        setting,
        matvecs=count_mv(int(steps)),
        value_err=relerr(u, u_ref),
        grad_err=relerr(g, g_ref),
        dd_err=abs(dd - dd_fd) / abs(dd_fd),
        sec=sec,
        compile_s=comp,
        mem=mem,
    )


def work_precision(n, k, u0, data, refs, substeps, tols, repeats):
    rows = []
    for s in substeps:
        solve, mv = krylov(DEPTH, s)
        fn = value_and_grad_fn(no_stats(solve), data)
        rows.append(
            run_config(
                "krylov", f"D={DEPTH},S={s}", fn, (k, u0), repeats, refs, lambda _, m=mv: m
            )
        )
        log(f"  n={n} {describe(rows[-1])}")
    for name in METHODS[1:]:
        for tol in tols:
            fn = value_and_grad_fn(diffrax_solver(name, tol), data)
            rows.append(
                run_config(
                    name,
                    f"tol={tol:.0e}",
                    fn,
                    (k, u0),
                    repeats,
                    refs,
                    lambda steps: STAGES * steps + 1,
                )
            )
            log(f"  n={n} {describe(rows[-1])}")
    return rows


def describe(r):
    if r["failed"]:
        return f"{r['method']} {r['setting']}: failed: {r['failed']}"
    return (
        f"{r['method']} {r['setting']}: mv={r['matvecs']} value={r['value_err']:.1e} "
        f"grad={r['grad_err']:.1e} dd={r['dd_err']:.1e} s={r['sec']:.3f} "
        f"compile={r['compile_s']:.1f}"
    )


def pick(rows, method):
    mine = [r for r in rows if r["method"] == method and not r["failed"]]
    if not mine:
        return None
    worst = lambda r: max(r["grad_err"], r["dd_err"])  # noqa: E731
    ok = [r for r in mine if worst(r) <= GRAD_TARGET]
    return min(ok, key=lambda r: r["sec"]) if ok else min(mine, key=worst)


def inversion(n, shape, k_true, train, test, chosen, num_steps):
    data_solve = krylov(60, pde.suggest_num_substeps(k_true, T, depth=60, rtol=1e-14))[0]
    noise = 0.01
    clean = jax.jit(data_solve)(k_true, train)
    data = pde.add_noise(jax.random.PRNGKey(1), clean, relative=noise)
    test_data = jax.jit(data_solve)(k_true, test)
    out = []
    for method, setting, solve in chosen:
        if solve is None:
            out.append(
                dict(method=method, setting=setting, failed="no usable setting in (a)")
            )
            log(f"  n={n} inversion {method}: skipped (all settings failed in (a))")
            continue

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
        try:
            for _ in range(num_steps):
                t0 = time.perf_counter()
                theta, state, value = _util.block(step(theta, state))
                secs.append(time.perf_counter() - t0)
                losses.append(float(value))
                if not math.isfinite(losses[-1]):
                    msg = f"non-finite loss at step {len(losses)}"
                    raise FloatingPointError(msg)
            test_loss = float(
                jnp.sum((jax.jit(solve)(jnp.exp(theta), test) - test_data) ** 2)
                / jnp.sum(test_data**2)
            )
        except Exception as exc:  # noqa: BLE001 - record and go on
            out.append(dict(method=method, setting=setting, failed=reason(exc)))
            log(f"  n={n} inversion {method}: failed: {out[-1]['failed']}")
            continue
        rmse = float(jnp.sqrt(jnp.mean((theta - jnp.log(k_true)) ** 2)))
        per_step = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
        out.append(
            dict(
                method=method,
                setting=setting,
                failed=None,
                train=losses[-1],
                test=test_loss,
                rmse=rmse,
                per_step=per_step,
                compile_s=secs[0] - per_step,
            )
        )
        log(f"  n={n} inversion {out[-1]}")
    rmse0 = float(jnp.sqrt(jnp.mean(jnp.log(k_true) ** 2)))
    return out, rmse0


def memory_sweep(n, k, u0, data, depths):
    """XLA compiled-memory estimate of the Krylov value+gradient vs depth (S = 1)."""
    out = []
    for depth in depths:
        fn = value_and_grad_fn(no_stats(krylov(depth, 1)[0]), data)
        compiled, comp = _util.compile_jit(fn, k, u0)
        mem = _util.peak_bytes(compiled)
        out.append((depth, mem, comp))
        log(f"  n={n} memory depth={depth}: {_util.fmt_bytes(mem)} (compile {comp:.1f} s)")
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--grids", type=int, nargs="+", default=None)
    args = parser.parse_args()
    if args.quick:
        grids, tols, repeats, num_steps = (12,), [1e-6], 1, 3
        substeps = {12: [1]}
        depths = [5, 10]
    else:
        grids = (64, 128)
        substeps = {64: [1, 2, 4, 8], 128: [2, 4, 8, 16]}
        tols, repeats, num_steps = [1e-4, 1e-6, 1e-8], 3, 20
        depths = [10, 20, 40, 80]
    if args.grids:
        grids = tuple(args.grids)
    log(_util.machine())
    t_start = time.perf_counter()
    results = {}
    for n in grids:
        t_grid = time.perf_counter()
        shape, k_true, train, test = setup(n)
        bound = float(pde.spectral_bound(k_true))
        log(f"grid {n}x{n}: |A| <= {bound:.3g}, T|A| <= {T * bound:.3g}")
        data = pde.add_noise(jax.random.PRNGKey(2), train, relative=0.1)
        k_eval = jnp.sqrt(k_true)  # an intermediate iterate, not the truth
        direction = jax.random.normal(jax.random.PRNGKey(3), shape)
        u_ref, g_ref, dd_fd, checks = reference(k_eval, train, data, direction, n)
        for key, value in checks.items():
            log(f"  check: {key}: {value:.1e}")
        refs = (u_ref, g_ref, dd_fd, direction)
        rows = work_precision(
            n, k_eval, train, data, refs, substeps.get(n, [1, 2, 4, 8]), tols, repeats
        )
        chosen = []
        for method in METHODS:
            r = pick(rows, method)
            if r is None:
                chosen.append((method, "-", None))
            elif method == "krylov":
                s = int(r["setting"].split("S=")[1])
                chosen.append((method, r["setting"], krylov(DEPTH, s)[0]))
            else:
                sws = diffrax_solver(method, float(r["setting"].split("=")[1]))
                solve = lambda k, u0, sws=sws: sws(k, u0)[0]  # noqa: E731
                chosen.append((method, r["setting"], solve))
        inv, rmse0 = inversion(n, shape, k_true, train, test, chosen, num_steps)
        mem = memory_sweep(n, k_eval, train, data, depths)
        seconds = time.perf_counter() - t_grid
        log(f"grid {n}x{n} done in {seconds:.0f} s")
        results[n] = dict(
            rows=rows,
            checks=checks,
            inv=inv,
            rmse0=rmse0,
            mem=mem,
            dd_fd=dd_fd,
            bound=bound,
            seconds=seconds,
        )
        # after every grid, so a run stopped later keeps the finished grids
        write(results, args.quick, num_steps, time.perf_counter() - t_start)


CLIP = 1e3  # errors above this are drawn at this value

COLORS = {"krylov": "C0", "dopri5+backsolve": "C1", "tsit5+checkpoint": "C2"}


def plot(results, name):
    fig, axes = plt.subplots(
        3, len(results), figsize=(5.5 * len(results), 11.5), squeeze=False
    )
    for j, (n, res) in enumerate(results.items()):
        rows = res["rows"]
        for method, c in COLORS.items():
            mine = [r for r in rows if r["method"] == method and not r["failed"]]
            if not mine:
                continue
            mv = [r["matvecs"] for r in mine]
            clip = lambda x: min(max(x, 1e-17), CLIP)  # noqa: E731
            axes[0, j].loglog(
                mv,
                [clip(r["value_err"]) for r in mine],
                "o-",
                color=c,
                label=f"{method} value",
            )
            axes[0, j].loglog(
                mv,
                [clip(r["dd_err"]) for r in mine],
                "s--",
                color=c,
                label=f"{method} dir. derivative",
            )
            axes[1, j].loglog(
                [r["sec"] for r in mine],
                [clip(r["dd_err"]) for r in mine],
                "s--",
                color=c,
                label=method,
            )
        for ax in axes[:2, j]:
            ax.axhline(
                res["checks"][FD_CHECK],
                color="0.5",
                lw=0.8,
                ls=":",
                label="FD error estimate",
            )
            ax.set_ylim(top=CLIP * 10)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        failed = sorted({r["method"] for r in rows if r["failed"]})
        axes[0, j].set(
            title=f"{n}x{n}: error vs forward matvecs"
            + (f"\n(failed rows not shown: {', '.join(failed)})" if failed else ""),
            xlabel="forward matvecs",
            ylabel=f"relative error (values > {CLIP:.0e} drawn at {CLIP:.0e})",
        )
        axes[1, j].set(
            title=f"{n}x{n}: gradient error vs time (provisional)",
            xlabel="seconds per value+gradient",
            ylabel="rel. error of directional derivative vs FD",
        )
        depth = [d for d, m, _ in res["mem"] if m is not None]
        mem = [m / 2**20 for _, m, _ in res["mem"] if m is not None]
        axes[2, j].plot(depth, mem, "o-", color="C0", label="Krylov value+grad (S=1)")
        axes[2, j].set(
            title=f"{n}x{n}: XLA compiled-memory estimate",
            xlabel="depth",
            ylabel="MiB",
            xlim=(0, None),
            ylim=(0, None),
        )
        for ax in axes[:, j]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(_util.figure_path(name), dpi=110)
    plt.close(fig)


def write(results, quick, num_steps, total_seconds):
    name = "pde_quick" if quick else "pde"
    plot(results, name)
    lines = [
        "# PDE coefficient inversion: Krylov exp-action vs diffrax"
        + (" (quick)" if quick else ""),
        "",
        f"Machine: {_util.machine()}; diffrax {diffrax.__version__}; "
        f"optax {optax.__version__}.",
        "",
        f"Generated by `benchmarks/bench_pde.py{' --quick' if quick else ''}` "
        f"(whole run {total_seconds:.0f} s). du/dt = div(k grad u), unit square, "
        f"zero Dirichlet, T = {T}, k in [0.5, 2] (evaluated at sqrt(k_true) for "
        "(a)), float64. Timings are medians after a warm-up on a shared 2-core "
        "CPU and are provisional. Matvecs: forward pass only (Krylov: depth x "
        f"substeps + 2 symmetry check; diffrax: {STAGES} x steps + 1). Krylov "
        "gradients use the two-sided rule of `matfree.exp_action` (a second "
        f"Lanczos run on the cotangent). diffrax: `max_steps={MAX_STEPS}`; a "
        "configuration that raises or returns non-finite numbers is a "
        '"failed" row.',
        "",
        "Errors: *value err* = |u - u_ref| / |u_ref|; *grad err* = "
        "|g - g_ref| / |g_ref| with g_ref the Krylov gradient of the reference; "
        "*dir. deriv. err* = |<g, e> - D_fd| / |D_fd| for a fixed random "
        "direction e and D_fd a Richardson-extrapolated central finite "
        "difference of the converged value (independent of any gradient code; "
        "its own error estimate is listed with the checks, and is the floor of "
        "that column).",
        "",
    ]
    for n, res in results.items():
        lines += [
            f"## {n}x{n} grid (T |A| <= {T * res['bound']:.0f}; {res['seconds']:.0f} s)",
            "",
            f"Reference cross-checks (relative differences; D_fd = {res['dd_fd']:.10g}):",
            "",
        ]
        lines += [f"- {k}: {v:.1e}" for k, v in res["checks"].items()]
        lines += [
            "",
            "### (a) Work-precision (value + gradient w.r.t. k)",
            "",
            "| method | setting | fwd matvecs | value err | grad err | dir. deriv. err "
            "| s / (value+grad) | compile s | XLA memory |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            if r["failed"]:
                lines.append(
                    f"| {r['method']} | {r['setting']} | failed: {r['failed']} "
                    "| | | | | | |"
                )
                continue
            lines.append(
                f"| {r['method']} | {r['setting']} | {r['matvecs']} | "
                f"{r['value_err']:.1e} | {r['grad_err']:.1e} | {r['dd_err']:.1e} | "
                f"{r['sec']:.4f} | {r['compile_s']:.1f} | {_util.fmt_bytes(r['mem'])} |"
            )
        lines += [
            "",
            f"### (b) Inversion, {num_steps} Adam steps from k = 1, 1% noise "
            f"(RMSE of log k at start: {res['rmse0']:.3f})",
            "",
            f"Each method at its cheapest setting with grad err and dir. deriv. err "
            f"<= {GRAD_TARGET:.0e} in (a) (else its most accurate one).",
            "",
            "| method | setting | train loss | test loss | RMSE log k | s / step "
            "| ratio to Krylov | compile s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        ok = [r for r in res["inv"] if not r["failed"]]
        base = next((r["per_step"] for r in ok if r["method"] == "krylov"), None)
        for r in res["inv"]:
            if r["failed"]:
                lines.append(
                    f"| {r['method']} | {r['setting']} | failed: {r['failed']} | | | | | |"
                )
                continue
            ratio = f"{r['per_step'] / base:.2f}" if base else "n/a"
            lines.append(
                f"| {r['method']} | {r['setting']} | {r['train']:.3e} | {r['test']:.3e} "
                f"| {r['rmse']:.4f} | {r['per_step']:.4f} | {ratio} | {r['compile_s']:.1f} |"
            )
        lines += [
            "",
            "### (c) Krylov memory: XLA compiled-memory estimate of value + gradient "
            "(one substep)",
            "",
            "| depth | XLA memory | bytes / (8 n depth), n = grid points |",
            "|---|---|---|",
        ]
        for depth, mem, _ in res["mem"]:
            per = f"{mem / (8 * n * n * depth):.1f}" if mem is not None else "n/a"
            lines.append(f"| {depth} | {_util.fmt_bytes(mem)} | {per} |")
        lines.append("")
    lines += [f"Figure: `benchmarks/figures/{name}.png`.", ""]
    path = _util.write_section(name, "\n".join(lines))
    log(f"wrote {path} and {_util.figure_path(name)}")


if __name__ == "__main__":
    main()
