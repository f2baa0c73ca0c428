"""Session 11 fixes: numbers read from text, stop tolerances, paste-able suggestions, demos' output directories,
Ctrl-C while the command loads."""

import os
import shlex
import subprocess
import sys

import pytest

from conftest import BIN, ROOT, one_error_line, refused_by_cli
from flowfem import arguments, cli, outputs
from flowfem.activations import activation
from flowfem.plateau import mu_values
from flowfem.sobolev import Weight


# -- 1. every number written as text is read by arguments.read_number / read_integer --------------------------
@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), (" 2 ", 2.0), (".5", 0.5), ("5.", 5.0), ("-3", -3.0),
                                        ("+1E+2", 100.0), ("inf", float("inf")), ("-Infinity", float("-inf"))])
def test_a_number_written_in_decimal_is_read(text, value):
    assert arguments.read_number(text) == value


@pytest.mark.parametrize("text", ["1_0", "1_e-6", "0x10", "\u0661\u0660", "", "1e", "1 0", "1,5", "nan1"])
def test_a_number_not_written_in_decimal_is_refused(text):
    """float() reads '1_0' as 10 (digit grouping) and Unicode digits as digits: no user means those."""
    with pytest.raises(ValueError, match="is not a number"):
        arguments.read_number(text)


@pytest.mark.parametrize("text", ["1_000", "0_1", "1e3", "2.0", "\u0661", ""])
def test_an_integer_not_written_in_digits_is_refused(text):
    with pytest.raises(ValueError, match="is not a whole number"):
        arguments.read_integer(text)
    assert arguments.read_integer(" -12 ") == -12


def _numeric_options():
    """(subcommand, option) of every option of the command whose value is converted by a type (all numbers)."""
    top = cli.parser()
    return [(name, action.option_strings[0]) for name, sub in top.commands.items() for action in sub._actions
            if action.type is not None and action.option_strings]


def test_every_option_with_a_type_reads_numbers():
    options = _numeric_options()
    assert ("solve", "--alpha") in options and ("mesh", "--size") in options and len(options) > 30
    assert not [a for sub in cli.parser().commands.values() for a in sub._actions if a.type in (float, int)]


@pytest.mark.parametrize("command,option", _numeric_options())
def test_every_numeric_option_refuses_an_underscore(capsys, command, option):
    """--mu 1_0 was read as 10 by landscape, and every type=float / type=int option likewise."""
    line = refused_by_cli([command, option, "1_0"], capsys)
    assert f"argument {option}: '1_0'" in line, line


@pytest.mark.parametrize("argv", [["solve", "--alpha", "auto", "--alphas", "1_0,1"], ["solve", "--rtol", "1_e-6"],
                                  ["solve", "--seed", "0_1"], ["mesh", "box", "--size", "\u0661\u0660"],
                                  ["flow", "--max-steps", "1e3"]])
def test_other_spellings_are_refused_too(capsys, argv):
    assert repr(argv[-1]) in refused_by_cli(argv, capsys)


def test_numbers_inside_names_and_lists_follow_the_same_rule(tmp_path, capsys, small_net):
    """The parameters of leaky_relu:SLOPE, monomial:K, gaussian:S, theta:THETA, bdf:ORDER, gaussian:S:A and the
    lists of --mu, --widths, --seeds: float() and int() read '1_0' there too."""
    for spec in ("leaky_relu:0_1", "monomial:0_2"):
        with pytest.raises(ValueError, match="activation"):
            activation(spec)
    assert activation("leaky_relu: 0.1 ").name == activation("leaky_relu:0.1").name
    with pytest.raises(ValueError, match="scale after ':' must be a number"):
        Weight.parse("gaussian:1_0")
    with pytest.raises(ValueError, match="mus must be numbers"):
        mu_values("0.5,1_0")
    assert mu_values(" -1, 0.5") == [-1.0, 0.5] and mu_values(["0.5", 2]) == [0.5, 2.0]
    out = str(tmp_path / "out")
    for argv, said in [(["compare", "--widths", "1_6"], "--widths '1_6': give comma-separated integers"),
                       (["compare", "--seeds", "0_1"], "--seeds '0_1'"),
                       (["flow", "--scheme", "theta:0_6"], "theta:0_6: theta must be a number"),
                       (["flow", "--scheme", "bdf:0_2"], "bdf:0_2: the BDF order must be an integer"),
                       (["flow", "--initial", "gaussian:1_0"], "initial density 'gaussian:1_0'")]:
        assert said in refused_by_cli(argv + ["--data", "sin", "--n", "50", "--out", out], capsys)
        assert not os.path.exists(out)
    line = refused_by_cli(["landscape", "--network", str(small_net), "--data", "sin", "--mu", "0.5,1_0"], capsys)
    assert line == "flowfem: error: --mu must be numbers, e.g. -1,0,0.5,1,2, got '0.5,1_0'"


