"""Multi-output regression through the command (issue 14 §1): `flowfem solve` on a CSV with columns
y1..ym, its files, `readout`, `predict` and `export` of the m-output network, 1 and 2 ranks agreeing,
and the commands that take one output refusing m in one line (`flowfem flow` takes m outputs:
tests/test_flow_outputs.py)."""

import json
import os

import numpy as np
import pytest

from conftest import BIN, run

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes; not rerun inside the MPI suite


def write_data(tmp_path, n=200):
    """A CSV with inputs x1 and three outputs, columns shuffled (taken by name): returns (x, Y)."""
    x = np.random.default_rng(5).uniform(-1, 1, (n, 1))
    t = x[:, 0]
    Y = np.column_stack([np.sin(np.pi * t), t**2, np.abs(t)])
    np.savetxt(tmp_path / "d.csv", np.column_stack([Y[:, 1], x, Y[:, 2], Y[:, 0]]), delimiter=",",
               header="y2,x1,y3,y1", comments="")
    return x, Y


def solve(tmp_path, *args, ranks=1, out="out", alpha="1e-4"):
    r = run([FLOWFEM, "solve", "--data", str(tmp_path / "d.csv"), "--mesh-size", "12", "--alpha", alpha,
             "--rtol", "1e-12", *args, "--out", str(tmp_path / out)], ranks=ranks, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_solve_readout_predict_export_with_three_outputs(tmp_path):
    import onnxruntime

    write_data(tmp_path)
    r = solve(tmp_path)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == [".flowfem-output.json", "density.bp", "density.h5", "density.npz",
                                       "density.xdmf", "figure_y1.png", "figure_y2.png", "figure_y3.png",
                                       "metrics.json", "predictions.csv"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["outputs"] == 3 and len(m["test_rmse_outputs"]) == 3 and len(m["train_rmse_outputs"]) == 3
    assert (out / "predictions.csv").read_text().splitlines()[0] == "x1,y1,y2,y3,f1,f2,f3"
    pred = np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1)
    xt, yt, ft = pred[:, :1], pred[:, 1:4], pred[:, 4:]
    np.testing.assert_allclose(np.sqrt(np.mean((ft - yt) ** 2, axis=0)), m["test_rmse_outputs"], rtol=1e-10)
    assert np.sqrt(np.mean((ft - yt) ** 2)) == pytest.approx(m["test_rmse"], rel=1e-10)
    # the data term is the sum over outputs of (1/n) sum (f - y)^2 / 2
    assert m["loss"] == pytest.approx(sum(e**2 / 2 for e in m["train_rmse_outputs"]), rel=1e-8)
    assert max(m["test_rmse_outputs"]) < 0.05
    assert "per output test y1" in r.stdout and "figure_y3.png" in r.stdout
    with np.load(out / "density.npz", allow_pickle=False) as f:
        assert f["u"].shape == (m["ndofs"], 3)

    # readout with the solve's rule: the network reproduces the solve's predictions to rounding
    r = run([FLOWFEM, "readout", "--density", str(out), "--out", str(tmp_path / "net.npz")])
    assert r.returncode == 0, r.stderr
    assert "3 outputs" in r.stdout
    r = run([FLOWFEM, "predict", "--network", str(tmp_path / "net.npz"), "--data", str(out / "predictions.csv"),
             "--out", str(tmp_path / "p.csv")])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "x1,f1,f2,f3"
    f = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)[:, 1:]
    assert np.abs(f - ft).max() <= 1e-9 * np.abs(ft).max()
    assert "RMSE against y" in r.stdout  # predictions.csv's y1..y3 read back as targets

    r = run([FLOWFEM, "export", "--network", str(tmp_path / "net.npz"), "--format", "onnx",
             "--out", str(tmp_path / "net.onnx")])
    assert r.returncode == 0, r.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    (g,) = session.run(None, {"x": xt})
    assert g.shape == (len(xt), 3) and np.abs(g - f).max() <= 1e-12 * np.abs(f).max()


def test_predict_refuses_targets_of_another_number_of_outputs(tmp_path):
    x, Y = write_data(tmp_path, n=60)
    solve(tmp_path, "--no-plot")
    assert run([FLOWFEM, "readout", "--density", str(tmp_path / "out"), "--out", str(tmp_path / "net.npz")]
               ).returncode == 0
    np.savetxt(tmp_path / "one.csv", np.column_stack([x, Y[:, 0]]), delimiter=",", header="x1,y", comments="")
    r = run([FLOWFEM, "predict", "--network", str(tmp_path / "net.npz"), "--data", str(tmp_path / "one.csv"),
             "--out", str(tmp_path / "p.csv")])
    assert r.returncode == 2 and "1 target column(s), the network" in r.stderr and "3 output(s)" in r.stderr
    assert not (tmp_path / "p.csv").exists()


def test_one_and_two_ranks_agree(tmp_path):
    write_data(tmp_path)
    solve(tmp_path, "--no-plot", out="one")
    solve(tmp_path, "--no-plot", ranks=2, out="two")
    one, two = (np.load(tmp_path / d / "density.npz") for d in ("one", "two"))
    assert np.array_equal(np.round(one["theta"], 10), np.round(two["theta"], 10))
    assert one["u"].shape == two["u"].shape and one["u"].shape[1] == 3
    for k in range(3):
        assert np.linalg.norm(one["u"][:, k] - two["u"][:, k]) <= 1e-8 * np.linalg.norm(one["u"][:, k])
    p1, p2 = (np.loadtxt(tmp_path / d / "predictions.csv", delimiter=",", skiprows=1) for d in ("one", "two"))
    assert np.abs(p1 - p2).max() <= 1e-8 * np.abs(p1).max()
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["ranks"] == 2 and m1["energy"] == pytest.approx(m2["energy"], rel=1e-10)


@pytest.mark.parametrize("args,message", [
    (["solve", "--loss", "logistic"], "3 outputs (y of shape (160, 3)) need the squared loss"),
])
def test_commands_of_one_output_refuse_m_in_one_line(tmp_path, args, message):
    write_data(tmp_path)
    before = sorted(os.listdir(tmp_path))
    r = run([FLOWFEM, *args, "--data", str(tmp_path / "d.csv"), "--mesh-size", "4", "--out", str(tmp_path / "out")])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("flowfem: error:") and message in lines[0], r.stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_solve_alpha_auto_with_three_outputs(tmp_path):
    write_data(tmp_path)
    r = solve(tmp_path, "--no-plot", alpha="auto")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["outputs"] == 3 and m["path"]["alpha"] == m["alpha"] and "chosen alpha" in r.stdout
    scores = [row["score"] for row in m["path"]["table"]]
    assert m["alpha"] == m["path"]["table"][int(np.argmin(scores))]["alpha"]


def test_landscape_refuses_a_network_of_three_outputs(tmp_path):
    write_data(tmp_path, n=60)
    solve(tmp_path, "--no-plot")
    assert run([FLOWFEM, "readout", "--density", str(tmp_path / "out"), "--rule", "sample", "--width", "3",
                "--out", str(tmp_path / "net.npz")]).returncode == 0
    r = run([FLOWFEM, "landscape", "--network", str(tmp_path / "net.npz"), "--data", "sin"])
    assert r.returncode == 2 and "landscape analyses a network of one output" in r.stderr
    assert "has 3 outputs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
