"""What broke in the ninth breaker session (the names in messages, option values), each test failing before
its fix.

* Messages to a user of the ``flowfem`` command named the API's arguments or internal descriptions instead of
  the option typed: ``mesh circle --size 2`` said "circle arcs n must be >= 3", ``mesh box --size 0`` "mesh
  parameter n = 0 must be positive" (``solve --mesh-size 0`` the same), ``landscape --mu nan`` "mu values
  [nan]", ``flow --tau-max 0`` "largest step tau_max = 0.0". ``mesh circle --size -4`` said ">= 0" where the
  circle needs a whole number >= 3. The command now declares the options whose names differ from the API's
  (:func:`flowfem.arguments.command_line`: ``readouts`` is ``--readout``, a domain's ``size`` ``--mesh-size``,
  ``mus`` ``--mu``), and the API's own check says it; the CLI's copies of compare's and landscape's checks,
  kept only for their wording, are gone.
* ``flow --ts-rtol 2`` (or 1) was taken: a relative tolerance of 1 or more asks nothing of the local error.
* ``export --format onnx --out x.txt`` (or ``x.pt``) wrote ONNX under a name that says another format, or none.
* An empty path was taken: ``solve --out ''`` meant the working directory, ``predict --out ''`` standard
  output, ``flow --resume ''`` no resume; ``landscape --json ''`` and ``--loss ''`` were ignored;
  ``readout --alpha -1`` (or nan) passed unseen with the rules that fit no weights.
* "must be an integer >= 1" was written out by compare's ``steps`` and the flow's ``max_steps`` beside the
  private check of :func:`flowfem.arguments.integers`: one public :func:`flowfem.arguments.at_least` now.
"""

import os
import re

import numpy as np
import pytest

from conftest import BIN, one_error_line, run
from flowfem import arguments, cli, plateau
from flowfem.arguments import at_least, command_line, named, renamed, spell, tolerance
from flowfem.space import Space, named_arrays

FLOWFEM = os.path.join(BIN, "flowfem")
FIT = ["--data", "sin", "--n", "40", "--mesh-size", "4", "--quiet", "--no-plot"]
CIRCLE = "the circle's arcs; two arcs would join the same two vertices"


# -- arguments: the options a command declares --------------------------------------------------------------
def test_command_line_names_the_declared_option_and_api_names_stay():
    assert named("readouts") == "readouts" and spell("size", "4") == "size=4"
    with command_line(readouts="--readout", size="--mesh-size"):
        assert named("readouts") == "--readout"
        assert named("size") == "--mesh-size" and spell("size", "4") == "--mesh-size 4"
        assert named("max_steps") == "--max-steps"  # not declared: -- + the name
        with renamed(n="size"):  # an API function passing its size on as n: the option that gave size
            assert named("n") == "--mesh-size"
    assert named("readouts") == "readouts" and named("n") == "n"
    with renamed(n="size"):
        assert named("n") == "size" and spell("n", "0") == "size=0"
    with pytest.raises(ValueError, match=r"command_line\(mus='mu'\): an option is written --NAME"):
        with command_line(mus="mu"):
            pass


def test_at_least_and_tolerance_name_the_argument_or_the_option():
    assert at_least("steps", np.int64(3), 1) == 3
    for value, said in [(0, "steps must be an integer >= 1, got 0"),
                        (2.0, "steps must be an integer >= 1, got 2.0 (float)"),
                        (True, "steps must be an integer >= 1, got True (bool)")]:
        with pytest.raises(ValueError, match=f"^{said.replace('(', '[(]').replace(')', '[)]')}$"):
            at_least("steps", value, 1)
    with command_line(), pytest.raises(ValueError, match="^--max-steps must be an integer >= 1, got -1$"):
        at_least("max_steps", -1, 1)
    assert tolerance("ts_rtol", 1e-4, "1e-4") == 1e-4
    for value in (0, 1, 2.0, float("nan"), float("inf"), -1e-3):
        with pytest.raises(ValueError, match=r"^ts_rtol must be a number with 0 < ts_rtol < 1, e.g. 1e-4, got "):
            tolerance("ts_rtol", value, "1e-4")
    with pytest.raises(ValueError, match=r"^ts_rtol must be a number with 0 < ts_rtol < 1, e\.g\. 1e-4, got "
                                         r"'1e-4' \(str\)$"):
        tolerance("ts_rtol", "1e-4", "1e-4")


