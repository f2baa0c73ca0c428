"""The data operator Phi: density -> predictions at the data points.

    f_u(x) = integral_Omega sigma(theta . x~) u(theta) d theta,   x~ = (x, 1),

discretised with a quadrature rule (theta_q, q_q) on the cells of the mesh:

    f_U(x_j) = sum_q sigma(theta_q . x~_j) g_q,    g = W Psi U,

where Psi_qk = psi_k(theta_q) evaluates the basis functions and W holds the
weights q_q |det J|. So Phi = S W Psi with S_jq = sigma(theta_q . x~_j).
W Psi is a sparse matrix (a row per point) on each rank's own cells;
S is never stored as an n x nq matrix. It is applied by one of
:class:`Features`' subclasses:

* :class:`DenseFeatures`: any sigma and d, sigma evaluated on the fly in
  blocks of data points; O(n nq) work, O(block nq) memory. Exact.
* :class:`ReluFeatures1D`: relu and leaky relu, d = 1. With t_q = -b_q / w_q
  the neuron q is active for x > t_q (w_q > 0) or x < t_q (w_q < 0), so
  S g and S^T r are prefix sums over the sorted t_q and sorted x_j:
  O(n + nq) per product after an O((n + nq) log) sort. Exact.
* :class:`ReluTreeFeatures`: relu and leaky relu, any d. A k-d tree over the
  theta_q: on a node entirely on one side of the hyperplane theta . x~_j = 0
  relu is linear (or zero), so only the leaves the hyperplane cuts need sigma
  pointwise; about n sqrt(nq) stored entries on a surface mesh. Exact.
* :class:`MonomialFeatures`: sigma(z) = z^k, any d. (theta . x~)^k =
  sum_{|a| = k} k!/a! theta^a x~^a, so S = P(x) Q(theta)^T has rank
  binom(d + k, k). Exact.

In parallel each rank holds the quadrature points of its own cells and all
data points: predictions are an MPI sum over ranks; S^T r needs no
communication; Psi^T gathers into the dof vector with a reverse scatter.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import scipy.sparse

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import basix  # noqa: E402
import dolfinx.fem  # noqa: E402
import dolfinx.la  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem.activations import Activation, activation as _activation  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402

METHODS = ("auto", "dense", "relu1d", "relu_tree", "monomial")
TREE_MAX_ENTRIES = 2**27  # stored entries of a relu tree per rank (12 bytes each: 1.5 GiB)


class Quadrature:
    """The rule (theta_q, q_q |det J|) on this rank's cells and the sparse matrix W Psi (points x local dofs)."""

    def __init__(self, H: WeightedH1, degree: int | None = None):
        mesh, V = H.space.mesh, H.V
        self.degree = degree = 2 * H.degree if degree is None else int(degree)
        cell = mesh.topology.cell_type.name
        X, q = basix.make_quadrature(getattr(basix.CellType, cell), degree)
        J = ufl.Jacobian(mesh)
        detJ = ufl.sqrt(ufl.det(J.T * J))  # |det J|, and the area element on the circle and sphere
        tdim = mesh.topology.dim
        cells = np.arange(mesh.topology.index_map(tdim).size_local, dtype=np.int32)
        theta = dolfinx.fem.Expression(ufl.SpatialCoordinate(mesh), X).eval(mesh, cells)
        psi = dolfinx.fem.Expression(detJ * ufl.TrialFunction(V), X).eval(mesh, cells)
        self.theta = theta.reshape(-1, mesh.geometry.dim)  # (ncells * nqp, d + 1)
        ndofs_cell = V.dofmap.dof_layout.num_dofs  # not -1: a rank that owns no cells has an empty psi
        Wpsi = psi.reshape(len(cells), len(q), ndofs_cell) * q[None, :, None]
        dofs = V.dofmap.list[cells]  # local dof indices, owned and ghost
        npoints, k = self.theta.shape[0], dofs.shape[1]
        im = V.dofmap.index_map
        self.num_owned = im.size_local
        # (W Psi)_{q, i} = q_q |det J| psi_i(theta_q): a row per point, a column per local dof
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
        """g = W Psi U: the weight q_q |det J| u(theta_q) of every local quadrature point."""
        w = self._work
        w.x.array[: self.num_owned] = U.array_r
        w.x.scatter_forward()
        out = np.empty(self.num_points) if out is None else out
        g = PETSc.Vec().createWithArray(out, comm=MPI.COMM_SELF)
        self._matrix.mult(self._local, g)
        g.destroy()
        return out

    def transpose(self, h: np.ndarray, out) -> None:
        """out = Psi^T W h, i.e. the vector of integral h v d theta over all test functions v."""
        hv = PETSc.Vec().createWithArray(np.ascontiguousarray(h, dtype=float), comm=MPI.COMM_SELF)
        self._matrix.multTranspose(hv, self._local)  # into the owned and ghost entries of _work
        hv.destroy()
        w = self._work
        w.x.scatter_reverse(dolfinx.la.InsertMode.add)
        out.array[:] = w.x.array[: self.num_owned]


