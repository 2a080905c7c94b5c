"""The one error type a user can act on.

Every error that names a bad input, config value, file or argument derives from ``UserError``;
the CLI prints those as one line (``error: ...``) and lets everything else -- a bug -- show its
traceback.  ``UserError`` subclasses ``ValueError`` so callers that catch ``ValueError`` keep working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix: the message names the input and what to do."""


class UnknownNameError(UserError, KeyError):
    """A registry lookup (model, task, method) with a name nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
