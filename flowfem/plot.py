"""Figures (matplotlib, Agg backend): densities drawn on their mesh, fits, flow energy, comparisons.

Every drawing function runs on rank 0 from arrays gathered beforehand by the
collective :func:`gather` (dof coordinates, values and the mesh's cells as
vertex-dof indices), so a figure is the same on any number of ranks.

A density u on parameter space is drawn according to its mesh (:func:`kind`):

* ``curve`` (the circle S^1, intervals in the plane): u against the direction angle;
* ``plane`` (triangles in the plane, d = 1): tripcolor of the mesh's triangles in (w, b);
* ``surface`` (triangles in space: the sphere S^2, d = 2): tripcolor in longitude and
  latitude of theta/|theta| in degrees; triangles that cross the seam at +-180 degrees are
  drawn on both sides, those around a pole are drawn as bands reaching latitude +-90;
* ``volume`` (tetrahedra, d = 2): tripcolor of the exact cut of the mesh by the planes
  b = const (:data:`SLICES` of them), one panel each, in (w1, w2).

Panels that compare densities share one symmetric colour norm and one colour bar.
"""

from __future__ import annotations

import os

import numpy as np

SLICES = 4  # panels of a density on a 3-D mesh: cuts at b = const
POLE = 1.0 - 1e-9  # |z| of a unit vector at a pole (its longitude is undefined)
FIGURE_OUTPUTS = 4  # an m-output fit draws one figure per output for at most this many outputs
GRID_SIDE = 120  # points per side of a 2-D fit's grid, ...
GRID_SIDE_MIN = 48  # ... down to this many where predictions are costly (grid_side)
FIGURE_EVALUATIONS = 2**31  # evaluations of sigma the grid's predictions may take (about 10 s on one core)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- gathering (collective) ---------------------------------------------------------------------


def gather(u) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[None, None, None]:
    """u's dof coordinates theta (N, gdim), values (N,) and cells (C, k) on rank 0 (None elsewhere).

    Collective. Rows are in the global dof numbering; ``cells[c]`` are the rows of the k vertex
    dofs of cell c (k = 2 intervals, 3 triangles, 4 tetrahedra; for P2 and higher the other
    dofs are dropped: the figure is the P1 interpolant on the vertices). Each cell appears once
    (owned cells only).
    """
    V = u.function_space
    mesh = V.mesh
    comm = mesh.comm
    imap = V.dofmap.index_map
    n = imap.size_local
    tdim = mesh.topology.dim
    owned_cells = mesh.topology.index_map(tdim).size_local
    vertices = tdim + 1  # simplices: basix numbers the vertex dofs first
    local = V.dofmap.list[:owned_cells, :vertices]
    cells = imap.local_to_global(local.ravel().astype(np.int32)).reshape(local.shape)
    X = V.tabulate_dof_coordinates()[:n, : mesh.geometry.dim]
    parts = comm.gather((imap.local_range[0], X, u.x.array[:n].copy(), cells), root=0)
    if comm.rank != 0:
        return None, None, None
    N = imap.size_global
    theta, values = np.empty((N, X.shape[1])), np.empty(N)
    for start, Xr, ur, _ in parts:
        theta[start:start + len(ur)], values[start:start + len(ur)] = Xr, ur
    return theta, values, np.vstack([p[3] for p in parts]).astype(np.int64)


# -- densities ----------------------------------------------------------------------------------


def kind(theta: np.ndarray, cells: np.ndarray) -> str:
    """``curve``, ``plane``, ``surface`` or ``volume`` from the space dimension and cell size."""
    gdim, k = theta.shape[1], cells.shape[1]
    kinds = {(2, 2): "curve", (2, 3): "plane", (3, 3): "surface", (3, 4): "volume"}
    if (gdim, k) not in kinds:
        raise ValueError(f"no figure for cells of {k} vertices in {gdim}-D parameter space")
    return kinds[(gdim, k)]


def panels(theta: np.ndarray, cells: np.ndarray) -> int:
    """Number of axes a density takes: :data:`SLICES` for a volume mesh, else 1."""
    return SLICES if kind(theta, cells) == "volume" else 1


def clipped_title(title: str, u: np.ndarray, norm) -> tuple[str, bool]:
    """``title`` and whether u is clipped by the shared colour scale ``norm``; a clipped panel's title
    says so with its max |u| (the colour bar's ends only show that some panel is)."""
    top = float(np.abs(u).max(initial=0.0))
    if top > norm.vmax * (1 + 1e-12):
        return f"{title}\n(clipped: max |u| = {top:.3g})", True
    return title, False


def symmetric_norm(values: np.ndarray):
    """Normalize(-m, m) with m = max |values| over the finite values (1 if none is nonzero): zero is the
    colour map's middle."""
    from matplotlib.colors import Normalize

    values = np.asarray(values)
    m = float(np.max(np.abs(values[np.isfinite(values)]), initial=0.0))  # a diverged run's inf sets no scale
    return Normalize(-m if m > 0 else -1.0, m if m > 0 else 1.0)


