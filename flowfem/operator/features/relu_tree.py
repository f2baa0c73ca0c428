"""S for relu and leaky relu on inputs of any dimension: a k-d tree over the points.

On a tree node entirely on one side of the hyperplane theta . x~_j = 0 relu
is linear (or zero), so only the leaves the hyperplane cuts need sigma
pointwise; about n sqrt(m) stored entries on a surface mesh. Exact.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from flowfem.operator.features.base import Features, StorageLimit, augment, is_relu

TREE_MAX_ENTRIES = 2**27  # stored entries of a relu tree per rank (12 bytes each: 1.5 GiB)
# data points are traversed in chunks of about CHUNK_ENTRIES stored entries: a traversal's temporaries take
# about 170 bytes per entry, and a fixed 4096 points (all 4.6e7 entries of the default 2-D box) peaked at 7.5 GiB
CHUNK_ENTRIES = 2**20
# a block product works on D b doubles per point (moments, prefix sums): columns are taken in groups whose
# arrays stay within about this many bytes. Measured per column, S G plus S^T R, blocks of 8 against single
# columns: 406 against 212 ms on the default 2-D box (786,432 points), 219 against 232 ms (196 in groups of
# 4) on 98,304 points, and 2 against 3 ms on 3840
BLOCK_BYTES = 2**23


class ReluTreeFeatures(Features):
    """Exact S g and S^T r for sigma(z) = max(z, s z) = s z + c relu(z), c = 1 - s, any d: a k-d tree over theta.

    If a tree node's bounding ball (centre m, radius rho) lies on the positive
    side of the hyperplane theta . x~ = 0, i.e. m . x~ > rho |x~|, then
    relu(theta . x~) = theta . x~ on all its points; on the negative side it is
    0. One traversal finds for each data point x the maximal positive nodes
    N+(x) and the leaves the hyperplane cuts, C(x), and

        (S g)(x) = s x~ . Theta^T g + c [x~ . sum_{nu in N+(x)} M_nu + sum_{q in C(x)} relu(theta_q . x~) g_q],

    M_nu = sum_{q in nu} theta_q g_q (differences of prefix sums in tree order:
    O(m) for all nodes). S^T r likewise, with the transposed sparse matrices.
    Only the cut leaves' entries are stored, about n sqrt(m) on a surface mesh
    (n m^(2/3) in a volume) against the n m of a dense product.
    """

    name = "relu_tree"
    single_use = False  # building the tree costs a few dense products

    @classmethod
    def needs(cls, sigma, d):
        return None if is_relu(sigma) else "relu or leaky_relu"

    def __init__(self, sigma, x, theta, leaf_size: int = 8, chunk: int = 64, max_entries: int | None = None):
        """``chunk``: data points of the first traversal chunk; the next ones hold about CHUNK_ENTRIES
        entries each (16 to 4096 points), at the entries per point seen so far."""
        super().__init__(sigma, x, theta)
        max_entries = TREE_MAX_ENTRIES if max_entries is None else max_entries
        self.s, self.c = sigma.slope, 1.0 - sigma.slope
        self.xt = augment(x)
        self._build_tree(leaf_size)
        n, parts, stored, j = x.shape[0], [], 0, 0
        while j < n:  # in chunks of data points: bounded memory while building
            stop = min(j + chunk, n)
            parts.append(self._traverse(j, stop))
            stored += parts[-1][0].nnz + parts[-1][1].nnz
            if stored * n / stop > max_entries:
                raise StorageLimit(
                    f"the relu tree for {n} data points and {theta.shape[0]} quadrature points would store "
                    f"about {stored * n / stop:.2g} entries (limit {max_entries:.2g})"
                )
            chunk, j = int(np.clip(CHUNK_ENTRIES * stop / max(stored, 1), 16, 4096)), stop
        self.P = scipy.sparse.vstack([p for p, _ in parts], format="csr")  # (n, nodes): maximal positive nodes
        self.C = scipy.sparse.vstack([c for _, c in parts], format="csr")  # (n, m in tree order): cut leaves

    def _build_tree(self, leaf_size):
        """Balanced k-d tree: node i holds the points perm[start_i:end_i], children left_i and left_i + 1 (-1: leaf).

        Built a level at a time (the nodes numbered breadth first): each node's bounding box, centre and
        radius by segment reductions over its points, and the split at the median of its widest coordinate
        by one sort of every point of the level by (node, coordinate), not a Python loop over the nodes
        (measured on the default 2-D box's 786,432 points, 262,143 nodes: 4.3 s against 6.5 s)."""
        theta = self.theta
        m, D = theta.shape
        perm = np.arange(m)
        start, end, left, centre, radius = [np.array([0])], [np.array([m])], [], [], []
        if m == 0:
            start, end = [np.zeros(1, dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
            left, centre, radius = [np.array([-1])], [np.zeros((1, D))], [np.zeros(1)]
        count = 0  # the number of the level's first node (breadth first)
        while m and start[-1].size:
            a, b = start[-1], end[-1]  # the nodes of this level, in order; none is empty
            size = b - a
            node = np.repeat(np.arange(a.size), size)  # the level's points: their node, their place in perm
            place = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size - a, size)
            pts = theta[perm[place]]
            first = np.cumsum(size) - size  # each node's first point among the level's points
            lo, hi = np.minimum.reduceat(pts, first, axis=0), np.maximum.reduceat(pts, first, axis=0)
            mid = 0.5 * (lo + hi)
            centre.append(mid)
            radius.append(np.sqrt(np.maximum.reduceat(((pts - mid[node]) ** 2).sum(axis=1), first)))
            split = size > leaf_size
            widest = np.argmax(hi - lo, axis=1)
            # the points of the nodes that split, sorted by (node, widest coordinate): each lower half is
            # then the half of its node below the median
            cut = split[node]
            order = np.lexsort((pts[cut, widest[node[cut]]], node[cut]))
            perm[place[cut]] = perm[place[cut]][order]
            half = size[split] // 2
            children = np.empty(2 * half.size, dtype=np.int64)
            children[0::2], children[1::2] = a[split], a[split] + half
            stops = np.empty_like(children)
            stops[0::2], stops[1::2] = a[split] + half, b[split]
            left.append(np.where(split, count + a.size + 2 * (np.cumsum(split) - 1), -1))
            count += a.size
            start.append(children)
            end.append(stops)
        start, end = np.concatenate(start), np.concatenate(end)
        left, centre, radius = np.concatenate(left), np.concatenate(centre), np.concatenate(radius)
        self.perm, self.theta_t = perm, theta[perm]
        self.start, self.end, self.left, self.centre, self.radius = start, end, left, centre, radius

    def _traverse(self, j0, j1):
        """For data points j0..j1-1: the rows of P (1 at maximal positive nodes) and of C (cut leaves' relu)."""
        xt = self.xt[j0:j1]
        xnorm = np.linalg.norm(xt, axis=1)
        cnorm = np.linalg.norm(self.centre, axis=1)
        J, N = np.arange(xt.shape[0]), np.zeros(xt.shape[0], dtype=np.int64)
        pos, cut = [], []
        while J.size:
            z = np.einsum("jk,jk->j", xt[J], self.centre[N])
            lim = self.radius[N] * xnorm[J]
            tol = 1e-13 * (cnorm[N] + self.radius[N]) * xnorm[J]  # rounding in z and lim
            positive, negative = z - lim > tol, z + lim < -tol
            pos.append((J[positive], N[positive]))
            rest = ~(positive | negative)
            J, N = J[rest], N[rest]
            leaf = self.left[N] < 0
            cut.append((J[leaf], N[leaf]))
            J, N = np.repeat(J[~leaf], 2), (self.left[N[~leaf]][:, None] + np.arange(2)).ravel()
        rows = j1 - j0
        pj, pn = (np.concatenate(a) for a in zip(*pos))
        P = scipy.sparse.csr_matrix((np.ones(pj.size), (pj, pn)), shape=(rows, len(self.start)))
        cj, cn = (np.concatenate(a) for a in zip(*cut))
        length = self.end[cn] - self.start[cn]
        i = np.repeat(cj, length)  # one entry per (data point, point of a cut leaf)
        q = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length - self.start[cn], length)
        z = np.einsum("jk,jk->j", xt[i], self.theta_t[q])
        keep = z > 0
        C = scipy.sparse.csr_matrix((z[keep], (i[keep], q[keep])), shape=(rows, len(self.perm)))
        return P, C

    def matvec(self, g, out=None):
        gt = g[self.perm]
        prefix = np.zeros((gt.size + 1, self.xt.shape[1]))
        np.cumsum(self.theta_t * gt[:, None], axis=0, out=prefix[1:])
        M = prefix[self.end] - prefix[self.start]  # node moments sum theta_q g_q
        f = np.einsum("jk,jk->j", self.xt, self.P @ M)
        f += self.C @ gt
        if self.s:
            f *= self.c
            f += self.s * (self.xt @ (self.theta.T @ g))
        if out is None:
            return f
        out[:] = f
        return out

    def _width(self) -> int:
        """Columns per group of a block product: D b doubles per point within BLOCK_BYTES, per data point
        (S G's P M and S^T R's R x~ are (n, D b)) as per quadrature point (prefix sums (m, D b)): on a rank
        of few quadrature points n is the larger."""
        points = max(self.perm.size, self.xt.shape[0], 1)
        return max(1, BLOCK_BYTES // (8 * self.xt.shape[1] * points))

    def matmat(self, G):
        """S G for a block G (m, b), in groups of :meth:`_width` columns (single columns by :meth:`matvec`)."""
        w = self._width()
        if w == 1:
            return super().matmat(G)
        return np.hstack([self._matmat(G[:, j:j + w]) for j in range(0, G.shape[1], w)])

    def rmatmat(self, R):
        """S^T R for a block R (n, b), in groups of :meth:`_width` columns as :meth:`matmat`."""
        w = self._width()
        if w == 1:
            return super().rmatmat(R)
        return np.hstack([self._rmatmat(R[:, j:j + w]) for j in range(0, R.shape[1], w)])

    def _matmat(self, G):
        """S G for a block G (m, b): one tree pass for the b columns, node moments (D, b, nodes).

        Every prefix sum runs along a contiguous axis (a cumsum down the rows of an (m, D b) array
        reads each cache line D b times), and the cut leaves are applied column by column: scipy's
        multi-vector CSR kernel took twice as long per vector as its single-vector one (0.14 against
        0.07 s for the 4.6e7 entries of the default 2-D box)."""
        b = G.shape[1]
        Gt = np.ascontiguousarray(G[self.perm].T)  # (b, m) in tree order
        moments = []
        prefix = np.zeros((b, Gt.shape[1] + 1))
        for k in range(self.xt.shape[1]):
            np.cumsum(self.theta_t[:, k] * Gt, axis=1, out=prefix[:, 1:])
            moments.append(prefix[:, self.end] - prefix[:, self.start])  # (b, nodes)
        M = np.stack(moments, axis=1).reshape(-1, self.start.size).T  # (nodes, b D)
        F = np.einsum("jk,jbk->jb", self.xt, (self.P @ M).reshape(-1, b, self.xt.shape[1]))
        for c in range(b):
            F[:, c] += self.C @ Gt[c]
        if self.s:
            F *= self.c
            F += self.s * (self.xt @ (self.theta.T @ G))
        return F

    def _rmatmat(self, R):
        """S^T R for a block R (n, b): the transpose of :meth:`_matmat`, pushed down the tree
        along contiguous rows likewise."""
        n, b = R.shape
        D, m = self.xt.shape[1], self.perm.size
        Q = (self.P.T @ (R[:, :, None] * self.xt[:, None, :]).reshape(n, b * D)).T  # (b D, nodes)
        # pushed down to the points, as in rmatvec: row r of acc is Q's row r at the node starts
        # minus at the node ends, one bincount for all b D rows, then a cumsum along each row
        rows = (m + 1) * np.arange(b * D)[:, None]
        acc = (np.bincount((rows + self.start).ravel(), Q.ravel(), minlength=(m + 1) * b * D)
               - np.bincount((rows + self.end).ravel(), Q.ravel(), minlength=(m + 1) * b * D))
        acc = np.cumsum(acc.reshape(b, D, m + 1)[:, :, :m], axis=2)
        out = np.einsum("qk,bkq->bq", self.theta_t, acc)
        Rt = np.ascontiguousarray(R.T)
        for c in range(b):
            out[c] += self.C.T @ Rt[c]
        result = np.empty((m, b))
        result[self.perm] = out.T
        if self.s:
            result *= self.c
            result += self.s * (self.theta @ (self.xt.T @ R))
        return result

    def rmatvec(self, r, out=None):
        Q = self.P.T @ (self.xt * r[:, None])  # per node: sum over the data it is maximal positive for
        m = self.perm.size
        acc = np.empty((m + 1, Q.shape[1]))  # pushed down to the points: sum over the ancestors' Q
        for k in range(Q.shape[1]):
            acc[:, k] = (np.bincount(self.start, Q[:, k], minlength=m + 1)
                         - np.bincount(self.end, Q[:, k], minlength=m + 1))
        np.cumsum(acc, axis=0, out=acc)
        out = np.empty(m) if out is None else out
        out[self.perm] = np.einsum("qk,qk->q", self.theta_t, acc[:m]) + self.C.T @ r
        if self.s:
            out *= self.c
            out += self.s * (self.theta @ (self.xt.T @ r))
        return out
