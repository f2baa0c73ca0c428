"""Input standardisation z = (x - m) / s, recorded and folded into a network's first layer.

Real data come in their own units (income in Belgian francs, a year, a body-mass
index), while a parameter mesh such as the box [-R, R]^(d+1) holds neurons
(w, b) for inputs of order one. Each input column k is therefore standardised
with the mean m_k and the standard deviation s_k (ddof = 0) of the **training**
rows only (the test rows never enter the scaling):

    z_k = (x_k - m_k) / s_k.

The density, its readouts and particle networks are fitted on z. A network on z
becomes the same function of the raw x by folding the affine map into its first
layer, exactly (the same arithmetic up to rounding):

    w . z + b = w . ((x - m) / s) + b = w' . x + b',   w' = w / s,   b' = b - w' . m

(w / s entrywise). The folded network needs no extra operation, so every format it
is written in (.npz, ONNX, safetensors, a torch state dict) takes raw inputs.
:meth:`Standardisation.fold` records the scaling in the folded network
(``Network.input_scaling``), :meth:`flowfem.network.Network.save` stores it as the
arrays ``input_mean`` and ``input_scale`` beside W, b, a, and
:meth:`Standardisation.record` gives it for metrics.json. Targets y are left as
they are: for the squared loss the minimiser of E_alpha is linear in y, so a
scale of y changes nothing but the units of u.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from flowfem.data import Dataset, check

RULE = "z = (x - input_mean) / input_scale per input column, mean and standard deviation (ddof 0) of the training rows"


@dataclass(frozen=True)
class Standardisation:
    """The affine map z = (x - mean) / scale of inputs x (n, d): mean (d,), scale (d,) > 0."""

    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self):
        mean = np.array(self.mean, dtype=float, ndmin=1)
        scale = np.array(self.scale, dtype=float, ndmin=1)
        if mean.ndim != 1 or scale.shape != mean.shape:
            raise ValueError(f"input scaling: mean has shape {mean.shape} and scale {scale.shape}; expected both (d,)")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("input scaling: mean must be finite and scale finite and positive")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)

    @property
    def d(self) -> int:
        """The number of input columns."""
        return self.mean.shape[0]

    @classmethod
    def fit(cls, x) -> "Standardisation":
        """Mean and standard deviation (ddof = 0) of each column of the training inputs x ((n, d), or
        (n,) for d = 1). ValueError for a column that is constant (it carries no information and
        cannot be scaled to unit spread), naming it."""
        x = check(x, None, what="training inputs to standardise")[0]
        scale = x.std(axis=0)
        flat = np.flatnonzero(scale <= 1e-12 * np.maximum(np.abs(x).max(axis=0), 1e-300))
        if flat.size:
            raise ValueError(f"input column x{flat[0] + 1} is constant on the {x.shape[0]} training row(s): "
                             "it cannot be standardised; drop the column or use more rows")
        return cls(x.mean(axis=0), scale)

    def apply(self, x) -> np.ndarray:
        """z = (x - mean) / scale for x ((n, d), or (n,) for d = 1): shape (n, d)."""
        x = check(x, None, self.d, what="inputs to standardise", takes="this scaling")[0]
        return (x - self.mean) / self.scale

    def invert(self, z) -> np.ndarray:
        """x = mean + scale z for standardised inputs z ((n, d), or (n,) for d = 1): shape (n, d)."""
        z = check(z, None, self.d, what="standardised inputs", takes="this scaling")[0]
        return self.mean + self.scale * z

    def dataset(self, dataset: Dataset) -> Dataset:
        """The same data set with standardised inputs (y and the name unchanged)."""
        return Dataset(self.apply(dataset.x), dataset.y, dataset.name)

    def fold(self, network):
        """The network on raw inputs x equal to ``network`` on z = (x - mean) / scale: W' = W / scale
        (each column k divided by scale_k), b' = b - W' mean, a unchanged (module docstring); the
        scaling is recorded as its ``input_scaling``. ValueError if its input dimension is not d
        or it is already folded (its inputs are raw, not standardised)."""
        if network.input_dim != self.d:
            raise ValueError(f"the network takes d = {network.input_dim} inputs, the scaling has {self.d} columns")
        if network.input_scaling is not None:
            raise ValueError("the network already takes raw inputs (its scaling is folded in): fold a network "
                             "fitted on standardised inputs")
        W = network.W / self.scale
        return replace(network, W=W, b=network.b - W @ self.mean, input_scaling=self)

    def record(self) -> dict:
        """The scaling as JSON-ready lists (metrics.json): input_mean, input_scale and the rule."""
        return dict(input_mean=self.mean.tolist(), input_scale=self.scale.tolist(), rule=RULE)

    @classmethod
    def from_record(cls, record: dict) -> "Standardisation":
        """The scaling written by :meth:`record` (or any mapping with input_mean and input_scale)."""
        return cls(record["input_mean"], record["input_scale"])
