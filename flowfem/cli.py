"""The ``flowfem`` command.

    flowfem solve --data sin --activation relu --domain box --alpha 1e-4 --out results/sin
    mpirun -n 2 flowfem solve --data data.csv --domain sphere --activation relu --out out/
    flowfem mesh sphere --size 3 --out sphere.msh

Every error is one line ``flowfem: error: ...`` naming the problem and the
fix, with exit status 2 on every rank and no output directory left behind
(``FLOWFEM_DEBUG=1`` prints the traceback instead; see :mod:`flowfem.mpi`).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
import traceback

import numpy as np

from flowfem.mpi import (CollectiveInterrupt, end_on_closed_stdout, exit_now, fail_together, message,  # first: MPI
                         on_root)

from flowfem import interrupted_while_loading  # noqa: E402

from flowfem.arguments import closest, command_line, read_integer, read_number, spell  # noqa: E402
from flowfem.files import check_writable, replacing  # noqa: E402
from flowfem import provenance  # noqa: E402  (early: its clock starts the run's wall time)
from flowfem.sharded_split import SAMPLE_ROWS  # noqa: E402

from mpi4py import MPI  # noqa: E402


def _petsc_options(pairs: list[str]) -> dict:
    """--petsc-option KEY=VALUE pairs as a dict, checked by :func:`flowfem.petsc_options.parse`."""
    from flowfem.petsc_options import parse

    opts = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ValueError(f"--petsc-option {p!r}: write it as KEY=VALUE, e.g. ksp_rtol=1e-8")
        opts[key.lstrip("-")] = value
    return parse(opts)


def _add_n_argument(p: argparse.ArgumentParser, g, default: int, what: str) -> None:
    """--n (into the group or parser g of p): None unless given, so that :func:`main` can tell a given
    --n (refused where it sizes nothing, :func:`_check_n_used`) from ``default``, which main fills in."""
    g.add_argument("--n", type=_integer, default=None, help=f"points of {what} (default: {default}); refused where it "
                                                       "sizes nothing, e.g. with data read from a file")
    p.set_defaults(n_default=default)


def _add_problem_arguments(p: argparse.ArgumentParser, auto_alpha: bool = False, sharded: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="a CSV (header naming columns x1..xd and y, or y1..ym for m outputs, in any order), NPZ "
                        "(arrays x, y), .npy (a structured array, fields x1..xd, y) or .h5 (datasets x, y) file, "
                        "or a synthetic set: sin (y = sin(pi x)), step (y = sign x), two_moons (labels -1/+1, "
                        "d = 2), or a real data set shipped by scikit-learn or statsmodels, fitted on inputs "
                        "standardised by its training rows: diabetes1, engel, sunspots, co2 (d = 1), iris2 (d = 2, "
                        "classes 0/1/2), stackloss (d = 3: --domain s3)")
    g.add_argument("--test-data",
                   help="held-out data: a file or a synthetic set (default: a fresh synthetic sample of max(N, 1000) "
                        "points with seed SEED + 1, or a random 20%% of the --data file's rows)")
    _add_n_argument(p, g, 1000, "a synthetic training set")
    g.add_argument("--seed", type=_integer, default=0,
                   help="seed of synthetic data and of the test split of a file (default: %(default)s)")
    if sharded:
        g.add_argument("--sharded", action="store_true",
                       help="data too large for one rank: under mpirun each rank reads and keeps only its own rows "
                            "of --data (and --test-data), a .npy, .npz or .h5 file (flowfem convert writes them; a "
                            "CSV is read by rank 0 and scattered); without --test-data each row is a test row with "
                            "probability 0.2, drawn from --seed and its row number; predictions.csv and figure.png "
                            f"show every s-th row of the file, at most {SAMPLE_ROWS} rows; squared or logistic "
                            "loss, numeric alpha, --solver cg (default: every rank holds every row)")
    g = p.add_argument_group("parameter space")
    g.add_argument("--domain", default="box",
                   help="box [-R, R]^(d+1), ball |theta| <= R, circle S^1 (d = 1), sphere S^2 (d = 2), s3 (S^3 in a "
                        "stereographic chart, d = 3, homogeneous activations), or a .msh/.xdmf mesh file "
                        "(default: %(default)s)")
    g.add_argument("--mesh-size", type=_real, default=None,
                   help="box: cells per side (default 32); ball: element size h in parameter units (default "
                        "0.25); circle: arcs (default 64); sphere: refinements of the icosahedron (default 3); "
                        "s3: cell size h on S^3 in radians (default 0.25, about 125 / h^3 cells); not with a mesh "
                        "file")
    g.add_argument("--radius", type=_positive_number, default=None,
                   help="box: half-width R, ball: radius R, in parameter units (those of w and b) (default: 4); "
                        "s3: the chart radius Z (default: from the data, Z = Z0 + sqrt(Z0^2 + 1), "
                        "Z0 = X + sqrt(X^2 + 1), X = max |x|); not with the circle, the sphere (radius 1) or a mesh "
                        "file")
    g.add_argument("--degree", type=_integer, default=1,
                   help="Lagrange degree of the density: 1, 2 or 3 (default: %(default)s)")
    g = p.add_argument_group("functional E_alpha")
    g.add_argument("--activation", default="relu",
                   help="sigma: relu, leaky_relu[:SLOPE] (0 <= SLOPE < 1, default 0.01), tanh, sigmoid, softplus, "
                        "monomial:K (z^K, K >= 1) (default: %(default)s)")
    if auto_alpha:
        g.add_argument("--alpha", type=_alpha, default=1e-4,
                       help="regularisation alpha > 0, or auto: solve along alpha = 1e-2, 1e-3, ..., 1e-10 (warm "
                            "starts, one preconditioner), score each on held-out rows (--validation, --folds), "
                            "refit on all rows at the alpha of the smallest validation error (ties: the larger "
                            "alpha); metrics.json gets the table, path.png the curve (default: %(default)g)")
        g.add_argument("--validation", type=_fraction, default=None,
                       help="with --alpha auto: the fraction of the training rows held out to score each alpha, "
                            "0 < FRACTION < 1, chosen by --seed (default: 0.2)")
        g.add_argument("--folds", type=_integer, default=None,
                       help="with --alpha auto: K >= 2 folds instead of one held-out fraction; each row is held out "
                            "once and the score is the mean over the folds (K times the cost) (default: none)")
        g.add_argument("--alphas", type=_alphas, default=None,
                       help="with --alpha auto: the path's alphas, numbers > 0 separated by commas, in any order "
                            "(solved from the largest down) (default: 1e-2,1e-3,...,1e-10)")
    else:
        g.add_argument("--alpha", type=_real, default=1e-4, help="regularisation alpha > 0 (default: %(default)g)")
    g.add_argument("--kappa", type=_real, default=1.0,
                   help="smoothness weight kappa > 0 in the H1 norm (default: %(default)g)")
    g.add_argument("--weight", default="uniform",
                   help="omega(theta) in the H1 norm: uniform, or gaussian[:S] = exp(-|theta|^2 / (2 S^2)) with S "
                        "> 0 its standard deviation in parameter units, S = 1 if not given (default: %(default)s)")


DEFAULT_RADIUS = 4.0  # half-width of the box, radius of the ball: the default of --radius


def _domain_options(args) -> tuple:
    """Refuse the mesh options that ``args.domain`` would ignore; fill in the radius. Returns the
    (mesh size, radius) the domain is made with, None where it takes none (for the record).

    A mesh file has its own cells and coordinates (no --mesh-size, no --radius); the circle and
    sphere are the unit circle and sphere, densities of directions (no --radius). ValueError
    (exit status 2) names the option and what to do instead.
    """
    from flowfem.space import DEFAULT_SIZES

    domain = str(args.domain)
    is_file = os.path.splitext(domain)[1].lower() in (".msh", ".xdmf")
    size_option = "--mesh-size" if hasattr(args, "mesh_size") else "--size"
    size = getattr(args, "mesh_size", getattr(args, "size", None))
    if is_file and size is not None:
        raise ValueError(f"{size_option} {size:g} does not apply to the mesh file {domain!r}, which has its own "
                         f"cells: drop {size_option}")
    if args.radius is not None and is_file:
        raise ValueError(f"--radius {args.radius:g} does not apply to the mesh file {domain!r}: its coordinates "
                         "are the parameters; drop --radius")
    if args.radius is not None and domain in ("circle", "sphere"):
        raise ValueError(f"--radius {args.radius:g} does not apply to the {domain}: it is the unit {domain}, "
                         "holding densities of directions: drop --radius")
    if args.radius is None and domain != "s3":  # s3: None, the chart radius is chosen from the data
        args.radius = DEFAULT_RADIUS  # unused by the other domains, but the API takes a number
    return (None if is_file else DEFAULT_SIZES.get(domain) if size is None else size,
            args.radius if domain in ("box", "ball", "s3") else None)


def _load_data(args, comm, n=None, seed=None, test_data=None):
    """Training and test sets (:func:`flowfem.data.train_test`), read on rank 0 and broadcast;
    ``n``, ``seed`` and ``test_data`` default to the command's --n, --seed and --test-data."""
    from flowfem import data

    n, seed = args.n if n is None else n, args.seed if seed is None else seed
    test_data = getattr(args, "test_data", None) if test_data is None else test_data
    loaded = on_root(comm, lambda: data.train_test(args.data, n, seed, test_data))
    _check_n_used(args)  # after the load: a misspelt --data is named as such first
    return loaded


