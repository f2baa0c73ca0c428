"""S^T diag(D) S for relu and leaky relu on 1-D inputs from per-bin moments of the data: O(nq) per product.

For relu and leaky relu on 1-D inputs the network f_U is piecewise linear in
x with its kinks at t_q = -b_q / w_q, so every product of the data term with
a density reduces exactly to moments of the data between consecutive kinks,
computed in one O(n) pass (the binned-moment reduction of issue 16, part 2).

Notation. sigma(z) = max(z, s z) = s z + c relu(z), c = 1 - s (relu: s = 0).
Quadrature point q = (w_q, b_q) with value g_q; each MPI rank holds its own
points. The K points with w != 0 over all ranks have kinks t = -b / w; sorted,
t_(0) <= ... <= t_(K-1), and point q has its own position i_q in that order
(equal kinks in any order). Bin k = 0, ..., K holds the inputs with
k(x) = #{i : t_(i) <= x}, i.e. t_(k-1) <= x < t_(k) (bins between equal kinks
are empty).

Activity. On bin k, relu(w_q x + b_q) = w_q x + b_q if q is active there and 0
otherwise, with q active on the suffix k > i_q of bins if w_q > 0 and on the
prefix k <= i_q if w_q < 0: for w > 0 and k > i, x >= t_(k-1) >= t_(i), so
w x + b = w (x - t_(i)) >= 0, and for k <= i, x < t_(k) <= t_(i); alike for
w < 0. An input exactly at a kink (x = t_(i), bin i + 1 or later) counts q as
active if w > 0 and inactive if w < 0, which is exact because there
w x + b = 0 = relu(0). A point with w = 0 is the constant sigma(b_q).

Predictions. Hence on bin k, with e_q = sign(w_q),

    f(x) = sum_q sigma(w_q x + b_q) g_q = x W_k + B_k,
    (W_k, B_k) = s sum_{w != 0} (w, b) g + c sum_{w < 0} (w, b) g + (0, sum_{w = 0} sigma(b) g)
                 + c sum_{i_q < k} e_q (w_q, b_q) g_q,

(the w < 0 terms: c sum_{w < 0, i_q >= k} = c sum_{w < 0} - c sum_{w < 0, i_q < k}), a cumulative
sum over the K + 1 bins of H with H_0 the first line and H_{i_q + 1} = c e_q (w_q, b_q) g_q.

Adjoint. For r_j = scale D_j f(x_j), the per-bin sums of r x and r are, with the
moments M_{p,k} = sum_{j in bin k} D_j x_j^p (p = 0, 1, 2),

    R_k = (sum_{j in k} r_j x_j, sum_{j in k} r_j) = scale (W_k M_{2,k} + B_k M_{1,k}, W_k M_{1,k} + B_k M_{0,k}),

and with their prefix sums P_m = sum_{k < m} R_k and total T = P_{K+1} = (T^x, T^1),

    (S^T r)_q = (s + c [w_q > 0]) (w_q, b_q) . T - c e_q (w_q, b_q) . P_{i_q + 1}     (w_q != 0),
    (S^T r)_q = sigma(b_q) T^1                                                       (w_q = 0),

since q sees the bins k > i_q (T - P_{i_q + 1}) if w_q > 0 and k <= i_q (P_{i_q + 1}) if w_q < 0.

Cost. The moments M (3 (K + 1) numbers) take one pass over the data: a
binary search for each input's bin and three weighted bin counts, O(n log K),
split over the ranks (rank p bins the rows n p / P ... n (p + 1) / P - 1, then
an MPI sum), or chunk by chunk over rows read piecewise
(:meth:`ReluMoments1D.moments_of`). After it, a product S^T diag(scale D) S G
(b columns) is two cumulative sums and O(K b) arithmetic on one rank,
independent of n. On P ranks the bins are split: rank p forms (W_k, B_k), R_k
and P_{k + 1} only on its bins lo_p <= k < hi_p, lo_p = (K + 1) p // P, from
the increments H_{i_q + 1} of the points in them (one all-to-all: each rank
sends each of its points' 2 b numbers to the owner of its bin), starting its
cumulative sum of H from every rank's H_0 plus the sums of H over the bins of
the ranks before it, and that of R from the sums of R over them (two
all-gathers of 4 b and 2 b numbers per rank; all of R's sums give T); a
second all-to-all returns P_{i_q + 1} to the rank of point q. Per rank:
O(K b / P) work and at most 2 b numbers per own point sent each way, instead
of the whole O(K b) on every rank after an MPI sum of 2 (K + 1) b numbers.
:meth:`~ReluMoments1D.matvec` and :meth:`~ReluMoments1D.rmatvec` (S g and
S^T r of this rank's points at all n inputs, for right-hand sides and
predictions) go through the inputs' bins, O(n) each.

Exactness. The same identities as the per-point
:class:`~flowfem.operator.features.relu1d.ReluFeatures1D`, summed in another
order: they agree to rounding (relative to the sizes of the terms).

Random start (:meth:`ReluMoments1D.sketch`). S^T r depends on r only through the
per-bin pairs (sum_{j in k} r_j x_j, sum_{j in k} r_j). For r = scale D g with a
standard Gaussian g (n,), these pairs are independent over the bins (disjoint
rows of g) and Gaussian within a bin, of covariance scale^2 C_k,

    C_k = [[sum D^2 x^2, sum D^2 x], [sum D^2 x, sum D^2]]   (sums over the rows j in bin k),

so drawing each bin's pair as scale L_k z_k, L_k L_k^T = C_k, z_k ~ N(0, I_2),
and applying the adjoint formula above gives S^T (scale D g) exactly in
distribution (a linear image of a Gaussian is fixed by its covariance), from the
moments of D^2 (two O(n) passes: the sums, then the spread about each bin's mean)
and 2 (K + 1) normals per column, not n.

Moments and D. M depends on D, and :class:`flowfem.stationary.LinearSolver`
changes D between products (Newton steps, a path's folds). The moments are
cached per D only when D is :func:`~flowfem.operator.features.weights.frozen`
(its values can never change: an in-place write raises), keyed by the array
object, and dropped when it dies; for any other D they are recomputed at each
product (exact, O(n)). So a cached M is never stale.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import numpy as np
from mpi4py import MPI

from flowfem.operator.features.base import Features, pieces
from flowfem.operator.features.relu1d import ReluFeatures1D
from flowfem.operator.features.split_bins import SplitBins, SplitWork
from flowfem.operator.features.weights import is_frozen

MOMENTS = 3  # per bin: sum D, sum D x, sum D x^2


def bin_index(kinks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The bin k(x) = #{i : t_(i) <= x} of each input, for the sorted kinks (K,) and inputs x (m,)
    or (m, 1): integers in 0 ... K, shape (m,)."""
    x = np.ravel(x)
    out = np.empty(x.size, dtype=np.int32 if kinks.size < np.iinfo(np.int32).max else np.intp)  # half of n intp
    for piece in pieces(x.size):  # no n-sized intp temporary beside the result
        out[piece] = np.searchsorted(kinks, x[piece], side="right")
    return out


