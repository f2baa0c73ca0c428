# # Gradient flow: from the initialisation law to the optimal density
#
# Training a shallow network by gradient descent moves its neurons. In the
# density picture (docs/theory.md §7) training is a *flow of the density*
# u(theta, t) on parameter space: in a metric g,
#
#     g(du/dt, v) = -dE_alpha(u)[v]   for all v,
#
# with g(u, v) = integral u v omega (the L^2_omega metric, mass matrix M) or
# g = a_omega (the Sobolev metric, matrix A). For the squared loss the strong
# form in L^2_omega is the parabolic equation
#
#     omega du/dt = alpha div(kappa omega grad u) - alpha omega u
#                   - (1/n) sum_j (f_u(x_j) - y_j) sigma(theta . x~_j),
#
# with kappa omega du/dnu = 0 on the boundary: diffusion plus a non-local
# reaction of finite rank. E_alpha is lambda-convex with lambda = alpha, so
# the flow contracts toward the unique minimiser u*,
#
#     ||u(t) - u*|| <= exp(-alpha t) ||u(0) - u*||,
#     E(u(t)) - E(u*) <= exp(-2 alpha t) (E(u(0)) - E(u*)).
#
# Discretely we use implicit Euler, the minimising-movement scheme
#
#     U^{k+1} = argmin_U E_alpha(U) + ||U - U^k||_G^2 / (2 tau_k),
#
# which lowers the energy at every step for every tau. The flow is stiff
# (alpha A against M grows like alpha / h^2), and implicit steps may be as
# large as we like, so the steps grow geometrically: the flow reaches the
# stationary density in a handful of steps, each a linear solve (squared
# loss) or a Newton solve (logistic loss) with the same sparse-plus-low-rank
# solver as the one-solve minimiser.
#
# Two flows:
#
# 1. Regression in 1-D (y = sin(pi x)): a Gaussian initial density (the
#    initialisation law N(0, s^2 I) of the neurons) flows to u*; we watch the
#    energy gap against the bound implicit Euler obeys, prod_k (1 + tau_k alpha)^-2
#    (not exp(-2 alpha t): large implicit steps contract less than the continuous
#    flow), and the density at a few times.
# 2. Classification in 2-D (two moons, labels -1/+1) with ReLU neurons on the
#    sphere S^2 of directions and the logistic loss. The flow starts where a
#    random finite network stands (its neurons projected onto the mesh) and
#    ends at the Newton solution; we draw the density on the sphere and the
#    decision boundary f_u = 0 at a few times.
#
#     mpirun -n 2 python demos/gradient_flow.py
#
# Output goes to results/gradient_flow/ (figures, ParaView trajectories,
# energy logs). With the environment variable CI set it runs at a small size.

import os
import sys

import numpy as np

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import data, io, outputs, plot
from flowfem.flow import Flow
from flowfem.flow.initial import initial_density
from flowfem.measure import project_network
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.space import Space
from mpi4py import MPI


def snapshots(flow, U, steps, **run):
    """Run the flow, keeping the gathered density (on rank 0) at the given step numbers."""
    kept = {}

    def keep(rec, U):
        if rec["step"] in steps:
            kept[rec["step"]] = (rec["t"], gathered(flow, U))

    kept[0] = (0.0, gathered(flow, U))
    result = flow.run(U, callback=keep, progress=True, **run)
    kept[result.steps] = (result.times[-1], gathered(flow, U))
    return result, kept


def gathered(flow, U):
    """(theta, u, cells, U copy): dof coordinates, values and mesh cells on rank 0 (collective)."""
    u = flow.E.H.function("u")
    u.x.petsc_vec.array[:] = U.array_r
    u.x.scatter_forward()
    theta, values, cells = plot.gather(u)
    return theta, values, cells, U.copy()


