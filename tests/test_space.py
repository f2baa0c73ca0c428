"""Parameter meshes (flowfem.space): sizes, measures, meshio round trips, errors, shipped meshes.

Runs serially and under ``mpirun -n 2 python -m pytest tests/test_space.py``:
files are written by rank 0 into a directory it makes and broadcasts, every
integral is summed over the ranks, and errors must reach every rank.
"""

import glob
import os
import shutil
import tempfile

import numpy as np
import pytest

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import dolfinx.fem  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402

from flowfem.space import (Space, ball_arrays, box_arrays, circle_arrays, read_arrays,  # noqa: E402
                           sphere_arrays)

COMM = MPI.COMM_WORLD
MESH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "meshes")


@pytest.fixture(scope="module")
def shared_dir():
    """A temporary directory made on rank 0 and seen by every rank."""
    path = COMM.bcast(tempfile.mkdtemp(prefix="flowfem-space-") if COMM.rank == 0 else None, root=0)
    yield path
    COMM.barrier()
    if COMM.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def measure(space: Space, qdeg: int | None = None) -> float:
    """Length, area or volume of the mesh, summed over the ranks."""
    md = {"quadrature_degree": qdeg} if qdeg else {}
    one = dolfinx.fem.Constant(space.mesh, 1.0)
    local = dolfinx.fem.assemble_scalar(dolfinx.fem.form(one * ufl.dx(domain=space.mesh, metadata=md)))
    return COMM.allreduce(local, op=MPI.SUM)


def on_rank0(fn):
    """fn() on rank 0, its result (or the text of its error) on every rank."""
    result = None
    if COMM.rank == 0:
        try:
            result = fn()
        except Exception as e:  # report, don't hang the other rank
            result = f"{type(e).__name__}: {e}"
    return COMM.bcast(result, root=0)


def raises_everywhere(fn, match: str) -> str:
    """fn() raises ValueError matching ``match`` on every rank, with the same message."""
    with pytest.raises(ValueError, match=match) as info:
        fn()
    messages = COMM.allgather(str(info.value))
    assert all(m == messages[0] for m in messages), messages
    return messages[0]


# -- every domain -----------------------------------------------------------------


def test_box_2d():
    s = Space.box(1, n=8, radius=2.0)
    assert (s.gdim, s.mesh.topology.dim, s.input_dim, s.num_cells) == (2, 2, 1, 2 * 8**2)
    assert s.domain == "box" and not s.homogeneous_only
    assert measure(s) == pytest.approx(4.0**2, rel=1e-12)
    x = s.mesh.geometry.x
    lo, hi = COMM.allreduce(x[:, :2].min(), op=MPI.MIN), COMM.allreduce(x[:, :2].max(), op=MPI.MAX)
    assert (lo, hi) == (-2.0, 2.0)


def test_box_3d():
    s = Space.box(2, n=3, radius=1.5)
    assert (s.gdim, s.mesh.topology.dim, s.input_dim, s.num_cells) == (3, 3, 2, 6 * 3**3)
    assert not s.homogeneous_only
    assert measure(s) == pytest.approx(3.0**3, rel=1e-12)


@pytest.mark.parametrize("d, h", [(1, 0.4), (2, 0.5)])
def test_ball(d, h):
    """A polygon/polyhedron inscribed in the ball: a little smaller, by O(h^2)."""
    R = 2.0
    s = Space.ball(d, h=h, radius=R)
    assert (s.gdim, s.mesh.topology.dim, s.input_dim) == (d + 1, d + 1, d)
    assert s.domain == "ball" and not s.homogeneous_only
    exact = np.pi * R**2 if d == 1 else 4 / 3 * np.pi * R**3
    deficit = (exact - measure(s)) / exact
    assert 0 < deficit < (h / R) ** 2, deficit
    r = np.linalg.norm(s.mesh.geometry.x[:, : d + 1], axis=1)
    assert COMM.allreduce(r.max(initial=0.0), op=MPI.MAX) == pytest.approx(R, rel=1e-12)


def test_circle():
    s = Space.circle(64)  # degree-2 arcs
    assert (s.gdim, s.mesh.topology.dim, s.input_dim, s.num_cells) == (2, 1, 1, 64)
    assert s.domain == "circle" and s.homogeneous_only
    assert measure(s) == pytest.approx(2 * np.pi, rel=1e-6)
    r = np.linalg.norm(s.mesh.geometry.x[:, :2], axis=1)
    assert np.allclose(r, 1.0, atol=1e-14)  # every node is on the circle


def test_circle_length_orders():
    """Straight segments: the inscribed polygon exactly; degree-2 arcs: error O(h^4)."""
    for n in (8, 24):
        assert measure(Space.circle(n, degree=1)) == pytest.approx(2 * n * np.sin(np.pi / n), rel=1e-13)
    ns = np.array([8, 16, 32, 64])
    errors = [abs(measure(Space.circle(int(n)), qdeg=8) - 2 * np.pi) for n in ns]
    order = -np.polyfit(np.log(ns), np.log(errors), 1)[0]
    assert order > 3.8, (errors, order)


