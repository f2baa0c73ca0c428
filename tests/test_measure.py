"""Measures on the parameter mesh (flowfem.measure): the L2 projection of a network's measure onto V_h
(project_network), and the density of the particles (density): the particle measure
mu = sum_i c_i delta_(theta_i) projected onto a parameter mesh.

Mass consistency: integral u_h = sum of the placed c_i exactly, and the network of u_h,
f_(u_h)(x) = integral sigma(theta . x~) u_h d theta, reproduces the particles' network up to
the stated smoothing error (ParticleDensity.bound), which shrinks with the mesh size h and the
kernel width s. Every test here is rank-agnostic; the last one compares 1 and 2 ranks.
"""

import sys

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
import dolfinx.fem
import ufl
from mpi4py import MPI

from conftest import fitted_order, run
from flowfem import data, measure
from flowfem import particles as fp
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py


def _network(N=400, d=1, seed=0, act="relu", scale=1.5):
    """Particles i.i.d. normal, (w, b) with standard deviation ``scale`` (a few lie outside the
    radius-4 box), a with 1: a signed measure of total variation ~ 0.8."""
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(N, d + 2))
    P[:, :-1] *= scale
    return fp.to_network(P, act)


def _integral(u) -> float:
    return MPI.COMM_WORLD.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(u * ufl.dx)))


def _inputs(d, n=201):
    if d == 1:
        return np.linspace(-1, 1, n)[:, None]
    return np.random.default_rng(7).uniform(-1, 1, (n, 2))




@pytest.mark.parametrize("domain", ["box", "circle", "sphere"])
@pytest.mark.parametrize("method", ["lumped", "kernel"])
def test_mass_is_conserved_and_placement_keeps_the_network(domain, method):
    """integral u_h d theta = sum_i c_i of the measure as placed, to rounding, and the placed measure
    (rays rescaled into the box; directions with |theta|^p folded into c on circle and sphere) is
    the same network."""
    d = 2 if domain == "sphere" else 1
    net = _network(300, d)
    space = Space.make(domain, d, {"box": 16, "circle": 32, "sphere": 2}[domain], 4.0)
    pd = measure.density(net, space, method=method, width=0.3 if method == "kernel" else None)
    assert _integral(pd.function) == pytest.approx(pd.mass, rel=1e-11, abs=1e-14)
    assert not pd.dropped.any() and pd.dropped_mass == 0.0
    x = _inputs(d)
    if domain == "box":
        assert 0 < pd.moved.sum() < 30  # the few particles outside [-4, 4]^2 were moved along their rays
        np.testing.assert_array_equal(pd.shift, 0.0)
        np.testing.assert_allclose(pd.network()(x), net(x), rtol=1e-12, atol=1e-14)
    else:
        assert pd.directions and pd.moved.all()
        # placed on the curved mesh, within O(h^3) of the unit sphere: the network moves by little
        assert pd.shift.max() < 2e-3
        assert np.abs(pd.network()(x) - net(x)).max() <= pd.bound(x).max()
        assert np.abs(pd.network()(x) - net(x)).max() < 1e-2 * np.abs(net(x)).max()
    assert pd.c0.sum() == pytest.approx(net.a.sum())


def test_lumped_projection_reproduces_the_predictions_as_h_shrinks():
    """Box [-4, 4]^2, n = 8..64 cells per side: |f_(u_h) - f_mu| stays below the stated bound
    L |x~| 2 h sum |c_i| and falls at least like h (measured about h^1.3: first moments are kept
    in the interior; the particles near the boundary contribute O(h))."""
    net = _network(500)
    x = _inputs(1)
    h, err = [], []
    for n in (8, 16, 32, 64):
        pd = measure.density(net, Space.box(1, n, 4.0))
        e = np.abs(pd.predict(x) - net(x))
        assert np.all(e <= pd.bound(x))
        h.append(pd.h)
        err.append(e.max())
    assert fitted_order(h, err) >= 1.0, err
    assert err[-1] < 1e-3