def _wrap(d):
    """Angle differences in degrees mapped to [-180, 180)."""
    return (np.asarray(d) + 180.0) % 360.0 - 180.0


def _flat(x: np.ndarray, y: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Triangles of zero area (to rounding): Agg's Gouraud shading draws them as white hairlines."""
    a = (x[tris[:, 1]] - x[tris[:, 0]]) * (y[tris[:, 2]] - y[tris[:, 0]]) \
        - (x[tris[:, 2]] - x[tris[:, 0]]) * (y[tris[:, 1]] - y[tris[:, 0]])
    scale = max(np.ptp(x), np.ptp(y), np.finfo(float).tiny) ** 2
    return np.abs(a) <= 1e-12 * scale


def sphere_triangles(theta: np.ndarray, u: np.ndarray, cells: np.ndarray):
    """The sphere's triangles in longitude/latitude degrees, ready for tripcolor.

    Returns (lon (P,), lat (P,), values (P,), triangles (T, 3), source (T,)): each drawn
    triangle has its own three points, ``source`` is the mesh cell it comes from. A cell whose
    unwrapped longitudes leave [-180, 180] is drawn a second time shifted by -+360 (the axes
    clip both halves at the seam); a cell around a pole, or with a vertex at a pole, becomes the
    bands between its edges and latitude +-90 (value there: the pole vertex's, else the cell's
    mean), so every cell is covered without a smear across the map.
    """
    r = np.linalg.norm(theta, axis=1)
    z = theta[:, 2] / np.maximum(r, 1e-300)
    lon = np.degrees(np.arctan2(theta[:, 1], theta[:, 0]))
    lat = np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))
    pole = np.abs(z) >= POLE
    P, V, T, S = [], [], [], []  # points (lon, lat), values, triangles, source cells

    def add(points, values, tris, c):
        base = len(P)
        P.extend(points)
        V.extend(values)
        for t in tris:
            T.append([base + i for i in t])
            S.append(c)

    for c, (i, j, k) in enumerate(cells):
        tri = [i, j, k]
        winding = _wrap(lon[j] - lon[i]) + _wrap(lon[k] - lon[j]) + _wrap(lon[i] - lon[k])
        rim = [v for v in tri if not pole[v]]
        if pole[tri].any() or abs(winding) > 180.0:
            # bands from each edge of the rim (the non-pole vertices) up to the pole
            cap = 90.0 * np.sign(np.mean(z[tri]))
            at_pole = [v for v in tri if pole[v]]
            mean = float(u[at_pole[0]] if at_pole else np.mean(u[tri]))  # the pole vertex's value if it has one
            edges = list(zip(rim, rim[1:] + rim[:1])) if len(rim) == 3 else [tuple(rim)] if len(rim) == 2 else []
            for a, b in edges:
                la = lon[a]
                lb = la + _wrap(lon[b] - la)
                add([(la, lat[a]), (lb, lat[b]), (lb, cap), (la, cap)], [u[a], u[b], mean, mean],
                     [(0, 1, 2), (0, 2, 3)], c)
        else:
            la = lon[i]
            add([(la, lat[i]), (la + _wrap(lon[j] - la), lat[j]), (la + _wrap(lon[k] - la), lat[k])],
                [u[i], u[j], u[k]], [(0, 1, 2)], c)
    P, V, T, S = np.array(P, float).reshape(-1, 2), np.array(V, float), np.array(T, int).reshape(-1, 3), np.array(S)
    # the copies across the seam
    lo, hi = P[T].min(axis=1)[:, 0], P[T].max(axis=1)[:, 0]
    extra_P, extra_V, extra_T, extra_S = [P], [V], [T], [S]
    count = len(P)
    for cross, shift in ((lo < -180.0, 360.0), (hi > 180.0, -360.0)):
        tris = T[cross]
        pts = P[tris.ravel()] + [shift, 0.0]
        extra_P.append(pts)
        extra_V.append(V[tris.ravel()])
        extra_T.append(count + np.arange(len(pts)).reshape(-1, 3))
        extra_S.append(S[cross])
        count += len(pts)
    P, T, S = np.vstack(extra_P), np.vstack(extra_T), np.concatenate(extra_S)
    keep = ~_flat(P[:, 0], P[:, 1], T)
    return P[:, 0], P[:, 1], np.concatenate(extra_V), T[keep], S[keep]


