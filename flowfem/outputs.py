"""Output directories: claimed before the work, written whole, and never replacing what flowfem did not write.

A command that writes a directory (``solve``, ``flow``, ``compare``, the demos)
goes through three steps, all collective (rank 0 touches the file system, every
rank gets the same answer or the same error):

1. :func:`reserve` before the work starts: the target must be absent, an empty
   directory, or, with ``force``, a directory that flowfem wrote (below); a lock
   file ``.NAME.lock`` beside it (created with O_EXCL, holding host and pid) makes
   a second run on the same target fail at once instead of silently overwriting
   the first one's result. A lock left by a killed run on this host is taken over.
2. :func:`output_directory` yields a hidden temporary directory beside the target
   (with the user's umask, like any directory they create) for the files.
3. When the block has succeeded on every rank, the manifest ``.flowfem-output.json``
   (flowfem's version, the command line, the time, the files) is written into it,
   and it replaces the target by renames; on any error it is removed and the
   target is untouched. Single files written into it get no record of their own
   (:func:`flowfem.files.recorded_by_manifest`): the manifest is their record.

``force`` replaces only a directory whose manifest lists every entry in it: not
the current directory, not a directory of the user's files, not a flowfem output
to which the user added a file of their own. The working directory, and a directory
holding it, is never an output directory, empty or flowfem's: replacing it would leave
the user's shell in a deleted directory, where what it writes next is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager

from flowfem.mpi import end_on_closed_stdout, fail_together, message, on_root  # first: loads MPI before dolfinx

from flowfem.arguments import command_line, spell  # noqa: E402
from flowfem.files import reason, recorded_by_manifest  # noqa: E402

from mpi4py import MPI  # noqa: E402

MANIFEST = ".flowfem-output.json"
_reserved: set[str] = set()  # targets this process holds the lock of


def version() -> str:
    """flowfem's installed version."""
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        return _version("flowfem")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def _owned_by_flowfem(path: str) -> str | None:
    """None if ``path`` is a directory flowfem wrote (a manifest listing all its entries), else why not."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            listed = set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "has no flowfem manifest (" + MANIFEST + ")"
    foreign = sorted(set(os.listdir(path)) - listed - {MANIFEST})
    if foreign:
        return "holds files flowfem did not write: " + ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
    return None


def check_free(path: str | os.PathLike, force: bool = False) -> None:
    """Raise ValueError unless ``path`` may become an output directory (see the module docstring)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise ValueError(f"output {path!r} exists and is not a directory; choose another output directory")
    if os.listdir(path):
        if not force:
            raise ValueError(f"output directory {path!r} exists and is not empty; pass {spell('force')} to replace "
                             "an earlier flowfem output, or choose another output directory")
        why = _owned_by_flowfem(path)
        if why is not None:
            raise ValueError(f"{spell('force')} replaces only a directory that flowfem wrote; {path!r} {why}: "
                             "choose another output directory")
    here = os.getcwd()
    if os.path.commonpath([path, here]) == path:  # ('.' and '' are it) an empty one was renamed away and deleted
        raise ValueError(f"output directory {path!r} is the working directory" + (" or holds it" if path != here
                         else "") + ": replacing it would leave this shell in a deleted directory; choose a new "
                         "directory, e.g. results")


def _lock_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".lock")


def _temporary_prefix(path: str) -> str:
    """Hidden temporary directories beside ``path`` carry the writer's pid: a later run removes those
    of dead processes (an aborted run under mpirun cannot clean up after itself)."""
    return f".{os.path.basename(path)}.{os.getpid()}."


def _remove_stale_temporaries(path: str) -> None:
    prefix = "." + os.path.basename(path) + "."
    directory = os.path.dirname(path)
    for entry in os.listdir(directory):
        pid = entry[len(prefix):].split(".", 1)[0] if entry.startswith(prefix) else ""
        if pid.isdigit() and not _alive(int(pid)) and os.path.isdir(os.path.join(directory, entry)):
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _acquire_or_explain(path: str, force: bool) -> str:
    """:func:`_acquire`, with a file system's refusal (no permission, a file where a directory
    belongs) as a ValueError naming ``path``."""
    try:
        return _acquire(path, force)
    except OSError as e:
        raise ValueError(f"cannot create output directory {path!r}: {reason(e)} ({e.filename})") from None


