"""Inputs in R^3: the sphere S^3 of neuron directions in the stereographic chart (domain s3).

Each test compares with a closed form or an independent computation and fails if the
geometry (chart, conformal factor, weights of the two-weight H^1_omega, data operator) is wrong:

(a) the measure integral lambda^3 dz of the truncated chart against 2 pi^2 minus the cap
    |z| > Z, pi (2 beta - sin 2 beta), beta = 2 arctan(1 / Z) (the closed form checked against
    a radial quadrature of lambda^3 first), through the mass matrix and the data operator's
    quadrature weights, at the observed order 2 (the inscribed polyhedron);
(b) u = 1 gives f(x) = (4 pi / 3) |x~| for relu minus the cap's share, the share computed by an
    independent 1-D quadrature in geodesic polar coordinates about the south pole;
(c) -Delta_S u + u = g with u = vartheta_1 (-Delta_S u = 3 u on S^3, so g = 4 vartheta_1), solved in
    the chart with WeightedH1.a_form; the truncation's boundary flux kappa lambda du/dnu is
    put in the right-hand side, so u solves the chart problem exactly and the error is the
    discretisation's: orders 2, 1 (P1) and 3, 2 (P2) in L^2(S^3) and H^1(S^3);
(d) rotating the data by Q in O(3) leaves the fitted predictions unchanged up to the discretisation
    error, which falls under refinement;
(e) 1 and 2 ranks give the same density, predictions and energy (and the whole file runs under
    mpirun -n 2: it is marked parallel);
and the measures (flowfem.measure) on the chart: a network projected onto the mesh predicts as the
network (wrong by the factor lambda^3 without the chart's volume), the lumped density conserves
mass in integral u dS = integral u lambda^3 dz, and a neuron in the cap the chart leaves out is dropped.
"""

import os
import sys

import numpy as np
import pytest
import scipy.integrate

from conftest import fitted_order, run

import dolfinx.fem  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402
import ufl  # noqa: E402

from flowfem import io, measure  # noqa: E402
from flowfem.network import Network  # noqa: E402
from flowfem.operator import DataOperator  # noqa: E402
from flowfem.problem import Problem  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.space import STEREOGRAPHIC, Space, chart_radius, check_parameter_dim, dead_radius  # noqa: E402

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py


def cap_measure(Z: float) -> float:
    """The measure of the geodesic cap |z| > Z of S^3: radius beta = 2 arctan(1 / Z), 4 pi int_0^beta sin^2."""
    beta = 2 * np.arctan(1 / Z)
    return np.pi * (2 * beta - np.sin(2 * beta))


def cap_share(x: np.ndarray, Z: float) -> np.ndarray:
    """integral over the cap |z| > Z of relu(vartheta . x~) dS, for inputs x (n, 3).

    Geodesic polar coordinates about the south pole s: vartheta = cos t s + sin t u, u in S^2 with
    u . s = 0, dS = sin^2 t dt dA(u). With e = x~ / |x~| = cos g s + sin g m, vartheta . e = a + b c,
    a = cos t cos g, b = sin t sin g, c = u . m uniform on [-1, 1] with dA = 2 pi dc.
    """
    beta = 2 * np.arctan(1 / Z)
    out = []
    for xi in np.atleast_2d(x):
        norm = np.sqrt(1 + xi @ xi)
        cos_g, sin_g = -1 / norm, np.sqrt(xi @ xi) / norm

        def inner(t):
            a, b = np.cos(t) * cos_g, np.sin(t) * sin_g
            if a >= b:
                c = 2 * a
            elif a <= -b:
                c = 0.0
            else:
                c = (a + b) ** 2 / (2 * b)
            return 2 * np.pi * np.sin(t) ** 2 * c

        out.append(norm * scipy.integrate.quad(inner, 0, beta, epsabs=1e-13, epsrel=1e-12, limit=200)[0])
    return np.array(out)


def test_chart_is_the_inverse_stereographic_map():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 3)) * 3
    theta = STEREOGRAPHIC.point(z)
    assert np.allclose(np.linalg.norm(theta, axis=1), 1, atol=1e-14)
    assert np.allclose(STEREOGRAPHIC.inverse(theta), z, atol=1e-12)
    # the conformal factor from the differential of the map: |d vartheta(z) e| = lambda |e| for every e
    e = rng.standard_normal(3)
    eps = 1e-6
    stretch = np.linalg.norm(STEREOGRAPHIC.point(z + eps * e) - STEREOGRAPHIC.point(z - eps * e), axis=1) / (2 * eps)
    assert np.allclose(stretch, STEREOGRAPHIC.conformal(z) * np.linalg.norm(e), rtol=1e-8)
    # geodesic distance to the south pole: 2 arctan(1 / |z|)
    angle = np.arccos(np.clip(-theta[:, 3], -1, 1))
    assert np.allclose(angle, 2 * np.arctan(1 / np.linalg.norm(z, axis=1)), atol=1e-7)


