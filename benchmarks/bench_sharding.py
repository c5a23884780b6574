"""Sharded operators on a host mesh: strong and weak scaling, per-device memory.

Runs on `XLA_FLAGS=--xla_force_host_platform_device_count=4` (set below,
before `jax` is imported), with meshes of 1, 2 and 4 of those devices. On a
machine with fewer cores than devices this is a functional check of the
sharded programs, not a speed-up measurement: the devices share the cores.

- strong scaling: a fixed kernel problem (`n` rows), the sharded kernel
  matmat (`operators.kernel_matvec(mesh=)`) on 8 columns, 4 times;
- weak scaling: the same with `n ~ sqrt(p)`, i.e. constant kernel
  evaluations per device;
- memory: XLA's per-device compiled-memory estimate of a depth-40 Lanczos
  decomposition of a sharded stencil operator (the basis is split over the
  devices), and of the GP log-marginal-likelihood gradient.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import argparse
import datetime
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
from _util import machine, peak_bytes
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from matfree import decomp, gp, operators

jax.config.update("jax_enable_x64", True)
HERE = pathlib.Path(__file__).resolve().parent


def mesh_of(p):
    auto = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((p,), ("data",), axis_types=auto, devices=jax.devices()[:p])


def put(x, mesh, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))


def time_it(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def kernel_run(n, p, d=3, m=8, rows_per_block=256):
    mesh = mesh_of(p)
    X = jax.random.uniform(jax.random.PRNGKey(0), (n, d))
    V = jax.random.normal(jax.random.PRNGKey(1), (n, m))

    def four_matmats(X, V):
        mv = operators.kernel_matvec(
            X, lengthscale=0.3, noise=0.1, rows_per_block=rows_per_block, mesh=mesh
        )
        return jax.lax.fori_loop(0, 4, lambda _, v: mv(v) / n, V)

    sX, sV = put(X, mesh, P("data", None)), put(V, mesh, P("data", None))
    compiled = jax.jit(four_matmats).lower(sX, sV).compile()
    return time_it(compiled, sX, sV)


def lanczos_memory(n, p, depth=40):
    mesh = mesh_of(p)
    diag = put(2.0 + jnp.linspace(0, 1, n), mesh, P("data"))
    v0 = put(jnp.cos(jnp.arange(n) / 7.0), mesh, P("data"))

    def basis(diag, v0):
        mv = lambda v: diag * v - 0.5 * (jnp.roll(v, 1) + jnp.roll(v, -1))  # noqa: E731
        return decomp.lanczos(mv, v0, depth=depth).basis

    return peak_bytes(jax.jit(basis).lower(diag, v0).compile())


def lml_memory(n, p, d=3):
    mesh = mesh_of(p)
    X = put(jax.random.uniform(jax.random.PRNGKey(0), (n, d)), mesh, P("data", None))
    y = put(jnp.sin(jnp.arange(n) / 50.0), mesh, P("data"))
    params = {"lengthscale": 0.3, "variance": 1.0, "noise": 0.1}

    def grad(params, X, y):
        return jax.grad(
            lambda q: (
                gp.log_marginal_likelihood(
                    q,
                    X,
                    y,
                    key=jax.random.PRNGKey(0),
                    num_probes=8,
                    depth=10,
                    precond_rank=20,
                    rows_per_block=256,
                    mesh=mesh,
                    throw=False,
                ).value
            )
        )(params)

    return peak_bytes(jax.jit(grad).lower(params, X, y).compile())


def mib(b):
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_strong, n_weak0, n_mem = (1024, 512, 2**12) if args.quick else (8192, 4096, 2**18)
    load = os.getloadavg()[0]
    start = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    base_strong = base_weak = None
    for p in (1, 2, 4):
        t_strong = kernel_run(n_strong, p)
        n_weak = round(n_weak0 * p**0.5 / 64) * 64
        t_weak = kernel_run(n_weak, p)
        base_strong = base_strong or t_strong
        base_weak = base_weak or t_weak
        mem_l = lanczos_memory(n_mem, p)
        mem_g = lml_memory(n_strong, p)
        rows.append(
            f"| {p} | {t_strong:.3f} | {base_strong / t_strong:.2f} | {n_weak} | "
            f"{t_weak:.3f} | {base_weak / t_weak:.2f} | {mib(mem_l)} | {mib(mem_g)} |"
        )
        print(rows[-1], flush=True)
    text = (
        f"""## Sharded operators on a host mesh (`benchmarks/bench_sharding.py`)

Machine: {machine()}; 1-min load average {load:.1f} at the start. Run on {start}.
**A functional check, not a speed-up measurement**: the 4 devices are XLA host
devices (`--xla_force_host_platform_device_count=4`) sharing the machine's cores, so
wall time cannot fall with the device count beyond the number of free cores.
Strong scaling: `n = {n_strong}` (d = 3, RBF), four sharded kernel matmats of 8 columns
(`operators.kernel_matvec(mesh=)`, 256 rows per block). Weak scaling: `n ~ {n_weak0} sqrt(p)`
(constant kernel evaluations per device). Memory: XLA's compiled per-device estimate
(arguments + outputs + temporaries) of a depth-40 Lanczos basis of a sharded stencil
operator (`n = {n_mem}`) and of the gradient of `gp.log_marginal_likelihood(mesh=)` at
`n = {n_strong}` (8 probes, depth 10, rank-20 preconditioner). Median of 3 runs after a warm-up.

| devices | strong [s] | strong speed-up | weak n | weak [s] | weak efficiency | Lanczos memory / device | LML-gradient memory / device |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
"""
        + "\n".join(rows)
        + "\n"
    )
    name = "sharding_quick.md" if args.quick else "sharding.md"
    (HERE / "results" / name).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
