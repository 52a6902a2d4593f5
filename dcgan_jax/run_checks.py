"""What the training program checks and warns about before and while it resumes a run.

Mostly functions of the config (and, for a resume, of the config and setup a checkpoint was
saved with; a few also look at the workdir or the devices): :func:`validate_config` raises a
:class:`~dcgan_jax.errors.UserError` on the first mistake; :func:`config_warnings` and :func:`duration_warnings` list settings that are valid but
probably not meant; :func:`check_resume_config` refuses checkpoints of another shape, and
:func:`changed_settings` / :func:`describe_setup_changes` say what a resume changes. The
training loop (:mod:`dcgan_jax.train`) calls them; ``main`` calls :func:`validate_config` and
:func:`check_workdir_path` before it loads any data.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import pathlib
import re
from typing import Any, Sequence

from absl import logging
import flax
import jax
import ml_collections
import numpy as np

from dcgan_jax import checkpointing
from dcgan_jax import class_names
from dcgan_jax import config_files
from dcgan_jax import durations as durations_lib
from dcgan_jax import models
from dcgan_jax import parallel
from dcgan_jax import profiling
from dcgan_jax import run_logs
from dcgan_jax import state as state_lib
from dcgan_jax import step_loop
from dcgan_jax import train_hooks
from dcgan_jax import train_step as train_step_lib
from dcgan_jax.data import device_resident as data_device_resident
from dcgan_jax.evaluation import preprocessing as eval_preprocessing
from dcgan_jax.errors import UserError, is_integer


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the settings that need no data and no files; raises a UserError on the first mistake.

  Covers the image size (4·2^k), model choices (upsampling, activation, dtype, widths), the
  objective, the parallelism mode and the batch size against the device and process counts, the
  schedules, checkpointing and profiling settings, and the device-resident mode. A config that
  lacks fields (one built by hand) gets a UserError naming them, not ml_collections' bare
  ``AttributeError: 'image_size'``.
  """
  try:
    _validate_config(config)
  except (AttributeError, KeyError) as e:
    missing = [name for name in config_files.default_field_names() if name not in config]
    asked = re.search(r"'(\w+)'", str(e))  # The field the check asked for goes first.
    if not asked or asked.group(1) not in missing:
      raise  # Not a missing field: a real error, left as it is.
    missing.remove(asked.group(1))
    missing.insert(0, asked.group(1))
    shown = ', '.join(missing[:8]) + (f' and {len(missing) - 8} more' if len(missing) > 8 else '')
    raise UserError(f'The config lacks {len(missing)} field{"s" if len(missing) > 1 else ""} '
                    f'that configs/default.py defines ({shown}); start from the defaults, e.g. '
                    'config = dcgan_jax.train.load_config(dcgan_jax.config_files.DEFAULT_CONFIG) '
                    'or a file in configs/, then config.update(...) your changes.') from e


# Far past any DCGAN that fits a device; sizes beyond failed deep inside jax or aborted.
_MAX_WIDTH = 8192
# G's first block and D's last have width * 2**(k-1) = width * image_size / 8 channels; one
# kernel between two such layers holds 8 * widest**2 parameters (8.6e9 at 32,768: 137 GB of
# state with Adam and EMA). 256x256 at width 8,192 (262,144 channels) asked for 1.2 TB.
_MAX_WIDEST_LAYER = 32_768
_SIZE_LIMITS = (('latent_dim', 65_536, 100), ('image_channel_multiple', 1024, 8),
                ('num_sample_images', 10_000, 64), ('d_steps', 1000, 5))


def _scored(config: ml_collections.ConfigDict, period: str) -> bool:
  """Whether ``<period>_steps`` / ``<period>_epochs`` turn a score on (before the data is known)."""
  steps = int(config.get(f'{period}_steps', 0))
  return steps > 0 or (steps != 0 and float(config.get(f'{period}_epochs', 0.0)) > 0)


