"""GP hyperparameter fitting: seconds per epoch and peak memory vs GPyTorch and dense Cholesky.

One epoch = value and gradient of the negative log marginal likelihood. Same
kernel (Matérn-3/2 ARD, 9-D protein inputs), n, precision (float32), probes,
Lanczos depth, CG tolerance and preconditioner rank for matfree and GPyTorch
(CPU). Every configuration runs in a fresh subprocess, so peak memory is the
process's peak resident set size (plus XLA's compiled-memory estimate for
matfree). Also fits the protein data (80/20 split, fixed seed) with both
libraries for a fixed number of Adam epochs and reports test RMSE and the
exact training loss per point (dense Cholesky at the fitted hyperparameters).

With `--work-precision`: the work-precision table of issue #16.2 instead
(each configuration's time per epoch beside its value and gradient error
against the float64 dense Cholesky, float64 and float32).

Usage: python benchmarks/bench_gp.py [--quick] [--work-precision]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

CFG = {"probes": 10, "depth": 10, "rtol": 0.01, "rank": 15, "lr": 0.1}
INIT = 0.6931  # softplus(0): GPyTorch's initial lengthscale / outputscale / noise


def _rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _data(n, split):
    try:
        from matfree import gp
    except ImportError:  # the GPyTorch venv has no JAX: load the loader's file alone
        import importlib.util

        path = ROOT / "matfree" / "gp" / "_data.py"
        spec = importlib.util.spec_from_file_location("_protein_data", path)
        gp = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gp)

    if split:
        d = gp.load_protein(n=n, dtype="float32", seed=0)
        return d["X_train"], d["y_train"], d["X_test"], d["y_test"]
    d = gp.load_protein(n=n, train_fraction=1.0, dtype="float32", seed=0)
    return d["X_train"], d["y_train"], None, None


# ------------------------------------------------------------------ workers


def _matfree_problem(X, y):
    import jax
    import jax.numpy as jnp

    from matfree import gp

    opts = {
        "kernel": "matern32",
        "num_probes": CFG["probes"],
        "depth": CFG["depth"],
        "rtol": CFG["rtol"],
        "precond_rank": CFG["rank"],
    }
    X, y = jnp.asarray(X), jnp.asarray(y)
    n = X.shape[0]

    def loss(raw, key):
        p = gp.constrain(raw)
        return -gp.log_marginal_likelihood(p, X, y, key=key, **opts).value / n

    p0 = {
        "lengthscale": jnp.full((X.shape[1],), INIT, jnp.float32),
        "variance": jnp.float32(INIT),
        "noise": jnp.float32(INIT),
    }
    return jax.value_and_grad(loss), gp.unconstrain(p0), opts


def worker_epoch_matfree(n, repeats):
    import _util
    import jax

    jax.config.update("jax_enable_x64", True)
    X, y, _, _ = _data(n, split=False)
    vg, raw, _ = _matfree_problem(X, y)
    key = jax.random.PRNGKey(0)
    compiled, t_compile = _util.compile_jit(vg, raw, key)
    if repeats > 1:  # warm-up (compiled ahead of time: a single run needs none)
        _util.block(compiled(raw, key))
    times, losses = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        v, _ = _util.block(compiled(raw, jax.random.PRNGKey(i + 1)))
        times.append(time.perf_counter() - t0)
        losses.append(float(v))
    return {
        "sec": statistics.median(times),
        "compile": t_compile,
        "loss": statistics.median(losses),
        "xla_peak_gib": (_util.peak_bytes(compiled) or 0) / 2**30,
        "rss_gib": _rss_gib(),
    }


def worker_compile_matfree(n, repeats):
    """Compile only (for n too large to time here): XLA's peak-memory estimate."""
    import _util
    import jax

    jax.config.update("jax_enable_x64", True)
    X, y, _, _ = _data(n, split=False)
    vg, raw, _ = _matfree_problem(X, y)
    compiled, t_compile = _util.compile_jit(vg, raw, jax.random.PRNGKey(0))
    return {
        "compile": t_compile,
        "xla_peak_gib": (_util.peak_bytes(compiled) or 0) / 2**30,
        "rss_gib": _rss_gib(),
        "error": "not timed (compile only)",
    }


