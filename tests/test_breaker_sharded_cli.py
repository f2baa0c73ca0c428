"""What broke when ``flowfem solve --sharded`` met small files, bad labels and bad seeds on 1 to 4 ranks.

* A file of fewer rows than ranks (or a split leaving a rank without training or test rows): the scores
  of a rank without rows failed in NumPy (``cannot reshape array of size 0 into shape (0,newaxis)``),
  one rank alone, so MPI_Abort ended the run with several lines. Now it runs and gives the 1-rank numbers.
* Test labels other than -1/+1 with the logistic loss (a --test-data file, or a test row of the split
  --data) were scored silently: accuracy and mean loss of nothing. Now refused, as the training labels are.
* A negative --seed was refused by NumPy's ``expected non-negative integer``, naming neither the option
  nor the fix.
* On s3 a rank without rows left the others waiting for ever in a reduction it skipped (a hang); an
  error named rank 0's share of y's shape, (100, 2) of (300, 2) on 3 ranks; an unconverged CG advised
  --solver direct, which --sharded refuses.
"""

import json
import os

import numpy as np
import pytest

from conftest import BIN, MPIRUN, run
from flowfem import data, sharded_split

FLOWFEM = os.path.join(BIN, "flowfem")
MESH = ["--mesh-size", "8", "--quiet"]
pytestmark = pytest.mark.mpi  # starts mpirun itself


def solve(tmp_path, out, *args, ranks=1):
    """metrics.json and the predictions.csv table of a solve that must succeed."""
    r = run([FLOWFEM, "solve", *MESH, *args, "--out", str(tmp_path / out)], ranks=ranks, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = np.loadtxt(tmp_path / out / "predictions.csv", delimiter=",", skiprows=1, ndmin=2)
    return json.loads((tmp_path / out / "metrics.json").read_text()), table


def refused(tmp_path, *args, ranks):
    """The one error line of a solve that must fail with status 2 and leave no --out behind."""
    r = run([FLOWFEM, "solve", *MESH, *args, "--out", str(tmp_path / "out")], ranks=ranks, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("flowfem: error: "), r.stdout + r.stderr
    assert not (tmp_path / "out").exists()
    return lines[0]


def sine(n, seed, outputs=1):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 1))
    y = np.column_stack([np.sin(np.pi * x[:, 0]), x[:, 0] ** 2][:outputs])
    return data.Dataset(x, y[:, 0] if outputs == 1 else y)


def labels(n, seed):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 1))
    return data.Dataset(x, np.where(x[:, 0] > 0, 1.0, -1.0))


@pytest.mark.parametrize("n, outputs, ranks", [(2, 1, 3), (3, 2, 4)])
def test_fewer_rows_than_ranks(tmp_path, n, outputs, ranks):
    """Ranks without rows (and, n = 2, with one training and one test row in all) score nothing and
    agree with one rank: n_train + n_test = n, the same scores and predictions."""
    data.save(sine(n, 1, outputs), tmp_path / "few.npy")
    args = ["--data", str(tmp_path / "few.npy"), "--sharded", "--rtol", "1e-14"]
    one, f_one = solve(tmp_path, "one", *args)
    many, f_many = solve(tmp_path, "many", *args, ranks=ranks)
    assert one["n_train"] + one["n_test"] == n and (many["n_train"], many["n_test"]) == (one["n_train"], one["n_test"])
    assert many["predictions_rows"] == one["n_test"] == len(f_many)
    for key in ("energy", "train_rmse", "test_rmse"):
        assert many[key] == pytest.approx(one[key], rel=1e-7), key
    np.testing.assert_allclose(f_many, f_one, rtol=1e-7, atol=1e-12)
    # the scores are those of predictions.csv (columns x1, y.., f..)
    residual = f_one[:, 1 + outputs:] - f_one[:, 1:1 + outputs]
    assert one["test_rmse"] == pytest.approx(np.sqrt(np.mean(residual ** 2)), rel=1e-12)


