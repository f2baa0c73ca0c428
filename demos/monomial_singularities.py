# # Singular points of polynomial networks
#
# A fully connected network with the monomial activation sigma(z) = z^k,
#
#     f(x) = W^L (W^{L-1} ( ... (W^1 x)^k ... )^k)    (optionally with biases),
#
# is a polynomial map of degree k^(L-1) in x. The map from the parameters p
# to the function f is the *parametrisation*; its image is the
# neuromanifold. A parameter is *critical* (singular) for the
# parametrisation when the Jacobian of p -> f has less than its generic
# rank: there the neuromanifold may have a singularity, and gradient flows
# on p see the function space through a degenerate lens.
#
# Two facts this demo measures, with `flowfem.jacobian_rank`:
#
# * every hidden neuron carries a scaling symmetry (incoming weights times
#   c, outgoing times c^-k), so the generic rank is at most
#   P - (number of hidden neurons), and at most the dimension of the space
#   of output polynomials; for large k it *equals* that bound;
# * for large k the rank-deficient points are exactly the *subnetworks*: a
#   neuron with zero outgoing weights, a neuron with zero incoming weights,
#   two neurons with the same (or rescaled) incoming weights. Linear
#   networks (k = 1) and small k are different: the network already fills
#   the (small) space of polynomials of degree k^(L-1), its rank is far below
#   P - hidden, and planting a subnetwork may cost nothing.
#
# The Jacobian is the derivative of the outputs at m = 3P generic sample
# points (analytic back-propagation, no finite differences); its rank is the
# number of singular values above 1e-10 of the largest, after scaling rows
# and columns to unit norm. The columns `kept` and `dropped` show the
# smallest counted and largest discarded relative singular value, so the
# gap that decides the rank is on the table. For small sizes the same
# Jacobian is also formed in exact rational arithmetic and its rank
# computed exactly (`exact`).
#
# Run it with `python demos/monomial_singularities.py` (or under
# `mpirun -n P`, which splits the configurations over the ranks; rank 0
# prints the table); with the environment variable CI set it runs a small
# version in well under a second.

# +
import os

from flowfem import jacobian_rank, progress
from mpi4py import MPI

# -

# ## The configurations
#
# Widths list the input dimension, the hidden widths and the output
# dimension. The full run covers one and two hidden layers, scalar and
# vector outputs, degrees 1 to 5, with and without biases.

# +
FULL = {
    "widths": [[2, 2, 1], [2, 3, 1], [3, 3, 1], [2, 3, 2], [2, 2, 2, 1], [2, 3, 3, 1]],
    "ks": [1, 2, 3, 4, 5],
    "biases": [False, True],
}
SMALL = {"widths": [[2, 2, 1], [2, 2, 2, 1]], "ks": [1, 3], "biases": [False]}


def exact_is_cheap(widths, k, bias):
    """Exact rational rank only where the polynomials are small."""
    return jacobian_rank.n_parameters(widths, bias) * k ** (len(widths) - 2) <= 60
# -

# ## One scan
#
# `scan_singularities` draws random parameters (rows on the unit sphere,
# kept away from near-duplicates so that random means generic), plants the
# subnetworks in a copy of a random point and adds two special points that
# are *not* subnetworks in general: a neuron rescaled onto another one
# (which, for a homogeneous activation, is a duplicate in disguise) and a
# single zero weight (which should change nothing).

# +
def scan(widths, k, bias, seed):
    """Rows of the table for one architecture and degree."""
    rows = jacobian_rank.scan_singularities(widths, k, bias=bias, n_random=3, rng=seed,
                                            exact=exact_is_cheap(widths, k, bias))
    return [
        {
            "widths": list(widths), "k": k, "bias": bias, "point": r.point, "rank": r.rank,
            "generic": r.generic_rank, "expected": r.expected_rank, "P": r.n_params,
            "exact": r.exact, "kept": r.kept, "dropped": r.dropped, "deficient": r.deficient,
        }
        for r in rows
    ]
