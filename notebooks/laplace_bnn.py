# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Laplace approximations of a neural network with the full GGN
#
# 1. Classification of scikit-learn's digits (bundled, no download) with an
#    MLP trained to its MAP estimate: the MAP network against the diagonal
#    Laplace approximation (prior precision by a grid search over the
#    validation NLL, as practitioners do) and the full-GGN Laplace
#    approximation (prior precision by maximising the evidence, whose
#    `log det(G + A)` comes from stochastic Lanczos quadrature). Accuracy,
#    NLL, expected calibration error (ECE), confidence on out-of-distribution
#    inputs (rotated digits, noise images), reliability diagrams.
# 2. A 1-D regression with a gap in the data: the predictive band of the MAP
#    network, the diagonal and the full-GGN (Lanczos) Laplace approximation.
#
# Set `MATFREE_SMALL=1` for a small, fast run (used by the test suite); by hand
# it runs at full size.

# %%
import os
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

from matfree import laplace

SMALL = os.environ.get("MATFREE_SMALL", "0") == "1"
FIGURES = pathlib.Path(
    os.environ.get("MATFREE_FIGURES", pathlib.Path(__file__).resolve().parent / "figures")
)
FIGURES.mkdir(parents=True, exist_ok=True)
N_TRAIN = 300 if SMALL else None  # None: all 1,257 training digits
WIDTH = 16 if SMALL else 64
TRAIN_STEPS = 100 if SMALL else 1500
CAL_STEPS = 3 if SMALL else 8
DEPTH = 10 if SMALL else 20
NUM_PROBES = 4 if SMALL else 8
NUM_SAMPLES = 10 if SMALL else 30
KEY = jax.random.PRNGKey(0)


def train_map(model, X, y, loss_fn, steps, lr=1e-2):
    """Full-batch Adam on the negative log joint (NLL + prior); returns the model."""
    params, static = eqx.partition(model, eqx.is_array)
    opt = optax.adam(lr)

    @jax.jit
    def step(params, state):
        loss, grad = jax.value_and_grad(loss_fn)(params, static, X, y)
        updates, state = opt.update(grad, state)
        return optax.apply_updates(params, updates), state, loss

    state = opt.init(params)
    for _ in range(steps):
        params, state, loss = step(params, state)
    print(f"MAP training: final loss {float(loss):.4f}")
    return eqx.combine(params, static)


def sq_norm(params):
    return sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))


# %% [markdown]
# ## 1. Digits
#
# 8x8 images scaled to [0, 1], a 70/15/15 split (train / validation /
# test). The MAP estimate minimises the cross-entropy plus the Gaussian prior
# term `a0/2 |theta|^2` with `a0 = 1`.

# %%
digits = load_digits()
Xall = jnp.asarray(digits.data / 16.0)
yall = jnp.asarray(digits.target)
perm = np.random.default_rng(0).permutation(len(yall))
n_tr, n_va = int(0.7 * len(yall)), int(0.15 * len(yall))
tr, va, te = perm[:n_tr], perm[n_tr : n_tr + n_va], perm[n_tr + n_va :]
if N_TRAIN:
    tr = tr[:N_TRAIN]
Xtr, ytr, Xva, yva, Xte, yte = Xall[tr], yall[tr], Xall[va], yall[va], Xall[te], yall[te]
model = eqx.nn.MLP(64, 10, WIDTH, 2, activation=jnp.tanh, key=KEY)
a0 = 1.0


def clf_loss(params, static, X, y):
    out = jax.vmap(eqx.combine(params, static))(X)
    nll = -jnp.sum(jax.nn.log_softmax(out)[jnp.arange(y.shape[0]), y])
    return (nll + 0.5 * a0 * sq_norm(params)) / y.shape[0]


