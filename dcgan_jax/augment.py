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
  Centres are whole pixels in ``[0, H - 1]``, or ``[0, H]`` when the square's side is even, as
  in DiffAugment's code (and likewise along W).

Adaptive augmentation (ADA, Karras et al., "Training Generative Adversarial Networks with
Limited Data", NeurIPS 2020): each transformation is applied to each image with probability
``p`` (the others pass it through unchanged), and ``p`` follows D's overfitting. The heuristic
``r = E[sign(D(real))]`` (D's outputs on the augmented training images) approaches 1 as D
memorises them; every step ``p`` moves up by ``images / speed_images`` while ``r`` exceeds the
target (0.6 in the paper) and down by the same amount otherwise (:func:`adapt_probability`),
so it can go from 0 to 1 in ``speed_images`` (500k) images. The paper adjusts every 4th step
from the mean of 4 steps' ``r``; here every step from its own, at the same rate per image.

ADA's own transformations, the groups its paper recommends (``bgc``), are here too, each of
their transformations applied to each image with probability ``p`` on its own, with the
paper's parameter distributions (its appendix B):

- ``blit``: x-flip, rotation by a multiple of 90°, integer translation by up to 1/8 of the
  side. These move whole pixels, so they are exact.
- ``geom``: isotropic scaling (log2-normal, std 0.2), rotation by U(-π, π) (twice, before and
  after the next one, each with probability ``1 - sqrt(1 - p)``, so that a rotation happens
  with probability ``p``), anisotropic scaling (log2-normal, std 0.2) and fractional
  translation (normal, std 1/8 of the side). Blit and geom are one resampling of the image:
  reflect-padded, bilinear (the paper filters with a wavelet to avoid aliasing; bilinear
  interpolation is the simpler choice here).
- ``ada_color``: brightness (+N(0, 0.2²)), contrast (×log2-normal, std 0.5), luma flip,
  hue rotation by U(-π, π) about the grey axis and saturation (×log2-normal, std 1) as one
  affine map of each pixel's RGB value; grey images are taken as R = G = B.

- ``filter``: image-space filtering. Four frequency bands, [0, π/8], [π/8, π/4], [π/4, π/2]
  and [π/2, π], are each amplified or attenuated by a gain 2^N(0, 1) drawn with probability
  ``p``; after each band's draw the gains are rescaled so that an image whose power falls off
  as 1/f (10/13 of it in the lowest band, 1/13 in each other) keeps its expected power, in
  the order of ADA's released pipeline. The filter is one separable symmetric FIR kernel per image (33 taps,
  reflect-padded) applied along rows and then columns; its bands are Hann-windowed sinc
  low-passes and their differences (the paper builds them from a wavelet).
- ``noise``: additive Gaussian noise per pixel and channel, with a standard deviation drawn
  per image as |N(0, 0.1²)| (with probability ``p``; 0 otherwise).

They run before DiffAugment's, in the order listed. ``bgc`` is short for the first three (the
paper's recommended pipeline), ``bgcfnc`` for all five with ``cutout`` (the paper's full one).

