"""Benchmark: the input-grid approximation of the data operator (method interpolated) against the exact one.

    python benchmarks/compression.py              # n = 10^5, about two minutes
    python benchmarks/compression.py --n 1000000  # n = 10^6
    python benchmarks/compression.py --quick      # small sizes, for a smoke test

Relu on the sphere S^2 (3 refinements, P1; 2 with --quick), two_moons with n
points, alpha = 1e-5, squared loss, CG to rtol 1e-10 with flowfem's default
preconditioner. One fit with the exact products (the relu tree, what ``auto``
picks) and one with ``interpolated:<cells>`` for each grid: the data's bounding
box cut into cells x cells, the features at its (cells + 1)^2 nodes
interpolated to the data (:class:`flowfem.operator.features.InterpolatedFeatures`).
Per row: the set-up (building Phi) and solve seconds and CG iterations of the
fit; one normal product Phi^T D Phi U / n (best of 3, ms); and, against the
exact operator at the exact fit's U*, the relative errors (2-norms) of the
predictions Phi U* and of the normal product, the relative error of the fitted
U against U*, and the test RMSE (2000 fresh points, predicted exactly) with its
relative difference from the exact fit's. Then the fitted orders of the errors
in the cell size h (log-log slope over the grids). When the exact relu tree is
over its storage limit (n = 10^6 on this sphere: 2.2e8 entries; the dense
products then take about 100 s each), the exact row says so and each
interpolated fit's predictions are checked against its exact ones on a sample
of 20000 data points instead. Serial.
"""

import time

import numpy as np

import common
import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem import data
from flowfem.operator import StorageLimit
from flowfem.operator.features.weights import frozen
from flowfem.problem import Problem
from flowfem.space import Space


def normal(Phi, U, D):
    """Phi^T diag(D) Phi U / n as a PETSc vector, and its best time over 3 products (seconds)."""
    out, best = U.duplicate(), np.inf
    for _ in range(3):
        s = time.perf_counter()
        Phi.normal(U, D, out)
        best = min(best, time.perf_counter() - s)
    return out.array.copy(), best


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(quick: bool = False, n: int = 100_000):
    n = 4000 if quick else n
    refinements, grids = (2, (16, 32, 64)) if quick else (3, (32, 64, 128))
    train, test = data.synthetic("two_moons", n), data.synthetic("two_moons", 2000, seed=1)
    space = Space.sphere(refinements, comm=MPI.COMM_SELF)
    D = frozen(np.ones(n))  # as LinearSolver holds it: the interpolated B is kept between products
    print(f"flowfem compression benchmark: relu on the sphere ({refinements} refinements, P1), two_moons "
          f"n = {n}, alpha = 1e-5, CG rtol 1e-10, serial")
    print("")
    print("| method | grid nodes | set-up s | solve s | CG its | normal product ms | err Phi U | err normal "
          "| err U | test RMSE | RMSE rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    exact = None
    errors = []
    sample = np.random.default_rng(0).choice(n, min(n, 20000), replace=False)
    for method in ["relu_tree"] + [f"interpolated:{c}" for c in grids]:
        try:
            r = Problem(space, "relu", alpha=1e-5, method=method).fit(train.x, train.y)
        except StorageLimit as e:  # the exact tree at large n: the dense products would take minutes each
            print(f"| {method} | - | {e} | | | | | | | | |")
            continue
        Phi = r.functional.Phi
        rmse = float(np.sqrt(np.mean((r.predict(test.x) - test.y) ** 2)))
        if method == "relu_tree":
            exact, f0, (N0, t), rmse0 = r, Phi.apply(r.U), normal(Phi, r.U, D), rmse
            cells, errs = "-", ("-",) * 4
        elif exact is not None:
            N, t = normal(Phi, exact.U, D)
            cells = f"{(Phi.S.cells + 1) ** 2}"
            e = (rel(Phi.apply(exact.U), f0), rel(N, N0), rel(r.U.array, exact.U.array), abs(rmse - rmse0) / rmse0)
            errors.append(e[:3])
            errs = tuple(f"{v:.1e}" for v in e)
        else:  # no exact fit: the fit's own predictions against the exact ones on a sample of the data
            _, t = normal(Phi, r.U, D)
            cells = f"{(Phi.S.cells + 1) ** 2}"
            e = rel(Phi.apply(r.U)[sample], r.predict(train.x[sample]))
            errors.append([e])
            errs = (f"{e:.1e} (sample)", "-", "-", "-")
        print(f"| {method} | {cells} | {r.setup_seconds:.2f} | {r.solve_seconds:.2f} | {r.iterations} | "
              f"{t * 1e3:.1f} | {errs[0]} | {errs[1]} | {errs[2]} | {rmse:.5f} | {errs[3]} |", flush=True)
    orders = np.polyfit(np.log(1.0 / np.array(grids)), np.log(np.array(errors)), 1)[0]  # error ~ h^order
    print("")
    print(f"fitted order in h ({'Phi U, normal, U' if exact is not None else 'Phi U on the sample'}): "
          + ", ".join(f"{o:.2f}" for o in np.atleast_1d(orders)))


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--n", type=int, default=100_000, help="data points (default: %(default)s)")
    args = p.parse_args()
    main(args.quick, args.n)
