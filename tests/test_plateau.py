"""Landscape of a finite network's objective: derivatives, splitting plateaus, the report."""

import warnings

import numpy as np
import pytest

from flowfem import plateau as ls
from flowfem.network import Network

SMOOTH = ["tanh", "sigmoid", "softplus"]
MUS = [-0.7, 0.3, 0.6, 1.8]


def random_problem(act, loss, seed=0, N=3, d=2, n=15):
    rng = np.random.default_rng(seed)
    net = Network(rng.standard_normal((N, d)), rng.standard_normal(N), rng.standard_normal(N), act)
    x = rng.standard_normal((n, d))
    y = np.sign(rng.standard_normal(n)) if loss == "logistic" else rng.standard_normal(n)
    return net, x, y


def constructed_case(act, target, seed=1, n=20):
    """A width-1 network, exactly stationary for the squared loss, whose inner Hessian is a
    positive multiple of ``target``: the residual r = f - y is chosen in the orthogonal
    complement of the range of the Jacobian J (so grad L = J^T r / n = 0) such that
    (1/n) a sum_j r_j sigma''_j x~_j x~_j^T = target (min-norm solution of 3 linear equations),
    then scaled as large as keeps hess L of the narrow network well positive definite."""
    rng = np.random.default_rng(seed)
    net = Network(rng.standard_normal((1, 1)) + 1.5, 0.5 * rng.standard_normal(1), 1 + rng.random(1), act)
    x = rng.uniform(-2, 2, (n, 1))
    xt = np.hstack([x, np.ones((n, 1))])
    s2 = net.activation.d2sigma(x @ net.W.T + net.b)
    J = ls.jacobian(net, x)
    u, sv, _ = np.linalg.svd(J)
    Z = u[:, (sv > 1e-12 * sv[0]).sum():]  # orthonormal basis of ker J^T
    iu = np.triu_indices(2)
    A = np.array([((xt.T * (z * s2[:, 0] * net.a[0] / n)) @ xt)[iu] for z in Z.T]).T
    r = Z @ np.linalg.lstsq(A, np.asarray(target, float)[iu], rcond=None)[0]
    gauss_newton = np.linalg.eigvalsh(J.T @ J / n)[0]
    for scale in 0.7 ** np.arange(60):
        y = net(x) - scale * r / np.abs(r).max()
        if np.linalg.eigvalsh(ls.hessian(net, x, y))[0] > 0.3 * gauss_newton:
            return net, x, y
    raise AssertionError("no residual scale keeps the narrow network a strict minimum")


def trained_case(act, loss, N, seed):
    """A teacher network of width N, data from it (plus misfit and noise for the squared loss,
    labels drawn with P(y = 1) = s(f(x)) for the logistic loss), minimised by Newton from the teacher."""
    rng = np.random.default_rng(seed)
    n = 40 if loss == "squared" else 200
    x = rng.uniform(-3, 3, (n, 1))
    teacher = Network(np.array([[1.5], [-1.0]])[:N], 0.5 * rng.standard_normal(N),
                      np.array([1.5, -1.0])[:N] + 0.3 * rng.standard_normal(N), act)
    if loss == "squared":
        y = teacher(x) + 0.5 * np.sin(3 * x[:, 0]) + 0.2 * rng.standard_normal(n)
    else:
        y = np.where(rng.random(n) < 1 / (1 + np.exp(-teacher(x))), 1.0, -1.0)
    res = ls.minimise(teacher, x, y, loss)
    assert res.converged, res.gradient_norm
    return res.network, x, y


def second_difference(fun, p, v, t):
    return (fun(p + t * v) + fun(p - t * v) - 2 * fun(p)) / t**2


# -- objective, gradient, Hessian ----------------------------------------------


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("act", SMOOTH + ["monomial:3"])
def test_gradient_and_hessian_match_finite_differences(act, loss):
    net, x, y = random_problem(act, loss)
    lam = 0.1
    p = ls.parameters(net)

    def L(q):
        return ls.objective(ls.with_parameters(net, q), x, y, loss, lam)

    def G(q):
        return ls.gradient(ls.with_parameters(net, q), x, y, loss, lam)

    h = 1e-6
    E = np.eye(p.size)
    g_fd = np.array([(L(p + h * e) - L(p - h * e)) / (2 * h) for e in E])
    H_fd = np.array([(G(p + h * e) - G(p - h * e)) / (2 * h) for e in E])
    g, H = G(p), ls.hessian(net, x, y, loss, lam)
    assert np.abs(g - g_fd).max() < 1e-7 * np.abs(g).max()  # seen: <= 9e-10
    assert np.abs(H - H_fd).max() < 1e-7 * np.abs(H).max()  # seen: <= 4e-10
    assert np.allclose(H, H.T, rtol=0, atol=1e-12 * np.abs(H).max())
    # second directional derivative of L itself, independent of the gradient code
    v = np.random.default_rng(5).standard_normal(p.size)
    assert second_difference(L, p, v, 1e-4) == pytest.approx(v @ H @ v, rel=1e-5)


