"""Readout: a density u on parameter space -> a finite network f_N.

A quadrature rule (theta_i, q_i) on Omega turns the network of a density,

    f_u(x) = integral_Omega sigma(theta . x~) u(theta) d theta,

into a shallow network of width N (docs/theory.md §9):

    f_N(x) = sum_i a_i sigma(theta_i . x~),   w_i, b_i = theta_i,  a_i = q_i u(theta_i).

Three rules, each with the rate at which f_N approaches f_u:

* ``quadrature``: basix's Gauss rule of a given degree on every cell of
  the density's mesh, optionally on each of m^D congruent sub-simplices of a
  cell (``subdivisions`` = m, D the cell dimension). Deterministic; the width
  is set by the mesh and the rule, N = cells x points per cell x m^D. The
  error is O(h^2) in the point spacing h ~ N^(-1/D) for ReLU (its kink
  limits every rule to second order) and O(h^(k+1)) for a smooth sigma and a
  rule of degree k: in a 2-D parameter mesh (d = 1) the midpoint rule
  (degree 1, one point per cell) converges like O(1/N). With the rule of
  the solve's data operator (the default when reading out a
  :class:`~flowfem.problem.Result`) the network *is* the discrete f_U that
  the solve fitted, to rounding.
* ``sample``: N neurons drawn independently from |u| (seeded), with
  a_i = sign(u(theta_i)) ||u||_1 / N. Monte Carlo: unbiased, E f_N = f_u,
  with RMS error sqrt(V(x) / N) = O(N^(-1/2)) in any dimension, where
  V(x) = ||u||_1 integral |u| sigma(theta . x~)^2 - f_u(x)^2: large when
  u is signed with much cancellation (||u||_1 >> |f_u|). |u| d theta is
  represented by the quadrature rule above: the neurons are drawn from its
  points with probabilities |g_q| / sum |g|, g_q = q_q u(theta_q), so
  E f_N equals that rule's network exactly.
* ``refit``: neurons from either rule (``points``), output weights re-fitted
  by regularised least squares on the training data,

      min_a  (1/2n) sum_j (f_N(x_j) - y_j)^2 + (alpha/2) sum_i omega(theta_i) a_i^2 / q_i,

  the discrete E_alpha on those neurons (a_i / q_i is the density value, so
  the penalty is the quadrature of ||u||^2_{L^2_omega}; a network carries no
  gradient, so the kappa term is dropped). It is the best width-N network on
  those neurons: its objective is never above that of the quadrature or
  sample weights. It does not converge to f_u: as N grows it tends to the
  minimiser of E_alpha with kappa = 0.

Several outputs (a fit with y (n, m): m densities u_1..u_m on one mesh): the
neurons are shared and a_ik = q_i u_k(theta_i), an (N, m) array of output
weights (:class:`flowfem.network.Network` of m outputs). ``sample`` draws from
sum_k |u_k| (probabilities sum_k |g_qk| / sum |g|, importance weights as above,
so E f_N = f_u for every output) and ``refit`` solves the least-squares problem
for the m columns of y at once (one factorisation).

Homogeneous activations on the circle and sphere (densities of directions):
the neurons are unit directions theta_i / |theta_i| and a_i carries the
factor |theta_i|^p (sigma(r z) = r^p sigma(z)), so nothing changes in f_N.

Parallel: each rank evaluates the rule on its own cells; the neurons are
allgathered and put in the order of the mesh's original (input) cell index,
so every rank holds the same network and it does not depend on the number
of ranks. Sampling draws from that gathered list with a NumPy Generator
seeded identically on every rank; the refit is solved on rank 0 and
broadcast. Memory: every rank holds all quadrature points (as it must hold
the network), O(N (d + 3)) doubles; a width that would not fit in memory is
refused before anything is allocated (:func:`readout_bytes`,
:func:`flowfem.memory.require`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import basix  # noqa: E402
import dolfinx.fem  # noqa: E402

from flowfem import data as _data  # noqa: E402
from flowfem import arguments, memory  # noqa: E402
from flowfem.arguments import at_least, bounded, spell, unknown  # noqa: E402
from flowfem.activations import Activation, activation as _activation  # noqa: E402
from flowfem.network import Network  # noqa: E402
from flowfem.operator.features import evaluate  # noqa: E402
from flowfem.sobolev import Weight  # noqa: E402
from flowfem.space import chart_of  # noqa: E402

RULES = ("quadrature", "sample", "refit")
POINTS = ("quadrature", "sample")
REFIT_LIMIT = 5 * 10**7  # largest n * N for the dense least-squares refit


# -- reference rules -------------------------------------------------------------------


def reference_rule(cell: str, degree: int, subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Points X (m^D nq, D) and weights of the composite Gauss rule on the reference cell.

    The reference simplex is split into ``subdivisions``^D congruent simplices (Freudenthal's
    subdivision: the Kuhn simplex 1 >= t_1 >= ... >= t_D >= 0, with t_k = xi_k + ... + xi_D,
    cut by the grid of cubes of side 1/m) and basix's rule of ``degree`` is mapped into each:
    basix's default rule (the one :class:`flowfem.operator.Quadrature` uses), or its collapsed
    Gauss-Jacobi rule where the default has a non-positive weight (tetrahedra, degrees 3, 7, 8).
    """
    if cell not in ("interval", "triangle", "tetrahedron"):
        raise ValueError(f"readout needs simplex cells (interval, triangle, tetrahedron), not {cell}")
    degree, m = _check_rule(degree, subdivisions)
    X, q = basix.make_quadrature(getattr(basix.CellType, cell), degree)
    if q.min() <= 0:  # e.g. the 5-point degree-3 rule on tetrahedra: neurons need weights q_i > 0
        X, q = basix.make_quadrature(getattr(basix.CellType, cell), degree, rule=basix.QuadratureType.gauss_jacobi)
    D = X.shape[1]
    if m == 1:
        return X, q
    points, weights = [], []
    for c in itertools.product(range(m), repeat=D):
        for perm in itertools.permutations(range(D)):
            V = [np.array(c, float)]
            for ax in perm:
                V.append(V[-1] + np.eye(D)[ax])
            V = np.array(V) / m  # vertices in Kuhn coordinates t
            centre = V.mean(axis=0)
            if not np.all(np.diff(centre) < 0):  # outside 1 >= t_1 >= ... >= t_D >= 0
                continue
            xi = V - np.append(V[:, 1:], np.zeros((D + 1, 1)), axis=1)  # xi_k = t_k - t_(k+1)
            E = (xi[1:] - xi[0]).T  # (D, D): reference simplex -> this sub-simplex
            points.append(xi[0] + X @ E.T)
            weights.append(q * abs(np.linalg.det(E)))
    return np.vstack(points), np.concatenate(weights)


