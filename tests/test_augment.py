"""DiffAugment and ADA: each transformation against numpy, its random draws, the adaptive
probability, and the step that uses them."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dcgan_jax import (AdaptiveAugmentState, DataParallelStep, Discriminator, GANState, Generator,
                       StepConfig, UserError, augment, create_gan_state, make_train_step,
                       train_step)

G = Generator(image_size=16, channels=3, latent_dim=16, width=8)
D = Discriminator(image_size=16, channels=3, width=8)
FULL = 'color,translation,cutout'


def _images(n=4, size=16, channels=3, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, channels)).astype(np.float32)


def _uint8_images(n=32, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, 16, 16, 3)).astype(np.uint8)


@pytest.mark.parametrize('policy,expected', [
    ('', ()),
    (None, ()),
    ('cutout,color', ('color', 'cutout')),  # Applied in the paper's order whatever the spelling.
    (' translation , color,', ('color', 'translation')),
    (('translation', 'translation'), ('translation',)),
    (FULL, augment.DIFFAUGMENT_POLICIES),
    ('bgc', ('blit', 'geom', 'ada_color')),  # ADA's recommended pipeline.
    ('cutout, bgc', ('blit', 'geom', 'ada_color', 'cutout')),  # ADA's before DiffAugment's.
    ('bgcfnc', augment.ADA_POLICIES + ('cutout',)),  # ADA's full pipeline.
    ('noise,filter', ('filter', 'noise')),
    ('bgcfnc,translation,color', augment.POLICIES),
])
def test_parse_policy(policy, expected):
  assert augment.parse_policy(policy) == expected


def test_unknown_policy_names_the_valid_ones():
  with pytest.raises(UserError, match=r"subset of blit, geom, ada_color, filter, noise, color, "
                     r"translation, cutout \('bgc' is ADA's blit,geom,ada_color; 'bgcfnc' adds "
                     r"filter,noise,cutout\) .*got 'flip'"):
    augment.parse_policy('color,flip')
  with pytest.raises(UserError, match="got 'colour'"):
    StepConfig(augment='colour')
  assert StepConfig(augment='translation,color').augment == ('color', 'translation')
  for only_separators in (',', ' , ,'):
    with pytest.raises(UserError, match=r"augment '[ ,]+' names no augmentation; .* or '' for "
                       'none'):
      augment.parse_policy(only_separators)


def _numpy_translate(image, dy, dx):
  h, w, _ = image.shape
  out = np.zeros_like(image)
  src = image[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
  out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
  return out


def test_translation_moves_pixels_and_fills_zeros():
  images = _images(n=5)
  shifts = np.array([[0, 0], [2, -1], [-2, 2], [1, 0], [0, -2]], np.int32)
  out = np.asarray(augment.apply(images, {'shift': jnp.asarray(shifts)}, ('translation',)))
  for image, result, (dy, dx) in zip(images, out, shifts):
    np.testing.assert_array_equal(result, _numpy_translate(image, dy, dx))
  # Pixel (5, 5) of the second image came from (3, 6).
  assert out[1, 5, 5, 0] == images[1, 3, 6, 0]


def test_cutout_zeros_a_half_size_square_clipped_at_the_border():
  images = _images(n=3) + 5.0  # No pixel is zero before the cutout.
  centers = np.array([[8, 8], [0, 0], [15, 3]], np.int32)
  out = np.asarray(augment.apply(images, {'cutout_center': jnp.asarray(centers)}, ('cutout',)))
  for image, result, (cy, cx) in zip(images, out, centers):
    expected = image.copy()
    expected[max(0, cy - 4):cy + 4, max(0, cx - 4):cx + 4] = 0.0  # Side 16/2 = 8.
    np.testing.assert_array_equal(result, expected)
  assert (out[0] == 0).all(axis=-1).sum() == 64  # Fully inside: 8 x 8 pixels.
  assert (out[1] == 0).all(axis=-1).sum() == 16  # In the corner: 4 x 4 remain.


def test_color_is_brightness_then_saturation_then_contrast():
  images = _images(n=3)
  params = {'brightness': np.array([0.3, -0.2, 0.0], np.float32),
            'saturation': np.array([1.5, 0.0, 1.0], np.float32),
            'contrast': np.array([0.7, 1.2, 1.0], np.float32)}
  out = np.asarray(augment.apply(images, jax.tree.map(jnp.asarray, params), ('color',)))
  x = images.astype(np.float64) + params['brightness'][:, None, None, None]
  m = x.mean(axis=-1, keepdims=True)
  x = (x - m) * params['saturation'][:, None, None, None] + m
  m = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - m) * params['contrast'][:, None, None, None] + m
  np.testing.assert_allclose(out, x, atol=1e-5)
  # Saturation 0 makes the second image grey; neutral values leave the third unchanged.
  np.testing.assert_allclose(out[1], np.repeat(out[1][..., :1], 3, axis=-1), atol=1e-6)
  np.testing.assert_allclose(out[2], images[2], atol=1e-6)


def test_draws_cover_the_papers_ranges_and_differ_per_image():
  params = augment.draw_params(jax.random.key(0), 4096, 16, 32, augment.DIFFAUGMENT_POLICIES)
  params = jax.tree.map(np.asarray, params)
  assert set(params) == {'brightness', 'saturation', 'contrast', 'shift', 'cutout_center'}
  for name, low, high in [('brightness', -0.5, 0.5), ('saturation', 0.0, 2.0),
                          ('contrast', 0.5, 1.5)]:
    values = params[name]
    assert values.shape == (4096,) and values.min() >= low and values.max() < high, name
    assert values.min() < low + 0.01 and values.max() > high - 0.01, name
  # Shifts: 16/8 = 2 rows and 32/8 = 4 columns either way, every whole value drawn.
  assert sorted(set(params['shift'][:, 0])) == list(range(-2, 3))
  assert sorted(set(params['shift'][:, 1])) == list(range(-4, 5))
  # Cutout squares of even sides 8 and 16: centres 0..H and 0..W (DiffAugment's bounds); an
  # odd side (7 of 13) keeps 0..12.
  assert sorted(set(params['cutout_center'][:, 0])) == list(range(17))
  assert sorted(set(params['cutout_center'][:, 1])) == list(range(33))
  odd = np.asarray(augment.draw_params(jax.random.key(1), 4096, 13, 13, ('cutout',))[
      'cutout_center'])
  assert sorted(set(odd.ravel())) == list(range(13))
  # Only what the policy asks for is drawn.
  assert set(augment.draw_params(jax.random.key(0), 2, 16, 16, ('cutout',))) == {'cutout_center'}


def test_gradients_flow_through_every_transformation():
  images = jnp.asarray(_images(n=2, size=8))
  params = augment.draw_params(jax.random.key(3), 2, 8, 8, augment.POLICIES)
  # Compiled once: op by op, the 33-tap filter and the gathers take seconds per evaluation.
  f = jax.jit(lambda x: augment.apply(x, params, augment.POLICIES))
  check_grads(f, (images,), order=1, modes=['rev'], atol=2e-2, rtol=2e-2)
  # Cut-out and shifted-out pixels get no gradient; the rest do.
  grad = jax.grad(lambda x: jnp.sum(augment.apply(x, params, ('translation', 'cutout'))))(images)
  kept = np.asarray(augment.apply(jnp.ones_like(images), params, ('translation', 'cutout')))
  assert 0 < (np.asarray(grad) != 0).sum() < grad.size
  assert (np.asarray(grad) != 0).sum() == (kept != 0).sum()


def test_other_value_ranges_are_augmented_as_their_image_in_minus_one_to_one():
  """A sigmoid generator's [0, 1] images: the same transformation, fills at mid-grey 0.5."""
  images = _images()
  params = augment.draw_params(jax.random.key(4), 4, 16, 16, augment.POLICIES)
  apply = jax.jit(augment.apply, static_argnums=(2, 3))
  unit = apply((images + 1) / 2, params, augment.POLICIES, (0.0, 1.0))
  expected = (apply(images, params, augment.POLICIES, (-1.0, 1.0)) + 1) / 2
  np.testing.assert_allclose(np.asarray(unit), np.asarray(expected), atol=1e-6)
  cut = augment.apply(np.zeros_like(images), params, ('cutout',), value_range=(0.0, 1.0))
  assert np.isclose(np.asarray(cut), 0.5).any() and np.isclose(np.asarray(cut), 0.0).any()


