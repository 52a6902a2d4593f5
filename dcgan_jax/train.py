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
steps in one place (:func:`resolve_durations`), and every periodic hook asks one helper whether
it is due (:func:`is_due`).

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
  best_fid.json, best_fid/      (with inception_weights and eval_every_steps) the best
                                in-training FID with its protocol, and that step's checkpoint
  rolled_back_logs/<time>/      (after a resume) the log files as a killed run left them, with
                                the points after its last checkpoint, which the resume retrains
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Sequence
import warnings as warnings_lib

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcgan_jax import animation
from dcgan_jax import background_checkpoints
from dcgan_jax import checkpointing
from dcgan_jax import class_names
from dcgan_jax import config_files
from dcgan_jax.config_files import load_config  # pylint: disable=unused-import  # Public here too.
from dcgan_jax import data
from dcgan_jax import json_files
from dcgan_jax.data import device_resident as data_device_resident
from dcgan_jax import models
from dcgan_jax import parallel
from dcgan_jax import preemption
from dcgan_jax import profiling
from dcgan_jax import run_logs
from dcgan_jax import sample_grid
from dcgan_jax import state as state_lib
from dcgan_jax import step_loop
from dcgan_jax import summary
from dcgan_jax import train_step as train_step_lib
from dcgan_jax import writers
from dcgan_jax.errors import UserError, finite_number, is_integer

# Tags folded into the run seed, one per independent stream of randomness. (The data order uses
# its own tag inside dcgan_jax.data.)
_INIT_TAG, _TRAIN_TAG, _SAMPLE_TAG, _QUALITY_TAG, _EVAL_TAG = 1, 2, 3, 4, 5
# Generated images per forward pass when scoring many samples (bounds host/device memory).
_GENERATE_CHUNK = 250
QUALITY_FILE = 'quality.json'
# Each checkpoint's metadata: the images trained on up to its step (a sum over the batch sizes
# of every launch of the run).
IMAGES_SEEN_KEY = 'images_seen'
# And (digits quality on) the untrained generator's score, so that a resume need not score the
# initial state again (about 10 s on 2 CPU cores).
UNTRAINED_QUALITY_KEY = 'untrained_quality'
# Settings a resume may change without changing the initial state or how it is scored.
_UNTRAINED_QUALITY_KEEPS = ('num_train_steps', 'num_epochs', 'keep_checkpoints',
                            'background_checkpoints', 'steps_per_dispatch', 'device_resident')


def _keeps_untrained_quality(field: str) -> bool:
  return field in _UNTRAINED_QUALITY_KEEPS or field.endswith(('_every_steps', '_every_epochs'))


# The best in-training FID so far: its step, value and protocol; its checkpoint (the whole state,
# restorable with `python -m dcgan_jax.evaluate --workdir=<workdir>/best_fid`) is kept in
# <workdir>/best_fid/checkpoints/<step>.
BEST_FID_FILE = 'best_fid.json'
BEST_FID_DIR = 'best_fid'
SAMPLES_DIR = 'samples'
PARAMETERS_TXT = 'parameters.txt'
# The quality bar of the default run (issue: digits quality after the default budget).
QUALITY_BAR = {'max_frechet_distance_ratio': 0.10, 'num_classes_covered': 10,
               'min_class_fraction': 0.03}


class NonFiniteLossError(UserError):
  """A loss became NaN or infinite; the run stopped without saving the bad state."""


# ---- durations ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Durations:
  """Every duration of a run, in generator steps (0 disables a periodic hook).

  Attributes:
    num_examples: Images in the dataset (one epoch).
    steps_per_epoch: Global batches per pass over the dataset (fractional).
    num_train_steps: Total generator updates.
    log_every_steps: Scalars and progress.
    checkpoint_every_steps: Periodic checkpoints (one is always saved at the end).
    sample_every_steps: Sample grids (one is always written at the end).
    quality_every_steps: Digits quality score (also at step 0 and at the end when enabled).
    eval_every_steps: Inception FID.
  """

  num_examples: int
  steps_per_epoch: float
  num_train_steps: int
  log_every_steps: int
  checkpoint_every_steps: int
  sample_every_steps: int
  quality_every_steps: int
  eval_every_steps: int


def _steps_from_config(config: ml_collections.ConfigDict, name: str, steps_per_epoch: float,
                       epochs_field: str | None = None) -> int:
  """Reads ``<name>_steps``; -1 means derive it from ``<name>_epochs`` and the epoch length."""
  steps_field = f'{name}_steps'
  epochs_field = epochs_field or f'{name}_epochs'
  steps = int(config.get(steps_field, 0))
  if steps >= 0:
    return steps
  if steps != -1:
    raise UserError(f'{steps_field} is {steps}; use a number of steps, 0 to disable or -1 to '
                    f'derive it from {epochs_field}.')
  epochs = float(config.get(epochs_field, 0.0))
  if epochs < 0:
    raise UserError(f'{epochs_field} is {epochs}; use a non-negative number of epochs.')
  if epochs == 0:
    return 0
  return max(1, math.ceil(epochs * steps_per_epoch))


def resolve_durations(config: ml_collections.ConfigDict, num_examples: int) -> Durations:
  """Converts every step-or-epoch duration of the config to steps (the only place that does).

  Args:
    config: The run config: ``num_train_steps``/``num_epochs``, ``log_every_steps``,
      ``checkpoint_every_steps``, ``sample_every_steps``, ``quality_every_steps``,
      ``eval_every_steps``; each ``*_steps`` field may be -1, meaning derive it from the matching
      ``*_epochs`` field.
    num_examples: Examples in the training split.

  Returns:
    The :class:`Durations`.

  Raises:
    UserError: the run would have no steps, or a field is negative.
  """
  steps_per_epoch = num_examples / int(config.batch_size)
  num_train_steps = _steps_from_config(config, 'num_train', steps_per_epoch,
                                       epochs_field='num_epochs')
  if num_train_steps <= 0:
    raise UserError('The run has no steps; set num_train_steps to a positive number, or -1 with '
                    f'a positive num_epochs (got num_train_steps={config.num_train_steps}, '
                    f'num_epochs={config.num_epochs}).')
  return Durations(
      num_examples=int(num_examples),
      steps_per_epoch=steps_per_epoch,
      num_train_steps=num_train_steps,
      log_every_steps=_steps_from_config(config, 'log_every', steps_per_epoch),
      checkpoint_every_steps=_steps_from_config(config, 'checkpoint_every', steps_per_epoch),
      sample_every_steps=_steps_from_config(config, 'sample_every', steps_per_epoch),
      quality_every_steps=_steps_from_config(config, 'quality_every', steps_per_epoch),
      eval_every_steps=_steps_from_config(config, 'eval_every', steps_per_epoch),
  )


def is_due(step: int, every_steps: int, num_train_steps: int | None = None) -> bool:
  """The one "is it time?" rule: every ``every_steps`` steps, and at the last step if given."""
  if num_train_steps is not None and step == num_train_steps:
    return True
  return every_steps > 0 and step > 0 and step % every_steps == 0


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


def _sync_processes(name: str) -> None:
  """Waits until every process reaches this point (a no-op with one process).

  Uses the coordination service's barrier, which waits up to an hour, rather than a device
  collective: on CPU, gloo gives up when processes arrive more than ~30 s apart, which work done
  by process 0 alone (data preparation, classifier training, sample grids, FID) easily exceeds.
  """
  if jax.process_count() == 1:
    return
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  ocp.multihost.get_barrier_sync_fn()(key=f'dcgan_jax_{name}', timeout_ms=3600 * 1000)


def _local_copy(x: jax.Array, pmap_layout: bool) -> jax.Array:
  """One device's copy of a replicated array (pmap layout: the first row of the device axis)."""
  if pmap_layout:
    return x[0]
  return x.addressable_data(0)


