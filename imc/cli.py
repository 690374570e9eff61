"""The `imc` command: run, score, check, demo, report, compare, tune.

Exit status: 0 done; 1 a check found problems; 2 bad input or configuration (one line on
stderr, nothing run); FAILED_DATASETS (3) the run finished with a complete submission but some
datasets failed (their images are outliers; tracebacks in RUN_DIR/errors.log); 130
interrupted."""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

from tuning.cli import add_parser as add_tune_parser
from tuning.cli import run as cmd_tune

from .cli_args import add_config_args
from .errors import ImcError
from .log import logger, setup_logging
from .submission import check_submission, read_submission

FAILED_DATASETS = 3  # exit status: run finished, some datasets failed (submission.py too)


def _common_run_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument(
        "--cache-dir", type=Path, help="cache root (default: $IMC_CACHE or ./outputs/cache)"
    )
    p.add_argument("--run-dir", type=Path, help="models, logs and stats (default: outputs/run)")
    p.add_argument(
        "--no-report", action="store_true", help="don't write RUN_DIR/report.html at the end"
    )


def package_version() -> str:
    """The installed package's version, else imc.__version__ (a source tree on sys.path)."""
    try:
        return metadata.version("imc")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-V", "--version", action="version", version=f"imc {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run", help="reconstruct every dataset and write submission.csv and poses.csv"
    )
    p.add_argument(
        "data_root",
        type=Path,
        help="a folder of photos, a folder of photo folders (one dataset each), or a "
        "competition folder (IMC2023/2024/2025 layout)",
    )
    p.add_argument("--split", choices=["train", "test"], help="default: test if it has images")
    p.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    p.add_argument("--output", type=Path, help="submission path (default: RUN_DIR/submission.csv)")
    p.add_argument("--no-score", action="store_true", help="don't score against train labels")
    from .budget import DEFAULT_SECONDS

    p.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_SECONDS,
        metavar="SECONDS",
        help="seconds for the whole run, shared among datasets by size; a dataset that would "
        "overrun its share is degraded (default: 9 h less 30 min; inf: no limit)",
    )
    _common_run_args(p)

    p = sub.add_parser("score", help="score a submission with the competition's metric")
    p.add_argument("submission", type=Path)
    p.add_argument("data_root", type=Path, help="competition folder with train labels")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")

    p = sub.add_parser("check", help="validate a submission's rows, columns and image coverage")
    p.add_argument("submission", type=Path)
    p.add_argument("data_root", type=Path)
    p.add_argument("--split", choices=["train", "test"])

    p = sub.add_parser("demo", help="build the synthetic demo scene, reconstruct it and score it")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="where to build it")
    p.add_argument("--seed", type=int, default=0)
    _common_run_args(p)

    p = sub.add_parser("report", help="write the HTML report of a run folder")
    p.add_argument("run_dir", type=Path, help="the --run-dir of `imc run`")
    p.add_argument(
        "--data-root", type=Path, help="labelled competition folder: reference poses and scores"
    )
    p.add_argument("--output", type=Path, help="HTML path (default: RUN_DIR/report.html)")
    p.add_argument("--submission", type=Path, help="default: the run's submission")

    p = sub.add_parser(
        "compare", help="the images whose outcome differs between two scored run folders"
    )
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    add_tune_parser(sub)
    return parser


