"""`flowfem solve --domain s3` on 3-D inputs (issue 15): the command serially and under
mpirun -n 2 (the same predictions), the chart radius recorded from the data, `readout` and
`predict` reproducing the solve's test predictions, and the refusals around d = 3."""

import json
import os

import numpy as np
import pytest

from conftest import BIN, run

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes; not rerun inside the MPI suite


def write_data(path, n=240, seed=3):
    """x ~ U[-1, 1]^3, y = relu(x1 + x2 - x3) - 0.5 relu(-x1) (a sum of relu neurons: in the model)."""
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 3))
    y = np.maximum(x[:, 0] + x[:, 1] - x[:, 2], 0) - 0.5 * np.maximum(-x[:, 0], 0)
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="x1,x2,x3,y", comments="")


def test_solve_on_s3_serial_and_two_ranks_then_readout_and_predict(tmp_path):
    write_data(tmp_path / "d.csv")
    preds = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        r = run([FLOWFEM, "solve", "--data", str(tmp_path / "d.csv"), "--domain", "s3", "--activation", "relu",
                 "--mesh-size", "0.35", "--alpha", "1e-4", "--rtol", "1e-12", "--out", str(out)],
                ranks=ranks, timeout=400)
        assert r.returncode == 0, r.stderr
        assert "no figure.png for d = 3 inputs" in r.stdout
        preds.append(np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1))
    one, two = preds
    assert np.abs(one[:, -1] - two[:, -1]).max() <= 1e-8 * np.abs(one[:, -1]).max()
    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    x = np.loadtxt(tmp_path / "d.csv", delimiter=",", skiprows=1)[:, :3]
    from flowfem.space import chart_radius
    train_x = x  # the solve's training rows are a subset: Z from them is at most chart_radius(max |x|)
    assert 0 < metrics["radius"] <= chart_radius(float(np.linalg.norm(train_x, axis=1).max())) + 1e-9
    assert metrics["test_rmse"] < 0.5 * np.std(one[:, 3])  # it learnt the target (columns x1, x2, x3, y, f)
    net = tmp_path / "net.npz"
    r = run([FLOWFEM, "readout", "--density", str(tmp_path / "r1"), "--out", str(net)], timeout=300)
    assert r.returncode == 0, r.stderr
    W = np.load(net)["W"]
    assert W.shape[1] == 3
    r = run([FLOWFEM, "predict", "--network", str(net), "--data", str(tmp_path / "r1" / "predictions.csv"),
             "--out", str(tmp_path / "p.csv")], timeout=300)
    assert r.returncode == 0, r.stderr
    p = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert np.abs(p[:, -1] - one[:, -1]).max() <= 1e-9 * np.abs(one[:, -1]).max()  # the quadrature readout is exact


@pytest.mark.parametrize("args,message", [
    (["--domain", "box"], "s3"),  # d = 3 on a box: pointed to s3
    (["--domain", "s3", "--activation", "tanh"], "homogeneous"),
])
def test_refusals_for_three_inputs(tmp_path, args, message):
    write_data(tmp_path / "d.csv", n=40)
    r = run([FLOWFEM, "solve", "--data", str(tmp_path / "d.csv"), *args, "--out", str(tmp_path / "out")],
            timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_flow_on_s3_chooses_and_records_the_chart_radius(tmp_path):
    write_data(tmp_path / "d.csv", n=80)
    out = tmp_path / "out"
    r = run([FLOWFEM, "flow", "--tau", "1", "--growth", "4", "--max-steps", "3", "--data", str(tmp_path / "d.csv"),
             "--domain", "s3", "--mesh-size", "0.4", "--alpha", "1e-3", "--no-plot", "--out", str(out)], timeout=400)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "energy.json").read_text())["radius"] > 1


def test_compare_on_s3_serial_and_two_ranks(tmp_path):
    """`flowfem compare --domain s3`: every promised file on 1 and 2 ranks, the chart radius Z chosen from
    the training inputs and recorded, the distances taken on S^3 (the MMD bandwidth from the neurons'
    extent in R^4, below 0.4, not the chart's ball's, 2 Z sqrt(3) / 10 > 1.7), and the same numbers."""
    from flowfem import compare
    from flowfem.outputs import MANIFEST

    write_data(tmp_path / "d.csv", n=80)
    rows, js = [], []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        r = run([FLOWFEM, "compare", "--widths", "4", "--seeds", "0", "--steps", "2", "--data",
                 str(tmp_path / "d.csv"), "--domain", "s3", "--mesh-size", "0.4", "--alpha", "1e-4", "--quiet",
                 "--out", str(out)], ranks=ranks, timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(os.listdir(out)) == sorted(compare.FILES + compare.FIGURES + (MANIFEST,))
        assert all((out / f).stat().st_size > 0 for f in compare.FILES + compare.FIGURES)
        rows.append(compare.read_csv(out / "runs.csv"))
        js.append(json.loads((out / "results.json").read_text()))
    settings = js[0]["settings"]
    assert settings["domain"] == "s3" and settings["radius"] > 1 and settings["radius"] == js[1]["settings"]["radius"]
    assert 0.3 < settings["mmd_bandwidth"] < 0.4
    assert {(row["solver"], row["method"]) for row in rows[0]} >= {("FE solve", "E_alpha minimiser"),
                                                                   ("FE readout", "quadrature"), ("particles", "adam")}
    for one, two in zip(*rows):
        assert (one["solver"], one["method"], one["width"], one["seed"]) == \
               (two["solver"], two["method"], two["width"], two["seed"])
        tol = 1e-10 if one["solver"] == "particles" else 1e-5
        assert two["test_rmse"] == pytest.approx(one["test_rmse"], rel=tol)
        assert two["objective"] == pytest.approx(one["objective"], rel=tol)
    for key, d in js[0]["distances"].items():
        for name in ("l2", "mmd", "projection_error"):
            assert js[1]["distances"][key][name] == pytest.approx(d[name], rel=1e-5), (key, name)
        assert d["projection_error"] <= d["projection_bound"]