def _check_n_used(args) -> None:
    """ValueError if --n was given but sizes nothing, so that a user's --n 500 is not silently ignored:
    neither --data nor --test-data is a synthetic set (a file or a real set is read whole), or only
    --test-data is and --n is below the data.TEST_MIN points it has anyway (max(N, TEST_MIN))."""
    from flowfem import data

    if not getattr(args, "n_given", False) or args.data in data.SYNTHETIC:
        return
    test = getattr(args, "test_data", None)
    if test in data.SYNTHETIC and args.n < data.TEST_MIN:
        raise ValueError(f"--n {args.n} sizes only the synthetic --test-data {test}, a sample of max(N, "
                         f"{data.TEST_MIN}) = {data.TEST_MIN} points: drop --n, or give --n {data.TEST_MIN} or more")
    if test not in data.SYNTHETIC:
        raise ValueError(f"--n {args.n} sets the size of a synthetic data set ({', '.join(data.SYNTHETIC)}), but "
                         f"{spell('data', repr(args.data))} is read whole: drop --n (or subsample the file)")


def _load_sharded(args, comm):
    """(train, train_rows, test, test_rows) for ``solve --sharded``: this rank's rows of --data and --test-data
    (:func:`flowfem.shards.read`: each rank reads only its own), split as :mod:`flowfem.sharded_split` says
    when no --test-data is given; the rows' numbers in their file. Collective."""
    from flowfem import data, shards, sharded_split

    for option, spec in (("--data", args.data), ("--test-data", args.test_data)):
        if spec is not None and data.named(spec):
            raise ValueError(f"{option} {spec} is a named data set, which every rank makes whole; --sharded reads "
                             f"a file's rows rank by rank: drop --sharded, or save the set to a file first, e.g. "
                             f"python -c \"from flowfem import data; data.save(data.get('{spec}'), '{spec}.npy')\"")
    shard = shards.read(args.data, comm)
    _check_n_used(args)
    name = os.path.splitext(os.path.basename(args.data))[0]
    if args.test_data is None:
        return sharded_split.split(shard.x, shard.y, shard.start, shard.n, args.seed, name, comm)
    held = shards.read(args.test_data, comm)
    test_name = os.path.splitext(os.path.basename(args.test_data))[0]  # as data.load names a file
    train, test = data.Dataset(shard.x, shard.y, name), data.Dataset(held.x, held.y, test_name)
    data.check_test_columns(train, test)  # the same on every rank: a file's columns
    return (train, np.arange(shard.start, shard.start + shard.x.shape[0]),
            test, np.arange(held.start, held.start + held.x.shape[0]))


def _record_chart_radius(args, space) -> None:
    """On s3 without --radius the chart radius Z was chosen from the training inputs: record that Z
    (metrics.json, energy.json: ``radius``), not the None the command was given."""
    if args.mesh_options[1] is None and args.domain == "s3":
        args.mesh_options = (args.mesh_options[0], space.outer_radius)


def _load_standardised(args, comm):
    """(train, test, scaling): :func:`_load_data`, and for a real data set its inputs standardised
    on the training rows (scaling the :class:`flowfem.scaling.Standardisation`, None otherwise):
    solve, flow and compare fit a real set on z = (x - m) / s, and record the scaling. ValueError for
    a set of class labels (iris2) unless the command fits them with the softmax loss."""
    from flowfem import datasets

    classify, loss = datasets.REAL.get(args.data), getattr(args, "loss", "squared")  # compare: squared
    if classify is not None and classify.classes is not None and loss != "softmax":  # before the data is read
        raise ValueError(f"--data {args.data} holds class labels ({classify.task}): as {loss} targets they are "
                         "meaningless; " + ("add --loss softmax" if args.command == "solve" else
                                            f"fit them with flowfem solve --loss softmax ({args.command} has none)"))
    train, test = _load_data(args, comm)
    scaling = datasets.standardisation(args.data, train)
    if scaling is not None:
        train, test = scaling.dataset(train), scaling.dataset(test)
    return train, test, scaling


def _split_record(args, train) -> dict:
    """How --data was split into training and test rows (--n, --seed, --test-data), and the SHA-256 of the
    training rows ``train`` as fitted (:func:`flowfem.data.rows_sha256`; "" for sharded rows), recorded in
    density.npz so that ``readout --rule refit`` fits on the same training rows, not on test rows or
    other data."""
    from flowfem import data

    sharded = bool(getattr(args, "sharded", False))
    return dict(data_n=args.n, data_seed=args.seed, test_data=args.test_data or "", sharded=sharded,
                train_sha256="" if sharded else data.rows_sha256(train.x, train.y))


def cmd_solve(args, comm) -> None:
    from flowfem import io, outputs, sharded_split
    from flowfem.plot import FIGURE_OUTPUTS as plot_outputs
    from flowfem.problem import Problem, make_space

    petsc = _petsc_options(args.petsc_option)
    if args.sharded:
        for given, option, instead in ((args.alpha == "auto", "--alpha auto", "a numeric --alpha (e.g. the one "
                                        "--alpha auto chooses on a sample of the rows)"),
                                       (args.loss == "softmax", "--loss softmax", "--loss squared or logistic"),
                                       (args.solver == "direct", "--solver direct", "--solver cg")):
            if given:  # before any data is read
                raise ValueError(f"{option} needs every row on every rank: drop --sharded, or use {instead}")
        train, train_rows, test, test_rows = _load_sharded(args, comm)
        scaling, n_train = None, comm.allreduce(train.n, op=MPI.SUM)
        # s3 takes its chart radius from the largest |x| over every rank's rows
        largest = comm.allreduce(float(np.linalg.norm(train.x, axis=1).max(initial=0.0)), op=MPI.MAX)
        mesh_x = np.array([[largest] + [0.0] * (train.d - 1)])
    else:
        train, test, scaling = _load_standardised(args, comm)
        n_train, mesh_x = train.n, train.x
    t0 = time.perf_counter()
    space = make_space(args.domain, train.d, args.mesh_size, args.radius, args.activation, comm, x=mesh_x)
    _record_chart_radius(args, space)
    problem = Problem(space, args.activation, args.weight, args.alpha, args.kappa, args.degree, loss=args.loss)
    mesh_seconds = time.perf_counter() - t0
    y = train.y
    if problem.loss.multiclass and np.all(y == np.round(y)):  # whole-number labels (files read them as floats)
        y = y.astype(np.int64)  # recorded as 0, 1, 2 rather than 0.0, 1.0, 2.0
    if test.outputs == 1:  # (m outputs and a classification loss: the fit refuses the training targets first)
        # test rows are scored after the fit: targets the loss cannot score (softmax: labels of no training
        # class) are refused before it
        if not problem.loss.multiclass:  # the training rows first: a file of wrong labels is named as such
            problem.loss.check_labels(y, "training targets y", comm if args.sharded else None)
        problem.loss.check_labels(test.y, "test targets y", comm if args.sharded else None,
                                  classes=np.unique(y) if problem.loss.multiclass else None)
    auto = args.alpha == "auto"
    for option, value in (("--validation", args.validation), ("--folds", args.folds), ("--alphas", args.alphas)):
        if not auto and value is not None:
            raise ValueError(f"{option} applies to --alpha auto only (it sets up the path of alphas that chooses "
                             "alpha); drop it or use --alpha auto")
    path_args = dict(validation=args.validation, folds=args.folds, seed=args.seed, alphas=args.alphas) if auto else {}
    result = problem.fit(train.x, y, args.solver, args.rtol, petsc, args.allow_unconverged,
                         progress=not args.quiet, preconditioner=args.preconditioner, sharded=args.sharded,
                         **path_args)
    metrics = io.solve_metrics(result, train, test, sharded=args.sharded)
    metrics.update(provenance.record(args, comm, *args.mesh_options), mesh_seconds=mesh_seconds)
    settings = dict(io.settings(result.functional), **_split_record(args, train))
    if args.sharded:  # the files show samples of the rows (flowfem.sharded_split.sample), the same on every rank
        n_file = comm.allreduce(train.n + (test.n if args.test_data is None else 0), op=MPI.SUM)
        train = sharded_split.sample(train, train_rows, n_file, comm)
        n_test_file = n_file if args.test_data is None else comm.allreduce(test.n, op=MPI.SUM)
        test = sharded_split.sample(test, test_rows, n_test_file, comm)
        metrics.update(predictions_rows=test.n, figure_rows=train.n)
    if problem.loss.multiclass:  # readout records them in the network: predict prints labels
        settings.update(classes=result.classes)
    if scaling is not None:  # recorded: flowfem readout folds it into the network (flowfem/scaling.py)
        metrics.update(input_scaling=scaling.record())
        settings.update(input_mean=scaling.mean, input_scale=scaling.scale)
    drawn = not args.no_plot and train.d <= 2  # figure.png draws f_u over a line or a plane
    with outputs.output_directory(args.out, comm, args.force) as tmp:
        io.write_solution(tmp, result, settings, metrics, train, test, plot=drawn, scaling=scaling,
                          sampled=args.sharded)
    if comm.rank == 0:
        loss, reg = result.parts
        if auto:
            path = result.path
            print(f"alpha path ({path.score}, " + (f"{path.folds} folds" if path.folds else
                                                   f"{path.validation:g} of the rows held out") + "):")
            cg = args.solver == "cg"  # iterations and a basis rank only mean something for CG
            for i, row in enumerate(path.table()):
                print(f"  {'*' if i == path.chosen else ' '} alpha {row['alpha']:.0e}  score {row['score']:.3e}"
                      + (f"  accuracy {row['accuracy']:.4f}" if "accuracy" in row else "")
                      + f"  train loss {row['train_loss']:.3e}"
                      + (f"  {row['newton']} Newton steps" if row["newton"] else "")
                      + (f"  {row['iterations']} CG its" if cg else "") + f"  {row['seconds']:.2f} s"
                      + (f"  basis rank {row['rank']}" if row["rank"] else ""))
            print(f"chosen alpha = {path.alpha:g}, refitted on all {n_train} rows"
                  + (f" ({path.refit_iterations} CG its)" if cg else ""))
            beyond = path.beyond()
            if beyond:  # the best alpha may lie beyond the grid: say so, and how to look there
                print(f"warning: the chosen alpha is the grid's {path.edge}; the best may lie "
                      f"{'above' if path.edge == 'largest' else 'below'} it: try --alphas "
                      + ",".join(f"{a:g}" for a in beyond))
        print(f"E_alpha = {result.energy:.6e}  (loss {loss:.4e} + regulariser {reg:.4e})")
        where = (f"{result.solve_seconds:.2f} s on {comm.size} rank(s) (data operator {result.setup_seconds:.2f} s), "
                 f"{problem.H.ndofs} dofs, n = {n_train}" + (" (sharded)" if args.sharded else ""))
        solver = result.info.method
        if problem.loss.quadratic:
            its = (f"{result.iterations} iterations, relative residual" if result.outputs == 1 else
                   f"{result.iterations} iterations for {result.outputs} outputs ("
                   + ", ".join(str(i.iterations) for i in result.infos) + "), largest relative residual")
            print(f"{solver}: {its} {result.residual:.2e}, {where}")
            print(f"RMSE train {metrics['train_rmse']:.3e}, test {metrics['test_rmse']:.3e}"
                  + ("" if result.outputs == 1 else " (all outputs); per output test " + ", ".join(
                      f"y{k + 1} {v:.3e}" for k, v in enumerate(metrics["test_rmse_outputs"]))))
        else:
            print(f"Newton ({args.loss} loss): {result.iterations} iterations ({solver}: "
                  f"{metrics['linear_iterations_total']} inner iterations in all), ||dE|| / ||dE(0)|| "
                  f"{result.residual:.2e}, {where}; ||dE|| at iterations 0..{result.iterations} "
                  + " ".join(f"{r:.2e}" for r in metrics["newton_residuals"]))
            print(f"accuracy train {metrics['train_accuracy']:.4f}, test {metrics['test_accuracy']:.4f}; mean "
                  f"{'cross-entropy' if problem.loss.multiclass else args.loss + ' loss'} train "
                  f"{metrics['train_loss']:.4e}, test {metrics['test_loss']:.4e}")
            if problem.loss.multiclass:
                print(f"test confusion matrix (rows true, columns predicted; classes "
                      f"{', '.join(map(str, metrics['classes']))}): {metrics['test_confusion_matrix']}")
        if not result.info.converged:
            print(f"warning: NOT CONVERGED (relative residual {result.residual:.2e} > rtol {args.rtol:.1e}); "
                  "metrics.json says converged: false")
        m = 1 if problem.loss.multiclass else result.outputs  # a classifier: one figure of its decision regions
        figures = "figure.png" if m == 1 else ", ".join(f"figure_y{k + 1}.png" for k in range(min(m, plot_outputs)))
        print(f"wrote {args.out}/: density.bp, density.xdmf/.h5 (ParaView), density.npz, predictions.csv, metrics.json"
              + ("" if not drawn else f", {figures}" + (", path.png" if auto else ""))
              + (" (no figure.png for d = 3 inputs)" if train.d > 2 and not args.no_plot else ""))