# -- 2. a stop tolerance that asks nothing is refused ----------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "1", "2.5", "nan"])
def test_flow_tol_that_the_first_step_meets_is_refused(tmp_path, capsys, value):
    """--tol inf (or 1: the zero density is at distance ||u*||) stopped the flow at its first step."""
    line = refused_by_cli(["flow", "--data", "sin", "--n", "50", "--tol", value, "--out", str(tmp_path / "o")],
                          capsys)
    assert line.startswith("flowfem: error: --tol must be a number with 0 < --tol < 1 (the relative distance"), line
    assert not (tmp_path / "o").exists()


def test_the_api_check_of_the_stop_tolerance_is_the_same():
    from flowfem.flow.driver import check_steps

    for tol in (float("inf"), 1.0, 0.0):
        with pytest.raises(ValueError, match=r"tol must be a number with 0 < tol < 1"):
            check_steps(1.0, 1.0, float("inf"), 10, tol)
    check_steps(1.0, 1.0, float("inf"), 10, 0.5)


@pytest.mark.parametrize("argv", [["solve", "--rtol", "inf"], ["flow", "--ts-rtol", "inf"],
                                  ["flow", "--step-rtol", "1"], ["landscape", "--gtol", "inf"],
                                  ["compare", "--time-limit", "inf"]])
def test_the_other_tolerances_refuse_a_bound_that_asks_nothing(tmp_path, capsys, argv, small_net):
    extra = (["--network", str(small_net), "--data", "sin"] if argv[0] == "landscape"
             else ["--data", "sin", "--n", "50", "--out", str(tmp_path / "o")])
    line = refused_by_cli(argv + extra, capsys)
    assert argv[1] in line and ("finite number" in line or f"0 < {argv[1]} < 1" in line), line


# -- 3. suggested values paste into a shell --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["my net.onnx", "a'b", "x;rm -rf y", "$HOME/n.npz", "plain"])
def test_a_spelled_value_is_one_shell_word(value):
    with arguments.command_line(path="--out"):
        text = arguments.spell("path", repr(value))
        assert shlex.split(text) == ["--out", value]
        assert shlex.split(arguments.petsc_option("ksp_type", value)) == ["--petsc-option", f"ksp_type={value}"]
    assert arguments.spell("path", repr(value)) == f"path={value!r}"  # the API's spelling, unchanged
    with arguments.command_line():
        assert arguments.spell("width", "N") == "--width N" and arguments.spell("degree", "3") == "--degree 3"
        assert arguments.spell("force") == "--force"


def test_a_suggested_path_with_a_space_pastes_as_one_word(tmp_path, capsys, small_net):
    target = str(tmp_path / "my net.npz")
    line = refused_by_cli(["export", "--network", str(small_net), "--format", "onnx", "--out", target], capsys)
    fix = line[line.index("give --out"):].split(", or")[0].removeprefix("give ")
    assert shlex.split(fix) == ["--out", str(tmp_path / "my net.onnx")], line


