"""The data operator Phi: a density's dof vector U -> its predictions (f_U(x_j))_j at the data.

    Phi = S W Psi,    S_jq = sigma(theta_q . x~_j),

with the quadrature W Psi of :mod:`flowfem.operator.quadrature` on each
rank's cells and S applied by the implementation that
:mod:`flowfem.operator.select` chooses, once, when the operator is built.

Two layouts of the data over the MPI ranks, the quadrature points being
always split by cells:

* **replicated** (the default): every rank holds all n points. Predictions
  are an MPI sum over the ranks' points; Phi^T r needs no communication
  beyond the reverse scatter of Psi^T; the normal operator Phi^T D Phi / n
  goes through :meth:`Features.normal
  <flowfem.operator.features.Features.normal>` (for relu in 1-D from
  per-bin moments of the data: O(nq) per product after one O(n) pass per
  data weight D, :class:`~flowfem.operator.features.ReluMoments1D`).
* **sharded** (``sharded=True``): rank p holds only its own rows x_(p) of
  the data (n_p of the n, in rank order; a rank may hold none). Its
  features S_(p) map *all* nq quadrature points to its rows, so

      Phi U on rank p = S_(p) g,          g = W Psi U gathered from every rank (MPI_Allgatherv),
      Phi^T r         = Psi^T W sum_p S_(p)^T r_(p)   (MPI_Reduce_scatter to the points' owners),

  and the normal operator sums S_(p)^T D_(p) S_(p) g the same way. Every
  product moves O(nq) numbers, whatever n is; the data are read once, by
  their rank. Predictions, residuals and data weights D are then arrays of
  the rank's own rows, and sums over the data (the loss) are MPI sums
  (:meth:`DataOperator.total`).
"""

from __future__ import annotations

import numpy as np

from flowfem import mpi  # (first: loads MPI before dolfinx)

import dolfinx.la  # noqa: E402
from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

from flowfem.activations import Activation, activation as _activation  # noqa: E402
from flowfem.operator.features import DenseFeatures, InterpolatedFeatures, evaluate  # noqa: E402
from flowfem.operator.features.interpolated import bounding_box  # noqa: E402
from flowfem.operator.quadrature import Quadrature  # noqa: E402
from flowfem.operator.select import build, implementation, make_features  # noqa: E402
from flowfem.sharded_split import per_row  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402



