"""Side by side: flowfem's density and its readouts against particle solvers, on one data set.

For data (x_j, y_j), the squared loss l = (f - y)^2 / 2 and one activation (ReLU by default),
:func:`compare` runs

* **FE solve**: the minimiser u* of E_alpha(u) = (1/n) sum l + (alpha/2) ||u||^2_{H^1_omega}
  (one CG + GAMG solve, :class:`flowfem.problem.Problem`);
* **FE readout** at each width N, by one or more rules of :mod:`flowfem.readout`:

  - ``quadrature``: a fresh FE solve (same alpha, kappa, omega, radius) on a mesh of the same
    domain with about N cells, read out with the midpoint rule (one neuron per cell), so the
    width is the number of cells: box d = 1: 2 m^2 cells with m = round(sqrt(N / 2)); box d = 2:
    6 m^3, m = round((N / 6)^(1/3)); circle: N arcs; sphere: 20 4^r, r = round(log_4(N / 20));
    ball: element size h giving about N cells; s3: size h = (140 / N)^(1/3) on S^3 (about 140 / h^3
    cells), at most 0.4 (about 2200 cells, the coarsest chart gmsh meshes reliably), with the chart
    radius Z of the main solve. Deterministic: one run per width.
  - ``sample``: N neurons drawn from |u*| (the main solve) with each seed.
  - ``refit``: those sampled neurons with output weights refitted by regularised least
    squares on the training data (:func:`flowfem.readout.refit`), with each seed.

* **particles**: :func:`flowfem.particles.train` (``gd`` and/or ``adam``) at each width and
  seed, with the stated learning rate, number of steps and weight decay lam.

Each row states how it was obtained. Test error is the RMSE on the test set for every row.
Every family minimises its *own* objective; the table reports it under its own name and,
as the one number comparable across families, the **train loss** (1/n) sum (f - y)^2 / 2 (the
data term of each objective):

* FE solve: E_alpha(u*) = loss + (alpha/2) ||u*||^2_{H^1_omega};
* FE readouts: E_alpha,N = loss + (alpha/2) sum_i omega(theta_i) a_i^2 / q_i, the discrete
  E_alpha on the N neurons with the kappa term dropped (what ``refit`` minimises);
* particles: J = loss + (lam/2) (1/N) sum_i (|w_i|^2 + b_i^2 + a_i^2) (mean-field scaling),
  a different regulariser (for ReLU it bounds a total-variation norm of the measure, not a
  Sobolev norm of a density).

Wall times: particle rows are the training loop's clock (rank 0); FE rows include the mesh,
the assembly, the data operator, the solve and (readouts) the readout itself, but not the
Python imports or JIT compilation. ``sample`` and ``refit`` rows include the main FE solve
they are read from.

The particle densities: for the largest width and the first seed, each particle solver's
measure is projected onto the FE mesh (:func:`flowfem.measure.density`) and compared with
u* as fields: the L2(d theta) distance and the maximum mean discrepancy with a Gaussian kernel
of stated bandwidth (:func:`mmd`; u* enters through its midpoint rule, the particles as point
masses where they were placed).

Every distance is taken in parameter space through the mesh's chart (:mod:`flowfem.space`):
integrals are d theta = lambda^n dx and the MMD's points are neurons theta(x). On the identity
chart (box, ball, circle, sphere, mesh files) that is dx and x; on s3 it is the volume of S^3,
lambda^3 dz, and the points vartheta(z) of S^3 in R^4. Particles are placed as directions
(:func:`flowfem.measure.density`); on s3 those in the cap |z| > Z that the chart leaves out are
dropped (zero on the data for relu when Z >= Z_0: the truncation leaves f exact), and the MMD and
L2 distances compare the measures on the truncated sphere, the dropped mass being reported beside
them (``dropped``, ``dropped_mass``).

Several outputs (y (n, m), m >= 2; columns y1..ym): the FE solve fits m densities u*_1..u*_m
(one solver, :class:`flowfem.problem.Result`), the readouts are networks of m outputs on
shared neurons (:mod:`flowfem.readout`), and the particle networks have output weights
a_i in R^m (:mod:`flowfem.particles`). The loss is |f - y|^2 / 2 summed over the outputs, so
the train loss and every objective are sums over the outputs; ``test_rmse`` is the RMSE over
all n m test values, sqrt((1/(n m)) sum_jk (f_jk - y_jk)^2), and each run also records the
RMSE of each output (``test_rmse_outputs``; columns ``test_rmse_y1..ym`` of ``runs.csv``,
their means over seeds ``test_rmse_y1_mean..`` in ``table.csv``, one column in ``table.md``).
The densities are compared output by output (particle measure k, sum_i (a_ik / N)
delta_(theta_i), against u*_k; distances named ``... yk``); ``densities.bp``/``.xdmf`` hold
every output's fields (``fe_density_y1``..., ``particles_gd_N16_seed0_y1``...), while
``densities.png`` draws the first output's (u*_1 and the particle densities of output 1).
One output writes exactly the files and columns it always did.

Output (:meth:`Comparison.write`): the table as Markdown and CSV (``table.md``,
``table.csv``: mean, standard deviation, min and max over seeds), every run (``runs.csv``),
the particle training curves (``curves.csv``), all numbers and settings (``results.json``),
the densities for ParaView (``densities.bp``, VTX, and ``densities.xdmf`` + ``densities.h5``,
XDMF for any VTK build and meshio: u* and the projected particle densities as fields of one
file) and the figures ``error_vs_width.png``, ``error_vs_time.png``,
``densities.png``.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from flowfem import mpi as _mpi  # noqa: F401  (first: loads MPI before dolfinx)

import dolfinx.fem  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402

from flowfem import measure  # noqa: E402
from flowfem import progress as progress_  # noqa: E402
from flowfem import particles as fp  # noqa: E402
from flowfem.mpi import CollectiveError  # noqa: E402
from flowfem import readout as ro  # noqa: E402
from flowfem.activations import activation as _activation  # noqa: E402
from flowfem.arguments import at_least, distinct, integers, positive, unknown  # noqa: E402
from flowfem.data import Dataset  # noqa: E402
from flowfem.network import Network  # noqa: E402
from flowfem.space import S3_CELLS, chart_of  # noqa: E402

READOUTS = ("quadrature", "sample", "refit")
METHODS = ("gd", "adam")
DEFAULT_LR = {"gd": 1.0, "adam": 0.03}
FILES = ("table.md", "table.csv", "runs.csv", "curves.csv", "results.json", "densities.bp",
         "densities.xdmf", "densities.h5")
FIGURES = ("error_vs_width.png", "error_vs_time.png", "densities.png")
RUN_COLUMNS = ("solver", "method", "width", "seed", "test_rmse", "train_loss", "objective",
               "objective_name", "seconds", "steps", "lr", "ranks", "status", "how")
TABLE_COLUMNS = ("solver", "method", "width", "seeds", "status", "test_rmse_mean", "test_rmse_std",
                 "test_rmse_min", "test_rmse_max", "train_loss_mean", "train_loss_std",
                 "objective_mean", "objective_std", "objective_name", "seconds_mean", "steps",
                 "lr", "ranks", "how")


@dataclass
class Run:
    """One run: a row of ``runs.csv``."""

    solver: str  # "FE solve", "FE readout" or "particles"
    method: str  # "E_alpha minimiser", the readout rule, or the particle method
    width: int | None  # N neurons (None for the continuum density)
    seed: int | None
    test_rmse: float
    train_loss: float  # (1/n) sum (f - y)^2 / 2: comparable across rows
    objective: float  # the row's own objective, named by objective_name
    objective_name: str
    seconds: float
    steps: int | None  # particle steps taken (None for FE rows)
    lr: float | None
    ranks: int
    status: str
    how: str
    test_rmse_outputs: list[float] = field(default_factory=list)  # the test RMSE of each output (m values)


@dataclass
class Comparison:
    """Everything :func:`compare` computed, identical on every rank (wall times are rank 0's;
    the particle histories keep each rank's own clock).

    For m outputs, ``density`` and ``densities`` are the first output's (what ``densities.png``
    draws); ``output_densities`` holds every output's: (method, N, seed) -> [ParticleDensity of
    output 1, ..., of output m] (for one output, the list of ``densities[key]``).
    """

    runs: list[Run]
    settings: dict
    result: object  # the FE solve's flowfem.problem.Result
    density: object  # u* as a dolfinx Function (Result.density; for m outputs u*_1 = Result.densities[0])
    particles: dict = field(default_factory=dict)  # (method, N, seed) -> ParticleResult
    networks: dict = field(default_factory=dict)  # (rule, N requested, seed) -> Network of a readout
    densities: dict = field(default_factory=dict)  # (method, N, seed) -> ParticleDensity (output 1)
    distances: dict = field(default_factory=dict)  # "method N=.. seed=.." (+ " yk" for m outputs) -> numbers
    train: Dataset | None = None
    test: Dataset | None = None
    output_densities: dict = field(default_factory=dict)  # (method, N, seed) -> list of m ParticleDensity

    @property
    def outputs(self) -> int:
        """m, the number of outputs of the data."""
        return self.result.outputs

    def table(self) -> list[dict]:
        """Rows aggregated over seeds: mean, std, min and max of the test RMSE; mean and std of the
        train loss and objective; one row per (solver, method, width). std is the population standard
        deviation over the s seeds (ddof 0, NumPy's default; pandas and torch.std divide by s - 1). A
        group with a diverged run (inf) has mean inf and std NaN (undefined), written as null in
        results.json."""

        def std(a: np.ndarray) -> float:  # np.std of an inf is NaN too, but through an inf - inf warning
            return float(np.std(a)) if np.all(np.isfinite(a)) else float("nan")

        groups: dict = {}
        for r in self.runs:
            groups.setdefault((r.solver, r.method, r.width), []).append(r)
        rows = []
        m = self.outputs
        for (solver, method, width), rs in groups.items():
            e = np.array([r.test_rmse for r in rs])
            per_output = {} if m == 1 else {
                f"test_rmse_y{k + 1}_mean": float(np.mean([r.test_rmse_outputs[k] for r in rs])) for k in range(m)}
            tl = np.array([r.train_loss for r in rs])
            ob = np.array([r.objective for r in rs])
            steps = sorted({r.steps for r in rs if r.steps is not None})
            counts = {k: sum(r.status == k for r in rs) for k in dict.fromkeys(r.status for r in rs)}
            status = ", ".join(k if v == len(rs) else f"{k} {v} of {len(rs)}" for k, v in counts.items())
            rows.append(dict(
                solver=solver, method=method, width=width,
                seeds=" ".join(str(r.seed) for r in rs) if rs[0].seed is not None else "", status=status,
                test_rmse_mean=float(np.mean(e)), test_rmse_std=std(e),
                test_rmse_min=float(np.min(e)), test_rmse_max=float(np.max(e)),
                train_loss_mean=float(np.mean(tl)), train_loss_std=std(tl),
                objective_mean=float(np.mean(ob)), objective_std=std(ob),
                objective_name=rs[0].objective_name, seconds_mean=float(np.mean([r.seconds for r in rs])),
                steps=" ".join(map(str, steps)), lr="" if rs[0].lr is None else rs[0].lr,
                ranks=rs[0].ranks, how=rs[0].how, **per_output))
        return rows

    def run_columns(self) -> tuple[str, ...]:
        """The columns of ``runs.csv``: :data:`RUN_COLUMNS`, and for m outputs test_rmse_y1..ym."""
        return RUN_COLUMNS + tuple(f"test_rmse_y{k + 1}" for k in range(self.outputs) if self.outputs > 1)

    def table_columns(self) -> tuple[str, ...]:
        """The columns of ``table.csv``: :data:`TABLE_COLUMNS`, and for m outputs the means over seeds
        test_rmse_y1_mean..test_rmse_ym_mean."""
        return TABLE_COLUMNS + tuple(f"test_rmse_y{k + 1}_mean" for k in range(self.outputs) if self.outputs > 1)

    # -- files ------------------------------------------------------------------------

    def markdown(self) -> str:
        """The aggregated table as Markdown (3 significant digits; the CSV has them all)."""
        m = self.outputs
        per_output = [] if m == 1 else [f"test RMSE y1..y{m} (means)"]
        head = ["solver", "method", "N", "seeds", "status", "test RMSE mean", "± std", "[min, max]", *per_output,
                "train loss", "objective", "objective name", "seconds", "steps", "lr", "ranks", "how"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        g = "{:.3g}".format
        for r in self.table():
            each = [] if m == 1 else [", ".join(g(r[f"test_rmse_y{k + 1}_mean"]) for k in range(m))]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in [
                r["solver"], r["method"], "" if r["width"] is None else str(r["width"]), r["seeds"],
                r["status"] if r["status"] == "completed" else f"**{r['status']}**",
                g(r["test_rmse_mean"]), g(r["test_rmse_std"]), f"[{g(r['test_rmse_min'])}, {g(r['test_rmse_max'])}]",
                *each, g(r["train_loss_mean"]), g(r["objective_mean"]), r["objective_name"], g(r["seconds_mean"]),
                r["steps"], "" if r["lr"] == "" else g(r["lr"]), str(r["ranks"]), r["how"]]) + " |")
        s = self.settings
        loss = ("squared loss l = (f - y)^2 / 2. Test error: RMSE on the test set. "
                "train loss: (1/n) sum (f - y)^2 / 2" if m == 1 else
                f"{m} outputs y1..y{m}, squared loss l = |f - y|^2 / 2 summed over the outputs. Test error: RMSE "
                f"on the test set over all outputs (root mean over n and m), and of each output. "
                "train loss: (1/n) sum |f - y|^2 / 2")
        notes = [
            "",
            f"Data: {s['data']} (n = {s['n_train']} train, {s['n_test']} test, d = {s['d']}), activation "
            f"{s['activation']}, {loss}, the data term shared by every objective; "
            "objective: each row's own (see its name; the families' objectives differ). "
            f"Seconds: wall time on {s['ranks']} rank(s), noisy on a shared machine.",
        ]
        if self.distances:
            notes.append("")
            notes.append(("Particle densities against the FE density u*" if m == 1 else
                          "Particle densities of output k (sum_i (a_ik / N) delta_(theta_i)) against the FE density "
                          "u*_k, rows yk") + " (on the FE mesh, "
                         f"{s['density_method']} projection"
                         + (f", kernel width s = {s['density_width']:g}" if s["density_width"] else "")
                         + f"; MMD: Gaussian kernel, bandwidth {s['mmd_bandwidth']:g}):")
            notes.append("")
            notes.append("| particles | L2 distance | relative L2 | MMD | relative MMD | max projection error "
                         "on test x | its stated bound | moved | dropped mass |")
            notes.append("|---|---|---|---|---|---|---|---|---|")
            for k, d in self.distances.items():
                notes.append(f"| {k} | {d['l2']:.3g} | {d['l2_relative']:.3g} | {d['mmd']:.3g} | "
                             f"{d['mmd_relative']:.3g} | {d['projection_error']:.3g} | {d['projection_bound']:.3g} | "
                             f"{d['moved']} | {d['dropped_mass']:.3g} |")
        return "\n".join(lines + notes) + "\n"

    def write(self, out: str, comm: MPI.Comm | None = None, force: bool = False, plot: bool = True) -> None:
        """Write every file of the module docstring into ``out`` (atomically; collective)."""
        from flowfem import io, outputs

        comm = self.result.problem.space.comm if comm is None else comm
        m = self.outputs
        tag = (lambda k: "") if m == 1 else (lambda k: f"_y{k + 1}")
        fe = [self.density] if m == 1 else list(self.result.densities)
        for k, u in enumerate(fe):
            u.name = f"fe_density{tag(k)}"
        for (method, N, s), pds in self.output_densities.items():
            for k, d in enumerate(pds):
                d.function.name = f"particles_{method}_N{N}_seed{s}{tag(k)}"
        fields = fe + [d.function for pds in self.output_densities.values() for d in pds]
        if plot:  # the flag, not the module: import the gathering function by name
            from flowfem.plot import gather

            # collective: coordinates, values and cells on rank 0; the figure draws the first output
            gathered = [gather(f) for f in [self.density] + [d.function for d in self.densities.values()]]
        else:
            gathered = []
        with outputs.output_directory(out, comm, force) as tmp:
            io.write_vtx(os.path.join(tmp, "densities.bp"), fields)
            io.write_xdmf(os.path.join(tmp, "densities.xdmf"), fields)
            error = None
            if comm.rank == 0:
                try:
                    self._write_root(tmp, gathered, plot)
                except Exception as e:  # noqa: BLE001  (reported on every rank below)
                    error = f"writing {out} failed on rank 0: {type(e).__name__}: {e}"
            error = comm.bcast(error, root=0)  # every rank leaves the block together
            if error is not None:
                raise CollectiveError(error)

    def _write_root(self, tmp: str, gathered, plot: bool) -> None:
        """The tables, curves, JSON and figures (rank 0 only)."""
        from flowfem import io

        with open(os.path.join(tmp, "table.md"), "w") as f:
            f.write(self.markdown())
        _write_csv(os.path.join(tmp, "table.csv"), self.table_columns(), self.table())
        runs = [asdict(r) | {f"test_rmse_y{k + 1}": e for k, e in enumerate(r.test_rmse_outputs)} for r in self.runs]
        _write_csv(os.path.join(tmp, "runs.csv"), self.run_columns(), runs)
        curves = []
        for (m, N, s), r in self.particles.items():
            h = r.history
            for i in range(len(h["step"])):
                curves.append(dict(method=m, width=N, seed=s, step=int(h["step"][i]), time=h["time"][i],
                                   objective=h["objective"][i], loss=h["loss"][i],
                                   test_rmse=h["test_error"][i]))
        _write_csv(os.path.join(tmp, "curves.csv"),
                   ("method", "width", "seed", "step", "time", "objective", "loss", "test_rmse"), curves)
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(io.jsonable(dict(settings=self.settings, runs=[asdict(r) for r in self.runs],
                                     table=self.table(), distances=self.distances)),
                      f, indent=2, sort_keys=True, allow_nan=False)  # a diverged run's inf is null
            f.write("\n")
        if plot:  # the flag, not the module: import the figure function by name
            from flowfem.plot import comparison_figures

            comparison_figures(tmp, self, gathered)


def _cell(value) -> str:
    """A CSV cell: '' for None, a real number by the shortest repr that reads back to the same double
    (NumPy's scalars too: repr(np.float64(0.5)) is 'np.float64(0.5)' under NumPy 2), else str."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


def _write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})


