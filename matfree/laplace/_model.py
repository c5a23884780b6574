"""Models, data and likelihoods: validation and the per-chunk building blocks.

A model is an equinox module applied to one input, `model(x) -> output`.
Every array leaf of it is a parameter (`eqx.partition(model, eqx.is_array)`);
the parameters travel as a pytree or, for the Krylov methods, as one flat
vector (`jax.flatten_util.ravel_pytree`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from matfree import _checks

LIKELIHOODS = ("classification", "regression")


class Problem(NamedTuple):
    """A validated model with its data: the pieces every verb of the module uses."""

    params: Any  # the parameter pytree (array leaves of the model; None elsewhere)
    static: Any  # the rest of the model
    flat: jax.Array  # the parameters as one vector (P,)
    unravel: Any  # (P,) -> parameter pytree
    X: jax.Array
    y: jax.Array
    likelihood: str
    sigma: Any  # observation noise standard deviation (regression) or None
    chunk_size: int  # examples per sequential chunk

    @property
    def size(self) -> int:
        """The number of parameters `P`."""
        return self.flat.shape[0]

    @property
    def dtype(self):
        """The floating dtype of the parameters."""
        return self.flat.dtype


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def split_model(model):
    """`(params, static)` of an equinox model; every array leaf must be floating."""
    if not callable(model):
        msg = (
            "`model` must be a callable equinox module `model(x) -> output`; got an "
            f"object of type {type(model).__name__}."
        )
        raise TypeError(msg)
    params, static = eqx.partition(model, eqx.is_array)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        msg = "`model` has no array leaves: there are no parameters to approximate."
        raise ValueError(msg)
    for path, leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            msg = (
                f"`model` has a parameter leaf of dtype {leaf.dtype} at "
                f"{jax.tree_util.keystr(path)}; every array leaf of the model is a "
                "parameter of the Laplace approximation and must be floating. Cast it "
                "(`.astype(float)`) or mark it `eqx.field(static=True)`."
            )
            raise TypeError(msg)
    dtypes = {leaf.dtype for _, leaf in leaves}
    if len(dtypes) > 1:
        msg = (
            f"all parameter leaves of `model` must have one dtype; got "
            f"{sorted(str(d) for d in dtypes)}. Cast the model, e.g. with "
            "`jax.tree_util.tree_map(lambda x: x.astype(float), model)`."
        )
        raise TypeError(msg)
    return params, static


def forward(params, static, x):
    """The model at parameters `params` on one input `x`."""
    return eqx.combine(params, static)(x)


def check_sigma(sigma, likelihood: str, dtype):
    """The observation noise `sigma` (regression only), positive if concrete."""
    if likelihood == "classification":
        if sigma is not None:
            msg = (
                "`sigma` (the observation noise) is only used with "
                "`likelihood='regression'`; got sigma for 'classification'. Remove it."
            )
            raise ValueError(msg)
        return None
    if sigma is None:
        msg = (
            "`sigma` (the observation noise standard deviation) is required for "
            "`likelihood='regression'`; pass e.g. `sigma=0.1`."
        )
        raise TypeError(msg)
    sigma = jnp.asarray(sigma, dtype)
    if sigma.shape != ():
        msg = f"`sigma` must be a scalar; got shape {sigma.shape}."
        raise ValueError(msg)
    if _concrete(sigma) and not float(sigma) > 0:
        msg = f"`sigma` must be positive and finite; got sigma={float(sigma)}."
        raise ValueError(msg)
    return sigma


def setup(model, X, y, *, likelihood, sigma, chunk_size) -> Problem:
    """Validate a model, its data and likelihood; return the `Problem`."""
    likelihood = _checks.check_choice(likelihood, "likelihood", LIKELIHOODS)
    params, static = split_model(model)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        msg = (
            "`X` and `y` must hold the same number of examples along their first axis; "
            f"got X.shape={X.shape} and y.shape={y.shape}."
        )
        raise ValueError(msg)
    if X.shape[0] == 0:
        msg = "`X` and `y` must hold at least one example; got 0."
        raise ValueError(msg)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        msg = f"`X` must be a floating array; got dtype {X.dtype}. Cast it with `.astype`."
        raise TypeError(msg)
    try:
        out = jax.eval_shape(lambda x: forward(params, static, x), X[0])
    except Exception as err:
        msg = (
            f"`model` could not be applied to one example `X[0]` of shape "
            f"{X.shape[1:]}: {type(err).__name__}: {err}. The model maps one input "
            "(no batch axis) to its output; the batch is the first axis of `X`."
        )
        raise ValueError(msg) from err
    if likelihood == "classification":
        y = _check_labels(y, out)
    else:
        y = _check_targets(y, out, flat.dtype)
    sigma = check_sigma(sigma, likelihood, flat.dtype)
    n = X.shape[0]
    chunk = n if chunk_size is None else _checks.check_int(chunk_size, "chunk_size")
    return Problem(params, static, flat, unravel, X, y, likelihood, sigma, min(chunk, n))


def _check_labels(y, out):
    if out.ndim != 1 or out.shape[0] < 2:
        msg = (
            "`likelihood='classification'` needs a model that returns one logit per "
            f"class, shape (C,) with C >= 2; the model returns shape {out.shape}. "
            "For real-valued targets use `likelihood='regression'`."
        )
        raise ValueError(msg)
    if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
        msg = (
            "`y` must be integer class labels of shape (n,) for "
            f"`likelihood='classification'`; got shape {y.shape} and dtype {y.dtype}."
        )
        raise TypeError(msg)
    num_classes = out.shape[0]
    if _concrete(y):
        yv = np.asarray(y)
        if yv.min() < 0 or yv.max() >= num_classes:
            msg = (
                f"`y` must be labels in 0..{num_classes - 1} (the model returns "
                f"{num_classes} logits); got labels in {yv.min()}..{yv.max()}."
            )
            raise ValueError(msg)
    return y


def _check_targets(y, out, dtype):
    if y.shape[1:] != out.shape:
        msg = (
            f"`likelihood='regression'` needs the model output of one example to have "
            f"the shape of one target; the model returns shape {out.shape} but "
            f"`y[0]` has shape {y.shape[1:]}."
        )
        raise ValueError(msg)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        msg = f"`y` must be floating targets for regression; got dtype {y.dtype}."
        raise TypeError(msg)
    return y.astype(dtype)


# -- per-chunk pieces -------------------------------------------------------


def batch_forward(params, static, X):
    """The model on every row of `X` (one chunk)."""
    return jax.vmap(lambda x: forward(params, static, x))(X)


def output_hessian(likelihood, out, u, w, sigma):
    """The Hessian of the negative log-likelihood in output space times `u`.

    Softmax cross-entropy: `(diag(p) - p p^T) u` per example; Gaussian:
    `u / sigma^2`. Each example is weighted by `w` (0 for padding).
    """
    if likelihood == "classification":
        p = jax.nn.softmax(out, axis=-1)
        hu = p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)
        return hu * w[:, None]
    wb = w.reshape(w.shape + (1,) * (u.ndim - 1))
    return u * wb / sigma**2


def output_hessian_sqrt(likelihood, out, sigma):
    """`L` with `L L^T` the output-space Hessian, shape (batch, k, k) (columns of L)."""
    if likelihood == "classification":
        p = jax.nn.softmax(out, axis=-1)
        sp = jnp.sqrt(p)
        eye = jnp.eye(p.shape[-1], dtype=p.dtype)
        return sp[:, :, None] * eye - p[:, :, None] * sp[:, None, :]
    k = math.prod(out.shape[1:])
    eye = jnp.eye(k, dtype=out.dtype) / sigma
    return jnp.broadcast_to(eye, (out.shape[0], k, k))


def log_likelihood(likelihood, out, y, w, sigma):
    """`sum_i w_i log p(y_i | f_i)` with all constants."""
    if likelihood == "classification":
        logp = jax.nn.log_softmax(out, axis=-1)
        return jnp.sum(w * jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0])
    r = (y - out).reshape(out.shape[0], -1)
    per = -0.5 * jnp.sum(r**2, axis=-1) / sigma**2
    k = r.shape[1]
    per = per - k * jnp.log(sigma) - 0.5 * k * math.log(2 * math.pi)
    return jnp.sum(w * per)


def chunked_sum(fn, problem: Problem, *args):
    """`sum` over sequential chunks of the data of `fn(Xc, yc, wc, *args)`.

    The data are padded (weight 0) to a whole number of chunks of
    `problem.chunk_size`; each chunk is rematerialised in the backward pass,
    so memory is bounded by one chunk.
    """
    X, y, c = problem.X, problem.y, problem.chunk_size
    n = X.shape[0]
    w = jnp.ones(n, problem.dtype)
    if c >= n:
        return fn(X, y, w, *args)
    m = -(-n // c)
    pad = m * c - n
    Xp = jnp.concatenate([X, X[:pad]]).reshape((m, c, *X.shape[1:]))
    yp = jnp.concatenate([y, y[:pad]]).reshape((m, c, *y.shape[1:]))
    wp = jnp.concatenate([w, jnp.zeros(pad, w.dtype)]).reshape(m, c)
    body_fn = jax.checkpoint(fn)

    def body(acc, batch):
        out = body_fn(*batch, *args)
        return jax.tree_util.tree_map(jnp.add, acc, out), None

    init = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(fn, Xp[0], yp[0], wp[0], *args),
    )
    acc, _ = jax.lax.scan(body, init, (Xp, yp, wp))
    return acc
