"""Losses l(f, y), convex in the prediction f, with l' and l'' in f.

``squared``:  l = (f - y)^2 / 2,           l' = f - y,             l'' = 1.
``logistic``: l = log(1 + exp(-y f)),      l' = -y s(-y f),        l'' = s(y f) s(-y f),
with s the logistic sigmoid and labels y in {-1, +1}.
``softmax``:  l = logsumexp_c F_c - F_k,  l' = p - e_k,             l'' = diag(p) - p p^T,
for scores F (n, C), class indices k (n,) in 0..C-1, p = softmax(F), e_k the k-th unit vector
(per point: value (n,), d1 (n, C), d2 (n, C, C); :mod:`flowfem.softmax` holds the solver).

The softmax loss is a registry entry (so a Problem, the CLI and a density file name it as they name
the others) marked ``multiclass``: its prediction is a vector, so the scalar machinery (the
Functional, flows, plateau) cannot take it, and :func:`loss` refuses it unless the caller says it
handles several classes (``multiclass=True``: Problem.fit and particles.train).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from flowfem.arguments import unknown


def _s(z):
    """Logistic sigmoid 1 / (1 + exp(-z)), without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class Loss:
    """A loss with its first two derivatives in the prediction f (elementwise)."""

    name: str
    value: Callable[[np.ndarray, np.ndarray], np.ndarray]
    d1: Callable[[np.ndarray, np.ndarray], np.ndarray]
    d2: Callable[[np.ndarray, np.ndarray], np.ndarray]
    quadratic: bool
    multiclass: bool = False  # f (n, C) and class indices k (n,) instead of f (n,) and y (n,)

    def __str__(self) -> str:
        return self.name

    def check_labels(self, y: np.ndarray, what: str = "targets y", comm=None, classes=None) -> None:
        """ValueError if y holds a target this loss cannot take: the logistic loss takes the labels -1 and +1
        only, the softmax loss the ``classes`` (C,) its densities were (or will be) fitted on, one density a
        class (None: y are the training labels, which make the classes); a score of other targets would
        be a number of nothing. ``what`` names y in the message; ``comm`` (an mpi4py communicator): y is
        this rank's rows of data sharded over its ranks, the count of bad targets is summed over them and
        every rank raises (collective)."""
        y = np.asarray(y).ravel()
        if self.name == "logistic":
            bad = ~np.isin(y, (-1.0, 1.0))
        elif self.multiclass and classes is not None:
            classes = np.asarray(classes)  # a string label is no numeric class, and a number no string class
            same_kind = (y.dtype.kind == "U") == (classes.dtype.kind == "U")
            bad = ~np.isin(y, classes) if same_kind else np.ones(y.size, bool)
        else:
            return
        counts = np.array([np.count_nonzero(bad), y.size])
        if comm is not None:
            counts = comm.allreduce(counts)
        if not counts[0]:
            return
        if self.name == "logistic":
            raise ValueError(f"{counts[0]} of the {counts[1]} {what} are neither -1 nor +1: the logistic loss needs "
                             "labels y in {-1, +1}; relabel them (or fit them with the squared loss)")
        first = int(np.argmax(bad))  # (softmax: all rows on every rank)
        raise ValueError(f"{counts[0]} of the {counts[1]} {what} are not among the training classes "
                         f"{', '.join(map(_label, classes.tolist()))} (first {_label(y[first].item())} (row {first})): "
                         "the softmax loss has no density to score them; relabel them or drop those rows")


def _label(v) -> str:
    """A label as a message shows it: 7 for 7.0 (a file's whole-number labels are read as floats)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


SQUARED = Loss(
    "squared",
    lambda f, y: 0.5 * (f - y) ** 2,
    lambda f, y: f - y,
    lambda f, y: np.ones_like(f),
    quadratic=True,
)
LOGISTIC = Loss(
    "logistic",
    lambda f, y: np.logaddexp(0.0, -y * f),
    lambda f, y: -y * _s(-y * f),
    lambda f, y: _s(y * f) * _s(-y * f),
    quadratic=False,
)



def softmax(F: np.ndarray) -> np.ndarray:
    """p_jc = exp(F_jc) / sum_d exp(F_jd) for scores F (n, C), without overflow: (n, C)."""
    Z = np.exp(F - F.max(axis=1, keepdims=True))
    return Z / Z.sum(axis=1, keepdims=True)


def cross_entropy(F: np.ndarray, k: np.ndarray) -> np.ndarray:
    """logsumexp_c F_jc - F_{j k_j} for scores F (n, C) and class indices k (n,): (n,), >= 0."""
    m = F.max(axis=1)
    return m + np.log(np.exp(F - m[:, None]).sum(axis=1)) - F[np.arange(F.shape[0]), k]


def _softmax_d1(F, k):
    G = softmax(F)
    G[np.arange(F.shape[0]), k] -= 1.0
    return G


def _softmax_d2(F, k):
    P = softmax(F)
    return P[:, :, None] * np.eye(F.shape[1]) - P[:, :, None] * P[:, None, :]


SOFTMAX = Loss("softmax", cross_entropy, _softmax_d1, _softmax_d2, quadratic=False, multiclass=True)

LOSSES = {"squared": SQUARED, "logistic": LOGISTIC, "softmax": SOFTMAX}


def loss(spec: str | Loss, multiclass: bool = False) -> Loss:
    """The loss named ``spec`` (squared, logistic, or softmax when ``multiclass``: the caller handles
    scores (n, C)). ValueError for an unknown name, or softmax where only one-output losses go."""
    if isinstance(spec, Loss):
        found = spec
    else:
        try:
            found = LOSSES[str(spec).lower()]
        except KeyError:
            names = tuple(LOSSES) if multiclass else ("squared", "logistic")
            raise ValueError(unknown("loss", str(spec), names)) from None
    if found.multiclass and not multiclass:
        raise ValueError("the softmax loss (several classes) is fitted by Problem.fit and flowfem solve only; "
                         "here use squared or logistic (labels -1/+1)")
    return found