def read_csv(path: str) -> list[dict]:
    """Rows of a CSV written by :meth:`Comparison.write`, numbers as floats ('' -> None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if v == "":
                d[k] = None
                continue
            try:
                d[k] = float(v)
            except ValueError:
                d[k] = v
        out.append(d)
    return out


# -- distances between densities ---------------------------------------------------------


def _volume_integral(integrand, mesh) -> float:
    """integral over Omega of ``integrand`` d theta = integrand lambda^n dx, the mesh's chart
    (:func:`flowfem.space.chart_of`: lambda = 1 but on s3, where d theta = lambda^3 dz is the volume of S^3)."""
    volume = chart_of(mesh).ufl_volume(ufl.SpatialCoordinate(mesh), mesh.topology.dim)
    form = dolfinx.fem.form(volume * integrand * ufl.dx)
    return mesh.comm.allreduce(dolfinx.fem.assemble_scalar(form))


def l2_distance(u, v) -> float:
    """||u - v||_{L2(d theta)} = (integral (u - v)^2 lambda^n dx)^(1/2) for two Functions on the same mesh,
    d theta the volume of the parameter space through the mesh's chart (on s3 that of S^3). Collective."""
    return math.sqrt(max(_volume_integral((u - v) ** 2, u.function_space.mesh), 0.0))