# ---- validation -----------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the settings that need no data and no files; raises a UserError on the first mistake.

  Covers the image size (4·2^k), model choices (upsampling, activation, dtype, widths), the
  objective, the parallelism mode and the batch size against the device and process counts, the
  schedules, checkpointing and profiling settings, and the device-resident mode.
  """
  models.validate_image_size(config.image_size)
  for name in ('generator_width', 'discriminator_width'):  # The modules say "width" alone.
    width = config[name]
    if not is_integer(width) or width < 1:
      raise UserError(f'{name} must be a positive integer such as 64 (got {width!r}).')
  models.generator_from_config(config)  # Constructing validates every model field.
  models.discriminator_from_config(config)
  train_step_lib.StepConfig.from_config(config)
  if config.parallelism not in parallel.PARALLELISM_MODES:
    raise UserError(f'parallelism must be shard_map or pmap (got {config.parallelism!r}).')
  parallel.check_batch_size(int(config.batch_size), jax.device_count(), jax.process_count())
  for name in ('g_learning_rate', 'd_learning_rate'):
    if not float(config[name]) > 0:
      raise UserError(f'{name} must be positive (got {config[name]!r}).')
  # Building a schedule validates its kind before anything is written.
  state_lib.make_schedule(float(config.g_learning_rate), config.lr_schedule, 1,
                          int(config.get('warmup_steps', 0)))
  if int(config.get('warmup_steps', 0)) < 0:
    raise UserError(f'warmup_steps must be >= 0 (got {config.warmup_steps}).')
  state_lib.make_optimizer(1.0, b1=float(config.adam_b1), b2=float(config.adam_b2))
  num_train_steps = int(config.num_train_steps)  # (-1: from num_epochs and the data's size.)
  if num_train_steps == 0 or num_train_steps < -1:
    raise UserError(f'num_train_steps must be positive, or -1 to derive it from num_epochs '
                    f'(got {num_train_steps}).')
  if num_train_steps == -1 and not float(config.num_epochs) > 0:
    raise UserError(f'num_epochs must be positive with num_train_steps=-1 (got '
                    f'{config.num_epochs}).')
  for name in ('log_every', 'checkpoint_every', 'sample_every', 'quality_every', 'eval_every'):
    _steps_from_config(config, name, steps_per_epoch=1.0)  # Only its checks: no data yet.
  if int(config.num_sample_images) < 1:
    raise UserError(f'num_sample_images must be positive (got {config.num_sample_images}).')
  step_loop.check_steps_per_dispatch(config.get('steps_per_dispatch', 1))
  profiling.check_profile_config(config)
  if int(config.keep_checkpoints) < 1:
    raise UserError(f'keep_checkpoints must be positive (got {config.keep_checkpoints}).')
  data_device_resident.check_device_resident_mode(config)


# Config fields that decide the shapes of the saved state: a checkpoint written with other
# values cannot be restored. (Everything else, learning rates and durations included, may
# change when a run is resumed.)
_STATE_SHAPE_FIELDS = ('image_size', 'channels', 'latent_dim', 'generator_width',
                       'discriminator_width', 'upsample', 'discriminator_norm', 'num_classes',
                       'generator_conditioning')
# What a field added after the first release meant before it existed (older config.json files).
_STATE_SHAPE_DEFAULTS = {'discriminator_norm': 'batch', 'num_classes': 0,
                         'generator_conditioning': 'concat'}


def config_warnings(config: ml_collections.ConfigDict) -> list[str]:
  """Settings that are valid but probably not what a researcher meant, one message each."""
  warnings = []
  norm = config.get('discriminator_norm', 'batch')
  penalties = [name for name in ('gradient_penalty_weight', 'r1_weight')
               if float(config.get(name, 0.0)) > 0]
  if penalties and norm == 'batch' and int(config.image_size) >= 16:  # (8x8: no BatchNorm.)
    warnings.append(
        f'{" and ".join(penalties)} > 0 with discriminator_norm=batch: BatchNorm mixes the '
        "examples of a batch, so the penalty does not see each example's own gradient; "
        "WGAN-GP's critic (and StyleGAN's, for R1) uses discriminator_norm=layer (or none).")
  if (config.get('loss') == 'wasserstein' and not penalties
      and norm != 'spectral'):
    warnings.append(
        'loss=wasserstein with no gradient_penalty_weight, r1_weight or spectral norm: nothing '
        "keeps the critic Lipschitz, so its scores grow without bound (WGAN's weight clipping "
        'is not offered); add --config.gradient_penalty_weight=10 with '
        '--config.discriminator_norm=layer (WGAN-GP), or discriminator_norm=spectral.')
  for name, close in config_files.unknown_fields(config):
    warnings.append(
        f"Config field {name!r} is not one dcgan_jax reads, so it has no effect"
        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else
           ' (the fields are listed in configs/default.py).'))
  return warnings


def duration_warnings(config: ml_collections.ConfigDict, durations: Durations) -> list[str]:
  """Like :func:`config_warnings`, for what only the resolved step counts show."""
  warnings = []
  warmup_steps = int(config.get('warmup_steps', 0))
  if 0 < durations.num_train_steps <= warmup_steps:
    warnings.append(
        f'warmup_steps {warmup_steps} is not shorter than the run ({durations.num_train_steps} '
        'steps): the learning rates never reach their peak, and the '
        f"{config.get('lr_schedule', 'constant')} schedule after the warm-up never starts; "
        'lower warmup_steps.')
  ema_decay = float(config.get('ema_decay', 0.0))
  if 0 < ema_decay < 1 and durations.num_train_steps < 1 / (1 - ema_decay):
    # The sample grids (and sample/evaluate by default) then show a nearly untrained G: flat
    # grey squares after a short run on a small folder with folder.py's 0.999.
    warnings.append(
        f'ema_decay {ema_decay:g} averages over about {round(1 / (1 - ema_decay)):,} steps, '
        f'more than this run has ({durations.num_train_steps:,}): the EMA weights, which the '
        'sample grids, the scores, sample and evaluate use, stay close to the untrained '
        'generator; set ema_decay nearer 1 - 1/num_train_steps (e.g. 0.99 for a few hundred '
        'steps) or 0.')
  return warnings


def describe_objective(config: ml_collections.ConfigDict) -> str:
  """One line naming the objective a run trains with (logged at its start)."""
  step_config = train_step_lib.StepConfig.from_config(config)
  parts = [f'{step_config.loss} loss', f'd_steps {step_config.d_steps}',
           f"discriminator_norm {config.get('discriminator_norm', 'batch')}"]
  if step_config.gradient_penalty_weight > 0:
    parts.append(f'gradient penalty {step_config.gradient_penalty_weight:g}')
  if step_config.r1_weight > 0:
    parts.append(f'R1 {step_config.r1_weight:g}')
  if step_config.real_label < 1:
    parts.append(f'real_label {step_config.real_label:g}')
  augment_text = 'augment ' + (','.join(step_config.augment) or 'none')
  if step_config.augment and step_config.adaptive:
    augment_text += (f' (ADA: adaptive probability, target {step_config.ada_target:g}, '
                     f'{step_config.ada_speed_images:,} images per unit)')
  elif step_config.augment and step_config.augment_probability < 1:
    augment_text += f' (probability {step_config.augment_probability:g})'
  parts.append(augment_text)
  num_classes = int(config.get('num_classes', 0) or 0)
  if num_classes:
    g_text = {'concat': 'one-hot label appended to z',
              'batchnorm': 'class-conditional BatchNorm in G',
              'concat_batchnorm': 'one-hot label appended to z and class-conditional BatchNorm '
                                  'in G'}[
                  config.get('generator_conditioning', 'concat')]
    parts.append(f'class-conditional on {num_classes} classes ({g_text}, projection D)')
  return 'Objective: ' + ', '.join(parts) + '.'


def _has_checkpoints(workdir: str) -> bool:
  """Whether ``workdir`` holds a checkpoint's step folder (a cheap look, no orbax)."""
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  try:
    return any(name.isdigit() for name in os.listdir(directory))
  except OSError:
    return False


