# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Training a deep autoencoder: Adam, Hessian-free and Krylov subspace descent
#
# Martens (2010) trained deep autoencoders with Hessian-free optimisation:
# damped Gauss–Newton steps solved by CG. Vinyals & Povey (2012) replaced the
# CG solve with a small optimisation over a Krylov subspace of the
# Gauss–Newton matrix. Both need only curvature-vector products, which JAX
# gives at the cost of about two gradients. Here the three optimisers train
# the same autoencoder on scikit-learn's bundled **digits** (1,797 images of
# 8 x 8 pixels, scaled to [0, 1]; no download):
#
# - Adam (`optax.adam`, mini-batches of 128, learning rate 1e-3),
# - Hessian-free (`matfree.optim.hessian_free`): gradient on all images,
#   Gauss–Newton products on a curvature mini-batch of 256,
# - Krylov subspace descent (`matfree.optim.krylov_subspace_descent`, depth
#   10): the Krylov basis from the Gauss–Newton matrix on a curvature batch
#   of 256, the subspace minimisation on a batch of 512.
#
# We plot the training loss (binary cross-entropy per pixel) against wall
# time and against epochs (passes over the data set; a Gauss–Newton product
# on `b` images counts as `2b/n` of an epoch), and the spectral density of the
# loss Hessian (`matfree.eig.spectral_density`) at the start and at the end.
#
# `MATFREE_SMALL=1` (used by the test suite) gives a short run.

# %%
import os
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

from matfree import eig, optim

SMALL = os.environ.get("MATFREE_SMALL", "0") == "1"
FIGURES = pathlib.Path(
    os.environ.get("MATFREE_FIGURES", pathlib.Path(__file__).resolve().parent / "figures")
)
FIGURES.mkdir(parents=True, exist_ok=True)
BUDGET = 2.0 if SMALL else 40.0  # seconds of training per optimiser
MAX_STEPS = {"adam": 150 if SMALL else 100_000, "second": 6 if SMALL else 10_000}
LAYERS = (64, 32, 16, 6, 16, 32, 64) if not SMALL else (64, 16, 6, 16, 64)

images = load_digits().data / 16.0
if SMALL:
    images = images[:400]
n = images.shape[0]
data = jnp.asarray(images)
key = jax.random.PRNGKey(0)
print(f"{n} images, layers {LAYERS}")


def init_params(key):
    params = []
    for i, (a, b) in enumerate(itertools.pairwise(LAYERS)):
        k = jax.random.fold_in(key, i)
        params.append({"W": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)})
    return params


def model_on(x):
    """The autoencoder's output logits on images `x`, as a function of the parameters."""

    def model(params):
        h = x
        for layer in params[:-1]:
            h = jnp.tanh(h @ layer["W"] + layer["b"])
        return h @ params[-1]["W"] + params[-1]["b"]

    return model


def loss_on(x):
    """Binary cross-entropy per pixel of logits against images `x`."""

    def loss(logits):
        return jnp.mean(jnp.logaddexp(0.0, logits) - x * logits)

    return loss


def objective_on(x):
    return lambda params: loss_on(x)(model_on(x)(params))


f_all = jax.jit(objective_on(data))
params0 = init_params(key)
num_params = sum(p.size for p in jax.tree_util.tree_leaves(params0))
print(f"{num_params} parameters, initial loss {float(f_all(params0)):.4f}")


# %% [markdown]
# ## The training loops
#
# Each optimiser runs one jitted step function (random batches drawn inside
# from a step counter) until the time budget is used up; the first step's
# compile time is excluded and reported.


# %%
def batch(key, size):
    idx = jax.random.choice(key, n, (min(size, n),), replace=False)
    return data[idx]


def train(step, state, max_steps, epochs_of):
    t0 = time.perf_counter()
    jax.block_until_ready(step(state))  # compile
    compile_s = time.perf_counter() - t0
    ts, losses, epochs = [0.0], [float(f_all(state[0]))], [0.0]
    start = time.perf_counter()
    for _ in range(max_steps):
        state = jax.block_until_ready(step(state))
        ts.append(time.perf_counter() - start)
        losses.append(float(f_all(state[0])))
        epochs.append(epochs_of(state))
        if ts[-1] > BUDGET:
            break
    return {
        "t": ts,
        "loss": losses,
        "epochs": epochs,
        "compile": compile_s,
        "params": state[0],
    }


adam = optax.adam(1e-3)


@jax.jit
def adam_step(s):
    params, opt_state, k = s
    xb = batch(jax.random.fold_in(key, k), 128)
    grad = jax.grad(objective_on(xb))(params)
    updates, opt_state = adam.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, k + 1