def test_bfloat16_images_stay_bfloat16_and_match_float32():
  """A bfloat16 step augments bfloat16 images: every group keeps the dtype (no float32 noise or
  kernels promote it) and agrees with the float32 result to bfloat16's precision."""
  images = _images(n=4)
  params = augment.draw_params(jax.random.key(13), 4, 16, 16, augment.POLICIES)
  apply = jax.jit(augment.apply, static_argnums=2)
  low = apply(jnp.asarray(images, jnp.bfloat16), params, augment.POLICIES)
  assert low.dtype == jnp.bfloat16
  high = np.asarray(apply(images, params, augment.POLICIES))
  assert np.mean(np.abs(np.asarray(low, np.float32) - high)) < 0.02 * np.mean(np.abs(high))


def test_integer_images_are_refused_with_the_scaling_to_use():
  """uint8 pixels came back as floats in -44..299 (for 'color'), which D then trained on."""
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  with pytest.raises(UserError, match=r'floating images in value_range \(-1.0, 1.0\), got '
                                      r'uint8.*images_to_model_range'):
    augment.augment(jnp.asarray(images), jax.random.key(0), 'color')
  scaled = train_step.images_to_model_range(jnp.asarray(images))
  out = augment.augment(scaled, jax.random.key(0), 'color')
  assert out.dtype == jnp.float32 and float(jnp.max(jnp.abs(out))) < 3


