"""DeviceResidentSampler: batches drawn on the devices from per-epoch permutations."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from dcgan_jax.data import device_resident
from dcgan_jax.errors import UserError

_NUM_EXAMPLES = 100


def _indexed_images(num_examples=_NUM_EXAMPLES):
  """uint8 [N, 2, 2, 1] images whose pixels spell their own index (N <= 256)."""
  return np.broadcast_to(np.arange(num_examples, dtype=np.uint8)[:, None, None, None],
                         (num_examples, 2, 2, 1)).copy()


def _indices_of(batch):
  return np.asarray(batch)[:, 0, 0, 0].astype(int)


@pytest.fixture(scope='module')
def sampler():
  assert jax.device_count() == 8, 'tests/conftest.py should give 8 CPU devices'
  return device_resident.DeviceResidentSampler(_indexed_images(), global_batch=16, seed=0)


def test_each_epoch_is_a_permutation(sampler):
  assert sampler.steps_per_epoch == 6  # 100 // 16; 4 examples left out per epoch.
  epochs = []
  for epoch in range(3):
    steps = range(epoch * 6, epoch * 6 + 6)
    drawn = np.concatenate([_indices_of(sampler.batch(step)) for step in steps])
    assert len(set(drawn.tolist())) == 96  # No example twice within an epoch.
    epochs.append(drawn)
  assert not np.array_equal(epochs[0], epochs[1])  # A new order each epoch...
  assert set(epochs[0]) != set(epochs[1]) or set(epochs[1]) != set(epochs[2])  # ...and leftovers.
  # Over a few epochs every example is seen (the dropped remainder differs between epochs).
  many = np.concatenate([_indices_of(sampler.batch(step)) for step in range(60)])
  assert set(many.tolist()) == set(range(_NUM_EXAMPLES))


def test_batches_depend_only_on_seed_and_step(sampler):
  again = device_resident.DeviceResidentSampler(_indexed_images(), global_batch=16, seed=0)
  other = device_resident.DeviceResidentSampler(_indexed_images(), global_batch=16, seed=1)
  for step in (0, 5, 6, 1234):
    np.testing.assert_array_equal(sampler.batch(step), again.batch(step))
    np.testing.assert_array_equal(_indices_of(sampler.batch(step)), sampler.indices(step))
  assert not np.array_equal(sampler.batch(0), other.batch(0))
  # Steps in any order (as after a resume) give the same batches.
  np.testing.assert_array_equal(sampler.batch(7), again.batch(jnp.int32(7)))


def test_batch_is_sharded_over_all_devices(sampler):
  batch = sampler.batch(3)
  assert batch.shape == (16, 2, 2, 1) and batch.dtype == jnp.uint8
  assert batch.sharding == NamedSharding(sampler.mesh, P('batch'))
  shards = sorted(batch.addressable_shards, key=lambda shard: shard.index[0].start)
  assert len({shard.device for shard in shards}) == 8
  expected = sampler.indices(3)
  for position, shard in enumerate(shards):
    assert shard.data.shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(_indices_of(shard.data), expected[2 * position:2 * position + 2])
  # The images themselves are replicated: every device holds the whole dataset.
  assert sampler.images.sharding.is_fully_replicated


def test_works_on_a_custom_mesh_and_inside_jit():
  mesh = jax.make_mesh((4,), ('batch',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:4])
  sampler = device_resident.DeviceResidentSampler(_indexed_images(40), 8, seed=3, mesh=mesh)
  assert sampler.batch(0).sharding.mesh.shape['batch'] == 4
  key = device_resident.data_key(3)
  traced = jax.jit(lambda step: device_resident.batch_indices(key, step, 40, 8))
  np.testing.assert_array_equal(traced(jnp.int32(9)), _indices_of(sampler.batch(9)))


@pytest.mark.parametrize('global_batch,message', [
    (12, r'multiple of the number of devices \(8\)'),
    (128, 'exceeds the 100 examples'),
])
def test_bad_batch_sizes(global_batch, message):
  with pytest.raises(UserError, match=message):
    device_resident.DeviceResidentSampler(_indexed_images(), global_batch, seed=0)


def test_use_device_resident_modes():
  config = ml_collections.ConfigDict(dict(device_resident='auto',
                                          device_resident_max_bytes=1000))
  assert device_resident.use_device_resident(config, 1000)
  assert not device_resident.use_device_resident(config, 1001)
  config.device_resident = 'always'
  assert device_resident.use_device_resident(config, 10**12)
  config.device_resident = 'never'
  assert not device_resident.use_device_resident(config, 1)
  config.device_resident = 'sometimes'
  with pytest.raises(UserError, match="device_resident is 'sometimes'; use one of auto, always"):
    device_resident.use_device_resident(config, 1)


def test_the_data_path_choice_says_which_setting_and_sizes_decided(monkeypatch):
  """A run logs why its data is streamed or kept on the devices: 'auto' decides by sizes that
  a user may want to change, and the reason names the one to change."""
  config = ml_collections.ConfigDict(dict(device_resident='auto',
                                          device_resident_max_bytes=4 * 2**30))
  monkeypatch.setattr(device_resident, '_memory_stats', lambda device: None)  # As on CPU.
  assert device_resident.choose_device_resident(config, 12 * 2**20) == (
      True, "device_resident='auto': the 12 MiB dataset is within device_resident_max_bytes "
            '(4 GiB)')
  chosen, reason = device_resident.choose_device_resident(config, 5 * 2**30)
  assert not chosen and reason.endswith(
      'the 5 GiB dataset is larger than device_resident_max_bytes (4 GiB); raise it to keep '
      'the data on the devices')
  # A device that reports its memory: at most a quarter of it holds the data.
  monkeypatch.setattr(device_resident, '_memory_stats',
                      lambda device: {'bytes_limit': 8 * 2**30})
  chosen, reason = device_resident.choose_device_resident(config, 3 * 2**30)
  assert not chosen and "more than a quarter of the device's 8 GiB" in reason
  chosen, reason = device_resident.choose_device_resident(config, 2 * 2**30)
  assert chosen and reason.endswith("and a quarter of the device's 8 GiB")
  config.device_resident = 'never'
  assert device_resident.choose_device_resident(config, 1) == (False, "device_resident='never'")
  assert device_resident.format_bytes(512) == '512 B'
  assert device_resident.format_bytes(1536) == '1.5 KiB'
  assert device_resident.format_bytes(1000 * 2**20) == '1,000 MiB'  # Not 1e+03.
  assert device_resident.format_bytes(1500 * 2**30) == '1,500 GiB'


def test_cached_epoch_permutation_gives_the_traced_batches_across_epochs():
  """The loop's int steps use a per-epoch permutation kept on the devices; the batches must be
  the ones the traceable definition gives, also across epoch boundaries and going back."""
  images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
  sampler = device_resident.DeviceResidentSampler(images, 8, seed=5)
  for step in [0, 1, 4, 5, 9, 3, 12, 0]:  # 5 steps per epoch: several epochs, out of order.
    np.testing.assert_array_equal(_indices_of(sampler.batch(step)),
                                  _indices_of(sampler.batch(jnp.int32(step))))


def test_labels_must_be_classes_of_the_model():
  images = _indexed_images(40)
  with pytest.raises(UserError, match=r'labels must be integer classes; got float64 values'):
    device_resident.DeviceResidentSampler(images, 8, seed=0, labels=np.full(40, 0.7))
  with pytest.raises(UserError, match=r'labels must be classes in 0\.\.3; got values from 0 to 9'):
    device_resident.DeviceResidentSampler(images, 8, seed=0, labels=np.arange(40) % 10,
                                          num_classes=4)
  with pytest.raises(UserError, match='labels must be classes >= 0; got values from -1'):
    device_resident.DeviceResidentSampler(images, 8, seed=0, labels=np.arange(40) - 1)
  sampler = device_resident.DeviceResidentSampler(images, 8, seed=0, labels=np.arange(40) % 4,
                                                  num_classes=4)
  assert sampler.labels.dtype == np.int32
