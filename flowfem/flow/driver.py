"""Running the gradient flow: the step policy, the stop rule and the loop (:class:`Flow`).

Steps are either given (:class:`Geometric`: tau, tau g, tau g^2, ... up to
tau_max; g = 1 for constant steps) or chosen by local error control
(:class:`ErrorControl`, for schemes with an error estimate: BDF). A run stops
at t_end, after max_steps, when ||U - U*||_G <= tol ||U*||_G, or when
interrupted (:class:`Interrupt`: Ctrl-C), whichever comes first. Each step
is logged (time, step size, E_alpha and its two parts, the gap to E* and
the distance to U* when the stationary solution is known, solver work);
checkpoints (:mod:`flowfem.flow.checkpoint`) store the state between steps.

Several outputs (y of shape (n, m), squared loss): E_alpha(U_1..U_m) =
sum_k E_k(U_k) (:mod:`flowfem.functional`), so dE_alpha is blockwise and the
flow of the sum in the product metric G (+) ... (+) G is m independent flows,

    G dU_k/dt = -dE_k(U_k) = -(K U_k - b_k),   K = alpha A + Phi^T Phi / n,  b_k = Phi^T y_k / n.

They advance in lock step: the state is a PETSc VecNest of the m dof vectors
(:meth:`Flow.vector`), every scheme runs unchanged on it (its vector
algebra acts blockwise), and each implicit stage solves one system
(s G + K) X_k = B_k per output with ONE linear solver, set up once per shift
s and shared by the m right-hand sides (:class:`OutputsNewton`). The times
t_n and steps are the same for every output; adaptive steps take the
largest of the m outputs' error norms (:class:`ErrorControl`), so that each
output meets the tolerance it would meet alone. The log holds the sums
(energy, loss, regulariser, gap), the largest relative distance to u*_k
(``error``) and, per output, ``energy_outputs`` and ``error_outputs``.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

from flowfem import progress as progress_  # noqa: E402
from flowfem.arguments import at_least, bounded, spell, tolerance, unknown  # noqa: E402
from flowfem.flow.schemes import Scheme, StepStats, parse_scheme  # noqa: E402
from flowfem.functional import Functional  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.petsc_options import parse as parse_options  # noqa: E402
from flowfem.stationary import (NewtonInfo, NewtonSolver, SolveInfo, check_tolerances, newton,  # noqa: E402
                                solve, solve_outputs)

METRICS = ("L2", "H1")


def blocks(V: PETSc.Vec) -> list[PETSc.Vec]:
    """The dof vectors of a flow's state: [V] for one output, the m blocks of a VecNest for m outputs
    (views: changing a block changes V)."""
    return V.getNestSubVecs() if V.getType() == PETSc.Vec.Type.NEST else [V]


class OutputsNewton:
    """The implicit stages of an m-output flow (squared loss): F_k(U_k) = s G (U_k - W_k) + dE_k(U_k) - g_k = 0
    for k = 1..m, each affine with the same Jacobian s G + alpha A + Phi^T Phi / n.

    One :class:`flowfem.stationary.NewtonSolver` (its :class:`~flowfem.stationary.LinearSolver`: the
    GAMG hierarchy, the Nystrom basis or the MUMPS factors for the shift s) solves the m outputs one
    after another: its residual reads the targets through its functional, which is set to output k for
    output k's solve; its operator depends on H, Phi and alpha, which the outputs share, so a step sets
    up the preconditioner once (at most: only when s changes) for all m right-hand sides.
    """

    def __init__(self, newton: NewtonSolver, outputs: list[Functional]):
        self.newton, self.outputs = newton, outputs

    def solve(self, U: PETSc.Vec, shift: float = 0.0, anchor: PETSc.Vec | None = None,
              g: PETSc.Vec | None = None):
        """Solve the m stages in place (U, anchor, g: VecNests of m blocks); returns one NewtonInfo with the
        iterations summed over the outputs, their linear iterations in turn and the largest residual."""
        anchors = blocks(anchor) if anchor is not None else [None] * len(self.outputs)
        gs = blocks(g) if g is not None else [None] * len(self.outputs)
        infos = []
        try:
            for Ek, Uk, Wk, gk in zip(self.outputs, blocks(U), anchors, gs):
                self.newton.E = Ek
                infos.append(self.newton.solve(Uk, shift=shift, anchor=Wk, g=gk))
        finally:
            self.newton.E = None
        return NewtonInfo(infos[0].solver, sum(i.iterations for i in infos), max(i.residual for i in infos),
                          min(i.reason for i in infos), [r for i in infos for r in i.history],
                          all(i.converged for i in infos), infos[0].rank, infos[0].preconditioner,
                          linear_iterations=[n for i in infos for n in i.linear_iterations])

    def destroy(self):
        self.newton.destroy()


def metric_matrix(H: WeightedH1, metric: str) -> PETSc.Mat:
    """G: the weighted mass matrix M (``L2``) or the H^1_omega matrix A (``H1``); ValueError otherwise."""
    key = str(metric).upper()
    if key == "L2":
        return H.M
    if key == "H1":
        return H.A
    raise ValueError(unknown("metric", metric, ("L2", "H1"), "(L2: weighted mass; H1: the Sobolev metric a_omega)"))


@dataclass
class FlowState:
    """Where a run stands after ``step`` steps: time t, the next step size tau, the log so far, the
    absolute error tolerance of adaptive steps (a list of one per output for m outputs), and the
    scheme's earlier states [(t_j, U^j)] (newest first; empty for one-step schemes) as of this step."""

    step: int = 0
    t: float = 0.0
    tau: float = 1.0
    log: list = field(default_factory=list)
    ts_atol: float | list | None = None
    history: list = field(default_factory=list)


