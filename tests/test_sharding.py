"""Runs `tests/sharded` on a 4-device host mesh, in a process of its own.

`XLA_FLAGS=--xla_force_host_platform_device_count=4` only takes effect if it
is set before `jax` is imported, so the sharded tests cannot share this
process (where they skip); `make test` runs them through this test.
"""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from matfree import gp, operators

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_sharded_tests_pass_on_a_four_device_host_mesh():
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "tests/sharded", "-q", "-p", "no:xdist"]
    run = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]


def test_mesh_must_be_a_mesh():
    X = jax.numpy.linspace(0.0, 1.0, 32)[:, None]
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        operators.kernel_matvec(X, mesh="data")
    p = {"lengthscale": 1.0, "variance": 1.0, "noise": 0.1}
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        gp.predict(p, X, X[:, 0], X, precond_rank=0, mesh=4)
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        gp.log_marginal_likelihood(
            p, X, X[:, 0], key=jax.random.PRNGKey(0), precond_rank=0, mesh=4
        )
