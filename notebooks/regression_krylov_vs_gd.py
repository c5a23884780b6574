# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Regression is a linear system: Krylov solvers against gradient descent and Adam
#
# Ridge regression `min_x 1/2 |A x - b|^2 + mu/2 |x|^2` is the linear system
# `(A^T A + mu I) x = A^T b`. Numerical analysis solves it with a Krylov
# method (CG on the normal equations, LSQR on the least-squares form,
# BiCGStab); machine learning would run gradient descent or Adam on the
# loss. Both need only products with `A` and `A^T`. Here they race on two
# problems with 10,000 unknowns and 20,000 rows:
#
# 1. a sparse random design (about 20 non-zeros per row), well conditioned;
# 2. the same design with column scales spread over three decades (a badly
#    conditioned problem, as with unnormalised features).
#
# We plot the relative residual of the normal equations and the test error
# against wall time and against the number of products with `A` or `A^T`,
# and the spectrum of `A^T A + mu I` (`matfree.eig.spectral_density`), which
# explains who wins: gradient descent converges at a rate set by the
# condition number `kappa`, CG and LSQR by `sqrt(kappa)` (and faster when
# eigenvalues cluster).
#
# `MATFREE_SMALL=1` (used by the test suite) shrinks the problems.

# %%
import os
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.experimental import sparse

import matfree
from matfree import eig

SMALL = os.environ.get("MATFREE_SMALL", "0") == "1"
FIGURES = pathlib.Path(
    os.environ.get("MATFREE_FIGURES", pathlib.Path(__file__).resolve().parent / "figures")
)
FIGURES.mkdir(parents=True, exist_ok=True)
N = 300 if SMALL else 10_000  # unknowns
M = 2 * N  # rows (training); as many again for the test set
NNZ_PER_ROW = 20
MU = 1e-3
ITERS = (10, 60) if SMALL else (5, 10, 20, 40, 80, 160, 320, 640)
rng = np.random.default_rng(0)


def sparse_design(rows, scales):
    cols = rng.integers(0, N, size=(rows, NNZ_PER_ROW))
    vals = rng.normal(size=(rows, NNZ_PER_ROW)) / np.sqrt(NNZ_PER_ROW)
    vals = vals * scales[cols]
    idx = np.stack([np.repeat(np.arange(rows), NNZ_PER_ROW), cols.ravel()], axis=1)
    return sparse.BCOO((jnp.asarray(vals.ravel()), jnp.asarray(idx)), shape=(rows, N))


def problem(scales):
    A = sparse_design(M, scales)
    A_test = sparse_design(M, scales)
    x_true = jnp.asarray(rng.normal(size=N))
    b = A @ x_true + 0.1 * jnp.asarray(rng.normal(size=M))
    b_test = A_test @ x_true + 0.1 * jnp.asarray(rng.normal(size=M))
    return {"A": A, "b": b, "A_test": A_test, "b_test": b_test}


problems = {
    "sparse random": problem(np.ones(N)),
    "badly conditioned": problem(np.logspace(0, -1.5, N)),
}


# %% [markdown]
# ## The methods
#
# Each method runs for a growing number of iterations `k` (from scratch; the
# Krylov solvers' iteration bound is static, so one compilation per `k`);
# the clock measures the run after compilation. Products with `A` or `A^T`:
# 2 per iteration for CG on the normal equations, LSQR, gradient descent and
# Adam; 4 for BiCGStab.


# %%
def methods(p):
    A, b = p["A"], p["b"]
    AT = A.T

    def normal(v):
        return AT @ (A @ v) + MU * v

    rhs = AT @ b
    # The largest eigenvalue of the normal operator sets gradient descent's step.
    # (A Ritz value is a lower bound; 5 % on top keeps the step stable.)
    top = eig.extreme(normal, rhs, num_eigenpairs=1, depth=min(30, N), throw=False)
    lmax = 1.05 * float(top.eigenvalues[0])

    def krylov(method):
        def run(k):
            if method == "lsqr":
                sol = matfree.solve(
                    lambda v: A @ v,
                    b,
                    method="lsqr",
                    x0=jnp.zeros(N),
                    damp=np.sqrt(MU),
                    maxiter=k,
                    rtol=0.0,
                    throw=False,
                )
            else:
                sol = matfree.solve(
                    normal, rhs, method=method, maxiter=k, rtol=0.0, throw=False
                )
            return sol.value

        return run

    def gd(k):
        return jax.lax.fori_loop(
            0, k, lambda _, x: x - (normal(x) - rhs) / lmax, jnp.zeros(N)
        )

    adam = optax.adam(0.05)

    def adam_run(k):
        def body(_, s):
            x, st = s
            updates, st = adam.update(normal(x) - rhs, st, x)
            return optax.apply_updates(x, updates), st

        return jax.lax.fori_loop(0, k, body, (jnp.zeros(N), adam.init(jnp.zeros(N))))[0]

    return (
        {
            "CG (normal equations)": (krylov("cg"), 2),
            "LSQR": (krylov("lsqr"), 2),
            "BiCGStab (normal eq.)": (krylov("bicgstab"), 4),
            "gradient descent (1/L)": (gd, 2),
            "Adam (lr 0.05)": (adam_run, 2),
        },
        normal,
        rhs,
        lmax,
    )


