"""S approximated through an input grid: the features at the grid's nodes, interpolated to the data.

Not exact (``exact = False``): never chosen by ``auto``, only by the method
name ``interpolated`` (or ``interpolated:<cells>``). For any sigma and d, the
predictions f(x) = sum_q sigma(theta_q . x~) g_q are interpolated from the
nodes X_k of a uniform tensor grid over the data's bounding box, so the data
term of the Hessian costs O(n_X) feature work per product instead of O(n).
With the data sharded over the ranks the grid spans every rank's rows
(:func:`bounding_box`), so the approximation, and a fit with it, is the same on
any number of ranks.
"""

from __future__ import annotations

import weakref

import numpy as np
import scipy.sparse
from mpi4py import MPI

from flowfem.arguments import integer
from flowfem.operator.features.base import Features
from flowfem.operator.features.weights import is_frozen

DEFAULT_CELLS = {1: 1024, 2: 128, 3: 24}  # cells per side; (cells + 1)^d grid nodes
MAX_NODES = 2**22  # grid nodes per rank: the features at the nodes are applied in every product


def grid_cells(cells, d: int) -> int:
    """The number of cells per side of the input grid for d-dimensional inputs, checked: ``cells`` an
    integer >= 1 with (cells + 1)^d <= MAX_NODES, or None for DEFAULT_CELLS[d] (then d <= 3). ValueError
    otherwise, one line naming the fix."""
    if cells is None:
        if d not in DEFAULT_CELLS:
            raise ValueError(f"method interpolated has no default grid for {d}-D inputs: give the cells per "
                             f"side, method='interpolated:<cells>' with (cells + 1)^{d} <= {MAX_NODES}")
        return DEFAULT_CELLS[d]
    cells = integer("the cells per side of the interpolation grid", cells,
                    "(e.g. method='interpolated:128')")
    if cells < 1:
        raise ValueError(f"the interpolation grid needs at least 1 cell per side, got {cells}: "
                         "use e.g. method='interpolated:128'")
    if (cells + 1.0) ** d > MAX_NODES:
        raise ValueError(f"an interpolation grid of {cells} cells per side has {(cells + 1.0) ** d:.3g} nodes on "
                         f"{d}-D inputs, more than {MAX_NODES}: use at most "
                         f"{int(MAX_NODES ** (1 / d) + 1e-9) - 1} cells per side")
    return cells


def parse_cells(option: str) -> int:
    """The cells per side in a method option, ``"128"`` of ``interpolated:128``: ValueError unless an
    integer >= 1 (the node limit is checked against d when the grid is built, :func:`grid_cells`)."""
    try:
        cells = int(option)
    except ValueError:
        raise ValueError(f"method 'interpolated:{option}': the cells per side must be an integer, "
                         "e.g. 'interpolated:128'") from None
    if cells < 1:
        raise ValueError(f"method 'interpolated:{option}': the grid needs at least 1 cell per side, "
                         "e.g. 'interpolated:128'")
    return cells