def test_test_labels_other_than_plus_minus_one_are_refused(tmp_path):
    data.save(labels(200, 2), tmp_path / "train.npy")
    test = labels(50, 3)
    data.save(data.Dataset(test.x, (test.y + 1) / 2), tmp_path / "test01.npy")  # labels 0/1
    args = ["--data", str(tmp_path / "train.npy"), "--test-data", str(tmp_path / "test01.npy"), "--loss", "logistic"]
    for ranks, sharded in ((2, ["--sharded"]), (1, [])):  # the unsharded command scored them silently too
        line = refused(tmp_path, *args, *sharded, ranks=ranks)
        assert "of the 50 test targets y are neither -1 nor +1" in line and "relabel" in line, line


def test_a_bad_label_among_the_split_test_rows_is_refused(tmp_path):
    """A label of 0.5 in row j of --data, j a test row of the split (u_j < 0.2): the training labels
    are all -1/+1, so only the scoring of the test rows can see it."""
    whole = labels(120, 4)
    j = 100  # on the last of 3 ranks
    seed = next(s for s in range(100) if sharded_split.uniform(s, j, j + 1)[0] < sharded_split.TEST_FRACTION)
    y = whole.y.copy()
    y[j] = 0.5
    data.save(data.Dataset(whole.x, y), tmp_path / "bad.npy")
    line = refused(tmp_path, "--data", str(tmp_path / "bad.npy"), "--sharded", "--seed", str(seed),
                   "--loss", "logistic", ranks=3)
    assert "1 of the" in line and "test targets y are neither -1 nor +1" in line, line


def test_negative_seed_names_the_option(tmp_path):
    data.save(sine(2, 5), tmp_path / "two.npy")  # on 3 ranks one holds no row, and still refuses it
    line = refused(tmp_path, "--data", str(tmp_path / "two.npy"), "--sharded", "--seed", "-1", ranks=3)
    assert line == "flowfem: error: --seed must be an integer >= 0, got -1", line


def test_help_names_every_data_format():
    r = run([FLOWFEM, "solve", "--help"], timeout=60)
    text = " ".join(r.stdout.split())
    data_help = text[text.index("--data DATA a CSV"):text.index("--test-data TEST_DATA held-out")]
    assert all(f in data_help for f in ("CSV", "NPZ", ".npy", ".h5")), data_help


def test_outputs_with_logistic_name_the_whole_shape(tmp_path):
    data.save(sine(300, 6, outputs=2), tmp_path / "two.npy")
    line = refused(tmp_path, "--data", str(tmp_path / "two.npy"), "--test-data", str(tmp_path / "two.npy"),
                   "--sharded", "--loss", "logistic", ranks=3)
    assert "(300, 2)" in line, line


def test_unconverged_cg_does_not_advise_the_refused_direct_solver(tmp_path):
    data.save(sine(300, 7), tmp_path / "train.npy")
    line = refused(tmp_path, "--data", str(tmp_path / "train.npy"), "--sharded", "--petsc-option", "ksp_max_it=1",
                   ranks=2)
    assert "CG did not converge" in line and "--solver direct" not in line and "--allow-unconverged" in line, line


def test_s3_with_a_rank_without_rows_does_not_hang(tmp_path):
    """On s3 each rank checks its rows against the chart radius, a reduction over the mesh that a rank
    without rows skipped: the others waited in it for ever. Two rows on two ranks: one training row."""
    x = np.random.default_rng(8).normal(size=(2, 3))
    data.save(data.Dataset(x, x[:, 0]), tmp_path / "two.npy")
    args = ["--data", str(tmp_path / "two.npy"), "--sharded", "--domain", "s3", "--mesh-size", "0.4", "--quiet",
            "--rtol", "1e-13"]
    one, _ = solve(tmp_path, "one", *args)
    # coreutils' timeout stops mpirun with SIGTERM, which ends its ranks (a killed mpirun could leave them spinning)
    r = run(["timeout", "45", MPIRUN, "-n", "2", FLOWFEM, "solve", *args, "--out", str(tmp_path / "two")], timeout=90)
    assert r.returncode == 0, f"status {r.returncode} (124: hung)\n" + r.stderr[-1000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (two["n_train"], two["n_test"]) == (one["n_train"], one["n_test"]) == (1, 1)
    assert two["test_rmse"] == pytest.approx(one["test_rmse"], rel=1e-7)
