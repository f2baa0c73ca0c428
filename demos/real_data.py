# # Real data sets: flowfem against a finite network trained by Adam
#
# Small real data sets that scikit-learn and statsmodels ship (nothing is
# downloaded; `flowfem/datasets.py` lists them with their sources):
#
# * diabetes1: disease progression against body-mass index (442 patients);
# * engel: food expenditure against household income (235 households, 1857);
# * sunspots: the yearly mean sunspot number, 1700-2008 (309 years);
# * co2: weekly atmospheric CO2 at Mauna Loa, 1958-2001 (2225 weeks).
#
# Each is split once, a random fifth held out by the seed (the split of
# `flowfem solve --data NAME`), and fitted two ways:
#
# * flowfem: the density u on the box [-4, 4]^2 of ReLU neurons (w, b) that
#   minimises E_alpha, with alpha chosen by the regularisation path on a
#   held-out fifth of the training rows (`alpha="auto"`), read out as the
#   finite network of the solve's own quadrature rule;
# * the particle solver (`flowfem.particles`): the finite network
#   nn.Sequential(nn.Linear(1, N), nn.ReLU(), nn.Linear(N, 1)) in mean-field
#   scaling, trained by full-batch Adam from an i.i.d. N(0, 1) start.
#
# Inputs come in their own units (kg/m^2, Belgian francs, years): both methods
# see z = (x - m) / s with m, s the mean and standard deviation of the
# training inputs (`flowfem.scaling`). flowfem's network is folded back to raw
# inputs, w' = w / s, b' = b - w' m, saved, loaded again and evaluated on the
# raw test inputs: the file answers in raw units, exactly. Adam, like a
# PyTorch user would, is also given standardised targets (y - m_y) / s_y and
# its predictions are mapped back; flowfem needs no such step (its minimiser
# is linear in y). Test errors are RMSEs in the targets' units.
#
# The iris set (`iris2`, three classes) joins the table, with an accuracy
# column, once flowfem has a multiclass loss.
#
#     mpirun -n 2 python demos/real_data.py
#
# prints the table and writes results/real_data/: NAME-flowfem.npz (the
# folded networks), results.json (every number and the scaling of each set)
# and fits.png. With the environment variable CI set it runs at a small size.

import os
import sys
import time

import numpy as np

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import data, datasets, io, outputs
from flowfem import particles as fp
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.readout import readout
from flowfem.space import Space
from mpi4py import MPI

REGRESSION = ("diabetes1", "engel", "sunspots", "co2")  # iris2 joins with the multiclass loss (issue 14, §2)
RADIUS = 4.0  # the box [-R, R]^2 of neurons: slopes and offsets for standardised inputs


def rmse(f, y) -> float:
    return float(np.sqrt(np.mean((np.asarray(f) - y) ** 2)))


def fit_flowfem(train, test, scaling, cells: int, comm) -> tuple[dict, Network]:
    """flowfem with alpha="auto" on standardised inputs; the network folded back to raw inputs.
    Times everything from the mesh to the folded network."""
    comm.Barrier()
    t0 = time.perf_counter()
    space = Space.box(d=train.d, n=cells, radius=RADIUS, comm=comm)
    result = Problem(space, "relu", "uniform", "auto", kappa=1.0, degree=1).fit(scaling.apply(train.x), train.y)
    network = scaling.fold(readout(result))  # the solve's quadrature rule: the network is f_U
    seconds = comm.bcast(time.perf_counter() - t0, root=0)
    f = result.predict(scaling.apply(test.x))  # collective: the density on standardised inputs
    return dict(test_rmse=rmse(f, test.y), seconds=seconds, alpha=result.path.alpha, ndofs=result.problem.H.ndofs,
                width=network.width, network_gap=float(np.max(np.abs(network(test.x) - f)))), network


def fit_particles(train, test, scaling, width: int, steps: int, lr: float, comm) -> tuple[dict, object]:
    """Adam on N particles, standardised inputs and targets; predictions mapped back to y's units.
    Returns the numbers and the predictor of raw x."""
    my, sy = float(np.mean(train.y)), float(np.std(train.y))
    comm.Barrier()
    t0 = time.perf_counter()
    run = fp.train(scaling.apply(train.x), (train.y - my) / sy, width, activation="relu", method="adam", lr=lr,
                   steps=steps, seed=0, comm=comm)
    network = scaling.fold(run.network)
    seconds = comm.bcast(time.perf_counter() - t0, root=0)

    def predict(x):
        return my + sy * network(x)

    return dict(test_rmse=rmse(predict(test.x), test.y), seconds=seconds, width=width, steps=steps, lr=lr,
                status=run.status), predict


