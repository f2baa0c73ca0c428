"""Files ParaView and VTK users open: density.xdmf (+ .h5) on every domain and degree read back with meshio
and VTK, and density.bp read with ADIOS2 (what ParaView's VTX reader reads), equal density.npz; the flow's
trajectory.xdmf is an XDMF time series (the mesh once) that a resumed run continues: every frame from step 0
once, the uninterrupted run's values. Collective: rerun under mpirun -n 2.
"""

from __future__ import annotations

import os

import h5py
import meshio
import numpy as np
import pytest
import scipy.spatial

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI

from conftest import small_problem, u0
from flowfem import io
from flowfem.flow import Flow
from flowfem.flow import checkpoint as ck
from flowfem.sobolev import WeightedH1
from flowfem.space import Space, ball_arrays

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

# XDMF's nodes of a degree-2 cell beyond its vertices, as the pairs of vertices whose edge they lie on
EDGE_NODES = {"line3": [(0, 1)], "triangle6": [(0, 1), (1, 2), (2, 0)]}


def read_xdmf(path: str, step: int = 0):
    """(points, cells, time, {name: values}) of one time step of an XDMF file, with meshio."""
    with meshio.xdmf.TimeSeriesReader(path) as r:
        points, cells = r.read_points_cells()
        t, point_data, _ = r.read_data(step)
    return points, cells, t, {k: np.asarray(v).ravel() for k, v in point_data.items()}


VTK_READ = """
import json, sys
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline
from vtkmodules.vtkIOXdmf2 import vtkXdmfReader

reader = vtkXdmfReader()
reader.SetFileName(sys.argv[1])
reader.UpdateInformation()
info = reader.GetOutputInformation(0)
frames = []
for t in info.Get(vtkStreamingDemandDrivenPipeline.TIME_STEPS()):
    reader.UpdateTimeStep(t)
    blocks = reader.GetOutputDataObject(0)
    for b in range(blocks.GetNumberOfBlocks()):
        grid = blocks.GetBlock(b)
        values = grid.GetPointData().GetArray(sys.argv[2])
        if values is not None:
            frames.append(dict(t=t, points=vtk_to_numpy(grid.GetPoints().GetData()).tolist(),
                               values=vtk_to_numpy(values).tolist()))
print(json.dumps(frames))
"""


def read_with_vtk(path: str, name: str = "density") -> list[dict]:
    """[{t, points, values}] of each time step of an XDMF file as VTK's XDMF reader (vtkXdmfReader) sees the
    field ``name``; in a subprocess, so that a crash of the reader fails the test instead of ending pytest."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", VTK_READ, path, name], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [dict(t=f["t"], points=np.array(f["points"]), values=np.array(f["values"])) for f in json.loads(r.stdout)]


ADIOS2_READ = """
import json, sys
import adios2

steps, blocks = [], []
with adios2.FileReader(sys.argv[1]) as f:
    steps = f.read("step").ravel().tolist()
    for b in range(len(f.all_blocks_info("geometry")[0])):  # a block per rank that wrote the file
        blocks.append({k: f.read(k, block_id=b).tolist() for k in ("geometry", sys.argv[2], "vtkGhostType")})
print(json.dumps(dict(steps=steps, blocks=blocks)))
"""


def read_with_adios2(path: str, name: str = "density") -> tuple[list, np.ndarray, np.ndarray]:
    """(times, points, values) of the field ``name`` in a VTX (.bp) file, every rank's block, read with the
    ADIOS2 Python package (the library ParaView's VTX reader uses), in a subprocess: the pip ``adios2`` and the
    ADIOS2 inside dolfinx must not share one process."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", ADIOS2_READ, path, name], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    blocks = out["blocks"]
    assert len(blocks) == MPI.COMM_WORLD.size
    points = np.vstack([np.array(b["geometry"], dtype=float).reshape(-1, 3) for b in blocks])
    values = np.concatenate([np.array(b[name], dtype=float).ravel() for b in blocks])
    return out["steps"], points, values


def check_vtx_against_npz(points, values, theta, u):
    """A VTX file holds the density at its own degree: every node is a dof of density.npz (ghost copies of a
    dof on another rank included) with its value, and every dof is there."""
    distance, nearest = scipy.spatial.cKDTree(theta).query(points[:, : theta.shape[1]])
    assert distance.max() <= 1e-10 * np.abs(theta).max()
    assert np.allclose(values, u[nearest], rtol=1e-13, atol=1e-13 * np.abs(u).max())
    assert len(np.unique(nearest)) == len(theta)


