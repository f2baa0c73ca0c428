# flowfem image: Debian's Python, then the README's two commands.
#   docker build -t flowfem .
#   docker run --rm flowfem                 # make demo: the 1-D demo under mpirun -n 2
#   docker run --rm flowfem make test       # the test suite, serial and MPI
# Without a docker daemon: `make image-test` builds and runs it with buildah (see the Makefile).
FROM debian:trixie-slim

# python3-venv: `make venv`; gcc, libc6-dev (gcc only recommends it) and python3-dev: the dolfinx
# JIT compiles every form to a C extension at run time; libgl1 ... libgomp1: what the gmsh wheel's
# libgmsh links against (libgl1 is no longer pulled in by libglu1-mesa on trixie)
RUN apt-get update \
    && apt-get install -y --no-install-recommends make python3 python3-venv python3-dev gcc libc6-dev \
       libgl1 libglu1-mesa libxrender1 libxcursor1 libxft2 libxinerama1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /flowfem
COPY . .
# creates .venv and installs flowfem with dolfinx-solver-real (dolfinx + PETSc + MPICH wheels)
RUN make venv
ENV PATH=/flowfem/.venv/bin:$PATH
CMD ["make", "demo"]
