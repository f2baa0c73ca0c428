"""demos/s3_inputs.py at a small size: in-process (rank-agnostic) and as a script under mpirun -n 2."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, load_demo, run
from flowfem import data
from flowfem.outputs import MANIFEST
from flowfem.space import S3_CELLS, chart_radius, dead_radius

DEMO = os.path.join(ROOT, "demos", "s3_inputs.py")
CI_SIZE = dict(n=200, h=0.4, width=32, steps=200)  # what the script runs with CI set or --quick


def _demo():
    return load_demo("s3_inputs")


def test_small_run(shared_tmp):
    """Both sets: the chart radius is chosen from the training inputs as chart_radius says, the mesh
    has about S3_CELLS / h^3 cells, flowfem learns (the synthetic target far better than an affine
    fit; stackloss better than the training mean), its network on raw test inputs equals the density
    on standardised ones, and the saved file gives the same predictions."""
    out = os.path.join(shared_tmp, "s3")
    demo = _demo()
    assert demo.QUICK == CI_SIZE
    m = demo.main(**CI_SIZE, out=out)
    assert list(m) == ["synthetic", "stackloss"]
    for name, s in m.items():
        fe = s["flowfem"]
        assert s["d"] == 3 and s["h"] == 0.4
        assert fe["Z"] == pytest.approx(chart_radius(fe["X_train"]), rel=1e-9)  # nodes on the sphere |z| = Z
        assert fe["Z"] >= dead_radius(fe["X_train"])  # the data term is exact
        assert 0.5 < fe["cells"] * CI_SIZE["h"] ** 3 / S3_CELLS < 2 and 0 < fe["ndofs"] < fe["cells"]
        assert fe["alpha"] in [10.0**-k for k in range(2, 11)]
        assert np.isfinite(s["adam"]["test_rmse"]) and s["adam"]["status"] == "completed"
        scale = np.abs(data.train_test(name, seed=0)[1].y).max() if name != "synthetic" else 1.0
        assert fe["network_gap"] <= 1e-9 * scale and s["file_gap"] <= 1e-12 * scale, (name, s)
    syn, stack = m["synthetic"], m["stackloss"]
    assert (syn["n_train"], syn["n_test"], syn["scaling"]) == (200, 1000, None)
    assert syn["flowfem"]["test_rmse"] < 0.2 * syn["ols_rmse"] < 0.1 * syn["mean_rmse"]  # a nonlinear target
    assert syn["flowfem"]["test_in_exact_range"]  # test inputs in the same cube
    train, test = data.train_test("stackloss", seed=0)
    assert (stack["n_train"], stack["n_test"]) == (train.n, test.n) == (17, 4)
    np.testing.assert_allclose(stack["scaling"]["input_mean"], train.x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(stack["scaling"]["input_scale"], train.x.std(axis=0), rtol=1e-14)
    assert stack["flowfem"]["test_rmse"] < 0.9 * stack["mean_rmse"]
    files = sorted(os.listdir(out))
    assert files == sorted([f"{n}-flowfem.npz" for n in m] + ["results.json", "fits.png", MANIFEST])


@pytest.mark.mpi
def test_script_under_mpirun(tmp_path, monkeypatch):
    """CI=1 mpirun -n 2 python demos/s3_inputs.py: runs, prints the table once, and its numbers
    equal the serial run's (the mesh, the path's alpha, the solve and the particle trajectory do not
    depend on the ranks)."""
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    r = run([sys.executable, DEMO], ranks=2, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "on 2 rank(s)" in r.stdout and r.stdout.count("| data set |") == 1
    parallel = json.loads((tmp_path / "results" / "s3_inputs" / "results.json").read_text())
    serial = _demo().main(**CI_SIZE, out=None)
    for name, s in serial.items():
        p = parallel[name]
        assert p["scaling"] == s["scaling"]
        for key in ("alpha", "cells", "ndofs", "Z"):
            assert p["flowfem"][key] == pytest.approx(s["flowfem"][key], rel=1e-12), (name, key)
        np.testing.assert_allclose(p["flowfem"]["test_rmse"], s["flowfem"]["test_rmse"], rtol=1e-8)
        np.testing.assert_allclose(p["adam"]["test_rmse"], s["adam"]["test_rmse"], rtol=1e-10)
