"""What a run needs to be rerun: versions, the command line, the input files and their hashes.

:func:`record` is the one place where ``flowfem solve``, ``flow`` and
``compare`` say how their results were made; each adds it to its own JSON
(``metrics.json``, ``energy.json``, ``results.json``):

* ``versions``: flowfem, dolfinx, PETSc and Python (:func:`versions`);
* ``argv``: the full command line, ``sys.argv``, and ``started`` (UTC, ISO 8601);
* ``ranks``: MPI processes;
* the options that decide the numbers as given (``data``, ``test_data``, ``seed``,
  ``degree``, ``solver``, ``rtol``, ``petsc_option``: those the command has) and, for
  the data, test data and domain when they are files, the absolute path and SHA-256
  (``data_path``, ``data_sha256``, ``domain_path``, ``domain_sha256``, ...), so a
  rerun can check it reads the same bytes;
* the mesh size and radius the domain was made with (None where a domain takes
  none: a mesh file has neither, the circle and sphere have radius 1);
* ``wall_seconds``: from the start of the command to the record.

:func:`versions` never imports dolfinx or petsc4py.PETSc (``flowfem --version``
stays as fast as ``--help``): dolfinx's version is the one the dolfinx-solver
wheel records, PETSc's the version of the petsc4py built with it (the two are
released together, 3.25.5 and 3.25.5), unless PETSc is loaded already, then it
is PETSc's own answer.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import sys
import time

from flowfem.mpi import on_root  # first: loads MPI before dolfinx

STARTED = time.perf_counter()  # the command's start, near enough: flowfem.cli imports this module first
STARTED_UTC = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _distribution_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed (importlib.metadata), or None."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    """{"flowfem", "dolfinx", "petsc", "python"}: version strings (None where one cannot be found)."""
    try:
        from dolfinx_solver import DOLFINX_VERSION as dolfinx  # the PyPI wheel (imported by flowfem.mpi already)
    except ImportError:
        dolfinx = _distribution_version("fenics-dolfinx")  # conda, Docker or a source install
    loaded = sys.modules.get("petsc4py.PETSc")
    if loaded is not None:
        petsc = ".".join(map(str, loaded.Sys.getVersion()))
    else:
        try:
            import petsc4py  # the package alone: pure Python, does not load PETSc

            petsc = petsc4py.__version__
        except ImportError:
            petsc = None
    return dict(flowfem=_distribution_version("flowfem"), dolfinx=dolfinx, petsc=petsc,
                python=platform.python_version())


def sha256(path: str) -> str:
    """The SHA-256 of the file at ``path`` as 64 hex digits (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(named: dict) -> dict:
    """For each input that names a file: its absolute path and SHA-256 (``KEY_path``, ``KEY_sha256``)."""
    out = {}
    for key, value in named.items():
        if isinstance(value, str) and os.path.isfile(value):
            out[f"{key}_path"] = os.path.abspath(value)
            out[f"{key}_sha256"] = sha256(value)
    return out


# the options of a run that decide its numbers, recorded as given (the domain's kind is the command's own
# key: a named domain, or "file" with domain_path and domain_sha256)
SETTINGS = ("data", "test_data", "seed", "degree", "solver", "rtol", "petsc_option")


def record(args, comm, mesh_size=None, radius=None) -> dict:
    """The provenance of a run of the ``flowfem`` command with parsed arguments ``args`` on ``comm``
    (see the module docstring); ``args.argv`` is the command line after the program's name.
    ``mesh_size`` and ``radius`` are those the domain was made with. The files are hashed on
    rank 0 and the record broadcast (collective)."""
    named = {k: getattr(args, k) for k in ("data", "test_data", "domain") if hasattr(args, k)}
    files = on_root(comm, lambda: _files(named))
    argv = list(sys.argv) if list(args.argv) == sys.argv[1:] else ["flowfem", *args.argv]  # main(argv) from Python
    return dict(versions=versions(), argv=argv, started=STARTED_UTC, ranks=comm.size,
                **{k: getattr(args, k) for k in SETTINGS if hasattr(args, k)}, **files,
                mesh_size=mesh_size, radius=radius, wall_seconds=time.perf_counter() - STARTED)