class DataOperator:
    """Phi: U -> (f_U(x_j))_j for data x (rows, d); Phi^T r assembled into a dof vector.

    ``sharded`` False: x is the whole data set (n, d), the same on every rank. ``sharded`` True:
    x holds this rank's own rows (n_p, d) of the n (the ranks' rows in rank order make the data
    set; n_p may be 0), and every array over the data that goes in or comes out (r, D, Phi U) is
    this rank's rows only. ValueError if the ranks' sharded x disagree in d.
    """

    def __init__(self, H: WeightedH1, sigma: Activation | str, x: np.ndarray,
                 quadrature_degree: int | None = None, method: str = "auto", sharded: bool = False):
        self.H = H
        self.sigma = _activation(sigma)
        self.method = method
        self.quadrature = Quadrature(H, quadrature_degree)
        self.x = np.ascontiguousarray(x, dtype=float)
        self.comm: MPI.Comm = H.space.comm
        self.sharded = bool(sharded)
        impl = implementation(self.sigma, self.x.shape[1], method)  # how S is applied: chosen here, once
        if self.sharded:
            self._shard(impl)
            return
        order = impl.point_order(self.quadrature.theta)
        if order is not None:  # e.g. relu in 1-D: points in kink order, so the products gather nothing
            self.quadrature.permute(order)
        self.S = build(impl, self.sigma, self.x, self.quadrature.theta, method)
        self._g = np.empty(self.quadrature.num_points)  # work buffer: a value per quadrature point
        self._n = self.x.shape[0]
        self.S.distribute(self.comm)

    def _shard(self, impl) -> None:
        """Features of this rank's rows on every rank's quadrature points (gathered once: nq (d + 1)
        numbers, far fewer than the data), and the counts the products gather and scatter by."""
        comm, theta = self.comm, self.quadrature.theta
        widths = comm.allgather(self.x.shape[1])
        if len(set(widths)) != 1:
            raise ValueError(f"the ranks' data have {sorted(set(widths))} input columns: every rank's rows "
                             "must come from the same data set")
        self.counts = np.array(comm.allgather(theta.shape[0]))
        self._n = comm.allreduce(self.x.shape[0], op=MPI.SUM)
        self.row_offset = comm.exscan(self.x.shape[0], op=MPI.SUM) or 0  # collective; None on rank 0
        theta_all = np.empty((int(self.counts.sum()), theta.shape[1]))
        comm.Allgatherv(np.ascontiguousarray(theta), [theta_all, self.counts * theta.shape[1]])
        order = impl.point_order(theta_all)
        # products gather g in rank order; the features see it permuted (e.g. relu1d's kink order) by a take
        self._order = None if order is None or np.array_equal(order, np.arange(order.size)) else order
        if self._order is not None:
            theta_all = theta_all[self._order]
        # a rank without rows has nothing to represent: the dense evaluation of an empty S costs nothing
        here = impl if self.x.shape[0] else DenseFeatures
        # the input grid spans every rank's rows (collective: on the ranks without any too), so that the
        # approximation does not depend on the number of ranks
        box = bounding_box(self.x, comm) if impl is InterpolatedFeatures else None
        self.S = mpi.on_every_rank(comm, lambda: build(here, self.sigma, self.x, theta_all, self.method, box))
        self.S.distribute(MPI.COMM_SELF)  # the features sum over this rank's rows only; the MPI sum is ours
        self._g = np.empty(self.quadrature.num_points)
        self._gather = np.empty(theta_all.shape[0])  # g of every rank's points, in rank order
        self._points = np.empty(theta_all.shape[0])  # the same in the features' order
        self._sums = np.empty(theta_all.shape[0])  # S_(p)^T r of this rank's rows, before the MPI sum

    @property
    def n(self) -> int:
        """n, the number of data points (over all ranks when sharded)."""
        return self._n

    @property
    def rows(self) -> int:
        """The data rows this rank holds: n replicated, n_p sharded (the length of r, D and Phi U here)."""
        return self.x.shape[0]

    def gaussian(self, seed: int, columns: int):
        """The columns of a seeded standard Gaussian matrix G (n x ``columns``) over the data, one at a time:
        this rank's rows (:attr:`rows`,) of each.

        Replicated: drawn from one stream (seed), column after column, the same on every rank.
        Sharded: column j is :func:`flowfem.sharded_split.per_row` with key (seed, j), so that a rank
        draws only the chunks its rows meet and every row has the same number on any number of ranks
        (a randomized method then does not depend on how the rows are split)."""
        if not self.sharded:
            rng = np.random.default_rng(seed)
            for _ in range(columns):
                yield rng.standard_normal(self.n)
            return
        for j in range(columns):
            yield per_row([seed, j], self.row_offset, self.row_offset + self.rows, "standard_normal")

    def start_block(self, seed: int, columns: int, D: np.ndarray) -> np.ndarray:
        """(Phi^T diag(D) G / n)^T for a seeded standard Gaussian G (n x ``columns``) over the data: rows
        (columns, owned dofs); D (:attr:`rows`,). A randomized method's start (the Nystrom preconditioner's).

        Features with a ``sketch`` (:meth:`ReluMoments1D.sketch
        <flowfem.operator.features.ReluMoments1D.sketch>`) give S^T (D G / n) exactly in distribution
        without drawing G (O(nq) per column after two O(n / P) passes, no n-sized array), the same on any
        number of ranks and for replicated and sharded data (to rounding). Other features: G's columns
        from :meth:`gaussian`, one at a time (O(n) memory), through :meth:`adjoint`. Collective."""
        q = self.quadrature
        impl = implementation(self.sigma, self.x.shape[1], self.method)  # what every rank with rows built
        if not hasattr(impl, "sketch"):
            W = np.empty((columns, q.num_owned))
            for j, column in enumerate(self.gaussian(seed, columns)):
                column *= D  # in place: a fresh array each time, and n numbers per temporary saved
                column /= self.n
                row = PETSc.Vec().createWithArray(W[j], comm=MPI.COMM_SELF)  # adjoint writes W[j] itself
                self.adjoint(column, row)
                row.destroy()
            return W
        if not self.sharded:
            return q.transpose_block(self.S.sketch(D, seed, columns, 1.0 / self.n))
        # every point of every rank, from the global bins: each rank keeps its own points (no MPI sum); a
        # rank without rows holds DenseFeatures, and builds the sketch's bins from the points alone
        S = self.S if self.rows else impl(self.sigma, self.x, self.S.theta)
        H = S.sketch(D, seed, columns, 1.0 / self.n, comm=self.comm)
        if self._order is not None:
            unordered = np.empty_like(H)
            unordered[self._order] = H
            H = unordered
        start = int(self.counts[: self.comm.rank].sum())
        return q.transpose_block(H[start:start + q.num_points])

    def total(self, values: np.ndarray) -> float:
        """The sum of ``values`` (an array over this rank's rows, any trailing shape) over the whole data
        set: an MPI sum when sharded, the local sum when every rank holds all rows."""
        s = float(np.sum(values))
        return self.comm.allreduce(s, op=MPI.SUM) if self.sharded else s

    def _all_points(self, g: np.ndarray) -> np.ndarray:
        """Every rank's point values g (this rank's given) in the features' order: one MPI_Allgatherv."""
        self.comm.Allgatherv(g, [self._gather, self.counts])
        if self._order is None:
            return self._gather
        return np.take(self._gather, self._order, out=self._points)

    def _own_points(self, h: np.ndarray, out: np.ndarray) -> np.ndarray:
        """sum over the ranks of h (a value per point of every rank, in the features' order), this
        rank's points kept: one MPI_Reduce_scatter."""
        if self._order is not None:
            self._gather[self._order] = h
            h = self._gather
        self.comm.Reduce_scatter(np.ascontiguousarray(h), out, recvcounts=self.counts, op=MPI.SUM)
        return out

    def apply(self, U, out: np.ndarray | None = None) -> np.ndarray:
        """Phi U = (f_U(x_j))_j at the rows this rank holds: all n on every rank (an MPI sum over the
        ranks' cells), or this rank's n_p when sharded."""
        g = self.quadrature.weights(U, self._g)
        if self.sharded:
            return self.S.matvec(self._all_points(g), out)
        f = self.S.matvec(g, out)
        self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
        return f

    def adjoint(self, r: np.ndarray, out) -> None:
        """out = Phi^T r (owned dofs of a PETSc vector); r holds this rank's rows (:attr:`rows`)."""
        if self.sharded:
            h = self._own_points(self.S.rmatvec(r, self._sums), self._g)
        else:
            h = self.S.rmatvec(r, self._g)
        self.quadrature.transpose(h, out)

    def normal(self, U, D: np.ndarray, out) -> None:
        """out = Phi^T diag(D) Phi U / n, the data term of the Hessian (owned dofs of a PETSc vector);
        D (:attr:`rows`,) holds this rank's rows.

        S^T diag(D / n) S is the feature implementation's :meth:`normal`: by default Phi U summed
        over the ranks and S^T applied to D Phi U / n on each; for relu in 1-D from per-bin moments
        of the data (:meth:`ReluMoments1D.normal`). Sharded: each rank's rows on every
        point, summed to the points' owners."""
        g = self.quadrature.weights(U, self._g)
        if self.sharded:
            h = self._own_points(self.S.normal(self._all_points(g), D, 1.0 / self.n, self._sums), self._g)
        else:
            h = self.S.normal(g, D, 1.0 / self.n, g)
        self.quadrature.transpose(h, out)

    def normal_block(self, U: np.ndarray, D: np.ndarray) -> np.ndarray:
        """Phi^T diag(D) Phi U / n for a block of owned dof vectors given as rows U (b, owned dofs):
        rows (b, owned dofs). The features' work is shared by the b columns where their implementation
        allows it (sigma evaluated once, one tree pass), and one MPI sum serves the block."""
        q = self.quadrature
        G = q.weights_block(U)
        if not self.sharded:
            return q.transpose_block(self.S.normal_block(G, D, 1.0 / self.n))
        b = G.shape[1]
        gathered = np.empty((self._gather.size, b))
        self.comm.Allgatherv(np.ascontiguousarray(G), [gathered, self.counts * b])
        if self._order is not None:
            gathered = gathered[self._order]
        H = self.S.normal_block(gathered, D, 1.0 / self.n)
        if self._order is not None:
            unordered = np.empty_like(H)
            unordered[self._order] = H
            H = unordered
        own = np.empty((q.num_points, b))
        self.comm.Reduce_scatter(np.ascontiguousarray(H), own, recvcounts=self.counts * b, op=MPI.SUM)
        return q.transpose_block(own)

    def predict(self, U, x: np.ndarray, sharded: bool = False) -> np.ndarray:
        """f_U at new points x (m, d), the same x on every rank: (m,) on every rank (an MPI sum over the
        ranks' points). ``sharded``: x holds this rank's own points (m_p, d), possibly none, and the
        result is theirs (m_p,): every rank's points and weights g are gathered (O(nq) numbers)."""
        x = np.ascontiguousarray(x, dtype=float)
        g = self.quadrature.weights(U)
        if not sharded:
            S = make_features(self.sigma, x, self.quadrature.theta, self.method, repeated=False)
            f = S.matvec(g)
            self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
            return f
        counts = np.array(self.comm.allgather(g.size))
        theta = self.quadrature.theta
        theta_all, g_all = np.empty((counts.sum(), theta.shape[1])), np.empty(counts.sum())
        self.comm.Allgatherv(np.ascontiguousarray(theta), [theta_all, counts * theta.shape[1]])
        self.comm.Allgatherv(g, [g_all, counts])
        if not x.shape[0]:  # nothing to represent (and some implementations need a point)
            return np.empty(0)
        return make_features(self.sigma, x, theta_all, self.method, repeated=False).matvec(g_all)

    def columns(self, block_entries: int = 2**22) -> np.ndarray:
        """Phi^T as a dense (owned dofs, n) array: small problems only (direct solver, tests).

        Built from blocks of data points, Phi^T[:, J] = Psi^T W S[J, :]^T, so S is never whole
        in memory; ghost rows are summed into their owners column by column. ValueError when
        sharded: the columns of every rank's rows would be needed on every rank.
        """
        if self.sharded:
            raise ValueError("Phi^T as a dense matrix needs every data point on every rank, and the data are "
                             "sharded over the ranks: use the cg solver")
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
