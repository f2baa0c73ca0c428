"""The gradient flow of E_alpha: the density's parabolic evolution toward the minimiser.

In a metric g, the flow is (DESIGN.md section 1)

    g(du/dt, v) = -dE_alpha(u)[v]   for all v,

with g = m_omega (``L2``: the weighted mass, matrix M) or g = a_omega (``H1``:
the Sobolev metric, matrix A). Discretely, with G = M or A,

    G dU/dt = -dE_alpha(U) = -(alpha A U + Phi^T l'(Phi U, y) / n).

For the squared loss dE_alpha(U) = K U - b with K = alpha A + Phi^T Phi / n
and b = Phi^T y / n, so U(t) = U* + exp(-t G^{-1} K) (U(0) - U*). E_alpha is
lambda-convex with lambda = alpha in both metrics (K >= alpha A >= alpha M), so
the flow contracts, ||U(t) - U*||_G <= exp(-alpha t) ||U(0) - U*||_G, and the
energy gap decays like E(t) - E* <= exp(-2 alpha t) (E(0) - E*).

Time steppers live in the registry :data:`SCHEMES` (``name[:parameter]``);
each docstring states its discrete equation. Every implicit step is a
Newton solve (:class:`flowfem.stationary.NewtonSolver`) whose linear systems
s G + K(D) are solved by the same sparse-plus-low-rank solver as the
stationary problem: matrix-free CG with GAMG on s G + alpha A, or MUMPS +
Woodbury. The flow is stiff in L2 (alpha A against M is ~ alpha / h^2), so
implicit steps may be large, and growing (geometric) steps reach the
stationary state in few steps.

Initial densities (:func:`initial_density`): ``zero``, ``gaussian[:S[:A]]``,
a saved density (``density:PATH``, a density.npz on the same mesh) or a
finite network (``network:PATH``) projected onto the mesh.

A run (:meth:`Flow.run`) logs per step the time, step size, E_alpha, the
loss and the regulariser separately, ||u - u*||_G / ||u*||_G when the
stationary solution is known, and Newton and linear iterations; it writes
checkpoints (:class:`Checkpoints`: one file per checkpoint, written under a
temporary name and renamed, with a sha256 checksum) from which
:func:`load_checkpoint` resumes bit for bit on the same number of ranks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from flowfem.mpi import CollectiveError, on_root  # first: loads MPI before dolfinx

import dolfinx.fem  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402
import dolfinx.geometry  # noqa: E402
import dolfinx.io  # noqa: E402
import dolfinx.la  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem.functional import Functional  # noqa: E402
from flowfem.io import fill_by_coordinates, read_density_file  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.space import check_parameter_dim  # noqa: E402
from flowfem.stationary import LinearSolver, NewtonSolver, _LinearSolverPC, newton, solve  # noqa: E402

METRICS = ("L2", "H1")
CHECKPOINT_VERSION = 1


def metric_matrix(H: WeightedH1, metric: str) -> PETSc.Mat:
    """G: the weighted mass matrix M (``L2``) or the H^1_omega matrix A (``H1``)."""
    key = str(metric).upper()
    if key == "L2":
        return H.M
    if key == "H1":
        return H.A
    raise ValueError(f"unknown metric {metric!r}: choose L2 (weighted mass) or H1 (the Sobolev metric a_omega)")


# -- time steppers ------------------------------------------------------------------------


@dataclass
class StepStats:
    """What one step did: the step taken, the step proposed next, solver work."""

    tau: float
    next_tau: float
    newton_iterations: int = 0
    linear_iterations: int = 0
    rejections: int = 0


SCHEMES: dict[str, type["Scheme"]] = {}


def register(cls):
    """Class decorator: add a time stepper to :data:`SCHEMES` under ``cls.name``."""
    SCHEMES[cls.name] = cls
    return cls


def parse_scheme(spec: str) -> tuple[type["Scheme"], str | None]:
    """``name`` or ``name:parameter`` -> (class, parameter)."""
    name, _, arg = str(spec).strip().lower().partition(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown time stepper {spec!r}: choose one of {', '.join(sorted(SCHEMES))} "
                         "(theta:THETA, bdf:ORDER)")
    return SCHEMES[name], (arg or None)


class Scheme:
    """A time stepper for G dU/dt = -dE_alpha(U). Subclasses state their discrete equation."""

    name = ""
    order = 0
    adaptive = False  # True if the scheme chooses its own step sizes

    def __init__(self, flow: "Flow", arg: str | None = None):
        self.flow = flow

    @property
    def label(self) -> str:
        return self.name

    def step(self, U: PETSc.Vec, t: float, tau: float) -> StepStats:
        """Advance U in place from t by (at most) tau."""
        raise NotImplementedError

    def restart(self) -> None:
        """Forget any history (multistep schemes): called after a checkpoint, so that a run
        resumed from it and the uninterrupted run take identical steps."""

    def destroy(self) -> None:
        pass


@register
class Theta(Scheme):
    """The theta-method, 1/2 <= theta <= 1 (``theta:THETA``; order 2 for theta = 1/2, else 1):

        G (U^{k+1} - U^k) / tau = -theta dE(U^{k+1}) - (1 - theta) dE(U^k).

    Each step is a Newton solve of F(U) = s G (U - U^k) + dE(U) - g = 0 with
    s = 1 / (theta tau) and g = -(1 - theta) / theta dE(U^k); for the squared
    loss one linear solve (s G + K) dU = -F(U^k) of the correction.
    """

    name = "theta"
    theta = 0.5

    def __init__(self, flow: "Flow", arg: str | None = None):
        super().__init__(flow, arg)
        if arg is not None:
            try:
                self.theta = float(arg)
            except ValueError:
                raise ValueError(f"theta:{arg}: theta must be a number in [1/2, 1]") from None
        if not 0.5 <= self.theta <= 1.0:
            raise ValueError(f"theta = {self.theta}: the theta-method is A-stable (and the flow's energy "
                             "bounded) only for 1/2 <= theta <= 1")
        self.order = 2 if self.theta == 0.5 else 1
        self.newton = flow.newton_solver()

    @property
    def label(self) -> str:
        return f"theta:{self.theta:g}"

    def step(self, U, t, tau):
        E = self.flow.E
        anchor = U.copy()
        g = None
        if self.theta < 1.0:
            g = E.gradient(U)
            g.scale(-(1.0 - self.theta) / self.theta)
        info = self.newton.solve(U, shift=1.0 / (self.theta * tau), anchor=anchor, g=g)
        anchor.destroy()
        if g is not None:
            g.destroy()
        return StepStats(tau, tau, info.iterations, int(sum(info.linear_iterations)))

    def destroy(self):
        self.newton.destroy()


@register
class ImplicitEuler(Theta):
    """Implicit Euler, the minimising-movement scheme (order 1, energy-decreasing for every tau):

        G (U^{k+1} - U^k) / tau + dE(U^{k+1}) = 0,
        i.e. U^{k+1} = argmin_U E_alpha(U) + ||U - U^k||_G^2 / (2 tau).

    For the squared loss: (G + tau K) U^{k+1} = G U^k + tau b.
    """

    name = "implicit_euler"
    theta = 1.0

    @property
    def label(self) -> str:
        return self.name


@register
class CrankNicolson(Theta):
    """Crank-Nicolson, the theta-method with theta = 1/2 (order 2, A-stable, not L-stable):

        G (U^{k+1} - U^k) / tau = -(dE(U^{k+1}) + dE(U^k)) / 2.
    """

    name = "crank_nicolson"
    theta = 0.5

    @property
    def label(self) -> str:
        return self.name


@register
class BDF(Scheme):
    """PETSc TS ``bdf`` of order k (``bdf:k``, 1 <= k <= 6, default 2) on the implicit ODE

        F(t, U, U') = G U' + dE(U) = 0:

        G (sum_{j=0}^{k} c_j U^{n+1-j}) / tau_n + dE(U^{n+1}) = 0,

    c_j the variable-step BDF coefficients (k = 2, constant steps:
    (3 U^{n+1} - 4 U^n + U^{n-1}) / 2). Steps adapt (TSAdapt ``basic``, local
    error against the TS tolerances; PETSc lets BDF steps grow at most 2x per
    step). Each step is a SNES solve whose Jacobian c_0 / tau_n G + K(D) is
    solved by the :class:`LinearSolver`. Options ``ts_*`` and ``snes_*`` pass
    through (e.g. ``ts_adapt_type=none`` for fixed steps, ``ts_rtol=1e-6``,
    ``ts_monitor=``). A restart (after a checkpoint) begins again with
    PETSc's start-up step.
    """

    name = "bdf"
    adaptive = True

    def __init__(self, flow: "Flow", arg: str | None = None):
        super().__init__(flow, arg)
        try:
            self.order = int(arg) if arg is not None else 2
        except ValueError:
            raise ValueError(f"bdf:{arg}: the BDF order must be an integer 1..6") from None
        if not 1 <= self.order <= 6:
            raise ValueError(f"bdf:{self.order}: PETSc's BDF has orders 1 to 6")
        E = flow.E
        self.lin = LinearSolver(E, None, flow.solver, flow.step_rtol, petsc_options=flow.linear_options,
                                G=flow.G, shift=0.0, atol=flow.linear_atol, pc_shift_factor=flow.pc_shift_factor)
        comm = E.H.space.comm
        ts = PETSc.TS().create(comm)
        prefix = f"flowfem_ts_{next(_ts_prefix)}_"
        ts.setOptionsPrefix(prefix)
        ts.setType("bdf")
        ts.setProblemType(PETSc.TS.ProblemType.LINEAR if E.loss.quadratic else PETSc.TS.ProblemType.NONLINEAR)
        self.F = E.vector()
        ts.setIFunction(self._ifunction, self.F)
        ts.setIJacobian(self._ijacobian, self.lin.K, self.lin.K)
        ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
        ts.setMaxTime(1e300)  # Flow.run decides when to stop and shortens the last step itself
        ts.setMaxSteps(2**31 - 1)
        ts.setMaxSNESFailures(-1)
        snes = ts.getSNES()
        if not E.loss.quadratic:
            snes.setType("newtonls")
            snes.getLineSearch().setType("bt")
            snes.setTolerances(rtol=flow.newton_rtol, atol=flow.newton_atol, stol=0.0)
        ksp = snes.getKSP()
        ksp.setType("preonly")
        self.pc = _LinearSolverPC(self.lin)
        ksp.getPC().setType("python")
        ksp.getPC().setPythonContext(self.pc)
        opts = PETSc.Options()
        opts[prefix + "ts_bdf_order"] = self.order
        for k, v in flow.ts_options.items():
            opts[prefix + k] = v
        ts.setFromOptions()
        self.ts = ts
        self._setup = False
        self._tmp = E.vector()

    @property
    def label(self) -> str:
        return f"bdf:{self.order}"

    def _ifunction(self, ts, t, U, Udot, F):
        E = self.flow.E
        E.gradient(U, F)
        self.flow.G.mult(Udot, self._tmp)
        F.axpy(1.0, self._tmp)

    def _ijacobian(self, ts, t, U, Udot, a, J, P):
        self.lin.set_shift(a)
        if not self.flow.E.loss.quadratic:
            self.lin.set_weights(self.flow.E.curvature(U))

    def step(self, U, t, tau):
        ts = self.ts
        if not self._setup:
            flow = self.flow
            if "ts_rtol" not in flow.ts_options and "ts_atol" not in flow.ts_options:
                ts.setTolerances(rtol=flow.ts_rtol, atol=flow.ts_atol)  # atol is known only now (Flow.run)
            ts.setTime(t)
            ts.setSolution(U)
            ts.setTimeStep(tau)
            ts.setUp()
            self._setup = True
        else:
            ts.setTimeStep(tau)  # the flow may shorten the last step to land on t_end
        snes_its, rejections, lin_its = ts.getSNESIterations(), ts.getStepRejections(), self.lin.iterations_total
        self.pc.error = None
        ts.step()
        if self.pc.error is not None:
            raise RuntimeError(f"a BDF step's linear solve failed: {self.pc.error}")
        reason = ts.getConvergedReason()
        if reason < 0:
            raise RuntimeError(f"PETSc TS (bdf) failed with reason {reason} at t = {ts.getTime():.6g}; "
                               "try a smaller first step (--tau) or ts_max_reject")
        taken = ts.getTime() - t
        # TS works on its own copy of the state when U is not its solution vector
        sol = ts.getSolution()
        if sol.handle != U.handle:
            sol.copy(U)
        return StepStats(taken, ts.getTimeStep(), ts.getSNESIterations() - snes_its,
                         self.lin.iterations_total - lin_its, ts.getStepRejections() - rejections)

    def restart(self):
        self.ts.restartStep()

    def destroy(self):
        self.ts.destroy()
        self.lin.destroy()


_ts_prefix = itertools.count()  # the same sequence of TS option prefixes on every rank


# -- the flow -------------------------------------------------------------------------------


@dataclass
class FlowState:
    """Where a run stands: step number, time, next step size and the log so far."""

    step: int = 0
    t: float = 0.0
    tau: float = 1.0
    log: list = field(default_factory=list)
    ts_atol: float | None = None  # the BDF error tolerance chosen at the start (kept for a resumed run)
    restart_every: int | None = None  # multistep history restarts at these steps (the checkpoint interval)


@dataclass
class FlowResult:
    """The final density and the energy log of a run (one dict per step, step 0 = initial state)."""

    U: PETSc.Vec
    log: list
    lam: float
    metric: str
    scheme: str
    energy_star: float | None = None
    U_star: PETSc.Vec | None = None
    stopped: str = ""

    def column(self, key: str) -> np.ndarray:
        return np.array([r[key] for r in self.log], dtype=float)

    @property
    def times(self) -> np.ndarray:
        return self.column("t")

    @property
    def energies(self) -> np.ndarray:
        return self.column("energy")

    @property
    def errors(self) -> np.ndarray:
        """||U_k - U*||_G / ||U*||_G (NaN without a reference)."""
        return self.column("error")

    @property
    def steps(self) -> int:
        return len(self.log) - 1

    def contraction_rate(self) -> float:
        """Observed rate r with ||U(t) - U*||_G = exp(-r t) ||U(0) - U*||_G at the last step."""
        e, t = self.errors, self.times
        ok = np.isfinite(e) & (e > 0)
        if ok.sum() < 2 or t[ok][-1] <= t[ok][0]:
            return float("nan")
        return float(-np.log(e[ok][-1] / e[ok][0]) / (t[ok][-1] - t[ok][0]))


class Progress:
    """A one-line progress bar on stderr: rank 0 only, and only when stderr is a terminal."""

    def __init__(self, comm: MPI.Comm, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = bool(enabled) and comm.rank == 0 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = False

    def update(self, fraction: float, text: str) -> None:
        if not self.enabled:
            return
        fraction = min(max(fraction, 0.0), 1.0) if np.isfinite(fraction) else 0.0
        width = 30
        bar = "#" * int(round(width * fraction)) + "." * (width - int(round(width * fraction)))
        self.stream.write(f"\r[{bar}] {100 * fraction:5.1f}% {text}\033[K")
        self.stream.flush()
        self.started = True

    def close(self) -> None:
        if self.enabled and self.started:
            self.stream.write("\n")
            self.stream.flush()


class Flow:
    """The gradient flow G dU/dt = -dE_alpha(U) for a functional E, a metric and a time stepper.

    ``solver`` (cg | direct) configures the linear solves of every step, which
    stop (cg) at ||r|| <= max(step_rtol ||rhs||, rtol ||dE_alpha(0)||): each
    step reduces its own residual by ``step_rtol``, down to the floor
    ``rtol`` ||dE_alpha(0)|| (for the squared loss ||dE_alpha(0)|| =
    ||Phi^T y / n||, the stationary right-hand side), which also is the
    tolerance of :meth:`stationary`. The floor is relative to the data, not
    to the step: late residuals lie in the slow modes, where a residual
    costs more error than in a stationary solve, hence the default 1e-12. The Newton tolerances ``newton_rtol`` (relative to the first
    residual) and ``newton_atol`` apply to nonlinear losses. ``petsc_options`` keys starting
    with ``ts_`` go to the PETSc TS (BDF scheme), ``snes_`` to SNES, the rest
    to the linear solver. ``ts_rtol`` / ``ts_atol`` are the BDF error
    tolerances (``ts_atol`` defaults to ts_rtol times the largest |U|
    of the initial or stationary density, set by :meth:`run`). With
    ``pc_shift_factor`` f the preconditioner of the steps' systems
    G / (theta tau) + K is rebuilt only when the shift crosses a power of f
    (see :class:`flowfem.stationary.LinearSolver`).
    """

    def __init__(self, E: Functional, metric: str = "L2", scheme: str = "implicit_euler", solver: str = "cg",
                 rtol: float = 1e-12, newton_rtol: float = 1e-10, newton_atol: float | None = None,
                 ts_rtol: float = 1e-4, ts_atol: float | None = None, petsc_options: dict | None = None,
                 step_rtol: float = 1e-6, pc_shift_factor: float | None = 4.0):
        self.E = E
        self.G = metric_matrix(E.H, metric)  # validates the name
        self.metric = str(metric).upper()
        self.solver, self.rtol, self.step_rtol = solver, float(rtol), float(step_rtol)
        self.pc_shift_factor = pc_shift_factor
        self.newton_rtol = float(newton_rtol)
        g0 = E.gradient(E.vector())
        self.gradient_scale = max(g0.norm(), 1e-300)  # ||dE_alpha(0)||
        g0.destroy()
        if newton_atol is None:  # steps near the stationary state start from a tiny residual: the linear floor
            newton_atol = self.rtol * self.gradient_scale
        self.newton_atol = float(newton_atol)
        self.ts_rtol, self.ts_atol_given = float(ts_rtol), ts_atol
        self.ts_atol = float(ts_atol) if ts_atol is not None else float(ts_rtol)
        opts = {str(k).lstrip("-"): v for k, v in (petsc_options or {}).items()}
        self.ts_options = {k: v for k, v in opts.items() if k.startswith("ts_") or k.startswith("snes_")}
        self.snes_options = {k: v for k, v in opts.items() if k.startswith("snes_")}
        self.linear_options = {k: v for k, v in opts.items() if not (k.startswith("ts_") or k.startswith("snes_"))}
        cls, arg = parse_scheme(scheme)
        self._scheme_cls, self._scheme_arg = cls, arg
        self._scheme = None
        self.U_star: PETSc.Vec | None = None
        self.energy_star: float | None = None
        self.stationary_info = None

    @property
    def lam(self) -> float:
        """The contraction rate guaranteed in both metrics: lambda = alpha."""
        return self.E.lam

    @property
    def scheme(self) -> Scheme:
        if self._scheme is None:
            self._scheme = self._scheme_cls(self, self._scheme_arg)
        return self._scheme

    def newton_solver(self) -> NewtonSolver:
        """A Newton solver for the implicit steps F(U) = s G (U - U^k) + dE(U) - g = 0."""
        opts = dict(self.linear_options, **self.snes_options)
        return NewtonSolver(self.E, self.solver, self.newton_rtol, self.newton_atol, 50, self.step_rtol,
                            G=self.G, petsc_options=opts, linear_atol=self.linear_atol,
                            pc_shift_factor=self.pc_shift_factor)

    @property
    def linear_atol(self) -> float:
        """The absolute floor of every step's linear solves: rtol ||dE_alpha(0)||."""
        return self.rtol * self.gradient_scale

    def norm(self, V: PETSc.Vec) -> float:
        """||V||_G = sqrt(V^T G V)."""
        GV = self.G.createVecLeft()
        self.G.mult(V, GV)
        value = float(np.sqrt(max(GV.dot(V), 0.0)))
        GV.destroy()
        return value

    def stationary(self) -> PETSc.Vec:
        """U*, the minimiser (one linear solve, or Newton for a nonlinear loss); kept as the reference."""
        if self.U_star is None:
            if self.E.loss.quadratic:
                U, info = solve(self.E, self.solver, self.rtol, self.linear_options or None)
            else:
                U, info = newton(self.E, None, self.solver, rtol=min(self.newton_rtol, 1e-12),
                                 linear_rtol=self.rtol, petsc_options=self.linear_options or None)
            self.U_star, self.stationary_info = U, info
            self.energy_star = self.E(U)
        return self.U_star

    def set_reference(self, U_star: PETSc.Vec) -> None:
        """Use a known stationary solution U* for the error column and the energy gap."""
        self.U_star = U_star
        self.energy_star = self.E(U_star)

    def record(self, U: PETSc.Vec, step: int, t: float, tau: float, stats: StepStats | None,
               seconds: float) -> dict:
        """One row of the energy log."""
        loss, reg = self.E.parts(U)
        error = float("nan")
        if self.U_star is not None:
            D = U.copy()
            D.axpy(-1.0, self.U_star)
            ref = self.norm(self.U_star)
            error = self.norm(D) / ref if ref > 0 else self.norm(D)
            D.destroy()
        gap = loss + reg - self.energy_star if self.energy_star is not None else float("nan")
        return dict(step=step, t=t, tau=tau, energy=loss + reg, loss=loss, regulariser=reg, gap=gap,
                    error=error, newton_iterations=stats.newton_iterations if stats else 0,
                    linear_iterations=stats.linear_iterations if stats else 0,
                    rejections=stats.rejections if stats else 0, seconds=seconds)

    def run(self, U: PETSc.Vec, t_end: float = math.inf, tau: float = 1.0, growth: float = 1.0,
            tau_max: float = math.inf, max_steps: int = 10**6, tol: float | None = None,
            state: FlowState | None = None, checkpoints: "Checkpoints | None" = None,
            writer: "TrajectoryWriter | None" = None, progress: bool = False, callback=None) -> FlowResult:
        """Flow from U (modified in place) until t_end, max_steps, or ||U - U*||_G <= tol ||U*||_G.

        Steps: tau, then tau * growth, ... up to tau_max (one-step schemes), or
        as the adaptive scheme (BDF) proposes starting from tau. ``state``
        continues a checkpointed run (see :func:`load_checkpoint`).
        ``callback(record, U)`` is called after every step on every rank.
        """
        if not (tau > 0 and np.isfinite(tau)):
            raise ValueError(f"time step tau = {tau} must be positive and finite")
        if not (growth >= 1.0 and np.isfinite(growth)):
            raise ValueError(f"step growth factor {growth} must be >= 1 (1: constant steps)")
        if not tau_max > 0:
            raise ValueError(f"largest step tau_max = {tau_max} must be positive")
        if tol is not None and self.U_star is None:
            raise ValueError("stopping at a tolerance on ||u - u*|| needs the stationary solution: "
                             "call stationary() (or set_reference) first")
        if not (np.isfinite(t_end) or max_steps < 10**6 or tol is not None):
            raise ValueError("the flow needs an end: give t_end, max_steps or tol")
        comm = self.E.H.space.comm
        if self.ts_atol_given is None:
            if state is not None and state.ts_atol is not None:
                self.ts_atol = state.ts_atol
            else:
                ref = self.U_star if self.U_star is not None else U
                self.ts_atol = self.ts_rtol * max(ref.norm(PETSc.NormType.INFINITY), 1e-300)
        scheme = self.scheme
        clock = time.perf_counter()
        if state is None:
            state = FlowState(0, 0.0, float(tau), [], self.ts_atol)
            state.log.append(self.record(U, 0, 0.0, 0.0, None, 0.0))
            if writer is not None:
                writer.write(0.0, U)
        offset = state.log[-1]["seconds"] if state.log else 0.0
        bar = Progress(comm, progress)
        stopped = ""
        try:
            while True:
                last = state.log[-1]
                if tol is not None and last["error"] <= tol:
                    stopped = f"||u - u*|| / ||u*|| = {last['error']:.2e} <= tol = {tol:g}"
                    break
                if state.t >= t_end:
                    stopped = f"t = t_end = {t_end:g}"
                    break
                if state.step >= max_steps:
                    stopped = f"max_steps = {max_steps} steps"
                    break
                planned = step_tau = min(state.tau, tau_max)
                final = state.t + step_tau >= t_end * (1 - 1e-12)
                if final:
                    step_tau = t_end - state.t
                stats = scheme.step(U, state.t, step_tau)
                state.t = t_end if final and not scheme.adaptive else state.t + stats.tau
                if scheme.adaptive and state.t >= t_end * (1 - 1e-12):
                    state.t = max(state.t, t_end)
                state.step += 1
                state.tau = stats.next_tau if scheme.adaptive else min(planned * growth, tau_max)
                rec = self.record(U, state.step, state.t, stats.tau, stats,
                                  offset + time.perf_counter() - clock)
                state.log.append(rec)
                if writer is not None and (state.step % writer.every == 0):
                    writer.write(state.t, U)
                if checkpoints is not None and state.restart_every is None:
                    state.restart_every = checkpoints.every
                written = checkpoints is not None and state.step % checkpoints.every == 0
                if written:
                    checkpoints.save(self, state, U)
                if written or (state.restart_every and state.step % state.restart_every == 0):
                    scheme.restart()  # at the same steps in a resumed run, with or without checkpoints
                if callback is not None:
                    callback(rec, U)
                fractions = [state.t / t_end if np.isfinite(t_end) else 0.0, state.step / max_steps]
                if tol is not None and rec["error"] > 0 and state.log[0]["error"] > tol:
                    fractions.append(np.log(state.log[0]["error"] / rec["error"])
                                     / np.log(state.log[0]["error"] / tol))
                bar.update(max(fractions), f"step {state.step} t={state.t:.3g} E={rec['energy']:.6e}"
                           + (f" err={rec['error']:.1e}" if np.isfinite(rec["error"]) else ""))
        finally:
            bar.close()
        if writer is not None and state.step % writer.every != 0:
            writer.write(state.t, U)
        self.state = state
        return FlowResult(U, state.log, self.lam, self.metric, scheme.label, self.energy_star, self.U_star, stopped)

    def destroy(self):
        if self._scheme is not None:
            self._scheme.destroy()
            self._scheme = None


# -- initial densities --------------------------------------------------------------------


def to_vector(u: dolfinx.fem.Function) -> PETSc.Vec:
    """A fresh PETSc vector (owned dofs) holding u."""
    return u.x.petsc_vec.copy()


def gaussian(H: WeightedH1, scale: float = 1.0, amplitude: float = 1.0) -> dolfinx.fem.Function:
    """u0(theta) = A exp(-|theta|^2 / (2 s^2)): the density of the usual initialisation law
    N(0, s^2 I) up to its normalisation (on the circle and sphere, |theta| = 1: a constant)."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"the Gaussian initial density's scale s = {scale} must be positive")
    if not np.isfinite(amplitude):
        raise ValueError(f"the Gaussian initial density's amplitude {amplitude} must be finite")
    u = H.function("u0")
    gdim = H.space.gdim
    u.interpolate(lambda x: amplitude * np.exp(-np.sum(x[:gdim] ** 2, axis=0) / (2 * scale**2)))
    u.x.scatter_forward()
    return u


def density_from_file(H: WeightedH1, path: str) -> dolfinx.fem.Function:
    """A density.npz (flowfem solve/flow) on the same mesh, matched dof by dof through the coordinates."""
    data = on_root(H.space.comm, lambda: read_density_file(path, {"theta", "u"}, "the initial density"))
    u = H.function("u0")
    fill_by_coordinates(u, data["theta"], data["u"], f"the initial density {os.fspath(path)!r}",
                        "it was computed on a different mesh or element degree; use the same --domain, "
                        "--mesh-size and --degree")
    return u


def project_network(H: WeightedH1, network, activation=None) -> dolfinx.fem.Function:
    """The L^2 projection onto the mesh of the measure mu = sum_i a_i delta_{theta_i} of a finite network:

        integral_Omega u_h v d theta = sum_i a_i v(theta_i)   for all v in V_h,

    so f_{u_h}(x) = sum_i a_i (Pi sigma_x)(theta_i), Pi the L^2 projection of
    sigma_x = sigma(. x~): exact whenever sigma_x lies in V_h (e.g. sigma(z) = z
    with P1 elements). On the circle and sphere (homogeneous sigma of degree
    p) a neuron theta = r vartheta counts as r^p a at its direction vartheta. A
    neuron outside a box or ball domain is refused. Collective.
    """
    from flowfem.activations import activation as _activation

    mesh, V, comm = H.space.mesh, H.V, H.space.comm
    sigma = _activation(activation if activation is not None else network.activation)
    if network.activation.name != sigma.name:
        raise ValueError(f"the network uses {network.activation.name} but the problem {sigma.name}; "
                         "project a network with the problem's activation")
    gdim = H.space.gdim
    theta = np.column_stack([network.W, network.b])
    check_parameter_dim(network.input_dim, gdim, "the network")
    a = network.a.astype(float).copy()
    manifold = H.space.homogeneous_only
    if manifold:
        r = np.linalg.norm(theta, axis=1)
        keep = r > 0
        theta, a = theta[keep] / r[keep, None], a[keep] * r[keep] ** sigma.degree
    tdim = mesh.topology.dim
    ncells = mesh.topology.index_map(tdim).size_local
    cells = np.arange(ncells, dtype=np.int32)
    points = np.zeros((len(theta), 3))
    points[:, :gdim] = theta
    # each rank finds its nearest owned cell; the nearest over all ranks (lowest rank on ties) takes the neuron
    if len(points) and ncells:
        tree = dolfinx.geometry.bb_tree(mesh, tdim, entities=cells)
        mid = dolfinx.geometry.create_midpoint_tree(mesh, tdim, cells)
        closest = dolfinx.geometry.compute_closest_entity(tree, mid, mesh, points)
        dist = np.sqrt(dolfinx.geometry.squared_distance(mesh, tdim, closest, points))
        dist[closest < 0] = np.inf
    else:
        closest, dist = np.full(len(points), -1, np.int32), np.full(len(points), np.inf)
    best = np.empty_like(dist)
    comm.Allreduce(dist, best, op=MPI.MIN)
    owner = np.where(dist == best, comm.rank, comm.size)
    owners = np.empty_like(owner)
    comm.Allreduce(owner, owners, op=MPI.MIN)
    h = _cell_size(mesh)
    tol = 0.25 * h if manifold else 1e-8 * max(1.0, float(np.abs(theta).max(initial=1.0)))
    far = np.flatnonzero(best > tol)
    if len(far):
        i = int(far[0])
        raise ValueError(
            f"{len(far)} of the network's {len(points)} neurons lie outside the parameter domain (first: "
            f"neuron {i} at theta = {np.round(theta[i], 4).tolist()}, {best[i]:.3g} away); enlarge --radius "
            "or use a domain that contains them")
    mine = np.flatnonzero(owners == comm.rank)
    b = H.function("rhs")
    cmap = mesh.geometry.cmaps[0]
    geom = mesh.geometry.x[:, :gdim]
    gdofs = mesh.geometry.dofmaps[0]
    element = V.element.basix_element
    contrib = np.zeros(b.x.array.size)
    for i in mine:
        c = int(closest[i])
        X = cmap.pull_back(points[i:i + 1, :gdim], geom[gdofs[c]], tol=1e-12, maxit=50)
        X = _clip_reference(X, mesh.topology.cell_type.name)
        phi = element.tabulate(0, X)[0, 0, :, 0]
        np.add.at(contrib, V.dofmap.cell_dofs(c), a[i] * phi)
    b.x.array[:] = contrib
    b.x.scatter_reverse(dolfinx.la.InsertMode.add)
    # solve the unweighted mass system integral u v = b
    u_, v_ = ufl.TrialFunction(V), ufl.TestFunction(V)
    M1 = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(u_ * v_ * ufl.dx))
    M1.assemble()
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(M1)
    ksp.setType("cg")
    ksp.getPC().setType("jacobi")
    ksp.setTolerances(rtol=1e-14, atol=0.0, max_it=5000)
    u = H.function("u0")
    rhs = b.x.petsc_vec
    ksp.solve(rhs, u.x.petsc_vec)
    u.x.scatter_forward()
    ksp.destroy()
    M1.destroy()
    return u


def _cell_size(mesh) -> float:
    tdim = mesh.topology.dim
    n = mesh.topology.index_map(tdim).size_local
    h = mesh.h(tdim, np.arange(n, dtype=np.int32)) if n else np.zeros(1)
    return mesh.comm.allreduce(float(h.max(initial=0.0)), op=MPI.MAX)


def _clip_reference(X: np.ndarray, cell: str) -> np.ndarray:
    """Move reference coordinates that round-off (or a curved manifold) put outside the cell onto it."""
    X = np.clip(X, 0.0, 1.0)
    if cell in ("triangle", "tetrahedron"):
        s = X.sum(axis=1, keepdims=True)
        X = np.where(s > 1.0, X / s, X)
    return X


def initial_density(H: WeightedH1, spec: str = "zero", activation=None) -> dolfinx.fem.Function:
    """u0 from a spec: ``zero``, ``gaussian[:S[:A]]``, ``density:PATH`` (a density.npz on this mesh) or
    ``network:PATH`` (a network .npz, projected); a bare PATH is read as whichever of the two it is."""
    spec = str(spec).strip()
    kind, _, arg = spec.partition(":")
    kind_l = kind.lower()
    comm = H.space.comm
    if kind_l == "zero":
        return H.function("u0")
    if kind_l == "gaussian":
        parts = [p for p in arg.split(":") if p] if arg else []
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"initial density {spec!r}: write gaussian, gaussian:S or gaussian:S:A") from None
        if len(values) > 2:
            raise ValueError(f"initial density {spec!r}: write gaussian, gaussian:S or gaussian:S:A")
        return gaussian(H, *values)
    if kind_l in ("density", "network"):
        path = arg
    else:
        path, kind_l = spec, None
    if not on_root(comm, lambda: os.path.exists(path)):
        raise ValueError(f"initial density {spec!r}: no file {path!r}; use zero, gaussian[:S[:A]], "
                         "density:PATH or network:PATH")
    if kind_l is None:
        def sniff():
            try:
                with np.load(path, allow_pickle=False) as f:
                    keys = set(f.files)
            except Exception as e:  # noqa: BLE001  (any unreadable file)
                raise ValueError(f"cannot read the initial density {path!r} ({e})") from None
            if {"theta", "u"} <= keys:
                return "density"
            if {"W", "b", "a"} <= keys:
                return "network"
            raise ValueError(f"{path!r} is neither a density (theta, u) nor a network (W, b, a)")

        kind_l = on_root(comm, sniff) if not os.path.isdir(path) else "density"
    if kind_l == "density":
        return density_from_file(H, path)
    from flowfem.network import Network

    def read():  # broadcast plain arrays: an Activation holds lambdas, which do not pickle
        net = Network.load(path)
        return net.W, net.b, net.a, net.activation.name

    W, b, a, name = on_root(comm, read)
    return project_network(H, Network(W, b, a, name), activation)


# -- output -----------------------------------------------------------------------------------


class TrajectoryWriter:
    """The density over time as a VTX (ADIOS2) series for ParaView, one frame every ``every`` steps (collective)."""

    def __init__(self, path: str, H: WeightedH1, every: int = 1):
        if every < 1:
            raise ValueError(f"write every {every} steps: give a positive number")
        self.every = int(every)
        self.u = H.function("density")
        self.writer = dolfinx.io.VTXWriter(H.space.comm, path, [self.u], engine="BP4")
        self.frames = 0

    def write(self, t: float, U: PETSc.Vec) -> None:
        self.u.x.petsc_vec.array[:] = U.array_r
        self.u.x.scatter_forward()
        self.writer.write(t)
        self.frames += 1

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


LOG_COLUMNS = ("step", "t", "tau", "energy", "loss", "regulariser", "gap", "error", "newton_iterations",
               "linear_iterations", "rejections", "seconds")


def write_log(directory: str, result: FlowResult, comm: MPI.Comm, extra: dict | None = None) -> None:
    """energy.csv (one row per step) and energy.json (the same, with the run's settings); rank 0 writes."""
    if comm.rank != 0:
        return
    with open(os.path.join(directory, "energy.csv"), "w") as f:
        f.write(",".join(LOG_COLUMNS) + "\n")
        for r in result.log:
            f.write(",".join(repr(int(r[k])) if k in ("step", "newton_iterations", "linear_iterations", "rejections")
                             else repr(float(r[k])) for k in LOG_COLUMNS) + "\n")
    doc = dict(metric=result.metric, scheme=result.scheme, lam=result.lam, energy_star=result.energy_star,
               stopped=result.stopped, steps=result.log, **(extra or {}))
    with open(os.path.join(directory, "energy.json"), "w") as f:
        json.dump(_jsonable(doc), f, indent=1)
        f.write("\n")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def energy_figure(path: str, result: FlowResult, title: str = "") -> None:
    """E(t) - E* on a log scale with the theoretical exp(-2 lambda t) (E(0) - E*), and the error (call on one rank)."""
    from flowfem.plot import _pyplot

    plt = _pyplot()
    t, E = result.times, result.energies
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    lam = result.lam
    if result.energy_star is not None:
        gap = E - result.energy_star
        pos = gap > 0
        ax.semilogy(t[pos], gap[pos], "o-", ms=3, label=r"$E_\alpha(u(t)) - E_\alpha(u^*)$")
        tt = np.linspace(0, t.max() if t.max() > 0 else 1.0, 400)
        ax.semilogy(tt, gap[0] * np.exp(-2 * lam * tt), "k--", lw=1,
                    label=rf"$e^{{-2\lambda t}}(E(0) - E^*)$, $\lambda$ = {lam:.3g}")
        floor = max(gap[pos].min() if pos.any() else 1e-300, 1e-300)
        ax.set_ylim(bottom=0.1 * floor, top=10 * max(gap[0], floor))
        ax.set_ylabel("energy gap")
    else:
        ax.semilogy(t, E, "o-", ms=3, label=r"$E_\alpha(u(t))$")
        ax.set_ylabel(r"$E_\alpha$")
    ax.set_xlabel("t")
    ax.legend()
    ax.set_title(f"{result.scheme}, {result.metric} metric" + (f": {title}" if title else ""))
    ax = axes[1]
    err = result.errors
    if np.isfinite(err).any():
        ok = np.isfinite(err) & (err > 0)
        ax.semilogy(t[ok], err[ok], "o-", ms=3, label=r"$\|u - u^*\|_G / \|u^*\|_G$")
        tt = np.linspace(0, t.max() if t.max() > 0 else 1.0, 400)
        ax.semilogy(tt, err[0] * np.exp(-lam * tt), "k--", lw=1, label=r"$e^{-\lambda t}$ bound")
        ax.set_ylim(bottom=0.1 * err[ok].min(), top=10 * err[0])
        ax.legend()
    ax.set_xlabel("t")
    ax.set_title("distance to the stationary density")
    if t.max() > 0 and t[1:].min(initial=np.inf) > 0 and t.max() / t[1:].min() > 1e3:
        for a in axes:  # geometric steps: show the decades
            a.set_xscale("symlog", linthresh=t[1:].min())
            a.set_xlim(left=0.0, right=1.5 * t.max())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- checkpoints ----------------------------------------------------------------------------


class CheckpointError(CollectiveError):
    """A checkpoint that cannot be resumed from (missing, partial, corrupt or for another problem)."""


def fingerprint(flow: Flow, **extra) -> dict:
    """What must agree between a checkpoint and the run resuming from it."""
    E, H = flow.E, flow.E.H
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(E.Phi.x).tobytes())
    digest.update(np.ascontiguousarray(E.y).tobytes())
    fp = dict(ndofs=H.ndofs, cells=H.space.num_cells, domain=H.space.domain, degree=H.degree,
              weight=str(H.weight), kappa=H.kappa, alpha=E.alpha, loss=E.loss.name,
              activation=E.Phi.sigma.name, quadrature_degree=E.Phi.quadrature.degree, n=E.n,
              data_sha256=digest.hexdigest(), metric=flow.metric, scheme=flow.scheme.label)
    fp.update(extra)
    return fp


def _checksum(theta: np.ndarray, values: np.ndarray, manifest: str) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(theta, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    h.update(manifest.encode())
    return h.hexdigest()


class Checkpoints:
    """Checkpoints of a run in ``directory``: ``step-00000012.npz`` every ``every`` steps (the last ``keep``).

    Each file holds the dof coordinates and values of U in a rank-count
    independent order (sorted by coordinates), a JSON manifest (step, t, next
    tau, the energy log, the problem's fingerprint) and the sha256 of all of
    it. It is written by rank 0 under a hidden temporary name, flushed to
    disk and renamed (atomic), so a run killed mid-write leaves the previous
    checkpoint intact. ``pause`` (seconds, or the environment variable
    FLOWFEM_CHECKPOINT_PAUSE) sleeps between writing and renaming: a testing
    aid to kill a run mid-write.
    """

    def __init__(self, directory: str, every: int, fingerprint: dict, comm: MPI.Comm = MPI.COMM_WORLD,
                 keep: int = 2, pause: float | None = None):
        if every < 1:
            raise ValueError(f"--checkpoint-every {every}: give a positive number of steps")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every, self.fingerprint, self.comm, self.keep = int(every), dict(fingerprint), comm, max(1, keep)
        self.pause = float(os.environ.get("FLOWFEM_CHECKPOINT_PAUSE", 0.0)) if pause is None else pause
        self.written: list[str] = []
        on_root(comm, lambda: os.makedirs(self.directory, exist_ok=True))

    def save(self, flow: Flow, state: FlowState, U: PETSc.Vec) -> str:
        """Write the checkpoint of ``state`` (collective); returns its path."""
        from flowfem.io import gather_dofs

        u = flow.E.H.function("checkpoint")
        u.x.petsc_vec.array[:] = U.array_r
        u.x.scatter_forward()
        theta, values = gather_dofs(u)
        path = os.path.join(self.directory, f"step-{state.step:08d}.npz")

        def write():
            manifest = json.dumps(dict(version=CHECKPOINT_VERSION, step=state.step, t=state.t, tau=state.tau,
                                       ts_atol=state.ts_atol, restart_every=state.restart_every,
                                       ranks=self.comm.size, fingerprint=self.fingerprint,
                                       log=_jsonable(state.log)))
            digest = _checksum(theta, values, manifest)
            tmp = os.path.join(self.directory, f".step-{state.step:08d}.npz.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, theta=theta, u=values, manifest=np.array(manifest), sha256=np.array(digest))
                f.flush()
                os.fsync(f.fileno())
            if self.pause:
                time.sleep(self.pause)
            os.replace(tmp, path)
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            for old in sorted(_list_checkpoints(self.directory))[:-self.keep]:
                os.remove(os.path.join(self.directory, old))
            return path

        return on_root(self.comm, write)


def _list_checkpoints(directory: str) -> list[str]:
    return [f for f in os.listdir(directory) if f.startswith("step-") and f.endswith(".npz")]


def latest_checkpoint(directory: str) -> str:
    """The newest finished checkpoint file in a directory (temporary files of an interrupted write are ignored)."""
    names = sorted(_list_checkpoints(directory))
    if not names:
        raise CheckpointError(f"no checkpoint in {directory!r}: it holds no step-*.npz file written by "
                              "flowfem flow --checkpoint-every")
    return os.path.join(directory, names[-1])


def read_checkpoint(path: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(manifest, theta, u) of one checkpoint file or the newest in a directory, verified; raises CheckpointError."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        path = latest_checkpoint(path)
    others = sorted(set(_list_checkpoints(os.path.dirname(path))) - {os.path.basename(path)})
    hint = (f"; an older checkpoint is {os.path.join(os.path.dirname(path), others[-1])!r} (pass it to --resume)"
            if others else "; start the run again")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  (zip, CRC, npy header errors all mean: damaged)
        raise CheckpointError(f"checkpoint {path!r} is partial or damaged and cannot be read "
                              f"({type(e).__name__}: {e}){hint}") from None
    if not {"theta", "u", "manifest", "sha256"} <= set(arrays):
        raise CheckpointError(f"checkpoint {path!r} is incomplete: arrays "
                              f"{sorted({'theta', 'u', 'manifest', 'sha256'} - set(arrays))} are missing{hint}")
    manifest_text = str(arrays["manifest"])
    if _checksum(arrays["theta"], arrays["u"], manifest_text) != str(arrays["sha256"]):
        raise CheckpointError(f"checkpoint {path!r} is corrupt: its sha256 checksum does not match its "
                              f"contents{hint}")
    manifest = json.loads(manifest_text)
    if manifest.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {manifest.get('version')}, this flowfem "
                              f"reads version {CHECKPOINT_VERSION}")
    manifest["path"] = path
    return manifest, arrays["theta"], arrays["u"]


def load_checkpoint(path: str, flow: Flow, fingerprint: dict | None = None) -> tuple[FlowState, PETSc.Vec]:
    """The state and density U of a checkpoint, for ``flow.run(U, state=state, ...)`` (collective).

    Refuses (CheckpointError, on every rank) a missing, partial or corrupt
    checkpoint, or one written for a different problem (``fingerprint``).
    U is restored value for value, so a resumed run on the same number of
    ranks repeats the uninterrupted one bit for bit.
    """
    H = flow.E.H
    comm = H.space.comm
    try:
        manifest, theta, values = on_root(comm, lambda: read_checkpoint(path))
    except CollectiveError as e:
        raise CheckpointError(str(e)) from None
    if fingerprint is not None:
        stored = manifest["fingerprint"]
        diff = [k for k in sorted(set(stored) | set(fingerprint)) if k not in ("ranks",)
                and _norm(stored.get(k)) != _norm(fingerprint.get(k))]
        if diff:
            details = "; ".join(f"{k}: checkpoint {stored.get(k)!r}, this run {fingerprint.get(k)!r}" for k in diff)
            raise CheckpointError(f"checkpoint {manifest['path']!r} belongs to a different problem ({details}); "
                                  "resume with the options of the run that wrote it")
    u = H.function("u0")
    fill_by_coordinates(u, theta, values, f"checkpoint {manifest['path']!r}", "it was written for another mesh")
    U = to_vector(u)
    log = manifest["log"]
    for r in log:
        for k, v in r.items():
            if v is None:
                r[k] = float("nan")
    state = FlowState(int(manifest["step"]), float(manifest["t"]), float(manifest["tau"]), log,
                      manifest.get("ts_atol"), manifest.get("restart_every"))
    state.path = manifest["path"]
    state.ranks = manifest.get("ranks")
    return state, U


def _norm(v):
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
