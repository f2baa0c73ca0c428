"""Data sets (x_j, y_j), j = 1..n: the one reader of data files, the one check of arrays, synthetic sets.

Every entry point (``Problem``, ``Result``, ``particles.train``, ``Network``,
``readout.refit``, the ``flowfem`` command) reads files with :func:`load` and
checks arrays with :func:`check`; nothing else parses data.

Files, columns taken **by name**:

* CSV (UTF-8, a byte-order mark is allowed) whose first line is a header.
  ``x1..xd`` are the inputs, in numeric order wherever they stand in the
  file and without gaps; ``y`` is the target, or ``y1..ym`` the m targets of
  a multi-output regression (in numeric order, without gaps; not together
  with ``y``); ``f`` and ``f1..fm`` (the prediction columns of flowfem's own
  ``predictions.csv``) are ignored, so that file reads back as data.
  Whitespace around names and a leading ``#`` (as ``np.savetxt`` writes it)
  are allowed. Any other column (``xerr``, ``z``, ``x0``, ``y0``), a
  repeated name or a gap (``x1,x3``, ``y1,y3``) is refused by name; so is a
  file without a header.
* NPZ with arrays ``x`` (n, d) or (n,) and ``y`` (n,), (n, 1) or (n, m), nothing else.
* Large data (:mod:`flowfem.shards`, which reads them here on one rank, and rank by rank
  under MPI; ``flowfem convert`` writes them): ``.npy``, one structured array of shape (n,)
  whose fields are named like the CSV columns (``x1..xd``, ``y`` or ``y1..ym``), and HDF5
  (``.h5``, ``.hdf5``) with datasets ``x`` and ``y`` shaped as in an NPZ.

``y`` is optional only for inputs to ``flowfem predict`` (``require_y=False``).
Arrays, from a file or not, pass :func:`check`: x (n, d) (a 1-D x is one
column), y (n,), (n, 1) or (n, m), both finite; y comes back as (n,) for one
output (also from (n, 1) or a lone ``y1``) and as (n, m) for m >= 2 outputs.

Synthetic sets (seeded):

* ``sin``:       x ~ U[-1, 1], y = sin(pi x);
* ``step``:      x ~ U[-1, 1], y = sign(x) (labels in {-1, +1});
* ``two_moons``: two interleaved half circles in R^2, labels in {-1, +1},
  with Gaussian noise of standard deviation ``noise`` (default 0.1).

Real data sets by name (``iris2``, ``diabetes1``, ``engel``, ``sunspots``, ``co2``: shipped by
scikit-learn and statsmodels, see :mod:`flowfem.datasets`) are taken wherever a synthetic name
is, and split like a file.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np

from flowfem import arguments, memory
from flowfem.arguments import at_least
from flowfem.files import check_readable, check_writable, read_npz, replacing

SYNTHETIC = ("sin", "step", "two_moons")
TEST_MIN = 1000  # a synthetic test sample has max(n, TEST_MIN) points: scores of a few points would be noise
IGNORED = re.compile(r"f([1-9][0-9]*)?")  # flowfem's prediction columns: predictions.csv reads back as data
_INPUT = re.compile(r"x([1-9][0-9]*)")
_OUTPUT = re.compile(r"y([1-9][0-9]*)")


@dataclass
class Dataset:
    """Inputs x (n, d) and targets y: (n,) for one output, (n, m) for m >= 2 (None: inputs only,
    see :func:`load`)."""

    x: np.ndarray
    y: np.ndarray | None
    name: str = "data"

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]

    @property
    def outputs(self) -> int:
        """m, the number of outputs (1 for y (n,) or no y)."""
        return 1 if self.y is None or self.y.ndim == 1 else self.y.shape[1]


def check(x, y=None, input_dim: int | None = None, what: str = "data",
          takes: str = "the network", outputs: int | None = None,
          allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """x as a float (n, d) array and y as a float (n,) or (n, m) array: the one check of data arrays.

    x: (n, d) with n, d >= 1, or (n,) for d = 1. y: (n,) or (n, 1) (returned as (n,): one output),
    (n, m) with m >= 2 (m outputs), or None (returned as None).
    Both finite. ``input_dim``, if given, is the d that ``takes`` (a network, neurons) expects;
    a parameter mesh's d is checked by :func:`flowfem.space.check_parameter_dim`. ``outputs``, if
    given, is the number of outputs m that ``takes`` handles (1: y must be one column).
    ``allow_empty``: n = 0 is allowed (one MPI rank's share of sharded data may hold no rows).
    Raises ValueError naming ``what`` and the problem (shape, first non-finite row).
    """
    if x is None:
        raise ValueError(f"{what}: inputs x are missing (None); pass x of shape (n, d), or (n,) for d = 1")
    shape = np.shape(x)
    try:
        x = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: inputs x are not numbers") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or (x.shape[0] == 0 and not allow_empty) or x.shape[1] == 0:
        raise ValueError(f"{what}: inputs x have shape {shape}; expected (n, d) with n >= 1, or (n,) for d = 1")
    if input_dim is not None and x.shape[1] != input_dim:
        names = "x1" if input_dim == 1 else f"x1..x{input_dim}"
        raise ValueError(f"{what}: inputs have shape {shape}; {takes} takes (n, {input_dim}): give "
                         f"{input_dim} input column(s), {names} in a data file")
    if not np.all(np.isfinite(x)):
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise ValueError(f"{what}: inputs x contain NaN or inf (first at row {bad}, counting rows from 0); "
                         "remove or fill those rows")
    if y is None:
        return x, None
    shape = np.shape(y)
    try:
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: targets y are not numbers") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0] or (y.size == 0 and not allow_empty):
        raise ValueError(f"{what}: targets y have shape {shape}; expected ({x.shape[0]},), or "
                         f"({x.shape[0]}, m) for m outputs, one row per input")
    m = 1 if y.ndim == 1 else y.shape[1]
    if outputs is not None and m != outputs:
        raise ValueError(f"{what}: targets y have {m} outputs (shape {shape}), but {takes} takes "
                         + ("one output: give one target column y" if outputs == 1 else f"{outputs}"))
    if not np.all(np.isfinite(y)):
        bad = int(np.argwhere(~np.isfinite(y))[0, 0])
        raise ValueError(f"{what}: targets y contain NaN or inf (first at row {bad}, counting rows from 0); "
                         "remove or fill those rows")
    return x, y


def columns(names: list[str], what: str = "data") -> tuple[list[int], int | list[int] | None]:
    """Positions of x1..xd (in that order) and of the targets among the column ``names``: the
    position of y, the positions of y1..ym (a list, in that order), or None without targets.

    Raises ValueError naming the offending columns: empty, repeated, unknown, y together with
    y1..ym, or inputs or outputs with gaps (see the module docstring).
    """
    names = [n.strip() for n in names]
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"{what}: column {empty[0]} of the header has no name; name every column")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what}: column(s) {_quoted(repeated)} appear more than once in the header")
    unknown = [n for n in names if not (_INPUT.fullmatch(n) or n == "y" or _OUTPUT.fullmatch(n)
                                         or IGNORED.fullmatch(n))]
    if unknown:
        raise ValueError(f"{what}: unknown column(s) {_quoted(unknown)}; the columns are x1..xd (inputs), y "
                         "or y1..ym (targets) and f or f1..fm (ignored): rename or remove the others")
    outputs = {int(_OUTPUT.fullmatch(n).group(1)): i for i, n in enumerate(names) if _OUTPUT.fullmatch(n)}
    if outputs and "y" in names:
        raise ValueError(f"{what}: columns 'y' and {_quoted(names[i] for i in outputs.values())} both name "
                         "targets; name one output y, or m outputs y1..ym")
    gaps = [f"y{k}" for k in range(1, len(outputs) + 1) if k not in outputs]
    if gaps:
        m, found = len(outputs), ", ".join(f"y{k}" for k in sorted(outputs))
        raise ValueError(f"{what}: output column(s) {', '.join(gaps)} missing (found {found}): name the "
                         f"{m} outputs y1..y{m}, without gaps")
    inputs = {int(_INPUT.fullmatch(n).group(1)): i for i, n in enumerate(names) if _INPUT.fullmatch(n)}
    if not inputs:
        raise ValueError(f"{what}: no input columns; name the inputs x1..xd")
    missing = [f"x{k}" for k in range(1, len(inputs) + 1) if k not in inputs]  # d names, so a gap shows below d
    if missing:
        d, found = len(inputs), ", ".join(f"x{k}" for k in sorted(inputs))
        raise ValueError(f"{what}: input column(s) {', '.join(missing)} missing (found {found}): name the "
                         f"{d} inputs x1..x{d}, without gaps")
    if outputs:
        return [inputs[k] for k in sorted(inputs)], [outputs[k] for k in sorted(outputs)]
    return [inputs[k] for k in sorted(inputs)], (names.index("y") if "y" in names else None)


def _quoted(names) -> str:
    return ", ".join(repr(n) for n in names)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_header(fh, what: str = "data") -> tuple[list[str], list[int], int | list[int] | None]:
    """Read the header line of the CSV text stream ``fh`` (opened with encoding utf-8-sig, at its
    start): the column names, the positions of x1..xd and of the targets (see :func:`columns`).
    Raises ValueError for an empty file, a first line of numbers (no header) or bad names."""
    names = next(csv.reader([fh.readline().lstrip().removeprefix("#")]), [])
    if not names:
        raise ValueError(f"{what} is empty: write a header (e.g. x1,y) and one row per data point")
    if all(_is_number(n) for n in names):
        header = ",".join([f"x{i + 1}" for i in range(max(len(names) - 1, 1))] + ["y"])
        raise ValueError(f"{what} has no header: make its first line name the columns, e.g. {header} "
                         "(inputs x1..xd in any order, target y)")
    xcols, ycol = columns(names, what)
    return names, xcols, ycol


def _read_csv(path: str, what: str) -> tuple[np.ndarray, list[int], int | list[int] | None]:
    """The numbers below the header, the positions of x1..xd and of the targets (see :func:`columns`)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: drops a byte-order mark
            names, xcols, ycol = csv_header(fh, what)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a header without rows: refused below
                table = np.loadtxt(fh, delimiter=",", ndmin=2)
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text; write the CSV as UTF-8") from None
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: the rows below the header are not numbers ({e}; rows counted from 0 "
                         "below the header)") from None
    if table.size == 0:
        raise ValueError(f"{what} has a header but no rows of data")
    if table.shape[1] != len(names):
        raise ValueError(f"{what}: rows have {table.shape[1]} columns, the header names {len(names)}")
    return table, xcols, ycol


def load(path: str | os.PathLike, require_y: bool = True) -> Dataset:
    """Read a CSV, NPZ, .npy or HDF5 data file (see the module docstring) and :func:`check` it.

    ``require_y`` False: a file without y is read as inputs only (Dataset.y is None).
    Raises ValueError (one line, naming the file and the problem).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"data file must be named by a path (str), got {path!r} ({type(path).__name__})")
    path = os.fspath(path)
    what = f"data file {path!r}"
    ext = os.path.splitext(path)[1].lower()
    if not os.path.lexists(path):
        from flowfem.datasets import REAL  # it imports this module

        guess = arguments.closest(path, SYNTHETIC + tuple(REAL)) if not ext else None  # 'sine': a misspelt 'sin'
        kind = "real data set" if guess in REAL else "synthetic set"
        raise ValueError(f"{what} does not exist" + (f"; did you mean the {kind} {guess!r}?" if guess else ""))
    if ext == ".npz":
        arrays = read_npz(path, "data file", "an NPZ data file holds arrays x (n, d) and y (n,) or (n, m), e.g. "
                                              "written by np.savez(path, x=x, y=y)")
        unknown = sorted(set(arrays) - {"x", "y"})
        if unknown:
            raise ValueError(f"{what}: unknown array(s) {_quoted(unknown)}; an NPZ data file holds x and y only")
        if "x" not in arrays:
            raise ValueError(f"{what} has no array 'x' of inputs (n, d)")
        x, y = arrays["x"], arrays.get("y")
    elif ext == ".csv":
        check_readable(path, "data file", "give a CSV file with a header naming x1..xd and y")
        table, xcols, ycol = _read_csv(path, what)
        x, y = table[:, xcols], (None if ycol is None else table[:, ycol])
    elif ext in (".npy", ".h5", ".hdf5"):
        from mpi4py import MPI

        from flowfem import shards  # it imports this module

        part = shards.read(path, MPI.COMM_SELF, require_y)  # the large-data reader on one rank: every row
        x, y = part.x, part.y
    else:
        raise ValueError(f"{what}: use a .csv or .npz file (or, for large data, .npy or .h5: flowfem convert)")
    if y is None and require_y:
        raise ValueError(f"{what} has no targets y: add a column (CSV) or array (NPZ) named y "
                         "(or columns y1..ym for m outputs)")
    x, y = check(x, y, what=what)
    return Dataset(x, y, os.path.splitext(os.path.basename(path))[0])


def synthetic(name: str, n: int = 200, seed: int = 0, noise: float | None = None) -> Dataset:
    """A seeded synthetic data set (see the module docstring)."""
    n = at_least("n", n, 1, meaning="the number of points")
    # x, y, labels, angles, noise and the temporaries of making them: about 12 doubles a point (d <= 2)
    memory.require(96.0 * n, f"a synthetic data set of n = {n} points", "use fewer points")
    rng = np.random.default_rng(arguments.seed(seed))
    if name == "sin":
        x = rng.uniform(-1, 1, (n, 1))
        y = np.sin(np.pi * x[:, 0]) + (noise or 0.0) * rng.standard_normal(n)
    elif name == "step":
        x = rng.uniform(-1, 1, (n, 1))
        y = np.where(x[:, 0] > 0, 1.0, -1.0)
    elif name == "two_moons":
        label = rng.integers(0, 2, n)
        t = rng.uniform(0, np.pi, n)
        x = np.column_stack([np.cos(t), np.sin(t)])
        x[label == 1] = np.column_stack([1 - np.cos(t[label == 1]), 0.5 - np.sin(t[label == 1])])
        x = x - [0.5, 0.25]
        x += (0.1 if noise is None else noise) * rng.standard_normal(x.shape)
        y = np.where(label == 1, 1.0, -1.0)
    else:
        raise ValueError(arguments.unknown("synthetic data set", name, SYNTHETIC))
    return Dataset(x, y, name)


def named(spec: str) -> bool:
    """Whether ``spec`` names a synthetic or a real data set (which :func:`get` takes before any file)."""
    from flowfem import datasets  # it imports this module

    return spec in SYNTHETIC or spec in datasets.REAL


def get(spec: str, n: int = 200, seed: int = 0, require_y: bool = True) -> Dataset:
    """A synthetic set by name, a real one by name (:func:`flowfem.datasets.load`), or a data file
    by path (:func:`load`)."""
    from flowfem import datasets  # it imports this module

    if spec in datasets.REAL:
        return datasets.load(spec)
    return synthetic(spec, n, seed) if spec in SYNTHETIC else load(spec, require_y)


def train_test(spec: str, n: int = 1000, seed: int = 0, test: str | None = None) -> tuple[Dataset, Dataset]:
    """Training and test sets for ``spec`` (a synthetic name, a real one or a file).

    The test set is ``test`` if given (a file, or a synthetic name: a sample of max(n, TEST_MIN) points
    with seed + 1); else, for a synthetic set, a fresh sample of max(n, TEST_MIN) points with seed + 1,
    and for a file or a real set a random fifth of its rows (permutation seeded by ``seed``; the rest is
    the training set). ValueError if the two have other columns (:func:`check_test_columns`), or if
    a file of one row is to be split (no row would be left to test on)."""
    if spec in SYNTHETIC:
        train = synthetic(spec, n, seed)
        held_out = None if test else synthetic(spec, max(n, TEST_MIN), seed + 1)
    else:
        full = get(spec)
        if test:
            train, held_out = full, None
        else:
            if full.n < 2:  # no fifth to hold out: the fit would be scored on no rows
                raise ValueError(f"data file {spec!r} has {full.n} row: a random fifth of the rows is held out as "
                                 "test data, which needs 2 rows or more; add rows, or give --test-data")
            perm = np.random.default_rng(arguments.seed(seed)).permutation(full.n)
            k = max(1, full.n // 5)
            held_out = Dataset(full.x[perm[:k]], full.y[perm[:k]], full.name + "-test")
            train = Dataset(full.x[perm[k:]], full.y[perm[k:]], full.name)
    if held_out is None:
        held_out = get(test, max(n, TEST_MIN), seed + 1)
    check_test_columns(train, held_out)
    return train, held_out


def check_test_columns(train: Dataset, test: Dataset) -> None:
    """ValueError unless ``test`` has ``train``'s d input columns and m target columns (a fit of m outputs
    on d inputs is scored on the same); the message names both by their :attr:`Dataset.name`."""
    if test.d != train.d:
        inputs = "x1" if train.d == 1 else f"x1..x{train.d}"
        raise ValueError(f"test data have d = {test.d} inputs, training data d = {train.d}: give test data "
                         f"{test.name!r} the inputs {inputs} of the training data {train.name!r}")
    if test.outputs != train.outputs:
        raise ValueError(f"the test data {test.name!r} have {test.outputs} output(s) but the training data "
                         f"{train.name!r} {train.outputs}: give test data with the same target columns")


def rows_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """The SHA-256 (hex) of rows x (n, d) and targets y (n,) or (n, m), as float64 little-endian bytes with
    their shapes: what a density records of its training rows, so that a refit on other rows is refused."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a, dtype="<f8")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write a CSV (header x1..xd,y, or x1..xd,y1..ym for m outputs), NPZ, .npy or HDF5 file (by the
    suffix; .npy and .h5: :func:`flowfem.convert.write`) that :func:`load` reads back exactly,
    atomically (safe on every MPI rank at once: :func:`flowfem.files.replacing`)."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() in (".npy", ".h5", ".hdf5"):
        from flowfem import convert  # it imports this module

        convert.write(path, dataset.x, dataset.y)
        return
    npz = path.lower().endswith(".npz")
    with replacing(path, ".npz" if npz else "") as tmp:
        if npz:
            np.savez(tmp, x=dataset.x, y=dataset.y)
        else:
            header = ",".join([f"x{i + 1}" for i in range(dataset.d)] + _names("y", dataset.y))
            np.savetxt(tmp, np.column_stack([dataset.x, dataset.y]), delimiter=",", header=header, comments="")


