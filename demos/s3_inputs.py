# # Inputs in R^3: the sphere S^3 of neuron directions against Adam particles
#
# A ReLU neuron on inputs x in R^3 is theta = (w, b) in R^4, and relu is
# positively homogeneous: relu(t theta . x~) = t relu(theta . x~) for t > 0,
# x~ = (x, 1). A density of neurons therefore needs only their directions,
# the sphere S^3, a 3-manifold that dolfinx meshes in one chart: the
# stereographic projection z in R^3 from the south pole s = (0, 0, 0, -1),
#
#     vartheta(z) = (2 z, 1 - |z|^2) / (1 + |z|^2),   lambda(z) = 2 / (1 + |z|^2),
#
# with the volume element lambda^3 dz and |grad_S u|^2 = lambda^-2 |grad_z u|^2.
# The network of a density u is f_u(x) = integral relu(vartheta(z) . x~) u(z)
# lambda(z)^3 dz, and E_alpha's regulariser the two-weight H^1 norm
# integral (kappa lambda |grad_z u|^2 + lambda^3 u^2) dz. The mesh is the ball
# |z| <= Z with Z from the training inputs (`flowfem.space.chart_radius`): the
# neurons it leaves out are zero on every input |x| <= X, so the data term is
# exact (README, "Inputs in R^3 (domain s3)").
#
# Two data sets, each fitted by flowfem and by Adam on the same split:
#
# * synthetic: x uniform on [-1, 1]^3, noise-free
#   y = relu(x1 + x2 - x3) - relu(0.5 - x1 - 0.5 x2) / 2 + sin(pi x3) / 4:
#   two relu neurons (a measure of two atoms, which no density holds
#   exactly) plus a smooth part (which no finite network holds exactly);
#   n training rows, 1000 test rows;
# * stackloss (statsmodels; Brownlee 1965): 21 days of a nitric-acid plant,
#   stack loss against air flow, cooling-water temperature and acid
#   concentration; the split of `flowfem solve --data stackloss` (a seeded
#   fifth held out: 17 training, 4 test rows). The inputs are standardised on
#   the training rows (`flowfem.scaling`) and the network folded back to raw
#   units. Four test rows make a noisy estimate: read the stackloss row as a
#   check that the d = 3 path runs on a real file, not as a ranking.
#
# flowfem: `Space.s3(h, x=z_train)` (cells of size about h on S^3, h = 0.25
# by default as in `flowfem solve`; about 125 / h^3 tetrahedra), P1,
# kappa = 1, uniform weight, alpha="auto" chosen on the training rows over
# 1e-2 .. 1e-10 (synthetic: on a held-out fifth; stackloss: by 5-fold
# cross-validation, a fifth of 17 rows being 3), read out as the finite
# network of the solve's quadrature rule (one neuron per quadrature point,
# exact). Adam: N particles from an i.i.d. N(0, 1) start, full batch,
# `steps` steps of size `lr`, standardised targets, untuned. Baselines: the
# training mean and ordinary least squares (an affine fit, the classical model
# of the stackloss data).
#
#     mpirun -n 2 python demos/s3_inputs.py [--quick] [--out DIR]
#
# prints the table and writes DIR (default results/s3_inputs/): NAME-flowfem.npz
# (the networks, on raw inputs), results.json (every number) and fits.png
# (predicted against observed test targets). --quick, or the environment
# variable CI, runs at a small size.

import os
import sys
import time

import numpy as np

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import data, datasets, io, outputs
from flowfem import particles as fp
from flowfem.data import Dataset
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.readout import readout
from flowfem.space import DEFAULT_SIZES, Space, dead_radius
from mpi4py import MPI

SETS = ("synthetic", "stackloss")
FOLDS = {"synthetic": None, "stackloss": 5}  # None: one held-out fifth chooses alpha
QUICK = dict(n=200, h=0.4, width=32, steps=200)  # --quick and CI


