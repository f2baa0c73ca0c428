# # Regression in one dimension: the optimal density in one linear solve
#
# A shallow network on inputs x in R is
#
#     f(x) = sum_i a_i sigma(w_i x + b_i).
#
# flowfem replaces the finitely many neurons (w_i, b_i) by a *density* u on the
# parameter plane theta = (w, b),
#
#     f_u(x) = integral sigma(w x + b) u(w, b) d(w, b),
#
# and picks the density that minimises the convex functional
#
#     E_alpha(u) = 1/(2n) sum_j (f_u(x_j) - y_j)^2 + alpha/2 ||u||^2_{H^1_omega},
#     ||u||^2_{H^1_omega} = integral (kappa |grad u|^2 + u^2) omega d theta.
#
# Its Euler-Lagrange equation is linear in u. In weak form, for all v,
#
#     alpha a_omega(u, v) + (1/n) sum_j f_u(x_j) f_v(x_j) = (1/n) sum_j y_j f_v(x_j),
#
# the strong form being -alpha div(kappa omega grad u) + alpha omega u
# + (1/n) sum_j (f_u(x_j) - y_j) sigma(w x_j + b) = 0 with
# kappa omega du/dn = 0 on the boundary. With Lagrange elements it is one
# sparse-plus-low-rank linear system, solved by CG preconditioned with algebraic
# multigrid plus a low-rank (Nystrom) basis of the data term, in parallel:
#
#     mpirun -n 2 python demos/regression_1d.py
#
# The demo fits y = sin(pi x) on [-1, 1], prints E_alpha, the CG iterations
# and the test error, and writes a figure and ParaView files to
# results/regression_1d/. With the environment variable CI set it runs at a
# small size.

import os
import sys

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from flowfem import data, io, outputs
from flowfem.problem import Problem
from flowfem.space import Space
from mpi4py import MPI


def main(n: int = 5000, cells: int = 128, alpha: float = 1e-5, out: str | None = "results/regression_1d",
         comm=MPI.COMM_WORLD) -> dict:
    # ## Data
    # n noise-free samples of sin(pi x), x uniform on [-1, 1], and an
    # independent test sample. Every rank holds all data points.
    train = data.synthetic("sin", n, seed=0)
    test = data.synthetic("sin", 2000, seed=1)

    # ## Parameter space
    # Neurons theta = (w, b) in the square [-4, 4]^2, split into 2 * cells^2
    # triangles and distributed over the MPI ranks. Slopes up to 4 and
    # offsets up to 4 are enough for sin(pi x) on [-1, 1].
    space = Space.box(d=1, n=cells, radius=4.0, comm=comm)

    # ## The problem
    # ReLU neurons, uniform weight omega = 1, kappa = 1, P1 elements.
    # The data operator Phi (density -> predictions) is exact and matrix-free:
    # for ReLU on 1-D inputs a product with Phi^T Phi is a prefix sum over the
    # bins between the neurons' kinks -b/w of the data's moments in each bin,
    # so after one pass over the data it costs O(number of quadrature points).
    problem = Problem(space, activation="relu", weight="uniform", alpha=alpha, kappa=1.0, degree=1)

    # ## One solve
    result = problem.fit(train.x, train.y, solver="cg", rtol=1e-10, progress=True)
    # E_alpha, its parts, the solver's numbers are plain values of the result (safe to read on
    # one rank); the RMSEs evaluate the distributed density, so every rank computes them.
    metrics = io.solve_metrics(result, train, test)
    loss, reg = result.parts
    if comm.rank == 0:
        print(f"{problem.H.ndofs} dofs on {comm.size} rank(s), n = {n} data points")
        print(f"E_alpha = {metrics['energy']:.6e} (loss {loss:.3e}, regulariser {reg:.3e})")
        print(f"CG: {result.iterations} iterations, relative residual {result.residual:.1e}")
        print(f"test RMSE = {metrics['test_rmse']:.3e}")

    # ## Output
    # density.xdmf (+ density.h5) opens in ParaView (File > Open, an XDMF
    # reader) and in any VTK build; density.bp keeps the density at its own
    # degree for ParaView's ADIOS2 VTX reader; density.npz holds the dof
    # coordinates and values for NumPy; predictions.csv the test inputs,
    # targets and f_u; figure.png shows the density and the fit.
    if out is not None:
        with outputs.output_directory(out, comm, force=True) as tmp:
            io.write_solution(tmp, result, io.settings(result.functional), metrics, train, test)
        if comm.rank == 0:
            print(f"wrote {out}/ ({', '.join(sorted(f for f in os.listdir(out) if not f.startswith('.')))})")
    return metrics


if __name__ == "__main__":
    sys.exit(outputs.run_demo(main, "results/regression_1d", quick=dict(n=1000, cells=32)))
