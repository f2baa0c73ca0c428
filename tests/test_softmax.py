"""Multiclass softmax classification (flowfem/softmax.py, docs/theory.md §16): Newton's quadratic convergence
and monotone energy, agreement with an independent dense NumPy Newton (Phi assembled by dolfinx from UFL),
C = 2 against the binary logistic model at alpha / 2, labels and scores; serial and mpirun -n 2 agree.

Runs serially and under mpirun -n 2 (tests/test_mpi.py); the test marked ``mpi`` starts mpirun itself.
"""

import os
import sys

import numpy as np
import pytest

import flowfem  # noqa: F401  (first: loads MPI before dolfinx)

from mpi4py import MPI

from conftest import ROOT, dense_system, fitted_order, gather, perturbations, run, say
from flowfem import data, labels, softmax as sm
from flowfem.operator import DataOperator
from flowfem.problem import Problem
from flowfem.space import Space
from flowfem.stationary import NotConverged, newton

pytestmark = pytest.mark.parallel  # collective-safe, any rank count: rerun by tests/test_mpi.py

comm = MPI.COMM_WORLD


def three_classes(n: int, d: int, seed: int):
    """x (n, d) and labels in {0, 1, 2}: 1-D, three noisy intervals of [-1, 1]; 2-D, three Gaussian blobs
    at 120 degrees. The same on every rank (seeded)."""
    rng = np.random.default_rng(seed)
    if d == 1:
        x = rng.uniform(-1.0, 1.0, n)
        return x[:, None], np.digitize(x + 0.15 * rng.standard_normal(n), [-0.3, 0.35])
    k = rng.integers(0, 3, n)
    centres = 0.5 * np.stack([np.cos(2 * np.pi * k / 3), np.sin(2 * np.pi * k / 3)], axis=1)
    return centres + 0.35 * rng.standard_normal((n, 2)), k


def setup(d=1, n=300, alpha=1e-4, size=None, activation="relu"):
    """(problem, x, y, Phi): three classes on the box [-3, 3]^2 (1-D inputs), or for 2-D inputs the sphere S^2
    (relu) or the box [-2, 2]^3 (other activations)."""
    x, y = three_classes(n, d, seed=1)
    if d == 1:
        space = Space.box(1, size or 16, 3.0)
    else:
        space = Space.sphere(size or 2) if activation == "relu" else Space.box(2, size or 3, 2.0)
    problem = Problem(space, activation, "uniform", alpha=alpha, kappa=0.5)
    return problem, x, y, DataOperator(problem.H, problem.activation, x)


def difference(U, V):
    W = U.copy()
    W.axpy(-1.0, V)
    return W.norm()


@pytest.mark.parametrize("pc", sm.PCS)
@pytest.mark.parametrize("d", [1, 2])
def test_newton_converges_quadratically(d, pc):
    problem, x, y, Phi = setup(d, alpha=1e-3)
    Us, info, classes = sm.fit_softmax(problem.H, Phi, y, 1e-3, rtol=1e-13, linear_rtol=1e-13, pc=pc)
    e = np.array(info.history)
    say(f"\nsoftmax Newton (d = {d}, {pc}): ||dE(U_k)|| = " + "  ".join(f"{r:.3e}" for r in e))
    say(f"  CG iterations per step {info.linear_iterations}, basis {info.rank}")
    assert info.converged and info.reason > 0 and e[-1] <= 1e-13 * e[0]
    assert info.iterations == len(e) - 1 == len(info.linear_iterations) and list(classes) == [0, 1, 2]
    # the quadratic phase: the last three steps that end above the rounding floor (1e-13 e_0: the last
    # step, which reaches rtol, lands on it), e_{k+1} <= K e_k^2 (scaled by e_0), and log e_{k+1} against
    # log e_k of slope near 2 (linear convergence gives 1)
    pairs = [(a, b) for a, b in zip(e[:-1], e[1:]) if a <= 1e-2 * e[0] and b >= 1e-13 * e[0]][-3:]
    assert len(pairs) >= 2, e
    ratios = [b * e[0] / a**2 for a, b in pairs]
    assert max(ratios) <= 100.0, ratios
    order = fitted_order([a for a, _ in pairs], [b for _, b in pairs])
    say(f"  e_(k+1) e_0 / e_k^2 = {', '.join(f'{r:.3g}' for r in ratios)}; fitted order {order:.2f}")
    assert 1.7 <= order <= 2.6, (order, e)


