"""Stopping a training run cleanly: on SIGTERM or Ctrl-C, finish the step, save, then stop.

Schedulers stop a job with SIGTERM and kill it a grace period later (Kubernetes: 30 s; SLURM:
``KillWait``; preemptible and spot VMs: about 30 s), and people stop a run with Ctrl-C. Without
a handler every step since the last periodic checkpoint is lost. While :class:`StopSignals` is
active (the training loop), the first such signal only sets a flag; the loop sees it after the
step (or fused chunk) in flight, saves a checkpoint of that step and raises
:class:`TrainingStopped`. The same command then resumes exactly there.

A second signal gets the handler that was there before (Python's ``KeyboardInterrupt`` for
Ctrl-C, termination for SIGTERM), so a run whose save hangs can still be stopped at once.

Multi-process runs must stop at the same step on every process, or their collectives would
hang. There JAX's preemption service decides: ``jax.distributed.initialize`` installs its own
SIGTERM notifier, a notice on any process is shared through the coordination service, and
``multihost_utils.reached_preemption_sync_point`` answers True at one common step everywhere.
Ctrl-C keeps its default there (it reaches each process at a different step).
"""
from __future__ import annotations

import functools
import signal
import sys
import threading
import traceback
from typing import Any, Callable, TypeVar

from absl import logging

from dcgan_jax.errors import exception_chain

_Function = TypeVar('_Function', bound=Callable[..., Any])

# Signals that ask a single-process run to stop; their names for messages.
SIGNAL_NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'SIGINT (Ctrl-C)'}
# Set by :func:`interrupt_start_up`: a Ctrl-C came before the training loop listened.
_start_up_interrupted = threading.Event()


def interrupt_start_up(signum: int, frame: Any) -> None:
  """The SIGINT handler of a command-line program until its training loop listens.

  Raises KeyboardInterrupt, as Python's own handler does, and also remembers the Ctrl-C: one
  that arrives while a garbage-collection callback runs (JAX's, during start-up) is reported
  as "Exception ignored" and dropped by Python, and the run would then train to its end.
  :meth:`StopSignals.install` raises it again, before the first step.
  """
  del signum, frame
  _start_up_interrupted.set()
  raise KeyboardInterrupt


def listen_during_start_up() -> None:
  """For command-line programs, first thing: Ctrl-C raises through :func:`interrupt_start_up`
  (unless SIGINT is ignored, as in a background job), and a KeyboardInterrupt that Python drops
  is not reported as "Exception ignored" with a traceback (it is remembered instead)."""
  if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
    return
  signal.signal(signal.SIGINT, interrupt_start_up)
  previous = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _start_up_interrupted.is_set():
      return
    previous(unraisable)

  sys.unraisablehook = hook


class TrainingStopped(KeyboardInterrupt):
  """The run stopped early on a signal, after saving a checkpoint of ``step``.

  A ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it and notebooks show
  it as an interrupted cell.

  Attributes:
    signal_number: The signal that asked for the stop (``signal.SIGTERM`` or ``signal.SIGINT``).
    step: The step of the checkpoint just saved: where the same command resumes.
    exit_status: What a command-line program exits with: 128 + the signal's number, the
      shell's convention for a process ended by that signal (143 for SIGTERM, 130 for Ctrl-C).
  """

  def __init__(self, signal_number: int, step: int, workdir: str):
    self.signal_number = int(signal_number)
    self.step = int(step)
    self.exit_status = 128 + self.signal_number
    name = SIGNAL_NAMES.get(self.signal_number, f'signal {self.signal_number}')
    super().__init__(f'Stopped by {name} at step {self.step}: its checkpoint is saved in '
                     f'{workdir}; run the same command (or train_and_evaluate call) again to '
                     'resume from it.')


def drops_locals_when_stopped(function: _Function) -> _Function:
  """Decorator: a stop (:class:`TrainingStopped`, or any ``KeyboardInterrupt``) that ends
  ``function`` leaves its traceback without the local variables of the frames it ran through.

  A notebook keeps the traceback of a stopped cell (``sys.last_traceback``, for ``%debug``),
  and with it every frame of the run: its device arrays (the device-resident dataset, both
  states), its input pipeline and its helpers' threads stayed until the next error, beside
  those of the run started again. The traceback still says where the run stopped. Other
  errors keep their frames whole, for post-mortem debugging.
  """

  @functools.wraps(function)
  def wrapper(*args, **kwargs):
    try:
      return function(*args, **kwargs)
    except KeyboardInterrupt as stop:
      for error in exception_chain(stop):
        traceback.clear_frames(error.__traceback__)  # (This frame, still running, stays.)
      raise

  return wrapper  # type: ignore[return-value]


