"""Laplace evidence with the full GGN: scaling in the parameter count, and laplace-torch.

(a) Scaling: one evidence evaluation (`matfree.laplace.log_evidence`, SLQ)
    and evidence + gradient w.r.t. the (log) prior precision, for MLPs of
    10^3 ... 10^6 parameters on a fixed synthetic classification batch.
    Every size runs in a fresh subprocess: peak memory is the process's peak
    resident set size (plus XLA's compiled-memory estimate).
(b) Digits (scikit-learn): an MLP trained once in JAX; the same weights copied
    into torch for laplace-torch 0.3 (`hessian_structure` "diag", "kron" and
    "full", `optimize_prior_precision(method="marglik")`, probit predictive)
    and ours (full GGN by Lanczos, evidence calibration, probit predictive).
    Seconds to calibrate, test NLL, ECE, OOD confidence. laplace-torch runs
    in its own venv (`/work/venvs/bench`, torch CPU) given by `--torch-python`.

Usage: python benchmarks/bench_laplace.py [--quick] [--part scaling|digits|all]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

SCALING = {"n": 256, "d_in": 64, "classes": 10, "depth": 10, "probes": 4, "chunk": 2}
DIGITS = {"width": 64, "steps": 1500, "depth": 20, "probes": 8, "cal_steps": 8}


def _rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _mlp(width, key, d_in, d_out):
    import equinox as eqx
    import jax.numpy as jnp

    return eqx.nn.MLP(d_in, d_out, width, 2, activation=jnp.tanh, key=key)


# -- (a) scaling --------------------------------------------------------------


def worker_scaling(width: int, dtype: str):
    import equinox as eqx
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    import jax.flatten_util
    import jax.numpy as jnp
    from _util import compile_jit, peak_bytes

    from matfree import laplace

    c = SCALING
    key = jax.random.PRNGKey(0)
    model = _mlp(width, key, c["d_in"], c["classes"])
    P = jax.flatten_util.ravel_pytree(eqx.filter(model, eqx.is_array))[0].shape[0]
    X = jax.random.normal(jax.random.PRNGKey(1), (c["n"], c["d_in"]))
    y = jax.random.randint(jax.random.PRNGKey(2), (c["n"],), 0, c["classes"])

    def value(log_a, key):
        return laplace.log_evidence(
            model,
            X,
            y,
            likelihood="classification",
            prior_precision=jnp.exp(log_a),
            key=key,
            depth=c["depth"],
            num_probes=c["probes"],
            probe_chunk_size=c["chunk"],
            throw=False,
        ).value

    la = jnp.asarray(0.0)
    k = jax.random.PRNGKey(3)
    f, tc_f = compile_jit(value, la, k)
    g, tc_g = compile_jit(jax.value_and_grad(value), la, k)
    out = {"width": width, "P": int(P), "dtype": dtype}
    out.update(compile_value_s=tc_f, compile_grad_s=tc_g)
    for name, fn in (("value", f), ("value_grad", g)):
        jax.block_until_ready(fn(la, k))  # warm-up
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(la, k))
            ts.append(time.perf_counter() - t0)
        out[f"{name}_s"] = min(ts)
        out[f"{name}_xla_gib"] = (peak_bytes(fn) or 0) / 2**30
    out["peak_rss_gib"] = _rss_gib()
    print(json.dumps(out))


def run_scaling(widths, dtype, timeout):
    rows = []
    for w in widths:
        cmd = [sys.executable, __file__, "--worker", "scaling", "--width", str(w)]
        cmd += ["--dtype", dtype]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            rows.append({"width": w, "error": f"timeout after {timeout} s"})
            print(rows[-1], flush=True)
            continue
        if proc.returncode != 0:
            rows.append({"width": w, "error": proc.stderr.strip().splitlines()[-1][:200]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows[-1]["wall_s"] = time.perf_counter() - t0
        print(rows[-1], flush=True)
    return rows


# -- (b) digits vs laplace-torch -----------------------------------------------


def _digits_split():
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    n_tr, n_va = int(0.7 * len(y)), int(0.15 * len(y))
    tr, va, te = perm[:n_tr], perm[n_tr : n_tr + n_va], perm[n_tr + n_va :]
    rot = np.rot90(X[te].reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(-1, 64)
    noise = np.random.default_rng(1).uniform(size=(len(te), 64)).astype(np.float32)
    return {
        "Xtr": X[tr],
        "ytr": y[tr],
        "Xva": X[va],
        "yva": y[va],
        "Xte": X[te],
        "yte": y[te],
        "rot": rot.copy(),
        "noise": noise,
    }


def run_digits_jax(npz_path, quick):
    """Train the MAP MLP (float32), save weights + data, run ours; return metrics."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from matfree import laplace

    c = dict(DIGITS)
    if quick:
        c.update(steps=300, cal_steps=5, depth=10, probes=4)
    data = _digits_split()
    Xtr, ytr = jnp.asarray(data["Xtr"]), jnp.asarray(data["ytr"])
    model = _mlp(c["width"], jax.random.PRNGKey(0), 64, 10)
    params, static = eqx.partition(model, eqx.is_array)
    a0 = 1.0

    def loss(p):
        out = jax.vmap(eqx.combine(p, static))(Xtr)
        nll = -jnp.sum(jax.nn.log_softmax(out)[jnp.arange(len(ytr)), ytr])
        reg = sum(jnp.sum(q**2) for q in jax.tree_util.tree_leaves(p))
        return (nll + 0.5 * a0 * reg) / len(ytr)

    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s, v

    for _ in range(c["steps"]):
        params, state, _ = step(params, state)
    model = eqx.combine(params, static)
    layers = {}
    for i, lin in enumerate(model.layers):
        layers[f"W{i}"] = np.asarray(lin.weight)
        layers[f"b{i}"] = np.asarray(lin.bias)
    np.savez(npz_path, **data, **layers)

    kw = {"likelihood": "classification"}
    t0 = time.perf_counter()
    cal = laplace.calibrate(
        model,
        Xtr,
        ytr,
        prior_precision=a0,
        key=jax.random.PRNGKey(1),
        optimizer=optax.adam(0.3),
        num_steps=c["cal_steps"],
        depth=c["depth"],
        num_probes=c["probes"],
        precond="diagonal",
        progress=False,
        **kw,
    )
    a = jax.block_until_ready(cal.params.prior_precision)
    t_cal = time.perf_counter() - t0
    post = laplace.posterior(model, Xtr, ytr, prior_precision=a, **kw)
    Xall = jnp.concatenate([jnp.asarray(data[k]) for k in ("Xte", "rot", "noise")])
    t0 = time.perf_counter()
    probs = laplace.predict(
        post, Xall, key=jax.random.PRNGKey(2), num_samples=30, depth=c["depth"]
    ).probs
    t_pred = time.perf_counter() - t0
    m = len(data["yte"])
    p, pr, pn = probs[:m], probs[m : 2 * m], probs[2 * m :]
    yte = jnp.asarray(data["yte"])
    rows = {
        "ours full GGN (Lanczos), evidence": {
            "prior_precision": float(a),
            "calibrate_s": t_cal,
            "predict_s": t_pred,
            **_metrics(laplace, p, pr, pn, yte),
        }
    }
    mp = jax.nn.softmax(jax.vmap(model)(Xall))
    rows["MAP"] = {
        "calibrate_s": 0.0,
        **_metrics(laplace, mp[:m], mp[m : 2 * m], mp[2 * m :], yte),
    }
    postd = laplace.posterior(
        model, Xtr, ytr, prior_precision=a, structure="diagonal", **kw
    )
    pd = laplace.predict(postd, Xall).probs
    rows["ours diagonal, same prior"] = {
        "calibrate_s": float("nan"),
        **_metrics(laplace, pd[:m], pd[m : 2 * m], pd[2 * m :], yte),
    }
    return rows, c


