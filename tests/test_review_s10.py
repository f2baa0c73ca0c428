"""Review findings of session 10, each test failing before its fix.

* An output's functional (``Functional.output(k)``) was a copy made at construction with its own alpha, so the
  regularisation path had to copy the solver's alpha into it before every warm solve; it is now a view that
  reads alpha (and RowWeighted's row weights) from the functional of all outputs.
* LinearSolver set the KSP tolerances of a ``stop=`` solve in ``_solve`` and restored them in ``solve``.
* ``export.write(net, "x.pt", "onnx")`` wrote ONNX under a PyTorch name (only the CLI checked the suffix), and
  ``export --format onnx --out x.onnx.pt`` suggested ``x.onnx.onnx``.
* ``landscape --mu`` was checked by the command and again by ``plateau_report``; ``fit_softmax`` checked the
  number of training labels by hand beside ``labels.training_labels``.
* The flow's growth and tau_max, refit's alpha, Problem's alpha and kappa were checked by hand: inf was
  "must be positive"/"must be >= 0", without "finite".
* Messages: ``readout --rule quadrature --width 8`` said "width = 8", ``--ts-rtol 2`` / ``--step-rtol 2`` said
  "0 < rtol < 1", ``leaky_relu:`` silently became slope 0.01 (``gaussian:``, ``bdf:``, ``implicit_euler:`` the
  same) where ``monomial:`` was refused.
"""

import json
import os

import numpy as np
import pytest

from conftest import refused_by_cli
from flowfem import cli, data, export, plateau
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.space import Space

FIT = ["--data", "sin", "--n", "40", "--mesh-size", "4", "--quiet", "--no-plot"]


# -- 1. an output's functional follows alpha and the row weights ---------------------------------------------
def test_an_output_functional_reads_alpha_and_row_weights_of_all_outputs():
    from flowfem.path import RowWeighted

    d = data.synthetic("sin", 60, seed=0)
    space = Space.box(1, 8, 4.0)
    E = Problem(space, "relu", alpha=1e-2).functional(d.x, np.column_stack([d.y, 2.0 * d.y]))
    out = E.output(1)
    E.alpha = 1e-5
    assert out.alpha == 1e-5
    single = Problem(space, "relu", alpha=1e-5).functional(d.x, 2.0 * d.y)
    U = E.vector()
    U.setArray(np.random.default_rng(0).standard_normal(U.getLocalSize()))
    assert out(U) == pytest.approx(single(U), rel=1e-12)  # E_alpha of output 1 at the new alpha
    with pytest.raises(ValueError, match="set alpha there"):
        out.alpha = 1.0
    W = RowWeighted(E, np.ones(d.n))
    Wk = W.output(0)
    W.c[:] = 0.0
    W.c[:10] = 6.0
    W.alpha = 1e-3
    assert Wk.alpha == 1e-3 and Wk.c is W.c and Wk.row_weights is W.c


# -- 2. the tolerances of a stop are set and restored in one method ----------------------------------------
def test_a_stop_solve_sets_and_restores_the_ksp_tolerances_in_one_method():
    from flowfem.stationary import LinearSolver

    d = data.synthetic("sin", 200, seed=1)
    E = Problem(Space.box(1, 16, 4.0), "relu", alpha=1e-4).functional(d.x, d.y)
    b, X = E.rhs(), E.vector()
    lin = LinearSolver(E, rtol=1e-10)
    lin.solve(b, X)
    before = lin.ksp.getTolerances()
    seen = []
    lin.ksp.setMonitor(lambda ksp, its, rnorm: seen.append(ksp.getTolerances()))
    stop = 1e-12 * b.norm()
    lin._solve(b, X, True, True, stop)  # the method that sets them, called as solve calls it
    lin.ksp.cancelMonitor()
    assert seen and seen[0][:2] == (0.0, stop)  # CG stopped at the stop
    assert lin.ksp.getTolerances() == before
    lin.destroy()


# -- 3. the export writer checks the suffix --------------------------------------------------------------------
@pytest.fixture
def net():
    rng = np.random.default_rng(3)
    return Network(rng.standard_normal((3, 1)), rng.standard_normal(3), rng.standard_normal(3), "relu")


