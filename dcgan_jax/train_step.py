"""One GAN update as a pure function: ``(state, real_images, rng) -> (state, metrics)``.

The step is written once, for one device. Given an ``axis_name`` it becomes the per-device body
of a data-parallel step (under ``jax.shard_map(..., check_vma=False)`` or ``jax.pmap``, see
:mod:`dcgan_jax.parallel`):
gradients, metrics and BatchNorm statistics are averaged over that axis, so BatchNorm sees the
global batch. Random numbers (latents, penalty interpolation, augmentation) are drawn for the
*global* batch from the one replicated key and each device takes its slice, which makes the
data-parallel step compute the same update as one device fed the whole batch.

The order follows the pytorch/examples DCGAN loop: one G forward per iteration (its VJP is kept
for G's update); D updated on the real and the fake batch with each batch's own BatchNorm
statistics, as the reference's two passes (our D scores both in one stacked call, other
discriminators in two); then G updated through the updated D on the same fakes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dcgan_jax import augment
from dcgan_jax import losses
from dcgan_jax import models
from dcgan_jax.errors import UserError, finite_number, is_integer, warn_user
from dcgan_jax.state import EMAState, GANState, check_same_classes

Metrics = dict[str, jax.Array]
# fold_in data of the augmentation's, the generated labels' and dropout's random streams (any
# constants apart from the d_steps indices).
_AUGMENT_STREAM = 0x41554721
_LABEL_STREAM = 0x4C41424C
_DROPOUT_STREAM = 0x44524F50
# (The StepConfig field named augment hides the module inside the class body.)
_ADA_SPEED_IMAGES = augment.ADA_SPEED_IMAGES
# A batch is the real images, or ``(images, labels)`` for class-conditional models.
Batch = jax.Array | tuple[jax.Array, jax.Array]
StepFn = Callable[[GANState, Batch, jax.Array], tuple[GANState, Metrics]]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the GAN update.

  Attributes:
    loss: Objective name, see :data:`dcgan_jax.losses.LOSSES`.
    real_label: Target for real images (<1 for one-sided label smoothing): the BCE target of
      the non-saturating and minimax losses, the least-squares target, and the hinge loss's
      real margin (``relu(real_label - D(x))``). The Wasserstein critic has no target, so
      ``loss='wasserstein'`` refuses a value other than 1.
    gradient_penalty_weight: WGAN-GP weight (0 disables).
    r1_weight: R1 weight gamma (0 disables).
    d_steps: Discriminator updates per generator update; each draws fresh latents and reuses
      the same real batch.
    ema_decay: Decay of G's EMA, used when the state carries one.
    augment: Augmentation policy applied to every image D sees, real and fake, in both
      updates: a comma-separated subset of DiffAugment's ``color,translation,cutout`` and
      ADA's ``blit,geom,ada_color,filter,noise`` (``bgc``, ``bgcfnc`` for short; see
      :mod:`dcgan_jax.augment`); '' (the default, the paper's setup) for none. Normalised to
      a tuple of names.
    augment_probability: With ``augment`` and without ADA: the probability with which each
      transformation applies to each image (1, the default, is DiffAugment: always).
    ada_target: > 0 turns on adaptive augmentation (ADA, Karras et al. 2020): the probability
      lives in the state (``AdaptiveAugmentState.augment_probability``, from 0) and after
      every step moves towards more augmentation while ``E[sign(D(real))]`` exceeds this
      target (0.6 in the paper), towards less otherwise. Needs ``augment``; 0 (default) disables.
    ada_speed_images: Real images over which ADA's probability can move from 0 to 1 (500k in
      the paper).
  """

  loss: str = 'non_saturating'
  real_label: float = 1.0
  gradient_penalty_weight: float = 0.0
  r1_weight: float = 0.0
  d_steps: int = 1
  ema_decay: float = 0.999
  augment: str | tuple[str, ...] = ()
  augment_probability: float = 1.0
  ada_target: float = 0.0
  ada_speed_images: int = _ADA_SPEED_IMAGES

  @property
  def adaptive(self) -> bool:
    """Whether the augmentation probability adapts (ADA)."""
    return self.ada_target > 0

  def __post_init__(self):
    # Raises a UserError naming the valid policies; a tuple keeps the config hashable.
    object.__setattr__(self, 'augment', augment.parse_policy(self.augment))
    losses.get_loss(self.loss)  # Raises a UserError naming the valid losses.
    for name in _NUMBER_FIELDS:
      object.__setattr__(self, name, _finite_number(name, getattr(self, name)))
    if not 0.0 < self.real_label <= 1.0:
      raise UserError(f'real_label must be in (0, 1] (got {self.real_label!r}).')
    if self.loss == 'wasserstein' and self.real_label != 1.0:  # It would be ignored.
      raise UserError(f"real_label {self.real_label} has no effect with loss 'wasserstein' (the "
                      'critic has no targets); leave it at 1.')
    for name in ('gradient_penalty_weight', 'r1_weight'):
      if getattr(self, name) < 0:
        raise UserError(f'{name} must be >= 0 (0 turns the penalty off; got '
                        f'{getattr(self, name)!r}).')
    # numpy integers (from a config or an array) count; bools and 2.0 do not.
    if not is_integer(self.d_steps) or self.d_steps < 1:
      raise UserError(f'd_steps must be a positive integer (got {self.d_steps!r}).')
    object.__setattr__(self, 'd_steps', int(self.d_steps))  # Hashable and static either way.
    if not 0.0 <= self.ema_decay < 1.0:
      raise UserError(f'ema_decay must be in [0, 1) (got {self.ema_decay!r}).')
    if not 0.0 <= self.augment_probability <= 1.0:
      raise UserError(f'augment_probability must be in [0, 1] (1: always, as DiffAugment; got '
                      f'{self.augment_probability!r}).')
    if not 0.0 <= self.ada_target < 1.0:
      raise UserError(f'ada_target must be in [0, 1): 0 turns adaptive augmentation off, ADA '
                      f'uses 0.6 (got {self.ada_target!r}).')
    if self.ada_target > 0 and not self.augment:
      raise UserError(f'ada_target {self.ada_target} adapts the augmentation probability but '
                      "augment is ''; set augment too, e.g. 'color,translation,cutout'.")
    speed = self.ada_speed_images  # As d_steps: numpy integers and whole floats (5e4) count.
    if isinstance(speed, (float, np.floating)) and float(speed).is_integer():
      speed = int(speed)
    if not is_integer(speed) or speed <= 0:
      raise UserError(f'ada_speed_images must be a positive whole number of images (got '
                      f'{self.ada_speed_images!r}; ADA uses 500000).')
    object.__setattr__(self, 'ada_speed_images', int(speed))

  @classmethod
  def from_config(cls, config: Any) -> 'StepConfig':
    """Reads the objective fields of a run config (see configs/default.py)."""
    return cls(loss=config.loss, real_label=float(config.real_label),
               gradient_penalty_weight=float(config.gradient_penalty_weight),
               r1_weight=float(config.r1_weight), d_steps=int(config.d_steps),
               ema_decay=float(config.ema_decay), augment=config.get('augment', ''),
               augment_probability=float(config.get('augment_probability', 1.0)),
               ada_target=float(config.get('ada_target', 0.0)),
               ada_speed_images=int(config.get('ada_speed_images', augment.ADA_SPEED_IMAGES)))


