"""Every example in README.md runs as written.

The commands are parsed out of README.md, not listed here, so a command added
to the README (by anyone) is run too:

* every line of an indented (4 spaces) or fenced code block that starts with
  ``flowfem `` or ``mpirun -n P flowfem `` (a ``$ `` prompt and ``\\``
  continuation lines are allowed) is one command;
* every ```` ```python ```` block is one script.

Commands and scripts run interleaved in README order, in one fresh
directory, as a reader following the README runs them: later examples read
what earlier ones wrote (``readout`` reads ``results/sin``, the export
example loads ``net.npz``), and an example must not trip over a file an
earlier one left (a Python example that saved ``net.npz`` once made the
later ``flowfem readout --out net.npz`` refuse to replace it). Commands run
through ``.venv/bin`` (``flowfem``, ``mpirun``). The directory holds a copy
of ``meshes/`` and the files the README says stand for the user's own:
``data.csv`` (header x1,y) and ``inputs.csv`` (header x1).

Each command must exit 0, print no ``warning:`` line (a README flow that
stops at --max-steps, a solve that does not converge) and at most
``MAX_LINES`` lines (the landscape example once printed 20,485). A flow must
reach its tolerance and a landscape must apply (a strict local minimum).
Every subcommand of ``flowfem`` must have at least one README example, so a
renamed or removed subcommand fails here twice: its README command fails, and
the new name has no example.

Small sizes: the README's command text is run unchanged; only for the
subcommands in ``SMALL`` are size options appended that the README line does
not set itself (argparse takes the last value): ``compare`` runs 2 widths, 1
seed and 50 steps instead of minutes of particle training. Everything else
runs at the README's own size (about 1 minute in all on 2 busy cores).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import BIN, ROOT
from flowfem import data

pytestmark = pytest.mark.mpi  # starts processes (one command runs under mpirun); not rerun inside the MPI suite

README = os.path.join(ROOT, "README.md")
MAX_LINES = 100
# size options appended (when the README line does not give them) to keep the test short
SMALL = {"compare": ["--widths", "8,16", "--seeds", "0", "--steps", "50"]}
COMMAND = re.compile(r"^(\$ )?(mpirun -n \d+ )?flowfem ")


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block (language "" if none given) and every indented block
    (language "", lines without their 4-space indent) of a Markdown text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*```+\s*(\w*)", line)
        if fence:
            body, i = [], i + 1
            while i < len(lines) and not re.match(r"^\s*```", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append((fence.group(1).lower(), body))
        elif line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            blocks.append(("", body))
            continue
        i += 1
    return blocks


def readme_examples(text: str) -> list[tuple[str, str]]:
    """("command", line) for every flowfem command line (continuations joined) and ("python", script) for
    every Python block of a Markdown text, in the order of the text."""
    examples = []
    for lang, body in code_blocks(text):
        if lang == "python":
            examples.append(("python", "\n".join(body) + "\n"))
            continue
        joined, pending = [], ""
        for line in body:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1].strip() + " "
                continue
            joined.append(pending + line.strip())
            pending = ""
        examples += [("command", c.removeprefix("$ ")) for c in joined if COMMAND.match(c)]
    return examples


def readme_commands(text: str) -> list[str]:
    """The flowfem command lines of the README's code blocks, in order (continuations joined)."""
    return [t for kind, t in readme_examples(text) if kind == "command"]


def python_snippets(text: str) -> list[str]:
    return [t for kind, t in readme_examples(text) if kind == "python"]


def subcommand(argv: list[str]) -> str:
    return argv[argv.index("flowfem") + 1]


TEXT = open(README, encoding="utf-8").read()
EXAMPLES = readme_examples(TEXT)
COMMANDS = [t for kind, t in EXAMPLES if kind == "command"]
SNIPPETS = [t for kind, t in EXAMPLES if kind == "python"]


def environment() -> dict:
    """The test's environment with .venv/bin first on PATH: the README's `flowfem` and `mpirun`."""
    return dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), PYTHONUNBUFFERED="1")