The module separates drawing the random parameters (:func:`draw_params`) from applying them
(:func:`apply`), so a data-parallel step can draw them for the global batch and give each device
its rows, like the latents: the update is then the same on any number of devices.
"""

from __future__ import annotations

import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax.errors import UserError

# DiffAugment's transformations, in the order they are applied (the paper's).
DIFFAUGMENT_POLICIES = ('color', 'translation', 'cutout')
# ADA's groups (Karras et al. 2020), in its order; they run before DiffAugment's.
ADA_POLICIES = ('blit', 'geom', 'ada_color', 'filter', 'noise')
POLICIES = ADA_POLICIES + DIFFAUGMENT_POLICIES
# Names that stand for several: ADA's recommended pipeline (blit, geometry, colour) and its
# full one (with filtering, noise and cutout).
ALIASES = {'bgc': ADA_POLICIES[:3], 'bgcfnc': ADA_POLICIES + ('cutout',)}
TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2
# ADA's defaults (Karras et al. 2020): the target of E[sign(D(real))], and the images over which
# the probability can move from 0 to 1.
ADA_TARGET = 0.6
ADA_SPEED_IMAGES = 500_000
# fold_in data of the per-image "apply this transformation" draws: their own stream, so the
# transformations' parameters are the same with or without a probability.
_APPLY_STREAM = 0x41444121
# fold_in data of ADA's groups: streams of their own, so adding them left DiffAugment's draws
# (and the runs that use them) as they were.
_BLIT_STREAM, _GEOM_STREAM, _ADA_COLOR_STREAM = 0x424C4954, 0x47454F4D, 0x434F4C52
_FILTER_STREAM, _NOISE_STREAM = 0x46494C54, 0x4E4F4953
# ADA's parameter distributions (appendix B of the paper).
ADA_INTEGER_TRANSLATION = 0.125  # U(-0.125, 0.125) of the side, rounded to whole pixels.
ADA_SCALE_STD = 0.2  # Isotropic and anisotropic scaling: 2^N(0, 0.2^2).
ADA_FRACTIONAL_TRANSLATION_STD = 0.125  # N(0, 0.125^2) of the side.
ADA_BRIGHTNESS_STD = 0.2
ADA_CONTRAST_STD = 0.5  # 2^N(0, 0.5^2).
ADA_SATURATION_STD = 1.0  # 2^N(0, 1).
ADA_FILTER_STD = 1.0  # Each band's gain: 2^N(0, 1).
# The share of each band (lowest first) in the power of an image whose spectrum falls as 1/f:
# the gains are rescaled to keep sum(share * gain^2) = 1. Integers over their sum, so that
# gains of 1 stay exactly 1.
ADA_FILTER_EXPECTED_POWER = (10, 1, 1, 1)
ADA_NOISE_STD = 0.1  # Per-image noise std: |N(0, 0.1^2)|.
FILTER_HALF_TAPS = 16  # 33-tap kernels: >= 85% of each band's response energy is in the band.


def filter_bank(half_taps: int = FILTER_HALF_TAPS) -> np.ndarray:
  """The image filter's four bands as symmetric FIR kernels, lowest frequencies first.

  Low-passes with cut-offs π/8, π/4 and π/2 (sinc, Hann window, unit gain at 0) give the bands
  [0, π/8], [π/8, π/4], [π/4, π/2] as the first and as differences of neighbours, and [π/2, π]
  as a unit impulse minus the last. The four add up to the impulse: gains of 1 leave the image
  as it was.

  Returns:
    float64 ``[4, 2 * half_taps + 1]``.
  """
  n = np.arange(-half_taps, half_taps + 1)
  window = 0.5 + 0.5 * np.cos(np.pi * n / (half_taps + 1))
  lowpass = []
  for cutoff in (1 / 8, 1 / 4, 1 / 2):  # Of π.
    kernel = cutoff * np.sinc(cutoff * n) * window
    lowpass.append(kernel / kernel.sum())
  impulse = (n == 0).astype(np.float64)
  return np.stack([lowpass[0], lowpass[1] - lowpass[0], lowpass[2] - lowpass[1],
                   impulse - lowpass[2]])


_FILTER_BANK = filter_bank()

Params = dict[str, jax.Array]


def parse_policy(policy: str | Iterable[str] | None) -> tuple[str, ...]:
  """Normalises a policy: ``'color,translation'`` or a sequence of names; '' means none.

  Returns:
    The names in the order they are applied (:data:`POLICIES`), each once; ``bgc`` stands for
    ADA's recommended three groups, ``bgcfnc`` for all of ADA's with ``cutout``.

  Raises:
    UserError: an unknown name; the message lists the valid ones.
  """
  if policy is None:
    return ()
  names = policy.split(',') if isinstance(policy, str) else list(policy)
  names = [str(name).strip() for name in names if str(name).strip()]
  if not names and isinstance(policy, str) and policy.strip():
    # Only separators (',' or ' , '): surely a slip, not a way of saying "none" ('' says that).
    raise UserError(f'augment {policy!r} names no augmentation; give a comma-separated subset of '
                    f"{', '.join(POLICIES)} (e.g. 'translation,color'), or '' for none.")
  names = [part for name in names for part in ALIASES.get(name, (name,))]
  unknown = [name for name in names if name not in POLICIES]
  if unknown:
    raise UserError(f'augment must be a comma-separated subset of {", ".join(POLICIES)} '
                    f"('bgc' is ADA's blit,geom,ada_color; 'bgcfnc' adds filter,noise,cutout) "
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
    ``apply_<name>`` (bool) per DiffAugment transformation too. ADA's groups give matrices
    in which each of their transformations is already drawn or left out: ``blit_matrix`` and
    ``geom_matrix`` (float32 ``[B, 3, 3]``, from an output pixel's centred (x, y, 1) to where
    it is read from) and ``ada_color_matrix`` (float32 ``[B, 3, 4]``, applied to (R, G, B, 1));
    ``filter_gains`` (float32 ``[B, 4]``, the bands' gains, 1 where not drawn); ``noise_std``
    (float32, 0 where not drawn) and ``noise_seed`` (uint32, each image's own seed of its noise
    pixels, drawn where they are added: a data-parallel step draws only its own images').
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
    # One more centre for an even side (DiffAugment's bound): the square then reaches the
    # last row as often as the first.
    bounds = [length + 1 - _cutout_size(length) % 2 for length in (height, width)]
    params['cutout_center'] = jax.random.randint(cut_key, (batch_size, 2), 0,
                                                 jnp.array(bounds, jnp.int32), dtype=jnp.int32)
  if 'blit' in policy:
    params['blit_matrix'] = _blit_matrix(jax.random.fold_in(key, _BLIT_STREAM), batch_size,
                                         height, width, probability)
  if 'geom' in policy:
    params['geom_matrix'] = _geom_matrix(jax.random.fold_in(key, _GEOM_STREAM), batch_size,
                                         height, width, probability)
  if 'ada_color' in policy:
    params['ada_color_matrix'] = _ada_color_matrix(jax.random.fold_in(key, _ADA_COLOR_STREAM),
                                                   batch_size, probability)
  if 'filter' in policy:
    params['filter_gains'] = _filter_gains(jax.random.fold_in(key, _FILTER_STREAM), batch_size,
                                           probability)
  if 'noise' in policy:
    params['noise_std'], params['noise_seed'] = _noise(jax.random.fold_in(key, _NOISE_STREAM),
                                                       batch_size, probability)
  if probability is not None:
    apply_keys = jax.random.split(jax.random.fold_in(key, _APPLY_STREAM),
                                  len(DIFFAUGMENT_POLICIES))
    for name, apply_key in zip(DIFFAUGMENT_POLICIES, apply_keys):
      if name in policy:
        params[f'apply_{name}'] = jax.random.uniform(apply_key, (batch_size,)) < probability
  return params


# ---- ADA's groups: per-image matrices -----------------------------------------------------------
# Each transformation is drawn for every image and replaced by the identity where the image's
# own draw (probability p) leaves it out; None (no probability) applies all of them. The
# geometric matrices are inverses: they take an output pixel's centre, in pixels from the
# image's centre, to the point of the input that is read there.


def _chosen(key: jax.Array, batch_size: int, probability) -> jax.Array:
  if probability is None:
    return jnp.ones((batch_size,), bool)
  return jax.random.uniform(key, (batch_size,)) < probability


def _matrices(rows: list[list[jax.Array | float]], batch_size: int) -> jax.Array:
  """``[B, len(rows), len(rows[0])]`` from entries that are per-image arrays or numbers."""
  full = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (batch_size,))
  return jnp.stack([jnp.stack([full(v) for v in row], -1) for row in rows], -2)


def _scale(sx, sy, n):
  return _matrices([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]], n)


def _rotate(cos, sin, n):
  return _matrices([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], n)


def _translate_matrix(tx, ty, n):
  return _matrices([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]], n)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """Batched matrix product as sums of products: exact where XLA's matmul would round (TF32)."""
  return jnp.sum(a[:, :, :, None] * b[:, None, :, :], axis=2)


