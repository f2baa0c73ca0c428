"""The gradient flow of an m-output functional (issue 14 §1): m independent flows in lock step.

E_alpha(U_1..U_m) = sum_k E_k(U_k), so its flow is m single-output flows with the same metric and steps:
the m-output run equals m single-output runs and a dense NumPy implicit Euler; its m outputs share one
linear solver set up once per shift; energy falls per output and in sum; adaptive steps serve the most
demanding output; checkpoints hold the m fields and a resumed run repeats the uninterrupted one bit for
bit; `flowfem flow` on a y1,y2 CSV writes m fields and agrees with single-output runs and with 2 ranks.

The in-process tests run serially and under mpirun -n 2 (tests/test_mpi.py); tests marked mpi start
processes themselves.
"""

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI

from conftest import BIN, Exact, dense, dense_system, gather, run, say, u0
from flowfem import data, stationary
from flowfem.flow import Flow
from flowfem.flow import checkpoint as ck
from flowfem.flow.driver import metric_matrix
from flowfem.problem import Problem
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD
FLOWFEM = os.path.join(BIN, "flowfem")


def problem_and_data():
    """The small problem of conftest.small_problem (49 dofs, 40 points) with three outputs of different
    shape: sin, x^2 and |x| - 1/2."""
    ds = data.synthetic("sin", 40, seed=3)
    problem = Problem(Space.box(1, 6, 2.0), "relu", "gaussian:1.5", alpha=0.05, kappa=0.5)
    t = ds.x[:, 0]
    return problem, ds.x, np.column_stack([ds.y, t**2, np.abs(t) - 0.5])


def starts(problem, m):
    """m different initial densities (gaussian heights 2, 1, -1, ...): a list of dof vectors."""
    return [u0(problem, f"gaussian:1:{a}") for a in (2.0, 1.0, -1.0)[:m]]


@pytest.mark.parametrize("scheme", ["implicit_euler", "crank_nicolson", "bdf:3"])
def test_m_outputs_equal_m_single_output_flows(scheme, monkeypatch):
    """Geometric steps: each output's density after every step, the times and the energies of the 3-output run
    are those of 3 single-output runs (to the solver tolerance), and the 3 outputs share one linear solver
    that sets up its preconditioner as often as one single-output run does (once per shift)."""
    problem, x, Y = problem_and_data()
    made, setups = [], []
    init, setup = stationary.LinearSolver.__init__, stationary.LinearSolver._setup
    monkeypatch.setattr(stationary.LinearSolver, "__init__",
                        lambda self, *a, **k: (made.append(1), init(self, *a, **k))[1])
    monkeypatch.setattr(stationary.LinearSolver, "_setup", lambda self: (setups.append(1), setup(self))[1])

    def run_flow(y, U0s):
        made.clear()
        flow = Flow(problem.functional(x, y), "L2", scheme, rtol=1e-13, step_rtol=1e-12, adapt=False)
        flow.stationary()
        setups.clear()
        steps = []
        result = flow.run(U0s if len(U0s) > 1 else U0s[0], tau=0.05, growth=1.5, max_steps=12,
                          callback=lambda rec, U: steps.append([gather(V) for V in
                                                               (U.getNestSubVecs() if len(U0s) > 1 else [U])]))
        counts = (len(made), len(setups))
        flow.destroy()
        return result, np.array(steps), counts

    multi, steps, counts = run_flow(Y, starts(problem, 3))
    assert multi.outputs == 3 and multi.steps == 12
    assert counts[0] == 2  # one for the stationary solves, one for the steps: the 3 outputs share each
    single_setups = []
    for k, U0 in enumerate(starts(problem, 3)):
        one, one_steps, one_counts = run_flow(Y[:, k], [U0])
        single_setups.append(one_counts[1])
        np.testing.assert_array_equal(multi.times, one.times)
        err = np.abs(steps[:, k] - one_steps[:, 0]).max() / np.abs(one_steps[:, 0]).max()
        assert err <= 1e-10, (k, err)
        np.testing.assert_allclose(multi.column("energy_outputs")[:, k], one.energies, rtol=1e-10)
        np.testing.assert_allclose(multi.column("error_outputs")[:, k], one.errors, rtol=1e-8)
    assert counts[1] == single_setups[0]  # set up once per shift for all 3 right-hand sides
    np.testing.assert_allclose(multi.energies, multi.column("energy_outputs").sum(axis=1), rtol=1e-14)
    np.testing.assert_array_equal(multi.errors, multi.column("error_outputs").max(axis=1))
    say(f"\n{scheme}: 3 outputs = 3 single flows over 12 steps; {counts[1]} preconditioner set-ups for the 3 outputs")


