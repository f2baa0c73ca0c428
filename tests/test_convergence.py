"""Convergence orders of the weighted H^1 operator (flowfem.sobolev) with manufactured solutions.

Strong form, natural boundary condition kappa omega du/dn = 0:

    -div(kappa omega grad u) + omega u = g   in Omega,

weak form a_omega(u, v) = (g, v) for all v, with a_omega taken from
``WeightedH1.a_form`` (the project's form, not a copy). Lagrange elements of
degree p converge like h^(p+1) in L^2 and h^p in H^1; the observed order is the
slope of ``np.polyfit(np.log(h), np.log(err), 1)``.

* Box [-1, 1]^(d+1), u = prod cos(pi theta_i): du/dn = 0 on every face, so the
  natural condition holds for any weight; Gaussian weight and kappa != 1 so
  that both matter; g is derived from u symbolically with UFL.
* Unit sphere S^2 (degree-2 curved triangles), u = xy/r^2 + z/r: the
  0-homogeneous extension of a degree-2 plus a degree-1 spherical harmonic, so
  its ambient gradient is tangential to the sphere and -Delta_S u =
  6 xy + 2 z; for the uniform weight g = kappa (6 xy/r^2 + 2 z/r) + u.
  No boundary, so no boundary condition.

Runs serially and under ``mpirun -n 2 python -m pytest tests/test_convergence.py``:
every integral is summed over the ranks.
"""

import gc

import numpy as np
import pytest

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

from conftest import fitted_order  # noqa: E402

import dolfinx.fem  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.space import Space  # noqa: E402

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

COMM = MPI.COMM_WORLD
TOL = 0.2  # observed order > expected - TOL
KAPPA = 0.7


@pytest.fixture(autouse=True)
def _collect():
    """PETSc objects are destroyed collectively: collect on every rank after each test."""
    yield
    gc.collect()
    PETSc.garbage_cleanup()


def _integral(mesh, integrand, qdeg):
    dx = ufl.dx(domain=mesh, metadata={"quadrature_degree": qdeg})
    return mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(integrand * dx)), op=MPI.SUM)


def _solve_errors(H: WeightedH1, u_exact, g, prefix):
    """Solve a_omega(u, v) = (g, v) with MUMPS; return the L^2 and H^1-seminorm errors."""
    mesh = H.space.mesh
    qdeg = 2 * H.degree + 4
    u, v = ufl.TrialFunction(H.V), ufl.TestFunction(H.V)
    L = g * v * ufl.dx(metadata={"quadrature_degree": qdeg})
    problem = dolfinx.fem.petsc.LinearProblem(
        H.a_form(u, v), L, petsc_options_prefix=prefix,
        petsc_options={"ksp_type": "preonly", "pc_type": "lu",
                       "pc_factor_mat_solver_type": "mumps", "ksp_error_if_not_converged": True},
    )
    uh = problem.solve()
    assert problem.solver.getConvergedReason() > 0
    e = uh - u_exact
    l2 = np.sqrt(_integral(mesh, e * e, qdeg))
    h1 = np.sqrt(_integral(mesh, ufl.inner(ufl.grad(e), ufl.grad(e)), qdeg))
    del problem
    return l2, h1


def _orders(h, errors):
    """The observed order of each column of errors (L2, H1)."""
    return [fitted_order(h, np.asarray(errors)[:, k]) for k in range(np.asarray(errors).shape[1])]


def _report(name, h, errors, orders):
    if COMM.rank == 0:
        rows = "  ".join(f"h={a:.4g}: L2 {e[0]:.3e} H1 {e[1]:.3e}" for a, e in zip(h, errors))
        print(f"\n{name}: {rows}\n  orders L2 {orders[0]:.3f}, H1 {orders[1]:.3f}")


# -- the box ----------------------------------------------------------------------

BOX_CASES = [  # (d, degree, cells per side)
    (1, 1, (8, 16, 32, 64)),
    (1, 2, (4, 8, 16, 32)),
    (2, 1, (12, 16, 24, 32)),
]