def check_against_npz(points, cells, values, theta, u, degree, geometry_degree):
    """The XDMF values at its nodes are density.npz's at the same coordinates; the nodes of a P1 density on a
    curved degree-2 mesh that are no dof (edge nodes) hold the mean of the edge's two vertex values, exactly
    P1's interpolant; every dof is a node unless the density's degree exceeds the geometry's."""
    points = points[:, : theta.shape[1]]
    tree = scipy.spatial.cKDTree(theta)
    distance, nearest = tree.query(points)
    scale = np.abs(theta).max()
    at_dof = distance <= 1e-10 * scale
    assert np.allclose(values[at_dof], u[nearest[at_dof]], rtol=1e-13, atol=1e-13 * np.abs(u).max())
    if degree >= geometry_degree:
        assert at_dof.all()
    else:  # P1 on degree-2 cells: the edge nodes
        assert not at_dof.all()
        (block,) = cells
        for node, (a, b) in enumerate(EDGE_NODES[block.type], start=block.data.shape[1] - len(EDGE_NODES[block.type])):
            i = block.data[:, node]
            assert np.allclose(values[i], (values[block.data[:, a]] + values[block.data[:, b]]) / 2, rtol=1e-13,
                               atol=1e-13 * np.abs(u).max())
    if degree <= geometry_degree:
        assert len(np.unique(nearest[at_dof])) == len(theta)  # every dof is in the file


def _user_mesh(directory):
    path = os.path.join(directory, "ball.msh")
    if MPI.COMM_WORLD.rank == 0:
        ball_arrays(1, 1.0, 3.0).write(path)
    MPI.COMM_WORLD.barrier()
    return Space.read(path)


DOMAINS = {"box": lambda d: Space.box(1, 6, 2.0), "box3d": lambda d: Space.box(2, 3, 2.0),
           "ball": lambda d: Space.ball(1, 1.0, 3.0), "circle": lambda d: Space.circle(12),
           "sphere": lambda d: Space.sphere(1), "file": _user_mesh}


@pytest.mark.parametrize("degree", [1, 2])
@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_density_xdmf_reads_back_as_density_npz(shared_tmp, domain, degree):
    directory = os.path.join(shared_tmp, f"{domain}-P{degree}")
    if MPI.COMM_WORLD.rank == 0:
        os.makedirs(directory)
    space = DOMAINS[domain](shared_tmp)
    H = WeightedH1(space, degree=degree)
    u = H.function("density")
    u.interpolate(lambda x: np.sin(x[0]) + x[1] ** 2 - 0.5 * x[2])  # not in P2: interpolation shows
    io.write_density(directory, u, space, dict(activation="relu"), t=0.25)
    if MPI.COMM_WORLD.rank == 0:
        assert sorted(os.listdir(directory)) == ["density.bp", "density.h5", "density.npz", "density.xdmf"]
        points, cells, t, fields = read_xdmf(os.path.join(directory, "density.xdmf"))
        with np.load(os.path.join(directory, "density.npz")) as f:
            theta, values = f["theta"], f["u"]
        assert t == 0.25 and list(fields) == ["density"]
        check_against_npz(points, cells, fields["density"], theta, values, degree, int(space.arrays.degree))
        (frame,) = read_with_vtk(os.path.join(directory, "density.xdmf"))  # VTK reads the same nodes and values
        assert frame["t"] == 0.25 and np.array_equal(frame["points"][:, : points.shape[1]], points)
        assert np.array_equal(frame["values"], fields["density"])
        times, vtx_points, vtx_values = read_with_adios2(os.path.join(directory, "density.bp"))
        assert times == [0.25]  # the VTX "step" is the time
        check_vtx_against_npz(vtx_points, vtx_values, theta, values)