@dataclass
class FlowResult:
    """The final density and the energy log of a run (one dict per step, step 0 = initial state).
    For m outputs ``U`` (and ``U_star``) is the VecNest of the m densities, ``Us`` their list, and the
    log's energies are sums over the outputs (see :mod:`flowfem.flow.driver`)."""

    U: PETSc.Vec
    log: list
    lam: float
    metric: str
    scheme: str
    energy_star: float | None = None
    U_star: PETSc.Vec | None = None
    stopped: str = ""
    interrupted: bool = False

    @property
    def Us(self) -> list[PETSc.Vec]:
        """The final dof vectors, one per output."""
        return blocks(self.U)

    @property
    def outputs(self) -> int:
        return len(self.Us)

    def column(self, key: str) -> np.ndarray:
        """A logged quantity at steps 0..steps: shape (steps + 1,), or (steps + 1, m) for the per-output
        columns ``energy_outputs`` and ``error_outputs`` (m outputs only)."""
        return np.array([r[key] for r in self.log], dtype=float)

    @property
    def times(self) -> np.ndarray:
        return self.column("t")

    @property
    def energies(self) -> np.ndarray:
        return self.column("energy")

    @property
    def errors(self) -> np.ndarray:
        """||U_k - U*||_G / ||U*||_G (NaN without a reference; m outputs: the largest over the outputs)."""
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


# -- step policies --------------------------------------------------------------------------


@dataclass
class Geometric:
    """Given steps: tau_{k+1} = min(growth tau_k, tau_max) (growth = 1: constant steps)."""

    growth: float = 1.0
    tau_max: float = math.inf

    def next(self, planned: float, stats: StepStats) -> float:
        return min(planned * self.growth, self.tau_max)