def test_augment_in_one_call_and_empty_policy_is_the_identity():
  images = jnp.asarray(_images())
  assert augment.augment(images, jax.random.key(0), '') is images
  out = augment.augment(images, jax.random.key(0), FULL)
  policy = augment.DIFFAUGMENT_POLICIES
  expected = augment.apply(images, augment.draw_params(jax.random.key(0), 4, 16, 16, policy),
                           policy)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
  assert not np.allclose(np.asarray(out), images)


# ---- ADA's transformations (blit, geom, ada_color) ---------------------------------------------


def _dihedral(image):
  """The 8 flips and quarter turns of an [H, W, C] image."""
  flips = (image, image[:, ::-1])
  return [np.rot90(f, k, axes=(0, 1)) for f in flips for k in range(4)]


def test_blit_moves_whole_pixels_exactly():
  """Each image is one of its 8 flips/quarter turns moved by whole pixels (reflect-padded), to
  the bit; every flip/turn and every shift up to 1/8 of the side is drawn."""
  images = _images(n=96)
  out = np.asarray(jax.jit(augment.augment, static_argnums=2)(images, jax.random.key(5), 'blit'))
  seen_turns, seen_shifts = set(), set()
  for image, result in zip(images, out):
    found = [(t, dy, dx) for t, turned in enumerate(_dihedral(image))
             for dy in range(-2, 3) for dx in range(-2, 3)
             if np.array_equal(np.pad(turned, ((2, 2), (2, 2), (0, 0)), mode='reflect')[
                 2 - dy:18 - dy, 2 - dx:18 - dx], result)]
    assert found, 'not a whole-pixel move of the image'
    seen_turns.add(found[0][0])
    seen_shifts.add(found[0][1:])
  assert seen_turns == set(range(8))
  assert {dy for dy, _ in seen_shifts} == set(range(-2, 3))


