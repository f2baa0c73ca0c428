"""Arguments: the one check of scalar arguments, and the one way a message names an argument.

Every public function checks the type of its scalar arguments with
:func:`number` and :func:`integer` (:func:`positive`, :func:`bounded`,
:func:`at_least` and :func:`seed` add the range) before using them, so that a string, None or a float where a count
belongs is refused in flowfem's words,

    alpha must be a number > 0, got '1e-4' (str)
    degree must be an integer 1, 2 or 3, got 1.0 (float)

and not by NumPy or PETSc several calls deeper (``ufunc 'isfinite' not
supported``, ``'tuple' object has no attribute 'cell'``). The range of a
value is checked where its meaning is (each with its own message).

A message that names the fix names it as its reader writes it: the Python
argument ``width=N`` for a caller of the API, the option ``--width N`` for a
user of the ``flowfem`` command. Shared code writes :func:`spell` ("pass
{spell('width', 'N')}") and :func:`named` (the checks above name their
argument with it); :func:`command_line` (entered by ``flowfem``'s ``main``)
switches every message to the options' spelling. Where an option is not
``--`` + the argument's name (``--readout`` gives compare's ``readouts``,
``--mu`` landscape's ``mus``, ``--mesh-size`` a domain's ``size``), the command
declares it once, ``command_line(readouts="--readout")``, and the API's own
check names the option; an API function that passes its argument on under
another name declares that with :func:`renamed` (``size`` is a box's ``n``).

A number written as text (a command-line value, the parameter of ``gaussian:0.5``, a list ``-1,0,0.5``) is read by
:func:`read_number` and :func:`read_integer`, not by float() and int(), which also read ``1_0`` as 10.

A name with a parameter (``leaky_relu:0.1``, ``gaussian:2``, ``bdf:3``) is split by :func:`parameterised`,
which refuses a ':' with nothing after it.

A name that is none of the choices (an activation, a domain, a loss, a
scheme, a rule, a synthetic data set, ...) is refused with :func:`unknown`,
which suggests the closest choice: ``unknown synthetic data set 'sine': did
you mean 'sin'? choose one of sin, step, two_moons``.
"""

from __future__ import annotations

import ast
import contextvars
import difflib
import numbers
import re
import shlex
import sys
from contextlib import contextmanager

import numpy as np

_COMMAND_LINE = contextvars.ContextVar("flowfem_command_line", default=False)
# the names an argument goes by on its way in, innermost last: ({"n": "size"}, ...) (see renamed, command_line)
_RENAMED = contextvars.ContextVar("flowfem_renamed", default=())
# a number as a person writes it: ASCII digits with at most one point and an optional exponent, or inf / nan.
# float() also reads '1_0' as 10 (Python's digit grouping), Unicode digits ('\u0661\u0660' as 10) and '0_1'
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.ASCII | re.IGNORECASE)
_WHOLE = re.compile(r"[+-]?\d+", re.ASCII)


@contextmanager
def command_line(**options: str):
    """Within the block, :func:`spell` and :func:`named` name command-line options (``--width N``).

    ``options`` maps an API argument to the option that gives it where that is not ``--`` + the name
    with ``_`` written ``-``: ``command_line(readouts="--readout")``.
    """
    for name, option in options.items():
        if not option.startswith("--"):
            raise ValueError(f"command_line({name}={option!r}): an option is written --NAME")
    token = _COMMAND_LINE.set(True)
    try:
        with renamed(**options):
            yield
    finally:
        _COMMAND_LINE.reset(token)


@contextmanager
def renamed(**outer: str):
    """Within the block, the argument ``name`` is named as ``outer[name]``: the name its caller gave it
    (``with renamed(n="size")`` in a function that passes its ``size`` on as a box's ``n``), or on the
    command line the option (:func:`command_line`). Blocks nest: the innermost renames first."""
    token = _RENAMED.set(_RENAMED.get() + (outer,))
    try:
        yield
    finally:
        _RENAMED.reset(token)


def _outer(name: str) -> str:
    """``name`` as the caller outside every :func:`renamed` block wrote it (an option starts with --)."""
    for outer in reversed(_RENAMED.get()):
        name = outer.get(name, name)
    return name


def spell(name: str, value: str = "True") -> str:
    """An argument with a value as the reader writes it.

    ``value`` is written as in Python (``"'cg'"``, ``"N"``, ``"True"``). The API spelling is
    ``name=value``; on the command line it is ``--name value`` with ``_`` written ``-``, a string
    written as the shell takes it (shlex.quote: a path with a space or a quote pastes as one word),
    and a flag (value ``True``) without a value: spell("solver", "'cg'") is ``solver='cg'`` or
    ``--solver cg``; spell("path", repr("my net.onnx")) ``--path 'my net.onnx'``;
    spell("allow_unconverged") ``allow_unconverged=True`` or ``--allow-unconverged``. A placeholder
    (``"N"``) or a number stays as it is.
    """
    name = _outer(name)
    if not _COMMAND_LINE.get():
        return f"{name}={value}"
    option = name if name.startswith("--") else "--" + name.replace("_", "-")
    return option if value == "True" else f"{option} {_shell_word(value)}"


