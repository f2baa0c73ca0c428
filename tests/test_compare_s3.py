"""flowfem.compare on the domain s3 (inputs in R^3, issue 15): every distance is taken on S^3.

Each test fails if compare measured in the chart's coordinates instead of on the sphere:

(a) closed forms on the truncated sphere S^3 minus the cap |z| > Z (measure
    2 pi^2 - pi (2 beta - sin 2 beta), beta = 2 arctan(1 / Z)): ||1||^2_{L^2} through compare's
    L^2 form (without lambda^3 it would be the ball's volume 4 pi Z^3 / 3), and the MMD of the
    uniform measure, MMD^2 = integral integral k(theta, theta') dS dS' over the truncated sphere,
    from the kernel's mean K0 over S^3 and a 2-D quadrature over the cap (points in z, not
    vartheta(z) in R^4, would fail);
(b) distances that must vanish: the FE density against the particles of its own midpoint
    readout (MMD zero to rounding, masses equal), and compare's L^2 form against the mass matrix
    of the FE space, an independent assembly;
(c) the comparison itself on s3: the chart radius from the data, the quadrature readout's coarse
    mesh with that radius, the MMD bandwidth from the neurons' extent in R^4, the projection
    bound holding with the cells' size on S^3.
"""

import numpy as np
import pytest
import scipy.integrate

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from conftest import fitted_order
from flowfem import compare, data, measure, readout
from flowfem.sobolev import WeightedH1
from flowfem.space import S3_CELLS, STEREOGRAPHIC, Space, chart_radius

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

NONE = (np.zeros((0, 4)), np.zeros(0))  # the zero measure, for ||mu||_MMD = MMD(mu, 0)


def cap_measure(Z):
    beta = 2 * np.arctan(1 / Z)
    return np.pi * (2 * beta - np.sin(2 * beta))


def uniform_mmd(Z, s):
    """MMD(1 dS on S^3 minus the cap |z| > Z, 0) for k = exp(-|theta - theta'|^2 / (2 s^2)).

    The full sphere: integral k(theta, .) dS = K0 for every theta, K0 = 4 pi int_0^pi exp(-(1 - cos t) / s^2)
    sin^2 t dt (|theta - theta'|^2 = 2 - 2 cos t). Minus the cap C: int_T int_T = |S| K0 - 2 |C| K0 + I_CC,
    I_CC in geodesic polar coordinates about the south pole (theta = cos t s + sin t u, dS = sin^2 t dt dA(u),
    theta . theta' = cos t cos t' + sin t sin t' c with c = u . u', dA(u') = 2 pi dc, c in [-1, 1]).
    """
    K0 = 4 * np.pi * scipy.integrate.quad(lambda t: np.exp(-(1 - np.cos(t)) / s**2) * np.sin(t) ** 2, 0, np.pi,
                                          epsabs=1e-14)[0]
    beta = 2 * np.arctan(1 / Z)

    def inner(tp, t):
        A = -(1 - np.cos(t) * np.cos(tp)) / s**2
        B = np.sin(t) * np.sin(tp) / s**2
        c = 2 * np.exp(A) if B < 1e-12 else np.exp(A) * (np.exp(B) - np.exp(-B)) / B
        return 4 * np.pi * np.sin(t) ** 2 * 2 * np.pi * np.sin(tp) ** 2 * c

    I_CC = scipy.integrate.dblquad(inner, 0, beta, 0, beta, epsabs=1e-14)[0]
    return np.sqrt(2 * np.pi**2 * K0 - 2 * cap_measure(Z) * K0 + I_CC), K0


def test_uniform_mmd_closed_form_over_the_whole_sphere():
    # the cap integral with the cap the whole sphere (beta = pi) must give |S| K0
    s = 0.5
    _, K0 = uniform_mmd(2.0, s)

    def inner(tp, t):
        A, B = -(1 - np.cos(t) * np.cos(tp)) / s**2, np.sin(t) * np.sin(tp) / s**2
        c = 2 * np.exp(A) if B < 1e-12 else np.exp(A) * (np.exp(B) - np.exp(-B)) / B
        return 4 * np.pi * np.sin(t) ** 2 * 2 * np.pi * np.sin(tp) ** 2 * c

    full = scipy.integrate.dblquad(inner, 0, np.pi, 0, np.pi, epsabs=1e-12)[0]
    assert full == pytest.approx(2 * np.pi**2 * K0, rel=1e-9)


def test_l2_norm_and_mmd_of_the_constant_density_on_the_truncated_sphere():
    Z, s = 2.0, 0.5  # the cap left out has measure 2.82: missing it would fail
    measure_T = 2 * np.pi**2 - cap_measure(Z)
    mmd_T, _ = uniform_mmd(Z, s)
    sizes, l2_err, mmd_err = [], [], []
    for h in (0.5, 0.3):
        space = Space.s3(h, radius=Z)
        one = WeightedH1(space).function()
        one.x.array[:] = 1.0
        zero = WeightedH1(space).function()
        l2 = compare.l2_norm(one)
        assert compare.l2_distance(one, zero) == pytest.approx(l2, rel=1e-14)
        pts, mass = compare.density_measure(one)
        assert pts.shape == (space.num_cells, 4) and np.allclose(np.linalg.norm(pts, axis=1), 1, atol=1e-12)
        sizes.append(space.num_cells ** (-1 / 3))
        l2_err.append(abs(l2**2 - measure_T))
        mmd_err.append(abs(compare.mmd((pts, mass), NONE, s, space.comm) - mmd_T))
    # measured: ||1||^2 within 0.1% (the inscribed polyhedron), the MMD within 4.7% and 1.7% (midpoint rule)
    assert l2_err[-1] < 0.01 * measure_T and l2_err[-1] < 0.1 * cap_measure(Z), l2_err
    assert mmd_err[-1] < 0.03 * mmd_T, mmd_err
    assert fitted_order(sizes, mmd_err) > 1.5, mmd_err