def test_parameter_layout_roundtrip():
    net, x, _ = random_problem("tanh", "squared")
    p = ls.parameters(net)
    N, d = net.W.shape
    assert p.size == N * (d + 2)
    assert np.array_equal(p[d:2 * d], net.W[1]) and p[N * d + 1] == net.b[1] and p[-1] == net.a[-1]
    assert np.array_equal(ls.with_parameters(net, p)(x), net(x))
    with pytest.raises(ValueError, match="parameter vector"):
        ls.with_parameters(net, p[:-1])


# -- splitting -------------------------------------------------------------------


@pytest.mark.parametrize("act", SMOOTH + ["relu", "monomial:2"])
def test_split_computes_the_same_function_for_every_mu(act):
    net, x, _ = random_problem(act, "squared", N=2)
    for mu in [-1.3, 0.0, 0.25, 1.0, 2.7]:
        wide = ls.split(net, 1, mu)
        assert wide.width == 3
        assert np.array_equal(wide.W[2], net.W[1]) and wide.a[1] + wide.a[2] == pytest.approx(net.a[1])
        assert np.allclose(wide(x), net(x), rtol=0, atol=1e-13)


def test_split_line_is_stationary_and_flat():
    net, x, y = trained_case("tanh", "squared", N=2, seed=0)
    assert np.linalg.norm(ls.gradient(net, x, y)) < 1e-10
    for i in (0, 1):
        t = ls.plateau_tangent(net, i)
        for mu in np.linspace(-2, 3, 11):
            wide = ls.split(net, i, mu)
            assert np.linalg.norm(ls.gradient(wide, x, y)) < 1e-10  # seen ~1e-14
            H = ls.hessian(wide, x, y)
            assert np.linalg.norm(H @ t) < 1e-10 * np.abs(H).max()
            # the tangent really is the line's direction (up to sign)
            nxt = ls.parameters(ls.split(net, i, mu + 1e-3)) - ls.parameters(wide)
            assert abs(nxt @ t) == pytest.approx(np.linalg.norm(nxt), rel=1e-12)


@pytest.mark.parametrize("act", SMOOTH)
def test_second_variation_constant(act):
    """L(split + t v) = L + t^2 mu (1 - mu) eps^T H eps / 2 + O(t^3), i.e. v^T hess L v = mu (1 - mu) eps^T H eps."""
    net, x, y = trained_case(act, "squared", N=1, seed=0)
    H = ls.inner_hessian(net, 0, x, y).matrix
    eps = np.random.default_rng(2).standard_normal(2)
    for mu in [-0.6, 0.3, 1.7]:
        wide = ls.split(net, 0, mu)
        p = ls.parameters(wide)
        v = ls.split_direction(net, 0, mu, eps)

        def L(q):
            return ls.objective(ls.with_parameters(wide, q), x, y)

        exact = mu * (1 - mu) * eps @ H @ eps
        assert v @ ls.hessian(wide, x, y) @ v == pytest.approx(exact, rel=1e-9, abs=1e-14)
        assert second_difference(L, p, v, 1e-3) == pytest.approx(exact, rel=1e-4)
        t = 1e-3
        assert (L(p + t * v) - L(p)) / t**2 == pytest.approx(exact / 2, rel=1e-2)
        # the first variation of L along v vanishes
        assert ls.gradient(wide, x, y) @ v == pytest.approx(0, abs=1e-12)


def check_escape(net, x, y, plateau, loss="squared"):
    """Escape directions are unit, orthogonal to the line, of the stated negative curvature, and descend."""
    for pt in plateau.points:
        if pt.kind != "saddle":
            assert pt.escape_direction is None
            continue
        wide = ls.split(net, 0, pt.mu)
        v = pt.escape_direction
        assert np.linalg.norm(v) == pytest.approx(1)
        assert abs(v @ ls.plateau_tangent(net, 0)) < 1e-14
        assert pt.curvature < 0
        assert v @ ls.hessian(wide, x, y, loss) @ v == pytest.approx(pt.curvature, rel=1e-8)
        p = ls.parameters(wide)
        t = 1e-3
        drop = ls.objective(ls.with_parameters(wide, p + t * v), x, y, loss) + ls.objective(
            ls.with_parameters(wide, p - t * v), x, y, loss) - 2 * ls.objective(wide, x, y, loss)
        assert drop < 0


