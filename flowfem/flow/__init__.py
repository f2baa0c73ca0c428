"""The gradient flow of E_alpha: the density's parabolic evolution toward the minimiser.

In a metric g, the flow is (docs/theory.md §7; time stepping §8)

    g(du/dt, v) = -dE_alpha(u)[v]   for all v,

with g = m_omega (``L2``: the weighted mass, matrix M) or g = a_omega (``H1``:
the Sobolev metric, matrix A). Discretely, with G = M or A,

    G dU/dt = -dE_alpha(U) = -(alpha A U + Phi^T l'(Phi U, y) / n).

For the squared loss dE_alpha(U) = K U - b with K = alpha A + Phi^T Phi / n
and b = Phi^T y / n, so U(t) = U* + exp(-t G^{-1} K) (U(0) - U*). E_alpha is
lambda-convex with lambda = alpha in both metrics (K >= alpha A >= alpha M), so
the flow contracts, ||U(t) - U*||_G <= exp(-alpha t) ||U(0) - U*||_G, and the
energy gap decays like E(t) - E* <= exp(-2 alpha t) (E(0) - E*). The flow is
stiff in L2 (alpha A against M is ~ alpha / h^2), so implicit steps may be
large, and growing (geometric) steps reach the stationary state in few steps.

Several outputs (y (n, m), squared loss): E_alpha is the sum of the m outputs'
functionals, so its flow is m independent flows with the same metric, run in
lock step on a VecNest of the m densities (same times and steps, one linear
solver per shift for the m right-hand sides; :mod:`~flowfem.flow.driver`).

The package:

* :mod:`~flowfem.flow.schemes`     the time steppers (implicit Euler, theta, Crank-Nicolson, BDF-k), each
  stating its discrete equation and order;
* :mod:`~flowfem.flow.driver`      :class:`Flow`: step policy (given or error-controlled steps), stop rule,
  the run loop and its energy log;
* :mod:`~flowfem.flow.checkpoint`  checkpoints of one run: fingerprint, save, load;
* :mod:`~flowfem.flow.initial`     initial densities;
* :mod:`~flowfem.flow.bounds`      the contraction bounds proven for the scheme a run used (the energy
  figure draws these, not e^(-alpha t), which large implicit steps do not obey).

The trajectory and the energy log are written by :mod:`flowfem.io`
(``TrajectoryWriter``, ``write_log``), the energy figure is drawn by
:func:`flowfem.plot.energy_figure`.
"""

from flowfem.flow.driver import Flow, FlowResult

__all__ = ["Flow", "FlowResult"]
