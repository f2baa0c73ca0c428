"""demos/compare_particles.py at a small size: in-process (rank-agnostic) and as a script under mpirun -n 2."""

import os
import sys

import numpy as np
import pytest

from conftest import ROOT, load_demo, run
from flowfem import compare
from flowfem.outputs import MANIFEST

DEMO = os.path.join(ROOT, "demos", "compare_particles.py")
CI_SIZE = dict(n=200, widths=(8, 32), seeds=(0, 1), steps=100, cells=12)  # what the script runs with CI set


def _demo():
    return load_demo("compare_particles")


def test_small_comparison(shared_tmp):
    """At the CI size: the FE solve's test RMSE (~1e-3) is far below every particle run's after 100
    steps (~0.3); the refitted readout improves with N; the projected particle densities reproduce
    their networks within the stated bound; every file is written."""
    out = os.path.join(shared_tmp, "cmp")
    m = _demo().main(**CI_SIZE, out=out)
    assert m["fe_test_rmse"] < 5e-3
    for method in ("gd", "adam"):
        g = m["particles"][method]
        assert g["width"] == [8, 32]
        assert min(g["test_rmse_mean"]) > 10 * m["fe_test_rmse"]
        assert np.all(np.isfinite(g["objective_mean"]))
    refit = m["readouts"]["refit"]
    assert refit["test_rmse_mean"][1] < refit["test_rmse_mean"][0]
    assert m["readouts"]["quadrature"]["width"] == [8, 32]  # box 2x2 and 4x4: 8 and 32 triangles
    assert sorted(m["distances"]) == ["adam N=32 seed=0", "gd N=32 seed=0"]
    for d in m["distances"].values():
        assert 0 < d["projection_error"] <= d["projection_bound"]
        assert d["l2"] > 0 and d["mmd"] > 0
    assert sorted(os.listdir(out)) == sorted(compare.FILES + compare.FIGURES + (MANIFEST,))


@pytest.mark.mpi
def test_script_under_mpirun(tmp_path, monkeypatch):
    """CI=1 mpirun -n 2 python demos/compare_particles.py: runs, says 2 ranks, writes the figures,
    and its particle runs equal the serial ones (the trajectory does not depend on the ranks)."""
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    r = run([sys.executable, DEMO], ranks=2, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "on 2 rank(s)" in r.stdout
    assert r.stdout.count("| solver |") == 1 and r.stdout.count("FE solve: test RMSE") == 1  # printed by rank 0 only
    out = tmp_path / "results" / "compare_particles"
    assert (out / "densities.png").stat().st_size > 0 and (out / "densities.bp").exists()
    parallel = [row for row in compare.read_csv(out / "runs.csv") if row["solver"] == "particles"]
    assert {row["ranks"] for row in parallel} == {2.0}
    serial = _demo().main(**CI_SIZE, out=None)
    for m in ("gd", "adam"):
        mean = [np.mean([row["test_rmse"] for row in parallel if row["method"] == m and row["width"] == N])
                for N in CI_SIZE["widths"]]
        np.testing.assert_allclose(mean, serial["particles"][m]["test_rmse_mean"], rtol=1e-10)
