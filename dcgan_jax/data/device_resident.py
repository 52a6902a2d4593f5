"""Device-resident data: the whole prepared dataset on the accelerators, batches drawn there.

When the uint8 dataset fits (digits, MNIST, CIFAR-10, CelebA's train split at 64x64 ≈ 2.0 GB),
copying it to the devices once removes the host input pipeline from the training loop: each
step's batch is a gather on the device, computed from the step number alone.

Layout: the images are **replicated** on every device of the mesh (each holds the full dataset),
so any device can gather any example without communication; each batch comes out sharded along
its first axis over the mesh axis ``'batch'`` (``NamedSharding(mesh, P('batch'))``). The cost is
memory: every device holds ``num_bytes`` of images, which :func:`use_device_resident` checks.

Order: epoch ``e`` is a permutation of all examples drawn with
``jax.random.permutation(fold_in(key(seed) folded with a data tag, e), num_examples)``; step ``s``
reads the ``s % steps_per_epoch``-th slice of ``global_batch`` indices of epoch
``s // steps_per_epoch``, where ``steps_per_epoch = num_examples // global_batch``. Within an epoch
every example is used at most once; the ``num_examples % global_batch`` examples left at the end
of each epoch's permutation are dropped for that epoch (a different few each epoch). The batch
depends only on ``(seed, step)``: resuming at any step needs no state.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from dcgan_jax.errors import UserError

BATCH_AXIS = 'batch'
DEVICE_RESIDENT_MODES = ('auto', 'always', 'never')
# Keeps the data stream's randomness apart from model init / noise keys made from the same seed.
_DATA_KEY_TAG = 0x0DA7A


def check_device_resident_mode(config) -> str:
  """``config.device_resident`` ('auto' when unset), or a UserError naming the valid modes."""
  mode = str(config.get('device_resident', 'auto'))
  if mode not in DEVICE_RESIDENT_MODES:
    raise UserError(f'device_resident is {mode!r}; use one of {", ".join(DEVICE_RESIDENT_MODES)}.')
  return mode


def use_device_resident(config, num_bytes: int) -> bool:
  """Whether to keep the dataset on the devices.

  Args:
    config: reads ``device_resident`` ('auto', 'always' or 'never') and
      ``device_resident_max_bytes``.
    num_bytes: size of the prepared dataset in uint8 (``DatasetInfo.num_bytes``).

  Returns:
    'always' -> True; 'never' -> False; 'auto' -> True when ``num_bytes`` is at most
    ``device_resident_max_bytes`` and, where the device reports its memory, at most a quarter
    of it (the rest is left to the models and activations).

  Raises:
    UserError: an unknown mode.
  """
  return choose_device_resident(config, num_bytes)[0]


def choose_device_resident(config, num_bytes: int) -> tuple[bool, str]:
  """:func:`use_device_resident`'s answer and why, in words for the run's log.

  The reason names the setting that decided and, for ``'auto'``, the sizes it compared, so that
  a run which streams its data through tf.data says which number to raise.
  """
  mode = check_device_resident_mode(config)
  if mode != 'auto':
    return mode == 'always', f"device_resident='{mode}'"
  max_bytes = int(config.get('device_resident_max_bytes', 4 * 1024**3))
  size = f'the {format_bytes(num_bytes)} dataset'
  if num_bytes > max_bytes:
    return False, (f"device_resident='auto': {size} is larger than device_resident_max_bytes "
                   f'({format_bytes(max_bytes)}); raise it to keep the data on the devices')
  stats = _memory_stats(jax.local_devices()[0])
  limit = (stats or {}).get('bytes_limit')
  if limit is None:
    return True, (f"device_resident='auto': {size} is within device_resident_max_bytes "
                  f'({format_bytes(max_bytes)})')
  if num_bytes > limit // 4:
    return False, (f"device_resident='auto': {size} is more than a quarter of the device's "
                   f"{format_bytes(limit)}, which the models and activations need; "
                   "device_resident='always' keeps it there anyway")
  return True, (f"device_resident='auto': {size} is within device_resident_max_bytes "
                f"({format_bytes(max_bytes)}) and a quarter of the device's {format_bytes(limit)}")


def format_bytes(num_bytes: int) -> str:
  """'512 B', '12.3 MiB', '4 GiB': a size as a person reads it."""
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if num_bytes >= scale:
      value = num_bytes / scale
      # Three significant digits, in plain notation also from 1,000 on (.3g writes 1e+03).
      return f'{value:,.0f} {unit}' if value >= 100 else f'{value:.3g} {unit}'
  return f'{num_bytes} B'


def _memory_stats(device) -> dict | None:
  try:
    return device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None


def data_key(seed: int) -> jax.Array:
  """The typed PRNG key of the data order for a run seed."""
  return jax.random.fold_in(jax.random.key(seed), _DATA_KEY_TAG)


def batch_indices(key: jax.Array, step, num_examples: int, global_batch: int) -> jax.Array:
  """Dataset indices of one step's batch (traceable: ``step`` may be a traced scalar).

  Args:
    key: from :func:`data_key`.
    step: the step number (int or int32 scalar array).
    num_examples: dataset size (static).
    global_batch: batch size (static), at most ``num_examples``.

  Returns:
    ``int32 [global_batch]``, distinct within an epoch.
  """
  steps_per_epoch = num_examples // global_batch
  step = jnp.asarray(step, jnp.int32)
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  permutation = epoch_permutation(key, epoch, num_examples)
  return jax.lax.dynamic_slice_in_dim(permutation, position * global_batch, global_batch)


def default_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices with the axis ``'batch'``."""
  return jax.make_mesh((jax.device_count(),), (BATCH_AXIS,), axis_types=(AxisType.Auto,))


