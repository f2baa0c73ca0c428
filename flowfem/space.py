"""Parameter space Omega: where the neurons theta = (w, b) live.

A neuron of a network on inputs x in R^d is theta = (w, b) in R^(d+1); its
feature is sigma(theta . x~) with x~ = (x, 1). Omega is meshed:

* ``box``:    [-R, R]^(d+1), a square (d = 1) or cube (d = 2);
* ``ball``:   |theta| <= R, a disc or a ball (gmsh);
* ``circle``: the unit circle S^1, a curve in R^2 (d = 1);
* ``sphere``: the unit sphere S^2, a surface in R^3 (d = 2).

The circle and the sphere are manifold meshes (geometric dimension d + 1,
topological dimension d). They carry densities of *directions*, which is
enough only for positively homogeneous activations (docs/theory.md §10):
``Space.homogeneous_only`` says so.

Meshes are first made as plain arrays (:class:`MeshArrays`) on rank 0, so
that the same arrays can be written with meshio (``.msh``, ``.xdmf``) or
distributed over the MPI ranks as a dolfinx mesh (:class:`Space`). Every
mesh passes :func:`check_mesh` before dolfinx sees it: dolfinx aborts the
process (``free(): invalid next size``) on some invalid meshes instead of
raising. A mesh may have fewer cells than there are ranks: ranks that own
no cells contribute nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import numpy as np

from flowfem import memory
from flowfem.arguments import integer, number, unknown
from flowfem.files import check_readable, replacing
from flowfem.mpi import on_root  # first: loads MPI before dolfinx

import basix.ufl  # noqa: E402
import dolfinx.mesh  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402

DOMAINS = ("box", "ball", "circle", "sphere")

# meshio cell names <-> (dolfinx cell, geometry degree)
_MESHIO_CELLS = {
    "line": ("interval", 1),
    "line3": ("interval", 2),
    "triangle": ("triangle", 1),
    "triangle6": ("triangle", 2),
    "tetra": ("tetrahedron", 1),
    "tetra10": ("tetrahedron", 2),
}
_TDIM = {"interval": 1, "triangle": 2, "tetrahedron": 3}
DEFAULT_SIZES = {"box": 32, "ball": 0.25, "circle": 64, "sphere": 3}  # n, h, arcs, refinements
# Peak memory per cell of making a mesh and building the dolfinx mesh from it on one rank, measured
# (peak RSS over 1e5..1e6 cells): box 414 (tetrahedra) and 434 (triangles), circle 455, sphere 696
# (curved triangles), ball 1005 (gmsh tetrahedra, gmsh's own data included). Writing with meshio
# (flowfem mesh) peaked lower: 140..450.
MESH_BYTES_PER_CELL = {"box": 450, "circle": 460, "sphere": 700, "ball": 1000}
# cells of gmsh's ball for element size h: about c (R / h)^(d+1), c measured for h = R/100..R/2
BALL_CELLS = {1: 7.26, 2: 19.2}
FLAT = 1e-12  # relative to the mesh's size: coordinate noise dropped, cells of no measure refused
NEARLY_PLANAR = 1e-3  # a mesh within this relative distance of a coordinate plane is a planar mesh


@dataclass
class MeshArrays:
    """A mesh as arrays: node coordinates (num_nodes, gdim) and cells in DOLFINx node order."""

    points: np.ndarray
    cells: np.ndarray
    cell_type: str  # interval | triangle | tetrahedron
    degree: int  # geometry degree: 1 (affine) or 2 (curved, on circle and sphere)
    domain: str  # box | ball | circle | sphere | file

    @property
    def gdim(self) -> int:
        return self.points.shape[1]

    @property
    def tdim(self) -> int:
        return _TDIM[self.cell_type]

    @property
    def manifold(self) -> bool:
        """True for the circle and sphere: cells of dimension gdim - 1."""
        return self.tdim < self.gdim

    def write(self, path: str | os.PathLike) -> None:
        """Write with meshio (``.msh`` gmsh 4.1 or ``.xdmf``), atomically: safe on every rank at once
        (see :func:`flowfem.files.replacing`)."""
        import meshio

        path = os.fspath(path)
        name = _meshio_name(self.cell_type, self.degree)
        perm = np.argsort(_vtk_perm(self.cell_type, self.cells.shape[1]))
        points = self.points
        if points.shape[1] < 3:  # meshio and gmsh want 3-D points
            points = np.hstack([points, np.zeros((len(points), 3 - points.shape[1]))])
        m = meshio.Mesh(points, [(name, self.cells[:, perm])])
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".msh", ".xdmf"):
            raise ValueError(f"mesh file {path!r}: use the extension .msh or .xdmf")
        with replacing(path, ext) as tmp:
            if ext == ".msh":
                meshio.write(tmp, m, file_format="gmsh", binary=False)
            else:
                meshio.xdmf.write(tmp, m, data_format="XML")


def _meshio_name(cell_type: str, degree: int) -> str:
    for name, (ct, deg) in _MESHIO_CELLS.items():
        if (ct, deg) == (cell_type, degree):
            return name
    raise ValueError(f"no meshio cell for {cell_type} of degree {degree}")


def _vtk_perm(cell_type: str, num_nodes: int) -> np.ndarray:
    """perm with dolfinx_cell = meshio_cell[perm] (meshio uses VTK node order)."""
    from dolfinx.io.utils import cell_perm_vtk

    return np.asarray(cell_perm_vtk(dolfinx.mesh.to_type(cell_type), num_nodes))


# -- generators (plain NumPy / gmsh; called on one rank) ----------------------------


def box_arrays(d: int, n: int, radius: float) -> MeshArrays:
    """[-R, R]^(d+1) split into n intervals per side: 2 n^2 triangles (d = 1) or 6 n^3 tetrahedra (d = 2).

    Raises ValueError unless d is 1 or 2, n a positive integer and R finite and positive.
    """
    d = _check_input_dim(d)
    n = _check_count("n", n, 1)
    _check_positive(radius=radius)
    cells = 2 * n**2 if d == 1 else 6 * n**3
    _require_memory("box", cells, f"a box mesh with n = {n} cells per side", "use fewer cells per side")
    t = np.linspace(-radius, radius, n + 1)
    if d == 1:
        X, Y = np.meshgrid(t, t, indexing="ij")
        points = np.column_stack([X.ravel(), Y.ravel()])
        idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
        v0, v1, v2, v3 = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
        cells = np.vstack([np.column_stack([v0.ravel(), v1.ravel(), v3.ravel()]),
                           np.column_stack([v0.ravel(), v2.ravel(), v3.ravel()])])
        return MeshArrays(points, cells.astype(np.int64), "triangle", 1, "box")
    X, Y, Z = np.meshgrid(t, t, t, indexing="ij")
    points = np.column_stack([X.ravel(), Y.ravel(), Z.ravel()])
    idx = np.arange((n + 1) ** 3).reshape(n + 1, n + 1, n + 1)
    corner = {(i, j, k): idx[i:n + i, j:n + j, k:n + k].ravel() for i in (0, 1) for j in (0, 1) for k in (0, 1)}
    # Kuhn triangulation: one tetrahedron per path from (0,0,0) to (1,1,1) along the axes
    cells = []
    for order in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        c = [0, 0, 0]
        path = [corner[tuple(c)]]
        for ax in order:
            c[ax] = 1
            path.append(corner[tuple(c)])
        cells.append(np.column_stack(path))
    return MeshArrays(points, np.vstack(cells).astype(np.int64), "tetrahedron", 1, "box")


def ball_arrays(d: int, h: float, radius: float) -> MeshArrays:
    """|theta| <= R meshed by gmsh with element size h: a disc (d = 1) or ball (d = 2).

    Raises ValueError unless d is 1 or 2 and h, R are finite and positive, if the mesh would not
    fit in memory (about :data:`BALL_CELLS` (R / h)^(d+1) cells), and if gmsh fails, makes no
    cells, or makes far fewer than h asks for (it coarsens some requests silently).
    """
    d = _check_input_dim(d)
    _check_positive(h=h, radius=radius)
    ratio = float(radius) / float(h)
    expected = BALL_CELLS[d] * ratio ** (d + 1) if ratio < 1e100 else np.inf
    shape = "disc" if d == 1 else "ball"
    _require_memory("ball", expected, f"a {shape} mesh of radius {radius:g} with element size h = {h:g}",
                    "use a larger element size h")
    import gmsh

    gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("ball")
        if d == 1:
            gmsh.model.occ.addDisk(0, 0, 0, radius, radius)
        else:
            gmsh.model.occ.addSphere(0, 0, 0, radius)
        gmsh.model.occ.synchronize()
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.option.setNumber("Mesh.MeshSizeMin", h)
        gmsh.model.mesh.generate(d + 1)
        tags, coords, _ = gmsh.model.mesh.getNodes()
        etype = 2 if d == 1 else 4
        _, node_tags = gmsh.model.mesh.getElementsByType(etype)
    except Exception as e:  # gmsh raises Exception with its (or OpenCASCADE's) last error
        raise ValueError(f"gmsh could not mesh the {shape} of radius {radius:g} with element size h = {h:g} "
                         f"({' '.join(str(e).split())}); choose a radius and h nearer 1 (e.g. radius 4, h 0.25)"
                         ) from None
    finally:
        gmsh.finalize()
    made = len(node_tags) // (d + 2)
    if made == 0:
        raise ValueError(f"gmsh made no cells for the {shape} of radius {radius:g} with element size h = {h:g}; "
                         "choose a radius and h nearer 1 (e.g. radius 4, h 0.25)")
    if expected > 1000 and made < expected / 4:  # seen: R = 4, h = 0.005 gave 6469 cells, h = 0.1 11776
        raise ValueError(f"gmsh made {made} cells for the {shape} of radius {radius:g} with element size "
                         f"h = {h:g}, where about {expected:.2g} were expected: it did not keep to h; use a larger "
                         "h, or mesh the ball yourself and pass the .msh file")
    points = coords.reshape(-1, 3)[:, : d + 1]
    index = np.zeros(int(tags.max()) + 1, dtype=np.int64)
    index[tags.astype(np.int64)] = np.arange(len(tags))
    cells = index[node_tags.astype(np.int64)].reshape(-1, d + 2)
    used = np.unique(cells)  # drop nodes that belong to no cell (e.g. the geometry's centre)
    renumber = np.full(len(points), -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    return MeshArrays(points[used], renumber[cells], "triangle" if d == 1 else "tetrahedron", 1, "ball")


def circle_arrays(n: int, degree: int = 2) -> MeshArrays:
    """The unit circle as n arcs; degree 2 puts each arc's midpoint on the circle.

    Raises ValueError unless n >= 3 is an integer (two arcs would join the same two vertices,
    which dolfinx cannot tell apart) and degree is 1 or 2.
    """
    n = _check_count("circle arcs n", n, 3, "two arcs would join the same two vertices")
    _check_geometry_degree(degree)
    _require_memory("circle", n, f"a circle of {n} arcs", "use fewer arcs")
    phi = 2 * np.pi * np.arange(n) / n
    points = np.column_stack([np.cos(phi), np.sin(phi)])
    cells = np.column_stack([np.arange(n), (np.arange(n) + 1) % n])
    if degree == 2:
        mid = 2 * np.pi * (np.arange(n) + 0.5) / n
        points = np.vstack([points, np.column_stack([np.cos(mid), np.sin(mid)])])
        cells = np.column_stack([cells, n + np.arange(n)])
    return MeshArrays(points, cells.astype(np.int64), "interval", degree, "circle")


def sphere_arrays(refinements: int, degree: int = 2) -> MeshArrays:
    """The unit sphere: an icosahedron split ``refinements`` times (20 * 4^r triangles), nodes projected on S^2.

    Raises ValueError unless refinements >= 0 is an integer and degree is 1 or 2.
    """
    refinements = _check_count("sphere refinements", refinements, 0)
    _check_geometry_degree(degree)
    _require_memory("sphere", 20 * 4 ** min(refinements, 64), f"a sphere refined {refinements} times",
                    "use fewer refinements")
    g = (1 + 5**0.5) / 2
    points = np.array([[-1, g, 0], [1, g, 0], [-1, -g, 0], [1, -g, 0], [0, -1, g], [0, 1, g],
                       [0, -1, -g], [0, 1, -g], [g, 0, -1], [g, 0, 1], [-g, 0, -1], [-g, 0, 1]], float)
    cells = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                      [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                      [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    for _ in range(refinements):
        points, cells, _ = _split_triangles(points, cells)
    if degree == 2:
        points, cells, mid = _split_triangles(points, cells)
        cells = mid  # (v0, v1, v2, m12, m02, m01): basix order of the 6-node triangle
    return MeshArrays(points, cells.astype(np.int64), "triangle", degree, "sphere")


def _split_triangles(points, cells):
    """Add projected edge midpoints; return the 4-way refinement and the 6-node cells."""
    edges = np.sort(np.vstack([cells[:, [1, 2]], cells[:, [0, 2]], cells[:, [0, 1]]]), axis=1)
    uniq, inv = np.unique(edges, axis=0, return_inverse=True)
    mids = points[uniq].sum(axis=1)
    mids /= np.linalg.norm(mids, axis=1, keepdims=True)
    m = len(points) + inv.reshape(3, -1).T  # m[:, 0] on edge (1,2), m[:, 1] on (0,2), m[:, 2] on (0,1)
    v0, v1, v2 = cells.T
    fine = np.vstack([np.column_stack([v0, m[:, 2], m[:, 1]]), np.column_stack([v1, m[:, 0], m[:, 2]]),
                      np.column_stack([v2, m[:, 1], m[:, 0]]), m])
    return np.vstack([points, mids]), fine, np.column_stack([cells, m])


def named_arrays(domain: str, d: int = 1, size: float | None = None, radius: float = 4.0,
                 geometry_degree: int = 2) -> MeshArrays:
    """The arrays of a named domain: ``size`` is n (box), h (ball), arcs (circle) or refinements (sphere).

    ``size=None`` means :data:`DEFAULT_SIZES`; any other value, 0 included, is checked by the
    generator. Raises ValueError for another domain, or the circle (sphere) with d != 1 (2).
    """
    if domain not in DEFAULT_SIZES:
        raise ValueError(unknown("domain", domain, tuple(DEFAULT_SIZES), "or a .msh/.xdmf mesh file"))
    size = DEFAULT_SIZES[domain] if size is None else size
    if domain == "box":
        return box_arrays(d, size, radius)
    if domain == "ball":
        return ball_arrays(d, size, radius)
    if d != (1 if domain == "circle" else 2):
        raise ValueError(
            f"the {domain} parametrises inputs of dimension {1 if domain == 'circle' else 2}, "
            f"but the data have d = {d}; use the {'sphere' if domain == 'circle' else 'circle'}, "
            "a box or a ball"
        )
    if domain == "circle":
        return circle_arrays(size, geometry_degree)
    return sphere_arrays(size, geometry_degree)


def read_arrays(path: str | os.PathLike) -> MeshArrays:
    """Read a mesh with meshio: the cells of the highest dimension, checked by :func:`check_mesh`.

    A planar mesh (all z = 0, up to noise of 1e-12 times its size) of triangles is a 2-D parameter
    domain (d = 1); lines in the plane form a curve such as the circle; triangles in space form a
    surface such as the sphere; tetrahedra a 3-D domain (d = 2). Cells of lower dimension (boundary
    lines, points) are ignored. Raises ValueError with meshio's reason if meshio cannot read the
    file, and if the highest-dimensional cells are of more than one type or of a type flowfem does
    not take (quadrilaterals, hexahedra, ...): none is silently dropped.
    """
    import meshio

    check_readable(path, "mesh file", "give a gmsh .msh or a meshio/dolfinx .xdmf file")
    path = os.fspath(path)
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot read mesh file {path!r}: the file is empty; give a gmsh .msh or a meshio/dolfinx "
                         ".xdmf file")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            m = meshio.read(path)
    except (Exception, SystemExit) as e:  # meshio raises many kinds, and on some prints its reason and exits
        said = str(e) if not isinstance(e, SystemExit) else "; ".join(
            ln.strip() for ln in printed.getvalue().splitlines() if ln.strip())
        reason = f"meshio: {' '.join(said.split()) or type(e).__name__}; damaged, truncated or not a mesh?"
        hint = (" (a dolfinx XDMF file with mesh tags holds several grids: write the mesh alone with "
                "XDMFFile.write_mesh, or as gmsh .msh)" if "one grid" in reason else "")
        raise ValueError(
            f"cannot read mesh file {path!r} ({reason}){hint}; give a gmsh .msh or "
            "a meshio/dolfinx .xdmf file of lines, triangles or tetrahedra"
        ) from None
    if not any(b.dim > 0 for b in m.cells):
        raise ValueError(f"mesh file {path!r} has no lines, triangles or tetrahedra")
    tdim = max(b.dim for b in m.cells)
    top = sorted({b.type for b in m.cells if b.dim == tdim})
    if len(top) > 1:
        raise ValueError(f"mesh file {path!r} mixes cell types {top}: flowfem takes one type, lines, "
                         "triangles or tetrahedra (of geometry degree 1 or 2); convert the others")
    name = top[0]
    if name not in _MESHIO_CELLS:
        raise ValueError(f"mesh file {path!r} has {name} cells: flowfem takes lines, triangles or tetrahedra "
                         "(of geometry degree 1 or 2); split them into simplices, e.g. without gmsh's "
                         "Mesh.RecombineAll")
    cell_type, degree = _MESHIO_CELLS[name]
    cells = np.vstack([b.data for b in m.cells if b.type == name]).astype(np.int64)
    cells = cells[:, _vtk_perm(cell_type, cells.shape[1])]
    return check_mesh(MeshArrays(np.asarray(m.points, dtype=float), cells, cell_type, degree, "file"),
                      f"mesh file {path!r}")


def check_mesh(arrays: MeshArrays, what: str = "the mesh") -> MeshArrays:
    """The arrays, checked (and repaired where unambiguous) before dolfinx sees them.

    With s = max |x| over the points of cells (the mesh's size), and ``what`` naming the mesh in
    the messages, raises ValueError naming the first problem of:

    * shapes: points (num_nodes, gdim) numbers; cells (num_cells >= 1, nodes) integers, with the
      node count of the cell type and geometry degree;
    * coordinates that are NaN or inf; node indices outside 0..num_nodes-1;
    * a node repeated in a cell; two cells with the same vertices (the circle in two arcs);
    * a cell of (near) zero measure: measure <= 1e-12 s L^(tdim-1), L its longest edge, i.e.
      flat to rounding; the measure is the cell's own (length, area, volume) in gdim, so the
      cells of the circle and sphere count too (degree-2 cells: that of their vertices);
    * trailing coordinates (meshio stores 3): dropped while the cells have a lower dimension and
      the coordinate is |x_k| <= 1e-12 s (a planar mesh stored with z = 0 or rounding noise);
      refused, naming max |x_k|, if 1e-12 s < max |x_k| <= 1e-3 s (a planar mesh with noise, or
      a surface too flat to be a domain of directions);
    * parameter dimensions other than 2 and 3, an interval, cells more than one dimension below
      the points (lines in 3-D).

    Nodes that belong to no cell are allowed. Returns the arrays as float points (without the
    dropped coordinates) and int64 cells.
    """
    points, cells = np.asarray(arrays.points), np.asarray(arrays.cells)
    if arrays.cell_type not in _TDIM or arrays.degree not in (1, 2):
        raise ValueError(f"{what}: cell type {arrays.cell_type!r} of geometry degree {arrays.degree}; flowfem "
                         "takes intervals, triangles or tetrahedra of degree 1 or 2")
    tdim = _TDIM[arrays.cell_type]
    nodes = (tdim + 1) * (tdim + 2) // 2 if arrays.degree == 2 else tdim + 1
    if points.ndim != 2 or points.dtype.kind not in "fiu" or points.shape[1] < 1:
        raise ValueError(f"{what}: points must be a (num_nodes, gdim) array of numbers, not {points.dtype} "
                         f"of shape {points.shape}")
    if cells.ndim != 2 or cells.dtype.kind not in "iu" or cells.shape[1] != nodes:
        raise ValueError(f"{what}: cells must be a (num_cells, {nodes}) integer array for "
                         f"{arrays.cell_type}s of degree {arrays.degree}, not {cells.dtype} of shape {cells.shape}")
    if len(cells) == 0:
        raise ValueError(f"{what} has no cells")
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if len(bad):
        raise ValueError(f"{what}: node {bad[0]} has coordinates {points[bad[0]].tolist()}"
                         f"{_more(bad)}: every coordinate must be finite")
    bad = np.flatnonzero(((cells < 0) | (cells >= len(points))).any(axis=1))
    if len(bad):
        raise ValueError(f"{what}: cell {bad[0]} has nodes {cells[bad[0]].tolist()}{_more(bad)}, but the nodes "
                         f"are numbered 0..{len(points) - 1}")
    used = points[np.bincount(cells.ravel(), minlength=len(points)) > 0].astype(float)
    scale = np.abs(used).max()
    while used.shape[1] > tdim:  # a trailing coordinate that only stores the plane of a planar mesh
        off = np.abs(used[:, -1]).max()
        if off > NEARLY_PLANAR * scale:
            break
        if off > FLAT * scale:
            raise ValueError(
                f"{what}: the {arrays.cell_type}s lie within {off:.3g} of the plane x{used.shape[1]} = 0 "
                f"(mesh size {scale:.3g}): set that coordinate to 0 for a {used.shape[1] - 1}-D mesh (noise "
                f"up to {FLAT:g} times the size is dropped), or give a surface that is not flat")
        used = used[:, :-1]
    gdim = used.shape[1]
    if gdim == tdim == 1:
        raise ValueError(f"{what} is an interval: parameter meshes need dimension d + 1 >= 2")
    if gdim - tdim > 1 or gdim < tdim:
        raise ValueError(f"{what}: {arrays.cell_type} cells in {gdim}-D space are not a parameter domain")
    _check_input_dim(gdim - 1)
    repeated = np.flatnonzero((np.diff(np.sort(cells, axis=1), axis=1) == 0).any(axis=1))
    if len(repeated):
        raise ValueError(f"{what}: cell {repeated[0]} repeats a node, {cells[repeated[0]].tolist()}"
                         f"{_more(repeated)}: every cell needs distinct nodes")
    vertices = np.sort(cells[:, : tdim + 1], axis=1)
    order = np.lexsort(vertices.T[::-1])  # equal vertex sets become neighbours
    twin = np.flatnonzero((vertices[order[1:]] == vertices[order[:-1]]).all(axis=1))
    if len(twin):
        i, j = sorted(order[twin[0]:twin[0] + 2])
        raise ValueError(f"{what}: cells {i} and {j} have the same vertices {vertices[j].tolist()}{_more(twin)}; "
                         "remove duplicate cells" + (" (a closed curve needs at least 3 cells)" if tdim == 1 else ""))
    x = points[:, :gdim].astype(float)
    measure, longest = _simplex_sizes(x[cells[:, : tdim + 1]])
    flat = np.flatnonzero(measure <= FLAT * scale * longest ** (tdim - 1))
    if len(flat):
        c = flat[0]
        raise ValueError(f"{what}: cell {c} (nodes {cells[c].tolist()}) has {_MEASURE[tdim]} {measure[c]:.3g}, "
                         f"zero to rounding for its edges of up to {longest[c]:.3g}{_more(flat)}: remove or repair "
                         "degenerate cells")
    return MeshArrays(x, cells.astype(np.int64), arrays.cell_type, arrays.degree, arrays.domain)


_MEASURE = {1: "length", 2: "area", 3: "volume"}


def _simplex_sizes(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measure in gdim and longest edge of simplices with vertices v (num_cells, tdim + 1, gdim).

    Computed from the edge vectors so that a flat cell gives zero to rounding (a Gram determinant
    would give its square root, ~1e-8 of the edge lengths).
    """
    tdim, gdim = v.shape[1] - 1, v.shape[2]
    e = v[:, 1:] - v[:, :1]
    if tdim == 1:
        measure = np.linalg.norm(e[:, 0], axis=1)
    elif tdim == gdim:
        measure = np.abs(np.linalg.det(e)) / (2 if tdim == 2 else 6)
    else:  # triangles in 3-D
        measure = np.linalg.norm(np.cross(e[:, 0], e[:, 1]), axis=1) / 2
    longest2 = np.zeros(len(v))
    for a, b in zip(*np.triu_indices(tdim + 1, 1)):
        np.maximum(longest2, ((v[:, a] - v[:, b]) ** 2).sum(axis=1), out=longest2)
    return measure, np.sqrt(longest2)


def _more(indices: np.ndarray) -> str:
    return f" (and {len(indices) - 1} more)" if len(indices) > 1 else ""


def _require_memory(domain: str, cells: float, what: str, fix: str) -> None:
    """Refuse a mesh of about ``cells`` cells that would not fit in memory (:data:`MESH_BYTES_PER_CELL`)."""
    count = f"{cells:.2g}" if cells < 1e300 else "more than 1e300"
    memory.require(MESH_BYTES_PER_CELL[domain] * cells, f"{what} ({count} cells)", fix)


def _check_input_dim(d) -> int:
    d = integer("the input dimension d", d, "(1 or 2)")
    if d not in (1, 2):
        raise ValueError(
            f"input dimension d = {d} needs a {d + 1}-D parameter mesh; flowfem meshes parameter "
            "spaces of dimension 2 or 3 only, so the inputs must have d = 1 or 2 (reduce the "
            "inputs' dimension, e.g. by projecting them, first)"
        )
    return d


def _check_count(name: str, v, minimum: int, why: str = "") -> int:
    """v as an int; ValueError unless it is a whole number >= minimum (0 never means a default)."""
    v = number(f"mesh parameter {name}", v, f"(a whole number >= {minimum})")
    if not (np.isfinite(v) and v == int(v)):
        raise ValueError(f"mesh parameter {name} = {v:g} must be a whole number")
    if v < minimum:
        raise ValueError(f"mesh parameter {name} = {v:g} must be positive" if minimum == 1 else
                         f"{name} must be >= {minimum}, not {v:g}" + (f" ({why})" if why else ""))
    return int(v)


def _check_geometry_degree(degree) -> None:
    if integer("geometry degree", degree, "1 or 2") not in (1, 2):
        raise ValueError(f"geometry degree {degree}: 1 (flat cells) or 2 (curved cells)")


def check_parameter_dim(d: int, gdim: int, what: str) -> None:
    """Raise ValueError unless inputs of dimension d fit a parameter mesh of dimension gdim = d + 1.

    ``what`` names the owner of the inputs ("the data", "the network") in the message.
    """
    if d + 1 != gdim:
        raise ValueError(
            f"{what} has d = {d} inputs, so its neurons theta = (w, b) live in dimension {d + 1}, but the "
            f"parameter mesh has dimension {gdim} (inputs of dimension {gdim - 1}): use a mesh of dimension "
            f"{d + 1}")


# -- the distributed mesh ------------------------------------------------------------


class Space:
    """Omega as a dolfinx mesh distributed over ``comm`` (built from arrays held on rank 0).

    The arrays pass :func:`check_mesh` on rank 0 first; its ValueError reaches every rank.
    Ranks may outnumber cells: a rank that owns no cells holds an empty part of the mesh.
    """

    def __init__(self, arrays: MeshArrays | None, comm: MPI.Comm = MPI.COMM_WORLD):
        checked = on_root(comm, lambda: check_mesh(arrays), bcast=False)  # None on the other ranks
        meta = comm.bcast((checked.cell_type, checked.degree, checked.gdim, checked.cells.shape[1], checked.domain)
                          if comm.rank == 0 else None, root=0)
        cell_type, degree, gdim, nodes, domain = meta
        element = basix.ufl.element("Lagrange", cell_type, degree, shape=(gdim,))
        if comm.rank == 0:
            cells, points = checked.cells, checked.points
        else:
            cells, points = np.empty((0, nodes), np.int64), np.empty((0, gdim))
        self.mesh = dolfinx.mesh.create_mesh(comm, cells, ufl.Mesh(element), points)
        self.arrays = checked  # kept on rank 0 for writing
        self.domain = domain
        self.comm = comm

    @property
    def gdim(self) -> int:
        """Dimension of the parameters theta = (w, b): d + 1."""
        return self.mesh.geometry.dim

    @property
    def input_dim(self) -> int:
        """d: the input dimension of the networks this space parametrises."""
        return self.gdim - 1

    @property
    def homogeneous_only(self) -> bool:
        """True on manifold meshes (circle, sphere): directions only, for homogeneous sigma."""
        return self.mesh.topology.dim < self.gdim

    @property
    def num_cells(self) -> int:
        return self.mesh.topology.index_map(self.mesh.topology.dim).size_global

    def __repr__(self) -> str:
        return (f"Space({self.domain}, parameter dim {self.gdim}, topological dim "
                f"{self.mesh.topology.dim}, {self.num_cells} cells, {self.comm.size} ranks)")

    # -- constructors --------------------------------------------------------------

    @classmethod
    def _on_root(cls, make, comm: MPI.Comm) -> "Space":
        """The mesh of make() (called on rank 0: a failure there reaches every rank)."""
        return cls(on_root(comm, make, bcast=False), comm)

    @classmethod
    def box(cls, d: int = 1, n: int = 32, radius: float = 4.0, comm=MPI.COMM_WORLD) -> "Space":
        """[-radius, radius]^(d+1) with n cells per side."""
        return cls._on_root(lambda: box_arrays(d, n, radius), comm)

    @classmethod
    def ball(cls, d: int = 1, h: float = 0.25, radius: float = 4.0, comm=MPI.COMM_WORLD) -> "Space":
        """The ball |theta| <= radius, element size h (gmsh)."""
        return cls._on_root(lambda: ball_arrays(d, h, radius), comm)

    @classmethod
    def circle(cls, n: int = 64, degree: int = 2, comm=MPI.COMM_WORLD) -> "Space":
        """The unit circle S^1 (d = 1) in n >= 3 arcs."""
        return cls._on_root(lambda: circle_arrays(n, degree), comm)

    @classmethod
    def sphere(cls, refinements: int = 3, degree: int = 2, comm=MPI.COMM_WORLD) -> "Space":
        """The unit sphere S^2 (d = 2): 20 * 4^refinements curved triangles."""
        return cls._on_root(lambda: sphere_arrays(refinements, degree), comm)

    @classmethod
    def read(cls, path: str | os.PathLike, comm=MPI.COMM_WORLD) -> "Space":
        """A mesh file (.msh, .xdmf) read with meshio on rank 0; errors reach every rank."""
        return cls._on_root(lambda: read_arrays(path), comm)

    @classmethod
    def make(cls, domain: str, d: int = 1, size: float | None = None, radius: float = 4.0,
             comm=MPI.COMM_WORLD) -> "Space":
        """A named domain (:func:`named_arrays`: ``size`` is n, h, arcs or refinements; None for the
        default) or a mesh file (.msh, .xdmf)."""
        if not isinstance(domain, (str, os.PathLike)):
            raise ValueError(f"domain must be box, ball, circle, sphere or a .msh/.xdmf file name, got {domain!r} "
                             f"({type(domain).__name__})")
        domain = os.fspath(domain)
        if os.path.splitext(domain)[1].lower() in (".msh", ".xdmf"):
            return cls.read(domain, comm)
        return cls._on_root(lambda: named_arrays(domain, d, size, radius), comm)


def _check_positive(**values) -> None:
    for name, v in values.items():
        v = number(f"mesh parameter {name}", v, "> 0")
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"mesh parameter {name} = {v:g} must be positive")
