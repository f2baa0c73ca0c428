"""What broke in the day's --n refusal and test-column checks when given awkward options.

* ``--data FILE --test-data sin --n 500``: a synthetic --test-data has max(N, 1000) points, so an --n
  below 1000 sized nothing and was silently ignored, the very case the --n refusal was made for. Now
  refused, with the floor named (an --n of 1000 or more sizes the test sample and is kept).
* ``readout`` kept its own --n, which sized nothing: refit reads the training rows that the density
  records (its solve's --n), and the other rules read no data; ``readout --rule refit --data sin --n 500``
  of a density solved with --n 300 fitted 300 points in silence. Now refused there too.
* ``solve --sharded`` with a --test-data file of other columns than --data named the test data after
  the training file (``'train-test'``), not the file given, and an input-dimension mismatch (sharded or
  not) said ``test data have d = 2 inputs, training data d = 1`` without naming either file or the fix
  (before the day's data.check_test_columns, the sharded message named both files and the fix). Now
  the test data are named after their file and the message names both and says what to give.
* The relu tree's grouped block products sized their groups by the m quadrature points only, while
  S G's P M and S^T R's R x~ are (n, D b): with n data points beyond m (a rank of few points, all the
  data) a group took n / m times BLOCK_BYTES (5.0 against 2.0 times S G's own size in the test below).
  Now sized by max(n, m).
"""

import json
import os

import numpy as np
import pytest

from conftest import BIN, one_error_line, run
from flowfem import cli, data

FLOWFEM = os.path.join(BIN, "flowfem")
FIT = ["--mesh-size", "4", "--quiet", "--no-plot"]


