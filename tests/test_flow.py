"""The gradient flow: energy decay, convergence to the stationary solution with contraction rate
>= lambda = alpha, initial densities, checkpoints (restart = uninterrupted run, bit for bit; damaged ones
refused; each run rotates its own), and the `flowfem flow` command (SIGKILL mid-checkpoint and resume;
--force over an earlier run; Ctrl-C and the resume command it names; 1 rank = 2 ranks). The order of
every time stepper: tests/test_flow_schemes.py.

The in-process tests run serially and under mpirun -n 2 (tests/test_mpi.py); tests marked mpi start
processes themselves.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI

from conftest import BIN, MPIRUN, ROOT, Exact, run, say, small_problem, u0
from flowfem import io, plot
from flowfem.flow import Flow
from flowfem.flow import checkpoint as ck
from flowfem.flow.initial import initial_density
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.space import Space
from flowfem.stationary import solve

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD
FLOWFEM = os.path.join(BIN, "flowfem")


# -- energy, order, convergence ----------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("metric", ["L2", "H1"])
def test_implicit_euler_decreases_energy_at_every_step(metric, loss):
    """Minimising movement: E(U^{k+1}) + ||U^{k+1} - U^k||_G^2 / (2 tau) <= E(U^k), for every tau."""
    problem, E = small_problem(alpha=1e-3, loss=loss)
    for tau in (1e-3, 1.0, 1e3, 1e8):
        flow = Flow(E, metric, "implicit_euler", newton_rtol=1e-12)
        U = u0(problem, "gaussian:0.7:3")
        prev = [U.copy(), E(U)]
        checked = []

        def check(rec, U):
            D = U.copy()
            D.axpy(-1.0, prev[0])
            movement = flow.norm(D) ** 2 / (2 * tau)
            slack = 1e-12 * abs(prev[1])
            assert rec["energy"] <= prev[1] + slack, (tau, rec["step"])
            assert rec["energy"] + movement <= prev[1] + slack, (tau, rec["step"])
            checked.append(prev[1] - rec["energy"])
            U.copy(prev[0])
            prev[1] = rec["energy"]

        flow.run(U, tau=tau, max_steps=6, callback=check)
        assert len(checked) == 6 and checked[0] > 0
        flow.destroy()


@pytest.mark.parametrize("metric", ["L2", "H1"])
def test_flow_reaches_the_stationary_solution_contracting_at_rate_alpha(metric):
    problem, E = small_problem()
    U_ref, info = solve(E, rtol=1e-13)  # the foundation solver
    flow = Flow(E, metric, "implicit_euler", rtol=1e-13)
    flow.set_reference(U_ref)
    U = u0(problem)
    result = flow.run(U, tau=0.5, growth=2.0, tol=1e-8, max_steps=200)
    reached = (result.steps, result.errors[-1])
    D = U.copy()
    D.axpy(-1.0, U_ref)
    assert flow.norm(D) <= 1e-6 * flow.norm(U_ref)
    assert D.norm() <= 1e-6 * U_ref.norm()
    e, tau, gap = result.errors, result.column("tau"), result.column("gap")
    alpha = E.alpha
    # the minimising movement of a lambda-convex E contracts by 1 / (1 + tau lambda) per step in the metric,
    # and its energy gap by (1 + tau lambda)^-2
    assert np.all(e[1:] <= e[:-1] / (1 + tau[1:] * alpha) * (1 + 1e-9) + 1e-12)
    assert np.all(gap[1:] <= gap[:-1] / (1 + tau[1:] * alpha) ** 2 * (1 + 1e-9) + 1e-15 * abs(result.energies[0]))
    flow.destroy()
    # the continuous flow (BDF2, tight error control): ||u(t) - u*|| <= exp(-alpha t) ||u(0) - u*||
    # and E(t) - E* <= exp(-2 alpha t) (E(0) - E*); observed rate against the exact flow's slowest mode
    flow = Flow(E, metric, "bdf", rtol=1e-13, ts_rtol=1e-7)
    flow.set_reference(U_ref)
    U = u0(problem)
    result = flow.run(U, tau=1e-3, t_end=20.0)
    t, e, gap = result.times, result.errors, result.column("gap")
    assert np.all(e <= np.exp(-alpha * t) * e[0] * (1 + 1e-4))
    assert np.all(gap <= np.exp(-2 * alpha * t) * gap[0] * (1 + 1e-4))
    rate = result.contraction_rate()
    mu_min = Exact(E, metric).mu.min()
    say(f"\n{metric}: implicit Euler reached {reached[1]:.1e} in {reached[0]} steps; BDF2 over [0, 20]: observed contraction "
        f"rate {rate:.4f} >= lambda = alpha = {alpha} (slowest mode of G^-1 K: {mu_min:.4f})")
    assert rate >= alpha * (1 - 1e-3)
    flow.destroy()


def test_logistic_flow_converges_to_the_newton_solution():
    problem, E = small_problem(alpha=1e-3, loss="logistic")
    flow = Flow(E, "L2", "implicit_euler")
    U_star = flow.stationary()
    assert flow.stationary_info.iterations > 2  # Newton, not one linear solve
    U = u0(problem, "zero")
    result = flow.run(U, tau=1.0, growth=3.0, tol=1e-7, max_steps=100)
    assert result.errors[-1] <= 1e-7
    assert np.all(np.diff(result.energies) <= 1e-12 * abs(result.energies[0]))
    assert result.column("newton_iterations")[1:].max() >= 2
    D = U.copy()
    D.axpy(-1.0, U_star)
    assert D.norm() <= 1e-6 * U_star.norm()
    flow.destroy()


# -- initial densities ----------------------------------------------------------------------------------


def test_zero_and_gaussian_initial_densities():
    problem, E = small_problem()
    assert initial_density(problem.H, "zero").x.array.max(initial=0.0) == 0.0
    u = initial_density(problem.H, "gaussian:1.5:2")
    X = problem.H.V.tabulate_dof_coordinates()[:, :2]
    assert np.allclose(u.x.array, 2 * np.exp(-np.sum(X**2, axis=1) / (2 * 1.5**2)))
    for bad in ("gaussian:-1", "gaussian:x", "uniform", "gaussian:1:2:3"):
        with pytest.raises(ValueError):
            initial_density(problem.H, bad)


def test_density_file_round_trip(shared_tmp):
    problem, E = small_problem()
    u = problem.H.function()
    u.interpolate(lambda x: np.sin(x[0]) + x[1] ** 2)
    u.x.scatter_forward()  # ghosts = owners' values (interpolation on another cell can differ in the last bit)
    path = os.path.join(shared_tmp, "density.npz")
    io.save_density(path, u, problem.space, dict(alpha=0.05))
    comm.Barrier()
    v = initial_density(problem.H, "density:" + path)
    assert np.array_equal(v.x.array, u.x.array)
    w = initial_density(problem.H, path)  # recognised from its arrays
    assert np.array_equal(w.x.array, u.x.array)
    other = Problem(Space.box(1, 5, 2.0), "relu")
    with pytest.raises(ValueError, match="does not match this mesh"):
        initial_density(other.H, path)
    garbage = os.path.join(shared_tmp, "garbage.npz")
    if comm.rank == 0:
        with open(garbage, "wb") as f:
            f.write(b"not an archive")
    comm.Barrier()
    with pytest.raises(ValueError, match="cannot read the initial density"):  # on every rank
        initial_density(problem.H, "density:" + garbage)
    # the density of flowfem readout: the same mesh and values, and the same collective check
    H, v, settings = io.load_density(path)
    owned = lambda w: w.x.array[: w.function_space.dofmap.index_map.size_local]  # noqa: E731
    assert settings["alpha"] == 0.05
    assert comm.allreduce(np.sum(owned(v) ** 2)) == pytest.approx(comm.allreduce(np.sum(owned(u) ** 2)), rel=1e-14)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_network_projection_is_exact_for_linear_features(degree, shared_tmp):
    """sigma(z) = z: sigma(theta . x~) is linear in theta, in V_h, so f_{u_h} = f_N exactly."""
    rng = np.random.default_rng(0)
    net = Network(rng.uniform(-1.9, 1.9, (25, 1)), rng.uniform(-1.9, 1.9, 25), rng.standard_normal(25),
                  "monomial:1")
    problem = Problem(Space.box(1, 4, 2.0), "monomial:1", degree=degree)
    path = os.path.join(shared_tmp, "net.npz")
    if comm.rank == 0:
        net.save(path)
    comm.Barrier()
    u = initial_density(problem.H, "network:" + path)
    x = np.linspace(-1, 1, 7)[:, None]
    E = problem.functional(x, np.zeros(7))
    f = E.Phi.apply(u.x.petsc_vec)
    assert np.allclose(f, net(x), rtol=1e-10, atol=1e-10), (f, net(x))


# -- reporting ------------------------------------------------------------------------------------------


def test_energy_log_files(shared_tmp):
    problem, E = small_problem()
    flow = Flow(E, "L2", "implicit_euler")
    flow.stationary()
    result = flow.run(u0(problem), tau=1.0, growth=3.0, max_steps=6)
    io.write_log(shared_tmp, result, comm, extra=dict(note="x"))
    if comm.rank == 0:
        plot.energy_figure(os.path.join(shared_tmp, "energy.png"), result)
        table = np.genfromtxt(os.path.join(shared_tmp, "energy.csv"), delimiter=",", names=True)
        assert list(table.dtype.names) == list(io.LOG_COLUMNS) and len(table) == 7
        assert np.allclose(table["gap"], table["energy"] - flow.energy_star)
        doc = json.load(open(os.path.join(shared_tmp, "energy.json")))
        assert doc["note"] == "x" and doc["lam"] == E.alpha and len(doc["steps"]) == 7
        assert os.path.getsize(os.path.join(shared_tmp, "energy.png")) > 0
    flow.destroy()


# -- checkpoints ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme,metric,loss", [("implicit_euler", "L2", "squared"), ("bdf", "H1", "squared"),
                                                ("implicit_euler", "H1", "logistic"), ("bdf:3", "L2", "logistic")])
def test_restart_equals_the_uninterrupted_run(shared_tmp, scheme, metric, loss):
    problem, E = small_problem(alpha=1e-3, loss=loss)

    def make():
        flow = Flow(E, metric, scheme)
        flow.stationary()
        return flow

    flow = make()
    fp = ck.fingerprint(flow)
    d1 = os.path.join(shared_tmp, "full")
    U = u0(problem)
    full = flow.run(U, tau=0.01, growth=1.5, max_steps=9, checkpoints=ck.Checkpoints(d1, 3, fp))
    U_full = U.array_r.copy()
    flow.destroy()
    d2 = os.path.join(shared_tmp, "cut")
    flow = make()
    flow.run(u0(problem), tau=0.01, growth=1.5, max_steps=5, checkpoints=ck.Checkpoints(d2, 3, fp))
    flow.destroy()
    flow = make()
    checkpoint = ck.load_checkpoint(d2, flow, ck.fingerprint(flow))
    state, U = checkpoint.state, checkpoint.U
    assert state.step == 3 and os.path.basename(checkpoint.path) == f"{checkpoint.run}.step-00000003.npz"
    resumed = flow.run(U, tau=123.0, growth=1.5, max_steps=9, state=state)  # tau comes from the checkpoint
    flow.destroy()
    assert np.array_equal(U.array_r, U_full)  # bit for bit
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full.log]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.log] == strip


def test_damaged_checkpoints_are_refused(shared_tmp):
    problem, E = small_problem()
    flow = Flow(E, "L2", "implicit_euler")
    fp = ck.fingerprint(flow)
    d = os.path.join(shared_tmp, "ck")
    checkpoints = ck.Checkpoints(d, 2, fp)
    flow.run(u0(problem), tau=0.1, max_steps=4, checkpoints=checkpoints)
    good = os.path.join(d, f"{checkpoints.run}.step-00000004.npz")
    older = os.path.join(d, f"{checkpoints.run}.step-00000002.npz")
    comm.Barrier()

    def refused(path, match, fingerprint=fp):
        with pytest.raises(ck.CheckpointError, match=match):
            ck.load_checkpoint(path, flow, fingerprint)
        comm.Barrier()

    raw = open(good, "rb").read()  # read on every rank (the directory is shared)
    comm.Barrier()

    def write(content):
        if comm.rank == 0:
            with open(good, "wb") as f:
                f.write(content)
        comm.Barrier()

    write(raw[: len(raw) // 2])  # partial
    refused(d, "partial or damaged.*older checkpoint is .*step-00000002")
    flipped = bytearray(raw)
    flipped[len(flipped) // 2] ^= 0xFF
    write(bytes(flipped))  # one flipped byte inside the arrays
    refused(good, "partial or damaged|corrupt")
    if comm.rank == 0:  # a well-formed archive whose values were changed after the checksum was taken
        with np.load(older) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["u"] = arrays["u"] + 1e-12
        with open(good, "wb") as f:
            np.savez(f, **arrays)
    comm.Barrier()
    refused(good, "corrupt: its sha256 checksum does not match")
    other = dict(fp, alpha=0.5)
    refused(older, "different problem \\(alpha: checkpoint 0.05, this run 0.5\\)", other)
    refused(os.path.join(shared_tmp, "nothing-here"), "does not exist")
    empty = os.path.join(shared_tmp, "empty")
    if comm.rank == 0:
        os.makedirs(empty)
        open(os.path.join(empty, f".{checkpoints.run}.step-00000009.npz.tmp"), "wb").close()  # an interrupted write
    comm.Barrier()
    refused(empty, "no checkpoint in")
    assert ck.load_checkpoint(older, flow, fp).state.step == 2  # the older one is still good
    flow.destroy()


def test_checkpoints_belong_to_their_run(shared_tmp):
    """A second run in the same directory (as after flowfem flow --force) rotates only its own
    checkpoints, and the directory resolves to the newest checkpoint of the run started last."""
    problem, E = small_problem()
    flow = Flow(E, "L2", "implicit_euler")
    fp = ck.fingerprint(flow)
    d = os.path.join(shared_tmp, "ck")
    first, second = ck.Checkpoints(d, 2, fp), ck.Checkpoints(d, 2, fp)
    assert first.run < second.run  # ids sort by start
    flow.run(u0(problem), tau=0.1, max_steps=10, checkpoints=first)
    flow.run(u0(problem), tau=0.1, max_steps=4, checkpoints=second)
    names = sorted(os.listdir(d))
    assert names == sorted([f"{first.run}.step-00000008.npz", f"{first.run}.step-00000010.npz",
                            f"{second.run}.step-00000002.npz", f"{second.run}.step-00000004.npz"]), names
    resumed = ck.load_checkpoint(d, flow, fp)
    assert (resumed.run, resumed.state.step) == (second.run, 4)
    # continuing the second run (its id) keeps rotating its own files only
    flow.run(resumed.U, tau=0.1, max_steps=8, state=resumed.state, checkpoints=ck.Checkpoints(d, 2, fp, run=second.run))
    assert sorted(os.listdir(d)) == sorted([f"{first.run}.step-00000008.npz", f"{first.run}.step-00000010.npz",
                                            f"{second.run}.step-00000006.npz", f"{second.run}.step-00000008.npz"])
    flow.destroy()


# -- the command ----------------------------------------------------------------------------------------

ARGS = ["--data", "sin", "--n", "200", "--mesh-size", "10", "--radius", "3", "--alpha", "1e-3",
        "--weight", "gaussian:2", "--initial", "gaussian:1:2", "--tau", "0.05", "--growth", "1.6",
        "--max-steps", "14", "--no-plot"]


def _u(out):
    with np.load(os.path.join(out, "density.npz")) as f:
        return f["theta"], f["u"]


def _log(out):
    rows = json.load(open(os.path.join(out, "energy.json")))["steps"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _trajectory(out):
    """The times and values of trajectory.xdmf's frames, read with meshio."""
    import meshio

    with meshio.xdmf.TimeSeriesReader(os.path.join(out, "trajectory.xdmf")) as r:
        r.read_points_cells()
        frames = [r.read_data(k) for k in range(r.num_steps)]
    return [t for t, _, _ in frames], np.array([d["density"].ravel() for _, d, _ in frames])


