"""Real data sets: flowfem (alpha auto) against Adam particles and scikit-learn's MLP (L-BFGS).

    python benchmarks/real_data.py              # about 7 minutes (2 cores, loaded)
    python benchmarks/real_data.py --quick      # small sizes, one repeat: a check that it runs
    python benchmarks/real_data.py --sets iris2 # some sets only (default: all)

The regression sets of :mod:`flowfem.datasets` (diabetes1, engel, sunspots, co2), each split
once by seed 0 into a random fifth of test rows and the rest for training (the split of
``flowfem solve --data NAME``), the same split for every method, inputs standardised with the
training rows' mean and standard deviation (:mod:`flowfem.scaling`):

* **flowfem**: ReLU density on the box [-4, 4]^2 with 32 cells per side, P1, kappa = 1, uniform
  weight, ``alpha="auto"`` (the regularisation path 1e-2 ... 1e-10 scored on a held-out fifth
  of the training rows, then the refit), read out by the solve's quadrature rule and folded
  back to raw inputs: :func:`fit_flowfem` of ``demos/real_data.py``. Timed: mesh, problem,
  path, refit, readout and fold (the forms' JIT compilation is done by an untimed warm-up).
* **Adam particles**: N = 256 neurons, mean-field scaling, i.i.d. N(0, 1) start (seed 0),
  full-batch Adam, lr 0.01, 2000 steps, on standardised inputs and targets (mapped back):
  :func:`fit_particles` of the demo.
* **MLP (L-BFGS)**: ``sklearn.neural_network.MLPRegressor(hidden_layer_sizes=(256,),
  activation="relu", solver="lbfgs", alpha=1e-4, max_iter=1000, random_state=0)`` on the
  same standardised inputs and targets (mapped back); run on rank 0. Left out (a row saying
  so) when scikit-learn is not installed.

Reported per set and method: the wall time (best of ``--repeats``), the test RMSE in the
target's units (every method is seeded, so it does not change between repeats) and, as the
scale to read it against, the RMSE of predicting the training mean.

The classification set iris2 (petal length and width, three species; same split and scaling)
gets its own table: test accuracy, mean test cross-entropy (nats) and, as the scale, the accuracy
of always predicting the most frequent training class:

* **flowfem softmax**: one ReLU density per class on the box [-4, 4]^3 (8 cells per side, P1),
  softmax cross-entropy with alpha chosen on the regularisation path (``alpha="auto"``), Newton
  with CG, read out and folded: :func:`fit_flowfem_classes` of the demo.
* **Adam particles**: N = 256 neurons with three outputs (the logits), the softmax cross-entropy
  (``loss="softmax"`` of :func:`flowfem.particles.train`), otherwise as for the regression sets
  (i.i.d. N(0, 1) start, seed 0, full-batch Adam, lr 0.01, 2000 steps), read out and folded:
  :func:`fit_particle_classes` of the demo.
* **MLP (L-BFGS)**: ``sklearn.neural_network.MLPClassifier`` with the MLPRegressor's settings
  (its own softmax cross-entropy), on the same standardised inputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import data, datasets
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "demos"))
import real_data as demo  # noqa: E402  (the fits themselves: one definition for the demo and this table)

SIZES = {"full": dict(cells=32, class_cells=8, width=256, steps=2000, mlp_iterations=1000, repeats=3),
         "quick": dict(cells=8, class_cells=4, width=16, steps=50, mlp_iterations=50, repeats=1)}


def fit_mlp(train, test, scaling, width: int, iterations: int, comm) -> dict | None:
    """scikit-learn's MLPRegressor with L-BFGS on standardised inputs and targets (rank 0, broadcast);
    None when scikit-learn is not installed."""
    def work():
        try:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.neural_network import MLPRegressor
        except ImportError:
            return None
        my, sy = float(np.mean(train.y)), float(np.std(train.y))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: reported as iterations
            model = MLPRegressor(hidden_layer_sizes=(width,), activation="relu", solver="lbfgs", alpha=1e-4,
                                 max_iter=iterations, random_state=0).fit(scaling.apply(train.x), (train.y - my) / sy)
        f = my + sy * model.predict(scaling.apply(test.x))
        return dict(test_rmse=demo.rmse(f, test.y), seconds=time.perf_counter() - t0, width=width,
                    iterations=int(model.n_iter_))

    return comm.bcast(work() if comm.rank == 0 else None, root=0)


def fit_mlp_classifier(train, test, scaling, width: int, iterations: int, comm) -> dict | None:
    """scikit-learn's MLPClassifier with L-BFGS on standardised inputs (rank 0, broadcast): test accuracy
    and mean cross-entropy; None when scikit-learn is not installed."""
    def work():
        try:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.neural_network import MLPClassifier
        except ImportError:
            return None
        labels = train.y.astype(np.int64)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = MLPClassifier(hidden_layer_sizes=(width,), activation="relu", solver="lbfgs", alpha=1e-4,
                                  max_iter=iterations, random_state=0).fit(scaling.apply(train.x), labels)
        seconds = time.perf_counter() - t0
        P = model.predict_proba(scaling.apply(test.x))
        k = np.searchsorted(model.classes_, test.y)
        return dict(test_accuracy=float(np.mean(model.predict(scaling.apply(test.x)) == test.y)),
                    test_loss=float(np.mean(-np.log(np.maximum(P[np.arange(len(k)), k], 1e-300)))),
                    seconds=seconds, width=width, iterations=int(model.n_iter_))

    return comm.bcast(work() if comm.rank == 0 else None, root=0)


def best_of(repeats: int, fit) -> dict | None:
    """fit() ``repeats`` times: the first run's numbers with the smallest of the times."""
    runs = [fit() for _ in range(repeats)]
    if runs[0] is not None:
        runs[0]["seconds"] = min(r["seconds"] for r in runs)
    return runs[0]


