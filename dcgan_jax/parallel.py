"""Data parallelism for the GAN step: ``jit(shard_map(...))`` over a 1-D mesh, or ``pmap``.

The per-device step (see :func:`dcgan_jax.train_step.make_train_step`) averages gradients,
metrics and BatchNorm statistics over a named axis. This module maps it over devices:

* ``'shard_map'`` (default): the state is replicated (``P()``) and the global batch is split
  along the mesh axis (``P('batch')``); one jitted program spans every device of every process.
* ``'pmap'``: the classic form, kept because many users and papers still use it; the state
  carries a leading device axis.

Multi-host: when devices span processes (``jax.distributed.initialize``), each process holds
its own shard of the global batch and :meth:`DataParallelStep.place_batch` assembles the global
array from the process-local rows.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dcgan_jax import models
from dcgan_jax.errors import UserError, warn_user
from dcgan_jax.state import GANState
from dcgan_jax.train_step import Metrics, StepConfig, make_train_step

AXIS_NAME = 'batch'
PARALLELISM_MODES = ('shard_map', 'pmap')

# The step's XLA options on CUDA GPUs ('auto'). XLA records runs of kernels into CUDA graphs
# (command buffers), but by default not cuDNN convolution thunks, so a DCGAN step, mostly
# convolutions, ran as ~19 graph pieces with launch gaps between them. Recording the
# convolutions too made the paper-sized step at batch 128 21% faster in bfloat16 (2.51 ->
# 1.99 ms) and 1.4% in float32 on an H200 (experiments/PERF.md, version 11). The list is
# XLA's default set plus CONVOLUTION, spelled out as measured.
CUDA_COMPILER_OPTIONS = {
    'xla_gpu_enable_command_buffer': 'FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONVOLUTION'}


@functools.lru_cache(maxsize=None)
def _options_compile(items: tuple[tuple[str, Any], ...]) -> str | None:
  """None if this jaxlib compiles a tiny program with the options, else the error's text."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(np.float32(0)).compile()
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError and its renames.
    return str(e).splitlines()[0] if str(e) else type(e).__name__
  return None


def default_compiler_options(devices: Sequence[jax.Device]) -> dict[str, Any]:
  """The XLA options the step compiles with by default (``compiler_options='auto'``).

  :data:`CUDA_COMPILER_OPTIONS` on NVIDIA GPUs, none elsewhere. An older jaxlib that does not
  know an option (the CONVOLUTION command type is recent) gets none, with a warning, instead
  of a step that fails to compile.
  """
  device = devices[0]
  # jax names both CUDA and ROCm backends 'gpu'; only ROCm says so in its version string.
  if device.platform != 'gpu' or 'rocm' in device.client.platform_version.lower():
    return {}
  error = _options_compile(tuple(sorted(CUDA_COMPILER_OPTIONS.items())))
  if error is not None:
    logging.warning('This jaxlib rejects the step\'s default GPU compiler options %s (%s); '
                    'compiling without them (slower).', CUDA_COMPILER_OPTIONS, error)
    return {}
  return dict(CUDA_COMPILER_OPTIONS)


# ``jax.random.fold_in`` called eagerly goes through JAX's per-primitive Python dispatch, about
# 0.1 ms per call on a fast host (1 ms on a slow one): as much as launching the whole jitted
# step. Jitted, it takes the C++ fast path; the loops call it once per step.
fold_in = jax.jit(jax.random.fold_in)


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = AXIS_NAME) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: all devices of all processes).

  ``jax.make_mesh`` defaults to Explicit axis types since jax 0.9; the step relies on
  shard_map's manual collectives, so the axis is declared Auto.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (axis_name,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def check_batch_size(global_batch: int, num_devices: int, process_count: int = 1) -> None:
  """Raises a UserError unless the global batch splits evenly over devices and processes."""
  # Built only for an error: place_batch checks every step's batch.
  valid = lambda: ', '.join(str(num_devices * m) for m in (1, 2, 4, 8, 16))
  if global_batch <= 0:
    raise UserError(f'batch_size must be positive (got {global_batch}); use a multiple of the '
                    f'{num_devices} devices such as {valid()}.')
  if global_batch % num_devices:
    raise UserError(f'batch_size {global_batch} is not divisible by the {num_devices} devices; '
                    f'use a multiple of {num_devices} such as {valid()}.')
  if global_batch % process_count:
    raise UserError(f'batch_size {global_batch} is not divisible by the {process_count} '
                    'processes.')