def _process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top  # Not at import: main.py's --help stays fast.
  return jax.process_count()


def _preemption_service_active() -> bool:
  """Whether JAX's multi-process preemption service (started by jax.distributed) is running."""
  if _process_count() <= 1:
    return False
  try:  # No public query exists; the public call raises only once a step is reported.
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  state = getattr(distributed, 'global_state', None)
  return getattr(state, 'preemption_sync_manager', None) is not None


class StopSignals:
  """Context manager: while active, SIGTERM and SIGINT ask the training loop to stop.

  Use::

    with StopSignals() as stop:
      while step < num_steps:
        done = run_steps(step)            # One step, or a fused chunk (step, done].
        if done < num_steps and (signum := stop.requested(step, done)):
          save(done); raise TrainingStopped(signum, done, workdir)
        step = done

  Handlers can only be installed from the main thread; elsewhere (a run started in a thread)
  the signals keep their handlers and :meth:`requested` answers None, except in multi-process
  runs, where JAX's preemption service works from any thread.
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = signals
    self._previous: dict[int, Any] = {}
    self._received: int | None = None
    self._multi_process = False

  def __enter__(self) -> StopSignals:
    self.install()
    return self

  def __exit__(self, *exc_info) -> None:
    self.restore()

  def install(self) -> None:
    """Starts listening (what entering the context does).

    Raises:
      KeyboardInterrupt: a Ctrl-C during start-up was dropped (see :func:`interrupt_start_up`).
    """
    if _start_up_interrupted.is_set():
      raise KeyboardInterrupt
    self._multi_process = _preemption_service_active()
    if self._multi_process:
      # JAX's SIGTERM notifier must keep SIGTERM; Ctrl-C keeps its default (see the module).
      return
    if _process_count() > 1:
      logging.warning('JAX preemption service is off (jax_enable_preemption_service): SIGTERM '
                      'stops this multi-process run without a final checkpoint.')
      return
    if threading.current_thread() is not threading.main_thread():
      return
    for signum in self._signals:
      previous = signal.getsignal(signum)
      if previous == signal.SIG_IGN:  # E.g. SIGINT in a background job: stay deaf to it.
        continue
      self._previous[signum] = previous
      signal.signal(signum, self._handle)

  @property
  def received(self) -> int | None:
    """The signal received while listening (single-process runs), or None."""
    return self._received

  def restore(self) -> None:
    """Puts the previous handlers back (what leaving the context does; idempotent)."""
    for signum, previous in self._previous.items():
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    # Only a flag (the loop logs it): a handler runs between two bytecodes of the main
    # thread, which may be inside the logging module.
    self._received = signum
    # A second signal gets the previous handlers: an immediate interrupt or termination.
    self.restore()

  def requested(self, first_step: int, done: int) -> int | None:
    """The signal number if the run should stop now, having trained steps up to ``done``.

    Args:
      first_step: The step the last dispatch started from.
      done: The steps trained so far; the last dispatch ran steps ``first_step + 1 .. done``.

    Returns:
      ``signal.SIGTERM``/``signal.SIGINT``, or None to go on. In multi-process runs the answer
      is the same on every process (JAX's preemption sync point, checked at every step id the
      dispatch covered: each process reports ids in order, and fused chunks end at the same
      steps everywhere).
    """
    if self._multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      reached = False
      for step_id in range(first_step + 1, done + 1):
        reached = multihost_utils.reached_preemption_sync_point(step_id) or reached
      if reached:
        logging.warning('Preemption notice (SIGTERM on some process): every process stops '
                        'after step %d, with a checkpoint.', done)
      return signal.SIGTERM if reached else None
    if self._received is not None:
      logging.warning('%s received: stopping after step %d, with a checkpoint (send it again '
                      'to stop at once, without one).',
                      SIGNAL_NAMES.get(self._received, f'Signal {self._received}'), done)
    return self._received