def slice_triangles(theta: np.ndarray, u: np.ndarray, cells: np.ndarray, b: float):
    """The cut of a tetrahedral mesh by the plane theta_3 = b, with u's P1 interpolant on it.

    Returns (w1 (P,), w2 (P,), values (P,), triangles (T, 3)): each tetrahedron that the plane
    crosses gives a triangle or a quadrilateral (two triangles) with vertices on its edges,
    values interpolated linearly along those edges. A vertex on the plane counts as above it,
    so a face in the plane is cut once; cuts of zero area (through a vertex or an edge) are dropped.
    """
    s = theta[cells, 2] - b  # (C, 4)
    above = s >= 0
    n_above = above.sum(axis=1)
    cut = (n_above > 0) & (n_above < 4)
    C, s, above = cells[cut], s[cut], above[cut]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    pts, vals, valid = [], [], []
    for a, c in pairs:
        crosses = above[:, a] != above[:, c]
        t = np.where(crosses, s[:, a] / np.where(crosses, s[:, a] - s[:, c], 1.0), 0.0)[:, None]
        pa, pc = theta[C[:, a], :2], theta[C[:, c], :2]
        pts.append(pa + t * (pc - pa))
        vals.append(u[C[:, a]] + t[:, 0] * (u[C[:, c]] - u[C[:, a]]))
        valid.append(crosses)
    pts, vals, valid = np.stack(pts, 1), np.stack(vals, 1), np.stack(valid, 1)  # (C, 6, 2), (C, 6), (C, 6)
    # order each polygon's 3 or 4 points by angle about its centre (invalid points last)
    centre = (pts * valid[..., None]).sum(1) / valid.sum(1)[:, None]
    angle = np.where(valid, np.arctan2(pts[..., 1] - centre[:, None, 1], pts[..., 0] - centre[:, None, 0]), np.inf)
    order = np.argsort(angle, axis=1)[:, :4]
    pts = np.take_along_axis(pts, order[..., None], 1)
    vals = np.take_along_axis(vals, order, 1)
    quad = valid.sum(1) == 4
    base = 4 * np.arange(len(C))
    tris = np.vstack([np.column_stack([base, base + 1, base + 2]), np.column_stack([base, base + 2, base + 3])[quad]])
    w1, w2 = pts[..., 0].ravel(), pts[..., 1].ravel()
    tris = tris[~_flat(w1, w2, tris)]
    used, tris = np.unique(tris, return_inverse=True)  # drop the unused fourth slot of triangles
    return w1[used], w2[used], vals.ravel()[used], tris.reshape(-1, 3)


def slice_levels(theta: np.ndarray, count: int = SLICES) -> np.ndarray:
    """The b values of the cuts: centres of ``count`` equal parts of the mesh's range of theta_3."""
    lo, hi = float(theta[:, 2].min()), float(theta[:, 2].max())
    return lo + (hi - lo) * (np.arange(count) + 0.5) / count


CHART_COORDINATES = ("z_1", "z_2", "z_3")  # the s3 chart's coordinates (flowfem.space): not (w, b)


def density_axes(axes, theta: np.ndarray, u: np.ndarray, cells: np.ndarray, norm=None, title: str = "density u",
                 coordinates: tuple[str, str, str] = ("w_1", "w_2", "b")):
    """Draw u on its mesh into ``axes`` (one Axes, or :func:`panels` of them for a volume mesh).

    ``norm``: the colour norm (default :func:`symmetric_norm` of u), shared by the caller's
    panels. ``coordinates``: the names of a volume mesh's three coordinates, (w_1, w_2, b) or, on
    the s3 chart, (z_1, z_2, z_3), which are not a neuron's weights. Returns the colour mappable
    (None for a curve); the caller adds the colour bar.
    """
    shape = kind(theta, cells)
    axes = list(np.atleast_1d(axes))
    norm = symmetric_norm(u) if norm is None else norm
    ax = axes[0]
    if shape == "curve":
        phi = np.degrees(np.arctan2(theta[:, 1], theta[:, 0]))
        o = np.argsort(phi)
        ax.plot(phi[o], u[o])
        ax.set_xlabel(r"direction angle of $\theta=(w,b)$ (degrees)")
        ax.set_ylabel("u")
        ax.set_xlim(-180, 180)
        ax.set_xticks(np.arange(-180, 181, 90))
        ax.set_title(title)
        return None
    if shape == "plane":
        m = ax.tripcolor(theta[:, 0], theta[:, 1], cells, u, shading="gouraud", cmap="RdBu_r", norm=norm)
        ax.set_xlabel("w")
        ax.set_ylabel("b")
        ax.set_aspect("equal")
        ax.set_title(title)
        return m
    if shape == "surface":
        lon, lat, values, tris, _ = sphere_triangles(theta, u, cells)
        m = ax.tripcolor(lon, lat, tris, values, shading="gouraud", cmap="RdBu_r", norm=norm)
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_xticks(np.arange(-180, 181, 90))
        ax.set_yticks(np.arange(-90, 91, 45))
        ax.set_aspect("equal")
        ax.set_xlabel(r"longitude of $\theta/|\theta|$: atan2($w_2$, $w_1$) (degrees)")
        ax.set_ylabel(r"latitude: arcsin($b/|\theta|$) (degrees)")
        ax.set_title(title)
        return m
    if len(axes) != SLICES:
        raise ValueError(f"a density on a 3-D mesh is drawn as {SLICES} slices: give {SLICES} axes, got {len(axes)}")
    lo, hi = theta[:, :2].min(axis=0), theta[:, :2].max(axis=0)
    m = None
    for ax, b in zip(axes, slice_levels(theta)):
        w1, w2, values, tris = slice_triangles(theta, u, cells, b)
        m = ax.tripcolor(w1, w2, tris, values, shading="gouraud", cmap="RdBu_r", norm=norm)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xlabel(f"${coordinates[0]}$")
        ax.set_ylabel(f"${coordinates[1]}$")
        ax.set_title(f"{title}, {coordinates[2]} = {b:.3g}")
    return m


