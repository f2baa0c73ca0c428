"""``flowfem solve --sharded``: each rank reads and fits its own rows of a data file.

Checked: the fit and its scores equal the unsharded command's on the same training and test files (the
replicated path, every row on every rank) on 1, 2 and 3 ranks; without --test-data, the test rows are the
same rows on any number of ranks (their u_j < 0.2 is drawn per row: :mod:`flowfem.sharded_split`), about
a fifth of them, disjoint from the training rows and together all of them; predictions.csv and figure.png
show a bounded sample; bad combinations fail with one line and exit status 2 before any work, on every rank.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from mpi4py import MPI

from conftest import BIN, run
from flowfem import data, sharded_split

FLOWFEM = os.path.join(BIN, "flowfem")
MESH = ["--mesh-size", "12"]
pytestmark = pytest.mark.mpi  # starts mpirun itself


def solve(tmp_path, out, *args, ranks=1):
    """metrics.json and predictions.csv (a dict of its columns) of a solve."""
    r = run([FLOWFEM, "solve", *MESH, "--quiet", *args, "--out", str(tmp_path / out)], ranks=ranks, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    path = tmp_path / out / "predictions.csv"
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    names = path.read_text().splitlines()[0].split(",")
    return json.loads((tmp_path / out / "metrics.json").read_text()), dict(zip(names, table.T))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded")
    data.save(data.synthetic("sin", 1501, seed=4), d / "train.npy")
    data.save(data.synthetic("sin", 400, seed=5), d / "test.npy")
    x = np.random.default_rng(6).uniform(-1, 1, (700, 1))  # two outputs, to an .h5 file
    data.save(data.Dataset(x, np.column_stack([np.sin(np.pi * x[:, 0]), x[:, 0] ** 2]), "two"), d / "two.h5")
    data.save(data.synthetic("two_moons", 900, seed=7), d / "moons.npz")
    return d


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_equals_replicated_with_a_test_file(tmp_path, files, ranks):
    """Same training and test rows as the replicated command: the same density, energy and scores."""
    # rtol 1e-12: U's difference is bounded by about cond(K) rtol, 1e-8 relative here at the default 1e-10
    args = ["--data", str(files / "train.npy"), "--test-data", str(files / "test.npy"), "--rtol", "1e-12"]
    whole, f_whole = solve(tmp_path, "whole", *args)
    parts, f_parts = solve(tmp_path, "parts", *args, "--sharded", ranks=ranks)
    for key in ("energy", "loss", "train_rmse", "test_rmse"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-7), key
    assert (parts["n_train"], parts["n_test"], parts["predictions_rows"]) == (1501, 400, 400)
    np.testing.assert_array_equal(f_parts["x1"], f_whole["x1"])
    np.testing.assert_allclose(f_parts["f"], f_whole["f"], rtol=0, atol=1e-7)
    u_whole = np.load(tmp_path / "whole" / "density.npz")["u"]
    u_parts = np.load(tmp_path / "parts" / "density.npz")["u"]
    np.testing.assert_allclose(u_parts, u_whole, rtol=0, atol=1e-7 * np.abs(u_whole).max())
    assert (tmp_path / "parts" / "figure.png").stat().st_size > 0


def test_split_does_not_depend_on_the_ranks(tmp_path, files):
    """Without --test-data the test rows are chosen per row: the same rows and fit on 1 and 3 ranks."""
    args = ["--data", str(files / "train.npy"), "--sharded", "--seed", "3"]
    one, f_one = solve(tmp_path, "one", *args)
    three, f_three = solve(tmp_path, "three", *args, ranks=3)
    assert one["n_train"] + one["n_test"] == 1501 and (one["n_train"], one["n_test"]) == (
        three["n_train"], three["n_test"])
    assert 1501 * 0.2 - 4 * np.sqrt(1501 * 0.16) < one["n_test"] < 1501 * 0.2 + 4 * np.sqrt(1501 * 0.16)
    np.testing.assert_array_equal(f_one["x1"], f_three["x1"])  # the same test rows, in file order
    np.testing.assert_allclose(f_three["f"], f_one["f"], rtol=0, atol=1e-7)
    assert three["test_rmse"] == pytest.approx(one["test_rmse"], rel=1e-7)
    # the test rows are rows of the file, none of them a training row: fit on exactly the others
    full = data.load(files / "train.npy")
    held = np.isin(full.x[:, 0], f_one["x1"])
    assert held.sum() == one["n_test"]
    data.save(data.Dataset(full.x[~held], full.y[~held]), tmp_path / "rest.npy")
    data.save(data.Dataset(full.x[held], full.y[held]), tmp_path / "held.npy")
    rest, _ = solve(tmp_path, "rest", "--data", str(tmp_path / "rest.npy"), "--test-data", str(tmp_path / "held.npy"))
    for key in ("energy", "train_rmse", "test_rmse"):
        assert rest[key] == pytest.approx(one[key], rel=1e-7), key


def test_another_seed_holds_out_other_rows(tmp_path, files):
    a, fa = solve(tmp_path, "a", "--data", str(files / "train.npy"), "--sharded", "--seed", "1")
    b, fb = solve(tmp_path, "b", "--data", str(files / "train.npy"), "--sharded", "--seed", "2")
    assert not np.array_equal(fa["x1"], fb["x1"])


def test_two_outputs_from_hdf5_and_logistic_from_npz(tmp_path, files):
    two, _ = solve(tmp_path, "two", "--data", str(files / "two.h5"), "--sharded", ranks=2)
    assert two["outputs"] == 2 and len(two["test_rmse_outputs"]) == 2 and two["test_rmse"] < 0.05
    moons, f = solve(tmp_path, "moons", "--data", str(files / "moons.npz"), "--sharded", "--loss", "logistic",
                     "--mesh-size", "6", ranks=2)
    whole, _ = solve(tmp_path, "moons1", "--data", str(files / "moons.npz"), "--sharded", "--loss", "logistic",
                     "--mesh-size", "6")
    assert moons["test_accuracy"] == whole["test_accuracy"] > 0.9
    assert moons["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-6)


def test_sample_is_bounded_and_strided():
    """sharded_split.sample keeps file rows j with j % ceil(n / limit) == 0, in file order."""
    comm = MPI.COMM_WORLD
    x = np.arange(10.0)[:, None]
    sample = sharded_split.sample(data.Dataset(x, -x[:, 0]), np.arange(10), 10, comm, limit=4)
    np.testing.assert_array_equal(sample.x[:, 0], [0, 3, 6, 9])
    np.testing.assert_array_equal(sample.y, [0, -3, -6, -9])


def test_uniform_is_per_row():
    """u_j of rows 5..70000 drawn at once equals the same rows drawn in two pieces across a chunk edge."""
    whole = sharded_split.uniform(9, 5, 70000)
    pieces = np.concatenate([sharded_split.uniform(9, 5, 65537), sharded_split.uniform(9, 65537, 70000)])
    np.testing.assert_array_equal(whole, pieces)
    assert 0 <= whole.min() and whole.max() < 1 and abs(whole.mean() - 0.5) < 0.01


@pytest.mark.parametrize("seed", [0, 1, 3, 12])
def test_the_split_is_independent_of_data_made_with_the_same_seed(seed):
    """Inputs made by default_rng(seed) (as data.synthetic and many users make them) and split with the same
    --seed: the test rows' inputs are uniform, not the rows with u < 0.2 of that very stream (with the key
    [seed, c], default_rng([seed, 0]) is default_rng(seed): every test input was below -0.6, KS p ~ 1e-130)."""
    n = 5000
    x = np.random.default_rng(seed).uniform(-1, 1, n)
    test = sharded_split.uniform(seed, 0, n) < sharded_split.TEST_FRACTION
    assert scipy.stats.kstest(x[test], "uniform", args=(-1, 2)).pvalue > 1e-3
    assert x[test].min() < -0.9 and x[test].max() > 0.9
    assert 0.15 < test.mean() < 0.25


def test_a_saved_synthetic_set_fitted_sharded_scores_as_unsharded(tmp_path):
    """The newcomer's case: data.synthetic saved to .npy (the refusal of --data sin --sharded says to) and
    solved with --sharded and the default --seed 0. Its test RMSE was 250x the unsharded fit's (2.5e-1 against
    1.0e-3): the test rows were the file's extrapolation x < -0.6."""
    path = tmp_path / "sin.npy"
    data.save(data.synthetic("sin", 3000, seed=0), str(path))
    sharded, _ = solve(tmp_path, "sharded", "--data", str(path), "--sharded")
    whole, _ = solve(tmp_path, "whole", "--data", str(path))
    assert sharded["test_rmse"] < 3 * whole["test_rmse"], (sharded["test_rmse"], whole["test_rmse"])


