"""Particle solvers with the softmax cross-entropy (several classes, issue 14 §3): C outputs (the
logits), J = (1/n) sum_j [logsumexp_c f_c(x_j) - f_{k_j}(x_j)] + (lam/2) (1/N) sum_i |P_i|^2,
checked against a dense NumPy objective and gradient and finite differences, against the logistic
loss for C = 2 (output weights trained, the exact GD correspondence), by training on a separable
three-class set, and 1 against 2 ranks."""

import os
import textwrap

import numpy as np
import pytest

from conftest import run_mpi_script
from flowfem import particles as fp
from flowfem.network import Network
from test_particles import _self
from test_particles_outputs import SIGMA

ACTIVATIONS = ["relu", "tanh", "softplus"]


def _toy(n=60, seed=0, names=("beta", "alpha", "gamma"), spread=0.15):
    """A separable three-class set in 2-D: points around three centres, labelled by unsorted strings."""
    rng = np.random.default_rng(seed)
    centres = np.array([[1.0, 0.0], [-0.5, 0.9], [-0.5, -0.9]])
    k = rng.integers(0, 3, n)
    x = centres[k] + spread * rng.standard_normal((n, 2))
    return x, np.asarray(names)[k]


def _dense(P, x, k, act, lam):
    """J and dJ/dP in plain NumPy on all neurons at once: F = S A / N (S_ji = sigma(z_ji),
    z = x W^T + b), J = mean_j [log sum_c exp F_jc - F_j,k_j] + lam |P|^2_F / (2 N), and
    dJ/dF = (softmax(F) - onehot(k)) / n (the logits are O(1) here: no shift needed)."""
    n, d = x.shape
    N, C = len(P), P.shape[1] - d - 1
    W, b, A = P[:, :d], P[:, d], P[:, d + 1:]
    sigma, dsigma = SIGMA[act]
    z = x @ W.T + b
    S, dS = sigma(z), dsigma(z)
    F = S @ A / N
    E = np.exp(F)
    onehot = np.eye(C)[k]
    J = np.mean(np.log(E.sum(axis=1)) - np.sum(F * onehot, axis=1)) + 0.5 * lam * np.sum(P**2) / N
    R = (E / E.sum(axis=1, keepdims=True) - onehot) / n
    dZ = dS * (R @ A.T) / N
    G = np.column_stack([dZ.T @ x, dZ.sum(axis=0), S.T @ R / N]) + lam * P / N
    return J, G


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_objective_and_gradient_match_dense_numpy_and_finite_differences(act):
    x, labels = _toy(n=9, seed=1)
    k = np.searchsorted(["alpha", "beta", "gamma"], labels)  # the classes, sorted
    assert set(k) == {0, 1, 2}
    P = fp.init_particles(5, 2, seed=3, init_scale=0.8, outputs=3)
    z = x @ P[:, :2].T + P[:, 2]
    assert np.abs(z).min() > 1e-3  # ReLU kinks are far from the finite-difference stencil
    args = dict(activation=act, loss="softmax", weight_decay=0.3)
    J, G = fp.objective(P, x, labels, **args), fp.gradient(P, x, labels, **args)
    J_dense, G_dense = _dense(P, x, k, act, 0.3)
    assert J == pytest.approx(J_dense, rel=1e-13)
    np.testing.assert_allclose(G, G_dense, rtol=1e-11, atol=1e-14 * np.abs(G_dense).max())
    h, fd = 1e-6, np.zeros_like(P)
    for idx in np.ndindex(P.shape):
        E = np.zeros_like(P)
        E[idx] = h
        fd[idx] = (fp.objective(P + E, x, labels, **args) - fp.objective(P - E, x, labels, **args)) / (2 * h)
    assert np.linalg.norm(fd - G) <= 1e-6 * np.linalg.norm(G)
    # labels missing a class: the columns are named by classes=
    sub = labels != "gamma"
    with pytest.raises(ValueError, match=r"the labels hold 2 classes but the particles \(5, 6\) have 3 output"):
        fp.objective(P, x[sub], labels[sub], **args)
    J_sub = _dense(P, x[sub], k[sub], act, 0.3)[0]
    assert fp.objective(P, x[sub], labels[sub], classes=["alpha", "beta", "gamma"], **args) == pytest.approx(
        J_sub, rel=1e-13)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_two_classes_with_outer_weights_are_the_logistic_loss(act):
    """C = 2, trainable='outer', GD: J depends on the logit difference v = a_1 - a_0 through the
    logistic loss of labels y = +1 (classes[1]) / -1 (classes[0]), and the GD step on (a_0, a_1) is
    v <- v - 2 lr N (dL/dv + (lam/2) v / N), s = a_0 + a_1 <- (1 - lr lam) s: the logistic run with
    step 2 lr and weight decay lam / 2 from a = v_0, exactly (up to rounding)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (40, 2))
    labels = np.where(x[:, 0] + 0.5 * x[:, 1] > 0.1, 7.0, 3.0)  # classes (3, 7)
    xt = rng.uniform(-1, 1, (25, 2))
    lt = np.where(xt[:, 0] + 0.5 * xt[:, 1] > 0.1, 7.0, 3.0)
    P0 = fp.init_particles(13, 2, seed=2, outputs=2)
    lr, lam, steps = 0.3, 0.05, 80
    kw = dict(activation=act, method="gd", steps=steps, trainable="outer", record_every=10, comm=_self())
    soft = fp.train(x, labels, init=P0, loss="softmax", lr=lr, weight_decay=lam, x_test=xt, y_test=lt, **kw)
    logi = fp.train(x, np.where(labels == 7.0, 1.0, -1.0), init=np.column_stack([P0[:, :3], P0[:, 4] - P0[:, 3]]),
                    loss="logistic", lr=2 * lr, weight_decay=lam / 2, x_test=xt, y_test=np.where(lt == 7.0, 1.0, -1.0),
                    **kw)
    Ps, Pl = soft.particles, logi.particles
    np.testing.assert_array_equal(Ps[:, :3], P0[:, :3])  # inner weights untouched
    np.testing.assert_allclose(Ps[:, 4] - Ps[:, 3], Pl[:, 3], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Ps[:, 3] + Ps[:, 4], (1 - lr * lam) ** steps * (P0[:, 3] + P0[:, 4]), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(soft.history["loss"], logi.history["loss"], rtol=1e-10)
    np.testing.assert_array_equal(soft.history["test_error"], logi.history["test_error"])
    assert soft.history["loss"][-1] < 0.8 * soft.history["loss"][0]
    np.testing.assert_array_equal(soft.network.classes, [3.0, 7.0])


def test_training_separates_three_classes_and_records_them():
    """GD with small steps decreases J at every step; Adam then reaches > 0.9 test accuracy on a
    separable set; the network predicts the string labels, and the history's test numbers are those
    of the network (misclassification rate and mean cross-entropy, computed here in NumPy)."""
    x, labels = _toy(n=90, seed=0)
    xt, lt = _toy(n=60, seed=1)
    gd = fp.train(x, labels, 40, activation="tanh", loss="softmax", lr=0.05, steps=150, weight_decay=1e-3,
                  record_every=1, comm=_self())
    J = gd.history["objective"]
    assert gd.status == "completed" and np.all(np.diff(J) < 0) and J[-1] < 0.9 * J[0]
    assert np.all(np.isnan(gd.history["test_error"])) and np.all(np.isnan(gd.history["test_loss"]))
    r = fp.train(x, labels, 64, loss="softmax", method="adam", lr=0.02, steps=300, seed=1, x_test=xt, y_test=lt,
                 comm=_self())
    net = r.network
    assert r.particles.shape == (64, 2 + 1 + 3) and net.a.shape == (64, 3)
    assert net.classes.tolist() == ["alpha", "beta", "gamma"] and r.settings["classes"].tolist() == net.classes.tolist()
    accuracy = np.mean(net.predict(xt) == lt)
    assert accuracy > 0.9
    F = net(xt)
    k = np.searchsorted(net.classes, lt)
    ce = np.mean(np.log(np.sum(np.exp(F), axis=1)) - F[np.arange(len(k)), k])
    assert r.history["test_error"][-1] == pytest.approx(1 - accuracy, abs=1e-15)
    assert r.history["test_loss"][-1] == pytest.approx(ce, rel=1e-12)
    assert r.history["test_loss"][-1] < 0.5 * r.history["test_loss"][0]
    # a restart from the classifier network continues the same particles
    same = fp.train(x, labels, init=net, loss="softmax", steps=0, comm=_self())
    np.testing.assert_allclose(same.particles, r.particles, rtol=1e-13)


def test_softmax_labels_are_refused_where_they_do_not_fit():
    x, labels = _toy(n=20, seed=2)
    with pytest.raises(ValueError, match="label 'delta' .* is not one of the fitted classes 'alpha', 'beta', 'gamma'"):
        fp.train(x, labels, 5, loss="softmax", x_test=x[:2], y_test=["alpha", "delta"], comm=_self())
    with pytest.raises(ValueError, match="the training labels hold one class only"):
        fp.train(x, np.full(20, "alpha"), 5, loss="softmax", comm=_self())
    with pytest.raises(ValueError, match="the training labels: 19 labels for 20 data points"):
        fp.train(x, labels[:-1], 5, loss="softmax", comm=_self())
    with pytest.raises(ValueError, match="take 20 distinct values on 20 rows .* look like regression targets"):
        fp.train(x, np.arange(20.0), 5, loss="softmax", comm=_self())
    other = Network(np.ones((4, 2)), np.zeros(4), np.ones((4, 3)), "relu", classes=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"init network's classes \['a', 'b', 'c'\] are not the labels' classes"):
        fp.train(x, labels, init=other, loss="softmax", comm=_self())
    with pytest.raises(ValueError, match=r"init network has 1 output\(s\) but the labels have 3 classes"):
        fp.train(x, labels, init=Network(np.ones((4, 2)), np.zeros(4), np.ones(4), "relu"), loss="softmax",
                 comm=_self())


# -- MPI -----------------------------------------------------------------------

RUNS = {  # odd width: the ranks own unequal slices
    "gd": dict(activation="relu", method="gd", lr=0.2, weight_decay=1e-2),
    "adam": dict(activation="tanh", method="adam", lr=0.02),
}
SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from mpi4py import MPI
    from flowfem import particles as fp
    sys.path.insert(0, sys.argv[2])
    from test_particles_softmax import RUNS, _toy

    comm = MPI.COMM_WORLD
    x, labels = _toy(n=64, seed=11)
    xt, lt = _toy(n=32, seed=12)
    out = {}
    for name, kw in RUNS.items():
        r = fp.train(x, labels, 37, loss="softmax", steps=60, seed=4, x_test=xt, y_test=lt, record_every=7, **kw)
        out[name + "_particles"] = r.particles
        out[name + "_ranks"] = r.settings["ranks"]
        out[name + "_classes"] = r.network.classes
        for k in ("objective", "loss", "grad_norm", "test_error", "test_loss"):
            out[name + "_" + k] = r.history[k]
    np.savez(sys.argv[1] + f".{comm.Get_rank()}.npz", **out)
""")


