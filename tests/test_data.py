"""The one input layer (flowfem.data): CSV columns read by name, NPZ arrays, one shape check for every entry point.

Files are read by rank 0 of the CLI, so these tests are serial (NumPy only)."""

import io

import numpy as np
import pytest
from mpi4py import MPI

from flowfem import data, particles, plateau, readout
from flowfem.network import Network


def table(n=30, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d))
    return x, np.sin(np.pi * x[:, 0]) + 0.3 * x[:, -1] ** 2


def write_csv(path, names, columns, encoding="utf-8"):
    """A CSV whose header is ``names`` (exactly as given) above the given columns."""
    with open(path, "w", encoding=encoding) as f:
        f.write(",".join(names) + "\n")
        for row in np.column_stack(columns):
            f.write(",".join(repr(float(v)) for v in row) + "\n")
    return str(path)


# -- columns by name -------------------------------------------------------------------


def test_inputs_are_taken_by_name_wherever_they_stand(tmp_path):
    x, y = table()
    ordered = data.load(write_csv(tmp_path / "a.csv", ["x1", "x2", "y"], [x[:, 0], x[:, 1], y]))
    for names, cols in ((["x2", "x1", "y"], [x[:, 1], x[:, 0], y]), (["y", "x2", "x1"], [y, x[:, 1], x[:, 0]]),
                        ([" x2 ", "y ", "\tx1"], [x[:, 1], y, x[:, 0]])):
        swapped = data.load(write_csv(tmp_path / "b.csv", names, cols))
        np.testing.assert_array_equal(swapped.x, x)
        np.testing.assert_array_equal(swapped.y, y)
    np.testing.assert_array_equal(ordered.x, x)


def test_a_byte_order_mark_keeps_x1(tmp_path):
    x, y = table()
    ds = data.load(write_csv(tmp_path / "bom.csv", ["x1", "x2", "y"], [x[:, 0], x[:, 1], y], encoding="utf-8-sig"))
    assert open(tmp_path / "bom.csv", "rb").read(3) == b"\xef\xbb\xbf"
    np.testing.assert_array_equal(ds.x, x)
    (tmp_path / "windows.csv").write_bytes(b"\xef\xbb\xbfx2,x1,y\r\n0.5,0.25,1\r\n-1,2,3\r\n")  # BOM and CRLF
    ds = data.load(tmp_path / "windows.csv")
    np.testing.assert_array_equal(ds.x, [[0.25, 0.5], [2.0, -1.0]])
    np.testing.assert_array_equal(ds.y, [1.0, 3.0])


def test_predictions_read_back_as_data(tmp_path):
    """predictions.csv (x1..xd, y, f) is data: f, the prediction column, is ignored; np.savetxt's '# ' header too."""
    x, y = table()
    data.save_predictions(tmp_path / "p.csv", x, y + 1.0, y)
    ds = data.load(tmp_path / "p.csv")
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    np.savetxt(tmp_path / "c.csv", np.column_stack([x, y]), delimiter=",", header="x1,x2,y")  # comments="# "
    np.testing.assert_array_equal(data.load(tmp_path / "c.csv").x, x)
    stream = io.StringIO()
    data.save_predictions(stream, x, y)
    assert stream.getvalue().splitlines()[0] == "x1,x2,f"


BAD_HEADERS = [
    (["x1", "xerr", "y"], "unknown column(s) 'xerr'"),
    (["x1", "z", "y", "w"], "unknown column(s) 'z', 'w'"),
    (["x0", "x1", "y"], "unknown column(s) 'x0'"),
    (["x1", "x1", "y"], "column(s) 'x1' appear more than once"),
    (["x1", "x3", "y"], "input column(s) x2 missing"),
    (["x2", "y", "f"], "input column(s) x1 missing"),
    (["y", "f", "y2"], "columns 'y' and 'y2' both name targets"),
    (["x1", "y2"], "output column(s) y1 missing (found y2)"),
    (["y", "f", "y"], "column(s) 'y' appear more than once"),
    (["x1", "", "y"], "column 2 of the header has no name"),
    (["f", "y", "f"], "column(s) 'f' appear more than once"),
]


