"""Local scoring: a submission against a labelled competition folder, with the year's metric."""

from __future__ import annotations

import pandas as pd

from . import formats, metrics, metrics2023
from .data import Competition
from .errors import ImcError


def score(comp: Competition, submission: pd.DataFrame):
    """The year's ScoreReport of `submission` (a DataFrame in the year's format)."""
    if not any(d.has_labels for d in comp.datasets.values()):
        raise ImcError(f"{comp.root}: no reference poses (train labels) to score against")
    labels = formats.labels_frame(comp)
    thresholds = formats.thresholds_frame(comp)
    if comp.year == 2025:
        return metrics.score_imc2025(labels, submission, thresholds)
    if comp.year == 2024:
        return metrics.score_imc2024(labels, submission, thresholds)
    return metrics2023.score_imc2023(labels, submission, thresholds)


def summary(report) -> str:
    """One line per dataset, then `score: <value>` (the competition's figure)."""
    lines = []
    for d in report.datasets:
        parts = [f"{d.dataset}: score {d.score:.2f}", f"mAA {d.mAA:.2f}"]
        if d.clusterness is not None:
            parts.append(f"clusterness {d.clusterness:.2f}")
        parts.append(f"images {d.n_images}")
        lines.append(", ".join(parts))
    lines.append(f"score: {report.score:.4f}")
    return "\n".join(lines)
