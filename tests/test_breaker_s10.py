"""Breaker findings of session 10 (on fa9405e..4bf1825), each test failing before its fix.

* ``parameterised`` split NAME:PARAMETER without stripping around ':': ``' leaky_relu : 0.1'`` was "unknown
  activation ... did you mean 'leaky_relu'?" while ``'leaky_relu: 0.1'`` passed (``' bdf : 2'``, ``' gaussian : 2'``
  the same).
* A name that takes no parameter dropped one silently: ``--weight uniform:2`` (``uniform:`` said "the scale after
  ':' must be a number, e.g. gaussian:0.5"), ``--initial zero:1``.
* ``--initial gaussian::2`` dropped the empty part and read A = 2 as the scale S; ``gaussian:`` and ``gaussian:1:``
  passed.
* inf was "must be positive": the Gaussian weight's and initial density's scale, ``flow --tau inf``; and
  ``flow --tau-max 0`` / ``--max-steps 0`` were refused only after the data were read and the mesh built.
* ``export.check_path`` refused the dot-file ``.onnx`` (suggesting ``.onnx.onnx``) and suggested ``x.d/.onnx`` for
  ``x.d/.onnx.pt``, a path it refuses itself.
"""

import re

import numpy as np
import pytest

from conftest import refused_by_cli
from flowfem import cli, export
from flowfem.activations import activation
from flowfem.flow.schemes import BDF, parse_scheme
from flowfem.network import Network
from flowfem.sobolev import Weight

FIT = ["--data", "sin", "--n", "40", "--mesh-size", "4", "--quiet", "--no-plot"]


# -- 1. NAME : PARAMETER with spaces around ':' ---------------------------------------------------------------
def test_spaces_around_the_colon_are_stripped_from_name_and_parameter():
    assert activation(" leaky_relu : 0.1").slope == 0.1
    assert activation("Monomial :2").name == activation("monomial:2").name
    assert parse_scheme(" bdf : 2") == (BDF, "2")
    assert Weight.parse(" Gaussian : 2 ") == Weight("gaussian", 2.0)
    with pytest.raises(ValueError, match="^activation 'relu : 1': relu takes no ':' argument; write relu$"):
        activation("relu : 1")


# -- 2. a parameter of a name that takes none -----------------------------------------------------------------
@pytest.mark.parametrize("spec", ["uniform:2", "uniform:", " uniform : 1"])
def test_a_weight_without_a_parameter_refuses_one(spec):
    with pytest.raises(ValueError, match=f"^weight '{spec}': uniform takes no ':' argument; write uniform$"):
        Weight.parse(spec)


@pytest.mark.parametrize("option,value,said", [
    ("--weight", "uniform:2", "weight 'uniform:2': uniform takes no ':' argument; write uniform"),
    ("--activation", "tanh:", "activation 'tanh:': tanh takes no ':' argument; write tanh"),
])
def test_the_command_refuses_a_parameter_of_a_name_that_takes_none(tmp_path, capsys, option, value, said):
    out = tmp_path / "out"
    assert refused_by_cli(["solve", *FIT, f"{option}={value}", "--out", str(out)], capsys) == f"flowfem: error: {said}"
    assert not out.exists()


# -- 3. the initial density's spec ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def H():
    from flowfem.sobolev import WeightedH1
    from flowfem.space import Space

    return WeightedH1(Space.box(1, 4, 2.0))


@pytest.mark.parametrize("spec,said", [
    ("zero:1", "zero takes no ':' argument; write zero"),
    ("Zero : 1", "zero takes no ':' argument; write zero"),
    ("gaussian:", "nothing follows ':'; write gaussian, gaussian:S or gaussian:S:A"),
    ("gaussian::2", "write gaussian, gaussian:S or gaussian:S:A"),  # was A = 2 read as the scale
    ("gaussian:1:", "write gaussian, gaussian:S or gaussian:S:A"),
    ("gaussian:1:2:3", "write gaussian, gaussian:S or gaussian:S:A"),
])
def test_an_initial_density_spec_with_an_empty_or_ignored_parameter_is_refused(H, spec, said):
    from flowfem.flow.initial import initial_density

    with pytest.raises(ValueError, match=f"^initial density '{re.escape(spec)}': {re.escape(said)}"):
        initial_density(H, spec)


