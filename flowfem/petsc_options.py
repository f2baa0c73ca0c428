"""PETSc options of one solver: flowfem's defaults and the user's, under the solver's own prefix.

Options reach PETSc through its global options database, read by
``setFromOptions`` (and some, such as ``ksp_view``, at the end of each
solve). A solver puts flowfem's defaults and the user's options
(``--petsc-option KEY=VALUE``, ``petsc_options={...}``) under a prefix of its
own, so that two solvers never read each other's options, and
:class:`SolverOptions` makes every way this can go wrong one line in
flowfem's words:

* a PETSc error raised while the options are applied or the solver is set up
  or run (``ksp_type=nonexistent``: error code 86 and a stack of C
  functions; ``ksp_rtol=abc``: error code 63) becomes a ValueError naming the
  user's options and PETSc's own reason (:meth:`SolverOptions.errors`);
* an option PETSc never read (misspelt, ``ksp_rtoll=1e-8``, or meant for
  another solver, ``snes_type`` for a linear solve) is refused after the
  first solve (:meth:`SolverOptions.check_used`): PETSc ignores it and would
  only list it at exit, four lines among the program's output;
* the options are removed from the database when the solver is destroyed or
  fails (:meth:`SolverOptions.clear`), so that none is left over to be
  listed as unused at exit.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from flowfem import mpi  # noqa: F401  (first: loads MPI before petsc4py)

from flowfem.petsc import PETSc  # noqa: E402

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
MANUAL = "https://petsc.org/release/manualpages/"


def parse(options) -> dict[str, str]:
    """The user's options as {name: value} with leading dashes dropped; None is no options.

    Raises ValueError unless ``options`` is a dict whose keys are PETSc option names
    (``ksp_rtol``, ``-pc_type``) and whose values are strings, numbers, bools or None (a flag).
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"petsc_options must be a dict of PETSc options such as {{'ksp_monitor': ''}}, "
                         f"got {type(options).__name__}")
    parsed = {}
    for key, value in options.items():
        name = str(key).lstrip("-")
        if not (isinstance(key, str) and _NAME.fullmatch(name)):
            raise ValueError(f"PETSc option name {key!r}: write a name such as ksp_rtol or pc_type "
                             "(letters, digits and underscores)")
        if not (value is None or isinstance(value, (str, int, float))):
            raise ValueError(f"PETSc option {name}: its value must be a string or a number, got "
                             f"{type(value).__name__}")
        parsed[name] = "" if value is None else str(value)
    return parsed


def _reason(error: PETSc.Error) -> str:
    """PETSc's own sentences of an error, without the stack of C functions and file paths."""
    lines = [re.sub(r"^\[\d+\]\s*", "", ln).strip() for ln in str(error).splitlines()]
    said = [ln for ln in lines[1:] if ln and not re.search(r"\(\) at \S+:\d+$", ln)]
    said = [re.sub(r":?\s*https?://\S+", "", ln) for ln in said]
    return "; ".join(reversed(said)) or lines[0]  # the most specific sentence comes last


def _callback_error(error: BaseException, kind) -> BaseException | None:
    """The exception of type ``kind`` that a petsc4py Python callback (MatMult, PCApply, PCSetUp, a
    monitor) raised behind a PETSc error: petsc4py returns PETSC_ERR_PYTHON (101) to PETSc and raises
    PETSc.Error from the callback's exception (its __cause__; the __context__ of an error a callback
    raised while handling another). None if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class SolverOptions:
    """The options of one PETSc solver under ``prefix``: ``defaults`` (flowfem's) and ``user``
    (after :func:`parse`), the user's winning. ``solver`` names the solver in messages
    ("the cg solver (KSP cg, PC gamg)")."""

    def __init__(self, prefix: str, defaults: dict, user: dict, solver: str):
        self.prefix, self.solver = prefix, solver
        self.defaults, self.user = dict(defaults), dict(user)
        self._set: list[str] = []
        self._checked = False

    def apply(self) -> None:
        """Put the options into PETSc's database (before the solver's setFromOptions)."""
        db = PETSc.Options()
        for key, value in {**self.defaults, **self.user}.items():
            db[self.prefix + key] = value
            self._set.append(self.prefix + key)

    def clear(self) -> None:
        """Remove the options from the database (the solver is destroyed, or failed)."""
        db = PETSc.Options()
        for name in self._set:
            db.delValue(name)
        self._set = []

    def _written(self, keys) -> str:
        """The user's options ``keys`` as they were given: ``ksp_type=cg, ksp_monitor``."""
        return ", ".join(f"{k}={self.user[k]}" if self.user[k] else k for k in keys)

    @contextmanager
    def errors(self, stage: str):
        """Within the block, a PETSc error becomes a ValueError naming ``stage`` ("the set-up"), the
        user's options if there are any (the usual cause) and PETSc's reason; the options are cleared.
        A PETSc error caused by Ctrl-C in a Python callback (error code 101) becomes KeyboardInterrupt,
        one caused by a ValueError in a callback (flowfem's own words, e.g. a preconditioner that met a
        non-finite number) is that ValueError."""
        try:
            yield
        except PETSc.Error as e:
            self.clear()
            if _callback_error(e, KeyboardInterrupt) is not None:  # Ctrl-C inside a callback: not a failure
                raise KeyboardInterrupt from None
            said = _callback_error(e, ValueError)
            if said is not None:
                raise said from None
            # a PETSc error inside a callback (the Nystrom preconditioner's multigrid reading its options)
            # reaches here as error 101; PETSc's own reason is in the inner error
            e = _callback_error(e.__cause__ or e.__context__, PETSc.Error) or e
            if self.user:
                raise ValueError(
                    f"PETSc failed in {stage} of {self.solver} with the options {self._written(self.user)}: "
                    f"{_reason(e)}; check their names and values in PETSc's manual pages ({MANUAL})") from None
            raise ValueError(f"PETSc failed in {stage} of {self.solver}: {_reason(e)} (PETSc error code "
                             f"{e.ierr})") from None

    def check_used(self) -> None:
        """After the solver's first solve: raise ValueError if PETSc never read one of the user's
        options (once per solver; later solves read nothing new)."""
        if self._checked:
            return
        self._checked = True
        db = PETSc.Options()
        unused = [k for k in self.user if not db.used(self.prefix + k)]
        if unused:
            self.clear()
            raise ValueError(
                f"PETSc did not use the option(s) {self._written(unused)}: misspelt, or not an option of "
                f"{self.solver}? PETSc ignores such options; see its manual pages for the options of each "
                f"type ({MANUAL})")