def test_several_fields_in_one_xdmf(shared_tmp):
    """compare's densities.xdmf and densities.bp: several Functions on one mesh, each its own field by name."""
    H = WeightedH1(Space.box(1, 4, 2.0))
    a, b = H.function("fe_density"), H.function("particles")
    a.interpolate(lambda x: x[0])
    b.interpolate(lambda x: x[1] ** 2)
    path = os.path.join(shared_tmp, "two.xdmf")
    io.write_xdmf(path, [a, b])
    io.write_vtx(os.path.join(shared_tmp, "two.bp"), [a, b], t=0.5)
    theta_a, va = io.gather_dofs(a)
    theta_b, vb = io.gather_dofs(b)
    if MPI.COMM_WORLD.rank == 0:
        for name, theta, v in (("fe_density", theta_a, va), ("particles", theta_b, vb)):
            times, vtx_points, vtx_values = read_with_adios2(os.path.join(shared_tmp, "two.bp"), name)
            assert times == [0.5]
            check_vtx_against_npz(vtx_points, vtx_values, theta, v)
    if MPI.COMM_WORLD.rank == 0:
        import xml.etree.ElementTree as ET

        root = ET.parse(path).getroot()
        names = [g.get("Name") for g in root.iter("Grid") if g.get("CollectionType") == "Temporal"]
        assert names == ["fe_density", "particles"]
        points, cells, _, fields = read_xdmf(path)  # meshio reads the last collection
        check_against_npz(points, cells, fields["particles"], theta_b, vb, 1, 1)
        (item,) = [a.find("DataItem").text for a in root.iter("Attribute") if a.get("Name") == "fe_density"]
        h5, dataset = item.split(":")
        with h5py.File(os.path.join(shared_tmp, h5), "r") as f:  # the other field where the XML says it is
            check_against_npz(points, cells, f[dataset][:].ravel(), theta_a, va, 1, 1)


def _flow(E):
    flow = Flow(E, "L2", "implicit_euler")
    flow.stationary()
    return flow


@pytest.mark.parametrize("every", [1, 2])
def test_resumed_trajectory_holds_every_frame_once(shared_tmp, every):
    """A run stopped after step 7 (checkpoints every 3, so the last at step 6; frame 7 written) and resumed from
    step 6 to step 12 writes a trajectory with the uninterrupted run's times (strictly increasing, none
    repeated) and values; the frames are in one XDMF time series whose mesh is written once."""
    problem, E = small_problem(alpha=1e-3)
    full_path, cut_path, resumed_path = (os.path.join(shared_tmp, f"{n}-{every}.xdmf") for n in ("full", "cut", "res"))
    flow = _flow(E)
    fp = ck.fingerprint(flow)
    with io.TrajectoryWriter(full_path, problem.H, every) as writer:
        flow.run(u0(problem), tau=0.01, growth=1.5, max_steps=12, writer=writer,
                 checkpoints=ck.Checkpoints(os.path.join(shared_tmp, f"full-{every}.ck"), 3, fp))
    flow.destroy()
    directory = os.path.join(shared_tmp, f"cut-{every}.ck")
    flow = _flow(E)
    with io.TrajectoryWriter(cut_path, problem.H, every) as writer:
        flow.run(u0(problem), tau=0.01, growth=1.5, max_steps=7, writer=writer, checkpoints=ck.Checkpoints(directory, 3, fp))
    flow.destroy()
    flow = _flow(E)
    resumed = ck.load_checkpoint(directory, flow, fp)
    assert resumed.state.step == 6
    frames, missing = ck.saved_frames(resumed)
    assert missing == "" and list(frames["steps"]) == list(range(0, 7, every))
    with io.TrajectoryWriter(resumed_path, problem.H, every) as writer:
        writer.replay(frames["theta"], frames["steps"], frames["times"], frames["values"])
        flow.run(resumed.U, tau=0.01, growth=1.5, max_steps=12, state=resumed.state, writer=writer,
                 checkpoints=ck.Checkpoints(directory, 3, fp, run=resumed.run))
        assert writer.frames == len(range(0, 13, every))
    flow.destroy()
    if MPI.COMM_WORLD.rank == 0:
        def series(path):
            with meshio.xdmf.TimeSeriesReader(path) as r:
                r.read_points_cells()
                return [r.read_data(k)[:2] for k in range(r.num_steps)]

        full, cut, res = series(full_path), series(cut_path), series(resumed_path)
        times = [t for t, _ in res]
        assert len(res) == len(range(0, 13, every)) and np.all(np.diff(times) > 0)
        assert len(cut) == len(range(0, 8, every)) + (7 % every != 0)  # the cut run went on to step 7
        assert times == [t for t, _ in full]
        for (_, a), (_, b) in zip(full, res):
            assert np.array_equal(a["density"], b["density"])
        text = open(resumed_path).read()
        assert text.count('<Attribute Name="density"') == len(res)
        with h5py.File(resumed_path[:-len(".xdmf")] + ".h5", "r") as f:  # the mesh once, one array per frame
            assert list(f) == ["Function", "Mesh"] and len(f["Function/density"]) == len(res)
        seen = read_with_vtk(resumed_path)  # and VTK plays the same frames
        assert [f["t"] for f in seen] == times
        for f, (_, b) in zip(seen, res):
            assert np.array_equal(f["values"], b["density"].ravel())
    # resuming again from the checkpoint at step 12 finds the whole chain of saved frames
    flow = _flow(E)
    again = ck.load_checkpoint(directory, flow, fp)
    frames, missing = ck.saved_frames(again)
    assert again.state.step == 12 and missing == "" and list(frames["steps"]) == list(range(0, 13, every))
    flow.destroy()


