"""The one exception type for user mistakes.

Everything a user can get wrong (a config field, a dataset name, a folder, a weights file, a
checkpoint) raises :class:`UserError` with one sentence that says what was wrong and what is
valid. The command-line entry points print that sentence alone (no traceback) and exit with
:data:`EXIT_USER_ERROR`; library callers can catch it like any ``ValueError``.
"""
import math
import numbers
import os
import sys
import warnings
from typing import NoReturn

import numpy as np

EXIT_USER_ERROR = 2


class UserError(ValueError):
  """A mistake in the user's input, explained in one sentence."""


def is_integer(value: object) -> bool:
  """Whether ``value`` is an integer count (Python or numpy; not a bool, not a float)."""
  # numpy's integer types register as numbers.Integral; numpy's bool does not, Python's does.
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def finite_number(value: object) -> float | None:
  """``value`` as a float when it is a finite number (Python, numpy or a concrete JAX scalar),
  else None: strings, bools, NaN and infinities are not numbers a setting can take."""
  if isinstance(value, (str, bytes, bool, np.bool_)):
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def exit_with_user_error(message: object) -> NoReturn:
  """For command-line programs: prints ``message`` as one line on stderr, exits with
  :data:`EXIT_USER_ERROR`."""
  sys.stderr.write(' '.join(str(message).split()) + '\n')
  sys.stderr.flush()
  sys.exit(EXIT_USER_ERROR)


def first_line(error: BaseException, default: str = 'bad command line',
               max_chars: int | None = None) -> str:
  """The first line of an error's message (absl's flag errors append a usage text).

  With ``max_chars``, a longer line is cut at a space and ends in '...' (not mid-word).
  """
  line = (str(error).strip().splitlines() or [default])[0]
  if max_chars is None or len(line) <= max_chars:
    return line
  cut = line[:max_chars].rsplit(' ', 1)[0] if ' ' in line[:max_chars] else line[:max_chars]
  return cut.rstrip(' ,;:(') + '...'


# The packages whose frames stand between a user's call and a warning raised inside the library:
# dcgan_jax itself, and JAX's and Flax's tracing when the warning comes from a traced step.
_LIBRARY_PACKAGES = ('dcgan_jax', 'jax', 'jaxlib', 'flax', 'optax')


def exception_chain(error: BaseException | None) -> list[BaseException]:
  """``error`` and the errors it was raised from or during (``__cause__``, else
  ``__context__``), outermost first; a cycle is followed once."""
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _library_folders() -> tuple[str, ...]:
  folders = []
  for name in _LIBRARY_PACKAGES:
    module = sys.modules.get(name)
    if module is not None and getattr(module, '__file__', None):
      folders.append(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)
  return tuple(folders)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
  """``warnings.warn`` pointed at the user's own line: the first caller outside dcgan_jax (and
  outside JAX's and Flax's tracing, for warnings raised while a step traces).

  A fixed ``stacklevel`` is right for one call path only: the same warning reached through
  ``DataParallelStep`` or a jitted step would name a line of ours, which the user cannot change.
  Where every frame is the library's (its own programs), the outermost one is named.
  """
  folders = _library_folders()
  frame, level = sys._getframe(1), 2  # pylint: disable=protected-access
  while frame is not None and frame.f_back is not None and (
      os.path.abspath(frame.f_code.co_filename).startswith(folders)):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, category, stacklevel=level)

