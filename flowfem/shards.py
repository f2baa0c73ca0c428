"""The rows of a data file split over MPI ranks: each rank reads only its own slice.

Rows j = 0..n-1 are split into P contiguous ranges, rank r holding
``rows(n, P, r)``: the first n mod P ranks hold floor(n / P) + 1 rows, the
others floor(n / P) (a rank holds none when n < P). Concatenated in rank
order the slices are the file's rows in order.

:func:`read` gives a rank its slice as arrays (a :class:`Shard`);
:func:`chunks` streams it in pieces of at most ``rows`` rows (memory
O(rows (d + m)), for a one-pass accumulation such as per-bin moments). Both are
collective over ``comm``: rank 0 reads the file's header and every rank gets
the layout or the same error; after its rows every rank learns whether any
rank failed, and all raise the same :class:`flowfem.mpi.CollectiveError`
(one line naming the file, the problem and the fix: the lowest failing
rank's, which for a bad value is the first bad row of the file).

Formats, columns **by name** as in :mod:`flowfem.data` (x1..xd inputs; y, or
y1..ym for m outputs, or none for inputs only; f, f1..fm ignored):

* ``.npy`` (the format for large data, written by ``flowfem convert``): one
  structured array of shape (n,) whose fields are named like CSV columns,
  each a real number (flowfem writes little-endian float64), e.g. dtype
  ``[('x1', '<f8'), ('y', '<f8')]``: 8 (d + m) bytes a row, 1.6 GB for
  n = 10^8 with d = m = 1. A plain (n, k) array is refused: which of its
  columns are targets would be a guess. A rank's rows are one contiguous
  byte range: one seek and one ``readinto``.
* ``.npz`` with arrays ``x`` (n, d) or (n,) and ``y`` (n,), (n, 1) or (n, m)
  (``np.savez``). An uncompressed member is a ``.npy`` stored at an offset in
  the zip: a rank reads the bytes of its rows there (one range per array, d
  ranges for a Fortran-ordered x). A compressed member (``np.savez_compressed``)
  cannot be seeked: a rank decompresses it from the start in a stream, keeping
  only its rows (memory O(rows)), so rank P - 1 reads the whole member; convert
  such a file. The zip's CRCs are not checked (that would need every byte).
* ``.h5`` / ``.hdf5`` with datasets ``x`` and ``y`` of the same shapes,
  read through h5py by hyperslab (a contiguous dataset: its rows' bytes; a
  chunked one: the chunks that hold them).
* ``.csv``: rank 0 reads the whole file (:func:`flowfem.data.load`) and sends
  each rank its rows. For small files; convert large ones.

Every value is read as float64 and must be finite; shapes, names and dtypes
are checked as :func:`flowfem.data.check` and :func:`flowfem.data.load`
check them. Besides its rows a rank reads nothing of the data: rank 0 reads
the headers (a few hundred bytes; for NPZ and HDF5 also the archive's
directory or the file's metadata).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from mpi4py import MPI

from flowfem.data import columns
from flowfem.files import check_npz_start, check_readable
from flowfem.mpi import CollectiveError, message, on_root

CHUNK_BYTES = 8 << 20  # default chunk of chunks(): 8 MiB of float64 values (524288 rows of x1, y)
NPY_HINT = ("a .npy data file holds one structured array of shape (n,) with real fields x1..xd and y (or y1..ym), "
            "e.g. written by flowfem convert data.csv data.npy")
NPZ_HINT = ("an NPZ data file holds arrays x (n, d) and y (n,) or (n, m), e.g. written by "
            "np.savez(path, x=x, y=y)")
H5_HINT = ("an HDF5 data file holds datasets x (n, d) and y (n,) or (n, m), e.g. written by "
           "flowfem convert data.csv data.h5")
_REAL = "biuf"  # dtype kinds read as float64: bool, integers, floats (not complex, strings, objects)


def rows(n: int, size: int, rank: int) -> range:
    """The rows [start, stop) of ``rank`` among ``size`` ranks: contiguous, balanced (sizes differ by at
    most one, the larger first), empty when n <= rank < size."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return range(start, start + q + (rank < r))