# -- the API keeps its own names ------------------------------------------------------------------------------
def test_mesh_sizes_name_the_argument_the_caller_gave():
    with pytest.raises(ValueError, match=f"^n must be a whole number >= 3 [(]{CIRCLE}[)], got 2$"):
        Space.circle(2)
    with pytest.raises(ValueError, match=f"^size must be a whole number >= 3 [(]{CIRCLE}[)], got -4$"):
        named_arrays("circle", 1, -4)
    with pytest.raises(ValueError, match=r"^refinements must be a whole number >= 0 \(the sphere's refinements of "
                                         r"the icosahedron\), got -1$"):
        Space.sphere(-1)
    with pytest.raises(ValueError, match=r"^h must be a finite number > 0, got 0"):
        Space.ball(1, 0.0)


def test_mu_values_name_mus_in_the_api():
    assert plateau.mu_values([0.5, -1]) == [0.5, -1.0]
    for mus, said in [([np.nan], "mus must be finite numbers, e.g. -1,0,0.5,1,2, got [nan]"),
                      ([1e60], "mus must be numbers with |mu| <= 1e+50, got [1e+60]"),
                      ([], "mus is empty: give at least one, e.g. -1,0,0.5,1,2"),
                      ([1, 1], "mus lists 1.0 twice: give each once, e.g. -1,0,0.5,1,2"),
                      (["a"], "mus must be numbers, e.g. -1,0,0.5,1,2, got ['a']")]:
        with pytest.raises(ValueError) as e:
            plateau.mu_values(mus)
        assert str(e.value) == said


def test_compare_api_names_readouts_and_the_command_line_names_readout():
    from flowfem import compare
    from flowfem.data import Dataset

    train = Dataset(np.linspace(-1, 1, 8)[:, None], np.linspace(-1, 1, 8))
    with pytest.raises(ValueError, match="^readouts lists refit twice: give each once"):
        compare.compare(train, train, readouts=["refit", "refit"])
    with command_line(readouts="--readout"), pytest.raises(ValueError, match="^--readout lists refit twice"):
        compare.compare(train, train, readouts=["refit", "refit"])