def l2_norm(u) -> float:
    """||u||_{L2(d theta)} = (integral u^2 lambda^n dx)^(1/2), as :func:`l2_distance` (collective)."""
    return math.sqrt(max(_volume_integral(u**2, u.function_space.mesh), 0.0))


def neuron_extent(mesh) -> float:
    """The diameter of the bounding box of the mesh's nodes as neurons theta(x) (the chart's points, in
    R^(d+1)): on s3 that of the points vartheta(z) of S^3 in R^4, not of the chart's ball. Collective."""
    chart = chart_of(mesh)
    x = mesh.geometry.x[:, : mesh.geometry.dim]
    theta = chart.point(x) if len(x) else np.zeros((0, chart.neuron_dim(mesh.geometry.dim)))
    lo = theta.min(axis=0) if len(theta) else np.full(theta.shape[1], np.inf)
    hi = theta.max(axis=0) if len(theta) else np.full(theta.shape[1], -np.inf)
    mesh.comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    mesh.comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    return float(np.linalg.norm(hi - lo))


def density_measure(u, activation="relu") -> tuple[np.ndarray, np.ndarray]:
    """u d theta as point masses: the midpoint rule of u's mesh, (points (M, D), masses (M,)).

    Through the mesh's chart (:func:`flowfem.readout.quadrature_neurons`): point i is the neuron
    theta(x_i) of the midpoint x_i of cell K_i and its mass |K_i| lambda(x_i)^n u(x_i) (on s3 the
    point vartheta(z_i) of S^3 in R^4, the mass carrying lambda^3). The same on every rank.
    """
    nr = ro.quadrature_neurons(u, _activation(activation), degree=1)
    return nr.theta, nr.a


