"""The user-facing entry point: a Problem on a Space, fitted to data.

    problem = Problem(Space.box(d=1, n=64, radius=4), activation="relu",
                      weight="gaussian:2", alpha=1e-4, kappa=1.0)
    result = problem.fit(x, y)          # one parallel linear solve
    result.density                      # dolfinx Function u* on the parameter mesh
    result.energy, result.parts, result.iterations, result.residual   # plain numbers
    result.predict(x_test)              # f_{u*}(x_test), on every rank (collective)

``fit`` builds the data operator once and keeps what it derives: the
density as a Function, E_alpha and its parts, the solver's numbers and
timings are stored on every rank, so reading them on one rank alone (``if
rank == 0: print(result.energy)``) is safe. ``predict`` and ``rmse``
evaluate the distributed density: call them on every rank.

With ``loss="logistic"`` (labels in {-1, +1}) the Euler-Lagrange equation is
nonlinear and ``fit`` runs Newton's method (PETSc SNES with a line search),
each step one solve with the same linear solver; ``result.info.history``
is the residual ||dE_alpha|| of every Newton iteration.

With ``loss="softmax"`` (labels: any C >= 2 distinct numbers or strings) ``fit`` fits one
density per class by :func:`flowfem.softmax.fit_softmax` (softmax cross-entropy, Newton with
CG) and returns a :class:`ClassifierResult`, whose methods follow scikit-learn's classifiers:

    result = Problem(space, loss="softmax", alpha=1e-4).fit(x, labels)
    result.classes                      # the C labels, sorted; density c is class classes[c]
    result.predict(x_test)              # labels classes[argmax_c f_c] (m,)
    result.predict_proba(x_test)        # softmax probabilities (m, C)
    result.decision_function(x_test)    # the scores (logits) f_c(x) (m, C)

    flow = problem.flow(x, y, metric="L2", scheme="implicit_euler")
    run = flow.run(U0, tau=1.0, growth=4.0, tol=1e-6)   # see flowfem.flow

``method`` picks how the feature products S g, S^T r of the data operator are
done (see :mod:`flowfem.operator`): ``auto`` (default, always exact:
relu1d_moments for relu on 1-D inputs, relu1d for a single product there,
relu_tree for relu on more, monomial for z^k, dense otherwise), one of them
by name, or ``interpolated[:cells]``, the one approximation (an input grid,
error O(h^2): :mod:`flowfem.operator.features.interpolated`), only by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from flowfem import mpi  # (first: loads MPI before dolfinx)

import dolfinx.fem  # noqa: E402
from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

from flowfem import data as _data  # noqa: E402
from flowfem import memory  # noqa: E402
from flowfem.arguments import bounded, integer, named, spell  # noqa: E402
from flowfem.activations import activation as _activation  # noqa: E402
from flowfem.functional import Functional  # noqa: E402
from flowfem.io import function  # noqa: E402
from flowfem.loss import loss as _loss  # noqa: E402
from flowfem.operator import DataOperator  # noqa: E402
from flowfem.operator.select import check as check_method  # noqa: E402
from flowfem.operator.select import make_features  # noqa: E402
from flowfem.petsc_options import parse as parse_petsc_options  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.space import Space, chart_radius, check_parameter_dim  # noqa: E402
from flowfem.stationary import SolveInfo, check_tolerances, newton, solve_outputs  # noqa: E402

if TYPE_CHECKING:
    from flowfem.path import RegularisationPath


def make_space(domain: str, d: int, size=None, radius: float | None = 4.0, activation: str = "relu",
               comm: MPI.Comm = MPI.COMM_WORLD, x=None) -> Space:
    """The parameter mesh ``Space.make(domain, d, size, radius)`` for networks on d inputs.

    What needs no mesh is checked before meshing (the circle, sphere and s3 hold only positively
    homogeneous activations: ValueError otherwise); a mesh file's dimension after reading
    (it must be d + 1: ValueError otherwise). On s3 ``radius`` None is the chart radius Z chosen
    from the inputs x (n, 3) by :func:`flowfem.space.chart_radius`.
    """
    if domain in ("circle", "sphere", "s3"):
        _activation(activation).require_homogeneous(domain)
    if domain == "s3" and radius is None:
        if x is None:
            raise ValueError("the s3 chart radius Z is chosen from the inputs: pass x, or a radius")
        x = np.asarray(x, dtype=float).reshape(len(x), -1)
        radius = chart_radius(float(np.linalg.norm(x, axis=1).max(initial=0.0)))
    space = Space.make(domain, d, size, radius, comm)
    check_parameter_dim(d, space.gdim, "the data")
    return space


def solve_bytes(cells: int, tdim: int, gdim: int, degree: int, quadrature_degree: int) -> float:
    """An estimate of the memory of a fit on a mesh of ``cells`` cells beyond the mesh itself:
    100 k^2 + 8 nq (k + 2 gdim + 4) bytes per cell, k = binom(tdim + p, p) the dofs of a cell of
    degree p, nq <= ((quadrature_degree + 2) // 2)^tdim its quadrature points. The k^2 term is the
    matrix A, its copy P = alpha A and the GAMG hierarchy (entries per cell ~ k^2), the nq term
    the quadrature points, weights and W Psi of the data operator. Measured (peak RSS, one rank,
    n = 200): 700, 3260 and 10200 bytes per cell for P1, P2 and P3 triangles, 3460 and 18000 for
    P1 and P2 tetrahedra, against 1250, 4600, 12300, 2500 and 14300 here. Not counted: memory
    that grows with the data (the relu tree stores at most 1.5 GiB per rank)."""
    from math import comb

    k = comb(tdim + degree, degree)
    nq = ((quadrature_degree + 2) // 2) ** tdim
    return cells * (100.0 * k * k + 8.0 * nq * (k + 2 * gdim + 4))


OUTPUT_BYTES_PER_DOF = 10 * 8.0  # per output: ~8.6 vectors of ndofs doubles measured (1000 outputs, 1089 dofs: 75 MB)


def _same_outputs(comm: MPI.Comm, y, what: str) -> None:
    """Collective: ValueError on every rank unless every rank's sharded targets y have the same number of
    outputs m (0 for None, 1 for (n_p,) or (n_p, 1)); a rank that went on alone with another m (or
    without y) would wait forever in a collective the others never enter."""
    m = 0 if y is None else 1 if np.ndim(y) < 2 else int(np.shape(y)[1])
    found = sorted(set(comm.allgather(m)))
    if len(found) > 1:
        raise ValueError(f"{what}: the ranks' targets y have {', '.join(map(str, found))} outputs (0: y None); "
                         "give every rank y of the same m columns, (0, m) on a rank without rows")


class Problem:
    """min over u in H^1_omega of E_alpha(u) on the parameter space ``space``.

    Arguments are checked before anything is built: ``space`` a :class:`~flowfem.space.Space`,
    ``alpha`` a number > 0 or ``"auto"`` (:meth:`fit` then chooses it on a regularisation path,
    :mod:`flowfem.path`), ``kappa`` a number > 0, ``degree`` an integer 1, 2 or 3, ``quadrature_degree``
    None or an integer >= 0, ``method`` one of :data:`flowfem.operator.METHODS` or ``interpolated:<cells>``
    (:func:`flowfem.operator.select.check`); a mesh on which a fit would not fit in memory
    (:func:`solve_bytes`) is refused. ValueError otherwise.
    """

    def __init__(self, space: Space, activation: str = "relu", weight: str = "uniform",
                 alpha: float = 1e-4, kappa: float = 1.0, degree: int = 1, loss: str = "squared",
                 quadrature_degree: int | None = None, method: str = "auto"):
        if not isinstance(space, Space):
            raise ValueError(f"Problem needs a flowfem Space (e.g. Space.box(1, 32, 4.0)) as its first argument, "
                             f"got {space!r} ({type(space).__name__})")
        self.activation = _activation(activation)
        if space.homogeneous_only:
            self.activation.require_homogeneous(space.domain)
        if not (isinstance(alpha, str) and alpha == "auto"):
            alpha = bounded("alpha", alpha, 0, strict=True, meaning="the convexity constant of E_alpha")
        degree = integer("degree", degree, "1, 2 or 3 (the Lagrange degree of the density)")
        if quadrature_degree is not None:
            quadrature_degree = integer("quadrature_degree", quadrature_degree, ">= 0 (None: twice the degree)")
            if quadrature_degree < 0:
                raise ValueError(f"quadrature_degree = {quadrature_degree} must be >= 0 (None: twice the degree)")
        check_method(method)
        self.space = space
        self.alpha = alpha
        self.loss = _loss(loss, multiclass=True)
        if degree in (1, 2, 3):  # else WeightedH1 refuses it
            tdim = space.mesh.topology.dim
            qdeg = 2 * degree if quadrature_degree is None else quadrature_degree
            memory.require(solve_bytes(space.num_cells, tdim, space.gdim, degree, qdeg) / space.comm.size,
                           f"a fit on {space.num_cells} cells with elements of degree {degree} (quadrature "
                           f"degree {qdeg})", "use a coarser mesh or a lower degree", space.comm)
        self.H = WeightedH1(space, weight, kappa, degree)
        self.quadrature_degree, self.method = quadrature_degree, method

    def _inputs(self, x, y, what: str, fitted: bool = False, sharded: bool = False):
        """x (n, d), y (n,), (n, m) or None, checked by :func:`flowfem.data.check` and against the mesh
        (``fitted``: inputs of the fitted density, whose dimension is the data's, not the mesh's to choose).
        ``sharded``: x and y are this rank's rows (possibly none; not none on every rank), checked on every
        rank, and an error on one is raised on all (collective)."""
        if sharded:
            comm = self.space.comm
            _same_outputs(comm, y, what)
            x, y = mpi.on_every_rank(comm, lambda: self._inputs_of_rank(x, y, what, fitted, True))
            if comm.allreduce(x.shape[0], op=MPI.SUM) == 0:
                raise ValueError(f"{what}: no rank holds a data row; give every rank its share of the rows")
            return x, y
        return self._inputs_of_rank(x, y, what, fitted, False)

    def _inputs_of_rank(self, x, y, what: str, fitted: bool, allow_empty: bool):
        """:meth:`_inputs` on this rank's arrays alone."""
        x, y = _data.check(x, y, what=what, allow_empty=allow_empty)
        d = self.space.input_dim
        if fitted and x.shape[1] != d:
            raise ValueError(f"{what} has d = {x.shape[1]} inputs, but the density was fitted on inputs of "
                             f"dimension {d}: give x of shape (m, {d})")
        check_parameter_dim(x.shape[1], self.space.gdim, what)
        self.space.check_inputs(x, what)  # s3: the chart must reach every neuron alive on them (fit and predict)
        return x, y

    def functional(self, x, y, alpha: float | None = None, sharded: bool = False) -> Functional:
        """E_alpha for the data (x (n, d) or (n,), y (n,) or (n, 1), or (n, m) for m outputs: the sum of m
        single-output functionals, see :mod:`flowfem.functional`); builds the data operator Phi.
        ``alpha``: the problem's unless given (needed when the problem's is "auto": ValueError).
        ``sharded``: x and y are this rank's own rows of the data set (:class:`DataOperator`)."""
        if alpha is None:
            alpha = self.alpha
        if alpha == "auto":
            raise ValueError("alpha='auto' is chosen by fit (a regularisation path); this needs a number: "
                             "pass alpha=... or make the Problem with a numeric alpha")
        if self.loss.multiclass:
            raise ValueError("the softmax loss has one density per class: Problem.fit fits it "
                             "(flowfem.softmax.SoftmaxFunctional is its functional); functional() and flow() take "
                             "the squared or logistic loss")
        x, y = self._inputs(x, y, "the data", sharded=sharded)
        Phi = DataOperator(self.H, self.activation, x, self.quadrature_degree, self.method, sharded=sharded)
        return Functional(self.H, Phi, y, alpha, self.loss)

    def fit(self, x, y, solver: str = "cg", rtol: float = 1e-10, petsc_options: dict | None = None,
            allow_unconverged: bool = False, progress: bool = False, preconditioner: str = "nystrom",
            alphas=None, validation: float | None = None, folds: int | None = None,
            seed: int | None = None, sharded: bool = False) -> "Result":
        """The minimiser of E_alpha on the data (x, y): one linear solve (squared loss), or Newton
        (other losses) stopping at ||dE_alpha(U)|| <= rtol ||dE_alpha(0)||, the linear solves inside
        to rtol as well (``petsc_options`` starting with snes_ go to the SNES). Collective.

        With alpha="auto" the fit is :func:`flowfem.path.regularisation_path`: solves along the
        decreasing grid ``alphas`` (default :data:`flowfem.path.GRID`), each scored on held-out rows
        (a fraction ``validation``, default 0.2, or ``folds`` k folds; split seeded by ``seed``, default 0), the
        best alpha refitted on all rows; ``result.path`` holds the table and ``result.path.alpha``
        the chosen alpha. These four arguments are refused (ValueError) with a numeric alpha.

        Several outputs, y (n, m) (squared loss; the logistic loss takes one column of labels:
        ValueError): the m systems share the operator, so one data operator and one
        :class:`~flowfem.stationary.LinearSolver` (its multigrid and Nystrom basis) serve all m
        right-hand sides (:func:`flowfem.stationary.solve_outputs`); the Result holds m densities.

        The data operator is built once; the Result stores the density, E_alpha, its parts and
        the timings of building that operator and of the solve. ``progress``: a bar of the CG
        iterations (Newton steps for other losses) on rank 0 when standard error is a terminal
        (:mod:`flowfem.progress`). ``preconditioner`` of cg: ``nystrom`` (default: multigrid plus a
        low-rank basis of the data term, :mod:`flowfem.nystrom`) or ``gamg`` (multigrid on alpha A).

        Softmax loss: ``y`` holds the labels (n,) or (n, 1), any C >= 2 distinct numbers or strings
        (not cast to float), at most n / 2 classes (more: ValueError, the labels look like regression
        targets); :func:`flowfem.softmax.fit_softmax` fits the C densities by Newton with
        CG (``solver`` must be cg; ValueError for direct), and the Result is a :class:`ClassifierResult`.
        With alpha="auto" the fit is :func:`flowfem.path.softmax_path` (the C densities along the grid,
        scored by the held-out rows' mean cross-entropy, the accuracy beside it).

        ``sharded``: x and y are this rank's own rows of the data set, the ranks' rows in rank order
        making the whole (a rank may hold none): no rank holds all of them, and every product moves
        O(quadrature points) numbers between the ranks (:class:`flowfem.operator.DataOperator`). The same
        minimiser as the whole data on every rank. Squared and logistic losses, numeric alpha, cg
        (ValueError otherwise); score the fit with ``result.rmse(x, y, sharded=True)`` on the same rows.

        Raises :class:`flowfem.stationary.NotConverged` if the true residual (Newton: ||dE_alpha||)
        ends above rtol, unless ``allow_unconverged`` (then ``result.info.converged`` is False), and
        ValueError if E_alpha(u*) or u* is not finite (e.g. a degenerate mesh), for targets y None,
        an rtol outside (0, 1) or petsc_options that are not a dict of PETSc options."""
        if sharded:  # before any check a rank could fail alone: the others would wait in a collective
            _same_outputs(self.space.comm, y, "the data")
        if y is None:
            raise ValueError("fit needs targets y (n,) or (n, 1) (one output) or (n, m) (m outputs), one row "
                             "per row of x; got None")
        check_tolerances(rtol)
        parse_petsc_options(petsc_options)
        if sharded and (self.loss.multiclass or self.alpha == "auto"):
            raise ValueError("sharded data take the squared or logistic loss with a numeric alpha; "
                             + ("the softmax loss needs" if self.loss.multiclass else "alpha='auto' needs")
                             + " every row on every rank: fit without sharded=True")
        if self.loss.multiclass:
            return self._fit_softmax(x, y, solver, rtol, petsc_options, allow_unconverged, progress,
                                     preconditioner, alphas=alphas, validation=validation, folds=folds, seed=seed)
        outputs = 1 if np.ndim(y) < 2 else np.shape(y)[1]
        if outputs > 1:  # each output keeps its solution, right-hand side, CG work vectors and density
            memory.require(OUTPUT_BYTES_PER_DOF * self.H.ndofs * outputs / self.space.comm.size,
                           f"a fit of {outputs} outputs on {self.H.ndofs} dofs", "fit fewer outputs at once",
                           self.space.comm)
        if self.alpha == "auto":
            from flowfem.path import GRID, regularisation_path

            return regularisation_path(self, x, y, GRID if alphas is None else alphas, validation, folds,
                                       0 if seed is None else seed,
                                       solver, rtol, petsc_options, allow_unconverged, progress, preconditioner)
        given = [k for k, v in dict(alphas=alphas, validation=validation, folds=folds, seed=seed).items()
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply only to alpha='auto' (a regularisation path); "
                             f"this problem's alpha is {self.alpha:g}")
        t0 = time.perf_counter()
        E = self.functional(x, y, sharded=sharded)
        t1 = time.perf_counter()
        if E.loss.quadratic:  # m outputs: m right-hand sides, one solver
            U, info = solve_outputs(E, solver, rtol, petsc_options, allow_unconverged=allow_unconverged,
                                    progress=progress, preconditioner=preconditioner)
        else:
            U, info = newton(E, None, solver, rtol=rtol, linear_rtol=rtol, petsc_options=petsc_options,
                             allow_unconverged=allow_unconverged, progress=progress, preconditioner=preconditioner)
        t2 = time.perf_counter()
        return Result.of(self, E, U, info, t1 - t0, t2 - t1)

    def _fit_softmax(self, x, labels, solver, rtol, petsc_options, allow_unconverged, progress, preconditioner,
                     **path_args) -> "ClassifierResult":
        """:meth:`fit` for the softmax loss (see there)."""
        from flowfem.labels import encode, training_labels
        from flowfem.softmax import SoftmaxFunctional, fit_softmax

        given = [k for k, v in path_args.items() if v is not None]
        if given and self.alpha != "auto":
            raise ValueError(f"{', '.join(given)} apply only to alpha='auto' (a regularisation path); "
                             f"this problem's alpha is {self.alpha:g}")
        if solver != "cg":
            raise ValueError(f"{named('solver')} {solver}: the softmax Newton solves its C-class system by CG only; "
                             f"use {spell('solver', repr('cg'))}")
        x, _ = self._inputs(x, None, "the data")
        labels = training_labels(labels, x.shape[0])  # numbers or strings: not data.check's float cast
        if self.alpha == "auto":
            from flowfem.path import GRID, softmax_path

            alphas, validation, folds, seed = (path_args[k] for k in ("alphas", "validation", "folds", "seed"))
            return softmax_path(self, x, labels, GRID if alphas is None else alphas, validation, folds,
                                0 if seed is None else seed, rtol, petsc_options, allow_unconverged, progress,
                                preconditioner)
        t0 = time.perf_counter()
        Phi = DataOperator(self.H, self.activation, x, self.quadrature_degree, self.method)
        t1 = time.perf_counter()
        Us, info, classes = fit_softmax(self.H, Phi, labels, self.alpha, rtol, petsc_options=petsc_options,
                                        allow_unconverged=allow_unconverged, progress=progress,
                                        preconditioner=preconditioner)
        t2 = time.perf_counter()
        E = SoftmaxFunctional(self.H, Phi, encode(labels, classes)[0], classes.size, self.alpha)
        return ClassifierResult.of_softmax(self, E, Us, info, classes, t1 - t0, t2 - t1)

    def flow(self, x, y, metric: str = "L2", scheme: str = "implicit_euler", solver: str = "cg",
             rtol: float = 1e-10, petsc_options: dict | None = None, **kwargs):
        """The gradient flow of E_alpha on the data (x, y): a :class:`flowfem.flow.Flow`."""
        from flowfem.flow import Flow

        if self.loss.multiclass:
            raise ValueError("a flow takes the squared or logistic loss; the softmax loss (several classes) is "
                             "fitted by Problem.fit")
        if self.alpha == "auto":
            raise ValueError("a flow needs a numeric alpha, not 'auto' (choose it with fit's regularisation path "
                             "and make the Problem with that alpha)")
        return Flow(self.functional(x, y), metric, scheme, solver, rtol, petsc_options=petsc_options, **kwargs)


@dataclass
class Result:
    """The optimal density (densities, for m outputs) and how it was found.

    Every attribute is a plain value that :meth:`Problem.fit` computed, the same on every rank
    (the timings are each rank's own clock): reading one on a single rank is safe. Only
    :meth:`predict` and :meth:`rmse` communicate (they evaluate the distributed density) and
    are collective: call them on every rank.

    Several outputs (y of shape (n, m), squared loss): ``Us`` and ``densities`` hold the m
    minimisers, one per output column; ``energy`` and ``parts`` are sums over the outputs
    (E_alpha of the m outputs is the sum of their single-output functionals, see
    :mod:`flowfem.functional`); ``infos`` holds each output's solve and ``info`` their summary
    (iterations summed, the largest residual, converged if every solve was). ``U`` and
    ``density`` name the one density of a single-output fit and raise ValueError for m > 1
    (use ``Us[k]``, ``densities[k]``).
    """

    problem: Problem
    functional: Functional  # E_alpha of all outputs (E.output(k): output k alone)
    Us: list[PETSc.Vec]  # the owned dof values of u*_1..u*_m
    infos: list[SolveInfo]  # each output's solve
    densities: list[dolfinx.fem.Function]  # u*_1..u*_m on the parameter mesh, ghost values updated
    energy: float  # E_alpha(u*), summed over the outputs
    parts: tuple[float, float]  # (data term (1/n) sum l(f_j, y_j), regulariser (alpha/2) ||u*||^2_{H^1_omega}), summed
    setup_seconds: float  # building the data operator Phi (and E_alpha) that the solve used
    solve_seconds: float  # the solve (GAMG or MUMPS set-up included), all outputs
    path: RegularisationPath | None = None  # alpha="auto": the regularisation path (flowfem.path), else None

    @property
    def outputs(self) -> int:
        """m, the number of outputs (1 for y (n,))."""
        return len(self.Us)

    def _single(self, name: str):
        if self.outputs > 1:
            plural = {"U": "Us", "density": "densities"}[name]
            raise ValueError(f"result.{name} is the density of a single-output fit; this one has {self.outputs} "
                             f"outputs: use result.{plural}[k] for output k")
        return getattr(self, name + "s" if name == "U" else "densities")[0]

    @property
    def U(self) -> PETSc.Vec:
        """The owned dof values of u* (one output; ValueError for m > 1: use ``Us``)."""
        return self._single("U")

    @property
    def density(self) -> dolfinx.fem.Function:
        """u* on the parameter mesh (one output; ValueError for m > 1: use ``densities``)."""
        return self._single("density")

    @property
    def info(self) -> SolveInfo:
        """The solve's SolveInfo; for m outputs a summary: iterations summed over the outputs, the
        largest relative residual, converged if every output's solve converged."""
        if self.outputs == 1:
            return self.infos[0]
        worst = max(self.infos, key=lambda i: i.residual)
        return replace(worst, iterations=sum(i.iterations for i in self.infos),
                       converged=all(i.converged for i in self.infos), history=[])

    @property
    def iterations(self) -> int:
        """CG iterations (cg; summed over the outputs), 1 (direct), or Newton steps (nonlinear loss)."""
        return self.info.iterations

    @property
    def residual(self) -> float:
        """Final relative residual ||b - K U|| / ||b|| of the linear system (Newton: ||dE|| / ||dE(0)||);
        the largest over the outputs."""
        return self.info.residual

    @classmethod
    def of(cls, problem: Problem, E: Functional, U, info, setup_seconds: float,
           solve_seconds: float, path: "RegularisationPath | None" = None, what: str = "the solve") -> "Result":
        """The Result of a minimiser U of E (a PETSc Vec; for m outputs a list of m Vecs, with a list of
        m infos): its densities, E_alpha and parts (``E.parts_of``: sums over the outputs). Collective.
        ValueError if U or E_alpha(U) is not finite (e.g. a degenerate mesh), naming ``what`` produced it,
        or if the number of Vecs or infos is not E.outputs."""
        Us, infos = (list(U), list(info)) if isinstance(U, (list, tuple)) else ([U], [info])
        if len(Us) != E.outputs or len(infos) != E.outputs:
            raise ValueError(f"{what} gave {len(Us)} densities for a functional of {E.outputs} outputs")
        loss, reg = E.parts_of(Us)
        finite = E.H.space.comm.allreduce(bool(all(np.all(np.isfinite(Uk.array_r)) for Uk in Us)), op=MPI.LAND)
        if not (finite and np.isfinite(loss) and np.isfinite(reg)):
            raise ValueError(f"{what} produced a non-finite result (E_alpha = {loss + reg}); check the mesh "
                             "(cells of zero size?), the data and alpha")
        names = ["density"] if len(Us) == 1 else [f"density{k + 1}" for k in range(len(Us))]
        densities = [function(problem.H, Uk, name) for Uk, name in zip(Us, names)]
        return cls(problem, E, Us, infos, densities, loss + reg, (loss, reg), setup_seconds, solve_seconds, path=path)

    def predict(self, x, sharded: bool = False) -> np.ndarray:
        """f_{u*}(x_j) = sum_q sigma(theta_q . x~_j) g_q at the rows of x ((n, d), or (n,) for d = 1):
        shape (n,) for one output, (n, m) for m outputs (column k from u*_k; the features of x are
        built once for all outputs), returned on every rank. Collective (an MPI sum over the ranks'
        cells). ``sharded``: x holds this rank's own rows (possibly none) and so does the result
        (:meth:`DataOperator.predict`). Raises ValueError for inputs of the wrong shape or
        dimension, NaN or inf."""
        x, _ = self.problem._inputs(x, None, "prediction inputs", fitted=True, sharded=sharded)
        Phi = self.functional.Phi
        if self.outputs == 1:
            return Phi.predict(self.Us[0], x, sharded)
        if sharded:
            return np.column_stack([Phi.predict(Uk, x, True) for Uk in self.Us])
        S = make_features(Phi.sigma, np.ascontiguousarray(x), Phi.quadrature.theta, Phi.method, repeated=False)
        f = np.column_stack([S.matvec(Phi.quadrature.weights(Uk)) for Uk in self.Us])
        Phi.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
        return f

    def rmse(self, x, y, sharded: bool = False) -> float:
        """sqrt((1/(n m)) sum_jk (f_{u*_k}(x_j) - y_jk)^2) for x (n, d) or (n,), y (n,) or (n, 1) (m = 1)
        or (n, m): over all outputs (:meth:`rmse_outputs` gives each). Collective (see :meth:`predict`;
        ``sharded``: each rank gives its own rows, the sums run over all ranks' rows)."""
        e = self._errors(x, y, sharded)
        comm = self.problem.space.comm
        count = comm.allreduce(e.size, op=MPI.SUM) if sharded else e.size
        total = comm.allreduce(float(np.sum(e**2)), op=MPI.SUM) if sharded else float(np.sum(e**2))
        return float(np.sqrt(total / count))

    def rmse_outputs(self, x, y) -> np.ndarray:
        """The RMSE of each output, shape (m,) (also (1,) for one output). Collective."""
        e = self._errors(x, y)
        return np.sqrt(np.mean(e.reshape(e.shape[0], -1) ** 2, axis=0))

    def _errors(self, x, y, sharded: bool = False) -> np.ndarray:
        x, y = self.problem._inputs(x, y, "the data", fitted=True, sharded=sharded)
        if y is None:
            raise ValueError("rmse needs targets y (n,) or (n, m), one row per row of x; got None")
        if (1 if y.ndim == 1 else y.shape[1]) != self.outputs:
            raise ValueError(f"the targets have {1 if y.ndim == 1 else y.shape[1]} output(s), the fit "
                             f"{self.outputs}: give y with {self.outputs} column(s)")
        return self.predict(x, sharded) - y


@dataclass
class ClassifierResult(Result):
    """The C class densities of a softmax fit (``Problem(loss="softmax").fit(x, labels)``) and how
    they were found: a :class:`Result` whose ``outputs`` is C, ``Us`` and ``densities`` hold u*_c of
    class ``classes[c]`` (c = 0..C-1), ``functional`` is the
    :class:`flowfem.softmax.SoftmaxFunctional`, ``energy`` and ``parts`` its E_alpha = (mean
    cross-entropy, in nats) + (alpha/2) sum_c ||u*_c||^2, and ``infos`` the one Newton solve
    (:class:`flowfem.softmax.SoftmaxInfo`; ``info`` is it, ``iterations`` its Newton steps).

    Predictions follow scikit-learn's classifiers (all collective, returned on every rank):
    :meth:`predict` the labels (m,), :meth:`predict_proba` the probabilities (m, C),
    :meth:`decision_function` the scores (logits) f_c(x) (m, C). ``rmse`` is refused (ValueError):
    use :meth:`score` (accuracy) or :func:`flowfem.softmax.evaluate`.
    """

    classes: np.ndarray | None = None  # (C,) the labels, sorted (numbers or strings)

    @classmethod
    def of_softmax(cls, problem: Problem, E, Us: list, info, classes: np.ndarray, setup_seconds: float,
                   solve_seconds: float, path: "RegularisationPath | None" = None) -> "ClassifierResult":
        """The Result of the minimiser Us (C Vecs) of the softmax functional E (``path``: the regularisation
        path that chose its alpha, alpha="auto"). Collective. ValueError if a density or E_alpha is not
        finite."""
        X = E.join(Us)
        loss, reg = E.parts(X)
        X.destroy()
        finite = E.H.space.comm.allreduce(bool(all(np.all(np.isfinite(U.array_r)) for U in Us)), op=MPI.LAND)
        if not (finite and np.isfinite(loss) and np.isfinite(reg)):
            raise ValueError(f"the softmax fit produced a non-finite result (E_alpha = {loss + reg}); check the "
                             "mesh (cells of zero size?), the data and alpha")
        densities = [function(problem.H, U, f"density{c + 1}") for c, U in enumerate(Us)]
        return cls(problem, E, list(Us), [info], densities, loss + reg, (loss, reg), setup_seconds, solve_seconds,
                   path=path, classes=np.asarray(classes))

    @property
    def outputs(self) -> int:
        """C, the number of classes (one density each)."""
        return len(self.Us)

    @property
    def info(self):
        """The Newton solve's :class:`flowfem.softmax.SoftmaxInfo`."""
        return self.infos[0]

    def decision_function(self, x) -> np.ndarray:
        """The scores f_c(x_j) = (Phi U_c)(x_j) at the rows of x ((m, d), or (m,) for d = 1): (m, C),
        column c class classes[c]. Collective. ValueError for inputs of the wrong shape, NaN or inf."""
        from flowfem.softmax import scores

        x, _ = self.problem._inputs(x, None, "prediction inputs", fitted=True)
        return scores(self.functional.Phi, self.Us, x)

    def predict_proba(self, x) -> np.ndarray:
        """softmax_c f_c(x_j): the class probabilities (m, C), rows summing to 1. Collective."""
        from flowfem.softmax import softmax

        return softmax(self.decision_function(x))

    def predict(self, x) -> np.ndarray:
        """The labels classes[argmax_c f_c(x_j)] (m,) (the classes' dtype). Collective."""
        return self.classes[np.argmax(self.decision_function(x), axis=1)]

    def score(self, x, labels) -> float:
        """The accuracy: the fraction of rows whose predicted label equals ``labels`` (m,). Collective."""
        from flowfem.labels import accuracy

        return accuracy(labels, self.predict(x))

    def evaluate(self, x, labels) -> dict:
        """accuracy, mean cross-entropy ``loss`` (nats), ``confusion_matrix`` (C x C, rows true class) and
        ``classes`` on (x, labels): :func:`flowfem.softmax.evaluate`. Collective."""
        from flowfem.softmax import evaluate

        x, _ = self.problem._inputs(x, None, "the data", fitted=True)
        return evaluate(self.functional.Phi, self.Us, x, labels, self.classes)

    def _errors(self, x, y, sharded=False):
        raise ValueError("rmse measures regression; a softmax fit is scored by result.score(x, labels) "
                         "(accuracy) or result.evaluate(x, labels)")
