"""Figures (matplotlib, Agg backend; drawn on rank 0 from gathered arrays)."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def density_axes(ax, theta: np.ndarray, u: np.ndarray, domain: str) -> None:
    """Draw u over parameter space: heat map (2-D), curve over the angle (circle), or map (sphere/3-D)."""
    if theta.shape[1] == 2 and domain == "circle":
        phi = np.arctan2(theta[:, 1], theta[:, 0])
        o = np.argsort(phi)
        ax.plot(phi[o], u[o])
        ax.set_xlabel(r"direction angle of $\theta=(w,b)$")
        ax.set_ylabel("u")
    elif theta.shape[1] == 2:
        m = ax.tripcolor(theta[:, 0], theta[:, 1], u, shading="gouraud", cmap="RdBu_r",
                         vmin=-np.abs(u).max(), vmax=np.abs(u).max())
        ax.figure.colorbar(m, ax=ax, label="u")
        ax.set_xlabel("w")
        ax.set_ylabel("b")
        ax.set_aspect("equal")
    else:
        r = np.linalg.norm(theta, axis=1)
        lon = np.arctan2(theta[:, 1], theta[:, 0])
        lat = np.arcsin(np.clip(theta[:, 2] / np.maximum(r, 1e-300), -1, 1))
        m = ax.scatter(lon, lat, c=u, s=4, cmap="RdBu_r", vmin=-np.abs(u).max(), vmax=np.abs(u).max())
        ax.figure.colorbar(m, ax=ax, label="u")
        ax.set_xlabel(r"longitude of $\theta$")
        ax.set_ylabel(r"latitude of $\theta$")
    ax.set_title("density u")


def grid(x: np.ndarray) -> np.ndarray:
    """Points where the fit is drawn: 400 on the data's interval (d = 1), 120 x 120 on its box (d = 2)."""
    if x.shape[1] == 1:
        return np.linspace(x.min(), x.max(), 400)[:, None]
    lo, hi = x.min(axis=0), x.max(axis=0)
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
    return np.column_stack([g0.ravel(), g1.ravel()])


def fit_axes(ax, x: np.ndarray, y: np.ndarray, xg: np.ndarray, fg: np.ndarray, title: str = "fit") -> None:
    """1-D: data and f_u; 2-D: f_u over the data's box, its zero level and the data coloured by y.

    ``xg`` = grid(x) and ``fg`` the predictions there (computed collectively beforehand).
    """
    if x.shape[1] == 1:
        ax.plot(x[:, 0], y, ".", ms=3, alpha=0.5, label="data")
        ax.plot(xg[:, 0], fg, "k", lw=1.5, label=r"$f_u$")
        ax.set_xlabel("x")
        ax.legend()
    else:
        g0, g1 = xg[:, 0].reshape(120, 120), xg[:, 1].reshape(120, 120)
        f = fg.reshape(g0.shape)
        m = ax.contourf(g0, g1, f, levels=20, cmap="RdBu_r")
        ax.contour(g0, g1, f, levels=[0.0], colors="k", linewidths=1.5)
        ax.scatter(x[:, 0], x[:, 1], c=y, s=6, cmap="RdBu_r", edgecolors="k", linewidths=0.2)
        ax.figure.colorbar(m, ax=ax, label=r"$f_u$")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    ax.set_title(title)


def solution_figure(path: str, theta, u, domain, x, y, xg, fg, title: str = "fit") -> None:
    """The density next to the fit, saved as PNG (call on one rank)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    density_axes(axes[0], theta, u, domain)
    fit_axes(axes[1], x, y, xg, fg, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def energy_figure(path: str, result, title: str = "") -> None:
    """A flow's E(t) - E* on a log scale with the theoretical exp(-2 lambda t) (E(0) - E*), and the error
    ||u - u*||_G / ||u*||_G against exp(-lambda t) (``result``: a :class:`flowfem.flow.FlowResult`; call on one rank)."""
    plt = _pyplot()
    t, E = result.times, result.energies
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    lam = result.lam
    if result.energy_star is not None:
        gap = E - result.energy_star
        pos = gap > 0
        ax.semilogy(t[pos], gap[pos], "o-", ms=3, label=r"$E_\alpha(u(t)) - E_\alpha(u^*)$")
        tt = np.linspace(0, t.max() if t.max() > 0 else 1.0, 400)
        ax.semilogy(tt, gap[0] * np.exp(-2 * lam * tt), "k--", lw=1,
                    label=rf"$e^{{-2\lambda t}}(E(0) - E^*)$, $\lambda$ = {lam:.3g}")
        floor = max(gap[pos].min() if pos.any() else 1e-300, 1e-300)
        ax.set_ylim(bottom=0.1 * floor, top=10 * max(gap[0], floor))
        ax.set_ylabel("energy gap")
    else:
        ax.semilogy(t, E, "o-", ms=3, label=r"$E_\alpha(u(t))$")
        ax.set_ylabel(r"$E_\alpha$")
    ax.set_xlabel("t")
    ax.legend()
    ax.set_title(f"{result.scheme}, {result.metric} metric" + (f": {title}" if title else ""))
    ax = axes[1]
    err = result.errors
    if np.isfinite(err).any():
        ok = np.isfinite(err) & (err > 0)
        ax.semilogy(t[ok], err[ok], "o-", ms=3, label=r"$\|u - u^*\|_G / \|u^*\|_G$")
        tt = np.linspace(0, t.max() if t.max() > 0 else 1.0, 400)
        ax.semilogy(tt, err[0] * np.exp(-lam * tt), "k--", lw=1, label=r"$e^{-\lambda t}$ bound")
        ax.set_ylim(bottom=0.1 * err[ok].min(), top=10 * err[0])
        ax.legend()
    ax.set_xlabel("t")
    ax.set_title("distance to the stationary density")
    if t.max() > 0 and t[1:].min(initial=np.inf) > 0 and t.max() / t[1:].min() > 1e3:
        for a in axes:  # geometric steps: show the decades
            a.set_xscale("symlog", linthresh=t[1:].min())
            a.set_xlim(left=0.0, right=1.5 * t.max())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
