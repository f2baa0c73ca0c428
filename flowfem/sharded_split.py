"""Training and test rows of a data file sharded over MPI ranks, and bounded samples of them.

``flowfem solve --sharded`` keeps on each rank only its rows of the file
(:func:`flowfem.shards.read`); the test rows and the rows written to
predictions.csv and drawn in figure.png must then be chosen without any rank
seeing all n rows, and the same whatever the number of ranks.

Test rows. Without a separate test file, row j of the file (j = 0..n-1, in
file order) is a test row iff u_j < :data:`TEST_FRACTION`, where u_j is a
uniform number on [0, 1) drawn for that row: rows are grouped in chunks of
:data:`CHUNK`, chunk c = j // CHUNK drawing its CHUNK numbers from NumPy's
``default_rng([SPLIT_STREAM, seed, c])``. So u_j depends only on the seed and j,
never on how the rows are split over ranks. The constant :data:`SPLIT_STREAM`
keeps the draw apart from the stream data are most often made with: NumPy's
SeedSequence pads its entropy with zeros, so ``default_rng([seed, 0])`` *is*
``default_rng(seed)``, and with the key [seed, c] a file made by
``default_rng(seed).uniform(...)`` and fitted with the same --seed held out
exactly its rows with u_j < 0.2, x < -0.6 for uniform inputs on [-1, 1]
(``data.synthetic`` draws its inputs the same way). The test set holds about n / 5 rows (a
Binomial(n, 1/5) count, at least 1 and at most n - 1 for n >= 2) where the
unsharded split (:func:`flowfem.data.train_test`) takes exactly floor(n / 5)
rows of a seeded permutation, which would need a permutation of all n rows
on every rank: the two splits choose different rows.

Samples. Of a set of rows, :func:`sample` keeps those whose file row j is a
multiple of s = ceil(n / :data:`SAMPLE_ROWS`) and gathers them to every rank
in file order: at most SAMPLE_ROWS rows of the file (fewer of a subset), every
row when n <= SAMPLE_ROWS.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from flowfem import arguments
from flowfem.data import Dataset

TEST_FRACTION = 0.2  # as the unsharded split's fifth
CHUNK = 2**16  # rows per independently seeded stream: a rank draws only the chunks its rows meet
SAMPLE_ROWS = 10**5  # rows of the file, at most, in predictions.csv and figure.png of a sharded fit
SPLIT_STREAM = 0x5EED5B17  # the first word of the split's key (module docstring): any constant no one seeds with


def per_row(key: list[int], start: int, stop: int, draw: str = "random") -> np.ndarray:
    """Seeded random numbers for the rows j = start..stop-1 of a data set (shape (stop - start,)): chunk c
    of CHUNK rows takes the CHUNK numbers of ``default_rng(key + [c]).<draw>(CHUNK)`` (``draw``: random,
    uniform on [0, 1), or standard_normal), so row j gets the same number whichever rank draws it and
    whatever rows it draws beside it."""
    out = np.empty(stop - start)
    for c in range(start // CHUNK, -(-stop // CHUNK)):
        lo, hi = max(start, c * CHUNK), min(stop, (c + 1) * CHUNK)
        numbers = getattr(np.random.default_rng(list(key) + [c]), draw)(CHUNK)
        out[lo - start:hi - start] = numbers[lo - c * CHUNK:hi - c * CHUNK]
    return out


def uniform(seed: int, start: int, stop: int) -> np.ndarray:
    """u_j for the file rows j = start..stop-1 (shape (stop - start,)): :func:`per_row` with key
    [SPLIT_STREAM, seed].
    ValueError unless seed is an integer >= 0 (:func:`flowfem.arguments.seed`), also on a rank without rows."""
    # NumPy's own refusal of a negative seed names neither the seed nor the fix
    return per_row([SPLIT_STREAM, arguments.seed(seed)], start, stop)


def split(x: np.ndarray, y: np.ndarray, start: int, n: int, seed: int, name: str,
          comm: MPI.Comm) -> tuple[Dataset, np.ndarray, Dataset, np.ndarray]:
    """This rank's rows (x (k, d), y (k,) or (k, m): file rows start..start+k-1 of n) split into training and
    test rows by u_j < TEST_FRACTION (module docstring). Returns (train, train_rows, test, test_rows): the
    Datasets of this rank's rows of each and their file row numbers (int64). Collective: ValueError on every
    rank if the file has fewer than 2 rows or the draw left the training or the test set empty."""
    if n < 2:
        raise ValueError(f"the data file {name!r} has {n} row(s): a fit and its test need at least 2; "
                         "give more rows, or a test file with --test-data")
    rows = np.arange(start, start + x.shape[0], dtype=np.int64)
    test = uniform(seed, start, start + x.shape[0]) < TEST_FRACTION
    held = comm.allreduce(int(np.count_nonzero(test)), op=MPI.SUM)
    if held in (0, n):  # a few rows: move the first row to the set that has none, on whichever rank holds it
        test[rows == 0] = held == 0
    return (Dataset(x[~test], y[~test], name), rows[~test], Dataset(x[test], y[test], name + "-test"), rows[test])


def sample(data: Dataset, rows: np.ndarray, n: int, comm: MPI.Comm, limit: int = SAMPLE_ROWS) -> Dataset:
    """The rows of ``data`` (this rank's, file row numbers ``rows``) whose file row is a multiple of
    ceil(n / limit), gathered on every rank in file order (ranks hold consecutive rows). Collective."""
    keep = rows % -(-n // limit) == 0
    x = np.ascontiguousarray(data.x[keep])
    y = np.ascontiguousarray(data.y[keep])
    counts = np.array(comm.allgather(int(keep.sum())))

    def gather(a):
        width = int(np.prod(a.shape[1:], dtype=np.int64))
        out = np.empty((int(counts.sum()),) + a.shape[1:])
        comm.Allgatherv(a, [out, counts * width])
        return out

    return Dataset(gather(x), gather(y), data.name)