def _scipy_resample(image, matrix):
  """The same resampling through scipy: `matrix` in centred (x, y), scipy in (row, column)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  height, width, _ = image.shape
  (a, b, c), (d, e, f) = matrix[0], matrix[1]
  cy, cx = (height - 1) / 2, (width - 1) / 2
  rows_cols = np.array([[e, d], [b, a]])  # (row, column) in -> out.
  offset = np.array([f - e * cy - d * cx + cy, c - b * cy - a * cx + cx])
  return np.stack([ndimage.affine_transform(image[..., k], rows_cols, offset, order=1,
                                            mode='mirror') for k in range(image.shape[-1])], -1)


def test_geometric_resampling_is_bilinear_with_reflect_padding_like_scipy():
  images = _images(n=6)
  angle, scale = 0.7, 1.3
  rotation = [[np.cos(angle), -np.sin(angle), 0.4], [np.sin(angle), np.cos(angle), -1.7],
              [0, 0, 1]]
  matrices = np.array([np.eye(3), [[1, 0, 0.5], [0, 1, 0], [0, 0, 1]],  # Half a pixel.
                       [[scale, 0, 0], [0, scale, 0], [0, 0, 1]], rotation,
                       [[0.8, 0.3, 2.6], [-0.2, 1.4, 9.5], [0, 0, 1]],  # Far past the border.
                       [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]], np.float32)
  out = np.asarray(augment.apply(images, {'geom_matrix': jnp.asarray(matrices)}, ('geom',)))
  for image, matrix, result in zip(images, matrices, out):
    np.testing.assert_allclose(result, _scipy_resample(image, matrix), atol=2e-5)
  np.testing.assert_array_equal(out[0], images[0])
  # A constant image stays constant, whatever the transformation.
  params = augment.draw_params(jax.random.key(6), 8, 16, 16, ('blit', 'geom'))
  flat = np.asarray(augment.apply(np.full((8, 16, 16, 3), 0.3, np.float32), params,
                                  ('blit', 'geom')))
  np.testing.assert_allclose(flat, 0.3, atol=1e-6)


def test_geom_and_ada_color_draw_the_papers_distributions():
  """Without a probability every transformation applies: the determinant of the geometric map
  is 1/s² (isotropic scale s = 2^N(0, 0.2²)); on colours, the grey axis is an eigenvector with
  eigenvalue ±c (contrast 2^N(0, 0.5²), luma flip half the time), the plane across it is
  stretched by c·s (saturation 2^N(0, 1)), and brightness N(0, 0.2²) moves along the grey axis."""
  n = 4096
  params = jax.tree.map(np.asarray, augment.draw_params(jax.random.key(7), n, 16, 16,
                                                        ('geom', 'ada_color')))
  assert set(params) == {'geom_matrix', 'ada_color_matrix'}
  log_det = np.log2(np.abs(np.linalg.det(params['geom_matrix'][:, :2, :2])))
  assert abs(np.std(log_det) - 2 * 0.2) < 0.03 and abs(np.mean(log_det)) < 0.03
  linear, offset = params['ada_color_matrix'][:, :, :3], params['ada_color_matrix'][:, :, 3]
  grey = np.ones(3) / np.sqrt(3)
  on_grey = linear @ grey
  eigenvalue = on_grey @ grey
  np.testing.assert_allclose(on_grey, eigenvalue[:, None] * grey, atol=1e-5)
  assert abs(np.std(np.log2(np.abs(eigenvalue))) - 0.5) < 0.03
  assert 0.45 < np.mean(eigenvalue < 0) < 0.55  # Luma flip.
  across = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
  stretch = np.linalg.norm(linear @ across, axis=1) / np.abs(eigenvalue)
  assert abs(np.std(np.log2(stretch)) - 1.0) < 0.05
  np.testing.assert_allclose(offset, offset[:, :1].repeat(3, 1), atol=1e-6)  # Along grey.
  assert abs(np.std(offset[:, 0] / eigenvalue) - 0.2) < 0.015
  # Hue: the angle the plane across the grey axis turns by is uniform over the whole circle.
  turned = (linear @ across) / (stretch * np.abs(eigenvalue))[:, None]
  cosine = np.clip(turned @ across, -1, 1)
  assert abs(np.mean(cosine)) < 0.05 and np.mean(cosine < -0.9) > 0.05


def test_ada_color_maps_each_pixel_and_grey_images_as_r_equals_g_equals_b():
  params = augment.draw_params(jax.random.key(8), 4, 16, 16, ('ada_color',))
  images = _images(n=4)
  out = np.asarray(augment.apply(images, params, ('ada_color',)))
  matrix = np.asarray(params['ada_color_matrix'])
  expected = np.einsum('bij,bhwj->bhwi', matrix[:, :, :3], images) + matrix[:, None, None, :, 3]
  np.testing.assert_allclose(out, expected, atol=1e-5)
  grey = _images(n=4, channels=1)
  out_grey = np.asarray(augment.apply(grey, params, ('ada_color',)))
  as_rgb = np.asarray(augment.apply(np.repeat(grey, 3, -1), params, ('ada_color',)))
  assert out_grey.shape == grey.shape
  np.testing.assert_allclose(out_grey[..., 0], as_rgb.mean(-1), atol=1e-6)
  np.testing.assert_allclose(as_rgb[..., 0], as_rgb[..., 2], atol=1e-5)  # Grey stays grey.
  with pytest.raises(ValueError, match=r'\(1 or 3 channels\), not 4 channels'):
    augment.apply(_images(n=4, channels=4), params, ('ada_color',))


def test_ada_groups_with_a_probability():
  """Each transformation of a group is left out on its own with probability 1 - p: with p = 0
  every image passes through unchanged; with p = 0.5, geom leaves an image as it was when none
  of its 3 transformations and 2 rotations (each 1 - sqrt(1 - p)) was drawn: 1/8 · 1/2 = 1/16."""
  policy = augment.ADA_POLICIES
  images = _images(n=8)
  never = augment.draw_params(jax.random.key(9), 8, 16, 16, policy, probability=0.0)
  assert not any(name.startswith('apply_') for name in never)  # Drawn into the matrices.
  np.testing.assert_array_equal(np.asarray(augment.apply(images, never, policy)), images)
  half = jax.tree.map(np.asarray, augment.draw_params(jax.random.key(9), 4096, 16, 16, policy,
                                                      probability=0.5))
  untouched = np.all(np.isclose(half['geom_matrix'], np.eye(3), atol=0), axis=(1, 2))
  assert 180 < untouched.sum() < 330  # 256 expected.
  # Blit: flip, turn and shift are each chosen half the time, then drawn (the flip and turn
  # may draw the identity): P(identity) = (1 - p/2)(1 - 3p/4)(1 - p(1 - 1/25)) with 16 / 8 = 2
  # pixels of shift either way, 5 x 5 shifts.
  blit_identity = np.all(half['blit_matrix'] == np.eye(3), axis=(1, 2)).mean()
  expected = (1 - 0.25) * (1 - 0.375) * (1 - 0.5 * 24 / 25)
  assert abs(blit_identity - expected) < 0.03
  colour_identity = np.all(np.isclose(half['ada_color_matrix'], np.eye(4)[:3], atol=0),
                           axis=(1, 2)).mean()
  assert abs(colour_identity - 0.5 ** 5 * 1.5) < 0.02  # Luma flip draws "no flip" half the time.


def test_filter_bank_splits_the_spectrum_into_four_octave_bands():
  """The bands add up to the unit impulse (gains of 1: no change), are symmetric (no shift), and
  each keeps >= 85% of its response's energy in [0, π/8], [π/8, π/4], [π/4, π/2], [π/2, π]."""
  bank = augment.filter_bank()
  taps = bank.shape[1]
  impulse = np.eye(taps)[taps // 2]
  np.testing.assert_allclose(bank.sum(0), impulse, atol=1e-15)
  np.testing.assert_array_equal(bank, bank[:, ::-1])
  omega = np.linspace(0, np.pi, 4097)
  response = np.cos(np.outer(omega, np.arange(taps) - taps // 2)) @ bank.T  # Real: symmetric.
  edges = np.pi * np.array([0, 1 / 8, 1 / 4, 1 / 2, 1 + 1e-9])
  for band in range(4):
    inside = (omega >= edges[band]) & (omega < edges[band + 1])
    energy = response[:, band] ** 2
    assert energy[inside].sum() / energy.sum() >= 0.85, band
  np.testing.assert_allclose(response[0], [1, 0, 0, 0], atol=1e-12)  # Mean: lowest band only.
  np.testing.assert_allclose(response[-1], [0, 0, 0, 1], atol=2e-3)


def _scipy_filter(image, gains):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  kernel = gains @ augment.filter_bank()
  along_rows = ndimage.convolve1d(image.astype(np.float64), kernel, axis=1, mode='mirror')
  return ndimage.convolve1d(along_rows, kernel, axis=0, mode='mirror')


def test_filter_is_one_separable_kernel_per_image_like_scipy():
  images = _images(n=4, size=16)
  gains = np.array([[1, 1, 1, 1], [2, 1, 1, 1], [1, 0.5, 3, 1], [0.7, 1.2, 0.9, 4]], np.float32)
  out = np.asarray(augment.apply(images, {'filter_gains': jnp.asarray(gains)}, ('filter',)))
  np.testing.assert_array_equal(out[0], images[0])  # Gains of 1: exactly the image.
  for image, gain, result in zip(images, gains, out):
    np.testing.assert_allclose(result, _scipy_filter(image, gain), atol=2e-5)
  # Smaller than the kernel (8 < 33 taps): the reflection repeats, as scipy's 'mirror'.
  small = _images(n=4, size=8)
  out = np.asarray(augment.apply(small, {'filter_gains': jnp.asarray(gains)}, ('filter',)))
  np.testing.assert_allclose(out[3], _scipy_filter(small[3], gains[3]), atol=2e-5)


def test_filter_gains_and_noise_draw_the_papers_distributions():
  """Band gains 2^N(0, 1): the rescaling is common to the four, so the log2 ratio of two bands
  is N(0, 2). Where one band alone was drawn, a 1/f image keeps its expected power. The noise's
  std is |N(0, 0.1²)| per image (mean 0.1·sqrt(2/π)), over every pixel and channel."""
  n = 4096
  params = jax.tree.map(np.asarray, augment.draw_params(jax.random.key(10), n, 8, 8,
                                                        ('filter', 'noise')))
  noise = _noise_of(params, (n, 8, 8, 1))
  assert noise.shape == (n, 8, 8, 1)
  log_gains = np.log2(params['filter_gains'])
  for i, j in ((0, 1), (1, 2), (2, 3), (0, 3)):
    assert abs(np.std(log_gains[:, i] - log_gains[:, j]) - np.sqrt(2)) < 0.06
  sigma = noise.reshape(n, -1).std(axis=1)
  assert abs(np.mean(sigma) - 0.1 * np.sqrt(2 / np.pi)) < 0.004
  assert abs(np.std(sigma) - 0.1 * np.sqrt(1 - 2 / np.pi)) < 0.004
  assert abs(np.mean(noise)) < 1e-3
  rare = jax.tree.map(np.asarray, augment.draw_params(jax.random.key(11), n, 8, 8,
                                                      ('filter', 'noise'), probability=0.2))
  gains = rare['filter_gains']
  untouched = np.all(gains == 1.0, axis=1)
  assert abs(untouched.mean() - 0.8 ** 4) < 0.03
  # One band drawn: the other three keep one common value.
  one_band = ~untouched & (np.sum(np.isclose(gains[:, :, None], gains[:, None, :], rtol=1e-6,
                                             atol=0), axis=(1, 2)) == 10)
  assert one_band.sum() > 500
  shares = np.array(augment.ADA_FILTER_EXPECTED_POWER) / sum(augment.ADA_FILTER_EXPECTED_POWER)
  np.testing.assert_allclose((gains[one_band] ** 2) @ shares, 1.0, rtol=1e-5)
  noiseless = np.all(_noise_of(rare, (n, 8, 8, 1)) == 0, axis=(1, 2, 3))
  assert abs(noiseless.mean() - 0.8) < 0.03


def _noise_of(params, shape):
  """The noise the parameters add to images of `shape` (added to zeros)."""
  return np.asarray(jax.jit(augment.apply, static_argnums=2)(
      np.zeros(shape, np.float32), params, ('noise',)))


def test_noise_is_added_in_the_images_shape_from_each_images_seed():
  """Each image's pixels come from its own seed, drawn where they are added (a data-parallel
  step draws only its own images'), in the images' shape, with that image's std."""
  images = _images(n=4)
  params = augment.draw_params(jax.random.key(12), 4, 16, 16, ('noise',))
  out = np.asarray(augment.apply(images, params, ('noise',)))
  np.testing.assert_allclose(out - images, _noise_of(params, images.shape), atol=1e-6)
  std = np.asarray(params['noise_std'])
  np.testing.assert_allclose((out - images).reshape(4, -1).std(axis=1), std, rtol=0.1)
  grey = _noise_of(params, (4, 16, 16, 1))
  np.testing.assert_allclose(grey.reshape(4, -1).std(axis=1), std, rtol=0.25)
  # An image's noise depends on its own seed alone: the same with other images beside it.
  np.testing.assert_array_equal(_noise_of(jax.tree.map(lambda x: x[2:3], params),
                                          (1, 16, 16, 3)), _noise_of(params, images.shape)[2:3])
  assert augment.augment(jnp.asarray(_images(n=4, channels=1)), jax.random.key(0),
                         'noise').shape == (4, 16, 16, 1)


# ---- with a probability (ADA) -----------------------------------------------------------------


def test_a_probability_keeps_the_draws_and_passes_the_other_images_through():
  policy = augment.parse_policy(FULL)
  apply = jax.jit(augment.apply, static_argnums=2)  # One compilation, not one per eager op.
  images = jnp.asarray(_images(n=64, size=8))
  always = augment.draw_params(jax.random.key(1), 64, 8, 8, policy)
  half = augment.draw_params(jax.random.key(1), 64, 8, 8, policy, probability=0.5)
  for name, value in always.items():  # Same transformations: the choices have their own stream.
    np.testing.assert_array_equal(np.asarray(half[name]), np.asarray(value))
  chosen = {name: np.asarray(half[f'apply_{name}']) for name in policy}
  assert all(10 < c.sum() < 54 for c in chosen.values())  # ~32 of 64 each, independently.
  assert len({c.tobytes() for c in chosen.values()}) == 3
  out = np.asarray(apply(images, half, policy))
  untouched = ~(chosen['color'] | chosen['translation'] | chosen['cutout'])
  assert untouched.any()
  np.testing.assert_array_equal(out[untouched], np.asarray(images)[untouched])
  # Color alone where only color was drawn (no shift, no cutout): the DiffAugment color.
  only_color = chosen['color'] & ~chosen['translation'] & ~chosen['cutout']
  colored = np.asarray(apply(images, always, ('color',)))
  np.testing.assert_allclose(out[only_color], colored[only_color], rtol=1e-6, atol=1e-6)
  # Probability 1 is DiffAugment; 0 is the identity.
  np.testing.assert_array_equal(
      np.asarray(apply(images, augment.draw_params(jax.random.key(1), 64, 8, 8, policy,
                                                           probability=1.0), policy)),
      np.asarray(apply(images, always, policy)))
  never = augment.draw_params(jax.random.key(1), 64, 8, 8, policy, probability=0.0)
  np.testing.assert_array_equal(np.asarray(apply(images, never, policy)),
                                np.asarray(images))


def test_adapt_probability_moves_by_the_batchs_share_of_the_speed_and_stays_in_0_1():
  p = jnp.float32(0.5)
  assert float(augment.adapt_probability(p, 0.9, 1000, 0.6, 500_000)) == pytest.approx(0.502)
  assert float(augment.adapt_probability(p, 0.3, 1000, 0.6, 500_000)) == pytest.approx(0.498)
  assert float(augment.adapt_probability(jnp.float32(0.0), -1.0, 64, 0.6, 500)) == 0.0
  assert float(augment.adapt_probability(jnp.float32(0.99), 1.0, 64, 0.6, 500)) == 1.0
  # 0 -> 1 in speed_images images while D overfits.
  p, images = jnp.float32(0.0), 0
  while float(p) < 1.0:
    p, images = augment.adapt_probability(p, 1.0, 100, 0.6, 10_000), images + 100
  assert 10_000 <= images <= 10_100  # (Float32 steps of 0.01 may need one more.)


def _adaptive(state, probability):
  fields = {name: getattr(state, name) for name in ('step', 'generator', 'discriminator', 'ema')}
  return AdaptiveAugmentState(**fields, augment_probability=jnp.float32(probability))


def test_ada_step_uses_the_states_probability_and_adapts_it(initial_state):
  images, rng = _uint8_images(n=16), jax.random.key(3)
  ada = StepConfig(augment=FULL, ada_target=0.6, ada_speed_images=64)
  state, metrics = jax.jit(make_train_step(G, D, ada))(_adaptive(initial_state, 0.5), images, rng)
  assert isinstance(state, AdaptiveAugmentState)
  assert float(metrics['augment_probability']) == 0.5
  sign = float(metrics['ada_real_sign'])
  assert -1.0 <= sign <= 1.0
  assert float(state.augment_probability) == pytest.approx(0.5 + np.sign(sign - 0.6) * 16 / 64)
  # The update is that of the same probability held fixed: ADA only moves it between steps.
  fixed, _ = jax.jit(make_train_step(G, D, StepConfig(augment=FULL, augment_probability=0.5)))(
      initial_state, images, rng)
  for a, b in zip(_leaves(state), _leaves(fixed)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='augment_probability=0.0'):
    make_train_step(G, D, ada)(initial_state, images, rng)  # A GANState has no probability.
  # The other way round, the state's probability would be ignored for StepConfig's (1).
  with pytest.raises(UserError, match="The state carries ADA's augment_probability, but "
                     "StepConfig's ada_target is 0"):
    make_train_step(G, D, StepConfig(augment=FULL))(_adaptive(initial_state, 0.0), images, rng)


@pytest.mark.parametrize('kwargs,message', [
    (dict(augment=FULL, augment_probability=1.5), 'augment_probability must be in [0, 1]'),
    (dict(augment=FULL, ada_target=1.0), 'ada_target must be in [0, 1)'),
    (dict(ada_target=0.6), "set augment too"),
    (dict(augment=FULL, ada_target=0.6, ada_speed_images=0), 'ada_speed_images must be'),
    (dict(augment=FULL, ada_target=0.6, ada_speed_images=True), 'got True; ADA uses 500000'),
    (dict(augment=FULL, ada_target=0.6, ada_speed_images=2.5), 'positive whole number'),
])
def test_bad_ada_settings_are_one_clear_error(kwargs, message):
  with pytest.raises(UserError, match=re.escape(message)):
    StepConfig(**kwargs)


def test_ada_speed_takes_numpy_integers_and_whole_floats():
  for speed in (np.int64(50_000), 5e4, 50_000):
    config = StepConfig(augment=FULL, ada_target=0.6, ada_speed_images=speed)
    assert type(config.ada_speed_images) is int and config.ada_speed_images == 50_000


def test_create_gan_state_with_a_probability_is_adaptive(initial_state):
  state = create_gan_state(jax.random.key(0), G, D, use_ema=True, augment_probability=0.0)
  assert isinstance(state, AdaptiveAugmentState) and float(state.augment_probability) == 0.0
  plain = initial_state  # create_gan_state(jax.random.key(0), G, D, use_ema=True)
  for a, b in zip(_leaves(state), _leaves(plain)):  # Same networks.
    np.testing.assert_array_equal(a, b)
  assert type(plain) is GANState  # pylint: disable=unidiomatic-typecheck
  # Without ADA the state's structure (and so its checkpoints) is the one it always had.
  assert 'augment_probability' not in str(jax.tree_util.tree_structure(plain))


# ---- in the train step ------------------------------------------------------------------------


@pytest.fixture(scope='module')
def initial_state():
  return create_gan_state(jax.random.key(0), G, D, use_ema=True)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.generator, state.discriminator))]


