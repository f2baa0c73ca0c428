"""The regularisation path: the minimisers u*_alpha along a decreasing grid of alpha, scored on held-out data.

For alpha_1 > alpha_2 > ... > alpha_m (default :data:`GRID`) the path solves
the Euler-Lagrange equation of E_alpha on the training part of the data,

    squared loss:   (alpha_i A + Phi_t^T Phi_t / n_t) U_i = Phi_t^T y_t / n_t,
    logistic loss:  dE_alpha_i(U_i) = 0 by Newton,
    softmax loss:   dE_alpha_i(U_i1, ..., U_iC) = 0 by Newton (:func:`softmax_path`),

each solve warm-started from U_{i-1} and stopping at ||dE_alpha(U)|| <= max(rtol ||dE_alpha(U_{i-1})||,
min(floor, rtol ||dE_alpha(0)||)) (squared loss: dE_alpha(U) = K U - b), floor the size of the rounding
in dE_alpha at U_{i-1} (:class:`flowfem.stationary.RoundingFloor`): below it the solve stagnates, and
the stop of a cold solve, rtol ||dE_alpha(0)||, left the warm solutions far less accurate than the cold
ones (two_moons, n = 150 and 300, logistic: validation scores 1e-3 to 3e-2 relative from the exact
minimiser's at alpha 1e-8 ... 1e-10, now below 1e-9 with 6 Newton steps per solve; softmax, three
classes: 3e-3 now 3e-5, the floor being loose there; sin, squared: at 1e-11 CG took no step from the
1e-10 solution and scored it, 1.94e-6, where the minimiser scores 1.53e-6), all with ONE linear solver
(:class:`flowfem.stationary.LinearSolver`, :meth:`set_alpha` between them):
the multigrid and the Nystrom basis of the data term (:mod:`flowfem.nystrom`)
are built once and only extended as alpha falls. The training rows are
selected by row weights on one data operator of all rows
(:class:`RowWeighted`), so the operator is built once for the folds, the
validation predictions and the refit. Each U_i is scored on the held-out
part (x_v, y_v),

    squared loss:   validation RMSE  sqrt(mean_j (f_{U_i}(x_vj) - y_vj)^2),
    logistic loss:  validation mean logistic loss  mean_j log(1 + exp(-y_vj f_{U_i}(x_vj)))
                    (the accuracy mean(sign f == y) is reported beside it),
    softmax loss:   validation mean cross-entropy  mean_j [logsumexp_c f_c(x_vj) - f_{k_vj}(x_vj)]
                    (nats; the accuracy mean(argmax_c f_c == k) is reported beside it),

on one seeded split (a fraction ``validation`` of the rows held out, default
0.2) or on k seeded folds (each row held out once; the score is the mean
over the folds).

Rule: the chosen alpha is the one of the smallest (mean) validation score;
among equal scores the larger alpha (the first in the decreasing grid, as
scikit-learn's RidgeCV takes the first minimiser): of two fits that predict
equally well, the more regular one. The density returned is then refitted on
ALL the rows at the chosen alpha, warm-started from the path's solution there
(the mean over the folds), with the same solver and stop, and is an ordinary
:class:`flowfem.problem.Result` whose ``path`` is the :class:`RegularisationPath` (the table)
(a :class:`flowfem.problem.ClassifierResult` for the softmax loss: the C densities are solved
together, warm-started from the previous alpha's C densities, by one
:class:`flowfem.softmax.SoftmaxNewton` whose per-class preconditioners serve every alpha and fold).

The grid: one value per decade from 1e-2 to 1e-10 (nine). Measured (README,
"Automatic alpha"; relu on [-4, 4]^2 and the sphere): the validation error
of noiseless sin and step keeps falling down to 1e-10 (sin: 1.9e-6 there,
1.5e-6 at 1e-11), two_moons has its minimum at 1e-10 (squared loss) and at
1e-8 (logistic loss), and no set chose an alpha above 1e-4 except pure noise,
which takes the largest. The error changes by at most a few times per decade,
so one value per decade suffices. Below 1e-10 the Nystrom basis grows
(rank 104-168 at 1e-11) for little gain.

Cost: the warm starts and the shared preconditioner make the whole path,
refit included, a small multiple of one cold solve at the smallest alpha
(measured in the README).

The box radius is not searched: for positively homogeneous activations
(relu) a change of radius is a change of alpha and kappa (docs/theory.md
§15), which the path's alpha covers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

from flowfem import arguments  # noqa: E402
from flowfem import progress as progress_  # noqa: E402
from flowfem.functional import Functional  # noqa: E402
from flowfem.stationary import LinearSolver, NewtonSolver, RoundingFloor  # noqa: E402

GRID = tuple(10.0 ** -k for k in range(2, 11))  # 1e-2 ... 1e-10: one value per decade (module docstring)
VALIDATION = 0.2  # default fraction of the rows held out


def check_grid(alphas) -> np.ndarray:
    """The grid as a decreasing float array (m,), m >= 1; ValueError unless every value is a finite
    number > 0 and no value repeats."""
    if isinstance(alphas, (str, bytes)) or not np.iterable(alphas):
        raise ValueError(f"{arguments.named('alphas')} must be a sequence of numbers > 0, got {alphas!r}")
    values = np.array([arguments.positive("alphas", a) for a in alphas], dtype=float)
    if values.size == 0:
        raise ValueError(f"{arguments.named('alphas')} is empty: give at least one alpha > 0")
    if np.unique(values).size != values.size:
        raise ValueError(f"{arguments.named('alphas')} repeats a value: {sorted(values.tolist(), reverse=True)}")
    return np.sort(values)[::-1]


def check_validation(validation, folds) -> tuple[float | None, int | None]:
    """(fraction, folds), one of them None: a fraction 0 < validation < 1 of the rows held out, or
    k >= 2 folds (``folds``; then ``validation`` must be None). Default: (:data:`VALIDATION`, None).
    ValueError otherwise."""
    if folds is not None:
        if validation is not None:
            raise ValueError(f"give either {arguments.spell('validation', 'FRACTION')} or "
                             f"{arguments.spell('folds', 'K')}, not both: the folds hold out each row once")
        folds = arguments.integer("folds", folds, ">= 2")
        if folds < 2:
            raise ValueError(f"{arguments.named('folds')} = {folds}: cross-validation needs at least 2 folds")
        return None, folds
    if validation is None:
        return VALIDATION, None
    validation = arguments.number("validation", validation, "with 0 < validation < 1")
    if not 0 < validation < 1:
        raise ValueError(f"{arguments.named('validation')} = {validation:g} must be a fraction with 0 < "
                         f"{arguments.named('validation')} < 1: the part of the rows held out to score each alpha "
                         "(e.g. 0.2)")
    return validation, None


def splits(n: int, validation: float | None, folds: int | None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, validation rows) index arrays: one split holding out round(validation n) rows
    (at least 1, leaving at least 1), or ``folds`` splits holding out each row once (np.array_split of
    the permutation), from a permutation of range(n) seeded by ``seed``. ValueError if n is too small."""
    perm = np.random.default_rng(arguments.seed(seed)).permutation(n)
    if folds is not None:
        if folds > n:
            raise ValueError(f"{arguments.named('folds')} = {folds} folds need at least {folds} data rows, got {n}")
        parts = np.array_split(perm, folds)
        return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(parts[i])) for i in range(folds)]
    if n < 2:
        raise ValueError(f"a validation split needs at least 2 data rows, got {n}")
    k = min(max(1, int(round(validation * n))), n - 1)
    return [(np.sort(perm[k:]), np.sort(perm[:k]))]


