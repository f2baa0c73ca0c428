"""The Nystrom preconditioner's random start drawn per bin of the data (ReluMoments1D.sketch, DataOperator.start_block).

For relu and leaky relu on 1-D inputs, W_0 = S^T (D G / n) is drawn from each bin's 2 x 2 covariance instead of
an n x b Gaussian G. Checked here: the factor reproduces each bin's covariance, including the singular ones (one
row, repeated x, zero weights, empty bins); the whole sketch's covariance, as a linear map of its normals, equals
the dense NumPy S^T diag(scale D)^2 S of S^T (scale D G) to rounding; each draw equals dense S^T v for a vector v
over the data with the drawn per-bin sums; the start is the same on 1 rank as on every rank count and for
replicated and sharded rows (the -n 3 run below has a rank without rows); it allocates nothing n-sized; the
per-row start of the other features is unchanged. Rank-agnostic (tests/test_mpi.py reruns it under -n 2).
"""

import os
import tracemalloc

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from conftest import passes_on_ranks
from flowfem.activations import activation
from flowfem.operator import DataOperator, ReluMoments1D, evaluate
from flowfem.operator.features import base as features_base
from flowfem.operator.features.relu_moments import bin_factor, bin_index
from flowfem.sobolev import WeightedH1
from flowfem.space import Space

pytestmark = pytest.mark.parallel

comm = MPI.COMM_WORLD
SIGMAS = ["relu", "leaky_relu:0.2"]


def awkward(n: int = 50, m: int = 16, seed: int = 0):
    """Replicated inputs x (n, 1) and weights D (n,), each rank's points theta (m, 2), with bins of one row, an
    empty bin (two kinks with no input between), rows at one x, zero weights and a point with w = 0."""
    rng = np.random.default_rng(1000 * seed + comm.rank)
    theta = rng.normal(size=(m, 2))
    theta[0, 0] = 0.0  # a constant neuron
    theta[1] = (1.0, -2.9)  # kinks at 2.9 and 2.95: the bin between holds no input
    theta[2] = (-2.0, 5.9)
    shared = np.random.default_rng(seed + 1)
    x = shared.uniform(-2, 2, (n, 1))
    x[:6] = 0.7  # rows at one x: a singular covariance
    x[6:8] = 0.0  # at x = 0: sum D^2 x^2 = 0 with sum D^2 > 0
    x[8] = 3.5  # alone beyond every kink but the largest ones
    D = shared.uniform(0.1, 3.0, n)
    D[10:14] = 0.0
    return x, theta, D


def moments_operator(sigma, x, theta):
    S = ReluMoments1D(activation(sigma), x, theta)
    S.distribute(comm)
    return S


def squared_moments(S, x, D):
    """(C (3, K + 1), V (K + 1,)) by NumPy: per bin, sum of D^2 x^p and sum of D^2 (x - mean)^2 with the mean
    sum D^2 x / sum D^2, the bins from np.searchsorted."""
    bins = np.searchsorted(S.kinks, x[:, 0], side="right")
    C = np.array([np.bincount(bins, weights=D**2 * x[:, 0] ** p, minlength=S.num_bins) for p in range(3)])
    mean = np.where(C[0] > 0, C[1] / np.where(C[0] > 0, C[0], 1.0), 0.0)
    return C, np.bincount(bins, weights=D**2 * (x[:, 0] - mean[bins]) ** 2, minlength=S.num_bins)


def test_factor_reproduces_every_bins_covariance():
    x, theta, D = awkward()
    S = moments_operator("relu", x, theta)
    C, V = S.squared_moments(D)
    C_np, V_np = squared_moments(S, x, D)
    assert np.allclose(C, C_np, rtol=1e-13, atol=0) and np.allclose(V, V_np, rtol=1e-12, atol=1e-14 * C[2])
    bins = bin_index(S.kinks, x)
    counts = np.bincount(bins, minlength=S.num_bins)
    assert np.any(counts == 0) and np.any(counts == 1)  # the awkward bins are there
    L = bin_factor(C, V)
    cov = np.array([[L[1] ** 2 + L[2] ** 2, L[1] * L[0]], [L[0] * L[1], L[0] ** 2]])  # [[l_x1, l_xx], [l_1, 0]] squared
    want = np.array([[C[2], C[1]], [C[1], C[0]]])
    assert np.all(np.abs(cov - want) <= 1e-13 * (C[2] + C[0]))
    assert np.all(L[:, C[0] == 0] == 0.0)  # empty bins, zero weights: nothing drawn
    one_x = [k for k in range(S.num_bins) if C[0, k] > 0 and np.unique(x[bins == k]).size == 1]
    assert one_x  # bins of one row, and the rows at x = 0.7
    assert np.all(L[2, one_x] <= 1e-14 * (np.abs(L[1, one_x]) + L[0, one_x]))  # singular: l_xx = 0 to rounding


