"""Turning uint8 images into the Inception's input, the way each reference implementation does.

Two protocols exist, and their FIDs differ (mostly because of the resize):

* `pytorch_fid` (default; pytorch-fid, clean-fid's "legacy_pytorch"): x/255, bilinear resize to
  299 with half-pixel centres and no antialiasing (PyTorch's `F.interpolate(...,
  align_corners=False)`), then 2x - 1.
* `tf` (the original TTUR code, torch-fidelity, torchmetrics, OpenAI's evaluator): TensorFlow 1's
  `resize_bilinear` without half-pixel centres on the 0..255 values, then (x - 128) / 128.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax.errors import UserError
from dcgan_jax.evaluation.inception import INPUT_SIZE

MODES = ('pytorch_fid', 'tf')


def check_mode(mode: str) -> str:
  """Returns `mode` if it is a known preprocessing mode, else raises UserError."""
  if mode not in MODES:
    raise UserError(f'Unknown Inception preprocessing {mode!r}; valid: {", ".join(MODES)}.')
  return mode


def _tf1_source_coordinates(in_size: int, out_size: int):
  """TF1's legacy sampling grid: source = dest * (in/out), computed in float32 as TF does.

  Returns:
    (lower [out] int32, upper [out] int32, lerp [out] float32).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.arange(out_size, dtype=np.float32) * scale
  floor = np.floor(source)
  lower = np.maximum(floor.astype(np.int32), 0)
  upper = np.minimum(np.ceil(source).astype(np.int32), in_size - 1)
  return lower, upper, (source - floor).astype(np.float32)


def resize_bilinear_tf1(images: jax.Array, size: int) -> jax.Array:
  """TensorFlow 1 `resize_bilinear(align_corners=False, half_pixel_centers=False)`.

  Interpolates along x first, then y, with TF's operation order, so results match TF to float32
  rounding.

  Args:
    images: [N, H, W, C] float32.
    size: output height and width.

  Returns:
    [N, size, size, C] float32.
  """
  y_lo, y_hi, y_lerp = _tf1_source_coordinates(images.shape[1], size)
  x_lo, x_hi, x_lerp = _tf1_source_coordinates(images.shape[2], size)
  x_lerp = jnp.asarray(x_lerp)[None, None, :, None]
  y_lerp = jnp.asarray(y_lerp)[None, :, None, None]
  top = images[:, y_lo]
  bottom = images[:, y_hi]
  top = top[:, :, x_lo] + (top[:, :, x_hi] - top[:, :, x_lo]) * x_lerp
  bottom = bottom[:, :, x_lo] + (bottom[:, :, x_hi] - bottom[:, :, x_lo]) * x_lerp
  return top + (bottom - top) * y_lerp


def resize_bilinear_pytorch(images: jax.Array, size: int) -> jax.Array:
  """PyTorch's `F.interpolate(mode='bilinear', align_corners=False)` without antialiasing.

  Args:
    images: [N, H, W, C] float32.
    size: output height and width.

  Returns:
    [N, size, size, C] float32.
  """
  shape = (images.shape[0], size, size, images.shape[3])
  return jax.image.resize(images, shape, 'bilinear', antialias=False,
                          precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=('mode', 'size'))
def preprocess(images: jax.Array, mode: str = 'pytorch_fid', size: int = INPUT_SIZE) -> jax.Array:
  """uint8 images -> the Inception's input.

  Args:
    images: [N, H, W, C] uint8 with C = 1 (replicated to RGB) or 3; any H, W.
    mode: 'pytorch_fid' or 'tf' (see the module docstring).
    size: network input size (299 for every reference protocol).

  Returns:
    [N, size, size, 3] float32 in about [-1, 1].
  """
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.broadcast_to(x, x.shape[:-1] + (3,))
  if mode == 'pytorch_fid':
    return 2.0 * resize_bilinear_pytorch(x / 255.0, size) - 1.0
  if mode == 'tf':
    return (resize_bilinear_tf1(x, size) - 128.0) / 128.0
  check_mode(mode)
  raise AssertionError(mode)  # Every known mode returned above.


def _numpy_range_summary(images: np.ndarray) -> tuple[float, float, bool]:
  finite = np.isfinite(images)
  if finite.all():
    return float(images.min()), float(images.max()), True
  return 0.0, 0.0, False


def _already_uint8(images) -> bool:
  """True for uint8 images (nothing to quantise); a UserError for other integer images."""
  dtype = getattr(images, 'dtype', None)
  if dtype is None:
    return False
  dtype = np.dtype(dtype)
  if dtype == np.uint8:
    return True
  if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
    raise UserError(f'to_uint8 quantises generated float images in [low, high]; got {dtype} '
                    'images. uint8 images (0..255) need no quantising: pass them as they are.')
  return False


