# # flowfem against particle solvers: one solve versus gradient descent on the neurons
#
# A shallow ReLU network in mean-field scaling,
#
#     f(x) = (1/N) sum_i a_i relu(w_i x + b_i),
#
# is usually trained by gradient descent on the particles theta_i = (w_i, b_i)
# and a_i: a non-convex problem. Its particles form the measure
#
#     mu = sum_i (a_i / N) delta_(theta_i),     f(x) = integral relu(theta . x~) d mu,
#
# and flowfem replaces mu by a density u on the parameter plane, chosen as the
# minimiser of the convex functional
#
#     E_alpha(u) = 1/(2n) sum_j (f_u(x_j) - y_j)^2 + alpha/2 ||u||^2_{H^1},
#
# found with one linear solve. This demo puts the two side by side on
# y = sin(pi x):
#
# * the FE solve (the continuum network f_u*) and finite networks read out of
#   it at widths N (the midpoint rule of an FE solve on a mesh with about N
#   cells; and N neurons sampled from |u*| with their output weights refitted);
# * particle gradient descent (GD) and Adam at the same widths, several seeds;
# * the particles' measure projected onto the FE mesh next to u*.
#
# The two families minimise different objectives: the particles J = loss +
# lam/2 (1/N) sum |(w, b, a)|^2 (here lam = 0), flowfem E_alpha. The table
# reports both, each under its own name, and the test RMSE and the train loss,
# which mean the same for every row.
#
#     mpirun -n 2 python demos/compare_particles.py
#
# writes results/compare_particles/: table.md and table.csv (mean and spread
# over seeds), runs.csv (every run), curves.csv, results.json, the figures
# error_vs_width.png, error_vs_time.png, densities.png, and densities.bp
# (ParaView: open it with the ADIOS2 VTX reader; the FE density and each
# particle density are fields of the same mesh, to colour by in turn or to
# show in linked views). With the environment variable CI set it runs at a
# small size. On a terminal a progress bar shows which run of how many is
# going and each particle run's steps (under mpirun: with FLOWFEM_PROGRESS=1).

import sys

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import compare, data, outputs
from mpi4py import MPI


def main(n: int = 1000, widths=(16, 64, 256), seeds=(0, 1, 2), steps: int = 2000, cells: int = 32,
         alpha: float = 1e-5, out: str | None = "results/compare_particles", comm=MPI.COMM_WORLD) -> dict:
    # ## Data
    # n noise-free samples of sin(pi x), x uniform on [-1, 1], and a test set of
    # 1000 fresh samples. Every rank holds all of them.
    train = data.synthetic("sin", n, seed=0)
    test = data.synthetic("sin", 1000, seed=1)

    # ## The runs
    # The FE side: the box [-4, 4]^2 of neurons (w, b) with `cells` cells per
    # side, P1 elements, alpha, kappa = 1, uniform weight. The quadrature
    # readout at width N solves again on a box with about N triangles (2 m^2,
    # m = round(sqrt(N / 2))) and takes one neuron per cell: a network of width
    # about N that needs no training. The refit readout draws N neurons from |u*|
    # and refits their output weights by least squares.
    #
    # The particle side: N particles i.i.d. N(0, 1), full-batch GD (step 1 in
    # mean-field time) and Adam (step 0.03), `steps` steps each, one run per
    # seed. The neurons are split over the MPI ranks; the trajectory does not
    # depend on the number of ranks.
    result = compare.compare(
        train, test, widths=widths, seeds=seeds, methods=("gd", "adam"), lr={"gd": 1.0, "adam": 0.03},
        steps=steps, weight_decay=0.0, domain="box", mesh_size=cells, radius=4.0, alpha=alpha, kappa=1.0,
        readouts=("quadrature", "refit"), data_name="sin", comm=comm, progress=True)

    # ## The densities
    # For the largest width, each particle solver's measure is projected onto
    # the FE mesh by the mass-lumped L2 projection: u_k = sum_i c_i phi_k(theta_i)
    # / integral phi_k, which keeps the mass sum_i c_i and spreads each point
    # mass over the cells around it (no further than 2 h). Particles that left
    # the box are moved along their ray onto it with c_i scaled by 1/t (ReLU is
    # positively homogeneous: the network does not change). The projection's
    # network f_(u_h) reproduces the particles' up to that smoothing; the table
    # under the main one states the error on the test inputs next to its bound,
    # and the L2 and MMD distances between the particle densities and u*. They
    # are large: the particles concentrate on a few rays, u* spreads smoothly
    # over the whole box, and both represent nearly the same function, since a
    # ReLU network only sees the measure through its action on relu(theta . x~).
    table = result.table()
    summary = dict(
        fe_test_rmse=result.runs[0].test_rmse, fe_energy=result.runs[0].objective,
        fe_seconds=result.runs[0].seconds, ranks=comm.size, particles={}, readouts={},
        distances=result.distances)
    for row in table:
        if row["width"] is None:
            continue
        group = summary["particles" if row["solver"] == "particles" else "readouts"]
        g = group.setdefault(row["method"], dict(width=[], test_rmse_mean=[], test_rmse_std=[], train_loss_mean=[],
                                                 objective_mean=[], seconds_mean=[]))
        for key in g:
            g[key].append(row[key])
    if comm.rank == 0:
        print(result.markdown())
        print(f"FE solve: test RMSE {summary['fe_test_rmse']:.2e} in {summary['fe_seconds']:.2f} s "
              f"on {comm.size} rank(s)")
        for m, g in summary["particles"].items():
            print(f"{m:>4}: test RMSE " + ", ".join(f"N={N}: {e:.2e}" for N, e in zip(g["width"], g["test_rmse_mean"])))

    # ## Output
    if out is not None:
        result.write(out, comm, force=True)
        if comm.rank == 0:
            print(f"wrote {out}/ (" + ", ".join(compare.FILES + compare.FIGURES) + ")")
    return summary


if __name__ == "__main__":
    sys.exit(outputs.run_demo(main, "results/compare_particles",
                              quick=dict(n=200, widths=(8, 32), seeds=(0, 1), steps=100, cells=12)))
