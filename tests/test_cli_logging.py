"""The programs hide their libraries' INFO logs (orbax, tfds' reader, JAX start-up), not ours."""
import io
import logging
import os
import sys
import warnings

from dcgan_jax import cli_logging


def _record(pathname, level=logging.INFO, message='message'):
  return logging.LogRecord('absl', level, pathname, 1, message, None, None)


def test_filter_hides_library_info_but_keeps_warnings_and_our_logs():
  library_filter = cli_logging.LibraryInfoFilter()
  orbax = '/venv/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not library_filter.filter(_record(orbax))
  assert not library_filter.filter(_record(orbax, logging.DEBUG))
  assert not library_filter.filter(_record('/venv/site-packages/jax/_src/xla_bridge.py'))
  assert not library_filter.filter(
      _record('/venv/site-packages/tensorflow_datasets/core/reader.py'))
  # tfds' "Failed to load dataset ... from files" before an unknown name's one-line error.
  assert not library_filter.filter(
      _record('/venv/site-packages/tensorflow_datasets/core/load.py'))
  # Warnings and errors of the same libraries show...
  assert library_filter.filter(_record(orbax, logging.WARNING))
  assert library_filter.filter(_record(orbax, logging.ERROR))
  # ... except orbax's note that a run was opened read-only (as sample and evaluate ask).
  read_only = 'Given directory is read only=/runs/a/checkpoints'
  assert not library_filter.filter(_record(orbax, logging.WARNING, read_only))
  assert library_filter.filter(_record(orbax, logging.ERROR, read_only))
  assert library_filter.filter(_record('/repo/dcgan_jax/x.py', logging.WARNING, read_only))
  # ... and tfds' note of a version folder without dataset_info.json (a failed download's
  # leftover), which came before an offline download's one-line error.
  file_utils = '/venv/site-packages/tensorflow_datasets/core/utils/file_utils.py'
  variant = 'Variant folder /data/mnist/3.0.1 has no dataset_info.json'
  assert not library_filter.filter(_record(file_utils, logging.WARNING, variant))
  assert library_filter.filter(_record(file_utils, logging.WARNING, 'Something else'))
  # An orbax thread's error that a Ctrl-C broke off (its traceback ends in KeyboardInterrupt)
  # is the program's own one-line "Interrupted"; other errors, and ours, show.
  try:
    raise KeyboardInterrupt
  except KeyboardInterrupt:
    broken_off = sys.exc_info()
  record = _record(orbax, logging.ERROR, 'Save Finalize thread (save_finalize) failed.')
  record.exc_info = broken_off
  assert not library_filter.filter(record)
  record.pathname = '/repo/dcgan_jax/train.py'
  assert library_filter.filter(record)
  # Ours, our metrics writer (clu) and tfds' builder (where data comes from, downloads) stay.
  for kept in ('/repo/dcgan_jax/train.py', '/venv/site-packages/clu/metric_writers/x.py',
               '/venv/site-packages/tensorflow_datasets/core/dataset_builder.py'):
    assert library_filter.filter(_record(kept)), kept


def test_clus_config_line_is_hidden_and_its_progress_line_reworded():
  library_filter = cli_logging.LibraryInfoFilter()
  writer = '/venv/site-packages/clu/metric_writers/logging_writer.py'
  hparams = logging.LogRecord('absl', logging.INFO, writer, 80, '[Hyperparameters] %s',
                              ({'batch_size': 64},), None)
  assert not library_filter.filter(hparams)  # config.json holds it, readably.
  images = logging.LogRecord('absl', logging.INFO, writer, 51, '[%d]%s Got images: %s.',
                             (10, '', {'samples': (1, 274, 274, 1)}), None)
  assert not library_filter.filter(images)  # Said after every grid; samples/ holds them.
  scalars = logging.LogRecord('absl', logging.INFO, writer, 48, '[%d] %s', (10, 'd_loss=0.7'),
                              None)
  assert library_filter.filter(scalars) and scalars.getMessage() == '[10] d_loss=0.7'
  notes = logging.LogRecord('absl', logging.INFO, '/venv/site-packages/clu/platform/local.py',
                            41, 'Setting work unit notes: %s',
                            ('18.0 steps/s, 33.3% (10/30), ETA: 0m',), None)
  assert library_filter.filter(notes)
  # clu rounds the ETA down to minutes: under one it printed "ETA: 0m".
  assert notes.getMessage() == 'Progress: 18.0 steps/s, 33.3% (10/30), ETA: <1m'
  done = logging.LogRecord('absl', logging.INFO, '/venv/site-packages/clu/platform/local.py',
                           41, 'Setting work unit notes: %s',
                           ('18.0 steps/s, 100.0% (30/30), ETA: 0m',), None)
  assert library_filter.filter(done)
  assert done.getMessage() == 'Progress: 18.0 steps/s, 100.0% (30/30)'  # Nothing left.
  hooks = logging.LogRecord('absl', logging.INFO, '/venv/site-packages/clu/platform/local.py',
                            41, 'Setting work unit notes: %s',
                            ('18.0 steps/s, 40.0% (12/30), ETA: 2m (3m : 0.3% checkpoint, '
                             '7.5% quality)',), None)
  assert library_filter.filter(hooks)  # The elapsed time and the hooks' shares, labelled.
  assert hooks.getMessage() == ('Progress: 18.0 steps/s, 40.0% (12/30), ETA: 2m (3m elapsed, '
                                'of which 0.3% checkpoint, 7.5% quality)')
  assert library_filter.filter(notes) and notes.getMessage().startswith('Progress: 18.0')
  ours = _record('/repo/dcgan_jax/train.py', message='Setting work unit notes: kept')
  assert library_filter.filter(ours) and ours.getMessage() == 'Setting work unit notes: kept'


