# flowfem image: the same steps as the README's two commands.
#   docker build -t flowfem .
#   docker run --rm flowfem                 # make demo: the 1-D demo under mpirun -n 2
#   docker run --rm flowfem make test       # the test suite, serial and MPI
FROM python:3.12-slim

# make for the two commands; the X/GL libraries are what the gmsh wheel links against
RUN apt-get update \
    && apt-get install -y --no-install-recommends make libglu1-mesa libxrender1 libxcursor1 libxft2 \
       libxinerama1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /flowfem
COPY . .
# creates .venv and installs flowfem with dolfinx-solver-real (dolfinx + PETSc + MPICH wheels)
RUN make venv
ENV PATH=/flowfem/.venv/bin:$PATH
CMD ["make", "demo"]
