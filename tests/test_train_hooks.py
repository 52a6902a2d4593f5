"""The training hooks' image generation (:class:`dcgan_jax.train_hooks.Sampler`), data-parallel
over the local devices (:class:`dcgan_jax.generation.LocalGenerator`).

tests/conftest.py gives this process 8 CPU devices; meshes over fewer stand for smaller machines.
"""
import jax
import numpy as np
import pytest

from dcgan_jax import evaluation
from dcgan_jax import generation
from dcgan_jax import models
from dcgan_jax import parallel
from dcgan_jax import train
from dcgan_jax import train_hooks
from dcgan_jax.evaluation.inception import variable_shapes
from tiny_configs import tiny_config


@pytest.fixture(scope='module')
def extractor():
  """An Inception extractor of zero weights: only its batches' size and layout are read."""
  zero_weights = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes())
  return evaluation.InceptionExtractor(zero_weights, batch_size=16)


def _one_device_images(generator, variables, z, labels=None):
  """What the hooks generated before they used every device: one jitted program on one device."""
  apply = jax.jit(lambda v, z, labels: generator.apply(v, z, train=False,
                                                       **models.label_kwargs(labels)))
  device = jax.local_devices()[0]
  return np.asarray(apply(jax.device_put(variables, device), jax.device_put(z, device),
                          None if labels is None else jax.device_put(labels, device)))


@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_sampler_reads_a_fresh_state_and_a_placed_one(tmp_path, parallelism):
  """The untrained generator's digits quality reads the fresh state, not yet laid out for the
  step: under pmap its first row was taken for a replica (every digits run with quality
  scoring failed at its start)."""
  config = tiny_config(tmp_path, parallelism=parallelism)
  generator = models.generator_from_config(config)
  step_fn = parallel.DataParallelStep(generator, models.discriminator_from_config(config),
                                      parallelism=parallelism)
  fresh = train.create_train_state(config, jax.random.key(0), 4)
  sampler = train_hooks.Sampler(config)
  z = train_hooks.latents(0, train_hooks.SAMPLE_TAG, 5, int(config.latent_dim))
  expected = np.asarray(generator.apply(fresh.sampling_variables(), z, train=False))
  for state in (fresh, step_fn.place_state(fresh)):
    np.testing.assert_allclose(sampler.generate(sampler.variables(state), z), expected,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('num_classes', [0, 10])
def test_generation_over_any_number_of_devices_is_the_one_device_generation(num_classes):
  """Latents split over 1, 3 or 8 devices give one device's images, bit for bit, for counts
  that split unevenly, counts below the device count and several chunks."""
  generator = models.Generator(image_size=8, channels=1, latent_dim=8, width=8,
                               num_classes=num_classes)
  variables = generator.init(jax.random.key(0), np.zeros((1, 8), np.float32), train=False,
                             **models.label_kwargs(models.cycled_labels(1, num_classes)))
  for num_devices, num, chunk_size in [(1, 13, 8), (3, 64, 250), (8, 5, 250), (8, 13, 4),
                                       (8, 24, 8)]:
    generation_ = generation.LocalGenerator(generator, jax.local_devices()[:num_devices])
    z = np.asarray(train_hooks.latents(num, train_hooks.SAMPLE_TAG, num, 8))
    labels = models.cycled_labels(num, num_classes)
    expected = _one_device_images(generator, variables, z, labels)
    message = f'{num} images over {num_devices} devices in chunks of {chunk_size}'
    np.testing.assert_array_equal(generation_(variables, z, labels, chunk_size=chunk_size),
                                  expected, err_msg=message)
    chunks = generation_.dispatch(variables, z, labels, chunk_size=chunk_size)
    np.testing.assert_array_equal(np.concatenate(jax.device_get(chunks)), expected,
                                  err_msg=message)
    rows = -(-chunk_size // num_devices) * num_devices  # Rounded up to split evenly.
    assert [c.shape[0] for c in chunks] == [min(rows, num - s) for s in range(0, num, rows)]
    for chunk in chunks:  # Split over every device, save a last chunk that does not split.
      if chunk.shape[0] % num_devices == 0:
        assert chunk.sharding.is_equivalent_to(generation_.batch_sharding, chunk.ndim)
        assert {s.device for s in chunk.addressable_shards} == set(generation_.devices)
      else:
        assert chunk is chunks[-1] and chunk.sharding.is_fully_replicated


@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_sampler_generates_on_every_local_device(tmp_path, parallelism, extractor):
  """The hooks' images from a state the step laid out (EMA kept), for grids and quality on the
  host and for FID on the devices, in the extractor's batches and laid out as it takes them."""
  assert jax.local_device_count() == 8  # tests/conftest.py's fake CPU devices.
  config = tiny_config(tmp_path, parallelism=parallelism, num_classes=10)
  generator = models.generator_from_config(config)
  step_fn = parallel.DataParallelStep(generator, models.discriminator_from_config(config),
                                      parallelism=parallelism)
  fresh = train.create_train_state(config, jax.random.key(0), 4)
  assert fresh.ema is not None
  state = step_fn.place_state(fresh)
  sampler = train_hooks.Sampler(config)
  assert sampler.num_devices == 8
  variables = sampler.variables(state)
  for leaf in jax.tree.leaves(variables):
    assert leaf.sharding.is_fully_replicated and len(leaf.addressable_shards) == 8
  num = 45  # Not a multiple of the extractor's batch, nor of the device count.
  z = np.asarray(train_hooks.latents(0, train_hooks.EVAL_TAG, num, int(config.latent_dim)))
  labels = sampler.labels(num)
  expected = _one_device_images(generator, fresh.sampling_variables(), z, labels)
  np.testing.assert_array_equal(sampler.generate(variables, z, labels), expected)
  np.testing.assert_array_equal(
      np.concatenate(jax.device_get(sampler.dispatch_generate(variables, z, labels))), expected)

  chunks = sampler.generate_uint8(variables, z, labels, chunk_size=extractor.batch_size)
  assert [c.shape[0] for c in chunks] == [16, 16, 13]
  for chunk in chunks[:2]:
    # pylint: disable-next=protected-access
    assert chunk.sharding == extractor._data_sharding  # Nothing to move before Inception.
    assert sorted(s.data.shape[0] for s in chunk.addressable_shards) == [2] * 8
  low, high = sampler.value_range
  np.testing.assert_array_equal(np.concatenate(jax.device_get(chunks)),
                                evaluation.to_uint8(expected, low, high))
