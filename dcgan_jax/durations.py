"""A run's lengths and periods in generator steps.

Configs may give each duration in steps or in epochs (``<name>_steps = -1`` derives it from
``<name>_epochs``); everything downstream counts steps. This is the one place that converts
(:func:`resolve_durations`, once the dataset's size is known), and :func:`is_due` is the one
rule every periodic hook of the training loop asks.
"""
from __future__ import annotations

import dataclasses
import math

import ml_collections

from dcgan_jax.errors import UserError


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


def steps_from_config(config: ml_collections.ConfigDict, name: str, steps_per_epoch: float,
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
  if not (math.isfinite(epochs) and epochs >= 0):  # (NaN and inf failed in the rounding.)
    raise UserError(f'{epochs_field} is {epochs}; use a finite, non-negative number of epochs.')
  if epochs == 0:
    return 0
  return max(1, _ceil(epochs * steps_per_epoch))


def _ceil(steps: float) -> int:
  """Whole steps covering ``steps``, where ``steps`` is a product or quotient of floats: 15 for
  15.000000000000002 (an epoch count written as images / num_examples comes back so)."""
  return math.ceil(round(steps, 9))


def resolve_durations(config: ml_collections.ConfigDict, num_examples: int,
                      resumed_at: tuple[int, int] | None = None) -> Durations:
  """Converts every step-or-epoch duration of the config to steps (the only place that does).

  Args:
    config: The run config: ``num_train_steps``/``num_epochs``, ``log_every_steps``,
      ``checkpoint_every_steps``, ``sample_every_steps``, ``quality_every_steps``,
      ``eval_every_steps``; each ``*_steps`` field may be -1, meaning derive it from the matching
      ``*_epochs`` field.
    num_examples: Examples in the training split.
    resumed_at: ``(step, images_seen)`` of the checkpoint a run resumes from. When earlier
      launches trained at another batch size (``images_seen != step * batch_size``), a length
      in ``num_epochs`` ends once the run has trained on that many epochs of images: the
      images left are counted at the current batch size. (Converting the whole length at the
      current batch size would end a run resumed at twice the batch after too few images, or
      before its checkpoint's step.) The periods keep their conversion.

  Returns:
    The :class:`Durations`.

  Raises:
    UserError: the run would have no steps, or a field is negative.
  """
  steps_per_epoch = num_examples / int(config.batch_size)
  num_train_steps = steps_from_config(config, 'num_train', steps_per_epoch,
                                       epochs_field='num_epochs')
  if resumed_at is not None and int(config.num_train_steps) == -1 and num_train_steps > 0:
    step, images_seen = resumed_at
    if images_seen != step * int(config.batch_size):  # Another batch size before.
      images_left = float(config.num_epochs) * num_examples - images_seen
      num_train_steps = step + max(0, _ceil(images_left / int(config.batch_size)))
  if num_train_steps <= 0:
    raise UserError('The run has no steps; set num_train_steps to a positive number, or -1 with '
                    f'a positive num_epochs (got num_train_steps={config.num_train_steps}, '
                    f'num_epochs={config.num_epochs}).')
  return Durations(
      num_examples=int(num_examples),
      steps_per_epoch=steps_per_epoch,
      num_train_steps=num_train_steps,
      log_every_steps=steps_from_config(config, 'log_every', steps_per_epoch),
      checkpoint_every_steps=steps_from_config(config, 'checkpoint_every', steps_per_epoch),
      sample_every_steps=steps_from_config(config, 'sample_every', steps_per_epoch),
      quality_every_steps=steps_from_config(config, 'quality_every', steps_per_epoch),
      eval_every_steps=steps_from_config(config, 'eval_every', steps_per_epoch),
  )


def is_due(step: int, every_steps: int, num_train_steps: int | None = None) -> bool:
  """The one "is it time?" rule: every ``every_steps`` steps, and at the last step if given."""
  if num_train_steps is not None and step == num_train_steps:
    return True
  return every_steps > 0 and step > 0 and step % every_steps == 0
