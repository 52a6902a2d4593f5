"""The two preprocessing protocols against PyTorch, TensorFlow 1 and a plain numpy resize."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import evaluation
from dcgan_jax.errors import UserError
from dcgan_jax.evaluation import preprocessing

SIZES = [(32, 32), (64, 64), (299, 299), (400, 333), (17, 45)]


def _images(shape, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (2, *shape, channels), dtype=np.uint8)


def _tf1_resize_numpy(images, size):
  """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), row by row."""
  n, h, w, c = images.shape
  out = np.empty((n, size, size, c), np.float32)
  x = np.arange(size, dtype=np.float32) * (np.float32(w) / np.float32(size))
  x0 = np.floor(x).astype(int)
  x1, dx = np.minimum(x0 + 1, w - 1), (x - x0).astype(np.float32)[:, None]
  for i in range(size):
    y = np.float32(i) * (np.float32(h) / np.float32(size))
    y0 = int(np.floor(y))
    y1, dy = min(y0 + 1, h - 1), np.float32(y - y0)
    top = images[:, y0, x0] + (images[:, y0, x1] - images[:, y0, x0]) * dx
    bottom = images[:, y1, x0] + (images[:, y1, x1] - images[:, y1, x0]) * dx
    out[:, i] = top + (bottom - top) * dy
  return out


@pytest.mark.parametrize('shape', SIZES, ids=str)
def test_pytorch_fid_mode_matches_torch_interpolate(shape):
  torch = pytest.importorskip('torch')
  images = _images(shape)
  ours = np.asarray(evaluation.preprocess(images, mode='pytorch_fid'))
  x = torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)
  # pytorch-fid's InceptionV3.forward: resize_input then normalize_input.
  x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
  expected = (2 * x - 1).permute(0, 2, 3, 1).numpy()
  assert ours.shape == (2, 299, 299, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, expected, atol=2e-6)


@pytest.mark.parametrize('shape', SIZES, ids=str)
def test_tf_mode_matches_tensorflow1_resize_bilinear(shape):
  tf = pytest.importorskip('tensorflow')
  images = _images(shape, seed=1)
  ours = np.asarray(evaluation.preprocess(images, mode='tf'))
  resized = tf.compat.v1.image.resize_bilinear(images.astype(np.float32), (299, 299),
                                               align_corners=False, half_pixel_centers=False)
  expected = (resized.numpy() - 128) / 128
  np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize('shape', [(32, 32), (17, 45)], ids=str)
def test_tf1_resize_matches_numpy_reference(shape):
  images = _images(shape, seed=2).astype(np.float32)
  ours = np.asarray(preprocessing.resize_bilinear_tf1(images, 299))
  np.testing.assert_allclose(ours, _tf1_resize_numpy(images, 299), atol=1e-4)


def test_the_two_modes_really_differ_on_small_images():
  # The reason both modes exist: at 32 -> 299 the resizes disagree by a lot.
  images = _images((32, 32), seed=3)
  difference = np.abs(np.asarray(evaluation.preprocess(images, mode='tf'))
                      - np.asarray(evaluation.preprocess(images, mode='pytorch_fid')))
  assert difference.max() > 0.3


def test_grayscale_is_replicated_to_rgb():
  gray = _images((32, 32), channels=1, seed=4)
  for mode in preprocessing.MODES:
    ours = np.asarray(evaluation.preprocess(gray, mode=mode))
    np.testing.assert_array_equal(ours, np.repeat(ours[..., :1], 3, -1))
    # To float32 rounding, not bit for bit: XLA may compile the one- and three-channel programs
    # differently (jax 0.12's XLA:CPU rounds 4% of the 'tf' mode's three-channel values 1-2 ulp
    # apart from its one-channel ones; jax 0.10's gave the same bits).
    np.testing.assert_allclose(ours, np.asarray(evaluation.preprocess(np.repeat(gray, 3, -1),
                                                                      mode=mode)), atol=1e-6)


def test_unknown_mode_is_a_user_error():
  with pytest.raises(UserError, match='pytorch_fid'):
    preprocessing.check_mode('clean')


def test_to_uint8_rounds_like_image_files():
  # A generator without a squashing activation may overshoot: clipped, as image files would be.
  images = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5, -1.9], np.float32).reshape(1, 1, 7, 1)
  expected = np.array([0, 0, 128, 191, 255, 255, 0], np.uint8).reshape(1, 1, 7, 1)
  np.testing.assert_array_equal(evaluation.to_uint8(images), expected)
  np.testing.assert_array_equal(evaluation.to_uint8((images + 1) / 2, low=0.0, high=1.0),
                                expected)


def test_preprocess_with_an_unknown_mode_is_a_user_error():
  with pytest.raises(UserError, match="Unknown Inception preprocessing 'tf1'"):
    evaluation.preprocess(np.zeros((1, 8, 8, 3), np.uint8), mode='tf1')


@pytest.mark.parametrize('quantise', ['to_uint8', 'to_uint8_jax'])
def test_uint8_images_need_no_quantising_and_other_integers_are_refused(quantise):
  """Real images (uint8) passed by mistake come back unchanged, not as 128s and 255s."""
  function = getattr(evaluation, quantise)
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  arrays = [images, jnp.asarray(images)] if quantise == 'to_uint8_jax' else [images]
  for x in arrays:
    np.testing.assert_array_equal(np.asarray(function(x)), images)
    np.testing.assert_array_equal(np.asarray(function(x, 0.0, 1.0)), images)
  # Inside a jitted function too (the dtype is known while tracing).
  if quantise == 'to_uint8_jax':
    np.testing.assert_array_equal(np.asarray(jax.jit(function)(images)), images)
  for dtype in (np.int32, np.uint16, np.bool_):
    with pytest.raises(UserError, match=f'got {np.dtype(dtype)} images.*uint8 images'):
      function(images.astype(dtype))


@pytest.mark.parametrize('quantise', ['to_uint8', 'to_uint8_jax'])
def test_images_far_outside_the_range_or_not_finite_are_refused(quantise):
  """Pixel values 0..255 with the default [-1, 1] became 128..255 (nearly white), NaN black,
  and the FID computed from them was garbage, silently."""
  function = getattr(evaluation, quantise)
  convert = jnp.asarray if quantise == 'to_uint8_jax' else np.asarray
  pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
  with pytest.raises(UserError, match=r'span \[.*, 25\d\.?\d*\], far outside the \[-1, 1\] .*'
                                      'low=0, high=255 for pixel values'):
    function(convert(pixels))
  assert np.asarray(function(convert(pixels), 0.0, 255.0)).max() >= 250  # Told their range.
  with pytest.raises(UserError, match=r'far outside the \[0, 1\]'):
    function(convert(pixels / 127.5 - 1.0), 0.0, 1.0)  # tanh outputs told sigmoid's range.
  for bad in (np.nan, np.inf):
    broken = pixels / 255.0
    broken[1, 2, 3, 0] = bad
    with pytest.raises(UserError, match='NaN or infinite values'):
      function(convert(broken), 0.0, 1.0)
  with pytest.raises(UserError, match='needs high > low, got low=1.0, high=1.0'):
    function(convert(pixels), 1.0, 1.0)
  if quantise == 'to_uint8_jax':  # Traced values cannot be looked at: quantised and clipped.
    assert np.asarray(jax.jit(function)(pixels)).min() >= 128


def test_to_uint8_jax_equals_to_uint8_on_rounding_boundaries():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1.2, 1.2, (4, 16, 16, 3)).astype(np.float32)
  # Values at, just above and just below every x.5 boundary between two uint8 levels.
  boundaries = ((np.arange(256) + 0.5) / 255 * 2 - 1).astype(np.float32)
  flat = images.reshape(-1)
  for i, values in enumerate([boundaries, np.nextafter(boundaries, np.float32(2)),
                              np.nextafter(boundaries, np.float32(-2))]):
    flat[i * 256:(i + 1) * 256] = values
  for low, high in [(-1.0, 1.0), (0.0, 1.0)]:
    x = images if low == -1.0 else (images + 1) / 2
    ours = evaluation.to_uint8_jax(x, low, high)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(ours), evaluation.to_uint8(x, low, high))