@pytest.mark.mpi
def test_mpi_two_ranks_match_serial_with_three_classes(tmp_path):
    from mpi4py import MPI

    out = str(tmp_path / "out")
    run_mpi_script(tmp_path / "mpi_softmax.py", SCRIPT, out, os.path.dirname(os.path.abspath(__file__)), timeout=120)
    ranks = [np.load(f"{out}.{r}.npz") for r in range(2)]
    x, labels = _toy(n=64, seed=11)
    xt, lt = _toy(n=32, seed=12)
    for name, kw in RUNS.items():
        ser = fp.train(x, labels, 37, loss="softmax", steps=60, seed=4, x_test=xt, y_test=lt, record_every=7,
                       comm=MPI.COMM_SELF, **kw)
        assert ser.particles.shape == (37, 2 + 1 + 3) and ser.history["objective"][-1] < ser.history["objective"][0]
        for res in ranks:  # the same bits: every sum runs in an order fixed by N (particles._groups)
            assert int(res[name + "_ranks"]) == 2
            assert res[name + "_classes"].tolist() == ["alpha", "beta", "gamma"]
            np.testing.assert_array_equal(res[name + "_particles"], ser.particles)
            for k in ("objective", "loss", "grad_norm", "test_error", "test_loss"):
                np.testing.assert_array_equal(res[name + "_" + k], ser.history[k])
