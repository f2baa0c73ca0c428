"""Found by session 11's newcomer, who reads flowfem's outputs in their own tools.

Standard output closed by its reader (``flowfem predict ... | head``): the command ends quietly with
the status of a process killed by SIGPIPE, 141, as ``cat`` does and as ``mpirun`` reports for it.
Before, every command said ``flowfem: error: BrokenPipeError: [Errno 32] Broken pipe`` with status 2
(``--version``: a traceback, status 1).
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from conftest import closed_stdout
from flowfem.activations import activation
from flowfem.mpi import on_root
from flowfem.network import Network

CLOSED = 128 + signal.SIGPIPE  # a shell's status of a process that SIGPIPE ended


@pytest.fixture
def networks(tmp_path):
    """A regression network, a classifier of three classes and inputs for both (d = 2)."""
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(8, 2)), rng.normal(size=8)
    Network(W, b, rng.normal(size=8), activation("tanh")).save(tmp_path / "net.npz")
    Network(W, b, rng.normal(size=(8, 3)), activation("tanh"), classes=np.array([0, 1, 2]),
            loss="softmax").save(tmp_path / "classes.npz")
    # enough rows that the CSV outgrows any buffer: the write itself fails, not only the exit's flush
    np.savetxt(tmp_path / "x.csv", rng.normal(size=(20000, 2)), delimiter=",", header="x1,x2", comments="")
    return tmp_path


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="starts flowfem in a subprocess of one rank")
@pytest.mark.parametrize("argv", [
    ["predict", "--network", "net.npz", "--data", "x.csv"],  # the CSV on stdout, the summary on stderr
    ["predict", "--network", "classes.npz", "--data", "x.csv", "--proba"],  # a classifier's labels
    ["export", "--network", "net.npz", "--format", "onnx"],  # the summary line after the file
    ["--version"],  # printed while the options are parsed
])
@pytest.mark.parametrize("unbuffered", [False, True])  # the write that fails: the last flush, or the first print
def test_a_closed_standard_output_ends_the_command_quietly(networks, argv, unbuffered):
    r = closed_stdout(argv, networks, unbuffered)
    assert r.returncode == CLOSED and r.stderr == "", (r.returncode, r.stderr)


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="starts flowfem in a subprocess of one rank")
def test_a_closed_standard_output_after_help_is_quiet_too(networks):
    """Buffered, --help's text is written by the flush after argparse's SystemExit (it was 120 and a Python
    message). Unbuffered, argparse itself drops the failed write and exits 0: its own rule, left as is."""
    r = closed_stdout(["solve", "--help"], networks)
    assert r.returncode == CLOSED and r.stderr == "", (r.returncode, r.stderr)


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="starts flowfem in a subprocess of one rank")
def test_the_file_written_before_the_closed_summary_is_whole(networks):
    r = closed_stdout(["export", "--network", "net.npz", "--format", "onnx"], networks)
    assert r.returncode == CLOSED, r.stderr
    net = Network.load(networks / "net.npz")
    import onnxruntime

    x = np.linspace(-2.0, 2.0, 10).reshape(5, 2)
    f = onnxruntime.InferenceSession(str(networks / "net.onnx")).run(None, {"x": x})[0][:, 0]
    assert np.allclose(f, net.predict(x), rtol=1e-12, atol=1e-12)


def test_on_root_keeps_a_closed_pipe_a_closed_pipe_on_every_rank():
    """on_root turns rank 0's errors into one CollectiveError everywhere, but a closed pipe stays one: the
    command ends quietly on it rather than calling it an error."""
    def write_to_closed_pipe():
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        on_root(MPI.COMM_WORLD, write_to_closed_pipe)


CLOSED_UNDER_MPI = """
import sys
import flowfem
from flowfem import cli
from flowfem.mpi import on_root


def closed(args, comm):
    if sys.argv[1] == "on_root":  # the CSV written inside on_root: every rank hears of the closed pipe
        on_root(comm, lambda: (_ for _ in ()).throw(BrokenPipeError(32, "Broken pipe")))
    elif comm.rank == 0:  # rank 0's print fails while rank 1 waits for it in a collective
        raise BrokenPipeError(32, "Broken pipe")
    comm.Barrier()


cli.cmd_mesh = closed
sys.exit(cli.main(["mesh", "box", "--out", "never.msh"]))
"""


@pytest.mark.mpi
@pytest.mark.parametrize("where", ["on_root", "rank0"])
def test_a_closed_pipe_under_mpirun_ends_every_rank(tmp_path, where):
    """Never a hang: every rank ends with the closed pipe's status, whichever rank met it."""
    from conftest import run

    script = tmp_path / "closed.py"
    script.write_text(CLOSED_UNDER_MPI)
    r = run([sys.executable, str(script), where], ranks=2, timeout=120, cwd=tmp_path)
    assert r.returncode == CLOSED, (r.returncode, r.stdout, r.stderr)
    assert "flowfem: standard output was closed" in r.stderr and "error" not in r.stderr, r.stderr
    assert not (tmp_path / "never.msh").exists()