def _check_channels(config: ml_collections.ConfigDict) -> None:
  """Channels every part of a run can handle, refused before TensorFlow loads (seconds)."""
  channels, dataset = config.channels, str(config.get('dataset', '')).strip()
  valid = (1, 3, 4) if dataset == 'array' else (1, 3)
  if not is_integer(channels) or channels not in valid:
    # Any other count trained, then failed at the first sample grid (a PNG has 1, 3 or 4).
    raise UserError('channels must be 1 (grey) or 3 (RGB)'
                    + (', or 4 (RGBA) for dataset array' if dataset == 'array' else
                       '; 4 (RGBA) is read only from dataset array')
                    + f' (got {channels!r}).')
  # (FID runs only with weights: the shipped configs turn it on by epochs, without them.)
  if channels == 4 and _scored(config, 'eval_every') and config.get('inception_weights'):
    raise UserError('channels 4 (RGBA) cannot be scored: FID, IS and KID run Inception on grey '
                    'or RGB images. Set eval_every_steps=0, or drop the alpha channel from the '
                    'array and set channels=3.')


def _validate_config(config: ml_collections.ConfigDict) -> None:
  models.validate_image_size(config.image_size)
  for name in ('generator_width', 'discriminator_width'):  # The modules say "width" alone.
    width = config[name]
    if not is_integer(width) or not 1 <= width <= _MAX_WIDTH:
      raise UserError(f'{name} must be a positive integer such as 64, at most {_MAX_WIDTH:,} '
                      f'(got {width!r}).')
    widest = width * int(config.image_size) // 8
    if widest > _MAX_WIDEST_LAYER:
      most = max(1, _MAX_WIDEST_LAYER * 8 // int(config.image_size))
      raise UserError(f'{name} {width:,} at image_size {config.image_size} makes the widest layer '
                      f'{widest:,} channels ({name} x image_size / 8), far more than any device '
                      f'holds; use at most {most:,} at this size (64 is the paper\'s).')
  _check_channels(config)
  # Sizes far past any model that fits a device failed deep inside jax (an allocation of
  # terabytes, "random bits array of size exceeding 2 ** 64", or an abort after training).
  for name, largest, example in _SIZE_LIMITS:
    value = config.get(name, None)
    if value is not None and is_integer(value) and value > largest:
      raise UserError(f'{name} {value:,} is far larger than any model or run fits; use at most '
                      f'{largest:,} (such as {example}).')
  seed = config.get('seed', 0)
  if not is_integer(seed) or not -2**63 <= seed < 2**63:
    raise UserError(f'seed must be a whole number that fits in 64 bits, such as 0 (got {seed!r}).')
  models.generator_from_config(config)  # Constructing validates every model field.
  models.discriminator_from_config(config)
  step_config = train_step_lib.StepConfig.from_config(config)
  if 'ada_color' in step_config.augment and int(config.channels) not in (1, 3):
    # Found only while the first step compiled, after the workdir was started.
    raise UserError(f'augment {config.augment!r} includes ada_color (as bgc and bgcfnc do), '
                    f'which transforms grey or RGB images, not channels {config.channels}; '
                    'leave it out, e.g. --config.augment=blit,geom,filter,noise,cutout.')
  if config.parallelism not in parallel.PARALLELISM_MODES:
    raise UserError(f'parallelism must be shard_map or pmap (got {config.parallelism!r}).')
  parallel.check_batch_size(int(config.batch_size), jax.device_count(), jax.process_count())
  for name in ('g_learning_rate', 'd_learning_rate'):
    if not (math.isfinite(float(config[name])) and float(config[name]) > 0):
      raise UserError(f"{name} must be a finite positive number, such as the paper's 2e-4 (got "
                      f'{config[name]!r}).')
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
  if num_train_steps == -1 and not (math.isfinite(float(config.num_epochs))
                                    and float(config.num_epochs) > 0):
    raise UserError(f'num_epochs must be a finite positive number with num_train_steps=-1 (got '
                    f'{config.num_epochs}).')
  for name in ('log_every', 'checkpoint_every', 'sample_every', 'quality_every', 'eval_every'):
    # Only its checks: no data yet.
    durations_lib.steps_from_config(config, name, steps_per_epoch=1.0)
  if int(config.num_sample_images) < 1:
    raise UserError(f'num_sample_images must be positive (got {config.num_sample_images}).')
  # Counts of samples a score needs: refused now, not after training up to the first score.
  for period, count in (('quality_every', 'num_quality_samples'),
                        ('eval_every', 'eval_num_samples')):
    if _scored(config, period) and count in config and not int(config[count]) >= 2:
      raise UserError(f'{count} must be at least 2 to score (got {config[count]}); or set '
                      f'{period}_steps=0 to turn the score off.')
  for name in ('device_resident_max_bytes', 'shuffle_buffer_size'):
    if name in config and (not is_integer(config[name]) or config[name] < 0):
      raise UserError(f'{name} must be a whole number >= 0 (got {config[name]!r}).')
  preprocessing = config.get('eval_preprocessing', 'pytorch_fid')
  if preprocessing not in eval_preprocessing.MODES:  # Checked with FID off too, as other choices.
    raise UserError(f"eval_preprocessing must be one of {' or '.join(eval_preprocessing.MODES)} "
                    f'(got {preprocessing!r}).')
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


_ADA_SPEED_DEFAULT = 500_000  # configs/default.py's (ADA's own) ada_speed_images.


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
  # Augmentation fields that the other settings make unread (two runs differing only there
  # trained alike, without a word).
  augment, adaptive = str(config.get('augment', '') or ''), float(config.get('ada_target', 0)) > 0
  probability = float(config.get('augment_probability', 1.0))
  if adaptive and probability != 1.0:
    warnings.append(
        f'augment_probability {probability:g} has no effect with ada_target > 0: ADA sets the '
        'probability itself (from 0, logged as augment_probability); set ada_target=0 for a '
        'fixed probability.')
  elif not augment and probability != 1.0:
    warnings.append(f'augment_probability {probability:g} has no effect without augment (no '
                    'augmentation is on); set augment, e.g. --config.augment=translation,color.')
  speed = config.get('ada_speed_images', _ADA_SPEED_DEFAULT)
  if not adaptive and speed != _ADA_SPEED_DEFAULT:
    warnings.append(f'ada_speed_images {float(speed):,.6g} has no effect without ada_target > 0 '
                    '(ADA is off); set ada_target, e.g. 0.6.')
  for name, close in config_files.unknown_fields(config):
    warnings.append(
        f"Config field {name!r} is not one dcgan_jax reads, so it has no effect"
        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else
           ' (the fields are listed in configs/default.py).'))
  return warnings