# Values this far outside [low, high] (a fraction of its width) are a wrong range, not a
# generator's overshoot (one without a squashing output activation can overshoot a little, and
# is clipped as image files would be): floats in 0..255 told [-1, 1] are almost all clipped to
# white.
_RANGE_SLACK = 0.5


def _check_range(low: float, high: float, seen_min: float | None = None,
                 seen_max: float | None = None, finite: bool = True) -> None:
  """UserErrors for an empty range, non-finite images, and images far outside [low, high]."""
  if not high > low:
    raise UserError(f'to_uint8 needs high > low, got low={low}, high={high}.')
  if seen_min is None:
    return
  if not finite:
    raise UserError('The images contain NaN or infinite values (they would quantise to black); '
                    'check the generator (a diverged run?) before scoring it.')
  slack = _RANGE_SLACK * (high - low)
  if seen_min < low - slack or seen_max > high + slack:
    raise UserError(f'The images span [{seen_min:.4g}, {seen_max:.4g}], far outside the '
                    f'[{low:g}, {high:g}] given to to_uint8; pass their range: low=-1, high=1 '
                    'for tanh outputs, low=0, high=1 for sigmoid, low=0, high=255 for pixel '
                    'values.')


@jax.jit
def _range_summary(images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  finite = jnp.isfinite(images)
  return (jnp.min(jnp.where(finite, images, jnp.inf)),
          jnp.max(jnp.where(finite, images, -jnp.inf)), jnp.all(finite))


def to_uint8(images: np.ndarray | jax.Array, low: float = -1.0, high: float = 1.0) -> np.ndarray:
  """Quantises generated images in [low, high] to uint8 the way image files would store them.

  FID compares against real images that were stored as uint8, so generated images go through the
  same quantisation: round(255 * (x - low) / (high - low)), clipped to 0..255.

  Args:
    images: [N, H, W, C] floats (uint8 images are returned as they are).
    low, high: the value range of `images` (-1, 1 for tanh generators; 0, 1 for sigmoid).

  Returns:
    [N, H, W, C] uint8 numpy array.

  Raises:
    UserError: integer images other than uint8; high <= low; NaN or infinite values; values
      far outside [low, high] (such as pixel values 0..255 with the default range), which
      clipping would turn into a few grey levels.
  """
  if _already_uint8(images):
    return np.asarray(images)
  images = np.asarray(images, np.float32)
  _check_range(low, high, *(_numpy_range_summary(images) if images.size else (None, None)))
  x = (images - low) * (255.0 / (high - low))
  return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def to_uint8_jax(images: jax.Array, low: float = -1.0, high: float = 1.0) -> jax.Array:
  """`to_uint8` on the device: the same uint8 values, without copying the images to the host.

  Generated images can so go from the generator to the Inception network without leaving the
  device (a 50k-image FID otherwise spends seconds copying and quantising float32 images in
  numpy).

  Args:
    images: [N, H, W, C] floats (uint8 images are returned as they are).
    low, high: the value range of `images` (-1, 1 for tanh generators; 0, 1 for sigmoid).

  Returns:
    [N, H, W, C] uint8 `jax.Array` on the devices of `images`, equal to `to_uint8(images)`.

  Raises:
    UserError: as :func:`to_uint8`. Called on a concrete array, the check costs one small
      reduction and a wait for ``images``; inside ``jax.jit`` (as the library's samplers call
      it, on a generator's known range) values cannot be looked at, and only ``low < high``
      is checked.
  """
  if _already_uint8(images):
    return images
  if isinstance(images, jax.core.Tracer) or not np.size(images):
    _check_range(low, high)
  else:
    seen_min, seen_max, finite = (v.item() for v in _range_summary(jnp.asarray(images)))
    _check_range(low, high, seen_min, seen_max, bool(finite))
  return _quantise_on_device(images, low=low, high=high)


@functools.partial(jax.jit, static_argnames=('low', 'high'))
def _quantise_on_device(images: jax.Array, low: float, high: float) -> jax.Array:
  x = (images.astype(jnp.float32) - low) * (255.0 / (high - low))
  # The barrier keeps the compiler from contracting the multiply and the +0.5 below into one
  # fused multiply-add (GPUs do so by default), whose single rounding could move values that
  # sit on a rounding boundary to the other uint8 than numpy's two-step `to_uint8` gives.
  x = jax.lax.optimization_barrier(x)
  return jnp.clip(jnp.floor(x + 0.5), 0, 255).astype(jnp.uint8)
