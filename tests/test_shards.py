"""Data files split over MPI ranks (flowfem.shards): each rank reads exactly its rows and only them.

Rank-agnostic and collective-safe: run serially (1 rank), by tests/test_mpi.py's suite
under mpirun -n 2, and by a test here under mpirun -n 3 (oversubscribing 2 cores). Every
rank's slice, concatenated in rank order, is compared with the serial read of the whole
file (:func:`flowfem.data.load`) and with the arrays written.
"""

import os
import re
import sys
import zipfile

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from conftest import ROOT, run
from test_errors import DAMAGED, damaged_files
from flowfem import data, shards
from flowfem.mpi import CollectiveError, on_root

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD


def arrays(n: int, d: int = 2, m: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, m)) if m else None
    return x, (y[:, 0] if m == 1 else y)


def records(x, y, order=None, dtype="<f8"):
    """The structured .npy layout: fields x1..xd, y or y1..ym (in ``order`` if given)."""
    m = 0 if y is None else 1 if y.ndim == 1 else y.shape[1]
    names = [f"x{i + 1}" for i in range(x.shape[1])] + (["y"] if m == 1 else [f"y{k + 1}" for k in range(m)])
    values = x if y is None else np.column_stack([x, y])
    order = order or names
    rec = np.empty(len(x), [(name, dtype) for name in order])
    for i, name in enumerate(names):
        rec[name] = values[:, i]
    return rec


def write(path: str, kind: str, x, y) -> str:
    """One data file of each layout the readers take (rank 0 writes; every rank gets the path or its error)."""
    on_root(comm, lambda: _write(path, kind, x, y))
    return path


def _write(path: str, kind: str, x, y) -> None:
    if kind == "npy":
        names = list(records(x, y).dtype.names)
        np.save(path, records(x, y, order=names[::-1]))  # fields in any order, taken by name
    elif kind == "npy-big-endian":
        np.save(path, records(x, y, dtype=">f8"))
    elif kind == "npz":
        np.savez(path, **({"x": x} if y is None else {"x": x, "y": y}))
    elif kind == "npz-1d":
        np.savez(path, x=x[:, 0], y=y.astype(np.float32))
    elif kind == "npz-fortran":
        np.savez(path, x=np.asfortranarray(x), y=np.asfortranarray(y))
    elif kind == "npz-compressed":
        np.savez_compressed(path, x=x, y=y)
    elif kind == "h5":
        with h5py.File(path, "w") as f:
            f["x"] = x
            if y is not None:
                f["y"] = y
    elif kind == "h5-chunked":
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=x, chunks=(min(7, len(x)), x.shape[1]), compression="gzip")
            f.create_dataset("y", data=y, chunks=(min(5, len(x)),) + y.shape[1:])
    elif kind == "csv" and y is None:
        np.savetxt(path, x, delimiter=",", header=",".join(f"x{i + 1}" for i in range(x.shape[1])), comments="")
    elif kind == "csv":
        data.save(data.Dataset(x, y), path)


SUFFIX = {"npy": ".npy", "npy-big-endian": ".npy", "npz": ".npz", "npz-1d": ".npz", "npz-fortran": ".npz",
          "npz-compressed": ".npz", "h5": ".h5", "h5-chunked": ".hdf5", "csv": ".csv"}


def gathered(part: shards.Shard):
    """Every rank's slice, concatenated in rank order, on every rank."""
    parts = comm.allgather(part)
    assert [p.start for p in parts] == list(shards.offsets(part.n, comm.size)[:-1])
    x = np.vstack([p.x for p in parts])
    y = None if parts[0].y is None else np.concatenate([p.y for p in parts])
    return x, y


# -- row ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_row_ranges_are_contiguous_balanced_and_cover_every_row(n, size):
    ranges = [shards.rows(n, size, r) for r in range(size)]
    assert [j for r in ranges for j in r] == list(range(n))  # each row once, in rank order
    lengths = [len(r) for r in ranges]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    assert list(shards.offsets(n, size)) == [r.start for r in ranges] + [n]


# -- every format, every rank count: exactly the rows of the serial read -------------------------


