r"""The one core of the stochastic trace estimators (Hutchinson, Hutch++, XTrace).

`matfree.trace` (products with `A`) and `matfree.trace_funm` / `matfree.logdet`
(Lanczos approximations of products with `f(A)`) estimate `tr F` for a
symmetric `F` they can only touch through two functions of a block of rows
`Z` (shape `(b, n)`):

- `quadform(Z) -> (values, aux)`: `values[i] ≈ z_i^T F z_i`, shape `(b,)`;
- `action(Z) -> (FZ, values, aux)`: the rows `F z_i` and the same quadratic
  forms (`trace` takes them as `z_i^T (F z_i)`, `trace_funm` by quadrature).

`aux` is any pytree of per-row arrays (leading axis `b`): the Ritz values and
finiteness flags of the Lanczos runs, for example. `estimate` validates the
options, samples the probes, runs the chosen estimator (in sequential chunks
of rows if asked) and returns the mean and its standard error.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from matfree import _checks

METHODS = ("hutchinson", "hutch++", "xtrace")
PROBES = ("rademacher", "gaussian", "unit")
# The minimum `num_probes` of each method; the sketch has `num_probes // it` vectors.
DIVISOR = {"hutchinson": 1, "hutch++": 3, "xtrace": 2}


class Estimate(NamedTuple):
    """What the core returns to `trace`, `trace_funm` and `logdet`."""

    value: jax.Array
    std_error: jax.Array
    samples: jax.Array
    num_rows: int  # rows given to `quadform` and `action`: products with F
    aux: Any  # the per-row `aux` of every stage, concatenated in order


def sample_probes(
    key, num_probes: int, n: int, *, probes: str = "rademacher", dtype=float
) -> jax.Array:
    """Return `num_probes` probe vectors of size `n`, shape `(num_probes, n)`.

    `probes` is `"rademacher"` (entries +-1), `"gaussian"` (standard normal)
    or `"unit"` (the unit vectors `e_1, ..., e_n`; needs `num_probes == n`, no
    `key`). Every kind satisfies `E[z z^T] = I` (for `"unit"`, up to the
    factor `n`, which the estimators account for). For a complex `dtype` the
    entries are real (Rademacher or standard normal) stored in that dtype:
    real probes have `E[z z^H] = I` too, so they serve complex operators.

    Examples
    --------
    >>> import jax
    >>> Z = sample_probes(jax.random.PRNGKey(0), 3, 4)
    >>> Z.shape, bool(jax.numpy.all(jax.numpy.abs(Z) == 1))
    ((3, 4), True)
    >>> sample_probes(None, 2, 2, probes="unit")
    Array([[1., 0.],
           [0., 1.]], dtype=float64)
    """
    probes = _checks.check_choice(probes, "probes", PROBES)
    if probes == "unit":
        if num_probes != n:
            msg = (
                f'`probes="unit"` uses every unit vector and needs `num_probes` == n '
                f"= {n}; got num_probes={num_probes}. Use random probes for fewer."
            )
            raise ValueError(msg)
        return jnp.eye(n, dtype=dtype)
    check_random_key(key, probes)
    # Real entries, also for complex dtypes (real dtypes pass through as given).
    real = jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype
    if probes == "rademacher":
        Z = jax.random.rademacher(key, (num_probes, n), dtype=real)
    else:
        Z = jax.random.normal(key, (num_probes, n), dtype=real)
    return Z.astype(dtype)


def check_random_key(key, probes):
    """Return `key`, or raise the one `TypeError` of a missing key."""
    _checks.check_key(
        key, f'random probes, probes="{probes}", need one; or use `probes="unit"`'
    )
    return key


class Options(NamedTuple):
    """Validated options of an estimator (see `check_options`)."""

    method: str
    probes: str
    num_probes: int
    chunk_size: int
    n: int
    dtype: Any


def check_options(method, probes, num_probes, n, dtype=float, *, chunk_size=None):
    """Validate the options of an estimator of an operator of size `n`.

    Complex operators (`dtype` complex) take `method="hutchinson"` only: the
    sketches of Hutch++ and XTrace assume a real symmetric `F`.
    """
    method = _checks.check_choice(method, "method", METHODS)
    if method != "hutchinson" and jnp.issubdtype(dtype, jnp.complexfloating):
        msg = (
            f'`method="{method}"` supports real dtypes only; got {jnp.dtype(dtype)}. '
            'For complex operators use `method="hutchinson"`.'
        )
        raise ValueError(msg)
    probes = _checks.check_choice(probes, "probes", PROBES)
    divisor = DIVISOR[method]
    is_int = isinstance(num_probes, int) and not isinstance(num_probes, bool)
    if is_int and divisor > 1 and num_probes < divisor:
        msg = (
            f'`num_probes` must be at least {divisor} for `method="{method}"`; '
            f"got num_probes={num_probes}."
        )
        raise ValueError(msg)
    num_probes = _checks.check_int(num_probes, "num_probes", minimum=divisor)
    if method != "hutchinson":
        if probes == "unit":
            msg = (
                '`probes="unit"` is exact and needs no variance reduction; use '
                f'`method="hutchinson"`, not {method!r}.'
            )
            raise ValueError(msg)
        if num_probes // divisor > n:
            msg = (
                f"`num_probes` // {divisor} must be at most n = {n} for "
                f'`method="{method}"`; got num_probes={num_probes}.'
            )
            raise ValueError(msg)
    if chunk_size is None:
        chunk_size = num_probes
    chunk_size = _checks.check_int(chunk_size, "chunk_size", maximum=num_probes)
    return Options(method, probes, num_probes, chunk_size, n, dtype)


def estimate(quadform, action, key, options: Options) -> Estimate:
    """Estimate `tr F` with validated `options`; see the module docstring."""
    quadform = _chunks(quadform, options.chunk_size)
    action = _chunks(action, options.chunk_size)
    run = {"hutchinson": _hutchinson, "hutch++": _hutchpp, "xtrace": _xtrace}
    n, dtype, probes = options.n, options.dtype, options.probes
    return run[options.method](quadform, action, key, n, dtype, probes, options.num_probes)


def _hutchinson(quadform, _action, key, n, dtype, probes, num_probes):
    Z = sample_probes(key, num_probes, n, probes=probes, dtype=dtype)
    samples, aux = quadform(Z)
    if probes == "unit":
        samples = n * samples
    mean, se = mean_and_std_error(samples, deterministic=probes == "unit")
    return Estimate(mean, se, samples, num_probes, aux)


def _hutchpp(quadform, action, key, n, dtype, probes, num_probes):
    """Hutch++: `tr(Q^T F Q) + mean of g^T (I - QQ^T) F (I - QQ^T) g`."""
    k = num_probes // 3
    key_s, key_g = jax.random.split(check_random_key(key, probes))
    S = sample_probes(key_s, k, n, probes=probes, dtype=dtype)
    G = sample_probes(key_g, num_probes - 2 * k, n, probes=probes, dtype=dtype)
    Y, _, aux_sketch = action(S)
    Qt, _ = qr_rows(Y)  # (k, n)
    Gp = G - (G @ Qt.T) @ Qt  # projected probes (I - QQ^T) g, as rows
    values, aux = quadform(jnp.concatenate([Qt, Gp]))
    samples = values[k:]
    mean, se = mean_and_std_error(samples)
    return Estimate(jnp.sum(values[:k]) + mean, se, samples, num_probes, [aux_sketch, aux])


def _xtrace(_quadform, action, key, n, dtype, probes, num_probes):
    """XTrace: the mean of the leave-one-out estimates (`xtrace_loo`)."""
    s = num_probes // 2
    Om = sample_probes(check_random_key(key, probes), s, n, probes=probes, dtype=dtype)
    Y, d, aux_sketch = action(Om)  # F omega_i (rows) and omega_i^T F omega_i
    Qt, R = qr_rows(Y)  # (s, n)
    Z, h, aux = action(Qt)  # F q_j (rows) and q_j^T F q_j
    H = Qt @ Z.T
    H = (H + H.T) / 2
    H = H - jnp.diag(jnp.diagonal(H)) + jnp.diag(h)  # the quadratic forms on the diagonal
    samples = xtrace_loo(R, Qt @ Om.T, H, Om @ Z.T, d)
    mean, se = mean_and_std_error(samples)
    return Estimate(mean, se, samples, 2 * s, [aux_sketch, aux])


def qr_rows(Y):
    """Thin QR of the tall matrix `Y^T` from its rows `Y` (k, n): `(Q^T, R)`.

    Classical Gram-Schmidt with one reorthogonalisation ("twice is enough",
    Giraud et al. 2005): orthonormal to rounding, positive diagonal in `R`,
    differentiable by autodiff. It needs nothing but inner products, so a
    sketch sharded along `n` stays sharded (each product is an all-reduce of
    k numbers), where LAPACK's Householder QR would gather the sketch onto
    one device. A column in the span of the previous ones gets the direction
    of its rounding residual (as Householder does); an exactly zero one, a
    zero row of `Q^T` and a zero pivot.
    """
    k = Y.shape[0]

    def step(j, carry):
        Qt, R = carry
        y = Y[j]
        c1 = jnp.conj(Qt) @ y  # rows >= j of Qt are still zero
        y = y - c1 @ Qt
        c2 = jnp.conj(Qt) @ y
        y = y - c2 @ Qt
        r = jnp.sqrt(jnp.sum(jnp.abs(y) ** 2))
        ok = r > 0
        q = jnp.where(ok, y / jnp.where(ok, r, 1), 0)
        R = R.at[:, j].set((c1 + c2).at[j].set(r.astype(R.dtype)))
        return Qt.at[j].set(q), R

    init = (jnp.zeros_like(Y), jnp.zeros((k, k), Y.dtype))
    return jax.lax.fori_loop(0, k, step, init)


def mean_and_std_error(samples, deterministic: bool = False):
    """Sample mean over the leading axis and its standard error.

    The standard error is `0` for deterministic samples and `inf` for a
    single random one; it is real (from `|x - mean|^2`) for complex samples.
    """
    m = samples.shape[0]
    mean = jnp.mean(samples, axis=0)
    real = jnp.finfo(mean.dtype).dtype  # a real standard error, also for complex
    if deterministic:
        return mean, jnp.zeros(mean.shape, real)
    if m == 1:
        return mean, jnp.full(mean.shape, jnp.inf, real)
    var = jnp.sum(jnp.abs(samples - mean) ** 2, axis=0) / (m - 1)
    return mean, jnp.sqrt(var / m)


def xtrace_loo(R, W, H, M, d):
    r"""The `s` leave-one-out estimates of XTrace from its sketch's small matrices.

    For a symmetric `F`, probes `Ω` (rows `ω_i`) and `F Ω^T = Q R` (thin QR),
    sample `i` is `tr(Q_i^T F Q_i) + u_i^T F u_i` with `Q_i = orth(F Ω_{-i}^T)`
    (leave one out) and `u_i = (I - Q_i Q_i^T) ω_i`. It needs no product with
    `F` beyond `F Ω^T` and `F Q`: `Q_i Q_i^T = Q (I - s_i s_i^T) Q^T` with
    `s_i` the normalised `i`-th column of `R^{-T}` (a rank-one downdate), so
    everything is a function of the `(s, s)` matrices below.

    Parameters
    ----------
    R
        The triangular factor of `F Ω^T = Q R`; column `i` is `Q^T F ω_i`.
    W
        `Q^T Ω^T`.
    H
        `Q^T F Q` (only its symmetric part enters).
    M
        `Ω F Q`: row `i` is `ω_i^T F Q`.
    d
        `diag(Ω F Ω^T)`, shape `(s,)`.

    Returns
    -------
    The `s` estimates, each unbiased for `tr F` when the products are exact.
    """
    # s_i: the unit vector orthogonal to the other columns of R. A (near)
    # rank-deficient sketch gets its tiny pivots floored so that R^{-T} stays
    # finite.
    diag = jnp.diagonal(R)
    floor = jnp.finfo(R.dtype).eps * jnp.max(jnp.abs(diag))
    diag_safe = jnp.where(jnp.abs(diag) > floor, diag, jnp.where(diag < 0, -floor, floor))
    R_safe = R - jnp.diag(diag) + jnp.diag(diag_safe)
    eye = jnp.eye(R.shape[0], dtype=R.dtype)
    Sm = jax.scipy.linalg.solve_triangular(R_safe, eye, trans="T", lower=False)
    Sm = Sm / jnp.linalg.norm(Sm, axis=0, keepdims=True)
    # Low-rank part: tr(Q_i^T F Q_i) = tr(H) - s_i^T H s_i.
    low_rank = jnp.trace(H) - jnp.sum(Sm * (H @ Sm), axis=0)
    # u_i = omega_i - Q v_i with v_i = w_i - s_i (s_i^T w_i), as columns of V.
    V = W - Sm * jnp.sum(Sm * W, axis=0)
    # u_i^T F u_i = omega_i^T F omega_i - omega_i^T F Q v_i - v_i^T Q^T F omega_i
    #               + v_i^T H v_i.
    cross = jnp.sum(M.T * V, axis=0) + jnp.sum(R * V, axis=0)
    return low_rank + d - cross + jnp.sum(V * (H @ V), axis=0)


def _chunks(fn, chunk_size):
    """Apply `fn` (rows -> per-row outputs) in sequential chunks of rows.

    Each chunk is rematerialised in the backward pass; a last incomplete chunk
    is padded with zero rows, whose outputs are dropped.
    """

    def run(X):
        m = X.shape[0]
        if chunk_size >= m:
            return fn(X)
        num = -(-m // chunk_size)
        X = jnp.concatenate([X, jnp.zeros((num * chunk_size - m, X.shape[1]), X.dtype)])
        out = jax.lax.map(jax.checkpoint(fn), X.reshape(num, chunk_size, -1))
        return jax.tree_util.tree_map(lambda y: y.reshape(-1, *y.shape[2:])[:m], out)

    return run
