"""The input-grid approximation S ~ Pi S_X (flowfem.operator.features.interpolated).

Pi is checked against the hat functions written out densely, the products against
Pi S_X formed in NumPy, the error against the exact features (zero for an affine
sigma, order 2 in the grid's cell size for a smooth one), the weights' cache against
weights mutated in place, the method names against what they select, and a fit on
1 and 2 ranks against each other (with sharded data: tests/test_sharded_interpolated.py).
"""

import sys

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from conftest import run_mpi_script
from flowfem.activations import activation
from flowfem.operator import DenseFeatures, ReluTreeFeatures, evaluate
from flowfem.operator.features.interpolated import InterpolatedFeatures, grid_cells
from flowfem.operator.features.weights import frozen
from flowfem.operator.select import check, implementation, make_features

RNG = np.random.default_rng(7)


def hats(x, lower, h, cells):
    """phi_k(x_j) = prod_a max(0, 1 - |x_ja - X_ka| / h_a) for every node k (C order), densely: (n, n_X)."""
    d = x.shape[1]
    axes = [lower[a] + h[a] * np.arange(cells + 1) for a in range(d)]
    X = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
    return np.prod(np.maximum(0.0, 1.0 - np.abs(x[:, None, :] - X[None, :, :]) / h), axis=2), X


@pytest.mark.parametrize("name, d, cells", [("tanh", 2, 5), ("relu", 2, 4), ("softplus", 1, 7), ("relu", 3, 3)])
def test_products_equal_pi_times_the_node_features_in_numpy(name, d, cells):
    sigma = activation(name)
    x, theta = RNG.uniform(-1, 2, (40, d)), RNG.normal(size=(30, d + 1))
    S = InterpolatedFeatures(sigma, x, theta, cells)
    Pi, X = hats(x, x.min(axis=0), (x.max(axis=0) - x.min(axis=0)) / cells, cells)
    np.testing.assert_allclose(Pi.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(S.Pi.toarray(), Pi, atol=1e-14)
    A = Pi @ evaluate(sigma, X, theta)  # (n, m)
    g, r, G, R = RNG.normal(size=30), RNG.normal(size=40), RNG.normal(size=(30, 3)), RNG.normal(size=(40, 3))
    D, scale = RNG.uniform(0.5, 2.0, 40), 0.3
    tol = dict(rtol=1e-12, atol=1e-12 * np.abs(A).max())
    np.testing.assert_allclose(S.dense(), A, **tol)
    np.testing.assert_allclose(S.matvec(g), A @ g, **tol)
    np.testing.assert_allclose(S.rmatvec(r), A.T @ r, **tol)
    np.testing.assert_allclose(S.matmat(G), A @ G, **tol)
    np.testing.assert_allclose(S.rmatmat(R), A.T @ R, **tol)
    normal = scale * A.T @ (D * (A @ g))
    np.testing.assert_allclose(S.normal(g, D, scale), normal, rtol=1e-11, atol=1e-11 * np.abs(normal).max())
    block = scale * A.T @ (D[:, None] * (A @ G))
    np.testing.assert_allclose(S.normal_block(G, D, scale), block, rtol=1e-11, atol=1e-11 * np.abs(block).max())


@pytest.mark.parametrize("d, cells", [(1, 3), (2, 4), (3, 2)])
def test_an_affine_sigma_is_interpolated_exactly(d, cells):
    sigma = activation("monomial:1")  # theta . x~ is affine in x: Q1 interpolation reproduces it
    x, theta = RNG.uniform(-3, 1, (60, d)), RNG.normal(size=(25, d + 1))
    exact = evaluate(sigma, x, theta)
    S = InterpolatedFeatures(sigma, x, theta, cells)
    assert np.abs(S.dense() - exact).max() <= 1e-13 * np.abs(exact).max()
    g = RNG.normal(size=25)
    np.testing.assert_allclose(S.matvec(g), exact @ g, rtol=1e-12, atol=1e-12 * np.abs(exact @ g).max())


def test_the_prediction_error_falls_as_the_cell_size_squared():
    # a smooth f = sum_q tanh(theta_q . x~) g_q on 2-D inputs; the max error over the data per grid
    sigma = activation("tanh")
    x, theta = RNG.uniform(-1, 1, (3000, 2)), RNG.normal(size=(50, 3))
    g = RNG.normal(size=50)
    f = evaluate(sigma, x, theta) @ g
    cells = np.array([8, 16, 32, 64])
    errors = np.array([np.abs(InterpolatedFeatures(sigma, x, theta, c).matvec(g) - f).max() for c in cells])
    order = -np.polyfit(np.log(cells), np.log(errors), 1)[0]
    assert 1.8 <= order <= 2.2, (errors, order)
    assert errors[-1] <= 1e-2 * np.abs(f).max(), errors  # and small in absolute terms


def test_data_weights_changed_in_place_are_seen():
    """B = Pi^T diag(D) Pi is kept for a frozen D only (keyed by the array); any other D, even one written
    in place between products or marked read-only, has B assembled afresh."""
    sigma = activation("relu")
    x, theta = RNG.uniform(-1, 1, (50, 2)), RNG.normal(size=(20, 3))
    S = InterpolatedFeatures(sigma, x, theta, 6)
    A = S.dense()
    g, D = RNG.normal(size=20), np.ones(50)
    np.testing.assert_allclose(S.normal(g, D, 1.0), A.T @ (A @ g), rtol=1e-12)
    D[:] = RNG.uniform(0, 3, 50)  # a weight written in place
    np.testing.assert_allclose(S.normal(g, D, 1.0), A.T @ (D * (A @ g)), rtol=1e-12)
    assert S.weights(D) is not S.weights(D)  # not kept: nothing to compare a later D with
    readonly = D * 2.0
    readonly.flags.writeable = False  # read-only, but the flag can be set back: not frozen
    np.testing.assert_allclose(S.normal(g, readonly, 1.0), A.T @ (readonly * (A @ g)), rtol=1e-12)
    readonly.flags.writeable = True
    readonly[:] = 1.0
    np.testing.assert_allclose(S.normal(g, readonly, 1.0), A.T @ (A @ g), rtol=1e-12)
    F = frozen(D)  # what LinearSolver holds: assembled once, then kept
    np.testing.assert_allclose(S.normal(g, F, 1.0), A.T @ (D * (A @ g)), rtol=1e-12)
    B = S.weights(F)
    Pi = S.Pi.toarray()
    np.testing.assert_allclose(B.toarray(), Pi.T @ (D[:, None] * Pi), rtol=1e-13, atol=1e-13)
    D[:] = 1.0  # the array F was copied from: F keeps its values, and products with D do not touch F's B
    np.testing.assert_allclose(S.normal(g, D, 1.0), A.T @ (A @ g), rtol=1e-12)
    assert S.weights(F) is B
    np.testing.assert_allclose(S.normal_block(g[:, None], F, 1.0)[:, 0], A.T @ (F * (A @ g)), rtol=1e-12)
    assert S.weights(F) is B
    del F, B  # the next frozen D replaces the kept B (whatever id it gets)
    F = frozen(RNG.uniform(0, 3, 50))
    np.testing.assert_allclose(S.normal(g, F, 1.0), A.T @ (F * (A @ g)), rtol=1e-12)
    assert S.weights(F) is S.weights(F)


def test_the_approximation_only_when_asked_for_and_not_for_single_products():
    relu, tanh = activation("relu"), activation("tanh")
    for sigma in (relu, tanh):
        for d in (1, 2, 3):
            assert implementation(sigma, d).exact  # auto never approximates
            assert implementation(sigma, d, "interpolated") is InterpolatedFeatures
            assert implementation(sigma, d, "interpolated:16", repeated=False).exact
    assert check("interpolated:64") == ("interpolated", 64) and check("relu_tree") == ("relu_tree", None)
    x, theta = RNG.uniform(-1, 1, (30, 2)), RNG.normal(size=(10, 3))
    S = make_features(relu, x, theta, "interpolated:5")
    assert isinstance(S, InterpolatedFeatures) and S.cells == 5 and isinstance(S.SX, ReluTreeFeatures)
    assert isinstance(make_features(tanh, x, theta, "interpolated").SX, DenseFeatures)
    assert InterpolatedFeatures(tanh, x, theta).cells == 128  # the 2-D default


@pytest.mark.parametrize("method, message", [
    ("interpolated:0", "at least 1 cell per side"),
    ("interpolated:-3", "at least 1 cell per side"),
    ("interpolated:1.5", "must be an integer"),
    ("interpolated:", "must be an integer"),
    ("relu_tree:8", "only interpolated takes an option"),
    ("interpolate", "did you mean 'interpolated'"),
])
def test_bad_methods_are_refused_in_one_line(method, message):
    from flowfem.problem import Problem
    from flowfem.space import Space
    with pytest.raises(ValueError, match=message) as e:
        check(method)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=message):
        Problem(Space.box(1, 4, 2.0), method=method)