class Session:
    """The README's examples (commands and Python scripts) run in README order in one directory, each
    once, when a test first needs it (or one after it)."""

    def __init__(self, directory):
        self.directory = directory
        self.results: list[subprocess.CompletedProcess] = []
        shutil.copytree(os.path.join(ROOT, "meshes"), directory / "meshes")
        data.save(data.synthetic("sin", 300, seed=7), str(directory / "data.csv"))
        x = np.random.default_rng(8).uniform(-1, 1, 20)
        np.savetxt(directory / "inputs.csv", x, header="x1", comments="", delimiter=",")

    def argv(self, command: str) -> list[str]:
        argv = shlex.split(command)
        for option in SMALL.get(subcommand(argv), [])[::2]:
            if option not in argv:
                i = SMALL[subcommand(argv)].index(option)
                argv += SMALL[subcommand(argv)][i:i + 2]
        env = environment()
        argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        return argv

    def run(self, kind: str, k: int) -> subprocess.CompletedProcess:
        """The result of the k-th example of this kind (running every example before it first)."""
        target = [i for i, (kd, _) in enumerate(EXAMPLES) if kd == kind][k]
        while len(self.results) <= target:
            i = len(self.results)
            kd, text = EXAMPLES[i]
            if kd == "python":
                script = self.directory.parent / f"{self.directory.name}-example{i}.py"
                script.write_text(text)
                argv = [sys.executable, str(script)]
            else:
                argv = self.argv(text)
            self.results.append(subprocess.run(argv, cwd=self.directory, env=environment(), capture_output=True,
                                               text=True, timeout=600))
        return self.results[target]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(tmp_path_factory.mktemp("readme"))


def test_the_readme_has_commands_and_a_python_example():
    assert len(COMMANDS) >= 10 and SNIPPETS
    assert all(subcommand(shlex.split(c)) for c in COMMANDS)


def test_every_subcommand_has_a_readme_example():
    from flowfem.cli import parser

    subparsers = next(a for a in parser()._actions if a.dest == "command")
    shown = {subcommand(shlex.split(c)) for c in COMMANDS}
    missing = sorted(set(subparsers.choices) - shown)
    assert not missing, f"flowfem subcommands without an example in README.md's command block: {missing}"


@pytest.mark.parametrize("k", range(len(COMMANDS)), ids=COMMANDS)
def test_readme_command_runs_as_written(session, k):
    r = session.run("command", k)
    shown = f"$ {shlex.join(session.argv(COMMANDS[k]))}\n{r.stdout}\n{r.stderr}"
    assert r.returncode == 0, shown
    lines = r.stdout.splitlines()
    assert 0 < len(lines) <= MAX_LINES, shown
    assert not [ln for ln in lines if ln.startswith("warning:")], shown
    command = subcommand(shlex.split(COMMANDS[k]))
    if command == "flow":  # the README's flow reaches its tolerance (or end time), not --max-steps
        assert "max_steps" not in lines[0], shown
    if command == "landscape":  # and its landscape is one where the classification applies
        assert "a strict local minimum: the classification applies" in r.stdout, shown


@pytest.mark.parametrize("k", range(len(SNIPPETS)))
def test_readme_python_example_runs_as_written(session, k):
    r = session.run("python", k)
    assert r.returncode == 0, SNIPPETS[k] + r.stdout + r.stderr
    assert r.stderr == "", r.stderr


SUFFIXES = {"onnx": ".onnx", "safetensors": ".safetensors", "torch": ".pt"}  # export's default --out
SAVED = re.compile(r"\.(?:save|to_onnx|to_safetensors|to_torch)\(\s*[\"']([^\"']+)[\"']")  # a Python example's file


def output_paths(command: str) -> list[str]:
    """The paths a README command line writes, as git names them (a directory with a trailing /): --out (a
    directory for solve, flow and compare), --json, --checkpoint-dir and OUT.checkpoints, convert's OUT, export's
    default (--network with the format's suffix)."""
    argv = shlex.split(command)
    argv = argv[argv.index("flowfem") + 1:]
    given = {}
    for i, word in enumerate(argv):
        option, equals, value = word.partition("=")
        if option in ("--out", "--json", "--checkpoint-dir", "--network", "--format", "--checkpoint-every"):
            given[option] = value if equals else argv[i + 1]
    directory = argv[0] in ("solve", "flow", "compare")
    paths = [os.path.normpath(given["--out"]) + ("/" if directory else "")] if "--out" in given else []
    paths += [os.path.normpath(given[o]) + "/" for o in ("--checkpoint-dir",) if o in given]
    paths += [given["--json"]] if "--json" in given else []
    if argv[0] == "flow" and "--checkpoint-every" in given and "--checkpoint-dir" not in given:
        paths.append(os.path.normpath(given["--out"]) + ".checkpoints/")
    if argv[0] == "export" and "--out" not in given:
        paths.append(os.path.splitext(given["--network"])[0] + SUFFIXES[given["--format"]])
    if argv[0] == "convert":  # flowfem convert IN OUT [--chunk N] [--force] [--quiet]
        words = [w for i, w in enumerate(argv[1:], 1) if not w.startswith("-") and argv[i - 1] != "--chunk"]
        paths.append(words[1])
    return paths