def worker_epoch_cholesky(n, repeats):
    import _util
    import jax
    import jax.numpy as jnp

    from matfree import gp

    jax.config.update("jax_enable_x64", True)
    X, y, _, _ = _data(n, split=False)
    X, y = jnp.asarray(X), jnp.asarray(y)

    def loss(raw):
        p = gp.constrain(raw)
        return (
            -gp.log_marginal_likelihood(p, X, y, kernel="matern32", method="cholesky").value
            / n
        )

    raw = gp.unconstrain(
        {
            "lengthscale": jnp.full((9,), INIT, jnp.float32),
            "variance": jnp.float32(INIT),
            "noise": jnp.float32(INIT),
        }
    )
    compiled, t_compile = _util.compile_jit(jax.value_and_grad(loss), raw)
    sec = _util.median_time(compiled, raw, repeats=repeats)
    return {
        "sec": sec,
        "compile": t_compile,
        "loss": float(compiled(raw)[0]),
        "xla_peak_gib": (_util.peak_bytes(compiled) or 0) / 2**30,
        "rss_gib": _rss_gib(),
    }


def _gpytorch_model(X, y):
    import gpytorch
    import torch

    class Model(gpytorch.models.ExactGP):
        def __init__(self, X, y, lik):
            super().__init__(X, y, lik)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.MaternKernel(nu=1.5, ard_num_dims=X.shape[1])
            )

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    X, y = torch.as_tensor(X), torch.as_tensor(y)
    lik = gpytorch.likelihoods.GaussianLikelihood()
    model = Model(X, y, lik)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    return model, lik, mll, X, y


def _gpytorch_params(model, lik):
    """The fitted hyperparameters of `_gpytorch_model`, in natural units."""
    return {
        "lengthscale": model.covar_module.base_kernel.lengthscale.detach()
        .double()
        .reshape(-1)
        .tolist(),
        "variance": float(model.covar_module.outputscale),
        "noise": float(lik.noise),
    }


def _gpytorch_settings():
    import contextlib

    import gpytorch

    stack = contextlib.ExitStack()
    for s in (
        gpytorch.settings.max_cholesky_size(0),
        gpytorch.settings.cg_tolerance(CFG["rtol"]),
        gpytorch.settings.eval_cg_tolerance(CFG["rtol"]),
        gpytorch.settings.max_lanczos_quadrature_iterations(CFG["depth"]),
        gpytorch.settings.num_trace_samples(CFG["probes"]),
        gpytorch.settings.max_preconditioner_size(CFG["rank"]),
        gpytorch.settings.max_cg_iterations(1000),
    ):
        stack.enter_context(s)
    return stack


def worker_epoch_gpytorch(n, repeats):
    import torch

    X, y, _, _ = _data(n, split=False)
    model, _, mll, Xt, yt = _gpytorch_model(X, y)
    model.train()
    times, losses = [], []
    with _gpytorch_settings():
        for i in range(repeats + 1):
            torch.manual_seed(i)
            t0 = time.perf_counter()
            model.zero_grad()
            loss = -mll(model(Xt), yt)
            loss.backward()
            dt = time.perf_counter() - t0
            if i:
                times.append(dt)
                losses.append(float(loss))
    return {
        "sec": statistics.median(times),
        "compile": 0.0,
        "loss": statistics.median(losses),
        "rss_gib": _rss_gib(),
    }


