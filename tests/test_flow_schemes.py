"""The time steppers (flowfem.flow.schemes): the observed order of every registered scheme against the
exact flow (a matrix exponential, computed densely), with fixed steps; BDF-k keeps its order across
checkpoints and resumed runs (bit for bit the same steps); schemes without a parameter refuse one;
BDF's error control meets its tolerance.

Rank-agnostic: runs serially and under mpirun -n 2 (tests/test_mpi.py).
"""

import os

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from conftest import Exact, fitted_order, gather, say, small_problem, u0, vector  # noqa: E402

from flowfem.flow import Flow
from flowfem.flow import checkpoint as ck
from flowfem.flow.schemes import SCHEMES, lagrange_derivative

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

BDF_ORDERS = range(1, 7)

# (scheme, order, initial data, numbers of steps over [0, 1]). "gaussian": u0 = 2 exp(-|theta|^2 / 2),
# which excites every mode of G^{-1} K (mu up to 27 here, so tau mu ~ 1.7 at 16 steps); "slow": u* plus
# every mode with mu <= 3 (all but the two stiffest), so that tau mu <= 3/8 at the coarsest steps. For
# BDF-k with k >= 5 the stiff modes are asymptotic only where the error reaches rounding (tau mu << 1,
# errors ~ 1e-13), so the slow data are where the order of every scheme can be seen.
CASES = ([(s, o, "gaussian", (16, 32, 64, 128)) for s, o in (("implicit_euler", 1), ("theta:0.75", 1), ("theta:1", 1),
                                                               ("theta", 2), ("crank_nicolson", 2), ("bdf:1", 1),
                                                               ("bdf", 2))]
         + [("bdf:3", 3, "gaussian", (32, 64, 128, 256)), ("bdf:4", 4, "gaussian", (32, 64, 128, 256))]
         + [(f"bdf:{k}", k, "slow", (16, 32, 64, 128) if k < 6 else (16, 24, 32, 48, 64)) for k in BDF_ORDERS])


def test_every_registered_scheme_and_bdf_order_is_tested():
    tested = {spec.split(":")[0] for spec, _, _, _ in CASES}
    assert set(SCHEMES) <= tested
    assert {f"bdf:{k}" for k in BDF_ORDERS} <= {spec for spec, _, _, _ in CASES}
    problem, E = small_problem()
    for k in (0, 7):  # and no other order is accepted
        with pytest.raises(ValueError, match="orders 1 to 6"):
            Flow(E, "L2", f"bdf:{k}")


def initial(problem, E, exact, kind):
    """(U0 as a PETSc vector, U0 gathered) for the named initial data."""
    if kind == "gaussian":
        U0 = u0(problem)
        return U0, gather(U0)
    slow = exact.mu <= 3.0
    values = exact.U_star + exact.V[:, slow] @ np.ones(slow.sum())
    return vector(E, values), values


