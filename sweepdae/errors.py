"""The project's exception types. Library code raises these; the CLI turns them into one red line."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every character that `str.isprintable()` rejects written as a Python escape.

    Control characters (``\\x1b``, ``\\x1e``, newlines, DEL, C1), bidi overrides (``\\u202e``) and other
    format or unassigned code points become ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, so input echoed in a
    message cannot drive the terminal that shows it. Idempotent: the escapes themselves are printable.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


class SweepdaeError(Exception):
    """Base of every error sweepdae raises on purpose (bad input, missing data, store trouble)."""

    exit_code = 1


class GridError(SweepdaeError):
    """A grid file is invalid: the message names the file, the key path and, when known, the line.

    The message echoes keys and values of the file, so it is made printable here, once for every caller.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


class RecipeError(SweepdaeError):
    """A recipe knob has an unknown name, a wrong type or an impossible combination."""

    exit_code = 2


class DatasetError(SweepdaeError):
    """A dataset is missing or corrupt: the message says where it looked and how to get it."""


class StoreError(SweepdaeError):
    """The results store cannot be reached or its URL is malformed."""


class StoreNotFound(StoreError):
    """No store at the URL (a missing journal or SQLite file, a database without the study): read-only commands
    say so instead of creating one."""


class StoreUnavailable(StoreError):
    """The store's backend failed (server down or restarting, journal unreadable): the same call may succeed
    later, so coordinators retry it through an outage."""


class ScheduleError(SweepdaeError, ValueError):
    """A noise schedule cannot be built as asked (too few steps) or its table is malformed (not finite, not
    monotone, gamma outside (0, 1], or not variance-preserving)."""


class TrainingError(SweepdaeError):
    """A cell cannot go on training (e.g. a non-finite loss); `failure_class` says why."""

    def __init__(self, message: str, failure_class: str = "crash") -> None:
        super().__init__(message)
        self.failure_class = failure_class


class MissingWeightsError(SweepdaeError):
    """Pretrained weights (FID Inception, perceptual network) are not installed."""