def test_an_initial_gaussian_reads_scale_and_amplitude_with_spaces(H):
    from flowfem.flow.initial import gaussian, initial_density

    u, v = initial_density(H, " Gaussian : 0.5 : 2"), gaussian(H, 0.5, 2.0)
    assert np.array_equal(u.x.array, v.x.array) and np.max(u.x.array) > 1.5


def test_the_flow_command_refuses_gaussian_with_an_empty_scale(tmp_path, capsys):
    out = tmp_path / "out"
    line = refused_by_cli(["flow", *FIT, "--max-steps", "2", "--initial=gaussian::2", "--out", str(out)], capsys)
    assert line.startswith("flowfem: error: initial density 'gaussian::2': write gaussian"), line
    assert not out.exists()


# -- 4. inf is no positive scale or step, and the step arguments are checked before the work -------------------
def test_an_infinite_gaussian_scale_is_refused_as_not_finite(H):
    from flowfem.flow.initial import initial_density

    with pytest.raises(ValueError, match=r"^the Gaussian weight's scale s must be a finite number > 0, got inf$"):
        Weight.parse("gaussian:inf")
    with pytest.raises(ValueError, match=r"scale s must be a number > 0, got '2' \(str\)$"):
        Weight("gaussian", "2")
    with pytest.raises(ValueError, match=r"^the Gaussian initial density's scale s must be a finite number > 0, "
                                         r"got inf$"):
        initial_density(H, "gaussian:1e400")


@pytest.mark.parametrize("option,value,said", [
    ("--tau", "inf", "--tau must be a finite number > 0 (the first time step), got inf"),
    ("--tau", "nan", "--tau must be a finite number > 0 (the first time step), got nan"),
    ("--growth", "inf", "--growth must be a finite number >= 1 (the step growth factor; 1: constant steps), got inf"),
    ("--tau-max", "0", "--tau-max must be a number > 0 (the largest time step; inf: no limit), got 0.0"),
    ("--max-steps", "0", "--max-steps must be an integer >= 1, got 0"),
    ("--tol", "0", "--tol must be a number with 0 < --tol < 1 (the relative distance ||u - u*|| / ||u*|| to stop "
                   "at), e.g. 1e-6, got 0.0"),
])
def test_the_flow_steps_are_refused_by_the_runs_own_check_before_the_data_are_read(tmp_path, capsys, option,
                                                                                   value, said):
    out = tmp_path / "out"
    missing = str(tmp_path / "missing.csv")  # read after the check: its error would come first otherwise
    line = refused_by_cli(["flow", "--data", missing, "--quiet", "--no-plot", f"{option}={value}", "--out", str(out)],
                          capsys)
    assert line == f"flowfem: error: {said}"
    assert not out.exists()


# -- 5. the suffix of an exported file ------------------------------------------------------------------------
@pytest.fixture
def net():
    rng = np.random.default_rng(0)
    return Network(rng.standard_normal((3, 1)), rng.standard_normal(3), rng.standard_normal(3), activation("relu"))


def test_a_dot_file_named_by_the_suffix_is_written(tmp_path, net):
    export.write(net, tmp_path / ".safetensors", "safetensors")
    back = export.from_safetensors(tmp_path / ".safetensors")
    assert np.array_equal(back.W, net.W) and np.array_equal(back.a, net.a)


@pytest.mark.parametrize("path", ["x.d/.onnx.pt", ".pt", "x.", "x", "x.d/y", ".onnx.", "x.npz",
                                  "a b.PT", "x.onnx.pt", "x.d/.safetensors.pt"])
@pytest.mark.parametrize("format", ["onnx", "safetensors"])
def test_every_path_check_path_suggests_passes_it(path, format):
    with pytest.raises(ValueError) as refusal:
        export.check_path(path, format)
    fix = re.search(r"give path='([^']*)'", str(refusal.value)).group(1)
    export.check_path(fix, format)  # no ValueError
