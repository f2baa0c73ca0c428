"""Shared test helpers.

Tests run serially, and the rank-agnostic files run again under
``mpirun -n 2`` from tests/test_mpi.py. Tests marked ``mpi`` start mpirun
themselves and are skipped inside an MPI run.
"""

import gc
import importlib.util
import os
import subprocess
import sys

import pytest

os.environ.setdefault("XDG_CACHE_HOME", os.path.join(os.path.dirname(__file__), os.pardir, ".cache"))

import flowfem  # noqa: E402,F401  (loads MPI before dolfinx)
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
BIN = os.path.dirname(sys.executable)
MPIRUN = os.path.join(BIN, "mpirun") if os.path.exists(os.path.join(BIN, "mpirun")) else "mpirun"


def pytest_collection_modifyitems(config, items):
    if MPI.COMM_WORLD.size > 1:
        skip = pytest.mark.skip(reason="starts mpirun itself; runs in the serial suite")
        for item in items:
            if "mpi" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _collect_petsc_garbage():
    """Destroying PETSc objects is collective: collect after every test on every rank."""
    yield
    gc.collect()
    PETSc.garbage_cleanup()


def run(cmd, ranks: int = 1, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command (under mpirun -n ranks if ranks > 1); capture text output."""
    if ranks > 1:
        cmd = [MPIRUN, "-n", str(ranks)] + list(cmd)
    env = dict(kw.pop("env", os.environ), PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=kw.pop("cwd", ROOT),
                          env=env, **kw)


def run_mpi_script(path, source: str, *args: str, timeout: float = 180) -> None:
    """Write ``source`` to ``path`` and run it under mpirun -n 2 (argv[1:] = args, the test modules
    importable); fail with its output unless it succeeds."""
    path.write_text(source)
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([ROOT, here]))
    proc = subprocess.run([MPIRUN, "-n", "2", sys.executable, str(path), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def perturbations(U, rng, eps=(1e-1, 1e-3)):
    """(eps, V, U + eps V) for random directions V (rank-local entries from rng): probes of a minimum."""
    for e in eps:
        V = U.duplicate()
        V.array[:] = rng.standard_normal(V.getLocalSize())
        W = U.copy()
        W.axpy(e, V)
        yield e, V, W


def load_demo(name: str):
    """Import demos/NAME.py as a module (the demos are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "demos", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shared_tmp(tmp_path):
    """A temporary directory that every MPI rank sees (rank 0's tmp_path)."""
    return MPI.COMM_WORLD.bcast(str(tmp_path), root=0)


@pytest.fixture
def operator_count(monkeypatch):
    """A list that grows by one at every construction of the data operator Phi."""
    from flowfem.operator import DataOperator

    built, init = [], DataOperator.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(DataOperator, "__init__", counting)
    return built
