"""Bad inputs and MPI faults against issue 16's sharded data (found by breaking it): every case either gives
the replicated path's numbers or the same one-line ValueError on every rank, never a hang.

Rank-agnostic (``parallel``): tests/test_mpi.py reruns the file under mpirun -n 2, and
:func:`test_three_ranks` under mpirun -n 3, where n = 2 rows leave a rank without any. The faults
put on "the last rank" are on the only rank in a serial run.
"""

import os

import numpy as np
import pytest

from conftest import passes_on_ranks

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem import shards, stationary
from flowfem.data import synthetic
from flowfem.problem import Problem
from flowfem.space import Space

pytestmark = pytest.mark.parallel

COMM = MPI.COMM_WORLD
P, RANK = COMM.size, COMM.rank
LAST = RANK == P - 1


def mine(a, sizes=None):
    """This rank's rows of a: balanced, or ``sizes`` rows per rank (rank order)."""
    n = len(a)
    bounds = [n * q // P for q in range(P + 1)] if sizes is None else np.concatenate([[0], np.cumsum(sizes)])
    return a[int(bounds[RANK]):int(bounds[RANK + 1])]


def sine(n=30):
    x = np.random.default_rng(1).uniform(-1, 1, (n, 1))
    return x, np.sin(3 * x[:, 0])


def raises_everywhere(fn, match):
    """fn raises a ValueError matching ``match`` on this rank, and so does every other rank."""
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert all(COMM.allgather(str(info.value).count("\n") == 0))  # one line, on every rank


@pytest.mark.parametrize("fault", ["one output here, two elsewhere", "two outputs here, four elsewhere",
                                   "no targets on the last rank"])
def test_targets_with_other_outputs_on_one_rank_fail_on_every_rank(fault):
    """The ranks' y disagreeing in m used to hang fit (the ranks ran different solvers' collectives) and a
    y None on one rank raised there alone: now one ValueError on every rank, before any collective."""
    x, y = sine()
    xs, ys = mine(x), mine(np.column_stack([y, 2 * y]))
    if fault.startswith("one") and LAST:
        ys = ys[:, 0]
    if fault.startswith("two") and LAST:
        ys = np.column_stack([ys, ys])
    if fault.startswith("no") and LAST:
        ys = None
    if P == 1 and not fault.startswith("no"):
        pytest.skip("needs ranks that disagree")  # the serial run covers y None only
    problem = Problem(Space.box(1, 8, 3.0), "relu", alpha=1e-4)
    match = "the ranks' targets y have" if P > 1 else "fit needs targets y"
    raises_everywhere(lambda: problem.fit(xs, ys, sharded=True), match)


def test_rmse_with_other_outputs_on_one_rank_fails_on_every_rank():
    """rmse(sharded=True) with y None on one rank raised there alone (the others hung in predict)."""
    if P == 1:
        pytest.skip("needs ranks that disagree")
    x, y = sine()
    result = Problem(Space.box(1, 8, 3.0), "relu", alpha=1e-4).fit(mine(x), mine(y), sharded=True)
    raises_everywhere(lambda: result.rmse(mine(x), None if LAST else mine(y), sharded=True),
                      "the ranks' targets y have 0, 1 outputs")


def test_set_weights_of_the_wrong_length_on_one_rank_fails_on_every_rank():
    """A D of the wrong length on one rank used to raise NumPy's broadcast error there alone, in the middle
    of a product, and hang the others; now every rank raises at set_weights (and at the solver's D)."""
    x, y = sine()
    E = Problem(Space.box(1, 8, 3.0), "relu", alpha=1e-4).functional(mine(x), mine(y), sharded=True)
    k = E.Phi.rows
    solver = stationary.LinearSolver(E, np.ones(k))
    try:
        raises_everywhere(lambda: solver.set_weights(np.ones(k + 1 if LAST else k)), "data weights D have shape")
    finally:
        solver.destroy()
    raises_everywhere(lambda: stationary.LinearSolver(E, np.ones((k, 1) if LAST else k)),
                      "data weights D have shape")


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
def test_set_weights_then_solve_equals_a_fresh_solver(activation):
    """set_weights(D2) after a solve with D = 1: the same solution as a solver built with D2 (to the
    solver's tolerance), and not the D = 1 solution (the new weights are used, no stale moments)."""
    x, y = sine()
    E = Problem(Space.box(1, 12, 3.0), activation, alpha=1e-4).functional(mine(x), mine(y), sharded=True)
    D2 = mine(np.linspace(0.2, 3.0, len(x)))
    rng = np.random.default_rng(2 + RANK)
    rhs = E.vector()
    rhs.array[:] = rng.standard_normal(rhs.getLocalSize())
    reused, fresh, ones = E.vector(), E.vector(), E.vector()
    solver, other = stationary.LinearSolver(E, None, rtol=1e-11), stationary.LinearSolver(E, D2, rtol=1e-11)
    try:  # destroyed: a solver's PETSc options would outlive the test in the global options database
        solver.solve(rhs, ones)
        solver.set_weights(D2)
        solver.solve(rhs, reused)
        other.solve(rhs, fresh)
    finally:
        solver.destroy()
        other.destroy()
    scale = fresh.norm()
    reused.axpy(-1.0, fresh)
    ones.axpy(-1.0, fresh)
    assert reused.norm() <= 1e-8 * scale
    assert ones.norm() > 1e-3 * scale


CASES = {  # name: (space, activation, x, y, rows per rank or None for balanced)
    "one row (P > n)": (lambda: Space.box(1, 12, 3.0), "relu", *map(lambda a: a[:1], sine()), None),
    "all rows on the last rank": (lambda: Space.box(1, 12, 3.0), "leaky_relu", *sine(), "last"),
    "constant x (zero-width bins)": (lambda: Space.box(1, 12, 3.0), "relu", np.full((30, 1), 0.3), sine()[1], None),
    "duplicate x on kinks": (lambda: Space.box(1, 12, 3.0), "relu", np.repeat(np.round(sine()[0][:6] * 4) / 4, 5, 0),
                             sine()[1], None),
    "tiny x": (lambda: Space.box(1, 12, 3.0), "relu", sine()[0] * 1e-300, sine()[1], None),
    "tanh": (lambda: Space.box(1, 8, 2.0), "tanh", *sine(), None),
    "2-D relu, one row on rank 0": (lambda: Space.sphere(2), "relu", synthetic("two_moons", 25, seed=3).x,
                                    synthetic("two_moons", 25, seed=3).y, "one"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_fit_equals_replicated_on_edge_cases(case):
    """Problem.fit(sharded=True) against the whole data on every rank: the same E_alpha, predictions and
    RMSE, for degenerate data and layouts (a rank with no rows, or one)."""
    make_space, activation, x, y, layout = CASES[case]
    n = len(x)
    sizes = None
    if layout == "last":
        sizes = [0] * (P - 1) + [n]
    elif layout == "one" and P > 1:
        sizes = [1] + [(n - 1) * (q + 1) // (P - 1) - (n - 1) * q // (P - 1) for q in range(P - 1)]
    whole = Problem(make_space(), activation, alpha=1e-4).fit(x, y, rtol=1e-11)
    split = Problem(make_space(), activation, alpha=1e-4).fit(mine(x, sizes), mine(y, sizes), rtol=1e-11,
                                                              sharded=True)
    f = whole.predict(x)
    f_split = np.concatenate(COMM.allgather(split.predict(mine(x, sizes), sharded=True)))
    assert np.max(np.abs(f_split - f)) <= 1e-8 * np.max(np.abs(f))
    assert np.max(np.abs(split.predict(x) - f)) <= 1e-8 * np.max(np.abs(f))
    assert abs(split.energy - whole.energy) <= 1e-9 * whole.energy
    assert abs(split.rmse(mine(x, sizes), mine(y, sizes), sharded=True) - whole.rmse(x, y)) <= 1e-8


def structured(tmp, name, rows, dtype):
    path = os.path.join(tmp, name)
    if RANK == 0:
        np.save(path, np.array(rows, dtype=dtype))
    COMM.barrier()
    return path


@pytest.mark.parametrize("dtype", [[("y", ">f8"), ("x1", ">f8")], [("x1", "<i4"), ("y", "<u8")],
                                   [("x1", "<f2"), ("y", "?")], [("x1", "<f4"), ("f", "<f8"), ("y", "<f4")],
                                   {"names": ["x1", "y"], "formats": ["<f8", "<f8"], "offsets": [0, 16],
                                    "itemsize": 40}])
def test_structured_npy_of_any_real_dtype_reads_as_its_values(shared_tmp, dtype):
    """Fields of any real dtype, byte order, order and padding are read by name as float64; 2 rows over
    up to 3 ranks leave a rank without rows."""
    rows = [(1, 0, 1) if len(np.dtype(dtype).names) == 3 else (1, 0), (0, 1, 0) if len(np.dtype(dtype).names) == 3
            else (0, 1)]
    path = structured(shared_tmp, "odd.npy", rows, dtype)
    expected = np.array(rows, dtype=dtype)
    shard = shards.read(path, COMM)
    x = np.concatenate(COMM.allgather(shard.x))
    y = np.concatenate(COMM.allgather(shard.y))
    assert x.dtype == y.dtype == np.float64
    assert np.array_equal(x[:, 0], expected["x1"].astype(float)) and np.array_equal(y, expected["y"].astype(float))


@pytest.mark.parametrize("dtype, match", [([("x1", "<c16"), ("y", "<f8")], "complex128, not real numbers"),
                                          ([("x1", "<f8", (2,)), ("y", "<f8")], "not real numbers"),
                                          ([("x1", "M8[s]"), ("y", "<f8")], "datetime64"),
                                          ([("x 1", "<f8"), ("Y", "<f8")], "unknown column")])
def test_structured_npy_of_other_fields_is_refused_on_every_rank(shared_tmp, dtype, match):
    path = structured(shared_tmp, "bad.npy", [(1, 2), (3, 4)] if "(2,)" not in str(dtype) else
                      [((1, 1), 2), ((3, 3), 4)], dtype)
    raises_everywhere(lambda: shards.read(path, COMM), match)


@pytest.mark.mpi
def test_three_ranks():
    """This file under mpirun -n 3 (oversubscribed on 2 cores), with a timeout: a hang fails the test."""
    passes_on_ranks(os.path.abspath(__file__), 3, timeout=300)
