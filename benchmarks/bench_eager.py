"""Repeated eager calls from plain Python (issue #12, item 2).

A script calls a verb in a Python loop with a fresh operator each time:
`exp_action(lambda x: A @ x, b, depth=10)` with a new 40 x 40 `A` per call,
2,000 times (and `solve`, `exp_action(tol=)` likewise). Recorded per verb:
the first call (trace + compile), the median of the later calls, the process's
memory maps and resident memory after 10, 100, 1000 and 2000 calls, and the
same loop with the reuse switched off (`MATFREE_EAGER_CACHE=0`, a subprocess,
fewer calls) and jax.scipy's CG as a peer.

Run: `python benchmarks/bench_eager.py [--calls 2000]`; writes
`benchmarks/results/eager.md`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import matfree

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _util import machine

jax.config.update("jax_enable_x64", True)

N = 40
CHECKPOINTS = (10, 100, 1000, 2000)


def maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def operator(rng):
    A = rng.standard_normal((N, N)) / np.sqrt(N)
    return jnp.asarray(-(A @ A.T) - np.eye(N))  # symmetric negative definite


def calls():
    b = jnp.ones(N)
    return {
        "exp_action(depth=10)": lambda A: (
            matfree.exp_action(lambda x: A @ x, b, depth=10).value
        ),
        "exp_action(tol=1e-8)": lambda A: (
            matfree.exp_action(lambda x: A @ x, b, depth=10, tol=1e-8, num_substeps=8).value
        ),
        "solve(method='cg')": lambda A: (
            matfree.solve(lambda x: -(A @ x), b, method="cg", rtol=1e-10).value
        ),
        "jax.scipy cg (peer)": lambda A: jax.scipy.sparse.linalg.cg(
            lambda x: -(A @ x), b, tol=1e-10
        )[0],
    }


def measure(name, fn, num_calls):
    rng = np.random.default_rng(0)
    times, rows = [], []
    maps0, rss0 = maps(), rss_mib()
    for i in range(1, num_calls + 1):
        A = operator(rng)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(A))
        times.append(time.perf_counter() - t0)
        if i in CHECKPOINTS or i == num_calls:
            rows.append((i, maps() - maps0, rss_mib() - rss0))
    later = statistics.median(times[1:]) if len(times) > 1 else float("nan")
    return times[0], later, rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--uncached-calls", type=int, default=20)
    parser.add_argument(
        "--peer-calls", type=int, default=200, help="calls of the jax.scipy peer"
    )
    parser.add_argument("--only", default=None, help="one verb (subprocess mode)")
    args = parser.parse_args()

    table = calls()
    if args.only is not None:  # subprocess: one verb, print one line
        first, later, rows = measure(args.only, table[args.only], args.calls)
        print(f"{first:.3f} {later:.4f} {rows[-1][1]} {rows[-1][2]:.1f}")
        return

    lines = [
        "# Repeated eager calls (`benchmarks/bench_eager.py`)",
        "",
        f"Machine: {machine()}.",
        "",
        f"A fresh {N}x{N} operator per call, `lambda x: A @ x`, no outer `jit`; "
        f"{args.calls} calls per verb in one process (float64). 'maps' and 'RSS' "
        "are the growth of `/proc/self/maps` lines and resident memory since the "
        "verb's first call. Uncached: the same loop with `MATFREE_EAGER_CACHE=0`, "
        f"{args.uncached_calls} calls in a subprocess. The jax.scipy peer: "
        f"{args.peer_calls} calls.",
        "",
        "| verb | first call (s) | later calls, median (ms) | growth after "
        + ", ".join(str(c) for c in CHECKPOINTS if c <= args.calls)
        + " calls: maps / RSS MiB | uncached: median (ms), maps after "
        f"{args.uncached_calls} |",
        "|---|---|---|---|---|",
    ]
    for name, fn in table.items():
        # The peer compiles on every call: fewer calls keep the run short.
        num = min(args.calls, args.peer_calls) if "peer" in name else args.calls
        first, later, rows = measure(name, fn, num)
        growth = "; ".join(f"{m} / {r:.0f}" for _, m, r in rows)
        env = dict(os.environ, MATFREE_EAGER_CACHE="0")
        out = subprocess.run(
            [sys.executable, __file__, "--only", name, "--calls", str(args.uncached_calls)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        uncached = f"{1e3 * float(out[1]):.0f}, {out[2]}"
        line = f"| {name} | {first:.2f} | {1e3 * later:.1f} | {growth} | {uncached} |"
        print(line, flush=True)
        lines.append(line)
    path = pathlib.Path(__file__).parent / "results" / "eager.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
