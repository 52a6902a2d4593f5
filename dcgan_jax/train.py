"""The DCGAN training program: ``train_and_evaluate(config, workdir)``.

One readable loop in the flax-examples shape. Everything a user can get wrong is checked before
anything is written (model settings, batch vs. device count, the dataset, the workdir); then the
workdir is locked, the latest readable checkpoint (if any) is restored and training runs in
steps. With device-resident data and shard_map, each dispatch is one device program that
gathers the batch, derives the step's key, trains and accumulates the metrics, for one step or
(``steps_per_dispatch`` > 1) a chunk of steps that ends wherever the host has work
(:mod:`dcgan_jax.step_loop`); otherwise (streamed input, pmap) the loop dispatches those four
pieces step by step. The loop waits for the devices only where it must: each log is written
once the next step is queued, and periodic checkpoints are saved from a device copy by a worker
thread (:mod:`dcgan_jax.background_checkpoints`). Durations given in epochs are converted to
steps in one place (:func:`dcgan_jax.durations.resolve_durations`), and every periodic hook asks
one helper whether it is due (:func:`dcgan_jax.durations.is_due`). The checks and warnings live
in :mod:`dcgan_jax.run_checks`, the hooks (sample grids, quality, FID) in
:mod:`dcgan_jax.train_hooks`, the metrics' accumulation and the progress clock in
:mod:`dcgan_jax.train_metrics`.

Exact resume: the batch of step ``i`` is a pure function of ``(seed, i)`` (device-resident
sampler, or the tf.data stream restarted at ``i``), the step's random key is
``fold_in(train_key, i)``, and checkpoints hold everything else (both TrainStates with their
optimizer states, the EMA, the step, the key). A run interrupted at any checkpoint and restarted
with the same config on the same devices therefore ends bit-identical (on CPU) to an
uninterrupted one (other device counts sum in another order: equal up to rounding); so does a
finished N/2-step run extended to N steps when the learning rates are constant (decaying
schedules depend on num_train_steps).

What lands in the workdir (process 0 writes all but the checkpoints, which every process
writes together)::

  config.json                   the run's config
  classes.json                  (class-conditional runs on a dataset with class names) the
                                names in label order, for sample/evaluate --label=<name>
  parameters.txt                every parameter's shape, mean and std at initialisation
  checkpoints/<step>/           orbax: both TrainStates (params, batch_stats, opt_state), EMA,
                                the step, the training key and the config
  events.out.tfevents.*         TensorBoard scalars (losses, D(x), D(G(z)), grad norms, learning
                                rates, steps/s, img/s, ETA, quality) and sample images
  metrics.jsonl, hparams.json   instead of the events where TensorFlow is not installed
                                (dcgan_jax.writers; dataset 'array' needs no TensorFlow)
  samples/step_XXXXXX.png       sample grids from a fixed noise batch (EMA weights when kept)
  samples/progress.gif          those grids as an animation, written at the end of the run
  quality.json                  (digits only) the offline quality score of the final generator
                                (until the end, the latest), with every score so far (history)
  best_fid.json, best_fid/      (with inception_weights and eval_every_steps) the best
                                in-training FID with its protocol, and that step's checkpoint
  rolled_back_logs/<time>/      (after a resume) the log files as a killed run left them, with
                                the points after its last checkpoint, which the resume retrains
                                (event files as events.out.setaside.*: TensorBoard skips them)
                                and sample grids of those steps; after a fresh start in a used
                                workdir, the earlier run's logs, best_fid.json, best_fid/,
                                quality.json, sample grids and progress.gif
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Mapping
from typing import Any
import warnings as warnings_lib

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcgan_jax import animation
from dcgan_jax import background_checkpoints
from dcgan_jax import checkpointing
from dcgan_jax import class_names
from dcgan_jax.config_files import load_config  # pylint: disable=unused-import  # Public here too.
from dcgan_jax import data
from dcgan_jax import durations as durations_lib
from dcgan_jax.durations import is_due
from dcgan_jax import json_files
from dcgan_jax import models
from dcgan_jax import parallel
from dcgan_jax import preemption
from dcgan_jax import profiling
from dcgan_jax import run_checks
from dcgan_jax import run_logs
from dcgan_jax import state as state_lib
from dcgan_jax import step_loop
from dcgan_jax import summary
from dcgan_jax import sync_points
from dcgan_jax import train_hooks
from dcgan_jax import train_metrics
from dcgan_jax import train_step as train_step_lib
from dcgan_jax import write_errors
from dcgan_jax import writers
from dcgan_jax.errors import UserError, first_line, is_integer

# Each checkpoint's metadata: the images trained on up to its step (a sum over the batch sizes
# of every launch of the run).
IMAGES_SEEN_KEY = 'images_seen'
# And (digits quality on) the untrained generator's score, so that a resume need not score the
# initial state again (about 10 s on 2 CPU cores).
UNTRAINED_QUALITY_KEY = 'untrained_quality'
# And the step the run that saved it was to end at: a checkpoint at that step is the run's
# final one, whose samples and scores come after it (see FINISHED_FILE).
RUN_END_KEY = 'run_end_step'
# The hparams (TensorBoard's HPARAMS table, hparams.json) add the run's length in steps.
RESOLVED_STEPS_HPARAM = 'resolved_num_train_steps'
# Written once the final samples, scores and progress.gif are done: ``{"step": N}``. A run
# stopped after its final checkpoint but before these makes them when launched again.
FINISHED_FILE = 'finished.json'
# Settings a resume may change without changing the initial state or how it is scored.
_UNTRAINED_QUALITY_KEEPS = ('num_train_steps', 'num_epochs', 'keep_checkpoints',
                            'background_checkpoints', 'steps_per_dispatch', 'device_resident')


def _keeps_untrained_quality(field: str) -> bool:
  return field in _UNTRAINED_QUALITY_KEEPS or field.endswith(('_every_steps', '_every_epochs'))


PARAMETERS_TXT = 'parameters.txt'
# Raised by train_and_evaluate when a loss blows up (defined beside the check that raises it).
NonFiniteLossError = train_metrics.NonFiniteLossError


# ---- state ----------------------------------------------------------------------------------


def make_schedules(config: ml_collections.ConfigDict,
                   num_train_steps: int) -> tuple[Any, Any]:
  """Learning-rate schedules of G and D, indexed by each optimizer's own update count.

  D makes ``d_steps`` updates per generator step, so its schedule (and warmup) is stretched by
  that factor: both reach the same point of their schedule at the same generator step.
  """
  d_steps = int(config.d_steps)
  g_schedule = state_lib.make_schedule(float(config.g_learning_rate), config.lr_schedule,
                                       num_train_steps, int(config.warmup_steps))
  d_schedule = state_lib.make_schedule(float(config.d_learning_rate), config.lr_schedule,
                                       num_train_steps * d_steps,
                                       int(config.warmup_steps) * d_steps)
  return g_schedule, d_schedule


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       num_train_steps: int) -> state_lib.GANState:
  """A fresh GAN state for the config, on the default device.

  Args:
    config: The run config.
    rng: Initialisation key.
    num_train_steps: Length of the run (the decaying learning-rate schedules need it).

  Returns:
    A :class:`~dcgan_jax.state.GANState` at step 0 whose leaves are all arrays (no Python
    scalars), so a fresh and a restored state trace to the same jitted program.
  """
  generator = models.generator_from_config(config)
  discriminator = models.discriminator_from_config(config)
  g_schedule, d_schedule = make_schedules(config, num_train_steps)
  b1, b2 = float(config.adam_b1), float(config.adam_b2)
  g_tx = state_lib.make_optimizer(g_schedule, b1=b1, b2=b2)
  d_tx = state_lib.make_optimizer(d_schedule, b1=b1, b2=b2)
  use_ema = float(config.ema_decay) > 0
  # ADA's probability starts at 0 and is checkpointed with the rest (exact resume).
  adaptive = float(config.get('ada_target', 0.0)) > 0
  state = state_lib.create_gan_state(rng, generator, discriminator, g_tx, d_tx, use_ema=use_ema,
                                     augment_probability=0.0 if adaptive else None)
  return jax.tree.map(jnp.asarray, state)


# ---- the program ----------------------------------------------------------------------------


def _checkpoint(checkpointer: background_checkpoints.BackgroundCheckpointer, step: int,
                state: state_lib.GANState, tracker: train_metrics.NonFiniteTracker,
                train_key: jax.Array,
                config: ml_collections.ConfigDict, step_fn: parallel.DataParallelStep,
                metadata: dict[str, Any]) -> None:
  """A periodic checkpoint of ``state`` at ``step``, unless a loss has become non-finite.

  In the background (see :mod:`dcgan_jax.background_checkpoints`) this only dispatches a device
  copy of the state and the tracker and returns; the worker waits for them, checks and saves.
  """
  if checkpointer.background:
    state, tracker = background_checkpoints.device_copy((state, tracker))

  def save(target: checkpointing.Checkpointer) -> None:
    train_metrics.check_finite(tracker, target)
    _save(target, step, state, train_key, config, step_fn, metadata)

  checkpointer.submit(save)


def saved_images_seen(step: int, metadata: dict[str, Any], step_config: dict[str, Any],
                      config: ml_collections.ConfigDict) -> int:
  """The images a run had trained on at its checkpoint of ``step``.

  Args:
    step: The checkpoint's step.
    metadata: Its run setup (:meth:`Checkpointer.saved_run_setup`), which records the count.
    step_config: The config it was saved with: a checkpoint from before the count was recorded
      is taken to have run at its batch_size throughout.
    config: The run's config now, the last fallback.
  """
  seen = metadata.get(IMAGES_SEEN_KEY)
  if is_integer(seen) and seen >= 0:
    return int(seen)
  batch_size = step_config.get('batch_size') if isinstance(step_config, dict) else None
  return step * int(batch_size if is_integer(batch_size) else config.batch_size)


def _resumed_durations(config: ml_collections.ConfigDict, durations: durations_lib.Durations,
                       latest: int, saved_config: dict[str, Any],
                       latest_setup: dict[str, Any], log: bool = True) -> durations_lib.Durations:
  """The durations of a run that resumes after training at another batch size.

  A length in ``num_epochs`` then counts the images left (see
  :func:`~dcgan_jax.durations.resolve_durations`); the change is logged. Taken from the latest
  checkpoint (its step, config and setup record) before the state is built, since the
  decaying schedules depend on the length.
  """
  if int(config.num_train_steps) != -1:
    return durations
  images_seen = saved_images_seen(latest, latest_setup, saved_config, config)
  resumed = durations_lib.resolve_durations(config, durations.num_examples,
                                            resumed_at=(latest, images_seen))
  if resumed.num_train_steps != durations.num_train_steps and log and jax.process_index() == 0:
    logging.info('num_epochs %g counts images: the run had trained on %d by step %d (at another '
                 'batch_size), so it ends at step %d rather than %d.', float(config.num_epochs),
                 images_seen, latest, resumed.num_train_steps, durations.num_train_steps)
  return resumed


def _final_outputs_missing(workdir: str, step: int, metadata: dict[str, Any]) -> bool:
  """Whether the checkpoint of ``step`` ended its run (its metadata says so) but the final
  samples and scores after it were never made: the run was stopped (Ctrl-C, SIGTERM, a kill)
  between its final save and the end. Checkpoints from before the record are taken as done."""
  if metadata.get(RUN_END_KEY) != step:
    return False
  try:
    with open(os.path.join(workdir, FINISHED_FILE), encoding='utf-8') as f:
      return json.load(f).get('step') != step
  except (OSError, ValueError, AttributeError):  # None yet, or unreadable: make them again.
    return True


def _looks_finished(config: ml_collections.ConfigDict, workdir: str,
                    durations: durations_lib.Durations,
                    saved_config: dict[str, Any] | None) -> bool:
  """Whether the workdir's latest checkpoint ends the run and its final outputs were made.

  A cheap look (no state restored, nothing written), the same on every process.
  ``saved_config`` is the run's saved config (:func:`checkpointing.restore_config`), None
  without a readable one.
  """
  finished = False
  if saved_config is not None:
    try:
      with checkpointing.Checkpointer(workdir, read_only=True) as checkpoints:
        latest = checkpoints.latest_step()
        setup = {} if latest is None else checkpoints.saved_run_setup(latest)
      if latest is not None:
        length = _resumed_durations(config, durations, latest, saved_config, setup,
                                    log=False).num_train_steps
        finished = latest >= length and not _final_outputs_missing(workdir, latest, setup)
    except UserError:  # Unreadable: the restore below says what is wrong.
      finished = False
  # Process 0's look decides for all: they prepare together.
  return sync_points.agree('looked_finished', bool(finished))


def _schedule_change(config: ml_collections.ConfigDict, saved: dict[str, Any],
                     durations: durations_lib.Durations, step: int, d_updates: int,
                     images_seen: int) -> str | None:
  """The warning of a resume whose settings move the learning-rate schedules, else None.

  The schedules are functions of the run's length (cosine and linear decay over it), warm-up
  and ``d_steps`` (D's schedule counts D's updates): extending a decayed run raises its rate
  again, and another ``d_steps`` leaves D's decay ending elsewhere than G's. Both are allowed;
  the warning gives the rates the next update uses against those the checkpoint's own
  settings would have given.

  Args:
    config: The config now.
    saved: The config the checkpoint was saved with.
    durations: The run's durations now.
    step: The checkpoint's step (G's updates).
    d_updates: D's updates up to it.
    images_seen: The images trained on up to it: the checkpoint's own length, like the one now,
      counts a length in epochs from them (see :func:`_resumed_durations`).
  """
  try:
    before_config = ml_collections.ConfigDict(saved)
    before_steps = durations_lib.resolve_durations(
        before_config, durations.num_examples, resumed_at=(step, images_seen)).num_train_steps
    before = make_schedules(before_config, before_steps)
  except (UserError, KeyError, AttributeError, TypeError, ValueError):
    return None  # A config from before some field existed: nothing to compare with.
  now = make_schedules(config, durations.num_train_steps)
  with train_metrics.on_host_cpu():
    rates = [(name, float(old(count)), float(new(count))) for name, old, new, count in
             (('G', before[0], now[0], step), ('D', before[1], now[1], d_updates))]
  moved = [f"{name}'s from {old:.3g} to {new:.3g}" for name, old, new in rates
           if not math.isclose(old, new, rel_tol=1e-3, abs_tol=1e-12)]
  if not moved:
    return None
  return (f'The learning-rate schedules move at step {step}: {" and ".join(moved)} (the rate '
          "of the next update, against the checkpoint's own settings). lr_schedule "
          f"{config.get('lr_schedule', 'constant')!r} runs over num_train_steps "
          f'({durations.num_train_steps} now, {before_steps} before) and D\'s over its own '
          'updates (d_steps per step); changing them on a resume restarts the decay from '
          'there. d_learning_rate logs the rate D uses.')


def _save(checkpointer: checkpointing.Checkpointer, step: int, state: state_lib.GANState,
          train_key: jax.Array, config: ml_collections.ConfigDict,
          step_fn: parallel.DataParallelStep, metadata: dict[str, Any],
          force: bool = False, replace: bool = False) -> bool:
  # Process 0 has just written the logs and grids of the steps the checkpoint keeps: the
  # processes meet first, so that one that failed stops the others here, not in orbax's
  # barriers (five minutes, then a traceback).
  sync_points.sync(f'save_{step}')
  # Host (numpy) copies: orbax would otherwise slice every replicated array per device, one
  # compiled op each; the state is small, and either parallelism mode can resume the other's.
  # The key travels as its raw uint32 data for the same reason (and because a single-device key
  # cannot be saved in a multi-process run).
  state = step_fn.host_state(state)
  key_data = np.asarray(jax.device_get(jax.random.key_data(train_key)))
  # ``metadata`` (the loop's step_metadata) records facts of the step beside the run's setup.
  return checkpointer.save(step, {'gan': state, 'train_key': key_data}, config.to_dict(),
                           force=force, metadata=metadata, replace=replace)


@preemption.drops_locals_when_stopped
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.GANState:
  """Trains a DCGAN as the config says, resuming from the workdir's latest checkpoint.

  Args:
    config: The run config (see configs/default.py).
    workdir: The run's directory: checkpoints, TensorBoard events, sample grids, config.json
      and (digits) quality.json land here.

  Returns:
    The final GANState as host (numpy) arrays.

  Raises:
    UserError: a mistake in the config, the dataset or the workdir (raised before anything is
      written), a workdir in use by another run, or a non-finite loss
      (:class:`NonFiniteLossError`, after which the last good checkpoint is kept).
    dcgan_jax.preemption.TrainingStopped: SIGTERM or Ctrl-C (SIGINT) arrived during training;
      the step in flight finished and was saved, and calling again resumes from it. (A
      ``KeyboardInterrupt``; from the main thread only, or in multi-process runs SIGTERM
      through JAX's preemption service.)
    dcgan_jax.sync_points.ProcessFailed: (multi-process runs) another process failed; every
      process stops at the next point where they meet, with that process's one line.
  """
  try:
    return _train_and_evaluate(config, workdir)
  except BaseException as e:
    # Before this process waits for the others at exit (JAX's shutdown barrier): they would
    # otherwise wait for it at their next sync point.
    sync_points.report_failure(e)
    raise


def _train_and_evaluate(config: ml_collections.ConfigDict,
                        workdir: str) -> state_lib.GANState:
  """:func:`train_and_evaluate` itself."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  elif not isinstance(config, Mapping):
    raise UserError(f'config must be an ml_collections.ConfigDict (train.load_config(path)) or '
                    f'a dict of its fields; got {type(config).__name__}.')
  config = ml_collections.ConfigDict(dict(config))  # A private copy we may annotate.
  # Paths are saved absolute: config.json is what `probe` and `evaluate` read, and what
  # `main --workdir=RUN` resumes with, from whatever folder they run in (a relative 'pets' was
  # then looked for in the wrong place; a relative data_dir downloaded the dataset again).
  for field in ('dataset_path', 'data_dir', 'quality_cache_dir', 'inception_weights'):
    path = str(config.get(field, '') or '')
    # (inception_weights may name a file to look up elsewhere: made absolute only if it exists.)
    if path and (field != 'inception_weights' or os.path.exists(os.path.expanduser(path))):
      config[field] = os.path.abspath(os.path.expanduser(path))
  workdir = os.fspath(workdir)
  is_chief = jax.process_index() == 0

  # --- 1. Everything that can be wrong is checked before anything is written. ----------------
  run_checks.validate_config(config)
  run_checks.check_workdir_path(workdir)
  saved_config = None
  if run_checks.has_checkpoints(workdir):  # Refused now, not after minutes of preparing the data.
    try:
      saved_config = checkpointing.restore_config(workdir)
    except UserError:  # No readable config: the restore below reports what is wrong.
      saved_config = None
    if saved_config is not None:
      run_checks.check_resume_config(config, saved_config, workdir)
  if is_chief:
    for message in run_checks.config_warnings(config):
      logging.warning('%s', message)
  info = data.dataset_info(config)
  data.check_num_classes(config, info)
  if is_chief and config.get('num_classes', 0):
    run_checks.warn_about_changed_class_names(class_names.load(workdir), info.class_names)
  logging.info('Dataset %s (split %s): %d examples of %s%s.', info.name, info.split,
               info.num_examples, info.image_shape, info.describe_classes())
  durations = durations_lib.resolve_durations(config, info.num_examples)
  with warnings_lib.catch_warnings():
    # config_warnings has said so already, in the config's own terms.
    warnings_lib.simplefilter('ignore', train_step_lib.PenaltyWithBatchNormWarning)
    step_fn = parallel.DataParallelStep(
        models.generator_from_config(config), models.discriminator_from_config(config),
        train_step_lib.StepConfig.from_config(config), parallelism=config.parallelism)
  # Why the data path was chosen goes into the run's log line: 'auto' decides by sizes a user
  # may want to change.
  device_resident, data_reason = data.choose_device_resident(config, info.num_bytes)
  if device_resident and config.parallelism == 'pmap' and jax.process_count() > 1:
    # pmap takes host rows per device; the sampler's global batch would need a cross-process
    # gather, so multi-process pmap runs read through tf.data instead.
    device_resident = False
    data_reason = 'parallelism=pmap with several processes'
  if not device_resident and str(config.dataset).strip() == 'array':
    raise UserError(f"dataset 'array' ({info.num_bytes / 2**20:.0f} MiB) is read on the devices "
                    f"only, but this run would stream it ({data_reason}); set device_resident "
                    "to 'auto' or 'always' (with auto, raise device_resident_max_bytes), and use "
                    "shard_map for multi-process runs.")
  # On either data path: tf.data would fill each batch by repeating images.
  if int(config.batch_size) > info.num_examples:
    raise UserError(f'batch_size {config.batch_size} exceeds the {info.num_examples} examples '
                    'of the dataset; use a smaller batch_size.')
  image_sampler = train_hooks.Sampler(config)

  def prepare_inputs() -> tuple[Any, Any]:
    """The device-resident data and the FID hook: the slow part of preparing (the whole
    dataset on the devices; the real images' Inception statistics)."""
    sampler = None
    if device_resident:
      if data.conditional(config):
        images, labels = data.load_all_images(config, with_labels=True)
        if is_chief:
          run_checks.warn_about_empty_classes(labels, int(config.num_classes), info.name,
                                              info.class_names)
      else:
        images, labels = data.load_all_images(config), None
      sampler = data.DeviceResidentSampler(images, int(config.batch_size), int(config.seed),
                                           mesh=step_fn.mesh, labels=labels,
                                           num_classes=int(config.get('num_classes', 0)) or None)
      del images, labels
    fid_hook = None
    if durations.eval_every_steps > 0 and config.inception_weights:
      # Every process loads (and checks) the weights now; each scores its share of the images.
      fid_hook = train_hooks.InceptionFIDHook(config, image_sampler, durations.eval_every_steps)
    return sampler, fid_hook

  # A finished run launched again (a notebook cell re-run, a sweep driver started over) has
  # nothing to train: it would load the dataset and score the real images for nothing. The
  # restore below decides; this cheap look only lets the preparing wait until it has.
  deferred = _looks_finished(config, workdir, durations, saved_config)
  sampler, fid_hook = (None, None) if deferred else prepare_inputs()
  workdir = os.fspath(checkpointing.check_workdir_writable(workdir))
  sync_points.sync('validated')

  # --- 2. Lock, restore, write the run's config. ---------------------------------------------
  setup = run_checks.run_setup(step_fn.num_devices, device_resident)
  # A file the storage refuses from here on (a full disk) ends the run in one line that names
  # it and the step the same command resumes from (write_errors.reported).
  with checkpointing.acquire_workdir_lock(workdir), checkpointing.Checkpointer(
      workdir, max_to_keep=int(config.keep_checkpoints), run_setup=setup) as checkpointer, \
      write_errors.reported(workdir, checkpointer):
    # The latest checkpoint's config and setup, read once: the resume checks and messages and
    # (before the state is built) the run's length need them.
    latest = checkpointer.latest_step()
    saved_config = latest_setup = None
    if latest is not None:
      saved_config = checkpointing.restore_config(workdir)
      run_checks.check_resume_config(config, saved_config, workdir)
      latest_setup = checkpointer.saved_run_setup(latest)
      converted, durations = durations, _resumed_durations(config, durations, latest,
                                                           saved_config, latest_setup)
    # Logged with the length a resume at another batch size has just recounted.
    if is_chief:
      for message in run_checks.duration_warnings(config, durations):
        logging.warning('%s', message)
    logging.info('Run: %d steps (%.1f per epoch), global batch %d on %d device%s (%s), data %s '
                 '(%s).', durations.num_train_steps, durations.steps_per_epoch,
                 config.batch_size, step_fn.num_devices, '' if step_fn.num_devices == 1 else 's',
                 config.parallelism,
                 'device-resident' if device_resident else 'streamed by tf.data', data_reason)
    root_key = jax.random.key(int(config.seed))
    init_key = jax.random.fold_in(root_key, train_hooks.INIT_TAG)
    initial_state = create_train_state(config, init_key, durations.num_train_steps)
    train_key = jax.random.fold_in(root_key, train_hooks.TRAIN_TAG)
    state = parallel.replicate(initial_state, step_fn.mesh)
    start_step = images_seen_start = d_updates_start = 0
    untrained_quality = None
    final_outputs_missing = False
    # Said once the run is known to train on: a finished run launched again with, say, another
    # learning rate was told config.json would hold it, then that there was nothing to train.
    changes, resume_warnings = [], []
    if latest is not None:
      changes = run_checks.changed_settings(config, saved_config)
      if changes:  # Allowed (e.g. a longer run), but never silently.
        resume_warnings.append(
            f'Resuming with changed settings: {", ".join(changes)}. config.json will hold the '
            'new ones; each checkpoint keeps the config it was saved with.'
            + run_checks.changed_settings_effects(config, saved_config,
                                                  (latest_setup.get('data'), setup['data'])))
      target = {'gan': state,
                'train_key': parallel.replicate(jax.random.key_data(train_key), step_fn.mesh)}
      restored, step_config, start_step = checkpointer.restore(target)
      saved_metadata = checkpointer.saved_run_setup(start_step)
      images_seen_start = saved_images_seen(start_step, saved_metadata, step_config, config)
      if start_step != latest:
        # Fell back past a damaged checkpoint: a length in epochs counts the images left from
        # the one restored, which may have trained at yet another batch size.
        fallback = _resumed_durations(config, converted, start_step, step_config, saved_metadata,
                                      log=False)
        if fallback.num_train_steps != durations.num_train_steps:
          if is_chief:
            logging.info('Resumed from step %d, not the latest checkpoint (step %d): the run '
                         'ends at step %d.', start_step, latest, fallback.num_train_steps)
            said = set(run_checks.duration_warnings(config, durations))
            for message in run_checks.duration_warnings(config, fallback):
              if message not in said:  # (Warm-up or EMA span against the new length.)
                logging.warning('%s', message)
          durations = fallback
          # The schedules live in the optimizers (static fields of the state's structure): the
          # restored arrays take the structure of a state of the length now known, traced
          # abstractly (no second initialisation; the untrained state's arrays are the same).
          structure = jax.tree.structure(jax.eval_shape(
              lambda: create_train_state(config, init_key, fallback.num_train_steps)))
          restored['gan'] = jax.tree.unflatten(structure, jax.tree.leaves(restored['gan']))
      final_outputs_missing = _final_outputs_missing(workdir, start_step, saved_metadata)
      # Process 0 wrote the file: its reading decides for all.
      final_outputs_missing = sync_points.agree('final_outputs_missing',
                                                bool(final_outputs_missing))
      if all(_keeps_untrained_quality(name)
             for name, _, _ in run_checks.changed_fields(config, step_config)):
        untrained_quality = saved_metadata.get(UNTRAINED_QUALITY_KEY)
      state = restored['gan']
      # Rebuilt from host data, the key is uncommitted like a fresh one, free to follow the
      # replicated state into the step.
      key_data = np.asarray(restored['train_key'].addressable_data(0))
      train_key = jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(train_key))
      logging.info('Resumed from the checkpoint of step %d.', start_step)
      d_updates_start = int(np.asarray(state.discriminator.step.addressable_data(0)))
      resume_warnings.append(_schedule_change(config, step_config, durations, start_step,
                                              d_updates_start, images_seen_start))
      resume_warnings.append(run_checks.describe_setup_changes(start_step, saved_metadata, setup,
                                                               config))
    if latest is None and is_chief:
      # A fresh start in a workdir whose checkpoints were deleted: the old run's record must
      # not mark this one's final outputs as made.
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, FINISHED_FILE))
    if step_fn.parallelism == 'pmap':
      # pmap wants host values to stack per device; every process holds a full replica.
      state = step_fn.place_state(
          jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state))
    if start_step >= durations.num_train_steps and not final_outputs_missing:
      # The run that reached this step saved it and wrote its final samples and scores; doing
      # that again would add a second point at the same step to every curve. Said before
      # anything is written (an empty event file, config.json). A warning: a notebook's re-run
      # cell shows no INFO line, and would otherwise end without a word.
      if is_chief:
        logging.warning('The checkpoint is already at step %d >= num_train_steps %d; nothing '
                        'to train (raise num_train_steps to train on; sample and evaluate read '
                        'this run).%s', start_step, durations.num_train_steps,
                        f' The changed settings ({", ".join(changes)}) are not applied: '
                        'config.json keeps the run\'s.' if changes else '')
      return step_fn.host_state(state)
    if deferred:  # The look said finished, but the restore fell back past a damaged checkpoint.
      sampler, fid_hook = prepare_inputs()
    if is_chief:
      # After the lock and the resume checks, whose errors it would bury, and after the check
      # above: a finished run launched again said nothing to train after 40 lines of tables.
      logging.info('%s', run_checks.describe_objective(config))
      logging.info('Models:\n%s', summary.summarize(config))
      for message in filter(None, resume_warnings):
        logging.warning('%s', message)
      checkpointing.save_config_json(workdir, config.to_dict())
      if config.get('num_classes', 0) and class_names.has_names(info.class_names):
        class_names.save(workdir, info.class_names)  # For sample/evaluate --label=<name>.
      # A run killed between two checkpoints logged steps that this one trains again.
      # Started from scratch, the step-0 records (hparams) of a run without checkpoints go too.
      aside = run_logs.new_aside_directory(workdir)
      set_aside = run_logs.set_aside_logs_after(workdir, start_step or -1, aside)
      if set_aside:
        logging.warning(
            'The earlier run logged %s after %s before it was stopped; this run trains those '
            'steps again, so their points are set aside (the files as they were are in %s) '
            'and TensorBoard shows each step once.', run_logs.describe_steps(set_aside),
            (f'step {start_step}, the checkpoint this run resumes from,' if start_step
             else 'its start'), os.path.join(workdir, run_logs.ROLLED_BACK_DIR))
      # Likewise the outputs this run makes anew (sample grids after the step; from scratch,
      # the best FID and scores too).
      moved = train_hooks.set_aside_earlier_outputs(workdir, start_step or -1, aside)
      if moved and start_step:
        logging.warning('The earlier run left %s of steps after step %d, the checkpoint this '
                        'run resumes from, which it trains again: set aside in %s.',
                        train_hooks.describe_set_aside(moved), start_step, aside)
      elif moved:
        logging.warning('An earlier run left %s in the workdir, which this run makes anew: '
                        'set aside in %s.', train_hooks.describe_set_aside(moved), aside)
      # Records it reads back that cannot be read would be written over without a word.
      for name, reason, with_it in train_hooks.set_aside_unreadable_records(workdir, aside):
        logging.warning('%s in the workdir cannot be read (%s): set aside as it was%s in %s, '
                        'and this run starts %s anew.', name, first_line(reason, max_chars=160),
                        f', with {with_it},' if with_it else '', aside,
                        'the history of its scores' if name == train_hooks.QUALITY_FILE
                        else 'its best FID and best-FID checkpoint')
    # TensorBoard through clu (TensorFlow loads here, keeping imports and config checks fast),
    # or metrics.jsonl where TensorFlow is not installed. Process 0 creates the event file
    # before the processes meet, where a failure to write it stops them all.
    writer = writers.create_writer(workdir, just_logging=not is_chief)
    best_checkpointer = None
    try:
      # Process 0 has moved the earlier best_fid/ before any process opens it below.
      sync_points.sync('set_aside')
      # Every process saves the best-FID checkpoint together (orbax writes collectively).
      if train_hooks.fid_enabled(config, durations):
        best_checkpointer = checkpointing.Checkpointer(
            os.path.join(workdir, train_hooks.BEST_FID_DIR), max_to_keep=1, run_setup=setup)
      # Periodic saves in a worker thread where that is safe (see background_checkpoints).
      background = (bool(config.get('background_checkpoints', True))
                    and jax.process_count() == 1 and step_fn.parallelism == 'shard_map')
      with background_checkpoints.BackgroundCheckpointer(checkpointer,
                                                         background) as loop_checkpointer, \
          contextlib.ExitStack() as loop_resources:
        final_state = _train_loop(config, workdir, durations, step_fn, sampler, image_sampler,
                                  fid_hook, loop_checkpointer, writer, loop_resources,
                                  initial_state, state, train_key, start_step, images_seen_start,
                                  untrained_quality, best_checkpointer, d_updates_start)
    except BaseException:
      _close_while_failing(best_checkpointer, writer)
      raise
    try:
      if best_checkpointer is not None:
        best_checkpointer.close()
    finally:
      writer.flush()
      writer.close()
    return final_state


