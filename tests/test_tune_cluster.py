"""`dlfast tune --scheduler` on a Dask cluster started from the command line: `dask scheduler`
and two `dask worker` processes on 127.0.0.1 (`python -m dask`, so they run this
interpreter's dlfast). The command gives the serial run's trials bit for bit; a worker killed
while it runs a trial loses no result and duplicates none: the trial is rerun on the other
worker, or, when the scheduler allows no more failures, recorded as failed.

Every process is started in its own session and killed by process group at the end; every
wait has a deadline."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dlfast import tune

distributed = pytest.importorskip("distributed")

TESTS = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT = 45          # seconds for the scheduler file and for both workers to join
RUN_TIMEOUT = 90            # seconds for one search


class Cluster:
    """A scheduler and ``n_workers`` one-thread workers (no nanny: the worker is the process we
    start, so killing it kills the worker) on 127.0.0.1, logs in ``folder``."""

    def __init__(self, folder, n_workers=2, scheduler_env=None):
        self.folder, self.procs, self.client = str(folder), [], None
        # PYTHONPATH: the workers import SlowObjective from this file
        path = [TESTS] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path))
        # an idle timeout: a scheduler left behind by a killed test run exits by itself
        scheduler_env = {"DASK_DISTRIBUTED__SCHEDULER__IDLE_TIMEOUT": "300s",
                         **(scheduler_env or {})}
        sfile = os.path.join(self.folder, "scheduler.json")
        try:
            self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", sfile], "scheduler", dict(env, **scheduler_env))
            deadline = time.monotonic() + START_TIMEOUT
            self.address = None
            while self.address is None:
                self._check_alive()
                assert time.monotonic() < deadline, "the scheduler did not start:\n" + self.logs()
                time.sleep(0.1)
                try:
                    with open(sfile) as f:
                        self.address = json.load(f)["address"]
                except (OSError, ValueError, KeyError):     # not written (in full) yet
                    pass
            for i in range(n_workers):
                # --death-timeout: a worker whose scheduler is gone exits by itself
                self._start(["worker", self.address, "--nthreads", "1", "--no-nanny",
                             "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "0",
                             "--death-timeout", "60", "--name", f"w{i}"], f"worker{i}", env)
            self.client = tune.connect(self.address, timeout=10)
            self.client.wait_for_workers(n_workers, timeout=START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def _start(self, args, name, env):
        log = open(os.path.join(self.folder, name + ".log"), "w")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "dask", *args], env=env,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    def _check_alive(self):
        for p in self.procs:
            assert p.poll() is None, f"{p.args} exited with {p.returncode}:\n" + self.logs()

    def logs(self):
        out = []
        for name in sorted(os.listdir(self.folder)):
            if name.endswith(".log"):
                with open(os.path.join(self.folder, name)) as f:
                    out.append(f"--- {name}\n" + f.read()[-3000:])
        return "\n".join(out)

    def worker_pids(self):
        return set(self.client.run(os.getpid).values())

    def close(self):
        if self.client is not None:
            try:
                self.client.close(timeout=10)
            except Exception:                   # noqa: BLE001 - the processes go anyway
                pass
        for p in reversed(self.procs):          # workers first, then the scheduler
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                if p.poll() is not None:
                    break
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                except subprocess.TimeoutExpired:
                    pass


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------- the command on the cluster
TUNE = ["tune", "--n-trials", "6", "--rounds", "2", "-k", "3", "--epochs", "2",
        "--batch-size", "64",
        "--param", "hidden=choice:16,24x16", "--param", "dropout=uniform:0:0.3",
        "--param", "batchnorm=choice:true,false", "--param", "optimizer=choice:sgd,adam",
        "--param", "schedule=choice:none,step", "--seed", "3"]


@pytest.mark.slow
def test_cli_tune_scheduler_equals_serial(cluster, tmp_path):
    import dlfast
    from dlfast.cli import main
    run = subprocess.run([sys.executable, "-m", "dlfast", *TUNE, "--scheduler", cluster.address,
                          "--out", str(tmp_path / "cluster")], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr + "\n" + cluster.logs()
    assert f"Dask scheduler {cluster.address}: 2 workers, 2 threads" in run.stdout
    assert run.stdout.count("Best-3 of 6 trials") == 2
    dlfast.set_num_threads(1)                 # as on the workers (the trials do not depend on it)
    assert main([*TUNE, "--out", str(tmp_path / "serial")]) == 0
    on_cluster = json.load(open(tmp_path / "cluster" / "trials.json"))
    serial = json.load(open(tmp_path / "serial" / "trials.json"))
    assert on_cluster["args"]["scheduler"] == cluster.address
    assert on_cluster["rounds"] == serial["rounds"]           # params, seeds, scores, curves
    for r in on_cluster["rounds"]:
        assert sorted(t["index"] for t in r["trials"]) == list(range(6))
        assert all(t["error"] is None for t in r["trials"])
    assert {t["params"]["hidden"] for t in on_cluster["rounds"][0]["trials"]} <= {"16", "24x16"}
    assert (tmp_path / "cluster" / "tune.png").stat().st_size > 1000


def test_cli_tune_unreachable_scheduler(tmp_path, capsys):
    import socket

    from dlfast.cli import main
    with socket.socket() as s:                # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = main(["tune", "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in err
    assert time.monotonic() - t0 < 10


def test_connect_without_dask(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'dlfast\[tune\]'"):
        tune.connect("tcp://127.0.0.1:8786")


# ---------------------------------------------------------------- a worker killed mid-search
class SlowObjective:
    """score = params["x"]. With a ``folder``: each call first writes ``<seed>-<pid>`` there,
    then sleeps ``params["sleep"]`` seconds (the window in which the test kills its worker).
    Found by the workers through PYTHONPATH (this folder)."""

    def __init__(self, folder=None):
        self.folder = folder

    def __call__(self, params, seed):
        if self.folder is not None:
            open(os.path.join(self.folder, f"{seed}-{os.getpid()}"), "w").close()
            time.sleep(params["sleep"])
        return {"score": params["x"], "twice": 2 * params["x"]}


SLOW_SPACE = {"x": tune.Uniform(0, 1), "sleep": tune.Choice([1.5])}
N_SLOW = 6


def _search_killing_one_worker(cluster, folder):
    """The search on the cluster while the worker that starts a trial first is SIGKILLed
    during that trial; returns (trials, killed pid, seed of its trial)."""
    os.makedirs(folder)
    pids = cluster.worker_pids()
    assert len(pids) == 2
    box = {}

    def search():
        try:
            box["trials"] = tune.random_search(SlowObjective(folder), SLOW_SPACE, N_SLOW, seed=7,
                                               executor=cluster.client.get_executor(pure=False))
        except BaseException as exc:            # noqa: BLE001 - reported below
            box["error"] = exc

    th = threading.Thread(target=search, daemon=True)
    th.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    while not os.listdir(folder):
        assert time.monotonic() < deadline, "no trial started:\n" + cluster.logs()
        time.sleep(0.02)
    seed, pid = (int(v) for v in sorted(os.listdir(folder))[0].split("-"))
    assert pid in pids
    os.kill(pid, signal.SIGKILL)               # mid-trial: it sleeps 1.5 s after the marker
    th.join(max(1.0, deadline - time.monotonic()))
    assert not th.is_alive(), "the search did not finish:\n" + cluster.logs()
    assert "error" not in box, box.get("error")
    return box["trials"], pid, seed


def _check_each_trial_once(trials):
    assert len(trials) == N_SLOW
    assert sorted(t.index for t in trials) == list(range(N_SLOW))
    assert [t.seed for t in sorted(trials, key=lambda t: t.index)] == \
        [tune.trial_seed(7, i) for i in range(N_SLOW)]


@pytest.mark.slow
def test_killed_worker_trial_is_rerun_on_another_worker(cluster, tmp_path):
    serial = tune.random_search(SlowObjective(), SLOW_SPACE, N_SLOW, seed=7)
    trials, killed, seed = _search_killing_one_worker(cluster, str(tmp_path / "markers"))
    _check_each_trial_once(trials)
    key = [(t.index, t.params, t.seed, t.score, t.info, t.error) for t in trials]
    assert key == [(t.index, t.params, t.seed, t.score, t.info, t.error) for t in serial]
    # the killed trial started again on the worker that is left
    runs = [m for m in os.listdir(tmp_path / "markers") if m.startswith(f"{seed}-")]
    (survivor,) = cluster.worker_pids()
    assert sorted(runs) == sorted([f"{seed}-{killed}", f"{seed}-{survivor}"])


@pytest.mark.slow
def test_killed_worker_trial_marked_failed_without_retries(tmp_path):
    # a scheduler that allows no worker death per task: the trial that was running on the killed
    # worker (and any other trial the scheduler had already handed to it) is recorded as failed
    c = Cluster(tmp_path, scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    try:
        serial = {t.index: t for t in tune.random_search(SlowObjective(), SLOW_SPACE, N_SLOW,
                                                         seed=7)}
        trials, killed, seed = _search_killing_one_worker(c, str(tmp_path / "markers"))
    finally:
        c.close()
    _check_each_trial_once(trials)
    failed = [t for t in trials if t.error is not None]
    assert seed in [t.seed for t in failed] and len(failed) < N_SLOW
    assert trials[len(trials) - len(failed):] == failed          # sorted last
    for t in failed:
        assert t.error.startswith("KilledWorker") and t.score != t.score        # NaN
    for t in trials[:len(trials) - len(failed)]:
        s = serial[t.index]
        assert (t.params, t.seed, t.score, t.info) == (s.params, s.seed, s.score, s.info)