def cmd_flow(args, comm) -> None:
    """The gradient flow of E_alpha from an initial density: energy log, trajectory, checkpoints. Data of m
    outputs (y1..ym) flow m densities in lock step (:mod:`flowfem.flow.driver`), written as the fields
    density1..densitym; the log holds the summed energy and each output's."""
    import math

    from flowfem import io, outputs, plot
    from flowfem.flow import checkpoint, driver, initial
    from flowfem.problem import Problem, make_space

    petsc = _petsc_options(args.petsc_option)
    driver.check_steps(args.tau, args.growth, args.tau_max, args.max_steps, args.tol)  # before any work
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every {args.checkpoint_every}: give a positive number of steps")
    if args.write_every < 1:
        raise ValueError(f"--write-every {args.write_every}: give a positive number of steps")
    if args.tol is not None and args.no_reference:
        raise ValueError("--tol stops at ||u - u*|| <= tol ||u*||, which needs the stationary solution: "
                         "drop --no-reference")
    t_end = math.inf if args.t_end is None else args.t_end
    if not t_end > 0:
        raise ValueError(f"--t-end {args.t_end}: the final time must be positive")
    train, test, scaling = _load_standardised(args, comm)
    t0 = time.perf_counter()
    space = make_space(args.domain, train.d, args.mesh_size, args.radius, args.activation, comm, x=train.x)
    _record_chart_radius(args, space)
    problem = Problem(space, args.activation, args.weight, args.alpha, args.kappa, args.degree, loss=args.loss)
    if test.outputs == 1:  # m outputs and a classification loss: the functional refuses the training targets
        problem.loss.check_labels(train.y, "training targets y")  # the training rows first
        problem.loss.check_labels(test.y, "test targets y")  # scored after the flow: refused before it
    E = problem.functional(train.x, train.y)
    flow = driver.Flow(E, args.metric, args.scheme, args.solver, args.rtol, ts_rtol=args.ts_rtol,
                       petsc_options=petsc, step_rtol=args.step_rtol, adapt=False if args.fixed_steps else None,
                       preconditioner=args.preconditioner)
    t1 = time.perf_counter()
    if not args.no_reference:
        flow.stationary(progress=not args.quiet)
    t2 = time.perf_counter()
    fp = checkpoint.fingerprint(flow, data=args.data, n_data=args.n, seed=args.seed, radius=args.radius,
                                mesh_size=args.mesh_size, solver=args.solver, rtol=args.rtol, ts_rtol=args.ts_rtol,
                                step_rtol=args.step_rtol, tau=args.tau, growth=args.growth, tau_max=args.tau_max,
                                write_every=args.write_every,  # the resumed steps and frames continue the run's
                                reference=not args.no_reference, petsc_options=petsc)
    resumed = state = None
    if args.resume:
        resumed = checkpoint.load_checkpoint(args.resume, flow, fp)
        state, U = resumed.state, resumed.U
        if comm.rank == 0:
            print(f"resuming from {resumed.path}: step {state.step}, t = {state.t:.6g}"
                  + (f" (written on {resumed.ranks} rank(s))" if resumed.ranks != comm.size else ""))
    else:
        U = flow.as_state([io.vector(u) for u in initial.initial_densities(problem.H, args.initial,
                                                                           problem.activation, E.outputs, scaling)])
    # the checkpoints of this run (a resumed run continues its series): every K steps, and where Ctrl-C stops it
    directory = args.checkpoint_dir or (
        args.resume if args.resume and os.path.isdir(args.resume)
        else os.path.dirname(resumed.path) if resumed else os.path.abspath(args.out).rstrip("/") + ".checkpoints")
    out = os.path.realpath(args.out)
    if os.path.commonpath([os.path.realpath(directory), out]) == out:  # the output replaces OUT whole at the end
        raise ValueError(f"the checkpoint directory {directory!r} is inside the output directory {args.out!r}, which "
                         "the run writes whole at its end: give --checkpoint-dir a directory outside it (default: "
                         "OUT.checkpoints)")
    checkpoints = checkpoint.Checkpoints(directory, args.checkpoint_every, fp, comm,
                                         run=resumed.run if resumed else None)
    with outputs.output_directory(args.out, comm, args.force) as tmp:
        with io.TrajectoryWriter(os.path.join(tmp, "trajectory.xdmf"), problem.H, args.write_every,
                                 E.outputs) as writer, \
                driver.Interrupt() as interrupt:
            if resumed:  # the frames up to the checkpoint, saved beside it: the trajectory goes on from step 0
                frames, missing = checkpoint.saved_frames(resumed, comm)
                if frames is not None:
                    writer.replay(frames["theta"], frames["steps"], frames["times"], frames["values"])
                if missing and comm.rank == 0:
                    print(f"warning: {missing}", file=sys.stderr)
            result = flow.run(U, t_end=t_end, tau=args.tau, growth=args.growth, tau_max=args.tau_max,
                              max_steps=args.max_steps, tol=args.tol, state=state, checkpoints=checkpoints,
                              writer=writer, progress=not args.quiet, stop=interrupt)
        if result.interrupted:  # leaves no output directory; the checkpoint just written resumes the run
            raise Interrupted(f"{result.stopped}; resume with: {_resume_command(args, comm, checkpoints.latest)}")
        t3 = time.perf_counter()
        settings = dict(io.settings(E), **_split_record(args, train))
        if scaling is not None:  # recorded: flowfem readout folds it into the network (flowfem/scaling.py)
            settings.update(input_mean=scaling.mean, input_scale=scaling.scale)
        m = E.outputs
        densities = [io.function(problem.H, Uk, "density" if m == 1 else f"density{k + 1}")
                     for k, Uk in enumerate(result.Us)]
        io.write_density(tmp, densities[0] if m == 1 else densities, space, settings, result.times[-1])
        f_test = [E.Phi.predict(Uk, test.x) for Uk in result.Us]
        summary = dict(
            settings, data=args.data, n_train=train.n, ndofs=problem.H.ndofs, ranks=comm.size, domain=space.domain,
            initial=args.initial, resumed_from=resumed.path if resumed else None, steps_taken=result.steps,
            final_time=float(result.times[-1]), final_energy=float(result.energies[-1]),
            final_error=float(result.errors[-1]), setup_seconds=t1 - t0, stationary_seconds=t2 - t1,
            flow_seconds=t3 - t2, contraction_rate=result.contraction_rate(),
            linear_iterations=int(result.column("linear_iterations").sum()),
            stationary_iterations=getattr(flow.stationary_info, "iterations", None),
            frames=writer.frames, outputs=m,
            **io.fit_scores(problem.loss, f_test[0] if m == 1 else np.column_stack(f_test), test.y, "test"))
        if m > 1:
            summary.update(final_energy_outputs=result.log[-1]["energy_outputs"],
                           final_error_outputs=result.log[-1]["error_outputs"])
        summary.update(provenance.record(args, comm, *args.mesh_options))
        if scaling is not None:
            summary.update(input_scaling=scaling.record())
        io.write_log(tmp, result, comm, extra=summary)
        if not args.no_plot and comm.rank == 0:
            plot.energy_figure(os.path.join(tmp, "energy.png"), result, title=args.data,
                              quadratic=problem.loss.quadratic)
    if comm.rank == 0:
        last = result.log[-1]
        err = "" if not np.isfinite(last["error"]) else f", ||u - u*||_G / ||u*||_G = {last['error']:.3e}"
        print(f"{result.scheme} in the {result.metric} metric: {result.steps} steps to t = {last['t']:.6g} "
              f"({result.stopped}); E_alpha = {last['energy']:.8e} (loss {last['loss']:.4e} + regulariser "
              f"{last['regulariser']:.4e}){err}")
        if E.outputs > 1:
            print(f"{E.outputs} outputs in lock step, one linear solver per step: E_alpha per output "
                  + ", ".join(f"y{k + 1} {v:.6e}" for k, v in enumerate(last["energy_outputs"]))
                  + ("" if not np.isfinite(last["error"]) else "; ||u_k - u_k*|| / ||u_k*|| "
                     + ", ".join(f"{v:.2e}" for v in last["error_outputs"])))
        lin = result.column("linear_iterations")[1:]
        print(f"linear iterations {int(lin.sum())} ({lin.mean() if len(lin) else 0:.1f} per step), flow "
              f"{t3 - t2:.2f} s, stationary solve {t2 - t1:.2f} s, on {comm.size} rank(s), {problem.H.ndofs} dofs, "
              f"n = {train.n}")
        if result.stopped.startswith("max_steps"):
            print(_max_steps_warning(args, flow, last, t_end))
        if checkpoints.every is not None:
            print(f"checkpoints in {checkpoints.directory}/ (every {checkpoints.every} steps)")
        fields = "" if E.outputs == 1 else f"; fields density1..density{E.outputs}"
        print(f"wrote {args.out}/: trajectory.xdmf/.h5 ({writer.frames} frames), density.bp, density.xdmf/.h5, "
              "density.npz, energy.csv, energy.json" + ("" if args.no_plot else ", energy.png") + fields)


