"""Particle solvers with m outputs (issue 14 §1): a_i in R^m, J = (1/n) sum_j |f(x_j) - y_j|^2 / 2
+ (lam/2) (1/N) sum_i |P_i|^2, checked against a dense NumPy objective and gradient, finite
differences, m independent one-output trainings (inner weights frozen), and 1 against 2 ranks.

The one-output case is covered by tests/test_particles.py, unchanged."""

import os
import textwrap

import numpy as np
import pytest

from conftest import run_mpi_script
from flowfem import particles as fp
from flowfem.network import Network
from test_particles import _self

SIGMA = {  # (sigma, sigma') written out here, independently of flowfem.activations
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float)),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "softplus": (lambda z: np.logaddexp(0.0, z), lambda z: 1.0 / (1.0 + np.exp(-z))),
    "monomial:3": (lambda z: z**3, lambda z: 3.0 * z**2),
}
ACTIVATIONS = list(SIGMA)


def _data(n=8, d=2, m=2, seed=0):
    """Inputs (n, d) and m targets of different shape (n, m)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d))
    Y = np.column_stack([np.sin(2 * x[:, 0]) + x[:, -1] ** 2, np.abs(x[:, 0]) - 0.5 * x[:, -1],
                         np.cos(3 * x[:, -1])][:m])
    return x, Y


def _dense(P, x, Y, act, lam):
    """J and dJ/dP of the mean-field network with m outputs, in plain NumPy on all neurons at once:
    F = S A / N (S_ji = sigma(z_ji), z = x W^T + b), J = |F - Y|^2_F / (2 n) + lam |P|^2_F / (2 N)."""
    n, d = x.shape
    N = len(P)
    W, b, A = P[:, :d], P[:, d], P[:, d + 1:]
    sigma, dsigma = SIGMA[act]
    z = x @ W.T + b
    S, dS = sigma(z), dsigma(z)
    R = (S @ A / N - Y) / n  # dJ/dF
    J = 0.5 * n * np.sum(R**2) + 0.5 * lam * np.sum(P**2) / N
    dZ = dS * (R @ A.T) / N  # dJ/dz, (n, N)
    G = np.column_stack([dZ.T @ x, dZ.sum(axis=0), S.T @ R / N]) + lam * P / N
    return J, G


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_objective_and_gradient_match_dense_numpy_and_finite_differences(act):
    x, Y = _data(m=3)
    P = fp.init_particles(5, 2, seed=3, init_scale=0.8, outputs=3)
    assert P.shape == (5, 2 + 1 + 3)
    z = x @ P[:, :2].T + P[:, 2]
    assert np.abs(z).min() > 1e-3  # ReLU kinks are far from the finite-difference stencil
    args = dict(activation=act, weight_decay=0.3)
    J, G = fp.objective(P, x, Y, **args), fp.gradient(P, x, Y, **args)
    J_dense, G_dense = _dense(P, x, Y, act, 0.3)
    assert J == pytest.approx(J_dense, rel=1e-13)
    np.testing.assert_allclose(G, G_dense, rtol=1e-11, atol=1e-14 * np.abs(G_dense).max())
    h, fd = 1e-6, np.zeros_like(P)
    for idx in np.ndindex(P.shape):
        E = np.zeros_like(P)
        E[idx] = h
        fd[idx] = (fp.objective(P + E, x, Y, **args) - fp.objective(P - E, x, Y, **args)) / (2 * h)
    assert np.linalg.norm(fd - G) <= 1e-6 * np.linalg.norm(G)


def test_the_data_term_is_the_sum_of_the_outputs_one_output_terms():
    """Without weight decay, J of m outputs is the sum of the m one-output J on the same neurons."""
    x, Y = _data(n=30)
    P = fp.init_particles(7, 2, seed=1, outputs=2)
    Js = [fp.objective(np.column_stack([P[:, :3], P[:, 3 + k]]), x, Y[:, k], "tanh") for k in range(2)]
    assert fp.objective(P, x, Y, "tanh") == pytest.approx(sum(Js), rel=1e-13)


def test_network_predict_and_layout_of_two_outputs():
    x, Y = _data(n=30)
    P = fp.init_particles(7, 2, seed=1, outputs=2)
    net = fp.to_network(P, "tanh", outputs=2)
    assert net.outputs == 2 and net.a.shape == (7, 2) and net.state_dict()["2.weight"].shape == (2, 7)
    F = np.tanh(x @ P[:, :2].T + P[:, 2]) @ P[:, 3:] / 7
    np.testing.assert_allclose(net(x), F, rtol=1e-13)
    np.testing.assert_allclose(fp.predict(P, x, "tanh"), F, rtol=1e-13)
    assert fp.predict(P, x, "tanh").shape == (30, 2)
    np.testing.assert_allclose(fp.from_network(net), P, rtol=1e-15)
    J = np.mean(np.sum(0.5 * (F - Y) ** 2, axis=1)) + 0.5 * 0.2 * np.sum(P**2) / 7
    assert fp.objective(P, x, Y, "tanh", weight_decay=0.2) == pytest.approx(J, rel=1e-13)


def test_blocked_evaluation_matches_single_block(monkeypatch):
    """Row blocks place each block's m columns of f at rows [start, stop): the result must not change."""
    x, Y = _data(n=50, m=3)
    P = fp.init_particles(9, 2, seed=4, outputs=3)
    args = dict(activation="softplus", weight_decay=0.1)
    J, G, F = fp.objective(P, x, Y, **args), fp.gradient(P, x, Y, **args), fp.predict(P, x, "softplus")
    monkeypatch.setattr(fp, "_BLOCK", 20)  # 2 rows per block
    assert fp.objective(P, x, Y, **args) == pytest.approx(J, rel=1e-14)
    np.testing.assert_allclose(fp.gradient(P, x, Y, **args), G, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fp.predict(P, x, "softplus"), F, rtol=1e-13)


