"""Progress bars of the flowfem command: on a terminal (a pseudo-terminal as standard error) solve and flow
show theirs; with standard error a pipe, --quiet or FLOWFEM_PROGRESS=0 nothing extra is printed; under
mpirun -n 2 with FLOWFEM_PROGRESS=1 one bar is drawn, by rank 0."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios

import pytest

from conftest import BIN, ROOT, run

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes; not rerun inside the MPI suite
SOLVE = ["solve", "--data", "sin", "--n", "300", "--mesh-size", "16", "--alpha", "1e-5", "--no-plot"]
FLOW = ["flow", "--data", "sin", "--n", "200", "--mesh-size", "10", "--growth", "3", "--tol", "1e-6", "--no-plot"]


def on_terminal(args, tmp_path, **env) -> tuple[int, str, str]:
    """Run flowfem ARGS with standard error on a pseudo-terminal of 120 columns (standard output to a
    file); returns (exit status, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    out = tmp_path / "stdout.txt"
    environment = {k: v for k, v in os.environ.items() if k != "FLOWFEM_PROGRESS"} | env
    with open(out, "w") as stdout:
        proc = subprocess.Popen([FLOWFEM, *args], stdout=stdout, stderr=slave, stdin=subprocess.DEVNULL,
                                cwd=ROOT, env=environment)
    os.close(slave)
    received = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    return proc.wait(timeout=300), out.read_text(), received.decode(errors="replace")


def test_solve_shows_cg_iterations_on_a_terminal(tmp_path):
    status, stdout, term = on_terminal([*SOLVE, "--out", str(tmp_path / "a")], tmp_path)
    assert status == 0, term
    its = int(re.search(r"^cg \(nystrom preconditioner, basis of \d+\): (\d+) iterations", stdout, re.M).group(1))
    assert f"CG: {its}it" in term and "||r||/||b||" in term and "(rtol 1e-10)" in term, term
    # the same command with standard error a pipe: the same standard output, nothing on standard error
    r = run([FLOWFEM, *SOLVE, "--out", str(tmp_path / "b")])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    timing = "s on 1 rank(s)"  # the wall times differ; the rest is the same
    strip = [ln.split(", ")[0] if timing in ln else ln.replace(str(tmp_path / "b"), str(tmp_path / "a"))
             for ln in r.stdout.splitlines()]
    assert strip == [ln.split(", ")[0] if timing in ln else ln for ln in stdout.splitlines()]


def test_flow_shows_steps_time_and_energy_on_a_terminal(tmp_path):
    status, stdout, term = on_terminal([*FLOW, "--out", str(tmp_path / "a")], tmp_path)
    assert status == 0, term
    steps = int(stdout.split(" metric: ")[1].split(" steps")[0])
    assert "flow: 100%" in term and f"step {steps}, t " in term and ", E " in term and ", err " in term, term
    assert term.count("CG: 0it") == 1  # the stationary solve's; the steps' linear solves have no bars


@pytest.mark.parametrize("how", ["--quiet", "FLOWFEM_PROGRESS=0"])
def test_no_bar_when_turned_off(tmp_path, how):
    for name, args in (("solve", SOLVE), ("flow", FLOW)):
        quiet = [how] if how.startswith("--") else []
        env = dict([how.split("=")]) if "=" in how else {}
        status, _, term = on_terminal([*args, *quiet, "--out", str(tmp_path / name)], tmp_path, **env)
        assert status == 0 and term == "", term


def test_under_mpirun_one_bar_with_flowfem_progress_1(tmp_path):
    """The ranks' standard error is a pipe under mpirun: no bar unless FLOWFEM_PROGRESS=1, then rank 0's only."""
    r = run([FLOWFEM, *SOLVE, "--out", str(tmp_path / "a")], ranks=2)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = run([FLOWFEM, *SOLVE, "--out", str(tmp_path / "b")], ranks=2, env=dict(os.environ, FLOWFEM_PROGRESS="1"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("CG: 0it") == 1 and "||r||/||b||" in r.stderr, r.stderr


def test_compare_prints_nothing_extra_without_a_terminal(tmp_path):
    r = run([FLOWFEM, "compare", "--data", "sin", "--n", "100", "--widths", "4", "--seeds", "0", "--steps", "10",
             "--mesh-size", "6", "--no-plot", "--out", str(tmp_path / "c")])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("| solver |"), r.stdout[:300]  # the table first: no lines of progress
    status, _, term = on_terminal(["compare", "--data", "sin", "--n", "100", "--widths", "4", "--seeds", "0",
                                   "--steps", "10", "--mesh-size", "6", "--no-plot", "--out", str(tmp_path / "d")],
                                  tmp_path)
    # the FE solve, the quadrature and refit readouts, the gd and adam runs and their densities
    assert status == 0 and "compare: 100%" in term and "7/7 [" in term, term