def _acquire(path: str, force: bool) -> str:
    """Create the lock file beside ``path`` (taking over one left by a dead process on this host), then check."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = _lock_path(path)
    me = f"{socket.gethostname()} {os.getpid()}"
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(lock) as f:
                    host, pid = f.read().split()
            except (OSError, ValueError):
                host, pid = "", "0"
            if attempt == 0 and host == socket.gethostname() and not _alive(int(pid)):
                os.remove(lock)  # left by a run that was killed: take it over
                continue
            raise ValueError(f"another flowfem run (process {pid} on {host or 'an unknown host'}) is writing "
                             f"{path!r}; wait for it, or delete {lock} if that run is gone") from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        _remove_stale_temporaries(path)
        check_free(path, force)
    except BaseException:
        os.remove(lock)
        raise
    return lock


def _alive(pid: int) -> bool:
    """True if process ``pid`` runs on this host (a zombie, dead but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextmanager
def reserve(path: str | os.PathLike, comm: MPI.Comm = MPI.COMM_WORLD, force: bool = False):
    """Hold ``path`` for this run (collective): checked and locked on entry, unlocked on exit.

    Raises ValueError on every rank if the target is taken (see the module docstring).
    Re-entrant: :func:`output_directory` inside a reserved block reuses the reservation.
    """
    path = os.path.abspath(os.fspath(path))
    if path in _reserved:
        yield path
        return
    lock = on_root(comm, lambda: _acquire_or_explain(path, force))
    _reserved.add(path)
    try:
        yield path
    finally:
        _reserved.discard(path)
        if comm.rank == 0 and os.path.exists(lock):
            os.remove(lock)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def output_directory(path: str | os.PathLike, comm: MPI.Comm = MPI.COMM_WORLD, force: bool = False):
    """Yield a temporary directory that becomes ``path`` only if the block finishes on every rank.

    Collective. Raises ValueError (every rank) if ``path`` may not be written (module docstring).
    An error inside the block on rank 0 removes the temporary directory; an error on other ranks
    alone ends the run (:func:`flowfem.mpi.fail_together`), and the next run on ``path`` removes
    what it left.
    """
    path = os.path.abspath(os.fspath(path))
    with reserve(path, comm, force):
        def make():
            tmp = tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=os.path.dirname(path))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: follow the umask like mkdir does
            return tmp

        tmp = on_root(comm, make)
        try:
            with recorded_by_manifest(tmp):  # the manifest lists its files: no record .NAME.flowfem beside each
                yield tmp
        except Exception as e:
            # no collective here: the other ranks may be inside another one (a mismatch would hang).
            # An error on every rank reaches every rank's handler; one on some ranks only ends the
            # run (flowfem.mpi.fail_together) before the barrier below lets anything be published.
            free = shutil.disk_usage(os.path.dirname(path)).free  # before the partial files are removed
            if comm.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            if free < 2**20:  # the usual cause; the writers' own messages (ADIOS2's) do not say it
                raise OSError(f"writing {path!r} failed, the file system holding it is full ({free} bytes "
                              f"free): {message(e)}") from e
            raise
        except BaseException:
            if comm.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        comm.Barrier()  # every rank finished its part
        on_root(comm, lambda: _finish(tmp, path, force))  # a failure there raises on every rank


def _finish(tmp: str, path: str, force: bool) -> None:
    """Write the manifest into tmp and put tmp in place of path (rank 0; under the lock)."""
    try:
        manifest = dict(flowfem=version(), command=[os.path.basename(sys.argv[0])] + sys.argv[1:],
                        cwd=os.getcwd(), written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        files=sorted(os.listdir(tmp)))
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        check_free(path, force)  # again: the target may have changed since the reservation
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=os.path.dirname(path))
            os.replace(path, os.path.join(old, "previous"))
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run_demo(main, out: str, quick: dict | None = None, full: dict | None = None, argv=None) -> int:
    """Run a demo script's ``main(out=DIR, **kwargs)`` from its command line, as the flowfem command runs its work;
    return the exit status for sys.exit. Collective.

    Options: ``--out DIR`` (default ``out``) and ``--quick`` (kwargs ``quick``, also when the environment variable
    CI is set; else ``full``); a usage error is one line, status 2. ``--out`` is claimed (:func:`reserve`) before
    ``main`` runs. A demo replaces its own earlier output (``force=True``) and nothing else: an error
    (an output directory holding a file the demo did not write, named as "--out replaces only a directory that
    flowfem wrote; ...") is one line "DEMO: error: MESSAGE" and status 2, Ctrl-C "DEMO: interrupted" and 130,
    on every rank (:func:`flowfem.mpi.fail_together`); ``FLOWFEM_DEBUG=1`` prints the traceback instead. A
    standard output closed by its reader (``demo.py | head``) ends the demo quietly with status 141.
    """
    from flowfem.cli import _Parser  # usage errors as the command's: one line, said by rank 0

    prog = os.path.basename(sys.argv[0])
    parser = _Parser(prog=prog, description=f"flowfem demo {prog}")
    parser.name = prog
    parser.add_argument("--out", default=out, help="output directory, replaced if this demo wrote it "
                                                   "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a small run (also with the environment variable CI)")
    args = parser.parse_args(argv)
    kwargs = (quick if args.quick or os.environ.get("CI") else full) or {}
    comm = MPI.COMM_WORLD
    try:
        # the demo's --out is its force=True: messages name the option. Claimed before the work, as the flowfem
        # command does: a directory of the user's is refused now, not after minutes of it
        with command_line(force="--out"), reserve(args.out, comm, force=True):
            main(**kwargs, out=args.out)
        sys.stdout.flush()  # output to a pipe is buffered: a closed one is taken here, not at exit (status 120)
    except BrokenPipeError:  # (demo.py | head): nothing more to say, as cat stops
        return end_on_closed_stdout(comm, prog)
    except KeyboardInterrupt:
        fail_together(comm, f"{prog}: interrupted", status=130)
        return 130
    except Exception as e:  # noqa: BLE001  (any error: one line, status 2, every rank ends)
        fail_together(comm, traceback.format_exc().rstrip() if os.environ.get("FLOWFEM_DEBUG")
                      else f"{prog}: error: {message(e)}")
        return 2
    return 0