def _compose(matrices: list[jax.Array]) -> jax.Array:
  out = matrices[0]
  for matrix in matrices[1:]:
    out = _matmul(out, matrix)
  return out


def _blit_matrix(key, batch_size, height, width, probability):
  flip_key, rot_key, shift_key, *choice_keys = jax.random.split(key, 6)
  chosen = [_chosen(k, batch_size, probability) for k in choice_keys]
  flip = jax.random.randint(flip_key, (batch_size,), 0, 2) * chosen[0]
  quarter = jax.random.randint(rot_key, (batch_size,), 0, 4) * chosen[1]
  # cos and sin of a multiple of 90° from a table: exactly 0 and ±1.
  cos, sin = jnp.array([1.0, 0.0, -1.0, 0.0])[quarter], jnp.array([0.0, 1.0, 0.0, -1.0])[quarter]
  shift = jax.random.uniform(shift_key, (batch_size, 2), minval=-ADA_INTEGER_TRANSLATION,
                             maxval=ADA_INTEGER_TRANSLATION)
  shift = jnp.round(shift * jnp.array([width, height])) * chosen[2][:, None]
  return _compose([_scale(1.0 - 2.0 * flip, 1.0, batch_size), _rotate(cos, -sin, batch_size),
                   _translate_matrix(-shift[:, 0], -shift[:, 1], batch_size)])


