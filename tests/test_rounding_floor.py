"""The rounding floor of the Newton residual and the regularisation path's warm-started stop (flowfem.stationary.
RoundingFloor, flowfem.path), each test failing before the floor bounded the rounding:

* the floor lies above the level where Newton, continued past convergence, stagnates (the rounding of
  dE_alpha it cannot get below), and not absurdly far above it; the floor of ||alpha A U|| + ||Phi^T l'|| / n
  lay below it at small alpha (cancellation hid the size of the terms);
* the warm-started path's validation scores equal those of solves driven to that stagnation (the exact
  minimisers, to rounding) to 1e-6 relative; stopping the warm solves at rtol ||dE_alpha(0)|| left them
  1e-3 and more away;
* the path of the case whose Newton stagnated at ||F|| = 6e-18, above the old floor (DIVERGED_LOCAL_MIN),
  completes with few Newton steps per alpha.
"""

import numpy as np
import pytest

from flowfem import data
from flowfem.loss import loss
from flowfem.path import GRID, splits
from flowfem.problem import Problem
from flowfem.space import Space
from flowfem.stationary import NewtonSolver, newton


def _moons(n):
    train = data.synthetic("two_moons", n, seed=0)
    return train.x, train.y


def _stagnation(E, U):
    """Newton continued from U (in place) past any tolerance: the smallest ||dE_alpha|| it reaches (it then
    stagnates, the line search failing), i.e. the rounding level of dE_alpha near the minimiser."""
    ns = NewtonSolver(E, rtol=1e-30, max_it=12, linear_rtol=1e-13, allow_unconverged=True)
    try:
        info = ns.solve(U)
        return min(info.history), ns.rounding_floor(U)
    finally:
        ns.destroy()


@pytest.mark.parametrize("alpha", [1e-4, 1e-10])
def test_the_floor_bounds_the_rounding_newton_stagnates_at(alpha):
    """two_moons (n = 150) on [-4, 4]^3, 8 cells per side, logistic: at alpha 1e-10 Newton stagnated at
    6e-18 where the old floor (1e3 eps (||alpha A U|| + ||Phi^T l'|| / n)) read 4e-18: measured floor /
    stagnation now 2e2 (1e-10) and 6.5e4 (1e-4: the bound of |Phi| is loose where U is small)."""
    x, y = _moons(150)
    E = Problem(Space.box(2, 8, 4.0), alpha=alpha, loss="logistic").functional(x, y, alpha=alpha)
    U, _ = newton(E, rtol=1e-12, linear_rtol=1e-12)
    level, floor = _stagnation(E, U)
    assert level <= floor <= 1e5 * level, (level, floor)
    U.destroy()


def _exact_scores(x, y, train, held, alphas):
    """The validation mean logistic loss of the minimisers on the training rows, from 0 and continued to
    stagnation (the exact minimiser, to rounding)."""
    problem = Problem(Space.box(2, 8, 4.0), alpha=1e-2, loss="logistic")
    out = []
    for a in alphas:
        E = problem.functional(x[train], y[train], alpha=a)
        U, _ = newton(E, rtol=1e-12, linear_rtol=1e-12)
        _stagnation(E, U)
        f = E.Phi.predict(U, x[held])
        out.append(float(np.mean(loss("logistic").value(f, y[held]))))
        U.destroy()
    return np.array(out)


def test_warm_path_scores_equal_the_exact_minimisers():
    """Measured (n = 150, the grid's 1e-6, 1e-8, 1e-10): relative score errors of the warm solves 1e-3 to
    3e-2 with the stop rtol ||dE_alpha(0)||, below 1e-9 with the floor's stop. (Cold solves at rtol 1e-10,
    which also stop at rtol ||dE_alpha(0)||, are 2e-5 to 1e-2 away: they are not the reference.)"""
    x, y = _moons(150)
    alphas = [1e-6, 1e-8, 1e-10]
    r = Problem(Space.box(2, 8, 4.0), alpha="auto", loss="logistic").fit(x, y, alphas=alphas)
    (train, held), = splits(len(y), 0.2, None, 0)
    exact = _exact_scores(x, y, train, held, alphas)
    np.testing.assert_allclose(r.path.scores, exact, rtol=1e-6)
    assert r.info.converged and np.all(r.path.newton[1:] <= 12), r.path.newton  # the first: from 0, cold


def test_the_path_that_stagnated_above_the_old_floor_completes():
    """`flowfem solve --data two_moons --n 300 --loss logistic --alpha auto --mesh-size 8`: SNES stopped with
    DIVERGED_LOCAL_MIN at ||F|| = 6e-18 (warm solves to rtol ||dE(U_warm)|| with the old floor as atol)."""
    x, y = _moons(300)
    r = Problem(Space.box(2, 8, 4.0), alpha="auto", loss="logistic").fit(x, y, alphas=GRID)
    assert r.info.converged and r.residual <= 1e-10
    assert np.all(r.path.newton[1:] <= 12), r.path.newton  # the first: from 0, cold
