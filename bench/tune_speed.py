"""Cost of an `imc tune` trial against a full pipeline run, as markdown rows for BENCHMARKS.md.

    python bench/tune_speed.py --tune-dir outputs/tune/STUDY --full-stats RUN_DIR/stats.json

--tune-dir: the output folder of `imc tune` (its summary.json holds the trial seconds per
dataset, medians over complete trials). --full-stats: the stats.json of a full `imc run`
with a cold cache (seconds per stage and dataset), e.g. the run that prepared the sweep.
A trial runs verification, clustering and mapping on cached matches; a full run also runs
orientation, features, retrieval and matching.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

AFTER_MATCHING = ("verification", "clustering", "mapping")


def rows(summary: dict, stats: dict) -> list[str]:
    """Markdown table: per dataset, full-run seconds, trial seconds and the ratio."""
    trial = summary["timings"]["dataset_seconds_median"]
    holdout = set(summary["scores"]["defaults"]["holdout"])
    out = [
        "| dataset | full run (s) | its verification + mapping (s) | trial (s, median) | "
        "full run / trial |",
        "|---|---:|---:|---:|---:|",
    ]
    for ds, stages in stats.items():
        full = stages["total"]["seconds"]
        tail = sum(stages[s]["seconds"] for s in AFTER_MATCHING if s in stages)
        t = trial.get(ds)
        note = " (held out)" if ds in holdout else ""
        ratio = f"{full / t:.0f}x" if t else "-"
        t_text = f"{t:.1f}" if t else "not in trials"
        out.append(f"| {ds}{note} | {full:.0f} | {tail:.1f} | {t_text} | {ratio} |")
    med = summary["timings"]["trial_seconds_median"]
    total = sum(v["total"]["seconds"] for v in stats.values())
    tuned = [ds for ds in stats if ds in trial]
    full_tuned = sum(stats[ds]["total"]["seconds"] for ds in tuned)
    out.append("")
    out.append(
        f"Whole trial (all tuning datasets, median): {med:.1f} s; a full run of the same "
        f"datasets: {full_tuned:.0f} s ({full_tuned / med:.0f}x); all datasets: {total:.0f} s."
    )
    return out


def scores(summary: dict) -> list[str]:
    """Markdown table: defaults against the best trial, tuning and held-out means."""
    sc = summary["scores"]
    out = ["| set | defaults | best trial | change |", "|---|---:|---:|---:|"]
    for group in ("tuning", "holdout"):
        d, b = sc["defaults"][group], sc.get("best", {}).get(group, {})
        if not d:
            continue
        md, mb = sum(d.values()) / len(d), sum(b.values()) / len(b)
        names = ", ".join(d)
        out.append(f"| {group} ({names}) | {md:.2f} | {mb:.2f} | {mb - md:+.2f} |")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tune-dir", type=Path, required=True)
    p.add_argument("--full-stats", type=Path, required=True)
    a = p.parse_args(argv)
    summary = json.loads((a.tune_dir / "summary.json").read_text())
    stats = json.loads(a.full_stats.read_text())
    print("\n".join(rows(summary, stats) + [""] + scores(summary)))


if __name__ == "__main__":
    main()
