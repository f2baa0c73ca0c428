"""Parameter space Omega: where the neurons theta = (w, b) live.

A neuron of a network on inputs x in R^d is theta = (w, b) in R^(d+1); its
feature is sigma(theta . x~) with x~ = (x, 1). Omega is meshed:

* ``box``:    [-R, R]^(d+1), a square (d = 1) or cube (d = 2);
* ``ball``:   |theta| <= R, a disc or a ball (gmsh);
* ``circle``: the unit circle S^1, a curve in R^2 (d = 1);
* ``sphere``: the unit sphere S^2, a surface in R^3 (d = 2).

The circle and the sphere are manifold meshes (geometric dimension d + 1,
topological dimension d). They carry densities of *directions*, which is
enough only for positively homogeneous activations (DESIGN.md section 1):
``Space.homogeneous_only`` says so.

Meshes are first made as plain arrays (:class:`MeshArrays`) on rank 0, so
that the same arrays can be written with meshio (``.msh``, ``.xdmf``) or
distributed over the MPI ranks as a dolfinx mesh (:class:`Space`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

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
        """Write with meshio (``.msh`` gmsh 4.1 or ``.xdmf``), atomically."""
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
        tmp = os.path.join(os.path.dirname(path) or ".", "." + os.path.basename(path) + ".tmp" + ext)
        if ext == ".msh":
            meshio.write(tmp, m, file_format="gmsh", binary=False)
        else:
            meshio.xdmf.write(tmp, m, data_format="XML")
        os.replace(tmp, path)


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
    """[-R, R]^(d+1) split into n intervals per side: 2 n^2 triangles (d = 1) or 6 n^3 tetrahedra (d = 2)."""
    _check_input_dim(d)
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
    """|theta| <= R meshed by gmsh with element size h: a disc (d = 1) or ball (d = 2)."""
    _check_input_dim(d)
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
    finally:
        gmsh.finalize()
    points = coords.reshape(-1, 3)[:, : d + 1]
    index = np.zeros(int(tags.max()) + 1, dtype=np.int64)
    index[tags.astype(np.int64)] = np.arange(len(tags))
    cells = index[node_tags.astype(np.int64)].reshape(-1, d + 2)
    used = np.unique(cells)  # drop nodes that belong to no cell (e.g. the geometry's centre)
    renumber = np.full(len(points), -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    return MeshArrays(points[used], renumber[cells], "triangle" if d == 1 else "tetrahedron", 1, "ball")


def circle_arrays(n: int, degree: int = 2) -> MeshArrays:
    """The unit circle as n arcs; degree 2 puts each arc's midpoint on the circle."""
    phi = 2 * np.pi * np.arange(n) / n
    points = np.column_stack([np.cos(phi), np.sin(phi)])
    cells = np.column_stack([np.arange(n), (np.arange(n) + 1) % n])
    if degree == 2:
        mid = 2 * np.pi * (np.arange(n) + 0.5) / n
        points = np.vstack([points, np.column_stack([np.cos(mid), np.sin(mid)])])
        cells = np.column_stack([cells, n + np.arange(n)])
    return MeshArrays(points, cells.astype(np.int64), "interval", degree, "circle")


def sphere_arrays(refinements: int, degree: int = 2) -> MeshArrays:
    """The unit sphere: an icosahedron split ``refinements`` times (20 * 4^r triangles), nodes projected on S^2."""
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


