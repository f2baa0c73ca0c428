"""What broke in the seventh breaker session (flow checkpoints, readout/predict/export round trips,
compare and landscape, data files, MPI faults), each test failing before its fix.

* ``solve --loss softmax --test-data FILE`` with test labels outside the training classes fitted the
  C densities (minutes of Newton steps) and only then refused the labels, when scoring the test rows.
  The logistic loss refuses its test labels before the fit (Loss.check_labels); now the softmax loss
  does too, in the same place, against the training labels' classes.
* ``flow --resume`` with --t-end or --max-steps already passed by the checkpoint wrote the later
  density as the end of the shorter run (``stopped: t = t_end = 2`` at t = 4).
* ``readout --rule refit --data OTHER`` refitted on whatever --data gave (the density recorded the
  split, not the data); ``readout --rule refit`` of a logistic density refitted it by least squares,
  which the API refuses.
* A data file of one row split into one training row and no test rows: solve and compare failed
  after the fit in words about shapes, flow wrote test_rmse null.
* flow and compare fitted iris2's species numbers by least squares (solve refuses them).
* ``flow --checkpoint-dir`` under a file failed at the first checkpoint with a bare OSError, and
  inside --out made the finished run fail to publish its output.
* ``flow --initial network:NET`` on a real (standardised) set projected the raw-input network as if
  its neurons were for standardised inputs.
* ``compare --density-width 0`` silently meant the lumped projection; ``flow --step-rtol 2`` was
  refused as "rtol = 2.0", and ``--tol -1`` or ``0`` ran every step.
"""

import json
import os

import numpy as np
import pytest

from conftest import BIN, one_error_line, run
from flowfem import cli, data

FLOWFEM = os.path.join(BIN, "flowfem")
FIT = ["--mesh-size", "4", "--quiet", "--no-plot"]


def _three_classes(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (60, 2))
    labels = (x[:, 0] > 0).astype(float) + (x[:, 1] > 0.3)  # classes 0, 1, 2
    data.save(data.Dataset(x, labels), tmp_path / "train.npy")
    return x, labels


