"""Faults of the Nystrom preconditioner (flowfem/nystrom.py) found by trying to break it: problems that
GAMG, the previous default, solves and the Nystrom preconditioner does not, or solves worse.

* A data term whose top generalised eigenvalue exceeds alpha by 1e20 and more (measured: 5e22 for
  monomial:8 at alpha = 1e-10 on the sin data and the default box of radius 4; relu on inputs of size
  1e10 at alpha = 1): GAMG's CG takes 2-18 iterations, Nystrom's CG stops short of rtol (its true
  residual drifts from the recursive one, restarts do not help) or reports an indefinite preconditioner.
  LinearSolver then solves with the multigrid alone (the gamg preconditioner), from zero.

Serial."""

import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from flowfem import data
from flowfem.problem import Problem
from flowfem.space import Space


def fit(pc: str, activation: str, alpha: float, x, y, cells: int):
    return Problem(Space.box(1, cells, 4.0), activation, "uniform", alpha=alpha).fit(x, y, rtol=1e-10,
                                                                                      preconditioner=pc)


@pytest.mark.parametrize("activation, alpha, scale, cells", [
    ("monomial:8", 1e-10, 1.0, 32),  # `flowfem solve --data sin --n 200 --activation monomial:8 --alpha 1e-10`
    ("relu", 1.0, 1e10, 8),          # inputs of size 1e10 (GAMG: 2 iterations)
    ("relu", 1e-4, 1e12, 8),
])
def test_a_data_term_far_above_alpha_is_solved_as_gamg_solves_it(activation, alpha, scale, cells):
    ds = data.synthetic("sin", 200, seed=0)
    gamg = fit("gamg", activation, alpha, scale * ds.x, ds.y, cells)
    assert gamg.info.converged and gamg.info.residual <= 1e-10
    nystrom = fit("nystrom", activation, alpha, scale * ds.x, ds.y, cells)  # NotConverged now
    assert nystrom.info.converged and nystrom.info.residual <= 1e-10
    # the same minimiser; the iterations include the Nystrom attempt before the multigrid-alone fallback
    # (measured 32 and 178 against GAMG's 2 for the relu cases): correct, not yet as fast
    assert nystrom.info.iterations <= 2000
    assert abs(nystrom.energy - gamg.energy) <= 1e-6 * abs(gamg.energy)