@pytest.mark.parametrize("d, degree, ns", BOX_CASES, ids=[f"d{d}-P{p}" for d, p, _ in BOX_CASES])
def test_box_gaussian_weight(d, degree, ns):
    """[-1, 1]^(d+1), u = prod cos(pi theta_i), omega = exp(-|theta|^2 / 2), kappa = 0.7."""
    h, errors = [], []
    for n in ns:
        space = Space.box(d, n, radius=1.0, comm=COMM)
        H = WeightedH1(space, "gaussian:1", kappa=KAPPA, degree=degree)
        theta = ufl.SpatialCoordinate(space.mesh)
        u_exact = 1.0
        for i in range(d + 1):
            u_exact = u_exact * ufl.cos(ufl.pi * theta[i])
        g = -ufl.div(H.kappa * H.omega * ufl.grad(u_exact)) + H.omega * u_exact
        errors.append(_solve_errors(H, u_exact, g, f"conv_box_d{d}_p{degree}_n{n}_"))
        h.append(2.0 / n)
    orders = _orders(h, errors)
    _report(f"box d={d} P{degree}", h, errors, orders)
    assert orders[0] > degree + 1 - TOL, f"L2 order {orders[0]:.3f} for P{degree}"
    assert orders[1] > degree - TOL, f"H1 order {orders[1]:.3f} for P{degree}"


def test_box_weight_and_kappa_matter():
    """omega and kappa enter the solve: with g built for (gaussian:1, kappa), other choices are wrong."""
    space = Space.box(1, 16, radius=1.0, comm=COMM)
    errors = {}
    for weight, kappa in (("gaussian:1", KAPPA), ("uniform", KAPPA), ("gaussian:1", 1.0)):
        H = WeightedH1(space, weight, kappa=kappa, degree=2)
        theta = ufl.SpatialCoordinate(space.mesh)
        u_exact = ufl.cos(ufl.pi * theta[0]) * ufl.cos(ufl.pi * theta[1])
        omega = ufl.exp(-ufl.dot(theta, theta) / 2)
        g = -ufl.div(KAPPA * omega * ufl.grad(u_exact)) + omega * u_exact
        prefix = f"conv_matter_{weight.replace(':', '')}_{kappa:g}_".replace(".", "p")
        errors[weight, kappa] = _solve_errors(H, u_exact, g, prefix)[0]
    right = errors["gaussian:1", KAPPA]
    assert right < 2e-3
    assert errors["uniform", KAPPA] > 50 * right
    assert errors["gaussian:1", 1.0] > 20 * right


# -- the sphere -------------------------------------------------------------------


def _sphere_solution(mesh):
    x = ufl.SpatialCoordinate(mesh)
    r = ufl.sqrt(ufl.dot(x, x))
    return x, r, x[0] * x[1] / r**2 + x[2] / r


def test_sphere_right_hand_side_is_laplace_beltrami():
    """-Delta u of the 0-homogeneous u equals (6 xy/r^2 + 2 z/r) / r^2, i.e. -Delta_S u on |x| = 1."""
    space = Space.sphere(2, degree=2, comm=COMM)
    x, r, u = _sphere_solution(space.mesh)
    lap_s = 6 * x[0] * x[1] / r**2 + 2 * x[2] / r
    diff = _integral(space.mesh, (-ufl.div(ufl.grad(u)) - lap_s / r**2) ** 2, 8)
    size = _integral(space.mesh, lap_s**2, 8)
    assert diff < 1e-20 * size
    # and the gradient is tangential: x . grad u = 0
    assert _integral(space.mesh, ufl.dot(x, ufl.grad(u)) ** 2, 8) < 1e-20


@pytest.mark.parametrize("degree, refinements", [(1, (1, 2, 3, 4)), (2, (1, 2, 3, 4))], ids=["P1", "P2"])
def test_sphere(degree, refinements):
    """Unit sphere, curved degree-2 geometry, uniform weight: -kappa Delta_S u + u = g."""
    h, errors = [], []
    for r_ in refinements:
        space = Space.sphere(r_, degree=2, comm=COMM)
        H = WeightedH1(space, "uniform", kappa=KAPPA, degree=degree)
        x, r, u_exact = _sphere_solution(space.mesh)
        g = H.kappa * (6 * x[0] * x[1] / r**2 + 2 * x[2] / r) + u_exact
        errors.append(_solve_errors(H, u_exact, g, f"conv_sphere_p{degree}_r{r_}_"))
        h.append(np.sqrt(4 * np.pi / space.num_cells))
    orders = _orders(h, errors)
    _report(f"sphere P{degree}", h, errors, orders)
    assert orders[0] > degree + 1 - TOL, f"L2 order {orders[0]:.3f} for P{degree}"
    assert orders[1] > degree - TOL, f"H1 order {orders[1]:.3f} for P{degree}"
