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
# The iris set (`iris2`: petal length and width, three species) is a
# classification: flowfem fits one density per class on the box [-4, 4]^3 of
# neurons (w1, w2, b) by the softmax cross-entropy (`loss="softmax"`, Newton
# with CG), alpha chosen on the regularisation path as for the regression sets
# (`alpha="auto"`: the held-out fifth's mean cross-entropy), read out as a
# three-logit classifier network that records its classes. The particle
# solver trains nn.Sequential(nn.Linear(2, N), nn.ReLU(), nn.Linear(N, 3)) in
# mean-field scaling on the same softmax cross-entropy (`loss="softmax"`,
# what nn.CrossEntropyLoss computes from the logits), by full-batch Adam as
# for the regression sets, on the same standardised inputs; its network
# records the classes too. Reported: test accuracy, mean test cross-entropy
# and, as the scale, the accuracy of always predicting the most frequent
# training class.
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
from flowfem.loss import cross_entropy
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.readout import readout
from flowfem.space import Space
from mpi4py import MPI

REGRESSION = ("diabetes1", "engel", "sunspots", "co2")
CLASSIFICATION = ("iris2",)
RADIUS = 4.0  # the box [-R, R]^(d+1) of neurons: slopes and offsets for standardised inputs


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


def fit_flowfem_classes(train, test, scaling, cells: int, comm) -> tuple[dict, Network]:
    """flowfem's softmax fit (one density per class, Newton; alpha="auto") on standardised inputs, read out by the
    solve's quadrature rule and folded back to raw inputs. Timed from the mesh to the folded network.
    ``network_disagreement``: the fraction of test points where the network's label differs from the
    density's (0: the rule is the solve's own)."""
    comm.Barrier()
    t0 = time.perf_counter()
    space = Space.box(d=train.d, n=cells, radius=RADIUS, comm=comm)
    labels = train.y.astype(np.int64)  # the species 0, 1, 2
    result = Problem(space, "relu", "uniform", "auto", kappa=1.0, degree=1, loss="softmax").fit(
        scaling.apply(train.x), labels)
    network = scaling.fold(readout(result))
    seconds = comm.bcast(time.perf_counter() - t0, root=0)
    scores = result.evaluate(scaling.apply(test.x), test.y)  # collective
    predicted = result.predict(scaling.apply(test.x))
    return dict(test_accuracy=scores["accuracy"], test_loss=scores["loss"], confusion_matrix=scores["confusion_matrix"],
                classes=scores["classes"], seconds=seconds, alpha=result.path.alpha, ndofs=result.problem.H.ndofs,
                newton=result.iterations, width=network.width,
                network_disagreement=float(np.mean(network.predict(test.x) != predicted))), network


def majority_accuracy(train, test) -> float:
    """The test accuracy of always predicting the most frequent training label."""
    values, counts = np.unique(train.y, return_counts=True)
    return float(np.mean(test.y == values[np.argmax(counts)]))


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


def fit_particle_classes(train, test, scaling, width: int, steps: int, lr: float, comm) -> tuple[dict, Network]:
    """Adam on N particles with C = 3 outputs (the logits) and the softmax cross-entropy, on standardised
    inputs; the network (it records the classes) folded back to raw inputs. Timed from the start to the
    folded network. Test accuracy and mean cross-entropy (nats) of the folded network on raw test inputs."""
    comm.Barrier()
    t0 = time.perf_counter()
    run = fp.train(scaling.apply(train.x), train.y.astype(np.int64), width, activation="relu", loss="softmax",
                   method="adam", lr=lr, steps=steps, seed=0, comm=comm)
    network = scaling.fold(run.network)
    seconds = comm.bcast(time.perf_counter() - t0, root=0)
    logits = network(test.x)
    k = np.searchsorted(network.classes, test.y)  # the test species' output columns
    return dict(test_accuracy=float(np.mean(network.predict(test.x) == test.y)),
                test_loss=float(np.mean(cross_entropy(logits, k))), seconds=seconds, width=width, steps=steps,
                lr=lr, status=run.status, classes=network.classes.tolist()), network


