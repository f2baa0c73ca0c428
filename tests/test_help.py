"""Help, version and provenance of the flowfem command.

Every option says its default; --version and --help load neither dolfinx nor PETSc; usage
errors start ``flowfem: error:`` and suggest the closest name; mesh options a domain would
ignore are refused; metrics.json (solve), energy.json (flow) and results.json (compare) record
what a rerun needs; a classification run reports accuracy and the mean logistic loss.
"""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import BIN, ROOT, run

FLOWFEM = os.path.join(BIN, "flowfem")


def _subparsers():
    from flowfem import cli

    top = cli.parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return top, sub.choices


def _renderings(value) -> set[str]:
    """How a help text may write a default value: as given, or a number as %g or as 1e-4."""
    forms = {str(value)}
    if isinstance(value, float):
        forms |= {f"{value:g}", re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:.0e}").replace("e+", "e")}
    return forms


def test_every_option_has_help_stating_its_default():
    top, commands = _subparsers()
    missing = []
    for name, p in [("flowfem", top), *commands.items()]:
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or \
                    "--version" in action.option_strings:
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if action.help == argparse.SUPPRESS and action.default is None:
                continue  # hidden on purpose (readout's --test-data, read by the shared data loader)
            if not action.help:
                missing.append(f"{where}: no help")
                continue
            text = action.help % dict(vars(action), prog=p.prog)
            if isinstance(action, argparse._StoreTrueAction):  # a flag: off unless given, and said so
                if "default" not in text:
                    missing.append(f"{where}: a flag whose help does not say it is off by default: {text!r}")
                continue
            if action.default is None:
                continue  # no value: each help says what happens then
            if "default" not in text or not any(f in text for f in _renderings(action.default)):
                missing.append(f"{where}: default {action.default!r} not stated in {text!r}")
    assert not missing, "\n".join(missing)


def test_help_states_units_and_the_gaussian_parameters():
    _, commands = _subparsers()
    helps = {(name, o): a.help for name, p in commands.items() for a in p._actions for o in a.option_strings}
    assert "standard deviation" in helps[("solve", "--weight")] and "parameter units" in helps[("solve", "--weight")]
    initial = helps[("flow", "--initial")]
    assert "S its standard deviation" in initial and "A its height" in initial
    assert "parameter units" in helps[("solve", "--radius")] and "parameter units" in helps[("mesh", "--radius")]
    rule = helps[("readout", "--rule")]
    assert all(r in rule for r in ("quadrature", "sample", "refit"))


def test_version_and_help_do_not_load_dolfinx():
    r = run([FLOWFEM, "--version"])
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"flowfem \S+ \(dolfinx \S+, PETSc \d+\.\d+\.\d+, Python \S+\)\n", r.stdout), r.stdout
    probe = ("import sys\nfrom flowfem import cli\nfor a in (['--version'], ['solve', '--help']):\n"
             "    try:\n        cli.main(a)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dolfinx', 'ufl', 'basix', 'ffcx')"
             " or m == 'petsc4py.PETSc'))")
    r = run([sys.executable, "-c", probe])
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "[]", r.stdout + r.stderr


USAGE = [
    (["slove"], "argument command: invalid choice: 'slove': did you mean 'solve'?"),
    (["solve", "--data", "sin", "--out", "o", "--solver", "cgg"], "invalid choice: 'cgg': did you mean 'cg'?"),
    (["readout", "--density", "d", "--out", "n.npz", "--rule", "smaple"], "did you mean 'sample'?"),
    (["flow", "--data", "sin", "--out", "o", "--metric", "h1"], "did you mean 'H1'?"),
    (["mesh", "sphre", "--out", "m.msh"], "did you mean 'sphere'?"),
    (["solve", "--data", "sin"], "the following arguments are required: --out"),
]


@pytest.mark.parametrize("args,message", USAGE, ids=[" ".join(a[:1] + a[-1:]) for a, _ in USAGE])
def test_usage_errors_are_flowfems_and_suggest(args, message, capsys):
    from flowfem import cli

    with pytest.raises(SystemExit) as e:
        cli.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("flowfem: error:") and message in err, err
    assert err.rstrip().endswith("(see flowfem --help)" if args[0] == "slove" else f"(see flowfem {args[0]} --help)")


NAMES = [
    (["solve", "--data", "sine"], "data file 'sine' does not exist; did you mean the synthetic set 'sin'?"),
    (["solve", "--data", "sin", "--activation", "relus"], "unknown activation 'relus': did you mean 'relu'?"),
    (["solve", "--data", "sin", "--domain", "bx"], "unknown domain 'bx': did you mean 'box'?"),
    (["solve", "--data", "sin", "--weight", "gausian:2"], "did you mean 'gaussian'?"),
    (["solve", "--data", "sin", "--test-data", "stpe"], "did you mean the synthetic set 'step'?"),
    (["flow", "--data", "sin", "--scheme", "implict_euler"], "did you mean 'implicit_euler'?"),
    (["flow", "--data", "sin", "--initial", "gausian:2"], "did you mean 'gaussian'?"),
    (["landscape", "--network", "{tmp}/net.npz", "--data", "sin", "--loss", "logisitc"],
     "unknown loss 'logisitc': did you mean 'logistic'?"),
    (["compare", "--data", "sin", "--methods", "gd,adma"], "unknown particle method 'adma': did you mean 'adam'?"),
    (["compare", "--data", "sin", "--readout", "refitt"], "unknown readout rule 'refitt': did you mean 'refit'?"),
]


