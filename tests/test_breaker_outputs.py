"""What broke when multi-output data and real data sets met the rest of the command (issue 14 §1, §3):
test data with another number of outputs than the training data (a NumPy broadcasting error after
the whole solve), a density file with input_mean but no input_scale (a bare KeyError), `flow` and
`compare` fitting a real data set on its raw inputs where `solve` standardises them, `predict` of a
network of m outputs on a synthetic set (refused for the set's own y, which predict does not need),
and a fit of m outputs whose memory grows with m but is estimated as for one."""

import json
import os

import numpy as np
import pytest

from conftest import BIN, run

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes; not rerun inside the MPI suite


def write_csv(path, x, Y):
    """x (n, 1) and Y (n, m) as CSV with header x1,y1..ym (m >= 2) or x1,y (m = 1)."""
    Y = np.asarray(Y).reshape(len(x), -1)
    names = ["y"] if Y.shape[1] == 1 else [f"y{k + 1}" for k in range(Y.shape[1])]
    np.savetxt(path, np.column_stack([x, Y]), delimiter=",", header=",".join(["x1", *names]), comments="")


def targets(n, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 1))
    t = x[:, 0]
    return x, np.column_stack([np.sin(np.pi * t), t**2, np.abs(t)])


def one_error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("flowfem: error:"), r.stderr
    return lines[0]


# -- test data of another number of outputs ------------------------------------------------


def test_train_test_refuses_test_data_of_another_number_of_outputs(tmp_path):
    from flowfem import data

    x, Y = targets(40)
    write_csv(tmp_path / "three.csv", x, Y)
    write_csv(tmp_path / "two.csv", x, Y[:, :2])
    with pytest.raises(ValueError, match=r"test data .*2 output.*training data .*3"):
        data.train_test(str(tmp_path / "three.csv"), test=str(tmp_path / "two.csv"))
    with pytest.raises(ValueError, match=r"test data .*1 output.*training data .*3"):
        data.train_test(str(tmp_path / "three.csv"), test="sin")
    # one test row of one output broadcasts against three training outputs without the check
    write_csv(tmp_path / "one_row.csv", x[:1], Y[:1, 0])
    with pytest.raises(ValueError, match=r"test data .*1 output.*training data .*3"):
        data.train_test(str(tmp_path / "three.csv"), test=str(tmp_path / "one_row.csv"))


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("command", ["solve", "flow"])
def test_solve_and_flow_refuse_test_data_of_another_number_of_outputs(tmp_path, command, ranks):
    x, Y = targets(40)
    write_csv(tmp_path / "three.csv", x, Y)
    write_csv(tmp_path / "two.csv", x, Y[:, :2])
    before = sorted(os.listdir(tmp_path))
    extra = ["--max-steps", "2"] if command == "flow" else []
    r = run([FLOWFEM, command, "--data", str(tmp_path / "three.csv"), "--test-data", str(tmp_path / "two.csv"),
             "--mesh-size", "4", "--no-plot", "--quiet", *extra, "--out", str(tmp_path / "out")],
            ranks=ranks, timeout=300)
    line = one_error_line(r)
    assert "broadcast" not in line and "2 output" in line and "3" in line, line
    assert "test data" in line, line
    assert sorted(os.listdir(tmp_path)) == before  # no output directory, no checkpoints


# -- a density file with half of the input scaling ------------------------------------------


@pytest.mark.parametrize("ranks", [1, 2])
def test_readout_of_a_density_with_input_mean_but_no_input_scale(tmp_path, ranks):
    r = run([FLOWFEM, "solve", "--data", "engel", "--mesh-size", "4", "--no-plot", "--quiet",
             "--out", str(tmp_path / "s")], timeout=300)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "s" / "density.npz") as f:
        arrays = dict(f)
    assert "input_mean" in arrays and "input_scale" in arrays
    del arrays["input_scale"]
    np.savez(tmp_path / "half.npz", **arrays)
    r = run([FLOWFEM, "readout", "--density", str(tmp_path / "half.npz"), "--out", str(tmp_path / "net.npz")],
            ranks=ranks, timeout=300)
    line = one_error_line(r)
    assert "KeyError" not in line and "half.npz" in line, line
    assert "input_mean" in line and "input_scale" in line, line  # names the pair, as Network.load does
    assert not (tmp_path / "net.npz").exists()


# -- flow and compare on a real data set standardise as solve does --------------------------


def test_flow_of_a_real_data_set_standardises_its_inputs_like_solve(tmp_path):
    common = ["--data", "engel", "--mesh-size", "6", "--alpha", "1e-4", "--no-plot", "--quiet"]
    r = run([FLOWFEM, "solve", *common, "--out", str(tmp_path / "s")], timeout=300)
    assert r.returncode == 0, r.stderr
    r = run([FLOWFEM, "flow", *common, "--tau", "0.5", "--growth", "3", "--tol", "1e-8",
             "--out", str(tmp_path / "f")], timeout=300)
    assert r.returncode == 0, r.stderr
    solved, flowed = (np.load(tmp_path / d / "density.npz") for d in ("s", "f"))
    # the flow's density was fitted on the same standardised inputs and says so, so readout folds it
    assert "input_mean" in flowed and "input_scale" in flowed, sorted(flowed)
    np.testing.assert_allclose(flowed["input_mean"], solved["input_mean"], rtol=1e-14)
    np.testing.assert_allclose(flowed["input_scale"], solved["input_scale"], rtol=1e-14)
    log = json.loads((tmp_path / "f" / "energy.json").read_text())
    assert log["input_scaling"]["input_mean"] == pytest.approx(list(solved["input_mean"]), rel=1e-14)
    # and it flows to the same minimiser (both sorted by dof coordinates: the same mesh, one rank)
    a, b = np.lexsort(solved["theta"].T[::-1]), np.lexsort(flowed["theta"].T[::-1])
    assert np.allclose(solved["theta"][a], flowed["theta"][b], atol=1e-12)
    u, v = solved["u"][a], flowed["u"][b]
    assert np.linalg.norm(u - v) <= 1e-6 * np.linalg.norm(u)
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert log["test_rmse"] == pytest.approx(metrics["test_rmse"], rel=1e-6)


