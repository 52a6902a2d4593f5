"""Offline quality score for generators of the embedded `digits` dataset.

FID needs Inception weights that a fresh machine does not have. For the offline default dataset
(the 1,797 real 8x8 digits shipped inside scikit-learn) we can do better without any download: a
small Flax classifier of those digits, trained once on CPU in seconds and cached, gives

* penultimate-layer features, compared by Fréchet distance with the features of all real digits
  (the FID recipe with a domain-specific network), and
* class probabilities, which show mode collapse directly: which of the ten digits a generator
  draws, how often, and how confidently.

Generated images of any size whose sides are multiples of 8 (the data pipeline uses 8 * 2^k) are
turned into the classifier's input by converting to grey and averaging each block of pixels that
maps onto one cell of the 8x8 grid. The real digits are 8x8 grids of 4x4-pixel block sums, so area
averaging is the faithful way back from an upscaled image.

Typical use (the training loop)::

  quality = DigitsQuality.load_or_train(cache_dir)
  metrics = quality.score(generated_images)  # [n, h, w, c] in [-1, 1]
  metrics['frechet_distance'], metrics['num_classes_covered']
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import warnings
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dcgan_jax import json_files
from dcgan_jax.errors import UserError
from dcgan_jax.evaluation import manifold

# Everything that determines the trained weights. Any change here changes the cache file name, so
# a stale cache is never loaded; bump `version` when the code changes in a way the fields miss.
TRAINING_RECIPE = {
    'version': 1,
    'model': 'conv3x3-maxpool2-conv3x3-dense-dense',
    'conv_widths': [32, 32],
    'feature_dim': 64,
    'held_out_fraction': 0.2,  # The last 20% of the dataset, in scikit-learn's order.
    # Each training digit is seen as is and as the data pipeline's upscaling blurs it, and each
    # example is shifted by a random -1, 0 or +1 pixels in y and x (generated digits wander).
    'augment_upscale_blur': True,
    'augment_max_shift': 1,
    'optimizer': 'adamw',
    'learning_rate': 3e-3,  # Cosine decay to 0.
    'weight_decay': 1e-4,
    'batch_size': 128,
    'num_steps': 1500,
    'seed': 0,
}

NUM_CLASSES = 10
DIGIT_MAX_VALUE = 16.0  # Each real digit pixel counts ink in a 4x4 block: 0..16.
COVERAGE_THRESHOLD = 0.03  # A class is "covered" when at least this share of images is in it.
MIN_HELD_OUT_ACCURACY = 0.95  # The recipe reaches about 0.975 (tests assert this bar).
# A cached file below this is not a trained classifier (zeroed or mixed-up weights). Far below the
# bar on purpose: a recipe that misses the bar only warns instead of retraining at every load.
_CACHE_SANITY_ACCURACY = 0.5

_FEATURE_BATCH_SIZE = 256  # Fixed chunk size, so the jitted feature pass compiles once per size.
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma; a grey image copied to RGB is unchanged.


def _patches_3x3(x: jax.Array) -> jax.Array:
  """[n, h, w, c] -> [n, h, w, 9c]: each pixel's zero-padded 3x3 neighbourhood.

  A 3x3 convolution is this followed by a Dense layer. Written with slices because XLA's CPU
  convolutions are slow on such tiny images, while the matrix product is fast.
  """
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate(
      [padded[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)], axis=-1)


class DigitClassifier(nn.Module):
  """Small CNN for 8x8 grey digits: conv 3x3, max-pool 2x2, conv 3x3, dense, dense.

  Input: [batch, 8, 8, 1] with values in [0, 1] (a digit pixel divided by 16).
  Returns: (features [batch, feature_dim] after ReLU, logits [batch, 10]).
  """
  conv_widths: tuple[int, int] = (32, 32)
  feature_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(nn.Dense(self.conv_widths[0], name='conv1')(_patches_3x3(x)))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(self.conv_widths[1], name='conv2')(_patches_3x3(x)))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(self.feature_dim, name='features')(x))
    logits = nn.Dense(NUM_CLASSES, name='logits')(features)
    return features, logits


def _classifier() -> DigitClassifier:
  return DigitClassifier(tuple(TRAINING_RECIPE['conv_widths']), TRAINING_RECIPE['feature_dim'])


# --------------------------------------------------------------------------------------------
# Data.


@functools.lru_cache(maxsize=1)
def load_real_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns the real digits from scikit-learn (no network needed).

  Returns:
    images: float32 [1797, 8, 8] with values 0..16.
    labels: int32 [1797] in 0..9.
  """
  from sklearn.datasets import load_digits  # Lazy: scikit-learn is slow to import.
  digits = load_digits()
  images = np.asarray(digits.images, np.float32)
  labels = np.asarray(digits.target, np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _held_out_start(num_examples: int) -> int:
  return int(round(num_examples * (1.0 - TRAINING_RECIPE['held_out_fraction'])))


def _check_image_size(image_size: int) -> None:
  if not isinstance(image_size, (int, np.integer)) or image_size < 8 or image_size % 8:
    raise UserError(f'image_size must be a positive multiple of 8 (such as 8, 16, 32 or 64), '
                    f'got {image_size!r}.')


def _check_channels(channels: int) -> None:
  if channels not in (1, 3):
    raise UserError(f'channels must be 1 (grey) or 3 (RGB), got {channels!r}.')


def _upscale_digits(digits: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
  """[n, 8, 8] values 0..16 -> uint8 [n, height, width, channels]."""
  # Stored as 8x8 uint8 first, as the `digits` dataset does, then enlarged.
  pixels = jnp.round(jnp.asarray(digits, jnp.float32) * (255.0 / DIGIT_MAX_VALUE))
  # Bilinear with half-pixel centres and no antialiasing: the same as tf.image.resize('bilinear'),
  # PIL's BILINEAR when enlarging, and torch's align_corners=False.
  resized = jax.image.resize(pixels, (pixels.shape[0], height, width), 'bilinear',
                             antialias=False)
  resized = np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)
  return np.repeat(resized[..., None], channels, axis=-1)


def real_digits_images(image_size: int, channels: int = 1) -> np.ndarray:
  """The 1,797 real digits as a perfect generator at `image_size` would draw them.

  The 0..16 values are scaled to 0..255 and rounded (as the `digits` dataset stores them), then
  enlarged by bilinear interpolation with half-pixel centres and no antialiasing
  (`jax.image.resize(..., 'bilinear', antialias=False)`; when enlarging, the same as
  `tf.image.resize(..., 'bilinear')` with or without antialias, and PIL's BILINEAR) and rounded.
  The input pipeline upscales the same way, so these are exactly the training images.

  Args:
    image_size: side of the square output, a multiple of 8.
    channels: 1 (grey) or 3 (the grey value copied to R, G and B).

  Returns:
    uint8 [1797, image_size, image_size, channels] in scikit-learn's order (labels:
    `real_digit_labels()`).
  """
  _check_image_size(image_size)
  _check_channels(channels)
  digits, _ = load_real_digits()
  return _upscale_digits(digits, int(image_size), int(image_size), channels)


def real_digit_labels() -> np.ndarray:
  """int32 [1797]: the class of each image of `real_digits_images`."""
  return np.array(load_real_digits()[1])


# --------------------------------------------------------------------------------------------
# Preprocessing: generated images -> classifier input.


def _to_unit_range(images: Any, value_range: tuple[float, float]) -> np.ndarray:
  """Validates images and maps them to float32 [n, h, w, c] in [0, 1]."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f'images must be NHWC with 1 or 3 channels, got shape {images.shape}.')
  n, height, width, _ = images.shape
  if n < 2:
    raise UserError(f'at least 2 images are needed for a covariance, got {n}.')
  if height % 8 or width % 8 or height == 0 or width == 0:
    raise UserError(f'image height and width must be multiples of 8, got {height}x{width}.')
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise UserError(f'images must be uint8 (0..255) or floating point, got dtype {images.dtype}.')
  low, high = (float(v) for v in value_range)
  if not high > low:
    raise UserError(f'value_range must be (low, high) with high > low, got {value_range!r}.')
  images = images.astype(np.float32)
  if not np.all(np.isfinite(images)):
    raise UserError('images contain NaN or infinite values; only finite values can be scored.')
  smallest, largest = float(images.min()), float(images.max())
  margin = (high - low) / 2  # A generator without tanh may overshoot a little; not this much.
  if smallest < low - margin or largest > high + margin:
    # Clipped, 0..255 floats scored as nearly all white (Fréchet distance 695 instead of 6).
    raise UserError(f'images are floats in [{smallest:g}, {largest:g}], far outside value_range '
                    f'({low:g}, {high:g}); pass the range they are in, or uint8 images (0..255).')
  return np.clip((images - low) / (high - low), 0.0, 1.0)


def _to_digit_grid(images: jax.Array) -> jax.Array:
  """[n, h, w, c] in [0, 1] -> [n, 8, 8, 1] in [0, 1] by grey conversion and area averaging."""
  if images.shape[-1] == 3:
    images = images @ jnp.asarray(_GREY_WEIGHTS, images.dtype)[:, None]
  n, height, width, _ = images.shape
  blocks = images.reshape(n, 8, height // 8, 8, width // 8, 1)
  return blocks.mean(axis=(2, 4))


def _forward(params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[n, h, w, c] in [0, 1] -> (features [n, feature_dim], probabilities [n, 10])."""
  features, logits = _classifier().apply({'params': params}, _to_digit_grid(images))
  return features, jax.nn.softmax(logits)


_forward_jit = jax.jit(_forward)


# --------------------------------------------------------------------------------------------
# Statistics.


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [d] and unbiased covariance [d, d] of features [n, d], in float64."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  # Covariances are positive semi-definite; round-off can push zero eigenvalues slightly negative.
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray,
                     cov2: np.ndarray) -> float:
  """Fréchet distance between two Gaussians, in float64.

  d = |mean1 - mean2|^2 + tr(cov1) + tr(cov2) - 2 tr sqrt(cov1 cov2), where
  tr sqrt(cov1 cov2) is the sum of square roots of the eigenvalues of the symmetric PSD matrix
  sqrt(cov1) cov2 sqrt(cov1), which has the same spectrum as cov1 cov2.

  Args:
    mean1, mean2: [d].
    cov1, cov2: [d, d], symmetric positive semi-definite.

  Returns:
    The distance as a Python float, >= 0.
  """
  mean1, mean2, cov1, cov2 = (np.asarray(a, np.float64) for a in (mean1, mean2, cov1, cov2))
  sqrt_cov1 = _symmetric_sqrt(cov1)
  product = sqrt_cov1 @ cov2 @ sqrt_cov1
  product = 0.5 * (product + product.T)  # Remove round-off asymmetry before eigvalsh.
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(product), 0.0, None)).sum()
  diff = mean1 - mean2
  distance = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)
  return max(distance, 0.0)  # Identical statistics can give -1e-6 by round-off.


