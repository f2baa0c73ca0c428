"""The user-facing entry point: a Problem on a Space, fitted to data.

    problem = Problem(Space.box(d=1, n=64, radius=4), activation="relu",
                      weight="gaussian:2", alpha=1e-4, kappa=1.0)
    result = problem.fit(x, y)          # one parallel linear solve
    result.density                      # dolfinx Function u* on the parameter mesh
    result.predict(x_test)              # f_{u*}(x_test), on every rank
    result.energy, result.iterations, result.residual

With ``loss="logistic"`` (labels in {-1, +1}) the Euler-Lagrange equation is
nonlinear and ``fit`` runs Newton's method (PETSc SNES with a line search),
each step one solve with the same linear solver; ``result.info.history``
is the residual ||dE_alpha|| of every Newton iteration.

    flow = problem.flow(x, y, metric="L2", scheme="implicit_euler")
    run = flow.run(U0, tau=1.0, growth=4.0, tol=1e-6)   # see flowfem.flow

``method`` picks how the feature products S g, S^T r of the data operator are
done (all exact; see :mod:`flowfem.operator`): ``auto`` (default: relu1d for
relu on 1-D inputs, relu_tree for relu on more, monomial for z^k, dense
otherwise), or one of them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import dolfinx.fem  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem import data as _data  # noqa: E402
from flowfem.activations import activation as _activation  # noqa: E402
from flowfem.functional import Functional  # noqa: E402
from flowfem.loss import loss as _loss  # noqa: E402
from flowfem.operator import DataOperator  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.space import Space  # noqa: E402
from flowfem.stationary import SolveInfo, newton, solve  # noqa: E402


class Problem:
    """min over u in H^1_omega of E_alpha(u) on the parameter space ``space``."""

    def __init__(self, space: Space, activation: str = "relu", weight: str = "uniform",
                 alpha: float = 1e-4, kappa: float = 1.0, degree: int = 1, loss: str = "squared",
                 quadrature_degree: int | None = None, method: str = "auto"):
        self.activation = _activation(activation)
        if space.homogeneous_only:
            self.activation.require_homogeneous(space.domain)
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha = {alpha} must be positive: it is the convexity constant of E_alpha")
        self.space = space
        self.alpha = float(alpha)
        self.loss = _loss(loss)
        self.H = WeightedH1(space, weight, kappa, degree)
        self.quadrature_degree, self.method = quadrature_degree, method

    def functional(self, x, y) -> Functional:
        """E_alpha for the data (x, y)."""
        x, y = _data.check(x, y, self.space.input_dim)
        Phi = DataOperator(self.H, self.activation, x, self.quadrature_degree, self.method)
        return Functional(self.H, Phi, y, self.alpha, self.loss)

    def fit(self, x, y, solver: str = "cg", rtol: float = 1e-10, petsc_options: dict | None = None) -> "Result":
        """The minimiser of E_alpha on the data (x, y): one linear solve (squared loss), or Newton
        (other losses) stopping at ||dE_alpha(U)|| <= rtol ||dE_alpha(0)||, the linear solves inside
        to rtol as well (``petsc_options`` starting with snes_ go to the SNES)."""
        E = self.functional(x, y)
        if E.loss.quadratic:
            U, info = solve(E, solver, rtol, petsc_options)
        else:
            U, info = newton(E, None, solver, rtol=rtol, linear_rtol=rtol, petsc_options=petsc_options)
        return Result(self, E, U, info)

    def flow(self, x, y, metric: str = "L2", scheme: str = "implicit_euler", solver: str = "cg",
             rtol: float = 1e-10, petsc_options: dict | None = None, **kwargs):
        """The gradient flow of E_alpha on the data (x, y): a :class:`flowfem.flow.Flow`."""
        from flowfem.flow import Flow

        return Flow(self.functional(x, y), metric, scheme, solver, rtol, petsc_options=petsc_options, **kwargs)


@dataclass
class Result:
    """The optimal density and how it was found."""

    problem: Problem
    functional: Functional
    U: PETSc.Vec
    info: SolveInfo

    @property
    def density(self) -> dolfinx.fem.Function:
        """u* as a dolfinx Function (ghost values updated)."""
        u = self.problem.H.function("density")
        u.x.array[: self.U.getLocalSize()] = self.U.array_r  # no PETSc vector on u: see flowfem/compare.py
        u.x.scatter_forward()
        return u

    @property
    def energy(self) -> float:
        """E_alpha(u*)."""
        return self.functional(self.U)

    @property
    def parts(self) -> tuple[float, float]:
        """(data term, regulariser) of E_alpha(u*)."""
        return self.functional.parts(self.U)

    @property
    def iterations(self) -> int:
        return self.info.iterations

    @property
    def residual(self) -> float:
        """Final relative residual ||b - K U|| / ||b|| of the linear system."""
        return self.info.residual

    def predict(self, x) -> np.ndarray:
        """f_{u*}(x) at the rows of x (m, d), returned on every rank."""
        x, _ = _data.check(x, None, self.problem.space.input_dim, what="prediction inputs")
        return self.functional.Phi.predict(self.U, x)

    def rmse(self, x, y) -> float:
        """Root mean square error of f_{u*} on (x, y)."""
        return float(np.sqrt(np.mean((self.predict(x) - np.asarray(y, dtype=float)) ** 2)))
