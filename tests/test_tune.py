"""dlfast.tune: distributions, random_search (serial and through an Executor), narrow, failed
trials, trial seeds, the model-factory objective, Optuna TPE, table/PNG/JSON output, `dlfast tune`."""
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dlfast.tune import (Choice, IntUniform, LogUniform, MLPBuilder, OptimizerBuilder, Trial, Uniform,
                         format_table, make_objective, narrow, plot, random_search, sample,
                         save_json, search, trial_seed)


def test_distributions_sample_in_range():
    rng = np.random.default_rng(0)
    lu = [LogUniform(1e-6, 1e-2).sample(rng) for _ in range(2000)]
    assert min(lu) >= 1e-6 and max(lu) <= 1e-2
    # log-uniform: about half the draws below the geometric midpoint 1e-4
    assert 0.45 < np.mean(np.array(lu) < 1e-4) < 0.55
    u = [Uniform(-1, 3).sample(rng) for _ in range(2000)]
    assert -1 <= min(u) and max(u) <= 3 and abs(np.mean(u) - 1) < 0.1
    iu = [IntUniform(2, 4).sample(rng) for _ in range(600)]
    assert set(iu) == {2, 3, 4} and all(isinstance(v, int) for v in iu)
    c = [Choice(["a", "b"]).sample(rng) for _ in range(200)]
    assert set(c) == {"a", "b"}


def test_bad_spaces():
    with pytest.raises(ValueError, match="low > 0"):
        LogUniform(0, 1)
    with pytest.raises(ValueError, match="low must be <= high"):
        Uniform(2, 1)
    with pytest.raises(TypeError, match="integer"):
        IntUniform(0.5, 3)
    with pytest.raises(ValueError, match="at least one"):
        Choice([])
    with pytest.raises(TypeError, match="space"):
        random_search(lambda p: 0.0, {"lr": (0, 1)}, 3)
    with pytest.raises(ValueError, match="n_trials"):
        random_search(lambda p: 0.0, {"lr": Uniform(0, 1)}, 0)
    with pytest.raises(ValueError, match="mode"):
        random_search(lambda p: 0.0, {"lr": Uniform(0, 1)}, 2, mode="best")
    with pytest.raises(TypeError, match="score"):
        random_search(lambda p: "good", {"lr": Uniform(0, 1)}, 2)
    with pytest.raises(ValueError, match="'score'"):
        random_search(lambda p: {"acc": 1.0}, {"lr": Uniform(0, 1)}, 2)


def _score(p):
    # best at lr = 1e-2, depth 3, act "relu"; NaN (diverged) for lr > 0.5
    if p["lr"] > 0.5:
        return math.nan
    return -abs(math.log10(p["lr"]) + 2) - abs(p["depth"] - 3) - (p["act"] != "relu")


SPACE = {"lr": LogUniform(1e-5, 1.0), "depth": IntUniform(1, 6), "act": Choice(["relu", "tanh"])}


def test_random_search_sorted_reproducible_and_executor_independent():
    trials = random_search(_score, SPACE, 40, seed=1)
    assert len(trials) == 40 and all(isinstance(t, Trial) for t in trials)
    finite = [t.score for t in trials if not math.isnan(t.score)]
    assert finite == sorted(finite, reverse=True)
    n_nan = sum(math.isnan(t.score) for t in trials)
    assert all(math.isnan(t.score) for t in trials[len(trials) - n_nan:])
    for t in trials:
        if not math.isnan(t.score):
            assert t.score == _score(t.params)
    again = random_search(_score, SPACE, 40, seed=1)
    assert [(t.index, t.params) for t in again] == [(t.index, t.params) for t in trials]
    with ThreadPoolExecutor(2) as ex:
        par = random_search(_score, SPACE, 40, seed=1, executor=ex)
    assert [(t.index, t.params, t.score) for t in par][:40 - n_nan] == \
        [(t.index, t.params, t.score) for t in trials][:40 - n_nan]
    other = random_search(_score, SPACE, 40, seed=2)
    assert [t.params for t in other] != [t.params for t in trials]
    # the draws follow sample() with one generator in trial order
    rng = np.random.default_rng(1)
    first = sample(SPACE, rng)
    assert next(t for t in trials if t.index == 0).params == first


