"""The functional E_alpha and its derivatives on the discrete density U.

    E_alpha(u) = (1/n) sum_j l(f_u(x_j), y_j) + (alpha/2) ||u||^2_{H^1_omega},

    dE_alpha(U)    = alpha A U + Phi^T l'(Phi U, y) / n,
    d2E_alpha(U)   = alpha A + Phi^T diag(l''(Phi U, y)) Phi / n.

E_alpha is lambda-convex with lambda = alpha in the H^1_omega norm (the loss
term is convex), and at least alpha in L^2_omega since a_omega >= m_omega.

Several outputs (y of shape (n, m), squared loss only): m densities u_1..u_m,
one per output column, on the same space with the same data operator Phi,

    E_alpha(u_1..u_m) = sum_k [ (1/n) sum_j (f_{u_k}(x_j) - y_jk)^2 / 2 + (alpha/2) ||u_k||^2_{H^1_omega} ],

a sum of m independent single-output functionals: its Euler-Lagrange system is
(alpha A + Phi^T Phi / n) U_k = Phi^T y_k / n, one operator and m right-hand
sides. :meth:`Functional.output` gives the k-th term: a view that shares H and Phi
and reads alpha from the m-output functional, so that changing alpha there (a
regularisation path's next alpha) changes it for every output. The methods that
take one dof vector U belong to a single output and refuse an m-output functional.
"""

from __future__ import annotations

import numpy as np

from flowfem import mpi  # (first: loads MPI before dolfinx)
from flowfem.arguments import bounded

from flowfem.petsc import PETSc  # noqa: E402

from flowfem.loss import Loss, loss as _loss  # noqa: E402
from flowfem.operator import DataOperator  # noqa: E402
from flowfem.operator.features.base import pieces  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402