def regression(n, cells, alpha, comm, out):
    # ## 1. Regression: a Gaussian bump flows to the optimal density
    # n samples of sin(pi x) on [-1, 1], neurons theta = (w, b) in [-4, 4]^2,
    # weight omega = 1, P1 elements.
    train = data.synthetic("sin", n, seed=0)
    problem = Problem(Space.box(1, cells, 4.0, comm=comm), "relu", "uniform", alpha=alpha, kappa=1.0)
    E = problem.functional(train.x, train.y)

    # The flow in the L^2_omega metric with implicit Euler. The stationary
    # solution (one linear solve) is the reference for ||u - u*||.
    flow = Flow(E, "L2", "implicit_euler")
    U_star = flow.stationary()

    # The initial density: the Gaussian u0 = 2 exp(-|theta|^2 / 2), i.e.
    # neurons drawn from N(0, I) with total output weight about 4 pi.
    U = io.vector(initial_density(problem.H, "gaussian:1:2"))

    # Steps tau_k = 0.5 * 3^k until ||u - u*||_{L2} <= 1e-6 ||u*||: the early
    # steps resolve the fast transient, the late ones jump along the slow modes.
    writer = io.TrajectoryWriter(os.path.join(out, "trajectory_1d.xdmf"), problem.H) if out else None
    result, kept = snapshots(flow, U, steps={2, 5, 8}, tau=0.5, growth=3.0, tol=1e-6, max_steps=60,
                             writer=writer)
    if writer:
        writer.close()

    # The observed contraction. Each implicit Euler step contracts by at least
    # 1 / (1 + tau alpha) (the discrete counterpart of exp(-alpha tau)); while
    # tau alpha is small the observed rate -log(e(t) / e(0)) / t is at least alpha.
    e, t, tau = result.errors, result.times, result.column("tau")
    small = np.flatnonzero(tau[1:] * alpha <= 0.1)
    early = int(small[-1]) + 1 if len(small) else 1
    rate_early = float(-np.log(e[early] / e[0]) / t[early])
    monotone = bool(np.all(np.diff(result.energies) <= 1e-12 * abs(result.energies[0])))
    D = U.copy()
    D.axpy(-1.0, U_star)
    metrics = dict(steps=result.steps, final_error=float(e[-1]), alpha=alpha, rate=rate_early,
                   energy_monotone=monotone, energy=float(result.energies[-1]), energy_star=flow.energy_star,
                   max_error_ratio=float(np.max(e[1:] / e[:-1] * (1 + result.column("tau")[1:] * alpha))),
                   difference=flow.norm(D) / flow.norm(U_star), ndofs=problem.H.ndofs,
                   linear_iterations=result.column("linear_iterations")[1:].astype(int).tolist())
    if comm.rank == 0:
        print(f"1-D regression, {problem.H.ndofs} dofs, n = {n}, alpha = {alpha}:")
        print("  step        t      tau      E_alpha     ||u-u*||/||u*||  CG its")
        for r in result.log:
            print(f"  {r['step']:4d} {r['t']:9.3g} {r['tau']:8.3g} {r['energy']:.8e}   {r['error']:.3e}     "
                  f"{r['linear_iterations']}")
        print(f"  energy decreased at every step: {monotone}; every step contracted by <= 1 / (1 + tau alpha) "
              f"(largest ratio to that bound: {metrics['max_error_ratio']:.4f}); observed rate while tau alpha "
              f"<= 0.1 (t <= {t[early]:.3g}): {rate_early:.3g} >= alpha = {alpha}")
    xg = np.linspace(-1, 1, 200)[:, None]
    fits = {k: E.Phi.predict(v[1][3], xg) for k, v in kept.items()}
    if out and comm.rank == 0:
        plot.energy_figure(os.path.join(out, "energy_1d.png"), result, title="sin, Gaussian start",
                           quadratic=True)
        figure_1d(os.path.join(out, "densities_1d.png"), kept, fits, train, xg)
    flow.destroy()
    return metrics


def classification(n, refinements, alpha, width, comm, out):
    # ## 2. Classification on the sphere: from a finite network to the optimum
    # Two moons in R^2, labels -1/+1. ReLU is positively homogeneous, so a
    # neuron theta = r vartheta acts as r times the neuron vartheta on the
    # sphere S^2: the parameter space is the sphere, a curved surface mesh.
    train = data.synthetic("two_moons", n, seed=0)
    test = data.synthetic("two_moons", 1000, seed=1)
    problem = Problem(Space.sphere(refinements, comm=comm), "relu", "uniform", alpha=alpha, kappa=0.2,
                      loss="logistic")
    E = problem.functional(train.x, train.y)

    # The stationary density solves a nonlinear Euler-Lagrange equation:
    # Newton's method, each step one solve with the same linear solver.
    flow = Flow(E, "L2", "implicit_euler")
    U_star = flow.stationary()
    newton_history = list(flow.stationary_info.history)

    # The start: a random finite network of `width` neurons drawn from the
    # initialisation law (theta ~ N(0, I), a ~ N(0, 1/width)), projected onto
    # the mesh: integral u0 v = sum_i r_i a_i v(vartheta_i) for all v.
    rng = np.random.default_rng(3)
    net = Network(rng.standard_normal((width, 2)), rng.standard_normal(width),
                  rng.standard_normal(width) / np.sqrt(width), "relu")
    U = io.vector(project_network(problem.H, net))

    # Each implicit Euler step is now a Newton solve of
    # G (U - U^k) / tau + dE(U) = 0 (the logistic loss is not quadratic).
    result, kept = snapshots(flow, U, steps={1, 3}, tau=1.0, growth=4.0, tol=1e-6, max_steps=60)
    accuracy = {k: plot.accuracy(E.Phi.predict(v[1][3], test.x), test.y) for k, v in kept.items()}
    xg = data_grid(train.x)
    fields = {k: E.Phi.predict(v[1][3], xg) for k, v in kept.items()}
    D = U.copy()
    D.axpy(-1.0, U_star)
    metrics = dict(steps=result.steps, final_error=float(result.errors[-1]),
                   difference=flow.norm(D) / flow.norm(U_star), newton_history=newton_history,
                   newton_per_step=result.column("newton_iterations")[1:].astype(int).tolist(),
                   accuracy={float(kept[k][0]): a for k, a in sorted(accuracy.items())},
                   final_accuracy=accuracy[max(accuracy)], initial_accuracy=accuracy[0],
                   energy_monotone=bool(np.all(np.diff(result.energies) <= 1e-12 * abs(result.energies[0]))),
                   ndofs=problem.H.ndofs)
    if comm.rank == 0:
        print(f"two moons on the sphere, {problem.H.ndofs} dofs, n = {n}, logistic loss, alpha = {alpha}:")
        print("  Newton for u*: ||dE|| = " + " ".join(f"{r:.2e}" for r in newton_history))
        print(f"  flow: {result.steps} implicit Euler steps, Newton iterations per step "
              f"{metrics['newton_per_step']}, ||u - u*|| / ||u*|| = {result.errors[-1]:.2e}")
        print("  test accuracy at t = " + ", ".join(f"{t:.3g}: {a:.3f}" for t, a in metrics["accuracy"].items()))
    if out and comm.rank == 0:
        plot.energy_figure(os.path.join(out, "energy_moons.png"), result, title="two moons, logistic",
                           quadratic=False)
        figure_moons(os.path.join(out, "moons.png"), kept, fields, train, xg, accuracy)
    flow.destroy()
    return metrics


