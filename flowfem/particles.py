"""Particle solvers: finite-width networks trained by gradient descent.

The baseline flowfem is compared against. N neurons ("particles")
theta_i = (w_i, b_i) in R^(d+1) with output weights a_i in R^m (m outputs, m = 1
by default), in mean-field scaling

    f(x) = (1/N) sum_i a_i sigma(w_i . x + b_i)          in R^m,

trained on the objective (lam = ``weight_decay`` >= 0)

    J = (1/n) sum_j l(f(x_j), y_j) + (lam/2) (1/N) sum_i (|w_i|^2 + b_i^2 + |a_i|^2).

**m outputs** (targets y (n, m), squared loss only): l(f, y) = |f - y|^2 / 2 =
sum_k (f_k - y_k)^2 / 2, so the data term is the sum over the outputs of m
single-output data terms, as in flowfem's E_alpha of an m-output fit
(:class:`flowfem.problem.Result`); for m = 1 it is the one-output loss, with the same
numbers as before. The neurons theta_i are shared by the outputs; with them
held fixed (``trainable="outer"``) the problem decouples into m single-output
problems, one per column of a. The logistic loss takes one output (labels in
{-1, +1}) and refuses y (n, m).

**Several classes** (``loss="softmax"``, labels y (n,) of any C >= 2 distinct numbers or
strings, recorded sorted as ``classes`` and mapped to k_j in 0..C-1 by
:func:`flowfem.labels.encode`): m = C outputs, the logits f_c, and the softmax cross-entropy

    l(f, k) = logsumexp_c f_c - f_k,     dl/df_c = p_c - [c = k],     p = softmax(f),

(:data:`flowfem.loss.SOFTMAX`), so J = (1/n) sum_j [logsumexp_c f_c(x_j) - f_{k_j}(x_j)] + the same
regulariser. The neurons' gradient is the m-output one with the residual f - y replaced by p - e_k.
The data term is invariant under f_c -> f_c + g for all c (as flowfem's, :mod:`flowfem.softmax`).
For C = 2 it is the logistic loss of v = f_1 - f_0 with labels +1 (classes[1]) and -1 (classes[0]),
so with ``trainable="outer"`` and ``gd`` the step on (a_0, a_1) is
v <- v - 2 lr N (dL/dv + (lam/2) v / N) for v = a_1 - a_0, s <- (1 - lr lam) s for s = a_0 + a_1:
v follows the logistic run with step 2 lr and weight decay lam / 2 exactly (the inner weights,
if trained, do not: their decay stays lam). The trained network records ``classes``: its
``predict`` gives labels.

The regulariser always covers every parameter, also those held fixed with
``trainable`` (it is then a constant). Gradients are analytic and vectorised.

**Particle layout.** The particles are one array P of shape (N, d+1+m), row i =
(w_i (d entries), b_i, a_i (m entries)): (N, d+2) for one output.
:func:`from_network` and :func:`to_network` convert to and from
:class:`flowfem.network.Network`, whose output weights are a_i / N ((N,), or
(N, m) for m outputs: ``nn.Linear(N, m)``), so that ``network(x)`` is the
mean-field f.

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
p (up to the order of floating-point sums). The history's ``test_error`` is the RMSE
over all n m test values, sqrt((1/(n m)) sum_jk (f_k(x_j) - y_jk)^2), for the squared loss and the
misclassification rate for the logistic and softmax losses (the softmax loss also records
``test_loss``, the mean test cross-entropy).

The particles' measure mu = sum_i (a_i / N) delta_(theta_i) as a density on a
parameter mesh, to compare with flowfem's: :func:`flowfem.measure.density`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from flowfem import data as _data
from flowfem.activations import Activation, activation as _activation
from flowfem import memory
from flowfem import arguments
from flowfem import progress as progress_
from flowfem.arguments import positive, spell
from flowfem.mpi import check_interrupt
from flowfem.loss import Loss, loss as _loss
from flowfem.network import Network
from flowfem.operator.features import evaluate

__all__ = [
    "ParticleResult", "train", "objective", "gradient", "predict",
    "from_network", "to_network", "init_particles",
]

_BLOCK = 1 << 22  # max entries of a (data rows x neurons) work array
GROUPS = 64  # neurons are summed in this many fixed groups (fewer if N is smaller): see _groups
TRAINABLE = ("all", "inner", "outer")  # every coordinate, (w, b) only, a only


# -- particles <-> networks --------------------------------------------------

def from_network(network: Network) -> np.ndarray:
    """Particles (N, d+1+m) = rows (w_i, b_i, a_i) of ``network`` (m = network.outputs), with
    a_i = N * network.a_i."""
    N = network.width
    return np.column_stack([network.W, network.b, N * network.a])


def to_network(particles: np.ndarray, activation: str | Activation = "relu", outputs: int = 1,
               classes=None) -> Network:
    """The :class:`Network` of particles (N, d+1+m), m = ``outputs``, with output weights a_i / N
    ((N,) for m = 1, else (N, m)): its value is the mean-field f. ``classes`` (m,): a classifier's
    labels, one per output (its logits), recorded in the network (ValueError unless m distinct labels)."""
    P = np.asarray(particles, dtype=float)
    m = _outputs(outputs)
    a = P[:, -1] if m == 1 else P[:, -m:]
    return Network(P[:, :-m - 1], P[:, -m - 1], a / len(P), activation, classes=classes)


def init_particles(width: int, dim: int, seed=0, init_scale: float = 1.0, outputs: int = 1) -> np.ndarray:
    """All N particles, i.i.d. N(0, init_scale^2) in every coordinate, shape (N, d+1+m), m = ``outputs``.

    The first d+2 columns (w, b, a_1) are the particles of one output from the same seed (the
    columns a_2..a_m are drawn after them from the same stream), so one output is unchanged and
    output 1 of an m-output run starts where a one-output run does.
    """
    m = _outputs(outputs)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    P = rng.standard_normal((width, dim + 2))
    if m > 1:
        P = np.hstack([P, rng.standard_normal((width, m - 1))])
    return init_scale * P


def _outputs(m) -> int:
    """m as an int >= 1 (ValueError otherwise)."""
    if not (isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 1):
        raise ValueError(f"outputs must be an integer >= 1 (the number of outputs m), got {m!r}")
    return int(m)


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


def _groups(N: int) -> np.ndarray:
    """Bounds of the fixed neuron groups [i N / K, (i + 1) N / K), K = min(N, GROUPS).

    Sums over neurons (the prediction f, |P|^2) are taken group by group and then over the groups
    in this order, on any number of ranks: floating-point addition is not associative, and Adam
    amplifies a rounding difference to a different trajectory within a few thousand steps.
    """
    K = min(N, GROUPS)
    return (np.arange(K + 1) * N) // K


def _slice(N: int, comm) -> slice:
    """This rank's contiguous share of N neurons: whole groups (:func:`_groups`), balanced."""
    p = _size(comm)
    r = 0 if comm is None else comm.Get_rank()
    bounds = _groups(N)
    K = len(bounds) - 1
    return slice(int(bounds[r * K // p]), int(bounds[(r + 1) * K // p]))


def _offset(comm, m: int) -> int:
    """Global index of this rank's first neuron (ranks hold consecutive slices)."""
    if _size(comm) == 1:
        return 0
    return int(comm.exscan(m) or 0) if comm.Get_rank() > 0 else 0


def _pieces(N: int, offset: int, m: int) -> list[slice]:
    """The local neurons [offset, offset + m) cut at the group bounds: whole groups for _slice."""
    cuts = np.unique(np.clip(_groups(N), offset, offset + m)) - offset
    return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def _sum_pieces(comm, part: np.ndarray) -> np.ndarray:
    """Sum the rows of every rank's (pieces, k) array, in global piece order (rank order)."""
    if _size(comm) > 1:
        part = np.vstack(comm.allgather(part))
    return part.sum(axis=0)


# -- objective and gradient ----------------------------------------------------

def _evaluate(P, x, y, act: Activation, lss: Loss, lam: float, N: int, comm, grad: bool,
              offset: int | None = None):
    """(J, data term, f, dJ/dP for the local particles P or None); P holds global neurons
    [offset, offset + len(P)) (default: from the ranks' counts, in rank order).

    y (n,) (one output: P (N, d+2), f (n,)) or (n, m) (P (N, d+1+m), f (n, m)); the data term is
    (1/n) sum_j sum_k l(f_jk, y_jk). The softmax loss: y the class indices k (n,) in 0..m-1, f the
    logits (n, m), the data term (1/n) sum_j l(f_j, k_j). Every sum runs in an order fixed by N
    alone (neuron groups of :func:`_groups`, data blocks of their size), so that 1 and p ranks give
    the same bits when P are whole groups (:func:`_slice`).
    """
    n, d = x.shape
    m = P.shape[1] - d - 1
    out = d + 1 if m == 1 else np.s_[d + 1:]  # the output weights' column(s): a (N,) or (N, m)
    theta, a = P[:, :d + 1], P[:, out]
    pieces = _pieces(N, _offset(comm, len(P)) if offset is None else offset, len(P))
    bounds = _groups(N)
    rows = max(1, _BLOCK // int(np.diff(bounds).max()))
    blocks = [slice(s, min(s + rows, n)) for s in range(0, n, rows)]
    part = np.empty((len(pieces), n * m + 1))  # per group: partial predictions (row-major) and sum |P_i|^2
    cache = {}
    for j, c in enumerate(pieces):
        for s in blocks:
            if grad and len(blocks) == 1:  # sigma and sigma' from one product, kept for the gradient
                cache[j] = evaluate(act, x[s], theta[c], (0, 1))
                sz = cache[j][0]
            else:
                sz = evaluate(act, x[s], theta[c])
            part[j, s.start * m:s.stop * m] = (sz @ a[c]).reshape(-1)
        part[j, n * m] = np.sum(P[c] * P[c])
    buf = _sum_pieces(comm, part)
    f = buf[:n * m].reshape((n,) if m == 1 else (n, m)) / N
    value = lss.value(f, y)  # (n,), or (n, m) for the squared loss of m outputs
    data = float(np.mean(value)) if value.ndim == 1 else float(np.sum(np.mean(value, axis=0)))
    J = data + 0.5 * lam * buf[n * m] / N
    if not grad:
        return J, data, f, None
    r = lss.d1(f, y) / n
    G = lam * P
    for j, c in enumerate(pieces):
        for s in blocks:
            # several blocks: recompute rather than store n x N arrays
            sz, dz = cache[j] if j in cache else evaluate(act, x[s], theta[c], (0, 1))
            G[c, out] += sz.T @ r[s]
            # d(loss)/dz_ji = sigma'(z_ji) sum_k r_jk a_ik, (rows, group size)
            g = (r[s, None] * dz) * a[c] if m == 1 else (r[s] @ a[c].T) * dz
            G[c, :d] += g.T @ x[s]
            G[c, d] += g.sum(axis=0)
    return J, data, f, G / N


def _labels(y, n: int, what: str, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(k, classes) of the softmax loss's labels y (n,) or (n, 1) (numbers or strings): class indices
    k (n,) in 0..C-1 and the classes (C,), sorted (:func:`flowfem.labels.encode`; given ``classes``:
    labels outside them refused). ValueError naming ``what`` for bad labels or a count other than n."""
    from flowfem.labels import encode, labels_array, training_labels

    if classes is None:
        return encode(training_labels(y, n, what))
    labels = labels_array(y, what)
    if labels.size != n:
        raise ValueError(f"{what}: {labels.size} labels for {n} data points; give one label per row of x")
    return encode(labels, classes)


def _targets(y, lss: Loss) -> np.ndarray:
    """y as (n,) for one output (also from (n, 1)) or (n, m); ValueError for m > 1 with a loss
    other than the squared one."""
    y = np.asarray(y, dtype=float)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and lss.name != "squared":
        raise ValueError(f"the {lss.name} loss takes one output (labels y in {{-1, +1}}); y has {y.shape[1]} "
                         "columns: train each output on its own, or use loss='squared'")
    return y


def _prepare(P, x, comm, width, outputs=None):
    P = np.asarray(P, dtype=float)
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    m = P.shape[1] - x.shape[1] - 1 if outputs is None and P.ndim == 2 and x.ndim == 2 else outputs
    if P.ndim != 2 or x.ndim != 2 or m is None or m < 1 or P.shape[1] != x.shape[1] + 1 + m:
        raise ValueError(
            f"particles have shape {P.shape} and inputs {x.shape}"
            + ("" if outputs is None else f" for {outputs} output(s)") + ": expected particles "
            "(N, d+1+m) with rows (w, b, a_1..a_m) (m = 1: (N, d+2)) and inputs (n, d)"
        )
    if width is None:
        width = int(_allsum(comm, np.array([float(len(P))]))[0])
    return P, x, width


def _arguments(particles, x, y, loss, comm, width, classes):
    """(P, x, y, loss, N) for :func:`objective` and :func:`gradient`; y as class indices for softmax."""
    lss = _loss(loss, multiclass=True)
    if lss.multiclass:
        P, x, N = _prepare(particles, x, comm, width)
        y, classes = _labels(y, len(x), "the labels", classes)
        if classes.size != P.shape[1] - x.shape[1] - 1:
            raise ValueError(f"the labels hold {classes.size} classes but the particles {P.shape} have "
                             f"{P.shape[1] - x.shape[1] - 1} output columns for d = {x.shape[1]}: one output "
                             "per class (pass classes=network.classes for labels that miss a class)")
    else:
        y = _targets(y, lss)
        P, x, N = _prepare(particles, x, comm, width, 1 if y.ndim == 1 else y.shape[1])
    return P, x, y, lss, N


def objective(particles, x, y, activation="relu", loss="squared", weight_decay=0.0,
              comm=None, width=None, classes=None) -> float:
    """J at ``particles`` (N, d+1+m) for targets y (n,) or (n, m); with ``comm``, particles are
    this rank's slice.

    ``comm=None`` means no reductions: ``particles`` holds every neuron.
    ``width`` is the global N (computed with one Allreduce if omitted).
    ``loss="softmax"``: y the labels (n,), m = C; ``classes`` (C,) the label of each output column
    (default: the distinct labels of y, sorted; a trained network's ``classes``).
    Raises ValueError if the particles' columns are not d+1+m, for m > 1 with the logistic loss,
    or for labels outside ``classes``.
    """
    P, x, y, lss, N = _arguments(particles, x, y, loss, comm, width, classes)
    return _evaluate(P, x, y, _activation(activation), lss, weight_decay, N, comm, grad=False)[0]


def gradient(particles, x, y, activation="relu", loss="squared", weight_decay=0.0,
             comm=None, width=None, classes=None) -> np.ndarray:
    """dJ/dparticles, same shape as ``particles`` (O(1/N) per row; arguments as :func:`objective`)."""
    P, x, y, lss, N = _arguments(particles, x, y, loss, comm, width, classes)
    return _evaluate(P, x, y, _activation(activation), lss, weight_decay, N, comm, grad=True)[3]


def predict(particles, x, activation="relu", comm=None, width=None) -> np.ndarray:
    """The mean-field f at the rows of x (arguments as :func:`objective`): (n,) for particles
    (N, d+2), (n, m) for particles (N, d+1+m), m >= 2."""
    P, x, N = _prepare(particles, x, comm, width)
    m = P.shape[1] - x.shape[1] - 1
    return _evaluate(P, x, np.zeros(len(x) if m == 1 else (len(x), m)), _activation(activation),
                     _loss("squared"), 0.0, N, comm, grad=False)[2]


# -- training ------------------------------------------------------------------

@dataclass
class ParticleResult:
    """Outcome of :func:`train`, identical on every rank (except wall times).

    ``network``: the trained :class:`Network` (a_i / N folded in), all N neurons; a (N, m) for
    m outputs.
    ``particles``: all N particles (N, d+1+m), rows (w_i, b_i, a_i) ((N, d+2) for one output).
    ``history``: dict of equal-length arrays, one entry per recorded step:
    ``step``, ``time`` (wall seconds since the start), ``objective`` (J),
    ``loss`` (the data term of J), ``grad_norm`` (sqrt((1/N) sum_i |V_i|^2),
    the L2(mu) norm of the mean-field velocity over trained coordinates),
    ``test_error`` (RMSE for the squared loss, over all n m values for m outputs; misclassification rate of
    sign(f) (f = 0 counts as +1) for the logistic loss, of argmax_c f_c for the softmax loss; NaN without
    test data), and for the softmax loss ``test_loss`` (the mean test cross-entropy, nats; NaN without).
    ``status``: ``completed``, ``time_limit`` or ``diverged`` (J not finite;
    the last recorded row is that step, and ``network`` is None).
    ``settings``: the arguments of the run (and ``ranks`` and ``outputs``, m; ``classes`` (C,) for the
    softmax loss).
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
          trainable="all", betas=(0.9, 0.999), eps=1e-8, progress=False, leave=True) -> ParticleResult:
    """Train N particles on the data (x (n, d), y (n,) or (n, m)); see the module docstring for the maths.

    y (n, m), m >= 2 (squared loss only; x_test, y_test alike): a network of m outputs, particles
    (N, d+1+m), the data term summed over the outputs, ``test_error`` the RMSE over all outputs.

    ``loss="softmax"``: y the labels (n,) or (n, 1), C >= 2 distinct numbers or strings (at most
    max(2, n / 2)); a network of C outputs (the logits), particles (N, d+1+C), the data term the mean
    cross-entropy; y_test labels among the training classes; ``test_error`` the misclassification
    rate of argmax_c f_c and ``test_loss`` the mean test cross-entropy (nats). The network records
    the classes (sorted; output c is classes[c]), so ``network.predict`` gives labels.

    width        N; may be omitted when ``init`` is given.
    method       ``gd`` (full-batch gradient descent) or ``adam``; ``lr`` is the step
                 size in mean-field time (see the module docstring).
    weight_decay lam >= 0; temperature T >= 0 (Langevin noise).
    seed         int: seeds the initial particles and the noise (independent streams of
                 ``np.random.SeedSequence(seed)``), identically on every rank.
    init         None: i.i.d. N(0, init_scale^2) particles from ``seed``
                 (:func:`init_particles`); or a :class:`Network` of m outputs / an (N, d+1+m)
                 particle array holding *all* N neurons (e.g. a plateau to start from).
    trainable    ``all``, ``inner`` (w, b only) or ``outer`` (a only: a convex problem, and for
                 m outputs m independent ones, one per column of a).
    record_every history is recorded at step 0, every ``record_every`` steps
                 (default steps // 100) and at the last step.
    time_limit   wall seconds (rank 0's clock); training stops after the step that
                 exceeds it.
    comm         mpi4py communicator over which the neurons are split (default
                 MPI.COMM_WORLD when mpi4py is importable, else serial).
    betas, eps   Adam's moment decay rates and denominator offset.
    progress     a bar of the steps with J at the last recorded step (:mod:`flowfem.progress`:
                 rank 0, on a terminal); ``leave=False`` clears it when training ends.

    Raises ValueError for arguments of the wrong type or range, for y (n, m) with the logistic
    loss, test targets with another number of outputs, test labels outside the training classes,
    an init network with other classes, and for a width whose particles would not fit in memory
    (:func:`flowfem.memory.require`), before any work.
    """
    if y is None:  # data.check reads None as "no targets", which training cannot do without
        raise ValueError("training data: targets y are missing; pass y of shape (n,) or (n, 1), or (n, m)")
    act, lss = _activation(activation), _loss(loss, multiclass=True)
    classes = None
    if lss.multiclass:  # labels: numbers or strings, not data.check's float cast; y becomes the class indices
        x, _ = _data.check(x, None, what="training data", takes="particle training (flowfem.particles)")
        y, classes = _labels(y, len(x), "the training labels")
        outputs = classes.size
    else:
        x, y = _data.check(x, y, what="training data", takes="particle training (flowfem.particles)")
        y = _targets(y, lss)
        outputs = 1 if y.ndim == 1 else y.shape[1]
        lss.check_labels(y)
    n, d = x.shape
    if (x_test is None) != (y_test is None):
        raise ValueError("pass both x_test and y_test, or neither")
    if x_test is not None:
        if lss.multiclass:
            x_test, _ = _data.check(x_test, None, what="test data", takes="particle training on these training data")
            y_test, _ = _labels(y_test, len(x_test), "the test labels", classes)
        else:
            x_test, y_test = _data.check(x_test, y_test, what="test data",
                                         takes="particle training on these training data", outputs=outputs)
            lss.check_labels(y_test)
        if x_test.shape[1] != d:
            raise ValueError(f"x_test has {x_test.shape[1]} columns but x has {d}; use the same features")
    if method not in ("gd", "adam"):
        raise ValueError(f"method {method!r} is unknown: choose 'gd' or 'adam'")
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable {trainable!r} is unknown: choose 'all', 'inner' or 'outer'")
    positive("lr", lr)
    positive("weight_decay", weight_decay, strict=False)
    positive("temperature", temperature, strict=False)
    positive("init_scale", init_scale)  # 0: every particle at 0, moved alike by every step
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
        # the gradient and the velocity (about 10 arrays of N (d + 1 + m) doubles), and three feature blocks
        # (sigma, sigma', a product) of at most max(_BLOCK, N) entries each, and the groups' partial
        # predictions with their gathered copy, 2 K (n m + 1) doubles for K = min(N, GROUPS) (see _evaluate)
        features = 3 * 8.0 * min(n * width, max(_BLOCK, width))
        partial = 2 * 8.0 * min(width, GROUPS) * (max(n, 0 if x_test is None else len(x_test)) * outputs + 1)
        memory.require(80.0 * width * (d + 1 + outputs) + features + partial, f"training {width} particles",
                       f"use a smaller {spell('width', 'N')}", comm if _size(comm) > 1 else None)
        P_all = init_particles(int(width), d, seed, init_scale, outputs)
    else:
        if isinstance(init, Network):
            if act.name != init.activation.name:
                raise ValueError(
                    f"init network uses {init.activation.name} but activation={act.name!r}; "
                    "pass activation=init.activation"
                )
            if init.outputs != outputs:
                raise ValueError(f"init network has {init.outputs} output(s) but " + (
                    f"the labels have {outputs} classes; start from a network with one output per class"
                    if lss.multiclass else f"y has {outputs}; start from a network with one output per column of y"))
            if lss.multiclass and init.classifier and not np.array_equal(init.classes, classes):
                raise ValueError(f"init network's classes {init.classes.tolist()} are not the labels' classes "
                                 f"{classes.tolist()}: output c must be the same class; relabel or start afresh")
            P_all = from_network(init)
        else:
            P_all = np.array(init, dtype=float)
        if P_all.ndim != 2 or P_all.shape[1] != d + 1 + outputs or len(P_all) == 0:
            rows = "(w, b, a)" if outputs == 1 else f"(w, b, a_1..a_{outputs})"
            raise ValueError(
                f"init has shape {P_all.shape}: expected all N particles as (N, d+1+m) = (N, {d + 1 + outputs}) "
                f"rows {rows} for d = {d} and m = {outputs} output(s), or a Network with input dimension d"
            )
        if not np.all(np.isfinite(P_all)):
            raise ValueError("init contains NaN or inf")
        if width is not None and width != len(P_all):
            raise ValueError(f"width={width} but init has {len(P_all)} neurons; omit width")
    N = len(P_all)

    mine = _slice(N, comm)
    groups = _pieces(N, mine.start, mine.stop - mine.start)
    P = P_all[mine].copy()
    del P_all
    mask = np.zeros(d + 1 + outputs, dtype=bool)
    mask[{"all": np.s_[:], "inner": np.s_[:d + 1], "outer": np.s_[d + 1:]}[trainable]] = True
    noise_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    m = np.zeros_like(P)
    v = np.zeros_like(P)
    b1, b2 = betas

    history = {k: [] for k in ("step", "time", "objective", "loss", "grad_norm", "test_error")
               + (("test_loss",) if lss.multiclass else ())}
    status = "completed"
    t0 = time.perf_counter()
    bar = progress_.bar(progress, total=steps, desc=f"{method} N={N}", unit="step", leave=leave)
    with bar, np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by status
        for k in range(steps + 1):
            J, data, _, G = _evaluate(P, x, y, act, lss, weight_decay, N, comm, grad=True, offset=mine.start)
            V = N * G * mask  # mean-field velocity of the trained coordinates
            if not np.isfinite(J):
                status = "diverged"
            elif time_limit is not None and k < steps:
                elapsed = time.perf_counter() - t0
                if (comm.bcast(elapsed, root=0) if _size(comm) > 1 else elapsed) > time_limit:
                    status = "time_limit"
            last = k == steps or status != "completed"
            if k % record_every == 0 or last:
                gn = _sum_pieces(comm, np.array([[np.sum(V[c] * V[c])] for c in groups]).reshape(-1, 1))[0]
                err = test_loss = np.nan
                if x_test is not None:
                    test_loss, _, ft, _ = _evaluate(P, x_test, y_test, act, lss, 0.0, N, comm, grad=False,
                                                    offset=mine.start)
                    err = (np.sqrt(np.mean((ft - y_test) ** 2)) if lss.name == "squared"
                           else np.mean(np.argmax(ft, axis=1) != y_test) if lss.multiclass
                           else np.mean(np.where(ft >= 0, 1.0, -1.0) != y_test))
                for key, val in zip(history, (k, time.perf_counter() - t0, J, data,
                                              np.sqrt(gn / N), err, test_loss)):
                    history[key].append(val)
                bar.set_postfix_str(f"J {J:.4e}", refresh=False)
            if last:
                break
            if comm is not None:  # Ctrl-C under mpirun: every rank stops at this step (a flag until then)
                check_interrupt(comm)
            bar.update(1)
            if method == "gd":
                P -= lr * V
            else:
                m = b1 * m + (1 - b1) * V
                v = b2 * v + (1 - b2) * V * V
                mh, vh = m / (1 - b1 ** (k + 1)), v / (1 - b2 ** (k + 1))
                P -= lr * mh / (np.sqrt(vh) + eps)
            if temperature > 0:
                xi = noise_rng.standard_normal((N, d + 1 + outputs))[mine]
                P += np.sqrt(2 * lr * temperature) * xi * mask

    P_all = np.vstack(comm.allgather(P)) if _size(comm) > 1 else P
    hist = {k: np.asarray(vals, dtype=int if k == "step" else float) for k, vals in history.items()}
    settings = dict(width=N, activation=act.name, loss=lss.name, method=method, lr=lr,
                    steps=steps, weight_decay=weight_decay, temperature=temperature, seed=seed,
                    init_scale=init_scale, trainable=trainable, ranks=_size(comm), outputs=outputs)
    if classes is not None:
        settings["classes"] = classes
    if status == "diverged":  # a network with NaN would not construct: keep the particles only
        return ParticleResult(None, P_all, hist, status, settings)
    return ParticleResult(replace(to_network(P_all, act, outputs, classes), loss=lss.name), P_all, hist, status,
                          settings)
