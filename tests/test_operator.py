"""The data operator Phi = S W Psi: exact fast feature products and the quadrature.

Runs serially and under mpirun -n 2.
"""

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem.activations import activation
from flowfem.operator import (DataOperator, DenseFeatures, MonomialFeatures, ReluFeatures1D, ReluMoments1D,
                              ReluTreeFeatures, StorageLimit, evaluate, make_features as features)
from flowfem.sobolev import WeightedH1
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py


@pytest.mark.parametrize("name", ["relu", "leaky_relu:0.2"])
def test_sorted_relu_products_are_exact(name):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 1))
    theta = rng.normal(size=(500, 2))
    theta[:5, 0] = 0.0  # w = 0: constant neurons
    theta[5:10] = theta[10:15]  # repeated kinks
    x[:5, 0] = -theta[20:25, 1] / theta[20:25, 0]  # data exactly at kinks
    x[5:10] = x[10:15]  # repeated data
    S = ReluFeatures1D(activation(name), x, theta)
    D = S.dense()
    g, r = rng.normal(size=500), rng.normal(size=300)
    assert np.allclose(S.matvec(g), D @ g, rtol=0, atol=1e-12 * np.abs(D).sum(axis=1).max())
    assert np.allclose(S.rmatvec(r), D.T @ r, rtol=0, atol=1e-12 * np.abs(D).sum(axis=0).max())
    _assert_blocks_match_dense(S, D, rng, tol=1e-12)


def _assert_products_match_dense(S, rng, tol=1e-13):
    """S g and S^T r against the dense S, entry by entry, to rounding: relative to the sums of
    the terms' magnitudes, plus tol |x~_j| sum_q |theta_q| |g_q| (and alike for S^T r), the
    rounding of the prefix sums over all points (which can leave 1e-17 where S^T r is 0)."""
    D = S.dense()
    g, r = rng.normal(size=D.shape[1]), rng.normal(size=D.shape[0])
    xn = np.linalg.norm(np.hstack([S.x, np.ones((S.x.shape[0], 1))]), axis=1)
    tn = np.linalg.norm(S.theta, axis=1)
    assert np.all(np.abs(S.matvec(g) - D @ g) <= tol * (np.abs(D) @ np.abs(g) + xn * (tn @ np.abs(g))))
    assert np.all(np.abs(S.rmatvec(r) - D.T @ r) <= tol * (np.abs(D).T @ np.abs(r) + tn * (xn @ np.abs(r))))
    out_n, out_m = np.full(D.shape[0], np.nan), np.full(D.shape[1], np.nan)  # out= fills every entry
    assert np.array_equal(S.matvec(g, out_n), S.matvec(g)) and np.array_equal(S.rmatvec(r, out_m), S.rmatvec(r))
    _assert_blocks_match_dense(S, D, rng, tol)


def _assert_blocks_match_dense(S, D, rng, tol=1e-13, b=5):
    """S G and S^T R for blocks of b columns (the Nystrom basis's products) against the dense S,
    column by column, with the bound of _assert_products_match_dense's terms' magnitudes."""
    G, R = rng.normal(size=(D.shape[1], b)), rng.normal(size=(D.shape[0], b))
    xn = np.linalg.norm(np.hstack([S.x, np.ones((S.x.shape[0], 1))]), axis=1)
    tn = np.linalg.norm(S.theta, axis=1)
    SG, STR = S.matmat(G), S.rmatmat(R)
    assert SG.shape == (D.shape[0], b) and STR.shape == (D.shape[1], b)
    assert np.all(np.abs(SG - D @ G) <= tol * (np.abs(D) @ np.abs(G) + np.outer(xn, tn @ np.abs(G))))
    assert np.all(np.abs(STR - D.T @ R) <= tol * (np.abs(D).T @ np.abs(R) + np.outer(tn, xn @ np.abs(R))))


