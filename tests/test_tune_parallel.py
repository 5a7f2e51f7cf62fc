"""dlfast.tune across processes: the spawn process pool (n_jobs) and a Dask LocalCluster
(two worker processes on loopback) give the same trials as the serial run; failures inside a
worker are recorded on the Trial."""
import math

import numpy as np
import pytest

from dlfast import tune
from dlfast.datasets import load_digits

SPACE = {"lr": tune.LogUniform(1e-2, 1.0), "weight_decay": tune.LogUniform(1e-6, 1e-3)}


def _objective():
    x, t = load_digits()
    return tune.make_objective(tune.MLPBuilder(64, [24], 10), tune.OptimizerBuilder("sgd"),
                               x[:500], t[:500], val_split=0.2, epochs=2, batch_size=50)


def _key(trials):
    return [(t.index, t.params, t.seed, t.score, t.error, t.info) for t in trials]


@pytest.fixture(scope="module")
def serial():
    return tune.random_search(_objective(), SPACE, 6, seed=11)


def test_process_pool_equals_serial(serial):
    par = tune.random_search(_objective(), SPACE, 6, seed=11, n_jobs=2)
    assert _key(par) == _key(serial)
    assert all(t.error is None for t in par)


def test_process_pool_failed_trial_inside_worker():
    # no "lr" in the space: every trial raises KeyError in its worker; the search completes
    trials = tune.random_search(_objective(), {"rate": tune.Uniform(0, 1)}, 3, seed=0, n_jobs=2)
    assert len(trials) == 3
    assert all(t.error.startswith("KeyError") and math.isnan(t.score) for t in trials)


def test_worker_thread_limits():
    with tune.process_pool(2) as ex:
        threads = ex.submit(_worker_threads).result()
    cores = len(__import__("os").sched_getaffinity(0))
    assert threads == max(1, cores // 2)


def _worker_threads():
    import dlfast
    return dlfast.get_num_threads()


def test_dask_local_cluster_equals_serial(serial):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        trials = tune.random_search(_objective(), SPACE, 6, seed=11, executor=client.get_executor())
        # a failing trial on a Dask worker is recorded too
        bad = tune.random_search(_objective(), {"rate": tune.Uniform(0, 1)}, 2, seed=0,
                                 executor=client.get_executor())
    assert _key(trials) == _key(serial)
    assert all(t.error.startswith("KeyError") for t in bad)
    assert np.isfinite([t.score for t in trials]).all()


def test_cli_tune_workers_and_tpe(tmp_path, capsys):
    pytest.importorskip("optuna")
    import json

    from dlfast.cli import main
    rc = main(["tune", "--n-trials", "4", "--workers", "2", "--sampler", "tpe", "--epochs", "1",
               "--hidden", "16", "--seed", "2", "--out", str(tmp_path)])
    assert rc == 0 and "Best-4 of 4 trials" in capsys.readouterr().out
    trials = json.load(open(tmp_path / "trials.json"))["rounds"][0]["trials"]
    assert sorted(t["index"] for t in trials) == [0, 1, 2, 3]
    assert all(t["error"] is None and 0 <= t["score"] <= 1 for t in trials)
    with pytest.raises(SystemExit) as e:
        main(["tune", "--workers", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--workers: expected a positive integer" in capsys.readouterr().err
