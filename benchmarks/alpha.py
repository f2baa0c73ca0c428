"""Benchmark: CG iterations and time as alpha falls, multigrid alone against multigrid + Nystrom (issue 13).

    python benchmarks/alpha.py                    # full size (46 min on a loaded 2-core machine, most on the 2-D box)
    mpirun -n 2 python benchmarks/alpha.py        # the same on 2 ranks (times: max over ranks)
    python benchmarks/alpha.py --quick            # small sizes, for a smoke test (seconds)
    python benchmarks/alpha.py --inputs 1         # the 1-D cases only (minutes)

Both preconditioners of :class:`flowfem.stationary.LinearSolver` solve the same
system (alpha A + Phi^T Phi / n) U = Phi^T y / n, CG to rtol 1e-10, in the same run:

* ``gamg``: two V-cycles of GAMG on alpha A (the solver before issue 13);
* ``nystrom``: GAMG on A plus a rank-k M^{-1}-orthonormal basis of the data term,
  applied through the Woodbury identity (:mod:`flowfem.nystrom`); k is chosen for
  each alpha (``SolveInfo.rank``).

Cases (squared loss, relu, uniform weight, kappa = 1, P1):

* 1-D: sin data, n = 10^5 (``data.synthetic("sin", seed=0)``), boxes [-R, R]^2 for
  R = 4 and 8, each on 64^2, 128^2 and 256^2 cells (``Space.box(1, m, R)``);
* 2-D: two_moons, n = 4000 (seed 0), regression on the +-1 labels, on the mesh
  ``flowfem solve`` uses without --mesh-size and --radius (the box [-4, 4]^3 with
  32 cells per side, P1 tetrahedra: ``make_space("box", 2)``) and on the sphere
  S^2 (3 refinements of the icosahedron, curved: ``make_space("sphere", 2)``);

each at alpha = 1e-3, 1e-4, ..., 1e-8, every solve from scratch (a fresh
LinearSolver, zero initial guess: no warm start, no basis from another alpha).

What the columns mean (times are wall seconds, max over ranks):

* **Phi build** (the meshes table): building the data operator Phi, once per mesh
  and shared by all solves of that mesh (``Problem.functional``); **A**: assembling
  the stiffness-plus-mass matrix A. Neither is in "set-up" or "total": add Phi build
  to a total for the cost of a fit from data.
* **set-up**: the preconditioner's set-up, everything the LinearSolver does before
  its first CG iteration: copy and scale of A into P, the KSP, the GAMG hierarchy
  (on alpha A, or on A for nystrom) and, for nystrom, the Krylov basis of k vectors
  (k products with Phi^T Phi / n, k applications of the multigrid, the
  orthogonalisation and the k x k Rayleigh-Ritz eigenproblem): ``LinearSolver.setup()``.
* **solve**: the CG solve that follows (right-hand side Phi^T y / n built beforehand),
  the final true-residual check included. **total** = set-up + solve.
* **rank**: the Nystrom basis size k; **basis MB**: its memory, Q and Z = M^{-1} Q,
  2 k ndofs 8 bytes over all ranks; **peak RSS**: the process's peak resident memory
  so far (max over ranks), which also holds the data operator and the mesh.
* **K diff**: ||K (U_nystrom - U_gamg)|| / ||b||, the two solutions' agreement in the
  solver's own measure: each has a true relative residual <= 1e-10, so this is at
  most 2e-10 when both solve the same system. **rel. diff U**: ||U_nystrom - U_gamg||
  / ||U_gamg||, which that tolerance bounds only by about cond(K) 1e-10: it grows as
  alpha falls. **rel. diff E**: the same for E_alpha (second order in U's error, but
  relative to an E_alpha that is itself small when the fit is close).

CG is capped at 2000 iterations, except the GAMG baseline on the 2-D box at
``--box-max-it`` (default 400): one iteration there costs about 0.5 s and the issue
recorded 692 at alpha = 1e-4 on it, so the full 2000 at six alphas would take hours.
A capped solve prints ``>N`` and is left out of the agreement check.

Targets (the issue's), printed as PASS/FAIL lines with the measured values:
CG iterations within 2x across alpha = 1e-3 ... 1e-8 (per mesh), within 20% across
the three refinements (per box and alpha), total time at alpha = 1e-8 at most 2x
that at 1e-5 (per mesh), and at most 100 iterations for the default 2-D box at the
command's default alpha = 1e-4. Timings on a machine that others share are noisy;
iteration counts are not.
"""


import common
import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem import data
from flowfem.problem import Problem, make_space
from flowfem.space import Space
from flowfem.stationary import LinearSolver

ALPHAS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
PRECONDITIONERS = ("gamg", "nystrom")
RTOL = 1e-10
MAX_IT = 2000  # LinearSolver's default


