# flowfem: `make demo` and `make test` each create .venv on first use.
VENV    := .venv
PY      := $(VENV)/bin/python
MPIRUN  := $(VENV)/bin/mpirun
STAMP   := $(VENV)/.installed

.PHONY: demo test venv benchmark clean check-jit image-test

demo: $(STAMP) | check-jit
	$(MPIRUN) -n 2 $(PY) demos/regression_1d.py

test: $(STAMP) | check-jit
	$(PY) -m pytest tests

benchmark: $(STAMP) | check-jit
	$(MPIRUN) -n 2 $(PY) benchmarks/stationary.py

venv: $(STAMP)

$(STAMP): pyproject.toml | check-jit
	test -x $(PY) || "$$(.ci/find-python)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# dolfinx compiles every form to a C extension at run time (ffcx, cffi, setuptools) with the
# compiler setuptools picks, $CC or else the one Python was built with (x86_64-linux-gnu-gcc for
# Debian's python3), against the base Python's Python.h: fail here with the fix rather than at the
# first form. The Python is the venv's if there is one, else the one `make venv` would use.
JIT_CHECK := import os, shlex, shutil, sys, sysconfig; \
  cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]; \
  h = os.path.join(sysconfig.get_paths()["include"], "Python.h"); \
  missing = [m for m, ok in ((cc, shutil.which(cc)), (h, os.path.isfile(h))) if not ok]; \
  missing and sys.exit("flowfem needs a C compiler and Python headers for the dolfinx JIT (missing: " \
                       + ", ".join(missing) + "): apt-get install gcc python3-dev")

check-jit:
	@py=$(PY); test -x $$py || py=$$(.ci/find-python) || exit 1; $$py -c '$(JIT_CHECK)'

clean:
	rm -rf $(VENV) .cache results

# image-test: build the Dockerfile's image and run `make demo` and `make test` in one container of it,
# with docker if a daemon answers, else with buildah (no daemon; chroot isolation; vfs storage, as
# $(DEBIAN_BASE) uses). buildah's base image debian:trixie-slim is built once from Debian's
# packages by $(DEBIAN_BASE), kept and reused. The flowfem image and its container are removed at
# the end, on success and on failure, and any left by an interrupted run at the start: vfs copies
# every layer in full (a few GB per run).
IMAGE_TAG   := localhost/flowfem-image-test
CONTAINER   := flowfem-image-test
DEBIAN_BASE ?= ../shared/tools/debian-base-image
BUILDAH     := buildah --storage-driver vfs

image-test:
	@set -e; \
	if docker info >/dev/null 2>&1; then \
	  clean() { docker rm -f $(CONTAINER) >/dev/null 2>&1 || true; docker rmi -f $(IMAGE_TAG) >/dev/null 2>&1 || true; }; \
	  clean; trap clean EXIT; trap 'exit 1' HUP INT TERM; \
	  docker build -t $(IMAGE_TAG) .; \
	  docker run --name $(CONTAINER) $(IMAGE_TAG) sh -c 'make demo && make test'; \
	else \
	  clean() { $(BUILDAH) rm $(CONTAINER) >/dev/null 2>&1 || true; $(BUILDAH) rmi -f $(IMAGE_TAG) >/dev/null 2>&1 || true; }; \
	  clean; trap clean EXIT; trap 'exit 1' HUP INT TERM; \
	  "$(DEBIAN_BASE)"; \
	  $(BUILDAH) bud --pull=false --isolation chroot -t $(IMAGE_TAG) .; \
	  $(BUILDAH) from --pull=false --name $(CONTAINER) $(IMAGE_TAG) >/dev/null; \
	  $(BUILDAH) run --isolation chroot $(CONTAINER) -- sh -c 'make demo && make test'; \
	fi
