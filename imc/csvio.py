"""CSV files of the competition: tables read as strings, poses as ';'-separated numbers.

Used by the folder readers (imc.formats), the submissions (imc.submission) and the metrics.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ImcError


def _short(text: object, n: int = 60) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 3] + "..."


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A CSV as strings ('' for empty cells); one-line ImcError if malformed or short of columns."""
    try:
        with warnings.catch_warnings():  # rows longer than the header: an error, not data loss
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False
            )
    except FileNotFoundError:
        raise ImcError(f"{path}: no such file") from None
    except (ValueError, OSError, pd.errors.ParserWarning) as e:  # also UnicodeDecodeError
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImcError(f"{path}: malformed CSV ({detail})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ImcError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})"
        )
    return frame.fillna("")


def parse_floats(value: object, n: int | None = None, where: str = "") -> np.ndarray:
    """A ';'-separated row-major string, or a sequence of numbers -> [n] float64 (`nan`
    allowed; `n`: any number when None); ImcError naming `where` otherwise."""
    try:
        if value is None:  # numpy would read it as nan
            raise ValueError
        parts = value.split(";") if isinstance(value, str) else value
        values = np.array(parts, dtype=np.float64).reshape(-1)
    except ValueError:
        text = _short(value)
        raise ImcError(f"{where}: cannot parse {text!r} as ';'-separated numbers") from None
    if n is not None and values.size != n:
        raise ImcError(f"{where}: expected {n} values, got {values.size} in {_short(value)!r}")
    return values


def format_floats(values: np.ndarray) -> str:
    """Row-major ';'-joined, each number in its shortest exact (round-trip) form."""
    return ";".join(repr(float(x)) for x in np.asarray(values, dtype=np.float64).ravel())
