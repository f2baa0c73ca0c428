"""Multiclass classification through the API (issue 14 §2): Problem(loss="softmax").fit against
fit_softmax called directly, the ClassifierResult's scikit-learn-style predictions against NumPy,
string labels through the readout network and its files, and the refusals in one line."""

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI

from conftest import gather
from flowfem import softmax as sm
from flowfem.export import from_safetensors, to_safetensors
from flowfem.loss import loss
from flowfem.network import Network
from flowfem.operator import DataOperator
from flowfem.problem import ClassifierResult, Problem
from flowfem.readout import readout
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD
ALPHA = 1e-3


def data(n=200, seed=3):
    """x (n, 1) and labels 0/1/2 on three noisy intervals of [-1, 1] (the same on every rank)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    return x[:, None], np.digitize(x + 0.15 * rng.standard_normal(n), [-0.3, 0.35])


def problem():
    return Problem(Space.box(1, 12, 3.0), "relu", alpha=ALPHA, loss="softmax")


def test_fit_equals_fit_softmax_and_predictions_match_numpy():
    x, y = data()
    p = problem()
    result = p.fit(x, y, rtol=1e-12)
    assert isinstance(result, ClassifierResult) and result.outputs == 3 and list(result.classes) == [0, 1, 2]
    Phi = DataOperator(p.H, p.activation, x)
    Us, info, classes = sm.fit_softmax(p.H, Phi, y, ALPHA, rtol=1e-12)
    assert list(classes) == [0, 1, 2] and result.iterations == info.iterations
    for U, V in zip(result.Us, Us):
        np.testing.assert_allclose(gather(U), gather(V), rtol=0, atol=1e-12 * max(1.0, np.abs(gather(V)).max()))
    # the scores against the dense features Phi U, and what follows from them in NumPy
    xt = np.linspace(-1, 1, 37)[:, None]
    F = result.decision_function(xt)
    F_ref = np.column_stack([Phi.predict(U, xt) for U in Us])
    np.testing.assert_allclose(F, F_ref, rtol=0, atol=1e-12 * np.abs(F_ref).max())
    P = np.exp(F - F.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.predict_proba(xt), P, atol=1e-14)
    assert np.array_equal(result.predict(xt), np.argmax(F, axis=1))
    # E_alpha's data term is the mean cross-entropy at the training points (log of the probabilities)
    Ft = result.decision_function(x)
    ce = np.mean(np.log(np.exp(Ft).sum(axis=1)) - Ft[np.arange(len(y)), y])
    assert result.parts[0] == pytest.approx(ce, rel=1e-12) and result.energy == pytest.approx(sum(result.parts))
    scores = result.evaluate(x, y)
    kp = np.argmax(Ft, axis=1)
    M = np.array([[np.sum((y == a) & (kp == b)) for b in range(3)] for a in range(3)])
    assert scores["confusion_matrix"] == M.tolist() and scores["accuracy"] == pytest.approx(np.mean(kp == y))
    assert result.score(x, y) == scores["accuracy"] > 0.8  # noisy labels: 0.85 here


def test_string_labels_round_trip_through_the_network_files(tmp_path):
    x, y = data(120)
    names = np.array(["eel", "cat", "dog"])[y]  # sorted classes cat, dog, eel: y = 1, 2, 0
    result = problem().fit(x, names)
    assert list(result.classes) == ["cat", "dog", "eel"]
    xt = np.linspace(-1, 1, 41)[:, None]
    labels = result.predict(xt)
    assert labels.dtype.kind == "U" and set(labels) <= {"cat", "dog", "eel"}
    # the same fit as integer labels in the same sorted order (relabelled: cat 0, dog 1, eel 2)
    same = problem().fit(x, np.array([2, 0, 1])[y])
    np.testing.assert_allclose(result.decision_function(xt), same.decision_function(xt), atol=1e-10)
    net = readout(result)  # the solve's rule: the network's logits are the Result's scores
    assert list(net.classes) == ["cat", "dog", "eel"] and net.outputs == 3
    F = result.decision_function(xt)
    np.testing.assert_allclose(net(xt), F, rtol=0, atol=1e-10 * np.abs(F).max())
    assert np.array_equal(net.predict(xt), labels)
    P = result.predict_proba(xt)  # collective
    if comm.rank == 0:
        net.save(tmp_path / "net.npz")
        back = Network.load(tmp_path / "net.npz")
        assert np.array_equal(back.predict(xt), labels) and back.classes.dtype.kind == "U"
        np.testing.assert_allclose(back.predict_proba(xt), P, atol=1e-10)
        to_safetensors(net, tmp_path / "net.safetensors")
        assert np.array_equal(from_safetensors(tmp_path / "net.safetensors").predict(xt), labels)


def test_refusals_name_the_fix():
    x, y = data(60)
    p = problem()
    with pytest.raises(ValueError, match="CG only"):
        p.fit(x, y, solver="direct")
    with pytest.raises(ValueError, match="Problem.fit"):
        p.flow(x, y)
    with pytest.raises(ValueError, match="one class only"):
        p.fit(x, np.zeros(60))
    with pytest.raises(ValueError, match="59 labels for 60"):
        p.fit(x, y[:59])
    with pytest.raises(ValueError, match="60 distinct values on 60 rows .* use loss='squared'"):
        p.fit(x, x[:, 0])
    with pytest.raises(ValueError, match="fitted by Problem.fit and flowfem solve only"):
        loss("softmax")
    result = p.fit(x, y, rtol=1e-8)
    with pytest.raises(ValueError, match="result.score"):
        result.rmse(x, y)
    with pytest.raises(ValueError, match="leave classes out"):
        readout(result, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="refit is a least-squares fit"):
        readout(result, "refit")
    with pytest.raises(ValueError, match="distinct labels"):
        Network(np.ones((2, 1)), np.zeros(2), np.ones((2, 3)), "relu", classes=[0, 1, 1])
    with pytest.raises(ValueError, match="needs a classifier"):
        Network(np.ones((2, 1)), np.zeros(2), np.ones(2), "relu").predict_proba(x)