def _check_rule(degree, subdivisions) -> tuple[int, int]:
    """(degree, subdivisions) as ints; ValueError unless degree >= 0 and subdivisions >= 1 are integers."""
    return (at_least("degree", degree, 0, meaning="the quadrature degree; 1 = midpoint rule"),
            at_least("subdivisions", subdivisions, 1))


def rule_size(tdim: int, degree: int, subdivisions: int = 1) -> int:
    """An upper bound of the points of :func:`reference_rule` on a simplex of dimension tdim:
    ((degree + 2) // 2)^tdim points (the collapsed Gauss-Jacobi rule; basix's default rules of
    low degree have fewer) in each of subdivisions^tdim sub-simplices."""
    return ((degree + 2) // 2) ** tdim * subdivisions**tdim


def readout_bytes(neurons: int, gdim: int, tdim: int) -> float:
    """An estimate of the peak memory of :func:`quadrature_neurons` per rank for N = ``neurons``:
    8 (3 gdim + gdim tdim + tdim^2 + 14) bytes per neuron, counting the points, Jacobians,
    |det J| and values of the rule on the rank's cells, the gathered copies (every rank holds
    all neurons) and the network. Measured (peak RSS, one rank, readout and save): 192 (box,
    d = 1), 272 (box, d = 2) and 256 (sphere) bytes per neuron against 224, 328 and 264 here."""
    return 8.0 * (3 * gdim + gdim * tdim + tdim**2 + 14) * neurons


# -- neurons --------------------------------------------------------------------------


@dataclass
class Neurons:
    """Neurons theta_i, the measure q_i each one carries and the density value u_i: a_i = q_i u_i.

    Identical on every rank (gathered, in a rank-count-independent order).
    """

    theta: np.ndarray  # (N, d + 1) points of parameter space, as the mesh places them
    weight: np.ndarray  # (N,) q_i > 0: quadrature weight (or 1 / (N p_i) for sampled neurons)
    value: np.ndarray  # (N,) u(theta_i), or (N, m): u_k(theta_i) for m outputs
    activation: Activation
    directions: bool = False  # True on the circle and sphere: neurons become unit directions

    @property
    def width(self) -> int:
        return self.theta.shape[0]

    @property
    def a(self) -> np.ndarray:
        """Output weights q_i u_i for the neurons theta_i as they stand: (N,), or (N, m)."""
        return self.weight.reshape((-1,) + (1,) * (self.value.ndim - 1)) * self.value

    def network(self) -> Network:
        """The Network sum_i a_i sigma(theta_i . x~) (unit directions on the circle and sphere)."""
        theta, a = self.theta, self.a
        if self.directions:
            r = np.linalg.norm(theta, axis=1)
            scale = r ** self.activation.degree
            theta, a = theta / r[:, None], a * scale.reshape((-1,) + (1,) * (a.ndim - 1))
        return Network(theta[:, :-1], theta[:, -1], a, self.activation)

    def features(self, x: np.ndarray) -> np.ndarray:
        """sigma(theta_i . x~_j) as an (n, N) array."""
        return evaluate(self.activation, x, self.theta)


def quadrature_neurons(u: dolfinx.fem.Function | list, activation: Activation | str, degree: int | None = None,
                       subdivisions: int = 1) -> Neurons:
    """The composite Gauss rule of ``degree`` on the cells of u's mesh, gathered on every rank.

    ``u`` a Function, or a list of m Functions on one space (m outputs: values (N, m)).
    ``degree`` None is twice the element degree: the rule of :class:`flowfem.operator.Quadrature`.
    """
    act = _activation(activation)
    us = list(u) if isinstance(u, (list, tuple)) else [u]
    V = us[0].function_space
    if any(w.function_space is not V for w in us):
        raise ValueError("readout of several outputs needs their densities on one function space")
    mesh = V.mesh
    chart = chart_of(mesh)  # mesh coordinates -> neurons, d theta = lambda^n dx (flowfem.space)
    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    D = chart.neuron_dim(gdim)  # d + 1
    directions = tdim < D
    if directions:
        act.require_homogeneous("s3" if chart.truncated else "circle" if tdim == 1 else "sphere")
    if degree is None:
        degree = 2 * V.element.basix_element.degree
    if V.element.needs_dof_transformations or V.dofmap.index_map_bs != 1:
        raise ValueError("readout needs a scalar Lagrange density (the space of a flowfem Problem)")
    degree, subdivisions = _check_rule(degree, subdivisions)
    width = mesh.topology.index_map(tdim).size_global * rule_size(tdim, degree, subdivisions)
    memory.require(readout_bytes(width, D, tdim),  # before the rule: its points alone may not fit
                   f"a readout with about {width:.2g} neurons (cells x points per cell of degree {degree} x "
                   f"subdivisions^{tdim})", "use fewer subdivisions or a lower quadrature degree", mesh.comm)
    X, q = reference_rule(mesh.topology.cell_type.name, degree, subdivisions)
    num_local = mesh.topology.index_map(tdim).size_local
    for w in us:
        w.x.scatter_forward()
    # the geometry map theta(X) = sum_k phi_k(X) x_k of every local cell, its Jacobian and
    # |det J| (the length or area element on the circle and sphere), and u(theta(X)):
    # tabulated with basix, so any rule costs no compilation
    phi = mesh.ufl_domain().ufl_coordinate_element().basix_element.tabulate(1, X)[..., 0]
    xg = mesh.geometry.x[:, :gdim][mesh.geometry.dofmaps[0][:num_local]]  # (cells, nodes, gdim)
    theta = np.einsum("pk,ckg->cpg", phi[0], xg)
    J = np.einsum("dpk,ckg->cpgd", phi[1:], xg)
    detJ = np.sqrt(np.linalg.det(np.einsum("cpgd,cpge->cpde", J, J)))
    x = theta.reshape(-1, gdim)
    detJ = detJ * chart.conformal(x).reshape(detJ.shape) ** tdim  # d theta = lambda^n |det J| dX
    theta = chart.point(x).reshape(*theta.shape[:2], D)  # the neurons theta(x)
    psi = V.element.basix_element.tabulate(0, X)[0, :, :, 0]
    values = [np.einsum("pk,ck->cp", psi, w.x.array[V.dofmap.list[:num_local]])[..., None] for w in us]
    vals = np.concatenate([theta, detJ[..., None]] + values, axis=2)
    original = np.asarray(mesh.topology.original_cell_index, dtype=np.int64)
    if original.size < num_local:  # a mesh made without input indices (e.g. refined): global index
        original = mesh.topology.index_map(tdim).local_range[0] + np.arange(num_local, dtype=np.int64)
    local = (original[:num_local], vals)
    parts = mesh.comm.allgather(local)
    key = np.concatenate([p[0] for p in parts])
    vals = np.concatenate([p[1] for p in parts]) if key.size else vals
    vals = vals[np.argsort(key, kind="stable")].reshape(-1, D + 1 + len(us))  # cell by input index, then point
    return Neurons(
        theta=np.ascontiguousarray(vals[:, :D]),
        weight=vals[:, D] * np.tile(q, len(key)),
        value=vals[:, D + 1].copy() if isinstance(u, dolfinx.fem.Function) else vals[:, D + 1:].copy(),
        activation=act,
        directions=directions,
    )


def sample_neurons(base: Neurons, width: int, seed: int = 0) -> Neurons:
    """N = ``width`` neurons drawn from the points of ``base`` with probabilities |g_q| / sum |g|.

    g_q = q_q u_q; the sampled neuron carries a_i = sign(g_q) sum |g| / N (its weight is the
    importance weight q_q / (N p_q)). For m outputs (values (N, m)) the probabilities are
    sum_k |g_qk| / sum |g| and a_ik = g_qk / (N p_q). Same seed and same base: same neurons on
    every rank.
    """
    width = at_least("width", width, 1, meaning="the number of neurons to draw")
    gdim = base.theta.shape[1]  # the drawn indices, their points, weights and values, and the network
    memory.require(8.0 * (2 * gdim + 8) * width, f"a sample of width {width}",
                   f"use a smaller {spell('width', 'N')}")
    g = base.a
    mass = np.abs(g).reshape(g.shape[0], -1).sum(axis=1)
    total = mass.sum()
    if not total > 0:
        raise ValueError("the density is zero at every quadrature point: there is nothing to sample from")
    p = mass / total
    rng = np.random.default_rng(arguments.seed(seed))
    idx = np.sort(rng.choice(p.size, size=int(width), p=p))
    return replace(base, theta=base.theta[idx], weight=base.weight[idx] / (width * p[idx]),
                   value=base.value[idx])


def omega(weight: Weight | str, theta: np.ndarray) -> np.ndarray:
    """The weight omega(theta) of H^1_omega at the rows of theta."""
    w = Weight.parse(weight)
    if w.kind == "uniform":
        return np.ones(theta.shape[0])
    return np.exp(-np.sum(theta**2, axis=1) / (2 * w.scale**2))


def refit(neurons: Neurons, x: np.ndarray, y: np.ndarray, alpha: float,
          weight: Weight | str = "uniform", comm=None) -> Neurons:
    """New density values u_i on the same neurons: the regularised least-squares fit to (x, y).

    Minimises (1/2n) |S diag(q) v - y|^2 + (alpha/2) sum_i omega_i q_i v_i^2 over v (a = q v);
    alpha = 0 gives the minimum-norm least-squares fit. Solved densely on rank 0 of ``comm``
    (then broadcast) in the smaller of the N x N and n x n forms. y (n, m): the m outputs'
    problems, one per column, share the matrix and are solved together (values (N, m)).
    """
    x, y = _data.check(x, y, neurons.theta.shape[1] - 1, what="refit data")
    alpha = bounded("alpha", alpha, 0, meaning="the refit's regularisation; 0: plain least squares")
    n, N = x.shape[0], neurons.width
    if n * N > REFIT_LIMIT:
        raise ValueError(
            f"refit forms the dense {n} x {N} feature matrix, more than {REFIT_LIMIT:.0e} entries: "
            "use fewer data points, a coarser rule or a smaller sample width"
        )

    def solve() -> np.ndarray:
        scale = np.sqrt(neurons.weight / omega(weight, neurons.theta))  # v = z * scale / q
        C = evaluate(neurons.activation, x, neurons.theta) * scale
        if alpha == 0:
            z = np.linalg.lstsq(C, y, rcond=None)[0]
        elif N <= n:
            z = np.linalg.solve(C.T @ C + n * alpha * np.eye(N), C.T @ y)
        else:
            z = C.T @ np.linalg.solve(C @ C.T + n * alpha * np.eye(n), y)
        factor = scale / neurons.weight
        return z * (factor if z.ndim == 1 else factor[:, None])

    if comm is None or comm.size == 1:
        value = solve()
    else:
        value = mpi.on_root(comm, solve)
    return replace(neurons, value=value)


def objective(network: Network | Neurons, x, y, alpha: float = 0.0, weight: Weight | str = "uniform",
              loss: str = "squared") -> float:
    """(1/n) sum_j l(f_N(x_j), y_j), plus (alpha/2) sum_i omega_i a_i^2 / q_i when given Neurons;
    for m outputs the sum over them (as E_alpha of an m-output fit).

    The objective that ``refit`` minimises (squared loss); a Network alone carries no q_i, so
    for it only the data term is returned.
    """
    from flowfem.loss import loss as _loss

    x, y = _data.check(x, y, what="objective data")
    if isinstance(network, Neurons):
        w = omega(weight, network.theta) * network.weight
        pen = np.sum(w.reshape((-1,) + (1,) * (network.value.ndim - 1)) * network.value**2)
        f = network.features(x) @ network.a
        return float(np.sum(np.mean(_loss(loss).value(f, y), axis=0)) + 0.5 * alpha * pen)
    return float(np.sum(np.mean(_loss(loss).value(network(x), y), axis=0)))


# -- the front door -----------------------------------------------------------------------


def _comm(u):
    """The communicator of a density u (a Function, or a list of them)."""
    return (u[0] if isinstance(u, (list, tuple)) else u).function_space.mesh.comm


def readout(source, rule: str = "quadrature", *, activation: Activation | str | None = None,
            width: int | None = None, degree: int | None = None, subdivisions: int = 1, seed: int = 0,
            points: str = "quadrature", x=None, y=None, alpha: float | None = None,
            weight: Weight | str | None = None, classes=None, loss: str | None = None) -> Network:
    """The finite network read out of a density by ``rule`` (quadrature, sample or refit).

    ``source`` is a :class:`~flowfem.problem.Result` (activation, data, alpha and weight are
    taken from its problem; the default rule is the solve's own, so the network reproduces
    ``result.predict`` to rounding; a Result of m outputs gives a network of m outputs) or a
    dolfinx Function u, or a list of m Functions on one space (then ``activation`` is required, and
    ``loss`` names the loss it was fitted with, as its density file records it: default squared, or
    softmax with ``classes``).

    * ``quadrature``: ``degree`` (basix Gauss-Jacobi degree; 1 is the midpoint rule, one
      neuron per cell) and ``subdivisions`` m set N = cells x points x m^D; ``width`` must be
      left None.
    * ``sample``: ``width`` neurons drawn from |u| with ``seed``; |u| is represented by the
      quadrature rule of ``degree`` and ``subdivisions``.
    * ``refit``: neurons from ``points`` ("quadrature" or "sample", with the arguments
      above), output weights refitted on (x, y) with ``alpha`` and ``weight`` (defaults: the
      Result's training data, alpha and weight; for a Function x, y and alpha are required).

    A softmax fit (:class:`flowfem.problem.ClassifierResult`, or the list of its C densities with
    ``classes`` (C,), the labels in the densities' order) gives a classifier: a (N, C), the logits,
    and the network records ``classes``. Its predictions equal the Result's exactly (to rounding) with
    the solve's own quadrature rule, the default: that rule is how Phi integrates the densities.
    ``refit`` is refused for it (ValueError): a least-squares refit of logits to labels has no meaning.

    The same network is returned on every rank and does not depend on the number of ranks.
    """
    if rule not in RULES:
        raise ValueError(unknown("readout rule", rule, RULES))
    if points not in POINTS:
        raise ValueError(unknown("readout points", points, POINTS))
    if isinstance(source, dolfinx.fem.Function) or (isinstance(source, (list, tuple)) and source
                                                       and all(isinstance(w, dolfinx.fem.Function) for w in source)):
        if activation is None:
            raise ValueError("readout of a dolfinx Function needs the activation (e.g. activation='relu')")
        u, act = source, _activation(activation)
        loss_name = loss if loss is not None else "squared" if classes is None else "softmax"
        data_x = data_y = None
        default_alpha, default_weight = None, "uniform"
    elif hasattr(source, "densities") and hasattr(source, "problem") and hasattr(source, "functional"):
        problem, E = source.problem, source.functional
        u = source.densities[0] if len(source.densities) == 1 else source.densities
        act, loss_name = problem.activation, problem.loss.name
        if activation is not None and _activation(activation).name != act.name:
            raise ValueError(f"activation {activation!r} differs from the problem's {act.name}; leave it out")
        if degree is None:
            degree = E.Phi.quadrature.degree
        if classes is not None:
            raise ValueError("classes come from the Result (result.classes); leave classes out")
        if loss is not None:
            raise ValueError("the loss comes from the Result (result.problem.loss); leave loss out")
        classes = getattr(source, "classes", None)
        data_x, data_y = E.Phi.x, getattr(E, "y", None)
        default_alpha, default_weight = problem.alpha, problem.H.weight
    else:
        raise TypeError(f"readout needs a flowfem Result or a dolfinx Function, not {type(source).__name__}")

    if rule == "quadrature" or (rule == "refit" and points == "quadrature"):
        if width is not None:
            raise ValueError(
                f"{spell('width', repr(width))}: a quadrature readout's width is set by the mesh and the rule "
                f"(cells x points per cell x subdivisions^D); choose {spell('degree', 'K')} and "
                f"{spell('subdivisions', 'M')}, or use {spell('rule', repr('sample'))} for a given width"
            )
    elif width is None:
        raise ValueError(f"sampling needs the width N: pass {spell('width', 'N')} (the number of neurons to draw)")

    if classes is not None and len(np.asarray(classes)) != (len(u) if isinstance(u, (list, tuple)) else 1):
        raise ValueError(f"{len(np.asarray(classes))} classes for {len(u) if isinstance(u, (list, tuple)) else 1} "
                         "densities: give one label per density, in the densities' order")
    neurons = quadrature_neurons(u, act, degree, subdivisions)
    if rule == "sample" or (rule == "refit" and points == "sample"):
        neurons = sample_neurons(neurons, width, seed)
    if rule == "refit":
        if loss_name != "squared":
            raise ValueError(f"refit is a least-squares fit; the problem's loss is {loss_name}: use quadrature or sample")
        x = data_x if x is None else x
        y = data_y if y is None else y
        alpha = default_alpha if alpha is None else alpha
        if x is None or y is None or alpha is None:
            raise ValueError("refit of a dolfinx Function needs the training data x, y and alpha")
        neurons = refit(neurons, x, y, alpha, default_weight if weight is None else weight,
                        _comm(u))
    # the loss recorded: a logistic network's f is a score, whose accuracy (not RMSE) predict reports
    return replace(neurons.network(), classes=None if classes is None else np.asarray(classes), loss=loss_name)
