# # Splitting plateaus: a narrow minimum, split, is a line of saddles
#
# Shallow networks f(x) = sum_i a_i sigma(w_i x + b_i) are trained on a
# non-convex landscape. One of its best understood features is the
# *splitting plateau* (Fukumizu & Amari 2000): take a network of width N at a
# stationary point of the loss
#
#     L(p) = (1/n) sum_j l(f(x_j), y_j),    l(f, y) = (f - y)^2 / 2,
#
# and duplicate neuron i: keep theta_i = (w_i, b_i) twice, with output
# weights mu a_i and (1 - mu) a_i. The wider network computes the same
# function for every mu, so L is constant along the line mu -> split(mu), and
# every point of it is again stationary. Whether a point is a minimum or a
# saddle of the wider network is decided by a (d+1) x (d+1) matrix, the
# *inner Hessian* of neuron i,
#
#     H = a_i (1/n) sum_j l'(f(x_j), y_j) sigma''(theta_i . x~_j) x~_j x~_j^T,
#
# through mu (1 - mu) H: positive definite -> minimum (when the narrow network
# is a strict minimum), a negative eigenvalue -> saddle, mu in {0, 1} ->
# degenerate. `flowfem.plateau.classify_plateau` implements this; this demo
# checks it against the eigenvalues of the full Hessian of the split network,
# then shows what the plateau does to gradient descent and what flowfem does
# instead.
#
# The steps:
#
# 1. data from a width-2 teacher, and a *width-1* student trained by the
#    particle solver (`flowfem.particles.train`, mean-field gradient descent);
# 2. the particle solver stops near, not at, a stationary point (|grad L|
#    ~ 2e-5 after 2000 steps): the plateau theory needs an exact one, so we
#    polish the student with Newton's method (`plateau.minimise`,
#    saddle-free Newton, quadratic convergence) to |grad L| ~ 1e-16, rounding
#    level, in three steps;
# 3. split its neuron: L along mu is flat to rounding, and the classification
#    from H agrees with the full Hessian on a grid of mu;
# 4. start the particle solver *on* the plateau: it lingers there, leaving
#    only when rounding errors or a perturbation have grown along the escape
#    direction, and fast when kicked along it;
# 5. solve flowfem's convex problem (tanh neurons on a box of parameters): one
#    linear solve, no plateau, and a far lower data loss.
#
# **Which objectives are compared.** The particle solver minimises
# J = (1/n) sum_j l(f(x_j), y_j) + (lam/2)(1/N) sum |P_i|^2 in mean-field
# scaling; we use lam = 0, and then J is the data loss of the network
# f = (1/N) sum_i a_i sigma(...), which is L above (the Network object folds
# the 1/N into a_i). flowfem minimises E_alpha(u) = (1/n) sum_j l(f_u(x_j), y_j)
# + (alpha/2) ||u||^2_{H^1_omega}; the regulariser has no counterpart for a
# finite network (a sum of Diracs has no H^1 norm), so E_alpha itself is not
# comparable with L. What is compared is the **data term**
# (1/n) sum_j (f(x_j) - y_j)^2 / 2, the same number for every model, and the
# test RMSE on fresh points. The continuum network f_u is not of width 2: the
# comparison says what the convex formulation reaches in one solve, not that
# a width-2 network could reach it.
#
# Run it with
#
#     python demos/splitting_plateau.py            # figures in results/splitting_plateau/
#     mpirun -n 2 python demos/splitting_plateau.py
#
# With the environment variable CI set it runs at a small size.

# +
import os
import sys

import numpy as np

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import plateau as ls
from flowfem import outputs, particles
from mpi4py import MPI

ACTIVATION = "tanh"  # smooth: sigma'' != 0, so H is informative (relu has sigma'' = 0 a.e.)
# -

# ## Data
#
# A width-2 teacher y = tanh(3x - 1) + 0.5 tanh(2x + 1.5) on x ~ U[-1, 1],
# without noise: a width-2 network fits it exactly, a width-1 network cannot.
# Every rank draws the same points from the seed.

# +
def teacher(x):
    return np.tanh(3 * x[:, 0] - 1) + 0.5 * np.tanh(2 * x[:, 0] + 1.5)


def make_data(n, seed):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 1))
    return x, teacher(x)
