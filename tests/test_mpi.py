"""Parallel runs: the rank-agnostic test files under mpirun -n 2, and rank-independence of the solution."""

import glob
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, MPIRUN, ROOT, run, run_mpi_script
from flowfem.files import check_writable

pytestmark = pytest.mark.mpi



def parallel_files() -> list[str]:
    """The test files marked ``parallel`` (every test collective-safe and rank-count agnostic)."""
    marked = re.compile(r"^pytestmark = .*pytest\.mark\.parallel", re.M)
    return sorted(os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
                  if marked.search(open(f).read()))


def test_suite_passes_under_mpirun_2():
    files = parallel_files()
    assert len(files) >= 11, files  # a marker lost in an edit would silently shrink the MPI suite
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], ranks=2, timeout=1800)
    summary = re.findall(r"(\d+) passed", r.stdout)
    assert r.returncode == 0 and len(summary) == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "failed" not in r.stdout and "error" not in r.stdout.lower().split("passed")[-1]


SCRIPT = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import data, io
from flowfem.problem import Problem
from flowfem.space import Space

domain, activation, solver, out = sys.argv[1:5]
d = 2 if domain == "sphere" else 1
train = data.synthetic("two_moons" if d == 2 else "sin", 300, seed=5)
space = Space.make(domain, d, {"box": 24, "sphere": 2, "ball": 0.4}[domain], radius=3.0)
result = Problem(space, activation, "gaussian:2", alpha=1e-4, kappa=0.5, degree=2).fit(
    train.x, train.y, solver=solver, rtol=1e-13)
theta, u = io.gather_dofs(result.density)
f = result.predict(train.x)
energy = result.energy
if MPI.COMM_WORLD.rank == 0:
    np.savez(out, theta=theta, u=u, f=f, energy=energy, ranks=MPI.COMM_WORLD.size)
"""


@pytest.mark.parametrize("domain,activation,solver", [
    ("box", "relu", "cg"), ("box", "tanh", "direct"), ("sphere", "relu", "cg"), ("ball", "softplus", "cg")])
def test_one_and_two_ranks_agree(tmp_path, domain, activation, solver):
    script = tmp_path / "solve.py"
    script.write_text(SCRIPT)
    results = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}.npz"
        r = run([sys.executable, str(script), domain, activation, solver, str(out)], ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stderr
        results.append(np.load(out))
    one, two = results
    assert int(two["ranks"]) == 2
    assert np.array_equal(np.round(one["theta"], 10), np.round(two["theta"], 10))
    assert np.linalg.norm(one["u"] - two["u"]) <= 1e-8 * np.linalg.norm(one["u"])
    assert np.linalg.norm(one["f"] - two["f"]) <= 1e-8 * np.linalg.norm(one["f"])
    assert float(one["energy"]) == pytest.approx(float(two["energy"]), rel=1e-10)


ONE_RANK_READS = """
import flowfem
from mpi4py import MPI
from flowfem import data
from flowfem.problem import Problem
from flowfem.space import Space

train = data.synthetic("sin", 200, seed=0)
result = Problem(Space.box(1, 16, 4.0), "relu", alpha=1e-4).fit(train.x, train.y)
if MPI.COMM_WORLD.rank == 0:  # no other rank takes part: these must not communicate
    loss, reg = result.parts
    assert loss > 0 and reg > 0 and result.iterations > 0 and result.residual < 1e-9
    assert result.density.x.array.size > 0 and result.setup_seconds > 0
    print(f"E_alpha = {result.energy:.6e}")
