"""A writer of one format refuses a file name that ends in another suffix (flowfem.files.check_writable's
``suffix``, :func:`flowfem.files.named_for`): ``readout --out net.csv`` wrote a zip archive under a CSV name and
``predict --out p.npz`` CSV text under an NPZ name, both with status 0, where ``export`` already refused.
The refusal is one line naming the path to give; nothing is written. Serial."""

import os

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from flowfem import data
from flowfem.files import named_for
from flowfem.network import Network

from conftest import refused_by_cli


@pytest.mark.parametrize("path, suffix, fix", [
    ("net.npz", ".npz", None), ("NET.NPZ", ".npz", None), ("dir.v2/net", ".npz", "dir.v2/net.npz"),
    ("net.csv", ".npz", "net.npz"), ("net.npz.csv", ".npz", "net.npz"), ("a b/p.npz", ".csv", "a b/p.csv"),
    (".npz", ".npz", None), ("out.", ".json", "out.json"),
])
def test_named_for_gives_a_name_that_passes(path, suffix, fix):
    assert named_for(path, suffix) == fix
    assert named_for(fix or path, suffix) is None


@pytest.fixture
def network(tmp_path):
    path = tmp_path / "net.npz"
    Network(np.array([[1.0], [-0.5]]), np.array([0.0, 0.3]), np.array([1.0, 2.0]), "relu").save(path)
    return path


@pytest.mark.parametrize("name, command, fix", [
    ("p.npz", "predict", "p.csv"), ("p.json", "predict", "p.csv"), ("p", "predict", "p.csv"),
    ("net.csv", "readout", "net.npz"), ("net.onnx", "readout", "net.npz"),
])
def test_a_command_refuses_a_name_of_another_format(tmp_path, network, capsys, name, command, fix):
    out = tmp_path / name
    if command == "predict":
        argv = ["predict", "--network", str(network), "--data", "sin", "--n", "20", "--out", str(out)]
    else:
        argv = ["readout", "--density", str(tmp_path / "fit"), "--out", str(out)]
    line = refused_by_cli(argv, capsys)
    assert f"give {str(tmp_path / fix)!r}" in line and not out.exists(), line


def test_landscape_json_must_end_in_json(tmp_path, network, capsys):
    out = tmp_path / "report.txt"
    line = refused_by_cli(["landscape", "--network", str(network), "--data", "sin", "--n", "20",
                           "--json", str(out)], capsys)
    assert f"give {str(tmp_path / 'report.json')!r}" in line and not out.exists(), line


def test_the_api_writers_refuse_too(tmp_path):
    net = Network(np.array([[1.0]]), np.array([0.0]), np.array([1.0]), "relu")
    with pytest.raises(ValueError, match="give '.*net.npz'"):
        net.save(tmp_path / "net.csv")
    with pytest.raises(ValueError, match="give '.*p.csv'"):
        data.save_predictions(str(tmp_path / "p.npz"), np.zeros((2, 1)), np.zeros(2))
    assert os.listdir(tmp_path) == []
    net.save(tmp_path / "NET.NPZ")  # the suffix's case is the user's
    data.save_predictions(tmp_path / "p.CSV", np.zeros((2, 1)), np.zeros(2))
    assert sorted(os.listdir(tmp_path)) == [".NET.NPZ.flowfem", ".p.CSV.flowfem", "NET.NPZ", "p.CSV"]
