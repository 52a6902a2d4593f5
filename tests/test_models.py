"""Generator/discriminator: reference parameter counts, shapes, ranges, dtypes, bad sizes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import Discriminator, Generator, UserError, count_params, models
from dcgan_jax.models import resolve_channel_multiple


def _init(module, x):
  return module.init(jax.random.key(0), x, train=False)


def _shapes(module, x):
  # eval_shape: the counts need shapes only, and compiling the 64x64 init costs seconds on CPU.
  return jax.eval_shape(lambda: _init(module, x))


def test_default_parameter_counts_match_pytorch_reference():
  # pytorch/examples dcgan with nz=100, ngf=ndf=64, nc=3: G 3,576,704 and D 2,765,568.
  g_vars = _shapes(Generator(), jnp.zeros((2, 100)))
  d_vars = _shapes(Discriminator(), jnp.zeros((2, 64, 64, 3)))
  assert count_params(g_vars['params']) == 3_576_704
  assert count_params(d_vars['params']) == 2_765_568


@pytest.mark.parametrize('upsample', ['transpose', 'resize_conv'])
@pytest.mark.parametrize('size', [8, 16, 32, 64, 128, 256])
def test_shapes_for_every_size(size, upsample):
  g = Generator(image_size=size, channels=3, latent_dim=16, width=8, upsample=upsample)
  d = Discriminator(image_size=size, channels=3, width=8)
  z = jax.ShapeDtypeStruct((3, 16), jnp.float32)

  def run(z):
    g_vars = _init(g, z)
    images, _ = g.apply(g_vars, z, train=True, mutable=['batch_stats'])
    return images, d.apply(_init(d, images), images, train=False)

  images, logits = jax.eval_shape(run, z)  # Shapes only: no compile.
  assert images.shape == (3, size, size, 3) and images.dtype == jnp.float32
  assert logits.shape == (3,) and logits.dtype == jnp.float32


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_nearest_upsampling_is_jax_image_resize_with_a_block_sum_gradient(dtype):
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4)).astype(dtype)
  resize = lambda v: jax.image.resize(v, (2, 6, 10, 4), method='nearest')
  up = models.upsample_nearest_2x(x)
  assert up.dtype == dtype
  np.testing.assert_array_equal(np.asarray(up, np.float32), np.asarray(resize(x), np.float32))
  np.testing.assert_array_equal(np.asarray(up[:, 2, 7], np.float32),  # Pixel (1, 3)'s block.
                                np.asarray(x[:, 1, 3], np.float32))
  cotangent = jax.random.normal(jax.random.key(1), (2, 6, 10, 4)).astype(dtype)
  grad = jax.vjp(models.upsample_nearest_2x, x)[1](cotangent)[0]
  expected = np.asarray(cotangent, np.float32).reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4))
  tolerance = 1e-6 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(np.asarray(grad, np.float32), expected, rtol=tolerance,
                             atol=tolerance)
  np.testing.assert_allclose(np.asarray(grad, np.float32),
                             np.asarray(jax.vjp(resize, x)[1](cotangent)[0], np.float32),
                             rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_resize_conv_is_nearest_upsampling_then_a_3x3_conv(dtype):
  """ResizeConv (the phase form) == flax's Conv on the upsampled input: parameters, values and
  gradients (input and kernel), so checkpoints of either form load into the other."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6))  # Non-square, odd sides.
  layer = models.ResizeConv(4, dtype=dtype)
  direct = nn.Conv(4, (3, 3), padding='SAME', use_bias=False, dtype=dtype,
                   param_dtype=jnp.float32, kernel_init=models.kernel_init)
  variables = layer.init(jax.random.key(1), x)
  direct_variables = direct.init(jax.random.key(1), models.upsample_nearest_2x(x))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, direct_variables)
  assert variables['params']['kernel'].dtype == jnp.float32
  # The same initializer and parameter name: the same initial weights as the layer it replaced.
  np.testing.assert_array_equal(variables['params']['kernel'],
                                direct_variables['params']['kernel'])

  def phase(params, x):
    return layer.apply({'params': params}, x)

  def reference(params, x):
    return direct.apply({'params': params}, models.upsample_nearest_2x(x.astype(dtype)))

  params = {'kernel': jax.random.normal(jax.random.key(2), (3, 3, 6, 4)) * 0.2}
  out, pullback = jax.vjp(phase, params, x)
  expected, expected_pullback = jax.vjp(reference, params, x)
  assert out.shape == (2, 6, 10, 4) and out.dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected, np.float32),
                             rtol=tolerance, atol=tolerance)
  cotangent = jax.random.normal(jax.random.key(3), out.shape).astype(dtype)
  for got, want in zip(jax.tree.leaves(pullback(cotangent)),
                       jax.tree.leaves(expected_pullback(cotangent))):
    scale = float(jnp.abs(want.astype(jnp.float32)).max())
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=tolerance, atol=tolerance * scale)


