"""flowfem.compare and `flowfem compare`: the FE solve, FE readouts and particle solvers side by side.

The in-process tests are rank-agnostic (collective calls on every rank, files in a shared
directory); the command-line tests start processes themselves (``mpi`` marker).
"""

import json
import os
import sys

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from conftest import BIN, run
from flowfem import compare, data
from flowfem.outputs import MANIFEST
from flowfem.space import Space

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

FLOWFEM = os.path.join(BIN, "flowfem")
TINY = dict(widths=(8, 16), seeds=(0, 1), steps=40, mesh_size=8, alpha=1e-4,
            readouts=("quadrature", "sample", "refit"))


@pytest.fixture(scope="module")
def tiny():
    train, test = data.synthetic("sin", 150, seed=0), data.synthetic("sin", 200, seed=1)
    return compare.compare(train, test, **TINY)


def test_table_numbers_match_the_result_objects(tiny, shared_tmp):
    """Every number written (runs.csv, table.csv, results.json) is the one held by the result objects."""
    c = tiny
    out = os.path.join(shared_tmp, "cmp")
    c.write(out, force=True)
    written = compare.read_csv(os.path.join(out, "runs.csv"))
    assert len(written) == len(c.runs) == 1 + 2 * (1 + 2 + 2) + 2 * 2 * 2  # solve, readouts, particles
    train, test = c.train, c.test
    for row, run_ in zip(written, c.runs):
        for key in ("test_rmse", "train_loss", "objective", "seconds"):
            assert row[key] == getattr(run_, key)  # repr round trip: exact
        assert row["solver"] == run_.solver and row["ranks"] == MPI.COMM_WORLD.size
        assert row["how"] and str(MPI.COMM_WORLD.size) + " rank(s)" in row["how"]
    # ... and those are the result objects' own numbers
    fe = c.runs[0]
    assert fe.solver == "FE solve"
    assert fe.test_rmse == pytest.approx(c.result.rmse(test.x, test.y), rel=1e-12)
    assert fe.objective == pytest.approx(c.result.energy, rel=1e-12)
    # the solver it names is the one that ran (it said "CG+GAMG" while the default nystrom preconditioner ran)
    assert fe.how.startswith(f"one cg (nystrom preconditioner, basis of {c.result.info.rank}) solve (")
    assert c.result.info.preconditioner == "nystrom" and c.result.info.rank > 0
    assert fe.train_loss == pytest.approx(c.result.parts[0], rel=1e-12)
    for r in c.runs:
        if r.solver == "particles":
            p = c.particles[(r.method, r.width, r.seed)]
            assert r.test_rmse == p.history["test_error"][-1]
            assert r.objective == p.objective and r.train_loss == p.history["loss"][-1]
            assert r.steps == TINY["steps"] and r.lr == compare.DEFAULT_LR[r.method]
            f = p.network(test.x)
            assert r.test_rmse == pytest.approx(np.sqrt(np.mean((f - test.y) ** 2)), rel=1e-12)
        elif r.solver == "FE readout":
            key = next(k for k in c.networks if k[0] == r.method and k[2] == r.seed
                       and c.networks[k].width == r.width)
            net = c.networks[key]
            assert r.test_rmse == pytest.approx(np.sqrt(np.mean((net(test.x) - test.y) ** 2)), rel=1e-12)
            assert r.train_loss == pytest.approx(np.mean((net(train.x) - train.y) ** 2) / 2, rel=1e-12)
            assert r.objective >= r.train_loss
    # the aggregated table is the mean / spread over seeds of those rows
    table = compare.read_csv(os.path.join(out, "table.csv"))
    assert len(table) == len(c.table()) == 1 + 2 + 2 + 2 + 2 * 2
    for row in table:
        runs = [r for r in c.runs if r.solver == row["solver"] and r.method == row["method"]
                and (r.width or None) == (None if row["width"] is None else int(row["width"]))]
        e = [r.test_rmse for r in runs]
        assert row["test_rmse_mean"] == pytest.approx(np.mean(e), rel=1e-14)
        assert row["test_rmse_std"] == pytest.approx(np.std(e), rel=1e-12, abs=1e-300)
        assert (row["test_rmse_min"], row["test_rmse_max"]) == (min(e), max(e))
        assert row["objective_mean"] == pytest.approx(np.mean([r.objective for r in runs]), rel=1e-14)
    js = json.load(open(os.path.join(out, "results.json")))
    assert [r["test_rmse"] for r in js["runs"]] == [r.test_rmse for r in c.runs]
    assert js["settings"]["ranks"] == MPI.COMM_WORLD.size and js["settings"]["widths"] == [8, 16]
    md = open(os.path.join(out, "table.md")).read()
    assert md.count("\n| particles | gd |") == 2 and "E_alpha(u*)" in md
    assert f"{fe.test_rmse:.3g}" in md