def offsets(n: int, size: int) -> np.ndarray:
    """(size + 1,) int64: rank r holds rows offsets[r]..offsets[r + 1] - 1 (:func:`rows`)."""
    return np.array([rows(n, size, r).start for r in range(size)] + [n], dtype=np.int64)


@dataclass
class Shard:
    """Rows ``start .. start + k - 1`` of a data file of ``n`` rows: inputs x (k, d) float64, targets y
    (k,) for one output, (k, m) for m >= 2, or None (a file without targets); k may be 0."""

    x: np.ndarray
    y: np.ndarray | None
    start: int
    n: int

    @property
    def rows(self) -> range:
        return range(self.start, self.start + self.x.shape[0])


@dataclass(frozen=True)
class _Array:
    """One array of numbers stored C-ordered (or Fortran-ordered) at byte ``offset`` of a stream:
    the file itself, or a compressed zip ``member`` decompressed in order."""

    offset: int
    dtype: np.dtype
    shape: tuple
    fortran: bool = False
    member: str | None = None

    def read(self, fh, a: int, b: int) -> np.ndarray:
        """Rows a..b-1, shape (b - a,) + shape[1:], in the file's dtype: only their bytes are read."""
        k, n, width = b - a, self.shape[0], int(np.prod(self.shape[1:], dtype=np.int64))
        if not self.fortran or width == 1:
            out = np.empty((k,) + self.shape[1:], self.dtype)
            _readinto(fh, self.offset + a * width * self.dtype.itemsize, out)
            return out
        out = np.empty((width, k), self.dtype)
        for j in range(width):  # a column of a Fortran-ordered (n, width) array is contiguous
            _readinto(fh, self.offset + (j * n + a) * self.dtype.itemsize, out[j])
        return out.T