def test_sphere():
    s = Space.sphere(2)  # degree 2 by default
    assert (s.gdim, s.mesh.topology.dim, s.input_dim, s.num_cells) == (3, 2, 2, 20 * 4**2)
    assert s.domain == "sphere" and s.homogeneous_only
    r = np.linalg.norm(s.mesh.geometry.x, axis=1)
    assert np.allclose(r, 1.0, atol=1e-14)


def test_sphere_area_orders():
    """Area 4 pi: error O(h^4) with degree-2 geometry, O(h^2) with flat triangles (always too small)."""
    refinements = np.array([1, 2, 3, 4])
    h = 2.0**-refinements
    curved = [4 * np.pi - measure(Space.sphere(int(r), degree=2), qdeg=8) for r in refinements]
    flat = [4 * np.pi - measure(Space.sphere(int(r), degree=1)) for r in refinements]
    assert min(curved) > 0 and min(flat) > 0
    order_curved = np.polyfit(np.log(h), np.log(curved), 1)[0]
    order_flat = np.polyfit(np.log(h), np.log(flat), 1)[0]
    assert order_curved > 3.8, (curved, order_curved)
    assert 1.8 < order_flat < 2.2, (flat, order_flat)
    assert curved[-1] < 1e-5


def test_input_dimension_3_is_refused():
    for make in (lambda: Space.box(3), lambda: Space.ball(3), lambda: Space.make("box", d=3)):
        msg = raises_everywhere(make, r"input dimension d = 3")
        assert "4-D parameter mesh" in msg and "dimension 2 or 3 only" in msg and "d = 1 or 2" in msg
    raises_everywhere(lambda: box_arrays(3, 4, 1.0), "input dimension d = 3")
    raises_everywhere(lambda: Space.box(0), "input dimension d = 0")


def test_bad_sizes_are_refused():
    raises_everywhere(lambda: Space.box(1, n=0), "n = 0 must be positive")
    raises_everywhere(lambda: Space.ball(1, h=-0.1), "h = -0.1 must be positive")
    raises_everywhere(lambda: Space.sphere(-1), "refinements must be >= 0")
    raises_everywhere(lambda: Space.make("circle", d=2), "the circle parametrises inputs of dimension 1")
    raises_everywhere(lambda: Space.make("torus"), "unknown domain 'torus'")


# -- meshio round trips -----------------------------------------------------------

ROUND_TRIP = {  # name -> (arrays maker, geometry degree, gdim, tdim)
    "box-d1": (lambda: box_arrays(1, 6, 2.0), 1, 2, 2),
    "box-d2": (lambda: box_arrays(2, 3, 1.0), 1, 3, 3),
    "ball-d1": (lambda: ball_arrays(1, 0.5, 2.0), 1, 2, 2),
    "ball-d2": (lambda: ball_arrays(2, 0.8, 2.0), 1, 3, 3),
    "circle-p1": (lambda: circle_arrays(16, 1), 1, 2, 1),
    "circle-p2": (lambda: circle_arrays(16, 2), 2, 2, 1),
    "sphere-p1": (lambda: sphere_arrays(1, 1), 1, 3, 2),
    "sphere-p2": (lambda: sphere_arrays(1, 2), 2, 3, 2),
}


@pytest.mark.parametrize("ext", [".msh", ".xdmf"])
@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_write_read_round_trip(shared_dir, name, ext):
    make, degree, gdim, tdim = ROUND_TRIP[name]
    path = os.path.join(shared_dir, f"{name}{ext}")
    arrays = make() if COMM.rank == 0 else None

    def write_and_compare():
        arrays.write(path)
        back = read_arrays(path)
        return (back.cell_type == arrays.cell_type, back.degree, back.gdim, back.domain,
                float(np.abs(back.points - arrays.points).max()), bool(np.array_equal(back.cells, arrays.cells)))

    result = on_rank0(write_and_compare)
    assert not isinstance(result, str), result  # an error on rank 0
    same_type, back_degree, back_gdim, back_domain, point_error, same_cells = result
    assert same_type and (back_degree, back_gdim, back_domain) == (degree, gdim, "file")
    assert point_error < 1e-14 and same_cells

    # the file as a distributed mesh: same size and measure as the mesh made from the arrays
    read, direct = Space.read(path), Space(arrays)
    assert (read.gdim, read.mesh.topology.dim, read.domain) == (gdim, tdim, "file")
    assert read.num_cells == direct.num_cells
    assert read.homogeneous_only == (tdim < gdim)
    assert measure(read) == pytest.approx(measure(direct), rel=1e-13)
    assert Space.make(path).num_cells == direct.num_cells


def test_write_refuses_other_extensions(shared_dir):
    path = os.path.join(shared_dir, "box.vtk")
    msg = on_rank0(lambda: box_arrays(1, 2, 1.0).write(path))
    assert msg is not None and msg.startswith("ValueError") and "use the extension .msh or .xdmf" in msg
    assert on_rank0(lambda: glob.glob(os.path.join(shared_dir, "*.vtk*"))) == []  # nothing half-written


