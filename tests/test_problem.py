"""Problem.fit builds the data operator once and keeps what it derives; data reach it only through
flowfem.data (columns by name, y (n,) or (n, 1)); dof vectors become Functions only through io.function.

Runs serially and under mpirun -n 2 (tests/test_mpi.py)."""

import os

import numpy as np
import pytest
from mpi4py import MPI

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from flowfem import data, io
from flowfem.problem import Problem
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD


def sin_problem(cells=16, **kwargs):
    return Problem(Space.box(1, cells, 4.0), "relu", alpha=1e-4, **kwargs)


def test_fit_builds_the_operator_once(operator_count):
    train = data.synthetic("sin", 200, seed=0)
    result = sin_problem().fit(train.x, train.y)
    assert len(operator_count) == 1
    result.rmse(train.x, train.y)
    result.predict(train.x)
    assert len(operator_count) == 1  # predictions reuse the solve's operator
    assert result.setup_seconds > 0 and result.solve_seconds > 0


@pytest.mark.parametrize("loss,solver", [("squared", "cg"), ("squared", "direct"), ("logistic", "cg")])
def test_result_holds_plain_values_of_the_solution(loss, solver):
    train = data.synthetic("step" if loss == "logistic" else "sin", 150, seed=2)
    result = sin_problem(loss=loss).fit(train.x, train.y, solver=solver)
    E, U = result.functional, result.U
    for value in (result.energy, *result.parts, result.residual, result.setup_seconds, result.solve_seconds):
        assert type(value) is float
    assert type(result.iterations) is int
    assert result.parts == E.parts(U)
    assert result.energy == sum(E.parts(U))
    n = result.density.function_space.dofmap.index_map.size_local
    np.testing.assert_array_equal(result.density.x.array[:n], U.array_r)
    ghosts = io.function(result.problem.H, U)  # ghost values updated like the stored density's
    np.testing.assert_array_equal(result.density.x.array, ghosts.x.array)


def test_function_takes_a_vector_or_owned_values_only():
    H = sin_problem(cells=4).H
    U = H.A.createVecRight()
    U.array[:] = np.arange(U.getLocalSize()) + 100.0 * comm.rank
    u = io.function(H, U, "u")
    v = io.function(H, U.array_r.copy(), "v")
    np.testing.assert_array_equal(u.x.array, v.x.array)
    assert u.name == "u"
    with pytest.raises(ValueError, match="this rank owns"):
        io.function(H, np.zeros(U.getLocalSize() + 1))


def test_a_target_column_is_the_same_target():
    """y (n, 1) is accepted everywhere and means y (n,): fit, rmse and the functional."""
    train = data.synthetic("sin", 200, seed=0)
    test = data.synthetic("sin", 300, seed=1)
    problem = sin_problem()
    result = problem.fit(train.x, train.y)
    col = problem.fit(train.x, train.y[:, None])
    assert result.energy == col.energy
    assert result.rmse(test.x, test.y[:, None]) == result.rmse(test.x, test.y) < 5e-2
    assert result.rmse(test.x[:, 0], test.y) == result.rmse(test.x, test.y)
    with pytest.raises(ValueError, match="targets y have shape"):
        result.rmse(test.x, test.y[None, :])
    with pytest.raises(ValueError, match="the data has d = 2 inputs"):
        result.rmse(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="prediction inputs has d = 2 inputs"):
        result.predict(np.zeros((5, 2)))


def test_a_swapped_header_gives_the_same_fit(shared_tmp):
    """x2,x1,y is read by name: the same fit as x1,x2,y (read by position it would swap the inputs)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (300, 2))
    y = np.maximum(x[:, 0] - 0.3, 0.0) + 0.2 * x[:, 1]  # not symmetric in x1 and x2
    ordered, swapped = os.path.join(shared_tmp, "ordered.csv"), os.path.join(shared_tmp, "swapped.csv")
    if comm.rank == 0:
        np.savetxt(ordered, np.column_stack([x, y]), delimiter=",", header="x1,x2,y", comments="")
        np.savetxt(swapped, np.column_stack([y, x[:, 1], x[:, 0]]), delimiter=",", header="y,x2,x1", comments="")
    comm.Barrier()
    problem = Problem(Space.box(2, 4, 2.0), "relu", alpha=1e-3)
    fits = [problem.fit(ds.x, ds.y) for ds in (data.load(ordered), data.load(swapped))]
    np.testing.assert_array_equal(fits[0].U.array_r, fits[1].U.array_r)
    assert fits[0].rmse(x, y) == fits[1].rmse(x, y) < 0.1


def test_a_non_finite_result_is_an_error_never_a_number():
    """Inputs of size 1e200 overflow sigma(theta . x~)^2: the solve must fail, not report E_alpha = nan."""
    from flowfem.stationary import NotConverged

    x = np.linspace(-1.0, 1.0, 50) * 1e200
    problem = Problem(Space.box(1, 8, 4.0), "relu", alpha=1e-4)
    with pytest.raises((ValueError, NotConverged), match="non-finite|relative residual of nan"):
        problem.fit(x, np.sin(x / 1e200))


def test_json_results_refuse_nan(tmp_path):
    from flowfem import io

    path = tmp_path / "metrics.json"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            io.write_json(str(path), {"energy": 1.0, "nested": {"loss": [0.5, bad]}}, MPI.COMM_SELF)
        assert not path.exists()


@pytest.mark.parametrize("scale", [1e-9, 1.0, 4e3, 1e7])
def test_density_values_are_matched_to_dofs_at_any_scale(scale):
    """Saved dof coordinates differ from this partition's by rounding: match relative to the spacing.

    Rounding coordinates to 10 decimals merged every dof of a 1e-9 mesh and missed dofs of a large one.
    """
    space = Space.box(2, 6, radius=scale)
    H = Problem(space, "relu", degree=2).H
    u = H.function("u")
    theta, _ = io.gather_dofs(u)
    theta = comm.bcast(theta, root=0)
    rng = np.random.default_rng(0)
    values = rng.standard_normal(len(theta))
    noisy = theta * (1 + 1e-13 * rng.standard_normal(theta.shape))  # another partition's rounding
    io.fill_by_coordinates(u, noisy, values, "test density", "")
    X = H.V.tabulate_dof_coordinates()[:, :3]
    expected = values[np.argmin(np.linalg.norm(X[:, None, :] - theta[None, :, :], axis=2), axis=1)]
    assert np.array_equal(u.x.array, expected)
    with pytest.raises(Exception, match="does not match"):  # a different mesh is refused, not mis-filled
        io.fill_by_coordinates(u, theta * 1.01, values, "test density", "")
