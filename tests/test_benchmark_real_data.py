"""benchmarks/real_data.py at its quick size: every set and method gets a row (timings not asserted)."""

import re
import sys

import numpy as np

from conftest import run


def test_real_data_benchmark_quick():
    proc = run([sys.executable, "benchmarks/real_data.py", "--quick"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| (\w+) \| (\d+) / (\d+) \| ([^|]+) \| ([0-9.]+) \| ([0-9.e+-]+) \| ([0-9.e+-]+) \|$",
                      proc.stdout, re.M)
    assert [r[0] for r in rows] == [s for s in ("diabetes1", "engel", "sunspots", "co2") for _ in range(3)], proc.stdout
    methods = [r[3].strip() for r in rows[:3]]
    assert methods == ["flowfem (alpha auto)", "Adam particles N = 16", "MLP L-BFGS N = 16"]
    for r in rows:  # the same split for every method; flowfem learns each set at this size
        assert (int(r[1]), int(r[2])) == {"diabetes1": (354, 88), "engel": (188, 47), "sunspots": (248, 61),
                                          "co2": (1780, 445)}[r[0]]
        if r[3].startswith("flowfem"):
            assert float(r[5]) < 0.95 * float(r[6]), r
    iris = re.findall(r"^\| iris2 \| 120 / 30 \| ([^|]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$",
                      proc.stdout, re.M)
    assert [r[0].strip() for r in iris] == ["flowfem softmax (alpha auto)", "Adam particles N = 16",
                                           "MLP L-BFGS N = 16"]
    assert float(iris[0][2]) > 0.9 > float(iris[0][4])  # flowfem's test accuracy against the majority class
    # Adam on the softmax loss, 16 neurons and 50 steps: it learns, beats the majority class, and its
    # cross-entropy is below log 3, that of the uniform guess it starts near
    assert float(iris[1][2]) > float(iris[1][4]) and 0 < float(iris[1][3]) < np.log(3)
