"""Files the user names: written whole or not at all, read with every failure in one sentence.

Writing. A writer fills a temporary file next to the target and renames it
over the target (``os.replace``, atomic on POSIX within one file system): a
reader never sees half a file, and an error leaves the old file (or none).
The temporary name holds the process id and a random token, so that every
MPI rank may save the same file at the same time (``mpirun -n 2 python
script.py`` with ``net.save("net.npz")`` on each rank): each rank writes its
own temporary file, the renames follow one another, and the last one wins.
With a fixed temporary name the ranks would write into and rename each
other's file. No collective is involved, so saving on one rank alone is
safe too. A target that cannot be written (no such directory, a directory,
no permission) is refused before anything is written, by
:func:`check_writable`, which commands call before their work too.

Records. ``--force`` never replaces what flowfem did not write. After the
rename, :func:`replacing` records that flowfem wrote the file: a hidden file
``.NAME.flowfem`` beside ``NAME`` (:func:`record_path`) holding JSON
``{"written_by": "flowfem VERSION", "size": BYTES, "sha256": HEX}`` of the
file's content, hashed from the temporary file before the rename. The record
is written the same way (its own unique temporary file, renamed), so ranks
saving the same file at once leave a record of the content that won when
their contents agree, and a record that does not match (so --force refuses,
which is safe) when they do not. With ``force=True`` (the command line's
--force) :func:`check_writable` replaces an existing file only if its record
exists and its size and SHA-256 match the file now: a user's own file (no
record) and a flowfem output the user has edited since (the hash differs)
are refused. A symbolic link, a device (/dev/null), a pipe or a socket is
never written, with or without force: the rename would replace the link or
the device itself. A record that cannot be written (an OSError)
does not fail the write: the file is valid, only --force will refuse it.
The API's writes (``Network.save``, ``data.save``, the exporters) record
too, since flowfem wrote those files. Files written into an output
directory (:func:`flowfem.outputs.output_directory`) are not recorded one by
one: the directory's manifest records them (:func:`recorded_by_manifest`).

Reading. :func:`check_readable` and :func:`read_npz` turn every way a
user's file can fail to read (missing, a directory, no permission, empty,
not an archive, a single .npy, a pickle, a truncated or corrupt archive, a
damaged compressed array, an array of Python objects) into one ValueError
``cannot read WHAT 'PATH': REASON; HINT``: data files, network files and
density files all go through them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import signal
import stat
import threading
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np

from flowfem.arguments import spell


RECORD_SUFFIX = ".flowfem"
_CHUNK = 2**20  # bytes hashed at a time: a file of any size in O(1) memory
_RECORD_BYTES = 4096  # read of a record at most: a longer file is not one of flowfem's records
_recorded_by_manifest: list[str] = []  # output directories being written: their files are not recorded one by one


def record_path(path: str | os.PathLike) -> str:
    """The record of the file ``path`` = DIR/NAME that flowfem wrote it: DIR/.NAME.flowfem (module docstring)."""
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, "." + name + RECORD_SUFFIX)


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of the file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _not_written_by_flowfem(path: str) -> str | None:
    """None if the record beside ``path`` matches the file now (size, then SHA-256), else why not. A record
    that is no regular file (a link, a pipe, a device) or longer than flowfem's is no record."""
    record = record_path(path)
    try:
        # not following a link, not waiting on a pipe, and read to a bound: a record that is a pipe or a link to
        # /dev/zero would otherwise block or never end; flowfem's own records are regular files of ~130 bytes
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            written = json.loads(f.read(_RECORD_BYTES))
        size, digest = int(written["size"]), str(written["sha256"])
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or not a record
        return f"was not written by flowfem (no record {os.path.basename(record)!r} beside it)"
    try:
        if os.path.getsize(path) == size and sha256(path) == digest:
            return None
    except OSError as e:
        return f"cannot be read ({reason(e)})"
    return "was changed since flowfem wrote it"