def worker_fit_matfree(n, epochs):
    import jax
    import jax.numpy as jnp
    import optax

    from matfree import gp

    jax.config.update("jax_enable_x64", True)
    X, y, Xte, yte = _data(n, split=True)
    _, raw, opts = _matfree_problem(X, y)
    t0 = time.perf_counter()
    res = gp.fit(
        gp.constrain(raw),
        X,
        y,
        key=jax.random.PRNGKey(0),
        optimizer=optax.adam(CFG["lr"]),
        num_steps=epochs,
        progress=False,
        **opts,
    )
    sec = time.perf_counter() - t0
    mean = gp.predict(
        res.params,
        X,
        y,
        Xte,
        kernel="matern32",
        variance=False,
        precond_rank=CFG["rank"],
        rtol=CFG["rtol"],
    ).mean
    rmse = float(jnp.sqrt(jnp.mean((mean - jnp.asarray(yte)) ** 2)))
    p = {k: jnp.asarray(v, jnp.float64).tolist() for k, v in res.params.items()}
    return {
        "rmse": rmse,
        "params": p,
        "sec": sec,
        "sec_per_epoch": float(sum(res.seconds[1:]) / max(len(res.seconds) - 1, 1)),
    }


def worker_fit_gpytorch(n, epochs):
    import gpytorch
    import torch

    X, y, Xte, yte = _data(n, split=True)
    model, lik, mll, Xt, yt = _gpytorch_model(X, y)
    opt = torch.optim.Adam(model.parameters(), lr=CFG["lr"])
    model.train()
    t0 = time.perf_counter()
    with _gpytorch_settings():
        for i in range(epochs):
            torch.manual_seed(i)
            opt.zero_grad()
            loss = -mll(model(Xt), yt)
            loss.backward()
            opt.step()
        sec = time.perf_counter() - t0
        model.eval()
        with torch.no_grad(), gpytorch.settings.skip_posterior_variances(True):
            mean = lik(model(torch.as_tensor(Xte))).mean.numpy()
    rmse = float(((mean - yte) ** 2).mean() ** 0.5)
    p = _gpytorch_params(model, lik)
    return {"rmse": rmse, "params": p, "sec": sec, "sec_per_epoch": sec / epochs}


def exact_loss_per_point(n, params):
    """Exact (float64 Cholesky) training loss per point at `params`."""
    import jax
    import jax.numpy as jnp

    from matfree import gp

    jax.config.update("jax_enable_x64", True)
    X, y, _, _ = _data(n, split=True)
    X, y = jnp.asarray(X, jnp.float64), jnp.asarray(y, jnp.float64)
    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    lml = gp.log_marginal_likelihood(p, X, y, kernel="matern32", method="cholesky").value
    return -float(lml) / X.shape[0]


# ------------------------------------------------ work-precision (issue #16.2)
#
# One epoch at the point (lengthscale 1, variance 1, noise 0.1), in
# float64 or float32, per configuration; the truth is the dense Cholesky value
# and gradient in float64. Gradients are w.r.t. the natural parameters
# (lengthscale (9,), variance, noise), GPyTorch's converted from its raw
# (softplus) parameters by the chain rule.

WP_POINT = {"lengthscale": 1.0, "variance": 1.0, "noise": 0.1}
GPYTORCH_SETTINGS = {  # `CFG` in `gp.log_marginal_likelihood`'s words
    "num_probes": CFG["probes"],
    "depth": CFG["depth"],
    "rtol": CFG["rtol"],
    "precond_rank": CFG["rank"],
}
WP_CONFIGS = {
    "gpytorch-settings": GPYTORCH_SETTINGS,
    "gpytorch-settings-rank50": {**GPYTORCH_SETTINGS, "precond_rank": 50},
    "gpytorch-settings-rank100": {**GPYTORCH_SETTINGS, "precond_rank": 100},
    "defaults": {},  # num_probes 16, depth 20, rtol 1e-3, rank 100
    # The same with the kernel matrix stored once per epoch (`materialize=True`).
    "gpytorch-settings-materialize": {**GPYTORCH_SETTINGS, "materialize": True},
    "defaults-materialize": {"materialize": True},
}


def _wp_point(dtype, d=9):
    import jax.numpy as jnp

    return {
        "lengthscale": jnp.full((d,), WP_POINT["lengthscale"], dtype),
        "variance": jnp.asarray(WP_POINT["variance"], dtype),
        "noise": jnp.asarray(WP_POINT["noise"], dtype),
    }