def _colorbar(fig, mappable, axes, label="u", extend="neither"):
    if mappable is not None:
        fig.colorbar(mappable, ax=list(np.ravel(axes)), label=label, extend=extend, shrink=0.9)


# -- fits ----------------------------------------------------------------------------------------


def grid(x: np.ndarray, side: int = GRID_SIDE) -> np.ndarray:
    """Points where the fit is drawn: 400 on the data's interval (d = 1), ``side`` x ``side`` on its
    box (d = 2), row by row: shape (400, 1) or (side^2, 2)."""
    if x.shape[1] == 1:
        return np.linspace(x.min(), x.max(), 400)[:, None]
    lo, hi = x.min(axis=0), x.max(axis=0)
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], side), np.linspace(lo[1], hi[1], side))
    return np.column_stack([g0.ravel(), g1.ravel()])


def grid_side(quadrature_points: int) -> int:
    """Points per side of the 2-D figure grid for a fit whose predictions sum over ``quadrature_points``:
    GRID_SIDE, fewer (down to GRID_SIDE_MIN) where GRID_SIDE^2 predictions would evaluate sigma more
    than FIGURE_EVALUATIONS times. On the default 2-D box (786,432 points) 120^2 predictions took
    about 90 s of a 140 s solve, more than the fit; Gouraud shading draws a coarser grid smoothly."""
    side = int(np.sqrt(FIGURE_EVALUATIONS / max(quadrature_points, 1)))
    return int(np.clip(side, GRID_SIDE_MIN, GRID_SIDE))


