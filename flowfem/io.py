"""Files a solve leaves behind, and reading a density back.

An output directory holds

* ``density.bp``     the density u for ParaView (VTX, ADIOS2: exact at every degree);
* ``density.xdmf``   the same as XDMF + HDF5 (``density.h5``), read by VTK's XDMF readers
                     (vtkXdmfReader, ParaView's) and by meshio (:func:`write_xdmf`);
* ``density.npz``    the same for NumPy and for ``flowfem readout``: the mesh
                     (``points``, ``cells``, ``cell_type``, ``geometry_degree``),
                     the element degree, the dof coordinates ``theta`` and
                     values ``u``, and the problem's settings;
* ``predictions.csv`` columns x1..xd, y, f (test points; reads back as data, f ignored);
* ``metrics.json``   E_alpha, its parts, solver iterations and residual, errors, timings;
* ``figure.png``     the density and the fit;
* ``path.png``       with alpha auto: validation error against alpha (:func:`flowfem.plot.path_figure`).

A flow's directory holds ``trajectory.xdmf`` + ``trajectory.h5`` (:class:`TrajectoryWriter`) and
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
from flowfem.petsc import PETSc  # noqa: E402

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


def geometry_function(u: dolfinx.fem.Function) -> dolfinx.fem.Function:
    """u itself when its Lagrange degree is the mesh's geometry degree, else u interpolated into the
    Lagrange space of that degree (a new Function of the same name; collective).

    XDMF stores a function only at the nodes of the mesh's geometry (dolfinx refuses any other
    degree). A P1 density on a curved degree-2 mesh (circle, sphere) is interpolated exactly (P1 is a
    subspace of P2 on the same cells); a P2 or P3 density on a straight mesh keeps its vertex values
    only: density.npz and density.bp hold it at its own degree.
    """
    V = u.function_space
    degree = V.mesh.geometry.cmaps[0].degree
    if V.element.basix_element.degree == degree:
        return u
    w = dolfinx.fem.Function(dolfinx.fem.functionspace(V.mesh, ("Lagrange", degree)), name=u.name)
    w.interpolate(u)
    return w


def require_space(path: str, nbytes: float, comm: MPI.Comm) -> None:
    """Raise OSError on every rank unless the file system holding ``path`` has nbytes + 1 MiB free.

    dolfinx's XDMF writer ends the process on a full disk (an assertion inside HDF5) instead of
    raising, so every XDMF write is checked first: an error then says what is wrong, and the output
    directory is removed (:func:`flowfem.outputs.output_directory`)."""
    import shutil

    directory = os.path.dirname(os.path.abspath(path))
    free = on_root(comm, lambda: shutil.disk_usage(directory).free)
    if free < nbytes + 2**20:
        raise OSError(f"the file system is full: writing {os.path.basename(path)!r} needs about {int(nbytes)} "
                      f"bytes and 1 MiB to spare, {free} bytes are free")


def xdmf_bytes(mesh: dolfinx.mesh.Mesh, frames: int = 0) -> float:
    """About the bytes an XDMF file of ``mesh`` (0 frames) or of ``frames`` more values at its geometry
    nodes adds to disk: 8-byte coordinates and node indices, and 4 kB of HDF5 and XML per array."""
    nodes = mesh.geometry.index_map().size_global
    if frames:
        return frames * (8.0 * nodes + 4096)
    cells = mesh.topology.index_map(mesh.topology.dim).size_global
    return 8.0 * nodes * mesh.geometry.dim + 8.0 * cells * mesh.geometry.dofmaps[0].shape[1] + 8192


def write_xdmf(path: str, u: dolfinx.fem.Function | list[dolfinx.fem.Function], t: float = 0.0) -> None:
    """Write u (or several Functions on one mesh, as fields of one file) as XDMF + HDF5 at time t:
    ``path`` (XML, .xdmf) and the same name with .h5 (the arrays), the mesh once, each Function at
    the mesh's geometry nodes (:func:`geometry_function`); collective, one pair of files for any
    number of ranks. OSError if the disk has no room (:func:`require_space`)."""
    fields = list(u) if isinstance(u, (list, tuple)) else [u]
    mesh = fields[0].function_space.mesh
    require_space(path, xdmf_bytes(mesh) + xdmf_bytes(mesh, len(fields)), mesh.comm)
    with dolfinx.io.XDMFFile(mesh.comm, path, "w") as f:
        f.write_mesh(mesh)
        for field in fields:
            f.write_function(geometry_function(field), t)
    inline_mesh(path, mesh.comm)


def inline_mesh(path: str, comm: MPI.Comm) -> None:
    """Copy the mesh's Topology and Geometry into each Grid of a closed XDMF file written by dolfinx, in
    place of its ``xi:include``, and declare the coordinates and values as 8-byte floats: VTK's XDMF (2)
    reader, ``vtkXdmfReader`` (the one in the pip vtk), crashes on the include and reads a float array
    without a declared precision as 4-byte floats. The copies name the same HDF5 arrays (flowfem's meshes
    and densities are float64): the .h5 file is unchanged. Rank 0 rewrites the XML (dolfinx writes it
    from rank 0 too)."""
    import copy
    import xml.etree.ElementTree as ET

    if comm.rank != 0:
        return
    tree = ET.parse(path)
    domain = tree.getroot().find("Domain")
    mesh = domain.find("Grid")  # dolfinx writes the mesh first
    parts = [mesh.find("Topology"), mesh.find("Geometry")]
    for grid in domain.iter("Grid"):
        for include in [e for e in grid if e.tag.endswith("}include")]:
            at = list(grid).index(include)
            grid.remove(include)
            for k, part in enumerate(parts):
                grid.insert(at + k, copy.deepcopy(part))
    for item in domain.iter("DataItem"):
        if "NumberType" not in item.attrib:  # the topology is Int; the rest float64
            item.set("NumberType", "Float")
            item.set("Precision", "8")
    tree.write(path, encoding="utf-8", xml_declaration=True)


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


def fit_scores(loss, f: np.ndarray, y: np.ndarray, prefix: str, comm: MPI.Comm | None = None) -> dict:
    """How well predictions f (n,) fit targets y (n,) under ``loss`` (a :class:`flowfem.loss.Loss`):
    {PREFIX_rmse: sqrt(mean (f - y)^2)} for the squared loss; for a classification loss (labels
    -1/+1) {PREFIX_accuracy: mean(sign f == y), PREFIX_loss: mean l(f, y)} instead, since the
    RMSE of logits against +-1 labels measures nothing. m outputs (f, y (n, m), squared loss):
    PREFIX_rmse over all n m entries and PREFIX_rmse_outputs, the list of the m outputs' RMSEs.
    ``comm``: f and y are this rank's rows of data sharded over comm's ranks (possibly none), and the
    means run over every rank's rows (one MPI sum; collective). ValueError (on every rank) if a
    classification loss meets targets other than -1 and +1: its accuracy and mean loss would be numbers
    of nothing (:meth:`flowfem.loss.Loss.check_labels`)."""
    f, y = np.asarray(f, dtype=float), np.asarray(y, dtype=float)
    loss.check_labels(y, f"{prefix} targets y", comm)
    if loss.quadratic:  # per output: sum of squared errors; then the row count
        # y (k, m) as (k, m) even for k = 0 rows (a rank of a sharded fit may hold none): reshape(0, -1) fails
        outputs = int(np.prod(y.shape[1:], dtype=np.int64))
        sums = np.append(np.sum(((f - y) ** 2).reshape(y.shape[0], outputs), axis=0), y.shape[0])
    else:  # correct signs, summed loss, rows
        sums = np.array([np.sum(np.sign(f) == y), np.sum(loss.value(f, y)), y.shape[0]], dtype=float)
    if comm is not None:
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    count = sums[-1]
    if not loss.quadratic:
        return {f"{prefix}_accuracy": float(sums[0] / count), f"{prefix}_loss": float(sums[1] / count)}
    scores = {f"{prefix}_rmse": float(np.sqrt(np.sum(sums[:-1]) / (count * (sums.size - 1))))}
    if np.ndim(y) == 2:
        scores[f"{prefix}_rmse_outputs"] = [float(v) for v in np.sqrt(sums[:-1] / count)]
    return scores


def _class_scores(result, data, prefix: str) -> dict:
    """PREFIX_accuracy, PREFIX_loss, PREFIX_confusion_matrix of a softmax fit on ``data`` (collective)."""
    scores = result.evaluate(data.x, data.y)
    return {f"{prefix}_{k}": v for k, v in scores.items() if k != "classes"}


def solve_metrics(result, train, test, sharded: bool = False) -> dict:
    """The numbers of a :class:`flowfem.problem.Result` that a solve's metrics.json holds.

    E_alpha and its parts (``loss`` is the data term), iterations, residual, the fit on train
    and test data (:func:`fit_scores`: RMSE, or accuracy and mean loss), sizes, the problem's
    settings (its loss under ``loss_function``), the operator's and the solve's seconds, the cg
    solver's preconditioner and its Nystrom basis size (``preconditioner_rank``); for
    alpha="auto" the regularisation path under ``path`` (table and choice); ``outputs`` m (and for
    m >= 2 each output's RMSE, the iterations summed over the outputs' solves); for a nonlinear loss
    also Newton's iterations (``iterations`` too), residuals ||dE_alpha(U_k)||
    and the inner (CG) iterations of each step and their total. Collective (predictions).

    A softmax fit (:class:`flowfem.problem.ClassifierResult`): ``outputs`` is C and ``classes`` the
    labels in order; instead of RMSEs, PREFIX_accuracy, PREFIX_loss (mean cross-entropy, nats) and
    PREFIX_confusion_matrix (C x C, rows the true class, columns the predicted one, in ``classes``
    order) for train and test (:func:`flowfem.softmax.evaluate`).

    ``sharded``: train and test hold this rank's rows of data sharded over the ranks (not softmax); the
    scores and n_train, n_test run over every rank's rows.
    """
    problem, info = result.problem, result.info
    comm = problem.space.comm if sharded else None

    def scores(data, prefix):
        if problem.loss.multiclass:
            return _class_scores(result, data, prefix)
        return fit_scores(problem.loss, result.predict(data.x, sharded), data.y, prefix, comm)

    def rows(data):
        return comm.allreduce(data.n, op=MPI.SUM) if sharded else data.n

    loss, reg = result.parts
    metrics = {("loss_function" if k == "loss" else k): v for k, v in settings(result.functional).items()}
    metrics.update(
        outputs=result.outputs,
        energy=result.energy, loss=loss, regulariser=reg, iterations=result.iterations, residual=result.residual,
        converged=result.info.converged, solver=info.solver, preconditioner=info.preconditioner,
        preconditioner_rank=info.rank,
        **scores(train, "train"), **scores(test, "test"), n_train=rows(train), n_test=rows(test), d=train.d,
        ndofs=problem.H.ndofs, cells=problem.space.num_cells,
        ranks=problem.space.comm.size, domain=problem.space.domain, degree=problem.H.degree,
        setup_seconds=result.setup_seconds, solve_seconds=result.solve_seconds)
    if result.path is not None:  # alpha="auto": the regularisation path (flowfem.path.RegularisationPath.metrics)
        metrics.update(path=result.path.metrics())
    if problem.loss.multiclass:
        metrics.update(classes=result.classes.tolist(), softmax_pc=info.pc)
    if not problem.loss.quadratic:
        metrics.update(newton_iterations=info.iterations, newton_residuals=list(info.history),
                       linear_iterations=list(info.linear_iterations),
                       linear_iterations_total=int(sum(info.linear_iterations)))
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


def save_density(path: str, u: dolfinx.fem.Function | list, space: Space, settings: dict) -> None:
    """Write density.npz (collective; rank 0 writes). ``settings`` holds activation, weight, kappa, alpha, ...
    ``u`` a Function, or the list of m densities of an m-output fit on one space: then the array ``u``
    is (ndofs, m), column k output k's dof values (one output keeps u (ndofs,))."""
    us = list(u) if isinstance(u, (list, tuple)) else [u]
    gathered = [gather_dofs(w) for w in us]
    theta = gathered[0][0]
    values = None if theta is None else (gathered[0][1] if len(us) == 1 else
                                         np.column_stack([g[1] for g in gathered]))
    u = us[0]
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