def target(x: np.ndarray) -> np.ndarray:
    """The synthetic target on x (n, 3): two relu neurons and a smooth part."""
    return (np.maximum(x[:, 0] + x[:, 1] - x[:, 2], 0) - 0.5 * np.maximum(0.5 - x[:, 0] - 0.5 * x[:, 1], 0)
            + 0.25 * np.sin(np.pi * x[:, 2]))


def split(name: str, n: int) -> tuple[Dataset, Dataset]:
    """(train, test): the synthetic set drawn with seeds 0 and 1, or the file split of a real set (seed 0)."""
    if name == "synthetic":
        x, xt = (np.random.default_rng(s).uniform(-1, 1, (m, 3)) for s, m in ((0, n), (1, 1000)))
        return Dataset(x, target(x), name), Dataset(xt, target(xt), name)
    return data.train_test(name, seed=0)


def rmse(f, y) -> float:
    return float(np.sqrt(np.mean((np.asarray(f) - y) ** 2)))


def fit_flowfem(train, test, scaling, h: float, folds: int | None, comm) -> tuple[dict, Network]:
    """The s3 fit with alpha="auto" on (standardised) inputs, read out and folded back to raw inputs.
    Times the mesh (set-up) and the fit apart: the path (its data operator, the solves along the grid), the
    refit at the chosen alpha and the readout; the path's solves and the refit's operator and solve are
    also recorded alone (each rank's clock)."""
    z, zt = (scaling.apply(d.x) if scaling else d.x for d in (train, test))
    comm.Barrier()
    t0 = time.perf_counter()
    space = Space.s3(h, x=z, comm=comm)
    comm.Barrier()
    t1 = time.perf_counter()
    result = Problem(space, "relu", "uniform", "auto", kappa=1.0, degree=1).fit(z, train.y, folds=folds)
    network = readout(result)  # the solve's quadrature rule: the network is f_U
    if scaling:
        network = scaling.fold(network)
    t2 = time.perf_counter()
    mesh_seconds, fit_seconds = comm.bcast((t1 - t0, t2 - t1), root=0)
    f = result.predict(zt)  # collective: the density on (standardised) test inputs
    Z = space.outer_radius
    X_test = float(np.linalg.norm(zt, axis=1).max())
    return dict(test_rmse=rmse(f, test.y), mesh_seconds=mesh_seconds, fit_seconds=fit_seconds,
                seconds=mesh_seconds + fit_seconds, alpha=result.path.alpha, cells=space.num_cells,
                ndofs=result.problem.H.ndofs, width=network.width, Z=Z,
                path_seconds=float(np.sum(result.path.seconds)), operator_seconds=result.setup_seconds,
                solve_seconds=result.solve_seconds,
                X_train=float(np.linalg.norm(z, axis=1).max()), X_test=X_test,
                test_in_exact_range=bool(dead_radius(X_test) <= Z), iterations=result.info.iterations,
                network_gap=float(np.max(np.abs(network(test.x) - f)))), network


def fit_particles(train, test, scaling, width: int, steps: int, lr: float, comm) -> tuple[dict, np.ndarray]:
    """Adam on N particles, (standardised) inputs and standardised targets; returns the numbers and the
    test predictions in y's units."""
    z = scaling.apply(train.x) if scaling else train.x
    my, sy = float(np.mean(train.y)), float(np.std(train.y))
    comm.Barrier()
    t0 = time.perf_counter()
    run = fp.train(z, (train.y - my) / sy, width, activation="relu", method="adam", lr=lr, steps=steps, seed=0,
                   comm=comm)
    network = scaling.fold(run.network) if scaling else run.network
    seconds = comm.bcast(time.perf_counter() - t0, root=0)
    f = my + sy * network(test.x)
    return dict(test_rmse=rmse(f, test.y), seconds=seconds, width=width, steps=steps, lr=lr, status=run.status), f


def least_squares(train, test) -> float:
    """The test RMSE of the affine least-squares fit y ~ c + v . x."""
    A = np.column_stack([np.ones(train.n), train.x])
    coef = np.linalg.lstsq(A, train.y, rcond=None)[0]
    return rmse(np.column_stack([np.ones(test.n), test.x]) @ coef, test.y)


