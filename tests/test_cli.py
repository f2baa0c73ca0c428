"""The flowfem command: outputs, and bad input refused with one clear line, exit 2, no output left."""

import json
import os
import re

import numpy as np
import pytest

from conftest import BIN, run
from flowfem import data

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes; not rerun inside the MPI suite


def solve(tmp_path, *args, ranks=1, out="out"):
    return run([FLOWFEM, "solve", *args, "--out", str(tmp_path / out)], ranks=ranks, timeout=300)


def test_solve_writes_every_promised_file(tmp_path):
    r = solve(tmp_path, "--data", "sin", "--n", "300", "--mesh-size", "16", "--alpha", "1e-4")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == [".flowfem-output.json", "density.bp", "density.h5", "density.npz",
                                       "density.xdmf", "figure.png", "metrics.json", "predictions.csv"]
    m = json.loads((out / "metrics.json").read_text())
    # the data term from E_alpha's parts against the RMSE of the predictions: (1/n) sum (f - y)^2 / 2
    assert m["loss"] == pytest.approx(m["train_rmse"] ** 2 / 2, rel=1e-8) and m["regulariser"] > 0
    assert m["iterations"] > 0 and m["residual"] < 1e-9 and m["test_rmse"] < 0.05
    pred = np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1)
    assert pred.shape[1] == 3  # x1, y, f
    assert np.sqrt(np.mean((pred[:, 1] - pred[:, 2]) ** 2)) == pytest.approx(m["test_rmse"], rel=1e-10)
    with np.load(out / "density.npz", allow_pickle=False) as f:
        assert f["theta"].shape == (m["ndofs"], 2) and f["u"].shape == (m["ndofs"],)
    assert "E_alpha" in r.stdout and "iterations" in r.stdout


def test_solve_reads_csv_and_npz(tmp_path):
    x = np.linspace(-1, 1, 50)
    np.savetxt(tmp_path / "d.csv", np.column_stack([x, x**2]), delimiter=",", header="x1,y", comments="")
    np.savez(tmp_path / "d.npz", x=x[:, None], y=x**2)
    for name in ("d.csv", "d.npz"):
        r = solve(tmp_path, "--data", str(tmp_path / name), "--mesh-size", "8", "--no-plot", out=name + ".out")
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / (name + ".out") / "metrics.json").read_text())["n_train"] == 40


def _bad_files(tmp_path):
    x = np.linspace(-1, 1, 20)
    nan = np.column_stack([x, x])
    nan[3, 1] = np.nan
    np.savetxt(tmp_path / "nan.csv", nan, delimiter=",", header="x1,y", comments="")
    np.savez(tmp_path / "shape.npz", x=x[:, None], y=x[:-2])
    np.savez(tmp_path / "d3.npz", x=np.zeros((20, 3)), y=x)
    (tmp_path / "garbage.msh").write_bytes(b"\x00\x01 not a mesh")
    np.savetxt(tmp_path / "xerr.csv", np.column_stack([x, 0 * x, x]), delimiter=",", header="x1,xerr,y", comments="")
    np.savetxt(tmp_path / "headerless.csv", np.column_stack([x, x]), delimiter=",")
    np.savetxt(tmp_path / "outputs.csv", np.column_stack([x, x, x]), delimiter=",", header="x1,y1,y3", comments="")


BAD = [
    (["--data", "{tmp}/nan.csv"], "NaN"),
    (["--data", "{tmp}/shape.npz"], "targets y have shape"),
    (["--data", "{tmp}/d3.npz"], "dimension d = 3"),
    (["--data", "{tmp}/missing.csv"], "does not exist"),
    (["--data", "sin", "--alpha", "0"], "--alpha must be a finite number > 0"),
    (["--data", "sin", "--alpha=-1e-3"], "must be a finite number > 0"),
    (["--data", "sin", "--activation", "swish"], "unknown activation"),
    (["--data", "sin", "--domain", "{tmp}/garbage.msh"], "cannot read mesh file"),
    (["--data", "sin", "--domain", "circle", "--activation", "tanh"], "positively homogeneous"),
    (["--data", "two_moons", "--domain", "sphere", "--activation", "sigmoid"], "positively homogeneous"),
    (["--data", "sin", "--domain", "sphere"], "the sphere parametrises inputs of dimension 2"),
    (["--data", "sin", "--kappa", "0"], "kappa"),
    (["--data", "sin", "--weight", "gaussian:-1"], "scale"),
    (["--data", "{tmp}/xerr.csv"], "unknown column(s) 'xerr'"),
    (["--data", "{tmp}/headerless.csv"], "has no header: make its first line name the columns, e.g. x1,y"),
    (["--data", "{tmp}/outputs.csv"], "output column(s) y2 missing (found y1, y3)"),
    (["--data", "sin", "--test-data", "{tmp}/xerr.csv"], "unknown column(s) 'xerr'"),
]


