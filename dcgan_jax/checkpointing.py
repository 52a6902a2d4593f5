"""Checkpoints of a training run: saving, resuming, the run's config and the workdir lock.

Layout of a workdir (only the parts this module owns)::

  <workdir>/.lock                    flock-ed by the run that uses the workdir; holds its pid
  <workdir>/config.json              the run's config, written atomically
  <workdir>/checkpoints/<step>/      one orbax checkpoint per saved step: items `state`, `config`;
                                     the run setup (devices, data path, versions) in its metadata
  <workdir>/corrupt_checkpoints/     unreadable checkpoints moved aside when a run resumes

The state is any pytree (a flax struct of TrainStates, optax states, EMA params, a step and a
typed PRNG key, say). Orbax writes every step into a temporary directory and renames it when
complete, so a run killed mid-write leaves a temporary directory that is ignored and removed at the
next start, never a half-written step. A step that is damaged anyway (files deleted or truncated
afterwards) is skipped on resume with a warning, and the previous one is used.

Typical use in a training loop::

  with acquire_workdir_lock(workdir), Checkpointer(workdir, max_to_keep=3) as checkpointer:
    if checkpointer.latest_step() is not None:
      state, saved_config, step = checkpointer.restore(state)
    ...
    checkpointer.save(step, state, config.to_dict())      # Saves when step % interval == 0.
    ...
    checkpointer.save(step, state, config.to_dict(), force=True)  # The final step.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging as std_logging
import os
import pathlib
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Mapping
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from dcgan_jax import config_files
from dcgan_jax import json_files
from dcgan_jax import sync_points
from dcgan_jax.errors import UserError, exception_chain

CHECKPOINT_DIR = config_files.RUN_CHECKPOINT_DIR
CORRUPT_CHECKPOINT_DIR = 'corrupt_checkpoints'
CONFIG_FILE = config_files.RUN_CONFIG_FILE
LOCK_FILE = '.lock'

# Item names inside each step directory.
_STATE_ITEM = 'state'
_CONFIG_ITEM = 'config'

PyTree = Any
PathLike = str | os.PathLike


class _DropReadOnlyNotice(std_logging.Filter):
  """Drops orbax's "Given directory is read only" warning: we ask for read-only on purpose."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')


@contextlib.contextmanager
def _quiet_read_only_notice():
  """While opening a read-only CheckpointManager (absl logs through the 'absl' logger)."""
  logger = std_logging.getLogger('absl')
  notice_filter = _DropReadOnlyNotice()
  logger.addFilter(notice_filter)
  try:
    yield
  finally:
    logger.removeFilter(notice_filter)


class CheckpointError(UserError):
  """A checkpoint could not be written or read (full disk, unwritable or damaged files).

  A subclass of :class:`UserError` so that the command-line entry points print its one sentence
  and exit with ``EXIT_USER_ERROR``; the underlying exception is kept as ``__cause__``.
  """


# --------------------------------------------------------------------------------------------
# Error descriptions
# --------------------------------------------------------------------------------------------


# TensorStore reports the OS error of a failed file write as text, e.g.
# "... Failed to write 269803 bytes to file 7: File too large [os_error_code='27']".
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='?(\d+)")


def _os_error_reason(exc: BaseException) -> str | None:
  """Returns the OS-level reason (e.g. 'No space left on device') behind `exc`, if any."""
  for link in exception_chain(exc):
    if isinstance(link, OSError) and link.strerror:
      return link.strerror
  for link in exception_chain(exc):
    if match := _TENSORSTORE_OS_ERROR.search(str(link)):
      return os.strerror(int(match.group(1)))
  return None


_NEVER_RETRIEVED = ('Task exception was never retrieved', 'Future exception was never retrieved')


def _is_orbax_read_error(error: BaseException | None) -> bool:
  """An error of one of orbax's (TensorStore's) reads: raised in orbax's code or naming a spec."""
  if error is None:
    return False
  if 'tensorstore' in str(error).lower():
    return True
  frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
  return any(f'{os.sep}orbax{os.sep}' in frame.filename for frame in frames)


