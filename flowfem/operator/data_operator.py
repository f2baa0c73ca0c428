"""The data operator Phi: a density's dof vector U -> its predictions (f_U(x_j))_j at the data.

    Phi = S W Psi,    S_jq = sigma(theta_q . x~_j),

with the quadrature W Psi of :mod:`flowfem.operator.quadrature` on each
rank's cells and S applied by the implementation that
:mod:`flowfem.operator.select` chooses, once, when the operator is built.
The data x are replicated on every rank: predictions are an MPI sum over
the ranks; Phi^T r needs no communication beyond the reverse scatter of
Psi^T. The normal operator Phi^T D Phi / n goes through
:meth:`Features.normal <flowfem.operator.features.Features.normal>` (for
relu in 1-D its O(n) work is split over the ranks).
"""

from __future__ import annotations

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import dolfinx.la  # noqa: E402
from mpi4py import MPI  # noqa: E402

from flowfem.activations import Activation, activation as _activation  # noqa: E402
from flowfem.operator.features import evaluate  # noqa: E402
from flowfem.operator.quadrature import Quadrature  # noqa: E402
from flowfem.operator.select import build, implementation, make_features  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402


class DataOperator:
    """Phi: U -> (f_U(x_j))_j for replicated data x (n, d); Phi^T r assembled into a dof vector."""

    def __init__(self, H: WeightedH1, sigma: Activation | str, x: np.ndarray,
                 quadrature_degree: int | None = None, method: str = "auto"):
        self.H = H
        self.sigma = _activation(sigma)
        self.method = method
        self.quadrature = Quadrature(H, quadrature_degree)
        self.x = np.ascontiguousarray(x, dtype=float)
        impl = implementation(self.sigma, self.x.shape[1], method)  # how S is applied: chosen here, once
        order = impl.point_order(self.quadrature.theta)
        if order is not None:  # e.g. relu in 1-D: points in kink order, so the products gather nothing
            self.quadrature.permute(order)
        self.S = build(impl, self.sigma, self.x, self.quadrature.theta, method)
        self._g = np.empty(self.quadrature.num_points)  # work buffer: a value per quadrature point
        self.comm: MPI.Comm = H.space.comm
        self.S.distribute(self.comm)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def apply(self, U, out: np.ndarray | None = None) -> np.ndarray:
        """Phi U = (f_U(x_j))_j on every rank (an MPI sum over the ranks' cells)."""
        f = self.S.matvec(self.quadrature.weights(U, self._g), out)
        self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
        return f

    def adjoint(self, r: np.ndarray, out) -> None:
        """out = Phi^T r (owned dofs of a PETSc vector); r is replicated on all ranks."""
        self.quadrature.transpose(self.S.rmatvec(r, self._g), out)

    def normal(self, U, D: np.ndarray, out) -> None:
        """out = Phi^T diag(D) Phi U / n, the data term of the Hessian (owned dofs of a PETSc vector).

        S^T diag(D / n) S is the feature implementation's :meth:`normal`: by default Phi U summed
        over the ranks and S^T applied to D Phi U / n on each; for relu in 1-D the O(n) part is
        shared over the ranks (:meth:`ReluFeatures1D.normal`)."""
        g = self.quadrature.weights(U, self._g)
        self.quadrature.transpose(self.S.normal(g, D, 1.0 / self.n, g), out)

    def normal_block(self, U: np.ndarray, D: np.ndarray) -> np.ndarray:
        """Phi^T diag(D) Phi U / n for a block of owned dof vectors given as rows U (b, owned dofs):
        rows (b, owned dofs). The features' work is shared by the b columns where their implementation
        allows it (sigma evaluated once, one tree pass), and one MPI sum serves the block."""
        q = self.quadrature
        return q.transpose_block(self.S.normal_block(q.weights_block(U), D, 1.0 / self.n))

    def predict(self, U, x: np.ndarray) -> np.ndarray:
        """f_U at new points x (m, d), on every rank."""
        S = make_features(self.sigma, np.ascontiguousarray(x, dtype=float), self.quadrature.theta, self.method,
                          repeated=False)
        f = S.matvec(self.quadrature.weights(U))
        self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
        return f

    def columns(self, block_entries: int = 2**22) -> np.ndarray:
        """Phi^T as a dense (owned dofs, n) array: small problems only (direct solver, tests).

        Built from blocks of data points, Phi^T[:, J] = Psi^T W S[J, :]^T, so S is never whole
        in memory; ghost rows are summed into their owners column by column.
        """
        q = self.quadrature
        theta = q.theta
        PsiTW = q.matrix.T.tocsr()
        result = np.empty((q.num_owned, self.n))
        block = max(1, block_entries // max(1, theta.shape[0]))
        for j0 in range(0, self.n, block):
            S = evaluate(self.sigma, self.x[j0:j0 + block], theta)  # (block, nq_local)
            local = PsiTW @ S.T  # (owned + ghost dofs, block)
            for j in range(local.shape[1]):
                q._work.x.array[:] = local[:, j]
                q._work.x.scatter_reverse(dolfinx.la.InsertMode.add)
                result[:, j0 + j] = q._work.x.array[: q.num_owned]
        return result