def warn_about_changed_class_names(saved: Sequence[str], now: Sequence[str]) -> bool:
  """Warns when a resumed conditional run's classes are named otherwise than when it started.

  Labels are class numbers in sorted folder order: renaming, adding or removing one class
  folder renumbers the others, and the checkpoint's class k then learns another class's
  images. Returns whether it warned.
  """
  if not saved or tuple(saved) == tuple(now):
    return False
  changed = [f'{i} {a!r} -> {b!r}' for i, (a, b) in enumerate(zip(saved, now)) if a != b]
  if len(saved) != len(now):
    changed.append(f'{len(saved)} -> {len(now)} classes')
  logging.warning('The classes are not those this workdir was trained on (%s): label k now '
                  'means another class than in its checkpoints. Restore the class folders, or '
                  'train in a new workdir.', ', '.join(changed[:5] + (['...'] if len(changed) > 5
                                                                     else [])))
  return True


def check_resume_config(config: ml_collections.ConfigDict, saved: dict[str, Any],
                        workdir: str | os.PathLike) -> None:
  """Refuses to resume a run whose checkpoints hold models of another shape.

  Checked before any restore is tried, so the mistake is one line that names the fields rather
  than a failed restore of every checkpoint (orbax reports each with a traceback).

  Args:
    config: the config of the run about to start.
    saved: the config the workdir's checkpoints were written with
      (:func:`dcgan_jax.checkpointing.restore_config`).
    workdir: the run's directory, for the message.

  Raises:
    UserError: a field of ``_STATE_SHAPE_FIELDS`` differs, or EMA or adaptive augmentation
      (ADA) is turned on or off.
  """
  changed = []
  for name in _STATE_SHAPE_FIELDS:
    default = _STATE_SHAPE_DEFAULTS.get(name)
    before, now = saved.get(name, default), config.get(name, default)
    if before is not None and before != now:
      changed.append(f'{name} {before!r} -> {now!r}')
  if 'ema_decay' in saved and (float(saved['ema_decay']) > 0) != (float(config.ema_decay) > 0):
    changed.append(f'ema_decay {saved["ema_decay"]!r} -> {config.ema_decay!r} (EMA on/off)')
  ada_before = float(saved.get('ada_target', 0.0) or 0.0) > 0
  if ada_before != (float(config.get('ada_target', 0.0) or 0.0) > 0):
    # ADA keeps its probability in the state: turning it on or off changes the state's shape.
    changed.append(f"ada_target {saved.get('ada_target', 0.0)!r} -> "
                   f"{config.get('ada_target', 0.0)!r} (adaptive augmentation on/off)")
  if changed:
    raise UserError(f'The checkpoints in {workdir} hold models of another shape than this '
                    f'config asks for ({", ".join(changed)}); resume with the settings they were '
                    'written with (the values left of each ->, as --config.<field> overrides; '
                    "the workdir's config.json lists them all) or use a new --workdir.")


_UNSET = object()  # A field only one of two configs has.


def _changed_fields(config: ml_collections.ConfigDict,
                    saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """``(name, old, new)`` for every config field whose value differs from the saved config's
  (fields only one of them has included, with :data:`_UNSET`), in field order."""
  def flat(tree):  # JSON turns tuples into lists: compare them as lists.
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in flax.traverse_util.flatten_dict(tree, sep='.').items()}

  before, now = flat(saved), flat(config.to_dict())
  return [(name, before.get(name, _UNSET), now.get(name, _UNSET))
          for name in list(now) + [n for n in before if n not in now]
          if before.get(name, _UNSET) != now.get(name, _UNSET)]