@pytest.mark.parametrize("format,name,fix,said", [
    ("onnx", "x.pt", "x.onnx", "a torch file, but format='onnx' writes .onnx: give path='{d}/x.onnx', or "
                               "format='torch'"),
    ("onnx", "x.onnx.pt", "x.onnx", "a torch file, but format='onnx' writes .onnx: give path='{d}/x.onnx', or "
                                    "format='torch'"),
    ("safetensors", "x.safetensors.onnx", "", "a onnx file, but format='safetensors' writes .safetensors: give "
                                              "path='{d}/x.safetensors', or format='onnx'"),
    ("safetensors", "x.txt", "", "no safetensors file: format='safetensors' writes .safetensors; give "
                                 "path='{d}/x.safetensors'"),
])
def test_export_write_refuses_a_path_of_another_suffix(tmp_path, net, format, name, fix, said):
    with pytest.raises(ValueError) as e:
        export.write(net, tmp_path / name, format)
    assert str(e.value) == f"path='{tmp_path}/{name}' names " + said.format(d=tmp_path)
    assert os.listdir(tmp_path) == []


def test_each_format_writer_refuses_another_suffix(tmp_path, net):
    for write, name in ((lambda p: export.to_onnx(net, p), "x.pt"), (lambda p: export.to_safetensors(net, p), "x.onnx"),
                        (net.to_onnx, "x.npz")):
        with pytest.raises(ValueError, match="names .* file"):
            write(tmp_path / name)
    assert os.listdir(tmp_path) == []
    export.write(net, tmp_path / "X.ONNX", "onnx")  # the suffix's case does not matter
    assert (tmp_path / "X.ONNX").exists()


def test_export_cli_suggests_replacing_the_last_suffix(tmp_path, capsys, small_net):
    out = tmp_path / "x.onnx.pt"
    line = refused_by_cli(["export", "--network", str(small_net), "--format", "onnx", "--out", str(out)], capsys)
    assert line == (f"flowfem: error: --out {out} names a torch file, but --format onnx writes .onnx: give --out "
                    f"{tmp_path}/x.onnx, or --format torch")
    assert os.listdir(tmp_path) == []


# -- 4. --mu and training labels checked once ------------------------------------------------------------------
@pytest.mark.parametrize("mu,said", [
    ("0.5,x", "--mu must be numbers, e.g. -1,0,0.5,1,2, got '0.5,x'"),
    ("0.5,,1", "--mu must be numbers, e.g. -1,0,0.5,1,2, got '0.5,,1'"),
    ("nan", "--mu must be finite numbers, e.g. -1,0,0.5,1,2, got [nan]"),
])
def test_landscape_mu_is_refused_by_plateau_report_before_the_polish(tmp_path, capsys, monkeypatch, small_net,
                                                                     mu, said):
    def polished(*args, **kwargs):
        raise AssertionError("the polish started")

    monkeypatch.setattr(plateau, "minimise", polished)
    line = refused_by_cli(["landscape", "--network", str(small_net), "--data", "sin", "--n", "20", "--quiet",
                           "--polish", f"--mu={mu}", "--json", str(tmp_path / "l.json")], capsys)
    assert line == f"flowfem: error: {said}"
    assert os.listdir(tmp_path) == []


def test_plateau_report_checks_mus_and_polishes_itself(small_net):
    net = Network.load(small_net)
    d = data.synthetic("sin", 20, seed=0)
    with pytest.raises(ValueError) as e:
        plateau.plateau_report(net, d.x, d.y, ["0.5", "x"])
    assert str(e.value) == "mus must be numbers, e.g. -1,0,0.5,1,2, got ['0.5', 'x']"
    report = plateau.plateau_report(net, d.x, d.y, [0.5], neurons=[0], polish=True)
    m = plateau.minimise(net, d.x, d.y)
    assert report["polish"] == dict(iterations=m.iterations, gradient_norm=m.gradient_norm, converged=m.converged)
    assert report["objective"] == pytest.approx(plateau.objective(m.network, d.x, d.y), rel=1e-12)
    assert plateau.plateau_report(net, d.x, d.y, [0.5], neurons=[0])["polish"] is None


def test_fit_softmax_checks_its_labels_as_problem_fit_does():
    from flowfem.labels import training_labels
    from flowfem.operator import DataOperator
    from flowfem.softmax import fit_softmax

    problem = Problem(Space.box(1, 4, 4.0), "relu", loss="softmax")
    x = np.linspace(-1, 1, 12)[:, None]
    Phi = DataOperator(problem.H, problem.activation, x)
    for labels in (np.arange(11) % 3, np.arange(12)):  # a label short; regression targets taken for labels
        with pytest.raises(ValueError) as said:
            training_labels(labels, 12)
        with pytest.raises(ValueError) as e:
            fit_softmax(problem.H, Phi, labels, 1e-3)
        assert str(e.value) == str(said.value)


