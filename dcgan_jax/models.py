"""DCGAN generator and discriminator (Radford et al., 2015) in flax.linen.

The layer layout, widths and initialisation follow the DCGAN paper's rules as the pytorch/examples
reference implementation builds them, so that with the defaults (64x64x3, latent 100, width 64)
the trainable parameter counts are exactly the reference's: 3,576,704 for G and 2,765,568 for D.
Like the reference, and unlike the paper's Figure 1, G starts at 4x4x(8 * width) = 512 channels
(not 1024) and the kernels are 4x4 (not 5x5); README.md ("What 'paper-faithful' means here")
lists these departures.

Shape arithmetic, for ``image_size = 4 * 2**k``:

* G: ``z [N, latent]`` -> dense projection to ``[N, 4, 4, width * 2**(k-1)]`` -> ``k - 1`` blocks
  that double the side and halve the width -> one last block to ``[N, size, size, channels]``.
  A transposed convolution with kernel 4, stride 2 and padding 1 (PyTorch terms; 'SAME' here)
  exactly doubles the side, and its kernel is divisible by its stride, which avoids the uneven
  overlap that makes checkerboards worse.
* D: ``k`` stride-2 convolutions (kernel 4, padding 1) halve the side from ``size`` to 4 and
  double the width from ``width``; a final 4x4 'VALID' convolution maps ``4x4`` to one logit.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dcgan_jax.errors import UserError

VALID_IMAGE_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
UPSAMPLE_MODES: tuple[str, ...] = ('transpose', 'resize_conv')
OUTPUT_ACTIVATIONS: tuple[str, ...] = ('tanh', 'sigmoid')
# How D normalises its hidden layers (see Discriminator.norm).
DISCRIMINATOR_NORMS: tuple[str, ...] = ('batch', 'layer', 'spectral', 'none')
# How a class-conditional G takes its label (see Generator.conditioning): for each mode, whether
# the one-hot label is appended to z and whether G's BatchNorms are class-conditional.
_CONDITIONING_PARTS: dict[str, tuple[bool, bool]] = {
    'concat': (True, False), 'batchnorm': (False, True), 'concat_batchnorm': (True, True)}
GENERATOR_CONDITIONINGS: tuple[str, ...] = tuple(_CONDITIONING_PARTS)
COMPUTE_DTYPES: dict[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# The reference initialises every conv kernel N(0, 0.02) and BN scale N(1, 0.02), bias 0.
kernel_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """BatchNorm scale initialiser: N(1, 0.02), as the DCGAN reference does."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _join(options: Sequence[Any]) -> str:
  items = [str(o) for o in options]
  return ', '.join(items[:-1]) + ' or ' + items[-1]


def output_range(output_activation: str) -> tuple[float, float]:
  """The value range of a generator's images: (-1, 1) for 'tanh', (0, 1) for 'sigmoid'.

  Raises:
    UserError: another value: the real images would be scaled to a range the generator's
      images are not in (a custom module's ``'Tanh'`` gave [0, 1] reals against [-1, 1] fakes,
      which D tells apart at once, without a word).
  """
  _validate_choice('output_activation', output_activation, OUTPUT_ACTIVATIONS)
  return (-1.0, 1.0) if output_activation == 'tanh' else (0.0, 1.0)