class _DropAbandonedOrbaxReads(std_logging.Filter):
  """Drops asyncio's "... exception was never retrieved" reports of orbax's abandoned reads."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (str(record.msg).startswith(_NEVER_RETRIEVED) and _is_orbax_read_error(error))


def _drop_orbax_read_leftovers() -> None:
  """Keeps the reads a failed restore abandoned from printing tracebacks later.

  When one array of a damaged checkpoint cannot be read, orbax's other pending reads (asyncio
  coroutines, tasks and TensorStore futures) are dropped with their own errors. Whenever Python
  collects them, often after the run's last line, it reports each with a traceback: a coroutine
  as "Exception ignored in: <coroutine ...>" (sys.unraisablehook), a task or future as "Task
  (Future) exception was never retrieved" (asyncio's logger), an unstarted coroutine as a
  "never awaited" RuntimeWarning. The warning above already says what happened, so those
  reports (and only those) are dropped, from then on in this process.
  """
  _add_filter_once('asyncio', _DropAbandonedOrbaxReads)
  # TensorStore's reads that end after orbax closed its loop call back into it, as a failed
  # save's writes do: 100-200 "Event loop is closed" tracebacks (read-only openings, such as
  # `sample` on a workdir whose newest checkpoint is damaged, had no filter for them).
  _drop_unraisable_reports('_drops_closed_loop_callbacks', _is_closed_loop_callback)
  if _drop_unraisable_reports('_drops_orbax_reads', _is_orbax_coroutine):
    # orbax's array-metadata read (the only one seen unstarted; a warning has no source filter).
    warnings.filterwarnings('ignore', message=r"coroutine 'Store\._get_array_metadatas' was "
                            'never awaited', category=RuntimeWarning)


def _is_orbax_coroutine(unraisable: Any) -> bool:
  code = getattr(unraisable.object, 'cr_code', None)  # A coroutine's code object.
  return code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename


def _add_filter_once(logger_name: str, filter_class: type[std_logging.Filter]) -> None:
  logger = std_logging.getLogger(logger_name)
  if not any(isinstance(f, filter_class) for f in logger.filters):
    logger.addFilter(filter_class())


def _drop_unraisable_reports(marker: str, should_drop: Callable[[Any], bool]) -> bool:
  """Chains a sys.unraisablehook that drops the reports ``should_drop`` accepts, once per
  ``marker`` (the hook it wraps stays its first closure cell).

  Returns:
    Whether it was installed now (False: already there).
  """
  previous = sys.unraisablehook
  # Each hook carries the markers of the chain below it: with two kinds installed in turn,
  # checking only the top one installed both again at every call.
  markers = getattr(previous, '_dcgan_jax_markers', frozenset())
  if marker in markers:
    return False

  def hook(unraisable):
    if not should_drop(unraisable):
      previous(unraisable)

  hook._dcgan_jax_markers = markers | {marker}  # pylint: disable=protected-access
  sys.unraisablehook = hook
  return True


def _is_orbax_record(record: std_logging.LogRecord) -> bool:
  return f'{os.sep}orbax{os.sep}' in (record.pathname or '')


class _DropOrbaxStorageErrors(std_logging.Filter):
  """Drops orbax's own error logs of a save the disk refused (full, unwritable, ...).

  A failed save logs one error with a full traceback per orbax thread it ran on (four or five,
  each with TensorStore's spec of the array: 500-1000 lines on a full disk). The save's
  :class:`CheckpointError` says the same in one sentence, and it is always raised: by the next
  ``save``, ``wait_until_finished`` or ``close``. Other orbax errors are kept.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno < std_logging.ERROR or not _is_orbax_record(record):
      return True
    error = record.exc_info[1] if record.exc_info else None
    if error is not None:
      return _os_error_reason(error) is None
    return not _TENSORSTORE_OS_ERROR.search(str(record.msg))


def _is_closed_loop_callback(unraisable: Any) -> bool:
  """TensorStore calling back into an event loop orbax has closed (after a failed save)."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
    return False
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  return bool(frames) and all(f'{os.sep}asyncio{os.sep}' in frame.filename for frame in frames)


def _quiet_orbax_save_failures() -> None:
  """Keeps a failed save (disk full, ...) to its one CheckpointError, from now on.

  Besides orbax's error logs (:class:`_DropOrbaxStorageErrors`), the save's abandoned
  TensorStore writes report themselves: as "RuntimeError: Event loop is closed" tracebacks
  (TensorStore's callbacks into orbax's closed loops, through sys.unraisablehook: 0 to 170 of
  them per failed save) and as asyncio's "Task exception was never retrieved".
  """
  _add_filter_once('absl', _DropOrbaxStorageErrors)  # orbax logs through absl.logging.
  _add_filter_once('asyncio', _DropAbandonedOrbaxReads)
  _drop_unraisable_reports('_drops_closed_loop_callbacks', _is_closed_loop_callback)


def _short_reason(exc: BaseException) -> str:
  """One short line describing `exc`, for error messages and warnings."""
  if reason := _os_error_reason(exc):
    return reason
  text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
  first = text[0] if text else ''
  if first.endswith(':') and len(text) > 1:
    # The message's subject is on the next line (orbax's tree mismatch puts the first differing
    # path there: "... do not match:\ngenerator.opt_state[0]:").
    first = f'{first} {text[1].rstrip(":")}'
  # orbax appends the repr of a bound method ("See full TensorStore details: <bound method
  # pybind11_...>"), which tells a user nothing.
  first = re.sub(r'\s*See full TensorStore details:.*$', '', first)
  if len(first) > 160:
    first = first[:157] + '...'
  return f'{type(exc).__name__}: {first}' if first else type(exc).__name__


def _restore_advice(exc: BaseException) -> str:
  """What to do when no checkpoint fits the target: the general advice, or for a target placed
  for pmap (every leaf stacked along a leading device axis the saved state lacks) the fix."""
  match = re.search(r'Requested shape: \(([^)]*)\) is not compatible with the stored shape: '
                    r'\(([^)]*)\)', str(exc))
  if match:
    requested, stored = ([int(d) for d in group.replace(' ', '').split(',') if d]
                         for group in match.groups())
    if len(requested) == len(stored) + 1 and requested[1:] == stored:
      return (f"the target has a leading axis of {requested[0]} (pmap's, from "
              'DataParallelStep.place_state) that the saved arrays lack: restore into the state '
              'before placing it (as create_gan_state returns it), then call place_state on '
              'the result')
  return ('restore into a state built as the saved one was (the config that wrote them: the '
          'same models and optimizers), or start in a new workdir')


# --------------------------------------------------------------------------------------------
# Workdir: writability, lock, config.json
# --------------------------------------------------------------------------------------------


def _missing_or_file(path: pathlib.Path) -> str:
  return 'is a file, not a folder' if path.exists() else 'does not exist'


def check_workdir_writable(workdir: PathLike) -> pathlib.Path:
  """Creates `workdir` if needed and checks that files can be written in it.

  Call it before any training so that an unusable workdir fails at once, not at the first
  checkpoint.

  Args:
    workdir: The run's directory.

  Returns:
    The workdir as an absolute path.

  Raises:
    CheckpointError: the directory cannot be created or written to.
  """
  path = pathlib.Path(workdir).expanduser().absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
    # mkdir succeeds on an existing read-only directory: only writing a file proves it usable.
    with tempfile.NamedTemporaryFile(dir=path, prefix='.write_probe_'):
      pass
  except OSError as e:
    raise CheckpointError(
        f'The workdir {path} is not writable ({_short_reason(e)}); pass a --workdir in a '
        'directory you can write to.') from e
  return path


class WorkdirLock:
  """An exclusive lock on a workdir, so two runs never write the same checkpoints.

  Uses ``fcntl.flock`` on ``<workdir>/.lock``: the kernel drops the lock when the holding
  process exits for any reason (``kill -9`` included), so a crashed run never leaves the
  workdir locked. The holder's pid is written into the file only to name it in the message.
  The file descriptor is close-on-exec, so subprocesses do not inherit the lock.
  """

  def __init__(self, workdir: PathLike, *, process_index: int | None = None):
    """Prepares (does not take) the lock.

    Args:
      workdir: The run's directory.
      process_index: In a multi-process job every process locks its own file (process 0
        `.lock`, process i `.lock.process<i>`), so the processes of one job do not exclude each
        other while a second job on the same workdir is refused. None means
        ``jax.process_index()``, which initialises JAX's backends: call
        ``jax.distributed.initialize`` first, or pass the index.
    """
    self.workdir = pathlib.Path(workdir).expanduser().absolute()
    self._process_index = process_index
    self._fd: int | None = None

  @property
  def path(self) -> pathlib.Path:
    index = jax.process_index() if self._process_index is None else self._process_index
    return self.workdir / (LOCK_FILE if index == 0 else f'{LOCK_FILE}.process{index}')

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock without waiting.

    Returns:
      self.

    Raises:
      UserError: another live process holds the lock.
      CheckpointError: the workdir is not writable.
    """
    if self._fd is not None:
      return self
    check_workdir_writable(self.workdir)
    path = self.path
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise CheckpointError(
          f'Cannot create the lock file {path} ({_short_reason(e)}); pass a --workdir in a '
          'directory you can write to.') from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_pid(fd)
      os.close(fd)
      raise UserError(
          f'The workdir {self.workdir} is in use by another run (pid {holder}); wait for it to '
          'finish or use another --workdir.') from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        os.close(fd)
        raise
      # Some network/FUSE file systems have no flock; running unlocked beats refusing to run.
      logging.warning('File locks are not supported for %s (%s); running without a workdir '
                      'lock, so do not start a second run on it.', path, e.strerror)
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    self._fd = fd
    return self

  def release(self) -> None:
    """Releases the lock (a no-op when not held). The file stays; only the flock matters."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)  # A stale pid would mislead nobody, but an empty file is clearer.
    except OSError:
      pass
    os.close(fd)  # Closing the descriptor drops the flock.

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


def _read_pid(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors='replace').strip()
  except OSError:
    text = ''
  return text if text.isdigit() else 'unknown'


def acquire_workdir_lock(workdir: PathLike, *, process_index: int | None = None) -> WorkdirLock:
  """Locks `workdir` for this run; use as ``with acquire_workdir_lock(workdir): ...``.

  Args:
    workdir: The run's directory; created if missing.
    process_index: See :class:`WorkdirLock`.

  Returns:
    The held :class:`WorkdirLock` (released by ``release()``, at the end of a ``with`` block,
    or by the OS when the process dies).

  Raises:
    UserError: another run holds the workdir ("... is in use by another run (pid N) ...").
    CheckpointError: the workdir is not writable.
  """
  return WorkdirLock(workdir, process_index=process_index).acquire()


def _json_default(value: Any) -> Any:
  # Nested ConfigDicts, numpy scalars and arrays, paths: the non-JSON types a config may hold.
  if hasattr(value, 'to_dict'):
    return value.to_dict()
  if hasattr(value, 'tolist'):
    return value.tolist()
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  raise TypeError(f'config value {value!r} of type {type(value).__name__} is not JSON-able')


def _to_json_dict(config: Mapping[str, Any]) -> dict[str, Any]:
  """A plain-JSON deep copy of `config` (tuples become lists), as it will read back."""
  if hasattr(config, 'to_dict'):  # An ml_collections.ConfigDict.
    config = config.to_dict()
  return json.loads(json.dumps(dict(config), default=_json_default))


def save_config_json(workdir: PathLike, config: Mapping[str, Any]) -> pathlib.Path:
  """Writes `config` to ``<workdir>/config.json`` atomically (a reader never sees half a file).

  Args:
    workdir: The run's directory; created if missing.
    config: The run's config as a JSON-able mapping (e.g. ``ConfigDict.to_dict()``).

  Returns:
    The path written.

  Raises:
    CheckpointError: the file could not be written (the previous config.json, if any, is kept).
    TypeError: `config` holds a value JSON cannot represent.
  """
  directory = check_workdir_writable(workdir)
  text = json.dumps(_to_json_dict(config), indent=2, sort_keys=True) + '\n'
  path = directory / CONFIG_FILE
  tmp_path = None
  try:
    with tempfile.NamedTemporaryFile('w', dir=directory, prefix='.config.json.', delete=False,
                                     encoding='utf-8') as f:
      tmp_path = f.name
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    json_files.give_new_file_permissions(tmp_path)
    os.replace(tmp_path, path)
  except OSError as e:
    if tmp_path is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp_path)
    raise CheckpointError(
        f'Could not write {path} ({_short_reason(e)}); free some disk space or pass a '
        'writable --workdir.') from e
  return path


# --------------------------------------------------------------------------------------------
# Typed PRNG keys
# --------------------------------------------------------------------------------------------
# Keys are stored as their raw uint32 key data (`jax.random.key_data`) and re-wrapped with the
# key type of the restore target, so checkpoints do not depend on how an orbax version treats
# extended dtypes.


def _is_prng_key(leaf: Any) -> bool:
  dtype = getattr(leaf, 'dtype', None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _unwrap_keys(state: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_prng_key(x) else x, state)


def _abstract_key_data(key: Any) -> jax.ShapeDtypeStruct:
  """Shape, dtype and sharding of `key`'s data; `key` may be concrete or a ShapeDtypeStruct."""
  if isinstance(key, jax.Array):
    return ocp.utils.to_shape_dtype_struct(jax.random.key_data(key))
  data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(key.shape, key.dtype))
  sharding = getattr(key, 'sharding', None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    # Key data has trailing dimensions (e.g. [..., 2] for threefry) that are never split.
    extra = data.ndim - len(key.shape)
    spec = tuple(sharding.spec) + (None,) * (len(key.shape) - len(sharding.spec) + extra)
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
  return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


def _abstract_target(target: PyTree) -> PyTree:
  """The restore target: shape, dtype and sharding per leaf, keys replaced by their data."""
  return jax.tree.map(
      lambda x: _abstract_key_data(x) if _is_prng_key(x) else ocp.utils.to_shape_dtype_struct(x),
      target)


def _match_target_leaf(target: Any, restored: Any) -> Any:
  if _is_prng_key(target):
    return jax.random.wrap_key_data(restored, dtype=target.dtype)
  if isinstance(target, (bool, int, float)):
    # A Python scalar in the target (flax's TrainState.create sets `step=0`) stays one, even if
    # an array was saved (the step after a jitted update), so the restored state has the same
    # leaf types as a fresh one. The value is the saved one, exactly.
    return type(target)(np.asarray(restored).item())
  return restored


def _match_target(restored: PyTree, target: PyTree) -> PyTree:
  """Turns restored key data back into typed keys, and scalars back into Python scalars."""
  return jax.tree.map(_match_target_leaf, target, restored)


# --------------------------------------------------------------------------------------------
# Host arrays without orbax's defensive copy
# --------------------------------------------------------------------------------------------
# orbax deep-copies every numpy array it is given before returning from an asynchronous save,
# in case the caller changes the array while the write runs. Our training loop hands it the
# state fresh off the devices, as read-only arrays nothing writes to, so that copy only blocks
# the loop: a save of the paper-sized state (90 MB) on 2 CPU cores blocked it for 92-141 ms with
# the copy and 16-20 ms without (medians of 12; experiments/benchmark_checkpoint.py).
# `Checkpointer.save` therefore copies only what could change (writeable arrays, or views of
# other arrays) and gives orbax a handler that does not copy again.


def _may_change(x: np.ndarray) -> bool:
  """Whether someone could still write to `x`'s memory after `save` returns."""
  # Arrays from a jax array (`np.asarray`, `jax.device_get`) are read-only, their base is not
  # a numpy array (on CPU they view the device buffer, which jax never reuses while viewed).
  return x.flags.writeable or isinstance(x.base, np.ndarray)


def _owned_copy(leaf: Any) -> Any:
  if isinstance(leaf, np.ndarray) and _may_change(leaf):
    leaf = leaf.copy()
    leaf.flags.writeable = False
  return leaf


class StateCheckpointHandler(ocp.StandardCheckpointHandler):
  """orbax's StandardCheckpointHandler, whose numpy arrays are written without a copy.

  The files are exactly StandardCheckpointHandler's: plain orbax (``StandardRestore``) reads
  this handler's checkpoints and this handler reads plain orbax's. Only the name recorded in a
  step's ``_CHECKPOINT_METADATA`` differs, which matters only to a restore without arguments.
  """

  def __init__(self):
    super().__init__()
    # `_impl` is the PyTreeCheckpointHandler behind orbax's StandardCheckpointHandler. Where an
    # orbax version lacks it or the copy option (older or newer than 0.12), its default
    # (copying) handler simply stays in use: slower saves, same files. A test notices.
    if not isinstance(getattr(self, '_impl', None), ocp.PyTreeCheckpointHandler):
      return
    try:
      registry = ocp.type_handlers.create_type_handler_registry(*[
          (ty, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False) if ty is np.ndarray
           else ocp.type_handlers.get_type_handler(ty))
          for ty in ocp.type_handlers.supported_types()])
      # StandardCheckpointHandler's own defaults, apart from the registry.
      impl = ocp.PyTreeCheckpointHandler(save_concurrent_gb=96, restore_concurrent_gb=96,
                                         type_handler_registry=registry)
    except (AttributeError, TypeError):
      return
    self._impl = impl