def test_chart_radius_leaves_out_only_dead_neurons():
    # Z_0 is the exact bound: just inside it some neuron is alive on |x| <= X, at or beyond it none
    for X in (0.0, 0.5, 2.0, 7.0):
        Z0 = dead_radius(X)
        rng = np.random.default_rng(1)
        dirs = rng.standard_normal((4000, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        for r, alive in ((Z0 * 1.001, False), (Z0 * 0.95, True)):
            theta = STEREOGRAPHIC.point(r * dirs)
            best = X * np.linalg.norm(theta[:, :3], axis=1) + theta[:, 3]  # max over |x| <= X of w . x + b
            assert (best.max() > 0) == alive, (X, r)
        Z = chart_radius(X)
        assert Z >= Z0
        assert Z == pytest.approx(Z0 + np.hypot(Z0, 1), rel=1e-12)  # margin 1/2: half the dead cap's radius
        assert 2 * np.arctan(1 / Z) == pytest.approx(np.arctan2(1, X) / 2, rel=1e-12)
    assert chart_radius(1.0, margin=0) == pytest.approx(dead_radius(1.0), rel=1e-12)


def test_cap_measure_closed_form():
    # pi (2 beta - sin 2 beta) against the chart integral of lambda^3 over |z| > Z
    for Z in (0.5, 1.0, 2.0, 5.0):
        radial = scipy.integrate.quad(lambda r: 4 * np.pi * r**2 * (2 / (1 + r**2)) ** 3, Z, np.inf,
                                      epsabs=1e-14, epsrel=1e-12)[0]
        assert cap_measure(Z) == pytest.approx(radial, rel=1e-10)
    assert cap_measure(1e-9) == pytest.approx(2 * np.pi**2, rel=1e-8)


def test_measure_of_the_truncated_chart_converges_at_order_2():
    Z = 2.0  # the cap left out has measure 2.82: missing it would fail
    exact = 2 * np.pi**2 - cap_measure(Z)
    sizes, mass_err, quad_err = [], [], []
    for h in (0.6, 0.45, 0.34):
        space = Space.s3(h, radius=Z)
        assert space.gdim == 4 and space.input_dim == 3 and space.homogeneous_only
        H = WeightedH1(space, "uniform", 1.0, 1)
        one = H.function()
        one.x.array[:] = 1.0
        MU = H.M.createVecLeft()
        H.M.mult(one.x.petsc_vec, MU)
        mass = MU.dot(one.x.petsc_vec)  # 1^T M 1 = integral lambda^3 dz (the mass weight)
        Phi = DataOperator(H, "relu", np.zeros((1, 3)))
        weights = space.comm.allreduce(float(Phi.quadrature.weights(one.x.petsc_vec).sum()))  # sum q |det J| lambda^3
        theta = Phi.quadrature.theta
        assert theta.shape[1] == 4 and np.allclose(np.linalg.norm(theta, axis=1), 1, atol=1e-12)
        sizes.append(space.num_cells ** (-1 / 3))
        mass_err.append(abs(mass - exact))
        quad_err.append(abs(weights - exact))
    # the error is the inscribed polyhedron's, about 0.13 h^2 of the cap: 0.09 at h = 0.34
    assert max(mass_err[-1], quad_err[-1]) < 0.05 * cap_measure(Z), (mass_err, quad_err)
    assert fitted_order(sizes, mass_err) > 1.8, mass_err
    assert fitted_order(sizes, quad_err) > 1.8, quad_err


def test_constant_density_gives_the_mean_of_relu_over_s3():
    Z = 2.0
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 3)) * np.array([1.0, 0.5, 2.0])  # |x| up to ~5: Z_0 > Z, the cap matters
    share = cap_share(x, Z)
    assert share.max() > 0.05 and (share == 0).any()
    exact = 4 * np.pi / 3 * np.sqrt(1 + np.sum(x**2, axis=1)) - share
    sizes, errors = [], []
    for h in (0.6, 0.45, 0.34):
        space = Space.s3(h, radius=Z)
        H = WeightedH1(space, "uniform", 1.0, 1)
        one = H.function()
        one.x.array[:] = 1.0
        f = DataOperator(H, "relu", x).apply(one.x.petsc_vec)
        sizes.append(space.num_cells ** (-1 / 3))
        errors.append(np.abs(f - exact).max() / np.abs(exact).max())
    # measured 1.3e-2, 7.0e-3, 3.4e-3 (the largest where the cap's share is largest: the polyhedral boundary)
    assert errors[-1] < 5e-3 and errors[-1] < errors[0] / 2
    assert fitted_order(sizes, errors) > 1.5, errors


