"""Two `imc tune` workers on one PostgreSQL study; one is killed mid-trial.

The test starts a throwaway PostgreSQL server (Debian's package: initdb and pg_ctl, run as
the `postgres` user when the tests run as root) on 127.0.0.1 and a free port, with trust
authentication. It prepares a tiny study, starts two workers at once, SIGKILLs one while it
runs a trial, and checks that the heartbeat marks that trial FAIL, that the other worker
finishes the study (the failed trial's parameters run again once), and that every finished
trial is recorded once: no trial finished by both workers, none left RUNNING or WAITING.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from imc.cli import main as imc_main
from tuning.study import with_driver

sys.path.insert(0, str(Path(__file__).parent))
from test_tuning import WALL, small_competition, tune_args  # noqa: E402

N_TRIALS = 6


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> int:
    m = re.search(r"postgresql/(\d+)", path)
    return int(m.group(1)) if m else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """postgresql://postgres@127.0.0.1:PORT/optuna on a server that lives for the module."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (dev extra)")
    import psycopg2

    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin; apt postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="imc-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_port(), root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True)  # noqa: E731
    run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
    run(bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o", opts, "start")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _worker(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "imc.cli", *args], stdout=f, stderr=f, env=env
        )  # noqa: E501


def _running_trial_of(study: optuna.Study, pid: int) -> int | None:
    """A trial that worker `pid` is evaluating (its parameters chosen)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker", "").endswith(f":{pid}") and t.params:
            return t.number
    return None


def _state(study: optuna.Study, number: int) -> TrialState:
    return next(t.state for t in study.get_trials(deepcopy=False) if t.number == number)


def _finished_in_log(log: Path) -> list[int]:
    return [int(n) for n in re.findall(r"tune: trial (\d+) finished", log.read_text())]


def test_two_workers_one_killed_study_completes(postgres_url, tmp_path):
    data = small_competition(tmp_path, {"wall": WALL})
    common = tune_args(data, tmp_path, "--storage", postgres_url, "--study-name", "pg")
    common += ["--heartbeat-interval", "1", "--grace-period", "3", "--no-report"]
    # features and matches once, and the study with its defaults trial queued
    assert imc_main([*common, "--n-trials", "0"]) == 0

    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a, b = (_worker([*common, "--n-trials", str(N_TRIALS)], log) for log in logs)
    url = with_driver(postgres_url)  # the driver installed (what imc tune does with the URL)
    study = optuna.load_study(study_name="pg", storage=url)
    killed, deadline = None, time.monotonic() + 90
    try:
        while killed is None and time.monotonic() < deadline and a.poll() is None:
            number = _running_trial_of(study, a.pid)
            if number is not None:  # freeze A, and kill it if the trial is still running
                a.send_signal(signal.SIGSTOP)
                if _state(study, number) == TrialState.RUNNING:
                    killed = number
                    break
                a.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        assert killed is not None, "worker A never ran a trial:\n" + logs[0].read_text()[-3000:]
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        assert b.wait(120) == 0, logs[1].read_text()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()

    trials = optuna.load_study(study_name="pg", storage=url).get_trials()
    by_number = {t.number: t for t in trials}
    seen = [(t.number, t.state.name, t.user_attrs.get("worker"), t.system_attrs) for t in trials]
    assert len(by_number) == len(trials)
    assert by_number[killed].state == TrialState.FAIL, seen  # failed by heartbeat
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], seen
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= N_TRIALS
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED), seen
    assert retries[0].params == by_number[killed].params
    # each finished trial was finished by exactly one worker, and is in the storage once
    done_a, done_b = _finished_in_log(logs[0]), _finished_in_log(logs[1])
    assert not set(done_a) & set(done_b)
    assert sorted(done_a + done_b) == sorted(t.number for t in finished), (done_a, done_b, seen)
    assert all(t.user_attrs["worker"].endswith(f":{b.pid}") for t in finished if t.number in done_b)
    defaults_runs = [t for t in finished if t.user_attrs.get("defaults")]
    assert len(defaults_runs) == 1