@pytest.mark.parametrize("domain,sizes,rate", [("circle", (16, 64, 256), 1.2), ("sphere", (1, 2, 3), 1.0)])
def test_directions_reproduce_the_predictions_as_h_shrinks(domain, sizes, rate):
    """On the circle (measured ~h^1.45) and sphere (~h^1.3) the projection of the directions with
    c_i |theta_i| reproduces the particles' ReLU network within the bound, converging in h."""
    d = 2 if domain == "sphere" else 1
    net = _network(400, d)
    x = _inputs(d)
    h, err = [], []
    for size in sizes:
        pd = measure.density(net, Space.make(domain, d, size))
        e = np.abs(pd.predict(x) - net(x))
        assert np.all(e <= pd.bound(x))
        h.append(pd.h)
        err.append(e.max())
    assert fitted_order(h, err) >= rate, err


def test_kernel_smoothing_error_is_within_the_stated_bound():
    """Kernel smoothing with standard deviation s: mass conserved, the error below
    L |x~| (2 h + s) sum |c_i| and growing with s (it is the smoothing, not the mesh)."""
    net = _network(400)
    x = _inputs(1)
    space = Space.box(1, 64, 4.0)
    errs = []
    for s in (0.1, 0.2, 0.4, 0.8):
        pd = measure.density(net, space, method="kernel", width=s)
        assert pd.width == s
        assert _integral(pd.function) == pytest.approx(pd.mass, rel=1e-10)
        e = np.abs(pd.predict(x) - net(x))
        assert np.all(e <= pd.bound(x))
        errs.append(e.max())
    assert np.all(np.diff(errs) > 0)
    assert errs[-1] > 3 * errs[0]


def test_particles_outside_are_clipped_or_dropped_and_reported():
    """tanh is not homogeneous: particles outside [-2, 2]^2 are clipped (moved, reported in shift)
    or dropped (reported with their mass); either way the error stays within the bound."""
    net = _network(300, act="tanh")
    theta = np.column_stack([net.W, net.b])
    outside = np.abs(theta).max(axis=1) > 2.0
    assert outside.sum() > 20
    space = Space.box(1, 32, 2.0)
    x = _inputs(1)
    drop = measure.density(net, space)  # default for non-homogeneous activations
    assert drop.outside == "drop"
    np.testing.assert_array_equal(drop.dropped, outside)
    assert drop.dropped_mass == pytest.approx(net.a[outside].sum())
    assert drop.dropped_variation == pytest.approx(np.abs(net.a[outside]).sum())
    assert drop.mass + drop.dropped_mass == pytest.approx(net.a.sum())
    assert _integral(drop.function) == pytest.approx(drop.mass, rel=1e-11)
    assert np.all(np.abs(drop.predict(x) - net(x)) <= drop.bound(x))
    clip = measure.density(net, space, outside="clip")
    np.testing.assert_array_equal(clip.moved, outside)
    assert np.all(clip.shift[outside] > 0) and np.all(clip.shift[~outside] < 1e-12)
    assert np.abs(clip.theta[outside]).max() <= 2.0 + 1e-9  # on the boundary of the box
    assert clip.mass == pytest.approx(net.a.sum())
    assert np.all(np.abs(clip.predict(x) - net(x)) <= clip.bound(x))


def test_trained_particles_and_a_higher_degree_space():
    """A trained particle network (GD on sin) projected onto the P2 space of a flowfem problem:
    interpolated from P1 exactly, so its predictions match the P1 density's. GD moves some
    neurons far out (|w| ~ 10); rescaled to just inside the boundary, with the particles near it
    they make the error O(h): 1.8 % of max |f| at h = 0.18."""
    from flowfem.sobolev import WeightedH1

    train = data.synthetic("sin", 200, seed=0)
    r = fp.train(train.x, train.y, 64, lr=1.0, steps=300, comm=MPI.COMM_SELF)
    space = Space.box(1, 64, 4.0)
    p1 = measure.density(r, space)
    p2 = measure.density(r, WeightedH1(space, degree=2).V)
    assert p2.function.function_space.element.basix_element.degree == 2
    x = _inputs(1)
    np.testing.assert_allclose(p2.predict(x), p1.predict(x), rtol=1e-10, atol=1e-12)
    f = r.network(x)
    assert np.abs(p1.predict(x) - f).max() < 0.03 * np.abs(f).max()
    assert np.all(np.abs(p1.predict(x) - f) <= p1.bound(x))