class Units:
    """A stand-in for np.random.default_rng whose draws are the unit vector e_i (then the sketch's column is the
    i-th column of the linear map from its normals)."""

    def __init__(self, i):
        self.i = i

    def __call__(self, seed):
        return self

    def standard_normal(self, shape):
        z = np.zeros(shape)
        z.flat[self.i] = 1.0
        return z


@pytest.mark.parametrize("name", SIGMAS)
def test_sketch_covariance_equals_dense_normal_operator(name, monkeypatch):
    """The sketch is J z, z ~ N(0, I): its covariance J J^T (every rank's points) must equal that of
    S^T (scale D G), scale^2 S^T diag(D)^2 S by dense NumPy."""
    x, theta, D = awkward()
    scale = 0.37
    S = moments_operator(name, x, theta)
    columns = []
    for i in range(2 * S.num_bins):
        monkeypatch.setattr(np.random, "default_rng", Units(i))
        columns.append(S.sketch(D, 0, 1, scale)[:, 0])
    monkeypatch.undo()
    J = np.vstack(comm.allgather(np.array(columns).T))  # (all points, 2 (K + 1))
    theta_all = np.vstack(comm.allgather(theta))
    dense = evaluate(activation(name), x, theta_all)
    want = scale**2 * dense.T @ (D[:, None] ** 2 * dense)
    size = scale**2 * np.abs(dense).T @ (D[:, None] ** 2 * np.abs(dense))
    assert np.all(np.abs(J @ J.T - want) <= 1e-12 * (size + np.max(size)))


@pytest.mark.parametrize("name", SIGMAS)
def test_each_draw_is_the_adjoint_of_a_data_vector_with_its_bin_sums(name, monkeypatch):
    """A draw's per-bin pairs (sum r x, sum r), put on the rows of their bins (least squares per bin, which
    must reproduce them: a bin whose rows share one x draws sum r x = x sum r), give a vector r over the data
    with dense S^T r equal to the sketch."""
    x, theta, D = awkward()
    S = moments_operator(name, x, theta)
    seed, scale, columns = 3, 0.5, 2
    got = S.sketch(D, seed, columns, scale)
    L = bin_factor(*S.squared_moments(D))
    bins = np.searchsorted(S.kinks, x[:, 0], side="right")
    dense = evaluate(activation(name), x, theta)
    for j in range(columns):
        z = np.random.default_rng([seed, j]).standard_normal((2, S.num_bins))
        pairs = scale * np.array([L[1] * z[0] + L[2] * z[1], L[0] * z[0]])  # (sum r x, sum r) per bin
        r = np.zeros(x.shape[0])
        for k in range(S.num_bins):
            rows = np.flatnonzero(bins == k)
            if not rows.size:
                assert np.all(pairs[:, k] == 0.0)
                continue
            X = np.vstack([x[rows, 0], np.ones(rows.size)])
            r[rows] = np.linalg.lstsq(X, pairs[:, k], rcond=None)[0]
            assert np.allclose(X @ r[rows], pairs[:, k], rtol=1e-12, atol=1e-14 * np.abs(pairs).max())
        # rounding: the terms' sizes, |theta_q| |x~_j| |r_j| for the prefix sums (as tests/test_relu_moments.py)
        size = np.abs(dense).T @ np.abs(r) + np.linalg.norm(theta, axis=1) * (np.hypot(x[:, 0], 1.0) @ np.abs(r))
        assert np.all(np.abs(got[:, j] - dense.T @ r) <= 1e-12 * size)


def rows_of(n: int) -> slice:
    """Rank 0 twice the share of the others, the last rank none (on 2 ranks and more)."""
    P, p = comm.size, comm.rank
    if P == 1:
        return slice(0, n)
    weights = np.array([2.0] + [1.0] * (P - 2) + [0.0])
    bounds = np.concatenate([[0], np.round(n * np.cumsum(weights) / weights.sum())]).astype(int)
    return slice(bounds[p], bounds[p + 1])


