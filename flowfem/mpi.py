"""MPI start-up and errors that end every rank.

Importing this module first loads ``dolfinx_solver`` when it is installed
(the PyPI wheel: it orders MPI ahead of dolfinx and petsc4py); with a conda
or Docker dolfinx it is absent and nothing needs ordering.

An error on one rank must end every rank, never hang:

* work that can fail differently on different ranks (reading files,
  meshing on rank 0) runs inside :func:`on_root`, which turns any
  ``Exception`` into the same :class:`CollectiveError` on every rank;
* an exception that reaches the top of a script run on more than one rank
  goes to :func:`end_every_rank` (installed as ``sys.excepthook``; the
  ``flowfem`` command calls :func:`fail_together` itself): one
  line on standard error and exit status 2 on every rank, if need be by
  ``MPI_Abort`` (MPICH's mpirun then exits with the abort code, 2, after
  its own line ``Abort(2) on node ...``). ``FLOWFEM_DEBUG=1`` prints the
  full traceback instead of the line.

Ctrl-C reaches every rank (mpirun passes it on), but a rank waiting inside
a collective (a KSP's dot product) takes it only when that returns: a rank
that left the collective on KeyboardInterrupt would leave the others
waiting. :class:`CollectiveInterrupt` turns SIGINT into KeyboardInterrupt
on every rank at the same point (:func:`on_root`, a linear solve's iteration, a
particle step of :func:`flowfem.particles.train`); rank 0 working alone inside :func:`on_root` stops
at once.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
import time
import traceback
from typing import Callable, NoReturn, TypeVar

try:
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass

from mpi4py import MPI

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
FAILURE_TAG = 30_411  # point-to-point tag of the end-of-run handshake: collective traffic never matches it
GRACE_SECONDS = 5.0  # how long a failed rank waits for the others to fail too before it aborts them


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


def message(e: BaseException) -> str:
    """One line for an exception: its text for a ValueError (flowfem's messages are written for the
    user), ``Type: text`` otherwise (a bare KeyError's text alone would be just the key). Terminal
    colour codes (ADIOS2 colours its exceptions) are removed: the line may go to a log file."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())
    if isinstance(e, ValueError) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def on_root(comm: MPI.Comm, fn: Callable[[], T], bcast: bool = True) -> T | None:
    """Run fn on rank 0; broadcast its result (or None if not bcast) or raise its error on every rank.

    Any ``Exception`` of fn becomes a :class:`CollectiveError` with the text of :func:`message`
    on every rank, except BrokenPipeError (a write to a pipe whose reader has gone, such as standard
    output piped into ``head``), which is raised as BrokenPipeError on every rank: the command ends
    quietly on it (:func:`flowfem.cli.main`) rather than reporting an error. SystemExit (an explicit
    request to end this process) is not caught. Inside a :class:`CollectiveInterrupt` it first
    raises KeyboardInterrupt on every rank if any rank had a Ctrl-C (:func:`check_interrupt`); a
    Ctrl-C during fn (work of rank 0 alone, no collective to leave) stops fn at once and raises
    KeyboardInterrupt on every rank. On one rank KeyboardInterrupt is not caught.
    """
    check_interrupt(comm)  # Ctrl-C: every rank stops here, none waits in the bcast below
    result, error, interrupted, closed = None, None, False, False
    if comm.rank == 0:
        active = CollectiveInterrupt.current
        if active is not None and MPI.Comm.Compare(comm, active.comm) == MPI.UNEQUAL:
            active = None
        if active is not None:
            active.alone = True  # fn is this rank's alone: a Ctrl-C ends it now, not after it
        try:
            result = fn()
        except KeyboardInterrupt:
            if comm.size == 1:
                raise
            interrupted = True  # the others, waiting below, hear of it
        except BrokenPipeError:  # not a failure of fn's work: the reader stopped reading
            closed = True
        except Exception as e:  # noqa: BLE001  (any failure: the other ranks wait for this rank)
            error = message(e)
        finally:  # on every way out: a Ctrl-C in a later collective must again only set the flag
            if active is not None:
                active.alone = False
    error, interrupted, closed = comm.bcast((error, interrupted, closed), root=0)
    if interrupted:
        raise KeyboardInterrupt
    if closed:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
    if error is not None:
        raise CollectiveError(error)
    return comm.bcast(result, root=0) if bcast else result


def on_every_rank(comm: MPI.Comm, fn: Callable[[], T]) -> T:
    """Run fn on every rank; if it raised on any, raise on every rank a :class:`CollectiveError` with
    the lowest such rank's :func:`message` (for checks of data that differ between the ranks, such as
    each rank's own rows: a rank that raised alone would leave the others waiting in the next
    collective). Exceptions other than ``Exception`` are not caught, as in :func:`on_root`."""
    check_interrupt(comm)
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001  (any failure: the other ranks must hear of it)
        error = message(e)
    errors = comm.allgather(error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise CollectiveError(first)
    return result


def exit_now(code: int) -> None:
    """End the process with ``code`` now: flush the streams, finalise MPI, skip the interpreter's
    clean-up (for objects whose destructors would abort it: :data:`flowfem.io.FAILED_WRITERS`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
    os._exit(code)


STDOUT_CLOSED = 141  # 128 + SIGPIPE: a shell's status of cat or mpirun ended by a closed pipe


def end_on_closed_stdout(comm: MPI.Comm, prog: str) -> int:
    """The end of a command (or demo) whose standard output's reader has gone (``... | head``): nothing more
    to say, as cat stops. Standard output is pointed at /dev/null (the interpreter's exit flushes it again,
    which would fail too, with status 120), every rank ends (:func:`fail_together`: a rank that stops here
    alone must not leave the others in a collective), and the status is STDOUT_CLOSED, 141."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if comm.size > 1:
        fail_together(comm, f"{prog}: standard output was closed", status=STDOUT_CLOSED)
    return STDOUT_CLOSED


def fail_together(comm: MPI.Comm, line: str, grace: float = GRACE_SECONDS, status: int = 2) -> None:
    """On a rank that failed: print ``line`` once; return only if every rank of comm failed.

    Every failed rank tells rank 0 by a point-to-point message (which cannot be mistaken for
    the collective that healthy ranks may be waiting in). If all ranks report within ``grace``
    seconds, rank 0 prints ``line``, releases the others and the function returns on every
    rank: the caller ends normally. Otherwise the rank prints ``line`` and calls
    ``comm.Abort(status)``: ranks that did not fail are blocked in a collective and would wait forever.
    """
    if comm.size == 1:
        _print(line)
        return
    deadline = time.monotonic() + grace
    if comm.rank == 0:
        failed = 1
        while failed < comm.size and time.monotonic() < deadline:
            if comm.iprobe(source=MPI.ANY_SOURCE, tag=FAILURE_TAG):
                comm.recv(source=MPI.ANY_SOURCE, tag=FAILURE_TAG)
                failed += 1
            else:
                time.sleep(0.01)
        _print(line)
        if failed < comm.size:
            _abort(comm, status)
        MPI.Request.Waitall([comm.isend(None, dest=r, tag=FAILURE_TAG) for r in range(1, comm.size)])
        return
    told = comm.isend(None, dest=0, tag=FAILURE_TAG)
    while time.monotonic() < deadline:
        if comm.iprobe(source=0, tag=FAILURE_TAG):
            comm.recv(source=0, tag=FAILURE_TAG)
            told.wait()
            return
        time.sleep(0.01)
    _print(line)
    _abort(comm, status)


def end_every_rank(exc_type, exc, tb) -> NoReturn:
    """sys.excepthook under more than one rank: one line (or the traceback if FLOWFEM_DEBUG=1) and
    exit status 2 on every rank, never a hang (with Python's own hook this rank would end and
    the others wait for it forever)."""
    if os.environ.get("FLOWFEM_DEBUG"):
        line = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip()
    else:
        line = (f"{message(exc)} [rank {MPI.COMM_WORLD.rank} of {MPI.COMM_WORLD.size}; "
                "FLOWFEM_DEBUG=1 shows the traceback]")
    fail_together(MPI.COMM_WORLD, line)
    sys.stdout.flush()
    MPI.Finalize()  # every rank is here: end as a normal MPI program with status 2
    os._exit(2)


class CollectiveInterrupt:
    """Ctrl-C under mpirun taken by every rank at the same point of a run.

    Inside ``with CollectiveInterrupt(comm):`` (the ``flowfem`` command's whole run) a first SIGINT
    only sets a flag; :func:`check_interrupt`, called collectively (by :func:`on_root`, as a KSP
    monitor in every linear solve), raises KeyboardInterrupt on every rank if any rank has it, and
    so does a normal exit from the block. A second SIGINT raises KeyboardInterrupt at once, and so
    does the first on rank 0 inside :func:`on_root`'s work (rank 0's alone), which tells the others. Active
    only on more than one rank, in the main thread, over Python's default SIGINT handler; a flow's
    :class:`flowfem.flow.driver.Interrupt` takes SIGINT over between its steps.
    """

    current: CollectiveInterrupt | None = None

    def __init__(self, comm: MPI.Comm):
        self.comm, self.requested, self.active = comm, False, False
        self.alone = False  # rank 0 inside on_root's fn: in no collective, so it can stop at once

    def _handle(self, signum, frame):
        if self.requested or self.alone:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        self.active = (self.comm.size > 1 and threading.current_thread() is threading.main_thread()
                       and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self.active:
            signal.signal(signal.SIGINT, self._handle)
            CollectiveInterrupt.current = self
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.active:
            return
        try:
            if exc_type is None:  # a SIGINT after the last check: still every rank together, while current
                check_interrupt(self.comm)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            CollectiveInterrupt.current = None


def check_interrupt(comm: MPI.Comm, *monitor_args) -> None:
    """Collective over comm: raise KeyboardInterrupt on every rank if a rank had SIGINT inside the
    active :class:`CollectiveInterrupt` (of comm's ranks); nothing if none is active. The trailing
    arguments are ignored: ``functools.partial(check_interrupt, comm)`` is a KSP monitor."""
    active = CollectiveInterrupt.current
    if active is None or MPI.Comm.Compare(comm, active.comm) == MPI.UNEQUAL:
        return
    if comm.allreduce(active.requested, op=MPI.LOR):
        raise KeyboardInterrupt


def _print(line: str) -> None:
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)


def _abort(comm: MPI.Comm, status: int = 2) -> NoReturn:
    sys.stdout.flush()
    time.sleep(0.2)  # let mpirun forward the line first: once seen lost (and MPICH's own) without a pause
    comm.Abort(status)


if MPI.COMM_WORLD.size > 1 and sys.excepthook is sys.__excepthook__:  # leave a hook the user installed
    sys.excepthook = end_every_rank
