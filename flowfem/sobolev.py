"""The weighted Sobolev space H^1_omega(Omega) and its matrices.

    a_omega(u, v) = integral_Omega (kappa grad u . grad v + u v) omega d theta,
    m_omega(u, v) = integral_Omega u v omega d theta,

with a weight omega > 0: ``uniform`` (omega = 1) or ``gaussian:s``
(omega = exp(-|theta|^2 / (2 s^2)), the usual initialisation law of the
neurons). ||u||^2_{H^1_omega} = a_omega(u, u). On the circle and sphere
grad is the tangential gradient. Lagrange elements of degree p give the
stiffness-plus-mass matrix A and the weighted mass matrix M.

The forms are integrals over the mesh in its own coordinates x, through the
Space's chart theta(x) with conformal factor lambda (:mod:`flowfem.space`:
d theta = lambda^n dx, |grad_theta u|^2 = lambda^-2 |grad_x u|^2, n the mesh's
topological dimension), so every domain has a gradient weight and a mass weight:

    a_omega(u, v) = integral (kappa w_grad grad_x u . grad_x v + w_mass u v) dx,
    w_grad = lambda^(n-2) omega(theta(x)),   w_mass = lambda^n omega(theta(x)),
    m_omega(u, v) = integral w_mass u v dx.

On the box, ball, circle and sphere lambda = 1 and both are omega; on the s3
chart of S^3 (n = 3) w_grad = lambda omega and w_mass = lambda^3 omega, with
lambda = 2 / (1 + |z|^2). The strong form of a_omega on the chart is
-div_x(kappa w_grad grad_x u) + w_mass u = lambda^3 omega (-kappa Delta_S u + u)
for constant omega (omega is constant on S^3: |theta| = 1), with the natural
condition w_grad du/dnu = 0 on the chart's boundary |z| = Z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowfem import mpi  # noqa: F401  (first: loads MPI before dolfinx)

import dolfinx.fem  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402
import ufl  # noqa: E402

from flowfem.arguments import bounded, integer, named, parameterised, read_number, unknown  # noqa: E402
from flowfem.space import Space  # noqa: E402


@dataclass(frozen=True)
class Weight:
    """omega(theta): uniform, or Gaussian exp(-|theta|^2 / (2 s^2))."""

    kind: str = "uniform"
    scale: float = 1.0

    def __post_init__(self):
        if self.kind not in ("uniform", "gaussian"):
            raise ValueError(unknown("weight", self.kind, ("uniform", "gaussian"), "(gaussian:S, S > 0)"))
        bounded("the Gaussian weight's scale s", self.scale, 0, strict=True)

    @classmethod
    def parse(cls, spec: "str | Weight") -> "Weight":
        """``uniform``, ``gaussian`` (s = 1) or ``gaussian:S``."""
        if isinstance(spec, Weight):
            return spec
        kind, arg = parameterised("weight", spec, {"gaussian": "gaussian:S with a scale S > 0, e.g. gaussian:0.5, "
                                                               "or plain gaussian (S = 1)"},
                                 plain=("uniform",))
        try:
            scale = read_number(arg) if arg is not None else 1.0
        except ValueError:
            raise ValueError(f"weight {spec!r}: the scale after ':' must be a number, e.g. gaussian:0.5") from None
        return cls(kind, scale)

    def ufl(self, theta):
        """omega as a UFL expression of the coordinates theta."""
        if self.kind == "uniform":
            return 1.0
        return ufl.exp(-ufl.dot(theta, theta) / (2 * self.scale**2))

    def __str__(self) -> str:
        return "uniform" if self.kind == "uniform" else f"gaussian:{self.scale:g}"


class WeightedH1:
    """H^1_omega discretised by degree-p Lagrange elements on a Space."""

    def __init__(self, space: Space, weight: Weight | str = "uniform", kappa: float = 1.0, degree: int = 1):
        kappa = bounded("kappa", kappa, 0, strict=True, meaning="it sets how smooth the density is")
        if integer("degree", degree, "1, 2 or 3 (the Lagrange degree of the density)") not in (1, 2, 3):
            raise ValueError(f"{named('degree')} {degree}: the Lagrange degree of the density is 1, 2 or 3")
        self.space = space
        self.weight = Weight.parse(weight)
        self.kappa = float(kappa)
        self.degree = degree
        self.V = dolfinx.fem.functionspace(space.mesh, ("Lagrange", degree))
        x = ufl.SpatialCoordinate(space.mesh)
        tdim = space.mesh.topology.dim
        self.omega = self.weight.ufl(space.chart.ufl_point(x))  # omega(theta(x))
        self.gradient_weight = space.chart.ufl_gradient(x, tdim) * self.omega  # w_grad = lambda^(n-2) omega
        self.mass_weight = space.chart.ufl_volume(x, tdim) * self.omega  # w_mass = lambda^n omega
        u, v = ufl.TrialFunction(self.V), ufl.TestFunction(self.V)
        self._a = dolfinx.fem.form(self.a_form(u, v))
        self._m = dolfinx.fem.form(self.m_form(u, v))
        self._A = self._M = None

    def a_form(self, u, v):
        """(kappa w_grad grad u . grad v + w_mass u v) dx in the mesh's coordinates (module docstring)."""
        return (self.kappa * self.gradient_weight * ufl.inner(ufl.grad(u), ufl.grad(v))
                + self.mass_weight * u * v) * ufl.dx

    def m_form(self, u, v):
        """w_mass u v dx: the weighted L^2 inner product m_omega."""
        return self.mass_weight * u * v * ufl.dx

    @property
    def A(self):
        """PETSc matrix of a_omega."""
        if self._A is None:
            self._A = dolfinx.fem.petsc.assemble_matrix(self._a)
            self._A.assemble()
        return self._A

    @property
    def M(self):
        """PETSc matrix of the weighted mass m_omega."""
        if self._M is None:
            self._M = dolfinx.fem.petsc.assemble_matrix(self._m)
            self._M.assemble()
        return self._M

    @property
    def ndofs(self) -> int:
        """Global number of degrees of freedom."""
        im = self.V.dofmap.index_map
        return im.size_global * self.V.dofmap.index_map_bs

    def function(self, name: str = "u") -> dolfinx.fem.Function:
        """A zero density in this space."""
        f = dolfinx.fem.Function(self.V, name=name)
        return f

    def norm(self, U) -> float:
        """||u||_{H^1_omega} = sqrt(U^T A U) for a PETSc vector U."""
        AU = self.A.createVecLeft()
        self.A.mult(U, AU)
        return float(np.sqrt(max(AU.dot(U), 0.0)))

    def l2_norm(self, U) -> float:
        """||u||_{L^2_omega} = sqrt(U^T M U)."""
        MU = self.M.createVecLeft()
        self.M.mult(U, MU)
        return float(np.sqrt(max(MU.dot(U), 0.0)))