def test_bad_grids_are_refused_in_one_line():
    for cells, d, message in [(1000, 3, "at most 160 cells per side"), (0, 2, "at least 1 cell"),
                              (2.0, 2, "must be an integer"), (None, 4, "no default grid for 4-D")]:
        with pytest.raises(ValueError, match=message) as e:
            grid_cells(cells, d)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="at most"):
        InterpolatedFeatures(activation("tanh"), RNG.uniform(size=(5, 2)), RNG.normal(size=(4, 3)), 5000)


SCRIPT = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import data
from flowfem.problem import Problem
from flowfem.space import Space

train, test = data.synthetic("two_moons", 400), data.synthetic("two_moons", 100, seed=1)
def fit(comm):
    r = Problem(Space.sphere(1, comm=comm), "relu", alpha=1e-4, method="interpolated:16").fit(train.x, train.y)
    return r.functional.Phi.apply(r.U), r.predict(test.x), r.energy
parallel = fit(MPI.COMM_WORLD)
assert MPI.COMM_WORLD.size == 2
serial = fit(MPI.COMM_SELF) if MPI.COMM_WORLD.rank == 0 else None
serial = MPI.COMM_WORLD.bcast(serial)
for a, b in zip(parallel[:2], serial[:2]):
    assert np.abs(a - b).max() <= 1e-8 * np.abs(b).max(), np.abs(a - b).max()
assert abs(parallel[2] - serial[2]) <= 1e-8 * abs(serial[2])
"""


@pytest.mark.mpi
def test_one_and_two_ranks_agree(tmp_path):
    run_mpi_script(tmp_path / "interpolated_ranks.py", SCRIPT)
