"""The binned-moment data term for relu and leaky relu on 1-D inputs (flowfem/operator/features/relu_moments.py).

S^T diag(D) S G from per-bin moments against an independent dense NumPy S^T diag(D) S (features.base.evaluate)
and against the per-point ReluFeatures1D, to rounding, with awkward data (inputs exactly at kinks, kinks
repeated within and across ranks, w = 0 points, ranks without rows or points); whole fits (squared loss, and
logistic, whose Newton steps change D) against method relu1d; frozen weights that cannot be written, so a
cached moment is never stale. Runs serially and under mpirun -n 2 (tests/test_mpi.py), and under -n 3 (below).
"""

import os
import re
import sys

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from conftest import ROOT, run
from flowfem import data
from flowfem.activations import activation
from flowfem.operator import DataOperator, ReluFeatures1D, ReluMoments1D, evaluate
from flowfem.operator.features.relu_moments import add_moments, bin_index
from flowfem.operator.features.weights import frozen, is_frozen
from flowfem.problem import Problem
from flowfem.sobolev import WeightedH1
from flowfem.space import Space
from flowfem.stationary import LinearSolver

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD
SIGMAS = ["relu", "leaky_relu:0.2"]


def awkward(n: int, m: int, seed: int = 0):
    """Replicated inputs x (n, 1) and weights D (n,), each rank's own points theta (m, 2): w = 0 points,
    kinks repeated on a rank and shared by every rank, inputs exactly at kinks of every rank's points and
    repeated inputs."""
    rng = np.random.default_rng(1000 * seed + comm.rank)
    theta = rng.normal(size=(m, 2))
    theta[:4, 0] = 0.0  # constant neurons
    theta[4:8] = theta[8:12]  # kinks repeated on this rank
    theta[12:16] = np.random.default_rng(seed).normal(size=(4, 2))  # and on every rank
    theta[16:18] = 2.5 * theta[12:14]  # the same kinks, another |w|
    theta[18:20] = -theta[12:14]  # the same kinks, w of the other sign
    kinks = np.concatenate(comm.allgather(-theta[12:40, 1] / theta[12:40, 0]))
    shared = np.random.default_rng(seed + 1)
    x = shared.uniform(-2, 2, (n, 1))
    at = kinks[np.abs(kinks) < 2][: n // 4]
    x[: at.size, 0] = at  # inputs exactly at kinks (of points on every rank)
    x[n // 2: n // 2 + n // 8] = x[: n // 8]  # repeated inputs
    D = shared.uniform(0.1, 3.0, n)
    return x, theta, D


def dense_normal(sigma, x, theta, D, scale, G):
    """S^T diag(scale D) (sum over the ranks of S G) by dense NumPy, and the size of its rounding: the
    terms' magnitudes, with |x~| |theta| |g| for the prefix sums (as tests/test_operator.py bounds them)."""
    S = evaluate(sigma, x, theta)
    F = S @ G
    comm.Allreduce(MPI.IN_PLACE, F, op=MPI.SUM)
    xn = np.linalg.norm(np.hstack([x, np.ones_like(x)]), axis=1)
    tn = np.linalg.norm(theta, axis=1)
    size = np.abs(S) @ np.abs(G) + np.outer(xn, tn @ np.abs(G))
    comm.Allreduce(MPI.IN_PLACE, size, op=MPI.SUM)
    r = scale * D[:, None] * F
    r_size = scale * np.abs(D)[:, None] * size
    return S.T @ r, np.abs(S).T @ r_size + np.outer(tn, xn @ r_size)


def everywhere(ok) -> bool:
    """ok on every rank (an MPI and): a comparison that fails on one rank fails the test on all of them,
    instead of leaving the others waiting in the next collective."""
    return comm.allreduce(bool(ok), op=MPI.LAND)


def moments_operator(sigma, x, theta):
    S = ReluMoments1D(sigma, x, theta)
    S.distribute(comm)
    return S


@pytest.mark.parametrize("name", SIGMAS)
@pytest.mark.parametrize("n", [1, 2, 61, 400])
def test_normal_equals_dense_and_per_point(name, n):
    """normal and normal_block = dense S^T diag(scale D) S = ReluFeatures1D.normal, to rounding (1e-12 of
    the terms' magnitudes); n = 1, 2 leave ranks without rows in the moments pass."""
    sigma = activation(name)
    x, theta, D = awkward(n, 300, seed=n)
    S = moments_operator(sigma, x, theta)
    per_point = ReluFeatures1D(sigma, x, theta)
    per_point.distribute(comm)
    rng = np.random.default_rng(comm.rank)
    G = rng.normal(size=(300, 5))
    scale = 1.0 / n
    expected, size = dense_normal(sigma, x, theta, D, scale, G)
    block = S.normal_block(G, D, scale)
    assert block.shape == G.shape
    assert everywhere(np.all(np.abs(block - expected) <= 1e-12 * size))
    for j in range(G.shape[1]):
        g = np.ascontiguousarray(G[:, j])
        out = np.full(300, np.nan)
        got = S.normal(g, D, scale, out)
        assert everywhere(got is out and np.all(np.abs(got - expected[:, j]) <= 1e-12 * size[:, j]))
        assert everywhere(np.all(np.abs(got - per_point.normal(g, D, scale)) <= 2e-12 * size[:, j]))
    assert np.all(np.isfinite(size)) and np.abs(expected).max() > 0  # a test that can fail


def split_cases():
    """(label, this rank's points theta (m, 2)) that stress the split of the K + 1 bins over the P ranks (rank
    p sums the bins (K + 1) p // P ... (K + 1) (p + 1) // P - 1): fewer kinks than ranks, so that some rank owns
    no bin (one kink, then none); each rank's kinks in a band of its own and the last rank without points, so
    that a rank's bins hold the points of one or two ranks only; and kinks interleaved over every rank."""
    P, rank = comm.size, comm.rank
    rng = np.random.default_rng(50 + rank)
    yield "one kink", np.array([[1.5, -0.3], [0.0, 0.5]]) if rank == 0 else np.array([[0.0, -0.2 * rank]])
    yield "no kink", np.array([[0.0, 0.4 + rank], [0.0, -1.0]])
    band = rank + np.sort(rng.uniform(0.0, 1.0, 7 + 3 * rank)) - P / 2  # kinks of this rank in [r, r + 1) - P / 2
    w = np.where(np.arange(band.size) % 3 == 0, -1.0, 1.0) * rng.uniform(0.5, 2.0, band.size)
    yield "bands", np.zeros((0, 2)) if P > 1 and rank == P - 1 else np.column_stack([w, -w * band])
    yield "interleaved", awkward(8, 40, seed=6)[1]


@pytest.mark.parametrize("name", SIGMAS)
def test_split_bins_give_the_dense_product(name):
    """normal_block (3 columns) and normal = dense S^T diag(scale D) S G on each of split_cases (the prefix sums
    of every rank's bins start from the totals of the ranks before them, read back at other ranks' points)."""
    sigma = activation(name)
    x = np.concatenate([np.linspace(-comm.size / 2 - 1, comm.size / 2 + 1, 45), [-0.3 / 1.5, 0.2]])[:, None]
    D = np.random.default_rng(1).uniform(0.1, 3.0, x.shape[0])
    for label, theta in split_cases():
        S = moments_operator(sigma, x, theta)
        G = np.random.default_rng(comm.rank).normal(size=(theta.shape[0], 3))
        expected, size = dense_normal(sigma, x, theta, D, 0.25, G)
        assert everywhere(np.all(np.abs(S.normal_block(G, D, 0.25) - expected) <= 1e-12 * size)), label
        got = S.normal(np.ascontiguousarray(G[:, 1]), D, 0.25)
        assert everywhere(np.all(np.abs(got - expected[:, 1]) <= 1e-12 * size[:, 1])), label
        assert comm.allreduce(np.abs(expected).max(initial=0.0), op=MPI.MAX) > 0.0, label  # a test that can fail


@pytest.mark.parametrize("name", SIGMAS)
def test_products_equal_dense(name):
    """S g and S^T r of this rank's points (no sum over the ranks), column blocks too: the dense S."""
    sigma = activation(name)
    x, theta, _ = awkward(200, 250, seed=3)
    S = moments_operator(sigma, x, theta)
    dense = evaluate(sigma, x, theta)
    rng = np.random.default_rng(7 + comm.rank)
    g, r = rng.normal(size=250), rng.normal(size=200)
    xn = np.linalg.norm(np.hstack([x, np.ones_like(x)]), axis=1)
    tn = np.linalg.norm(theta, axis=1)
    size_f = np.abs(dense) @ np.abs(g) + xn * (tn @ np.abs(g))
    size_r = np.abs(dense).T @ np.abs(r) + tn * (xn @ np.abs(r))
    assert everywhere(np.all(np.abs(S.matvec(g) - dense @ g) <= 1e-13 * size_f))
    assert everywhere(np.all(np.abs(S.rmatvec(r) - dense.T @ r) <= 1e-13 * size_r))
    G = rng.normal(size=(250, 3))
    assert everywhere(np.allclose(S.matmat(G), dense @ G, rtol=0, atol=1e-13 * np.abs(dense).sum(axis=1).max() * 3))


def test_no_points_no_kinks_and_empty_ranks():
    """A rank without points, every point with w = 0 (one bin), and no rows at all."""
    sigma = activation("leaky_relu:0.1")
    x = np.linspace(-1, 1, 7)[:, None]
    D = np.arange(1.0, 8.0)
    for theta in (np.zeros((0, 2)) if comm.rank == 0 else np.array([[0.5, 0.1], [-1.0, 0.3]]),
                  np.array([[0.0, 0.7], [0.0, -0.4]])):
        S = moments_operator(sigma, x, theta)
        g = np.arange(1.0, theta.shape[0] + 1)
        expected, size = dense_normal(sigma, x, theta, D, 0.5, g[:, None])
        assert everywhere(np.all(np.abs(S.normal(g, D, 0.5) - expected[:, 0]) <= 1e-13 * size[:, 0]))
    S = moments_operator(sigma, np.zeros((0, 1)), np.array([[1.0, 0.2], [0.0, 1.0]]))
    assert S.normal(np.ones(2), np.zeros(0), 1.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("name", SIGMAS)
def test_on_the_quadrature_points_of_a_p1_box(name):
    """The data operator's default for relu in 1-D on a P1 mesh (points from Space.box: many w = 0 and
    repeated kinks): Phi^T D Phi U / n against Phi^T from dense columns (Phi.columns) and against
    method relu1d."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-3, 3, (90, 1))
    D = rng.uniform(0.1, 3.0, 90)
    H = WeightedH1(Space.box(1, 8, 4.0), degree=1)
    Phi = DataOperator(H, name, x)
    assert isinstance(Phi.S, ReluMoments1D)
    theta = Phi.quadrature.theta
    x[:10, 0] = np.concatenate(comm.allgather(-theta[theta[:, 0] != 0, 1] / theta[theta[:, 0] != 0, 0]))[:10]
    Phi = DataOperator(H, name, x)  # inputs exactly at kinks
    reference = DataOperator(H, name, x, method="relu1d")
    assert isinstance(reference.S, ReluFeatures1D)
    C = Phi.columns()  # (owned dofs, n): dense Phi^T
    U = H.A.createVecRight()
    U.array[:] = np.random.default_rng(comm.rank).normal(size=U.getLocalSize())
    f = C.T @ U.array_r
    comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
    expected = C @ (D * f) / 90
    got, other = H.A.createVecRight(), H.A.createVecRight()
    Phi.normal(U, D, got)
    reference.normal(U, D, other)
    scale = comm.allreduce(np.abs(expected).max(), op=MPI.MAX)
    assert everywhere(np.allclose(got.array_r, expected, rtol=0, atol=1e-12 * scale))
    assert everywhere(np.allclose(got.array_r, other.array_r, rtol=0, atol=1e-12 * scale))
    rows = np.random.default_rng(comm.rank).normal(size=(3, U.getLocalSize()))
    block = Phi.normal_block(rows, D)
    f = C.T @ rows.T
    comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
    assert everywhere(np.allclose(block, (C @ (D[:, None] * f) / 90).T, rtol=0, atol=1e-12 * np.abs(block).max()))


def test_moments_by_chunks_and_by_rank_share():
    """The moments from chunks of rows (any split over the ranks) = the replicated pass = a direct sum."""
    x, theta, D = awkward(101, 120, seed=5)
    S = moments_operator(activation("relu"), x, theta)
    M = S.moments(D)
    k = np.searchsorted(S.kinks, x[:, 0], side="right")
    direct = np.array([[np.sum(D[k == b] * x[k == b, 0] ** p) for b in range(S.num_bins)] for p in range(3)])
    assert everywhere(np.allclose(M, direct, rtol=1e-13, atol=1e-13 * np.abs(direct).max()))
    rows = np.array_split(np.arange(101), comm.size)[comm.size - 1 - comm.rank]  # another split than S's
    chunks = [(x[j], D[j]) for j in np.array_split(rows, 3)]
    assert everywhere(np.allclose(S.moments_of(chunks), M, rtol=1e-13, atol=1e-13 * np.abs(M).max()))
    one = S.moments_of([(x[:, 0], D)] if comm.rank == 0 else [])  # all rows on rank 0, none elsewhere
    assert everywhere(np.allclose(one, M, rtol=1e-13, atol=1e-13 * np.abs(M).max()))
    chunk = add_moments(np.zeros((3, S.num_bins)), bin_index(S.kinks, x[:7]), x[:7], D[:7])
    assert chunk[0].sum() == pytest.approx(D[:7].sum()) and chunk.shape == M.shape


def test_product_reads_no_data_once_the_moments_are_cached():
    """With frozen weights the moments are computed once; a product then touches no input (here: the
    inputs replaced by NaN) and costs O(nq); other weights are never served stale moments."""
    sigma = activation("relu")
    x, theta, D = awkward(300, 200, seed=9)
    S = moments_operator(sigma, x, theta)
    Df = frozen(D)
    g = np.random.default_rng(comm.rank).normal(size=200)
    before = S.normal(g, Df, 0.1)
    S.xv = np.full_like(S.xv, np.nan)
    assert everywhere(np.array_equal(S.normal(g, Df, 0.1), before))  # served from the cached moments
    with pytest.raises(ValueError):
        Df[0] = 1.0
    other = frozen(2.0 * D)  # a new array: new moments (NaN, from the NaN inputs), never the cached ones
    assert everywhere(np.all(np.isnan(S.normal(g, other, 0.1))))
    S = moments_operator(sigma, x, theta)
    raw = D.copy()  # not frozen: not cached, so an in-place change is seen
    first = S.normal(g, raw, 0.1)
    raw *= 2.0
    assert everywhere(np.allclose(S.normal(g, raw, 0.1), 2.0 * first, rtol=1e-13, atol=1e-13 * np.abs(first).max()))


def test_frozen_weights_cannot_change():
    D = np.arange(5.0)
    F = frozen(D)
    assert is_frozen(F) and not is_frozen(D) and frozen(F) is F and np.array_equal(F, D)
    D[0] = 7.0  # a copy: the original stays the caller's
    assert F[0] == 0.0
    for write in (lambda: F.__setitem__(0, 1.0), lambda: F[1:].__iadd__(1.0), lambda: np.add(F, 1, out=F)):
        with pytest.raises(ValueError):
            write()
    with pytest.raises(ValueError):
        F.flags.writeable = True  # its memory is immutable: the flag cannot be set back
    with pytest.raises(ValueError):
        F[::2].flags.writeable = True
    assert frozen(np.zeros(0)).shape == (0,)


def test_linear_solver_replaces_its_weights():
    """LinearSolver.set_weights hands K and the Nystrom preconditioner a new frozen D (K's product then
    uses the new weights' moments); its D cannot be written in place."""
    train = data.synthetic("sin", 150, seed=2)
    problem = Problem(Space.box(1, 8, 4.0), "relu", alpha=1e-3)
    E = problem.functional(train.x, train.y)
    assert isinstance(E.Phi.S, ReluMoments1D)
    lin = LinearSolver(E)
    lin.setup()
    D0 = lin.D
    assert is_frozen(D0) and lin._ctx.D is D0 and lin.nystrom.D is D0
    with pytest.raises(ValueError):
        lin.D[:] = 2.0
    U = E.vector()
    U.array[:] = np.random.default_rng(comm.rank).normal(size=U.getLocalSize())
    D = np.random.default_rng(3).uniform(0.5, 2.0, 150)
    for refresh in (True, False):
        lin.set_weights(D, refresh=refresh)
        assert lin.D is not D0 and is_frozen(lin.D) and lin._ctx.D is lin.D and lin.nystrom.D is lin.D
        KU, expected, tmp = E.vector(), E.vector(), E.vector()
        lin.K.mult(U, KU)
        E.H.A.mult(U, expected)
        expected.scale(E.alpha)
        E.Phi.normal(U, D, tmp)  # raw D: moments computed afresh
        expected.axpy(1.0, tmp)
        assert everywhere(np.allclose(KU.array_r, expected.array_r, rtol=0, atol=1e-13 * expected.norm()))
        D = 3.0 * D
    lin.destroy()


def _fits_agree(loss: str, monkeypatch) -> tuple:
    """A fit by the default (auto: the moments) and by method relu1d agree to the solver's tolerance; returns
    the default's result and the number of distinct weights D whose moments it computed."""
    weights, moments = [], ReluMoments1D.moments

    def counting(self, D):
        weights.append(D)  # kept alive, so that ids stay distinct
        return moments(self, D)

    monkeypatch.setattr(ReluMoments1D, "moments", counting)
    train = data.synthetic("sin", 400, seed=4, noise=0.3)
    y = train.y if loss == "squared" else np.where(train.y > 0, 1.0, -1.0)
    results = {}
    for method in ("auto", "relu1d"):
        problem = Problem(Space.box(1, 24, 4.0), "relu", "gaussian:2", alpha=1e-4, loss=loss, method=method)
        results[method] = problem.fit(train.x, y, rtol=1e-11)
        if method == "auto":
            distinct = len({id(D) for D in weights})
            assert distinct >= 1  # the default went through the moments
    new, old = results["auto"], results["relu1d"]
    u, v = new.density.x.array, old.density.x.array
    diff = np.sqrt(comm.allreduce(np.sum((u - v) ** 2)))
    size = np.sqrt(comm.allreduce(np.sum(v ** 2)))
    assert diff <= 1e-7 * size, (diff, size)
    assert new.energy == pytest.approx(old.energy, rel=1e-10)
    f, h = new.predict(train.x), old.predict(train.x)
    assert np.allclose(f, h, rtol=0, atol=1e-7 * np.abs(h).max())
    return new, distinct


def test_fit_with_moments_equals_fit_with_per_point_products(monkeypatch):
    result, distinct = _fits_agree("squared", monkeypatch)
    assert result.iterations > 0 and distinct == 1  # D = 1 throughout: its moments computed once


def test_logistic_fit_with_moments_equals_per_point(monkeypatch):
    """Newton: D = l''(f, y) changes at every step, each a new frozen array with its own moments."""
    result, distinct = _fits_agree("logistic", monkeypatch)
    assert result.iterations >= 3 and distinct >= result.iterations  # several Newton steps, each its own D


@pytest.mark.mpi
def test_under_mpirun_with_three_ranks():
    """This file's operator tests on 3 ranks (oversubscribed on 2 cores): kinks shared by 3 ranks, a
    rank without rows."""
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.relpath(__file__, ROOT),
             "-k", "not fit"], ranks=3, timeout=600)
    assert r.returncode == 0 and len(re.findall(r"(\d+) passed", r.stdout)) == 3, r.stdout[-3000:] + r.stderr[-3000:]


def test_a_broadcast_weight_stays_a_broadcast_and_frozen():
    """LinearSolver's default D = 1 is one value broadcast to the n points: frozen in 8 bytes (not 8 n),
    cached like any frozen D, and no write reaches it."""
    D = frozen(np.broadcast_to(1.0, 1000))
    assert is_frozen(D) and D.strides == (0,)  # every point reads the same 8 bytes
    with pytest.raises(ValueError):
        D[3] = 2.0
    with pytest.raises(ValueError):
        D.flags.writeable = True
    assert np.array_equal(D, np.ones(1000))
