"""The generator's forward pass (train=False), data-parallel over this process's devices.

The training hooks (sample grids, digits quality, in-training FID) and the ``sample`` command
generate with :class:`LocalGenerator`: the latents (and a conditional generator's classes) are
split along the batch over a 1-D mesh of ``jax.local_devices()``, G's variables are replicated
on it, and each device runs G on its own rows (``shard_map``: in eval mode G treats every
example on its own, so no device waits for another). Chunks are padded to a multiple of the
device count and the padding dropped, so any number of images works.

The mesh is the one :class:`dcgan_jax.evaluation.InceptionExtractor` splits its batches over, so
uint8 images made for FID in chunks of the extractor's batch size reach Inception on the devices
that made them. In a multi-process run each process generates on its own devices only.
``python -m dcgan_jax.evaluate`` (:func:`dcgan_jax.evaluate.generate`) generates over the same
mesh, but draws each device's latents on that device, from the images' indices.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dcgan_jax import models
from dcgan_jax import parallel


class LocalGenerator:
  """Runs a generator (train=False) data-parallel over this process's devices.

  Example::

    generation = LocalGenerator(generator)
    images = generation(variables, z, labels, chunk_size=1024)  # float32 numpy [N, H, W, C]
    chunks = generation.dispatch(variables, z, chunk_size=200, value_range=(-1.0, 1.0))

  Attributes:
    devices: The devices of the mesh (default: ``jax.local_devices()``).
    num_devices: How many; every chunk's rows are a multiple of it.
    replicated: G's variables' layout on the mesh.
    batch_sharding: The layout of every chunk of latents and images (rows split over the mesh).
  """

  def __init__(self, generator: Any, devices: Sequence[jax.Device] | None = None):
    mesh = parallel.make_mesh(list(devices) if devices is not None else jax.local_devices())
    self.devices = list(mesh.devices.flat)
    self.num_devices = len(self.devices)
    self.replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P(parallel.AXIS_NAME))
    self._mesh = mesh
    self._generator = generator
    self._programs: dict[tuple[float, float] | None, Any] = {}

  def replicate(self, variables: dict[str, Any]) -> dict[str, Any]:
    """``variables`` replicated over the mesh.

    A replicated state on these devices (the shard_map step's) is used where it is, without a
    copy; any other (pmap's layout: the first local row; a fresh or restored state on the host or
    one device) is copied from one device's copy to every device.
    """
    return jax.tree.map(self._replicate_leaf, variables)

  def _replicate_leaf(self, x: Any) -> jax.Array:
    if isinstance(x, jax.Array):
      if _leading_axis_split(x):  # pmap's layout: one replica per device along a leading axis.
        x = parallel.local_replica(x)
      elif x.sharding.is_fully_replicated:
        if x.sharding == self.replicated:
          return x
        # Of a multi-process run's global state, this process's own replicas: every process
        # generates on its devices alone.
        shards = {shard.device: shard.data for shard in x.addressable_shards}
        if shards.keys() == set(self.devices):
          return jax.make_array_from_single_device_arrays(
              x.shape, self.replicated, [shards[device] for device in self.devices])
        x = x.addressable_data(0)
    return jax.device_put(x, self.replicated)

  def dispatch(self, variables: dict[str, Any], z: np.ndarray | jax.Array,
               labels: np.ndarray | None = None, *, chunk_size: int,
               value_range: tuple[float, float] | None = None) -> list[jax.Array]:
    """Queues the programs and returns their images (chunks), without waiting for them.

    Args:
      variables: G's variables (see :meth:`replicate`; replicated ones are used as they are).
      z: Latents ``[N, latent_dim]``.
      labels: A conditional generator's classes ``[N]``, else None.
      chunk_size: Images per program over all devices (rounded up to a multiple of the device
        count).
      value_range: None for ``float32`` images in G's range; ``(low, high)``, G's range, for
        ``uint8`` ones quantised on the devices as ``evaluation.to_uint8_jax`` does.

    Returns:
      Chunks ``[rows, H, W, C]`` in order (``np.concatenate`` of them gives the ``N`` images),
      each split over the mesh as :attr:`batch_sharding`, save a last chunk whose rows do not
      split evenly: that one is on every device whole. The programs read ``variables`` in queue
      order, so a later step may donate the state they came from.
    """
    return [images if valid == images.shape[0] else images[:valid]
            for images, valid in self._padded_chunks(variables, z, labels, chunk_size,
                                                      value_range)]

  def __call__(self, variables: dict[str, Any], z: np.ndarray | jax.Array,
               labels: np.ndarray | None = None, *, chunk_size: int) -> np.ndarray:
    """Images ``float32 [N, H, W, C]`` on the host (see :meth:`dispatch`)."""
    padded = list(self._padded_chunks(variables, z, labels, chunk_size, None))
    # device_get starts every copy before waiting for the first; the padding goes on the host.
    host = jax.device_get([images for images, _ in padded])
    return np.concatenate([images[:valid] for images, (_, valid) in zip(host, padded)])

  def _padded_chunks(self, variables, z, labels, chunk_size, value_range):
    """Yields (images of one program, how many of its rows are not padding)."""
    variables = self.replicate(variables)
    program = self._program(value_range)
    z = np.asarray(z)
    labels = None if labels is None else np.asarray(labels)
    num = z.shape[0]
    chunk_size = _round_up(max(1, chunk_size), self.num_devices)
    for start in range(0, num, chunk_size):
      valid = min(chunk_size, num - start)
      rows = _round_up(valid, self.num_devices)
      chunk_labels = None if labels is None else _pad(labels[start:start + valid], rows)
      placed = jax.device_put((_pad(z[start:start + valid], rows), chunk_labels),
                              self.batch_sharding)
      yield program(variables, *placed), valid

  def _program(self, value_range: tuple[float, float] | None):
    """The jitted ``(variables, z, labels) -> images`` over the mesh, one per output type."""
    if value_range not in self._programs:
      generator = self._generator
      to_uint8 = None
      if value_range is not None:
        from dcgan_jax.evaluation import preprocessing  # pylint: disable=g-import-not-at-top
        to_uint8 = preprocessing.to_uint8_jax

      def generate(variables, z, labels):
        images = generator.apply(variables, z, train=False, **models.label_kwargs(labels))
        return images if to_uint8 is None else to_uint8(images, *value_range)

      rows = P(parallel.AXIS_NAME)
      # check_vma=False: G's transposed convolutions are written as jax.linear_transpose,
      # which refuses rows typed as varying over the mesh (and G runs no collective here).
      self._programs[value_range] = jax.jit(jax.shard_map(
          generate, mesh=self._mesh, in_specs=(P(), rows, rows), out_specs=rows,
          check_vma=False))
    return self._programs[value_range]


def _leading_axis_split(x: jax.Array) -> bool:
  """Whether ``x``'s leading axis is split over devices (pmap's layout, even on one device)."""
  spec = getattr(x.sharding, 'spec', None)
  return bool(spec) and spec[0] is not None


def _round_up(count: int, multiple: int) -> int:
  return -(-count // multiple) * multiple


def _pad(rows: np.ndarray, count: int) -> np.ndarray:
  """``rows`` with zero rows appended up to ``count`` (latents of zeros, class 0: real inputs
  whose images are dropped)."""
  if rows.shape[0] == count:
    return rows
  return np.concatenate([rows, np.zeros((count - rows.shape[0],) + rows.shape[1:], rows.dtype)])