EXPECTED = {
    "positive": ["saddle", "minimum", "minimum", "saddle"],
    "negative": ["minimum", "saddle", "saddle", "minimum"],
    "indefinite": ["saddle"] * 4,
}
TARGETS = {"positive": np.eye(2), "negative": -np.eye(2), "indefinite": np.diag([1.0, -1.0])}


@pytest.mark.parametrize("definiteness", list(EXPECTED))
@pytest.mark.parametrize("act", SMOOTH)
def test_constructed_inner_hessians_classify_like_the_full_hessian(act, definiteness):
    net, x, y = constructed_case(act, TARGETS[definiteness])
    plateau = ls.classify_plateau(net, 0, x, y, MUS + [0.0, 1.0])
    assert plateau.valid and plateau.gradient_norm < 1e-14 and plateau.narrow_min_eigenvalue > 0
    assert plateau.inner.definiteness == definiteness
    assert plateau.kinds == EXPECTED[definiteness] + ["degenerate", "degenerate"]
    for pt in plateau.points:
        ev = ls.split_hessian_eigenvalues(net, 0, pt.mu, x, y)
        assert ls.classify_eigenvalues(ev) == pt.kind
        if pt.kind != "degenerate":
            # margin of the brute-force decision, far above its rtol = 1e-8 (seen: >= 9e-6)
            assert np.abs(ev).min() > 1e-6 * np.abs(ev).max()
    check_escape(net, x, y, plateau)


TRAINED = [
    ("tanh", "squared", 1, 0), ("sigmoid", "squared", 1, 0), ("softplus", "squared", 1, 0),
    ("tanh", "squared", 2, 0), ("sigmoid", "squared", 2, 2),
    ("tanh", "logistic", 1, 0), ("sigmoid", "logistic", 1, 2), ("softplus", "logistic", 1, 2),
]


@pytest.mark.parametrize("act,loss,N,seed", TRAINED)
def test_trained_networks_classify_like_the_full_hessian(act, loss, N, seed):
    net, x, y = trained_case(act, loss, N, seed)
    for i in range(N):
        plateau = ls.classify_plateau(net, i, x, y, [-0.5, 0.4, 1.5, 0.0], loss)
        assert plateau.valid
        brute = [ls.classify_eigenvalues(ls.split_hessian_eigenvalues(net, i, mu, x, y, loss))
                 for mu in [-0.5, 0.4, 1.5, 0.0]]
        assert plateau.kinds == brute
        assert plateau.kinds[-1] == "degenerate"


def test_not_a_minimum_is_flagged():
    net, x, y = random_problem("tanh", "squared", N=2, d=1)
    with pytest.warns(RuntimeWarning, match="not a strict local minimum"):
        plateau = ls.classify_plateau(net, 0, x, y, [0.5])
    assert not plateau.valid and plateau.gradient_norm > 1e-3


def test_weight_decay_breaks_the_plateau():
    """With (lambda/2)|p|^2 the split gradient is lambda (1 - mu) (theta, -a) for neuron i and
    lambda mu (theta, -a) for its copy: no point of the line is stationary."""
    net, x, y = trained_case("tanh", "squared", N=1, seed=0)
    lam = 0.01
    res = ls.minimise(net, x, y, weight_decay=lam)
    assert res.converged
    th = np.r_[res.network.W[0], res.network.b[0], res.network.a[0]]
    for mu in (0.0, 0.5, 2.0):
        g = ls.gradient(ls.split(res.network, 0, mu), x, y, weight_decay=lam)
        expected = lam * np.hypot(1 - mu, mu) * np.linalg.norm(th)
        assert np.linalg.norm(g) == pytest.approx(expected, rel=1e-6) and expected > 1e-3


def test_definiteness_labels():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ls._definiteness(np.array([1.0, 2.0]), 1e-8) == "positive"
        assert ls._definiteness(np.array([-1.0, -2.0]), 1e-8) == "negative"
        assert ls._definiteness(np.array([-1.0, 2.0]), 1e-8) == "indefinite"
        assert ls._definiteness(np.array([0.0, 2.0]), 1e-8) == "semidefinite"
        assert ls._definiteness(np.zeros(2), 1e-8) == "semidefinite"


# -- flatness and the report behind `flowfem landscape` ----------------------------