def _size(args):
    """--mesh-size 8, except with a mesh file (which refuses it: it has its own cells)."""
    return [] if any(a.endswith(".msh") for a in args) else ["--mesh-size", "8"]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_cleanly(tmp_path, args, message):
    _bad_files(tmp_path)
    r = solve(tmp_path, *[a.format(tmp=tmp_path) for a in args], *_size(args))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowfem: error:") and message in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".csv", ".npz", ".msh"))) == []


@pytest.mark.parametrize("args,message", [BAD[0], BAD[7], BAD[9]], ids=["nan", "mesh", "sphere"])
def test_bad_input_under_mpirun_ends_every_rank(tmp_path, args, message):
    _bad_files(tmp_path)
    r = solve(tmp_path, *[a.format(tmp=tmp_path) for a in args], *_size(args), ranks=2)
    assert r.returncode != 0 and message in r.stderr
    assert r.stderr.count("flowfem: error:") == 1  # said once, by rank 0
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    r = solve(tmp_path, "--data", "sin", "--mesh-size", "8", "--no-plot")
    assert r.returncode == 2 and "--force" in r.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    r = solve(tmp_path, "--data", "sin", "--mesh-size", "8", "--no-plot", "--force")  # not flowfem's: kept
    assert r.returncode == 2 and "flowfem wrote" in r.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    (tmp_path / "out" / "keep.txt").unlink()  # an empty directory is free
    assert solve(tmp_path, "--data", "sin", "--mesh-size", "8", "--no-plot").returncode == 0


@pytest.mark.parametrize("domain,ext", [("box", "msh"), ("sphere", "xdmf"), ("circle", "msh")])
def test_mesh_command_writes_a_readable_mesh(tmp_path, domain, ext):
    path = tmp_path / f"m.{ext}"
    r = run([FLOWFEM, "mesh", domain, "--size", "2" if domain == "sphere" else "8", "--out", str(path)])
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    data = "two_moons" if domain == "sphere" else "sin"
    r = solve(tmp_path, "--data", data, "--domain", str(path), "--n", "100", "--no-plot")
    assert r.returncode == 0, r.stderr


BAD_MESH = [
    (["box", "--size", "0"], "flowfem: error: --size must be a whole number >= 1 (cells per side), got 0"),  # not 32
    (["box", "--size", "2.5"], "--size must be a whole number >= 1 (cells per side), got 2.5"),
    (["box", "--size", "nan"], "--size must be a whole number >= 1 (cells per side), got nan"),
    (["box", "--size", "-3"], "--size must be a whole number >= 1 (cells per side), got -3"),
    (["box", "--size", "many"], "argument --size: 'many' is not a number"),
    (["box", "--radius", "0"], "argument --radius: 0 must be a finite number > 0"),
    (["box", "--radius=-1"], "argument --radius: -1 must be a finite number > 0"),
    (["ball", "--radius", "inf"], "argument --radius: inf must be a finite number > 0"),
    (["ball", "--radius", "nan"], "argument --radius: nan must be a finite number > 0"),
    (["ball", "--size", "0"], "--size must be a finite number > 0, got 0.0"),
    (["circle", "--size", "2"], "--size must be a whole number >= 3 (the circle's arcs; two arcs would join the same "
                                  "two vertices), got 2"),
    (["sphere", "--size", "1.5"], "--size must be a whole number >= 0 (the sphere's refinements of the icosahedron), "
                                  "got 1.5"),
    (["sphere", "--d", "1"], "the sphere parametrises inputs of dimension 2"),
    (["box", "--d", "3"], "input dimension d = 3"),
    (["torus"], "argument domain: invalid choice: 'torus'"),
]


