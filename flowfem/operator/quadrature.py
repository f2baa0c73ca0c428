"""The quadrature of the data operator: the rule (theta_q, q_q) on this rank's cells and W Psi.

On the cells of each rank, basix's rule of degree 2 p (p the element degree)
gives reference points X_q and weights q_q; the mesh maps them to x_q with
|det J| (the length or area element on the circle and sphere), and the
Space's chart (:mod:`flowfem.space`) to the neurons and the volume element:

    theta_q = theta(x_q)    (Quadrature.theta, shape (points, d + 1)),
    d theta = lambda(x_q)^n |det J| q_q   (n the topological dimension).

On the box, ball, circle and sphere theta(x) = x and lambda = 1; on the s3
chart theta_q = vartheta(z_q) in S^3 and lambda^3 = (2 / (1 + |z_q|^2))^3.
(W Psi)_qk = q_q |det J| lambda^n psi_k(x_q) is a sparse matrix, a row per
point and a column per local dof (owned and ghost), so that g = W Psi U is the
weight of every point and Psi^T W h assembles integral h v d theta into a dof
vector with a reverse scatter.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import basix  # noqa: E402
import dolfinx.fem  # noqa: E402
import dolfinx.la  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

from flowfem.sobolev import WeightedH1  # noqa: E402


class Quadrature:
    """The rule (theta_q, q_q |det J| lambda^n) on this rank's cells and W Psi (points x local dofs)."""

    def __init__(self, H: WeightedH1, degree: int | None = None):
        mesh, V = H.space.mesh, H.V
        self.degree = degree = 2 * H.degree if degree is None else int(degree)
        cell = mesh.topology.cell_type.name
        X, q = basix.make_quadrature(getattr(basix.CellType, cell), degree)
        J = ufl.Jacobian(mesh)
        detJ = ufl.sqrt(ufl.det(J.T * J))  # |det J|, and the area element on the circle and sphere
        tdim = mesh.topology.dim
        cells = np.arange(mesh.topology.index_map(tdim).size_local, dtype=np.int32)
        chart, x = H.space.chart, ufl.SpatialCoordinate(mesh)
        theta = dolfinx.fem.Expression(chart.ufl_point(x), X).eval(mesh, cells)
        volume = detJ * chart.ufl_volume(x, tdim)  # d theta / d X: |det J| lambda^n
        psi = dolfinx.fem.Expression(volume * ufl.TrialFunction(V), X).eval(mesh, cells)
        self.theta = theta.reshape(-1, H.space.gdim)  # (ncells * nqp, d + 1)
        ndofs_cell = V.dofmap.dof_layout.num_dofs  # not -1: a rank that owns no cells has an empty psi
        Wpsi = psi.reshape(len(cells), len(q), ndofs_cell) * q[None, :, None]  # (ncells, nqp, ndofs_cell)
        dofs = V.dofmap.list[cells]  # local dof indices, owned and ghost
        npoints, k = self.theta.shape[0], dofs.shape[1]
        im = V.dofmap.index_map
        self.num_owned = im.size_local
        # (W Psi)_{q, i} = q_q |det J| lambda^n psi_i(x_q): a row per point, a column per local dof
        self.matrix = scipy.sparse.csr_matrix(
            (Wpsi.ravel(), (np.repeat(np.arange(npoints), k), np.repeat(dofs, len(q), axis=0).ravel())),
            shape=(npoints, im.size_local + im.num_ghosts))
        self._matrix = self._petsc(self.matrix)
        self._work = dolfinx.fem.Function(V)
        self._local = PETSc.Vec().createWithArray(self._work.x.array, comm=MPI.COMM_SELF)  # owned + ghost values
        self.comm = mesh.comm

    @staticmethod
    def _petsc(m: scipy.sparse.csr_matrix) -> PETSc.Mat:
        """The same matrix as a sequential PETSc AIJ (products into existing arrays, no allocation)."""
        return PETSc.Mat().createAIJ(size=m.shape, comm=MPI.COMM_SELF, csr=(
            m.indptr.astype(PETSc.IntType), m.indices.astype(PETSc.IntType), m.data))

    def permute(self, order: np.ndarray) -> None:
        """Renumber the points: the new point i is the old point order[i]."""
        self.theta = self.theta[order]
        self.matrix = self.matrix[order]
        self._matrix.destroy()
        self._matrix = self._petsc(self.matrix)

    @property
    def num_points(self) -> int:
        """Quadrature points on this rank."""
        return self.theta.shape[0]

    def weights(self, U, out: np.ndarray | None = None) -> np.ndarray:
        """g = W Psi U: the weight q_q |det J| lambda^n u(theta_q) of every local quadrature point."""
        w = self._work
        w.x.array[: self.num_owned] = U.array_r
        w.x.scatter_forward()
        out = np.empty(self.num_points) if out is None else out
        g = PETSc.Vec().createWithArray(out, comm=MPI.COMM_SELF)
        self._matrix.mult(self._local, g)
        g.destroy()
        return out

    def weights_block(self, U: np.ndarray) -> np.ndarray:
        """G = W Psi U for a block of owned dof vectors given as rows U (b, owned dofs): (points, b)."""
        w = self._work
        local = np.empty((w.x.array.size, U.shape[0]))
        for j in range(U.shape[0]):  # ghost values, vector by vector
            w.x.array[: self.num_owned] = U[j]
            w.x.scatter_forward()
            local[:, j] = w.x.array
        return self.matrix @ local

    def transpose_block(self, H: np.ndarray) -> np.ndarray:
        """Psi^T W H for a block H (points, b): the owned dof vectors as rows (b, owned dofs)."""
        local = self.matrix.T @ H  # owned and ghost rows
        w = self._work
        out = np.empty((H.shape[1], self.num_owned))
        for j in range(H.shape[1]):
            w.x.array[:] = local[:, j]
            w.x.scatter_reverse(dolfinx.la.InsertMode.add)
            out[j] = w.x.array[: self.num_owned]
        return out

    def transpose_abs(self, h: np.ndarray, out) -> None:
        """out = |Psi^T W| h, the entries' absolute values (assembled as :meth:`transpose`): for h >= 0 an
        entrywise bound of |Psi^T W g| for every |g| <= h (:class:`flowfem.stationary.RoundingFloor`)."""
        w = self._work
        w.x.array[:] = abs(self.matrix).T @ h  # owned and ghost rows
        w.x.scatter_reverse(dolfinx.la.InsertMode.add)
        out.array[:] = w.x.array[: self.num_owned]

    def transpose(self, h: np.ndarray, out) -> None:
        """out = Psi^T W h, i.e. the vector of integral h v d theta over all test functions v."""
        hv = PETSc.Vec().createWithArray(np.ascontiguousarray(h, dtype=float), comm=MPI.COMM_SELF)
        self._matrix.multTranspose(hv, self._local)  # into the owned and ghost entries of _work
        hv.destroy()
        w = self._work
        w.x.scatter_reverse(dolfinx.la.InsertMode.add)
        out.array[:] = w.x.array[: self.num_owned]
