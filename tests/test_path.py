"""The regularisation path (flowfem.path, Problem(alpha="auto"), flowfem solve --alpha auto).

* the choice where the best alpha is known: pure-noise targets -> the largest alpha of the grid
  (f = 0 predicts noise best), a noiseless smooth target -> the smallest;
* the choice is the argmin of validation scores recomputed independently by cold-start fits on
  the same split, and the warm-started path's scores and refit equal cold-start solves;
* folds hold out each row once; the logistic path scores the mean loss and reports accuracy;
* the command writes the table and path.png and exits 0, refuses bad values in one line with
  exit status 2, and under mpirun -n 2 chooses the same alpha with the same scores as serially.
"""

import json
import os
import re

import numpy as np
import pytest

from conftest import BIN, MPIRUN, run

from flowfem import data
from flowfem.path import GRID, check_grid, choose, splits
from flowfem.problem import Problem
from flowfem.space import Space

FLOWFEM = os.path.join(BIN, "flowfem")


def _sin(n=400, seed=0):
    return data.synthetic("sin", n, seed=seed)


def test_pure_noise_chooses_the_largest_alpha():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, 400)
    y = rng.standard_normal(400)  # nothing to learn: the flattest fit predicts best
    r = Problem(Space.box(1, 16, 4.0), alpha="auto").fit(x, y, alphas=[1e-1, 1e-3, 1e-5, 1e-7])
    assert r.path.chosen == 0 and r.path.alpha == 1e-1
    assert np.all(np.diff(r.path.scores) > 0), r.path.scores  # each smaller alpha fits more noise
    assert r.functional.alpha == 1e-1


def test_noiseless_target_chooses_the_smallest_alpha():
    train = _sin()
    r = Problem(Space.box(1, 32, 4.0), alpha="auto").fit(train.x, train.y, alphas=[1e-2, 1e-4, 1e-6])
    assert r.path.alpha == 1e-6 and r.path.chosen == 2
    assert np.all(np.diff(r.path.scores) < 0), r.path.scores


def test_choice_is_the_argmin_of_cold_start_validation_scores():
    """Cold fits on the path's own split (recomputed here from the seed) give the same scores, so the
    same argmin; the refit on all rows equals a cold fit at the chosen alpha."""
    train = data.synthetic("step", 300, seed=2)
    space = Space.box(1, 24, 4.0)
    alphas = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    r = Problem(space, alpha="auto").fit(train.x, train.y, alphas=alphas, validation=0.25, seed=7)
    perm = np.random.default_rng(7).permutation(train.n)
    held, rows = np.sort(perm[:75]), np.sort(perm[75:])
    cold = []
    for a in alphas:
        fit = Problem(space, alpha=a).fit(train.x[rows], train.y[rows])
        cold.append(fit.rmse(train.x[held], train.y[held]))
    cold = np.array(cold)
    np.testing.assert_allclose(r.path.scores, cold, rtol=1e-6)
    assert r.path.chosen == int(np.argmin(cold))
    ref = Problem(space, alpha=r.path.alpha).fit(train.x, train.y)
    diff = ref.U.copy()
    diff.axpy(-1.0, r.U)
    assert diff.norm() <= 1e-7 * ref.U.norm()
    assert r.energy == pytest.approx(ref.energy, rel=1e-9)


def test_ties_go_to_the_larger_alpha():
    assert choose([3.0, 1.0, 1.0, 2.0]) == 1
    with pytest.raises(ValueError, match="not finite"):
        choose([1.0, np.nan])


def test_splits_and_folds():
    (train, held), = splits(10, 0.2, None, seed=1)
    assert len(held) == 2 and len(train) == 8 and set(train) | set(held) == set(range(10))
    parts = splits(10, None, 3, seed=1)
    assert sorted(np.concatenate([h for _, h in parts]).tolist()) == list(range(10))  # each row held out once
    assert all(set(t).isdisjoint(h) and len(t) + len(h) == 10 for t, h in parts)
    train = _sin(200)
    r = Problem(Space.box(1, 16, 4.0), alpha="auto").fit(train.x, train.y, alphas=[1e-2, 1e-4], folds=3)
    assert r.path.fold_scores.shape == (3, 2) and r.path.folds == 3 and r.path.validation is None
    np.testing.assert_allclose(r.path.scores, r.path.fold_scores.mean(axis=0))


def test_logistic_path_scores_mean_loss_and_accuracy():
    train = data.synthetic("two_moons", 300, seed=0)
    r = Problem(Space.make("sphere", 2, 2), alpha="auto", loss="logistic").fit(
        train.x, train.y, alphas=[1e-2, 1e-3, 1e-4])
    p = r.path
    assert p.score == "validation mean logistic loss" and p.accuracy is not None
    assert np.all((p.accuracy > 0.5) & (p.accuracy <= 1)) and np.all(p.newton > 0)
    assert p.chosen == int(np.argmin(p.scores))
    assert r.functional.alpha == p.alpha and r.info.converged


