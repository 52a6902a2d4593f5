"""Reads a run's TensorBoard scalars back into numpy, for plots in notebooks and scripts.

The training program writes its scalars (losses, D(x), D(G(z)), gradient norms, learning rates,
throughput, quality) as TensorBoard events in the workdir (or, without TensorFlow, as
``metrics.jsonl``); :func:`read_scalars` returns them as
``{tag: (steps, values)}`` so that a loss curve is one ``plt.plot(*scalars['g_loss'])`` away,
without starting TensorBoard. TensorFlow (a dependency of the training program) parses the files.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
from absl import logging

from dcgan_jax import tensorflow_devices
from dcgan_jax.errors import UserError

EVENTS_GLOB = 'events.out.tfevents*'
METRICS_JSONL = 'metrics.jsonl'  # dcgan_jax.writers.METRICS_JSONL (runs without TensorFlow).
# Where set_aside_logs_after keeps the files it filtered, as they were.
ROLLED_BACK_DIR = 'rolled_back_logs'
# An event file set aside takes this in place of 'tfevents' in its name: TensorBoard reads every
# file whose name holds 'tfevents' anywhere under its logdir, so a set-aside copy kept under the
# original name showed as a second run with the rolled-back steps (and its hparams session).
# Renamed back (set_aside_name's inverse), the copy is an ordinary event file again.
SET_ASIDE_EVENTS_WORD = 'setaside'
_EVENTS_WORD = 'tfevents'
SET_ASIDE_EVENTS_GLOB = EVENTS_GLOB.replace(_EVENTS_WORD, SET_ASIDE_EVENTS_WORD)


def set_aside_name(name: str) -> str:
  """The name an event file is kept under in ``rolled_back_logs/`` (other files keep theirs):
  ``events.out.tfevents.X`` becomes ``events.out.setaside.X``, which TensorBoard skips."""
  return name.replace(_EVENTS_WORD, SET_ASIDE_EVENTS_WORD)


def _creation_order(path: pathlib.Path) -> str:
  """Sort key of event files: their names, set aside or not, hold the time they were made."""
  return path.name.replace(SET_ASIDE_EVENTS_WORD, _EVENTS_WORD)


def _scalar_value(value) -> float | None:
  """The number in a summary value, or None when it holds an image or text."""
  if value.HasField('simple_value'):  # TF1-style summaries.
    return float(value.simple_value)
  if value.HasField('tensor') and not value.tensor.tensor_shape.dim:  # TF2: rank-0 tensors.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    array = tf.make_ndarray(value.tensor)
    if array.dtype.kind in 'fiu':
      return float(array)
  return None


def _events(path: pathlib.Path):
  """The events of one file, up to where it is cut short (a killed or still running run)."""
  tensorflow_devices.hide_accelerators_from_tensorflow()  # Reading starts TF's runtime.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  records = iter(tf.data.TFRecordDataset(str(path)))
  while True:
    try:
      record = next(records)
    except StopIteration:
      return
    except tf.errors.DataLossError:
      logging.warning('%s ends in a record cut short (the run was killed while writing, or '
                      'still writes); its scalars up to there are read.', path)
      return
    yield tf.compat.v1.Event.FromString(record.numpy())


def read_scalars(workdir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """All scalars a run logged, by tag.

  Args:
    workdir: The run's directory (holding ``events.out.tfevents.*`` or ``metrics.jsonl``), or
      one of its ``rolled_back_logs/<time>/`` folders (the set-aside ``events.out.setaside.*``
      files and ``metrics.jsonl`` a resume moved there).

  Returns:
    ``{tag: (steps, values)}`` with int64 steps in increasing order and float64 values. When a
    resumed run logged a step twice, the later value is kept.

  Raises:
    UserError: the workdir does not exist or holds no event files.
  """
  directory = pathlib.Path(workdir)
  if not directory.is_dir():
    raise UserError(f'No run directory at {os.fspath(workdir)!r}; pass the --workdir of a run.')
  # (Only a rolled_back_logs folder holds set-aside files; a workdir keeps them below it.)
  files = sorted([*directory.glob(EVENTS_GLOB), *directory.glob(SET_ASIDE_EVENTS_GLOB)],
                 key=_creation_order)
  jsonl = directory / METRICS_JSONL
  if not files and not jsonl.is_file():
    raise UserError(f'{os.fspath(workdir)!r} holds no TensorBoard event files ({EVENTS_GLOB}) '
                    f'and no {METRICS_JSONL}; pass the workdir of a run that has logged at '
                    'least once.')
  by_tag: dict[str, dict[int, float]] = {}
  for path in files:  # Sorted by creation time, so later writes win.
    for event in _events(path):
      for value in event.summary.value:
        number = _scalar_value(value)
        if number is not None:
          by_tag.setdefault(value.tag, {})[int(event.step)] = number
  if jsonl.is_file():  # Written where TensorFlow is not installed (dcgan_jax.writers).
    for line in jsonl.read_text(encoding='utf-8').splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut short by a killed run.
      step = int(record.pop('step'))
      for tag, number in record.items():
        by_tag.setdefault(tag, {})[step] = float(number)  # float('nan') reads 'nan' back.
  result = {}
  for tag, points in sorted(by_tag.items()):
    steps = np.array(sorted(points), dtype=np.int64)
    result[tag] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
  return result


def new_aside_directory(workdir: str | os.PathLike) -> pathlib.Path:
  """A ``<workdir>/rolled_back_logs/<time>/`` folder no earlier resume used (made only once a
  file is moved there), for all that one resume or fresh start sets aside."""
  directory = pathlib.Path(workdir)
  aside = directory / ROLLED_BACK_DIR / time.strftime('%Y%m%d-%H%M%S')
  suffix = 1
  while aside.exists():  # Two resumes within a second must not mix their files.
    aside = aside.with_name(f'{aside.name.split("_")[0]}_{suffix}')
    suffix += 1
  return aside


def move_aside(workdir: str | os.PathLike, relative: str | os.PathLike,
               aside: pathlib.Path) -> None:
  """Moves ``<workdir>/<relative>`` (a file or folder) to ``<aside>/<relative>``, as it is."""
  target = aside / relative
  target.parent.mkdir(parents=True, exist_ok=True)
  os.replace(pathlib.Path(workdir) / relative, target)  # One file system: nothing is copied.


def set_aside_logs_after(workdir: str | os.PathLike, step: int,
                         aside: pathlib.Path | None = None) -> list[int]:
  """Removes the logged points after ``step`` from a run's logs; returns their steps.

  A run killed between two checkpoints (``kill -9``, a lost machine) has logged steps that its
  resume trains again: TensorBoard would show two points at each of those steps (its steps/s
  and losses from two different runs), and ``metrics.jsonl`` two records. Each event file and
  ``metrics.jsonl`` that holds such points is rewritten without them; the file as it was is
  moved to ``<workdir>/rolled_back_logs/<time>/`` first, so nothing logged is lost: event files
  under :func:`set_aside_name` (``events.out.setaside.*``), which TensorBoard does not load
  (under their own names it showed them as a second run, each rolled-back step twice);
  :func:`read_scalars` of that folder reads them, and renamed back to ``events.out.tfevents.*``
  they are ordinary event files. Event files are read and written only where TensorFlow
  imports (else they are left as they are).

  Args:
    workdir: The run's directory.
    step: The step the run resumes from: points at later steps are set aside. -1 for a run
      that starts again from scratch (killed before its first checkpoint): every point.
    aside: The folder for the files as they were (default: :func:`new_aside_directory`).

  Returns:
    The steps whose points were set aside, ascending (each once, however many scalars it
    logged; a ``metrics.jsonl`` line cut short by a kill has no step and is not counted).
  """
  directory = pathlib.Path(workdir)
  # Event files earlier versions set aside under their own names: TensorBoard shows them too.
  for older in directory.glob(f'{ROLLED_BACK_DIR}/*/{EVENTS_GLOB}'):
    os.replace(older, older.with_name(set_aside_name(older.name)))
  aside = aside or new_aside_directory(directory)
  removed: set[int] = set()
  jsonl = directory / METRICS_JSONL
  if jsonl.is_file():
    lines = jsonl.read_text(encoding='utf-8').splitlines()
    kept = [line for line in lines if _jsonl_step(line) <= step]
    if len(kept) < len(lines):
      removed.update(int(s) for s in map(_jsonl_step, lines) if step < s < float('inf'))
      _replace_keeping_original(jsonl, aside, kept and (lambda path: path.write_text(
          ''.join(line + '\n' for line in kept), encoding='utf-8')))
  files = sorted(directory.glob(EVENTS_GLOB))
  if files:
    try:
      tensorflow_devices.hide_accelerators_from_tensorflow()
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      return sorted(removed)
  for path in files:
    # Two passes over the file, not one list of its events: sample grids make event files of
    # hundreds of MB in long runs.
    later = keeps_values = 0
    for event in _events(path):
      if event.step > step:
        later += 1
        if event.summary.value:
          removed.add(int(event.step))
      else:
        keeps_values = keeps_values or bool(event.summary.value)
    if not later:
      continue

    def write(new_path, path=path):
      with tf.io.TFRecordWriter(str(new_path)) as writer:
        for event in _events(path):
          if event.step <= step:
            writer.write(event.SerializeToString())
    # A file with no record left (a run restarted from step 0) is only moved.
    _replace_keeping_original(path, aside, keeps_values and write)
  return sorted(removed)


def describe_steps(steps: list[int]) -> str:
  """'step 15', 'steps 15 and 20', '4 steps (15 to 30)': logged steps, ascending, as a person
  reads them (one step holds a record per scalar, so records would overstate it)."""
  if len(steps) == 1:
    return f'step {steps[0]}'
  if len(steps) == 2:
    return f'steps {steps[0]} and {steps[1]}'
  return f'{len(steps)} steps ({steps[0]} to {steps[-1]})'


def _jsonl_step(line: str) -> float:
  """A metrics.jsonl record's step; a line a killed run cut short counts as after every step."""
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return float('inf')


def _replace_keeping_original(path: pathlib.Path, aside: pathlib.Path, write) -> None:
  """Writes ``path`` anew through ``write(temporary_path)`` (none if ``write`` is falsy); the
  old file goes to ``aside``."""
  aside.mkdir(parents=True, exist_ok=True)
  # Not matched by EVENTS_GLOB, and no 'tfevents' for TensorBoard to load while it is written.
  temporary = path.with_name('.filtering-' + set_aside_name(path.name))
  if write:
    write(temporary)
  # Both on one file system: neither step copies.
  os.replace(path, aside / set_aside_name(path.name))
  if write:
    os.replace(temporary, path)

