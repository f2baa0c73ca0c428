"""The finite shallow network f_N(x) = sum_i a_i sigma(w_i . x + b_i).

A small NumPy class that runs anywhere (no dolfinx, no MPI). It is what
:mod:`flowfem.readout` produces from a density and what
:mod:`flowfem.particles` trains. Saved as ``.npz`` with arrays only
(``W`` (N, d), ``b`` (N,), ``a`` (N,), ``activation`` a string), loaded with
``allow_pickle=False``. :meth:`Network.state_dict` gives the layout of
``torch.nn.Sequential(nn.Linear(d, N), act, nn.Linear(N, 1))``; :mod:`flowfem.export` writes
it as ONNX, safetensors or a ``.pt`` state dict. A network fitted on standardised inputs and
folded back to raw ones (:meth:`flowfem.scaling.Standardisation.fold`) records that scaling as
``input_scaling``, saved as the arrays ``input_mean`` and ``input_scale`` (d,): a record only,
since W and b already act on raw inputs.

m outputs (a multi-output fit, R^d -> R^m): ``a`` is (N, m), column k the output weights of
output k, f_N(x)_k = sum_i a_ik sigma(w_i . x + b_i); the readout layer is ``nn.Linear(N, m)``
(``2.weight`` = a^T, (m, N)) and :meth:`Network.predict` returns (n, m). One output keeps
``a`` (N,) and predictions (n,), so nothing changes for it.

A classifier (read out of a softmax fit, :class:`flowfem.problem.ClassifierResult`) has C >= 2
outputs, the logits f_c, and records its labels as ``classes`` (C,) (numbers or strings, sorted,
column c of ``a`` is class classes[c]), saved as the array ``classes``. As scikit-learn's
classifiers: ``net(x)`` and :meth:`Network.decision_function` give the logits (n, C) (the exports
too: :mod:`flowfem.export`), :meth:`Network.predict` the labels classes[argmax_c f_c] (n,),
:meth:`Network.predict_proba` the softmax probabilities (n, C).

A network read out of a density (:func:`flowfem.readout.readout`) or trained by
:func:`flowfem.particles.train` records the loss it was fitted with as ``loss`` (squared,
logistic or softmax), saved as the string array ``loss``: a logistic network's f is a score whose
sign is the label -1/+1, so ``flowfem predict`` reports its accuracy, not an RMSE. None: not
recorded (files written before flowfem recorded it, networks built by hand).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from flowfem.activations import Activation, activation
from flowfem.data import check
from flowfem.files import check_writable, read_npz, replacing
from flowfem.loss import loss as _loss
from flowfem.operator.features import evaluate
from flowfem.scaling import Standardisation


@dataclass
class Network:
    """f_N(x) = sum_i a_i sigma(W_i . x + b_i) with W (N, d), b (N,), a (N,); or a (N, m) for m >= 2
    outputs (an a of shape (N, 1) is one output and becomes (N,)). ``input_scaling``: the
    standardisation folded into W and b, if any (recorded, not applied again). ``classes``: a
    classifier's C labels (C,), one per column of a (None: a regression network). ``loss``: the loss
    it was fitted with, squared, logistic (one output, labels -1/+1 by sign f) or softmax (with
    ``classes``); None if not recorded."""

    W: np.ndarray
    b: np.ndarray
    a: np.ndarray
    activation: Activation
    input_scaling: Standardisation | None = None
    classes: np.ndarray | None = None
    loss: str | None = None

    def __post_init__(self):
        self.activation = activation(self.activation)
        for key in ("W", "b", "a"):
            value = getattr(self, key)
            try:
                if value is None:
                    raise TypeError
                setattr(self, key, np.array(value, dtype=float, ndmin=2 if key == "W" else 0))
            except (TypeError, ValueError):
                raise ValueError(f"network array {key} must be numbers (W (N, d), b (N,), a (N,) or (N, m)), "
                                 f"got {type(value).__name__}") from None
        self.b = self.b.reshape(-1)
        if self.a.ndim != 2 or self.a.shape[1] == 1:
            self.a = self.a.reshape(-1)
        N = self.W.shape[0]
        if self.W.ndim != 2 or self.b.shape != (N,) or self.a.shape[0] != N or self.a.size == 0:
            raise ValueError(
                f"network arrays have inconsistent shapes W{self.W.shape}, b{self.b.shape}, "
                f"a{self.a.shape}: expected W (N, d), b (N,), a (N,) or (N, m)"
            )
        for key in ("W", "b", "a"):
            if not np.all(np.isfinite(getattr(self, key))):
                raise ValueError(f"network array {key} contains NaN or inf")
        if self.input_scaling is not None and self.input_scaling.d != self.W.shape[1]:
            raise ValueError(f"network input scaling has {self.input_scaling.d} columns, W has d = {self.W.shape[1]}")
        if self.classes is not None:
            classes = np.asarray(self.classes)
            if (classes.ndim != 1 or classes.dtype.kind not in "biufU" or classes.size != self.outputs
                    or classes.size < 2 or np.unique(classes).size != classes.size):
                raise ValueError(f"network classes {classes.tolist()!r} must be {self.outputs} distinct labels "
                                 f"(numbers or strings), one per output column of a (N, C), C >= 2")
            self.classes = classes
        if self.loss is not None:
            self.loss = _loss(self.loss, multiclass=True).name
            if (self.loss == "softmax") != self.classifier or (self.loss == "logistic" and self.outputs != 1):
                raise ValueError(f"network loss {self.loss} does not fit a network of {self.outputs} output(s)"
                                 f"{' with classes' if self.classifier else ''}: softmax goes with classes, "
                                 "logistic with one output")

    @property
    def classifier(self) -> bool:
        """True if the network records classes: its outputs are the logits of C classes."""
        return self.classes is not None

    @property
    def width(self) -> int:
        """N, the number of hidden neurons."""
        return self.W.shape[0]

    @property
    def input_dim(self) -> int:
        """d, the input dimension."""
        return self.W.shape[1]

    @property
    def outputs(self) -> int:
        """m, the number of outputs (1 for a (N,))."""
        return 1 if self.a.ndim == 1 else self.a.shape[1]

    @property
    def theta(self) -> np.ndarray:
        """The neurons theta_i = (W_i, b_i) as rows, shape (N, d + 1)."""
        return np.column_stack([self.W, self.b])

    def features(self, x: np.ndarray) -> np.ndarray:
        """sigma(x W^T + b), shape (n, N)."""
        return evaluate(self.activation, self._check_x(x), self.theta)

    def __repr__(self) -> str:
        outputs = f", outputs={self.outputs}" if self.outputs > 1 else ""
        return (f"Network(width={self.width}, input_dim={self.input_dim}{outputs}, "
                f"activation={self.activation.name!r})")

    def __call__(self, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        """f_N at the rows of x (n, d), evaluated in batches of ``batch`` rows; shape (n,), or (n, m)
        for m outputs."""
        x = self._check_x(x)
        theta = self.theta
        out = np.empty((x.shape[0],) + self.a.shape[1:])
        for s in range(0, x.shape[0], batch):
            out[s:s + batch] = evaluate(self.activation, x[s:s + batch], theta) @ self.a
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """f_N(x_j) = sum_i a_i sigma(W_i . x_j + b_i) at the rows of x ((n, d), or (n,) for d = 1):
        shape (n,), or (n, m) for m outputs, like :meth:`flowfem.problem.Result.predict` (and the
        same as ``net(x)``). A classifier: the labels classes[argmax_c f_N(x_j)_c] (n,), like
        :meth:`flowfem.problem.ClassifierResult.predict`.
        Raises ValueError for inputs of the wrong shape or dimension, NaN or inf."""
        if self.classifier:
            return self.classes[np.argmax(self(x), axis=1)]
        return self(x)

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """A classifier's logits f_N(x) (n, C) (``net(x)``). ValueError for a regression network."""
        self._require_classes("decision_function")
        return self(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """A classifier's probabilities softmax_c f_N(x_j)_c (n, C). ValueError for a regression network."""
        from flowfem.loss import softmax

        self._require_classes("predict_proba")
        return softmax(self(x))

    def _require_classes(self, what: str) -> None:
        if not self.classifier:
            raise ValueError(f"{what} needs a classifier (a network read out of a softmax fit, with classes); "
                             "this network is a regression network: use net(x)")

    def _check_x(self, x) -> np.ndarray:
        """x as (n, d) through :func:`flowfem.data.check` (ValueError unless d = input_dim and finite)."""
        return check(x, None, self.input_dim, what="network inputs", takes="this network")[0]

    # -- files ---------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write W, b, a, the activation name and, if recorded, input_mean and input_scale
        (:attr:`input_scaling`), ``classes`` and ``loss`` to ``path`` (.npz), atomically.

        Safe when every MPI rank saves the same network to the same path at once, and when one
        rank alone saves it (no collective): see :func:`flowfem.files.replacing`. ValueError for a path
        not ending in .npz (``net.csv`` would be a zip archive that a CSV reader fails on).
        """
        check_writable(path, "network file", suffix=".npz")
        with replacing(path, ".npz") as tmp:
            scaling = {} if self.input_scaling is None else dict(input_mean=self.input_scaling.mean,
                                                                 input_scale=self.input_scaling.scale)
            if self.classes is not None:
                scaling.update(classes=self.classes)
            if self.loss is not None:
                scaling.update(loss=np.array(self.loss))
            np.savez(tmp, W=self.W, b=self.b, a=self.a, activation=np.array(self.activation.name), **scaling)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Network":
        """Read a network written by :meth:`save`; refuses pickled objects, other files and wrong shapes."""
        hint = "write it with Network.save or flowfem readout"
        arrays = read_npz(path, "network file", hint,
                          "a flowfem network (a zip archive of .npy arrays W, b, a, activation)")
        path = os.fspath(path)
        missing = {"W", "b", "a", "activation"} - set(arrays)
        if missing:
            raise ValueError(f"{path}: not a flowfem network, arrays {sorted(missing)} missing "
                             f"(expected W, b, a, activation; {hint})")
        for k in ("W", "b", "a"):
            if arrays[k].dtype.kind not in "fiu":
                raise ValueError(f"{path}: array {k} has dtype {arrays[k].dtype}, expected numbers")
        if arrays["activation"].dtype.kind != "U" or arrays["activation"].ndim != 0:
            raise ValueError(f"{path}: 'activation' must be a string such as 'relu'")
        if "loss" in arrays and (arrays["loss"].dtype.kind != "U" or arrays["loss"].ndim != 0):
            raise ValueError(f"{path}: 'loss' must be a string such as 'squared'")
        recorded = {"input_mean", "input_scale"} & set(arrays)
        if len(recorded) == 1:
            raise ValueError(f"{path}: array {recorded.pop()} without its partner: the input scaling is the pair "
                             "input_mean, input_scale")
        try:
            scaling = Standardisation(arrays["input_mean"], arrays["input_scale"]) if recorded else None
            return cls(arrays["W"], arrays["b"], arrays["a"], str(arrays["activation"]), scaling,
                       arrays.get("classes"), str(arrays["loss"]) if "loss" in arrays else None)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # -- other frameworks: PyTorch, ONNX, safetensors ------------------------------

    def state_dict(self, tensors: bool = False) -> dict:
        """The weights in the layout of ``nn.Sequential(nn.Linear(d, N), act, nn.Linear(N, m))``:
        ``0.weight`` W (N, d), ``0.bias`` b (N,), ``2.weight`` a^T (m, N) (one output: a as a row
        (1, N)), ``2.bias`` 0 (m,), float64 copies.

        NumPy arrays by default; with ``tensors=True`` torch tensors, which
        ``model.load_state_dict`` takes (it refuses NumPy arrays)::

            model = nn.Sequential(nn.Linear(d, N), nn.Tanh(), nn.Linear(N, 1)).double()
            model.load_state_dict(net.state_dict(tensors=True))

        (:meth:`to_torch` builds that model with the right activation.) ImportError saying
        ``pip install torch`` when ``tensors=True`` and torch is not installed.
        """
        arrays = {
            "0.weight": self.W.copy(),
            "0.bias": self.b.copy(),
            "2.weight": self.a.reshape(self.width, -1).T.copy(),
            "2.bias": np.zeros(self.outputs),
        }
        if not tensors:
            return arrays
        try:
            import torch
        except ImportError:
            raise ImportError("state_dict(tensors=True) needs PyTorch: pip install torch "
                              "(or use the NumPy arrays of state_dict())") from None
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    def to_torch(self):
        """The network as a float64 ``torch.nn.Sequential`` (needs torch installed)."""
        try:
            import torch
        except ImportError:
            raise ImportError("to_torch needs PyTorch: pip install torch") from None
        act = self.activation
        if act.name == "relu":
            layer = torch.nn.ReLU()
        elif act.name.startswith("leaky_relu"):
            layer = torch.nn.LeakyReLU(act.slope)
        elif act.name in ("tanh", "sigmoid"):
            layer = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}[act.name]()
        elif act.name == "softplus":

            class Softplus(torch.nn.Module):  # log(1 + e^z) everywhere; nn.Softplus returns z for z > 20
                def forward(self, z):
                    return torch.logaddexp(z, torch.zeros_like(z))

            layer = Softplus()
        else:
            k = act.power

            class Power(torch.nn.Module):
                def forward(self, z):
                    return z**k

            layer = Power()
        model = torch.nn.Sequential(
            torch.nn.Linear(self.input_dim, self.width), layer, torch.nn.Linear(self.width, self.outputs)
        ).double()
        model.load_state_dict(self.state_dict(tensors=True))
        return model

    def to_onnx(self, path: str | os.PathLike) -> None:
        """Write the network as an ONNX graph (float64, input ``x`` (batch, d), output ``f``
        (batch, m), m = 1 for one output), atomically: :func:`flowfem.export.to_onnx`."""
        from flowfem.export import to_onnx  # onnx is loaded only by those who export

        to_onnx(self, path)

    def to_safetensors(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` and the activation name as safetensors, atomically:
        :func:`flowfem.export.to_safetensors`."""
        from flowfem.export import to_safetensors

        to_safetensors(self, path)
