"""Files a solve leaves behind, and reading a density back.

An output directory holds

* ``density.bp``     the density u for ParaView (VTX, ADIOS2);
* ``density.npz``    the same for NumPy and for ``flowfem readout``: the mesh
                     (``points``, ``cells``, ``cell_type``, ``geometry_degree``),
                     the element degree, the dof coordinates ``theta`` and
                     values ``u``, and the problem's settings;
* ``predictions.csv`` columns x1..xd, y, f (test points);
* ``metrics.json``   E_alpha, its parts, solver iterations and residual, errors, timings;
* ``figure.png``     the density and the fit.

A flow's directory holds ``trajectory.bp`` (:class:`TrajectoryWriter`) and
``energy.csv``/``energy.json`` (:func:`write_log`) besides the density.

Directories are written under a temporary name and renamed when complete,
so an error never leaves a half-written output directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager

import numpy as np

from flowfem.mpi import CollectiveError, on_root  # first: loads MPI before dolfinx

import dolfinx.fem  # noqa: E402
import dolfinx.io  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from flowfem.sobolev import WeightedH1  # noqa: E402
from flowfem.space import MeshArrays, Space  # noqa: E402


@contextmanager
def output_directory(path: str | os.PathLike, comm: MPI.Comm = MPI.COMM_WORLD, force: bool = False):
    """Yield a temporary directory that becomes ``path`` only if the block finishes on every rank."""
    path = os.path.abspath(os.fspath(path))

    def make():
        if os.path.exists(path) and not force and os.listdir(path):
            raise ValueError(f"output directory {path!r} exists and is not empty; pass --force to replace it")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", dir=os.path.dirname(path))

    tmp = on_root(comm, make)
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        ok = comm.allreduce(ok, op=MPI.LAND)
        comm.Barrier()
        if comm.rank == 0:
            if ok:
                if os.path.exists(path):
                    shutil.rmtree(path)
                os.replace(tmp, path)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        comm.Barrier()


def write_json(path: str, obj: dict, comm: MPI.Comm = MPI.COMM_WORLD) -> None:
    """Write obj as indented JSON from rank 0."""
    if comm.rank == 0:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def write_vtx(path: str, u: dolfinx.fem.Function, t: float = 0.0) -> None:
    """Write u to a VTX (.bp) directory for ParaView (collective)."""
    with dolfinx.io.VTXWriter(u.function_space.mesh.comm, path, [u], engine="BP4") as w:
        w.write(t)


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
    order = np.lexsort(np.round(X, 10).T[::-1])
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
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "density.npz")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read {what} {path!r} ({e}); give a density.npz written by flowfem solve") from None
    missing = set(required) - set(data)
    if missing:
        raise ValueError(f"{path!r} is not a flowfem density: arrays {sorted(missing)} are missing")
    return data


def fill_by_coordinates(u: dolfinx.fem.Function, theta: np.ndarray, values: np.ndarray, what: str, hint: str) -> None:
    """Set u's dofs from (dof coordinates, values), exactly (copied, not interpolated). Collective:
    if any rank finds a dof without a value, every rank raises."""
    V = u.function_space
    gdim = V.mesh.geometry.dim
    X = V.tabulate_dof_coordinates()[:, :gdim]
    ok = theta.ndim == 2 and theta.shape[1] == gdim and len(theta) == V.dofmap.index_map.size_global
    table = {tuple(k): v for k, v in zip(np.round(theta, 10).tolist(), values)} if ok else {}
    out = np.empty(len(X))
    missing = 0
    if ok:
        for i, k in enumerate(np.round(X, 10).tolist()):
            v = table.get(tuple(k))
            if v is None:
                missing += 1
            else:
                out[i] = v
    missing = V.mesh.comm.allreduce(missing if ok else 1, op=MPI.SUM)
    if missing:
        raise CollectiveError(f"{what} does not match this mesh's {V.dofmap.index_map.size_global} dofs: {hint}")
    u.x.array[:] = out


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


def write_solution(directory: str, result, train, test, metrics: dict, plot: bool = True) -> None:
    """Write density.bp, density.npz, predictions.csv, metrics.json and figure.png (collective)."""
    from flowfem import plot as _plot

    comm = result.problem.space.comm
    u = result.density
    write_vtx(os.path.join(directory, "density.bp"), u)
    p = result.problem
    settings = dict(activation=p.activation.name, weight=str(p.H.weight), kappa=p.H.kappa,
                    alpha=p.alpha, loss=p.loss.name, quadrature_degree=result.functional.Phi.quadrature.degree)
    save_density(os.path.join(directory, "density.npz"), u, p.space, settings)
    f_test = result.predict(test.x)
    if comm.rank == 0:
        header = ",".join([f"x{i + 1}" for i in range(test.d)] + ["y", "f"])
        np.savetxt(os.path.join(directory, "predictions.csv"), np.column_stack([test.x, test.y, f_test]),
                   delimiter=",", header=header, comments="")
    write_json(os.path.join(directory, "metrics.json"), metrics, comm)
    if plot:
        xg = _plot.grid(train.x)
        fg = result.predict(xg)
        theta, values = gather_dofs(u)
        if comm.rank == 0:
            _plot.solution_figure(os.path.join(directory, "figure.png"), theta, values, p.space.domain,
                                  train.x, train.y, xg, fg, title=f"{train.name}: test RMSE {metrics.get('test_rmse', float('nan')):.2e}")


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
        self.u.x.petsc_vec.array[:] = U.array_r
        self.u.x.scatter_forward()
        self.writer.write(t)
        self.frames += 1

    def close(self) -> None:
        self.writer.close()

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
    """obj with NumPy scalars as Python numbers and non-finite floats as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
