"""Tests of dcgan_jax.checkpointing: exact resume, fallback, crashes, workdir lock, disk errors."""
import asyncio
import logging
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import types
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from dcgan_jax import checkpointing
from dcgan_jax.checkpointing import (CheckpointError, Checkpointer, acquire_workdir_lock,
                                     check_workdir_writable, restore_config, save_config_json)
from dcgan_jax.errors import UserError

# Orbax's failed reads leave asyncio tasks that complain after their loop closed: harmless noise.
_ORBAX_READ_NOISE = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0
CONFIG = {'dataset': 'digits', 'image_size': 32, 'betas': (0.5, 0.999), 'seed': 0}


# ---- a small GAN-shaped state --------------------------------------------------------------


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(1)(nn.relu(x))


class _TrainState(train_state.TrainState):
  batch_stats: Any = None


class _GanState(struct.PyTreeNode):
  step: jax.Array
  generator: _TrainState
  discriminator: _TrainState
  ema_params: Any
  rng: jax.Array


_MODEL = _Net()
_TX = optax.adam(1e-2, b1=0.5)  # Shared, so every state has the same static fields (one jit).


_init = jax.jit(_MODEL.init)  # Eager init runs dozens of tiny ops, each compiled: slow.


@jax.jit
def _update(state: _TrainState, x: jax.Array) -> _TrainState:
  def loss_fn(params):
    out, new = _MODEL.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                            mutable=['batch_stats'])
    return jnp.mean(out ** 2), new['batch_stats']
  grads, stats = jax.grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=stats)


def _trained(seed: int, updates: int) -> _TrainState:
  """A TrainState after `updates` Adam steps, so opt_state and batch_stats are not at init."""
  x = jax.random.normal(jax.random.key(seed + 100), (4, 3))
  variables = _init(jax.random.key(seed), x)
  state = _TrainState.create(apply_fn=_MODEL.apply, params=variables['params'], tx=_TX,
                             batch_stats=variables['batch_stats'])
  for _ in range(updates):
    state = _update(state, x)
  return state


def _gan_state(seed: int = 0, updates: int = 3, ema: bool = True) -> _GanState:
  generator = _trained(seed, updates)
  return _GanState(
      step=jnp.asarray(updates, jnp.int32),
      generator=generator,
      discriminator=_trained(seed + 1, updates),
      ema_params=jax.tree.map(lambda p: 0.5 * p, generator.params) if ema else None,
      rng=jax.random.split(jax.random.key(seed + 7))[0],
  )