def test_m_output_implicit_euler_matches_a_dense_numpy_flow():
    """(G + tau K) U_k^{n+1} = G U_k^n + tau b_k per output, solved densely with UFL-assembled Phi^T, and the
    summed energy of those iterates, against the 3-output flow (H1 metric, geometric steps)."""
    problem, x, Y = problem_and_data()
    E = problem.functional(x, Y)
    A, C = dense_system(E)
    G = dense(metric_matrix(E.H, "H1"))
    K = E.alpha * A + C @ C.T / E.n
    U0s = starts(problem, 3)
    Us = np.column_stack([gather(U) for U in U0s])
    flow = Flow(E, "H1", "implicit_euler", rtol=1e-13, step_rtol=1e-12)
    result = flow.run(U0s, tau=0.1, growth=2.0, max_steps=8)  # changes U0s in place
    energies = []
    for tau in result.column("tau")[1:]:
        Us = np.linalg.solve(G + tau * K, G @ Us + tau * C @ Y / E.n)
        f = C.T @ Us
        energies.append(np.sum((f - Y) ** 2) / (2 * E.n) + 0.5 * E.alpha * np.einsum("ik,ij,jk->", Us, A, Us))
    for k, U in enumerate(U0s):
        assert np.linalg.norm(gather(U) - Us[:, k]) <= 1e-9 * np.linalg.norm(Us[:, k]), k
    np.testing.assert_allclose(result.energies[1:], energies, rtol=1e-9)
    flow.destroy()


@pytest.mark.parametrize("metric", ["L2", "H1"])
def test_energy_decreases_per_output_and_in_sum(metric):
    """Implicit Euler is the minimising movement of each E_k: E_k(U_k^{n+1}) <= E_k(U_k^n) for every output
    and every tau, hence the sum too; the flow converges to the m stationary densities (solve_outputs)."""
    problem, x, Y = problem_and_data()
    E = problem.functional(x, Y)
    for tau in (1e-2, 1.0, 1e4):
        flow = Flow(E, metric, "implicit_euler", rtol=1e-13)
        flow.stationary()
        result = flow.run(starts(problem, 3), tau=tau, growth=3.0, max_steps=8)
        per = result.column("energy_outputs")
        slack = 1e-12 * np.abs(per[0])
        assert np.all(np.diff(per, axis=0) <= slack), tau
        assert np.all(np.diff(result.energies) <= 1e-12 * abs(result.energies[0])) and per[0].sum() > per[-1].sum()
        gap = result.column("gap")
        assert np.all(gap >= -1e-10 * abs(result.energy_star))  # E* = sum_k min E_k is below every iterate
        flow.destroy()
    flow = Flow(E, metric, "implicit_euler", rtol=1e-13)
    flow.stationary()
    result = flow.run(starts(problem, 3), tau=1.0, growth=3.0, tol=1e-8, max_steps=100)
    assert result.errors[-1] <= 1e-8 and max(result.log[-1]["error_outputs"]) <= 1e-8
    stars, _ = stationary.solve_outputs(E, rtol=1e-13)
    for U, S in zip(result.Us, stars):
        D = U.copy()
        D.axpy(-1.0, S)
        assert D.norm() <= 1e-6 * S.norm()
    flow.destroy()


def test_adaptive_steps_follow_the_most_demanding_output():
    """BDF2 with error control. Outputs y and 3 y from zero have proportional densities, so their error norms
    (each with its own atol) agree and the run takes the single-output steps; with three different outputs
    every output's error at t = 1 against the exact flow (dense matrix exponential) meets the tolerance."""
    problem, x, Y = problem_and_data()
    y = Y[:, 0]

    def adaptive(yy, U0s, tol=1e-5):
        flow = Flow(problem.functional(x, yy), "L2", "bdf", rtol=1e-13, step_rtol=1e-12, ts_rtol=tol)
        flow.stationary()
        result = flow.run(U0s if len(U0s) > 1 else U0s[0], t_end=1.0, tau=1e-4)
        flow.destroy()
        return result

    one = adaptive(y, [u0(problem, "zero")])
    two = adaptive(np.column_stack([y, 3 * y]), [u0(problem, "zero"), u0(problem, "zero")])
    assert two.steps == one.steps and two.times[-1] == 1.0
    np.testing.assert_allclose(two.times, one.times, rtol=1e-9)
    np.testing.assert_allclose(gather(two.Us[1]), 3 * gather(two.Us[0]), rtol=1e-8, atol=1e-12)
    three = adaptive(Y, starts(problem, 3), tol=1e-5)
    for k, U0 in enumerate(starts(problem, 3)):
        exact = Exact(problem.functional(x, Y[:, k]), "L2")
        target = exact(gather(U0), 1.0)
        error = exact.norm(gather(three.Us[k]) - target) / exact.norm(target)
        assert error <= 100 * 1e-5, (k, error)
    assert three.steps >= one.steps