@dataclass
class RegularisationPath:
    """The regularisation path of a fit (the same on every rank; the seconds are each rank's clock).

    Arrays of shape (m,) over the decreasing grid ``alphas``: ``scores`` the validation score (mean
    over the folds), ``train_loss`` the data term (1/n_t) sum l(f_j, y_j) on the training rows (mean
    over the folds), ``iterations`` the CG iterations (summed over the folds; for the logistic and
    softmax losses the inner CG iterations of all Newton steps), ``newton`` the Newton steps (logistic
    and softmax losses; zeros otherwise), ``seconds`` the solves' wall time (summed over the folds), ``rank`` the Nystrom
    basis size after the solve (largest over the folds), ``accuracy`` the validation accuracy
    (logistic and softmax losses; None otherwise). ``chosen`` indexes the chosen alpha (see the module docstring),
    ``fold_scores`` (k, m) the scores of each fold.
    """

    alphas: np.ndarray
    scores: np.ndarray
    train_loss: np.ndarray
    iterations: np.ndarray
    newton: np.ndarray
    seconds: np.ndarray
    rank: np.ndarray
    accuracy: np.ndarray | None
    fold_scores: np.ndarray
    chosen: int
    score: str  # what the scores are: "validation RMSE", "validation mean logistic loss" or "... cross-entropy loss"
    validation: float | None
    folds: int | None
    seed: int
    refit_iterations: int = 0
    refit_seconds: float = 0.0

    @property
    def alpha(self) -> float:
        """The chosen alpha."""
        return float(self.alphas[self.chosen])

    @property
    def edge(self) -> str | None:
        """The end of a grid of two or more alphas that was chosen, "largest" or "smallest" (the best alpha may
        then lie beyond the grid), else None."""
        if self.alphas.size < 2 or 0 < self.chosen < self.alphas.size - 1:
            return None
        return "largest" if self.chosen == 0 else "smallest"

    def beyond(self) -> list[float] | None:
        """The alphas to try past the chosen end of the grid, four decades from the chosen alpha outward, largest
        first, if the best alpha may lie there: at the largest alpha, or at the smallest where that is above the
        default grid's end, 1e-10, which is chosen on purpose (README, "Why this grid": at most 20% less error
        below it); else None."""
        if self.edge == "largest" or (self.edge == "smallest" and self.alpha > min(GRID)):
            step = 10.0 if self.edge == "largest" else 0.1
            return sorted((self.alpha * step ** k for k in range(4)), reverse=True)
        return None

    def table(self) -> list[dict]:
        """One dict per alpha: alpha, score, train_loss, iterations, newton, seconds, rank (and accuracy)."""
        rows = []
        for i, a in enumerate(self.alphas):
            row = dict(alpha=float(a), score=float(self.scores[i]), train_loss=float(self.train_loss[i]),
                       iterations=int(self.iterations[i]), newton=int(self.newton[i]),
                       seconds=float(self.seconds[i]), rank=int(self.rank[i]))
            if self.accuracy is not None:
                row["accuracy"] = float(self.accuracy[i])
            rows.append(row)
        return rows

    def metrics(self) -> dict:
        """What metrics.json records of the path: the rule's inputs and outcome and the table."""
        return dict(alpha=self.alpha, score=self.score, validation=self.validation, folds=self.folds,
                    seed=self.seed, rule="smallest score; ties -> the larger alpha", edge=self.edge,
                    table=self.table(),
                    seconds=float(np.sum(self.seconds)), refit_iterations=int(self.refit_iterations),
                    refit_seconds=float(self.refit_seconds))