def _leaves(tree):
  """(path, numpy value, is_key) per leaf; typed keys compared through their key data."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    is_key = checkpointing._is_prng_key(leaf)
    value = np.asarray(jax.random.key_data(leaf) if is_key else leaf)
    out.append((jax.tree_util.keystr(path), value, is_key))
  return out


def _assert_bit_identical(actual, expected):
  # Paths, not treedefs: static fields (each TrainState's own `tx` closures) differ by identity.
  assert [p for p, *_ in _leaves(actual)] == [p for p, *_ in _leaves(expected)]
  for (path, a, a_key), (_, e, e_key) in zip(_leaves(actual), _leaves(expected)):
    assert a_key == e_key, path
    assert (a.dtype, a.shape) == (e.dtype, e.shape), path
    assert a.tobytes() == e.tobytes(), path


def _assert_differs(actual, expected):
  assert any(a.tobytes() != e.tobytes()
             for (_, a, _), (_, e, _) in zip(_leaves(actual), _leaves(expected)))


# ---- round trip, retention ------------------------------------------------------------------


def test_round_trip_is_bit_identical(tmp_path):
  saved = _gan_state(seed=0, updates=3)
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.save(3, saved, CONFIG)
  target = _gan_state(seed=1, updates=1)  # Same structure, other values.
  _assert_differs(target, saved)
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.latest_step() == 3
    restored, config, step = checkpointer.restore(target)
  assert step == 3
  assert config == {'dataset': 'digits', 'image_size': 32, 'betas': [0.5, 0.999], 'seed': 0}
  _assert_bit_identical(restored, saved)
  assert restored.rng.dtype == saved.rng.dtype  # Still a typed key, not raw uint32.
  # Static fields come from the target: the restored state is usable as it is.
  assert restored.generator.apply_fn is not None
  restored.generator.apply_gradients(grads=restored.generator.params)


def test_arrays_are_saved_as_they_were_when_save_returned(tmp_path):
  """orbax's own defensive copy is off (it blocked the training loop); ours copies exactly the
  arrays a caller could still change, so changing them during the asynchronous write is safe."""
  from_jax = np.asarray(jnp.arange(4.0))  # Read-only, like the training loop's host state.
  writeable = np.arange(6, dtype=np.float32)
  base = np.arange(3, dtype=np.int32)
  view = base[:]
  view.flags.writeable = False  # Read-only, but `base` can still change it.
  assert checkpointing._owned_copy(from_jax) is from_jax  # Not copied.
  for array in (writeable, view):
    copied = checkpointing._owned_copy(array)
    assert copied is not array and not copied.flags.writeable
    np.testing.assert_array_equal(copied, array)
  handler = checkpointing.StateCheckpointHandler()
  numpy_handler = handler._impl._type_handler_registry.get(np.ndarray)  # pylint: disable=protected-access
  assert numpy_handler._deepcopy_host_arrays is False  # pylint: disable=protected-access

  expected = {'from_jax': from_jax.copy(), 'writeable': writeable.copy(), 'view': view.copy()}
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, {'from_jax': from_jax, 'writeable': writeable, 'view': view}, CONFIG)
    writeable[:] = -1  # While the write may still run.
    base[:] = -1
    checkpointer.wait_until_finished()
    restored, _, _ = checkpointer.restore(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_checkpoints_are_interchangeable_with_plain_orbax(tmp_path):
  """Same files as orbax's StandardCheckpointHandler: checkpoints of earlier versions of this
  library (and of plain orbax) restore, and plain orbax restores ours."""
  saved = {'params': np.arange(5, dtype=np.float32), 'step': np.asarray(4, np.int32)}
  plain_dir = tmp_path / 'plain' / checkpointing.CHECKPOINT_DIR
  with ocp.CheckpointManager(plain_dir) as manager:
    manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(saved),
                                            config=ocp.args.JsonSave(CONFIG)))
  with Checkpointer(tmp_path / 'plain') as checkpointer:
    restored, config, step = checkpointer.restore(saved)
  assert step == 4 and config['dataset'] == 'digits'
  _assert_bit_identical(restored, saved)

  with Checkpointer(tmp_path / 'ours') as checkpointer:
    checkpointer.save(6, saved, CONFIG)
  with ocp.CheckpointManager(tmp_path / 'ours' / checkpointing.CHECKPOINT_DIR) as manager:
    restored = manager.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore(saved)))
  _assert_bit_identical(restored['state'], saved)


def test_python_scalars_in_the_target_stay_python_scalars(tmp_path):
  saved = {'epoch': 7, 'scale': 0.25, 'train_state': _trained(0, updates=2)}
  assert isinstance(saved['train_state'].step, jax.Array)  # An array after a jitted update.
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(2, saved, CONFIG)
    # A fresh TrainState has `step=0`, a Python int: it comes back as one, with the saved value.
    target = {'epoch': 0, 'scale': 1.0, 'train_state': _trained(1, updates=0)}
    restored, _, _ = checkpointer.restore(target)
  assert restored['epoch'] == 7 and type(restored['epoch']) is int
  assert restored['scale'] == 0.25 and type(restored['scale']) is float
  assert restored['train_state'].step == 2 and type(restored['train_state'].step) is int
  _assert_bit_identical(restored['train_state'].opt_state, saved['train_state'].opt_state)


def test_restore_into_abstract_target_without_ema(tmp_path):
  saved = _gan_state(seed=2, updates=2, ema=False)
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(5, saved, CONFIG)
    abstract = jax.eval_shape(lambda: _gan_state(seed=0, updates=2, ema=False))
    restored, _, step = checkpointer.restore(abstract)
  assert step == 5 and restored.ema_params is None
  _assert_bit_identical(restored, saved)


def test_keeps_last_k_and_interval(tmp_path):
  state = _gan_state(updates=1)
  with Checkpointer(tmp_path, save_interval_steps=2, max_to_keep=2) as checkpointer:
    started = [checkpointer.save(step, state, CONFIG) for step in range(1, 8)]
    assert started == [False, True, False, True, False, True, False]
    checkpointer.wait_until_finished()
    assert checkpointer.all_steps() == [4, 6]
    assert checkpointer.latest_step() == 6
    assert checkpointer.save(7, state, CONFIG, force=True)  # The final step, off-interval.
    assert not checkpointer.save(7, state, CONFIG, force=True)  # Already saved: a no-op.
  step_dirs = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert step_dirs == ['6', '7']
  with Checkpointer(tmp_path, max_to_keep=2) as reopened:
    assert reopened.all_steps() == [6, 7] and reopened.latest_step() == 7


def test_replace_saves_a_step_not_newer_than_the_latest(tmp_path):
  """The best-FID directory (max_to_keep=1) holds the best state, not the newest: a best of
  an earlier launch at this or a later step was kept and the new best's save skipped."""
  states = {step: _gan_state(seed=step, updates=1) for step in (2, 4)}
  with Checkpointer(tmp_path, max_to_keep=1) as checkpointer:
    assert checkpointer.save(4, states[4], CONFIG, force=True)
    assert not checkpointer.save(4, states[2], CONFIG, force=True)  # Resume points: kept.
    assert checkpointer.save(4, states[2], CONFIG, force=True, replace=True)
    checkpointer.wait_until_finished()
    _assert_bit_identical(checkpointer.restore(states[4])[0], states[2])
    assert checkpointer.save(2, states[2], CONFIG, force=True, replace=True)  # Older: too.
    checkpointer.wait_until_finished()
    assert checkpointer.all_steps() == [2]
    _assert_bit_identical(checkpointer.restore(states[4])[0], states[2])


