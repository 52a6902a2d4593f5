"""The jitted, data-parallel Inception feature extractor."""
import functools
import hashlib
import os
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from dcgan_jax.errors import UserError, is_integer
from dcgan_jax.evaluation import inception
from dcgan_jax.evaluation import preprocessing as preprocessing_lib
from dcgan_jax.evaluation import weights

_BATCH_AXIS = 'batch'


def precision_warning(precision: str, platforms: set[str]) -> str | None:
  """The warning for a precision too coarse for pytorch-fid parity on these platforms, or None.

  'default' on a GPU is TF32, as PyTorch's cuDNN convolutions (pytorch-fid's) run by default;
  on a TPU it is one bfloat16 pass, far coarser.
  """
  if precision == 'default' and 'tpu' in platforms:
    return ("precision 'default' runs Inception's convolutions in bfloat16 on TPUs; pass "
            "precision 'highest' (--precision=highest) for features and FIDs comparable with "
            'pytorch-fid.')
  return None


def arithmetic(precision: str, platforms: set[str] | str) -> str:
  """What Inception's float32 convolutions and matmuls compute in, for a record of statistics.

  'float32' wherever they are exact float32 (any precision on CPUs; 'highest' anywhere);
  otherwise the precision and platform, e.g. 'precision default on gpu' (TF32 there). Two
  records that differ mean features that differ beyond float32 rounding.
  """
  platforms = {platforms} if isinstance(platforms, str) else set(platforms)
  if precision == 'highest' or platforms <= {'cpu'}:
    return 'float32'
  return f'precision {precision} on {"+".join(sorted(platforms))}'


def network_for(variables: dict[str, Any], precision: str) -> inception.FIDInceptionV3:
  """The `FIDInceptionV3` that ``variables`` fit: their structure says which form they have
  (folded: no batch_stats; merged: ``merged_1x1`` convolutions, with the pool branches' when
  an average-pool block has no ``branch_pool`` of its own; padded input channels)."""
  params = variables['params']
  merged = inception.MERGED_1X1 in params['Mixed_5b']
  return inception.FIDInceptionV3(
      precision=precision, folded='batch_stats' not in variables, merged=merged,
      pool_merged=merged and inception.POOL_BRANCH not in params['Mixed_5b'],
      input_channels=params['Conv2d_1a_3x3']['conv']['kernel'].shape[2])


def _apply(variables: dict[str, Any], images: jax.Array, precision: str) -> dict[str, jax.Array]:
  return network_for(variables, precision).apply(variables, images)


# Module-level so that every extractor with the same precision and batch shape shares one
# compiled program (compiling Inception takes tens of seconds on CPU).
_forward = jax.jit(_apply, static_argnames=('precision',))


def weights_fingerprint(variables: Mapping[str, Any]) -> str:
  """A short digest of the network's variables (names, shapes, dtypes and values).

  Cached reference statistics record it, so that statistics made with other weights are never
  reused; hashing ~95 MB of Inception weights takes about a tenth of a second.
  """
  digest = hashlib.blake2b(digest_size=8)
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)} {leaf.dtype} {leaf.shape};'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


@functools.cache
def _forward_compiled_with(options: tuple[tuple[str, Any], ...]):
  """`_forward` compiled with XLA ``options`` (one jitted function per set of options)."""
  return jax.jit(_apply, static_argnames=('precision',), compiler_options=dict(options))