def _metrics(laplace, p, pr, pn, y):
    return {
        "accuracy": float(laplace.accuracy(p, y)),
        "nll": float(laplace.nll(p, y)),
        "ece": float(laplace.ece(p, y)),
        "conf_rotated": float(laplace.confidence(pr)),
        "conf_noise": float(laplace.confidence(pn)),
    }


TORCH_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from torch.utils.data import DataLoader, TensorDataset
from laplace import Laplace
torch.set_num_threads(2)
d = np.load(sys.argv[1])
structure = sys.argv[2]
W = [k for k in d.files if k.startswith("W")]
layers = []
for i in range(len(W)):
    lin = torch.nn.Linear(*d[f"W{i}"].shape[::-1])
    lin.weight.data = torch.tensor(d[f"W{i}"]); lin.bias.data = torch.tensor(d[f"b{i}"])
    layers += [lin, torch.nn.Tanh()]
model = torch.nn.Sequential(*layers[:-1])
Xtr, ytr = torch.tensor(d["Xtr"]), torch.tensor(d["ytr"])
loader = DataLoader(TensorDataset(Xtr, ytr), batch_size=256)
t0 = time.perf_counter()
la = Laplace(model, "classification", subset_of_weights="all", hessian_structure=structure,
             prior_precision=1.0)