def _close_while_failing(best_checkpointer: checkpointing.Checkpointer | None,
                         writer: Any) -> None:
  """Closes the best-FID checkpointer and the writer of a run that is already failing (a full
  disk, a stop): their errors (clu raises a failed write again at every call) are logged in a
  line each and must not hide why the run ended."""
  closers = [('Saving the best-FID checkpoint',
              best_checkpointer.close if best_checkpointer is not None else None),
             ('Flushing the metric writer', writer.flush),
             ('Closing the metric writer', writer.close)]
  for what, close in closers:
    try:
      if close is not None:
        close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('%s failed too: %s', what, write_errors.describe(e))


def _train_loop(config, workdir, durations, step_fn, sampler, image_sampler, fid_hook,
                checkpointer, writer, resources, initial_state, state, train_key,
                start_step, images_seen_start, untrained_quality=None,
                best_checkpointer=None, d_updates_start=0) -> state_lib.GANState:
  """The loop itself (see :func:`train_and_evaluate`); ``checkpointer`` is a
  :class:`~dcgan_jax.background_checkpoints.BackgroundCheckpointer`, ``resources`` an
  ``ExitStack`` that closes what the loop opens once the run ends, stopped or not (a notebook
  keeps a stopped cell's traceback, and with it this frame), ``images_seen_start``
  the images trained on up to ``start_step``, ``untrained_quality`` the untrained generator's
  digits score as the checkpoint recorded it (None: score it), ``d_updates_start`` D's
  updates up to ``start_step`` (earlier launches may have had another ``d_steps``). A
  ``start_step`` at or past the run's end is a final checkpoint whose samples and scores were
  never made (:func:`_final_outputs_missing`; a finished run returns before the loop)."""
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top

  is_chief = jax.process_index() == 0
  num_train_steps = durations.num_train_steps
  batch_size = int(config.batch_size)
  pmap_layout = step_fn.parallelism == 'pmap'

  def images_seen(step: int) -> int:
    """The images trained on up to ``step`` (earlier launches may have had other batch sizes)."""
    return images_seen_start + (step - start_step) * batch_size

  def step_metadata(step: int) -> dict[str, Any]:
    """What the checkpoint of ``step`` records beside the run's setup."""
    metadata = {IMAGES_SEEN_KEY: images_seen(step), RUN_END_KEY: num_train_steps}
    if quality_hook is not None and quality_hook.untrained is not None:
      metadata[UNTRAINED_QUALITY_KEY] = train_hooks.jsonable(quality_hook.untrained)
    return metadata

  if start_step == 0 and is_chief:
    # With the length resolved: a run set in epochs has num_train_steps -1, which says nothing
    # in TensorBoard's HPARAMS table.
    writer.write_hparams({**{k: v for k, v in config.to_dict().items()
                             if isinstance(v, (int, float, str, bool))},
                          RESOLVED_STEPS_HPARAM: num_train_steps})
    # Every parameter's shape, mean and std at initialisation goes to a file, not the console:
    # the model table logged above already counts them, and 30 more lines bury the run's own.
    parameters_path = os.path.join(workdir, PARAMETERS_TXT)
    with write_errors.naming(parameters_path), open(parameters_path, 'w', encoding='utf-8') as f:
      for name, params in (('Generator', initial_state.generator.params),
                           ('Discriminator', initial_state.discriminator.params)):
        f.write(f'{name}\n{parameter_overview.get_parameter_overview(params)}\n\n')

  sample_latents = train_hooks.latents(int(config.seed), train_hooks.SAMPLE_TAG,
                                       int(config.num_sample_images), int(config.latent_dim))
  sample_labels = image_sampler.labels(int(config.num_sample_images))
  # Decided from the config alone, so that every process agrees (the hook is process 0's).
  quality_enabled = config.dataset == 'digits' and durations.quality_every_steps > 0
  quality_hook = None
  if quality_enabled and is_chief:
    quality_hook = train_hooks.DigitsQualityHook(config, image_sampler)
    quality_hook.score_untrained(image_sampler.variables(initial_state), untrained_quality)
    if start_step > 0:
      quality_hook.keep_history(workdir, start_step)
    else:
      quality_hook.write_untrained(writer)
      writer.flush()  # As every hook's scalars (a run killed before its first log keeps it).
  if durations.eval_every_steps > 0 and not config.inception_weights:
    logging.warning(run_checks.fid_skipped_warning(config, durations.eval_every_steps))
  best_fid = train_hooks.read_best_fid(workdir)
  del initial_state
  sync_points.sync('start')

  g_schedule, d_schedule = make_schedules(config, num_train_steps)
  d_steps = int(config.d_steps)
  iterator = None
  if sampler is None:
    iterator = data.create_train_iterator(config, start_step=start_step)

  # The reporter logs progress only, on the console: steps_per_sec and uptime are written with
  # the other scalars (write_log), and the ProgressClock gives the reporter the same windows.
  report_progress = resources.enter_context(
      writers.progress(num_train_steps, None, durations.log_every_steps or None))
  uptime_start = time.monotonic()
  progress_clock = train_metrics.ProgressClock(report_progress)
  collection_cls = None
  accumulate = None
  collection = None
  tracker = train_metrics.NonFiniteTracker.empty()
  last_log_time, last_log_step = time.monotonic(), start_step

  def hooks_due(step: int) -> bool:
    """Whether any sample/quality/FID hook fires at ``step`` (the same on every process).

    A hook that is off (quality on other data than digits, FID without weights) is never due:
    a due step ends a fused chunk and waits for the device.
    """
    return is_due(step, durations.sample_every_steps) or scores_due(step)

  def scores_due(step: int) -> bool:
    """Whether the quality score or FID (when on) falls at ``step``."""
    return ((quality_enabled and is_due(step, durations.quality_every_steps))
            or (fid_hook is not None and is_due(step, durations.eval_every_steps)))

  def hooks(step: int, state: state_lib.GANState, final: bool, hook_writer=None) -> None:
    """Sample grids and quality (process 0) and FID (all processes) at ``step``, written to
    ``hook_writer`` (default: the run's writer)."""
    hook_writer = hook_writer or writer
    # At the end every enabled hook runs, whatever its period.
    need_samples = final or is_due(step, durations.sample_every_steps)
    need_quality = quality_hook is not None and (final
                                                 or is_due(step, durations.quality_every_steps))
    need_fid = fid_hook is not None and (final or is_due(step, durations.eval_every_steps))
    fid = None
    chief_hooks = is_chief and (need_samples or need_quality)
    if chief_hooks or need_fid:
      variables = image_sampler.variables(state)  # One local copy for every hook due.
    if chief_hooks:
      if need_samples:
        with report_progress.timed('samples'):
          images = image_sampler.generate(variables, sample_latents, sample_labels)
          train_hooks.write_sample_grid(workdir, step, images, hook_writer,
                                        image_sampler.value_range, image_sampler.num_classes)
      if need_quality:
        with report_progress.timed('quality'):
          result = quality_hook(step, variables, hook_writer)
          manifold_text = ('' if result.get('precision') is None else
                           f", precision {result['precision']:.2f}, recall {result['recall']:.2f}")
          if result.get('label_accuracy') is not None:
            manifold_text += f", label accuracy {result['label_accuracy']:.3f}"
          logging.info('Step %d digits quality: Fréchet distance %.3f (%.1f%% of untrained), '
                       '%s covered, smallest class %.3f%s.', step,
                       result['frechet_distance'],
                       100 * result['frechet_distance']
                       / quality_hook.untrained['frechet_distance'],
                       train_hooks.count_classes(result['num_classes_covered']),
                       result['min_class_fraction'],
                       manifold_text)
          # At every score, not only the last: the history of a run stopped before its end
          # (Ctrl-C, a kill) is what a resume keeps of its scores (keep_history).
          quality_hook.write_json(workdir, step, result, used_ema=state.ema is not None)
    if need_fid:  # Every process scores its share of the images; all get the same FID.
      # Its gathers wait for every process: they meet first, so that a failure of process 0's
      # (a grid, a score, a log it could not write) stops the others here instead.
      sync_points.sync(f'fid_{step}')
      with report_progress.timed('fid'):
        fid = fid_hook(step, variables, hook_writer)
    if best_checkpointer is not None and (final or is_due(step, durations.eval_every_steps)):
      keep_best(step, state, fid)
    # The others wait here (for process 0's grids, scores and best_fid.json), not in the next
    # step's collective, and stop here if it failed.
    sync_points.sync(f'hooks_{step}')

  def keep_best(step: int, state: state_lib.GANState, fid: float | None) -> None:
    """Saves the state as the best-FID checkpoint when the FID is a new best."""
    nonlocal best_fid
    # Every process measured the same FID, but only process 0 keeps the best so far (it writes
    # best_fid.json); every process takes part in saving, so its answer goes to all.
    improved = sync_points.agree(f'best_fid_{step}', bool(fid is not None and fid < best_fid))
    if not improved:
      return
    # replace: a best of an earlier launch at this or a later step (one that a resume rolled
    # back) would otherwise make the save a silent no-op, and best_fid.json name its weights.
    try:
      saved = _save(best_checkpointer, step, state, train_key, config, step_fn,
                    step_metadata(step), force=True, replace=True)
      # On disk before best_fid.json names it: a run killed in between must not point at a
      # checkpoint that was never completed (one save of the state: rare, and quick).
      best_checkpointer.wait_until_finished()
    except checkpointing.CheckpointError as e:
      # Its line speaks of best_fid/ alone: "no earlier checkpoint exists" read as if the run
      # had none. (The run's latest save, if in flight, finishes first.)
      latest = checkpointer.latest_step()
      kept = (f"the run's own checkpoints in {checkpointer.checkpointer.directory} are intact, "
              f'and the same command resumes from step {latest}' if latest is not None else
              'the run had saved no checkpoint of its own yet')
      raise checkpointing.CheckpointError(f'{e} That was the best-FID checkpoint: {kept}.') from e
    if is_chief and saved:
      best_fid = fid
      json_files.write_json_atomically(os.path.join(workdir, train_hooks.BEST_FID_FILE),
                             {'step': step, 'fid': fid, 'used_ema': state.ema is not None,
                              'checkpoint': os.path.join(workdir, train_hooks.BEST_FID_DIR),
                              **fid_hook.last_manifold, **fid_hook.protocol})
      logging.info('Step %d: best FID so far (%.3f); checkpoint kept in %s.', step, fid,
                   os.path.join(workdir, train_hooks.BEST_FID_DIR))

  fused = None
  steps_per_dispatch = step_loop.check_steps_per_dispatch(config.get('steps_per_dispatch', 1))
  if sampler is not None and not pmap_layout:  # One program per dispatch (see step_loop).
    # The metric names come from the step's output structure, without running it (traced
    # un-jitted: a jit with compiler_options cannot be nested).
    metric_names = list(jax.eval_shape(step_fn.mapped, state, sampler.batch(start_step),
                                       train_key)[1])
    collection_cls = train_metrics.make_metrics_collection(metric_names)
    collection = collection_cls.empty()
    fused = step_loop.FusedSteps(step_fn, sampler,
                                 train_metrics.make_accumulate(collection_cls, pmap_layout,
                                                               jit=False),
                                 steps_per_dispatch)
    if steps_per_dispatch > 1:
      logging.info('Up to %d steps per device program (steps_per_dispatch).', steps_per_dispatch)
      if step_fn.mesh.devices.flat[0].platform == 'cpu':
        logging.warning(step_loop.CPU_LOOP_WARNING, steps_per_dispatch)
  elif steps_per_dispatch > 1:  # Valid, but it would do nothing without a word.
    logging.warning('steps_per_dispatch=%d fuses steps only with device-resident data and '
                    'parallelism=shard_map; this run (%s) dispatches one step at a time.',
                    steps_per_dispatch, 'pmap' if pmap_layout else 'data streamed by tf.data')

  profiler = profiling.StepProfiler.from_config(config, workdir, start_step, num_train_steps)

  pending_log = None  # (step, metrics collection, tracker) of a log not yet written.
  pending_samples = None  # (step, image chunks, tracker) of a sample grid not yet written.
  # A step where the sample grid is the only hook due queues the grid's generation and goes on;
  # the grid is written where the loop waits anyway (the next log's fetch, a checkpoint, hooks,
  # a stop, the end), instead of draining the device and encoding the PNG while it idles.
  # Whether a step is such a step must be the same on every process (the others skip the hooks'
  # barrier there), so it reads quality_enabled, not the hook process 0 alone holds.

  def write_samples() -> None:
    """Writes the pending sample grid (if any), unless a loss had become non-finite by then.

    Every process checks the losses here, so that all of them stop at the same point; process 0
    alone writes the grid.
    """
    nonlocal pending_samples
    if pending_samples is None:
      return
    (sample_step, chunks, sample_tracker), pending_samples = pending_samples, None
    with report_progress.timed('samples'):
      chunks, sample_tracker = jax.device_get((chunks, sample_tracker))
      train_metrics.check_finite(sample_tracker, checkpointer)  # As before a grid written at once.
      if chunks is not None:
        train_hooks.write_sample_grid(workdir, sample_step, np.concatenate(chunks), writer,
                          image_sampler.value_range, image_sampler.num_classes)

  def queue_samples(step: int, state: state_lib.GANState) -> None:
    """Queues the generation of the sample grid of ``step`` (written by write_samples).

    Every process makes the same calls, including the tracker's copy (a program over the
    global tracker); only process 0 generates images.
    """
    nonlocal pending_samples
    write_samples()  # An earlier grid still pending (no log or checkpoint since).
    chunks = None
    if is_chief:
      chunks = image_sampler.dispatch_generate(image_sampler.variables(state), sample_latents,
                                               sample_labels)
    # The next step donates the tracker: keep a copy of this one.
    pending_samples = (step, chunks, background_checkpoints.device_copy(tracker))

  def samples_only_due(step: int) -> bool:
    """Whether the sample grid is the only hook due at ``step`` (so it can be deferred)."""
    return is_due(step, durations.sample_every_steps) and not scores_due(step)

  def write_log() -> None:
    """Writes the pending log (if any): its scalars, rates and the non-finite check.

    A log due after step ``s`` is written after step ``s + 1`` has been dispatched, or at once
    where the loop is about to wait anyway (checkpoint, hooks, stop, end). Fetching the metrics
    waits for step ``s``; with the next step already queued the device keeps working meanwhile,
    where a fetch right after ``s`` would leave it idle until the next dispatch.
    """
    nonlocal pending_log, last_log_time, last_log_step
    if pending_log is None:
      return
    (log_step, log_collection, log_tracker), pending_log = pending_log, None
    checkpointer.raise_if_failed()  # A background save's error, as early as it is known.
    if pending_samples is not None and pending_samples[0] < log_step:
      # Its images were ready long ago; the fetch below waits for log_step, which the device
      # is still working towards, so the PNG costs the loop nothing here.
      write_samples()
    # Fetch first and compute on the host: a device computation (the averages' division, a
    # schedule's jnp ops) would queue behind the step just dispatched and wait for it too.
    log_collection, log_tracker = jax.device_get((log_collection, log_tracker))
    now = time.monotonic()  # Step log_step has finished (its metrics are here).
    if last_log_step == start_step and progress_clock.start is not None:
      clock_time, clock_step = progress_clock.start
      if clock_step < log_step:  # The first window starts after the compiling dispatch.
        last_log_time, last_log_step = clock_time, clock_step
    train_metrics.check_finite(log_tracker, checkpointer)
    scalars = {k: float(v) for k, v in log_collection.compute().items()}  # numpy
    steps_per_sec = (log_step - last_log_step) / max(now - last_log_time, 1e-9)
    with train_metrics.on_host_cpu():
      scalars.update({
          'g_learning_rate': float(g_schedule(log_step - 1)),
          # D's schedule counts D's own updates, which after a change of d_steps are not
          # step x d_steps: the rate logged is the one D used.
          'd_learning_rate': float(d_schedule(
              d_updates_start + (log_step - start_step) * d_steps - 1)),
      })
    scalars.update({
        'steps_per_sec': steps_per_sec,
        'img_per_sec': steps_per_sec * batch_size,
        'eta_seconds': (num_train_steps - log_step) / steps_per_sec,
        'uptime': now - uptime_start,  # Seconds since this process's loop started.
        'epoch': images_seen(log_step) / durations.num_examples,
    })
    writer.write_scalars(log_step, scalars)
    progress_clock.logged(log_step, now)  # The console's progress line, over the same window.
    # The next window starts where this one ended, so the windows tile the run's time (the
    # writes above count in the next one) and steps_per_sec is the loop's real rate.
    last_log_time, last_log_step = now, log_step

  def host_work_due(done: int) -> bool:
    """Whether the loop has anything to do after ``done`` steps (ends a fused chunk)."""
    return (is_due(done, durations.log_every_steps) or hooks_due(done)
            or is_due(done, durations.checkpoint_every_steps) or profiler.is_boundary(done))

  step = start_step
  # SIGTERM (a scheduler's stop) and Ctrl-C end the loop after the step in flight, with a
  # checkpoint of it (dcgan_jax.preemption); before and after the loop they act as usual.
  stop_signals = preemption.StopSignals()
  stop_signals.install()
  try:
    while step < num_train_steps:
      if fused is not None:
        done = fused.chunk_end(step, num_train_steps, host_work_due)
        profiler.before_dispatch(step, state, lambda: fused.compiled_text(
            state, collection, tracker, train_key, step, done))
        with profiler.annotate(step, done - step):
          state, collection, tracker = fused(state, collection, tracker, train_key, step, done)
        profiler.after_dispatch(done, state)
        progress_clock.dispatched(done, state)
      else:
        if sampler is not None:
          batch = sampler.batch(step)
          if pmap_layout:
            batch = step_fn.place_batch(jax.tree.map(np.asarray, batch))
        else:
          batch = step_fn.place_batch(next(iterator))
        rng = parallel.fold_in(train_key, step)
        profiler.before_dispatch(step, state,
                                 lambda: step_fn.compiled_text(state, batch, rng))
        with profiler.annotate(step):
          state, metrics = step_fn(state, batch, rng)
        if collection_cls is None:
          collection_cls = train_metrics.make_metrics_collection(list(metrics))
          accumulate = train_metrics.make_accumulate(collection_cls, pmap_layout)
          collection = collection_cls.empty()
        collection, tracker = accumulate(collection, tracker, metrics, np.int32(step + 1))
        done = step + 1
        profiler.after_dispatch(done, state)
        progress_clock.dispatched(done, state)

      # The previous step's log, now that this step is queued behind it (see write_log).
      write_log()
      if is_due(done, durations.log_every_steps, num_train_steps):
        # The tracker goes on into the next steps, which donate it: keep a copy of this one.
        pending_log = (done, collection, background_checkpoints.device_copy(tracker))
        collection = collection_cls.empty()
      # Checked on every process at every step (multi-process runs agree on the step through
      # JAX's preemption service), after the log of ``done`` so that a resumed run's curve has
      # no hole; the hooks due here are skipped: a grace period is short.
      signum = stop_signals.requested(step, done) if done < num_train_steps else None
      if signum is not None:
        write_samples()
        write_log()
        if durations.log_every_steps > 0 and not is_due(done, durations.log_every_steps):
          # The steps since the last log, as one shorter window: the resume logs from the next
          # step on, so without this point they would be missing from every curve.
          pending_log = (done, collection, background_checkpoints.device_copy(tracker))
          collection = collection_cls.empty()
          write_log()
        train_metrics.check_finite(tracker, checkpointer)
        writer.flush()
        _save(checkpointer, done, state, train_key, config, step_fn, step_metadata(done),
              force=True)
        checkpointer.wait_until_finished()
        step = done
        raise preemption.TrainingStopped(signum, done, workdir)
      if is_due(done, durations.checkpoint_every_steps) and done < num_train_steps:
        with report_progress.timed('checkpoint'):
          # The scalars of the steps this checkpoint keeps go to disk first: a run killed
          # later resumes after them and never logs them again (writers buffer).
          write_samples()
          write_log()
          writer.flush()
          _checkpoint(checkpointer, done, state, tracker, train_key, config, step_fn,
                      step_metadata(done))
      if done < num_train_steps and hooks_due(done):
        if samples_only_due(done):
          queue_samples(done, state)
        else:
          write_samples()
          write_log()
          train_metrics.check_finite(tracker, checkpointer)
          hooks(done, state, final=False)
          # Their scalars (FID, quality) belong to a step a resumed run does not evaluate again.
          writer.flush()
      step = done
  except BaseException:
    stop_signals.restore()
    raise
  finally:  # A trace still on here (training failed or stopped) is stopped and written.
    profiler.close(step)

  def finish(final_step: int, state: state_lib.GANState) -> state_lib.GANState:
    """The final samples and scores of the saved final step, then progress.gif."""
    # Their scalars and images reach the logs only once all are made: a stop among them would
    # otherwise leave some logged, and the launch that makes them again log those twice.
    deferred = writers.DeferredWriter()
    try:
      hooks(final_step, state, final=True, hook_writer=deferred)
    except preemption.TrainingStopped:
      raise
    except KeyboardInterrupt:  # Ctrl-C during the final scores: the final step is saved.
      raise preemption.TrainingStopped(signal.SIGINT, final_step, workdir) from None
    deferred.replay(writer)
    writer.flush()  # On disk before finished.json says they are made.
    checkpointer.wait_until_finished()
    if is_chief:  # The sample grids over the run, as one animation.
      animation.write_progress_gif(os.path.join(workdir, train_hooks.SAMPLES_DIR),
                                   last_step=final_step)
      json_files.write_json_atomically(os.path.join(workdir, FINISHED_FILE),
                                       {'step': final_step})
    sync_points.sync('finished')  # Every process ends as process 0 does (a failed write too).
    logging.info('Finished at step %d; outputs in %s.', final_step, workdir)
    return step_fn.host_state(state)

  # --- The end: a last checkpoint, samples and scores of the final state. -------------------
  if start_step >= num_train_steps:  # (A finished run returned in train_and_evaluate.)
    stop_signals.restore()
    if is_chief:
      logging.warning('The run was stopped after its final checkpoint (step %d) but before '
                      'its final samples and scores; making them now.', start_step)
    return finish(start_step, state)
  final_step = num_train_steps
  # A first SIGTERM or Ctrl-C still waits for the final checkpoint (it used to stop at once and
  # lose every step since the last periodic one); the final samples and scores are skipped then.
  try:
    write_samples()
    write_log()
    train_metrics.check_finite(tracker, checkpointer)
    writer.flush()  # As before every checkpoint (see the loop).
    _save(checkpointer, final_step, state, train_key, config, step_fn, step_metadata(final_step),
          force=True)
    checkpointer.wait_until_finished()
  finally:
    stop_signals.restore()
  if stop_signals.received is not None:
    raise preemption.TrainingStopped(stop_signals.received, final_step, workdir)
  return finish(final_step, state)
