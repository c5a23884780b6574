"""Trace-time errors: every message names the argument and the fix."""

import jax
import jax.numpy as jnp
import pytest

import matfree

A = jnp.eye(4)


def mv(v):
    return A @ v


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match=r"`method` must be one of .*'cg'.*'lsqr'.*'gcr'"):
        matfree.solve(mv, jnp.ones(4), method="qmr")


def test_non_square_operator():
    R = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="a square operator"):
        matfree.solve(lambda v: R @ v, jnp.ones(4))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="could not be applied to `b`"):
        matfree.solve(mv, jnp.ones(5))


def test_wrong_dtype():
    with pytest.raises(TypeError, match="floating or complex dtype"):
        matfree.solve(mv, jnp.ones(4, int))
    with pytest.raises(TypeError, match="changed the dtype"):
        matfree.solve(lambda v: A @ v, jnp.ones(4, jnp.float32))


def test_not_callable():
    with pytest.raises(TypeError, match="`matvec` must be a callable"):
        matfree.solve(A, jnp.ones(4))
    with pytest.raises(TypeError, match="`precond` must be a callable"):
        matfree.solve(mv, jnp.ones(4), precond=A)


def test_negative_tolerances_and_damp():
    with pytest.raises(ValueError, match="`rtol` must be nonnegative"):
        matfree.solve(mv, jnp.ones(4), rtol=-1e-3)
    with pytest.raises(ValueError, match="`atol` must be nonnegative"):
        matfree.solve(mv, jnp.ones(4), atol=-1.0)
    with pytest.raises(ValueError, match="`damp` must be nonnegative"):
        matfree.solve(mv, jnp.ones(4), method="lsqr", damp=-1.0)
    with pytest.raises(ValueError, match="`rtol` must be a scalar"):
        matfree.solve(mv, jnp.ones(4), rtol=jnp.ones(2))


def test_maxiter_and_restart():
    with pytest.raises(ValueError, match="`maxiter` must be at least 1"):
        matfree.solve(mv, jnp.ones(4), maxiter=0)
    with pytest.raises(TypeError, match="`maxiter` must be a static Python int"):
        matfree.solve(mv, jnp.ones(4), maxiter=2.5)
    with pytest.raises(ValueError, match="`restart` must be at least 1"):
        matfree.solve(mv, jnp.ones(4), method="gmres", restart=0)


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_symmetric_only_method_with_nonsymmetric_operator(method):
    with pytest.raises(ValueError, match=r"needs a symmetric operator.*'gmres'"):
        matfree.solve(mv, jnp.ones(4), method=method, symmetric=False)


def test_x0_must_match_b():
    with pytest.raises(ValueError, match="`x0` must have the structure, shapes and dtype"):
        matfree.solve(mv, jnp.ones(4), x0=jnp.ones(3))


def test_lsqr_rectangular_needs_x0_and_no_precond():
    R = jnp.ones((5, 3))
    with pytest.raises(ValueError, match="pass `x0`"):
        matfree.solve(lambda v: R @ v, jnp.ones(5), method="lsqr")
    with pytest.raises(ValueError, match=r"`matvec\(x\)` must be shaped like `b`"):
        matfree.solve(lambda v: R @ v, jnp.ones(4), method="lsqr", x0=jnp.ones(3))
    with pytest.raises(ValueError, match="`precond` is not supported"):
        matfree.solve(mv, jnp.ones(4), method="lsqr", precond=lambda v: v)


def test_batched_needs_trailing_axis():
    with pytest.raises(ValueError, match="leading batch axis"):
        matfree.solve(mv, jnp.float64(1.0), batched=True)


def test_precond_of_wrong_shape():
    with pytest.raises(ValueError, match="`precond` must map a vector to a vector"):
        matfree.solve(mv, jnp.ones(4), precond=lambda v: v[:2])


def test_unknown_gradient():
    with pytest.raises(
        ValueError, match=r"`gradient` must be one of \('adjoint', 'autodiff'\)"
    ):
        matfree.solve(mv, jnp.ones(4), gradient="implicit")
    with pytest.raises(ValueError, match="`gradient='hutchinson'` is not available"):
        matfree.solve(mv, jnp.ones(4), gradient="hutchinson")


def test_forward_mode_through_the_adjoint_rule():
    # The implicit rule is a custom JVP: `jax.jvp` works with the default.
    for gradient in ("adjoint", "autodiff"):
        _, dx = jax.jvp(
            lambda t, g=gradient: (
                matfree.solve(lambda v: t * v, jnp.ones(4), gradient=g).value
            ),
            (2.0,),
            (1.0,),
        )
        assert jnp.allclose(dx, -jnp.ones(4) / 4)


def test_batched_x0_needs_the_batch_size_of_b():
    with pytest.raises(ValueError, match="`x0` must have the structure"):
        matfree.solve(mv, jnp.ones((2, 4)), x0=jnp.ones((3, 4)), batched=True)