# Below this many values a batch of bright images could hold no pixel under mid-grey.
_MIN_PIXELS_FOR_RANGE_WARNING = 4096


# Typed key dtypes seen as one key (key<fry>, key<rbg>, ...): checked once each.
_TYPED_KEY_DTYPES: set[Any] = set()


def _check_key(rng: Any) -> None:
  """The step's key must be one key: a typed key of shape (), or a raw uint32 key [2]. A split
  key array or an int seed failed inside jax ("fold_in accepts a single key", "invalid PRNG key
  data")."""
  shape, dtype = getattr(rng, 'shape', None), getattr(rng, 'dtype', None)
  if shape == () and dtype in _TYPED_KEY_DTYPES:  # The usual case, in a fraction of a us.
    return
  if shape is None or dtype is None:
    raise UserError(f'The step takes one PRNG key, such as jax.random.key(seed) (got '
                    f'{type(rng).__name__} {rng!r:.40}).')
  key_shape = tuple(shape)
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if not key_shape:
      _TYPED_KEY_DTYPES.add(dtype)
  else:
    if dtype != np.uint32 or not key_shape:
      raise UserError(f'The step takes one PRNG key, such as jax.random.key(seed) (got an '
                      f'array of {dtype} of shape {key_shape}).')
    key_shape = key_shape[:-1]  # A raw uint32 key's data axis.
  if key_shape:
    raise UserError(f'The step takes one PRNG key (got keys of shape {key_shape}); it derives '
                    "each device's key itself.")