def _square(xg: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid ``xg`` = grid(x, side) and values on it, each as a (side, side) array."""
    side = int(round(np.sqrt(len(xg))))
    return xg[:, 0].reshape(side, side), xg[:, 1].reshape(side, side), values.reshape(side, side)


def accuracy(f: np.ndarray, y: np.ndarray) -> float:
    """Share of labels y in {-1, +1} that sign(f) predicts (f = 0 counts as wrong)."""
    return float(np.mean(np.sign(f) == y))


def fit_axes(ax, x: np.ndarray, y: np.ndarray, xg: np.ndarray, fg: np.ndarray, loss: str = "squared",
             title: str = "fit", test_accuracy: float | None = None):
    """Draw the fit f_u with the data (x (n, d), y (n,)); ``xg`` = grid(x), ``fg`` f_u there.

    d = 1: the data and the curve f_u. d = 2, squared loss: a heat map of f_u over the data's
    box with the data coloured by y in the same colour norm (a point's colour against its
    background is its residual). d = 2, logistic loss: the heat map of f_u, the decision
    boundary f_u = 0 and the data by class; the title gives ``test_accuracy`` (required).
    Returns the heat map's mappable (None for d = 1); the caller adds the colour bar.
    """
    classify = loss == "logistic"
    if classify and test_accuracy is None:
        raise ValueError("a classification figure states its accuracy: give test_accuracy")
    if classify:
        title = f"{title}: test accuracy {test_accuracy:.3f}"
    ax.set_title(title)
    if x.shape[1] == 1:
        ax.plot(x[:, 0], y, ".", ms=3, alpha=0.5, label="data")
        ax.plot(xg[:, 0], fg, "k", lw=1.5, label=r"$f_u$")
        if classify:
            ax.axhline(0.0, color="grey", lw=0.8, ls=":", label="decision level f = 0")
        ax.set_xlabel("x")
        ax.set_ylabel("y (labels -1/+1), $f_u(x)$" if classify else "y, $f_u(x)$")
        ax.legend(fontsize=8)
        return None
    from matplotlib.colors import Normalize

    g0, g1, f = _square(xg, fg)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_aspect("equal")
    if classify:
        m = ax.pcolormesh(g0, g1, f, shading="gouraud", cmap="RdBu_r", norm=symmetric_norm(f))
        ax.contour(g0, g1, f, levels=[0.0], colors="k", linewidths=1.5)
        for label, colour, marker in ((-1, "tab:blue", "o"), (1, "tab:red", "^")):
            sel = y == label
            ax.scatter(x[sel, 0], x[sel, 1], s=10, c=colour, marker=marker, edgecolors="k", linewidths=0.3,
                       label=f"y = {label:+d}")
        ax.plot([], [], "k", lw=1.5, label="decision boundary $f_u = 0$")
        ax.legend(fontsize=7, loc="best")
        return m
    norm = Normalize(min(f.min(), y.min()), max(f.max(), y.max()))  # one scale: f_u and y
    m = ax.pcolormesh(g0, g1, f, shading="gouraud", cmap="viridis", norm=norm)
    ax.scatter(x[:, 0], x[:, 1], c=y, s=12, cmap="viridis", norm=norm, edgecolors="k", linewidths=0.3)
    return m


def solution_figure(path: str, theta, u, cells, x, y, xg, fg, loss: str = "squared", title: str = "fit",
                    test_accuracy: float | None = None):
    """The density on its mesh next to the fit, saved as PNG (call on one rank; arrays from
    :func:`gather`, :func:`grid` and the collective predictions). Returns the (closed) Figure."""
    plt = _pyplot()
    n = panels(theta, cells)
    fig = plt.figure(figsize=(14, 7) if n > 1 else (12, 4.6), layout="constrained")
    if n > 1:  # the slices in a square block on the left, the fit on the right
        left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1])
        dens_axes = left.subplots(2, (n + 1) // 2).ravel()
        fit_ax = right.subplots(1, 1)
        owner_d, owner_f = left, right
    else:
        dens_axes, fit_ax = fig.subplots(1, 2)
        owner_d = owner_f = fig
    m = density_axes(dens_axes, theta, u, cells)
    _colorbar(owner_d, m, dens_axes)
    mf = fit_axes(fit_ax, x, y, xg, fg, loss, title, test_accuracy)
    _colorbar(owner_f, mf, fit_ax, label="$f_u(x)$ (logit)" if loss == "logistic" else "$f_u(x)$; points: data y, same scale")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def classes_figure(path: str, x: np.ndarray, labels: np.ndarray, xg: np.ndarray, P: np.ndarray,
                   classes: np.ndarray, title: str):
    """A classifier's figure, saved as PNG (call on one rank): for d = 2 the decision regions
    argmax_c p_c over the grid ``xg`` = grid(x) (colour per class, shaded by the winning probability)
    with the boundaries between them and the data (x (n, 2), labels (n,)) by class; for d = 1 the
    probabilities p_c(x) of each class against x with the data drawn at height 1 in their class's
    colour. ``P`` (len(xg), C) the probabilities of ``classes`` (C,) in order. Returns the (closed) Figure."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    C = len(classes)
    colours = plt.get_cmap("tab10" if C <= 10 else "tab20")(np.arange(C) % (10 if C <= 10 else 20))
    k = np.searchsorted(classes, labels) if np.isin(labels, classes).all() else np.full(len(labels), -1)
    fig, ax = plt.subplots(figsize=(7, 5.6) if x.shape[1] == 2 else (8, 4.6), layout="constrained")
    ax.set_title(title)
    if x.shape[1] == 1:
        for c in range(C):
            ax.plot(xg[:, 0], P[:, c], color=colours[c], lw=1.5, label=f"p(class {classes[c]})")
            sel = k == c
            ax.plot(x[sel, 0], np.ones(sel.sum()), "|", color=colours[c], ms=8)
        ax.set_xlabel("x")
        ax.set_ylabel("class probability (ticks at 1: the data)")
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=8)
    else:
        g0, g1, win = _square(xg, np.argmax(P, axis=1))
        ax.pcolormesh(g0, g1, win, cmap=ListedColormap(colours), vmin=-0.5, vmax=C - 0.5, shading="nearest",
                      alpha=0.35)
        for c in range(C):  # each region's edge (an edge between two regions is drawn twice, in one place)
            if np.any(win == c) and not np.all(win == c):
                ax.contour(g0, g1, (win == c).astype(float), levels=[0.5], colors="k", linewidths=1.0)
        for c in range(C):
            sel = k == c
            ax.scatter(x[sel, 0], x[sel, 1], s=14, color=colours[c], edgecolors="k", linewidths=0.3,
                       label=f"class {classes[c]}")
        ax.plot([], [], "k", lw=1.0, label="decision boundaries")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def write_solution_figure(path: str, result, train, test, f_test: np.ndarray, metrics: dict | None = None,
                          scaling=None):
    """figure.png of a :class:`flowfem.problem.Result` (collective: predictions and gathering on
    every rank, drawing on rank 0). ``f_test``: f_u on the test inputs, for the title (test RMSE,
    or test accuracy for the logistic loss), unless ``metrics`` (a solve's metrics.json) gives them: then
    ``test`` and ``train`` may be samples of the rows scored there. Returns the (closed) Figure on rank 0,
    else None.

    A softmax fit (:class:`flowfem.problem.ClassifierResult`; ``f_test`` its predicted labels): one
    figure of its decision regions or class probabilities (:func:`classes_figure`).

    m outputs: one figure per output k (its density and its fit), for the first
    :data:`FIGURE_OUTPUTS` outputs, named ``path`` with ``_y{k}`` before the suffix
    (figure_y1.png, ...); returns the first.

    ``scaling``: the :class:`flowfem.scaling.Standardisation` the inputs of ``train`` and ``test``
    went through (a real data set): the fit is evaluated on standardised inputs and drawn over the raw
    ones, in the units of the data file (as predictions.csv); the density stays in the parameters of
    the standardised inputs."""
    loss = result.problem.loss.name
    quadrature = result.functional.Phi.quadrature
    xg = grid(train.x, grid_side(result.problem.space.comm.allreduce(quadrature.theta.shape[0])))
    raw = (lambda z: z) if scaling is None else scaling.invert  # drawn in the data file's units
    if result.problem.loss.multiclass:  # a softmax fit: decision regions or class probabilities
        P = result.predict_proba(xg)
        if result.problem.space.comm.rank != 0:
            return None
        return classes_figure(path, raw(train.x), train.y, raw(xg), P, result.classes,
                              f"{train.name}: test accuracy {np.mean(f_test == test.y):.3f}")
    fg = result.predict(xg)
    m = result.outputs
    figures = []
    for k in range(min(m, FIGURE_OUTPUTS)):
        theta, values, cells = gather(result.densities[k])
        if result.problem.space.comm.rank != 0:
            continue
        if loss == "logistic":
            figures.append(solution_figure(path, theta, values, cells, raw(train.x), train.y, raw(xg), fg, loss,
                                           train.name,
                                           accuracy(f_test, test.y) if metrics is None else metrics["test_accuracy"]))
            continue
        column = (lambda a: a) if m == 1 else (lambda a: a[:, k])
        if metrics is not None:
            rmse = metrics["test_rmse"] if m == 1 else metrics["test_rmse_outputs"][k]
        else:
            rmse = float(np.sqrt(np.mean((column(f_test) - column(test.y)) ** 2)))
        name = "" if m == 1 else f", output y{k + 1} of {m}"
        target = path if m == 1 else "{0}_y{2}{1}".format(*os.path.splitext(path), k + 1)
        figures.append(solution_figure(target, theta, values, cells, raw(train.x), column(train.y), raw(xg),
                                       column(fg), loss,
                                       f"{train.name}{name}: f_u and data, test RMSE {rmse:.2e}"))
    return figures[0] if figures else None