@pytest.mark.parametrize("args,message", BAD_MESH, ids=[" ".join(a) for a, _ in BAD_MESH])
def test_mesh_command_checks_its_arguments(tmp_path, args, message):
    r = run([FLOWFEM, "mesh", *args, "--out", str(tmp_path / "m.msh")])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowfem") and message in lines[0], r.stderr
    assert os.listdir(tmp_path) == []


def test_mesh_command_sizes_zero_and_defaults(tmp_path):
    """Size 0 of the sphere is 0 refinements (the icosahedron), not the default 3."""
    r = run([FLOWFEM, "mesh", "sphere", "--size", "0", "--out", str(tmp_path / "s.msh")])
    assert r.returncode == 0 and "20 triangles" in r.stdout, r.stderr
    r = run([FLOWFEM, "mesh", "circle", "--out", str(tmp_path / "c.xdmf")])
    assert r.returncode == 0 and "64 intervals" in r.stdout, r.stderr
    r = run([FLOWFEM, "mesh", "box", "--size", "1", "--radius", "0.5", "--out", str(tmp_path / "b.msh")])
    assert r.returncode == 0 and "2 triangles" in r.stdout, r.stderr
    assert sorted(os.listdir(tmp_path)) == [".b.msh.flowfem", ".c.xdmf.flowfem", ".s.msh.flowfem",  # the records
                                            "b.msh", "c.xdmf", "s.msh"]


def test_mesh_size_zero_is_refused_by_solve(tmp_path):
    r = solve(tmp_path, "--data", "sin", "--mesh-size", "0", "--no-plot")
    assert r.returncode == 2 and "--mesh-size must be a whole number >= 1 (cells per side), got 0" in r.stderr
    assert not (tmp_path / "out").exists()


def test_fewer_cells_than_ranks(tmp_path):
    """--mesh-size 1 is 2 triangles: on 3 ranks one owns none (before: a hang)."""
    r = solve(tmp_path, "--data", "sin", "--n", "200", "--mesh-size", "1", "--no-plot", ranks=3)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (m["cells"], m["ranks"], m["ndofs"]) == (2, 3, 4) and m["residual"] < 1e-9