def cmd_run(args, data_root: Path, split: str | None, datasets) -> int:
    """Run, write the submission, poses.csv per dataset and the report; score when the split
    has reference poses, then diagnose every image (imc.diagnosis: summary.json `diagnosis`).
    Exit status FAILED_DATASETS when a dataset failed (its images are outliers)."""
    from . import config, formats, pipeline, poses, settings

    conf = config.resolve(args.preset, args.config, args.overrides)
    comp = formats.read_competition(data_root, split=split, datasets=datasets)
    run_dir = args.run_dir or Path("outputs/run")
    output = getattr(args, "output", None) or run_dir / "submission.csv"
    cache = args.cache_dir or settings.cache_root()
    logger.info("%d datasets, %d images (%s)", len(comp.datasets), comp.num_images, comp.layout)
    budget = getattr(args, "time_budget", None)
    started = time.time()
    preds, stats = pipeline.run(
        comp, conf, run_dir, cache, output, None if budget == float("inf") else budget
    )
    print(f"submission: {output}")
    for path in poses.complete_run(comp, preds, run_dir, started, stats.failed):
        print(f"poses: {path}")
    scores, score = None, comp.has_reference_poses and not getattr(args, "no_score", False)
    if score:
        from . import scoring

        frame = read_submission(output, comp.year)
        report = scoring.score(comp, frame)
        print(scoring.summary(report))
        scores = report.to_dict()
        _diagnose(comp, frame, report, run_dir)
    elif not comp.has_reference_poses:
        logger.info("%s: no reference poses, not scored", data_root)
    if not getattr(args, "no_report", False):
        _write_report(run_dir, data_root, comp.split, output, scores, score)
    for name, error in stats.failed.items():
        log = run_dir / "errors.log"
        print(f"dataset {name} failed: {error}; traceback in {log}", file=sys.stderr)
    return FAILED_DATASETS if stats.failed else 0


def _diagnose(comp, frame, report, run_dir: Path) -> None:
    """Per image error analysis of a scored IMC2025 run, its causes logged per dataset; a
    failure here is logged and does not fail the finished run."""
    from . import diagnosis

    if comp.year != 2025:
        return
    try:
        for name, rows in diagnosis.diagnose_run(comp, frame, report, run_dir).items():
            logger.info("diagnosis %s: %s", name, diagnosis.causes(rows))
    except Exception as e:
        logger.error("diagnosis not written: %s", e, exc_info=True)


def cmd_compare(args) -> int:
    """The images whose outcome differs between two diagnosed runs."""
    from . import diagnosis

    rows = diagnosis.compare(args.run_a, args.run_b)
    print(json.dumps(rows, indent=1) if args.json else diagnosis.compare_text(rows))
    return 0


def _write_report(run_dir, data_root, split, submission, scores, score: bool) -> None:
    """The run's report; a failure here is logged and does not fail the finished run."""
    from . import report

    try:
        path = report.write_report(
            run_dir, data_root, None, submission, split, score=score, scores=scores
        )
        print(f"report: {path}")
    except Exception as e:
        logger.error("report not written: %s", e, exc_info=True)


def cmd_report(args) -> int:
    from . import report

    path = report.write_report(args.run_dir, args.data_root, args.output, args.submission)
    print(f"report: {path}")
    return 0


def cmd_score(args) -> int:
    from . import formats, scoring

    comp = formats.read_competition(args.data_root, split="train")
    report = scoring.score(comp, read_submission(args.submission, comp.year))
    print(json.dumps(report.to_dict(), indent=2) if args.json else scoring.summary(report))
    return 0


def cmd_check(args) -> int:
    from . import formats

    comp = formats.read_competition(args.data_root, split=args.split)
    problems = check_submission(comp, read_submission(args.submission, comp.year))
    for line in problems:
        print(line)
    print(f"{args.submission}: {'OK' if not problems else f'{len(problems)} problems'}")
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("DEBUG" if args.verbose else "INFO")
    try:
        if args.command == "run":
            datasets = args.datasets.split(",") if args.datasets else None
            return cmd_run(args, args.data_root, args.split, datasets)
        if args.command == "score":
            return cmd_score(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "demo":
            from .demo import make_demo

            root = make_demo(args.out / "data", seed=args.seed)
            args.run_dir = args.run_dir or args.out / "run"
            return cmd_run(args, root, "train", None)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "tune":
            return cmd_tune(args)
        if args.command == "compare":
            return cmd_compare(args)
    except ImcError as e:
        print(f"imc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imc: interrupted (rerun to resume from the cache)", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
