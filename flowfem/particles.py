"""Particle solvers: finite-width networks trained by gradient descent.

The baseline flowfem is compared against. N neurons ("particles")
theta_i = (w_i, b_i) in R^(d+1) with output weights a_i, in mean-field
scaling

    f(x) = (1/N) sum_i a_i sigma(w_i . x + b_i),

trained on the objective (lam = ``weight_decay`` >= 0)

    J = (1/n) sum_j l(f(x_j), y_j) + (lam/2) (1/N) sum_i (|w_i|^2 + b_i^2 + a_i^2).

The regulariser always covers every parameter, also those held fixed with
``trainable`` (it is then a constant). Gradients are analytic and vectorised.

**Particle layout.** The particles are one array P of shape (N, d+2), row i =
(w_i (d entries), b_i, a_i). :func:`from_network` and :func:`to_network`
convert to and from :class:`flowfem.network.Network`, whose output weights
are a_i / N, so that ``network(x)`` is the mean-field f.

**Time scaling.** dJ/dP_i is O(1/N), so every method moves particle i with
the mean-field velocity V_i = N dJ/dP_i (N-independent). Step k is time
t = k * lr:

* ``gd``:  P_i <- P_i - lr V_i + sqrt(2 lr T) xi_i,   xi_i ~ N(0, I) i.i.d.
* ``adam``: P_i <- P_i - lr m_hat_i / (sqrt(v_hat_i) + eps) + sqrt(2 lr T) xi_i,
  with Adam's moments (m, v, bias-corrected) of V (coordinate-wise).

With T = ``temperature`` > 0, ``gd`` is the Euler–Maruyama step of mean-field
Langevin dynamics dP_i = -V_i dt + sqrt(2T) dB_i: as N -> inf, lr -> 0 the
particles' empirical law mu_t follows the Wasserstein gradient flow of
F(mu) = loss(f_mu) + (lam/2) int |P|^2 dmu + T int mu log mu. For ``adam`` the
noise is added unpreconditioned: a heuristic, not a Langevin scheme. Noise
only enters trained coordinates.

**MPI.** With a communicator of size p, rank r owns a contiguous slice of the
neurons; predictions (and the regulariser) are one Allreduce sum per step,
data are replicated. Initial particles and noise are drawn for all N neurons
on every rank from ``seed`` and sliced, so the trajectory does not depend on
p (up to the order of floating-point sums).

**Density of the particles.** :func:`density` projects the measure
mu = sum_i (a_i / N) delta_(theta_i) onto P1 functions on a parameter mesh (mass-lumped L2
projection, optionally smoothed by a kernel of stated width), so that particles and flowfem's
density can be compared as fields; :class:`ParticleDensity` carries the result, what was moved
or dropped, and the stated bound on how far its network f_(u_h) is from the particles'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from flowfem import data as _data
from flowfem.activations import Activation, activation as _activation
from flowfem import memory
from flowfem import arguments
from flowfem.arguments import positive, spell
from flowfem.loss import Loss, loss as _loss
from flowfem.network import Network
from flowfem.operator.features import evaluate

__all__ = [
    "ParticleResult", "train", "objective", "gradient", "predict",
    "from_network", "to_network", "init_particles", "ParticleDensity", "density",
]

_BLOCK = 1 << 22  # max entries of a (data rows x local neurons) work array
_TRAINABLE = {"all": slice(None), "inner": slice(0, -1), "outer": slice(-1, None)}


# -- particles <-> networks --------------------------------------------------

def from_network(network: Network) -> np.ndarray:
    """Particles (N, d+2) = rows (w_i, b_i, a_i) of ``network``, with a_i = N * network.a_i."""
    N = network.width
    return np.column_stack([network.W, network.b, N * network.a])


def to_network(particles: np.ndarray, activation: str | Activation = "relu") -> Network:
    """The :class:`Network` with output weights a_i / N: its value is the mean-field f."""
    P = np.asarray(particles, dtype=float)
    return Network(P[:, :-2], P[:, -2], P[:, -1] / len(P), activation)


def init_particles(width: int, dim: int, seed=0, init_scale: float = 1.0) -> np.ndarray:
    """All N particles, i.i.d. N(0, init_scale^2) in every coordinate, shape (N, d+2)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    return init_scale * rng.standard_normal((width, dim + 2))


# -- MPI helpers -------------------------------------------------------------