def validate_image_size(image_size: int) -> int:
  """Returns ``k`` such that ``image_size == 4 * 2**k``, or raises a UserError naming valid sizes."""
  if image_size not in VALID_IMAGE_SIZES:
    raise UserError(f'image_size must be 4·2^k: {_join(VALID_IMAGE_SIZES)} (got {image_size!r}).')
  return int(math.log2(image_size // 4))


def _validate_choice(name: str, value: Any, options: Sequence[Any]) -> None:
  if value not in options:
    raise UserError(f'{name} must be one of {_join(options)} (got {value!r}).')


def check_num_classes(num_classes: Any) -> int:
  """``num_classes`` as an int >= 0 (0: unconditional), or a UserError saying what is valid."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
    raise UserError('num_classes must be 0 (unconditional, the paper) or the number of classes '
                    f'of the dataset\'s labels, such as 10 (got {num_classes!r}).')
  return num_classes


def check_conditioning(conditioning: Any, num_classes: int) -> str:
  """``conditioning`` if valid for a generator with ``num_classes``, else a UserError."""
  if conditioning not in GENERATOR_CONDITIONINGS:
    raise UserError(f'generator_conditioning must be one of {_join(GENERATOR_CONDITIONINGS)} '
                    f'(got {conditioning!r}).')
  if conditioning != 'concat' and not num_classes:
    raise UserError(f'generator_conditioning={conditioning} conditions G on class labels: it '
                    'needs num_classes > 0 (the number of classes of the dataset, such as 10). '
                    "Set num_classes, or leave generator_conditioning at 'concat'.")
  return conditioning


def _check_labels(labels: jax.Array | None, num_classes: int, batch: int, like: str) -> bool:
  """Whether the call is conditional; raises when labels and ``num_classes`` disagree."""
  if not num_classes:
    if labels is not None:
      raise ValueError('labels were given to an unconditional model (num_classes=0); build it '
                       'with num_classes set to condition on classes.')
    return False
  if labels is None:
    raise ValueError(f'This model is class-conditional (num_classes={num_classes}): pass '
                     f'labels, int [N] in [0, {num_classes}).')
  if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be integers of shape [{batch}] (one per row of {like}), '
                     f'got {labels.dtype} {labels.shape}.')
  return True


def resolve_dtype(dtype: Any) -> Any:
  """Maps a dtype name ('float32', 'bfloat16') or a jnp dtype to the jnp dtype."""
  if isinstance(dtype, str):
    _validate_choice('dtype', dtype, tuple(COMPUTE_DTYPES))
    return COMPUTE_DTYPES[dtype]
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise UserError(f'dtype must be one of float32 or bfloat16 (got {dtype!r}).')
  return dtype


def resolve_channel_multiple(channel_multiple: int, dtype: Any) -> int:
  """``image_channel_multiple`` with 0 ('auto') resolved: 8 for bfloat16, 1 for float32.

  Padding RGB to 8 channels gave the paper-sized bfloat16 step 4-8% on an H200, and the
  float32 step -3% (experiments/PERF.md, version 11); the function is the same either way.
  """
  if channel_multiple:
    return channel_multiple
  return 8 if jnp.dtype(resolve_dtype(dtype)) == jnp.dtype(jnp.bfloat16) else 1


def _check_common(image_size: int, channels: int, width: int, dtype: Any,
                  channel_multiple: int = 1) -> None:
  validate_image_size(image_size)
  if not isinstance(channel_multiple, int) or isinstance(channel_multiple, bool) or \
      channel_multiple < 0:
    raise UserError('image_channel_multiple must be a non-negative integer: 0 (auto: 8 for '
                    'bfloat16, 1 for float32), 1 (no padding) or 8 (pad to a multiple of 8 '
                    f'for tensor cores) (got {channel_multiple!r}).')
  if not isinstance(channels, int) or channels < 1:
    raise UserError(f'channels must be a positive integer such as 1 or 3 (got {channels!r}).')
  if not isinstance(width, int) or width < 1:
    raise UserError(f'width must be a positive integer such as 64 (got {width!r}).')
  resolve_dtype(dtype)


def pad_axis(x: jax.Array, axis: int, multiple: int) -> jax.Array:
  """Zero-pads ``axis`` of ``x`` up to the next multiple of ``multiple`` (no-op if it is one)."""
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


# The stride-2 convolution (kernel 4, padding 1) whose adjoint is the generator's upsampling.
_DOWN_STRIDES = (2, 2)
_DOWN_PADDING = ((1, 1), (1, 1))
_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _down(t: jax.Array, w: jax.Array) -> jax.Array:
  """Conv2d(kernel 4, stride 2, padding 1): ``[N, 2h, 2w, Cy] -> [N, h, w, Cx]``, w ``HWIO``."""
  return jax.lax.conv_general_dilated(t, w, _DOWN_STRIDES, _DOWN_PADDING,
                                      dimension_numbers=_DIMENSIONS)


def _linear_transpose(fn: Callable[[jax.Array], jax.Array], like: jax.ShapeDtypeStruct,
                      cotangent: jax.Array) -> jax.Array:
  return jax.linear_transpose(fn, like)(cotangent)[0]


@jax.custom_vjp
def conv_transpose_4x4_s2(x: jax.Array, w: jax.Array) -> jax.Array:
  """PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1), as the adjoint of a strided conv.

  Args:
    x: ``[N, h, w, Cx]``.
    w: The kernel of the strided conv this layer transposes, ``[4, 4, Cy, Cx]`` (HWIO of the
      conv from ``Cy`` to ``Cx`` channels).

  Returns:
    ``[N, 2h, 2w, Cy]``.

  Why a custom VJP: written as a transposed convolution, autodiff gives the kernel gradient as
  a convolution over the zero-dilated input that XLA cannot map onto cuDNN's weight-gradient
  kernels; on an H200 that one call took 2.25 ms of a 7 ms float32 step (a single thread block
  reducing over N·H·W). Stated as the adjoint of ``_down``, every pass is one of the three
  convolutions cuDNN is built for: the forward is ``_down``'s input gradient, the input
  gradient is ``_down`` itself and the kernel gradient is ``_down``'s weight gradient.
  """
  n, h, width, _ = x.shape
  like = jax.ShapeDtypeStruct((n, 2 * h, 2 * width, w.shape[2]), x.dtype)
  return _linear_transpose(lambda t: _down(t, w), like, x)


def _conv_transpose_fwd(x, w):
  return conv_transpose_4x4_s2(x, w), (x, w)


def _conv_transpose_bwd(residuals, dy):
  x, w = residuals
  dx = _down(dy, w)
  dw = _linear_transpose(lambda v: _down(dy, v), jax.ShapeDtypeStruct(w.shape, w.dtype), x)
  return dx, dw


conv_transpose_4x4_s2.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class TransposedConv(nn.Module):
  """4x4 stride-2 transposed conv that doubles the side (PyTorch: kernel 4, stride 2, padding 1).

  The ``kernel`` parameter has ``flax.linen.ConvTranspose``'s layout and meaning
  (``[4, 4, in, out]``, ``padding='SAME'``, no kernel flip), so checkpoints and conversions
  written for that layer still apply; it computes the same function through
  :func:`conv_transpose_4x4_s2`, whose gradients map onto cuDNN's fast kernels.

  Attributes:
    features: Output channels.
    dtype: Computation dtype; the kernel is stored in float32.
    channel_multiple: Compute the output channels zero-padded to a multiple of this and drop
      the padding afterwards (see ``Generator.image_channel_multiple``); the parameters and
      the function are unchanged.
  """

  features: int
  dtype: Any = jnp.float32
  channel_multiple: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', kernel_init, (4, 4, x.shape[-1], self.features), jnp.float32)
    # flax's ConvTranspose correlates the 2x-dilated input (padded by 2) with ``kernel``; that is
    # the adjoint of a stride-2 correlation with the spatially flipped kernel, in and out swapped.
    w = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).astype(self.dtype)
    y = conv_transpose_4x4_s2(x.astype(self.dtype), pad_axis(w, 2, self.channel_multiple))
    return y[..., :self.features]


class ChannelPaddedConv(nn.Module):
  """``flax.linen.Conv`` without bias whose input channels are zero-padded to a multiple.

  Same parameter (``kernel``, ``[kh, kw, in, features]``, float32) and function as
  ``nn.Conv(features, kernel_size, strides, padding, use_bias=False)``: the padded input channels
  meet zero kernel rows. Why: cuDNN's bfloat16 tensor-core convolutions need channel counts
  that are multiples of 8; given an RGB input they pad it themselves, with separate kernels
  (16 per DCGAN step on an H200), while a pad written here fuses into the producer.

  Attributes:
    features: Output channels.
    kernel_size: Spatial kernel shape.
    strides: Spatial strides.
    padding: Spatial padding, as ``lax.conv_general_dilated`` takes it.
    dtype: Computation dtype; the kernel is stored in float32.
    channel_multiple: Pad the input channels to a multiple of this.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = 'VALID'
  dtype: Any = jnp.float32
  channel_multiple: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', kernel_init, (*self.kernel_size, x.shape[-1], self.features),
                        jnp.float32)
    m = self.channel_multiple
    return jax.lax.conv_general_dilated(
        pad_axis(x.astype(self.dtype), 3, m), pad_axis(kernel.astype(self.dtype), 2, m),
        self.strides, self.padding, dimension_numbers=_DIMENSIONS)