def read_arrays(path: str | os.PathLike) -> MeshArrays:
    """Read a mesh with meshio; the highest-dimensional cells are kept.

    A planar mesh (all z = 0) of triangles is a 2-D parameter domain (d = 1);
    lines in the plane form a curve such as the circle; triangles in space
    form a surface such as the sphere; tetrahedra a 3-D domain (d = 2).
    """
    import contextlib
    import io

    import meshio

    path = os.fspath(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            m = meshio.read(path)
    except (Exception, SystemExit) as e:  # meshio raises many kinds, and sometimes exits
        raise ValueError(
            f"cannot read mesh file {path!r} ({type(e).__name__}: {e}); give a gmsh .msh or "
            "a meshio/dolfinx .xdmf file of lines, triangles or tetrahedra"
        ) from None
    blocks = [(b.type, b.data) for b in m.cells if b.type in _MESHIO_CELLS]
    if not blocks:
        raise ValueError(f"mesh file {path!r} has no lines, triangles or tetrahedra")
    tdim = max(_TDIM[_MESHIO_CELLS[t][0]] for t, _ in blocks)
    blocks = [(t, c) for t, c in blocks if _TDIM[_MESHIO_CELLS[t][0]] == tdim]
    if len({t for t, _ in blocks}) > 1:
        raise ValueError(f"mesh file {path!r} mixes cell types {sorted({t for t, _ in blocks})}")
    name = blocks[0][0]
    cell_type, degree = _MESHIO_CELLS[name]
    cells = np.vstack([c for _, c in blocks]).astype(np.int64)
    cells = cells[:, _vtk_perm(cell_type, cells.shape[1])]
    points = np.asarray(m.points, dtype=float)
    gdim = points.shape[1]
    while gdim > tdim and np.allclose(points[:, gdim - 1], 0.0):  # drop trailing zero coordinates
        gdim -= 1
    if gdim == tdim == 1:
        raise ValueError(f"mesh file {path!r} is an interval: parameter meshes need dimension d + 1 >= 2")
    if gdim - tdim > 1:
        raise ValueError(f"mesh file {path!r}: {cell_type} cells in {gdim}-D space are not a parameter domain")
    return MeshArrays(points[:, :gdim].copy(), cells, cell_type, degree, "file")


def _check_input_dim(d: int) -> None:
    if d not in (1, 2):
        raise ValueError(
            f"input dimension d = {d} needs a {d + 1}-D parameter mesh; flowfem meshes parameter "
            "spaces of dimension 2 or 3 only, so the inputs must have d = 1 or 2 (reduce the "
            "inputs' dimension, e.g. by projecting them, first)"
        )


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
    """Omega as a dolfinx mesh distributed over ``comm`` (built from arrays held on rank 0)."""

    def __init__(self, arrays: MeshArrays | None, comm: MPI.Comm = MPI.COMM_WORLD):
        meta = on_root(comm, lambda: (arrays.cell_type, arrays.degree, arrays.gdim,
                                         arrays.cells.shape[1], arrays.domain))
        cell_type, degree, gdim, nodes, domain = meta
        element = basix.ufl.element("Lagrange", cell_type, degree, shape=(gdim,))
        if comm.rank == 0:
            cells, points = arrays.cells, arrays.points
        else:
            cells, points = np.empty((0, nodes), np.int64), np.empty((0, gdim))
        self.mesh = dolfinx.mesh.create_mesh(comm, cells, ufl.Mesh(element), points)
        self.arrays = arrays if comm.rank == 0 else None  # kept on rank 0 for writing
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
    def box(cls, d: int = 1, n: int = 32, radius: float = 4.0, comm=MPI.COMM_WORLD) -> "Space":
        """[-radius, radius]^(d+1) with n cells per side."""
        _check_input_dim(d)
        _check_positive(n=n, radius=radius)
        return cls(box_arrays(d, n, radius) if comm.rank == 0 else None, comm)

    @classmethod
    def ball(cls, d: int = 1, h: float = 0.25, radius: float = 4.0, comm=MPI.COMM_WORLD) -> "Space":
        """The ball |theta| <= radius, element size h (gmsh)."""
        _check_input_dim(d)
        _check_positive(h=h, radius=radius)
        return cls(ball_arrays(d, h, radius) if comm.rank == 0 else None, comm)

    @classmethod
    def circle(cls, n: int = 64, degree: int = 2, comm=MPI.COMM_WORLD) -> "Space":
        """The unit circle S^1 (d = 1) in n arcs."""
        _check_positive(n=n)
        return cls(circle_arrays(n, degree) if comm.rank == 0 else None, comm)

    @classmethod
    def sphere(cls, refinements: int = 3, degree: int = 2, comm=MPI.COMM_WORLD) -> "Space":
        """The unit sphere S^2 (d = 2): 20 * 4^refinements curved triangles."""
        if refinements < 0:
            raise ValueError("sphere refinements must be >= 0")
        return cls(sphere_arrays(refinements, degree) if comm.rank == 0 else None, comm)

    @classmethod
    def read(cls, path: str | os.PathLike, comm=MPI.COMM_WORLD) -> "Space":
        """A mesh file (.msh, .xdmf) read with meshio on rank 0; errors reach every rank."""
        arrays = on_root(comm, lambda: read_arrays(path), bcast=False)
        return cls(arrays, comm)

    @classmethod
    def make(cls, domain: str, d: int = 1, size: float | None = None, radius: float = 4.0,
             comm=MPI.COMM_WORLD) -> "Space":
        """A named domain (box, ball, circle, sphere) or a mesh file; ``size`` is n, h or refinements."""
        if domain == "box":
            return cls.box(d, int(size or 32), radius, comm)
        if domain == "ball":
            return cls.ball(d, float(size or 0.25), radius, comm)
        if domain in ("circle", "sphere"):
            if d != (1 if domain == "circle" else 2):
                raise ValueError(
                    f"the {domain} parametrises inputs of dimension {1 if domain == 'circle' else 2}, "
                    f"but the data have d = {d}; use the {'sphere' if domain == 'circle' else 'circle'}, "
                    "a box or a ball"
                )
            if domain == "circle":
                return cls.circle(int(size or 64), comm=comm)
            return cls.sphere(int(3 if size is None else size), comm=comm)
        if os.path.splitext(domain)[1].lower() in (".msh", ".xdmf"):
            return cls.read(domain, comm)
        raise ValueError(f"unknown domain {domain!r}: choose box, ball, circle, sphere or a .msh/.xdmf file")


def _check_positive(**values) -> None:
    for name, v in values.items():
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"mesh parameter {name} = {v} must be positive")