f = result.predict(train.x)  # collective: every rank
assert f.shape == (200,)
"""


def test_result_values_can_be_read_on_one_rank(tmp_path):
    """``if rank == 0: print(result.energy)`` finishes (it hung while energy was computed on demand)."""
    run_mpi_script(tmp_path / "one_rank.py", ONE_RANK_READS, timeout=120)


def test_one_blas_thread_per_rank_unless_the_user_sets_one():
    """P ranks x T BLAS threads on P cores oversubscribe: under mpirun flowfem limits BLAS to one
    thread per rank (even with NumPy imported first), and leaves a user's setting alone."""
    code = ("import numpy, flowfem, threadpoolctl; "
            "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    r = run([sys.executable, "-c", code], ranks=2, env=env)
    assert r.returncode == 0 and re.findall(r"\[\d+\]", r.stdout) == ["[1]", "[1]"], r.stdout + r.stderr  # lines may interleave
    r = run([sys.executable, "-c", code], ranks=2, env=dict(env, OPENBLAS_NUM_THREADS="2"))
    assert r.returncode == 0 and re.findall(r"\[\d+\]", r.stdout) == ["[2]", "[2]"], r.stdout + r.stderr


# -- an error on any rank ends every rank: one line, exit status 2, never a hang ----------------

FAILING = """
import sys
import flowfem
from mpi4py import MPI
from flowfem.mpi import on_root

comm = MPI.COMM_WORLD
case = sys.argv[1]


def fail(kind, text):
    raise {"RuntimeError": RuntimeError, "MemoryError": MemoryError, "ImportError": ImportError,
           "KeyError": KeyError, "Exception": Exception, "ValueError": ValueError}[kind](text)


kind, where = case.split("@")
if where == "on_root":  # rank 0 fails inside on_root: every rank raises the CollectiveError
    on_root(comm, lambda: fail(kind, f"{kind} in on_root"))
elif where == "every":
    fail(kind, f"{kind} on every rank")
elif comm.rank == int(where):  # the other rank waits in a collective for this one
    fail(kind, f"{kind} on rank {where} only")
else:
    comm.bcast(None, root=int(where)) if where == "0" else comm.Barrier()
print("not reached", flush=True)
"""

CLI_FAILING = """
import sys
import flowfem
from mpi4py import MPI
from flowfem import cli


def broken(args, comm):  # an unexpected error on rank 1 while rank 0 waits in a collective
    if comm.rank == 1:
        raise RuntimeError("no mesh today")
    comm.Barrier()


cli.cmd_mesh = broken
sys.exit(cli.main(["mesh", "box", "--out", "never.msh"]))
"""


def _own_lines(stderr: str) -> list[str]:
    """Standard error without MPICH's own line ``Abort(2) on node ...`` (printed by MPI_Abort)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Abort(")]


@pytest.mark.parametrize("case, line", [
    ("RuntimeError@1", "RuntimeError: RuntimeError on rank 1 only [rank 1 of 2;"),
    ("RuntimeError@on_root", "RuntimeError: RuntimeError in on_root [rank 0 of 2;"),
    ("MemoryError@0", "MemoryError: MemoryError on rank 0 only [rank 0 of 2;"),
    ("MemoryError@on_root", "MemoryError: MemoryError in on_root"),
    ("ImportError@1", "ImportError: ImportError on rank 1 only"),
    ("KeyError@0", "KeyError: 'KeyError on rank 0 only'"),
    ("Exception@on_root", "Exception: Exception in on_root"),  # what gmsh raises
    ("ValueError@1", "ValueError on rank 1 only [rank 1 of 2;"),
    ("ValueError@every", "ValueError on every rank [rank 0 of 2;"),
])
def test_an_uncaught_exception_on_any_rank_ends_every_rank(tmp_path, case, line):
    """Before, a RuntimeError (MemoryError, ImportError, ...) on one rank left the other waiting forever."""
    script = tmp_path / "fail.py"
    script.write_text(FAILING)
    r = run([sys.executable, str(script), case], ranks=2, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "not reached" not in r.stdout
    lines = _own_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith(line) and "FLOWFEM_DEBUG=1" in lines[0], r.stderr
    if "every" in case or "on_root" in case:  # every rank failed: a normal end, no MPI_Abort
        assert "Abort(" not in r.stderr, r.stderr


def test_flowfem_debug_prints_the_traceback(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAILING)
    r = run([sys.executable, str(script), "RuntimeError@1"], ranks=2, timeout=120,
            env=dict(os.environ, FLOWFEM_DEBUG="1"))
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr, r.stderr
    assert 'raise {"RuntimeError": RuntimeError' in r.stderr and "RuntimeError on rank 1 only" in r.stderr


def test_the_command_ends_every_rank_on_an_unexpected_error(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(CLI_FAILING)
    r = run([sys.executable, str(script)], ranks=2, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert _own_lines(r.stderr) == ["flowfem: error: RuntimeError: no mesh today"], r.stderr
    assert os.listdir(tmp_path) == ["cli.py"]


OUTPUT_FAILING = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import outputs

comm = MPI.COMM_WORLD
where, out = sys.argv[1:3]
with outputs.output_directory(out, comm) as tmp:
    if where == "every" or comm.rank == int(where):
        raise RuntimeError("writing failed")
    comm.gather(np.ones(3), root=0)  # the other rank is in a collective of the block
"""


@pytest.mark.parametrize("where", ["1", "0", "every"])
def test_an_error_inside_an_output_directory_ends_every_rank(tmp_path, where):
    """Before, the failing rank met the others in a different collective (allreduce against gather)
    on its way out of the block, and both waited forever."""
    script = tmp_path / "out.py"
    script.write_text(OUTPUT_FAILING)
    r = run([sys.executable, str(script), where, str(tmp_path / "out")], ranks=2, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = _own_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("RuntimeError: writing failed"), r.stderr
    assert not (tmp_path / "out").exists()
    if where != "1":  # rank 0 failed: it removed the temporary directory and the lock
        assert os.listdir(tmp_path) == ["out.py"]
    else:  # the run was aborted: the next run on the same target cleans up after it
        r = run([sys.executable, str(script), "-1", str(tmp_path / "out")], ranks=2, timeout=120)
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(tmp_path)) == ["out", "out.py"]


# -- a mesh with fewer cells than ranks ---------------------------------------------------------

FEW_CELLS = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import data, io
from flowfem.problem import Problem
from flowfem.space import MeshArrays, Space

case, activation, solver, out = sys.argv[1:5]
root = MPI.COMM_WORLD.rank == 0
if case == "triangle":
    arrays = MeshArrays(np.array([[-3.0, -3], [3, -3], [-3, 3]]), np.array([[0, 1, 2]]), "triangle", 1, "file")
else:
    arrays = MeshArrays(np.array([[-2.0, -2, -2], [2, -2, -2], [-2, 2, -2], [-2, -2, 2]]), np.array([[0, 1, 2, 3]]),
                        "tetrahedron", 1, "file")
space = Space(arrays if root else None)
train = data.synthetic("two_moons" if space.input_dim == 2 else "sin", 200, seed=3)
result = Problem(space, activation, "uniform", alpha=1e-3, kappa=1.0, degree=2).fit(
    train.x, train.y, solver=solver, rtol=1e-13)
theta, u = io.gather_dofs(result.density)
f = result.predict(train.x)
energy = result.energy
if root:
    np.savez(out, theta=theta, u=u, f=f, energy=energy)
"""


@pytest.mark.parametrize("case, activation, solver", [
    ("triangle", "relu", "cg"), ("tetrahedron", "relu", "direct"), ("triangle", "tanh", "direct")])
def test_ranks_that_own_no_cells_contribute_nothing(tmp_path, case, activation, solver):
    """One cell on 2 and 3 ranks: before, the ranks without cells failed (a reshape of an empty array)
    and the others waited forever; now the solution is that of one rank."""
    script = tmp_path / "few.py"
    script.write_text(FEW_CELLS)
    results = []
    for ranks in (1, 2, 3):
        out = tmp_path / f"r{ranks}.npz"
        r = run([sys.executable, str(script), case, activation, solver, str(out)], ranks=ranks, timeout=120)
        assert r.returncode == 0, r.stderr
        results.append(np.load(out))
    one = results[0]
    for other in results[1:]:
        assert np.array_equal(np.round(one["theta"], 10), np.round(other["theta"], 10))
        assert np.linalg.norm(one["u"] - other["u"]) <= 1e-8 * np.linalg.norm(one["u"])
        assert np.linalg.norm(one["f"] - other["f"]) <= 1e-8 * np.linalg.norm(one["f"])
        assert float(one["energy"]) == pytest.approx(float(other["energy"]), rel=1e-10)


# -- files saved from every rank at once ---------------------------------------------------------

SAVING = """
import os
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import data
from flowfem.network import Network
from flowfem.space import box_arrays

comm = MPI.COMM_WORLD
directory = sys.argv[1]
rng = np.random.default_rng(0)  # the same network and data on every rank
net = Network(rng.standard_normal((50, 2)), rng.standard_normal(50), rng.standard_normal(50), "relu")
ds = data.synthetic("two_moons", 500, seed=1)
mesh = box_arrays(1, 6, 2.0)
for _ in range(30):  # every rank, the same paths, at the same time
    net.save(os.path.join(directory, "net.npz"))
    data.save(ds, os.path.join(directory, "data.csv"))
    data.save(ds, os.path.join(directory, "data.npz"))
    mesh.write(os.path.join(directory, "mesh.msh"))
if comm.rank == 0:  # one rank alone: no collective, no hang
    net.save(os.path.join(directory, "root.npz"))
comm.Barrier()
back = Network.load(os.path.join(directory, "net.npz"))
assert all(np.array_equal(getattr(back, k), getattr(net, k)) for k in ("W", "b", "a"))
assert np.array_equal(Network.load(os.path.join(directory, "root.npz")).W, net.W)
assert np.allclose(data.load(os.path.join(directory, "data.csv")).x, ds.x, rtol=1e-15)
assert np.array_equal(data.load(os.path.join(directory, "data.npz")).x, ds.x)
"""


def test_every_rank_may_save_the_same_file(tmp_path):
    """Before, the ranks shared one temporary name: one renamed the other's half-written file, or
    found it gone (2 of 20 runs failed, then one hung)."""
    script = tmp_path / "save.py"
    script.write_text(SAVING)
    out = tmp_path / "out"
    out.mkdir()
    r = run([sys.executable, str(script), str(out)], ranks=2, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    names = ["data.csv", "data.npz", "mesh.msh", "net.npz", "root.npz"]
    assert sorted(os.listdir(out)) == sorted(names + [f".{n}.flowfem" for n in names])  # no temporary files
    for name in names:  # each record is of the content that won (--force may replace it)
        check_writable(out / name, force=True)


# -- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_during_a_linear_solve_ends_every_rank_together(tmp_path):
    """SIGINT to mpirun (which passes it to both ranks) inside CG: rank 0 took it in a MatMult and left
    KSPSolve while rank 1 waited in a dot product, so it was a PETSc error 101, an MPI_Abort and a lock
    left. Every rank now stops at the same iteration: one line, status 130, nothing left, no abort."""
    out = tmp_path / "out"
    cmd = [MPIRUN, "-n", "2", os.path.join(BIN, "flowfem"), "solve", "--data", "sin", "--n", "5000", "--mesh-size",
           "256", "--rtol", "1e-10", "--no-plot", "--quiet", "--petsc-option", "ksp_monitor=", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # rank 0's "0 KSP Residual norm ...": CG has started (~37 iterations)
            if "KSP Residual norm" in line:
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    lines = [ln for ln in _own_lines(stderr) if not ln.startswith("[mpiexec@")]  # mpiexec: "Sending Ctrl-C ..."
    assert lines == ["flowfem: interrupted"] and "Abort(" not in stderr, stderr
    assert "wrote" not in stdout
    assert os.listdir(tmp_path) == []  # no output, temporary directory or lock


CTRL_C_APART = """
import os
import signal
import sys
from mpi4py import MPI
from flowfem import cli, stationary

mult, calls = stationary._NormalOperator.mult, [0]


def mult_then_ctrl_c(self, mat, x, y):  # rank 1's SIGINT arrives one MatMult (one CG iteration) later
    calls[0] += 1
    if calls[0] == 5 + MPI.COMM_WORLD.rank:
        os.kill(os.getpid(), signal.SIGINT)
    mult(self, mat, x, y)


stationary._NormalOperator.mult = mult_then_ctrl_c
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ctrl_c_reaching_the_ranks_at_different_iterations_stops_them_together(tmp_path):
    """Rank 0 left CG on its Ctrl-C while rank 1, whose Ctrl-C was not yet delivered, waited in the next
    dot product: 5 s later an MPI_Abort. Both now stop at the same iteration and end normally."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_APART)
    r = run([sys.executable, str(script), "solve", "--data", "sin", "--n", "500", "--mesh-size", "32",
             "--no-plot", "--quiet", "--out", str(tmp_path / "out")], ranks=2, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 130, (r.returncode, r.stdout, r.stderr)
    assert r.stderr == "flowfem: interrupted\n", r.stderr  # no "Abort(130) on node ..."
    assert os.listdir(tmp_path) == ["ctrl_c.py"]  # no output, temporary directory or lock


CTRL_C_AT_THE_END = """
import os
import signal
import sys
import time
from mpi4py import MPI
from flowfem import mpi

comm = MPI.COMM_WORLD
# each rank reports in its own file: two ranks printing to mpirun's one stdout can interleave mid-line
with open(f"{sys.argv[1]}.{comm.rank}", "w") as report:
    try:
        with mpi.CollectiveInterrupt(comm):
            mpi.check_interrupt(comm)  # the run's last check
            if comm.rank == 1:
                os.kill(os.getpid(), signal.SIGINT)  # after it: only the flag is set
            time.sleep(0.1)
        print("not interrupted", file=report)
    except KeyboardInterrupt:
        print("interrupted", file=report)
    print("restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          mpi.CollectiveInterrupt.current is None, file=report)
"""


def test_a_ctrl_c_after_the_last_check_is_not_lost(tmp_path):
    """A Ctrl-C that reached one rank after the run's last collective check only set its flag; leaving
    the block dropped it (the final check ran after the block was no longer current), so the command
    ended 0 as if never interrupted. Now leaving the block raises KeyboardInterrupt on every rank,
    and Python's own SIGINT handler is back."""
    script = tmp_path / "end.py"
    script.write_text(CTRL_C_AT_THE_END)
    report = tmp_path / "report"
    r = run([sys.executable, str(script), str(report)], ranks=2, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    for rank in (0, 1):
        assert Path(f"{report}.{rank}").read_text() == "interrupted\nrestored True True\n", (rank, r.stderr)

# -- a full disk ------------------------------------------------------------------------------


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_full_disk_ends_every_rank_with_one_line(tmp_path, ranks):
    """A 244 kB file system: 2 ranks hung (rank 0 in the output directory's allreduce, rank 1 inside
    an ADIOS2 collective). Needs mount(2): root outside a container, as on the CI machine."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=244k", "tmpfs", str(full)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root outside a container")
    try:
        r = run([os.path.join(BIN, "flowfem"), "solve", "--data", "sin", "--mesh-size", "64", "--no-plot",
                 "--out", str(full / "out")], ranks=ranks, timeout=120)
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
        lines = _own_lines(r.stderr)
        assert len(lines) == 1 and "is full" in lines[0] and "\x1b[" not in lines[0], r.stderr
        assert not (full / "out").exists()
    finally:
        subprocess.run(["umount", "--lazy", str(full)], check=True)  # an aborted rank may still be exiting


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_disk_filling_up_under_the_trajectory_ends_with_one_line(tmp_path, ranks):
    """A flow whose trajectory (XDMF + HDF5) outgrows a 1.5 MB file system: HDF5 would end the process at
    the first write that fails (an assertion, no exception), so every frame checks the room first: one
    line saying the file system is full, exit status 2, nothing left behind."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(full)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root outside a container")
    try:
        r = run([os.path.join(BIN, "flowfem"), "flow", "--data", "sin", "--mesh-size", "32", "--max-steps", "300",
                 "--fixed-steps", "--tau", "0.05", "--no-plot", "--quiet", "--out", str(full / "out")],
                ranks=ranks, timeout=300)
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr[-2000:])
        lines = _own_lines(r.stderr)
        assert len(lines) == 1 and "file system is full" in lines[0] and "trajectory.xdmf" in lines[0], r.stderr
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", "--lazy", str(full)], check=True)
