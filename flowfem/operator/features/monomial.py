"""S for sigma(z) = z^k on inputs of any dimension: an exact low-rank factorisation.

(theta . x~)^k = sum_{|a| = k} k!/a! theta^a x~^a, so S = P(x) Q(theta)^T has
rank binom(d + k, k). Exact.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from flowfem.operator.features.base import Features, augment


class MonomialFeatures(Features):
    """Exact low-rank S = P(x) Q(theta)^T for sigma(z) = z^k."""

    name = "monomial"

    @classmethod
    def needs(cls, sigma, d):
        return None if sigma.power > 0 else "the activation monomial:k"

    def __init__(self, sigma, x, theta):
        super().__init__(sigma, x, theta)
        k, D = sigma.power, theta.shape[1]
        xt = augment(x)
        P, Q = [], []
        for combo in itertools.combinations_with_replacement(range(D), k):
            counts = np.bincount(combo, minlength=D)
            coef = math.factorial(k) / np.prod([math.factorial(c) for c in counts])
            P.append(np.prod(xt**counts, axis=1))
            Q.append(coef * np.prod(theta**counts, axis=1))
        self.P, self.Q = np.column_stack(P), np.column_stack(Q)

    def matvec(self, g, out=None):
        return np.dot(self.P, self.Q.T @ g, out=out)

    def rmatvec(self, r, out=None):
        return np.dot(self.Q, self.P.T @ r, out=out)

    def matmat(self, G):
        return self.P @ (self.Q.T @ G)

    def rmatmat(self, R):
        return self.Q @ (self.P.T @ R)
