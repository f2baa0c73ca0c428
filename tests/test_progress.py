"""Progress bars (flowfem.progress): on rank 0 only, only on a terminal (or FLOWFEM_PROGRESS=1), never with
FLOWFEM_PROGRESS=0; what each long run shows; the KSP and SNES monitors exist only while a bar is shown.

Standard error is replaced by a stream that says it is a terminal (``Terminal``) or one that does not
(``io.StringIO``, as a pipe); under mpirun -n 2 (tests/test_mpi.py) rank 1 must write nothing to either.
"""

import io as stdio
import sys

import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI

from conftest import small_problem, u0
from flowfem import compare, data, particles, plateau, progress
from flowfem.flow import Flow
from flowfem.network import Network
from flowfem.stationary import LinearSolver, NewtonSolver

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

rank = MPI.COMM_WORLD.rank


class Terminal(stdio.StringIO):
    def isatty(self):
        return True


def on_terminal(monkeypatch) -> Terminal:
    """Standard error as a terminal, FLOWFEM_PROGRESS unset (called in the test itself: pytest sets its
    own sys.stderr again between the fixtures and the test)."""
    monkeypatch.delenv(progress.VARIABLE, raising=False)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    return term


def test_bar_only_on_a_terminal_of_rank_0(monkeypatch):
    monkeypatch.delenv(progress.VARIABLE, raising=False)
    term, pipe = Terminal(), stdio.StringIO()
    for stream in (term, pipe):
        monkeypatch.setattr(sys, "stderr", stream)
        with progress.bar(total=10, desc="step") as bar:
            assert bool(bar.disable) == (stream is pipe or rank != 0)  # (closing disables every bar)
            bar.update(5)
    assert pipe.getvalue() == ""
    if rank == 0:
        assert "step:  50%" in term.getvalue() and term.getvalue().endswith("\n")
    else:
        assert term.getvalue() == ""
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with progress.bar(False, total=1) as bar:  # not asked for (--quiet)
        assert bar.disable
        bar.update(1)
    assert quiet.getvalue() == ""


def test_environment_switch(monkeypatch):
    """FLOWFEM_PROGRESS=0: no bar even on a terminal; =1: a bar on rank 0 even on a pipe; else refused."""
    term, pipe = Terminal(), stdio.StringIO()
    monkeypatch.setenv(progress.VARIABLE, "0")
    monkeypatch.setattr(sys, "stderr", term)
    with progress.bar(total=2, desc="off") as bar:
        bar.update(2)
    assert term.getvalue() == ""
    monkeypatch.setenv(progress.VARIABLE, "1")
    monkeypatch.setattr(sys, "stderr", pipe)
    with progress.bar(total=2, desc="forced") as bar:
        bar.update(2)
    assert ("forced: 100%" in pipe.getvalue()) == (rank == 0)
    with progress.bar(False, total=2, desc="asked not to") as bar:  # the caller's "no" still wins
        bar.update(2)
    assert "asked not to" not in pipe.getvalue()
    monkeypatch.setenv(progress.VARIABLE, "yes")
    with pytest.raises(ValueError, match="FLOWFEM_PROGRESS='yes': set it to 0"):
        progress.bar()


def test_solve_shows_cg_iterations_and_residual_ratio(monkeypatch):
    stderr = on_terminal(monkeypatch)
    problem, _ = small_problem()
    ds = data.synthetic("sin", 40, seed=3)
    result = problem.fit(ds.x, ds.y, rtol=1e-10, progress=True)
    if rank == 0:
        text = stderr.getvalue()
        assert f"CG: {result.iterations}it" in text and "||r||/||b||" in text and "(rtol 1e-10)" in text, text
    else:
        assert stderr.getvalue() == ""
    before = stderr.getvalue()
    quiet = problem.fit(ds.x, ds.y, rtol=1e-10)  # the default: no bar
    assert quiet.iterations == result.iterations and stderr.getvalue() == before


