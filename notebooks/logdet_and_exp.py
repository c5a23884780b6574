# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Log-determinants, spectral densities and exp-actions, matrix-free
#
# We estimate `log det(K + s I)` of an RBF kernel matrix with stochastic
# Lanczos quadrature (`matfree.logdet`), compare value and gradient with dense
# Cholesky, measure how the error depends on the Krylov depth and the number of
# probes, plot a spectral density (`matfree.eig.spectral_density`), and check
# `matfree.exp_action` against `expm` on a 2-D diffusion operator.
#
# Set `MATFREE_SMALL=1` for a small, fast run (used by the test suite).

# %%
import os
import pathlib

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import matfree
from matfree import _dense, decomp, eig, operators

SMALL = os.environ.get("MATFREE_SMALL", "0") == "1"
N = 200 if SMALL else 1000
DEPTHS = [2, 8, 32] if SMALL else [2, 4, 8, 12, 16, 24, 32, 48]
PROBES = [2, 32] if SMALL else [2, 4, 8, 16, 32, 64]
NUM_KEYS = 8 if SMALL else 20
FIGDIR = pathlib.Path(
    os.environ.get("MATFREE_FIGURES", pathlib.Path(__file__).resolve().parent / "figures")
)
FIGDIR.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A kernel matrix, dense and matrix-free

# %%
x = jax.random.uniform(jax.random.PRNGKey(0), (N, 2))
params = {"lengthscale": 0.2, "variance": 1.0, "noise": 1e-2}


def matvec_of(p):
    return operators.kernel_matvec(
        x, lengthscale=p["lengthscale"], variance=p["variance"], noise=p["noise"]
    )


def dense_matrix(p):
    K = operators.kernel_matrix(x, x, lengthscale=p["lengthscale"], variance=p["variance"])
    return K + p["noise"] * jnp.eye(N)


def dense_logdet(p):
    return 2 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(dense_matrix(p)))))


def slq(p, key, depth, num_probes):
    return matfree.logdet(
        matvec_of(p), jnp.zeros(N), key=key, depth=depth, num_probes=num_probes
    ).value


ref, ref_grad = jax.value_and_grad(dense_logdet)(params)
est, grad = jax.jit(jax.value_and_grad(slq), static_argnums=(2, 3))(
    params, jax.random.PRNGKey(1), 32, 32
)
print(f"dense logdet {ref:.4f}, SLQ (depth 32, 32 probes) {est:.4f}")
for name in params:
    print(f"  d/d{name}: dense {ref_grad[name]:.4f}, SLQ {grad[name]:.4f}")

# %% [markdown]
# ## Error vs depth and vs number of probes
#
# The error has two parts: the quadrature error (depth) and the Monte-Carlo
# error (probes). For the depth curve we keep the probes fixed and compare
# with the exact quadratic forms `z^T log(A) z` of the same probes, so only the
# quadrature error remains. For the probe curve we use a converged depth and
# report the root-mean-square error over random keys, relative to dense.

# %%
Z = jax.random.rademacher(jax.random.PRNGKey(2), (16, N), dtype=float)


def exact_forms(p):
    # Dense log(A) with the tie-safe (Daleckii-Krein) derivative: the kernel
    # spectrum has many nearly equal eigenvalues at the noise level, where the
    # derivative of `jnp.linalg.eigh` is NaN.
    logA = _dense.funm_sym(jnp.log, dense_matrix(p))
    return jnp.mean(jnp.sum((Z @ logA) * Z, axis=1))


def slq_fixed(p, depth):
    res = decomp.lanczos(matvec_of(p), Z, depth=depth, batched=True)
    quad = res.init_norm**2 * _dense.funm_sym(jnp.log, res.tridiag())[:, 0, 0]
    return jnp.mean(quad)


exact_val, exact_grad = jax.value_and_grad(exact_forms)(params)
depth_err, depth_grad_err = [], []
for depth in DEPTHS:
    val, g = jax.jit(jax.value_and_grad(slq_fixed), static_argnums=1)(params, depth)
    depth_err.append(float(jnp.abs(val - exact_val) / jnp.abs(exact_val)))
    depth_grad_err.append(
        float(
            jnp.abs(g["lengthscale"] - exact_grad["lengthscale"])
            / jnp.abs(exact_grad["lengthscale"])
        )
    )
    print(
        f"depth {depth:3d}: rel. quadrature error value {depth_err[-1]:.1e}, "
        f"d/dlengthscale {depth_grad_err[-1]:.1e}"
    )

