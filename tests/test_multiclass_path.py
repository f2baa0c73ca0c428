"""The regularisation path of the softmax loss (Problem(loss="softmax", alpha="auto"), flowfem.path.softmax_path).

* the path's scores, accuracies and training losses equal an independent loop of cold softmax fits on
  the same split (recomputed here from the seed), the choice is that loop's argmin (ties to the larger
  alpha), and the refit equals a cold fit on all rows at the chosen alpha;
* with folds, each fold's scores equal cold fits on that fold;
* where the best alpha is known: labels drawn independently of x take the largest alpha, classes
  separated without noise the smallest;
* the command writes the table (with accuracies) to metrics.json and path.png, and under mpirun -n 2
  chooses the same alpha with the same scores as serially (this file also reruns under mpirun -n 2
  through tests/test_mpi.py).
"""

import json
import os

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from conftest import BIN, gather, run
from flowfem import softmax as sm
from flowfem.operator import DataOperator
from flowfem.path import splits
from flowfem.problem import ClassifierResult, Problem
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

FLOWFEM = os.path.join(BIN, "flowfem")
ALPHAS = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]


def data(n=200, seed=3, noise=0.15):
    """x (n, 1) and labels 0/1/2 on three intervals of [-1, 1], blurred by ``noise`` (the same on every rank)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    return x[:, None], np.digitize(x + noise * rng.standard_normal(n), [-0.3, 0.35])


def space():
    return Space.box(1, 12, 3.0)


def cross_entropy(F, k):
    """Mean of -log softmax(F_j)_{k_j} in plain NumPy (the reference)."""
    F = F - F.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(F).sum(axis=1)) - F[np.arange(len(k)), k]))


def cold_scores(x, y, train, held, alphas, rtol):
    """(validation mean cross-entropy, validation accuracy, training mean cross-entropy) per alpha of
    cold softmax fits (from 0, their own data operator) on the training rows alone."""
    out = []
    for a in alphas:
        fit = Problem(space(), "relu", alpha=a, loss="softmax").fit(x[train], y[train], rtol=rtol)
        F, Ft = fit.decision_function(x[held]), fit.decision_function(x[train])
        out.append((cross_entropy(F, y[held]), np.mean(np.argmax(F, axis=1) == y[held]), cross_entropy(Ft, y[train])))
    return np.array(out)


def test_path_equals_cold_fits_on_the_same_split():
    x, y = data()
    rtol = 1e-11
    r = Problem(space(), "relu", alpha="auto", loss="softmax").fit(x, y, alphas=ALPHAS, validation=0.2, seed=0,
                                                                   rtol=rtol)
    assert isinstance(r, ClassifierResult) and list(r.classes) == [0, 1, 2]
    p = r.path
    assert p.score == "validation mean cross-entropy loss" and p.validation == 0.2 and p.seed == 0
    perm = np.random.default_rng(0).permutation(len(y))  # the split, independently of flowfem.path.splits
    held, train = np.sort(perm[:40]), np.sort(perm[40:])
    cold = cold_scores(x, y, train, held, ALPHAS, rtol)
    # measured: the warm-started path's scores and the cold fits' agree to 2e-13 (train loss 5e-14)
    np.testing.assert_allclose(p.scores, cold[:, 0], rtol=1e-8)
    np.testing.assert_array_equal(p.accuracy, cold[:, 1])
    np.testing.assert_allclose(p.train_loss, cold[:, 2], rtol=1e-8)
    best = cold[:, 0].min()
    assert p.chosen == int(np.flatnonzero(cold[:, 0] <= best * (1 + 1e-8))[0])  # ties -> the larger alpha
    assert 0 < p.chosen < len(ALPHAS) - 1, cold[:, 0]  # noisy labels: the minimum lies inside the grid
    assert np.all(p.newton > 0) and np.all(p.iterations > 0) and p.refit_iterations > 0
    # the refit: a cold fit on all rows at the chosen alpha
    ref = Problem(space(), "relu", alpha=p.alpha, loss="softmax").fit(x, y, rtol=rtol)
    assert r.functional.alpha == p.alpha and r.info.converged
    for U, V in zip(r.Us, ref.Us):
        u, v = gather(U), gather(V)
        assert np.linalg.norm(u - v) <= 1e-8 * np.linalg.norm(v)
    assert r.energy == pytest.approx(ref.energy, rel=1e-10)
    np.testing.assert_array_equal(r.predict(x), ref.predict(x))


def test_folds_equal_cold_fits_on_each_fold():
    x, y = data(120, seed=4)
    alphas = [1e-2, 1e-4]
    r = Problem(space(), "relu", alpha="auto", loss="softmax").fit(x, y, alphas=alphas, folds=3, seed=1, rtol=1e-11)
    p = r.path
    assert p.fold_scores.shape == (3, 2) and p.folds == 3 and p.validation is None
    for k, (train, held) in enumerate(splits(len(y), None, 3, seed=1)):
        np.testing.assert_allclose(p.fold_scores[k], cold_scores(x, y, train, held, alphas, 1e-11)[:, 0], rtol=1e-8)
    np.testing.assert_allclose(p.scores, p.fold_scores.mean(axis=0))
    assert p.chosen == int(np.argmin(p.scores))


def test_noise_labels_choose_the_largest_alpha_and_separated_classes_the_smallest():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1.0, 1.0, 150)[:, None]
    alphas = [1e-1, 1e-3, 1e-5]
    noise = rng.integers(0, 3, 150)  # independent of x: the flattest fit predicts best
    r = Problem(space(), "relu", alpha="auto", loss="softmax").fit(x, noise, alphas=alphas)
    assert r.path.chosen == 0 and r.path.alpha == 1e-1 and r.functional.alpha == 1e-1
    assert np.all(r.path.scores[1:] > r.path.scores[0]), r.path.scores  # measured: 1.179, 1.196, 1.193
    separated = np.digitize(x[:, 0], [-0.3, 0.35])  # no label noise: sharper boundaries predict better
    r = Problem(space(), "relu", alpha="auto", loss="softmax").fit(x, separated, alphas=alphas)
    assert r.path.chosen == 2 and r.path.alpha == 1e-5
    assert np.all(np.diff(r.path.scores) < 0), r.path.scores  # measured: 0.31, 0.080, 0.0064
    assert r.path.accuracy[-1] == 1.0


@pytest.mark.parametrize("pc,preconditioner", [("block_diagonal", "nystrom"), ("bohning", "nystrom"),
                                               ("block_diagonal", "gamg")])
def test_row_weights_and_set_alpha_equal_cold_fits_on_the_rows(pc, preconditioner):
    """One SoftmaxNewton on the operator of all rows, moved between alphas and row weights (as the path
    moves it), solves what fit_softmax solves cold on the selected rows alone, for each preconditioner."""
    x, y = data(120, seed=6)
    p = Problem(space(), "relu", loss="softmax")
    Phi = DataOperator(p.H, p.activation, x)
    E = sm.SoftmaxFunctional(p.H, Phi, y.astype(np.int64), 3, 1e-2)
    newton = sm.SoftmaxNewton(E, 1e-11, linear_rtol=1e-11, preconditioner=preconditioner, pc=pc)
    rows = np.flatnonzero(np.arange(120) % 3 != 0)  # two thirds of the rows: weights 3/2 there, 0 elsewhere
    X = E.vector()
    try:
        for c, selected in ((np.ones(120), np.arange(120)), (np.where(np.isin(np.arange(120), rows), 1.5, 0.0), rows)):
            newton.set_row_weights(c)
            X.set(0.0)
            for a in (1e-2, 1e-3, 1e-4):
                newton.set_alpha(a)
                newton.solve(X)
                Phi_rows = DataOperator(p.H, p.activation, x[selected])
                Us, info, _ = sm.fit_softmax(p.H, Phi_rows, y[selected], a, rtol=1e-11)
                cold = np.concatenate([gather(U) for U in Us])
                warm = np.concatenate([gather(U) for U in E.split(X)])
                assert np.linalg.norm(warm - cold) <= 1e-7 * np.linalg.norm(cold), (a, pc, preconditioner)
    finally:
        newton.destroy()
        X.destroy()
        E.destroy()


def test_numeric_alpha_refuses_path_arguments():
    x, y = data(40)
    with pytest.raises(ValueError, match="validation apply only to alpha='auto'"):
        Problem(space(), "relu", alpha=1e-3, loss="softmax").fit(x, y, validation=0.2)
    with pytest.raises(ValueError, match="CG only"):
        Problem(space(), "relu", alpha="auto", loss="softmax").fit(x, y, solver="direct")


# -- the command ----------------------------------------------------------------------------------


def solve(tmp_path, *extra, ranks=1, out="out"):
    return run([FLOWFEM, "solve", "--data", "iris2", "--loss", "softmax", "--alpha", "auto", "--mesh-size", "4",
                "--quiet", *extra, "--out", str(tmp_path / out)], ranks=ranks, timeout=600)


@pytest.mark.mpi
def test_cli_iris2_auto_writes_the_path(tmp_path):
    r = solve(tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    p = m["path"]
    assert p["score"] == "validation mean cross-entropy loss" and p["validation"] == 0.2 and p["seed"] == 0
    assert [row["alpha"] for row in p["table"]] == [10.0 ** -k for k in range(2, 11)]
    scores = [row["score"] for row in p["table"]]
    assert p["alpha"] == m["alpha"] == p["table"][int(np.argmin(scores))]["alpha"]
    assert all(0 < row["accuracy"] <= 1 and row["newton"] > 0 and row["iterations"] > 0 for row in p["table"])
    assert m["classes"] == [0, 1, 2] and m["test_accuracy"] > 0.8 and p["refit_iterations"] > 0
    assert (out / "path.png").stat().st_size > 10_000 and "chosen alpha" in r.stdout


@pytest.mark.mpi
def test_cli_two_ranks_agree_with_serial(tmp_path):
    serial = solve(tmp_path, "--no-plot", "--rtol", "1e-12", out="one")
    parallel = solve(tmp_path, "--no-plot", "--rtol", "1e-12", ranks=2, out="two")
    assert serial.returncode == 0 and parallel.returncode == 0, serial.stderr + parallel.stderr
    one, two = (json.loads((tmp_path / o / "metrics.json").read_text()) for o in ("one", "two"))
    assert one["path"]["alpha"] == two["path"]["alpha"] and two["ranks"] == 2
    for key in ("score", "train_loss", "accuracy"):
        np.testing.assert_allclose([row[key] for row in two["path"]["table"]],
                                   [row[key] for row in one["path"]["table"]], rtol=1e-7)
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-8)
    assert two["test_confusion_matrix"] == one["test_confusion_matrix"]
