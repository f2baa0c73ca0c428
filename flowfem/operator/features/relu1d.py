"""S for relu and leaky relu on 1-D inputs: prefix sums over the points sorted by their kink.

With t_q = -b_q / w_q the neuron q is active for x > t_q (w_q > 0) or
x < t_q (w_q < 0), so S g and S^T r are prefix sums over the sorted t_q and
the sorted x_j: O(n + m) per product after an O((n + m) log) sort. Exact.
The O(n) part of the normal operator S^T D S can be split over MPI ranks
that hold the same data (:meth:`ReluFeatures1D.normal`).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from flowfem.operator.features.base import Features, is_relu


class ReluFeatures1D(Features):
    """Exact S g and S^T r for sigma(z) = max(z, s z) = s z + c relu(z), c = 1 - s, d = 1, by prefix sums.

    A neuron with w != 0 has its kink at t = -b / w and is active (relu = w x + b)
    for x > t if w > 0 (sign e = +1), for x < t if w < 0 (e = -1). In the
    order of the kinks (at ties w < 0 first), the neurons with t < x, and
    those with w < 0 and t = x, form a prefix of length k(x); so with
    T[k] = sum_{i < k} e_i (w_i, b_i) g_i and N = sum_{w < 0} (w, b) g,

        (S g)(x) = (x, 1) . (s G + c (T[k(x)] + N)) + sum_{w = 0} sigma(b) g,   G = sum (w, b) g.

    With the data sorted and R[m] = sum_{j < m} (r_j x_j, r_j), neuron q sees
    the data x_j > t (w > 0), R[n] - R[m], or x_j < t (w < 0), R[m], so

        (S^T r)_q = (s + c [w_q > 0]) (w_q, b_q) . R[n] - c e_q (w_q, b_q) . R[m_q].

    O(n + m) per product. The neurons need not come sorted: :meth:`point_order`
    gives the order in which they do, and then every gather over them is a slice.
    :meth:`normal` applies S^T diag(D) S with the O(n) part split over MPI ranks
    that hold the same data and each their own neurons.
    """

    name = "relu1d"

    @classmethod
    def needs(cls, sigma, d):
        if not is_relu(sigma):
            return "relu or leaky_relu"
        return None if d == 1 else "1-D inputs; relu_tree takes any"

    @classmethod
    def point_order(cls, theta: np.ndarray) -> np.ndarray:
        """The neurons with w != 0 by kink (w < 0 first at ties), then those with w = 0: in this
        order every gather over the neurons is a slice."""
        w, b = theta[:, 0], theta[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -b / w
        moving = np.flatnonzero(w != 0)
        moving = moving[np.lexsort((w[moving] > 0, t[moving]))]
        return np.concatenate([moving, np.flatnonzero(w == 0)])

    @classmethod
    def split_points(cls, sigma, theta: np.ndarray):
        """(order, nm, moving, flat, sigma_flat): :meth:`point_order`, the number nm of points with
        w != 0, where they are (a slice when the points come in kink order, else their indices in that
        order), the indices of the points with w = 0 and their constant sigma(b)."""
        order = cls.point_order(theta)
        nm = int(np.count_nonzero(theta[:, 0]))
        moving = slice(0, nm) if np.array_equal(order, np.arange(theta.shape[0])) else order[:nm]
        flat = order[nm:]
        return order, nm, moving, flat, sigma(theta[flat, 1])

    def __init__(self, sigma, x, theta):
        super().__init__(sigma, x, theta)
        self.s, self.c = sigma.slope, 1.0 - sigma.slope
        order, nm, self.moving, self.flat, self.sigma_flat = self.split_points(sigma, theta)
        w, b = theta[order[:nm], 0], theta[order[:nm], 1]  # in kink order
        e = np.where(w > 0, 1.0, -1.0)
        self.w, self.b, self.cew, self.ceb = w, b, self.c * e * w, self.c * e * b
        self.negative = (e < 0).astype(float)
        self.coef = self.s + self.c * (e > 0)
        t = -b / w
        self.data_order = np.argsort(x[:, 0], kind="stable")
        self.xs = x[self.data_order, 0]
        pos = e > 0
        self.k = (np.searchsorted(t[pos], self.xs, side="left")  # kinks below x: the active prefix
                  + np.searchsorted(t[~pos], self.xs, side="right"))
        self.m = np.where(pos, np.searchsorted(self.xs, t, side="right"), np.searchsorted(self.xs, t, side="left"))
        n = x.shape[0]
        self._g = np.empty(nm) if isinstance(self.moving, np.ndarray) else None
        self._v, self._h = np.empty(nm), np.empty(nm)
        self._T = np.zeros((2, nm + 1))  # prefix sums of c e w g and c e b g
        self._R = np.zeros((2, n + 1))  # prefix sums of r x and r over the sorted data
        self._a, self._f = np.empty(n), np.empty(n)

    def _in_kink_order(self, g):
        """The values of g at the neurons with w != 0, in kink order (a view when they come sorted)."""
        return g[self.moving] if self._g is None else np.take(g, self.moving, out=self._g)

    def _everywhere(self, v):
        """c N + s G for one component, given v = c e (w or b) g: the part every data point sees."""
        cN = -(self.negative @ v)
        return cN + (self.s / self.c) * (v.sum() + 2 * cN)

    def matvec(self, g, out=None):
        out = np.empty(self.xs.size) if out is None else out
        gm = self._in_kink_order(g)
        v, T, a, f = self._v, self._T, self._a, self._f
        const = []
        for k, ce in enumerate((self.cew, self.ceb)):
            np.multiply(gm, ce, out=v)
            np.cumsum(v, out=T[k, 1:])
            const.append(self._everywhere(v))
        np.take(T[0], self.k, out=a)
        a += const[0]
        a *= self.xs
        np.take(T[1], self.k, out=f)
        f += a
        f += const[1] + self.sigma_flat @ g[self.flat]
        out[self.data_order] = f
        return out

    def rmatvec(self, r, out=None):
        R = self._R
        rs = np.take(r, self.data_order, out=self._f)
        np.cumsum(rs, out=R[1, 1:])
        np.cumsum(np.multiply(rs, self.xs, out=self._a), out=R[0, 1:])
        return self._from_prefix_sums(R, out)

    def _from_prefix_sums(self, R, out=None):
        """S^T r from the prefix sums R = (sum r x, sum r) over the sorted data."""
        out = np.empty(self.theta.shape[0]) if out is None else out
        h, v = self._h, self._v
        np.multiply(self.w, R[0, -1], out=h)
        h += np.multiply(self.b, R[1, -1], out=v)
        h *= self.coef
        for k, ce in enumerate((self.cew, self.ceb)):
            np.take(R[k], self.m, out=v)
            v *= ce
            h -= v
        out[self.moving] = h
        out[self.flat] = self.sigma_flat * R[1, -1]
        return out

    def distribute(self, comm: MPI.Comm) -> None:
        """Share the O(n) work of :meth:`normal` over the ranks of comm, which all hold the same data
        (and each its own neurons): rank p takes the sorted data points n p / P ... n (p + 1) / P - 1."""
        n, nm, P = self.xs.size, self.w.size, comm.size
        bounds = [n * p // P for p in range(P + 1)]
        self.comm, self.counts = comm, np.diff(bounds)
        self.chunk = slice(bounds[comm.rank], bounds[comm.rank + 1])
        self.chunk_order = self.data_order[self.chunk]
        # neuron i (kink order) is in the active prefix of the sorted data points j >= J_i
        self.J = np.searchsorted(self.k, np.arange(nm), side="right")
        self._hist = np.zeros((2, n + 1))
        m = self.counts[comm.rank]
        self._chunk = np.empty((2, m))
        self._rc = np.empty((2, m))

    def _add_lower_chunks(self, prefix):
        """Chunk-local prefix sums (2, m) -> global ones: add the totals of the lower ranks' chunks."""
        totals = prefix[:, -1].copy() if prefix.shape[1] else np.zeros(2)
        lower = np.zeros(2)
        self.comm.Exscan(totals, lower, op=MPI.SUM)  # lower ranks' totals (rank 0: left at 0)
        if self.comm.rank > 0:
            prefix += lower[:, None]

    def normal_block(self, G, D, scale):
        """:meth:`normal` column by column (its O(n) work is already split over the ranks)."""
        return np.column_stack([self.normal(np.ascontiguousarray(G[:, j]), D, scale) for j in range(G.shape[1])])

    def normal(self, g, D, scale, out=None):
        """S^T diag(scale D) S g, D in the data's order. Each rank adds its neurons' (w, b) g into
        bins of the sorted data (a difference array), the bins are summed and scattered over the
        ranks (MPI_Reduce_scatter), each rank turns its chunk into predictions f and r = scale D f
        and prefix sums of (r x, r), which are gathered (MPI_Allgatherv) for the neurons."""
        comm = self.comm
        gm = self._in_kink_order(g)
        v, hist, WB = self._v, self._hist, self._chunk
        for k, ce in enumerate((self.cew, self.ceb)):
            np.multiply(gm, ce, out=v)  # c e (w, b) g
            hist[k] = np.bincount(self.J, weights=v, minlength=hist.shape[1])  # 5x faster than np.add.at
            hist[k, 0] += self._everywhere(v)
        hist[1, 0] += self.sigma_flat @ g[self.flat]  # the constant neurons
        for k in range(2):
            comm.Reduce_scatter(hist[k, :-1], WB[k], recvcounts=self.counts, op=MPI.SUM)
        self._add_lower_chunks(np.cumsum(WB, axis=1, out=WB))  # (W(x_j), B(x_j)) on this chunk
        xs = self.xs[self.chunk]
        f = WB[0]
        f *= xs
        f += WB[1]  # f_j = x_j W(x_j) + B(x_j)
        rc = self._rc
        r = np.take(D, self.chunk_order, out=rc[1])
        r *= f
        r *= scale
        np.multiply(r, xs, out=rc[0])
        self._add_lower_chunks(np.cumsum(rc, axis=1, out=rc))  # prefix sums of (r x, r)
        R = self._R
        for k in range(2):
            comm.Allgatherv(rc[k], [R[k, 1:], self.counts])
        return self._from_prefix_sums(R, out)