def load_density(path: str, comm: MPI.Comm = MPI.COMM_WORLD) -> tuple[WeightedH1, dolfinx.fem.Function | list, dict]:
    """Read density.npz back as (H, u, settings) distributed over comm; u is a Function, or the list of
    m Functions of an m-output fit (an array u of shape (ndofs, m)). A softmax fit's density file
    also records ``classes`` (C,), returned in settings."""
    required = {"points", "cells", "cell_type", "geometry_degree", "element_degree", "theta", "u"}
    data = on_root(comm, lambda: read_density_file(path, required))
    arrays = MeshArrays(data["points"], data["cells"], str(data["cell_type"]), int(data["geometry_degree"]),
                        str(data.get("domain", "file")))
    space = Space(arrays if comm.rank == 0 else None, comm)
    settings = {k: v.item() for k, v in data.items() if v.ndim == 0 and k not in
                ("cell_type", "geometry_degree", "domain", "element_degree")}
    recorded = {"input_mean", "input_scale"} & set(data)
    if recorded:  # fitted on standardised inputs (flowfem.scaling), recorded by flowfem solve
        from flowfem.scaling import Standardisation

        if len(recorded) == 1:
            raise ValueError(f"the density {os.fspath(path)!r} has array {recorded.pop()} without its partner: "
                             "the input scaling is the pair input_mean, input_scale; solve again")
        try:
            settings["input_scaling"] = Standardisation(data["input_mean"], data["input_scale"])
        except ValueError as e:
            raise ValueError(f"the density {os.fspath(path)!r}: {e}") from None
    if "classes" in data:  # a softmax fit's labels, column c of u the density of classes[c]
        settings["classes"] = data["classes"]
    H = WeightedH1(space, settings.get("weight", "uniform"), float(settings.get("kappa", 1.0)),
                   int(data["element_degree"]))
    values = data["u"]
    columns = [values] if values.ndim == 1 else list(values.T)
    us = [H.function("density" if len(columns) == 1 else f"density{k + 1}") for k in range(len(columns))]
    for u, column in zip(us, columns):
        fill_by_coordinates(u, data["theta"], column, f"the density {os.fspath(path)!r}",
                            "its dof coordinates do not match its own mesh; the file is damaged")
    return H, us[0] if values.ndim == 1 else us, settings


