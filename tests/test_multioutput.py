"""Multi-output regression (issue 14 §1): y (n, m) gives m densities that share the mesh, the data
operator and one linear solver, and equal m independent single-output fits; the readout network
maps R^d -> R^m through every file format.

Checked against an independent dense NumPy solve (Phi assembled by dolfinx from UFL, conftest.dense_system)
and against m single-output fits. Runs serially and under mpirun -n 2 (tests/test_mpi.py); the
command and the 1-rank/2-rank comparison are in tests/test_multioutput_cli.py."""

import numpy as np
import pytest
from mpi4py import MPI

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from conftest import dense_system, gather
from flowfem import data, export, stationary
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.readout import readout
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD


def targets(x: np.ndarray) -> np.ndarray:
    """Three outputs of different shape (smooth, even, kinked) at inputs x (n, 1): (n, 3)."""
    t = x[:, 0]
    return np.column_stack([np.sin(np.pi * t), t**2 - 0.3, np.abs(t) + 0.1 * t])


def problem(**kwargs):
    return Problem(Space.box(1, 12, 3.0), "relu", "gaussian:2", alpha=1e-4, kappa=0.5, **kwargs)


@pytest.fixture(scope="module")
def fits():
    """An m = 3 fit and the three single-output fits of its columns, on the same problem."""
    x = np.random.default_rng(7).uniform(-1, 1, (120, 1))
    Y = targets(x)
    pb = problem()
    multi = pb.fit(x, Y)
    singles = [pb.fit(x, Y[:, k]) for k in range(3)]
    return x, Y, multi, singles


def test_m_outputs_equal_m_single_fits(fits):
    x, Y, multi, singles = fits
    assert multi.outputs == 3 and len(multi.Us) == 3 and len(multi.densities) == 3
    for k in range(3):
        Uk, Us = gather(multi.Us[k]), gather(singles[k].U)
        assert np.linalg.norm(Uk - Us) <= 1e-8 * np.linalg.norm(Us)
        assert multi.infos[k].residual <= 1e-10
    # E_alpha and its parts are sums over the outputs
    assert multi.energy == pytest.approx(sum(s.energy for s in singles), rel=1e-10)
    for i in range(2):
        assert multi.parts[i] == pytest.approx(sum(s.parts[i] for s in singles), rel=1e-10)
    assert multi.iterations == sum(i.iterations for i in multi.infos)
    assert multi.residual == max(i.residual for i in multi.infos) and multi.info.converged


@pytest.mark.parametrize("solver", ["cg", "direct"])
def test_m_outputs_equal_a_dense_solve_with_m_right_hand_sides(solver):
    x = np.random.default_rng(8).uniform(-1, 1, (30, 1))
    Y = targets(x)
    pb = Problem(Space.box(1, 6, 3.0), "relu", "gaussian:2", alpha=1e-3, kappa=0.7)
    # rtol 1e-13 and alpha 1e-3 (cond(K) ~ 1e4): a 1e-8 comparison measures the solver, not rounding
    result = pb.fit(x, Y, solver=solver, rtol=1e-13)
    A, C = dense_system(result.functional)  # Phi^T assembled by dolfinx from UFL: independent of flowfem's Phi
    n, alpha = len(x), result.functional.alpha
    U_dense = np.linalg.solve(alpha * A + C @ C.T / n, C @ Y / n)  # all three right-hand sides at once
    for k in range(3):
        Uk = gather(result.Us[k])
        assert np.linalg.norm(Uk - U_dense[:, k]) <= 1e-8 * np.linalg.norm(U_dense[:, k])
    F = C.T @ U_dense
    assert np.linalg.norm(result.predict(x) - F) <= 1e-8 * np.linalg.norm(F)
    E_dense = 0.5 * np.sum((F - Y) ** 2) / n + 0.5 * alpha * np.einsum("ik,ij,jk->", U_dense, A, U_dense)
    assert result.energy == pytest.approx(E_dense, rel=1e-9)


def test_one_data_operator_and_one_solver_serve_every_output(operator_count, monkeypatch):
    made = []
    init = stationary.LinearSolver.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(stationary.LinearSolver, "__init__", counting)
    x = np.linspace(-1, 1, 60)[:, None]
    result = problem().fit(x, targets(x))
    assert len(operator_count) == 1 and len(made) == 1
    # the preconditioner's set-up (GAMG, Nystrom basis) happens once: one basis size for all outputs
    assert len({i.rank for i in result.infos}) == 1 and result.infos[0].rank > 0
    result.predict(x)
    assert len(operator_count) == 1