def _max_steps_warning(args, flow, last: dict, t_end: float) -> str:
    """The line a flow prints when --max-steps ended it: what it did not reach, how far it still is from u*
    (distance and energy gap, when the stationary solution is known) and which option to change."""
    goal = (f"--tol {args.tol:g}" if args.tol is not None
            else f"--t-end {t_end:g}" if np.isfinite(t_end) else "the stationary state")
    if np.isfinite(last["error"]):
        left = f"still ||u - u*|| / ||u*|| = {last['error']:.3g} and E - E* = {last['gap']:.3g} from u*"
    else:
        left = "the distance to u* is not known (--no-reference)"
    if flow.adapt:  # BDF: the error control chooses the steps
        fix = f"raise --max-steps or loosen --ts-rtol (now {args.ts_rtol:g})"
    elif args.t_end is not None or args.growth > 1:
        fix = (f"raise --max-steps, or --tau / --growth (now {args.tau:g} / {args.growth:g}; implicit steps are "
               "stable at any size)")
    else:
        fix = ("take growing steps, which are stable at any size: e.g. --tau 0.5 --growth 3"
               + (" --t-end 1e4" if args.no_reference else " --tol 1e-6")  # --tol needs the stationary solution
               + " (or raise --max-steps)")
    return (f"warning: stopped at --max-steps {args.max_steps} (t = {last['t']:.6g}) before reaching {goal}: "
            f"{left}; {fix}")


class Interrupted(Exception):
    """A run stopped by Ctrl-C: one line on stderr, exit status 130 (128 + SIGINT)."""


def _resume_command(args, comm, path: str) -> str:
    """The command line that continues an interrupted flow: its own, with --resume naming the checkpoint
    written where it stopped."""
    import shlex

    argv, words, skip = list(args.argv), [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            words.append(a)
    launcher = ["mpirun", "-n", str(comm.size)] if comm.size > 1 else []
    return shlex.join(launcher + ["flowfem", *words, "--resume", path])


def cmd_mesh(args, comm) -> None:
    from flowfem import space as sp

    def make():
        check_writable(args.out, "mesh file", args.force)  # before meshing, which may take long
        d = args.d if args.d is not None else 2 if args.domain == "sphere" else 1
        arrays = sp.check_mesh(sp.named_arrays(args.domain, d, args.size, args.radius, args.geometry_degree))
        arrays.write(args.out)
        return f"wrote {args.out}: {len(arrays.cells)} {arrays.cell_type}s, {len(arrays.points)} nodes, " \
               f"parameter dimension {arrays.gdim}"

    text = on_root(comm, make)
    if comm.rank == 0:
        print(text)


def _reading(read):
    """An argparse type: the number ``read`` (flowfem.arguments.read_number or read_integer) reads in the text,
    its refusal argparse's one line ("argument --tau: '1_0' is not a number (...)"). Every number of the
    command line is read so: float() and int(), argparse's own, also read '1_0' as 10."""
    def parse(text: str):
        try:
            return read(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


_real, _integer = _reading(read_number), _reading(read_integer)


def _number_in(ok, allowed: str, read=_real):
    """An argparse type: a number v (read by ``read``) with ok(v); ``allowed`` says which in the error."""
    def parse(text: str) -> float:
        v = read(text)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text} must be {allowed}")
        return v

    return parse


_positive_integer = _number_in(lambda v: v >= 1, "a whole number >= 1", _integer)
_positive_number = _number_in(lambda v: np.isfinite(v) and v > 0, "a finite number > 0")
_fraction = _number_in(lambda v: 0 < v < 1,
                       "a fraction with 0 < FRACTION < 1 (the part of the rows held out, e.g. 0.2)")


def _tolerance(option: str, example: str):
    """An argparse type of the relative tolerance ``option`` (>= 1 asks nothing): 0 < v < 1, its message naming
    the option as the API's (flowfem.arguments.tolerance) does, e.g. '2 must be a number with 0 < --ts-rtol < 1'."""
    return _number_in(lambda v: 0 < v < 1, f"a number with 0 < {option} < 1, e.g. {example}")


def _alphas(text: str) -> list[float]:
    """--alphas: numbers separated by commas (the path checks their range, naming --alphas, as for the API)."""
    try:
        return [read_number(a) for a in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write numbers > 0 separated by commas, e.g. "
                                         "1,1e-1,1e-2,1e-3") from None


def _alpha(text: str):
    """--alpha of solve: ``auto`` or a number (Problem checks its range, as for the API)."""
    if text == "auto":
        return text
    try:
        return read_number(text)
    except ValueError:
        guess = closest(text, ["auto"])
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor auto"
                                         + (f": did you mean {guess!r}?" if guess else "")) from None


PATH_OPTIONS = ("out", "json", "network", "density", "data", "test_data", "resume", "checkpoint_dir", "source",
                "target")  # the options that name a file or directory (--data: or a named data set)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line ``flowfem: error: ... (see PROG --help)`` (a demo's: ``DEMO: error: ...``),
    the same start as every other error of the command whichever subcommand's parser found it, exit status 2,
    printed by rank 0 only (every rank parses the same arguments). A value that is none of an option's
    choices names the closest (:func:`flowfem.arguments.unknown`). A value that starts as a negative
    number is a value (``--mu -1,0,2``, ``--alpha -1e-3``), as in Python 3.14's argparse: 3.12 and 3.13
    take only plain -N and -N.N, and refused the others with "expected one argument"."""

    name = "flowfem"  # what the line starts with (a demo's parser: the demo's, flowfem.outputs.run_demo)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")  # (private; no option looks like one)

    def error(self, text: str):
        if MPI.COMM_WORLD.rank == 0:
            print(f"{self.name}: error: {text} (see {self.prog} --help)", file=sys.stderr)
        self.exit(2)

    def parse_args(self, args=None, namespace=None):
        # argparse reports a misspelt option as "unrecognized arguments" at the top parser, naming no option:
        # name the closest option of the subcommand that was given, and its help
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(self, "commands", {}).get(getattr(namespace, "command", None), self)
            options = [o for a in command._actions for o in a.option_strings]
            guesses = [closest(e.split("=", 1)[0], options) for e in extras if e.startswith("-")]
            guess = next((g for g in guesses if g is not None), None)
            command.error(f"unrecognized arguments: {' '.join(extras)}"
                          + (f": did you mean {guess}?" if guess is not None else ""))
        command = getattr(self, "commands", {}).get(getattr(namespace, "command", None))
        for action in command._actions if command is not None else ():
            # an empty path is no file: --out '' became ".", the working directory (replaced with --force),
            # predict's --out '' standard output, export's the default name, landscape's --json '' no file
            if action.dest in PATH_OPTIONS and getattr(namespace, action.dest, None) == "":
                name = action.option_strings[0] if action.option_strings else action.metavar
                command.error(f"{name} is empty: give " + ("a data file or a named data set, e.g. sin"
                                                           if "data" in action.dest else "a file or directory"))
        return namespace

    def _check_value(self, action, value):
        # argparse's own check (a private method: Python 3.14's suggest_on_error does this, 3.12 and 3.13 cannot)
        if action.choices is not None and value not in action.choices:
            guess = closest(value, action.choices)
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}"
                                         + (f": did you mean {guess!r}?" if guess is not None else "")
                                         + f" (choose from {', '.join(map(str, action.choices))})")


class _Version(argparse.Action):
    """--version: flowfem's, dolfinx's, PETSc's and Python's versions (:func:`flowfem.provenance.versions`,
    which imports neither dolfinx nor PETSc), then exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from flowfem.provenance import versions

        v = versions()
        if MPI.COMM_WORLD.rank == 0:
            print(f"flowfem {v['flowfem']} (dolfinx {v['dolfinx']}, PETSc {v['petsc']}, Python {v['python']})")
        parser.exit(0)


