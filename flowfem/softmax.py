"""Multiclass classification: softmax cross-entropy on C densities, minimised by Newton (docs/theory.md §16).

Labels take C >= 2 distinct values, recorded in sorted order (``classes``)
and mapped to k_j in {0, ..., C-1} (:func:`flowfem.labels.encode`). One density u_c per
class, all on the same parameter mesh and seen through the same data
operator Phi (built once), give the scores f_c = Phi U_c and

    E_alpha(U_1..U_C) = (1/n) sum_j [logsumexp_c f_c(x_j) - f_{k_j}(x_j)] + (alpha/2) sum_c U_c^T A U_c,

    dE_alpha(U)_c = alpha A U_c + Phi^T (p_c - e_c) / n,      p_jc = softmax(f(x_j))_c, e_jc = [k_j = c],

    H = d2E_alpha(U) = alpha (I_C ⊗ A) + (I_C ⊗ Phi)^T W (I_C ⊗ Phi) / n,

with W block-diagonal over the points, the C x C blocks W_j = diag(p_j) - p_j p_j^T
(shapes: U_c (ndofs,), f_c and p_c (n,), H (C ndofs)^2; no units).
W_j is positive semidefinite with W_j 1 = 0, so E_alpha is convex in
(u_1, ..., u_C), and alpha-convex in the product H^1_omega norm.

**Softmax invariance.** Adding the same function g to every f_c leaves the
data term unchanged (logsumexp_c (f_c + g) - (f_k + g) = logsumexp_c f_c - f_k):
the data term alone has the minimisers' set U* + (v, ..., v). The
regulariser removes it: summing the gradient's components gives
sum_c dE_c = alpha A sum_c U_c (the p_c and e_c each sum to 1), so the
unique minimiser has sum_c U_c = 0, and Newton from U = 0 stays on that
subspace (sum_c of the Newton step is -sum_c U_c).

**C = 2 and the binary logistic model.** With two classes l = log(1 +
exp(-y (f_1 - f_0))), y = +-1, and the minimiser has u_0 = -u_1, so the
difference v = u_1 - u_0 = 2 u_1 minimises the logistic E at alpha / 2:
(alpha/2)(|u_0|^2 + |u_1|^2) = (alpha/4) |v|^2. The binary model
(``loss="logistic"``) stays as it is; tests/test_softmax.py checks this.

**Newton.** PETSc SNES ``newtonls`` with the backtracking line search on
||dE_alpha||^2 (as :class:`flowfem.stationary.NewtonSolver`), on one MPI
vector of C blocks: each rank holds its owned dofs of class 0, then of
class 1, ... (class-major within a rank). One vector rather than a VecNest
because SNES, its line search and KSP CG then need nothing but plain Vec
operations (norms and dot products over all classes at once), each class's
dofs stay on the rank that owns them in the one-class layout (no
communication to split or join), and a class block is a contiguous slice
that the per-class solvers copy without a scatter. The Newton system

    H(U_k) dU = -dE_alpha(U_k),      U_{k+1} = U_k + t_k dU,

is solved by KSP CG on H as a MatShell (a product costs C products with Phi
and C with Phi^T, and C with A), to the relative residual ``linear_rtol``,
preconditioned (``pc``) by

* ``block_diagonal`` (default): the diagonal blocks of H,
  P_d = blockdiag_c(alpha A + Phi^T diag(w_c) Phi / n), w_jc = p_jc (1 - p_jc) (the
  diagonal of W_j), on the sum-zero subspace S = {sum_c V_c = 0}, and alpha A
  on its complement (the invariance direction (v, ..., v)):

      P^{-1} = Pi P_d^{-1} Pi + (1 1^T / C) ⊗ (alpha A)^{-1},      Pi = (I_C - 1 1^T / C) ⊗ I.

  H commutes with Pi (W_j 1 = 0 = 1^T W_j), so H is block-diagonal in
  S + S^perp with exactly alpha A on S^perp, and P has the same structure.
  Each block of P_d^{-1} is one application of the preconditioner of a
  :class:`flowfem.stationary.LinearSolver` for it (CG's own, ``preconditioner``
  nystrom or gamg), whose weights are updated at every Newton step (the
  multigrid and the Nystrom basis are kept, the basis's Rayleigh-Ritz core
  recomputed); (alpha A)^{-1} is one multigrid application. Bound: W_j <= 2 diag(W_j), since
  v^T W_j v = Var_{p_j}(v) = (1/2) sum_{c,d} p_c p_d (v_c - v_d)^2 <= 2 sum_c p_c (1 - p_c) v_c^2,
  so H <= 2 P_d for every U and C (on S the preconditioner is the Schur
  complement of P_d, which is <= P_d there; no bound from below is claimed:
  W_j is singular; docs/theory.md §16 gives measured counts). Why Pi: P_d alone sees (v, ..., v) with
  its whole data term, where H has alpha A only, so P_d^{-1} H has small
  eigenvalues alpha / (alpha + lambda_i) there, one per eigenvalue lambda_i
  of the data term (relative to A) above alpha, and CG paid about one
  iteration for each (1-D relu, C = 3, n = 2000, 4225 dofs, alpha = 1e-5:
  736 CG iterations in 16 Newton steps, at most 65 per step; with Pi 237, at most 16).
* ``bohning``: the fixed bound W_j <= (1/2)(I_C - 1 1^T / C) (the largest
  eigenvalue of diag(p) - p p^T is at most 1/2, and its range is orthogonal
  to 1; Böhning, "Multinomial logistic regression algorithm", Ann. Inst.
  Statist. Math. 44 (1992) 197-200), so H <= B = alpha (I ⊗ A) + (1/2)(I - 1 1^T / C)
  ⊗ Phi^T Phi / n for every U. B is diagonalised by the class mean and the
  deviations from it:
  B^{-1} x = (alpha A + Phi^T Phi / (2n))^{-1} (x_c - mean x) + (alpha A)^{-1} mean x
  for every class c; two LinearSolver preconditioners (D = 1/2, and
  multigrid on alpha A for the mean), built once for the whole Newton
  solve. B equals H on the invariance direction, but W_j falls to 0 where
  a point is classified with confidence, so B overestimates H there.

Both are SPD and fixed within a Newton step: CG's theory applies. The
line search makes the first steps safe; near u* Newton converges
quadratically (the Hessian is Lipschitz: the third derivatives of
logsumexp are bounded), which tests/test_softmax.py shows. The stopping
rule is flowfem's: ||dE_alpha(U)|| <= max(rtol ||dE_alpha(U_0)||, atol),
with :class:`flowfem.stationary.NotConverged` otherwise (unless
``allow_unconverged``), a stop at the rounding floor of ||dE_alpha|| counting
as converged (:func:`flowfem.stationary.at_rounding_floor`).

**Row weights and another alpha (the regularisation path, :func:`flowfem.path.softmax_path`).**
The functional carries a weight c_j >= 0 per row, the data term being
(1/n) sum_j c_j [logsumexp_c f_c(x_j) - f_{k_j}(x_j)] (so W_j and the gradient's
p_j - e_j are scaled by c_j); c = 1 is the functional above, c_j = n / n_t on
the n_t training rows of a split and 0 on the held-out ones is E_alpha of
the training rows alone, on the one data operator of all rows
(:class:`flowfem.path.RowWeighted` does the same for one density).
:meth:`SoftmaxNewton.set_alpha` moves the solver to another alpha keeping
every preconditioner: the class blocks' Nystrom bases are kept and extended
for a smaller alpha, and the multigrid of alpha A (the mean's block), built
at the first alpha alpha_0, is applied times alpha_0 / alpha: GAMG on alpha A
is GAMG on A divided by alpha (the aggregation's threshold is relative to
the diagonal, the smoothers are Jacobi-preconditioned Chebyshev, the coarse
solve is LU: all invariant under scaling the matrix).

MPI: the data, the scores F (n, C) and the probabilities are replicated on
every rank (F is an MPI sum, as Phi U); everything over the dofs is
distributed. Every function here that touches a density is collective.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np

from flowfem.mpi import CollectiveInterrupt, check_interrupt  # first: loads MPI before dolfinx

from flowfem.petsc import PETSc  # noqa: E402

from flowfem import petsc_options as petsc_options_  # noqa: E402
from flowfem import progress as progress_  # noqa: E402
from flowfem.arguments import petsc_option, spell, unknown  # noqa: E402
from flowfem.functional import Functional  # noqa: E402
from flowfem.labels import confusion_counts, decode, encode, training_labels  # noqa: E402
from flowfem.loss import SOFTMAX, cross_entropy, softmax  # noqa: E402,F401  (softmax, cross_entropy: re-exported)
from flowfem.operator import DataOperator  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.stationary import (ROUNDING_FACTOR, LinearSolver, NewtonInfo, NotConverged, RoundingFloor,  # noqa: E402
                                at_rounding_floor, check_tolerances)

PCS = ("block_diagonal", "bohning")  # the Newton system's preconditioners (see the module docstring)
_prefix = itertools.count()
_SNES_REASONS = {v: k for k, v in vars(PETSc.SNES.ConvergedReason).items() if isinstance(v, int)}


# -- the functional ----------------------------------------------------------------------------


class SoftmaxFunctional:
    """E_alpha of the module docstring for class indices k (n,) in 0..C-1 and the data operator Phi.

    ``c`` (n,) holds the row weights c_j of the data term (module docstring; 1 here, set in place by
    :meth:`SoftmaxNewton.set_row_weights`). Its vectors are the C-block layout (:meth:`vector`);
    ``block`` is the one-class operator
    alpha A + Phi^T D Phi / n as a :class:`flowfem.functional.Functional` (its targets are not used)
    for the per-class linear solvers. ValueError for alpha not > 0, C < 2, or k of the wrong size or
    outside 0..C-1.
    """

    loss = SOFTMAX  # what a density file records (flowfem.io.settings)

    def __init__(self, H: WeightedH1, Phi: DataOperator, k: np.ndarray, C: int, alpha: float):
        k = np.asarray(k)
        if int(C) < 2:
            raise ValueError(f"C = {C} classes: softmax classification needs at least 2")
        if k.shape != (Phi.n,) or k.dtype.kind not in "iu" or k.min() < 0 or k.max() >= C:
            raise ValueError(f"class indices k must be {Phi.n} integers in 0..{C - 1} (one per data point); "
                             "map labels with flowfem.labels.encode")
        self.H, self.Phi, self.k, self.C = H, Phi, k.astype(np.int64), int(C)
        self.block = Functional(H, Phi, np.zeros(Phi.n), alpha)
        self.nlocal = H.A.getLocalSize()[0]
        self.comm = H.space.comm
        self.onehot = np.zeros((Phi.n, self.C))
        self.onehot[np.arange(Phi.n), self.k] = 1.0
        self.c = np.ones(Phi.n)
        self._u, self._w = self.block.vector(), self.block.vector()  # one-class work vectors

    @property
    def n(self) -> int:
        return self.Phi.n

    @property
    def alpha(self) -> float:
        return self.block.alpha

    @alpha.setter
    def alpha(self, alpha: float) -> None:
        """Another alpha (ValueError unless a finite number > 0, :attr:`Functional.alpha`): the blocks' solvers
        share ``block``."""
        self.block.alpha = alpha

    def vector(self) -> PETSc.Vec:
        """A zero vector of the C blocks (owned dofs of class 0, 1, ... on each rank)."""
        v = PETSc.Vec().createMPI((self.C * self.nlocal, self.C * self.H.ndofs), comm=self.comm)
        v.set(0.0)
        return v

    def blocks(self, X: PETSc.Vec) -> np.ndarray:
        """X's owned values as a read-only (C, owned dofs) array view."""
        return X.array_r.reshape(self.C, self.nlocal)

    def split(self, X: PETSc.Vec) -> list[PETSc.Vec]:
        """The C class densities' dof vectors U_c (new one-class Vecs) of a C-block vector X."""
        out = []
        for block in self.blocks(X):
            U = self.block.vector()
            U.array[:] = block
            out.append(U)
        return out

    def join(self, Us, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """The C-block vector of C one-class Vecs (the inverse of :meth:`split`)."""
        if len(Us) != self.C:
            raise ValueError(f"{len(Us)} densities given for C = {self.C} classes")
        out = self.vector() if out is None else out
        out.array.reshape(self.C, self.nlocal)[:] = [U.array_r for U in Us]
        return out

    def _apply(self, values: np.ndarray) -> np.ndarray:
        self._u.array[:] = values
        return self.Phi.apply(self._u)

    def scores(self, X: PETSc.Vec) -> np.ndarray:
        """F = (Phi U_c)_c at the data: (n, C), on every rank (collective)."""
        return np.stack([self._apply(b) for b in self.blocks(X)], axis=1)

    def _A(self, X: PETSc.Vec, out: PETSc.Vec) -> None:
        """out = (I_C ⊗ A) X."""
        ob = out.array.reshape(self.C, self.nlocal)
        for c, b in enumerate(self.blocks(X)):
            self._u.array[:] = b
            self.H.A.mult(self._u, self._w)
            ob[c] = self._w.array_r

    def _adjoint(self, R: np.ndarray, out: PETSc.Vec, axpy: float = 0.0) -> None:
        """out = Phi^T R[:, c] per class c for R (n, C); with ``axpy`` a: out = a out + Phi^T R[:, c]."""
        ob = out.array.reshape(self.C, self.nlocal)
        for c in range(self.C):
            self.Phi.adjoint(np.ascontiguousarray(R[:, c]), self._w)
            ob[c] = axpy * ob[c] + self._w.array_r if axpy else self._w.array_r

    def parts(self, X: PETSc.Vec) -> tuple[float, float]:
        """(data term (1/n) sum_j c_j cross-entropy_j, regulariser (alpha/2) sum_c U_c^T A U_c)."""
        AX = self.vector()
        self._A(X, AX)
        reg = 0.5 * self.alpha * AX.dot(X)
        AX.destroy()
        return float(np.sum(self.c * cross_entropy(self.scores(X), self.k)) / self.n), reg

    def __call__(self, X: PETSc.Vec) -> float:
        """E_alpha(X)."""
        return sum(self.parts(X))

    def scale_to_ray_minimum(self, X: PETSc.Vec, F: np.ndarray | None = None) -> float:
        """Scale X in place by t* = argmin_{t >= 0} E_alpha(t X) and return t* (1 for X = 0); ``F`` the
        scores of X (n, C) if known. Collective.

        phi(t) = E_alpha(t X) = (1/n) sum_j c_j CE(t F_j, k_j) + t^2 R, R = (alpha/2) sum_c U_c^T A U_c,
        is convex: phi'(t) = (1/n) sum_j c_j (p_j(t) - e_j) . F_j + 2 t R and
        phi''(t) = (1/n) sum_j c_j Var_{p_j(t)}(F_j) + 2 R, minimised by Newton from t = 1 (a step that
        raises phi is halved). Why: at the previous alpha's minimiser a Newton step for a smaller alpha
        grows U by about alpha_prev / alpha where the data's curvature W_j vanishes (confidently classified
        points), where the minimiser's logits grow only logarithmically; the line search then crawls
        (1-D relu, C = 3, n = 200, alpha 1e-5 -> 1e-6: 17 Newton steps, 316 CG iterations from the
        previous minimiser, 5 and 91 from it scaled by t* = 1.02, 16 and 269 from 0)."""
        if F is None:
            F = self.scores(X)
        AX = self.vector()
        self._A(X, AX)
        R = 0.5 * self.alpha * AX.dot(X)
        AX.destroy()
        c, n = self.c, self.n

        def phi(t):
            return float(np.sum(c * cross_entropy(t * F, self.k)) / n + t * t * R)

        t, value = 1.0, phi(1.0)
        for _ in range(100):
            P = softmax(t * F)
            mean = np.sum(P * F, axis=1)
            d1 = float(np.sum(c * (mean - F[np.arange(n), self.k])) / n + 2.0 * t * R)
            d2 = float(np.sum(c * (np.sum(P * F * F, axis=1) - mean ** 2)) / n + 2.0 * R)
            if not d2 > 0:  # X = 0, or no curvature along X: nothing to scale
                break
            new = max(t - d1 / d2, 0.0)
            while phi(new) > value and abs(new - t) > 1e-14 * t:
                new = 0.5 * (new + t)
            if abs(new - t) <= 1e-12 * t:
                break
            t, value = new, phi(new)
        t = self.comm.bcast(t, root=0)  # one start on every rank, whatever the rounding
        X.scale(t)
        return t

    def gradient(self, X: PETSc.Vec, out: PETSc.Vec | None = None) -> PETSc.Vec:
        """dE_alpha(X)_c = alpha A U_c + Phi^T (c (p_c - e_c)) / n (a dual C-block vector)."""
        out = self.vector() if out is None else out
        self._A(X, out)
        self._adjoint(self.c[:, None] * (softmax(self.scores(X)) - self.onehot) / self.n, out, axpy=self.alpha)
        return out

    def hessian_mult(self, P: np.ndarray, V: PETSc.Vec, out: PETSc.Vec) -> None:
        """out = H V = alpha (I ⊗ A) V + (I ⊗ Phi)^T W (I ⊗ Phi) V / n at probabilities P (n, C):
        (W_j g)_c = c_j p_jc (g_c - sum_d p_jd g_d) for g = (Phi V_c)_c at point j."""
        G = self.scores(V)
        WG = self.c[:, None] * P * (G - np.sum(P * G, axis=1, keepdims=True))
        self._A(V, out)
        self._adjoint(WG / self.n, out, axpy=self.alpha)

    def destroy(self):
        self._u.destroy()
        self._w.destroy()


# -- Newton ----------------------------------------------------------------------------------


@dataclass
class SoftmaxInfo(NewtonInfo):
    """A :class:`flowfem.stationary.NewtonInfo` (``history``: ||dE_alpha(U_k)||, ``linear_iterations``:
    CG iterations of each Newton step; ``rank`` the largest Nystrom basis of the blocks) with
    ``energies``: E_alpha(U_k) for k = 0, 1, ...; ``pc``: the Newton system's preconditioner."""

    energies: list = field(default_factory=list)
    pc: str = ""


class _Hessian:
    """Context of the MatShell H(U): the probabilities P (n, C) of the current Newton iterate."""

    def __init__(self, E: SoftmaxFunctional):
        self.E, self.P = E, None

    def mult(self, mat, x, y):
        self.E.hessian_mult(self.P, x, y)


class _BlockPC:
    """PETSc PC (type python): the block-diagonal (with the projection Pi and the mean's alpha A) or
    Böhning preconditioner of the module docstring, each one-class inverse one application of a
    LinearSolver's preconditioner: ``pcs`` are the C class blocks' PCs and then alpha A's (block_diagonal),
    or the PCs of alpha A + Phi^T Phi / (2n) and of alpha A (bohning)."""

    def __init__(self, E: SoftmaxFunctional, pcs: list, kind: str):
        self.E, self.pcs, self.kind = E, pcs, kind
        self.scales = [1.0] * len(pcs)  # alpha_0 / alpha for a multigrid built on alpha_0 A (set_alpha)
        self.x, self.y = E.block.vector(), E.block.vector()

    def _one(self, i: int, values: np.ndarray) -> np.ndarray:
        self.x.array[:] = values
        self.pcs[i].apply(self.x, self.y)
        return self.y.array_r * self.scales[i]

    def apply(self, pc, x, y):
        E = self.E
        xb, yb = E.blocks(x), y.array.reshape(E.C, E.nlocal)
        # a ValueError here (a non-finite number, in the Nystrom basis's words) leaves SNES as a PETSc error
        # and SolverOptions.errors raises it again, on every rank (the basis's products are collective)
        if self.kind == "block_diagonal":  # Pi P^{-1} Pi on the sum-zero subspace, (alpha A)^{-1} on its complement
            mean = xb.mean(axis=0)
            for c in range(E.C):
                yb[c] = self._one(c, xb[c] - mean)
            yb -= yb.mean(axis=0)
            yb += self._one(E.C, mean)
        else:  # bohning: deviations from the class mean by (alpha A + N / 2)^{-1}, the mean by (alpha A)^{-1}
            mean = xb.mean(axis=0)
            for c in range(E.C):
                yb[c] = self._one(0, xb[c] - mean)
            yb += self._one(1, mean)

    def destroy(self, pc=None):
        self.x.destroy()
        self.y.destroy()


class SoftmaxNewton:
    """Newton's method (SNES newtonls, KSP CG on the MatShell H, PC ``pc``) for dE_alpha(U) = 0 of a
    :class:`SoftmaxFunctional` (module docstring). ``preconditioner`` is the one-class blocks'
    (:class:`flowfem.stationary.LinearSolver`: nystrom or gamg). ``petsc_options`` starting with
    ``snes_`` or ``ksp_`` go to the SNES and its CG (e.g. ``snes_monitor``, ``ksp_max_it``), the others
    to the one-class solvers (e.g. ``pc_gamg_threshold``). ValueError for an unknown ``pc``, bad
    tolerances or options."""

    def __init__(self, E: SoftmaxFunctional, rtol: float = 1e-10, atol: float = 0.0, max_it: int = 50,
                 linear_rtol: float = 1e-12, linear_max_it: int = 1000, petsc_options: dict | None = None,
                 allow_unconverged: bool = False, progress: bool = False, preconditioner: str = "nystrom",
                 pc: str = "block_diagonal"):
        if pc not in PCS:
            raise ValueError(unknown("softmax Newton preconditioner", pc, PCS))
        self.rtol, self.atol = check_tolerances(rtol, atol)
        linear_rtol, _ = check_tolerances(linear_rtol, name="linear_rtol")
        opts = petsc_options_.parse(petsc_options)
        snes_opts = {k: v for k, v in opts.items() if k.startswith(("snes_", "ksp_"))}
        lin_opts = {k: v for k, v in opts.items() if k not in snes_opts}
        self.E, self.kind, self.max_it = E, pc, max_it
        self.allow_unconverged, self.progress = allow_unconverged, progress
        n = E.n
        if pc == "block_diagonal":  # one solver per class, weights w_c set at every Newton step
            self.lins = [LinearSolver(E.block, E.c.copy(), "cg", linear_rtol, petsc_options=lin_opts,
                                      preconditioner=preconditioner) for _ in range(E.C)]
            self.lins.append(LinearSolver(E.block, np.zeros(n), "cg", linear_rtol, petsc_options=lin_opts,
                                          preconditioner="gamg"))
        else:  # fixed: alpha A + Phi^T diag(c) Phi / (2n) for the deviations, alpha A (multigrid) for the mean
            self.lins = [LinearSolver(E.block, 0.5 * E.c, "cg", linear_rtol, petsc_options=lin_opts,
                                      preconditioner=preconditioner),
                         LinearSolver(E.block, np.zeros(n), "cg", linear_rtol, petsc_options=lin_opts,
                                      preconditioner="gamg")]
        self.snes = self.J = self.F = self.pc = None
        self.options = None
        self.floor = None  # RoundingFloor, built at the first rounding_floor
        self.alpha0 = E.alpha  # the alpha the multigrids of alpha A are built at (set_alpha scales them)
        try:
            for lin in self.lins:
                lin.setup()
            self.lins[0].options.check_used()  # the blocks' options (all the same): misspelt ones refused
            self._make_snes(snes_opts, linear_rtol, linear_max_it)
        except BaseException:
            self.destroy()
            raise

    def _make_snes(self, snes_opts: dict, linear_rtol: float, linear_max_it: int):
        E = self.E
        snes = PETSc.SNES().create(E.comm)
        self.snes = snes
        prefix = f"flowfem_softmax_{next(_prefix)}_"  # the same sequence on every rank
        snes.setOptionsPrefix(prefix)
        snes.setType("newtonls")
        self.F = E.vector()
        snes.setFunction(self._function, self.F)
        sizes = (E.C * E.nlocal, E.C * E.H.ndofs)
        self.hessian = _Hessian(E)
        self.J = PETSc.Mat().createPython((sizes, sizes), context=self.hessian, comm=E.comm)
        self.J.setUp()
        snes.setJacobian(self._jacobian, self.J, self.J)
        ksp = snes.getKSP()
        ksp.setType("cg")
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)  # rtol on ||dE + H dU||, as LinearSolver
        ksp.setTolerances(rtol=linear_rtol, atol=0.0, max_it=linear_max_it)
        if CollectiveInterrupt.current is not None:  # Ctrl-C under mpirun: every rank stops at the same CG step
            ksp.setMonitor(functools.partial(check_interrupt, E.comm))
        self.pc = _BlockPC(E, [lin.ksp.getPC() for lin in self.lins], self.kind)
        kpc = ksp.getPC()
        kpc.setType("python")
        kpc.setPythonContext(self.pc)
        snes.getLineSearch().setType("bt")  # on ||dE||^2: see flowfem.stationary.NewtonSolver
        snes.setTolerances(rtol=self.rtol, atol=self.atol, stol=0.0, max_it=self.max_it)
        self.options = petsc_options_.SolverOptions(prefix, {}, snes_opts, "softmax Newton (SNES newtonls, KSP cg)")
        self.options.apply()
        with self.options.errors("the set-up"):
            snes.setFromOptions()

    def set_alpha(self, alpha: float) -> None:
        """Solve at another alpha with the same solvers (a regularisation path; module docstring): E_alpha's
        alpha is set, each Nystrom basis kept and extended if the smaller alpha needs more of it (at the
        current weights), and each multigrid of alpha A (the mean's block; the class blocks' with
        ``preconditioner`` gamg) applied times alpha_0 / alpha rather than rebuilt. (LinearSolver.set_alpha
        does not serve here: the C + 1 solvers share one functional, and a rebuilt multigrid would be a
        new PC object.) ValueError unless alpha is a finite number > 0. Collective."""
        self.E.alpha = alpha
        for i, lin in enumerate(self.lins):
            if lin.nystrom is not None and lin.nystrom.mg is not None:  # its base is A: alpha enters at apply
                with lin.options.errors("a solve"):
                    lin.nystrom.extend(self.E.alpha)
            elif lin.preconditioner == "gamg":
                self.pc.scales[i] = self.alpha0 / self.E.alpha

    def set_row_weights(self, c: np.ndarray) -> None:
        """Use the row weights c (n,), c_j >= 0, in E_alpha's data term (module docstring); the preconditioners
        are kept (Böhning's fixed one, alpha A + Phi^T diag(c) Phi / (2n), takes the new weights)."""
        self.E.c[:] = c
        if self.kind == "bohning":
            self.lins[0].set_weights(0.5 * self.E.c)

    def _function(self, snes, X, F):
        self.E.gradient(X, F)

    def _jacobian(self, snes, X, J, P):
        E = self.E
        probs = softmax(E.scores(X))
        self.hessian.P = probs
        if self.kind == "block_diagonal":
            for c, lin in enumerate(self.lins[:E.C]):
                lin.set_weights(E.c * probs[:, c] * (1.0 - probs[:, c]))

    def rounding_floor(self, X: PETSc.Vec) -> float:
        """The size of the rounding in dE_alpha(X) (:class:`flowfem.stationary.RoundingFloor`, per class c):
        ROUNDING_FACTOR eps || alpha |A| |U_c| + |Phi|^T (c_j (p_jc + e_jc + (|W_j| |Phi| |U|)_c)) / n ||
        over the C blocks, |Phi| bounded as RoundingFloor bounds it, |W_j| the entries' absolute values of
        W_j = diag(p_j) - p_j p_j^T (small for a point classified with confidence, as l'' is for the logistic
        loss). Below it ||dE|| is rounding noise. Collective."""
        E = self.E
        if self.floor is None:
            self.floor = RoundingFloor(E.H, E.Phi)
        fl, u, w = self.floor, E._u, E._w
        P = softmax(E.scores(X))
        V = np.empty((E.n, E.C))
        for c, b in enumerate(E.blocks(X)):  # |Phi| |U_c|
            u.array[:] = np.abs(b)
            V[:, c] = fl.predictions(u)
        # |W_j| v = p_j * ((1 - p_j) * v + (p_j . v - p_j * v)): |W_j|_cc = p_c (1 - p_c), |W_j|_cd = p_c p_d
        WV = P * ((1.0 - P) * V + (np.sum(P * V, axis=1, keepdims=True) - P * V))
        R = E.c[:, None] * (P + E.onehot + WV) / E.n  # p - e cancels where p_j is confident: its terms' size
        total = 0.0
        for c, b in enumerate(E.blocks(X)):
            u.array[:] = np.abs(b)
            fl.regulariser(E.alpha, u, fl.work)
            fl.work.axpy(1.0, fl.adjoint(np.ascontiguousarray(R[:, c]), w))
            total += fl.work.norm() ** 2
        return ROUNDING_FACTOR * np.finfo(float).eps * np.sqrt(total)

    def solve(self, X: PETSc.Vec, atol: float | None = None, reference: float | None = None) -> SoftmaxInfo:
        """Solve dE_alpha(X) = 0 in place from X: stop at ||dE_alpha(X)|| <= max(rtol ||dE_alpha(X_0)||, atol),
        ``atol`` for this solve (default the solver's; a warm start near u* passes its :meth:`rounding_floor`,
        which rtol ||dE_alpha(X_0)|| may lie below); an unconverged stop at or below the floor counts as
        converged. The info's ``residual`` is ||dE_alpha(X)|| / ``reference`` (default ||dE_alpha(X_0)||).
        Raises NotConverged if Newton fails (unless unconverged results are allowed) and ValueError if PETSc
        fails or a number is not finite. Collective."""
        self.snes.setConvergenceHistory(reset=True)
        tolerances = self.snes.getTolerances()  # (rtol, atol, stol, max_it), restored after this solve
        if atol is not None:
            self.snes.setTolerances(atol=max(tolerances[1], float(atol)))
        energies = []
        bar = progress_.bar(desc="Newton", unit="step") if self.progress else None
        monitored = bar is not None and not bar.disable
        first = []

        def monitor(snes, its, fnorm):  # E_alpha(U_k) of every iterate (C products with Phi: cheap beside CG)
            energies.append(self.E(snes.getSolution()))
            if monitored:
                if its == 0:
                    first[:] = [fnorm if fnorm > 0 else 1.0]
                else:
                    bar.update(1)
                bar.set_postfix_str(f"||dE||/||dE0|| {fnorm / first[0]:.1e} (rtol {self.rtol:.0e})", refresh=False)

        self.snes.setMonitor(monitor)
        try:
            with self.options.errors("a solve"):
                self.snes.solve(None, X)
        finally:
            self.snes.cancelMonitor()
            self.snes.setTolerances(*tolerances)
            if bar is not None:
                bar.close()
        norms, lits = self.snes.getConvergenceHistory()
        history = [float(r) for r in norms]
        reason, its = self.snes.getConvergedReason(), self.snes.getIterationNumber()
        self.options.check_used()
        reason = at_rounding_floor(reason, history, lambda: self.rounding_floor(X))
        r0 = reference if reference else history[0] if history and history[0] > 0 else 1.0
        info = dict(rank=max(lin._preconditioner()[0] for lin in self.lins),
                    preconditioner=self.lins[0]._preconditioner()[1],
                    linear_iterations=[int(i) for i in lits[1:len(history)]], energies=energies, pc=self.kind)
        if reason <= 0 and not self.allow_unconverged:
            name = _SNES_REASONS.get(reason, str(reason))
            raise NotConverged(
                f"softmax Newton did not converge (SNES {name}) after {its} iterations; residuals "
                + ", ".join(f"{r:.2e}" for r in history)
                + f": try a larger alpha, more iterations ({petsc_option('snes_max_it', '200')}), a looser "
                f"rtol, or allow unconverged results ({spell('allow_unconverged')})")
        return SoftmaxInfo("newton-cg", its, history[-1] / r0, reason, history, converged=reason > 0, **info)

    def destroy(self):
        for obj in (self.snes, self.J, self.F, self.floor):
            if obj is not None:
                obj.destroy()
        if self.options is not None:
            self.options.clear()
        if self.pc is not None:
            self.pc.destroy()
        for lin in self.lins:
            lin.destroy()