def test_error_norm_of_m_outputs_is_the_largest_outputs():
    """ErrorControl's w for a VecNest: max_k sqrt(mean_i (e_ki / (atol_k + rtol max(|u_ki|, |v_ki|)))^2), each
    output with its own atol_k, against NumPy on the gathered blocks (so neither the mean over all m ndofs
    entries nor one atol for all)."""
    from petsc4py import PETSc

    from flowfem.flow.driver import ErrorControl

    problem, x, Y = problem_and_data()
    E = problem.functional(x, Y)
    rng = np.random.default_rng(comm.rank)
    vecs = []
    for scale in (1.0, 30.0, 0.1):  # (estimate, new state, old state) of each output; output 2's error largest
        blocks = [E.vector() for _ in range(3)]
        for j, V in enumerate(blocks):
            V.array[:] = (scale if j == 0 else 1.0) * rng.standard_normal(V.getLocalSize())
        vecs.append(blocks)
    e, u, v = (PETSc.Vec().createNest([vecs[k][j] for k in range(3)]) for j in range(3))
    atol, rtol = [1e-4, 1e-7, 1e-3], 1e-3
    control = ErrorControl(rtol, atol)
    expected = []
    for k in range(3):
        ek, uk, vk = (gather(vecs[k][j]) for j in range(3))
        expected.append(np.sqrt(np.mean((ek / (atol[k] + rtol * np.maximum(np.abs(uk), np.abs(vk)))) ** 2)))
    assert control.norm(e, u, v) == pytest.approx(max(expected), rel=1e-12)
    assert max(expected) > 5 * sorted(expected)[1]
    single = ErrorControl(rtol, atol[1])
    assert single.norm(vecs[1][0], vecs[1][1], vecs[1][2]) == pytest.approx(expected[1], rel=1e-12)


def test_checkpoints_hold_the_m_fields_and_resume_exactly(shared_tmp):
    """A 2-output BDF3 run with checkpoints, stopped at step 7 and resumed from step 6, equals the
    uninterrupted run bit for bit (densities and log); a 2-output checkpoint is refused by a flow of other
    outputs, and a single dof vector by a 2-output run."""
    problem, x, Y = problem_and_data()
    E = problem.functional(x, Y[:, :2])

    def make():
        flow = Flow(E, "L2", "bdf:3", adapt=True, ts_rtol=1e-4)
        flow.stationary()
        return flow

    flow = make()
    full = flow.run(starts(problem, 2), tau=1e-3, max_steps=12)
    U_full = [V.array_r.copy() for V in full.Us]
    flow.destroy()
    flow = make()
    fp = ck.fingerprint(flow)
    assert fp["outputs"] == 2
    d = os.path.join(shared_tmp, "ck")
    flow.run(starts(problem, 2), tau=1e-3, max_steps=7, checkpoints=ck.Checkpoints(d, 3, fp))
    flow.destroy()
    flow = make()
    resumed = ck.load_checkpoint(d, flow, ck.fingerprint(flow))
    assert resumed.state.step == 6 and len(resumed.state.ts_atol) == 2
    result = flow.run(resumed.U, tau=123.0, max_steps=12, state=resumed.state)
    assert all(np.array_equal(V.array_r, W) for V, W in zip(result.Us, U_full))
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert strip(result.log) == strip(full.log)
    with pytest.raises(ValueError, match="a flow of 2 outputs evolves 2 densities"):
        flow.run(u0(problem), max_steps=1)
    flow.destroy()
    other = Flow(problem.functional(x, Y), "L2", "bdf:3")
    with pytest.raises(ck.CheckpointError, match="holds 2 output\\(s\\), this flow has 3"):
        ck.load_checkpoint(d, other)
    other.destroy()