# StepConfig's real-valued fields: each must be a finite number. (A NaN weight would pass every
# range check and the step's `> 0` tests alike, silently turning its penalty off.)
_NUMBER_FIELDS = ('real_label', 'gradient_penalty_weight', 'r1_weight', 'ema_decay',
                  'augment_probability', 'ada_target')


def _finite_number(name: str, value: Any) -> float:
  """``value`` as a float, or a UserError when it is not a finite number (a string, a bool,
  NaN, an infinity)."""
  number = finite_number(value)
  if number is None:
    raise UserError(f'{name} must be a finite number (got {value!r}).')
  return number


def images_to_model_range(images: jax.Array, output_activation: str = 'tanh') -> jax.Array:
  """Scales a batch to the generator's output range on the device.

  uint8 images (what input pipelines yield) map to [-1, 1] for tanh or [0, 1] for sigmoid;
  floating images are assumed to be in that range already. Other integer types are an error
  (their range is not known: uint16 may hold 0..65535).
  """
  if images.dtype != jnp.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
    raise UserError(f'Training images must be uint8 (0..255) or floating point in the '
                    f"generator's range, got {images.dtype}.")
  models.output_range(output_activation)  # Refuses an unknown activation.
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32)
    return images / 127.5 - 1.0 if output_activation == 'tanh' else images / 255.0
  return images.astype(jnp.float32)