def mmd(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], bandwidth: float,
        comm: MPI.Comm | None = None) -> float:
    """The maximum mean discrepancy of two signed measures given as point masses (points, masses).

    MMD(mu, nu)^2 = sum_ij w_i w_j k(p_i, p_j) with w = (masses of mu, -masses of nu) and the
    Gaussian kernel k(p, q) = exp(-|p - q|^2 / (2 bandwidth^2)): a metric on measures that sees
    structure down to the bandwidth. Exact (blocked O(M^2) sums); rows are split over ``comm``.
    """
    if not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"the MMD kernel bandwidth must be positive, got {bandwidth!r}")
    P = np.vstack([a[0], b[0]])
    w = np.concatenate([a[1], -np.asarray(b[1])])
    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    rows = np.array_split(np.arange(len(w)), size)[rank]
    total = 0.0
    sq = np.sum(P * P, axis=1)
    for s in range(0, len(rows), 1024):
        r = rows[s:s + 1024]
        d2 = np.maximum(sq[r, None] + sq[None, :] - 2 * P[r] @ P.T, 0.0)
        total += float(w[r] @ np.exp(-d2 / (2 * bandwidth**2)) @ w)
    if comm is not None and comm.size > 1:
        total = comm.allreduce(total, op=MPI.SUM)
    return math.sqrt(max(total, 0.0))


