"""MPI start-up and collective error handling.

Importing this module first loads ``dolfinx_solver`` when it is installed
(the PyPI wheel: it orders MPI ahead of dolfinx and petsc4py); with a conda
or Docker dolfinx it is absent and nothing needs ordering.

An error on one rank must end every rank, never hang: work that can fail
differently on different ranks runs inside :func:`on_root` or
:func:`agree`, which turn a failure anywhere into the same exception on
every rank.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

try:
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass

from mpi4py import MPI

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread_per_rank() -> None:
    """Under mpirun, one BLAS thread per rank unless the user set a thread count.

    P ranks with T BLAS threads each on P cores oversubscribe them, and
    OpenBLAS threads spin while they wait: measured under mpirun -n 2 on
    2 cores, a data-operator product with two dot products over 2e5 points
    took 14 ms instead of 2 ms.
    Libraries loaded from now on read the variables; threadpoolctl limits
    those already loaded (NumPy's, if it was imported first).
    """
    if MPI.COMM_WORLD.size == 1 or any(v in os.environ for v in THREAD_VARIABLES):
        return
    for v in THREAD_VARIABLES:
        os.environ[v] = "1"
    import threadpoolctl

    threadpoolctl.threadpool_limits(1)


one_blas_thread_per_rank()

T = TypeVar("T")


class CollectiveError(ValueError):
    """A failure on some rank, raised identically on every rank."""


def on_root(comm: MPI.Comm, fn: Callable[[], T], bcast: bool = True) -> T | None:
    """Run fn on rank 0; broadcast its result (or None if not bcast) or raise its error on every rank."""
    result, error = None, None
    if comm.rank == 0:
        try:
            result = fn()
        except (ValueError, OSError, KeyError, TypeError) as e:
            error = str(e)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise CollectiveError(error)
    return comm.bcast(result, root=0) if bcast else result


def agree(comm: MPI.Comm, fn: Callable[[], T]) -> T:
    """Run fn on every rank; if it fails on any, raise the first failing rank's error on all."""
    result, error = None, None
    try:
        result = fn()
    except (ValueError, OSError, KeyError, TypeError) as e:
        error = str(e)
    errors = comm.allgather(error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise CollectiveError(first)
    return result