def test_initial_densities_of_m_outputs(shared_tmp):
    """An m-output flow starts from m densities: zero and gaussian m copies; a density.npz of m outputs (its
    columns) or of one (m copies); a network of m outputs (each output's projection) or of one; another number
    of outputs is refused naming both counts."""
    from flowfem import io
    from flowfem.flow.initial import initial_densities
    from flowfem.network import Network

    problem, x, Y = problem_and_data()
    H = problem.H
    owned = lambda u: u.x.array[: H.V.dofmap.index_map.size_local].copy()  # noqa: E731
    us = initial_densities(H, "gaussian:1:2", None, 2)
    assert len(us) == 2 and us[0] is not us[1] and np.array_equal(owned(us[0]), owned(us[1]))
    a, b = H.function(), H.function()
    a.interpolate(lambda t: np.sin(t[0]) + t[1])
    b.interpolate(lambda t: t[1] ** 2)
    path = os.path.join(shared_tmp, "two.npz")
    io.save_density(path, [a, b], problem.space, dict(alpha=0.05))
    comm.Barrier()
    us = initial_densities(H, "density:" + path, None, 2)
    assert np.array_equal(owned(us[0]), owned(a)) and np.array_equal(owned(us[1]), owned(b))
    with pytest.raises(ValueError, match="holds 2 outputs, these data have 3"):
        initial_densities(H, "density:" + path, None, 3)
    one = os.path.join(shared_tmp, "one.npz")
    io.save_density(one, b, problem.space, dict(alpha=0.05))
    comm.Barrier()
    assert all(np.array_equal(owned(u), owned(b)) for u in initial_densities(H, one, None, 3))
    rng = np.random.default_rng(0)
    W, c, A = rng.uniform(-1.5, 1.5, (9, 1)), rng.uniform(-1.5, 1.5, 9), rng.standard_normal((9, 2))
    net = os.path.join(shared_tmp, "net.npz")
    if comm.rank == 0:
        Network(W, c, A, "relu").save(net)
    comm.Barrier()
    us = initial_densities(H, "network:" + net, None, 2)
    for k in range(2):
        alone = os.path.join(shared_tmp, f"net{k}.npz")
        if comm.rank == 0:
            Network(W, c, A[:, k], "relu").save(alone)
        comm.Barrier()
        assert np.allclose(owned(us[k]), owned(initial_densities(H, alone, None, 1)[0]), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="the network has 2 outputs, these data have 1"):
        initial_densities(H, "network:" + net, None, 1)


# -- the command ----------------------------------------------------------------------------------------

ARGS = ["--mesh-size", "10", "--radius", "3", "--alpha", "1e-3", "--weight", "gaussian:2", "--initial",
        "gaussian:1:2", "--tau", "0.05", "--growth", "1.6", "--max-steps", "12", "--step-rtol", "1e-12",
        "--rtol", "1e-13", "--no-plot", "--quiet"]


def _csv(path, columns: dict):
    np.savetxt(path, np.column_stack(list(columns.values())), delimiter=",", header=",".join(columns), comments="")


def _trajectory(out, name):
    """(times, values) of one field's temporal collection in trajectory.xdmf, read from the HDF5 arrays the
    XML names (meshio reads only the last collection)."""
    import h5py

    root = ET.parse(os.path.join(out, "trajectory.xdmf")).getroot()
    (series,) = [g for g in root.iter("Grid") if g.get("CollectionType") == "Temporal" and g.get("Name") == name]
    times, values = [], []
    with h5py.File(os.path.join(out, "trajectory.h5"), "r") as f:
        for grid in series.findall("Grid"):
            times.append(float(grid.find("Time").get("Value")))
            values.append(f[grid.find("Attribute").find("DataItem").text.split(":")[1]][:].ravel())
    return times, np.array(values)