def test_density_against_its_own_quadrature_particles():
    """u's midpoint-rule network, projected back as particles: MMD to u's measure zero (the particles are
    placed at vartheta(z_K) with the masses |K| lambda^3 u(z_K)); the lumped density conserves that mass on
    S^3; compare's L^2 form is u^T M u with the FE space's own mass matrix."""
    space = Space.s3(0.4, radius=5.0)
    H = WeightedH1(space, "uniform", 1.0, 1)
    u = H.function()
    u.interpolate(lambda z: 1.0 + STEREOGRAPHIC.point(z[:3].T)[:, 0] - 0.5 * STEREOGRAPHIC.point(z[:3].T)[:, 3] ** 2)
    neurons = readout.quadrature_neurons(u, "relu", degree=1)
    net = neurons.network()
    pd = measure.density(net, H.V)
    assert not pd.dropped.any()
    np.testing.assert_allclose(pd.theta, neurons.theta, atol=1e-10)  # placed where the readout put them
    fe = compare.density_measure(u)
    scale = compare.mmd(fe, NONE, 0.3, space.comm)
    assert compare.mmd(fe, (pd.theta, pd.c), 0.3, space.comm) <= 1e-6 * scale
    assert pd.mass == pytest.approx(float(np.sum(fe[1])), rel=1e-12)
    assert compare._volume_integral(pd.function, space.mesh) == pytest.approx(pd.mass, rel=1e-10)
    Mu = H.M.createVecLeft()
    H.M.mult(u.x.petsc_vec, Mu)
    assert compare.l2_norm(u) ** 2 == pytest.approx(Mu.dot(u.x.petsc_vec), rel=1e-10)
    # the projection bound spreads point masses by cells' chords on S^3, at most 2 (S^3's diameter) here
    assert 0 < pd.h < 2.0


def test_coarse_size_on_s3():
    h, desc = compare.coarse_size("s3", 3, 20000, None)
    assert S3_CELLS / h**3 == pytest.approx(20000, rel=1e-12) and "s3" in desc
    assert compare.coarse_size("s3", 3, 4, None)[0] == compare.S3_COARSEST_SIZE  # the coarsest mesh gmsh makes


def _data(n, seed):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 3))
    y = np.maximum(x[:, 0] + x[:, 1] - x[:, 2], 0) - 0.5 * np.maximum(-x[:, 0], 0)
    return data.Dataset(x, y, "relu3")


def test_compare_on_s3():
    train, test = _data(120, 0), _data(60, 1)
    c = compare.compare(train, test, widths=(4, 3000), seeds=(0,), steps=20, domain="s3", mesh_size=0.4, alpha=1e-4,
                        readouts=("quadrature", "refit"))
    Z = chart_radius(float(np.linalg.norm(train.x, axis=1).max()))
    space = c.result.problem.space
    assert c.settings["radius"] == pytest.approx(Z, rel=1e-12) and space.outer_radius == pytest.approx(Z, rel=1e-12)
    quad = [r for r in c.runs if r.method == "quadrature"]
    net = c.networks[("quadrature", 3000, None)]
    assert np.allclose(np.linalg.norm(np.column_stack([net.W, net.b]), axis=1), 1, atol=1e-12)  # directions
    # the coarse mesh for N = 3000 has about 3000 cells (a mesh of 140 / h^3 cells); N = 4 the coarsest, h = 0.4
    assert 0.6 * 3000 < quad[1].width < 1.6 * 3000 and quad[0].width < quad[1].width
    # the kernel acts on S^3 in R^4: its bounding box has diameter < 4, the chart's ball 2 Z sqrt(3) = 24
    assert c.settings["mmd_bandwidth"] == pytest.approx(0.1 * compare.neuron_extent(space.mesh), rel=1e-12)
    assert 0.35 < c.settings["mmd_bandwidth"] < 0.4
    fe_l2 = compare.l2_norm(c.density)
    for (m, N, s), pd in c.densities.items():
        d = c.distances[f"{m} N={N} seed={s}"]
        assert d["l2"] == pytest.approx(compare.l2_distance(c.density, pd.function), rel=1e-12)
        assert d["l2_relative"] == pytest.approx(d["l2"] / fe_l2, rel=1e-12)
        placed = (pd.theta[~pd.dropped], pd.c[~pd.dropped])
        assert np.allclose(np.linalg.norm(placed[0], axis=1), 1, atol=1e-12)
        assert d["mmd"] == pytest.approx(compare.mmd(compare.density_measure(c.density), placed,
                                                     c.settings["mmd_bandwidth"]), rel=1e-9)
        assert 0 < d["projection_error"] <= d["projection_bound"]
