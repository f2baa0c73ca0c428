"""The feature matrix S_jq = sigma(theta_q . x~_j) and its implementations.

S (n data points x m quadrature points) is never stored whole. Each
implementation applies S g and S^T r exactly and declares which (sigma, d)
it represents (:meth:`Features.needs`); :data:`REGISTRY` lists them in the
order :mod:`flowfem.operator.select` prefers them:

* :class:`ReluMoments1D` (``relu_moments.py``): relu and leaky relu, d = 1,
  for repeated products. The predictions are linear between consecutive kinks
  of all ranks' points, so S^T diag(D) S g needs only the moments sum D,
  sum D x, sum D x^2 of the data in each such bin: one O(n) pass per D, then
  O(nq) per product, independent of n.
* :class:`ReluFeatures1D` (``relu1d.py``): relu and leaky relu, d = 1. With
  t_q = -b_q / w_q the neuron q is active for x > t_q (w_q > 0) or x < t_q
  (w_q < 0), so S g and S^T r are prefix sums over the sorted t_q and sorted
  x_j: O(n + m) per product after an O((n + m) log) sort: for single
  products (e.g. predictions at new points) and by name.
* :class:`ReluTreeFeatures` (``relu_tree.py``): relu and leaky relu, any d. A
  k-d tree over the theta_q: on a node entirely on one side of the
  hyperplane theta . x~_j = 0 relu is linear (or zero), so only the leaves
  the hyperplane cuts need sigma pointwise; about n sqrt(m) stored entries
  on a surface mesh.
* :class:`MonomialFeatures` (``monomial.py``): sigma(z) = z^k, any d.
  (theta . x~)^k = sum_{|a| = k} k!/a! theta^a x~^a, so S = P(x) Q(theta)^T
  has rank binom(d + k, k).
* :class:`DenseFeatures` (``dense.py``): any sigma and d, sigma evaluated on
  the fly in blocks of data points; O(n m) work, O(block m) memory.

and one approximation (``exact = False``), which ``auto`` never takes:

* :class:`InterpolatedFeatures` (``interpolated.py``): any sigma and d, S ~
  Pi S_X, the exact features at the nodes of a uniform input grid
  interpolated to the data (Q1); error O(h_x^2), the normal operator's cost
  per product independent of n.

``base.py`` holds the interface and :func:`evaluate`, the one dense
evaluation of sigma(x~ theta^T) (and sigma', sigma'') that every module uses.
NumPy, SciPy and mpi4py only: no dolfinx.
"""

from flowfem.operator.features.base import Features, StorageLimit, augment, evaluate
from flowfem.operator.features.dense import DenseFeatures
from flowfem.operator.features.interpolated import InterpolatedFeatures
from flowfem.operator.features.monomial import MonomialFeatures
from flowfem.operator.features.relu1d import ReluFeatures1D
from flowfem.operator.features.relu_moments import ReluMoments1D
from flowfem.operator.features.relu_tree import ReluTreeFeatures

# preferred first; dense takes all, so auto never reaches the approximation after it
REGISTRY = (ReluMoments1D, ReluFeatures1D, ReluTreeFeatures, MonomialFeatures, DenseFeatures, InterpolatedFeatures)

__all__ = ["Features", "StorageLimit", "augment", "evaluate", "DenseFeatures", "InterpolatedFeatures",
           "MonomialFeatures", "ReluFeatures1D", "ReluMoments1D", "ReluTreeFeatures", "REGISTRY"]
