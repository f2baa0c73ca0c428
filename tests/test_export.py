"""The network's exchange formats (flowfem.export, flowfem export): ONNX run by onnxruntime,
safetensors in the nn.Sequential layout, and the optional PyTorch .pt state dict."""

import os
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from conftest import BIN, run
from flowfem import export
from flowfem.network import Network

FLOWFEM = os.path.join(BIN, "flowfem")
ACTIVATIONS = ["relu", "leaky_relu:0.1", "tanh", "sigmoid", "softplus", "monomial:2", "monomial:3"]


def _net(act, N=13, d=2, seed=0):
    rng = np.random.default_rng(seed)
    return Network(rng.standard_normal((N, d)), rng.standard_normal(N), rng.standard_normal(N), act)


def _x(n=300, d=2, seed=1):
    return np.random.default_rng(seed).uniform(-3, 3, (n, d))


def _onnxruntime(path, x):
    """The ONNX file's output f (n, 1) at x (n, d), on onnxruntime's CPU provider."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["f"], {"x": x})[0]


# -- ONNX ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTIVATIONS)
def test_onnx_equals_the_network_for_every_activation(tmp_path, act):
    """The graph x (batch, d) -> f (batch, 1), float64, passes onnx.checker, and onnxruntime gives
    Network.predict to 1e-12 for any batch size (one input of 300 rows, one of 1)."""
    net = _net(act)
    path = tmp_path / "net.onnx"
    export.to_onnx(net, path)
    assert sorted(os.listdir(tmp_path)) == [".net.onnx.flowfem", "net.onnx"]  # atomic: no temporary file left
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    (x_info,), (f_info,) = model.graph.input, model.graph.output
    assert (x_info.name, f_info.name) == ("x", "f")
    assert x_info.type.tensor_type.elem_type == f_info.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert [d.dim_param or d.dim_value for d in x_info.type.tensor_type.shape.dim] == ["batch", 2]
    assert [d.dim_param or d.dim_value for d in f_info.type.tensor_type.shape.dim] == ["batch", 1]
    assert {p.key: p.value for p in model.metadata_props}["activation"] == net.activation.name
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(weights[key], value)
    x = _x()
    f = net.predict(x)
    g = _onnxruntime(path, x)
    assert g.shape == (300, 1) and g.dtype == np.float64
    assert np.abs(g[:, 0] - f).max() <= 1e-12 * np.abs(f).max()
    assert np.abs(_onnxruntime(path, x[:1])[0, 0] - f[0]) <= 1e-12 * abs(f[0])


def test_onnx_leaky_slope_is_float64(tmp_path):
    """A slope that is not a float32 number (0.1) is kept to float64: ONNX's LeakyRelu holds it as
    a float32 attribute and would be off by 1.5e-9 relative."""
    net = Network(np.array([[1.0]]), np.array([0.0]), np.array([1.0]), "leaky_relu:0.1")
    export.to_onnx(net, tmp_path / "leaky.onnx")
    x = -np.logspace(-3, 3, 50)[:, None]
    g = _onnxruntime(tmp_path / "leaky.onnx", x)[:, 0]
    np.testing.assert_allclose(g, net(x), rtol=1e-15, atol=0)


def test_onnx_softplus_is_log_one_plus_exp_for_all_preactivations(tmp_path):
    """softplus(z) = log(1 + e^z) to 1e-12 relative at every point, from z = -745 (e^z the smallest
    double) through the tail where 1 + e^z rounds to 1 (z < -37) to z = 800 (e^z overflows)."""
    z = np.concatenate([-np.logspace(-20, np.log10(745), 60), [0.0], np.logspace(-20, np.log10(800), 60)])
    net = Network(np.array([[1.0], [0.5]]), np.array([0.0, 0.0]), np.array([1.0, 2.0]), "softplus")
    export.to_onnx(net, tmp_path / "softplus.onnx")
    g = _onnxruntime(tmp_path / "softplus.onnx", z[:, None])[:, 0]
    f = net(z)
    assert np.all(f > 0) and np.all(np.isfinite(g))
    np.testing.assert_allclose(g, f, rtol=1e-12, atol=0)


def test_onnx_runs_like_flowfem_predict(tmp_path):
    """flowfem export --format onnx, run in onnxruntime, gives flowfem predict's column f to 1e-12;
    --out defaults to the network's name with the format's suffix."""
    net = _net("tanh", N=20)
    net.save(tmp_path / "net.npz")
    x = _x(200)
    np.savetxt(tmp_path / "inputs.csv", x, delimiter=",", header="x1,x2", comments="")
    r = run([FLOWFEM, "export", "--network", str(tmp_path / "net.npz"), "--format", "onnx"])
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    r = run([FLOWFEM, "predict", "--network", str(tmp_path / "net.npz"), "--data", str(tmp_path / "inputs.csv"),
             "--out", str(tmp_path / "p.csv")])
    assert r.returncode == 0, r.stderr
    predicted = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    g = _onnxruntime(tmp_path / "net.onnx", predicted[:, :2])[:, 0]
    assert np.abs(g - predicted[:, 2]).max() <= 1e-12 * np.abs(predicted[:, 2]).max()


# -- safetensors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTIVATIONS)
def test_safetensors_holds_the_npz_arrays(tmp_path, act):
    """The safetensors file's tensors are the .npz file's arrays in the nn.Sequential layout, float64;
    the metadata carry the activation, from which from_safetensors rebuilds the same network."""
    net = _net(act)
    net.save(tmp_path / "net.npz")
    export.to_safetensors(Network.load(tmp_path / "net.npz"), tmp_path / "net.safetensors")
    tensors = load_file(tmp_path / "net.safetensors")
    npz = np.load(tmp_path / "net.npz")
    assert sorted(tensors) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert all(t.dtype == np.float64 for t in tensors.values())
    np.testing.assert_array_equal(tensors["0.weight"], npz["W"])
    np.testing.assert_array_equal(tensors["0.bias"], npz["b"])
    np.testing.assert_array_equal(tensors["2.weight"], npz["a"][None, :])
    np.testing.assert_array_equal(tensors["2.bias"], [0.0])
    with safe_open(tmp_path / "net.safetensors", framework="np") as f:
        meta = f.metadata()
    assert meta["activation"] == str(npz["activation"]) and meta["flowfem_version"]
    back = export.from_safetensors(tmp_path / "net.safetensors")
    assert back.activation.name == net.activation.name and back.activation.slope == net.activation.slope
    np.testing.assert_array_equal(back(_x()), net(_x()))


def test_safetensors_keeps_every_digit_of_a_leaky_slope(tmp_path):
    net = Network(np.array([[1.0]]), np.array([0.0]), np.array([1.0]), "leaky_relu:0.123456789")
    net.to_safetensors(tmp_path / "net.safetensors")
    assert export.from_safetensors(tmp_path / "net.safetensors").activation.slope == 0.123456789


def test_safetensors_file_follows_the_umask(tmp_path):
    """Like Network.save's .npz (safetensors' own save_file would leave mode 0600)."""
    net = _net("relu")
    net.save(tmp_path / "net.npz")
    net.to_safetensors(tmp_path / "net.safetensors")
    net.to_onnx(tmp_path / "net.onnx")
    mode = os.stat(tmp_path / "net.npz").st_mode & 0o777
    assert os.stat(tmp_path / "net.safetensors").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "net.onnx").st_mode & 0o777 == mode


def test_foreign_safetensors_are_refused_with_a_reason(tmp_path):
    arrays = {k: np.ascontiguousarray(v) for k, v in _net("relu", N=3).state_dict().items()}
    save_file(arrays, tmp_path / "no_meta.safetensors")
    save_file({**arrays, "2.bias": np.array([0.5])}, tmp_path / "bias.safetensors", metadata={"activation": "relu"})
    save_file({k: v for k, v in arrays.items() if k != "0.bias"}, tmp_path / "keys.safetensors",
              metadata={"activation": "relu"})
    save_file(arrays, tmp_path / "swish.safetensors", metadata={"activation": "swish"})
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    for name, message in [("no_meta", "metadata entry 'activation' missing"), ("bias", "no output bias"),
                          ("keys", r"tensors \['0.bias'\] missing"), ("swish", "unknown activation 'swish'"),
                          ("text", "not a safetensors file"), ("absent", "cannot read network file")]:
        with pytest.raises(ValueError, match=message):
            export.from_safetensors(tmp_path / f"{name}.safetensors")


# -- PyTorch (optional: the PyPI torch wheel is several GB) -------------------------------------

def test_without_torch_the_torch_formats_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    net = _net("relu")
    with pytest.raises(ImportError, match="pip install torch"):
        net.state_dict(tensors=True)
    with pytest.raises(ImportError, match="pip install torch"):
        export.to_torch_file(net, tmp_path / "net.pt")
    assert os.listdir(tmp_path) == []


def test_torch_state_dict_loads_into_nn_sequential(tmp_path):
    torch = pytest.importorskip("torch")
    net = _net("softplus")
    x = _x()
    export.to_torch_file(net, tmp_path / "net.pt")
    state = torch.load(tmp_path / "net.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in state.values())
    for source in (state, net.state_dict(tensors=True)):
        model = net.to_torch()
        model.load_state_dict(source)
        with torch.no_grad():
            g = model(torch.from_numpy(x)).numpy()[:, 0]
        assert np.abs(g - net(x)).max() <= 1e-12 * np.abs(net(x)).max()


# -- the command ------------------------------------------------------------------------------------

def test_export_command_refuses_and_writes_nothing(tmp_path):
    """A bad format, an existing file without --force, a missing network or directory: exit 2, one
    line, nothing written (an existing file is left as it was); --force does not replace the user's
    file either (tests/test_force_files.py: it replaces one that flowfem wrote)."""
    _net("relu").save(tmp_path / "net.npz")
    (tmp_path / "taken.onnx").write_text("mine")
    cmd = [FLOWFEM, "export", "--network", str(tmp_path / "net.npz")]
    cases = [
        (["--format", "keras", "--out", str(tmp_path / "x.keras")], "invalid choice: 'keras'"),
        (["--format", "onnx", "--out", str(tmp_path / "taken.onnx")], "exists; pass --force"),
        (["--format", "onnx", "--out", str(tmp_path / "nowhere" / "net.onnx")], "its directory does not exist"),
    ]
    for args, message in cases:
        r = run(cmd + args)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    r = run([FLOWFEM, "export", "--network", str(tmp_path / "none.npz"), "--format", "safetensors"])
    assert r.returncode == 2 and "cannot read network file" in r.stderr, r.stderr
    try:
        import torch  # noqa: F401
    except ImportError:
        r = run(cmd + ["--format", "torch"])
        assert r.returncode == 2 and "pip install torch" in r.stderr, r.stderr
    r = run(cmd + ["--format", "onnx", "--out", str(tmp_path / "taken.onnx"), "--force"])
    assert r.returncode == 2 and "taken.onnx' was not written by flowfem" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == [".net.npz.flowfem", "net.npz", "taken.onnx"]  # Network.save's record
    assert (tmp_path / "taken.onnx").read_text() == "mine"


def test_export_loads_no_dolfinx():
    """Exporting needs NumPy, onnx and safetensors only, like flowfem predict."""
    code = ("import sys, flowfem.export; "
            "print(sorted(m for m in ('dolfinx', 'basix', 'ufl', 'petsc4py') if m in sys.modules))")
    r = run([sys.executable, "-c", code])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_network_beyond_the_onnx_size_limit_is_refused_before_the_work(tmp_path, monkeypatch):
    """An ONNX model is one protobuf message (< 2 GiB): a wider network failed after minutes and 9 GB with
    protobuf's 'Failed to serialize proto'; now one line names the limit and safetensors, nothing written.
    (The limit is lowered here instead of building 2 GiB of weights; the message is the one a user gets.)"""
    net = _net("relu", N=100, d=2)
    weights = 8 * (net.W.size + 2 * net.width + 1)
    monkeypatch.setattr(export, "ONNX_LIMIT", weights - 1)
    with pytest.raises(ValueError, match="beyond the 2 GiB an ONNX file .* use --format safetensors"):
        export.to_onnx(net, tmp_path / "wide.onnx")
    assert not os.listdir(tmp_path)
    monkeypatch.setattr(export, "ONNX_LIMIT", weights)  # at the limit: written
    export.to_onnx(net, tmp_path / "wide.onnx")
    assert sorted(os.listdir(tmp_path)) == [".wide.onnx.flowfem", "wide.onnx"]


@pytest.mark.parametrize("loss", [None, "squared", "logistic"])
def test_the_loss_travels_with_the_network_through_onnx_and_safetensors(tmp_path, loss):
    """A network's recorded loss is in both formats' metadata and comes back from safetensors: a
    logistic network's output is a score (the logit of P(y = +1)), which a reader must not take for a
    regression value; an unrecorded loss writes no entry."""
    rng = np.random.default_rng(3)
    net = Network(rng.standard_normal((7, 2)), rng.standard_normal(7), rng.standard_normal(7), "relu", loss=loss)
    export.to_onnx(net, tmp_path / "net.onnx")
    export.to_safetensors(net, tmp_path / "net.safetensors")
    props = {p.key: p.value for p in onnx.load(tmp_path / "net.onnx").metadata_props}
    with safe_open(tmp_path / "net.safetensors", framework="np") as f:
        meta = f.metadata()
    for m in (props, meta):
        assert m.get("loss") == loss
        assert m.get("outputs") == ("score" if loss == "logistic" else None)
    back = export.from_safetensors(tmp_path / "net.safetensors")
    assert back.loss == loss
    np.testing.assert_array_equal(back(_x()), net(_x()))


def test_a_classifier_exports_its_loss_and_labels(tmp_path):
    rng = np.random.default_rng(4)
    net = Network(rng.standard_normal((5, 2)), rng.standard_normal(5), rng.standard_normal((5, 3)), "tanh",
                  classes=np.array([2, 5, 9]), loss="softmax")
    export.to_safetensors(net, tmp_path / "net.safetensors")
    with safe_open(tmp_path / "net.safetensors", framework="np") as f:
        meta = f.metadata()
    assert (meta["loss"], meta["outputs"], meta["classes"]) == ("softmax", "logits", "[2, 5, 9]")
    back = export.from_safetensors(tmp_path / "net.safetensors")
    assert back.loss == "softmax" and back.classes.tolist() == [2, 5, 9]