# -- the comparison ------------------------------------------------------------------------


# the coarsest s3 mesh of the quadrature readout: gmsh left coarser charts partly unmeshed (h >= 0.5,
# refused by flowfem.space.s3_arrays), and h = 0.4 makes about S3_CELLS / 0.4^3 = 2200 cells
S3_COARSEST_SIZE = 0.4


def coarse_size(domain: str, d: int, width: int, radius: float | None) -> tuple[float, str]:
    """The mesh size parameter of ``domain`` giving about ``width`` cells, and a description.

    s3: the size h on S^3 with S3_CELLS / h^3 = width (:data:`flowfem.space.S3_CELLS`), at most
    :data:`S3_COARSEST_SIZE` (about 2200 cells: smaller widths get that mesh, as the sphere's
    coarsest has 20 cells). ValueError for a mesh file.
    """
    if domain == "box":
        if d == 1:
            m = max(1, round(math.sqrt(width / 2)))
            return m, f"box {m}x{m} ({2 * m * m} triangles)"
        m = max(1, round((width / 6) ** (1 / 3)))
        return m, f"box {m}x{m}x{m} ({6 * m ** 3} tetrahedra)"
    if domain == "circle":
        return int(width), f"circle ({int(width)} arcs)"
    if domain == "sphere":
        r = max(0, round(math.log(max(width, 1) / 20) / math.log(4)))
        return r, f"sphere r={r} ({20 * 4 ** r} triangles)"
    if domain == "ball":
        if d == 1:
            h = math.sqrt(4 * math.pi * radius**2 / (math.sqrt(3) * width))
        else:
            h = (8 * math.sqrt(2) * math.pi * radius**3 / width) ** (1 / 3)
        return h, f"ball h={h:.3g}"
    if domain == "s3":
        h = min((S3_CELLS / width) ** (1 / 3), S3_COARSEST_SIZE)
        coarsest = " (the coarsest s3 mesh)" if h == S3_COARSEST_SIZE else ""
        return h, f"s3 h={h:.3g} on S^3{coarsest}"
    raise ValueError(f"the quadrature readout at a given width needs a named domain (box, ball, circle, sphere, s3), "
                     f"not the mesh file {domain!r}: use the readouts sample or refit")