def _shell_word(value: str) -> str:
    """A value written as in Python (a string's repr, a number, a placeholder such as N) as one word of a
    shell command line."""
    try:
        text = ast.literal_eval(value)
    except (ValueError, SyntaxError):  # a placeholder (N, FRACTION): not Python, shown as it is
        return value
    return shlex.quote(text if isinstance(text, str) else value)


def petsc_option(key: str, value: str) -> str:
    """A PETSc option as the reader passes it: ``petsc_options={'snes_max_it': '100'}`` (API) or
    ``--petsc-option snes_max_it=100`` (command line)."""
    if _COMMAND_LINE.get():
        return f"--petsc-option {shlex.quote(f'{key}={value}')}"
    return f"petsc_options={{{key!r}: {value!r}}}"


def named(name: str) -> str:
    """An argument's name as the reader knows it: ``time_limit`` (API) or ``--time-limit`` (command
    line, or the option :func:`command_line` declares for it); a description with spaces ("the chart
    margin") stays as it is."""
    name = _outer(name)
    if _COMMAND_LINE.get() and name.isidentifier():
        return "--" + name.replace("_", "-")
    return name


def _got(value) -> str:
    """The refused value and its type: ``'1e-4' (str)``."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def read_number(text: str) -> float:
    """The number written in ``text`` (surrounding blanks ignored) as a float: decimal digits with an optional
    point and exponent (``10``, ``-0.5``, ``.5``, ``1e-4``), or inf / nan; else ValueError "'TEXT' is not a
    number (...)". Every number flowfem reads from text goes through it: ``1_0``, ``0x10`` and Unicode digits,
    which float() reads or half-reads, are refused. The range is the caller's to check."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a number (write decimal digits, e.g. 10, 0.5 or 1e-4)")
    return float(text)


def read_integer(text: str) -> int:
    """The integer written in ``text`` (surrounding blanks ignored) as an int: decimal digits with an optional
    sign; else ValueError "'TEXT' is not a whole number (...)" (``1_000``, ``1e3``, ``2.0``; see
    :func:`read_number`), or "a whole number of K digits is too large (...)" beyond the 4300 digits int() reads."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a whole number (write decimal digits, e.g. 10)")
    try:
        return int(text)
    except ValueError:  # more digits than int() converts (4300): its advice, set_int_max_str_digits, is Python's
        raise ValueError(f"a whole number of {len(text.strip().lstrip('+-'))} digits is too large: write at most "
                         f"{sys.get_int_max_str_digits()} digits") from None


def number(name: str, value, requirement: str = "") -> float:
    """``value`` as a float if it is a real number (int, float or a NumPy scalar; not bool, str,
    None or an array); else ValueError "NAME must be a number REQUIREMENT, got VALUE (TYPE)".

    NaN and inf pass: the caller's range check names them with the value's meaning.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{named(name)} must be a number{' ' + requirement if requirement else ''}, "
                         f"got {_got(value)}")
    return float(value)


def positive(name: str, value, strict: bool = True) -> float:
    """``value`` as a float if it is a finite number > 0 (``strict``) or >= 0; else ValueError
    "NAME must be a finite number > 0, got VALUE" (with the type if it is not a number)."""
    return bounded(name, value, 0, strict)


def bounded(name: str, value, minimum: float, strict: bool = False, finite: bool = True, meaning: str = "") -> float:
    """``value`` as a float if it is a number > ``minimum`` (``strict``) or >= ``minimum``, finite unless
    ``finite`` is False (then inf passes: "no limit"; NaN never); else ValueError "NAME must be a finite
    number >= MINIMUM (MEANING), got VALUE" (with the type if it is not a number; the parenthesis when
    ``meaning`` says what the number is)."""
    bound = f"{'>' if strict else '>='} {minimum:g}" + (f" ({meaning})" if meaning else "")
    value = number(name, value, bound)
    if not ((value > minimum if strict else value >= minimum) and (np.isfinite(value) or not finite)):
        raise ValueError(f"{named(name)} must be a {'finite ' if finite else ''}number {bound}, got {value!r}")
    return value