@pytest.mark.parametrize("degree,sizes,orders", [(1, (0.3, 0.22, 0.17), (1.8, 0.85)),
                                                 (2, (0.45, 0.34, 0.26), (2.7, 1.7))])
def test_manufactured_eigenfunction_converges(degree, sizes, orders):
    Z = 3.0
    hs, l2, h1 = [], [], []
    for h in sizes:
        space = Space.s3(h, radius=Z)
        H = WeightedH1(space, "uniform", 1.0, degree)
        z = ufl.SpatialCoordinate(space.mesh)
        u_exact = (2 * z[0]) / (1 + ufl.dot(z, z))  # vartheta_1, written out (not through the chart)
        u, v = ufl.TrialFunction(H.V), ufl.TestFunction(H.V)
        n = ufl.FacetNormal(space.mesh)
        # the natural condition on |z| = Z is not u's: its flux kappa lambda du/dnu goes into L, so u solves
        # the truncated problem exactly (on the polyhedron too: the flux is taken with its facet normals)
        L = (H.mass_weight * 4 * u_exact * v * ufl.dx
             + H.kappa * H.gradient_weight * ufl.dot(ufl.grad(u_exact), n) * v * ufl.ds)
        problem = dolfinx.fem.petsc.LinearProblem(
            H.a_form(u, v), L, petsc_options_prefix=f"s3_mms_{degree}_",
            petsc_options={"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"})
        uh = problem.solve()
        dx = ufl.dx(metadata={"quadrature_degree": 8})
        lam = 2 / (1 + ufl.dot(z, z))
        e = uh - u_exact

        def integral(form):
            return space.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(form)))

        hs.append(space.num_cells ** (-1 / 3))
        l2.append(np.sqrt(integral(lam**3 * e**2 * dx)))  # L^2(S^3): dS = lambda^3 dz
        h1.append(np.sqrt(integral(lam * ufl.inner(ufl.grad(e), ufl.grad(e)) * dx)))  # |grad_S e|^2 dS
    norm = np.pi / np.sqrt(2)  # ||vartheta_1||_{L^2(S^3)} = sqrt(2 pi^2 / 4)
    assert l2[-1] < 0.02 * norm
    assert fitted_order(hs, l2) > orders[0], l2
    assert fitted_order(hs, h1) > orders[1], h1


def test_projected_network_predicts_as_the_network():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((20, 3))
    z *= (rng.uniform(0, 3.5, 20) / np.linalg.norm(z, axis=1))[:, None]
    theta = STEREOGRAPHIC.point(z) * rng.uniform(0.5, 2, 20)[:, None]  # not unit: counted as r a at vartheta
    net = Network(theta[:, :3], theta[:, 3], rng.standard_normal(20), "relu")
    x = rng.standard_normal((50, 3)) * 0.7
    errors = []
    for h in (0.5, 0.25):
        H = WeightedH1(Space.s3(h, radius=5.0), "uniform", 1.0, 1)
        f = DataOperator(H, "relu", x).apply(io.vector(measure.project_network(H, net)))
        errors.append(np.abs(f - net(x)).max() / np.abs(net(x)).max())
    # the pointwise L^2 projection error of relu's kink is O(h): measured 0.11 and 0.057
    assert errors[1] < 0.09 and errors[1] < 0.75 * errors[0], errors


def test_lumped_density_conserves_mass_and_drops_the_cap():
    space = Space.s3(0.4, radius=5.0)
    # the first neuron's direction has |z| = 200 > Z: in the cap left out (dead on |x| <= 2.2, Z_0 = 5)
    net = Network(np.array([[0.01, 0.0, 0.0], [0.5, 0.2, 0.1], [-0.3, 0.4, 0.0]]), np.array([-1.0, 0.3, 0.8]),
                  np.array([2.0, 1.0, -0.5]), "relu")
    pd = measure.density(net, space)
    assert pd.dropped.tolist() == [True, False, False] and pd.dropped_mass == 2.0
    r = np.linalg.norm(np.column_stack([net.W, net.b]), axis=1)
    assert pd.mass == pytest.approx(1.0 * r[1] - 0.5 * r[2], rel=1e-12)  # c_i |theta_i| at the directions
    z = ufl.SpatialCoordinate(space.mesh)
    integral = space.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        pd.function * (2 / (1 + ufl.dot(z, z))) ** 3 * ufl.dx)))
    assert integral == pytest.approx(pd.mass, rel=1e-10)  # integral u_h dS = sum of the placed c_i
    assert np.allclose(np.linalg.norm(pd.theta[1:], axis=1), 1, atol=1e-12)
    clipped = measure.density(net, space, outside="clip")
    assert clipped.moved[0] and not clipped.dropped.any() and clipped.shift[0] > 0


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    x /= np.maximum(1, np.linalg.norm(x, axis=1) / 1.5)[:, None]  # |x| <= 1.5
    y = np.maximum(x @ np.array([1.0, -0.5, 0.3]) + 0.2, 0) - 0.5 * np.sqrt(1 + np.sum(x**2, axis=1))
    return x, y