def test_energy_decreases_and_the_result_is_the_minimiser():
    problem, x, y, Phi = setup(2, alpha=1e-4)
    Us, info, classes = sm.fit_softmax(problem.H, Phi, y, 1e-4, rtol=1e-12)
    E = sm.SoftmaxFunctional(problem.H, Phi, y, 3, 1e-4)
    X = E.join(Us)
    energies = np.array(info.energies)
    say("\nE_alpha(U_k) = " + "  ".join(f"{v:.12f}" for v in energies))
    assert len(energies) == info.iterations + 1 and energies[0] == pytest.approx(np.log(3.0), rel=1e-14)
    assert np.all(np.diff(energies) <= 1e-14 * abs(energies[0])), np.diff(energies)
    assert energies[-1] == pytest.approx(E(X), rel=1e-14)
    assert E.gradient(X).norm() <= 1e-12 * info.history[0]
    for eps, V, W in perturbations(X, np.random.default_rng(comm.rank)):
        assert E(W) > E(X)
    # softmax invariance: adding the same function to every class leaves the data term, and the
    # regulariser's minimiser has sum_c U_c = 0
    total = Us[0].copy()
    for U in Us[1:]:
        total.axpy(1.0, U)
    assert total.norm() <= 1e-10 * Us[0].norm()
    shifted = X.copy()
    shifted.array.reshape(3, -1)[:] += np.random.default_rng(comm.rank).standard_normal(E.nlocal)
    assert E.parts(shifted)[0] == pytest.approx(E.parts(X)[0], rel=1e-12)
    # on the training data about as accurate as the Bayes rule of the three blobs (the nearest centre)
    centres = 0.5 * np.stack([np.cos(2 * np.pi * classes / 3), np.sin(2 * np.pi * classes / 3)], axis=1)
    bayes = labels.accuracy(y, np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1))
    accuracy = labels.accuracy(y, sm.decision(Phi, Us, x, classes))
    say(f"training accuracy {accuracy:.3f}, Bayes rule {bayes:.3f}")
    assert accuracy >= bayes - 0.03


