"""Every error a user can cause: one line in flowfem's words naming the fix, exit status 2, nothing left behind.

One test (or parametrised family) per kind, each through the command line
(a subprocess: exit 2, exactly one line on standard error, no traceback, no
file or temporary file left) and through the API (the ValueError's message):

* damaged files: .npz data, network and density files that are random bytes,
  empty, truncated, a corrupt compressed array (zlib), an array of Python
  objects, a pickle, a single .npy, a stray member; corrupt mesh files;
* PETSc: option values PETSc refuses (ksp_type=nonexistent, ksp_rtol=abc, ...),
  options it never reads (misspelt), --rtol outside (0, 1);
* gmsh failing, or silently meshing something else than asked;
* sizes that do not fit in memory, refused with the estimate before allocating
  (a machine of little memory is simulated by monkeypatching
  flowfem.memory.available_bytes; one real request is far too large anywhere);
* API misuse: wrong types (alpha "1e-4", degree 1.0, Problem(None), fit(x, None));
* messages in the reader's words (width=N for Python, --width N on the command line)
  and about the right thing (predict talks about the inputs, not the mesh);
* outputs: nothing written by a command that fails, no temporary file left.
"""

import functools
import io
import itertools
import os
import pickle
import struct
import time
import zipfile

import numpy as np
import pytest
from mpi4py import MPI
from petsc4py import PETSc

from conftest import BIN, run

from flowfem import cli, data, memory, particles, plateau, readout, stationary
from flowfem.network import Network
from flowfem.problem import Problem
from flowfem.space import Space

FLOWFEM = os.path.join(BIN, "flowfem")


def refused(args, message, directory, ranks=1, timeout=300):
    """Run flowfem with args; assert exit 2, one line naming ``message``, no traceback, nothing new
    in ``directory``; return the line."""
    before = sorted(os.listdir(directory))
    r = run([FLOWFEM, *map(str, args)], ranks=ranks, timeout=timeout)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("flowfem") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "WARNING" not in r.stdout + r.stderr
    assert sorted(os.listdir(directory)) == before
    return lines[0]


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """A solve's output directory (mesh 32, the default) and a network read out of it, on 1-D inputs."""
    root = tmp_path_factory.mktemp("solved")
    r = run([FLOWFEM, "solve", "--data", "sin", "--n", "200", "--no-plot", "--out", str(root / "dens")])
    assert r.returncode == 0, r.stderr
    r = run([FLOWFEM, "readout", "--density", str(root / "dens"), "--degree", "1", "--out", str(root / "net.npz")])
    assert r.returncode == 0, r.stderr
    return root


# -- damaged files -------------------------------------------------------------------------------

def _npz_bytes(compressed=False, **arrays):
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return bytearray(buf.getvalue())