# -- the command line ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,said", [
    (["circle", "--size", "-4"], f"--size must be a whole number >= 3 ({CIRCLE}), got -4"),
    (["circle", "--size", "2"], f"--size must be a whole number >= 3 ({CIRCLE}), got 2"),
    (["box", "--size", "0"], "--size must be a whole number >= 1 (cells per side), got 0"),
    (["box", "--size", "inf"], "--size must be a whole number >= 1 (cells per side), got inf"),
    (["sphere", "--size", "-1"], "--size must be a whole number >= 0 (the sphere's refinements of the icosahedron), "
                                 "got -1"),
    (["ball", "--size", "-0.5"], "--size must be a finite number > 0, got -0.5"),
])
def test_mesh_size_refusals_name_size(tmp_path, capsys, args, said):
    out = tmp_path / "m.msh"
    assert cli.main(["mesh", *args, "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"flowfem: error: {said}"
    assert not out.exists()


@pytest.mark.parametrize("command,extra,said", [
    ("solve", ["--mesh-size", "0"], "--mesh-size must be a whole number >= 1 (cells per side), got 0"),
    ("solve", ["--domain", "circle", "--mesh-size", "2"], f"--mesh-size must be a whole number >= 3 ({CIRCLE}), "
                                                          "got 2"),
    ("solve", ["--domain", "ball", "--mesh-size", "0"], "--mesh-size must be a finite number > 0, got 0.0"),
    ("solve", ["--alpha", "0"], "--alpha must be a finite number > 0 (the convexity constant of E_alpha), got 0.0"),
    ("flow", ["--tau-max", "0"], "--tau-max must be a number > 0 (the largest time step; inf: no limit), got 0.0"),
    ("flow", ["--max-steps", "0"], "--max-steps must be an integer >= 1, got 0"),
    ("flow", ["--max-steps", "99999999999999999999"], "the flow needs an end: give --t-end T, --max-steps N with N "
                                                       "< 10^6, or --tol TOL"),
    ("flow", ["--growth", "inf"], "--growth must be a finite number >= 1 (the step growth factor; 1: constant steps), "
                                  "got inf"),
    ("compare", ["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    ("compare", ["--readout", "refit,refit"], "--readout lists refit twice: give each once, e.g. quadrature,refit"),
    ("compare", ["--readout", ","], "--readout is empty: give at least one, e.g. quadrature,refit"),
    ("compare", ["--methods", "gd,gd"], "--methods lists gd twice: give each once, e.g. gd,adam"),
    ("compare", ["--widths", "99999999999999999999", "--readout", "sample"],
     "a sample of width 99999999999999999999 needs more than 1000 TB but this machine has {GB} GB available: use a "
     "smaller --widths N"),
])
def test_fit_refusals_name_the_option_typed(tmp_path, capsys, command, extra, said):
    out = tmp_path / "out"
    base = ([command, *FIT, "--max-steps", "2"] if command == "flow" else
            [command, *FIT, "--widths", "4", "--seeds", "0", "--steps", "2", "--methods", "adam", "--readout",
             "refit"] if command == "compare" else [command, *FIT])
    for option, value in zip(extra[::2], extra[1::2]):  # the given value replaces the base's
        if option in base:
            base[base.index(option) + 1] = value
        else:
            base += [option, value]
    assert cli.main([*base, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.fullmatch(re.escape(f"flowfem: error: {said}").replace(re.escape("{GB}"), r"[0-9.]+"), line), line
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists()


@pytest.mark.parametrize("value", ["2", "1", "nan", "inf", "0", "-1e-4"])
def test_flow_ts_rtol_is_a_tolerance_below_1_as_rtol_and_step_rtol_are(tmp_path, capsys, value):
    """--ts-rtol 2 was taken: a relative local error of 1 or more asks nothing of a step."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["flow", *FIT, "--max-steps", "2", f"--ts-rtol={value}", "--out", str(out)])
    assert e.value.code == 2
    assert one_error_line(capsys.readouterr().err) == (f"flowfem: error: argument --ts-rtol: {value} must be a number "
                                                       "with 0 < --ts-rtol < 1, e.g. 1e-4 (see flowfem flow --help)")
    assert not out.exists()


def test_flow_api_refuses_ts_rtol_of_1_or_more_by_its_name():
    from flowfem.flow.driver import Flow
    from flowfem.problem import Problem

    E = Problem(Space.box(1, 4, 4.0)).functional(np.linspace(-1, 1, 10)[:, None], np.linspace(-1, 1, 10))
    assert Flow(E, ts_rtol=0.5).ts_rtol == 0.5
    for value in (1, 2.0, float("nan")):
        with pytest.raises(ValueError, match=r"^ts_rtol must be a number with 0 < ts_rtol < 1, e\.g\. 1e-4, got "):
            Flow(E, ts_rtol=value)


@pytest.mark.parametrize("mu,said", [
    ("nan", "--mu must be finite numbers, e.g. -1,0,0.5,1,2, got [nan]"),
    ("0,inf", "--mu must be finite numbers, e.g. -1,0,0.5,1,2, got [0.0, inf]"),
    ("1e400", "--mu must be finite numbers, e.g. -1,0,0.5,1,2, got [inf]"),
    ("1e60", "--mu must be numbers with |mu| <= 1e+50, got [1e+60]"),
    ("2,2", "--mu lists 2.0 twice: give each once, e.g. -1,0,0.5,1,2"),
])
def test_landscape_mu_refused_by_option_before_the_polish(tmp_path, capsys, monkeypatch, small_net, mu, said):
    """(plateau_report checks --mu, once, before its --polish minimisation: tests/test_review_s10.py)"""
    out = tmp_path / "l.json"
    monkeypatch.setattr(plateau, "minimise", lambda *a, **k: pytest.fail("the polish started"))
    assert cli.main(["landscape", "--network", str(small_net), "--data", "sin", "--n", "20", "--quiet", "--polish",
                     f"--mu={mu}", "--json", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"flowfem: error: {said}"
    assert not out.exists()


@pytest.mark.parametrize("format,name,said", [
    ("onnx", "x.txt", "--out {d}/x.txt names no onnx file: --format onnx writes .onnx; give --out {d}/x.onnx"),
    ("onnx", "x.pt", "--out {d}/x.pt names a torch file, but --format onnx writes .onnx: give --out {d}/x.onnx, or "
                     "--format torch"),
    ("safetensors", "x.onnx", "--out {d}/x.onnx names a onnx file, but --format safetensors writes .safetensors: "
                              "give --out {d}/x.safetensors, or --format onnx"),
    ("safetensors", "x", "--out {d}/x names no safetensors file: --format safetensors writes .safetensors; give "
                         "--out {d}/x.safetensors"),
])
def test_export_refuses_an_out_whose_suffix_is_not_the_formats(tmp_path, capsys, small_net, format, name, said):
    out = tmp_path / name
    assert cli.main(["export", "--network", str(small_net), "--format", format, "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == "flowfem: error: " + said.format(d=tmp_path)
    assert os.listdir(tmp_path) == []


def test_export_writes_an_out_of_the_formats_suffix(tmp_path, capsys, small_net):
    out = tmp_path / "x.safetensors"
    assert cli.main(["export", "--network", str(small_net), "--format", "safetensors", "--out", str(out)]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out


def test_option_spelling_does_not_leak_out_of_a_command(tmp_path, capsys):
    """After main returns (refused or not), the API names its arguments again."""
    assert cli.main(["mesh", "circle", "--size", "2", "--out", str(tmp_path / "m.msh")]) == 2
    capsys.readouterr()
    assert named("size") == "size" and named("readouts") == "readouts" and not arguments._RENAMED.get()


# -- under mpirun -n 2 ----------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_flow_tau_max_refused_by_option_on_every_rank(tmp_path):
    """The flow's own check (Flow.run, on every rank, after the stationary solve) names --tau-max."""
    out = tmp_path / "out"
    r = run([FLOWFEM, "flow", *FIT, "--max-steps", "2", "--tau-max", "0", "--out", str(out)], ranks=2, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert one_error_line(r.stderr) == ("flowfem: error: --tau-max must be a number > 0 (the largest time step; inf: "
                                        "no limit), got 0.0")
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists()


@pytest.mark.parametrize("argv,said", [
    (["solve", *FIT, "--out="], "--out is empty: give a file or directory (see flowfem solve --help)"),
    (["predict", "--network", "NET", "--data", "sin", "--out="], "--out is empty: give a file or directory (see "
                                                                 "flowfem predict --help)"),
    (["export", "--network", "NET", "--format", "onnx", "--out="], "--out is empty: give a file or directory (see "
                                                                   "flowfem export --help)"),
    (["landscape", "--network", "NET", "--data", "sin", "--json="], "--json is empty: give a file or directory (see "
                                                                    "flowfem landscape --help)"),
    (["convert", "data.csv", ""], "OUT is empty: give a file or directory (see flowfem convert --help)"),
    (["flow", *FIT, "--resume=", "--out", "x"],
     "--resume is empty: give a file or directory (see flowfem flow --help)"),
    (["flow", *FIT, "--checkpoint-dir=", "--out", "x"], "--checkpoint-dir is empty: give a file or directory (see "
                                                        "flowfem flow --help)"),
    (["flow", *FIT, "--test-data=", "--out", "x"], "--test-data is empty: give a data file or a named data set, "
                                                    "e.g. sin (see flowfem flow --help)"),
])
def test_an_empty_path_is_refused(tmp_path, capsys, monkeypatch, small_net, argv, said):
    """--out '' was the working directory for solve (replaced whole with --force), standard output for predict,
    the default name for export; landscape's --json '' wrote nothing, flow's --resume '' started afresh."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main([str(small_net) if a == "NET" else a for a in argv])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == f"flowfem: error: {said}" and captured.out == ""
    assert os.listdir(tmp_path) == []


def test_landscape_refuses_an_empty_loss(small_net, capsys):
    assert cli.main(["landscape", "--network", str(small_net), "--data", "sin", "--n", "20", "--quiet",
                     "--loss="]) == 2
    assert one_error_line(capsys.readouterr().err) == "flowfem: error: unknown loss '': choose one of squared, logistic"


@pytest.fixture(scope="module")
def density(tmp_path_factory):
    out = tmp_path_factory.mktemp("solve") / "sol"
    assert cli.main(["solve", *FIT, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("rule,extra", [("quadrature", []), ("sample", ["--width", "5"])])
@pytest.mark.parametrize("alpha", ["-1", "nan", "1e-3"])
def test_readout_refuses_alpha_of_a_rule_that_fits_no_weights(tmp_path, capsys, density, rule, extra, alpha):
    """--alpha is refit's; with the other rules any value, -1 or nan, passed unseen."""
    capsys.readouterr()
    out = tmp_path / "r.npz"
    assert cli.main(["readout", "--density", str(density), "--rule", rule, *extra, f"--alpha={alpha}",
                     "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"flowfem: error: --alpha {float(alpha):g} is the regularisation of --rule refit; --rule {rule} fits no "
        "weights: drop --alpha")
    assert not out.exists()


# -- from the newcomer's run and the checks in modules the breaker did not own ----------------------------------
@pytest.mark.parametrize("extra,said", [
    (["--kappa", "0"], "--kappa must be a finite number > 0 (it sets how smooth the density is), got 0.0"),
    (["--degree", "4"], "--degree 4: the Lagrange degree of the density is 1, 2 or 3"),
    (["--n", "0"], "--n must be an integer >= 1 (the number of points), got 0"),
    (["--activation", "leaky_relu:1.5"], "activation 'leaky_relu:1.5': the slope of leaky_relu:SLOPE must be a "
                                          "number with 0 <= SLOPE < 1, e.g. leaky_relu:0.1"),
    (["--activation", "monomial:0"], "activation 'monomial:0': the power of monomial:K must be an integer K >= 1, "
                                     "e.g. monomial:2"),
    (["--activation", "relu:1"], "activation 'relu:1': relu takes no ':' argument; write relu"),
    (["--weight", "gaussian:x"], "weight 'gaussian:x': the scale after ':' must be a number, e.g. gaussian:0.5"),
])
def test_solve_refusals_name_the_option_not_the_api_argument(tmp_path, capsys, extra, said):
    """Before: 'kappa = 0.0 must be positive', 'element degree 4: choose 1, 2 or 3', 'synthetic data: n = 0 must
    be at least 1', 'unknown activation 'leaky_relu:1.5': did you mean 'leaky_relu'?' (the name was right, the
    slope wrong), 'weight 'gaussian:x': could not convert ...'."""
    out = tmp_path / "out"
    base = [*FIT]
    for option, value in zip(extra[::2], extra[1::2]):
        if option in base:
            base[base.index(option) + 1] = value
        else:
            base += [option, value]
    assert cli.main(["solve", *base, "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"flowfem: error: {said}"
    assert not out.exists()


def test_softmax_with_the_direct_solver_is_refused_in_option_words(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["solve", "--data", "iris2", "--loss", "softmax", "--solver", "direct", "--mesh-size", "4",
                     "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.endswith("by CG only; use --solver cg") and "solver='cg'" not in line, line
    assert not out.exists()


@pytest.mark.parametrize("extra,said", [
    (["--rule", "sample", "--width", "0"], "--width must be an integer >= 1 (the number of neurons to draw), got 0"),
    (["--subdivisions", "0"], "--subdivisions must be an integer >= 1, got 0"),
    (["--degree", "-1"], "--degree must be an integer >= 0 (the quadrature degree; 1 = midpoint rule), got -1"),
    (["--rule", "refit", "--data", "sin", "--n", "40", "--alpha", "-1"],
     "--alpha must be a finite number >= 0 (the refit's regularisation; 0: plain least squares), got -1.0"),
])
def test_readout_refusals_name_the_option(tmp_path, capsys, density, extra, said):
    out = tmp_path / "net.npz"
    assert cli.main(["readout", "--density", str(density), *extra, "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"flowfem: error: {said}"
    assert not out.exists()


def test_activation_names_and_tolerance_names_in_the_api():
    """The API keeps its own words: the argument that gave a tolerance (step_rtol, not rtol), and the
    valid activations still parse."""
    from flowfem.activations import activation
    from flowfem.stationary import check_tolerances

    assert [activation(s).name for s in ("relu", "leaky_relu", "leaky_relu:0.1", "monomial:3", "TANH")] == \
        ["relu", "leaky_relu:0.01", "leaky_relu:0.1", "monomial:3", "tanh"]
    for spec in ("leaky_relu:nan", "leaky_relu:-0.1", "leaky_relu:abc", "monomial:2.5", "monomial:", "tanh:1"):
        with pytest.raises(ValueError, match=re.escape(f"activation '{spec}': ")):
            activation(spec)
    with pytest.raises(ValueError, match=r"^step_rtol = 2.0: the relative residual .* 0 < step_rtol < 1$"):
        check_tolerances(2, name="step_rtol")
    with command_line():
        with pytest.raises(ValueError, match=r"^--step-rtol = 0: no solve .* 0 < --step-rtol < 1$"):
            check_tolerances(0, name="step_rtol")


@pytest.mark.parametrize("command", ["solve", "flow"])
def test_wrong_labels_in_the_data_file_are_named_as_training_labels(tmp_path, capsys, command):
    """A file of 0/1 labels fitted with the logistic loss was refused as '20 of the 20 test targets y are
    neither -1 nor +1': the test rows were checked first, though every row of the file was wrong."""
    from flowfem import data

    x = np.linspace(-1, 1, 100)[:, None]
    data.save(data.Dataset(x, (x[:, 0] > 0).astype(float)), tmp_path / "d01.npy")
    out = tmp_path / "out"
    argv = [command, "--data", str(tmp_path / "d01.npy"), "--loss", "logistic", "--mesh-size", "4", "--quiet"]
    assert cli.main([*argv, *(["--max-steps", "2"] if command == "flow" else []), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "of the 80 training targets y are neither -1 nor +1" in line, line
    assert not out.exists()
