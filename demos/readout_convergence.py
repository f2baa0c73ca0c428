# # Reading a finite network out of a density: convergence in the width N
#
# flowfem trains a shallow network on inputs x in R by finding a *density* u
# on the parameter plane theta = (w, b): the network of the density is
#
#     f_u(x) = integral sigma(w x + b) u(w, b) d(w, b),
#
# and u minimises the convex functional
#
#     E_alpha(u) = 1/(2n) sum_j (f_u(x_j) - y_j)^2 + alpha/2 ||u||^2_{H^1_omega}.
#
# An ordinary network of width N,
#
#     f_N(x) = sum_i a_i sigma(w_i x + b_i),
#
# is read out of u with a rule that puts N neurons theta_i = (w_i, b_i) in
# the plane and gives each an output weight (flowfem.readout):
#
# * quadrature: a Gauss rule on the cells of the mesh, a_i = q_i u(theta_i).
#   Here the midpoint rule (degree 1, one point per triangle) on m^2
#   sub-triangles of every cell, so N = (number of cells) m^2. Its error is
#   O(h^2) in the spacing h of the points, and h^2 ~ 1/N in the plane:
#   expected rate O(1/N).
# * sample: theta_i drawn from |u|, a_i = sign(u(theta_i)) ||u||_1 / N. Monte
#   Carlo: expected rate O(N^(-1/2)), averaged over seeds.
# * refit: the quadrature neurons, with the output weights re-fitted by
#   regularised least squares on the training data. It is the best network
#   on those neurons, not an approximation of f_u: its distance to f_u is
#   expected to level off.
#
# For every rule and width the demo measures
#
#     error = ||f_N - f_u||_{L^2(data)} = sqrt(1/n sum_j (f_N(x_j) - f_u(x_j))^2),
#     gap   = |E_alpha[f_N] - E_alpha[f_u]|,
#
# where E_alpha[f] is the functional with f in place of f_u in the data term
# and the same regulariser ||u||^2, so the gap is the change in the data
# term: with e = f_N - f_u and the residual r = f_u - y at the data,
# gap = |(1/n) sum_j (r_j e_j + e_j^2 / 2)|. It is at most of the order of
# the error, and nearer its square when f_u fits the data closely (r small),
# as here. The table prints the gap with its sign: the refit's turns negative
# as N grows (it fits the training data better than f_u). f_u is the continuum network
# of the discrete density, computed with
# a fine composite rule whose own error is printed. The demo prints a table
# and the fitted slopes of log(error) and log(gap) against log(N), and, run
# as a script, draws both on log-log axes with the slopes in the legend:
#
#     python demos/readout_convergence.py
#     mpirun -n 2 python demos/readout_convergence.py
#
# With the environment variable CI set it runs at a small size.

import os
import sys

import numpy as np

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import data, outputs, readout
from flowfem.network import Network
from flowfem.operator import make_features
from flowfem.problem import Problem
from flowfem.space import Space
from mpi4py import MPI

RULES = ("quadrature", "sample", "refit")


def evaluate(net: Network, x: np.ndarray) -> np.ndarray:
    """f_N(x) with the fastest exact feature representation (for ReLU on 1-D inputs: prefix sums
    over the neurons sorted by their kink, so a million neurons cost little)."""
    return make_features(net.activation, x, net.theta, repeated=False).matvec(net.a)


def slope(N, values) -> float:
    """The fitted exponent p of values ~ C N^p (least squares in log-log)."""
    return float(np.polyfit(np.log(N), np.log(values), 1)[0])


