"""Benchmark: scale in data, cost per CG iteration independent of n (issue 16).

    python benchmarks/scale.py                          # n = 1e5, 1e6, 1e7, 1 rank
    mpirun -n 2 python benchmarks/scale.py              # the same on 2 ranks (times: max over ranks)
    python benchmarks/scale.py --sizes 1e5,1e6          # chosen n
    python benchmarks/scale.py --quick                  # small sizes, for a smoke test (seconds)

1-D relu, squared loss, sin data (x uniform on [-1, 1], y = sin(pi x)), uniform
weight, kappa = 1, box [-4, 4]^2 with 256 cells per side, P1 (66049 dofs, about
393k quadrature points), alpha = 1e-5, CG with the Nystrom preconditioner to
rtol 1e-10. For each n the same fit is done twice in one process, with the two
exact data operators of relu in 1-D:

* ``relu1d_moments`` (the default): per-bin moments of the data between the
  kinks of all quadrature points, one O(n) pass, then O(nq) per product
  (flowfem/operator/features/relu_moments.py);
* ``relu1d``: prefix sums over the sorted data, O(n + nq) per product, the
  O(n) part split over the ranks (flowfem/operator/features/relu1d.py).

Without ``--sharded`` the data are replicated: every rank holds all n rows in memory
(:func:`replicated`). The columns (wall seconds, max over ranks):

* **Phi**: building the data operator (quadrature, kink sort; relu1d sorts the data);
* **rhs**: Phi^T y / n (one O(n) product: for the moments operator it also bins every input);
* **moments**: the moments pass for D = 1 (rank p bins rows n p / P ... n (p + 1) / P - 1, then an
  MPI sum); "-" for relu1d;
* **set-up**: the preconditioner (GAMG and the Nystrom basis: k products with the data term);
* **solve**, **CG its**, **s/it** = solve / CG its (a CG iteration also applies the preconditioner,
  O(ndofs));
* **product ms**: one application of the data term Phi^T D Phi U / n alone (the median of 30, each the max over ranks);
* **peak RSS**: the process's peak resident memory so far (MB, max over ranks). It only grows
  within a process: each n runs the moments operator first, so its row is the peak of the runs up
  to it; relu1d's row adds its own.

A last line per n gives the two fits' agreement: ||U_moments - U_relu1d|| / ||U_relu1d|| and the
relative difference of E_alpha (both solves to rtol 1e-10).

With ``--sharded`` the rows come from a file instead and are never replicated: rank 0 writes
n rows of the same sin data (chunk c of 10^6 rows drawn with seed (0, c)) into a ``.npy`` data
file (fields x1, y; 16 bytes a row, 1.6 GB at 10^8; in ``--dir``, default the system's
temporary directory; deleted afterwards), each rank reads only its own rows
(:func:`flowfem.shards.read`) and the fit is ``Problem.fit(..., sharded=True)``'s (moments operator):
**read** is that read, and **total** = read + Phi + rhs + moments + set-up + solve, the whole run
from the file to the density (the file's writing is not in it). Peak RSS is then each rank's
own: its rows, their bins and weights, the mesh and the basis.

The functions are meant to be extended: :func:`replicated` makes the rows every rank holds,
:func:`fit` times one fit from them, :func:`rows` runs both operators for one n,
:func:`sharded_row` one fit from a file.
"""

import gc
import os
import tempfile

import numpy as np

import common
import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem import shards
from flowfem.convert import NpyWriter
from flowfem.operator import ReluMoments1D
from flowfem.problem import Problem
from flowfem.space import Space
from flowfem.stationary import LinearSolver

CELLS, RADIUS, ALPHA, RTOL = 256, 4.0, 1e-5, 1e-10
SIZES = (10**5, 10**6, 10**7)
METHODS = ("relu1d_moments", "relu1d")
PRODUCTS = 30  # data-term products timed for the "product ms" column


def replicated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The sin data, x (n, 1) uniform on [-1, 1] and y = sin(pi x) (n,), the same on every rank (seeded)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, 1))
    return x, np.sin(np.pi * x[:, 0])


