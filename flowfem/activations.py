"""Activations sigma(z) with their first two derivatives.

Each activation knows whether it is positively homogeneous,
sigma(r z) = r^p sigma(z) for r > 0; then f_u depends on u only through a
density on the sphere S^d of directions (docs/theory.md §10), and the
circle and sphere parameter domains may be used.

Names accepted by :func:`activation`: ``relu``, ``leaky_relu`` (slope 0.01,
or ``leaky_relu:0.2``), ``tanh``, ``sigmoid``, ``softplus``, ``monomial:k``
(sigma(z) = z^k, k a positive integer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from flowfem.arguments import parameterised, read_integer, read_number, unknown

Array = np.ndarray


@dataclass(frozen=True)
class Activation:
    """sigma with sigma' and sigma''; ``degree`` = p if sigma(r z) = r^p sigma(z) for r > 0, else None."""

    name: str
    sigma: Callable[[Array], Array]
    dsigma: Callable[[Array], Array]
    d2sigma: Callable[[Array], Array]
    degree: int | None = None
    slope: float = 0.0  # leaky_relu: sigma(z) = max(z, slope * z)
    power: int = 0  # monomial: sigma(z) = z^power

    @property
    def homogeneous(self) -> bool:
        """True if sigma is positively homogeneous (allowed on the circle and sphere)."""
        return self.degree is not None

    def require_homogeneous(self, domain: str) -> None:
        """Raise ValueError unless sigma may live on ``domain`` ("circle" or "sphere").

        A density on a circle or sphere of directions theta / |theta| represents
        sigma(theta . x~) = |theta|^p sigma(theta / |theta| . x~) only when sigma is
        positively p-homogeneous.
        """
        if not self.homogeneous:
            # box and ball parameter meshes exist for d = 1, 2 only (flowfem.space): for s3's d = 3 inputs
            # there is no domain to switch to
            other = "" if domain == "s3" else ", or a box or ball domain"
            raise ValueError(
                f"the {domain} carries densities of directions, which represent only positively homogeneous "
                f"activations; {self.name} is not: use relu, leaky_relu or monomial:k{other}")

    def __call__(self, z: Array) -> Array:
        return self.sigma(z)

    def __str__(self) -> str:
        return self.name


def _sigmoid(z: Array) -> Array:
    """1 / (1 + exp(-z)), evaluated without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _relu(slope: float) -> Activation:
    """sigma(z) = max(z, slope z) (0 <= slope < 1); sigma'' = 0 away from the kink."""
    # repr, the shortest text that reads back as the same float: a network file or export that
    # stores the name rebuilds the same slope (":g" would keep 6 digits)
    name = "relu" if slope == 0.0 else f"leaky_relu:{slope!r}"
    return Activation(
        name=name,
        sigma=(lambda z: np.maximum(z, 0.0)) if slope == 0.0 else (lambda z: np.maximum(z, slope * z)),
        # relu: a cast, not np.where(z > 0, 1.0, 0.0), which is 6x slower (4e6 entries); the
        # particle gradient evaluates sigma' at every step
        dsigma=(lambda z: (np.asarray(z) > 0).astype(float)) if slope == 0.0
        else (lambda z: np.where(z > 0, 1.0, slope)),
        d2sigma=lambda z: np.zeros_like(np.asarray(z, dtype=float)),
        degree=1,
        slope=slope,
    )


def _monomial(k: int) -> Activation:
    """sigma(z) = z^k, positively k-homogeneous."""
    return Activation(
        name=f"monomial:{k}",
        sigma=lambda z: np.asarray(z, dtype=float) ** k,
        dsigma=lambda z: k * np.asarray(z, dtype=float) ** (k - 1),
        d2sigma=lambda z: (k * (k - 1) * np.asarray(z, dtype=float) ** (k - 2)) if k >= 2
        else np.zeros_like(np.asarray(z, dtype=float)),
        degree=k,
        power=k,
    )


_SMOOTH = {
    "tanh": Activation(
        "tanh",
        np.tanh,
        lambda z: 1.0 - np.tanh(z) ** 2,
        lambda z: -2.0 * np.tanh(z) * (1.0 - np.tanh(z) ** 2),
    ),
    "sigmoid": Activation(
        "sigmoid",
        _sigmoid,
        lambda z: _sigmoid(z) * (1.0 - _sigmoid(z)),
        lambda z: _sigmoid(z) * (1.0 - _sigmoid(z)) * (1.0 - 2.0 * _sigmoid(z)),
    ),
    "softplus": Activation(
        "softplus",
        lambda z: np.logaddexp(0.0, z),
        _sigmoid,
        lambda z: _sigmoid(z) * (1.0 - _sigmoid(z)),
    ),
}

NAMES = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus", "monomial:k")
FORMS = {"leaky_relu": "leaky_relu:SLOPE with 0 <= SLOPE < 1, e.g. leaky_relu:0.1, or plain leaky_relu (slope 0.01)",
         "monomial": "monomial:K with an integer K >= 1, e.g. monomial:2"}  # the names that take a parameter


def activation(spec: str | Activation) -> Activation:
    """The activation named by ``spec`` (see the module docstring); ValueError names the valid choices."""
    if isinstance(spec, Activation):
        return spec
    name, arg = parameterised("activation", spec, FORMS, plain=("relu", *_SMOOTH))
    if name == "leaky_relu":
        try:
            slope = read_number(arg) if arg is not None else 0.01
        except ValueError:
            slope = None
        if slope is None or not 0.0 <= slope < 1.0:  # (NaN too)
            raise ValueError(f"activation {str(spec)!r}: the slope of leaky_relu:SLOPE must be a number with "
                             "0 <= SLOPE < 1, e.g. leaky_relu:0.1")
        return _relu(slope)
    if name == "monomial":
        try:
            k = read_integer(arg)
        except ValueError:  # (monomial without ':': no power)
            k = 0
        if k < 1:
            raise ValueError(f"activation {str(spec)!r}: the power of monomial:K must be an integer K >= 1, "
                             "e.g. monomial:2")
        return _monomial(k)
    if name == "relu" or name in _SMOOTH:
        return _relu(0.0) if name == "relu" else _SMOOTH[name]
    raise ValueError(unknown("activation", str(spec), NAMES,
                             "(leaky_relu:SLOPE with 0 <= SLOPE < 1, monomial:K with K >= 1)"))
