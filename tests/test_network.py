"""The finite network (flowfem.network): evaluation, .npz files, PyTorch export."""

import os
import sys

import numpy as np
import pytest

from conftest import run
from flowfem.network import Network

ACTIVATIONS = ["relu", "leaky_relu:0.2", "tanh", "sigmoid", "softplus", "monomial:2", "monomial:3"]


def _net(act="tanh", N=7, d=2, seed=0):
    rng = np.random.default_rng(seed)
    return Network(rng.standard_normal((N, d)), rng.standard_normal(N), rng.standard_normal(N), act)


def _x(n=50, d=2, seed=1):
    return np.random.default_rng(seed).uniform(-2, 2, (n, d))


# -- evaluation -----------------------------------------------------------------

def test_network_is_the_sum_of_its_neurons():
    net = _net("softplus")
    x = _x()
    f = sum(a * np.logaddexp(0, x @ w + b) for w, b, a in zip(net.W, net.b, net.a))
    np.testing.assert_allclose(net(x), f, rtol=1e-14)
    assert net.features(x).shape == (50, 7) and net.width == 7 and net.input_dim == 2
    np.testing.assert_array_equal(net(x, batch=3), net(x))


def test_predict_is_the_call_with_result_predicts_shape():
    """Network.predict(x) is f_N at the rows of x, shape (n,) as Result.predict returns; repr is one
    short line, not the weight arrays."""
    net = _net("tanh", N=300)
    x = _x()
    f = net.predict(x)
    assert f.shape == (50,)
    np.testing.assert_array_equal(f, net(x))
    assert _net("relu", d=1).predict(np.linspace(-1, 1, 4)).shape == (4,)  # (n,) inputs when d = 1
    assert repr(net) == "Network(width=300, input_dim=2, activation='tanh')"
    assert repr(_net("leaky_relu:0.2", d=1)) == "Network(width=7, input_dim=1, activation='leaky_relu:0.2')"


