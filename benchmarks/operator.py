"""Benchmark: the exact data-operator products for relu with 2-D inputs, tree against dense.

    python benchmarks/operator.py            # about a minute
    python benchmarks/operator.py --quick    # small sizes, for a smoke test

S_jq = relu(theta_q . x~_j) for n data points x_j ~ U[-1, 1]^2 and the quadrature
points theta_q of flowfem's own parameter meshes: the sphere S^2 (P2, the
homogeneous case) and the 3-D box [-2, 2]^3 (P1). For each size it prints the
time to build the tree, the time of S g and S^T r with the tree
(:class:`flowfem.operator.ReluTreeFeatures`) and with blocks of sigma evaluated
on the fly (:class:`flowfem.operator.DenseFeatures`, the baseline, same process),
the stored entries of the tree's cut leaves against the n m of S, and the
largest difference between the two products relative to the largest entry of
the dense one. Serial: each rank applies S to its own quadrature points.
"""

import time

import numpy as np

import common
import flowfem  # noqa: F401  (first: loads MPI before dolfinx)
from mpi4py import MPI

from flowfem.activations import activation
from flowfem.operator import DataOperator, DenseFeatures, ReluTreeFeatures
from flowfem.sobolev import WeightedH1
from flowfem.space import Space


def best_time(f, repeats: int) -> float:
    """Best wall time of f() over the repeats (seconds)."""
    best = np.inf
    for _ in range(repeats):
        s = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - s)
    return best


def main(quick: bool = False):
    rng = np.random.default_rng(0)
    sigma = activation("relu")
    meshes = [("sphere", 2, 2), ("box", 4, 1)] if quick else [("sphere", 3, 2), ("sphere", 4, 2), ("sphere", 5, 2),
                                                              ("box", 8, 1), ("box", 16, 1)]
    sizes = (500,) if quick else (2000, 20000)
    print("flowfem data-operator benchmark: relu, x ~ U[-1,1]^2, serial; times are the best of 3 "
          "(of 1 for dense products over 1e8 entries)")
    print("")
    print("| mesh | points m | n | tree build s | tree S g ms | tree S^T r ms | dense S g ms | dense S^T r ms "
          "| speed-up (S g + S^T r) | stored / (n m) | max rel. difference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for domain, size, degree in meshes:
        space = (Space.sphere(size, comm=MPI.COMM_SELF) if domain == "sphere"
                 else Space.box(2, size, 2.0, comm=MPI.COMM_SELF))
        theta = DataOperator(WeightedH1(space, degree=degree), sigma, np.zeros((1, 2))).quadrature.theta
        m = theta.shape[0]
        for n in sizes:
            x = rng.uniform(-1, 1, (n, 2))
            g, r = rng.normal(size=m), rng.normal(size=n)
            build = time.perf_counter()
            tree = ReluTreeFeatures(sigma, x, theta)
            build = time.perf_counter() - build
            dense = DenseFeatures(sigma, x, theta)
            repeats = 3 if n * m < 1e8 else 1
            t = [best_time(lambda: tree.matvec(g), 3), best_time(lambda: tree.rmatvec(r), 3),
                 best_time(lambda: dense.matvec(g), repeats), best_time(lambda: dense.rmatvec(r), repeats)]
            fd, rd = dense.matvec(g), dense.rmatvec(r)
            diff = max(np.abs(tree.matvec(g) - fd).max() / np.abs(fd).max(),
                       np.abs(tree.rmatvec(r) - rd).max() / np.abs(rd).max())
            name = f"{domain} {'r=' if domain == 'sphere' else ''}{size}{'^3' if domain == 'box' else ''} P{degree}"
            print(f"| {name} | {m} | {n} | {build:.2f} | {t[0] * 1e3:.1f} | {t[1] * 1e3:.1f} | {t[2] * 1e3:.1f} | "
                  f"{t[3] * 1e3:.1f} | {(t[2] + t[3]) / (t[0] + t[1]):.0f}x | {tree.C.nnz / (n * m):.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main(common.parser(__doc__).parse_args().quick)
