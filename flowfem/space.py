"""Parameter space Omega: where the neurons theta = (w, b) live.

A neuron of a network on inputs x in R^d is theta = (w, b) in R^(d+1); its
feature is sigma(theta . x~) with x~ = (x, 1). Omega is meshed:

* ``box``:    [-R, R]^(d+1), a square (d = 1) or cube (d = 2);
* ``ball``:   |theta| <= R, a disc or a ball (gmsh);
* ``circle``: the unit circle S^1, a curve in R^2 (d = 1);
* ``sphere``: the unit sphere S^2, a surface in R^3 (d = 2).

* ``s3``:     the unit sphere S^3 of R^4 (d = 3), meshed in one stereographic chart:
              a ball |z| <= Z of R^3 (gmsh), see "The chart of S^3" below.

The circle and the sphere are manifold meshes (geometric dimension d + 1,
topological dimension d). They, and ``s3``, carry densities of *directions*,
which is enough only for positively homogeneous activations (docs/theory.md
§10): ``Space.homogeneous_only`` says so.

Charts. Every Space has a :class:`Chart` theta(x) from its mesh coordinates x to
the neurons theta, with the conformal factor lambda(x) of the metric pulled back
to the mesh, g = lambda^2 dx^2. For the box, ball, circle, sphere and mesh files
it is the identity (theta = x, lambda = 1: the mesh lies in parameter space and
``dx`` is already the length, area or volume element there). The quadrature of
the data operator, the weighted Sobolev space and the measures use the chart and
nothing else, so no domain is a special case there:

    neurons      theta_q = theta(x_q)                 (Quadrature.theta, shape (points, d + 1))
    volume       d theta = lambda^n dx                (n the mesh's topological dimension)
    gradient     |grad_theta u|^2 = lambda^-2 |grad_x u|^2
    H^1_omega    integral (kappa lambda^(n-2) |grad_x u|^2 + lambda^n u^2) omega(theta(x)) dx.

The chart of S^3 (domain ``s3``). Stereographic projection from the south pole
s = (0, 0, 0, -1): the round metric in stereographic coordinates is
4 |dz|^2 / (1 + |z|^2)^2 (Lee, Introduction to Riemannian Manifolds, 2nd ed. 2018, ch. 3,
the round sphere in stereographic coordinates), so the chart is conformal with:

    vartheta(z) = (2 z, 1 - |z|^2) / (1 + |z|^2) in S^3,   z in R^3,
    lambda(z) = 2 / (1 + |z|^2),   z(vartheta) = (vartheta_1, vartheta_2, vartheta_3) / (1 + vartheta_4).

The chart misses only s, the neuron sigma(-1) (zero for relu on every input).
The point vartheta(z) has geodesic distance 2 arctan(1 / |z|) from s, so the
chart ball |z| <= Z leaves out the geodesic cap of angular radius
beta = 2 arctan(1 / Z) around s, of measure pi (2 beta - sin 2 beta)
(4 pi integral_0^beta sin^2 t dt; S^3 has 2 pi^2). A neuron vartheta(z) is zero on
every input |x| <= X (relu: |w| X + b <= 0) exactly when

    |z| >= Z_0(X) = X + sqrt(X^2 + 1),   the dead cap, of angular radius arctan(1 / X);

so for Z >= Z_0 truncating the chart leaves the data term exact for relu and moves
only the regulariser's boundary (the natural condition kappa omega lambda du/dnu = 0
on |z| = Z instead of a density continued over the cap). For leaky relu and z^k a
neuron of the cap is, on the data, a multiple of its antipode's (sigma(t) = s t or
t^k = (-1)^k (-t)^k for t = vartheta . x~ < 0), which the chart holds: the predictions
a density can make are the same, only their regulariser changes.
:meth:`Space.check_inputs` refuses inputs beyond the radius Z of a given chart. :func:`chart_radius`
chooses Z from the data with a margin: the mesh keeps a fraction ``margin`` of
the dead cap's angular radius (default 1/2), i.e. it leaves out the cap of
radius (1 - margin) arctan(1 / X):

    Z = cot((1 - margin) arctan(1 / X) / 2),   margin 1/2:  Z = Z_0 + sqrt(Z_0^2 + 1)

(X = 1: Z_0 = 2.41, Z = 5.03; X = 3: Z_0 = 6.16, Z = 12.4). The cap left out is then dead on
every input up to |x| <= cot((1 - margin) arctan(1 / X)), with margin 1/2 up to X + sqrt(X^2 + 1)
(about 2 X): predictions at new inputs that far out are exact too. The mesh is graded so that
its cells are about uniform on S^3: the element size at |z| = r is
h / lambda(r) = h (1 + r^2) / 2 (h the size on S^3, ``size`` of the domain), capped
at h Z so that the boundary sphere |z| = Z is resolved to the angle h as well
(a cap of radius beta ~ 2 / Z on S^3 is then cut into cells of size ~ h beta).
About :data:`S3_CELLS` / h^3 tetrahedra; h Z is limited to :data:`S3_MAX_BOUNDARY_SIZE` (gmsh
crashed beyond it) and a mesh whose cells do not cover the truncated S^3 is refused.

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
import weakref
from dataclasses import dataclass

import numpy as np

from flowfem import memory
from flowfem.arguments import integer, named, number, positive, renamed, unknown
from flowfem.files import check_readable, replacing
from flowfem.mpi import on_root  # first: loads MPI before dolfinx

import basix.ufl  # noqa: E402
import dolfinx.mesh  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402

DOMAINS = ("box", "ball", "circle", "sphere", "s3")

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
DEFAULT_SIZES = {"box": 32, "ball": 0.25, "circle": 64, "sphere": 3, "s3": 0.25}  # n, h, arcs, refinements, h on S^3
# Peak memory per cell of making a mesh and building the dolfinx mesh from it on one rank, measured
# (peak RSS over 1e5..1e6 cells): box 414 (tetrahedra) and 434 (triangles), circle 455, sphere 696
# (curved triangles), ball 1005 (gmsh tetrahedra, gmsh's own data included). Writing with meshio
# (flowfem mesh) peaked lower: 140..450.
MESH_BYTES_PER_CELL = {"box": 450, "circle": 460, "sphere": 700, "ball": 1000, "s3": 1000}
# cells of gmsh's ball for element size h: about c (R / h)^(d+1), c measured for h = R/100..R/2
BALL_CELLS = {1: 7.26, 2: 19.2}
# cells of the s3 chart for the size h on S^3: about S3_CELLS / h^3, measured 110..140 for h = 0.6..0.2, Z = 5..12
S3_CELLS = 140.0
S3_MAX_BOUNDARY_SIZE = 15.0  # h Z: gmsh segfaulted at (h, Z) = (0.4, 60), (0.3, 100), (0.25, 150), (0.5, 34)
S3_MEASURE_TOLERANCE = 0.05  # relative: midpoint-rule measure of good meshes was within 2.5% for h <= 0.4
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


# -- charts: mesh coordinates -> neurons ------------------------------------------------


class Chart:
    """The identity chart theta(x) = x, lambda = 1: the mesh lies in parameter space (box, ball,
    circle, sphere, mesh files). See the module docstring for what a chart provides.

    NumPy methods take points as rows, x of shape (m, gdim); the ``ufl_`` methods take the
    mesh's ``ufl.SpatialCoordinate`` and return UFL expressions (or the number 1).
    """

    name = "identity"
    truncated = False  # True: the mesh covers the chart's manifold only in part (s3 leaves out the cap |z| > Z)

    def neuron_dim(self, gdim: int) -> int:
        """The dimension d + 1 of the neurons theta on a mesh of geometric dimension gdim."""
        return gdim

    def point(self, x: np.ndarray) -> np.ndarray:
        """theta(x): (m, gdim) -> (m, d + 1)."""
        return x

    def conformal(self, x: np.ndarray) -> np.ndarray:
        """lambda(x), shape (m,)."""
        return np.ones(len(x))

    def inverse(self, theta: np.ndarray) -> np.ndarray:
        """x(theta): the mesh coordinates of neurons (m, d + 1) -> (m, gdim)."""
        return theta

    def ufl_point(self, x):
        return x

    def ufl_volume(self, x, tdim: int):
        """lambda^tdim: d theta = lambda^tdim dx."""
        return 1.0

    def ufl_gradient(self, x, tdim: int):
        """lambda^(tdim - 2): |grad_theta u|^2 d theta = lambda^(tdim - 2) |grad_x u|^2 dx."""
        return 1.0


class StereographicChart(Chart):
    """S^n in R^(n+1) in stereographic coordinates z in R^n from the south pole (0, ..., 0, -1):

        vartheta(z) = (2 z, 1 - |z|^2) / (1 + |z|^2),   lambda(z) = 2 / (1 + |z|^2),
        z(vartheta) = vartheta_(1..n) / (1 + vartheta_(n+1))   (inf at the south pole).

    Conformal: the round metric is lambda^2 |dz|^2 (Lee, Introduction to Riemannian
    Manifolds, 2nd ed., ch. 3), so d vartheta = lambda^n dz and |grad_S u| = |grad_z u| / lambda.
    """

    name = "stereographic"
    truncated = True

    def neuron_dim(self, gdim: int) -> int:
        return gdim + 1

    def point(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        r2 = np.sum(z * z, axis=1, keepdims=True)
        return np.hstack([2 * z, 1 - r2]) / (1 + r2)

    def conformal(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        return 2.0 / (1.0 + np.sum(z * z, axis=1))

    def inverse(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = theta[:, :-1] / (1.0 + theta[:, -1:])
        return np.where(np.isfinite(z), z, np.inf)

    def ufl_point(self, z):
        r2 = ufl.dot(z, z)
        n = z.ufl_shape[0]
        return ufl.as_vector([2 * z[i] / (1 + r2) for i in range(n)] + [(1 - r2) / (1 + r2)])

    def ufl_volume(self, z, tdim: int):
        return (2 / (1 + ufl.dot(z, z))) ** tdim

    def ufl_gradient(self, z, tdim: int):
        return (2 / (1 + ufl.dot(z, z))) ** (tdim - 2)


IDENTITY = Chart()
STEREOGRAPHIC = StereographicChart()
_CHART_OF_DOMAIN = {"s3": STEREOGRAPHIC}
_CHARTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # dolfinx mesh -> its Space's chart


def chart_of(mesh) -> Chart:
    """The chart of a dolfinx mesh made by a :class:`Space` (the identity for any other mesh): lets
    code that holds only a Function (readout, measures) map its mesh points to neurons."""
    return _CHARTS.get(mesh, IDENTITY)


def dead_radius(X: float) -> float:
    """Z_0(X) = X + sqrt(X^2 + 1): every neuron vartheta(z) with |z| >= Z_0 has relu(vartheta . x~) = 0
    for all |x| <= X (|w| X + b <= 0 with |w| = 2 |z| / (1 + |z|^2), b = (1 - |z|^2) / (1 + |z|^2))."""
    X = float(X)
    return X + np.hypot(X, 1.0)


def chart_radius(X: float, margin: float = 0.5) -> float:
    """The s3 chart radius Z for inputs |x| <= X: the ball |z| <= Z keeps the fraction ``margin`` of the
    dead cap's angular radius arctan(1 / X) (module docstring),

        Z = cot((1 - margin) arctan(1 / X) / 2) >= Z_0(X),   margin 0: Z_0;   1/2: Z_0 + sqrt(Z_0^2 + 1).

    Raises ValueError unless X >= 0 is finite and 0 <= margin < 1 (margin 1 would keep the whole
    cap: the chart cannot reach the south pole).
    """
    X = number("the inputs' largest norm X", X, ">= 0")
    margin = number("the chart margin", margin, "in [0, 1)")
    if not (np.isfinite(X) and X >= 0):
        raise ValueError(f"the inputs' largest norm X = {X} must be finite and >= 0")
    if not (0 <= margin < 1):
        raise ValueError(f"the s3 chart margin {margin:g} must be in [0, 1): the fraction of the dead cap kept")
    beta = (1.0 - margin) * np.arctan2(1.0, X)  # the angular radius of the cap left out
    return float(1.0 / np.tan(beta / 2))


# -- generators (plain NumPy / gmsh; called on one rank) ----------------------------


def box_arrays(d: int, n: int, radius: float) -> MeshArrays:
    """[-R, R]^(d+1) split into n intervals per side: 2 n^2 triangles (d = 1) or 6 n^3 tetrahedra (d = 2).

    Raises ValueError unless d is 1 or 2, n a positive integer and R finite and positive.
    """
    d = _check_input_dim(d)
    n = _check_count("n", n, 1, "cells per side")
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


def s3_arrays(h: float, radius: float) -> MeshArrays:
    """The stereographic chart of S^3 truncated to the ball |z| <= Z = ``radius`` (gmsh tetrahedra), graded
    to cells of about size h on S^3: element size h (1 + |z|^2) / 2 = h / lambda(z), capped at h Z; the
    cells conform to the spheres |z| = Z / 2^k >= 2 (for gmsh's sake: see the comment inside).

    About :data:`S3_CELLS` / h^3 cells. Raises ValueError unless h and Z are finite and positive, if the
    mesh would not fit in memory, and if gmsh fails, makes no cells, or far fewer than h asks for.
    """
    _check_positive(h=h, radius=radius)
    h, radius = float(h), float(radius)
    expected = S3_CELLS / h**3 if h > 1e-100 else np.inf
    what = f"the s3 chart of radius Z = {radius:g} with size h = {h:g} on S^3"
    if h * radius > S3_MAX_BOUNDARY_SIZE:
        raise ValueError(f"{what} has boundary cells of size h Z = {h * radius:.3g} in z, where gmsh fails (it crashed "
                         f"beyond {S3_MAX_BOUNDARY_SIZE:g}): use h <= {S3_MAX_BOUNDARY_SIZE / radius:.3g}, or a "
                         "smaller Z (standardised inputs)")
    _require_memory("s3", expected, what, "use a larger size h")
    import gmsh

    gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("s3")
        # beyond Z = 8 the ball is cut by the spheres |z| = Z / 2^k >= 2 into shells: gmsh's 3-D Delaunay
        # refines by the sizes at vertices, and from a boundary of size h Z alone it left the interior
        # unrefined (Z = 34, h = 0.3: 833 cells of S^3 measure 0.72 instead of 5100 and 19.7); the inner
        # spheres carry vertices of their own size, inside. Below Z = 8 no shells were needed, and on
        # coarse meshes (h >= 0.5) they spoiled it
        radii = [radius]
        while radius > 8 and radii[-1] / 2 >= 2:
            radii.append(radii[-1] / 2)
        balls = [(3, gmsh.model.occ.addSphere(0, 0, 0, r)) for r in radii]
        if len(balls) > 1:
            gmsh.model.occ.fragment(balls[:1], balls[1:])
        gmsh.model.occ.synchronize()
        field = gmsh.model.mesh.field.add("MathEval")
        gmsh.model.mesh.field.setString(field, "F", f"{h!r} * Min((1 + x*x + y*y + z*z) / 2, {radius!r})")
        gmsh.model.mesh.field.setAsBackgroundMesh(field)
        for option in ("MeshSizeExtendFromBoundary", "MeshSizeFromPoints", "MeshSizeFromCurvature"):
            gmsh.option.setNumber(f"Mesh.{option}", 0)  # the field alone sets the size
        gmsh.model.mesh.generate(3)
        tags, coords, _ = gmsh.model.mesh.getNodes()
        _, node_tags = gmsh.model.mesh.getElementsByType(4)
    except Exception as e:  # gmsh raises Exception with its (or OpenCASCADE's) last error
        raise ValueError(f"gmsh could not mesh {what} ({' '.join(str(e).split())}); choose h nearer 0.3 and "
                         "Z nearer 5") from None
    finally:
        gmsh.finalize()
    made = len(node_tags) // 4
    if made == 0 or (expected > 1000 and made < expected / 4):
        raise ValueError(f"gmsh made {made} cells for {what}, where about {expected:.2g} were expected; "
                         "use a smaller h, or a radius Z nearer 5")
    points = coords.reshape(-1, 3)
    index = np.zeros(int(tags.max()) + 1, dtype=np.int64)
    index[tags.astype(np.int64)] = np.arange(len(tags))
    cells = index[node_tags.astype(np.int64)].reshape(-1, 4)
    # gmsh can leave parts of the volume coarse without an error (h >= 0.5): the measure of S^3 the cells
    # cover, by the midpoint rule, must be that of the truncated chart
    v = points[cells]
    z = v.mean(axis=1)
    covered = np.sum(np.abs(np.linalg.det(v[:, 1:] - v[:, :1])) / 6 * STEREOGRAPHIC.conformal(z) ** 3)
    beta = 2 * np.arctan(1 / radius)
    exact = 2 * np.pi**2 - np.pi * (2 * beta - np.sin(2 * beta))
    if abs(covered - exact) > S3_MEASURE_TOLERANCE * exact:
        raise ValueError(f"gmsh meshed {what} badly: its cells cover {covered:.4g} of S^3 instead of {exact:.4g}; "
                         "use a smaller h (0.4 or less)")
    used = np.unique(cells)  # drop nodes that belong to no cell
    renumber = np.full(len(points), -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    return MeshArrays(points[used], renumber[cells], "tetrahedron", 1, "s3")


def circle_arrays(n: int, degree: int = 2) -> MeshArrays:
    """The unit circle as n arcs; degree 2 puts each arc's midpoint on the circle.

    Raises ValueError unless n >= 3 is an integer (two arcs would join the same two vertices,
    which dolfinx cannot tell apart) and degree is 1 or 2.
    """
    n = _check_count("n", n, 3, "the circle's arcs; two arcs would join the same two vertices")
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
    refinements = _check_count("refinements", refinements, 0, "the sphere's refinements of the icosahedron")
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
    """The arrays of a named domain: ``size`` is n (box), h (ball), arcs (circle), refinements (sphere) or
    h on S^3 (s3, whose ``radius`` is the chart radius Z: :func:`chart_radius`).

    ``size=None`` means :data:`DEFAULT_SIZES`; any other value, 0 included, is checked by the
    generator. Raises ValueError for another domain, or the circle (sphere, s3) with d != 1 (2, 3).
    """
    if domain not in DEFAULT_SIZES:
        raise ValueError(unknown("domain", domain, tuple(DEFAULT_SIZES), "or a .msh/.xdmf mesh file"))
    size = DEFAULT_SIZES[domain] if size is None else size
    with renamed(n="size", h="size", refinements="size"):  # a message names the argument its caller gave
        return _named_arrays(domain, d, size, radius, geometry_degree)


def _named_arrays(domain: str, d: int, size, radius, geometry_degree: int) -> MeshArrays:
    if domain == "box":
        return box_arrays(d, size, radius)
    if domain == "ball":
        return ball_arrays(d, size, radius)
    if domain == "s3":
        if integer("the input dimension d", d, "(3 for s3)") != 3:
            raise ValueError(f"the s3 parametrises inputs of dimension 3, but the data have d = {d}; use the "
                             f"{'circle' if d == 1 else 'sphere'}, a box or a ball")
        return s3_arrays(size, radius)
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
    """d for a parameter mesh of dimension d + 1 (box, ball, mesh files): ValueError unless d is 1 or 2.

    dolfinx meshes at most 3 dimensions: d = 3 fits only as directions (the s3 chart, homogeneous
    activations); d >= 4 would need the sphere S^d, a d-dimensional mesh, at least 4-D.
    """
    d = integer("the input dimension d", d, "(1 or 2; 3 with --domain s3)")
    if d < 1:  # (the advice below, a (d + 1)-D mesh, would read "a 0-D parameter mesh")
        raise ValueError(f"input dimension d = {d}: the data have at least one input column; give d = 1 or 2 "
                         "(3 with the domain s3)")
    if d == 3:
        raise ValueError(
            "input dimension d = 3 needs a 4-D parameter mesh; flowfem meshes parameter spaces of dimension "
            "2 or 3 only (dolfinx meshes at most 3 dimensions), so a box, ball or mesh file takes d = 1 or 2: "
            "for relu, leaky_relu or monomial:k use the domain s3 (the sphere S^3 of directions in a 3-D "
            "chart); for other activations reduce the inputs to d <= 2 (e.g. by projecting them) first")
    if d not in (1, 2):
        raise ValueError(
            f"input dimension d = {d} needs a {d + 1}-D parameter mesh, or for homogeneous activations the "
            f"sphere S^{d} of directions, a {d}-D mesh; dolfinx meshes at most 3 dimensions, so flowfem takes "
            "d <= 3 (d = 3 on the domain s3): reduce the inputs' dimension, e.g. by projecting them, first")
    return d


def _check_count(name: str, v, minimum: int, what: str) -> int:
    """v as an int; ValueError "NAME must be a whole number >= MINIMUM (WHAT), got V" unless it is one (0
    never means a default; NAME is the option that gave it on the command line, see :func:`named_arrays`).
    A float such as 8.0 is taken: a size is a number of the command line's --size."""
    requirement = f"a whole number >= {minimum} ({what})"
    v = number(name, v, f">= {minimum} ({what})")  # "NAME must be a number >= ..." for a value that is none
    if not (np.isfinite(v) and v == int(v) and v >= minimum):
        raise ValueError(f"{named(name)} must be {requirement}, got {v:g}")
    return int(v)


def _check_geometry_degree(degree) -> None:
    if integer("geometry degree", degree, "1 or 2") not in (1, 2):
        raise ValueError(f"geometry degree {degree}: 1 (flat cells) or 2 (curved cells)")


def check_parameter_dim(d: int, gdim: int, what: str) -> None:
    """Raise ValueError unless inputs of dimension d fit a parameter space of neurons of dimension
    gdim = d + 1 (:attr:`Space.gdim`: the mesh's dimension, or 4 on the s3 chart).

    ``what`` names the owner of the inputs ("the data", "the network") in the message; d >= 4 is
    refused with the reason (:func:`_check_input_dim`), d = 3 elsewhere than on s3 with the fix.
    """
    if d + 1 == gdim:
        return
    if d >= 4:
        raise ValueError(
            f"{what} has d = {d} inputs: its neurons live in R^{d + 1}, their directions on S^{d}, a {d}-D "
            "manifold, and dolfinx meshes at most 3 dimensions, so flowfem takes d <= 3 (d = 3 on the domain "
            "s3); reduce the inputs' dimension, e.g. by projecting them, first")
    fix = ("use the domain s3 (directions on S^3, homogeneous activations)" if d == 3 else
           f"use a mesh of dimension {d + 1}")
    raise ValueError(
        f"{what} has d = {d} inputs, so its neurons theta = (w, b) live in dimension {d + 1}, but the "
        f"parameter space has dimension {gdim} (inputs of dimension {gdim - 1}): {fix}")


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
        self.chart = _CHART_OF_DOMAIN.get(domain, IDENTITY)  # mesh coordinates -> neurons (module docstring)
        _CHARTS[self.mesh] = self.chart
        # once, on every rank: check_inputs runs on a rank's own rows (a sharded fit), where a rank without
        # rows, or failing before it, would leave the others waiting in this reduction
        self._outer_radius = comm.allreduce(float(np.linalg.norm(self.mesh.geometry.x, axis=1).max(initial=0.0)),
                                            op=MPI.MAX)

    @property
    def gdim(self) -> int:
        """Dimension of the parameters theta = (w, b): d + 1 (that of the mesh, 4 on the s3 chart)."""
        return self.chart.neuron_dim(self.mesh.geometry.dim)

    @property
    def input_dim(self) -> int:
        """d: the input dimension of the networks this space parametrises."""
        return self.gdim - 1

    @property
    def homogeneous_only(self) -> bool:
        """True where the mesh has fewer dimensions than the neurons (circle, sphere, s3): directions
        only, for homogeneous sigma."""
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
    def s3(cls, h: float = 0.25, radius: float | None = None, x=None, margin: float = 0.5,
           comm=MPI.COMM_WORLD) -> "Space":
        """The sphere S^3 of neuron directions (d = 3) in the stereographic chart |z| <= Z, cells of about
        size h on S^3 (:func:`s3_arrays`). Z = ``radius``, or from the inputs x (n, 3) by
        :func:`chart_radius` with X = max |x_j| and ``margin``; ValueError if both or neither are given."""
        if (radius is None) == (x is None):
            raise ValueError("Space.s3 needs the chart radius Z (radius=...) or the inputs to choose it from "
                             "(x=...), not both")
        if radius is None:
            x = np.asarray(x, dtype=float)
            if x.ndim != 2 or x.shape[1] != 3 or not np.isfinite(x).all():
                raise ValueError(f"Space.s3 chooses Z from finite inputs x of shape (n, 3), not {x.shape}")
            radius = chart_radius(float(np.linalg.norm(x, axis=1).max(initial=0.0)), margin)
        return cls._on_root(lambda: s3_arrays(h, radius), comm)

    @property
    def outer_radius(self) -> float:
        """The largest |x| over the mesh's nodes: Z on the s3 chart (the polyhedron's vertices lie on |z| = Z)."""
        return self._outer_radius

    def check_inputs(self, x: np.ndarray, what: str = "the data") -> None:
        """On the s3 chart, ValueError unless every neuron the truncation leaves out is zero (relu) or
        the antipode's multiple (leaky relu, z^k) on the inputs x (n, 3): |z| <= Z must reach
        Z_0(max |x_j|) (:func:`dead_radius`). Other domains: nothing."""
        if self.chart is not STEREOGRAPHIC or len(x) == 0:
            return
        X = float(np.linalg.norm(x, axis=1).max())
        Z = self.outer_radius
        if Z < dead_radius(X) * (1 - 1e-9):
            raise ValueError(
                f"{what} reach |x| = {X:.4g}, where neurons left out of the s3 chart |z| <= {Z:.4g} are not zero "
                f"(that needs Z >= X + sqrt(X^2 + 1) = {dead_radius(X):.4g}): use a radius of at least that, or "
                f"{chart_radius(X):.4g} with the margin of flowfem.space.chart_radius, or standardise the inputs")

    @classmethod
    def read(cls, path: str | os.PathLike, comm=MPI.COMM_WORLD) -> "Space":
        """A mesh file (.msh, .xdmf) read with meshio on rank 0; errors reach every rank."""
        return cls._on_root(lambda: read_arrays(path), comm)

    @classmethod
    def make(cls, domain: str, d: int = 1, size: float | None = None, radius: float = 4.0,
             comm=MPI.COMM_WORLD) -> "Space":
        """A named domain (:func:`named_arrays`: ``size`` is n, h, arcs, refinements or h on S^3; None for
        the default; ``radius`` is Z for s3) or a mesh file (.msh, .xdmf)."""
        if not isinstance(domain, (str, os.PathLike)):
            raise ValueError(f"domain must be box, ball, circle, sphere, s3 or a .msh/.xdmf file name, got {domain!r} "
                             f"({type(domain).__name__})")
        domain = os.fspath(domain)
        if os.path.splitext(domain)[1].lower() in (".msh", ".xdmf"):
            return cls.read(domain, comm)
        return cls._on_root(lambda: named_arrays(domain, d, size, radius), comm)


def _check_positive(**values) -> None:
    for name, v in values.items():
        positive(name, v)