@pytest.mark.parametrize("name", ["relu", "leaky_relu:0.2"])
@pytest.mark.parametrize("d,leaf", [(1, 4), (2, 1), (2, 16), (3, 8)])
def test_relu_tree_products_are_exact(name, d, leaf):
    """Awkward cases on purpose: repeated neurons and data, w = 0, data on the neurons' hyperplanes, tiny leaves."""
    rng = np.random.default_rng(d * 100 + leaf)
    x = rng.uniform(-1, 1, (200, d))
    theta = rng.normal(size=(700, d + 1))
    theta[:10] = theta[10:20]  # repeated neurons: zero-radius nodes
    theta[20:30, :d] = 0.0  # constant neurons
    x[:5] = x[5:10]
    x[10] = 0.0
    theta[40, -1] = -x[11] @ theta[40, :d]  # x_11 exactly on neuron 40's hyperplane (up to rounding)
    S = ReluTreeFeatures(activation(name), x, theta, leaf_size=leaf)
    assert S.C.nnz < 200 * 700  # the tree skipped most entries
    _assert_products_match_dense(S, rng)


def test_relu_tree_storage_limit_falls_back_to_dense_with_a_warning(monkeypatch):
    rng = np.random.default_rng(4)
    x, theta = rng.uniform(-1, 1, (300, 2)), rng.normal(size=(400, 3))
    assert isinstance(features(activation("relu"), x, theta), ReluTreeFeatures)
    with pytest.raises(StorageLimit, match="would store about"):
        ReluTreeFeatures(activation("relu"), x, theta, chunk=50, max_entries=1000)
    monkeypatch.setattr("flowfem.operator.features.relu_tree.TREE_MAX_ENTRIES", 1000)
    with pytest.warns(UserWarning, match="evaluating sigma densely"):
        S = features(activation("relu"), x, theta)
    assert isinstance(S, DenseFeatures)
    with pytest.raises(StorageLimit):  # a method asked for by name is not swapped silently
        features(activation("relu"), x, theta, "relu_tree")


def test_relu_tree_on_quadrature_points_and_empty_ranks():
    """Real quadrature points on the sphere (P2, 30k points), and a rank without points."""
    rng = np.random.default_rng(3)
    H = WeightedH1(Space.sphere(3), degree=2)
    x = rng.uniform(-1, 1, (150, 2))
    theta = DataOperator(H, "relu", x).quadrature.theta
    S = ReluTreeFeatures(activation("relu"), x, theta)
    # about n sqrt(m) cut-leaf entries: far below the n m of the dense matrix
    assert S.C.nnz < 0.15 * x.shape[0] * max(1, theta.shape[0])
    _assert_products_match_dense(S, rng)
    empty = ReluTreeFeatures(activation("leaky_relu:0.1"), x, np.zeros((0, 3)))
    assert empty.matvec(np.zeros(0)).tolist() == [0.0] * 150 and empty.rmatvec(np.ones(150)).shape == (0,)


@pytest.mark.parametrize("k,d", [(1, 1), (2, 2), (3, 1), (4, 2)])
def test_monomial_low_rank_is_exact(k, d):
    rng = np.random.default_rng(k)
    x, theta = rng.uniform(-1, 1, (40, d)), rng.normal(size=(60, d + 1))
    S = MonomialFeatures(activation(f"monomial:{k}"), x, theta)
    D = S.dense()
    g, r = rng.normal(size=60), rng.normal(size=40)
    assert S.P.shape[1] == len(list(__import__("itertools").combinations_with_replacement(range(d + 1), k)))
    assert np.allclose(S.matvec(g), D @ g, atol=1e-10 * np.abs(D).max())
    assert np.allclose(S.rmatvec(r), D.T @ r, atol=1e-10 * np.abs(D).max())
    _assert_blocks_match_dense(S, D, rng, tol=1e-10)


def test_dense_blocks_match_one_block():
    rng = np.random.default_rng(1)
    x, theta = rng.uniform(-1, 1, (37, 2)), rng.normal(size=(23, 3))
    S = DenseFeatures(activation("softplus"), x, theta, block_entries=50)  # blocks of 2 rows
    g, r = rng.normal(size=23), rng.normal(size=37)
    assert np.allclose(S.matvec(g), S.dense() @ g, rtol=1e-14)
    assert np.allclose(S.rmatvec(r), S.dense().T @ r, rtol=1e-14)
    _assert_blocks_match_dense(S, S.dense(), rng)