def test_init_particles_extend_the_one_output_draw():
    P1, P3 = fp.init_particles(6, 2, seed=7), fp.init_particles(6, 2, seed=7, outputs=3)
    np.testing.assert_array_equal(P3[:, :4], P1)
    assert P3.shape == (6, 6) and not np.allclose(P3[:, 4], P3[:, 3])


@pytest.mark.parametrize("method, lr", [("gd", 0.5), ("adam", 0.05)])
def test_outer_training_of_two_outputs_is_two_one_output_trainings(method, lr):
    """trainable='outer' with weight decay: the m outputs' problems decouple (shared, frozen
    neurons; Adam is coordinate-wise), so output k of a two-output run is the one-output run on
    column k from the same initial particles."""
    x, Y = _data(n=40, d=1, seed=2)
    xt, Yt = _data(n=25, d=1, seed=3)
    kw = dict(activation="tanh", method=method, lr=lr, steps=60, weight_decay=1e-2, trainable="outer",
              record_every=10, comm=_self())
    two = fp.train(x, Y, 11, seed=5, x_test=xt, y_test=Yt, **kw)
    first = fp.train(x, Y[:, 0], 11, seed=5, x_test=xt, y_test=Yt[:, 0], **kw)  # the same seed: the same start
    P0 = fp.init_particles(11, 1, seed=5, outputs=2)
    second = fp.train(x, Y[:, 1], init=P0[:, [0, 1, 3]], x_test=xt, y_test=Yt[:, 1], **kw)
    assert two.particles.shape == (11, 4) and two.network.a.shape == (11, 2) and two.settings["outputs"] == 2
    np.testing.assert_array_equal(two.particles[:, :2], P0[:, :2])  # inner weights untouched
    for k, one in enumerate((first, second)):
        np.testing.assert_allclose(two.particles[:, 2 + k], one.particles[:, 2], rtol=1e-11, atol=1e-14)
    h = two.history
    np.testing.assert_allclose(h["loss"], first.history["loss"] + second.history["loss"], rtol=1e-11)
    # J counts the frozen (w, b) once, the two one-output runs each once
    inner = 0.5 * 1e-2 * np.sum(P0[:, :2] ** 2) / 11
    np.testing.assert_allclose(h["objective"], first.history["objective"] + second.history["objective"] - inner,
                               rtol=1e-11)
    # the test RMSE over n and m is the root mean of the outputs' mean squares
    np.testing.assert_allclose(h["test_error"], np.sqrt((first.history["test_error"] ** 2
                                                         + second.history["test_error"] ** 2) / 2), rtol=1e-11)
    assert h["test_error"][-1] == pytest.approx(np.sqrt(np.mean((two.network(xt) - Yt) ** 2)), rel=1e-12)
    assert h["objective"][-1] < h["objective"][0]


def test_gd_step_of_all_weights_is_the_dense_gradient_step():
    """trainable='all': one GD step moves P by -lr N dJ/dP with the dense NumPy gradient, and GD with
    a small step decreases J monotonically."""
    x, Y = _data(n=40, d=1, seed=4)
    P0 = fp.init_particles(13, 1, seed=2, outputs=2)
    r = fp.train(x, Y, init=P0, activation="tanh", lr=0.1, steps=1, weight_decay=1e-2, comm=_self())
    G = _dense(P0, x, Y, "tanh", 1e-2)[1]
    np.testing.assert_allclose(r.particles, P0 - 0.1 * 13 * G, rtol=1e-12, atol=1e-14)
    r = fp.train(x, Y, 200, activation="tanh", lr=0.05, steps=200, weight_decay=1e-3, record_every=1, comm=_self())
    J = r.history["objective"]
    assert r.status == "completed" and np.all(np.diff(J) <= 0) and J[-1] < 0.5 * J[0]