@pytest.mark.parametrize("kind", list(SUFFIX))
@pytest.mark.parametrize("n", [1, 2, 5, 1001])  # n = 1, 2 < 3 ranks: ranks without rows
def test_each_rank_reads_its_rows_of_every_format(shared_tmp, kind, n):
    x, y = arrays(n, d=1 if kind == "npz-1d" else 2, m=1, seed=n)
    path = write(os.path.join(shared_tmp, f"data{SUFFIX[kind]}"), kind, x, y)
    serial = data.load(path)
    if kind != "csv":  # the CSV's decimal text is exact for repr'd floats; the others are the same bits
        expected_y = y.astype(np.float32).astype(float) if kind == "npz-1d" else y
        np.testing.assert_array_equal(serial.x, x)
        np.testing.assert_array_equal(serial.y, expected_y)
    part = shards.read(path, comm)
    assert part.n == n and part.rows == shards.rows(n, comm.size, comm.rank)
    assert part.x.shape == (len(part.rows), serial.d) and part.y.shape == (len(part.rows),)
    assert part.x.dtype == np.float64 and part.y.dtype == np.float64
    gx, gy = gathered(part)
    np.testing.assert_array_equal(gx, serial.x)
    np.testing.assert_array_equal(gy, serial.y)
    stream = shards.chunks(path, comm, rows=3)
    assert (stream.n, stream.d, stream.outputs, stream.rows) == (n, serial.d, 1, part.rows)
    pieces = list(stream)
    assert all(len(p.x) <= 3 for p in pieces) and [p.start for p in pieces] == list(part.rows)[::3]
    np.testing.assert_array_equal(np.vstack([part.x[:0]] + [p.x for p in pieces]), part.x)
    np.testing.assert_array_equal(np.concatenate([part.y[:0]] + [p.y for p in pieces]), part.y)


@pytest.mark.parametrize("kind", ["npy", "npz", "npz-fortran", "h5", "csv"])
def test_several_outputs_and_inputs_only(shared_tmp, kind):
    x, y = arrays(50, d=3, m=2, seed=4)
    path = write(os.path.join(shared_tmp, f"multi{SUFFIX[kind]}"), kind, x, y)
    gx, gy = gathered(shards.read(path, comm))
    np.testing.assert_array_equal(gx, x)  # the CSV's %.18e text is exact too
    np.testing.assert_array_equal(gy, y)
    if kind == "npz-fortran":
        return
    path = write(os.path.join(shared_tmp, f"inputs{SUFFIX[kind]}"), kind, x, None)
    with pytest.raises(CollectiveError, match="has no targets y"):
        shards.read(path, comm)
    part = shards.read(path, comm, require_y=False)
    assert part.y is None
    np.testing.assert_array_equal(gathered(part)[0], x)
    assert data.load(path, require_y=False).y is None


def test_npy_records_are_copied_in_pieces_without_holding_them_whole(shared_tmp, monkeypatch):
    """read() copies a .npy's fields into x and y CHUNK_BYTES of records at a time: pieces of 7 rows here."""
    x, y = arrays(100, d=2, m=3, seed=7)
    path = write(os.path.join(shared_tmp, "pieces.npy"), "npy", x, y)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 7 * 40)
    gx, gy = gathered(shards.read(path, comm))
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)


# -- what each rank touched -----------------------------------------------------------------------


def _bytes_read() -> int:
    """rchar of /proc/self/io: bytes this process has had returned by read() and pread() calls."""
    with open("/proc/self/io") as f:
        return int(re.search(r"^rchar: (\d+)", f.read(), re.M).group(1))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize("kind", ["npy", "npz", "npz-fortran", "h5"])
def test_no_rank_reads_more_than_its_rows_and_the_headers(shared_tmp, kind):
    """A file of 4.8 MB: each rank reads its share (1/P of the rows' bytes) plus at most 64 KiB of
    headers, archive directory and HDF5 metadata, measured by the kernel's count of bytes read."""
    n, overhead = 200_000, 64 << 10
    x, y = arrays(n, d=2, m=1, seed=2)  # a Fortran-ordered x is read column by column
    write(os.path.join(shared_tmp, f"warm{SUFFIX[kind]}"), kind, x[:10], y[:10])
    shards.read(os.path.join(shared_tmp, f"warm{SUFFIX[kind]}"), comm)  # imports (h5py's modules count as reads)
    path = write(os.path.join(shared_tmp, f"big{SUFFIX[kind]}"), kind, x, y)
    before = _bytes_read()
    part = shards.read(path, comm)
    touched = _bytes_read() - before
    share = 24 * len(part.rows)  # x1, x2 and y, float64
    assert share <= touched <= share + overhead, (comm.rank, touched, share)
    if comm.size > 1:
        assert touched < os.path.getsize(path) / comm.size + overhead
    np.testing.assert_array_equal(gathered(part)[0], x)
    stream = shards.chunks(path, comm, rows=10_000)
    before = _bytes_read()
    total = sum(float(p.y.sum()) for p in stream)  # a one-pass accumulation
    assert _bytes_read() - before <= share + 2 * overhead
    assert comm.allreduce(total) == pytest.approx(float(y.sum()), rel=1e-12)


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
def test_a_compressed_member_is_streamed_up_to_the_slice_only(shared_tmp):
    """np.savez_compressed cannot be seeked: each rank decompresses up to the end of its rows and stops."""
    n = 200_000
    x, y = arrays(n, d=1, m=1, seed=3)
    write(os.path.join(shared_tmp, "warm.npz"), "npz-compressed", x[:10], y[:10])
    shards.read(os.path.join(shared_tmp, "warm.npz"), comm)
    path = write(os.path.join(shared_tmp, "zipped.npz"), "npz-compressed", x, y)
    before = _bytes_read()
    part = shards.read(path, comm)
    touched = _bytes_read() - before
    np.testing.assert_array_equal(gathered(part)[1], y)
    # about the compressed bytes before the end of this rank's rows: zipfile reads as many compressed
    # bytes as it still wants decompressed ones, a few percent more than needed (measured 4%)
    fraction = part.rows.stop / n
    assert touched <= 1.1 * fraction * os.path.getsize(path) + (64 << 10), (comm.rank, touched)
    if part.rows.stop < n:
        assert touched < 0.9 * os.path.getsize(path)