def test_quiet_library_logs_installs_one_filter_on_absls_handler_and_logger():
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  targets = (absl_logging.get_absl_handler(), logging.getLogger('absl'))
  assert cli_logging.quiet_library_logs(enabled=False) is None
  before = {id(t): [f for f in t.filters if isinstance(f, cli_logging.LibraryInfoFilter)]
            for t in targets}
  try:
    first = cli_logging.quiet_library_logs()
    assert cli_logging.quiet_library_logs() is first  # Idempotent.
    for target in targets:
      installed = [f for f in target.filters if isinstance(f, cli_logging.LibraryInfoFilter)]
      assert len(installed) == 1
  finally:
    for target in targets:
      for f in target.filters[:]:
        if isinstance(f, cli_logging.LibraryInfoFilter) and f not in before[id(target)]:
          target.removeFilter(f)


def test_show_training_logs_prints_info_without_the_libraries_lines():
  """A notebook's run printed warnings only (absl's verbosity before its flags are parsed)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  targets = (absl_logging.get_absl_handler(), logging.getLogger('absl'))
  verbosity = absl_logging.get_verbosity()
  # set_verbosity also sets the 'absl' logger's level, which was unset before (so pytest's
  # caplog.at_level decided): left at WARNING, later tests in this worker saw no INFO records.
  logger_level = logging.getLogger('absl').level
  before = {id(t): list(t.filters) for t in targets}
  try:
    absl_logging.set_verbosity(absl_logging.WARNING)
    installed = cli_logging.show_training_logs()
    assert absl_logging.get_verbosity() == absl_logging.INFO
    assert cli_logging.show_training_logs() is installed  # Idempotent: one filter.
    orbax = logging.LogRecord('absl', logging.INFO, '/x/orbax/checkpoint/manager.py', 1,
                              'Saving checkpoint', None, None)
    ours = logging.LogRecord('absl', logging.INFO, '/x/dcgan_jax/train.py', 1,
                             'Resumed from the checkpoint of step 4.', None, None)
    assert not installed.filter(orbax) and installed.filter(ours)
  finally:
    absl_logging.set_verbosity(verbosity)
    logging.getLogger('absl').setLevel(logger_level)
    for target in targets:
      for f in target.filters[:]:
        if f not in before[id(target)]:
          target.removeFilter(f)


def test_our_warnings_print_as_one_line_in_the_programs(monkeypatch):
  """E.g. FID's rank-deficiency warning printed the library's file path and source line."""
  printed = []
  monkeypatch.setattr(warnings, 'showwarning', lambda *args, **kwargs: printed.append(args))
  cli_logging.short_own_warnings()
  cli_logging.short_own_warnings()  # Idempotent: one wrapper.
  ours = os.path.join(os.path.dirname(cli_logging.__file__), 'evaluation', 'statistics.py')
  stream = io.StringIO()
  warnings.showwarning(UserWarning('Covariance of 5 samples'), UserWarning, ours, 158, stream)
  assert stream.getvalue() == 'UserWarning: Covariance of 5 samples\n' and not printed
  warnings.showwarning(UserWarning('theirs'), DeprecationWarning, '/venv/jax/x.py', 3, stream)
  assert len(printed) == 1 and printed[0][2] == '/venv/jax/x.py'  # Left to Python's format.
  # errors.warn_user names the caller: in `python -m dcgan_jax.evaluate` that is absl's app.run
  # (it printed "absl/app.py:355: UserWarning: ... sys.exit(main(argv))") or runpy.
  from absl import app  # pylint: disable=g-import-not-at-top
  for entry in (app.__file__, '<frozen runpy>'):
    stream = io.StringIO()
    warnings.showwarning(UserWarning('Covariance of 300 samples'), UserWarning, entry, 355,
                         stream)
    assert stream.getvalue() == 'UserWarning: Covariance of 300 samples\n', entry
  assert len(printed) == 1


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(monkeypatch):
  monkeypatch.delenv('TQDM_DISABLE', raising=False)
  monkeypatch.setattr(sys, 'stderr', io.StringIO())  # A pipe or a log file.
  assert cli_logging.no_progress_bars_off_a_terminal()
  assert os.environ['TQDM_DISABLE'] == '1'

  class Terminal(io.StringIO):

    def isatty(self):
      return True

  monkeypatch.delenv('TQDM_DISABLE')
  monkeypatch.setattr(sys, 'stderr', Terminal())
  assert not cli_logging.no_progress_bars_off_a_terminal()
  assert 'TQDM_DISABLE' not in os.environ
  monkeypatch.setattr(sys, 'stderr', io.StringIO())
  monkeypatch.setenv('TQDM_DISABLE', '0')  # The user's own choice stays.
  cli_logging.no_progress_bars_off_a_terminal()
  assert os.environ['TQDM_DISABLE'] == '0'
