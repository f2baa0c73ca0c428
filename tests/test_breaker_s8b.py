"""Breaker tests of the eighth session's second round, each failing before its fix.

- A record ``.NAME.flowfem`` that is a pipe, or a symbolic link to /dev/zero, made ``--force`` hang
  (the open blocked on the pipe; json.load read /dev/zero for ever): a record must be a regular file
  read to a bound, else it is no record and --force refuses (exit 2, one line).
- A Ctrl-C (KeyboardInterrupt) while the record was being written left its temporary file
  ``.NAME.flowfem.PID-HEX.tmp`` behind.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, one_error_line
from flowfem import files
from flowfem.network import Network


def _predict(tmp_path, *extra):
    net = tmp_path / "net.npz"
    if not net.exists():
        Network([[1.5], [-2.0]], [0.2, 0.5], [0.8, -0.6], "tanh").save(net)
    # a subprocess with a timeout: the defect was a hang
    return subprocess.run([sys.executable, "-m", "flowfem", "predict", "--network", str(net), "--data", "sin",
                           "--n", "5", "--out", str(tmp_path / "p.csv"), *extra],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_force_with_a_record_that_is_no_regular_file_refuses_at_once(tmp_path, kind):
    assert _predict(tmp_path).returncode == 0
    record = files.record_path(tmp_path / "p.csv")
    before = (tmp_path / "p.csv").read_bytes()
    os.remove(record)
    if kind == "fifo":
        os.mkfifo(record)
    else:
        os.symlink("/dev/zero", record)
    r = _predict(tmp_path, "--force")
    assert r.returncode == 2, r.stderr
    assert "--force replaces only a file that flowfem wrote" in one_error_line(r.stderr)
    assert (tmp_path / "p.csv").read_bytes() == before
    os.remove(record)


def test_force_still_replaces_its_own_file(tmp_path):
    assert _predict(tmp_path).returncode == 0
    r = _predict(tmp_path, "--force")
    assert r.returncode == 0, r.stderr
    written = json.loads(open(files.record_path(tmp_path / "p.csv")).read())
    assert written["sha256"] == files.sha256(tmp_path / "p.csv")


def test_interrupt_while_writing_the_record_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with files.replacing(tmp_path / "a.txt") as tmp, open(tmp, "w") as f:
            f.write("data\n")
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]  # the file, no record, no temporary file


def test_ctrl_c_at_the_rename_leaves_the_file_with_its_record(tmp_path, monkeypatch):
    """``mpirun -n 2 flowfem convert big.csv b.npz`` with a Ctrl-C as rank 0 renamed the file: exit 130,
    b.npz written and no record .b.npz.flowfem, so --force then refused flowfem's own file. The file and
    its record now appear together; the Ctrl-C is taken after both."""
    import signal

    rename = os.replace

    def ctrl_c_during_rename(src, dst):
        rename(src, dst)
        if not os.path.basename(dst).endswith(files.RECORD_SUFFIX):
            os.kill(os.getpid(), signal.SIGINT)  # Python's handler runs at the next bytecode

    monkeypatch.setattr(files.os, "replace", ctrl_c_during_rename)
    with pytest.raises(KeyboardInterrupt):
        with files.replacing(tmp_path / "a.txt") as tmp, open(tmp, "w") as f:
            f.write("data\n")
    assert sorted(os.listdir(tmp_path)) == [".a.txt.flowfem", "a.txt"]
    monkeypatch.undo()
    files.check_writable(tmp_path / "a.txt", force=True)  # flowfem's own file: --force replaces it