def test_densities_and_distances(tiny):
    """Each particle solver's density at the largest width: projected, mass-consistent, compared."""
    c = tiny
    assert sorted(c.densities) == [("adam", 16, 0), ("gd", 16, 0)]
    for key, d in c.distances.items():
        assert d["projection_error"] <= d["projection_bound"]
        assert d["l2"] > 0 and d["mmd"] > 0 and d["dropped"] == 0
        assert d["l2_relative"] == pytest.approx(d["l2"] / compare.l2_norm(c.density))
    for (m, N, s), pd in c.densities.items():
        assert pd.function.function_space.mesh is c.result.problem.space.mesh
        assert pd.mass == pytest.approx(pd.c.sum())


def test_mmd_and_l2_distance():
    """MMD of point masses against the closed form; zero between a measure and itself; the
    L2 distance of a density to itself is zero and to zero is its norm."""
    k = np.exp(-0.5 * (0.3 / 0.2) ** 2)
    a = (np.array([[0.0, 0.0]]), np.array([2.0]))
    b = (np.array([[0.3, 0.0]]), np.array([0.5]))
    assert compare.mmd(a, b, 0.2) == pytest.approx(np.sqrt(4 + 0.25 - 2 * 2 * 0.5 * k), rel=1e-12)
    assert compare.mmd(a, b, 0.2) == pytest.approx(compare.mmd(b, a, 0.2), rel=1e-12)
    assert compare.mmd(a, a, 0.2) == 0.0
    assert compare.mmd(a, b, 0.2, MPI.COMM_WORLD) == pytest.approx(compare.mmd(a, b, 0.2), rel=1e-12)
    with pytest.raises(ValueError, match="bandwidth"):
        compare.mmd(a, b, 0.0)
    import dolfinx.fem
    from flowfem.sobolev import WeightedH1

    H = WeightedH1(Space.box(1, 4, 1.0))
    u = dolfinx.fem.Function(H.V)
    u.interpolate(lambda t: 1.0 + t[0])
    assert compare.l2_distance(u, u) == 0.0
    assert compare.l2_norm(u) == pytest.approx(np.sqrt(4 * (1 + 1 / 3)), rel=1e-12)  # int (1 + w)^2 on [-1,1]^2
    pts, mass = compare.density_measure(u)
    assert mass.sum() == pytest.approx(4.0, rel=1e-12)  # midpoint rule: integral of 1 + w


@pytest.mark.parametrize("kwargs,match", [
    (dict(widths=()), "widths"),
    (dict(widths=(0,)), "widths"),
    (dict(methods=("sgd",)), "unknown"),
    (dict(readouts=("midpoint",)), "unknown"),
    (dict(lr={"gd": -1.0}), "lr_gd must be a finite number > 0"),
    (dict(density_method="gauss"), "density method"),
])
def test_bad_arguments_are_refused(kwargs, match):
    train = data.synthetic("sin", 20, seed=0)
    with pytest.raises(ValueError, match=match):
        compare.compare(train, train, **(dict(TINY) | kwargs))


# -- m outputs ----------------------------------------------------------------------------------


def two_outputs(n, seed):
    """Inputs x1 and two targets of different shape (smooth, kinked): y (n, 2)."""
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 1))
    return data.Dataset(x, np.column_stack([np.sin(np.pi * x[:, 0]), np.abs(x[:, 0]) - 0.5]), "two")


@pytest.fixture(scope="module")
def two():
    return compare.compare(two_outputs(150, 0), two_outputs(200, 1), **TINY)


