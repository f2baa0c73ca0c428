"""The input-grid approximation (method interpolated) with data sharded over the ranks: one grid over the
bounding box of every rank's rows, so the products and the fit equal those of the replicated data on any
number of ranks (to rounding), not only to the approximation's O(h^2).

The data are sorted along their first input before they are split, so that each rank's own rows span a
different part of the box (a grid over a rank's own rows would differ from the global one by far more
than rounding). Rank-agnostic (``parallel``): tests/test_mpi.py reruns the file under mpirun -n 2, and
:func:`test_three_ranks` under mpirun -n 3, where the rows are split unevenly and one rank holds none.
"""

import os

import numpy as np
import pytest

from conftest import passes_on_ranks
from test_sharded import gathered, rows_of

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem import data
from flowfem.functional import Functional
from flowfem.operator import DataOperator, InterpolatedFeatures
from flowfem.operator.features.interpolated import bounding_box
from flowfem.problem import Problem
from flowfem.sobolev import WeightedH1
from flowfem.space import Space

pytestmark = pytest.mark.parallel

COMM = MPI.COMM_WORLD
CASES = {  # (space, data, cells per side)
    "relu-1d": (lambda: Space.box(1, 12, 3.0), "sin", 64),
    "relu-2d": (lambda: Space.sphere(2), "two_moons", 16),
}


def close(a, b, rtol=1e-12):
    """||a - b|| <= rtol ||b|| for the ranks' parts of a and b taken together: the same verdict on every
    rank (a test failing on some ranks only would leave the others waiting in its next collective)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    error, size = np.sqrt(COMM.allreduce(np.array([np.sum((a - b) ** 2), np.sum(b**2)]), op=MPI.SUM))
    assert error <= rtol * size, (error, size)


def sorted_data(name: str, n: int):
    """The synthetic set with its rows sorted by the first input: each rank's rows a slab of the box."""
    ds = data.synthetic(name, n, seed=7)
    order = np.argsort(ds.x[:, 0], kind="stable")
    return ds.x[order], ds.y[order]


def test_the_bounding_box_spans_every_ranks_rows():
    x = np.random.default_rng(4).uniform(-2, 3, (50, 2))
    rows = rows_of(50, uneven=True)  # the last rank holds none (on more than one rank)
    lower, upper = bounding_box(x[rows], COMM)
    assert np.array_equal(lower, x.min(axis=0)) and np.array_equal(upper, x.max(axis=0))
    lower, upper = bounding_box(x[:0], COMM)  # no rank holds a row: the unit box
    assert np.array_equal(lower, np.zeros(2)) and np.array_equal(upper, np.ones(2))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("uneven", [False, True])
def test_products_equal_replicated(case, uneven):
    """Phi U, Phi^T r, Phi^T D Phi U / n and its block form: sharded equal to replicated to 1e-12."""
    make_space, name, cells = CASES[case]
    H = WeightedH1(make_space(), "uniform", kappa=1.0)
    x, _ = sorted_data(name, 301)
    rows = rows_of(301, uneven)
    method = f"interpolated:{cells}"
    Phi = DataOperator(H, "relu", x, method=method)
    Psh = DataOperator(H, "relu", x[rows], method=method, sharded=True)
    # the same grid as the whole data's on every rank with rows (checked together: no rank left waiting)
    same = rows.stop == rows.start or (isinstance(Psh.S, InterpolatedFeatures)
                                       and np.array_equal(Psh.S.nodes, Phi.S.nodes))
    assert all(COMM.allgather(same))
    rng = np.random.default_rng(1)
    U = H.A.createVecRight()
    U.array[:] = rng.standard_normal(U.getLocalSize())
    close(gathered(Psh.apply(U)), Phi.apply(U))
    rng = np.random.default_rng(3)  # after draws of each rank's own size: the same on every rank again
    r, D = rng.standard_normal(Phi.n), rng.uniform(0.1, 2.0, Phi.n)
    a, b = U.duplicate(), U.duplicate()
    Phi.adjoint(r, a)
    Psh.adjoint(r[rows], b)
    close(b.array_r, a.array_r)
    Phi.normal(U, D, a)
    Psh.normal(U, D[rows], b)
    close(b.array_r, a.array_r)
    block = rng.standard_normal((3, U.getLocalSize()))  # the last draw: may differ between ranks
    close(Psh.normal_block(block, D[rows]), Phi.normal_block(block, D))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("uneven", [False, True])
def test_fit_equals_replicated(case, uneven):
    """Problem.fit(sharded=True) with the grid: the density, E_alpha and predictions of the whole data's
    fit to the solver's tolerance (the approximation itself differs by 1e-6 to 1e-3 between grids)."""
    make_space, name, cells = CASES[case]
    x, y = sorted_data(name, 240)
    rows = rows_of(240, uneven)
    problem = Problem(make_space(), "relu", "uniform", alpha=1e-4, method=f"interpolated:{cells}")
    whole = problem.fit(x, y, rtol=1e-11)
    mine = problem.fit(x[rows], y[rows], rtol=1e-11, sharded=True)
    close(mine.U.array_r, whole.U.array_r, 1e-7)
    close(mine.energy, whole.energy, 1e-9)
    close(gathered(mine.functional.Phi.apply(mine.U)), whole.functional.Phi.apply(whole.U), 1e-8)


@pytest.mark.mpi
def test_three_ranks():
    """This file under mpirun -n 3 (2 cores: oversubscribed): uneven rows, one rank without any."""
    passes_on_ranks(os.path.abspath(__file__), 3, timeout=900)
