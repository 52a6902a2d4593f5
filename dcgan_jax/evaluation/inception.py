"""Inception-v3 in Flax, the FID variant ("inception-2015-12-05", 1008 classes).

This is the network every FID/IS/KID reference uses: torchvision's Inception-v3 layout with the
patches pytorch-fid applies so that it reproduces the original TensorFlow graph:

* the average pools of the A, C and first E blocks exclude padding from their count
  (TensorFlow's behaviour; torchvision's own blocks count it);
* the second E block (Mixed_7c) pools with a 3x3 MAX pool instead of an average pool;
* the classifier has 1008 outputs.

Module and variable names mirror the PyTorch state dict (``Mixed_6b/branch7x7_2/conv/kernel``
for ``Mixed_6b.branch7x7_2.conv.weight``), so weights are mapped by name, never by position.
Inference only: BatchNorm always uses its running statistics (eps 1e-3).
"""
import functools
from collections.abc import Mapping
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The spatial size the network was trained at; inputs are resized to it.
INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPSILON = 1e-3

PRECISIONS = {
    'default': jax.lax.Precision.DEFAULT,
    'high': jax.lax.Precision.HIGH,
    'highest': jax.lax.Precision.HIGHEST,
}

Padding = Sequence[tuple[int, int]]


def _same_padding(kernel_size: tuple[int, int]) -> Padding:
  """Symmetric padding that keeps the size for odd kernels (PyTorch's `padding=k//2`)."""
  return tuple((k // 2, k // 2) for k in kernel_size)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm (running stats, eps 1e-3) -> ReLU: torchvision's BasicConv2d.

  Attributes:
    features: output channels.
    kernel_size: (height, width) of the kernel.
    strides: (height, width) strides.
    padding: 'VALID' or explicit ((top, bottom), (left, right)) zero padding.
    precision: 'default', 'high' or 'highest' for the convolution.
    folded: the BatchNorm is folded into the convolution (variables from
      :func:`fold_batch_norm`): conv with a bias, then ReLU.
    relu: apply the ReLU (False only where the caller applies it later, after a pool).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str | Padding = 'VALID'
  precision: str = 'default'
  folded: bool = False
  relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [N, H, W, C_in] to [N, H', W', features]."""
    x = nn.Conv(
        self.features,
        self.kernel_size,
        strides=self.strides,
        padding=self.padding,
        use_bias=self.folded,
        precision=PRECISIONS[self.precision],
        name='conv',
    )(x)
    if not self.folded:
      x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name='bn')(x)
    return nn.relu(x) if self.relu else x


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
  # TensorFlow averages only the in-bounds pixels at the borders (count_include_pad=False).
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


# The 1x1 convolutions that read a block's input side by side, in the order their outputs are
# stacked when merged (see `merge_sibling_convs`). Every group is unique to one kind of block.
SIBLING_1X1_GROUPS = (
    ('branch1x1', 'branch5x5_1', 'branch3x3dbl_1'),  # InceptionA
    ('branch1x1', 'branch7x7_1', 'branch7x7dbl_1'),  # InceptionC
    ('branch3x3_1', 'branch7x7x3_1'),  # InceptionD
    ('branch1x1', 'branch3x3_1', 'branch3x3dbl_1'),  # InceptionE
)
MERGED_1X1 = 'merged_1x1'
# The blocks whose pool branch is a 3x3 average pool (excluding padding) then a 1x1 ConvBN; with
# ``merge_sibling_convs(..., pool_branches=True)`` that 1x1 joins the block's merged convolution.
# Mixed_7c max-pools (max does not commute with a convolution), so it keeps its pool branch.
AVERAGE_POOL_BLOCKS = ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d',
                       'Mixed_6e', 'Mixed_7b')
POOL_BRANCH = 'branch_pool'


def _sibling_1x1(x: jax.Array, branches: Sequence[tuple[str, int]], precision: str,
                 folded: bool, merged: bool, pool_features: int | None = None) -> list[jax.Array]:
  """The outputs of the 1x1 ConvBNs ``branches`` ((name, features)) that all read ``x``.

  Merged, they are one convolution with every branch's output channels side by side, split
  afterwards: the same values from one kernel launch instead of two or three (the blocks run at
  17x17 and 8x8, where each launch does little work).

  ``pool_features`` (merged only) also merges the pool branch, whose output is appended: its
  1x1 convolution then runs *before* the 3x3 average pool instead of after it. Both are linear
  and the pool's weights at each position sum to one (padding is excluded), so
  ``avg_pool(conv(x) + b) == conv(avg_pool(x)) + b``: the same branch, one launch fewer, and the
  pool reads the branch's 32..192 channels instead of the block's 192..1280 input channels.
  """
  if merged:
    if not folded:
      raise ValueError('merged sibling convolutions need folded=True (see merge_sibling_convs).')
    sizes = [features for _, features in branches]
    if pool_features is None:
      y = ConvBN(sum(sizes), (1, 1), precision=precision, folded=True, name=MERGED_1X1)(x)
      return jnp.split(y, np.cumsum(sizes)[:-1].tolist(), axis=-1)
    y = ConvBN(sum(sizes) + pool_features, (1, 1), precision=precision, folded=True,
               relu=False, name=MERGED_1X1)(x)
    *outputs, pooled = jnp.split(y, np.cumsum(sizes).tolist(), axis=-1)
    return [nn.relu(o) for o in outputs] + [nn.relu(_avg_pool_3x3_exclude_pad(pooled))]
  if pool_features is not None:
    raise ValueError('pool_merged needs merged=True (see merge_sibling_convs).')
  return [ConvBN(features, (1, 1), precision=precision, folded=folded, name=name)(x)
          for name, features in branches]


def _siblings_and_pool(block: nn.Module, x: jax.Array, branches: Sequence[tuple[str, int]],
                       pool_features: int) -> list[jax.Array]:
  """The sibling 1x1 branches' outputs, then the average-pool branch's, in ``block``'s form.

  ``block`` has ``precision``, ``folded``, ``merged`` and ``pool_merged`` attributes.
  """
  if block.pool_merged:
    return _sibling_1x1(x, branches, block.precision, block.folded, block.merged, pool_features)
  outputs = _sibling_1x1(x, branches, block.precision, block.folded, block.merged)
  pooled = _avg_pool_3x3_exclude_pad(x)
  return outputs + [ConvBN(pool_features, (1, 1), precision=block.precision,
                           folded=block.folded, name=POOL_BRANCH)(pooled)]


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pooled branches -> 224 + pool_features channels."""
  pool_features: int
  precision: str = 'default'
  folded: bool = False
  merged: bool = False
  pool_merged: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda name, f, k: ConvBN(f, k, padding=_same_padding(k), precision=self.precision,
                                     folded=self.folded, name=name)
    branch1x1, branch5x5, branch3x3dbl, branch_pool = _siblings_and_pool(
        self, x, (('branch1x1', 64), ('branch5x5_1', 48), ('branch3x3dbl_1', 64)),
        self.pool_features)
    branch5x5 = conv('branch5x5_2', 64, (5, 5))(branch5x5)
    branch3x3dbl = conv('branch3x3dbl_2', 96, (3, 3))(branch3x3dbl)
    branch3x3dbl = conv('branch3x3dbl_3', 96, (3, 3))(branch3x3dbl)
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17 with 3x3/2, double 3x3 (last /2) and max-pool branches."""
  precision: str = 'default'
  folded: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = ConvBN(384, (3, 3), strides=(2, 2), precision=self.precision,
                       folded=self.folded, name='branch3x3')(x)
    branch3x3dbl = ConvBN(64, (1, 1), precision=self.precision, folded=self.folded,
                          name='branch3x3dbl_1')(x)
    branch3x3dbl = ConvBN(96, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision,
                          folded=self.folded, name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), strides=(2, 2), precision=self.precision,
                          folded=self.folded, name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = _max_pool_3x3_stride2(x)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches of width `channels_7x7` -> 768 channels."""
  channels_7x7: int
  precision: str = 'default'
  folded: bool = False
  merged: bool = False
  pool_merged: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda name, f, k: ConvBN(f, k, padding=_same_padding(k), precision=self.precision,
                                     folded=self.folded, name=name)
    c7 = self.channels_7x7
    branch1x1, branch7x7, branch7x7dbl, branch_pool = _siblings_and_pool(
        self, x, (('branch1x1', 192), ('branch7x7_1', c7), ('branch7x7dbl_1', c7)), 192)
    branch7x7 = conv('branch7x7_2', c7, (1, 7))(branch7x7)
    branch7x7 = conv('branch7x7_3', 192, (7, 1))(branch7x7)
    branch7x7dbl = conv('branch7x7dbl_2', c7, (7, 1))(branch7x7dbl)
    branch7x7dbl = conv('branch7x7dbl_3', c7, (1, 7))(branch7x7dbl)
    branch7x7dbl = conv('branch7x7dbl_4', c7, (7, 1))(branch7x7dbl)
    branch7x7dbl = conv('branch7x7dbl_5', 192, (1, 7))(branch7x7dbl)
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8 with 3x3/2, 7x7-then-3x3/2 and max-pool branches."""
  precision: str = 'default'
  folded: bool = False
  merged: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda name, f, k, s=(1, 1), p=None: ConvBN(
        f, k, strides=s, padding=_same_padding(k) if p is None else p,
        precision=self.precision, folded=self.folded, name=name)
    branch3x3, branch7x7x3 = _sibling_1x1(
        x, (('branch3x3_1', 192), ('branch7x7x3_1', 192)), self.precision, self.folded,
        self.merged)
    branch3x3 = conv('branch3x3_2', 320, (3, 3), (2, 2), 'VALID')(branch3x3)
    branch7x7x3 = conv('branch7x7x3_2', 192, (1, 7))(branch7x7x3)
    branch7x7x3 = conv('branch7x7x3_3', 192, (7, 1))(branch7x7x3)
    branch7x7x3 = conv('branch7x7x3_4', 192, (3, 3), (2, 2), 'VALID')(branch7x7x3)
    branch_pool = _max_pool_3x3_stride2(x)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (average pool) and Mixed_7c (max pool): expanded 3x3 branches -> 2048 channels."""
  pool: str  # 'avg' (Mixed_7b) or 'max' (Mixed_7c, a quirk of the original graph).
  precision: str = 'default'
  folded: bool = False
  merged: bool = False
  pool_merged: bool = False  # Only with pool='avg': a max pool does not commute with a conv.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda name, f, k: ConvBN(f, k, padding=_same_padding(k), precision=self.precision,
                                     folded=self.folded, name=name)
    siblings = (('branch1x1', 320), ('branch3x3_1', 384), ('branch3x3dbl_1', 448))
    if self.pool == 'avg':
      branch1x1, branch3x3, branch3x3dbl, branch_pool = _siblings_and_pool(
          self, x, siblings, 192)
    else:
      if self.pool_merged:
        raise ValueError('pool_merged needs an average-pool block (pool="avg").')
      branch1x1, branch3x3, branch3x3dbl = _sibling_1x1(
          x, siblings, self.precision, self.folded, self.merged)
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
      branch_pool = conv(POOL_BRANCH, 192, (1, 1))(pooled)
    branch3x3 = jnp.concatenate([conv('branch3x3_2a', 384, (1, 3))(branch3x3),
                                 conv('branch3x3_2b', 384, (3, 1))(branch3x3)], axis=-1)
    branch3x3dbl = conv('branch3x3dbl_2', 384, (3, 3))(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([conv('branch3x3dbl_3a', 384, (1, 3))(branch3x3dbl),
                                    conv('branch3x3dbl_3b', 384, (3, 1))(branch3x3dbl)], axis=-1)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class Classifier(nn.Module):
  """The 2048 -> 1008 fully connected layer, returning logits with and without its bias."""
  precision: str = 'default'

  @nn.compact
  def __call__(self, pool: jax.Array) -> tuple[jax.Array, jax.Array]:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (POOL_FEATURES, NUM_CLASSES))
    bias = self.param('bias', nn.initializers.zeros, (NUM_CLASSES,))
    logits = jnp.dot(pool, kernel, precision=PRECISIONS[self.precision])
    return logits, logits + bias


class FIDInceptionV3(nn.Module):
  """The FID Inception-v3: [N, 299, 299, 3] preprocessed images -> pool_3 features and logits.

  Attributes:
    precision: matmul/conv precision, 'default' (TF32 on GPUs that have it, as PyTorch uses by
      default), 'high' or 'highest' (full float32, for parity checks).
    folded: the variables come from :func:`fold_batch_norm` (convolutions with a bias, no
      BatchNorm layers): the same function with one pass less over every activation.
    merged: the variables come from :func:`merge_sibling_convs` (needs ``folded``): the 1x1
      convolutions that read a block's input side by side are one convolution.
    pool_merged: the variables come from ``merge_sibling_convs(..., pool_branches=True)``
      (needs ``merged``): in the average-pool blocks (`AVERAGE_POOL_BLOCKS`) the pool branch's
      1x1 convolution joins the merged one and runs before the pool (the same function: see
      `_sibling_1x1`).
    input_channels: the first convolution's input channels; more than 3 appends zero channels
      to the RGB input (variables from :func:`pad_input_channels`), which changes nothing but
      the shapes cuDNN sees.
  """
  precision: str = 'default'
  folded: bool = False
  merged: bool = False
  pool_merged: bool = False
  input_channels: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """Runs the network.

    Args:
      x: [N, H, W, 3] float32 images already preprocessed to the network's input range
        (H = W = 299 for the reference protocol; any size >= 75 runs).

    Returns:
      {'pool': [N, 2048], 'logits': [N, 1008] without the fc bias (what the Inception Score
      uses), 'logits_with_bias': [N, 1008]}.
    """
    p, f = self.precision, self.folded
    block = dict(precision=p, folded=f, merged=self.merged)
    avg_block = dict(block, pool_merged=self.pool_merged)  # The blocks with an average pool.
    if x.shape[-1] < self.input_channels:
      x = jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, self.input_channels - x.shape[-1]),))
    x = ConvBN(32, (3, 3), strides=(2, 2), precision=p, folded=f, name='Conv2d_1a_3x3')(x)
    x = ConvBN(32, (3, 3), precision=p, folded=f, name='Conv2d_2a_3x3')(x)
    x = ConvBN(64, (3, 3), padding=((1, 1), (1, 1)), precision=p, folded=f,
               name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = ConvBN(80, (1, 1), precision=p, folded=f, name='Conv2d_3b_1x1')(x)
    x = ConvBN(192, (3, 3), precision=p, folded=f, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, **avg_block, name='Mixed_5b')(x)
    x = InceptionA(64, **avg_block, name='Mixed_5c')(x)
    x = InceptionA(64, **avg_block, name='Mixed_5d')(x)
    x = InceptionB(precision=p, folded=f, name='Mixed_6a')(x)
    x = InceptionC(128, **avg_block, name='Mixed_6b')(x)
    x = InceptionC(160, **avg_block, name='Mixed_6c')(x)
    x = InceptionC(160, **avg_block, name='Mixed_6d')(x)
    x = InceptionC(192, **avg_block, name='Mixed_6e')(x)
    x = InceptionD(**block, name='Mixed_7a')(x)
    x = InceptionE('avg', **avg_block, name='Mixed_7b')(x)
    x = InceptionE('max', **block, name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits, logits_with_bias = Classifier(precision=p, name='fc')(pool)
    return {'pool': pool, 'logits': logits, 'logits_with_bias': logits_with_bias}


def fold_batch_norm(variables: dict) -> dict:
  """Folds every inference BatchNorm into the convolution before it.

  BatchNorm with running statistics is a per-channel affine map, ``y = s * conv(x, k) + t`` with
  ``s = scale / sqrt(var + eps)`` and ``t = bias - mean * s``, so it equals one convolution with
  kernel ``k * s`` and bias ``t``. The folded network (``FIDInceptionV3(folded=True)``) computes
  the same features without reading and writing every activation once more, and lets XLA hand
  convolution + bias + ReLU to cuDNN as one fused call. Folding is done once, in float64.

  Args:
    variables: {'params', 'batch_stats'} of `FIDInceptionV3` (see `weights`).

  Returns:
    {'params'} for ``FIDInceptionV3(folded=True)``: every ConvBN's 'conv' gets a 'bias' and
    its 'bn' is gone; the classifier is unchanged. Float32 numpy arrays.
  """
  if 'batch_stats' not in variables:
    raise ValueError('fold_batch_norm needs {"params", "batch_stats"}: these variables look '
                     'folded already (no batch_stats).')

  def fold(params: dict, stats: dict) -> dict:
    if 'bn' not in params:  # A block: recurse into its children (the classifier has no 'bn').
      return {name: fold(child, stats.get(name, {})) if isinstance(child, Mapping) else
              np.asarray(child) for name, child in params.items()}
    bn, moments = params['bn'], stats['bn']
    scale = np.asarray(bn['scale'], np.float64) / np.sqrt(
        np.asarray(moments['var'], np.float64) + BN_EPSILON)
    kernel = np.asarray(params['conv']['kernel'], np.float64) * scale  # HWIO: scales each O.
    bias = np.asarray(bn['bias'], np.float64) - np.asarray(moments['mean'], np.float64) * scale
    return {'conv': {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}}

  return {'params': fold(variables['params'], variables['batch_stats'])}


def merge_sibling_convs(params: Mapping[str, Any], pool_branches: bool = False) -> dict:
  """Stacks the side-by-side 1x1 convolutions of every block into one (see
  ``FIDInceptionV3(merged=True)``).

  A 1x1 convolution is a matrix product over channels, so convolutions that read the same input
  equal one convolution whose kernel and bias are theirs concatenated along the output channels;
  the network splits its output again. Nothing is recomputed or rounded: the values are copied.

  Args:
    params: folded parameters (``fold_batch_norm(...)['params']``) of the whole network or of
      any subtree (a block).
    pool_branches: also stack the pool branch's 1x1 convolution (last) in the blocks named in
      `AVERAGE_POOL_BLOCKS`, for ``FIDInceptionV3(merged=True, pool_merged=True)``; blocks are
      recognised by name, so pass the whole network (or ``{block_name: block_params}``).

  Returns:
    The same tree with each group of ``SIBLING_1X1_GROUPS`` found in a block replaced by one
    ``merged_1x1`` convolution; other entries unchanged.
  """
  def merge(tree: Mapping[str, Any], name: str = '') -> dict:
    out = {child_name: merge(child, child_name)
           if isinstance(child, Mapping) and 'conv' not in child else child
           for child_name, child in tree.items()}
    for group in SIBLING_1X1_GROUPS:
      if all(branch in out for branch in group):
        if pool_branches and name in AVERAGE_POOL_BLOCKS:
          group += (POOL_BRANCH,)
        convs = [out.pop(branch)['conv'] for branch in group]
        if any('bias' not in conv for conv in convs):
          raise ValueError('merge_sibling_convs needs folded parameters (fold_batch_norm first).')
        out[MERGED_1X1] = {'conv': {
            'kernel': np.concatenate([np.asarray(c['kernel']) for c in convs], axis=-1),
            'bias': np.concatenate([np.asarray(c['bias']) for c in convs])}}
        break  # A block holds at most one group.
    return out

  return merge(params)


def pad_input_channels(params: Mapping[str, Any], channels: int) -> dict:
  """Zero input rows for the first convolution's kernel, for ``FIDInceptionV3(input_channels=)``.

  The zero channels the network appends to its input meet zero kernel rows, so every output is
  unchanged; only the shapes differ (a channel count of 4 or 8 may suit cuDNN's kernels better
  than RGB's 3).
  """
  first = params['Conv2d_1a_3x3']['conv']
  kernel = np.asarray(first['kernel'])
  if channels < kernel.shape[2]:
    raise ValueError(f'input_channels must be at least {kernel.shape[2]}, got {channels}.')
  padded = np.pad(kernel, ((0, 0), (0, 0), (0, channels - kernel.shape[2]), (0, 0)))
  return {**params, 'Conv2d_1a_3x3': {**params['Conv2d_1a_3x3'],
                                      'conv': {**first, 'kernel': padded}}}


MAX_INPUT_CHANNELS = 64


def inference_variables(variables: dict, merge_siblings: bool = False,
                        input_channels: int = 3, merge_pool_branches: bool = False) -> dict:
  """{'params', 'batch_stats'} -> the {'params'} the extractor runs: BatchNorm folded, then
  optionally the sibling 1x1 convolutions merged (with the pool branches' too, if
  ``merge_pool_branches``) and the input padded (same features).

  ``extractor.network_for`` recognises the form from the result's structure.
  """
  if merge_pool_branches and not merge_siblings:
    raise ValueError('merge_pool_branches needs merge_siblings.')
  params = fold_batch_norm(variables)['params']
  if merge_siblings:
    params = merge_sibling_convs(params, pool_branches=merge_pool_branches)
  return {'params': pad_input_channels(params, input_channels)}


@functools.cache
def variable_shapes() -> dict:
  """Shapes of every variable `init` creates, without computing anything.

  Returns:
    A pytree {'params': ..., 'batch_stats': ...} of `jax.ShapeDtypeStruct`.
  """
  model = FIDInceptionV3()
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), dummy)
