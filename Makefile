# flowfem: `make demo` and `make test` each create .venv on first use.
VENV    := .venv
PY      := $(VENV)/bin/python
MPIRUN  := $(VENV)/bin/mpirun
STAMP   := $(VENV)/.installed

.PHONY: demo test venv benchmark clean

demo: $(STAMP)
	$(MPIRUN) -n 2 $(PY) demos/regression_1d.py

test: $(STAMP)
	$(PY) -m pytest tests

benchmark: $(STAMP)
	$(PY) benchmarks/stationary.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || "$$(.ci/find-python)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .cache results
