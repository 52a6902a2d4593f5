"""The programs hide their libraries' INFO logs (orbax, tfds' reader, JAX start-up), not ours."""
import logging

from dcgan_jax import cli_logging


def _record(pathname, level=logging.INFO):
  return logging.LogRecord('absl', level, pathname, 1, 'message', None, None)


def test_filter_hides_library_info_but_keeps_warnings_and_our_logs():
  library_filter = cli_logging.LibraryInfoFilter()
  orbax = '/venv/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not library_filter.filter(_record(orbax))
  assert not library_filter.filter(_record(orbax, logging.DEBUG))
  assert not library_filter.filter(_record('/venv/site-packages/jax/_src/xla_bridge.py'))
  assert not library_filter.filter(
      _record('/venv/site-packages/tensorflow_datasets/core/reader.py'))
  # Warnings and errors of the same libraries always show.
  assert library_filter.filter(_record(orbax, logging.WARNING))
  assert library_filter.filter(_record(orbax, logging.ERROR))
  # Ours, our metrics writer (clu) and tfds' builder (where data comes from, downloads) stay.
  for kept in ('/repo/dcgan_jax/train.py', '/venv/site-packages/clu/metric_writers/x.py',
               '/venv/site-packages/tensorflow_datasets/core/dataset_builder.py'):
    assert library_filter.filter(_record(kept)), kept


def test_quiet_library_logs_installs_one_filter_on_absls_handler():
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  assert cli_logging.quiet_library_logs(enabled=False) is None
  before = [f for f in handler.filters if isinstance(f, cli_logging.LibraryInfoFilter)]
  try:
    first = cli_logging.quiet_library_logs()
    assert cli_logging.quiet_library_logs() is first  # Idempotent.
    installed = [f for f in handler.filters if isinstance(f, cli_logging.LibraryInfoFilter)]
    assert installed == [first]
  finally:
    for f in handler.filters[:]:
      if isinstance(f, cli_logging.LibraryInfoFilter) and f not in before:
        handler.removeFilter(f)