def _geom_matrix(key, batch_size, height, width, probability):
  keys = jax.random.split(key, 10)
  rotation_probability = None if probability is None else 1.0 - jnp.sqrt(1.0 - probability)
  chosen = [_chosen(k, batch_size, p) for k, p in zip(
      keys[5:], (probability, rotation_probability, probability, rotation_probability,
                 probability))]
  normal = lambda k, shape=(batch_size,): jax.random.normal(k, shape)
  scale = jnp.exp2(normal(keys[0]) * ADA_SCALE_STD * chosen[0])
  angles = [jax.random.uniform(k, (batch_size,), minval=-math.pi, maxval=math.pi) * c
            for k, c in ((keys[1], chosen[1]), (keys[3], chosen[3]))]
  aniso = jnp.exp2(normal(keys[2]) * ADA_SCALE_STD * chosen[2])
  shift = (normal(keys[4], (batch_size, 2)) * ADA_FRACTIONAL_TRANSLATION_STD
           * jnp.array([width, height]) * chosen[4][:, None])
  return _compose([_scale(1.0 / scale, 1.0 / scale, batch_size),
                   _rotate(jnp.cos(angles[0]), -jnp.sin(angles[0]), batch_size),
                   _scale(1.0 / aniso, aniso, batch_size),
                   _rotate(jnp.cos(angles[1]), -jnp.sin(angles[1]), batch_size),
                   _translate_matrix(-shift[:, 0], -shift[:, 1], batch_size)])


def _ada_color_matrix(key, batch_size, probability):
  keys = jax.random.split(key, 10)
  chosen = [_chosen(k, batch_size, probability) for k in keys[5:]]
  normal = lambda k: jax.random.normal(k, (batch_size,))
  brightness = normal(keys[0]) * ADA_BRIGHTNESS_STD * chosen[0]
  contrast = jnp.exp2(normal(keys[1]) * ADA_CONTRAST_STD * chosen[1])
  luma_flip = jax.random.randint(keys[2], (batch_size,), 0, 2) * chosen[2]
  hue = jax.random.uniform(keys[3], (batch_size,), minval=-math.pi, maxval=math.pi) * chosen[3]
  saturation = jnp.exp2(normal(keys[4]) * ADA_SATURATION_STD * chosen[4])
  # Brightness first, then linear maps (the paper's order): x -> L (x + b) = L x + b L 1.
  v = jnp.full((3,), 1.0 / math.sqrt(3.0))  # The grey (luma) axis.
  vv = jnp.outer(v, v)
  eye = jnp.eye(3)
  cross = jnp.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
  per_image = lambda x: x[:, None, None]
  linear = _compose([  # The last map leftmost.
      vv + per_image(saturation) * (eye - vv),
      # Rodrigues: rotation by `hue` about v.
      per_image(jnp.cos(hue)) * eye + per_image(jnp.sin(hue)) * cross
      + per_image(1.0 - jnp.cos(hue)) * vv,
      eye - 2.0 * per_image(luma_flip) * vv,
      per_image(contrast) * eye,
  ])
  offset = brightness[:, None] * jnp.sum(linear, axis=2)  # b L (1, 1, 1).
  return jnp.concatenate([linear, offset[:, :, None]], axis=2)  # Applied to (R, G, B, 1).


