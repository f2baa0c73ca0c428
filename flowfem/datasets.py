"""Small real data sets that ship inside scikit-learn and statsmodels (nothing is downloaded).

Each is known by a name that ``flowfem.data.get``, ``flowfem.data.train_test`` and the
command's ``--data`` take like a synthetic set, and comes back in its own units as a
:class:`flowfem.data.Dataset` (x (n, d), y (n,)); fits standardise the inputs on the training
rows (:mod:`flowfem.scaling`). A file split holds out a random fifth of the rows by the seed,
as for a data file (:func:`flowfem.data.train_test`).

========== ========== ============ ===================================================================
name       x, y       package      what
========== ========== ============ ===================================================================
iris2      (150, 2),  scikit-learn ``load_iris``: x1 petal length, x2 petal width (cm; the iris
           (150,)                  columns 3 and 4); y the species 0 setosa, 1 versicolor,
                                   2 virginica (50 each): three classes
diabetes1  (442, 1),  scikit-learn ``load_diabetes(scaled=False)``: x1 body-mass index (kg/m^2); y a
           (442,)                  quantitative measure of disease progression one year after
                                   baseline (25..346)
engel      (235, 1),  statsmodels  ``datasets.engel``: x1 household income, y food expenditure
           (235,)                  (Belgian francs a year; Belgian working-class households, 1857)
sunspots   (309, 1),  statsmodels  ``datasets.sunspots``: x1 the year 1700..2008, y the yearly
           (309,)                  mean sunspot number
co2        (2225, 1), statsmodels  ``datasets.co2``: x1 the date as a decimal year (weekly,
           (2225,)                 1958-03-29 .. 2001-12-29), y the atmospheric CO2 concentration
                                   at Mauna Loa (ppm); the 59 weeks without a value are dropped
stackloss  (21, 3),   statsmodels  ``datasets.stackloss``: 21 days of a plant oxidising ammonia to nitric
           (21,)                   acid; x1 the air flow (rate of operation), x2 the cooling-water
                                   inlet temperature (deg C), x3 the acid concentration (per 1000,
                                   minus 500); y the stack loss, 10 times the percentage of the
                                   ingoing ammonia that escapes unabsorbed
========== ========== ============ ===================================================================

Sources: R. A. Fisher (1936), The use of multiple measurements in taxonomic problems, Annals
of Eugenics 7, 179-188; B. Efron, T. Hastie, I. Johnstone, R. Tibshirani (2004), Least angle
regression, Annals of Statistics 32, 407-499; R. Koenker, G. Bassett (1982), Robust tests for
heteroscedasticity based on regression quantiles, Econometrica 50, 43-61; the sunspot numbers
of NOAA's National Geophysical Data Center (as statsmodels ships them); C. D. Keeling, T. P.
Whorf (2004), Atmospheric CO2 concentrations derived from flask air samples at sites in the
SIO network, in Trends: A Compendium of Data on Global Change, CDIAC, Oak Ridge National
Laboratory; K. A. Brownlee (1965), Statistical Theory and Methodology in Science and Engineering,
2nd ed., Wiley, 491-500. Each loader checks that the package returned the documented shape: a
package release that changed a set is refused rather than fitted silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from flowfem.data import Dataset, check


@dataclass(frozen=True)
class RealSet:
    """One registered data set: its documented sizes, task, source and the loader returning the
    raw arrays (x (n, d), y (n,))."""

    name: str
    n: int
    d: int
    classes: int | None  # None: regression; C: labels 0..C-1
    package: str  # the pip name
    source: str  # the package's function
    inputs: tuple[str, ...]  # x1..xd, with units
    target: str
    citation: str
    arrays: Callable[[], tuple[np.ndarray, np.ndarray]]

    @property
    def task(self) -> str:
        """``regression`` or ``classification (C classes)``."""
        return "regression" if self.classes is None else f"classification ({self.classes} classes)"


def _iris():
    from sklearn.datasets import load_iris

    bunch = load_iris()
    return bunch.data[:, 2:4], bunch.target


def _diabetes():
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    return bunch.data[:, bunch.feature_names.index("bmi")], bunch.target


def _engel():
    from statsmodels.datasets import engel

    frame = engel.load_pandas().data
    return frame["income"].to_numpy(), frame["foodexp"].to_numpy()


def _sunspots():
    from statsmodels.datasets import sunspots

    frame = sunspots.load_pandas().data
    return frame["YEAR"].to_numpy(), frame["SUNACTIVITY"].to_numpy()


def _co2():
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data.dropna()
    t = frame.index
    days = np.where(t.is_leap_year, 366.0, 365.0)
    return t.year.to_numpy() + (t.day_of_year.to_numpy() - 1) / days, frame["co2"].to_numpy()


def _stackloss():
    from statsmodels.datasets import stackloss

    frame = stackloss.load_pandas().data
    return frame[["AIRFLOW", "WATERTEMP", "ACIDCONC"]].to_numpy(), frame["STACKLOSS"].to_numpy()


REAL = {s.name: s for s in (
    RealSet("iris2", 150, 2, 3, "scikit-learn", "sklearn.datasets.load_iris",
            ("petal length (cm)", "petal width (cm)"), "species: 0 setosa, 1 versicolor, 2 virginica",
            "Fisher (1936), Annals of Eugenics 7, 179-188", _iris),
    RealSet("diabetes1", 442, 1, None, "scikit-learn", "sklearn.datasets.load_diabetes(scaled=False)",
            ("body-mass index (kg/m^2)",), "disease progression one year after baseline",
            "Efron, Hastie, Johnstone, Tibshirani (2004), Annals of Statistics 32, 407-499", _diabetes),
    RealSet("engel", 235, 1, None, "statsmodels", "statsmodels.datasets.engel",
            ("household income (Belgian francs a year)",), "food expenditure (Belgian francs a year)",
            "Koenker, Bassett (1982), Econometrica 50, 43-61", _engel),
    RealSet("sunspots", 309, 1, None, "statsmodels", "statsmodels.datasets.sunspots",
            ("year",), "yearly mean sunspot number", "NOAA National Geophysical Data Center", _sunspots),
    RealSet("co2", 2225, 1, None, "statsmodels", "statsmodels.datasets.co2",
            ("date (decimal year)",), "atmospheric CO2 at Mauna Loa (ppm)",
            "Keeling, Whorf (2004), Trends: A Compendium of Data on Global Change, CDIAC", _co2),
    RealSet("stackloss", 21, 3, None, "statsmodels", "statsmodels.datasets.stackloss",
            ("air flow (rate of operation)", "cooling-water inlet temperature (deg C)",
             "acid concentration (per 1000, minus 500)"),
            "stack loss (10 times the percentage of ammonia escaping unabsorbed)",
            "Brownlee (1965), Statistical Theory and Methodology in Science and Engineering, 491-500", _stackloss),
)}


def load(name: str) -> Dataset:
    """The registered data set ``name`` (see the module docstring) in its own units: x (n, d), y (n,)
    (class labels 0..C-1 as floats for a classification set).

    ValueError, one line: an unknown name (with the closest), the package not installed (with
    the ``pip install`` that fixes it), or a package whose set no longer has the documented shape.
    """
    from flowfem.arguments import unknown

    if name not in REAL:
        raise ValueError(unknown("real data set", name, tuple(REAL)))
    entry = REAL[name]
    try:
        x, y = entry.arrays()
    except ImportError:
        raise ValueError(f"the data set {name!r} ships with {entry.package}, which is not installed: "
                         f"pip install {entry.package}") from None
    x, y = check(x, y, what=f"data set {name!r}")
    if x.shape != (entry.n, entry.d):
        raise ValueError(f"data set {name!r}: {entry.source} returned x of shape {x.shape}, documented "
                         f"({entry.n}, {entry.d}): this {entry.package} release changed the set")
    return Dataset(x, y, name)


def standardisation(spec: str, train: Dataset):
    """The input scaling a fit of the data ``spec`` uses: for a real data set the
    :class:`flowfem.scaling.Standardisation` of its training rows ``train`` (their inputs come in
    their own units, incomes in francs, years), None for a synthetic set or a file (fitted as they are)."""
    from flowfem.scaling import Standardisation  # it imports flowfem.data, which imports this module lazily

    return Standardisation.fit(train.x) if spec in REAL else None