def test_min_mode_and_info():
    trials = random_search(lambda p: {"score": p["x"], "twice": 2 * p["x"]}, {"x": Uniform(0, 1)},
                           10, seed=0, mode="min")
    xs = [t.score for t in trials]
    assert xs == sorted(xs)
    assert all(t.info["twice"] == 2 * t.score for t in trials)


def test_narrow():
    trials = random_search(_score, SPACE, 60, seed=0)
    new = narrow(SPACE, trials, 5)
    best = trials[:5]
    lrs = [t.params["lr"] for t in best]
    assert isinstance(new["lr"], LogUniform)
    assert (new["lr"].low, new["lr"].high) == (min(lrs), max(lrs))
    assert isinstance(new["depth"], IntUniform)
    assert new["depth"].low == min(t.params["depth"] for t in best)
    assert set(new["act"].options) == {t.params["act"] for t in best}
    # searching the narrowed space finds better trials on average
    again = random_search(_score, new, 60, seed=1)
    assert np.nanmean([t.score for t in again]) > np.nanmean([t.score for t in trials])
    with pytest.raises(ValueError, match="k must be"):
        narrow(SPACE, trials, 0)
    with pytest.raises(ValueError, match="finite score"):
        narrow(SPACE, [Trial(0, {"lr": 1.0, "depth": 1, "act": "relu"}, math.nan)], 3)


# ---------------------------------------------------------------- failures, seeds, objective, output
def _flaky(p, seed):
    if p["x"] > 0.7:
        raise RuntimeError(f"boom at {p['x']:.2f}")
    return math.nan if p["x"] < 0.2 else p["x"] + seed * 0.0


def test_failed_trials_recorded_and_search_goes_on():
    trials = random_search(_flaky, {"x": Uniform(0, 1)}, 30, seed=3)
    assert len(trials) == 30
    ok = [t for t in trials if t.error is None]
    boom = [t for t in trials if t.error and t.error.startswith("RuntimeError: boom")]
    nan = [t for t in trials if t.error and "non-finite" in t.error]
    assert ok and boom and nan and len(ok) + len(boom) + len(nan) == 30
    assert all(math.isnan(t.score) for t in boom + nan)
    assert trials[:len(ok)] == sorted(ok, key=lambda t: -t.score)    # failed ones sorted last
    assert all(t.params["x"] > 0.7 for t in boom) and all(t.params["x"] < 0.2 for t in nan)
    table = format_table(trials, 3)
    assert f"{len(boom) + len(nan)} failed" in table and "Best-3 of 30 trials" in table


def test_trial_seeds_passed_and_distinct():
    seen = {}

    def fn(p, seed):
        seen[p["x"]] = seed
        return p["x"]

    trials = random_search(fn, {"x": Uniform(0, 1)}, 8, seed=5)
    assert all(seen[t.params["x"]] == t.seed == trial_seed(5, t.index) for t in trials)
    assert len({t.seed for t in trials}) == 8
    assert trial_seed(5, 0) != trial_seed(6, 0)


def test_bad_search_arguments():
    sp = {"x": Uniform(0, 1)}
    with pytest.raises(TypeError, match="non-empty dict"):
        random_search(lambda p: 0.0, {}, 3)
    with pytest.raises(ValueError, match="n_trials"):
        search(lambda p: 0.0, sp, -1)
    with pytest.raises(ValueError, match="sampler"):
        search(lambda p: 0.0, sp, 2, sampler="grid")
    with pytest.raises(ValueError, match="n_jobs"):
        random_search(lambda p: 0.0, sp, 2, n_jobs=0)
    with pytest.raises(TypeError, match="executor"):
        random_search(lambda p: 0.0, sp, 2, executor=object())
    with pytest.raises(TypeError, match="train_fn"):
        random_search(None, sp, 2)


def _digits_objective(**kw):
    from dlfast.datasets import load_digits
    x, t = load_digits()
    kw = {"val_split": 0.25, "epochs": 2, "batch_size": 50, **kw}
    return make_objective(MLPBuilder(64, [16], 10), OptimizerBuilder("sgd"), x[:400], t[:400], **kw)


