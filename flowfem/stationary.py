"""The Euler-Lagrange equation of E_alpha: its minimiser in one linear solve.

For the squared loss dE_alpha(U) = 0 is linear:

    (alpha A + Phi^T Phi / n) U = Phi^T y / n.

The system matrix is a sparse matrix plus a low-rank data term and is never
formed. Two solvers of K(D) X = B with K(D) = alpha A + Phi^T D Phi / n
(D a diagonal data weight; D = 1 here, l'' for Newton steps):

* ``cg``: PETSc CG on the matrix-free K(D), preconditioned by two V-cycles
  of algebraic multigrid (GAMG) on alpha A. The data term has a fast-decaying
  spectrum relative to alpha A, so the iterations are bounded under mesh
  refinement (with an exact (alpha A)^{-1} they are constant; GAMG adds a
  slow growth, which the second V-cycle halves).
* ``direct``: exact, for small problems. MUMPS factorises alpha A once and
  the low-rank term is handled by the Woodbury identity
  K^{-1} = (alpha A)^{-1} - (alpha A)^{-1} C (n D^{-1} + C^T (alpha A)^{-1} C)^{-1} C^T (alpha A)^{-1},
  C = Phi^T (ndofs x n, stored as owned rows on each rank).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem.functional import Functional  # noqa: E402

SOLVERS = ("cg", "direct")
DIRECT_LIMIT = 5 * 10**7  # largest n * ndofs the direct solver accepts
_prefix = itertools.count()


@dataclass
class SolveInfo:
    """How a linear solve went: solver, iterations, true relative residual ||B - K X|| / ||B||."""

    solver: str
    iterations: int
    residual: float
    reason: int = 0
    history: list = field(default_factory=list)


class _NormalOperator:
    """Context of the PETSc shell matrix K(D) = alpha A + Phi^T D Phi / n."""

    def __init__(self, E: Functional, D: np.ndarray):
        self.E, self.D = E, D
        self.tmp = E.vector()

    def mult(self, mat, x, y):
        E = self.E
        E.H.A.mult(x, y)
        E.Phi.adjoint(self.D * E.Phi.apply(x) / E.n, self.tmp)
        y.aypx(E.alpha, self.tmp)


class LinearSolver:
    """Solves K(D) X = B for one data weight D (set up once, reused for many right-hand sides)."""

    def __init__(self, E: Functional, D: np.ndarray | None = None, solver: str = "cg",
                 rtol: float = 1e-10, max_it: int = 2000, petsc_options: dict | None = None):
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}: choose cg or direct")
        self.E, self.solver, self.rtol = E, solver, rtol
        self.D = np.ones(E.n) if D is None else np.asarray(D, dtype=float)
        comm = E.H.space.comm
        self.comm = comm
        ctx = _NormalOperator(E, self.D)
        sizes = (E.H.A.getLocalSize()[0], E.H.A.getSize()[0])
        self.K = PETSc.Mat().createPython((sizes, sizes), context=ctx, comm=comm)
        self.K.setUp()
        self.P = E.H.A.copy()
        self.P.scale(E.alpha)
        prefix = f"flowfem_{solver}_{next(_prefix)}_"  # same sequence on every rank
        self.ksp = PETSc.KSP().create(comm)
        self.ksp.setOptionsPrefix(prefix)
        opts = PETSc.Options()
        if solver == "cg":
            self.ksp.setOperators(self.K, self.P)
            self.ksp.setType("cg")
            self.ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
            pc = self.ksp.getPC()
            pc.setType("gamg")
            pc.setUseAmat(False)  # smooth with alpha A on every level, not with the shell K
            opts[prefix + "pc_mg_multiplicative_cycles"] = 2  # two V-cycles: fewer, mesh-independent CG steps
            self.ksp.setTolerances(rtol=rtol, atol=0.0, max_it=max_it)
        else:
            n_dofs = E.H.ndofs
            if n_dofs * E.n > DIRECT_LIMIT:
                raise ValueError(
                    f"the direct solver needs a dense {E.n} x {n_dofs} matrix; this problem is too "
                    "large for it: use solver='cg'"
                )
            self.ksp.setOperators(self.P)
            self.ksp.setType("preonly")
            self.ksp.getPC().setType("lu")
            self.ksp.getPC().setFactorSolverType("mumps")
        for k, v in (petsc_options or {}).items():
            opts[prefix + k.lstrip("-")] = v
        self.ksp.setFromOptions()
        self.ksp.setUp()
        if solver == "direct":
            self._woodbury()

    def _woodbury(self):
        """C = Phi^T, Z = (alpha A)^{-1} C and the n x n capacitance n D^{-1} + C^T Z."""
        E = self.E
        self.C = E.Phi.columns()
        self.Z = np.empty_like(self.C)
        b, z = E.vector(), E.vector()
        for j in range(E.n):
            b.array[:] = self.C[:, j]
            self.ksp.solve(b, z)
            self.Z[:, j] = z.array_r
        G = self.C.T @ self.Z
        self.comm.Allreduce(MPI.IN_PLACE, G, op=MPI.SUM)
        self.capacitance = np.diag(E.n / self.D) + G

    def solve(self, B: PETSc.Vec, X: PETSc.Vec) -> SolveInfo:
        """X = K(D)^{-1} B; the info holds iterations and the true relative residual."""
        history = []
        if self.solver == "cg":
            self.ksp.setConvergenceHistory()
            self.ksp.solve(B, X)
            history = list(self.ksp.getConvergenceHistory())
            its, reason = self.ksp.getIterationNumber(), self.ksp.getConvergedReason()
            if reason < 0:
                raise RuntimeError(
                    f"CG did not converge (PETSc reason {reason}) after {its} iterations; "
                    "try a larger alpha, a looser rtol or solver='direct'"
                )
        else:
            self.ksp.solve(B, X)
            t = self.C.T @ X.array_r
            self.comm.Allreduce(MPI.IN_PLACE, t, op=MPI.SUM)
            X.array[:] -= self.Z @ np.linalg.solve(self.capacitance, t)
            its, reason = 1, 1
        R = B.duplicate()
        self.K.mult(X, R)
        R.aypx(-1.0, B)
        bnorm = B.norm()
        return SolveInfo(self.solver, its, R.norm() / bnorm if bnorm > 0 else R.norm(), reason, history)

    def destroy(self):
        for obj in (self.ksp, self.K, self.P):
            obj.destroy()


def solve(E: Functional, solver: str = "cg", rtol: float = 1e-10,
          petsc_options: dict | None = None) -> tuple[PETSc.Vec, SolveInfo]:
    """The minimiser U* of E_alpha (squared loss): one solve of (alpha A + Phi^T Phi / n) U = Phi^T y / n."""
    if not E.loss.quadratic:
        raise ValueError(f"the one-solve minimiser needs the squared loss, not {E.loss.name}")
    lin = LinearSolver(E, None, solver, rtol, petsc_options=petsc_options)
    U = E.vector()
    info = lin.solve(E.rhs(), U)
    lin.destroy()
    return U, info
