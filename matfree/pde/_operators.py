"""Finite-volume grid operators on the unit square, written with array shifts.

Grid: `(ny, nx)` interior nodes at `x_j = (j + 1) h_x`, `y_i = (i + 1) h_y`,
`h_x = 1 / (nx + 1)`, `h_y = 1 / (ny + 1)`, zero Dirichlet values on the
boundary. Coefficient fields live on the nodes; the coefficient on the face
between two nodes is the harmonic mean of their values (the conservative
two-point flux), and on a boundary face the value of the adjacent node.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def check_field(k, name: str = "k") -> jax.Array:
    """Return `k` as an array after checking it is a 2-D real floating field."""
    k = jnp.asarray(k)
    if k.ndim != 2 or min(k.shape) < 1:
        msg = (
            f"`{name}` must be a 2-D field of shape (ny, nx) with ny, nx >= 1 "
            f"(one value per grid node); got shape {k.shape}."
        )
        raise ValueError(msg)
    if not jnp.issubdtype(k.dtype, jnp.floating):
        msg = (
            f"`{name}` must have a real floating dtype; got {k.dtype}. "
            f"Cast it, e.g. `{name}.astype(float)`."
        )
        raise TypeError(msg)
    return k


def check_positive(k, name: str = "k") -> None:
    """Raise a `ValueError` if a concrete field `k` has non-positive entries.

    Traced fields (under `jit`/`grad`) are not checked here; `solve` checks
    them at run time.
    """
    if isinstance(k, jax.core.Tracer):
        return
    kmin = float(np.min(np.asarray(k)))
    if not kmin > 0:
        msg = (
            f"`{name}` must be positive everywhere (a diffusion coefficient); got "
            f"min({name}) = {kmin}. Parametrise it as `{name} = exp(theta)` or "
            f"`softplus(theta)`."
        )
        raise ValueError(msg)


def spacing(shape) -> tuple[float, float]:
    """Grid spacings `(h_y, h_x)` of a `(ny, nx)` grid on the unit square."""
    ny, nx = shape
    return 1.0 / (ny + 1), 1.0 / (nx + 1)


def _harmonic(a, b):
    return 2 * a * b / (a + b)


def face_coefficients(k):
    """Face coefficients `(k_x, k_y)` of shapes `(ny, nx + 1)` and `(ny + 1, nx)`."""
    kx = jnp.concatenate([k[:, :1], _harmonic(k[:, :-1], k[:, 1:]), k[:, -1:]], axis=1)
    ky = jnp.concatenate([k[:1, :], _harmonic(k[:-1, :], k[1:, :]), k[-1:, :]], axis=0)
    return kx, ky


def _check_vector(u, shape):
    if jnp.shape(u) != tuple(shape):
        msg = (
            f"the PDE operator acts on fields of the grid shape {tuple(shape)}; got "
            f"`u` of shape {jnp.shape(u)}. Reshape the vector, e.g. "
            f"`u.reshape{tuple(shape)}`."
        )
        raise ValueError(msg)


def diffusion(k, *, mesh=None):
    r"""Return the matvec `u -> div(k grad u)` on the unit square, zero Dirichlet.

    The conservative 5-point (two-point flux finite-volume) discretisation

    $$
    (A u)_{ij} = \frac{k_{i,j+1/2}(u_{i,j+1} - u_{ij}) - k_{i,j-1/2}(u_{ij} - u_{i,j-1})}
    {h_x^2} + (\text{same in } y),
    $$

    with face coefficients the harmonic means of the neighbouring node values
    and `u = 0` outside the grid. `A = -D^T diag(k_faces) D` is symmetric and,
    for `k > 0`, negative definite, with spectrum in
    `[-spectral_bound(k), 0)`.

    Parameters
    ----------
    k
        Positive coefficient field, shape `(ny, nx)`, one value per interior
        node. A concrete `k` with a non-positive entry raises `ValueError`; a
        traced one is checked by `solve` at run time.
    mesh
        `None`, or a one-axis `jax.sharding.Mesh`: the grid's rows (first
        axis) are split over its devices (`ny` divisible by their number) and
        each device applies the stencil to its rows after a halo exchange
        with its two neighbours (`jax.lax.ppermute` of one row of `u` and of
        `k` each way; `docs/sharding.md`). Shard `u` and `k` by rows,
        `PartitionSpec(axis, None)`. Equals the unsharded matvec to rounding.

    Returns
    -------
    matvec
        `u -> A u` for `u` of shape `(ny, nx)`; gradients reach `k`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> mv = diffusion(jnp.ones((3, 3)))
    >>> mv(jnp.ones((3, 3)))  # 16 = 1/h^2: flux through the boundary only
    Array([[-32., -16., -32.],
           [-16.,   0., -16.],
           [-32., -16., -32.]], dtype=float64)
    """
    k = check_field(k)
    check_positive(k)
    shape = k.shape
    hy, hx = spacing(shape)
    if mesh is not None:
        return _sharded_diffusion(k, mesh, hy, hx)
    kx, ky = face_coefficients(k)

    def matvec(u):
        _check_vector(u, shape)
        ux = jnp.pad(u, ((0, 0), (1, 1)))
        uy = jnp.pad(u, ((1, 1), (0, 0)))
        fx = kx * (ux[:, 1:] - ux[:, :-1])  # fluxes through x-faces, times h_x
        fy = ky * (uy[1:, :] - uy[:-1, :])
        return (fx[:, 1:] - fx[:, :-1]) / hx**2 + (fy[1:, :] - fy[:-1, :]) / hy**2

    return matvec


def _check_mesh_type(mesh):
    if not isinstance(mesh, jax.sharding.Mesh):
        msg = f"`mesh` must be a jax.sharding.Mesh (e.g. jax.make_mesh); got {mesh!r}."
        raise TypeError(msg)


def _check_mesh(mesh, ny):
    _check_mesh_type(mesh)
    if len(mesh.axis_names) != 1 or ny % mesh.size:
        msg = (
            "`mesh` must have one axis whose size divides the grid's rows; got axes "
            f"{mesh.axis_names} of sizes {tuple(mesh.shape.values())} for {ny} rows."
        )
        raise ValueError(msg)
    return mesh.axis_names[0]


def _sharded(local, mesh, shape, *fields):
    """A grid matvec over the rows of a one-axis mesh: `local(halo, *fields, u)`.

    `local` computes its device's rows of `A u` from its rows of the fields
    and of `u`; `halo(x, edge)` returns the neighbours' boundary rows of a
    local array `x` (`jax.lax.ppermute`, one row each way), with `edge(x)`'s
    rows in their place on the grid's boundary (`None`: zeros).
    """
    axis = _check_mesh(mesh, shape[0])
    p = mesh.size
    down = [(j, j + 1) for j in range(p - 1)]  # row block j -> j + 1
    up = [(j + 1, j) for j in range(p - 1)]
    rows = jax.sharding.PartitionSpec(axis, None)

    def halo(x, edge=None):
        top = jax.lax.ppermute(x[-1:], axis, down)
        bottom = jax.lax.ppermute(x[:1], axis, up)
        if edge is not None:
            i = jax.lax.axis_index(axis)
            top = jnp.where(i == 0, edge(x[:1]), top)
            bottom = jnp.where(i == p - 1, edge(x[-1:]), bottom)
        return jnp.concatenate([top, x, bottom])

    specs = (rows,) * (len(fields) + 1)
    sharded = jax.shard_map(
        lambda *a: local(halo, *a), mesh=mesh, in_specs=specs, out_specs=rows
    )

    def matvec(u):
        _check_vector(u, shape)
        return sharded(*fields, u)

    return matvec


def _own(x):
    # On the grid's boundary a face takes the node's own value (for `k`, the
    # harmonic mean of the node with itself; for a velocity, its mean).
    return x


def _local_diffusion(halo, k, u, hy, hx):
    kx = face_coefficients(k)[0]
    k_ext = halo(k, _own)
    ky = _harmonic(k_ext[:-1], k_ext[1:])
    ux = jnp.pad(u, ((0, 0), (1, 1)))
    uy = halo(u)
    fx = kx * (ux[:, 1:] - ux[:, :-1])
    fy = ky * (uy[1:, :] - uy[:-1, :])
    return (fx[:, 1:] - fx[:, :-1]) / hx**2 + (fy[1:, :] - fy[:-1, :]) / hy**2


def _sharded_diffusion(k, mesh, hy, hx):
    def local(halo, k, u):
        return _local_diffusion(halo, k, u, hy, hx)

    return _sharded(local, mesh, k.shape, k)


def _sharded_advection_diffusion(k, velocity, mesh, hy, hx):
    def local(halo, k, bx_nodes, by_nodes, u):
        bx = _face_mean(bx_nodes, axis=1)
        by_ext = halo(by_nodes, _own)
        by = (by_ext[:-1] + by_ext[1:]) / 2
        ux = jnp.pad(u, ((0, 0), (1, 1)))
        uy = halo(u)
        fx = jnp.maximum(bx, 0) * ux[:, :-1] + jnp.minimum(bx, 0) * ux[:, 1:]
        fy = jnp.maximum(by, 0) * uy[:-1, :] + jnp.minimum(by, 0) * uy[1:, :]
        adv = (fx[:, 1:] - fx[:, :-1]) / hx + (fy[1:, :] - fy[:-1, :]) / hy
        return _local_diffusion(halo, k, u, hy, hx) - adv

    return _sharded(local, mesh, k.shape, k, velocity[0], velocity[1])


def advection_diffusion(k, velocity, *, mesh=None):
    r"""Return the matvec `u -> div(k grad u) - div(b u)`, zero Dirichlet.

    Diffusion as in `diffusion`, plus conservative first-order upwind
    advection by the velocity field `b = (b_x, b_y)`: the face velocity is the
    mean of the two node values (the node value on boundary faces), and the
    flux through a face carries `u` from its upwind side (`u = 0` outside the
    grid). The operator is not symmetric; `solve` uses Arnoldi for it. Upwinding
    adds numerical diffusion of order `|b| h / 2` and keeps the operator
    dissipative for divergence-free `b`.

    Parameters
    ----------
    k
        Positive diffusion coefficient field, shape `(ny, nx)`.
    velocity
        Velocity field, shape `(2, ny, nx)`: `velocity[0]` is `b_x` (along the
        second axis), `velocity[1]` is `b_y` (along the first axis).
    mesh
        Optional `jax.sharding.Mesh` with one axis: the grid's rows are split
        over its devices with a halo exchange, as in `diffusion`.

    Returns
    -------
    matvec
        `u -> A u` for `u` of shape `(ny, nx)`; gradients reach `k` and
        `velocity`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> k = jnp.ones((4, 4))
    >>> b = jnp.stack([jnp.ones((4, 4)), jnp.zeros((4, 4))])
    >>> mv = advection_diffusion(k, b)
    >>> u, w = jnp.eye(4), jnp.arange(16.0).reshape(4, 4)
    >>> bool(jnp.vdot(mv(u), w) == jnp.vdot(u, mv(w)))  # not symmetric
    False
    """
    k = check_field(k)
    check_positive(k)
    velocity = check_velocity(velocity, k.shape)
    shape = k.shape
    hy, hx = spacing(shape)
    if mesh is not None:
        return _sharded_advection_diffusion(k, velocity, mesh, hy, hx)
    diff = diffusion(k)
    bx = _face_mean(velocity[0], axis=1)
    by = _face_mean(velocity[1], axis=0)

    def matvec(u):
        _check_vector(u, shape)
        ux = jnp.pad(u, ((0, 0), (1, 1)))
        uy = jnp.pad(u, ((1, 1), (0, 0)))
        fx = jnp.maximum(bx, 0) * ux[:, :-1] + jnp.minimum(bx, 0) * ux[:, 1:]
        fy = jnp.maximum(by, 0) * uy[:-1, :] + jnp.minimum(by, 0) * uy[1:, :]
        adv = (fx[:, 1:] - fx[:, :-1]) / hx + (fy[1:, :] - fy[:-1, :]) / hy
        return diff(u) - adv

    return matvec


def _face_mean(b, axis):
    if axis == 1:
        return jnp.concatenate([b[:, :1], (b[:, :-1] + b[:, 1:]) / 2, b[:, -1:]], axis=1)
    return jnp.concatenate([b[:1, :], (b[:-1, :] + b[1:, :]) / 2, b[-1:, :]], axis=0)


def check_velocity(velocity, shape) -> jax.Array:
    """Return `velocity` as an array after checking its shape `(2, ny, nx)`."""
    velocity = jnp.asarray(velocity)
    if velocity.shape != (2, *shape):
        msg = (
            f"`velocity` must have shape (2, ny, nx) = {(2, *shape)} to match the "
            f"grid of `k` (shape {tuple(shape)}); got shape {velocity.shape}. Stack "
            "the components: `jnp.stack([b_x, b_y])`."
        )
        raise ValueError(msg)
    if not jnp.issubdtype(velocity.dtype, jnp.floating):
        msg = f"`velocity` must have a real floating dtype; got {velocity.dtype}."
        raise TypeError(msg)
    return velocity


def spectral_bound(k, velocity=None) -> jax.Array:
    """Gershgorin bound on the spectral radius of `diffusion(k)` (or with advection).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> spectral_bound(jnp.ones((3, 3)))  # 2 * (2 * 16 + 2 * 16)
    Array(128., dtype=float64)
    """
    k = check_field(k)
    hy, hx = spacing(k.shape)
    kx, ky = face_coefficients(k)
    diag = (kx[:, 1:] + kx[:, :-1]) / hx**2 + (ky[1:, :] + ky[:-1, :]) / hy**2
    bound = 2 * jnp.max(diag)
    if velocity is not None:
        velocity = check_velocity(velocity, k.shape)
        bound = bound + 2 * (
            jnp.max(jnp.abs(velocity[0])) / hx + jnp.max(jnp.abs(velocity[1])) / hy
        )
    return bound


class Operator(eqx.Module):
    """Base class of the PDE operators that `solve` accepts as `operator=`.

    A subclass builds the matvec from the coefficient field with
    `__call__(k)`, says with `symmetric` whether `exp_action` may use
    Lanczos, checks `k` against its own arrays in `check(k)`, and bounds the
    spectral radius with `spectral_bound(k)`.
    """

    symmetric: ClassVar[bool] = True

    def __call__(self, k):
        raise NotImplementedError

    def check(self, k) -> None:
        """Raise if `k` does not fit this operator (default: nothing to check)."""

    def spectral_bound(self, k):
        """An upper bound on the spectral radius of the operator."""
        raise NotImplementedError


class Diffusion(Operator):
    """`div(k grad u)`, zero Dirichlet (the default of `solve`; Lanczos path).

    Attributes
    ----------
    mesh
        Optional `jax.sharding.Mesh` with one axis: the grid's rows are split
        over its devices with a halo exchange (see `diffusion`), so
        `solve(..., operator=Diffusion(mesh=mesh))`, `misfit` and `invert`
        run sharded (`docs/sharding.md`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> Diffusion().symmetric
    True
    """

    mesh: Any = eqx.field(default=None, static=True)
    symmetric: ClassVar[bool] = True

    def __check_init__(self):
        if self.mesh is not None:
            _check_mesh_type(self.mesh)

    def __call__(self, k):
        return diffusion(k, mesh=self.mesh)

    def check(self, k) -> None:
        """Check that the mesh, if any, divides the grid's rows."""
        if self.mesh is not None:
            _check_mesh(self.mesh, jnp.shape(k)[0])

    def spectral_bound(self, k):
        """Gershgorin bound, see `matfree.pde.spectral_bound`."""
        return spectral_bound(k)


class AdvectionDiffusion(Operator):
    """`div(k grad u) - div(b u)` with a fixed velocity `b` (Arnoldi path).

    Attributes
    ----------
    velocity
        Shape `(2, ny, nx)`, see `matfree.pde.advection_diffusion`.
    mesh
        Optional one-axis `jax.sharding.Mesh`: the grid's rows over its
        devices, with a halo exchange (as in `Diffusion`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> op = AdvectionDiffusion(jnp.zeros((2, 5, 4)))
    >>> op.symmetric
    False
    """

    velocity: jax.Array
    mesh: Any = eqx.field(default=None, static=True)
    symmetric: ClassVar[bool] = False

    def __check_init__(self):
        if self.mesh is not None:
            _check_mesh_type(self.mesh)
        v = jnp.asarray(self.velocity)
        if v.ndim != 3 or v.shape[0] != 2:
            msg = (
                "`velocity` must have shape (2, ny, nx) (the components b_x, b_y on "
                f"the grid); got shape {v.shape}."
            )
            raise ValueError(msg)

    def __call__(self, k):
        return advection_diffusion(k, self.velocity, mesh=self.mesh)

    def check(self, k) -> None:
        """Check that `velocity` lives on the grid of `k` and the mesh divides its rows."""
        check_velocity(self.velocity, jnp.shape(k))
        if self.mesh is not None:
            _check_mesh(self.mesh, jnp.shape(k)[0])

    def spectral_bound(self, k):
        """Gershgorin bound, see `matfree.pde.spectral_bound`."""
        return spectral_bound(k, self.velocity)