def test_two_outputs_every_row_fits_both(two):
    """Every family fits both outputs: the rows' total and per-output test RMSE and the train loss
    (summed over the outputs) recomputed from the networks and the FE Result."""
    c, train, test = two, two.train, two.test
    assert c.outputs == 2 and c.settings["outputs"] == 2 and c.result.outputs == 2
    assert len(c.runs) == 1 + 2 * (1 + 2 + 2) + 2 * 2 * 2
    fe = c.runs[0]
    assert fe.test_rmse == pytest.approx(c.result.rmse(test.x, test.y), rel=1e-12)
    np.testing.assert_allclose(fe.test_rmse_outputs, c.result.rmse_outputs(test.x, test.y), rtol=1e-12)
    assert fe.train_loss == pytest.approx(c.result.parts[0], rel=1e-12)
    assert fe.objective == pytest.approx(c.result.energy, rel=1e-12)

    def check(r, net):
        F, Ft = net(train.x), net(test.x)
        assert net.outputs == 2 and Ft.shape == test.y.shape
        np.testing.assert_allclose(r.test_rmse_outputs, np.sqrt(np.mean((Ft - test.y) ** 2, axis=0)), rtol=1e-10)
        assert r.test_rmse == pytest.approx(np.sqrt(np.mean((Ft - test.y) ** 2)), rel=1e-10)
        assert r.train_loss == pytest.approx(np.sum((F - train.y) ** 2) / (2 * len(train.y)), rel=1e-10)

    for r in c.runs[1:]:
        assert r.test_rmse == pytest.approx(np.sqrt(np.mean(np.square(r.test_rmse_outputs))), rel=1e-12)
        if r.solver == "particles":
            p = c.particles[(r.method, r.width, r.seed)]
            assert p.particles.shape == (r.width, 1 + 1 + 2) and p.status == "completed"
            assert r.test_rmse == p.history["test_error"][-1] and r.train_loss == p.history["loss"][-1]
            check(r, p.network)
        else:
            net = next(n for k, n in c.networks.items() if k[0] == r.method and k[2] == r.seed and n.width == r.width)
            check(r, net)
            assert r.objective >= r.train_loss


def test_two_outputs_densities_are_compared_output_by_output(two):
    c = two
    assert sorted(c.output_densities) == sorted(c.densities) == [("adam", 16, 0), ("gd", 16, 0)]
    assert sorted(c.distances) == [f"{m} N=16 seed=0 y{k}" for m in ("adam", "gd") for k in (1, 2)]
    assert c.density is c.result.densities[0]
    for (m, N, s), pds in c.output_densities.items():
        assert len(pds) == 2 and c.densities[(m, N, s)] is pds[0]
        a = c.particles[(m, N, s)].network.a
        for k, pd in enumerate(pds):
            np.testing.assert_array_equal(pd.c0, a[:, k])  # output k's measure sum_i (a_ik / N) delta_(theta_i)
            d = c.distances[f"{m} N={N} seed={s} y{k + 1}"]
            assert d["l2"] == pytest.approx(compare.l2_distance(c.result.densities[k], pd.function), rel=1e-12)
            assert d["l2_relative"] == pytest.approx(d["l2"] / compare.l2_norm(c.result.densities[k]), rel=1e-12)
            assert d["projection_error"] <= d["projection_bound"] and d["dropped"] == 0


def test_two_outputs_files(two, shared_tmp):
    """Per-output columns in runs.csv and table.csv, a per-output column in table.md, every
    output's density in densities.xdmf; the figures drawn."""
    c = two
    out = os.path.join(shared_tmp, "cmp2")
    c.write(out, force=True)
    assert sorted(os.listdir(out)) == sorted(compare.FILES + compare.FIGURES + (MANIFEST,))
    runs = compare.read_csv(os.path.join(out, "runs.csv"))
    assert list(runs[0])[-2:] == ["test_rmse_y1", "test_rmse_y2"]
    for row, r in zip(runs, c.runs):
        assert [row["test_rmse_y1"], row["test_rmse_y2"]] == r.test_rmse_outputs and row["test_rmse"] == r.test_rmse
    table = compare.read_csv(os.path.join(out, "table.csv"))
    for row in table:
        rs = [r for r in c.runs if r.solver == row["solver"] and r.method == row["method"]
              and (r.width or None) == (None if row["width"] is None else int(row["width"]))]
        for k in range(2):
            assert row[f"test_rmse_y{k + 1}_mean"] == pytest.approx(np.mean([r.test_rmse_outputs[k] for r in rs]),
                                                                    rel=1e-14)
    js = json.load(open(os.path.join(out, "results.json")))
    assert js["settings"]["outputs"] == 2 and [r["test_rmse_outputs"] for r in js["runs"]] == \
        [r.test_rmse_outputs for r in c.runs]
    md = open(os.path.join(out, "table.md")).read()
    assert "test RMSE y1..y2 (means)" in md and "gd N=16 seed=0 y2" in md and "2 outputs y1..y2" in md
    xdmf = open(os.path.join(out, "densities.xdmf")).read()
    for name in ("fe_density_y1", "fe_density_y2", "particles_gd_N16_seed0_y1", "particles_adam_N16_seed0_y2"):
        assert f'Name="{name}"' in xdmf, name


