"""Periodic checkpoints saved by a worker thread, so that training does not wait for them.

A save in the loop holds the devices up twice: the loop waits for the queued steps to finish
(the state must be ready), and then for the state to reach the host and for orbax's
synchronous part, while no step is queued. On an H200 that cost 0.14-0.20 s per save, 0.36 ms
per step at one save every 500 steps of 2.2 ms: 16% of the loop
(``experiments/results/loop_fused_h200_v3.json``). Here the loop dispatches a device-side copy
of what it saves (one small program in the device's queue; the next step may then donate the
originals) and hands the rest to one worker thread: wait for the copy, check that the losses
stayed finite, fetch it and give it to the :class:`~dcgan_jax.checkpointing.Checkpointer`, whose
own background thread writes the files.

The worker is used only where that is safe: one process (a multi-process save is a collective
that every process must reach in the same order as the training steps' collectives) and
``shard_map`` (pmap's per-device layout is copied in the loop). Elsewhere, and with
``background_checkpoints=False``, the same calls save in the loop, as before.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp

from dcgan_jax import checkpointing

Save = Callable[[checkpointing.Checkpointer], Any]


@jax.jit
def device_copy(tree: Any) -> Any:
  """Fresh device buffers holding ``tree``'s values (jit keeps each array's sharding).

  An explicit copy: a jitted identity may hand back the argument's own buffers, which the next
  training step donates.
  """
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class BackgroundCheckpointer:
  """A :class:`~dcgan_jax.checkpointing.Checkpointer` whose periodic saves run in a worker.

  At most one save runs at a time. Every other method first waits for it and raises what it
  raised (a :class:`~dcgan_jax.checkpointing.CheckpointError`, or the non-finite-loss error its
  check found), so the loop sees a failed save at its next checkpoint, log check or the end.
  Use as a context manager around the loop, inside the ``Checkpointer``'s own: leaving waits
  for the save in flight, which must not outlive the checkpointer.
  """

  def __init__(self, checkpointer: checkpointing.Checkpointer, background: bool = True):
    self.checkpointer = checkpointer
    self.background = background
    self._executor = (concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='dcgan_jax_checkpoint') if background else None)
    self._future: concurrent.futures.Future | None = None

  def submit(self, save: Save) -> None:
    """Runs ``save(checkpointer)`` in the worker (or here, when not in the background).

    Waits for the previous save first. ``save`` must only use what stays valid while the loop
    goes on: device copies (:func:`device_copy`), not the state the next step donates.
    """
    self.wait()
    if self._executor is None:
      save(self.checkpointer)
    else:
      self._future = self._executor.submit(save, self.checkpointer)

  def wait(self) -> None:
    """Blocks until the save in flight (if any) has returned; raises its error."""
    future, self._future = self._future, None
    if future is not None:
      future.result()

  def idle(self) -> bool:
    """Whether no save is running (one that has finished may still hold its error)."""
    return self._future is None or self._future.done()

  def raise_if_failed(self) -> None:
    """Raises the error of a save that already failed, without waiting for one still running."""
    if self.idle():
      self.wait()

  # The Checkpointer's methods the loop uses, each after the save in flight.
  def save(self, *args, **kwargs) -> bool:
    self.wait()
    return self.checkpointer.save(*args, **kwargs)

  def wait_until_finished(self) -> None:
    self.wait()
    self.checkpointer.wait_until_finished()

  def latest_step(self) -> int | None:
    self.wait()
    return self.checkpointer.latest_step()

  def close(self) -> None:
    """Waits for the save in flight and stops the worker; raises the save's error."""
    try:
      self.wait()
    finally:
      if self._executor is not None:
        self._executor.shutdown(wait=True)

  def __enter__(self) -> BackgroundCheckpointer:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
      return
    try:  # Already failing: the save still finishes, but its error must not hide this one.
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error('The checkpoint save in flight also failed: %s', e)
