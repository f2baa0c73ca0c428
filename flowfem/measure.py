"""Measures on the parameter mesh: mu = sum_i c_i delta_(theta_i), the neurons of a finite network.

A finite network f(x) = sum_i c_i sigma(theta_i . x~) is f_mu(x) = integral sigma(theta . x~) d mu
for the measure mu = sum_i c_i delta_(theta_i): the same formula as f_u for a density u d theta.
Two projections of mu onto finite elements on a parameter mesh:

* :func:`project_network`: the L^2 projection onto the problem's space V_h (any Lagrange degree),
  exact for f whenever sigma(. x~) lies in V_h; the initial density ``network:PATH`` of the flow.
  Neurons outside the domain are refused.
* :func:`density`: the mass-lumped L^2 projection onto P1, optionally smoothed by a kernel of stated
  width, with a policy for neurons outside the domain and a stated error bound
  (:class:`ParticleDensity`); particle solvers' networks against flowfem's density
  (:mod:`flowfem.compare`).

Both place the point masses with one :class:`PointLocator` (owner rank and cell of each point,
replicated on every rank) and :func:`pull_back` (reference coordinates in that cell). On the
circle, sphere and s3 only directions exist: a neuron theta = r vartheta of a positively homogeneous
sigma of degree p counts as r^p c at vartheta (:func:`to_directions`), which leaves f unchanged.

Points are located in the mesh's coordinates x = chart^-1(theta) and integrals over Omega are
d theta = lambda^n dx (the Space's chart, :mod:`flowfem.space`: the identity but on s3, where
x = z = vartheta_(1..3) / (1 + vartheta_4) and lambda^3 = (2 / (1 + |z|^2))^3). The s3 chart leaves out
the cap |z| > Z around the south pole: a neuron there lies outside the domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import basix.ufl  # noqa: E402
import dolfinx.fem  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402
import dolfinx.geometry  # noqa: E402
import dolfinx.la  # noqa: E402
import dolfinx.la.petsc  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

from flowfem.activations import Activation, activation as _activation  # noqa: E402
from flowfem.network import Network  # noqa: E402
from flowfem.particles import ParticleResult  # noqa: E402
from flowfem.space import chart_of, check_parameter_dim  # noqa: E402

PLACEMENTS = ("rescale", "clip", "drop")
_MARGIN = 3.0  # rescaled particles end this many cell diameters h inside the boundary (along their ray)
DENSITY_METHODS = ("lumped", "kernel")


# -- locating point masses on the mesh ----------------------------------------------------------


def _geometry(mesh, cells):
    """Node coordinates (len(cells), nodes, gdim) of the given local cells."""
    gdim = mesh.geometry.dim
    return mesh.geometry.x[:, :gdim][mesh.geometry.dofmaps[0][cells]]


def pull_back(mesh, cells, points, iterations=30):
    """Reference coordinates X (npts, tdim) with x_cell(X) closest to the points (Gauss-Newton).

    Vectorised over the points, each in its own cell; exact after one step on affine cells,
    least squares on manifold cells (circle, sphere).
    """
    cel = mesh.ufl_domain().ufl_coordinate_element().basix_element
    tdim = mesh.topology.dim
    xg = _geometry(mesh, cells)
    X = np.full((len(cells), tdim), 1.0 / (tdim + 1))
    for _ in range(iterations):
        tab = cel.tabulate(1, X)[..., 0]  # (1 + tdim, npts, nodes)
        x = np.einsum("pk,pkg->pg", tab[0], xg)
        J = np.einsum("dpk,pkg->pgd", tab[1:], xg)
        r = points - x
        step = np.linalg.solve(np.einsum("pgd,pge->pde", J, J), np.einsum("pgd,pg->pd", J, r)[..., None])[..., 0]
        X = X + step
        if np.abs(step).max(initial=0.0) < 1e-12:
            break
    return X


def clamp(X):
    """Reference coordinates moved into the reference simplex (barycentrics clipped, renormalised)."""
    lam = np.column_stack([1.0 - X.sum(axis=1), X])
    lam = np.clip(lam, 0.0, None)
    lam /= lam.sum(axis=1, keepdims=True)
    return lam[:, 1:]


class PointLocator:
    """Which rank and which of its owned cells holds (or is closest to) each replicated point."""

    def __init__(self, mesh):
        self.mesh = mesh
        tdim = mesh.topology.dim
        self.cells = np.arange(mesh.topology.index_map(tdim).size_local, dtype=np.int32)
        self.tree = dolfinx.geometry.bb_tree(mesh, tdim, entities=self.cells)
        self.mid = dolfinx.geometry.create_midpoint_tree(mesh, tdim, self.cells) if len(self.cells) else None
        self.comm = mesh.comm

    def __call__(self, points):
        """(owner rank (npts,), local cell on the owner or -1 elsewhere, distance^2 to the mesh)."""
        pts = np.zeros((len(points), 3))
        pts[:, : points.shape[1]] = points
        tdim = self.mesh.topology.dim
        if len(self.cells) and len(points):
            cell = dolfinx.geometry.compute_closest_entity(self.tree, self.mid, self.mesh, pts).astype(np.int32)
            d2 = dolfinx.geometry.squared_distance(self.mesh, tdim, cell, pts)
        else:
            cell, d2 = np.full(len(points), -1, np.int32), np.full(len(points), np.inf)
        all_d2 = np.array(self.comm.allgather(d2)).reshape(self.comm.size, len(points))
        owner = np.argmin(all_d2, axis=0)  # ties: the lowest rank
        mine = owner == self.comm.rank
        return owner, np.where(mine, cell, -1), all_d2.min(axis=0)


def cell_size(mesh) -> float:
    """h: the largest cell diameter over all ranks."""
    tdim = mesh.topology.dim
    n = mesh.topology.index_map(tdim).size_local
    h = mesh.h(tdim, np.arange(n, dtype=np.int32)) if n else np.zeros(1)
    return mesh.comm.allreduce(float(h.max(initial=0.0)), op=MPI.MAX)


def neuron_cell_size(mesh) -> float:
    """The largest cell diameter in neuron coordinates theta = theta(x) over all ranks: a bound on
    |theta(x) - theta(x')| for x, x' in one cell. The chart is conformal (|d theta| = lambda |dx|), so
    the chord is at most the length of the image of the segment, sup_K lambda |x - x'|; lambda of the
    charts of :mod:`flowfem.space` depends on |x| alone and does not increase with it (1, or
    2 / (1 + |z|^2) on s3), so sup_K lambda <= lambda at a radius r_K <= min_K |x|: r_K = max(0,
    min_v e . x_v), e the unit vector towards the cell's centroid and x_v its vertices (|x| >= e . x
    >= min_v e . x_v on the convex cell). The bound is sup_K lambda h_K, h_K the cell's diameter.
    The identity chart gives :func:`cell_size`. Collective.
    """
    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    n = mesh.topology.index_map(tdim).size_local
    if n == 0:
        return mesh.comm.allreduce(0.0, op=MPI.MAX)
    cells = np.arange(n, dtype=np.int32)
    hK = mesh.h(tdim, cells)
    vertices = _geometry(mesh, cells)[:, : tdim + 1]  # the first nodes are the vertices (basix order)
    centre = vertices.mean(axis=1)
    norm = np.linalg.norm(centre, axis=1, keepdims=True)
    e = np.divide(centre, norm, out=np.zeros_like(centre), where=norm > 0)
    r = np.maximum(np.einsum("cvg,cg->cv", vertices, e).min(axis=1), 0.0)
    nearest = np.zeros((n, gdim))
    nearest[:, 0] = r
    return mesh.comm.allreduce(float(np.max(chart_of(mesh).conformal(nearest) * hK)), op=MPI.MAX)


def to_directions(theta: np.ndarray, c: np.ndarray, degree: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theta_i / |theta_i|, c_i |theta_i|^p, moved): the same network on the unit sphere for a positively
    homogeneous sigma of degree p (sigma(r z) = r^p sigma(z)). theta_i = 0 contributes nothing: c_i = 0."""
    r = np.linalg.norm(theta, axis=1)
    zero = r == 0
    r_safe = np.where(zero, 1.0, r)
    out = np.where(zero[:, None], np.eye(theta.shape[1])[-1], theta / r_safe[:, None])
    return out, np.where(zero, 0.0, c * r_safe ** degree), r != 1.0