def _checked_labels(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
  """``labels`` as int32 after checking that they are classes (a float label was truncated to
  its class without a word, and one past the last class made the state NaN)."""
  raw = np.asarray(labels)
  if raw.dtype.kind not in 'iu':
    raise UserError(f'labels must be integer classes; got {raw.dtype} values (cast them with '
                    '.astype(np.int32) only if they are whole numbers).')
  if raw.size and (int(raw.min()) < 0
                   or (num_classes is not None and int(raw.max()) >= num_classes)):
    valid = f'in 0..{num_classes - 1}' if num_classes is not None else '>= 0'
    raise UserError(f'labels must be classes {valid}; got values from {int(raw.min())} to '
                    f'{int(raw.max())}.')
  return raw.astype(np.int32)


class DeviceResidentSampler:
  """Keeps uint8 images on the devices and draws each global batch there.

  Example::

    sampler = DeviceResidentSampler(load_all_images(config), config.batch_size, config.seed)
    for step in range(start, end):
      images = sampler.batch(step)  # uint8 [batch, H, W, C], sharded over 'batch'

  Attributes:
    images: the dataset, ``uint8 [num_examples, H, W, C]``, replicated over the mesh.
    labels: ``int32 [num_examples]`` classes, replicated likewise, or None.
    data: what a batch is drawn from: ``images``, or ``(images, labels)``.
    num_examples: dataset size.
    global_batch: batch size over all devices and processes.
    steps_per_epoch: ``num_examples // global_batch``.
    mesh: the mesh; batches are sharded along its ``'batch'`` axis.
    batch_sharding: ``NamedSharding(mesh, P('batch'))``.
  """

  def __init__(self, images_uint8: np.ndarray, global_batch: int, seed: int,
               mesh: jax.sharding.Mesh | None = None, labels: np.ndarray | None = None,
               num_classes: int | None = None):
    """Copies the images (and labels) to every device of the mesh.

    Args:
      images_uint8: ``uint8 [num_examples, H, W, C]``, the same on every process.
      global_batch: batch size over all devices (and processes).
      seed: the run seed; the data order is derived from it.
      mesh: a mesh with an axis named ``'batch'``; defaults to :func:`default_mesh`.
      labels: integer classes ``[num_examples]`` for class-conditional training; batches are
        then ``(images, labels)`` pairs.
      num_classes: the models' class count; with it, labels outside ``[0, num_classes)`` are
        refused here (on the devices nothing checks them, and such a label turns the train
        state into NaN).

    Raises:
      UserError: the batch does not divide over the devices or exceeds the dataset, or labels
        that are not integer classes (below ``num_classes`` where given).
    """
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
      raise ValueError(f'images must be uint8 [N, H, W, C], got {images_uint8.dtype} '
                       f'{images_uint8.shape}.')
    self.mesh = mesh if mesh is not None else default_mesh()
    if BATCH_AXIS not in self.mesh.axis_names:
      raise ValueError(f"mesh has axes {self.mesh.axis_names}; it needs one named '{BATCH_AXIS}'.")
    num_shards = self.mesh.shape[BATCH_AXIS]
    self.num_examples = int(images_uint8.shape[0])
    self.global_batch = int(global_batch)
    if self.global_batch <= 0 or self.global_batch % num_shards:
      raise UserError(f'batch_size {self.global_batch} must be a positive multiple of the '
                      f'number of devices ({num_shards}).')
    if self.global_batch > self.num_examples:
      raise UserError(f'batch_size {self.global_batch} exceeds the {self.num_examples} examples '
                      'of the dataset; use a batch_size of at most the dataset size.')
    self.steps_per_epoch = self.num_examples // self.global_batch
    self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXIS))
    replicated = NamedSharding(self.mesh, P())
    # make_array_from_callback works in multi-process runs too: each process fills its own
    # devices from its (identical) copy of the images.
    self.images = jax.make_array_from_callback(
        images_uint8.shape, replicated, lambda index: images_uint8[index])
    self.labels = None
    if labels is not None:
      labels = _checked_labels(labels, num_classes)
      if labels.shape != (self.num_examples,):
        raise ValueError(f'labels must be [{self.num_examples}], one per image; got '
                         f'{labels.shape}.')
      self.labels = jax.make_array_from_callback(labels.shape, replicated,
                                                 lambda index: labels[index])
    self.data = self.images if self.labels is None else (self.images, self.labels)
    self._key = data_key(seed)
    # The current epoch's permutation, kept on the devices: drawing it (a sort of every
    # example's random key) once per epoch instead of once per step takes it off the step's path.
    self._epoch: int | None = None
    self._permutation: jax.Array | None = None
    # Replicated like the images, so every process's gather reads its own devices' copy.
    self._permute = jax.jit(epoch_permutation, static_argnums=(2,), out_shardings=replicated)

  def epoch_permutation(self, epoch: int) -> jax.Array:
    """``int32 [num_examples]`` on the devices (replicated): epoch ``epoch``'s data order.

    Cached: the loop asks for the same epoch every step and pays the sort once per epoch.
    """
    if epoch != self._epoch:
      self._permutation = self._permute(self._key, np.int32(epoch), self.num_examples)
      self._epoch = epoch
    return self._permutation

  def rows(self, data, permutation: jax.Array, start):
    """Traceable: the batch of rows ``permutation[start:start + global_batch]`` of ``data``.

    For programs that draw batches themselves (:mod:`dcgan_jax.step_loop`); pass
    :attr:`data` and :meth:`epoch_permutation` in as arguments (not as closed-over constants).
    """
    return _take_rows(data, jax.lax.dynamic_slice_in_dim(permutation, start, self.global_batch),
                      self.batch_sharding)

  def indices(self, step) -> jax.Array:
    """``int32 [global_batch]`` dataset indices of step ``step``'s batch."""
    return _jitted_batch_indices(self._key, jnp.asarray(step, jnp.int32), self.num_examples,
                                 self.global_batch)

  def batch(self, step) -> jax.Array:
    """The batch of step ``step``.

    Args:
      step: the step number (int or int32 scalar array, e.g. the train state's step).

    Returns:
      ``uint8 [global_batch, H, W, C]`` sharded as ``NamedSharding(mesh, P('batch'))``; with
      labels, the pair ``(images, int32 labels [global_batch])``, sharded alike.
    """
    if isinstance(step, (int, np.integer)):  # The training loop's case: one gather per step.
      epoch, position = divmod(int(step), self.steps_per_epoch)
      return _gather_slice(self.data, self.epoch_permutation(epoch),
                           np.int32(position * self.global_batch),
                           global_batch=self.global_batch, sharding=self.batch_sharding)
    return _gather_batch(self.data, self._key, jnp.asarray(step, jnp.int32),
                         num_examples=self.num_examples, global_batch=self.global_batch,
                         sharding=self.batch_sharding)


