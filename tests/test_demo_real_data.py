"""demos/real_data.py at a small size: in-process (rank-agnostic) and as a script under mpirun -n 2."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, load_demo, run
from flowfem import data
from flowfem.outputs import MANIFEST

DEMO = os.path.join(ROOT, "demos", "real_data.py")
CI_SIZE = dict(cells=16, class_cells=6, width=32, steps=200)  # what the script runs with CI set


def _demo():
    return load_demo("real_data")


def test_small_run(shared_tmp):
    """Every regression set: flowfem learns (test RMSE well below that of the training mean), its
    folded network on raw test inputs equals the density on standardised ones, and the saved file
    gives the same predictions and the scaling of the training rows."""
    out = os.path.join(shared_tmp, "real")
    m = _demo().main(**CI_SIZE, out=out)
    assert list(m) == ["diabetes1", "engel", "sunspots", "co2", "iris2"]
    iris = m.pop("iris2")  # the classification: accuracy, and the network file's labels are the density's
    assert iris["flowfem"]["test_accuracy"] > 0.9 > iris["majority_accuracy"] and iris["file_classes"] == [0, 1, 2]
    assert iris["flowfem"]["network_disagreement"] == 0
    assert np.sum(iris["flowfem"]["confusion_matrix"]) == iris["n_test"]
    assert iris["file_gap"] == 0.0  # the same logits from the file
    adam = iris["adam"]  # the particle network on the softmax loss: it records the classes and learns the species
    assert adam["status"] == "completed" and adam["classes"] == [0, 1, 2]
    assert adam["test_accuracy"] > 0.9 and 0 < adam["test_loss"] < 0.5 * np.log(3)
    for name, s in m.items():
        train, test = data.train_test(name, seed=0)
        assert (s["n_train"], s["n_test"], s["d"]) == (train.n, test.n, 1)
        np.testing.assert_allclose(s["scaling"]["input_mean"], [train.x.mean()], rtol=1e-14)
        np.testing.assert_allclose(s["scaling"]["input_scale"], [train.x.std()], rtol=1e-14)
        assert s["file_scaling"] == s["scaling"]
        assert s["flowfem"]["test_rmse"] < 0.9 * s["mean_rmse"], name
        assert np.isfinite(s["adam"]["test_rmse"]) and s["adam"]["status"] == "completed"
        scale = np.abs(test.y).max()
        assert s["flowfem"]["network_gap"] <= 1e-9 * scale and s["file_gap"] <= 1e-12 * scale, (name, s)
    assert m["co2"]["flowfem"]["test_rmse"] < 0.2 * m["co2"]["mean_rmse"]  # the trend, and more
    files = sorted(os.listdir(out))
    assert files == sorted([f"{n}-flowfem.npz" for n in [*m, "iris2"]] + ["results.json", "fits.png", MANIFEST])


@pytest.mark.mpi
def test_script_under_mpirun(tmp_path, monkeypatch):
    """CI=1 mpirun -n 2 python demos/real_data.py: runs, prints the table once, and its numbers
    equal the serial run's (the solve and the particle trajectory do not depend on the ranks)."""
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    r = run([sys.executable, DEMO], ranks=2, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # the regression and the classification tables, each printed once (by rank 0)
    assert "on 2 rank(s)" in r.stdout and r.stdout.count("| data set |") == 2
    parallel = json.loads((tmp_path / "results" / "real_data" / "results.json").read_text())
    serial = _demo().main(**CI_SIZE, out=None)
    p, s = parallel.pop("iris2"), serial.pop("iris2")
    assert p["flowfem"]["confusion_matrix"] == s["flowfem"]["confusion_matrix"]
    np.testing.assert_allclose(p["flowfem"]["test_loss"], s["flowfem"]["test_loss"], rtol=1e-8)
    assert p["adam"]["test_accuracy"] == s["adam"]["test_accuracy"]
    np.testing.assert_allclose(p["adam"]["test_loss"], s["adam"]["test_loss"], rtol=1e-10)
    for name, s in serial.items():
        p = parallel[name]
        assert p["scaling"] == s["scaling"]
        assert p["flowfem"]["alpha"] == s["flowfem"]["alpha"]
        np.testing.assert_allclose(p["flowfem"]["test_rmse"], s["flowfem"]["test_rmse"], rtol=1e-8)
        np.testing.assert_allclose(p["adam"]["test_rmse"], s["adam"]["test_rmse"], rtol=1e-10)