def test_compare_on_a_real_data_set_fits_the_standardised_inputs_like_solve(tmp_path):
    common = ["--data", "engel", "--mesh-size", "6", "--alpha", "1e-4", "--no-plot", "--quiet"]
    r = run([FLOWFEM, "solve", *common, "--out", str(tmp_path / "s")], timeout=300)
    assert r.returncode == 0, r.stderr
    r = run([FLOWFEM, "compare", *common, "--widths", "4", "--seeds", "0", "--steps", "2", "--methods", "adam",
             "--readout", "quadrature", "--out", str(tmp_path / "c")], timeout=300)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    lines = (tmp_path / "c" / "runs.csv").read_text().splitlines()
    header, fe = lines[0].split(","), next(ln for ln in lines if ln.startswith("FE solve,"))
    rmse = float(fe.split(",")[header.index("test_rmse")])
    assert rmse == pytest.approx(metrics["test_rmse"], rel=1e-6)  # 87.1 on raw incomes, 75.7 standardised
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    assert "input_scaling" in json.dumps(results)


# -- predict of an m-output network on a synthetic set ----------------------------------------


def test_predict_of_a_three_output_network_on_a_synthetic_set(tmp_path):
    """predict's y is optional and only reports an RMSE (README); a synthetic set always has one
    output of its own, which must not stop the predictions of a network of three."""
    x, Y = targets(60)
    write_csv(tmp_path / "three.csv", x, Y)
    r = run([FLOWFEM, "solve", "--data", str(tmp_path / "three.csv"), "--mesh-size", "4", "--no-plot", "--quiet",
             "--out", str(tmp_path / "s")], timeout=300)
    assert r.returncode == 0, r.stderr
    r = run([FLOWFEM, "readout", "--density", str(tmp_path / "s"), "--out", str(tmp_path / "net.npz")])
    assert r.returncode == 0, r.stderr
    r = run([FLOWFEM, "predict", "--network", str(tmp_path / "net.npz"), "--data", "sin", "--n", "7",
             "--out", str(tmp_path / "p.csv")])
    assert r.returncode == 0, r.stderr
    table = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "x1,f1,f2,f3" and table.shape == (7, 4)
    from flowfem.network import Network

    net = Network.load(tmp_path / "net.npz")
    np.testing.assert_allclose(table[:, 1:], net.predict(table[:, :1]), rtol=1e-12, atol=1e-14)


# -- memory of m outputs ---------------------------------------------------------------------


def test_fit_of_many_outputs_is_refused_before_it_outgrows_the_memory(monkeypatch):
    """Each output holds its own solution, right-hand side, work vectors and density (measured: about
    8.6 vectors of ndofs doubles per output, 75 MB for 1000 outputs on 1089 dofs): 2500 outputs on
    the 81 dofs of an 8 x 8 box need about 14 MB, which a machine with 5 MB does not have, while one
    output on the same mesh fits."""
    from flowfem import memory
    from flowfem.problem import Problem
    from flowfem.space import Space

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (20, 1))
    monkeypatch.setattr(memory, "available_bytes", lambda: 5 * 10**6)
    problem = Problem(Space.box(d=1, n=8, radius=4.0), alpha=1e-4)
    problem.fit(x, rng.standard_normal(20))  # one output fits
    with pytest.raises(ValueError, match=r"2500 outputs.*needs about.*5 MB available"):
        problem.fit(x, rng.standard_normal((20, 2500)))


# -- readout --rule refit on the solve's training rows ---------------------------------------

def test_refit_fits_on_the_solves_training_rows_not_its_test_rows(tmp_path, monkeypatch):
    """solve --seed 3 splits a file's rows with seed 3; readout --rule refit used its own --seed
    (default 0) and so fitted on most of the solve's test rows. The density records the split."""
    from flowfem import data, readout
    from flowfem.cli import main

    x, Y = targets(100, seed=4)
    write_csv(tmp_path / "d.csv", x, Y[:, 0])
    assert main(["solve", "--data", str(tmp_path / "d.csv"), "--seed", "3", "--mesh-size", "4", "--no-plot",
                 "--quiet", "--out", str(tmp_path / "out")]) == 0
    seen = {}
    original = readout.readout

    def spy(u, rule, **kwargs):
        seen["x"] = kwargs["x"]
        return original(u, rule, **kwargs)

    monkeypatch.setattr(readout, "readout", spy)
    assert main(["readout", "--density", str(tmp_path / "out"), "--rule", "refit", "--data", str(tmp_path / "d.csv"),
                 "--out", str(tmp_path / "net.npz")]) == 0
    train, test = data.train_test(str(tmp_path / "d.csv"), seed=3)
    assert np.array_equal(seen["x"], train.x)
    assert not set(map(float, seen["x"][:, 0])) & set(map(float, test.x[:, 0]))
