"""dlfast.compat's restricted unpickler: the book's params pickles (dicts of NumPy arrays, in the
protocols NumPy and Python have written them) load; anything else is refused before any of it
runs."""
import io
import os
import pickle
import sys

import numpy as np
import pytest

from dlfast.compat import DeepConvNet, SimpleConvNet, load_pickle, save_pickle


def params_like_the_book():
    rng = np.random.default_rng(0)
    return {"W1": rng.normal(size=(3, 1, 2, 2)), "b1": np.zeros(3), "W2": rng.normal(size=(4, 2)),
            "b2": np.arange(2, dtype=np.float32)}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    obj = {**params_like_the_book(), "nested": [np.int64(3), 2.5, (np.float32(1.5), True, 1j)],
           "ints": np.arange(6, dtype=np.uint8).reshape(2, 3), 7: np.float64(0.25),
           "fortran": np.asfortranarray(np.ones((2, 3)))}
    path = tmp_path / "p.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    got = load_pickle(str(path))
    assert sorted(map(str, got)) == sorted(map(str, obj))
    for k in ("W1", "b1", "W2", "b2", "ints", "fortran"):
        np.testing.assert_array_equal(got[k], obj[k])
        assert got[k].dtype == obj[k].dtype
    assert got["nested"][0] == 3 and got["nested"][2][0] == np.float32(1.5) and got[7] == 0.25
    with open(path, "rb") as f:                            # a file object works too
        assert load_pickle(f).keys() == got.keys()


def test_save_pickle_round_trip_and_refusals(tmp_path):
    p = params_like_the_book()
    save_pickle(p, tmp_path / "a.pkl")
    with open(tmp_path / "a.pkl", "rb") as f:
        plain = pickle.load(f)                            # the book's pickle.load reads it
    for k in p:
        np.testing.assert_array_equal(plain[k], p[k])
    buf = io.BytesIO()
    save_pickle([p["W1"], 1.0], buf)
    buf.seek(0)
    assert load_pickle(buf)[1] == 1.0
    with pytest.raises(TypeError, match=r"obj\['f'\] is a builtin_function_or_method"):
        save_pickle({"f": len}, tmp_path / "b.pkl")
    with pytest.raises(TypeError, match="obj is a str"):
        save_pickle("text", tmp_path / "c.pkl")


class Exploit:
    """Unpickling this calls os.system (a classic malicious pickle)."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('exit 3')",))


def test_malicious_pickles_run_nothing(tmp_path):
    marker = tmp_path / "ran"
    cmd = f"touch {marker}" if sys.platform != "win32" else f"type nul > {marker}"
    evil = tmp_path / "evil.pkl"
    for obj in ({"W1": np.ones(2), "x": Exploit(cmd)}, Exploit(cmd), [Eval()]):
        with open(evil, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        with pytest.raises(pickle.UnpicklingError, match=r"refused to load the global "
                                                         r"(posix|nt|os)\.system|(__builtin__|builtins)\.eval"):
            load_pickle(str(evil))
        assert not marker.exists()
    # a net's load_params refuses it too and keeps its parameters
    with open(evil, "wb") as f:
        pickle.dump({"W1": Exploit(cmd)}, f)
    net = SimpleConvNet(input_dim=(1, 6, 6), hidden_size=3,
                        conv_param={"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1})
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(pickle.UnpicklingError, match="system"):
        net.load_params(str(evil))
    assert not marker.exists()
    for k, v in before.items():
        np.testing.assert_array_equal(net.params[k], v)


def test_other_objects_are_refused(tmp_path):
    path = tmp_path / "x.pkl"
    cases = [({"s": {1, 2}}, r"x.pkl\['s'\] is a set"), ({"o": np.array([1, "a"], dtype=object)}, "dtype object"),
             ({"s": "text"}, r"\['s'\] is a str"), ({"n": None}, "NoneType"),
             ({(1, 2): np.ones(2)}, "key of type tuple"),
             ({"d": np.datetime64("2020-01-01")}, "numpy.dtypes|datetime64|refused")]
    for obj, msg in cases:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        with pytest.raises(pickle.UnpicklingError, match=msg):
            load_pickle(str(path))
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(pickle.UnpicklingError):
        load_pickle(str(path))
    path.write_bytes(pickle.dumps({"W": np.ones(3)})[:-9])            # truncated
    with pytest.raises(pickle.UnpicklingError, match=r"x.pkl: .*truncated"):
        load_pickle(str(path))
    with pytest.raises(TypeError, match="path or a binary file"):
        load_pickle(3.0)


def test_load_params_checks_names_and_shapes(tmp_path):
    net = DeepConvNet()
    save_pickle({"W9": np.ones(2)}, tmp_path / "a.pkl")
    with pytest.raises(ValueError, match="parameter 'W9' this net does not have"):
        net.load_params(str(tmp_path / "a.pkl"))
    save_pickle([np.ones(2)], tmp_path / "b.pkl")
    with pytest.raises(ValueError, match="must hold a dict"):
        net.load_params(str(tmp_path / "b.pkl"))
    # a partial file (as the book's loop allows) replaces what it names
    w8 = np.full((50, 10), 0.5)
    save_pickle({"W8": w8}, tmp_path / "c.pkl")
    net.load_params(str(tmp_path / "c.pkl"))
    np.testing.assert_array_equal(net.layers[18].W, w8)
