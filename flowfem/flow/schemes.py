"""Time steppers for the gradient flow G dU/dt = -dE_alpha(U): the registry :data:`SCHEMES`.

A scheme is chosen by ``name`` or ``name:PARAMETER`` (:func:`parse_scheme`);
each class states its discrete equation and declares its order. Every
implicit stage is a solve of

    F(U) = s G (U - W) + dE_alpha(U) - g = 0

by :class:`flowfem.stationary.NewtonSolver` (one linear solve of the
correction with s G + K for the squared loss), so all schemes share one
sparse-plus-low-rank solver. For m outputs U is the VecNest of the m dof
vectors (:mod:`flowfem.flow.driver`): the schemes' vector algebra acts
blockwise, and each stage solves the m outputs' systems with one solver.

G is symmetric positive definite and so is K (squared loss) or the Hessian
(convex losses), so G^{-1} d^2E has a real positive spectrum: every scheme
here is stable on it, BDF-k for k <= 6 included (A(a)-stable with a > 0,
which contains the negative real axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

from flowfem.petsc import PETSc  # noqa: E402

from flowfem.arguments import parameterised, read_integer, read_number, unknown  # noqa: E402


@dataclass
class StepStats:
    """What one step did: the step taken, the step proposed next, solver work, rejected attempts."""

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
    """``name`` or ``name:parameter`` -> (class, parameter); ValueError for an unknown name."""
    name, arg = parameterised("time stepper", spec, {k: f"{k}:{c.parameter} or plain {k}" if c.parameter else k
                                                      for k, c in SCHEMES.items()})
    if name not in SCHEMES:
        raise ValueError(unknown("time stepper", spec, sorted(SCHEMES), "(theta:THETA, bdf:ORDER)"))
    return SCHEMES[name], arg


class Scheme:
    """A time stepper. ``order``: the convergence order with fixed steps; ``parameter``: the name of
    the one parameter it takes (``name:PARAMETER``), None if it takes none; ``estimates_error``:
    it returns a local error estimate, so its steps can be chosen by error control."""

    name = ""
    order = 0
    parameter: str | None = None
    estimates_error = False

    def __init__(self, flow, arg: str | None = None):
        if arg is not None and self.parameter is None:
            raise ValueError(f"{self.name}:{arg}: the scheme {self.name} takes no parameter; write {self.name}")
        self.flow = flow
        self.newton = flow.newton_solver()

    @property
    def label(self) -> str:
        return self.name

    def step(self, U: PETSc.Vec, t: float, tau: float, control=None) -> StepStats:
        """Advance U in place from t by tau, or (with an error ``control``) by at most tau."""
        raise NotImplementedError

    def history(self) -> list[tuple[float, PETSc.Vec]]:
        """The earlier states (t_j, U^j), newest first, that the next step uses besides U: empty for
        one-step schemes. Checkpoints store them, so that a resumed run repeats the uninterrupted one."""
        return []

    def set_history(self, entries: list[tuple[float, PETSc.Vec]]) -> None:
        """Start from these earlier states (copied; [] for a fresh start)."""

    def destroy(self) -> None:
        self.newton.destroy()


class _OneStepTheta(Scheme):
    """G (U^{k+1} - U^k) / tau = -theta dE(U^{k+1}) - (1 - theta) dE(U^k).

    Each step is a Newton solve of F(U) = s G (U - U^k) + dE(U) - g = 0 with
    s = 1 / (theta tau) and g = -(1 - theta) / theta dE(U^k).
    """

    theta = 1.0

    def step(self, U, t, tau, control=None):
        anchor = U.copy()
        g = None
        if self.theta < 1.0:
            g = self.flow.gradient(U)
            g.scale(-(1.0 - self.theta) / self.theta)
        info = self.newton.solve(U, shift=1.0 / (self.theta * tau), anchor=anchor, g=g)
        anchor.destroy()
        if g is not None:
            g.destroy()
        return StepStats(tau, tau, info.iterations, int(sum(info.linear_iterations)))


@register
class ImplicitEuler(_OneStepTheta):
    """Implicit Euler, the minimising-movement scheme (order 1, energy-decreasing for every tau):

        G (U^{k+1} - U^k) / tau + dE(U^{k+1}) = 0,
        i.e. U^{k+1} = argmin_U E_alpha(U) + ||U - U^k||_G^2 / (2 tau).

    For the squared loss: (G + tau K) U^{k+1} = G U^k + tau b.
    """

    name = "implicit_euler"
    order = 1
    theta = 1.0


@register
class CrankNicolson(_OneStepTheta):
    """Crank-Nicolson (order 2, A-stable, not L-stable):

        G (U^{k+1} - U^k) / tau = -(dE(U^{k+1}) + dE(U^k)) / 2.
    """

    name = "crank_nicolson"
    order = 2
    theta = 0.5


@register
class Theta(_OneStepTheta):
    """The theta-method, 1/2 <= theta <= 1 (``theta:THETA``, default 1/2; order 2 for theta = 1/2, else 1):

        G (U^{k+1} - U^k) / tau = -theta dE(U^{k+1}) - (1 - theta) dE(U^k).
    """

    name = "theta"
    parameter = "THETA"
    theta = 0.5
    order = 2  # for the default theta = 1/2; 1 for any other theta

    def __init__(self, flow, arg: str | None = None):
        if arg is not None:
            try:
                self.theta = read_number(arg)
            except ValueError:
                raise ValueError(f"theta:{arg}: theta must be a number in [1/2, 1]") from None
        if not 0.5 <= self.theta <= 1.0:
            raise ValueError(f"theta = {self.theta}: the theta-method is A-stable (and the flow's energy "
                             "bounded) only for 1/2 <= theta <= 1")
        self.order = 2 if self.theta == 0.5 else 1
        super().__init__(flow, arg)

    @property
    def label(self) -> str:
        return f"theta:{self.theta:g}"


def lagrange_derivative(nodes: np.ndarray) -> np.ndarray:
    """a_j = l_j'(nodes[0]) for the Lagrange basis l_j on ``nodes`` (distinct times, shape (m,)):
    sum_j a_j u(nodes[j]) = u'(nodes[0]) exactly for polynomials u of degree < m."""
    T = np.asarray(nodes, dtype=float)
    a = np.empty(len(T))
    for j in range(len(T)):
        others = np.delete(T, j)
        if j == 0:
            a[0] = np.sum(1.0 / (T[0] - others))
        else:  # l_j(t) = prod_{i != j} (t - T_i) / (T_j - T_i), and (t - T_0) vanishes at t = T_0
            a[j] = np.prod((T[0] - np.delete(others, 0)) / (T[j] - np.delete(others, 0))) / (T[j] - T[0])
    return a