def changed_settings(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> list[str]:
  """``'name old -> new'`` for every config field whose value differs from the saved config's
  (fields only one of them has included), in field order."""
  describe = lambda value: 'unset' if value is _UNSET else repr(value)
  return [f'{name} {describe(old)} -> {describe(new)}'
          for name, old, new in _changed_fields(config, saved)]


def changed_settings_effects(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> str:
  """What changing some settings on a resume does beyond the obvious, as sentences ('' if
  none applies): each says what a user would not guess."""
  effects = ''
  if saved.get('batch_size') != config.get('batch_size'):
    effects += (' With another batch_size the epoch scalar goes on counting the images trained '
                'on, but the data stream resumes at step x the new batch_size: some images of '
                'the current epoch are skipped or drawn twice.')
  if saved.get('steps_per_dispatch', 1) != config.get('steps_per_dispatch', 1):
    effects += (' With another steps_per_dispatch the steps run in another program, which '
                'rounds differently: training goes on, agreeing to rounding, not bit for bit.')
  if saved.get('seed') != config.get('seed'):
    effects += (" The step key comes from the checkpoint, so the new seed changes only the data "
                "order and the sample grids' latents from here on.")
  return effects


# What a checkpoint's numbers depend on beyond its config: the arithmetic (how many devices sum
# the batch's statistics and gradients, and in which order; which kernels; which versions) and
# the data path (device-resident batches and tf.data's come in different orders).
_ARITHMETIC_SETUP = ('devices', 'processes', 'device_kind', 'jax', 'dcgan_jax')


def run_setup(num_devices: int, device_resident: bool) -> dict[str, Any]:
  """The facts each checkpoint records about the run that saved it (see :func:`setup_changes`).

  Args:
    num_devices: The devices that share each step (all processes').
    device_resident: Whether the run draws its batches on the devices (else through tf.data):
      with ``device_resident='auto'`` that depends on the device's memory, not on the config.
  """
  import dcgan_jax  # pylint: disable=g-import-not-at-top  # (Lazy: no import cycle.)
  return {'devices': int(num_devices), 'processes': jax.process_count(),
          'device_kind': jax.devices()[0].device_kind,
          'data': 'device-resident' if device_resident else 'tf.data',
          'jax': jax.__version__, 'dcgan_jax': dcgan_jax.__version__}


def setup_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """``'name old -> new'`` for every :func:`run_setup` fact that differs from the saved one.

  A fact the saved record lacks (a checkpoint from before it was recorded) is not compared.
  """
  return [f'{name} {saved[name]!r} -> {now[name]!r}' for name in now
          if name in saved and saved[name] != now[name]]


def describe_setup_changes(step: int, saved: dict[str, Any], now: dict[str, Any],
                           config: ml_collections.ConfigDict) -> str | None:
  """The warning a resume on another setup logs: what changed and what that does to the run;
  None when nothing changed."""
  changes = setup_changes(saved, now)
  if not changes:
    return None
  effects = []
  if any(saved.get(name) != now.get(name) for name in _ARITHMETIC_SETUP if name in saved):
    effects.append('its sums are reduced in another order or by other kernels (~1e-6 to 1e-5 '
                   'apart at first; like any two runs that differ in rounding, the curves drift '
                   'apart over hundreds of steps)')
  if 'data' in saved and saved['data'] != now['data']:
    effect = f"its batches after step {step} are drawn in another order"
    if str(config.get('device_resident', 'auto')).strip() == 'auto':
      effect += (" (device_resident='auto' chose by this device's memory; set it to 'always' "
                 "or 'never' to keep one data path)")
    effects.append(effect)
  return (f'Resuming the checkpoint of step {step} on another setup than it was saved on: '
          f'{", ".join(changes)}. Training goes on from it, but not bit-identically to a run '
          f'never stopped: {"; ".join(effects)}.')


def fid_skipped_warning(config: ml_collections.ConfigDict, eval_every_steps: int) -> str:
  """The warning of a run whose FID is due but has no Inception weights, naming the field the
  user set (the cifar10, mnist and celeba configs give the period in epochs) and how to turn
  it off."""
  if int(config.get('eval_every_steps', 0)) == -1 and float(config.get('eval_every_epochs', 0)):
    period = f'eval_every_epochs is {float(config.eval_every_epochs):g}'
    off = 'eval_every_epochs=0'
  else:
    period, off = f'eval_every_steps is {eval_every_steps}', 'eval_every_steps=0'
  return (f'FID evaluation skipped: {period} but no inception_weights is set (python -m '
          f'dcgan_jax.evaluation.download_weights gets them; --config.{off} turns this off).')


def warn_about_empty_classes(labels: np.ndarray, num_classes: int, dataset: str,
                             names: Sequence[str] = ()) -> list[int]:
  """Warns when some of the ``num_classes`` classes have no image; returns those classes.

  G is asked for every class in turn, and a class without real images gives D nothing to compare
  its samples with: they train on noise (e.g. an array whose labels stop below num_classes, or a
  class folder whose images are all unreadable). With ``names`` (a folder's class folders) the
  classes are named, and the advice is the folders' own: num_classes is their count.
  """
  counts = np.bincount(np.asarray(labels, np.int64).ravel(), minlength=num_classes)
  empty = [int(c) for c in np.flatnonzero(counts[:num_classes] == 0)]
  if empty:
    named = len(names) >= num_classes and class_names.has_names(names)
    shown = ', '.join(f'{c} {names[c]!r}' if named else str(c) for c in empty[:10])
    shown += ', ...' if len(empty) > 10 else ''
    advice = ('Add readable images to those class folders, or remove the folders and lower '
              'num_classes to match' if named else
              'Give them images, or number the classes 0..K-1 and set num_classes to K')
    logging.warning('%d of the num_classes=%d classes have no images in dataset %s (class %s): '
                    'G learns to draw them with nothing real for D to compare them with. %s.',
                    len(empty), num_classes, dataset, shown, advice)
  return empty


def check_workdir_path(workdir: str | os.PathLike) -> None:
  """Fails early, without creating anything, when ``workdir`` can obviously not be created.

  The nearest existing ancestor must be a writable directory. (The definitive check, which
  writes a probe file, runs after the dataset is validated; this one keeps a mistyped path from
  costing the seconds that loading TensorFlow and the dataset take.)
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
  ancestor = path
  while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
    what = 'is not a directory' if not os.path.isdir(ancestor) else 'is not writable'
    problem = (f'The workdir {path} {what}' if ancestor == path else
               f'The workdir {path} is not writable ({ancestor} {what})')
    raise checkpointing.CheckpointError(
        f'{problem}; pass a --workdir in a directory you can write to.')


# ---- sampling and quality -------------------------------------------------------------------


class _Sampler:
  """Generates images from the current state on one local device (train=False)."""

  def __init__(self, config: ml_collections.ConfigDict, step_fn: parallel.DataParallelStep):
    generator = models.generator_from_config(config)
    self._pmap_layout = step_fn.parallelism == 'pmap'
    self.num_classes = generator.num_classes
    self._apply = jax.jit(lambda variables, z, labels: generator.apply(
        variables, z, train=False, **models.label_kwargs(labels)))
    self.output_activation = config.output_activation
    self.value_range = models.output_range(config.output_activation)
    self._apply_uint8 = None  # Built on first use: only FID needs it.

  def variables(self, state: state_lib.GANState) -> dict[str, Any]:
    """G's sampling variables (EMA when kept) as single-device arrays."""
    variables = state.sampling_variables(use_ema=True)
    return jax.tree.map(lambda x: _local_copy(x, self._pmap_layout), variables)

  def labels(self, num: int) -> np.ndarray | None:
    """The classes ``num`` samples are generated with (:func:`models.cycled_labels`)."""
    return models.cycled_labels(num, self.num_classes)

  def generate(self, variables: dict[str, Any], z: np.ndarray | jax.Array,
               labels: np.ndarray | None = None) -> np.ndarray:
    """Images ``float32 [N, H, W, C]`` in the generator's range for latents ``[N, latent_dim]``
    (and, for a conditional generator, classes ``[N]``)."""
    return np.concatenate(jax.device_get(self.dispatch_generate(variables, z, labels)))

  def dispatch_generate(self, variables: dict[str, Any], z: np.ndarray | jax.Array,
                        labels: np.ndarray | None = None) -> list[jax.Array]:
    """Queues :meth:`generate`'s programs and returns their outputs (chunks) without waiting.

    ``np.concatenate`` of the chunks gives :meth:`generate`'s images. The programs read
    ``variables`` in queue order, so later steps may donate the state they came from.
    """
    return [self._apply(variables, z[start:start + _GENERATE_CHUNK],
                        _rows(labels, start, _GENERATE_CHUNK))
            for start in range(0, z.shape[0], _GENERATE_CHUNK)]

  def generate_uint8(self, variables: dict[str, Any], z: jax.Array,
                     labels: np.ndarray | None = None) -> jax.Array:
    """Images ``uint8 [N, H, W, C]`` left on the device (quantised as ``evaluation.to_uint8``).

    For FID: the images go to the Inception network without a host round trip, and nothing
    waits for the device here.
    """
    if self._apply_uint8 is None:
      from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
      apply, value_range = self._apply, self.value_range
      self._apply_uint8 = jax.jit(lambda variables, z, labels: evaluation.to_uint8_jax(
          apply(variables, z, labels), *value_range))
    chunks = [self._apply_uint8(variables, z[start:start + _GENERATE_CHUNK],
                                _rows(labels, start, _GENERATE_CHUNK))
              for start in range(0, z.shape[0], _GENERATE_CHUNK)]
    return chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)


def _rows(labels: np.ndarray | None, start: int, size: int) -> np.ndarray | None:
  return None if labels is None else labels[start:start + size]


def _latents(seed: int, tag: int, num: int, latent_dim: int) -> jax.Array:
  """A fixed batch of latents ``[num, latent_dim]`` for a seed and purpose."""
  key = jax.random.fold_in(jax.random.key(seed), tag)
  return jax.random.normal(key, (num, latent_dim), jnp.float32)


def _classes(count: int) -> str:
  """'1 class', '3 classes'."""
  return f'{count} class' if count == 1 else f'{count} classes'


class _DigitsQualityHook:
  """Scores generated digits with :class:`dcgan_jax.quality.DigitsQuality` (process 0 only)."""

  def __init__(self, config: ml_collections.ConfigDict, sampler: _Sampler):
    from dcgan_jax import quality  # pylint: disable=g-import-not-at-top  # Digits runs only.
    from dcgan_jax.evaluation import manifold  # pylint: disable=g-import-not-at-top

    self._manifold_metrics = manifold.METRICS  # Precision, recall, ... (None for tiny samples).

    cache_dir = config.get('quality_cache_dir', '') or None
    self._quality = quality.DigitsQuality.load_or_train(cache_dir)
    self._sampler = sampler
    self._latents = _latents(int(config.seed), _QUALITY_TAG,
                             int(config.get('num_quality_samples', 1000)),
                             int(config.latent_dim))
    # A conditional generator draws every digit equally often, and is also scored on whether
    # it draws the digit it was asked for.
    self._labels = sampler.labels(self._latents.shape[0])
    self.untrained: dict[str, Any] | None = None
    self.history: list[dict[str, Any]] = []

  def score(self, variables: dict[str, Any]) -> dict[str, Any]:
    images = self._sampler.generate(variables, self._latents, self._labels)
    return self._quality.score(images, value_range=self._sampler.value_range,
                               labels=self._labels)

  def score_untrained(self, variables: dict[str, Any],
                      recorded: dict[str, Any] | None = None) -> None:
    """Scores the untrained generator, or takes the score a checkpoint ``recorded`` of it."""
    usable = (isinstance(recorded, dict)
              and finite_number(recorded.get('frechet_distance')) is not None
              and is_integer(recorded.get('num_classes_covered')))
    self.untrained = dict(recorded) if usable else self.score(variables)
    accuracy = self.untrained.get('label_accuracy')
    logging.info('Digits quality of the untrained generator%s: Fréchet distance %.3f, %s '
                 'covered%s.', ' (recorded in the checkpoint)' if usable else '',
                 self.untrained['frechet_distance'],
                 _classes(self.untrained['num_classes_covered']),
                 '' if accuracy is None else f', label accuracy {accuracy:.3f}')

  def __call__(self, step: int, variables: dict[str, Any], writer) -> dict[str, Any]:
    result = self.score(variables)
    scalars = {
        'quality/frechet_distance': result['frechet_distance'],
        'quality/num_classes_covered': result['num_classes_covered'],
        'quality/min_class_fraction': result['min_class_fraction'],
        'quality/mean_confidence': result['mean_confidence'],
    }
    for name in (*self._manifold_metrics, 'label_accuracy'):
      if result.get(name) is not None:
        scalars[f'quality/{name}'] = result[name]
    if self.untrained is not None:
      scalars['quality/frechet_distance_ratio'] = (result['frechet_distance']
                                                   / self.untrained['frechet_distance'])
    writer.write_scalars(step, scalars)
    self.history.append({'step': step, **_jsonable(result)})
    return result

  def keep_history(self, workdir: str, start_step: int) -> None:
    """A resumed run keeps the scores its earlier processes wrote into ``quality.json`` (they
    were rewritten with this process's alone), up to the step it resumes from: later ones were
    of steps trained again now, and are scored again."""
    try:
      with open(os.path.join(workdir, QUALITY_FILE), encoding='utf-8') as f:
        saved = json.load(f)
    except (OSError, ValueError):  # None yet, or unreadable: nothing to keep.
      return
    history = saved.get('history') if isinstance(saved, dict) else None
    if isinstance(history, list):
      self.history = [entry for entry in history if isinstance(entry, dict)
                      and isinstance(entry.get('step'), int) and entry['step'] <= start_step]

  def write_json(self, workdir: str, step: int, result: dict[str, Any], used_ema: bool) -> None:
    """Writes ``quality.json``: the final score, the untrained one, their ratio and the bar."""
    summary = {'step': step, 'num_samples': int(self._latents.shape[0]), 'used_ema': used_ema,
               **_jsonable(result)}
    if self.untrained is not None:
      ratio = result['frechet_distance'] / self.untrained['frechet_distance']
      summary['untrained_frechet_distance'] = float(self.untrained['frechet_distance'])
      summary['untrained_num_classes_covered'] = int(self.untrained['num_classes_covered'])
      summary['frechet_distance_ratio'] = float(ratio)
      summary['quality_bar'] = dict(QUALITY_BAR)
      summary['meets_quality_bar'] = bool(
          ratio <= QUALITY_BAR['max_frechet_distance_ratio']
          and result['num_classes_covered'] >= QUALITY_BAR['num_classes_covered']
          and result['min_class_fraction'] >= QUALITY_BAR['min_class_fraction'])
    summary['history'] = self.history
    json_files.write_json_atomically(os.path.join(workdir, QUALITY_FILE), summary)


class _InceptionFIDHook:
  """In-training Inception FID against the training images (needs ``inception_weights``).

  The protocol (generated and real image counts, preprocessing, EMA or not) is logged with every
  number: FID from ``eval_num_samples`` images is biased upwards and only comparable to FIDs of
  the same count; ``python -m dcgan_jax.evaluate`` gives the standard 50,000-sample number.

  Every process takes part: each generates and scores its share of the latents (and of the real
  images) on its own devices, and the feature statistics are summed across processes, so every
  process gets the same FID (process 0 logs it).

  With ``eval_precision_recall`` (default on) it also logs precision, recall, density and
  coverage (k = 3, :func:`dcgan_jax.evaluation.manifold_metrics`) on the same Inception
  features: FID mixes poor samples and missing modes into one number, these keep them apart.
  The features of every process's share are gathered for them (``eval_num_samples`` x 2048
  float32 per side, on the host).
  """

  def __init__(self, config: ml_collections.ConfigDict, sampler: _Sampler, every_steps: int):
    from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top

    self._evaluation = evaluation
    self._sampler = sampler
    num_samples = int(config.eval_num_samples)
    if num_samples < 2:
      raise UserError(f'eval_num_samples must be at least 2 (got {num_samples}); FID needs '
                      '2048+ samples to be meaningful, 50000 is the standard.')
    # Configs written before eval_preprocessing was a field have pytorch-fid's preprocessing.
    preprocessing = config.get('eval_preprocessing', 'pytorch_fid')
    if num_samples < jax.process_count():
      raise UserError(f'eval_num_samples ({num_samples}) must be at least the number of '
                      f'processes ({jax.process_count()}).')
    self._extractor = evaluation.InceptionExtractor.from_file(config.inception_weights,
                                                              preprocessing=preprocessing)
    self._precision_recall = bool(config.get('eval_precision_recall', True))
    self.last_manifold: dict[str, float] = {}  # The latest precision, recall, ... (if on).
    real = data.load_all_images(config, max_examples=num_samples)
    self._real, self._real_features = self._statistics(
        real[evaluation.process_share(len(real))], len(real))
    share = evaluation.process_share(num_samples)
    self._latents = _latents(int(config.seed), _EVAL_TAG, num_samples,
                             int(config.latent_dim))[share]
    labels = sampler.labels(num_samples)  # Every class equally often (conditional G).
    self._labels = None if labels is None else labels[share]
    self.protocol = {'num_generated': num_samples, 'num_real': int(self._real.count),
                     'real': f'{config.dataset} ({config.get("split", "train")} split)',
                     'preprocessing': preprocessing,
                     'inception_weights': os.fspath(config.inception_weights)}
    # The period as resolved (configs may give it in epochs: eval_every_steps is -1 there).
    logging.info('FID every %d steps: %d generated vs %d %s images, preprocessing %s.',
                 every_steps, num_samples, self._real.count, self.protocol['real'],
                 preprocessing)

  def _statistics(self, uint8_images: np.ndarray | jax.Array, num_total: int):
    """Feature statistics of every process's images (a collective: all processes call it),
    and with precision/recall on, the features of all ``num_total`` images (else None)."""
    stats = self._evaluation.FeatureStatistics()
    features = []
    if hasattr(self._extractor, 'device_batches'):
      # Features stay on the device and are summed there; one host copy of the sums at the end.
      for out in self._extractor.device_batches(uint8_images):
        stats.update(out['pool'])
        if self._precision_recall:  # Otherwise no batch's features are kept.
          features.append(out['pool'])
    else:  # A stand-in extractor (tests): any callable mapping numpy uint8 images to features.
      features.append(self._extractor(np.asarray(uint8_images))['pool'])
      stats.update(features[-1])
    stats = self._evaluation.allgather_statistics(stats, stats.dim)
    if not self._precision_recall:
      return stats, None
    mine = (np.concatenate([np.asarray(f, np.float32) for f in features]) if features
            else np.zeros((0, stats.dim), np.float32))
    return stats, self._evaluation.allgather_rows(mine, num_total)

  def __call__(self, step: int, variables: dict[str, Any], writer) -> float:
    """The FID at ``step``, on every process; process 0 writes and logs it."""
    fake, fake_features = self._statistics(
        self._sampler.generate_uint8(variables, self._latents, self._labels),
        self.protocol['num_generated'])
    fid = self._evaluation.frechet_distance(self._real, fake)
    k = self._evaluation.manifold.DEFAULT_K
    self.last_manifold = {}
    if fake_features is not None and min(len(fake_features), len(self._real_features)) > k:
      self.last_manifold = self._evaluation.manifold_metrics(self._real_features, fake_features,
                                                             k=k)
    if jax.process_index() == 0:
      writer.write_scalars(step, {'eval/fid': fid, **{f'eval/{name}': value for name, value
                                                      in self.last_manifold.items()}})
      manifold_text = ''.join(f', {name} {value:.3f}' for name, value
                              in self.last_manifold.items())
      logging.info('Step %d: FID %.3f%s (%d generated vs %d %s images, preprocessing %s).',
                   step, fid, manifold_text, self.protocol['num_generated'],
                   self.protocol['num_real'], self.protocol['real'],
                   self.protocol['preprocessing'])
    return fid


def _fid_enabled(config: ml_collections.ConfigDict, durations: Durations) -> bool:
  """Whether in-training FID runs (the same answer on every process)."""
  return durations.eval_every_steps > 0 and bool(config.inception_weights)


def _read_best_fid(workdir: str) -> float:
  """The best FID recorded by an earlier (interrupted) part of this run, else infinity."""
  path = os.path.join(workdir, BEST_FID_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      return float(json.load(f)['fid'])
  except (OSError, ValueError, KeyError, TypeError):
    return math.inf


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
  return {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v)
          for k, v in result.items()}


def write_sample_grid(workdir: str, step: int, images: np.ndarray, writer,
                      value_range: tuple[float, float], num_classes: int = 0) -> str:
  """Writes ``samples/step_XXXXXX.png`` and the same grid to TensorBoard; returns the path.

  A conditional generator's samples (classes cycled) get one column per class where that fits.
  """
  path = os.path.join(workdir, SAMPLES_DIR, f'step_{step:06d}.png')
  grid = sample_grid.save_grid(images, path, value_range=value_range,
                               num_columns=sample_grid.columns_for_classes(num_classes))
  writer.write_images(step, {'samples': grid[None]})
  return path


# ---- metrics --------------------------------------------------------------------------------


def _make_metrics_collection(names: list[str]):
  """A clu Collection averaging each named scalar over the steps between two logs."""
  from clu import metrics as clu_metrics  # pylint: disable=g-import-not-at-top
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in sorted(names)})