# ---- damaged checkpoints, crashes -----------------------------------------------------------


def _save_steps(workdir, steps, *, max_to_keep=5):
  states = {step: _gan_state(seed=step, updates=step) for step in steps}
  with Checkpointer(workdir, max_to_keep=max_to_keep) as checkpointer:
    for step in steps:
      checkpointer.save(step, states[step], dict(CONFIG, seed=step))
  return states


def _truncate_largest_file(step_dir):
  largest = max((p for p in step_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def _delete_array_data(step_dir):
  for path in (step_dir / 'state' / 'd').iterdir():
    path.unlink()


def _empty_step_dir(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


@_ORBAX_READ_NOISE
@pytest.mark.parametrize('damage', [_truncate_largest_file, _delete_array_data, _empty_step_dir])
def test_damaged_latest_falls_back_to_previous(tmp_path, caplog, damage):
  states = _save_steps(tmp_path, [1, 2, 3])
  damage(tmp_path / 'checkpoints' / '3')
  with caplog.at_level(logging.WARNING), Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.latest_step() == 3
    restored, config, step = checkpointer.restore(_gan_state(seed=9, updates=1))
    assert step == 2 and config['seed'] == 2
    _assert_bit_identical(restored, states[2])
    assert any('step 3' in record.getMessage() and record.levelno == logging.WARNING
               for record in caplog.records)
    # The damaged step is moved aside, so the resumed run can write step 3 again.
    moved = list((tmp_path / 'corrupt_checkpoints').iterdir())
    assert [p.name.split('_')[1] for p in moved] == ['3']
    assert checkpointer.all_steps() == [1, 2]
    assert checkpointer.save(3, states[3], CONFIG, force=True)
    checkpointer.wait_until_finished()
    assert checkpointer.restore(_gan_state(seed=9, updates=1))[2] == 3


def test_after_a_failed_restore_only_orbaxs_abandoned_reads_stop_reporting(monkeypatch):
  """Those reads print "Exception ignored in: <coroutine ...>" tracebacks, often after the
  run's last line; every other unraisable exception is still reported."""
  import types  # pylint: disable=g-import-not-at-top
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  checkpointing._drop_orbax_read_leftovers()  # pylint: disable=protected-access
  checkpointing._drop_orbax_read_leftovers()  # Once is enough: not wrapped twice.
  hook = sys.unraisablehook
  # Two wrappers, each once (a wrapper's first cell is the hook it wraps): one for the reads'
  # coroutines, one for TensorStore's callbacks into orbax's closed event loop.
  inner = hook.__closure__[0].cell_contents
  assert hook is not reported.append and inner.__closure__[0].cell_contents == reported.append

  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as error:
    closed = error
  # As TensorStore reports it: a traceback of asyncio's frames alone (not this test's).
  hook(types.SimpleNamespace(exc_value=closed, exc_traceback=closed.__traceback__.tb_next,
                             object=None))
  assert not reported

  def coroutine_from(filename):
    code = compile('async def read(): pass', filename, 'exec').co_consts[0]
    return types.SimpleNamespace(object=types.SimpleNamespace(cr_code=code), exc_value=None,
                                 exc_traceback=None)

  orbax_file = os.path.join(os.path.dirname(ocp.__file__), '_src', 'serialization', 'x.py')
  hook(coroutine_from(orbax_file))
  assert not reported
  for other in (coroutine_from(__file__),
                types.SimpleNamespace(object=None, exc_value=None, exc_traceback=None)):
    hook(other)
    assert reported[-1] is other



def test_after_a_failed_restore_asyncio_says_nothing_of_orbaxs_abandoned_reads(monkeypatch,
                                                                               caplog):
  """Their tasks and TensorStore futures are reported as "Task (Future) exception was never
  retrieved" with a traceback, by asyncio's logger, when collected; its other errors show."""
  logger = logging.getLogger('asyncio')
  monkeypatch.setattr(logger, 'filters', [])
  monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)

  def report(message, error):
    try:
      raise error
    except ValueError:
      logger.error(message + '\nfuture: <Future finished>', exc_info=True)

  read_error = ValueError('NOT_FOUND: Error opening "zarr" driver [tensorstore_spec=...]')
  report('Future exception was never retrieved', read_error)
  assert len(caplog.records) == 1  # Before any failed restore: reported.
  checkpointing._drop_orbax_read_leftovers()  # pylint: disable=protected-access
  checkpointing._drop_orbax_read_leftovers()
  assert len(logger.filters) == 1
  report('Future exception was never retrieved', read_error)
  report('Task exception was never retrieved', read_error)
  assert len(caplog.records) == 1
  report('Task exception was never retrieved', ValueError('a task of the user'))
  report('Exception in callback', read_error)
  assert [r.getMessage().splitlines()[0] for r in caplog.records[1:]] == [
      'Task exception was never retrieved', 'Exception in callback']

@_ORBAX_READ_NOISE
def test_no_restorable_checkpoint_is_a_user_error(tmp_path):
  _save_steps(tmp_path, [1, 2])
  for step in (1, 2):
    _delete_array_data(tmp_path / 'checkpoints' / str(step))
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(UserError, match=r'No checkpoint in .* can be restored'):
      checkpointer.restore(_gan_state())
  # Nothing is moved when no step works: the cause might be the target, not the files.
  assert not (tmp_path / 'corrupt_checkpoints').exists()


@_ORBAX_READ_NOISE
def test_mismatched_target_is_a_user_error_and_moves_nothing(tmp_path):
  _save_steps(tmp_path, [1, 2])
  other = _gan_state()
  other = other.replace(ema_params={'extra': jnp.zeros((3,))})
  with Checkpointer(tmp_path) as checkpointer:
    # The message names where the trees differ (orbax puts that on its second line) and gives
    # advice a custom loop can follow as well as the command line.
    with pytest.raises(UserError, match=r'can be restored .*do not match: ema_params\b.*'
                                        r'restore into a state built as the saved one was'):
      checkpointer.restore(other)
    assert checkpointer.all_steps() == [1, 2]
    # A target placed for pmap (each array stacked per device) gets the fix, not the generic
    # advice ("is not compatible with the stored shape" said nothing of pmap).
    stacked = jax.tree.map(
        lambda x: jnp.stack([x, x]) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        _gan_state())
    with pytest.raises(UserError, match=r"the target has a leading axis of 2 \(pmap's, from "
                                        r'DataParallelStep.place_state\) that the saved arrays '
                                        r'lack: restore into the state before placing it'):
      checkpointer.restore(stacked)
    assert checkpointer.all_steps() == [1, 2]


@_ORBAX_READ_NOISE
def test_the_oldest_checkpoint_failing_does_not_promise_a_fallback(tmp_path, caplog):
  _save_steps(tmp_path, [1, 2])
  other = _gan_state().replace(ema_params={'extra': jnp.zeros((3,))})
  with Checkpointer(tmp_path, read_only=True) as checkpointer, caplog.at_level(logging.WARNING):
    with pytest.raises(UserError):
      checkpointer.restore(other)
  warnings = [r.getMessage() for r in caplog.records if 'cannot be restored' in r.getMessage()]
  assert len(warnings) == 2
  assert 'falling back to the previous one' in warnings[0]  # Step 2: step 1 is next.
  assert 'falling back' not in warnings[1]  # Step 1: nothing older.


def test_explicit_step(tmp_path):
  states = _save_steps(tmp_path, [1, 2])
  with Checkpointer(tmp_path, read_only=True) as checkpointer:
    restored, _, step = checkpointer.restore(_gan_state(), step=1)
    assert step == 1
    _assert_bit_identical(restored, states[1])
    with pytest.raises(UserError, match=r'no checkpoint of step 7 .* saved steps are \[1, 2\]'):
      checkpointer.restore(_gan_state(), step=7)


def test_read_only_opening_keeps_orbaxs_read_only_notice_out_of_the_log(tmp_path, caplog,
                                                                         monkeypatch):
  """We ask for read-only on purpose; orbax warned "Given directory is read only" each time."""
  # As a library: without the filters a command-line program (run earlier in this worker) puts
  # on the absl logger.
  monkeypatch.setattr(logging.getLogger('absl'), 'filters', [])
  _save_steps(tmp_path, [1])
  caplog.set_level(logging.INFO)
  with Checkpointer(tmp_path, read_only=True) as checkpointer:
    checkpointer.restore(_gan_state())
  assert restore_config(tmp_path)['seed'] == 1
  assert not [r for r in caplog.records if 'read only' in r.getMessage()]
  # Only while opening: orbax's other messages, and this one later, still reach the log.
  ocp.CheckpointManager(tmp_path / 'checkpoints',
                        options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  assert [r for r in caplog.records if 'Given directory is read only' in r.getMessage()]

def test_empty_directory_restore_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    Checkpointer(tmp_path / 'missing', read_only=True)
  assert not (tmp_path / 'missing').exists()
  (tmp_path / 'a_file').write_text('')  # Said "does not exist".
  with pytest.raises(UserError, match='a_file is a file, not a folder; pass the --workdir'):
    Checkpointer(tmp_path / 'a_file', read_only=True)
  with pytest.raises(UserError, match='a_file is a file, not a folder'):
    restore_config(tmp_path / 'a_file')
  for read_only in (True, False):
    with Checkpointer(tmp_path, read_only=read_only) as checkpointer:
      assert checkpointer.latest_step() is None
      with pytest.raises(UserError, match='There is no checkpoint'):
        checkpointer.restore(_gan_state())


def test_leftover_tmp_dir_of_a_killed_save_is_ignored_and_cleaned(tmp_path):
  states = _save_steps(tmp_path, [1, 2])
  checkpoint_dir = tmp_path / 'checkpoints'
  # What a kill -9 in the middle of writing step 3 leaves: orbax's uncommitted temporary dir.
  leftover = checkpoint_dir / '3.orbax-checkpoint-tmp'
  shutil.copytree(checkpoint_dir / '2', leftover)
  _truncate_largest_file(leftover)
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.latest_step() == 2
    restored, _, step = checkpointer.restore(_gan_state(seed=9, updates=1))
    assert step == 2
    _assert_bit_identical(restored, states[2])
    state_3 = _gan_state(seed=3, updates=3)
    assert checkpointer.save(3, state_3, CONFIG)  # The resumed run reaches step 3 again.
  assert not leftover.exists()
  with Checkpointer(tmp_path) as checkpointer:
    _assert_bit_identical(checkpointer.restore(_gan_state())[0], state_3)


_KILLED_WHILE_SAVING = """
import os, signal, sys
import jax, jax.numpy as jnp
from dcgan_jax.checkpointing import Checkpointer
checkpointer = Checkpointer(sys.argv[1])
weights = jax.random.normal(jax.random.key(0), (4_000_000,))
checkpointer.save(1, {'w': weights}, {'step': 1})
checkpointer.wait_until_finished()
checkpointer.save(2, {'w': weights + 1}, {'step': 2})  # Asynchronous: files still being written.
os.kill(os.getpid(), signal.SIGKILL)
"""


def _subprocess_env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  return env


def test_kill_9_during_async_save_leaves_a_usable_workdir(tmp_path):
  result = subprocess.run([sys.executable, '-c', _KILLED_WHILE_SAVING, str(tmp_path)],
                          env=_subprocess_env(), capture_output=True, timeout=120)
  assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
  # orbax renames a step's temporary directory to its number when the step is complete. At
  # the kill, step 2 is usually still a temporary directory, or not started at all (its
  # writer thread had not run yet); if it made it, it is whole.
  finished = '2' in os.listdir(tmp_path / 'checkpoints')
  weights = jax.random.normal(jax.random.key(0), (4_000_000,))
  target = {'w': jnp.zeros_like(weights)}
  with Checkpointer(tmp_path) as checkpointer:
    restored, config, step = checkpointer.restore(target)
    assert step == (2 if finished else 1) and config == {'step': step}
    expected = weights + (step - 1)
    assert np.asarray(restored['w']).tobytes() == np.asarray(expected).tobytes()
    assert checkpointer.save(3, restored, {'step': 3})
  names = os.listdir(tmp_path / 'checkpoints')
  assert not [name for name in names if 'tmp' in name], names
  assert '3' in names


# ---- sharding -------------------------------------------------------------------------------


def test_restore_into_replicated_and_sharded_targets(tmp_path):
  assert jax.device_count() == 8, 'tests/conftest.py should give 8 CPU devices'
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  split = NamedSharding(mesh, P('data'))
  saved = {'gan': _gan_state(updates=2), 'per_device': jnp.arange(32.).reshape(8, 4)}
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(2, saved, CONFIG)
  target = {'gan': jax.device_put(_gan_state(seed=5, updates=2), replicated),
            'per_device': jax.device_put(jnp.zeros((8, 4)), split)}
  with Checkpointer(tmp_path) as checkpointer:
    restored, _, _ = checkpointer.restore(target)
  _assert_bit_identical(restored, saved)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    if isinstance(want, jax.Array):
      assert got.sharding == want.sharding
  assert restored['per_device'].sharding.spec == P('data')
  assert restored['gan'].rng.sharding == replicated
  # An abstract target (no memory for a throwaway state) carries the shardings just the same.
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if isinstance(x, jax.Array) else x, target)
  with Checkpointer(tmp_path, read_only=True) as checkpointer:
    from_abstract, _, _ = checkpointer.restore(abstract)
  _assert_bit_identical(from_abstract, saved)
  for got, want in zip(jax.tree.leaves(from_abstract), jax.tree.leaves(target)):
    if isinstance(want, jax.Array):
      assert got.sharding == want.sharding


# ---- the workdir lock -----------------------------------------------------------------------


_HOLD_LOCK = """
import sys, time
from dcgan_jax.checkpointing import acquire_workdir_lock
lock = acquire_workdir_lock(sys.argv[1], process_index=0)
print('locked', flush=True)
time.sleep(300)
"""


def test_lock_refuses_a_second_run_and_is_freed_by_kill_9(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, str(tmp_path)],
                            env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == b'locked', holder.stderr.read().decode()[-2000:]
    with pytest.raises(UserError) as excinfo:
      acquire_workdir_lock(tmp_path, process_index=0)
    message = str(excinfo.value)
    assert f'is in use by another run (pid {holder.pid})' in message
    assert 'use another --workdir' in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  with acquire_workdir_lock(tmp_path, process_index=0) as lock:
    assert lock.held
    assert (tmp_path / '.lock').read_text().strip() == str(os.getpid())
  assert not lock.held
  # Released on exit from the block: a later run on the same workdir gets it.
  acquire_workdir_lock(tmp_path, process_index=0).release()


def test_lock_files_are_per_process_index(tmp_path):
  with acquire_workdir_lock(tmp_path, process_index=0), \
       acquire_workdir_lock(tmp_path, process_index=1) as second:
    assert second.path.name == '.lock.process1'
    with pytest.raises(UserError, match='in use by another run'):
      acquire_workdir_lock(tmp_path, process_index=1)


# ---- unwritable workdirs and failed saves ---------------------------------------------------


def test_workdir_under_a_regular_file_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  workdir = blocker / 'run'
  for start in (check_workdir_writable, acquire_workdir_lock, Checkpointer,
                lambda w: save_config_json(w, CONFIG)):
    with pytest.raises(CheckpointError, match=r'not writable \(Not a directory\)'):
      start(workdir)
  assert issubclass(CheckpointError, UserError)


def test_an_unwritable_workdir_is_named_once(tmp_path, monkeypatch):
  """It said "The workdir X is not writable (X is not writable)"."""
  from dcgan_jax import run_checks  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  workdir.mkdir()
  monkeypatch.setattr(run_checks.os, 'access', lambda path, mode: False)  # As on a read-only mount.
  with pytest.raises(CheckpointError) as excinfo:
    run_checks.check_workdir_path(workdir)
  assert str(excinfo.value) == (f'The workdir {workdir} is not writable; pass a --workdir in a '
                                'directory you can write to.')
  with pytest.raises(CheckpointError) as excinfo:
    run_checks.check_workdir_path(workdir / 'new')
  assert str(excinfo.value).startswith(
      f'The workdir {workdir / "new"} is not writable ({workdir} is not writable); ')


def test_short_reasons_leave_out_orbax_s_method_repr():
  error = Exception('Encountered error while reading array index: (slice(0, 100, 1),). See full '
                    'TensorStore details: <bound method pybind11_detail_function_record_v1>')
  assert checkpointing._short_reason(error) == (  # pylint: disable=protected-access
      'Exception: Encountered error while reading array index: (slice(0, 100, 1),).')


@pytest.mark.skipif(IS_ROOT, reason='root ignores directory permissions; covered by the '
                    'regular-file and file-size-limit tests')
def test_read_only_workdir_is_a_clear_error(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir(mode=0o500)
  try:
    with pytest.raises(CheckpointError, match='Permission denied'):
      Checkpointer(workdir)
  finally:
    workdir.chmod(0o700)


def _failing_writes(limit_bytes):
  """Makes writes past `limit_bytes` of any file fail with EFBIG, like a disk that fills up.

  Works as root too (unlike chmod). SIGXFSZ would kill the process, so it is ignored.
  """
  class _Limit:
    def __enter__(self):
      self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      self.limits = resource.getrlimit(resource.RLIMIT_FSIZE)
      resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, self.limits[1]))

    def __exit__(self, *exc_info):
      resource.setrlimit(resource.RLIMIT_FSIZE, self.limits)
      signal.signal(signal.SIGXFSZ, self.handler)
  return _Limit()


def test_failed_save_is_reported_and_keeps_earlier_checkpoints(tmp_path):
  def state_at(step):
    # Random bits do not compress: the array file is ~16 MB, far above the limit below.
    return {'w': jax.random.normal(jax.random.key(step), (4_000_000,)), 'step': step}
  target = {'w': jnp.zeros((4_000_000,)), 'step': 0}
  with Checkpointer(tmp_path, max_to_keep=1) as checkpointer:
    checkpointer.save(1, state_at(1), CONFIG)
    checkpointer.wait_until_finished()
    with _failing_writes(4 * 1024 * 1024):
      with pytest.raises(CheckpointError) as excinfo:
        checkpointer.save(2, state_at(2), CONFIG)
        checkpointer.wait_until_finished()
    message = str(excinfo.value)
    assert 'step 2' in message and 'File too large' in message
    assert 'the checkpoint of step 1 is kept' in message
    assert checkpointer.all_steps() == [1]
    restored, _, step = checkpointer.restore(target)
    assert step == 1
    _assert_bit_identical(restored, state_at(1))
    # Once space is back, the same step saves normally.
    assert checkpointer.save(2, state_at(2), CONFIG)
  with Checkpointer(tmp_path) as checkpointer:
    restored, _, step = checkpointer.restore(target)
  assert step == 2
  _assert_bit_identical(restored, state_at(2))


def test_a_failed_save_is_reported_once_in_one_line(tmp_path, caplog):
  """A full disk logged a traceback per orbax thread (500-1000 lines with TensorStore's specs),
  and orbax raised the failure again when another thread waited (the loop, after the
  checkpoint worker had raised it): a second error, about "the last step"."""
  def state_at(step):
    return {'w': jax.random.normal(jax.random.key(step), (4_000_000,)), 'step': step}
  errors = []
  caplog.set_level(logging.INFO)
  with Checkpointer(tmp_path, max_to_keep=1) as checkpointer:
    checkpointer.save(1, state_at(1), CONFIG)
    checkpointer.wait_until_finished()
    with _failing_writes(4 * 1024 * 1024):
      checkpointer.save(2, state_at(2), CONFIG)

      def worker():  # As dcgan_jax.background_checkpoints' worker waits.
        try:
          checkpointer.wait_until_finished()
        except CheckpointError as e:
          errors.append(str(e))

      thread = threading.Thread(target=worker)
      thread.start()
      thread.join()
      checkpointer.wait_until_finished()  # The loop's wait: reported already, not again.
  assert len(errors) == 1 and errors[0].startswith('Could not write the checkpoint of step 2 '), errors
  logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert logged == [f'Saving the checkpoint of step 2 in {tmp_path / "checkpoints"} failed: '
                    'File too large'], logged


def test_tensorstore_callbacks_into_closed_loops_are_not_reported(monkeypatch):
  """After a failed save TensorStore calls back into orbax's closed event loops: up to 170
  "RuntimeError: Event loop is closed" tracebacks through sys.unraisablehook."""
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    closed = e
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)  # Python's printing hook.
  checkpointing._quiet_orbax_save_failures()  # pylint: disable=protected-access
  checkpointing._quiet_orbax_save_failures()  # Installed once.  pylint: disable=protected-access
  report = lambda error, tb: sys.unraisablehook(types.SimpleNamespace(
      exc_type=type(error), exc_value=error, exc_traceback=tb, err_msg=None, object=None))
  report(closed, closed.__traceback__.tb_next)  # From C (TensorStore): asyncio's frames only.
  assert not reported
  try:
    raise RuntimeError('Event loop is closed')  # Not from asyncio's callback: reported.
  except RuntimeError as e:
    other = e
  report(other, other.__traceback__)
  report(ValueError('other'), None)
  assert [r.exc_value for r in reported] == [other, reported[1].exc_value]
  assert isinstance(reported[1].exc_value, ValueError)