def bounding_box(x: np.ndarray, comm: MPI.Comm) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper), each (d,): the componentwise min and max of the rows x (n_p, d) of every rank of
    comm, by one MPI min (of the lower corners and the negated upper ones); a rank without rows adds
    nothing, and with no row on any rank the box is the unit box [0, 1]^d. Collective over comm."""
    d = x.shape[1]
    corners = np.concatenate([x.min(axis=0), -x.max(axis=0)]) if x.shape[0] else np.full(2 * d, np.inf)
    comm.Allreduce(MPI.IN_PLACE, corners, op=MPI.MIN)
    if corners[0] == np.inf:  # no rows anywhere: there is nothing to interpolate, any grid will do
        return np.zeros(d), np.ones(d)
    return corners[:d], -corners[d:]


def interpolation_matrix(x: np.ndarray, lower: np.ndarray, h: np.ndarray, cells: int) -> scipy.sparse.csr_matrix:
    """Pi (n, (cells + 1)^d), Pi_jk = phi_k(x_j): the tensor-product Q1 hat functions of the grid nodes
    X_k = lower + h * i(k), node k = sum_a i_a (cells + 1)^(d - 1 - a) (C order), at the points x (n, d)
    in the grid's box. Each row holds the 2^d weights prod_a (t_a or 1 - t_a) of the corners of x's cell,
    t the local coordinates in [0, 1]: they are >= 0 and sum to 1, and Pi reproduces every function that
    is affine (indeed multilinear) on each cell."""
    n, d = x.shape
    s = (x - lower) / h
    i = np.clip(np.floor(s), 0, cells - 1).astype(np.int64)  # the cell; the upper faces belong to the last cell
    t = s - i
    stride = (cells + 1) ** np.arange(d - 1, -1, -1, dtype=np.int64)
    corners = (np.arange(2**d)[:, None] >> np.arange(d - 1, -1, -1)) & 1  # (2^d, d), C order
    cols = (i @ stride)[:, None] + corners @ stride  # (n, 2^d)
    w = np.ones((n, 2**d))
    for a in range(d):
        w *= np.where(corners[:, a] == 1, t[:, a:a + 1], 1.0 - t[:, a:a + 1])
    return scipy.sparse.csr_matrix((w.ravel(), cols.ravel(), np.arange(0, n * 2**d + 1, 2**d)),
                                   shape=(n, (cells + 1) ** d))


class InterpolatedFeatures(Features):
    """S ~ Pi S_X: the exact features S_X at the nodes of an input grid, interpolated to the data by Pi.

    The grid: ``cells`` cells per side (default DEFAULT_CELLS[d]) over the box [lo, hi] given as ``box``
    (it must contain the rows x) or by default x's bounding box (a flat side, hi = lo, gets width 1),
    cell size h_a = (hi_a - lo_a) / cells, n_X = (cells + 1)^d nodes X_k. Pi (n, n_X) is the tensor Q1
    interpolation at the data (:func:`interpolation_matrix`, 2^d entries a row), S_X (n_X, m) the exact
    features at the nodes (the implementation :mod:`flowfem.operator.select` picks for sigma, d, e.g. the
    relu tree), so

        S g ~ Pi (S_X g),    S^T r ~ S_X^T (Pi^T r),
        S^T diag(D) S g ~ S_X^T B S_X g,    B = Pi^T diag(D) Pi  (n_X x n_X, 3^d diagonals),

    B assembled in one O(n 4^d) pass per data weight D: per normal product the cost is two products
    with S_X and one with B, none with the n data, when B is kept. It is kept for a D that is
    :func:`~flowfem.operator.features.weights.frozen` (its values can never change: what
    :class:`~flowfem.stationary.LinearSolver` holds), keyed by that array object (a weak reference:
    the next frozen D replaces it), and assembled afresh at every product for any other D (so a D
    written in place between products is seen). :meth:`normal` sums S_X g over the ranks of comm
    (n_X numbers, not n). The MPI layouts are those of any implementation (replicated: every rank
    the same grid, each its own points; sharded: each rank its own rows, and the data operator
    gives every rank the ``box`` of all ranks' rows, :func:`bounding_box`, so the grid, and with it
    the approximation, does not depend on the number of ranks).

    Error: on each cell, Q1 interpolation of f(x) = sum_q sigma(theta_q . x~) g_q errs by at most
    (1/8) sum_a h_a^2 max |d^2 f / dx_a^2| (the 1-D bound for linear interpolation, h^2/8 max |f''|,
    along each axis), O(h^2), and not at all where f is affine on every cell (sigma linear, e.g.
    monomial:1). For relu the discrete f is piecewise linear with kinks on the lines theta_q . x~ = 0;
    across many kinks per cell it behaves as the smooth f_u of the density, whose second derivatives
    are bounded where u is. Measured (benchmarks/compression.py: relu on Space.sphere(3), P1,
    two_moons n = 10^5, alpha = 1e-5, against the exact relu tree at the exact fit's U*), relative
    2-norm errors at 32, 64, 128 cells per side:

        predictions Phi U*                   6.0e-3, 1.5e-3, 3.9e-4   (fitted order in h 1.96)
        normal product Phi^T Phi U* / n      2.4e-3, 5.9e-4, 1.5e-4   (2.00)
        fitted U against U*                  8.3e-3, 2.0e-3, 5.2e-4   (2.00)
        test RMSE, relative change           2.8e-4, 1.1e-4, 3.2e-5

    and at n = 10^6 the same to two digits (6.4e-3, 1.6e-3, 4.2e-4 for Phi U*), with set-up plus
    solve 2.8 s at 128 cells against 88 s for the exact relu tree (its storage limit raised).

    The bound needs f's second derivatives, which depend on the fitted density: there is no
    a-priori estimate of the error before the fit, and the measured 1e-4 to 1e-2 lie far above a
    solver tolerance such as 1e-10 (h^2 ~ 1e-10 would need some 10^5 cells per side), so ``auto``
    never chooses this approximation: it is used only when asked for by name.
    """

    name = "interpolated"
    exact = False
    single_use = False  # the grid's features cost as much as a dense product at n_X points

    @classmethod
    def needs(cls, sigma, d):
        return None

    def __init__(self, sigma, x, theta, cells: int | None = None,
                 box: tuple[np.ndarray, np.ndarray] | None = None):
        # the exact implementation at the nodes is chosen by select, which imports this package
        from flowfem.operator.select import make_features

        super().__init__(sigma, x, theta)
        d = x.shape[1]
        self.cells = grid_cells(cells, d)
        lower, upper = bounding_box(x, MPI.COMM_SELF) if box is None else box
        width = upper - lower
        width[width == 0] = 1.0
        self.lower, self.h = lower, width / self.cells
        axes = [lower[a] + self.h[a] * np.arange(self.cells + 1) for a in range(d)]
        self.nodes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)  # C order, as Pi's columns
        self.Pi = interpolation_matrix(x, lower, self.h, self.cells)
        self.SX = make_features(sigma, self.nodes, theta)
        self._B, self._D = None, None  # B of the last frozen D, and a weak reference to that D

    def matvec(self, g, out=None):
        f = self.Pi @ self.SX.matvec(g)
        if out is None:
            return f
        out[:] = f
        return out

    def rmatvec(self, r, out=None):
        return self.SX.rmatvec(self.Pi.T @ r, out)

    def matmat(self, G):
        return self.Pi @ self.SX.matmat(G)

    def rmatmat(self, R):
        return self.SX.rmatmat(np.ascontiguousarray(self.Pi.T @ R))

    def dense(self):
        """Pi S_X as an (n, m) array: the S this implementation applies (small problems and tests)."""
        return self.Pi @ self.SX.dense()

    def weights(self, D: np.ndarray) -> scipy.sparse.csr_matrix:
        """B = Pi^T diag(D) Pi (n_X, n_X) for the data weights D (n,): the one kept when D is the frozen
        array it was assembled for, else assembled (and kept if D is frozen; class docstring)."""
        if self._D is not None and self._D() is D:  # only frozen arrays are kept: D's values are B's
            return self._B
        B = (self.Pi.T @ scipy.sparse.diags(D) @ self.Pi).tocsr()
        if is_frozen(D):
            self._B, self._D = B, weakref.ref(D)
        return B

    def normal(self, g, D, scale, out=None):
        """scale S_X^T B (sum over the ranks of comm of S_X g): Pi^T diag(scale D) Pi on the grid, (m,)."""
        h = self.SX.matvec(g)
        self.comm.Allreduce(MPI.IN_PLACE, h, op=MPI.SUM)
        h = self.weights(D) @ h
        h *= scale
        return self.SX.rmatvec(h, out)

    def normal_block(self, G, D, scale):
        H = self.SX.matmat(G)
        self.comm.Allreduce(MPI.IN_PLACE, H, op=MPI.SUM)
        H = self.weights(D) @ H
        H *= scale
        return self.SX.rmatmat(H)
