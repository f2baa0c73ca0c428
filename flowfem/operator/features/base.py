"""The feature matrix S_jq = sigma(theta_q . x~_j), x~ = (x, 1): its interface and its one dense evaluation.

For inputs x (n, d) and points theta (m, d + 1), theta_q = (w_q, b_q),

    S = sigma(x~ theta^T) = sigma(x W^T + b),    shape (n, m).

:func:`evaluate` forms S (or sigma'(x~ theta^T), sigma''(x~ theta^T)) densely:
every module that needs sigma(theta . x~) as an array (the blocked products,
the finite network, readout, the particle solvers, the plateau analysis)
calls it. :class:`Features` is what the data operator applies: S g and
S^T r without storing S, by one of the implementations in this package.
NumPy and mpi4py only (no dolfinx): the finite network uses it too.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from flowfem.activations import Activation


PIECE = 2**20  # rows per piece of a pass over the data: its temporaries are that long, not n (10^8 rows: 0.8 GB each)


def pieces(n: int):
    """Slices of at most PIECE consecutive rows covering rows 0..n-1: a pass over n data rows in pieces."""
    return (slice(a, min(a + PIECE, n)) for a in range(0, n, PIECE))

def augment(x: np.ndarray) -> np.ndarray:
    """x~ = (x, 1): the inputs (n, d) with a column of ones appended, shape (n, d + 1)."""
    return np.hstack([x, np.ones((x.shape[0], 1))])


def evaluate(sigma: Activation, x: np.ndarray, theta: np.ndarray, derivative: int | tuple[int, ...] = 0):
    """sigma^(k)(theta_q . x~_j) for inputs x (n, d) and points theta (m, d + 1): an (n, m) array.

    ``derivative`` k is 0 (sigma), 1 (sigma') or 2 (sigma''); a tuple of them gives a tuple of
    (n, m) arrays from the one product z = x W^T + b. theta may be a strided view (e.g. the
    first d + 1 columns of the particles). ValueError for any other k.
    """
    ks = derivative if isinstance(derivative, tuple) else (derivative,)
    if not all(k in (0, 1, 2) for k in ks):
        raise ValueError(f"derivative {derivative!r}: sigma is available with derivatives 0, 1 and 2")
    z = x @ theta[:, :-1].T
    z += theta[:, -1]
    values = tuple((sigma.sigma, sigma.dsigma, sigma.d2sigma)[k](z) for k in ks)
    return values if isinstance(derivative, tuple) else values[0]


def is_relu(sigma: Activation) -> bool:
    """sigma(z) = max(z, s z), relu or leaky relu (monomial:1 is 1-homogeneous too, but linear)."""
    return sigma.degree == 1 and sigma.power == 0


class StorageLimit(ValueError):
    """A fast representation of S would need more memory than allowed."""


class Features:
    """S_jq = sigma(theta_q . x~_j) for data x (n, d) and points theta (m, d + 1), applied matrix-free.

    An implementation declares the method ``name`` that asks for it, which (sigma, d) it
    represents (:meth:`needs`), whether its set-up pays off for a single product
    (``single_use``) and the order of the points it is fastest in (:meth:`point_order`);
    :mod:`flowfem.operator.select` chooses among them. The MPI defaults (:meth:`distribute`,
    :meth:`normal`) go through :meth:`matvec` and :meth:`rmatvec`.
    """

    name = ""  # the data-operator method that asks for this implementation
    exact = True
    single_use = True  # False: building it costs several dense products, worth it only for repeated ones
    comm: MPI.Comm = MPI.COMM_SELF  # the ranks :meth:`normal` sums the predictions over

    @classmethod
    def needs(cls, sigma: Activation, d: int) -> str | None:
        """What sigma or the input dimension d lacks for this implementation (the end of the
        sentence "method <name> needs ..."), or None if it represents S for them."""
        return None

    @classmethod
    def accepts(cls, sigma: Activation, d: int) -> bool:
        """True if this implementation represents S for sigma on d-dimensional inputs."""
        return cls.needs(sigma, d) is None

    @classmethod
    def point_order(cls, theta: np.ndarray) -> np.ndarray | None:
        """A renumbering of the points (new point i = old point order[i]) in which the products
        are fastest, or None when the order does not matter."""
        return None

    def __init__(self, sigma: Activation, x: np.ndarray, theta: np.ndarray):
        self.sigma, self.x, self.theta = sigma, x, theta

    def matvec(self, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """S g, shape (n,) (into ``out`` if given)."""
        raise NotImplementedError

    def rmatvec(self, r: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """S^T r, shape (m,) (into ``out`` if given)."""
        raise NotImplementedError

    def matmat(self, G: np.ndarray) -> np.ndarray:
        """S G for a block G (m, b): shape (n, b). Column by column here; implementations whose
        per-product work is shared by the columns (sigma evaluated once, one tree pass) override it."""
        return np.column_stack([self.matvec(np.ascontiguousarray(G[:, j])) for j in range(G.shape[1])])

    def rmatmat(self, R: np.ndarray) -> np.ndarray:
        """S^T R for a block R (n, b): shape (m, b) (column by column unless overridden)."""
        return np.column_stack([self.rmatvec(np.ascontiguousarray(R[:, j])) for j in range(R.shape[1])])

    def dense(self) -> np.ndarray:
        """S as an (n, m) array: for small problems and tests only."""
        return evaluate(self.sigma, self.x, self.theta)

    def distribute(self, comm: MPI.Comm) -> None:
        """The ranks of comm hold the same data and each its own points: :meth:`normal` sums the
        predictions over them. Here every rank does the O(n) work itself."""
        self.comm = comm

    def normal(self, g: np.ndarray, D: np.ndarray, scale: float, out: np.ndarray | None = None) -> np.ndarray:
        """S^T diag(scale D) f with f = sum over the ranks of comm of S g (D (n,) in the data's
        order): the data term of the Hessian. Shape (m,), into ``out`` if given."""
        f = self.matvec(g)
        self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
        f *= D
        f *= scale
        return self.rmatvec(f, out)

    def normal_block(self, G: np.ndarray, D: np.ndarray, scale: float) -> np.ndarray:
        """:meth:`normal` for a block G (m, b): S^T diag(scale D) (sum over the ranks of S G), (m, b).
        One MPI sum for the whole block."""
        F = self.matmat(G)
        self.comm.Allreduce(MPI.IN_PLACE, F, op=MPI.SUM)
        F *= (scale * D)[:, None]
        return self.rmatmat(F)
