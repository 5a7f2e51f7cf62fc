"""``python -m dlfast.compat SCRIPT.py [args]``: book-style scripts written here run unmodified
from a chapter folder next to the book's own ``common`` and ``dataset`` folders (stand-ins that
fail when imported), with ``common`` and ``dataset.mnist`` resolved to dlfast.compat."""
import gzip
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dlfast.compat.__main__ import main

POISON = "raise ImportError('the book folder was imported instead of dlfast.compat')\n"

NET = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from common.layers import *
from common.gradient import numerical_gradient
from collections import OrderedDict


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        self.params = {}
        self.params['W1'] = weight_init_std * np.random.randn(input_size, hidden_size)
        self.params['b1'] = np.zeros(hidden_size)
        self.params['W2'] = weight_init_std * np.random.randn(hidden_size, output_size)
        self.params['b2'] = np.zeros(output_size)
        self.layers = OrderedDict()
        self.layers['Affine1'] = Affine(self.params['W1'], self.params['b1'])
        self.layers['Relu1'] = Relu()
        self.layers['Affine2'] = Affine(self.params['W2'], self.params['b2'])
        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.lastLayer.forward(self.predict(x), t)

    def accuracy(self, x, t):
        y = np.argmax(self.predict(x), axis=1)
        if t.ndim != 1: t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.lastLayer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        return {'W1': self.layers['Affine1'].dW, 'b1': self.layers['Affine1'].db,
                'W2': self.layers['Affine2'].dW, 'b2': self.layers['Affine2'].db}
'''

SCRIPT = '''
import sys, os
sys.path.append(os.pardir)
from dataset.mnist import load_mnist
from common.optimizer import *            # np comes from here, as with the book's module
from common.multi_layer_net_extend import MultiLayerNetExtend
from common.trainer import Trainer
from common.util import smooth_curve, shuffle_dataset
import common.layers
import dlfast.compat
from two_layer_net import TwoLayerNet

assert common.layers.Relu is dlfast.compat.layers.Relu
assert __name__ == "__main__"
print("argv", sys.argv[1:])
np.random.seed(int(sys.argv[1]))
(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)
print("data", x_train.shape, x_train.dtype, t_train.shape, x_test.shape)

net = TwoLayerNet(784, 30, 10)
for i in range(60):
    m = np.random.choice(x_train.shape[0], 50)
    grad = net.gradient(x_train[m], t_train[m])
    for key in ('W1', 'b1', 'W2', 'b2'):
        net.params[key] -= 0.3 * grad[key]
print("two-layer acc", net.accuracy(x_test, t_test) > 0.5)

# the optimiser-path script: Python numbers as parameters
params, grads = {'x': -7.0, 'y': 2.0}, {'x': 0, 'y': 0}
opt = Adam(lr=0.3)
for i in range(30):
    grads['x'], grads['y'] = params['x'] / 10.0, 2.0 * params['y']
    opt.update(params, grads)
print("path", type(params['x']).__name__, abs(params['y']) < 1.0)

# the one-row batch-norm gradient check
bn = MultiLayerNetExtend(784, [20, 20], 10, use_batchnorm=True)
g = bn.gradient(x_train[:1], t_train[:1])
print("bn one row", sorted(g)[:3])

x_tr, t_tr = shuffle_dataset(x_train, t_train)
trainer = Trainer(MultiLayerNetExtend(784, [30], 10, use_dropout=True, dropout_ration=0.2),
                  x_tr, t_tr, x_test, t_test, epochs=2, mini_batch_size=50,
                  optimizer='sgd', optimizer_param={'lr': 0.1}, verbose=False)
