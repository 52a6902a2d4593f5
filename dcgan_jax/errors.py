"""The one exception type for user mistakes.

Everything a user can get wrong (a config field, a dataset name, a folder, a weights file, a
checkpoint) raises :class:`UserError` with one sentence that says what was wrong and what is
valid. The command-line entry points print that sentence alone (no traceback) and exit with
:data:`EXIT_USER_ERROR`; library callers can catch it like any ``ValueError``.
"""
import sys
from typing import NoReturn

EXIT_USER_ERROR = 2


class UserError(ValueError):
  """A mistake in the user's input, explained in one sentence."""


def exit_with_user_error(message: object) -> NoReturn:
  """For command-line programs: prints ``message`` as one line on stderr, exits with
  :data:`EXIT_USER_ERROR`."""
  sys.stderr.write(' '.join(str(message).split()) + '\n')
  sys.stderr.flush()
  sys.exit(EXIT_USER_ERROR)


def first_line(error: BaseException, default: str = 'bad command line') -> str:
  """The first line of an error's message (absl's flag errors append a usage text)."""
  return (str(error).strip().splitlines() or [default])[0]