# -- unreadable files: one ValueError on every rank ---------------------------------


def _write_bytes(path, data: bytes):
    if COMM.rank == 0:
        with open(path, "wb") as f:
            f.write(data)
    COMM.barrier()


GARBAGE = bytes(range(256))[::-1] * 4  # not UTF-8, not XML


@pytest.mark.parametrize("ext", [".msh", ".xdmf"])
def test_read_garbage_bytes(shared_dir, ext):
    path = os.path.join(shared_dir, "garbage" + ext)
    _write_bytes(path, GARBAGE)
    msg = raises_everywhere(lambda: Space.read(path), "cannot read mesh file")
    assert path in msg and "give a gmsh .msh or a meshio/dolfinx .xdmf file" in msg


@pytest.mark.parametrize("ext, text", [(".msh", b"this is not a mesh\n"), (".xdmf", b"<html></html>\n")])
def test_read_wrong_text(shared_dir, ext, text):
    """Text that meshio's reader rejects with ReadError (not gmsh; XML but not XDMF).

    meshio then prints and calls sys.exit(1): read_arrays must turn that into
    the ValueError too, or rank 0 leaves and the other ranks hang.
    """
    path = os.path.join(shared_dir, "text" + ext)
    _write_bytes(path, text)
    raises_everywhere(lambda: Space.read(path), "cannot read mesh file")


def test_read_missing_file(shared_dir):
    path = os.path.join(shared_dir, "no-such-mesh.msh")
    msg = raises_everywhere(lambda: Space.read(path), "cannot read mesh file")
    assert "not found" in msg


def test_read_wrong_extension(shared_dir):
    path = os.path.join(shared_dir, "mesh.txt")
    if COMM.rank == 0:  # a good gmsh file under a name meshio cannot place
        box_arrays(1, 2, 1.0).write(os.path.join(shared_dir, "good.msh"))
        shutil.copy(os.path.join(shared_dir, "good.msh"), path)
    COMM.barrier()
    raises_everywhere(lambda: Space.read(path), "cannot read mesh file .*mesh.txt")
    raises_everywhere(lambda: Space.make(path), "unknown domain")


def test_read_interval_is_refused(shared_dir):
    """A 1-D mesh has no place for (w, b): the message says why."""
    import meshio

    path = os.path.join(shared_dir, "interval.msh")
    if COMM.rank == 0:
        points = np.column_stack([np.linspace(0, 1, 5), np.zeros(5), np.zeros(5)])
        meshio.write(path, meshio.Mesh(points, [("line", np.column_stack([np.arange(4), np.arange(1, 5)]))]),
                     file_format="gmsh", binary=False)
    COMM.barrier()
    raises_everywhere(lambda: Space.read(path), "is an interval: parameter meshes need dimension d \\+ 1 >= 2")


# -- the meshes shipped in meshes/ ----------------------------------------------------

SHIPPED = {  # name -> (gdim, tdim, cells, measure or None)
    "box_d1_R4_n32.msh": (2, 2, 2048, 64.0),
    "ball_d1_R4.msh": (2, 2, None, None),
    "circle_64.xdmf": (2, 1, 64, 2 * np.pi),
    "box_d2_R3_n8.xdmf": (3, 3, 3072, 216.0),
    "ball_d2_R3.msh": (3, 3, None, None),
    "sphere_r3.msh": (3, 2, 1280, 4 * np.pi),
}
SHIPPED_FILES = sorted(os.path.basename(p) for ext in ("msh", "xdmf")
                       for p in glob.glob(os.path.join(MESH_DIR, f"*.{ext}")))


def _expected_dims(name: str) -> tuple[int, int]:
    """From the naming convention: box_dK / ball_dK are (K+1)-D; circle is a curve in 2-D, sphere a surface in 3-D."""
    if name.startswith("circle"):
        return 2, 1
    if name.startswith("sphere"):
        return 3, 2
    d = int(name.split("_d")[1][0])
    return d + 1, d + 1


def test_shipped_meshes_are_there():
    assert set(SHIPPED) <= set(SHIPPED_FILES), sorted(set(SHIPPED) - set(SHIPPED_FILES))


@pytest.mark.parametrize("name", SHIPPED_FILES)
def test_shipped_mesh_loads(name):
    s = Space.read(os.path.join(MESH_DIR, name))
    gdim, tdim = _expected_dims(name)
    assert (s.gdim, s.mesh.topology.dim, s.input_dim) == (gdim, tdim, gdim - 1)
    assert s.homogeneous_only == (tdim < gdim)
    if name in SHIPPED:
        _, _, cells, size = SHIPPED[name]
        if cells is not None:
            assert s.num_cells == cells
        if size is not None:
            assert measure(s) == pytest.approx(size, rel=1e-4)
    if name.startswith("ball"):
        R = float(name.split("_R")[1].split("_")[0].split(".")[0])
        exact = np.pi * R**2 if gdim == 2 else 4 / 3 * np.pi * R**3
        assert 0 < (exact - measure(s)) / exact < 0.05