def save_predictions(target, x: np.ndarray, f: np.ndarray, y: np.ndarray | None = None) -> None:
    """Write predictions f (n,) at inputs x (n, d) as CSV with header x1..xd[,y],f (y: targets, if
    given); for m outputs, f and y (n, m), the columns are [y1..ym,]f1..fm. ``target`` is a path
    ending in .csv (written whole or not at all: :func:`flowfem.files.replacing`; ValueError for another
    name, :func:`flowfem.files.check_writable`) or a text stream. :func:`load`
    reads the file back as data (f, f1..fm are ignored)."""
    names = [f"x{i + 1}" for i in range(x.shape[1])] + ([] if y is None else _names("y", y)) + _names("f", f)
    table = np.column_stack([x] + ([] if y is None else [y]) + [f])
    if not isinstance(target, (str, os.PathLike)):
        np.savetxt(target, table, delimiter=",", header=",".join(names), comments="")
        return
    check_writable(target, "predictions file", suffix=".csv")  # a name another format's reader would take
    with replacing(target) as tmp:
        np.savetxt(tmp, table, delimiter=",", header=",".join(names), comments="")


def _names(prefix: str, values: np.ndarray) -> list[str]:
    """The column names of ``values``: [prefix] for (n,), prefix1..prefixm for (n, m)."""
    return [prefix] if np.ndim(values) == 1 else [f"{prefix}{k + 1}" for k in range(np.shape(values)[1])]
