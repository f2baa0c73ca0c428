"""Parameter meshes (flowfem.space): sizes, measures, meshio round trips, errors, shipped meshes.

Runs serially and under ``mpirun -n 2 python -m pytest tests/test_space.py``:
files are written by rank 0 into a directory it makes and broadcasts, every
integral is summed over the ranks, and errors must reach every rank.
"""

import glob
import os
import re
import shutil
import tempfile

import numpy as np
import pytest

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

from conftest import fitted_order  # noqa: E402

import dolfinx.fem  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402

from flowfem.space import (MeshArrays, Space, ball_arrays, box_arrays, circle_arrays, named_arrays,  # noqa: E402
                           read_arrays, sphere_arrays)

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

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
    order = -fitted_order(ns, errors)
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
    order_curved, order_flat = fitted_order(h, curved), fitted_order(h, flat)
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
    raises_everywhere(lambda: Space.box(1, n=0), "^n must be a whole number >= 1 .cells per side., got 0$")
    raises_everywhere(lambda: Space.ball(1, h=-0.1), "^h must be a finite number > 0, got -0.1$")
    raises_everywhere(lambda: Space.sphere(-1), "^refinements must be a whole number >= 0 ")
    raises_everywhere(lambda: Space.make("circle", d=2), "the circle parametrises inputs of dimension 1")
    raises_everywhere(lambda: Space.make("torus"), "unknown domain 'torus'")


@pytest.mark.parametrize("domain, d, size, message", [
    ("box", 1, 0, "size must be a whole number >= 1 (cells per side), got 0"),  # 0 is not the default 32
    ("box", 1, 2.5, "size must be a whole number >= 1 (cells per side), got 2.5"),
    ("box", 2, float("nan"), "size must be a whole number >= 1 (cells per side), got nan"),
    ("ball", 1, 0, "size must be a finite number > 0, got 0"),
    ("ball", 1, float("inf"), "size must be a finite number > 0, got inf"),
    ("circle", 1, 0, "size must be a whole number >= 3 (the circle's arcs; two arcs would join the same two "
                         "vertices), got 0"),
    ("circle", 1, 2, "size must be a whole number >= 3 (the circle's arcs; two arcs would join the same two "
                         "vertices), got 2"),
    ("circle", 1, 1, "size must be a whole number >= 3"),
    ("sphere", 2, 1.5, "size must be a whole number >= 0 (the sphere's refinements of the icosahedron), "
                          "got 1.5"),
])
def test_sizes_are_checked_and_zero_is_not_the_default(domain, d, size, message):
    raises_everywhere(lambda: Space.make(domain, d, size), re.escape(message))
    with pytest.raises(ValueError, match=re.escape(message)):
        named_arrays(domain, d, size)


def test_radius_is_checked():
    for radius in (0.0, -1.0, float("nan"), float("inf")):
        said = f"^radius must be a finite number > 0, got {radius!r}$"
        raises_everywhere(lambda: Space.make("box", 1, 4, radius), said)
        raises_everywhere(lambda: Space.ball(1, 0.5, radius), said)


def test_smallest_meshes_of_each_domain():
    """Size 0 of the sphere is the icosahedron (0 refinements); the circle's smallest is a triangle."""
    assert Space.make("sphere", 2, 0).num_cells == 20
    assert Space.make("circle", 1, 3).num_cells == 3
    assert Space.make("box", 1, 1).num_cells == 2
    assert measure(Space.circle(3, degree=1)) == pytest.approx(3 * np.sqrt(3), rel=1e-13)


# -- invalid meshes: refused on every rank before dolfinx sees them -------------------------

_SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
_TWO = np.array([[0, 1, 2], [1, 3, 2]])


def _tri(points, cells, degree=1):
    return MeshArrays(np.asarray(points, float), np.asarray(cells), "triangle", degree, "file")


def _flat_sphere_cell():
    """The icosahedron with one vertex moved onto the midpoint of an opposite edge of its first cell."""
    a = sphere_arrays(0, 1)
    v0, v1, v2 = a.cells[0]
    a.points[v2] = (a.points[v0] + a.points[v1]) / 2
    return a