# -- the L2 projection of a network onto V_h ------------------------------------------------------


def project_network(H, network: Network, activation=None) -> dolfinx.fem.Function:
    """The L^2 projection onto the mesh of the measure mu = sum_i a_i delta_{theta_i} of a finite network:

        integral_Omega u_h v d theta = sum_i a_i v(theta_i)   for all v in V_h,

    V_h the space of ``H`` (a :class:`flowfem.sobolev.WeightedH1`), so f_{u_h}(x) = sum_i a_i
    (Pi sigma_x)(theta_i), Pi the L^2 projection of sigma_x = sigma(. x~): exact whenever sigma_x lies
    in V_h (e.g. sigma(z) = z with P1 elements). On the circle, sphere and s3 (homogeneous sigma of
    degree p) a neuron theta = r vartheta counts as r^p a at its direction vartheta; on s3 the mass
    matrix is integral u v lambda^3 dz. ValueError for a neuron outside a box or ball domain (on the
    circle, sphere and s3: more than h / 4 from the mesh, h the largest cell diameter in mesh
    coordinates, e.g. in the cap s3 leaves out), or an activation other than the problem's. Collective.
    """
    mesh, V, comm = H.space.mesh, H.V, H.space.comm
    sigma = _activation(activation if activation is not None else network.activation)
    if network.activation.name != sigma.name:
        raise ValueError(f"the network uses {network.activation.name} but the problem {sigma.name}; "
                         "project a network with the problem's activation")
    theta = np.column_stack([network.W, network.b])
    check_parameter_dim(network.input_dim, H.space.gdim, "the network")
    a = network.a.astype(float).copy()
    manifold = H.space.homogeneous_only
    if manifold:
        theta, a, _ = to_directions(theta, a, sigma.degree)
    chart = H.space.chart
    points = chart.inverse(theta)  # mesh coordinates (inf at a point the chart misses)
    finite = np.isfinite(points).all(axis=1)
    owner, cell, d2 = PointLocator(mesh)(np.where(finite[:, None], points, 0.0))
    dist = np.where(finite, np.sqrt(d2), np.inf)
    tol = 0.25 * cell_size(mesh) if manifold else 1e-8 * max(1.0, float(np.abs(theta).max(initial=1.0)))
    far = np.flatnonzero(dist > tol)
    if len(far):
        i = int(far[0])
        raise ValueError(
            f"{len(far)} of the network's {len(theta)} neurons lie outside the parameter domain (first: "
            f"neuron {i} at theta = {np.round(theta[i], 4).tolist()}, {dist[i]:.3g} away); enlarge --radius "
            "or use a domain that contains them")
    mine = np.flatnonzero(cell >= 0)
    b = H.function("rhs")
    if len(mine):
        X = clamp(pull_back(mesh, cell[mine], points[mine]))
        phi = V.element.basix_element.tabulate(0, X)[0, :, :, 0]
        np.add.at(b.x.array, V.dofmap.list[cell[mine]], a[mine, None] * phi)
    b.x.scatter_reverse(dolfinx.la.InsertMode.add)
    # solve the unweighted mass system integral u v d theta = b (d theta = lambda^n dx)
    u_, v_ = ufl.TrialFunction(V), ufl.TestFunction(V)
    volume = chart.ufl_volume(ufl.SpatialCoordinate(mesh), mesh.topology.dim)
    M1 = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(volume * u_ * v_ * ufl.dx))
    M1.assemble()
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(M1)
    ksp.setType("cg")
    ksp.getPC().setType("jacobi")
    ksp.setTolerances(rtol=1e-14, atol=0.0, max_it=5000)
    u = H.function("u0")
    ksp.solve(b.x.petsc_vec, u.x.petsc_vec)
    u.x.scatter_forward()
    ksp.destroy()
    M1.destroy()
    return u


