"""Flag parsing shared by the workdir-reading programs (``sample``, ``profiling``)."""
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