def test_test_data_of_another_number_of_outputs_is_refused():
    with pytest.raises(ValueError, match=r"test data 'sin' have 1 output\(s\) but the training data 'two' 2"):
        compare.compare(two_outputs(20, 0), data.synthetic("sin", 20, seed=1), **TINY)


# -- the command ------------------------------------------------------------------------------

ARGS = ["--data", "sin", "--n", "150", "--widths", "8,16", "--seeds", "0,1", "--steps", "40",
        "--mesh-size", "8", "--alpha", "1e-4", "--quiet"]


@pytest.mark.mpi
def test_command_writes_every_promised_file_serial_and_two_ranks(tmp_path):
    """`flowfem compare` on 1 and 2 ranks: every promised file, and the same numbers (particles
    to rounding, FE to the solver tolerance)."""
    rows = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        r = run([FLOWFEM, "compare", *ARGS, "--out", str(out)], ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(os.listdir(out)) == sorted(compare.FILES + compare.FIGURES + (MANIFEST,))
        assert all((out / f).stat().st_size > 0 for f in compare.FILES + compare.FIGURES)
        assert "| FE solve |" in r.stdout and "wrote" in r.stdout
        runs = compare.read_csv(out / "runs.csv")
        assert {row["ranks"] for row in runs} == {ranks}
        curves = compare.read_csv(out / "curves.csv")
        assert len(curves) > 0
        for row in curves:  # numbers, not 'np.float64(0.011...)' (the repr of NumPy 2's scalars)
            assert all(isinstance(row[k], float) for k in ("width", "seed", "step", "time", "objective", "loss",
                                                           "test_rmse")), row
        for row in runs:
            assert all(isinstance(v, float) or v is None or k in ("solver", "method", "objective_name", "status",
                                                                   "how") for k, v in row.items()), row
        rows.append(runs)
    for one, two in zip(*rows):
        assert (one["solver"], one["method"], one["width"], one["seed"]) == \
               (two["solver"], two["method"], two["width"], two["seed"])
        tol = 1e-10 if one["solver"] == "particles" else 1e-5
        assert two["test_rmse"] == pytest.approx(one["test_rmse"], rel=tol)
        assert two["objective"] == pytest.approx(one["objective"], rel=tol)


@pytest.mark.mpi
def test_command_with_two_outputs_serial_and_two_ranks(tmp_path):
    """`flowfem compare` on a CSV with columns y2,x1,y1 (taken by name): every promised file, the
    per-output columns and the same numbers on 1 and 2 ranks."""
    ds = two_outputs(150, 0)
    np.savetxt(tmp_path / "d.csv", np.column_stack([ds.y[:, 1], ds.x, ds.y[:, 0]]), delimiter=",",
               header="y2,x1,y1", comments="")
    args = ["--data", str(tmp_path / "d.csv")] + ARGS[4:]  # ARGS without --data sin --n 150
    rows = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        r = run([FLOWFEM, "compare", *args, "--out", str(out)], ranks=ranks, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(os.listdir(out)) == sorted(compare.FILES + compare.FIGURES + (MANIFEST,))
        assert all((out / f).stat().st_size > 0 for f in compare.FILES + compare.FIGURES)
        assert "test RMSE y1..y2 (means)" in r.stdout and "wrote" in r.stdout
        runs = compare.read_csv(out / "runs.csv")
        assert {row["ranks"] for row in runs} == {ranks}
        assert json.loads((out / "results.json").read_text())["settings"]["outputs"] == 2
        for row in runs:  # the total over n m values from the outputs' RMSE (equal test sizes)
            assert row["test_rmse"] == pytest.approx(np.sqrt((row["test_rmse_y1"] ** 2 + row["test_rmse_y2"] ** 2) / 2),
                                                     rel=1e-10)
        rows.append(runs)
    for one, two_ in zip(*rows):
        assert (one["solver"], one["method"], one["width"], one["seed"]) == \
               (two_["solver"], two_["method"], two_["width"], two_["seed"])
        tol = 1e-10 if one["solver"] == "particles" else 1e-5
        for key in ("test_rmse", "test_rmse_y1", "test_rmse_y2", "objective", "train_loss"):
            assert two_[key] == pytest.approx(one[key], rel=tol), key


@pytest.mark.mpi
def test_command_under_mpirun_with_a_cold_jit_cache(tmp_path, monkeypatch):
    """The first run compiles every form on rank 0 alone, which then holds references the other
    rank does not; compare must not free a PETSc vector on some ranks only (it used to hang here)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    r = run([FLOWFEM, "compare", *ARGS, "--readout", "quadrature,sample,refit", "--density-width", "0.3",
             "--no-plot", "--out", str(tmp_path / "out")], ranks=2, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(compare.FILES + (MANIFEST,))


@pytest.mark.mpi
@pytest.mark.parametrize("args,message", [
    (["--widths", "8,x"], "--widths"),
    (["--methods", "sgd"], "unknown"),
    (["--domain", "meshes/none.msh"], "named domain"),
    (["--data", "two_moons", "--domain", "circle"], "circle"),
])
def test_command_refuses_bad_input_cleanly(tmp_path, args, message):
    base = ARGS
    if any(a.endswith(".msh") for a in args):  # a mesh file has its own cells: --mesh-size is refused with it
        i = ARGS.index("--mesh-size")
        base = ARGS[:i] + ARGS[i + 2:]
    r = run([FLOWFEM, "compare", *base, *args, "--out", str(tmp_path / "out")], timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowfem: error:") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.mpi
def test_command_needs_force_for_a_full_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    r = run([FLOWFEM, "compare", *ARGS, "--out", str(tmp_path / "out")], timeout=120)
    assert r.returncode == 2 and "--force" in r.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


@pytest.mark.parametrize("activation,lr,status", [("tanh", 100.0, "diverged"), ("relu", 1e6, "completed")])
def test_a_failing_particle_run_is_flagged_and_the_comparison_goes_on(activation, lr, status):
    """GD with a step far too large: tanh overflows (diverged), relu sends neurons to |theta| ~ 1e65
    (completed, dead neurons), whose density projection divided by zero and aborted the comparison."""
    train, test = data.synthetic("sin", 150, seed=0), data.synthetic("sin", 200, seed=1)
    cmp = compare.compare(train, test, widths=(8,), seeds=(0,), steps=200, mesh_size=8, alpha=1e-4,
                          methods=("gd", "adam"), lr={"gd": lr, "adam": 0.03}, activation=activation,
                          readouts=("quadrature",))
    rows = {(r["solver"], r["method"]): r for r in cmp.table()}
    assert rows[("particles", "gd")]["status"] == status
    assert rows[("particles", "adam")]["status"] == "completed"
    assert np.isfinite(next(r for r in cmp.table() if r["solver"] == "FE solve")["test_rmse_mean"])
    table = cmp.markdown()
    assert ("**diverged**" in table) == (status == "diverged")
    if status == "completed":  # projected, with finite numbers
        d = cmp.distances["gd N=8 seed=0"]
        assert np.isfinite(d["l2"]) and d["projection_error"] <= d["projection_bound"]


def test_csv_cells_of_numpy_scalars_read_back_as_the_same_numbers(tmp_path):
    """Every real number goes into compare's CSV files as its shortest repr, also NumPy's scalars (whose
    repr under NumPy 2 is 'np.float64(0.1)': curves.csv held that text in every numeric column)."""
    row = dict(a=np.float64(0.1), b=np.float32(0.25), c=np.int64(7), d=3, e=1 / 3, f=None, g="gd", h=np.True_)
    compare._write_csv(tmp_path / "t.csv", tuple(row), [row])
    text = (tmp_path / "t.csv").read_text().splitlines()
    assert text[1] == "0.1,0.25,7,3,0.3333333333333333,,gd,True"
    back = compare.read_csv(tmp_path / "t.csv")[0]
    assert (back["a"], back["c"], back["e"], back["f"]) == (0.1, 7.0, 1 / 3, None)