def write_density(directory: str, u: dolfinx.fem.Function | list, space: Space, settings: dict,
                  t: float = 0.0) -> None:
    """Write u as density.bp (VTX), density.xdmf + density.h5 (:func:`write_xdmf`), both at time t,
    and density.npz (:func:`save_density`) into ``directory`` (collective). ``u`` may be the list of
    m densities of an m-output fit: fields density1..densitym of the same files."""
    write_vtx(os.path.join(directory, "density.bp"), u, t)
    write_xdmf(os.path.join(directory, "density.xdmf"), u, t)
    save_density(os.path.join(directory, "density.npz"), u, space, settings)


def write_solution(directory: str, result, settings: dict, metrics: dict, train, test, plot: bool = True,
                   scaling=None, sampled: bool = False) -> None:
    """Write density.bp, density.xdmf/.h5, density.npz (with ``settings``), predictions.csv (f_{u*} on ``test``),
    metrics.json (``metrics``) and figure.png of a :class:`flowfem.problem.Result`, and path.png when it
    holds a regularisation path (collective). m outputs: the m densities as fields of the density files
    and columns of density.npz's u, predictions f1..fm, figure_y1.png, ...
    (:func:`flowfem.plot.write_solution_figure`). A softmax fit: the C densities likewise (``settings``
    holding ``classes``), the predicted label as predictions.csv's f, one figure of its decision
    regions. ``scaling``: the :class:`flowfem.scaling.Standardisation`
    that ``train`` and ``test`` went through, undone for the inputs of predictions.csv. ``sampled``:
    ``train`` and ``test`` are samples of the fit's rows (:func:`flowfem.sharded_split.sample`, the same on
    every rank): predictions.csv holds the test sample, figure.png draws the training sample, and the
    figure's title takes its test score from ``metrics`` (all rows), not from the sample."""
    from flowfem import plot as _plot

    space = result.problem.space
    comm = space.comm
    write_density(directory, result.densities if result.outputs > 1 else result.densities[0], space, settings)
    f_test = result.predict(test.x)  # a softmax fit: the predicted labels (the f column of predictions.csv)
    if comm.rank == 0:
        _data.save_predictions(os.path.join(directory, "predictions.csv"),
                               test.x if scaling is None else scaling.invert(test.x), f_test, test.y)
    write_json(os.path.join(directory, "metrics.json"), metrics, comm)
    if plot:
        _plot.write_solution_figure(os.path.join(directory, "figure.png"), result, train, test, f_test,
                                    metrics if sampled else None, scaling)
        if result.path is not None and comm.rank == 0:
            _plot.path_figure(os.path.join(directory, "path.png"), result.path)


