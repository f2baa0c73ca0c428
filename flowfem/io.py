"""Files a solve leaves behind, and reading a density back.

An output directory holds

* ``density.bp``     the density u for ParaView (VTX, ADIOS2);
* ``density.npz``    the same for NumPy and for ``flowfem readout``: the mesh
                     (``points``, ``cells``, ``cell_type``, ``geometry_degree``),
                     the element degree, the dof coordinates ``theta`` and
                     values ``u``, and the problem's settings;
* ``predictions.csv`` columns x1..xd, y, f (test points; reads back as data, f ignored);
* ``metrics.json``   E_alpha, its parts, solver iterations and residual, errors, timings;
* ``figure.png``     the density and the fit.

A flow's directory holds ``trajectory.bp`` (:class:`TrajectoryWriter`) and
``energy.csv``/``energy.json`` (:func:`write_log`) besides the density.

Directories are written by :func:`flowfem.outputs.output_directory`: under a
temporary name, renamed when complete, so an error never leaves a
half-written output directory, and with a manifest that marks them as
flowfem's own (``--force`` replaces nothing else).

A dof vector U becomes a Function only through :func:`function` (or
:func:`assign` into an existing one), and a density file is written only by
:func:`write_density`; what a density file records of the problem is
:func:`settings`, what a solve's metrics.json holds :func:`solve_metrics`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from flowfem.mpi import CollectiveError, on_root  # first: loads MPI before dolfinx

import dolfinx.fem  # noqa: E402
import dolfinx.io  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem import data as _data  # noqa: E402
from flowfem.files import read_npz  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.space import MeshArrays, Space  # noqa: E402


def write_json(path: str, obj: dict, comm: MPI.Comm = MPI.COMM_WORLD) -> None:
    """Write obj as indented JSON from rank 0; NaN or inf anywhere in obj is a ValueError (strict JSON,
    and a number flowfem must never report as a result)."""
    if comm.rank == 0:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
        with open(path, "w") as f:
            f.write(text)
            f.write("\n")


FAILED_WRITERS: list = []
"""ADIOS2 writers whose write failed (e.g. on a full disk). Destroying one ends the process with
std::terminate (its engine throws again from the C++ destructor), so they are kept here for the
life of the process, and :mod:`flowfem.cli` leaves by ``os._exit`` when this list is not empty."""


def write_vtx(path: str, u: dolfinx.fem.Function | list[dolfinx.fem.Function], t: float = 0.0) -> None:
    """Write u (or several Functions on one mesh, as fields of one file) to a VTX (.bp) directory
    for ParaView, at time t (collective)."""
    fields = list(u) if isinstance(u, (list, tuple)) else [u]
    w = dolfinx.io.VTXWriter(fields[0].function_space.mesh.comm, path, fields, engine="BP4")
    try:
        w.write(t)
        w.close()
    except Exception:
        FAILED_WRITERS.append(w)
        raise


def assign(u: dolfinx.fem.Function, U: PETSc.Vec | np.ndarray) -> None:
    """u := U, U a PETSc vector in the dof layout or an array of u's owned dof values; ghost values
    are updated (collective).

    The values go into ``u.x.array`` and never through ``u.x.petsc_vec``: a Function whose
    PETSc vector has been made, used as a coefficient of a form compiled for the first time,
    stays referenced on rank 0 only; once it is freed on the other ranks, the next PETSc vector
    made on its communicator hangs (seen in :mod:`flowfem.compare`). Raises ValueError if U
    does not hold exactly the owned dofs.
    """
    imap = u.function_space.dofmap.index_map
    n = imap.size_local * u.function_space.dofmap.index_map_bs
    values = U.array_r if isinstance(U, PETSc.Vec) else np.asarray(U, dtype=float)
    if values.shape != (n,):
        raise ValueError(f"dof values of shape {values.shape}; this rank owns ({n},) dofs of {u.name!r}")
    u.x.array[:n] = values
    u.x.scatter_forward()


def function(H: WeightedH1, U: PETSc.Vec | np.ndarray, name: str = "density") -> dolfinx.fem.Function:
    """u_h = sum_i U_i phi_i as a new Function on H's space named ``name`` (collective; see :func:`assign`)."""
    u = H.function(name)
    assign(u, U)
    return u


def vector(u: dolfinx.fem.Function) -> PETSc.Vec:
    """A new PETSc vector holding u's owned dof values, the reverse of :func:`function` (collective;
    u's own PETSc vector is never made, see :func:`assign`)."""
    imap = u.function_space.dofmap.index_map
    n = imap.size_local * u.function_space.dofmap.index_map_bs
    V = PETSc.Vec().createMPI((n, imap.size_global * u.function_space.dofmap.index_map_bs),
                              comm=u.function_space.mesh.comm)
    V.array[:] = u.x.array[:n]
    return V


def settings(E) -> dict:
    """What a density file records of the functional E (a :class:`flowfem.functional.Functional`)
    so that :func:`load_density` and ``flowfem readout`` can rebuild the problem: activation,
    weight omega, kappa, alpha, loss and the quadrature degree of the data operator."""
    return dict(activation=E.Phi.sigma.name, weight=str(E.H.weight), kappa=E.H.kappa, alpha=E.alpha,
                loss=E.loss.name, quadrature_degree=E.Phi.quadrature.degree)


