"""An alpha-robust preconditioner: multigrid for the regulariser, a low-rank eigenbasis for the data term.

The Euler-Lagrange operator (and a Newton step's, and an implicit time step's) is

    K = alpha (A + sigma G) + N,     N = Phi^T D Phi / n   (PSD, rank <= n),

with sigma = s / alpha for a shift s G (zero for the stationary problem).
Multigrid (GAMG) on the base B = A + sigma G alone leaves CG with the
condition number of I + B^{-1/2} N B^{-1/2} / alpha, which grows like
lambda_max(N, B) / alpha: iterations rise as alpha falls (docs/theory.md
§6). But the generalised eigenvalues lambda_i of N v = lambda B v decay
fast and do not depend on alpha, so only the few above alpha matter.

With M ~ B^{-1} the multigrid V-cycles (a fixed SPD linear operator), the
eigenproblem is posed in the M^{-1} inner product: M N v = lambda v. A
block Krylov method finds an M^{-1}-orthonormal basis Q (ndofs x k) of

    span{M W_0, (M N) M W_0, (M N)^2 M W_0, ...},   W_0 = Phi^T Gaussian (n x b) / n,

whose inner products are computable without M^{-1}: every basis block is
Y = M W with W known, so Y^T M^{-1} Y = Y^T W (and Z = M^{-1} Q is carried
along). Rayleigh-Ritz, T = Q^T N Q = V Theta V^T, gives the low-rank
approximation N ~ M^{-1} Q V Theta V^T Q^T M^{-1}, and the preconditioner

    P = alpha M^{-1} + M^{-1} U Theta U^T M^{-1},   U = Q V,

is inverted exactly by the Woodbury identity (U is M^{-1}-orthonormal):

    P^{-1} = (1/alpha) (M - U diag(theta_i / (theta_i + alpha)) U^T)
           = U diag(1 / (theta_i + alpha)) U^T + (1/alpha) Pi M Pi^T,   Pi = I - U U^T M^{-1},

the second form (M^{-1} U = Z V is known) being SPD even where rounding
has spoilt U's orthonormality. If every eigenvalue left out of the basis
is below c alpha, the preconditioned operator's condition number is at
most (1 + c) cond(M B), independent of alpha; the basis grows block by
block until its 2 b smallest Ritz values are below c alpha (default c = 1;
two blocks, since the lower Ritz values converge last), or its memory
budget is spent. This is the randomized
Nystrom preconditioner of Frangella, Tropp and Udell ("Randomized Nystrom
preconditioning", SIAM J. Matrix Anal. Appl. 44, 2023) in the geometry of
the multigrid preconditioner, with a block Krylov sketch (Musco and Musco,
"Randomized block Krylov methods for stronger and faster approximate
singular value decomposition", NeurIPS 2015) in place of one random
product, since every Krylov block reuses the products N Q of Rayleigh-Ritz.

What the basis serves without being rebuilt:

* another alpha (a regularisation path): only the weights change; a smaller
  alpha extends the basis (the Krylov iteration continues);
* another data weight D (Newton steps of the logistic loss): Q is kept and
  T = Q^T N(D) Q is recomputed (k products with N, no multigrid);
* another shift: the multigrid and the basis are rebuilt (the base B
  changed); a flow's preconditioner shift is rounded (see
  :class:`flowfem.stationary.LinearSolver`) so that this is rare.

Cost: each basis vector costs one product with N and one V-cycle pair (about
one CG iteration), plus O(ndofs k) for the orthogonalisation; memory is
2 k owned dofs per rank (Q and Z) and O(k^2), never n x ndofs. The random
start is Phi^T D G / n for a seeded Gaussian G in data space, drawn per row
or, for relu in 1-D, per bin of the data (:meth:`DataOperator.start_block`),
so the basis does not depend on how the dofs are numbered or distributed,
nor on how sharded rows are split over the ranks.
"""

from __future__ import annotations

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before petsc4py)

from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

BUDGET = 2**29  # bytes per rank for the basis Q and Z = M^{-1} Q (512 MiB)
BLOCK = 8  # basis vectors per Krylov block
CUTOFF = 1.0  # c: the basis holds every eigenvalue above c alpha
MARGIN = 2  # blocks of Ritz values below c alpha before the basis stops growing
# a new Krylov direction is rounding if its M^{-1}-norm^2 is below DROP times the block's largest (M's own
# rounding), or if orthogonalising its W left less than ROUNDING times the block's size before
DROP = 1e-10
VANISHES = np.finfo(float).eps / 2  # alpha below this times the largest Ritz value vanishes from theta + alpha
ROUNDING = 1e3 * np.finfo(float).eps