@ocp.args.register_with_handler(StateCheckpointHandler, for_save=True)
class _StateSave(ocp.args.StandardSave):
  """StandardSave for :class:`StateCheckpointHandler`."""


@ocp.args.register_with_handler(StateCheckpointHandler, for_restore=True)
class _StateRestore(ocp.args.StandardRestore):
  """StandardRestore for :class:`StateCheckpointHandler`."""


# --------------------------------------------------------------------------------------------
# Checkpointer
# --------------------------------------------------------------------------------------------


class Checkpointer:
  """Saves and restores a run's state and config under ``<workdir>/checkpoints``.

  A thin layer over ``orbax.checkpoint.CheckpointManager`` that adds what a training run needs:
  typed PRNG keys, fallback to the previous step when the latest is damaged, clear errors when
  the disk is full or unwritable, and a config readable without the state. Saves are
  asynchronous by default: `save` returns once the arrays are copied off the devices, and the
  files are written in the background (the next `save`, `wait_until_finished` or `close` waits
  for them). Not thread-safe; in a multi-process job every process must make the same calls.
  """

  def __init__(self, workdir: PathLike, *, save_interval_steps: int = 1,
               max_to_keep: int | None = 3, async_save: bool = True, read_only: bool = False,
               run_setup: Mapping[str, Any] | None = None):
    """Opens (and unless `read_only`, creates) the checkpoint directory.

    Leftover temporary directories of a run killed mid-save are removed here.

    Args:
      workdir: The run's directory.
      save_interval_steps: `save` without `force` writes only steps divisible by this.
      max_to_keep: Keep this many most recent checkpoints; None keeps all.
      async_save: Write checkpoint files in a background thread.
      read_only: Only restore (sampling/evaluation next to a live run): nothing is created,
        deleted or moved.
      run_setup: JSON-able facts about the machine and run that wrote the checkpoints (device
        count, data path, versions: what the config does not say but the numbers depend on).
        Every save records them in orbax's step metadata; :meth:`saved_run_setup` reads them.

    Raises:
      CheckpointError: the workdir is not writable (unless `read_only`).
      UserError: a `read_only` workdir does not exist.
    """
    if save_interval_steps < 1:
      raise UserError(f'save_interval_steps must be a positive integer, got {save_interval_steps}.')
    if max_to_keep is not None and max_to_keep < 1:
      raise UserError(f'max_to_keep must be a positive integer or None, got {max_to_keep}.')
    self.workdir = pathlib.Path(workdir).expanduser().absolute()
    self._read_only = read_only
    self._run_setup = _to_json_dict(run_setup) if run_setup else None
    if read_only:
      if not self.workdir.is_dir():
        raise UserError(f'The workdir {self.workdir} {_missing_or_file(self.workdir)}; pass the '
                        '--workdir of a training run.')
    else:
      check_workdir_writable(self.workdir)
      _quiet_orbax_save_failures()
    # `save` decides the interval itself: orbax's default policy would also save whatever step
    # comes first in an empty directory.
    self._save_interval_steps = save_interval_steps
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0,
        max_to_keep=None if read_only else max_to_keep,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save,
    )
    try:
      with _quiet_read_only_notice():
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={_STATE_ITEM: StateCheckpointHandler(),
                           _CONFIG_ITEM: ocp.JsonCheckpointHandler()})
    except OSError as e:
      raise CheckpointError(
          f'Cannot open the checkpoint directory {self.directory} ({_short_reason(e)}); pass a '
          'writable --workdir.') from e
    # The step whose asynchronous write may still be running; its errors surface on waiting.
    self._pending_step: int | None = None
    # The step whose failed save was raised as a CheckpointError: orbax raises that failure
    # again on every later wait, which must not report it a second time (as "the last step").
    self._failed_step: int | None = None

  @property
  def directory(self) -> pathlib.Path:
    """``<workdir>/checkpoints``: orbax's root directory, one subdirectory per step."""
    return self.workdir / CHECKPOINT_DIR

  def all_steps(self) -> list[int]:
    """Steps of the committed checkpoints, ascending (damaged ones included until restored)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest committed step, or None when there is no checkpoint."""
    return self._manager.latest_step()

  # ---- saving ---------------------------------------------------------------------------------

  def save(self, step: int, state: PyTree, config: Mapping[str, Any], *,
           force: bool = False, metadata: Mapping[str, Any] | None = None,
           replace: bool = False) -> bool:
    """Saves `state` and `config` as checkpoint `step`, if it is time to.

    Args:
      step: The training step the state is at.
      state: Any pytree of arrays and scalars; typed PRNG keys are allowed.
      config: The run's config as a JSON-able mapping.
      force: Save even if `step` is not a multiple of `save_interval_steps` (e.g. the last step).
      metadata: JSON-able facts about this step alone, recorded beside `run_setup` (same
        names: these win); :meth:`saved_run_setup` reads both back.
      replace: Delete the checkpoints of `step` and later steps first, so that this one is
        saved (and, being the newest, kept) whatever is there: for a directory that holds the
        best state by some measure (the best FID), where a newer step may be a worse state or
        one of an earlier launch that a resume rolled back. Not for resume points.

    The arrays are copied off the devices before this returns, so the caller may donate or
    delete them at once (e.g. pass the state to a jitted step with ``donate_argnums``). Numpy
    arrays the caller could still change (writeable ones, or views of other arrays) are copied
    too; read-only ones, such as ``np.asarray`` of a jax array, are written without a copy.

    Returns:
      Whether a save was started: False when it is not time to save, or when `step` is not newer
      than the latest checkpoint and `replace` is off (so a final ``force=True`` save of a step
      just saved periodically is a no-op).

    Raises:
      CheckpointError: this or the previous asynchronous save could not be written (disk full,
        directory unwritable, ...). The earlier checkpoints are left intact.
    """
    if self._read_only:
      raise RuntimeError('Checkpointer(read_only=True) cannot save.')
    self.wait_until_finished()
    if not force and step % self._save_interval_steps:
      return False
    if replace:
      for later in self.all_steps():
        if later >= step:
          self._manager.delete(later)
    latest = self.latest_step()
    if latest is not None and step <= latest:
      # Already saved (e.g. a final forced save right after a periodic one), or older than the
      # newest checkpoint, which must stay the newest for resuming.
      return False
    args = ocp.args.Composite(**{
        _STATE_ITEM: _StateSave(jax.tree.map(_owned_copy, _unwrap_keys(state))),
        _CONFIG_ITEM: ocp.args.JsonSave(_to_json_dict(config)),
    })
    try:
      custom_metadata = self._run_setup
      if metadata:
        custom_metadata = {**(self._run_setup or {}), **_to_json_dict(metadata)}
      self._manager.save(step, args=args, force=True, custom_metadata=custom_metadata)
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_error(step, e)
    self._pending_step = step
    return True

  def wait_until_finished(self) -> None:
    """Blocks until the last asynchronous save is on disk.

    Raises:
      CheckpointError: that save failed; earlier checkpoints are left intact.
    """
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if step is None and self._failed_step is not None and _os_error_reason(e):
        return  # The failure raised already, again (e.g. from `close` while it propagates).
      self._raise_save_error(step, e)

  def _raise_save_error(self, step: int | None, exc: Exception) -> None:
    # Orbax dropped the failed step (and any it planned to delete) from its cached list although
    # the older ones are still on disk: re-read the directory so they stay known and restorable.
    with contextlib.suppress(Exception):
      self._manager.reload()
    reason = _os_error_reason(exc)
    if reason is None:
      raise exc  # Not a storage problem (e.g. a leaf orbax cannot save): keep the traceback.
    kept = self.latest_step()
    kept_text = (f'the checkpoint of step {kept} is kept' if kept is not None
                 else 'no earlier checkpoint exists')
    which = f'step {step}' if step is not None else 'the last step'
    self._failed_step = step if step is not None else -1
    logging.error('Saving the checkpoint of %s in %s failed: %s', which, self.directory, reason)
    raise CheckpointError(
        f'Could not write the checkpoint of {which} in {self.directory} ({reason}); free some '
        f'disk space or pass a writable --workdir ({kept_text}).') from exc

  # ---- restoring ------------------------------------------------------------------------------

  def restore(self, target_state: PyTree,
              step: int | None = None) -> tuple[PyTree, dict[str, Any], int]:
    """Restores a checkpoint into the structure, dtypes and shardings of `target_state`.

    With ``step=None`` the newest checkpoint that can be read is used: a damaged newer one is
    reported with a warning naming its step and (unless read-only) moved to
    ``<workdir>/corrupt_checkpoints`` so that the resumed run can save that step again.

    Args:
      target_state: A pytree like the saved one: concrete arrays or ``jax.ShapeDtypeStruct``s
        (with shardings, e.g. ``NamedSharding(mesh, P())`` for replicated state). Restored
        arrays get the target's sharding; non-array leaves (flax ``apply_fn``, ``tx``) come from
        the target.
      step: A specific step to restore (no fallback), or None for the latest.

    Returns:
      ``(state, config, step)``: the restored state, the config saved with it and its step.

    Raises:
      UserError: there is no checkpoint, the requested step does not exist, or none can be
        restored into `target_state` (damaged, or saved by a run with another config).
    """
    if not self._read_only:
      self.wait_until_finished()
    # Before any read, not after one fails: a damaged array's abandoned TensorStore reads can
    # call back into orbax's closed loop while the failing restore is still unwinding (1 run in
    # ~20 printed a traceback before the fallback warning). Only those callbacks are dropped.
    _drop_unraisable_reports('_drops_closed_loop_callbacks', _is_closed_loop_callback)
    self._manager.reload()  # Another process (a live training run) may have saved since.
    steps = sorted(self._manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise UserError(f'There is no checkpoint of step {step} in {self.directory}; saved steps '
                        f'are {sorted(steps) or "none"}.')
      try:
        return self._restore_step(step, target_state)
      except Exception as e:  # pylint: disable=broad-except
        _drop_orbax_read_leftovers()
        raise UserError(f'The checkpoint of step {step} in {self.directory} cannot be restored '
                        f'({_short_reason(e)}); pick another step from {sorted(steps)}.') from e
    if not steps:
      raise UserError(f'There is no checkpoint in {self.directory}; train with this --workdir '
                      'first.')
    failed: list[tuple[int, Exception]] = []
    for candidate in steps:
      try:
        restored = self._restore_step(candidate, target_state)
      except Exception as e:  # pylint: disable=broad-except
        _drop_orbax_read_leftovers()
        logging.warning('The checkpoint of step %d in %s cannot be restored (%s)%s.', candidate,
                        self.directory, _short_reason(e),
                        '; falling back to the previous one' if candidate != steps[-1] else '')
        failed.append((candidate, e))
        continue
      if failed and not self._read_only:
        self._move_aside([s for s, _ in failed])
      return restored
    latest_step, latest_error = failed[0]
    raise UserError(
        f'No checkpoint in {self.directory} can be restored (steps {sorted(steps)}; step '
        f'{latest_step} failed with: {_short_reason(latest_error)}); '
        f'{_restore_advice(latest_error)}.') from latest_error

  def _restore_step(self, step: int, target_state: PyTree) -> tuple[PyTree, dict[str, Any], int]:
    args = ocp.args.Composite(**{
        _STATE_ITEM: _StateRestore(_abstract_target(target_state)),
        _CONFIG_ITEM: ocp.args.JsonRestore(),
    })
    restored = self._manager.restore(step, args=args)
    state = _match_target(restored[_STATE_ITEM], target_state)
    return state, dict(restored[_CONFIG_ITEM]), step

  def saved_run_setup(self, step: int) -> dict[str, Any]:
    """The `run_setup` that the checkpoint of `step` was saved with, and its own `metadata`.

    Empty when it has none (saved without one, or by a version from before this record) or its
    metadata cannot be read: the record informs, and never stops a restore.
    """
    try:
      metadata = self._manager.metadata(step)
    except Exception:  # pylint: disable=broad-except
      return {}
    saved = getattr(metadata, 'custom_metadata', None)
    return dict(saved) if isinstance(saved, Mapping) else {}

  def _move_aside(self, steps: list[int]) -> None:
    """Moves damaged step directories out of orbax's sight, keeping them for inspection."""
    if jax.process_index() == 0:
      corrupt_dir = self.workdir / CORRUPT_CHECKPOINT_DIR
      corrupt_dir.mkdir(exist_ok=True)
      stamp = time.strftime('%Y%m%d-%H%M%S')
      for step in steps:
        source = self.directory / str(step)
        destination = corrupt_dir / f'step_{step}_{stamp}'
        suffix = 1
        while destination.exists():
          destination = corrupt_dir / f'step_{step}_{stamp}_{suffix}'
          suffix += 1
        try:
          os.replace(source, destination)
          logging.warning('Moved the damaged checkpoint of step %d to %s.', step, destination)
        except OSError as e:
          logging.warning('Could not move the damaged checkpoint %s aside: %s', source, e)
    # The others wait until process 0 has moved them (and stop there if it failed).
    sync_points.sync('checkpointing_move_aside')
    self._manager.reload()

  # ---- lifecycle ------------------------------------------------------------------------------

  def close(self) -> None:
    """Waits for the pending save, then releases orbax's threads.

    Raises:
      CheckpointError: the pending save failed.
    """
    try:
      if not self._read_only:
        self.wait_until_finished()
    finally:
      # orbax's close does not wait for the clean-up of temporary folders that opening starts
      # in a thread: a run refused right after opening (an invalid learning rate, once) exited
      # while it ran, and the thread printed a traceback ("cannot schedule new futures after
      # shutdown"). Saving waits for it the same way.
      await_cleanup = getattr(self._manager, '_maybe_await_cleanup_tmp_directory', None)
      if await_cleanup is not None:
        with contextlib.suppress(Exception):  # Its errors are not the caller's.
          await_cleanup()
      self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def restore_config(workdir: PathLike) -> dict[str, Any]:
  """The config of the run in `workdir`, without restoring any state.

  Reads it from the newest readable checkpoint (the config that matches the weights), else from
  ``<workdir>/config.json``. Safe to call while a training run uses the workdir.

  Args:
    workdir: A training run's directory.

  Returns:
    The config as a plain dict.

  Raises:
    UserError: the workdir does not exist or holds no readable config.
  """
  path = pathlib.Path(workdir).expanduser().absolute()
  if not path.is_dir():
    raise UserError(f'The workdir {path} {_missing_or_file(path)}; pass the --workdir of a '
                    'training run.')
  checkpoint_dir = path / CHECKPOINT_DIR
  if checkpoint_dir.is_dir():
    with _quiet_read_only_notice():
      manager = ocp.CheckpointManager(
          checkpoint_dir,
          options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               save_interval_steps=0))
    try:
      for step in sorted(manager.all_steps(), reverse=True):
        try:
          restored = manager.restore(
              step, args=ocp.args.Composite(**{_CONFIG_ITEM: ocp.args.JsonRestore()}))
          return dict(restored[_CONFIG_ITEM])
        except Exception as e:  # pylint: disable=broad-except
          logging.warning('The config of the checkpoint of step %d in %s cannot be read (%s); '
                          'trying the previous one.', step, checkpoint_dir, _short_reason(e))
    finally:
      manager.close()
  config_path = path / CONFIG_FILE
  if config_path.is_file():
    try:
      config = json.loads(config_path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
      raise UserError(f'{config_path} cannot be read ({_short_reason(e)}); pass the --workdir '
                      'of a training run.') from e
    if isinstance(config, dict):
      return config
    raise UserError(f'{config_path} does not hold a JSON object; pass the --workdir of a '
                    'training run.')
  hint = ''
  if path.parent.name == CHECKPOINT_DIR and path.name.isdigit():  # <run>/checkpoints/<step>
    hint = f' (for this checkpoint: --workdir={path.parent.parent} --step={path.name})'
  elif path.name == CHECKPOINT_DIR:
    hint = f' (here: --workdir={path.parent})'
  raise UserError(f'The workdir {path} holds no run config (no readable checkpoint and no '
                  f'{CONFIG_FILE}); pass the --workdir of a training run{hint}.')
