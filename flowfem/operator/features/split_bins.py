"""The K + 1 bins of the 1-D relu moments operator split over the P ranks of a communicator.

:class:`~flowfem.operator.features.relu_moments.ReluMoments1D` forms a product's prefix sums over the
bins between all ranks' sorted kinks; on P ranks each rank forms them on its own contiguous range of
bins only (rank p: lo_p <= k < hi_p, lo_p = (K + 1) p // P) and exchanges with the others only what
its points put into those bins and read back from them (the relu_moments module docstring, "Cost"):
:class:`SplitBins` is where bins and points meet, :class:`SplitWork` the message buffers of one block
width, allocated once.
"""

import numpy as np
from mpi4py import MPI


class SplitBins:
    """Where the bins and the points meet when the K + 1 bins are split over the P ranks of comm: rank p
    owns the bins lo ... hi - 1, lo = (K + 1) p // P. From every rank's positions ``where`` (K,), in the
    order of the ranks (``counts`` points each), increasing on each rank."""

    def __init__(self, comm: MPI.Comm, where: np.ndarray, counts: np.ndarray):
        P, rank, K = comm.size, comm.rank, where.size
        self.rank = rank
        self.bounds = (K + 1) * np.arange(P + 1) // P
        self.lo, self.hi = int(self.bounds[rank]), int(self.bounds[rank + 1])
        starts = np.concatenate([[0], np.cumsum(counts)])
        points = [where[starts[q]:starts[q + 1]] for q in range(P)]
        # Forward: the point at position i has its increment at bin i + 1, which the bin's owner sums. This
        # rank's points for rank p: the slice send[p] ... send[p + 1]; rank q's in these bins: at columns[q].
        self.send = np.searchsorted(points[rank] + 1, self.bounds)
        self.columns = [self._own(pos + 1) for pos in points]
        # Backward: the point at position i reads P_{i + 1}, the prefix sum of R through bin i, from its owner.
        self.back_recv = np.searchsorted(points[rank], self.bounds)
        self.reads = [self._own(pos) for pos in points]

    def _own(self, bins: np.ndarray) -> np.ndarray:
        """The increasing bins (of one rank's points) in lo ... hi - 1, as columns of this rank's bins."""
        return (bins[slice(*np.searchsorted(bins, [self.lo, self.hi]))] - self.lo).astype(np.intp)


class SplitWork:
    """Buffers of a product with b columns on the split bins (:class:`SplitBins`), bins or points along the
    last axis; the messages of Alltoallv in one block (2, b, points) per rank."""

    def __init__(self, split: SplitBins, nm: int, b: int):
        nb, P = split.hi - split.lo, split.bounds.size - 1
        sizes = [np.diff(split.send), [c.size for c in split.columns],
                 [r.size for r in split.reads], np.diff(split.back_recv)]
        # two buffers for the four messages: each message is read (into H, into P_at) before the buffer it
        # shares is written again, and the pairs are about the size of this rank's points and of its bins
        totals = [2 * b * int(np.sum(n)) for n in sizes]
        shared = [np.empty(max(totals[0], totals[3])), np.empty(max(totals[1], totals[2]))]
        self.messages = [self._blocks(n, b, shared[i]) for n, i in zip(sizes, (0, 1, 1, 0))]
        rank = split.rank
        for first, second in ((0, 1), (2, 3)):  # this rank's block to itself is read where it is written
            self.messages[second][1][rank] = self.messages[first][1][rank]
            for m in (first, second):
                self.messages[m][0][1][0][rank] = 0  # Alltoallv would copy it through MPI (2x its cost)
        self.send, self.recv, self.back_send, self.back_recv = (m[1] for m in self.messages)
        self.H = np.zeros((2, b, nb))  # the increments of this rank's bins, then (W_k, B_k)
        self.R = np.empty((2, b, nb))  # R_k, then P_{k + 1}
        self.tmp = np.empty((b, nb))
        self.P_at = np.empty((2, b, nm))  # P_{i_q + 1} of this rank's points
        self.H_sums, self.all_H_sums = np.empty((2, 2, b)), np.empty((P, 2, 2, b))  # (bin 0's, all bins') H
        self.R_sums, self.all_R_sums = np.empty((2, b)), np.empty((P, 2, b))  # R summed over the bins
        self.h, self.v = np.empty((b, nm)), np.empty((b, nm))

    @staticmethod
    def _blocks(points, b: int, memory: np.ndarray):
        """A message buffer of one block (2, b, points[p]) for each rank p, for Alltoallv, at the start of
        ``memory``: (the buffer, its counts and displacements in numbers, its blocks)."""
        counts = 2 * b * np.asarray(points, dtype=np.intp)
        displacements = np.concatenate([[0], np.cumsum(counts)[:-1]])
        buffer = memory[:int(counts.sum())]
        blocks = [buffer[d:d + c].reshape(2, b, -1) for d, c in zip(displacements, counts)]
        return [buffer, (counts, displacements), MPI.DOUBLE], blocks