def _same_trajectory(a, b):
    """Two runs' trajectories: the same strictly increasing times from 0, the same values, bit for bit."""
    (ta, ua), (tb, ub) = _trajectory(a), _trajectory(b)
    return ta == tb and ta[0] == 0.0 and bool(np.all(np.diff(ta) > 0)) and np.array_equal(ua, ub)


@pytest.mark.mpi
def test_sigkill_mid_checkpoint_then_resume(tmp_path):
    """A run killed (SIGKILL) while writing a checkpoint leaves the previous one intact; resuming from it
    gives the uninterrupted run's density bit for bit (same number of ranks)."""
    full = tmp_path / "full"
    r = run([FLOWFEM, "flow", *ARGS, "--checkpoint-every", "1", "--out", str(full)], timeout=300)
    assert r.returncode == 0, r.stderr
    out, ckdir = tmp_path / "killed", tmp_path / "ck"
    env = dict(os.environ, FLOWFEM_CHECKPOINT_PAUSE="0.4")
    proc = subprocess.Popen([FLOWFEM, "flow", *ARGS, "--checkpoint-every", "1", "--checkpoint-dir", str(ckdir),
                             "--out", str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until a write is in progress after at least two finished ones
        names = os.listdir(ckdir) if ckdir.exists() else []
        if any(n.endswith(".tmp") for n in names) and sum(".step-" in n and n.endswith(".npz") for n in names) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = sorted(os.listdir(ckdir))
    assert any(n.endswith(".tmp") for n in names), names  # killed mid-write
    assert not out.exists()  # no half-written output directory
    r = run([FLOWFEM, "flow", *ARGS, "--checkpoint-every", "1", "--resume", str(ckdir), "--out", str(out)],
            timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout
    theta1, u1 = _u(full)
    theta2, u2 = _u(out)
    assert np.array_equal(theta1, theta2) and np.array_equal(u1, u2)
    assert _log(full) == _log(out)
    # the frames up to the checkpoint once, none of those the killed run wrote after it twice
    assert _same_trajectory(full, out)
    assert not any(n.endswith(".tmp") for n in os.listdir(ckdir))  # the resumed run's writes all finished


@pytest.mark.mpi
def test_force_over_an_earlier_run_keeps_the_new_runs_checkpoints(tmp_path):
    """flowfem flow --force over an earlier run: the new run's checkpoints survive the rotation beside
    the earlier run's, and --resume continues the new run (not the earlier one, which went further)."""
    out, first = tmp_path / "out", tmp_path / "first"
    r = run([FLOWFEM, "flow", *ARGS, "--checkpoint-every", "2", "--out", str(out)], timeout=300)
    assert r.returncode == 0, r.stderr
    shutil.copytree(out, first)
    r = run([FLOWFEM, "flow", *ARGS, "--max-steps", "4", "--checkpoint-every", "2", "--force", "--out", str(out)],
            timeout=300)
    assert r.returncode == 0, r.stderr
    directory = str(out) + ".checkpoints"
    steps = sorted((n.split(".")[0], n.split(".")[1]) for n in os.listdir(directory) if ".step-" in n)
    runs = sorted({run_id for run_id, _ in steps})
    assert len(runs) == 2 and steps == [(runs[0], "step-00000012"), (runs[0], "step-00000014"),
                                        (runs[1], "step-00000002"), (runs[1], "step-00000004")], steps
    resumed = tmp_path / "resumed"
    r = run([FLOWFEM, "flow", *ARGS, "--checkpoint-every", "2", "--resume", directory, "--out", str(resumed)],
            timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {directory}/{runs[1]}.step-00000004.npz: step 4" in r.stdout
    assert np.array_equal(_u(first)[1], _u(resumed)[1]) and _log(first) == _log(resumed)
    assert _same_trajectory(first, resumed)
    frames = sorted(n for n in os.listdir(directory) if ".frames-" in n)  # not rotated: the chain back to step 0
    assert frames == sorted([f"{runs[0]}.frames-{k:08d}.npz" for k in range(2, 15, 2)]
                            + [f"{runs[1]}.frames-{k:08d}.npz" for k in range(2, 15, 2)]), frames
    # a resume with another first step or frame spacing would silently keep the run's (the steps come from the
    # checkpoint) or space its frames unevenly: refused, naming the option
    for option, value, stored in (("--tau", "0.02", "0.05"), ("--write-every", "3", "1")):
        args = [a if a != "0.05" or option != "--tau" else value for a in ARGS]
        extra = [option, value] if option == "--write-every" else []
        r = run([FLOWFEM, "flow", *args, *extra, "--resume", directory, "--out", str(tmp_path / "again")],
                timeout=300)
        key = option[2:].replace("-", "_")
        assert r.returncode == 2 and f"{key}: checkpoint {stored}" in r.stderr, r.stderr
        assert not os.path.exists(tmp_path / "again")


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2])
def test_ctrl_c_ends_with_the_resume_command(tmp_path, ranks):
    """SIGINT mid-run (to flowfem, or to mpirun, which passes it on): one line on stderr naming the command
    that resumes, exit status 130, no output directory, every checkpoint intact; that command finishes the
    run as if uninterrupted (bit for bit)."""
    full, out = tmp_path / "full", tmp_path / "out"
    r = run([FLOWFEM, "flow", *ARGS, "--out", str(full)], ranks=ranks, timeout=300)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, FLOWFEM_CHECKPOINT_PAUSE="0.3")  # slow checkpoint writes: the run lasts > 1 s
    launcher = [MPIRUN, "-n", str(ranks)] if ranks > 1 else []
    proc = subprocess.Popen([*launcher, FLOWFEM, "flow", *ARGS, "--checkpoint-every", "3", "--out", str(out)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    directory = tmp_path / "out.checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (directory.exists() and any(n.endswith(".npz") for n in os.listdir(directory))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr
    m = re.fullmatch(r"flowfem: interrupted at step (\d+), t = \S+; resume with: (.+)\n", stderr)
    assert m, stderr
    assert 3 <= int(m.group(1)) < 14
    assert not out.exists()
    names = os.listdir(directory)
    assert not any(n.endswith(".tmp") for n in names), names
    names = [n for n in names if ".step-" in n]  # beside them the trajectory frames saved with each
    for name in names:  # verified: checksum, completeness
        ck.read_checkpoint(str(directory / name))
    command = shlex.split(m.group(2))
    assert command[:len(launcher) + 2] == ["mpirun", "-n", str(ranks)][:len(launcher)] + ["flowfem", "flow"]
    assert command[-2:] == ["--resume", str(directory / sorted(names)[-1])]  # the checkpoint written where it stopped
    r = run([FLOWFEM, *command[len(launcher) + 1:]], ranks=ranks, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"step {m.group(1)}," in r.stdout
    assert np.array_equal(_u(full)[1], _u(out)[1]) and _log(full) == _log(out)
    assert _same_trajectory(full, out)


@pytest.mark.mpi
def test_one_and_two_ranks_agree_and_two_rank_restart_is_exact(tmp_path):
    args = [*ARGS, "--scheme", "bdf", "--max-steps", "30", "--tau", "0.01", "--step-rtol", "1e-12"]
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"r{ranks}"
        r = run([FLOWFEM, "flow", *args, "--out", str(outs[ranks])], ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"on {ranks} rank(s)" in r.stdout
    (t1, u1), (t2, u2) = _u(outs[1]), _u(outs[2])
    assert np.array_equal(np.round(t1, 10), np.round(t2, 10))
    assert np.linalg.norm(u1 - u2) <= 1e-8 * np.linalg.norm(u1)
    l1, l2 = _log(outs[1]), _log(outs[2])
    assert [r["t"] for r in l1] == pytest.approx([r["t"] for r in l2], rel=1e-8)
    assert [r["energy"] for r in l1] == pytest.approx([r["energy"] for r in l2], rel=1e-10)
    # two ranks: checkpoint, stop, resume = uninterrupted (bit for bit)
    full, cut, resumed = tmp_path / "full2", tmp_path / "cut2", tmp_path / "res2"
    for out, extra in ((full, ["--max-steps", "30"]), (cut, ["--max-steps", "17"])):
        r = run([FLOWFEM, "flow", *args, *extra, "--checkpoint-every", "5", "--out", str(out)], ranks=2,
                timeout=300)
        assert r.returncode == 0, r.stderr
    r = run([FLOWFEM, "flow", *args, "--checkpoint-every", "5", "--resume", str(cut) + ".checkpoints",
             "--out", str(resumed)], ranks=2, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "step 15" in r.stdout
    assert np.array_equal(_u(full)[1], _u(resumed)[1])
    assert _log(full) == _log(resumed)
    assert _same_trajectory(full, resumed)  # frames 0..15 saved with the checkpoints, 16..30 written after


@pytest.mark.mpi
def test_flow_command_outputs_and_errors(tmp_path):
    out = tmp_path / "out"
    r = run([FLOWFEM, "flow", *[a for a in ARGS if a != "--no-plot"], "--tol", "1e-6", "--max-steps", "60",
             "--out", str(out)], timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == [".flowfem-output.json", "density.bp", "density.h5", "density.npz",
                                       "density.xdmf", "energy.csv", "energy.json", "energy.png", "trajectory.h5",
                                       "trajectory.xdmf"]
    doc = json.load(open(out / "energy.json"))
    assert doc["final_error"] <= 1e-6 and doc["frames"] == doc["steps_taken"] + 1
    table = np.genfromtxt(out / "energy.csv", delimiter=",", names=True)
    assert np.all(np.diff(table["energy"]) <= 0) and table["error"][-1] <= 1e-6
    assert np.allclose(table["energy"], table["loss"] + table["regulariser"])
    assert r.stderr == ""  # no progress bar without a terminal
    assert "warning:" not in r.stdout  # it reached --tol
    # the final density starts a new flow (density:PATH), which is already converged
    r = run([FLOWFEM, "flow", *ARGS, "--initial", f"density:{out}/density.npz", "--max-steps", "1",
             "--out", str(tmp_path / "again")], timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "again" / "energy.json"))["steps"][0]["error"] <= 1e-6
    for extra, message in ((["--scheme", "rk4"], "unknown time stepper 'rk4'"),
                           (["--scheme", "theta:0.2"], "1/2 <= theta <= 1"),
                           (["--initial", "network:/nonexistent.npz"], "no file '/nonexistent.npz'"),
                           (["--growth", "0.5"], "--growth must be a finite number >= 1 (the step growth factor"),
                           (["--resume", str(tmp_path / "nothing")], "does not exist")):
        bad = tmp_path / "bad"
        r = run([FLOWFEM, "flow", *ARGS, *extra, "--out", str(bad)], timeout=120)
        assert r.returncode == 2, (extra, r.stderr)
        assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not bad.exists()


@pytest.mark.mpi
def test_flow_that_stops_at_max_steps_says_so(tmp_path):
    """A run ended by --max-steps before its tolerance prints one warning line with the distance and the
    energy gap still left and the option to change; with --no-reference it says the distance is unknown."""
    r = run([FLOWFEM, "flow", *ARGS, "--tol", "1e-6", "--max-steps", "2", "--out", str(tmp_path / "a")], timeout=300)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, r.stdout
    doc = json.load(open(tmp_path / "a" / "energy.json"))
    last = doc["steps"][-1]
    assert doc["stopped"].startswith("max_steps") and last["error"] > 1e-6
    assert warnings[0].startswith("warning: stopped at --max-steps 2 (t = ") and "before reaching --tol 1e-06" in warnings[0]
    assert f"||u - u*|| / ||u*|| = {last['error']:.3g} and E - E* = {last['gap']:.3g}" in warnings[0]
    assert "--growth" in warnings[0] and "--max-steps" in warnings[0].split(";")[1]
    r = run([FLOWFEM, "flow", *ARGS, "--max-steps", "2", "--no-reference", "--out", str(tmp_path / "b")], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "before reaching the stationary state: the distance to u* is not known (--no-reference)" in r.stdout
    # constant steps: it advises growing ones, and the advice runs as given (it advised --tol, which
    # --no-reference refuses; found by a newcomer)
    for reference in ([], ["--no-reference"]):
        r = run([FLOWFEM, "flow", *ARGS, "--growth", "1", "--max-steps", "2", *reference, "--out",
                 str(tmp_path / f"c{len(reference)}")], timeout=300)
        advice = r.stdout.split("e.g. ")[1].split(" (or")[0].split()
        assert ("--tol" in advice) == (not reference), r.stdout
        r = run([FLOWFEM, "flow", *ARGS, "--max-steps", "40", *reference, *advice, "--out",
                 str(tmp_path / f"d{len(reference)}")], timeout=300)
        assert r.returncode == 0 and "warning" not in r.stdout, (advice, r.stdout, r.stderr)


def test_growing_steps_that_overflow_end_the_run_with_finite_times():
    """Steps growing geometrically towards a tol the solver cannot attain overflowed: tau and then t
    became inf (t = inf in the log, which strict JSON refuses, and the run went on to max_steps).
    The run now ends before the step that would overflow, saying why, with every time finite."""
    x = np.linspace(-1, 1, 50)
    flow = Problem(Space.box(1, 6, 4.0), alpha=1e-3).flow(x, np.sin(3 * x))
    flow.stationary()
    result = flow.run(flow.vector(), tau=1.0, growth=1e100, tol=1e-300)
    assert result.stopped.startswith("the next step overflows") and "below what the linear solver attains" in result.stopped
    assert all(np.isfinite(rec["t"]) and np.isfinite(rec["tau"]) for rec in result.log) and len(result.log) < 10
    assert result.log[-1]["error"] < 1e-6  # the last steps were stationary solves (to the flow's linear rtol)
    flow.destroy()  # its solvers' options would stay in PETSc's database for the tests after it
