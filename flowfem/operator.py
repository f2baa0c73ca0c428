"""The data operator Phi: density -> predictions at the data points.

    f_u(x) = integral_Omega sigma(theta . x~) u(theta) d theta,   x~ = (x, 1),

discretised with a quadrature rule (theta_q, q_q) on the cells of the mesh:

    f_U(x_j) = sum_q sigma(theta_q . x~_j) g_q,    g = W Psi U,

where Psi_qk = psi_k(theta_q) evaluates the basis functions and W holds the
weights q_q |det J|. So Phi = S W Psi with S_jq = sigma(theta_q . x~_j).
Psi is sparse (cellwise) and applied with NumPy on each rank's own cells;
S is never stored as an n x nq matrix. It is applied by one of
:class:`Features`' subclasses:

* :class:`DenseFeatures`: any sigma and d, sigma evaluated on the fly in
  blocks of data points; O(n nq) work, O(block nq) memory. Exact.
* :class:`ReluFeatures1D`: relu and leaky relu, d = 1. With t_q = -b_q / w_q
  the neuron q is active for x > t_q (w_q > 0) or x < t_q (w_q < 0), so
  S g and S^T r are prefix sums over the sorted t_q and sorted x_j:
  O(n + nq) per product after an O((n + nq) log) sort. Exact.
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

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import basix  # noqa: E402
import dolfinx.fem  # noqa: E402
import dolfinx.la  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402

from flowfem.activations import Activation, activation as _activation  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402

METHODS = ("auto", "dense", "relu1d", "monomial")


class Quadrature:
    """The rule (theta_q, q_q |det J|) on this rank's cells and the cellwise matrix W Psi."""

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
        self.Wpsi = psi.reshape(len(cells), len(q), -1) * q[None, :, None]  # (ncells, nqp, ndofs_cell)
        self.dofs = V.dofmap.list[cells]  # local dof indices, owned and ghost
        im = V.dofmap.index_map
        self.num_owned = im.size_local
        self._work = dolfinx.fem.Function(V)
        self.comm = mesh.comm

    @property
    def num_points(self) -> int:
        """Quadrature points on this rank."""
        return self.theta.shape[0]

    def weights(self, U) -> np.ndarray:
        """g = W Psi U: the weight q_q |det J| u(theta_q) of every local quadrature point."""
        w = self._work
        w.x.array[: self.num_owned] = U.array_r
        w.x.scatter_forward()
        return np.einsum("cqk,ck->cq", self.Wpsi, w.x.array[self.dofs]).ravel()

    def transpose(self, h: np.ndarray, out) -> None:
        """out = Psi^T W h, i.e. the vector of integral h v d theta over all test functions v."""
        w = self._work
        contrib = np.einsum("cqk,cq->ck", self.Wpsi, h.reshape(self.Wpsi.shape[:2]))
        w.x.array[:] = np.bincount(self.dofs.ravel(), contrib.ravel(), minlength=w.x.array.size)
        w.x.scatter_reverse(dolfinx.la.InsertMode.add)
        out.array[:] = w.x.array[: self.num_owned]


# -- the feature matrix S_jq = sigma(theta_q . x~_j) ---------------------------------------


class Features:
    """S_jq = sigma(theta_q . x~_j) for data x (n, d) and points theta (m, d + 1), applied matrix-free."""

    exact = True

    def __init__(self, sigma: Activation, x: np.ndarray, theta: np.ndarray):
        self.sigma, self.x, self.theta = sigma, x, theta

    def matvec(self, g: np.ndarray) -> np.ndarray:
        """S g, shape (n,)."""
        raise NotImplementedError

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """S^T r, shape (m,)."""
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

    def matvec(self, g):
        out = np.empty(self.x.shape[0])
        for s, S in self._blocks():
            out[s:s + S.shape[0]] = S @ g
        return out

    def rmatvec(self, r):
        out = np.zeros(self.theta.shape[0])
        for s, S in self._blocks():
            out += r[s:s + S.shape[0]] @ S
        return out