def lagrange_values(nodes: np.ndarray, t: float) -> np.ndarray:
    """l_j(t) for the Lagrange basis on ``nodes``: the weights of interpolation (extrapolation) at t."""
    T = np.asarray(nodes, dtype=float)
    return np.array([np.prod((t - np.delete(T, j)) / (T[j] - np.delete(T, j))) for j in range(len(T))])


def _combination(weights, vectors, out: PETSc.Vec) -> PETSc.Vec:
    """out = sum_j weights[j] vectors[j]."""
    out.set(0.0)
    out.maxpy([float(w) for w in weights], list(vectors))
    return out


@register
class BDF(Scheme):
    """BDF-k, the backward differentiation formula of order k (``bdf:k``, 1 <= k <= 6, default 2):

        G sum_{j=0}^{k} a_j U^{n+1-j} + dE(U^{n+1}) = 0,   a_j = l_j'(t_{n+1}),

    l_j the Lagrange basis on the times t_{n+1}, t_n, ..., t_{n+1-k}, so the
    sum is the derivative at t_{n+1} of the polynomial through the last k + 1
    states, for any step sizes. With constant steps tau a_j are the classical
    coefficients (k = 2: (3 U^{n+1} - 4 U^n + U^{n-1}) / (2 tau); Hairer &
    Wanner II, section III.1). Each step is a Newton solve with s = a_0 and
    W = -(1/a_0) sum_{j>=1} a_j U^{n+1-j}, started from the extrapolation of
    the kept states.

    Start-up: the first k - 1 steps are one step each of implicit Euler
    extrapolated to order k (Aitken-Neville over 1, 2, ..., k substeps of
    tau / m; Hairer & Wanner II, section IV.9), so the observed order is k
    from the first step: starting at order 1, as PETSc's TSBDF does, gives
    order 2 at most. With error control bdf:1 also starts with one such
    step (of order 2), for its first estimate. The last k states are kept in
    memory and in checkpoints (:meth:`history`), so checkpoints and resumed
    runs never restart the scheme.

    Error estimate (for step control): the difference of the BDF-k and
    BDF-(k+1) derivatives divided by a_0, an estimate of the local error of
    order k + 1 (PETSc TSBDF's); for the start-up steps the difference of the
    last two diagonal entries of the extrapolation table.
    """

    name = "bdf"
    parameter = "ORDER"
    estimates_error = True
    order = 2

    def __init__(self, flow, arg: str | None = None):
        if arg is not None:
            try:
                self.order = read_integer(arg)
            except ValueError:
                raise ValueError(f"bdf:{arg}: the BDF order must be an integer 1..6") from None
        if not 1 <= self.order <= 6:
            raise ValueError(f"bdf:{self.order}: BDF is zero-stable only for orders 1 to 6")
        super().__init__(flow, arg)
        self.kept: list[tuple[float, PETSc.Vec]] = []  # (t_j, U^j) before the current state, newest first

    @property
    def label(self) -> str:
        return f"bdf:{self.order}"

    def history(self):
        return list(self.kept)

    def set_history(self, entries):
        old, self.kept = self.kept, [(float(t), V.copy()) for t, V in entries]
        for _, V in old:
            V.destroy()

    def step(self, U, t, tau, control=None):
        k = self.order
        # error control needs one earlier state for its estimate: then even bdf:1 starts extrapolated
        startup = len(self.kept) < (max(k - 1, 1) if control is not None else k - 1)
        X = U.duplicate()
        rejections = newton_its = linear_its = 0
        while True:
            try:
                if startup:
                    est, order, its = self._extrapolated_euler(U, X, tau, max(k, 2) if control is not None else k)
                else:
                    est, order, its = self._bdf(U, t, X, tau, control is not None)
                newton_its, linear_its = newton_its + its[0], linear_its + its[1]
                accept, next_tau = (True, tau) if control is None else control.propose(tau, control.norm(est, X, U),
                                                                                       order)
                if est is not None:
                    est.destroy()
            except RuntimeError:
                if control is None:
                    raise
                accept, next_tau = False, tau / 4  # a failed solve: retry with a smaller step
            if accept:
                break
            rejections += 1
            if rejections > control.max_rejections:
                raise RuntimeError(f"bdf: {rejections} step rejections in a row at t = {t:.6g} (last tried "
                                   f"tau = {tau:.3g}); loosen ts_rtol or start with a smaller tau")
            tau = next_tau
        if len(self.kept) == k:  # reuse the oldest vector for the new entry
            _, V = self.kept.pop()
            U.copy(V)
        else:
            V = U.copy()
        self.kept.insert(0, (t, V))
        X.copy(U)
        X.destroy()
        return StepStats(tau, next_tau, newton_its, linear_its, rejections)

    def _bdf(self, U, t, X, tau, estimate):
        """X = U^{n+1} of one BDF step; (estimate or None, its order, (Newton, linear) iterations)."""
        k = min(self.order, len(self.kept) + 1)
        states = [U] + [V for _, V in self.kept]
        times = np.array([t] + [s for s, _ in self.kept]) - (t + tau)  # relative to t_{n+1}: exact differences
        nodes = np.concatenate([[0.0], times])
        _combination(lagrange_values(times, 0.0), states, X)  # the predictor: extrapolation of all kept states
        a = lagrange_derivative(nodes[: k + 1])
        W = _combination(-a[1:] / a[0], states[:k], X.duplicate())
        info = self.newton.solve(X, shift=float(a[0]), anchor=W)
        W.destroy()
        est = None
        ke = min(self.order, len(states) - 1)
        if estimate:
            a = np.append(lagrange_derivative(nodes[: ke + 1]), 0.0)
            b = lagrange_derivative(nodes[: ke + 2])
            est = _combination((a - b) / a[0], [X] + states[: ke + 1], X.duplicate())
        return est, ke + 1, (info.iterations, int(sum(info.linear_iterations)))

    def _extrapolated_euler(self, U, X, tau, rows):
        """X = T_rr of the extrapolation table of implicit Euler with 1, ..., rows substeps of tau / m;
        (T_rr - T_r,r-1 or None, its order, (Newton, linear) iterations)."""
        newton_its = linear_its = 0
        previous: list[PETSc.Vec] = []
        anchor = U.duplicate()
        for m in range(1, rows + 1):
            Y = U.copy()
            for _ in range(m):
                Y.copy(anchor)
                info = self.newton.solve(Y, shift=m / tau, anchor=anchor)
                newton_its += info.iterations
                linear_its += int(sum(info.linear_iterations))
            row = [Y]
            for j in range(1, m):  # T_{m,j+1} = T_{m,j} + (T_{m,j} - T_{m-1,j}) / (m / (m - j) - 1)
                T = row[j - 1].copy()
                T.axpy(1.0 / (m / (m - j) - 1.0), row[j - 1])
                T.axpy(-1.0 / (m / (m - j) - 1.0), previous[j - 1])
                row.append(T)
            for V in previous:
                V.destroy()
            previous = row
        anchor.destroy()
        previous[-1].copy(X)
        est = None
        if rows > 1:
            est = previous[-1].copy()
            est.axpy(-1.0, previous[-2])
        for V in previous:
            V.destroy()
        return est, rows, (newton_its, linear_its)

    def destroy(self):
        self.set_history([])
        super().destroy()
