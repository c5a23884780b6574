"""Benchmark `matfree.solve` against jax.scipy, lineax and scipy on the same problems.

Usage: python benchmarks/bench_solvers.py [--quick] [--poisson] [--reps N] [--interleave R]

`--poisson`: only the 2-D Poisson rows at n = 10^4 and 99,856 (CG and MINRES
against jax.scipy, lineax and scipy), written to
benchmarks/results/solvers_poisson.md; `--reps`: timed runs per row
(default 3, 2 with `--quick`); `--interleave R`: only CG against jax.scipy's
CG at n = 10^4, called in turn R times (see `interleaved`).

Problems (float64, rtol = 1e-6 relative to |b| in the 2-norm, atol = 0 everywhere):
2-D Poisson (CG, MINRES), RBF kernel + noise 1e-2 (CG, pivoted-Cholesky CG),
a non-symmetric convection-diffusion operator (GMRES(30), BiCGStab, GCR) and a
sparse least-squares problem (LSQR / LSMR). Run time: median of repeated runs
after a warm-up; compile time: first call minus the median. Writes
benchmarks/results/solvers.md and benchmarks/figures/solvers.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib

jax.config.update("jax_enable_x64", True)

import jax.scipy.sparse.linalg as jsl  # noqa: E402
import lineax as lx  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as ssl  # noqa: E402
from jax.experimental import sparse as jsparse  # noqa: E402

import matfree  # noqa: E402
from matfree import operators, precond  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RTOL = 1e-6
HERE = os.path.dirname(os.path.abspath(__file__))
# (problem, n, solver, iters, (run wall, run cpu), compile_s, (grad wall, grad cpu) or
# None, rel_res)
ROWS = []
SKIPPED = []  # lines for the results text


class Timing(float):
    """A median wall time (the float) that also carries the median CPU time."""

    cpu: float


def timeit(fn, reps):
    """Return `(out, median wall time with .cpu, compile time)`.

    CPU time (`time.process_time`, all threads of this process) is less
    affected than wall time by other jobs on the shared machine.
    """
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    med = Timing(statistics.median(times))
    med.cpu = statistics.median(cpus)
    return out, med, max(first - med, 0.0)


def record(problem, n, name, iters, run, comp, grad, relres):
    ROWS.append((problem, n, name, iters, run, comp, grad, relres))
    g = "" if grad is None else f" grad {grad:.3f}s (cpu {grad.cpu:.3f}s)"
    print(
        f"  {problem:>14} n={n:<8} {name:<22} iters={iters!s:<6} "
        f"run {run:.4f}s (cpu {run.cpu:.4f}s) compile {comp:.2f}s{g} "
        f"relres {relres:.1e}",
        flush=True,
    )


def relres(mv, x, b):
    return float(jnp.linalg.norm(b - mv(x)) / jnp.linalg.norm(b))


def jax_problem(problem, n, mv, b, reps, *, methods, peers, grad_param=None, maxiter):
    """Time matfree methods and JAX peers on `mv` (closing over nothing).

    A method's options may carry `tag` (a label) and `nograd=True`.
    """
    for method, kw0 in methods:
        kw = {k: v for k, v in kw0.items() if k not in ("tag", "nograd")}
        f = jax.jit(
            lambda b, method=method, kw=kw: matfree.solve(
                mv, b, method=method, rtol=RTOL, maxiter=maxiter, throw=False, **kw
            )
        )
        sol, run, comp = timeit(lambda f=f: f(b), reps)
        grad = None
        if grad_param is not None and not kw0.get("nograd"):
            make, p0 = grad_param

            def loss(p, b, method=method, kw=kw, make=make):
                return jnp.sum(
                    matfree.solve(
                        make(p),
                        b,
                        method=method,
                        rtol=RTOL,
                        maxiter=maxiter,
                        throw=False,
                        **kw,
                    ).value
                )

            g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            _, grad, _ = timeit(lambda g=g, p0=p0: g(p0, b), reps)
        name = "matfree " + method + (" +" + kw0["tag"] if "tag" in kw0 else "")
        record(
            problem, n, name, int(sol.num_steps), run, comp, grad, relres(mv, sol.value, b)
        )
    for name, solver_fn, grad_ok in peers:
        f = jax.jit(lambda b, solver_fn=solver_fn: solver_fn(mv, b))
        (x, iters), run, comp = timeit(lambda f=f: f(b), reps)
        grad = None
        if grad_param is not None and grad_ok:
            make, p0 = grad_param

            def loss(p, b, solver_fn=solver_fn, make=make):
                return jnp.sum(solver_fn(make(p), b)[0])

            g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            try:
                _, grad, _ = timeit(lambda g=g, p0=p0: g(p0, b), reps)
            except Exception as err:  # noqa: BLE001
                print(f"    ({name}: gradient failed: {type(err).__name__})")
        it = "n/a" if iters is None else int(iters)
        record(problem, n, name, it, run, comp, grad, relres(mv, x, b))


def jsp(kind, maxiter, restart=30):
    def run(mv, b):
        if kind == "cg":
            x, _ = jsl.cg(mv, b, tol=RTOL, atol=0.0, maxiter=maxiter)
        elif kind == "bicgstab":
            x, _ = jsl.bicgstab(mv, b, tol=RTOL, atol=0.0, maxiter=maxiter)
        else:
            x, _ = jsl.gmres(
                mv, b, tol=RTOL, atol=0.0, restart=restart, maxiter=maxiter // restart + 1
            )
        return x, None

    return run


def lineax(kind, maxiter, restart=30):
    def run(mv, b):
        like = jax.ShapeDtypeStruct(b.shape, b.dtype)
        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag) if kind == "cg" else ()
        op = lx.FunctionLinearOperator(mv, like, tags=tags)
        solver = {
            "cg": lx.CG(rtol=RTOL, atol=0.0, norm=lx.internal.two_norm, max_steps=maxiter),
            "bicgstab": lx.BiCGStab(
                rtol=RTOL, atol=0.0, norm=lx.internal.two_norm, max_steps=maxiter
            ),
            "gmres": lx.GMRES(
                rtol=RTOL,
                atol=0.0,
                norm=lx.internal.two_norm,
                max_steps=maxiter,
                restart=restart,
            ),
        }[kind]
        sol = lx.linear_solve(op, b, solver, throw=False)
        return sol.value, sol.stats["num_steps"]

    return run


def scipy_solve(problem, n, A, b, reps, kinds, maxiter):
    b = np.asarray(b)
    for kind in kinds:
        count = [0]

        def cb(*_, count=count):
            count[0] += 1

        def run(kind=kind, cb=cb, count=count):
            count[0] = 0
            if kind == "cg":
                return ssl.cg(A, b, rtol=RTOL, atol=0.0, maxiter=maxiter, callback=cb)[0]
            if kind == "minres":
                return ssl.minres(A, b, rtol=RTOL, maxiter=maxiter, callback=cb)[0]
            if kind == "bicgstab":
                return ssl.bicgstab(
                    A, b, rtol=RTOL, atol=0.0, maxiter=maxiter, callback=cb
                )[0]
            if kind == "gmres":
                return ssl.gmres(
                    A,
                    b,
                    rtol=RTOL,
                    atol=0.0,
                    restart=30,
                    maxiter=maxiter // 30 + 1,
                    callback=cb,
                    callback_type="pr_norm",
                )[0]
            return ssl.lsqr(A, b, atol=RTOL, btol=RTOL, iter_lim=maxiter)[0:3:2]

        times, cpus = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            out = run()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        med = Timing(statistics.median(times))
        med.cpu = statistics.median(cpus)
        if kind == "lsqr":
            x, iters = out
        else:
            x, iters = out, count[0]
        res = np.linalg.norm(b - A @ x) / np.linalg.norm(b)
        record(problem, n, "scipy " + kind, iters, med, 0.0, None, res)


def poisson(side, reps, quick, *, large=False):
    """2-D Poisson; `large`: CG only, no gradients, no scipy (time budget)."""
    n = side * side
    print(f"2-D Poisson, n = {n}", flush=True)
    mv = operators.laplace_2d((side, side))
    b = jnp.ones(n)
    maxiter = 20 * side
    cg = [("cg", {})] if large else [("cg", {}), ("minres", {})]
    jax_problem(
        "poisson",
        n,
        mv,
        b,
        reps,
        methods=cg,
        peers=[
            ("jax.scipy cg", jsp("cg", maxiter), True),
            ("lineax CG", lineax("cg", maxiter), True),
        ],
        grad_param=None
        if large
        else (lambda s: operators.laplace_2d((side, side), scale=s), 1.0),
        maxiter=maxiter,
    )
    if large:
        SKIPPED.append(
            f"Poisson n = {n}: CG only (matfree, jax.scipy, lineax), one timed run "
            "after the compiling one, no gradients, no scipy (time budget)."
        )
        return
    one = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(side, side))
    A = (sp.kronsum(one, one)).tocsr()
    scipy_solve("poisson", n, A, b, reps, ["cg", "minres"], maxiter)


def kernel(n, reps, quick, *, mode="full"):
    """RBF kernel + noise 1e-2.

    `mode`: "full" (plain and preconditioned CG with gradients, jax.scipy and
    lineax CG), "nograd" (the same without gradients of plain CG and without
    lineax) or "precond" (pivoted-Cholesky CG only).
    """
    print(f"RBF kernel + noise 1e-2, n = {n}", flush=True)
    x = jax.random.uniform(jax.random.PRNGKey(0), (n, 2))
    ls = 0.2
    mv = operators.kernel_matvec(x, lengthscale=ls, noise=1e-2)
    b = jnp.sin(6 * x[:, 0]) + jnp.cos(4 * x[:, 1])
    rank = 100
    P = precond.pivoted_cholesky(
        lambda i: operators.kernel_matrix(x[i][None], x, lengthscale=ls)[0],
        jnp.ones(n),
        rank=rank,
        shift=1e-2,
    )
    maxiter = 2000
    pre = ("cg", {"precond": P, "tag": f"pivchol{rank}"})
    plain = ("cg", {"nograd": mode != "full"})
    peers = [("jax.scipy cg", jsp("cg", maxiter), mode == "full")]
    if mode == "full":
        peers.append(("lineax CG", lineax("cg", maxiter), False))
    jax_problem(
        "kernel",
        n,
        mv,
        b,
        reps,
        methods=[pre] if mode == "precond" else [plain, pre],
        peers=[] if mode == "precond" else peers,
        grad_param=(lambda p: operators.kernel_matvec(x, lengthscale=p, noise=1e-2), ls),
        maxiter=maxiter,
    )
    if mode == "nograd":
        SKIPPED.append(
            f"kernel n = {n}: one timed run after the compiling one; no gradient of "
            "plain CG, no lineax (each plain-CG solve takes tens of seconds here)."
        )
    elif mode == "precond":
        SKIPPED.append(
            f"kernel n = {n}: pivoted-Cholesky CG only (value and gradient), one "
            "timed run; plain CG and the peers would take minutes per solve "
            f"(one matvec evaluates n^2 = {n * n:.1e} kernel entries)."
        )


def convection_diffusion(side, reps, quick):
    n = side * side
    print(f"convection-diffusion, n = {n}", flush=True)
    h = 1.0 / (side + 1)
    c = 20.0  # central differences, cell Peclet c h / 2 < 1

    def make(c):
        lap = operators.laplace_2d((side, side), scale=1 / h**2)

        def mv(v):
            u = v.reshape(side, side)
            up = jnp.pad(u, 1)
            dx = (up[1:-1, 2:] - up[1:-1, :-2]) / (2 * h)
            dy = (up[2:, 1:-1] - up[:-2, 1:-1]) / (2 * h)
            return lap(v) + c * (dx + dy).reshape(-1)

        return mv

    mv = make(c)
    b = jnp.ones(n)
    maxiter = 3000
    jax_problem(
        "convdiff",
        n,
        mv,
        b,
        reps,
        methods=[("gmres", {}), ("bicgstab", {}), ("gcr", {})],
        peers=[
            ("jax.scipy gmres", jsp("gmres", maxiter), True),
            ("jax.scipy bicgstab", jsp("bicgstab", maxiter), True),
            ("lineax GMRES", lineax("gmres", maxiter), False),
            ("lineax BiCGStab", lineax("bicgstab", maxiter), False),
        ],
        grad_param=(make, c),
        maxiter=maxiter,
    )
    one = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(side, side)) / h**2
    d1 = sp.diags([-1.0, 1.0], [-1, 1], shape=(side, side)) * c / (2 * h)
    eye = sp.identity(side)
    A = (sp.kronsum(one, one) + sp.kron(eye, d1) + sp.kron(d1, eye)).tocsr()
    assert np.allclose(A @ np.asarray(b), np.asarray(mv(b)))
    scipy_solve("convdiff", n, A, b, reps, ["gmres", "bicgstab"], maxiter)


def least_squares(rows, cols, reps, quick):
    print(f"sparse least squares, {rows} x {cols}", flush=True)
    rng = np.random.default_rng(0)
    A = sp.random(rows, cols, density=0.01, random_state=rng, format="csr")
    A = A + sp.eye(rows, cols)
    b = rng.standard_normal(rows)
    Aj = jsparse.BCOO.from_scipy_sparse(A)
    bj = jnp.asarray(b)
    x0 = jnp.zeros(cols)
    maxiter = 5000
    f = jax.jit(
        lambda b: matfree.solve(
            lambda v: Aj @ v,
            b,
            method="lsqr",
            x0=x0,
            rtol=RTOL,
            maxiter=maxiter,
            throw=False,
        )
    )
    sol, run, comp = timeit(lambda: f(bj), reps)

    def loss(s, b):
        return jnp.sum(
            matfree.solve(
                lambda v: s * (Aj @ v),
                b,
                method="lsqr",
                x0=x0,
                rtol=RTOL,
                maxiter=maxiter,
                throw=False,
            ).value
        )

    g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    _, grad, _ = timeit(lambda: g(1.0, bj), reps)
    normal = float(
        jnp.linalg.norm(Aj.T @ (bj - Aj @ sol.value)) / jnp.linalg.norm(Aj.T @ bj)
    )
    record("lstsq", rows, "matfree lsqr", int(sol.num_steps), run, comp, grad, normal)

    def lmsr(b):
        op = lx.FunctionLinearOperator(
            lambda v: Aj @ v, jax.ShapeDtypeStruct((cols,), b.dtype)
        )
        s = lx.linear_solve(
            op, b, lx.LSMR(rtol=RTOL, atol=RTOL, max_steps=maxiter), throw=False
        )
        return s.value, s.stats["num_steps"]

    (x, it), run, comp = timeit(lambda: jax.jit(lmsr)(bj), reps)
    normal = float(jnp.linalg.norm(Aj.T @ (bj - Aj @ x)) / jnp.linalg.norm(Aj.T @ bj))
    record("lstsq", rows, "lineax LSMR", int(it), run, comp, None, normal)
    t, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = ssl.lsqr(A, b, atol=RTOL, btol=RTOL, iter_lim=maxiter)
        t.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    x = out[0]
    normal = np.linalg.norm(A.T @ (b - A @ x)) / np.linalg.norm(A.T @ b)
    med = Timing(statistics.median(t))
    med.cpu = statistics.median(cpu)
    record("lstsq", rows, "scipy lsqr", int(out[2]), med, 0.0, None, normal)


def write(quick, out="solvers"):
    lines = [
        "## Krylov solvers (`benchmarks/bench_solvers.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, shared with "
        "other engineers' jobs while this ran (load average well above 2): wall "
        "times are provisional and noisy at the millisecond scale. "
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"scipy {scipy.__version__}, lineax {lx.__version__}. "
        f"float64, rtol = {RTOL}, atol = 0, "
        "2-norm stopping test for every solver. `run`: median wall time after a "
        "warm-up; `cpu`: median CPU time of the same runs (`time.process_time`, all "
        "threads; less sensitive to the other jobs, and the better guide on this "
        "machine); compile: first call minus median; grad: `value_and_grad` "
        "w.r.t. `b` and an operator parameter. "
        "`relres` is `|b - A x| / |b|` (for least squares `|A^T r| / |A^T b|`). "
        "`ratio` / `cpu ratio` is run time over the fastest JAX peer on the same "
        "problem; `grad/run` is the ratio of CPU times."
        + (" (--quick run)" if quick else ""),
        "",
        "| problem | n | solver | iters | run [s] | ratio | cpu [s] | cpu ratio "
        "| compile [s] | grad [s] | grad cpu [s] | grad/run | relres |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for problem, n, name, iters, run, comp, grad, res in ROWS:
        peers = [
            r[4]
            for r in ROWS
            if r[0] == problem
            and r[1] == n
            and (r[2].startswith("jax.scipy") or r[2].startswith("lineax"))
        ]
        ratio = f"{run / min(peers):.2f}" if peers else "-"
        cratio = f"{run.cpu / min(p.cpu for p in peers):.2f}" if peers else "-"
        g = "-" if grad is None else f"{grad:.3f}"
        gc = "-" if grad is None else f"{grad.cpu:.3f}"
        gr = "-" if grad is None else f"{grad.cpu / run.cpu:.2f}"
        lines.append(
            f"| {problem} | {n} | {name} | {iters} | {run:.4f} | {ratio} "
            f"| {run.cpu:.4f} | {cratio} | {comp:.2f} | {g} | {gc} | {gr} | {res:.1e} |"
        )
    if SKIPPED:
        lines += ["", "Reduced for the time budget:", ""]
        lines += [f"- {line}" for line in SKIPPED]
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", out + ".md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    os.makedirs(os.path.join(HERE, "figures"), exist_ok=True)
    problems = list(dict.fromkeys((r[0], r[1]) for r in ROWS))
    fig, axes = plt.subplots(
        1, len(problems), figsize=(4 * len(problems), 4), squeeze=False
    )
    for ax, (p, n) in zip(axes[0], problems, strict=True):
        rows = [r for r in ROWS if r[0] == p and r[1] == n]
        ax.barh(
            [r[2] for r in rows],
            [r[4] for r in rows],
            color=["C0" if r[2].startswith("matfree") else "C7" for r in rows],
        )
        ax.set_xscale("log")
        ax.set_title(f"{p}, n={n}")
        ax.set_xlabel("run time [s]")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "figures", out + ".png"), dpi=100)


def interleaved(side, rounds):
    """matfree CG and jax.scipy CG on 2-D Poisson, called in turn `rounds` times.

    One process, one warm-up each; at n = 10^4 a solve takes a few ms and the
    block order of `jax_problem`'s timings moves its medians by tens of per
    cent, which calling the two in turn cancels. Prints wall- and CPU-time
    medians and the best round of each, and their ratios (matfree / jax.scipy).
    """
    n = side * side
    mv = operators.laplace_2d((side, side))
    b = jnp.ones(n)
    maxiter = 20 * side
    ours = jax.jit(
        lambda b: (
            matfree.solve(mv, b, method="cg", rtol=RTOL, maxiter=maxiter, throw=False).value
        )
    )
    peer = jax.jit(lambda b: jsp("cg", maxiter)(mv, b)[0])
    times = {"matfree cg": ([], []), "jax.scipy cg": ([], [])}
    for f in (ours, peer):
        f(b).block_until_ready()
    for _ in range(rounds):
        for name, f in (("matfree cg", ours), ("jax.scipy cg", peer)):
            w0, c0 = time.perf_counter(), time.process_time()
            f(b).block_until_ready()
            times[name][0].append(time.perf_counter() - w0)
            times[name][1].append(time.process_time() - c0)
    (ow, oc), (pw, pc) = times["matfree cg"], times["jax.scipy cg"]
    med = statistics.median
    print(f"2-D Poisson n = {n}, {rounds} rounds, interleaved (matfree / jax.scipy):")
    print(
        f"  wall median {med(ow) * 1e3:.2f} / {med(pw) * 1e3:.2f} ms = {med(ow) / med(pw):.3f}"
    )
    print(
        f"  wall best   {min(ow) * 1e3:.2f} / {min(pw) * 1e3:.2f} ms = {min(ow) / min(pw):.3f}"
    )
    print(
        f"  cpu median  {med(oc) * 1e3:.2f} / {med(pc) * 1e3:.2f} ms = {med(oc) / med(pc):.3f}"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--poisson", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--interleave",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="only CG vs jax.scipy CG at n = 10^4, called in turn ROUNDS times",
    )
    args = parser.parse_args()
    if args.interleave:
        interleaved(100, args.interleave)
        return
    reps = args.reps or (2 if args.quick else 3)
    if args.poisson:
        for side in (100, 316):
            poisson(side, reps, False)
        write(False, "solvers_poisson")
        return
    if args.quick:
        poisson(32, reps, True)
        kernel(256, reps, True)
        kernel(512, 1, True, mode="precond")
        convection_diffusion(32, reps, True)
        least_squares(400, 100, reps, True)
    else:
        for side in (100, 316):
            poisson(side, reps, False)
        poisson(1000, 1, False, large=True)
        kernel(2048, 2, False)
        kernel(4096, 1, False, mode="nograd")
        kernel(16384, 1, False, mode="precond")
        convection_diffusion(100, reps, False)
        least_squares(20000, 5000, reps, False)
    write(args.quick)


if __name__ == "__main__":
    main()