@pytest.mark.parametrize("kwargs,target,match", [
    (dict(method="kernel"), "box", "width s > 0"),
    (dict(width=0.2), "box", "method='kernel'"),
    (dict(method="nearest"), "box", "unknown"),
    (dict(outside="wrap"), "box", "unknown"),
    (dict(outside="rescale", act="tanh"), "box", "homogeneous"),
    (dict(act="tanh"), "circle", "directions"),
    (dict(d=2), "box", "dimension"),
])
def test_bad_input_is_refused(kwargs, target, match):
    kwargs = dict(kwargs)
    net = _network(20, kwargs.pop("d", 1), act=kwargs.pop("act", "relu"))
    space = Space.make(target, 1, 8 if target == "box" else 16)
    with pytest.raises(ValueError, match=match):
        measure.density(net, space, **kwargs)


def test_a_diverged_run_has_no_density():
    x = np.linspace(-1, 1, 20)
    r = fp.train(x, 1e3 * x, 10, activation="monomial:3", lr=1e6, steps=50, comm=MPI.COMM_SELF)
    assert r.status == "diverged"
    with pytest.raises(ValueError, match="diverged"):
        measure.density(r, Space.box(1, 4, 4.0))
    with pytest.raises(TypeError, match="ParticleResult or a Network"):
        measure.density(np.zeros((3, 3)), Space.box(1, 4, 4.0))


# -- the L2 projection of a network onto V_h ------------------------------------------------------------


def test_network_projection_on_the_sphere_keeps_the_mass():
    """relu on S^2: a neuron r vartheta counts r a at vartheta; integral u_h = sum_i r_i a_i (1 is in V_h)."""
    rng = np.random.default_rng(1)
    W, b, a = rng.standard_normal((40, 2)), rng.standard_normal(40), rng.standard_normal(40)
    net = Network(W, b, a, "relu")
    problem = Problem(Space.sphere(2), "relu")
    u = measure.project_network(problem.H, net)
    mass = MPI.COMM_WORLD.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(u * ufl.dx)), op=MPI.SUM)
    r = np.linalg.norm(np.column_stack([W, b]), axis=1)
    assert mass == pytest.approx(np.sum(r * a), rel=1e-9)
    # and the network it represents is close to the finite one
    x = data.synthetic("two_moons", 50, seed=0).x
    f = problem.functional(x, np.ones(50)).Phi.apply(u.x.petsc_vec)
    assert np.linalg.norm(f - net(x)) <= 0.2 * np.linalg.norm(net(x))


def test_network_outside_the_box_is_refused():
    net = Network(np.array([[0.5], [5.0]]), np.array([0.0, 0.0]), np.array([1.0, 1.0]), "relu")
    problem = Problem(Space.box(1, 4, 2.0), "relu")
    with pytest.raises(ValueError, match="outside the parameter domain"):
        measure.project_network(problem.H, net)


SCRIPT = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import io, measure, particles as fp
from flowfem.space import Space

out = {}
for name, d, domain, size, kw in [("box", 1, "box", 16, {}), ("kernel", 1, "box", 16, dict(method="kernel", width=0.3)),
                                  ("sphere", 2, "sphere", 2, {}), ("clip", 1, "box", 8, dict(outside="clip"))]:
    rng = np.random.default_rng(3)
    P = rng.normal(size=(101, d + 2)) * 1.5
    net = fp.to_network(P, "tanh" if name == "clip" else "relu")
    pd = measure.density(net, Space.make(domain, d, size, 2.0 if name == "clip" else 4.0), **kw)
    theta, u = io.gather_dofs(pd.function)
    out[name + "_u"], out[name + "_theta"] = u, theta
    out[name + "_c"], out[name + "_placed"] = pd.c, pd.theta
if MPI.COMM_WORLD.rank == 0:
    np.savez(sys.argv[1], ranks=MPI.COMM_WORLD.size, **out)
"""


@pytest.mark.mpi
def test_one_and_two_ranks_give_the_same_density(tmp_path):
    script = tmp_path / "density.py"
    script.write_text(SCRIPT)
    res = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}.npz"
        r = run([sys.executable, str(script), str(out)], ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stderr
        res.append(np.load(out))
    one, two = res
    assert int(two["ranks"]) == 2
    for name in ("box", "kernel", "sphere", "clip"):
        np.testing.assert_allclose(np.round(one[name + "_theta"], 10), np.round(two[name + "_theta"], 10))
        u1, u2 = one[name + "_u"], two[name + "_u"]
        assert np.abs(u1 - u2).max() <= 1e-9 * np.abs(u1).max(), name
        np.testing.assert_allclose(one[name + "_c"], two[name + "_c"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(one[name + "_placed"], two[name + "_placed"], rtol=1e-10, atol=1e-12)