def dense_softmax_newton(A, C, k, ncls, alpha):
    """The minimiser X (ncls, ndofs) of (1/n) sum_j [logsumexp(F_j) - F_{j k_j}] + (alpha/2) sum_c X_c^T A X_c,
    F = (C^T X_c)_c, by plain Newton in NumPy with a dense Hessian (A (ndofs, ndofs), C = Phi^T (ndofs, n)) and
    step halving on E: the independent reference."""
    n, m = len(k), A.shape[0]
    Y = np.eye(ncls)[k]

    def energy(X):
        F = C.T @ X.T
        lse = np.log(np.exp(F - F.max(1, keepdims=True)).sum(1)) + F.max(1)
        return np.mean(lse - F[np.arange(n), k]) + 0.5 * alpha * np.einsum("ci,ij,cj->", X, A, X)

    X = np.zeros((ncls, m))
    for _ in range(100):
        F = C.T @ X.T
        P = np.exp(F - F.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        g = (alpha * X @ A + ((P - Y).T @ C.T) / n).ravel()
        if np.linalg.norm(g) <= 1e-14:
            break
        Hs = np.kron(np.eye(ncls), alpha * A)
        for a in range(ncls):
            for b in range(ncls):
                w = P[:, a] * ((a == b) - P[:, b])
                Hs[a * m:(a + 1) * m, b * m:(b + 1) * m] += (C * w) @ C.T / n
        step = -np.linalg.solve(Hs, g).reshape(ncls, m)
        t, e0 = 1.0, energy(X)
        while energy(X + t * step) > e0 and t > 1e-8:
            t /= 2
        X = X + t * step
    return X, energy(X), Hs


@pytest.mark.parametrize("d,activation", [(1, "relu"), (2, "tanh")])
def test_matches_dense_numpy_newton(d, activation):
    problem, x, y, Phi = setup(d, n=40, alpha=1e-3, size=6 if d == 1 else 3, activation=activation)
    Us, info, classes = sm.fit_softmax(problem.H, Phi, y, 1e-3, rtol=1e-13, linear_rtol=1e-13)
    E = sm.SoftmaxFunctional(problem.H, Phi, y, 3, 1e-3)
    A, C = dense_system(E)  # Phi assembled independently by dolfinx (UFL), dense
    X, energy, Hs = dense_softmax_newton(A, C, y, 3, 1e-3)
    for c in range(3):
        Uc = gather(Us[c])
        assert np.linalg.norm(Uc - X[c]) <= 1e-8 * np.linalg.norm(X[c]), c
    assert E(E.join(Us)) == pytest.approx(energy, rel=1e-10)
    # the Hessian product at a random point and direction, against the dense Hessian there
    rng = np.random.default_rng(2)
    Z, V = rng.standard_normal((2, 3, A.shape[0])) * 0.3
    F = C.T @ Z.T
    P = np.exp(F - F.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    HV = E.vector()
    Vvec = E.join([_owned(E, V[c]) for c in range(3)])
    E.hessian_mult(P, Vvec, HV)
    Hd = np.kron(np.eye(3), 1e-3 * A)
    m = A.shape[0]
    for a in range(3):
        for b in range(3):
            Hd[a * m:(a + 1) * m, b * m:(b + 1) * m] += (C * (P[:, a] * ((a == b) - P[:, b]))) @ C.T / E.n
    expected = (Hd @ V.ravel()).reshape(3, m)
    got = [gather(U) for U in E.split(HV)]
    assert np.linalg.norm(np.ravel(got) - expected.ravel()) <= 1e-10 * np.linalg.norm(expected)


def _owned(E, values):
    U = E.block.vector()
    lo, hi = U.getOwnershipRange()
    U.array[:] = values[lo:hi]
    return U


def test_two_classes_are_the_logistic_model_at_half_alpha():
    """C = 2: the difference v = u_1 - u_0 of the softmax densities at alpha is the logistic density at
    alpha / 2 (u_0 = -u_1, (alpha/2)(|u_0|^2 + |u_1|^2) = (alpha/4)|v|^2), and the decisions agree."""
    alpha = 1e-3
    ds, test = data.synthetic("two_moons", 120, seed=7), data.synthetic("two_moons", 200, seed=8)
    space = Space.sphere(1)
    logistic = Problem(space, "relu", "uniform", alpha=alpha / 2, kappa=0.5, loss="logistic")
    E = logistic.functional(ds.x, ds.y)
    U, _ = newton(E, rtol=1e-13, linear_rtol=1e-13)
    Us, info, classes = sm.fit_softmax(logistic.H, E.Phi, ds.y, alpha, rtol=1e-13, linear_rtol=1e-13)
    assert list(classes) == [-1.0, 1.0]
    v = Us[1].copy()
    v.axpy(-1.0, Us[0])
    assert difference(v, U) <= 1e-8 * U.norm()
    total = Us[0].copy()
    total.axpy(1.0, Us[1])
    assert total.norm() <= 1e-10 * U.norm()
    for points in (ds.x, test.x):
        f = E.Phi.predict(U, points)
        assert np.min(np.abs(f)) > 1e-6  # no point on the boundary, where rounding could decide
        assert np.array_equal(sm.decision(E.Phi, Us, points, classes), np.sign(f))
        p = sm.predict_proba(E.Phi, Us, points)
        assert np.allclose(p[:, 1], 1.0 / (1.0 + np.exp(-f)), rtol=0, atol=1e-9)


def test_labels_any_values_and_the_confusion_matrix():
    k, classes = labels.encode(np.array(["cat", "dog", "ant", "dog"])[:, None])
    assert list(classes) == ["ant", "cat", "dog"] and list(k) == [1, 2, 0, 2]
    assert list(labels.decode(k, classes)) == ["cat", "dog", "ant", "dog"]
    assert list(labels.encode([2.5, -1.0], np.array([-1.0, 2.5, 7.0]))[0]) == [1, 0]
    for bad, match in [([3, 3, 3], "one class only"), ([0, np.nan, 1], "NaN or inf"), ([], "shape"),
                       (np.zeros((3, 2)), "shape"), (None, "missing"), ([1 + 2j, 0], "numbers or strings")]:
        with pytest.raises(ValueError, match=match):
            labels.encode(bad)
    with pytest.raises(ValueError, match=r"label 5 \(row 1\) is not one of the fitted classes 0, 1, 2"):
        labels.encode([0, 5], np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels are strings but the fitted classes are numbers"):
        labels.encode(["0", "1"], np.array([0, 1, 2]))
    true = np.array(["a", "b", "c", "a", "c", "c"])
    pred = np.array(["a", "c", "c", "b", "c", "a"])
    M = labels.confusion_matrix(true, pred, np.array(["a", "b", "c"]))
    assert M.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 2]] and labels.accuracy(true, pred) == pytest.approx(0.5)
    # a fit on relabelled data (any C distinct values, same order) gives the same densities
    problem, x, y, Phi = setup(1, n=100, alpha=1e-3, size=8)
    Us, _, classes = sm.fit_softmax(problem.H, Phi, y, 1e-3, rtol=1e-12)
    names = np.array([-4.5, 0.25, 10.0])
    Vs, _, named = sm.fit_softmax(problem.H, Phi, names[y][:, None], 1e-3, rtol=1e-12)
    assert list(named) == list(names)
    assert all(difference(U, V) <= 1e-12 * U.norm() for U, V in zip(Us, Vs))
    assert np.array_equal(sm.decision(Phi, Vs, x, named), names[sm.decision(Phi, Us, x, classes)])
    # the metrics: accuracy, mean -log p of the true class, the confusion matrix counted by hand
    m = sm.evaluate(Phi, Vs, x, names[y], named)
    p = sm.predict_proba(Phi, Vs, x)
    assert np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    assert m["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-12)
    kp = np.argmax(p, axis=1)
    assert m["accuracy"] == pytest.approx(np.mean(kp == y))
    assert m["confusion_matrix"] == [[int(np.sum((y == a) & (kp == b))) for b in range(3)] for a in range(3)]
    assert m["classes"] == names.tolist()
    with pytest.raises(ValueError, match="99 labels for 100 data points"):
        sm.fit_softmax(problem.H, Phi, y[:99], 1e-3)
    with pytest.raises(ValueError, match="one class only"):
        sm.fit_softmax(problem.H, Phi, np.zeros(100), 1e-3)
    with pytest.raises(ValueError, match="alpha"):
        sm.fit_softmax(problem.H, Phi, y, -1.0)
    with pytest.raises(ValueError, match="preconditioner"):
        sm.fit_softmax(problem.H, Phi, y, 1e-3, pc="jacobi")


def test_newton_failure_is_reported():
    problem, x, y, Phi = setup(1, n=100, alpha=1e-4, size=8)
    with pytest.raises(NotConverged, match="softmax Newton did not converge"):
        sm.fit_softmax(problem.H, Phi, y, 1e-4, rtol=1e-13, max_it=1)
    Us, info, _ = sm.fit_softmax(problem.H, Phi, y, 1e-4, rtol=1e-13, max_it=1, allow_unconverged=True)
    assert not info.converged and info.iterations == 1 and info.residual > 1e-13 and len(Us) == 3
    # PETSc options: snes_ and ksp_ reach the SNES and its CG, the others the class blocks' solvers
    with pytest.raises(NotConverged, match="DIVERGED_LINEAR_SOLVE"):
        sm.fit_softmax(problem.H, Phi, y, 1e-4, petsc_options={"ksp_max_it": 2})
    for misspelt in ("snes_linesearch_typ", "pc_gamg_thresold"):
        with pytest.raises(ValueError, match=f"did not use the option.*{misspelt}"):
            sm.fit_softmax(problem.H, Phi, y, 1e-4, petsc_options={misspelt: "1"})


def test_progress_bar_counts_newton_steps(monkeypatch, capsys):
    monkeypatch.setenv("FLOWFEM_PROGRESS", "1")
    problem, x, y, Phi = setup(1, n=100, alpha=1e-3, size=8)
    _, info, _ = sm.fit_softmax(problem.H, Phi, y, 1e-3, rtol=1e-10, progress=True)
    err = capsys.readouterr().err
    if comm.rank == 0:
        assert f"Newton: {info.iterations}" in err.replace("\r", "\n") and "||dE||/||dE0||" in err, err
    else:
        assert err == ""


SCRIPT = """
import sys
import numpy as np
import flowfem
from mpi4py import MPI
from flowfem import io, softmax as sm
from flowfem.operator import DataOperator
from flowfem.problem import Problem
from flowfem.space import Space
from test_softmax import three_classes

d, pc, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
x, y = three_classes(400, d, seed=1)
space = Space.box(1, 24, 3.0) if d == 1 else Space.sphere(2)
problem = Problem(space, "relu", "uniform", alpha=1e-4, kappa=0.5, degree=2)
Phi = DataOperator(problem.H, problem.activation, x)
Us, info, classes = sm.fit_softmax(problem.H, Phi, y, 1e-4, rtol=1e-12, pc=pc)
gathered = [io.gather_dofs(io.function(problem.H, U)) for U in Us]
p = sm.predict_proba(Phi, Us, x)
if MPI.COMM_WORLD.rank == 0:
    np.savez(out, theta=gathered[0][0], u=np.array([g[1] for g in gathered]), p=p, energy=info.energies[-1],
             ranks=MPI.COMM_WORLD.size)
"""


@pytest.mark.mpi
@pytest.mark.parametrize("d,pc", [(1, "block_diagonal"), (2, "bohning")])
def test_one_and_two_ranks_agree(tmp_path, d, pc):
    script = tmp_path / "softmax_fit.py"
    script.write_text(SCRIPT)
    results = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}.npz"
        r = run([sys.executable, str(script), str(d), pc, str(out)], ranks=ranks, timeout=300,
                env=_env())
        assert r.returncode == 0, r.stdout + r.stderr
        results.append(np.load(out))
    one, two = results
    assert int(two["ranks"]) == 2
    assert np.array_equal(np.round(one["theta"], 10), np.round(two["theta"], 10))
    assert np.linalg.norm(one["u"] - two["u"]) <= 1e-8 * np.linalg.norm(one["u"])
    assert np.abs(one["p"] - two["p"]).max() <= 1e-8
    assert float(one["energy"]) == pytest.approx(float(two["energy"]), rel=1e-10)


def _env():
    """The environment with the tests directory importable (the script imports three_classes from here)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, here, os.environ.get("PYTHONPATH", "")]))