@pytest.mark.parametrize("call,message", [
    (lambda: Problem(Space.box(1, 4, 4.0), alpha="autoo"), r"alpha must be a number > 0 .*got 'autoo' \(str\)"),
    (lambda: Problem(Space.box(1, 4, 4.0), alpha=1e-3).fit(*_xy(), validation=0.2), "apply only to alpha='auto'"),
    (lambda: Problem(Space.box(1, 4, 4.0), alpha="auto").fit(*_xy(), validation=1.5), "0 < validation < 1"),
    (lambda: Problem(Space.box(1, 4, 4.0), alpha="auto").fit(*_xy(), validation=0.2, folds=3), "not both"),
    (lambda: Problem(Space.box(1, 4, 4.0), alpha="auto").fit(*_xy(), folds=1), "at least 2 folds"),
    (lambda: Problem(Space.box(1, 4, 4.0), alpha="auto").fit(*_xy(), alphas=[1e-3, -1.0]), "finite number > 0"),
    (lambda: Problem(Space.box(1, 4, 4.0), alpha="auto").fit(*_xy(), alphas=[1e-3, 1e-3]), "repeats"),
    (lambda: Problem(Space.box(1, 4, 4.0), alpha="auto").flow(*_xy()), "needs a numeric alpha"),
])
def test_api_refuses_bad_path_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _xy():
    t = _sin(20)
    return t.x, t.y


def test_grid_is_decreasing_and_covers_the_measured_range():
    assert list(check_grid(GRID)) == list(GRID) and 6 <= len(GRID) <= 10
    assert list(check_grid([1e-4, 1e-2])) == [1e-2, 1e-4]


# -- the command ----------------------------------------------------------------------------------


def _solve(tmp_path, *extra, ranks=1, out="out"):
    return run([FLOWFEM, "solve", "--data", "sin", "--n", "300", "--mesh-size", "16", "--alpha", "auto", *extra,
                "--out", str(tmp_path / out)], ranks=ranks, timeout=600)