@flax.struct.dataclass
class _NonFiniteTracker:
  """The first step whose d_loss or g_loss was not finite (-1: none), found on the device.

  Checking on the host every step would stall asynchronous dispatch; this is read only when
  logging, saving or sampling.
  """

  step: jax.Array
  which: jax.Array  # 0: d_loss, 1: g_loss.

  @classmethod
  def empty(cls) -> _NonFiniteTracker:
    return cls(step=jnp.asarray(-1, jnp.int32), which=jnp.asarray(0, jnp.int32))

  def update(self, metrics: dict[str, jax.Array], step: jax.Array) -> _NonFiniteTracker:
    d_bad = ~jnp.isfinite(metrics['d_loss'])
    g_bad = ~jnp.isfinite(metrics['g_loss'])
    first = (self.step < 0) & (d_bad | g_bad)
    return _NonFiniteTracker(step=jnp.where(first, step, self.step),
                             which=jnp.where(first, jnp.where(d_bad, 0, 1), self.which))


def _make_accumulate(collection_cls, pmap_layout: bool, jit: bool = True):
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


def _on_host_cpu():
  """A context in which jnp computations run on the host's CPU device (where JAX has one)."""
  try:
    return jax.default_device(jax.local_devices(backend='cpu')[0])
  except RuntimeError:  # JAX_PLATFORMS leaves the CPU out.
    return contextlib.nullcontext()


