"""The training loop's scalars: averages between logs, the non-finite check, the progress clock.

The metrics of every step are accumulated on the device (a clu ``Collection`` of averages and a
:class:`NonFiniteTracker`), so that the host reads them only when it logs; :class:`ProgressClock`
times the windows the logged rates cover.
"""
from __future__ import annotations

import contextlib
import time

import flax
import jax
import jax.numpy as jnp

from dcgan_jax import state as state_lib
from dcgan_jax.errors import UserError


class NonFiniteLossError(UserError):
  """A loss became NaN or infinite; the run stopped without saving the bad state."""


def make_metrics_collection(names: list[str]):
  """A clu Collection averaging each named scalar over the steps between two logs."""
  from clu import metrics as clu_metrics  # pylint: disable=g-import-not-at-top
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in sorted(names)})


@flax.struct.dataclass
class NonFiniteTracker:
  """The first step whose d_loss or g_loss was not finite (-1: none), found on the device.

  Checking on the host every step would stall asynchronous dispatch; this is read only when
  logging, saving or sampling.
  """

  step: jax.Array
  which: jax.Array  # 0: d_loss, 1: g_loss.

  @classmethod
  def empty(cls) -> NonFiniteTracker:
    return cls(step=jnp.asarray(-1, jnp.int32), which=jnp.asarray(0, jnp.int32))

  def update(self, metrics: dict[str, jax.Array], step: jax.Array) -> NonFiniteTracker:
    d_bad = ~jnp.isfinite(metrics['d_loss'])
    g_bad = ~jnp.isfinite(metrics['g_loss'])
    first = (self.step < 0) & (d_bad | g_bad)
    return NonFiniteTracker(step=jnp.where(first, step, self.step),
                             which=jnp.where(first, jnp.where(d_bad, 0, 1), self.which))


def make_accumulate(collection_cls, pmap_layout: bool, jit: bool = True):
  """``(collection, tracker, metrics, step) -> (collection, tracker)`` (no host sync).

  Jitted for step-by-step dispatch; ``jit=False`` gives the traceable function that
  :class:`~dcgan_jax.step_loop.FusedSteps` runs inside its loop.
  """

  def accumulate(collection, tracker, metrics, step):
    if pmap_layout:
      metrics = jax.tree.map(lambda x: x[0], metrics)
    update = collection_cls.single_from_model_output(**metrics)
    return collection.merge(update), tracker.update(metrics, step)

  return jax.jit(accumulate, donate_argnums=(0, 1)) if jit else accumulate


def on_host_cpu():
  """A context in which jnp computations run on the host's CPU device (where JAX has one)."""
  try:
    return jax.default_device(jax.local_devices(backend='cpu')[0])
  except RuntimeError:  # JAX_PLATFORMS leaves the CPU out.
    return contextlib.nullcontext()


def check_finite(tracker: NonFiniteTracker, checkpointer) -> None:
  """Raises NonFiniteLossError (naming the step and the kept checkpoint) if a loss blew up.

  ``checkpointer``: a :class:`~dcgan_jax.checkpointing.Checkpointer` or a
  :class:`~dcgan_jax.background_checkpoints.BackgroundCheckpointer`.
  """
  bad_step = int(jax.device_get(tracker.step))
  if bad_step < 0:
    return
  which = ('d_loss', 'g_loss')[int(jax.device_get(tracker.which))]
  checkpointer.wait_until_finished()
  kept = checkpointer.latest_step()
  kept_text = (f'the last good checkpoint (step {kept}) is kept' if kept is not None
               else 'no checkpoint was saved')
  raise NonFiniteLossError(
      f'non-finite {which} at step {bad_step}; {kept_text} (lower the learning rates, or try '
      'another loss or seed).')


class ProgressClock:
  """Drives the progress reporter (clu's ``ReportProgress`` or ``writers.ProgressLogger``) from
  the loop's own clock, so that its steps/s is the logged ``steps_per_sec``.

  Dispatch is asynchronous and the first dispatch compiles: a clock started when that dispatch
  returns counts steps that were only queued (2519 steps/s logged at step 5 of a run doing 25).
  So the clock starts once the first dispatch has finished (at its last step: a fused chunk's
  steps all end then). After that the reporter hears of steps only when a log's metrics have
  been fetched, which waited for them, and with that moment's time: its windows are the logged
  ones, and nothing waits for the device on its account. (Reporting after every dispatch needed
  a wait for the device at the end of every window, one drain per log, and still printed
  another rate than the one logged beside it.)

  Attributes:
    start: ``(time.monotonic(), step)`` when the clock started, or None before: where the
      loop's own first img/s window begins (not at the compiling first dispatch).
  """

  def __init__(self, report_progress):
    self._report = report_progress
    self._reported = -1  # The last step the reporter has heard of.
    self.start: tuple[float, int] | None = None

  def dispatched(self, done: int, state: state_lib.GANState) -> None:
    """After a dispatch that runs up to step ``done``: the first one starts the clock."""
    if self.start is not None:
      return
    jax.block_until_ready(state.step)
    now = time.monotonic()
    self._report(done, t=now)  # The reporter's clock starts here (its first call never reports).
    self.start, self._reported = (now, done), done

  def logged(self, step: int, now: float) -> None:
    """Reports the steps up to ``step``, whose metrics were fetched at ``now``."""
    if self.start is None or step <= self._reported:
      return
    for each in range(self._reported + 1, step + 1):  # clu's action wants every step once.
      self._report(each, t=now)
    self._reported = step