def write_file(path: str, n: int, comm, chunk: int = 10**6) -> None:
    """n rows of the sin data into a .npy data file at ``path`` (rank 0 writes, chunk by chunk: O(chunk)
    memory); chunk c is drawn with the seed (0, c), so the rows do not depend on the ranks."""
    if comm.rank == 0:
        writer = NpyWriter(path, 1, 1)
        for c, start in enumerate(range(0, n, chunk)):
            x = np.random.default_rng([0, c]).uniform(-1.0, 1.0, (min(chunk, n - start), 1))
            writer.write(x, np.sin(np.pi * x))
        writer.close()
    comm.Barrier()


def sharded_row(space: Space, path: str) -> dict:
    """One fit from this rank's rows of the data file at ``path`` (read timed), sharded over the ranks."""
    comm = space.comm
    shard, read = common.timed(comm, lambda: shards.read(path, comm))
    row = fit(space, shard.x, shard.y, "relu1d_moments", sharded=True)
    row.update(read=read, total=read + row["phi"] + row["rhs"] + (row["moments"] or 0.0) + row["setup"]
               + row["solve"])
    return row


def fit(space: Space, x: np.ndarray, y: np.ndarray, method: str, sharded: bool = False) -> dict:
    """One fit of the benchmark's problem with the data operator ``method``, every stage timed
    (``sharded``: x and y are this rank's own rows)."""
    comm = space.comm
    problem = Problem(space, "relu", "uniform", alpha=ALPHA, kappa=1.0, method=method)
    _ = problem.H.A  # assembled before the clock starts: it does not depend on n
    E, phi = common.timed(comm, lambda: problem.functional(x, y, sharded=sharded))
    b, rhs = common.timed(comm, E.rhs)
    lin = LinearSolver(E, rtol=RTOL, allow_unconverged=True)
    moments = None
    if isinstance(E.Phi.S, ReluMoments1D):  # the pass for the solver's own D = 1 (then cached for it)
        _, moments = common.timed(comm, lambda: E.Phi.S.moments(lin.D))
    _, setup = common.timed(comm, lin.setup)
    X = E.vector()
    info, solve = common.timed(comm, lambda: lin.solve(b, X))
    Y = E.vector()
    # the median of PRODUCTS: one product is about 20 ms, and the mean of 5 moved by 30% from run to run
    product = float(np.median([common.timed(comm, lambda: E.Phi.normal(X, lin.D, Y))[1] for _ in range(PRODUCTS)]))
    row = dict(method=method, n=E.n, ranks=comm.size, phi=phi, rhs=rhs, moments=moments, setup=setup, solve=solve,
               its=info.iterations, converged=info.converged, product=product, U=X, energy=E(X),
               rss=common.peak_memory_mb(comm))
    for v in (b, Y):
        v.destroy()
    lin.destroy()
    return row


def rows(space: Space, n: int) -> list[dict]:
    """Both data operators on the same n rows (the moments one first: see the peak RSS column)."""
    x, y = replicated(n)
    out = [fit(space, x, y, method) for method in METHODS]
    del x, y
    gc.collect()
    return out


def agreement(a: dict, b: dict) -> tuple[float, float]:
    """(||U_a - U_b|| / ||U_b||, |E_a - E_b| / |E_b|)."""
    diff = a["U"].copy()
    diff.axpy(-1.0, b["U"])
    out = diff.norm() / b["U"].norm(), abs(a["energy"] - b["energy"]) / abs(b["energy"])
    diff.destroy()
    return out


def line(r: dict) -> str:
    its = str(r["its"]) if r["converged"] else f"{r['its']} (not converged)"
    moments = "-" if r["moments"] is None else f"{r['moments']:.2f}"
    return (f"| {r['n']:.0e} | {r['ranks']} | {r['method']} | {r['phi']:.2f} | {r['rhs']:.2f} | {moments} | "
            f"{r['setup']:.2f} | {r['solve']:.2f} | {its} | {r['solve'] / max(r['its'], 1):.3f} | "
            f"{1e3 * r['product']:.2f} | {r['rss']:.0f} |")