def test_objective_reproducible_from_trial_seed_and_validation_only():
    fn = _digits_objective()
    assert len(fn.x_val) == 100 and len(fn.x) == 300      # a fixed split of the data given
    space = {"lr": LogUniform(1e-2, 1.0), "weight_decay": LogUniform(1e-6, 1e-3)}
    trials = random_search(fn, space, 3, seed=0)
    for t in trials:
        assert t.error is None and len(t.info["curve"]) == 2 and t.info["curve"][-1] == t.score
        assert 0.0 <= t.score <= 1.0
        again = fn(t.params, seed=t.seed)
        assert again["score"] == t.score and again["curve"] == t.info["curve"]
    # an exception inside the objective is a failed trial, not a crash
    bad = random_search(fn, {"rate": LogUniform(1e-2, 1.0)}, 2, seed=0)
    assert all(t.error.startswith("KeyError") and "'lr'" in t.error and math.isnan(t.score)
               for t in bad)
    with pytest.raises(ValueError, match="val_split"):
        _digits_objective(val_split=None)
    with pytest.raises(ValueError, match="both"):
        _digits_objective(val_split=None, x_val=np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="metric"):
        _digits_objective(metric="test_accuracy")
    with pytest.raises(ValueError, match="epochs"):
        _digits_objective(epochs=0)


def test_objective_runs_on_the_backend_it_was_made_with():
    import dlfast
    params = {"lr": 0.1}
    for name in dlfast.available_backends():
        with dlfast.use_backend(name):
            fn = _digits_objective()
            ref = fn(params, seed=3)
        assert fn.backend == name
        other = [b for b in dlfast.available_backends() if b != name]
        with dlfast.use_backend(other[0] if other else name):
            assert fn(params, seed=3) == ref                # not the caller's backend
    assert _digits_objective(backend="numpy").backend == "numpy"
    with pytest.raises(ValueError, match="backend"):
        _digits_objective(backend="torch")