# -- 5. and 6. range checks and messages -----------------------------------------------------------------------
def test_flow_run_checks_growth_and_tau_max_as_every_number_argument():
    d = data.synthetic("sin", 40, seed=0)
    flow = Problem(Space.box(1, 4, 4.0), alpha=1e-3).flow(d.x, d.y)
    U = flow.vector()
    for kwargs, said in [
        (dict(growth="2"), "growth must be a number >= 1 (the step growth factor; 1: constant steps), got '2' (str)"),
        (dict(growth=0.5), "growth must be a finite number >= 1 (the step growth factor; 1: constant steps), got 0.5"),
        (dict(tau_max=None), "tau_max must be a number > 0 (the largest time step; inf: no limit), got None "
                             "(NoneType)"),
        (dict(tau_max=float("nan")), "tau_max must be a number > 0 (the largest time step; inf: no limit), got nan"),
        (dict(tol="1e-6"), "tol must be a number with 0 < tol < 1 (the relative distance ||u - u*|| / ||u*|| to "
                           "stop at), e.g. 1e-6, got '1e-6' (str)"),
    ]:
        with pytest.raises(ValueError) as e:
            flow.run(U, max_steps=1, **kwargs)
        assert str(e.value) == said


@pytest.mark.parametrize("argv,said", [
    (["--rule", "refit", "--alpha", "inf"],
     "--alpha must be a finite number >= 0 (the refit's regularisation; 0: plain least squares), got inf"),
    (["--rule", "refit", "--alpha", "-1"],
     "--alpha must be a finite number >= 0 (the refit's regularisation; 0: plain least squares), got -1.0"),
    (["--rule", "quadrature", "--width", "8"], "--width 8: a quadrature readout's width is set by the mesh and the "
                                               "rule (cells x points per cell x subdivisions^D); choose --degree K "
                                               "and --subdivisions M, or use --rule sample for a given width"),
])
def test_readout_messages_name_the_options(tmp_path, capsys, argv, said):
    density = tmp_path / "s"
    assert cli.main(["solve", *FIT, "--out", str(density)]) == 0
    capsys.readouterr()
    data_args = ["--data", "sin", "--n", "40"] if "refit" in argv else []
    line = refused_by_cli(["readout", "--density", str(density), *data_args, *argv, "--out", str(tmp_path / "n.npz")],
                          capsys)
    assert line == f"flowfem: error: {said}"
    assert not (tmp_path / "n.npz").exists()


def test_readout_api_messages_name_the_arguments():
    from flowfem.readout import readout

    d = data.synthetic("sin", 40, seed=0)
    result = Problem(Space.box(1, 4, 4.0), alpha=1e-3).fit(d.x, d.y)
    with pytest.raises(ValueError, match=r"^width=8: a quadrature readout's width is set by the mesh"):
        readout(result, "quadrature", width=8)
    with pytest.raises(ValueError) as e:
        readout(result, "refit", alpha=float("inf"))
    assert str(e.value) == ("alpha must be a finite number >= 0 (the refit's regularisation; 0: plain least "
                            "squares), got inf")


@pytest.mark.parametrize("command,option,value,said", [
    ("flow", "--ts-rtol", "2", "argument --ts-rtol: 2 must be a number with 0 < --ts-rtol < 1, e.g. 1e-4"),
    ("flow", "--step-rtol", "2", "argument --step-rtol: 2 must be a number with 0 < --step-rtol < 1, e.g. 1e-6"),
    ("flow", "--rtol", "1", "argument --rtol: 1 must be a number with 0 < --rtol < 1, e.g. 1e-12"),
    ("solve", "--rtol", "2", "argument --rtol: 2 must be a number with 0 < --rtol < 1, e.g. 1e-10"),
    ("solve", "--alpha", "inf", "--alpha must be a finite number > 0 (the convexity constant of E_alpha), got inf"),
    ("solve", "--kappa", "inf", "--kappa must be a finite number > 0 (it sets how smooth the density is), got inf"),
    ("solve", "--activation", "leaky_relu:", "activation 'leaky_relu:': nothing follows ':'; write leaky_relu:SLOPE "
                                             "with 0 <= SLOPE < 1, e.g. leaky_relu:0.1, or plain leaky_relu (slope "
                                             "0.01)"),
    ("solve", "--activation", "monomial:", "activation 'monomial:': nothing follows ':'; write monomial:K with an "
                                           "integer K >= 1, e.g. monomial:2"),
    ("solve", "--weight", "gaussian:", "weight 'gaussian:': nothing follows ':'; write gaussian:S with a scale S > 0, "
                                       "e.g. gaussian:0.5, or plain gaussian (S = 1)"),
    ("flow", "--scheme", "bdf:", "time stepper 'bdf:': nothing follows ':'; write bdf:ORDER or plain bdf"),
    ("flow", "--scheme", "implicit_euler:", "time stepper 'implicit_euler:': nothing follows ':'; write "
                                            "implicit_euler"),
])
def test_command_messages_name_the_option_and_the_form(tmp_path, capsys, command, option, value, said):
    out = tmp_path / "out"
    extra = ["--max-steps", "2"] if command == "flow" else []
    line = refused_by_cli([command, *FIT, *extra, f"{option}={value}", "--out", str(out)], capsys)
    assert line.startswith(f"flowfem: error: {said}"), line
    assert not out.exists()