# Computing costs seconds of compile per size on CPU; the layer code is the same for every size,
# so two sizes (one block and three) in both modes pin down the values.
@pytest.mark.parametrize('upsample', ['transpose', 'resize_conv'])
@pytest.mark.parametrize('size', [8, 32])
def test_outputs_are_in_range_and_vary(size, upsample):
  g = Generator(image_size=size, channels=3, latent_dim=16, width=8, upsample=upsample)
  d = Discriminator(image_size=size, channels=3, width=8)
  z = jax.random.normal(jax.random.key(1), (3, 16))

  @jax.jit
  def run(z):
    g_vars = _init(g, z)
    images, _ = g.apply(g_vars, z, train=True, mutable=['batch_stats'])
    return images, d.apply(_init(d, images), images, train=False)

  images, logits = run(z)
  assert images.shape == (3, size, size, 3) and logits.shape == (3,)
  assert float(jnp.min(images)) >= -1.0 and float(jnp.max(images)) <= 1.0
  assert float(jnp.std(images)) > 0  # Not a constant output.
  assert np.all(np.isfinite(logits)) and float(jnp.std(logits)) > 0


def test_sigmoid_output_in_unit_interval():
  g = Generator(image_size=16, channels=1, latent_dim=8, width=8, output_activation='sigmoid')
  z = jax.random.normal(jax.random.key(1), (4, 8))
  images = jax.jit(lambda z: g.apply(_init(g, z), z, train=False))(z)  # One compile, not eager.
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_layer_structure_follows_reference():
  g_params = _shapes(Generator(), jnp.zeros((2, 100)))
  # 100 -> 4x4x512 projection, then 512 -> 256 -> 128 -> 64 -> 3 with 4x4 kernels.
  assert g_params['params']['project']['kernel'].shape == (100, 4 * 4 * 512)
  ups = [g_params['params'][f'ConvTranspose_{i}']['kernel'].shape for i in range(4)]
  assert ups == [(4, 4, 512, 256), (4, 4, 256, 128), (4, 4, 128, 64), (4, 4, 64, 3)]
  assert len(g_params['batch_stats']) == 4  # BN after every layer but the last.
  d_params = _shapes(Discriminator(), jnp.zeros((2, 64, 64, 3)))
  downs = [d_params['params'][f'Conv_{i}']['kernel'].shape for i in range(4)]
  assert downs == [(4, 4, 3, 64), (4, 4, 64, 128), (4, 4, 128, 256), (4, 4, 256, 512)]
  assert d_params['params']['logit']['kernel'].shape == (4, 4, 512, 1)
  assert len(d_params['batch_stats']) == 3  # No BN on D's first layer nor its logit.


def test_initialisation_statistics():
  g_vars = jax.jit(lambda: _init(Generator(), jnp.zeros((2, 100))))()
  kernel = np.asarray(g_vars['params']['project']['kernel'])
  assert abs(kernel.std() - 0.02) < 0.001 and abs(kernel.mean()) < 0.001
  scale = np.asarray(g_vars['params']['BatchNorm_0']['scale'])
  bias = np.asarray(g_vars['params']['BatchNorm_0']['bias'])
  assert abs(scale.mean() - 1.0) < 0.01 and 0.01 < scale.std() < 0.03
  assert np.all(bias == 0)


@pytest.mark.parametrize('bad', [48, 0, 4, 512, 100])
def test_bad_image_size_rejected_at_construction(bad):
  with pytest.raises(UserError, match=r'image_size must be 4·2\^k: 8, 16, 32, 64, 128 or 256'):
    Generator(image_size=bad)
  with pytest.raises(UserError, match='image_size must be'):
    Discriminator(image_size=bad)


def test_bad_choices_list_valid_ones():
  with pytest.raises(UserError, match='transpose or resize_conv'):
    Generator(upsample='bilinear')
  with pytest.raises(UserError, match='float32 or bfloat16'):
    Generator(dtype='float16')


