"""Session 11's breaker: faults of the session's changes found with a hostile user's inputs.

* A closed standard output (``flowfem solve ... | head -1``) of a command that loaded PETSc: PETSc's
  initialisation replaces Python's SIG_IGN of SIGPIPE with its own handler, so the write does not raise
  BrokenPipeError (which main ends on quietly, status 141) but prints six ``PETSC ERROR`` lines and
  MPI_Abort(59), leaving the output's lock file behind.
* A program of the user's run as ``python -m myexp -m flowfem`` (its own option -m) took flowfem's
  SIGINT handler: Ctrl-C ended it with status 130 instead of raising KeyboardInterrupt in it.
* A demo checked its --out only after its work (minutes at full size), where the flowfem command
  claims it first; ``--out .`` or ``--out ''`` in an empty directory replaced the working directory
  itself (the shell then stands in a deleted directory), the demo then failing after writing.
* A demo's usage error was argparse's two lines, printed by every rank under mpirun.
* An integer option of more than 4300 digits was refused with Python's advice to call
  sys.set_int_max_str_digits().
"""

import os
import signal
import subprocess
import sys

import pytest
from mpi4py import MPI

from conftest import ROOT, closed_stdout, refused_by_cli
from flowfem import arguments, outputs

CLOSED = 128 + signal.SIGPIPE
serial = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="starts flowfem in a subprocess of one rank")


# -- a closed standard output after PETSc was loaded -------------------------------------------------------------
@serial
@pytest.mark.parametrize("argv", [
    ["solve", "--data", "sin", "--n", "200", "--mesh-size", "8", "--out", "o"],
    ["flow", "--data", "sin", "--n", "200", "--mesh-size", "8", "--max-steps", "2", "--out", "o"],
])
def test_a_closed_standard_output_ends_a_petsc_command_quietly(tmp_path, argv):
    r = closed_stdout(argv, tmp_path)
    assert (r.returncode, r.stderr) == (CLOSED, ""), (r.returncode, r.stderr)
    assert not (tmp_path / ".o.lock").exists()  # the run ended through flowfem, which releases its claim


@serial
def test_a_closed_standard_output_ends_a_demo_quietly(tmp_path):
    r = closed_stdout(["--quick", "--out", "o"], tmp_path, command=(os.path.join(ROOT, "demos", "regression_1d.py"),))
    assert (r.returncode, r.stderr) == (CLOSED, ""), (r.returncode, r.stderr)
    assert not (tmp_path / ".o.lock").exists()


# -- SIGINT of a program that imports flowfem ----------------------------------------------------------------------
PACKAGE_INIT = "import flowfem  # noqa: F401\n"
PACKAGE_MAIN = """import signal
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("KeyboardInterrupt reached the program")
"""


