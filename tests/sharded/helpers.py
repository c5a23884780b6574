"""Shared by the sharded tests: the 4-device host mesh and HLO inspection."""

import re

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

NUM_DEVICES = 4


def require_mesh():
    """Skip the module unless this process has the 4 host devices.

    The devices exist only if `XLA_FLAGS=--xla_force_host_platform_device_count=4`
    was set before `jax` was imported: `tests/test_sharding.py` runs this
    directory in a process of its own with it.
    """
    if jax.device_count() != NUM_DEVICES:
        pytest.skip(
            "needs XLA_FLAGS=--xla_force_host_platform_device_count=4 "
            "(run by tests/test_sharding.py)",
            allow_module_level=True,
        )


def mesh():
    auto = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=auto)


def shard(x, spec=None):
    spec = P("data") if spec is None else spec
    return jax.device_put(x, NamedSharding(mesh(), spec))


def all_gather_shapes(compiled_text):
    """The element counts of the all-gathers in a compiled program's HLO text."""
    shapes = re.findall(r"= \w+\[([\d,]*)\][^ ]* all-gather\(", compiled_text)
    return [int(np.prod([int(s) for s in sh.split(",") if s])) for sh in shapes]


def is_sharded(x, axis):
    """`x` is split over the mesh along `axis` (each device holds 1/4 of it)."""
    shard_shape = x.sharding.shard_shape(x.shape)
    return shard_shape[axis] * NUM_DEVICES == x.shape[axis]