# ---- the run's config -----------------------------------------------------------------------


def test_save_config_json_is_atomic_and_round_trips(tmp_path):
  path = save_config_json(tmp_path, CONFIG)
  assert path == tmp_path / 'config.json'
  save_config_json(tmp_path, dict(CONFIG, seed=np.int64(4)))  # Replaces; numpy scalars are ok.
  assert restore_config(tmp_path)['seed'] == 4
  assert sorted(os.listdir(tmp_path)) == ['config.json']  # No temporary files left behind.
  with pytest.raises(TypeError, match='not JSON-able'):
    save_config_json(tmp_path, {'bad': object()})
  assert restore_config(tmp_path)['seed'] == 4  # A failed write keeps the old file.


@_ORBAX_READ_NOISE
def test_restore_config_prefers_the_checkpoint(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    restore_config(tmp_path / 'missing')
  with pytest.raises(UserError, match='holds no run config'):
    restore_config(tmp_path)
  save_config_json(tmp_path, dict(CONFIG, seed=100))
  _save_steps(tmp_path, [1, 2])
  # A step's folder, or the checkpoints folder, given as the workdir: the message says what to
  # pass instead.
  with pytest.raises(UserError, match=re.escape(
      f'(for this checkpoint: --workdir={tmp_path} --step=2)')):
    restore_config(tmp_path / 'checkpoints' / '2')
  with pytest.raises(UserError, match=re.escape(f'(here: --workdir={tmp_path})')):
    restore_config(tmp_path / 'checkpoints')
  assert restore_config(tmp_path) == dict(CONFIG, seed=2, betas=[0.5, 0.999])
  shutil.rmtree(tmp_path / 'checkpoints' / '2' / 'config')  # Damaged: the previous step's.
  assert restore_config(tmp_path)['seed'] == 1
  shutil.rmtree(tmp_path / 'checkpoints')
  assert restore_config(tmp_path)['seed'] == 100


def test_close_waits_for_the_temporary_folder_clean_up_that_opening_started(tmp_path):
  """orbax's own close did not: a run refused right after opening its checkpointer exited while
  that thread ran, which then printed "cannot schedule new futures after shutdown"."""
  leftover = tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp-1'  # A killed run's save.
  leftover.mkdir(parents=True)
  checkpointer = Checkpointer(tmp_path)
  manager = checkpointer._manager  # pylint: disable=protected-access
  checkpointer.close()
  assert getattr(manager, '_cleanup_tmp_directory_future', None) is None
  assert not leftover.exists()
