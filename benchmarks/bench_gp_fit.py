"""A GP fit that converges: L-BFGS with fixed probes on protein, against GPyTorch's Adam fit.

matfree: `gp.fit(optimizer=optax.lbfgs(...), tol=)` (fixed probes, so the loss
is deterministic and the line search sound), Matérn-3/2 ARD, at GPyTorch's
settings (CG rtol 1e-2, 10 probes, Lanczos depth 10, rank-15 pivoted
Cholesky), from GPyTorch's initial hyperparameters (softplus(0)), until the
training loss per point changes by less than `--tol` over 5 steps (each step
is at least one epoch). Prints the loss of every step, the wall and CPU time,
the number of loss evaluations (value and gradient: epochs), and test RMSE
and test NLL (predictive log likelihood with the noise, `gp.predict`). At
`n <= 10000` also the exact (dense float64 Cholesky) training loss per point at
the fitted hyperparameters.

GPyTorch: the fit of `bench_gp.py` (10,000 rows by default, `--gpytorch-n`,
80/20 split, 20 Adam epochs at rate 0.1, same settings) in a subprocess of `--torch-python` (a venv
with torch and gpytorch; skipped if it has none), same test metrics.

Usage:
    python benchmarks/bench_gp_fit.py --n 10000          # 8,000 training rows
    python benchmarks/bench_gp_fit.py --n 0 --no-gpytorch  # all 36,584 training rows
    python benchmarks/bench_gp_fit.py --n 0 --no-gpytorch --materialize  # K stored (5.4 GB)
Writes `benchmarks/results/gp_fit_<n>.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_gp import CFG  # noqa: E402  GPyTorch's settings, shared with bench_gp.py

INIT = 0.6931  # softplus(0): GPyTorch's initial lengthscale / outputscale / noise
GPYTORCH_EPOCHS = 20


def _load(n, dtype):
    from matfree import gp

    d = gp.load_protein(n=n or None, dtype=dtype, seed=0)
    return d["X_train"], d["y_train"], d["X_test"], d["y_test"]


def _metrics(mean, var, y):
    """Test RMSE and mean negative log predictive density (Gaussian)."""
    import numpy as np

    mean, var, y = (np.asarray(a, np.float64) for a in (mean, var, y))
    rmse = float(np.sqrt(np.mean((mean - y) ** 2)))
    nll = float(np.mean(0.5 * np.log(2 * math.pi * var) + (y - mean) ** 2 / (2 * var)))
    return rmse, nll


def fit_matfree(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from matfree import gp

    jax.config.update("jax_enable_x64", True)
    X, y, Xte, yte = _load(args.n, args.dtype)
    X, y = jnp.asarray(X), jnp.asarray(y)
    n, d = X.shape
    print(f"matfree: {n} training rows, {Xte.shape[0]} test rows, {args.dtype}", flush=True)
    p0 = {
        "lengthscale": jnp.full((d,), INIT, X.dtype),
        "variance": jnp.asarray(INIT, X.dtype),
        "noise": jnp.asarray(INIT, X.dtype),
    }
    opts = {
        "kernel": "matern32",
        "num_probes": CFG["probes"],
        "depth": CFG["depth"],
        "rtol": args.rtol,
        "precond_rank": args.precond_rank,
        "gradient": args.gradient,
        "materialize": args.materialize,
    }
    linesearch = optax.scale_by_zoom_linesearch(
        max_linesearch_steps=args.max_linesearch_steps, initial_guess_strategy="one"
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    res = gp.fit(
        p0,
        X,
        y,
        key=jax.random.PRNGKey(0),
        optimizer=optax.lbfgs(linesearch=linesearch),
        num_steps=args.max_steps,
        tol=args.tol,
        throw=False,
        **opts,
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    epochs = np.cumsum(res.num_evaluations)
    print("step  epochs  loss/point    seconds")
    for i, (e, loss, s) in enumerate(zip(epochs, res.losses, res.seconds, strict=True)):
        print(f"{i:4d}  {e:6d}  {loss: .6f}  {s:8.1f}")
    print(f"status {int(res.status)}; {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)

    t0 = time.perf_counter()
    popts = {
        "kernel": "matern32",
        "precond_rank": CFG["rank"],
        "rtol": CFG["rtol"],
        "chunk_size": args.chunk_size,
        "materialize": args.materialize,
    }
    m = Xte.shape[0] if args.nll_rows is None else min(args.nll_rows, Xte.shape[0])
    pred = gp.predict(res.params, X, y, jnp.asarray(Xte[:m]), **popts)
    var = np.asarray(pred.variance, np.float64) + float(res.params["noise"])
    rmse, nll = _metrics(pred.mean, var, yte[:m])
    if m < Xte.shape[0]:  # the RMSE from the mean at every test row (one solve)
        mean = gp.predict(res.params, X, y, jnp.asarray(Xte), variance=False, **popts).mean
        rmse = float(np.sqrt(np.mean((np.asarray(mean, np.float64) - yte) ** 2)))
    predict_s = time.perf_counter() - t0
    out = {
        "n_train": n,
        "dtype": args.dtype,
        "status": int(res.status),
        "steps": len(res.losses),
        "evaluations": int(epochs[-1]) if len(epochs) else 0,
        "losses": [float(v) for v in res.losses],
        "evaluations_per_step": [int(v) for v in res.num_evaluations],
        "seconds_per_step": [float(v) for v in res.seconds],
        "wall_s": wall,
        "cpu_s": cpu,
        "compile_and_first_step_s": float(res.seconds[0]),
        "sec_per_epoch": float(sum(res.seconds[1:]) / max(epochs[-1] - epochs[0], 1)),
        "rmse": rmse,
        "nll": nll,
        "predict_s": predict_s,
        "params": {k: np.asarray(v, np.float64).tolist() for k, v in res.params.items()},
    }
    if n <= args.exact_max_n:
        out["exact_loss"] = exact_loss(X, y, out["params"])
    return out


def exact_loss(X, y, params):
    """Exact (float64 Cholesky) training loss per point at `params`."""
    import jax.numpy as jnp

    from matfree import gp

    X, y = jnp.asarray(X, jnp.float64), jnp.asarray(y, jnp.float64)
    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    lml = gp.log_marginal_likelihood(p, X, y, kernel="matern32", method="cholesky").value
    return -float(lml) / X.shape[0]


def worker_gpytorch(npz, epochs):
    """GPyTorch's Adam fit (runs in the torch venv: numpy, torch, gpytorch only).

    The model and the settings are `bench_gp.py`'s (one definition of
    "GPyTorch's settings" for both benchmarks).
    """
    import resource

    import gpytorch
    import numpy as np
    import torch
    from bench_gp import _gpytorch_model, _gpytorch_params, _gpytorch_settings

    data = np.load(npz)
    model, lik, mll, X, y = _gpytorch_model(data["X"], data["y"])
    Xte, yte = torch.as_tensor(data["Xte"]), data["yte"]
    stack = _gpytorch_settings()
    opt = torch.optim.Adam(model.parameters(), lr=CFG["lr"])
    model.train()
    losses = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with stack:
        for i in range(epochs):
            torch.manual_seed(i)
            opt.zero_grad()
            loss = -mll(model(X), y)
            loss.backward()
            opt.step()
            losses.append(float(loss))
            print(f"gpytorch epoch {i}: loss {losses[-1]:.6f}", flush=True)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = lik(model(Xte))
            mean, var = pred.mean.numpy(), pred.variance.numpy()
        predict_s = time.perf_counter() - t0
    rmse, nll = _metrics(mean, var, yte)
    params = _gpytorch_params(model, lik)
    return {
        "n_train": int(X.shape[0]),
        "epochs": epochs,
        "losses": losses,
        "wall_s": wall,
        "cpu_s": cpu,
        "rmse": rmse,
        "nll": nll,
        "predict_s": predict_s,
        "params": params,
        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "versions": f"torch {torch.__version__}, gpytorch {gpytorch.__version__}",
    }


def fit_gpytorch(args):
    import numpy as np

    X, y, Xte, yte = _load(args.gpytorch_n, "float32")
    with tempfile.TemporaryDirectory() as tmp:
        npz = pathlib.Path(tmp) / "data.npz"
        np.savez(npz, X=X, y=y, Xte=Xte, yte=yte)
        cmd = [args.torch_python, "-u", __file__, "--worker-gpytorch", str(npz)]
        cmd.append(str(GPYTORCH_EPOCHS))
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {"error": str(e)[:200]}
    sys.stdout.write(out.stdout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {out.returncode}: {tail[0][:200]}"}
    res = json.loads(lines[-1][7:])
    res["exact_loss"] = exact_loss(X, y, res["params"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="rows of protein (0: all)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--tol", type=float, default=1e-3, help="loss change over 5 steps")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--max-linesearch-steps", type=int, default=6)
    ap.add_argument("--precond-rank", type=int, default=CFG["rank"], help="matfree's fit")
    ap.add_argument("--rtol", type=float, default=CFG["rtol"], help="matfree's fit")
    ap.add_argument("--gradient", default="adjoint", choices=("hutchinson", "adjoint"))
    ap.add_argument("--chunk-size", type=int, default=512, help="gp.predict chunk_size")
    ap.add_argument(
        "--materialize",
        action="store_true",
        help="store the kernel matrix once per evaluation (memory n^2; matfree's fit)",
    )
    ap.add_argument(
        "--nll-rows",
        type=int,
        default=None,
        help="test NLL on the first N test rows only (a CG column per row); RMSE on all",
    )
    ap.add_argument("--exact-max-n", type=int, default=10000)
    ap.add_argument("--torch-python", default="/work/venvs/bench/bin/python")
    ap.add_argument("--gpytorch-n", type=int, default=10000, help="rows for GPyTorch's fit")
    ap.add_argument("--no-gpytorch", action="store_true")
    ap.add_argument("--worker-gpytorch", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_gpytorch:
        npz, epochs = args.worker_gpytorch
        print("RESULT " + json.dumps(worker_gpytorch(npz, int(epochs))), flush=True)
        return
    import _util

    out = {"machine": _util.machine(), "args": vars(args)}
    out["matfree"] = fit_matfree(args)
    print({k: v for k, v in out["matfree"].items() if not isinstance(v, list)}, flush=True)
    if not args.no_gpytorch:
        out["gpytorch"] = fit_gpytorch(args)
        print({k: v for k, v in out["gpytorch"].items() if k != "losses"}, flush=True)
    tag = "" if args.precond_rank == CFG["rank"] else f"_rank{args.precond_rank}"
    tag += "" if args.gradient == "hutchinson" else f"_{args.gradient}"
    tag += "_materialize" if args.materialize else ""
    path = HERE / "results" / f"gp_fit_{args.n or 'full'}{tag}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
