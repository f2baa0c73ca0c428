"""Progress bars of long runs (tqdm), under one rule for every caller.

A bar is shown on standard error only

* when the caller asks for one (the API's ``progress=True``; the ``flowfem``
  commands ask unless ``--quiet``),
* on rank 0 of ``MPI.COMM_WORLD``: every other rank gets a disabled bar,
  which writes nothing (so a sub-communicator's rank 0 shows none either),
* and when standard error is a terminal (tqdm's ``disable=None``), unless
  the environment variable ``FLOWFEM_PROGRESS`` decides: ``0`` turns every
  bar off, ``1`` shows them also when standard error is not a terminal.
  Under mpirun the ranks write to pipes that mpirun forwards, so there the
  bars need ``FLOWFEM_PROGRESS=1``.

Work a bar needs beyond its own updates (a PETSc KSP or SNES monitor) is
installed only where ``not bar.disable``, so a run without a bar pays
nothing for it.
"""

from __future__ import annotations

import os
import sys

from mpi4py import MPI
from tqdm import tqdm

VARIABLE = "FLOWFEM_PROGRESS"


def requested(show: bool = True) -> bool | None:
    """Whether this process shows bars: False (not asked, not rank 0, or FLOWFEM_PROGRESS=0), True
    (FLOWFEM_PROGRESS=1) or None (if standard error is a terminal, tqdm's rule). ValueError for any
    other value of FLOWFEM_PROGRESS."""
    if not show:
        return False
    setting = os.environ.get(VARIABLE, "").strip()
    if setting not in ("", "0", "1"):
        raise ValueError(f"{VARIABLE}={setting!r}: set it to 0 (no progress bars) or 1 (progress bars on "
                         "rank 0 also when standard error is not a terminal), or unset it")
    if MPI.COMM_WORLD.rank != 0 or setting == "0":
        return False
    return True if setting == "1" else None


def bar(show: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on standard error (keyword arguments as tqdm's: total, desc, unit, leave, ...), disabled
    unless :func:`requested` allows it; use it as a context manager so that it is closed."""
    show = requested(show)
    return tqdm(file=sys.stderr, disable=True if show is False else None if show is None else False,
                dynamic_ncols=True, **kwargs)