def solve_metrics(result, train, test) -> dict:
    """The numbers of a :class:`flowfem.problem.Result` that a solve's metrics.json holds.

    E_alpha and its parts (``loss`` is the data term), iterations, residual, train and test
    RMSE, sizes, the problem's settings (its loss under ``loss_function``), the operator's and
    the solve's seconds; for a nonlinear loss also Newton's residuals ||dE_alpha(U_k)||, the
    inner iterations of each step and the accuracy of sign f. Collective (predictions).
    """
    problem, info = result.problem, result.info
    loss, reg = result.parts
    metrics = {("loss_function" if k == "loss" else k): v for k, v in settings(result.functional).items()}
    metrics.update(
        energy=result.energy, loss=loss, regulariser=reg, iterations=result.iterations, residual=result.residual,
        converged=result.info.converged,
        solver=info.solver, train_rmse=result.rmse(train.x, train.y), test_rmse=result.rmse(test.x, test.y),
        n_train=train.n, n_test=test.n, d=train.d, ndofs=problem.H.ndofs, cells=problem.space.num_cells,
        ranks=problem.space.comm.size, domain=problem.space.domain, degree=problem.H.degree,
        setup_seconds=result.setup_seconds, solve_seconds=result.solve_seconds)
    if not problem.loss.quadratic:
        metrics.update(newton_residuals=list(info.history), linear_iterations=list(info.linear_iterations),
                       train_accuracy=float(np.mean(np.sign(result.predict(train.x)) == train.y)),
                       test_accuracy=float(np.mean(np.sign(result.predict(test.x)) == test.y)))
    return metrics


