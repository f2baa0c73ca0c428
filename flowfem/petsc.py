"""PETSc (petsc4py) as flowfem loads it: every flowfem module that uses PETSc imports it from here.

Importing petsc4py.PETSc initialises PETSc (PetscInitialize), which installs
its own signal handlers; its handler of SIGPIPE aborts the process ("Caught
signal number 13 Broken Pipe", then MPI_Abort, a lock of --out left behind)
when standard output is a pipe whose reader has gone (``flowfem solve ... |
head -1``). Python ignores SIGPIPE, so that such a write raises
BrokenPipeError, on which the command ends quietly with status 141
(:func:`flowfem.cli.main`). This module restores that, for SIGPIPE only:
PETSc keeps its handlers of the other signals. PETSc is loaded only by
commands that need it (``flowfem export`` and ``--help`` never load it).
"""

from __future__ import annotations

import signal
import threading

from flowfem import mpi  # noqa: F401  (first: loads MPI before petsc4py)

from petsc4py import PETSc  # noqa: E402

if threading.current_thread() is threading.main_thread():  # (signal.signal works in the main thread only)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

__all__ = ["PETSc"]
