"""Benchmark `matfree.optim` against scipy and optax on the same problems.

Usage: python benchmarks/bench_optim.py [--quick] [--part a9a|autoencoder|all]

1. a9a logistic regression (LIBSVM a9a, 32,561 x 123 + intercept, lambda = 1/n):
   time and work (gradients + Hessian-vector products; a function value counts
   as half) to suboptimality `f - f* <= 1e-10` for matfree Newton-CG, scipy
   `minimize(method="Newton-CG")` and `"L-BFGS-B"` (NumPy objective, gradient
   and Hessian-vector product), optax L-BFGS and gradient descent (step 1/L).
   `f*` from exact Newton with the dense 124 x 124 Hessian. One run per
   method gives the trajectory; the time to the target is the median over
   `--repeats` runs; JAX compile time is measured separately.
2. A deep autoencoder on scikit-learn's digits: training loss after a fixed
   wall-clock budget for Adam, Hessian-free and Krylov subspace descent.

Writes benchmarks/results/optim[_PART].md and benchmarks/figures/optim[_PART].png.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import pathlib
import platform
import statistics
import time

# One BLAS thread for scipy's NumPy objective: on this shared 2-core machine it
# is about 2x faster than the default threading (measured 32 vs 67 ms per a9a
# gradient). Set OPENBLAS_NUM_THREADS yourself to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy  # noqa: E402
import scipy.optimize  # noqa: E402

from matfree import optim  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
TARGET = 1e-10


def machine():
    load = os.getloadavg()[0]
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, 1-min load average {load:.2f} "
        f"at the start; python {platform.python_version()}, jax {jax.__version__}, "
        f"optax {optax.__version__}, scipy {scipy.__version__}, numpy {np.__version__}"
    )


# ---------------------------------------------------------------- a9a


def a9a_problem(quick):
    data = optim.load_a9a(n=4000 if quick else None)
    X = np.column_stack([data["X_train"], np.ones(len(data["X_train"]))])
    y = data["y_train"]
    n, d = X.shape
    lam = 1.0 / n
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def f(w):
        return jnp.mean(jnp.logaddexp(0.0, -yj * (Xj @ w))) + 0.5 * lam * w @ w

    def hess(w):
        s = jax.nn.sigmoid(yj * (Xj @ w))
        return (Xj.T * (s * (1 - s))) @ Xj / n + lam * jnp.eye(d)

    step = jax.jit(lambda w: w - jnp.linalg.solve(hess(w), jax.grad(f)(w)))
    w = jnp.zeros(d)
    for _ in range(30):
        w = step(w)
    f_star = float(f(w))

    # NumPy objective for scipy (BLAS matvecs, no JAX dispatch).
    def np_f(w):
        return np.mean(np.logaddexp(0.0, -y * (X @ w))) + 0.5 * lam * w @ w

    def np_g(w):
        s = scipy.special.expit(-y * (X @ w))
        return -(X.T @ (y * s)) / n + lam * w

    def np_hessp(w, v):
        s = scipy.special.expit(y * (X @ w))
        return X.T @ (s * (1 - s) * (X @ v)) / n + lam * v

    return {
        "f": f,
        "f_star": f_star,
        "d": d,
        "n": n,
        "L": float(np.linalg.norm(X, 2) ** 2 / (4 * n) + lam),
        "np": (np_f, np_g, np_hessp),
        "source": data["source"],
    }


def run_jax(step, state, max_steps, work, f, f_star):
    """One run: `(times, subopt, work, compile_s)`; stops at the target."""
    t0 = time.perf_counter()
    # Two warm-up calls: optax.lbfgs's initial state has weakly typed leaves
    # that the first update makes strong (one retrace).
    jax.block_until_ready(step(jax.block_until_ready(step(state))))
    compile_s = time.perf_counter() - t0
    ts, ws, ks = [0.0], [state[0]], [0]
    start = time.perf_counter()
    for _ in range(max_steps):
        state = jax.block_until_ready(step(state))
        ts.append(time.perf_counter() - start)
        ws.append(state[0])
        ks.append(work(state))
        # The objective at the iterate is not part of the method's work: the
        # stopping test is evaluated outside the clock below.
        t_pause = time.perf_counter()
        done = float(f(state[0])) - f_star <= TARGET
        start += time.perf_counter() - t_pause
        if done:
            break
    sub = [float(f(w)) - f_star for w in ws]
    return ts, sub, ks, compile_s


def run_scipy(method, np_fns, d, f_star, max_steps):
    np_f, np_g, np_hessp = np_fns
    counts = {"f": 0, "g": 0, "h": 0}

    def fc(w):
        counts["f"] += 1
        return np_f(w)

    def gc(w):
        counts["g"] += 1
        return np_g(w)

    def hc(w, v):
        counts["h"] += 1
        return np_hessp(w, v)

    ts, xs, ks = [0.0], [np.zeros(d)], [0.0]
    start = [time.perf_counter()]

    class Done(Exception):
        pass

    def callback(xk):
        ts.append(time.perf_counter() - start[0])
        xs.append(np.array(xk))
        ks.append(counts["g"] + counts["h"] + 0.5 * counts["f"])
        t_pause = time.perf_counter()
        done = np_f(xk) - f_star <= TARGET
        start[0] += time.perf_counter() - t_pause
        if done:
            raise Done

    kwargs = {"jac": gc, "callback": callback}
    if method == "Newton-CG":
        kwargs.update(hessp=hc, options={"xtol": 1e-30, "maxiter": max_steps})
    else:
        kwargs.update(options={"ftol": 0.0, "gtol": 0.0, "maxiter": max_steps})
    start[0] = time.perf_counter()
    with contextlib.suppress(Done):
        scipy.optimize.minimize(fc, np.zeros(d), method=method, **kwargs)
    return ts, [np_f(x) - f_star for x in xs], ks, 0.0


def a9a_methods(prob):
    f, f_star, d = prob["f"], prob["f_star"], prob["d"]
    w0 = jnp.zeros(d)
    zero = jnp.int32(0)
    out = {}

    opt = optim.newton_krylov(method="cg")

    @jax.jit
    def newton(s):
        w, state = s
        value, grad = jax.value_and_grad(f)(w)
        updates, state = opt.update(grad, state, w, value_fn=f, value=value)
        return optax.apply_updates(w, updates), state

    def newton_work(s):
        st = s[1]
        return int(st.count) + int(st.num_curvature) + 0.5 * int(st.num_values)

    out["matfree Newton-CG"] = lambda: run_jax(
        newton, (w0, opt.init(w0)), 50, newton_work, f, f_star
    )

    lbfgs = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    @jax.jit
    def lbfgs_step(s):
        w, state, k = s
        value, grad = vg(w, state=state)
        updates, state = lbfgs.update(grad, state, w, value=value, grad=grad, value_fn=f)
        k = k + optax.tree_utils.tree_get(state, "num_linesearch_steps")
        return optax.apply_updates(w, updates), state, k

    out["optax L-BFGS"] = lambda: run_jax(
        lbfgs_step, (w0, lbfgs.init(w0), jnp.int32(1)), 3000, lambda s: int(s[2]), f, f_star
    )

    L = prob["L"]
    gd = jax.jit(lambda s: (s[0] - jax.grad(f)(s[0]) / L, s[1] + 1))
    out["gradient descent"] = lambda: run_jax(
        gd, (w0, zero), prob["gd_steps"], lambda s: int(s[1]), f, f_star
    )
    for method in ("Newton-CG", "L-BFGS-B"):
        out[f"scipy {method}"] = lambda m=method: run_scipy(m, prob["np"], d, f_star, 5000)
    return out


def time_to_target(ts, sub):
    for t, s in zip(ts, sub, strict=True):
        if s <= TARGET:
            return t
    return None


def bench_a9a(args, lines):
    prob = a9a_problem(args.quick)
    prob["gd_steps"] = 500 if args.quick else 2000
    lines += [
        "## a9a logistic regression to f - f* <= 1e-10 (`benchmarks/bench_optim.py`)",
        "",
        f"Machine: {machine()}. Data: {prob['source']} (n = {prob['n']}, d = "
        f"{prob['d']} with intercept), lambda = 1/n, float64, f* = {prob['f_star']:.15f}. "
        f"Time to the target: median of {args.repeats} runs (a run stops at the target); "
        "work = gradients + Hessian-vector products + 0.5 x function values; compile "
        "time separate.",
        "",
        "| method | steps | work to target | time to target [s] (median) | runs [s] "
        "| final f - f* | compile [s] |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    traj = {}
    for name, run in a9a_methods(prob).items():
        results = [run() for _ in range(args.repeats if name != "gradient descent" else 1)]
        ts, sub, ks, comp = results[0]
        traj[name] = (ts, sub, ks)
        tt = [time_to_target(r[0], r[1]) for r in results]
        reached = all(t is not None for t in tt)
        work = next((k for k, s in zip(ks, sub, strict=True) if s <= TARGET), None)
        lines.append(
            f"| {name} | {len(ts) - 1} | {'-' if work is None else f'{work:g}'} | "
            f"{statistics.median(tt):.3f} | {', '.join(f'{t:.3f}' for t in tt)} | "
            if reached
            else f"| {name} | {len(ts) - 1} | not reached | not reached | - | "
        )
        lines[-1] += f"{max(sub[-1], 0.0):.2e} | {comp:.2f} |"
        print(lines[-1], flush=True)
    return traj


def plot_a9a(traj, ax):
    for name, (ts, sub, ks) in traj.items():
        s = np.maximum(np.asarray(sub), 1e-17)
        ax[0].semilogy(ts, s, ".-", ms=3, label=name)
        ax[1].loglog(np.maximum(ks, 0.5), s, ".-", ms=3, label=name)
    reached = [time_to_target(ts, sub) for ts, sub, _ in traj.values()]
    reached = [t for t in reached if t is not None]
    if reached:
        ax[0].set_xlim(0, 1.5 * max(reached))
    for a in ax[:2]:
        a.axhline(TARGET, color="gray", ls=":")
        a.set_ylabel("f - f*")
    ax[0].set(xlabel="seconds (compile excluded)", title="a9a: suboptimality vs time")
    ax[1].set(xlabel="gradients + HVPs + values/2", title="a9a: suboptimality vs work")
    ax[0].legend(fontsize=7)


# ---------------------------------------------------------------- autoencoder

LAYERS = (64, 32, 16, 6, 16, 32, 64)


def bench_autoencoder(args, lines, ax):
    from sklearn.datasets import load_digits

    images = jnp.asarray(load_digits().data / 16.0)
    if args.quick:
        images = images[:400]
    n = images.shape[0]
    key = jax.random.PRNGKey(0)

    def model_on(x):
        def model(params):
            h = x
            for layer in params[:-1]:
                h = jnp.tanh(h @ layer["W"] + layer["b"])
            return h @ params[-1]["W"] + params[-1]["b"]

        return model

    def loss_on(x):
        return lambda logits: jnp.mean(jnp.logaddexp(0.0, logits) - x * logits)

    def objective_on(x):
        return lambda params: loss_on(x)(model_on(x)(params))

    f_all = jax.jit(objective_on(images))
    params0 = []
    for i, (a, b) in enumerate(itertools.pairwise(LAYERS)):
        k = jax.random.fold_in(key, i)
        params0.append({"W": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)})

    def batch(k, size):
        return images[jax.random.choice(k, n, (min(size, n),), replace=False)]

    adam = optax.adam(1e-3)

    @jax.jit
    def adam_step(s):
        params, st, k = s
        grad = jax.grad(objective_on(batch(jax.random.fold_in(key, k), 128)))(params)
        updates, st = adam.update(grad, st, params)
        return optax.apply_updates(params, updates), st, k + 1

    def second_order(opt, inner_batch=None):
        @jax.jit
        def step(s):
            params, st = s
            k = optax.tree_utils.tree_get(st, "count")
            xc = batch(jax.random.fold_in(key, 2 * k + 1), 256)
            value, grad = jax.value_and_grad(f_all)(params)
            f_inner = f_all
            if inner_batch is not None:
                f_inner = objective_on(
                    batch(jax.random.fold_in(key, 2 * k + 2), inner_batch)
                )
                value = f_inner(params)
            updates, st = opt.update(
                grad,
                st,
                params,
                value_fn=f_inner,
                value=value,
                model_fn=model_on(xc),
                loss_fn=loss_on(xc),
            )
            return optax.apply_updates(params, updates), st

        return step

    hf = optim.hessian_free(damping=1.0, maxiter=50)
    ksd = optim.krylov_subspace_descent(depth=10, num_inner=3)
    methods = {
        "Adam (lr 1e-3, batch 128)": (
            adam_step,
            (params0, adam.init(params0), jnp.int32(0)),
        ),
        "Hessian-free (curvature batch 256)": (
            second_order(hf),
            (params0, hf.init(params0)),
        ),
        "KSD (depth 10, 3 inner Newton steps)": (
            second_order(ksd, inner_batch=512),
            (params0, ksd.init(params0)),
        ),
    }
    budget = 3.0 if args.quick else args.budget
    lines += [
        "",
        "## Digits autoencoder: training loss after a fixed wall-clock budget",
        "",
        f"Machine: {machine()}. scikit-learn digits ({n} images, 8 x 8, scaled to "
        f"[0, 1]); autoencoder {LAYERS} with tanh, binary cross-entropy per pixel on "
        f"logits; budget {budget:g} s of training per optimiser (compile excluded), one "
        "run each; the loss is the full-data training loss.",
        "",
        "| optimiser | steps | loss at start | loss after budget | best loss | compile [s] |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (step, state) in methods.items():
        t0 = time.perf_counter()
        jax.block_until_ready(step(state))
        compile_s = time.perf_counter() - t0
        ts, losses = [0.0], [float(f_all(state[0]))]
        start = time.perf_counter()
        while ts[-1] < budget:
            state = jax.block_until_ready(step(state))
            t_pause = time.perf_counter()
            losses.append(float(f_all(state[0])))
            start += time.perf_counter() - t_pause
            ts.append(time.perf_counter() - start)
        ax.plot(ts, losses, label=name)
        lines.append(
            f"| {name} | {len(ts) - 1} | {losses[0]:.4f} | {losses[-1]:.4f} | "
            f"{min(losses):.4f} | {compile_s:.2f} |"
        )
        print(lines[-1], flush=True)
    ax.set(xlabel="seconds (compile excluded)", ylabel="training loss")
    ax.set_title("digits autoencoder: loss vs time")
    ax.legend(fontsize=7)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", default="all", choices=("a9a", "autoencoder", "all"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=30.0)
    args = parser.parse_args()
    lines = [f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    if args.part == "all":
        fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    elif args.part == "a9a":
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    else:
        fig, ax = plt.subplots(1, 1, figsize=(5.5, 4))
        ax = [None, None, ax]
    if args.part in ("a9a", "all"):
        plot_a9a(bench_a9a(args, lines), ax)
    if args.part in ("autoencoder", "all"):
        bench_autoencoder(args, lines, ax[2])
    fig.tight_layout()
    (HERE / "figures").mkdir(exist_ok=True)
    (HERE / "results").mkdir(exist_ok=True)
    suffix = ("" if args.part == "all" else f"_{args.part}") + (
        "_quick" if args.quick else ""
    )
    fig.savefig(HERE / "figures" / f"optim{suffix}.png", dpi=110)
    (HERE / "results" / f"optim{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