INVALID = {  # name -> (arrays maker, message)
    "nan": (lambda: _tri([[0, 0], [1, np.nan], [0, 1]], [[0, 1, 2]]), r"node 1 has coordinates \[1.0, nan\]"),
    "inf": (lambda: _tri(np.vstack([_SQUARE, [[np.inf, 0]]]), _TWO), r"node 4 .*inf.*must be finite"),
    "index": (lambda: _tri(_SQUARE, [[0, 1, 4]]), r"cell 0 has nodes \[0, 1, 4\], but the nodes are numbered 0..3"),
    "negative index": (lambda: _tri(_SQUARE, [[0, 1, 2], [-1, 1, 2]]), "cell 1 has nodes .* numbered 0..3"),
    # one triangle with a repeated vertex: free(): invalid next size (SIGABRT) in dolfinx before
    "repeated vertex": (lambda: _tri(_SQUARE[:3], [[0, 0, 1]]), r"cell 0 repeats a node, \[0, 0, 1\]"),
    "repeated P2 node": (lambda: _tri(np.vstack([_SQUARE, [[0.5, 0], [0.5, 0.5]]]), [[0, 1, 2, 4, 5, 4]], 2),
                         "cell 0 repeats a node"),
    "repeated tetra vertex": (lambda: MeshArrays(np.eye(4)[:, :3], np.array([[0, 1, 2, 2]]), "tetrahedron", 1,
                                                 "file"), "repeats a node"),
    "duplicate cells": (lambda: _tri(_SQUARE, [[0, 1, 2], [1, 3, 2], [2, 1, 0]]),
                        r"cells 0 and 2 have the same vertices \[0, 1, 2\]; remove duplicate cells"),
    # the circle in two arcs: free(): invalid next size (SIGABRT) in dolfinx before
    "circle of two arcs": (lambda: MeshArrays(np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]]),
                                              np.array([[0, 1, 2], [1, 0, 3]]), "interval", 2, "file"),
                           r"cells 0 and 1 have the same vertices \[0, 1\]; remove duplicate cells "
                           r"\(a closed curve needs at least 3 cells"),
    "collinear triangle": (lambda: _tri([[0, 0], [1, 1], [2, 2], [0, 3]], [[0, 1, 2], [0, 2, 3]]),
                           "cell 0 .* has area 0, zero to rounding"),
    "near-zero area": (lambda: _tri([[0, 0], [2, 0], [1, 1e-13], [1, 3]], [[0, 1, 2], [0, 1, 3]]),
                       "cell 0 .* has area 1e-13, zero to rounding"),
    "coincident nodes": (lambda: _tri([[0, 0], [1, 0], [1, 0]], [[0, 1, 2]]), "has area 0"),
    "flat tetrahedron": (lambda: MeshArrays(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1e-14]]),
                                            np.array([[0, 1, 2, 3]]), "tetrahedron", 1, "file"), "has volume"),
    "flat sphere triangle": (_flat_sphere_cell, "cell 0 .* has area 0"),
    "zero-length arc": (lambda: MeshArrays(np.array([[1.0, 0], [0, 1], [-1, 0], [-1, 0]]),
                                           np.array([[0, 1], [1, 2], [2, 3], [3, 0]]), "interval", 1, "file"),
                        "cell 2 .* has length 0"),
    "z noise": (lambda: _tri(np.column_stack([_SQUARE, [0, 1e-9, -2e-9, 0]]), _TWO),
                r"lie within 2e-09 of the plane x3 = 0 \(mesh size 1\): set that coordinate to 0"),
    "z noise 1e-4": (lambda: _tri(np.column_stack([_SQUARE, [0, 1e-4, 0, 0]]), _TWO), "lie within 0.0001"),
    "no cells": (lambda: _tri(_SQUARE, np.zeros((0, 3), int)), "has no cells"),
    "float cells": (lambda: _tri(_SQUARE, np.array([[0.0, 1, 2]])), r"cells must be a \(num_cells, 3\) integer"),
    "wrong node count": (lambda: _tri(_SQUARE, [[0, 1, 2, 3]]), r"\(num_cells, 3\) integer array"),
    "lines in 3-D": (lambda: MeshArrays(np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]),
                                        np.array([[0, 1], [1, 2], [2, 0]]), "interval", 1, "file"),
                     "interval cells in 3-D space are not a parameter domain"),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_mesh_is_refused_on_every_rank(name):
    make, message = INVALID[name]
    msg = raises_everywhere(lambda: Space(make() if COMM.rank == 0 else None), message)
    assert msg.startswith("the mesh") and "\n" not in msg


def test_the_circle_of_two_arcs_is_refused_by_name():
    said = "n must be a whole number >= 3 (the circle's arcs; two arcs would join the same two vertices), got 2"
    raises_everywhere(lambda: Space.circle(2), re.escape(said))
    raises_everywhere(lambda: Space.circle(2, degree=1), "n must be a whole number >= 3")


def test_tiny_out_of_plane_noise_is_dropped():
    """z up to 1e-12 times the mesh's size is rounding: the mesh is planar (d = 1), not a surface."""
    z = np.array([0, 3e-13, -4e-13, 0]) * 1e3  # up to 4e-13 of the size 1e3
    s = Space(_tri(np.column_stack([_SQUARE * 1e3, z]), _TWO) if COMM.rank == 0 else None)
    assert (s.gdim, s.mesh.topology.dim, s.num_cells) == (2, 2, 2) and not s.homogeneous_only
    assert measure(s) == pytest.approx(1e6, rel=1e-14)


def test_a_surface_is_not_taken_for_noise():
    """A bent surface (|z| up to 1/10 of its size) stays a surface in 3-D; unused nodes are fine."""
    points = np.vstack([np.column_stack([_SQUARE, [0, 0.1, -0.1, 0]]), [[50.0, 50, 50]]])
    s = Space(_tri(points, _TWO) if COMM.rank == 0 else None)
    assert (s.gdim, s.mesh.topology.dim, s.num_cells) == (3, 2, 2) and s.homogeneous_only