def main_sharded(space: Space, sizes, directory: str | None, say) -> None:
    """The --sharded table: a fit from each rank's rows of a file, for each n."""
    comm = space.comm
    say("| n | ranks | read s | Phi s | rhs s | moments s | set-up s | solve s | total s | CG its | product ms "
        "| peak RSS MB per rank |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    where = comm.bcast(tempfile.mkdtemp(prefix="flowfem-scale-", dir=directory) if comm.rank == 0 else None)
    try:
        for n in sizes:
            path = os.path.join(where, f"sin-{n}.npy")
            write_file(path, n, comm)
            r = sharded_row(space, path)
            its = str(r["its"]) if r["converged"] else f"{r['its']} (not converged)"
            say(f"| {n:.0e} | {comm.size} | {r['read']:.2f} | {r['phi']:.2f} | {r['rhs']:.2f} | {r['moments']:.2f} | "
                f"{r['setup']:.2f} | {r['solve']:.2f} | {r['total']:.2f} | {its} | {1e3 * r['product']:.2f} | "
                f"{r['rss']:.0f} |")
            r["U"].destroy()
            comm.Barrier()
            if comm.rank == 0:
                os.remove(path)
            gc.collect()
    finally:
        comm.Barrier()
        if comm.rank == 0:
            for name in os.listdir(where):  # only what this run wrote: its own temporary directory
                os.remove(os.path.join(where, name))
            os.rmdir(where)


def main(quick: bool = False, sizes=None, sharded: bool = False, directory: str | None = None):
    comm = MPI.COMM_WORLD
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    cells = 16 if quick else CELLS
    sizes = sizes or ((10**3, 10**4) if quick else SIZES)
    space = Space.box(1, cells, RADIUS, comm=comm)
    if sharded:
        say(f"flowfem scale benchmark: relu, 1-D sin data from a .npy file, each rank reading its own rows, box "
            f"[-{RADIUS:g}, {RADIUS:g}]^2, {cells} cells per side, P1, alpha = {ALPHA:g}, CG (Nystrom) rtol {RTOL:g}, "
            f"{comm.size} ranks")
        say("")
        main_sharded(space, sizes, directory, say)
        return
    say(f"flowfem scale benchmark: relu, 1-D sin data, box [-{RADIUS:g}, {RADIUS:g}]^2, {cells} cells per side, "
        f"P1, alpha = {ALPHA:g}, CG (Nystrom) rtol {RTOL:g}, {comm.size} ranks, data replicated")
    say("")
    say("| n | ranks | operator | Phi s | rhs s | moments s | set-up s | solve s | CG its | s/it | product ms "
        "| peak RSS MB |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in METHODS:  # warm-up, not shown: the first fit in a process pays one-time costs (1.8 s of set-up)
        fit(space, *replicated(1000), method)["U"].destroy()
    agreements, per_iteration = [], {m: [] for m in METHODS}
    for n in sizes:
        found = rows(space, n)
        for r in found:
            say(line(r))
            per_iteration[r["method"]].append(r["product"])
        agreements.append((n,) + agreement(*found))
        for r in found:
            r["U"].destroy()
    say("")
    for n, du, de in agreements:
        say(f"n = {n:.0e}: moments vs relu1d: rel. diff U {du:.1e}, E_alpha {de:.1e} (both solved to rtol {RTOL:g})")
    for m, products in per_iteration.items():
        say(f"data-term product, {m}: " + ", ".join(f"{1e3 * p:.2f}" for p in products)
            + f" ms over n = {', '.join(f'{n:.0e}' for n in sizes)}; largest / smallest "
            f"{max(products) / min(products):.2f}")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--sizes", default=None,
                   help="comma-separated numbers of data points (default: 1e5,1e6,1e7; with --quick 1e3,1e4)")
    p.add_argument("--sharded", action="store_true",
                   help="read the rows from a .npy file, each rank only its own, and fit sharded (default: off, "
                        "every rank holds all rows in memory)")
    p.add_argument("--dir", default=None,
                   help="where --sharded writes its temporary data file (default: the system's temporary directory)")
    args = p.parse_args()
    main(args.quick, [int(float(s)) for s in args.sizes.split(",")] if args.sizes else None, args.sharded, args.dir)