# -- the gradient flow's trajectory and energy log ------------------------------------------


class TrajectoryWriter:
    """The density over time as an XDMF time series for ParaView, VTK and meshio, one frame every
    ``every`` steps (collective): ``path`` (.xdmf, the XML) and the same name with .h5 (the arrays),
    the mesh written once and then one array of values per frame, at the mesh's geometry nodes
    (:func:`geometry_function`). Frames are written by :meth:`write` (time t, dof vector U, step).

    After :meth:`track` the frames written since the last :meth:`take` are also kept on rank 0 as
    (step, t, values) with the values sorted by the dof coordinates ``theta`` (rank-count independent,
    as in a checkpoint): a flow saves them with each checkpoint (:mod:`flowfem.flow.checkpoint`), and
    a run resumed from it writes them first (:meth:`replay`), so its trajectory holds every frame from
    step 0 once. Kept frames cost ndofs * 8 bytes each on rank 0 until the next checkpoint. Each write
    first checks the disk's room (:func:`require_space`: OSError).

    ``outputs`` m > 1: the densities of an m-output flow, fields ``density1..densitym`` of every frame
    (as in :func:`write_density`), written from the VecNest of the m dof vectors; kept frames hold
    values (N, m).
    """

    def __init__(self, path: str, H: WeightedH1, every: int = 1, outputs: int = 1):
        if every < 1:
            raise ValueError(f"write every {every} steps: give a positive number")
        self.every = int(every)
        self.us = [H.function("density" if outputs == 1 else f"density{k + 1}") for k in range(outputs)]
        self.outs = [geometry_function(u) for u in self.us]  # the Functions written: u itself or its interpolant
        self.path, self.comm = path, H.space.comm
        require_space(path, xdmf_bytes(H.space.mesh), self.comm)
        self.file = dolfinx.io.XDMFFile(H.space.comm, path, "w")
        self.file.write_mesh(H.space.mesh)
        self.frames = 0
        self.kept: list | None = None  # None: not tracking
        self.start = -1
        self.theta: np.ndarray | None = None

    def write(self, t: float, U: PETSc.Vec, step: int = 0) -> None:
        """Write the frame of time t: U a dof vector, or the VecNest of the m outputs' (collective)."""
        Us = U.getNestSubVecs() if U.getType() == PETSc.Vec.Type.NEST else [U]
        if len(Us) != len(self.us):
            raise ValueError(f"a state of {len(Us)} densities for a trajectory of {len(self.us)}")
        for u, out, V in zip(self.us, self.outs, Us):
            assign(u, V)
            if out is not u:
                out.interpolate(u)
        self._write(t, step)

    def _write(self, t: float, step: int) -> None:
        require_space(self.path, xdmf_bytes(self.outs[0].function_space.mesh, len(self.outs)), self.comm)
        for out in self.outs:
            self.file.write_function(out, t)
        self.frames += 1
        if self.kept is not None:
            values = [gather_dofs(out)[1] for out in self.outs]
            if values[0] is not None:
                self.kept.append((int(step), float(t), values[0] if len(values) == 1 else np.column_stack(values)))

    def track(self, start: int) -> None:
        """Keep the frames written from now on (of steps > start) until :meth:`take` (collective)."""
        self.theta = gather_dofs(self.outs[0])[0]
        self.kept, self.start = [], int(start)

    def take(self, step: int) -> dict | None:
        """The kept frames of steps in (start, step] on rank 0, as arrays ``theta`` (N, gdim), ``start``,
        ``steps`` (F,), ``times`` (F,) and ``values`` (F, N) (F frames; (F, N, m) for m outputs); the next
        take starts after ``step``.
        None when not tracking, and on the other ranks."""
        if self.kept is None:
            return None
        kept, start = self.kept, self.start
        self.kept, self.start = [], int(step)
        if self.comm.rank != 0:
            return None
        return dict(theta=self.theta, start=np.array(start), steps=np.array([k for k, _, _ in kept], dtype=np.int64),
                    times=np.array([t for _, t, _ in kept], dtype=float),
                    values=np.array([v for _, _, v in kept], dtype=float).reshape(
                        len(kept), len(self.theta), *([len(self.us)] if len(self.us) > 1 else [])))

    def replay(self, theta: np.ndarray, steps: np.ndarray, times: np.ndarray, values: np.ndarray) -> None:
        """Write frames saved by :meth:`take` (any number of ranks; theta, times and values given on every
        rank) before the run continues: the values are copied onto the dofs by coordinates (collective)."""
        for step, t, v in zip(steps, times, values):
            columns = [v] if len(self.outs) == 1 else list(np.asarray(v).reshape(len(v), -1).T)
            if len(columns) != len(self.outs):
                raise CollectiveError(f"a saved trajectory frame holds {len(columns)} densities, this flow "
                                      f"{len(self.outs)}")
            for out, column in zip(self.outs, columns):
                fill_by_coordinates(out, theta, column, "a saved trajectory frame", "it was written for another mesh")
            self._write(float(t), int(step))

    def close(self) -> None:
        self.file.close()
        inline_mesh(self.path, self.comm)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