@pytest.mark.parametrize("own", [["-m", "flowfem"], ["-mflowfem.yaml"], ["--model", "-m", "flowfem.cli"]])
def test_a_programs_own_dash_m_flowfem_leaves_its_sigint_alone(tmp_path, own):
    """``python -m myexp -m flowfem``: the -m after the module is the program's, not the interpreter's."""
    (tmp_path / "myexp").mkdir()
    (tmp_path / "myexp" / "__init__.py").write_text(PACKAGE_INIT)
    (tmp_path / "myexp" / "__main__.py").write_text(PACKAGE_MAIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    r = subprocess.run([sys.executable, "-m", "myexp"] + own, capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0 and "KeyboardInterrupt reached the program" in r.stdout, (r.returncode, r.stderr)


@pytest.mark.parametrize("interpreter", [["-Bm", "flowfem"], ["-Bmflowfem"], ["-X", "dev", "-m", "flowfem"]])
def test_the_flowfem_command_is_recognised_however_the_interpreter_is_told(tmp_path, interpreter):
    """Ctrl-C while the command loads is one line and 130, with the interpreter's options before -m too."""
    from test_fix_s11 import _interrupted_at

    r = _interrupted_at(tmp_path, "flowfem.mpi", [sys.executable] + interpreter + ["solve", "--help"])
    assert (r.returncode, r.stderr) == (130, "flowfem: interrupted\n"), r.stderr


# -- a demo's --out ---------------------------------------------------------------------------------------------------
def _demo(ran):
    def main(out, n=1):
        ran.append(out)
        with outputs.output_directory(out, force=True) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write(str(n))

    return main


def test_a_demo_refuses_its_out_before_the_work(tmp_path, capsys):
    """The flowfem command claims --out before its work (outputs.reserve); a demo found a user's directory,
    or a file where its parent belongs, only after all of it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for out in [mine, tmp_path / "file", tmp_path / "file" / "sub"]:
        ran = []
        assert outputs.run_demo(_demo(ran), str(out), argv=[]) == 2
        assert ran == [], f"{out}: the demo's work ran before its --out was refused"
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "mine"


@serial
@pytest.mark.parametrize("out", [".", ""])
def test_the_working_directory_is_never_replaced(tmp_path, out):
    """An empty working directory was moved away and deleted, a new one put at its path: the user's shell
    then stands in a deleted directory, where what it writes is lost."""
    work = tmp_path / "project"
    work.mkdir()
    before = os.stat(work).st_ino
    demo = os.path.join(ROOT, "demos", "regression_1d.py")
    for argv in ([sys.executable, demo, "--quick", "--out", out],
                 [sys.executable, "-m", "flowfem", "solve", "--data", "sin", "--n", "200", "--mesh-size", "8",
                  "--out", out or "."]):
        r = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "working directory" in r.stderr, r.stderr
        assert os.stat(work).st_ino == before and os.listdir(work) == [], os.listdir(work)


def test_check_free_refuses_the_working_directory_and_what_holds_it(tmp_path, monkeypatch):
    """Empty, or a flowfem output (--force) that the user stands in (cd run/density.bp)."""
    run = tmp_path / "run"
    work = run / "density.bp"
    work.mkdir(parents=True)
    (run / outputs.MANIFEST).write_text('{"files": ["density.bp"]}')
    monkeypatch.chdir(work)
    for path in [".", "", str(work), str(run), ".."]:
        with pytest.raises(ValueError, match="working directory"):
            outputs.check_free(path, force=True)
    outputs.check_free(work / "c")  # below it: a new directory
    (tmp_path / "other").mkdir()
    outputs.check_free(tmp_path / "other")  # beside it, empty


def test_a_demos_usage_error_is_one_line(capsys):
    for argv in (["--outt", "x"], ["--out"], ["--quick=1"]):
        with pytest.raises(SystemExit) as e:
            outputs.run_demo(_demo([]), "never", argv=argv)
        assert e.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and ": error: " in lines[0] and "--help" in lines[0], lines


@pytest.mark.mpi
def test_a_demos_usage_error_under_mpirun_is_said_once(tmp_path):
    from conftest import run

    r = run([sys.executable, os.path.join(ROOT, "demos", "regression_1d.py"), "--outt", "x"], ranks=2,
            timeout=120, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- a whole number too long for int() ----------------------------------------------------------------------------
@pytest.mark.parametrize("digits", [4301, 5000, 100_000])
def test_a_very_long_whole_number_is_refused_in_flowfems_words(capsys, digits):
    text = "9" * digits
    with pytest.raises(ValueError) as e:
        arguments.read_integer(text)
    assert "set_int_max_str_digits" not in str(e.value) and len(str(e.value)) < 200, str(e.value)[:300]
    for option in ("--seed", "--n"):
        line = refused_by_cli(["solve", "--data", "sin", option, text, "--out", "never"], capsys)
        assert option in line and "set_int_max_str_digits" not in line and len(line) < 300, line[:300]


# -- left by the breaker, mended by the lead ---------------------------------------------------------------------
@pytest.mark.parametrize("variable, rank, said", [("PMI_RANK", "1", False), ("PMI_RANK", "0", True),
                                                  ("OMPI_COMM_WORLD_RANK", "1", False), (None, None, True)])
def test_a_ctrl_c_while_loading_is_said_by_rank_0_only(capsys, monkeypatch, variable, rank, said):
    """Under mpirun every rank got the Ctrl-C before MPI could name the rank: the line came once per rank."""
    import flowfem

    for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(v, raising=False)
    if variable:
        monkeypatch.setenv(variable, rank)
    with pytest.raises(SystemExit) as e:
        flowfem.interrupted_while_loading(signal.SIGINT, None)
    assert e.value.code == 130 and (capsys.readouterr().err == "flowfem: interrupted\n") == said


def test_a_mesh_size_that_is_no_number_is_said_plainly():
    from flowfem.space import Space

    with pytest.raises(ValueError, match=r"^n must be a number >= 1 \(cells per side\), got '4' \(str\)$"):
        Space.box(1, "4")  # it said "must be a number a whole number >= 1"
