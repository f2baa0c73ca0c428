"""Newton's method for a nonlinear loss (logistic): quadratic convergence, optimality, agreement with an
independent dense NumPy Newton; the shifted, reweighted linear solver it uses; `flowfem solve --loss logistic`.

Runs serially and under mpirun -n 2 (tests/test_mpi.py); the CLI test starts processes itself.
"""

import json
import os

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI

from conftest import BIN, dense_logistic_newton, dense_system, gather, perturbations, run
from flowfem import data
from flowfem.loss import LOGISTIC
from flowfem.problem import Problem
from flowfem.space import Space
from flowfem.stationary import LinearSolver, NotConverged, newton, solve

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD


def logistic_problem(domain="sphere", n=80, alpha=1e-3, activation="relu", weight="uniform"):
    ds = data.synthetic("two_moons", n, seed=7)
    space = Space.sphere(1) if domain == "sphere" else Space.box(2, 3, 2.0)
    problem = Problem(space, activation, weight, alpha=alpha, kappa=0.5, loss="logistic")
    return problem, ds


def say(*a):
    if comm.rank == 0:
        print(*a)


@pytest.mark.parametrize("solver", ["cg", "direct"])
def test_newton_converges_quadratically(solver):
    problem, ds = logistic_problem()
    E = problem.functional(ds.x, ds.y)
    U, info = newton(E, solver=solver, rtol=1e-13, linear_rtol=1e-13)
    e = np.array(info.history)
    say(f"\nNewton ({solver}): ||dE(U_k)|| = " + "  ".join(f"{r:.3e}" for r in e))
    say("  e_{k+1} / e_k^2 = " + "  ".join(f"{b / a**2:.3g}" for a, b in zip(e[:-1], e[1:])))
    assert info.reason > 0 and e[-1] <= 1e-13 * e[0]
    assert info.iterations == len(e) - 1 and len(info.linear_iterations) == info.iterations
    # the quadratic phase: once e_k <= 1e-2 e_0, e_{k+1} <= C e_k^2 with a moderate C (scaled by e_0),
    # as long as e_{k+1} is above the rounding floor
    tail = [(a, b) for a, b in zip(e[:-1], e[1:]) if a <= 1e-2 * e[0] and b >= 1e-15 * e[0]]
    assert len(tail) >= 2, e
    ratios = [b * e[0] / a**2 for a, b in tail]
    assert max(ratios) <= 100.0, ratios
    # superlinear: each contraction factor in the tail smaller than the one before
    factors = [b / a for a, b in tail]
    assert all(f2 < f1 for f1, f2 in zip(factors[:-1], factors[1:])) and factors[-1] < 1e-3, factors


def test_optimality_and_minimality():
    problem, ds = logistic_problem(domain="box", activation="tanh", weight="gaussian:1.5")
    result = problem.fit(ds.x, ds.y, rtol=1e-12)
    E, U = result.functional, result.U
    g0 = E.gradient(E.vector()).norm()
    assert E.gradient(U).norm() <= 1e-11 * g0  # dE_alpha(U) = 0: the Euler-Lagrange equation
    E0 = E(U)
    for eps, V, W in perturbations(U, np.random.default_rng(comm.rank)):
        assert E(W) > E0
    assert result.info.history[-1] <= 1e-12 * result.info.history[0]
    accuracy = np.mean(np.sign(result.predict(ds.x)) == ds.y)
    assert accuracy >= 0.85, accuracy


@pytest.mark.parametrize("domain,activation", [("sphere", "relu"), ("box", "tanh")])
def test_matches_dense_numpy_newton(domain, activation):
    problem, ds = logistic_problem(domain=domain, activation=activation, n=40)
    E = problem.functional(ds.x, ds.y)
    U, info = newton(E, solver="cg", rtol=1e-13, linear_rtol=1e-13)
    A, C = dense_system(E)  # Phi assembled independently by dolfinx (UFL), dense
    y, alpha = ds.y, E.alpha
    X = dense_logistic_newton(A, C, y, alpha)
    Ug = gather(U)
    assert np.linalg.norm(Ug - X) <= 1e-8 * np.linalg.norm(X)
    loss = np.mean(LOGISTIC.value(C.T @ X, y)) + 0.5 * alpha * X @ A @ X
    assert E(U) == pytest.approx(loss, rel=1e-10)


def test_squared_loss_newton_is_the_linear_solve():
    ds = data.synthetic("sin", 100, seed=2)
    problem = Problem(Space.box(1, 8, 3.0), "relu", "uniform", alpha=1e-3)
    E = problem.functional(ds.x, ds.y)
    U1, _ = solve(E, rtol=1e-12)
    U2, info = newton(E, rtol=1e-12, linear_rtol=1e-12)
    assert info.iterations == 1
    D = U1.copy()
    D.axpy(-1.0, U2)
    assert D.norm() <= 1e-9 * U1.norm()


