"""Each demo runs end to end at a small size (in-process), and under mpirun -n 2."""

import glob
import os
import sys

import pytest

from conftest import ROOT, load_demo, run


def test_regression_1d(shared_tmp):
    m = load_demo("regression_1d").main(n=500, cells=24, alpha=1e-5, out=os.path.join(shared_tmp, "reg"))
    assert m["test_rmse"] < 5e-3 and m["residual"] < 1e-9 and m["iterations"] > 0
    assert m["loss"] == pytest.approx(m["train_rmse"] ** 2 / 2, rel=1e-8) and m["regulariser"] > 0
    assert os.path.exists(os.path.join(shared_tmp, "reg", "figure.png"))


def test_every_demo_is_run_by_a_test():
    """Demos are found by glob: a new demo without a test fails here."""
    demos = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "demos", "*.py"))]
    tests = "".join(open(p).read() for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py")))
    assert demos and all(f'load_demo("{d}")' in tests or f'"{d}.py"' in tests for d in demos), demos


@pytest.mark.mpi
def test_regression_1d_under_mpirun(tmp_path):
    r = run([sys.executable, os.path.join(ROOT, "demos", "regression_1d.py")], ranks=2, cwd=tmp_path,
            timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("test RMSE") == 1 and "2 rank(s)" in r.stdout  # printed by rank 0 only
    assert (tmp_path / "results" / "regression_1d" / "density.bp").exists()