# -- the feature matrix S_jq = sigma(theta_q . x~_j) ---------------------------------------


class Features:
    """S_jq = sigma(theta_q . x~_j) for data x (n, d) and points theta (m, d + 1), applied matrix-free."""

    exact = True

    def __init__(self, sigma: Activation, x: np.ndarray, theta: np.ndarray):
        self.sigma, self.x, self.theta = sigma, x, theta

    def matvec(self, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """S g, shape (n,) (into ``out`` if given)."""
        raise NotImplementedError

    def rmatvec(self, r: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """S^T r, shape (m,) (into ``out`` if given)."""
        raise NotImplementedError

    def dense(self) -> np.ndarray:
        """S as an (n, m) array: for small problems and tests only."""
        return self.sigma(self.x @ self.theta[:, :-1].T + self.theta[:, -1])


class DenseFeatures(Features):
    """S applied block by block: sigma is evaluated on the fly, never stored whole."""

    def __init__(self, sigma, x, theta, block_entries: int = 2**22):
        super().__init__(sigma, x, theta)
        self.block = max(1, block_entries // max(1, theta.shape[0]))

    def _blocks(self):
        W, b = self.theta[:, :-1], self.theta[:, -1]
        for s in range(0, self.x.shape[0], self.block):
            yield s, self.sigma(self.x[s:s + self.block] @ W.T + b)

    def matvec(self, g, out=None):
        out = np.empty(self.x.shape[0]) if out is None else out
        for s, S in self._blocks():
            np.dot(S, g, out=out[s:s + S.shape[0]])
        return out

    def rmatvec(self, r, out=None):
        out = np.empty(self.theta.shape[0]) if out is None else out
        out[:] = 0.0
        for s, S in self._blocks():
            out += r[s:s + S.shape[0]] @ S
        return out


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

    O(n + m) per product. The neurons need not come sorted: :meth:`kink_order`
    gives the order in which they do, and then every gather over them is a slice.
    :meth:`normal` applies S^T diag(D) S with the O(n) part split over MPI ranks
    that hold the same data and each their own neurons.
    """

    @staticmethod
    def kink_order(theta: np.ndarray) -> np.ndarray:
        """The neurons with w != 0 by kink (w < 0 first at ties), then those with w = 0."""
        w, b = theta[:, 0], theta[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -b / w
        moving = np.flatnonzero(w != 0)
        moving = moving[np.lexsort((w[moving] > 0, t[moving]))]
        return np.concatenate([moving, np.flatnonzero(w == 0)])

    def __init__(self, sigma, x, theta):
        super().__init__(sigma, x, theta)
        self.s, self.c = sigma.slope, 1.0 - sigma.slope
        order = self.kink_order(theta)
        nm = int(np.count_nonzero(theta[:, 0]))
        self.moving = slice(0, nm) if np.array_equal(order, np.arange(theta.shape[0])) else order[:nm]
        self.flat = order[nm:]
        self.sigma_flat = sigma(theta[self.flat, 1])  # w = 0: the constant sigma(b)
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

    def normal(self, g, D, scale, out=None):
        """S^T diag(scale D) S g, D in the data's order. Each rank adds its neurons' (w, b) g into
        bins of the sorted data (a difference array), the bins are summed and scattered over the
        ranks (MPI_Reduce_scatter), each rank turns its chunk into predictions f and r = scale D f
        and prefix sums of (r x, r), which are gathered (MPI_Allgatherv) for the neurons."""
        comm = self.comm
        gm = self._in_kink_order(g)
        v, hist, WB = self._v, self._hist, self._chunk
        hist[:] = 0.0
        for k, ce in enumerate((self.cew, self.ceb)):
            np.multiply(gm, ce, out=v)  # c e (w, b) g
            hist[k, 0] = self._everywhere(v)
            np.add.at(hist[k], self.J, v)
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


class StorageLimit(ValueError):
    """A fast representation of S would need more memory than allowed."""


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

    def __init__(self, sigma, x, theta, leaf_size: int = 8, chunk: int = 4096, max_entries: int | None = None):
        super().__init__(sigma, x, theta)
        max_entries = TREE_MAX_ENTRIES if max_entries is None else max_entries
        self.s, self.c = sigma.slope, 1.0 - sigma.slope
        self.xt = np.hstack([x, np.ones((x.shape[0], 1))])
        self._build_tree(leaf_size)
        n, parts, stored = x.shape[0], [], 0
        for j in range(0, n, chunk):  # in chunks of data points: bounded memory while building
            parts.append(self._traverse(j, min(j + chunk, n)))
            stored += parts[-1][0].nnz + parts[-1][1].nnz
            if stored * n / min(j + chunk, n) > max_entries:
                raise StorageLimit(
                    f"the relu tree for {n} data points and {theta.shape[0]} quadrature points would store "
                    f"about {stored * n / min(j + chunk, n):.2g} entries (limit {max_entries:.2g})"
                )
        self.P = scipy.sparse.vstack([p for p, _ in parts], format="csr")  # (n, nodes): maximal positive nodes
        self.C = scipy.sparse.vstack([c for _, c in parts], format="csr")  # (n, m in tree order): cut leaves

    def _build_tree(self, leaf_size):
        """Balanced k-d tree: node i holds the points perm[start_i:end_i], children left_i and left_i + 1 (-1: leaf)."""
        theta = self.theta
        m, D = theta.shape
        perm = np.arange(m)
        start, end, left, centre, radius = [0], [m], [-1], [], []
        i = 0
        while i < len(start):
            a, b = start[i], end[i]
            pts = theta[perm[a:b]]
            lo, hi = pts.min(axis=0, initial=np.inf), pts.max(axis=0, initial=-np.inf)
            mid = 0.5 * (lo + hi) if b > a else np.zeros(D)
            centre.append(mid)
            radius.append(np.sqrt(((pts - mid) ** 2).sum(axis=1).max(initial=0.0)))
            if b - a > leaf_size:  # split at the median of the widest coordinate
                half = (b - a) // 2
                perm[a:b] = perm[a:b][np.argpartition(pts[:, np.argmax(hi - lo)], half)]
                left[i] = len(start)
                start += [a, a + half]
                end += [a + half, b]
                left += [-1, -1]
            i += 1
        self.perm, self.theta_t = perm, theta[perm]
        self.start, self.end, self.left = np.array(start), np.array(end), np.array(left)
        self.centre, self.radius = np.array(centre), np.array(radius)

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


class MonomialFeatures(Features):
    """Exact low-rank S = P(x) Q(theta)^T for sigma(z) = z^k."""

    def __init__(self, sigma, x, theta):
        super().__init__(sigma, x, theta)
        k, D = sigma.power, theta.shape[1]
        xt = np.hstack([x, np.ones((x.shape[0], 1))])
        P, Q = [], []
        for combo in itertools.combinations_with_replacement(range(D), k):
            counts = np.bincount(combo, minlength=D)
            coef = math.factorial(k) / np.prod([math.factorial(c) for c in counts])
            P.append(np.prod(xt**counts, axis=1))
            Q.append(coef * np.prod(theta**counts, axis=1))
        self.P, self.Q = np.column_stack(P), np.column_stack(Q)

    def matvec(self, g, out=None):
        return np.dot(self.P, self.Q.T @ g, out=out)

    def rmatvec(self, r, out=None):
        return np.dot(self.Q, self.P.T @ r, out=out)


def resolve_method(sigma: Activation, d: int, method: str = "auto", repeated: bool = True) -> str:
    """The feature-product method for this sigma and input dimension d (``method`` forces one).

    auto: relu1d for relu on 1-D inputs, relu_tree for relu on more (unless
    ``repeated`` is False: for a single product, where building the tree costs
    a few dense products), monomial for z^k, dense otherwise.
    """
    if method not in METHODS:
        raise ValueError(f"unknown data-operator method {method!r}: choose one of {', '.join(METHODS)}")
    relu = sigma.degree == 1 and sigma.power == 0  # monomial:1 is 1-homogeneous too
    if method in ("relu1d", "relu_tree") and not relu:
        raise ValueError(f"method {method} needs relu or leaky_relu")
    if method == "relu1d" and d != 1:
        raise ValueError("method relu1d needs 1-D inputs; relu_tree takes any")
    if method == "monomial" and not sigma.power > 0:
        raise ValueError("method monomial needs the activation monomial:k")
    if method != "auto":
        return method
    if relu:
        return "relu1d" if d == 1 else "relu_tree" if repeated else "dense"
    return "monomial" if sigma.power > 0 else "dense"


def features(sigma: Activation, x: np.ndarray, theta: np.ndarray, method: str = "auto",
             repeated: bool = True) -> Features:
    """The fastest exact representation of S (see :func:`resolve_method`). With method auto, a
    relu tree over its storage limit gives way (with a warning) to the dense evaluation."""
    chosen = resolve_method(sigma, x.shape[1], method, repeated)
    if chosen == "relu_tree" and method == "auto":
        try:
            return ReluTreeFeatures(sigma, x, theta)
        except StorageLimit as e:
            warnings.warn(f"{e}: evaluating sigma densely instead (O(n m) work per product, bounded memory)")
            chosen = "dense"
    return {"relu1d": ReluFeatures1D, "relu_tree": ReluTreeFeatures, "monomial": MonomialFeatures,
            "dense": DenseFeatures}[chosen](sigma, x, theta)


# -- Phi ---------------------------------------------------------------------------------


class DataOperator:
    """Phi: U -> (f_U(x_j))_j for replicated data x (n, d); Phi^T r assembled into a dof vector."""

    def __init__(self, H: WeightedH1, sigma: Activation | str, x: np.ndarray,
                 quadrature_degree: int | None = None, method: str = "auto"):
        self.H = H
        self.sigma = _activation(sigma)
        self.method = method
        self.quadrature = Quadrature(H, quadrature_degree)
        self.x = np.ascontiguousarray(x, dtype=float)
        if resolve_method(self.sigma, self.x.shape[1], method) == "relu1d":  # points in kink order: no gathers
            self.quadrature.permute(ReluFeatures1D.kink_order(self.quadrature.theta))
        self.S = features(self.sigma, self.x, self.quadrature.theta, method)
        self._g = np.empty(self.quadrature.num_points)  # work buffer: a value per quadrature point
        self._f = np.empty(self.n)  # work buffer: a value per data point
        self.comm: MPI.Comm = H.space.comm
        if isinstance(self.S, ReluFeatures1D):
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

        For relu in 1-D the O(n) part is shared over the ranks (:meth:`ReluFeatures1D.normal`);
        otherwise Phi U is summed over the ranks and Phi^T applied to D Phi U / n on each."""
        if isinstance(self.S, ReluFeatures1D):
            g = self.quadrature.weights(U, self._g)
            self.quadrature.transpose(self.S.normal(g, D, 1.0 / self.n, g), out)
            return
        f = self.apply(U, self._f)
        f *= D
        f /= self.n
        self.adjoint(f, out)

    def predict(self, U, x: np.ndarray) -> np.ndarray:
        """f_U at new points x (m, d), on every rank."""
        S = features(self.sigma, np.ascontiguousarray(x, dtype=float), self.quadrature.theta, self.method,
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
            S = self.sigma(self.x[j0:j0 + block] @ theta[:, :-1].T + theta[:, -1])  # (block, nq_local)
            local = PsiTW @ S.T  # (owned + ghost dofs, block)
            for j in range(local.shape[1]):
                q._work.x.array[:] = local[:, j]
                q._work.x.scatter_reverse(dolfinx.la.InsertMode.add)
                result[:, j0 + j] = q._work.x.array[: q.num_owned]
        return result
