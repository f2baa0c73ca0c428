"""--force never replaces a single file that flowfem did not write (flowfem.files: the record .NAME.flowfem).

For every command that writes one file (predict, readout, export in each format, mesh .msh and
.xdmf, landscape --json, convert): a file of the user's at OUT is refused with --force (exit 2,
one line, its bytes unchanged); a file flowfem wrote is replaced; one flowfem wrote and the user
edited since is refused; without --force an existing file is refused as before. The record is
checked against an independent hashlib SHA-256 of the file. The API's writes record too, output
directories hold no records (their manifest lists their files), a record that cannot be written
fails nothing, and ranks saving the same file at once leave a record that matches it.
"""

import hashlib
import json
import os
import stat

import numpy as np
import pytest

from conftest import one_error_line, run_mpi_script
from flowfem import cli, convert, data, files
from flowfem.files import check_writable
from flowfem.network import Network
from flowfem.outputs import MANIFEST

pytestmark = pytest.mark.mpi  # starts mpirun (test_ranks_saving_one_file_at_once_leave_a_matching_record)

MINE = b"x1,y\n0.5,1.0\n"  # a file of the user's


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """What the commands read: a small solve's density, a network, data (CSV), in their own directory."""
    tmp = tmp_path_factory.mktemp("inputs")
    assert cli.main(["solve", "--data", "sin", "--n", "200", "--mesh-size", "4", "--quiet", "--no-plot",
                     "--out", str(tmp / "solve")]) == 0
    Network([[1.5], [-2.0]], [0.2, 0.5], [0.8, -0.6], "tanh").save(tmp / "net.npz")
    data.save(data.synthetic("sin", 30, seed=3), tmp / "d.csv")
    return tmp


def commands(tmp):
    """name -> (OUT's file name, the command line without OUT, how it takes OUT)."""
    net, dens = str(tmp / "net.npz"), str(tmp / "solve" / "density.npz")
    export = ["export", "--network", net, "--format"]
    return {
        "predict": ("p.csv", ["predict", "--network", net, "--data", "sin", "--n", "10"], "--out"),
        "readout": ("r.npz", ["readout", "--density", dens, "--rule", "quadrature"], "--out"),
        "export-onnx": ("e.onnx", export + ["onnx"], "--out"),
        "export-safetensors": ("e.safetensors", export + ["safetensors"], "--out"),
        "export-torch": ("e.pt", export + ["torch"], "--out"),
        "mesh-msh": ("m.msh", ["mesh", "box", "--size", "2"], "--out"),
        "mesh-xdmf": ("m.xdmf", ["mesh", "circle", "--size", "8"], "--out"),
        "landscape": ("l.json", ["landscape", "--network", net, "--data", str(tmp / "d.csv"), "--mu", "0.5",
                                 "--quiet"], "--json"),
        "convert": ("c.npy", ["convert", str(tmp / "d.csv")], None),  # OUT is the positional TARGET
    }


def argv(command, option, out, *extra):
    return command + ([option, str(out)] if option else [str(out)]) + list(extra)


def record_matches(path) -> bool:
    """The record beside ``path`` holds its size and SHA-256 (hashlib over the whole file, not flowfem's)."""
    with open(files.record_path(path), encoding="utf-8") as f:
        record = json.load(f)
    content = open(path, "rb").read()
    assert record["written_by"].startswith("flowfem ")
    return record["size"] == len(content) and record["sha256"] == hashlib.sha256(content).hexdigest()


def refused(capsys, args, why: str) -> str:
    capsys.readouterr()
    assert cli.main(args) == 2, args
    line = one_error_line(capsys.readouterr().err)
    assert why in line, line
    return line


@pytest.mark.parametrize("name", ["predict", "readout", "export-onnx", "export-safetensors", "export-torch",
                                  "mesh-msh", "mesh-xdmf", "landscape", "convert"])
