"""Hessian-free optimisation (Martens, ICML 2010) as an optax transformation."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from matfree import _checks
from matfree.optim import _common as c


class HessianFreeState(NamedTuple):
    """The state of `hessian_free`.

    Attributes
    ----------
    count, num_values, num_grads, num_curvature
        Steps, objective values (backtracking and line search), gradients and
        curvature-vector products (CG iterations plus one for the warm start).
    damping
        The Levenberg-Marquardt damping `lambda` for the next step.
    direction
        The last CG solution (flat), the warm start of the next solve.
    ratio
        The reduction ratio `(f(x + p) - f(x)) / q(p)` of the last step.
    num_cg
        CG iterations of the last step.
    status
        `OK`, or `NOT_CONVERGED` when the last line search found no decrease
        (the update was then zero).
    """

    count: jax.Array
    num_values: jax.Array
    num_grads: jax.Array
    num_curvature: jax.Array
    damping: jax.Array
    direction: jax.Array
    ratio: jax.Array
    num_cg: jax.Array
    status: jax.Array


def hessian_free(
    *,
    damping: float = 1.0,
    maxiter: int = 50,
    tol: float = 5e-4,
    warm_start: float = 0.95,
    c1: float = 1e-2,
    shrink: float = 0.8,
    max_backtracks: int = 20,
) -> optax.GradientTransformationExtraArgs:
    r"""Hessian-free optimisation (Martens 2010): damped Gauss-Newton steps by CG.

    Each update approximately minimises the quadratic model
    `q(p) = g^T p + 1/2 p^T (G + lambda I) p` by conjugate gradients, where
    `G` is the generalised Gauss-Newton matrix (products `J^T H_loss J v`,
    never formed), then:

    - CG starts from `warm_start` times the previous step's solution;
    - CG stops by Martens' relative-progress test (`q` improved by less than
      `tol` per iteration over the last `max(10, i/10)` iterations), at
      negative curvature or after `maxiter` iterations;
    - CG-iterate backtracking: of the iterates saved at iterations
      `ceil(1.3^j)`, the last one that does not increase the objective
      moving backwards is kept;
    - the Levenberg-Marquardt damping `lambda` is multiplied by 3/2 if the
      reduction ratio `rho = (f(x + p) - f(x)) / q(p)` is below 1/4 and by
      2/3 if above 3/4;
    - an Armijo line search (`c1`, `shrink`) on the step, falling back to
      `-g` if the step is not a descent direction.

    Pass the curvature through the update's extra arguments: `model_fn` and
    `loss_fn` (`loss_fn(model_fn(params))` is the loss on the curvature
    mini-batch; both closing over that batch) or `ggn_fn(params, v) -> G v`;
    without either, the Hessian of `value_fn` is used (damped; CG stops at
    negative curvature). `value_fn` (the objective on the gradient batch) is
    required: `opt.update(grad, state, params, value_fn=f, model_fn=m,
    loss_fn=l)`.

    Parameters
    ----------
    damping
        The initial damping `lambda > 0`.
    maxiter
        Static bound on CG iterations per step.
    tol
        Martens' progress tolerance of CG.
    warm_start
        Factor on the previous solution used as CG's start (0 for a cold start).
    c1, shrink, max_backtracks
        The Armijo line search.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        Its state is a `HessianFreeState`. A NaN or inf in the incoming
        gradient or value raises an error.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import optim
    >>> X = jnp.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> y = jnp.array([0.0, 1.0, 3.0])
    >>> def model(w):
    ...     return X @ w
    >>> def loss(out):
    ...     return 0.5 * jnp.sum((out - y) ** 2)
    >>> def f(w):
    ...     return loss(model(w))
    >>> opt = optim.hessian_free(damping=1e-6)
    >>> w = jnp.zeros(2)
    >>> state = opt.init(w)
    >>> for _ in range(3):
    ...     upd, state = opt.update(
    ...         jax.grad(f)(w), state, w, value_fn=f, model_fn=model, loss_fn=loss
    ...     )
    ...     w = w + upd
    >>> bool(jnp.allclose(w, jnp.linalg.lstsq(X, y)[0], atol=1e-6))
    True
    """
    maxiter = _checks.check_int(maxiter, "maxiter")
    max_backtracks = _checks.check_int(max_backtracks, "max_backtracks", minimum=0)
    _positive(damping, "damping")
    _positive(tol, "tol")
    if not 0 <= warm_start <= 1:
        msg = f"`warm_start` must be in [0, 1]; got warm_start={warm_start!r}."
        raise ValueError(msg)
    c.check_armijo(c1, shrink)
    saves = _save_points(maxiter)

    def init(params):
        x, _ = c.flat(params)
        zero = jnp.zeros((), c.INT)
        return HessianFreeState(
            count=zero,
            num_values=zero,
            num_grads=zero,
            num_curvature=zero,
            damping=jnp.full((), damping, x.dtype),
            direction=jnp.zeros_like(x),
            ratio=jnp.zeros((), x.dtype),
            num_cg=zero,
            status=zero,
        )

    def update(
        updates,
        state,
        params=None,
        *,
        value_fn=None,
        value=None,
        model_fn=None,
        loss_fn=None,
        ggn_fn=None,
        **extra_args,
    ):
        del extra_args
        f, x, g, f0, nv = c.start(updates, params, value_fn, value, "hessian_free")
        G = c.curvature(
            "hessian_free", params, f, x, model_fn=model_fn, loss_fn=loss_fn, ggn_fn=ggn_fn
        )
        lam = state.damping

        def A(v):
            return G(v) + lam * v

        p0 = warm_start * state.direction
        cands, qs, num_cand, num_cg = _cg(A, g, p0, saves, maxiter, tol)

        # CG-iterate backtracking: from the last iterate backwards while f decreases.
        def fval(p):
            fp = f(x + p)
            return jnp.where(jnp.isfinite(fp), fp, jnp.inf)

        last = num_cand - 1
        f_last = fval(cands[last])

        def cond(carry):
            j, *_, go = carry
            return go & (j >= 0)

        def body(carry):
            j, best, f_best, k, _ = carry
            fj = fval(cands[j])
            better = fj < f_best
            return (
                j - 1,
                jnp.where(better, j, best),
                jnp.where(better, fj, f_best),
                k + 1,
                better,
            )

        _, best, f_best, nbt, _ = jax.lax.while_loop(
            cond, body, (last - 1, last, f_last, c.INT(1), jnp.array(True))
        )
        p = cands[best]
        q = qs[best]
        ratio = jnp.where(q < 0, (f_best - f0) / q, -jnp.inf)
        ratio = jnp.where(jnp.isfinite(ratio), ratio, -jnp.inf)
        lam_new = jnp.where(
            ratio < 0.25, lam * 1.5, jnp.where(ratio > 0.75, lam / 1.5, lam)
        )

        p, slope, _ = c.descent_or_gradient(g, p)
        t, _, nls, ok = c.armijo(
            f, x, p, f0, slope, c1=c1, shrink=shrink, maxiter=max_backtracks
        )
        new_state = HessianFreeState(
            count=state.count + 1,
            num_values=state.num_values + nv + nbt + nls,
            num_grads=state.num_grads + 1,
            num_curvature=state.num_curvature + num_cg + 1,
            damping=lam_new.astype(lam.dtype),
            direction=cands[last],
            ratio=ratio.astype(lam.dtype),
            num_cg=num_cg,
            status=jnp.where(ok, 0, 1).astype(c.INT),
        )
        return c.unravel_like(params, t * p), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _save_points(maxiter):
    """Iterations `ceil(1.3^j)` up to `maxiter` at which CG saves its iterate."""
    points, j = [], 0
    while (k := math.ceil(1.3**j)) <= maxiter:
        if not points or k > points[-1]:
            points.append(k)
        j += 1
    return tuple(points)


def _cg(A, g, p0, saves, maxiter, tol):
    """CG on `A p = -g` from `p0`, Martens' stopping test, iterates saved at `saves`.

    Returns `(candidates, q_values, num_candidates, num_iterations)`: the saved
    iterates in order, the final iterate last.
    """
    n = g.shape[0]
    dtype = g.dtype
    num_slots = len(saves) + 1
    save_at = jnp.asarray((*saves, maxiter + 1), c.INT)

    def q_of(p, r):  # g^T p + 1/2 p^T A p with A p = -r - g
        return 0.5 * (g @ p) - 0.5 * (p @ r)

    r = -g - A(p0)
    # A warm start worse than zero (q(p0) > 0) is dropped.
    bad = ~(q_of(p0, r) <= 0)
    p0 = jnp.where(bad, 0.0, p0)
    r = jnp.where(bad, -g, r)
    qhist = jnp.zeros((maxiter + 1,), dtype).at[0].set(q_of(p0, r))
    cands = jnp.zeros((num_slots, n), dtype)
    qs = jnp.zeros((num_slots,), dtype)
    init = (c.INT(0), p0, r, r, r @ r, qhist, cands, qs, c.INT(0), jnp.array(False))

    def cond(carry):
        i, *_, stop = carry
        return (i < maxiter) & ~stop

    def body(carry):
        i, p, r, d, rr, qhist, cands, qs, slot, _ = carry
        Ad = A(d)
        dAd = d @ Ad
        negative = ~(dAd > 0)
        alpha = jnp.where(negative, 0.0, rr / jnp.where(negative, 1.0, dAd))
        p = p + alpha * d
        r = r - alpha * Ad
        rr_new = r @ r
        d = r + (rr_new / jnp.where(rr > 0, rr, 1.0)) * d
        i = i + 1
        q = q_of(p, r)
        qhist = qhist.at[i].set(q)
        save = i == save_at[slot]
        cands = jnp.where(save, cands.at[slot].set(p), cands)
        qs = jnp.where(save, qs.at[slot].set(q), qs)
        slot = slot + save.astype(c.INT)
        k = jnp.maximum(10, i // 10)
        q_old = qhist[jnp.maximum(i - k, 0)]
        stalled = (i > k) & (q < 0) & ((q - q_old) / q < k * tol)
        stop = negative | stalled | (rr_new == 0) | ~jnp.isfinite(rr_new)
        return i, p, r, d, rr_new, qhist, cands, qs, slot, stop

    i, p, r, _, _, _, cands, qs, slot, _ = jax.lax.while_loop(cond, body, init)
    # The final iterate goes last (it may coincide with the last saved one).
    last_saved = jnp.maximum(slot - 1, 0)
    same = (slot > 0) & (save_at[last_saved] == i)
    slot = jnp.where(same, last_saved, slot)
    cands = cands.at[slot].set(p)
    qs = qs.at[slot].set(q_of(p, r))
    return cands, qs, slot + 1, i


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        msg = f"`{name}` must be a positive float; got {name}={value!r}."
        raise ValueError(msg)