class NystromPreconditioner:
    """P^{-1} = U diag(1 / (theta + alpha)) U^T + (1/alpha) Pi M Pi^T for K = alpha B + Phi^T D Phi / n.

    ``E`` is the Functional (its ``Phi`` and ``alpha``), ``base`` the matrix B = A + sigma G
    (PETSc, assembled), ``D`` the data weights (n,) (the array is read at each :meth:`set_weights`),
    ``prefix`` the options prefix of the multigrid PC (GAMG unless the options say otherwise).
    ``budget`` bytes per rank bound the basis (2 k owned dofs per rank), ``cutoff`` is c,
    ``block`` the Krylov block size b, ``seed`` the random start's. Use as the context of a PETSc
    PC of type python (:meth:`apply`); :meth:`setUp` builds the multigrid and the basis for the
    current alpha.
    """

    def __init__(self, E, base: PETSc.Mat, D: np.ndarray, prefix: str, budget: float = BUDGET,
                 cutoff: float = CUTOFF, block: int = BLOCK, seed: int = 0):
        self.E, self.base, self.D, self.prefix = E, base, D, prefix
        self.comm = base.getComm().tompi4py()
        self.cutoff, self.block, self.seed = float(cutoff), int(block), seed
        nlocal = base.getLocalSize()[0]
        widest = self.comm.allreduce(nlocal, op=MPI.MAX)
        self.max_rank = max(self.block, int(budget // (16 * max(widest, 1))))
        self.max_rank = min(self.max_rank, base.getSize()[0])
        self.mg = None
        self.x = base.createVecRight()  # work vectors
        self.y = base.createVecRight()
        self._reset()

    def _reset(self):
        # the basis as rows (a dof vector per row), so that every block and product is contiguous
        self._basis = np.empty((2, 0, self.x.getLocalSize()))  # Q^T and Z^T; rows k.. unused
        self._k = 0
        self.T = np.empty((0, 0))
        self.NQ_last = None  # (N times the newest block)^T: the next Krylov block's W
        self.exhausted = False  # the Krylov space is invariant: Q holds all of N's range that M sees
        self.theta, self.V = np.empty(0), np.empty((0, 0))
        self._ritz_of_T = True  # theta, V are T's (False once T changed): one eigh per change, not per solve
        # the one switch between P^{-1} and the multigrid alone, M / alpha: set for the alpha the basis is
        # extended to (:meth:`_set_deflating`), cleared by LinearSolver when CG failed with the basis
        self.deflating = False

    @property
    def rank(self) -> int:
        """k, the number of basis vectors."""
        return self._k

    @property
    def Q(self) -> np.ndarray:
        """Q^T: the M^{-1}-orthonormal basis as rows (k, owned dofs)."""
        return self._basis[0, : self._k]

    @property
    def Z(self) -> np.ndarray:
        """(M^{-1} Q)^T (k, owned dofs)."""
        return self._basis[1, : self._k]

    def _append(self, Qb: np.ndarray, Zb: np.ndarray) -> None:
        """Add basis rows; the storage doubles when full (O(k) copies in all, not one per block)."""
        k, b = self._k, Qb.shape[0]
        if k + b > self._basis.shape[1]:
            grown = np.empty((2, min(max(2 * (k + b), 4 * self.block), self.max_rank), Qb.shape[1]))
            grown[:, :k] = self._basis[:, :k]
            self._basis = grown
        self._basis[0, k:k + b] = Qb
        self._basis[1, k:k + b] = Zb
        self._k = k + b

    # -- the multigrid M ~ B^{-1} --------------------------------------------------------

    def setUp(self, pc=None) -> None:
        """Build the multigrid on B (once per base) and the basis for the current alpha."""
        if self.mg is None:
            self.mg = PETSc.PC().create(self.comm)
            self.mg.setOptionsPrefix(self.prefix)
            self.mg.setOperators(self.base)
            self.mg.setType("gamg")
            self.mg.setFromOptions()
            self.mg.setUp()
        self.extend(self.E.alpha)

    def _M(self, W: np.ndarray) -> np.ndarray:
        """(M W)^T for W^T given as rows."""
        Y = np.empty_like(W)
        for j in range(W.shape[0]):
            self.x.array[:] = W[j]
            self.mg.apply(self.x, self.y)
            Y[j] = self.y.array_r
        return Y

    def _N(self, Q: np.ndarray) -> np.ndarray:
        """(N Q)^T = (Phi^T D Phi Q / n)^T for Q^T given as rows, a block at a time."""
        W = np.empty_like(Q)
        for j in range(0, Q.shape[0], self.block):
            W[j:j + self.block] = self.E.Phi.normal_block(Q[j:j + self.block], self.D)
        return W

    def _dot(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """X^T Y over all ranks, for X^T (p, owned dofs) and Y^T (q, owned dofs) given as rows: (p, q)."""
        with np.errstate(over="ignore", invalid="ignore"):  # reported by _finite, in flowfem's words
            out = X @ Y.T
        self.comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        return out

    def _eigh(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues and vectors of the small symmetric T, computed on rank 0 and broadcast: every
        rank then takes the same decisions (block sizes, stopping), which a last-bit difference
        between the ranks' LAPACK results could otherwise split (and hang the next collective)."""
        return self.comm.bcast(np.linalg.eigh(T) if self.comm.rank == 0 else None, root=0)

    @staticmethod
    def _finite(T: np.ndarray) -> np.ndarray:
        """T, or ValueError (on every rank: T is reduced) if it holds NaN or inf."""
        if not np.all(np.isfinite(T)):
            raise ValueError("the linear system holds a non-finite number (NaN or inf): inputs so large that "
                             "sigma(theta . x~)^2 overflows? rescale the data")
        return T

    # -- the basis -----------------------------------------------------------------------

    def _start(self) -> np.ndarray:
        """W_0^T = (Phi^T D G / n)^T for a seeded Gaussian G (n x b) in data space, whose entries do not
        depend on the number of ranks: :meth:`DataOperator.start_block` (for relu in 1-D drawn per bin of
        the data, exact in distribution, O(nq) per column)."""
        return self.E.Phi.start_block(self.seed, self.block, self.D)

    def _add_block(self) -> bool:
        """One block Krylov step: Y = M W orthogonalised against Q and made orthonormal, in the M^{-1}
        inner product; returns False when nothing new is left (the Krylov space is invariant)."""
        W = self._start() if self.NQ_last is None else self.NQ_last
        # orthogonalise W before M is applied: Y - Q C = M (W - Z C), so Y = M W stays exact for what
        # is left, however small (cancelling in Y instead lost directions 1e10 below the block's largest,
        # relu on inputs of size 1e5: 15 CG iterations where GAMG alone takes 10)
        size = float(np.max(np.diag(self._dot(W, W)), initial=0.0))  # largest ||w_j||^2 before
        for _ in range(2):
            if self.rank:
                W = W - self._dot(self.Q, W).T @ self.Z  # Q^T M^{-1} (M W) = Q^T W
        Y, W = self._normalise(self._M(W), W, DROP, 0.0, size)
        if Y is None:
            return False
        # twice: directions that nearly lay in span Q lost digits in the first pass (an exact M showed
        # |Q^T M^{-1} Q - I| = 5e-7 after one)
        Qb, Zb = self._orthonormalise(Y, W, 0.5)
        if Qb is None:
            return False
        NQb = self._N(Qb)
        # T = Q^T N Q grows by a block column (and row, by symmetry)
        cross = self._dot(self.Q, NQb)
        diag = self._dot(Qb, NQb)
        self.T = self._finite(np.block([[self.T, cross], [cross.T, 0.5 * (diag + diag.T)]]))
        self._ritz_of_T = False
        self._append(Qb, Zb)
        self.NQ_last = NQb
        return True

    def _normalise(self, Y: np.ndarray, W: np.ndarray, relative: float, floor: float, size: float):
        """Y = M W (rows) made M^{-1}-orthonormal by the eigendecomposition of G = Y^T W; W follows along.
        Kept: the directions whose G-eigenvalue is above ``relative`` times the largest (M's own rounding)
        and above ``floor``, and whose ||W s||^2 is above ROUNDING^2 ``size`` (what orthogonalising a W of
        that ``size`` leaves of directions already in span Q). (None, None) if nothing is left or the
        budget is spent."""
        gram = self._finite(self._dot(Y, W))
        g, S = self._eigh(0.5 * (gram + gram.T))
        keep = g > max(relative * float(g.max(initial=0.0)), floor, np.finfo(float).tiny)
        if size:
            keep &= np.einsum("ij,ik,kj->j", S, self._dot(W, W), S) > ROUNDING**2 * size  # ||W s_j||^2
        keep = np.flatnonzero(keep)[::-1][: self.max_rank - self.rank]
        if not keep.size:
            return None, None
        R = S[:, keep] / np.sqrt(g[keep])
        return R.T @ Y, R.T @ W

    def _orthonormalise(self, Y: np.ndarray, W: np.ndarray, floor: float):
        """Y (rows) orthogonalised against Q twice in the M^{-1} inner product, then :meth:`_normalise`
        dropping directions whose M^{-1}-norm^2 fell to ``floor`` or below."""
        for _ in range(2):
            if self.rank:
                C = self._dot(self.Z, Y)  # Q^T M^{-1} Y
                Y = Y - C.T @ self.Q
                W = W - C.T @ self.Z
        return self._normalise(Y, W, 0.0, floor, 0.0)

    def _ritz(self) -> None:
        """T = V diag(theta) V^T (theta >= 0: N is PSD), unless theta and V are already T's."""
        if not self._ritz_of_T:
            theta, V = self._eigh(self.T)
            self.theta, self.V = np.maximum(theta, 0.0), V
            self._ritz_of_T = True

    def extend(self, alpha: float) -> None:
        """Grow the basis until its 2 b smallest Ritz values are below c alpha (the Krylov space's lower
        Ritz values converge last: with b of them, a two-moons case stopped at 88 Ritz values above
        alpha of the 99 eigenvalues there, and CG took 18 iterations instead of 12), the Krylov space
        is invariant, or the budget is spent."""
        while not self.exhausted and self.rank < self.max_rank:
            if self.rank:
                self._ritz()
                newest = np.sort(self.theta)[: min(MARGIN * self.block, self.rank)]
                if self.rank >= (MARGIN + 1) * self.block and np.all(newest < self.cutoff * alpha):
                    break
            if not self._add_block():
                self.exhausted = True
        self._ritz()
        self._set_deflating(alpha)

    def _set_deflating(self, alpha: float) -> None:
        """Use the basis unless it is empty or alpha vanishes beside it: theta + alpha == theta in double
        precision when alpha is below eps / 2 of the largest Ritz value (a data term 1e16 times alpha A and
        more), the Woodbury weights then carry no alpha, and CG converged to rtol at points whose
        regulariser was 1e7 times the minimiser's (monomial:8 at alpha = 1e-10); there the multigrid alone,
        as gamg, is what solves it."""
        self.deflating = bool(self.rank) and alpha > VANISHES * self.theta[-1]

    def set_weights(self, D: np.ndarray) -> None:
        """New data weights: T = Q^T N(D) Q from the kept basis (k products with N)."""
        self.D = D
        if self.rank:
            self.T = self._finite(self._dot(self.Q, self._N(self.Q)))
            self.T = 0.5 * (self.T + self.T.T)
            self._ritz_of_T = False
            self._ritz()
            self._set_deflating(self.E.alpha)

    # -- application ---------------------------------------------------------------------

    def apply(self, pc, x: PETSc.Vec, y: PETSc.Vec) -> None:
        """y = P^{-1} x = U diag(1 / (theta + alpha)) U^T x + (1/alpha) Pi M Pi^T x, Pi = I - U U^T M^{-1}.

        With an exactly M^{-1}-orthonormal U this is the Woodbury form of the module docstring; written
        with the projection Pi (M^{-1} U = Z V is known) it stays SPD when rounding has spoiled U's
        orthonormality (a data term 10^10 times alpha A)."""
        alpha = self.E.alpha
        if not self.deflating:
            self.mg.apply(x, y)
            y.scale(1.0 / alpha)
            return
        t = self.V.T @ self._dot(self.Q, x.array_r[None, :])[:, 0]  # U^T x
        self.x.array[:] = x.array_r - (self.V @ t) @ self.Z  # Pi^T x
        self.mg.apply(self.x, y)
        u = self.V.T @ self._dot(self.Z, y.array_r[None, :])[:, 0]  # U^T M^{-1} (M Pi^T x)
        y.array[:] = (y.array_r - (self.V @ u) @ self.Q) / alpha + (self.V @ (t / (self.theta + alpha))) @ self.Q

    def destroy(self, pc=None) -> None:
        """Free the multigrid and work vectors (PETSc calls this when the PC is destroyed)."""
        for obj in (self.mg, self.x, self.y):
            if obj is not None:
                obj.destroy()
        self.mg = None