def test_one_dimensional_inputs_and_bad_inputs():
    net = _net(d=1)
    x = np.linspace(-1, 1, 5)
    np.testing.assert_array_equal(net(x), net(x[:, None]))
    with pytest.raises(ValueError, match=r"this network takes \(n, 1\)"):
        net(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN or inf"):
        net(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        Network(np.zeros((3, 1)), np.zeros(2), np.zeros(3), "relu")
    with pytest.raises(ValueError, match="unknown activation"):
        Network(np.zeros((3, 1)), np.zeros(3), np.zeros(3), "swish")


def test_evaluation_loads_no_dolfinx():
    """The network evaluates sigma(theta . x~) with the data operator's kernel
    (flowfem.operator.features); neither it nor the modules that evaluate finite networks with
    it may load dolfinx: `flowfem predict` and `flowfem landscape` run without it."""
    code = ("import sys, flowfem.network, flowfem.plateau, flowfem.jacobian_rank, flowfem.particles; "
            "print(sorted(m for m in ('dolfinx', 'basix', 'ufl', 'petsc4py') if m in sys.modules))")
    r = run([sys.executable, "-c", code])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


# -- files ------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTIVATIONS)
def test_save_load_round_trip_gives_identical_predictions(tmp_path, act):
    net = _net(act, N=11)
    path = tmp_path / "net.npz"
    net.save(path)
    back = Network.load(path)
    assert back.activation.name == net.activation.name
    for k in ("W", "b", "a"):
        np.testing.assert_array_equal(getattr(back, k), getattr(net, k))
    np.testing.assert_array_equal(back(_x()), net(_x()))
    # written atomically: no temporary file left; the record that flowfem wrote it (flowfem.files)
    assert sorted(os.listdir(tmp_path)) == [".net.npz.flowfem", "net.npz"]


def _crafted(path, **arrays):
    full = dict(W=np.zeros((3, 2)), b=np.zeros(3), a=np.zeros(3), activation=np.array("relu"))
    full.update(arrays)
    np.savez(path, **{k: v for k, v in full.items() if v is not None})
    return path


@pytest.mark.parametrize("arrays,message", [
    (dict(W=np.array([object(), object(), object()], dtype=object)), "contains pickled objects"),
    (dict(activation=np.array(["relu", {"x": 1}], dtype=object)), "contains pickled objects"),
    (dict(b=np.zeros(4)), r"inconsistent shapes W\(3, 2\), b\(4,\)"),
    (dict(W=np.zeros((3, 2, 1))), "inconsistent shapes"),
    (dict(a=np.zeros((2, 3))), "inconsistent shapes"),  # a (N, m) transposed (a (3, 2) is 2 outputs)
    (dict(a=None), r"arrays \['a'\] missing"),
    (dict(W=np.zeros((3, 2), dtype=complex)), "array W has dtype complex128, expected numbers"),
    (dict(b=np.array(["1", "2", "3"])), "array b has dtype <U1, expected numbers"),
    (dict(activation=np.array(3)), "'activation' must be a string"),
    (dict(activation=np.array(["relu", "tanh"])), "'activation' must be a string"),
    (dict(activation=np.array("swish")), "unknown activation 'swish'"),
    (dict(W=np.full((3, 2), np.inf)), "W contains NaN or inf"),
])
def test_crafted_files_are_refused_with_a_clear_message(tmp_path, arrays, message):
    path = _crafted(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        Network.load(path)


def test_a_pickle_and_a_missing_file_are_refused(tmp_path):
    import pickle

    path = tmp_path / "net.npz"
    path.write_bytes(pickle.dumps({"W": np.zeros((2, 1))}))
    with pytest.raises(ValueError, match="refuses to load"):
        Network.load(path)
    with pytest.raises(ValueError, match="cannot read network file"):
        Network.load(tmp_path / "absent.npz")


def test_a_npy_file_is_refused(tmp_path):
    path = tmp_path / "net.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="single .npy array"):
        Network.load(path)


def test_a_non_archive_is_refused(tmp_path):
    path = tmp_path / "net.npz"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="not a flowfem network|cannot read"):
        Network.load(path)


# -- PyTorch ------------------------------------------------------------------------

def test_state_dict_layout():
    net = _net(N=5, d=2)
    sd = net.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {
        "0.weight": (5, 2), "0.bias": (5,), "2.weight": (1, 5), "2.bias": (1,)}
    sd["0.weight"][0, 0] = 99.0  # a copy: the network is untouched
    assert net.W[0, 0] != 99.0


def _torch_activation(torch, name):
    if name == "relu":
        return torch.nn.ReLU()
    if name.startswith("leaky_relu"):
        return torch.nn.LeakyReLU(float(name.split(":")[1]))
    if name in ("tanh", "sigmoid", "softplus"):
        return {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "softplus": torch.nn.Softplus}[name]()
    k = int(name.split(":")[1])

    class Power(torch.nn.Module):
        def forward(self, z):
            return z**k

    return Power()


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_state_dict_in_torch_sequential_matches_numpy(act):
    """nn.Sequential(Linear(d, N), act, Linear(N, 1)) with the state dict: same outputs to 1e-12
    (inputs with |w . x + b| < 20, where torch's Softplus is log(1 + e^z), not its linear tail)."""
    torch = pytest.importorskip("torch")
    net = _net(act, N=13, d=2)
    x = _x(200)
    f = net(x)
    model = torch.nn.Sequential(torch.nn.Linear(2, 13), _torch_activation(torch, act),
                                torch.nn.Linear(13, 1)).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    with torch.no_grad():
        g = model(torch.from_numpy(x)).numpy()[:, 0]
        h = net.to_torch()(torch.from_numpy(x)).numpy()[:, 0]
    assert np.abs(g - f).max() <= 1e-12 * np.abs(f).max()
    assert np.abs(h - f).max() <= 1e-12 * np.abs(f).max()


def test_to_torch_softplus_for_large_preactivations():
    torch = pytest.importorskip("torch")
    net = Network(np.array([[1.0]]), np.array([0.0]), np.array([1.0]), "softplus")
    x = np.array([[20.5], [22.0], [25.0]])
    with torch.no_grad():
        g = net.to_torch()(torch.from_numpy(x)).numpy()[:, 0]
    assert np.abs(g - net(x)).max() <= 1e-12 * np.abs(net(x)).max()
