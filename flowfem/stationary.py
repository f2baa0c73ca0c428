"""The Euler-Lagrange equation of E_alpha: its minimiser in one linear solve, or by Newton.

For the squared loss dE_alpha(U) = 0 is linear:

    (alpha A + Phi^T Phi / n) U = Phi^T y / n.

For the logistic loss it is nonlinear, and :func:`newton` solves it with
PETSc SNES (Newton, backtracking line search on ||dE_alpha||):

    K(D_k) dU = -dE_alpha(U_k),   D_k = l''(Phi U_k, y),   U_{k+1} = U_k + lambda_k dU.

The system matrix is a sparse matrix plus a low-rank data term and is never
formed. Two solvers of K(D) X = B with K(D) = s G + alpha A + Phi^T D Phi / n
(D a diagonal data weight: 1 for the squared loss, l'' for Newton steps; the
shift s G, a metric G times s >= 0, is zero here and 1/tau in the implicit
time steps of :mod:`flowfem.flow`):

* ``cg``: PETSc CG on the matrix-free K(D), preconditioned by two V-cycles
  of algebraic multigrid (GAMG) on alpha A (+ s G). The data term has a fast-decaying
  spectrum relative to alpha A, so the iterations are bounded under mesh
  refinement (with an exact (alpha A)^{-1} they are constant; GAMG adds a
  slow growth, which the second V-cycle halves).
* ``direct``: exact, for small problems. MUMPS factorises P = alpha A (+ s G)
  once and the low-rank term is handled by the Woodbury identity, written
  with D^{1/2} so that a vanishing weight (l'' underflows for large |f|) is harmless:
  K^{-1} = P^{-1} - Z D^{1/2} (n I + D^{1/2} C^T Z D^{1/2})^{-1} D^{1/2} Z^T,
  C = Phi^T (ndofs x n, stored as owned rows on each rank), Z = P^{-1} C.
  A new D costs one dense n x n factorisation; a new shift s one MUMPS
  factorisation and one solve with n right-hand sides. In floating point the
  Woodbury formula loses accuracy when the data term dwarfs alpha A (e.g.
  monomial:8 on a box of radius 4: relative residual 2e1), so the direct
  solve is followed by iterative refinement, X <- X + K_W^{-1} (B - K X) with
  K_W^{-1} the Woodbury inverse (Higham, "Accuracy and Stability of Numerical
  Algorithms", 2nd ed., ch. 12), until the true residual meets rtol.

Every solve ends by checking its true residual ||B - K X|| against
max(rtol ||B||, atol). CG whose recursive residual drifted from the true one
is restarted from its iterate (at most 3 times); a solve that still falls
short raises :class:`NotConverged` (or, with ``allow_unconverged``, returns
an info marked ``converged=False``).

The same :class:`LinearSolver` serves every Newton step (its data weight D is
replaced, the GAMG hierarchy or the MUMPS factors are kept). D is held
:func:`~flowfem.operator.features.weights.frozen` (a copy nobody can write) and
never changed in place, so that the data operator may cache what it derives
from D (for relu in 1-D: per-bin moments of the data).

PETSc options, flowfem's defaults and the user's (``petsc_options``), go to
each KSP and SNES under its own prefix through
:class:`flowfem.petsc_options.SolverOptions`: a PETSc error they cause, or a
user's option PETSc never reads, is a ValueError naming them. Tolerances are
checked first (:func:`check_tolerances`), and the direct solver refuses a
problem whose dense n x ndofs and n x n matrices would not fit in memory.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np

from flowfem.mpi import (CollectiveError, CollectiveInterrupt, check_interrupt,  # first: loads MPI before dolfinx
                         on_every_rank)

from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

from flowfem import memory  # noqa: E402
from flowfem import progress as progress_  # noqa: E402
from flowfem import petsc_options as petsc_options_  # noqa: E402
from flowfem.arguments import named, number, petsc_option, spell, unknown  # noqa: E402
from flowfem.functional import Functional  # noqa: E402
from flowfem.nystrom import BUDGET, NystromPreconditioner  # noqa: E402
from flowfem.operator.features.weights import frozen  # noqa: E402

SOLVERS = ("cg", "direct")
PRECONDITIONERS = ("nystrom", "gamg")  # of cg: see flowfem.nystrom
DIRECT_LIMIT = 5 * 10**7  # largest n * ndofs the direct solver accepts
_prefix = itertools.count()


@dataclass
class SolveInfo:
    """How a linear solve went: solver, iterations, true relative residual ||B - K X|| / ||B||,
    and whether that residual met the requested tolerance (``converged``)."""

    solver: str
    iterations: int
    residual: float
    reason: int = 0
    history: list = field(default_factory=list)
    converged: bool = True
    rank: int = 0  # the Nystrom preconditioner's basis size (0: none, or the multigrid alone solved)
    preconditioner: str = ""  # of cg: nystrom or gamg ("" for the direct solver)

    @property
    def method(self) -> str:
        """The linear solver in words, as the command line and compare's tables print it: "cg (nystrom
        preconditioner, basis of 32)", "cg (nystrom preconditioner, multigrid alone)" (no basis: alpha
        vanishes beside the data term, or CG failed with the basis), "cg (gamg preconditioner)" or
        "direct" (of a Newton solve: its steps' linear solver)."""
        solver = self.solver.removeprefix("newton-")
        if self.preconditioner == "nystrom":
            return f"{solver} (nystrom preconditioner, {f'basis of {self.rank}' if self.rank else 'multigrid alone'})"
        return f"{solver} ({self.preconditioner} preconditioner)" if self.preconditioner else solver


def check_tolerances(rtol, atol=0.0, name: str = "rtol") -> tuple[float, float]:
    """(rtol, atol) as floats; ValueError unless 0 <= rtol < 1 and atol >= 0 are finite and one of
    them is positive (a solve stops at ||residual|| <= max(rtol ||B||, atol): with both zero it
    never could). ``name``: the argument that gave rtol (step_rtol, newton_rtol, ...), for the message."""
    rtol = number(name, rtol, f"with 0 < {named(name)} < 1")
    atol = number("atol", atol, ">= 0")
    if not (0 <= rtol < 1):
        raise ValueError(f"{named(name)} = {rtol}: the relative residual a solve must reach is a number with "
                         f"0 < {named(name)} < 1")
    if not (np.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol = {atol}: the absolute residual a solve must reach is a finite number >= 0")
    if rtol == 0 and atol == 0:
        raise ValueError(f"{named(name)} = 0: no solve reaches a residual of exactly 0; give a tolerance with "
                         f"0 < {named(name)} < 1")
    return rtol, atol


def at_rounding_floor(reason: int, history: list[float], floor) -> int:
    """A Newton solve's SNES ``reason``, or 1 (converged) if SNES stopped unconverged (reason <= 0) with the
    last ||F|| of ``history`` at or below ``floor()`` (a callable: evaluated only then), the size of the
    rounding in F. A tolerance below that floor cannot be met: SNES then stops with DIVERGED_LINE_SEARCH,
    or with DIVERGED_LOCAL_MIN once ||F|| stagnates (a warm start of the alpha path had ||F(U_0)|| = 1.7e-8,
    so rtol 1e-10 asked for 1.7e-18, and Newton reached 6.1e-18)."""
    if reason <= 0 and history and history[-1] <= floor():
        return 1
    return reason


ROUNDING_FACTOR = 1e3  # the floor's multiple of eps: see RoundingFloor (measured there)


def _abs_matrix(M: PETSc.Mat) -> PETSc.Mat:
    """|M|: a copy of the AIJ matrix M with its entries' absolute values (same layout and communicator)."""
    indptr, indices, values = M.getValuesCSR()
    return PETSc.Mat().createAIJ(size=M.getSizes(), csr=(indptr, indices, np.abs(values)), comm=M.getComm())


class RoundingFloor:
    """The size of the rounding in a Newton residual F(U) = alpha A U + Phi^T r / n (+ s G (U - U_0) - g),
    r = l'(Phi U, y) per row (row weights included), D = l'' the Hessian's data weights:

        floor(U) = ROUNDING_FACTOR eps || alpha |A| |U| + w (b^T (|r| + D b (w . |U|)) / n)
                                         + s |G| (|U| + |U_0|) + |g| ||,

    |A| the matrix of A's entries' absolute values, and w = |W Psi|^T a (the quadrature matrix's,
    assembled), with factors a_q >= 0 per quadrature point and b_j >= 0 per data row such that
    |S_jq| <= a_q b_j: a_q = |theta_q|^p, b_j = |x~_j|^p for a p-homogeneous sigma (relu, leaky_relu,
    monomial:p), a_q = max(|sigma(Z)|, |sigma(-Z)|), Z = max_q |theta_q| max_j |x~_j|, b_j = 1 otherwise
    (sigma monotone). Then |Phi| |U| <= b (w . |U|) and |Phi|^T v <= (b^T v) w for v >= 0.

    Why: a computed product M x is off by up to about k eps |M| |x| entrywise (k the length of its sums;
    Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., §3.5), whatever cancellation makes
    M x itself small (alpha A U for a smooth U, Phi^T r between rows); the error of the predictions Phi U
    reaches r through l'' = D; and an iterate U is itself known only to eps |U|, which moves F by
    |J| eps |U|: the same terms. The data operator's products are not sums of S_jq g_q term by term: the
    relu tree and the moment methods sum theta_q g_q (or x~_j r_j) over subtrees and take a dot product
    with x~_j, so their rounding is about eps sum_q |theta_q| |x~_j| |g_q|, not eps (|S| |g|)_j; a_q b_j
    bounds both. Measured, two_moons on [-4, 4]^3 with 8 cells per side, n = 150 and 300, logistic, alpha
    1e-2 ... 1e-10: the floor with |Phi| (Phi itself for relu) in place of this bound lay up to 4.6 times
    BELOW the level where Newton stagnated (alpha 1e-10: 6.4e-18, floor 1.4e-18); see the tests for this
    one (tests/test_rounding_floor.py). ROUNDING_FACTOR (1e3) stands for k. |A|, |G| and w are built once.
    Collective.
    """

    def __init__(self, H, Phi):
        self.Phi, self.A = Phi, _abs_matrix(H.A)
        self.G, self._G = None, None  # |G| of the metric G last asked for (flowfem.flow's time steps)
        self.work = H.A.createVecRight()
        comm, q, sigma = H.space.comm, Phi.quadrature, Phi.sigma
        theta = np.linalg.norm(q.theta, axis=1)
        rows = np.sqrt(np.sum(Phi.x ** 2, axis=1) + 1.0)  # |x~_j|, x~ = (x, 1)
        if sigma.homogeneous:
            a, self.b = theta ** sigma.degree, rows ** sigma.degree
        else:
            Z = (comm.allreduce(float(theta.max(initial=0.0)), op=MPI.MAX)
                 * comm.allreduce(float(rows.max(initial=0.0)), op=MPI.MAX))
            a, self.b = np.full(q.num_points, float(np.max(np.abs(sigma(np.array([-Z, Z])))))), np.ones(Phi.rows)
        self.w = H.A.createVecRight()  # |W Psi|^T a, assembled as Quadrature.transpose assembles
        q.transpose_abs(a, self.w)

    def predictions(self, Ua: PETSc.Vec) -> np.ndarray:
        """An entrywise upper bound of |Phi| |U| at this rank's rows, for Ua = |U|: b (w . |U|)."""
        return self.b * self.w.dot(Ua)

    def adjoint(self, v: np.ndarray, out: PETSc.Vec) -> PETSc.Vec:
        """out = (b^T v) w >= |Phi|^T v entrywise, for v >= 0 at this rank's rows."""
        self.w.copy(out)
        out.scale(self.Phi.total(self.b * v))
        return out

    def regulariser(self, alpha: float, Ua: PETSc.Vec, out: PETSc.Vec) -> PETSc.Vec:
        """out = alpha |A| Ua."""
        self.A.mult(Ua, out)
        out.scale(alpha)
        return out

    def of(self, E, U: PETSc.Vec, shift: float = 0.0, G: PETSc.Mat | None = None, anchor: PETSc.Vec | None = None,
           g: PETSc.Vec | None = None) -> float:
        """floor(U) for the Functional E (its loss, rows and alpha), with a time step's shift s, metric G and
        previous state U_0 = ``anchor``, and a force ``g`` where given. Collective."""
        w = self.work
        Ua = U.copy()
        Ua.abs()
        f = E.Phi.apply(U)
        rows = E.row_weights  # (flowfem.path.RowWeighted's c_j, which D holds already)
        r = np.abs(rows * E.loss.d1(f, E.y)) + E.loss.d2(f, E.y) * rows * self.predictions(Ua)
        size = self.adjoint(r / E.n, E.vector())
        size.axpy(1.0, self.regulariser(E.alpha, Ua, w))
        if shift:
            M = self.metric(G)
            M.mult(Ua, w)
            size.axpy(shift, w)
            anchor.copy(Ua)
            Ua.abs()
            M.mult(Ua, w)
            size.axpy(shift, w)
        if g is not None:
            g.copy(Ua)
            Ua.abs()
            size.axpy(1.0, Ua)
        norm = size.norm()
        Ua.destroy()
        size.destroy()
        return ROUNDING_FACTOR * np.finfo(float).eps * norm

    def metric(self, G: PETSc.Mat) -> PETSc.Mat:
        """|G| (rebuilt when G is another matrix than the last one asked for)."""
        if G is not self._G:
            if self.G is not None:
                self.G.destroy()
            self.G, self._G = _abs_matrix(G), G
        return self.G

    def destroy(self):
        for M in (self.A, self.G, self.work, self.w):
            if M is not None:
                M.destroy()


class NotConverged(CollectiveError):
    """A solve ended above its requested tolerance (raised on every rank, unless unconverged results
    are allowed): an error the user can fix (alpha, rtol, solver), so the CLI reports it in one line."""


_KSP_REASONS = {v: k for k, v in vars(PETSc.KSP.ConvergedReason).items() if isinstance(v, int)}
MAX_REFINEMENTS = 20  # direct: steps of iterative refinement (cg: at most 3 restarts from its iterate)


class _NormalOperator:
    """Context of the PETSc shell matrix K(D) = s G + alpha A + Phi^T D Phi / n (s = 0 unless shifted)."""

    def __init__(self, E: Functional, D: np.ndarray, G=None, shift: float = 0.0):
        self.E, self.D, self.G, self.shift = E, D, G, shift
        self.tmp = E.vector()

    def mult(self, mat, x, y):
        E = self.E
        E.H.A.mult(x, y)
        E.Phi.normal(x, self.D, self.tmp)
        y.aypx(E.alpha, self.tmp)
        if self.shift:
            self.G.mult(x, self.tmp)
            y.axpy(self.shift, self.tmp)


def _weights(E: Functional, D) -> np.ndarray:
    """D frozen (:func:`frozen`), checked to hold one finite weight D_j >= 0 per data row of this rank,
    shape (E.Phi.rows,): ValueError otherwise, on every rank when the data are sharded (each rank checks its
    own rows' D; a rank failing alone would leave the others waiting in the next product; replicated, D and
    so the verdict are the same on every rank). D weights the Hessian's data term Phi^T D Phi / n (l'' of a
    convex loss, row weights): a negative D_j could make K indefinite, where CG and the preconditioners
    need it SPD (and the direct solver takes max(D, 0)), and a NaN would surface only later, as a
    non-finite linear system."""
    def check():
        F = frozen(D)
        if F.shape != (E.Phi.rows,):
            raise ValueError(f"data weights D have shape {F.shape}, this rank holds {E.Phi.rows} data rows: give "
                             f"D of shape ({E.Phi.rows},), one weight per row")
        if F.size and not (F.min() >= 0.0 and F.max() < np.inf):  # NaN propagates to min: no temporaries
            bad = ~np.isfinite(F)
            j = int(np.argmax(bad)) if bad.any() else int(np.argmin(F))
            row = j + (E.Phi.row_offset if E.Phi.sharded else 0)
            raise ValueError(f"data weights D hold {F[j]} at data row {row}: give finite weights D >= 0 "
                             "(the loss's l'' or row weights), one per row")
        return F

    return on_every_rank(E.H.space.comm, check) if E.Phi.sharded else check()


class LinearSolver:
    """Solves K(D) X = B, K(D) = s G + alpha A + Phi^T D Phi / n (set up once, reused for many right-hand sides).

    ``D`` (default 1) and the shift ``s`` (default 0, with the metric matrix
    ``G``) can be changed afterwards with :meth:`set_weights` and
    :meth:`set_shift`; the preconditioner is rebuilt only when s changes.
    With ``pc_shift_factor`` f > 1 (cg only) the GAMG preconditioner is built
    on alpha A + s_p G with s_p = s rounded to a power of f, and rebuilt only
    when s_p changes: P stays spectrally equivalent to the operator (within
    sqrt(f)), and a slowly varying shift (adaptive time steps) costs few
    setups. s_p depends on s alone, so the preconditioner does not depend on
    the history of shifts.

    With ``progress`` (cg) each solve shows a bar of CG iterations and the
    residual ratio ||r|| / ||B|| against rtol (:mod:`flowfem.progress`: rank 0,
    on a terminal); the KSP monitor that feeds it is installed only then.

    ``preconditioner`` (cg): ``nystrom`` (default) is GAMG on A (+ (s / alpha) G)
    plus a Nystrom basis of the data term (:mod:`flowfem.nystrom`), at most
    ``basis_budget`` bytes per rank; ``gamg`` is GAMG on alpha A + s G alone.
    :meth:`set_alpha` changes alpha keeping the basis; :meth:`solve` with
    ``guess`` starts from X (warm starts along a regularisation path).
    """

    def __init__(self, E: Functional, D: np.ndarray | None = None, solver: str = "cg",
                 rtol: float = 1e-10, max_it: int = 2000, petsc_options: dict | None = None,
                 G: PETSc.Mat | None = None, shift: float = 0.0, atol: float = 0.0,
                 pc_shift_factor: float | None = None, allow_unconverged: bool = False,
                 progress: bool = False, preconditioner: str = "nystrom", basis_budget: float = BUDGET):
        if solver not in SOLVERS:
            raise ValueError(unknown("solver", solver, SOLVERS))
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(unknown("preconditioner", preconditioner, PRECONDITIONERS))
        self.preconditioner = preconditioner if solver == "cg" else None
        self.basis_budget = number("basis_budget", basis_budget, "> 0 (bytes per rank)")
        if not (np.isfinite(self.basis_budget) and self.basis_budget > 0):
            raise ValueError(f"basis_budget = {basis_budget}: the Nystrom basis's memory per rank is a number of "
                             "bytes > 0")
        self.nystrom = None
        if shift and G is None:
            raise ValueError("a shifted operator s G + K needs the metric matrix G")
        self.rtol, self.atol = check_tolerances(rtol, atol)  # cg stops at ||B - K X|| <= max(rtol ||B||, atol)
        self.E, self.solver, self.max_it = E, solver, max_it
        self.allow_unconverged = allow_unconverged
        self.progress = progress
        self.petsc_options = petsc_options_.parse(petsc_options)
        self.options = None  # the SolverOptions of the current KSP
        # replaced, never written (see set_weights); the default 1 is a broadcast: no n numbers per rank
        self.D = _weights(E, np.broadcast_to(1.0, E.Phi.rows) if D is None else D)
        self.G, self.shift = G, float(shift)
        self.pc_shift_factor = pc_shift_factor if solver == "cg" and pc_shift_factor else None
        self.pc_shift = self._pc_shift(self.shift)
        self.setups = 0
        comm = E.H.space.comm
        self.comm = comm
        self.iterations_total = 0  # inner iterations over all solves (cg), or solves (direct)
        self._ctx = _NormalOperator(E, self.D, G, self.shift)
        sizes = (E.H.A.getLocalSize()[0], E.H.A.getSize()[0])
        self.K = PETSc.Mat().createPython((sizes, sizes), context=self._ctx, comm=comm)
        self.K.setUp()
        if solver == "direct" and E.Phi.sharded:
            raise ValueError(f"the direct solver needs every data point on every rank, and the data are sharded "
                             f"over the ranks: use {spell('solver', repr('cg'))}")
        if solver == "direct" and E.H.ndofs * E.n > DIRECT_LIMIT:
            raise ValueError(
                f"the direct solver needs a dense {E.n} x {E.H.ndofs} matrix; this problem is too "
                f"large for it: use {spell('solver', repr('cg'))}"
            )
        if solver == "direct":  # C and Z (owned dofs x n), C^T Z and the capacitance's LU (n x n)
            owned = E.H.A.getLocalSize()[0]
            memory.require(8 * (2 * owned * E.n + 3 * E.n**2),
                           f"the direct solver for n = {E.n} data points and {E.H.ndofs} dofs",
                           f"use {spell('solver', repr('cg'))}, or fewer data points", comm)
        self.P = None
        self.ksp = None
        self._stale = True  # the preconditioner is built at the first solve (after any set_shift)

    def _setup(self):
        """P = alpha A + s G (the Nystrom preconditioner: B = A + (s / alpha) G) and a fresh KSP on it
        (fresh, so that setups do not depend on history)."""
        E = self.E
        scale = 1.0 if self.preconditioner == "nystrom" else E.alpha
        if self.P is None:
            self.P = E.H.A.copy()
        else:
            E.H.A.copy(self.P, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
        self.P.scale(scale)
        if self.pc_shift:
            self.P.axpy(self.pc_shift * scale / E.alpha, self.G,
                        structure=PETSc.Mat.Structure.SUBSET_NONZERO_PATTERN)
        if self.nystrom is not None:
            self.nystrom.destroy()
            self.nystrom = None
        self.setups += 1
        if self.ksp is not None:
            self.ksp.destroy()
            self.options.clear()
        solver = self.solver
        prefix = f"flowfem_{solver}_{next(_prefix)}_"  # same sequence on every rank
        self.ksp = PETSc.KSP().create(self.comm)
        self.ksp.setOptionsPrefix(prefix)
        defaults = {}
        if solver == "cg":
            self.ksp.setOperators(self.K, self.P)
            self.ksp.setType("cg")
            self.ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
            pc = self.ksp.getPC()
            if self.preconditioner == "nystrom":  # GAMG on B inside, under the same prefix (user's pc_gamg_*)
                self.nystrom = NystromPreconditioner(E, self.P, self.D, prefix, self.basis_budget)
                pc.setType("python")
                pc.setPythonContext(self.nystrom)
            else:
                pc.setType("gamg")
                pc.setUseAmat(False)  # smooth with alpha A on every level, not with the shell K
            # two V-cycles and a drop threshold of 0.02 in the aggregation graph: measured on relu/sin,
            # n = 2e4, meshes 128^2..512^2, CG iterations 56/57/59 instead of 63/67/75 with the defaults
            defaults = {"pc_mg_multiplicative_cycles": 2, "pc_gamg_threshold": 0.02}
            self.ksp.setTolerances(rtol=self.rtol, atol=self.atol, max_it=self.max_it)
        else:
            self.ksp.setOperators(self.P)
            self.ksp.setType("preonly")
            self.ksp.getPC().setType("lu")
            self.ksp.getPC().setFactorSolverType("mumps")
        name = (f"the cg solver (KSP cg, PC {self.preconditioner})" if solver == "cg"
                else "the direct solver (PC lu with MUMPS)")
        self.options = petsc_options_.SolverOptions(prefix, defaults, self.petsc_options, name)
        self.options.apply()
        with self.options.errors("the set-up"):
            self.ksp.setFromOptions()
            self._check_interrupt()
            self.ksp.setUp()
            if solver == "direct":
                self._woodbury()

    def _check_interrupt(self):
        """Under mpirun, in the flowfem command: a KSP monitor that stops every rank at the same iteration
        on Ctrl-C (a rank that left a solve alone would leave the others waiting in its next dot product)."""
        if CollectiveInterrupt.current is not None:
            self.ksp.setMonitor(functools.partial(check_interrupt, self.comm))

    def _woodbury(self):
        """C = Phi^T, Z = P^{-1} C and C^T Z (once per shift); the capacitance for the current D."""
        E = self.E
        if not hasattr(self, "C"):
            self.C = E.Phi.columns()
        sizes = (self.C.shape[0], E.H.ndofs), (PETSc.DECIDE, E.n)
        B = PETSc.Mat().createDense(sizes, array=np.asfortranarray(self.C), comm=self.comm)
        Z = PETSc.Mat().createDense(sizes, comm=self.comm)
        Z.setUp()
        self.ksp.matSolve(B, Z)  # all n right-hand sides in one MUMPS solve
        self.Z = Z.getDenseArray().copy()
        B.destroy()
        Z.destroy()
        self.CtZ = self.C.T @ self.Z
        self.comm.Allreduce(MPI.IN_PLACE, self.CtZ, op=MPI.SUM)
        self._capacitance()

    def _capacitance(self):
        """LU factors of n I + D^{1/2} C^T Z D^{1/2} (for D = 1: n I + C^T Z)."""
        import scipy.linalg

        self.Dh = np.sqrt(np.maximum(self.D, 0.0))
        cap = self.Dh[:, None] * self.CtZ * self.Dh[None, :]
        cap[np.diag_indices_from(cap)] += self.E.n
        self.capacitance = scipy.linalg.lu_factor(cap)

    def set_weights(self, D: np.ndarray, refresh: bool = True) -> None:
        """Use a new data weight D (e.g. l''(Phi U, y) in a Newton step); the preconditioner is kept.
        The Nystrom basis's Rayleigh-Ritz core is recomputed for D (k products with the data term)
        unless ``refresh`` is False: then the preconditioner stays the one of the earlier weights, still
        SPD and good where the data term hardly changed (a regularisation path's folds and refit,
        whose weights select random subsets of the same data: 375 s of products saved on a 2-D box).

        D (n,) is copied into a new frozen array (:func:`~flowfem.operator.features.weights.frozen`) that
        replaces the old one in K and the preconditioner: the data operator caches per D array what it
        derives from D (relu in 1-D: per-bin moments), which an in-place change would leave stale. ValueError
        (on every rank when sharded) unless D has shape (E.Phi.rows,) and finite entries >= 0."""
        self.D = self._ctx.D = _weights(self.E, D)
        if self.solver == "direct" and not self._stale:
            self._capacitance()
        if self.nystrom is not None:
            if refresh:
                self.nystrom.set_weights(self.D)
            else:  # the basis's later blocks use the new weights (as they did when D changed in place)
                self.nystrom.D = self.D

    def set_alpha(self, alpha: float) -> None:
        """Use a new alpha in K (the Functional's alpha is set too: E_alpha changes with it). GAMG and
        the direct solver's factors are rebuilt; the Nystrom basis is kept (extended at the next solve
        if the smaller alpha needs more of it) unless a shift makes the base depend on alpha."""
        previous = self.E.alpha
        self.E.alpha = alpha  # ValueError unless a finite number > 0 (Functional.alpha)
        if self.E.alpha != previous and (self.preconditioner != "nystrom" or self.pc_shift):
            self._stale = True

    def set_shift(self, shift: float) -> None:
        """Use a new shift s in s G + K(D); rebuilds the preconditioner (GAMG setup, or MUMPS and Woodbury)."""
        shift = float(shift)
        if shift == self.shift:
            return
        if shift and self.G is None:
            raise ValueError("a shifted operator s G + K needs the metric matrix G")
        self.shift = self._ctx.shift = shift
        pc_shift = self._pc_shift(shift)
        if pc_shift != self.pc_shift:
            self.pc_shift = pc_shift
            self._stale = True

    def _pc_shift(self, shift: float) -> float:
        """The preconditioner's shift: s itself, or s rounded to a power of pc_shift_factor."""
        f = self.pc_shift_factor
        if not f or shift <= 0:
            return shift
        return float(f ** round(np.log(shift) / np.log(f)))

    def setup(self) -> None:
        """Build the preconditioner now (else the next solve does): GAMG, and for nystrom its basis for
        the current alpha; MUMPS and the Woodbury factors for direct. Collective."""
        if self._stale:
            self._setup()
            self._stale = False
        with self.options.errors("the set-up"):
            self.ksp.setUp()
            if self.nystrom is not None:
                self.nystrom.extend(self.E.alpha)

    def solve(self, B: PETSc.Vec, X: PETSc.Vec, check: bool = True, guess: bool = False,
              stop: float | None = None) -> SolveInfo:
        """X = K(D)^{-1} B; the info holds iterations and the true relative residual.

        ``guess``: X holds an initial guess (a warm start, e.g. the previous alpha's solution on a
        regularisation path); else X's values are ignored.

        With ``check`` (default) a true residual ||B - K X|| above max(rtol ||B||, atol)
        raises :class:`NotConverged` unless the solver allows unconverged results;
        Newton's inner solves pass ``check=False`` (Newton checks ||dE|| itself).

        ``stop`` (cg): iterate, for this solve, until ||B - K X|| <= ``stop``, below max(rtol ||B||, atol)
        (a warm start that already meets that would take no step: the regularisation path asks for rtol
        times its start's residual, bounded below by the rounding floor, :class:`RoundingFloor`; CG's own
        residual falls on below the rounding, so a stop under the floor costs iterations for nothing). A
        solve whose true residual stalls above ``stop`` ends with its iterate, converged if within
        max(rtol ||B||, atol).
        """
        if self._stale:
            self._setup()
            self._stale = False
        with self.options.errors("a solve"):
            if self.nystrom is not None and self.nystrom.mg is not None:
                self.nystrom.extend(self.E.alpha)  # a smaller alpha may need more of the basis
            if stop is not None:
                stop = number("stop", stop, ">= 0")
                if not (np.isfinite(stop) and stop >= 0):
                    raise ValueError(f"stop = {stop}: the residual a solve must reach is a finite number >= 0")
            info = self._solve(B, X, check, guess, stop)
        self.options.check_used()
        return info

    def _solve(self, B: PETSc.Vec, X: PETSc.Vec, check: bool, guess: bool, stop: float | None = None) -> SolveInfo:
        history = []
        bnorm = B.norm()
        required = max(self.rtol * bnorm, self.atol)  # what converged means
        target = required if stop is None or self.solver != "cg" else min(float(stop), required)  # where CG stops
        R = B.duplicate()
        if self.solver == "cg":
            self.ksp.setConvergenceHistory()
            its = 0
            # without progress (every solve inside a flow or Newton) not even a disabled bar is made
            bar = progress_.bar(desc="CG", unit="it") if self.progress else None
            monitored = bar is not None and not bar.disable
            if monitored:
                self.ksp.setMonitor(self._monitor(bar, bnorm, target))
            tolerances = self.ksp.getTolerances()  # (rtol, atol, divtol, max_it), restored in the finally below
            if stop is not None:  # CG stops at the target, for this solve only
                self.ksp.setTolerances(0.0, target, *tolerances[2:])
            try:
                previous = np.inf
                for restart in range(1 + 3):
                    self.ksp.setInitialGuessNonzero(guess or restart > 0)  # a restart continues from X
                    self.ksp.solve(B, X)
                    history += list(self.ksp.getConvergenceHistory())
                    its += self.ksp.getIterationNumber()
                    reason = self.ksp.getConvergedReason()
                    rnorm = self._residual(B, X, R)  # the true residual, also the one reported
                    if reason < 0 or rnorm <= target or (stop is not None and not rnorm < 0.5 * previous):
                        break  # else CG's recursive residual drifted from the true one: restart (unless stalled)
                    previous = rnorm
                if stop is not None and reason < 0 and rnorm <= required:
                    reason = 1  # short of a stop below the required residual (rounding): converged all the same
                if not rnorm <= required and self.nystrom is not None and self.nystrom.deflating:
                    # a data term 1e20 times alpha A and more: the basis makes P^{-1} so ill-conditioned that
                    # CG's residual drifts; the multigrid alone (the gamg preconditioner) solves it, from 0: the
                    # failed iterate's error sits in those directions, where a restart from it stalled. Until
                    # the next solve extends the basis, which decides anew (and the info says what solved)
                    self.nystrom.deflating = False
                    self.ksp.setInitialGuessNonzero(False)
                    self.ksp.solve(B, X)
                    history += list(self.ksp.getConvergenceHistory())
                    its += self.ksp.getIterationNumber()
                    reason = self.ksp.getConvergedReason()
                    rnorm = self._residual(B, X, R)
            finally:
                self.ksp.setTolerances(*tolerances)
                if monitored:
                    self.ksp.cancelMonitor()
                    self._check_interrupt()
                if bar is not None:
                    bar.close()
            self.ksp.setInitialGuessNonzero(False)
            if reason < 0 and not self.allow_unconverged:  # a breakdown, even inside Newton
                if reason == PETSc.KSP.ConvergedReason.DIVERGED_NANORINF:
                    raise NotConverged("the linear system holds a non-finite number (NaN or inf): inputs so "
                                       "large that sigma(theta . x~)^2 overflows? rescale the data")
                raise NotConverged(
                    f"CG did not converge (PETSc {_KSP_REASONS.get(reason, reason)}) after {its} iterations; "
                    f"try a larger alpha, a looser rtol or "
                    # the direct solver needs every row on every rank: sharded data can only accept the iterate
                    + (f"allow unconverged results ({spell('allow_unconverged')})" if self.E.Phi.sharded
                       else spell("solver", repr("direct")))
                )
        else:
            self._woodbury_solve(B, X)  # exact up to refinement: a guess would not help
            its, reason = 1, 1
            rnorm = self._residual(B, X, R)
            dX = X.duplicate()
            while rnorm > target and its < 1 + MAX_REFINEMENTS:  # iterative refinement
                self._woodbury_solve(R, dX)
                X.axpy(1.0, dX)
                previous, rnorm = rnorm, self._residual(B, X, R)
                its += 1
                if not rnorm <= 0.5 * previous:  # stagnates: the Woodbury inverse is too inaccurate
                    if not rnorm <= previous:
                        X.axpy(-1.0, dX)  # keep the better iterate
                        rnorm = previous
                    break
            dX.destroy()
        self.iterations_total += its
        R.destroy()
        residual = rnorm / bnorm if bnorm > 0 else rnorm
        converged = bool(np.isfinite(rnorm) and rnorm <= required)
        if check and not converged and not self.allow_unconverged:
            requested = max(self.rtol, self.atol / bnorm) if bnorm > 0 else self.atol
            raise NotConverged(
                f"the {self.solver} solve reached a relative residual of {residual:.2e}, above the requested "
                f"{requested:.1e} (the system is too ill-conditioned for it in double precision): use a larger "
                "alpha, " + (f"{spell('solver', repr('cg'))}, " if self.solver == "direct" else "")
                + f"a looser rtol, or allow unconverged results ({spell('allow_unconverged')})")
        return SolveInfo(self.solver, its, residual, reason, history, converged, *self._preconditioner())

    def _preconditioner(self) -> tuple[int, str]:
        """(Nystrom basis size, the preconditioner's name) of the last solve: a user's pc_type option
        replaces the Nystrom preconditioner, and is then the one reported (with no basis)."""
        if self.solver != "cg":
            return 0, ""
        kind = self.ksp.getPC().getType()
        if kind == "python":
            return self.nystrom.rank if self.nystrom.deflating else 0, "nystrom"
        return 0, kind

    @staticmethod
    def _monitor(bar, bnorm: float, target: float):
        """A KSP monitor that advances ``bar`` by one per CG iteration (its = 0 is the initial residual,
        also after a restart) and shows ||r|| / ||B|| against the relative target."""
        scale = bnorm if bnorm > 0 else 1.0

        def monitor(ksp, its, rnorm):
            if its > 0:
                bar.update(1)
            bar.set_postfix_str(f"||r||/||b|| {rnorm / scale:.1e} (rtol {target / scale:.0e})", refresh=False)

        return monitor

    def _residual(self, B: PETSc.Vec, X: PETSc.Vec, R: PETSc.Vec) -> float:
        """R = B - K X; returns ||R||."""
        self.K.mult(X, R)
        R.aypx(-1.0, B)
        return R.norm()

    def _woodbury_solve(self, B: PETSc.Vec, X: PETSc.Vec) -> None:
        """X = K_W^{-1} B by MUMPS and the Woodbury identity (see the module docstring)."""
        import scipy.linalg

        self.ksp.solve(B, X)
        t = self.C.T @ X.array_r
        self.comm.Allreduce(MPI.IN_PLACE, t, op=MPI.SUM)
        X.array[:] -= self.Z @ (self.Dh * scipy.linalg.lu_solve(self.capacitance, self.Dh * t))

    def destroy(self):
        if self.nystrom is not None:
            self.nystrom.destroy()
        for obj in (self.ksp, self.K, self.P):
            if obj is not None:
                obj.destroy()
        if self.options is not None:
            self.options.clear()


def solve(E: Functional, solver: str = "cg", rtol: float = 1e-10, petsc_options: dict | None = None,
          allow_unconverged: bool = False, progress: bool = False,
          preconditioner: str = "nystrom") -> tuple[PETSc.Vec, SolveInfo]:
    """The minimiser U* of E_alpha (squared loss): one solve of (alpha A + Phi^T Phi / n) U = Phi^T y / n.

    ``preconditioner`` (cg): ``nystrom`` (default, :mod:`flowfem.nystrom`: iterations independent
    of alpha) or ``gamg`` (multigrid on alpha A alone: iterations grow as alpha falls).

    Raises :class:`NotConverged` if ||b - K U|| > rtol ||b|| at the end, unless ``allow_unconverged``
    (then ``info.converged`` is False). ``progress``: a bar of the CG iterations (see :class:`LinearSolver`).
    """
    if not E.loss.quadratic:
        raise ValueError(f"the one-solve minimiser needs the squared loss, not {E.loss.name}; use newton()")
    if E.outputs > 1:
        raise ValueError(f"solve() returns one density; this functional has {E.outputs} outputs: use solve_outputs()")
    Us, infos = solve_outputs(E, solver, rtol, petsc_options, allow_unconverged, progress, preconditioner)
    return Us[0], infos[0]


def solve_outputs(E: Functional, solver: str = "cg", rtol: float = 1e-10, petsc_options: dict | None = None,
                  allow_unconverged: bool = False, progress: bool = False,
                  preconditioner: str = "nystrom") -> tuple[list[PETSc.Vec], list[SolveInfo]]:
    """The minimisers U*_1..U*_m of an m-output E_alpha (squared loss, y (n, m); m = 1 for y (n,)):

        (alpha A + Phi^T Phi / n) U_k = Phi^T y_k / n,   k = 1..m,

    one operator and m right-hand sides, solved one after another by ONE :class:`LinearSolver`:
    the data operator Phi, the GAMG hierarchy and the Nystrom basis (which depend on Phi and
    alpha, not on y) are built once and serve every output. The outputs are independent, so
    each solve starts from zero. Returns the m solutions and the m solves' infos. Raises as
    :func:`solve`.
    """
    if not E.loss.quadratic:
        raise ValueError(f"the one-solve minimiser needs the squared loss, not {E.loss.name}; use newton()")
    lin = LinearSolver(E, None, solver, rtol, petsc_options=petsc_options, allow_unconverged=allow_unconverged,
                       progress=progress, preconditioner=preconditioner)
    Us, infos = [], []
    try:
        for k in range(E.outputs):
            U = E.vector()
            infos.append(lin.solve(E.output(k).rhs(), U))
            Us.append(U)
    finally:  # also on NotConverged: its PETSc options leave the database
        lin.destroy()
    return Us, infos


# -- Newton -----------------------------------------------------------------------------


@dataclass
class NewtonInfo(SolveInfo):
    """How a Newton solve went. ``iterations`` are Newton steps, ``residual`` the final
    ||F(U)|| / ||F(U_0)||; ``history`` holds ||F(U_k)|| for k = 0, 1, ... and
    ``linear_iterations`` the inner (CG) iterations of each Newton step."""

    linear_iterations: list = field(default_factory=list)


_SNES_REASONS = {v: k for k, v in vars(PETSc.SNES.ConvergedReason).items() if isinstance(v, int)}


class _LinearSolverPC:
    """PETSc PC (type python) whose application is a full solve with a :class:`LinearSolver`."""

    def __init__(self, lin: LinearSolver):
        self.lin, self.error, self.its = lin, None, []

    def apply(self, pc, x, y):
        try:
            self.its.append(self.lin.solve(x, y, check=False).iterations)
        except ValueError as e:  # NotConverged, PETSc errors (LinearSolver words them): reported after SNES
            self.error = e       # returns; a zero step stops the line search
            y.set(0.0)


class NewtonSolver:
    """Newton's method (PETSc SNES ``newtonls``) for

        F(U) = s G (U - U_0) + dE_alpha(U) - g = 0,

    the Euler-Lagrange equation (s = 0, g = 0) or an implicit time step of
    the gradient flow (s = 1 / (theta tau), U_0 the previous state). Each
    Newton step solves J dU = -F(U) with J = s G + K(l''(Phi U, y)) by the
    same :class:`LinearSolver` as the stationary problem (its weights are
    updated, its preconditioner kept), wrapped as the SNES's preconditioner
    with KSP ``preonly``. The backtracking line search ("bt") works on the
    merit ||F||^2 (F is the gradient of the objective E_alpha(U) + s/2
    ||U - U_0||_G^2 - g . U, but near the solution the objective's decrease
    drowns in rounding while ||F|| still falls quadratically). For the squared
    loss F is affine and one linear solve of the correction replaces SNES.

    Options under ``petsc_options`` starting with ``snes_`` go to the SNES
    (e.g. ``snes_monitor``, ``snes_linesearch_type``), the others to the
    linear solver; for the squared loss, which needs no SNES, all go to the
    linear solver (so that snes_ options are refused as unused there).

    With ``progress`` each (SNES) solve shows a bar of Newton steps, the
    ratio ||F|| / ||F(U_0)|| against rtol and the CG iterations so far
    (:mod:`flowfem.progress`); its SNES monitor is installed only then.
    """

    def __init__(self, E: Functional, solver: str = "cg", rtol: float = 1e-10, atol: float = 0.0,
                 max_it: int = 50, linear_rtol: float = 1e-10, G: PETSc.Mat | None = None,
                 petsc_options: dict | None = None, linear_atol: float = 0.0,
                 pc_shift_factor: float | None = None, allow_unconverged: bool = False,
                 progress: bool = False, preconditioner: str = "nystrom"):
        opts = petsc_options_.parse(petsc_options)
        newton = not E.loss.quadratic
        snes_opts = {k: v for k, v in opts.items() if newton and k.startswith("snes_")}
        lin_opts = {k: v for k, v in opts.items() if k not in snes_opts}
        self.E, self.G = E, G
        self.rtol, self.atol = check_tolerances(rtol, atol)
        self.max_it = max_it
        self.allow_unconverged = allow_unconverged
        self.progress = progress
        self.lin = LinearSolver(E, None, solver, linear_rtol, petsc_options=lin_opts, G=G, atol=linear_atol,
                                pc_shift_factor=pc_shift_factor, allow_unconverged=allow_unconverged,
                                preconditioner=preconditioner)
        self.shift, self.anchor, self.g = 0.0, None, None
        self._work = E.vector()
        self.floor = None  # RoundingFloor, built at the first rounding_floor
        self.snes = None
        self.options = None
        if newton:
            self._make_snes(snes_opts)

    def _make_snes(self, snes_opts: dict):
        comm = self.lin.comm
        snes = PETSc.SNES().create(comm)
        prefix = f"flowfem_newton_{next(_prefix)}_"
        snes.setOptionsPrefix(prefix)
        snes.setType("newtonls")
        self.F = self.E.vector()
        snes.setFunction(self._function, self.F)
        snes.setJacobian(self._jacobian, self.lin.K, self.lin.K)
        ksp = snes.getKSP()
        ksp.setType("preonly")
        self.pc = _LinearSolverPC(self.lin)
        pc = ksp.getPC()
        pc.setType("python")
        pc.setPythonContext(self.pc)
        snes.getLineSearch().setType("bt")
        snes.setTolerances(rtol=self.rtol, atol=self.atol, stol=0.0, max_it=self.max_it)
        self.snes = snes
        self.options = petsc_options_.SolverOptions(prefix, {}, snes_opts, "Newton (SNES newtonls)")
        self.options.apply()
        with self.options.errors("the set-up"):
            snes.setFromOptions()

    # -- F, J and the objective ------------------------------------------------------

    def residual(self, U: PETSc.Vec, out: PETSc.Vec) -> PETSc.Vec:
        """out = F(U) = s G (U - U_0) + dE_alpha(U) - g."""
        self.E.gradient(U, out)
        if self.shift:
            U.copy(self._work)
            self._work.axpy(-1.0, self.anchor)
            tmp = self._work.duplicate()
            self.G.mult(self._work, tmp)
            out.axpy(self.shift, tmp)
            tmp.destroy()
        if self.g is not None:
            out.axpy(-1.0, self.g)
        return out

    def objective(self, U: PETSc.Vec) -> float:
        """E_alpha(U) + s/2 ||U - U_0||_G^2 - g . U (F is its gradient)."""
        value = self.E(U)
        if self.shift:
            U.copy(self._work)
            self._work.axpy(-1.0, self.anchor)
            tmp = self._work.duplicate()
            self.G.mult(self._work, tmp)
            value += 0.5 * self.shift * tmp.dot(self._work)
            tmp.destroy()
        if self.g is not None:
            value -= self.g.dot(U)
        return value

    def rounding_floor(self, U: PETSc.Vec) -> float:
        """The size of the rounding in F(U) (:class:`RoundingFloor`): below it ||F|| is rounding noise.
        Collective."""
        if self.floor is None:
            self.floor = RoundingFloor(self.E.H, self.E.Phi)
        return self.floor.of(self.E, U, self.shift, self.G, self.anchor, self.g)

    def _function(self, snes, X, F):
        self.residual(X, F)

    def _jacobian(self, snes, X, J, P):
        self.lin.set_weights(self.E.curvature(X))

    # -- solve ---------------------------------------------------------------------------

    def solve(self, U: PETSc.Vec, shift: float = 0.0, anchor: PETSc.Vec | None = None,
              g: PETSc.Vec | None = None, atol: float | None = None,
              reference: float | None = None) -> NewtonInfo:
        """Solve F(U) = 0 in place, starting from U: stop at ||F(U)|| <= max(rtol ||F(U_0)||, atol), ``atol``
        for this solve (default the solver's; a warm start near the solution passes its
        :meth:`rounding_floor`, which rtol ||F(U_0)|| may lie below). An unconverged stop at or below
        the rounding floor counts as converged (:func:`at_rounding_floor`). The info's ``residual`` is
        ||F(U)|| / ``reference`` (default ||F(U_0)||; the regularisation path's refit gives ||dE(0)||,
        as :class:`flowfem.problem.Result` documents it). Raises :class:`NotConverged` if Newton fails
        (unless unconverged results are allowed) and ValueError if PETSc fails (see
        :class:`flowfem.petsc_options.SolverOptions`)."""
        if shift and anchor is None:
            raise ValueError("a time step (shift > 0) needs the previous state U_0")
        self.shift, self.anchor, self.g = float(shift), anchor, g
        self.lin.set_shift(self.shift)
        if self.snes is None:
            return self._solve_affine(U)
        self.pc.its, self.pc.error = [], None
        self.snes.setConvergenceHistory(reset=True)
        tolerances = self.snes.getTolerances()  # (rtol, atol, stol, max_it), restored after this solve
        if atol is not None:
            self.snes.setTolerances(atol=max(tolerances[1], float(atol)))
        bar = progress_.bar(desc="Newton", unit="step") if self.progress else None  # as in LinearSolver
        monitored = bar is not None and not bar.disable
        if monitored:
            self.snes.setMonitor(self._monitor(bar))
        try:
            with self.options.errors("a solve"):
                self.snes.solve(None, U)
        finally:
            self.snes.setTolerances(*tolerances)
            if monitored:
                self.snes.cancelMonitor()
            if bar is not None:
                bar.close()
        history = [float(r) for r in self.snes.getConvergenceHistory()[0]]
        reason, its = self.snes.getConvergedReason(), self.snes.getIterationNumber()
        if self.pc.error is not None:  # the same on every rank: the inner solves are collective
            if isinstance(self.pc.error, NotConverged):
                raise NotConverged(f"a Newton step's linear solve failed: {self.pc.error}")
            raise self.pc.error
        self.options.check_used()
        reason = at_rounding_floor(reason, history, lambda: self.rounding_floor(U))
        r0 = reference if reference else history[0] if history and history[0] > 0 else 1.0
        rank, name = self.lin._preconditioner() if self.lin.ksp is not None else (0, "")
        pc = dict(rank=rank, preconditioner=name)
        if reason <= 0 and self.allow_unconverged:
            return NewtonInfo("newton-" + self.lin.solver, its, history[-1] / r0, reason, history,
                              converged=False, linear_iterations=list(self.pc.its), **pc)
        if reason <= 0:
            name = _SNES_REASONS.get(reason, str(reason))
            raise NotConverged(
                f"Newton did not converge (SNES {name}) after {its} iterations; residuals "
                + ", ".join(f"{r:.2e}" for r in history)
                + f": try a larger alpha, more iterations ({petsc_option('snes_max_it', '200')}), a looser "
                f"rtol, or allow unconverged results ({spell('allow_unconverged')})"
            )
        return NewtonInfo("newton-" + self.lin.solver, its, history[-1] / r0, reason, history,
                          linear_iterations=list(self.pc.its), **pc)

    def _monitor(self, bar):
        """A SNES monitor that advances ``bar`` by one per Newton step and shows ||F|| / ||F(U_0)||
        against rtol and the inner CG iterations so far."""
        first = []

        def monitor(snes, its, fnorm):
            if its == 0:
                first[:] = [fnorm if fnorm > 0 else 1.0]
            else:
                bar.update(1)
            bar.set_postfix_str(f"||dE||/||dE0|| {fnorm / first[0]:.1e} (rtol {self.rtol:.0e}), "
                                f"{sum(self.pc.its)} CG its", refresh=False)

        return monitor

    def _solve_affine(self, U: PETSc.Vec) -> NewtonInfo:
        """Squared loss: F is affine with Jacobian s G + K, so one correction solve is exact."""
        F = self.residual(U, self.E.vector())
        f0 = F.norm()
        F.scale(-1.0)
        dU = self.E.vector()
        info = self.lin.solve(F, dU)
        U.axpy(1.0, dU)
        F.destroy()
        dU.destroy()
        return NewtonInfo("newton-" + self.lin.solver, 1, info.residual, 1, [f0, info.residual * f0],
                          converged=info.converged, linear_iterations=[info.iterations], rank=info.rank,
                          preconditioner=info.preconditioner)

    def destroy(self):
        if self.snes is not None:
            self.snes.destroy()
            self.options.clear()
        if self.floor is not None:
            self.floor.destroy()
        self.lin.destroy()


def newton(E: Functional, U0: PETSc.Vec | None = None, solver: str = "cg", rtol: float = 1e-10,
           atol: float = 0.0, max_it: int = 50, linear_rtol: float = 1e-12, petsc_options: dict | None = None,
           allow_unconverged: bool = False, progress: bool = False,
           preconditioner: str = "nystrom") -> tuple[PETSc.Vec, NewtonInfo]:
    """The minimiser U* of E_alpha for any convex loss by Newton's method (SNES, line search).

    Stops when ||dE_alpha(U)|| <= max(rtol ||dE_alpha(U0)||, atol); U0 defaults to 0.
    The info's ``history`` is the residual ||dE_alpha(U_k)|| of every iteration. Raises
    :class:`NotConverged` if Newton fails, unless ``allow_unconverged`` (``info.converged`` False).
    ``progress``: a bar of the Newton steps (see :class:`NewtonSolver`).
    """
    U = E.vector() if U0 is None else U0.copy()
    ns = NewtonSolver(E, solver, rtol, atol, max_it, linear_rtol, petsc_options=petsc_options,
                      allow_unconverged=allow_unconverged, progress=progress, preconditioner=preconditioner)
    try:
        info = ns.solve(U)
    finally:
        ns.destroy()
    return U, info