def test_auto_method_choice_and_errors():
    x1, x2, th = np.zeros((3, 1)), np.zeros((3, 2)), np.zeros((4, 2))
    assert isinstance(features(activation("relu"), x1, th), ReluMoments1D)  # repeated products: O(nq) each
    assert isinstance(features(activation("leaky_relu:0.1"), x1, th), ReluMoments1D)
    assert isinstance(features(activation("relu"), x1, th, repeated=False), ReluFeatures1D)
    assert isinstance(features(activation("relu"), x1, th, "relu1d"), ReluFeatures1D)
    assert isinstance(features(activation("relu"), x2, np.zeros((4, 3))), ReluTreeFeatures)
    assert isinstance(features(activation("relu"), x2, np.zeros((4, 3)), repeated=False), DenseFeatures)
    assert isinstance(features(activation("monomial:2"), x2, np.zeros((4, 3))), MonomialFeatures)
    assert isinstance(features(activation("tanh"), x1, th), DenseFeatures)
    with pytest.raises(ValueError, match="relu1d needs"):
        features(activation("tanh"), x1, th, "relu1d")
    with pytest.raises(ValueError, match="relu_tree needs relu"):
        features(activation("tanh"), x2, np.zeros((4, 3)), "relu_tree")
    with pytest.raises(ValueError, match="relu1d needs 1-D inputs"):
        features(activation("relu"), x2, np.zeros((4, 3)), "relu1d")
    with pytest.raises(ValueError, match="unknown data-operator method"):
        features(activation("relu"), x1, th, "fast")


def test_evaluate_is_sigma_and_its_derivatives_of_one_product():
    """evaluate: the one dense sigma^(k)(x~ theta^T) of network, readout, particles and plateau."""
    rng = np.random.default_rng(9)
    x, theta = rng.uniform(-1, 1, (11, 2)), rng.normal(size=(5, 3))
    act = activation("tanh")
    z = np.array([[t[:2] @ xj + t[2] for t in theta] for xj in x])
    s, s1, s2 = evaluate(act, x, theta, (0, 1, 2))
    assert np.allclose(s, np.tanh(z), rtol=1e-14) and np.array_equal(evaluate(act, x, theta), s)
    assert np.allclose(s1, act.dsigma(z), rtol=1e-14) and np.allclose(s2, act.d2sigma(z), rtol=1e-13)
    with pytest.raises(ValueError, match="derivatives 0, 1 and 2"):
        evaluate(act, x, theta, 3)


@pytest.mark.parametrize("domain,measure", [("box", 36.0), ("sphere", 4 * np.pi), ("circle", 2 * np.pi)])
def test_quadrature_weights_integrate_the_domain(domain, measure):
    space = Space.make(domain, 2 if domain == "sphere" else 1, {"box": 4, "sphere": 3, "circle": 64}[domain],
                       radius=3.0)
    H = WeightedH1(space, degree=2)
    Phi = DataOperator(H, "relu" if space.homogeneous_only else "monomial:1", np.zeros((1, space.input_dim)))
    one = H.function()
    one.x.array[:] = 1.0
    total = MPI.COMM_WORLD.allreduce(Phi.quadrature.weights(one.x.petsc_vec).sum())
    tol = 1e-12 if domain == "box" else 1e-5  # curved cells: |S^2| to O(h^4)
    assert total == pytest.approx(measure, rel=tol)


def test_data_operator_is_symmetric_pair():
    """<Phi U, r> = <U, Phi^T r>: apply and adjoint are transposes (also across ranks)."""
    space = Space.box(1, 8, 2.0)
    H = WeightedH1(space, degree=2)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (30, 1))
    Phi = DataOperator(H, "tanh", x)
    U = H.A.createVecRight()
    U.array[:] = np.random.default_rng(MPI.COMM_WORLD.rank).normal(size=U.getLocalSize())
    r = rng.normal(size=30)
    V = H.A.createVecRight()
    Phi.adjoint(r, V)
    assert np.dot(Phi.apply(U), r) == pytest.approx(U.dot(V), rel=1e-12)
    assert np.allclose(Phi.predict(U, x), Phi.apply(U), rtol=1e-13)


