"""The functional E_alpha and its derivatives on the discrete density U.

    E_alpha(u) = (1/n) sum_j l(f_u(x_j), y_j) + (alpha/2) ||u||^2_{H^1_omega},

    dE_alpha(U)    = alpha A U + Phi^T l'(Phi U, y) / n,
    d2E_alpha(U)   = alpha A + Phi^T diag(l''(Phi U, y)) Phi / n.

E_alpha is lambda-convex with lambda = alpha in the H^1_omega norm (the loss
term is convex), and at least alpha in L^2_omega since a_omega >= m_omega.
"""

from __future__ import annotations

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

from petsc4py import PETSc  # noqa: E402

from flowfem.loss import Loss, loss as _loss  # noqa: E402
from flowfem.operator import DataOperator  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402


class Functional:
    """E_alpha for data (x, y) with the data operator Phi on the space H."""

    def __init__(self, H: WeightedH1, Phi: DataOperator, y: np.ndarray, alpha: float,
                 loss: Loss | str = "squared"):
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha = {alpha} must be positive: it is the convexity constant of E_alpha")
        self.H, self.Phi, self.alpha = H, Phi, float(alpha)
        self.y = np.asarray(y, dtype=float)
        self.loss = _loss(loss)
        self.loss.check_labels(self.y)

    @property
    def n(self) -> int:
        return self.y.size

    @property
    def lam(self) -> float:
        """lambda: E_alpha is lambda-convex in H^1_omega with lambda = alpha."""
        return self.alpha

    def vector(self) -> PETSc.Vec:
        """A zero vector in the dof layout."""
        v = self.H.A.createVecRight()
        v.set(0.0)
        return v

    def parts(self, U: PETSc.Vec) -> tuple[float, float]:
        """(data term (1/n) sum l(f_j, y_j), regulariser (alpha/2) U^T A U)."""
        f = self.Phi.apply(U)
        AU = self.H.A.createVecLeft()
        self.H.A.mult(U, AU)
        return float(np.mean(self.loss.value(f, self.y))), 0.5 * self.alpha * AU.dot(U)

    def __call__(self, U: PETSc.Vec) -> float:
        """E_alpha(U)."""
        return sum(self.parts(U))

    def gradient(self, U: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """dE_alpha(U) = alpha A U + Phi^T l'(Phi U, y) / n (a dual vector)."""
        out = self.vector() if out is None else out
        tmp = self.vector()
        self.Phi.adjoint(self.loss.d1(self.Phi.apply(U), self.y) / self.n, tmp)
        self.H.A.mult(U, out)
        out.aypx(self.alpha, tmp)
        return out

    def rhs(self) -> PETSc.Vec:
        """Phi^T y / n: the right-hand side of the linear Euler-Lagrange equation (squared loss)."""
        b = self.vector()
        self.Phi.adjoint(self.y / self.n, b)
        return b

    def curvature(self, U: PETSc.Vec) -> np.ndarray:
        """D = l''(Phi U, y): the data weights of the Hessian alpha A + Phi^T D Phi / n."""
        return self.loss.d2(self.Phi.apply(U), self.y)