def test_tpe_sampler():
    pytest.importorskip("optuna")
    space = {"lr": LogUniform(1e-5, 1.0), "depth": IntUniform(1, 6), "act": Choice(["relu", "tanh"])}
    a = search(_score, space, 25, seed=4, sampler="tpe")
    b = search(_score, space, 25, seed=4, sampler="tpe")
    assert [(t.index, t.params, t.score) for t in a if t.error is None] == \
        [(t.index, t.params, t.score) for t in b if t.error is None]
    assert sorted(t.index for t in a) == list(range(25))
    for t in a:
        assert 1e-5 <= t.params["lr"] <= 1.0 and t.params["depth"] in range(1, 7)
        assert t.params["act"] in ("relu", "tanh")
    assert [t.seed for t in sorted(a, key=lambda t: t.index)] == [trial_seed(4, i) for i in range(25)]
    rnd = random_search(_score, space, 25, seed=4)
    assert a[0].score >= -1.0 and a[0].score >= rnd[len(rnd) // 2].score
    with ThreadPoolExecutor(2) as ex:          # batches of n_jobs asked at once
        c = search(_score, space, 6, seed=4, sampler="tpe", executor=ex, n_jobs=2)
    assert len(c) == 6


def test_tpe_missing_optuna(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match="pip install optuna"):
        search(_score, SPACE, 2, sampler="tpe")


def test_plot_and_json(tmp_path):
    import json
    trials = random_search(lambda p: {"score": p["lr"] if p["lr"] < 0.05 else math.nan,
                                      "curve": [0.1, p["lr"]]},
                           {"lr": LogUniform(1e-3, 1.0), "weight_decay": LogUniform(1e-6, 1e-2)},
                           12, seed=0)
    png = plot(trials, str(tmp_path / "t.png"), k=3)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    path = save_json(trials, str(tmp_path / "t.json"), note="x")
    data = json.load(open(path))
    assert data["note"] == "x" and len(data["trials"]) == 12
    assert data["trials"][-1]["score"] is None and data["trials"][-1]["error"]


def test_cli_tune(tmp_path, capsys):
    import json

    from dlfast.cli import main
    rc = main(["tune", "--n-trials", "4", "--rounds", "2", "-k", "2", "--epochs", "2",
               "--hidden", "16", "--lr", "1e-2", "1", "--seed", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("Best-2 of 4 trials") == 2 and "round 2" in out
    data = json.load(open(tmp_path / "trials.json"))
    assert len(data["rounds"]) == 2 and len(data["rounds"][1]["trials"]) == 4
    r1 = [t for t in data["rounds"][0]["trials"] if t["score"] is not None][:2]
    lo = min(t["params"]["lr"] for t in r1)
    assert all(t["params"]["lr"] >= lo * (1 - 1e-12) for t in data["rounds"][1]["trials"])
    assert (tmp_path / "tune.png").stat().st_size > 1000
    # bad arguments are usage errors (exit code 2) naming the option
    for bad, says in ((["--n-trials", "0"], "--n-trials: expected a positive integer"),
                      (["--lr", "0", "1"], "--lr (lr=log:0.0:1.0): LogUniform needs low > 0")):
        with pytest.raises(SystemExit) as e:
            main(["tune", *bad, "--out", str(tmp_path)])
        assert e.value.code == 2 and says in capsys.readouterr().err


# ---------------------------------------------------------------- --param: dlfast train options
def test_parse_param_kinds():
    from dlfast.tune import parse_param
    assert parse_param("lr=log:1e-4:1") == ("lr", LogUniform(1e-4, 1.0))
    assert parse_param("weight-decay=log:1e-8:1e-2") == ("weight_decay", LogUniform(1e-8, 1e-2))
    assert parse_param("--dropout=uniform:0:0.5") == ("dropout", Uniform(0.0, 0.5))
    assert parse_param("batch_size=int:16:128") == ("batch_size", IntUniform(16, 128))
    assert parse_param("hidden=choice:100, 100x100,200x50") == \
        ("hidden", Choice(["100", "100x100", "200x50"]))
    assert parse_param("batchnorm=choice:true,False") == ("batchnorm", Choice([True, False]))
    assert parse_param("optimizer=choice:sgd,adam") == ("optimizer", Choice(["sgd", "adam"]))
    assert parse_param("schedule=choice:none,step")[1].options == ["none", "step"]
    assert parse_param("momentum=choice:0.5,0.9") == ("momentum", Choice([0.5, 0.9]))
    assert parse_param("epochs=choice:5,10") == ("epochs", Choice([5, 10]))
    assert parse_param("init=choice:he,xavier") == ("init", Choice(["he", "xavier"]))


@pytest.mark.parametrize("text, says", [
    ("hiden=choice:100", "--hiden is not a dlfast train option (did you mean --hidden?)"),
    ("out=choice:a", "--out cannot be searched"),
    ("seed=int:0:3", "--seed cannot be searched"),
    ("lr", "expected NAME=SPEC"),
    ("lr=", "expected NAME=SPEC"),
    ("lr=grid:1:2", "unknown kind 'grid'"),
    ("lr=log:1", "needs LOW:HIGH"),
    ("lr=log:a:b", "are not numbers"),
    ("lr=log:0:1", "LogUniform needs low > 0"),
    ("lr=uniform:2:1", "low must be <= high"),
    ("dropout=uniform:0:1.5", "expected a dropout probability in [0, 1)"),
    ("batch-size=log:16:64", "log: does not apply to an integer option; expected int:LOW:HIGH"),
    ("batch-size=int:0:64", "expected a positive integer, got 0"),
    ("batch-size=int:1.5:64", "are not integers"),
    ("hidden=uniform:1:2", "expected choice:A,B,... where each is a list of layer sizes"),
    ("hidden=choice:100,10x0", "'10x0' is not a list of layer sizes"),
    ("batchnorm=choice:yes", "'yes' is not true or false; expected choice:true,false"),
    ("activation=choice:relu,foo", "'foo' is not one of relu"),
    ("optimizer=uniform:0:1", "expected choice:A,B,... of sgd, momentum"),
    ("optimizer=choice:", "empty option"),
    ("optimizer=choice:sgd,,adam", "empty option"),
    ("init=choice:he,hee", "unknown initialiser 'hee'"),
])
def test_parse_param_errors_name_the_option_and_what_it_expects(text, says):
    from dlfast.tune import parse_param
    with pytest.raises(ValueError) as e:
        parse_param(text)
    assert says in str(e.value)
    name = text.partition("=")[0]
    if "=" in text and text.partition("=")[2]:
        assert f"--{name}" in str(e.value)


def test_train_objective_builds_the_train_configuration():
    from dlfast.cli import build_parser
    from dlfast.datasets import load_digits
    from dlfast.tune import TrainObjective
    x, t = load_digits()
    fn = TrainObjective(x[:300], t[:300], x[300:400], t[300:400],
                        options={"optimizer": "sgd", "epochs": 2, "batch_size": 50})
    params = {"hidden": "24x16", "batchnorm": True, "dropout": 0.25, "lr": 0.05,
              "optimizer": "momentum", "momentum": 0.8, "schedule": "step", "step_size": 1}
    got = vars(fn.config(params, seed=5))
    want = vars(build_parser().parse_args(
        ["train", "--optimizer", "momentum", "--epochs", "2", "--batch-size", "50", "--hidden",
         "24", "16", "--batchnorm", "--dropout", "0.25", "--lr", "0.05", "--momentum", "0.8",
         "--schedule", "step", "--step-size", "1", "--seed", "5"]))
    assert got == {k: v for k, v in want.items() if k not in ("command", "func")}
    # an optimiser option the trial's optimiser does not take is left out of that trial
    assert fn.config({**params, "optimizer": "adam"}, seed=5).momentum is None
    r = fn(params, seed=5)
    assert r == fn(params, seed=5) and 0 <= r["score"] <= 1 and r["epochs"] == 2
    assert r["score"] == r["curve"][-1]
    assert fn({**params, "optimizer": "adam"}, seed=5)["score"] >= 0
    with pytest.raises(KeyError, match="'rate' is not a dlfast train option"):
        fn({"rate": 0.1}, seed=0)
    with pytest.raises(KeyError, match="not dlfast train options: rate"):
        TrainObjective(x[:10], t[:10], x[:10], t[:10], options={"rate": 1})
    # a failed trial (e.g. --cache-frozen without --freeze) is recorded, the search goes on
    trials = random_search(fn, {"cache_frozen": Choice([True])}, 2, seed=0)
    assert all(t.error and "--cache-frozen needs --freeze" in t.error for t in trials)


def test_cli_tune_params(tmp_path, capsys):
    import json

    from dlfast.cli import main
    rc = main(["tune", "--n-trials", "4", "--epochs", "2", "--hidden", "16", "--seed", "2",
               "--param", "hidden=choice:16,16x8", "--param", "batchnorm=choice:true,false",
               "--param", "dropout=uniform:0:0.4", "--param", "optimizer=choice:sgd,momentum",
               "--param", "momentum=uniform:0.5:0.9", "--param", "batch-size=int:32:64",
               "--lr", "1e-2", "0.5", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "Best-4 of 4 trials" in out
    assert "round 1: lr in [0.01, 0.5] (log), weight_decay in [1e-08, 0.01] (log), hidden in " \
           "{16, 16x8}, batchnorm in {True, False}, dropout in [0, 0.4]" in out
    data = json.load(open(tmp_path / "trials.json"))
    trials = data["rounds"][0]["trials"]
    assert sorted(t["index"] for t in trials) == [0, 1, 2, 3]
    for t in trials:
        p = t["params"]
        assert list(p) == ["lr", "weight_decay", "hidden", "batchnorm", "dropout", "optimizer",
                           "momentum", "batch_size"]
        assert p["hidden"] in ("16", "16x8") and isinstance(p["batchnorm"], bool)
        assert 32 <= p["batch_size"] <= 64 and t["error"] is None
    assert data["space"][0] == "hidden=Choice(['16', '16x8'])"
    # a fixed value: a one-option choice; an optimiser option no searched optimiser takes: error
    assert main(["tune", "--n-trials", "1", "--epochs", "1", "--param", "lr=choice:0.1",
                 "--param", "weight-decay=choice:0", "--out", str(tmp_path)]) == 0
    assert "lr in {0.1}, weight_decay in {0}" in capsys.readouterr().out
    assert main(["tune", "--param", "beta1=uniform:0.8:0.9", "--out", str(tmp_path)]) == 1
    assert "--param beta1 applies to --optimizer adam, adamw; this search uses sgd" in \
        capsys.readouterr().err


@pytest.mark.parametrize("args, says", [
    (["--param", "dropout=uniform:0:2"], "argument --param: --dropout (dropout=uniform:0:2)"),
    (["--param", "nope=choice:1"], "argument --param: --nope is not a dlfast train option"),
    (["--lr", "1", "2", "--param", "lr=log:1:2"], "--lr is searched twice"),
    (["--scheduler", "localhost"], "argument --scheduler: expected a scheduler address"),
    (["--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"], "not allowed with argument"),
    (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice"),
])
def test_cli_tune_usage_errors(args, says, tmp_path, capsys):
    from dlfast.cli import main
    with pytest.raises(SystemExit) as e:
        main(["tune", *args, "--out", str(tmp_path)])
    assert e.value.code == 2 and says in capsys.readouterr().err