def path_figure(path: str, reg_path):
    """path.png of a regularisation path (:class:`flowfem.path.RegularisationPath`): the validation
    score against alpha on log-log axes (each fold's scores faint behind the mean when there are
    several), the training error beside it (RMSE, or the mean loss), the chosen alpha starred. Call on
    one rank. Returns the (closed) Figure."""
    plt = _pyplot()
    p = reg_path
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    if p.fold_scores.shape[0] > 1:
        for k, scores in enumerate(p.fold_scores):
            ax.loglog(p.alphas, scores, "-", color="tab:blue", alpha=0.25, lw=1,
                      label="each fold" if k == 0 else None)
    ax.loglog(p.alphas, p.scores, "o-", color="tab:blue", label=p.score)
    # the squared loss's data term is mean (f - y)^2 / 2: the training RMSE is sqrt(2 x data term)
    train = p.train_loss if p.score.endswith("loss") else np.sqrt(2.0 * np.maximum(p.train_loss, 0.0))
    positive = train > 0  # a data term of exactly 0 has no place on a log axis
    ax.loglog(p.alphas[positive], train[positive], "s--", ms=4, color="tab:grey",
              label="training " + ("mean loss" if p.score.endswith("loss") else "RMSE"))
    ax.axvline(p.alpha, color="tab:red", lw=1, ls=":")
    ax.plot([p.alpha], [p.scores[p.chosen]], "*", ms=14, color="tab:red",
            label=f"chosen alpha = {p.alpha:.0e} (smallest score)")
    ax.set_xlabel(r"regularisation $\alpha$")
    ax.set_ylabel(p.score)
    split = f"{p.folds} folds" if p.folds else f"{p.validation:g} of the rows held out"
    ax.set_title(f"regularisation path ({split}, seed {p.seed})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


# -- the gradient flow ----------------------------------------------------------------------------


PLATEAU = 2.0  # the distance bound is drawn down to this times the smallest distance the run reached


def energy_figure(path: str, result, title: str = "", quadratic: bool = False):
    """A flow's energy gap E(t) - E* and distance ||u - u*||_G / ||u*||_G against t (log scales),
    each with the bound proven for the scheme that ran (:func:`flowfem.flow.bounds.flow_bounds`; ``quadratic``: the
    loss is the squared loss, which proves more). ``result``: a :class:`flowfem.flow.FlowResult`;
    call on one rank. Steps are drawn as markers at t_k > 0 (log axis when they span 1.5 decades);
    the values at t = 0 are in the legend.

    The bounds are for exact solves. The computed distance stops falling where the inexact
    solves (of the steps and of u*; tolerances rtol and step_rtol of :class:`flowfem.flow.Flow`,
    amplified by the conditioning ~ 1/alpha) meet it, and the computed gap at the rounding of E:
    the distance bound is drawn down to :data:`PLATEAU` x the smallest distance reached, the gap
    bound down to 64 ulps of E, both floors marked where the run reaches them.
    Returns the (closed) Figure."""
    plt = _pyplot()
    t, E, err = result.times, result.energies, result.errors
    from flowfem.flow.bounds import flow_bounds

    err_bound, gap_bound, label = flow_bounds(result, quadratic)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    later = t > 0
    ax = axes[0]
    if result.energy_star is not None:
        gap = E - result.energy_star
        floor = 64 * np.finfo(float).eps * max(abs(result.energy_star), abs(E).max())
        shown = later & (gap > floor)  # below a few ulps of E* the gap is rounding, not the flow
        ax.loglog(t[shown], gap[shown], "o-", ms=3, label=rf"$E_\alpha(u_k) - E_\alpha(u^*)$ ($t=0$: {gap[0]:.3g})")
        if gap_bound is not None:
            ax.loglog(t[later], np.maximum(gap_bound[later], floor), "k--", lw=1,
                      label=f"proven bound: gap(0) x ({label})$^2$")
        if (gap[later] <= 1e3 * floor).any():  # marked only where the run reaches it
            ax.axhline(floor, color="grey", lw=0.8, ls=":", label=r"rounding level of $E_\alpha$ (64 ulps)")
        ax.set_ylabel(r"energy gap $E_\alpha(u_k) - E_\alpha(u^*)$")
    else:
        ax.semilogx(t[later], E[later], "o-", ms=3, label=rf"$E_\alpha(u_k)$ ($t=0$: {E[0]:.4g})")
        ax.set_ylabel(r"$E_\alpha(u_k)$")
    ax.set_xlabel("t")
    ax.legend(fontsize=8)
    ax.set_title(f"{result.scheme}, {result.metric} metric" + (f": {title}" if title else ""))
    ax = axes[1]
    ok = later & np.isfinite(err) & (err > 0)
    if ok.any():
        ax.loglog(t[ok], err[ok], "o-", ms=3, label=rf"$\|u_k - u^*\|_G / \|u^*\|_G$ ($t=0$: {err[0]:.3g})")
        if err_bound is not None:
            reached = PLATEAU * err[ok].min()
            ax.loglog(t[later], np.maximum(err_bound[later], reached), "k--", lw=1,
                      label=f"proven bound: e(0) x {label}")
            if (err_bound[later] < reached).any():
                ax.axhline(reached, color="grey", lw=0.8, ls=":",
                           label=f"accuracy reached by the inexact solves ({PLATEAU:g} x smallest)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no stationary solution: no distance", transform=ax.transAxes, ha="center")
    ax.set_xlabel("t")
    ax.set_ylabel(r"$\|u_k - u^*\|_G / \|u^*\|_G$" + f" ({result.metric})")
    ax.set_title("distance to the stationary density" + ("" if err_bound is not None else f"\n({label})"))
    tl = t[later]
    for a in axes:
        if len(tl) and tl.max() < 30 * tl.min():  # under 1.5 decades a log axis labels crowded minor ticks
            a.set_xscale("linear")
            a.xaxis.set_major_locator(plt.MaxNLocator(6))
        a.grid(True, which="major", alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


# -- flowfem compare --------------------------------------------------------------------------

_COLOURS = {"gd": "tab:blue", "adam": "tab:orange", "quadrature": "tab:green", "sample": "tab:purple",
            "refit": "tab:red"}


def _separated_ticks(preferred, others, ratio: float = 1.5) -> list:
    """Tick positions on a log axis: the ``preferred`` values, then the ``others``, each kept only if it
    is more than ``ratio`` times away from every tick kept before, so that no two labels overlap."""
    ticks = []
    for w in list(dict.fromkeys(sorted(preferred))) + sorted(others):
        if all(max(w / t, t / w) > ratio for t in ticks):
            ticks.append(w)
    return sorted(ticks)


def comparison_figures(directory: str, cmp, gathered) -> dict:
    """error_vs_width.png, error_vs_time.png and densities.png of a :class:`flowfem.compare.Comparison`
    (rank 0; ``gathered``: (theta, u, cells) of the FE and particle densities, from :func:`gather`).

    densities.png shares one symmetric colour norm, set by the FE density u*: a particle density
    beyond it is clipped (the colour bar's ends), and its panel title says so with its max |u|.
    Returns the (closed) Figures by file name.
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    plt = _pyplot()
    figures = {}
    table = cmp.table()
    fe = next(r for r in table if r["solver"] == "FE solve")

    # test error, train loss and own objective versus width
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    keys = [("test_rmse", "test RMSE"), ("train_loss", "train loss (1/n) sum (f - y)^2 / 2"),
            ("objective", "own objective (differs by family)")]
    widths = _separated_ticks([r["width"] for r in table if r["width"] and r["solver"] == "particles"],
                              [r["width"] for r in table if r["width"]])
    for ax, (key, label) in zip(axes, keys):
        for (solver, method) in dict.fromkeys((r["solver"], r["method"]) for r in table if r["width"]):
            rows = sorted((r for r in table if r["solver"] == solver and r["method"] == method),
                          key=lambda r: r["width"])
            N = np.array([r["width"] for r in rows], float)
            if key == "test_rmse":
                mean = np.array([r["test_rmse_mean"] for r in rows])
                err = [mean - [r["test_rmse_min"] for r in rows], np.array([r["test_rmse_max"] for r in rows]) - mean]
            else:
                mean = np.array([r[f"{key}_mean"] for r in rows])
                std = np.array([r[f"{key}_std"] for r in rows])
                err = [np.minimum(std, 0.999 * mean), std]
            name = f"particles {method}" if solver == "particles" else f"FE readout {method}"
            ax.errorbar(N, mean, yerr=err, marker="o" if solver == "particles" else "s", capsize=3,
                        color=_COLOURS.get(method), ls="-" if solver == "particles" else "--", label=name)
        ref = {"test_rmse": fe["test_rmse_mean"], "train_loss": fe["train_loss_mean"], "objective": fe["objective_mean"]}[key]
        ax.axhline(ref, color="k", ls=":", label="FE solve (continuum)" if key != "objective" else "E_alpha(u*)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # the widths as ticks (those asked for first: a quadrature readout's N = 18 sits beside 16, and the two
        # labels would print as "1618"); on the y axis only decades are labelled (minor ticks unlabelled)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("width N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("mean over seeds, bars: min..max")
    axes[1].set_title("train loss (the data term shared by all)")
    axes[2].set_title("each family's own objective (see table)")
    fig.savefig(os.path.join(directory, "error_vs_width.png"), dpi=110)
    plt.close(fig)
    figures["error_vs_width.png"] = fig

    # test error versus wall time
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    for (m, N, s), r in cmp.particles.items():
        h = r.history
        k = cmp.settings["widths"].index(N)
        ax.plot(np.maximum(h["time"], 1e-4), h["test_error"], color=_COLOURS[m],
                alpha=0.35 + 0.65 * (k + 1) / len(cmp.settings["widths"]),
                lw=1.5 if s == cmp.settings["seeds"][0] else 0.6,
                label=f"{m} N={N}" if s == cmp.settings["seeds"][0] else None)
    for r in cmp.runs:
        if r.solver == "FE readout" and r.method == "quadrature":
            ax.plot(r.seconds, r.test_rmse, "s", color=_COLOURS["quadrature"], ms=6)
            ax.annotate(f"N={r.width}", (r.seconds, r.test_rmse), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot(fe["seconds_mean"], fe["test_rmse_mean"], "k*", ms=14, label="FE solve")
    ax.plot([], [], "s", color=_COLOURS["quadrature"], label="FE readout quadrature (own solve)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"wall time [s] on {cmp.settings['ranks']} rank(s)")
    ax.set_ylabel("test RMSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("particle training curves; FE solve as a point")
    fig.savefig(os.path.join(directory, "error_vs_time.png"), dpi=110)
    plt.close(fig)
    figures["error_vs_time.png"] = fig

    # the FE density next to the particle densities, in u*'s colour scale
    names = ["FE density u*"] + [f"particles {m}, N={N}, seed {s}" for (m, N, s) in cmp.densities]
    theta0, u0, cells0 = gathered[0]
    norm = symmetric_norm(u0)
    n = panels(theta0, cells0)
    rows, cols = (len(gathered), n) if n > 1 else (1, len(gathered))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows + 0.6), squeeze=False, layout="constrained")
    clipped = False
    m = None
    for j, ((theta, values, cells), name, pd) in enumerate(zip(gathered, names, [None] + list(cmp.densities.values()))):
        name, cut = clipped_title(name, values, norm)
        clipped |= cut
        ax_j = axes[j] if n > 1 else axes[0, j]
        m = density_axes(ax_j, theta, values, cells, norm=norm, title=name,
                         coordinates=CHART_COORDINATES if cmp.settings.get("domain") == "s3" else ("w_1", "w_2", "b")) or m
        if pd is not None and kind(theta, cells) == "plane":
            keep = ~pd.dropped
            ax_j.plot(pd.theta[keep, 0], pd.theta[keep, 1], "k.", ms=1.5, alpha=0.5, label="particles")
            ax_j.legend(fontsize=7, loc="lower right")
    _colorbar(fig, m, axes, label=f"u (one scale for all panels, set by u*: |u| <= {norm.vmax:.3g})",
              extend="both" if clipped else "neither")
    fig.savefig(os.path.join(directory, "densities.png"), dpi=110)
    plt.close(fig)
    figures["densities.png"] = fig
    return figures
