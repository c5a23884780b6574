"""Jitted solves shared by the solver tests.

Every dense operator is passed as an argument (not closed over) and the
tolerances are traced, so tests that use the same method, shape, dtype and
static options share one compiled function. Compilation dominates the cost
of these tests.
"""

import functools

import jax
import jax.numpy as jnp

import matfree

N = 30  # the size of most test problems: one shape, fewer compiles


@functools.partial(
    jax.jit,
    static_argnames=("method", "batched", "history", "restart", "maxiter", "throw"),
)
def dense_solve(
    A,
    b,
    rtol=None,
    x0=None,
    precond=None,
    damp=0.0,
    *,
    method="cg",
    batched=False,
    history=False,
    restart=30,
    maxiter=None,
    throw=False,
):
    """`matfree.solve` with the matvec `v -> A v`; `precond` a pytree callable."""
    return matfree.solve(
        lambda v: A @ v,
        b,
        method=method,
        rtol=rtol,
        x0=x0,
        precond=precond,
        damp=damp,
        batched=batched,
        history=history,
        restart=restart,
        maxiter=maxiter,
        throw=throw,
    )


@functools.partial(jax.jit, static_argnames=("method", "gradient", "maxiter", "throw"))
def solve_and_grad(
    A,
    b,
    w,
    rtol=None,
    x0=None,
    damp=0.0,
    *,
    method,
    gradient="adjoint",
    maxiter=None,
    throw=False,
):
    """`solve(A, b)` and the gradients of `w^T x` w.r.t. every entry of `A` and `b`.

    One compile serves the forward tests and the gradient tests of a method.
    """

    def loss(A, b):
        sol = matfree.solve(
            lambda v: A @ v,
            b,
            method=method,
            rtol=rtol,
            x0=x0,
            damp=damp,
            gradient=gradient,
            maxiter=maxiter,
            throw=throw,
        )
        return jnp.dot(w, sol.value), sol

    (_, sol), (gA, gb) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(A, b)
    return sol, gA, gb