def _flat_grad(g):
    import numpy as np

    return [
        *np.asarray(g["lengthscale"], np.float64).tolist(),
        float(g["variance"]),
        float(g["noise"]),
    ]


def worker_wp(n, spec):
    """`spec` = "<config>:<dtype>"; config "truth" is the float64 Cholesky."""
    import _util
    import jax
    import jax.numpy as jnp

    from matfree import gp

    jax.config.update("jax_enable_x64", True)
    config, dtype = spec.split(":")
    X, y, _, _ = _data(n, split=False)
    X, y = jnp.asarray(X, dtype), jnp.asarray(y, dtype)
    if config == "truth":

        def loss(p, key):
            del key
            lml = gp.log_marginal_likelihood(p, X, y, kernel="matern32", method="cholesky")
            return -lml.value / n, lml.cg_num_steps

    else:
        opts = {"kernel": "matern32", **WP_CONFIGS[config]}

        def loss(p, key):
            lml = gp.log_marginal_likelihood(p, X, y, key=key, throw=False, **opts)
            return -lml.value / n, lml.cg_num_steps

    p = _wp_point(dtype)
    vg = jax.value_and_grad(loss, has_aux=True)
    compiled, t_compile = _util.compile_jit(vg, p, jax.random.PRNGKey(0))
    t0, c0 = time.perf_counter(), time.process_time()
    (v, steps), g = _util.block(compiled(p, jax.random.PRNGKey(1)))
    return {
        "sec": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "compile": t_compile,
        "loss": float(v),
        "grad": _flat_grad(g),
        "cg_steps": int(steps),
        "rss_gib": _rss_gib(),
        "load": os.getloadavg()[0],
    }


