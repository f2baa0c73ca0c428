"""flowfem convert: a CSV of any size streamed into .npy, .npz or .h5 that reads back as the same arrays.

The reference is :func:`flowfem.data.load` of the source (NumPy's loadtxt of the whole CSV);
errors must leave no file behind, and the command's must be one line with exit status 2.
"""

import os
import sys
import tracemalloc

import h5py
import numpy as np
import pytest

from conftest import BIN, run
from flowfem import convert, data, shards

FLOWFEM = os.path.join(BIN, "flowfem")
pytestmark = pytest.mark.mpi  # starts processes (the command, once under mpirun); not rerun inside the MPI suite
TARGETS = (".npy", ".npz", ".h5", ".hdf5")


def write_csv(path, header: str, table, blank_every: int = 0, bom: bool = False) -> str:
    """A CSV of ``table``'s rows (repr of each float: exact) under ``header``; a blank line and a
    comment line after every ``blank_every`` rows (data.load skips both)."""
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8") as f:
        f.write(header + "\n")
        for i, row in enumerate(table):
            f.write(",".join(repr(float(v)) for v in row) + "\n")
            if blank_every and i % blank_every == blank_every - 1:
                f.write("\n# a comment\n")
    return str(path)


def same(a: data.Dataset, b: data.Dataset) -> None:
    np.testing.assert_array_equal(a.x, b.x)
    if a.y is None:
        assert b.y is None
    else:
        np.testing.assert_array_equal(a.y, b.y)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("header, columns, chunk", [
    ("x1,y", 2, 1),
    ("y, x2 ,x1", 3, 7),  # columns by name, in any order, spaces around names
    ("f1,y2,x1,y1,x2,f2", 6, 10),  # two outputs; prediction columns ignored
    ("# x1,x2", 2, 100_000),  # inputs only; np.savetxt's leading '# '
])
def test_round_trip_gives_the_arrays_data_load_reads(tmp_path, target, header, columns, chunk):
    table = np.random.default_rng(columns).standard_normal((53, columns))
    source = write_csv(tmp_path / "in.csv", header, table, blank_every=10, bom=columns == 3)
    expected = data.load(source, require_y=False)
    line = convert.convert(source, tmp_path / f"out{target}", chunk=chunk)
    assert line.startswith(f"wrote {tmp_path / f'out{target}'}: 53 rows, {expected.d} input")
    same(data.load(tmp_path / f"out{target}", require_y=False), expected)
    assert sorted(os.listdir(tmp_path)) == [f".out{target}.flowfem", "in.csv", f"out{target}"]  # no temporary file
    for second in TARGETS:  # and from each format into each
        out = tmp_path / f"again{second}"
        convert.convert(tmp_path / f"out{target}", out, chunk=5, force=True)
        same(data.load(out, require_y=False), expected)


def test_the_formats_are_the_documented_layouts(tmp_path, monkeypatch):
    x = np.random.default_rng(0).standard_normal((20, 2))
    y = np.column_stack([x[:, 0] ** 2, x[:, 1]])
    source = write_csv(tmp_path / "in.csv", "x1,x2,y1,y2", np.column_stack([x, y]))
    for target in (".npy", ".npz", ".h5"):
        convert.convert(source, tmp_path / f"out{target}")
    records = np.load(tmp_path / "out.npy")  # NumPy's own reader
    assert records.dtype == np.dtype([("x1", "<f8"), ("x2", "<f8"), ("y1", "<f8"), ("y2", "<f8")])
    np.testing.assert_array_equal(np.column_stack([records[k] for k in records.dtype.names]), np.column_stack([x, y]))
    with np.load(tmp_path / "out.npz") as f:
        assert sorted(f.files) == ["x", "y"]
        np.testing.assert_array_equal(f["x"], x)
        np.testing.assert_array_equal(f["y"], y)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["x"].chunks is None and f["x"].compression is None  # contiguous: a rank's rows are one range
        np.testing.assert_array_equal(f["x"][:], x)
        np.testing.assert_array_equal(f["y"][:], y)
    monkeypatch.setattr(convert, "CHUNK_ROWS", 3)  # data.save writes arrays in pieces: 7 of them here
    for target in (".npy", ".h5", ".hdf5", ".npz"):  # data.save writes the same layouts from arrays
        data.save(data.Dataset(x, y), tmp_path / f"saved{target}")
        same(data.load(tmp_path / f"saved{target}"), data.Dataset(x, y))
    assert np.load(tmp_path / "saved.npy").tobytes() == records.tobytes()