def test_bfloat16_compute_keeps_params_stats_and_outputs_float32():
  g = Generator(image_size=16, channels=3, latent_dim=8, width=8, dtype='bfloat16')
  d = Discriminator(image_size=16, channels=3, width=8, dtype='bfloat16')
  z = jax.random.normal(jax.random.key(0), (4, 8))

  @jax.jit  # One compile instead of hundreds of eager ops.
  def run(z):
    g_vars = _init(g, z)
    images, g_updates = g.apply(g_vars, z, train=True, mutable=['batch_stats'])
    d_vars = _init(d, images)
    logits, d_updates = d.apply(d_vars, images, train=True, mutable=['batch_stats'])
    # The same weights in float32 compute, for the rounding check below.
    eval_pair = (g.clone(dtype='float32').apply(g_vars, z, train=False),
                 g.apply(g_vars, z, train=False))
    return (g_vars, d_vars, g_updates, d_updates), images, logits, eval_pair

  trees, images, logits, (images32, images16) = run(z)
  for tree in trees:
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  assert images.dtype == jnp.float32 and logits.dtype == jnp.float32
  # The computation really ran in bfloat16: results differ from float32 by bf16 rounding.
  diff = float(jnp.max(jnp.abs(images32 - images16)))
  assert 0 < diff < 0.1


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('side,c_in,c_out', [(4, 16, 8), (8, 8, 3), (2, 5, 7)])
def test_transposed_conv_equals_flax_conv_transpose(dtype, side, c_in, c_out):
  """TransposedConv is flax's ConvTranspose('SAME', stride 2) with a faster VJP: same params,
  same outputs, same input and kernel gradients."""
  rng = np.random.default_rng(side * 100 + c_in)
  x = jnp.asarray(rng.standard_normal((3, side, side, c_in)), jnp.float32)
  reference = nn.ConvTranspose(c_out, (4, 4), strides=(2, 2), padding='SAME', use_bias=False,
                               dtype=dtype, param_dtype=jnp.float32)
  ours = models.TransposedConv(c_out, dtype=dtype)
  variables = reference.init(jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)))
  variables = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype),
                           variables)
  cotangent = jnp.asarray(rng.standard_normal((3, 2 * side, 2 * side, c_out)), jnp.float32)

  def loss(module):
    return lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) * cotangent)

  y_ref, y = reference.apply(variables, x), ours.apply(variables, x)
  assert y.shape == (3, 2 * side, 2 * side, c_out) and y.dtype == y_ref.dtype
  g_ref = jax.grad(loss(reference), (0, 1))(variables, x)
  g = jax.grad(loss(ours), (0, 1))(variables, x)
  tol = 1e-5 if dtype == 'float32' else 1e-2
  for a, b in [(y, y_ref), (g[0]['params']['kernel'], g_ref[0]['params']['kernel']),
               (g[1], g_ref[1])]:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b)


def test_transposed_conv_gradients_use_strided_convs_only():
  """The VJP is stated through the stride-2 conv: the kernel gradient is a weight-gradient
  conv (rhs dilation 2), never a conv over a zero-dilated input (what XLA cannot hand to
  cuDNN's weight-gradient kernels)."""
  module = models.TransposedConv(3)
  x = jnp.ones((2, 8, 8, 16))
  variables = module.init(jax.random.key(0), x)
  kernel_grad = jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))
  text = str(jax.make_jaxpr(kernel_grad)(variables))
  convs = text.split('conv_general_dilated[')[1:]
  # Forward (an input-gradient conv), then the VJP's input and kernel gradients.
  assert len(convs) == 3
  assert 'lhs_dilation=(2, 2)' in convs[0]
  assert all('lhs_dilation=(1, 1)' in c for c in convs[1:])
  assert sum('rhs_dilation=(2, 2)' in c for c in convs[1:]) == 1