def test_softmax_test_labels_outside_the_classes_are_refused_before_the_fit(tmp_path, monkeypatch, capsys):
    """Test labels 0, 1, 7 against training classes 0, 1, 2: label 7 has no density to score it. The fit
    here would fail loudly if it were reached; the refusal names the count, the label and the fix."""
    from flowfem.problem import Problem

    def reached(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(Problem, "fit", reached)
    x, labels = _three_classes(tmp_path)
    test = labels[:20].copy()
    test[[3, 11]] = 7.0
    data.save(data.Dataset(x[:20], test), tmp_path / "test7.npy")
    out = tmp_path / "out"
    assert cli.main(["solve", "--data", str(tmp_path / "train.npy"), "--test-data", str(tmp_path / "test7.npy"),
                     "--loss", "softmax", "--alpha", "1e-3", *FIT, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "2 of the 20 test targets y" in line and "7 (row 3)" in line and "0, 1, 2" in line, line
    assert "started" not in line and not out.exists()


def test_softmax_test_labels_among_the_classes_are_scored(tmp_path, capsys):
    """The check refuses nothing it should take: test labels of two of the three training classes are
    fitted and scored (accuracy and a 3 x 3 confusion matrix)."""
    x, labels = _three_classes(tmp_path)
    keep = labels[:30] != 2
    data.save(data.Dataset(x[:30][keep], labels[:30][keep]), tmp_path / "test01.npy")
    out = tmp_path / "out"
    assert cli.main(["solve", "--data", str(tmp_path / "train.npy"), "--test-data", str(tmp_path / "test01.npy"),
                     "--loss", "softmax", "--alpha", "1e-3", *FIT, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == [0, 1, 2] and metrics["n_test"] == int(keep.sum())
    M = np.array(metrics["test_confusion_matrix"])
    assert M.shape == (3, 3) and M.sum() == keep.sum() and M[2].sum() == 0


# -- flow --resume past the run's end --------------------------------------------------------------
FLOW = ["flow", "--data", "sin", "--n", "200", "--mesh-size", "8", "--quiet", "--no-plot"]


def test_resume_past_the_end_is_refused(tmp_path, capsys):
    """A checkpoint at step 4, t = 4 resumed with --t-end 2 or --max-steps 3: the flow cannot go back,
    and the run wrote the density of t = 4 as the end of a run to t = 2 (``stopped: t = t_end = 2``).
    Refused before any output; a stop at the checkpoint itself (--max-steps 4) still resumes (no step)."""
    assert cli.main(FLOW + ["--max-steps", "4", "--checkpoint-every", "2", "--out", str(tmp_path / "a")]) == 0
    checkpoints = str(tmp_path / "a.checkpoints")
    capsys.readouterr()
    for option, value, said in (("--t-end", "2", "t_end = 2"), ("--max-steps", "3", "max_steps = 3")):
        out = tmp_path / f"resumed{option}"
        assert cli.main(FLOW + [option, value, "--resume", checkpoints, "--out", str(out)]) == 2, option
        line = one_error_line(capsys.readouterr().err)
        assert "at step 4, t = 4, past " + said in line, line
        assert not out.exists()
    assert cli.main(FLOW + ["--max-steps", "4", "--resume", checkpoints, "--out", str(tmp_path / "b")]) == 0
    log = json.loads((tmp_path / "b" / "energy.json").read_text())
    assert log["steps"][-1]["step"] == 4 and log["final_time"] == 4.0 and log["stopped"] == "max_steps = 4 steps"
    capsys.readouterr()


# -- readout --rule refit on other data than the solve's ---------------------------------------------
def test_refit_on_other_data_than_the_solve_is_refused(tmp_path, capsys):
    """readout --rule refit fits output weights on "the solve's own split of --data, as its density
    records it"; the density recorded the split (--n, --seed, --test-data) but not the data, so --data
    step (or an edited file) refitted a density solved on sin on other rows, and wrote that network in
    silence. Now refused, naming the fix, with no network written; the solve's own data still refit."""
    x = np.linspace(-1, 1, 50)[:, None]
    data.save(data.Dataset(x, np.sin(np.pi * x[:, 0])), tmp_path / "d.npy")
    assert cli.main(["solve", "--data", str(tmp_path / "d.npy"), *FIT, "--out", str(tmp_path / "s")]) == 0
    data.save(data.Dataset(x, np.cos(np.pi * x[:, 0])), tmp_path / "edited.npy")  # the same x, other targets
    capsys.readouterr()
    for other in ("edited.npy", "sin"):
        out = tmp_path / "net.npz"
        spec = str(tmp_path / other) if other.endswith(".npy") else other
        assert cli.main(["readout", "--density", str(tmp_path / "s"), "--rule", "refit", "--data", spec,
                         "--out", str(out)]) == 2, other
        line = one_error_line(capsys.readouterr().err)
        assert f"--data {spec}" in line and "not the rows the density" in line, line
        assert not out.exists()
    assert cli.main(["readout", "--density", str(tmp_path / "s"), "--rule", "refit", "--data", str(tmp_path / "d.npy"),
                     "--out", str(tmp_path / "net.npz")]) == 0
    capsys.readouterr()


def test_refit_of_a_logistic_density_is_refused_as_by_the_api(tmp_path, capsys):
    """readout(result, "refit") of a logistic fit is refused (a least-squares refit of a classifier's
    scores to labels -1/+1 is no fit of its loss); flowfem readout read the same density from its file
    as a bare Function, lost the loss, and refitted it by least squares in silence. Now the recorded
    loss goes with it, and the command refuses as the API does."""
    argv = ["solve", "--data", "two_moons", "--n", "100", "--domain", "sphere", "--mesh-size", "1", "--loss",
            "logistic", "--quiet", "--no-plot", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 0
    capsys.readouterr()
    out = tmp_path / "net.npz"
    assert cli.main(["readout", "--density", str(tmp_path / "s"), "--rule", "refit", "--data", "two_moons",
                     "--n", "100", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "refit is a least-squares fit; the problem's loss is logistic" in line, line
    assert not out.exists()
    assert cli.main(["readout", "--density", str(tmp_path / "s"), "--out", str(out)]) == 0  # quadrature: kept
    capsys.readouterr()


# -- data files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["solve", "flow", "compare"])
def test_a_one_row_file_without_test_data_is_refused_before_the_fit(tmp_path, monkeypatch, capsys, command):
    """A data file of one row has no fifth to hold out: the split gave 0 test rows, and solve failed after
    the fit with 'prediction inputs: inputs x have shape (0, 1)', compare with 'the data: inputs x ...',
    and flow wrote test_rmse null in silence. Refused at the split, naming the file and the fix."""
    from flowfem.problem import Problem

    def reached(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(Problem, "fit", reached)
    monkeypatch.setattr(Problem, "functional", reached)
    data.save(data.Dataset(np.array([[0.5]]), np.array([1.0])), tmp_path / "one.csv")
    out = tmp_path / "out"
    assert cli.main([command, "--data", str(tmp_path / "one.csv"), "--mesh-size", "4", "--quiet", "--no-plot",
                     "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "has 1 row" in line and "--test-data" in line and "started" not in line, line
    assert not out.exists()


def test_a_one_row_file_with_test_data_is_fitted(tmp_path, capsys):
    """The refusal is only of the split: one training row with a --test-data file is a fit (P > n)."""
    data.save(data.Dataset(np.array([[0.5]]), np.array([1.0])), tmp_path / "one.csv")
    x = np.linspace(-1, 1, 9)[:, None]
    data.save(data.Dataset(x, np.ones(9)), tmp_path / "test.csv")
    out = tmp_path / "out"
    assert cli.main(["solve", "--data", str(tmp_path / "one.csv"), "--test-data", str(tmp_path / "test.csv"), *FIT,
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 1 and metrics["n_test"] == 9 and np.isfinite(metrics["test_rmse"])
    capsys.readouterr()


# -- a classification set where no command fits classes ------------------------------------------------
@pytest.mark.parametrize("command", ["flow", "compare"])
def test_class_labels_are_refused_by_flow_and_compare_as_by_solve(tmp_path, monkeypatch, capsys, command):
    """solve refuses iris2 (species 0/1/2) as squared-loss targets: the numbers would be of nothing. flow and
    compare, which take no softmax loss, fitted the species numbers by least squares and wrote RMSEs of
    them in silence. Now refused where the three load their data, before any fit, naming what fits classes."""
    from flowfem.problem import Problem

    def reached(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(Problem, "fit", reached)
    monkeypatch.setattr(Problem, "functional", reached)
    out = tmp_path / "out"
    assert cli.main([command, "--data", "iris2", "--mesh-size", "4", "--quiet", "--no-plot", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--data iris2 holds class labels" in line and "flowfem solve --loss softmax" in line, line
    assert not out.exists()


# -- flow --checkpoint-dir that cannot be a directory --------------------------------------------------
@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_a_checkpoint_dir_that_cannot_be_made_is_refused_before_the_flow(tmp_path, monkeypatch, capsys, where):
    """--checkpoint-dir naming a file, or a path under one: the directory is made at the first checkpoint,
    so the run failed there, after its steps, with 'flowfem: error: FileExistsError: [Errno 17] File
    exists' (or NotADirectoryError), naming neither the option nor the fix. Refused before the first
    step, in one line; nothing is written."""
    from flowfem.flow import driver

    def reached(*args, **kwargs):
        raise AssertionError("the flow started")

    monkeypatch.setattr(driver.Flow, "run", reached)
    (tmp_path / "afile").write_text("mine\n")
    directory = tmp_path / "afile" if where == "file" else tmp_path / "afile" / "ck"
    out = tmp_path / "out"
    assert cli.main(FLOW + ["--max-steps", "2", "--checkpoint-every", "1", "--checkpoint-dir", str(directory),
                            "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--checkpoint-dir {str(directory)!r}" in line and "is a file, not a directory" in line, line
    assert not out.exists() and (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.parametrize("inside", ["", "ck"])
def test_checkpoints_inside_the_output_directory_are_refused_before_the_flow(tmp_path, monkeypatch, capsys, inside):
    """--checkpoint-dir OUT (or OUT/ck): the checkpoints made OUT before the run's end, and the run, having
    taken every step, then failed to publish its output ('output directory OUT exists and is not empty;
    pass --force', which --force cannot help: the directory has no flowfem manifest). Refused before the
    first step; the default OUT.checkpoints stays beside OUT."""
    from flowfem.flow import driver

    def reached(*args, **kwargs):
        raise AssertionError("the flow started")

    monkeypatch.setattr(driver.Flow, "run", reached)
    out = tmp_path / "out"
    directory = out / inside if inside else out
    assert cli.main(FLOW + ["--max-steps", "2", "--checkpoint-every", "1", "--checkpoint-dir", str(directory),
                            "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "inside the output directory" in line and "started" not in line, line
    assert not out.exists()


# -- flow --initial network:PATH on standardised real data ---------------------------------------------
def test_an_initial_network_is_projected_in_the_flows_standardised_units(tmp_path, capsys):
    """A flowfem network takes raw inputs (readout folds the input scaling into W, b); a flow on a real set
    holds neurons (w, b) for the standardised z = (x - m) / s. --initial network:NET projected the raw
    (W, b) as if they were for z: for diabetes1 (BMI, m = 26, s = 4.4) 320 of 384 neurons fell outside
    the box and the run was refused (for a set of m, s near 0, 1: a wrong start in silence). Projected as
    (W s, b + W m), the network read out of the solve starts the flow at the solve's own energy."""
    fit = ["--data", "diabetes1", "--activation", "tanh", "--mesh-size", "8", "--quiet", "--no-plot"]
    assert cli.main(["solve", *fit, "--out", str(tmp_path / "s")]) == 0
    assert cli.main(["readout", "--density", str(tmp_path / "s"), "--out", str(tmp_path / "net.npz")]) == 0
    assert cli.main(["flow", *fit, "--max-steps", "1", "--initial", f"network:{tmp_path / 'net.npz'}",
                     "--out", str(tmp_path / "f")]) == 0, capsys.readouterr().err
    capsys.readouterr()
    solved = json.loads((tmp_path / "s" / "metrics.json").read_text())["energy"]
    start = json.loads((tmp_path / "f" / "energy.json").read_text())["steps"][0]["energy"]
    assert start == pytest.approx(solved, rel=1e-6), (start, solved)  # the quadrature readout projects back exactly


# -- compare --density-width 0 -----------------------------------------------------------------------------
def test_compare_density_width_zero_is_refused_like_the_other_widths(tmp_path, monkeypatch, capsys):
    """--density-width 0 is no kernel width: --mmd-bandwidth 0 and the API's density_width=0 are refused,
    but the command took 0 as 'not given', projected the particles by the lumped rule instead, and
    recorded density_width 0.0 beside density_method lumped. Refused before any fit."""
    from flowfem.problem import Problem

    def reached(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(Problem, "fit", reached)
    out = tmp_path / "out"
    assert cli.main(["compare", "--data", "sin", "--n", "100", "--mesh-size", "4", "--widths", "4", "--seeds", "0",
                     "--steps", "5", "--quiet", "--no-plot", "--density-width", "0", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--density-width must be a finite number > 0, got 0.0" in line, line
    assert not out.exists()


# -- flow tolerances --------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,value,said", [
    ("--step-rtol", "2", "argument --step-rtol: 2 must be a number with 0 < --step-rtol < 1"),
    ("--rtol", "1.5", "argument --rtol: 1.5 must be a number with 0 < --rtol < 1"),
    ("--tol", "-1", "--tol must be a number with 0 < --tol < 1 (the relative distance ||u - u*|| / ||u*|| to "
                    "stop at), e.g. 1e-6, got -1.0"),
    ("--tol", "0", "--tol must be a number with 0 < --tol < 1 (the relative distance"),
])
def test_flow_tolerances_are_refused_by_name_before_the_flow(tmp_path, monkeypatch, capsys, option, value, said):
    """--step-rtol 2 was refused as 'rtol = 2.0: ...', naming an option the user did not give (flow's --rtol
    and --step-rtol took any float, and the API's check named both rtol), and --tol -1 or 0, a distance
    ||u - u*|| / ||u*|| that no step reaches, ran every --max-steps step. Both refused in one line, by
    name, before the first step."""
    from flowfem.flow import driver

    steps, stop = [], driver.Flow._stop
    monkeypatch.setattr(driver.Flow, "_stop", lambda *a, **k: steps.append(1) or stop(*a, **k))  # before each step
    out = tmp_path / "out"
    try:
        code = cli.main(FLOW + ["--max-steps", "2", option, value, "--out", str(out)])
    except SystemExit as e:  # argparse's refusal of an option's value
        code = e.code
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert said in line, line
    assert not steps and not out.exists()


@pytest.mark.mpi
def test_flow_refusals_end_every_rank(tmp_path, capsys):
    """Under mpirun -n 2 the new refusals (a resume past the run's end, a --checkpoint-dir under a file,
    checkpoints inside --out) end every rank: exit status 2, one line, no --out, no hang."""
    assert cli.main(FLOW + ["--max-steps", "2", "--checkpoint-every", "2", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    (tmp_path / "afile").write_text("mine\n")
    out = tmp_path / "out"
    for extra, said in ((["--max-steps", "1", "--resume", str(tmp_path / "a.checkpoints")], "past max_steps = 1"),
                        (["--checkpoint-dir", str(tmp_path / "afile" / "ck")], "is a file, not a directory"),
                        (["--checkpoint-dir", str(out / "ck")], "inside the output directory")):
        r = run([FLOWFEM, *FLOW, *extra, "--out", str(out)], ranks=2, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert said in one_error_line(r.stderr), r.stderr
        assert not out.exists()
