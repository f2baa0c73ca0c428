"""What broke in the eighth breaker session (option values, network files, initial densities), each test
failing before its fix.

* ``compare --widths 4,4`` ran width 4 twice (two indistinguishable rows of every table), as did
  ``--seeds 0,0``, ``--methods adam,adam`` and ``--readout refit,refit``; ``--steps 0`` compared the
  random initial networks; ``--widths 4,,8`` dropped the empty entry, ``--methods ''`` and
  ``--readout ''`` ran nothing of theirs; ``--lr-gd 0`` passed when gd was not run, ``--init-scale 0``
  (every particle at 0, moved alike: one neuron) passed; ``flow --max-steps 0`` or ``-1`` wrote the
  initial density as the flow's end. The refusals named the API argument (``widths must be ...``).
* ``flowfem predict`` of a network fitted with the logistic loss reported the RMSE of its scores against
  the labels -1/+1: the network file recorded no loss. It records it now; a file without it is scored
  as before, with a note.
* ``predict --proba`` named the probability columns p1..pC beside labels 0..C-1.
* ``flow --initial density:PATH`` took a density fitted on other units (raw against standardised inputs,
  another split's standardisation) or with another activation, and read its neurons in the flow's.
"""

import json
import os
import re

import numpy as np
import pytest

from conftest import BIN, one_error_line, run
from flowfem import cli, data
from flowfem.network import Network

FLOWFEM = os.path.join(BIN, "flowfem")
FIT = ["--mesh-size", "4", "--quiet", "--no-plot"]
COMPARE = ["compare", "--data", "sin", "--n", "40", *FIT, "--widths", "4", "--seeds", "0", "--steps", "2",
           "--methods", "adam", "--readout", "refit"]