def fit_softmax(H: WeightedH1, Phi: DataOperator, labels, alpha: float, rtol: float = 1e-10,
                linear_rtol: float | None = None, max_it: int = 50, petsc_options: dict | None = None,
                allow_unconverged: bool = False, progress: bool = False, preconditioner: str = "nystrom",
                pc: str = "block_diagonal", U0: list | None = None
                ) -> tuple[list[PETSc.Vec], SoftmaxInfo, np.ndarray]:
    """The minimiser (U_1..U_C) of the softmax E_alpha (module docstring) for the data operator Phi
    (built once, for the data x) and ``labels`` (n,) or (n, 1) of C >= 2 distinct values.

    Returns (Us, info, classes): C one-class dof vectors (PETSc, U_c of classes[c]), a
    :class:`SoftmaxInfo` (``history`` ||dE_alpha(U_k)||, ``energies`` E_alpha(U_k), ``linear_iterations``
    CG per step) and the classes (C,) in sorted order. Newton stops at ||dE_alpha(U)|| <= rtol
    ||dE_alpha(U_0)||, the CG inside at ``linear_rtol`` (default: rtol); ``U0`` (C one-class Vecs)
    is the start, default 0. Collective. Raises ValueError for bad labels (:func:`encode`), alpha,
    tolerances, ``pc`` or options, and :class:`flowfem.stationary.NotConverged` if Newton fails (unless
    ``allow_unconverged``: then ``info.converged`` is False). The labels are checked by
    :func:`flowfem.labels.training_labels` (one per row of x, at most max(2, n / 2) classes)."""
    k, classes = encode(training_labels(labels, Phi.n))
    E = SoftmaxFunctional(H, Phi, k, classes.size, alpha)
    X = E.vector() if U0 is None else E.join(U0)
    newton = SoftmaxNewton(E, rtol, max_it=max_it, linear_rtol=rtol if linear_rtol is None else linear_rtol,
                           petsc_options=petsc_options, allow_unconverged=allow_unconverged, progress=progress,
                           preconditioner=preconditioner, pc=pc)
    try:
        info = newton.solve(X)
    finally:
        newton.destroy()
    Us = E.split(X)
    X.destroy()
    E.destroy()
    return Us, info, classes