def test_plateau_flatness():
    net, x, y = trained_case("tanh", "squared", N=2, seed=0)
    flat = ls.plateau_flatness(net, 1, x, y, np.linspace(-2, 3, 11))
    assert flat.objective == ls.objective(net, x, y)
    assert flat.loss_deviation < 1e-15 and flat.gradient_norm < 1e-10  # seen 0 and ~1e-14
    # splitting keeps f for any network, but only a stationary one gives a stationary line
    net, x, y = random_problem("tanh", "squared", N=2, d=1)
    flat = ls.plateau_flatness(net, 0, x, y, [-1.0, 0.5, 2.0])
    assert flat.loss_deviation < 1e-14 and flat.gradient_norm > 1e-3


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_plateau_report_is_the_classification_in_plain_numbers(loss):
    import json

    net, x, y = trained_case("tanh", loss, N=1, seed=0)
    mus = [-0.5, 0.0, 0.4, 1.0, 1.5]
    rep = ls.plateau_report(net, x, y, mus, loss=loss, check=True)
    assert json.loads(json.dumps(rep)) == rep  # plain lists, floats, strings, bools and None only
    plateau = ls.classify_plateau(net, 0, x, y, mus, loss)
    assert rep["valid"] and rep["gradient_norm"] == plateau.gradient_norm and rep["loss"] == loss
    (nr,) = rep["neurons"]
    assert nr["index"] == 0 and nr["a"] == net.a[0] and nr["definiteness"] == plateau.inner.definiteness
    assert np.allclose(nr["inner_eigenvalues"], plateau.inner.eigenvalues, rtol=0, atol=0)
    assert nr["flatness"] < 1e-15
    for row, pt in zip(nr["points"], plateau.points):
        assert (row["mu"], row["kind"], row["curvature"]) == (pt.mu, pt.kind, pt.curvature)
        assert row["brute_force"] == pt.kind
        if pt.kind == "saddle":
            assert np.array_equal(row["escape_direction"], pt.escape_direction)
            v = ls.split_direction(net, 0, pt.mu, row["escape_eps"])
            assert np.allclose(v / np.linalg.norm(v), pt.escape_direction, rtol=0, atol=1e-15)
            assert row["split_min_eigenvalue"] < 0
        else:
            assert row["escape_direction"] is None and row["escape_eps"] is None


def test_plateau_report_neurons_and_bad_input():
    net, x, y = trained_case("tanh", "squared", N=2, seed=0)
    rep = ls.plateau_report(net, x, y, [0.5], neurons=[-1])
    assert [n["index"] for n in rep["neurons"]] == [1]
    assert len(ls.plateau_report(net, x, y, [0.5])["neurons"]) == 2
    with pytest.raises(ValueError, match="neuron index 2 is out of range: the network has width 2"):
        ls.plateau_report(net, x, y, [0.5], neurons=[2])
    with pytest.raises(ValueError, match="finite"):
        ls.plateau_report(net, x, y, [np.nan])
    with pytest.raises(ValueError, match=r"this network takes \(n, 1\)"):
        ls.plateau_report(net, np.zeros((4, 2)), np.zeros(4), [0.5])
    # a network that is not a minimum is reported, not refused, and without a warning
    net, x, y = random_problem("tanh", "squared", N=2, d=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ls.plateau_report(net, x, y, [0.5])["valid"]


def test_format_report():
    net, x, y = trained_case("tanh", "squared", N=1, seed=0)
    rep = ls.plateau_report(net, x, y, [-1.0, 0.0, 0.5], check=True)
    rep.update(network="net.npz", data="d.csv", polish=dict(iterations=2, gradient_norm=1e-15, converged=True))
    text = ls.format_report(rep)
    assert text.splitlines()[0] == "network net.npz: width 1, d = 1, tanh; data d.csv (n = 40), squared loss"
    assert "polished by Newton" in text and "a strict local minimum: the classification applies" in text
    assert "inner Hessian eigenvalues [" in text and rep["neurons"][0]["definiteness"] in text
    assert "full Hessian" in text and "DISAGREES" not in text
    rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("-1 ", "0 ", "0.5 "))]
    assert [r[1] for r in rows] == [pt["kind"] for pt in rep["neurons"][0]["points"]]
    net, x, y = random_problem("tanh", "squared", N=2, d=1)
    rep = ls.plateau_report(net, x, y, [0.5], neurons=[0])
    text = ls.format_report(rep)
    assert "NOT a strict local minimum" in text and "rerun with --polish" in text
    rep.update(polish=dict(iterations=500, gradient_norm=1e-3, converged=False))  # --polish given, no minimum:
    text = ls.format_report(rep)  # the advice is not to give the --polish that was given
    assert "NOT a strict local minimum" in text and "rerun with --polish" not in text
    assert "the --polish by Newton did not reach one" in text
