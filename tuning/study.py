"""The Optuna study: storage, sampler, pruner, workers, and evaluations outside trials.

Storage: an SQLite file next to the results by default (nothing to start), or any RDB URL
(`postgresql://user@host:port/db`) shared by several `imc tune` processes on one machine or
many. Heartbeats are on: a worker that dies mid-trial stops beating, and the next worker to
start a trial (or a worker finishing) marks that trial FAIL and queues its parameters again
once. `--n-trials` counts the study's finished (complete or pruned) trials over all workers.

Each study remembers what it was created with (search space, datasets, base configuration,
data folder); a worker that brings something else is refused, so every trial of a study
measures the same thing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from imc.errors import ImcError
from imc.log import logger

from . import space as space_mod
from .objective import Objective, worker_id

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def storage_url(storage: str | None, output: Path) -> str:
    """The storage URL: as given, or `sqlite:///<output>/study.db`."""
    if storage:
        return storage
    output.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output / 'study.db').resolve()}"


def with_driver(url: str) -> str:
    """`postgresql://` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 takes
    psycopg (3) by default, the dev extra installs psycopg2."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise ImcError(f"{url}: no PostgreSQL driver installed (pip install psycopg2-binary)")


def make_storage(url: str, heartbeat_interval: int, grace_period: int | None):
    """RDBStorage with heartbeats; a stale trial is failed and queued again once."""
    url = with_driver(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period or 3 * heartbeat_interval,
            heartbeat_stale_trial_callback=retry,
            **kwargs,
        )


def load_study(storage, name: str, seed: int | None, n_startup: int = 10) -> optuna.Study:
    """Create or load the study `name` (maximise): multivariate TPE with the constant liar
    (parallel workers), MedianPruner over the per-dataset intermediate values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=n_startup, seed=seed, multivariate=True, constant_liar=True
        )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def check_setup(study: optuna.Study, setup: dict) -> None:
    """Record the study's setup on first use; refuse a worker whose setup differs."""
    old = study.user_attrs.get("setup")
    if old is None:
        study.set_user_attr("setup", setup)
        return
    diff = [
        k
        for k in setup
        if json.dumps(old.get(k), sort_keys=True) != json.dumps(setup[k], sort_keys=True)
    ]
    if diff:
        raise ImcError(
            f"study '{study.study_name}' was created with other {', '.join(diff)}: use another "
            "--study-name, or the same settings as its first worker"
        )


def enqueue_defaults(study: optuna.Study, space, defaults: dict) -> None:
    """Queue the base configuration as the study's first trial (its in-range values)."""
    if study.trials or study.user_attrs.get("defaults_queued"):
        return
    study.set_user_attr("defaults_queued", True)
    inside = {p.name: defaults[p.name] for p in space if p.contains(defaults[p.name])}
    outside = sorted(set(defaults) - set(inside))
    if outside:
        logger.warning("tune: defaults outside the space, sampled instead: %s", outside)
    study.enqueue_trial(inside, user_attrs={"defaults": True})


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def optimize(study: optuna.Study, objective: Objective, n_trials: int, grace: int) -> None:
    """Run trials until the study holds `n_trials` finished ones; then fail the trials of
    dead workers and run what they left queued, so the last worker leaves a finished study."""

    def log_finished(study, trial) -> None:
        logger.info(
            "tune: trial %d finished (%s, value %s) by %s",
            trial.number,
            trial.state.name,
            trial.value,
            worker_id(),
        )

    if count_finished(study) < n_trials:
        stop = optuna.study.MaxTrialsCallback(n_trials, states=FINISHED)
        study.optimize(objective, callbacks=[stop, log_finished], gc_after_trial=False)
    settle_stale(study, grace)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting and n_trials > 0:  # queued again after their worker died: run them now
        logger.info("tune: running %d queued trials", len(waiting))
        study.optimize(objective, n_trials=len(waiting), callbacks=[log_finished])


def settle_stale(study: optuna.Study, grace: int) -> None:
    """Wait (at most the grace period and a little) for other workers' running trials to
    finish or go stale, then fail the stale ones, so a dead worker leaves no RUNNING trial."""
    deadline = time.monotonic() + grace + 2
    me = worker_id()
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") != me
        ]
        if not running or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def params_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def scores_of(
    study: optuna.Study, objective: Objective, params: dict, datasets: list[str]
) -> dict[str, float]:
    """Scores of `params` per dataset: from a complete trial with these parameters, from an
    earlier evaluation stored with the study, or evaluated now (and stored)."""
    out: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params == params:
            out.update({k: v for k, v in t.user_attrs.get("scores", {}).items() if k in datasets})
    key = f"eval:{params_key(params)}"
    stored = study.user_attrs.get(key, {})
    out.update({k: v for k, v in stored.items() if k in datasets and k not in out})
    todo = [d for d in datasets if d not in out]
    if todo:
        logger.info("tune: evaluating %s on %s", params_key(params), ", ".join(todo))
        results = objective.evaluate(params, todo)
        new = {k: r.score for k, r in results.items()}
        study.set_user_attr(key, {**stored, **new})
        out.update(new)
    return {d: out[d] for d in datasets}


def setup_of(space, datasets: dict[str, list[str]], base_conf: dict) -> dict:
    """What every worker of a study must share (data folders may differ between machines)."""
    return {"space": space_mod.describe(space), "datasets": datasets, "base_config": base_conf}
