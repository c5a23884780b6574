# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Recovering a diffusion coefficient through matrix exponentials
#
# We observe `u(t) = expm(t A(k)) u0` for a few initial conditions `u0`, where
# `A(k) u = div(k grad u)` on the unit square (zero Dirichlet), and recover the
# coefficient field `k` with `matfree.pde.invert`: Adam on `log k`, gradients
# through `matfree.exp_action` (Lanczos with an adjoint VJP, memory linear in
# `n * depth`). We also check how the value and the gradient converge with the
# Krylov depth -- the gradient needs more depth than the value.
#
# Set `MATFREE_SMALL=1` for a small, fast run (used by the test suite);
# figures go to `$MATFREE_FIGURES` (default `notebooks/figures/`).

# %%
import os
import pathlib

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optax

from matfree import pde

SMALL = os.environ.get("MATFREE_SMALL", "0") == "1"
N = 12 if SMALL else 32
NUM_STEPS = 60 if SMALL else 300
DEPTHS = [6, 14, 28] if SMALL else [8, 12, 16, 24, 32, 48]
FIGDIR = pathlib.Path(
    os.environ.get("MATFREE_FIGURES", pathlib.Path(__file__).resolve().parent / "figures")
)
FIGDIR.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A true field, initial conditions, noisy observations

# %%
shape = (N, N)
k_true = pde.random_field(jax.random.PRNGKey(7), shape, contrast=2.0)
centers = [(0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7), (0.5, 0.5)]
u0 = pde.bumps(shape, centers, width=0.12)
times = [0.005, 0.01]
print("spectral bound * t:", float(pde.spectral_bound(k_true)) * times[-1])

# depth and substeps: the a-priori bound at a tight tolerance, because we
# differentiate (the gradient converges later than the value).
DEPTH = 20
# (sized for fields up to twice the largest true value)
k_cap = jnp.full(shape, 2 * float(k_true.max()))
SUBSTEPS = pde.suggest_num_substeps(k_cap, 0.005, depth=DEPTH, rtol=1e-10)
print("depth", DEPTH, "substeps", SUBSTEPS)

clean = pde.simulate(k_true, u0, times, depth=DEPTH, num_substeps=SUBSTEPS)
obs = pde.add_noise(jax.random.PRNGKey(0), clean, relative=0.01)
noise_floor = float(jnp.sum((obs - clean) ** 2) / jnp.sum(obs**2))

# %% [markdown]
# ## Inversion from a flat start

# %%
res = pde.invert(
    obs,
    u0,
    times,
    depth=DEPTH,
    num_substeps=SUBSTEPS,
    init=1.0,
    smoothness=1e-4,
    optimizer=optax.adam(0.05),
    num_steps=NUM_STEPS,
)
rel = float(jnp.linalg.norm(res.params - k_true) / jnp.linalg.norm(k_true))
rel0 = float(jnp.linalg.norm(1.0 - k_true) / jnp.linalg.norm(k_true))
print(f"relative error of k: flat start {rel0:.3f}, fitted {rel:.3f}")
print(f"final loss {res.losses[-1]:.2e}, noise floor {noise_floor:.2e}")
print(f"seconds per step (median): {float(jnp.median(jnp.asarray(res.seconds[1:]))):.4f}")

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
vmin, vmax = float(k_true.min()), float(k_true.max())
for ax, field, title in (
    (axes[0], k_true, "true k"),
    (axes[1], res.params, "recovered k"),
):
    im = ax.imshow(field, origin="lower", extent=(0, 1, 0, 1), vmin=vmin, vmax=vmax)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
im = axes[2].imshow(res.params - k_true, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu")
axes[2].set_title(f"error (relative {rel:.3f})")
fig.colorbar(im, ax=axes[2])
axes[3].semilogy(res.losses, label="loss")
axes[3].axhline(noise_floor, color="k", ls=":", label="noise floor")
axes[3].set(xlabel="Adam step", title="loss history")
axes[3].legend()
fig.tight_layout()
fig.savefig(FIGDIR / "pde_inversion.png", dpi=100)

# %% [markdown]
# ## Work–precision: value and gradient error against the Krylov depth
#
# One substep (`num_substeps=1`), error of `u(t)` and of the gradient of
# `sum(w * u(t))` w.r.t. `k` against a reference (dense `expm` at small size, a
# deep Krylov solve otherwise), as a function of the matvecs per solve.

# %%
k_eval = jnp.sqrt(k_true)
w = jax.random.normal(jax.random.PRNGKey(3), shape)
x0 = u0.sum(0)
t = 0.005


def solution_and_gradient(depth, substeps):
    """`u(t)` and the gradient of `sum(w * u(t))` w.r.t. `k` (one compiled program)."""

    def f(k):
        u = pde.solve(k, x0, t, depth=depth, num_substeps=substeps).value
        return jnp.sum(w * u), u

    (_, u), g = jax.jit(jax.value_and_grad(f, has_aux=True))(k_eval)
    return u, g


ref_depth = min(N * N, 80)
u_ref, g_ref = solution_and_gradient(ref_depth, 4)
value_err, grad_err = [], []
for depth in DEPTHS:
    u, g = solution_and_gradient(depth, 1)
    value_err.append(float(jnp.linalg.norm(u - u_ref) / jnp.linalg.norm(u_ref)))
    grad_err.append(float(jnp.linalg.norm(g - g_ref) / jnp.linalg.norm(g_ref)))
    print(f"depth {depth}: value error {value_err[-1]:.1e}, grad error {grad_err[-1]:.1e}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 4))
ax.semilogy(DEPTHS, [max(e, 1e-17) for e in value_err], "o-", label="value u(t)")
ax.semilogy(DEPTHS, [max(e, 1e-17) for e in grad_err], "s--", label="gradient w.r.t. k")
ax.set(xlabel="matvecs (depth, one substep)", ylabel="relative error", title=f"{N}x{N}")
ax.legend()
fig.tight_layout()
fig.savefig(FIGDIR / "pde_work_precision.png", dpi=100)
print("saved figures to", FIGDIR)