def test_force_replaces_only_a_file_flowfem_wrote(inputs, tmp_path, capsys, name):
    if name == "export-torch":
        pytest.importorskip("torch")
    file_name, command, option = commands(inputs)[name]
    out = tmp_path / file_name
    record = files.record_path(out)

    # (1) the user's file, --force: refused, one line naming the fix, nothing written
    out.write_bytes(MINE)
    line = refused(capsys, argv(command, option, out, "--force"), "was not written by flowfem")
    assert line.startswith("flowfem: error: --force replaces only a file that flowfem wrote; ")
    assert f"{str(out)!r} was not written by flowfem (no record '.{file_name}.flowfem' beside it)" in line
    assert line.endswith("remove it yourself or choose another name")
    assert out.read_bytes() == MINE and not os.path.exists(record)
    # (4) without --force: refused as before
    refused(capsys, argv(command, option, out), "exists; pass --force to replace it")
    assert out.read_bytes() == MINE
    assert sorted(os.listdir(tmp_path)) == [file_name]  # no temporary file, no record

    # (2) a file flowfem wrote: recorded, and replaced by --force (a new file: another inode)
    out.unlink()
    assert cli.main(argv(command, option, out)) == 0
    assert record_matches(out)
    assert sorted(os.listdir(tmp_path)) == [f".{file_name}.flowfem", file_name]
    first = os.stat(out).st_ino
    assert cli.main(argv(command, option, out, "--force")) == 0
    assert os.stat(out).st_ino != first and record_matches(out)

    # (3) a file flowfem wrote, edited by the user since: refused, left as the user made it; one bit
    # changed (the size the record holds: the hash tells), then a line added (the size tells)
    written = out.read_bytes()
    for edited in (bytes([written[0] ^ 1]) + written[1:], written + b"\n"):
        out.write_bytes(edited)
        refused(capsys, argv(command, option, out, "--force"), f"{str(out)!r} was changed since flowfem wrote it")
        assert out.read_bytes() == edited


def test_a_symbolic_link_is_never_replaced_by_force(inputs, tmp_path, capsys):
    """Even to a file flowfem wrote: the link is the user's."""
    file_name, command, option = commands(inputs)["mesh-msh"]
    target, link = tmp_path / "real.msh", tmp_path / file_name
    assert cli.main(argv(command, option, target)) == 0
    written = target.read_bytes()
    link.symlink_to(target)
    refused(capsys, argv(command, option, link, "--force"), f"{str(link)!r}: it is a symbolic link")
    refused(capsys, argv(command, option, link), f"{str(link)!r}: it is a symbolic link")  # not "pass --force"
    assert os.path.islink(link) and target.read_bytes() == written
    os.symlink(tmp_path / "missing.msh", tmp_path / "dangling.msh")  # lexists, not exists
    refused(capsys, argv(command, option, tmp_path / "dangling.msh", "--force"), "is a symbolic link")


def test_the_input_check_comes_first(inputs, tmp_path, capsys):
    """--force over the command's own input is named as that, even for a file flowfem wrote."""
    net = tmp_path / "net.npz"
    Network([[1.0]], [0.0], [1.0], "relu").save(net)
    refused(capsys, ["export", "--network", str(net), "--format", "onnx", "--out", str(net), "--force"],
            "is the input")


def test_api_writes_record_so_the_command_line_may_replace_them(inputs, tmp_path, capsys):
    """Network.save and data.save are flowfem's writes too: readout --force and convert --force replace
    them. convert(force=True) refuses the user's file, in the API's spelling; the API's default
    (force None, as np.save) replaces any file and records it."""
    net = tmp_path / "net.npz"
    Network([[1.0]], [0.0], [1.0], "relu").save(net)
    assert record_matches(net)
    assert cli.main(["readout", "--density", str(inputs / "solve" / "density.npz"), "--rule", "quadrature",
                     "--out", str(net), "--force"]) == 0
    assert record_matches(net) and Network.load(net).width > 1  # the readout's, not the width-1 network

    ds = data.synthetic("sin", 12, seed=1)
    data.save(ds, tmp_path / "d.npy")  # through convert.write
    assert record_matches(tmp_path / "d.npy")
    assert cli.main(["convert", str(inputs / "d.csv"), str(tmp_path / "d.npy"), "--force"]) == 0
    assert len(data.load(tmp_path / "d.npy").x) == 30

    (tmp_path / "mine.npy").write_bytes(MINE)
    with pytest.raises(ValueError, match=r"^force=True replaces only a file that flowfem wrote; output data file "
                                         r"'.*/mine.npy' was not written by flowfem .*: remove it yourself or "
                                         r"choose another name$"):
        convert.convert(inputs / "d.csv", tmp_path / "mine.npy", force=True)
    assert (tmp_path / "mine.npy").read_bytes() == MINE
    convert.convert(inputs / "d.csv", tmp_path / "mine.npy")  # force None: replaced, as the API documents
    assert record_matches(tmp_path / "mine.npy")
    data.save_predictions(tmp_path / "p.csv", ds.x, ds.y)
    assert record_matches(tmp_path / "p.csv")


