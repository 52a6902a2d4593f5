"""InceptionExtractor plumbing: devices, batch sizes, input checks (no network compilation)."""
import functools

import jax
import numpy as np
import pytest

from dcgan_jax import evaluation
from dcgan_jax.errors import UserError
from dcgan_jax.evaluation.inception import variable_shapes

BATCH_SIZE = 8


@pytest.fixture(scope='module')
def variables():
  # Zero weights: these tests exercise the plumbing only, without compiling the network.
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes())


@pytest.fixture(scope='module')
def extractor(variables):
  return evaluation.InceptionExtractor(variables, batch_size=BATCH_SIZE)


def test_extractor_shards_over_all_local_devices(extractor, variables):
  assert jax.local_device_count() == 8  # tests/conftest.py's fake CPU devices.
  assert extractor.num_devices == 8
  # pylint: disable-next=protected-access
  assert extractor._data_sharding.device_set == set(jax.local_devices())
  assert extractor.batch_size == BATCH_SIZE
  odd = evaluation.InceptionExtractor(variables, batch_size=13)
  assert odd.batch_size == 16  # Rounded up to a multiple of the device count.
  pair = evaluation.InceptionExtractor(variables, batch_size=13, devices=jax.local_devices()[:2])
  assert pair.num_devices == 2 and pair.batch_size == 14


def test_extractor_input_validation(extractor, variables):
  with pytest.raises(UserError, match='uint8'):
    extractor(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(UserError, match='uint8'):
    extractor(np.zeros((2, 32, 32, 4), np.uint8))
  empty = extractor(np.zeros((0, 32, 32, 3), np.uint8))
  assert empty['pool'].shape == (0, 2048) and empty['logits'].shape == (0, 1008)
  with pytest.raises(UserError, match='precision'):
    evaluation.InceptionExtractor(variables, precision='fp8')
  with pytest.raises(UserError, match='preprocessing'):
    evaluation.InceptionExtractor(variables, preprocessing='clean')


def test_device_batches_keep_device_inputs_and_outputs_on_the_device(variables, monkeypatch):
  # A cheap stand-in for the network (per-image channel means), so nothing big compiles.
  from dcgan_jax.evaluation import extractor as extractor_lib  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  @functools.partial(jax.jit, static_argnames=('precision',))
  def forward(variables, images, precision):
    del variables, precision
    pool = jnp.tile(images.mean(axis=(1, 2)), (1, 2048 // 3 + 1))[:, :2048]
    logits = jnp.tile(images.mean(axis=(1, 2)), (1, 336))
    return {'pool': pool, 'logits': logits, 'logits_with_bias': logits + 1}

  monkeypatch.setattr(extractor_lib, '_forward', forward)
  extractor = evaluation.InceptionExtractor(variables, batch_size=BATCH_SIZE)
  images = np.random.default_rng(0).integers(0, 256, (21, 8, 8, 3), dtype=np.uint8)
  expected = extractor(images)
  assert expected['pool'].shape == (21, 2048)
  batches = list(extractor.device_batches(jax.device_put(images, jax.local_devices()[3])))
  assert [b['pool'].shape[0] for b in batches] == [8, 8, 5]
  assert all(isinstance(b['pool'], jax.Array) for b in batches)
  for key in expected:
    np.testing.assert_array_equal(np.concatenate([np.asarray(b[key]) for b in batches]),
                                  expected[key])
  from_device = extractor(jnp.asarray(images))  # __call__ takes device arrays too.
  np.testing.assert_array_equal(from_device['pool'], expected['pool'])
  with pytest.raises(UserError, match='uint8'):
    next(extractor.device_batches(jnp.zeros((2, 8, 8, 3))))