@pytest.mark.parametrize('step_config', [
    StepConfig(augment=FULL),
    # All eight groups, ADA's and DiffAugment's, with both penalties on augmented images. One D
    # update: several per step are checked across devices in tests/test_train_step.py, and with
    # them this case cost 107 s instead of 40 s (compiling, on 2 cores).
    pytest.param(StepConfig(augment='bgcfnc,color,translation', loss='wasserstein',
                            gradient_penalty_weight=10.0, r1_weight=1.0,
                            ada_target=0.6, ada_speed_images=64),
                 marks=pytest.mark.slow),
], ids=['non_saturating', 'wgan_gp_r1_ada'])
def test_augmented_step_is_the_same_on_one_and_eight_devices(initial_state, step_config):
  """Each image's transformation (and with ADA, whether it applies) is drawn for the global
  batch and ADA's heuristic is averaged over it, so sharding changes nothing."""
  images, rng = _uint8_images(), jax.random.key(1)
  if step_config.adaptive:
    initial_state = _adaptive(initial_state, 0.5)
  ref_state, ref_metrics = jax.jit(make_train_step(G, D, step_config))(initial_state, images, rng)
  plain_state, _ = jax.jit(make_train_step(G, D, StepConfig()))(initial_state, images, rng)
  # Augmentation changes the update (so the agreement below is not the plain step's).
  assert any(not np.allclose(a, b, atol=1e-4)
             for a, b in zip(_leaves(ref_state), _leaves(plain_state)))
  # pmap and shard_map take their slice of the global draw the same way (axis_index): the
  # slow case checks shard_map alone.
  modes = ('shard_map',) if step_config.adaptive else ('shard_map', 'pmap')
  for mode in modes:
    step = DataParallelStep(G, D, step_config, parallelism=mode)
    state, metrics = step(step.place_state(initial_state), step.place_batch(images), rng)
    metrics = step.host_metrics(metrics)
    for key, value in ref_metrics.items():
      assert metrics[key] == pytest.approx(float(value), abs=1e-5, rel=1e-5), (mode, key)
    for ours, ref in zip(_leaves(step.host_state(state)), _leaves(ref_state)):
      np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)
    if step_config.adaptive:
      assert float(step.host_state(state).augment_probability) == float(
          ref_state.augment_probability) != 0.5


