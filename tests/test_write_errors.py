"""Tests of dcgan_jax.write_errors: a write the storage refused, told in one line.

The runs that meet one are in tests/test_train.py (a sample grid, the event file); here the
pieces, without training.
"""
import errno
import json
import logging
import os
import pathlib

import pytest

from dcgan_jax import json_files
from dcgan_jax import write_errors


def test_naming_gives_a_failed_write_its_file(tmp_path):
  path = tmp_path / 'quality.json'
  with pytest.raises(PermissionError) as excinfo:  # The errno's own subclass, as raised.
    with write_errors.naming(path):
      raise OSError(errno.EACCES, os.strerror(errno.EACCES))
  assert excinfo.value.filename == str(path)
  with pytest.raises(OSError) as excinfo:  # One that names its file keeps it.
    with write_errors.naming(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), 'other.tmp')
  assert excinfo.value.filename == 'other.tmp'


def test_storage_failure_finds_the_file_and_reason_and_nothing_else():
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/run/samples/step_000002.png')
  try:
    raise RuntimeError('wrapped') from full
  except RuntimeError as e:
    wrapped = e
  assert write_errors.storage_failure(wrapped) == ('/run/samples/step_000002.png', errno.ENOSPC)
  # TensorFlow's summary writer, through clu's asynchronous writer: text only.
  text = ("Error '{{function_node __wrapped__FlushSummaryWriter}} /run/events.out.tfevents.1.v2; "
          "File too large\n\tFailed to flush 3 events to /run/events.out.tfevents.1.v2' occurred "
          'ASYNCHRONOUSLY.')
  assert write_errors.storage_failure(RuntimeError(text)) == ('/run/events.out.tfevents.1.v2',
                                                              errno.EFBIG)
  assert write_errors.describe(RuntimeError(text)) == (
      '/run/events.out.tfevents.1.v2: File too large')
  assert write_errors.describe(ValueError('bad value\nmore')) == 'ValueError: bad value'
  assert write_errors.describe(KeyboardInterrupt()) == 'KeyboardInterrupt'  # No message.
  # Not the storage's doing: left to its traceback.
  assert write_errors.storage_failure(FileNotFoundError(errno.ENOENT, 'gone', '/x')) is None
  assert write_errors.storage_failure(ValueError('bad value')) is None


def test_a_failed_json_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = json_files.write_json_atomically(tmp_path / 'best_fid.json', {'fid': 1.0})
  real_write_text = pathlib.Path.write_text

  def full_disk(self, text, *args, **kwargs):
    real_write_text(self, text[:5], *args, **kwargs)  # Cut short, as a disk that fills up.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(pathlib.Path, 'write_text', full_disk)
  with pytest.raises(OSError) as excinfo:
    json_files.write_json_atomically(path, {'fid': 2.0})
  assert excinfo.value.filename == str(path)  # The file the message names.
  assert json.loads(path.read_text()) == {'fid': 1.0}
  assert os.listdir(tmp_path) == ['best_fid.json']  # No cut-short best_fid.json.tmp.


def test_clus_log_of_a_refused_write_is_dropped_and_others_kept():
  drop = write_errors._DropAsyncWriterStorageErrors()  # pylint: disable=protected-access
  clu_file = os.path.join(os.sep, 'site-packages', 'clu', 'asynclib.py')

  def record(error, pathname=clu_file):
    return logging.LogRecord('absl', logging.ERROR, pathname, 1, 'Error in producer thread',
                             None, (type(error), error, None))

  assert not drop.filter(record(RuntimeError('/run/events.out.tfevents.1; No space left on '
                                             'device')))
  assert drop.filter(record(ValueError('a bug')))  # Kept: not the storage's doing.
  assert drop.filter(record(OSError(errno.ENOSPC, 'No space left on device'), '/elsewhere.py'))


class _Checkpointer:
  """What reported() asks of a Checkpointer."""

  def __init__(self, latest, directory='/run/checkpoints'):
    self.latest, self.directory, self.waited = latest, directory, False

  def wait_until_finished(self):
    self.waited = True

  def latest_step(self):
    return self.latest


def test_reported_says_what_failed_what_to_do_and_what_is_kept():
  checkpointer = _Checkpointer(latest=400)
  with pytest.raises(write_errors.WriteError) as excinfo:
    with write_errors.reported('/run', checkpointer):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/run/quality.json')
  assert checkpointer.waited  # A save in flight counts once it is on disk.
  assert str(excinfo.value) == (
      'Could not write /run/quality.json (No space left on device); free some disk space (or '
      'raise the quota or file-size limit) and run the same command again: the checkpoints in '
      '/run/checkpoints are intact, and it resumes from step 400.')
  with pytest.raises(write_errors.WriteError) as excinfo:  # Unwritable, before any checkpoint.
    with write_errors.reported('/run', _Checkpointer(latest=None)):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
  assert str(excinfo.value) == (
      'Could not write a file in /run (Permission denied); make the workdir writable and run '
      'the same command again: no checkpoint had been saved yet, so it starts the run again.')
  # Anything else passes as it is: a missing file, a bug, a mistake already said in one line.
  for error in (FileNotFoundError(errno.ENOENT, 'gone', '/x'), KeyError('bug'),
                write_errors.WriteError('said')):
    with pytest.raises(type(error)):
      with write_errors.reported('/run', _Checkpointer(latest=4)):
        raise error