la.fit(loader)
la.optimize_prior_precision(method="marglik", pred_type="glm", link_approx="probit")
t_cal = time.perf_counter() - t0
def probs(X):
    with torch.no_grad():
        return la(torch.tensor(X), pred_type="glm", link_approx="probit").numpy()
t0 = time.perf_counter()
p, pr, pn = probs(d["Xte"]), probs(d["rot"]), probs(d["noise"])
t_pred = time.perf_counter() - t0
y = d["yte"]
def ece(p, y, bins=15):
    conf, pred = p.max(1), p.argmax(1)
    idx = np.clip(np.searchsorted(np.linspace(0, 1, bins + 1), conf, side="left") - 1, 0, bins - 1)
    e = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            e += abs((pred[m] == y[m]).mean() - conf[m].mean()) * m.sum()
    return e / len(y)
pp = np.clip(p[np.arange(len(y)), y], 1e-12, 1)
out = {"prior_precision": float(la.prior_precision.mean()), "calibrate_s": t_cal,
       "predict_s": t_pred, "accuracy": float((p.argmax(1) == y).mean()),
       "nll": float(-np.log(pp).mean()), "ece": float(ece(p, y)),
       "conf_rotated": float(pr.max(1).mean()), "conf_noise": float(pn.max(1).mean()),
       "versions": f"torch {torch.__version__}, laplace-torch "
                   + __import__("importlib.metadata").metadata.version("laplace-torch")}