def epoch_permutation(key: jax.Array, epoch, num_examples: int) -> jax.Array:
  """``int32 [num_examples]``: the data order of one epoch (traceable)."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


_jitted_batch_indices = jax.jit(batch_indices, static_argnums=(2, 3))


@functools.partial(jax.jit, static_argnames=('global_batch', 'sharding'))
def _gather_slice(images, permutation, start, *, global_batch, sharding):
  """Rows ``permutation[start:start + global_batch]`` of ``images``, with the given sharding."""
  return _take_rows(images, jax.lax.dynamic_slice_in_dim(permutation, start, global_batch),
                    sharding)


def _take_rows(data, indices, sharding):
  """``data[indices]`` (each array of a pytree) with the batch sharding (traced inside the
  gathers above)."""
  # Sharding the indices first lets each device gather only its own slice of the batch from
  # its replica of the images, with no communication.
  indices = jax.lax.with_sharding_constraint(indices, sharding)
  return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(jnp.take(x, indices, axis=0, mode='clip'),
                                                 sharding), data)


@functools.partial(jax.jit, static_argnames=('num_examples', 'global_batch', 'sharding'))
def _gather_batch(images, key, step, *, num_examples, global_batch, sharding):
  """One batch, ``uint8 [global_batch, H, W, C]`` with the given sharding."""
  return _take_rows(images, batch_indices(key, step, num_examples, global_batch), sharding)
