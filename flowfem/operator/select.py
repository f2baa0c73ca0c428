"""The one choice of how the feature matrix S is applied: a method name -> a Features implementation.

``auto`` walks :data:`flowfem.operator.features.REGISTRY` once and takes the
first implementation that represents S for (sigma, d) and pays off for the
use: for relu on 1-D inputs relu1d_moments (per-bin moments of the data,
O(nq) per product) where S^T D S is applied repeatedly and relu1d (prefix sums
over the data, no set-up beyond a sort) for a single product; relu_tree for
relu on more (unless the product is needed only once: building the tree costs
a few dense products), monomial for z^k, dense otherwise. A method asked for by name is checked
against what it needs (ValueError otherwise) and never swapped.
"""

from __future__ import annotations

import warnings

import numpy as np

from flowfem.activations import Activation
from flowfem.arguments import unknown
from flowfem.operator.features import REGISTRY, DenseFeatures, Features, StorageLimit

METHODS = ("auto",) + tuple(impl.name for impl in REGISTRY)


def implementation(sigma: Activation, d: int, method: str = "auto", repeated: bool = True) -> type[Features]:
    """The Features class for sigma on d-dimensional inputs (``method`` forces one).

    ``repeated`` False: S is applied once (e.g. predictions at new points), so implementations
    whose set-up costs more than a dense product are passed over. ValueError names an unknown
    method or what a named method needs ("method relu1d needs 1-D inputs; ...").
    """
    if method not in METHODS:
        raise ValueError(unknown("data-operator method", method, METHODS))
    if method == "auto":
        return next(impl for impl in REGISTRY if impl.accepts(sigma, d) and (repeated or impl.single_use))
    impl = next(impl for impl in REGISTRY if impl.name == method)
    missing = impl.needs(sigma, d)
    if missing is not None:
        raise ValueError(f"method {method} needs {missing}")
    return impl


def build(impl: type[Features], sigma: Activation, x: np.ndarray, theta: np.ndarray,
          method: str = "auto") -> Features:
    """impl for data x (n, d) and points theta (m, d + 1). With method auto, an implementation over
    its storage limit (:class:`StorageLimit`) gives way, with a warning, to the dense evaluation;
    a method asked for by name raises StorageLimit."""
    try:
        return impl(sigma, x, theta)
    except StorageLimit as e:
        if method != "auto":
            raise
        warnings.warn(f"{e}: evaluating sigma densely instead (O(n m) work per product, bounded memory)")
        return DenseFeatures(sigma, x, theta)


def make_features(sigma: Activation, x: np.ndarray, theta: np.ndarray, method: str = "auto",
                  repeated: bool = True) -> Features:
    """The fastest exact representation of S for data x (n, d) and points theta (m, d + 1):
    :func:`implementation` chooses, :func:`build` builds (errors as there)."""
    return build(implementation(sigma, x.shape[1], method, repeated), sigma, x, theta, method)
