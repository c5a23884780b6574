"""Metrics reported with Laplace approximations: accuracy, NLL, calibration."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _check_probs(probs, y=None):
    probs = jnp.asarray(probs)
    if probs.ndim != 2 or not jnp.issubdtype(probs.dtype, jnp.floating):
        msg = (
            "`probs` must be floating class probabilities of shape (n, C); got shape "
            f"{probs.shape} and dtype {probs.dtype}."
        )
        raise ValueError(msg)
    if y is None:
        return probs, None
    y = jnp.asarray(y)
    if y.shape != probs.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        msg = (
            f"`y` must be integer labels of shape ({probs.shape[0]},) to match "
            f"`probs` {probs.shape}; got shape {y.shape} and dtype {y.dtype}."
        )
        raise ValueError(msg)
    return probs, y


def accuracy(probs, y) -> jax.Array:
    """The fraction of examples whose most probable class is the label.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> accuracy(jnp.array([[0.9, 0.1], [0.3, 0.7]]), jnp.array([0, 0]))
    Array(0.5, dtype=float64)
    """
    probs, y = _check_probs(probs, y)
    return jnp.mean(jnp.argmax(probs, axis=-1) == y).astype(probs.dtype)


def nll(probs, y) -> jax.Array:
    """The mean negative log-probability of the labels (clipped at `1e-12`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> nll(jnp.array([[0.5, 0.5]]), jnp.array([1]))
    Array(0.69314718, dtype=float64)
    """
    probs, y = _check_probs(probs, y)
    p = jnp.take_along_axis(probs, y[:, None], axis=-1)[:, 0]
    return -jnp.mean(jnp.log(jnp.clip(p, 1e-12, 1.0)))


def gaussian_nll(mean, variance, y) -> jax.Array:
    """The mean negative log density of `y` under `N(mean, variance)` (per example).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> round(float(gaussian_nll(jnp.zeros(1), jnp.ones(1), jnp.zeros(1))), 4)
    0.9189
    """
    mean, variance, y = jnp.asarray(mean), jnp.asarray(variance), jnp.asarray(y)
    if not mean.shape == variance.shape == y.shape or mean.ndim < 1:
        msg = (
            "`mean`, `variance` and `y` must have one shape (n, ...); got "
            f"{mean.shape}, {variance.shape}, {y.shape}."
        )
        raise ValueError(msg)
    per = 0.5 * ((y - mean) ** 2 / variance + jnp.log(2 * math.pi * variance))
    return jnp.mean(jnp.sum(per.reshape(per.shape[0], -1), axis=-1))


def confidence(probs) -> jax.Array:
    """The mean of the largest class probability (e.g. on out-of-distribution data).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> confidence(jnp.array([[0.9, 0.1], [0.4, 0.6]]))
    Array(0.75, dtype=float64)
    """
    probs, _ = _check_probs(probs)
    return jnp.mean(jnp.max(probs, axis=-1))


class Reliability(NamedTuple):
    """Reliability-diagram data of `reliability` (bins of equal width in confidence).

    Attributes
    ----------
    confidence
        Mean confidence of the examples in each bin (NaN for an empty bin).
    accuracy
        Accuracy in each bin (NaN for an empty bin).
    count
        Examples in each bin.
    edges
        The `num_bins + 1` bin edges in `[0, 1]`.
    """

    confidence: jax.Array
    accuracy: jax.Array
    count: jax.Array
    edges: jax.Array


def reliability(probs, y, *, num_bins: int = 15) -> Reliability:
    """Reliability-diagram data: confidence and accuracy per confidence bin.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> r = reliability(jnp.array([[0.9, 0.1], [0.3, 0.7]]), jnp.array([0, 0]),
    ...                 num_bins=2)
    >>> r.count
    Array([0, 2], dtype=int64)
    """
    probs, y = _check_probs(probs, y)
    conf = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == y).astype(probs.dtype)
    edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=probs.dtype)
    idx = jnp.clip(jnp.searchsorted(edges, conf, side="left") - 1, 0, num_bins - 1)
    count = jnp.zeros(num_bins, int).at[idx].add(1)
    sum_conf = jnp.zeros(num_bins, probs.dtype).at[idx].add(conf)
    sum_acc = jnp.zeros(num_bins, probs.dtype).at[idx].add(correct)
    safe = jnp.maximum(count, 1)
    empty = count == 0
    return Reliability(
        jnp.where(empty, jnp.nan, sum_conf / safe),
        jnp.where(empty, jnp.nan, sum_acc / safe),
        count,
        edges,
    )


def ece(probs, y, *, num_bins: int = 15) -> jax.Array:
    """Expected calibration error: `sum_b |acc_b - conf_b| n_b / n` over bins.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ece(jnp.array([[0.9, 0.1], [0.3, 0.7]]), jnp.array([0, 0]), num_bins=2)
    Array(0.3, dtype=float64)
    """
    r = reliability(probs, y, num_bins=num_bins)
    gap = jnp.where(r.count > 0, jnp.abs(r.accuracy - r.confidence), 0.0)
    return jnp.sum(gap * r.count) / jnp.sum(r.count)