def test_fine_cells_are_not_degenerate():
    """Small but well-shaped cells (1e-9 of the mesh) pass: only cells flat to rounding are refused."""
    points = np.array([[0.0, 0], [1e-9, 0], [0, 1e-9], [1, 1]])
    s = Space(_tri(points, _TWO) if COMM.rank == 0 else None)
    assert s.num_cells == 2 and measure(s) == pytest.approx(1e-9, rel=1e-6)


def test_fewer_cells_than_ranks():
    """One triangle on any number of ranks: ranks without cells hold an empty part of the mesh."""
    s = Space(_tri(_SQUARE[:3] * 2, [[0, 1, 2]]) if COMM.rank == 0 else None)
    assert s.num_cells == 1 and measure(s) == pytest.approx(2.0, rel=1e-14)
    owned = COMM.allgather(s.mesh.topology.index_map(2).size_local)
    assert sorted(owned) == [0] * (COMM.size - 1) + [1]


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


def _write_text(path, text: str):
    _write_bytes(path, text.encode())


def _gmsh22(nodes, elements) -> str:
    """A gmsh 2.2 ASCII file: elements as (gmsh type, node numbers from 1)."""
    lines = ["$MeshFormat", "2.2 0 8", "$EndMeshFormat", "$Nodes", str(len(nodes))]
    lines += [f"{i + 1} {x} {y} 0" for i, (x, y) in enumerate(nodes)]
    lines += ["$EndNodes", "$Elements", str(len(elements))]
    lines += [f"{i + 1} {t} 2 0 1 " + " ".join(map(str, e)) for i, (t, e) in enumerate(elements)]
    return "\n".join(lines + ["$EndElements", ""])


_NODES = [(0, 0), (1, 0), (1, 1), (0, 1), (2, 0), (2, 1)]


@pytest.mark.parametrize("elements, message", [
    ([(2, (1, 2, 3)), (2, (1, 3, 4)), (3, (2, 5, 6, 3))], r"mixes cell types \['quad', 'triangle'\]"),
    ([(3, (1, 2, 3, 4)), (3, (2, 5, 6, 3))], "has quad cells: flowfem takes lines, triangles or tetrahedra"),
    ([(2, (1, 2, 3)), (9, (1, 2, 3, 4, 5, 6))], r"mixes cell types \['triangle', 'triangle6'\]"),
], ids=["triangles and quads", "quads", "triangles of two degrees"])
def test_mixed_cell_types_are_refused_not_dropped(shared_dir, elements, message):
    """Before, quadrilaterals next to triangles were dropped silently (part of the mesh lost)."""
    path = os.path.join(shared_dir, "mixed.msh")
    _write_text(path, _gmsh22(_NODES, elements))
    raises_everywhere(lambda: Space.read(path), message)


def test_lower_dimensional_cells_are_ignored(shared_dir):
    """Boundary lines and points of a triangle mesh are not cells of the domain."""
    path = os.path.join(shared_dir, "with-boundary.msh")
    _write_text(path, _gmsh22(_NODES, [(15, (1,)), (1, (1, 2)), (2, (1, 2, 3)), (2, (1, 3, 4))]))
    s = Space.read(path)
    assert (s.gdim, s.num_cells) == (2, 2) and measure(s) == pytest.approx(1.0, rel=1e-14)


def test_invalid_mesh_file_names_the_file(shared_dir):
    path = os.path.join(shared_dir, "repeated.msh")
    _write_text(path, _gmsh22(_NODES, [(2, (1, 2, 2)), (2, (1, 3, 4))]))
    msg = raises_everywhere(lambda: Space.read(path), "repeats a node")
    assert msg.startswith(f"mesh file {path!r}: cell 0 repeats a node, [0, 1, 1]")
    raises_everywhere(lambda: Space.make(path), "repeats a node")


def test_dolfinx_xdmf_with_mesh_tags_gives_meshio_reason(shared_dir):
    """meshio prints its reason and exits; the message must carry the reason, not 'SystemExit: 1'."""
    import dolfinx.io
    import dolfinx.mesh

    path = os.path.join(shared_dir, "tagged.xdmf")
    mesh = dolfinx.mesh.create_unit_square(COMM, 2, 2)
    mesh.topology.create_connectivity(1, 2)
    facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    tags = dolfinx.mesh.meshtags(mesh, 1, facets, np.ones(len(facets), np.int32))
    tags.name = "boundary"
    with dolfinx.io.XDMFFile(COMM, path, "w") as f:
        f.write_mesh(mesh)
        f.write_meshtags(tags, mesh.geometry)
    msg = raises_everywhere(lambda: Space.read(path), "cannot read mesh file")
    assert "Only supports one grid" in msg and "XDMFFile.write_mesh" in msg and "SystemExit" not in msg


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
