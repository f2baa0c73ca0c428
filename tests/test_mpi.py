"""Parallel runs: the rank-agnostic test files under mpirun -n 2, and rank-independence of the solution."""

import os
import re
import sys

import numpy as np
import pytest

from conftest import ROOT, run

pytestmark = pytest.mark.mpi

# test files whose every test is collective-safe and rank-count agnostic
PARALLEL_FILES = ["tests/test_operator.py", "tests/test_stationary.py", "tests/test_convergence.py",
                  "tests/test_space.py", "tests/test_readout.py", "tests/test_flow.py", "tests/test_newton.py",
                  "tests/test_measure.py", "tests/test_compare.py", "tests/test_flow_schemes.py"]


def test_suite_passes_under_mpirun_2():
    assert all(os.path.exists(os.path.join(ROOT, f)) for f in PARALLEL_FILES)  # none dropped silently
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARALLEL_FILES], ranks=2, timeout=1800)
    summary = re.findall(r"(\d+) passed", r.stdout)
    assert r.returncode == 0 and len(summary) == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "failed" not in r.stdout and "error" not in r.stdout.lower().split("passed")[-1]


SCRIPT = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import data, io
from flowfem.problem import Problem
from flowfem.space import Space

domain, activation, solver, out = sys.argv[1:5]
d = 2 if domain == "sphere" else 1
train = data.synthetic("two_moons" if d == 2 else "sin", 300, seed=5)
space = Space.make(domain, d, {"box": 24, "sphere": 2, "ball": 0.4}[domain], radius=3.0)
result = Problem(space, activation, "gaussian:2", alpha=1e-4, kappa=0.5, degree=2).fit(
    train.x, train.y, solver=solver, rtol=1e-13)
theta, u = io.gather_dofs(result.density)
f = result.predict(train.x)
energy = result.energy  # collective: evaluate on every rank
if MPI.COMM_WORLD.rank == 0:
    np.savez(out, theta=theta, u=u, f=f, energy=energy, ranks=MPI.COMM_WORLD.size)
"""


@pytest.mark.parametrize("domain,activation,solver", [
    ("box", "relu", "cg"), ("box", "tanh", "direct"), ("sphere", "relu", "cg"), ("ball", "softplus", "cg")])
def test_one_and_two_ranks_agree(tmp_path, domain, activation, solver):
    script = tmp_path / "solve.py"
    script.write_text(SCRIPT)
    results = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}.npz"
        r = run([sys.executable, str(script), domain, activation, solver, str(out)], ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stderr
        results.append(np.load(out))
    one, two = results
    assert int(two["ranks"]) == 2
    assert np.array_equal(np.round(one["theta"], 10), np.round(two["theta"], 10))
    assert np.linalg.norm(one["u"] - two["u"]) <= 1e-8 * np.linalg.norm(one["u"])
    assert np.linalg.norm(one["f"] - two["f"]) <= 1e-8 * np.linalg.norm(one["f"])
    assert float(one["energy"]) == pytest.approx(float(two["energy"]), rel=1e-10)


def test_one_blas_thread_per_rank_unless_the_user_sets_one():
    """P ranks x T BLAS threads on P cores oversubscribe: under mpirun flowfem limits BLAS to one
    thread per rank (even with NumPy imported first), and leaves a user's setting alone."""
    code = ("import numpy, flowfem, threadpoolctl; "
            "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    r = run([sys.executable, "-c", code], ranks=2, env=env)
    assert r.returncode == 0 and re.findall(r"\[\d+\]", r.stdout) == ["[1]", "[1]"], r.stdout + r.stderr  # lines may interleave
    r = run([sys.executable, "-c", code], ranks=2, env=dict(env, OPENBLAS_NUM_THREADS="2"))
    assert r.returncode == 0 and re.findall(r"\[\d+\]", r.stdout) == ["[2]", "[2]"], r.stdout + r.stderr