def start_by_coordinate(space_comm, sigma, x, D, sharded_rows=None, columns=3, seed=4):
    """start_block's rows on a box mesh over space_comm, as (columns, dofs) sorted by the dofs' coordinates (so
    that meshes split over different numbers of ranks compare)."""
    H = WeightedH1(Space.box(1, 12, 3.0, comm=space_comm), "uniform", kappa=1.0)
    if sharded_rows is None:
        Phi = DataOperator(H, sigma, x)
        W = Phi.start_block(seed, columns, D)
    else:
        Phi = DataOperator(H, sigma, x[sharded_rows], sharded=True)
        W = Phi.start_block(seed, columns, D[sharded_rows])
    owned = W.shape[1]
    coords = H.V.tabulate_dof_coordinates()[:owned, :2]
    coords = np.vstack(space_comm.allgather(coords))
    W = np.hstack(space_comm.allgather(W))
    order = np.lexsort(np.round(coords, 9).T[::-1])  # rounded: a vertex's coordinates may differ in the last bits
    return W[:, order]


@pytest.mark.parametrize("name", SIGMAS)
def test_the_start_is_the_same_on_one_rank_and_for_sharded_rows(name):
    """start_block on COMM_WORLD, replicated and sharded (uneven rows, the last rank none), equals start_block
    on a one-rank mesh (COMM_SELF, every rank its own copy) to rounding: the same draws, whatever the split."""
    rng = np.random.default_rng(2)
    n = 400
    x = rng.uniform(-2.5, 2.5, (n, 1))
    x[:20] = 0.5  # repeated inputs
    D = rng.uniform(0.2, 2.0, n)
    one = start_by_coordinate(MPI.COMM_SELF, name, x, D)
    replicated = start_by_coordinate(comm, name, x, D)
    sharded = start_by_coordinate(comm, name, x, D, rows_of(n))
    size = np.abs(one).max()
    assert size > 0
    for W in (replicated, sharded):
        assert comm.allreduce(bool(np.all(np.abs(W - one) <= 1e-12 * size)), op=MPI.LAND)
    # another seed is another start (the draws are the seed's)
    H = WeightedH1(Space.box(1, 12, 3.0, comm=MPI.COMM_SELF), "uniform", kappa=1.0)
    other = DataOperator(H, name, x).start_block(5, 3, D)
    assert not np.allclose(other, DataOperator(H, name, x).start_block(4, 3, D))


def test_other_features_keep_the_per_row_start():
    """Features without a sketch (tanh: dense): the start is the old one, bit for bit: the columns of
    DataOperator.gaussian times D / n through Phi^T."""
    rng = np.random.default_rng(6)
    n = 120
    x = rng.uniform(-2, 2, (n, 1))
    D = rng.uniform(0.2, 2.0, n)
    H = WeightedH1(Space.box(1, 8, 2.0), "uniform", kappa=1.0)
    Phi = DataOperator(H, "tanh", x)
    assert not hasattr(Phi.S, "sketch")
    got = Phi.start_block(7, 3, D)
    y = H.A.createVecRight()
    for j, column in enumerate(Phi.gaussian(7, 3)):
        Phi.adjoint(column * D / n, y)
        assert np.array_equal(got[j], y.array_r)
    y.destroy()


def test_the_start_allocates_nothing_n_sized(monkeypatch):
    """tracemalloc's peak during start_block (bins already cached, as after the right-hand side): the sketch's
    is O(nq b), the same at n = 10^5 as at 10^6 and a tenth of one data column (8 n bytes) there; the per-row
    start (relu1d) allocates at least a column of G. The moments pass runs in pieces of PIECE rows (2^20
    by default, more than n here), made small."""
    monkeypatch.setattr(features_base, "PIECE", 2**12)
    H = WeightedH1(Space.box(1, 16, 4.0), "uniform", kappa=1.0)
    peaks = {}
    for method, n in (("relu1d_moments", 10**5), ("relu1d_moments", 10**6), ("relu1d", 10**6)):
        x = np.random.default_rng(8).uniform(-1, 1, (n, 1))
        D = np.ones(n)
        Phi = DataOperator(H, "relu", x, method=method)
        if isinstance(Phi.S, ReluMoments1D):
            Phi.S.moments(D)  # caches the bins of this rank's rows, as the right-hand side does
        Phi.start_block(0, 8, D)  # warm: work buffers are allocated once per block size
        tracemalloc.start()
        Phi.start_block(0, 8, D)
        peaks[method, n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    n = 10**6
    assert peaks["relu1d_moments", n] <= peaks["relu1d_moments", n // 10] + 2**12, peaks
    assert peaks["relu1d_moments", n] < 8 * n / 10, peaks
    assert peaks["relu1d", n] >= 8 * n, peaks


@pytest.mark.mpi
def test_three_ranks():
    """This file under mpirun -n 3 (2 cores: oversubscribed): uneven rows, the last rank without any."""
    passes_on_ranks(os.path.abspath(__file__), 3, timeout=600)