LOG_COLUMNS = ("step", "t", "tau", "energy", "loss", "regulariser", "gap", "error", "newton_iterations",
               "linear_iterations", "rejections", "seconds")


def write_log(directory: str, result, comm: MPI.Comm, extra: dict | None = None) -> None:
    """energy.csv (one row per step, :data:`LOG_COLUMNS`; m outputs: then energy1..energym and
    error1..errorm, each output's E_k and relative distance to u*_k) and energy.json (the log, with the
    run's settings) of a :class:`flowfem.flow.FlowResult`; rank 0 writes."""
    if comm.rank != 0:
        return
    m = len(result.log[0].get("energy_outputs", [None]))
    per_output = [(f"{name}{k + 1}", f"{name}_outputs", k) for name in ("energy", "error") for k in range(m)] \
        if m > 1 else []
    with open(os.path.join(directory, "energy.csv"), "w") as f:
        f.write(",".join([*LOG_COLUMNS, *(c for c, _, _ in per_output)]) + "\n")
        for r in result.log:
            f.write(",".join([repr(int(r[k])) if k in ("step", "newton_iterations", "linear_iterations", "rejections")
                              else repr(float(r[k])) for k in LOG_COLUMNS]
                             + [repr(float(r[key][k])) for _, key, k in per_output]) + "\n")
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
