"""The data operator Phi: density -> predictions at the data points.

    f_u(x) = integral_Omega sigma(theta . x~) u(theta) d theta,   x~ = (x, 1),

discretised with a quadrature rule (theta_q, q_q) on the cells of the mesh:

    f_U(x_j) = sum_q sigma(theta_q . x~_j) g_q,    g = W Psi U,

where Psi_qk = psi_k(theta_q) evaluates the basis functions and W holds the
weights q_q |det J|. So Phi = S W Psi with S_jq = sigma(theta_q . x~_j).
W Psi is a sparse matrix (a row per point) on each rank's own cells;
S is never stored as an n x nq matrix. The package:

* ``quadrature.py``: :class:`Quadrature`, the rule and W Psi (dolfinx).
* ``features/``: S. ``base.py`` holds the interface :class:`Features`
  (S g, S^T r, the dense S, the MPI normal operator) and :func:`evaluate`,
  the one dense evaluation sigma^(k)(x~ theta^T) that the finite network,
  readout, the particle solvers and the plateau analysis use too;
  ``dense.py``, ``relu_moments.py``, ``relu1d.py``, ``relu_tree.py`` and
  ``monomial.py`` are the exact implementations, each declaring the (sigma, d)
  it represents; ``interpolated.py`` an approximation through an input grid
  (error O(h_x^2)), used only when asked for by name; ``weights.py`` makes data
  weights D that cannot change, so that what an implementation derives from D
  may be cached.
* ``select.py``: the one choice of an implementation by (sigma, d,
  repeated use), or by method name (:data:`METHODS`).
* ``data_operator.py``: :class:`DataOperator`, Phi and Phi^T with MPI.

In parallel each rank holds the quadrature points of its own cells and all
data points: predictions are an MPI sum over ranks; S^T r needs no
communication; Psi^T gathers into the dof vector with a reverse scatter.

:class:`DataOperator` and :class:`Quadrature` load dolfinx when first used;
the rest is NumPy, SciPy and mpi4py only, so that the finite network (and
``flowfem predict``) evaluates sigma(theta . x~) without dolfinx.
"""

from flowfem.operator.features import (DenseFeatures, Features, InterpolatedFeatures, MonomialFeatures,
                                       ReluFeatures1D, ReluMoments1D, ReluTreeFeatures, StorageLimit, augment,
                                       evaluate)
from flowfem.operator.select import METHODS, build, implementation, make_features

__all__ = ["DataOperator", "Quadrature", "Features", "DenseFeatures", "ReluFeatures1D", "ReluMoments1D",
           "ReluTreeFeatures", "MonomialFeatures", "InterpolatedFeatures", "StorageLimit", "augment", "evaluate",
           "METHODS", "implementation", "build", "make_features"]


def __getattr__(name):
    # dolfinx only on first use of DataOperator or Quadrature (module __getattr__, PEP 562)
    if name == "DataOperator":
        from flowfem.operator.data_operator import DataOperator
        return DataOperator
    if name == "Quadrature":
        from flowfem.operator.quadrature import Quadrature
        return Quadrature
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