# -

# ## The table

# +
def format_table(rows):
    """A fixed-width table, one line per scanned point."""
    head = (f"{'widths':<13}{'k':>2} {'bias':<6}{'point':<20}{'rank':>5}{'generic':>8}"
            f"{'expected':>9}{'P':>4}{'exact':>6}{'kept':>9}{'dropped':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        exact = "-" if r["exact"] is None else str(r["exact"])
        flag = "  deficient" if r["deficient"] else ""
        lines.append(
            f"{str(r['widths']):<13}{r['k']:>2} {str(r['bias']):<6}{r['point']:<20}{r['rank']:>5}"
            f"{r['generic']:>8}{r['expected']:>9}{r['P']:>4}{exact:>6}"
            f"{r['kept']:>9.1e}{r['dropped']:>9.1e}{flag}"
        )
    return "\n".join(lines)


def main(widths=None, ks=None, biases=None, seed=0, verbose=True, comm=MPI.COMM_WORLD):
    """Scan every (widths, k, bias), rank r taking every P-th configuration from the r-th (each scan
    is NumPy on one process, seeded by ``seed`` alone: the rows do not depend on P); rank 0 prints
    the table; every rank returns all the rows (dicts), in the order of the configurations."""
    config = SMALL if os.environ.get("CI") else FULL
    widths = config["widths"] if widths is None else widths
    ks = config["ks"] if ks is None else ks
    biases = config["biases"] if biases is None else biases
    configs = [(w, k, bias) for w in widths for k in ks for bias in biases]
    mine = configs[comm.rank::comm.size]
    # rank 0's share stands for the whole run's progress (shares differ by at most one configuration)
    done = [scan(w, k, bias, seed) for w, k, bias in progress.bar(iterable=mine, desc="scan", unit="config")]
    shares = comm.allgather(done)
    rows = [row for i in range(len(configs)) for row in shares[i % comm.size][i // comm.size]]
    if verbose and comm.rank == 0:
        print(format_table(rows))
        summarise(rows)
    return rows
# -

# ## What to read in it
#
# For every architecture and degree: does a random point reach the expected
# rank, is that rank P - hidden (the parametrisation is as injective as
# its symmetries allow) or the dimension of the polynomial space (the network
# fills it), and are all planted subnetworks rank-deficient? For k = 1 the
# rank is far below P - hidden (a linear network has a large symmetry group)
# and subnetworks cost nothing; as k grows the expected rank becomes
# P - hidden and every planted subnetwork loses rank, which is the statement
# that for large k the singular points are the subnetworks. Small k can also
# be *defective*: generic rank below the expected one (k = 2 with biases and
# two hidden layers). A wrong tolerance would show as numerical and exact
# ranks disagreeing.

# +
SUBNETWORKS = ("zero outgoing", "zero incoming", "duplicate", "rescaled duplicate")


def summarise(rows):
    """One line per (widths, k, bias): generic vs expected rank, subnetworks deficient or not."""
    print()
    keys = sorted({(str(r["widths"]), r["k"], r["bias"]) for r in rows}, key=str)
    for key in keys:
        group = [r for r in rows if (str(r["widths"]), r["k"], r["bias"]) == key]
        sub = [r["deficient"] for r in group if r["point"] in SUBNETWORKS]
        exact_ok = all(r["exact"] in (None, r["rank"]) for r in group)
        widths = group[0]["widths"]
        symmetric = jacobian_rank.n_parameters(widths, key[2]) - sum(widths[1:-1])
        print(f"{key[0]:<13} k={key[1]} bias={str(key[2]):<5}: generic rank {group[0]['generic']:>2} "
              f"(expected {group[0]['expected']:>2}, P - hidden {symmetric:>2}), "
              f"subnetworks deficient {sum(sub)}/{len(sub)}"
              + ("" if exact_ok else "   numerical and exact ranks DISAGREE"))


if __name__ == "__main__":
    main()
# -