def options_key(compiler_options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
  """A hashable, order-free key for a set of XLA options (``()`` for none)."""
  return tuple(sorted((compiler_options or {}).items()))


def network_program(key: tuple[tuple[str, Any], ...] = ()):
  """The jitted ``(variables, images, precision=) -> outputs`` for the options ``key``
  (see `options_key`): `_forward` without options, shared by every extractor."""
  return _forward_compiled_with(key) if key else _forward


class InceptionExtractor:
  """Maps uint8 images to Inception pool_3 features and logits, batched over local devices.

  Images are cut into batches of `batch_size` (rounded up to a multiple of the local device
  count), each batch is split across the devices of a 1-D mesh, preprocessed and run through the
  network in two jitted steps (so new input sizes recompile only the cheap preprocessing). The
  last partial batch is padded and the padding dropped from the result, so every image counts.

  In multi-process runs each process extracts the features of the images it holds on its own
  devices; `dcgan_jax.evaluation.allgather_statistics` combines their `FeatureStatistics`.

  Example:
    extractor = InceptionExtractor.from_file('pt_inception-2015-12-05-6726825d.pth')
    out = extractor(images)  # images: [N, H, W, 3] uint8.
    out['pool']    # [N, 2048] float32, for FID and KID.
    out['logits']  # [N, 1008] float32 without the fc bias, for the Inception Score.
  """

  def __init__(self, variables: dict[str, Any], preprocessing: str = 'pytorch_fid',
               precision: str = 'default', batch_size: int = 200,
               devices: Sequence[jax.Device] | None = None, merge_siblings: bool = True,
               input_channels: int = 3, compiler_options: Mapping[str, Any] | None = None,
               merge_pool_branches: bool = False):
    """Builds an extractor from already converted variables.

    Args:
      variables: {'params', 'batch_stats'} of `inception.FIDInceptionV3`
        (see `weights.load_inception_variables`).
      preprocessing: 'pytorch_fid' (default) or 'tf'; see `preprocessing`.
      precision: 'default' (fast: TF32 on GPUs that have it, as PyTorch's cuDNN convolutions
        use by default), 'high' or 'highest' (full float32, for parity with references).
      batch_size: images per step over all local devices.
      devices: devices to shard over; default all local devices.
      merge_siblings: run the side-by-side 1x1 convolutions of each block as one (see
        `inception.merge_sibling_convs`). Performance only: the features are the same (to
        float rounding). On by default: 11% more images/s at batch 50 on an H200
        (experiments/PERF.md, version 11).
      input_channels: pad the RGB input of the first convolution with zero channels to this
        many (see `inception.pad_input_channels`). Performance only.
      compiler_options: XLA options the network's program is compiled with (e.g. command
        buffer types on GPUs). Performance only.
      merge_pool_branches: with ``merge_siblings``, the average-pool branches' 1x1
        convolutions join the merged ones and run before their pool (see
        ``inception.FIDInceptionV3(pool_merged=True)``). Performance only; unmeasured on GPUs
        so far, so off by default.
    """
    self.preprocessing = preprocessing_lib.check_mode(preprocessing)
    if precision not in inception.PRECISIONS:
      raise UserError(f'Unknown precision {precision!r}; valid: '
                      f'{", ".join(inception.PRECISIONS)}.')
    if not is_integer(batch_size) or batch_size < 1:
      raise UserError(f'batch_size must be a positive integer, got {batch_size!r}.')
    if merge_pool_branches and not merge_siblings:
      raise UserError('merge_pool_branches=True needs merge_siblings=True (the pool branches '
                      'join the merged sibling convolutions).')
    if not 3 <= input_channels <= inception.MAX_INPUT_CHANNELS:
      raise UserError(f'input_channels must be in 3..{inception.MAX_INPUT_CHANNELS} (3 is RGB '
                      f'as is), got {input_channels}.')
    self.precision = precision
    devices = list(devices) if devices is not None else jax.local_devices()
    # Recorded with statistics files (fid --save_stats), which may be read on other machines.
    self.arithmetic = arithmetic(precision, {d.platform for d in devices})
    warning = precision_warning(precision, {d.platform for d in devices})
    if warning:
      logging.warning('%s', warning)
    # Of the weights as given (not of their folded, merged form: those options change no
    # feature beyond float rounding).
    self.weights_fingerprint = weights_fingerprint(variables)
    self.num_devices = len(devices)
    self.batch_size = -(-batch_size // self.num_devices) * self.num_devices
    mesh = jax.make_mesh((self.num_devices,), (_BATCH_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)
    # Public: evaluate generates its images on them, already split as the batches are.
    self.devices = list(mesh.devices.flat)
    self._data_sharding = NamedSharding(mesh, PartitionSpec(_BATCH_AXIS))
    # BatchNorm folded into the convolutions once, here: the same features with one pass less
    # over every activation (and conv + bias + ReLU as one cuDNN call on GPUs).
    self._variables = jax.device_put(
        inception.inference_variables(variables, merge_siblings, input_channels,
                                      merge_pool_branches),
        NamedSharding(mesh, PartitionSpec()))
    self.compiler_options = dict(compiler_options or {})
    self._options_key = options_key(self.compiler_options)

  @classmethod
  def from_file(cls, path: str | os.PathLike | None, preprocessing: str = 'pytorch_fid',
                precision: str = 'default', **kwargs) -> 'InceptionExtractor':
    """Loads `.pth`/`.npz` weights safely (see `weights`) and builds an extractor.

    Args:
      path: the weights file; empty or None means the cached download.
      preprocessing, precision, **kwargs: as for the constructor.

    Raises:
      UserError: weights missing (the message says how to get them), corrupt or wrong.
    """
    return cls(weights.load_inception_variables(path), preprocessing=preprocessing,
               precision=precision, **kwargs)

  @property
  def _network(self):
    # Looked up per call (not bound at construction), so tests can stand in a cheap network.
    return network_program(self._options_key)

  def _check(self, images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    # Device arrays stay where they are: copying generated images to the host and back is what
    # made FID-50k spend seconds outside the network.
    if not isinstance(images, jax.Array):
      images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
      raise UserError(f'Images must be channels-last, [N, H, W, 1 or 3]; got {images.shape}, '
                      'which looks channels-first (NCHW, as torch stores them): pass '
                      'images.transpose(0, 2, 3, 1).')
    if images.ndim == 4 and images.shape[-1] in (2, 4) and images.dtype == np.uint8:
      raise UserError(f'Images must be a uint8 [N, H, W, 1 or 3] array, got {images.shape}: '
                      'grey or RGB with an alpha channel; drop it (images[..., :-1]) or '
                      'composite it onto a background first.')
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
      raise UserError(f'Images must be a uint8 [N, H, W, 1 or 3] array, got {images.dtype} '
                      f'{images.shape}; convert float images with dcgan_jax.evaluation.to_uint8 '
                      '(or to_uint8_jax on the device).')
    return images

  def _padded_batches(self, images: np.ndarray | jax.Array):
    """Yields (device outputs of one padded batch, number of valid rows), dispatched async."""
    n = images.shape[0]
    # Small inputs get a smaller (device-count multiple) batch instead of mostly padding.
    batch_size = min(self.batch_size, -(-max(n, 1) // self.num_devices) * self.num_devices)
    on_device = isinstance(images, jax.Array)
    for start in range(0, n, batch_size):
      valid = min(batch_size, n - start)
      if on_device:
        chunk = images if (start == 0 and valid == n) else _slice_rows(images, start, valid)
        if valid < batch_size:
          chunk = _pad_rows(chunk, batch_size - valid)
      else:
        chunk = images[start:start + batch_size]
        if valid < batch_size:
          chunk = np.concatenate([chunk, np.zeros((batch_size - valid,) + chunk.shape[1:],
                                                  chunk.dtype)])
      x = jax.device_put(chunk, self._data_sharding)
      x = preprocessing_lib.preprocess(x, mode=self.preprocessing)
      yield self._network(self._variables, x, precision=self.precision), valid

  def device_batches(self, images: np.ndarray | jax.Array) -> Iterator[dict[str, jax.Array]]:
    """Extracts features batch by batch, leaving them on the devices.

    Nothing waits for the devices: every batch is only dispatched, so generation, the network
    and a `FeatureStatistics` fed with the results (which sums device arrays on the device)
    queue up back to back. Use this for FID; `__call__` copies everything to the host.

    Args:
      images: [N, H, W, C] uint8, C = 1 or 3, any H and W; a `jax.Array` (e.g. from
        `to_uint8_jax`) is batched on its devices without a host round trip.

    Yields:
      Per batch of at most `batch_size` images, in order: {'pool': [b, 2048], 'logits':
      [b, 1008] (no fc bias), 'logits_with_bias': [b, 1008]} float32 arrays sharded over this
      extractor's devices.
    """
    for out, valid in self._padded_batches(self._check(images)):
      if valid < out['pool'].shape[0]:
        out = _slice_outputs(out, valid)
      yield out

  def __call__(self, images: np.ndarray | jax.Array) -> dict[str, np.ndarray]:
    """Extracts features.

    Args:
      images: [N, H, W, C] uint8, C = 1 or 3, any H and W (resized to 299); numpy or a
        `jax.Array` (which is not copied to the host).

    Returns:
      {'pool': [N, 2048], 'logits': [N, 1008] (no fc bias), 'logits_with_bias': [N, 1008]},
      float32 numpy arrays in the order of `images`.
    """
    results = []
    pending = None
    for out, valid in self._padded_batches(self._check(images)):
      # Fetch the previous batch only after dispatching this one, so the devices stay busy
      # while the host copies results.
      if pending is not None:
        results.append(_fetch(*pending))
      pending = (out, valid)
    if pending is not None:
      results.append(_fetch(*pending))
    if not results:
      return {'pool': np.zeros((0, inception.POOL_FEATURES), np.float32),
              'logits': np.zeros((0, inception.NUM_CLASSES), np.float32),
              'logits_with_bias': np.zeros((0, inception.NUM_CLASSES), np.float32)}
    return {key: np.concatenate([r[key] for r in results]) for key in results[0]}


@functools.partial(jax.jit, static_argnames=('size',))
def _slice_rows(images: jax.Array, start: jax.Array, size: int) -> jax.Array:
  # A traced start: one program per batch size, not one per batch.
  return jax.lax.dynamic_slice_in_dim(images, start, size, axis=0)


@functools.partial(jax.jit, static_argnames=('count',))
def _pad_rows(images: jax.Array, count: int) -> jax.Array:
  return jnp.pad(images, [(0, count)] + [(0, 0)] * (images.ndim - 1))


@functools.partial(jax.jit, static_argnames=('valid',))
def _slice_outputs(out: dict[str, jax.Array], valid: int) -> dict[str, jax.Array]:
  return {key: value[:valid] for key, value in out.items()}


def _fetch(out: dict[str, jax.Array], valid: int) -> dict[str, np.ndarray]:
  # device_get starts every copy before waiting for any: one round trip per batch, not three.
  return {key: np.asarray(value)[:valid] for key, value in jax.device_get(out).items()}