def _filter_gains(key, batch_size, probability):
  """Each band's gain; after each band's draw all four are rescaled to keep the expected power
  of a 1/f image (the order of ADA's released pipeline), so gains of 1 (nothing drawn) stay
  exactly 1."""
  shares = jnp.asarray(ADA_FILTER_EXPECTED_POWER, jnp.float32)
  num_bands = len(ADA_FILTER_EXPECTED_POWER)
  keys = jax.random.split(key, 2 * num_bands)
  gains = jnp.ones((batch_size, num_bands), jnp.float32)
  for band in range(num_bands):
    chosen = _chosen(keys[num_bands + band], batch_size, probability)
    gain = jnp.exp2(jax.random.normal(keys[band], (batch_size,)) * ADA_FILTER_STD * chosen)
    step = jnp.ones((batch_size, num_bands), jnp.float32).at[:, band].set(gain)
    power = jnp.sum(shares * step**2, axis=1, keepdims=True) / jnp.sum(shares)
    gains = gains * step / jnp.sqrt(power)
  return gains


def _noise(key, batch_size, probability):
  sigma_key, chosen_key, seed_key = jax.random.split(key, 3)
  sigma = jnp.abs(jax.random.normal(sigma_key, (batch_size,))) * ADA_NOISE_STD
  sigma = sigma * _chosen(chosen_key, batch_size, probability)
  return sigma, jax.random.bits(seed_key, (batch_size,), jnp.uint32)


def _mirror(index: jax.Array, size: int) -> jax.Array:
  """Reflect padding (the edge pixel is not repeated): ..., 2, 1, 0, 1, 2, ..., n-1, n-2, ..."""
  if size == 1:
    return jnp.zeros_like(index)
  period = 2 * (size - 1)
  index = jnp.mod(index, period)
  return jnp.where(index > size - 1, period - index, index)


def _resample(images: jax.Array, matrix: jax.Array) -> jax.Array:
  """Reads each output pixel at ``matrix @ (x, y, 1)`` of the reflect-padded input, bilinearly.

  Where that point is a pixel centre (blit alone), the weights are 1 and 0: the pixel exactly.
  """
  _, height, width, _ = images.shape
  x = (jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2)[None, None, :]
  y = (jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2)[None, :, None]
  m = lambda i, j: matrix[:, i, j][:, None, None]
  # Products and sums, not a matmul: exact for the whole-pixel moves at any matmul precision.
  source_x = m(0, 0) * x + m(0, 1) * y + m(0, 2) + (width - 1) / 2  # [B, H, W]
  source_y = m(1, 0) * x + m(1, 1) * y + m(1, 2) + (height - 1) / 2
  x0, y0 = jnp.floor(source_x), jnp.floor(source_y)
  fx = (source_x - x0).astype(images.dtype)[..., None]
  fy = (source_y - y0).astype(images.dtype)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  xs = (_mirror(x0, width), _mirror(x0 + 1, width))
  ys = (_mirror(y0, height), _mirror(y0 + 1, height))
  take = jax.vmap(lambda image, r, c: image[r, c])  # A gather: exact, differentiable in pixels.
  top = take(images, ys[0], xs[0]) * (1 - fx) + take(images, ys[0], xs[1]) * fx
  bottom = take(images, ys[1], xs[0]) * (1 - fx) + take(images, ys[1], xs[1]) * fx
  return top * (1 - fy) + bottom * fy


