"""`UserError`: the base of every error that a user's input causes (a value, a file, a name).

Its message says what to do. The `save-ros` command prints it as one line and exits 2; the node
logs it once and reports it as a diagnostic. Any other exception is a bug and keeps its
traceback. Subclasses keep a builtin base where callers catch one (`ValueError`, `KeyError`,
`RuntimeError`), so `class ParameterError(UserError, ValueError)`. Imports nothing of save_ros.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for; the message says what to fix."""
