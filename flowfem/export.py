"""The network's exchange formats: ONNX, safetensors and PyTorch's ``.pt`` state dict.

A :class:`flowfem.network.Network` f_N(x) = sum_i a_i sigma(W_i . x + b_i) is the two-layer
perceptron ``nn.Sequential(nn.Linear(d, N), sigma, nn.Linear(N, m))`` (m outputs; m = 1 for
a network with a (N,)) whose state dict is

    0.weight = W (N, d),   0.bias = b (N,),   2.weight = a^T (m, N),   2.bias = 0 (m,),

all float64. Every format below stores exactly these four arrays under these names, so a file
loads into that ``nn.Sequential`` (or any runtime) without renaming, and its outputs have shape
(batch, m), as ``nn.Sequential`` gives them (``Network.predict`` gives (batch,) for one output).
A classifier of C classes (a softmax fit's readout) exports its logits, m = C, without a softmax
layer (what ``nn.CrossEntropyLoss`` and argmax take); its class labels are in the metadata
(:func:`metadata`), not in the graph.

* ONNX (:func:`to_onnx`): the graph ``x -> Gemm(0.weight, 0.bias) -> sigma -> Gemm(2.weight,
  2.bias) -> f``, input ``x`` (batch, d) and output ``f`` (batch, m) in float64, opset
  :data:`OPSET` (onnxruntime runs it on any CPU), built with ``onnx.helper`` and checked by
  ``onnx.checker``. sigma is written with operators that onnxruntime evaluates in float64 and
  that give flowfem's values to rounding (``flowfem.activations``):

  - relu: ``Relu``;
  - leaky_relu:s: ``Max(z, s z)`` with s a float64 constant (``LeakyRelu`` holds its slope as a
    float32 attribute, which moves f by 1e-9 relative for s = 0.1);
  - tanh, sigmoid: ``Tanh``, ``Sigmoid``;
  - softplus: log(1 + e^z) = max(z, 0) + log1p(e^-|z|), never overflowing, with log1p(t) =
    t log(1 + t) / ((1 + t) - 1) (exact to rounding also where t < 1e-16 and log(1 + t)
    alone would give 0). ONNX's ``Softplus`` has no float64 kernel in onnxruntime, and
    ``log(1 + exp(z))`` is inf for z > 709;
  - monomial:k: ``Pow(z, k)``.

  The model's metadata (``metadata_props``) hold :func:`metadata`.
* safetensors (:func:`to_safetensors`, :func:`from_safetensors`): the four arrays, float64, and
  :func:`metadata` as the header's ``__metadata__``; :func:`from_safetensors` rebuilds the
  Network (the activation from the metadata).
* ``.pt`` (:func:`to_torch_file`): ``torch.save`` of ``Network.state_dict(tensors=True)``, for
  ``model.load_state_dict(torch.load(path))``; needs torch (ImportError otherwise). The
  activation is not in a state dict: it is the ``nn.Sequential``'s middle module.

Every writer writes atomically (:func:`flowfem.files.replacing`: a temporary file renamed over
``path``, safe when every MPI rank writes the same file) and replaces an existing file, like
``Network.save``; ``flowfem export`` refuses an existing file unless ``--force``. ValueError for
a path that cannot be written, or whose suffix is not its format's (:data:`FORMATS`; readers and
people take a file's format from its suffix: ONNX in ``x.pt`` would be opened as PyTorch), before
anything is written.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from flowfem.arguments import spell, unknown
from flowfem.files import check_readable, named_for, replacing
from flowfem.network import Network
from flowfem.outputs import version

OPSET = 17  # ONNX 1.12, IR version 8: onnxruntime runs it since its release 1.12
ONNX_LIMIT = 2**31 - 2**24  # protobuf's 2 GiB per message, less room for the graph and the metadata
FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors", "torch": ".pt"}  # format -> file suffix
KEYS = ("0.weight", "0.bias", "2.weight", "2.bias")


def metadata(net: Network) -> dict[str, str]:
    """The text stored beside the arrays: the activation name (``flowfem.activations``, e.g.
    ``leaky_relu:0.1``, from which :func:`from_safetensors` rebuilds sigma), the layout and the
    flowfem version that wrote the file. A classifier (:attr:`Network.classes`) adds ``outputs``
    ``logits`` and ``classes``, the labels of the output columns in order as a JSON list (read back
    by :func:`from_safetensors`): the graph's output is the logits f (batch, C), with no softmax
    layer, as nn.CrossEntropyLoss expects; argmax over them is the predicted class, softmax the
    probabilities. A network that records its loss (:attr:`Network.loss`) adds ``loss``
    (squared, logistic or softmax); a logistic network also ``outputs`` ``score``: f is the logit of
    P(y = +1 | x) = 1 / (1 + e^-f) (nn.BCEWithLogitsLoss on the targets (y + 1) / 2), its sign the
    label -1 or +1, not a regression value."""
    meta = {
        "format": "flowfem.network",
        "activation": net.activation.name,
        "layout": f"nn.Sequential(nn.Linear({net.input_dim}, {net.width}), {net.activation.name}, "
                  f"nn.Linear({net.width}, {net.outputs})), float64",
        "flowfem_version": version(),
    }
    if net.loss is not None:
        meta["loss"] = net.loss
    if net.classifier:
        meta.update(outputs="logits", classes=json.dumps(net.classes.tolist()))
    elif net.loss == "logistic":
        meta["outputs"] = "score"
    return meta


def _activation_nodes(net: Network, z: str, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``out`` = sigma(``z``) elementwise in float64, and their constants."""
    act = net.activation

    def const(name: str, value: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, dtype=np.float64), name)

    node = helper.make_node
    if act.name == "relu":
        return [node("Relu", [z], [out])], []
    if act.name.startswith("leaky_relu"):
        return [node("Mul", [z, "slope"], ["slope_z"]), node("Max", [z, "slope_z"], [out])], \
            [const("slope", act.slope)]
    if act.name in ("tanh", "sigmoid"):
        return [node(act.name.capitalize(), [z], [out])], []
    if act.name == "softplus":
        return [
            node("Relu", [z], ["z_plus"]),
            node("Abs", [z], ["abs_z"]),
            node("Neg", ["abs_z"], ["minus_abs_z"]),
            node("Exp", ["minus_abs_z"], ["t"]),  # t = e^-|z| in (0, 1]: no overflow
            node("Add", ["one", "t"], ["one_plus_t"]),
            node("Log", ["one_plus_t"], ["log_one_plus_t"]),
            node("Sub", ["one_plus_t", "one"], ["t_rounded"]),  # (1 + t) - 1: t as 1 + t holds it
            node("Div", ["t", "t_rounded"], ["ratio"]),
            node("Mul", ["log_one_plus_t", "ratio"], ["log1p_large"]),
            node("Equal", ["one_plus_t", "one"], ["t_lost"]),  # 1 + t == 1: log1p(t) = t to rounding
            node("Where", ["t_lost", "t", "log1p_large"], ["log1p_t"]),
            node("Add", ["z_plus", "log1p_t"], [out]),
        ], [const("one", 1.0)]
    return [node("Pow", [z, "power"], [out])], [const("power", float(act.power))]