def test_augmentation_is_the_only_change_and_g_learns_through_it(initial_state, monkeypatch):
  """With the transformation replaced by the identity the augmented step is the plain step, bit
  for bit (latents and penalties keep their random numbers); replaced by zeros, D sees nothing
  of G's images, so G gets no gradient."""
  images, rng = _uint8_images(n=8), jax.random.key(2)
  config = dict(loss='wasserstein', gradient_penalty_weight=10.0)
  plain_state, plain_metrics = jax.jit(make_train_step(G, D, StepConfig(**config)))(
      initial_state, images, rng)
  monkeypatch.setattr(augment, 'apply', lambda x, *args: x)
  same_state, same_metrics = jax.jit(make_train_step(G, D, StepConfig(augment=FULL, **config)))(
      initial_state, images, rng)
  for a, b in zip(_leaves(same_state), _leaves(plain_state)):
    np.testing.assert_array_equal(a, b)
  assert {k: float(v) for k, v in same_metrics.items()} == {
      k: float(v) for k, v in plain_metrics.items()}

  monkeypatch.setattr(augment, 'apply', lambda x, *args: x * 0.0)
  blind_state, blind_metrics = jax.jit(make_train_step(G, D, StepConfig(augment=FULL)))(
      initial_state, images, rng)
  assert float(blind_metrics['g_grad_norm']) == 0.0
  for a, b in zip(jax.tree.leaves(blind_state.generator.params),
                  jax.tree.leaves(initial_state.generator.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(plain_metrics['g_grad_norm']) > 0.0


@pytest.mark.parametrize('activation,value_range', [('tanh', (-1.0, 1.0)),
                                                    ('sigmoid', (0.0, 1.0))])
def test_step_augments_in_the_generators_range(monkeypatch, activation, value_range):
  generator = Generator(image_size=8, channels=1, latent_dim=4, width=4,
                        output_activation=activation)
  discriminator = Discriminator(image_size=8, channels=1, width=4)
  state = create_gan_state(jax.random.key(0), generator, discriminator)
  ranges = []
  original = augment.apply
  monkeypatch.setattr(augment, 'apply',
                      lambda x, params, policy, vr=(-1.0, 1.0): ranges.append(vr) or original(
                          x, params, policy, vr))
  step = make_train_step(generator, discriminator, StepConfig(augment='cutout'))
  step(state, _uint8_images(n=4)[:, :8, :8, :1], jax.random.key(1))
  assert len(ranges) == 3 and set(ranges) == {value_range}  # Real, fake (D), fake (G).
