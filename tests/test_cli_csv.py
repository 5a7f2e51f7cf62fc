"""`dlfast train --csv FILE --target COLUMN`: regression and classification from a table
(numeric columns standardised and categorical ones one-hot encoded on the training rows only),
missing values (an error naming the column and row, or --impute), --loss and --task, the same
final table and curves as for images, and argument errors."""
import csv
import json

import numpy as np
import pytest

from dlfast import _tabular, cli, io


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture
def reg_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        a, b = rng.normal(), rng.normal() * 10 + 50
        c = ["red", "green", "blue"][i % 3]
        y = 2 * a + 0.1 * (b - 50) + {"red": 1.0, "green": -1.0, "blue": 0.0}[c]
        rows.append([f"{a:.5f}", f"{b:.4f}", c, f"{y:.5f}"])
    return _write(tmp_path / "reg.csv", ["a", "b", "color", "y"], rows)


@pytest.fixture
def cls_csv(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(300):
        x1, x2 = rng.normal(size=2)
        k = "p" if i % 2 else "q"
        rows.append([f"{x1:.5f}", f"{x2:.5f}", k, "yes" if x1 + x2 + (k == "p") > 0.5 else "no"])
    return _write(tmp_path / "cls.csv", ["x1", "x2", "kind", "label"], rows)


def _train(capsys, *args):
    rc = cli.main(["train", "--no-progress", "--hidden", "32", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_regression_from_csv(tmp_path, capsys, reg_csv):
    out = tmp_path / "run"
    rc, text, err = _train(capsys, "--csv", reg_csv, "--target", "y", "--epochs", "15",
                           "--lr", "0.01", "--out", str(out))
    assert rc == 0, err
    assert "loss mse" in text and "regress, 2 numeric and 1 categorical columns -> 5 features" \
        in text
    assert "R^2" in text and "accuracy" not in text.split("\n\n")[-3]
    meta = io.read_metadata(out / "model.npz")
    assert meta["task"] == "regress" and meta["final"]["test"]["r2"] > 0.9
    pre = meta["preprocessing"]
    assert [f["name"] for f in pre["features"]] == ["a", "b", "color"]
    assert pre["features"][2]["categories"] == ["blue", "green", "red"]
    hist = json.loads((out / "history.json").read_text())["history"]
    assert len(hist["r2"]) == len(hist["val_r2"]) == 15 and not hist["accuracy"]
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"
    model = io.load_model(out / "model.npz")
    assert type(model.loss_layer).__name__ == "MSELoss"
    rc, text, _ = _train(capsys, "--csv", reg_csv, "--target", "y", "--epochs", "2", "--loss",
                         "huber", "--huber-delta", "0.5", "--out", str(out))
    assert rc == 0 and "loss huber" in text


def test_classification_from_csv(tmp_path, capsys, cls_csv):
    for extra, loss in (([], "SoftmaxCrossEntropy"), (["--loss", "sigmoid_bce"], "SigmoidBCELoss")):
        out = tmp_path / loss
        rc, text, err = _train(capsys, "--csv", cls_csv, "--target", "label", "--epochs", "10",
                               "--out", str(out), *extra)
        assert rc == 0, err
        assert "classify" in text and "accuracy" in text and "%" in text
        meta = io.read_metadata(out / "model.npz")
        assert meta["preprocessing"]["classes"] == ["no", "yes"]
        assert meta["final"]["test"]["accuracy"] > 0.85
        model = io.load_model(out / "model.npz")
        assert type(model.loss_layer).__name__ == loss
        assert model.output_size == (1 if loss == "SigmoidBCELoss" else 2)


def test_missing_values_are_named_or_imputed(tmp_path, capsys, reg_csv):
    rows = list(csv.reader(open(reg_csv)))
    rows[8][1] = "NA"                              # data row 8: line 9
    rows[20][2] = ""
    path = _write(tmp_path / "gaps.csv", rows[0], rows[1:])
    rc, _, err = _train(capsys, "--csv", path, "--target", "y", "--epochs", "1")
    assert rc == 1
    assert "column 'b' is missing a value in row 8 (line 9 of" in err and "--impute" in err
    for how in _tabular.IMPUTE:
        rc, text, err = _train(capsys, "--csv", path, "--target", "y", "--epochs", "2",
                               "--impute", how, "--out", str(tmp_path / how))
        assert rc == 0, err
    rows[5][3] = "?"
    path = _write(tmp_path / "notarget.csv", rows[0], rows[1:])
    rc, _, err = _train(capsys, "--csv", path, "--target", "y", "--impute", "mean")
    assert rc == 1 and "target column 'y' is missing a value in row 5" in err


def test_preprocessing_is_fitted_on_the_training_rows_only():
    t = _tabular.Table("mem.csv", ["n", "c", "y"],
                       {"n": ["1", "3", "", "100"], "c": ["u", "v", "u", "w"],
                        "y": ["0", "1", "0", "1"]}, [2, 3, 4, 5])
    pre = _tabular.Preprocess(t, "y", "classify", impute="mean").fit(np.array([0, 1, 2]))
    st = pre.state()["features"]
    assert st[0]["fill"] == 2.0                             # mean of the training rows 1, 3
    assert st[0]["mean"] == pytest.approx(2.0) and st[0]["std"] == pytest.approx(np.std([1, 3, 2]))
    assert st[1]["categories"] == ["u", "v"]                # 'w' appears in another row only
    x, y = pre.transform(np.array([3, 2]), np.float32)
    np.testing.assert_allclose(x[0], [(100 - 2) / np.std([1, 3, 2]), 0, 0])   # unseen: zeros
    np.testing.assert_allclose(x[1], [0, 1, 0])
    assert y.tolist() == [1, 0] and pre.classes == [0, 1]
    assert _tabular.task_of(t, "y") == "classify"
    t.columns["y"] = ["0.5", "1.25", "3", "4"]
    assert _tabular.task_of(t, "y") == "regress"
    with pytest.raises(ValueError, match="missing a value in row 3 \\(line 4 of mem.csv\\)"):
        _tabular.Preprocess(t, "y", "regress")


def test_argument_errors(tmp_path, capsys, cls_csv):
    bad = tmp_path / "ragged.csv"
    bad.write_text("a,b,y\n1,2,0\n3,4\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"a,b,y\n1,\xe9,0\n")
    one = tmp_path / "one.csv"
    one.write_text("a,y\n1,yes\n2,yes\n3,yes\n")
    cases = [
        (["--csv", cls_csv], "--csv needs --target COLUMN"),
        (["--csv", cls_csv, "--target", "zzz"], "--target 'zzz' is not a column"),
        (["--csv", cls_csv, "--target", "label", "--loss", "mse"], "--loss mse is a regression"),
        (["--csv", cls_csv, "--target", "label", "--dataset", "digits"], "--dataset does not "
                                                                         "apply to --csv"),
        (["--csv", cls_csv, "--target", "label", "--arch", "dense:4"], "--arch does not apply"),
        (["--csv", cls_csv, "--target", "x1", "--loss", "softmax_xent", "--task", "regress"],
         "--loss softmax_xent is a classification loss"),
        (["--csv", str(bad), "--target", "y"], "line 3: 2 fields, but the header names 3"),
        (["--csv", str(empty), "--target", "y"], "is empty"),
        (["--csv", str(latin), "--target", "y"], "latin.csv is not UTF-8 text"),
        (["--csv", str(one), "--target", "y"], "needs at least 2 classes in the target column "
                                               "'y'; it holds only 'yes'"),
        (["--target", "y"], "--target, --task and --impute apply to --csv data"),
        (["--loss", "sigmoid_bce"], "needs a binary target"),
        (["--loss", "mae"], "--loss mae is a regression loss"),
        (["--huber-delta", "2"], "--huber-delta applies to --loss huber only"),
    ]
    for args, msg in cases:
        rc, _, err = _train(capsys, "--epochs", "1", "--out", str(tmp_path / "o"), *args)
        assert rc == 1 and msg in err, (args, err)


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    """Spreadsheets save "CSV UTF-8" with a leading byte-order mark: the first column is still
    named as written."""
    path = tmp_path / "bom.csv"
    path.write_bytes("x1,label\n0.5,a\n1.5,b\n".encode("utf-8-sig"))
    table = _tabular.read_csv(str(path))
    assert table.names == ["x1", "label"] and table.columns["x1"] == ["0.5", "1.5"]


def test_resume_with_other_epochs_is_refused(tmp_path, capsys, cls_csv):
    """A resumed run continues to its own end: --epochs that differs is an error, not a run that
    silently trains nothing more."""
    ck = str(tmp_path / "ck.npz")
    common = ["--csv", cls_csv, "--target", "label", "--out", str(tmp_path / "o")]
    rc, _, _ = _train(capsys, *common, "--epochs", "2", "--checkpoint", ck)
    assert rc == 0
    rc, _, err = _train(capsys, *common, "--epochs", "5", "--resume", ck)
    assert rc == 1 and "--epochs 5 does not match the run" in err and "--epochs 2" in err, err
    rc, _, _ = _train(capsys, *common, "--epochs", "2", "--resume", ck)
    assert rc == 0