def damaged_files(directory, arrays):
    """{name: (path, words of the reason)} for ``arrays`` (what a good file would hold) stored damaged."""
    good = _npz_bytes(**arrays)
    corrupt = _npz_bytes(compressed=True, **arrays)
    name_len, extra_len = struct.unpack("<HH", corrupt[26:30])
    start = 30 + name_len + extra_len  # the first member's deflate stream: an invalid block type
    corrupt[start:start + 8] = b"\xff" * 8
    members = io.BytesIO()
    with zipfile.ZipFile(members, "w") as z:
        z.writestr("notes.txt", b"not an array")
    header = io.BytesIO()
    with zipfile.ZipFile(header, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00garbage")
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    objects = _npz_bytes(**{k: np.array([object()] * len(np.atleast_1d(v)), dtype=object) for k, v in arrays.items()})
    files = {
        "random": (b"garbage " + bytes(range(256)), "so it cannot be read as NPZ"),
        "empty": (b"", "the file is empty"),
        "truncated": (bytes(good[: len(good) // 2]), "zip archive is damaged"),
        "corrupt": (bytes(corrupt), "do not decompress"),
        "objects": (bytes(objects), "contains pickled objects"),
        "pickle": (pickle.dumps(dict(arrays)), "refuses to load"),
        "npy": (npy.getvalue(), "single .npy array"),
        "member": (members.getvalue(), "'notes.txt' is not a .npy array"),
        "header": (header.getvalue(), "array 'x' is damaged"),
    }
    out = {}
    for name, (content, reason) in files.items():
        path = os.path.join(directory, f"{name}.npz")
        with open(path, "wb") as f:
            f.write(content)
        out[name] = (path, reason)
    return out


DAMAGED = ["random", "empty", "truncated", "corrupt", "objects", "pickle", "npy", "member", "header"]
X = np.linspace(-1, 1, 40)[:, None]


@pytest.mark.parametrize("kind", DAMAGED)
def test_damaged_npz_files_are_named_with_the_reason(tmp_path, kind):
    """The three readers of .npz files (data, network, density) say which file, what is wrong and what
    a good one holds; numpy's BadZipFile, zlib.error, EOFError and pickle messages never show."""
    readers = [
        (data.load, dict(x=X, y=X[:, 0]), "cannot read data file", "holds arrays x (n, d) and y"),
        (Network.load, dict(W=X, b=X[:, 0], a=X[:, 0], activation=np.array("relu")), "cannot read network file",
         "Network.save"),
        (lambda p: readout_density(p), dict(theta=X, u=X[:, 0]), "cannot read density file", "flowfem solve"),
    ]
    for read, arrays, what, hint in readers:
        path, reason = damaged_files(tmp_path, arrays)[kind]
        with pytest.raises(ValueError) as info:
            read(path)
        text = str(info.value)
        assert text.startswith(f"{what} {path!r}: ") and reason in text and hint in text, text
        assert "BadZipFile" not in text and "allow_pickle" not in text and "pickle.load" not in text, text


def readout_density(path):
    from flowfem import io as fio

    return fio.read_density_file(path, {"theta", "u"})


@pytest.mark.mpi
def test_damaged_files_on_the_command_line(tmp_path, solved):
    """solve --data, predict --network and readout --density with damaged files: one line each."""
    bad = damaged_files(tmp_path, dict(x=X, y=X[:, 0]))
    for kind in ("truncated", "corrupt", "objects"):
        path, reason = bad[kind]
        refused(["solve", "--data", path, "--out", tmp_path / "out"], reason, tmp_path)
        refused(["predict", "--network", path, "--data", "sin", "--out", tmp_path / "p.csv"], reason, tmp_path)
        refused(["readout", "--density", path, "--out", tmp_path / "n.npz"], reason, tmp_path)
    # a mesh file of random bytes, an empty one, a truncated one; a directory as data
    mesh = tmp_path / "m.msh"
    assert run([FLOWFEM, "mesh", "box", "--size", "4", "--out", mesh]).returncode == 0
    text = mesh.read_text()
    for name, content, reason in (("random.msh", "\x00\x01 not a mesh", "meshio: "), ("empty.msh", "", "empty"),
                                  ("truncated.msh", text[: len(text) // 2], "damaged, truncated or not a mesh?")):
        (tmp_path / name).write_text(content)
        refused(["solve", "--data", "sin", "--domain", tmp_path / name, "--out", tmp_path / "out"],
                "cannot read mesh file", tmp_path)
    refused(["solve", "--data", "sin", "--domain", tmp_path / "none.msh", "--out", tmp_path / "out"],
            "none.msh': not found", tmp_path)
    (tmp_path / "dir.csv").mkdir()
    refused(["solve", "--data", tmp_path / "dir.csv", "--out", tmp_path / "out"], "it is a directory", tmp_path)


def test_paths_that_are_not_paths():
    with pytest.raises(ValueError, match=r"data file must be named by a path \(str\), got None"):
        data.load(None)
    with pytest.raises(ValueError, match=r"network file must be named by a path \(str\), got 3"):
        Network.load(3)
    with pytest.raises(ValueError, match="mesh file must be named by a path"):
        Space.read(None)
    with pytest.raises(ValueError, match="domain must be box, ball, circle, sphere, s3 or a .msh/.xdmf file name"):
        Space.make(None, 1)


# -- PETSc ---------------------------------------------------------------------------------------

PETSC_BAD = [
    (["--petsc-option", "ksp_type=nonexistent"], "Unable to find requested KSP type nonexistent"),
    (["--petsc-option", "ksp_rtol=abc"], "Input string abc has no numeric value"),
    (["--petsc-option", "pc_type=nonexistent"], "Unable to find requested PC type nonexistent"),
    (["--petsc-option", "ksp_max_it=-5"], "Maximum number of iterations -5 must be non-negative"),
    (["--petsc-option", "pc_gamg_threshold=zz"], "Input string zz has no numeric value"),
    (["--petsc-option", "ksp_rtoll=1e-8"], "PETSc did not use the option(s) ksp_rtoll=1e-8: misspelt"),
    (["--petsc-option", "snes_type=newtontr"], "PETSc did not use the option(s) snes_type=newtontr"),
    (["--petsc-option", "pc_factor_mat_solver_type=nonexistent", "--solver", "direct"],
     "Could not locate solver type nonexistent"),
    (["--petsc-option", "snes_type=nonexistent", "--loss", "logistic", "--data", "step"],
     "Unable to find requested SNES type nonexistent"),
    (["--petsc-option", "a b=1"], "PETSc option name 'a b'"),
    (["--petsc-option", "ksp_type"], "write it as KEY=VALUE"),
    (["--rtol", "nan"], "argument --rtol: nan must be a number with 0 < --rtol < 1"),
    (["--rtol=-1"], "argument --rtol: -1 must be a number with 0 < --rtol < 1"),
    (["--rtol", "2"], "argument --rtol: 2 must be a number with 0 < --rtol < 1"),
    (["--rtol", "0"], "argument --rtol: 0 must be a number with 0 < --rtol < 1"),
    (["--rtol", "abc"], "argument --rtol: 'abc' is not a number"),
]


@pytest.mark.mpi
@pytest.mark.parametrize("args,message", PETSC_BAD, ids=[" ".join(a) for a, _ in PETSC_BAD])
def test_petsc_options_the_user_got_wrong(tmp_path, args, message):
    """PETSc's error codes and stacks of C functions, and its four-line list of unused options at exit,
    become one line naming the options; no PETSc option is left behind to be listed."""
    if "--data" not in args:
        args = args + ["--data", "sin"]
    line = refused(["solve", *args, "--n", "100", "--mesh-size", "8", "--no-plot", "--out", tmp_path / "out"],
                   message, tmp_path)
    assert "error code" not in line and ".c:" not in line


@pytest.mark.mpi
def test_petsc_options_under_mpirun(tmp_path):
    refused(["solve", "--data", "sin", "--n", "100", "--mesh-size", "8", "--no-plot", "--petsc-option",
             "ksp_type=nonexistent", "--out", tmp_path / "out"], "Unable to find requested KSP type", tmp_path,
            ranks=2)


def _flowfem_options() -> set:
    return {k for k in PETSc.Options().getAll() if k.startswith("flowfem_")}


@pytest.fixture
def leftover_options():
    """The flowfem options a test leaves in PETSc's global database, beyond those before it: a solver of
    another test that was never destroyed (a Flow of test_flow.py, whose order may put it first) is not
    this test's leftover."""
    before = _flowfem_options()
    return lambda: sorted(_flowfem_options() - before)


@pytest.mark.parametrize("options,solver,message", [
    ({"ksp_type": "nonexistent"}, "cg", "with the options ksp_type=nonexistent: Unable to find requested KSP type"),
    ({"-ksp_rtol": "abc"}, "cg", "Input string abc has no numeric value"),
    ({"pc_type": "nonexistent"}, "direct", "Unable to find requested PC type nonexistent"),
    ({"ksp_monitr": ""}, "cg", "PETSc did not use the option(s) ksp_monitr"),
    (["ksp_type=cg"], "cg", "petsc_options must be a dict of PETSc options"),
    ({"ksp type": "cg"}, "cg", "PETSc option name 'ksp type'"),
    ({"ksp_type": ["cg"]}, "cg", "its value must be a string or a number"),
])
def test_petsc_options_in_the_api(options, solver, message, leftover_options):
    train = data.synthetic("sin", 100)
    problem = Problem(Space.box(1, 8, 4.0), alpha=1e-3)
    with pytest.raises(ValueError) as info:
        problem.fit(train.x, train.y, solver=solver, petsc_options=options)
    assert message in str(info.value) and "error code" not in str(info.value), str(info.value)
    assert leftover_options() == []
    result = problem.fit(train.x, train.y, solver=solver)  # the next solve is not disturbed
    assert result.info.converged and leftover_options() == []


@pytest.mark.parametrize("rtol,message", [
    (float("nan"), "rtol = nan"), (2.0, "rtol = 2.0"), (-1e-3, "rtol = -0.001"), (0, "rtol = 0"),
    ("1e-8", "rtol must be a number with 0 < rtol < 1, got '1e-8' (str)"), (None, "got None"),
])
def test_rtol_is_checked_before_the_work(rtol, message, operator_count):
    train = data.synthetic("sin", 100)
    problem = Problem(Space.box(1, 8, 4.0), alpha=1e-3)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        problem.fit(train.x, train.y, rtol=rtol)
    assert operator_count == []  # refused before the data operator is built


INTERRUPTED = [
    (["solve", "--data", "sin"], 3),  # a CG iteration's MatMult (KSP)
    (["solve", "--data", "sin", "--solver", "direct"], 0),  # the true residual after the MUMPS solve
    (["solve", "--data", "step", "--loss", "logistic"], 5),  # inside SNES's python PC: a KSP in a SNES
    (["flow", "--data", "sin", "--max-steps", "3", "--checkpoint-every", "1"], 3),  # the stationary solve
]


@pytest.mark.parametrize("args,call", INTERRUPTED, ids=[" ".join(a) for a, _ in INTERRUPTED])
def test_ctrl_c_inside_a_petsc_callback_is_an_interrupt(tmp_path, monkeypatch, capsys, args, call, leftover_options):
    """Ctrl-C while PETSc runs a Python callback came back out of KSPSolve as PETSc error 101 and was
    reported as a failed solve (status 2): it is 'flowfem: interrupted', status 130, nothing left."""
    monkeypatch.delenv("FLOWFEM_DEBUG", raising=False)
    mult, calls = stationary._NormalOperator.mult, itertools.count()

    def interrupted(self, mat, x, y):  # SIGINT's KeyboardInterrupt, raised where Python takes it
        if next(calls) == call:
            raise KeyboardInterrupt
        mult(self, mat, x, y)

    monkeypatch.setattr(stationary._NormalOperator, "mult", interrupted)
    code = cli.main([*args, "--n", "200", "--mesh-size", "16", "--no-plot", "--quiet", "--out",
                     str(tmp_path / "out")])
    assert (code, capsys.readouterr().err) == (130, "flowfem: interrupted\n")
    assert next(calls) == call + 1  # reached, and nothing multiplied after it: the run stopped there
    assert os.listdir(tmp_path) == []  # no output, temporary directory, lock or checkpoint
    assert leftover_options() == []


# -- gmsh ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("d,h,radius,message", [
    (1, 0.005, 4.0, "were expected: it did not keep to h; use a larger h"),  # gmsh 4.15: 6469 cells, silently
    (1, 1e299, 1e300, "gmsh made no cells for the disc of radius 1e+300"),
    (1, 1e-320, 1e-319, "gmsh could not mesh the disc of radius"),
])
def test_gmsh_failures_are_one_sentence(d, h, radius, message):
    with pytest.raises(ValueError) as info:
        Space.ball(d, h, radius)
    assert message in str(info.value), str(info.value)


@pytest.mark.mpi
def test_gmsh_failure_on_the_command_line(tmp_path):
    refused(["mesh", "ball", "--radius", "1e-319", "--size", "1e-320", "--out", tmp_path / "b.msh"],
            "gmsh could not mesh the disc of radius", tmp_path)


# -- memory --------------------------------------------------------------------------------------

@pytest.fixture
def small_machine(monkeypatch):
    """A machine with 20 MB available (the real one's memory does not matter)."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 20 * 10**6)


def _fitted():
    """A fitted Result on a box of 8 x 8 cells (128 triangles) and its training data."""
    train = data.synthetic("sin", 200)
    return Problem(Space.box(1, 8, 4.0), alpha=1e-3).fit(train.x, train.y), train


@pytest.mark.parametrize("make,message", [
    (lambda: Space.box(1, 200, 4.0), "a box mesh with n = 200 cells per side (8e+04 cells) needs about 36 MB"),
    (lambda: Space.box(2, 30, 4.0), "a box mesh with n = 30 cells per side (1.6e+05 cells) needs about 73 MB"),
    (lambda: Space.sphere(7), "a sphere refined 7 times (3.3e+05 cells) needs about 229 MB"),
    (lambda: Space.circle(10**6), "a circle of 1000000 arcs (1e+06 cells) needs about 460 MB"),
    (lambda: Space.ball(1, 0.02, 4.0), "a disc mesh of radius 4 with element size h = 0.02 (2.9e+05 cells)"),
    (lambda: data.synthetic("sin", 10**6), "a synthetic data set of n = 1000000 points needs about 96 MB"),
    (lambda: particles.train(X, X[:, 0], width=10**5, comm=MPI.COMM_SELF),
     "training 100000 particles needs about 120 MB"),
    (lambda: plateau.hessian(Network(np.ones((800, 1)), np.zeros(800), np.ones(800), "relu"), X, X[:, 0]),
     "the dense Hessian of a network of width 800 (2400 parameters) needs about"),
])
def test_sizes_that_do_not_fit_are_refused_before_allocating(small_machine, make, message):
    with pytest.raises(ValueError) as info:
        make()
    text = str(info.value)
    assert message in text and "but this machine has 20 MB available: use" in text, text


def test_readouts_and_solves_that_do_not_fit(monkeypatch):
    result, _ = _fitted()
    fine = Space.box(1, 200, 4.0)  # made while the machine still has its memory
    monkeypatch.setattr(memory, "available_bytes", lambda: 20 * 10**6)
    with pytest.raises(ValueError, match=r"^a readout with about 2.1e\+06 neurons \(cells x points per cell of "
                                         r"degree 2 x subdivisions\^2\) needs about 470 MB but this machine has "
                                         "20 MB available: use fewer subdivisions or a lower quadrature degree$"):
        readout.readout(result, subdivisions=64)
    with pytest.raises(ValueError, match="^a sample of width 1000000 needs about 96 MB .*: use a smaller width=N$"):
        readout.readout(result, "sample", width=10**6)
    with pytest.raises(ValueError, match=r"^a fit on 80000 cells with elements of degree 3 \(quadrature degree 6\) "
                                         "needs about 984 MB"):
        Problem(fine, degree=3)
    train = data.synthetic("sin", 1500)
    with pytest.raises(ValueError, match="^the direct solver for n = 1500 data points and 81 dofs needs about 56 MB .*"
                                         "use solver='cg', or fewer data points$"):
        Problem(Space.box(1, 8, 4.0), alpha=1e-3).fit(train.x, train.y, solver="direct")


def test_memory_is_read_from_the_machine():
    available = memory.available_bytes()
    assert available is None or available > 0
    assert memory.amount(23.5e9) == "23.5 GB" and memory.amount(3e8) == "300 MB" and memory.amount(2e12) == "2.0 TB"
    with pytest.raises(ValueError, match="needs more than 1000 TB"):
        memory.require(20 * 4**1000, "a request", "ask for less")


@pytest.mark.mpi
def test_a_far_too_large_readout_fails_at_once(solved, tmp_path):
    """--subdivisions 500 on the default mesh reached 23.5 GB before the kernel killed it; 5000 needs
    tens of terabytes: refused in seconds with the estimate, on one rank and on two."""
    for ranks in (1, 2):
        t0 = time.perf_counter()
        line = refused(["readout", "--density", solved / "dens", "--subdivisions", "5000", "--out", tmp_path / "n.npz"],
                       "a readout with about 2e+11 neurons", tmp_path, ranks=ranks)
        assert "needs about" in line and "available" in line and "use fewer subdivisions" in line
        assert time.perf_counter() - t0 < 60
    refused(["mesh", "sphere", "--size", "20", "--out", tmp_path / "s.msh"], "needs more than 1000 TB", tmp_path)
    refused(["solve", "--data", "sin", "--n", "100000000000", "--out", tmp_path / "out"],
            "a synthetic data set of n = 100000000000 points needs about", tmp_path)


def test_the_command_line_refuses_a_readout_that_does_not_fit(small_machine, solved, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLOWFEM_DEBUG", raising=False)
    assert cli.main(["readout", "--density", str(solved / "dens"), "--subdivisions", "8",
                     "--out", str(tmp_path / "n.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs about" in err and "this machine has 20 MB available" in err
    assert os.listdir(tmp_path) == []


# -- API misuse ----------------------------------------------------------------------------------

@functools.cache
def _space():
    """One small mesh for the misuse cases (made at the first case that needs it)."""
    return Space.box(1, 8, 4.0)


MISUSE = [
    (lambda: Problem(None), r"Problem needs a flowfem Space \(e.g. Space.box\(1, 32, 4.0\)\).*got None"),
    (lambda: Problem("box"), r"Problem needs a flowfem Space .*got 'box' \(str\)"),
    (lambda: Problem(_space(), alpha="1e-4"), r"alpha must be a number > 0 .*got '1e-4' \(str\)"),
    (lambda: Problem(_space(), alpha=None), r"alpha must be a number > 0 .*got None"),
    (lambda: Problem(_space(), alpha=True), r"alpha must be a number > 0 .*got True \(bool\)"),
    (lambda: Problem(_space(), alpha=[1e-4]), r"alpha must be a number > 0 .*got \[0.0001\] \(list\)"),
    (lambda: Problem(_space(), kappa="1"), r"kappa must be a number > 0 .*got '1' \(str\)"),
    (lambda: Problem(_space(), degree=1.0), r"degree must be an integer 1, 2 or 3 .*got 1.0 \(float\)"),
    (lambda: Problem(_space(), degree="2"), r"degree must be an integer 1, 2 or 3 .*got '2' \(str\)"),
    (lambda: Problem(_space(), quadrature_degree=2.5), r"quadrature_degree must be an integer >= 0"),
    (lambda: Problem(_space(), quadrature_degree=-1), r"quadrature_degree = -1 must be >= 0"),
    (lambda: Problem(_space(), method="fast"), r"unknown data-operator method 'fast'"),
    (lambda: Problem(_space()).fit(X, None), r"fit needs targets y \(n,\) or \(n, 1\)"),
    (lambda: Problem(_space()).fit(None, X[:, 0]), r"inputs x are missing \(None\)"),
    (lambda: Space.box(1, "8"), r"^n must be a number .*got '8' \(str\)"),
    (lambda: Space.box(1.0, 8), r"the input dimension d must be an integer \(1 or 2; 3 with --domain s3\), got 1.0 \(float\)"),
    (lambda: Space.box(1, 8, radius="4"), r"^radius must be a number > 0, got '4' \(str\)"),
    (lambda: Space.ball(1, None), r"^h must be a number > 0, got None"),
    (lambda: Space.sphere("3"), r"^refinements must be a number"),
    (lambda: Space.circle(64, degree=2.0), r"geometry degree must be an integer 1 or 2, got 2.0"),
    (lambda: data.synthetic("sin", "10"), r"n must be an integer >= 1 \(the number of points\), got '10' \(str\)"),
    (lambda: data.synthetic("sin", 10.5), r"n must be an integer >= 1 .*got 10.5 \(float\)"),
    (lambda: particles.train(X, X[:, 0], width=5, lr="0.1"), r"lr must be a number > 0, got '0.1' \(str\)"),
    (lambda: particles.train(X, None, width=5), r"targets y are missing"),
    (lambda: particles.train(X, X[:, 0], width=True), r"width must be an integer >= 1 .*got True \(bool\)"),
    (lambda: particles.train(X, X[:, 0], width=5, seed=1.5), r"seed must be an integer >= 0, got 1.5 \(float\)"),
    (lambda: particles.train(X, X[:, 0], width=5, time_limit=float("nan")), r"time_limit must be a finite number > 0"),
    (lambda: data.synthetic("sin", 10, seed=-1), r"seed must be an integer >= 0, got -1"),
    (lambda: plateau.plateau_report(Network(np.ones((2, 1)), np.zeros(2), np.ones(2), "relu"), X, X[:, 0], [0.5],
                                    gtol="1e-8"), r"gtol must be a number > 0, got '1e-8' \(str\)"),
    (lambda: Network("abc", [0.0], [1.0], "relu"), r"network array W must be numbers .*got str"),
    (lambda: Network(None, None, None, "relu"), r"network array W must be numbers .*got NoneType"),
]


@pytest.mark.parametrize("call,message", MISUSE, ids=[str(i) for i in range(len(MISUSE))])
def test_api_misuse_is_refused_in_flowfems_words(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_readout_misuse():
    result, _ = _fitted()
    for kwargs, message in [
        (dict(rule="sample", width="10"), r"width must be an integer >= 1 .*got '10' \(str\)"),
        (dict(rule="sample", width=10.5), r"width must be an integer >= 1 .*got 10.5 \(float\)"),
        (dict(rule="sample", width=10, seed="a"), r"seed must be an integer >= 0, got 'a' \(str\)"),
        (dict(rule="sample", width=10, seed=-1), r"seed must be an integer >= 0, got -1"),
        (dict(rule="sample", width=True), r"width must be an integer >= 1 .*got True \(bool\)"),
        (dict(degree=1.5), r"degree must be an integer >= 0 .*got 1.5 \(float\)"),
        (dict(subdivisions="2"), r"subdivisions must be an integer >= 1, got '2' \(str\)"),
        (dict(rule="refit", alpha="x"), r"alpha must be a number >= 0 .*got 'x' \(str\)"),
    ]:
        rule = kwargs.pop("rule", "quadrature")
        with pytest.raises(ValueError, match=message):
            readout.readout(result, rule, **kwargs)


# -- messages in the reader's words --------------------------------------------------------------

def test_api_messages_name_python_arguments():
    result, _ = _fitted()
    with pytest.raises(ValueError, match=r"pass width=N \(the number"):
        readout.readout(result, "sample")
    with pytest.raises(ValueError, match=r"choose degree=K and subdivisions=M, or use rule='sample'"):
        readout.readout(result, width=10)
    with pytest.raises(ValueError) as info:
        result.predict(np.zeros((5, 2)))
    text = str(info.value)
    assert "fitted on inputs of dimension 1: give x of shape (m, 1)" in text and "mesh" not in text
    train = data.synthetic("step", 100)
    problem = Problem(_space(), alpha=1e-3, loss="logistic")
    with pytest.raises(ValueError) as info:
        problem.fit(train.x, train.y, petsc_options={"snes_max_it": 1})
    text = str(info.value)
    assert "petsc_options={'snes_max_it': '200'}" in text and "allow_unconverged=True" in text, text
    assert "--" not in text


@pytest.mark.mpi
def test_command_line_messages_name_options(tmp_path, solved):
    for args, message in [
        (["readout", "--density", solved / "dens", "--rule", "sample", "--out", tmp_path / "n.npz"],
         "pass --width N (the number of neurons to draw)"),
        (["readout", "--density", solved / "dens", "--width", "10", "--out", tmp_path / "n.npz"],
         "choose --degree K and --subdivisions M, or use --rule sample for a given width"),
        (["solve", "--data", "step", "--loss", "logistic", "--n", "100", "--mesh-size", "8", "--no-plot",
          "--petsc-option", "snes_max_it=1", "--out", tmp_path / "out"],
         "(--petsc-option snes_max_it=200), a looser rtol, or allow unconverged results (--allow-unconverged)"),
    ]:
        line = refused(args, message, tmp_path)
        assert "=N" not in line and "rule='" not in line and "_unconverged" not in line
    x = np.linspace(-1, 1, 20)
    np.savetxt(tmp_path / "x2.csv", np.column_stack([x, x, x]), delimiter=",", header="x1,x2,y", comments="")
    line = refused(["predict", "--network", solved / "net.npz", "--data", tmp_path / "x2.csv",
                    "--out", tmp_path / "p.csv"], "takes (n, 1): give 1 input column(s), x1 in a data file", tmp_path)
    assert "mesh" not in line


def test_messages_return_to_python_after_the_command(tmp_path, solved, capsys, monkeypatch):
    monkeypatch.delenv("FLOWFEM_DEBUG", raising=False)
    assert cli.main(["readout", "--density", str(solved / "dens"), "--rule", "sample",
                     "--out", str(tmp_path / "n.npz")]) == 2
    assert "--width N" in capsys.readouterr().err
    result, _ = _fitted()
    with pytest.raises(ValueError, match=r"pass width=N"):
        readout.readout(result, "sample")


# -- outputs: nothing written by a failing command ---------------------------------------------------

@pytest.mark.mpi
def test_failing_commands_leave_no_file(tmp_path, solved):
    net = solved / "net.npz"
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    x = np.linspace(-1, 1, 20)
    np.savetxt(tmp_path / "x2.csv", np.column_stack([x, x, x]), delimiter=",", header="x1,x2,y", comments="")
    for args, message in [
        (["predict", "--network", net, "--data", tmp_path / "x2.csv", "--out", tmp_path / "p.csv"], "takes (n, 1)"),
        (["predict", "--network", net, "--data", "sin", "--out", tmp_path / "no" / "p.csv"],
         "its directory does not exist"),
        (["predict", "--network", net, "--data", "sin", "--out", tmp_path / "adir"], "it is a directory"),
        (["predict", "--network", net, "--data", "sin", "--out", tmp_path / "afile" / "p.csv"],
         "is a file, not a directory"),
        (["readout", "--density", solved / "dens", "--out", tmp_path / "adir"], "it is a directory"),
        (["readout", "--density", solved / "dens", "--rule", "sample", "--width", "0", "--out", tmp_path / "n.npz"],
         "--width must be an integer >= 1 (the number of neurons to draw), got 0"),
        (["landscape", "--network", net, "--data", "sin", "--neuron", "100000", "--json", tmp_path / "r.json"],
         "--neuron 100000 is out of range"),
        (["landscape", "--network", net, "--data", "sin", "--json", tmp_path / "adir"], "it is a directory"),
        (["mesh", "box", "--out", tmp_path / "no" / "m.msh"], "its directory does not exist"),
        (["solve", "--data", "sin", "--out", tmp_path / "afile" / "out"], "a file stands where a directory belongs"),
    ]:
        refused(args, message, tmp_path)
    assert sorted(os.listdir(tmp_path / "adir")) == []


@pytest.mark.mpi
def test_numbers_on_the_command_line_are_named_as_options(tmp_path, solved):
    """Checks shared with the API name the option (--time-limit), not the Python argument (time_limit),
    and run before the work (compare's particle settings before its FE solve)."""
    for args, message in [
        (["solve", "--data", "sin", "--seed", "-1", "--out", tmp_path / "out"],
         "--seed must be an integer >= 0, got -1"),
        (["predict", "--network", solved / "net.npz", "--data", "sin", "--seed", "-2"],
         "--seed must be an integer >= 0"),
        (["landscape", "--network", solved / "net.npz", "--data", "sin", "--gtol", "nan"],
         "--gtol must be a finite number > 0, got nan"),
        (["compare", "--data", "sin", "--time-limit", "-1", "--out", tmp_path / "out"],
         "--time-limit must be a finite number > 0, got -1.0"),
        (["compare", "--data", "sin", "--mmd-bandwidth", "0", "--out", tmp_path / "out"],
         "--mmd-bandwidth must be a finite number > 0, got 0.0"),
        (["compare", "--data", "sin", "--weight-decay", "-1", "--out", tmp_path / "out"],
         "--weight-decay must be a finite number >= 0, got -1.0"),
    ]:
        refused(args, message, tmp_path)


def test_a_failing_write_leaves_nothing(tmp_path, monkeypatch):
    """A disk that fills up while writing: one sentence naming the file, no temporary file left."""
    def full(path, **arrays):
        with open(path, "wb") as f:
            f.write(b"PK")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(ValueError, match=r"cannot write '.*net.npz': No space left on device"):
        Network(np.ones((2, 1)), np.zeros(2), np.ones(2), "relu").save(tmp_path / "net.npz")
    assert os.listdir(tmp_path) == []


class _NumpyWithoutSqrt:
    """numpy, except that sqrt fails: an error after the predictions are computed (the RMSE)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def sqrt(value):
        raise FloatingPointError("overflow in the RMSE")


def test_predict_writes_only_after_computing(tmp_path, solved, monkeypatch, capsys):
    """predict computes everything before it writes: a failure in the RMSE leaves no CSV behind (before,
    the CSV was written first)."""
    monkeypatch.delenv("FLOWFEM_DEBUG", raising=False)
    monkeypatch.setattr(cli, "np", _NumpyWithoutSqrt())
    assert cli.main(["predict", "--network", str(solved / "net.npz"), "--data", "sin",
                     "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err == "flowfem: error: FloatingPointError: overflow in the RMSE\n"
    assert os.listdir(tmp_path) == []