print(json.dumps(out))
"""


def run_digits_torch(npz_path, torch_python, timeout):
    rows = {}
    script = pathlib.Path(npz_path).with_suffix(".torch.py")
    script.write_text(TORCH_SCRIPT)
    # "full" is left out: at P = 8,970 its marglik loop factorises a dense P x P
    # matrix at every one of its 100 steps (minutes each on this machine).
    for structure in ("diag", "kron"):
        name = f"laplace-torch {structure}, marglik"
        try:
            proc = subprocess.run(
                [torch_python, str(script), npz_path, structure],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (subprocess.TimeoutExpired, FileNotFoundError) as err:
            rows[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
            continue
        if proc.returncode != 0:
            rows[name] = {"error": proc.stderr.strip().splitlines()[-1][:300]}
        else:
            rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, rows[name], flush=True)
    return rows


def render(results) -> str:
    """The markdown section of `benchmarks/RESULTS.md` from the JSON results."""
    lines = ["## Laplace evidence with the full GGN (`benchmarks/bench_laplace.py`)", ""]
    lines += [f"Machine: {results.get('machine', '?')}.", ""]
    if "scaling" in results:
        c = results["scaling_config"]
        lines += [
            f"(a) Scaling. MLP 64 -> w -> w -> 10 (tanh), {c['n']} examples, float32, "
            f"SLQ depth {c['depth']}, {c['probes']} probes in chunks of {c['chunk']}; "
            "evidence and evidence + gradient w.r.t. log prior precision, jit-compiled, "
            "best of 2 after a warm-up; peak RSS of a fresh process.",
            "",
            "| width | P | evidence (s) | evidence + grad (s) | ratio | compile value / "
            "grad (s) | peak RSS (GiB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["scaling"]:
            if "error" in r:
                lines.append(f"| {r['width']} | - | {r['error']} | | | | |")
                continue
            ratio = r["value_grad_s"] / r["value_s"]
            lines.append(
                f"| {r['width']} | {r['P']:,} | {r['value_s']:.3f} | "
                f"{r['value_grad_s']:.3f} | {ratio:.1f}x | {r['compile_value_s']:.0f} / "
                f"{r['compile_grad_s']:.0f} | {r['peak_rss_gib']:.2f} |"
            )
        lines.append("")
    if "digits" in results:
        c = results["digits_config"]
        lines += [
            f"(b) Digits (1,257 train / 270 test; MLP 64 -> {c['width']} -> "
            f"{c['width']} -> 10, tanh, MAP by {c['steps']} Adam steps in JAX, float32; "
            "the same weights in torch). Ours: evidence calibration of a scalar prior "
            f"precision ({c['cal_steps']} Adam(0.3) steps, SLQ depth {c['depth']}, "
            f"{c['probes']} probes, diagonal preconditioner), probit predictive from 30 "
            "Lanczos samples. laplace-torch: `fit` + "
            "`optimize_prior_precision(method='marglik')`, probit predictive.",
            "",
            "| method | prior prec. | calibrate (s) | acc. | NLL | ECE | conf. rotated "
            "| conf. noise |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["digits"].items():
            if "error" in r:
                lines.append(f"| {name} | {r['error']} | | | | | | |")
                continue
            pp = r.get("prior_precision")
            pp = "-" if pp is None else f"{pp:.3g}"
            lines.append(
                f"| {name} | {pp} | {r['calibrate_s']:.1f} | {r['accuracy']:.4f} | "
                f"{r['nll']:.4f} | {r['ece']:.4f} | {r['conf_rotated']:.3f} | "
                f"{r['conf_noise']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", default="all", choices=("scaling", "digits", "all"))
    ap.add_argument("--worker", default=None)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--widths", default="20,90,300,990")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--torch-python", default="/work/venvs/bench/bin/python")
    ap.add_argument("--out", default=str(HERE / "results" / "laplace.json"))
    ap.add_argument("--render", action="store_true", help="print the markdown of --out")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(pathlib.Path(args.out).read_text())))
        return
    if args.worker == "scaling":
        worker_scaling(args.width, args.dtype)
        return
    from _util import machine

    results = {"machine": machine(), "scaling_config": SCALING}
    widths = [int(w) for w in args.widths.split(",")]
    if args.quick:
        widths = widths[:2]
    if args.part in ("scaling", "all"):
        results["scaling"] = run_scaling(widths, args.dtype, args.timeout)
    if args.part in ("digits", "all"):
        npz = "/tmp/bench_laplace_digits.npz"
        ours, cfg = run_digits_jax(npz, args.quick)
        results["digits_config"] = cfg
        results["digits"] = {
            **ours,
            **run_digits_torch(npz, args.torch_python, args.timeout),
        }
        for k, v in results["digits"].items():
            print(k, v, flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(results)
    out.write_text(json.dumps(old, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    main()