def cmd_readout(args, comm) -> None:
    from flowfem import data, io
    from flowfem.readout import readout

    # before the work
    on_root(comm, lambda: check_writable(args.out, "network file", args.force, (args.density, args.data), ".npz"))
    H, u, settings = io.load_density(args.density, comm)
    scaling = settings.pop("input_scaling", None)
    classes = settings.pop("classes", None)  # a softmax fit: the network becomes a classifier of these labels
    if "activation" not in settings:
        raise ValueError(f"the density {args.density!r} records no activation: it was not written by "
                         "flowfem solve; solve again")
    x = y = None
    if args.n_given and args.rule != "refit":
        raise ValueError(f"--n {args.n}: --rule {args.rule} reads no data; drop --n")
    if args.alpha is not None and args.rule != "refit":  # (readout takes it, unused: --alpha -1 passed unseen)
        raise ValueError(f"--alpha {args.alpha:g} is the regularisation of --rule refit; --rule {args.rule} fits no "
                         "weights: drop --alpha")
    if args.rule == "refit":
        if not args.data:
            raise ValueError("--rule refit fits output weights on training data: pass --data (file or sin/step/two_moons)")
        if settings.get("sharded"):
            raise ValueError(f"the density {args.density!r} was fitted on data sharded over ranks (solve --sharded): "
                             "--rule refit would hold every training row on every rank; use --rule quadrature or "
                             "--rule sample")
        # the solve's training rows: its split of --data, as recorded (older density files: this command's)
        train = _load_data(args, comm, settings.get("data_n"), settings.get("data_seed"),
                           settings.get("test_data") or None)[0]
        # after the load: a misspelt --data is named first; the recorded --n itself is consistent, so kept
        if args.n_given and "data_n" in settings and args.n != settings["data_n"]:
            raise ValueError(f"--n {args.n}: refit fits the training rows of the density {args.density!r}, its "
                             f"solve's split of --data (--n {settings['data_n']}) as recorded there; drop --n")
        x, y = train.x, train.y
        if scaling is not None:  # the density's inputs
            x = scaling.apply(x)
        if settings.get("train_sha256", "") not in ("", data.rows_sha256(x, y)):  # (older files record none)
            raise ValueError(f"{spell('data', repr(args.data))} gives not the rows the density {args.density!r} was "
                             "fitted on "
                             "(their SHA-256 differs): refit on the solve's --data, unchanged")
    alpha = args.alpha if args.alpha is not None else settings.get("alpha")
    net = readout(u, args.rule, activation=settings["activation"], width=args.width, degree=args.degree,
                  subdivisions=args.subdivisions, seed=args.seed, points=args.points, x=x, y=y,
                  alpha=alpha, weight=settings.get("weight", "uniform"), classes=classes,
                  loss=settings.get("loss", "squared" if classes is None else "softmax"))
    if scaling is not None:  # fitted on standardised inputs: the network file takes raw ones
        net = scaling.fold(net)

    def save():
        net.save(args.out)
        return (f"wrote {args.out}: width {net.width}, {net.activation.name}, inputs d = {net.input_dim}"
                + (f", classifier of {net.outputs} classes ({', '.join(map(str, net.classes.tolist()))})"
                   if net.classifier else f", {net.outputs} outputs" if net.outputs > 1 else ""))

    message = on_root(comm, save)
    if comm.rank == 0:
        print(message)


def cmd_predict(args, comm) -> None:
    from flowfem import data
    from flowfem.loss import LOGISTIC
    from flowfem.network import Network

    def work():
        if args.out:
            check_writable(args.out, "predictions file", args.force, (args.network, args.data), ".csv")
        net = Network.load(args.network)
        inputs = data.get(args.data, args.n, args.seed, require_y=False)
        _check_n_used(args)
        x, _ = data.check(inputs.x, None, net.input_dim, what=f"inputs {args.data!r}",
                          takes=f"the network {args.network!r}")
        if net.classifier:
            return _predict_labels(args, net, x, inputs.y)
        logistic = net.loss == "logistic"  # f is a score: sign f is the label -1/+1, scored by accuracy
        if args.proba:
            raise ValueError(f"--proba needs a classifier (a network read out of a flowfem solve --loss softmax); "
                             f"{args.network!r} is a {'logistic' if logistic else 'regression'} network: drop --proba")
        labels = inputs.y is not None and inputs.outputs == 1 and np.isin(inputs.y, (-1.0, 1.0)).all()
        if (inputs.y is not None and (inputs.outputs != net.outputs or logistic and not labels)
                and data.named(args.data)):
            inputs.y = None  # a synthetic or real set's own targets: predict needs none (they only give a score)
        if inputs.y is not None and inputs.outputs != net.outputs:
            names = "y" if net.outputs == 1 else f"y1..y{net.outputs}"
            raise ValueError(f"inputs {args.data!r} have {inputs.outputs} target column(s), the network "
                             f"{args.network!r} {net.outputs} output(s): give {names} or leave the targets out")
        if inputs.y is not None and logistic:
            LOGISTIC.check_labels(inputs.y, f"targets y of {args.data!r}")
        f = net(x)  # everything is computed before anything is written
        if inputs.y is None:
            score = ""
        elif logistic:  # f = 0 counts as wrong, as in solve's metrics (flowfem.io.fit_scores)
            score = f", accuracy of sign f against y {np.mean(np.sign(f) == inputs.y):.4f}"
        else:
            score = f", RMSE against y {np.sqrt(np.mean((f - inputs.y) ** 2)):.4e}"
            if net.loss is None and labels:  # a logistic network of an older flowfem is scored as a regression
                score += (" (the network file records no loss; if it was fitted with the logistic loss, read it "
                          "out again for its accuracy)")
        data.save_predictions(args.out or sys.stdout, x, f)
        return f"wrote {args.out or 'the CSV to stdout'}: {len(f)} predictions{score}"

    message = on_root(comm, work)
    if comm.rank == 0:  # with the CSV on stdout, the summary goes to stderr: the stream stays one CSV table
        print(message, file=sys.stdout if args.out else sys.stderr)