def test_grouped_batch_norm_equals_flax_batch_norm_called_per_group():
  """groups=1 is flax's BatchNorm; groups=2 equals two consecutive calls (outputs, stats)."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 5, 4)) * 3 + 1, jnp.float32)
  ours = models.GroupedBatchNorm()
  reference = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                           scale_init=models.bn_scale_init)
  variables = reference.init(jax.random.key(0), x[0])
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x[0])))
  variables = {'params': jax.tree.map(lambda a: a + 0.1 * jnp.arange(a.size), variables['params']),
               'batch_stats': variables['batch_stats']}
  y0, s0 = reference.apply(variables, x[0], mutable=['batch_stats'])
  y1, s1 = reference.apply({**variables, **s0}, x[1], mutable=['batch_stats'])
  y_one, s_one = ours.apply(variables, x[0], mutable=['batch_stats'])
  y_two, s_two = ours.apply(variables, x.reshape((12, 5, 5, 4)), groups=2,
                            mutable=['batch_stats'])
  np.testing.assert_allclose(y_one, y0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y_two, jnp.concatenate([y0, y1]), rtol=1e-5, atol=1e-5)
  for a, b in [(s_one, s0), (s_two, s1)]:
    for k in ('mean', 'var'):
      np.testing.assert_allclose(a['batch_stats'][k], b['batch_stats'][k], rtol=1e-5)


def test_discriminator_groups_equal_separate_calls():
  disc = Discriminator(image_size=16, channels=3, width=8)
  rng = np.random.default_rng(4)
  real = jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
  fake = jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
  variables = disc.init(jax.random.key(1), real)
  params = variables['params']
  l_real, s = disc.apply(variables, real, mutable=['batch_stats'])
  l_fake, s = disc.apply({'params': params, **s}, fake, mutable=['batch_stats'])
  logits, s_both = disc.apply(variables, jnp.concatenate([real, fake]), groups=2,
                              mutable=['batch_stats'])
  np.testing.assert_allclose(logits, jnp.concatenate([l_real, l_fake]), rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s_both), jax.tree.leaves(s)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='equal groups'):
    disc.apply(variables, real[:3], groups=2, mutable=['batch_stats'])


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_image_channel_padding_keeps_parameters_and_function(dtype):
  """image_channel_multiple=8 pads D's input and G's output channels inside the first and last
  convolutions: same parameter tree (so checkpoints carry over), same images, logits and
  gradients, and the padded convolutions really see 8 channels."""
  g1 = Generator(image_size=16, channels=3, latent_dim=8, width=16, dtype=dtype,
                 image_channel_multiple=1)
  d1 = Discriminator(image_size=16, channels=3, width=16, dtype=dtype, image_channel_multiple=1)
  g8, d8 = g1.clone(image_channel_multiple=8), d1.clone(image_channel_multiple=8)
  z = jax.random.normal(jax.random.key(1), (4, 8))
  g_vars = _init(g1, z)
  d_vars = _init(d1, jnp.zeros((4, 16, 16, 3)))
  # Same names, shapes and (same init key, same module paths) values.
  for padded, plain, x in ((g8, g_vars, z), (d8, d_vars, jnp.zeros((4, 16, 16, 3)))):
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                     _init(padded, x), plain))

  def outputs(g, d):
    def loss(gv, dv):
      images, _ = g.apply(gv, z, train=True, mutable=['batch_stats'])
      logits, _ = d.apply(dv, images, train=True, mutable=['batch_stats'])
      return jnp.sum(jnp.tanh(logits)), (images, logits)
    # Jitted: one compile instead of hundreds of eager ops.
    grads, aux = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(g_vars, d_vars)
    return aux, grads

  (images1, logits1), grads1 = outputs(g1, d1)
  (images8, logits8), grads8 = outputs(g8, d8)
  assert images8.shape == images1.shape == (4, 16, 16, 3)
  # bfloat16 keeps ~3 significant digits, and the two compiled programs round at different
  # places (up to ~4% on a gradient leaf); a leak from the zero channels would be O(1).
  tol = 1e-5 if dtype == 'float32' else 8e-2
  for a, b in [(images8, images1), (logits8, logits1)] + list(
      zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1))):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1e-6)
  # D's first and G's last convolution see 8 channels (images and kernels) in the padded
  # models only; width 16 keeps every other channel count away from 8.
  text8 = str(jax.make_jaxpr(lambda gv, dv: outputs(g8, d8))(g_vars, d_vars))
  text1 = str(jax.make_jaxpr(lambda gv, dv: outputs(g1, d1))(g_vars, d_vars))
  for text, padded in ((text8, True), (text1, False)):
    assert ('16,16,8]' in text) == padded and ('4,4,8,16]' in text) == padded
    assert text.count('conv_general_dilated[') == text1.count('conv_general_dilated[')


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_whole_map_conv_is_the_valid_conv_it_replaces(dtype):
  """D's logit layer (a dot product) has nn.Conv's parameter and computes its function and
  gradients; in the discriminator no convolution over the 4x4 map is left."""
  conv = nn.Conv(3, (4, 4), padding='VALID', use_bias=False, kernel_init=models.kernel_init,
                 dtype=dtype, param_dtype=jnp.float32)
  whole = models.WholeMapConv(3, dtype=dtype)
  x = jax.random.normal(jax.random.key(2), (6, 4, 4, 40))
  variables = conv.init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                   whole.init(jax.random.key(0), x), variables))

  def value_and_grads(module):
    f = lambda v, x: jnp.sum(jnp.sin(module.apply(v, x).astype(jnp.float32)))
    return jax.jit(jax.value_and_grad(f, (0, 1)))(variables, x)

  (v1, (gv1, gx1)), (v2, (gv2, gx2)) = value_and_grads(conv), value_and_grads(whole)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bfloat16: summation order differs.
  assert abs(float(v1) - float(v2)) <= tol * max(abs(float(v1)), 1.0)
  for a, b in ((gv1['params']['kernel'], gv2['params']['kernel']), (gx1, gx2)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.linalg.norm(a - b) <= tol * np.linalg.norm(a)
  d = Discriminator(image_size=16, channels=3, width=8)
  images = jnp.zeros((2, 16, 16, 3))
  jaxpr = str(jax.make_jaxpr(lambda v: d.apply(v, images, train=False))(_shapes(d, images)))
  assert jaxpr.count('conv_general_dilated[') == 2 and 'dot_general[' in jaxpr


def test_image_channel_multiple_rejects_bad_values():
  for bad in (-1, -8, 2.5, '8', True):
    with pytest.raises(UserError, match='image_channel_multiple must be a non-negative integer'):
      Generator(image_channel_multiple=bad)
    with pytest.raises(UserError, match='image_channel_multiple must be a non-negative integer'):
      Discriminator(image_channel_multiple=bad)


@pytest.mark.parametrize('dtype, expected', [('float32', 1), ('bfloat16', 8)])
def test_image_channel_multiple_auto_pads_bfloat16_only(dtype, expected):
  """0 (the default) pads the image channels to 8 in bfloat16 and not in float32; an explicit
  value wins over the dtype."""
  assert resolve_channel_multiple(0, dtype) == expected
  assert resolve_channel_multiple(1, 'bfloat16') == 1 and resolve_channel_multiple(8, 'float32') == 8
  g = Generator(image_size=16, channels=3, latent_dim=8, width=16, dtype=dtype)
  d = Discriminator(image_size=16, channels=3, width=16, dtype=dtype)
  z, images = jnp.zeros((2, 8)), jnp.zeros((2, 16, 16, 3))
  text = str(jax.make_jaxpr(lambda gv, dv: (g.apply(gv, z, train=False),
                                            d.apply(dv, images, train=False)))(
      _shapes(g, z), _shapes(d, images)))
  assert ('16,16,8]' in text) == (expected == 8)


# --- Discriminator normalisation (Discriminator.norm) ---------------------------------------------

def _norm_disc(norm, **kwargs):
  return Discriminator(image_size=16, channels=3, width=8, norm=norm, **kwargs)


def test_discriminator_norms_change_only_the_normalisation_layers():
  x = jnp.zeros((2, 16, 16, 3))
  shapes = {norm: jax.tree.map(lambda a: a.shape, dict(_shapes(_norm_disc(norm), x)))
            for norm in models.DISCRIMINATOR_NORMS}
  convs = {name: leaf for name, leaf in shapes['batch']['params'].items()
           if name.startswith('Conv_') or name == 'logit'}
  assert len(convs) == 3  # 16x16: two stride-2 convs, then the logit layer.
  for norm, tree in shapes.items():
    # The convolutions are the same in every form: only the layers between them differ.
    assert {k: v for k, v in tree['params'].items() if k in convs} == convs, norm
  assert set(shapes['batch']['params']) - set(convs) == {'BatchNorm_0'}  # Not the input layer.
  assert set(shapes['layer']['params']) - set(convs) == {'LayerNorm_0'}
  # Per-channel scale and offset, as BatchNorm's.
  assert shapes['layer']['params']['LayerNorm_0'] == shapes['batch']['params']['BatchNorm_0']
  assert set(shapes['spectral']['params']) == set(shapes['none']['params']) == set(convs)
  assert 'batch_stats' not in shapes['layer'] and 'batch_stats' not in shapes['none']
  # One power-iteration vector (one entry per output channel) and sigma per layer.
  stats = shapes['spectral']['batch_stats']
  assert set(stats) == {f'SpectralNorm_{name}' for name in convs}
  assert stats['SpectralNorm_Conv_1'] == {'Conv_1/kernel/u': (1, 16), 'Conv_1/kernel/sigma': ()}


@pytest.mark.parametrize('norm', models.DISCRIMINATOR_NORMS)
def test_only_batch_norm_makes_an_examples_logit_depend_on_its_batch(norm):
  """In training, 'layer', 'spectral' and 'none' score each example alone (what a gradient
  penalty assumes); BatchNorm's batch statistics mix the batch."""
  disc = _norm_disc(norm)
  rng = np.random.default_rng(5)
  first = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  batch_a = jnp.asarray(np.concatenate([first, rng.uniform(-1, 1, (3, 16, 16, 3))]), jnp.float32)
  batch_b = jnp.asarray(np.concatenate([first, rng.uniform(-1, 1, (3, 16, 16, 3))]), jnp.float32)
  variables = _init(disc, batch_a)
  logit_a = disc.apply(variables, batch_a, mutable=['batch_stats'])[0][0]
  logit_b = disc.apply(variables, batch_b, mutable=['batch_stats'])[0][0]
  if norm == 'batch':
    assert abs(float(logit_a - logit_b)) > 1e-4
  else:
    np.testing.assert_allclose(logit_a, logit_b, rtol=1e-5, atol=1e-6)