def worker_wp_gpytorch(n, spec):
    import torch

    _, dtype = spec.split(":")
    X, y, _, _ = _data(n, split=False)
    tdt = getattr(torch, dtype)
    X, y = X.astype(dtype), y.astype(dtype)
    model, lik, mll, Xt, yt = _gpytorch_model(X, y)
    model = model.to(tdt)
    lik = lik.to(tdt)
    model.covar_module.base_kernel.lengthscale = torch.full((1, 9), WP_POINT["lengthscale"])
    model.covar_module.outputscale = WP_POINT["variance"]
    lik.noise = WP_POINT["noise"]
    model.train()
    out = {}
    with _gpytorch_settings():
        for i in range(2):  # the first epoch is a warm-up (allocator, threads)
            torch.manual_seed(i)
            t0, c0 = time.perf_counter(), time.process_time()
            model.zero_grad()
            loss = -mll(model(Xt), yt)
            loss.backward()
            out = {"sec": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    kern = model.covar_module
    raw = {
        "lengthscale": kern.base_kernel.raw_lengthscale,
        "variance": kern.raw_outputscale,
        "noise": lik.noise_covar.raw_noise,
    }
    # d loss / d theta = (d loss / d raw) / sigmoid(raw) for theta = softplus(raw)
    # (GPyTorch's default positive constraint; its noise constraint adds 1e-4).
    g = {k: (v.grad / torch.sigmoid(v.detach())).reshape(-1) for k, v in raw.items()}
    grad = [*g["lengthscale"].double().tolist(), float(g["variance"]), float(g["noise"])]
    return {
        **out,
        "loss": float(loss),
        "grad": grad,
        "cg_steps": -1,
        "rss_gib": _rss_gib(),
        "load": os.getloadavg()[0],
    }


def work_precision(n, dtypes, configs, timeout):
    """Run the configurations against the truth; return the table's rows."""
    import numpy as np

    truth = run_worker("wp", n, "truth:float64", timeout=timeout)
    print(f"  truth: {truth}", flush=True)
    rows = [{"config": "dense Cholesky (truth)", "dtype": "float64", **truth}]
    for dtype in dtypes:
        for cfg in [*configs, "gpytorch"]:
            if cfg == "gpytorch":
                r = run_worker("wp_gpytorch", n, f"x:{dtype}", timeout=timeout, mem_gib=12)
                name = "GPyTorch at its settings"
            else:
                r = run_worker("wp", n, f"{cfg}:{dtype}", timeout=timeout)
                name = f"matfree {cfg}"
            if "grad" in r and "grad" in truth:
                g, gt = np.asarray(r["grad"]), np.asarray(truth["grad"])
                r["value_err"] = abs(r["loss"] - truth["loss"])  # already per point
                r["grad_err"] = float(np.linalg.norm(g - gt) / np.linalg.norm(gt))
            print(f"  {name} {dtype}: {r}", flush=True)
            rows.append({"config": name, "dtype": dtype, **r})
    return rows


def write_wp(rows, n, machine, name):
    lines = [
        f"Work-precision at n = {n:,} (issue #16.2): one epoch (value + gradient) at "
        f"lengthscale {WP_POINT['lengthscale']:g}, variance {WP_POINT['variance']:g}, "
        f"noise {WP_POINT['noise']:g}; truth = dense Cholesky in float64. Value error = "
        "|loss/pt - true loss/pt|; gradient error = |g - g_true| / |g_true| over the 11 "
        "natural parameters. One timed epoch per row (matfree compiled ahead of time; "
        "GPyTorch after one warm-up epoch); `cpu` is process CPU time (all threads), "
        "`load` the 1-min load average when the row finished (2 cores: above ~2 the "
        f"wall times are inflated and provisional). Machine: {machine}.",
        "",
        "| configuration | dtype | s/epoch | cpu s | load | CG steps | loss/pt "
        "| value err/pt | grad rel. err | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['dtype']} | {_cell(r, 'sec')} | {_cell(r, 'cpu')} "
            f"| {_cell(r, 'load', '{:.1f}')} | {_cell(r, 'cg_steps', '{:d}')} "
            f"| {_cell(r, 'loss', '{:.4f}')} | {_cell(r, 'value_err', '{:.1e}')} "
            f"| {_cell(r, 'grad_err', '{:.1e}')} | {_cell(r, 'rss_gib')} |"
        )
    (HERE / "results" / f"{name}.md").write_text("\n".join(lines) + "\n")
    (HERE / "results" / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------ driver


def run_worker(*args, timeout=900, mem_gib=None):
    python = sys.executable
    if "gpytorch" in str(args[0]):  # GPyTorch may live in its own venv (no JAX there)
        python = os.environ.get("BENCH_GP_TORCH_PYTHON", python)
    cmd = [python, "-u", __file__, "--worker", *map(str, args)]
    env = dict(os.environ)
    if mem_gib:
        env["BENCH_GP_MEM_GIB"] = str(mem_gib)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {out.returncode}: {tail[0][:160]}"}
    return json.loads(lines[-1][7:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=3)
    ap.add_argument("--sizes", default="2000,10000,45000")
    ap.add_argument("--fit-n", type=int, default=10000, help="rows of protein for the fit")
    ap.add_argument("--fit-epochs", type=int, default=20)
    ap.add_argument("--gpytorch-mem-gib", type=float, default=12.0)
    ap.add_argument(
        "--max-timed-n", type=int, default=10000, help="larger n: compile + memory only"
    )
    ap.add_argument("--cholesky-max-n", type=int, default=10000)
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="forget the rows of earlier runs (default: keep the sizes not re-run)",
    )
    ap.add_argument(
        "--work-precision",
        action="store_true",
        help="only the work-precision table (issue #16.2) at --wp-n",
    )
    ap.add_argument("--wp-n", type=int, default=10000)
    ap.add_argument("--wp-dtypes", default="float64,float32")
    ap.add_argument("--wp-configs", default=",".join(WP_CONFIGS))
    ap.add_argument("--wp-out", default="gp_wp", help="results/<name>.md and .json")
    args = ap.parse_args()
    if args.worker:
        kind, n, r = args.worker
        mem = os.environ.get("BENCH_GP_MEM_GIB")
        if mem:  # fail cleanly instead of invoking the OOM killer on a shared machine
            lim = int(float(mem) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        fn = globals()[f"worker_{kind}"]
        arg = r if kind.startswith("wp") else int(r)
        print("RESULT " + json.dumps(fn(int(n), arg)))
        return

    import _util

    if args.work_precision:
        n = 1000 if args.quick else args.wp_n
        configs = [c for c in args.wp_configs.split(",") if c]
        if args.quick:
            configs = configs[:1]
        rows = work_precision(n, args.wp_dtypes.split(","), configs, timeout=1800)
        write_wp(rows, n, _util.machine(), "gp_wp_quick" if args.quick else args.wp_out)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s]
    repeats = 3
    if args.quick:
        sizes, repeats, args.fit_n, args.fit_epochs = [500, 1000], 2, 1000, 3
    print(f"settings: {CFG}, float32, Matérn-3/2 ARD, protein inputs (d = 9)")
    rows = []
    for n in sizes:
        r = {"n": n}
        rep = repeats if n <= 10000 else 1
        print(f"n = {n}: matfree ...", flush=True)
        kind = "epoch_matfree" if n <= args.max_timed_n else "compile_matfree"
        r["matfree"] = run_worker(kind, n, rep, timeout=1200 if n <= 10000 else 3600)
        print(f"        {r['matfree']}", flush=True)
        print(f"n = {n}: gpytorch ...", flush=True)
        r["gpytorch"] = run_worker(
            "epoch_gpytorch", n, rep, timeout=1200, mem_gib=args.gpytorch_mem_gib
        )
        print(f"        {r['gpytorch']}", flush=True)
        if n <= args.cholesky_max_n:
            print(f"n = {n}: cholesky ...", flush=True)
            r["cholesky"] = run_worker("epoch_cholesky", n, rep)
            print(f"        {r['cholesky']}", flush=True)
        rows.append(r)

    print(
        f"protein fit: {args.fit_n} rows (80/20), {args.fit_epochs} Adam epochs", flush=True
    )
    fits = {}
    for lib in ("matfree", "gpytorch"):
        fits[lib] = run_worker(f"fit_{lib}", args.fit_n, args.fit_epochs, timeout=1800)
        if "params" in fits[lib]:
            fits[lib]["loss"] = exact_loss_per_point(args.fit_n, fits[lib]["params"])
        print(f"  {lib}: {fits[lib]}", flush=True)
    if not args.quick:
        rows = _merge_rows(rows, fresh=args.fresh)
    write(rows, fits, args, _util.machine())


def _merge_rows(rows, *, fresh):
    """Keep the raw rows in `results/gp_rows.json`; a run replaces only its sizes.

    Every row records when it was measured (`measured` column), so a table
    assembled from several runs says which numbers come from which run.
    """
    path = HERE / "results" / "gp_rows.json"
    when = time.strftime("%Y-%m-%d")
    for r in rows:
        r.setdefault("measured", when)
    old = [] if fresh or not path.exists() else json.loads(path.read_text())
    new_sizes = {r["n"] for r in rows}
    merged = sorted(
        [r for r in old if r["n"] not in new_sizes] + rows, key=lambda r: r["n"]
    )
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return merged


def _cell(r, key, fmt="{:.2f}"):
    if key in r:
        return fmt.format(r[key])
    return _short_error(r.get("error", "n/a"))


def _short_error(err):
    """A table-sized reason, e.g. torch's allocation failure with its size."""
    import re

    m = re.search(r"allocate (\d+) bytes", err)
    if m:
        return f"out of memory (one {int(m.group(1)) / 1e9:.1f} GB allocation refused)"
    return err[:48]


def write(rows, fits, args, machine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        import gpytorch
        import torch

        peers = f"torch {torch.__version__}, gpytorch {gpytorch.__version__}"
    except ImportError:
        peers = "gpytorch not installed"
    lines = [
        "## GP hyperparameter fitting (`benchmarks/bench_gp.py`)",
        "",
        f"Machine: {machine}; {peers}. Rows marked `(loaded)` were measured while "
        "other jobs shared the 2 cores (provisional); the others on a quiet machine.",
        "",
        f"One epoch = value + gradient of the negative log marginal likelihood; float32; "
        f"Matérn-3/2 ARD on protein inputs (d = 9); {CFG['probes']} probes, Lanczos depth "
        f"{CFG['depth']}, CG rtol {CFG['rtol']}, pivoted-Cholesky preconditioner rank "
        f"{CFG['rank']} (same settings for GPyTorch). Median of 3 epochs after a warm-up; "
        "at n > 10,000 a single epoch (matfree's step is compiled ahead of time, so it "
        "needs no warm-up). Peak memory: the process's peak RSS. GPyTorch runs under a "
        f"{args.gpytorch_mem_gib:g} GiB address-space cap (the machine has 24 GiB; "
        "without a cap an out-of-memory run would invoke the OOM killer).",
        "",
        "| n | matfree s/epoch | GPyTorch s/epoch | ratio | Cholesky s/epoch | matfree compile s "
        "| matfree peak RSS GiB (XLA est.) | GPyTorch peak RSS GiB | loss/pt matfree "
        "| loss/pt GPyTorch | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, g, c = (
            r["matfree"],
            r["gpytorch"],
            r.get("cholesky", {"error": "skipped (O(n^2))"}),
        )
        ratio = f"{m['sec'] / g['sec']:.2f}" if "sec" in m and "sec" in g else "n/a"
        xla = f" ({m['xla_peak_gib']:.2f})" if "xla_peak_gib" in m else ""
        lines.append(
            f"| {r['n']:,} | {_cell(m, 'sec')} | {_cell(g, 'sec')} | {ratio} | {_cell(c, 'sec')} "
            f"| {_cell(m, 'compile', '{:.1f}')} | {_cell(m, 'rss_gib')}{xla} | {_cell(g, 'rss_gib')} "
            f"| {_cell(m, 'loss', '{:.4f}')} | {_cell(g, 'loss', '{:.4f}')} "
            f"| {r.get('measured', '-')} |"
        )
    lines += [
        "",
        f"Protein fit: {args.fit_n:,} rows (random subset, 80/20 split, seed 0, standardised), "
        f"{args.fit_epochs} Adam epochs (lr {CFG['lr']}) from GPyTorch's default start; "
        "training loss per point evaluated exactly (float64 Cholesky) at the fitted "
        "hyperparameters.",
        "",
        "| library | test RMSE | train loss / point | s/epoch | total s |",
        "|---|---|---|---|---|",
    ]
    for lib, f in fits.items():
        lines.append(
            f"| {lib} | {_cell(f, 'rmse', '{:.4f}')} | {_cell(f, 'loss', '{:.4f}')} "
            f"| {_cell(f, 'sec_per_epoch')} | {_cell(f, 'sec', '{:.1f}')} |"
        )
    name = "gp_quick" if args.quick else "gp"
    (HERE / "results" / f"{name}.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for lib in ("matfree", "gpytorch", "cholesky"):
        pts = [(r["n"], r[lib]["sec"]) for r in rows if lib in r and "sec" in r[lib]]
        mem = [
            (r["n"], r[lib]["rss_gib"]) for r in rows if lib in r and "rss_gib" in r[lib]
        ]
        if pts:
            ax[0].loglog(*zip(*pts, strict=True), "o-", label=lib)
        if mem:
            ax[1].loglog(*zip(*mem, strict=True), "o-", label=lib)
    ax[0].set(xlabel="n", ylabel="seconds per epoch", title="value + gradient")
    ax[1].set(xlabel="n", ylabel="peak RSS (GiB)", title="peak memory")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(HERE / "figures" / f"{name}.png", dpi=100)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