@pytest.mark.parametrize("solver", ["cg", "direct"])
def test_shifted_reweighted_linear_solver(solver):
    """(s G + alpha A + Phi^T D Phi / n) X = B against dense NumPy, before and after set_shift / set_weights."""
    ds = data.synthetic("sin", 30, seed=5)
    problem = Problem(Space.box(1, 5, 2.0), "tanh", "gaussian:1", alpha=1e-2, kappa=0.7)
    E = problem.functional(ds.x, ds.y)
    A, C = dense_system(E)
    lo, hi = E.H.M.getOwnershipRange()
    ai, aj, av = E.H.M.getValuesCSR()
    M_local = np.zeros((hi - lo, E.H.ndofs))
    for r in range(hi - lo):
        M_local[r, aj[ai[r]:ai[r + 1]]] = av[ai[r]:ai[r + 1]]
    M = np.vstack(comm.allgather(M_local))
    rng = np.random.default_rng(1)
    b = rng.standard_normal(E.H.ndofs)
    B = E.vector()
    B.array[:] = b[lo:hi]
    lin = LinearSolver(E, None, solver, 1e-13, G=E.H.M, shift=3.0)
    D = rng.uniform(0.0, 2.0, E.n)
    D[0] = 0.0  # a vanishing weight (l'' underflow) must be harmless
    for shift, weights in ((3.0, np.ones(E.n)), (3.0, D), (0.25, D), (0.0, D)):
        lin.set_shift(shift)
        lin.set_weights(weights)
        X = E.vector()
        info = lin.solve(B, X)
        K = shift * M + E.alpha * A + (C * weights) @ C.T / E.n
        x = np.linalg.solve(K, b)
        assert np.linalg.norm(gather(X) - x) <= 1e-9 * np.linalg.norm(x), (shift, solver)
        assert info.residual <= 1e-11
    lin.destroy()


def test_refuses_non_binary_labels():
    ds = data.synthetic("sin", 20, seed=1)
    with pytest.raises(ValueError, match="labels y in"):
        Problem(Space.box(1, 4, 2.0), "relu", loss="logistic").fit(ds.x, ds.y)


def test_newton_failure_is_reported():
    problem, ds = logistic_problem()
    E = problem.functional(ds.x, ds.y)
    with pytest.raises(NotConverged, match="Newton did not converge"):
        newton(E, max_it=1, rtol=1e-13)
    U, info = newton(E, max_it=1, rtol=1e-13, allow_unconverged=True)
    assert not info.converged and info.iterations == 1 and info.residual > 1e-13


@pytest.mark.mpi
def test_cli_solve_logistic_on_two_ranks(tmp_path):
    out = tmp_path / "out"
    r = run([os.path.join(BIN, "flowfem"), "solve", "--data", "two_moons", "--n", "200", "--domain", "sphere",
             "--mesh-size", "2", "--alpha", "1e-3", "--loss", "logistic", "--out", str(out)], ranks=2, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Newton (logistic loss)" in r.stdout and "2 rank(s)" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    res = m["newton_residuals"]
    assert m["loss_function"] == "logistic" and res[-1] <= 1e-10 * res[0]
    assert m["test_accuracy"] >= 0.9
    assert (out / "figure.png").exists()
    # bad labels: one clear line, exit 2, no output directory
    r = run([os.path.join(BIN, "flowfem"), "solve", "--data", "sin", "--n", "50", "--loss", "logistic",
             "--out", str(tmp_path / "bad")], timeout=120)
    assert r.returncode == 2 and "labels y in {-1, +1}" in r.stderr and not (tmp_path / "bad").exists()


def test_a_stop_at_the_rounding_floor_is_convergence_whatever_snes_calls_it():
    """at_rounding_floor, shared by the logistic and the softmax Newton solves: any unconverged SNES reason
    with the last ||F|| at or below the floor becomes converged (1); above it, or without history, the reason
    stays; the floor (two products with the data operator) is evaluated only for an unconverged stop."""
    from petsc4py import PETSc

    from flowfem.stationary import at_rounding_floor

    R = PETSc.SNES.ConvergedReason
    for reason in (R.DIVERGED_LINE_SEARCH, R.DIVERGED_LOCAL_MIN, R.DIVERGED_MAX_IT):
        assert at_rounding_floor(reason, [1.7e-8, 6.1e-18], lambda: 1e-16) == 1
        assert at_rounding_floor(reason, [1.7e-8, 6.1e-15], lambda: 1e-16) == reason
        assert at_rounding_floor(reason, [], lambda: 1e-16) == reason
    assert at_rounding_floor(R.DIVERGED_FUNCTION_NANORINF, [1.0, float("nan")], lambda: 1e-16) == R.DIVERGED_FUNCTION_NANORINF

    def never():
        raise AssertionError("the floor was evaluated for a converged solve")

    assert at_rounding_floor(R.CONVERGED_FNORM_RELATIVE, [1.0, 1e-12], never) == R.CONVERGED_FNORM_RELATIVE