# -

# ## 1-2. The narrow network: particle solver, then Newton
#
# Plain gradient descent in mean-field time (step lr) from a seeded random
# start. Its end point is only approximately stationary; Newton's method on
# the same L (no weight decay) makes it stationary to rounding. Every rank
# computes the same numbers; rank 0's parameters are broadcast so that all
# ranks take the same decisions below bit for bit.

# +
def narrow_minimum(x, y, steps, lr, seed, comm):
    run = particles.train(x, y, width=1, activation=ACTIVATION, method="gd", lr=lr, steps=steps,
                          seed=seed, comm=comm, progress=True)
    polished = ls.minimise(run.network, x, y, gtol=1e-12)
    p = comm.bcast(ls.parameters(polished.network), root=0)
    return run, polished, ls.with_parameters(polished.network, p)
# -

# ## 3. The plateau and its classification
#
# For each mu of a grid, three things: L(split(mu)) - L(narrow) (zero up to
# rounding: the plateau is flat), the kind from the inner Hessian
# (`classify_plateau`), and the kind read off the eigenvalues of the full
# Hessian of the split network, restricted to the complement of the line's
# tangent (`split_hessian_eigenvalues`; the tangent itself has curvature 0).
# By Sylvester's law of inertia the two must agree in sign pattern; the
# eigenvalues themselves differ, because the split directions are not
# orthogonal to the narrow ones in the Euclidean metric.
#
# For this data H comes out *indefinite*: for every mu other than 0 and 1
# one eigenvalue of mu (1 - mu) H is negative, so the whole line except two
# degenerate points consists of saddles. That is the common case: among
# several hundred width-1 and width-2 tanh/sigmoid networks we trained on
# 1-D teacher data, only a handful had a definite H. A definite H, with a
# segment of genuine minima on the line, is built from constructed data in
# tests/test_plateau.py.

# +
def classify(net, x, y, mus):
    flat = ls.plateau_flatness(net, 0, x, y, mus)
    plateau = ls.classify_plateau(net, 0, x, y, mus)
    brute = [ls.split_hessian_eigenvalues(net, 0, mu, x, y) for mu in mus]
    brute_kinds = [ls.classify_eigenvalues(ev) for ev in brute]
    return flat, plateau, np.array(brute), brute_kinds


def second_variation(net, x, y, point, t=1e-3):
    """(L(p + t v) + L(p - t v) - 2 L(p)) / t^2 along the escape direction v of a saddle point."""
    wide = ls.split(net, 0, point.mu)
    p, v = ls.parameters(wide), point.escape_direction

    def L(q):
        return ls.objective(ls.with_parameters(wide, q), x, y)

    return (L(p + t * v) + L(p - t * v) - 2 * L(p)) / t**2
# -

# ## 4. Gradient descent started on the plateau
#
# Three runs of the particle solver on the width-2 network split at mu_start
# (not 1/2: there the two neurons are identical copies with identical output
# weights, gradient descent keeps them identical bit for bit, and without
# noise it could never leave):
#
# * exactly on the plateau: the gradient is at rounding level and its
#   component along the escape direction vanishes exactly, so only rounding
#   errors, amplified at the rate of the negative curvature, could carry it
#   away; here they do not, in all the steps of the run;
# * a random perturbation of norm 1e-6;
# * a kick of norm 1e-3 along the escape direction from the classification.
#
# Small steps (lr 0.2 in mean-field time; the largest curvature in the
# particle metric is about 2, so the stability limit is about 1) and no
# weight decay (it would break the plateau), so that the run is a faithful
# discretisation of the gradient flow of L. A run *leaves* the
# plateau when its loss first falls 0.1 % below L(narrow).

