"""The contraction bounds that hold for the time stepper a flow ran (drawn by :func:`flowfem.plot.energy_figure`).

The continuous flow contracts like e^(-lambda t) (lambda = alpha; :mod:`flowfem.flow`), but a
discrete run is bounded by its scheme's own factor per step, which for implicit Euler,
1 / (1 + tau lambda), is larger than e^(-tau lambda): with the large steps the flow is run
with, e^(-lambda t) is not a bound for the iterates. The bounds here are for exact solves.
"""

from __future__ import annotations

import numpy as np


def step_factors(result, quadratic: bool) -> tuple[np.ndarray | None, str]:
    """Per-step contraction factors q_k with ||U_k - U*||_G <= q_k ||U_{k-1} - U*||_G proven for the
    scheme that ran, and the bound's formula as a label; (None, reason) where none is proven.

    lambda = alpha bounds the spectrum of G^{-1} d^2E from below in both metrics (K >= alpha A >=
    alpha M). Implicit Euler (``implicit_euler``, ``theta:1``) is the proximal map of a
    lambda-convex E in the G inner product, so q_k = 1 / (1 + tau_k lambda) for every convex loss.
    The theta-method (``crank_nicolson``: theta = 1/2) on a quadratic E multiplies each
    eigencomponent mu >= lambda by R(tau mu), R(z) = (1 - (1 - theta) z) / (1 + theta z), which
    decreases from R(tau lambda) to -(1 - theta) / theta, so q_k = max(|R(tau_k lambda)|,
    (1 - theta) / theta) (= 1 for Crank-Nicolson: no rate for stiff modes). Other cases (theta < 1
    with a non-quadratic loss, BDF with its variable steps) have no such bound.

    The energy gap obeys E_k - E* <= q_k^2 (E_{k-1} - E*) in the same cases: for the theta-method
    on a quadratic E, E - E* = (1/2) sum_i mu_i c_i^2 over the same eigencomponents; for implicit
    Euler and any lambda-convex E, with g = (U_{k-1} - U_k) / tau_k = grad_G E(U_k), lambda-convexity
    gives E_{k-1} - E_k >= tau_k (1 + tau_k lambda / 2) |g|^2 and E_k - E* <= |g|^2 / (2 lambda),
    so (E_{k-1} - E*) >= (1 + tau_k lambda)^2 (E_k - E*).

    Returns q of shape (steps,) from the log's step sizes (``result``: a
    :class:`flowfem.flow.FlowResult`).
    """
    name, _, arg = result.scheme.partition(":")
    theta = {"implicit_euler": 1.0, "crank_nicolson": 0.5, "theta": float(arg) if arg else 0.5}.get(name)
    tau, lam = result.column("tau")[1:], result.lam
    if theta == 1.0:
        return 1.0 / (1.0 + tau * lam), r"$\prod_k (1 + \tau_k\lambda)^{-1}$"
    if theta is None:
        return None, f"{result.scheme}: no contraction bound is proven for its variable steps"
    if not quadratic:
        return None, f"{result.scheme}: no contraction bound is proven for a non-quadratic loss"
    R = np.abs((1 - (1 - theta) * tau * lam) / (1 + theta * tau * lam))
    label = (r"$1$ (Crank-Nicolson: $|R(z)| \leq 1$, no rate)" if theta == 0.5
             else rf"$\prod_k \max(|R(\tau_k\lambda)|, {(1 - theta) / theta:.3g})$, "
             rf"$R(z) = (1 - {1 - theta:g}z) / (1 + {theta:g}z)$")
    return np.maximum(R, (1 - theta) / theta), label


def flow_bounds(result, quadratic: bool) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(error bound e_0 prod_{j<=k} q_j, energy gap bound gap_0 prod_{j<=k} q_j^2, the q_k formula)
    at every logged step k = 0..steps (arrays of shape (steps + 1,); e = ||U - U*||_G / ||U*||_G and
    gap = E - E* as logged), from :func:`step_factors`; (None, None, reason) where no bound is
    proven. A resumed run's log starts at step 0, so the products cover the whole run."""
    q, label = step_factors(result, quadratic)
    if q is None:
        return None, None, label
    prod = np.concatenate([[1.0], np.cumprod(q)])
    e0 = result.errors[0]
    gap0 = result.energies[0] - result.energy_star if result.energy_star is not None else np.nan
    return e0 * prod, gap0 * prod**2, label
