"""Multiclass classification through the command (issue 14 §2, §3): `flowfem solve --data iris2
--loss softmax`, its metrics (accuracy, cross-entropy, confusion matrix), `readout`, `predict`
(labels) and `export` (logits) of the three-class network, 1 and 2 ranks agreeing, and iris2
with a regression loss refused in one line."""

import json
import os

import numpy as np
import pytest

from conftest import BIN, run

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes; not rerun inside the MPI suite


def solve(tmp_path, *args, ranks=1, out="out"):
    r = run([FLOWFEM, "solve", "--data", "iris2", "--loss", "softmax", "--mesh-size", "6", "--alpha", "1e-3",
             "--rtol", "1e-11", "--quiet", *args, "--out", str(tmp_path / out)], ranks=ranks, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_iris2_solve_readout_predict_export(tmp_path):
    import onnxruntime

    r = solve(tmp_path)
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    assert m["loss_function"] == "softmax" and m["classes"] == [0, 1, 2] and m["outputs"] == 3
    assert m["test_accuracy"] > 0.9 and m["n_test"] == 30 and "test confusion matrix" in r.stdout
    M = np.array(m["test_confusion_matrix"])
    pred = np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1)  # x1, x2, y (true), f (predicted)
    xt, yt, ft = pred[:, :2], pred[:, 2], pred[:, 3]
    assert M.shape == (3, 3) and M.sum() == 30
    assert M.tolist() == [[int(np.sum((yt == a) & (ft == b))) for b in range(3)] for a in range(3)]
    assert np.trace(M) / 30 == pytest.approx(m["test_accuracy"]) == pytest.approx(np.mean(ft == yt))
    assert np.array(m["train_confusion_matrix"]).sum() == 120 and m["loss"] > 0 and m["test_loss"] > 0
    assert sorted(os.listdir(out)) == [".flowfem-output.json", "density.bp", "density.h5", "density.npz",
                                       "density.xdmf", "figure.png", "metrics.json", "predictions.csv"]
    with np.load(out / "density.npz", allow_pickle=False) as f:
        assert f["u"].shape == (m["ndofs"], 3) and f["classes"].tolist() == [0, 1, 2]

    # the solve's own quadrature rule: the network's labels are the density's at every test point
    r = run([FLOWFEM, "readout", "--density", str(out), "--out", str(tmp_path / "net.npz")])
    assert r.returncode == 0 and "classifier of 3 classes (0, 1, 2)" in r.stdout, r.stderr
    r = run([FLOWFEM, "predict", "--network", str(tmp_path / "net.npz"), "--data", str(out / "predictions.csv"),
             "--proba", "--out", str(tmp_path / "p.csv")])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "x1,x2,label,p_0,p_1,p_2"
    p = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    assert np.array_equal(p[:, 2], ft) and np.allclose(p[:, 3:].sum(axis=1), 1.0)
    assert np.array_equal(np.argmax(p[:, 3:], axis=1), p[:, 2])
    assert f"accuracy against y {m['test_accuracy']:.4f}" in r.stdout

    r = run([FLOWFEM, "export", "--network", str(tmp_path / "net.npz"), "--format", "onnx",
             "--out", str(tmp_path / "net.onnx")])
    assert r.returncode == 0 and "3 logits" in r.stdout, r.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    (g,) = session.run(None, {"x": xt})
    assert g.shape == (30, 3) and np.array_equal(np.argmax(g, axis=1), ft)
    P = np.exp(g - g.max(axis=1, keepdims=True))
    np.testing.assert_allclose(P / P.sum(axis=1, keepdims=True), p[:, 3:], atol=1e-9)


def test_one_and_two_ranks_agree(tmp_path):
    solve(tmp_path, "--no-plot", out="one")
    solve(tmp_path, "--no-plot", ranks=2, out="two")
    one, two = (np.load(tmp_path / d / "density.npz") for d in ("one", "two"))
    for k in range(3):
        assert np.linalg.norm(one["u"][:, k] - two["u"][:, k]) <= 1e-8 * np.linalg.norm(one["u"][:, k])
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["ranks"] == 2 and m1["energy"] == pytest.approx(m2["energy"], rel=1e-10)
    for key in ("test_accuracy", "train_accuracy", "test_confusion_matrix", "train_confusion_matrix", "classes"):
        assert m1[key] == m2[key], key
    assert m1["test_loss"] == pytest.approx(m2["test_loss"], rel=1e-8)


@pytest.mark.parametrize("args,message", [
    ([], "--data iris2 holds class labels (classification (3 classes)): as squared targets they are meaningless; "
         "add --loss softmax"),
    (["--loss", "softmax", "--solver", "direct"], "by CG only; use --solver cg"),
])
def test_refused_in_one_line(tmp_path, args, message):
    r = run([FLOWFEM, "solve", "--data", "iris2", "--mesh-size", "4", *args, "--out", str(tmp_path / "out")])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("flowfem: error:") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
