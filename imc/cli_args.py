"""Command-line arguments shared by `imc run`/`imc demo` (imc.cli) and `imc tune` (tuning.cli)."""

from __future__ import annotations

import argparse

from .config import PRESETS


def add_config_args(p: argparse.ArgumentParser, base: bool = False) -> None:
    """--config, --preset and --set (args.config, args.preset, args.overrides), the inputs of
    config.resolve; `base`: they give the base configuration (of a sweep)."""
    what = "base " if base else ""
    p.add_argument("--config", help=f"JSON {what}config file (e.g. the best config of `imc tune`)")
    p.add_argument("--preset", help=f"named {what}preset: {', '.join(PRESETS)}")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one {what}setting, e.g. --set features.max_keypoints=1024",
    )
