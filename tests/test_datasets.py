"""Real data sets (flowfem/datasets.py) and input standardisation (flowfem/scaling.py).

The loaders return the documented shapes and the published first rows; a missing package, an
unknown name and a changed set are one-line ValueErrors. The folded network equals the network
on standardised inputs (against a dense NumPy evaluation, and through ONNX), and the scaling
round-trips through the network file, the JSON record and ``flowfem predict`` on raw inputs.
"""

import dataclasses
import json
import sys

import numpy as np
import pytest

from flowfem import data, datasets
from flowfem.cli import main
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.readout import readout
from flowfem.scaling import Standardisation
from flowfem.space import Space

# (first row x, first row y, last row x, last row y) as published with each package's copy of the set
FIRST_LAST = {
    "iris2": ((1.4, 0.2), 0.0, (5.1, 1.8), 2.0),  # Fisher's iris: setosa 5.1,3.5,1.4,0.2 ... virginica 5.9,3.0,5.1,1.8
    "diabetes1": ((32.1,), 151.0, (19.6,), 57.0),
    "engel": ((420.157651,), 255.839425, (1057.676711,), 750.320163),
    "sunspots": ((1700.0,), 5.0, (2008.0,), 2.9),
    "co2": ((1958 + 87 / 365,), 316.1, (2001 + 362 / 365,), 371.5),  # 1958-03-29 and 2001-12-29
    "stackloss": ((80.0, 27.0, 89.0), 42.0, (70.0, 20.0, 91.0), 15.0),  # Brownlee's days 1 and 21
}


@pytest.mark.parametrize("name", sorted(datasets.REAL))
def test_documented_shapes_and_rows(name):
    entry = datasets.REAL[name]
    ds = data.get(name)
    assert ds.name == name and ds.x.shape == (entry.n, entry.d) and ds.y.shape == (entry.n,)
    assert np.all(np.isfinite(ds.x)) and np.all(np.isfinite(ds.y)) and len(entry.inputs) == entry.d
    x0, y0, x1, y1 = FIRST_LAST[name]
    np.testing.assert_allclose([ds.x[0], ds.x[-1]], [x0, x1], rtol=1e-8)  # engel: 6 decimals
    np.testing.assert_allclose([ds.y[0], ds.y[-1]], [y0, y1], rtol=1e-8)


def test_iris_labels_and_regression_task():
    ds = data.get("iris2")
    assert sorted(set(ds.y)) == [0.0, 1.0, 2.0] and np.bincount(ds.y.astype(int)).tolist() == [50, 50, 50]
    assert datasets.REAL["iris2"].task == "classification (3 classes)"
    assert datasets.REAL["iris2"].inputs == ("petal length (cm)", "petal width (cm)")
    assert {datasets.REAL[k].task for k in ("diabetes1", "engel", "sunspots", "co2", "stackloss")} == {"regression"}
    assert np.all(np.diff(data.get("co2").x[:, 0]) > 0)  # weeks in order, the gaps dropped