def test_restart_from_a_network_of_two_outputs():
    x, Y = _data(n=30, d=1)
    kw = dict(activation="tanh", method="adam", lr=0.02, comm=_self())
    half = fp.train(x, Y, 9, steps=10, **kw)
    same = fp.train(x, Y, init=half.network, steps=0, **kw)
    np.testing.assert_allclose(same.network(x), half.network(x), rtol=1e-13)
    np.testing.assert_allclose(same.particles, half.particles, rtol=1e-13)


def test_m_outputs_are_refused_where_they_do_not_fit():
    x, Y = _data(n=10, d=1)
    labels = np.sign(Y)
    with pytest.raises(ValueError, match="the logistic loss takes one output .* y has 2 columns"):
        fp.train(x, labels, 5, loss="logistic", comm=_self())
    P = fp.init_particles(5, 1, outputs=2)
    for f in (fp.objective, fp.gradient):
        with pytest.raises(ValueError, match="logistic loss takes one output"):
            f(P, x, labels, loss="logistic")
    with pytest.raises(ValueError, match=r"test data: targets y have 1 outputs .* takes 2"):
        fp.train(x, Y, 5, x_test=x, y_test=Y[:, 0], comm=_self())
    with pytest.raises(ValueError, match=r"init network has 1 output\(s\) but y has 2"):
        fp.train(x, Y, init=Network(np.ones((3, 1)), np.zeros(3), np.ones(3), "relu"), comm=_self())
    with pytest.raises(ValueError, match=r"init has shape \(5, 3\): expected .* \(N, 4\)"):
        fp.train(x, Y, init=np.ones((5, 3)), comm=_self())
    with pytest.raises(ValueError, match=r"for 3 output\(s\): expected particles \(N, d\+1\+m\)"):
        fp.objective(P, x, np.ones((10, 3)))
    with pytest.raises(ValueError, match="outputs must be an integer >= 1"):
        fp.init_particles(5, 1, outputs=0)


# -- MPI -----------------------------------------------------------------------

RUNS = {  # odd width: the ranks own unequal slices
    "gd_langevin": dict(activation="relu", method="gd", lr=0.2, temperature=1e-3, weight_decay=1e-2),
    "adam": dict(activation="tanh", method="adam", lr=0.02),
}
SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from mpi4py import MPI
    from flowfem import particles as fp
    sys.path.insert(0, sys.argv[2])
    from test_particles_outputs import RUNS, _data

    comm = MPI.COMM_WORLD
    x, Y = _data(n=64, d=2, m=3, seed=11)
    xt, Yt = _data(n=32, d=2, m=3, seed=12)
    out = {}
    for name, kw in RUNS.items():
        r = fp.train(x, Y, 37, steps=60, seed=4, x_test=xt, y_test=Yt, record_every=7, **kw)
        out[name + "_particles"] = r.particles
        out[name + "_ranks"] = r.settings["ranks"]
        for k in ("objective", "loss", "grad_norm", "test_error"):
            out[name + "_" + k] = r.history[k]
    np.savez(sys.argv[1] + f".{comm.Get_rank()}.npz", **out)
""")


@pytest.mark.mpi
def test_mpi_two_ranks_match_serial_with_three_outputs(tmp_path):
    from mpi4py import MPI

    out = str(tmp_path / "out")
    run_mpi_script(tmp_path / "mpi_outputs.py", SCRIPT, out, os.path.dirname(os.path.abspath(__file__)), timeout=120)
    ranks = [np.load(f"{out}.{r}.npz") for r in range(2)]
    x, Y = _data(n=64, d=2, m=3, seed=11)
    xt, Yt = _data(n=32, d=2, m=3, seed=12)
    for name, kw in RUNS.items():
        ser = fp.train(x, Y, 37, steps=60, seed=4, x_test=xt, y_test=Yt, record_every=7, comm=MPI.COMM_SELF, **kw)
        assert ser.particles.shape == (37, 2 + 1 + 3)
        for res in ranks:  # the same bits: every sum runs in an order fixed by N (particles._groups)
            assert int(res[name + "_ranks"]) == 2
            np.testing.assert_array_equal(res[name + "_particles"], ser.particles)
            for k in ("objective", "loss", "grad_norm", "test_error"):
                np.testing.assert_array_equal(res[name + "_" + k], ser.history[k])