def test_rotating_the_data_leaves_the_predictions_unchanged():
    x, y = _data(300, 1)
    xt, yt = _data(100, 2)
    Q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))  # in O(3), det +1 or -1
    diffs = []
    for h in (0.5, 0.25):
        space = Space.s3(h, x=x)
        problem = Problem(space, "relu", "uniform", alpha=1e-4, kappa=0.5)
        fitted = problem.fit(x, y)
        f = fitted.predict(xt)
        f_rotated = problem.fit(x @ Q.T, y).predict(xt @ Q.T)
        assert fitted.rmse(xt, yt) < 0.1 * np.std(yt)  # a fit, not noise
        diffs.append(np.linalg.norm(f_rotated - f) / np.linalg.norm(f))
    assert diffs[1] < 2e-3 and diffs[1] < diffs[0] / 3, diffs


def test_input_dimension_refusals():
    with pytest.raises(ValueError, match="s3"):
        Space.make("box", 3, 4)
    with pytest.raises(ValueError, match="dolfinx meshes at most 3 dimensions"):
        Space.make("ball", 4, 0.5)
    with pytest.raises(ValueError, match="S\\^4"):
        check_parameter_dim(4, 4, "the data")
    with pytest.raises(ValueError, match="use the domain s3"):
        check_parameter_dim(3, 3, "the data")
    with pytest.raises(ValueError, match="dimension 3"):
        Space.make("s3", 2, 0.5, 3.0)
    space = Space.make("s3", 3, 0.6, 3.0)
    check_parameter_dim(3, space.gdim, "the data")
    with pytest.raises(ValueError, match="positively homogeneous") as refused:
        Problem(space, "tanh")
    assert "box or ball" not in str(refused.value)  # they take d <= 2 only: no advice that cannot be followed
    with pytest.raises(ValueError, match="or a box or ball domain"):  # d = 2 on the sphere: the box is an option
        Problem(Space.make("sphere", 2, 1), "tanh")
    with pytest.raises(ValueError, match="X \\+ sqrt"):  # |x| = 2 needs Z >= 4.24 > 3
        space.check_inputs(np.array([[2.0, 0.0, 0.0]]))
    space.check_inputs(np.array([[1.0, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="h Z = 18"):  # where gmsh crashed: refused before meshing
        Space.s3(0.3, radius=60.0)


RANKS_SCRIPT = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import io
from flowfem.problem import Problem
from flowfem.space import Space
sys.path.insert(0, sys.argv[2])
from test_s3 import _data

x, y = _data(200, 5)
space = Space.s3(0.4, x=x)
result = Problem(space, "relu", "uniform", alpha=1e-4, kappa=0.5, degree=2).fit(x, y, rtol=1e-13)
z, u = io.gather_dofs(result.density)
f = result.predict(_data(50, 6)[0])
if MPI.COMM_WORLD.rank == 0:
    np.savez(sys.argv[1], z=z, u=u, f=f, energy=result.energy, ranks=MPI.COMM_WORLD.size)
"""


@pytest.mark.mpi
def test_one_and_two_ranks_agree(tmp_path):
    script = tmp_path / "s3.py"
    script.write_text(RANKS_SCRIPT)
    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    for ranks in (1, 2):
        path = tmp_path / f"r{ranks}.npz"
        r = run([sys.executable, str(script), str(path), here], ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        out.append(np.load(path))
    one, two = out
    assert int(two["ranks"]) == 2
    assert np.array_equal(np.round(one["z"], 10), np.round(two["z"], 10))
    assert np.linalg.norm(one["u"] - two["u"]) <= 1e-8 * np.linalg.norm(one["u"])
    assert np.linalg.norm(one["f"] - two["f"]) <= 1e-8 * np.linalg.norm(one["f"])
    assert float(one["energy"]) == pytest.approx(float(two["energy"]), rel=1e-10)


def test_readout_reproduces_the_fit():
    """The quadrature readout on s3: unit directions vartheta(z_q), output weights q_q lambda^3 u(z_q),
    reproduces the fitted predictions to rounding."""
    from flowfem.readout import readout

    x, y = _data(300, 1)
    result = Problem(Space.s3(0.4, x=x), "relu", "uniform", alpha=1e-4, kappa=0.5).fit(x, y)
    net = readout(result)
    assert np.allclose(np.linalg.norm(np.column_stack([net.W, net.b]), axis=1), 1, atol=1e-12)
    xt = _data(50, 2)[0]
    f = result.predict(xt)
    assert np.abs(net(xt) - f).max() <= 1e-12 * np.abs(f).max()