@pytest.fixture
def no_fit(monkeypatch):
    """Fail the test if a fit starts: every refusal below comes before the work."""
    from flowfem.problem import Problem

    def reached(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(Problem, "fit", reached)


# -- compare's and flow's option values -------------------------------------------------------------------
@pytest.mark.parametrize("option,value,said", [
    ("--widths", "4,4", "--widths lists 4 twice: give each once, e.g. 16,64,256"),
    ("--widths", "0", "--widths must be integers >= 1, got 0"),
    ("--widths", "-3", "--widths must be integers >= 1, got -3"),
    ("--widths", "2.5", "--widths '2.5': give comma-separated integers, e.g. 16,64,256"),
    ("--widths", "4,,8", "--widths '4,,8': give comma-separated integers, e.g. 16,64,256"),
    ("--widths", "", "--widths '': give comma-separated integers, e.g. 16,64,256"),
    ("--seeds", "0,0", "--seeds lists 0 twice: give each once, e.g. 0,1,2"),
    ("--seeds", "-1", "--seeds must be integers >= 0, got -1"),
    ("--seeds", "x", "--seeds 'x': give comma-separated integers, e.g. 0,1,2"),
    ("--steps", "0", "--steps must be an integer >= 1, got 0"),
    ("--steps", "-2", "--steps must be an integer >= 1, got -2"),
    ("--methods", "adam,adam", "--methods lists adam twice: give each once, e.g. gd,adam"),
    ("--methods", "", "--methods is empty: give at least one, e.g. gd,adam"),
    ("--readout", "refit,refit", "--readout lists refit twice: give each once, e.g. quadrature,refit"),
    ("--readout", ",", "--readout is empty: give at least one, e.g. quadrature,refit"),
    ("--lr-gd", "0", "--lr-gd must be a finite number > 0, got 0.0"),  # gd is not run (--methods adam)
    ("--lr-adam", "nan", "--lr-adam must be a finite number > 0, got nan"),
    ("--init-scale", "0", "--init-scale must be a finite number > 0, got 0.0"),
])
def test_compare_refuses_nonsense_option_values_by_name(tmp_path, no_fit, capsys, option, value, said):
    out = tmp_path / "out"
    assert cli.main([*COMPARE, option, value, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"flowfem: error: {said}", line
    assert not out.exists()


def test_compare_api_refuses_duplicates_and_zero_steps_by_argument_name():
    """The API spells its arguments (widths=, steps=), not the options."""
    from flowfem import compare

    train = data.Dataset(np.linspace(-1, 1, 8)[:, None], np.linspace(-1, 1, 8))
    for kwargs, said in [(dict(widths=[8, 8]), "widths lists 8 twice"), (dict(seeds=()), "seeds is empty"),
                         (dict(steps=0), "steps must be an integer >= 1, got 0"),
                         (dict(widths=[4.0]), "widths must be an integer >= 1, got 4.0 (float)"),
                         (dict(lr={"gd": -1.0}, methods=["adam"]), "lr_gd must be a finite number > 0")]:
        with pytest.raises(ValueError, match=re.escape(said)):
            compare.compare(train, train, **kwargs)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_flow_max_steps_below_one_is_refused(tmp_path, capsys, value):
    out = tmp_path / "out"
    assert cli.main(["flow", "--data", "sin", "--n", "40", *FIT, "--max-steps", value, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"flowfem: error: --max-steps must be an integer >= 1, got {value}", line
    assert not out.exists()


# -- predict of a logistic network, --proba's columns ----------------------------------------------------------
@pytest.fixture(scope="module")
def logistic_net(tmp_path_factory):
    """A network read out of a logistic solve on the labels sign(x) (synthetic set step)."""
    tmp = tmp_path_factory.mktemp("logistic")
    assert cli.main(["solve", "--data", "step", "--n", "60", "--loss", "logistic", *FIT,
                     "--out", str(tmp / "s")]) == 0
    assert cli.main(["readout", "--density", str(tmp / "s"), "--out", str(tmp / "net.npz")]) == 0
    return tmp / "net.npz"


def _labels_file(path, net, rng):
    x = rng.uniform(-1, 1, (40, 1))
    y = np.where(x[:, 0] > 0, 1.0, -1.0)
    y[:5] *= -1  # five rows mislabelled: an accuracy of 1 would not tell whether they were scored
    data.save(data.Dataset(x, y), path)
    return x, y


def test_predict_of_a_logistic_network_reports_the_accuracy(tmp_path, logistic_net, capsys):
    net = Network.load(logistic_net)
    assert net.loss == "logistic"
    x, y = _labels_file(tmp_path / "labels.npy", net, np.random.default_rng(3))
    assert cli.main(["predict", "--network", str(logistic_net), "--data", str(tmp_path / "labels.npy"),
                     "--out", str(tmp_path / "p.csv")]) == 0
    said = capsys.readouterr().out
    expected = np.mean(np.sign(net(x)) == y)  # independent of predict: the network's scores, NumPy
    assert 0.5 < expected < 1.0
    assert f"40 predictions, accuracy of sign f against y {expected:.4f}" in said and "RMSE" not in said, said
    f = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)[:, -1]
    np.testing.assert_allclose(f, net(x), rtol=1e-12)  # the scores f are written, as before


def test_predict_of_a_logistic_network_refuses_targets_other_than_labels(tmp_path, logistic_net, capsys):
    x = np.linspace(-1, 1, 10)[:, None]
    data.save(data.Dataset(x, x[:, 0] * 3), tmp_path / "real.npy")
    assert cli.main(["predict", "--network", str(logistic_net), "--data", str(tmp_path / "real.npy"),
                     "--out", str(tmp_path / "p.csv")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "are neither -1 nor +1" in line and "real.npy" in line, line
    assert not (tmp_path / "p.csv").exists()


def test_a_network_file_without_loss_is_scored_by_rmse_with_a_note(tmp_path, logistic_net, capsys):
    """A network written before flowfem recorded the loss: the RMSE as before, and a note with the fix
    when the targets are labels -1/+1."""
    arrays = dict(np.load(logistic_net))
    del arrays["loss"]
    np.savez(tmp_path / "old.npz", **arrays)
    net = Network.load(tmp_path / "old.npz")
    assert net.loss is None
    x, y = _labels_file(tmp_path / "labels.npy", net, np.random.default_rng(4))
    assert cli.main(["predict", "--network", str(tmp_path / "old.npz"), "--data", str(tmp_path / "labels.npy"),
                     "--out", str(tmp_path / "p.csv")]) == 0
    said = capsys.readouterr().out
    assert f"RMSE against y {np.sqrt(np.mean((net(x) - y) ** 2)):.4e} (the network file records no loss" in said


def test_network_files_keep_the_loss_and_refuse_a_wrong_one(tmp_path):
    W, b, a = np.ones((3, 2)), np.zeros(3), np.ones(3)
    for loss in ("squared", "logistic", None):
        Network(W, b, a, "relu", loss=loss).save(tmp_path / "n.npz")
        assert Network.load(tmp_path / "n.npz").loss == loss
    with pytest.raises(ValueError, match="softmax goes with classes"):
        Network(W, b, a, "relu", loss="softmax")
    with pytest.raises(ValueError, match="logistic with one output"):
        Network(W, b, np.ones((3, 2)), "relu", loss="logistic")
    np.savez(tmp_path / "bad.npz", W=W, b=b, a=a, activation=np.array("relu"), loss=np.array("hinge"))
    with pytest.raises(ValueError, match="bad.npz: unknown loss 'hinge'"):
        Network.load(tmp_path / "bad.npz")


def test_particle_networks_record_their_loss():
    from flowfem import particles

    x = np.linspace(-1, 1, 12)[:, None]
    assert particles.train(x, np.sign(x[:, 0] + 0.1), 4, loss="logistic", steps=1).network.loss == "logistic"
    assert particles.train(x, x[:, 0], 4, steps=1).network.loss == "squared"


def test_predict_proba_columns_are_named_after_the_labels(tmp_path, capsys):
    """Classes 3, 5, 9: columns p_3, p_5, p_9, and each row's label is the class of its largest one."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (60, 2))
    labels = np.choose((x[:, 0] > 0).astype(int) + (x[:, 1] > 0.3), [3.0, 5.0, 9.0])
    data.save(data.Dataset(x, labels), tmp_path / "train.npy")
    assert cli.main(["solve", "--data", str(tmp_path / "train.npy"), "--loss", "softmax", "--alpha", "1e-3", *FIT,
                     "--out", str(tmp_path / "s")]) == 0
    assert cli.main(["readout", "--density", str(tmp_path / "s"), "--out", str(tmp_path / "net.npz")]) == 0
    assert cli.main(["predict", "--network", str(tmp_path / "net.npz"), "--data", str(tmp_path / "train.npy"),
                     "--proba", "--out", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[2:] == ["label", "p_3", "p_5", "p_9"], header
    rows = [line.split(",") for line in lines[1:]]
    assert all(r[2] == header[3 + int(np.argmax([float(v) for v in r[3:]]))][2:] for r in rows)


# -- flow --initial density:PATH of other units ---------------------------------------------------------
@pytest.fixture(scope="module")
def engel_density(tmp_path_factory):
    """A density fitted on engel (a real set: inputs standardised on the training rows of --seed 0)."""
    tmp = tmp_path_factory.mktemp("engel")
    assert cli.main(["solve", "--data", "engel", *FIT, "--out", str(tmp / "s")]) == 0
    return tmp / "s"


@pytest.mark.parametrize("flow,said", [
    (["--data", "sin", "--n", "40"], "was fitted on inputs standardised by mean [1012.85"),
    (["--data", "engel", "--seed", "1"], "this flow on inputs standardised by mean [997.63"),
    (["--data", "engel", "--activation", "tanh"], "was fitted with relu, this flow uses tanh"),
])
def test_flow_refuses_an_initial_density_of_other_units(tmp_path, engel_density, capsys, flow, said):
    out = tmp_path / "out"
    assert cli.main(["flow", *flow, *FIT, "--max-steps", "1", "--initial", f"density:{engel_density}",
                     "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert said in line and str(engel_density) in line, line
    assert not out.exists()


def test_flow_refuses_a_raw_density_for_standardised_inputs_and_takes_its_own(tmp_path, engel_density, capsys):
    """A density of sin (raw inputs) on the same mesh as an engel flow is refused; the engel density itself
    starts the engel flow at its own energy (the same functional: E(u0) equals the solve's E_alpha)."""
    import json

    assert cli.main(["solve", "--data", "sin", "--n", "40", *FIT, "--out", str(tmp_path / "sin")]) == 0
    assert cli.main(["flow", "--data", "engel", *FIT, "--max-steps", "1", "--initial",
                     f"density:{tmp_path / 'sin'}", "--out", str(tmp_path / "bad")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "was fitted on raw inputs x, this flow on inputs standardised" in line, line
    assert cli.main(["flow", "--data", "engel", *FIT, "--max-steps", "1", "--no-reference", "--initial",
                     f"density:{engel_density}", "--out", str(tmp_path / "ok")]) == 0
    start = json.loads((tmp_path / "ok" / "energy.json").read_text())["steps"][0]["energy"]
    solved = json.loads((engel_density / "metrics.json").read_text())["energy"]
    assert start == pytest.approx(solved, rel=1e-8)


# -- landscape --mu, mesh --d ----------------------------------------------------------------------------
@pytest.mark.parametrize("mu,said", [
    ("0,0", "--mu lists 0.0 twice: give each once, e.g. -1,0,0.5,1,2"),
    ("0.5,1,0.5", "--mu lists 0.5 twice: give each once, e.g. -1,0,0.5,1,2"),
    ("1e200", "--mu must be numbers with |mu| <= 1e+50, got [1e+200]"),  # overflowed: warnings, inf curvatures
    ("-1e51", "--mu must be numbers with |mu| <= 1e+50, got [-1e+51]"),
    ("1e308", "--mu must be numbers with |mu| <= 1e+50, got [1e+308]"),  # was 'network array a contains NaN'
])
def test_landscape_refuses_repeated_and_overflowing_mu(tmp_path, small_net, capsys, mu, said):
    out = tmp_path / "l.json"
    assert cli.main(["landscape", "--network", str(small_net), "--data", "sin", "--n", "20", "--quiet", "--mu", mu,
                     "--json", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"flowfem: error: {said}"
    assert not out.exists()


def test_landscape_takes_the_largest_mu_allowed_without_overflow(small_net, capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in the curvatures or split directions fails the test
        assert cli.main(["landscape", "--network", str(small_net), "--data", "sin", "--n", "20", "--quiet",
                         "--mu", "1e50,-1e50,0.5"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("d", ["0", "-1"])
def test_mesh_refuses_an_input_dimension_below_one(tmp_path, capsys, d):
    """--d 0 was told it 'needs a 1-D parameter mesh, or ... the sphere S^0 of directions, a 0-D mesh'."""
    out = tmp_path / "m.msh"
    assert cli.main(["mesh", "box", "--d", d, "--size", "2", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"flowfem: error: input dimension d = {d}: the data have at least one input column; give d = 1 "
                    "or 2 (3 with the domain s3)"), line
    assert not out.exists()


# -- Ctrl-C under mpirun during compare's particle runs ---------------------------------------------------
@pytest.mark.mpi
def test_ctrl_c_under_mpirun_ends_compare_in_its_particle_run(tmp_path):
    """SIGINT to mpirun inside a particle run: the ranks only set a flag (mpi.CollectiveInterrupt), which
    nothing in the particle loop looked at, so compare ran every remaining particle step (here about four
    minutes) before it stopped. Each step now checks it: one line, status 130, within seconds, nothing left."""
    import signal
    import subprocess
    import time

    from conftest import MPIRUN, ROOT

    out = tmp_path / "out"
    cmd = [MPIRUN, "-n", "2", FLOWFEM, "compare", "--data", "sin", "--n", "100", "--mesh-size", "4", "--widths", "4",
           "--seeds", "0", "--methods", "adam", "--readout", "refit", "--steps", "100000", "--no-plot",
           "--out", str(out)]
    env = dict(os.environ, FLOWFEM_PROGRESS="1", PYTHONUNBUFFERED="1")  # the bar tells when the particles run
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen, deadline = b"", time.monotonic() + 120
        while b"adam N=4" not in seen and time.monotonic() < deadline:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        assert b"adam N=4" in seen, seen.decode(errors="replace")[-2000:]
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        waited = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    said = [ln for ln in stderr.decode(errors="replace").replace("\r", "\n").splitlines() if "flowfem" in ln]
    assert said == ["flowfem: interrupted"], said
    assert waited < 30 and b"wrote" not in stdout
    assert os.listdir(tmp_path) == []  # no output, temporary directory or lock


# -- values that start as negative numbers ---------------------------------------------------------------
def test_a_mu_list_starting_with_a_negative_number_is_a_value(small_net, tmp_path):
    """--mu -1,0,2 (the default starts so) was refused: 'argument --mu: expected one argument' (argparse of
    Python < 3.14 takes only -N and -N.N for values). The list is classified at each mu, in order."""
    out = tmp_path / "report.json"
    assert cli.main(["landscape", "--network", str(small_net), "--data", "sin", "--n", "20", "--quiet",
                     "--mu", "-1,0,2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mus"] == [-1.0, 0.0, 2.0]


@pytest.mark.parametrize("argv,said", [
    (["solve", "--alpha", "-1e-3"], "--alpha must be a finite number > 0 (the convexity constant of E_alpha), "
                                    "got -0.001"),
    (["solve", "--radius", "-2e0"], "argument --radius: -2e0 must be a finite number > 0"),
    (["flow", "--tau", "-1e-2"], "--tau must be a finite number > 0 (the first time step), got -0.01"),
])
def test_a_negative_value_in_exponent_notation_is_refused_by_its_meaning(tmp_path, capsys, argv, said):
    out = tmp_path / "out"
    try:
        status = cli.main([*argv, "--data", "sin", "--n", "20", *FIT, "--out", str(out)])
    except SystemExit as e:  # a usage error: argparse exits
        status = e.code
    assert status == 2
    line = one_error_line(capsys.readouterr().err)
    assert said in line and "expected one argument" not in line, line
    assert not out.exists()


def test_landscape_of_a_logistic_network_is_of_the_logistic_loss(tmp_path, logistic_net, capsys):
    """The network file records its loss: landscape analyses a logistic network with the logistic loss unless
    --loss says otherwise (it took the squared loss, L about 1e3 here, of scores against labels)."""
    full = Network.load(logistic_net)
    net = Network(full.W[:4], full.b[:4], full.a[:4] * full.width / 4, "relu", loss="logistic")
    net.save(tmp_path / "n4.npz")
    ds = data.get("step", 30, 0)
    f = net(ds.x)  # the mean losses, in NumPy
    expected = {"logistic": np.mean(np.logaddexp(0.0, -ds.y * f)), "squared": np.mean(0.5 * (f - ds.y) ** 2)}
    for given, loss in ((None, "logistic"), ("squared", "squared")):
        json_path = tmp_path / f"{loss}.json"
        assert cli.main(["landscape", "--network", str(tmp_path / "n4.npz"), "--data", "step", "--n", "30",
                         "--quiet", "--json", str(json_path)] + (["--loss", given] if given else [])) == 0
        import json

        report = json.loads(json_path.read_text())
        assert report["loss"] == loss
        assert report["objective"] == pytest.approx(expected[loss], rel=1e-12)


@pytest.mark.mpi
def test_ctrl_c_under_mpirun_stops_work_of_rank_0_at_once(tmp_path):
    """convert (as landscape, export, predict, mesh) works on rank 0 inside mpi.on_root while the other
    ranks wait. Under mpirun a Ctrl-C only set a flag there, looked at before the work and never after it:
    the conversion ran to its end, wrote the file and exited 0. Rank 0 now stops at once and tells the
    others: one line, status 130, no file and no temporary file left."""
    import signal
    import subprocess
    import time

    from conftest import MPIRUN, ROOT

    source, target = tmp_path / "big.csv", tmp_path / "big.npy"
    source.write_text("x1,y\n" + "0.5,0.25\n" * 6_000_000)  # 54 MB: some seconds of parsing
    env = dict(os.environ, FLOWFEM_PROGRESS="1", PYTHONUNBUFFERED="1")  # the bar tells when the work runs
    proc = subprocess.Popen([MPIRUN, "-n", "2", FLOWFEM, "convert", str(source), str(target)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen, deadline = b"", time.monotonic() + 60
        while b"MB/s" not in seen and time.monotonic() < deadline:  # the bar's first rate: parsing has begun
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        assert b"MB/s" in seen, seen.decode(errors="replace")[-2000:]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    said = [ln for ln in stderr.decode(errors="replace").replace("\r", "\n").splitlines() if "flowfem" in ln]
    assert said == ["flowfem: interrupted"], said
    assert b"wrote" not in stdout and sorted(os.listdir(tmp_path)) == ["big.csv"]
