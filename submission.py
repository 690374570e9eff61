"""Kaggle entry point: reconstruct the competition's test folder and write submission.csv.

    python submission.py --data-root /kaggle/input/image-matching-challenge-2025 \
        --output /kaggle/working/submission.csv [--config best.json] [--preset gpu] \
        [--time-budget SECONDS]

Only chains the stages; everything lives in the imc package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imc.cli import main as imc_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", type=Path, required=True, help="the competition folder")
    p.add_argument("--output", type=Path, default=Path("submission.csv"))
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--config")
    p.add_argument("--preset")
    p.add_argument("--cache-dir")
    p.add_argument("--run-dir")
    p.add_argument("--time-budget", help="seconds for the whole run (default: 9 h less 30 min)")
    a = p.parse_args(argv)
    args = ["run", str(a.data_root), "--split", a.split, "--output", str(a.output)]
    for flag in ("config", "preset", "cache_dir", "run_dir", "time_budget"):
        if getattr(a, flag):
            args += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
    return imc_main(args)


if __name__ == "__main__":
    sys.exit(main())
