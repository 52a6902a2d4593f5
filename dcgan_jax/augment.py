"""Differentiable augmentation of the images the discriminator sees (DiffAugment).

Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training" (NeurIPS 2020): with
little data, D memorises the training images and G's signal collapses. Augmenting *both* the
real and the generated images, in D's update and in G's, keeps D from memorising while G still
learns the un-augmented distribution, because every transformation is differentiable and G's
gradient flows through it. (Augmenting only the reals would teach G to make augmented images.)

The three policies of the paper, defined on images in [-1, 1] (other ranges, such as a sigmoid
generator's [0, 1], are mapped there and back):

- ``color``: per image, brightness ``+ U(-0.5, 0.5)``, then saturation (scale each pixel's
  distance from its channel mean by ``U(0, 2)``), then contrast (scale the distance from the
  image mean by ``U(0.5, 1.5)``).
- ``translation``: shift by a whole number of pixels in ``[-H/8, H/8]`` (and ``W/8``) on each
  axis, filling with zeros.
- ``cutout``: zero a square of half the image's side at a random centre (clipped at the border).

Adaptive augmentation (ADA, Karras et al., "Training Generative Adversarial Networks with
Limited Data", NeurIPS 2020): each transformation is applied to each image with probability
``p`` (the others pass it through unchanged), and ``p`` follows D's overfitting. The heuristic
``r = E[sign(D(real))]`` (D's outputs on the augmented training images) approaches 1 as D
memorises them; every step ``p`` moves up by ``images / speed_images`` while ``r`` exceeds the
target (0.6 in the paper) and down by the same amount otherwise (:func:`adapt_probability`),
so it can go from 0 to 1 in ``speed_images`` (500k) images. The paper's pipeline has 18
transformations; here they are DiffAugment's three. The paper adjusts every 4th step from the
mean of 4 steps' ``r``; here every step from its own, at the same rate per image.

The module separates drawing the random parameters (:func:`draw_params`) from applying them
(:func:`apply`), so a data-parallel step can draw them for the global batch and give each device
its rows, like the latents: the update is then the same on any number of devices.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp

from dcgan_jax.errors import UserError

# In the order they are applied, which is the paper's.
POLICIES = ('color', 'translation', 'cutout')
TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2
# ADA's defaults (Karras et al. 2020): the target of E[sign(D(real))], and the images over which
# the probability can move from 0 to 1.
ADA_TARGET = 0.6
ADA_SPEED_IMAGES = 500_000
# fold_in data of the per-image "apply this transformation" draws: their own stream, so the
# transformations' parameters are the same with or without a probability.
_APPLY_STREAM = 0x41444121

Params = dict[str, jax.Array]


def parse_policy(policy: str | Iterable[str] | None) -> tuple[str, ...]:
  """Normalises a policy: ``'color,translation'`` or a sequence of names; '' means none.

  Returns:
    The names in the order they are applied (:data:`POLICIES`), each once.

  Raises:
    UserError: an unknown name; the message lists the valid ones.
  """
  if policy is None:
    return ()
  names = policy.split(',') if isinstance(policy, str) else list(policy)
  names = [str(name).strip() for name in names if str(name).strip()]
  unknown = [name for name in names if name not in POLICIES]
  if unknown:
    raise UserError(f'augment must be a comma-separated subset of {", ".join(POLICIES)} '
                    f"or '' for none (got {unknown[0]!r}).")
  return tuple(name for name in POLICIES if name in names)


def _cutout_size(length: int) -> int:
  return int(length * CUTOUT_RATIO + 0.5)


def draw_params(key: jax.Array, batch_size: int, height: int, width: int,
                policy: tuple[str, ...], probability: float | jax.Array | None = None) -> Params:
  """Draws each image's transformation.

  Args:
    key: a PRNG key.
    batch_size: number of images.
    height, width: the images' size (bounds of the shifts and cutout centres).
    policy: names from :func:`parse_policy`.
    probability: None (every transformation applies to every image: DiffAugment) or the
      probability ``p`` (a float or traced scalar) with which each transformation applies to
      each image, drawn independently (ADA).

  Returns:
    A dict of arrays with leading axis ``batch_size``: ``brightness``, ``saturation``,
    ``contrast`` (float32) for color; ``shift`` (int32 ``[B, 2]``, rows then columns) for
    translation; ``cutout_center`` (int32 ``[B, 2]``) for cutout; with a ``probability``,
    ``apply_<name>`` (bool) per transformation too.
  """
  params: Params = {}
  color_key, shift_key, cut_key = jax.random.split(key, 3)
  if 'color' in policy:
    b_key, s_key, c_key = jax.random.split(color_key, 3)
    params['brightness'] = jax.random.uniform(b_key, (batch_size,)) - 0.5
    params['saturation'] = jax.random.uniform(s_key, (batch_size,)) * 2.0
    params['contrast'] = jax.random.uniform(c_key, (batch_size,)) + 0.5
  if 'translation' in policy:
    max_shift = jnp.array([int(height * TRANSLATION_RATIO + 0.5),
                           int(width * TRANSLATION_RATIO + 0.5)], jnp.int32)
    params['shift'] = jax.random.randint(shift_key, (batch_size, 2), -max_shift, max_shift + 1,
                                         dtype=jnp.int32)
  if 'cutout' in policy:
    params['cutout_center'] = jax.random.randint(cut_key, (batch_size, 2), 0,
                                                 jnp.array([height, width], jnp.int32),
                                                 dtype=jnp.int32)
  if probability is not None:
    apply_keys = jax.random.split(jax.random.fold_in(key, _APPLY_STREAM), len(POLICIES))
    for name, apply_key in zip(POLICIES, apply_keys):
      if name in policy:
        params[f'apply_{name}'] = jax.random.uniform(apply_key, (batch_size,)) < probability
  return params


def adapt_probability(probability: jax.Array, real_sign: jax.Array, num_images: int | jax.Array,
                      target: float = ADA_TARGET,
                      speed_images: int = ADA_SPEED_IMAGES) -> jax.Array:
  """ADA's controller: the next augmentation probability.

  Args:
    probability: The current ``p``.
    real_sign: ``E[sign(D(real))]`` over the images of this adjustment.
    num_images: How many real images that mean is over (the global batch).
    target: The wanted ``E[sign(D(real))]``; above it D is taken to overfit.
    speed_images: Images over which ``p`` can move by 1.

  Returns:
    ``p ± num_images / speed_images`` (up while ``real_sign > target``), clipped to [0, 1].
  """
  step = jnp.sign(real_sign - target) * (num_images / speed_images)
  return jnp.clip(probability + step, 0.0, 1.0).astype(jnp.float32)


def _color(images: jax.Array, params: Params) -> jax.Array:
  per_image = lambda v: v.astype(images.dtype)[:, None, None, None]
  images = images + per_image(params['brightness'])
  channel_mean = jnp.mean(images, axis=-1, keepdims=True)
  images = (images - channel_mean) * per_image(params['saturation']) + channel_mean
  image_mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  return (images - image_mean) * per_image(params['contrast']) + image_mean


def _translate(images: jax.Array, shift: jax.Array) -> jax.Array:
  """Output pixel (i, j) is input pixel (i - dy, j - dx), or 0 where that lies outside."""
  _, height, width, _ = images.shape
  rows = jnp.arange(height)[None, :] - shift[:, 0:1]  # [B, H]
  cols = jnp.arange(width)[None, :] - shift[:, 1:2]  # [B, W]
  inside = (((rows >= 0) & (rows < height))[:, :, None]
            & ((cols >= 0) & (cols < width))[:, None, :])  # [B, H, W]
  # A gather, not a one-hot matmul: exact at any matmul precision (TF32 would round pixels).
  take = lambda image, r, c: image[jnp.clip(r, 0, height - 1)][:, jnp.clip(c, 0, width - 1)]
  moved = jax.vmap(take)(images, rows, cols)
  return moved * inside[..., None].astype(images.dtype)


def _cutout(images: jax.Array, center: jax.Array) -> jax.Array:
  _, height, width, _ = images.shape
  size_h, size_w = _cutout_size(height), _cutout_size(width)
  top = center[:, 0:1] - size_h // 2
  left = center[:, 1:2] - size_w // 2
  r = jnp.arange(height)[None, :]
  c = jnp.arange(width)[None, :]
  in_rows = (r >= top) & (r < top + size_h)  # [B, H]
  in_cols = (c >= left) & (c < left + size_w)  # [B, W]
  keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
  return images * keep[..., None].astype(images.dtype)


def apply(images: jax.Array, params: Params, policy: tuple[str, ...],
          value_range: tuple[float, float] = (-1.0, 1.0)) -> jax.Array:
  """Transforms ``[B, H, W, C]`` images with the drawn ``params``; differentiable in ``images``.

  For fixed parameters the transformation is affine in the pixels, so gradients are exact.

  Args:
    images: images in ``value_range``.
    params: from :func:`draw_params`.
    policy: names from :func:`parse_policy`.
    value_range: the images' range. The transformations are defined on [-1, 1] (the paper's;
      brightness shifts by up to a quarter of it, fills are its middle), so other ranges are mapped
      there and back: a sigmoid generator's [0, 1] images get the same augmentation.
  """
  low, high = value_range
  if (low, high) == (-1.0, 1.0):
    return _apply_centred(images, params, policy)
  scale = (high - low) / 2.0
  centred = (images - (low + scale)) / scale
  return _apply_centred(centred, params, policy) * scale + (low + scale)


def _apply_centred(images: jax.Array, params: Params, policy: tuple[str, ...]) -> jax.Array:
  transforms = {'color': lambda x: _color(x, params),
                'translation': lambda x: _translate(x, params['shift']),
                'cutout': lambda x: _cutout(x, params['cutout_center'])}
  for name in POLICIES:
    if name not in policy:
      continue
    transformed = transforms[name](images)
    chosen = params.get(f'apply_{name}')
    # With a probability, the images not drawn for this transformation pass through unchanged
    # (and so does their gradient).
    images = transformed if chosen is None else jnp.where(chosen[:, None, None, None],
                                                          transformed, images)
  return images


def augment(images: jax.Array, key: jax.Array, policy: str | Iterable[str],
            value_range: tuple[float, float] = (-1.0, 1.0),
            probability: float | jax.Array | None = None) -> jax.Array:
  """Draws and applies a policy: the one-call form for custom training loops.

  Example::

    logits = discriminator.apply(variables, augment.augment(images, key, 'color,translation'))
  """
  policy = parse_policy(policy)
  if not policy:
    return images
  batch, height, width, _ = images.shape
  params = draw_params(key, batch, height, width, policy, probability)
  return apply(images, params, policy, value_range)
