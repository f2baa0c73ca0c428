"""What the benchmark scripts share (they run as scripts: ``python benchmarks/NAME.py``): the command
line, and the wall time and peak memory of a collective step, measured the same way by each."""

import argparse
import resource
import time

from mpi4py import MPI


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser showing the script's docstring, with ``--quick`` (small sizes, for a smoke test)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for a smoke test")
    return p


def peak_memory_mb(comm) -> float:
    """Peak resident set size of this process so far (MB, max over ranks); Linux reports kB."""
    return comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, op=MPI.MAX)


def timed(comm, f):
    """(f(), wall seconds), the seconds the max over ranks (a barrier first: all start together)."""
    comm.Barrier()
    t0 = time.perf_counter()
    out = f()
    return out, comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