def _ada_color(images: jax.Array, matrix: jax.Array) -> jax.Array:
  channels = images.shape[-1]
  if channels not in (1, 3):
    raise ValueError(f'ada_color transforms RGB or grey images (1 or 3 channels), not '
                     f'{channels} channels.')
  rgb = images if channels == 3 else jnp.repeat(images, 3, axis=-1)
  matrix = matrix.astype(images.dtype)[:, None, None]  # [B, 1, 1, 3, 4]
  out = jnp.sum(matrix[..., :3] * rgb[..., None, :], axis=-1) + matrix[..., 3]
  return out if channels == 3 else jnp.mean(out, axis=-1, keepdims=True)


def _convolve_axis(images: jax.Array, kernels: jax.Array, axis: int) -> jax.Array:
  """Each image filtered along ``axis`` by its own symmetric ``[taps]`` kernel, reflect-padded."""
  size, taps = images.shape[axis], kernels.shape[1]
  half = taps // 2
  padded = jnp.take(images, _mirror(jnp.arange(size + 2 * half) - half, size), axis=axis)
  out = 0
  for tap in range(taps):  # Products and sums: exact where a kernel is the unit impulse.
    out = out + (kernels[:, tap, None, None, None]
                 * jax.lax.slice_in_dim(padded, tap, tap + size, axis=axis))
  return out


def _filter(images: jax.Array, gains: jax.Array) -> jax.Array:
  """Amplifies each band by its gain: one separable kernel per image, rows then columns."""
  bank = jnp.asarray(_FILTER_BANK, jnp.float32)
  impulse = jnp.asarray(_FILTER_BANK.shape[1] // 2 == np.arange(_FILTER_BANK.shape[1]),
                        jnp.float32)
  # The impulse plus (gain - 1) times each band: exactly the impulse where no gain was drawn.
  kernels = impulse + jnp.sum((gains - 1.0)[:, :, None] * bank[None], axis=1)
  kernels = kernels.astype(images.dtype)
  return _convolve_axis(_convolve_axis(images, kernels, axis=2), kernels, axis=1)


def _add_noise(images: jax.Array, std: jax.Array, seed: jax.Array) -> jax.Array:
  """Per-pixel noise from each image's own seed, in the images' shape."""
  pixels = jax.vmap(lambda s: jax.random.normal(jax.random.key(s), images.shape[1:]))(seed)
  return images + (std[:, None, None, None] * pixels).astype(images.dtype)


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
  if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
    # uint8 pixels would come back as floats far outside any image range (-44..299 with
    # 'color'), and D would train on them.
    raise UserError(f'augment takes floating images in value_range {tuple(value_range)}, got '
                    f'{jnp.result_type(images)}: scale them first, e.g. '
                    'dcgan_jax.train_step.images_to_model_range(images).')
  low, high = value_range
  if (low, high) == (-1.0, 1.0):
    return _apply_centred(images, params, policy)
  scale = (high - low) / 2.0
  centred = (images - (low + scale)) / scale
  return _apply_centred(centred, params, policy) * scale + (low + scale)


def _apply_centred(images: jax.Array, params: Params, policy: tuple[str, ...]) -> jax.Array:
  # ADA's groups first: blit and geom as one resampling, then its colour map.
  geometric = [params[f'{name}_matrix'] for name in ('blit', 'geom') if name in policy]
  if geometric:
    images = _resample(images, _compose(geometric))
  if 'ada_color' in policy:
    images = _ada_color(images, params['ada_color_matrix'])
  if 'filter' in policy:
    images = _filter(images, params['filter_gains'])
  if 'noise' in policy:
    images = _add_noise(images, params['noise_std'], params['noise_seed'])
  transforms = {'color': lambda x: _color(x, params),
                'translation': lambda x: _translate(x, params['shift']),
                'cutout': lambda x: _cutout(x, params['cutout_center'])}
  for name in DIFFAUGMENT_POLICIES:
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
