"""demos/splitting_plateau.py at a small size: plateau flat, classification agrees with the full
Hessian, gradient descent lingers on the plateau unless perturbed, flowfem's data term far lower."""

import os
import pathlib
import sys

import numpy as np
import pytest

from conftest import load_demo, run
from flowfem.outputs import MANIFEST

DEMO = pathlib.Path(__file__).resolve().parents[1] / "demos" / "splitting_plateau.py"




@pytest.fixture(scope="module")
def result():
    return load_demo("splitting_plateau").main(n=100, steps=2000, cells=8, verbose=False)


def test_narrow_network_is_a_polished_strict_minimum(result):
    nr = result["narrow"]
    assert nr["particle_grad"] > 1e-7  # the particle solver alone is only approximately stationary
    assert nr["gradient_norm"] < 1e-12 and nr["valid"] and nr["min_eigenvalue"] > 1e-3
    assert nr["objective"] <= nr["particle_loss"]  # Newton polishing only descends


def test_plateau_is_flat_and_classified_like_the_full_hessian(result):
    assert result["flatness"] < 1e-14  # rounding (seen 3.5e-18)
    assert result["line_gradient"] < 1e-12
    n = len(result["mus"])
    assert result["agreement"] == n == 31
    assert result["kinds"] == result["brute_kinds"]
    # indefinite H: every mu but 0 and 1 is a saddle
    assert result["definiteness"] == "indefinite"
    assert result["counts"] == {"minimum": 0, "saddle": n - 2, "degenerate": 2}
    degenerate = [mu for mu, k in zip(result["mus"], result["kinds"]) if k == "degenerate"]
    assert degenerate == [0.0, 1.0]
    assert result["start_kind"] == "saddle" and result["start_curvature"] < 0
    assert result["second_variation_error"] < 1e-4


def test_particle_solver_lingers_on_the_plateau(result):
    L0 = result["narrow"]["objective"]
    runs = result["runs"]
    exact, noise, kick = runs["exact"], runs["random 1e-6"], runs["escape 1e-3"]
    # exactly on the plateau: loss flat to 1e-9 relative for every recorded step
    assert exact["linger_steps"] is None and exact["flat_steps"] == 2000
    assert np.abs(exact["loss"] - L0).max() < 1e-9 * L0
    # a tiny random perturbation stays flat for hundreds of steps, then leaves
    assert noise["flat_steps"] >= 300 and noise["linger_steps"] is not None
    # a kick along the escape direction leaves sooner
    assert kick["linger_steps"] is not None and kick["linger_steps"] < noise["linger_steps"]
    for r in (noise, kick):
        assert r["final_loss"] < 0.2 * L0


def test_flowfem_reaches_a_lower_data_term(result):
    ff, nr = result["flowfem"], result["narrow"]
    assert ff["residual"] < 1e-9 and ff["iterations"] > 0
    assert ff["regulariser"] > 0 and ff["energy"] > ff["data_loss"]
    assert ff["data_loss"] < 1e-3 * nr["objective"]  # like with like: the data term (seen 3.7e-7 vs 1.4e-2)
    assert ff["test_rmse"] < 0.1 * nr["test_rmse"]


def test_figures(shared_tmp):
    demo = load_demo("splitting_plateau")
    out = os.path.join(shared_tmp, "figs")
    demo.main(n=60, steps=400, cells=6, mus=[-1.0, 0.0, 0.5, 1.0, 2.0], out=out, verbose=False)
    assert sorted(os.listdir(out)) == [MANIFEST, "hessian_eigenvalues.png", "loss_along_mu.png", "training_curves.png"]


@pytest.mark.mpi
def test_demo_under_mpirun(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    r = run([sys.executable, str(DEMO)], ranks=2, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 rank(s)" in r.stdout and "agrees with the full Hessian at 31/31" in r.stdout
    assert r.stdout.count("classification:") == 1  # printed by rank 0 only
    assert (tmp_path / "results" / "splitting_plateau" / "training_curves.png").exists()