# -- the lumped (or smoothed) P1 density of particles ----------------------------------------------


def lipschitz(act: Activation) -> float:
    """A Lipschitz constant of sigma on R (inf for monomials of degree >= 2)."""
    if act.power > 1:
        return np.inf
    return 0.25 if act.name == "sigmoid" else 1.0


@dataclass
class ParticleDensity:
    """u_h: the particle measure mu = sum_i c_i delta_(theta_i) as a P1 density on a parameter mesh.

    ``function``  u_h, a dolfinx Function (P1 on the mesh, or interpolated into the space passed).
    ``theta``, ``c``  the measure as placed on the mesh (N, D) and (N,): directions on the circle
                  and sphere, moved particles at their new place, dropped ones with c_i = 0.
    ``moved``, ``dropped``  boolean masks (N,); ``shift`` (N,) = |theta_i(placed) - theta_i| in
                  the original (rescaled) coordinates, nonzero for clipped particles and by the
                  O(h^3) gap between the sphere/circle and its curved mesh.
    ``mass``      sum of the placed c_i = integral u_h d theta (mass consistency).
    ``dropped_mass``, ``dropped_variation``  sum c_i and sum |c_i| of the dropped particles.
    ``method``, ``width``  ``lumped`` (width 0) or ``kernel`` with standard deviation ``width``.
    ``h``         the largest cell diameter of the mesh in neuron coordinates (:func:`neuron_cell_size`:
                  the mesh's own on the identity chart; on s3 a bound on the cells' chords on S^3).
    """

    function: object
    theta: np.ndarray
    c: np.ndarray
    moved: np.ndarray
    dropped: np.ndarray
    shift: np.ndarray
    method: str
    width: float
    h: float
    outside: str
    activation: Activation
    directions: bool
    theta0: np.ndarray  # the particles as given (N, D)
    c0: np.ndarray  # their masses a_i as given (N,)

    @property
    def mass(self) -> float:
        return float(np.sum(self.c))

    @property
    def variation(self) -> float:
        """sum |c_i| over the placed particles: the total variation of the placed measure."""
        return float(np.sum(np.abs(self.c)))

    @property
    def dropped_mass(self) -> float:
        return float(np.sum(self.c0[self.dropped])) if self.dropped.any() else 0.0

    @property
    def dropped_variation(self) -> float:
        return float(np.sum(np.abs(self.c0[self.dropped]))) if self.dropped.any() else 0.0

    def network(self) -> Network:
        """The network of the placed measure, sum_i c_i sigma(theta_i . x~) (dropped ones left out)."""
        keep = ~self.dropped
        return Network(self.theta[keep, :-1], self.theta[keep, -1], self.c[keep], self.activation)

    def predict(self, x: np.ndarray, degree: int = 2, subdivisions: int = 2) -> np.ndarray:
        """f_(u_h)(x) = integral sigma(theta . x~) u_h d theta by a composite Gauss rule (no JIT)."""
        from flowfem.readout import quadrature_neurons

        return quadrature_neurons(self.function, self.activation, degree, subdivisions).network()(x)

    def bound(self, x: np.ndarray) -> np.ndarray:
        """The stated error bound on |f_(u_h)(x) - network(x)| at the rows of x.

        L |x~| (2 h + s) sum |c_i| over the placed particles (L the Lipschitz constant of sigma;
        2 h bounds how far, in theta, the lumped projection spreads a point mass, s = ``width`` is the
        kernel's standard deviation), plus L |x~| sum |c_i| shift_i for clipped particles, plus
        sum |c_i| |sigma(theta_i . x~)| of the dropped ones. The term in s is the continuum
        bound E|eps . x~| <= s |x~|; the rest is rigorous for exact integration of f_(u_h).
        """
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        xt = np.linalg.norm(np.hstack([x, np.ones((len(x), 1))]), axis=1)
        L = lipschitz(self.activation)
        out = L * xt * ((2 * self.h + self.width) * self.variation
                        + float(np.sum(np.abs(self.c) * self.shift)))
        if self.dropped.any():
            th = self.theta0[self.dropped]
            out = out + np.abs(self.activation(x @ th[:, :-1].T + th[:, -1])) @ np.abs(self.c0[self.dropped])
        return out