# +
def plateau_runs(net, x, y, mu, steps, lr, comm, x_test, y_test, seed=1):
    wide = ls.split(net, 0, mu)
    p = ls.parameters(wide)
    (point,) = ls.classify_plateau(net, 0, x, y, [mu]).points
    xi = np.random.default_rng(seed).standard_normal(p.size)
    starts = {
        "exact": wide,
        "random 1e-6": ls.with_parameters(wide, p + 1e-6 * xi / np.linalg.norm(xi)),
    }
    if point.kind == "saddle":
        starts["escape 1e-3"] = ls.with_parameters(wide, p + 1e-3 * point.escape_direction)
    L0 = ls.objective(net, x, y)
    runs = {}
    for name, start in starts.items():
        r = particles.train(x, y, init=start, activation=ACTIVATION, method="gd", lr=lr, steps=steps,
                            record_every=max(1, steps // 300), comm=comm, x_test=x_test, y_test=y_test,
                            progress=True)
        h = r.history
        left = np.flatnonzero(h["loss"] < (1 - 1e-3) * L0)
        stay = np.flatnonzero(np.abs(h["loss"] - L0) > 1e-9 * L0)
        runs[name] = dict(step=h["step"], loss=h["loss"], lr=lr,
                          linger_steps=int(h["step"][left[0]]) if left.size else None,
                          flat_steps=int(h["step"][stay[0] - 1]) if stay.size and stay[0] > 0 else
                          (int(h["step"][-1]) if not stay.size else 0),
                          final_loss=float(h["loss"][-1]), test_rmse=float(h["test_error"][-1]))
    return point, runs
# -

# ## 5. flowfem: the convex problem in one solve
#
# The same tanh neurons, now a density u on the box [-4, 4]^2 of parameters
# (w, b) (the teacher's neurons (3, -1) and (2, 1.5) lie inside), uniform
# weight, kappa = 1, small alpha. One CG solve of the Euler-Lagrange
# equation; its data term is compared with L.

# +
def continuum(x, y, x_test, y_test, cells, alpha, comm):
    from flowfem.problem import Problem
    from flowfem.space import Space

    space = Space.box(d=1, n=cells, radius=4.0, comm=comm)
    result = Problem(space, activation=ACTIVATION, weight="uniform", alpha=alpha, kappa=1.0).fit(x, y)
    loss, reg = result.parts
    return dict(data_loss=loss, regulariser=reg, energy=loss + reg, iterations=result.iterations,
                residual=result.residual, test_rmse=result.rmse(x_test, y_test), ndofs=result.problem.H.ndofs,
                f_test=result.predict(x_test))
# -

# ## Figures (rank 0 only; nothing collective inside)
#
# * `loss_along_mu.png`: L(split(mu)) - L(narrow) on a fine grid of mu (flat
#   to rounding), and across the line the second difference of L along the
#   escape direction against the predicted curvature;
# * `hessian_eigenvalues.png`: the eigenvalues of the full Hessian of the
#   split network (line tangent removed) against mu, with the predicted
#   split-direction curvatures mu (1 - mu) lambda_k(H) / (mu^2 + (1 - mu)^2);
# * `training_curves.png`: the data loss of the particle runs against
#   mean-field time, the plateau level and flowfem's data term.

# +
def figures(out, net, x, y, res):
    from flowfem.plot import _pyplot

    plt = _pyplot()
    L0 = res["narrow"]["objective"]
    fine = np.linspace(-1.5, 2.5, 161)
    dev = [ls.objective(ls.split(net, 0, mu), x, y) - L0 for mu in fine]
    plateau = ls.classify_plateau(net, 0, x, y, fine)
    sec = [second_variation(net, x, y, pt) if pt.kind == "saddle" else np.nan for pt in plateau.points]
    pred = [np.nan if pt.curvature is None else pt.curvature for pt in plateau.points]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(fine, dev, ".-", ms=3)
    ax[0].set(xlabel="mu", ylabel="L(split(mu)) - L(narrow)",
              title=f"along the line: flat (max {np.max(np.abs(dev)):.1e})")
    ax[0].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax[1].plot(fine, sec, "o", ms=3, label="second difference of L along escape direction")
    ax[1].plot(fine, pred, "-", label="mu(1-mu) lambda_min(H) / (mu^2 + (1-mu)^2)")
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(xlabel="mu", ylabel="curvature", title="across the line: negative (saddles)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_along_mu.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ev = np.array([ls.split_hessian_eigenvalues(net, 0, mu, x, y) for mu in fine])
    for k in range(ev.shape[1]):
        ax.plot(fine, ev[:, k], "-", color="C0", lw=1, label="full Hessian (tangent removed)" if k == 0 else None)
    lam = res["inner_eigenvalues"]
    c = fine * (1 - fine) / (fine**2 + (1 - fine) ** 2)
    for k, lk in enumerate(lam):
        ax.plot(fine, c * lk, "--", color="C3", lw=1,
                label="mu(1-mu) lambda_k(H) / (mu^2+(1-mu)^2)" if k == 0 else None)
    grid = np.array(res["mus"])
    kinds = np.array(res["kinds"])
    for kind, marker in (("saddle", "v"), ("minimum", "^"), ("degenerate", "o")):
        sel = kinds == kind
        if sel.any():
            ax.plot(grid[sel], np.zeros(sel.sum()), marker, color="k", ms=4, ls="none", label=f"grid: {kind}")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set(xlabel="mu", ylabel="eigenvalue", title=f"inner Hessian {res['definiteness']}: "
           f"{res['agreement']}/{len(grid)} grid points classified like the full Hessian")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "hessian_eigenvalues.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    nr = res["narrow"]
    ax.plot(nr["step"] * nr["lr"], nr["loss"], color="k", label="width 1 from random start")
    for k, (name, r) in enumerate(res["runs"].items()):
        ax.plot(r["step"] * r["lr"], r["loss"], color=f"C{k}", label=f"width 2 on the plateau: {name}")
    ax.axhline(L0, color="grey", ls=":", label="plateau L(narrow)")
    ax.axhline(res["flowfem"]["data_loss"], color="C3", ls="--", label="flowfem data term (one solve)")
    ax.set_yscale("log")
    ax.set(xlabel="mean-field time t = step * lr", ylabel="data loss (1/n) sum (f - y)^2 / 2",
           title=f"particle solver from split at mu = {res['mu_start']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "training_curves.png"), dpi=120)
    plt.close(fig)
# -

# ## Everything together
#
# `main` returns the numbers (the test suite checks them at a small size)
# and prints a summary on rank 0.
#
# What the full run prints (the same on 1 and 2 ranks, but for the CG
# iteration count, which depends on the partition): the particle solver
# leaves the width-1 student at L = 1.53061e-02 with |grad L| = 2.4e-5;
# Newton makes |grad L| = 1e-16 with L lower by 6e-8, and the Hessian's
# smallest eigenvalue 4.5e-3 > 0 makes it a strict minimum. H has
# eigenvalues -0.081 and 0.087 (indefinite). Along the line, L varies by
# 3.5e-18 and |grad L| stays below 4e-16; all 31 values of mu in [-1, 2] are
# classified as by the full Hessian (29 saddles, degenerate at 0 and 1).
# Started at mu = 1/4, gradient descent stays within 1e-9 of the plateau
# for all 6000 steps (t = 1200); after a random perturbation of norm 1e-6 it
# stays for 500 steps and leaves at step 1180; kicked by 1e-3 along the
# escape direction it leaves at step 360. flowfem's one solve (1089 dofs,
# 41-42 CG iterations, alpha = 1e-6) has data term 4.9e-8 against the
# plateau's 1.5e-2, and test RMSE 3.1e-4 against 0.17.

# +
def main(n=200, n_test=1000, mus=None, mu_start=0.25, steps=6000, lr=0.2, train_steps=2000, train_lr=0.5,
         cells=32, alpha=1e-6, seed=0, out=None, comm=MPI.COMM_WORLD, verbose=True) -> dict:
    x, y = make_data(n, seed)
    x_test = np.linspace(-1, 1, n_test)[:, None]
    y_test = teacher(x_test)
    mus = np.round(np.linspace(-1, 2, 31), 12) if mus is None else np.asarray(mus, dtype=float)

    run, polished, net = narrow_minimum(x, y, train_steps, train_lr, seed, comm)
    flat, plateau, brute, brute_kinds = classify(net, x, y, mus)
    agreement = sum(a == b for a, b in zip(plateau.kinds, brute_kinds))
    point, runs = plateau_runs(net, x, y, mu_start, steps, lr, comm, x_test, y_test)
    cont = continuum(x, y, x_test, y_test, cells, alpha, comm)
    f_test = net(x_test)

    res = dict(
        narrow=dict(particle_loss=float(run.history["loss"][-1]), particle_grad=float(np.linalg.norm(
            ls.gradient(run.network, x, y))), objective=flat.objective, gradient_norm=polished.gradient_norm,
            newton_iterations=polished.iterations, min_eigenvalue=plateau.narrow_min_eigenvalue,
            valid=bool(plateau.valid), test_rmse=float(np.sqrt(np.mean((f_test - y_test) ** 2))),
            step=run.history["step"], loss=run.history["loss"], lr=train_lr),
        inner_eigenvalues=plateau.inner.eigenvalues.tolist(), definiteness=plateau.inner.definiteness,
        flatness=flat.loss_deviation, line_gradient=flat.gradient_norm,
        mus=mus.tolist(), kinds=plateau.kinds, brute_kinds=brute_kinds, agreement=int(agreement),
        counts={k: plateau.kinds.count(k) for k in ("minimum", "saddle", "degenerate")},
        mu_start=mu_start, start_kind=point.kind, start_curvature=point.curvature, runs=runs,
        flowfem={k: v for k, v in cont.items() if k != "f_test"}, ranks=comm.size,
    )
    if point.kind == "saddle":
        sv = second_variation(net, x, y, point)
        res["second_variation_error"] = abs(sv - point.curvature) / abs(point.curvature)

    if verbose and comm.rank == 0:
        report(res)
    if out is not None:
        from flowfem import outputs

        with outputs.output_directory(out, comm, force=True) as tmp:  # collective
            if comm.rank == 0:
                figures(tmp, net, x, y, res)
        if verbose and comm.rank == 0:
            print(f"wrote {out}/: loss_along_mu.png, hessian_eigenvalues.png, training_curves.png")
    return res


def report(res):
    nr, ff = res["narrow"], res["flowfem"]
    print(f"narrow network (width 1, {ACTIVATION}), {res['ranks']} rank(s):")
    print(f"  particle solver: L = {nr['particle_loss']:.8e}, |grad L| = {nr['particle_grad']:.1e}")
    print(f"  Newton polish:   L = {nr['objective']:.8e}, |grad L| = {nr['gradient_norm']:.1e} "
          f"({nr['newton_iterations']} iterations), smallest Hessian eigenvalue {nr['min_eigenvalue']:.2e}"
          f" -> strict local minimum: {nr['valid']}")
    print(f"inner Hessian eigenvalues {np.array2string(np.array(res['inner_eigenvalues']), precision=4)}: "
          f"{res['definiteness']}")
    print(f"plateau: max |L(split(mu)) - L| = {res['flatness']:.1e}, max |grad L(split(mu))| = "
          f"{res['line_gradient']:.1e} over {len(res['mus'])} values of mu in [{min(res['mus'])}, {max(res['mus'])}]")
    print(f"classification: {res['counts']}; agrees with the full Hessian at {res['agreement']}/{len(res['mus'])}")
    if "second_variation_error" in res:
        print(f"start mu = {res['mu_start']}: {res['start_kind']}, escape curvature {res['start_curvature']:.3e} "
              f"(second difference of L agrees to {res['second_variation_error']:.1e})")
    print("particle solver (width 2, gd) started on the plateau:")
    for name, r in res["runs"].items():
        left = "never" if r["linger_steps"] is None else f"at step {r['linger_steps']}"
        print(f"  {name:<12} loss within 1e-9 of L for {r['flat_steps']:>5} steps, leaves (0.1% below) {left:<14}"
              f" final loss {r['final_loss']:.3e}, test RMSE {r['test_rmse']:.3e}")
    print(f"flowfem ({ff['ndofs']} dofs, CG {ff['iterations']} iterations): data term {ff['data_loss']:.3e} "
          f"(E_alpha {ff['energy']:.3e} incl. regulariser {ff['regulariser']:.3e}), test RMSE {ff['test_rmse']:.3e}")
    print(f"data term: plateau {nr['objective']:.3e} vs flowfem {ff['data_loss']:.3e} "
          f"({nr['objective'] / ff['data_loss']:.1e} times lower); test RMSE plateau {nr['test_rmse']:.3e} "
          f"vs flowfem {ff['test_rmse']:.3e}")


if __name__ == "__main__":
    sys.exit(outputs.run_demo(main, "results/splitting_plateau", quick=dict(n=100, steps=3000, cells=8),
                              full=dict(n=200, steps=6000, cells=32)))
# -
