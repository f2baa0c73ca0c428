"""S for any sigma and d: sigma evaluated on the fly in blocks of data points.

O(n m) work per product and O(block m) memory; exact. The fallback of every
choice (:mod:`flowfem.operator.select`).
"""

from __future__ import annotations

import numpy as np

from flowfem.operator.features.base import Features, evaluate


class DenseFeatures(Features):
    """S applied block by block: sigma is evaluated on the fly, never stored whole."""

    name = "dense"

    def __init__(self, sigma, x, theta, block_entries: int = 2**22):
        super().__init__(sigma, x, theta)
        self.block = max(1, block_entries // max(1, theta.shape[0]))

    def _blocks(self):
        for s in range(0, self.x.shape[0], self.block):
            yield s, evaluate(self.sigma, self.x[s:s + self.block], self.theta)

    def matvec(self, g, out=None):
        out = np.empty(self.x.shape[0]) if out is None else out
        for s, S in self._blocks():
            np.dot(S, g, out=out[s:s + S.shape[0]])
        return out

    def rmatvec(self, r, out=None):
        out = np.empty(self.theta.shape[0]) if out is None else out
        out[:] = 0.0
        for s, S in self._blocks():
            out += r[s:s + S.shape[0]] @ S
        return out

    def matmat(self, G):
        out = np.empty((self.x.shape[0], G.shape[1]))
        for s, S in self._blocks():  # sigma evaluated once for all columns
            np.dot(S, G, out=out[s:s + S.shape[0]])
        return out

    def rmatmat(self, R):
        out = np.zeros((self.theta.shape[0], R.shape[1]))
        for s, S in self._blocks():
            out += S.T @ R[s:s + S.shape[0]]
        return out
