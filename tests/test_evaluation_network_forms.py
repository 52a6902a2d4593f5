"""Faster forms of the FID Inception compute the same features: BatchNorm folded, sibling 1x1
convolutions merged (optionally with the average-pool branches' 1x1 convolutions, run before
their pool), RGB input padded with zero channels; and the extractor's options select them (and
XLA options) without changing its results."""
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


def _folded_block(block, size, input_channels, seed):
  """(the block folded at full precision, a [2, size, size, C] input, random folded params)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, size, size, input_channels)).astype(np.float32)
  folded = block.clone(folded=True, precision='highest')
  shapes = jax.eval_shape(folded.init, jax.random.key(0), x)['params']
  # Kernels scaled by fan-in keep activations O(1) through the chains of convolutions, so a
  # tolerance means the same thing in every block; biases random too (order shows).
  params = jax.tree.map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(
          np.float32), shapes)
  return folded, x, params


@pytest.mark.parametrize('block, input_channels', [
    (inception.InceptionA(8), 16),
    (inception.InceptionC(12), 24),
    (inception.InceptionD(), 16),
    (inception.InceptionE('max'), 16),
])
def test_merged_sibling_convolutions_equal_the_separate_ones(block, input_channels):
  folded, x, params = _folded_block(block, size=9, input_channels=input_channels, seed=1)
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


@pytest.mark.parametrize('name, block, input_channels', [
    ('Mixed_5b', inception.InceptionA(8), 16),
    ('Mixed_6b', inception.InceptionC(12), 24),
    ('Mixed_7b', inception.InceptionE('avg'), 16),
])
def test_pool_branch_merged_before_its_pool_equals_pool_then_conv(name, block, input_channels):
  """avg_pool(conv(x) + b) == conv(avg_pool(x)) + b when the pool excludes padding; the
  border pixels (where the pool averages 4 or 6 values, not 9) are where a wrong divisor or a
  pooled bias would show, and a 5x5 input is mostly border."""
  folded, x, params = _folded_block(block, size=5, input_channels=input_channels, seed=3)
  merged = inception.merge_sibling_convs({name: params}, pool_branches=True)[name]
  assert inception.POOL_BRANCH not in merged
  kernel = merged[inception.MERGED_1X1]['conv']['kernel']
  # The pool branch's columns come last, copied unchanged.
  np.testing.assert_array_equal(kernel[..., -params['branch_pool']['conv']['kernel'].shape[-1]:],
                                params['branch_pool']['conv']['kernel'])
  expected = folded.apply({'params': params}, x)
  got = folded.clone(merged=True, pool_merged=True).apply({'params': merged}, x)
  assert float(np.abs(expected).max()) > 0.1
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  # Without the block's name (a bare block) the pool branch stays apart: blocks are told apart
  # by name, since Mixed_7b (average pool) and Mixed_7c (max pool) have the same parameters.
  assert inception.POOL_BRANCH in inception.merge_sibling_convs(params, pool_branches=True)


def test_the_max_pool_block_keeps_its_pool_branch():
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), inception.variable_shapes())
  folded = inception.fold_batch_norm(params)['params']
  merged = inception.merge_sibling_convs(folded, pool_branches=True)
  with_pool_conv = [name for name in folded if inception.POOL_BRANCH in folded[name]]
  assert [name for name in with_pool_conv if inception.POOL_BRANCH not in merged[name]] == list(
      inception.AVERAGE_POOL_BLOCKS)
  assert inception.POOL_BRANCH in merged['Mixed_7c']
  with pytest.raises(ValueError, match='average-pool block'):
    inception.InceptionE('max', folded=True, merged=True, pool_merged=True).init(
        jax.random.key(0), jnp.zeros((1, 5, 5, 8)))
  with pytest.raises(ValueError, match='merged=True'):
    inception.InceptionA(8, folded=True, pool_merged=True).init(
        jax.random.key(0), jnp.zeros((1, 5, 5, 8)))
  with pytest.raises(ValueError, match='merge_siblings'):
    inception.inference_variables(params, merge_siblings=False, merge_pool_branches=True)


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
  """Folded, folded + merged + input padded to 4 channels, folded + merged with the pool
  branches: the network's outputs agree with the network as written (small input, un-jitted:
  no whole-network compilation)."""
  variables = _random_variables()
  folded = inception.fold_batch_norm(variables)
  fast = {'params': inception.pad_input_channels(
      inception.merge_sibling_convs(folded['params']), 4)}
  pool_merged = inception.inference_variables(variables, merge_siblings=True,
                                              merge_pool_branches=True)
  x = np.random.default_rng(2).standard_normal((1, 75, 75, 3)).astype(np.float32)
  net = functools.partial(inception.FIDInceptionV3, precision='highest')
  reference = net().apply(variables, x)
  assert float(np.abs(reference['pool']).max()) > 0.01  # Something nonzero to compare.
  for form, form_variables in [(net(folded=True), folded),
                               (net(folded=True, merged=True, input_channels=4), fast),
                               (net(folded=True, merged=True, pool_merged=True), pool_merged)]:
    # The extractor infers the form from the variables alone.
    assert extractor_lib.network_for(form_variables, 'highest') == form
    got = form.apply(form_variables, x)
    for key in reference:
      np.testing.assert_allclose(got[key], reference[key], rtol=1e-4, atol=1e-5)


def test_merging_removes_19_convolutions_from_the_program_and_27_with_the_pool_branches():
  """What the merged forms are for: fewer convolution calls (3 -> 1 in each A, C and E block,
  2 -> 1 in D; with the pool branches, 4 -> 1 in the 8 average-pool blocks), counted in the
  lowered program; and the pool-merged form pools narrower tensors."""
  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), inception.variable_shapes())
  folded = inception.fold_batch_norm(variables)
  merged = {'params': inception.merge_sibling_convs(folded['params'])}
  pool_merged = {'params': inception.merge_sibling_convs(folded['params'], pool_branches=True)}
  x = jax.ShapeDtypeStruct((1, 75, 75, 3), np.float32)

  def convolutions(net, v):
    return jax.jit(net.apply).lower(v, x).as_text().count('stablehlo.convolution')

  assert convolutions(inception.FIDInceptionV3(folded=True), folded) == 94
  assert convolutions(inception.FIDInceptionV3(folded=True, merged=True), merged) == 75
  assert convolutions(inception.FIDInceptionV3(folded=True, merged=True, pool_merged=True),
                      pool_merged) == 67

  def pooled_elements(net, v):
    # Elements read by the 3x3 stride-1 pools (average and max): reduce_window operands.
    jaxpr = jax.make_jaxpr(net.apply)(v, x)
    return sum(int(np.prod(eqn.invars[0].aval.shape)) for eqn in jaxpr.eqns
               if eqn.primitive.name.startswith('reduce_window') and
               eqn.params.get('window_strides') == (1, 1, 1, 1))

  narrow = pooled_elements(
      inception.FIDInceptionV3(folded=True, merged=True, pool_merged=True), pool_merged)
  wide = pooled_elements(inception.FIDInceptionV3(folded=True, merged=True), merged)
  assert narrow < wide / 3, (narrow, wide)


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
  pooled = evaluation.InceptionExtractor(variables, batch_size=8, merge_pool_branches=True)
  # pylint: disable=protected-access
  assert extractor_lib.network_for(plain._variables, 'default') == inception.FIDInceptionV3(
      folded=True)
  # Merged sibling convolutions by default (the faster form on GPUs, same features).
  assert extractor_lib.network_for(default._variables, 'default') == inception.FIDInceptionV3(
      folded=True, merged=True)
  assert extractor_lib.network_for(fast._variables, 'default') == inception.FIDInceptionV3(
      folded=True, merged=True, input_channels=4)
  assert extractor_lib.network_for(pooled._variables, 'default') == inception.FIDInceptionV3(
      folded=True, merged=True, pool_merged=True)
  # pylint: enable=protected-access
  with pytest.raises(UserError, match='input_channels'):
    evaluation.InceptionExtractor(variables, input_channels=2)
  with pytest.raises(UserError, match='merge_pool_branches=True needs merge_siblings=True'):
    evaluation.InceptionExtractor(variables, merge_siblings=False, merge_pool_branches=True)

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
