"""Time to the same test error: particle solvers (GD, Adam) against flowfem.

    python benchmarks/versus_particles.py            # about 4-5 minutes
    python benchmarks/versus_particles.py --budget 10 --pilot 1   # a quick look

Two problems, squared loss, ReLU, n = 2000 training and 2000 test points:

* 1-D: y = sin(pi x), x ~ U[-1, 1] (``flowfem.data.synthetic("sin")``);
* 2-D: y = sin(pi x1) cos(pi x2 / 2), x ~ U[-1, 1]^2, a smooth regression target.

**Particles** (:func:`flowfem.particles.train`): N = 1000 neurons, mean-field scaling, i.i.d.
N(0, 1) start (seed 0), no weight decay, full batch. Each solver's learning rate is picked from
a small grid (GD: 0.3, 1, 3; Adam: 0.01, 0.03, 0.1) by a pilot run of ``--pilot`` seconds per
rate: the rate whose pilot reached the lowest test RMSE wins. The winner then runs for
``--budget`` = 40 wall seconds; its **best test RMSE e*** over the run and the **time t*** at
which it first reached e* are recorded (history every 10 steps; the test evaluations, a few
per cent of a step each, are inside the clock). Pilot runs are not counted in t*.

**flowfem**: a fixed sequence of uniformly refined discretisations, coarse to fine (1-D: the box
[-4, 4]^2 with 2, 4, 8, ..., 128 cells per side, P1; 2-D: the sphere S^2 of directions (ReLU is
positively homogeneous), 20 4^r curved triangles, r = 0 ... 4, P2; kappa = 1, uniform weight,
alpha = 1e-8 throughout, fixed before any run), each solved from scratch until the first one
whose test RMSE is <= e*. Timed per attempt: mesh construction, the problem and its data
operator, the solve, and the test prediction; not timed: Python imports and JIT compilation
(one untimed warm-up solve per solver fills the cache first). Both of flowfem's solvers are
measured: ``direct`` (MUMPS on alpha A + Woodbury for the data term: for small meshes) and ``cg``
(matrix-free CG + GAMG: for any size). Reported: the time of the solve that reaches e*, and the
time **including the failed coarser attempts** (what a user without foreknowledge pays); the
ratio t* / (time including the failed attempts) with the default solver, cg, is the headline
(the direct solver's ratio is shown beside it, not chosen after the fact). A third mode,
``auto``, fixes no alpha in advance: cg with ``alpha="auto"`` (:mod:`flowfem.path`: the
regularisation path on a held-out fifth of the training data and the refit at the chosen alpha, all
of it timed), on the same sequence of discretisations.

Targets (from the issue): flowfem >= 50x faster on the 1-D problem, >= 10x on the 2-D problem,
measured in the same run on the same machine. Timings on a shared machine are noisy.

Measured on 2026-11-25 (serial, idle 2-core machine, 200 s in all), after the 2-D relu
products moved to the k-d tree (:class:`flowfem.operator.ReluTreeFeatures`):

    problem     particles  lr    e* (best in 40 s)  t* [s]  flowfem reaching e*        direct  cg
    1-D sin     gd         1     8.34e-02           40.0    box 2x2 P1 (6.6e-02)        205x    4217x
    1-D sin     adam       0.1   7.76e-04           39.7    box 16x16 P1 (2.0e-04)      47x     309x
    2-D smooth  gd         1     5.15e-02            5.4    sphere r=0 P2 (4.4e-02)     25x     145x
    2-D smooth  adam       0.1   6.72e-03           39.8    sphere r=2 P2 (5.0e-03)     31x     74x

(ratios t* / flowfem time including the failed coarser attempts.) With the cg solver fixed in
advance every target is met (1-D 4217x and 309x, 2-D 145x and 74x); the direct solver, whose
~0.2 s floor is forming Phi^T column by column, misses the 1-D Adam row (47x). Before the tree
the 2-D cg rows paid hundreds of CG iterations each applying the dense relu features twice
(Adam row: 1x). GD plateaus early or crawls (e* far above Adam's); Adam was still improving at
40 s. Particle runs are noisy: an earlier run on a loaded machine had GD's 1-D e* = 1.3e-1 at 6 s.

Measured on 2026-12-01 (serial, 201 s in all, the machine shared with a test run), with the
``auto`` mode (the Nystrom preconditioner is now cg's default):

    problem     particles  e*         t* [s]  flowfem auto reaching e*            direct  cg     auto
    1-D sin     gd         1.01e-01   40.0    box 2x2 P1 (6.6e-02, alpha 1e-10)    83x    875x   435x
    1-D sin     adam       1.50e-03   40.0    box 8x8 P1 (1.0e-03, alpha 1e-10)    46x    754x   479x
    2-D smooth  gd         5.15e-02    7.3    sphere r=0 P2 (4.4e-02, 1e-10)       14x    204x   105x
    2-D smooth  adam       1.00e-02   40.0    sphere r=2 P2 (2.2e-03, 1e-10)       39x    166x    75x
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import data
from flowfem import particles as fp
from flowfem.problem import Problem
from flowfem.space import Space
from mpi4py import MPI

GRID = {"gd": (0.3, 1.0, 3.0), "adam": (0.01, 0.03, 0.1)}
MODES = ("direct", "cg", "auto")  # flowfem's solvers at alpha = ALPHA, and cg with alpha="auto"
N_NEURONS = 1000
ALPHA = 1e-8
# (domain, mesh size, element degree), coarse to fine
# (domain, mesh size, element degree): uniform refinement, coarse to fine
SEQUENCES = {
    "1-D sin": [("box", m, 1) for m in (2, 4, 8, 16, 32, 64, 128)],
    "2-D smooth": [("sphere", r, 2) for r in (0, 1, 2, 3, 4)],
}


def problems():
    """(name, train, test) for the two problems."""
    def smooth(n, seed):
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1, 1, (n, 2))
        return data.Dataset(x, np.sin(np.pi * x[:, 0]) * np.cos(np.pi * x[:, 1] / 2), "smooth2d")

    return [("1-D sin", data.synthetic("sin", 2000, seed=0), data.synthetic("sin", 2000, seed=1)),
            ("2-D smooth", smooth(2000, 0), smooth(2000, 1))]


def particle_run(train, test, method, lr, seconds, comm):
    r = fp.train(train.x, train.y, N_NEURONS, activation="relu", method=method, lr=lr, steps=10**9, seed=0,
                 x_test=test.x, y_test=test.y, record_every=10, time_limit=seconds, comm=comm)
    h = r.history
    err = np.where(np.isfinite(h["test_error"]), h["test_error"], np.inf)
    i = int(np.argmin(err))
    return dict(best=float(err[i]), time=float(h["time"][i]), step=int(h["step"][i]),
                steps=int(h["step"][-1]), seconds=float(h["time"][-1]), status=r.status)


def fe_attempt(train, test, domain, size, degree, mode, comm):
    """One flowfem fit; ``mode`` is a solver (alpha = ALPHA) or "auto" (cg, alpha chosen by the path)."""
    comm.Barrier()
    t0 = time.perf_counter()
    space = Space.make(domain, train.d, size, 4.0, comm)
    problem = Problem(space, "relu", "uniform", "auto" if mode == "auto" else ALPHA, 1.0, degree)
    result = problem.fit(train.x, train.y, solver="cg" if mode == "auto" else mode)
    err = result.rmse(test.x, test.y)
    seconds = comm.bcast(time.perf_counter() - t0, root=0)
    return dict(mesh=f"{domain} {size:g} P{degree}", cells=space.num_cells, ndofs=problem.H.ndofs,
                test_rmse=err, seconds=seconds, iterations=result.iterations,
                alpha=result.path.alpha if result.path is not None else ALPHA)


def fe_time_to(train, test, target, sequence, solver, comm):
    """Attempts along the sequence until test RMSE <= target; (attempts, index reaching it or None)."""
    attempts = []
    for domain, size, degree in sequence:
        attempts.append(fe_attempt(train, test, domain, size, degree, solver, comm))
        if attempts[-1]["test_rmse"] <= target:
            return attempts, len(attempts) - 1
    return attempts, None


def main(budget: float = 40.0, pilot: float = 3.0, comm=MPI.COMM_WORLD) -> list[dict]:
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    rows = []
    t_start = time.perf_counter()
    for name, train, test in problems():
        say(f"\n## {name}: n = {train.n} train, {test.n} test, d = {train.d}; {comm.size} rank(s)")
        seq = SEQUENCES[name]
        for solver in MODES:  # warm-up: imports and JIT compilation, untimed
            fe_attempt(train, test, *seq[0], solver, comm)
        for method, grid in GRID.items():
            pilots = {lr: particle_run(train, test, method, lr, pilot, comm) for lr in grid}
            lr = min(grid, key=lambda k: pilots[k]["best"])
            say(f"{method}: pilot ({pilot:g} s each) best test RMSE "
                + ", ".join(f"lr={k:g}: {p['best']:.3e}" for k, p in pilots.items()) + f" -> lr = {lr:g}")
            p = particle_run(train, test, method, lr, budget, comm)
            say(f"{method}: lr = {lr:g}, {p['steps']} steps in {p['seconds']:.1f} s; best test RMSE "
                f"{p['best']:.3e} first reached at step {p['step']}, t* = {p['time']:.2f} s")
            row = dict(problem=name, method=method, lr=lr, grid=list(grid), pilot=pilot, budget=budget,
                       particles=p, ranks=comm.size)
            for solver in MODES:
                attempts, k = fe_time_to(train, test, p["best"], seq, solver, comm)
                total = sum(a["seconds"] for a in attempts)
                if k is None:
                    fe = dict(reached=False, attempts=attempts, seconds=np.nan, total=total)
                    say(f"  flowfem {solver}: not reached within the sequence "
                        f"(finest {attempts[-1]['mesh']}: {attempts[-1]['test_rmse']:.3e}, {total:.2f} s in all)")
                else:
                    a = attempts[k]
                    fe = dict(reached=True, attempts=attempts, mesh=a["mesh"], ndofs=a["ndofs"],
                              test_rmse=a["test_rmse"], seconds=a["seconds"], total=total,
                              ratio=p["time"] / total, ratio_single=p["time"] / a["seconds"])
                    say(f"  flowfem {solver}: {a['mesh']} ({a['ndofs']} dofs, alpha {a['alpha']:.0e}) test RMSE "
                        f"{a['test_rmse']:.3e} "
                        f"in {a['seconds']:.3f} s ({total:.3f} s with the {k} coarser attempt(s)): "
                        f"ratio {fe['ratio']:.0f}x ({fe['ratio_single']:.0f}x that solve alone)")
                row[solver] = fe
            rows.append(row)
    say(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    say(table(rows))
    return rows


def table(rows) -> str:
    target = {"1-D sin": 50, "2-D smooth": 10}
    head = ("| problem | particles | lr (grid) | best test RMSE e* in budget | t* [s] | flowfem solver | "
            "first discretisation with RMSE <= e* | its RMSE | that solve [s] | incl. coarser [s] | "
            "ratio t* / incl. | target |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        p = r["particles"]
        for solver in MODES:
            fe = r[solver]
            if fe["reached"]:
                cells = (fe["mesh"], f"{fe['test_rmse']:.2e}", f"{fe['seconds']:.3f}", f"{fe['total']:.3f}",
                         f"**{fe['ratio']:.0f}x**")
            else:
                cells = ("not reached", "", "", f"{fe['total']:.3f}", "-")
            lines.append(f"| {r['problem']} | {r['method']} | {r['lr']:g} ({', '.join(f'{g:g}' for g in r['grid'])}) | "
                         f"{p['best']:.2e} | {p['time']:.2f} | {solver} | " + " | ".join(cells)
                         + f" | {target[r['problem']]}x |")
    lines.append("")
    for r in rows:  # the headline: flowfem's default solver (cg, fixed in advance), failed coarser attempts included
        t = target[r["problem"]]
        if not r["cg"]["reached"]:
            lines.append(f"{r['problem']}, {r['method']}: flowfem (cg) did not reach e* within its sequence; "
                         f"target {t}x: NOT met")
            continue
        ratio = r["cg"]["ratio"]
        direct = f" (direct {r['direct']['ratio']:.0f}x)" if r["direct"]["reached"] else " (direct: not reached)"
        auto = (f"{r['auto']['ratio']:.0f}x at the chosen alpha = {r['auto']['attempts'][-1]['alpha']:.0e}"
                if r["auto"]["reached"] else "not reached")
        lines.append(f"{r['problem']}, {r['method']}: flowfem (cg) {ratio:.0f}x faster to e* = "
                     f"{r['particles']['best']:.2e}{direct}; target {t}x: {'met' if ratio >= t else 'NOT met'}; "
                     f"automatic alpha (no setting chosen in advance): {auto}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=40.0, help="wall seconds of each particle run (default 40)")
    ap.add_argument("--pilot", type=float, default=3.0, help="wall seconds of each pilot run (default 3)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    a = ap.parse_args()
    out = main(a.budget, a.pilot)
    if a.json and MPI.COMM_WORLD.rank == 0:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2, default=float)
    sys.exit(0)
