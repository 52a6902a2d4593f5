"""Console logging of the command-line programs: our progress, not our libraries' internals.

Every orbax checkpoint save logs some thirty INFO lines about its threads, temporary directories
and metadata, and tensorflow-datasets' reader and JAX add more at start-up; in a run's console
they bury the lines a user reads (progress, metrics, where outputs went). The programs
(``main``, ``evaluate``, ``fid``, ``sample``) therefore hide INFO (and lower) records that come
from those libraries; their warnings and errors show, except the few that only restate what the
program asked for (:data:`EXPECTED_WARNINGS`), and ``--library_logs`` shows everything. Importing dcgan_jax as a library changes no logging.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

# Path fragments of the packages whose INFO records are hidden (matched against the file that
# made the record, with '/' separators).
# tensorflow-datasets' dataset_builder stays: it says where the data is read from and when a
# download starts (its progress bars do not go through logging).
LIBRARY_PATHS: tuple[str, ...] = (
    '/orbax/',
    '/tensorflow_datasets/core/reader.py',
    '/tensorflow_datasets/core/dataset_info.py',
    '/tensorflow_datasets/core/logging/',
    '/jax/_src/xla_bridge.py',  # "Unable to initialize backend 'tpu'" on every GPU/CPU host.
    '/jax/_src/profiler.py',  # Trace conversion steps (profile_steps); our own line says where.
    '/tensorflow_datasets/core/load.py',  # "Failed to load ... from files" before a build.
    '/tensorflow_datasets/core/writer.py',  # "Done writing <shard pattern>. Number of examples".
)
# Library warnings that state what the program asked for and are hidden too: orbax warns once
# per checkpoint that it was opened read-only, which is how sample and evaluate open a run
# (8 lines for one grid from a run with 8 checkpoints).
# tfds warns of each version folder without dataset_info.json while it looks for a prepared
# copy: an earlier download that failed, or the preparation under way, left it; tfds prepares
# that version again either way, so before a download error it only reads like a second problem.
EXPECTED_WARNINGS: tuple[tuple[str, str], ...] = (
    ('/orbax/', 'Given directory is read only'),
    # A run still training removes an old checkpoint while `sample` lists them; the restore
    # that follows reports anything that matters.
    ('/orbax/', 'Metadata file does not exist'),
    ('/tensorflow_datasets/core/utils/file_utils.py', 'Variant folder '),
)

# Library INFO records that are not hidden with the rest of their package, but are hidden (those
# that contain a text) or reworded (those that start with one): clu's LoggingWriter puts the
# whole config on one ~1,500-character line ("[Hyperparameters] {...}"), which config.json
# holds in readable form; clu's progress line
# ("Setting work unit notes: 18.0 steps/s, 33.3% (10/30), ETA: 0m") is the one that shows the
# share done and the ETA, but names a platform's notes field a local run does not have.
# Its "[N] Got images: {'samples': (1, 274, 274, 1)}" follows every sample grid and says only
# that one was written (the grid's PNG is in samples/).
HIDDEN_INFO: tuple[tuple[str, str], ...] = (
    ('/clu/metric_writers/logging_writer.py', '[Hyperparameters]'),
    ('/clu/metric_writers/logging_writer.py', ' Got images: '),
)
REWORDED_INFO: tuple[tuple[str, str, str], ...] = (
    ('/clu/platform/', 'Setting work unit notes: ', 'Progress: '),
)


class LibraryInfoFilter(logging.Filter):
  """Drops records below WARNING whose source file lies in one of :data:`LIBRARY_PATHS`, the
  records of :data:`HIDDEN_INFO` and the warnings of :data:`EXPECTED_WARNINGS`, and rewords
  those of :data:`REWORDED_INFO`."""

  def __init__(self, paths: tuple[str, ...] = LIBRARY_PATHS):
    super().__init__()
    self.paths = paths

  def filter(self, record: logging.LogRecord) -> bool:
    path = (record.pathname or '').replace(os.sep, '/')
    if record.levelno >= logging.WARNING:
      if record.levelno >= logging.ERROR:
        # A library thread broken off by Ctrl-C (orbax's "Save Finalize thread failed", with
        # a traceback ending in KeyboardInterrupt): the program says in one line that it was
        # interrupted.
        interrupted = record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt)
        return not (interrupted and any(fragment in path for fragment in self.paths))
      message = record.getMessage()
      return not any(fragment in path and message.startswith(start)
                     for fragment, start in EXPECTED_WARNINGS)
    if any(fragment in path for fragment in self.paths):
      return False
    message = record.getMessage()
    if any(fragment in path and text in message for fragment, text in HIDDEN_INFO):
      return False
    for fragment, start, replacement in REWORDED_INFO:
      if fragment in path and message.startswith(start):
        # clu rounds the ETA down to whole minutes: under a minute read "ETA: 0m" (at the end,
        # where nothing is left, it goes).
        eta = '' if '100.0% (' in message else ', ETA: <1m'
        rest = message[len(start):].replace(', ETA: 0m', eta)
        # clu's "(3m : 0.3% checkpoint, 7.5% quality)": the time since the loop started and the
        # shares of it each timed hook took, neither labelled.
        rest = re.sub(r' \((\w+) : (.*)\)$',
                      lambda m: f" ({'<1m' if m[1] == '0m' else m[1]} elapsed, of which {m[2]})",
                      rest)
        record.msg, record.args = replacement + rest, None
    return True


def quiet_library_logs(enabled: bool = True) -> LibraryInfoFilter | None:
  """Installs :class:`LibraryInfoFilter` on absl's handler (where every record is printed) and
  on the ``absl`` logger (whose records reach other handlers when a program runs without
  ``absl.app``, as ``sample`` does), and :func:`short_own_warnings`.

  Args:
    enabled: False leaves logging as it is (``--library_logs``).

  Returns:
    The installed filter, or None.
  """
  if not enabled:
    return None
  short_own_warnings()
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  library_filter = None
  for target in (absl_logging.get_absl_handler(), logging.getLogger('absl')):
    existing = [f for f in target.filters if isinstance(f, LibraryInfoFilter)]
    if existing:  # Idempotent: one filter however often it is called.
      library_filter = existing[0]
      continue
    library_filter = library_filter or LibraryInfoFilter()
    target.addFilter(library_filter)
  return library_filter


def show_training_logs() -> LibraryInfoFilter | None:
  """In a notebook or a script of one's own: the programs' console, progress lines included.

  absl prints warnings only until its flags are parsed (the programs parse them; a notebook
  does not), so a run from Python showed no progress, no "Resumed from ..." and no "Finished";
  INFO alone brings orbax's ~40 lines per checkpoint. This sets absl's verbosity to INFO and
  filters the libraries' INFO lines as the programs do. Idempotent.
  """
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.INFO)
  return quiet_library_logs()


def no_progress_bars_off_a_terminal() -> bool:
  """Turns tqdm's progress bars off (``TQDM_DISABLE=1``, unless set) when stderr is not a
  terminal; returns whether it did.

  tensorflow-datasets draws them while it prepares a dataset, redrawing lines with cursor codes:
  in a log file they are raw "[A" codes glued onto the next record. In a terminal they stay.
  """
  try:
    terminal = sys.stderr.isatty()
  except (AttributeError, ValueError):  # Replaced or closed.
    terminal = False
  if terminal:
    return False
  os.environ.setdefault('TQDM_DISABLE', '1')
  return True


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_program_frame(filename: str) -> bool:
  """Whether a warning attributed to ``filename`` came from no user's code: dcgan_jax's own, or
  (for warnings that name the caller, ``errors.warn_user``) the frames that start a program:
  absl's ``app.run`` and ``python -m``'s runpy."""
  if filename.startswith('<frozen ') or os.path.basename(filename) == 'runpy.py':
    return True
  path = os.path.abspath(filename)
  if path.startswith(_PACKAGE_DIR):
    return True
  absl = sys.modules.get('absl')
  absl_dir = os.path.dirname(os.path.abspath(getattr(absl, '__file__', '') or '')) + os.sep
  return absl is not None and absl_dir != os.sep and path.startswith(absl_dir)


def short_own_warnings() -> None:
  """Our own warnings print as one line, ``UserWarning: <message>``, without the file path and
  source line Python adds (they point into dcgan_jax, or at absl's ``app.run`` for a warning
  that names its caller, which says nothing to a user of the program). Other packages'
  warnings print as Python prints them. Idempotent.
  """
  previous = warnings.showwarning
  if getattr(previous, '_dcgan_jax_short', False):
    return

  def show(message, category, filename, lineno, file=None, line=None):
    if _is_program_frame(filename):
      stream = file if file is not None else sys.stderr
      try:
        stream.write(f'{category.__name__}: {message}\n')
      except OSError:  # As Python's own: a closed stderr is no reason to fail.
        pass
      return
    previous(message, category, filename, lineno, file, line)

  show._dcgan_jax_short = True  # pylint: disable=protected-access
  warnings.showwarning = show