results = {}
for pname, p in problems.items():
    ms, normal, rhs, lmax = methods(p)
    x_ref = matfree.solve(normal, rhs, method="cg", rtol=1e-12, maxiter=20 * N).value
    rhs_norm = float(jnp.linalg.norm(rhs))
    results[pname] = {"lmax": lmax, "normal": normal, "rhs": rhs, "runs": {}}
    for mname, (fn, per_iter) in ms.items():
        rows = []
        for k in ITERS:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(k))
            compile_s = time.perf_counter() - t0
            secs = np.inf
            for _ in range(2):  # the faster of two runs (the machine may be shared)
                t0 = time.perf_counter()
                x = jax.block_until_ready(fn(k))
                secs = min(secs, time.perf_counter() - t0)
            res = float(jnp.linalg.norm(normal(x) - rhs)) / rhs_norm
            test = float(jnp.sqrt(jnp.mean((p["A_test"] @ x - p["b_test"]) ** 2)))
            rows.append((k, per_iter * k, secs, res, test, compile_s))
        results[pname]["runs"][mname] = rows
    test_ref = float(jnp.sqrt(jnp.mean((p["A_test"] @ x_ref - p["b_test"]) ** 2)))
    results[pname]["test_ref"] = test_ref
    print(
        f"\n{pname}: lambda_max = {lmax:.3g}, "
        f"test RMSE of the exact solution {test_ref:.4f}"
    )
    print(
        f"{'method':24s} {'iters':>6s} {'matvecs':>8s} {'seconds':>8s} "
        f"{'residual':>9s} {'test':>7s}"
    )
    for mname, rows in results[pname]["runs"].items():
        k, mv, secs, res, test, _ = rows[-1]
        print(f"{mname:24s} {k:6d} {mv:8d} {secs:8.3f} {res:9.2e} {test:7.4f}")

# %% [markdown]
# ## The spectra that explain the race

# %%
fig, ax = plt.subplots(2, 4, figsize=(19, 8))
for row, (pname, r) in enumerate(results.items()):
    for mname, rows in r["runs"].items():
        arr = np.asarray(rows)
        ax[row, 0].loglog(arr[:, 2], arr[:, 3], "o-", ms=3, label=mname)
        ax[row, 1].loglog(arr[:, 1], arr[:, 3], "o-", ms=3, label=mname)
        ax[row, 2].semilogx(arr[:, 1], arr[:, 4], "o-", ms=3, label=mname)
    ax[row, 0].set(xlabel="seconds", ylabel="relative residual", title=f"{pname}: residual")
    ax[row, 1].set(xlabel="products with A or A^T", ylabel="relative residual")
    ax[row, 1].set_title(f"{pname}: residual vs products")
    ax[row, 2].axhline(r["test_ref"], color="k", ls=":", label="exact ridge solution")
    ax[row, 2].set(xlabel="products with A or A^T", ylabel="test RMSE")
    ax[row, 2].set_title(f"{pname}: test error")
    top = max(rows[0][4] for rows in r["runs"].values())
    ax[row, 2].set_ylim(0.9 * r["test_ref"], min(top, 3 * r["test_ref"]))
    dens = eig.spectral_density(
        r["normal"],
        r["rhs"],
        key=jax.random.PRNGKey(3),
        depth=20 if SMALL else 60,
        num_probes=4,
    )
    ax[row, 3].plot(dens.grid, dens.density)
    lo = float(jnp.min(dens.nodes))
    kappa = r["lmax"] / max(lo, MU)
    ax[row, 3].set(
        xlabel="eigenvalue of A^T A + mu I",
        ylabel="density",
        title=f"{pname}: spectrum (kappa ~ {kappa:.2g})",
    )
    print(f"{pname}: estimated condition number {kappa:.3g}")
ax[0, 0].legend(fontsize=7)
ax[0, 2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(FIGURES / "regression_krylov_vs_gd.png", dpi=110)
print("saved", FIGURES / "regression_krylov_vs_gd.png")

# %% [markdown]
# ## Reading the figure
#
# On the well-conditioned design (condition number about 50) CG and LSQR
# reach the residual of a converged solve (1e-15) within a few hundred
# products; gradient descent, with as many products, is at about 1e-9, and
# Adam (whose per-coordinate step does not fit a linear system) at 1e-4.
# With column scales spread over 1.5 decades the condition number grows by
# a factor of about 35: the Krylov methods still converge (1e-14 after
# about 4 times more products; `sqrt(35) ~ 6` is the bound), gradient
# descent stalls at 1e-3,
# and Adam's per-coordinate scaling, which acts like a diagonal
# preconditioner on this problem, overtakes gradient descent.
#
# The test error tells a second story, the one machine learning relies on:
# every method reaches the exact solution's test error long before its
# residual is small, and on the badly conditioned problem gradient descent
# stopped early (and CG, LSQR or BiCGStab stopped after a few dozen
# products) has a *lower* test error than the exact ridge solution with this
# small `mu`: early stopping regularises, whichever method is stopped. Solving the system
# accurately is what Krylov methods do best; whether a learning problem needs
# that is a question for its regulariser. BiCGStab costs twice the products
# per iteration and ignores the symmetry, so CG or LSQR is the better choice.
# Times are noisy on a shared machine; the products are not.
