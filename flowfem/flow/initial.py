"""Initial densities of the flow: ``zero``, ``gaussian[:S[:A]]``, a saved density (``density:PATH``, a
density.npz on the same mesh) or a finite network (``network:PATH``) projected onto the mesh
(:func:`flowfem.measure.project_network`). An m-output flow starts from m densities
(:func:`initial_densities`)."""

from __future__ import annotations

import os

import numpy as np

from flowfem.mpi import on_root  # first: loads MPI before dolfinx

import dolfinx.fem  # noqa: E402

from flowfem.activations import activation as _activation  # noqa: E402
from flowfem.arguments import bounded, closest, parameterised, read_number  # noqa: E402
from flowfem.files import read_npz  # noqa: E402
from flowfem.io import fill_by_coordinates, read_density_file  # noqa: E402
from flowfem.measure import project_network  # noqa: E402
from flowfem.sobolev import WeightedH1  # noqa: E402


KINDS = ("zero", "gaussian", "density", "network")
GAUSSIAN = "gaussian, gaussian:S or gaussian:S:A (scale S > 0, amplitude A), e.g. gaussian:0.5:2"


def gaussian(H: WeightedH1, scale: float = 1.0, amplitude: float = 1.0) -> dolfinx.fem.Function:
    """u0(theta) = A exp(-|theta|^2 / (2 s^2)): the density of the usual initialisation law
    N(0, s^2 I) up to its normalisation (on the circle and sphere, |theta| = 1: a constant)."""
    bounded("the Gaussian initial density's scale s", scale, 0, strict=True)
    if not np.isfinite(amplitude):
        raise ValueError(f"the Gaussian initial density's amplitude {amplitude} must be finite")
    u = H.function("u0")
    gdim = H.space.gdim
    u.interpolate(lambda x: amplitude * np.exp(-np.sum(x[:gdim] ** 2, axis=0) / (2 * scale**2)))
    u.x.scatter_forward()
    return u


def density_from_file(H: WeightedH1, path: str, outputs: int = 1, activation=None,
                      scaling=None) -> list[dolfinx.fem.Function]:
    """The densities of a density.npz (flowfem solve/flow) on the same mesh, matched dof by dof through the
    coordinates: one per column of its ``u`` ((ndofs,) or (ndofs, m)), or ``outputs`` copies of a
    one-column density. ValueError (collective) for a file of another number of outputs, of another
    activation than ``activation`` (None: not checked), or whose inputs were scaled otherwise than the
    flow's (``scaling``, as :func:`initial_densities`): its neurons (w, b) would be read in other units."""
    data = on_root(H.space.comm, lambda: read_density_file(path, {"theta", "u"}, "the initial density"))
    _check_units(data, os.fspath(path), activation, scaling)
    columns = [data["u"]] if data["u"].ndim == 1 else list(data["u"].T)
    if len(columns) == 1:
        columns = columns * outputs
    if len(columns) != outputs:
        raise ValueError(f"the initial density {os.fspath(path)!r} holds {len(columns)} outputs, these data have "
                         f"{outputs}: start from a density of one output or of {outputs}")
    us = []
    for column in columns:
        u = H.function("u0")
        fill_by_coordinates(u, data["theta"], column, f"the initial density {os.fspath(path)!r}",
                            "it was computed on a different mesh or element degree; use the same --domain, "
                            "--mesh-size and --degree")
        us.append(u)
    return us


def _check_units(data: dict, path: str, activation, scaling) -> None:
    """ValueError unless the density file ``data`` was fitted with ``activation`` (if given and recorded)
    and on inputs scaled as ``scaling`` (a Standardisation, or None for raw inputs; a file without
    input_mean and input_scale was fitted on raw inputs, or written before flowfem recorded them)."""
    if activation is not None and "activation" in data:
        name = _activation(activation).name
        if str(data["activation"]) != name:
            raise ValueError(f"the initial density {path!r} was fitted with {data['activation']}, this flow uses "
                             f"{name}: start from a density of the same --activation")
    mean, scale = data.get("input_mean"), data.get("input_scale")

    def units(m, s):
        if m is None or s is None:
            return "raw inputs x"
        show = dict(precision=6, threshold=6, max_line_width=10**6, separator=", ")
        return (f"inputs standardised by mean {np.array2string(np.asarray(m), **show)}, scale "
                f"{np.array2string(np.asarray(s), **show)}")

    ours = (None, None) if scaling is None else (scaling.mean, scaling.scale)
    same = ((mean is None) == (ours[0] is None)
            and (mean is None or (np.shape(mean) == np.shape(ours[0]) and np.shape(scale) == np.shape(ours[1])
                                  and np.allclose(mean, ours[0], rtol=1e-10, atol=1e-12 * np.max(np.abs(scale)))
                                  and np.allclose(scale, ours[1], rtol=1e-10, atol=0.0))))
    if not same:  # (w, b) on the mesh act on the file's units: w.z + b means another neuron on other units
        raise ValueError(f"the initial density {path!r} was fitted on {units(mean, scale)}, this flow on "
                         f"{units(*ours)}: its neurons (w, b) would act on other units; start from a density of "
                         "a solve or flow on the same --data, --n, --seed and --test-data (or from its network: "
                         "network:PATH is mapped to this flow's units)")


