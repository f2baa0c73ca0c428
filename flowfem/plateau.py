"""Landscape of a finite network's objective: splitting plateaus and the inner Hessian.

**Objective.** For a shallow network f(x) = sum_i a_i sigma(theta_i . x~)
(theta_i = (w_i, b_i), x~ = (x, 1)) and data (x_j, y_j), j = 1..n,

    L(p) = (1/n) sum_j l(f(x_j), y_j) + (lambda/2) |p|^2,

with p = (W.ravel(), b, a) (see :func:`parameters`; neuron i's weights are
p[i*d:(i+1)*d], its bias p[N*d + i], its output weight p[N*d + N + i]).
With l'_j, l''_j the loss derivatives in f and J_j = grad_p f(x_j):

    grad L = (1/n) sum_j l'_j J_j + lambda p,
    hess L = (1/n) sum_j (l''_j J_j J_j^T + l'_j hess_p f(x_j)) + lambda I,

where hess_p f(x_j) is block diagonal over neurons with blocks
d2f/dtheta_i^2 = a_i sigma''_ji x~_j x~_j^T, d2f/da_i dtheta_i = sigma'_ji x~_j.

**Splitting.** Duplicating neuron i of a network into two neurons with the
same theta_i and output weights mu a_i, (1 - mu) a_i leaves f unchanged for
every mu; if the narrow network is stationary (without weight decay, which
breaks the invariance), so is every point of this line (the plateau).
Along the splitting direction theta_i -> theta_i + (1 - mu) eps,
theta_new -> theta_i - mu eps the first variation of f cancels and

    L(t eps) = L + t^2 mu (1 - mu) eps^T H eps / 2 + O(t^3),
    i.e. v^T (hess L) v = mu (1 - mu) eps^T H eps  (v the split direction),

with the inner Hessian of neuron i

    H = a_i (1/n) sum_j l'_j sigma''(theta_i . x~_j) x~_j x~_j^T.

In the basis {narrow directions, split directions, line tangent} the Hessian
of the split network is block diagonal, diag(hess L_narrow, mu (1 - mu) H, 0)
(Fukumizu & Amari 2000), so by Sylvester's law of inertia a point of the line
over a strict local minimum is a minimum (to second order, up to the flat
line itself) iff mu (1 - mu) H is positive definite, a saddle as soon as it
has a negative eigenvalue; mu in {0, 1} and singular H are degenerate (second
order says nothing).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from flowfem import memory
from flowfem import progress as progress_
from flowfem.arguments import distinct, named, positive, read_number
from flowfem.data import check as _check
from flowfem.loss import loss as _loss
from flowfem.network import Network
from flowfem.operator.features import augment, evaluate

MU_MAX = 1e50  # the largest |mu| of plateau_report: far beyond any split of interest; |v|^2 ~ mu^4 stays finite

# -- the objective of the discrete problem -------------------------------------


def parameters(network: Network) -> np.ndarray:
    """p = (W.ravel(), b, a), length N (d + 2)."""
    return np.concatenate([network.W.ravel(), network.b, network.a])


def with_parameters(network: Network, p: np.ndarray) -> Network:
    """The network of the same shape and activation with parameters p = (W.ravel(), b, a)."""
    N, d = network.W.shape
    p = np.asarray(p, dtype=float)
    if p.shape != (N * (d + 2),):
        raise ValueError(f"parameter vector has shape {p.shape}; this network needs ({N * (d + 2)},)")
    return Network(p[:N * d].reshape(N, d), p[N * d:N * d + N], p[N * d + N:], network.activation)


def _data(network: Network, x, y, loss):
    """Inputs (n, d), targets (n,) checked against the network and the loss, and the loss.
    The landscape is that of one output: ValueError for a network or targets with m >= 2."""
    if network.outputs > 1:
        raise ValueError(f"the landscape tools take a network with one output; this one has {network.outputs}")
    x = network._check_x(x)
    y = _check(x, y, network.input_dim, what="the data", takes="flowfem.plateau", outputs=1)[1]
    if y is None:
        raise ValueError(f"targets y are missing; expected ({x.shape[0]},), one per input row")
    ell = _loss(loss)
    ell.check_labels(y)
    return x, y, ell


def _features(network: Network, x: np.ndarray):
    """x~ (n, d+1), sigma, sigma', sigma'' of z_ji = theta_i . x~_j (each (n, N))."""
    return (augment(x),) + evaluate(network.activation, x, network.theta, (0, 1, 2))