# -- predictions and scores ------------------------------------------------------------------


def _vector(u) -> PETSc.Vec:
    """A density's owned dof values: a PETSc Vec as it is, a dolfinx Function through flowfem.io."""
    if isinstance(u, PETSc.Vec):
        return u
    from flowfem.io import vector

    return vector(u)


def scores(Phi: DataOperator, densities, x: np.ndarray) -> np.ndarray:
    """f_c(x_i) = (Phi.predict(U_c, x))_i for the C densities (PETSc Vecs or dolfinx Functions) at
    x (m, d): (m, C), on every rank. Collective."""
    return np.stack([Phi.predict(_vector(u), x) for u in densities], axis=1)


def predict_proba(Phi: DataOperator, densities, x: np.ndarray) -> np.ndarray:
    """softmax_c f_c(x_i): class probabilities (m, C), rows summing to 1, on every rank. Collective."""
    return softmax(scores(Phi, densities, x))


def decision(Phi: DataOperator, densities, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The predicted labels classes[argmax_c f_c(x_i)] (m,), on every rank. Collective."""
    return decode(np.argmax(scores(Phi, densities, x), axis=1), classes)


def evaluate(Phi: DataOperator, densities, x: np.ndarray, labels, classes: np.ndarray) -> dict:
    """The scores of the fitted densities on data (x (m, d), labels (m,) among ``classes``), as plain
    JSON values for metrics.json: ``accuracy`` (fraction correct), ``loss`` (mean cross-entropy
    (1/m) sum_i -log p_{i, k_i}, in nats), ``confusion_matrix`` (C x C list, rows true class, columns
    predicted) and ``classes`` (their order). Collective (the predictions are). ValueError for labels
    outside ``classes``."""
    k, classes = encode(labels, classes)
    F = scores(Phi, densities, x)
    if F.shape[0] != k.size:
        raise ValueError(f"{k.size} labels for {F.shape[0]} data points: give one label per row of x")
    kp = np.argmax(F, axis=1)
    return dict(accuracy=float(np.mean(kp == k)), loss=float(np.mean(cross_entropy(F, k))),
                confusion_matrix=confusion_counts(k, kp, classes.size).tolist(), classes=classes.tolist())