@pytest.mark.mpi
def test_cli_auto_writes_table_and_figure(tmp_path):
    r = _solve(tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert "path.png" in os.listdir(out) and (out / "path.png").stat().st_size > 10_000
    m = json.loads((out / "metrics.json").read_text())
    p = m["path"]
    assert [row["alpha"] for row in p["table"]] == list(GRID)
    assert p["validation"] == 0.2 and p["folds"] is None and p["seed"] == 0
    scores = [row["score"] for row in p["table"]]
    assert p["alpha"] == m["alpha"] == GRID[int(np.argmin(scores))]
    assert all(row["iterations"] > 0 and row["rank"] > 0 for row in p["table"])
    assert "chosen alpha" in r.stdout and "path.png" in r.stdout
    manifest = json.loads((out / ".flowfem-output.json").read_text())
    assert "path.png" in manifest["files"]
    rows = re.findall(r"^ +\*? +alpha \de.*$", r.stdout, re.M)
    assert len(rows) == len(GRID) and all(" CG its " in line and "basis rank" in line for line in rows), r.stdout


@pytest.mark.mpi
def test_cli_auto_with_the_direct_solver_prints_no_cg_iterations(tmp_path):
    """The path's table printed "0 CG its ... rank 0" for --solver direct, which runs no CG and no basis."""
    r = _solve(tmp_path, "--solver", "direct", "--no-plot")
    assert r.returncode == 0, r.stderr
    rows = re.findall(r"^ +\*? +alpha \de.*$", r.stdout, re.M)
    assert len(rows) == len(GRID), r.stdout
    assert not any("CG its" in line or "rank" in line for line in rows), r.stdout
    assert "CG its" not in next(line for line in r.stdout.splitlines() if line.startswith("chosen alpha"))


@pytest.mark.mpi
@pytest.mark.parametrize("args,message", [
    (["--alpha", "autoo"], "'autoo' is neither a number nor auto: did you mean 'auto'?"),
    (["--alpha", "auto", "--validation", "1.5"], "must be a fraction with 0 < FRACTION < 1"),
    (["--alpha", "auto", "--validation", "0"], "must be a fraction with 0 < FRACTION < 1"),
    (["--alpha", "auto", "--folds", "1"], "--folds = 1: cross-validation needs at least 2 folds"),
    (["--alpha", "1e-4", "--validation", "0.3"], "--validation applies to --alpha auto only"),
])
def test_cli_refuses_bad_values(tmp_path, args, message):
    before = sorted(os.listdir(tmp_path))
    r = run([FLOWFEM, "solve", "--data", "sin", "--n", "50", "--mesh-size", "4", *args, "--out",
             str(tmp_path / "out")])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("flowfem: error:") and message in lines[0], r.stderr
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.mpi
def test_cli_two_ranks_agree_with_serial(tmp_path):
    assert os.path.exists(MPIRUN)
    # rtol 1e-13: at the default 1e-10 a solve at alpha = 1e-10 (condition number ~ 1/alpha) fixes the score
    # to about 5e-4 only (measured: 1 and 2 ranks differ by 5e-5, each differs from the 1e-13 solve by 5e-4)
    serial = _solve(tmp_path, "--no-plot", "--folds", "2", "--rtol", "1e-13", out="one")
    parallel = _solve(tmp_path, "--no-plot", "--folds", "2", "--rtol", "1e-13", ranks=2, out="two")
    assert serial.returncode == 0 and parallel.returncode == 0, serial.stderr + parallel.stderr
    one, two = (json.loads((tmp_path / o / "metrics.json").read_text()) for o in ("one", "two"))
    assert one["path"]["alpha"] == two["path"]["alpha"] and two["ranks"] == 2
    # measured: 1 and 2 ranks agree to 6e-8 in every score (at alpha = 1e-10), to 1e-11 at 1e-2..1e-5
    np.testing.assert_allclose([row["score"] for row in two["path"]["table"]],
                               [row["score"] for row in one["path"]["table"]], rtol=1e-6)
    assert two["test_rmse"] == pytest.approx(one["test_rmse"], rel=1e-6)


def test_a_warm_start_already_at_rounding_level_is_converged_not_refused():
    """The logistic path on a 2-D box: at alpha 1e-10 the warm start from 1e-9 has ||F(U_0)|| = 1.7e-8, so
    rtol 1e-10 asks for 1.7e-18, below the rounding floor; Newton reached 6.1e-18 and SNES stopped with
    DIVERGED_LOCAL_MIN, which `flowfem solve --alpha auto` reported as a failed fit."""
    train = data.synthetic("two_moons", 300, seed=0)
    r = Problem(Space.box(2, 8, 4.0), alpha="auto", loss="logistic").fit(train.x, train.y,
                                                                          alphas=[1e-8, 1e-9, 1e-10])
    assert r.info.converged and r.path.alpha == 1e-10
    assert np.all(r.path.newton > 0)


def test_squared_warm_solves_reach_the_minimiser_where_the_warm_start_meets_the_cold_stop():
    """At a small alpha the previous alpha's solution already has ||K U - b|| <= rtol ||b||, the stop of a
    cold solve: CG took no step and the path scored the previous alpha's solution again (sin, n = 5000,
    128^2, alpha 1e-11: 1.94e-6 where the minimiser scores 1.53e-6). The warm solves now stop at rtol
    times their start's residual (down to the rounding floor), and score as the minimisers do: cold fits
    on the path's split to rtol 1e-13."""
    train = _sin(2000, seed=4)
    space = Space.box(1, 64, 4.0)
    alphas = [1e-8, 1e-9, 1e-10, 1e-11]
    r = Problem(space, alpha="auto").fit(train.x, train.y, alphas=alphas, validation=0.25, seed=5)
    perm = np.random.default_rng(5).permutation(train.n)
    held, rows = np.sort(perm[:500]), np.sort(perm[500:])
    exact = np.array([Problem(space, alpha=a).fit(train.x[rows], train.y[rows], rtol=1e-13)
                      .rmse(train.x[held], train.y[held]) for a in alphas])
    np.testing.assert_allclose(r.path.scores, exact, rtol=0.02)
    assert np.all(np.diff(r.path.scores) < 0) and np.all(r.path.iterations[1:] > 0), (r.path.scores, exact)


def test_a_multi_output_path_equals_the_single_output_paths(monkeypatch):
    """m outputs share the path's solver, but each output's functional is a copy made at the grid's first
    alpha: the warm solves' stop was computed at alpha 1e-2 for every alpha, asked for up to twice rtol ||b||
    and failed ('relative residual of 2.08e-10, above the requested 1.0e-10') on noisy sin data."""
    from flowfem import path

    d = data.synthetic("sin", 400, seed=0, noise=0.1)
    space = Space.box(1, 32, 4.0)
    seen, norm = [], path._gradient_norm
    monkeypatch.setattr(path, "_gradient_norm", lambda E, X: seen.append(E.alpha) or norm(E, X))
    two = Problem(space, "relu", alpha="auto").fit(d.x, np.column_stack([d.y, 2.0 * d.y]))
    # each output's start residual at the alpha being solved (9 alphas x 2 outputs, then the refit's 2)
    assert seen == [a for a in path.GRID for _ in range(2)] + [two.path.alpha] * 2, seen
    one = Problem(space, "relu", alpha="auto").fit(d.x, d.y)
    assert two.path.chosen == one.path.chosen
    np.testing.assert_allclose(two.path.scores, np.sqrt(2.5) * one.path.scores, rtol=1e-6)
    # 2 y is y scaled: its warm solves stop after the same CG iterations as y's, at the same alpha
    np.testing.assert_array_equal(two.path.iterations, 2 * one.path.iterations)