def add_moments(M: np.ndarray, bins: np.ndarray, x: np.ndarray, D: np.ndarray) -> np.ndarray:
    """M[p, k] += sum over the rows j with bins_j = k of D_j x_j^p (p = 0, 1, 2): one chunk of rows
    (bins (m,) from :func:`bin_index`, x (m,) or (m, 1), D (m,)) into the moments M (3, K + 1).
    Returns M."""
    x = np.ravel(x)
    nbins = M.shape[1]
    Dx = D * x
    M[0] += np.bincount(bins, weights=D, minlength=nbins)
    M[1] += np.bincount(bins, weights=Dx, minlength=nbins)
    Dx *= x
    M[2] += np.bincount(bins, weights=Dx, minlength=nbins)
    return M


def bin_factor(C: np.ndarray, V: np.ndarray) -> np.ndarray:
    """A factor of each bin's covariance [[C_2, C_1], [C_1, C_0]], from the moments of D^2, C (3, K + 1)
    (C[p, k] = sum over the rows j in bin k of D_j^2 x_j^p), and the spread about the bin's weighted mean
    xbar_k = C_1 / C_0, V (K + 1,) (V_k = sum_{j in k} D_j^2 (x_j - xbar_k)^2 = C_2 - C_1^2 / C_0): L
    (3, K + 1), the rows (l_1, l_x1, l_xx), with

        [[l_x1, l_xx], [l_1, 0]] [[l_x1, l_xx], [l_1, 0]]^T = [[C_2, C_1], [C_1, C_0]]

    in each bin (the Cholesky factor in the order (sum D g, sum D g x)): l_1 = sqrt(C_0),
    l_x1 = C_1 / l_1, l_xx = sqrt(V). C is positive semidefinite, possibly singular: a bin with one row
    or all its rows at one x has V = 0, an empty bin or one whose D vanish has C = 0 (C_1 = C_2 = 0 too,
    by Cauchy-Schwarz; then L = 0). V is summed from the centred rows, not formed as C_2 - C_1^2 / C_0,
    whose cancellation would leave l_xx = sqrt(eps C_2) where it is 0 (a relative error 1e-8 in the draws)."""
    L = np.zeros_like(C)
    rows = C[0] > 0.0
    L[0, rows] = np.sqrt(C[0, rows])
    L[1, rows] = C[1, rows] / L[0, rows]
    L[2, rows] = np.sqrt(V[rows])
    return L


