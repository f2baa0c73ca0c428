"""Figures (matplotlib, Agg backend; drawn on rank 0 from gathered arrays)."""

from __future__ import annotations

import os

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


# -- flowfem compare --------------------------------------------------------------------------

_COLOURS = {"gd": "tab:blue", "adam": "tab:orange", "quadrature": "tab:green", "sample": "tab:purple",
            "refit": "tab:red"}


def comparison_figures(directory: str, cmp, gathered) -> None:
    """error_vs_width.png, error_vs_time.png and densities.png of a :class:`flowfem.compare.Comparison`
    (rank 0; ``gathered``: (theta, u) of the FE and particle densities, gathered)."""
    plt = _pyplot()
    table = cmp.table()
    fe = next(r for r in table if r["solver"] == "FE solve")

    # test error, train loss and own objective versus width
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    keys = [("test_rmse", "test RMSE"), ("train_loss", "train loss (1/n) sum (f - y)^2 / 2"),
            ("objective", "own objective (differs by family)")]
    for ax, (key, label) in zip(axes, keys):
        for (solver, method) in dict.fromkeys((r["solver"], r["method"]) for r in table if r["width"]):
            rows = sorted((r for r in table if r["solver"] == solver and r["method"] == method),
                          key=lambda r: r["width"])
            N = np.array([r["width"] for r in rows], float)
            if key == "test_rmse":
                mean = np.array([r["test_rmse_mean"] for r in rows])
                err = [mean - [r["test_rmse_min"] for r in rows], np.array([r["test_rmse_max"] for r in rows]) - mean]
            else:
                mean = np.array([r[f"{key}_mean"] for r in rows])
                std = np.array([r[f"{key}_std"] for r in rows])
                err = [np.minimum(std, 0.999 * mean), std]
            name = f"particles {method}" if solver == "particles" else f"FE readout {method}"
            ax.errorbar(N, mean, yerr=err, marker="o" if solver == "particles" else "s", capsize=3,
                        color=_COLOURS.get(method), ls="-" if solver == "particles" else "--", label=name)
        ref = {"test_rmse": fe["test_rmse_mean"], "train_loss": fe["train_loss_mean"], "objective": fe["objective_mean"]}[key]
        ax.axhline(ref, color="k", ls=":", label="FE solve (continuum)" if key != "objective" else "E_alpha(u*)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("width N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("mean over seeds, bars: min..max")
    axes[2].set_title("each family's own objective (see table)")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "error_vs_width.png"), dpi=110)
    plt.close(fig)

    # test error versus wall time
    fig, ax = plt.subplots(figsize=(7.5, 5))
    widths = cmp.settings["widths"]
    for (m, N, s), r in cmp.particles.items():
        h = r.history
        k = widths.index(N)
        ax.plot(np.maximum(h["time"], 1e-4), h["test_error"], color=_COLOURS[m],
                alpha=0.35 + 0.65 * (k + 1) / len(widths), lw=1.5 if s == cmp.settings["seeds"][0] else 0.6,
                label=f"{m} N={N}" if s == cmp.settings["seeds"][0] else None)
    for r in cmp.runs:
        if r.solver == "FE readout" and r.method == "quadrature":
            ax.plot(r.seconds, r.test_rmse, "s", color=_COLOURS["quadrature"], ms=6)
            ax.annotate(f"N={r.width}", (r.seconds, r.test_rmse), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot(fe["seconds_mean"], fe["test_rmse_mean"], "k*", ms=14, label="FE solve")
    ax.plot([], [], "s", color=_COLOURS["quadrature"], label="FE readout quadrature (own solve)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"wall time [s] on {cmp.settings['ranks']} rank(s)")
    ax.set_ylabel("test RMSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("particle training curves; FE solve as a point")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "error_vs_time.png"), dpi=110)
    plt.close(fig)

    # the FE density next to the particle densities
    names = ["FE density u*"] + [f"particles {m}, N={N}, seed {s}" for (m, N, s) in cmp.densities]
    fig, axes = plt.subplots(1, len(gathered), figsize=(5.2 * len(gathered), 4.4), squeeze=False)
    domain = cmp.settings["domain"]
    for ax, (theta, values), name, pd in zip(axes[0], gathered, names, [None] + list(cmp.densities.values())):
        density_axes(ax, theta, values, domain)
        if pd is not None and theta.shape[1] == 2 and domain != "circle":
            keep = ~pd.dropped
            ax.plot(pd.theta[keep, 0], pd.theta[keep, 1], "k.", ms=1.5, alpha=0.5)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "densities.png"), dpi=110)
    plt.close(fig)