@dataclass
class ErrorControl:
    """Local error control (PETSc TSAdapt ``basic``'s rule). With the weighted RMS norm

        w = sqrt(mean_i (e_i / (atol + rtol max(|u_i|, |v_i|)))^2)

    of a scheme's estimate e of the local error of a step v -> u, the step is
    accepted iff w <= 1, and the next (or retried) step is
    tau min(max(safety w^(-1/p), 0.1), 2) (safety halved after a
    rejection), p the estimate's order, capped at tau_max.

    m outputs (a VecNest state, ``atol`` one per output): w = max_k w_k over
    the outputs' norms, each with its own atol_k. The step is then the one
    the most demanding output would take alone, so every output meets the
    tolerance it meets in a single-output run; a norm over all m ndofs
    entries (or a rule on the summed energy) would let an output of small
    amplitude, whose error is drowned by the others', take steps too large
    for it.
    """

    rtol: float
    atol: float | list
    tau_max: float = math.inf
    safety: float = 0.9
    reject_safety: float = 0.5
    clip: tuple = (0.1, 2.0)
    max_rejections: int = 10

    def norm(self, e: PETSc.Vec, u: PETSc.Vec, v: PETSc.Vec) -> float:
        """w of the estimate e of a step v -> u (m outputs: the largest of the m blocks' w_k)."""
        es, us, vs = blocks(e), blocks(u), blocks(v)
        atols = self.atol if isinstance(self.atol, (list, tuple)) else [self.atol] * len(es)
        local = np.empty(2 * len(es))
        for k, (ek, uk, vk) in enumerate(zip(es, us, vs)):
            scale = atols[k] + self.rtol * np.maximum(np.abs(uk.array_r), np.abs(vk.array_r))
            local[2 * k: 2 * k + 2] = np.sum((ek.array_r / scale) ** 2), ek.getLocalSize()
        total = e.getComm().tompi4py().allreduce(local, op=MPI.SUM)
        return float(np.sqrt(np.max(total[0::2] / total[1::2])))

    def propose(self, tau: float, w: float, order: int) -> tuple[bool, float]:
        """(accept, next step size) for an error norm w of an estimate of order p."""
        accept = w <= 1.0
        safety = self.safety * (1.0 if accept else self.reject_safety)
        factor = safety * w ** (-1.0 / order) if w > 0 else self.clip[1]
        return accept, min(tau * min(max(factor, self.clip[0]), self.clip[1]), self.tau_max)

    def next(self, planned: float, stats: StepStats) -> float:
        return stats.next_tau