def _readinto(fh, position: int, out: np.ndarray) -> None:
    """Fill ``out`` (contiguous) with the stream's bytes from ``position``: a seek and reads."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    if not len(view):
        return  # no seek either: in a compressed member a seek decompresses up to the position
    fh.seek(position)
    done = 0
    while done < len(view):
        got = fh.readinto(view[done:])
        if not got:
            raise ValueError(f"the file ends {len(view) - done} bytes short of the rows its header promises "
                             "(truncated, or changed while being read); write it again")
        done += got


@dataclass(frozen=True)
class _Layout:
    """Where a file's rows are: its format, n, d, m (0: no targets) and the arrays or fields of x and y."""

    path: str
    kind: str  # npy, npz or h5
    n: int
    d: int
    m: int
    x: _Array | str | None = None  # an _Array (npy, npz) or a dataset's name (h5)
    y: _Array | str | None = None
    x_fields: tuple = ()  # npy: the fields x1..xd in order, and y or y1..ym
    y_fields: tuple = ()

    @contextlib.contextmanager
    def reader(self):
        """Yield a function (a, b) -> (x (b - a, d), y (b - a,) or (b - a, m) or None), float64 rows a..b-1."""
        with contextlib.ExitStack() as stack:
            if self.kind == "h5":
                import h5py

                f = stack.enter_context(h5py.File(self.path, "r"))
                yield lambda a, b: _as_float(f[self.x][a:b], None if self.y is None else f[self.y][a:b])
                return
            raw = stack.enter_context(open(self.path, "rb", buffering=0))  # unbuffered: reads what is asked
            if self.kind == "npy":
                yield lambda a, b: self._fields(raw, a, b)
                return
            compressed = [a for a in (self.x, self.y) if a is not None and a.member]
            archive = stack.enter_context(zipfile.ZipFile(raw)) if compressed else None
            streams = {a.member: stack.enter_context(archive.open(a.member)) for a in compressed}

            def source(array):
                return streams[array.member] if array.member else raw

            yield lambda a, b: _as_float(self.x.read(source(self.x), a, b),
                                         None if self.y is None else self.y.read(source(self.y), a, b))

    def _fields(self, raw, a: int, b: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows a..b-1 of a structured .npy, its fields copied into x and y CHUNK_BYTES of records at a
        time: the records are never held whole beside x and y (peak memory x, y and one piece)."""
        x, y = np.empty((b - a, self.d)), (np.empty((b - a, self.m)) if self.m else None)
        step = max(1, CHUNK_BYTES // self.x.dtype.itemsize)
        for start in range(a, b, step):
            records = self.x.read(raw, start, min(start + step, b))
            part = slice(start - a, start - a + len(records))
            for i, name in enumerate(self.x_fields):
                x[part, i] = records[name]
            for i, name in enumerate(self.y_fields):
                y[part, i] = records[name]
        return x, (y[:, 0] if self.m == 1 else y)


def _as_float(x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """x as (k, d) and y as (k,) or (k, m) float64 arrays (the shapes data.check returns)."""
    x = np.asarray(x, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    if y is not None:
        y = np.asarray(y, dtype=float)
        y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    return x, y


def _shapes(what: str, xshape: tuple, yshape: tuple | None) -> tuple[int, int, int]:
    """(n, d, m) of arrays x and y of these shapes (m = 0 without y), checked as data.check checks them."""
    if len(xshape) not in (1, 2) or xshape[0] == 0 or (len(xshape) == 2 and xshape[1] == 0):
        raise ValueError(f"{what}: inputs x have shape {xshape}; expected (n, d) with n >= 1, or (n,) for d = 1")
    n, d = xshape[0], (1 if len(xshape) == 1 else xshape[1])
    if yshape is None:
        return n, d, 0
    if len(yshape) not in (1, 2) or yshape[0] != n or 0 in yshape:
        raise ValueError(f"{what}: targets y have shape {yshape}; expected ({n},), or ({n}, m) for m outputs, "
                         "one row per input")
    return n, d, (1 if len(yshape) == 1 else yshape[1])


def _real(what: str, name: str, dtype: np.dtype, hint: str) -> None:
    """Refuse a dtype that is not one real number (read as float64) in the words of files.read_npz."""
    if dtype.kind == "O" and hint != H5_HINT:  # never unpickled: only the header was read
        raise ValueError(f"cannot read {what}: {name} contains pickled objects (dtype object), which flowfem "
                         f"refuses to load (it could run code); {hint}")
    if dtype.kind not in _REAL or dtype.shape or dtype.names:
        raise ValueError(f"{what}: {name} holds dtype {dtype}, not real numbers; {hint}")


def _npy_header(fh, what: str, hint: str, name: str = "its .npy header") -> tuple[int, tuple, bool, np.dtype]:
    """(offset after the header, shape, fortran_order, dtype) of the .npy stream at fh's position; ``name``
    says what is damaged if the header cannot be read."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}, flowfem reads 1.0 and 2.0")
        shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(fh)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"cannot read {what}: {name} is damaged ({' '.join(str(e).split())}); {hint}") from None
    return fh.tell(), tuple(shape), bool(fortran), dtype


def _check_size(what: str, end: int, available: int) -> None:
    if end > available:
        raise ValueError(f"cannot read {what}: the file is truncated (its header promises {end} bytes, it holds "
                         f"{available}); write it again")


