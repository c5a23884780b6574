"""Curvature of the negative log-likelihood: GGN and Hessian products, diagonals."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

from matfree import _checks, stochtrace
from matfree import status as _status
from matfree.laplace import _model
from matfree.stochtrace import DiagonalEstimate

DIAGONAL_METHODS = ("exact", "stochastic")


def ggn_flat(problem: _model.Problem, params=None, sigma=None):
    """The GGN matvec on flat parameter vectors, `v -> sum_i J_i^T H_i J_i v`.

    Per chunk: one linearisation of the network on the chunk (`jax.linearize`),
    the output-space Hessian, and the transposed linearisation; chunks are
    summed sequentially (`_model.chunked_sum`).
    """
    params = problem.params if params is None else params
    sigma = problem.sigma if sigma is None else sigma
    static, unravel, lik = problem.static, problem.unravel, problem.likelihood

    def chunk(Xc, yc, wc, params, sigma, v):
        def f(p):
            return _model.batch_forward(p, static, Xc)

        out, f_jvp = jax.linearize(f, params)
        Hjv = _model.output_hessian(lik, out, f_jvp(v), wc, sigma)
        (g,) = jax.linear_transpose(f_jvp, params)(Hjv)
        return jax.flatten_util.ravel_pytree(g)[0]

    def matvec(v_flat):
        return _model.chunked_sum(chunk, problem, params, sigma, unravel(v_flat))

    return matvec


def hessian_flat(problem: _model.Problem):
    """The Hessian matvec of the negative log-likelihood on flat vectors."""
    static, unravel, lik = problem.static, problem.unravel, problem.likelihood

    def chunk(Xc, yc, wc, flat, sigma, v):
        def loss(x):
            out = _model.batch_forward(unravel(x), static, Xc)
            return -_model.log_likelihood(lik, out, yc, wc, sigma)

        return jax.jvp(jax.grad(loss), (flat,), (v,))[1]

    def matvec(v_flat):
        return _model.chunked_sum(chunk, problem, problem.flat, problem.sigma, v_flat)

    return matvec


def ggn_diagonal_flat(problem: _model.Problem, sigma=None):
    """The exact GGN diagonal from per-example Jacobians, summed over chunks.

    `diag(sum_i J_i^T L_i L_i^T J_i) = sum_i sum_c (J_i^T L_i e_c)^2` with `L_i`
    a square root of the output-space Hessian: `k` VJPs per example (one per
    output), batched over the examples of a chunk (memory `O(chunk k P)`).
    """
    sigma = problem.sigma if sigma is None else sigma
    static, lik = problem.static, problem.likelihood

    def chunk(Xc, yc, wc, params, sigma):
        def one(x, w):
            out, vjp = jax.vjp(lambda p: _model.forward(p, static, x), params)
            L = _model.output_hessian_sqrt(lik, out.reshape(1, -1), sigma)[0]
            L = L * jnp.sqrt(w)

            def column(c):
                g = vjp(c.reshape(out.shape))[0]
                return jax.flatten_util.ravel_pytree(g)[0]

            return jnp.sum(jax.vmap(column, in_axes=1)(L) ** 2, axis=0)

        return jnp.sum(jax.vmap(one)(Xc, wc), axis=0)

    return _model.chunked_sum(chunk, problem, problem.params, sigma)


def _operator(problem, flat_matvec):
    def matvec(v):
        return problem.unravel(flat_matvec(jax.flatten_util.ravel_pytree(v)[0]))

    return matvec


def ggn(
    model,
    X,
    y,
    *,
    likelihood: str,
    sigma=None,
    chunk_size: int | None = None,
):
    r"""The generalised Gauss–Newton matrix of a model's negative log-likelihood.

    Returns the operator `v -> G v` with `G = sum_i J_i^T H_i J_i`, `J_i` the
    Jacobian of the network output on example `i` with respect to the
    parameters and `H_i` the Hessian of `-log p(y_i | f)` in output space
    (softmax cross-entropy: `diag(p) - p p^T`; Gaussian: `I / sigma^2`).
    Each product costs one linearisation of the network and its transpose per
    chunk of examples; nothing of size `P x P` is formed. `G` is the data
    term of the posterior precision `G + A` (no prior).

    Parameters
    ----------
    model
        An equinox module `model(x) -> output` for one input (no batch
        axis); every array leaf is a parameter and must be floating.
    X, y
        Inputs `(n, ...)` and targets: integer labels `(n,)` for
        classification, floating `(n, *out_shape)` for regression.
    likelihood
        `"classification"` (softmax cross-entropy on logits `(C,)`) or
        `"regression"` (Gaussian with standard deviation `sigma`).
    sigma
        The observation noise standard deviation (regression only).
    chunk_size
        Examples per sequential chunk (memory bounded by one chunk); the
        result does not depend on it. Default: all at once.

    Returns
    -------
    callable
        `v -> G v` on parameter pytrees shaped like
        `eqx.filter(model, eqx.is_array)`; JAX-traceable, so it can be handed
        to `matfree.logdet`, `matfree.solve`, ...

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.Linear(3, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    >>> y = jnp.zeros((5, 1))
    >>> G = ggn(model, X, y, likelihood="regression", sigma=1.0)
    >>> params = eqx.filter(model, eqx.is_array)
    >>> Gv = G(jax.tree_util.tree_map(jnp.ones_like, params))
    >>> bool(jnp.allclose(Gv.weight, (X.T @ (X @ jnp.ones(3) + 1))[None]))
    True
    """
    problem = _model.setup(
        model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=chunk_size
    )
    return _operator(problem, ggn_flat(problem))


def hessian(
    model,
    X,
    y,
    *,
    likelihood: str,
    sigma=None,
    chunk_size: int | None = None,
):
    r"""The exact Hessian of a model's negative log-likelihood as an operator.

    `v -> H v` by forward-over-reverse differentiation (`jax.jvp` of
    `jax.grad`), summed over chunks of examples. Unlike the GGN it contains
    the second derivatives of the network, so it may be indefinite away from
    a minimum. Arguments as in `ggn`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.Linear(3, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    >>> H = hessian(model, X, jnp.zeros((5, 1)), likelihood="regression", sigma=1.0)
    >>> ones = jax.tree_util.tree_map(jnp.ones_like, eqx.filter(model, eqx.is_array))
    >>> Hv = H(ones)  # a linear model: H equals the GGN
    >>> bool(jnp.allclose(Hv.weight, (X.T @ (X @ jnp.ones(3) + 1))[None]))
    True
    """
    problem = _model.setup(
        model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=chunk_size
    )
    return _operator(problem, hessian_flat(problem))


def diagonal(
    model,
    X,
    y,
    *,
    likelihood: str,
    sigma=None,
    method: str = "exact",
    key=None,
    num_probes: int = 32,
    probes: str = "rademacher",
    chunk_size: int | None = None,
    throw: bool = True,
) -> DiagonalEstimate:
    r"""The diagonal of the GGN: exact (per-example Jacobians) or stochastic.

    Parameters
    ----------
    model, X, y, likelihood, sigma, chunk_size
        As in `ggn`.
    method
        `"exact"` (default): `sum_i sum_c (J_i^T L_i e_c)^2` with `L_i L_i^T`
        the output-space Hessian, one VJP per output and example, batched
        over a chunk (memory `O(chunk_size k P)` for `k` outputs).
        `"stochastic"`: `matfree.stochtrace.diagonal` on the GGN matvec
        with `num_probes` Rademacher probes (unbiased; cost `num_probes`
        GGN products; the baseline of diagonal Laplace libraries).
    key
        A `jax.random` key (`method="stochastic"` only).
    num_probes, probes
        Number and distribution of the probes of the stochastic estimate
        (`"rademacher"`, `"gaussian"`, or `"unit"` with `num_probes = P`:
        exact; see `matfree.stochtrace.diagonal`).
    throw
        Raise on a non-finite diagonal (default); else inspect `status`.

    Returns
    -------
    DiagonalEstimate
        `value` shaped like the parameters; `std_error` (zeros for
        `"exact"`); `num_matvecs` (`0` for `"exact"`); `status`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, equinox as eqx
    >>> model = eqx.nn.Linear(3, 1, key=jax.random.PRNGKey(0))
    >>> X = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    >>> d = diagonal(model, X, jnp.zeros((5, 1)), likelihood="regression", sigma=1.0)
    >>> bool(jnp.allclose(d.value.weight, jnp.sum(X**2, axis=0)[None]))
    True
    """
    method = _checks.check_choice(method, "method", DIAGONAL_METHODS)
    problem = _model.setup(
        model, X, y, likelihood=likelihood, sigma=sigma, chunk_size=chunk_size
    )
    if method == "stochastic":
        if probes != "unit":
            _checks.check_key(key, "the probes of `method='stochastic'` are random")
        return stochtrace.diagonal(
            _operator(problem, ggn_flat(problem)),
            problem.params,
            key=key,
            num_probes=num_probes,
            probes=probes,
            throw=throw,
        )
    d = ggn_diagonal_flat(problem)
    code = _status.first((~jnp.all(jnp.isfinite(d)), _status.Status.NONFINITE))
    d = jnp.where(code != 0, jnp.nan, d)
    result = DiagonalEstimate(
        problem.unravel(d), problem.unravel(jnp.zeros_like(d)), 0, code
    )
    return _status.error_if(result, code) if throw else result