def duration_warnings(config: ml_collections.ConfigDict,
                      durations: durations_lib.Durations) -> list[str]:
  """Like :func:`config_warnings`, for what only the resolved step counts show."""
  warnings = []
  if durations.quality_every_steps > 0 and str(config.get('dataset', '')).strip() != 'digits':
    # The run would otherwise end without quality.json and without a word why.
    warnings.append(
        f'The digits quality score (quality_every_steps {durations.quality_every_steps}) is '
        f"for dataset='digits' only; this run on {config.dataset!r} has none. Set "
        'quality_every_steps=0 to silence this; for other data, eval_every_steps with '
        'inception_weights logs FID.')
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
    steps = durations.num_train_steps
    # A span of a tenth of the run (1 - 10/steps): late enough to leave the untrained G behind.
    advice = (f'about {1 - 10 / steps:.3g} (an average over the last tenth of the run) or 0'
              if steps >= 20 else '0 (the run is too short for an average)')
    warnings.append(
        f'ema_decay {ema_decay:g} averages over about {round(1 / (1 - ema_decay)):,} steps, '
        f'more than this run has ({steps:,}): the EMA weights, which the sample grids, the '
        f'scores, sample and evaluate use, stay close to the untrained generator; set ema_decay '
        f'to {advice}.')
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


def has_checkpoints(workdir: str) -> bool:
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
    default = config_files.BEFORE_THEY_EXISTED.get(name)
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


UNSET = object()  # A field only one of two configs has.


def _flat_fields(tree: dict[str, Any]) -> dict[str, Any]:
  """``{'dotted.name': value}``; JSON turns tuples into lists, so they are compared as lists."""
  return {name: list(value) if isinstance(value, tuple) else value
          for name, value in flax.traverse_util.flatten_dict(tree, sep='.').items()}