def test_every_output_of_a_readme_example_is_ignored_by_git():
    """A reader who runs the README's examples in the repository (its commands write out/, fit, net.npz, ...)
    gets no untracked files: each path a command or a Python example writes is in .gitignore (out/ and net.npz
    were not)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed (as in the image): .gitignore is git's to read")
    paths = sorted({p for c in COMMANDS for p in output_paths(c)} | {p for s in SNIPPETS for p in SAVED.findall(s)})
    assert len(paths) >= 10 and "out/" in paths and "net.npz" in paths and "data.npy" in paths, paths
    r = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr  # 1: none ignored
    missing = sorted(set(paths) - set(r.stdout.splitlines()))
    assert not missing, f"README examples write these paths that .gitignore does not ignore: {missing}"


def test_output_paths_names_what_each_kind_of_command_writes():
    assert output_paths("mpirun -n 2 flowfem solve --data d.npy --sharded --out fit") == ["fit/"]
    assert output_paths("flowfem flow --data sin --out=r/f/ --checkpoint-every 5") == ["r/f/", "r/f.checkpoints/"]
    assert output_paths("flowfem landscape --network n.npz --data sin --json land.json") == ["land.json"]
    assert output_paths("flowfem export --network nets/a.npz --format torch") == ["nets/a.pt"]
    assert output_paths("flowfem convert --chunk 10 in.csv 'my data.npy'") == ["my data.npy"]
    assert SAVED.findall('net.save("a.npz"); net.to_onnx(\'b.onnx\')') == ["a.npz", "b.onnx"]


def test_the_parser_finds_what_a_reader_sees():
    """Indented and fenced blocks, prompts and continuations; prose, errors and python blocks are not commands."""
    text = ("Run\n\n    flowfem solve --data sin \\\n        --out a\n    make demo\n\n"
            "flowfem trains networks; `flowfem mesh` in prose.\n\n"
            "```sh\n$ mpirun -n 2 flowfem export --network n.npz\n```\n\n"
            "      flowfem: error: a message\n\n"
            "```python\nimport flowfem\n```\n")
    assert readme_commands(text) == ["flowfem solve --data sin --out a",
                                     "mpirun -n 2 flowfem export --network n.npz"]
    assert python_snippets(text) == ["import flowfem\n"]


def test_the_layout_names_every_module_and_the_long_ones():
    """Every module under flowfem/ appears in the README's Layout block (by file name), and the paragraph on
    module sizes names exactly the modules past 500 lines but the three it explains (it said four when nine had
    grown past)."""
    layout = TEXT[TEXT.index("## Layout"):TEXT.index("## What the tests check")]
    modules = sorted(os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "flowfem"))
                     for d, _, files in os.walk(os.path.join(ROOT, "flowfem")) for f in files
                     if f.endswith(".py") and f != "__init__.py" and f != "__main__.py")
    assert modules
    missing = [m for m in modules if os.path.basename(m) not in layout]
    assert not missing, f"modules the README's Layout does not name: {missing}"
    sizes = {m: sum(1 for _ in open(os.path.join(ROOT, "flowfem", m), encoding="utf-8")) for m in modules}
    paragraph = layout[layout.index("grew past 500 lines"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    named = set(re.findall(r"`([\w/]+\.py)`", paragraph)) - {"labels.py", "tests/test_readme.py"}  # not long ones
    long = {m for m, n in sizes.items() if n > 500 and m not in ("stationary.py", "space.py", "cli.py")}
    assert named == long, (sorted(named - long), sorted(long - named))