def test_invalid_mesh_file_under_mpirun(tmp_path):
    """One triangle with a repeated vertex (before: free(): invalid next size, SIGABRT)."""
    (tmp_path / "bad.msh").write_text("\n".join([
        "$MeshFormat", "2.2 0 8", "$EndMeshFormat", "$Nodes", "3", "1 -3 -3 0", "2 3 -3 0", "3 -3 3 0", "$EndNodes",
        "$Elements", "1", "1 2 2 0 1 1 1 2", "$EndElements", ""]))
    r = solve(tmp_path, "--data", "sin", "--domain", str(tmp_path / "bad.msh"), "--no-plot", ranks=2)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cell 0 repeats a node, [0, 0, 1]" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_unexpected_error_is_one_line(monkeypatch, capsys):
    """Not only ValueError: any exception is one line and status 2 (FLOWFEM_DEBUG=1: the traceback)."""
    from flowfem import cli

    def broken(args, comm):
        raise KeyError("density")

    monkeypatch.setattr(cli, "cmd_mesh", broken)
    monkeypatch.delenv("FLOWFEM_DEBUG", raising=False)
    assert cli.main(["mesh", "box", "--out", "m.msh"]) == 2
    assert capsys.readouterr().err == "flowfem: error: KeyError: 'density'\n"
    monkeypatch.setenv("FLOWFEM_DEBUG", "1")
    assert cli.main(["mesh", "box", "--out", "m.msh"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "KeyError: 'density'" in err


def test_help_explains():
    r = run([FLOWFEM, "solve", "--help"])
    assert r.returncode == 0
    for word in ("--activation", "--alpha", "--domain", "--solver", "E_alpha"):
        assert word in r.stdout


def test_readout_and_predict_round_trip(tmp_path):
    """solve -> readout (each rule) -> predict: the quadrature network reproduces the solve's predictions."""
    assert solve(tmp_path, "--data", "sin", "--n", "400", "--mesh-size", "12", "--no-plot").returncode == 0
    dens = str(tmp_path / "out")
    for rule, extra in (("quadrature", []), ("sample", ["--width", "300"]), ("refit", ["--data", "sin", "--n", "400"])):
        r = run([FLOWFEM, "readout", "--density", dens, "--rule", rule, *extra, "--out", str(tmp_path / f"{rule}.npz")])
        assert r.returncode == 0, r.stderr
    r = run([FLOWFEM, "predict", "--network", str(tmp_path / "quadrature.npz"), "--data", dens + "/predictions.csv",
             "--out", str(tmp_path / "p.csv")])
    assert r.returncode == 0, r.stderr
    solved = np.loadtxt(tmp_path / "out" / "predictions.csv", delimiter=",", skiprows=1)
    network = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert np.allclose(network[:, 0], solved[:, 0])
    assert np.abs(network[:, 1] - solved[:, 2]).max() <= 1e-10 * np.abs(solved[:, 2]).max()
    # a sample readout under mpirun -n 2 is the same network as the serial one
    r = run([FLOWFEM, "readout", "--density", dens, "--rule", "sample", "--width", "300", "--out",
             str(tmp_path / "sample2.npz")], ranks=2)
    assert r.returncode == 0, r.stderr
    one, two = np.load(tmp_path / "sample.npz"), np.load(tmp_path / "sample2.npz")
    assert all(np.array_equal(one[k], two[k]) for k in ("W", "b", "a"))


def test_readout_and_predict_refuse_bad_input(tmp_path):
    assert solve(tmp_path, "--data", "sin", "--n", "100", "--mesh-size", "8", "--no-plot").returncode == 0
    cases = [
        ([FLOWFEM, "readout", "--density", str(tmp_path / "nowhere"), "--out", str(tmp_path / "n.npz")], "cannot read density"),
        ([FLOWFEM, "readout", "--density", str(tmp_path / "out"), "--rule", "refit", "--out", str(tmp_path / "n.npz")], "pass --data"),
        ([FLOWFEM, "readout", "--density", str(tmp_path / "out"), "--rule", "sample", "--out", str(tmp_path / "n.npz")], "width"),
        ([FLOWFEM, "predict", "--network", str(tmp_path / "out" / "density.npz"), "--data", "sin"], "not a flowfem network"),
        ([FLOWFEM, "predict", "--network", str(tmp_path / "none.npz"), "--data", "sin"], "cannot read network file"),
    ]
    for cmd, message in cases:
        r = run(cmd)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (cmd, r.stderr)
    assert not (tmp_path / "n.npz").exists()


def test_solve_builds_the_data_operator_once(tmp_path, operator_count, capsys):
    """One Phi per solve, and the set-up time reported is that operator's."""
    from flowfem import cli

    assert cli.main(["solve", "--data", "sin", "--n", "200", "--mesh-size", "8", "--no-plot",
                     "--out", str(tmp_path / "out")]) == 0
    assert len(operator_count) == 1
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 < m["setup_seconds"] and 0 < m["solve_seconds"] and "data operator" in capsys.readouterr().out


# -- every command reads data columns by name --------------------------------------------------


@pytest.fixture(scope="module")
def by_name(tmp_path_factory):
    """The same 2-D data with the header x1,x2,y and with y,x2,x1; inputs x1,x2 and x2,x1; a network."""
    from flowfem.network import Network

    tmp = tmp_path_factory.mktemp("by_name")
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (120, 2))
    y = np.maximum(x[:, 0] - 0.2, 0.0) + 0.3 * x[:, 1]  # not symmetric in x1 and x2
    np.savetxt(tmp / "ordered.csv", np.column_stack([x, y]), delimiter=",", header="x1,x2,y", comments="")
    np.savetxt(tmp / "shuffled.csv", np.column_stack([y, x[:, 1], x[:, 0]]), delimiter=",", header="y,x2,x1",
               comments="")
    np.savetxt(tmp / "in_ordered.csv", x, delimiter=",", header="x1,x2", comments="")
    np.savetxt(tmp / "in_shuffled.csv", x[:, ::-1], delimiter=",", header="x2,x1", comments="")
    Network([[1.0, -2.0], [0.5, 1.5]], [0.1, -0.2], [1.0, 2.0], "tanh").save(str(tmp / "net.npz"))
    return tmp


def test_solve_reads_columns_by_name(by_name, tmp_path):
    m = []
    for name in ("ordered", "shuffled"):
        r = solve(tmp_path, "--data", str(by_name / f"{name}.csv"), "--mesh-size", "4", "--radius", "2",
                  "--no-plot", out=name)
        assert r.returncode == 0, r.stderr
        m.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert m[0]["energy"] == m[1]["energy"] and m[0]["test_rmse"] == m[1]["test_rmse"] < 0.1


def test_flow_reads_columns_by_name(by_name, tmp_path):
    logs = []
    for name in ("ordered", "shuffled"):
        r = run([FLOWFEM, "flow", "--data", str(by_name / f"{name}.csv"), "--mesh-size", "4", "--radius", "2",
                 "--max-steps", "2", "--no-reference", "--no-plot", "--quiet", "--out", str(tmp_path / name)],
                timeout=300)
        assert r.returncode == 0, r.stderr
        logs.append(json.loads((tmp_path / name / "energy.json").read_text())["steps"])
    assert [s["energy"] for s in logs[0]] == [s["energy"] for s in logs[1]]


def test_compare_reads_columns_by_name(by_name, tmp_path):
    runs = []
    for name in ("ordered", "shuffled"):
        r = run([FLOWFEM, "compare", "--data", str(by_name / f"{name}.csv"), "--mesh-size", "4", "--radius", "2",
                 "--widths", "8", "--seeds", "0", "--methods", "gd", "--steps", "5", "--readout", "sample",
                 "--quiet", "--no-plot", "--out", str(tmp_path / name)], timeout=300)
        assert r.returncode == 0, r.stderr
        runs.append(json.loads((tmp_path / name / "results.json").read_text())["runs"])
    assert [(r["method"], r["test_rmse"], r["train_loss"]) for r in runs[0]] == \
           [(r["method"], r["test_rmse"], r["train_loss"]) for r in runs[1]]


def test_predict_to_stdout_keeps_the_csv_clean_and_reports_the_rmse_on_stderr(by_name, tmp_path):
    """Without --out the predictions are the CSV on stdout (nothing else there) and the RMSE against the
    inputs' y, which the README says y is read for, goes to stderr (it was not reported at all)."""
    r = run([FLOWFEM, "predict", "--network", str(by_name / "net.npz"), "--data", str(by_name / "shuffled.csv")])
    assert r.returncode == 0, r.stderr
    to_file = run([FLOWFEM, "predict", "--network", str(by_name / "net.npz"), "--data",
                   str(by_name / "shuffled.csv"), "--out", str(tmp_path / "p.csv")])
    assert r.stdout == (tmp_path / "p.csv").read_text()  # stdout is exactly the file --out writes
    rmse = re.search(r"RMSE against y ([0-9.e+-]+)", r.stderr)
    assert rmse and rmse.group(1) in to_file.stdout, (r.stderr, to_file.stdout)


def test_predict_reads_columns_by_name(by_name, tmp_path):
    out = []
    for name in ("in_ordered", "in_shuffled", "shuffled"):
        r = run([FLOWFEM, "predict", "--network", str(by_name / "net.npz"), "--data", str(by_name / f"{name}.csv"),
                 "--out", str(tmp_path / f"{name}.csv")])
        assert r.returncode == 0, r.stderr
        out.append(np.loadtxt(tmp_path / f"{name}.csv", delimiter=",", skiprows=1))
    assert "RMSE against y" in r.stdout  # a target column, when present, is used for the RMSE only
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])
    (tmp_path / "bad.csv").write_text("x1,x2,xerr\n0.1,0.2,0.3\n")
    r = run([FLOWFEM, "predict", "--network", str(by_name / "net.npz"), "--data", str(tmp_path / "bad.csv")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown column(s) 'xerr'" in r.stderr, r.stderr


def test_landscape_reads_columns_by_name(by_name, tmp_path):
    reports = []
    for name in ("ordered", "shuffled"):
        r = run([FLOWFEM, "landscape", "--network", str(by_name / "net.npz"), "--data", str(by_name / f"{name}.csv"),
                 "--mu", "0.5", "--json", str(tmp_path / f"{name}.json")], timeout=120)
        assert r.returncode == 0, r.stderr
        reports.append({k: v for k, v in json.loads((tmp_path / f"{name}.json").read_text()).items() if k != "data"})
    assert reports[0] == reports[1]


def test_an_unconverged_solve_fails_unless_allowed(tmp_path):
    """--solver direct with monomial:8 reached a residual of 22 and wrote it with exit 0."""
    args = ["solve", "--data", "sin", "--n", "300", "--activation", "monomial:8", "--solver", "direct",
            "--mesh-size", "16", "--no-plot"]
    r = run([FLOWFEM, *args, "--out", str(tmp_path / "a")])
    assert r.returncode == 2 and "relative residual of" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    r = run([FLOWFEM, *args, "--allow-unconverged", "--out", str(tmp_path / "b")])
    assert r.returncode == 0 and "NOT CONVERGED" in r.stdout
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["converged"] is False and metrics["residual"] > 1e-10


def test_test_data_is_used_with_synthetic_training_data(tmp_path):
    """--test-data was silently ignored when --data named a synthetic set."""
    x = np.linspace(-0.9, 0.9, 37)
    (tmp_path / "held_out.csv").write_text("x1,y\n" + "".join(f"{v:.17g},{np.sin(3 * v):.17g}\n" for v in x))
    r = solve(tmp_path, "--data", "sin", "--test-data", str(tmp_path / "held_out.csv"), "--mesh-size", "8",
              "--no-plot")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_test"] == 37
    predicted = np.loadtxt(tmp_path / "out" / "predictions.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(np.sort(predicted[:, 0]), x)


@pytest.mark.parametrize("command", ["solve", "flow"])
def test_test_labels_are_refused_before_the_fit(tmp_path, monkeypatch, capsys, command):
    """Logistic test labels 0/1 are scored only after the fit (or the flow): they are refused before it
    starts, not after minutes of work. The fit here would fail loudly if it were reached."""
    from flowfem import cli
    from flowfem.problem import Problem

    def reached(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(Problem, "fit", reached)
    monkeypatch.setattr(Problem, "functional", reached)
    x = np.linspace(-1, 1, 40)[:, None]
    data.save(data.Dataset(x, np.where(x[:, 0] > 0, 1.0, -1.0)), tmp_path / "train.npy")
    data.save(data.Dataset(x[::2], (x[::2, 0] > 0).astype(float)), tmp_path / "test01.npy")  # labels 0/1
    assert cli.main([command, "--data", str(tmp_path / "train.npy"), "--test-data", str(tmp_path / "test01.npy"),
                     "--loss", "logistic", "--mesh-size", "8", "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "10 of the 20 test targets y are neither -1 nor +1" in err and "started" not in err, err
    assert not (tmp_path / "out").exists()


def test_n_with_data_read_from_a_file_is_refused_not_ignored(tmp_path, capsys):
    """--n sizes a synthetic set; with a file (or a real set) it sized nothing and was silently ignored.
    Refused in every command that takes it, with the file's name; kept where it sizes a synthetic
    --test-data; a misspelt set name is still named as such first."""
    from flowfem import cli
    from flowfem.network import Network

    x = np.linspace(-1, 1, 30)[:, None]
    data.save(data.Dataset(x, np.sin(x[:, 0])), tmp_path / "d.npy")
    data.save(data.Dataset(x, np.sin(x[:, 0])), tmp_path / "d.csv")
    Network(np.ones((2, 1)), np.zeros(2), np.ones(2), "relu").save(str(tmp_path / "net.npz"))
    fit = ["--mesh-size", "4", "--quiet", "--no-plot", "--out", str(tmp_path / "out")]
    for argv in (["solve", "--data", "{d}.npy", *fit], ["solve", "--data", "{d}.csv", "--sharded", *fit],
                 ["flow", "--data", "{d}.csv", *fit], ["compare", "--data", "{d}.npy", *fit],
                 ["predict", "--network", "{d}/net.npz", "--data", "{d}.csv"],
                 ["landscape", "--network", "{d}/net.npz", "--data", "{d}.csv"]):
        argv = [a.replace("{d}", str(tmp_path / "d") if a.startswith("{d}.") else str(tmp_path)) for a in argv]
        assert cli.main(argv + ["--n", "500"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--n 500 sets the size of a synthetic data set" in err, (argv, err)
        assert "d.npy is read whole" in err or "d.csv is read whole" in err, err
        assert not (tmp_path / "out").exists()
    assert cli.main(["solve", "--data", "sine", "--n", "500", *fit]) == 2  # the misspelling, not --n
    assert "sin" in capsys.readouterr().err.split("--n")[0]
    # --n sizes a synthetic --test-data (max(n, 1000) points): used, so accepted
    assert cli.main(["solve", "--data", str(tmp_path / "d.npy"), "--test-data", "sin", "--n", "1500", *fit]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_test"] == 1500
