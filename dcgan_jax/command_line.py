"""Flag parsing shared by the command-line programs (``sample``, ``profiling``, ``evaluate``,
``fid``)."""
from __future__ import annotations

import sys
from typing import Any

from dcgan_jax.errors import exit_with_user_error, first_line


def parse_workdir_flags(flag_values: Any, argv: list[str] | None) -> Any:
  """Parses ``argv`` (default ``sys.argv``) into absl ``flag_values``, which define ``workdir``.

  A flag error, a stray positional argument or a missing ``--workdir`` prints one line and
  exits with status 2.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    remaining = flag_values(list(sys.argv if argv is None else argv))
  except flags.Error as e:
    exit_with_user_error(first_line(e))
  if len(remaining) > 1:
    exit_with_user_error(f'Unexpected arguments {" ".join(remaining[1:])!r}; pass options as '
                         '--name=value.')
  if not flag_values.workdir:
    exit_with_user_error('--workdir is required, e.g. --workdir=/tmp/dcgan_digits.')
  return flag_values


def parse_private_flags(flag_values: Any, argv: list[str]) -> list[str]:
  """Parses a program's private absl ``flag_values``, then absl's own (--verbosity, ...).

  The flag set is reset first, so tests can parse more than once in one process. A flag error
  prints one line and exits with status 2.

  Returns:
    What absl leaves: the program name and the positional arguments.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag_values.unparse_flags()
  try:
    remaining = flag_values(argv, known_only=True)
    return flags.FLAGS(remaining)
  except flags.Error as e:
    exit_with_user_error(first_line(e))