def data_grid(x):
    lo, hi = x.min(axis=0) - 0.3, x.max(axis=0) + 0.3
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
    return np.column_stack([g0.ravel(), g1.ravel()])


def figure_1d(path, kept, fits, train, xg):
    """The density at a few times (one colour scale: the last, u*'s) above the fit at those times."""
    plt = plot._pyplot()
    keys = sorted(kept)
    norm = plot.symmetric_norm(kept[keys[-1]][1][1])
    fig, axes = plt.subplots(2, len(keys), figsize=(3.6 * len(keys), 6.6), layout="constrained")
    clipped = False
    for j, k in enumerate(keys):
        t, (theta, u, cells, _) = kept[k][0], kept[k][1]
        title = f"u at t = {t:.3g} (step {k})"
        title, cut = plot.clipped_title(title, u, norm)
        clipped |= cut
        m = plot.density_axes(axes[0, j], theta, u, cells, norm=norm, title=title)
        axes[1, j].plot(train.x[:, 0], train.y, ".", ms=2, alpha=0.3, label="data")
        axes[1, j].plot(xg[:, 0], fits[k], "k", label="$f_u$")
        axes[1, j].set_xlabel("x")
        axes[1, j].set_ylabel("y, $f_u(x)$")
        axes[1, j].set_title(r"$f_u$" + f" at t = {t:.3g}")
    axes[1, 0].legend(fontsize=8)
    fig.colorbar(m, ax=list(axes[0]), label="u (scale of the last frame)", extend="both" if clipped else "neither")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure_moons(path, kept, fields, train, xg, accuracy):
    """The density on S^2 at a few times (one colour scale: the last, u*'s) above the classifier:
    f_u, its decision boundary f_u = 0 and the data by class, with the test accuracy."""
    plt = plot._pyplot()
    keys = sorted(kept)
    norm = plot.symmetric_norm(kept[keys[-1]][1][1])
    fig, axes = plt.subplots(2, len(keys), figsize=(4.6 * len(keys), 7.0), layout="constrained")
    clipped = False
    for j, k in enumerate(keys):
        t, (theta, u, cells, _) = kept[k][0], kept[k][1]
        title = f"u on S^2 at t = {t:.3g}"
        title, cut = plot.clipped_title(title, u, norm)
        clipped |= cut
        m = plot.density_axes(axes[0, j], theta, u, cells, norm=norm, title=title)
        plot.fit_axes(axes[1, j], train.x, train.y, xg, fields[k], "logistic", f"t = {t:.3g}", accuracy[k])
    fig.colorbar(m, ax=list(axes[0]), label="u (scale of the last frame)", extend="both" if clipped else "neither")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(n: int = 2000, cells: int = 48, n_moons: int = 400, refinements: int = 3, width: int = 200,
         alpha: float = 1e-4, out: str | None = "results/gradient_flow", comm=MPI.COMM_WORLD) -> dict:
    if out is None:
        return dict(regression=regression(n, cells, alpha, comm, None),
                    classification=classification(n_moons, refinements, 1e-3, width, comm, None))
    with outputs.output_directory(out, comm, force=True) as tmp:
        metrics = dict(regression=regression(n, cells, alpha, comm, tmp),
                       classification=classification(n_moons, refinements, 1e-3, width, comm, tmp))
        io.write_json(os.path.join(tmp, "metrics.json"), io.jsonable(metrics), comm)
    if comm.rank == 0:
        print(f"wrote {out}/: densities_1d.png, energy_1d.png, trajectory_1d.xdmf (ParaView), moons.png, "
              "energy_moons.png, metrics.json")
    return metrics


if __name__ == "__main__":
    sys.exit(outputs.run_demo(main, "results/gradient_flow",
                              quick=dict(n=300, cells=16, n_moons=150, refinements=2, width=60)))