@pytest.mark.parametrize("name", ["engel", "iris2"])
def test_split_like_a_file(name):
    """A seeded fifth held out, the rest for training: disjoint, together the whole set."""
    full = data.get(name)
    train, test = data.train_test(name, seed=3)
    assert (train.n, test.n) == (full.n - full.n // 5, full.n // 5)
    rows = lambda ds: sorted(map(tuple, np.column_stack([ds.x, ds.y])))  # noqa: E731
    assert sorted(rows(train) + rows(test)) == rows(full)
    again, _ = data.train_test(name, seed=3)
    other, _ = data.train_test(name, seed=4)
    assert np.array_equal(again.x, train.x) and not np.array_equal(other.x, train.x)


@pytest.mark.parametrize("name,modules,package", [
    ("engel", ("statsmodels", "statsmodels.datasets"), "statsmodels"),
    ("diabetes1", ("sklearn", "sklearn.datasets"), "scikit-learn")])
def test_missing_package_names_the_install(monkeypatch, name, modules, package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ValueError, match=rf"^the data set '{name}' ships with {package}, which is not installed: "
                                         rf"pip install {package}$"):
        data.get(name)


def test_unknown_name_and_changed_set(monkeypatch):
    with pytest.raises(ValueError, match="unknown real data set 'engle': did you mean 'engel'"):
        datasets.load("engle")
    monkeypatch.setitem(datasets.REAL, "engel", dataclasses.replace(datasets.REAL["engel"], n=234))
    with pytest.raises(ValueError, match=r"returned x of shape \(235, 1\), documented \(234, 1\)"):
        data.get("engel")


# -- standardisation -------------------------------------------------------------------------------

def test_standardisation_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal([1e3, -2.0], [500.0, 0.01], (40, 2))
    s = Standardisation.fit(x)
    n = len(x)
    mean = [sum(x[:, k]) / n for k in range(2)]
    std = [np.sqrt(sum((x[:, k] - mean[k]) ** 2) / n) for k in range(2)]
    np.testing.assert_allclose(s.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(s.scale, std, rtol=1e-12)
    z = s.apply(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-13)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-13)
    np.testing.assert_allclose(s.invert(z), x, rtol=1e-14)
    scaled = s.dataset(data.Dataset(x, np.arange(n, dtype=float), "set"))
    assert np.array_equal(scaled.x, z) and np.array_equal(scaled.y, np.arange(n)) and scaled.name == "set"
    assert Standardisation.fit(x[:, 0]).d == 1  # (n,) is one column
    with pytest.raises(ValueError, match="input column x2 is constant on the 40 training row"):
        Standardisation.fit(np.column_stack([x[:, 0], np.full(n, 3.0)]))
    with pytest.raises(ValueError, match="takes \\(n, 2\\)"):
        s.apply(x[:, :1])


@pytest.mark.parametrize("act", ["relu", "tanh", "softplus", "leaky_relu:0.1"])
def test_fold_equals_the_network_on_standardised_inputs(act):
    """f'(x) = f((x - m) / s) with f' the folded network: against sum_i a_i sigma(w_i . z + b_i)
    evaluated densely in NumPy."""
    rng = np.random.default_rng(1)
    x = rng.normal([50.0, -3.0], [20.0, 0.2], (200, 2))
    s = Standardisation.fit(x[:150])
    net = Network(rng.standard_normal((30, 2)), rng.standard_normal(30), rng.standard_normal(30), act)
    folded = s.fold(net)
    sigma = {"relu": lambda t: np.maximum(t, 0), "tanh": np.tanh, "softplus": lambda t: np.logaddexp(t, 0),
             "leaky_relu:0.1": lambda t: np.maximum(t, 0.1 * t)}[act]
    z = (x - x[:150].mean(axis=0)) / x[:150].std(axis=0)
    reference = sigma(z @ net.W.T + net.b) @ net.a
    np.testing.assert_allclose(folded(x), reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())
    assert folded.input_scaling is s and net.input_scaling is None and folded.width == net.width
    np.testing.assert_allclose(folded.W * s.scale, net.W, rtol=1e-14)  # w' = w / s: only W, b change
    assert np.array_equal(folded.a, net.a)
    with pytest.raises(ValueError, match="already takes raw inputs"):
        s.fold(folded)
    with pytest.raises(ValueError, match="takes d = 2 inputs, the scaling has 1"):
        Standardisation.fit(x[:, 0]).fold(net)


def test_scaling_round_trips_through_the_network_file(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(300.0, 40.0, (50, 1))
    s = Standardisation.fit(x)
    folded = s.fold(Network(rng.standard_normal((8, 1)), rng.standard_normal(8), rng.standard_normal(8), "relu"))
    folded.save(tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz") as f:  # readable without flowfem
        assert np.array_equal(f["input_mean"], s.mean) and np.array_equal(f["input_scale"], s.scale)
    back = Network.load(tmp_path / "net.npz")
    assert np.array_equal(back.input_scaling.mean, s.mean) and np.array_equal(back.input_scaling.scale, s.scale)
    assert np.array_equal(back(x), folded(x))
    record = json.loads(json.dumps(s.record()))  # as metrics.json holds it
    again = Standardisation.from_record(record)
    assert np.array_equal(again.mean, s.mean) and np.array_equal(again.scale, s.scale)
    Network(folded.W, folded.b, folded.a, "relu").save(tmp_path / "plain.npz")  # a network without scaling
    assert Network.load(tmp_path / "plain.npz").input_scaling is None
    np.savez(tmp_path / "half.npz", W=folded.W, b=folded.b, a=folded.a, activation=np.array("relu"),
             input_mean=s.mean)
    with pytest.raises(ValueError, match="input_mean without its partner"):
        Network.load(tmp_path / "half.npz")
    np.savez(tmp_path / "bad.npz", W=folded.W, b=folded.b, a=folded.a, activation=np.array("relu"),
             input_mean=s.mean, input_scale=-s.scale)
    with pytest.raises(ValueError, match="scale finite and positive"):
        Network.load(tmp_path / "bad.npz")


def test_onnx_of_a_folded_network_takes_raw_inputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    x = rng.normal([1e3, 5.0], [300.0, 2.0], (64, 2))
    s = Standardisation.fit(x)
    net = Network(rng.standard_normal((16, 2)), rng.standard_normal(16), rng.standard_normal(16), "tanh")
    s.fold(net).to_onnx(tmp_path / "net.onnx")
    session = ort.InferenceSession(str(tmp_path / "net.onnx"))
    f = session.run(None, {"x": x})[0][:, 0]
    np.testing.assert_allclose(f, net(s.apply(x)), rtol=1e-12, atol=1e-12)


def test_fitted_network_predicts_raw_inputs_from_its_file(tmp_path, capsys):
    """engel: a fit on standardised incomes, read out, folded and saved; Network.load(...).predict
    and flowfem predict on the raw incomes give the density's predictions."""
    train, test = data.train_test("engel", seed=0)
    s = Standardisation.fit(train.x)
    result = Problem(Space.box(1, 8, 4.0), "relu", "uniform", 1e-4, 1.0, 1).fit(s.apply(train.x), train.y)
    f = result.predict(s.apply(test.x))
    assert result.rmse(s.apply(test.x), test.y) < 0.5 * np.std(test.y)  # it learnt the trend
    path = tmp_path / "engel.npz"
    s.fold(readout(result)).save(path)
    np.testing.assert_allclose(Network.load(path).predict(test.x), f, rtol=1e-10)
    assert main(["predict", "--network", str(path), "--data", "engel", "--out", str(tmp_path / "p.csv")]) == 0
    rows = data.load(tmp_path / "p.csv", require_y=False)  # x1, f: every row of engel, raw incomes
    full = data.get("engel")
    assert np.array_equal(rows.x, full.x)
    table = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(table[:, -1], result.predict(s.apply(full.x)), rtol=1e-10)


def test_misspelt_name_suggests_the_real_set():
    with pytest.raises(ValueError, match="data file 'engle' does not exist; did you mean the real data set 'engel'"):
        data.get("engle")
    with pytest.raises(ValueError, match="did you mean the synthetic set 'sin'"):
        data.get("sine")


def test_solve_records_and_readout_folds_the_scaling(tmp_path):
    """flowfem solve --data engel fits standardised incomes and records the training rows' scaling
    in metrics.json; flowfem readout folds it into the network, so predict on raw incomes gives
    the solve's predictions and test RMSE."""
    out = tmp_path / "engel"
    assert main(["solve", "--data", "engel", "--mesh-size", "8", "--out", str(out), "--no-plot", "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    train, test = data.train_test("engel", seed=0)
    np.testing.assert_allclose(m["input_scaling"]["input_mean"], [train.x.mean()], rtol=1e-14)
    np.testing.assert_allclose(m["input_scaling"]["input_scale"], [train.x.std()], rtol=1e-14)
    pred = np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1)  # x1, y, f: raw test incomes
    np.testing.assert_allclose(pred[:, 0], test.x[:, 0], rtol=1e-14)
    net = tmp_path / "net.npz"
    assert main(["readout", "--density", str(out), "--out", str(net)]) == 0
    loaded = Network.load(net)
    assert loaded.input_scaling.mean.tolist() == m["input_scaling"]["input_mean"]
    np.testing.assert_allclose(loaded.predict(test.x), pred[:, 2], rtol=1e-10)
    assert np.sqrt(np.mean((loaded.predict(test.x) - test.y) ** 2)) == pytest.approx(m["test_rmse"], rel=1e-10)
