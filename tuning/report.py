"""The results of a study, for people: report.md, best_config.json, plots, trials.csv.

`best_config.json` is a full configuration in `imc.config.dump` format (the base
configuration with the best trial's parameters), read by `imc run --config` and
`submission.py --config`. The report compares the best trial with the base configuration
(the defaults) on the tuning datasets and on the held-out ones, which no trial saw: a gain on
the first that does not carry over to the second is overfitting. Plots: optimization history
and parameter importance (PED-ANOVA, Optuna's default; it needs at least two complete trials
with different values). The same storage opens in `optuna-dashboard`.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

import optuna
from optuna.trial import TrialState

from imc import config
from imc.cache import atomic_write_text
from imc.log import logger

from . import study as study_mod
from .objective import Objective, trial_conf


def mask_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def save_plot(ax, path: Path) -> None:
    """Save the figure of a matplotlib Axes (or array of Axes) atomically and close it."""
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plots(study: optuna.Study, out_dir: Path) -> dict[str, str]:
    """history.png and importance.png; name -> file name, or the reason it is missing."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    out: dict[str, str] = {}
    values = {t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    jobs = {
        "history": lambda: ovm.plot_optimization_history(study),
        "importance": lambda: ovm.plot_param_importances(study),
    }
    for name, make in jobs.items():
        path = out_dir / f"{name}.png"
        if name == "importance" and len(values) < 2:
            path.unlink(missing_ok=True)
            out[name] = "not drawn: it needs complete trials with at least two different values"
            continue
        try:
            with _quiet():
                save_plot(make(), path)
            out[name] = path.name
        except Exception as e:  # too few or identical trials: say so instead
            path.unlink(missing_ok=True)
            out[name] = f"not drawn: {type(e).__name__}: {e}"
            logger.warning("tune: %s plot not drawn: %s", name, e)
    return out


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def timings(study: optuna.Study, objective: Objective) -> dict:
    """Seconds per finished trial and per dataset inside trials; the preparing runs' seconds."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    durations = [t.duration.total_seconds() for t in trials if t.duration]
    per_ds: dict[str, list[float]] = {}
    for t in trials:
        for ds, s in t.user_attrs.get("seconds", {}).items():
            per_ds.setdefault(ds, []).append(s["total"])
    prep = {}
    for name, p in objective.prepared.items():
        stats = p.run_dir / "stats.json"
        if p.full_seconds is not None:
            prep[name] = p.full_seconds
        elif stats.is_file():
            prep[name] = json.loads(stats.read_text()).get(name, {}).get("total", {}).get("seconds")
    return {
        "trial_seconds_median": statistics.median(durations) if durations else None,
        "trial_seconds_mean": statistics.fmean(durations) if durations else None,
        "dataset_seconds_median": {k: statistics.median(v) for k, v in per_ds.items()},
        "prepare_seconds": prep,
    }


def _mean(scores: dict[str, float]) -> float | None:
    return statistics.fmean(scores.values()) if scores else None


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def write(
    study: optuna.Study,
    objective: Objective,
    defaults: dict,
    holdout: list[str],
    out_dir: Path,
    url: str,
) -> Path:
    """Write report.md, summary.json, best_config.json, trials.csv and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tuning = objective.order
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    rows = {"defaults": defaults} | ({"best": best.params} if best else {})
    scores = {
        k: {
            "tuning": study_mod.scores_of(study, objective, p, tuning),
            "holdout": study_mod.scores_of(study, objective, p, holdout),
        }
        for k, p in rows.items()
    }
    if best:
        config.dump(trial_conf(objective.base, best.params), out_dir / "best_config.json")
    figures = plots(study, out_dir)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    atomic_write_text(out_dir / "trials.csv", frame.to_csv(index=False))
    summary = {
        "study": study.study_name,
        "storage": mask_password(url),
        "trials": {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState},
        "best_trial": best.number if best else None,
        "best_params": best.params if best else None,
        "default_params": defaults,
        "scores": scores,
        "leave_one_out": leave_one_out(
            {t.number: t.user_attrs.get("scores", {}) for t in complete}, tuning
        ),
        "timings": timings(study, objective),
        "figures": figures,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    path = out_dir / "report.md"
    atomic_write_text(path, markdown(summary, tuning, holdout, out_dir))
    logger.info("tune: report written to %s", path)
    return path


def markdown(summary: dict, tuning: list[str], holdout: list[str], out_dir: Path) -> str:
    """The report's text from `summary` (see `write`)."""
    sc, tm = summary["scores"], summary["timings"]
    counts = ", ".join(f"{n} {k.lower()}" for k, n in summary["trials"].items() if n)
    lines = [f"# Tuning report: study `{summary['study']}`", "", f"Trials: {counts}.", ""]
    lines += ["## Scores (the year's metric: IMC2025 0-100, IMC2023/2024 0-1)", ""]
    lines += ["| dataset | set | defaults | best |", "|---|---|---:|---:|"]
    for group, names in (("tuning", tuning), ("holdout", holdout)):
        if not names:
            continue
        for ds in names:
            d, b = sc["defaults"][group].get(ds), sc.get("best", {}).get(group, {}).get(ds)
            lines.append(f"| {ds} | {group} | {_fmt(d)} | {_fmt(b)} |")
        d = _mean(sc["defaults"][group])
        b = _mean(sc["best"][group]) if "best" in sc else None
        lines.append(f"| **mean** | {group} | **{_fmt(d)}** | **{_fmt(b)}** |")
    lines += ["", verdict(sc), ""]
    lines += loo_markdown(summary.get("leave_one_out"))
    lines += ["## Best parameters", ""]
    if summary["best_params"] is None:
        lines.append("No complete trial yet.")
    else:
        lines += [f"Trial {summary['best_trial']}; `{out_dir / 'best_config.json'}`:", ""]
        lines += ["| parameter | default | best |", "|---|---:|---:|"]
        for k, v in summary["best_params"].items():
            lines.append(f"| `{k}` | {summary['default_params'].get(k)} | {_round(v)} |")
        lines += ["", f"Use it: `imc run DATA_ROOT --config {out_dir / 'best_config.json'}`."]
    lines += ["", "## Time", ""]
    med, mean = _fmt(tm["trial_seconds_median"]), _fmt(tm["trial_seconds_mean"])
    lines.append(f"Median complete trial: {med} s (mean {mean} s).")
    lines += ["", "| dataset | trial s (median) | preparing run s |", "|---|---:|---:|"]
    for ds in tuning + holdout:
        t, p = tm["dataset_seconds_median"].get(ds), tm["prepare_seconds"].get(ds)
        lines.append(f"| {ds} | {_fmt(t)} | {_fmt(p)} |")
    lines += ["", "## Plots", ""]
    for name, f in summary["figures"].items():
        lines.append(f"![{name}]({f})" if f.endswith(".png") else f"{name}: {f}")
    lines += ["", "## Storage", "", f"`{summary['storage']}`", ""]
    lines += [f"Dashboard: `optuna-dashboard {summary['storage']}`", ""]
    return "\n".join(lines)


def _round(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def verdict(sc: dict) -> str:
    """One honest sentence: did the best trial beat the defaults on the held-out datasets?"""
    if "best" not in sc:
        return "No complete trial: nothing to compare."
    gain_t = _mean(sc["best"]["tuning"]) - _mean(sc["defaults"]["tuning"])
    if not sc["defaults"]["holdout"]:
        return f"Tuning set: {gain_t:+.2f} points over the defaults; no held-out datasets."
    gain_h = _mean(sc["best"]["holdout"]) - _mean(sc["defaults"]["holdout"])
    word = "improves" if gain_h > 0 else ("matches" if gain_h == 0 else "does NOT improve")
    return (
        f"Tuning set: {gain_t:+.2f} points over the defaults. Held-out set: {gain_h:+.2f} points: "
        f"the best configuration {word} the held-out score."
    )


def leave_one_out(trial_scores: dict[int, dict[str, float]], datasets: list[str]) -> dict | None:
    """Leave-one-dataset-out over the complete trials (number -> dataset -> score; trials
    without a score for every one of `datasets` are left out): for each dataset, the trial
    that scores best on the others (mean; ties: the lower number) and its score on the one left
    out (held out), beside the score there of the trial best on all of them (in sample).
    None with fewer than three datasets or no complete trial."""
    trials = {n: s for n, s in trial_scores.items() if all(d in s for d in datasets)}
    if len(datasets) < 3 or not trials:
        return None

    def best(names: list[str]) -> int:
        return max(sorted(trials), key=lambda n: statistics.fmean(trials[n][d] for d in names))

    in_sample = best(datasets)
    rows = {}
    for d in datasets:
        chosen = best([x for x in datasets if x != d])
        rows[d] = {
            "chosen_trial": chosen,
            "held_out": trials[chosen][d],
            "in_sample": trials[in_sample][d],
        }
    return {
        "trials": len(trials),
        "in_sample_trial": in_sample,
        "datasets": rows,
        "held_out_mean": statistics.fmean(r["held_out"] for r in rows.values()),
        "in_sample_mean": statistics.fmean(r["in_sample"] for r in rows.values()),
    }


def loo_markdown(loo: dict | None) -> list[str]:
    """The leave-one-dataset-out section of report.md (nothing when there is none)."""
    if not loo:
        return []
    lines = ["## Leave one dataset out", ""]
    lines += [
        f"Over the {loo['trials']} complete trials: each dataset's score under the trial chosen "
        "on the other datasets (held out), and under the trial best on all of them "
        f"(in sample, trial {loo['in_sample_trial']}).",
        "",
        "| dataset | chosen trial | held out | in sample |",
        "|---|---:|---:|---:|",
    ]
    for d, r in loo["datasets"].items():
        lines.append(
            f"| {d} | {r['chosen_trial']} | {_fmt(r['held_out'])} | {_fmt(r['in_sample'])} |"
        )
    lines.append(
        f"| **mean** | | **{_fmt(loo['held_out_mean'])}** | **{_fmt(loo['in_sample_mean'])}** |"
    )
    gap = loo["in_sample_mean"] - loo["held_out_mean"]
    lines += ["", f"In-sample mean minus held-out mean: {gap:+.2f} points.", ""]
    return lines
