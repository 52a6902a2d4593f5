"""A window of training steps traced with ``jax.profiler``, for seeing where a run's time goes.

With ``config.profile_steps = N > 0`` the training loop traces N steps, starting after
``profile_skip_steps`` steps of the process (so compilation, autotuning and the first, slower
steps stay out of the trace), into ``<workdir>/profile``: XProf (TensorBoard's profile plugin)
reads it there, and ``perfetto_trace.json.gz`` opens in https://ui.perfetto.dev. Each dispatch
is marked with a ``train`` step annotation, so the profiler's step view lines up with training
steps.

The trace starts and stops with the device idle (the state is waited for at both ends), so it
holds exactly the traced steps' device work, and the log reports their wall time with the
profiler on. jax.profiler needs no TensorFlow.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from absl import logging
import jax

from dcgan_jax.errors import UserError

PROFILE_DIR = 'profile'
_ANNOTATION = 'train'


def check_profile_config(config: Any) -> tuple[int, int]:
  """The config's (profile_steps, profile_skip_steps), or a UserError saying what is valid."""
  values = []
  for name, default in (('profile_steps', 0), ('profile_skip_steps', 10)):
    value = config.get(name, default)
    try:
      number = int(value)
    except (TypeError, ValueError):
      number = -1
    if number < 0 or number != value or isinstance(value, bool):
      raise UserError(f'{name} must be an integer >= 0 (got {value!r}); profile_steps=0 turns '
                      'profiling off.')
    values.append(number)
  return values[0], values[1]


class StepProfiler:
  """Starts and stops ``jax.profiler`` around a window of training steps.

  The loop calls :meth:`before_dispatch` and :meth:`after_dispatch` around every dispatch (one
  step, or a chunk of fused steps), lets :meth:`is_boundary` end fused chunks at the window's
  edges, and :meth:`close` at the end (also when training fails), which stops a trace still on.
  """

  def __init__(self, logdir: str, num_steps: int, skip_steps: int, start_step: int,
               num_train_steps: int):
    self.logdir = logdir
    self.num_steps = num_steps
    self.first = start_step + skip_steps  # Steps done when the trace starts.
    self.last = min(self.first + num_steps, num_train_steps)  # ... and when it stops.
    self._started_at = None
    self._start_time = 0.0
    self._done = num_steps == 0

  @classmethod
  def from_config(cls, config: Any, workdir: str, start_step: int,
                  num_train_steps: int) -> StepProfiler:
    num_steps, skip_steps = check_profile_config(config)
    logdir = os.path.join(workdir, PROFILE_DIR)
    if jax.process_count() > 1:  # Each process traces itself; perfetto file names would clash.
      logdir = os.path.join(logdir, f'process_{jax.process_index()}')
    return cls(logdir, num_steps, skip_steps, start_step, num_train_steps)

  @property
  def active(self) -> bool:
    return self._started_at is not None

  def is_boundary(self, done: int) -> bool:
    """Whether a fused chunk must end after ``done`` steps (a window edge)."""
    return not self._done and done in (self.first, self.last)

  def before_dispatch(self, step: int, state: Any) -> None:
    """Starts the trace when ``step`` steps are done and the window begins here."""
    if self._done or self.active or step < self.first or step >= self.last:
      return
    jax.block_until_ready(state)  # Earlier steps' device work stays out of the trace.
    os.makedirs(self.logdir, exist_ok=True)
    jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
    self._started_at = step
    self._start_time = time.monotonic()

  def annotate(self, step: int):
    """A step annotation for the dispatch that starts at ``step`` while tracing, else nothing."""
    if not self.active:
      return contextlib.nullcontext()
    return jax.profiler.StepTraceAnnotation(_ANNOTATION, step_num=step)

  def after_dispatch(self, done: int, state: Any) -> None:
    """Stops the trace once the window's last step is done."""
    if self.active and done >= self.last:
      self._stop(done, state)

  def close(self, done: int) -> None:
    """Stops a trace still on (training failed inside the window); says if none was taken.

    The state is not waited for: after a failure its buffers may be gone (donated).
    """
    if self.active:
      self._stop(done, None)
    elif not self._done:
      self._done = True
      logging.warning('profile_steps=%d: no steps were profiled, because the run ended after '
                      '%d steps, before the window (after profile_skip_steps) began.',
                      self.num_steps, done)

  def _stop(self, done: int, state: Any) -> None:
    if state is not None:
      jax.block_until_ready(state)  # The traced steps' device work ends inside the trace.
    seconds = time.monotonic() - self._start_time
    jax.profiler.stop_trace()
    steps = done - self._started_at
    logging.info('Profiled steps %d to %d (%.2f ms per step with the profiler on) into %s; '
                 'open it with XProf (TensorBoard\'s profile plugin), or its '
                 'perfetto_trace.json.gz in https://ui.perfetto.dev.', self._started_at + 1, done,
                 1e3 * seconds / max(steps, 1), self.logdir)
    self._started_at = None
    self._done = True