def compare(train: Dataset, test: Dataset, *, widths=(16, 64, 256), seeds=(0, 1, 2), methods=("gd", "adam"),
            lr: dict | None = None, steps: int = 1000, time_limit: float | None = None,
            weight_decay: float = 0.0, init_scale: float = 1.0, record_every: int | None = None,
            activation: str = "relu", domain: str = "box", mesh_size=None, radius: float | None = None,
            alpha: float = 1e-5, kappa: float = 1.0, weight: str = "uniform", degree: int = 1,
            readouts=("quadrature", "refit"), density_method: str = "lumped", density_width: float | None = None,
            mmd_bandwidth: float | None = None, data_name: str | None = None, comm: MPI.Comm = MPI.COMM_WORLD,
            progress: bool = False) -> Comparison:
    """FE solve, FE readouts and particle solvers on (train, test); see the module docstring.

    Collective: call on every rank with the same arguments. ``lr`` maps each particle method to
    its learning rate (defaults :data:`DEFAULT_LR`); ``time_limit`` caps each particle run's wall
    seconds; ``density_width`` None projects the particles with the lumped L2 projection, a
    number smooths them with a kernel of that standard deviation; ``mmd_bandwidth`` None is a
    tenth of the diameter of the bounding box of the mesh's nodes as neurons (:func:`neuron_extent`).
    ``radius`` None is 4 for the box and ball and, on s3, the chart radius Z chosen from the training
    inputs (:func:`flowfem.problem.make_space`; the coarse meshes of the quadrature readout use the
    same Z). ``progress``: a bar of the runs
    done out of all, with the last one's result, and one of each particle run's steps
    (:mod:`flowfem.progress`: rank 0, on a terminal).

    m outputs (``train.y`` (n, m)): every family fits all m (see the module docstring); the test
    data must have the same m, else ValueError before any work.
    """
    from flowfem.problem import Problem, make_space

    outputs = train.outputs
    if test.outputs != outputs:
        raise ValueError(f"the test data {test.name!r} have {test.outputs} output(s) but the training data "
                         f"{train.name!r} {outputs}: give test data with the same target columns")

    widths = integers("widths", widths, 1, "16,64,256")
    seeds = integers("seeds", seeds, 0, "0,1,2")
    methods, readouts = distinct("methods", methods, "gd,adam"), distinct("readouts", readouts, "quadrature,refit")
    for name in methods:
        if name not in METHODS:
            raise ValueError(unknown("particle method", name, METHODS))
    for name in readouts:
        if name not in READOUTS:
            raise ValueError(unknown("readout rule", name, READOUTS))
    lr = dict(DEFAULT_LR) | dict(lr or {})
    for m in METHODS:  # each, used or not: a step size of 0 given for a method not run is still a mistake
        positive(f"lr_{m}", lr[m])
    at_least("steps", steps, 1)  # 0 steps would compare the random initial networks
    # checked now, not after the FE solve: the particle runs and the densities come last
    positive("weight_decay", weight_decay, strict=False)
    positive("init_scale", init_scale)  # 0: every particle at 0, moved alike by every step: one neuron
    for name, value in (("time_limit", time_limit), ("mmd_bandwidth", mmd_bandwidth),
                        ("density_width", density_width if density_method == "kernel" else None)):
        if value is not None:
            positive(name, value)
    if density_method not in measure.DENSITY_METHODS:
        raise ValueError(f"density method {density_method!r}: choose lumped or kernel")
    act = _activation(activation)
    if radius is None and domain != "s3":  # s3: None, the chart radius is chosen from the training inputs
        radius = 4.0
    if "quadrature" in readouts:
        coarse_size(domain, train.d, 1, radius)  # refuses mesh files before any work
    ranks = comm.size
    x, y, xt, yt = train.x, train.y, test.x, test.y
    n = len(y)

    def done(bar, msg):
        """One run more done; the bar shows the last one's result."""
        bar.set_postfix_str(msg, refresh=False)
        bar.update(1)

    def train_loss(f):  # summed over the outputs: the data term of every family's objective
        if outputs == 1:
            return float(np.mean(0.5 * (f - y) ** 2))
        return float(np.sum(np.mean(0.5 * (f - y) ** 2, axis=0)))

    def rmse(f):  # over all n m values
        return float(np.sqrt(np.mean((f - yt) ** 2)))

    def rmse_outputs(f, total):  # one output: its RMSE is the total, as computed
        return [total] if outputs == 1 else [float(e) for e in np.sqrt(np.mean((f - yt) ** 2, axis=0))]

    def fe_densities(res):  # what the readout rules take: one density, or the list of m
        return res.density if outputs == 1 else res.densities

    # one bar over the runs (FE solve, readouts, particle runs, particle densities), each particle run's
    # steps in a second bar below it
    readout_runs = len(widths) * (int("quadrature" in readouts)
                                  + len(seeds) * sum(r in readouts for r in ("sample", "refit")))
    total = 1 + readout_runs + len(methods) * (len(widths) * len(seeds) + 1)
    with progress_.bar(progress, total=total, desc="compare", unit="run") as bar:
        # -- the FE solve ------------------------------------------------------------------
        comm.Barrier()
        t0 = time.perf_counter()
        space = make_space(domain, train.d, mesh_size, radius, act.name, comm, x=x)
        if radius is None:  # s3: the Z chosen from x, for the coarse meshes and the record
            radius = space.outer_radius
        problem = Problem(space, act.name, weight, alpha, kappa, degree)
        result = problem.fit(x, y)
        fe_seconds = time.perf_counter() - t0
        loss, reg = result.parts
        fe_test = result.rmse(xt, yt)
        fe_how = (f"one {result.info.method} solve ({result.iterations} iterations, residual "
                  f"{result.residual:.0e}) on the {space.domain} ({space.num_cells} cells, P{degree}, "
                  f"{problem.H.ndofs} dofs), alpha={alpha:g}, kappa={kappa:g}, omega {problem.H.weight}; "
                  f"time: mesh + assembly + solve; {ranks} rank(s)")
        runs = [Run("FE solve", "E_alpha minimiser", None, None, fe_test, loss, loss + reg,
                    "E_alpha(u*) = loss + alpha/2 ||u*||^2_H1_omega", fe_seconds, None, None, ranks, "completed",
                    fe_how, [fe_test] if outputs == 1 else [float(e) for e in result.rmse_outputs(xt, yt)])]
        done(bar, f"FE solve: test RMSE {fe_test:.2e}")
        networks = {}
        E_name = "E_alpha,N = loss + alpha/2 sum_i omega_i a_i^2 / q_i"

        def readout_run(rule, N_req, seed, neurons, seconds, how):
            net = neurons.network()
            networks[(rule, N_req, seed)] = net
            f, ft = net(x), net(xt)
            obj = ro.objective(neurons, x, y, alpha, problem.H.weight)
            e = rmse(ft)
            runs.append(Run("FE readout", rule, neurons.width, seed, e, train_loss(f), obj, E_name,
                            seconds, None, None, ranks, "completed", how, rmse_outputs(ft, e)))
            done(bar, f"{rule} N={neurons.width}: test RMSE {runs[-1].test_rmse:.2e}")

        u_stars = list(result.densities)
        base = None
        if "sample" in readouts or "refit" in readouts:
            t = time.perf_counter()
            base = ro.quadrature_neurons(fe_densities(result), act)
            base_seconds = time.perf_counter() - t
        for N in widths:
            if "quadrature" in readouts:
                size, desc = coarse_size(domain, train.d, N, radius)
                comm.Barrier()
                t = time.perf_counter()
                coarse = Problem(make_space(domain, train.d, size, radius, act.name, comm), act.name, weight, alpha,
                                 kappa, degree)
                res_c = coarse.fit(x, y)
                neurons = ro.quadrature_neurons(fe_densities(res_c), act, degree=1)
                readout_run("quadrature", N, None, neurons, time.perf_counter() - t,
                            f"midpoint rule (one neuron per cell) of a fresh FE solve on the {desc}, same alpha, "
                            f"kappa, omega ({res_c.iterations} CG iterations); time: mesh + solve + readout; "
                            f"{ranks} rank(s)")
            for rule in ("sample", "refit"):
                if rule not in readouts:
                    continue
                for s in seeds:
                    t = time.perf_counter()
                    neurons = ro.sample_neurons(base, N, s)
                    how = "N neurons drawn from |u*| (the main solve's quadrature points), one draw per seed"
                    if rule == "refit":
                        neurons = ro.refit(neurons, x, y, alpha, problem.H.weight, comm)
                        how += f", output weights refitted by least squares with alpha={alpha:g}"
                    readout_run(rule, N, s, neurons, fe_seconds + base_seconds + time.perf_counter() - t,
                                how + f"; time includes the FE solve; {ranks} rank(s)")

        # -- particles -----------------------------------------------------------------------
        particles = {}
        J_name = f"J = loss + lam/2 (1/N) sum |(w,b,a)|^2, lam={weight_decay:g}"
        for m in methods:
            for N in widths:
                for s in seeds:
                    comm.Barrier()
                    r = fp.train(x, y, N, activation=act.name, loss="squared", method=m, lr=lr[m], steps=steps,
                                 weight_decay=weight_decay, seed=s, x_test=xt, y_test=yt, record_every=record_every,
                                 time_limit=time_limit, comm=comm, init_scale=init_scale, progress=progress,
                                 leave=False)
                    particles[(m, N, s)] = r
                    h = r.history
                    e = float(h["test_error"][-1])
                    with np.errstate(all="ignore"):  # a diverged run's inf or NaN is its error
                        each = [e] if outputs == 1 else rmse_outputs(fp.predict(r.particles, xt, act.name), e)
                    how = (f"{m}, lr={lr[m]:g}, {int(h['step'][-1])} of {steps} steps"
                           + (f" (time limit {time_limit:g} s)" if time_limit else "")
                           + f", weight decay {weight_decay:g}, init N(0, {init_scale:g}^2) from the seed, "
                           f"mean-field scaling, full batch; {ranks} rank(s), neurons split over ranks")
                    runs.append(Run("particles", m, N, s, e, float(h["loss"][-1]),
                                    float(h["objective"][-1]), J_name, float(h["time"][-1]), int(h["step"][-1]),
                                    float(lr[m]), ranks, r.status, how, each))
                    done(bar, f"{m} N={N} seed {s}: test RMSE {runs[-1].test_rmse:.2e} ({r.status})")

        # -- densities -------------------------------------------------------------------------
        if mmd_bandwidth is None:  # the kernel acts on neurons theta (on s3 points of S^3 in R^4), not on x
            mmd_bandwidth = 0.1 * neuron_extent(space.mesh)
        # output k: the particle measure sum_i (a_ik / N) delta_(theta_i) against u*_k
        fe_measures = [density_measure(u, act) for u in u_stars]
        fe_l2s = [l2_norm(u) for u in u_stars]
        fe_mmds = [mmd(fm, (np.zeros((0, space.gdim)), np.zeros(0)), mmd_bandwidth, comm) for fm in fe_measures]
        densities, output_densities, distances = {}, {}, {}
        Nmax, s0 = max(widths), seeds[0]
        for m in methods:
            r = particles[(m, Nmax, s0)]
            if r.network is None:
                done(bar, f"density of {m} N={Nmax}: none (diverged)")
                continue
            net = r.network
            nets = [net] if outputs == 1 else [Network(net.W, net.b, net.a[:, k], act) for k in range(outputs)]
            pds, l2s = [], []
            for k, (net_k, u_k) in enumerate(zip(nets, u_stars)):
                pd = measure.density(r if outputs == 1 else net_k, problem.H.V, method=density_method,
                                     width=density_width)
                pds.append(pd)
                err = np.abs(pd.predict(xt) - net_k(xt))
                placed = (pd.theta[~pd.dropped], pd.c[~pd.dropped])
                dist_mmd = mmd(fe_measures[k], placed, mmd_bandwidth, comm)
                l2 = l2_distance(u_k, pd.function)
                l2s.append(l2)
                distances[f"{m} N={Nmax} seed={s0}" + ("" if outputs == 1 else f" y{k + 1}")] = dict(
                    l2=l2, l2_relative=l2 / fe_l2s[k] if fe_l2s[k] > 0 else np.nan, mmd=dist_mmd,
                    mmd_relative=dist_mmd / fe_mmds[k] if fe_mmds[k] > 0 else np.nan,
                    projection_error=float(err.max()), projection_bound=float(pd.bound(xt).max()),
                    mass=pd.mass, moved=int(pd.moved.sum()), dropped=int(pd.dropped.sum()),
                    dropped_mass=pd.dropped_mass, h=pd.h)
            densities[(m, Nmax, s0)] = pds[0]
            output_densities[(m, Nmax, s0)] = pds
            done(bar, f"density of {m} N={Nmax}: L2 distance to u*" + ("" if outputs == 1 else "_1")
                 + f" {l2s[0]:.2e}")

    seconds = comm.bcast([r.seconds for r in runs], root=0)  # rank 0's clock: the same rows everywhere
    for r, sec in zip(runs, seconds):
        r.seconds = sec
    settings = dict(
        data=data_name or train.name, n_train=n, n_test=len(yt), d=train.d, activation=act.name, loss="squared",
        widths=widths, seeds=seeds, methods=methods, lr={m: lr[m] for m in methods}, steps=steps,
        time_limit=time_limit, weight_decay=weight_decay, init_scale=init_scale, domain=space.domain,
        mesh_size=mesh_size, radius=radius, cells=space.num_cells, ndofs=problem.H.ndofs, alpha=alpha, kappa=kappa,
        weight=str(problem.H.weight), degree=degree, readouts=readouts, density_method=density_method,
        density_width=density_width, mmd_bandwidth=mmd_bandwidth, ranks=ranks,
        fe_iterations=result.iterations, fe_residual=result.residual, outputs=outputs)
    return Comparison(runs, settings, result, u_stars[0], particles, networks, densities, distances, train, test,
                      output_densities)
