"""Run demos/monomial_singularities.py at small size and check its table; under mpirun -n 2 the table is
printed once and equals the serial one."""

import os
import pathlib
import sys

import pytest

from conftest import ROOT, load_demo, run

DEMO = pathlib.Path(__file__).resolve().parents[1] / "demos" / "monomial_singularities.py"


def test_demo_table(capsys):
    demo = load_demo("monomial_singularities")
    rows = demo.main(widths=[[2, 2, 1], [2, 2, 2, 1]], ks=[1, 3], biases=[False, True])
    out = capsys.readouterr().out
    assert "rescaled duplicate" in out and "subnetworks deficient" in out and "DISAGREE" not in out
    assert len(rows) == 2 * 2 * 2 * 8

    def pick(widths, k, bias, point):
        (row,) = [r for r in rows if (r["widths"], r["k"], r["bias"], r["point"]) == (widths, k, bias, point)]
        return row

    # k = 3: random points reach P - (hidden neurons); every subnetwork loses rank
    for widths, bias, generic in [([2, 2, 1], False, 4), ([2, 2, 1], True, 7),
                                  ([2, 2, 2, 1], False, 6), ([2, 2, 2, 1], True, 11)]:
        for r in range(3):
            assert pick(widths, 3, bias, f"random {r}")["rank"] == generic
        assert pick(widths, 3, bias, "random 0")["expected"] == generic
        for point in ("zero outgoing", "zero incoming", "duplicate", "rescaled duplicate"):
            assert pick(widths, 3, bias, point)["rank"] < generic, (widths, bias, point)
        assert pick(widths, 3, bias, "one zero weight")["rank"] == generic
    # the shallow case in numbers: dead neuron -> width-1 network (rank 2), zero outgoing loses d_in - 1
    assert pick([2, 2, 1], 3, False, "zero incoming")["rank"] == 2
    assert pick([2, 2, 1], 3, False, "zero outgoing")["rank"] == 3
    # k = 1: linear networks have rank d_0 d_L (+ d_L with biases) whatever the point
    for widths in ([2, 2, 1], [2, 2, 2, 1]):
        assert {r["rank"] for r in rows if r["widths"] == widths and r["k"] == 1 and not r["bias"]} == {2}
    # numerical rank = exact rational rank wherever the exact one was computed, with a clear gap
    checked = [r for r in rows if r["exact"] is not None]
    assert len(checked) >= 40
    assert all(r["exact"] == r["rank"] for r in checked)
    assert all(r["dropped"] < 1e-13 and r["kept"] > 1e-6 for r in rows)


@pytest.mark.mpi
def test_table_printed_once_under_mpirun(tmp_path):
    """The configurations are split over the ranks and gathered: rank 0 prints the serial table, once."""
    env = dict(os.environ, CI="1", PYTHONPATH=ROOT)
    serial = run([sys.executable, str(DEMO)], cwd=tmp_path, env=env, timeout=300)
    parallel = run([sys.executable, str(DEMO)], ranks=2, cwd=tmp_path, env=env, timeout=300)
    assert serial.returncode == 0 and parallel.returncode == 0, serial.stderr + parallel.stderr
    assert parallel.stdout.count("widths        k bias") == 1 and parallel.stdout == serial.stdout
    assert parallel.stdout.count("subnetworks deficient") == 4  # SMALL: 2 widths x 2 degrees x 1 bias