def named_for(path: str | os.PathLike, suffix: str) -> str | None:
    """None if the name of ``path`` ends in ``suffix`` (``.npz``; case ignored), else the path to give: its last
    suffix replaced by ``suffix`` (``net.csv`` -> ``net.npz``, ``net`` -> ``net.npz``), or dropped where the
    name ends in ``suffix`` before it (``x.onnx.pt`` -> ``x.onnx``). A dot-file's name is its suffix (``.onnx``
    is named as an ONNX file), so that every path this gives passes."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if name.lower().endswith(suffix):
        return None
    given = name[name.rfind("."):] if "." in name else ""  # the last suffix
    base = path[:len(path) - len(given)]
    return base if given and base.lower().endswith(suffix) else base + suffix


def check_writable(path: str | os.PathLike, what: str = "output file", force: bool | None = None,
                   inputs: tuple = (), suffix: str = "") -> None:
    """Raise ValueError unless a file can be created or replaced at ``path``: its directory exists
    and may be written into, and ``path`` is not a directory, a symbolic link or a special file (a
    device such as /dev/null, a pipe, a socket: the rename that writes it would replace the link or
    the device itself, and root may replace /dev/null), and, for a writer of one format, its name ends
    in that format's ``suffix`` (``.npz``: a network written to ``net.csv`` would be a zip archive
    that a CSV reader fails on; :func:`named_for` gives the name to use).

    ``force``: None (the API: an existing file is replaced, as ``np.save`` does); False (the
    command line without --force: an existing file is refused); True (--force): an existing file
    is replaced only if flowfem wrote it and it is unchanged since, by its record
    ``.NAME.flowfem`` (size, then SHA-256: module docstring); a file without a matching record
    is refused. ``inputs``: what the command reads (files, directories, or
    names such as ``sin`` that are no path): ``path`` may be none of those files nor an existing
    file inside one of those directories, even with ``force`` (--force replaces an earlier
    output, never the input being read); this is checked first.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"cannot write {what} {path!r}: it is a directory; give a file name")
    if os.path.lexists(path):
        for source in (os.fspath(s) for s in inputs if s is not None):
            inside = os.path.isdir(source) and os.path.commonpath(
                [os.path.realpath(source), os.path.realpath(path)]) == os.path.realpath(source)
            if inside or (os.path.isfile(source) and os.path.samefile(source, path)):
                raise ValueError(f"{what} {path!r} is {'in ' if inside else ''}the input {source!r} of this "
                                 "command: writing it would destroy what the command reads; choose another name")
    if os.path.islink(path) or (os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode)):
        # a write renames a new file over path: it would replace the link itself, or a device such as
        # /dev/null (as root), rather than write into it
        kind = "a symbolic link" if os.path.islink(path) else "a device, pipe or socket, not a regular file"
        raise ValueError(f"cannot write {what} {path!r}: it is {kind}, and flowfem writes a file by replacing it "
                         "whole; give the name of a regular file")
    fix = named_for(path, suffix) if suffix else None
    if fix is not None:
        raise ValueError(f"cannot write {what} {path!r}: it is written as {suffix[1:].upper()}, a name ending in "
                         f"{suffix}; give {fix!r}")
    if force is False and os.path.lexists(path):
        raise ValueError(f"{what} {path!r} exists; pass --force to replace it, or choose another name")
    if force and os.path.lexists(path):
        why = _not_written_by_flowfem(path)
        if why is not None:
            raise ValueError(f"{spell('force')} replaces only a file that flowfem wrote; {what} {path!r} {why}: "
                             "remove it yourself or choose another name")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"cannot write {what} {path!r}: {directory!r} is a file, not a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {what} {path!r}: its directory does not exist; create {directory!r} first")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {path!r}: no permission to write into {directory!r}")


@contextmanager
def recorded_by_manifest(directory: str | os.PathLike):
    """Within the block, files that :func:`replacing` writes into ``directory`` (or below) get no
    record ``.NAME.flowfem``: :func:`flowfem.outputs.output_directory` lists them in its manifest,
    which would otherwise list the records too. Enter it on every rank that writes there."""
    directory = os.path.abspath(os.fspath(directory))
    _recorded_by_manifest.append(directory)
    try:
        yield
    finally:
        _recorded_by_manifest.remove(directory)


def _in_output_directory(path: str) -> bool:
    return any(os.path.commonpath([d, path]) == d for d in _recorded_by_manifest)


