"""Output directories: --force replaces only flowfem's own, one winner among concurrent runs, the umask.

Runs the CLI as users do (subprocesses), serially; the collective paths are covered by the CLI's
mpirun tests.
"""

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import BIN, ROOT, run

FLOWFEM = os.path.join(BIN, "flowfem")
SOLVE = [FLOWFEM, "solve", "--data", "sin", "--n", "100", "--mesh-size", "8", "--no-plot"]


def _solve(out, *extra, **kw):
    return run([*SOLVE, "--out", str(out), *extra], timeout=300, **kw)


def test_force_never_deletes_a_directory_flowfem_did_not_write(tmp_path):
    """`solve --data mydata.csv --out . --force` deleted the input and an unrelated thesis.tex."""
    (tmp_path / "thesis.tex").write_text("\\documentclass{article}")
    (tmp_path / "mydata.csv").write_text("x1,y\n0,0\n1,1\n2,4\n3,9\n4,16\n5,25\n")
    for out in (".", str(tmp_path), str(tmp_path / "..")):
        r = run([FLOWFEM, "solve", "--data", "mydata.csv", "--mesh-size", "8", "--no-plot", "--out", out,
                 "--force"], cwd=tmp_path, timeout=300)
        assert r.returncode == 2 and "--force replaces only a directory that flowfem wrote" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["mydata.csv", "thesis.tex"]  # no lock, no temporary left


def test_force_replaces_flowfem_output_but_not_a_file_the_user_added(tmp_path):
    out = tmp_path / "run"
    assert _solve(out).returncode == 0
    manifest = json.loads((out / ".flowfem-output.json").read_text())
    assert "metrics.json" in manifest["files"] and manifest["command"][:2] == ["flowfem", "solve"]
    assert _solve(out).returncode == 2  # not empty, no --force
    first = (out / "metrics.json").stat().st_mtime_ns
    r = _solve(out, "--force")
    assert r.returncode == 0, r.stderr
    assert (out / "metrics.json").stat().st_mtime_ns != first
    (out / "notes.txt").write_text("my notes")
    r = _solve(out, "--force")
    assert r.returncode == 2 and "notes.txt" in r.stderr
    assert (out / "notes.txt").read_text() == "my notes" and (out / "metrics.json").exists()


def test_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "result"
    target.write_text("precious")
    for extra in ((), ("--force",)):
        r = _solve(target, *extra)
        assert r.returncode == 2 and "not a directory" in r.stderr
    assert target.read_text() == "precious"


def test_concurrent_runs_on_one_directory_have_one_winner(tmp_path):
    """Two solves started at once on the same new --out both printed 'wrote' and one result was lost."""
    out = tmp_path / "shared"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([*SOLVE, "--n", "3000", "--out", str(out)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    assert ("is writing" in loser or "not empty" in loser) and len(loser.strip().splitlines()) == 1
    assert sum("wrote" in o for _, o, _ in results) == 1
    assert sorted(os.listdir(tmp_path)) == ["shared"] and (out / "metrics.json").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / ".run.lock").write_text(f"{socket.gethostname()} {dead.pid}")
    r = _solve(out)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_directories_follow_the_umask(tmp_path, umask):
    out = tmp_path / "run"
    r = _solve(out, preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_file_outputs_never_replace_a_file_without_force(tmp_path):
    """readout, predict, mesh and landscape --json overwrote an existing file silently; --force does not
    replace the user's file either (tests/test_force_files.py: only one that flowfem wrote)."""
    mine = "x1\n0.5\n"
    for name, cmd in [
        ("mesh.msh", [FLOWFEM, "mesh", "box", "--size", "4", "--out"]),
        ("pred.csv", [FLOWFEM, "predict", "--network", str(tmp_path / "net.npz"), "--data", "sin", "--n", "10",
                      "--out"]),
    ]:
        target = tmp_path / name
        target.write_text(mine)
        if name == "pred.csv":  # a network to predict with
            from flowfem.network import Network
            import numpy as np

            Network(np.ones((2, 1)), np.zeros(2), np.ones(2), "relu").save(tmp_path / "net.npz")
        r = run([*cmd, str(target)], timeout=120)
        assert r.returncode == 2 and "exists; pass --force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert target.read_text() == mine
        r = run([*cmd, str(target), "--force"], timeout=120)
        assert r.returncode == 2 and "was not written by flowfem" in r.stderr, r.stderr
        assert target.read_text() == mine


def test_force_never_replaces_the_input_a_command_reads(tmp_path):
    """--out (or --json) naming the command's own input, with --force: export wrote ONNX over the network it
    read, landscape JSON over its network, predict CSV over its network or its data, readout a network over
    the density it read. Every such output is refused, and the input is left as it was."""
    import numpy as np

    from flowfem import data
    from flowfem.network import Network

    net = tmp_path / "net.npz"
    Network(np.ones((2, 1)), np.zeros(2), np.ones(2), "tanh").save(net)
    same_suffix = tmp_path / "model.safetensors"  # export's default --out is the input itself
    same_suffix.write_bytes(net.read_bytes())
    points = tmp_path / "points.npz"
    data.save(data.synthetic("sin", 20, seed=0), str(points))
    assert _solve(tmp_path / "sol").returncode == 0
    density = tmp_path / "sol" / "density.npz"
    cases = [
        ([FLOWFEM, "export", "--network", str(net), "--format", "onnx", "--out", str(net)], net),
        ([FLOWFEM, "export", "--network", str(same_suffix), "--format", "safetensors"], same_suffix),
        ([FLOWFEM, "landscape", "--network", str(net), "--data", "sin", "--json", str(net)], net),
        ([FLOWFEM, "predict", "--network", str(net), "--data", "sin", "--out", str(net)], net),
        ([FLOWFEM, "predict", "--network", str(net), "--data", str(points), "--out", str(points)], points),
        ([FLOWFEM, "readout", "--density", str(tmp_path / "sol"), "--out", str(density)], density),
        ([FLOWFEM, "readout", "--density", str(density), "--out", str(density)], density),
    ]
    for cmd, victim in cases:
        before = victim.read_bytes()
        r = run([*cmd, "--force"], timeout=120)
        assert r.returncode == 2 and "the input" in r.stderr and "choose another name" in r.stderr, (cmd, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
        assert victim.read_bytes() == before, cmd
    # a new file inside the input directory is no input: allowed
    r = run([FLOWFEM, "readout", "--density", str(tmp_path / "sol"), "--out", str(tmp_path / "sol" / "net.npz")],
            timeout=120)
    assert r.returncode == 0, r.stderr
