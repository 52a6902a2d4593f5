"""The one exception type for user mistakes.

Everything a user can get wrong (a config field, a dataset name, a folder, a weights file, a
checkpoint) raises :class:`UserError` with one sentence that says what was wrong and what is
valid. The command-line entry points print that sentence alone (no traceback) and exit with
:data:`EXIT_USER_ERROR`; library callers can catch it like any ``ValueError``.
"""

EXIT_USER_ERROR = 2


class UserError(ValueError):
  """A mistake in the user's input, explained in one sentence."""