def test_predict_and_rmse_shapes(fits):
    x, Y, multi, singles = fits
    xt = np.linspace(-1, 1, 17)
    f = multi.predict(xt)
    assert f.shape == (17, 3)
    for k in range(3):
        np.testing.assert_allclose(f[:, k], singles[k].predict(xt), rtol=0, atol=1e-8 * np.abs(f[:, k]).max())
    assert singles[0].predict(xt).shape == (17,)
    yt = targets(xt[:, None])
    per = multi.rmse_outputs(xt, yt)
    assert per.shape == (3,)
    np.testing.assert_allclose(per, [s.rmse(xt, yt[:, k]) for k, s in enumerate(singles)], rtol=1e-8)
    assert multi.rmse(xt, yt) == pytest.approx(np.sqrt(np.mean((f - yt) ** 2)), rel=1e-12)
    with pytest.raises(ValueError, match="the targets have 1 output"):
        multi.rmse(xt, yt[:, 0])
    for name, plural in (("U", "Us"), ("density", "densities")):
        with pytest.raises(ValueError, match=f"3 outputs: use result.{plural}"):
            getattr(multi, name)
    assert singles[0].U is singles[0].Us[0] and singles[0].density is singles[0].densities[0]


def test_one_output_column_is_one_output():
    """y (n, 1) and y (n,) are the same fit: one density, predictions (n,)."""
    x = np.linspace(-1, 1, 40)
    y = np.sin(np.pi * x)
    a, b = problem().fit(x, y), problem().fit(x, y[:, None])
    assert a.outputs == b.outputs == 1
    np.testing.assert_array_equal(a.U.array_r, b.U.array_r)
    assert b.predict(x).shape == (40,)


def test_several_outputs_are_refused_where_they_do_not_apply():
    x = np.linspace(-1, 1, 30)
    Y = np.column_stack([np.sign(x + 0.1), np.sign(x - 0.1)])
    Y[Y == 0] = 1.0
    with pytest.raises(ValueError, match="2 outputs .* need the squared loss"):
        problem(loss="logistic").fit(x, Y)
    flow = problem().flow(x, Y)  # flows take m outputs (tests/test_flow_outputs.py); one density per output
    with pytest.raises(ValueError, match="a flow of 2 outputs evolves 2 densities"):
        flow.run(flow.E.output(0).vector(), max_steps=1)
    flow.destroy()
    E = problem().functional(x, Y)
    with pytest.raises(ValueError, match="use E.output"):
        E.rhs()
    with pytest.raises(ValueError, match="use solve_outputs"):
        stationary.solve(E)



def test_one_output_trainers_refuse_m_outputs_in_one_line():
    """The landscape tools (one output) refuse y (n, m) and an m-output network by the one data
    check, instead of reshaping y into n m rows; particle training takes m outputs
    (tests/test_particles_outputs.py) but not test targets of another m, nor the logistic loss with m."""
    from flowfem import particles, plateau

    x = np.linspace(-1, 1, 20)
    Y = np.column_stack([x, x ** 2])
    with pytest.raises(ValueError, match="test data: targets y have 2 outputs"):
        particles.train(x, x, width=4, steps=1, x_test=x, y_test=Y)
    with pytest.raises(ValueError, match="the logistic loss takes one output"):
        particles.train(x, np.sign(Y + 0.1), width=4, steps=1, loss="logistic")
    one, two = (Network(np.ones((3, 1)), np.zeros(3), a, "relu") for a in (np.ones(3), np.ones((3, 2))))
    with pytest.raises(ValueError, match="targets y have 2 outputs .* flowfem.plateau takes one output"):
        plateau.objective(one, x, Y)
    with pytest.raises(ValueError, match="a network with one output; this one has 2"):
        plateau.gradient(two, x, x)
    with pytest.raises(ValueError, match="targets y are missing"):
        plateau.objective(one, x, None)