def _open_npy(path: str, what: str) -> _Layout:
    with open(path, "rb") as fh:
        magic = fh.read(6)
        if magic.startswith(b"PK"):
            raise ValueError(f"cannot read {what}: it is a zip archive (an .npz), not a .npy array; name it .npz")
        if not magic.startswith(b"\x93NUMPY"):
            reason = "the file is empty" if not magic else "it is not a .npy array (np.save)"
            raise ValueError(f"cannot read {what}: {reason}; {NPY_HINT}")
        fh.seek(0)
        offset, shape, fortran, dtype = _npy_header(fh, what, NPY_HINT)
    if dtype.names is None:
        raise ValueError(f"{what}: a plain array of shape {shape} and dtype {dtype} does not say which columns are "
                         f"inputs and which targets; {NPY_HINT}, or an .npz with arrays x and y")
    if len(shape) != 1:
        raise ValueError(f"{what}: the structured array has shape {shape}; expected (n,), one record per data point")
    for name in dtype.names:
        _real(what, f"field {name!r}", dtype.fields[name][0], NPY_HINT)
    xcols, ycol = columns(list(dtype.names), what)
    targets = [] if ycol is None else [dtype.names[i] for i in (ycol if isinstance(ycol, list) else [ycol])]
    if shape[0] == 0:
        raise ValueError(f"{what} has no rows (shape {shape}); write at least one data point")
    _check_size(what, offset + shape[0] * dtype.itemsize, os.path.getsize(path))
    return _Layout(path, "npy", shape[0], len(xcols), len(targets), x=_Array(offset, dtype, shape),
                   x_fields=tuple(dtype.names[i] for i in xcols), y_fields=tuple(targets))


def _check_members(what: str, names, unknown: str, holds: str, noun: str) -> None:
    """ValueError unless a file's named members (arrays of an NPZ, objects of an HDF5 file) are x and
    perhaps y: ``unknown`` and ``noun`` name them in the message, ``holds`` says what the file holds."""
    extra = sorted(set(names) - {"x", "y"})
    if extra:
        raise ValueError(f"{what}: unknown {unknown} {', '.join(map(repr, extra))}; {holds}")
    if "x" not in names:
        raise ValueError(f"{what} has no {noun} 'x' of inputs (n, d)")


def _open_npz(path: str, what: str) -> _Layout:
    def fail(reason: str) -> ValueError:
        return ValueError(f"cannot read {what}: {reason}; {NPZ_HINT}")

    check_npz_start(path, fail)
    arrays, key = {}, None
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise fail(f"member {info.filename!r} is not a .npy array")
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            _check_members(what, members, "array(s)", "an NPZ data file holds x and y only", "array")
            for key, info in members.items():
                if info.compress_type == zipfile.ZIP_STORED:  # the .npy is in the file at an offset
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    if len(local) < 30 or local[:4] != b"PK\x03\x04":
                        raise zipfile.BadZipFile(f"no local header of {info.filename!r}")
                    start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))  # name, extra
                    fh.seek(start)
                    offset, shape, fortran, dtype = _npy_header(fh, what, NPZ_HINT, f"array {key!r}")
                    _real(what, f"array {key!r}", dtype, NPZ_HINT)  # before the size: objects are pickled
                    _check_size(what, offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,
                                min(start + info.file_size, os.path.getsize(path)))
                    arrays[key] = _Array(offset, dtype, shape, fortran)
                else:
                    with archive.open(info) as member:
                        offset, shape, fortran, dtype = _npy_header(member, what, NPZ_HINT, f"array {key!r}")
                    _real(what, f"array {key!r}", dtype, NPZ_HINT)
                    arrays[key] = _Array(offset, dtype, shape, fortran, member=info.filename)
    except zipfile.BadZipFile as e:
        raise fail(f"the zip archive is damaged, truncated or changed in transfer ({e})") from None
    except (zlib.error, EOFError) as e:
        raise fail(f"array {key!r} is damaged: its data do not decompress ({e})") from None
    n, d, m = _shapes(what, arrays["x"].shape, arrays["y"].shape if "y" in arrays else None)
    return _Layout(path, "npz", n, d, m, x=arrays["x"], y=arrays.get("y"))


