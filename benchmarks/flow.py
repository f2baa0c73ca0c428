"""Benchmark: how fast the gradient flow reaches the stationary density, against the one stationary solve.

    python benchmarks/flow.py                    # full size (about 2-3 minutes)
    mpirun -n 2 python benchmarks/flow.py        # the same on two ranks
    python benchmarks/flow.py --quick            # small sizes, for a smoke test

The foundation benchmark's 1-D problem (benchmarks/stationary.py): sin data,
n = 10^5 points, relu, alpha = 1e-5, kappa = 1, box [-4, 4]^2 with 256^2 cells
and P1 elements (66049 dofs). The stationary solve is CG + GAMG to rtol 1e-10,
as there. The reference u* for the error is a tighter solve (rtol 1e-13), not
timed. Every flow starts from u = 0 and stops at

    ||u - u*||_G / ||u*||_G <= 1e-6      (G = M for L2, A for H1).

The flow is stiff in L2 (alpha A against M grows like alpha / h^2), so
implicit steps can be huge: implicit Euler with geometric steps tau_k =
tau_0 g^k is a sequence of ever better conditioned "regularised" stationary
solves, each warm (a correction solve (G / tau + K) dU = -dE(U)) and only as
accurate as the step needs (step_rtol). BDF with error control may grow
its step at most 2x per step, so it needs many more steps; theta < 1 and
Crank-Nicolson do not damp stiff errors at large steps (amplification
-(1 - theta) / theta), so they are shown with the same geometric steps as a
warning, capped at 40 steps.

Printed: steps, linear (CG) iterations in total and per step, GAMG setups,
wall time and its ratio to the stationary solve, the error reached, and
the stationary solve's own error against u*. Target: the best flow within
10x of the stationary solve's time. Timings on a shared machine are noisy:
the stationary and implicit Euler rows are the best of ``--repeats`` runs,
the slow comparison rows (BDF, theta, Crank-Nicolson) run once.
"""

import time

import numpy as np

import common
import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem import data
from flowfem.flow import Flow
from flowfem.problem import Problem
from flowfem.space import Space
from flowfem.stationary import solve

TOL = 1e-6
CASES = [
    # label, metric, scheme, tau0, growth, step_rtol, extra Flow options, max steps, repeated
    ("implicit Euler, tau 1e4 x10^k", "L2", "implicit_euler", 1e4, 10.0, 1e-3, {}, 100, True),
    ("implicit Euler, tau 1e4 x10^k, step_rtol 1e-6", "L2", "implicit_euler", 1e4, 10.0, 1e-6, {}, 100, True),
    ("implicit Euler, tau 1e2 x10^k", "L2", "implicit_euler", 1e2, 10.0, 1e-3, {}, 100, True),
    ("implicit Euler, tau 1e4 x10^k (H1 metric)", "H1", "implicit_euler", 1e4, 10.0, 1e-3, {}, 100, True),
    ("BDF2 (adaptive, ts_rtol 1e-3)", "L2", "bdf", 1e2, 1.0, 1e-3, dict(ts_rtol=1e-3), 400, False),
    ("theta = 0.75, tau 1e4 x10^k", "L2", "theta:0.75", 1e4, 10.0, 1e-3, {}, 40, False),
    ("Crank-Nicolson, tau 1e4 x10^k", "L2", "crank_nicolson", 1e4, 10.0, 1e-3, {}, 40, False),
]


def timed(comm, fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        out = fn()
        comm.Barrier()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(quick: bool = False, repeats: int = 2, cells: int | None = None):
    comm = MPI.COMM_WORLD
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    n = 10**4 if quick else 10**5
    cells = cells or (64 if quick else 256)
    train = data.synthetic("sin", n, seed=0)
    problem = Problem(Space.box(1, cells, 4.0, comm=comm), "relu", "uniform", alpha=1e-5, kappa=1.0)
    E = problem.functional(train.x, train.y)
    _ = problem.H.A, problem.H.M  # assemble
    say(f"flowfem flow benchmark: sin, n = {n}, relu, alpha = 1e-5, box [-4,4]^2 with {cells}^2 cells, P1, "
        f"{problem.H.ndofs} dofs, {comm.size} rank(s); stop at ||u - u*||_G / ||u*||_G <= {TOL:g}; "
        f"best of {repeats}")
    U_star, ref = solve(E, "cg", 1e-13)  # the reference u*, not timed
    t_stat, (U, info) = timed(comm, lambda: solve(E, "cg", 1e-10), repeats)
    flow = Flow(E, "L2")
    D = U.copy()
    D.axpy(-1.0, U_star)
    stat_err = flow.norm(D) / flow.norm(U_star)
    flow.destroy()
    rows = [dict(label="stationary solve (CG + GAMG, rtol 1e-10)", metric="L2", steps=1, its=info.iterations,
                 setups=1, seconds=t_stat, error=stat_err, ok=stat_err <= TOL)]
    for label, metric, scheme, tau0, growth, step_rtol, extra, max_steps, repeated in CASES:
        def go():
            flow = Flow(E, metric, scheme, step_rtol=step_rtol, **extra)
            flow.set_reference(U_star)
            U = E.vector()
            result = flow.run(U, tau=tau0, growth=growth, tol=TOL, max_steps=max_steps)
            setups = flow.scheme.newton.lin.setups
            flow.destroy()
            return result, setups

        seconds, (result, setups) = timed(comm, go, repeats if repeated else 1)
        its = result.column("linear_iterations")[1:]
        rows.append(dict(label=label, metric=metric, steps=result.steps, its=int(its.sum()), setups=setups,
                         seconds=seconds, error=result.errors[-1], ok=result.errors[-1] <= TOL,
                         per_step=its.tolist()))
        say(f"  {label}: {result.steps} steps, {seconds:.2f} s, error {result.errors[-1]:.1e}", flush=True)

    say("")
    say("| method | metric | steps | CG its (total) | CG its / step | GAMG setups | wall s | x stationary | "
        "error reached |")
    say("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        say(f"| {r['label']} | {r['metric']} | {r['steps']} | {r['its']} | {r['its'] / r['steps']:.1f} | "
            f"{r['setups']} | {r['seconds']:.2f} | {r['seconds'] / t_stat:.2f} | {r['error']:.1e}"
            + ("" if r["ok"] else " (not reached)") + " |")
    flows = [r for r in rows[1:] if r["ok"]]
    best = min(flows, key=lambda r: r["seconds"])
    say("")
    say("CG iterations per step of the fastest flow: " + ", ".join(str(int(i)) for i in best["per_step"]))
    say(f"fastest flow: {best['label']}, {best['seconds']:.2f} s = {best['seconds'] / t_stat:.2f}x the stationary "
        f"solve ({t_stat:.2f} s, {info.iterations} CG its; target <= 10x)")
    return rows


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per row (default 2)")
    p.add_argument("--cells", type=int, default=None, help="cells per side (default 256; 64 with --quick)")
    a = p.parse_args()
    main(a.quick, a.repeats, a.cells)
