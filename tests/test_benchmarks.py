"""The benchmark scripts run end to end at their smallest sizes and print their tables.

Timings are not asserted (they are the scripts' output, not a test); what is
asserted is that each script completes, prints every row, and that the
accuracy figures it reports (which do not depend on the machine) hold.
"""

import json
import os
import re
import sys

import pytest

from conftest import run


def _figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


@pytest.mark.mpi
def test_stationary_benchmark_quick_under_mpirun():
    proc = run([sys.executable, "benchmarks/stationary.py", "--quick"], ranks=2, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # two preconditioners x three meshes x {1, 2} ranks
    assert len(re.findall(r"^\| \d+\^2 \| \d+ \| [12] \|", out, re.M)) == 12, out
    assert re.findall(r"^CG preconditioner (\w+):$", out, re.M) == ["gamg", "nystrom"], out
    assert _figure(r"relative difference: E_alpha ([0-9.e+-]+)", out) <= 1e-6
    assert _figure(r"test RMSE ([0-9.e+-]+) \(target", out) <= 1e-6
    gamg, nystrom = (json.loads(its) for its in re.findall(r"CG iterations over the meshes: (\[[\d, ]+\])", out))
    for its in (gamg, nystrom):  # bounded under refinement (measured --quick: gamg [53, 51, 52], nystrom [4, 5, 5])
        assert max(its) <= max(1.2 * min(its), min(its) + 1), its
    assert max(nystrom) < min(gamg) / 4, (gamg, nystrom)  # the data term's basis takes most of GAMG's iterations


@pytest.mark.mpi
def test_alpha_benchmark_quick_under_mpirun():
    proc = run([sys.executable, "benchmarks/alpha.py", "--quick"], ranks=2, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = re.findall(r"^\| (?:1-D box|2-D box|2-D sphere)[^|]*\| (\de-0\d) \| (>?\d+) \|.*\|$", out, re.M)
    assert len(rows) == 8 * 6, out  # (two 1-D boxes x three meshes + two 2-D meshes) x six alphas
    assert "every nystrom solve converged to rtol 1e-10: PASS" in out
    assert _figure(r"largest K diff ([0-9.e+-]+)", out) <= 2e-10  # the two preconditioners solve the same system
    for line in re.findall(r"^iterations across alpha .*$", out, re.M):  # nystrom at 1e-8 far below gamg
        nystrom, gamg = (json.loads(v) for v in re.findall(r"(\[[\d, ]+\])", line))
        assert nystrom[-1] * 5 <= gamg[-1], line


def test_alpha_benchmark_runs_the_1d_cases_alone():
    proc = run([sys.executable, "benchmarks/alpha.py", "--quick", "--inputs", "1"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| (1-D box|2-D box|2-D sphere)[^|]*\| \de-0\d \| >?\d+ \|.*\|$", proc.stdout, re.M)
    assert len(rows) == 6 * 6 and set(rows) == {"1-D box"}, proc.stdout  # two boxes x three meshes x six alphas
    assert "default 2-D box" not in proc.stdout and "across 8^2..32^2" in proc.stdout


@pytest.mark.mpi
def test_flow_benchmark_quick_under_mpirun():
    proc = run([sys.executable, "benchmarks/flow.py", "--quick", "--repeats", "1"], ranks=2, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    euler = re.findall(r"^\| implicit Euler.*\|$", proc.stdout, re.M)
    assert len(euler) == 4 and not any("not reached" in row for row in euler), proc.stdout  # every Euler row converges
    assert "fastest flow: " in proc.stdout  # which one is fastest is a timing, not asserted


@pytest.mark.mpi
def test_scale_benchmark_quick_under_mpirun():
    proc = run([sys.executable, "benchmarks/scale.py", "--quick"], ranks=2, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| (\de\+0\d) \| 2 \| (relu1d_moments|relu1d) \|.*\| (\d+) \| [0-9.]+ \| [0-9.]+ \| \d+ \|$",
                      proc.stdout, re.M)
    assert len(rows) == 4, proc.stdout  # two n x two operators, every solve converged (a bare count of CG its)
    agreements = re.findall(r"rel\. diff U ([0-9.e+-]+), E_alpha ([0-9.e+-]+)", proc.stdout)
    assert len(agreements) == 2 and all(float(u) <= 1e-6 and float(e) <= 1e-9 for u, e in agreements), proc.stdout


def test_scale_benchmark_sharded_quick_under_mpirun(tmp_path):
    """--sharded: each rank reads its rows of the file the benchmark writes, every solve converges, and
    the benchmark removes its temporary directory (only its own) afterwards."""
    proc = run([sys.executable, "benchmarks/scale.py", "--quick", "--sharded", "--dir", str(tmp_path)], ranks=2,
               timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| (\de\+0\d) \| 2 \|(?: [0-9.]+ \|){7} (\d+) \| [0-9.]+ \| \d+ \|$", proc.stdout, re.M)
    assert len(rows) == 2, proc.stdout
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_operator_benchmark_quick():
    proc = run([sys.executable, "benchmarks/operator.py", "--quick"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| (?:sphere|box) .*\| ([0-9.e+-]+) \|$", proc.stdout, re.M)
    assert len(rows) == 2 and all(float(d) <= 1e-12 for d in rows), proc.stdout  # tree = dense to rounding


def test_compression_benchmark_quick():
    proc = run([sys.executable, "benchmarks/compression.py", "--quick"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| interpolated:(\d+) \| \d+ \|.*\| ([0-9.e+-]+) \| ([0-9.e+-]+) \| ([0-9.e+-]+) \| "
                      r"[0-9.]+ \| ([0-9.e+-]+) \|$", proc.stdout, re.M)
    assert len(rows) == 3 and re.search(r"^\| relu_tree \| - \|", proc.stdout, re.M), proc.stdout
    assert all(float(e) <= 3e-3 for e in rows[-1][1:]), rows  # 64 cells per side (measured 1.6e-3 at most)
    line = re.search(r"^fitted order in h \(Phi U, normal, U\): (.*)$", proc.stdout, re.M)
    assert line and all(1.7 <= float(o) <= 2.3 for o in line.group(1).split(", ")), proc.stdout  # O(h^2)


def test_versus_particles_benchmark_short_budget():
    proc = run([sys.executable, "benchmarks/versus_particles.py", "--budget", "1", "--pilot", "0.2"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for problem in ("1-D sin", "2-D smooth"):
        for solver in ("gd", "adam"):
            line = re.search(rf"^{problem}, {solver}: flowfem \(cg\) \d+x faster.*$", proc.stdout, re.M)
            assert line, proc.stdout
            # flowfem with alpha chosen by the path: reaches a 1-second particle run's error, alpha reported
            assert re.search(r"automatic alpha \(no setting chosen in advance\): \d+x at the chosen alpha = "
                             r"1e-\d+$", line.group(0)), line.group(0)


def test_spectrum_benchmark_quick_checks_its_ritz_values_against_a_dense_eigensolve():
    """benchmarks/spectrum.py: the counts of eigenvalues above c alpha fall as alpha grows, and the
    basis's Ritz values interlace the dense eigenvalues of its own pencil, the largest to rounding."""
    proc = run([sys.executable, "benchmarks/spectrum.py", "--quick"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    counts = [[int(c) for c in row] for row in re.findall(r"^\| \de-0\d \| (\d+) \| (\d+) \| (\d+) \|$", out, re.M)]
    assert len(counts) == 6, out
    for row in counts:
        assert row[0] >= row[1] >= row[2]  # a larger cutoff c leaves fewer eigenvalues above c alpha
    assert all(x <= y for lo, hi in zip(counts, counts[1:]) for x, y in zip(lo, hi))  # alpha falls: more above it
    number = r" \| ([0-9.]+)"
    rows = re.findall(r"^\| \de-0\d \| (\d+) \| (\d+)" + 4 * number + r" \|$", out, re.M)
    assert len(rows) == 6, out
    for k, its, left, left_M, kappa, ideal in rows:
        assert int(k) > 0 and int(its) > 0 and float(kappa) >= 1.0 and float(ideal) >= 1.0
    assert _figure(r"max \(theta_j - nu_j\) / nu_1 = ([0-9.e+-]+)", out) <= 1e-12
    assert _figure(r"largest Ritz value's relative error ([0-9.e+-]+)", out) <= 1e-10
    assert _figure(r"P\^\{-1\} asymmetry ([0-9.e+-]+)", out) <= 1e-8
    bad = run([sys.executable, "benchmarks/spectrum.py", "--cells", "0"], timeout=120)
    assert bad.returncode == 2 and "--cells and --n must be positive" in bad.stderr