def onnx_model(net: Network) -> onnx.ModelProto:
    """The network as a checked ONNX model: input ``x`` (batch, d), output ``f`` (batch, m),
    float64, opset :data:`OPSET`, initializers named as the state dict (see the module docstring).
    Run it with ``onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})``.
    ValueError, before any work, for a network whose weights exceed :data:`ONNX_LIMIT` bytes: an
    ONNX model is one protobuf message, which cannot hold 2 GiB (safetensors has no such limit)."""
    weights = 8 * (net.W.size + net.width + net.a.size + net.outputs)
    if weights > ONNX_LIMIT:
        raise ValueError(f"a network of width {net.width} with d = {net.input_dim} inputs has {weights / 2**30:.2f} GiB "
                         "of float64 weights, beyond the 2 GiB an ONNX file (one protobuf message) can hold: "
                         "use --format safetensors (or torch)")
    initializers = [numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float64), k)
                    for k, v in net.state_dict().items()]
    sigma, constants = _activation_nodes(net, "z", "h")
    nodes = [
        helper.make_node("Gemm", ["x", "0.weight", "0.bias"], ["z"], transB=1),  # z = x W^T + b
        *sigma,
        helper.make_node("Gemm", ["h", "2.weight", "2.bias"], ["f"], transB=1),  # f = h a + 0
    ]
    graph = helper.make_graph(
        nodes, "flowfem_network",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", net.input_dim])],
        [helper.make_tensor_value_info("f", TensorProto.DOUBLE, ["batch", net.outputs])],
        initializer=initializers + constants,
        doc_string=f"f(x) = sum_i a_i {net.activation.name}(W_i . x + b_i), a flowfem network",
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="flowfem", producer_version=version())
    helper.set_model_props(model, metadata(net))
    onnx.checker.check_model(model, full_check=True)  # also infers and checks every shape
    return model


