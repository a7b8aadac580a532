"""The project's exception types. Library code raises these; the CLI turns them into one red line."""

from __future__ import annotations


class SweepdaeError(Exception):
    """Base of every error sweepdae raises on purpose (bad input, missing data, store trouble)."""

    exit_code = 1


class GridError(SweepdaeError):
    """A grid file is invalid: the message names the file, the key path and, when known, the line."""

    exit_code = 2


class RecipeError(SweepdaeError):
    """A recipe knob has an unknown name, a wrong type or an impossible combination."""

    exit_code = 2


class DatasetError(SweepdaeError):
    """A dataset is missing or corrupt: the message says where it looked and how to get it."""


class StoreError(SweepdaeError):
    """The results store cannot be reached or its URL is malformed."""


class TrainingError(SweepdaeError):
    """A cell cannot go on training (e.g. a non-finite loss); `failure_class` says why."""

    def __init__(self, message: str, failure_class: str = "crash") -> None:
        super().__init__(message)
        self.failure_class = failure_class


class MissingWeightsError(SweepdaeError):
    """Pretrained weights (FID Inception, perceptual network) are not installed."""