def choose(scores: np.ndarray) -> int:
    """The index of the smallest score, the first (largest alpha) among equal ones; ValueError if
    a score is not finite."""
    scores = np.asarray(scores, dtype=float)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"a validation score is not finite: {scores.tolist()}; check the data and the grid")
    return int(np.argmin(scores))  # argmin returns the first minimiser


def _score(loss, f: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(score, accuracy): RMSE and NaN (squared loss), or mean loss and accuracy."""
    if loss.quadratic:
        return float(np.sqrt(np.mean((f - y) ** 2))), np.nan
    return float(np.mean(loss.value(f, y))), float(np.mean(np.sign(f) == y))


class RowWeighted(Functional):
    """E_alpha with a weight c_j >= 0 on each row, on the data operator Phi of all n rows:

        E(u) = (1/n) sum_j c_j l(f_u(x_j), y_j) + (alpha/2) ||u||^2_{H^1_omega},
        dE(U) = alpha A U + Phi^T (c l') / n,   curvature D = c l'',   rhs (squared loss) Phi^T (c y) / n.

    With c_j = n / n_t on the n_t training rows of a split and 0 on the held-out rows this is E_alpha of
    the training rows alone; with c = 1 it is E_alpha of all rows. So one data operator (built once:
    for relu on 2-D inputs its tree is the costly part) serves every fold, the validation predictions
    (Phi U on the held-out rows) and the refit, and one :class:`LinearSolver` keeps its multigrid
    and Nystrom basis throughout (``set_weights`` between folds). ``c``: (n,) array, set in place.
    """

    def __init__(self, E: Functional, c: np.ndarray):
        super().__init__(E.H, E.Phi, E.y, E.alpha, E.loss)
        self._c = np.asarray(c, dtype=float).copy()

    @property
    def c(self) -> np.ndarray:
        """The row weights c (n,), set in place (``E.c[:] = ...``); output k's view (:meth:`output`) reads
        those of the functional of all outputs, so setting them there sets them for every output."""
        return self._c if self._parent is None else self._parent.c

    @property
    def row_weights(self) -> np.ndarray:
        return self.c

    def parts(self, U) -> tuple[float, float]:
        f = self.Phi.apply(U)
        AU = self.H.A.createVecLeft()
        self.H.A.mult(U, AU)
        reg = 0.5 * self.alpha * AU.dot(U)
        AU.destroy()
        return float(np.sum(self.c * self.loss.value(f, self.y)) / self.n), reg

    def gradient(self, U, out=None):
        out = self.vector() if out is None else out
        tmp = self.vector()
        self.Phi.adjoint(self.c * self.loss.d1(self.Phi.apply(U), self.y) / self.n, tmp)
        self.H.A.mult(U, out)
        out.aypx(self.alpha, tmp)
        tmp.destroy()
        return out

    def rhs(self):
        b = self.vector()
        self.Phi.adjoint(self.c * self.y / self.n, b)
        return b

    def curvature(self, U) -> np.ndarray:
        return self.c * self.loss.d2(self.Phi.apply(U), self.y)


def regularisation_path(problem, x, y, alphas=GRID, validation=None, folds=None, seed: int = 0,
                        solver: str = "cg", rtol: float = 1e-10, petsc_options: dict | None = None,
                        allow_unconverged: bool = False, progress: bool = False,
                        preconditioner: str = "nystrom"):
    """The path of ``problem`` (a :class:`flowfem.problem.Problem`) on the data x (n, d), y (n,), and
    the refit on all rows at the chosen alpha: a :class:`flowfem.problem.Result` whose ``path`` is the
    :class:`RegularisationPath` and whose functional's alpha is the chosen one. Collective.

    ``alphas`` the grid (:func:`check_grid`), ``validation`` / ``folds`` / ``seed`` the split
    (:func:`check_validation`, :func:`splits`); the solver arguments as :meth:`Problem.fit`'s. One
    data operator on all rows and one solver serve every fold and the refit (:class:`RowWeighted`).
    The Result's ``setup_seconds`` are the data operator's build, ``solve_seconds`` the path's solves
    plus the refit's. ``progress``: a bar over the path's solves (rank 0, a terminal). Raises
    ValueError for bad arguments and :class:`flowfem.stationary.NotConverged` as a single fit does.

    m outputs (y (n, m), squared loss): one alpha for all of them. At each alpha the m systems are
    solved by the same solver (each warm-started from its own previous solution), the score is the
    RMSE over the held-out rows and all outputs, sqrt(mean_jk (f_jk - y_jk)^2), the training loss
    the mean of l over the training rows and the outputs, the iterations are summed over the
    outputs; the refit gives m densities.
    """
    from flowfem.problem import Result

    alphas = check_grid(alphas)
    validation, folds = check_validation(validation, folds)
    x, y = problem._inputs(x, y, "the data")
    comm = problem.space.comm
    parts = splits(len(y), validation, folds, seed)
    m = len(alphas)
    t0 = time.perf_counter()
    full = problem.functional(x, y, alpha=float(alphas[0]))
    setup = time.perf_counter() - t0
    n = full.n
    E = RowWeighted(full, np.ones(n))
    outputs = [E.output(k) for k in range(E.outputs)]  # each output's E, reading E's alpha and row weights E.c
    quadratic = E.loss.quadratic
    if quadratic:
        lin = LinearSolver(E, None, solver, rtol, petsc_options=petsc_options, allow_unconverged=allow_unconverged,
                           progress=False, preconditioner=preconditioner)
        floor = RoundingFloor(E.H, E.Phi)
    else:
        ns = NewtonSolver(E, solver, rtol, linear_rtol=rtol, petsc_options=petsc_options,
                          allow_unconverged=allow_unconverged, preconditioner=preconditioner)
        lin = ns.lin
    table = np.empty((len(parts), m, 7))
    # per alpha and output: the sum over the folds of the solutions, the refit's start
    start = [[E.vector() for _ in outputs] for _ in alphas]
    Us = [E.vector() for _ in outputs]
    U = Us[0]
    try:
        with progress_.bar(progress, total=len(parts) * m, desc="alpha path", unit="solve") as bar:
            for k, (train, held) in enumerate(parts):
                E.c[:] = 0.0
                E.c[train] = n / len(train)
                for V in Us:
                    V.set(0.0)
                g0 = None if quadratic else _gradient_norm(E, U)  # ||dE_alpha(0)||: the same for every alpha
                if quadratic:
                    lin.set_weights(E.c, refresh=False)  # another random subset: the basis still fits
                    bs = [Ek.rhs() for Ek in outputs]
                for i, a in enumerate(alphas):
                    lin.set_alpha(a)
                    t = time.perf_counter()
                    if quadratic:
                        its = sum(_warm_solve(lin, floor, Ek, b, V, rtol).iterations
                                  for Ek, b, V in zip(outputs, bs, Us))
                        steps = 0
                    else:
                        info = ns.solve(U, atol=min(ns.rounding_floor(U), rtol * g0))  # the module docstring's stop
                        its, steps = int(sum(info.linear_iterations)), info.iterations
                    seconds = time.perf_counter() - t
                    # every row: the held-out ones score, the training ones give the loss
                    f = E.Phi.apply(U) if len(Us) == 1 else np.column_stack([E.Phi.apply(V) for V in Us])
                    score, acc = _score(E.loss, f[held], y[held])
                    train_loss = float(np.mean(E.loss.value(f[train], y[train])))
                    table[k, i] = score, acc, train_loss, its, steps, seconds, lin.nystrom.rank if lin.nystrom else 0
                    for S, V in zip(start[i], Us):
                        S.axpy(1.0, V)
                    bar.update(1)
                if quadratic:
                    for b in bs:
                        b.destroy()
            means = table.mean(axis=0)
            chosen = comm.bcast(choose(means[:, 0]), root=0)  # one choice on every rank, whatever the rounding
            # the refit: all rows (c = 1) at the chosen alpha, from the mean of the folds' solutions there
            for S, V in zip(start[chosen], Us):
                S.copy(V)
                V.scale(1.0 / len(parts))
            E.c[:] = 1.0
            if not quadratic:  # ||dE_alpha(0)|| of all rows: the refit's residual is reported against it
                zero = E.vector()
                g0 = _gradient_norm(E, zero)
                zero.destroy()
            lin.set_alpha(float(alphas[chosen]))
            lin.progress = progress
            t1 = time.perf_counter()
            if quadratic:
                lin.set_weights(E.c, refresh=False)
                infos = []
                for Ek, V in zip(outputs, Us):
                    b = Ek.rhs()
                    infos.append(_warm_solve(lin, floor, Ek, b, V, rtol))
                    b.destroy()
                info = infos[0] if len(Us) == 1 else infos
                refit_its = sum(i.iterations for i in infos)
            else:
                ns.progress = progress
                info = ns.solve(U, atol=min(ns.rounding_floor(U), rtol * g0), reference=g0)
                refit_its = int(sum(info.linear_iterations))
            t2 = time.perf_counter()
    finally:
        for obj in (lin, floor) if quadratic else (ns,):
            obj.destroy()
        for row in start:
            for S in row:
                S.destroy()
    path = RegularisationPath(alphas=alphas, scores=means[:, 0], train_loss=means[:, 2],
                iterations=table[:, :, 3].sum(axis=0).astype(int), newton=table[:, :, 4].sum(axis=0).astype(int),
                seconds=table[:, :, 5].sum(axis=0), rank=table[:, :, 6].max(axis=0).astype(int),
                accuracy=None if quadratic else means[:, 1], fold_scores=table[:, :, 0], chosen=chosen,
                score="validation RMSE" if quadratic else f"validation mean {E.loss.name} loss",
                validation=validation, folds=folds, seed=seed, refit_iterations=refit_its, refit_seconds=t2 - t1)
    full.alpha = path.alpha
    return Result.of(problem, full, U if len(Us) == 1 else Us, info, setup, float(np.sum(path.seconds)) + (t2 - t1),
                     path, "the refit")


def _warm_solve(lin: LinearSolver, floor: RoundingFloor, E, b, V, rtol: float):
    """K V = b by ``lin`` from the warm start V, to ||b - K V|| <= max(rtol ||b - K V_start||, min(floor(V_start),
    rtol ||b||)): the module docstring's stop (E the output's functional: dE(V) = K V - b). Collective."""
    stop = max(rtol * _gradient_norm(E, V), min(floor.of(E, V), rtol * b.norm()))
    return lin.solve(b, V, guess=True, stop=stop)


def _gradient_norm(E, X) -> float:
    """||dE_alpha(X)|| of a functional E (one density or a softmax's C). Collective."""
    g = E.gradient(X)
    norm = g.norm()
    g.destroy()
    return norm


def softmax_path(problem, x, labels, alphas=GRID, validation=None, folds=None, seed: int = 0, rtol: float = 1e-10,
                 petsc_options: dict | None = None, allow_unconverged: bool = False, progress: bool = False,
                 preconditioner: str = "nystrom"):
    """:func:`regularisation_path` for the softmax loss: ``problem`` a :class:`flowfem.problem.Problem`
    with loss="softmax", x (n, d) and ``labels`` (n,) of C >= 2 classes (as :meth:`Problem.fit` checked
    them); returns the :class:`flowfem.problem.ClassifierResult` of the refit on all rows at the chosen
    alpha, its ``path`` the :class:`RegularisationPath`. Collective.

    The rule is the module docstring's: on each split (:func:`splits`) the C densities are fitted to the
    training rows at alpha_1 > alpha_2 > ... by Newton (:class:`flowfem.softmax.SoftmaxNewton`, CG inside
    to ``rtol``), each from the previous alpha's C densities (the first from 0); each alpha is scored by
    the mean cross-entropy of the held-out rows, (1/n_v) sum_j [logsumexp_c f_c(x_j) - f_{k_j}(x_j)] (mean
    over the folds), the accuracy beside it; the smallest score wins, ties going to the larger alpha
    (:func:`choose`); the refit starts from the mean over the folds of the densities there. Each start is
    scaled to E_alpha's minimum on its ray (:meth:`~flowfem.softmax.SoftmaxFunctional.scale_to_ray_minimum`:
    the unscaled previous minimiser made Newton crawl), and each solve stops as the module docstring says, at
    ||dE_alpha|| <= max(rtol ||dE_alpha(X_start)||, min(floor, rtol ||dE_alpha(0)||)) (the floor:
    :meth:`~flowfem.softmax.SoftmaxNewton.rounding_floor`). One data operator of all rows serves
    everything: the training rows are selected by the functional's row weights c_j = n / n_t (0 on the
    held-out rows), and one Newton solver (its C class-block preconditioners with their Nystrom bases,
    and the multigrid of alpha A) serves every alpha and fold (:meth:`~flowfem.softmax.SoftmaxNewton.set_alpha`,
    :meth:`~flowfem.softmax.SoftmaxNewton.set_row_weights`).
    A class absent from a split's training rows keeps its density, pushed down by the others.
    ``iterations`` of the table are the inner CG iterations of all Newton steps, ``rank`` the largest
    class-block basis. Raises ValueError for bad arguments and :class:`flowfem.stationary.NotConverged`
    as :func:`flowfem.softmax.fit_softmax` does.
    """
    from flowfem.operator import DataOperator
    from flowfem.problem import ClassifierResult
    from flowfem.labels import encode
    from flowfem.softmax import SoftmaxFunctional, SoftmaxNewton, cross_entropy

    alphas = check_grid(alphas)
    validation, folds = check_validation(validation, folds)
    k, classes = encode(labels)
    n = k.size
    comm = problem.space.comm
    parts = splits(n, validation, folds, seed)
    m = len(alphas)
    t0 = time.perf_counter()
    Phi = DataOperator(problem.H, problem.activation, x, problem.quadrature_degree, problem.method)
    setup = time.perf_counter() - t0
    E = SoftmaxFunctional(problem.H, Phi, k, classes.size, float(alphas[0]))
    newton = SoftmaxNewton(E, rtol, linear_rtol=rtol, petsc_options=petsc_options,
                           allow_unconverged=allow_unconverged, preconditioner=preconditioner)
    table = np.empty((len(parts), m, 7))
    start = [E.vector() for _ in alphas]  # per alpha the sum over the folds of the solutions: the refit's start
    X = E.vector()
    try:
        with progress_.bar(progress, total=len(parts) * m, desc="alpha path", unit="solve") as bar:
            for f, (train, held) in enumerate(parts):
                c = np.zeros(n)
                c[train] = n / len(train)
                newton.set_row_weights(c)
                X.set(0.0)
                g0 = _gradient_norm(E, X)  # ||dE_alpha(0)||: the same for every alpha (A 0 = 0)
                F = None
                for i, a in enumerate(alphas):
                    newton.set_alpha(a)
                    t = time.perf_counter()
                    if F is not None:  # the previous alpha's minimiser, scaled to E_alpha's minimum on its ray
                        E.scale_to_ray_minimum(X, F)
                    info = newton.solve(X, atol=min(newton.rounding_floor(X), rtol * g0))  # the module docstring's stop
                    seconds = time.perf_counter() - t
                    F = E.scores(X)  # every row: the held-out ones score, the training ones give the loss
                    table[f, i] = (np.mean(cross_entropy(F[held], k[held])),
                                   np.mean(np.argmax(F[held], axis=1) == k[held]),
                                   np.mean(cross_entropy(F[train], k[train])),
                                   sum(info.linear_iterations), info.iterations, seconds, info.rank)
                    start[i].axpy(1.0, X)
                    bar.update(1)
            means = table.mean(axis=0)
            chosen = comm.bcast(choose(means[:, 0]), root=0)  # one choice on every rank, whatever the rounding
            newton.set_row_weights(np.ones(n))
            X.set(0.0)
            g0 = _gradient_norm(E, X)  # ||dE_alpha(0)||: the refit's residual is reported against it
            start[chosen].copy(X)
            X.scale(1.0 / len(parts))
            newton.set_alpha(float(alphas[chosen]))
            newton.progress = progress
            t1 = time.perf_counter()
            E.scale_to_ray_minimum(X)
            info = newton.solve(X, atol=min(newton.rounding_floor(X), rtol * g0), reference=g0)
            t2 = time.perf_counter()
            Us = E.split(X)
    except BaseException:
        E.destroy()
        raise
    finally:
        newton.destroy()
        X.destroy()
        for S in start:
            S.destroy()
    path = RegularisationPath(alphas=alphas, scores=means[:, 0], train_loss=means[:, 2],
                iterations=table[:, :, 3].sum(axis=0).astype(int), newton=table[:, :, 4].sum(axis=0).astype(int),
                seconds=table[:, :, 5].sum(axis=0), rank=table[:, :, 6].max(axis=0).astype(int),
                accuracy=means[:, 1], fold_scores=table[:, :, 0], chosen=chosen,
                score="validation mean cross-entropy loss", validation=validation, folds=folds, seed=seed,
                refit_iterations=int(sum(info.linear_iterations)), refit_seconds=t2 - t1)
    return ClassifierResult.of_softmax(problem, E, Us, info, classes, setup, float(np.sum(path.seconds)) + (t2 - t1),
                                       path)