class DataParallelStep:
  """A jitted, donated, data-parallel GAN step plus the helpers to place its inputs.

  Example::

    step = DataParallelStep(generator, discriminator, StepConfig(), parallelism='shard_map')
    state = step.place_state(create_gan_state(key, generator, discriminator))
    state, metrics = step(state, step.place_batch(local_uint8_batch), rng)
    host_state = step.host_state(state)

  Attributes:
    mesh: The 1-D mesh (shard_map) the step runs on.
    num_devices: Devices the global batch is split over.
    compiler_options: XLA options the step (and a FusedSteps built on it) compiles with:
      with ``'auto'`` (the default), :func:`default_compiler_options` for the mesh's devices;
      None under pmap, which takes no compiler options.
    mapped: With shard_map, the un-jitted ``(state, batch, rng) -> (state, metrics)`` over the
      whole mesh, to trace inside a larger program (:mod:`dcgan_jax.step_loop`); None with pmap.
  """

  def __init__(self, generator, discriminator, step_config: StepConfig = StepConfig(), *,
               parallelism: str = 'shard_map', devices: Sequence[jax.Device] | None = None,
               axis_name: str = AXIS_NAME, donate: bool = True,
               compiler_options: Mapping[str, Any] | str | None = 'auto'):
    if parallelism not in PARALLELISM_MODES:
      raise UserError(f'parallelism must be shard_map or pmap (got {parallelism!r}).')
    if isinstance(compiler_options, str) and compiler_options != 'auto':
      raise UserError(f"compiler_options must be 'auto', a dict of XLA options or None "
                      f'(got {compiler_options!r}).')
    # XLA options for this program only (e.g. {'xla_gpu_graph_min_graph_size': 1}), unlike
    # XLA_FLAGS which set them for the whole process; jax.pmap takes none.
    if compiler_options != 'auto' and compiler_options and parallelism != 'shard_map':
      raise UserError("compiler_options need parallelism='shard_map' (jax.pmap takes none).")
    self.parallelism = parallelism
    self.axis_name = axis_name
    self.mesh = make_mesh(devices, axis_name)
    self.devices = list(self.mesh.devices.flat)
    if compiler_options == 'auto':
      compiler_options = (default_compiler_options(self.devices)
                          if parallelism == 'shard_map' else None)
    self.compiler_options = dict(compiler_options or {})
    self.num_devices = len(self.devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    per_device = make_train_step(generator, discriminator, step_config, axis_name=axis_name)
    # For place_batch's checks of host batches.
    self._num_classes = int(getattr(generator, 'num_classes', 0) or 0)
    self._output_activation = getattr(generator, 'output_activation', 'tanh')
    self._warned_about_range = False
    # Built once: the argument checks compare against them before every step.
    self._replicated = NamedSharding(self.mesh, P())
    self._device_set = frozenset(self.devices)
    self._batch_sharding = NamedSharding(self.mesh, P(axis_name))
    donate_argnums = (0,) if donate else ()
    if parallelism == 'shard_map':
      # check_vma=False keeps pmap's semantics: each device differentiates its own loss and the
      # step averages gradients itself, so one body serves both modes.
      mapped = jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(axis_name), P()),
                             out_specs=(P(), P()), check_vma=False)
      self._step = jax.jit(mapped, donate_argnums=donate_argnums,
                           compiler_options=self.compiler_options or None)
      # The un-jitted global step, for programs that run several steps (dcgan_jax.step_loop).
      self.mapped = mapped
    else:
      self.mapped = None
      if jax.process_count() > 1 and len(self.local_devices) != self.num_devices // jax.process_count():
        raise UserError('pmap needs the same number of devices in every process.')
      self._step = jax.pmap(per_device, axis_name=axis_name, in_axes=(0, 0, None),
                            donate_argnums=donate_argnums, devices=self.devices)

  @property
  def replicated_sharding(self) -> NamedSharding:
    return self._replicated

  @property
  def batch_sharding(self) -> NamedSharding:
    return self._batch_sharding

  def place_state(self, state: GANState) -> GANState:
    """Puts a host (or single-device) state where the step expects it."""
    if self.parallelism == 'shard_map':
      return _put_global(state, self.replicated_sharding)
    local = self.local_devices
    return jax.tree.map(lambda x: _replicate_to(x, local), state)

  def place_batch(self, local_batch: Any) -> Any:
    """Turns this process's rows of the global batch into the step's batch argument.

    Args:
      local_batch: images ``[global_batch / process_count, H, W, C]`` (with one process, the
        whole global batch), or for class-conditional models the pair ``(images, labels)``
        with labels ``[global_batch / process_count]``. With shard_map, arrays already laid
        out for the step pass through unchanged; with pmap, rows are always split into a new
        leading device axis, so place each batch once.

    Raises:
      UserError: images and labels of different lengths, or labels not of shape
        ``[batch]``; and for numpy batches (checked on the host, where it costs little;
        device arrays are not read back), float images far outside the generator's range
        (such as floats in 0..255), or labels that are not integers in ``[0, num_classes)``,
        which would otherwise train on silently (wrong scale) or turn every parameter into
        NaN (an embedding lookup out of range).
    """
    if isinstance(local_batch, (tuple, list)):
      if len(local_batch) != 2:
        raise UserError(f'A batch is images or (images, labels); got a sequence of '
                        f'{len(local_batch)} (stack a list of images into one array first).')
      # Plain lists (labels written out as [0, 1, ...]) are arrays to everything below.
      local_batch = [x if isinstance(x, (np.ndarray, jax.Array)) else np.asarray(x)
                     for x in local_batch]
      rows = {int(np.shape(x)[0]) if np.ndim(x) else 0 for x in local_batch}
      if len(rows) != 1:
        raise UserError('The images and labels of a batch must have the same number of rows '
                        f'(got {[np.shape(x) for x in local_batch]}).')
      if np.ndim(local_batch[1]) != 1:
        raise UserError('Labels must be one class index per image, shape [batch] (got '
                        f'{np.shape(local_batch[1])} for images {np.shape(local_batch[0])}).')
      self._check_image_rank(local_batch[0])
      self._check_host_images(local_batch[0])
      self._check_host_labels(local_batch[1])
      return tuple(self._place_rows(x) for x in local_batch)
    if np.ndim(local_batch) != 1:  # (Labels placed on their own pass as they are.)
      self._check_image_rank(local_batch)
    self._check_host_images(local_batch)
    return self._place_rows(local_batch)

  def _check_image_rank(self, images: Any) -> None:
    """Images are [rows, H, W, C] here: with pmap, rows of any other rank were split into a
    device axis all the same, and the step then blamed a missing place_batch."""
    rank = np.ndim(images)
    if rank == 4:
      return
    if rank == 5 and self.parallelism == 'pmap':
      hint = ('; this batch already has the leading device axis (place each batch once, '
              'before the step)')
    elif rank == 3:
      hint = '; for grey images add the channel axis, images[..., None]'
    else:
      hint = ''
    raise UserError(f'place_batch takes images of shape [batch, height, width, channels] (got '
                    f'{np.shape(images)}){hint}.')

  def _check_host_images(self, images: Any) -> None:
    if not isinstance(images, np.ndarray) or not np.issubdtype(images.dtype, np.floating):
      return  # uint8 is scaled by the step; other types are refused there.
    if not images.size:
      return
    low, high = models.output_range(self._output_activation)
    # Generous bounds: resampled or augmented images may overshoot a little; 0..255 may not.
    margin = 0.5 * (high - low)
    smallest, largest = float(np.min(images)), float(np.max(images))
    if not (np.isfinite(smallest) and np.isfinite(largest)):
      raise UserError('Training images contain NaN or infinite values.')
    if smallest < low - margin or largest > high + margin:
      raise UserError(
          f'Training images are {images.dtype} in [{smallest:g}, {largest:g}], outside the '
          f"generator's range [{low:g}, {high:g}] ({self._output_activation}): pass uint8 "
          f'images (0..255; the step scales them) or floats already in [{low:g}, {high:g}].')
    if low < 0 and smallest >= 0 and images.size >= _MIN_PIXELS_FOR_RANGE_WARNING:
      # Inside the range, so not refused; but no real batch in [-1, 1] lacks every pixel below
      # mid-grey: this is nearly always x / 255 without the `* 2 - 1`.
      if not self._warned_about_range:
        self._warned_about_range = True
        warn_user(
            f'Training images are {images.dtype} in [{smallest:g}, {largest:g}] but the '
            f'generator makes [{low:g}, {high:g}] ({self._output_activation}): D would see '
            'real images in the upper half of that range only. Scale [0, 1] images with '
            'x * 2 - 1, or pass uint8 images (0..255; the step scales them).')

  def _check_host_labels(self, labels: Any) -> None:
    if not isinstance(labels, np.ndarray) or not self._num_classes:
      return
    if not np.issubdtype(labels.dtype, np.integer):
      raise UserError(f'Labels must be integer class indices in [0, {self._num_classes}), '
                      f'got {labels.dtype}.')
    if labels.size and (labels.min() < 0 or labels.max() >= self._num_classes):
      raise UserError(f'Labels must be class indices in [0, {self._num_classes}) '
                      f'(num_classes={self._num_classes}); got values in [{labels.min()}, '
                      f'{labels.max()}].')

  def _place_rows(self, local_rows: np.ndarray | jax.Array) -> jax.Array:
    if self.parallelism == 'shard_map':
      if isinstance(local_rows, jax.Array) and local_rows.sharding == self.batch_sharding:
        return local_rows
      global_rows = local_rows.shape[0] * jax.process_count()
      check_batch_size(global_rows, self.num_devices, jax.process_count())
      if jax.process_count() == 1:
        return jax.device_put(local_rows, self.batch_sharding)
      return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local_rows))
    n = len(self.local_devices)
    check_batch_size(local_rows.shape[0] * jax.process_count(), self.num_devices,
                     jax.process_count())
    rows = np.asarray(local_rows).reshape((n, -1) + tuple(local_rows.shape[1:]))
    return jax.device_put(rows, _leading_axis_sharding(self.local_devices))

  def __call__(self, state: GANState, batch: Any, rng: jax.Array) -> tuple[GANState, Metrics]:
    self._check_arguments(state, batch, rng)
    return self._step(state, batch, rng)

  def _check_arguments(self, state: GANState, batch: Any, rng: jax.Array) -> None:
    """Mistakes that jax reports badly, checked on shapes only (a few microseconds, no device
    work: this runs before every step).

    A donated state given again crashed the process (a segmentation fault inside XLA with
    several devices, jax 0.10); with pmap an unplaced state or batch, or one key per device,
    failed deep inside jax with an IndexError or a squeeze error. Donation deletes every array
    of the state, so its step counter tells (all leaves would cost ~80 us for DCGAN's state).
    """
    counter = getattr(state, 'step', None)
    if isinstance(counter, jax.Array) and counter.is_deleted():
      raise UserError('This state was donated to an earlier step call, which consumed it: pass '
                      'the state that call returned (state, metrics = step(state, batch, rng)).')
    _check_key(rng)
    if self.parallelism != 'pmap':
      self._check_key_devices(rng)
      self._check_shard_map_arguments(counter, batch)
      return
    devices = len(self.local_devices)
    if np.ndim(state.step) != 1 or np.shape(state.step)[0] != devices:
      raise UserError(f'With pmap the state needs a leading axis of {devices} devices (got a '
                      f'step counter of shape {np.shape(state.step)}): pass it through '
                      'step.place_state(state) first.')
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if np.ndim(images) != 5 or np.shape(images)[0] != devices:
      raise UserError(f'With pmap the batch needs a leading axis of {devices} devices, '
                      '[devices, per_device_batch, height, width, channels] (got images of '
                      f'shape {np.shape(images)}): pass it through step.place_batch(images) '
                      'first.')

  def _check_shard_map_arguments(self, counter: Any, batch: Any) -> None:
    """A state not laid out on the mesh would be moved there and the caller's arrays donated
    (deleted) without a word; a batch whose rows do not split over the devices fails inside
    shard_map with a long message."""
    if (isinstance(counter, jax.Array) and counter.sharding != self.replicated_sharding
        and not counter.sharding.is_equivalent_to(self.replicated_sharding, counter.ndim)):
      if counter.ndim == 1:  # pmap's layout: one replica per device along a leading axis.
        raise UserError(f'The state has a leading axis of {counter.shape[0]} devices, as a pmap '
                        "step's place_state lays it out; this step uses shard_map: take one "
                        'replica (pmap_step.host_state(state)) and pass it through '
                        'step.place_state first.')
      raise UserError(f'The state is not laid out for this step (it sits on '
                      f'{_describe_devices(counter.sharding.device_set)}, the step runs on '
                      f'{self.num_devices} device(s) with a replicated state): pass it through '
                      'step.place_state(state) first. (The step donates its state: the arrays '
                      'passed in would be deleted.)')
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    shape = getattr(images, 'shape', ())  # (np.shape costs microseconds on a jax array.)
    if shape and (not shape[0] or shape[0] % self.num_devices):
      check_batch_size(shape[0], self.num_devices)
    # jax's own error for an array committed elsewhere names the state's first leaf and lists
    # device ids; place_batch puts a batch where the step wants it.
    if (isinstance(images, jax.Array) and images.sharding != self._batch_sharding
        and images.committed and images.devices() != self._device_set):
      raise UserError(f'The batch sits on {_describe_devices(images.devices())}, but this step '
                      f'runs on {_describe_devices(self._device_set)}: pass it through '
                      'step.place_batch(images), or pass the numpy array itself.')

  def _check_key_devices(self, rng: Any) -> None:
    """A key committed to one device (device_put, or out of a jit on committed arguments)."""
    # (devices(), not sharding.device_set: ~0.4 us against ~20 us for a typed key's sharding.)
    if isinstance(rng, jax.Array) and rng.committed and rng.devices() != self._device_set:
      raise UserError(f'The key sits on {_describe_devices(rng.devices())}, but this step runs '
                      f'on {_describe_devices(self._device_set)}: pass an uncommitted key '
                      '(jax.random.key(seed), or one split from such a key) or '
                      'jax.device_put(key, step.replicated_sharding).')

  def compiled_text(self, state: GANState, batch: jax.Array, rng: jax.Array) -> str:
    """The optimized HLO of the step for these arguments (nothing is donated or run; after a
    call with the same shapes, jax's cache answers without compiling again)."""
    return self._step.lower(state, batch, rng).compile().as_text()

  def host_state(self, state: GANState) -> GANState:
    """One copy of the state as numpy arrays (drops pmap's device axis)."""
    if self.parallelism == 'pmap':
      state = jax.tree.map(local_replica, state)
    # Start every transfer before waiting for the first (as jax.device_get does): one wait for
    # the whole state rather than one round trip per array.
    for x in jax.tree.leaves(state):
      if (isinstance(x, jax.Array) and x.is_fully_addressable
          and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)):
        x.copy_to_host_async()
    return jax.tree.map(_to_host, state)

  def host_metrics(self, metrics: Metrics) -> dict[str, float]:
    if self.parallelism == 'pmap':
      metrics = jax.tree.map(local_replica, metrics)
    return {k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}


