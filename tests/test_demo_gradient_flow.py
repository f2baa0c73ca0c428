"""demos/gradient_flow.py at a small size: in-process (serial and under mpirun -n 2) and as a script."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, load_demo, run

DEMO = os.path.join(ROOT, "demos", "gradient_flow.py")


def _demo():
    return load_demo("gradient_flow")


def test_flows_reach_the_stationary_densities(shared_tmp):
    out = os.path.join(shared_tmp, "gf")
    m = _demo().main(n=200, cells=12, n_moons=120, refinements=1, width=40, out=out)
    r, c = m["regression"], m["classification"]
    # 1-D: energy down at every step, contraction at least 1 / (1 + tau alpha) per step, rate >= alpha
    # while tau alpha is small, and u* reached (the stationary solve's answer, to 1e-6)
    assert r["energy_monotone"] and r["max_error_ratio"] <= 1 + 1e-9
    assert r["rate"] >= r["alpha"] and r["final_error"] <= 1e-6 and r["difference"] <= 1e-6
    assert r["energy"] == pytest.approx(r["energy_star"], rel=1e-10)
    # two moons, logistic: Newton converged quadratically, the flow reaches it, the classifier improves
    h = np.array(c["newton_history"])
    assert h[-1] <= 1e-10 * h[0] and c["final_error"] <= 1e-6 and c["energy_monotone"]
    assert max(c["newton_per_step"]) >= 2  # each step is a genuine Newton solve
    assert c["final_accuracy"] >= 0.85 and c["final_accuracy"] > c["initial_accuracy"]
    for name in ("densities_1d.png", "energy_1d.png", "moons.png", "energy_moons.png", "trajectory_1d.xdmf",
                 "trajectory_1d.h5"):
        assert os.path.exists(os.path.join(out, name)), name
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert saved["regression"]["steps"] == r["steps"]


@pytest.mark.mpi
def test_script_under_mpirun(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")  # the script's small size
    r = run([sys.executable, DEMO], ranks=2, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("1-D regression") == 1 and r.stdout.count("two moons on the sphere") == 1  # rank 0 only
    m = json.load(open(tmp_path / "results" / "gradient_flow" / "metrics.json"))
    assert m["regression"]["final_error"] <= 1e-6 and m["classification"]["final_error"] <= 1e-6
    assert (tmp_path / "results" / "gradient_flow" / "moons.png").stat().st_size > 0
