"""The classic experiments on their quick budgets: each writes a PNG, returns its table, and shows
its qualitative claim."""
import math

import numpy as np
import pytest

from dlfast import experiments as E
from dlfast.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


@pytest.fixture(scope="module")
def results(out):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = E.run(name, out, quick=True, seed=0, verbose=False)
        return cache[name]

    return get


def _check_result(r, out):
    with open(r["png"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert str(out) in r["png"]
    assert r["rows"] and r["columns"]
    for row in r["rows"]:
        assert set(r["columns"]) <= set(row)
    table = E.format_table(r)
    assert all(c in table for c in r["columns"])
    assert len(table.splitlines()) == len(r["rows"]) + 3


def _rows(r, key):
    return {row[key]: row for row in r["rows"]}


def test_registry_has_all_experiments():
    assert E.names() == ["optimizers-path", "optimizers", "init-histograms", "init", "batchnorm",
                         "overfit", "hyperparams", "multitask", "augment", "pretrain", "convnet"]
    with pytest.raises(ValueError, match="unknown experiment"):
        E.run("nope", "/tmp")
    with pytest.raises(ValueError, match="seed"):
        E.EXPERIMENTS["optimizers-path"][0]("/tmp", seed=-1)


def test_optimizers_path(results, out):
    r = results("optimizers-path")
    _check_result(r, out)
    rows = _rows(r, "optimizer")
    assert list(rows) == ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam"]
    f0 = (-7.0) ** 2 / 20 + 2.0 ** 2
    for name, row in rows.items():
        assert row["final f"] < 0.1 * f0, name
        p = r["paths"][name]
        assert p.shape == (31, 2) and tuple(p[0]) == (-7.0, 2.0)
    # SGD zigzags along the steep y axis; AdaGrad/RMSProp damp y and end lower than SGD
    assert rows["SGD"]["y sign changes"] >= 20
    assert rows["AdaGrad"]["y sign changes"] <= 2
    assert rows["AdaGrad"]["final f"] < rows["SGD"]["final f"]
    assert rows["RMSProp"]["final f"] < rows["SGD"]["final f"]


def test_optimizers(results, out):
    r = results("optimizers")
    _check_result(r, out)
    rows = _rows(r, "optimizer")
    loss = {k: v["final loss (last 10 batches)"] for k, v in rows.items()}
    # same steps, same initial weights and batches: Adam and AdaGrad well below SGD
    assert loss["Adam"] < 0.5 * loss["SGD"]
    assert loss["AdaGrad"] < 0.5 * loss["SGD"]
    assert loss["Momentum"] < loss["SGD"]
    assert len({v["steps"] for v in rows.values()}) == 1
    assert rows["Adam"]["test accuracy"] > 0.85


def test_init_histograms(results, out):
    r = results("init-histograms")
    _check_result(r, out)
    assert len(r["rows"]) == 12
    s = r["stds"]
    rows = {(row["init"], row["activation"]): row for row in r["rows"]}
    # std 1 with sigmoid: activations pile up at 0 and 1
    assert rows[("std 1", "sigmoid")]["saturated/dead L5"] > 0.4
    # std 0.01 with ReLU: the signal vanishes layer by layer
    relu_small = s[("std 0.01", "relu")]
    assert relu_small[-1] < 1e-3 * relu_small[0]
    # He keeps ReLU activations at a steady scale; Xavier (= sqrt(1/n)) shrinks them
    he = s[("He", "relu")]
    assert 0.5 < he[-1] / he[0] < 2.0
    xa = s[("Xavier", "relu")]
    assert xa[-1] < 0.5 * xa[0]
    # Xavier keeps sigmoid activations spread (not collapsed like std 0.01)
    assert s[("Xavier", "sigmoid")][-1] > 3 * s[("std 0.01", "sigmoid")][-1]


def test_init(results, out):
    r = results("init")
    _check_result(r, out)
    rows = _rows(r, "init")
    # std 0.01: the deep ReLU net does not learn (loss stays at log 10); He does
    assert rows["std 0.01"]["final loss (last 10 batches)"] > 2.2
    assert abs(rows["std 0.01"]["final loss (last 10 batches)"] - math.log(10)) < 0.05
    assert rows["He"]["final loss (last 10 batches)"] < 1.5
    assert rows["He"]["test accuracy"] > 0.6
    assert rows["He"]["final loss (last 10 batches)"] < rows["Xavier"]["final loss (last 10 batches)"]


def test_batchnorm(results, out):
    r = results("batchnorm")
    _check_result(r, out)
    better = [row["BN better"] for row in r["rows"]]
    assert sum(better) > len(better) / 2            # BN trains faster at most scales
    for w, accs in r["curves"].items():
        assert len(accs[True]) == len(accs[False])


def test_overfit(results, out):
    r = results("overfit")
    _check_result(r, out)
    rows = _rows(r, "regularisation")
    none, wd, dr = rows["none"], rows["weight decay 0.1"], rows["dropout 0.2"]
    assert none["train acc"] > 0.95                # it memorises the 300 samples
    assert wd["gap"] < none["gap"] and dr["gap"] < none["gap"]
    assert wd["loss gap"] < none["loss gap"] and dr["loss gap"] < none["loss gap"]


def test_hyperparams(results, out):
    r = results("hyperparams")
    _check_result(r, out)
    first, second = r["first"], r["second"]
    assert len(first) == len(second) == 8
    scores = [t.score for t in first if not math.isnan(t.score)]
    assert scores == sorted(scores, reverse=True)
    # the narrowed space lies within the range of round 1's best five
    best5 = first[:5]
    lrs = [t.params["lr"] for t in best5]
    assert r["narrowed"]["lr"].low == min(lrs) and r["narrowed"]["lr"].high == max(lrs)
    for t in second:
        assert min(lrs) <= t.params["lr"] <= max(lrs)
    # searching the narrowed range pays: a better average trial
    m1 = np.nanmean([t.score for t in first])
    m2 = np.nanmean([t.score for t in second])
    assert m2 > m1
    assert [row["round"] for row in r["rows"]] == ["1"] * 5 + ["2"] * 5


def test_multitask(results, out):
    r = results("multitask")
    _check_result(r, out)
    assert r["multitask"]["digit"] > 0.85
    assert r["multitask"]["ge5"] > 0.85
    for task in ("digit", "ge5"):
        assert r["multitask"][task] > r["separate"][task] - 0.05
    rows = _rows(r, "task")
    assert rows["parameters"]["multitask acc"] < rows["parameters"]["separate acc"]


def test_cli_experiment(tmp_path, capsys):
    assert main(["experiment", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "optimizers-path" in listing and "multitask" in listing
    rc = main(["experiment", "optimizers-path", "--quick", "--out", str(tmp_path), "--seed", "1",
               "--backend", "numpy"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "final f" in text and "optimizers-path.png" in text
    with open(tmp_path / "optimizers-path.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert main(["experiment", "no-such-thing", "--out", str(tmp_path)]) == 1
    assert "unknown experiment" in capsys.readouterr().err


def test_seed_reproducible(tmp_path):
    a = E.run("multitask", tmp_path / "a", quick=True, seed=3, verbose=False)
    b = E.run("multitask", tmp_path / "b", quick=True, seed=3, verbose=False)
    assert a["rows"] == b["rows"]


def test_convnet(results, out):
    """SimpleConvNet on the digits (padding 2): it learns within the quick budget, and its
    filters move."""
    r = results("convnet")
    _check_result(r, out)
    assert [row["epoch"] for row in r["rows"]] == [1, 2, 3] and r["padding"] == 2
    assert r["rows"][-1]["test accuracy"] > 0.85
    assert r["rows"][-1]["train loss"] < r["rows"][0]["train loss"]
    assert r["filters_before"].shape == r["filters_after"].shape == (30, 1, 5, 5)
    assert not np.array_equal(r["filters_before"], r["filters_after"])