def test_api_refuses_an_empty_parameter_and_inf_by_the_arguments():
    from flowfem.activations import activation
    from flowfem.flow.schemes import parse_scheme
    from flowfem.sobolev import Weight

    for parse, spec in ((activation, "leaky_relu:"), (activation, "monomial: "), (Weight.parse, "gaussian:"),
                        (parse_scheme, "theta:")):
        with pytest.raises(ValueError, match=f"^[a-z ]+ '{spec}': nothing follows ':'; write "):
            parse(spec)
    assert activation("leaky_relu").slope == 0.01 and activation("leaky_relu:0.2").slope == 0.2
    with pytest.raises(ValueError, match=r"^alpha must be a finite number > 0 \(the convexity constant"):
        Problem(Space.box(1, 4, 4.0), alpha=float("inf"))
    with pytest.raises(ValueError, match=r"^kappa must be a finite number > 0"):
        Problem(Space.box(1, 4, 4.0), kappa=float("inf"))


# -- the path's grid from the command line, and a choice at its end ---------------------------------------------
def test_solve_alphas_sets_the_grid_and_a_choice_at_its_end_is_reported(tmp_path, capsys):
    """`--alpha auto` could not change its grid from the command line (the README advised `alphas=[...]`, API only),
    and a choice at the grid's end, where the best alpha may lie beyond it (iris2, stackloss), went unremarked.
    sin is noiseless: its best alpha is the smallest of any grid that ends at 1e-3."""
    out = tmp_path / "out"
    assert cli.main(["solve", "--data", "sin", "--n", "300", "--mesh-size", "16", "--alpha", "auto", "--alphas",
                     "1e-3,1e-1,1e-2", "--no-plot", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    path = json.load(open(out / "metrics.json"))["path"]
    assert [row["alpha"] for row in path["table"]] == [1e-1, 1e-2, 1e-3]
    assert path["alpha"] == 1e-3 and path["edge"] == "smallest"
    assert "warning: the chosen alpha is the grid's smallest; the best may lie below it: try --alphas " \
           "0.001,0.0001,1e-05,1e-06" in printed


@pytest.mark.parametrize("argv, said", [
    (["--alpha", "auto", "--alphas", "1e-2,x"], "--alphas: '1e-2,x': write numbers > 0 separated by commas"),
    (["--alpha", "auto", "--alphas", "1e-2,-1"], "--alphas must be a finite number > 0, got -1.0"),
    (["--alpha", "auto", "--alphas", "1e-2,1e-2"], "--alphas repeats a value: [0.01, 0.01]"),
    (["--alpha", "1e-3", "--alphas", "1e-2,1e-3"], "--alphas applies to --alpha auto only"),
])
def test_solve_alphas_is_refused_in_one_line(tmp_path, capsys, argv, said):
    line = refused_by_cli(["solve", "--data", "sin", "--n", "50", "--mesh-size", "8", "--no-plot", "--quiet", *argv,
                           "--out", str(tmp_path / "out")], capsys)
    assert said in line, line
    assert os.listdir(tmp_path) == []


def test_the_path_reports_which_end_of_its_grid_it_chose():
    from flowfem.path import RegularisationPath

    def path(scores):
        m = len(scores)
        return RegularisationPath(alphas=10.0 ** -np.arange(2, 2 + m), scores=np.array(scores), train_loss=np.zeros(m),
                                  iterations=np.zeros(m, int), newton=np.zeros(m, int), seconds=np.zeros(m),
                                  rank=np.zeros(m, int), accuracy=None, fold_scores=np.array([scores]),
                                  chosen=int(np.argmin(scores)), score="validation RMSE", validation=0.2, folds=None,
                                  seed=0)

    assert path([1.0, 2.0, 3.0]).edge == "largest"
    assert path([3.0, 2.0, 1.0]).edge == "smallest"
    assert path([3.0, 1.0, 2.0]).edge is None
    assert path([1.0]).edge is None  # one alpha has no beyond to look at
    assert path([3.0, 2.0, 1.0]).metrics()["edge"] == "smallest"
    assert np.allclose(path([1.0, 2.0, 3.0]).beyond(), [10.0, 1.0, 0.1, 0.01])
    assert np.allclose(path([3.0, 2.0, 1.0]).beyond(), [1e-4, 1e-5, 1e-6, 1e-7])
    assert path([3.0, 1.0, 2.0]).beyond() is None
    assert path([9.0 - k for k in range(9)]).beyond() is None  # the default grid's end, 1e-10, on purpose
