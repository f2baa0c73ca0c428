"""Class labels of a classification: checked, encoded as class indices and back, and scored.

Labels are any C >= 2 distinct numbers or strings, shape (n,) or (n, 1). The classes are their
distinct values in sorted order (NumPy's np.unique), and a label's class index k in 0..C-1 is
its position there: encode gives (k, classes), decode classes[k]. The confusion matrix has the
true class in rows and the predicted one in columns, as scikit-learn's
``sklearn.metrics.confusion_matrix``. NumPy only, so the particle solvers use it without PETSc.
"""

from __future__ import annotations

import numpy as np


def labels_array(labels, what: str) -> np.ndarray:
    """labels as a 1-D array (n,) of numbers or strings; ValueError naming ``what`` otherwise."""
    if labels is None:
        raise ValueError(f"{what}: labels are missing (None); pass one label per data point, shape (n,)")
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"{what}: labels have shape {np.shape(labels)}; expected (n,) or (n, 1) with n >= 1")
    if y.dtype.kind not in "biufU":
        raise ValueError(f"{what}: labels must be numbers or strings, got {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ValueError(f"{what}: labels contain NaN or inf (first at row {bad}); remove or relabel those rows")
    return y


def training_labels(labels, n: int, what: str = "the training labels") -> np.ndarray:
    """The labels of n training rows as :func:`labels_array` gives them, refused (ValueError naming
    ``what``) unless there are n of them and at most max(2, n / 2) classes: one density or output
    per class, so continuous targets taken for labels would make about n of them."""
    y = labels_array(labels, what)
    if y.size != n:
        raise ValueError(f"{what}: {y.size} labels for {n} data points; give one label per row of x")
    C = np.unique(y).size
    if C > max(2, n // 2):
        raise ValueError(f"{what}: the labels take {C} distinct values on {n} rows (more than n / 2): they look "
                         "like regression targets; use loss='squared', or give class labels")
    return y


def encode(labels, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(k, classes): class indices k (n,) int64 in 0..C-1 with classes[k] == labels, and the classes (C,).

    ``classes`` None: the distinct values of ``labels`` in sorted order (numbers or strings; C >= 2
    needed). Given (the classes a model was fitted on): labels outside them are refused. ``labels``
    has shape (n,) or (n, 1). ValueError for another shape, NaN or inf, a single class, or an
    unknown label."""
    if classes is None:
        y = labels_array(labels, "the training labels")
        classes, k = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise ValueError(f"the training labels hold one class only ({classes.tolist()[0]!r}); classification needs "
                             "at least two distinct labels")
        return k.astype(np.int64).ravel(), classes
    y = labels_array(labels, "the labels")
    classes = np.asarray(classes)
    if (y.dtype.kind == "U") != (classes.dtype.kind == "U"):
        kinds = ("strings", "numbers") if y.dtype.kind == "U" else ("numbers", "strings")
        raise ValueError(f"the labels are {kinds[0]} but the fitted classes are {kinds[1]} "
                         f"({', '.join(map(repr, classes.tolist()))}); relabel the data as the classes")
    k = np.searchsorted(classes, y).clip(0, classes.size - 1)
    unknown_ = classes[k] != y
    if np.any(unknown_):
        bad = int(np.flatnonzero(unknown_)[0])
        raise ValueError(f"label {y.tolist()[bad]!r} (row {bad}) is not one of the fitted classes "
                         f"{', '.join(map(repr, classes.tolist()))}; relabel it or refit with it")
    return k.astype(np.int64), classes


def decode(k: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The labels classes[k] of class indices k (n,): the inverse of :func:`encode`."""
    return np.asarray(classes)[np.asarray(k, dtype=np.int64)]


def accuracy(labels, predicted) -> float:
    """The fraction of rows with predicted == labels (both (m,))."""
    labels, predicted = np.asarray(labels).ravel(), np.asarray(predicted).ravel()
    if labels.shape != predicted.shape or labels.size == 0:
        raise ValueError(f"accuracy needs as many predictions as labels (>= 1), got {predicted.size} and "
                         f"{labels.size}")
    return float(np.mean(labels == predicted))


def confusion_matrix(labels, predicted, classes: np.ndarray) -> np.ndarray:
    """M (C, C) int64: M[a, b] the number of rows of true class classes[a] predicted as classes[b]
    (rows true, columns predicted). ValueError for labels outside ``classes`` or unequal lengths."""
    k, classes = encode(labels, classes)
    kp, _ = encode(predicted, classes)
    if k.shape != kp.shape:
        raise ValueError(f"a confusion matrix needs as many predictions as labels, got {kp.size} and {k.size}")
    return confusion_counts(k, kp, classes.size)


def confusion_counts(k: np.ndarray, kp: np.ndarray, C: int) -> np.ndarray:
    """M[a, b] = #{i: k_i = a, kp_i = b} for class indices k (true) and kp (predicted): (C, C) int64."""
    M = np.zeros((C, C), dtype=np.int64)
    np.add.at(M, (k, kp), 1)
    return M