def solve_once(E, b, preconditioner: str, alpha: float, max_it: int) -> dict:
    """A fresh LinearSolver at ``alpha``: its set-up, then the solve of b."""
    comm = E.H.space.comm
    lin = LinearSolver(E, rtol=RTOL, max_it=max_it, preconditioner=preconditioner, allow_unconverged=True)
    lin.set_alpha(alpha)
    X = E.vector()
    _, setup = common.timed(comm, lin.setup)
    info, seconds = common.timed(comm, lambda: lin.solve(b, X))
    lin.destroy()
    return dict(U=X, its=info.iterations, converged=info.converged, residual=info.residual, rank=info.rank,
                setup=setup, solve=seconds, total=setup + seconds, energy=E(X))


def mesh_rows(label: str, problem: Problem, x, y, max_it: dict) -> tuple[dict, list[dict]]:
    """Build A and Phi on ``problem``'s mesh and solve at every alpha with both preconditioners."""
    comm = problem.space.comm
    _, assembly = common.timed(comm, lambda: problem.H.A)
    E, build = common.timed(comm, lambda: problem.functional(x, y))
    b = E.rhs()
    ndofs = problem.H.ndofs
    mesh = dict(label=label, ndofs=ndofs, assembly=assembly, build=build, n=E.n)
    rows = []
    for alpha in ALPHAS:
        row = dict(label=label, ndofs=ndofs, alpha=alpha)
        for pc in PRECONDITIONERS:
            row[pc] = solve_once(E, b, pc, alpha, max_it[pc])
        g, s = row["gamg"], row["nystrom"]
        diff = s["U"].copy()
        diff.axpy(-1.0, g["U"])
        row["diff"] = diff.norm() / g["U"].norm()
        row["energy_diff"] = abs(s["energy"] - g["energy"]) / abs(g["energy"])
        Kdiff = E.gradient(s["U"])  # K U - b: linear in U, so the difference is K (U_nystrom - U_gamg)
        Kdiff.axpy(-1.0, E.gradient(g["U"]))
        row["backward"] = Kdiff.norm() / b.norm()
        for v in (diff, Kdiff, g["U"], s["U"]):
            v.destroy()
        row["basis_mb"] = 2 * s["rank"] * ndofs * 8 / 2**20
        row["rss"] = common.peak_memory_mb(comm)
        rows.append(row)
    b.destroy()
    return mesh, rows


