"""Bad input (trace-time errors) and run-time problems (status + throw) of the actions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import matfree
from matfree.status import Status

A = jnp.diag(jnp.arange(1.0, 7.0))
V = jnp.ones(6)


def mv(x):
    return A @ x


@pytest.mark.parametrize(
    "call",
    [
        lambda **kw: matfree.funm_action(jnp.exp, mv, V, **kw).value,
        lambda **kw: matfree.exp_action(mv, V, **kw).value,
        lambda **kw: matfree.sqrt_action(mv, V, **kw).value,
    ],
)
def test_depth_errors(call):
    with pytest.raises(ValueError, match=r"`depth` must satisfy 1 <= depth <= n = 6"):
        call(depth=0)
    with pytest.raises(ValueError, match=r"`depth` must satisfy 1 <= depth <= n = 6"):
        call(depth=7)
    with pytest.raises(TypeError, match="`depth` must be a static Python int"):
        call(depth=2.0)


def test_operator_errors():
    with pytest.raises(TypeError, match="`matvec` must be a callable"):
        matfree.exp_action(A, V, depth=2)
    with pytest.raises(ValueError, match="must map a vector to a vector of the same shape"):
        matfree.sqrt_action(lambda x: x[:3], V, depth=2)
    with pytest.raises(ValueError, match="`matvec` could not be applied to `v`"):
        matfree.funm_action(jnp.exp, mv, jnp.ones(5), depth=2)
    with pytest.raises(TypeError, match="`v` must have a floating or complex dtype"):
        matfree.funm_action(jnp.exp, mv, jnp.ones(6, dtype=int), depth=2)


def test_f_errors():
    with pytest.raises(TypeError, match="`f` must be a callable scalar function"):
        matfree.funm_action("exp", mv, V, depth=2)
    with pytest.raises(ValueError, match="`f` must act elementwise"):
        matfree.funm_action(jnp.sum, mv, V, depth=2)
    with pytest.raises(TypeError, match="`f` could not be applied"):
        matfree.funm_action(lambda x: x @ jnp.ones(4), mv, V, depth=2)
    # Shape-preserving but not elementwise: checked on a probe, also under jit.
    with pytest.raises(ValueError, match="applying f to each entry alone"):
        matfree.funm_action(lambda x: x / jnp.sum(x), mv, V, depth=2)
    with pytest.raises(ValueError, match="applying f to each entry alone"):
        jax.jit(lambda v: matfree.funm_action(lambda x: jnp.sort(x)[::-1], mv, v, depth=2))(
            V
        )
    # Parameters of f may be traced: the probe check steps aside, the action works.
    p = jnp.asarray(2.0)
    out = jax.jit(lambda p: matfree.funm_action(lambda x: x**p, mv, V, depth=2).value)(p)
    assert bool(jnp.all(jnp.isfinite(out)))
    with pytest.raises(TypeError, match="`f` returned float"):
        matfree.funm_action(jnp.abs, mv, V, depth=2, symmetric=False)


def test_exp_argument_errors():
    with pytest.raises(
        ValueError, match=r"`t` must be finite and non-negative; got t=-1\.0"
    ):
        matfree.exp_action(mv, V, t=-1.0, depth=2)
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        matfree.exp_action(mv, V, t=jnp.ones(2), depth=2)
    with pytest.raises(ValueError, match="`tol` must be a positive scalar"):
        matfree.exp_action(mv, V, depth=2, tol=0.0)
    with pytest.raises(ValueError, match="`num_substeps` must be at least 1"):
        matfree.exp_action(mv, V, depth=2, num_substeps=0)
    with pytest.raises(TypeError, match="`num_substeps` must be a static Python int"):
        matfree.exp_action(mv, V, depth=2, num_substeps=2.5)


def test_run_time_problems_are_reported_and_raised():
    """One jitted function returns the status of five problem cases."""
    B = A.at[0, 1].set(3.0)  # not symmetric
    J = jnp.eye(6, k=1) + 2 * jnp.eye(6)  # a Jordan block: defective

    @jax.jit
    def statuses(v):
        kw = {"throw": False}
        return jnp.stack(
            [
                matfree.funm_action(jnp.exp, lambda x: B @ x, v, depth=3, **kw).status,
                matfree.sqrt_action(lambda x: -A @ x, v, depth=3, **kw).status,
                matfree.sqrt_action(lambda x: A @ x * jnp.nan, v, depth=3, **kw).status,
                matfree.funm_action(
                    jnp.log, lambda x: J @ x, v, depth=6, symmetric=False, **kw
                ).status,
                matfree.exp_action(lambda x: A @ x, v, t=-v[0], depth=2, **kw).status,
            ]
        )

    assert statuses(V).tolist() == [
        Status.NOT_SYMMETRIC,
        Status.NOT_POSITIVE_DEFINITE,
        Status.NONFINITE,
        Status.ILL_CONDITIONED,
        Status.INVALID_INPUT,
    ]
    assert "not symmetric" in matfree.status.message(Status.NOT_SYMMETRIC)

    with pytest.raises(
        (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError), match="not positive definite"
    ):
        jax.jit(lambda v: matfree.sqrt_action(lambda x: -A @ x, v, depth=3).value)(V)
    info = matfree.sqrt_action(lambda x: -A @ x, V, depth=3, inverse=True, throw=False)
    assert int(info.status) == Status.NOT_POSITIVE_DEFINITE  # reported, not silent
    assert bool(jnp.all(jnp.isnan(info.value)))


@pytest.mark.parametrize("field", ["value", "status", "num_matvecs"])
def test_throw_holds_under_jit_whichever_field_is_read(field):
    @jax.jit
    def read(v):
        return getattr(matfree.sqrt_action(lambda x: -A @ x, v, depth=3), field)

    with pytest.raises(Exception, match="not positive definite"):
        jax.block_until_ready(read(V))


def test_traced_negative_time_is_invalid_input_and_nan():
    res = jax.jit(
        lambda t: matfree.exp_action(lambda x: A @ x, V, t=t, depth=2, throw=False)
    )(-1.0)
    assert int(res.status) == Status.INVALID_INPUT
    assert bool(jnp.all(jnp.isnan(res.value)))


@pytest.mark.parametrize(
    "action",
    [
        lambda s: matfree.funm_action(jnp.exp, lambda x: s * (A @ x), V, depth=3),
        lambda s: matfree.sqrt_action(lambda x: s * (A @ x), V, depth=3),
        lambda s: matfree.exp_action(lambda x: s * (A @ x), V, depth=3),
        lambda s: matfree.exp_action(lambda x: s * (A @ x), V, depth=3, symmetric=True),
    ],
)
def test_forward_mode_through_the_adjoint_names_autodiff(action):
    with pytest.raises(TypeError, match='gradient="autodiff"'):
        jax.jvp(lambda s: action(s).value, (1.0,), (1.0,))


def test_bad_gradient_keyword():
    with pytest.raises(ValueError, match="`gradient` must be one of"):
        matfree.exp_action(lambda x: A @ x, V, depth=2, gradient="implicit")


def test_nan_in_v_is_nonfinite_not_a_zero_vector():
    # `|v|` of a vector with a NaN was read as 0: value 0 with status OK.
    v = V.at[2].set(jnp.nan)

    @jax.jit
    def results(v):
        kw = {"throw": False, "depth": 3}
        return [
            matfree.funm_action(jnp.sqrt, lambda x: A @ x, v, **kw),
            matfree.funm_action(jnp.exp, lambda x: A @ x, v, symmetric=False, **kw),
            matfree.exp_action(lambda x: A @ x, v, **kw),
            matfree.exp_action(lambda x: A @ x, v, symmetric=True, **kw),
        ]

    for res in results(v):
        assert res.status == Status.NONFINITE
        assert bool(jnp.all(jnp.isnan(res.value)))