def _predict_labels(args, net, x: np.ndarray, y) -> str:
    """``flowfem predict`` of a classifier: CSV x1..xd,label (and with --proba p_L for each label L of
    net.classes, in order: its probability); with labels y in the inputs, the accuracy."""
    import csv
    import io as io_

    if y is not None and y.ndim != 1:
        raise ValueError(f"inputs {args.data!r} have {y.shape[1]} target columns; a classifier's data have one "
                         "column y of labels (or none)")
    labels, proba = net.predict(x), (net.predict_proba(x) if args.proba else None)
    buffer = io_.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # p_LABEL: the probability of the class whose label the column label writes so (labels are not 1..C)
    writer.writerow([f"x{i + 1}" for i in range(x.shape[1])] + ["label"]
                    + ([f"p_{c.item()}" for c in net.classes] if args.proba else []))
    for j in range(x.shape[0]):
        writer.writerow([repr(float(v)) for v in x[j]] + [labels[j].item()]
                        + ([repr(float(v)) for v in proba[j]] if args.proba else []))
    if args.out:
        with replacing(args.out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(buffer.getvalue())
    else:
        sys.stdout.write(buffer.getvalue())
    accuracy = "" if y is None else f", accuracy against y {np.mean(labels == y):.4f}"
    return f"wrote {args.out or 'the CSV to stdout'}: {len(labels)} predicted labels{accuracy}"


def cmd_convert(args, comm) -> None:
    """Stream a data file into the large-data format (flowfem.convert; NumPy and h5py only; on rank 0)."""
    from flowfem import convert

    text = on_root(comm, lambda: convert.convert(args.source, args.target, args.chunk, args.force,
                                                 show_progress=not args.quiet))
    if comm.rank == 0:
        print(text)


def cmd_export(args, comm) -> None:
    """Write a saved network as ONNX, safetensors or a PyTorch .pt state dict (no dolfinx; on rank 0)."""
    import importlib.util
    import os

    from flowfem import export
    from flowfem.network import Network

    suffix = export.FORMATS[args.format]
    out = args.out or os.path.splitext(args.network)[0] + suffix

    def work():
        check_writable(out, "exported network file", args.force, (args.network,))  # before the work
        if args.format == "torch" and importlib.util.find_spec("torch") is None:
            raise ValueError("--format torch writes a PyTorch state dict and needs PyTorch: pip install torch, "
                             "or choose --format onnx or safetensors")
        net = Network.load(args.network)
        export.write(net, out, args.format)
        return (f"wrote {out}: {args.format}, width {net.width}, {net.activation.name}, inputs d = {net.input_dim}"
                + (f", {net.outputs} logits (classes {', '.join(map(str, net.classes.tolist()))} in the metadata)"
                   if net.classifier else f", {net.outputs} outputs" if net.outputs > 1 else ""))

    text = on_root(comm, work)
    if comm.rank == 0:
        print(text)


LANDSCAPE_NEURONS_SHOWN = 3  # tables printed by default; a readout's thousands would be thousands of lines


def cmd_landscape(args, comm) -> None:
    """Classify the splitting plateaus of a saved network on a data set (NumPy only, on rank 0)."""
    import json

    from flowfem import data, plateau
    from flowfem.network import Network

    def work():
        if args.json:
            check_writable(args.json, "--json file", args.force, (args.network, args.data), ".json")
        net = Network.load(args.network)
        ds = data.get(args.data, args.n, args.seed)
        _check_n_used(args)
        if ds.d != net.input_dim:
            raise ValueError(f"the data {args.data!r} have d = {ds.d} inputs but the network {args.network!r} "
                             f"takes d = {net.input_dim}; use data of the network's input dimension")
        if net.outputs > 1 or ds.outputs > 1:  # the splitting analysis (plateau.py) is of a scalar network
            what = f"the network {args.network!r}" if net.outputs > 1 else f"the data {args.data!r}"
            raise ValueError(f"landscape analyses a network of one output; {what} has "
                             f"{max(net.outputs, ds.outputs)} outputs: give a one-output network and data (column y)")
        if args.neuron is not None and not -net.width <= args.neuron < net.width:
            raise ValueError(f"--neuron {args.neuron} is out of range: the network has width {net.width}, "
                             f"so choose 0..{net.width - 1} (or -{net.width}..-1, counted from the last)")
        # a logistic network's landscape is of the logistic loss; --loss '' is refused as no loss
        loss = args.loss if args.loss is not None else net.loss or "squared"
        # --mu is checked (and its numbers read) by plateau_report, naming the option (main's command_line)
        report = plateau.plateau_report(net, ds.x, ds.y, args.mu, args.neuron, loss, args.gtol,
                                        check=args.check, progress=not args.quiet, polish=args.polish)
        report.update(network=args.network, data=args.data)
        if args.json:
            text = json.dumps(report, indent=1)
            with replacing(args.json) as tmp, open(tmp, "w") as f:
                f.write(text)
        text = plateau.format_report(report, None if args.all else LANDSCAPE_NEURONS_SHOWN)
        return text + (f"\nwrote {args.json}" if args.json else "")

    text = on_root(comm, work)
    if comm.rank == 0:
        print(text)


def cmd_compare(args, comm) -> None:
    """FE solve, FE readouts and particle solvers side by side: tables, figures, densities (flowfem.compare)."""
    from flowfem import compare

    def ints(name, text, example):  # an empty entry ("4,,8", "") is a typo, not nothing
        try:
            return [read_integer(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"{name} {text!r}: give comma-separated integers, e.g. {example}") from None

    def words(text):  # compare.compare refuses an empty list and repeats, naming the option (main's command_line)
        return [w.strip() for w in text.split(",") if w.strip()]

    if getattr(args, "loss", "squared") != "squared":
        raise ValueError(f"--loss {args.loss}: compare fits the squared loss (particles and FE alike); drop --loss")
    widths, seeds = ints("--widths", args.widths, "16,64,256"), ints("--seeds", args.seeds, "0,1,2")
    methods, readouts = words(args.methods), words(args.readout)
    train, test, scaling = _load_standardised(args, comm)
    result = compare.compare(
        train, test, widths=widths, seeds=seeds,
        methods=methods, lr={"gd": args.lr_gd, "adam": args.lr_adam}, steps=args.steps,
        time_limit=args.time_limit, weight_decay=args.weight_decay, init_scale=args.init_scale,
        activation=args.activation, domain=args.domain, mesh_size=args.mesh_size, radius=args.radius,
        alpha=args.alpha, kappa=args.kappa, weight=args.weight, degree=args.degree, readouts=readouts,
        density_method="lumped" if args.density_width is None else "kernel", density_width=args.density_width,
        mmd_bandwidth=args.mmd_bandwidth, data_name=args.data, comm=comm, progress=not args.quiet)
    _record_chart_radius(args, result.result.problem.space)
    result.settings.update(provenance.record(args, comm, *args.mesh_options),
                           quadrature_degree=result.result.functional.Phi.quadrature.degree)
    if scaling is not None:
        result.settings.update(input_scaling=scaling.record())
    result.write(args.out, comm, args.force, plot=not args.no_plot)
    if comm.rank == 0:
        print(result.markdown())
        files = list(compare.FILES) + ([] if args.no_plot else list(compare.FIGURES))
        print(f"wrote {args.out}/: " + ", ".join(files))


def _add_output_directory_arguments(g, no_plot_help: str) -> None:
    """--out DIR (written atomically), --force and --no-plot: the same for solve, flow and compare."""
    g.add_argument("--out", required=True, help="output directory (created; written atomically)")
    g.add_argument("--force", action="store_true", help="replace an existing output directory")
    g.add_argument("--no-plot", action="store_true", help=no_plot_help)


QUIET_HELP = ("no progress bar (one shows on standard error only on a terminal, on rank 0; under mpirun "
              "with FLOWFEM_PROGRESS=1; FLOWFEM_PROGRESS=0 turns bars off everywhere)")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="flowfem",
        description="Train shallow networks f(x) = integral sigma(w.x + b) u(w, b) d(w, b) by finite elements "
                    "on parameter space: minimise E_alpha(u) = mean loss + alpha/2 ||u||^2_{H^1_omega}. "
                    "Run under mpirun -n P for P ranks.",
    )
    top.add_argument("--version", action=_Version,
                     help="print flowfem's, dolfinx's, PETSc's and Python's versions and exit")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("solve", help="the optimal density: one linear solve of the Euler-Lagrange equation",
                       description="Minimise E_alpha with one solve of (alpha A + Phi^T Phi / n) U = Phi^T y / n "
                                   "and write the density (ParaView and NumPy), predictions, metrics and a figure.")
    _add_problem_arguments(p, auto_alpha=True, sharded=True)
    g = p.add_argument_group("solver and output")
    g.add_argument("--solver", default="cg", choices=["cg", "direct"],
                   help="cg: matrix-free CG (any size); direct: MUMPS + Woodbury (small problems) "
                        "(default: %(default)s)")
    g.add_argument("--preconditioner", default="nystrom", choices=["nystrom", "gamg"],
                   help="of cg: nystrom (GAMG on A plus a low-rank basis of the data term: iterations do not grow "
                        "as alpha falls) or gamg (GAMG on alpha A alone) (default: %(default)s)")
    g.add_argument("--rtol", type=_tolerance("--rtol", "1e-10"), default=1e-10,
                   help="relative residual ||b - K U|| / ||b|| the solve must reach, checked after it ends "
                        "(default: %(default)g)")
    g.add_argument("--allow-unconverged", action="store_true",
                   help="keep a result whose residual stays above --rtol, marked converged: false in "
                        "metrics.json (default: such a solve fails with exit status 2)")
    g.add_argument("--loss", default="squared", choices=["squared", "logistic", "softmax"],
                   help="squared: one linear solve; logistic (labels -1/+1): Newton (SNES) whose steps use the "
                        "same linear solver, stopping at ||dE|| <= rtol ||dE(0)|| (default: %(default)s); softmax "
                        "(C classes, any C distinct labels; --solver cg only): one density per class, "
                        "cross-entropy minimised by Newton with CG; metrics.json gets accuracy, mean "
                        "cross-entropy and the confusion matrix")
    g.add_argument("--petsc-option", action="append", metavar="KEY=VALUE",
                   help="extra PETSc option for the solver, e.g. ksp_monitor= or pc_gamg_threshold=0.02 (repeatable; "
                        "default: none)")
    g.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    _add_output_directory_arguments(g, "skip figure.png")
    p.set_defaults(run=cmd_solve)

    p = sub.add_parser("flow", help="the gradient flow of E_alpha in the L2 or H1 metric, with checkpoints",
                       description="Integrate g(du/dt, v) = -dE_alpha(u)[v] (g: L2_omega mass or the H1_omega "
                                   "metric) from an initial density; write the trajectory (XDMF time series: ParaView, VTK, "
                                   "meshio), the final density, an energy log (CSV/JSON) and a figure of the energy gap "
                                   "and the distance to u* against the contraction bound proven for the scheme run "
                                   "(implicit Euler: prod_k 1/(1 + tau_k alpha)). Errors are measured against the "
                                   "stationary solution.")
    _add_problem_arguments(p)
    g = p.add_argument_group("flow")
    g.add_argument("--loss", default="squared", choices=["squared", "logistic"],
                   help="squared, or logistic (labels -1/+1; each implicit step is a Newton solve) "
                        "(default: %(default)s)")
    g.add_argument("--metric", default="L2", choices=["L2", "H1"],
                   help="L2: weighted mass M_omega; H1: the Sobolev metric a_omega (default: %(default)s)")
    g.add_argument("--scheme", default="implicit_euler",
                   help="implicit_euler, crank_nicolson, theta:THETA (1/2..1), or bdf[:ORDER] (ORDER 1..6, default "
                        "2; steps chosen by the local error, see --ts-rtol, --fixed-steps) (default: %(default)s)")
    g.add_argument("--initial", default="zero",
                   help="zero; gaussian[:S[:A]], u = A exp(-|theta|^2 / (2 S^2)) with S its standard deviation in "
                        "parameter units and A its height (default S = 1, A = 1); density:PATH (a density.npz on "
                        "this mesh); network:PATH (a network .npz, projected onto the mesh) (default: %(default)s)")
    g.add_argument("--tau", type=_real, default=1.0, help="(first) time step, in flow time t (default: %(default)g)")
    g.add_argument("--growth", type=_real, default=1.0,
                   help="multiply the step by this after every step (geometric steps; 1: constant) "
                        "(default: %(default)g)")
    g.add_argument("--tau-max", type=_real, default=float("inf"),
                   help="largest time step, in flow time t (default: %(default)g, no limit)")
    g.add_argument("--t-end", type=_real, default=None, help="final flow time t (default: none, see --max-steps)")
    g.add_argument("--max-steps", type=_integer, default=1000, help="at most this many steps (default: %(default)s)")
    g.add_argument("--tol", type=_real, default=None,
                   help="stop when ||u - u*||_G <= tol ||u*||_G (u* the stationary solution) (default: none)")
    g.add_argument("--ts-rtol", type=_tolerance("--ts-rtol", "1e-4"), default=1e-4,
                   help="bdf: relative local error tolerance (default: %(default)g)")
    g.add_argument("--fixed-steps", action="store_true",
                   help="bdf: take the steps --tau, --growth, --tau-max instead of choosing them by the local error")
    g.add_argument("--no-reference", action="store_true",
                   help="skip the stationary solve: energy.csv's error and gap columns "
                        "(||u - u*|| / ||u*||, E_alpha - E_alpha(u*)) hold NaN")
    g = p.add_argument_group("solver, checkpoints and output")
    g.add_argument("--solver", default="cg", choices=["cg", "direct"],
                   help="linear solves of every step: cg (matrix-free CG) or direct (MUMPS + Woodbury, small "
                        "problems) (default: %(default)s)")
    g.add_argument("--preconditioner", default="nystrom", choices=["nystrom", "gamg"],
                   help="of cg: nystrom (GAMG plus a low-rank basis of the data term, rebuilt when the step's shift "
                        "changes by 4x) or gamg (GAMG alone) (default: %(default)s)")
    g.add_argument("--rtol", type=_tolerance("--rtol", "1e-12"), default=1e-12,
                   help="linear solves stop at rtol ||dE(0)|| at the latest; also the stationary solve's "
                        "tolerance (default: %(default)g)")
    g.add_argument("--step-rtol", type=_tolerance("--step-rtol", "1e-6"), default=1e-6,
                   help="each step's linear solves reduce its residual by this factor (default: %(default)g)")
    g.add_argument("--petsc-option", action="append", metavar="KEY=VALUE",
                   help="PETSc option: snes_* to Newton (e.g. snes_monitor=), others to the linear solver "
                        "(e.g. ksp_monitor=; repeatable; default: none)")
    g.add_argument("--checkpoint-every", type=_integer, default=None, metavar="K",
                   help="write a checkpoint every K steps (atomically; this run's last two are kept); Ctrl-C "
                        "writes one too (default: only at Ctrl-C)")
    g.add_argument("--checkpoint-dir", default=None,
                   help="where checkpoints go (default: OUT.checkpoints; with --resume, the directory resumed "
                        "from: the run continues its series there)")
    g.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the newest checkpoint of the latest run in DIR (or a checkpoint file); "
                        "same options as the run that wrote it (default: start at t = 0)")
    g.add_argument("--write-every", type=_integer, default=1,
                   help="trajectory frame every N steps (default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    _add_output_directory_arguments(g, "skip energy.png")
    p.set_defaults(run=cmd_flow)

    p = sub.add_parser("mesh", help="write a parameter-space mesh (.msh or .xdmf)",
                       description="Make a parameter mesh for networks on d inputs and write it with meshio.")
    p.add_argument("domain", choices=["box", "ball", "circle", "sphere"],
                   help="box [-R, R]^(d+1), ball |theta| <= R, circle S^1 or sphere S^2")
    p.add_argument("--d", type=_integer, default=None,
                   help="input dimension d (the mesh has dimension d + 1): 1 or 2 (box, ball; default 1), "
                        "1 (circle), 2 (sphere)")
    # any number here: which numbers a domain takes (whole cells >= 1 or >= 3, refinements >= 0, an element
    # size > 0) space.named_arrays checks, naming --size (main's command_line)
    p.add_argument("--size", type=_real, default=None,
                   help="cells per side (box, a positive integer, default 32), element size h in parameter units "
                        "(ball, > 0, default 0.25), arcs (circle, an integer >= 3, default 64) or refinements "
                        "(sphere, an integer >= 0, default 3)")
    p.add_argument("--radius", type=_positive_number, default=None,
                   help="half-width (box) or radius (ball) R > 0, in parameter units (default: 4); not with the "
                        "circle or sphere (radius 1)")
    p.add_argument("--geometry-degree", type=_integer, default=2, choices=[1, 2],
                   help="circle and sphere: 2 for curved cells, 1 for flat (default: %(default)s)")
    p.add_argument("--out", required=True, help="file to write: NAME.msh or NAME.xdmf")
    p.add_argument("--force", action="store_true", help="replace --out if flowfem wrote it (default: refuse)")
    p.set_defaults(run=cmd_mesh)

    p = sub.add_parser("readout", help="turn a solved density into a finite network (.npz)",
                       description="Read a finite network f_N(x) = sum a_i sigma(w_i . x + b_i) out of the density "
                                   "written by flowfem solve. Rules: quadrature (deterministic, O(1/N) with the "
                                   "midpoint rule in 2-D parameter space), sample (N neurons drawn from |u|, "
                                   "O(N^-1/2)), refit (output weights re-fitted by least squares on --data).")
    p.add_argument("--density", required=True, help="output directory of flowfem solve (or its density.npz)")
    p.add_argument("--rule", default="quadrature", choices=["quadrature", "sample", "refit"],
                   help="quadrature: one neuron per quadrature point of each cell, a_i = u(theta_i) times its "
                        "weight; sample: --width neurons drawn from |u|; refit: the neurons of --points with "
                        "output weights re-fitted by least squares on --data (default: %(default)s)")
    p.add_argument("--width", type=_integer, default=None,
                   help="N for sample (and refit with --points sample) (default: none, required there)")
    p.add_argument("--degree", type=_integer, default=None,
                   help="quadrature degree per cell (1 = midpoint: one neuron per cell) (default: the solve's rule)")
    p.add_argument("--subdivisions", type=_integer, default=1,
                   help="split each cell into m^D subcells (D the mesh dimension) for more neurons "
                        "(default: %(default)s)")
    p.add_argument("--points", default="quadrature", choices=["quadrature", "sample"],
                   help="refit: where its neurons come from, the quadrature or the sample rule (default: %(default)s)")
    p.add_argument("--seed", type=_integer, default=0,
                   help="seed of the sample rule (default: %(default)s); refit's training rows are the solve's "
                        "own split of --data, as its density records it")
    p.add_argument("--data", default=None,
                   help="training data for refit: the solve's --data, a file or sin/step/two_moons (default: none, "
                        "required there)")
    p.add_argument("--n", type=_integer, default=None,
                   help="points of synthetic --data for refit with a density that does not record them (older "
                        "files; default: 1000); refused where it sizes nothing")
    p.set_defaults(n_default=1000)
    p.add_argument("--test-data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--alpha", type=_real, default=None,
                   help="refit regularisation >= 0, 0: plain least squares (default: the solve's alpha)")
    p.add_argument("--out", required=True,
                   help="network file to write (.npz: arrays W, b, a, activation, and as recorded loss, classes, "
                        "input_mean, input_scale)")
    p.add_argument("--force", action="store_true", help="replace --out if flowfem wrote it (default: refuse)")
    p.set_defaults(run=cmd_readout)

    p = sub.add_parser("predict", help="evaluate a saved network on inputs (no dolfinx needed)",
                       description="Evaluate a network .npz (from flowfem readout or Network.save) at the rows of "
                                   "a CSV (header naming columns x1..xd in any order, and y for an RMSE) or NPZ (x[, y]) file, "
                                   "or a synthetic set.")
    p.add_argument("--network", required=True, help="network .npz (flowfem readout, Network.save)")
    p.add_argument("--data", required=True,
                   help="inputs: a CSV, NPZ, .npy or HDF5 file, sin/step/two_moons, or a real data set (diabetes1, "
                        "engel, ...) in its own units")
    _add_n_argument(p, p, 1000, "a synthetic set")
    p.add_argument("--seed", type=_integer, default=0, help="seed of a synthetic set (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="CSV to write (columns x1..xd,f; f1..fm for m outputs; x1..xd,label for a classifier); "
                        "default: standard output")
    p.add_argument("--proba", action="store_true",
                   help="a classifier (from flowfem solve --loss softmax): also the class probabilities, one column "
                        "p_LABEL per class label, in the order of the network's classes (default: the labels only)")
    p.add_argument("--force", action="store_true", help="replace --out if flowfem wrote it (default: refuse)")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("convert", help="stream a data file (a CSV of any size) into .npy, .npz or .h5 for large data",
                       description="Read IN (CSV with a header naming x1..xd and y or y1..ym, or .npz, .npy, .h5) "
                                   "--chunk rows at a time, in constant memory, with the checks of every data file, "
                                   "and write OUT, whose suffix chooses the format: .npy (recommended for large data: "
                                   "one structured array with float64 fields x1..xd, y; under mpirun each rank "
                                   "reads only its rows), .npz (uncompressed arrays x, y) or .h5/.hdf5 (datasets x, "
                                   "y). OUT is written whole or not at all; it reads back as the same numbers.")
    p.add_argument("source", metavar="IN", help="data file to read: .csv, .npz, .npy, .h5 or .hdf5")
    p.add_argument("target", metavar="OUT",
                   help="file to write: NAME.npy (recommended), NAME.npz, NAME.h5 or NAME.hdf5")
    p.add_argument("--chunk", type=_positive_integer, default=100_000,  # convert.CHUNK_ROWS (not imported for --help)
                   help="rows read and written at a time: memory grows with it, about 250 bytes a row of a "
                        "50-character CSV line (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace OUT if flowfem wrote it (default: refuse)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("export", help="write a saved network as ONNX, safetensors or a PyTorch .pt state dict",
                       description="Write a network .npz (from flowfem readout or Network.save) as the float64 "
                                   "two-layer perceptron nn.Sequential(nn.Linear(d, N), activation, nn.Linear(N, m)) "
                                   "of m outputs (1; or the C logits of a classifier, without softmax): "
                                   "onnx (graph x (batch, d) -> f (batch, m), runs in onnxruntime), safetensors "
                                   "(tensors 0.weight, 0.bias, 2.weight, 2.bias; the activation in the metadata) or "
                                   "torch (a .pt state dict for load_state_dict; needs PyTorch).")
    p.add_argument("--network", required=True, help="network .npz (flowfem readout, Network.save)")
    p.add_argument("--format", required=True, choices=["onnx", "safetensors", "torch"], help="file format")
    p.add_argument("--out", default=None,
                   help="file to write (default: the --network path with suffix .onnx, .safetensors or .pt)")
    p.add_argument("--force", action="store_true", help="replace --out if flowfem wrote it (default: refuse)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("landscape", help="classify the splitting plateaus of a saved network (NumPy only)",
                       description="Split neuron i of a network into two copies with output weights mu a_i and "
                                   "(1 - mu) a_i: the same function for every mu. If the network is a strict local "
                                   "minimum of L = mean loss (no weight decay), each mu is a minimum or a saddle of "
                                   "the wider network according to mu (1 - mu) H, H the inner Hessian of neuron i. "
                                   "Prints H's eigenvalues, the stationarity check and, per mu, the kind and the "
                                   "escape direction of saddles.")
    p.add_argument("--network", required=True, help="network .npz (Network.save, flowfem readout)")
    p.add_argument("--data", required=True, help="a CSV (header naming x1..xd and y), NPZ (x, y), .npy or HDF5 "
                   "file, sin/step/two_moons, or a real data set (engel, ...)")
    _add_n_argument(p, p, 200, "a synthetic set")
    p.add_argument("--seed", type=_integer, default=0, help="seed of a synthetic set (default: %(default)s)")
    p.add_argument("--neuron", type=_integer, default=None,
                   help="the neuron to split, 0..width-1 (default: each in turn)")
    p.add_argument("--mu", default="-1,0,0.25,0.5,0.75,1,2",
                   help="comma-separated output-weight fractions; write --mu=-1,... when the first is negative "
                        "(default: %(default)s)")
    p.add_argument("--loss", default=None,
                   help="squared or logistic (labels -1/+1) (default: the loss the network file records, else squared)")
    p.add_argument("--gtol", type=_real, default=1e-8,
                   help="stationarity tolerance on |grad L| (default: %(default)g)")
    p.add_argument("--polish", action="store_true", help="minimise the network by Newton's method first")
    p.add_argument("--check", action="store_true",
                   help="also classify by the eigenvalues of the split network's full Hessian")
    p.add_argument("--all", action="store_true",
                   help=f"print the table of every neuron (default: counts per kind over all neurons and the "
                        f"tables of the first {LANDSCAPE_NEURONS_SHOWN})")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file (default: none)")
    p.add_argument("--force", action="store_true", help="replace the --json file if flowfem wrote it (default: refuse)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=cmd_landscape)
    p = sub.add_parser("compare", help="FE solve and readouts against particle solvers (GD, Adam): table, figures",
                       description="For one data set: the FE solve, FE readouts at several widths N and the particle "
                                   "solvers at the same widths and several seeds; writes table.md, table.csv, "
                                   "runs.csv, curves.csv, results.json, densities.bp (ParaView: the FE density next "
                                   "to the projected particle densities) and figures. Squared loss.")
    _add_problem_arguments(p)
    g = p.add_argument_group("comparison")
    g.add_argument("--widths", default="16,64,256", help="widths N, comma-separated (default: %(default)s)")
    g.add_argument("--seeds", default="0,1,2",
                   help="seeds of the particle runs and sampled readouts (default: %(default)s)")
    g.add_argument("--methods", default="gd,adam", help="particle solvers: gd, adam (default: %(default)s)")
    g.add_argument("--steps", type=_integer, default=1000, help="particle steps per run (default: %(default)s)")
    g.add_argument("--lr-gd", type=_real, default=1.0, help="GD step size in mean-field time (default: %(default)g)")
    g.add_argument("--lr-adam", type=_real, default=0.03,
                   help="Adam step size, in parameter units per step (Adam divides by the gradient's running RMS) "
                        "(default: %(default)g)")
    g.add_argument("--weight-decay", type=_real, default=0.0,
                   help="particle weight decay lam (default: %(default)g)")
    g.add_argument("--init-scale", type=_real, default=1.0,
                   help="particles start i.i.d. N(0, s^2), s in parameter units (default: %(default)g)")
    g.add_argument("--time-limit", type=_real, default=None,
                   help="wall-clock seconds per particle run (default: none)")
    g.add_argument("--readout", default="quadrature,refit",
                   help="FE readout rules at width N: quadrature (FE solve on ~N cells, midpoint rule), sample, "
                        "refit (default: %(default)s)")
    g.add_argument("--density-width", type=_real, default=None,
                   help="smooth the particle densities with a kernel of this standard deviation, in parameter "
                        "units (default: lumped L2 projection, no extra smoothing)")
    g.add_argument("--mmd-bandwidth", type=_real, default=None,
                   help="Gaussian kernel bandwidth of the MMD, in parameter units (default: a tenth of the "
                        "diagonal of the bounding box of the mesh's nodes as neurons; on s3 the points of S^3 in R^4)")
    _add_output_directory_arguments(g, "skip the figures")
    g.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=cmd_compare)

    top.commands = sub.choices  # for the closest option to a misspelt one (_Parser.parse_args)
    for command in (top, *sub.choices.values()):  # a flag is off unless given: its help says so, as others do
        for action in command._actions:
            if isinstance(action, argparse._StoreTrueAction) and "default" not in action.help:
                action.help += " (default: off)"
    return top


# the options that give API arguments of another name (flowfem.arguments.command_line): a domain's size is
# --mesh-size (--size of flowfem mesh), compare's readouts --readout and each readout's width one of --widths,
# landscape's mus --mu, the path an exported network is written to --out
OPTIONS = {"solve": dict(size="--mesh-size", alphas="--alphas"), "flow": dict(size="--mesh-size"),
           "compare": dict(size="--mesh-size", readouts="--readout", width="--widths"), "landscape": dict(mus="--mu"),
           "export": dict(path="--out")}


def main(argv: list[str] | None = None) -> int:
    """The flowfem command: 0 done, 2 an error (one line), 130 Ctrl-C, 141 standard output closed by its
    reader (``flowfem predict ... | head``: nothing more to say, as cat stops; under mpirun the pipe is
    mpirun's, which ends with the same status)."""
    try:
        try:
            return _run(argv)
        finally:  # output to a pipe is buffered: written here, where a closed pipe is taken, not at exit (120)
            sys.stdout.flush()
    except BrokenPipeError:  # any print of any rank-0 step, or the CSV on stdout (flowfem.mpi.on_root)
        return end_on_closed_stdout(MPI.COMM_WORLD, "flowfem")


def _run(argv: list[str] | None) -> int:
    comm = MPI.COMM_WORLD
    args = parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if hasattr(args, "n_default"):  # --n is None unless given: a given --n that sizes nothing is refused
        args.n_given, args.n = args.n is not None, args.n_default if args.n is None else args.n
    if getattr(args, "out", None):  # once, for every message and file name: "out/" is "out"
        args.out = os.path.normpath(args.out)
    loading = signal.getsignal(signal.SIGINT) is interrupted_while_loading  # (set by flowfem/__init__.py)
    try:
        if loading:  # from here Ctrl-C is KeyboardInterrupt, which the handlers below (and a flow's steps) take
            signal.signal(signal.SIGINT, signal.default_int_handler)
        # under mpirun Ctrl-C stops every rank at one point (mpi.CollectiveInterrupt), none left in a collective
        # messages name options (--width N), not arguments (width=N); OPTIONS: where they differ
        with command_line(**OPTIONS.get(args.command, {})), CollectiveInterrupt(comm):
            if hasattr(args, "radius"):  # before any work: mesh options the domain would ignore are refused
                args.mesh_options = _domain_options(args)
            if args.command in ("solve", "flow", "compare"):
                from flowfem import outputs

                # claim --out before the work: a second run on the same directory fails now, not after it
                with outputs.reserve(args.out, comm, args.force):
                    args.run(args, comm)
            else:
                args.run(args, comm)
    except Interrupted as e:
        if comm.rank == 0:
            print(f"flowfem: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside a flow's steps, or a second Ctrl-C
        # one line; a rank left waiting in a collective (a second Ctrl-C) is aborted with the same status
        fail_together(comm, "flowfem: interrupted", status=130)
        return 130
    except BrokenPipeError:  # not an error of the command's: main ends quietly on it
        raise
    except Exception as e:  # noqa: BLE001  (any error: one line, status 2, every rank ends)
        line = (traceback.format_exc().rstrip() if os.environ.get("FLOWFEM_DEBUG")
                else f"flowfem: error: {message(e)}")
        fail_together(comm, line)  # rank 0 says it once if every rank failed; else aborts them all
        if getattr(sys.modules.get("flowfem.io"), "FAILED_WRITERS", None):
            exit_now(2)  # a failed ADIOS2 writer would abort the process when destroyed at exit
        return 2
    finally:
        if loading:  # a Ctrl-C while the process ends is one line too
            signal.signal(signal.SIGINT, interrupted_while_loading)
    return 0


if __name__ == "__main__":
    sys.exit(main())