def main(sets=REGRESSION, cells: int = 32, width: int = 256, steps: int = 2000, lr: float = 0.01,
         out: str | None = "results/real_data", comm=MPI.COMM_WORLD) -> dict:
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    summary, fits = {}, {}
    for name in sets:
        # ## Data and scaling
        # The same permutation on every rank (seed 0); the scaling from the training rows only.
        train, test = data.train_test(name, seed=0)
        scaling = datasets.standardisation(name, train)
        entry = datasets.REAL[name]

        # ## The two fits
        fe, network = fit_flowfem(train, test, scaling, cells, comm)
        adam, adam_predict = fit_particles(train, test, scaling, width, steps, lr, comm)

        summary[name] = dict(n_train=train.n, n_test=test.n, d=train.d, source=entry.source,
                             inputs=list(entry.inputs), target=entry.target, scaling=scaling.record(),
                             mean_rmse=rmse(np.mean(train.y), test.y), flowfem=fe, adam=adam)
        fits[name] = (test, network, adam_predict)
        say(f"{name}: n = {train.n} train, {test.n} test; inputs scaled by mean {scaling.mean[0]:.6g}, "
            f"std {scaling.scale[0]:.6g}; flowfem alpha {fe['alpha']:.0e}: test RMSE {fe['test_rmse']:.4g} "
            f"in {fe['seconds']:.2f} s; Adam N = {width}, {steps} steps: {adam['test_rmse']:.4g} in "
            f"{adam['seconds']:.2f} s")

    say(f"\n| data set | n train / test | method | time [s] | test RMSE | RMSE of the training mean |\n"
        f"|---|---|---|---|---|---|")
    for name, s in summary.items():
        for method in ("flowfem", "adam"):
            label = ("flowfem (alpha auto)" if method == "flowfem" else f"Adam particles N = {width}")
            say(f"| {name} | {s['n_train']} / {s['n_test']} | {label} | {s[method]['seconds']:.2f} | "
                f"{s[method]['test_rmse']:.4g} | {s['mean_rmse']:.4g} |")
    say(f"on {comm.size} rank(s)")

    # ## Output: the network files answer in raw units
    # Saved by rank 0, read back on every rank: the scaling they hold is the fitted one, and their
    # predictions on the raw test inputs are those of the density on standardised ones.
    if out is not None:
        with outputs.output_directory(out, comm, force=True) as tmp:
            if comm.rank == 0:
                for name, (_, network, _) in fits.items():
                    network.save(os.path.join(tmp, f"{name}-flowfem.npz"))
                _figure(fits, os.path.join(tmp, "fits.png"))
            io.write_json(os.path.join(tmp, "results.json"), summary, comm)
        for name in fits:  # what a user of the file gets: Network.load(...).predict(raw x)
            loaded = Network.load(os.path.join(out, f"{name}-flowfem.npz"))
            test = fits[name][0]
            summary[name]["file_gap"] = float(np.max(np.abs(loaded.predict(test.x) - fits[name][1](test.x))))
            summary[name]["file_scaling"] = loaded.input_scaling.record()
        say(f"wrote {out}/ (" + ", ".join(f"{n}-flowfem.npz" for n in fits) + ", results.json, fits.png)")
    return summary


def _figure(fits: dict, path: str) -> None:
    """One panel per set: the test points and both fits against the raw input."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(4 * len(fits), 3.4), squeeze=False)
    for ax, (name, (test, network, adam_predict)) in zip(axes[0], fits.items()):
        grid = np.linspace(test.x.min(), test.x.max(), 600)
        ax.plot(test.x[:, 0], test.y, ".", ms=3, color="0.5", label="test data")
        ax.plot(grid, network(grid), label="flowfem")
        ax.plot(grid, adam_predict(grid), "--", label="Adam")
        entry = datasets.REAL[name]
        ax.set(title=name, xlabel=entry.inputs[0], ylabel=textwrap.fill(entry.target, 32))
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if os.environ.get("CI"):
        main(cells=16, width=32, steps=200)
    else:
        main()
    sys.exit(0)
