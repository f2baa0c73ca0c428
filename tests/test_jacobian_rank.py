"""Jacobian rank of deep monomial networks: generic rank, planted subnetworks, exact rank."""

import math

import numpy as np
import pytest

from flowfem import jacobian_rank as jr


@pytest.mark.parametrize("bias", [False, True])
def test_monomial_jacobian_matches_finite_differences(bias):
    widths, k = [2, 3, 2, 2], 3
    params = jr.random_monomial_params(widths, 0, bias)
    x = np.random.default_rng(1).standard_normal((7, 2))
    J = jr.monomial_jacobian(widths, k, params, x)
    assert J.shape == (7 * 2, jr.n_parameters(widths, bias))
    cols, h = [], 1e-6
    for l, (W, b) in enumerate(params):
        for arr in (W, b) if bias else (W,):
            for idx in np.ndindex(arr.shape):
                old = arr[idx]
                arr[idx] = old + h
                fp = jr.monomial_network(widths, k, params, x)
                arr[idx] = old - h
                fm = jr.monomial_network(widths, k, params, x)
                arr[idx] = old
                cols.append(((fp - fm) / (2 * h)).ravel())
    assert np.allclose(J, np.array(cols).T, rtol=1e-6, atol=1e-7 * np.abs(J).max())


# widths, k, bias, hidden layer to plant in; all in the regime P - (hidden neurons) <= dim of the
# output polynomials, where the expected rank is P - (hidden neurons)
THIN = [([2, 2, 1], 3, False, 1), ([2, 2, 1], 4, True, 1), ([3, 3, 1], 3, False, 1),
        ([2, 3, 1], 5, False, 1), ([2, 3, 2], 4, True, 1), ([2, 2, 2, 1], 3, False, 2),
        ([2, 3, 3, 1], 4, False, 1), ([2, 3, 3, 1], 4, True, 2)]


@pytest.mark.parametrize("widths,k,bias,layer", THIN)
def test_random_points_have_generic_rank_and_subnetworks_are_deficient(widths, k, bias, layer):
    rows = {r.point: r for r in jr.scan_singularities(widths, k, bias=bias, n_random=3, layer=layer)}
    P = jr.n_parameters(widths, bias)
    expected = P - sum(widths[1:-1])
    assert jr.expected_rank(widths, k, bias) == expected
    for name, r in rows.items():
        assert r.dropped < jr.DEFAULT_RTOL / 100 and r.kept > 10 * jr.DEFAULT_RTOL, (name, r)  # a clear gap at tol
    for r in range(3):
        assert rows[f"random {r}"].rank == expected
    for name in ("zero outgoing", "zero incoming", "duplicate", "rescaled duplicate"):
        assert rows[name].deficient, name
    assert rows["zero incoming"].rank < rows["zero outgoing"].rank
    assert not rows["one zero weight"].deficient


def test_zero_incoming_neuron_has_the_rank_of_the_narrower_network():
    full = jr.scan_singularities([3, 3, 1], 3)
    narrow = jr.scan_singularities([3, 2, 1], 3)
    rank = {r.point: r.rank for r in full}
    assert rank["zero incoming"] == narrow[0].generic_rank == 6


def test_linear_networks_are_far_below_the_parameter_count():
    """k = 1: f = W^L ... W^1 x has rank min(d_0 d_L, ...) whatever P is; subnetwork planting
    changes nothing (singular points are not only subnetworks for small k)."""
    rows = jr.scan_singularities([2, 3, 1], 1)
    assert {r.rank for r in rows} == {2}


@pytest.mark.parametrize("widths,k,bias", [([2, 2, 1], 3, False), ([2, 2, 1], 3, True),
                                           ([2, 3, 1], 5, False), ([2, 2, 2, 1], 2, False)])
def test_numerical_rank_agrees_with_exact_rank(widths, k, bias):
    rows = jr.scan_singularities(widths, k, bias=bias, n_random=2, exact=True)
    assert all(r.exact is not None and r.rank == r.exact for r in rows), rows
    assert len({r.rank for r in rows}) > 1  # the comparison covers deficient and generic points


def test_exact_rank_of_integer_products():
    rng = np.random.default_rng(0)
    for m, n, r in [(6, 5, 3), (10, 8, 8), (12, 9, 5), (4, 7, 4), (20, 15, 1)]:
        A = rng.integers(-5, 6, (m, r)) @ rng.integers(-5, 6, (r, n))
        assert jr.exact_rank(A) == r
    assert jr.exact_rank(np.zeros((3, 3), int)) == 0
    assert jr.exact_rank([[0, 1], [0, 2]]) == 1
    from fractions import Fraction
    assert jr.exact_rank([[Fraction(1, 3), Fraction(1, 2)], [Fraction(2, 3), 1]]) == 1


def test_jacobian_rank_checks_its_input():
    params = jr.random_monomial_params([2, 2, 1], 0)
    with pytest.raises(ValueError, match="layers"):
        jr.jacobian_rank([2, 2, 2, 1], 3, params)
    with pytest.raises(ValueError, match="expected"):
        jr.jacobian_rank([3, 2, 1], 3, params)
    with pytest.raises(ValueError, match="points"):
        jr.jacobian_rank([2, 2, 1], 3, params, points=np.zeros((5, 3)))
    r = jr.jacobian_rank([2, 2, 1], 3, params, tol=0.5)
    assert r.tol == 0.5 and r.rank < 4 and math.isclose(r.singular_values[0] / r.singular_values[0], 1)