def test_columns_are_phi_transpose_in_any_block_size():
    """Phi^T built from blocks of data points: column j is Phi^T e_j, whatever the block size."""
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (23, 2))
    Phi = DataOperator(WeightedH1(Space.sphere(1), degree=2), "relu", x)
    C = Phi.columns()
    assert np.allclose(Phi.columns(block_entries=1), C, rtol=0, atol=1e-14 * np.abs(C).max())  # one point per block
    V = Phi.H.A.createVecRight()
    for j in (0, 11, 22):
        Phi.adjoint(np.eye(23)[j], V)
        assert np.allclose(C[:, j], V.array_r, rtol=0, atol=1e-13 * np.abs(C).max())


@pytest.mark.parametrize("name", ["relu", "leaky_relu:0.3"])
@pytest.mark.parametrize("n", [1, 57, 300])
def test_relu1d_normal_with_the_data_split_over_the_ranks(name, n):
    """S^T diag(D) S g / n with the O(n) work split over the ranks = the plain products with the
    predictions summed over the ranks; each rank its own neurons (w = 0 and repeated kinks among
    them), the same data (ties, points on kinks; n = 1 leaves a rank without data)."""
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(100 + comm.rank)
    theta = rng.normal(size=(400, 2))
    theta[:6, 0] = 0.0
    theta[6:12] = theta[12:18]
    data = np.random.default_rng(7)
    x = data.uniform(-2, 2, (n, 1))
    x[: n // 2] = x[n // 2: 2 * (n // 2)]
    x[-1, 0] = -theta[30, 1] / theta[30, 0] if comm.rank == 0 else x[-1, 0]
    x = comm.bcast(x, root=0)
    D = data.uniform(0.5, 2.0, n)
    S = ReluFeatures1D(activation(name), x, theta)
    S.distribute(comm)
    g = rng.normal(size=400)
    f = S.matvec(g)
    comm.Allreduce(MPI.IN_PLACE, f, op=MPI.SUM)
    expected = S.rmatvec(D * f / n)
    got = S.normal(g, D, 1.0 / n)
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-13 * np.abs(expected).max())


def test_normal_operator_equals_adjoint_of_apply():
    """Phi^T diag(D) Phi U / n by DataOperator.normal (split relu path and the generic one)."""
    rng = np.random.default_rng(8)
    x = rng.uniform(-3, 3, (150, 1))
    D = rng.uniform(0.1, 3.0, 150)
    for sigma in ("relu", "tanh"):
        H = WeightedH1(Space.box(1, 9, 4.0), degree=2)
        Phi = DataOperator(H, sigma, x)
        U = H.A.createVecRight()
        U.array[:] = np.random.default_rng(MPI.COMM_WORLD.rank).normal(size=U.getLocalSize())
        a, b = H.A.createVecRight(), H.A.createVecRight()
        Phi.normal(U, D, a)
        Phi.adjoint(D * Phi.apply(U) / 150, b)
        b.axpy(-1.0, a)
        assert b.norm() <= 1e-12 * a.norm(), sigma



@pytest.mark.parametrize("sigma,d", [("relu", 1), ("leaky_relu:0.2", 1), ("tanh", 1), ("relu", 2),
                                     ("leaky_relu:0.2", 2), ("monomial:2", 2)])
def test_normal_block_equals_normal_per_vector(sigma, d):
    """DataOperator.normal_block on rows (b, owned dofs), which builds the Nystrom basis, is
    DataOperator.normal applied to each row: for every feature implementation (relu1d, dense,
    relu tree, monomial), each rank its own random rows."""
    rng = np.random.default_rng(9)
    x = rng.uniform(-2, 2, (120, d))
    D = rng.uniform(0.1, 3.0, 120)
    space = Space.box(1, 9, 4.0) if d == 1 else Space.sphere(1)
    Phi = DataOperator(WeightedH1(space, degree=2), sigma, x)
    V = Phi.H.A.createVecRight()
    U = np.random.default_rng(MPI.COMM_WORLD.rank).normal(size=(4, V.getLocalSize()))
    block = Phi.normal_block(U, D)
    assert block.shape == U.shape
    for row, expected in zip(U, block):
        W = Phi.H.A.createVecRight()
        W.array[:] = row
        Phi.normal(W, D, V)
        scale = MPI.COMM_WORLD.allreduce(np.abs(V.array_r).max(), op=MPI.MAX)
        assert np.allclose(expected, V.array_r, rtol=0, atol=1e-12 * scale), sigma


