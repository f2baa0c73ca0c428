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

import numpy as np
import pytest

os.environ.setdefault("XDG_CACHE_HOME", os.path.join(os.path.dirname(__file__), os.pardir, ".cache"))

import flowfem  # noqa: E402,F401  (loads MPI before dolfinx)

import dolfinx.fem  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402
import scipy.linalg  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem import data, io  # noqa: E402
from flowfem.flow.driver import metric_matrix  # noqa: E402
from flowfem.flow.initial import initial_density  # noqa: E402
from flowfem.loss import LOGISTIC  # noqa: E402
from flowfem.problem import Problem  # noqa: E402
from flowfem.space import Space  # noqa: E402

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


def one_error_line(err: str) -> str:
    """The one line of a refusal's stderr, asserted to be the only non-blank one and to start as every
    flowfem error does."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowfem: error: "), err
    return lines[0]


def closed_stdout(argv, cwd, unbuffered: bool = False,
                  command: tuple = ("-m", "flowfem")) -> subprocess.CompletedProcess:
    """``flowfem ARGV`` (or ``python COMMAND ARGV``) with standard output a pipe whose reader has already gone
    (every write fails). Buffered, as in a user's shell, the failing write is the last flush (the image
    run showed status 120 there, where PYTHONUNBUFFERED=1 made every print fail at once); or unbuffered."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(PYTHONPATH=ROOT, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
    try:
        return subprocess.run([sys.executable, *command] + argv, stdout=write, stderr=subprocess.PIPE,
                              text=True, cwd=cwd, timeout=300, env=env)
    finally:
        os.close(write)


def refused_by_cli(argv, capsys) -> str:
    """The one stderr line of ``flowfem ARGV`` run in this process (flowfem.cli.main), asserted to exit with
    status 2: a usage error (argparse's SystemExit) or a refusal."""
    from flowfem import cli

    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    assert status == 2
    return one_error_line(capsys.readouterr().err)


def passes_on_ranks(test_file: str, ranks: int, timeout: float) -> None:
    """Run the tests of ``test_file`` (a path; those not marked mpi) under mpirun -n ranks, within
    ``timeout`` seconds (a hang fails); fail unless every rank's pytest passed."""
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not mpi", test_file],
            ranks=ranks, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count(" passed") == ranks, r.stdout[-3000:]  # one summary line per rank


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


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    """A relu network of width 4 on 1-D inputs, saved as net.npz (rank-local tmp: serial tests)."""
    from flowfem.network import Network

    path = tmp_path_factory.mktemp("net") / "net.npz"
    rng = np.random.default_rng(2)
    Network(rng.standard_normal((4, 1)), rng.standard_normal(4), rng.standard_normal(4), "relu").save(path)
    return path


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


def fitted_order(h, errors) -> float:
    """Slope of log(errors) against log(h) by least squares: the observed order p of errors ~ C h^p
    (negative for errors falling in h = N, a width or a count)."""
    return float(np.polyfit(np.log(np.asarray(h, float)), np.log(np.asarray(errors, float)), 1)[0])


# -- dense reference computations (small problems; on every rank) ---------------------------------

comm = MPI.COMM_WORLD


def say(*a):
    if comm.rank == 0:
        print(*a)


def dense(mat) -> np.ndarray:
    """A distributed PETSc matrix as a dense global array on every rank."""
    lo, hi = mat.getOwnershipRange()
    ai, aj, av = mat.getValuesCSR()
    local = np.zeros((hi - lo, mat.getSize()[1]))
    for r in range(hi - lo):
        local[r, aj[ai[r]:ai[r + 1]]] = av[ai[r]:ai[r + 1]]
    return np.vstack(comm.allgather(local))


def vector(E, values: np.ndarray):
    """A PETSc dof vector holding this rank's part of a global array."""
    V = E.vector()
    lo, hi = V.getOwnershipRange()
    V.array[:] = values[lo:hi]
    return V


