"""Errors that the CLI turns into one-line messages and a non-zero exit."""


class ImcError(Exception):
    """A user-facing error: bad path, malformed file, missing weights."""


class SubmissionError(ImcError):
    """A submission that the metric cannot score (missing, unknown or duplicated images...)."""


class WeightsError(ImcError):
    """A weight file that is missing, truncated or does not match its sha256."""
