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
  with pytest.raises(UserError, match=r'alpha channel; drop it \(images\[..., :-1\]\)') as caught:
    extractor(np.zeros((2, 32, 32, 4), np.uint8))
  assert 'float' not in str(caught.value)  # (They are uint8 already.)
  with pytest.raises(UserError, match=r'got \(2, 3, 32, 32\), which looks channels-first '
                                      r'\(NCHW.*images.transpose\(0, 2, 3, 1\)'):
    extractor(np.zeros((2, 3, 32, 32), np.uint8))
  with pytest.raises(UserError, match='batch_size must be a positive integer, got 50.0'):
    evaluation.InceptionExtractor(variables, batch_size=50.0)
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


def test_batch_norm_folds_into_the_convolution():
  """One ConvBN: the folded conv (kernel * s, bias t) equals conv -> BatchNorm -> ReLU."""
  from dcgan_jax.evaluation import inception  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 9, 5)).astype(np.float32)
  layer = inception.ConvBN(7, (3, 3), padding=((1, 1), (1, 1)), precision='highest')
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  variables['batch_stats']['bn']['var'] = np.abs(variables['batch_stats']['bn']['var']) + 0.1
  folded = inception.fold_batch_norm({'params': {'layer': variables['params']},
                                      'batch_stats': {'layer': variables['batch_stats']}})
  assert set(folded) == {'params'}
  assert set(folded['params']['layer']) == {'conv'}
  assert set(folded['params']['layer']['conv']) == {'kernel', 'bias'}
  expected = layer.apply(variables, x)
  ours = layer.clone(folded=True).apply({'params': folded['params']['layer']}, x)
  assert float(np.abs(expected).max()) > 0.1  # The ReLU leaves something to compare.
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='folded already'):
    inception.fold_batch_norm(folded)


def test_folded_variables_fit_the_folded_network():
  """fold_batch_norm of the whole network gives exactly the variables
  FIDInceptionV3(folded=True) declares: every ConvBN a biased conv, the classifier unchanged."""
  from dcgan_jax.evaluation import inception  # pylint: disable=g-import-not-at-top

  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), variable_shapes())
  folded = inception.fold_batch_norm(variables)
  dummy = jax.ShapeDtypeStruct((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), np.float32)
  declared = jax.eval_shape(inception.FIDInceptionV3(folded=True).init, jax.random.key(0), dummy)
  assert set(declared) == {'params'}
  assert (jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), folded['params'])
          == jax.tree.map(lambda a: (a.shape, np.dtype(a.dtype)), declared['params']))


def test_weights_fingerprint_names_the_weights_not_their_folded_form(variables):
  """Cached reference statistics record it: equal for equal weights (whatever the extractor's
  performance options), different when any value changes."""
  same = evaluation.InceptionExtractor(variables, batch_size=BATCH_SIZE, merge_siblings=False)
  assert same.weights_fingerprint == evaluation.InceptionExtractor(
      variables, batch_size=BATCH_SIZE).weights_fingerprint
  changed = jax.tree.map(np.copy, variables)
  changed['params']['Mixed_7c']['branch1x1']['conv']['kernel'][0, 0, 5, 7] = 1e-3
  assert evaluation.InceptionExtractor(changed, batch_size=BATCH_SIZE).weights_fingerprint != (
      same.weights_fingerprint)


def test_default_precision_on_a_tpu_is_told_to_be_highest():
  """On a TPU 'default' is one bfloat16 pass: FIDs far from pytorch-fid's, without a word."""
  from dcgan_jax.evaluation import extractor as extractor_lib  # pylint: disable=g-import-not-at-top
  assert 'bfloat16 on TPUs' in extractor_lib.precision_warning('default', {'tpu'})
  assert extractor_lib.precision_warning('highest', {'tpu'}) is None
  # TF32 on a GPU, as pytorch-fid's cuDNN convolutions by default.
  assert extractor_lib.precision_warning('default', {'gpu', 'cpu'}) is None


def test_arithmetic_says_what_the_network_computes_in(extractor):
  """Recorded with statistics: float32 wherever the convolutions are exact float32."""
  from dcgan_jax.evaluation import extractor as extractor_lib  # pylint: disable=g-import-not-at-top
  assert extractor.arithmetic == 'float32'  # The tests' CPU devices, any precision.
  assert extractor_lib.arithmetic('default', {'cpu'}) == 'float32'
  assert extractor_lib.arithmetic('highest', {'gpu'}) == 'float32'
  assert extractor_lib.arithmetic('default', {'gpu'}) == 'precision default on gpu'
  assert extractor_lib.arithmetic('high', 'tpu') == 'precision high on tpu'
