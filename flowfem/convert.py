"""Data files rewritten for large n: a CSV of any size (or any data file) streamed into .npy, .npz or .h5.

``flowfem convert data.csv data.npy`` reads the source ``chunk`` rows at a
time (memory O(chunk (d + m)), whatever n) with the rules of
:func:`flowfem.data.load`: CSV columns by name (x1..xd, y or y1..ym, f and
f1..fm ignored, a header required), every value a finite number (the first
bad line, or the first non-finite row counted from 0 below the header as
:func:`flowfem.data.check` counts it, is named). The written file reads back
with :func:`flowfem.data.load` as the same arrays, and rank by rank with
:func:`flowfem.shards.read` (each MPI rank only its rows). The target's
suffix chooses the format:

* ``.npy`` (recommended for large data): the structured array of
  :mod:`flowfem.shards`, fields x1..xd then y (one output) or y1..ym, each
  little-endian float64, 8 (d + m) bytes a row; a rank's rows are one byte
  range. Written in one pass: the header is written first with room for any
  n (up to 10^20 rows), then rewritten with the true n.
* ``.npz``: arrays x (n, d) and y (n,) or (n, m), float64, uncompressed (the
  layout of ``np.savez``; any NumPy reads it). The .npy headers inside the
  zip need n first, so a CSV goes first into a hidden temporary .npy beside
  the target and from there into the archive: twice the disk writes.
* ``.h5`` / ``.hdf5``: contiguous float64 datasets x (n, d) and y (n,) or
  (n, m) (h5py), from a CSV also through the temporary .npy.

Nothing half-written: the target is written under a temporary name and
renamed over it at the end (:func:`flowfem.files.replacing`); on any error
the temporary files are removed and an existing target is left untouched.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import warnings

import numpy as np
from mpi4py import MPI

from flowfem import data, progress, shards
from flowfem.arguments import at_least
from flowfem.files import check_readable, check_writable, replacing

FORMATS = (".npy", ".npz", ".h5", ".hdf5")
CHUNK_ROWS = 100_000  # rows parsed at a time: about 3 MB of CSV text for d = 1
_HEADER_DIGITS = 20  # the .npy header is written before n is known, with room for n < 10^20


def _columns(d: int, m: int) -> list[str]:
    """The field names of d inputs and m outputs: x1..xd, then y (m = 1) or y1..ym."""
    return [f"x{i + 1}" for i in range(d)] + (["y"] if m == 1 else [f"y{k + 1}" for k in range(m)])


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """A .npy version 1.0 header of a C-ordered (n,) array of ``dtype``, of the same length for every
    n < 10^20 (a multiple of 64 bytes, as NumPy aligns it), so that it can be rewritten in place."""
    def body(rows: str) -> str:
        return "{'descr': %r, 'fortran_order': False, 'shape': (%s,), }" % (np.lib.format.dtype_to_descr(dtype), rows)

    size = -(-(10 + len(body("9" * _HEADER_DIGITS)) + 1) // 64) * 64  # magic, version, length, text, newline
    text = body(str(n))
    return (b"\x93NUMPY\x01\x00" + (size - 10).to_bytes(2, "little")
            + (text + " " * (size - 11 - len(text)) + "\n").encode("latin1"))


class NpyWriter:
    """Rows appended to a structured .npy file (fields x1..xd, y or y1..ym, '<f8'); n set on close.

    ``write(x, y)`` appends rows x (k, d) and y (k, m) or None; ``close()`` writes the header with
    the number of rows written. For a file larger than memory (a benchmark's 10^8 rows): write it
    in pieces, under a temporary name (:func:`flowfem.files.replacing`) if it must appear whole.
    """

    def __init__(self, path: str, d: int, m: int):
        self.dtype = np.dtype([(name, "<f8") for name in _columns(d, m)])
        self.n = 0
        self.fh = open(path, "wb")
        self.fh.write(_npy_header(self.dtype, 0))

    def write(self, x: np.ndarray, y: np.ndarray | None) -> None:
        records = np.empty(len(x), self.dtype)
        values = x if y is None else np.column_stack([x, y])
        for i, name in enumerate(self.dtype.names):
            records[name] = values[:, i]
        self.fh.write(records.tobytes())
        self.n += len(x)

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(_npy_header(self.dtype, self.n))
        self.fh.close()


def _parse(lines: list[str], k: int, what: str, line: int) -> np.ndarray:
    """The numbers of CSV ``lines`` (the first is line ``line`` of the file) as a (rows, k) table; blank
    and ``#`` comment lines are skipped as :func:`flowfem.data.load` skips them. ValueError naming
    the first line that is not k numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a chunk of blank lines: no rows, no warning
        try:
            table = np.loadtxt(lines, delimiter=",", ndmin=2)
            if table.shape[0] == 0:  # blank and comment lines only
                return np.empty((0, k))
            if table.shape[1] == k:
                return table
        except ValueError:
            pass
        for i, text in enumerate(lines):  # the first bad line, to name it
            try:
                row = np.loadtxt([text], delimiter=",", ndmin=2)
            except ValueError as e:  # NumPy's "... at row 0, column 2": the row is this line
                reason = re.sub(r" at row \d+, (column \d+)\.?", r" in \1", " ".join(str(e).split()))
                raise ValueError(f"{what}: line {line + i} is not numbers ({reason}); fix or remove it") from None
            if row.size and row.shape[1] != k:
                raise ValueError(f"{what}: line {line + i} has {row.shape[1]} columns, the header names {k}; "
                                 "fix or remove it")
    raise ValueError(f"{what}: lines {line}..{line + len(lines) - 1} are not {k} numbers a line")


def _csv_to_npy(source: str, target: str, chunk: int, bar) -> tuple[int, int, int]:
    """Stream the CSV ``source`` into the structured .npy ``target``; (n, d, m)."""
    what = f"data file {source!r}"
    try:
        with open(source, newline="", encoding="utf-8-sig") as fh:
            names, xcols, ycol = data.csv_header(fh, what)
            ycols = [] if ycol is None else ycol if isinstance(ycol, list) else [ycol]
            writer = NpyWriter(target, len(xcols), len(ycols))
            try:
                line = 2  # the first line below the header
                while lines := list(itertools.islice(fh, chunk)):
                    table = _parse(lines, len(names), what, line)
                    x, y = table[:, xcols], (table[:, ycols] if ycols else None)
                    shards.check_finite(what, x, y, writer.n)  # rows counted as data.check counts them
                    writer.write(x, y)
                    line += len(lines)
                    bar.update(sum(map(len, lines)))
            finally:
                writer.close()
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text; write the CSV as UTF-8") from None
    if writer.n == 0:
        raise ValueError(f"{what} has a header but no rows of data")
    return writer.n, len(xcols), len(ycols)


def _write(path: str, ext: str, parts, n: int, d: int, m: int) -> None:
    """Write the rows given by ``parts()`` (a fresh iterable of Shards, in row order) as ``ext``."""
    if ext == ".npy":
        writer = NpyWriter(path, d, m)
        try:
            for part in parts():
                writer.write(part.x, None if part.y is None else part.y.reshape(len(part.x), -1))
        finally:
            writer.close()
    elif ext == ".npz":
        import zipfile

        shapes = {"x": (n, d)} | ({"y": (n,) if m == 1 else (n, m)} if m else {})
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, shape in shapes.items():  # one pass over the rows for each array
                with archive.open(f"{key}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
                    for part in parts():
                        fh.write(np.ascontiguousarray(getattr(part, key), dtype="<f8").tobytes())
    else:
        import h5py

        with h5py.File(path, "w") as f:
            x = f.create_dataset("x", (n, d), "<f8")
            y = f.create_dataset("y", (n,) if m == 1 else (n, m), "<f8") if m else None
            for part in parts():
                x[part.rows.start:part.rows.stop] = part.x
                if y is not None:
                    y[part.rows.start:part.rows.stop] = part.y


def _format(target: str) -> str:
    ext = os.path.splitext(target)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"output data file {target!r}: name it .npy (recommended for large data: each MPI rank "
                         "reads only its rows), .npz, .h5 or .hdf5")
    return ext


def write(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Write arrays x (n, d) and y (n,), (n, m) or None as a .npy, .npz or .h5 data file (format by
    suffix, see the module docstring), atomically (:func:`flowfem.files.replacing`). The arrays
    pass :func:`flowfem.data.check` first (ValueError)."""
    path = os.fspath(path)
    ext = _format(path)
    x, y = data.check(x, y, what=f"data for {path!r}")
    m = 0 if y is None else 1 if y.ndim == 1 else y.shape[1]
    pieces = range(0, len(x), CHUNK_ROWS)  # the file's temporaries stay O(CHUNK_ROWS) whatever n
    with replacing(path, ext) as tmp:
        _write(tmp, ext, lambda: (shards.Shard(x[a:a + CHUNK_ROWS], None if y is None else y[a:a + CHUNK_ROWS], a,
                                               len(x)) for a in pieces), len(x), x.shape[1], m)


def convert(source: str | os.PathLike, target: str | os.PathLike, chunk: int = CHUNK_ROWS,
            force: bool | None = None, show_progress: bool = False) -> str:
    """Stream the data file ``source`` (CSV of any size, .npz, .npy or .h5) into ``target`` (.npy,
    .npz, .h5 or .hdf5 by suffix), ``chunk`` rows at a time; return the line that reports it.

    ``force``: as :func:`flowfem.files.check_writable` (False: an existing target is refused;
    True: replaced only if flowfem wrote it, by its record ``.NAME.flowfem``, and it is not the
    source; None: replaced). A progress bar (bytes of CSV,
    else rows) shows if ``show_progress`` (:mod:`flowfem.progress`). Serial: run it on one
    rank. Raises ValueError (one line) for a bad source (as :func:`flowfem.data.load` would, or
    naming the first bad line), a target that cannot be written, or a full disk; nothing is
    left behind then.
    """
    source, target = os.fspath(source), os.fspath(target)
    # more rows than any file holds read it whole: islice and NumPy take at most sys.maxsize
    chunk = min(at_least("chunk", chunk, 1), sys.maxsize)
    ext = _format(target)
    check_writable(target, "output data file", force, (source,))
    csv = source.lower().endswith(".csv")
    if csv:
        check_readable(source, "data file", "give a CSV file with a header naming x1..xd and y")
    else:  # before anything is written: a bad source is refused as data.load refuses it
        found = shards.layout(source, require_y=False)
        n, d, m = found.n, found.d, found.m
    total = os.path.getsize(source) if csv else n * (2 if ext == ".npz" and m else 1)  # npz: x, then y
    with replacing(target, ext) as tmp, \
            progress.bar(show_progress, total=total, unit="B" if csv else " rows", unit_scale=True,
                         desc=f"convert {os.path.basename(source)}", leave=False) as bar:
        if csv:
            staging = tmp if ext == ".npy" else tmp + ".rows.npy"
            try:
                n, d, m = _csv_to_npy(source, staging, chunk, bar)
                if staging != tmp:
                    _write(tmp, ext, lambda: shards.chunks(staging, MPI.COMM_SELF, chunk, require_y=False), n, d, m)
            finally:
                if staging != tmp and os.path.exists(staging):
                    os.remove(staging)
        else:
            def parts():
                for part in shards.chunks(source, MPI.COMM_SELF, chunk, require_y=False):
                    bar.update(len(part.x))
                    yield part

            _write(tmp, ext, parts, n, d, m)
    outputs = "no targets" if m == 0 else "1 output" if m == 1 else f"{m} outputs"
    return (f"wrote {target}: {n} rows, {d} input{'s' if d > 1 else ''}, {outputs} "
            f"({os.path.getsize(target) / 1e6:.3g} MB)")
