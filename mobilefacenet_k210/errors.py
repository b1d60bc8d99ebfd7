"""The one base class of every error a user can cause (bad file, bad flag, wrong folder).

The CLI shows an :class:`Mfk210Error` as one line and exits with status 2; any other exception is
a bug in this package and keeps its traceback. Each stage's own error class derives from this one
and from the built-in class it always had (``ValueError``, ``RuntimeError``...), so callers that
caught those keep working.
"""


class Mfk210Error(Exception):
    """A user-facing error: its message names the file or setting and says what to do."""


class FileFormatError(Mfk210Error, ValueError):
    """A file of this package's own making (JSON record, state, report) that is missing or unreadable."""
