"""Shared helpers for the benchmark scripts: timing, memory, machine info."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax


def machine() -> str:
    """One line describing the machine and the versions in use."""
    import jaxlib

    parts = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind})",
        f"python {platform.python_version()}",
        f"jax {jax.__version__}",
        f"jaxlib {jaxlib.__version__}",
    ]
    for name in ("scipy", "lineax", "numpy"):
        try:
            mod = __import__(name)
            parts.append(f"{name} {mod.__version__}")
        except ImportError:
            pass
    return "; ".join(parts)


def block(x):
    """Wait for every array in `x`."""
    return jax.block_until_ready(x)


def compile_jit(fn, *args):
    """Return `(compiled, seconds)`: ahead-of-time compile of `jax.jit(fn)`."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def peak_bytes(compiled) -> int | None:
    """XLA's estimate of peak device memory of a compiled function."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not all backends report it
        return None
    if m is None:
        return None
    return int(
        m.temp_size_in_bytes
        + m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
    )


def median_time(fn, *args, repeats: int = 3, warmup: int = 1, slow: float = 5.0) -> float:
    """Median wall time of `fn(*args)` over `repeats` runs after `warmup` runs.

    Runs slower than `slow` seconds (judged by the warm-up) are timed once.
    """
    t_warm = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        block(fn(*args))
        t_warm = time.perf_counter() - t0
    if t_warm > slow:
        repeats = 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt_bytes(b) -> str:
    """Human-readable bytes."""
    if b is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024:
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"


def write_section(name: str, text: str) -> str:
    """Write `benchmarks/results/<name>.md` and return its path."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "results"), exist_ok=True)
    path = os.path.join(here, "results", f"{name}.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def figure_path(name: str) -> str:
    """Path of `benchmarks/figures/<name>.png` (folder created)."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "figures"), exist_ok=True)
    return os.path.join(here, "figures", f"{name}.png")


def load_note() -> str:
    """The machine's load when called, for result headers (timings under load differ)."""
    import os

    load = os.getloadavg()[0]
    quiet = "quiet" if load < 1.5 else "shared with other jobs, timings provisional"
    return (
        f"{os.cpu_count()}-core CPU, 1-min load average {load:.2f} at the start ({quiet})"
    )
