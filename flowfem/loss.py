"""Losses l(f, y), convex in the prediction f, with l' and l'' in f.

``squared``:  l = (f - y)^2 / 2,           l' = f - y,             l'' = 1.
``logistic``: l = log(1 + exp(-y f)),      l' = -y s(-y f),        l'' = s(y f) s(-y f),
with s the logistic sigmoid and labels y in {-1, +1}.
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

    def __str__(self) -> str:
        return self.name

    def check_labels(self, y: np.ndarray) -> None:
        """Raise ValueError if y is not admissible for this loss."""
        if self.name == "logistic" and not np.all(np.isin(y, (-1.0, 1.0))):
            raise ValueError("the logistic loss needs labels y in {-1, +1}; relabel the data")


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

LOSSES = {"squared": SQUARED, "logistic": LOGISTIC}


def loss(spec: str | Loss) -> Loss:
    """The loss named ``spec`` (squared or logistic)."""
    if isinstance(spec, Loss):
        return spec
    try:
        return LOSSES[str(spec).lower()]
    except KeyError:
        raise ValueError(unknown("loss", str(spec), tuple(LOSSES))) from None
