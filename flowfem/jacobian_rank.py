"""Jacobian rank of deep monomial networks: where the parametrisation is singular.

A deep fully connected network R^{d_0} -> ... -> R^{d_L} with layers
z^l = W^l h^{l-1} (+ b^l), hidden h^l = (z^l)^k and a linear output layer is
a polynomial map of degree k^(L-1) in x. Its parameters are critical for the parametrisation where the Jacobian
of p -> (f(x_1), ..., f(x_m)) at m generic points (m at least the rank) has
less than its generic rank. Biases are optional (``bias=False`` by default:
the homogeneous setting of Kileel, Trager & Bruna 2019). Every hidden neuron
carries a scaling symmetry (incoming * c, outgoing * c^-k), so the generic
rank is at most P - (number of hidden neurons), and at most the dimension of
the output polynomial space; for large k it equals that bound, and the
rank-deficient points are the subnetworks (a neuron with zero outgoing or
zero incoming weights, duplicated neurons).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


def random_monomial_params(widths, rng=None, bias: bool = False, max_cos: float = 0.9,
                           min_outgoing: float = 0.3):
    """Layers [(W^1, b^1), ..., (W^L, b^L)]; each row (W^l_i, b^l_i) uniform on the unit
    sphere (b^l = None without biases). A layer is redrawn (up to 100 times) while two of
    its hidden neurons have rows at |cos angle| > max_cos or a neuron of the previous layer
    has outgoing weights (a column of W^l) of norm < min_outgoing: random, but away from
    the planted singularities (duplicates, dead neurons), which an unconstrained Gaussian
    draw approaches closely often enough to blur the numerical rank."""
    rng = np.random.default_rng(rng)
    L = len(widths) - 1
    layers = []
    for l, (din, dout) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        for _ in range(100):
            Wb = rng.standard_normal((dout, din + bias))
            Wb /= np.linalg.norm(Wb, axis=1, keepdims=True)
            cos = np.abs(Wb @ Wb.T - np.eye(dout)).max() if l < L and Wb.shape[1] > 1 else 0.0
            out = np.linalg.norm(Wb[:, :din], axis=0).min() if l > 1 else 1.0
            if cos <= max_cos and out >= min_outgoing:
                break
        layers.append((Wb[:, :din], Wb[:, din] if bias else None))
    return layers


def _check_params(widths, params):
    """Shapes of [(W^l, b^l)] against widths; returns whether biases are present."""
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths {widths}: need at least [d_0, d_L] with every width >= 1")
    if len(params) != len(widths) - 1:
        raise ValueError(f"params has {len(params)} layers; widths {widths} need {len(widths) - 1}")
    bias = params[0][1] is not None
    for l, ((W, b), din, dout) in enumerate(zip(params, widths[:-1], widths[1:]), start=1):
        if np.shape(W) != (dout, din):
            raise ValueError(f"layer {l}: W has shape {np.shape(W)}, expected ({dout}, {din})")
        if (b is not None) != bias or (b is not None and np.shape(b) != (dout,)):
            raise ValueError(f"layer {l}: bias must be None in every layer or of shape ({dout},) in every layer")
    return bias


def n_parameters(widths, bias: bool = False) -> int:
    """P = sum_l d_l d_{l-1} (+ sum_l d_l with biases)."""
    return sum(a * b + (b if bias else 0) for a, b in zip(widths[:-1], widths[1:]))


def expected_rank(widths, k: int, bias: bool = False) -> int:
    """min(P - sum of hidden widths, d_L * dim of polynomials of degree D = k^(L-1) in d_0 variables),
    homogeneous without biases (C(d_0 + D - 1, D)), degree <= D with them (C(d_0 + D, D))."""
    D = k ** (len(widths) - 2)
    d0 = widths[0]
    space = math.comb(d0 + D, D) if bias else math.comb(d0 + D - 1, D)
    return min(n_parameters(widths, bias) - sum(widths[1:-1]), widths[-1] * space)


def _forward(k: int, params, x):
    """Pre-activations z^1..z^{L-1} and layer outputs h^0 = x, ..., h^{L-1}."""
    h, zs = [np.asarray(x)], []
    for W, b in params[:-1]:
        z = h[-1] @ W.T
        if b is not None:
            z = z + b
        zs.append(z)
        h.append(z ** k)
    return zs, h


def monomial_network(widths, k: int, params, x) -> np.ndarray:
    """f(x) = W^L h^{L-1} (+ b^L), h^l = (W^l h^{l-1} (+ b^l))^k, h^0 = x; shape (m, d_L)."""
    _check_params(widths, params)
    W, b = params[-1]
    f = _forward(k, params, x)[1][-1] @ W.T
    return f if b is None else f + b


def monomial_jacobian(widths, k: int, params, x) -> np.ndarray:
    """d f_o(x_j) / d p by back-propagation, rows (j, o), columns layer by layer (W^l.ravel(), b^l).

    With G^l = d f / d z^l: G^L = I, G^{l} = (G^{l+1} W^{l+1}) k (z^l)^(k-1),
    d f / d W^l = G^l (h^{l-1})^T, d f / d b^l = G^l. Works for float arrays and
    for object arrays of Fractions (exact arithmetic).
    """
    _check_params(widths, params)
    zs, h = _forward(k, params, x)
    m, dL = h[0].shape[0], widths[-1]
    one, zero = (Fraction(1), Fraction(0)) if h[0].dtype == object else (1.0, 0.0)
    G = np.full((dL, dL), zero, dtype=h[0].dtype)
    np.fill_diagonal(G, one)
    G = np.broadcast_to(G, (m, dL, dL))
    blocks = []
    for l in range(len(params) - 1, -1, -1):
        W, b = params[l]
        cols = [(G[:, :, :, None] * h[l][:, None, None, :]).reshape(m * dL, -1)]
        if b is not None:
            cols.append(G.reshape(m * dL, -1))
        blocks = cols + blocks
        if l > 0:
            G = (G @ W) * (k * zs[l - 1] ** (k - 1))[:, None, :]
    return np.hstack(blocks)


def exact_rank(A) -> int:
    """Rank over Q of a matrix of rationals: fraction-free Gaussian elimination (Bareiss) in integers."""
    rows = []
    for r in np.asarray(A, dtype=object):
        fr = [Fraction(v) for v in r]
        den = math.lcm(*(v.denominator for v in fr)) if fr else 1
        rows.append([int(v * den) for v in fr])
    rank, prev = 0, 1
    ncols = len(rows[0]) if rows else 0
    for c in range(ncols):
        piv = next((r for r in range(rank, len(rows)) if rows[r][c] != 0), None)
        if piv is None:
            continue
        rows[rank], rows[piv] = rows[piv], rows[rank]
        p = rows[rank][c]
        for r in range(rank + 1, len(rows)):
            rows[r] = [(p * rows[r][j] - rows[r][c] * rows[rank][j]) // prev for j in range(ncols)]
        prev = p
        rank += 1
    return rank


@dataclass
class JacobianRank:
    """Numerical rank (singular values of the row- and column-normalised Jacobian above
    tol * s_max), the singular values, tol, P, and the exact rank if computed."""

    rank: int
    n_params: int
    singular_values: np.ndarray
    tol: float
    exact: int | None = None

    @property
    def kept(self) -> float:
        """s_rank / s_max, the smallest singular value counted (1 if rank 0)."""
        s = self.singular_values
        return float(s[self.rank - 1] / s[0]) if self.rank else 1.0

    @property
    def dropped(self) -> float:
        """s_{rank+1} / s_max, the largest singular value not counted (0 if none)."""
        s = self.singular_values
        return float(s[self.rank] / s[0]) if self.rank < s.size and s[0] > 0 else 0.0


DEFAULT_RTOL = 1e-10


def jacobian_rank(widths, k: int, params, tol: float | None = None, points=None,
                  exact: bool = False, rng=None) -> JacobianRank:
    """Rank of the Jacobian of p -> (f(x_1), ..., f(x_m)) at params, by SVD.

    params = [(W^1, b^1), ..., (W^L, b^L)] (see :func:`monomial_network`); biases are
    included iff the b^l are arrays rather than None (all layers alike). points default
    to m = 3 P standard normal points of R^{d_0}: generic and more than the rank, so the
    evaluation is injective on the tangent polynomials (the surplus over P improves the
    conditioning). Rows and columns are scaled to unit norm, which keeps the rank; the
    rank counts singular values above tol * s_max, tol = DEFAULT_RTOL = 1e-10 unless
    given. With ``exact`` the same Jacobian is also formed in rational arithmetic
    (floats are exact dyadic rationals) and its rank computed exactly (:func:`exact_rank`);
    keep P and k^(L-1) small for that.
    """
    bias = _check_params(widths, params)
    P = n_parameters(widths, bias)
    if points is None:
        points = np.random.default_rng(rng).standard_normal((3 * P, widths[0]))
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != widths[0]:
        raise ValueError(f"points have shape {points.shape}; expected (m, {widths[0]})")
    fparams = [(np.asarray(W, float), None if b is None else np.asarray(b, float)) for W, b in params]
    J = monomial_jacobian(widths, k, fparams, points)
    for axis in (1, 0):
        nrm = np.linalg.norm(J, axis=axis, keepdims=True)
        J = J / np.where(nrm > 0, nrm, 1.0)
    s = np.linalg.svd(J, compute_uv=False)
    tol = DEFAULT_RTOL if tol is None else float(tol)
    rank = int(np.sum(s > tol * s[0])) if s.size and s[0] > 0 else 0
    ex = None
    if exact:
        def rational(A):
            return None if A is None else np.vectorize(Fraction, otypes=[object])(np.asarray(A, float))
        qparams = [(rational(W), rational(b)) for W, b in fparams]
        ex = exact_rank(monomial_jacobian(widths, k, qparams, rational(points)))
    return JacobianRank(rank, P, s, tol, ex)


@dataclass
class SingularityRow:
    """One scanned point: its name, rank, P, the generic rank, the expected rank bound,
    the relative singular values at the cut (kept, dropped) and the exact rank if computed."""

    point: str
    rank: int
    n_params: int
    generic_rank: int
    expected_rank: int
    kept: float
    dropped: float
    exact: int | None = None

    @property
    def deficient(self) -> bool:
        """rank < generic rank."""
        return self.rank < self.generic_rank


def planted_points(widths, params, layer: int = 1, neuron: int = 0, other: int = 1):
    """Subnetworks planted at hidden layer ``layer`` (1-based): neuron with zero outgoing
    weights, with zero incoming weights (and bias), duplicated neuron ``other`` := ``neuron``;
    and special points: rescaled duplicate (incoming row times 2), one zero weight."""
    if not 1 <= layer <= len(widths) - 2:
        raise ValueError(f"layer {layer}: planted neurons need a hidden layer, 1..{len(widths) - 2}")

    def copy():
        return [(W.copy(), None if b is None else b.copy()) for W, b in params]

    out = {}
    p = copy()
    p[layer][0][:, neuron] = 0.0
    out["zero outgoing"] = p
    p = copy()
    p[layer - 1][0][neuron] = 0.0
    if p[layer - 1][1] is not None:
        p[layer - 1][1][neuron] = 0.0
    out["zero incoming"] = p
    if widths[layer] > 1:
        p = copy()
        p[layer - 1][0][other] = p[layer - 1][0][neuron]
        if p[layer - 1][1] is not None:
            p[layer - 1][1][other] = p[layer - 1][1][neuron]
        out["duplicate"] = p
        p = copy()
        p[layer - 1][0][other] = 2.0 * p[layer - 1][0][neuron]
        if p[layer - 1][1] is not None:
            p[layer - 1][1][other] = 2.0 * p[layer - 1][1][neuron]
        out["rescaled duplicate"] = p
    p = copy()
    p[layer - 1][0][neuron, 0] = 0.0
    out["one zero weight"] = p
    return out


def scan_singularities(widths, k: int, bias: bool = False, n_random: int = 3, rng=0,
                       layer: int = 1, tol: float | None = None, exact: bool = False) -> list[SingularityRow]:
    """Rank at n_random random points and at :func:`planted_points` of a random point; the
    generic rank is the maximum over the random points."""
    rng = np.random.default_rng(rng)
    pts = {f"random {r}": random_monomial_params(widths, rng, bias) for r in range(n_random)}
    pts.update(planted_points(widths, random_monomial_params(widths, rng, bias), layer))
    points = rng.standard_normal((3 * n_parameters(widths, bias), widths[0]))
    ranks = {name: jacobian_rank(widths, k, p, tol, points, exact) for name, p in pts.items()}
    generic = max(ranks[f"random {r}"].rank for r in range(n_random))
    expected = expected_rank(widths, k, bias)
    return [SingularityRow(name, r.rank, r.n_params, generic, expected, r.kept, r.dropped, r.exact)
            for name, r in ranks.items()]