def density(source, target, *, method: str = "lumped", width: float | None = None,
            outside: str | None = None) -> ParticleDensity:
    """The particle measure mu = sum_i c_i delta_(theta_i) projected onto a parameter mesh.

    ``source``  a :class:`ParticleResult` or a :class:`Network` (c_i = its output weights a_i,
                which carry the 1/N of the mean-field scaling; theta_i = (w_i, b_i)).
    ``target``  a :class:`flowfem.space.Space`, or a dolfinx function space on its mesh (the
                result is then interpolated into it; P1 is contained in every Lagrange space).

    ``method``:

    * ``lumped``: the mass-lumped L2 projection onto P1, (u_h, v)_lumped = sum_i c_i v(theta_i)
      for all v, i.e. u_k = sum_i c_i phi_k(theta_i) / m_k with m_k = integral phi_k d theta
      (unweighted: f_u integrates against d theta; on s3 d theta = lambda^3 dz). It keeps the
      sign of mu, conserves mass, integral u_h d theta = sum c_i, and first moments, and spreads
      each point mass over the cells around it, no further than 2 h.
    * ``kernel``: then smoothed with the kernel of (1 - (s^2/2) Laplacian)^(-1) (natural
      boundary condition): (M_lumped + (s^2/2) K) u = b, K the stiffness of the Laplacian of
      Omega (on s3 that of S^3: integral lambda grad_z w . grad_z v dz). In free space the kernel has standard
      deviation s = ``width`` in every coordinate; the boundary reflects it, so mass is conserved.

    Placing the particles:

    * circle, sphere and s3: only directions exist; theta_i -> theta_i / |theta_i| with
      c_i -> c_i |theta_i|^p (sigma(r z) = r^p sigma(z)), which leaves the network unchanged;
      homogeneous activations only (as :mod:`flowfem.readout` does in reverse). On s3 a direction
      in the cap |z| > Z that the chart leaves out (more than h / 4 from the mesh in z) cannot
      be moved along its ray: ``rescale`` and ``drop`` drop it (for relu with Z >= Z_0 of the data
      it is zero on every input: exact there), ``clip`` moves it to the closest point of the mesh.
    * particles outside a box, ball or mesh file, by ``outside``: ``rescale`` (default for
      homogeneous sigma; exact) moves theta_i along its ray to t theta_i inside, c_i -> c_i / t^p
      (t: the boundary, found by bisection, then 3 h further in, at most half-way to the origin, so
      the point mass is not spread one-sidedly against the boundary; the origin must be in the
      domain, which must be star-shaped about it); ``clip`` moves it to the closest
      point of the mesh (changes the network; reported in ``shift``); ``drop`` (default for other
      sigma) leaves it out, reported in ``dropped``, ``dropped_mass``, ``dropped_variation``.

    Collective: every rank passes the same particles and gets the same numbers; each particle
    is added by the one rank that owns the cell it lies in.
    """
    if isinstance(source, ParticleResult):
        if source.network is None:
            raise ValueError(f"the particle run ended with status {source.status!r}: there is no network to project")
        net = source.network
    elif isinstance(source, Network):
        net = source
    else:
        raise TypeError(f"density needs a ParticleResult or a Network, not {type(source).__name__}")
    if method not in DENSITY_METHODS:
        raise ValueError(f"density method {method!r} is unknown: choose 'lumped' or 'kernel'")
    if method == "kernel":
        if width is None or not (np.isfinite(width) and width > 0):
            raise ValueError(f"the kernel density needs its width s > 0 (standard deviation), got {width!r}")
    elif width not in (None, 0, 0.0):
        raise ValueError(f"width = {width} is the kernel's; pass method='kernel' to smooth")
    width = float(width or 0.0)
    act = net.activation
    if outside is None:
        outside = "rescale" if act.homogeneous else "drop"
    if outside not in PLACEMENTS:
        raise ValueError(f"outside={outside!r} is unknown: choose {', '.join(PLACEMENTS)}")
    if outside == "rescale" and not act.homogeneous:
        raise ValueError(f"outside='rescale' moves neurons along their rays, exact only for positively "
                         f"homogeneous activations; {act.name} is not: use 'clip' or 'drop'")

    if isinstance(target, dolfinx.fem.FunctionSpace):
        mesh, V_out = target.mesh, target
    elif hasattr(target, "mesh") and hasattr(target, "comm"):
        mesh, V_out = target.mesh, None
    else:
        raise TypeError(f"density needs a flowfem Space or a dolfinx function space, not {type(target).__name__}")
    comm = mesh.comm
    chart = chart_of(mesh)
    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    theta0 = np.column_stack([net.W, net.b])
    c0 = net.a.copy()
    check_parameter_dim(net.input_dim, chart.neuron_dim(gdim), "the network")
    directions = tdim < chart.neuron_dim(gdim)
    theta, c = theta0.copy(), c0.copy()
    N = len(c)
    moved = np.zeros(N, dtype=bool)
    dropped = np.zeros(N, dtype=bool)
    if directions:
        act.require_homogeneous("s3" if chart.truncated else "circle" if tdim == 1 else "sphere")
        theta, c, moved = to_directions(theta, c, act.degree)

    locate = PointLocator(mesh)
    h = cell_size(mesh)
    x0 = mesh.geometry.x[:, :gdim]
    lo = x0.min(axis=0) if len(x0) else np.full(gdim, np.inf)
    hi = x0.max(axis=0) if len(x0) else np.full(gdim, -np.inf)
    comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    tol2 = (1e-9 * float(np.linalg.norm(hi - lo))) ** 2
    points = chart.inverse(theta)  # mesh coordinates: inf where the chart misses a point
    finite = np.isfinite(points).all(axis=1)
    owner, cell, d2 = locate(np.where(finite[:, None], points, 0.0))
    d2 = np.where(finite, d2, np.inf)
    if directions:  # all directions are on the circle and sphere; s3 leaves out a cap
        out = d2 > (0.25 * h) ** 2 if chart.truncated else np.zeros(N, dtype=bool)
    else:
        out = d2 > tol2
    if out.any() and directions:  # no ray to move along: drop, or clip onto the mesh where finite
        idx = np.flatnonzero(out)
        clip = np.isfinite(d2[idx]) if outside == "clip" else np.zeros(len(idx), dtype=bool)
        moved[idx[clip]] = True
        dropped[idx[~clip]] = True
        c[idx[~clip]] = 0.0
        points = np.where((finite & ~dropped)[:, None], points, 0.0)
        owner, cell, d2 = locate(points)
    elif out.any():
        idx = np.flatnonzero(out)
        if outside == "rescale":
            if locate(np.zeros((1, gdim)))[2][0] > tol2:
                raise ValueError("outside='rescale' moves neurons towards the origin, which is not in this "
                                 "parameter domain: use 'clip' or 'drop'")
            # bisection on the ray: t_in theta inside, t_out theta outside; t_out starts where the ray
            # leaves the ball holding every vertex, so that a neuron at |theta| = 1e65 is placed as exactly
            # as one just outside (from t_out = 1, 60 halvings ended at t_in = 0 and c / 0 = inf)
            r_max = comm.allreduce(float(np.linalg.norm(x0, axis=1).max(initial=0.0)), op=MPI.MAX)
            t_in = np.zeros(len(idx))
            t_out = np.minimum(1.0, r_max * (1 + 1e-9) / np.linalg.norm(theta[idx], axis=1))
            for _ in range(60):
                t = 0.5 * (t_in + t_out)
                inside = locate(t[:, None] * theta[idx])[2] <= tol2
                t_in, t_out = np.where(inside, t, t_in), np.where(inside, t_out, t)
            # then 3 h further in along the ray (no closer to the origin than half-way), so that
            # the cells a point mass is spread over stay off the boundary: exact all the same
            r_b = t_in * np.linalg.norm(theta[idx], axis=1)
            t_in = t_in * np.maximum(1.0 - _MARGIN * h / np.maximum(r_b, 1e-300), 0.5)
            theta[idx] *= t_in[:, None]
            c[idx] /= t_in ** act.degree
            moved[idx] = True
        elif outside == "clip":
            moved[idx] = True  # placed on the closest point of the closest cell below
        else:
            dropped[idx] = True
            c[idx] = 0.0
        points = chart.inverse(theta)
        owner, cell, d2 = locate(points)

    # reference coordinates on the owning rank, the placed point x(X), shared with every rank
    mine = np.flatnonzero((cell >= 0) & ~(dropped & directions))
    placed = np.zeros((N, gdim))
    X = np.zeros((len(mine), tdim))
    if len(mine):
        X = pull_back(mesh, cell[mine], points[mine])
        if outside == "clip" or directions:
            X = clamp(X)
        else:  # inside to rounding: only clamp away round-off
            X = np.where(np.abs(clamp(X) - X) < 1e-8, clamp(X), X)
        phi = mesh.ufl_domain().ufl_coordinate_element().basix_element.tabulate(0, X)[0, :, :, 0]
        placed[mine] = np.einsum("pk,pkg->pg", phi, _geometry(mesh, cell[mine]))
    comm.Allreduce(MPI.IN_PLACE, placed, op=MPI.SUM)
    placed = chart.point(placed)  # as neurons
    shift = np.where(dropped, 0.0, np.linalg.norm(placed - theta, axis=1))
    if outside == "clip" or directions:
        theta = np.where(dropped[:, None], theta, placed)
    if not directions and outside != "clip":
        shift = np.zeros(N)  # inside the mesh to rounding: the point is where it was

    # b_k = sum_i c_i phi_k(theta_i), assembled on the owners and summed into owned dofs
    V1 = dolfinx.fem.functionspace(mesh, basix.ufl.element("Lagrange", mesh.basix_cell(), 1))
    b = dolfinx.fem.Function(V1)
    if len(mine):
        psi = V1.element.basix_element.tabulate(0, X)[0, :, :, 0]
        np.add.at(b.x.array, V1.dofmap.list[cell[mine]], c[mine, None] * psi)
    b.x.scatter_reverse(dolfinx.la.InsertMode.add)
    v = ufl.TestFunction(V1)
    m = dolfinx.fem.Function(V1)
    x = ufl.SpatialCoordinate(mesh)
    volume, gradient = chart.ufl_volume(x, tdim), chart.ufl_gradient(x, tdim)  # d theta = volume dx
    dolfinx.fem.assemble_vector(m.x.array, dolfinx.fem.form(volume * v * ufl.dx))
    m.x.scatter_reverse(dolfinx.la.InsertMode.add)
    u = dolfinx.fem.Function(V1, name="particles")
    nown = V1.dofmap.index_map.size_local
    if method == "lumped":
        u.x.array[:nown] = b.x.array[:nown] / m.x.array[:nown]
    else:
        w = ufl.TrialFunction(V1)
        stiffness = 0.5 * width**2 * gradient * ufl.inner(ufl.grad(w), ufl.grad(v)) * ufl.dx
        A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(stiffness))
        A.assemble()
        diag = A.getDiagonal()
        diag.array[:] += m.x.array[:nown]
        A.setDiagonal(diag)
        ksp = PETSc.KSP().create(comm)
        ksp.setOperators(A)
        ksp.setType("cg")
        ksp.getPC().setType("gamg")
        ksp.setTolerances(rtol=1e-13, atol=0.0, max_it=1000)
        ksp.setErrorIfNotConverged(True)
        # PETSc views of b and u, destroyed here on every rank: a Function that keeps a PETSc
        # vector must not outlive its use, since a JIT-compiled form holding it as a coefficient
        # can keep it alive on rank 0 only, and a vector freed on some ranks alone makes the next
        # vector creation on that communicator hang
        bv, uv = dolfinx.la.petsc.create_vector_wrap(b.x), dolfinx.la.petsc.create_vector_wrap(u.x)
        ksp.solve(bv, uv)
        for obj in (ksp, A, diag, bv, uv):
            obj.destroy()
    u.x.scatter_forward()
    if V_out is not None and V_out is not V1:
        u_out = dolfinx.fem.Function(V_out, name="particles")
        u_out.interpolate(u)
        u = u_out
    # the bound (ParticleDensity.bound) spreads point masses in theta: the cells' size there, not in x
    return ParticleDensity(u, theta, c, moved, dropped, shift, method, width, neuron_cell_size(mesh), outside, act,
                           directions, theta0, c0)