def test_missing_frames_are_reported(shared_tmp):
    """A frames file that is gone: the frames after it are returned and the sentence names the file."""
    problem, E = small_problem(alpha=1e-3)
    flow = _flow(E)
    fp = ck.fingerprint(flow)
    directory = os.path.join(shared_tmp, "gone.ck")
    with io.TrajectoryWriter(os.path.join(shared_tmp, "gone.xdmf"), problem.H) as writer:
        checkpoints = ck.Checkpoints(directory, 2, fp)
        flow.run(u0(problem), tau=0.01, max_steps=4, writer=writer, checkpoints=checkpoints)
    MPI.COMM_WORLD.barrier()
    if MPI.COMM_WORLD.rank == 0:
        os.remove(os.path.join(directory, f"{checkpoints.run}.frames-00000002.npz"))
    resumed = ck.load_checkpoint(directory, flow, fp)
    frames, missing = ck.saved_frames(resumed)
    assert list(frames["steps"]) == [3, 4]
    assert "frames up to step 2 cannot be read" in missing and "frames-00000002.npz" in missing
    flow.destroy()


def test_a_resume_interrupted_before_its_first_step_keeps_the_saved_frames(shared_tmp):
    """Ctrl-C right after --resume, before a step: the checkpoint and frames file it resumed from stay as they
    were (a second save there once replaced the frames of steps 3..4 by none, starting at step 4, and the next
    resume looped on that file forever); a frames file that does not lead back to an earlier step is reported."""
    problem, E = small_problem(alpha=1e-3)
    flow = _flow(E)
    fp = ck.fingerprint(flow)
    directory = os.path.join(shared_tmp, "early.ck")
    with io.TrajectoryWriter(os.path.join(shared_tmp, "early.xdmf"), problem.H) as writer:
        flow.run(u0(problem), tau=0.01, max_steps=4, writer=writer, checkpoints=ck.Checkpoints(directory, 2, fp))
    flow.destroy()
    frames_file = os.path.join(directory, f"{ck.load_checkpoint(directory, _flow(E), fp).run}.frames-00000004.npz")
    before = open(frames_file, "rb").read()
    flow = _flow(E)
    resumed = ck.load_checkpoint(directory, flow, fp)
    with io.TrajectoryWriter(os.path.join(shared_tmp, "early-resumed.xdmf"), problem.H) as writer:
        result = flow.run(resumed.U, tau=0.01, max_steps=8, state=resumed.state, writer=writer,
                          checkpoints=ck.Checkpoints(directory, 2, fp, run=resumed.run), stop=lambda: True)
    assert result.interrupted and flow.state.step == 4
    flow.destroy()
    MPI.COMM_WORLD.barrier()
    assert open(frames_file, "rb").read() == before
    flow = _flow(E)
    again = ck.load_checkpoint(directory, flow, fp)
    frames, missing = ck.saved_frames(again)
    assert missing == "" and list(frames["steps"]) == [0, 1, 2, 3, 4]
    MPI.COMM_WORLD.barrier()
    if MPI.COMM_WORLD.rank == 0:  # a damaged file whose start is its own step: reported, not followed forever
        with np.load(frames_file) as f:
            arrays = {k: f[k] for k in f.files}
        np.savez(frames_file, **dict(arrays, start=np.array(4)))
    MPI.COMM_WORLD.barrier()
    frames, missing = ck.saved_frames(again)
    assert frames is None and "is damaged" in missing and "frames-00000004.npz" in missing
    flow.destroy()
