"""Files written whole or not at all, from any number of processes at once.

A writer fills a temporary file next to the target and renames it over the
target (``os.replace``, atomic on POSIX within one file system): a reader
never sees half a file, and an error leaves the old file (or none). The
temporary name holds the process id and a random token, so that every MPI
rank may save the same file at the same time (``mpirun -n 2 python
script.py`` with ``net.save("net.npz")`` on each rank): each rank writes its
own temporary file, the renames follow one another, and the last one wins.
With a fixed temporary name the ranks would write into and rename each
other's file. No collective is involved, so saving on one rank alone is
safe too.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path, unique to this process, that becomes ``path`` when the block ends.

    ``suffix`` ends the temporary name (writers such as ``np.savez`` and meshio choose the format
    by the extension). On an error the temporary file is removed and ``path`` is left untouched.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