def _mean_sigmoid(logits: jax.Array) -> jax.Array:
  return jnp.mean(nn.sigmoid(logits.astype(jnp.float32)))


def split_batch(batch: Batch, num_classes: int) -> tuple[jax.Array, jax.Array | None]:
  """``(images, labels)`` of a step's batch; labels are None for an unconditional model.

  Raises:
    UserError (a ValueError): labels are missing for a conditional model, given to an
      unconditional one, or not integers of shape ``[N]`` for ``N`` images.
  """
  if isinstance(batch, (tuple, list)):
    if len(batch) != 2:
      raise UserError(f'A batch is images or (images, labels); got a sequence of {len(batch)}.')
    images, labels = batch
  else:
    images, labels = batch, None
  if num_classes and labels is None:
    raise UserError(f'The models are class-conditional (num_classes={num_classes}): the batch '
                    'must be (images, labels).')
  if not num_classes and labels is not None:
    raise UserError('The batch carries labels but the models are unconditional '
                    '(num_classes=0); pass the images alone.')
  if labels is not None and not hasattr(labels, 'shape'):  # Under jit a list is a pytree.
    raise UserError(f'Labels must be an array of integer class indices [N], not a Python '
                    f'{type(labels).__name__}; pass np.asarray(labels, np.int32).')
  if labels is not None and (labels.shape != images.shape[:1]
                             or not jnp.issubdtype(labels.dtype, jnp.integer)):
    raise UserError(f'Labels must be integer class indices of shape [N] for N images: got '
                    f'{labels.dtype} {tuple(labels.shape)} for images {tuple(images.shape)} '
                    '(not one-hot, not [N, 1]).')
  return images, labels


def has_batch_norm(discriminator: Any) -> bool:
  """Whether a discriminator normalises with batch statistics: ``norm='batch'``, except at
  image size 8, where D has its input layer alone and the paper leaves BatchNorm off that."""
  if getattr(discriminator, 'norm', None) != 'batch':
    return False
  size = getattr(discriminator, 'image_size', None)
  return not (isinstance(size, int) and size < 16)


class PenaltyWithBatchNormWarning(UserWarning):
  """A gradient penalty through a BatchNorm discriminator (valid, rarely what was meant)."""


def _penalty_with_batch_norm_message(penalties: Sequence[str], discriminator: str) -> str:
  return (f'{" and ".join(penalties)} > 0 with {discriminator}: BatchNorm mixes the examples '
          "of a batch, so the penalty does not see each example's own gradient; WGAN-GP's "
          "critic (and StyleGAN's, for R1) uses Discriminator(norm='layer') (or 'none').")


# BatchNorm layers already reported by _apply_with_batch_norm_check (one warning per layer).
_REPORTED_UNSYNCED_BATCH_NORMS: set[tuple[str, str]] = set()
# Discriminators (by class name) already warned about a penalty through their BatchNorm.
_REPORTED_PENALTY_WITH_BATCH_NORM: set[str] = set()