@pytest.mark.parametrize("extra, says", [
    (["--data", "sin"], "--data sin is a named data set"),
    (["--data", "TRAIN", "--alpha", "auto"], "--alpha auto needs every row"),
    (["--data", "MOONS", "--loss", "softmax"], "--loss softmax needs every row"),
    (["--data", "TRAIN", "--solver", "direct"], "--solver direct needs every row"),
    (["--data", "TRAIN", "--test-data", "TWO"], "have 2 output(s) but the training data"),
    (["--data", "TRAIN", "--test-data", "MOONS"], "test data have d = 2 inputs, training data d = 1"),
    (["--data", "ONE"], "has 1 row(s)"),
    (["--data", "MISSING"], "MISSING"),
])
def test_refused_on_every_rank(tmp_path, files, extra, says):
    data.save(data.Dataset(np.zeros((1, 1)), np.zeros(1)), tmp_path / "one.npy")
    names = dict(TRAIN=files / "train.npy", MOONS=files / "moons.npz", TWO=files / "two.h5",
                 ONE=tmp_path / "one.npy", MISSING=tmp_path / "missing.npy")
    extra = [str(names.get(a, a)) for a in extra]
    r = run([FLOWFEM, "solve", *MESH, "--sharded", *extra, "--out", str(tmp_path / "out")], ranks=2, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("flowfem: error")]
    assert len(lines) == 1 and says.replace("MISSING", "missing.npy") in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_the_refusal_of_a_named_set_advises_a_command_that_works(tmp_path):
    """It advised "save the set to a .npy file", and flowfem convert refuses a named set: the refusal now
    gives the Python line that saves it, which must run as given and make a file --sharded takes."""
    r = run([FLOWFEM, "solve", *MESH, "--sharded", "--data", "sin", "--out", str(tmp_path / "out")])
    assert r.returncode == 2, r.stdout + r.stderr
    code = r.stderr.split('python -c "')[1].rsplit('"', 1)[0]
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    fit, _ = solve(tmp_path, "fit", "--data", str(tmp_path / "sin.npy"), "--sharded")
    assert fit["n_train"] > 0


def test_readout_refit_refuses_a_sharded_density(tmp_path, files):
    solve(tmp_path, "fit", "--data", str(files / "train.npy"), "--sharded")
    r = run([FLOWFEM, "readout", "--density", str(tmp_path / "fit"), "--rule", "refit", "--data", str(files / "train.npy"),
             "--out", str(tmp_path / "net.npz")])
    assert r.returncode == 2 and "sharded over ranks" in r.stderr, r.stderr
    assert not (tmp_path / "net.npz").exists()
    r = run([FLOWFEM, "readout", "--density", str(tmp_path / "fit"), "--out", str(tmp_path / "net.npz")])
    assert r.returncode == 0, r.stderr