@pytest.mark.parametrize("command", ["solve", "flow"])
def test_n_below_the_synthetic_test_sample_floor_is_refused(tmp_path, capsys, command):
    """--n 500 with a file --data and --test-data sin: the test sample has 1000 points whatever --n
    below 1000 says (max(N, 1000)); refused before any fit, nothing written."""
    x = np.linspace(-1, 1, 30)[:, None]
    data.save(data.Dataset(x, np.sin(np.pi * x[:, 0])), tmp_path / "d.npy")
    out = tmp_path / "out"
    assert len(data.train_test(str(tmp_path / "d.npy"), 500, 0, "sin")[1].x) == 1000  # what it did: max(N, 1000)
    argv = [command, "--data", str(tmp_path / "d.npy"), "--test-data", "sin", *FIT, "--out", str(out)]
    assert cli.main(argv + ["--n", "500"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--n 500 sizes only the synthetic --test-data sin" in line and "1000 or more" in line, line
    assert not out.exists()
    assert cli.main(argv + ["--n", "999"]) == 2 and not out.exists()
    capsys.readouterr()


def test_n_at_the_floor_or_with_synthetic_data_is_kept(tmp_path, capsys):
    """--n 1000 sizes the synthetic test sample (1000 points) and is accepted; with --data sin --n
    sizes the training set whatever --test-data is."""
    x = np.linspace(-1, 1, 30)[:, None]
    data.save(data.Dataset(x, np.sin(np.pi * x[:, 0])), tmp_path / "d.npy")
    assert cli.main(["solve", "--data", str(tmp_path / "d.npy"), "--test-data", "sin", "--n", "1000", *FIT,
                     "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["solve", "--data", "sin", "--test-data", str(tmp_path / "d.npy"), "--n", "20", *FIT,
                     "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    for name, rows in (("a", (30, 1000)), ("b", (20, 30))):
        table = np.loadtxt(tmp_path / name / "predictions.csv", delimiter=",", skiprows=1, ndmin=2)
        assert len(table) == rows[1], name
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["n_train"] == 20


def _files(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (40, 1))
    data.save(data.Dataset(x, np.sin(np.pi * x[:, 0])), tmp_path / "train.npy")
    xt = rng.uniform(-1, 1, (12, 2))
    data.save(data.Dataset(xt[:, :1], np.column_stack([xt[:, 0], xt[:, 1]])), tmp_path / "held2y.npy")
    data.save(data.Dataset(xt, xt[:, 0]), tmp_path / "held2x.npy")


@pytest.mark.parametrize("sharded", [["--sharded"], []])
def test_test_columns_messages_name_the_test_file_and_the_fix(tmp_path, capsys, sharded):
    _files(tmp_path)
    out = tmp_path / "out"
    for held, expect in (("held2y", "the test data 'held2y' have 2 output(s) but the training data 'train' 1"),
                         ("held2x", "test data have d = 2 inputs, training data d = 1: give test data 'held2x' "
                                    "the inputs x1 of the training data 'train'")):
        assert cli.main(["solve", "--data", str(tmp_path / "train.npy"), "--test-data",
                         str(tmp_path / f"{held}.npy"), *sharded, *FIT, "--out", str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert expect in line, line
        assert not out.exists()


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_sharded_test_columns_refused_on_every_rank(tmp_path, ranks):
    """Under mpirun: every rank ends, one line, exit status 2, no --out left."""
    _files(tmp_path)
    r = run([FLOWFEM, "solve", "--data", str(tmp_path / "train.npy"), "--test-data", str(tmp_path / "held2x.npy"),
             "--sharded", *FIT, "--out", str(tmp_path / "out")], ranks=ranks, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "give test data 'held2x'" in one_error_line(r.stderr)
    assert not (tmp_path / "out").exists()


def test_relu_tree_block_products_keep_their_memory_bound_when_data_outnumber_points(monkeypatch):
    """A block product's groups of columns were sized by the m quadrature points only, but S G forms
    P M and S^T R forms R x~, both (n, D b): with n >> m (many ranks, each few points, every data
    point) a group's arrays grew n / m times past BLOCK_BYTES. Peak memory, against the output's own
    n b doubles (which no grouping avoids), and the products against a dense NumPy S."""
    import tracemalloc

    from flowfem.activations import activation
    from flowfem.operator import ReluTreeFeatures
    from flowfem.operator.features import relu_tree
    from flowfem.operator.features.base import evaluate

    rng = np.random.default_rng(7)
    n, m, d, b = 20000, 64, 3, 50
    x, theta = rng.uniform(-1, 1, (n, d)), rng.normal(size=(m, d + 1))
    S = ReluTreeFeatures(activation("leaky_relu:0.1"), x, theta, leaf_size=4)
    monkeypatch.setattr(relu_tree, "BLOCK_BYTES", 2**21)  # groups of 2^21 / (8 D n) = 3 columns here
    G, R = rng.normal(size=(m, b)), rng.normal(size=(n, b))
    rows = 8 * n * b  # bytes of S G, and of R
    # grouped, S G holds its output twice (groups, then stacked) and one group's arrays, S^T R one group's
    # arrays beside its (m, b) output; as one group, P M and R x~ alone took D = 4 times n b doubles
    for product, block, bound in ((S.matmat, G, 3 * rows), (S.rmatmat, R, rows)):
        tracemalloc.start()
        result = product(block)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < bound, (product.__name__, peak / rows)
        del result
    dense = evaluate(activation("leaky_relu:0.1"), x, theta)
    np.testing.assert_allclose(S.matmat(G), dense @ G, rtol=1e-10, atol=1e-10 * np.abs(dense).sum(axis=1).max())
    np.testing.assert_allclose(S.rmatmat(R), dense.T @ R, rtol=1e-10, atol=1e-10 * np.abs(dense).sum(axis=0).max())


def test_readout_n_that_sizes_nothing_is_refused(tmp_path, capsys):
    """refit fits the density's recorded split (here --n 300), whatever readout's --n says; quadrature
    and sample read no data. Refused, nothing written; without --n refit still works."""
    assert cli.main(["solve", "--data", "sin", "--n", "300", *FIT, "--out", str(tmp_path / "s")]) == 0
    density, net = str(tmp_path / "s" / "density.npz"), tmp_path / "net.npz"
    for rule in (["--rule", "refit", "--data", "sin"], ["--rule", "quadrature"], ["--rule", "sample", "--width", "8"]):
        capsys.readouterr()
        assert cli.main(["readout", "--density", density, *rule, "--n", "500", "--out", str(net)]) == 2, rule
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith("flowfem: error: --n 500: ") and line.endswith("drop --n"), line
        assert not net.exists()
    assert cli.main(["readout", "--density", density, "--rule", "refit", "--data", "sin", "--out", str(net)]) == 0
    assert net.exists()
    # the --n the density records is consistent with it: kept (test_cli's round trip passes it)
    assert cli.main(["readout", "--density", density, "--rule", "refit", "--data", "sin", "--n", "300", "--force",
                     "--out", str(net)]) == 0