class WholeMapConv(nn.Module):
  """A 'VALID' convolution whose kernel covers the whole input map, computed as one dot product.

  Same parameter (``kernel``, ``[h, w, in, features]``, float32, no bias) and function as
  ``nn.Conv(features, (h, w), padding='VALID', use_bias=False)`` on an ``[N, h, w, in]`` input,
  which yields ``[N, 1, 1, features]``. Why: D's logit layer is such a convolution with one
  output channel; as a convolution it costs three cuDNN calls per pass (forward, input and
  kernel gradients, each padding the single channel), as a dot product XLA fuses it into its
  neighbours. On 2 CPU cores its forward and backward at batch 256 run ~10x faster (1.1 vs 11 ms).

  Attributes:
    features: Output channels.
    dtype: Computation dtype; the kernel is stored in float32.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    kernel = self.param('kernel', kernel_init, (h, w, c, self.features), jnp.float32)
    y = jnp.dot(x.reshape((n, h * w * c)).astype(self.dtype),
                kernel.reshape((h * w * c, self.features)).astype(self.dtype))
    return y.reshape((n, 1, 1, self.features))


class GroupedBatchNorm(nn.Module):
  """BatchNorm that can normalise several batches stacked in one call, each with its own statistics.

  With ``groups=g`` the leading axis holds ``g`` equal batches; each is normalised with its
  own batch statistics (averaged over ``axis_name``) and the running averages are updated as if
  the batches had been passed one after another in order. With ``groups=1`` it is
  ``flax.linen.BatchNorm`` (feature axis -1, ``use_fast_variance``, float32 statistics), with the
  same variable names ('scale', 'bias'; 'mean', 'var').

  Why: the DCGAN reference scores real and fake images in separate D passes (their batch
  statistics must stay apart); stacking them lets every convolution run once at twice the
  batch instead of twice, which halves the kernel launches of D's update and fills the GPU.

  Attributes:
    use_running_average: Normalise with the running statistics (evaluation).
    momentum: Decay of the running averages.
    epsilon: Added to the variance.
    dtype: Output dtype (statistics and normalisation are computed in float32).
    axis_name: Mapped axis to average batch statistics over, or None.
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, groups: int = 1) -> jax.Array:
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    scale = self.param('scale', bn_scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    xg = x.reshape((groups, x.shape[0] // groups) + x.shape[1:]).astype(jnp.float32)
    if self.use_running_average:
      mean = jnp.broadcast_to(ra_mean.value, (groups, features))
      var = jnp.broadcast_to(ra_var.value, (groups, features))
    else:
      axes = tuple(range(1, xg.ndim - 1))
      mean, mean_sq = xg.mean(axes), (xg * xg).mean(axes)
      if self.axis_name is not None:
        mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(0.0, mean_sq - mean * mean)
      if not self.is_initializing():
        m = self.momentum
        for g in range(groups):  # In order: the same averages as g consecutive calls.
          ra_mean.value = m * ra_mean.value + (1 - m) * mean[g]
          ra_var.value = m * ra_var.value + (1 - m) * var[g]
    shape = (groups,) + (1,) * (xg.ndim - 2) + (features,)
    mul = jax.lax.rsqrt(var.reshape(shape) + self.epsilon) * scale
    y = (xg - mean.reshape(shape)) * mul + bias
    return y.reshape(x.shape).astype(self.dtype)


class ClassConditionalBatchNorm(nn.Module):
  """BatchNorm whose scale and offset are chosen by each example's class.

  Normalises like ``flax.linen.BatchNorm`` (batch statistics averaged over ``axis_name``; the
  running averages ``mean`` and ``var`` in ``batch_stats``) but without a shared affine map:
  example ``i`` of class ``labels[i]`` is scaled by ``scale[labels[i]]`` and shifted by
  ``bias[labels[i]]``, ``[num_classes, features]`` parameters. The statistics stay shared by all
  classes, so every class is normalised alike and only the affine map carries the label:
  categorical conditional BatchNorm (de Vries et al. 2017; the generator of Miyato & Koyama's
  projection-discriminator cGAN). Each class's scale starts at N(1, 0.02) and its offset at 0,
  the DCGAN initialisation of a plain BatchNorm.

  Attributes:
    num_classes: Number of classes (rows of ``scale`` and ``bias``).
    use_running_average: Normalise with the running statistics (evaluation).
    momentum: Decay of the running averages.
    epsilon: Added to the variance.
    dtype: Computation and output dtype; parameters and statistics are float32.
    axis_name: Mapped axis to average batch statistics over, or None.
  """

  num_classes: int
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array) -> jax.Array:
    features = x.shape[-1]
    x = nn.BatchNorm(use_running_average=self.use_running_average, momentum=self.momentum,
                     epsilon=self.epsilon, dtype=self.dtype, param_dtype=jnp.float32,
                     use_scale=False, use_bias=False, axis_name=self.axis_name,
                     name='normalise')(x)
    scale = self.param('scale', bn_scale_init, (self.num_classes, features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.num_classes, features), jnp.float32)
    # One row per example, broadcast over its height and width.
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (features,)
    return (x * scale[labels].reshape(shape).astype(self.dtype)
            + bias[labels].reshape(shape).astype(self.dtype))


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of ``[N, H, W, C]``: each pixel becomes a 2x2 block.

  The same values as ``jax.image.resize(x, (N, 2H, 2W, C), method='nearest')``, written as a
  broadcast and a reshape, so the program holds no gather and its gradient is a sum over each
  2x2 block instead of a scatter-add (alone on CPU: 0.54 vs 8.4 ms for the backward pass of a
  64x16x16x32 batch; inside the default config's whole jitted step XLA:CPU runs both at the
  same speed, 483 vs 506 operations per step; accelerators unmeasured). The generator's
  'resize_conv' layers (:class:`ResizeConv`) compute the same function without materialising
  it; this is the plain form they are tested against.
  """
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
  return x.reshape(n, 2 * h, 2 * w, c)


def _phase_taps(kernel: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """What a 3-tap kernel along ``axis`` becomes for the even and the odd outputs of a 2x-nearest
  upsampled input, as 3-tap kernels over the input itself (rows i-1, i, i+1).

  Output 2i reads upsampled positions 2i-1, 2i, 2i+1, i.e. inputs i-1, i, i: taps
  (k0, k1 + k2, 0). Output 2i+1 reads 2i, 2i+1, 2i+2, i.e. inputs i, i, i+1: (0, k0 + k1, k2).
  """
  k0, k1, k2 = (jax.lax.index_in_dim(kernel, i, axis) for i in range(3))
  zero = jnp.zeros_like(k0)
  return (jnp.concatenate([k0, k1 + k2, zero], axis),
          jnp.concatenate([zero, k0 + k1, k2], axis))


def upsample_conv_3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Nearest 2x upsampling of ``[N, H, W, Cin]`` then a 3x3 'SAME' convolution with ``kernel``.

  The same function as ``conv(upsample_nearest_2x(x), kernel)``, computed without the
  upsampled tensor: each of the output's four pixel phases (even/odd row, even/odd column) is
  a 3x3 convolution of ``x`` itself with a phase kernel made of sums of ``kernel``'s taps
  (:func:`_phase_taps`), so one convolution with the four phase kernels side by side
  (``4·Cout`` outputs) and a depth-to-space shuffle give the result. Same multiply-adds, but
  no pass over a 4x larger activation in either direction: on 2 CPU cores the default
  config's train step went from ~74 to ~63 ms (one device, float32), with ~0.7 s more to
  compile it. The phase kernels are summed in the kernel's dtype (float32) and then cast to
  ``x``'s: outputs agree with the direct form to float rounding.

  Args:
    x: ``[N, H, W, Cin]`` input.
    kernel: ``[3, 3, Cin, Cout]`` (HWIO, as ``flax.linen.Conv`` stores it).

  Returns:
    ``[N, 2H, 2W, Cout]`` in ``x``'s dtype.
  """
  n, h, w, _ = x.shape
  cin, cout = kernel.shape[2:]
  phases = [kc for kr in _phase_taps(kernel, 0) for kc in _phase_taps(kr, 1)]  # (0,0) .. (1,1)
  kernels = jnp.stack(phases, axis=3).reshape(3, 3, cin, 4 * cout).astype(x.dtype)
  y = jax.lax.conv_general_dilated(x, kernels, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)  # [n, i, a, j, b, c]
  return y.reshape(n, 2 * h, 2 * w, cout)


class ResizeConv(nn.Module):
  """Nearest 2x upsampling then a 3x3 convolution without bias (:func:`upsample_conv_3x3`).

  Same parameter as ``flax.linen.Conv(features, (3, 3), padding='SAME', use_bias=False)``
  (``kernel``, ``[3, 3, in, features]``, float32, same initializer) applied to
  :func:`upsample_nearest_2x` of the input, and the same function, computed in the phase form.

  Attributes:
    features: Output channels.
    dtype: Computation dtype; the kernel is stored in float32.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', kernel_init, (3, 3, x.shape[-1], self.features), jnp.float32)
    return upsample_conv_3x3(x.astype(self.dtype), kernel)


class Generator(nn.Module):
  """DCGAN generator: latent vectors to images.

  Attributes:
    image_size: Side of the square output, 4·2^k (8 ... 256).
    channels: Output channels (1 for MNIST-like data, 3 for RGB).
    latent_dim: Size of z.
    width: Width of the last hidden block (``ngf``); earlier blocks are wider by powers of 2.
    upsample: 'transpose' (4x4 stride-2 transposed conv, the paper) or 'resize_conv'
      (nearest x2 then 3x3 conv, free of checkerboard artefacts).
    output_activation: 'tanh' for data in [-1, 1] or 'sigmoid' for data in [0, 1].
    dtype: Computation dtype ('float32' or 'bfloat16'); params, BN statistics and the output
      stay float32.
    axis_name: Mapped axis over which BatchNorm averages its batch statistics (data parallel
      training), or None on one device.
    image_channel_multiple: With ``upsample='transpose'``, the output layer computes its
      ``channels`` zero-padded to a multiple of this and drops the padding (8: RGB output in
      the channel multiples cuDNN's bfloat16 tensor-core kernels want). Same parameters and
      function; 1 pads nothing; 0 (the default) means 8 in bfloat16 and 1 in float32 (see
      :func:`resolve_channel_multiple`). (The 'resize_conv' output layer is left as it is.)
    num_classes: 0 (the paper: unconditional) or the number of classes of a class-conditional
      generator, which then takes integer ``labels`` beside ``z`` (see ``conditioning``).
    conditioning: How a class-conditional generator takes its labels (one of
      :data:`GENERATOR_CONDITIONINGS`; only with ``num_classes``):

      * ``'concat'``: their one-hot codes are appended to z before the projection, as in
        conditional GANs (Mirza & Osindero, 2014), which amounts to a learned per-class offset
        of the first 4x4 feature map.
      * ``'batchnorm'``: z alone is projected, and every hidden BatchNorm takes its scale and
        offset from the label (:class:`ClassConditionalBatchNorm`), so the class acts on every
        block: the generator of Miyato & Koyama's projection cGAN (2018). Its per-class
        offsets act after the normalisation and move by the optimizer's step size, so it
        learns the classes slowly: on the default digits run it needs thousands of steps.
      * ``'concat_batchnorm'``: both (as BigGAN-deep feeds its class embedding to the first
        layer and to every conditional BatchNorm).
  """

  image_size: int = 64
  channels: int = 3
  latent_dim: int = 100
  width: int = 64
  upsample: str = 'transpose'
  output_activation: str = 'tanh'
  dtype: Any = 'float32'
  axis_name: str | None = None
  image_channel_multiple: int = 0
  num_classes: int = 0
  conditioning: str = 'concat'

  def __post_init__(self):
    # Fail at construction, not at first use, so a config mistake surfaces at once.
    _check_common(self.image_size, self.channels, self.width, self.dtype,
                  self.image_channel_multiple)
    check_num_classes(self.num_classes)
    check_conditioning(self.conditioning, self.num_classes)
    _validate_choice('upsample', self.upsample, UPSAMPLE_MODES)
    _validate_choice('output_activation', self.output_activation, OUTPUT_ACTIVATIONS)
    if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
      raise UserError(f'latent_dim must be a positive integer such as 100 (got {self.latent_dim!r}).')
    super().__post_init__()

  def _batch_norm(self, x: jax.Array, train: bool, dtype: Any,
                  labels: jax.Array | None) -> jax.Array:
    if labels is not None and _CONDITIONING_PARTS[self.conditioning][1]:
      return ClassConditionalBatchNorm(self.num_classes, use_running_average=not train,
                                       dtype=dtype, axis_name=self.axis_name)(x, labels)
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
        param_dtype=jnp.float32, scale_init=bn_scale_init, axis_name=self.axis_name)(x)

  def _upsample(self, x: jax.Array, features: int, dtype: Any, index: int,
                channel_multiple: int = 1) -> jax.Array:
    if self.upsample == 'transpose':
      return TransposedConv(features, dtype=dtype, channel_multiple=channel_multiple,
                            name=f'ConvTranspose_{index}')(x)
    return ResizeConv(features, dtype=dtype, name=f'Conv_{index}')(x)

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True,
               labels: jax.Array | None = None) -> jax.Array:
    """Generates images.

    Args:
      z: Latent vectors ``[N, latent_dim]``.
      train: Use batch statistics (and update the running ones) if True, running ones if False.
      labels: Integer classes ``[N]`` in ``[0, num_classes)``; required when ``num_classes``
        is set, refused otherwise.

    Returns:
      float32 images ``[N, image_size, image_size, channels]`` in [-1, 1] (tanh) or [0, 1].
    """
    dtype = resolve_dtype(self.dtype)
    k = validate_image_size(self.image_size)
    if z.ndim != 2 or z.shape[-1] != self.latent_dim:
      raise ValueError(f'z must have shape [N, {self.latent_dim}], got {z.shape}.')
    inputs = z.astype(dtype)
    if not _check_labels(labels, self.num_classes, z.shape[0], 'z'):
      labels = None
    elif _CONDITIONING_PARTS[self.conditioning][0]:
      inputs = jnp.concatenate([inputs, jax.nn.one_hot(labels, self.num_classes, dtype=dtype)], -1)
    features = self.width * 2 ** (k - 1)
    # A dense projection of z is the reference's 4x4 transposed conv on a 1x1 input: same
    # function, same parameter count (latent * 16 * features, no bias).
    x = nn.Dense(4 * 4 * features, use_bias=False, kernel_init=kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name='project')(inputs)
    x = x.reshape((z.shape[0], 4, 4, features))
    x = nn.relu(self._batch_norm(x, train, dtype, labels))
    for i in range(k - 1):
      features //= 2
      x = self._upsample(x, features, dtype, i)
      x = nn.relu(self._batch_norm(x, train, dtype, labels))
    x = self._upsample(x, self.channels, dtype, k - 1,
                       resolve_channel_multiple(self.image_channel_multiple, dtype))
    x = x.astype(jnp.float32)
    return jnp.tanh(x) if self.output_activation == 'tanh' else nn.sigmoid(x)


class Discriminator(nn.Module):
  """DCGAN discriminator: images to one real/fake logit each (no sigmoid: the losses own it).

  Attributes:
    image_size: Side of the square input, 4·2^k (8 ... 256).
    channels: Input channels.
    width: Width of the first block (``ndf``); later blocks are wider by powers of 2.
    dtype: Computation dtype ('float32' or 'bfloat16'); params, statistics and logits stay float32.
    axis_name: Mapped axis for BatchNorm statistics under data parallelism, or None.
    image_channel_multiple: The input layer zero-pads the image channels to a multiple of
      this (8: see :class:`ChannelPaddedConv`). Same parameters and function; 1 pads nothing;
      0 (the default) means 8 in bfloat16 and 1 in float32.
    norm: How the hidden layers are normalised (one of :data:`DISCRIMINATOR_NORMS`):

      * ``'batch'`` (the paper): BatchNorm after every conv but the input layer's, with
        statistics over the batch (synced over ``axis_name``).
      * ``'layer'``: LayerNorm in the same places, with statistics per example over height,
        width and channels and a per-channel scale and offset. Each example's logit then
        depends on that example alone, which a gradient penalty assumes: WGAN-GP's authors
        use it instead of BatchNorm in the critic.
      * ``'spectral'``: no normalisation layers; every conv and the logit layer divide their
        kernel by its largest singular value (Miyato et al. 2018, flax's ``SpectralNorm``),
        estimated by one power iteration per training call and kept in ``batch_stats``.
        The train step scores real and fake images in one call, so the estimate advances
        once per D update and once per G update.
      * ``'none'``: no normalisation.

      At ``image_size`` 8 D has its input layer alone, which ``'batch'`` and ``'layer'`` leave
      unnormalised: there both equal ``'none'``.
    num_classes: 0 (the paper: unconditional) or the number of classes of a class-conditional
      discriminator, which then takes integer ``labels`` and adds to its logit the inner
      product of the last feature map (flattened) with a learned embedding of the label: the
      projection discriminator of Miyato & Koyama (2018), with DCGAN's logit layer as the
      unconditional term. (With ``norm='spectral'`` the embedding is not normalised.)
  """

  image_size: int = 64
  channels: int = 3
  width: int = 64
  dtype: Any = 'float32'
  axis_name: str | None = None
  image_channel_multiple: int = 0
  norm: str = 'batch'
  num_classes: int = 0
  # The train step may stack real and fake batches in one call (see ``groups``).
  supports_groups: ClassVar[bool] = True

  def __post_init__(self):
    _check_common(self.image_size, self.channels, self.width, self.dtype,
                  self.image_channel_multiple)
    check_num_classes(self.num_classes)
    _validate_choice('norm', self.norm, DISCRIMINATOR_NORMS)
    super().__post_init__()

  def _layer(self, layer: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """Applies a conv-like ``layer``, spectrally normalised if ``norm == 'spectral'``."""
    if self.norm != 'spectral':
      return layer(x)
    # The wrapper keeps the layer's parameters under the layer's own name; its u and sigma go
    # to batch_stats under SpectralNorm_<layer>.
    return nn.SpectralNorm(layer, name=f'SpectralNorm_{layer.name}')(x, update_stats=train)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = True, groups: int = 1,
               labels: jax.Array | None = None) -> jax.Array:
    """Scores images.

    Args:
      images: ``[N, image_size, image_size, channels]`` in the generator's output range.
      train: Use batch statistics (and update the running ones) if True.
      groups: ``images`` holds this many equal batches, stacked; in training each gets its
        own BatchNorm statistics and the running averages are updated batch after batch, so
        the result equals ``groups`` separate calls (see :class:`GroupedBatchNorm`).
      labels: Integer classes ``[N]``; required when ``num_classes`` is set, refused otherwise.

    Returns:
      float32 logits ``[N]``. Each block's activation (after its LeakyReLU) is also sown as
      ``'block_<i>'`` into the ``'intermediates'`` collection, for feature probes.
    """
    dtype = resolve_dtype(self.dtype)
    k = validate_image_size(self.image_size)
    expected = (self.image_size, self.image_size, self.channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ValueError(f'images must have shape [N, {", ".join(map(str, expected))}], '
                       f'got {images.shape}.')
    if images.shape[0] % groups:
      raise ValueError(f'{images.shape[0]} images cannot form {groups} equal groups.')
    conditional = _check_labels(labels, self.num_classes, images.shape[0], 'images')
    x = images.astype(dtype)
    channel_multiple = resolve_channel_multiple(self.image_channel_multiple, dtype)
    for i in range(k):
      if i == 0 and channel_multiple > 1:
        conv = ChannelPaddedConv(self.width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                                 dtype=dtype, channel_multiple=channel_multiple, name='Conv_0')
      else:
        conv = nn.Conv(self.width * 2**i, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                       use_bias=False, kernel_init=kernel_init, dtype=dtype,
                       param_dtype=jnp.float32, name=f'Conv_{i}')
      x = self._layer(conv, x, train)
      if i > 0 and self.norm == 'batch':  # The paper leaves BN off D's input layer.
        x = GroupedBatchNorm(use_running_average=not train, dtype=dtype,
                             axis_name=self.axis_name, name=f'BatchNorm_{i - 1}')(x, groups)
      elif i > 0 and self.norm == 'layer':
        # Per example over (H, W, C), with torch's LayerNorm epsilon; flax computes the
        # statistics in float32 whatever the dtype.
        x = nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=-1, dtype=dtype,
                         param_dtype=jnp.float32, name=f'LayerNorm_{i - 1}')(x)
      x = nn.leaky_relu(x, negative_slope=0.2)
      # For feature probes (dcgan_jax.evaluation.linear_probe); a no-op unless the caller makes
      # 'intermediates' mutable.
      self.sow('intermediates', f'block_{i}', x)
    features = x
    x = self._layer(WholeMapConv(1, dtype=dtype, name='logit'), x, train)  # 4x4 map -> logit.
    logits = x.reshape((images.shape[0],)).astype(jnp.float32)
    if conditional:
      flat = features.reshape((features.shape[0], -1))
      embedding = nn.Embed(self.num_classes, flat.shape[-1], embedding_init=kernel_init,
                           param_dtype=jnp.float32, name='class_embedding')(labels)
      # The projection term; summed in float32 whatever the compute dtype.
      logits = logits + jnp.sum(flat.astype(jnp.float32) * embedding, axis=-1)
    return logits


def cycled_labels(num: int, num_classes: int) -> Any:
  """Classes ``0, 1, ..., num_classes - 1, 0, 1, ...`` for ``num`` samples (int32 numpy), so
  every class gets an equal share; None for an unconditional model (``num_classes == 0``).

  The labels the training program, ``sample`` and ``evaluate`` generate with: a sample grid
  with ``num_classes`` columns then shows one class per column.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not num_classes:
    return None
  return (np.arange(num) % num_classes).astype(np.int32)


def check_label(label: int | None, num_classes: int) -> None:
  """Raises a UserError unless ``label`` is None or a class of a run with ``num_classes``
  (the ``--label`` of ``sample`` and ``evaluate``)."""
  if label is None:
    return
  if not num_classes:
    raise UserError(f'--label={label} needs a class-conditional run; this one was trained '
                    'without labels (num_classes 0). Leave --label out.')
  if not 0 <= label < num_classes:
    raise UserError(f'--label must be a class in 0..{num_classes - 1} (got {label}).')


def label_kwargs(labels: Any) -> dict[str, Any]:
  """``{'labels': labels}``, or ``{}`` for None: what to pass a possibly conditional model."""
  return {} if labels is None else {'labels': labels}


def count_params(params: Any) -> int:
  """Number of scalars in a params pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


def generator_from_config(config: Any, axis_name: str | None = None) -> Generator:
  """Builds the generator a run config describes (see configs/default.py)."""
  return Generator(
      image_size=config.image_size, channels=config.channels, latent_dim=config.latent_dim,
      width=config.generator_width, upsample=config.upsample,
      output_activation=config.output_activation, dtype=config.dtype, axis_name=axis_name,
      image_channel_multiple=config.get('image_channel_multiple', 0),
      num_classes=config.get('num_classes', 0),
      conditioning=config.get('generator_conditioning', 'concat'))


def discriminator_from_config(config: Any, axis_name: str | None = None) -> Discriminator:
  """Builds the discriminator a run config describes (see configs/default.py)."""
  norm = config.get('discriminator_norm', 'batch')
  if norm not in DISCRIMINATOR_NORMS:  # Checked here to name the field as the config does.
    raise UserError(f'discriminator_norm must be one of {", ".join(DISCRIMINATOR_NORMS)} '
                    f'(got {norm!r}).')
  return Discriminator(
      image_size=config.image_size, channels=config.channels, width=config.discriminator_width,
      dtype=config.dtype, axis_name=axis_name,
      image_channel_multiple=config.get('image_channel_multiple', 0), norm=norm,
      num_classes=config.get('num_classes', 0))