# --------------------------------------------------------------------------------------------
# Training and caching.


def recipe_hash() -> str:
  """Short hash of `TRAINING_RECIPE` and the real data; part of the cache file name."""
  digits, labels = load_real_digits()
  digest = hashlib.sha256(json.dumps(TRAINING_RECIPE, sort_keys=True).encode())
  digest.update(digits.tobytes())
  digest.update(labels.tobytes())
  return digest.hexdigest()[:16]


def default_cache_dir() -> str:
  """`$XDG_CACHE_HOME/dcgan_jax`, or `~/.cache/dcgan_jax` when XDG_CACHE_HOME is unset."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'dcgan_jax')


def _upscale_blur(digits: np.ndarray) -> np.ndarray:
  """What enlarging by bilinear interpolation and area-averaging back does to a digit.

  For any integer factor >= 2 the round trip is a [1/8, 3/4, 1/8] blur along each axis with
  clamped edges, so training on it lets the classifier read real digits after the data pipeline.
  """
  padded = np.pad(digits, ((0, 0), (1, 1), (1, 1)), mode='edge')
  rows = 0.125 * padded[:, :-2, :] + 0.75 * padded[:, 1:-1, :] + 0.125 * padded[:, 2:, :]
  return 0.125 * rows[:, :, :-2] + 0.75 * rows[:, :, 1:-1] + 0.125 * rows[:, :, 2:]


def _classifier_input(digits: np.ndarray) -> np.ndarray:
  """[n, 8, 8] values 0..16 -> float32 [n, 8, 8, 1] in [0, 1]."""
  return (np.asarray(digits, np.float32) / DIGIT_MAX_VALUE)[..., None]


def _accuracy(params, digits: np.ndarray, labels: np.ndarray) -> float:
  """Share of raw [n, 8, 8] digits (0..16) classified as their labels [n]."""
  _, probabilities = _forward_jit(params, _classifier_input(digits))  # 8x8: no averaging.
  return float(np.mean(np.asarray(probabilities).argmax(-1) == labels))


def _shift(digits: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """[n, 8, 8] moved by (dy, dx) pixels; what leaves the grid is lost, blank fills in."""
  margin = max(abs(dy), abs(dx))
  padded = np.pad(digits, ((0, 0), (margin, margin), (margin, margin)))
  return padded[:, margin - dy:margin - dy + 8, margin - dx:margin - dx + 8]


def train_classifier() -> dict[str, Any]:
  """Trains the digit classifier from scratch following `TRAINING_RECIPE` (seconds on a CPU).

  Returns:
    The Flax params: a nested dict of float32 numpy arrays.
  """
  recipe = TRAINING_RECIPE
  digits, labels = load_real_digits()
  split = _held_out_start(len(digits))
  train_digits, train_labels = digits[:split], labels[:split]
  if recipe['augment_upscale_blur']:
    train_digits = np.concatenate([train_digits, _upscale_blur(train_digits)])
    train_labels = np.concatenate([train_labels, train_labels])
  max_shift = recipe['augment_max_shift']
  offsets = range(-max_shift, max_shift + 1)
  # [num_shifts, n, 8, 8, 1]: every shifted copy made once, so a batch is a gather.
  shifted = jnp.asarray(np.stack(
      [_classifier_input(_shift(train_digits, dy, dx)) for dy in offsets for dx in offsets]))
  targets = jnp.asarray(train_labels)

  model = _classifier()
  init_key, batch_key, shift_key = jax.random.split(jax.random.key(recipe['seed']), 3)
  params = model.init(init_key, shifted[0, :1])['params']
  num_steps, batch_size = recipe['num_steps'], recipe['batch_size']
  optimizer = optax.adamw(optax.cosine_decay_schedule(recipe['learning_rate'], num_steps),
                          weight_decay=recipe['weight_decay'])

  def loss_fn(params, inputs, batch_targets):
    _, logits = model.apply({'params': params}, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch_targets).mean()

  @jax.jit
  def train(params):
    examples = jax.random.randint(batch_key, (num_steps, batch_size), 0, len(train_labels))
    shifts = jax.random.randint(shift_key, (num_steps, batch_size), 0, shifted.shape[0])

    def step(carry, batch):
      params, opt_state = carry
      example, shift = batch
      grads = jax.grad(loss_fn)(params, shifted[shift, example], targets[example])
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    # One compiled loop: no Python dispatch per step.
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), (examples, shifts))
    return params

  return jax.tree.map(np.asarray, train(params))


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'Dense_0': {'kernel': x}} -> {'Dense_0/kernel': x}: the .npz keys."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{name}/'))
    else:
      flat[f'{prefix}{name}'] = value
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  params: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split('/')
    node = params
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return params


def _expected_shapes() -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  model = _classifier()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))['params']
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in _flatten(shapes).items()}


def _read_params(path: str) -> dict[str, Any]:
  """Reads cached params, checking names, shapes, dtypes and finiteness; raises on any mismatch."""
  with np.load(path, allow_pickle=False) as archive:
    flat = {key: archive[key] for key in archive.files}
  expected = _expected_shapes()
  if set(flat) != set(expected):
    raise ValueError(f'parameter names {sorted(flat)} differ from {sorted(expected)}')
  for key, (shape, dtype) in expected.items():
    if flat[key].shape != shape or flat[key].dtype != dtype:
      raise ValueError(f'{key} has {flat[key].shape} {flat[key].dtype}, expected {shape} {dtype}')
    if not np.all(np.isfinite(flat[key])):
      raise ValueError(f'{key} has non-finite values')
  return _unflatten(flat)


def _write_params_atomically(params: dict[str, Any], path: str) -> None:
  """Writes params as .npz via a temporary file in the same folder and os.replace."""
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(prefix='.tmp-', suffix='.npz', dir=folder)
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **{k: np.asarray(v) for k, v in _flatten(params).items()})
    json_files.give_new_file_permissions(tmp_path)
    os.replace(tmp_path, path)  # Atomic: readers see the old file or the complete new one.
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


# --------------------------------------------------------------------------------------------
# The scorer.


class DigitsQuality:
  """Scores generated digits with a classifier of the real ones.

  Build it with `DigitsQuality.load_or_train()`; then `score(images)` as often as needed.

  Attributes:
    params: the classifier's Flax params.
    held_out_accuracy: accuracy on the held-out real digits (the last 20%), raw 8x8.
  """

  def __init__(self, params: dict[str, Any]):
    self.params = jax.tree.map(jnp.asarray, params)
    digits, labels = load_real_digits()
    split = _held_out_start(len(digits))
    self.held_out_accuracy = _accuracy(self.params, digits[split:], labels[split:])
    self._reference_stats: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    self._reference_features: dict[tuple[int, int], np.ndarray] = {}

  @classmethod
  def load_or_train(cls, cache_dir: str | None = None) -> DigitsQuality:
    """Loads the cached classifier, or trains it (seconds) and caches it.

    The cache file is `<cache_dir>/digits_classifier-<recipe_hash>.npz`; a change of the training
    recipe or of the data changes the name. A corrupt or inaccurate cache file is replaced with a
    warning; an unwritable cache folder only costs a warning (the classifier still works).

    Args:
      cache_dir: folder for the cached weights; None means `default_cache_dir()`.

    Returns:
      A ready scorer.
    """
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    path = os.path.join(cache_dir, f'digits_classifier-{recipe_hash()}.npz')
    if os.path.exists(path):
      try:
        quality = cls(_read_params(path))
        if quality.held_out_accuracy < _CACHE_SANITY_ACCURACY:
          raise ValueError(f'held-out accuracy {quality.held_out_accuracy:.3f} is below '
                           f'{_CACHE_SANITY_ACCURACY}')
        logging.info('Loaded digits classifier from %s (held-out accuracy %.4f).', path,
                     quality.held_out_accuracy)
        return quality
      except Exception as e:  # pylint: disable=broad-except  # Any defect means: retrain.
        warnings.warn(f'Cached digits classifier {path} is unusable ({e}); retraining it.',
                      RuntimeWarning, stacklevel=2)
    logging.info('Training the digits classifier (once; cached in %s).', cache_dir)
    quality = cls(train_classifier())
    logging.info('Digits classifier held-out accuracy: %.4f', quality.held_out_accuracy)
    if quality.held_out_accuracy < MIN_HELD_OUT_ACCURACY:
      warnings.warn(f'Digits classifier reached only {quality.held_out_accuracy:.3f} held-out '
                    f'accuracy (< {MIN_HELD_OUT_ACCURACY}); quality scores are less reliable.',
                    RuntimeWarning, stacklevel=2)
    try:
      _write_params_atomically(jax.tree.map(np.asarray, quality.params), path)
    except OSError as e:
      warnings.warn(f'Could not cache the digits classifier in {cache_dir} ({e}); it will be '
                    f'retrained next time.', RuntimeWarning, stacklevel=2)
    return quality

  def features_and_probabilities(
      self, images: Any, value_range: tuple[float, float] = (-1.0, 1.0)
  ) -> tuple[np.ndarray, np.ndarray]:
    """Classifier features and class probabilities of images.

    Args:
      images: [n, h, w, c] with h and w multiples of 8 and c in {1, 3}; uint8 in 0..255, or
        floating point in `value_range` (a generator's tanh output: the default [-1, 1]).
        Colour is converted to grey (BT.601 luma); each (h/8)x(w/8) block is averaged into one
        cell of the 8x8 grid the classifier reads.
      value_range: (low, high) of floating-point images; ignored for uint8.

    Returns:
      features: float32 [n, 64]; probabilities: float32 [n, 10].
    """
    unit = _to_unit_range(images, value_range)
    n = unit.shape[0]
    pad = -n % _FEATURE_BATCH_SIZE
    unit = np.concatenate([unit, np.zeros((pad,) + unit.shape[1:], unit.dtype)])
    features, probabilities = [], []
    for start in range(0, len(unit), _FEATURE_BATCH_SIZE):
      f, p = _forward_jit(self.params, unit[start:start + _FEATURE_BATCH_SIZE])
      features.append(np.asarray(f))
      probabilities.append(np.asarray(p))
    return np.concatenate(features)[:n], np.concatenate(probabilities)[:n]

  def reference_features(self, height: int, width: int) -> np.ndarray:
    """Classifier features [1797, 64] of all real digits as images of this size.

    The real digits take the same path as generated ones (upscaled as in `real_digits_images`,
    then area-averaged back), so a perfect generator scores a distance near 0 at every size.
    """
    key = (int(height), int(width))
    if key not in self._reference_features:
      real = _upscale_digits(load_real_digits()[0], *key, channels=1)
      self._reference_features[key], _ = self.features_and_probabilities(real)
    return self._reference_features[key]

  def reference_statistics(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean [64] and covariance [64, 64] of all real digits as images of this size."""
    key = (int(height), int(width))
    if key not in self._reference_stats:
      self._reference_stats[key] = feature_statistics(self.reference_features(*key))
    return self._reference_stats[key]

  def score(self, images: Any, value_range: tuple[float, float] = (-1.0, 1.0),
            labels: Any = None) -> dict[str, Any]:
    """Scores a batch of generated images (about 1,000 gives stable numbers).

    Args:
      images: see `features_and_probabilities` (uint8 0..255, or float in `value_range`).
      value_range: (low, high) of floating-point images.
      labels: for a class-conditional generator, the digit each image was asked to show
        (int [N]); adds ``label_accuracy``.

    Returns:
      A dict with
        frechet_distance: float, Fréchet distance (float64) between the classifier features of
          `images` and of all 1,797 real digits at the same size; lower is better, ~0 is perfect.
        class_fractions: float64 [10], share of images whose most likely class is each digit.
        num_classes_covered: int, classes whose share is >= 0.03 (10 means no mode collapse).
        min_class_fraction: float, the smallest share.
        mean_confidence: float, mean over images of the largest class probability.
        precision, recall, density, coverage: floats (None for 3 images or fewer),
          :func:`dcgan_jax.evaluation.manifold_metrics` of the classifier features against
          the real digits' (k=3): precision falls with digits that look wrong, recall and
          coverage with digits (or styles of them) the generator never draws.
        label_accuracy: with ``labels``, the share of images the classifier reads as the
          digit asked for (~0.1 when the generator ignores the labels, 1 when it obeys them).
    """
    features, probabilities = self.features_and_probabilities(images, value_range)
    mean, cov = feature_statistics(features)
    reference_mean, reference_cov = self.reference_statistics(*np.shape(images)[1:3])
    predicted = probabilities.argmax(axis=-1)
    class_fractions = np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)
    manifold_scores = dict.fromkeys(manifold.METRICS)
    if len(features) > manifold.DEFAULT_K:
      manifold_scores = manifold.manifold_metrics(
          self.reference_features(*np.shape(images)[1:3]), features)
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape != predicted.shape:
        raise ValueError(f'labels must be [{len(predicted)}], one per image; got {labels.shape}.')
      manifold_scores['label_accuracy'] = float(np.mean(predicted == labels))
    return {
        **manifold_scores,
        'frechet_distance': frechet_distance(mean, cov, reference_mean, reference_cov),
        'class_fractions': class_fractions,
        'num_classes_covered': int(np.sum(class_fractions >= COVERAGE_THRESHOLD)),
        'min_class_fraction': float(class_fractions.min()),
        'mean_confidence': float(probabilities.max(axis=-1).astype(np.float64).mean()),
    }