# -- bad files: one line, the same on every rank ---------------------------------------------------


def _bad_files(directory: str, x, y) -> dict:
    """Files that must be refused, and a fragment of the message each gets (written by rank 0)."""
    return on_root(comm, lambda: _write_bad_files(directory, x, y))


def _write_bad_files(directory: str, x, y) -> dict:
    cases = {}
    def at(name):
        return os.path.join(directory, name)

    np.save(at("plain.npy"), np.column_stack([x, y]))
    cases["plain.npy"] = "a plain array of shape .* does not say which columns are inputs"
    rec = records(x, y)
    np.save(at("strings.npy"), np.array([(b"a", 1.0)] * 4, [("x1", "S1"), ("y", "<f8")]))
    cases["strings.npy"] = "field 'x1' holds dtype \\|S1, not real numbers"
    np.save(at("names.npy"), rec.astype([("x1", "<f8"), ("z", "<f8")]))
    cases["names.npy"] = "unknown column\\(s\\) 'z'"
    np.save(at("gap.npy"), np.zeros(3, [("x1", "<f8"), ("x3", "<f8"), ("y", "<f8")]))
    cases["gap.npy"] = "input column\\(s\\) x2 missing"
    bad = rec.copy()
    bad["y"][-1] = np.nan  # only the last rank holds it
    np.save(at("nan.npy"), bad)
    cases["nan.npy"] = f"targets y contain NaN or inf \\(first at row {len(x) - 1}, counting rows from 0\\)"
    np.save(at("truncated.npy"), rec)
    with open(at("truncated.npy"), "r+b") as f:
        f.truncate(os.path.getsize(at("truncated.npy")) - 8)
    cases["truncated.npy"] = "the file is truncated"
    with open(at("text.npy"), "w") as f:
        f.write("x1,y\n1,2\n")
    cases["text.npy"] = "it is not a .npy array"
    np.savez(at("other.npz"), x=x, y=y, z=y)
    cases["other.npz"] = "unknown array\\(s\\) 'z'"
    np.savez(at("nox.npz"), y=y)
    cases["nox.npz"] = "has no array 'x'"
    np.savez(at("objects.npz"), x=np.array([[1.0]] * len(x), dtype=object), y=y)
    cases["objects.npz"] = "array 'x' contains pickled objects"
    np.savez(at("shape.npz"), x=x, y=y[:-1])
    cases["shape.npz"] = f"targets y have shape \\({len(x) - 1},\\); expected \\({len(x)},\\)"
    xbad = x.copy()
    xbad[1, 0] = np.inf
    np.savez(at("inf.npz"), x=xbad, y=y)
    cases["inf.npz"] = "inputs x contain NaN or inf \\(first at row 1, counting rows from 0\\)"
    np.savez(at("cut.npz"), x=x, y=y)
    with open(at("cut.npz"), "r+b") as f:
        f.truncate(os.path.getsize(at("cut.npz")) // 2)
    cases["cut.npz"] = "the zip archive is damaged, truncated"
    with h5py.File(at("noy.h5"), "w") as f:
        f["x"], f["w"] = x, y
    cases["noy.h5"] = "unknown object\\(s\\) 'w'"
    with h5py.File(at("complex.h5"), "w") as f:
        f["x"], f["y"] = x, y.astype(complex)
    cases["complex.h5"] = "dataset 'y' holds dtype complex128"
    with open(at("cut.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + bytes(100))
    cases["cut.h5"] = "not an HDF5 file, or a damaged or truncated one"
    with open(at("header.csv"), "w") as f:
        f.write("1.0,2.0\n3.0,4.0\n")
    cases["header.csv"] = "has no header"
    open(at("empty.npz"), "wb").close()
    cases["empty.npz"] = "the file is empty"
    cases["missing.npy"] = "not found"
    cases["data.txt"] = "use a .npy, .npz, .h5 or .csv file"
    return cases


def test_bad_files_fail_on_every_rank_with_the_same_line(shared_tmp):
    x, y = arrays(20, d=1, m=1, seed=5)
    for name, fragment in _bad_files(shared_tmp, x, y).items():
        path = os.path.join(shared_tmp, name)
        for reader in (lambda: shards.read(path, comm), lambda: list(shards.chunks(path, comm, rows=4))):
            with pytest.raises(ValueError) as caught:
                reader()
            text = str(caught.value)
            assert re.search(fragment, text) and "\n" not in text and repr(path) in text, (name, text)
            assert comm.allgather(text) == [text] * comm.size, name  # the same line on every rank
        if name not in ("missing.npy", "data.txt"):  # data.load names those in its own words
            with pytest.raises(ValueError, match=fragment):
                data.load(path)


@pytest.mark.parametrize("kind", DAMAGED)
def test_damaged_npz_files_are_named_as_data_load_names_them(shared_tmp, kind):
    """tests/test_errors.py's damaged archives (random bytes, empty, truncated, a corrupt deflate stream,
    objects, a pickle, a single .npy, a stray member, a bad .npy header): the reason files.read_npz
    gives, on every rank."""
    X = np.linspace(-1, 1, 40)[:, None]
    path, reason = on_root(comm, lambda: damaged_files(shared_tmp, dict(x=X, y=X[:, 0]))[kind])
    with pytest.raises(CollectiveError) as caught:
        shards.read(path, comm)
    text = str(caught.value)
    assert text.startswith(f"cannot read data file {path!r}: ") and reason in text and "\n" not in text, text
    assert "holds arrays x (n, d) and y" in text and comm.allgather(text) == [text] * comm.size


def test_a_file_cut_after_its_header_was_read_fails_on_every_rank(shared_tmp, monkeypatch):
    """The header promises 1000 rows, the file holds 500 when the ranks read: only the ranks whose rows
    are gone find out, and every rank raises their line."""
    x, y = arrays(1000, d=1, m=1, seed=6)
    path = write(os.path.join(shared_tmp, "cut.npy"), "npy", x, y)
    promised = on_root(comm, lambda: shards.layout(path))
    on_root(comm, lambda: os.truncate(path, promised.x.offset + 500 * 16))
    monkeypatch.setattr(shards, "layout", lambda *args: promised)
    for reader in (lambda: shards.read(path, comm), lambda: list(shards.chunks(path, comm, rows=100))):
        with pytest.raises(CollectiveError) as caught:
            reader()
        text = str(caught.value)
        assert text.startswith(f"cannot read data file {path!r}: the file ends ") and "short of the rows" in text
        assert comm.allgather(text) == [text] * comm.size


# -- the readers under mpirun -n 2 and -n 3 -----------------------------------------------------------


@pytest.mark.mpi
def test_this_file_passes_on_3_ranks():
    """The tests above on 3 ranks (oversubscribed on 2 cores): ranks without rows when n < 3, and
    a remainder row. 2 ranks: tests/test_mpi.py runs this file (marked parallel) under mpirun -n 2."""
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
            ranks=3, timeout=900)
    summary = re.findall(r"(\d+) passed", r.stdout)
    assert r.returncode == 0 and len(summary) == 3, r.stdout[-3000:] + r.stderr[-3000:]
    assert "failed" not in r.stdout


UNCAUGHT = """
import sys
import flowfem
from flowfem import shards
part = shards.read(sys.argv[1])
print("not reached", flush=True)
"""


@pytest.mark.mpi
def test_a_bad_file_ends_every_rank_of_a_script_without_a_hang(tmp_path):
    """The reader's error reaches the top of a script on both ranks: one line, status 2, no MPI_Abort."""
    script = tmp_path / "read.py"
    script.write_text(UNCAUGHT)
    x, y = arrays(11, d=1, m=1)
    rec = records(x, y)
    rec["x1"][-1] = np.nan  # on rank 1 only
    np.save(tmp_path / "nan.npy", rec)
    with zipfile.ZipFile(tmp_path / "dir.npz", "w") as z:
        z.writestr("x/", "")
    for name, line in (("nan.npy", "inputs x contain NaN or inf (first at row 10, counting rows from 0)"),
                       ("dir.npz", "member 'x/' is not a .npy array")):
        r = run([sys.executable, str(script), str(tmp_path / name)], ranks=2, timeout=120,
                env=dict(os.environ, PYTHONPATH=ROOT))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and line in lines[0], (name, r.returncode, r.stderr)
        assert "not reached" not in r.stdout and "Abort(" not in r.stderr
