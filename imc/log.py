"""The package logger, configured once by the entry points (CLI, submission.py)."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("imc")


def setup_logging(level: int | str = logging.INFO) -> None:
    """Attach one stderr handler to the package logger (idempotent)."""
    logger.setLevel(level)
    if not any(getattr(h, "_imc", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S")
        )
        handler._imc = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
