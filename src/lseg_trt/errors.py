"""Errors a user can cause, kept apart from bugs.

The CLI turns an :class:`LsegTrtError` into one line on stderr and exit code 2; any other exception
keeps its traceback, because it means our code is wrong, not the input.
"""

from __future__ import annotations


class LsegTrtError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class InvalidSizeError(LsegTrtError, ValueError):
    """An image size the network cannot process; a ValueError so plain Python callers can catch it."""


class MissingDependencyError(LsegTrtError, ImportError):
    """An optional package (onnxruntime, tensorrt, ...) that the requested feature needs."""