trainer.train()
print("trainer", len(trainer.train_loss_list), len(smooth_curve(trainer.train_loss_list)))
sys.exit(int(sys.argv[2]))
'''


def write_mnist(folder, n_train=300, n_test=60):
    """Tiny MNIST-format files: class k has a bright k-th row band (written independently)."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for kind, n in (("train", n_train), ("t10k", n_test)):
        t = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(t):
            x[i, 2 * k + 3:2 * k + 6, 4:24] = 250
        for name, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", t)):
            head = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
            with open(os.path.join(folder, f"{kind}-{name}.gz"), "wb") as f:
                f.write(gzip.compress(head + arr.tobytes()))


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A book-shaped tree: common/ and dataset/ that must not be imported, ch99/ with the net
    and the script; DLFAST_DATA holding tiny MNIST files."""
    for pkg in ("common", "dataset"):
        (tmp_path / pkg).mkdir()
        for mod in ("__init__", "layers", "optimizer", "trainer", "mnist",
                    "multi_layer_net_extend", "util"):
            (tmp_path / pkg / f"{mod}.py").write_text(POISON)
    ch = tmp_path / "ch99"
    ch.mkdir()
    (ch / "two_layer_net.py").write_text(textwrap.dedent(NET))
    (ch / "train.py").write_text(textwrap.dedent(SCRIPT))
    write_mnist(tmp_path / "data" / "mnist")
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "data"))
    return ch


def test_python_m_dlfast_compat_runs_a_book_script(book):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "dlfast.compat", "train.py", "5", "0"], cwd=book,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "argv ['5', '0']"
    assert out[1] == "data (300, 784) float32 (300, 10) (60, 784)"
    assert "two-layer acc True" in out and "path float True" in out
    assert "bn one row ['W1', 'W2', 'W3']" in out
    assert "trainer 12 12" in out
    r = subprocess.run([sys.executable, "-m", "dlfast.compat", "train.py", "5", "7"], cwd=book,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 7                      # the script's exit status


def test_main_in_process_and_aliases_removed(book, monkeypatch, capsys):
    monkeypatch.chdir(book)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = list(sys.path)
    assert main(["train.py", "1", "0"]) == 0
    assert "path float True" in capsys.readouterr().out
    assert not any(m == "common" or m.startswith(("common.", "dataset")) for m in sys.modules)
    assert sys.path == path


def test_keep_dataset_and_errors(tmp_path, monkeypatch, capsys):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "__init__.py").write_text("")
    (tmp_path / "dataset" / "mnist.py").write_text("def load_mnist(**kw):\n    return 'own'\n")
    (tmp_path / "s.py").write_text("from dataset.mnist import load_mnist\nprint(load_mnist())\n"
                                   "import common.functions as f\nprint(f.relu(-1.0))\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--keep-dataset", "s.py"]) == 0
    assert capsys.readouterr().out.split() == ["own", "0.0"]
    assert main([]) == 2 and "usage" in capsys.readouterr().err
    assert main(["missing.py"]) == 2 and "no such script" in capsys.readouterr().err
    assert main(["--bogus", "s.py"]) == 2
    assert main(["--help"]) == 0 and "usage" in capsys.readouterr().out
    (tmp_path / "fail.py").write_text("import sys\nsys.exit('bad input')\n")
    assert main(["fail.py"]) == 1 and "bad input" in capsys.readouterr().err
    (tmp_path / "raise.py").write_text("raise KeyError('boom')\n")
    with pytest.raises(KeyError, match="boom"):
        main(["raise.py"])
    assert "common" not in sys.modules


def test_python_m_dataset_mnist_runs_init_mnist(tmp_path):
    """As the book's ``python mnist.py``: the pickle of the (present) files, nothing downloaded."""
    import pickle
    folder = tmp_path / "data" / "mnist"
    write_mnist(folder)
    env = dict(os.environ, DLFAST_DATA=str(tmp_path / "data"),
               DLFAST_MNIST_MIRRORS="http://127.0.0.1:9/")      # nothing listens there
    r = subprocess.run([sys.executable, "-m", "dlfast.compat.dataset.mnist"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open(folder / "mnist.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["train_img"].shape == (300, 784) and data["test_label"].shape == (60,)
    assert data["train_img"].dtype == np.uint8 and data["train_label"].max() <= 9