def test_layer_norm_normalises_each_example_over_height_width_and_channels():
  disc = _norm_disc('layer')
  x = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  variables = _init(disc, x)
  _, inter = disc.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
  h = np.asarray(inter['intermediates']['Conv_1']['__call__'][0], np.float64)
  out = np.asarray(inter['intermediates']['LayerNorm_0']['__call__'][0])  # Scale 1, bias 0.
  mean = h.mean(axis=(1, 2, 3), keepdims=True)
  var = h.var(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(out, (h - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
  assert np.abs(out.mean(axis=(0, 1, 2))).max() > 1e-3  # Not per channel: per example.


def test_spectral_norm_divides_each_kernel_by_its_largest_singular_value():
  disc = _norm_disc('spectral')
  x = jnp.asarray(np.random.default_rng(7).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
  variables = _init(disc, x)
  train = jax.jit(lambda v: disc.apply(v, x, mutable=['batch_stats'])[1])
  for _ in range(300):  # Power iteration: one step per training call.
    variables = {'params': variables['params'], **train(variables)}
  for name, kernel in variables['params'].items():
    matrix = np.asarray(kernel['kernel']).reshape(-1, kernel['kernel'].shape[-1])
    largest = np.linalg.svd(matrix, compute_uv=False)[0]
    sigma = variables['batch_stats'][f'SpectralNorm_{name}'][f'{name}/kernel/sigma']
    np.testing.assert_allclose(sigma, largest, rtol=1e-3, err_msg=name)
  # Scaling every kernel changes nothing: each layer divides it out. Without spectral norm the
  # same scaling changes the logits.
  scaled = jax.tree.map(lambda p: 3.0 * p, variables['params'])
  logits = disc.apply(variables, x, train=False)
  np.testing.assert_allclose(disc.apply({**variables, 'params': scaled}, x, train=False), logits,
                             rtol=1e-4, atol=1e-6)
  plain = _norm_disc('none')
  assert not np.allclose(plain.apply({'params': scaled}, x, train=False),
                         plain.apply({'params': variables['params']}, x, train=False), rtol=1e-2)
  # Evaluation leaves the estimate alone.
  _, stats = disc.apply(variables, x, train=False, mutable=['batch_stats'])
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(variables['batch_stats'])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('norm', ['layer', 'spectral'])
def test_normalised_discriminator_in_bfloat16_keeps_float32_variables(norm):
  disc = _norm_disc(norm, dtype='bfloat16')
  x = jnp.zeros((2, 16, 16, 3))
  variables = _init(disc, x)
  logits, stats = disc.apply(variables, x, mutable=['batch_stats'])
  assert logits.dtype == jnp.float32 and logits.shape == (2,)
  for leaf in jax.tree.leaves((variables, stats)):
    assert leaf.dtype == jnp.float32


def test_bad_discriminator_norm_lists_valid_ones():
  with pytest.raises(UserError, match="norm must be one of batch, layer, spectral or none "
                                      r"\(got 'instance'\)"):
    _norm_disc('instance')