def initial_density(H: WeightedH1, spec: str = "zero", activation=None) -> dolfinx.fem.Function:
    """u0 from a spec: ``zero``, ``gaussian[:S[:A]]``, ``density:PATH`` (a density.npz on this mesh) or
    ``network:PATH`` (a network .npz, projected); a bare PATH is read as whichever of the two it is.
    ValueError (on every rank) for a bad spec or file, or a file of several outputs."""
    return initial_densities(H, spec, activation, 1)[0]


def initial_densities(H: WeightedH1, spec: str = "zero", activation=None,
                      outputs: int = 1, scaling=None) -> list[dolfinx.fem.Function]:
    """The m = ``outputs`` initial densities of an m-output flow from one spec (as :func:`initial_density`):
    ``zero`` and ``gaussian`` give m copies; a density file or a network of m outputs gives its m
    densities (column k of u; the projection of output k's weights a[:, k]), one of a single output m
    copies. ValueError (on every rank) for a bad spec or file, or a file of another number of outputs.

    ``scaling``: the :class:`flowfem.scaling.Standardisation` z = (x - m) / s of the flow's inputs (a real
    data set), whose mesh holds neurons (w, b) for z. A network file takes raw inputs x (readout folds
    the scaling into it), and W x + b = (W s) z + (b + W m): it is projected as (W s, b + W m). A density
    file's neurons act on the units it was fitted on: it must record the same scaling (ValueError
    otherwise, as for another activation than ``activation``; :func:`density_from_file`)."""
    spec = str(spec).strip()
    kind, _, arg = spec.partition(":")
    kind_l = kind.strip().lower()
    comm = H.space.comm
    if kind_l in ("zero", "gaussian"):  # (not a path: parameterised lowers the case)
        kind_l, arg = parameterised("initial density", spec, {"gaussian": GAUSSIAN}, plain=("zero",))
    if kind_l == "zero":
        return [H.function("u0") for _ in range(outputs)]
    if kind_l == "gaussian":
        parts = [] if arg is None else arg.split(":")
        try:  # an empty part ('gaussian::2') is refused: dropping it would read A as S
            values = [read_number(p) for p in parts]
        except ValueError:
            raise ValueError(f"initial density {spec!r}: write {GAUSSIAN}") from None
        if len(values) > 2:
            raise ValueError(f"initial density {spec!r}: write {GAUSSIAN}")
        return [gaussian(H, *values) for _ in range(outputs)]
    if kind_l in ("density", "network"):
        path = arg
    else:
        path, kind_l = spec, None
    if not on_root(comm, lambda: os.path.exists(path)):
        guess = closest(kind, KINDS) if kind_l is None else None  # 'gausian' is sooner a misspelt kind than a file
        raise ValueError(f"initial density {spec!r}: no file {path!r};"
                         + (f" did you mean {guess!r}?" if guess else "")
                         + " use zero, gaussian[:S[:A]], density:PATH or network:PATH")
    if kind_l is None:
        def sniff():
            keys = set(read_npz(path, "the initial density", "give a density.npz of flowfem solve or a network "
                                "of flowfem readout"))
            if {"theta", "u"} <= keys:
                return "density"
            if {"W", "b", "a"} <= keys:
                return "network"
            raise ValueError(f"{path!r} is neither a density (theta, u) nor a network (W, b, a)")

        kind_l = on_root(comm, sniff) if not os.path.isdir(path) else "density"
    if kind_l == "density":
        return density_from_file(H, path, outputs, activation, scaling)
    from flowfem.network import Network

    def read():  # broadcast plain arrays: an Activation holds lambdas, which do not pickle
        net = Network.load(path)
        return net.W, net.b, net.a, net.activation.name

    W, b, a, name = on_root(comm, read)
    if scaling is not None:  # the network's neurons in the flow's standardised units (docstring)
        W, b = W * scaling.scale, b + W @ scaling.mean
    columns = [a] if a.ndim == 1 else list(a.T)
    if len(columns) == 1:
        columns = columns * outputs
    if len(columns) != outputs:
        raise ValueError(f"initial density {spec!r}: the network has {len(columns)} outputs, these data have "
                         f"{outputs}: start from a network of one output or of {outputs}")
    return [project_network(H, Network(W, b, column, name), activation) for column in columns]
