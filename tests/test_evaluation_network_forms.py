"""Faster forms of the FID Inception compute the same features: BatchNorm folded, sibling 1x1
convolutions merged, RGB input padded with zero channels; and the extractor's options select
them (and XLA options) without changing its results."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import evaluation
from dcgan_jax.errors import UserError
from dcgan_jax.evaluation import extractor as extractor_lib
from dcgan_jax.evaluation import inception


def _random_variables(seed=0):
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype),
                           inception.variable_shapes())
  # Positive variances; nonzero means and biases, so a bias stacked in the wrong order shows.
  variables['batch_stats'] = jax.tree.map(lambda a: np.abs(a) + 0.5, variables['batch_stats'])
  return variables


@pytest.mark.parametrize('block, input_channels', [
    (inception.InceptionA(8), 16),
    (inception.InceptionC(12), 24),
    (inception.InceptionD(), 16),
    (inception.InceptionE('max'), 16),
])
def test_merged_sibling_convolutions_equal_the_separate_ones(block, input_channels):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 9, 9, input_channels)).astype(np.float32)
  folded = block.clone(folded=True, precision='highest')
  shapes = jax.eval_shape(folded.init, jax.random.key(0), x)['params']
  # Kernels scaled by fan-in keep activations O(1) through the chains of convolutions, so a
  # tolerance means the same thing in every block; biases random too (order shows).
  params = jax.tree.map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(
          np.float32), shapes)
  merged_params = inception.merge_sibling_convs(params)
  group = next(g for g in inception.SIBLING_1X1_GROUPS if all(n in params for n in g))
  assert not set(group) & set(merged_params) and inception.MERGED_1X1 in merged_params
  kernel = merged_params[inception.MERGED_1X1]['conv']['kernel']
  assert kernel.shape[-1] == sum(params[n]['conv']['kernel'].shape[-1] for n in group)
  expected = folded.apply({'params': params}, x)
  got = folded.clone(merged=True).apply({'params': merged_params}, x)
  assert got.shape == expected.shape
  assert float(np.abs(expected).max()) > 0.1
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_merging_needs_folded_parameters():
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), inception.variable_shapes())
  with pytest.raises(ValueError, match='folded'):
    inception.merge_sibling_convs(params['params'])
  x = jnp.zeros((1, 9, 9, 8))
  with pytest.raises(ValueError, match='folded=True'):
    inception.InceptionA(8, merged=True).init(jax.random.key(0), x)
  folded = inception.fold_batch_norm(params)['params']
  with pytest.raises(ValueError, match='at least 3'):
    inception.pad_input_channels(folded, 2)


def test_every_form_of_the_whole_network_gives_the_same_features():
  """Folded, folded + merged + input padded to 4 channels: the network's outputs agree with
  the network as written (small input, un-jitted: no whole-network compilation)."""
  variables = _random_variables()
  folded = inception.fold_batch_norm(variables)
  fast = {'params': inception.pad_input_channels(
      inception.merge_sibling_convs(folded['params']), 4)}
  x = np.random.default_rng(2).standard_normal((1, 75, 75, 3)).astype(np.float32)
  net = functools.partial(inception.FIDInceptionV3, precision='highest')
  reference = net().apply(variables, x)
  assert float(np.abs(reference['pool']).max()) > 0.01  # Something nonzero to compare.
  for form, form_variables in [(net(folded=True), folded),
                               (net(folded=True, merged=True, input_channels=4), fast)]:
    # The extractor infers the form from the variables alone.
    assert extractor_lib.network_for(form_variables, 'highest') == form
    got = form.apply(form_variables, x)
    for key in reference:
      np.testing.assert_allclose(got[key], reference[key], rtol=1e-4, atol=1e-5)


def test_merging_removes_19_convolutions_from_the_program():
  """What the merged form is for: fewer convolution calls (3 -> 1 in each A, C and E block,
  2 -> 1 in D), counted in the lowered program."""
  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), inception.variable_shapes())
  folded = inception.fold_batch_norm(variables)
  merged = {'params': inception.merge_sibling_convs(folded['params'])}
  x = jax.ShapeDtypeStruct((1, 75, 75, 3), np.float32)

  def convolutions(net, v):
    return jax.jit(net.apply).lower(v, x).as_text().count('stablehlo.convolution')

  assert convolutions(inception.FIDInceptionV3(folded=True), folded) == 94
  assert convolutions(inception.FIDInceptionV3(folded=True, merged=True), merged) == 75


@functools.partial(jax.jit, static_argnames=('precision',))
def _cheap_network(variables, images, precision):
  del precision
  # Stands in for the network without compiling it; depends on the first kernel's shape, so a
  # padded kernel that reached the program would show in the output.
  channels = variables['params']['Conv2d_1a_3x3']['conv']['kernel'].shape[2]
  pool = jnp.tile(images.mean(axis=(1, 2)), (1, 683))[:, :2048] + channels
  logits = pool[:, :1008]
  return {'pool': pool, 'logits': logits, 'logits_with_bias': logits + 1}


def test_extractor_forms_and_compiler_options(monkeypatch):
  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), inception.variable_shapes())
  plain = evaluation.InceptionExtractor(variables, batch_size=8, merge_siblings=False)
  fast = evaluation.InceptionExtractor(variables, batch_size=8, input_channels=4)
  default = evaluation.InceptionExtractor(variables, batch_size=8)
  # pylint: disable=protected-access
  assert extractor_lib.network_for(plain._variables, 'default') == inception.FIDInceptionV3(
      folded=True)
  # Merged sibling convolutions by default (the faster form on GPUs, same features).
  assert extractor_lib.network_for(default._variables, 'default') == inception.FIDInceptionV3(
      folded=True, merged=True)
  assert extractor_lib.network_for(fast._variables, 'default') == inception.FIDInceptionV3(
      folded=True, merged=True, input_channels=4)
  # pylint: enable=protected-access
  with pytest.raises(UserError, match='input_channels'):
    evaluation.InceptionExtractor(variables, input_channels=2)

  def apply(variables, images, precision):
    return _cheap_network.__wrapped__(variables, images, precision)

  monkeypatch.setattr(extractor_lib, '_apply', apply)
  extractor_lib._forward_compiled_with.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(extractor_lib, '_forward', _cheap_network)
  images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
  expected = plain(images)
  np.testing.assert_allclose(fast(images)['pool'], expected['pool'] + 1, atol=1e-5)  # 4 chans.
  # A GPU-only option compiles into the CPU program and changes nothing there.
  tuned = evaluation.InceptionExtractor(
      variables, batch_size=8, compiler_options={'xla_gpu_graph_min_graph_size': 1})
  assert tuned.compiler_options == {'xla_gpu_graph_min_graph_size': 1}
  np.testing.assert_array_equal(tuned(images)['pool'], expected['pool'])
  bad = evaluation.InceptionExtractor(variables, batch_size=8,
                                      compiler_options={'xla_no_such_option': 1})
  with pytest.raises(Exception, match='xla_no_such_option'):
    bad(images)
  extractor_lib._forward_compiled_with.cache_clear()  # pylint: disable=protected-access