@pytest.mark.parametrize("spec,order,kind,steps", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_observed_order_matches_the_scheme(spec, order, kind, steps):
    """Error at T = 1 against the exact flow, L2 metric, fixed steps 1/N: the fitted slope of
    log error against log tau is the scheme's order within 0.15."""
    problem, E = small_problem()
    exact = Exact(E, "L2")
    U0, U0_values = initial(problem, E, exact, kind)
    target = exact(U0_values, 1.0)
    taus, errors = [], []
    for N in steps:
        # the default step_rtol (1e-6) for the cases that always had it; the high orders' errors are smaller
        flow = Flow(E, "L2", spec, rtol=1e-13, step_rtol=1e-6 if kind == "gaussian" and order <= 2 else 1e-12,
                    adapt=False)
        assert flow.scheme.order == order
        U = U0.copy()
        result = flow.run(U, t_end=1.0, tau=1.0 / N)
        assert result.steps == N and result.times[-1] == 1.0
        taus.append(1.0 / N)
        errors.append(exact.norm(gather(U) - target) / exact.norm(target))
        flow.destroy()
    slope = fitted_order(taus, errors)
    say(f"\n{spec} ({kind}): errors {', '.join(f'{e:.2e}' for e in errors)}, observed order {slope:.3f} "
        f"(scheme {order})")
    assert abs(slope - order) <= 0.15, (slope, errors)


def test_bdf_coefficients_are_the_classical_ones():
    """Constant steps: tau a_j are the classical BDF-k coefficients (Hairer & Wanner II, section III.1)."""
    classical = {1: [1, -1], 2: [3 / 2, -2, 1 / 2], 3: [11 / 6, -3, 3 / 2, -1 / 3],
                 4: [25 / 12, -4, 3, -4 / 3, 1 / 4], 5: [137 / 60, -5, 5, -10 / 3, 5 / 4, -1 / 5],
                 6: [49 / 20, -6, 15 / 2, -20 / 3, 15 / 4, -6 / 5, 1 / 6]}
    for k, a in classical.items():
        np.testing.assert_allclose(lagrange_derivative(-np.arange(k + 1.0)), a, rtol=1e-13)


@pytest.mark.parametrize("k", [3, 6])
def test_bdf_keeps_its_steps_across_checkpoints_and_resumed_runs(shared_tmp, k):
    """Checkpoints do not restart BDF-k (its history stays in memory and is saved), so a run with
    checkpoints, and one resumed from a checkpoint in the start-up and one after it, take exactly the
    steps of the run without: the same bits, hence the same order."""
    problem, E = small_problem()
    exact = Exact(E, "L2")
    U0, _ = initial(problem, E, exact, "slow")

    def flow():
        return Flow(E, "L2", f"bdf:{k}", rtol=1e-13, step_rtol=1e-12, adapt=False)

    f = flow()
    plain = U0.copy()
    f.run(plain, t_end=1.0, tau=1 / 24)
    f.destroy()
    f = flow()
    U = U0.copy()
    d = os.path.join(shared_tmp, f"bdf{k}")
    checkpoints = ck.Checkpoints(d, 2, ck.fingerprint(f), keep=20)
    f.run(U, t_end=1.0, tau=1 / 24, checkpoints=checkpoints)
    f.destroy()
    assert np.array_equal(U.array_r, plain.array_r)
    for step in (2, 12):  # inside the start-up (k - 1 steps) for k = 6, and after it
        f = flow()
        resumed = ck.load_checkpoint(os.path.join(d, f"{checkpoints.run}.step-{step:08d}.npz"), f, ck.fingerprint(f))
        assert len(resumed.state.history) == min(step, k)
        f.run(resumed.U, t_end=1.0, tau=123.0, state=resumed.state)
        f.destroy()
        assert np.array_equal(resumed.U.array_r, plain.array_r), step


@pytest.mark.parametrize("spec", ["crank_nicolson:1", "implicit_euler:0.5", "crank_nicolson:0.5"])
def test_a_scheme_without_parameter_refuses_one(spec):
    problem, E = small_problem()
    name = spec.split(":")[0]
    with pytest.raises(ValueError, match=f"^{spec}: the scheme {name} takes no parameter; write {name}$"):
        Flow(E, "L2", spec)


def test_theta_takes_its_parameter():
    problem, E = small_problem()
    for spec, theta, order, label in (("theta:1", 1.0, 1, "theta:1"), ("theta", 0.5, 2, "theta:0.5"),
                                      ("theta:0.6", 0.6, 1, "theta:0.6")):
        flow = Flow(E, "L2", spec)
        assert (flow.scheme.theta, flow.scheme.order, flow.scheme.label) == (theta, order, label)
        flow.destroy()
    for bad in ("theta:0.2", "theta:x"):
        with pytest.raises(ValueError, match="theta"):
            Flow(E, "L2", bad)


@pytest.mark.parametrize("k", [2, 4])
def test_bdf_error_control_meets_its_tolerance(k):
    """Adaptive BDF-k over [0, 1] from a tiny first step: the global error follows the tolerance
    (tighter tolerance, smaller error, more steps), and the run lands on t_end."""
    problem, E = small_problem()
    exact = Exact(E, "L2")
    U0 = u0(problem)
    target = exact(gather(U0), 1.0)
    errors, steps = [], []
    for tol in (1e-4, 1e-5, 1e-6):
        flow = Flow(E, "L2", f"bdf:{k}", rtol=1e-13, step_rtol=1e-12, ts_rtol=tol)
        assert flow.adapt
        U = U0.copy()
        result = flow.run(U, t_end=1.0, tau=1e-4)
        assert result.times[-1] == 1.0
        errors.append(exact.norm(gather(U) - target) / exact.norm(target))
        steps.append(result.steps)
        flow.destroy()
    say(f"\nadaptive bdf:{k}: errors {', '.join(f'{e:.1e}' for e in errors)} in {steps} steps")
    assert errors[0] > errors[1] > errors[2] and steps[0] < steps[1] < steps[2]
    assert all(e <= 100 * tol for e, tol in zip(errors, (1e-4, 1e-5, 1e-6)))


def test_adaptive_steps_need_an_error_estimate():
    problem, E = small_problem()
    with pytest.raises(ValueError, match="adaptive steps need a scheme with an error estimate"):
        Flow(E, "L2", "implicit_euler", adapt=True)
    with pytest.raises(ValueError, match="ts_adapt_type: the flow's time steps are flowfem's own"):
        Flow(E, "L2", "bdf", petsc_options={"ts_adapt_type": "none"})