class ReluFeatures1D(Features):
    """Exact S g and S^T r for sigma(z) = max(z, s z), d = 1, by prefix sums over sorted kinks."""

    def __init__(self, sigma, x, theta):
        super().__init__(sigma, x, theta)
        self.s = sigma.slope
        xs = x[:, 0]
        w, b = theta[:, 0], theta[:, 1]
        self.w, self.b = w, b
        self.pos, self.neg = np.flatnonzero(w > 0), np.flatnonzero(w < 0)
        self.zero_active = (w == 0) & (b > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -b / w
        # S g: neurons sorted by kink; data point j sees the positive neurons with t < x_j
        self.pos = self.pos[np.argsort(t[self.pos], kind="stable")]
        self.neg = self.neg[np.argsort(t[self.neg], kind="stable")]
        self.kpos = np.searchsorted(t[self.pos], xs, side="left")  # pos[:kpos] active
        self.kneg = np.searchsorted(t[self.neg], xs, side="right")  # neg[kneg:] active
        # S^T r: data sorted; positive neuron q sees x_j > t_q, negative one x_j < t_q
        self.order = np.argsort(xs, kind="stable")
        xsorted = xs[self.order]
        self.xsorted = xsorted
        self.mpos = np.searchsorted(xsorted, t[self.pos], side="right")  # order[mpos:] active
        self.mneg = np.searchsorted(xsorted, t[self.neg], side="left")  # order[:mneg] active

    def matvec(self, g):
        x = self.x[:, 0]
        gw, gb = g * self.w, g * self.b
        out = self.s * (x * gw.sum() + gb.sum())
        cw = np.concatenate([[0.0], np.cumsum(gw[self.pos])])
        cb = np.concatenate([[0.0], np.cumsum(gb[self.pos])])
        relu = x * cw[self.kpos] + cb[self.kpos]
        cw = np.concatenate([[0.0], np.cumsum(gw[self.neg][::-1])])[::-1]  # suffix sums
        cb = np.concatenate([[0.0], np.cumsum(gb[self.neg][::-1])])[::-1]
        relu += x * cw[self.kneg] + cb[self.kneg]
        relu += np.dot(g[self.zero_active], self.b[self.zero_active])
        return out + (1.0 - self.s) * relu

    def rmatvec(self, r):
        rs = r[self.order]
        rx = rs * self.xsorted
        out = self.s * (self.w * rx.sum() + self.b * rs.sum())
        relu = np.zeros_like(out)
        suf_r = np.concatenate([np.cumsum(rs[::-1])[::-1], [0.0]])
        suf_rx = np.concatenate([np.cumsum(rx[::-1])[::-1], [0.0]])
        relu[self.pos] = self.w[self.pos] * suf_rx[self.mpos] + self.b[self.pos] * suf_r[self.mpos]
        pre_r = np.concatenate([[0.0], np.cumsum(rs)])
        pre_rx = np.concatenate([[0.0], np.cumsum(rx)])
        relu[self.neg] = self.w[self.neg] * pre_rx[self.mneg] + self.b[self.neg] * pre_r[self.mneg]
        relu[self.zero_active] = self.b[self.zero_active] * rs.sum()
        return out + (1.0 - self.s) * relu


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

    def matvec(self, g):
        return self.P @ (self.Q.T @ g)

    def rmatvec(self, r):
        return self.Q @ (self.P.T @ r)


def features(sigma: Activation, x: np.ndarray, theta: np.ndarray, method: str = "auto") -> Features:
    """The fastest exact representation of S for this sigma and d (``method`` forces one)."""
    if method not in METHODS:
        raise ValueError(f"unknown data-operator method {method!r}: choose one of {', '.join(METHODS)}")
    relu_ok = sigma.degree == 1 and sigma.power == 0 and x.shape[1] == 1  # monomial:1 is 1-homogeneous too
    mono_ok = sigma.power > 0
    if method == "relu1d" and not relu_ok:
        raise ValueError("method relu1d needs relu or leaky_relu and 1-D inputs")
    if method == "monomial" and not mono_ok:
        raise ValueError("method monomial needs the activation monomial:k")
    if method == "relu1d" or (method == "auto" and relu_ok):
        return ReluFeatures1D(sigma, x, theta)
    if method == "monomial" or (method == "auto" and mono_ok):
        return MonomialFeatures(sigma, x, theta)
    return DenseFeatures(sigma, x, theta)


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
        self.S = features(self.sigma, self.x, self.quadrature.theta, method)
        self.comm: MPI.Comm = H.space.comm

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def apply(self, U) -> np.ndarray:
        """Phi U = (f_U(x_j))_j on every rank (an MPI sum over the ranks' cells)."""
        f = self.S.matvec(self.quadrature.weights(U))
        self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
        return f

    def adjoint(self, r: np.ndarray, out) -> None:
        """out = Phi^T r (owned dofs of a PETSc vector); r is replicated on all ranks."""
        self.quadrature.transpose(self.S.rmatvec(r), out)

    def predict(self, U, x: np.ndarray) -> np.ndarray:
        """f_U at new points x (m, d), on every rank."""
        S = features(self.sigma, np.ascontiguousarray(x, dtype=float), self.quadrature.theta, self.method)
        f = S.matvec(self.quadrature.weights(U))
        self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
        return f

    def columns(self) -> np.ndarray:
        """Phi^T as a dense (owned dofs, n) array: small problems only (direct solver, tests)."""
        S = self.S.dense()  # (n, nq_local)
        q = self.quadrature
        contrib = np.einsum("cqk,cqj->ckj", q.Wpsi, S.T.reshape(*q.Wpsi.shape[:2], -1))
        out = np.zeros((q._work.x.array.size, self.n))
        np.add.at(out, q.dofs.ravel(), contrib.reshape(-1, self.n))
        # sum ghost rows into their owners, column by column
        result = np.empty((q.num_owned, self.n))
        for j in range(self.n):
            q._work.x.array[:] = out[:, j]
            q._work.x.scatter_reverse(dolfinx.la.InsertMode.add)
            result[:, j] = q._work.x.array[: q.num_owned]
        return result
