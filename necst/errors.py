"""The one family of errors necst raises on bad input.

The CLI prints ``error: <message>`` and exits 2 for any of these; anything else is a bug.
"""
from __future__ import annotations

from pathlib import Path


class NecstError(Exception):
    """Bad input or an impossible request, said in one line."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class CaptureError(NecstError):
    """A capture file that cannot be read (format, header, records)."""


class DatasetError(NecstError):
    """A dataset folder that is missing, incomplete or of another schema."""


class BundleError(NecstError):
    """A model or detector bundle that is missing, tampered with or incompatible."""


class OutputExistsError(NecstError):
    """An output that exists already and was not to be overwritten (use --force)."""