def main(size: str = "full", sets=None, comm=MPI.COMM_WORLD) -> list[dict]:
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    s = SIZES[size]
    t_start = time.perf_counter()
    warm = data.train_test(demo.REGRESSION[0], seed=0)
    demo.fit_flowfem(*warm, datasets.standardisation(demo.REGRESSION[0], warm[0]), s["cells"], comm)  # JIT, untimed
    rows = []
    for name in [n for n in demo.REGRESSION if sets is None or n in sets]:
        train, test = data.train_test(name, seed=0)
        scaling = datasets.standardisation(name, train)
        methods = {
            "flowfem (alpha auto)": best_of(s["repeats"], lambda: demo.fit_flowfem(
                train, test, scaling, s["cells"], comm)[0]),
            f"Adam particles N = {s['width']}": best_of(s["repeats"], lambda: demo.fit_particles(
                train, test, scaling, s["width"], s["steps"], 0.01, comm)[0]),
            f"MLP L-BFGS N = {s['width']}": best_of(s["repeats"], lambda: fit_mlp(
                train, test, scaling, s["width"], s["mlp_iterations"], comm)),
        }
        for method, r in methods.items():
            rows.append(dict(set=name, n_train=train.n, n_test=test.n, method=method, result=r,
                             mean_rmse=demo.rmse(np.mean(train.y), test.y)))
            if r is not None:
                extra = (f", alpha {r['alpha']:.0e}, width {r['width']}" if "alpha" in r
                         else f", {r['iterations']} iterations" if "iterations" in r else "")
                say(f"{name}: {method}: test RMSE {r['test_rmse']:.4g}, {r['seconds']:.2f} s{extra}")
    classes = []
    for name in [n for n in demo.CLASSIFICATION if sets is None or n in sets]:
        train, test = data.train_test(name, seed=0)
        scaling = datasets.standardisation(name, train)
        methods = {
            "flowfem softmax (alpha auto)": best_of(s["repeats"], lambda: demo.fit_flowfem_classes(
                train, test, scaling, s["class_cells"], comm)[0]),
            f"Adam particles N = {s['width']}": best_of(s["repeats"], lambda: demo.fit_particle_classes(
                train, test, scaling, s["width"], s["steps"], 0.01, comm)[0]),
            f"MLP L-BFGS N = {s['width']}": best_of(s["repeats"], lambda: fit_mlp_classifier(
                train, test, scaling, s["width"], s["mlp_iterations"], comm)),
        }
        for method, r in methods.items():
            classes.append(dict(set=name, n_train=train.n, n_test=test.n, method=method, result=r,
                                majority=demo.majority_accuracy(train, test)))
            if r is not None:
                say(f"{name}: {method}: test accuracy {r['test_accuracy']:.4f}, cross-entropy {r['test_loss']:.4f}, "
                    f"{r['seconds']:.2f} s")
    say(f"\n{size} size, {comm.size} rank(s), best of {s['repeats']}; total wall time "
        f"{time.perf_counter() - t_start:.0f} s\n")
    say("\n\n".join(t for t, r in ((table(rows), rows), (class_table(classes), classes)) if r))
    return rows + classes


def table(rows) -> str:
    lines = ["| data set | n train / test | method | time [s] | test RMSE | RMSE of the training mean |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        cells = ("scikit-learn not installed", "") if res is None else (f"{res['seconds']:.2f}",
                                                                          f"{res['test_rmse']:.4g}")
        lines.append(f"| {r['set']} | {r['n_train']} / {r['n_test']} | {r['method']} | {cells[0]} | {cells[1]} | "
                     f"{r['mean_rmse']:.4g} |")
    return "\n".join(lines)


def class_table(rows) -> str:
    lines = ["| data set | n train / test | method | time [s] | test accuracy | test cross-entropy | majority class "
             "accuracy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        cells = (("scikit-learn not installed", "", "") if res is None
                 else (f"{res['seconds']:.2f}", f"{res['test_accuracy']:.4f}", f"{res['test_loss']:.4f}"))
        lines.append(f"| {r['set']} | {r['n_train']} / {r['n_test']} | {r['method']} | {' | '.join(cells)} | "
                     f"{r['majority']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and one repeat: a check that it runs")
    ap.add_argument("--sets", nargs="+", choices=demo.REGRESSION + demo.CLASSIFICATION, default=None,
                    help="the data sets to run (default: all)")
    a = ap.parse_args()
    main("quick" if a.quick else "full", a.sets)
    sys.exit(0)