@pytest.mark.mpi
def test_flow_command_with_two_outputs(tmp_path):
    """`flowfem flow --data y1,y2.csv`: density.npz u (ndofs, 2), fields density1/density2 in density.xdmf and
    trajectory.xdmf (one frame per step), energy.csv with the summed and per-output energies and errors; the
    densities and logs are those of two single-output runs, and of the same run on 2 ranks; a run stopped
    and resumed from its checkpoint equals the uninterrupted one."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, 150)
    _csv(tmp_path / "two.csv", {"y2": x**2, "x1": x, "y1": np.sin(np.pi * x)})  # columns taken by name
    _csv(tmp_path / "y1.csv", {"x1": x, "y": np.sin(np.pi * x)})
    _csv(tmp_path / "y2.csv", {"x1": x, "y": x**2})
    outs = {}
    for name, data_file, ranks in (("two", "two.csv", 1), ("two2", "two.csv", 2), ("y1", "y1.csv", 1),
                                   ("y2", "y2.csv", 1)):
        outs[name] = tmp_path / name
        r = run([FLOWFEM, "flow", "--data", str(tmp_path / data_file), *ARGS, "--out", str(outs[name])],
                ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stderr
        if name == "two":
            assert "2 outputs in lock step" in r.stdout and "fields density1..density2" in r.stdout
    two = outs["two"]
    assert sorted(os.listdir(two)) == [".flowfem-output.json", "density.bp", "density.h5", "density.npz",
                                       "density.xdmf", "energy.csv", "energy.json", "trajectory.h5",
                                       "trajectory.xdmf"]
    table = np.genfromtxt(two / "energy.csv", delimiter=",", names=True)
    assert table.dtype.names[-4:] == ("energy1", "energy2", "error1", "error2") and len(table) == 13
    np.testing.assert_allclose(table["energy"], table["energy1"] + table["energy2"], rtol=1e-13)
    assert np.all(np.diff(table["energy"]) <= 0) and np.all(np.diff(table["energy1"]) <= 0)
    assert np.all(np.diff(table["energy2"]) <= 0)
    doc = json.load(open(two / "energy.json"))
    assert doc["outputs"] == 2 and len(doc["test_rmse_outputs"]) == 2 and doc["frames"] == 13
    root = ET.parse(two / "density.xdmf").getroot()
    assert [g.get("Name") for g in root.iter("Grid") if g.get("CollectionType") == "Temporal"] == ["density1",
                                                                                                   "density2"]
    with np.load(two / "density.npz") as f:
        theta, u = f["theta"], f["u"]
    assert u.shape == (len(theta), 2)
    for k, single in enumerate(("y1", "y2")):
        with np.load(outs[single] / "density.npz") as f:
            assert np.array_equal(f["theta"], theta)
            assert np.linalg.norm(u[:, k] - f["u"]) <= 1e-9 * np.linalg.norm(f["u"]), single
        one = np.genfromtxt(outs[single] / "energy.csv", delimiter=",", names=True)
        np.testing.assert_array_equal(table["t"], one["t"])
        np.testing.assert_allclose(table[f"energy{k + 1}"], one["energy"], rtol=1e-10)
        times, frames = _trajectory(two, f"density{k + 1}")
        one_times, one_frames = _trajectory(outs[single], "density")
        assert times == list(table["t"]) == one_times
        assert np.abs(frames - one_frames).max() <= 1e-9 * np.abs(one_frames).max()
    with np.load(outs["two2"] / "density.npz") as f:
        assert np.array_equal(np.round(f["theta"], 10), np.round(theta, 10))
        assert np.linalg.norm(f["u"] - u) <= 1e-9 * np.linalg.norm(u)
    par = np.genfromtxt(outs["two2"] / "energy.csv", delimiter=",", names=True)
    np.testing.assert_allclose(par["t"], table["t"], rtol=1e-12)
    for key in ("energy", "energy1", "energy2"):
        np.testing.assert_allclose(par[key], table[key], rtol=1e-10)
    # stopped at step 7 (checkpoints every 5) and resumed: the uninterrupted run's densities, log and both fields'
    # frames, bit for bit
    cut, resumed = tmp_path / "cut", tmp_path / "resumed"
    for out, extra in ((cut, ["--max-steps", "7"]), (resumed, ["--resume", f"{cut}.checkpoints"])):
        r = run([FLOWFEM, "flow", "--data", str(tmp_path / "two.csv"), *ARGS, "--checkpoint-every", "5", *extra,
                 "--out", str(out)], timeout=300)
        assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and "step 5," in r.stdout
    with np.load(resumed / "density.npz") as f:
        assert np.array_equal(f["u"], u)
    strip = lambda d: [{k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
                       for r in json.load(open(d / "energy.json"))["steps"]]
    assert strip(resumed) == strip(two)
    for k in (1, 2):
        (ta, fa), (tb, fb) = _trajectory(two, f"density{k}"), _trajectory(resumed, f"density{k}")
        assert ta == tb and np.array_equal(fa, fb)