def main(sets=SETS, n: int = 1000, h: float = DEFAULT_SIZES["s3"], width: int = 256, steps: int = 2000,
         lr: float = 0.01, out: str | None = "results/s3_inputs", comm=MPI.COMM_WORLD) -> dict:
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    summary, fits = {}, {}
    for name in sets:
        # ## Data and scaling
        # Every rank holds every row; a real set's scaling comes from its training rows only.
        train, test = split(name, n)
        scaling = datasets.standardisation(name, train)

        # ## The fits
        fe, network = fit_flowfem(train, test, scaling, h, FOLDS[name], comm)
        adam, adam_f = fit_particles(train, test, scaling, width, steps, lr, comm)
        summary[name] = dict(n_train=train.n, n_test=test.n, d=train.d, h=h, folds=FOLDS[name],
                             scaling=scaling.record() if scaling else None,
                             mean_rmse=rmse(np.mean(train.y), test.y), ols_rmse=least_squares(train, test),
                             flowfem=fe, adam=adam)
        fits[name] = (test, network, adam_f)
        say(f"{name}: n = {train.n} train, {test.n} test; s3 chart Z = {fe['Z']:.3g} for |x| <= "
            f"{fe['X_train']:.3g}, {fe['cells']} cells, {fe['ndofs']} dofs, alpha {fe['alpha']:.0e}: test RMSE "
            f"{fe['test_rmse']:.4g} in {fe['seconds']:.2f} s; Adam N = {width}, {steps} steps: "
            f"{adam['test_rmse']:.4g} in {adam['seconds']:.2f} s")

    say("\n| data set | n train / test | method | cells / dofs | width N | set-up [s] | fit [s] | test RMSE |\n"
        "|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        fe, adam, sizes = s["flowfem"], s["adam"], f"{s['n_train']} / {s['n_test']}"
        say(f"| {name} | {sizes} | flowfem s3, h = {h:g}, alpha {fe['alpha']:.0e} | {fe['cells']} / {fe['ndofs']} | "
            f"{fe['width']} | {fe['mesh_seconds']:.2f} | {fe['fit_seconds']:.2f} | {fe['test_rmse']:.4g} |")
        say(f"| {name} | {sizes} | Adam, {adam['steps']} steps | | {adam['width']} | | {adam['seconds']:.2f} | "
            f"{adam['test_rmse']:.4g} |")
        say(f"| {name} | {sizes} | least squares (affine) | | | | | {s['ols_rmse']:.4g} |")
        say(f"| {name} | {sizes} | training mean | | | | | {s['mean_rmse']:.4g} |")
    say(f"on {comm.size} rank(s)")

    # ## Output
    # The networks are saved by rank 0 and read back on every rank: the file answers on raw inputs
    # as the density did on standardised ones.
    if out is not None:
        with outputs.output_directory(out, comm, force=True) as tmp:
            if comm.rank == 0:
                for name, (_, network, _) in fits.items():
                    network.save(os.path.join(tmp, f"{name}-flowfem.npz"))
                _figure(fits, os.path.join(tmp, "fits.png"))
            io.write_json(os.path.join(tmp, "results.json"), summary, comm)
        for name, (test, network, _) in fits.items():
            loaded = Network.load(os.path.join(out, f"{name}-flowfem.npz"))
            summary[name]["file_gap"] = float(np.max(np.abs(loaded.predict(test.x) - network(test.x))))
        say(f"wrote {out}/ (" + ", ".join(f"{n}-flowfem.npz" for n in fits) + ", results.json, fits.png)")
    return summary


def _figure(fits: dict, path: str) -> None:
    """One panel per set: predicted against observed test targets, both methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(4 * len(fits), 3.8), squeeze=False)
    for ax, (name, (test, network, adam_f)) in zip(axes[0], fits.items()):
        lo, hi = test.y.min(), test.y.max()
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.plot(test.y, network(test.x), ".", ms=4, label="flowfem (s3)")
        ax.plot(test.y, adam_f, "x", ms=4, label="Adam")
        ax.set(title=name, xlabel="observed y (test)", ylabel="predicted")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(outputs.run_demo(main, "results/s3_inputs", quick=QUICK))