def _describe_devices(devices: Any) -> str:
  names = sorted(str(d) for d in devices)
  return ', '.join(names) if len(names) <= 2 else f'{len(names)} devices'


def local_replica(x: jax.Array) -> jax.Array:
  """The first local device's row of a replicated array in pmap's layout ([devices, ...]).

  Read from this process's own device, never through ``x[0]``: on a global array of a
  multi-process run that indexing is a computation every process must enter in the same order,
  and the processes reach their host copies (checkpoint, end of run) at different moments,
  which hung runs.
  """
  shard = x.addressable_data(0)
  # pmap's arrays keep a device axis of 1 in their shards (NamedSharding); older PmapSharding
  # dropped it.
  return shard[0] if shard.ndim == x.ndim else shard


def _to_host(x: Any) -> Any:
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return x  # Typed keys stay jax arrays; their data is tiny.
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_fully_replicated:
      x = x.addressable_data(0)  # Every process holds the whole value.
    else:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def _put_global(tree: Any, sharding: NamedSharding) -> Any:
  """device_put that also works when the sharding spans several processes."""
  if jax.process_count() == 1:
    # may_alias=False: the step donates its state, which must not delete the caller's arrays.
    # (device_put may still alias the shard on the source device, so copy explicitly.)
    return jax.device_put(jax.tree.map(jnp.copy, tree), sharding, may_alias=False)

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree replicated over ``mesh`` (also across processes), as copies."""
  return _put_global(tree, NamedSharding(mesh, P()))


def _leading_axis_sharding(devices: Sequence[jax.Device]) -> NamedSharding:
  """Splits an array's leading axis over ``devices``: the layout pmap takes and returns."""
  mesh = jax.make_mesh((len(devices),), ('pmap_devices',),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=list(devices))
  return NamedSharding(mesh, P('pmap_devices'))


def _replicate_to(x: Any, devices: Sequence[jax.Device]) -> jax.Array:
  """Stacks one copy of ``x`` per device along a new leading axis (pmap's replicated layout)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    stacked = jnp.stack([x] * len(devices))
  else:
    stacked = np.stack([np.asarray(jax.device_get(x))] * len(devices))
  return jax.device_put(stacked, _leading_axis_sharding(devices))