def test_memory_stays_that_of_one_chunk(tmp_path):
    """A 15 MB CSV converted 10,000 rows at a time: peak Python/NumPy allocations below 6 MB (measured
    2.4-4.2 MB: about 240 bytes a row of a 50-character line, whatever n)."""
    n = 300_000
    x = np.random.default_rng(1).uniform(-1, 1, n)
    np.savetxt(tmp_path / "big.csv", np.column_stack([x, np.sin(3 * x)]), delimiter=",", header="x1,y",
               comments="")
    size = os.path.getsize(tmp_path / "big.csv")
    for target in (".npy", ".npz"):  # .npz: through the temporary .npy, then the archive
        tracemalloc.start()
        try:
            convert.convert(tmp_path / "big.csv", tmp_path / f"big{target}", chunk=10_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert size > 12e6 and peak < 6e6, (size, peak)
    part = shards.read(tmp_path / "big.npz")
    np.testing.assert_array_equal(part.x[:, 0], np.loadtxt(tmp_path / "big.csv", delimiter=",", skiprows=1)[:, 0])


def bad_sources(tmp_path) -> dict:
    """CSVs convert must refuse (the bad part after several chunks are written), and the message."""
    good = np.random.default_rng(2).standard_normal((40, 2))
    cases = {}
    for name, last, message in (
            ("nan.csv", "0.5,nan", "targets y contain NaN or inf (first at row 40, counting rows from 0)"),
            ("letters.csv", "0.5,abc",
             "line 42 is not numbers (could not convert string 'abc' to float64 in column 2)"),
            ("columns.csv", "0.5,1,2", "line 42 has 3 columns, the header names 2"),
    ):
        write_csv(tmp_path / name, "x1,y", good)
        with open(tmp_path / name, "a") as f:
            f.write(last + "\n")
        cases[name] = message
    (tmp_path / "noheader.csv").write_text("1.0,2.0\n")
    cases["noheader.csv"] = "has no header: make its first line name the columns, e.g. x1,y"
    (tmp_path / "names.csv").write_text("x1,z\n1,2\n")
    cases["names.csv"] = "unknown column(s) 'z'"
    (tmp_path / "rows.csv").write_text("x1,y\n\n")
    cases["rows.csv"] = "has a header but no rows of data"
    (tmp_path / "latin1.csv").write_bytes("x1,y\n1,2\n\xe9,3\n".encode("latin-1"))
    cases["latin1.csv"] = "is not UTF-8 text"
    np.savez(tmp_path / "nox.npz", y=good[:, 1])
    cases["nox.npz"] = "has no array 'x'"
    return cases


@pytest.mark.parametrize("target", TARGETS)
def test_a_bad_source_leaves_nothing_behind(tmp_path, target):
    for name, message in bad_sources(tmp_path).items():
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(ValueError) as caught:
            convert.convert(tmp_path / name, tmp_path / f"out{target}", chunk=3)
        assert message in str(caught.value) and "\n" not in str(caught.value), (name, str(caught.value))
        assert sorted(os.listdir(tmp_path)) == before, name  # no output, no temporary file
    good = write_csv(tmp_path / "good.csv", "x1,y", np.ones((4, 2)))
    convert.convert(good, tmp_path / f"out{target}")  # an earlier output, which --force may replace
    before = (tmp_path / f"out{target}").read_bytes()
    with pytest.raises(ValueError, match="first at row 40"):
        convert.convert(tmp_path / "nan.csv", tmp_path / f"out{target}", chunk=3, force=True)
    assert (tmp_path / f"out{target}").read_bytes() == before  # untouched, and still flowfem's to replace
    convert.convert(tmp_path / f"out{target}", tmp_path / f"again{target}")
    convert.convert(tmp_path / f"again{target}", tmp_path / f"out{target}", force=True)


def test_an_existing_target_needs_force_and_the_source_is_never_replaced(tmp_path, monkeypatch):
    source = write_csv(tmp_path / "in.csv", "x1,y", np.ones((3, 2)))
    convert.convert(source, tmp_path / "out.npy", force=False)
    with pytest.raises(ValueError, match="'.*out.npy' exists; pass --force to replace it"):
        convert.convert(source, tmp_path / "out.npy", force=False)
    convert.convert(source, tmp_path / "out.npy", force=True)
    convert.convert(tmp_path / "out.npy", tmp_path / "copy.npy")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'copy.npy' is the input 'copy.npy' of this command"):
        convert.convert("copy.npy", "copy.npy", force=True)
    with pytest.raises(ValueError, match=r"name it \.npy \(recommended"):
        convert.convert(source, tmp_path / "out.csv")
    with pytest.raises(ValueError, match="chunk must be an integer >= 1, got 0"):
        convert.convert(source, tmp_path / "other.npy", chunk=0)


# -- the command ----------------------------------------------------------------------------------


def test_the_command_converts_and_refuses_with_one_line(tmp_path):
    table = np.random.default_rng(3).standard_normal((25, 3))
    source = write_csv(tmp_path / "in.csv", "x1,x2,y", table)
    r = run([FLOWFEM, "convert", source, str(tmp_path / "out.npy")])
    wrote = f"wrote {tmp_path / 'out.npy'}: 25 rows, 2 inputs, 1 output (0.000728 MB)\n"  # 128 + 25 * 24 bytes
    assert r.returncode == 0 and r.stdout == wrote, r.stdout + r.stderr
    same(data.load(tmp_path / "out.npy"), data.load(source))
    r = run([FLOWFEM, "convert", source, str(tmp_path / "out.npy")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists; pass --force" in r.stderr, r.stderr
    cases = bad_sources(tmp_path)
    for ranks in (1, 2):  # under mpirun: every rank ends, status 2, one line, no hang
        for name in ("nan.csv", "letters.csv", "nox.npz"):
            before = sorted(os.listdir(tmp_path))
            r = run([FLOWFEM, "convert", str(tmp_path / name), str(tmp_path / "bad.h5"), "--chunk", "4"],
                    ranks=ranks, timeout=120)
            assert r.returncode == 2, (name, ranks, r.returncode, r.stderr)
            assert r.stderr.startswith("flowfem: error: data file ") and r.stderr.count("\n") == 1, r.stderr
            assert cases[name] in r.stderr and sorted(os.listdir(tmp_path)) == before
    r = run([FLOWFEM, "convert", source, str(tmp_path / "two.npz")], ranks=2, timeout=120)
    assert r.returncode == 0 and r.stdout.count("wrote") == 1, r.stdout + r.stderr  # rank 0 writes, once
    same(data.load(tmp_path / "two.npz"), data.load(source))
    r = run([FLOWFEM, "convert", source, str(tmp_path / "x.npy"), "--chunk", "0"])
    assert r.returncode == 2 and "argument --chunk: 0 must be a whole number >= 1" in r.stderr


def test_progress_bar_under_flowfem_progress(tmp_path):
    source = write_csv(tmp_path / "in.csv", "x1,y", np.ones((1000, 2)))
    r = run([sys.executable, "-m", "flowfem.cli", "convert", source, str(tmp_path / "out.npy"), "--chunk", "100"],
            env=dict(os.environ, FLOWFEM_PROGRESS="1"))
    assert r.returncode == 0 and "convert in.csv" in r.stderr, r.stderr
    r = run([sys.executable, "-m", "flowfem.cli", "convert", source, str(tmp_path / "q.npy"), "--quiet"],
            env=dict(os.environ, FLOWFEM_PROGRESS="1"))
    assert r.returncode == 0 and r.stderr == ""


def test_commands_read_the_converted_files_as_the_csv(tmp_path):
    """flowfem predict on a CSV of inputs and on its .npy, .npz and .h5: the same predictions, byte for byte."""
    from flowfem.network import Network

    rng = np.random.default_rng(4)
    Network(rng.standard_normal((8, 2)), rng.standard_normal(8), rng.standard_normal(8), "relu").save(
        tmp_path / "net.npz")
    source = write_csv(tmp_path / "in.csv", "x2,x1", rng.uniform(-1, 1, (30, 2)))
    outputs = []
    for name in ("in.csv", "in.npy", "in.npz", "in.h5"):
        if name != "in.csv":
            convert.convert(source, tmp_path / name)
        r = run([FLOWFEM, "predict", "--network", str(tmp_path / "net.npz"), "--data", str(tmp_path / name)])
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout)
    assert outputs[1:] == outputs[:1] * 3 and len(outputs[0].splitlines()) == 31
