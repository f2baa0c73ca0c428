"""Data sets (x_j, y_j), j = 1..n: validation, files and seeded synthetic sets.

Files: CSV with a header naming the columns x1..xd and y, or NPZ with arrays
``x`` (n, d) and ``y`` (n,). Synthetic sets (seeded):

* ``sin``:       x ~ U[-1, 1], y = sin(pi x);
* ``step``:      x ~ U[-1, 1], y = sign(x) (labels in {-1, +1});
* ``two_moons``: two interleaved half circles in R^2, labels in {-1, +1},
  with Gaussian noise of standard deviation ``noise`` (default 0.1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from flowfem.files import replacing

SYNTHETIC = ("sin", "step", "two_moons")
MAX_INPUT_DIM = 2


@dataclass
class Dataset:
    """Inputs x (n, d) and targets y (n,)."""

    x: np.ndarray
    y: np.ndarray
    name: str = "data"

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]


def check(x, y=None, input_dim: int | None = None, what: str = "data",
          max_dim: int | None = MAX_INPUT_DIM) -> tuple[np.ndarray, np.ndarray | None]:
    """x as a float (n, d) array (a 1-D x is one column) and y as (n,); ValueError names what is wrong.

    ``max_dim`` is the largest d a parameter mesh can hold (None: no limit, for finite networks).
    """
    try:
        x = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: inputs x are not numbers") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what}: inputs x have shape {x.shape}; expected (n, d) with n >= 1")
    if not np.all(np.isfinite(x)):
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise ValueError(f"{what}: inputs x contain NaN or inf (first at row {bad}); remove or fill those rows")
    d = x.shape[1]
    if max_dim is not None and d > max_dim:
        raise ValueError(
            f"{what}: inputs have dimension d = {d}, which needs a {d + 1}-D parameter mesh; "
            "flowfem meshes parameter spaces of dimension 2 or 3 only (d = 1 or 2): reduce the "
            "inputs' dimension first"
        )
    if input_dim is not None and d != input_dim:
        raise ValueError(
            f"{what}: inputs have dimension d = {d} but the parameter mesh holds networks on "
            f"d = {input_dim} inputs (parameters of dimension {input_dim + 1}); use a mesh of "
            f"dimension {d + 1}"
        )
    if y is None:
        return x, None
    try:
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: targets y are not numbers") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: targets y have shape {y.shape}; expected ({x.shape[0]},), one per input")
    if not np.all(np.isfinite(y)):
        bad = int(np.argwhere(~np.isfinite(y))[0, 0])
        raise ValueError(f"{what}: targets y contain NaN or inf (first at row {bad}); remove or fill those rows")
    return x, y


def load(path: str | os.PathLike) -> Dataset:
    """Read a CSV (header x1..xd,y) or NPZ (arrays x, y) file and check it."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if "x" not in f.files or "y" not in f.files:
                    raise ValueError(f"data file {path!r} needs arrays 'x' and 'y' (it has {f.files})")
                x, y = f["x"], f["y"]
        elif ext == ".csv":
            with open(path) as fh:
                header = [h.strip() for h in fh.readline().split(",")]
            xcols = [i for i, h in enumerate(header) if h.startswith("x")]
            if "y" not in header or not xcols:
                raise ValueError(
                    f"data file {path!r}: the CSV header must name columns x1..xd and y, got {header}"
                )
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
            if table.shape[1] != len(header):
                raise ValueError(f"data file {path!r}: rows have {table.shape[1]} columns, header {len(header)}")
            x, y = table[:, xcols], table[:, header.index("y")]
        else:
            raise ValueError(f"data file {path!r}: use a .csv or .npz file")
    except ValueError as e:
        if str(e).startswith("data file"):
            raise
        raise ValueError(f"data file {path!r} cannot be read: {e}") from None
    x, y = check(x, y, what=f"data file {path!r}", max_dim=None)  # meshing limits are checked by the solvers
    return Dataset(x, y, os.path.splitext(os.path.basename(path))[0])


def synthetic(name: str, n: int = 200, seed: int = 0, noise: float | None = None) -> Dataset:
    """A seeded synthetic data set (see the module docstring)."""
    if n < 1:
        raise ValueError(f"synthetic data: n = {n} must be at least 1")
    rng = np.random.default_rng(seed)
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
        raise ValueError(f"unknown synthetic data set {name!r}: choose one of {', '.join(SYNTHETIC)}")
    return Dataset(x, y, name)


def get(spec: str, n: int = 200, seed: int = 0) -> Dataset:
    """A synthetic set by name, or a data file by path."""
    return synthetic(spec, n, seed) if spec in SYNTHETIC else load(spec)


def save(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write a CSV (header x1..xd,y) or NPZ file, atomically (safe on every MPI rank at once:
    :func:`flowfem.files.replacing`)."""
    path = os.fspath(path)
    npz = path.lower().endswith(".npz")
    with replacing(path, ".npz" if npz else "") as tmp:
        if npz:
            np.savez(tmp, x=dataset.x, y=dataset.y)
        else:
            header = ",".join([f"x{i + 1}" for i in range(dataset.d)] + ["y"])
            np.savetxt(tmp, np.column_stack([dataset.x, dataset.y]), delimiter=",", header=header, comments="")
