"""flowfem.plot: densities drawn on their mesh, fits, the flow's proven bounds, comparison panels.

Each figure is produced on a small problem and checked on its matplotlib objects: every axis
labelled, tick labels not overlapping, one colour norm where panels compare densities, the
sphere and 3-D slices drawn from the mesh's cells, no f = 0 contour for a regression, the
decision boundary and accuracy for a classification, and the plotted flow bounds above the
measured run. Rank-agnostic: gathering and solves are collective, drawing is on rank 0.
"""

import os

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from conftest import small_problem, u0
from flowfem import compare, data, plot
from flowfem.flow import Flow, bounds
from flowfem.problem import Problem
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD


def assert_readable(fig):
    """Every axis labelled (a colour bar: along its length) and no two tick labels of an axis overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a closed figure has lost its pyplot canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel(), "a colour bar without a label"
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axis in panel {ax.get_title()!r}"
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels(which="both")
                     if t.get_visible() and t.get_text()]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b), f"tick labels collide on {ax.get_title()!r}"


def trimeshes(ax):
    from matplotlib.collections import TriMesh

    return [c for c in ax.collections if isinstance(c, TriMesh)]


def contours(ax):
    from matplotlib.contour import ContourSet

    return [c for c in ax.collections if isinstance(c, ContourSet)]


def fitted(space, loss="squared", alpha=1e-4, activation="relu"):
    train, test = data.synthetic("two_moons", 200, seed=0), data.synthetic("two_moons", 200, seed=1)
    result = Problem(space, activation, "uniform", alpha=alpha, kappa=0.5, loss=loss).fit(train.x, train.y)
    return result, train, test


# -- the sphere ------------------------------------------------------------------------------------


def test_sphere_density_is_the_mesh_in_longitude_latitude(shared_tmp):
    """tripcolor of every cell of the sphere in degrees, seam and poles covered; the regression fit
    is a heat map with the data in the same colour norm and no f = 0 contour."""
    result, train, test = fitted(Space.sphere(2))
    fig = plot.write_solution_figure(os.path.join(shared_tmp, "sphere.png"), result, train, test,
                                     result.predict(test.x))
    theta, u, cells = plot.gather(result.density)
    if comm.rank != 0:
        assert fig is None and theta is None
        return
    assert cells.shape == (320, 3) and len(theta) == len(u) == 162  # 20 4^2 triangles, vertices
    lon, lat, values, tris, source = plot.sphere_triangles(theta, u, cells)
    assert np.array_equal(np.unique(source), np.arange(320))  # every cell drawn
    assert np.all(np.ptp(lon[tris], axis=1) <= 180.0)  # none smeared across the map
    assert lat.min() == -90.0 and lat.max() == 90.0  # the caps reach the poles
    dens, fit = fig.axes[0], fig.axes[1]  # then their colour bars
    (mesh,) = trimeshes(dens)
    assert len(mesh.get_paths()) == len(tris)  # TriMesh: one path per drawn triangle
    assert dens.get_xlim() == (-180.0, 180.0) and dens.get_ylim() == (-90.0, 90.0)
    assert "longitude" in dens.get_xlabel() and "degrees" in dens.get_xlabel() and "latitude" in dens.get_ylabel()
    assert mesh.norm.vmin == -mesh.norm.vmax == -np.abs(u).max()
    assert fig.axes[2].get_ylabel() == "u"
    assert not contours(fit)  # a regression has no meaningful f = 0 level
    heat, points = fit.collections[0], fit.collections[1]
    assert (heat.norm.vmin, heat.norm.vmax) == (points.norm.vmin, points.norm.vmax)
    assert heat.norm.vmin <= train.y.min() and heat.norm.vmax >= train.y.max()
    assert_readable(fig)


@pytest.mark.parametrize("degree", [1, 2])
def test_sphere_triangles_interpolate_at_their_own_points(degree):
    """Every drawn point carries u's value there: vertices off the poles, and at latitude +-90 the pole
    vertex (this mesh has vertices at both poles). For P2, the vertex dofs are the ones drawn."""
    space = Space.sphere(1)
    u = Problem(space, "relu", degree=degree).H.function()
    u.interpolate(lambda x: x[2] + 0.5 * x[0])
    theta, values, cells = plot.gather(u)
    if comm.rank != 0:
        return
    assert cells.shape == (80, 3) and cells.max() < len(theta)
    lon, lat, v, tris, source = plot.sphere_triangles(theta, values, cells)
    r = np.radians
    off = np.abs(lat) < 90.0
    assert np.allclose(v[off], np.sin(r(lat[off])) + 0.5 * np.cos(r(lat[off])) * np.cos(r(lon[off])))
    assert np.allclose(v[lat == 90.0], 1.0) and np.allclose(v[lat == -90.0], -1.0)  # the pole vertices' values
    assert np.all(np.abs(lon) <= 360.0)


# -- a 3-D box ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [0.0, 0.3, -1.7])
def test_slices_are_exact_cuts_of_the_tetrahedra(b):
    """A linear u is reproduced exactly on the cut, and the cut of [-2, 2]^3 has area 16 (b = 0 lies on
    mesh vertices: faces in the plane are cut once)."""
    space = Space.box(2, 4, 2.0)
    u = Problem(space, "tanh").H.function()
    u.interpolate(lambda x: 1.0 + x[0] - 2.0 * x[1] + 3.0 * x[2])
    theta, values, cells = plot.gather(u)
    if comm.rank != 0:
        return
    assert cells.shape == (6 * 4**3, 4)
    w1, w2, v, tris = plot.slice_triangles(theta, values, cells, b)
    assert np.allclose(v, 1.0 + w1 - 2.0 * w2 + 3.0 * b)
    area = 0.5 * np.abs((w1[tris[:, 1]] - w1[tris[:, 0]]) * (w2[tris[:, 2]] - w2[tris[:, 0]])
                        - (w1[tris[:, 2]] - w1[tris[:, 0]]) * (w2[tris[:, 1]] - w2[tris[:, 0]]))
    assert area.sum() == pytest.approx(16.0, rel=1e-12)
    assert np.all(area > 0)  # no degenerate triangles (Agg would draw them as hairlines)


def test_three_d_box_density_is_drawn_as_slices_at_b(shared_tmp):
    result, train, test = fitted(Space.box(2, 4, 2.0), activation="tanh")
    fig = plot.write_solution_figure(os.path.join(shared_tmp, "box3.png"), result, train, test,
                                     result.predict(test.x))
    if comm.rank != 0:
        return
    slices = [ax for ax in fig.axes if trimeshes(ax)]
    assert len(slices) == plot.SLICES
    levels = plot.slice_levels(np.array([[0, 0, -2.0], [0, 0, 2.0]]))
    for ax, b in zip(slices, levels):
        assert ax.get_title().endswith(f"b = {b:.3g}") and ax.get_xlabel() == r"$w_1$" and ax.get_ylabel() == r"$w_2$"
    norms = {(trimeshes(ax)[0].norm.vmin, trimeshes(ax)[0].norm.vmax) for ax in slices}
    assert len(norms) == 1  # one colour scale for the slices
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 2  # the slices' and the fit's
    assert_readable(fig)


# -- classification ---------------------------------------------------------------------------------


def test_classification_shows_the_decision_boundary_and_accuracy(shared_tmp):
    result, train, test = fitted(Space.sphere(1), loss="logistic", alpha=1e-3)
    f_test = result.predict(test.x)
    fig = plot.write_solution_figure(os.path.join(shared_tmp, "moons.png"), result, train, test, f_test)
    if comm.rank != 0:
        return
    fit = fig.axes[1]
    (boundary,) = contours(fit)
    assert list(boundary.levels) == [0.0]
    assert f"test accuracy {plot.accuracy(f_test, test.y):.3f}" in fit.get_title()
    labels = [t.get_text() for t in fit.get_legend().get_texts()]
    assert "y = -1" in labels and "y = +1" in labels
    with pytest.raises(ValueError, match="accuracy"):
        plot.fit_axes(fit, train.x, train.y, plot.grid(train.x), np.zeros(plot.GRID_SIDE**2), "logistic")
    assert_readable(fig)


# -- the flow's energy figure ------------------------------------------------------------------------


FLOWS = [("implicit_euler", "L2", "squared", dict(tau=0.5, growth=3.0, max_steps=12)),
         ("implicit_euler", "H1", "squared", dict(tau=0.5, growth=3.0, max_steps=12)),
         ("implicit_euler", "L2", "logistic", dict(tau=0.5, growth=3.0, max_steps=10)),
         ("crank_nicolson", "L2", "squared", dict(tau=0.5, growth=1.5, max_steps=10)),
         ("theta:0.7", "H1", "squared", dict(tau=0.5, growth=2.0, max_steps=10))]


@pytest.mark.parametrize("scheme,metric,loss,steps", FLOWS)
def test_the_plotted_bound_holds_for_the_scheme_run(shared_tmp, scheme, metric, loss, steps):
    """Measured distance and energy gap lie under the bound drawn for the scheme (down to the solves'
    accuracy and E's rounding), in the numbers and in the figure's lines."""
    problem, E = small_problem(loss=loss)
    flow = Flow(E, metric, scheme)
    flow.stationary()
    result = flow.run(u0(problem), **steps)
    flow.destroy()
    if comm.rank != 0:
        return
    quadratic = loss == "squared"
    err_bound, gap_bound, label = bounds.flow_bounds(result, quadratic)
    assert np.all(result.errors <= np.maximum(err_bound, plot.PLATEAU * result.errors.min()) * (1 + 1e-12))
    drawn = err_bound > plot.PLATEAU * result.errors.min()  # where the figure draws the bound itself
    assert drawn.sum() >= 6 and np.all(result.errors[drawn] <= err_bound[drawn] * (1 + 1e-12))
    gap = result.energies - flow.energy_star
    floor = 64 * np.finfo(float).eps * max(abs(flow.energy_star), abs(result.energies).max())
    assert np.all(gap[gap > floor] <= gap_bound[gap > floor] * (1 + 1e-12))
    fig = plot.energy_figure(os.path.join(shared_tmp, f"energy_{scheme}_{metric}_{loss}.png"), result,
                             quadratic=quadratic)
    for ax in fig.axes:
        measured, bound = ax.get_lines()[:2]
        assert bound.get_linestyle() == "--" and bound.get_label().startswith("proven bound")
        x = dict(zip(bound.get_xdata(), bound.get_ydata()))
        assert all(y <= x[t] * (1 + 1e-12) for t, y in zip(measured.get_xdata(), measured.get_ydata()))
    assert_readable(fig)


def test_implicit_euler_with_growing_steps_is_not_bounded_by_the_continuous_rate():
    """Why the figure plots prod (1 + tau_k lambda)^-1: with large steps the run lies above e^(-lambda t)."""
    problem, E = small_problem()
    flow = Flow(E, "L2", "implicit_euler")
    flow.stationary()
    result = flow.run(u0(problem), tau=0.5, growth=3.0, max_steps=8)
    flow.destroy()
    e, t = result.errors, result.times
    assert np.any(e[1:] > e[0] * np.exp(-result.lam * t[1:]))
    assert np.all(e <= bounds.flow_bounds(result, True)[0] * (1 + 1e-12))


@pytest.mark.parametrize("scheme,loss", [("bdf", "squared"), ("crank_nicolson", "logistic")])
def test_no_bound_is_drawn_where_none_is_proven(shared_tmp, scheme, loss):
    problem, E = small_problem(loss=loss)
    flow = Flow(E, "L2", scheme)
    flow.stationary()
    result = flow.run(u0(problem), tau=0.1, max_steps=6)
    flow.destroy()
    if comm.rank != 0:
        return
    assert bounds.flow_bounds(result, loss == "squared")[0] is None
    fig = plot.energy_figure(os.path.join(shared_tmp, f"energy_{scheme}.png"), result, quadratic=loss == "squared")
    assert all(line.get_linestyle() != "--" for ax in fig.axes for line in ax.get_lines())
    assert "no contraction bound is proven" in fig.axes[1].get_title()
    assert_readable(fig)


# -- flowfem compare -----------------------------------------------------------------------------------


# (16, 64): the quadrature readouts come out at N = 18 and 72, whose tick labels once printed over 16 and 64
@pytest.mark.parametrize("widths", [(8, 32), (16, 64)])
def test_compare_densities_share_one_colour_scale(shared_tmp, widths):
    train, test = data.synthetic("sin", 150, seed=0), data.synthetic("sin", 200, seed=1)
    cmp = compare.compare(train, test, widths=widths, seeds=(0,), steps=60, mesh_size=8, alpha=1e-4,
                          readouts=("quadrature",))
    gathered = [plot.gather(f) for f in [cmp.density] + [d.function for d in cmp.densities.values()]]
    if comm.rank != 0:
        return
    figures = plot.comparison_figures(shared_tmp, cmp, gathered)
    assert sorted(figures) == sorted(compare.FIGURES)
    dens = figures["densities.png"]
    panels = [ax for ax in dens.axes if trimeshes(ax)]
    assert len(panels) == 1 + len(cmp.densities) == 3
    norms = {(trimeshes(ax)[0].norm.vmin, trimeshes(ax)[0].norm.vmax) for ax in panels}
    vmax = np.abs(gathered[0][1]).max()
    assert norms == {(-vmax, vmax)}  # one symmetric scale, set by u*
    assert sum(ax.get_label() == "<colorbar>" for ax in dens.axes) == 1
    for ax, (_, u, _) in zip(panels, gathered):
        assert ("clipped" in ax.get_title()) == (np.abs(u).max() > vmax * (1 + 1e-12))
    width = figures["error_vs_width.png"]
    for ax in width.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(w) for w in widths]
    for fig in figures.values():
        assert_readable(fig)


def test_grid_side_bounds_the_cost_of_the_figure_predictions():
    """120 x 120 predictions on the default 2-D box (786,432 quadrature points) took 90 s of a 140 s
    solve; the grid now shrinks so that they evaluate sigma at most FIGURE_EVALUATIONS times."""
    assert plot.grid_side(30720) == plot.GRID_SIDE  # the default sphere
    side = plot.grid_side(786432)
    assert plot.GRID_SIDE_MIN <= side < plot.GRID_SIDE
    assert side**2 * 786432 <= plot.FIGURE_EVALUATIONS < (side + 1) ** 2 * 786432
    assert plot.grid_side(10**12) == plot.GRID_SIDE_MIN
    assert plot.grid(np.array([[0.0, 1.0], [2.0, 3.0]]), 7).shape == (49, 2)


def test_a_costly_fit_is_drawn_on_the_coarser_grid(shared_tmp, monkeypatch):
    monkeypatch.setattr(plot, "FIGURE_EVALUATIONS", 1)
    result, train, test = fitted(Space.sphere(1), loss="logistic", alpha=1e-3)
    fig = plot.write_solution_figure(os.path.join(shared_tmp, "coarse.png"), result, train, test,
                                     result.predict(test.x))
    if comm.rank != 0:
        return
    (mesh,) = [c for c in fig.axes[1].collections if type(c).__name__ == "QuadMesh"]
    assert mesh.get_array().shape == (plot.GRID_SIDE_MIN, plot.GRID_SIDE_MIN)
    assert len(contours(fig.axes[1])) == 1
    assert_readable(fig)


def test_a_standardised_fit_is_drawn_in_the_data_files_units(shared_tmp):
    """A real data set is fitted on standardised inputs; its figure drew those (engel's income axis ran
    from -1 to 7, not in francs). The fit and the data are now drawn over the raw inputs, as
    predictions.csv holds them."""
    from flowfem.scaling import Standardisation

    scaling = Standardisation(np.array([1000.0, -5.0]), np.array([300.0, 0.5]))
    result, train, test = fitted(Space.sphere(1), loss="logistic", alpha=1e-3)
    fig = plot.write_solution_figure(os.path.join(shared_tmp, "raw.png"), result, train, test,
                                     result.predict(test.x), scaling=scaling)
    if comm.rank != 0:
        return
    fit = fig.axes[1]
    drawn = np.vstack([c.get_offsets() for c in fit.collections if type(c).__name__ == "PathCollection"])
    raw = scaling.invert(train.x)
    assert drawn.shape == raw.shape
    np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(raw, axis=0), rtol=1e-12)
    (mesh,) = [c for c in fit.collections if type(c).__name__ == "QuadMesh"]
    corners = mesh.get_coordinates().reshape(-1, 2)
    np.testing.assert_allclose(corners.min(axis=0), raw.min(axis=0), rtol=1e-12)
    np.testing.assert_allclose(corners.max(axis=0), raw.max(axis=0), rtol=1e-12)
