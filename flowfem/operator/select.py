"""The one choice of how the feature matrix S is applied: a method name -> a Features implementation.

``auto`` walks :data:`flowfem.operator.features.REGISTRY` once and takes the
first implementation that represents S for (sigma, d) and pays off for the
use: for relu on 1-D inputs relu1d_moments (per-bin moments of the data,
O(nq) per product) where S^T D S is applied repeatedly and relu1d (prefix sums
over the data, no set-up beyond a sort) for a single product; relu_tree for
relu on more (unless the product is needed only once: building the tree costs
a few dense products), monomial for z^k, dense otherwise; never an
approximation (``exact`` False). A method asked for by name is checked against
what it needs (ValueError otherwise) and never swapped, with one exception: the
approximation ``interpolated`` (``interpolated:<cells>`` sets the cells per
side of its input grid) serves the repeated products of a fit, and a single
product (predictions at new points) is exact, by the ``auto`` choice.
"""

from __future__ import annotations

import warnings

import numpy as np

from flowfem.activations import Activation
from flowfem.arguments import unknown
from flowfem.operator.features import REGISTRY, DenseFeatures, Features, InterpolatedFeatures, StorageLimit
from flowfem.operator.features.interpolated import parse_cells

METHODS = ("auto",) + tuple(impl.name for impl in REGISTRY)


def check(method: str) -> tuple[str, int | None]:
    """A data-operator method checked: (its name, the cells per side it sets, or None). A name of
    :data:`METHODS`, or ``interpolated:<cells>`` with an integer >= 1; ValueError otherwise."""
    name, colon, option = str(method).partition(":")
    if not colon:
        if method not in METHODS:
            raise ValueError(unknown("data-operator method", method, METHODS))
        return method, None
    if name != InterpolatedFeatures.name:
        raise ValueError(f"data-operator method {method!r}: only interpolated takes an option "
                         "(interpolated:<cells per side>)")
    return name, parse_cells(option)


def implementation(sigma: Activation, d: int, method: str = "auto", repeated: bool = True) -> type[Features]:
    """The Features class for sigma on d-dimensional inputs (``method`` forces one).

    ``repeated`` False: S is applied once (e.g. predictions at new points), so implementations
    whose set-up costs more than a dense product are passed over, and ``interpolated`` gives way
    to the exact ``auto`` choice. ValueError names an unknown method or what a named method needs
    ("method relu1d needs 1-D inputs; ...").
    """
    method, _ = check(method)
    if method == "auto" or (method == InterpolatedFeatures.name and not repeated):
        return next(impl for impl in REGISTRY
                    if impl.exact and impl.accepts(sigma, d) and (repeated or impl.single_use))
    impl = next(impl for impl in REGISTRY if impl.name == method)
    missing = impl.needs(sigma, d)
    if missing is not None:
        raise ValueError(f"method {method} needs {missing}")
    return impl


def build(impl: type[Features], sigma: Activation, x: np.ndarray, theta: np.ndarray,
          method: str = "auto", box: tuple[np.ndarray, np.ndarray] | None = None) -> Features:
    """impl for data x (n, d) and points theta (m, d + 1) (``interpolated:<cells>``: that grid, over
    ``box`` = (lower, upper) if given, else x's bounding box). With method auto, an implementation over
    its storage limit (:class:`StorageLimit`) gives way, with a warning, to the dense evaluation; a
    method asked for by name raises StorageLimit."""
    name, cells = check(method)
    try:
        if impl is InterpolatedFeatures:
            return impl(sigma, x, theta, cells, box)
        return impl(sigma, x, theta)
    except StorageLimit as e:
        if impl.name == name:  # asked for by name (not the exact choice made for a single product)
            raise
        warnings.warn(f"{e}: evaluating sigma densely instead (O(n m) work per product, bounded memory)")
        return DenseFeatures(sigma, x, theta)


def make_features(sigma: Activation, x: np.ndarray, theta: np.ndarray, method: str = "auto",
                  repeated: bool = True) -> Features:
    """The fastest exact representation of S for data x (n, d) and points theta (m, d + 1):
    :func:`implementation` chooses, :func:`build` builds (errors as there)."""
    return build(implementation(sigma, x.shape[1], method, repeated), sigma, x, theta, method)