def _jacobian(network: Network, x: np.ndarray, s: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """J from the features sigma (s) and sigma' (s1); see :func:`jacobian`."""
    n = x.shape[0]
    da = s1 * network.a
    return np.hstack([(da[:, :, None] * x[:, None, :]).reshape(n, -1), da, s])


def jacobian(network: Network, x) -> np.ndarray:
    """J_jk = d f(x_j) / d p_k, (n, P): a_i sigma'_ji x_j (W_i), a_i sigma'_ji (b_i), sigma_ji (a_i)."""
    x = network._check_x(x)
    _, s, s1, _ = _features(network, x)
    return _jacobian(network, x, s, s1)


def objective(network: Network, x, y, loss="squared", weight_decay: float = 0.0) -> float:
    """L = (1/n) sum_j l(f(x_j), y_j) + (weight_decay/2) |p|^2."""
    x, y, ell = _data(network, x, y, loss)
    p = parameters(network)
    return float(np.mean(ell.value(network(x), y)) + 0.5 * weight_decay * p @ p)


def gradient(network: Network, x, y, loss="squared", weight_decay: float = 0.0) -> np.ndarray:
    """grad L = (1/n) sum_j l'(f(x_j), y_j) J_j + weight_decay p, in the layout of :func:`parameters`."""
    x, y, ell = _data(network, x, y, loss)
    _, s, s1, _ = _features(network, x)
    J = _jacobian(network, x, s, s1)
    return J.T @ ell.d1(s @ network.a, y) / x.shape[0] + weight_decay * parameters(network)


def hessian(network: Network, x, y, loss="squared", weight_decay: float = 0.0) -> np.ndarray:
    """hess L = (1/n) sum_j (l''_j J_j J_j^T + l'_j hess_p f(x_j)) + weight_decay I (module docstring).

    Dense, P x P with P = N (d + 2): a network too wide for it to fit in memory is refused
    (ValueError) before anything is allocated.
    """
    x, y, ell = _data(network, x, y, loss)
    n = x.shape[0]
    N, d = network.W.shape
    P = N * (d + 2)
    # the Hessian, its weighted copy and an eigendecomposition's eigenvectors and workspace (4 P^2),
    # the Jacobian and its weighted copy (2 n P), the features (4 n N)
    memory.require(8.0 * (4 * P * P + 2 * n * P + 4 * n * N), f"the dense Hessian of a network of width {N} "
                   f"({P} parameters)", "use a narrower network (the plateau analysis is for small widths)")
    xt, s, s1, s2 = _features(network, x)
    J = _jacobian(network, x, s, s1)
    f = s @ network.a
    c = ell.d1(f, y) / n
    Hm = (J.T * (ell.d2(f, y) / n)) @ J
    # curvature of f itself, block diagonal over neurons:
    T = np.einsum("j,ji,jp,jq->ipq", c, s2, xt, xt) * network.a[:, None, None]  # d2/dtheta_i^2
    u = np.einsum("j,ji,jp->ip", c, s1, xt)  # d2/da_i dtheta_i
    for i in range(N):
        th = np.r_[np.arange(i * d, (i + 1) * d), N * d + i]
        ia = N * d + N + i
        Hm[np.ix_(th, th)] += T[i]
        Hm[th, ia] += u[i]
        Hm[ia, th] += u[i]
    return Hm + weight_decay * np.eye(Hm.shape[0])


@dataclass
class Minimisation:
    """Result of :func:`minimise`: the network, the gradient norm, the iterations and whether gtol was met."""

    network: Network
    gradient_norm: float
    iterations: int
    converged: bool


def minimise(network: Network, x, y, loss="squared", weight_decay: float = 0.0,
             gtol: float = 1e-10, maxiter: int = 500) -> Minimisation:
    """Saddle-free Newton on L: p <- p - t V |Lambda|^-1 V^T grad L, backtracking in t.

    |Lambda| has the eigenvalues of hess L in absolute value (floored at
    1e-10 of the largest), so every step descends and saddles repel; near a
    strict minimum it is Newton's method and converges quadratically.
    """
    x, y, _ = _data(network, x, y, loss)
    args = (x, y, loss, weight_decay)
    p = parameters(network)
    Lp = objective(network, *args)
    g = gradient(network, *args)
    it = 0
    while np.linalg.norm(g) > gtol and it < maxiter:
        it += 1
        lam, V = np.linalg.eigh(hessian(with_parameters(network, p), *args))
        lam = np.maximum(np.abs(lam), 1e-10 * np.abs(lam).max())
        step = -V @ ((V.T @ g) / lam)
        t = 1.0
        while t > 1e-12:
            q = p + t * step
            Lq = objective(with_parameters(network, q), *args)
            # Armijo, or (at rounding level of L) any step that shrinks the gradient
            if Lq <= Lp + 1e-4 * t * (g @ step) or (
                Lq <= Lp + 1e-14 * abs(Lp)
                and np.linalg.norm(gradient(with_parameters(network, q), *args)) < np.linalg.norm(g)
            ):
                break
            t /= 2
        else:
            break
        p, Lp = q, Lq
        g = gradient(with_parameters(network, p), *args)
    gn = float(np.linalg.norm(g))
    return Minimisation(with_parameters(network, p), gn, it, gn <= gtol)


# -- neuron splitting ----------------------------------------------------------


def _neuron(network: Network, i: int) -> int:
    """i in 0..N-1 (negative i counts from the end); IndexError otherwise."""
    N = network.width
    if not -N <= i < N:
        raise IndexError(f"neuron index i={i} out of range for a network of width {N}")
    return i % N


def split(network: Network, i: int, mu: float) -> Network:
    """Width N+1: neuron i keeps (w_i, b_i) with output weight mu a_i; a copy (w_i, b_i, (1 - mu) a_i) is appended last."""
    i = _neuron(network, i)
    a = network.a.copy()
    a[i] = mu * network.a[i]
    return Network(np.vstack([network.W, network.W[i]]), np.r_[network.b, network.b[i]],
                   np.r_[a, (1.0 - mu) * network.a[i]], network.activation)


def split_direction(network: Network, i: int, mu: float, eps: np.ndarray) -> np.ndarray:
    """In parameters of split(network, i, mu): theta_i += (1 - mu) eps, theta_{N+1} -= mu eps (eps in R^{d+1})."""
    N, d = network.W.shape
    i = _neuron(network, i)
    eps = np.asarray(eps, dtype=float).reshape(-1)
    if eps.shape != (d + 1,):
        raise ValueError(f"eps has shape {eps.shape}; a neuron's theta = (w, b) needs ({d + 1},)")
    M = N + 1
    v = np.zeros(M * (d + 2))
    for k, c in ((i, 1.0 - mu), (N, -mu)):
        v[k * d:(k + 1) * d] = c * eps[:d]
        v[M * d + k] = c * eps[d]
    return v


def plateau_tangent(network: Network, i: int) -> np.ndarray:
    """Unit tangent of the line mu -> split(network, i, mu): (d a_i, d a_{N+1}) = (1, -1) / sqrt 2
    (the line is a_i (mu, 1 - mu); it degenerates to a point if a_i = 0)."""
    N, d = network.W.shape
    i = _neuron(network, i)
    M = N + 1
    t = np.zeros(M * (d + 2))
    t[M * (d + 1) + i], t[M * (d + 1) + N] = 1.0, -1.0
    return t / math.sqrt(2.0)


def _definiteness(eigenvalues: np.ndarray, rtol: float) -> str:
    """positive / negative / indefinite, or semidefinite if an eigenvalue is within rtol * max|lambda| of 0."""
    scale = np.abs(eigenvalues).max(initial=0.0)
    tol = rtol * scale
    if scale > 0 and eigenvalues.min() > tol:
        return "positive"
    if scale > 0 and eigenvalues.max() < -tol:
        return "negative"
    if eigenvalues.min() < -tol and eigenvalues.max() > tol:
        return "indefinite"
    return "semidefinite"


@dataclass
class InnerHessian:
    """H = a_i (1/n) sum_j l'_j sigma''(theta_i . x~_j) x~_j x~_j^T with its eigen-decomposition (ascending)."""

    matrix: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    definiteness: str


def inner_hessian(network: Network, i: int, x, y, loss="squared", rtol: float = 1e-8) -> InnerHessian:
    """The inner Hessian H of neuron i (module docstring); definiteness judged with tolerance rtol * max|lambda|."""
    x, y, ell = _data(network, x, y, loss)
    i = _neuron(network, i)
    xt, s, _, s2 = _features(network, x)
    c = ell.d1(s @ network.a, y) * s2[:, i] * network.a[i] / x.shape[0]
    H = (xt.T * c) @ xt
    H = 0.5 * (H + H.T)
    lam, V = np.linalg.eigh(H)
    return InnerHessian(H, lam, V, _definiteness(lam, rtol))


@dataclass
class PlateauPoint:
    """One mu on the plateau: kind ("minimum", "saddle" or "degenerate"), the curvature
    v^T (hess L) v of the unit escape direction v (None unless a saddle)."""

    mu: float
    kind: str
    curvature: float | None
    escape_direction: np.ndarray | None


@dataclass
class Plateau:
    """Classification of the line split(network, i, mu); ``valid`` iff the narrow network is a strict local minimum."""

    points: list[PlateauPoint]
    inner: InnerHessian
    gradient_norm: float
    narrow_min_eigenvalue: float
    valid: bool
    kinds: list[str] = field(init=False)

    def __post_init__(self):
        self.kinds = [p.kind for p in self.points]


def classify_plateau(network: Network, i: int, x, y, mus, loss="squared",
                     gtol: float = 1e-8, rtol: float = 1e-8) -> Plateau:
    """Each mu: minimum if mu (1 - mu) H > 0, saddle if it has a negative eigenvalue, else degenerate.

    The escape direction of a saddle is the split direction (:func:`split_direction`) of
    the eigenvector e of H minimising mu (1 - mu) lambda, normalised in the full parameter
    space; its curvature is mu (1 - mu) lambda_e / (mu^2 + (1 - mu)^2). Valid only when
    the narrow network is a strict local minimum (|grad L| <= gtol and the smallest
    eigenvalue of hess L above rtol * max|lambda|; weight decay 0); otherwise a
    RuntimeWarning is issued and ``valid`` is False.
    """
    x, y, _ = _data(network, x, y, loss)
    narrow = _narrow_state(network, x, y, loss, gtol, rtol)
    if not narrow[2]:
        warnings.warn(
            f"the narrow network is not a strict local minimum (|grad L| = {narrow[0]:.3g}, "
            f"smallest Hessian eigenvalue {narrow[1]:.3g}): the plateau classification "
            "by the inner Hessian does not apply; minimise it first",
            RuntimeWarning, stacklevel=2)
    return _classify_line(network, i, x, y, mus, loss, rtol, narrow)


def _narrow_state(network: Network, x, y, loss, gtol: float, rtol: float) -> tuple[float, float, bool]:
    """|grad L|, the smallest eigenvalue of hess L and whether the network is a strict local minimum."""
    g = float(np.linalg.norm(gradient(network, x, y, loss)))
    lam_narrow = np.linalg.eigvalsh(hessian(network, x, y, loss))
    lam_min = float(lam_narrow[0])
    return g, lam_min, bool(g <= gtol and lam_min > rtol * np.abs(lam_narrow).max())


def _classify_line(network: Network, i: int, x, y, mus, loss, rtol: float, narrow) -> Plateau:
    """:func:`classify_plateau` given the narrow network's (|grad L|, smallest eigenvalue, valid)."""
    inner = inner_hessian(network, i, x, y, loss, rtol)
    scale = np.abs(inner.eigenvalues).max(initial=0.0)
    points = []
    for mu in np.atleast_1d(np.asarray(mus, dtype=float)):
        c = mu * (1.0 - mu)
        curv = c * inner.eigenvalues
        k = int(np.argmin(curv))
        tol = rtol * abs(c) * scale
        if curv[k] < -tol:
            v = split_direction(network, i, mu, inner.eigenvectors[:, k])
            nv = np.linalg.norm(v)
            points.append(PlateauPoint(float(mu), "saddle", float(curv[k] / nv**2), v / nv))
        else:
            kind = "minimum" if curv[k] > tol else "degenerate"
            points.append(PlateauPoint(float(mu), kind, None, None))
    return Plateau(points, inner, narrow[0], narrow[1], narrow[2])


def split_hessian_eigenvalues(network: Network, i: int, mu: float, x, y, loss="squared") -> np.ndarray:
    """Brute force: eigenvalues of Q^T (hess L) Q for split(network, i, mu), Q an orthonormal basis
    of the complement of the plateau tangent (whose own curvature is exactly 0 on a stationary line)."""
    t = plateau_tangent(network, i)
    H = hessian(split(network, i, mu), x, y, loss)
    Q = np.linalg.qr(np.column_stack([t, np.eye(t.size)]))[0][:, 1:]
    return np.linalg.eigvalsh(Q.T @ H @ Q)


def classify_eigenvalues(eigenvalues: np.ndarray, rtol: float = 1e-8) -> str:
    """minimum if all eigenvalues > rtol * max|lambda|, saddle if one < -rtol * max|lambda|, else degenerate."""
    tol = rtol * np.abs(eigenvalues).max(initial=0.0)
    if eigenvalues.min() < -tol:
        return "saddle"
    return "minimum" if eigenvalues.min() > tol else "degenerate"


@dataclass
class Flatness:
    """How flat and how stationary the line mu -> split(network, i, mu) is on a grid of mu:
    the largest |L(split(mu)) - L(narrow)| and the largest |grad L(split(mu))|."""

    objective: float
    loss_deviation: float
    gradient_norm: float


def plateau_flatness(network: Network, i: int, x, y, mus, loss="squared") -> Flatness:
    """L of the narrow network, max over mus of |L(split(network, i, mu)) - L| and of |grad L(split)|.

    The first is zero up to rounding for every network (splitting leaves f unchanged); the
    second is small only if the narrow network is stationary, and then bounded by
    max(|mu|, |1 - mu|) |grad L(narrow)|.
    """
    x, y, _ = _data(network, x, y, loss)
    L0 = objective(network, x, y, loss)
    dev, gmax = 0.0, 0.0
    for mu in np.atleast_1d(np.asarray(mus, dtype=float)):
        wide = split(network, i, mu)
        dev = max(dev, abs(objective(wide, x, y, loss) - L0))
        gmax = max(gmax, float(np.linalg.norm(gradient(wide, x, y, loss))))
    return Flatness(L0, dev, gmax)


def mu_values(mus) -> list[float]:
    """The output-weight fractions ``mus`` of :func:`plateau_report` as a list of floats if it is non-empty,
    each finite with |mu| <= :data:`MU_MAX` and none twice; else ValueError naming ``mus`` (on the command
    line ``--mu``, :func:`flowfem.arguments.command_line`). A string is read as the command line writes
    them, separated by commas ("-1,0,0.5"), and shown as given in the message."""
    given = mus
    try:
        if isinstance(mus, str):
            mus = mus.split(",")
        # a string is read as every number of the command line (NumPy's float() reads '1_0' as 10)
        mus = [read_number(m) if isinstance(m, str) else m for m in np.atleast_1d(np.asarray(mus, dtype=object))]
        mus = [float(m) for m in np.asarray(mus, dtype=float)]
    except (TypeError, ValueError):
        raise ValueError(f"{named('mus')} must be numbers, e.g. -1,0,0.5,1,2, got {given!r}") from None
    mus = distinct("mus", mus, "-1,0,0.5,1,2")  # a mu twice would be classified twice
    if not np.all(np.isfinite(mus)):
        raise ValueError(f"{named('mus')} must be finite numbers, e.g. -1,0,0.5,1,2, got {mus}")
    if max(abs(m) for m in mus) > MU_MAX:  # mu (1 - mu) and |mu a_i|^2 overflow near 1e154: inf curvatures
        raise ValueError(f"{named('mus')} must be numbers with |mu| <= {MU_MAX:g}, got {mus}")
    return mus


def plateau_report(network: Network, x, y, mus, neurons=None, loss="squared", gtol: float = 1e-8,
                   rtol: float = 1e-8, check: bool = False, progress: bool = False, polish: bool = False) -> dict:
    """The classification of :func:`classify_plateau` for the given neurons (default all), as plain
    Python numbers and lists (ready for JSON).

    Keys: width, input_dim, activation, loss, n, objective, gradient_norm,
    narrow_min_eigenvalue, valid (strict local minimum: the classification applies), mus,
    and ``neurons``: one dict per neuron with index, w, b, a, inner_eigenvalues,
    inner_eigenvectors (columns), definiteness, flatness (max |L(split) - L| over mus) and
    ``points``: per mu its kind, curvature, escape_direction (the unit vector in the
    parameters of split(network, i, mu), layout of :func:`parameters`) and escape_eps (the
    unit eigenvector eps of H it splits along: theta_i moves by (1 - mu) eps, the copy by
    -mu eps), both None unless a saddle. With ``check`` each point also carries
    ``brute_force``, the kind read off the eigenvalues of the full Hessian of the split
    network (:func:`split_hessian_eigenvalues`), and ``split_min_eigenvalue``, its smallest
    eigenvalue. The narrow network's gradient and Hessian are computed once for all
    neurons. ``polish``: the network is first minimised (:func:`minimise`) and the report is of the
    minimiser, its ``polish`` the minimisation's iterations, gradient_norm and converged (None without).
    Out-of-range neurons and ``mus`` that :func:`mu_values` refuses raise ValueError (not IndexError),
    before any work, so that callers can report them as bad input. ``progress``: a bar of the neurons done
    (:mod:`flowfem.progress`).
    """
    x, y, _ = _data(network, x, y, loss)
    N = network.width
    neurons = range(N) if neurons is None else [int(k) for k in np.atleast_1d(neurons)]
    if len(neurons) == 0:
        raise ValueError("no neuron to classify: pass at least one neuron index")
    for k in neurons:
        if not -N <= k < N:
            raise ValueError(f"neuron index {k} is out of range: the network has width {N}, "
                             f"so choose 0..{N - 1} (or a negative index counting from the end)")
    gtol, rtol = positive("gtol", gtol), positive("rtol", rtol)
    mus = mu_values(mus)
    polished = None
    if polish:
        m = minimise(network, x, y, loss)
        network, polished = m.network, dict(iterations=m.iterations, gradient_norm=m.gradient_norm,
                                            converged=bool(m.converged))
    g, lam_min, valid = _narrow_state(network, x, y, loss, gtol, rtol)  # once: O(P^3)
    report = dict(width=N, input_dim=network.input_dim, activation=network.activation.name,
                  loss=_loss(loss).name, n=int(x.shape[0]), objective=objective(network, x, y, loss),
                  gradient_norm=g, narrow_min_eigenvalue=lam_min, valid=valid, gtol=gtol, rtol=rtol,
                  mus=mus, polish=polished, neurons=[])
    for k in progress_.bar(progress, iterable=neurons, desc="landscape", unit="neuron"):
        k = k % N
        plateau = _classify_line(network, k, x, y, mus, loss, rtol, (g, lam_min, valid))
        lam, V = plateau.inner.eigenvalues, plateau.inner.eigenvectors
        points = []
        for pt in plateau.points:
            saddle = pt.kind == "saddle"
            row = dict(mu=pt.mu, kind=pt.kind, curvature=pt.curvature,
                       escape_eps=V[:, int(np.argmin(pt.mu * (1 - pt.mu) * lam))].tolist() if saddle else None,
                       escape_direction=pt.escape_direction.tolist() if saddle else None)
            if check:
                ev = split_hessian_eigenvalues(network, k, pt.mu, x, y, loss)
                row.update(brute_force=classify_eigenvalues(ev, rtol), split_min_eigenvalue=float(ev[0]))
            points.append(row)
        report["neurons"].append(dict(
            index=k, w=network.W[k].tolist(), b=float(network.b[k]), a=float(network.a[k]),
            inner_eigenvalues=lam.tolist(), inner_eigenvectors=V.tolist(),
            definiteness=plateau.inner.definiteness,
            flatness=plateau_flatness(network, k, x, y, mus, loss).loss_deviation,
            points=points))
    return report


def _vec(values, fmt: str) -> str:
    return "[" + ", ".join(format(float(v), fmt) for v in values) + "]"


def summary(report: dict) -> list[str]:
    """Counts over every (neuron, mu) row of a :func:`plateau_report`: kinds of the points and definiteness
    of the inner Hessians, with a note when every H vanishes (sigma'' = 0 at the data, e.g. relu)."""
    kinds = Counter(pt["kind"] for nr in report["neurons"] for pt in nr["points"])
    inner = Counter(nr["definiteness"] for nr in report["neurons"])
    rows = sum(kinds.values())
    out = [f"summary: {len(report['neurons'])} neuron(s) x {len(report['mus'])} mu = {rows} points: "
           + ", ".join(f"{kinds[k]} {k}" for k in ("minimum", "saddle", "degenerate") if kinds[k])
           + "; inner Hessians " + ", ".join(f"{c} {k}" for k, c in sorted(inner.items()))]
    if all(not np.any(nr["inner_eigenvalues"]) for nr in report["neurons"]):
        act = report["activation"]
        piecewise_linear = act.split(":")[0] in ("relu", "leaky_relu") or act == "monomial:1"
        why = ("monomial:1 is linear" if act == "monomial:1" else f"{act} has sigma'' = 0 away from its kink"
               if piecewise_linear else "the residuals l'(f(x_j), y_j) or the output weights a_i vanish")
        out.append(f"  every inner Hessian is 0 ({why}), so second order decides nothing"
                   + ("; split a network with a smooth activation (tanh, sigmoid, softplus)" if piecewise_linear
                      else ""))
    return out


def format_report(report: dict, neurons: int | None = None) -> str:
    """The text ``flowfem landscape`` prints for a :func:`plateau_report` (optional extra keys:
    network, data (names) and polish (dict of iterations, gradient_norm, converged)): the narrow
    network, the :func:`summary` counts, and the table of every mu for the first ``neurons`` neurons
    (None: all of them)."""
    r = report
    src = f"{r['network']}: " if "network" in r else ""
    data = f"data {r['data']}" if "data" in r else "data"
    out = [f"network {src}width {r['width']}, d = {r['input_dim']}, {r['activation']}; "
           f"{data} (n = {r['n']}), {r['loss']} loss"]
    if r.get("polish"):
        pol = r["polish"]
        out.append(f"polished by Newton (plateau.minimise): {pol['iterations']} iterations, |grad L| = "
                   f"{pol['gradient_norm']:.2e}" + ("" if pol["converged"] else " (did not reach the tolerance)"))
    out.append(f"narrow network: L = {r['objective']:.6e}, |grad L| = {r['gradient_norm']:.2e}, "
               f"smallest Hessian eigenvalue {r['narrow_min_eigenvalue']:.3e}")
    if r["valid"]:
        out.append("  a strict local minimum: the classification applies")
    else:
        fix = ("the --polish by Newton did not reach one: start from another network (e.g. another readout "
               "seed or width)" if r.get("polish") else "rerun with --polish (Newton) first")
        out.append(f"  NOT a strict local minimum (needs |grad L| <= {r['gtol']:g} and a positive definite "
                   f"Hessian): the classification below does not apply; {fix}")
    out += summary(r)
    check = any("brute_force" in pt for nr in r["neurons"] for pt in nr["points"])
    shown = r["neurons"] if neurons is None else r["neurons"][:neurons]
    for nr in shown:
        out.append(f"neuron {nr['index']}: w = {_vec(nr['w'], '.4g')}, "
                   f"b = {nr['b']:.4g}, a = {nr['a']:.4g}")
        out.append(f"  inner Hessian eigenvalues {_vec(nr['inner_eigenvalues'], '.3e')}"
                   f": {nr['definiteness']}; max |L(split(mu)) - L| = {nr['flatness']:.1e}")
        head = f"  {'mu':>8}  {'kind':<11}{'curvature':>11}  escape eps (theta_i += (1-mu) eps, copy -= mu eps)"
        out.append(head + ("   full Hessian" if check else ""))
        for pt in nr["points"]:
            curv = "-" if pt["curvature"] is None else f"{pt['curvature']:.3e}"
            eps = "-" if pt["escape_eps"] is None else _vec(pt["escape_eps"], '+.4f')
            line = f"  {pt['mu']:>8.4g}  {pt['kind']:<11}{curv:>11}  {eps:<51}"
            if check:
                agree = "" if pt["brute_force"] == pt["kind"] else "  DISAGREES"
                line += f"   {pt['brute_force']} (min eigenvalue {pt['split_min_eigenvalue']:.2e}){agree}"
            out.append(line.rstrip())
    if len(shown) < len(r["neurons"]):
        out.append(f"... {len(r['neurons']) - len(shown)} more neuron(s) not shown: --all prints every row, "
                   "--json FILE writes them all")
    return "\n".join(out)
