"""What a run says when the storage refuses one of its files (a full disk, a quota or file-size
limit, a read-only or unwritable folder): one line that names the file and says whether the
run can resume, instead of a traceback of PIL, TensorFlow or clu internals.

The files that write a run's outputs name their file where it fails (:func:`naming`: a write
or close that fails often raises an ``OSError`` without a file name), and the run turns the
failure into a :class:`WriteError` where it knows its checkpoints (:func:`reported`).
Checkpoint saves have their own message (``dcgan_jax.checkpointing.CheckpointError``).
"""
from __future__ import annotations

import contextlib
import errno
import logging as std_logging
import os
import re
from typing import Any, Iterator

from dcgan_jax.errors import UserError, exception_chain, first_line

# What the storage refuses: the disk or a limit is full, or the folder is not writable. Other
# OSErrors (a missing file, a bug) keep their traceback.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_STORAGE_ERRNOS = (*NO_SPACE, *_NOT_WRITABLE, errno.EIO)
_REASONS = {os.strerror(number): number for number in _STORAGE_ERRNOS}
# TensorFlow's summary writer (and clu's asynchronous writer around it) report the file and the
# OS's reason as text: "{{function_node ...}} /run/events.out.tfevents.X; No space left on
# device\n\tFailed to flush 3 events to ...".
_TEXT_FAILURE = re.compile(r'(\S+); (' + '|'.join(map(re.escape, _REASONS)) + ')')


class WriteError(UserError):
  """A file of the run could not be written; the message names it and says what is kept.

  A :class:`~dcgan_jax.errors.UserError`, as ``CheckpointError`` is, so that the programs print
  its one line and exit with status 2; the underlying error is kept as ``__cause__``.
  """


def storage_failure(error: BaseException) -> tuple[str | None, int] | None:
  """``(file or None, errno)`` of a write the storage refused, found in ``error``'s chain (an
  ``OSError``, or TensorFlow's error text); None for any other error."""
  chain = exception_chain(error)
  for link in chain:
    if isinstance(link, OSError) and link.errno in _STORAGE_ERRNOS:
      return (os.fspath(link.filename) if link.filename is not None else None), link.errno
  for link in chain:
    if match := _TEXT_FAILURE.search(str(link)):
      return match.group(1), _REASONS[match.group(2)]
  return None


def describe(error: BaseException) -> str:
  """One short line for ``error``: ``'<file>: <reason>'`` for a write the storage refused (clu's
  and TensorFlow's own text spans lines of internals), else the error's type and first line
  (its type alone when it has no message)."""
  if failure := storage_failure(error):
    path, number = failure
    return f'{path}: {os.strerror(number)}' if path else os.strerror(number)
  line = first_line(error, default='', max_chars=200)
  return f'{type(error).__name__}: {line}' if line else type(error).__name__


def advice(number: int) -> str:
  """What to do about a refused write of errno ``number``."""
  if number in NO_SPACE:
    return 'free some disk space (or raise the quota or file-size limit)'
  if number in _NOT_WRITABLE:
    return 'make the workdir writable'
  return 'check the disk'


def unsaved_result(path: str | os.PathLike, error: BaseException,
                   result_text: str) -> WriteError | None:
  """The error to raise when the result file of a long computation (an evaluation, a probe)
  could not be written: one line that names it and still gives the result (``result_text``,
  which would otherwise be lost); None when ``error`` is not a write the storage refused."""
  failure = storage_failure(error)
  if failure is None:
    return None
  number = failure[1]
  return WriteError(f'Could not write {os.fspath(path)} ({os.strerror(number)}); '
                    f'{advice(number)} and run again. {result_text}')


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
  """Makes an ``OSError`` raised inside (a write or close that failed, which often names no
  file: PIL's, a file object's) name ``path``, so that the message can say which file it was."""
  try:
    yield
  except OSError as e:
    if e.filename is not None or e.errno is None:
      raise
    # OSError(errno, ...) is the subclass of that errno (PermissionError, ...), as raised.
    raise OSError(e.errno, e.strerror, os.fspath(path)) from e


@contextlib.contextmanager
def reported(workdir: str | os.PathLike, checkpointer: Any) -> Iterator[None]:
  """Turns a write the storage refused inside into one :class:`WriteError` that names the file
  and says what the run keeps: the checkpoints ``checkpointer`` (a
  :class:`~dcgan_jax.checkpointing.Checkpointer`) saved, which a failed write of another file
  leaves intact, and the step the same command resumes from.

  A ``UserError`` (a failed checkpoint save says so itself) and every other error pass as they
  are.
  """
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    failure = storage_failure(e)
    if failure is None:
      raise
    path, number = failure
    with contextlib.suppress(Exception):  # A save in flight finishes first (or fails: kept out).
      checkpointer.wait_until_finished()
    latest = None
    with contextlib.suppress(Exception):
      latest = checkpointer.latest_step()
    what = path or f'a file in {os.fspath(workdir)}'
    kept = (f'the checkpoints in {checkpointer.directory} are intact, and it resumes from step '
            f'{latest}' if latest is not None else
            'no checkpoint had been saved yet, so it starts the run again')
    raise WriteError(f'Could not write {what} ({os.strerror(number)}); {advice(number)} and run '
                     f'the same command again: {kept}.') from e


class _DropAsyncWriterStorageErrors(std_logging.Filter):
  """Drops clu's error log of a TensorBoard write the storage refused.

  clu's asynchronous writer logs each failed write with its traceback (40 lines of TensorFlow's
  on a full disk) and raises it again at the writer's next call, where :func:`reported` says
  it in one line. Other errors of the writer are kept.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and f'{os.sep}clu{os.sep}' in (record.pathname or '')
                and storage_failure(error) is not None)


def quiet_async_writer_failures() -> None:
  """Installs :class:`_DropAsyncWriterStorageErrors` (once) on absl's logger, which clu uses."""
  logger = std_logging.getLogger('absl')
  if not any(isinstance(f, _DropAsyncWriterStorageErrors) for f in logger.filters):
    logger.addFilter(_DropAsyncWriterStorageErrors())
