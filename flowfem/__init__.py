"""flowfem: shallow networks trained as a convex problem on a mesh of parameter space."""

from flowfem import mpi as _mpi  # noqa: F401  (first: orders MPI before dolfinx and petsc4py)
