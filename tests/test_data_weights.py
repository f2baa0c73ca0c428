"""Data weights D of a LinearSolver (K = alpha A + Phi^T D Phi / n): a NaN, an infinity or a negative weight
is refused at once, in one line naming the row and the fix, on every rank, and the solver keeps its weights.

Before, a NaN in D reached the Nystrom preconditioner's Gram matrices and was reported as "inputs so large
that sigma(...)^2 overflows". Rank-agnostic (``parallel``): tests/test_mpi.py reruns the file under
mpirun -n 2, where only rank 1's rows of a sharded D are bad and every rank must raise (none may wait in a
collective); a serial run puts the fault on rank 0.
"""

import numpy as np
import pytest

from test_breaker_scale import P, RANK, mine, raises_everywhere, sine

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from flowfem import stationary
from flowfem.mpi import CollectiveError
from flowfem.problem import Problem
from flowfem.space import Space

pytestmark = pytest.mark.parallel

N = 30
BAD_RANK = min(1, P - 1)  # the rank whose rows hold the bad weight
ROW = N * BAD_RANK // P + 2  # the bad weight's data row: one of BAD_RANK's (mine() splits N rows evenly)


@pytest.fixture(params=[False, True], ids=["replicated", "sharded"])
def functional(request):
    x, y = sine(N)
    sharded = request.param
    problem = Problem(Space.box(1, 8, 3.0), "relu", alpha=1e-4)
    return problem.functional(mine(x), mine(y), sharded=True) if sharded else problem.functional(x, y)


def rows(E, D: np.ndarray) -> np.ndarray:
    """This rank's part of the weights D (N,) of every data row."""
    return mine(D) if E.Phi.sharded else D


@pytest.mark.parametrize("value, shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf"), (-0.5, "-0.5")])
def test_bad_weights_are_refused_on_every_rank(functional, value, shown):
    E = functional
    D = np.linspace(0.5, 2.0, N)
    D[ROW] = value
    match = rf"data weights D hold {shown} at data row {ROW}: give finite weights D >= 0"
    raises_everywhere(lambda: stationary.LinearSolver(E, rows(E, D)), match)
    rhs, before, after = E.vector(), E.vector(), E.vector()
    rhs.array[:] = np.random.default_rng(RANK).standard_normal(rhs.getLocalSize())
    solver = stationary.LinearSolver(E, rows(E, np.ones(N)), rtol=1e-8)
    try:  # destroyed: a solver's PETSc options would outlive the test in the global options database
        solver.solve(rhs, before)
        kept = solver.D
        with pytest.raises(ValueError, match=match) as info:
            solver.set_weights(rows(E, D))
        assert "overflows" not in str(info.value)  # not the Gram matrices' message it used to reach
        assert isinstance(info.value, CollectiveError) == E.Phi.sharded  # sharded: every rank, one message
        assert solver.D is kept and solver._ctx.D is kept  # nothing half-changed: the same solve as before
        solver.solve(rhs, after)
    finally:
        solver.destroy()
    after.axpy(-1.0, before)
    assert after.norm() <= 1e-12 * before.norm()


def test_zero_weights_are_accepted(functional):
    """D_j = 0 (and -0.0: l'' underflowing) drops a row from the data term: allowed."""
    E = functional
    D = np.linspace(0.5, 2.0, N)
    D[ROW], D[0] = 0.0, -0.0
    solver = stationary.LinearSolver(E, rows(E, D))
    try:
        solver.set_weights(rows(E, np.zeros(N)))
    finally:
        solver.destroy()
