"""The `imc` command: run, score, check, demo, tune."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ImcError
from .log import logger, setup_logging
from .submission import check_submission, read_submission


def add_config_args(p: argparse.ArgumentParser, base: bool = False) -> None:
    """--config, --preset and --set (args.config, args.preset, args.overrides), the inputs of
    config.resolve; `base`: they give the base configuration (of a sweep)."""
    what = "base " if base else ""
    p.add_argument("--config", help=f"JSON {what}config file (e.g. the best config of `imc tune`)")
    p.add_argument("--preset", help=f"named {what}preset: cpu, gpu, fast")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one {what}setting, e.g. --set features.max_keypoints=1024",
    )


def _common_run_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument(
        "--cache-dir", type=Path, help="cache root (default: $IMC_CACHE or ./outputs/cache)"
    )
    p.add_argument("--run-dir", type=Path, help="models, logs and stats (default: outputs/run)")
    p.add_argument(
        "--no-report", action="store_true", help="don't write RUN_DIR/report.html at the end"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="reconstruct every dataset and write submission.csv")
    p.add_argument("data_root", type=Path, help="competition folder (IMC2023/2024/2025 layout)")
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

    from tuning.cli import add_parser as add_tune_parser

    add_tune_parser(sub)
    return parser


def cmd_run(args, data_root: Path, split: str | None, datasets) -> int:
    from . import config, formats, pipeline, settings

    conf = config.resolve(args.preset, args.config, args.overrides)
    comp = formats.read_competition(data_root, split=split, datasets=datasets)
    run_dir = args.run_dir or Path("outputs/run")
    output = getattr(args, "output", None) or run_dir / "submission.csv"
    cache = args.cache_dir or settings.cache_root()
    logger.info(
        "%d datasets, %d images (IMC%d %s)",
        len(comp.datasets),
        comp.num_images,
        comp.year,
        comp.split,
    )
    budget = getattr(args, "time_budget", None)
    pipeline.run(comp, conf, run_dir, cache, output, None if budget == float("inf") else budget)
    print(f"submission: {output}")
    scores, score = None, not getattr(args, "no_score", False)
    if comp.split == "train" and score:
        from . import scoring

        report = scoring.score(comp, read_submission(output, comp.year))
        print(scoring.summary(report))
        scores = report.to_dict()
    if not getattr(args, "no_report", False):
        _write_report(run_dir, data_root, comp.split, output, scores, score)
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
            from tuning.cli import run as cmd_tune

            return cmd_tune(args)
    except ImcError as e:
        print(f"imc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imc: interrupted (rerun to resume from the cache)", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