def its(r: dict, max_it: int) -> str:
    return str(r["its"]) if r["converged"] else f">{max_it}" if r["its"] >= max_it else f"{r['its']} (not converged)"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(quick: bool = False, box_max_it: int = 400, inputs: tuple = (1, 2)):
    world = MPI.COMM_WORLD
    say = print if world.rank == 0 else (lambda *a, **k: None)
    n1, n2 = (2000, 300) if quick else (10**5, 4000)
    cells = (8, 16, 32) if quick else (64, 128, 256)
    box2_size, sphere_size = (6, 1) if quick else (None, None)  # None: the command's default mesh
    say(f"flowfem alpha benchmark: relu, squared loss, P1, CG rtol {RTOL:g}, {world.size} rank(s); "
        f"preconditioners {' and '.join(PRECONDITIONERS)} in the same run")

    sin = data.synthetic("sin", n1, seed=0)
    moons = data.synthetic("two_moons", n2, seed=0)
    cases = []  # (label, problem, data, max_it per preconditioner)
    for R in (4.0, 8.0) if 1 in inputs else ():
        for m in cells:
            cases.append((f"1-D box R = {R:g}, {m}^2", lambda m=m, R=R: Space.box(1, m, R), sin, {}))
    box2 = f"2-D box R = 4, {box2_size or 32}^3"
    sphere = f"2-D sphere, {sphere_size or 3} refinements"
    if 2 in inputs:
        cases.append((box2, lambda: make_space("box", 2, box2_size), moons, {"gamg": box_max_it}))
        cases.append((sphere, lambda: make_space("sphere", 2, sphere_size), moons, {}))

    meshes, rows = [], []
    for label, space, ds, caps in cases:
        max_it = {pc: caps.get(pc, MAX_IT) for pc in PRECONDITIONERS}
        mesh, mrows = mesh_rows(label, Problem(space(), "relu", "uniform", alpha=ALPHAS[0], kappa=1.0),
                                ds.x, ds.y, max_it)
        mesh["max_it"] = max_it
        meshes.append(mesh)
        rows += mrows
        say(f"  done: {label} ({mesh['ndofs']} dofs)", flush=True)

    say("")
    say("| mesh | dofs | data n | A assembly s | Phi build s |")
    say("|---|---|---|---|---|")
    for m in meshes:
        say(f"| {m['label']} | {m['ndofs']} | {m['n']} | {m['assembly']:.2f} | {m['build']:.2f} |")
    say("")
    say("| mesh | alpha | gamg its | gamg set-up s | gamg solve s | gamg total s | nystrom its | rank | "
        "nystrom set-up s | nystrom solve s | nystrom total s | basis MB | peak RSS MB | K diff | rel. diff U | "
        "rel. diff E |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    caps = {m["label"]: m["max_it"] for m in meshes}
    for r in rows:
        g, s = r["gamg"], r["nystrom"]
        say(f"| {r['label']} | {r['alpha']:.0e} | {its(g, caps[r['label']]['gamg'])} | {g['setup']:.2f} | "
            f"{g['solve']:.2f} | {g['total']:.2f} | {its(s, caps[r['label']]['nystrom'])} | {s['rank']} | "
            f"{s['setup']:.2f} | {s['solve']:.2f} | {s['total']:.2f} | {r['basis_mb']:.1f} | {r['rss']:.0f} | "
            f"{r['backward']:.1e} | {r['diff']:.1e} | {r['energy_diff']:.1e} |")

    by = {(r["label"], r["alpha"]): r for r in rows}
    say("")
    say("Targets (measured; PASS/FAIL is for nystrom, gamg shown for comparison):")
    for m in meshes:  # iterations within 2x across alpha
        counts = {pc: [by[m["label"], a][pc]["its"] for a in ALPHAS] for pc in PRECONDITIONERS}
        ratio = {pc: max(c) / max(min(c), 1) for pc, c in counts.items()}
        say(f"iterations across alpha {ALPHAS[0]:.0e}..{ALPHAS[-1]:.0e}, {m['label']}: nystrom {counts['nystrom']} "
            f"max/min {ratio['nystrom']:.2f} (target <= 2): {verdict(ratio['nystrom'] <= 2)}; "
            f"gamg {counts['gamg']} max/min {ratio['gamg']:.2f}")
    for R in (4, 8) if 1 in inputs else ():  # iterations within 20% across the refinements
        labels = [f"1-D box R = {R}, {m}^2" for m in cells]
        for a in ALPHAS:
            counts = {pc: [by[lb, a][pc]["its"] for lb in labels] for pc in PRECONDITIONERS}
            spread = {pc: max(c) / max(min(c), 1) - 1 for pc, c in counts.items()}
            say(f"iterations across {cells[0]}^2..{cells[-1]}^2, 1-D box R = {R}, alpha {a:.0e}: nystrom "
                f"{counts['nystrom']} spread {spread['nystrom']:.0%} (target <= 20%): "
                f"{verdict(spread['nystrom'] <= 0.2)}; gamg {counts['gamg']} spread {spread['gamg']:.0%}")
    for m in meshes:  # total time at 1e-8 against 1e-5
        t = {pc: (by[m["label"], 1e-8][pc]["total"], by[m["label"], 1e-5][pc]["total"]) for pc in PRECONDITIONERS}
        q = {pc: a / b for pc, (a, b) in t.items()}
        say(f"total time alpha 1e-8 / 1e-5, {m['label']}: nystrom {t['nystrom'][0]:.2f} s / {t['nystrom'][1]:.2f} s "
            f"= {q['nystrom']:.2f} (target <= 2): {verdict(q['nystrom'] <= 2)}; gamg {t['gamg'][0]:.2f} s / "
            f"{t['gamg'][1]:.2f} s = {q['gamg']:.2f}" + ("" if by[m["label"], 1e-8]["gamg"]["converged"]
                                                         else " (gamg capped: more than that)"))
    if 2 in inputs:
        default = by[box2, 1e-4]
        say(f"default 2-D box ({box2}) at the command's default alpha 1e-4: nystrom {default['nystrom']['its']} "
            f"iterations (target <= 100): {verdict(default['nystrom']['its'] <= 100)}; "
            f"gamg {its(default['gamg'], caps[box2]['gamg'])}")
    both = [r for r in rows if r["gamg"]["converged"] and r["nystrom"]["converged"]]
    worst = max(both, key=lambda r: r["diff"])
    backward = max(r["backward"] for r in both)
    say(f"solutions of the two preconditioners ({len(both)} pairs both converged): largest K diff {backward:.1e} "
        f"(target <= {2 * RTOL:g}): {verdict(backward <= 2 * RTOL)}; largest rel. diff in U {worst['diff']:.1e} "
        f"({worst['label']}, alpha {worst['alpha']:.0e}), in E_alpha {max(r['energy_diff'] for r in both):.1e}")
    converged = all(r["nystrom"]["converged"] for r in rows)
    say(f"every nystrom solve converged to rtol {RTOL:g}: {verdict(converged)}; largest basis "
        f"{max(r['nystrom']['rank'] for r in rows)} vectors, {max(r['basis_mb'] for r in rows):.1f} MB; "
        f"peak RSS {max(r['rss'] for r in rows):.0f} MB per rank")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--box-max-it", type=int, default=400,
                   help="CG iteration cap of the gamg baseline on the 2-D box (default: %(default)s)")
    p.add_argument("--inputs", choices=["1", "2", "all"], default="all",
                   help="the cases of 1-D inputs, of 2-D inputs, or all (default: %(default)s)")
    args = p.parse_args()
    main(args.quick, args.box_max_it, (1, 2) if args.inputs == "all" else (int(args.inputs),))