def _open_h5(path: str, what: str) -> _Layout:
    import h5py

    shapes = {}
    try:
        with h5py.File(path, "r") as f:
            _check_members(what, set(f), "object(s)", "an HDF5 data file holds datasets x and y only", "dataset")
            for key in ("x", "y"):
                if key in f:
                    if not isinstance(f[key], h5py.Dataset):
                        raise ValueError(f"{what}: {key!r} is a group, not a dataset; {H5_HINT}")
                    _real(what, f"dataset {key!r}", f[key].dtype, H5_HINT)
                    shapes[key] = f[key].shape
    except OSError as e:
        raise ValueError(f"cannot read {what}: it is not an HDF5 file, or a damaged or truncated one "
                         f"({' '.join(str(e).split())}); {H5_HINT}") from None
    n, d, m = _shapes(what, shapes["x"], shapes.get("y"))
    return _Layout(path, "h5", n, d, m, x="x", y="y" if "y" in shapes else None)


def layout(path: str | os.PathLike, require_y: bool = True) -> _Layout:
    """The layout of a .npy, .npz or .h5 data file, from its header (serial; :func:`read` and
    :func:`chunks` call it on rank 0). Raises ValueError (one line) for a file that is missing,
    unreadable, damaged, truncated, of another format, of unknown arrays or columns, of
    non-real dtype, of wrong shapes, or without targets when ``require_y``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"data file must be named by a path (str), got {path!r} ({type(path).__name__})")
    path = os.fspath(path)
    what, ext = f"data file {path!r}", os.path.splitext(path)[1].lower()
    hint = {".npy": NPY_HINT, ".npz": NPZ_HINT, ".h5": H5_HINT, ".hdf5": H5_HINT}.get(ext)
    if hint is None:
        raise ValueError(f"{what}: use a .npy, .npz, .h5 or .csv file")
    check_readable(path, "data file", hint)
    found = {".npy": _open_npy, ".npz": _open_npz}.get(ext, _open_h5)(path, what)
    if found.m == 0 and require_y:
        raise ValueError(f"{what} has no targets y: add a field (.npy), array (NPZ) or dataset (HDF5) named y "
                         "(or y1..ym for m outputs)")
    return found


def check_finite(what: str, x: np.ndarray, y: np.ndarray | None, start: int) -> None:
    """Raise ValueError unless x and y (rows ``start``.. of a file, or None) are finite: data.check's
    test and message, the first bad row numbered in the whole file."""
    for name, values in (("inputs x", x), ("targets y", y)):
        if values is not None and not np.all(np.isfinite(values)):
            bad = start + int(np.argwhere(~np.isfinite(values.reshape(values.shape[0], -1)))[0, 0])
            raise ValueError(f"{what}: {name} contain NaN or inf (first at row {bad}, counting rows from 0); "
                             "remove or fill those rows")


def _failure(what: str, e: Exception) -> str:
    """The line of a failure while reading rows, naming the file (a short read or h5py's OSError do not)."""
    text = message(e)
    return text if text.startswith((what, "cannot read")) else f"cannot read {what}: {text}"


def _agree(comm: MPI.Comm, error: str | None) -> None:
    """Collective: raise the lowest rank's error (the first bad row) on every rank if any rank has one."""
    first = next((e for e in comm.allgather(error) if e is not None), None)
    if first is not None:
        raise CollectiveError(first)


def _is_csv(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".csv")


def _csv(path: str, comm: MPI.Comm, require_y: bool) -> tuple:
    """Rank 0 reads the CSV (data.load); every rank gets (x, y, n) of its rows (collective)."""
    from flowfem import data

    ds = on_root(comm, lambda: data.load(path, require_y), bcast=False)
    parts = None
    if comm.rank == 0:
        cuts = offsets(ds.n, comm.size)
        parts = [(ds.x[a:b], None if ds.y is None else ds.y[a:b], ds.n) for a, b in zip(cuts[:-1], cuts[1:])]
    return comm.scatter(parts, root=0)


def read(path: str | os.PathLike, comm: MPI.Comm = MPI.COMM_WORLD, require_y: bool = True) -> Shard:
    """This rank's rows, :func:`rows` (n, comm.size, comm.rank), of a data file (collective over comm).

    Returns a :class:`Shard`: x (k, d) float64, y (k,) or (k, m) float64, or None (only if not
    ``require_y``). Rank 0 reads the header and each rank only the bytes of its rows (see the
    module docstring; a CSV is read whole by rank 0). Raises the same
    :class:`flowfem.mpi.CollectiveError` (a ValueError) on every rank if any rank fails.
    """
    if _is_csv(path):
        x, y, n = _csv(os.fspath(path), comm, require_y)
        return Shard(x, y, rows(n, comm.size, comm.rank).start, n)
    found = on_root(comm, lambda: layout(path, require_y))
    mine, error, shard, what = rows(found.n, comm.size, comm.rank), None, None, f"data file {found.path!r}"
    try:
        with found.reader() as read_rows:
            x, y = read_rows(mine.start, mine.stop)
        check_finite(what, x, y, mine.start)
        shard = Shard(x, y, mine.start, found.n)
    except Exception as e:  # noqa: BLE001  (any failure: the other ranks must raise it too)
        error = _failure(what, e)
    _agree(comm, error)
    return shard


class Stream:
    """This rank's rows of a data file in chunks of at most ``chunk`` rows: iterate once, to the end.

    Made by :func:`chunks`. Attributes: ``n`` (rows in the file), ``d``, ``outputs`` (m; 0
    without targets), ``rows`` (this rank's range), ``chunk``. Iterating yields :class:`Shard` s
    in row order, memory O(chunk (d + m)) for .npy, .npz and .h5 (a CSV is held whole: rank 0
    reads it and scatters it). The end of the loop is collective: if any rank met an error (a
    non-finite value, a truncated file), every rank raises the same CollectiveError there, so
    the loop body must not communicate (accumulate locally, reduce after the loop).
    """

    def __init__(self, path, comm: MPI.Comm, chunk: int | None, require_y: bool):
        self.comm = comm
        if _is_csv(path):
            self.path, self._layout = os.fspath(path), None
            x, y, self.n = _csv(self.path, comm, require_y)
            self._held = (x, y)
            self.d, self.outputs = x.shape[1], (0 if y is None else 1 if y.ndim == 1 else y.shape[1])
        else:
            self._layout = on_root(comm, lambda: layout(path, require_y))
            self.path, self.n, self.d, self.outputs = self._layout.path, self._layout.n, self._layout.d, self._layout.m
        self.rows = rows(self.n, comm.size, comm.rank)
        self.chunk = max(1, chunk or CHUNK_BYTES // (8 * (self.d + self.outputs)))

    def __iter__(self) -> Iterator[Shard]:
        error, what = None, f"data file {self.path!r}"
        try:
            with (contextlib.nullcontext() if self._layout is None else self._layout.reader()) as read_rows:
                for a in range(self.rows.start, self.rows.stop, self.chunk):
                    b = min(a + self.chunk, self.rows.stop)
                    if read_rows is None:
                        i, j = a - self.rows.start, b - self.rows.start
                        x, y = self._held[0][i:j], (None if self._held[1] is None else self._held[1][i:j])
                    else:
                        x, y = read_rows(a, b)
                        check_finite(what, x, y, a)
                    yield Shard(x, y, a, self.n)
        except Exception as e:  # noqa: BLE001  (a failure here: every rank raises it at the end of the loop)
            error = _failure(what, e)
        _agree(self.comm, error)


def chunks(path: str | os.PathLike, comm: MPI.Comm = MPI.COMM_WORLD, rows: int | None = None,
           require_y: bool = True) -> Stream:
    """This rank's rows of a data file as a :class:`Stream` of chunks of at most ``rows`` rows
    (default: CHUNK_BYTES of float64 values a chunk). Collective: opening (rank 0 reads the
    header; the same ValueError on every rank) and the end of the iteration (see :class:`Stream`)."""
    return Stream(path, comm, rows, require_y)