def _check_finite(tracker: _NonFiniteTracker, checkpointer) -> None:
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


# ---- the program ----------------------------------------------------------------------------


def _checkpoint(checkpointer: background_checkpoints.BackgroundCheckpointer, step: int,
                state: state_lib.GANState, tracker: _NonFiniteTracker, train_key: jax.Array,
                config: ml_collections.ConfigDict, step_fn: parallel.DataParallelStep,
                metadata: dict[str, Any]) -> None:
  """A periodic checkpoint of ``state`` at ``step``, unless a loss has become non-finite.

  In the background (see :mod:`dcgan_jax.background_checkpoints`) this only dispatches a device
  copy of the state and the tracker and returns; the worker waits for them, checks and saves.
  """
  if checkpointer.background:
    state, tracker = background_checkpoints.device_copy((state, tracker))

  def save(target: checkpointing.Checkpointer) -> None:
    _check_finite(tracker, target)
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


def _save(checkpointer: checkpointing.Checkpointer, step: int, state: state_lib.GANState,
          train_key: jax.Array, config: ml_collections.ConfigDict,
          step_fn: parallel.DataParallelStep, metadata: dict[str, Any],
          force: bool = False) -> None:
  # Host (numpy) copies: orbax would otherwise slice every replicated array per device, one
  # compiled op each; the state is small, and either parallelism mode can resume the other's.
  # The key travels as its raw uint32 data for the same reason (and because a single-device key
  # cannot be saved in a multi-process run).
  state = step_fn.host_state(state)
  key_data = np.asarray(jax.device_get(jax.random.key_data(train_key)))
  # ``metadata`` (the loop's step_metadata) records facts of the step beside the run's setup.
  checkpointer.save(step, {'gan': state, 'train_key': key_data}, config.to_dict(), force=force,
                    metadata=metadata)


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
  """
  config = ml_collections.ConfigDict(config.to_dict())  # A private copy we may annotate.
  if str(config.get('dataset_path', '') or ''):
    # Saved as an absolute path: config.json is what `probe` and `evaluate` read, from
    # whatever folder they run in (a relative 'pets' was then looked for in the wrong place).
    config.dataset_path = os.path.abspath(os.path.expanduser(str(config.dataset_path)))
  workdir = os.fspath(workdir)
  is_chief = jax.process_index() == 0

  # --- 1. Everything that can be wrong is checked before anything is written. ----------------
  validate_config(config)
  check_workdir_path(workdir)
  if _has_checkpoints(workdir):  # Refused now, not after minutes of preparing the data.
    try:
      saved_config = checkpointing.restore_config(workdir)
    except UserError:  # No readable config: the restore below reports what is wrong.
      saved_config = None
    if saved_config is not None:
      check_resume_config(config, saved_config, workdir)
  if is_chief:
    for message in config_warnings(config):
      logging.warning('%s', message)
  info = data.dataset_info(config)
  data.check_num_classes(config, info)
  if is_chief and config.get('num_classes', 0):
    warn_about_changed_class_names(class_names.load(workdir), info.class_names)
  logging.info('Dataset %s (split %s): %d examples of %s%s.', info.name, info.split,
               info.num_examples, info.image_shape, info.describe_classes())
  durations = resolve_durations(config, info.num_examples)
  if is_chief:
    for message in duration_warnings(config, durations):
      logging.warning('%s', message)
  with warnings_lib.catch_warnings():
    # config_warnings has said so already, in the config's own terms.
    warnings_lib.simplefilter('ignore', train_step_lib.PenaltyWithBatchNormWarning)
    step_fn = parallel.DataParallelStep(
        models.generator_from_config(config), models.discriminator_from_config(config),
        train_step_lib.StepConfig.from_config(config), parallelism=config.parallelism)
  device_resident = data.use_device_resident(config, info.num_bytes)
  if device_resident and config.parallelism == 'pmap' and jax.process_count() > 1:
    # pmap takes host rows per device; the sampler's global batch would need a cross-process
    # gather, so multi-process pmap runs read through tf.data instead.
    device_resident = False
  if not device_resident and str(config.dataset).strip() == 'array':
    raise UserError(f"dataset 'array' ({info.num_bytes / 2**20:.0f} MiB) is read on the devices "
                    "only; set device_resident to 'auto' or 'always' (with auto, raise "
                    "device_resident_max_bytes), and use shard_map for multi-process runs.")
  # On either data path: tf.data would fill each batch by repeating images.
  if int(config.batch_size) > info.num_examples:
    raise UserError(f'batch_size {config.batch_size} exceeds the {info.num_examples} examples '
                    'of the dataset; use a smaller batch_size.')
  sampler = None
  if device_resident:
    if data.conditional(config):
      images, labels = data.load_all_images(config, with_labels=True)
      if is_chief:
        warn_about_empty_classes(labels, int(config.num_classes), info.name, info.class_names)
    else:
      images, labels = data.load_all_images(config), None
    sampler = data.DeviceResidentSampler(images, int(config.batch_size), int(config.seed),
                                         mesh=step_fn.mesh, labels=labels,
                                         num_classes=int(config.get('num_classes', 0)) or None)
    del images, labels
  image_sampler = _Sampler(config, step_fn)
  fid_hook = None
  if durations.eval_every_steps > 0 and config.inception_weights:
    # Every process loads (and checks) the weights now; each scores its share of the images.
    fid_hook = _InceptionFIDHook(config, image_sampler, durations.eval_every_steps)
  workdir = os.fspath(checkpointing.check_workdir_writable(workdir))
  _sync_processes('validated')
  logging.info('Run: %d steps (%.1f per epoch), global batch %d on %d device%s (%s), data %s.',
               durations.num_train_steps, durations.steps_per_epoch, config.batch_size,
               step_fn.num_devices, '' if step_fn.num_devices == 1 else 's', config.parallelism,
               'device-resident' if device_resident else 'tf.data')

  # --- 2. Lock, restore, write the run's config. ---------------------------------------------
  setup = run_setup(step_fn.num_devices, device_resident)
  with checkpointing.acquire_workdir_lock(workdir), checkpointing.Checkpointer(
      workdir, max_to_keep=int(config.keep_checkpoints), run_setup=setup) as checkpointer:
    root_key = jax.random.key(int(config.seed))
    initial_state = create_train_state(config, jax.random.fold_in(root_key, _INIT_TAG),
                                       durations.num_train_steps)
    train_key = jax.random.fold_in(root_key, _TRAIN_TAG)
    state = parallel.replicate(initial_state, step_fn.mesh)
    start_step = images_seen_start = 0
    untrained_quality = None
    if checkpointer.latest_step() is not None:
      saved_config = checkpointing.restore_config(workdir)
      check_resume_config(config, saved_config, workdir)
      changes = changed_settings(config, saved_config)
      if changes and is_chief:  # Allowed (e.g. a longer run), but never silently.
        logging.warning('Resuming with changed settings: %s. config.json will hold the new ones; '
                        'each checkpoint keeps the config it was saved with.%s',
                        ', '.join(changes), changed_settings_effects(config, saved_config))
      target = {'gan': state,
                'train_key': parallel.replicate(jax.random.key_data(train_key), step_fn.mesh)}
      restored, step_config, start_step = checkpointer.restore(target)
      saved_metadata = checkpointer.saved_run_setup(start_step)
      images_seen_start = saved_images_seen(start_step, saved_metadata, step_config, config)
      if all(_keeps_untrained_quality(name)
             for name, _, _ in _changed_fields(config, step_config)):
        untrained_quality = saved_metadata.get(UNTRAINED_QUALITY_KEY)
      state = restored['gan']
      # Rebuilt from host data, the key is uncommitted like a fresh one, free to follow the
      # replicated state into the step.
      key_data = np.asarray(restored['train_key'].addressable_data(0))
      train_key = jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(train_key))
      logging.info('Resumed from the checkpoint of step %d.', start_step)
      setup_warning = describe_setup_changes(
          start_step, checkpointer.saved_run_setup(start_step), setup, config)
      if setup_warning and is_chief:
        logging.warning('%s', setup_warning)
    if is_chief:  # After the lock and the resume checks, whose errors it would bury.
      logging.info('%s', describe_objective(config))
      logging.info('Models:\n%s', summary.summarize(config))
    if step_fn.parallelism == 'pmap':
      # pmap wants host values to stack per device; every process holds a full replica.
      state = step_fn.place_state(
          jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state))
    if is_chief:
      checkpointing.save_config_json(workdir, config.to_dict())
      if config.get('num_classes', 0) and class_names.has_names(info.class_names):
        class_names.save(workdir, info.class_names)  # For sample/evaluate --label=<name>.
      # A run killed between two checkpoints logged steps that this one trains again.
      # Started from scratch, the step-0 records (hparams) of a run without checkpoints go too.
      set_aside = run_logs.set_aside_logs_after(workdir, start_step or -1)
      if set_aside:
        logging.warning(
            'The earlier run logged %d record%s after %s before it was stopped; this run '
            'trains those steps again, so they are set aside (the files as they were are in '
            '%s) and TensorBoard shows each step once.', set_aside,
            '' if set_aside == 1 else 's',
            f'step {start_step}, its last checkpoint,' if start_step else 'its start',
            os.path.join(workdir, run_logs.ROLLED_BACK_DIR))

    # TensorBoard through clu (TensorFlow loads here, keeping imports and config checks fast),
    # or metrics.jsonl where TensorFlow is not installed.
    writer = writers.create_writer(workdir, just_logging=not is_chief)
    # Every process saves the best-FID checkpoint together (orbax writes collectively).
    best_checkpointer = (checkpointing.Checkpointer(os.path.join(workdir, BEST_FID_DIR),
                                                    max_to_keep=1, run_setup=setup)
                         if _fid_enabled(config, durations) else None)
    # Periodic saves in a worker thread where that is safe (see background_checkpoints).
    background = (bool(config.get('background_checkpoints', True))
                  and jax.process_count() == 1 and step_fn.parallelism == 'shard_map')
    try:
      with background_checkpoints.BackgroundCheckpointer(checkpointer,
                                                         background) as loop_checkpointer:
        return _train_loop(config, workdir, durations, step_fn, sampler, image_sampler,
                           fid_hook, loop_checkpointer, writer, initial_state, state, train_key,
                           start_step, images_seen_start, untrained_quality,
                           best_checkpointer)
    finally:
      if best_checkpointer is not None:
        best_checkpointer.close()
      writer.flush()
      writer.close()


class _ProgressClock:
  """Calls the progress reporter (clu's ``ReportProgress`` or ``writers.ProgressLogger``) after
  each dispatch, so that its steps/s measure the device's work rather than the dispatching.

  Dispatch is asynchronous, and the reporter's clock starts at its first call, right after the
  first (compiling) dispatch: the steps up to the first report were then only queued, and the
  first steps/s logged was thousands (2519 at step 5 of a run doing 25). So the clock starts
  once the first dispatch has finished (at its last step: a fused chunk's steps all end then),
  and every report that ends a window waits for its steps to have run. (Waiting at the first
  report only left the second window ending at a dispatch while it began at a finished step:
  288 steps/s logged at step 40 of a run doing 17.) The wait costs one dispatch's latency per
  log window, while the device would otherwise start the next step. clu also reports at the
  run's last step, whatever the window: that report waits too (a 5-step run, or a resumed one
  ending between windows, logged 1,400 steps/s for 60).

  Attributes:
    start: ``(time.monotonic(), step)`` when the clock started, or None before: where the
      loop's own first img/s window begins (not at the compiling first dispatch).
  """

  def __init__(self, report_progress, every_steps: int, last_step: int | None = None):
    self._report = report_progress
    self._every_steps = every_steps
    self._last_step = last_step
    self.start: tuple[float, int] | None = None

  def __call__(self, first: int, done: int, state: state_lib.GANState) -> None:
    """Reports steps ``first .. done``, which the last dispatch ran."""
    if self.start is None:
      jax.block_until_ready(state.step)
      self._report(done)  # The clock starts here (the first call never reports).
      self.start = (time.monotonic(), done)
      return
    ends_window = (self._every_steps
                   and done // self._every_steps > (first - 1) // self._every_steps)
    if ends_window or (self._last_step is not None and done >= self._last_step):
      jax.block_until_ready(state.step)  # A report falls in these steps: it ends a window.
    for step in range(first, done + 1):  # clu's action wants every step once.
      self._report(step)


def _train_loop(config, workdir, durations, step_fn, sampler, image_sampler, fid_hook,
                checkpointer, writer, initial_state, state, train_key,
                start_step, images_seen_start, untrained_quality=None,
                best_checkpointer=None) -> state_lib.GANState:
  """The loop itself (see :func:`train_and_evaluate`); ``checkpointer`` is a
  :class:`~dcgan_jax.background_checkpoints.BackgroundCheckpointer`, ``images_seen_start``
  the images trained on up to ``start_step``, ``untrained_quality`` the untrained generator's
  digits score as the checkpoint recorded it (None: score it)."""
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
    metadata = {IMAGES_SEEN_KEY: images_seen(step)}
    if quality_hook is not None and quality_hook.untrained is not None:
      metadata[UNTRAINED_QUALITY_KEY] = _jsonable(quality_hook.untrained)
    return metadata

  if start_step == 0 and is_chief:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
    # Every parameter's shape, mean and std at initialisation goes to a file, not the console:
    # the model table logged above already counts them, and 30 more lines bury the run's own.
    with open(os.path.join(workdir, PARAMETERS_TXT), 'w', encoding='utf-8') as f:
      for name, params in (('Generator', initial_state.generator.params),
                           ('Discriminator', initial_state.discriminator.params)):
        f.write(f'{name}\n{parameter_overview.get_parameter_overview(params)}\n\n')

  sample_latents = _latents(int(config.seed), _SAMPLE_TAG, int(config.num_sample_images),
                            int(config.latent_dim))
  sample_labels = image_sampler.labels(int(config.num_sample_images))
  # Decided from the config alone, so that every process agrees (the hook is process 0's).
  quality_enabled = config.dataset == 'digits' and durations.quality_every_steps > 0
  quality_hook = None
  if quality_enabled and is_chief:
    quality_hook = _DigitsQualityHook(config, image_sampler)
    quality_hook.score_untrained(image_sampler.variables(initial_state), untrained_quality)
    if start_step > 0:
      quality_hook.keep_history(workdir, start_step)
  if durations.eval_every_steps > 0 and not config.inception_weights:
    logging.warning(fid_skipped_warning(config, durations.eval_every_steps))
  best_fid = _read_best_fid(workdir)
  del initial_state
  _sync_processes('start')

  g_schedule, d_schedule = make_schedules(config, num_train_steps)
  d_steps = int(config.d_steps)
  iterator = None
  if sampler is None:
    iterator = data.create_train_iterator(config, start_step=start_step)

  # The reporter logs progress only: steps_per_sec and uptime are written with the other
  # scalars (write_log), from the clock img_per_sec and eta_seconds use. clu's own clock ran
  # over other windows, so that img_per_sec / batch_size and steps_per_sec disagreed.
  report_progress = writers.create_progress(num_train_steps, None,
                                            durations.log_every_steps or None)
  uptime_start = time.monotonic()
  progress_clock = _ProgressClock(report_progress, durations.log_every_steps,
                                  last_step=num_train_steps)
  collection_cls = None
  accumulate = None
  collection = None
  tracker = _NonFiniteTracker.empty()
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

  def hooks(step: int, state: state_lib.GANState, final: bool) -> None:
    """Sample grids and quality (process 0) and FID (all processes) at ``step``."""
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
          write_sample_grid(workdir, step, images, writer, image_sampler.value_range,
                            image_sampler.num_classes)
      if need_quality:
        with report_progress.timed('quality'):
          result = quality_hook(step, variables, writer)
          manifold_text = ('' if result.get('precision') is None else
                           f", precision {result['precision']:.2f}, recall {result['recall']:.2f}")
          if result.get('label_accuracy') is not None:
            manifold_text += f", label accuracy {result['label_accuracy']:.3f}"
          logging.info('Step %d digits quality: Fréchet distance %.3f (%.1f%% of untrained), '
                       '%s covered, smallest class %.3f%s.', step,
                       result['frechet_distance'],
                       100 * result['frechet_distance'] / quality_hook.untrained['frechet_distance'],
                       _classes(result['num_classes_covered']), result['min_class_fraction'],
                       manifold_text)
          if final:
            quality_hook.write_json(workdir, step, result, used_ema=state.ema is not None)
    if need_fid:  # Every process scores its share of the images; all get the same FID.
      with report_progress.timed('fid'):
        fid = fid_hook(step, variables, writer)
    _sync_processes(f'hooks_{step}')  # The others wait here, not in the next step's collective.
    if best_checkpointer is not None and (final or is_due(step, durations.eval_every_steps)):
      keep_best(step, state, fid)

  def keep_best(step: int, state: state_lib.GANState, fid: float | None) -> None:
    """Saves the state as the best-FID checkpoint when the FID is a new best."""
    nonlocal best_fid
    improved = fid is not None and fid < best_fid
    if jax.process_count() > 1:
      # Every process measured the same FID, but only process 0 keeps the best so far (it
      # writes best_fid.json); every process takes part in saving, so its answer goes to all.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      improved = bool(multihost_utils.broadcast_one_to_all(np.asarray(improved)))
    if not improved:
      return
    _save(best_checkpointer, step, state, train_key, config, step_fn, step_metadata(step),
          force=True)
    if is_chief:
      best_fid = fid
      json_files.write_json_atomically(os.path.join(workdir, BEST_FID_FILE),
                             {'step': step, 'fid': fid, 'used_ema': state.ema is not None,
                              'checkpoint': os.path.join(workdir, BEST_FID_DIR),
                              **fid_hook.last_manifold, **fid_hook.protocol})
      logging.info('Step %d: best FID so far (%.3f); checkpoint kept in %s.', step, fid,
                   os.path.join(workdir, BEST_FID_DIR))

  fused = None
  steps_per_dispatch = step_loop.check_steps_per_dispatch(config.get('steps_per_dispatch', 1))
  if sampler is not None and not pmap_layout:  # One program per dispatch (see step_loop).
    # The metric names come from the step's output structure, without running it (traced
    # un-jitted: a jit with compiler_options cannot be nested).
    metric_names = list(jax.eval_shape(step_fn.mapped, state, sampler.batch(start_step),
                                       train_key)[1])
    collection_cls = _make_metrics_collection(metric_names)
    collection = collection_cls.empty()
    fused = step_loop.FusedSteps(step_fn, sampler,
                                 _make_accumulate(collection_cls, pmap_layout, jit=False),
                                 steps_per_dispatch)
    if steps_per_dispatch > 1:
      logging.info('Up to %d steps per device program (steps_per_dispatch).', steps_per_dispatch)
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
      _check_finite(sample_tracker, checkpointer)  # As before a grid written at once.
      if chunks is not None:
        write_sample_grid(workdir, sample_step, np.concatenate(chunks), writer,
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
    _check_finite(log_tracker, checkpointer)
    scalars = {k: float(v) for k, v in log_collection.compute().items()}  # numpy
    steps_per_sec = (log_step - last_log_step) / max(now - last_log_time, 1e-9)
    with _on_host_cpu():
      scalars.update({
          'g_learning_rate': float(g_schedule(log_step - 1)),
          'd_learning_rate': float(d_schedule(log_step * d_steps - 1)),
      })
    scalars.update({
        'steps_per_sec': steps_per_sec,
        'img_per_sec': steps_per_sec * batch_size,
        'eta_seconds': (num_train_steps - log_step) / steps_per_sec,
        'uptime': now - uptime_start,  # Seconds since this process's loop started.
        'epoch': images_seen(log_step) / durations.num_examples,
    })
    writer.write_scalars(log_step, scalars)
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
        progress_clock(step + 1, done, state)
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
          collection_cls = _make_metrics_collection(list(metrics))
          accumulate = _make_accumulate(collection_cls, pmap_layout)
          collection = collection_cls.empty()
        collection, tracker = accumulate(collection, tracker, metrics, np.int32(step + 1))
        done = step + 1
        profiler.after_dispatch(done, state)
        progress_clock(done, done, state)

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
        _check_finite(tracker, checkpointer)
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
          _check_finite(tracker, checkpointer)
          hooks(done, state, final=False)
          # Their scalars (FID, quality) belong to a step a resumed run does not evaluate again.
          writer.flush()
      step = done
  except BaseException:
    stop_signals.restore()
    raise
  finally:  # A trace still on here (training failed or stopped) is stopped and written.
    profiler.close(step)

  # --- The end: a last checkpoint, samples and scores of the final state. -------------------
  if start_step >= num_train_steps:
    stop_signals.restore()
    # The run that reached this step saved it and wrote its final samples and scores; doing
    # that again would add a second point at the same step to every curve.
    logging.info('The checkpoint is already at step %d >= num_train_steps %d; nothing to train '
                 '(raise num_train_steps to train on; sample and evaluate read this run).',
                 start_step, num_train_steps)
    return step_fn.host_state(state)
  final_step = num_train_steps
  # A first SIGTERM or Ctrl-C still waits for the final checkpoint (it used to stop at once and
  # lose every step since the last periodic one); the final samples and scores are skipped then.
  try:
    write_samples()
    write_log()
    _check_finite(tracker, checkpointer)
    writer.flush()  # As before every checkpoint (see the loop).
    _save(checkpointer, final_step, state, train_key, config, step_fn, step_metadata(final_step),
          force=True)
    checkpointer.wait_until_finished()
  finally:
    stop_signals.restore()
  if stop_signals.received is not None:
    raise preemption.TrainingStopped(stop_signals.received, final_step, workdir)
  try:
    hooks(final_step, state, final=True)
  except preemption.TrainingStopped:
    raise
  except KeyboardInterrupt:  # Ctrl-C during the final scores: the final step is saved.
    raise preemption.TrainingStopped(signal.SIGINT, final_step, workdir) from None
  checkpointer.wait_until_finished()
  if is_chief:  # The sample grids over the run, as one animation.
    animation.write_progress_gif(os.path.join(workdir, SAMPLES_DIR))
  logging.info('Finished at step %d; outputs in %s.', final_step, workdir)
  return step_fn.host_state(state)