class Functional:
    """E_alpha for data (x, y) with the data operator Phi on the space H; y (n,) for one output,
    (n, m) for m outputs (squared loss only: ValueError otherwise)."""

    def __init__(self, H: WeightedH1, Phi: DataOperator, y: np.ndarray, alpha: float,
                 loss: Loss | str = "squared"):
        self._parent = None  # output(k)'s view: the m-output functional it reads alpha from
        self.H, self.Phi = H, Phi
        self.alpha = alpha
        self.y = np.asarray(y, dtype=float)
        self.loss = _loss(loss)
        if self.y.ndim == 2 and not self.loss.quadratic:
            # Phi.n: every rank's rows (sharded data: self.y holds this rank's only)
            raise ValueError(f"{self.y.shape[1]} outputs (y of shape ({Phi.n}, {self.y.shape[1]})) need the squared "
                             f"loss; the {self.loss.name} loss takes one column of labels y")
        if Phi.sharded:  # each rank checks its own rows; an error on one is raised on all
            mpi.on_every_rank(Phi.comm, self._check_targets)
        else:
            self._check_targets()

    def _check_targets(self) -> None:
        """ValueError unless y has a row per data point (this rank's, when sharded) that the loss takes."""
        if self.y.shape[0] != self.Phi.rows:
            raise ValueError(f"{self.y.shape[0]} targets for {self.Phi.rows} data points: give one target "
                             "row per point")
        self.loss.check_labels(self.y)

    @property
    def alpha(self) -> float:
        """alpha > 0, the regularisation weight (an output's view: its m-output functional's)."""
        return self._alpha if self._parent is None else self._parent.alpha

    @alpha.setter
    def alpha(self, alpha: float) -> None:
        """Another alpha; ValueError unless a finite number > 0, or if this is an output's view (whose alpha is
        its m-output functional's: set it there, for every output)."""
        if self._parent is not None:
            raise ValueError("an output's functional reads alpha from the functional of all outputs: set alpha "
                             "there (E.alpha = ...), for every output at once")
        self._alpha = bounded("alpha", alpha, 0, strict=True, meaning="the convexity constant of E_alpha")

    @property
    def n(self) -> int:
        """n, the number of data points (over all ranks when the data are sharded)."""
        return self.Phi.n

    @property
    def outputs(self) -> int:
        """m, the number of outputs (columns of y; 1 for y (n,))."""
        return 1 if self.y.ndim == 1 else self.y.shape[1]

    def output(self, k: int) -> "Functional":
        """The functional of output k (0 <= k < m) alone, targets y[:, k]: a view of this functional, of its
        class, sharing H, Phi and the loss, that reads alpha (and a subclass's row weights) from this one
        whenever it is used, so a change of alpha here holds for every output. For one output, k = 0 gives
        this functional itself. ValueError for k out of range."""
        if not 0 <= k < self.outputs:
            raise ValueError(f"output {k} does not exist: this functional has {self.outputs} output(s)")
        if self.outputs == 1:
            return self
        view = object.__new__(type(self))  # the targets were checked with this functional's
        view.H, view.Phi, view.loss, view.y, view._parent = self.H, self.Phi, self.loss, self.y[:, k], self
        return view

    def _single(self, what: str) -> None:
        """ValueError for a method of one dof vector called on an m-output functional."""
        if self.outputs > 1:
            raise ValueError(f"{what} takes the dof vector of one output; this functional has {self.outputs}: "
                             "use E.output(k) for output k")

    @property
    def row_weights(self) -> np.ndarray | float:
        """c_j, the weight of row j in the data term (1 here; (n,) in :class:`flowfem.path.RowWeighted`)."""
        return 1.0

    @property
    def lam(self) -> float:
        """lambda: E_alpha is lambda-convex in H^1_omega with lambda = alpha."""
        return self.alpha

    def vector(self) -> PETSc.Vec:
        """A zero vector in the dof layout."""
        v = self.H.A.createVecRight()
        v.set(0.0)
        return v

    def parts(self, U: PETSc.Vec) -> tuple[float, float]:
        """(data term (1/n) sum l(f_j, y_j), regulariser (alpha/2) U^T A U)."""
        self._single("parts")
        f = self.Phi.apply(U)
        AU = self.H.A.createVecLeft()
        self.H.A.mult(U, AU)
        loss = sum(float(np.sum(self.loss.value(f[piece], self.y[piece]))) for piece in pieces(f.shape[0]))
        return self.Phi.total(loss) / self.n, 0.5 * self.alpha * AU.dot(U)

    def parts_of(self, Us: list[PETSc.Vec]) -> tuple[float, float]:
        """(data term, regulariser) of the m dof vectors Us (one per output): the sums over the outputs of
        :meth:`parts` of output k at Us[k] (for one output, :meth:`parts` of Us[0]). What
        :meth:`flowfem.problem.Result.of` reports; a functional whose outputs are coupled (a loss of all m
        predictions at once) overrides it."""
        if len(Us) != self.outputs:
            raise ValueError(f"{len(Us)} dof vectors for a functional of {self.outputs} output(s)")
        loss = reg = 0.0
        for k, U in enumerate(Us):
            lk, rk = self.output(k).parts(U)
            loss, reg = loss + lk, reg + rk
        return loss, reg

    def __call__(self, U: PETSc.Vec) -> float:
        """E_alpha(U)."""
        return sum(self.parts(U))

    def gradient(self, U: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """dE_alpha(U) = alpha A U + Phi^T l'(Phi U, y) / n (a dual vector)."""
        self._single("gradient")
        out = self.vector() if out is None else out
        tmp = self.vector()
        self.Phi.adjoint(self.loss.d1(self.Phi.apply(U), self.y) / self.n, tmp)
        self.H.A.mult(U, out)
        out.aypx(self.alpha, tmp)
        return out

    def rhs(self) -> PETSc.Vec:
        """Phi^T y / n: the right-hand side of the linear Euler-Lagrange equation (squared loss)."""
        self._single("rhs")
        b = self.vector()
        self.Phi.adjoint(self.y / self.n, b)
        return b

    def curvature(self, U: PETSc.Vec) -> np.ndarray:
        """D = l''(Phi U, y): the data weights of the Hessian alpha A + Phi^T D Phi / n."""
        self._single("curvature")
        return self.loss.d2(self.Phi.apply(U), self.y)