def changed_fields(config: ml_collections.ConfigDict,
                    saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """``(name, old, new)`` for every config field whose value differs from the saved config's
  (fields only one of them has included, with :data:`UNSET`), in field order."""
  before, now = _flat_fields(saved), _flat_fields(config.to_dict())
  return [(name, before.get(name, UNSET), now.get(name, UNSET))
          for name in list(now) + [n for n in before if n not in now]
          if before.get(name, UNSET) != now.get(name, UNSET)]


def changed_settings(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> list[str]:
  """``'name old -> new'`` for every config field whose value differs from the saved config's
  (fields only one of them has included), in field order.

  Fields the checkpoint's config lacks and this one holds at configs/default.py's value are
  fields added to dcgan_jax since that run: one last item names them together (a run written
  by an older version listed 9-14 of them as changes nobody made).
  """
  describe = lambda value: 'unset' if value is UNSET else repr(value)
  defaults, listed, added = None, [], []
  for name, old, new in changed_fields(config, saved):
    if old is UNSET and new is not UNSET:
      if defaults is None:  # (None known beside a plain pip install, or a broken file.)
        defaults = _flat_fields(config_files.default_values())
      if name in defaults and defaults[name] == new:
        added.append(name)
        continue
    listed.append(f'{name} {describe(old)} -> {describe(new)}')
  if added:
    listed.append(f'{len(added)} field{"s" if len(added) > 1 else ""} added to dcgan_jax since '
                  f'the checkpoint, at {"their defaults" if len(added) > 1 else "its default"} '
                  f'({", ".join(added)})')
  return listed


def fused_steps(config: ml_collections.ConfigDict | dict[str, Any],
                data_path: str | None) -> int:
  """The steps per device program a run actually fuses: ``steps_per_dispatch`` with
  device-resident data and shard_map (see :mod:`dcgan_jax.step_loop`), else 1. ``data_path``
  is :func:`run_setup`'s ``'data'`` (None: unknown, taken as fusing)."""
  fuses = (data_path in (None, 'device-resident')
           and config.get('parallelism', 'shard_map') == 'shard_map')
  return int(config.get('steps_per_dispatch', 1)) if fuses else 1


def changed_settings_effects(config: ml_collections.ConfigDict, saved: dict[str, Any],
                             data_paths: tuple[str | None, str | None] = (None, None)) -> str:
  """What changing some settings on a resume does beyond the obvious, as sentences ('' if
  none applies): each says what a user would not guess.

  Args:
    config: The config now.
    saved: The config the checkpoint was saved with.
    data_paths: The data path (:func:`run_setup`'s ``'data'``) then and now, where known.
  """
  effects = ''
  if saved.get('batch_size') != config.get('batch_size'):
    effects += (' With another batch_size the epoch scalar and a length in num_epochs go on '
                'counting the images trained on, but the data stream resumes at step x the new '
                'batch_size: some images of the current epoch are skipped or drawn twice.')
  # Only where the steps fuse: a pmap or tf.data run dispatches one step at a time whatever
  # steps_per_dispatch says.
  fused = (fused_steps(saved, data_paths[0]), fused_steps(config, data_paths[1]))
  if fused[0] != fused[1]:
    effects += (f' The steps now fuse differently ({fused[0]} -> {fused[1]} per device program, '
                'from steps_per_dispatch, the data path and parallelism): they run in another '
                'program, which rounds differently: training goes on, agreeing to rounding, not '
                'bit for bit.')
  if saved.get('seed') != config.get('seed'):
    effects += (" The step key comes from the checkpoint, so the new seed changes only the data "
                "order and the sample grids' latents from here on.")
  return effects


# What a checkpoint's numbers depend on beyond its config: the arithmetic (how many devices sum
# the batch's statistics and gradients, and in which order; which kernels; which versions) and
# the data path (device-resident batches and tf.data's come in different orders).
_ARITHMETIC_SETUP = ('devices', 'processes', 'device_kind', 'jax', 'dcgan_jax')


def source_digest(root: str | os.PathLike) -> str:
  """12 hex digits of SHA-256 over the ``.py`` files under ``root`` (their paths and bytes)."""
  digest = hashlib.sha256()
  root = pathlib.Path(root)
  for path in sorted(root.rglob('*.py')):
    # Not an editor's lock or backup (Emacs' .#train.py is a dangling link) or unreadable file:
    # a run must not fail over them.
    if path.name.startswith('.') or not path.is_file():
      continue
    try:
      data = path.read_bytes()
    except OSError:
      continue
    digest.update(path.relative_to(root).as_posix().encode() + b'\0' + data + b'\0')
  return digest.hexdigest()[:12]


@functools.cache
def code_digest() -> str:
  """:func:`source_digest` of the dcgan_jax package in use (once per process: ~5 ms).

  The version string changes only at releases, so it could not tell a checkpoint written by
  other code (a ``git pull`` or local edits in the middle of an experiment).
  """
  import dcgan_jax  # pylint: disable=g-import-not-at-top  # (Lazy: no import cycle.)
  return source_digest(os.path.dirname(dcgan_jax.__file__))


# Facts that say which code ran: changed alone, the step may well compute the same.
_CODE_DIGEST = 'dcgan_jax_code'
_CODE_SETUP = ('dcgan_jax', _CODE_DIGEST)


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
          'jax': jax.__version__, 'dcgan_jax': dcgan_jax.__version__,
          _CODE_DIGEST: code_digest()}


def setup_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """``'name old -> new'`` for every :func:`run_setup` fact that differs from the saved one.

  A fact the saved record lacks (a checkpoint from before it was recorded) is not compared,
  except the code's digest: every checkpoint records it since it was added, so one without it
  was saved by an older dcgan_jax (``'dcgan_jax_code unrecorded -> ...'``).
  """
  changes = []
  for name in now:
    if name in saved and saved[name] != now[name]:
      changes.append(f'{name} {saved[name]!r} -> {now[name]!r}')
    elif name == _CODE_DIGEST and name not in saved:
      changes.append(f'{name} unrecorded -> {now[name]!r}')
  return changes


def describe_setup_changes(step: int, saved: dict[str, Any], now: dict[str, Any],
                           config: ml_collections.ConfigDict) -> str | None:
  """The warning a resume on another setup logs: what changed and what that does to the run;
  None when nothing changed."""
  changes = setup_changes(saved, now)
  if not changes:
    return None
  # (Facts the saved record lacks are not compared: they count as unchanged here.)
  if all(saved.get(name, now[name]) == now[name] for name in now if name not in _CODE_SETUP):
    which = ('an older version, from before checkpoints recorded a digest of the code'
             if _CODE_DIGEST not in saved else 'another version, or edits to its files')
    return (f'Resuming the checkpoint of step {step}, saved by other dcgan_jax code: '
            f'{", ".join(changes)} ({which}). Training goes on from it; bit-identically to a '
            'run never stopped only where the step computes as it did.')
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
  for name, what in _WORKDIR_FOLDERS:
    folder = os.path.join(path, name)
    if os.path.lexists(folder) and not os.path.isdir(folder):
      # Found here, not where the run first writes into it: that was after training, as a
      # traceback (samples/), or as a workdir 'not writable (File exists)' (best_fid/).
      raise UserError(f'{folder} is a file, not a folder: the run keeps its {what} there. '
                      'Move or rename the file, or pass another --workdir.')


# The folders a run makes in its workdir, with what each holds.
_WORKDIR_FOLDERS = (
    (checkpointing.CHECKPOINT_DIR, 'checkpoints'),
    (checkpointing.CORRUPT_CHECKPOINT_DIR, 'damaged checkpoints'),
    (train_hooks.SAMPLES_DIR, 'sample grids'),
    (train_hooks.BEST_FID_DIR, 'best-FID checkpoint'),
    (run_logs.ROLLED_BACK_DIR, 'set-aside logs'),
    (profiling.PROFILE_DIR, 'profiler traces'),
)
