"""flowfem landscape: the printed and JSON classification equals plateau.classify_plateau
in-process; bad input is refused with one line, exit 2 and no JSON left behind."""

import json
import os
import warnings

import numpy as np
import pytest

from conftest import BIN, run
from flowfem import data, plateau as ls
from flowfem.network import Network

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes; not rerun inside the MPI suite
MUS = [-1.0, 0.0, 0.25, 0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A width-2 tanh network minimised by Newton on 60 points of sin(pi x) (CSV and NPZ),
    the same network before polishing, and a 2-D data set."""
    tmp = tmp_path_factory.mktemp("landscape")
    ds = data.synthetic("sin", 60, seed=3)
    data.save(ds, str(tmp / "d.csv"))
    data.save(ds, str(tmp / "d.npz"))
    data.save(data.synthetic("two_moons", 30, seed=0), str(tmp / "moons.npz"))
    raw = Network([[1.5], [-2.0]], [0.2, 0.5], [0.8, -0.6], "tanh")
    res = ls.minimise(raw, ds.x, ds.y)
    assert res.converged
    raw.save(str(tmp / "raw.npz"))
    res.network.save(str(tmp / "net.npz"))
    return tmp, ds, res.network


def landscape(*args, ranks=1):
    return run([FLOWFEM, "landscape", *map(str, args)], ranks=ranks, timeout=120)


def check_against_classify_plateau(report, net, x, y, neurons):
    assert report["valid"] and report["gradient_norm"] < 1e-8 and report["mus"] == MUS
    assert [nr["index"] for nr in report["neurons"]] == neurons
    for nr in report["neurons"]:
        plateau = ls.classify_plateau(net, nr["index"], x, y, MUS)
        assert nr["definiteness"] == plateau.inner.definiteness
        assert np.allclose(nr["inner_eigenvalues"], plateau.inner.eigenvalues, rtol=1e-12, atol=0)
        for row, pt in zip(nr["points"], plateau.points, strict=True):
            assert row["mu"] == pt.mu and row["kind"] == pt.kind
            if pt.kind == "saddle":
                assert row["curvature"] == pytest.approx(pt.curvature, rel=1e-10)
                assert np.allclose(row["escape_direction"], pt.escape_direction, rtol=0, atol=1e-10)
            else:
                assert row["curvature"] is None and row["escape_direction"] is None
            if "brute_force" in row:
                assert row["brute_force"] == pt.kind


@pytest.mark.parametrize("datafile", ["d.csv", "d.npz"])
def test_json_matches_classify_plateau(files, datafile):
    tmp, ds, net = files
    out = tmp / f"{datafile}.json"
    r = landscape("--network", tmp / "net.npz", "--data", tmp / datafile, f"--mu={','.join(map(str, MUS))}",
                  "--check", "--json", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    report = json.loads(out.read_text())
    check_against_classify_plateau(report, net, ds.x, ds.y, [0, 1])
    # the printed table carries the same kinds, and says the classification applies
    assert "a strict local minimum: the classification applies" in r.stdout and "DISAGREES" not in r.stdout
    kinds = [ln.split()[1] for ln in r.stdout.splitlines()
             if ln.startswith("  ") and ln.split()[0] in {"-1", "0", "0.25", "0.5", "1", "2"}]
    assert kinds == [pt["kind"] for nr in report["neurons"] for pt in nr["points"]]
    assert {"saddle", "degenerate"} <= set(kinds)


def test_one_neuron_polished_on_two_ranks(files):
    """--polish minimises the raw network first; under mpirun -n 2 rank 0 prints once."""
    tmp, ds, net = files
    out = tmp / "one.json"
    r = landscape("--network", tmp / "raw.npz", "--data", tmp / "d.csv", "--neuron", "-1", "--polish",
                  f"--mu={','.join(map(str, MUS))}", "--json", out, ranks=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("polished by Newton") == 1
    report = json.loads(out.read_text())
    assert report["polish"]["converged"]
    check_against_classify_plateau(report, net, ds.x, ds.y, [1])


def test_unpolished_network_is_flagged(files):
    tmp, ds, _ = files
    r = landscape("--network", tmp / "raw.npz", "--data", tmp / "d.npz", "--mu", "0.5")
    assert r.returncode == 0, r.stderr
    assert "NOT a strict local minimum" in r.stdout and "--polish" in r.stdout


BAD = [
    (["--network", "{tmp}/missing.npz", "--data", "{tmp}/d.csv"], "cannot read network file"),
    (["--network", "{tmp}/d.csv", "--data", "{tmp}/d.csv"], "not a flowfem network"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/missing.csv"], "does not exist"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/d.csv", "--neuron", "2"],
     "--neuron 2 is out of range: the network has width 2"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/d.csv", "--neuron", "-3"], "out of range"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/moons.npz"], "have d = 2 inputs but the network"),
    (["--network", "{tmp}/net.npz", "--data", "two_moons"], "have d = 2 inputs but the network"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/d.csv", "--mu", "0.5,x"], "--mu must be numbers"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/d.csv", "--loss", "hinge"], "unknown loss"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/d.csv", "--loss", "logistic"], "labels y in {-1, +1}"),
    (["--network", "{tmp}/net.npz", "--data", "{tmp}/d.csv", "--json", "{tmp}/no/such/dir/x.json"],
     "directory does not exist"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_cleanly(files, args, message):
    tmp = files[0]
    before = set(os.listdir(tmp))
    r = landscape(*[a.format(tmp=tmp) for a in args], "--json", tmp / "bad.json") if "--json" not in args \
        else landscape(*[a.format(tmp=tmp) for a in args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowfem: error:") and message in lines[0], r.stderr
    assert r.stdout == "" and set(os.listdir(tmp)) == before  # no JSON (or temporary file) left behind


def test_bad_neuron_under_mpirun(files):
    tmp = files[0]
    r = landscape("--network", tmp / "net.npz", "--data", tmp / "d.csv", "--neuron", "7", ranks=2)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--neuron 7 is out of range" in lines[0], r.stderr


def test_classification_of_the_fixture_is_meaningful(files):
    """The fixture network is a strict minimum with an informative inner Hessian (in-process)."""
    _, ds, net = files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in (0, 1):
            assert ls.classify_plateau(net, i, ds.x, ds.y, MUS).valid


def test_wide_network_is_summarised_unless_all(files):
    """By default: counts per kind over every neuron and mu, tables of the first three neurons and a line
    naming --all; --all prints every neuron's table. The counts equal the JSON report's."""
    tmp, ds, _ = files
    rng = np.random.default_rng(5)
    Network(rng.standard_normal((5, 1)), rng.standard_normal(5), rng.standard_normal(5), "tanh").save(
        str(tmp / "wide.npz"))
    out = tmp / "wide.json"
    r = landscape("--network", tmp / "wide.npz", "--data", tmp / "d.csv", f"--mu={','.join(map(str, MUS))}",
                  "--json", out)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    kinds = [pt["kind"] for nr in report["neurons"] for pt in nr["points"]]
    summary = next(ln for ln in r.stdout.splitlines() if ln.startswith("summary:"))
    assert summary.startswith(f"summary: 5 neuron(s) x {len(MUS)} mu = {len(kinds)} points: ")
    for kind in ("minimum", "saddle", "degenerate"):
        assert (f"{kinds.count(kind)} {kind}" in summary) == (kind in kinds), summary
    assert [ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("neuron ")] == \
        ["neuron 0", "neuron 1", "neuron 2"]
    assert "... 2 more neuron(s) not shown: --all prints every row" in r.stdout
    r = landscape("--network", tmp / "wide.npz", "--data", tmp / "d.csv", f"--mu={','.join(map(str, MUS))}", "--all")
    assert r.returncode == 0, r.stderr
    assert [ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("neuron ")] == \
        [f"neuron {i}" for i in range(5)]
    assert "not shown" not in r.stdout


def test_relu_network_is_said_to_be_degenerate(files):
    """relu has sigma'' = 0 away from its kink: every inner Hessian is 0, and the summary says why."""
    tmp, _, _ = files
    Network([[1.0], [-2.0]], [0.3, 0.1], [0.5, 1.0], "relu").save(str(tmp / "relu.npz"))
    r = landscape("--network", tmp / "relu.npz", "--data", tmp / "d.csv", "--mu", "0.5")
    assert r.returncode == 0, r.stderr
    assert "summary: 2 neuron(s) x 1 mu = 2 points: 2 degenerate" in r.stdout
    assert "every inner Hessian is 0" in r.stdout and "smooth activation" in r.stdout
