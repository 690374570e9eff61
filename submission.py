"""Kaggle entry point: reconstruct the competition's test folder and write submission.csv.

    python submission.py --data-root /kaggle/input/image-matching-challenge-2025 \
        --output /kaggle/working/submission.csv [--config best.json] [--preset gpu] \
        [--set section.key=value ...] [--time-budget SECONDS]

Only chains the stages (configuration, competition folder, imc.pipeline.run); everything
lives in the imc package. Without `--preset`, a CUDA device selects the `gpu` preset.

Exit status: 0 when every dataset ran; 3 when some dataset failed inside the pipeline (listed
on stderr, tracebacks in RUN_DIR/errors.log): the submission is written all the same, with
every row, the failed datasets' images as outliers; 2 on a user error (bad configuration or
competition folder, one line on stderr) before anything runs; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imc import config, formats, pipeline, settings
from imc.budget import DEFAULT_SECONDS
from imc.cli import FAILED_DATASETS
from imc.errors import ImcError
from imc.log import setup_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", type=Path, required=True, help="the competition folder")
    p.add_argument("--output", type=Path, default=Path("submission.csv"))
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--config", help="JSON config file (e.g. the best config of `imc tune`)")
    p.add_argument("--preset", help="cpu, gpu or fast (default: gpu when CUDA is found)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache-dir", type=Path, help="default: $IMC_CACHE or ./outputs/cache")
    p.add_argument("--run-dir", type=Path, default=Path("outputs/run"))
    p.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_SECONDS,
        help="seconds for the whole run (default: 9 h less 30 min; inf: no limit)",
    )
    return p.parse_args(argv)


def report_failures(failed: dict[str, str], total: int, run_dir: Path, output: Path) -> None:
    """The failed datasets, one line each, on stderr."""
    lines = [
        f"submission.py: {len(failed)} of {total} datasets FAILED; {output} still has every "
        f"row (their images as outliers); tracebacks in {run_dir / 'errors.log'}:"
    ]
    lines += [f"  {name}: {error}" for name, error in failed.items()]
    print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    setup_logging()
    try:
        conf = config.resolve(a.preset, a.config, a.overrides)
        comp = formats.read_competition(a.data_root, split=a.split)
        budget = None if a.time_budget == float("inf") else a.time_budget
        cache = a.cache_dir or settings.cache_root()
        _, stats = pipeline.run(comp, conf, a.run_dir, cache, a.output, budget)
    except ImcError as e:
        print(f"submission.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("submission.py: interrupted (rerun to resume from the cache)", file=sys.stderr)
        return 130
    print(f"submission: {a.output}", flush=True)
    if stats.failed:
        report_failures(stats.failed, len(comp.datasets), a.run_dir, a.output)
        return FAILED_DATASETS
    return 0


if __name__ == "__main__":
    sys.exit(main())