def main(cells: int = 16, n: int = 400, sizes=(1, 2, 4, 8), seeds: int = 16, reference: int = 32,
         alpha: float = 1e-4, comm=MPI.COMM_WORLD) -> dict:
    # ## The density
    # sin(pi x) sampled at n points of [-1, 1]; ReLU neurons in the square
    # [-4, 4]^2 split into 2 cells^2 triangles; the Gaussian weight
    # omega = exp(-|theta|^2 / 8); P1 elements. One linear solve gives u.
    train = data.synthetic("sin", n, seed=0)
    x, y = train.x, train.y
    space = Space.box(d=1, n=cells, radius=4.0, comm=comm)
    problem = Problem(space, activation="relu", weight="gaussian:2", alpha=alpha, kappa=1.0, degree=1)
    result = problem.fit(x, y, solver="cg", rtol=1e-12, progress=True)
    regulariser = result.parts[1]  # (alpha/2) ||u||^2, the same for every f_N below

    # ## The continuum network f_u
    # The degree-2 rule on reference^2 sub-triangles of every cell; the same
    # rule on half as many sub-triangles per side estimates its error.
    f_u = evaluate(readout.readout(result, degree=2, subdivisions=reference), x)
    f_half = evaluate(readout.readout(result, degree=2, subdivisions=reference // 2), x)
    reference_error = float(np.sqrt(np.mean((f_u - f_half) ** 2)))

    def measure(net):
        f = evaluate(net, x)
        err = np.sqrt(np.mean((f - f_u) ** 2))
        gap = (np.mean((f - y) ** 2) - np.mean((f_u - y) ** 2)) / 2  # signed; the regularisers cancel
        return err, gap

    # ## The three rules at N = 2 cells^2 m^2
    # The sample rule draws from |u| as represented by the solve's own rule
    # (3 points per triangle); error and gap are averaged over the seeds
    # (the RMS of the error, the mean of |gap|).
    N = [2 * cells**2 * m**2 for m in sizes]
    error = {r: [] for r in RULES}
    signed = {r: [] for r in RULES}
    for m, width in zip(sizes, N):
        for rule in ("quadrature", "refit"):
            net = readout.readout(result, rule, degree=1, subdivisions=m)
            assert net.width == width
            e, g = measure(net)
            error[rule].append(float(e))
            signed[rule].append(float(g))
        runs = np.array([measure(readout.readout(result, "sample", width=width, seed=s)) for s in range(seeds)])
        error["sample"].append(float(np.sqrt(np.mean(runs[:, 0] ** 2))))
        signed["sample"].append(float(np.mean(np.abs(runs[:, 1]))))
    gap = {r: [abs(g) for g in signed[r]] for r in RULES}

    metrics = dict(
        N=N, error=error, gap=gap, signed_gap=signed,
        slope_error={r: slope(N, error[r]) for r in RULES},
        slope_gap={r: slope(N, gap[r]) for r in RULES},
        reference_error=reference_error, rmse_u=float(np.sqrt(np.mean((f_u - y) ** 2))),
        energy=float(np.mean((f_u - y) ** 2) / 2 + regulariser), cells=space.num_cells, ranks=comm.size,
    )

    # ## Results
    if comm.rank == 0:
        print(f"{space.num_cells} cells, {problem.H.ndofs} dofs on {comm.size} rank(s); n = {n} data points")
        print(f"f_u: degree-2 rule on {reference}^2 sub-triangles per cell, error ~ {reference_error:.1e}; "
              f"E_alpha[f_u] = {metrics['energy']:.6e}")
        print(f"{'N':>8} " + " ".join(f"{r + ' error':>16} {r + ' gap':>16}" for r in RULES))
        for i, width in enumerate(N):
            print(f"{width:8d} " + " ".join(f"{error[r][i]:16.3e} {signed[r][i]:16.3e}" for r in RULES))
        for r in RULES:
            print(f"slope {r:>10}: error N^{metrics['slope_error'][r]:+.2f}, gap N^{metrics['slope_gap'][r]:+.2f}")
    return metrics


# ## Figure
# Two log-log panels, error and gap against N, one line per rule, the
# fitted slope in the legend; drawn on rank 0.


def plot(metrics: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    N = np.array(metrics["N"])
    for ax, key, title, label in [
            (axes[0], "error", r"$\|f_N - f_u\|_{L^2(\mathrm{data})}$", "readout error on the data"),
            (axes[1], "gap", r"$|E_\alpha[f_N] - E_\alpha[f_u]|$", "energy gap to the continuum")]:
        for rule, marker in zip(RULES, "osd"):
            p = metrics["slope_" + key][rule]
            ax.loglog(N, metrics[key][rule], marker=marker, label=f"{rule} (slope {p:+.2f})")
        ax.loglog(N, metrics[key]["quadrature"][0] * N[0] / N, "k:", lw=1, label=r"$N^{-1}$")
        ax.loglog(N, metrics[key]["sample"][0] * np.sqrt(N[0] / N), "k--", lw=1, label=r"$N^{-1/2}$")
        ax.set_xticks(N, [str(int(n)) for n in N])  # the widths run, not the decades
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("width N")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: off the data
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: str, comm=MPI.COMM_WORLD, **sizes) -> dict:
    """:func:`main` (at ``sizes``), its figure written to ``out``/figure.png as every demo writes: whole or not
    at all, replacing only a directory this demo wrote (:func:`flowfem.outputs.output_directory`)."""
    metrics = main(**sizes, comm=comm)
    with outputs.output_directory(out, comm, force=True) as tmp:
        if comm.rank == 0:
            plot(metrics, os.path.join(tmp, "figure.png"))
    if comm.rank == 0:
        print(f"wrote {out}/figure.png")
    return metrics


if __name__ == "__main__":
    sys.exit(outputs.run_demo(write, "results/readout_convergence", quick=dict(cells=8, n=200, seeds=8, reference=16)))