def tolerance(name: str, value, example: str, meaning: str = "") -> float:
    """``value`` as a float if it is a relative tolerance, a number with 0 < value < 1 (1 or more, inf too, asks
    nothing of a relative error: the first step, the zero solution, meets it); else ValueError
    "NAME must be a number with 0 < NAME < 1 (MEANING), e.g. EXAMPLE, got VALUE" (the parenthesis when
    ``meaning`` says what the tolerance bounds)."""
    requirement = f"with 0 < {named(name)} < 1" + (f" ({meaning})" if meaning else "") + f", e.g. {example}"
    value = number(name, value, requirement)
    if not 0 < value < 1:  # (NaN too)
        raise ValueError(f"{named(name)} must be a number {requirement}, got {value!r}")
    return value


def seed(value) -> int:
    """A seed of NumPy's random generators: an integer >= 0; else ValueError."""
    return at_least("seed", value, 0)


def at_least(name: str, value, minimum: int, each: bool = False, meaning: str = "") -> int:
    """``value`` as an int if it is an integer (as :func:`integer` takes it) >= ``minimum``; else ValueError
    "NAME must be an integer >= MINIMUM (MEANING), got VALUE" ("must be integers" when ``each`` value of a
    list is checked, :func:`integers`; the parenthesis when ``meaning`` says what the number counts)."""
    what = "integers" if each else "an integer"
    requirement = f">= {minimum}" + (f" ({meaning})" if meaning else "")
    value = integer(name, value, requirement)
    if value < minimum:
        raise ValueError(f"{named(name)} must be {what} {requirement}, got {value}")
    return value


def integer(name: str, value, requirement: str = "") -> int:
    """``value`` as an int if it is an integer (int or a NumPy integer; not bool, a float such
    as 1.0, str or None); else ValueError "NAME must be an integer REQUIREMENT, got VALUE (TYPE)".
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{named(name)} must be an integer{' ' + requirement if requirement else ''}, "
                         f"got {_got(value)}")
    return int(value)


def closest(name, choices) -> str | None:
    """The choice that ``name`` most likely misspells (difflib's ratio >= 0.6, case ignored), or None."""
    words = {str(c).lower(): str(c) for c in choices}
    match = difflib.get_close_matches(str(name).strip().lower(), list(words), n=1, cutoff=0.6)
    return words[match[0]] if match else None


def unknown(what: str, name, choices, hint: str = "") -> str:
    """The message for a ``name`` that is none of ``choices``: "unknown WHAT 'NAME': did you mean
    'CLOSEST'? choose one of A, B, C HINT" (the suggestion only when one is close, see :func:`closest`).
    Every parser of a name raises ValueError with it."""
    guess = closest(name, choices)
    suggestion = f" did you mean {guess!r}?" if guess is not None else ""
    return (f"unknown {what} {name!r}:{suggestion} choose one of {', '.join(map(str, choices))}"
            + (f" {hint}" if hint else ""))


def parameterised(what: str, spec, forms: dict[str, str], plain=()) -> tuple[str, str | None]:
    """(NAME, PARAMETER) of a ``spec`` written NAME or NAME:PARAMETER (lower case, each stripped: ``' bdf : 2'``
    is bdf:2; PARAMETER None without ':'). ``forms`` maps each NAME that takes a parameter to how it is written;
    for one of them an empty PARAMETER after ':' is ValueError "WHAT 'leaky_relu:': nothing follows ':'; write
    FORM" (it is a cut-off value, not the default, which is written without ':'). A NAME of ``plain`` (one that
    takes no parameter) with ':' is ValueError "WHAT 'relu:1': relu takes no ':' argument; write relu" (a
    parameter it would ignore). Other names are the caller's to check."""
    name, colon, parameter = str(spec).lower().partition(":")
    name, parameter = name.strip(), parameter.strip()
    if colon and name in plain:
        raise ValueError(f"{what} {str(spec)!r}: {name} takes no ':' argument; write {name}")
    if colon and not parameter and name in forms:
        raise ValueError(f"{what} {str(spec)!r}: nothing follows ':'; write {forms[name]}")
    return name, parameter if colon else None


def integers(name: str, values, minimum: int, example: str) -> list[int]:
    """``values`` (a sequence of integers, each as :func:`integer` takes it) as a list of ints if it is
    non-empty, each >= ``minimum`` and none twice; else ValueError naming the argument and ``example``
    ("--widths lists 4 twice: give each once, e.g. 16,64,256"). A value listed twice would be run twice
    and its rows of a table would be indistinguishable."""
    return distinct(name, [at_least(name, v, minimum, each=True) for v in values], example)


def distinct(name: str, values, example: str) -> list:
    """``values`` as a list if it is non-empty and lists no value twice; else ValueError "NAME is empty"
    or "NAME lists V twice", each with ``example`` as the fix."""
    values = list(values)
    if not values:
        raise ValueError(f"{named(name)} is empty: give at least one, e.g. {example}")
    for i, v in enumerate(values):
        if v in values[:i]:
            raise ValueError(f"{named(name)} lists {v} twice: give each once, e.g. {example}")
    return values
