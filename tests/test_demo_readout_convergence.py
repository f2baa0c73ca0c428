"""demos/readout_convergence.py: the rates of the readout rules, at a small size, serial and under mpirun."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import load_demo

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
DEMO = os.path.join(ROOT, "demos", "readout_convergence.py")
CI_SIZE = dict(cells=8, n=200, seeds=8, reference=16)  # what the script runs with CI set


def _demo():
    return load_demo("readout_convergence")


def test_rates_at_a_small_size():
    """72 cells, N = 72 m^2 for m = 1, 2, 4, 8. Tolerances: quadrature (midpoint) error order
    <= -0.9 (theory -1); sample error order in [-0.7, -0.3] (theory -1/2, 8 seeds); the
    quadrature gap falls at least as fast as its error; the refit levels off (it tends to its own
    optimum, not to f_u) but is closer to f_u than the midpoint network at the smallest width."""
    m = _demo().main(cells=6, n=100, seeds=8, reference=16)
    assert m["N"] == [72, 288, 1152, 4608] and m["cells"] == 72
    err, gap = m["error"], m["gap"]
    assert m["slope_error"]["quadrature"] <= -0.9
    assert -0.7 <= m["slope_error"]["sample"] <= -0.3
    assert m["slope_gap"]["quadrature"] <= m["slope_error"]["quadrature"] + 0.05
    assert m["reference_error"] < 0.1 * min(err["quadrature"])  # f_u is accurate enough to measure with
    assert err["refit"][0] < err["quadrature"][0]
    assert err["refit"][-1] == pytest.approx(err["refit"][-2], rel=0.05)  # levelled off
    assert m["signed_gap"]["refit"][-1] < 0  # the refit fits the training data better than f_u
    for r in ("quadrature", "sample", "refit"):
        assert np.all(np.isfinite(err[r])) and np.all(np.array(gap[r]) >= 0)


def _table(stdout: str) -> np.ndarray:
    rows = [line.split() for line in stdout.splitlines() if re.match(r"^\s*\d+\s+[-\d.]+e", line)]
    return np.array(rows, dtype=float)


@pytest.mark.mpi
def test_script_under_mpirun_matches_serial(tmp_path):
    """CI=1 mpirun -n 2 python demos/readout_convergence.py prints the serial table (to its 4 digits)
    and writes the figure."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        pytest.skip(f"no mpirun next to {sys.executable}")
    env = dict(os.environ, CI="1", PYTHONPATH=ROOT)
    r = subprocess.run([mpirun, "-n", "2", sys.executable, DEMO], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 2 rank(s)" in r.stdout and r.stdout.count("slope quadrature") == 1  # printed by rank 0 only
    assert (tmp_path / "results" / "readout_convergence" / "figure.png").stat().st_size > 0
    m = _demo().main(**CI_SIZE)
    serial = np.column_stack([m["N"]] + [np.array([m["error"][k], m["signed_gap"][k]]).T
                                         for k in ("quadrature", "sample", "refit")])
    np.testing.assert_allclose(_table(r.stdout), serial, rtol=1e-3)