@pytest.mark.parametrize("names,message", BAD_HEADERS, ids=[m for _, m in BAD_HEADERS])
def test_bad_columns_are_refused_by_name(tmp_path, names, message):
    path = write_csv(tmp_path / "bad.csv", names, [np.arange(5.0)] * len(names))
    with pytest.raises(ValueError, match="data file .*bad.csv") as info:
        data.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_files_are_refused_in_one_line(tmp_path):
    x, y = table(n=4, d=1)
    cases = {
        "headerless.csv": ("0.1,0.2\n0.3,0.4\n", "has no header: make its first line name the columns, e.g. x1,y"),
        "headerless3.csv": ("0.1,0.2,0.5\n", "e.g. x1,x2,y"),
        "noy.csv": ("x1\n0.1\n", "has no targets y"),
        "letters.csv": ("x1,y\n0.1,abc\n", "rows below the header are not numbers"),
        "ragged.csv": ("x1,y\n0.1,0.2,0.3\n", "rows have 3 columns, the header names 2"),
        "rowless.csv": ("x1,y\n", "has a header but no rows"),
        "empty.csv": ("", "is empty"),
        "nan.csv": ("x1,y\n0.1,nan\n", "targets y contain NaN or inf (first at row 0, counting rows from 0)"),
        "data.txt": ("x1,y\n0.1,0.2\n", "use a .csv or .npz file"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as info:
            data.load(tmp_path / name)
        assert message in str(info.value) and "\n" not in str(info.value), (name, str(info.value))
    (tmp_path / "latin1.csv").write_bytes("x1,y\n0.1,0.2 \xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        data.load(tmp_path / "latin1.csv")
    with pytest.raises(ValueError, match="does not exist"):
        data.load(tmp_path / "missing.csv")


def test_predict_inputs_need_no_targets(tmp_path):
    x, _ = table()
    path = write_csv(tmp_path / "in.csv", ["x2", "x1"], [x[:, 1], x[:, 0]])
    ds = data.load(path, require_y=False)
    assert ds.y is None
    np.testing.assert_array_equal(ds.x, x)
    with pytest.raises(ValueError, match="has no targets y"):
        data.load(path)
    with pytest.raises(ValueError, match="unknown column"):  # the same names rule for inputs only
        data.load(write_csv(tmp_path / "in2.csv", ["x1", "xerr"], [x[:, 0], x[:, 1]]), require_y=False)


# -- NPZ --------------------------------------------------------------------------------


def test_npz_shapes(tmp_path):
    x, y = table(d=1)
    for name, arrays in {"flat": dict(x=x[:, 0], y=y), "column": dict(x=x, y=y[:, None])}.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        ds = data.load(tmp_path / f"{name}.npz")
        assert ds.x.shape == (30, 1) and ds.y.shape == (30,)
        np.testing.assert_array_equal(ds.y, y)
    bad = {
        "y3.npz": (dict(x=x, y=np.ones((30, 2, 1))), "targets y have shape (30, 2, 1)"),
        "x3.npz": (dict(x=x[:, :, None] * np.ones(2), y=y), "inputs x have shape (30, 1, 2)"),
        "extra.npz": (dict(x=x, y=y, xerr=y), "unknown array(s) 'xerr'"),
        "nox.npz": (dict(y=y), "has no array 'x'"),
        "short.npz": (dict(x=x, y=y[:-1]), "targets y have shape (29,)"),
    }
    for name, (arrays, message) in bad.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError) as info:
            data.load(tmp_path / name)
        assert message in str(info.value), (name, str(info.value))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot be read as NPZ"):
        data.load(tmp_path / "junk.npz")


def test_save_and_load_round_trip(tmp_path):
    x, y = table()
    for name in ("d.csv", "d.npz"):
        data.save(data.Dataset(x, y), tmp_path / name)
        ds = data.load(tmp_path / name)
        np.testing.assert_array_equal(ds.x, x)
        np.testing.assert_array_equal(ds.y, y)


def test_train_test_split_and_held_out_file(tmp_path):
    x, y = table(n=50, d=1)
    path = write_csv(tmp_path / "d.csv", ["y", "x1"], [y, x[:, 0]])
    train, test = data.train_test(path, seed=3)
    assert (train.n, test.n) == (40, 10)
    np.testing.assert_array_equal(np.sort(np.concatenate([train.y, test.y])), np.sort(y))
    held = write_csv(tmp_path / "t.csv", ["x1", "y"], [x[:7, 0], y[:7]])
    for spec in (path, "sin"):
        train, test = data.train_test(spec, n=50, test=held)
        assert train.n == 50 and test.n == 7
    with pytest.raises(ValueError, match="test data have d = 2 inputs, training data d = 1"):
        data.train_test("sin", test="two_moons")


# -- one shape check: y (n, 1) is y (n,) everywhere ------------------------------------------


def test_check_squeezes_a_target_column_and_refuses_other_shapes():
    x, y = table()
    _, yc = data.check(x, y[:, None])
    assert yc.shape == (30,) and np.array_equal(yc, y)
    assert data.check(x[:, 0], y)[0].shape == (30, 1)
    for bad in (y[None, :], np.ones((30, 2, 1)), y[:-1], y.reshape(5, 6)):  # (30, m): m outputs, test_multioutput
        with pytest.raises(ValueError, match="targets y have shape"):
            data.check(x, bad)
    with pytest.raises(ValueError, match=r"inputs have shape \(30, 2\); this network takes \(n, 1\)"):
        data.check(x, None, 1, takes="this network")


def test_a_target_column_gives_the_same_particles_readout_network_and_landscape():
    x, y = table(n=40, d=1)
    run = dict(width=6, steps=20, lr=0.1, seed=1, comm=MPI.COMM_SELF)
    flat, col = particles.train(x, y, **run), particles.train(x, y[:, None], x_test=x, y_test=y[:, None], **run)
    np.testing.assert_array_equal(flat.particles, col.particles)
    with pytest.raises(ValueError, match="targets y are missing"):
        particles.train(x, None, **run)
    assert flat.history["loss"][-1] == col.history["loss"][-1]
    net = flat.network
    np.testing.assert_array_equal(net(x), net(x[:, 0]))
    with pytest.raises(ValueError, match=r"inputs have shape \(40, 1\); this network takes \(n, 2\)"):
        Network(np.ones((2, 2)), np.zeros(2), np.ones(2), "relu")(x)
    neurons = readout.Neurons(np.array([[1.0, 0.2], [-2.0, 0.5], [0.5, -1.0]]), np.ones(3), np.ones(3),
                              net.activation)
    a, b = readout.refit(neurons, x, y, 1e-3), readout.refit(neurons, x, y[:, None], 1e-3)
    np.testing.assert_array_equal(a.value, b.value)
    assert readout.objective(net, x, y) == readout.objective(net, x, y[:, None])
    assert plateau.objective(net, x, y) == plateau.objective(net, x, y[:, None])