def check_path(path: str | os.PathLike, format: str) -> None:
    """ValueError unless ``path`` ends in the suffix of ``format`` (:data:`FORMATS`, case ignored), naming the
    format the suffix says (then also as the other fix) and the path to give: its last suffix replaced by the
    format's, or dropped where the name ends in the format's suffix before it (``x.onnx.pt`` -> ``x.onnx``).
    A dot-file's name is its suffix: ``.onnx`` is an ONNX file, ``.pt`` a torch one (which os.path.splitext
    calls suffix-less), so that every path this suggests passes."""
    suffix = FORMATS[format]
    path = os.fspath(path)
    fix = named_for(path, suffix)
    if fix is None:
        return
    name = os.path.basename(path)
    given = name[name.rfind("."):] if "." in name else ""  # the last suffix
    other = next((f for f, s in FORMATS.items() if s == given.lower()), None)
    wanted = f"{spell('format', repr(format))} writes {suffix}"
    raise ValueError(f"{spell('path', repr(path))} names " + (
        f"a {other} file, but {wanted}: give {spell('path', repr(fix))}, or {spell('format', repr(other))}"
        if other else f"no {format} file: {wanted}; give {spell('path', repr(fix))}"))


def to_onnx(net: Network, path: str | os.PathLike) -> None:
    """Write :func:`onnx_model` to ``path`` (.onnx), atomically (ValueError for another suffix, :func:`check_path`)."""
    check_path(path, "onnx")
    model = onnx_model(net)
    with replacing(path, ".onnx") as tmp:
        onnx.save(model, tmp)


def to_safetensors(net: Network, path: str | os.PathLike) -> None:
    """Write the state dict (keys ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``, float64) and
    :func:`metadata` to ``path`` (.safetensors), atomically (ValueError for another suffix, :func:`check_path`)."""
    check_path(path, "safetensors")
    tensors = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in net.state_dict().items()}
    content = save(tensors, metadata=metadata(net))
    # written by open(), not save_file, which creates its own temporary file of mode 0600: the
    # file follows the umask like every other flowfem output
    with replacing(path, ".safetensors") as tmp, open(tmp, "wb") as f:
        f.write(content)


def from_safetensors(path: str | os.PathLike) -> Network:
    """The Network in a file written by :func:`to_safetensors` (or any file with the same keys,
    shapes and an ``activation`` entry in its metadata), with its ``classes`` and ``loss`` if the
    metadata hold them.

    Raises ValueError ``cannot read network file 'PATH': REASON`` for a file that is missing or
    not safetensors, and names what is wrong for missing keys or metadata, shapes that do not fit
    W (N, d), b (N,), 2.weight (m, N), 2.bias (m,), or a nonzero ``2.bias`` (a flowfem network has
    no output bias). A 2.weight of m >= 2 rows gives a network of m outputs (a = 2.weight^T).
    """
    hint = "write it with flowfem export --format safetensors or flowfem.export.to_safetensors"
    check_readable(path, "network file", hint)
    path = os.fspath(path)
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"cannot read network file {path!r}: not a safetensors file ({e}); {hint}") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing or "activation" not in meta:
        what = f"tensors {missing}" if missing else "the metadata entry 'activation'"
        raise ValueError(f"{path}: not a flowfem network, {what} missing (expected {', '.join(KEYS)} "
                         f"and metadata activation; {hint})")
    a, bias = arrays["2.weight"], arrays["2.bias"]
    if a.ndim != 2 or a.shape[0] == 0 or bias.shape != (a.shape[0],):
        raise ValueError(f"{path}: 2.weight{a.shape} and 2.bias{bias.shape} must be (m, N) and (m,): "
                         "m outputs")
    if np.any(bias != 0):
        raise ValueError(f"{path}: 2.bias is {bias.tolist()!r}, but a flowfem network has no output bias (0)")
    try:
        classes = np.array(json.loads(meta["classes"])) if "classes" in meta else None
        return Network(arrays["0.weight"], arrays["0.bias"], a.T, meta["activation"], classes=classes,
                       loss=meta.get("loss"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def to_torch_file(net: Network, path: str | os.PathLike) -> None:
    """``torch.save(net.state_dict(tensors=True), path)`` (.pt), atomically. ValueError for another suffix
    (:func:`check_path`), ImportError saying ``pip install torch`` without torch, before anything is written."""
    check_path(path, "torch")
    state = net.state_dict(tensors=True)
    import torch  # present: state_dict(tensors=True) raised the ImportError otherwise

    with replacing(path, ".pt") as tmp:
        torch.save(state, tmp)


def write(net: Network, path: str | os.PathLike, format: str) -> None:
    """Write ``net`` to ``path`` in ``format``, one of :data:`FORMATS`; ValueError for another format or a
    ``path`` whose suffix is not the format's (:func:`check_path`), before anything is written."""
    writers = {"onnx": to_onnx, "safetensors": to_safetensors, "torch": to_torch_file}
    if format not in writers:
        raise ValueError(unknown("export format", format, list(FORMATS)))
    writers[format](net, path)