def _write_record(path: str, size: int, digest: str) -> None:
    """Write the record of ``path`` atomically (its own unique temporary file, renamed: every rank may
    record the same file at once). An OSError leaves no record and no temporary file, and is not raised:
    the file is valid without it, and --force then refuses to replace it (module docstring); any other
    exception (KeyboardInterrupt) leaves none either, and is raised."""
    from flowfem.outputs import version  # flowfem.outputs imports this module

    record = record_path(path)
    directory, name = os.path.split(record)
    tmp = os.path.join(directory, f"{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"written_by": f"flowfem {version()}", "size": size, "sha256": digest}, f)
            f.write("\n")
        os.replace(tmp, record)
    except BaseException as e:  # a Ctrl-C too (rank 0 alone in on_root stops at once): no temporary file left
        for stale in (tmp, record):  # the old record describes content that is no longer there
            try:
                os.remove(stale)
            except OSError:
                pass
        if not isinstance(e, OSError):
            raise


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path, unique to this process, that becomes ``path`` when the block ends,
    and record that flowfem wrote it: ``.NAME.flowfem`` beside it holds the size and SHA-256 of
    the content (module docstring; not inside an output directory, :func:`recorded_by_manifest`).

    ``suffix`` ends the temporary name (writers such as ``np.savez`` and meshio choose the format
    by the extension). A target that cannot be written raises ValueError before the block
    (:func:`check_writable`); an OSError while writing (a full disk) raises ValueError naming
    ``path``. On any error the temporary file is removed and ``path`` and its record are left
    untouched (the record still describes the old file). A record that cannot be written fails
    nothing (:func:`_write_record`). A Ctrl-C during the rename and the record's write is taken
    after both (:func:`_ctrl_c_held`): the file never appears without its record.
    """
    path = os.fspath(path)
    check_writable(path)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")
    record = not _in_output_directory(os.path.abspath(path))
    try:
        yield tmp
        if record:  # before the rename: another rank's rename may follow at once
            size, digest = os.path.getsize(tmp), sha256(tmp)
        with _ctrl_c_held():  # the file and its record appear together (a Ctrl-C between left no record)
            os.replace(tmp, path)
            if record:
                _write_record(path, size, digest)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise ValueError(f"cannot write {path!r}: {e.strerror or e}") from None
        raise


@contextmanager
def _ctrl_c_held():
    """Within the block a SIGINT is held back; on its normal end the handler that was in place before
    takes it (Python's raises KeyboardInterrupt, :class:`flowfem.mpi.CollectiveInterrupt`'s raises or sets
    its flag). Python runs signal handlers in the main thread only, and only it may replace them: in
    another thread, or under a handler set outside Python (getsignal None: it could not be put back), the
    block runs as it is."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, held[0])
    elif held and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def reason(e: OSError) -> str:
    """An OSError in words: not found, a directory, permission denied, or the system's text."""
    if e.errno == errno.ENOENT:
        return "not found"
    if e.errno == errno.EISDIR:
        return "it is a directory, not a file"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file stands where a directory belongs"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or str(e)


def check_readable(path: str | os.PathLike, what: str, hint: str) -> None:
    """Raise ValueError ``cannot read WHAT 'PATH': REASON; HINT`` unless ``path`` is a file this
    process can open for reading (missing, a directory, no permission), or is not a path at all."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} must be named by a path (str), got {path!r} ({type(path).__name__})")
    path = os.fspath(path)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {reason(e)}; {hint}") from None
    if os.path.isdir(path):  # open() of a directory succeeds on some systems
        raise ValueError(f"cannot read {what} {path!r}: it is a directory, not a file; {hint}")


def check_npz_start(path: str, fail, kind: str = "a zip archive of .npy arrays") -> None:
    """Raise ``fail(reason)`` unless the file's first bytes can start an .npz archive: an empty file, a
    single .npy array, a pickle and anything but a zip archive (``kind``: what it should be) are named."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if not magic:
        raise fail("the file is empty")
    if magic.startswith(b"\x93NUMPY"):
        raise fail("it is a single .npy array (np.save), not an .npz archive of named arrays (np.savez)")
    if magic.startswith(b"\x80"):
        raise fail("it contains pickled objects (a pickle file), which flowfem refuses to load (it could run code)")
    if not magic.startswith(b"PK"):
        raise fail(f"it is not {kind}, so it cannot be read as NPZ")


def read_npz(path: str | os.PathLike, what: str, hint: str,
             kind: str = "a zip archive of .npy arrays") -> dict[str, np.ndarray]:
    """Every array of an .npz archive, read whole with ``allow_pickle=False``.

    ``what`` names the file ("network file"), ``kind`` what it should be, for a file that is no
    archive at all ("a flowfem network (...)"), ``hint`` how to make a good one.

    Raises ValueError ``cannot read WHAT 'PATH': REASON; HINT`` for a file that is missing, a
    directory or unreadable, empty, a single .npy array, a pickle, not a zip archive, a damaged
    (truncated, corrupt) archive, an array whose compressed data or header are damaged, an array
    of Python objects (refused: loading it would run code), or a member that is not a .npy array.
    """
    check_readable(path, what, hint)
    path = os.fspath(path)

    def fail(reason: str):
        return ValueError(f"cannot read {what} {path!r}: {reason}; {hint}")

    check_npz_start(path, fail, kind)
    arrays, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in f.files:
                arrays[key] = f[key]
                if not isinstance(arrays[key], np.ndarray):  # NpzFile returns other members as bytes
                    raise fail(f"member {key!r} is not a .npy array")
    except zipfile.BadZipFile as e:
        raise fail(f"the zip archive is damaged, truncated or changed in transfer ({e})") from None
    except (zlib.error, EOFError) as e:
        raise fail(f"array {key!r} is damaged: its data do not decompress ({e})") from None
    except ValueError as e:
        if str(e).startswith("cannot read"):
            raise
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise fail(f"array {key!r} contains pickled objects (dtype object), which flowfem refuses to "
                       "load (it could run code)") from None
        raise fail(f"array {key!r} is damaged ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise fail(reason(e)) from None
    return arrays