def test_relu_tree_chunks_bound_the_traversal_and_change_nothing(monkeypatch):
    """Data points are traversed in chunks of about CHUNK_ENTRIES stored entries (sized from the entries per
    point seen so far): the same P and C, entry for entry, as one traversal of every point."""
    from flowfem.operator.features import relu_tree

    rng = np.random.default_rng(7)
    x, theta = rng.uniform(-1, 1, (900, 2)), rng.normal(size=(3000, 3))
    whole = ReluTreeFeatures(activation("relu"), x, theta, chunk=900)
    chunks = []
    traverse = ReluTreeFeatures._traverse

    def spy(self, j0, j1):
        P, C = traverse(self, j0, j1)
        chunks.append((j1 - j0, P.nnz + C.nnz))
        return P, C

    monkeypatch.setattr(ReluTreeFeatures, "_traverse", spy)
    monkeypatch.setattr(relu_tree, "CHUNK_ENTRIES", 20000)
    S = ReluTreeFeatures(activation("relu"), x, theta)
    per_point = sum(e for _, e in chunks) / x.shape[0]
    assert len(chunks) > 5 and chunks[0][0] == 64 and sum(r for r, _ in chunks) == x.shape[0]
    # after the first, each chunk holds about 20000 entries (its points' counts vary about the mean)
    assert all(abs(e - 20000) < 0.5 * 20000 for r, e in chunks[1:-1]), (per_point, chunks)
    for a, b in ((S.P, whole.P), (S.C, whole.C)):
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("m, leaf", [(1, 8), (9, 8), (1000, 8), (777, 3), (64, 1)])
def test_relu_tree_nodes_hold_their_points(m, leaf):
    """Each node's points lie in its ball, its children split it into halves (breadth-first numbering,
    split along its widest coordinate), and the leaves hold at most leaf_size points."""
    theta = np.random.default_rng(m).normal(size=(m, 3)) * [1.0, 5.0, 0.1]
    S = ReluTreeFeatures(activation("relu"), np.zeros((1, 2)), theta, leaf_size=leaf)
    assert sorted(S.perm) == list(range(m)) and S.start[0] == 0 and S.end[0] == m
    for i in range(S.start.size):
        pts = S.theta_t[S.start[i]:S.end[i]]
        assert np.all(np.linalg.norm(pts - S.centre[i], axis=1) <= S.radius[i] * (1 + 1e-12))
        np.testing.assert_allclose(S.centre[i], 0.5 * (pts.min(axis=0) + pts.max(axis=0)))
        c = S.left[i]
        if c < 0:
            assert S.end[i] - S.start[i] <= leaf
            continue
        assert c > i and S.start[c] == S.start[i] and S.end[c] == S.start[c + 1] and S.end[c + 1] == S.end[i]
        assert S.end[c] - S.start[c] == (S.end[i] - S.start[i]) // 2
        k = np.argmax(pts.max(axis=0) - pts.min(axis=0))  # the lower half is below the upper along it
        assert S.theta_t[S.start[c]:S.end[c], k].max() <= S.theta_t[S.start[c + 1]:S.end[c + 1], k].min()


@pytest.mark.parametrize("width", [1, 2, 5])
def test_relu_tree_blocks_in_groups_of_columns(monkeypatch, width):
    """Block products in groups of ``width`` columns (BLOCK_BYTES: 1 is single columns by matvec, 2 leaves
    a ragged last group of 5) match the dense S, and the group width follows BLOCK_BYTES."""
    from flowfem.operator.features import relu_tree

    rng = np.random.default_rng(width)
    x, theta = rng.uniform(-1, 1, (120, 2)), rng.normal(size=(400, 3))
    S = ReluTreeFeatures(activation("leaky_relu:0.1"), x, theta)
    monkeypatch.setattr(relu_tree, "BLOCK_BYTES", 8 * 3 * 400 * width)
    assert S._width() == width
    _assert_blocks_match_dense(S, evaluate(S.sigma, x, theta), rng)