def small_problem(alpha=0.05, loss="squared"):
    """49 dofs, 40 points: small enough for dense matrix exponentials."""
    if loss == "squared":
        ds = data.synthetic("sin", 40, seed=3)
        problem = Problem(Space.box(1, 6, 2.0), "relu", "gaussian:1.5", alpha=alpha, kappa=0.5)
    else:
        ds = data.synthetic("two_moons", 60, seed=4)
        problem = Problem(Space.sphere(1), "relu", "uniform", alpha=alpha, kappa=0.5, loss="logistic")
    return problem, problem.functional(ds.x, ds.y)


def u0(problem, spec="gaussian:1:2"):
    return io.vector(initial_density(problem.H, spec))


class Exact:
    """The exact flow U(t) = U* + V exp(-mu t) V^T G (U0 - U*) of a quadratic E (K V = G V diag(mu))."""

    def __init__(self, E, G_name):
        A, C = dense_system(E)
        self.G = dense(metric_matrix(E.H, G_name))
        K = E.alpha * A + C @ C.T / E.n
        self.U_star = np.linalg.solve(K, C @ E.y / E.n)
        self.mu, self.V = scipy.linalg.eigh(K, self.G)

    def __call__(self, U0: np.ndarray, t: float) -> np.ndarray:
        c = self.V.T @ self.G @ (U0 - self.U_star)
        return self.U_star + self.V @ (np.exp(-self.mu * t) * c)

    def norm(self, v):
        return float(np.sqrt(v @ self.G @ v))


def _ufl_sigma(name, z):
    return {"relu": lambda z: ufl.max_value(z, 0.0), "tanh": ufl.tanh,
            "leaky_relu:0.1": lambda z: ufl.max_value(z, 0.1 * z), "monomial:3": lambda z: z**3}[name](z)


def dense_system(E):
    """(A, Phi^T) as dense global arrays on every rank, Phi assembled independently with UFL.

    Column j of Phi^T is the vector of integral sigma(theta . x~_j) v d theta, assembled
    by dolfinx with the same quadrature degree as flowfem's data operator.
    """
    H, Phi = E.H, E.Phi
    V, mesh = H.V, H.space.mesh
    lo, hi = H.A.getOwnershipRange()
    A = dense(H.A)
    xj = dolfinx.fem.Constant(mesh, np.zeros(E.Phi.x.shape[1] + 1))
    theta = ufl.SpatialCoordinate(mesh)
    v = ufl.TestFunction(V)
    form = dolfinx.fem.form(_ufl_sigma(Phi.sigma.name, ufl.dot(theta, xj)) * v
                            * ufl.dx(metadata={"quadrature_degree": Phi.quadrature.degree}))
    C_local = np.empty((hi - lo, E.n))
    for j in range(E.n):
        xj.value[:] = np.append(E.Phi.x[j], 1.0)
        b = dolfinx.fem.petsc.assemble_vector(form)
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        C_local[:, j] = b.array_r
        b.destroy()
    return A, np.vstack(comm.allgather(C_local))


def gather(vec):
    return np.concatenate(comm.allgather(vec.array_r.copy()))


def dense_logistic_newton(A: np.ndarray, C: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """The minimiser of (1/n) sum_j log(1 + exp(-y_j f_j)) + (alpha/2) X^T A X, f = C^T X, by plain Newton
    in NumPy with full steps (A dense (ndofs, ndofs), C = Phi^T dense (ndofs, n)): the independent reference."""
    n = len(y)
    X = np.zeros(A.shape[0])
    for _ in range(50):
        f = C.T @ X
        g = alpha * A @ X + C @ LOGISTIC.d1(f, y) / n
        if np.linalg.norm(g) <= 1e-14:
            break
        X -= np.linalg.solve(alpha * A + (C * LOGISTIC.d2(f, y)) @ C.T / n, g)
    return X