t0 = time.perf_counter()
model = train_map(model, Xtr, ytr, clf_loss, TRAIN_STEPS)
P = jax.flatten_util.ravel_pytree(eqx.filter(model, eqx.is_array))[0].shape[0]
print(f"{P} parameters, {len(ytr)} training digits, {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# **Calibration.** Diagonal Laplace: a grid search of the validation NLL over
# the prior precision. Full GGN: maximise the evidence over the prior
# precision, one per layer (weights and biases separately), from `a0`, with
# Adam (step 0.3) on its logarithm; the `log det` of the full `P x P` GGN + prior by
# stochastic Lanczos quadrature, preconditioned by the exact GGN diagonal.

# %%
kw = {"likelihood": "classification"}
grid = jnp.logspace(-2, 3, 4 if SMALL else 21)
t0 = time.perf_counter()
gs = laplace.grid_search(
    model, Xtr, ytr, Xva, yva, prior_precisions=grid, structure="diagonal", **kw
)
t_grid = time.perf_counter() - t0
print(f"diagonal: grid search prior precision {float(gs.value):.3g} ({t_grid:.1f} s)")

per_layer = jax.tree_util.tree_map(lambda p: a0, eqx.filter(model, eqx.is_array))
t0 = time.perf_counter()
cal = laplace.calibrate(
    model,
    Xtr,
    ytr,
    prior_precision=per_layer,
    key=jax.random.PRNGKey(1),
    optimizer=optax.adam(0.3),
    num_steps=CAL_STEPS,
    depth=DEPTH,
    num_probes=NUM_PROBES,
    precond="diagonal",
    **kw,
)
t_cal = time.perf_counter() - t0
prior_full = cal.params.prior_precision
print(
    "full GGN: evidence-calibrated prior precisions per leaf",
    np.round(np.array(jax.tree_util.tree_leaves(prior_full)), 3),
    f"({t_cal:.1f} s)",
)

# %% [markdown]
# **Prediction.** MAP: `softmax(f(x, theta*))`. Laplace: the linearised
# predictive with the probit approximation; the diagonal posterior's output
# variance is exact (per-example Jacobians), the full posterior's comes from
# samples `theta* + (G + A)^{-1/2} z` by Lanczos (`matfree.sqrt_action`),
# pushed through the linearised network with `jax.jvp`.

# %%
post_diag = laplace.posterior(
    model, Xtr, ytr, prior_precision=gs.value, structure="diagonal", **kw
)
post_full = laplace.posterior(model, Xtr, ytr, prior_precision=prior_full, **kw)

rot = jnp.asarray(np.rot90(np.asarray(Xte).reshape(-1, 8, 8), k=1, axes=(1, 2)))
ood_sets = {
    "rotated": rot.reshape(-1, 64),
    "noise": jax.random.uniform(jax.random.PRNGKey(2), (len(yte), 64)),
}


def map_probs(X):
    return jax.nn.softmax(jax.vmap(model)(X))


def lap_probs(post, X, key):
    return laplace.predict(
        post, X, key=key, num_samples=NUM_SAMPLES, depth=min(DEPTH, P)
    ).probs


methods = {
    "MAP": map_probs,
    "diagonal Laplace": lambda X: lap_probs(post_diag, X, None),
    "full-GGN Laplace": lambda X: lap_probs(post_full, X, jax.random.PRNGKey(3)),
}
# One prediction per method on the test digits and both OOD sets together
# (the same posterior samples for all three).
X_all = jnp.concatenate([Xte, *ood_sets.values()])
splits = np.cumsum([len(Xte)] + [len(X) for X in ood_sets.values()])[:-1]
rows, test_probs = {}, {}
for name, fn in methods.items():
    t0 = time.perf_counter()
    p, *p_ood = jnp.split(fn(X_all), splits)
    test_probs[name] = p
    rows[name] = {
        "accuracy": float(laplace.accuracy(p, yte)),
        "NLL": float(laplace.nll(p, yte)),
        "ECE": float(laplace.ece(p, yte)),
        **{
            f"conf. {k}": float(laplace.confidence(q))
            for k, q in zip(ood_sets, p_ood, strict=True)
        },
        "seconds": time.perf_counter() - t0,
    }
header = ["accuracy", "NLL", "ECE", "conf. rotated", "conf. noise", "seconds"]
print(f"{'':18s}" + "".join(f"{h:>15s}" for h in header))
for name, r in rows.items():
    print(f"{name:18s}" + "".join(f"{r[h]:15.4f}" for h in header))

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
for ax, (name, p) in zip(axes, test_probs.items(), strict=True):
    r = laplace.reliability(p, yte, num_bins=10)
    centers = (r.edges[1:] + r.edges[:-1]) / 2
    ax.bar(centers, np.nan_to_num(np.asarray(r.accuracy)), width=0.09, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(title=f"{name}\nECE {rows[name]['ECE']:.3f}", xlabel="confidence")
axes[0].set_ylabel("accuracy")
fig.tight_layout()
fig.savefig(FIGURES / "laplace_reliability.png", dpi=120)

# %% [markdown]
# ## 2. Regression with a gap
#
# `y = sin(3x) + noise` on two clusters of inputs with a gap between them. An
# MLP (tanh, two hidden layers) at its MAP estimate; the prior precision and
# the noise `sigma` calibrated by the evidence of the full GGN (matrix-free).
# The bands are two standard deviations of the predictive (the network's
# variance plus `sigma^2`).

# %%
n1d = 40 if SMALL else 150
k1, k2 = jax.random.split(jax.random.PRNGKey(4))
x1 = jnp.concatenate(
    [
        jax.random.uniform(k1, (n1d // 2,), minval=-1.0, maxval=-0.35),
        jax.random.uniform(k2, (n1d // 2,), minval=0.35, maxval=1.0),
    ]
)
y1 = jnp.sin(3 * x1) + 0.1 * jax.random.normal(jax.random.PRNGKey(5), x1.shape)
X1 = x1[:, None]
rmodel = eqx.nn.MLP(1, "scalar", 16 if SMALL else 50, 2, activation=jnp.tanh, key=KEY)
sigma0 = 0.1


def reg_loss(params, static, X, y):
    out = jax.vmap(eqx.combine(params, static))(X)
    return (jnp.sum((y - out) ** 2) / (2 * sigma0**2) + 0.5 * sq_norm(params)) / len(y)


rmodel = train_map(rmodel, X1, y1, reg_loss, TRAIN_STEPS * 2)
Pr = jax.flatten_util.ravel_pytree(eqx.filter(rmodel, eqx.is_array))[0].shape[0]
rkw = {"likelihood": "regression"}
rcal = laplace.calibrate(
    rmodel,
    X1,
    y1,
    prior_precision=1.0,
    sigma=sigma0,
    key=jax.random.PRNGKey(6),
    num_steps=CAL_STEPS,
    depth=min(DEPTH, Pr),
    num_probes=NUM_PROBES,
    progress=False,
    **rkw,
)
a_r, s_r = rcal.params.prior_precision, rcal.params.sigma
print(
    f"regression: {Pr} parameters, prior precision {float(a_r):.3g}, sigma {float(s_r):.3g}"
)

grid1 = jnp.linspace(-2, 2, 200)[:, None]
bands = {"MAP (sigma only)": None}
for structure in ("diagonal", "full"):
    post = laplace.posterior(
        rmodel, X1, y1, prior_precision=a_r, sigma=s_r, structure=structure, **rkw
    )
    pred = laplace.predict(
        post,
        grid1,
        key=jax.random.PRNGKey(7),
        num_samples=max(NUM_SAMPLES, 50),
        depth=min(DEPTH, Pr),
    )
    bands[f"{structure} Laplace" + (" (Lanczos)" if structure == "full" else "")] = pred
mean1 = jax.vmap(rmodel)(grid1)

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
for ax, (name, pred) in zip(axes, bands.items(), strict=True):
    var = s_r**2 + (0.0 if pred is None else pred.variance)
    sd = jnp.sqrt(var)
    ax.fill_between(grid1[:, 0], mean1 - 2 * sd, mean1 + 2 * sd, alpha=0.3)
    ax.plot(grid1[:, 0], mean1, lw=1.5)
    ax.scatter(x1, y1, s=8, c="k")
    ax.set(title=name, xlabel="x", ylim=(-3, 3))
axes[0].set_ylabel("y")
fig.tight_layout()
fig.savefig(FIGURES / "laplace_regression.png", dpi=120)
print("saved", FIGURES / "laplace_reliability.png", FIGURES / "laplace_regression.png")