def test_a_data_path_with_a_space_is_quoted_in_a_message(tmp_path, capsys):
    path = tmp_path / "my data.csv"
    path.write_text("x1,y\n0,1\n0.5,2\n1,3\n")
    line = refused_by_cli(["solve", "--data", str(path), "--n", "50", "--out", str(tmp_path / "o")], capsys)
    assert shlex.quote(str(path)) in line and shlex.quote(str(path)) != str(path), line


# -- 4. a demo's output directory that holds a user's file -----------------------------------------------------
def test_a_demo_refuses_a_directory_of_the_users_in_one_line(tmp_path):
    """It stopped with a traceback naming force=True, an API spelling the demo's user cannot pass."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "demos", "regression_1d.py"), "--quick", "--out",
                        str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("regression_1d.py: error: --out replaces only a directory that "
                                                   "flowfem wrote;"), r.stderr
    assert "has no flowfem manifest" in lines[0] and "choose another output directory" in lines[0]
    assert (out / "notes.txt").read_text() == "mine" and os.listdir(out) == ["notes.txt"]


def test_run_demo_replaces_its_own_output_and_reports_any_error_in_one_line(tmp_path, capsys):
    def main(out, n=1):
        with outputs.output_directory(out, force=True) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write(str(n))

    out = str(tmp_path / "d")
    assert outputs.run_demo(main, out, quick=dict(n=2), argv=[]) == 0
    assert outputs.run_demo(main, out, quick=dict(n=2), argv=["--quick"]) == 0  # its own: replaced
    assert open(os.path.join(out, "a.txt")).read() == "2"
    open(os.path.join(out, "b.txt"), "w").write("mine")
    assert outputs.run_demo(main, out, argv=[]) == 2
    assert "--out replaces only a directory that flowfem wrote" in one_error_line(
        "flowfem: error: " + capsys.readouterr().err.split(": error: ", 1)[1])

    def interrupted(out):
        raise KeyboardInterrupt

    # (a fresh --out: the one above, holding b.txt, is now refused before the demo's work)
    assert outputs.run_demo(interrupted, str(tmp_path / "fresh"), argv=[]) == 130
    assert capsys.readouterr().err.endswith(": interrupted\n")


# -- 5. Ctrl-C while the command loads -------------------------------------------------------------------------
HOOK = '''import importlib.abc, os, signal, sys
TARGET = os.environ["INTERRUPT_AT_IMPORT"]


class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == TARGET:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, Interrupt())
'''


def _interrupted_at(tmp_path, module, argv):
    """Run argv with SIGINT sent to the process itself when ``module`` is first imported: a sitecustomize's import
    hook (Python imports sitecustomize at start-up), deterministic where a sleep before the signal is not."""
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    env = dict(os.environ, INTERRUPT_AT_IMPORT=module, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.mark.parametrize("module", ["mpi4py.MPI", "flowfem.mpi", "flowfem.arguments", "flowfem.cli",
                                    "flowfem.provenance"])
def test_ctrl_c_while_the_command_loads_is_one_line_and_status_130(tmp_path, module):
    """A traceback of the import in progress, and status -2 (killed by SIGINT), before."""
    r = _interrupted_at(tmp_path, module, [sys.executable, "-m", "flowfem", "solve", "--help"])
    assert (r.returncode, r.stderr) == (130, "flowfem: interrupted\n"), r.stderr


def test_ctrl_c_while_the_console_script_loads(tmp_path):
    script = os.path.join(BIN, "flowfem")  # pip install -e . puts it beside the Python
    r = _interrupted_at(tmp_path, "flowfem.mpi", [sys.executable, script, "--version"])
    assert (r.returncode, r.stderr) == (130, "flowfem: interrupted\n"), r.stderr


def test_a_program_that_imports_flowfem_keeps_its_keyboard_interrupt(tmp_path):
    r = _interrupted_at(tmp_path, "flowfem.mpi", [sys.executable, "-c", "import flowfem"])
    assert r.returncode != 130 and "KeyboardInterrupt" in r.stderr, r.stderr