def test_alpha_auto_scores_all_outputs_and_refits_m_densities():
    """One alpha for the m outputs: the path's score is the held-out RMSE over every output, equal to the
    one recomputed from cold m-output fits on the path's own split; the refit equals a cold fit there."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (200, 1))
    Y = targets(x) + 0.05 * rng.standard_normal((200, 3))
    space = Space.box(1, 16, 3.0)
    alphas = [1e-1, 1e-3, 1e-5, 1e-7]
    # rtol 1e-12: two solves from different starts differ by up to cond(K) rtol (1e-6 at alpha 1e-5, rtol 1e-10)
    r = Problem(space, alpha="auto").fit(x, Y, alphas=alphas, validation=0.25, seed=3, rtol=1e-12)
    perm = np.random.default_rng(3).permutation(200)
    held, rows = np.sort(perm[:50]), np.sort(perm[50:])
    cold = np.array([Problem(space, alpha=a).fit(x[rows], Y[rows]).rmse(x[held], Y[held]) for a in alphas])
    np.testing.assert_allclose(r.path.scores, cold, rtol=1e-6)
    assert r.path.chosen == int(np.argmin(cold)) and 0 < r.path.chosen < 3  # noise: neither end of the grid
    assert r.outputs == 3
    ref = Problem(space, alpha=r.path.alpha).fit(x, Y, rtol=1e-12)
    for k in range(3):
        diff = gather(ref.Us[k]) - gather(r.Us[k])
        assert np.linalg.norm(diff) <= 1e-7 * np.linalg.norm(gather(ref.Us[k]))
    assert r.energy == pytest.approx(ref.energy, rel=1e-9)
    rf = Problem(space, alpha="auto").fit(x, Y, alphas=alphas, folds=2)
    assert rf.path.fold_scores.shape == (2, 4) and rf.outputs == 3


# -- the readout network: R^d -> R^m --------------------------------------------------------------


def test_readout_network_has_m_outputs(fits):
    x, Y, multi, singles = fits
    xt = np.linspace(-1, 1, 23)
    net = readout(multi)  # the solve's own rule: the network is f_U to rounding
    assert net.outputs == 3 and net.a.shape == (net.width, 3)
    f = multi.predict(xt)
    assert net.predict(xt).shape == (23, 3)
    assert np.abs(net.predict(xt) - f).max() <= 1e-10 * np.abs(f).max()
    for k in range(3):  # the same neurons as each output's own readout, column k its weights
        single = readout(singles[k])
        np.testing.assert_array_equal(single.W, net.W)
        np.testing.assert_allclose(net.a[:, k], single.a, rtol=0, atol=1e-8 * np.abs(single.a).max())
    # refit: the m least-squares problems share the matrix; each column equals its own refit
    refit = readout(multi, "refit")
    for k in range(3):
        own = readout(singles[k], "refit")
        np.testing.assert_allclose(refit.a[:, k], own.a, rtol=0, atol=1e-7 * np.abs(own.a).max())
    sample = readout(multi, "sample", width=64, seed=3)
    assert sample.a.shape == (64, 3) and sample.predict(xt).shape == (23, 3)


def test_sampled_neurons_are_unbiased_for_every_output(fits):
    """E f_N = f_u for each output: the mean of many sampled networks approaches the quadrature network."""
    x, Y, multi, _ = fits
    xt = np.linspace(-1, 1, 9)
    exact = readout(multi).predict(xt)
    mean = np.mean([readout(multi, "sample", width=400, seed=s).predict(xt) for s in range(200)], axis=0)
    assert np.abs(mean - exact).max() <= 0.05 * np.abs(exact).max()


def _net(m=3, N=7, d=2, activation="tanh"):
    rng = np.random.default_rng(m)
    return Network(rng.standard_normal((N, d)), rng.standard_normal(N), rng.standard_normal((N, m)), activation)


def test_network_shapes_and_state_dict():
    net = _net()
    x = np.random.default_rng(0).standard_normal((5, 2))
    f = net.predict(x)
    assert f.shape == (5, 3)
    np.testing.assert_allclose(f, np.tanh(x @ net.W.T + net.b) @ net.a, rtol=1e-14)
    sd = net.state_dict()
    assert sd["2.weight"].shape == (3, 7) and sd["2.bias"].shape == (3,)
    np.testing.assert_array_equal(sd["2.weight"], net.a.T)
    one = Network(net.W, net.b, net.a[:, :1], "tanh")  # a (N, 1) is one output
    assert one.outputs == 1 and one.a.shape == (7,) and one.predict(x).shape == (5,)
    assert one.state_dict()["2.weight"].shape == (1, 7)
    with pytest.raises(ValueError, match=r"expected W \(N, d\), b \(N,\), a \(N,\) or \(N, m\)"):
        Network(net.W, net.b, net.a[:5], "tanh")


def test_network_files_round_trip_with_m_outputs(tmp_path):
    import onnxruntime

    net = _net(activation="softplus")
    x = np.random.default_rng(1).standard_normal((11, 2))
    f = net.predict(x)
    if comm.rank == 0:
        net.save(tmp_path / "net.npz")
        export.to_safetensors(net, tmp_path / "net.safetensors")
        export.to_onnx(net, tmp_path / "net.onnx")
        loaded = Network.load(tmp_path / "net.npz")
        assert loaded.a.shape == (7, 3)
        np.testing.assert_array_equal(loaded.predict(x), f)
        st = export.from_safetensors(tmp_path / "net.safetensors")
        np.testing.assert_array_equal(st.a, net.a)
        np.testing.assert_array_equal(st.predict(x), f)
        session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
        (g,) = session.run(None, {"x": x})
        assert g.shape == (11, 3)
        assert np.abs(g - f).max() <= 1e-12 * np.abs(f).max()
        assert "nn.Linear(7, 3)" in export.metadata(net)["layout"]


def test_torch_model_has_m_outputs():
    torch = pytest.importorskip("torch")
    net = _net()
    x = np.random.default_rng(2).standard_normal((4, 2))
    model = net.to_torch()
    assert model[2].out_features == 3
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), net.predict(x), rtol=1e-12)


# -- data: y1..ym columns, y (n, m) -----------------------------------------------------------------


def test_y_columns_are_read_by_name(tmp_path):
    x = np.linspace(-1, 1, 6)[:, None]
    Y = targets(x)
    if comm.rank == 0:
        np.savetxt(tmp_path / "d.csv", np.column_stack([Y[:, 2], x, Y[:, 0], Y[:, 1]]), delimiter=",",
                   header="y3,x1,y1,y2", comments="")
        np.savez(tmp_path / "d.npz", x=x, y=Y)
        for name in ("d.csv", "d.npz"):
            ds = data.load(tmp_path / name)
            assert ds.outputs == 3 and ds.y.shape == (6, 3)
            np.testing.assert_array_equal(ds.y, Y)
        data.save(data.Dataset(x, Y), tmp_path / "back.csv")
        assert (tmp_path / "back.csv").read_text().splitlines()[0] == "x1,y1,y2,y3"
        np.testing.assert_array_equal(data.load(tmp_path / "back.csv").y, Y)
        data.save_predictions(tmp_path / "p.csv", x, Y + 1.0, Y)  # predictions.csv reads back as data
        assert (tmp_path / "p.csv").read_text().splitlines()[0] == "x1,y1,y2,y3,f1,f2,f3"
        np.testing.assert_array_equal(data.load(tmp_path / "p.csv").y, Y)
        np.savetxt(tmp_path / "y1.csv", np.column_stack([x, Y[:, 0]]), delimiter=",", header="x1,y1", comments="")
        assert data.load(tmp_path / "y1.csv").y.shape == (6,)  # a lone y1 is one output


@pytest.mark.parametrize("names,message", [
    (["x1", "y", "y1"], "columns 'y' and 'y1' both name targets"),
    (["x1", "y1", "y3"], "output column(s) y2 missing (found y1, y3)"),
    (["x1", "y0", "y1"], "unknown column(s) 'y0'"),
    (["x1", "y1", "y1"], "column(s) 'y1' appear more than once"),
])
def test_bad_output_columns_are_refused_by_name(names, message):
    with pytest.raises(ValueError, match="data") as info:
        data.columns(names)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_check_takes_y_of_m_columns():
    x = np.zeros((4, 1))
    assert data.check(x, np.ones((4, 3)))[1].shape == (4, 3)
    assert data.check(x, np.ones((4, 1)))[1].shape == (4,)
    for y in (np.ones((3, 2)), np.ones((4, 2, 1)), np.ones((4, 0))):
        with pytest.raises(ValueError, match=r"expected \(4,\), or \(4, m\) for m outputs"):
            data.check(x, y)