def test_a_record_that_cannot_be_written_fails_nothing(tmp_path, capsys):
    """The file is written whole; only --force refuses it then (the record is missing, not stale)."""
    out = tmp_path / "m.msh"
    os.mkdir(files.record_path(out))  # a directory where the record belongs: os.replace cannot put it there
    assert cli.main(["mesh", "box", "--size", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and sorted(os.listdir(tmp_path)) == [".m.msh.flowfem", "m.msh"]
    refused(capsys, ["mesh", "box", "--size", "2", "--out", str(out), "--force"], "was not written by flowfem")


def test_a_failed_write_keeps_the_old_file_and_its_record(tmp_path):
    """An error inside replacing(): the old file and its record stay, and still match."""
    out = tmp_path / "net.npz"
    Network([[1.0]], [0.0], [1.0], "relu").save(out)
    before = out.read_bytes()
    with pytest.raises(RuntimeError, match="stopped"):
        with files.replacing(out, ".npz") as tmp:
            np.savez(tmp, W=np.zeros(3))
            raise RuntimeError("stopped")
    assert out.read_bytes() == before and record_matches(out)
    assert sorted(os.listdir(tmp_path)) == [".net.npz.flowfem", "net.npz"]
    files.check_writable(out, force=True)  # still flowfem's to replace


def test_an_output_directory_holds_no_records_and_force_replaces_it(inputs, tmp_path):
    """solve writes predictions.csv through replacing() into its temporary directory: the manifest is its
    record, so no .predictions.csv.flowfem appears, and solve --force over it (which refuses a directory
    holding a file its manifest does not list) works, twice."""
    out = tmp_path / "s"
    solve = ["solve", "--data", "sin", "--n", "200", "--mesh-size", "4", "--quiet", "--no-plot", "--out", str(out)]
    for force in ([], ["--force"], ["--force"]):
        assert cli.main(solve + force) == 0
        names = os.listdir(out)
        assert "predictions.csv" in names and not any(n.endswith(files.RECORD_SUFFIX) for n in names), names
        with open(out / MANIFEST) as f:
            assert sorted(json.load(f)["files"]) == sorted(set(names) - {MANIFEST})
    assert sorted(os.listdir(tmp_path)) == ["s"]  # and none beside it
    # the module-scoped solve too
    assert not any(n.endswith(files.RECORD_SUFFIX) for n in os.listdir(inputs / "solve"))


MPI_SAVES = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem.files import check_writable
from flowfem.network import Network

path = sys.argv[1]
rng = np.random.default_rng(7)  # the same network on every rank
net = Network(rng.standard_normal((50, 3)), rng.standard_normal(50), rng.standard_normal(50), "relu")
assert MPI.COMM_WORLD.size == 2
for _ in range(2):
    for _ in range(10):  # no barrier: the ranks' writes, renames and records interleave
        net.save(path)
    MPI.COMM_WORLD.Barrier()
"""


def test_ranks_saving_one_file_at_once_leave_a_matching_record(tmp_path):
    out = tmp_path / "net.npz"
    run_mpi_script(tmp_path / "saves.py", MPI_SAVES, str(out))
    assert record_matches(out)
    assert sorted(os.listdir(tmp_path)) == [".net.npz.flowfem", "net.npz", "saves.py"]  # no temporary left
    files.check_writable(out, "network file", force=True)
    assert Network.load(out).width == 50


@pytest.mark.parametrize("force", [None, False, True])
def test_a_special_file_or_link_is_never_written(tmp_path, force):
    """A pipe stands in for /dev/null: a landscape --json /dev/null --force as root renamed a regular file over
    the device. The API (force None) replaced a symbolic link by a file; neither is written now."""
    fifo, target, link = tmp_path / "pipe", tmp_path / "real.npz", tmp_path / "link.npz"
    os.mkfifo(fifo)
    net = Network([[1.0]], [0.0], [1.0], "relu")
    net.save(target)
    link.symlink_to(target)
    for path, kind in ((fifo, "a device, pipe or socket"), (link, "a symbolic link")):
        with pytest.raises(ValueError, match=f"it is {kind}"):
            check_writable(path, "network file", force)
    for path in (fifo, link):
        with pytest.raises(ValueError, match="give the name of a regular file"):
            net.save(path)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.islink(link)
    assert sorted(os.listdir(tmp_path)) == [".real.npz.flowfem", "link.npz", "pipe", "real.npz"]
