"""InceptionExtractor plumbing: devices, batch sizes, input checks (no network compilation)."""
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