probe_err, probe_grad_err = [], []
keys = jax.random.split(jax.random.PRNGKey(3), NUM_KEYS)
depth_conv = DEPTHS[-1]
for m in PROBES:
    f = jax.jit(
        jax.vmap(jax.value_and_grad(slq), in_axes=(None, 0, None, None)),
        static_argnums=(2, 3),
    )
    vals, grads = f(params, keys, depth_conv, m)
    probe_err.append(float(jnp.sqrt(jnp.mean((vals - ref) ** 2)) / jnp.abs(ref)))
    gl = grads["lengthscale"]
    probe_grad_err.append(
        float(
            jnp.sqrt(jnp.mean((gl - ref_grad["lengthscale"]) ** 2))
            / jnp.abs(ref_grad["lengthscale"])
        )
    )
    print(
        f"{m:4d} probes: rel. RMS error value {probe_err[-1]:.1e}, "
        f"d/dlengthscale {probe_grad_err[-1]:.1e}"
    )

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].semilogy(DEPTHS, depth_err, "o-", label="log det")
axes[0].semilogy(DEPTHS, depth_grad_err, "s-", label="d/d lengthscale")
axes[0].set(
    xlabel="depth", ylabel="relative quadrature error", title=f"fixed 16 probes, RBF n={N}"
)
axes[0].legend()
axes[1].loglog(PROBES, probe_err, "o-", label="log det")
axes[1].loglog(PROBES, probe_grad_err, "s-", label="d/d lengthscale")
axes[1].loglog(
    PROBES, probe_err[0] * (PROBES[0] / jnp.array(PROBES)) ** 0.5, "k:", label="1/sqrt(m)"
)
axes[1].set(xlabel="probes", ylabel="relative RMS error", title=f"depth {depth_conv}")
axes[1].legend()
fig.tight_layout()
fig.savefig(FIGDIR / "logdet_error_vs_depth_and_probes.png", dpi=110)

# %% [markdown]
# ## Spectral density
#
# Stochastic Lanczos quadrature also gives the eigenvalue distribution. Kernel
# spectra span many orders of magnitude (a density on a linear axis shows one
# spike), so we plot the density of a 2-D Laplacian, whose spectrum is spread
# out, with a histogram of its exact eigenvalues.

# %%
side = 12 if SMALL else 40
lap = operators.laplace_2d((side, side))
n_lap = side * side
sd = eig.spectral_density(
    lap,
    jnp.zeros(n_lap),
    key=jax.random.PRNGKey(4),
    depth=30,
    num_probes=10 if SMALL else 30,
    smoothing=0.08,
)
exact = jnp.linalg.eigvalsh(jax.vmap(lap)(jnp.eye(n_lap)))
fig, ax = plt.subplots(figsize=(6, 4))
ax.hist(exact, bins=60, density=True, alpha=0.4, label="exact eigenvalues")
ax.plot(sd.grid, sd.density, label="SLQ density (depth 30)")
ax.set(xlabel="eigenvalue", ylabel="density", title=f"2-D Laplacian, n={n_lap}")
ax.legend()
fig.tight_layout()
fig.savefig(FIGDIR / "spectral_density.png", dpi=110)

# The largest eigenvalues by Lanczos. The grid is square, so some eigenvalues
# are double: a single start vector finds one copy of each, and the third Ritz
# value is the next *distinct* eigenvalue.
top = eig.extreme(
    lap,
    jax.random.normal(jax.random.PRNGKey(5), (n_lap,)),
    num_eigenpairs=3,
    depth=60 if SMALL else 150,
    throw=False,  # report `converged` below instead of raising
)
print("largest eigenvalues (Lanczos):", top.eigenvalues, "converged:", top.converged)
print("largest eigenvalues (dense):  ", exact[::-1][:3])

# %% [markdown]
# ## exp-action error vs depth
#
# `matfree.exp_action` on the diffusion operator `-L` (t = 1) vs dense `expm`.

# %%
u0 = jax.random.normal(jax.random.PRNGKey(6), (n_lap,))
L_dense = jax.vmap(lap)(jnp.eye(n_lap))
ref_exp = jax.scipy.linalg.expm(-L_dense) @ u0
exp_depths = [4, 12, 24] if SMALL else [4, 8, 12, 16, 24, 32]
exp_err = []
for depth in exp_depths:
    out = matfree.exp_action(lambda v: -lap(v), u0, depth=depth, symmetric=True).value
    exp_err.append(float(jnp.linalg.norm(out - ref_exp) / jnp.linalg.norm(ref_exp)))
    print(f"exp_action depth {depth:3d}: relative error {exp_err[-1]:.1e}")
fig, ax = plt.subplots(figsize=(5, 4))
ax.semilogy(exp_depths, exp_err, "o-")
ax.set(xlabel="depth", ylabel="relative error", title="exp(-L) u0, 2-D Laplacian")
fig.tight_layout()
fig.savefig(FIGDIR / "exp_action_error_vs_depth.png", dpi=110)