class Interrupt:
    """Ctrl-C (SIGINT) as a request to stop between steps: pass it to :meth:`Flow.run` as ``stop``.

    Inside ``with Interrupt() as stop:`` the first SIGINT only sets a flag,
    which the run checks after each step on every rank together (so all ranks
    stop at the same step, and a checkpoint write in progress finishes); a
    second SIGINT raises KeyboardInterrupt at once. Outside the main thread it
    installs nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.requested


# -- the flow -------------------------------------------------------------------------------


def check_steps(tau: float, growth: float, tau_max: float, max_steps: int, tol: float | None) -> None:
    """ValueError unless the step arguments of :meth:`Flow.run` are in range: tau a finite number > 0 (the
    first step), growth a finite number >= 1, tau_max a number > 0 (inf: no limit), max_steps an integer
    >= 1 and tol None or a number with 0 < tol < 1, each named as its caller wrote it (``flowfem flow`` checks
    them with this before any work: --tau, --growth, ...)."""
    bounded("tau", tau, 0, strict=True, meaning="the first time step")
    bounded("growth", growth, 1, meaning="the step growth factor; 1: constant steps")
    bounded("tau_max", tau_max, 0, strict=True, finite=False, meaning="the largest time step; inf: no limit")
    at_least("max_steps", max_steps, 1)  # 0 or fewer: the run would be its initial density
    if tol is not None:  # 0 or less: no step reaches it; 1 or more (inf): the zero density, u0 = 0, meets it
        tolerance("tol", tol, "1e-6", meaning="the relative distance ||u - u*|| / ||u*|| to stop at")


class Flow:
    """The gradient flow G dU/dt = -dE_alpha(U) for a functional E, a metric and a time stepper.

    ``solver`` (cg | direct) configures the linear solves of every step, which
    stop (cg) at ||r|| <= max(step_rtol ||rhs||, rtol ||dE_alpha(0)||): each
    step reduces its own residual by ``step_rtol``, down to the floor
    ``rtol`` ||dE_alpha(0)|| (for the squared loss ||dE_alpha(0)|| =
    ||Phi^T y / n||, the stationary right-hand side), which also is the
    tolerance of :meth:`stationary`. The floor is relative to the data, not
    to the step: late residuals lie in the slow modes, where a residual
    costs more error than in a stationary solve, hence the default 1e-12.
    The Newton tolerances ``newton_rtol`` (relative to the first residual)
    and ``newton_atol`` apply to nonlinear losses. ``petsc_options`` keys
    starting with ``snes_`` go to Newton (SNES), the rest to the linear
    solver; ``ts_*`` keys are refused (there is no PETSc TS).

    ``adapt``: choose the steps by :class:`ErrorControl` (default for schemes
    with an error estimate, i.e. BDF) or take the given ones
    (:class:`Geometric`; ``adapt=False``). ``ts_rtol`` / ``ts_atol`` are the
    error control's tolerances (``ts_atol`` defaults to ts_rtol times the
    largest |U| of the stationary or else the initial density, fixed when a
    run starts). With ``pc_shift_factor`` f the preconditioner of the steps'
    systems s G + K is rebuilt only when the shift crosses a power of f (see
    :class:`flowfem.stationary.LinearSolver`); ``preconditioner`` is cg's
    (``nystrom``, default, or ``gamg``: :mod:`flowfem.nystrom`).

    m outputs (E of y (n, m)): the state is a VecNest of m dof vectors
    (:meth:`vector`, :meth:`as_state`), stepped in lock step as described in
    :mod:`flowfem.flow.driver`. The linear floor is rtol min_k ||dE_k(0)||
    (over the outputs with nonzero data), so that every output's solves are
    at least as accurate as in its own single-output flow; ``ts_atol``
    defaults to one value per output (ts_rtol max |U_k| of its stationary
    or initial density).
    """

    def __init__(self, E: Functional, metric: str = "L2", scheme: str = "implicit_euler", solver: str = "cg",
                 rtol: float = 1e-12, newton_rtol: float = 1e-10, newton_atol: float | None = None,
                 ts_rtol: float = 1e-4, ts_atol: float | None = None, petsc_options: dict | None = None,
                 step_rtol: float = 1e-6, pc_shift_factor: float | None = 4.0, adapt: bool | None = None,
                 preconditioner: str = "nystrom"):
        self.E = E
        self.outputs = [E.output(k) for k in range(E.outputs)]  # the single-output terms E_k of E = sum_k E_k
        self.preconditioner = preconditioner
        self.G = metric_matrix(E.H, metric)  # validates the name
        self.metric = str(metric).upper()
        self.solver, self.rtol, self.step_rtol = solver, check_tolerances(rtol)[0], \
            check_tolerances(step_rtol, name="step_rtol")[0]
        self.pc_shift_factor = pc_shift_factor
        self.newton_rtol = check_tolerances(newton_rtol, name="newton_rtol")[0]
        opts = {str(k).lstrip("-"): v for k, v in parse_options(petsc_options or {}).items()}
        for key in opts:
            if key.startswith("ts_"):
                raise ValueError(f"PETSc option {key}: the flow's time steps are flowfem's own, not a PETSc TS; "
                                 "give fixed steps with adapt=False (flowfem flow --fixed-steps) and the error "
                                 "tolerance with ts_rtol (--ts-rtol)")
        self.snes_options = {k: v for k, v in opts.items() if k.startswith("snes_")}
        self.linear_options = {k: v for k, v in opts.items() if not k.startswith("snes_")}
        cls, arg = parse_scheme(scheme)
        self.adapt = cls.estimates_error if adapt is None else bool(adapt)
        if self.adapt and not cls.estimates_error:
            raise ValueError(f"{scheme}: adaptive steps need a scheme with an error estimate (bdf[:ORDER])")
        ts_rtol = tolerance("ts_rtol", ts_rtol, "1e-4")  # the local error tolerance of adaptive steps
        scales = []
        for Ek in self.outputs:
            g0 = Ek.gradient(Ek.vector())
            scales.append(g0.norm())
            g0.destroy()
        # ||dE_alpha(0)||; m outputs: the smallest nonzero ||dE_k(0)||, every output's own floor or below
        self.gradient_scale = max(min([v for v in scales if v > 0], default=0.0), 1e-300)
        if newton_atol is None:  # steps near the stationary state start from a tiny residual: the linear floor
            newton_atol = self.rtol * self.gradient_scale
        self.newton_atol = float(newton_atol)
        self.ts_rtol, self.ts_atol_given = float(ts_rtol), ts_atol
        self.ts_atol = float(ts_atol) if ts_atol is not None else float(ts_rtol)
        self._scheme_cls, self._scheme_arg = cls, arg
        self._scheme = None
        self.scheme  # noqa: B018  (parse the scheme's parameter now: bad input fails here)
        self.U_star: PETSc.Vec | None = None
        self.energy_star: float | None = None
        self.stationary_info = None
        self.state: FlowState | None = None

    @property
    def lam(self) -> float:
        """The contraction rate guaranteed in both metrics: lambda = alpha."""
        return self.E.lam

    @property
    def scheme(self) -> Scheme:
        if self._scheme is None:
            self._scheme = self._scheme_cls(self, self._scheme_arg)
        return self._scheme

    def newton_solver(self) -> NewtonSolver | OutputsNewton:
        """A Newton solver for the implicit stages F(U) = s G (U - W) + dE(U) - g = 0 (m outputs: one
        :class:`OutputsNewton` for the m blocks, with one linear solver)."""
        opts = dict(self.linear_options, **self.snes_options)
        newton = NewtonSolver(self.E, self.solver, self.newton_rtol, self.newton_atol, 50, self.step_rtol,
                              G=self.G, petsc_options=opts, linear_atol=self.linear_atol,
                              pc_shift_factor=self.pc_shift_factor, preconditioner=self.preconditioner)
        return newton if len(self.outputs) == 1 else OutputsNewton(newton, self.outputs)

    def vector(self) -> PETSc.Vec:
        """A zero state: a dof vector (one output) or a VecNest of m dof vectors (m outputs)."""
        if len(self.outputs) == 1:
            return self.E.vector()
        return self._nest([Ek.vector() for Ek in self.outputs])

    def _nest(self, Us: list) -> PETSc.Vec:
        return PETSc.Vec().createNest(list(Us), comm=self.E.H.space.comm)

    def as_state(self, U) -> PETSc.Vec:
        """The state of a run from U: a dof vector for one output; for m outputs a list of m dof vectors,
        one per output (wrapped in a VecNest that shares them: a run changes them in place), or such a
        VecNest. ValueError for another number of vectors."""
        m = len(self.outputs)
        if isinstance(U, (list, tuple)):
            if len(U) != m:
                raise ValueError(f"{len(U)} initial densities for a flow of {m} output(s): give one per output")
            return U[0] if m == 1 else self._nest(U)
        if len(blocks(U)) != m:
            raise ValueError(f"a flow of {m} outputs evolves {m} densities: give U as a list of {m} dof vectors "
                             "(e.g. [U0.copy() for _ in range(m)]) or flow.vector()")
        return U

    def gradient(self, U: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """dE_alpha(U), blockwise over the outputs for a VecNest state."""
        out = U.duplicate() if out is None else out
        for Ek, Uk, gk in zip(self.outputs, blocks(U), blocks(out)):
            Ek.gradient(Uk, gk)
        return out

    @property
    def linear_atol(self) -> float:
        """The absolute floor of every step's linear solves: rtol ||dE_alpha(0)||."""
        return self.rtol * self.gradient_scale

    def norm(self, V: PETSc.Vec) -> float:
        """||V||_G: the L^2_omega or the H^1_omega norm (:class:`flowfem.sobolev.WeightedH1`) of a dof
        vector (one block of an m-output state)."""
        return self.E.H.l2_norm(V) if self.metric == "L2" else self.E.H.norm(V)

    def stationary(self, progress: bool = False) -> PETSc.Vec:
        """U*, the minimiser (one linear solve, or Newton for a nonlinear loss); kept as the reference.
        ``progress``: a bar of its CG iterations (Newton steps), see :mod:`flowfem.progress`."""
        if self.U_star is None:
            if len(self.outputs) > 1:  # m right-hand sides, one linear solver; info: the outputs' in turn
                Us, info = solve_outputs(self.E, self.solver, self.rtol, self.linear_options or None,
                                         progress=progress, preconditioner=self.preconditioner)
                U = self._nest(Us)
                info = SolveInfo(info[0].solver, sum(i.iterations for i in info), max(i.residual for i in info),
                                 rank=info[0].rank, preconditioner=info[0].preconditioner)
            elif self.E.loss.quadratic:
                U, info = solve(self.E, self.solver, self.rtol, self.linear_options or None, progress=progress,
                                preconditioner=self.preconditioner)
            else:
                U, info = newton(self.E, None, self.solver, rtol=min(self.newton_rtol, 1e-12),
                                 linear_rtol=self.rtol, petsc_options=self.linear_options or None,
                                 progress=progress, preconditioner=self.preconditioner)
            self.U_star, self.stationary_info = U, info
            self.energy_star = self.energy(U)
        return self.U_star

    def set_reference(self, U_star) -> None:
        """Use a known stationary solution U* for the error column and the energy gap (m outputs: a list
        of m dof vectors or their VecNest, see :meth:`as_state`)."""
        self.U_star = self.as_state(U_star)
        self.energy_star = self.energy(self.U_star)

    def energy(self, U: PETSc.Vec) -> float:
        """E_alpha(U), summed over the outputs."""
        return sum(sum(Ek.parts(Uk)) for Ek, Uk in zip(self.outputs, blocks(U)))

    def record(self, U: PETSc.Vec, step: int, t: float, tau: float, stats: StepStats | None,
               seconds: float) -> dict:
        """One row of the energy log (m outputs: sums, the largest relative error, and per output
        ``energy_outputs``, ``error_outputs``)."""
        parts, errors = [], []
        stars = blocks(self.U_star) if self.U_star is not None else [None] * len(self.outputs)
        for Ek, Uk, Sk in zip(self.outputs, blocks(U), stars):
            parts.append(Ek.parts(Uk))
            error = float("nan")
            if Sk is not None:
                D = Uk.copy()
                D.axpy(-1.0, Sk)
                ref = self.norm(Sk)
                error = self.norm(D) / ref if ref > 0 else self.norm(D)
                D.destroy()
            errors.append(error)
        loss, reg = (parts[0] if len(parts) == 1 else
                     (sum(p[0] for p in parts), sum(p[1] for p in parts)))
        gap = loss + reg - self.energy_star if self.energy_star is not None else float("nan")
        rec = dict(step=step, t=t, tau=tau, energy=loss + reg, loss=loss, regulariser=reg, gap=gap,
                   error=max(errors), newton_iterations=stats.newton_iterations if stats else 0,
                   linear_iterations=stats.linear_iterations if stats else 0,
                   rejections=stats.rejections if stats else 0, seconds=seconds)
        if len(parts) > 1:
            rec.update(energy_outputs=[float(a + b) for a, b in parts], error_outputs=errors)
        return rec

    def _stop(self, state: FlowState, t_end: float, max_steps: int, tol: float | None, stop) -> str:
        """Why the run ends before the next step ("" if it goes on); collective."""
        last = state.log[-1]
        if tol is not None and last["error"] <= tol:
            return f"||u - u*|| / ||u*|| = {last['error']:.2e} <= tol = {tol:g}"
        if state.t >= t_end:
            return f"t = t_end = {t_end:g}"
        if state.step >= max_steps:
            return f"max_steps = {max_steps} steps"
        if not math.isfinite(state.t + state.tau):  # growing steps overflowed: a step of tau = inf is the stationary solve
            return (f"the next step overflows (t = {state.t:.6g}, tau = {state.tau:.3g}): the steps have reached the "
                    "stationary solve" + (f" without ||u - u*|| / ||u*|| <= tol = {tol:g}, which is below what the "
                                          "linear solver attains (lower rtol or raise tol)" if tol is not None else ""))
        if stop is not None and self.E.H.space.comm.allreduce(bool(stop()), op=MPI.LOR):
            return f"interrupted at step {state.step}, t = {state.t:.6g}"
        return ""

    @staticmethod
    def _show(bar, state: FlowState, rec: dict, t_end: float, max_steps: int, tol: float | None) -> None:
        """Advance the progress bar to the fraction of the run done (see :meth:`run`)."""
        fractions = [state.t / t_end if np.isfinite(t_end) else 0.0, state.step / max_steps]
        e0 = state.log[0]["error"]
        if tol is not None and rec["error"] > 0 and e0 > tol:
            fractions.append(np.log(e0 / rec["error"]) / np.log(e0 / tol))
        fraction = min(max(max(fractions), 0.0), 1.0)
        bar.set_postfix_str(f"step {state.step}, t {state.t:.3g}, E {rec['energy']:.6e}"
                            + (f", err {rec['error']:.1e}" if np.isfinite(rec["error"]) else ""), refresh=False)
        bar.update(fraction - bar.n)

    def run(self, U: PETSc.Vec, t_end: float = math.inf, tau: float = 1.0, growth: float = 1.0,
            tau_max: float = math.inf, max_steps: int = 10**6, tol: float | None = None,
            state: FlowState | None = None, checkpoints=None, writer=None, progress: bool = False,
            callback=None, stop=None) -> FlowResult:
        """Flow from U (modified in place; m outputs: a list of m dof vectors or their VecNest, see
        :meth:`as_state`) until t_end, max_steps, ||U - U*||_G <= tol ||U*||_G or ``stop()``.

        Steps: tau, then tau * growth, ... up to tau_max, or (``adapt``) as
        the error control proposes starting from tau. ``state`` continues a
        checkpointed run (:func:`flowfem.flow.checkpoint.load_checkpoint`; ValueError if it is
        already past t_end or max_steps: its result would be a density past the end asked for),
        ``checkpoints`` (:class:`flowfem.flow.checkpoint.Checkpoints`) writes
        them, ``writer`` (:class:`flowfem.io.TrajectoryWriter`) the
        trajectory (with checkpoints, each saves the frames written since the
        previous one). ``stop``: a callable (e.g. :class:`Interrupt`) asked after
        every step; when it returns True on any rank the run ends there, with a
        checkpoint if ``checkpoints`` is given, and ``result.interrupted``.
        ``callback(record, U)`` is called after every step on every rank. ``progress``: a bar
        (:mod:`flowfem.progress`) of the fraction of the run done, the larger of t / t_end, steps /
        max_steps and, with ``tol``, log(e_0 / e) / log(e_0 / tol) (e = ||U - U*||_G / ||U*||_G), with
        the step, t, E_alpha and e.
        """
        check_steps(tau, growth, tau_max, max_steps, tol)
        if tol is not None and self.U_star is None:
            raise ValueError("stopping at a tolerance on ||u - u*|| needs the stationary solution: "
                             "call stationary() (or set_reference) first")
        if not (np.isfinite(t_end) or max_steps < 10**6 or tol is not None):
            raise ValueError(f"the flow needs an end: give {spell('t_end', 'T')}, {spell('max_steps', 'N')} with N "
                             f"< 10^6, or {spell('tol', 'TOL')}")
        if state is not None and (state.t > t_end or state.step > max_steps):
            # the run would end where it starts, and its result be the state past the end it was asked for
            # the advice at full precision: %g rounds t down as often as up (0.331 for 0.33100000000000007)
            past, fix = ((f"t_end = {t_end:g}", f"a t_end of {state.t:.17g} or more") if state.t > t_end else
                         (f"max_steps = {max_steps}", f"max_steps {state.step} or more"))
            raise ValueError(f"the resumed state is at step {state.step}, t = {state.t:g}, past {past}: a flow "
                             f"does not run backwards; give {fix}, or resume from an earlier checkpoint")
        U = self.as_state(U)
        if self.ts_atol_given is None:
            if state is not None and state.ts_atol is not None:
                self.ts_atol = state.ts_atol
            else:  # one per output: each output's error is measured on its own scale
                ref = self.U_star if self.U_star is not None else U
                atols = [self.ts_rtol * max(V.norm(PETSc.NormType.INFINITY), 1e-300) for V in blocks(ref)]
                self.ts_atol = atols[0] if len(atols) == 1 else atols
        control = ErrorControl(self.ts_rtol, self.ts_atol, tau_max) if self.adapt else None
        policy = control or Geometric(growth, tau_max)
        scheme = self.scheme
        clock = time.perf_counter()
        if writer is not None and checkpoints is not None:  # its frames go with the checkpoints: a resumed run replays them
            writer.track(-1 if state is None else state.step)
        # the step whose checkpoint exists: a resumed run's own, so that one interrupted before its first step
        # does not write that checkpoint (and its frames file) again, with no frames
        saved = -1 if state is None else state.step
        if state is None:
            state = FlowState(0, 0.0, float(tau), [], self.ts_atol)
            state.log.append(self.record(U, 0, 0.0, 0.0, None, 0.0))
            if writer is not None:
                writer.write(0.0, U, 0)
        scheme.set_history(state.history)
        offset = state.log[-1]["seconds"] if state.log else 0.0
        bar = progress_.bar(progress, total=1.0, desc="flow",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        try:
            while not (stopped := self._stop(state, t_end, max_steps, tol, stop)):
                planned = step_tau = min(state.tau, tau_max)
                final = state.t + step_tau >= t_end * (1 - 1e-12)
                if final:  # land on t_end
                    step_tau = t_end - state.t
                stats = scheme.step(U, state.t, step_tau, control)
                state.t = t_end if final and stats.tau == step_tau else state.t + stats.tau
                state.step += 1
                state.tau = policy.next(planned, stats)
                rec = self.record(U, state.step, state.t, stats.tau, stats, offset + time.perf_counter() - clock)
                state.log.append(rec)
                if writer is not None and state.step % writer.every == 0:
                    writer.write(state.t, U, state.step)
                if checkpoints is not None and checkpoints.due(state.step):
                    checkpoints.save(self, state, U, writer.take(state.step) if writer is not None else None)
                    saved = state.step
                if callback is not None:
                    callback(rec, U)
                if not bar.disable:
                    self._show(bar, state, rec, t_end, max_steps, tol)
        finally:
            bar.close()
        interrupted = stopped.startswith("interrupted")
        if interrupted and checkpoints is not None and saved != state.step:
            # resume exactly where the run stopped
            checkpoints.save(self, state, U, writer.take(state.step) if writer is not None else None)
        if writer is not None and state.step % writer.every != 0:
            writer.write(state.t, U, state.step)
        state.history = [(s, V.copy()) for s, V in scheme.history()]
        self.state = state
        return FlowResult(U, state.log, self.lam, self.metric, scheme.label, self.energy_star, self.U_star, stopped,
                          interrupted)

    def destroy(self):
        if self._scheme is not None:
            self._scheme.destroy()
            self._scheme = None
