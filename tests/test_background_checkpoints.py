"""dcgan_jax.background_checkpoints: saves in a worker thread, errors surfacing in the loop."""
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import background_checkpoints
from dcgan_jax import checkpointing
from dcgan_jax.background_checkpoints import BackgroundCheckpointer


class FakeCheckpointer:
  """Records calls and the thread each one ran in."""

  def __init__(self):
    self.calls = []

  def save(self, step, *args, **kwargs):
    self.calls.append(('save', step))
    return True

  def wait_until_finished(self):
    self.calls.append(('wait',))

  def latest_step(self):
    self.calls.append(('latest',))
    return 7


def test_submit_returns_while_the_save_runs_in_a_worker_thread():
  inner = FakeCheckpointer()
  release, started, seen = threading.Event(), threading.Event(), []

  def save(target):
    seen.append((target, threading.current_thread().name))
    started.set()
    assert release.wait(10)
    target.save(3)

  with BackgroundCheckpointer(inner) as checkpointer:
    checkpointer.submit(save)
    assert started.wait(10)
    assert inner.calls == []  # Still blocked in the worker; submit has returned.
    checkpointer.raise_if_failed()  # Does not wait for a save that is still running.
    release.set()
    assert checkpointer.latest_step() == 7  # Waits for the save first.
  assert seen[0][0] is inner and seen[0][1].startswith('dcgan_jax_checkpoint')
  assert inner.calls == [('save', 3), ('latest',)]


def test_without_background_the_save_runs_at_once_in_the_caller():
  inner, threads = FakeCheckpointer(), []
  with BackgroundCheckpointer(inner, background=False) as checkpointer:
    checkpointer.submit(lambda target: threads.append(threading.current_thread()))
    assert threads == [threading.current_thread()]


@pytest.mark.parametrize('method', ['save', 'wait_until_finished', 'latest_step', 'submit',
                                    'raise_if_failed', 'close'])
def test_a_failed_save_is_raised_by_the_next_call(method):
  inner = FakeCheckpointer()
  checkpointer = BackgroundCheckpointer(inner)

  def failing(target):
    raise checkpointing.CheckpointError('disk full')

  checkpointer.submit(failing)
  checkpointer._future.exception(timeout=10)  # pylint: disable=protected-access  # Let it fail.
  args = {'save': (5, {}, {}), 'submit': (lambda target: target.save(9),)}.get(method, ())
  with pytest.raises(checkpointing.CheckpointError, match='disk full'):
    getattr(checkpointer, method)(*args)
  assert inner.calls == []  # Nothing else ran after the failure.
  checkpointer.close()  # Reported once: the next calls work again.
  assert checkpointer.latest_step() == 7


def test_leaving_on_an_error_keeps_that_error_and_waits_for_the_save(caplog):
  inner, done = FakeCheckpointer(), threading.Event()

  def failing(target):
    done.set()
    raise checkpointing.CheckpointError('disk full')

  with pytest.raises(KeyError, match='the loop failed'):
    with BackgroundCheckpointer(inner) as checkpointer:
      checkpointer.submit(failing)
      raise KeyError('the loop failed')
  assert done.is_set()
  assert 'disk full' in caplog.text


def test_device_copy_survives_the_donation_of_the_original():
  tree = {'w': jnp.arange(6.0).reshape(2, 3), 'step': jnp.asarray(4), 'key': jax.random.key(1)}
  copy = background_checkpoints.device_copy(tree)
  assert copy['w'].unsafe_buffer_pointer() != tree['w'].unsafe_buffer_pointer()
  step = jax.jit(lambda t: jax.tree.map(lambda x: x, t) | {'w': t['w'] * 2}, donate_argnums=0)
  step(tree)
  assert tree['w'].is_deleted()
  np.testing.assert_array_equal(copy['w'], np.arange(6.0).reshape(2, 3))
  assert int(copy['step']) == 4
  np.testing.assert_array_equal(jax.random.key_data(copy['key']),
                                jax.random.key_data(jax.random.key(1)))