def second_order_step(opt, curvature_batch, inner_batch=None):
    @jax.jit
    def step(s):
        params, opt_state = s
        k = optax.tree_utils.tree_get(opt_state, "count")
        xc = batch(jax.random.fold_in(key, 2 * k + 1), curvature_batch)
        value, grad = jax.value_and_grad(f_all)(params)
        f_inner = f_all
        if inner_batch is not None:
            f_inner = objective_on(batch(jax.random.fold_in(key, 2 * k + 2), inner_batch))
            value = f_inner(params)
        updates, opt_state = opt.update(
            grad,
            opt_state,
            params,
            value_fn=f_inner,
            value=value,
            model_fn=model_on(xc),
            loss_fn=loss_on(xc),
        )
        return optax.apply_updates(params, updates), opt_state

    return step


runs = {}
zero = jnp.int32(0)
runs["Adam"] = train(
    adam_step,
    (params0, adam.init(params0), zero),
    MAX_STEPS["adam"],
    lambda s: int(s[2]) * 128 / n,
)

hf = optim.hessian_free(damping=1.0, maxiter=50 if not SMALL else 10)
hf_step = second_order_step(hf, 256)


def hf_epochs(s):
    st = s[1]
    return (
        int(st.num_grads) + 0.5 * int(st.num_values) + int(st.num_curvature) * 2 * 256 / n
    )


runs["Hessian-free"] = train(
    hf_step, (params0, hf.init(params0)), MAX_STEPS["second"], hf_epochs
)

DEPTH = 10 if not SMALL else 4
ksd = optim.krylov_subspace_descent(depth=DEPTH, num_inner=3)
ksd_step = second_order_step(ksd, 256, inner_batch=512)


def ksd_epochs(s):
    st = s[1]
    m = min(512, n) / n  # the inner batch, as a fraction of an epoch
    lanczos = int(st.count) * DEPTH * 2 * min(256, n) / n
    subspace = (int(st.num_curvature) - int(st.count) * DEPTH) * 2 * m
    return (
        int(st.count)
        + m * (int(st.num_grads) - int(st.count) + int(st.num_values))
        + (lanczos + subspace)
    )


runs["Krylov subspace descent"] = train(
    ksd_step, (params0, ksd.init(params0)), MAX_STEPS["second"], ksd_epochs
)

# %% [markdown]
# ## Results

# %%
print(
    f"{'optimiser':24s} {'steps':>6s} {'epochs':>8s} {'final loss':>10s} "
    f"{'compile [s]':>11s}"
)
for name, r in runs.items():
    print(
        f"{name:24s} {len(r['t']) - 1:6d} {r['epochs'][-1]:8.1f} {r['loss'][-1]:10.4f} "
        f"{r['compile']:11.2f}"
    )

# %% [markdown]
# ## The Hessian's spectral density at the start and at the end
#
# Stochastic Lanczos quadrature on the Hessian of the full-data loss
# (forward-over-reverse products), before training and after Hessian-free
# training.


# %%
def hessian_density(params, key):
    x, unravel = jax.flatten_util.ravel_pytree(params)
    g = jax.grad(lambda z: f_all(unravel(z)))
    _, hvp = jax.linearize(g, x)
    depth = 10 if SMALL else 60
    return eig.spectral_density(hvp, x, key=key, depth=depth, num_probes=2 if SMALL else 6)


dens_start = hessian_density(params0, jax.random.PRNGKey(1))
dens_end = hessian_density(runs["Hessian-free"]["params"], jax.random.PRNGKey(2))

fig, ax = plt.subplots(1, 3, figsize=(15, 4))
for name, r in runs.items():
    ax[0].plot(r["t"], r["loss"], label=name)
    ax[1].plot(r["epochs"], r["loss"], label=name)
ax[0].set(xlabel="seconds (compile excluded)", ylabel="training loss", title="loss vs time")
ax[1].set(
    xlabel="epochs (gradient-equivalents)", ylabel="training loss", title="loss vs epochs"
)
ax[1].set_xscale("symlog")
ax[0].legend()
for dens, label in ((dens_start, "start"), (dens_end, "after Hessian-free")):
    ax[2].semilogy(dens.grid, jnp.maximum(dens.density, 1e-6), label=label)
ax[2].set(xlabel="eigenvalue", ylabel="density", title="Hessian spectral density (SLQ)")
ax[2].legend()
fig.tight_layout()
fig.savefig(FIGURES / "krylov_subspace_descent.png", dpi=110)
print("saved", FIGURES / "krylov_subspace_descent.png")

# %% [markdown]
# ## Reading the figure
#
# Per step, the curvature methods do far more work than Adam (a CG solve or
# a Krylov basis and subspace Newton steps): against epochs Adam wins
# clearly. Against time, in the run saved in `figures/` (2-core CPU, shared
# and loaded, 40 s each), Hessian-free reached a loss of 0.258, Krylov
# subspace descent 0.294 and Adam (untuned learning rate 1e-3) 0.298; the
# benchmark in `benchmarks/RESULTS.md` measured the same order after 30 s.
# The spectral density shows why curvature helps: the Hessian's eigenvalues
# spread over several orders of magnitude, with a few outliers and a bulk
# near zero (and negative eigenvalues, which the Gauss–Newton matrix
# avoids).