class _Work:
    """Buffers for products with b columns, allocated once (fresh large temporaries at every product
    come back as page faults: see README, "How the solve is fast"). Bins run along the last axis."""

    def __init__(self, K: int, nm: int, b: int):
        self.H = np.zeros((2, b, K + 1))  # increments of bins 0 ... K, then their prefix sums (W_k, B_k)
        self.P = np.zeros((2, b, K + 2))  # R_k at column k + 1 (column 0 stays 0), then its prefix sums P_m
        self.tmp = np.empty((b, K + 1))
        self.h, self.v = np.empty((b, nm)), np.empty((b, nm))


class ReluMoments1D(Features):
    """Exact S^T diag(scale D) S G for sigma(z) = max(z, s z), d = 1, from per-bin moments of the data.

    The formulas and their cost are the module docstring's. :meth:`distribute` sorts the kinks of
    all ranks' points (one all-gather of K numbers) and splits the K + 1 bins over the P ranks;
    :meth:`normal` and :meth:`normal_block` cost O(K b / P) per rank, two all-to-alls of at most 2 b
    numbers per own point and two all-gathers of 6 b numbers per rank in all, after :meth:`moments`
    (O(n / P) per rank, once per D when D is frozen). Used where S^T D S is applied many times
    (``single_use`` False); :class:`~flowfem.operator.features.relu1d.ReluFeatures1D` serves single
    products.
    """

    name = "relu1d_moments"
    single_use = False

    @classmethod
    def needs(cls, sigma, d):
        return ReluFeatures1D.needs(sigma, d)

    @classmethod
    def point_order(cls, theta: np.ndarray) -> np.ndarray:
        """As :meth:`ReluFeatures1D.point_order`: the points with w != 0 by kink, then those with w = 0
        (their global positions are then increasing, and in serial a slice)."""
        return ReluFeatures1D.point_order(theta)

    def __init__(self, sigma, x, theta):
        super().__init__(sigma, x, theta)
        self.s, self.c = sigma.slope, 1.0 - sigma.slope
        order, nm, self.moving, self.flat, self.sigma_flat = ReluFeatures1D.split_points(sigma, theta)
        wb = np.ascontiguousarray(theta[order[:nm], :2].T)  # (2, nm): (w, b) in kink order
        positive = wb[0] > 0
        self.wb = wb
        self.cewb = self.c * np.where(positive, 1.0, -1.0) * wb  # c e (w, b)
        self.coef = self.s + self.c * positive  # s + c [w > 0]
        self.everywhere = (self.s + self.c * ~positive) * wb  # s (w, b) + c [w < 0] (w, b): every bin's part
        self.t = -wb[1] / wb[0]
        self.xv = np.ascontiguousarray(x[:, 0])
        self._grid(MPI.COMM_SELF)

    def distribute(self, comm: MPI.Comm) -> None:
        """The ranks of comm hold the same data and each its own points: the bins become those of all
        ranks' kinks (an all-gather of K numbers, collective), and the moments pass is split over the
        ranks (rank p: rows n p / P ... n (p + 1) / P - 1)."""
        self._grid(comm)

    def _grid(self, comm: MPI.Comm) -> None:
        """The sorted kinks of all ranks' points and this rank's points' positions among them."""
        nm = self.t.size
        counts = np.array(comm.allgather(nm))
        kinks = np.empty(int(counts.sum()))
        comm.Allgatherv(self.t, [kinks, counts])
        order = np.argsort(kinks, kind="stable")
        self.kinks = kinks[order]
        where = np.empty(order.size, dtype=np.intp)
        where[order] = np.arange(order.size)
        start = int(counts[: comm.rank].sum())
        after = where[start:start + nm] + 1  # H's column of each point: its position + 1
        contiguous = nm > 0 and np.array_equal(after, np.arange(after[0], after[0] + nm))
        self.at = slice(int(after[0]), int(after[0]) + nm) if contiguous else after
        n, P = self.xv.size, comm.size
        self.comm = comm
        self.rows = slice(n * comm.rank // P, n * (comm.rank + 1) // P)
        self._bins = self._row_bins = None  # computed at first use
        self._cache: dict[int, tuple[weakref.ref, np.ndarray]] = {}
        self._work: dict[int, _Work] = {}
        self._split = SplitBins(comm, where, counts) if P > 1 else None
        self._split_work: dict[int, SplitWork] = {}

    @property
    def num_bins(self) -> int:
        """K + 1: the bins between and beyond the K kinks of all ranks' points."""
        return self.kinks.size + 1

    def bins(self) -> np.ndarray:
        """k(x_j) for every input (n,) (computed once: O(n log K))."""
        if self._bins is None:
            self._bins = bin_index(self.kinks, self.xv)
        return self._bins

    # -- the moments -------------------------------------------------------------------------------

    def moments_of(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """M (3, K + 1), M[p, k] = sum of D_j x_j^p over the inputs in bin k, from this rank's rows given
        chunk by chunk as pairs (x (m,) or (m, 1), D (m,)), summed over the ranks of comm. One pass over
        the chunks; collective."""
        M = np.zeros((MOMENTS, self.num_bins))
        for x, D in chunks:
            add_moments(M, bin_index(self.kinks, x), x, np.asarray(D, dtype=float))
        self.comm.Allreduce(MPI.IN_PLACE, M, op=MPI.SUM)
        return M

    def moments(self, D: np.ndarray) -> np.ndarray:
        """M (3, K + 1) of the weights D (n,) over the replicated data, each rank binning its share of
        the rows; cached for a frozen D (module docstring). Collective: the same D on every rank."""
        hit = self._cache.get(id(D))
        if hit is not None and hit[0]() is D:
            return hit[1]
        M = np.zeros((MOMENTS, self.num_bins))
        bins, x, D_rows = self._own_rows(D)
        for piece in pieces(bins.size):  # add_moments' temporaries are PIECE long, not n
            add_moments(M, bins[piece], x[piece], D_rows[piece])
        self.comm.Allreduce(MPI.IN_PLACE, M, op=MPI.SUM)
        if is_frozen(D):
            for key in [k for k, (ref, _) in self._cache.items() if ref() is None]:  # weights that died
                del self._cache[key]
            self._cache[id(D)] = (weakref.ref(D), M)
        return M

    def _own_rows(self, D: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bins, x, D) of this rank's share of the rows (their bins computed once)."""
        if self._row_bins is None:
            self._row_bins = (self._bins[self.rows] if self._bins is not None
                              else bin_index(self.kinks, self.xv[self.rows]))
        return self._row_bins, self.xv[self.rows], np.asarray(D, dtype=float)[self.rows]

    # -- the products ----------------------------------------------------------------------------

    def _buffers(self, b: int) -> _Work:
        if b not in self._work:
            self._work[b] = _Work(self.kinks.size, self.t.size, b)
        return self._work[b]

    def _increments(self, G: np.ndarray, work: _Work) -> np.ndarray:
        """H (2, b, K + 1) of this rank's points for values G (m, b): (W_k, B_k) are its prefix
        sums."""
        H, K = work.H, self.kinks.size
        Gm = G[self.moving].T  # (b, nm)
        if not (isinstance(self.at, slice) and self.at.start == 1 and self.at.stop == K + 1):
            H.fill(0.0)  # other ranks' points own some columns
        for k in range(2):
            np.multiply(self.cewb[k], Gm, out=work.h)
            H[k][:, self.at] = work.h  # H[k] first: H[k, :, at] would put the indexed axis first
        H[:, :, 0] = self.everywhere @ Gm.T
        H[1, :, 0] += self.sigma_flat @ G[self.flat]
        return H

    def _adjoint(self, T: np.ndarray, P_at: np.ndarray, work: _Work | SplitWork, out: np.ndarray) -> np.ndarray:
        """S^T r of this rank's points (m, b) from the totals T = P_{K + 1} (2, b) and the prefix sums of R at
        its points, P_at (2, b, nm): P_{i_q + 1}."""
        h, v = work.h, work.v
        np.multiply(self.wb[0], T[0][:, None], out=h)
        h += np.multiply(self.wb[1], T[1][:, None], out=v)
        h *= self.coef
        for k in range(2):
            np.multiply(self.cewb[k], P_at[k], out=v)
            h -= v
        out[self.moving] = h.T
        out[self.flat] = self.sigma_flat[:, None] * T[1]
        return out

    def _adjoint_all(self, P: np.ndarray, work: _Work, out: np.ndarray) -> np.ndarray:
        """S^T r of this rank's points (m, b) from the prefix sums P (2, b, K + 2) of R over all bins."""
        return self._adjoint(P[:, :, self.kinks.size + 1], P[:, :, self.at], work, out)

    def normal_block(self, G: np.ndarray, D: np.ndarray, scale: float) -> np.ndarray:
        """S^T diag(scale D) (sum over the ranks of S G) for a block G (m, b): shape (m, b), from the
        moments of D (module docstring); O(K b / P) per rank on P ranks (module docstring, "Cost").
        Collective."""
        G = np.asarray(G, dtype=float)
        return self._normal(G, D, scale, np.empty(G.shape))

    def normal(self, g, D, scale, out=None):
        """S^T diag(scale D) (sum over the ranks of S g), shape (m,) (into ``out`` if given): the block
        product with one column. Collective."""
        out = np.empty(g.shape[0]) if out is None else out
        self._normal(g[:, None], D, scale, out[:, None])
        return out

    def _normal(self, G, D, scale, out):
        if self._split is not None:
            return self._normal_split(G, self.moments(D), scale, out)
        M = self.moments(D)
        work = self._buffers(G.shape[1])
        H = self._increments(G, work)
        self.comm.Allreduce(MPI.IN_PLACE, H, op=MPI.SUM)
        W, B = np.cumsum(H, axis=2, out=H)
        R, tmp = work.P[:, :, 1:], work.tmp
        np.multiply(W, M[2], out=R[0])
        R[0] += np.multiply(B, M[1], out=tmp)  # sum_k D x (x W + B) = W M_2 + B M_1
        np.multiply(W, M[1], out=R[1])
        R[1] += np.multiply(B, M[0], out=tmp)
        R *= scale
        return self._adjoint_all(np.cumsum(work.P, axis=2, out=work.P), work, out)  # P_m = sum_{k < m} R_k

    def _normal_split(self, G, M, scale, out):
        """_normal on P > 1 ranks, the bins split over them (:class:`~.split_bins.SplitBins`; module docstring,
        "Cost"): (W, B), R and their prefix sums on this rank's bins only, O(K b / P)."""
        split, b = self._split, G.shape[1]
        if b not in self._split_work:
            self._split_work[b] = SplitWork(split, self.t.size, b)
        work, comm, lo, hi = self._split_work[b], self.comm, split.lo, split.hi
        Gm = G[self.moving]  # (nm, b)
        for block, a, z in zip(work.send, split.send[:-1], split.send[1:]):
            for k in range(2):
                np.multiply(self.cewb[k][a:z], Gm[a:z].T, out=block[k])
        comm.Alltoallv(work.messages[0][0], work.messages[1][0])
        H = work.H
        if lo == 0 < hi:
            H[:, :, 0] = 0.0  # bin 0: its increments are every rank's H_0, in the offset below
        for block, columns in zip(work.recv, split.columns):
            for k in range(2):
                for j in range(b):
                    H[k, j, columns] = block[k, j]  # every bin but 0 holds one point's increment
        np.matmul(self.everywhere, Gm, out=work.H_sums[0])
        work.H_sums[0, 1] += self.sigma_flat @ G[self.flat]
        np.sum(H, axis=2, out=work.H_sums[1])
        comm.Allgather(work.H_sums, work.all_H_sums)
        if hi > lo:  # (W, B) through bin lo - 1: every rank's H_0, and the increments of the ranks' bins before
            H[:, :, 0] += work.all_H_sums[:, 0].sum(axis=0) + work.all_H_sums[:comm.rank, 1].sum(axis=0)
        W, B = np.cumsum(H, axis=2, out=H)
        R, tmp, Mr = work.R, work.tmp, M[:, lo:hi]
        np.multiply(W, Mr[2], out=R[0])
        R[0] += np.multiply(B, Mr[1], out=tmp)
        np.multiply(W, Mr[1], out=R[1])
        R[1] += np.multiply(B, Mr[0], out=tmp)
        R *= scale
        np.sum(R, axis=2, out=work.R_sums)
        comm.Allgather(work.R_sums, work.all_R_sums)
        if hi > lo:
            R[:, :, 0] += work.all_R_sums[:comm.rank].sum(axis=0)  # P_lo: R summed over the ranks' bins before
        np.cumsum(R, axis=2, out=R)  # P_{k + 1} at column k - lo
        for block, reads in zip(work.back_send, split.reads):
            for k in range(2):
                for j in range(b):
                    np.take(R[k, j], reads, out=block[k, j])
        comm.Alltoallv(work.messages[2][0], work.messages[3][0])
        for block, a, z in zip(work.back_recv, split.back_recv[:-1], split.back_recv[1:]):
            work.P_at[:, :, a:z] = block
        T = work.all_R_sums.sum(axis=0)  # P_{K + 1}
        return self._adjoint(T, work.P_at, work, out)

    def matvec(self, g, out=None):
        """S g of this rank's points at every input (n,) (into ``out`` if given): x W_k + B_k in each
        input's bin. O(n); no communication."""
        work = self._buffers(1)
        WB = np.cumsum(self._increments(np.asarray(g, dtype=float)[:, None], work), axis=2, out=work.H)
        bins = self.bins()
        out = np.empty(self.xv.size) if out is None else out
        for piece in pieces(bins.size):  # no n-sized temporary beside out (nor intp bins)
            part = out[piece]
            np.take(WB[0, 0], bins[piece], out=part)
            part *= self.xv[piece]
            part += np.take(WB[1, 0], bins[piece])
        return out

    def rmatvec(self, r, out=None):
        """S^T r (m,) of this rank's points for r (n,) at every input (into ``out`` if given): the per-bin
        sums of r x and r, then the adjoint formula. O(n); no communication."""
        work = self._buffers(1)
        bins, K1 = self.bins(), self.num_bins
        work.P[:, 0, 0] = 0.0
        work.P[:, 0, 1:] = 0.0
        for piece in pieces(bins.size):  # r x is never whole beside r (n numbers saved)
            work.P[0, 0, 1:] += np.bincount(bins[piece], weights=r[piece] * self.xv[piece], minlength=K1)
            work.P[1, 0, 1:] += np.bincount(bins[piece], weights=r[piece], minlength=K1)
        out = np.empty(self.theta.shape[0]) if out is None else out
        self._adjoint_all(np.cumsum(work.P, axis=2, out=work.P), work, out[:, None])
        return out

    def squared_moments(self, D: np.ndarray, comm: MPI.Comm | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The moments of D^2 and their spread in each bin, the inputs of :func:`bin_factor`: C (3, K + 1),
        C[p, k] = sum_{j in k} D_j^2 x_j^p, and V (K + 1,), V_k = sum_{j in k} D_j^2 (x_j - C_1k / C_0k)^2
        (0 where C_0k = 0), over this rank's share of the rows and summed over comm, and over ``comm`` if
        given (ranks holding other rows). Two passes over the rows (V needs every rank's C first), in
        pieces of PIECE rows; collective."""
        comms = [self.comm] + ([] if comm is None else [comm])
        bins, x, D_rows = self._own_rows(D)
        C = np.zeros((MOMENTS, self.num_bins))
        for piece in pieces(bins.size):
            add_moments(C, bins[piece], x[piece], D_rows[piece] ** 2)
        for c in comms:
            c.Allreduce(MPI.IN_PLACE, C, op=MPI.SUM)
        mean = np.divide(C[1], C[0], out=np.zeros(self.num_bins), where=C[0] > 0.0)
        V = np.zeros(self.num_bins)
        for piece in pieces(bins.size):
            spread = np.take(mean, bins[piece])
            np.subtract(x[piece], spread, out=spread)
            spread *= D_rows[piece]
            spread *= spread
            V += np.bincount(bins[piece], weights=spread, minlength=self.num_bins)
        for c in comms:
            c.Allreduce(MPI.IN_PLACE, V, op=MPI.SUM)
        return C, V

    def sketch(self, D: np.ndarray, seed: int, columns: int, scale: float,
               comm: MPI.Comm | None = None) -> np.ndarray:
        """S^T (scale diag(D) G) in distribution, for a standard Gaussian G (n x ``columns``) over the data,
        without drawing G: shape (m, columns), this rank's points. D (n,) as for :meth:`moments`.

        Column j of S^T r depends on r only through the per-bin pairs R_k = (sum_{j in k} r_j x_j,
        sum_{j in k} r_j); for r = scale D g these are independent over the bins and Gaussian with
        covariance scale^2 C_k, C_k = [[sum D^2 x^2, sum D^2 x], [sum D^2 x, sum D^2]] (module
        docstring). So R_k = scale L_k z_k with L_k L_k^T = C_k (:func:`bin_factor`) and z (2, K + 1)
        standard normals has the same joint law, and the adjoint formula maps it to a matrix with the
        law of S^T (scale D G): exact in distribution, the Gaussian's linear image. The z of column j
        come from the stream (seed, j): every rank draws every bin's z (the bins are those of all
        ranks' points, the moments are summed over the ranks), so the result does not depend on the
        number of ranks or on how the rows are split (to the rounding of the moments' sums), and no
        MPI sum of the draws is needed. ``comm``: ranks holding the other rows of the data beyond those
        of this object's comm (sharded data: each rank's features see its own rows only); C is summed
        over it too. Cost: two O(n / P) passes for the moments of D^2 (:meth:`squared_moments`), then
        O(K columns), no n-sized array; collective over this object's comm and ``comm``. Inputs so large
        that D^2 x^2 overflows give a non-finite result without a NumPy warning: the caller checks it
        (the Nystrom preconditioner's Gram matrix: ValueError naming the overflow).

        Use: the random start W_0 = Phi^T D G / n of the Nystrom preconditioner (Frangella, Tropp and
        Udell, "Randomized Nystrom preconditioning", SIAM J. Matrix Anal. Appl. 44, 2023), through
        :meth:`flowfem.operator.DataOperator.start_block`.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # the caller reports a non-finite start, in its words
            L = bin_factor(*self.squared_moments(D, comm))
            work = self._buffers(columns)
            P = work.P  # R_k at column k + 1, column 0 stays 0
            P[:, :, 0] = 0.0
            for j in range(columns):
                z = np.random.default_rng([seed, j]).standard_normal((2, self.num_bins))
                np.multiply(L[0], z[0], out=P[1, j, 1:])  # sum r = scale l_1 z_1
                np.multiply(L[1], z[0], out=P[0, j, 1:])  # sum r x = scale (l_x1 z_1 + l_xx z_2)
                z[1] *= L[2]
                P[0, j, 1:] += z[1]
            P[:, :, 1:] *= scale
            return self._adjoint_all(np.cumsum(P, axis=2, out=P), work, np.empty((self.theta.shape[0], columns)))
