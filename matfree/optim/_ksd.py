"""Krylov subspace descent (Vinyals & Povey, AISTATS 2012) as an optax transformation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from matfree import _checks
from matfree.decomp import lanczos
from matfree.optim import _common as c


class KSDState(NamedTuple):
    """The state of `krylov_subspace_descent`.

    Attributes
    ----------
    count, num_values, num_grads, num_curvature
        Steps, objective values, gradients and curvature-vector products
        (Lanczos steps on the curvature plus the subspace Hessians:
        `depth + 1` Hessian-vector products per inner Newton step).
    direction
        The last step (flat); it spans the subspace of the next step too.
    status
        `OK`, or `NOT_CONVERGED` when no inner step decreased the objective.
    """

    count: jax.Array
    num_values: jax.Array
    num_grads: jax.Array
    num_curvature: jax.Array
    direction: jax.Array
    status: jax.Array


def krylov_subspace_descent(
    *,
    depth: int = 10,
    num_inner: int = 5,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_backtracks: int = 20,
) -> optax.GradientTransformationExtraArgs:
    r"""Krylov subspace descent (Vinyals & Povey 2012).

    Each update builds an orthonormal basis of the Krylov space
    `span{g, G g, ..., G^{depth-1} g}` of the curvature `G` (the Gauss-Newton
    matrix, or the Hessian of `value_fn`) by `matfree.decomp.lanczos`, adds
    the previous step (orthogonalised), and minimises `value_fn` over
    `x + span(basis)` by `num_inner` Newton steps in the
    `(depth + 1)`-dimensional subspace (the small Hessian exact, its
    eigenvalues replaced by their absolute values with a floor, so every
    step is downhill; Armijo backtracking).

    In the paper's setting, `model_fn`/`loss_fn` (or `ggn_fn`) close over a
    curvature mini-batch and `value_fn` over a larger batch for the subspace
    minimisation: `opt.update(grad, state, params, value_fn=f, model_fn=m,
    loss_fn=l)`. Without `model_fn`/`ggn_fn` the Hessian of `value_fn`
    spans the subspace.

    Parameters
    ----------
    depth
        Krylov dimension `k` (static; at most the number of parameters).
    num_inner
        Newton steps in the subspace per update (static).
    c1, shrink, max_backtracks
        The Armijo line search of the inner steps.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        Its state is a `KSDState`. A NaN or inf in the incoming gradient or
        value raises an error.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from matfree import optim
    >>> A = jnp.diag(jnp.array([1.0, 2.0, 3.0, 4.0]))
    >>> def f(x):
    ...     return 0.5 * x @ A @ x - jnp.sum(x)
    >>> opt = optim.krylov_subspace_descent(depth=4, num_inner=1)
    >>> x = jnp.zeros(4)
    >>> upd, state = opt.update(jax.grad(f)(x), opt.init(x), x, value_fn=f)
    >>> bool(jnp.allclose(x + upd, 1 / jnp.diag(A)))  # the Krylov space is R^4
    True
    """
    depth = _checks.check_int(depth, "depth")
    num_inner = _checks.check_int(num_inner, "num_inner")
    max_backtracks = _checks.check_int(max_backtracks, "max_backtracks", minimum=0)
    c.check_armijo(c1, shrink)

    def init(params):
        x, _ = c.flat(params)
        _checks.check_depth(depth, x.shape[0])
        zero = jnp.zeros((), c.INT)
        return KSDState(zero, zero, zero, zero, jnp.zeros_like(x), zero)

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
        name = "krylov_subspace_descent"
        f, x, g, f0, nv = c.start(updates, params, value_fn, value, name)
        _checks.check_depth(depth, x.shape[0])
        G = c.curvature(
            name, params, f, x, model_fn=model_fn, loss_fn=loss_fn, ggn_fn=ggn_fn
        )
        zero_g = jnp.all(g == 0)
        v0 = jnp.where(zero_g, jnp.ones_like(g), g)
        Q = lanczos(G, v0, depth=depth, throw=False).basis  # (depth, n)
        # The previous step, orthogonalised twice against the Krylov basis.
        d = state.direction
        for _ in range(2):
            d = d - Q.T @ (Q @ d)
        dn = jnp.linalg.norm(d)
        keep = dn > 1e-8 * jnp.maximum(jnp.linalg.norm(state.direction), 1e-300)
        d = jnp.where(keep, d / jnp.where(keep, dn, 1.0), 0.0)
        B = jnp.concatenate([Q, d[None]])  # (depth + 1, n); a zero row is harmless
        B = jnp.where(jnp.all(jnp.isfinite(B)), B, 0.0)

        def phi(a):
            return f(x + B.T @ a)

        def inner(_, carry):
            a, fa, nvals, ok = carry
            ga = jax.grad(phi)(a)
            Ha = jax.hessian(phi)(a)
            w, V = jnp.linalg.eigh(0.5 * (Ha + Ha.T))
            floor = 1e-8 * jnp.maximum(jnp.max(jnp.abs(w)), jnp.finfo(w.dtype).tiny)
            w = jnp.maximum(jnp.abs(w), floor)
            step = -(V @ ((V.T @ ga) / w))
            step, slope, _ = c.descent_or_gradient(ga, step)
            t, f_new, k, ok_i = c.armijo(
                phi, a, step, fa, slope, c1=c1, shrink=shrink, maxiter=max_backtracks
            )
            return a + t * step, f_new, nvals + k, ok | ok_i

        a0 = jnp.zeros((B.shape[0],), x.dtype)
        init_carry = (a0, f0, c.INT(0), jnp.array(False))
        a, _, nls, ok = jax.lax.fori_loop(0, num_inner, inner, init_carry)
        p = jnp.where(zero_g, 0.0, B.T @ a)
        ok = ok | zero_g
        new_state = KSDState(
            count=state.count + 1,
            num_values=state.num_values + nv + nls,
            num_grads=state.num_grads + 1 + num_inner,
            num_curvature=state.num_curvature + depth + num_inner * B.shape[0],
            direction=p,
            status=jnp.where(ok, 0, 1).astype(c.INT),
        )
        return c.unravel_like(params, p), new_state

    return optax.GradientTransformationExtraArgs(init, update)
