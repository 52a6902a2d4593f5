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
                policy: tuple[str, ...]) -> Params:
  """Draws each image's transformation.

  Args:
    key: a PRNG key.
    batch_size: number of images.
    height, width: the images' size (bounds of the shifts and cutout centres).
    policy: names from :func:`parse_policy`.

  Returns:
    A dict of arrays with leading axis ``batch_size``: ``brightness``, ``saturation``,
    ``contrast`` (float32) for color; ``shift`` (int32 ``[B, 2]``, rows then columns) for
    translation; ``cutout_center`` (int32 ``[B, 2]``) for cutout.
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
  return params


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
  if 'color' in policy:
    images = _color(images, params)
  if 'translation' in policy:
    images = _translate(images, params['shift'])
  if 'cutout' in policy:
    images = _cutout(images, params['cutout_center'])
  return images


def augment(images: jax.Array, key: jax.Array, policy: str | Iterable[str],
            value_range: tuple[float, float] = (-1.0, 1.0)) -> jax.Array:
  """Draws and applies a policy: the one-call form for custom training loops.

  Example::

    logits = discriminator.apply(variables, augment.augment(images, key, 'color,translation'))
  """
  policy = parse_policy(policy)
  if not policy:
    return images
  batch, height, width, _ = images.shape
  return apply(images, draw_params(key, batch, height, width, policy), policy, value_range)
