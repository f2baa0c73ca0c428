"""flowfem: shallow networks trained as a convex problem on a mesh of parameter space.

Run as the flowfem command (``python -m flowfem``, ``python -m flowfem.cli``, the console script ``flowfem``),
Ctrl-C while the command loads (MPI, NumPy, PETSc: seconds) ends it with one line and exit status 130, as at any
later point, where :func:`flowfem.cli.main` takes it over; Python's default would print a traceback of the import
in progress. Imported by a program of the user's, flowfem leaves SIGINT alone.
"""

import os as _os
import signal as _signal
import sys as _sys


def interrupted_while_loading(signum, frame):
    """The SIGINT handler of the flowfem command until :func:`flowfem.cli.main` takes over: one line, exit 130.
    Under mpirun every rank gets the Ctrl-C before MPI can say which rank it is: the launcher's variable does
    (MPICH's PMI_RANK, Open MPI's OMPI_COMM_WORLD_RANK), and only rank 0 prints the line."""
    rank = _os.environ.get("PMI_RANK", _os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    if rank == "0":
        print("flowfem: interrupted", file=_sys.stderr, flush=True)
    raise SystemExit(130)  # 128 + SIGINT, as a shell reports an interrupted command


def _run_as_command() -> bool:
    """True if this process is the flowfem command: ``python -m flowfem[.MODULE]`` (Python imports the package
    with sys.argv[0] '-m' and keeps the command line in sys.orig_argv) or the console script ``flowfem``."""
    if _sys.argv[:1] == ["-m"]:
        words = getattr(_sys, "orig_argv", [])
        # only the interpreter's words name the module: they end with "-m MODULE" (or "-mMODULE", "-BmMODULE"),
        # and the program's own arguments after them (sys.argv[1:]) may hold a "-m flowfem" of their own
        words = words[:len(words) - (len(_sys.argv) - 1)]
        last = words[-1] if words else ""
        module = last.partition("m")[2] if last.startswith("-") else last
        return module.split(".")[0] == "flowfem"
    return bool(_sys.argv) and _os.path.basename(_sys.argv[0]) == "flowfem"


if _run_as_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, interrupted_while_loading)

from flowfem import mpi as _mpi  # noqa: F401,E402  (first: orders MPI before dolfinx and petsc4py)
