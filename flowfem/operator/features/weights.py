"""Frozen data weights: arrays D (n,) that cannot change, so results derived from them can be cached.

The data term of the Hessian is S^T diag(D) S with a weight D_j per data
point (1 for the squared loss, l'' in a Newton step, row weights on a
regularisation path). A feature implementation may precompute something per
D (:class:`~flowfem.operator.features.relu_moments.ReluMoments1D`: per-bin
moments of the data, after which a product costs O(nq) instead of O(n)); such
a cache is only safe if D cannot be written afterwards. :func:`frozen` makes
such an array: a copy whose memory is an immutable ``bytes`` object, so every
in-place write raises ValueError and its ``writeable`` flag cannot be set
back (NumPy refuses to for memory it does not own), and whose views are
read-only too. Nothing else is treated as frozen: a read-only flag on an
array that owns its memory can be reset, and views taken before it was set
stay writable. :class:`flowfem.stationary.LinearSolver` holds its D frozen
and replaces it (never writes it) on :meth:`set_weights`.
"""

from __future__ import annotations

import weakref

import numpy as np

_FROZEN: dict[int, weakref.ref] = {}  # id -> weak reference, for every live array made by frozen()


def _forget(key: int, ref: weakref.ref) -> None:
    if _FROZEN.get(key) is ref:  # the array died: its id may be reused by another object
        del _FROZEN[key]


def frozen(D) -> np.ndarray:
    """D as float64 in memory nobody can write (a copy, unless D already is :func:`frozen`).
    Same shape as D; any in-place write to it or a view of it raises ValueError. A D that is one
    value broadcast to n points (``np.broadcast_to(1.0, n)``) stays a broadcast: 8 bytes, not 8 n."""
    if is_frozen(D):
        return D
    values = np.asarray(D, dtype=float)
    if values.ndim == 1 and values.size > 1 and values.strides == (0,):
        # one value for every point (a broadcast, as LinearSolver's default D = 1): kept in 8 bytes, not n
        one = np.frombuffer(values[:1].tobytes(), dtype=float)
        F = np.lib.stride_tricks.as_strided(one, shape=values.shape, strides=(0,), writeable=False)
    else:
        values = np.ascontiguousarray(values)
        F = np.frombuffer(values.tobytes(), dtype=float).reshape(values.shape)
    key = id(F)
    _FROZEN[key] = weakref.ref(F, lambda ref, key=key: _forget(key, ref))
    return F


def is_frozen(D) -> bool:
    """True if D is an array returned by :func:`frozen` (its values can never change)."""
    ref = _FROZEN.get(id(D))
    return ref is not None and ref() is D
