"""Faults of the Nystrom preconditioner (flowfem/nystrom.py) found by trying to break it: problems that
GAMG, the previous default, solves and the Nystrom preconditioner does not, or solves worse.

* A data term whose top generalised eigenvalue exceeds alpha by 1e20 and more (measured: 5e22 for
  monomial:8 at alpha = 1e-10 on the sin data and the default box of radius 4; relu on inputs of size
  1e10 at alpha = 1): GAMG's CG takes 2-18 iterations, Nystrom's CG stops short of rtol (its true
  residual drifts from the recursive one, restarts do not help) or reports an indefinite preconditioner.
  LinearSolver then solves with the multigrid alone (the gamg preconditioner), from zero.
* A spectrum spanning more than 1e10 between the top eigenvalues and the next ones above alpha: the
  basis stopped early, declared invariant (its new directions cancelled in Y = M W and fell below the
  rounding floor), and CG took more iterations than with GAMG alone.

Serial."""

import numpy as np
import pytest
import scipy.linalg

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from flowfem import data
from flowfem.problem import Problem
from flowfem.space import Space
from flowfem.stationary import LinearSolver

from conftest import dense


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
    # and says so: the multigrid alone solved it, not the basis (it said "basis of 24")
    assert (nystrom.info.rank, nystrom.info.method) == (0, "cg (nystrom preconditioner, multigrid alone)")


def test_the_basis_holds_the_eigenvalues_above_alpha_of_a_data_term_with_a_wide_spectrum():
    """relu on inputs of size 1e5: N v = lambda A v has the eigenvalues 3e11, 2e11, 18, 13, then 3e-5 and
    below. The basis must hold the four above alpha = 1e-4 (it stopped at 2, declared invariant, and CG
    took 15 iterations against GAMG's 10)."""
    ds = data.synthetic("sin", 200, seed=0)
    alpha = 1e-4
    E = Problem(Space.box(1, 8, 4.0), "relu", "uniform", alpha=alpha).functional(1e5 * ds.x, ds.y)
    C = E.Phi.columns()  # serial: every dof is owned
    lam = scipy.linalg.eigh(C @ C.T / E.n, dense(E.H.A), eigvals_only=True)
    above = int(np.sum(lam > alpha))
    assert above == 4 and lam[-1] / lam[-3] > 1e10
    lin = LinearSolver(E, rtol=1e-10)
    info = lin.solve(E.rhs(), E.vector())
    assert lin.nystrom.rank >= above and info.rank == lin.nystrom.rank  # the basis solved it
    gamg = LinearSolver(E, rtol=1e-10, preconditioner="gamg")
    assert info.iterations < gamg.solve(E.rhs(), E.vector()).iterations  # 5 against 10
    lin.destroy()
    gamg.destroy()