def test_newton_shows_its_steps(monkeypatch):
    stderr = on_terminal(monkeypatch)
    problem, E = small_problem(alpha=0.05, loss="logistic")
    ds = data.synthetic("two_moons", 60, seed=4)
    result = problem.fit(ds.x, ds.y, progress=True)
    if rank == 0:
        text = stderr.getvalue()
        assert f"Newton: {result.iterations}step" in text and "||dE||/||dE0||" in text and "CG its" in text, text
        assert "CG:" not in text  # the inner solves have no bars of their own
    else:
        assert stderr.getvalue() == ""


def test_monitors_are_installed_only_with_a_bar(monkeypatch):
    """Without a bar (not asked, rank != 0, or not a terminal) the KSP and SNES monitors are never made;
    with one they are removed after the solve."""
    on_terminal(monkeypatch)
    made = []
    linear, newton = LinearSolver._monitor, NewtonSolver._monitor
    monkeypatch.setattr(LinearSolver, "_monitor", staticmethod(lambda *a: made.append("KSP") or linear(*a)))
    monkeypatch.setattr(NewtonSolver, "_monitor", lambda self, bar: made.append("SNES") or newton(self, bar))
    _, E = small_problem()
    _, E_logistic = small_problem(loss="logistic")
    for show in (False, True):
        lin = LinearSolver(E, rtol=1e-10, progress=show)
        lin.solve(E.rhs(), E.vector())
        assert lin.ksp.getMonitor() is None
        lin.destroy()
        ns = NewtonSolver(E_logistic, "cg", rtol=1e-10, linear_rtol=1e-10, progress=show)
        ns.solve(E_logistic.vector())
        assert ns.snes.getMonitor() is None
        ns.destroy()
    assert made == (["KSP", "SNES"] if rank == 0 else [])
    monkeypatch.setattr(sys, "stderr", stdio.StringIO())  # a pipe: no monitor on any rank
    lin = LinearSolver(E, rtol=1e-10, progress=True)
    lin.solve(E.rhs(), E.vector())
    lin.destroy()
    assert made == (["KSP", "SNES"] if rank == 0 else [])


def test_flow_shows_steps_time_and_energy(monkeypatch):
    stderr = on_terminal(monkeypatch)
    problem, E = small_problem()
    flow = Flow(E, "L2", "implicit_euler")
    flow.stationary()
    result = flow.run(u0(problem), tau=0.5, growth=2.0, tol=1e-6, max_steps=100, progress=True)
    last = result.log[-1]
    if rank == 0:
        text = stderr.getvalue()
        assert "flow: 100%" in text, text  # the run ended at tol: all of it is done
        assert f"step {result.steps}, t {last['t']:.3g}, E {last['energy']:.6e}, err {last['error']:.1e}" in text
    else:
        assert stderr.getvalue() == ""


def test_particle_training_shows_its_steps(monkeypatch):
    stderr = on_terminal(monkeypatch)
    ds = data.synthetic("sin", 50, seed=0)
    r = particles.train(ds.x, ds.y, 8, steps=30, progress=True)
    if rank == 0:
        text = stderr.getvalue()
        assert "gd N=8: 100%" in text and "30/30" in text and f"J {r.objective:.4e}" in text, text
    else:
        assert stderr.getvalue() == ""


def test_landscape_shows_the_neurons_done(monkeypatch):
    stderr = on_terminal(monkeypatch)
    ds = data.synthetic("sin", 40, seed=3)
    net = Network([[1.5], [-2.0], [0.7]], [0.2, 0.5, -0.1], [0.8, -0.6, 0.3], "tanh")
    plateau.plateau_report(net, ds.x, ds.y, [0.5], progress=True)
    assert ("landscape: 100%" in stderr.getvalue() and "3/3" in stderr.getvalue()) == (rank == 0)


def test_compare_shows_which_run_of_how_many(monkeypatch):
    stderr = on_terminal(monkeypatch)
    train, test = data.synthetic("sin", 60, seed=0), data.synthetic("sin", 60, seed=1)
    compare.compare(train, test, widths=(4,), seeds=(0, 1), methods=("gd",), steps=5, mesh_size=6,
                    readouts=("quadrature", "refit"), progress=True)
    text = stderr.getvalue()
    if rank == 0:
        # 1 FE solve + 1 quadrature + 2 refit readouts + 2 particle runs + 1 density = 7 runs
        assert "compare: 100%" in text and "7/7" in text and "gd N=4:" in text, text
    else:
        assert text == ""