def _world():
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def _size(comm) -> int:
    return 1 if comm is None else comm.Get_size()


def _allsum(comm, buf: np.ndarray) -> np.ndarray:
    """Sum ``buf`` over the ranks, in place (nothing to do serially)."""
    if _size(comm) > 1:
        from mpi4py import MPI
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf


def _slice(N: int, comm) -> slice:
    """This rank's contiguous share of N neurons (the first N % p ranks get one more)."""
    p = _size(comm)
    r = 0 if comm is None else comm.Get_rank()
    q, m = divmod(N, p)
    lo = r * q + min(r, m)
    return slice(lo, lo + q + (r < m))


# -- objective and gradient ----------------------------------------------------

def _evaluate(P, x, y, act: Activation, lss: Loss, lam: float, N: int, comm, grad: bool):
    """(J, mean loss, f, dJ/dP for the local particles P or None)."""
    n, d = x.shape
    theta, a = P[:, :d + 1], P[:, d + 1]
    rows = max(1, _BLOCK // max(1, len(P)))
    blocks = [slice(s, min(s + rows, n)) for s in range(0, n, rows)]
    buf = np.empty(n + 1)  # partial predictions and partial sum |P_i|^2: one Allreduce
    cache = None
    for s in blocks:
        if grad and len(blocks) == 1:  # sigma and sigma' from one product, kept for the gradient
            cache = evaluate(act, x[s], theta, (0, 1))
            sz = cache[0]
        else:
            sz = evaluate(act, x[s], theta)
        buf[s] = sz @ a
    buf[n] = np.sum(P * P)
    _allsum(comm, buf)
    f = buf[:n] / N
    data = float(np.mean(lss.value(f, y)))
    J = data + 0.5 * lam * buf[n] / N
    if not grad:
        return J, data, f, None
    r = lss.d1(f, y) / n
    G = lam * P
    for s in blocks:
        # several blocks: recompute rather than store n x N arrays
        sz, dz = evaluate(act, x[s], theta, (0, 1)) if cache is None else cache
        G[:, d + 1] += sz.T @ r[s]
        g = (r[s, None] * dz) * a  # d(loss)/dz, (rows, N_local)
        G[:, :d] += g.T @ x[s]
        G[:, d] += g.sum(axis=0)
    return J, data, f, G / N


def _prepare(P, x, comm, width):
    P = np.asarray(P, dtype=float)
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if P.ndim != 2 or x.ndim != 2 or P.shape[1] != x.shape[1] + 2:
        raise ValueError(
            f"particles have shape {P.shape} and inputs {x.shape}: expected particles "
            "(N, d+2) with rows (w, b, a) and inputs (n, d)"
        )
    if width is None:
        width = int(_allsum(comm, np.array([float(len(P))]))[0])
    return P, x, width


def objective(particles, x, y, activation="relu", loss="squared", weight_decay=0.0,
              comm=None, width=None) -> float:
    """J at ``particles`` (N, d+2); with ``comm``, particles are this rank's slice.

    ``comm=None`` means no reductions: ``particles`` holds every neuron.
    ``width`` is the global N (computed with one Allreduce if omitted).
    """
    P, x, N = _prepare(particles, x, comm, width)
    return _evaluate(P, x, np.asarray(y, float), _activation(activation), _loss(loss),
                     weight_decay, N, comm, grad=False)[0]


def gradient(particles, x, y, activation="relu", loss="squared", weight_decay=0.0,
             comm=None, width=None) -> np.ndarray:
    """dJ/dparticles, same shape as ``particles`` (O(1/N) per row; arguments as :func:`objective`)."""
    P, x, N = _prepare(particles, x, comm, width)
    return _evaluate(P, x, np.asarray(y, float), _activation(activation), _loss(loss),
                     weight_decay, N, comm, grad=True)[3]


def predict(particles, x, activation="relu", comm=None, width=None) -> np.ndarray:
    """The mean-field f at the rows of x (arguments as :func:`objective`)."""
    P, x, N = _prepare(particles, x, comm, width)
    return _evaluate(P, x, np.zeros(len(x)), _activation(activation), _loss("squared"),
                     0.0, N, comm, grad=False)[2]


# -- training ------------------------------------------------------------------

@dataclass
class ParticleResult:
    """Outcome of :func:`train`, identical on every rank (except wall times).

    ``network``: the trained :class:`Network` (a_i / N folded in), all N neurons.
    ``particles``: all N particles (N, d+2), rows (w_i, b_i, a_i).
    ``history``: dict of equal-length arrays, one entry per recorded step:
    ``step``, ``time`` (wall seconds since the start), ``objective`` (J),
    ``loss`` (the data term of J), ``grad_norm`` (sqrt((1/N) sum_i |V_i|^2),
    the L2(mu) norm of the mean-field velocity over trained coordinates),
    ``test_error`` (RMSE for the squared loss, misclassification rate of
    sign(f) (f = 0 counts as +1) for the logistic loss; NaN without test data).
    ``status``: ``completed``, ``time_limit`` or ``diverged`` (J not finite;
    the last recorded row is that step, and ``network`` is None).
    ``settings``: the arguments of the run (and ``ranks``).
    """

    network: Network
    particles: np.ndarray
    history: dict[str, np.ndarray]
    status: str = "completed"
    settings: dict = field(default_factory=dict)

    @property
    def objective(self) -> float:
        """J at the last recorded step."""
        return float(self.history["objective"][-1])


def train(x, y, width=None, activation="relu", loss="squared", method="gd", lr=0.1,
          steps=1000, weight_decay=0.0, temperature=0.0, seed=0, x_test=None, y_test=None,
          record_every=None, time_limit=None, comm=None, init=None, init_scale=1.0,
          trainable="all", betas=(0.9, 0.999), eps=1e-8) -> ParticleResult:
    """Train N particles on the data (x (n, d), y (n,)); see the module docstring for the maths.

    width        N; may be omitted when ``init`` is given.
    method       ``gd`` (full-batch gradient descent) or ``adam``; ``lr`` is the step
                 size in mean-field time (see the module docstring).
    weight_decay lam >= 0; temperature T >= 0 (Langevin noise).
    seed         int: seeds the initial particles and the noise (independent streams of
                 ``np.random.SeedSequence(seed)``), identically on every rank.
    init         None: i.i.d. N(0, init_scale^2) particles from ``seed``
                 (:func:`init_particles`); or a :class:`Network` / an (N, d+2) particle
                 array holding *all* N neurons (e.g. a plateau to start from).
    trainable    ``all``, ``inner`` (w, b only) or ``outer`` (a only: a convex problem).
    record_every history is recorded at step 0, every ``record_every`` steps
                 (default steps // 100) and at the last step.
    time_limit   wall seconds (rank 0's clock); training stops after the step that
                 exceeds it.
    comm         mpi4py communicator over which the neurons are split (default
                 MPI.COMM_WORLD when mpi4py is importable, else serial).
    betas, eps   Adam's moment decay rates and denominator offset.

    Raises ValueError for arguments of the wrong type or range, and for a width whose
    particles would not fit in memory (:func:`flowfem.memory.require`), before any work.
    """
    if y is None:  # data.check reads None as "no targets", which training cannot do without
        raise ValueError("training data: targets y are missing; pass y of shape (n,) or (n, 1)")
    x, y = _data.check(x, y, what="training data")
    n, d = x.shape
    act, lss = _activation(activation), _loss(loss)
    lss.check_labels(y)
    if (x_test is None) != (y_test is None):
        raise ValueError("pass both x_test and y_test, or neither")
    if x_test is not None:
        x_test, y_test = _data.check(x_test, y_test, what="test data")
        if x_test.shape[1] != d:
            raise ValueError(f"x_test has {x_test.shape[1]} columns but x has {d}; use the same features")
        lss.check_labels(y_test)
    if method not in ("gd", "adam"):
        raise ValueError(f"method {method!r} is unknown: choose 'gd' or 'adam'")
    if trainable not in _TRAINABLE:
        raise ValueError(f"trainable {trainable!r} is unknown: choose 'all', 'inner' or 'outer'")
    positive("lr", lr)
    positive("weight_decay", weight_decay, strict=False)
    positive("temperature", temperature, strict=False)
    positive("init_scale", init_scale, strict=False)
    seed = arguments.seed(seed)
    if time_limit is not None:
        positive("time_limit", time_limit)
    if not (isinstance(steps, (int, np.integer)) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if record_every is None:
        record_every = max(1, steps // 100)
    if not (isinstance(record_every, (int, np.integer)) and record_every >= 1):
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1 and eps > 0):
        raise ValueError(f"Adam needs 0 <= betas < 1 and eps > 0, got betas={betas}, eps={eps}")

    comm = _world() if comm is None else comm
    if init is None:
        if arguments.integer("width", width, ">= 1 (the number of neurons)") < 1:
            raise ValueError(f"width must be an integer >= 1 (the number of neurons), got {width!r}")
        # on every rank: all N particles and the noise drawn for all, the rank's particles, Adam's moments,
        # the gradient and the velocity (about 10 arrays of N (d + 2) doubles), and three feature blocks
        # (sigma, sigma', a product) of at most max(_BLOCK, N) entries each (see _evaluate)
        features = 3 * 8.0 * min(n * width, max(_BLOCK, width))
        memory.require(80.0 * width * (d + 2) + features, f"training {width} particles",
                       f"use a smaller {spell('width', 'N')}", comm if _size(comm) > 1 else None)
        P_all = init_particles(int(width), d, seed, init_scale)
    else:
        if isinstance(init, Network):
            if act.name != init.activation.name:
                raise ValueError(
                    f"init network uses {init.activation.name} but activation={act.name!r}; "
                    "pass activation=init.activation"
                )
            P_all = from_network(init)
        else:
            P_all = np.array(init, dtype=float)
        if P_all.ndim != 2 or P_all.shape[1] != d + 2 or len(P_all) == 0:
            raise ValueError(
                f"init has shape {P_all.shape}: expected all N particles as (N, d+2) = (N, {d + 2}) "
                "rows (w, b, a), or a Network with input dimension d"
            )
        if not np.all(np.isfinite(P_all)):
            raise ValueError("init contains NaN or inf")
        if width is not None and width != len(P_all):
            raise ValueError(f"width={width} but init has {len(P_all)} neurons; omit width")
    N = len(P_all)

    mine = _slice(N, comm)
    P = P_all[mine].copy()
    del P_all
    mask = np.zeros(d + 2, dtype=bool)
    mask[_TRAINABLE[trainable]] = True
    noise_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    m = np.zeros_like(P)
    v = np.zeros_like(P)
    b1, b2 = betas

    history = {k: [] for k in ("step", "time", "objective", "loss", "grad_norm", "test_error")}
    status = "completed"
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by status
        for k in range(steps + 1):
            J, data, _, G = _evaluate(P, x, y, act, lss, weight_decay, N, comm, grad=True)
            V = N * G * mask  # mean-field velocity of the trained coordinates
            if not np.isfinite(J):
                status = "diverged"
            elif time_limit is not None and k < steps:
                elapsed = time.perf_counter() - t0
                if (comm.bcast(elapsed, root=0) if _size(comm) > 1 else elapsed) > time_limit:
                    status = "time_limit"
            last = k == steps or status != "completed"
            if k % record_every == 0 or last:
                gn = _allsum(comm, np.array([np.sum(V * V)]))[0]
                err = np.nan
                if x_test is not None:
                    ft = _evaluate(P, x_test, y_test, act, lss, 0.0, N, comm, grad=False)[2]
                    err = (np.sqrt(np.mean((ft - y_test) ** 2)) if lss.name == "squared"
                           else np.mean(np.where(ft >= 0, 1.0, -1.0) != y_test))
                for key, val in zip(history, (k, time.perf_counter() - t0, J, data,
                                              np.sqrt(gn / N), err)):
                    history[key].append(val)
            if last:
                break
            if method == "gd":
                P -= lr * V
            else:
                m = b1 * m + (1 - b1) * V
                v = b2 * v + (1 - b2) * V * V
                mh, vh = m / (1 - b1 ** (k + 1)), v / (1 - b2 ** (k + 1))
                P -= lr * mh / (np.sqrt(vh) + eps)
            if temperature > 0:
                xi = noise_rng.standard_normal((N, d + 2))[mine]
                P += np.sqrt(2 * lr * temperature) * xi * mask

    P_all = np.vstack(comm.allgather(P)) if _size(comm) > 1 else P
    hist = {k: np.asarray(vals, dtype=int if k == "step" else float) for k, vals in history.items()}
    settings = dict(width=N, activation=act.name, loss=lss.name, method=method, lr=lr,
                    steps=steps, weight_decay=weight_decay, temperature=temperature, seed=seed,
                    init_scale=init_scale, trainable=trainable, ranks=_size(comm))
    if status == "diverged":  # a network with NaN would not construct: keep the particles only
        return ParticleResult(None, P_all, hist, status, settings)
    return ParticleResult(to_network(P_all, act), P_all, hist, status, settings)


# -- the density of the particles --------------------------------------------------
#
# The particles are the measure mu = sum_i c_i delta_(theta_i), c_i = a_i / N (the output
# weights of ``network``), and f_mu(x) = integral sigma(theta . x~) d mu = network(x): the same
# formula as f_u for a density u d theta. :func:`density` projects mu onto P1 functions on a
# parameter mesh, so that particles and the FE density can be compared as fields.

PLACEMENTS = ("rescale", "clip", "drop")
_MARGIN = 3.0  # rescaled particles end this many cell diameters h inside the boundary (along their ray)
DENSITY_METHODS = ("lumped", "kernel")


def _lipschitz(act: Activation) -> float:
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
    ``h``         the largest cell diameter of the mesh.
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
        2 h bounds how far the lumped projection spreads a point mass, s = ``width`` is the
        kernel's standard deviation), plus L |x~| sum |c_i| shift_i for clipped particles, plus
        sum |c_i| |sigma(theta_i . x~)| of the dropped ones. The term in s is the continuum
        bound E|eps . x~| <= s |x~|; the rest is rigorous for exact integration of f_(u_h).
        """
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        xt = np.linalg.norm(np.hstack([x, np.ones((len(x), 1))]), axis=1)
        L = _lipschitz(self.activation)
        out = L * xt * ((2 * self.h + self.width) * self.variation
                        + float(np.sum(np.abs(self.c) * self.shift)))
        if self.dropped.any():
            th = self.theta0[self.dropped]
            out = out + np.abs(self.activation(x @ th[:, :-1].T + th[:, -1])) @ np.abs(self.c0[self.dropped])
        return out


def _geometry(mesh, cells):
    """Node coordinates (len(cells), nodes, gdim) of the given local cells."""
    gdim = mesh.geometry.dim
    return mesh.geometry.x[:, :gdim][mesh.geometry.dofmaps[0][cells]]


def _pull_back(mesh, cells, points, iterations=30):
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


def _clamp(X):
    """Reference coordinates moved into the reference simplex (barycentrics clipped, renormalised)."""
    lam = np.column_stack([1.0 - X.sum(axis=1), X])
    lam = np.clip(lam, 0.0, None)
    lam /= lam.sum(axis=1, keepdims=True)
    return lam[:, 1:]


class _Locator:
    """Which rank and which of its owned cells holds (or is closest to) each replicated point."""

    def __init__(self, mesh):
        import dolfinx.geometry as geo

        self.geo, self.mesh = geo, mesh
        tdim = mesh.topology.dim
        self.cells = np.arange(mesh.topology.index_map(tdim).size_local, dtype=np.int32)
        self.tree = geo.bb_tree(mesh, tdim, entities=self.cells)
        self.mid = geo.create_midpoint_tree(mesh, tdim, self.cells) if len(self.cells) else None
        self.comm = mesh.comm

    def __call__(self, points):
        """(owner rank (npts,), local cell on the owner or -1 elsewhere, distance^2 to the mesh)."""
        pts = np.zeros((len(points), 3))
        pts[:, : points.shape[1]] = points
        tdim = self.mesh.topology.dim
        if len(self.cells) and len(points):
            cell = self.geo.compute_closest_entity(self.tree, self.mid, self.mesh, pts).astype(np.int32)
            d2 = self.geo.squared_distance(self.mesh, tdim, cell, pts)
        else:
            cell, d2 = np.full(len(points), -1, np.int32), np.full(len(points), np.inf)
        all_d2 = np.array(self.comm.allgather(d2)).reshape(self.comm.size, len(points))
        owner = np.argmin(all_d2, axis=0)  # ties: the lowest rank
        mine = owner == self.comm.rank
        return owner, np.where(mine, cell, -1), all_d2.min(axis=0)


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
      (unweighted: f_u integrates against d theta). It keeps the sign of mu, conserves mass,
      integral u_h = sum c_i, and first moments, and spreads each point mass over the cells
      around it, no further than 2 h.
    * ``kernel``: then smoothed with the kernel of (1 - (s^2/2) Laplacian)^(-1) (natural
      boundary condition): (M_lumped + (s^2/2) K) u = b. In free space the kernel has standard
      deviation s = ``width`` in every coordinate; the boundary reflects it, so mass is conserved.

    Placing the particles:

    * circle and sphere: only directions exist; theta_i -> theta_i / |theta_i| with
      c_i -> c_i |theta_i|^p (sigma(r z) = r^p sigma(z)), which leaves the network unchanged;
      homogeneous activations only (as :mod:`flowfem.readout` does in reverse).
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
    from flowfem import mpi as _mpi  # noqa: F401  (first: loads MPI before dolfinx)

    import basix.ufl
    import dolfinx.fem
    import dolfinx.fem.petsc
    import dolfinx.la
    import dolfinx.la.petsc
    import ufl
    from mpi4py import MPI
    from petsc4py import PETSc
    from flowfem.space import check_parameter_dim

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
    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    theta0 = np.column_stack([net.W, net.b])
    c0 = net.a.copy()
    check_parameter_dim(net.input_dim, gdim, "the network")
    directions = tdim < gdim
    theta, c = theta0.copy(), c0.copy()
    N = len(c)
    moved = np.zeros(N, dtype=bool)
    dropped = np.zeros(N, dtype=bool)
    if directions:
        act.require_homogeneous("circle" if tdim == 1 else "sphere")
        r = np.linalg.norm(theta, axis=1)
        zero = r == 0  # sigma(0 . x~) = 0: such a neuron contributes nothing
        theta[zero] = np.eye(gdim)[-1]
        r_safe = np.where(zero, 1.0, r)
        theta[~zero] /= r_safe[~zero, None]
        c = np.where(zero, 0.0, c * r_safe ** act.degree)
        moved = r != 1.0

    locate = _Locator(mesh)
    h = mesh.h(tdim, locate.cells) if len(locate.cells) else np.zeros(1)
    h = comm.allreduce(float(h.max(initial=0.0)), op=MPI.MAX)
    x0 = mesh.geometry.x[:, :gdim]
    lo = x0.min(axis=0) if len(x0) else np.full(gdim, np.inf)
    hi = x0.max(axis=0) if len(x0) else np.full(gdim, -np.inf)
    comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    tol2 = (1e-9 * float(np.linalg.norm(hi - lo))) ** 2
    owner, cell, d2 = locate(theta)
    out = (d2 > tol2) if not directions else np.zeros(N, dtype=bool)
    if out.any():
        idx = np.flatnonzero(out)
        if outside == "rescale":
            if locate(np.zeros((1, gdim)))[2][0] > tol2:
                raise ValueError("outside='rescale' moves neurons towards the origin, which is not in this "
                                 "parameter domain: use 'clip' or 'drop'")
            t_in, t_out = np.zeros(len(idx)), np.ones(len(idx))
            for _ in range(60):  # bisection on the ray: t_in theta inside, t_out theta outside
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
        owner, cell, d2 = locate(theta)

    # reference coordinates on the owning rank, the placed point x(X), shared with every rank
    mine = np.flatnonzero(cell >= 0)
    placed = np.zeros((N, gdim))
    X = np.zeros((len(mine), tdim))
    if len(mine):
        X = _pull_back(mesh, cell[mine], theta[mine])
        if outside == "clip" or directions:
            X = _clamp(X)
        else:  # inside to rounding: only clamp away round-off
            X = np.where(np.abs(_clamp(X) - X) < 1e-8, _clamp(X), X)
        phi = mesh.ufl_domain().ufl_coordinate_element().basix_element.tabulate(0, X)[0, :, :, 0]
        placed[mine] = np.einsum("pk,pkg->pg", phi, _geometry(mesh, cell[mine]))
    comm.Allreduce(MPI.IN_PLACE, placed, op=MPI.SUM)
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
    dolfinx.fem.assemble_vector(m.x.array, dolfinx.fem.form(v * ufl.dx))
    m.x.scatter_reverse(dolfinx.la.InsertMode.add)
    u = dolfinx.fem.Function(V1, name="particles")
    nown = V1.dofmap.index_map.size_local
    if method == "lumped":
        u.x.array[:nown] = b.x.array[:nown] / m.x.array[:nown]
    else:
        w = ufl.TrialFunction(V1)
        A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(0.5 * width**2 * ufl.inner(ufl.grad(w), ufl.grad(v)) * ufl.dx))
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
    return ParticleDensity(u, theta, c, moved, dropped, shift, method, width, h, outside, act, directions,
                           theta0, c0)