def _apply_with_batch_norm_check(module: nn.Module, axis_name: str | None, *args,
                                 penalties: Sequence[str] = (), **kwargs):
  """``module.apply(*args, **kwargs)``, warning when a BatchNorm layer ignores ``axis_name``.

  A user's module without an ``axis_name`` field (so the step cannot rebind it) computes batch
  statistics over each device's share of the batch: training then differs from one device,
  and the devices' copies of the running statistics drift apart, without any error. Looking at
  the layers while the step is traced costs nothing at run time.

  With ``penalties`` (the gradient penalties a user's discriminator trains with; ours says
  its norm in an attribute, see :func:`has_batch_norm`), a BatchNorm layer using batch
  statistics gets :class:`PenaltyWithBatchNormWarning`.
  """
  if axis_name is None and not penalties:
    return module.apply(*args, **kwargs)
  unsynced, batch_normed = [], []

  def interceptor(next_fun, call_args, call_kwargs, context):
    layer = context.module
    if isinstance(layer, nn.BatchNorm) and context.method_name == '__call__':
      at_call = call_kwargs.get('use_running_average',
                                call_args[1] if len(call_args) > 1 else None)
      uses_batch = not (layer.use_running_average if at_call is None else at_call)
      path = '/'.join(layer.scope.path) if layer.scope else layer.name
      if uses_batch:
        batch_normed.append(path)
      if uses_batch and layer.axis_name is None:
        unsynced.append(path)
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    out = module.apply(*args, **kwargs)
  name = type(module).__name__
  if penalties and batch_normed and name not in _REPORTED_PENALTY_WITH_BATCH_NORM:
    _REPORTED_PENALTY_WITH_BATCH_NORM.add(name)
    warn_user(_penalty_with_batch_norm_message(
        penalties, f'{name}, which has BatchNorm layers'),
              PenaltyWithBatchNormWarning)
  if axis_name is None:
    return out
  new = [path for path in dict.fromkeys(unsynced)
         if (type(module).__name__, path) not in _REPORTED_UNSYNCED_BATCH_NORMS]
  if new and jax.lax.psum(1, axis_name) > 1:
    _REPORTED_UNSYNCED_BATCH_NORMS.update((type(module).__name__, path) for path in new)
    warn_user(
        f'{type(module).__name__}: BatchNorm layer(s) {", ".join(new)} have no axis_name, so '
        'each device normalises with the statistics of its own share of the batch: training '
        'differs from one device, and the devices\' copies of the running statistics drift '
        'apart. Give the module an `axis_name` field passed to nn.BatchNorm(axis_name=...); '
        "the step sets it (as dcgan_jax's Generator and Discriminator have).")
  return out


def _check_generated_shape(generator, real: jax.Array, fake: jax.Array) -> None:
  """D sees real and generated images alike: their shapes must agree (checked while tracing)."""
  if tuple(fake.shape[1:]) != tuple(real.shape[1:]) or fake.shape[0] != real.shape[0]:
    h_w_c = lambda shape: ', '.join(map(str, shape[1:]))
    raise UserError(
        f'The training images are [N, {h_w_c(real.shape)}] but {type(generator).__name__} '
        f'makes [N, {h_w_c(fake.shape)}]: D scores both, so they must match (images NHWC, '
        "channels last; the generator's image size and channels as the data's).")


def _varying_axes(x: Any) -> frozenset:
  """The mapped axes along which jax's shard_map types ``x`` as varying (check_vma=True), or
  an empty set (no such typing: pmap, check_vma=False, a jax without it)."""
  aval = jax.typeof(x)
  vma = getattr(aval, 'vma', None)  # Its name in some jax versions.
  if vma is None:
    vma = getattr(getattr(aval, 'manual_axis_type', None), 'varying', None)
  return frozenset(vma or ())


def _check_axis_bound(axis_name: str | None) -> None:
  """Names the fix when a per-device step runs outside a mapping with its axis, or under
  ``jax.shard_map`` with its replication checking on (while tracing).

  jax alone says only "unbound axis name", deep inside the first collective. With
  ``check_vma=True`` (shard_map's default) jax sums the gradients of replicated parameters
  across devices itself, so the step's own mean across devices came out the device count
  times the true gradient (the library's BatchNorm then failed with a cotangent type error).
  """
  if axis_name is None:
    return
  try:
    jax.lax.axis_size(axis_name)
  except NameError as e:
    raise UserError(
        f'make_train_step(..., axis_name={axis_name!r}) builds the per-device body of a '
        f'data-parallel step, but it runs where no mapped axis is named {axis_name!r}: run it '
        f'under jax.shard_map(..., check_vma=False) or jax.pmap with that axis name '
        '(parallel.DataParallelStep does), or build it with axis_name=None for a plain jax.jit '
        'on one device.') from e
  # The device's index varies along the axis exactly when jax types values so (whatever the
  # batch's in_specs).
  if axis_name in _varying_axes(jax.lax.axis_index(axis_name)):
    raise UserError(
        f'make_train_step(..., axis_name={axis_name!r}) runs under jax.shard_map with '
        "check_vma=True (shard_map's default), where jax sums replicated parameters' gradients "
        "across devices itself and the step's mean across devices would multiply them by the "
        'device count: pass check_vma=False to jax.shard_map (parallel.DataParallelStep does), '
        'or use jax.pmap.')