def gather_dofs(u: dolfinx.fem.Function) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Dof coordinates and values of u gathered on rank 0 (None elsewhere), sorted by coordinates."""
    V = u.function_space
    n = V.dofmap.index_map.size_local
    X = V.tabulate_dof_coordinates()[:n, : V.mesh.geometry.dim]
    comm = V.mesh.comm
    Xs, us = comm.gather(X, root=0), comm.gather(u.x.array[:n].copy(), root=0)
    if comm.rank != 0:
        return None, None
    X, values = np.vstack(Xs), np.concatenate(us)
    scale = max(float(np.abs(X).max(initial=0.0)), np.finfo(float).tiny)
    order = np.lexsort(np.round(X / scale, 10).T[::-1])  # rounding relative to the mesh's size: any units
    return X[order], values[order]


def save_density(path: str, u: dolfinx.fem.Function, space: Space, settings: dict) -> None:
    """Write density.npz (collective; rank 0 writes). ``settings`` holds activation, weight, kappa, alpha, ..."""
    theta, values = gather_dofs(u)
    if space.comm.rank == 0:
        a = space.arrays
        np.savez(path, points=a.points, cells=a.cells, cell_type=np.array(a.cell_type),
                 geometry_degree=np.array(a.degree), domain=np.array(a.domain),
                 element_degree=np.array(u.function_space.element.basix_element.degree),
                 theta=theta, u=values,
                 **{k: np.array(v) for k, v in settings.items()})


def read_density_file(path: str, required: set, what: str = "density file") -> dict:
    """The arrays of a density.npz (or DIR/density.npz); a clear error if unreadable or incomplete."""
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        path = os.path.join(path, "density.npz")
    data = read_npz(path, what, "give a density.npz written by flowfem solve (or its output directory)",
                    "a flowfem density (a zip archive of .npy arrays)")
    missing = set(required) - set(data)
    if missing:
        raise ValueError(f"{os.fspath(path)!r} is not a flowfem density: arrays {sorted(missing)} are missing")
    return data


def fill_by_coordinates(u: dolfinx.fem.Function, theta: np.ndarray, values: np.ndarray, what: str, hint: str) -> None:
    """Set u's dofs from (dof coordinates theta (N, gdim), values (N,)), exactly (copied, not
    interpolated), for any partition of the mesh. Collective: if any rank finds a dof without a
    value, every rank raises CollectiveError.

    Each dof takes the value of the nearest saved coordinate within a tolerance of 1e-6 times the
    smallest distance between two saved dofs: scale-free (a mesh in millimetres or in metres), and
    far below any dof spacing, so no dof can take its neighbour's value.
    """
    import scipy.spatial

    V = u.function_space
    gdim = V.mesh.geometry.dim
    X = V.tabulate_dof_coordinates()[:, :gdim]
    ok = (theta.ndim == 2 and theta.shape[1] == gdim and len(theta) == V.dofmap.index_map.size_global
          and len(values) == len(theta) and len(theta) >= 2 and bool(np.all(np.isfinite(theta))))
    missing = 1
    if ok:
        tree = scipy.spatial.cKDTree(theta)
        spacing = tree.query(theta, k=2)[0][:, 1].min()
        distance, nearest = tree.query(X, k=1)
        found = distance <= 1e-6 * spacing
        missing = int(len(X) - np.count_nonzero(found)) if spacing > 0 else 1
        u.x.array[found] = values[nearest[found]]
    missing = V.mesh.comm.allreduce(missing, op=MPI.SUM)
    if missing:
        raise CollectiveError(f"{what} does not match this mesh's {V.dofmap.index_map.size_global} dofs: {hint}")


def load_density(path: str, comm: MPI.Comm = MPI.COMM_WORLD) -> tuple[WeightedH1, dolfinx.fem.Function, dict]:
    """Read density.npz back as (H, u, settings) distributed over comm."""
    required = {"points", "cells", "cell_type", "geometry_degree", "element_degree", "theta", "u"}
    data = on_root(comm, lambda: read_density_file(path, required))
    arrays = MeshArrays(data["points"], data["cells"], str(data["cell_type"]), int(data["geometry_degree"]),
                        str(data.get("domain", "file")))
    space = Space(arrays if comm.rank == 0 else None, comm)
    settings = {k: v.item() for k, v in data.items() if v.ndim == 0 and k not in
                ("cell_type", "geometry_degree", "domain", "element_degree")}
    H = WeightedH1(space, settings.get("weight", "uniform"), float(settings.get("kappa", 1.0)),
                   int(data["element_degree"]))
    u = H.function("density")
    fill_by_coordinates(u, data["theta"], data["u"], f"the density {os.fspath(path)!r}",
                        "its dof coordinates do not match its own mesh; the file is damaged")
    return H, u, settings


def write_density(directory: str, u: dolfinx.fem.Function, space: Space, settings: dict, t: float = 0.0) -> None:
    """Write u as density.bp (ParaView, at time t) and density.npz (:func:`save_density`) into
    ``directory`` (collective)."""
    write_vtx(os.path.join(directory, "density.bp"), u, t)
    save_density(os.path.join(directory, "density.npz"), u, space, settings)


def write_solution(directory: str, result, settings: dict, metrics: dict, train, test, plot: bool = True) -> None:
    """Write density.bp, density.npz (with ``settings``), predictions.csv (f_{u*} on ``test``),
    metrics.json (``metrics``) and figure.png of a :class:`flowfem.problem.Result` (collective)."""
    from flowfem import plot as _plot

    space = result.problem.space
    comm = space.comm
    write_density(directory, result.density, space, settings)
    f_test = result.predict(test.x)
    if comm.rank == 0:
        _data.save_predictions(os.path.join(directory, "predictions.csv"), test.x, f_test, test.y)
    write_json(os.path.join(directory, "metrics.json"), metrics, comm)
    if plot:
        _plot.write_solution_figure(os.path.join(directory, "figure.png"), result, train, test, f_test)


# -- the gradient flow's trajectory and energy log ------------------------------------------


class TrajectoryWriter:
    """The density over time as a VTX (ADIOS2) series for ParaView, one frame every ``every`` steps (collective)."""

    def __init__(self, path: str, H: WeightedH1, every: int = 1):
        if every < 1:
            raise ValueError(f"write every {every} steps: give a positive number")
        self.every = int(every)
        self.u = H.function("density")
        self.writer = dolfinx.io.VTXWriter(H.space.comm, path, [self.u], engine="BP4")
        self.frames = 0

    def write(self, t: float, U: PETSc.Vec) -> None:
        assign(self.u, U)
        try:
            self.writer.write(t)
        except Exception:
            FAILED_WRITERS.append(self.writer)  # see FAILED_WRITERS
            raise
        self.frames += 1

    def close(self) -> None:
        if self.writer in FAILED_WRITERS:
            return
        try:
            self.writer.close()
        except Exception:
            FAILED_WRITERS.append(self.writer)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


LOG_COLUMNS = ("step", "t", "tau", "energy", "loss", "regulariser", "gap", "error", "newton_iterations",
               "linear_iterations", "rejections", "seconds")


def write_log(directory: str, result, comm: MPI.Comm, extra: dict | None = None) -> None:
    """energy.csv (one row per step, :data:`LOG_COLUMNS`) and energy.json (the same, with the run's settings) of a
    :class:`flowfem.flow.FlowResult`; rank 0 writes."""
    if comm.rank != 0:
        return
    with open(os.path.join(directory, "energy.csv"), "w") as f:
        f.write(",".join(LOG_COLUMNS) + "\n")
        for r in result.log:
            f.write(",".join(repr(int(r[k])) if k in ("step", "newton_iterations", "linear_iterations", "rejections")
                             else repr(float(r[k])) for k in LOG_COLUMNS) + "\n")
    doc = dict(metric=result.metric, scheme=result.scheme, lam=result.lam, energy_star=result.energy_star,
               stopped=result.stopped, steps=result.log, **(extra or {}))
    with open(os.path.join(directory, "energy.json"), "w") as f:
        json.dump(jsonable(doc), f, indent=1)
        f.write("\n")


def jsonable(obj):
    """obj with NumPy scalars and arrays as Python numbers and lists, keys as strings, and non-finite
    floats as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
