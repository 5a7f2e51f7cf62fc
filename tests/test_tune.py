"""dlfast.tune: distributions, random_search (serial and through an Executor), narrow."""
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dlfast.tune import Choice, IntUniform, LogUniform, Trial, Uniform, narrow, random_search, sample


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