# The variable collections a state holds per network (create_gan_state).
_STATE_COLLECTIONS = ('params', 'batch_stats')
# What flax raises when a state's variables are not those of the module applied to them.
_MODEL_MISMATCH_ERRORS = (flax.errors.ScopeParamShapeError, flax.errors.ScopeParamNotFoundError,
                          flax.errors.ScopeCollectionNotFound,
                          flax.errors.ScopeVariableNotFoundError)


def make_train_step(generator: nn.Module, discriminator: nn.Module,
                    step_config: StepConfig = StepConfig(),
                    axis_name: str | None = None) -> StepFn:
  """Builds the per-device GAN update.

  Args:
    generator: The generator module (``latent_dim`` and optionally ``output_activation``
      attributes are read); its BatchNorm is rebound to ``axis_name``.
    discriminator: The discriminator module, likewise rebound.
    step_config: Objective and schedule of the update.
    axis_name: The mapped axis to average over, or None for a single device.

  Returns:
    ``step(state, batch, rng) -> (state, metrics)``. ``batch`` is this device's share of the
    real images, ``[B, H, W, C]`` (uint8 or already scaled floats), or for class-conditional
    models (``generator.num_classes > 0``) the pair ``(images, labels)`` with int labels
    ``[B]`` in ``[0, num_classes)``; generated images get labels drawn uniformly over the
    classes. Traced labels are not checked: one >= num_classes makes every parameter NaN (an
    embedding lookup out of range), a negative one trains on a wrong class;
    ``DataParallelStep.place_batch`` checks numpy labels before they reach the step. ``rng`` is
    the same key on every device. Metrics (scalars, averaged over devices; a pmapped step
    returns each as a ``[devices]`` array of equal values, which
    ``DataParallelStep.host_metrics`` reads as one number): ``d_loss`` (the weighted gradient
    penalties included), ``g_loss``, ``d_real`` (D(x)), ``d_fake_before`` and
    ``d_fake_after`` (D(G(z)) before and after the D update), ``d_grad_norm``,
    ``g_grad_norm``, and when enabled the penalties unweighted (``gradient_penalty``,
    ``r1_penalty``). With ``augment`` the D outputs are those of the augmented images, which D
    really saw; with ADA also ``ada_real_sign`` (E[sign(D(real))]) and
    ``augment_probability`` (the p this step used).
  """
  for module, role in ((generator, 'generator'), (discriminator, 'discriminator')):
    if not isinstance(module, nn.Module):  # Else an AttributeError on clone/apply.
      raise UserError(f'The {role} {type(module).__name__} must be a flax.linen Module (the '
                      'step applies it functionally).')
  if hasattr(generator, 'axis_name'):
    generator = generator.clone(axis_name=axis_name)
  if hasattr(discriminator, 'axis_name'):
    discriminator = discriminator.clone(axis_name=axis_name)
  objective = losses.get_loss(step_config.loss)
  penalties = [name for name in ('gradient_penalty_weight', 'r1_weight')
               if getattr(step_config, name) > 0]
  if penalties and has_batch_norm(discriminator):
    # The training program says this in its config's terms (run_checks.config_warnings).
    warn_user(_penalty_with_batch_norm_message(penalties, 'a BatchNorm discriminator'),
              PenaltyWithBatchNormWarning)
  # A discriminator of the user's own is looked at while the step is traced.
  d_penalties = tuple(penalties) if not isinstance(discriminator, models.Discriminator) else ()
  output_activation = getattr(generator, 'output_activation', 'tanh')
  if output_activation not in models.OUTPUT_ACTIVATIONS:  # Refused now, not at the first trace.
    raise UserError(f'The generator {type(generator).__name__} has output_activation '
                    f'{output_activation!r}; the step scales the real images to its range, '
                    "so it must be 'tanh' ([-1, 1]) or 'sigmoid' ([0, 1]).")
  latent_dim = generator.latent_dim
  num_classes = check_same_classes(generator, discriminator)
  policy = step_config.augment

  def pmean(tree):
    return jax.lax.pmean(tree, axis_name) if axis_name is not None else tree

  def global_slice(draw, key, local_batch):
    """Draws ``draw(key, n)`` (a tree with leading axis n) for the global batch; returns this
    device's rows, so that every device count computes the same update."""
    if axis_name is None:
      return draw(key, local_batch)
    num_devices = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)
    full = draw(key, local_batch * num_devices)
    return jax.tree.map(
        lambda x: jax.lax.dynamic_slice_in_dim(x, index * local_batch, local_batch, axis=0), full)

  def global_normal_slice(key, local_batch, shape_tail):
    return global_slice(lambda k, n: jax.random.normal(k, (n,) + shape_tail), key, local_batch)

  def global_uniform_slice(key, local_batch):
    return global_slice(lambda k, n: jax.random.uniform(k, (n,)), key, local_batch)

  def fake_labels(key, local_batch):
    """Classes of the generated images, uniform (None for unconditional models)."""
    if not num_classes:
      return None
    draw = lambda k, n: jax.random.randint(k, (n,), 0, num_classes)
    return global_slice(draw, key, local_batch)

  def label_kwargs(labels):
    # Unconditional modules (possibly a user's) are called without the argument.
    return {} if labels is None else {'labels': labels}

  def augment_params(key, images, probability):
    """Each image's augmentation parameters (None when augmentation is off)."""
    if not policy:
      return None
    _, height, width, _ = images.shape
    draw = lambda k, n: augment.draw_params(k, n, height, width, policy, probability)
    return global_slice(draw, key, images.shape[0])

  value_range = models.output_range(output_activation)

  def augmented(images, params):
    return images if params is None else augment.apply(images, params, policy, value_range)

  # Modules that draw random numbers in training (nn.Dropout, or make_rng('dropout')) get a
  # fresh 'dropout' key at every call; others ignore it (the same program). Set per traced
  # step; calls are numbered in the order the step makes them, which tracing fixes.
  dropout = {'key': None, 'calls': 0}

  def dropout_rngs():
    dropout['calls'] += 1
    return {'dropout': jax.random.fold_in(dropout['key'], dropout['calls'])}

  def generate(g_params, g_stats, z, labels):
    return _apply_with_batch_norm_check(
        generator, axis_name, {'params': g_params, 'batch_stats': g_stats}, z, train=True,
        mutable=['batch_stats'], rngs=dropout_rngs(), **label_kwargs(labels))

  def discriminate(d_params, d_stats, images, labels, **kwargs):
    logits, updates = _apply_with_batch_norm_check(
        discriminator, axis_name, {'params': d_params, 'batch_stats': d_stats}, images,
        train=True, mutable=['batch_stats'], rngs=dropout_rngs(), penalties=d_penalties,
        **label_kwargs(labels), **kwargs)
    # A discriminator without BatchNorm or spectral norm ('layer', 'none') has no statistics.
    return logits, updates.get('batch_stats', {})

  # Our D can score the real and the fake batch in one stacked call with separate BatchNorm
  # statistics (models.GroupedBatchNorm): same result, half the convolution launches. Other
  # discriminators get two calls.
  stack_real_and_fake = getattr(discriminator, 'supports_groups', False)

  def discriminate_real_then_fake(d_params, d_stats, real, fake, real_labels, fake_labels):
    if stack_real_and_fake:
      both = jnp.concatenate([real, fake.astype(real.dtype)], axis=0)
      labels = None if real_labels is None else jnp.concatenate([real_labels, fake_labels])
      logits, stats = discriminate(d_params, d_stats, both, labels, groups=2)
      return logits[:real.shape[0]], logits[real.shape[0]:], stats
    real_logits, stats = discriminate(d_params, d_stats, real, real_labels)
    fake_logits, stats = discriminate(d_params, stats, fake, fake_labels)
    return real_logits, fake_logits, stats

  def d_update(state: GANState, real, fake, real_labels, fake_labels, penalty_key, real_aug,
               fake_aug):
    d = state.discriminator
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(d_params):
      real_logits, fake_logits, stats = discriminate_real_then_fake(
          d_params, d.batch_stats, augmented(real, real_aug), augmented(fake, fake_aug),
          real_labels, fake_labels)
      loss = losses.check_scalar_loss(
          f'{objective.name} d_loss',
          objective.d_loss(real_logits, fake_logits, step_config.real_label))
      aux = {'d_real': _mean_sigmoid(real_logits), 'd_fake_before': _mean_sigmoid(fake_logits)}
      if step_config.adaptive:  # ADA's overfitting heuristic, on the images D saw.
        aux['ada_real_sign'] = jnp.mean(jnp.sign(real_logits.astype(jnp.float32)))
      # Penalty passes use the statistics of this step but do not update them. With
      # augmentation the penalised function is D after the real images' transformation, and
      # the gradient is taken with respect to the un-augmented input (as ADA does for R1).
      # Conditional D is penalised at the real images' labels (interpolates included).
      logits_fn = lambda x: discriminate(d_params, stats, augmented(x, real_aug), real_labels)[0]
      if step_config.gradient_penalty_weight > 0:
        eps = global_uniform_slice(penalty_key, real.shape[0])
        penalty = losses.gradient_penalty(logits_fn, real, fake, eps=eps)
        aux['gradient_penalty'] = penalty
        loss = loss + step_config.gradient_penalty_weight * penalty
      if step_config.r1_weight > 0:
        penalty = losses.r1_penalty(logits_fn, real)
        aux['r1_penalty'] = penalty
        loss = loss + step_config.r1_weight * penalty
      aux['d_loss'] = loss
      return loss, (stats, aux)

    grads, (stats, aux) = jax.grad(loss_fn, has_aux=True)(d.params)
    grads = pmean(grads)
    aux = dict(aux, d_grad_norm=optax.tree.norm(grads))
    d = d.apply_gradients(grads=grads, batch_stats=stats)
    return state.replace(discriminator=d), aux

  def g_update(state: GANState, fake, labels, g_vjp, g_stats, fake_aug):
    """Updates G through the updated D, reusing the forward pass that fed D's update.

    ``fake`` and ``g_vjp`` come from :func:`jax.vjp` of G's forward, so G runs forward once per
    iteration as in the reference loop (recomputing it costs ~8% of the step's FLOPs).
    """
    g, d = state.generator, state.discriminator

    def loss_fn(images):
      # G's gradient flows through the augmentation back to its un-augmented images.
      fake_logits, d_stats = discriminate(d.params, d.batch_stats, augmented(images, fake_aug),
                                          labels)
      loss = losses.check_scalar_loss(f'{objective.name} g_loss', objective.g_loss(fake_logits))
      return loss, (d_stats, {'g_loss': loss, 'd_fake_after': _mean_sigmoid(fake_logits)})

    d_images, (d_stats, aux) = jax.grad(loss_fn, has_aux=True)(fake)
    (grads,) = g_vjp(d_images)
    grads = pmean(grads)
    aux = dict(aux, g_grad_norm=optax.tree.norm(grads))
    g = g.apply_gradients(grads=grads, batch_stats=g_stats)
    # The reference's G step runs D in training mode, which moves D's running statistics too.
    d = d.replace(batch_stats=d_stats)
    return state.replace(generator=g, discriminator=d), aux

  def step(state: GANState, batch: Batch, rng: jax.Array) -> tuple[GANState, Metrics]:
    _check_axis_bound(axis_name)
    real_images, real_labels = split_batch(batch, num_classes)
    real = images_to_model_range(real_images, output_activation)
    local_batch = real.shape[0]
    if not local_batch:  # Means over no rows would be NaN and poison every parameter.
      raise UserError(f'The batch has no images (shape {tuple(real_images.shape)}); a step '
                      'needs at least one image per device.')
    metrics: Metrics = {}
    g = state.generator
    # G runs in training mode for every D update's fakes, so each forward moves its running
    # statistics, as each `netG(noise)` of a PyTorch loop with several critic steps does.
    g_stats = g.batch_stats
    # Augmentation and generated labels draw from their own streams, so turning either on
    # leaves latents and penalty interpolation exactly as they were.
    augment_key = jax.random.fold_in(rng, _AUGMENT_STREAM)
    label_key = jax.random.fold_in(rng, _LABEL_STREAM)
    # Each device drops its own units, as separate processes of a data-parallel loop would.
    dropout_key = jax.random.fold_in(rng, _DROPOUT_STREAM)
    if axis_name is not None:
      dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    dropout.update(key=dropout_key, calls=0)
    if step_config.adaptive:
      probability = getattr(state, 'augment_probability', None)
      if probability is None:
        raise ValueError('ada_target is set but the state has no augment_probability; create '
                         'it with create_gan_state(..., augment_probability=0.0).')
    else:  # A constant; 1 draws nothing more than DiffAugment does.
      if step_config.augment and getattr(state, 'augment_probability', None) is not None:
        # Used as it stood, the state's p would be ignored for StepConfig's (1 by default).
        raise UserError(
            "The state carries ADA's augment_probability, but StepConfig's ada_target is 0, so "
            "the step would ignore it and augment with StepConfig's augment_probability "
            f'({step_config.augment_probability}); set ada_target > 0 for adaptive '
            'augmentation, or pass a fixed probability as StepConfig(augment_probability=p) '
            'and build the state without augment_probability.')
      probability = (None if step_config.augment_probability >= 1.0
                     else step_config.augment_probability)
    for i in range(step_config.d_steps):
      z_key, penalty_key = jax.random.split(jax.random.fold_in(rng, i))
      z = global_normal_slice(z_key, local_batch, (latent_dim,))
      labels = fake_labels(jax.random.fold_in(label_key, i), local_batch)
      if i + 1 < step_config.d_steps:
        fake, g_updates = generate(g.params, g_stats, z, labels)
        g_stats = g_updates.get('batch_stats', g_stats)
      else:
        # The last D update's fakes also feed G's update (D's update leaves G unchanged).
        fake, g_vjp, g_updates = jax.vjp(
            lambda p, stats=g_stats, z=z, labels=labels: generate(p, stats, z, labels),
            g.params, has_aux=True)
      _check_generated_shape(generator, real, fake)  # Before D stacks the two.
      real_key, fake_key = jax.random.split(jax.random.fold_in(augment_key, i))
      state, d_metrics = d_update(state, real, fake, real_labels, labels, penalty_key,
                                  augment_params(real_key, real, probability),
                                  augment_params(fake_key, fake, probability))
      metrics.update(d_metrics)  # The last D update's metrics are reported.
    g_aug = augment_params(jax.random.fold_in(augment_key, step_config.d_steps), fake,
                           probability)
    state, g_metrics = g_update(state, fake, labels, g_vjp, g_updates.get('batch_stats', {}),
                                g_aug)
    metrics.update(g_metrics)
    if state.ema is not None:
      decay = step_config.ema_decay
      # incremental_update(new, old, step_size) = step_size * new + (1 - step_size) * old.
      ema = EMAState(
          params=optax.incremental_update(state.generator.params, state.ema.params, 1.0 - decay),
          batch_stats=optax.incremental_update(state.generator.batch_stats,
                                               state.ema.batch_stats, 1.0 - decay))
      state = state.replace(ema=ema)
    if step_config.adaptive:
      # The last D update's heuristic over the global batch (a mean of equal shares).
      real_sign = pmean(metrics['ada_real_sign'])
      num_images = local_batch * (1 if axis_name is None else jax.lax.axis_size(axis_name))
      metrics['augment_probability'] = probability  # The one this step used.
      state = state.replace(augment_probability=augment.adapt_probability(
          probability, real_sign, num_images, step_config.ada_target,
          step_config.ada_speed_images))
    state = state.replace(step=state.step + 1)
    return state, pmean(metrics)

  def checked_step(state: GANState, batch: Batch, rng: jax.Array) -> tuple[GANState, Metrics]:
    try:
      return step(state, batch, rng)
    except _MODEL_MISMATCH_ERRORS as e:
      if (isinstance(e, flax.errors.ScopeCollectionNotFound)
          and not any(f'"{name}"' in str(e) for name in _STATE_COLLECTIONS)):
        raise  # A module's own collection, which no state holds: flax's text says so.
      # flax's own text names the variable but not the cause: a state created from other
      # modules (another latent_dim or width) than the step's.
      detail = str(e).split(' (https://', 1)[0]
      raise UserError(f"The state does not fit this step's models: {detail} Create the state "
                      '(create_gan_state) from the same generator and discriminator as the '
                      'step.') from e

  return checked_step