def main(sets=REGRESSION + CLASSIFICATION, cells: int = 32, class_cells: int = 8, width: int = 256,
         steps: int = 2000, lr: float = 0.01, out: str | None = "results/real_data", comm=MPI.COMM_WORLD) -> dict:
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    summary, fits = {}, {}
    for name in sets:
        # ## Data and scaling
        # The same permutation on every rank (seed 0); the scaling from the training rows only.
        train, test = data.train_test(name, seed=0)
        scaling = datasets.standardisation(name, train)
        entry = datasets.REAL[name]
        if entry.classes is not None:  # ## A classification: both fits by the softmax cross-entropy
            fe, network = fit_flowfem_classes(train, test, scaling, class_cells, comm)
            adam, _ = fit_particle_classes(train, test, scaling, width, steps, lr, comm)
            summary[name] = dict(n_train=train.n, n_test=test.n, d=train.d, source=entry.source,
                                 inputs=list(entry.inputs), target=entry.target, scaling=scaling.record(),
                                 majority_accuracy=majority_accuracy(train, test), flowfem=fe, adam=adam)
            fits[name] = (test, network, None)
            say(f"{name}: n = {train.n} train, {test.n} test, {len(fe['classes'])} classes; flowfem softmax alpha "
                f"{fe['alpha']:.0e}: test accuracy {fe['test_accuracy']:.4f}, cross-entropy {fe['test_loss']:.4f} in "
                f"{fe['seconds']:.2f} s; Adam N = {width}, {steps} steps: {adam['test_accuracy']:.4f}, "
                f"{adam['test_loss']:.4f} in {adam['seconds']:.2f} s")
            continue

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
        if "majority_accuracy" in s:
            continue
        for method in ("flowfem", "adam"):
            label = ("flowfem (alpha auto)" if method == "flowfem" else f"Adam particles N = {width}")
            say(f"| {name} | {s['n_train']} / {s['n_test']} | {label} | {s[method]['seconds']:.2f} | "
                f"{s[method]['test_rmse']:.4g} | {s['mean_rmse']:.4g} |")
    classified = {name: s for name, s in summary.items() if "majority_accuracy" in s}
    if classified:
        say(f"\n| data set | n train / test | method | time [s] | test accuracy | test cross-entropy | majority class "
            f"accuracy |\n|---|---|---|---|---|---|---|")
        for name, s in classified.items():
            fe = s["flowfem"]
            say(f"| {name} | {s['n_train']} / {s['n_test']} | flowfem softmax (alpha {fe['alpha']:.0e}) | "
                f"{fe['seconds']:.2f} | {fe['test_accuracy']:.4f} | {fe['test_loss']:.4f} | "
                f"{s['majority_accuracy']:.4f} |")
            adam = s["adam"]
            say(f"| {name} | {s['n_train']} / {s['n_test']} | Adam particles N = {width} | {adam['seconds']:.2f} | "
                f"{adam['test_accuracy']:.4f} | {adam['test_loss']:.4f} | {s['majority_accuracy']:.4f} |")
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
            summary[name]["file_gap"] = float(np.max(np.abs(loaded(test.x) - fits[name][1](test.x))))  # f or logits
            if loaded.classifier:
                summary[name]["file_classes"] = loaded.classes.tolist()
            summary[name]["file_scaling"] = loaded.input_scaling.record()
        say(f"wrote {out}/ (" + ", ".join(f"{n}-flowfem.npz" for n in fits) + ", results.json, fits.png)")
    return summary


def _figure(fits: dict, path: str) -> None:
    """One panel per regression set: the test points and both fits against the raw input; for a
    classification set its decision regions over the raw inputs with the test points."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(4 * len(fits), 3.4), squeeze=False)
    for ax, (name, (test, network, adam_predict)) in zip(axes[0], fits.items()):
        entry = datasets.REAL[name]
        if network.classifier:
            lo, hi = test.x.min(axis=0), test.x.max(axis=0)
            pad = 0.1 * (hi - lo)
            g0, g1 = np.meshgrid(*(np.linspace(lo[i] - pad[i], hi[i] + pad[i], 200) for i in range(2)))
            regions = np.searchsorted(network.classes, network.predict(np.column_stack([g0.ravel(), g1.ravel()])))
            ax.contourf(g0, g1, regions.reshape(g0.shape), levels=np.arange(len(network.classes) + 1) - 0.5,
                        cmap="Pastel1", alpha=0.8)
            for c in network.classes:
                sel = test.y == c
                ax.plot(test.x[sel, 0], test.x[sel, 1], "o", ms=4, mec="k", mew=0.3, label=f"class {c:g}")
            ax.set(title=f"{name} (flowfem softmax)", xlabel=entry.inputs[0], ylabel=entry.inputs[1])
            ax.legend(fontsize=7)
            continue
        grid = np.linspace(test.x.min(), test.x.max(), 600)
        ax.plot(test.x[:, 0], test.y, ".", ms=3, color="0.5", label="test data")
        ax.plot(grid, network(grid), label="flowfem")
        ax.plot(grid, adam_predict(grid), "--", label="Adam")
        ax.set(title=name, xlabel=entry.inputs[0], ylabel=textwrap.fill(entry.target, 32))
    axes[0][0].legend()  # the regression sets come first
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(outputs.run_demo(main, "results/real_data", quick=dict(cells=16, class_cells=6, width=32, steps=200)))
