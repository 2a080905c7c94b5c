"""Errors for bad data: one line each, naming the file, folder or key and what to do about it."""
from __future__ import annotations

import os

from ..errors import UserError


class DataError(UserError):
    """A dataset cannot be built as configured (empty folder, one class, unknown label, ...)."""


class BadImageError(DataError):
    """One file cannot be decoded as an image.  ``path`` is the file, ``reason`` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        # os.fsencode + replace: a name that is not valid UTF-8 prints (U+FFFD) instead of raising on output
        super().__init__(f"{os.fsencode(self.path).decode('utf-8', 'replace')}: {reason}")

    def __reduce__(self):  # keep it picklable (worker processes, multiprocessing pools)
        return (type(self), (self.path, self.reason))
