"""Where the training loop's scalars go: TensorBoard through clu, or JSON lines without TensorFlow.

With TensorFlow installed (the normal case) :func:`create_writer` returns clu's default writer
(TensorBoard event files plus the log) and :func:`create_progress` clu's ``ReportProgress``.
Without it (e.g. a JAX-only GPU container, with ``dataset='array'``) both fall back to the small
classes here: scalars are appended to ``<workdir>/metrics.jsonl`` (one ``{"step": ..., tag:
value}`` object per line, read back by :func:`dcgan_jax.run_logs.read_scalars`), images are left
to the sample PNGs, and progress (steps/s, ETA, time spent in hooks) goes to the log.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import time
from typing import Any, Iterator, Mapping

from absl import logging

from dcgan_jax import errors
from dcgan_jax import tensorflow_devices
from dcgan_jax import write_errors

METRICS_JSONL = 'metrics.jsonl'
HPARAMS_JSON = 'hparams.json'


@functools.cache
def have_tensorflow() -> bool:
  """Whether TensorFlow is installed and imports (checked once per process).

  An install that is there but broken (a CUDA or numpy version clash) counts as absent, with one
  warning that names its error: the run then logs to metrics.jsonl rather than failing at its
  first TensorBoard write.
  """
  if importlib.util.find_spec('tensorflow') is None:
    return False
  tensorflow_devices.hide_accelerators_from_tensorflow()  # Before TensorFlow starts.
  try:
    importlib.import_module('tensorflow')
  except Exception as e:  # pylint: disable=broad-except  # Whatever a broken install raises.
    logging.warning('TensorFlow is installed but does not import (%s: %s); logging as without '
                    'it.', type(e).__name__, errors.first_line(e, max_chars=200))
    return False
  return True


class JsonlWriter:
  """clu's MetricWriter interface, writing scalars as JSON lines and to the log.

  Args:
    workdir: The run's directory (``metrics.jsonl`` and ``hparams.json`` land there).
    just_logging: Only log (processes other than 0 write no files).
  """

  def __init__(self, workdir: str, just_logging: bool = False):
    self._path = None if just_logging else os.path.join(workdir, METRICS_JSONL)
    self._workdir = workdir
    self._file = None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: float(v) for k, v in scalars.items()}
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in values.items()))
    if self._path is None:
      return
    if self._file is None:
      self._file = self._open_for_append(self._path)
    # NaN/inf stay readable: JSON has no literal for them, so they are written as strings.
    record = {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}
    with write_errors.naming(self._path):  # A failed write names no file.
      self._file.write(json.dumps({'step': int(step), **record}) + '\n')

  @staticmethod
  def _open_for_append(path: str):
    """Opens ``path`` to append lines, ending a line that a killed run left cut short first.

    Otherwise the resumed run's first record would be glued to the cut one and both lost.
    """
    cut_short = False
    if os.path.exists(path) and os.path.getsize(path) > 0:
      with open(path, 'rb') as f:
        f.seek(-1, os.SEEK_END)
        cut_short = f.read(1) != b'\n'
    file = open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
    if cut_short:
      file.write('\n')
    return file

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step, images  # The sample grids are saved as PNGs by the loop itself.

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self._path is not None:
      with open(os.path.join(self._workdir, HPARAMS_JSON), 'w', encoding='utf-8') as f:
        json.dump(dict(hparams), f, indent=2, sort_keys=True)

  def flush(self) -> None:
    if self._file is not None:
      with write_errors.naming(self._path):
        self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      file, self._file = self._file, None
      with write_errors.naming(self._path):
        file.close()


class ProgressLogger:
  """The parts of clu's ``ReportProgress`` the loop uses, without TensorFlow.

  Every ``every_steps`` it logs the step, steps/s, the ETA and the share of time spent in
  :meth:`timed` sections, and writes ``steps_per_sec`` and ``uptime`` scalars.
  """

  def __init__(self, num_train_steps: int, writer: Any = None, every_steps: int | None = None):
    self._num_train_steps = num_train_steps
    self._writer = writer
    self._every_steps = every_steps
    self._start = self._last_time = time.monotonic()
    self._last_step: int | None = None
    self._timed: dict[str, float] = {}

  def __call__(self, step: int, t: float | None = None) -> None:
    """Step ``step`` has finished (at time ``t``, default now)."""
    now = time.monotonic() if t is None else t
    if self._last_step is None:  # The first call (after the first, compiling step) starts the
      self._last_step, self._last_time = step, now  # clock, as clu's does.
      return
    if not self._every_steps or step % self._every_steps:
      return
    steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    eta_min = (self._num_train_steps - step) / steps_per_sec / 60
    spent = ', '.join(f'{name} {100 * t / max(now - self._last_time, 1e-9):.1f}%'
                      for name, t in sorted(self._timed.items()))
    logging.info('Step %d/%d: %.2f steps/s, ETA %.1f min%s', step, self._num_train_steps,
                 steps_per_sec, eta_min, f' (time in {spent})' if spent else '')
    if self._writer is not None:
      self._writer.write_scalars(step, {'steps_per_sec': steps_per_sec,
                                        'uptime': now - self._start})
    self._last_step, self._last_time, self._timed = step, now, {}

  @contextlib.contextmanager
  def timed(self, name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
      yield
    finally:
      self._timed[name] = self._timed.get(name, 0.0) + time.monotonic() - start


class DeferredWriter:
  """Takes a metric writer's ``write_*`` calls and holds them until :meth:`replay`.

  For outputs that must reach the logs together or not at all: the final samples and scores,
  which a stop among them would otherwise leave half logged (and the launch that makes them
  again would log that half twice). The values are host data (numpy arrays, floats).
  """

  def __init__(self):
    self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

  def __getattr__(self, name: str) -> Any:
    if not name.startswith('write_'):
      raise AttributeError(name)
    return lambda *args, **kwargs: self._calls.append((name, args, kwargs))

  def flush(self) -> None:
    """Nothing reaches a file before :meth:`replay`."""

  def replay(self, writer: Any) -> None:
    """Makes the held calls on ``writer``, in their order."""
    calls, self._calls = self._calls, []
    for name, args, kwargs in calls:
      getattr(writer, name)(*args, **kwargs)


def create_writer(workdir: str, just_logging: bool = False) -> Any:
  """clu's default writer (TensorBoard + log) when TensorFlow is installed, else a JsonlWriter."""
  if have_tensorflow():  # (Which has hidden the accelerators from TensorFlow.)
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    # A write the disk refuses is raised again, in one line (write_errors), not logged with
    # TensorFlow's traceback as well.
    write_errors.quiet_async_writer_failures()
    return metric_writers.create_default_writer(workdir, just_logging=just_logging)
  if not just_logging:
    logging.warning('Without TensorFlow, scalars go to %s (read them with '
                    'dcgan_jax.run_logs.read_scalars) instead of TensorBoard.',
                    os.path.join(workdir, METRICS_JSONL))
  return JsonlWriter(workdir, just_logging=just_logging)


def create_progress(num_train_steps: int, writer: Any, every_steps: int | None) -> Any:
  """clu's ``ReportProgress`` when TensorFlow is installed, else a :class:`ProgressLogger`."""
  if have_tensorflow():
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer,
                                           every_steps=every_steps, every_secs=None)
  return ProgressLogger(num_train_steps, writer=writer, every_steps=every_steps)


@contextlib.contextmanager
def progress(num_train_steps: int, writer: Any, every_steps: int | None) -> Iterator[Any]:
  """:func:`create_progress`'s action, whose worker thread (clu's) ends on leaving.

  clu's ``ReportProgress`` times the ``timed`` sections in a thread of its own and has no
  ``close``: the thread lived as long as the action. A notebook keeps an interrupted cell's
  traceback, and with it the training loop's frame, so every stopped run left one idle thread.
  """
  action = create_progress(num_train_steps, writer, every_steps)
  try:
    yield action
  finally:
    executor = getattr(action, '_executor', None)  # clu's; a ProgressLogger has none.
    if executor is not None:
      # Its queue holds at most the end of a timed section: waiting for the device's queue.
      executor.shutdown(wait=True, cancel_futures=True)
