"""Data sharded over the ranks (issue 16): the same operator, energies and solutions as replicated data.

Every test here builds, on the same mesh, the data operator twice: with every rank holding all n
points (replicated, the reference) and with rank p holding only its own rows (sharded), and
compares them. The file is rank-agnostic (``parallel``): tests/test_mpi.py reruns it under
mpirun -n 2, and :func:`test_three_ranks` under mpirun -n 3 (oversubscribed on 2 cores), where
the rows are split unevenly and one rank holds none.
"""

import os

import numpy as np
import pytest

from conftest import passes_on_ranks

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem import data, sharded_split, stationary
from flowfem.functional import Functional
from flowfem.mpi import CollectiveError
from flowfem.operator import DataOperator
from flowfem.space import Space

pytestmark = pytest.mark.parallel

COMM = MPI.COMM_WORLD
CASES = {  # (space, activation, data): relu1d, the relu tree and the dense evaluation
    "relu-1d": (lambda: Space.box(1, 12, 3.0), "relu", "sin"),
    "relu-2d": (lambda: Space.sphere(2), "relu", "two_moons"),
    "tanh-1d": (lambda: Space.box(1, 8, 2.0), "tanh", "sin"),
}


def rows_of(n: int, uneven: bool) -> slice:
    """This rank's rows: balanced, or (uneven) rank 0 twice the share of the others and the last rank none."""
    P, p = COMM.size, COMM.rank
    if not uneven or P == 1:
        bounds = [n * q // P for q in range(P + 1)]
    else:
        weights = np.array([2.0] + [1.0] * (P - 2) + [0.0])
        bounds = np.concatenate([[0], np.round(n * np.cumsum(weights) / weights.sum())]).astype(int)
    return slice(bounds[p], bounds[p + 1])


def both(case: str, n: int = 301, uneven: bool = False, loss: str = "squared"):
    """(replicated E, sharded E, this rank's rows) for the case, alpha 1e-5."""
    make_space, sigma, name = CASES[case]
    from flowfem.sobolev import WeightedH1
    H = WeightedH1(make_space(), "uniform", kappa=1.0)
    ds = data.synthetic(name, n, seed=7)
    rows = rows_of(n, uneven)
    y = ds.y if loss == "squared" else np.sign(ds.y)
    full = Functional(H, DataOperator(H, sigma, ds.x), y, 1e-5, loss)
    mine = Functional(H, DataOperator(H, sigma, ds.x[rows], sharded=True), y[rows], 1e-5, loss)
    return full, mine, rows


def gathered(f_local: np.ndarray) -> np.ndarray:
    """The ranks' row arrays concatenated in rank order, on every rank."""
    return np.concatenate(COMM.allgather(f_local))


def close(a, b, rtol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    assert np.linalg.norm(a - b) <= rtol * max(np.linalg.norm(b), 1e-300), (np.linalg.norm(a - b), np.linalg.norm(b))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("uneven", [False, True])
def test_products_equal_replicated(case, uneven, monkeypatch):
    monkeypatch.setattr(sharded_split, "CHUNK", 128)  # the Gaussian's chunks: several, met by several ranks
    full, mine, rows = both(case, uneven=uneven)
    Phi, Psh = full.Phi, mine.Phi
    assert (Psh.n, Psh.rows, Phi.rows) == (Phi.n, rows.stop - rows.start, Phi.n)
    rng = np.random.default_rng(1)
    U = full.vector()
    U.array[:] = rng.standard_normal(U.getLocalSize())
    f = Phi.apply(U)
    close(Psh.apply(U), f[rows])
    close(gathered(Psh.apply(U)), f)
    rng = np.random.default_rng(3)  # after draws of each rank's own size: the same on every rank again
    r = rng.standard_normal(Phi.n)
    a, b = full.vector(), full.vector()
    Phi.adjoint(r, a)
    Psh.adjoint(r[rows], b)
    close(b.array_r, a.array_r)
    D = rng.uniform(0.1, 2.0, Phi.n)
    Phi.normal(U, D, a)
    Psh.normal(U, D[rows], b)
    close(b.array_r, a.array_r)
    block = rng.standard_normal((3, U.getLocalSize()))  # the last draw: may differ between ranks
    close(Psh.normal_block(block, D[rows]), Phi.normal_block(block, D))
    # the random start of the Nystrom basis: sharded, each row's numbers do not depend on the split
    for j, column in enumerate(Psh.gaussian(5, 2)):
        reference = np.concatenate([np.random.default_rng([5, j, c]).standard_normal(128) for c in range(3)])
        assert np.array_equal(column, reference[rows])
    # replicated: one stream, column after column (the (b, n) draw the basis started from before sharding)
    assert np.array_equal(np.array(list(Phi.gaussian(5, 2))), np.random.default_rng(5).standard_normal((2, Phi.n)))


def test_energy_gradient_and_rhs_equal_replicated():
    full, mine, _ = both("relu-1d", uneven=True)
    U = full.vector()
    U.array[:] = np.random.default_rng(2).standard_normal(U.getLocalSize())
    assert mine.n == full.n
    close(mine.parts(U), full.parts(U))
    close(mine.gradient(U).array_r, full.gradient(U).array_r)
    close(mine.rhs().array_r, full.rhs().array_r)


@pytest.mark.parametrize("case", ["relu-1d", "relu-2d"])
@pytest.mark.parametrize("preconditioner", ["nystrom", "gamg"])
def test_solve_equals_replicated(case, preconditioner):
    """The minimiser: the same to the solver's tolerance, in about as many CG iterations (the Nystrom
    basis starts from the same Gaussian rows; sums in another order change the last bits, which CG
    at rtol 1e-11 turns into an iteration or two)."""
    full, mine, _ = both(case, uneven=True)
    U1, info1 = stationary.solve(full, rtol=1e-11, preconditioner=preconditioner)
    U2, info2 = stationary.solve(mine, rtol=1e-11, preconditioner=preconditioner)
    close(U2.array_r, U1.array_r, 1e-7)
    assert abs(info1.iterations - info2.iterations) <= 2 + info1.iterations // 10
    close(mine(U2), full(U1), 1e-9)


def test_logistic_newton_equals_replicated():
    """Newton steps change the data weights D: each rank's rows carry their own."""
    full, mine, _ = both("relu-1d", n=200, uneven=True, loss="logistic")
    U1, _ = stationary.newton(full, rtol=1e-10)
    U2, _ = stationary.newton(mine, rtol=1e-10)
    close(U2.array_r, U1.array_r, 1e-7)


def test_bad_rows_fail_on_every_rank():
    """Labels a loss refuses on one rank only: every rank raises (none waits in a collective)."""
    make_space, sigma, name = CASES["relu-1d"]
    from flowfem.sobolev import WeightedH1
    H = WeightedH1(make_space(), "uniform")
    ds = data.synthetic(name, 40, seed=7)
    rows = rows_of(40, False)
    y = np.sign(ds.y[rows])
    if COMM.rank == COMM.size - 1:
        y[0] = 0.5  # not a +-1 label
    with pytest.raises(CollectiveError, match="label"):
        Functional(H, DataOperator(H, sigma, ds.x[rows], sharded=True), y, 1e-3, "logistic")
    with pytest.raises(ValueError, match="sharded"):
        stationary.LinearSolver(Functional(H, DataOperator(H, sigma, ds.x[rows], sharded=True),
                                           ds.y[rows], 1e-3), solver="direct")


@pytest.mark.mpi
def test_three_ranks():
    """This file under mpirun -n 3 (2 cores: oversubscribed): uneven rows, one rank without any."""
    passes_on_ranks(os.path.abspath(__file__), 3, timeout=900)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_problem_fit_equals_replicated(loss):
    """Problem.fit(sharded=True): the same density, E_alpha and training RMSE as the whole data."""
    from flowfem.problem import Problem

    ds = data.synthetic("sin" if loss == "squared" else "step", 240, seed=9)
    rows = rows_of(240, True)
    problem = Problem(Space.box(1, 16, 3.0), "relu", "uniform", alpha=1e-4, loss=loss)
    whole = problem.fit(ds.x, ds.y, rtol=1e-11)
    mine = problem.fit(ds.x[rows], ds.y[rows], rtol=1e-11, sharded=True)
    close(mine.U.array_r, whole.U.array_r, 1e-7)
    close(mine.energy, whole.energy, 1e-9)
    close(mine.predict(ds.x[rows], sharded=True), whole.predict(ds.x)[rows], 1e-7)
    if loss == "squared":
        close(mine.rmse(ds.x[rows], ds.y[rows], sharded=True), whole.rmse(ds.x, ds.y), 1e-7)


def test_problem_fit_refusals():
    from flowfem.problem import Problem

    ds = data.synthetic("sin", 40, seed=9)
    rows = rows_of(40, False)
    with pytest.raises(ValueError, match="numeric alpha"):
        Problem(Space.box(1, 8, 3.0), "relu", alpha="auto").fit(ds.x[rows], ds.y[rows], sharded=True)
    with pytest.raises(ValueError, match="sharded"):
        Problem(Space.box(1, 8, 3.0), "relu", alpha=1e-3).fit(ds.x[rows], ds.y[rows], solver="direct", sharded=True)
    bad = ds.y[rows].copy()
    if COMM.rank == COMM.size - 1:
        bad[0] = np.nan  # one rank's rows only: every rank must raise
    with pytest.raises(CollectiveError, match="NaN"):
        Problem(Space.box(1, 8, 3.0), "relu", alpha=1e-3).fit(ds.x[rows], bad, sharded=True)
    empty = slice(0, 0)
    with pytest.raises(ValueError, match="no rank holds"):
        Problem(Space.box(1, 8, 3.0), "relu", alpha=1e-3).fit(ds.x[empty], ds.y[empty], sharded=True)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5"])
def test_fit_from_each_ranks_rows_of_a_file(shared_tmp, suffix):
    """The whole path of issue 16: each rank reads only its rows of a file (flowfem.shards) and fits on
    them; the same density as the whole file's rows on every rank."""
    from flowfem import convert, shards
    from flowfem.problem import Problem

    ds = data.synthetic("sin", 250, seed=11)
    path = os.path.join(shared_tmp, "train" + suffix)
    if COMM.rank == 0:
        convert.write(path, ds.x, ds.y)
    COMM.Barrier()
    shard = shards.read(path)
    assert shard.n == 250 and len(shard.x) == len(shards.rows(250, COMM.size, COMM.rank))
    problem = Problem(Space.box(1, 16, 3.0), "relu", "uniform", alpha=1e-5)
    mine = problem.fit(shard.x, shard.y, rtol=1e-11, sharded=True)
    whole = problem.fit(ds.x, ds.y, rtol=1e-11)
    close(mine.U.array_r, whole.U.array_r, 1e-7)
    close(mine.rmse(shard.x, shard.y, sharded=True), whole.rmse(ds.x, ds.y), 1e-7)