@pytest.mark.parametrize("args,message", NAMES, ids=[" ".join(a[-2:]) for a, _ in NAMES])
def test_misspelt_names_are_refused_with_the_closest(tmp_path, args, message, capsys, monkeypatch):
    from flowfem import cli
    from flowfem.network import Network

    monkeypatch.delenv("FLOWFEM_DEBUG", raising=False)
    Network(np.ones((2, 1)), np.zeros(2), np.ones(2), "relu").save(str(tmp_path / "net.npz"))
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if args[0] == "landscape" else ["--out", str(tmp_path / "out"), "--mesh-size", "4", "--n", "20"]
    assert cli.main(args + out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flowfem: error:") and message in err, err
    assert sorted(os.listdir(tmp_path)) == [".net.npz.flowfem", "net.npz"]  # nothing beside net.npz and its record


def test_api_names_suggest_the_closest():
    from flowfem import data
    from flowfem.activations import activation
    from flowfem.flow.schemes import parse_scheme
    from flowfem.loss import loss
    from flowfem.sobolev import Weight

    for call, guess in ((lambda: activation("tahn"), "tanh"), (lambda: loss("squard"), "squared"),
                        (lambda: Weight.parse("unifrom"), "uniform"), (lambda: parse_scheme("bdff"), "bdf"),
                        (lambda: data.synthetic("two_moon", 10), "two_moons")):
        with pytest.raises(ValueError, match=f"did you mean '{guess}'"):
            call()
    with pytest.raises(ValueError) as e:  # nothing close: the choices only
        activation("cosine")
    assert "did you mean" not in str(e.value) and "choose one of relu" in str(e.value)


IGNORED = [
    (["solve", "--data", "sin", "--domain", "{mesh}", "--mesh-size", "8"],
     "--mesh-size 8 does not apply to the mesh file"),
    (["solve", "--data", "sin", "--domain", "{mesh}", "--radius", "2"], "--radius 2 does not apply to the mesh file"),
    (["flow", "--data", "two_moons", "--domain", "sphere", "--radius", "3"],
     "--radius 3 does not apply to the sphere: it is the unit sphere, holding densities of directions: drop --radius"),
    (["compare", "--data", "sin", "--domain", "circle", "--radius", "1"], "--radius 1 does not apply to the circle"),
    (["mesh", "circle", "--radius", "2"], "--radius 2 does not apply to the circle"),
]


@pytest.mark.parametrize("args,message", IGNORED, ids=[" ".join(a[-4:]) for a, _ in IGNORED])
def test_options_a_domain_ignores_are_refused(tmp_path, args, message, capsys, monkeypatch):
    from flowfem import cli

    monkeypatch.delenv("FLOWFEM_DEBUG", raising=False)
    args = [a.format(mesh=os.path.join(ROOT, "meshes", "ball_d1_R4.msh")) for a in args]
    out = str(tmp_path / ("m.msh" if args[0] == "mesh" else "out"))
    assert cli.main(args + ["--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flowfem: error:") and message in err, err
    assert os.listdir(tmp_path) == []


def _versions_ok(v):
    return set(v) == {"flowfem", "dolfinx", "petsc", "python"} and all(v.values())


def test_metrics_record_what_a_rerun_needs(tmp_path):
    mesh = os.path.join(ROOT, "meshes", "box_d1_R4_n32.msh")
    r = run([FLOWFEM, "solve", "--data", "sin", "--n", "100", "--seed", "3", "--domain", mesh, "--degree", "2",
             "--rtol", "1e-9", "--no-plot", "--out", str(tmp_path / "out") + "/"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'out'}/: density.bp" in r.stdout and "//" not in r.stdout
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert _versions_ok(m["versions"])
    assert m["argv"][1:] == ["solve", "--data", "sin", "--n", "100", "--seed", "3", "--domain", mesh, "--degree", "2",
                             "--rtol", "1e-9", "--no-plot", "--out", str(tmp_path / "out") + "/"]
    import hashlib

    with open(mesh, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert (m["domain"], m["domain_path"], m["domain_sha256"]) == ("file", os.path.abspath(mesh), digest)
    assert (m["mesh_size"], m["radius"], m["degree"], m["quadrature_degree"]) == (None, None, 2, 4)
    assert (m["seed"], m["solver"], m["rtol"], m["ranks"], m["data"]) == (3, "cg", 1e-9, 1, "sin")
    assert m["wall_seconds"] >= m["solve_seconds"] + m["setup_seconds"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", m["started"])


def test_flow_and_compare_record_provenance(tmp_path):
    r = run([FLOWFEM, "flow", "--data", "sin", "--n", "50", "--mesh-size", "4", "--max-steps", "2", "--no-plot",
             "--quiet", "--radius", "3", "--out", str(tmp_path / "flow")], timeout=300)
    assert r.returncode == 0, r.stderr
    e = json.loads((tmp_path / "flow" / "energy.json").read_text())
    assert _versions_ok(e["versions"]) and e["argv"][1] == "flow" and "--radius" in e["argv"]
    assert (e["mesh_size"], e["radius"], e["solver"], e["rtol"], e["seed"]) == (4, 3.0, "cg", 1e-12, 0)
    assert "test_rmse" in e and "test_accuracy" not in e
    r = run([FLOWFEM, "compare", "--data", "sin", "--n", "50", "--domain", "box", "--mesh-size", "4", "--widths", "4",
             "--seeds", "0", "--methods", "gd", "--steps", "5", "--readout", "quadrature", "--no-plot", "--quiet",
             "--out", str(tmp_path / "cmp")], timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "cmp" / "results.json").read_text())["settings"]
    assert _versions_ok(s["versions"]) and s["argv"][1] == "compare"
    assert (s["seeds"], s["seed"], s["mesh_size"], s["radius"], s["quadrature_degree"]) == ([0], 0, 4, 4.0, 2)


def test_classification_reports_accuracy_and_logistic_loss(tmp_path):
    r = run([FLOWFEM, "solve", "--data", "two_moons", "--n", "100", "--domain", "sphere", "--mesh-size", "1",
             "--alpha", "1e-3", "--loss", "logistic", "--no-plot", "--out", str(tmp_path / "out")], timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "train_rmse" not in m and "test_rmse" not in m and m["radius"] is None
    assert m["train_loss"] == pytest.approx(m["loss"], rel=1e-12)  # the data term of E_alpha is the mean loss
    assert 0.8 <= m["test_accuracy"] <= 1 and 0 < m["test_loss"] < np.log(2)  # better than f = 0
    assert m["newton_iterations"] == m["iterations"] == len(m["newton_residuals"]) - 1
    assert m["linear_iterations_total"] == sum(m["linear_iterations"]) > 0
    assert (f"Newton (logistic loss): {m['iterations']} iterations (cg (nystrom preconditioner, basis of "
            f"{m['preconditioner_rank']}): {m['linear_iterations_total']} inner") in r.stdout
    assert "cg: " not in r.stdout.split("Newton")[0] and "RMSE" not in r.stdout
    assert f"accuracy train {m['train_accuracy']:.4f}, test {m['test_accuracy']:.4f}" in r.stdout


def test_importing_flowfem_first_repairs_a_failed_dolfinx_import():
    """With the PyPI wheel, importing dolfinx before flowfem fails (libmpi.so.12 is found only through
    mpi4py's loader); importing flowfem afterwards, in the same process, is enough (README)."""
    probe = ("try:\n    import dolfinx\n    print('first import worked')\nexcept ImportError as e:\n"
             "    print('first import failed:', e)\nimport flowfem\nimport dolfinx\nfrom petsc4py import PETSc\n"
             "print('then', dolfinx.__version__, PETSc.Sys.getVersion())")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    first, then = r.stdout.splitlines()
    assert first == "first import worked" or "libmpi" in first
    assert then.startswith("then 0.")


def test_the_data_help_names_every_real_data_set():
    """--data's help lists the real sets by name (stackloss, d = 3, was missing from it)."""
    from flowfem import datasets

    _, commands = _subparsers()
    for name in ("solve", "flow", "compare"):
        action = next(a for a in commands[name]._actions if "--data" in a.option_strings)
        missing = [s for s in datasets.REAL if s not in action.help]
        assert not missing, f"{name} --data help does not name {missing}"


def test_python_dash_m_flowfem_is_the_command():
    """`python -m flowfem` (no flowfem/__main__.py before: "No module named flowfem.__main__") runs the same
    command as the console script: the same --version line, and usage errors exit 2."""
    ours = run([sys.executable, "-m", "flowfem", "--version"], timeout=120)
    script = run([FLOWFEM, "--version"], timeout=120)
    assert ours.returncode == script.returncode == 0 and ours.stdout == script.stdout != ""
    bad = run([sys.executable, "-m", "flowfem", "solve", "--data", "sin", "--alpah", "1", "--out", "never"],
              timeout=120)
    assert bad.returncode == 2 and "did you mean --alpha?" in bad.stderr and "flowfem solve --help" in bad.stderr
    assert not os.path.exists("never")


def test_a_misspelt_option_names_the_closest_one_of_its_subcommand():
    """argparse said only "unrecognized arguments: --mesh-szie 8" (see flowfem --help); the closest option is
    now named, with the subcommand's help, and an option like no other gets no guess."""
    r = run([FLOWFEM, "readout", "--density", "d", "--out", "n.npz", "--widht", "8"], timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("flowfem: error: unrecognized arguments: --widht 8: did you "
                                                      "mean --width? (see flowfem readout --help)"), r.stderr
    r = run([FLOWFEM, "solve", "--data", "sin", "--out", "never", "--zzz"], timeout=120)
    assert r.returncode == 2 and "did you mean" not in r.stderr and "--zzz" in r.stderr
