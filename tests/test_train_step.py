"""The GAN step: one device == shard_map == pmap (8 CPU devices), bf16, options, bad batches."""
import functools
import logging
import pathlib
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dcgan_jax import (DataParallelStep, Discriminator, Generator, StepConfig, UserError,
                       create_gan_state, losses, make_train_step, parallel, register_loss)
from dcgan_jax.parallel import CUDA_COMPILER_OPTIONS, default_compiler_options

G = Generator(image_size=16, channels=3, latent_dim=16, width=8)
D = Discriminator(image_size=16, channels=3, width=8)


def _images(n=32, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, 16, 16, 3)).astype(np.uint8)


def _leaves(state):
  return (jax.tree.leaves(state.generator.params) + jax.tree.leaves(state.discriminator.params)
          + jax.tree.leaves(state.generator.batch_stats)
          + jax.tree.leaves(state.discriminator.batch_stats)
          + jax.tree.leaves(state.generator.opt_state)
          + jax.tree.leaves(state.discriminator.opt_state) + jax.tree.leaves(state.ema))


@pytest.fixture(scope='module')
def initial_state():
  return create_gan_state(jax.random.key(0), G, D, use_ema=True)


@pytest.mark.parametrize('step_config', [
    StepConfig(),
    pytest.param(StepConfig(loss='wasserstein', gradient_penalty_weight=10.0, d_steps=2),
                 marks=pytest.mark.slow),
], ids=['default', 'wgan_gp'])
def test_single_device_shard_map_and_pmap_agree(initial_state, step_config):
  assert jax.device_count() == 8
  images, rng = _images(), jax.random.key(1)
  single = jax.jit(make_train_step(G, D, step_config))
  ref_state, ref_metrics = single(initial_state, images, rng)
  for mode in ('shard_map', 'pmap'):
    step = DataParallelStep(G, D, step_config, parallelism=mode)
    assert step.num_devices == 8
    state = step.place_state(initial_state)
    state, metrics = step(state, step.place_batch(images), rng)
    host = step.host_state(state)
    metrics = step.host_metrics(metrics)
    assert set(metrics) == set(ref_metrics)
    for key, value in ref_metrics.items():
      assert metrics[key] == pytest.approx(float(value), abs=1e-5, rel=1e-5), (mode, key)
    for ours, ref in zip(_leaves(host), _leaves(ref_state)):
      np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=1e-5)
    assert int(host.step) == 1


@pytest.mark.parametrize('norm', ['layer', 'spectral'])
def test_normalised_discriminators_train_alike_on_one_and_eight_devices(norm):
  """WGAN-GP with a per-example critic: without batch statistics nothing crosses devices
  but the gradients, and spectral norm's estimate (batch_stats) advances identically on all."""
  disc = Discriminator(image_size=16, channels=3, width=8, norm=norm)
  initial = create_gan_state(jax.random.key(0), G, disc)
  config = StepConfig(loss='wasserstein', gradient_penalty_weight=10.0)
  images, rng = _images(), jax.random.key(1)
  ref_state, ref_metrics = jax.jit(make_train_step(G, disc, config))(initial, images, rng)
  step = DataParallelStep(G, disc, config, parallelism='shard_map')
  state, metrics = step(step.place_state(initial), step.place_batch(images), rng)
  host, metrics = step.host_state(state), step.host_metrics(metrics)
  for key, value in ref_metrics.items():
    assert metrics[key] == pytest.approx(float(value), abs=1e-5, rel=1e-5), key
  for ours, ref in zip(_leaves(host), _leaves(ref_state)):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=1e-5)
  stats = jax.tree.leaves(host.discriminator.batch_stats)
  if norm == 'layer':
    assert not stats
  else:  # u and sigma of 3 layers, moved by the step's D and G passes.
    assert len(stats) == 6
    assert not all(np.array_equal(a, b) for a, b in
                   zip(stats, jax.tree.leaves(initial.discriminator.batch_stats)))


def test_step_updates_everything_and_reports_metrics(initial_state):
  step = jax.jit(make_train_step(G, D, StepConfig(ema_decay=0.5)))
  new, metrics = step(initial_state, _images(8), jax.random.key(3))
  expected = {'d_loss', 'g_loss', 'd_real', 'd_fake_before', 'd_fake_after', 'd_grad_norm',
              'g_grad_norm'}
  assert set(metrics) == expected
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # The G step sees the updated D: D(G(z)) moves between the two passes.
  assert float(metrics['d_fake_before']) != float(metrics['d_fake_after'])
  for old_tree, new_tree in [(initial_state.generator.params, new.generator.params),
                             (initial_state.discriminator.params, new.discriminator.params),
                             (initial_state.generator.batch_stats, new.generator.batch_stats),
                             (initial_state.discriminator.batch_stats,
                              new.discriminator.batch_stats)]:
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(old_tree), jax.tree.leaves(new_tree))]
    assert all(changed)
  # EMA with decay 0.5 sits halfway between the old and the new params.
  for e0, p1, e1 in zip(jax.tree.leaves(initial_state.ema.params),
                        jax.tree.leaves(new.generator.params), jax.tree.leaves(new.ema.params)):
    np.testing.assert_allclose(e1, 0.5 * e0 + 0.5 * p1, rtol=1e-6, atol=1e-7)
  assert int(new.step) == 1 and int(new.generator.step) == 1


def test_d_steps_update_discriminator_more_often(initial_state):
  """D updates 3 times per G update, and each of the 3 batches of fakes G made in training mode
  moved G's BatchNorm running statistics (as three `netG(noise)` calls of a PyTorch loop do)."""
  rng, batch = jax.random.key(3), 8
  new, _ = jax.jit(make_train_step(G, D, StepConfig(d_steps=3)))(initial_state, _images(batch),
                                                                 rng)
  assert int(new.discriminator.step) == 3 and int(new.generator.step) == 1
  # The latents the step draws for its i-th D update (one device: the whole batch).
  stats = initial_state.generator.batch_stats
  for i in range(3):
    z = jax.random.normal(jax.random.split(jax.random.fold_in(rng, i))[0], (batch, G.latent_dim))
    _, updates = G.apply({'params': initial_state.generator.params, 'batch_stats': stats}, z,
                         train=True, mutable=['batch_stats'])
    stats = updates['batch_stats']
    if i == 0:
      after_one = stats
  for ours, three, one in zip(jax.tree.leaves(new.generator.batch_stats), jax.tree.leaves(stats),
                              jax.tree.leaves(after_one)):
    np.testing.assert_allclose(ours, three, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours, one, rtol=1e-5, atol=1e-6)


def _small_generator(with_axis_name_field):
  """A user's generator: BatchNorm with or without the `axis_name` field the step rebinds."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Plain(nn.Module):
    latent_dim: int = 16

    @nn.compact
    def __call__(self, z, train=True):
      x = nn.Dense(8 * 8 * 8)(z).reshape((-1, 8, 8, 8))
      x = nn.BatchNorm(use_running_average=not train, axis_name=getattr(self, 'axis_name', None),
                       name='bn')(x)
      # Running averages only: no batch statistics, so nothing to synchronise.
      x = nn.BatchNorm(use_running_average=True, name='frozen')(nn.relu(x))
      return jax.numpy.tanh(nn.ConvTranspose(3, (4, 4), strides=(2, 2))(x))

  class WithAxisName(Plain):
    axis_name: str | None = None

  return WithAxisName() if with_axis_name_field else Plain()


@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_batch_norm_without_axis_name_on_several_devices_warns(monkeypatch, parallelism):
  """Such a layer normalises per device and its copies drift apart: say so, naming the layer."""
  from dcgan_jax import train_step  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train_step, '_REPORTED_UNSYNCED_BATCH_NORMS', set())
  generator = _small_generator(with_axis_name_field=False)
  state = create_gan_state(jax.random.key(0), generator, D)
  step = DataParallelStep(generator, D, parallelism=parallelism)
  with pytest.warns(UserWarning, match=r'Plain: BatchNorm layer\(s\) bn have no axis_name') as caught:
    new, _ = step(step.place_state(state), step.place_batch(_images(8)), jax.random.key(1))
  assert len(caught) == 1  # 'frozen' uses running averages only; D's layers are synced.
  # The drift it warns about: the devices' running statistics differ.
  if parallelism == 'pmap':
    means = np.asarray(new.generator.batch_stats['bn']['mean'])
    assert np.abs(means - means[0]).max() > 1e-4


def test_batch_norm_with_axis_name_or_on_one_device_does_not_warn(monkeypatch):
  from dcgan_jax import train_step  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train_step, '_REPORTED_UNSYNCED_BATCH_NORMS', set())
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    synced = _small_generator(with_axis_name_field=True)
    state = create_gan_state(jax.random.key(0), synced, D)
    step = DataParallelStep(synced, D)
    new, _ = step(step.place_state(state), step.place_batch(_images(8)), jax.random.key(1))
    plain = _small_generator(with_axis_name_field=False)
    jax.jit(make_train_step(plain, D))(create_gan_state(jax.random.key(0), plain, D), _images(8),
                                       jax.random.key(1))
  assert int(step.host_state(new).step) == 1


def test_images_unlike_the_generators_are_one_clear_error(initial_state):
  """Caught while tracing, before D stacks the two batches (a raw concatenate error)."""
  step = jax.jit(make_train_step(G, D))
  images = _images(8)  # [8, 16, 16, 3]
  for bad, shown in ((images[:, :8, :8], r'\[N, 8, 8, 3\]'),
                     (images.transpose(0, 3, 1, 2), r'\[N, 3, 16, 16\]'),
                     (images[..., :1], r'\[N, 16, 16, 1\]')):
    with pytest.raises(UserError, match=rf'The training images are {shown} but Generator makes '
                                        r'\[N, 16, 16, 3\]'):
      step(initial_state, bad, jax.random.key(0))


def test_a_per_device_step_outside_its_mapping_is_one_clear_error(initial_state):
  """jax alone says "unbound axis name" from inside the first collective."""
  step = jax.jit(make_train_step(G, D, axis_name='batch'))
  with pytest.raises(UserError, match=r"axis_name='batch'.*no mapped axis is named 'batch'.*"
                                      r"axis_name=None for a plain jax.jit"):
    step(initial_state, _images(8), jax.random.key(0))


def test_a_per_device_step_under_shard_maps_replication_checks_is_one_clear_error(
    initial_state):
  """With check_vma=True (shard_map's default) jax sums the replicated parameters' gradients
  itself: the step's pmean then gave the device count times the gradient (the library's
  BatchNorm failed with a cotangent type error instead)."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((2,), ('batch',), devices=jax.devices()[:2])
  body = make_train_step(G, D, axis_name='batch')
  state = jax.device_put(initial_state, jax.sharding.NamedSharding(mesh, P()))
  images = jax.device_put(_images(8), jax.sharding.NamedSharding(mesh, P('batch')))
  key = jax.device_put(jax.random.key(0), jax.sharding.NamedSharding(mesh, P()))
  # Also with the batch replicated (P()): the sums come from the step's own draws then.
  for check_vma, image_spec in ((True, P('batch')), (True, P()), (False, P('batch'))):
    step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), image_spec, P()),
                                 out_specs=(P(), P()), check_vma=check_vma))
    if check_vma:
      with pytest.raises(UserError, match=r'check_vma=True .* multiply them by the device count: '
                                          r'pass check_vma=False to jax.shard_map'):
        step(state, jax.device_put(images, jax.sharding.NamedSharding(mesh, image_spec)), key)
    else:  # As parallel.DataParallelStep runs it.
      new_state, metrics = step(state, images, key)
      assert int(new_state.step) == 1 and np.isfinite(float(metrics['d_loss']))


@pytest.mark.parametrize('activation', ['tanh', 'sigmoid'])
def test_float_images_far_outside_the_generators_range_are_refused(activation):
  g = G.clone(output_activation=activation)
  step = DataParallelStep(g, D)
  images = _images(8)
  with pytest.raises(UserError, match=r'Training images are float32 in \[.*\], outside the '
                                      r"generator's range .*pass uint8 images"):
    step.place_batch(images.astype(np.float32))  # 0..255 as floats.
  low = -1.0 if activation == 'tanh' else 0.0
  in_range = low + images.astype(np.float32) / 255.0 * (1.0 - low)
  assert step.place_batch(in_range).shape == images.shape
  assert step.place_batch(np.clip(in_range * 1.05, low - 0.05, 1.05)).shape == images.shape
  nan = in_range.copy()
  nan[0, 0, 0, 0] = np.nan
  with pytest.raises(UserError, match='NaN or infinite'):
    step.place_batch(nan)


def test_modules_without_what_the_step_calls_them_with_are_one_clear_error():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class NoTrainArgument(nn.Module):
    @nn.compact
    def __call__(self, images):
      return nn.Dense(1)(images.reshape((images.shape[0], -1)))[:, 0]

  class NoLatentDim(nn.Module):
    @nn.compact
    def __call__(self, z, train=True):
      return nn.Dense(16 * 16 * 3)(z).reshape((-1, 16, 16, 3))

  class TakesKeywords(NoTrainArgument):
    def __call__(self, images, **kwargs):  # Decides for itself.
      return super().__call__(images)

  conditional_g = G.clone(num_classes=3)
  for generator, discriminator, message in (
      (G, NoTrainArgument(), r'The discriminator NoTrainArgument must take train= in __call__'),
      (NoLatentDim(), D, r'The generator NoLatentDim needs a `latent_dim` attribute'),
      (conditional_g, NoTrainArgument(),
       r'must take train= and labels= in __call__: .* and the class labels')):
    with pytest.raises(UserError, match=message):
      create_gan_state(jax.random.key(0), generator, discriminator)
  state = create_gan_state(jax.random.key(0), G, TakesKeywords())
  assert set(state.discriminator.params) == {'Dense_0'}
  # Not linen modules (an nnx.Module has no init/apply): said at once, by both entry points.
  not_linen = types.SimpleNamespace(latent_dim=16)
  with pytest.raises(UserError, match='The generator SimpleNamespace must be a flax.linen Module'):
    create_gan_state(jax.random.key(0), not_linen, D)
  with pytest.raises(UserError,
                     match='The discriminator SimpleNamespace must be a flax.linen Module'):
    make_train_step(G, not_linen)


def test_a_state_of_other_models_than_the_steps_is_one_clear_error(initial_state):
  """flax's ScopeParamShapeError (11 frames deep) named the variable, not the cause."""
  step = jax.jit(make_train_step(G.clone(latent_dim=32), D))
  with pytest.raises(UserError, match=r"The state does not fit this step's models: For "
                                      r'parameter "kernel" in "/project".*\(32, .*\(16, .*'
                                      r'Create the state \(create_gan_state\) from the same '
                                      r'generator and discriminator'):
    step(initial_state, _images(4), jax.random.key(1))
  # A collection of a module's own, which no state holds, is not blamed on the state.
  import flax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class CountingD(nn.Module):
    @nn.compact
    def __call__(self, images, train=True):
      seen = self.variable('counters', 'seen', lambda: jnp.zeros((), jnp.int32))
      if train and not self.is_initializing():
        seen.value += 1
      return nn.Dense(1)(images.reshape((images.shape[0], -1)))[:, 0]

  state = create_gan_state(jax.random.key(0), G, CountingD())
  with pytest.raises(flax.errors.ScopeCollectionNotFound, match='counters'):
    jax.jit(make_train_step(G, CountingD()))(state, _images(4), jax.random.key(1))


def _dropout_discriminator(rate):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class DropoutD(nn.Module):
    """A user's D with dropout (as in the original GAN's maxout discriminator)."""

    @nn.compact
    def __call__(self, images, train=True):
      x = nn.leaky_relu(nn.Conv(8, (4, 4), strides=(2, 2))(images), 0.2)
      x = nn.Dropout(rate, deterministic=not train)(x)
      return nn.Dense(1)(x.reshape((x.shape[0], -1)))[:, 0]

  return DropoutD()


@pytest.mark.parametrize('parallelism', [None, 'shard_map'])
def test_modules_with_dropout_get_their_random_numbers(parallelism):
  """Dropout draws its masks from the step's key: it trains (it would fail without a
  'dropout' key), a rate of 0 is the deterministic network, and the masks follow `rng`."""
  images = _images(16)
  results = {}
  for rate in (0.0, 0.5):
    d = _dropout_discriminator(rate)
    state = create_gan_state(jax.random.key(0), G, d)
    if parallelism is None:
      step = jax.jit(make_train_step(G, d))
      run = lambda rng, step=step, state=state: step(state, images, rng)[1]  # pylint: disable=cell-var-from-loop
      metrics_of = lambda m: {k: float(v) for k, v in m.items()}
    else:
      step = DataParallelStep(G, d, parallelism=parallelism, donate=False)
      placed = (step.place_state(state), step.place_batch(images))
      run = lambda rng, step=step, placed=placed: step(*placed, rng)[1]  # pylint: disable=cell-var-from-loop
      metrics_of = step.host_metrics
    results[rate] = [metrics_of(run(jax.random.key(i))) for i in (1, 1, 2)]
  for rate, (first, again, other) in results.items():
    assert first == again  # Same key, same masks.
    assert all(np.isfinite(v) for v in first.values())
  # D's verdict on the same real images (before its update) changes with the key only when
  # it drops units.
  assert results[0.0][0]['d_real'] == results[0.0][2]['d_real']
  assert results[0.5][0]['d_real'] != results[0.5][2]['d_real']
  assert results[0.5][0]['d_real'] != results[0.0][0]['d_real']


def test_a_gradient_penalty_through_batch_norm_warns_in_a_custom_loop():
  """As the training program does (run_checks.config_warnings), and only there once."""
  from dcgan_jax import train_step  # pylint: disable=g-import-not-at-top
  penalty = StepConfig(loss='wasserstein', gradient_penalty_weight=10.0)
  with pytest.warns(train_step.PenaltyWithBatchNormWarning, match="Discriminator\\(norm='layer'\\)"):
    make_train_step(G, D, penalty)
  # R1 is a gradient penalty too (on real images), with the same trouble.
  with pytest.warns(train_step.PenaltyWithBatchNormWarning, match='^r1_weight > 0 with a Batch'):
    make_train_step(G, D, StepConfig(r1_weight=1.0))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    make_train_step(G, D.clone(norm='layer'), penalty)
    # At 8x8 D has its input layer alone, which carries no BatchNorm.
    make_train_step(G.clone(image_size=8), D.clone(image_size=8), penalty)
  # A user's D says nothing of its norm: its BatchNorm layers are found while tracing, once.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class BatchNormD(nn.Module):
    batch_norm: bool = True

    @nn.compact
    def __call__(self, images, train=True):
      x = nn.Conv(8, (4, 4), strides=(2, 2))(images)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train)(x)
      return nn.Dense(1)(x.reshape((x.shape[0], -1)))[:, 0]

  # (Said once per module name and process: forget an earlier run of this test.)
  train_step._REPORTED_PENALTY_WITH_BATCH_NORM.discard('BatchNormD')  # pylint: disable=protected-access
  for discriminator, warns in ((BatchNormD(), True), (BatchNormD(batch_norm=False), False)):
    state = create_gan_state(jax.random.key(0), G, discriminator)
    step = jax.jit(make_train_step(G, discriminator, penalty))
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      state, _ = step(state, _images(4), jax.random.key(1))
      step(state, _images(4), jax.random.key(2))
    said = [str(w.message) for w in caught
            if issubclass(w.category, train_step.PenaltyWithBatchNormWarning)]
    assert said == (['gradient_penalty_weight > 0 with BatchNormD, which has BatchNorm layers: '
                     'BatchNorm mixes the examples of a batch, so the penalty does not see each '
                     "example's own gradient; WGAN-GP's critic (and StyleGAN's, for R1) uses "
                     "Discriminator(norm='layer') (or 'none')."] if warns else []), said


def test_bfloat16_step_keeps_float32_state():
  g, d = G.clone(dtype='bfloat16'), D.clone(dtype='bfloat16')
  state = create_gan_state(jax.random.key(0), g, d)
  step = DataParallelStep(g, d, StepConfig(), parallelism='shard_map')
  new, metrics = step(step.place_state(state), step.place_batch(_images()), jax.random.key(1))
  host = step.host_state(new)
  dtypes = {np.asarray(x).dtype for x in jax.tree.leaves(
      (host.generator.params, host.generator.batch_stats, host.discriminator.params,
       host.discriminator.batch_stats, host.generator.opt_state))}
  assert dtypes <= {np.dtype(np.float32), np.dtype(np.int32)}
  assert all(np.isfinite(v) for v in step.host_metrics(metrics).values())


def test_batch_not_divisible_by_devices_is_a_clear_error(initial_state):
  step = DataParallelStep(G, D, StepConfig(), parallelism='shard_map')
  with pytest.raises(UserError, match='not divisible by the 8 devices'):
    step.place_batch(_images(12))


def test_a_state_given_again_after_the_step_consumed_it_is_a_clear_error(initial_state):
  """The step donates its state; giving that state again crashed Python (a segmentation fault
  in XLA with 8 devices, jax 0.10) instead of raising."""
  step = DataParallelStep(G, D, StepConfig(), parallelism='shard_map')
  state, batch, rng = step.place_state(initial_state), step.place_batch(_images()), jax.random.key(1)
  # Keys: split ones and an int seed were raw jax errors (fold_in's, "invalid PRNG key data").
  for keys in (jax.random.split(rng, 8), jax.random.split(jax.random.PRNGKey(1), 8)):
    with pytest.raises(UserError, match=r'one PRNG key \(got keys of shape \(8,\)\)'):
      step(state, batch, keys)
  for seed in (0, np.float32(1), np.zeros((), np.int32)):
    with pytest.raises(UserError, match=r'The step takes one PRNG key, such as '
                                        r'jax.random.key\(seed\)'):
      step(state, batch, seed)
  step(state, batch, rng)  # The result is dropped: a common slip.
  with pytest.raises(UserError, match='donated to an earlier step call.*state, metrics = step'):
    step(state, batch, rng)


def test_pmap_mistakes_are_clear_errors(initial_state):
  """Each was a raw jax error from inside pmap (IndexError, a squeeze error, fold_in's)."""
  step = DataParallelStep(G, D, StepConfig(), parallelism='pmap')
  images, rng = _images(), jax.random.key(1)
  placed_state, placed_batch = step.place_state(initial_state), step.place_batch(images)
  with pytest.raises(UserError, match=r'leading axis of 8 devices \(got a step counter of shape '
                                      r'\(\)\): pass it through step.place_state'):
    step(initial_state, placed_batch, rng)
  with pytest.raises(UserError, match=r'images of shape \(32, 16, 16, 3\)\): pass it through '
                                      r'step.place_batch'):
    step(placed_state, images, rng)
  for keys in (jax.random.split(rng, 8), jax.random.split(jax.random.PRNGKey(1), 8)):
    with pytest.raises(UserError, match=r'one PRNG key \(got keys of shape \(8,\)\)'):
      step(placed_state, placed_batch, keys)
  # place_batch wants [rows, H, W, C]: it split any array into a device axis all the same,
  # and the step then said to call place_batch, which had been called.
  with pytest.raises(UserError, match=r'\[batch, height, width, channels\] \(got \(32, 16, '
                                      r'16\)\); for grey images add the channel axis'):
    step.place_batch(images[..., 0])
  with pytest.raises(UserError, match=r'already has the leading device axis \(place each batch '
                                      r'once'):
    step.place_batch(placed_batch)
  # Right: both key forms run.
  state, _ = step(placed_state, placed_batch, rng)
  state, _ = step(state, step.place_batch(images), jax.random.PRNGKey(2))
  assert int(step.host_state(state).step) == 2


def test_labels_of_the_wrong_shape_are_refused_by_place_batch():
  """[N, 1] labels used to pass and then fail inside the step with one device's shapes."""
  g = Generator(image_size=16, channels=3, latent_dim=16, width=8, num_classes=10)
  d = Discriminator(image_size=16, channels=3, width=8, num_classes=10)
  step = DataParallelStep(g, d, StepConfig(), parallelism='shard_map')
  labels = np.arange(16) % 10
  with pytest.raises(UserError, match=r'one class index per image, shape \[batch\] \(got '
                                      r'\(16, 1\) for images \(16, 16, 16, 3\)\)'):
    step.place_batch((_images(16), labels[:, None]))
  assert step.place_batch((_images(16), labels))[1].shape == (16,)


def test_create_gan_state_refuses_generator_and_discriminator_of_other_classes():
  g = Generator(image_size=16, channels=3, latent_dim=16, width=8, num_classes=10)
  with pytest.raises(UserError, match='generator has num_classes=10 but the discriminator 0'):
    create_gan_state(jax.random.key(0), g, D)
  # Sizes or channels that differ: named as G's and D's (was D's shape error on G's images).
  with pytest.raises(UserError, match=r'The generator makes images of shape \(8, 8, 3\) but the '
                                      r'discriminator takes \(16, 16, 3\)'):
    create_gan_state(jax.random.key(0), G.clone(image_size=8), D)
  with pytest.raises(UserError, match=r'shape \(16, 16, 3\) but the discriminator takes '
                                      r'\(16, 16, 1\)'):
    create_gan_state(jax.random.key(0), G, D.clone(channels=1))


def test_bad_step_options_are_rejected():
  # A custom loss's run resumed in a new process (a restarted notebook kernel) lands here too.
  with pytest.raises(UserError, match=r"loss must be one of .* \(got 'nope'\); a loss of your "
                                      r'own must be registered \(dcgan_jax.register_loss\)'):
    StepConfig(loss='nope')
  for bad in (0, -1, 2.0, True, '2'):
    with pytest.raises(UserError, match='d_steps must be a positive integer'):
      StepConfig(d_steps=bad)
  assert StepConfig(d_steps=np.int64(2)) == StepConfig(d_steps=2)  # Read from numpy: fine.
  assert type(StepConfig(d_steps=np.int64(2)).d_steps) is int
  with pytest.raises(UserError, match='parallelism'):
    DataParallelStep(G, D, parallelism='dp')
  # A NaN weight passed every range check and the step's `> 0` tests alike: WGAN-GP silently
  # trained as a plain WGAN. Strings (a config typo) were a TypeError from a comparison.
  for field in ('gradient_penalty_weight', 'r1_weight', 'real_label', 'ema_decay',
                'augment_probability', 'ada_target'):
    for bad in (float('nan'), float('inf'), '10', True, None):
      with pytest.raises(UserError, match=f'{field} must be a finite number'):
        StepConfig(**{field: bad})
  with pytest.raises(UserError, match=r'r1_weight must be >= 0 \(0 turns the penalty off; got '
                                      r'-1.0\)'):
    StepConfig(r1_weight=-1)
  numpy_weights = StepConfig(r1_weight=np.float32(2), gradient_penalty_weight=1)
  assert type(numpy_weights.r1_weight) is float and numpy_weights.r1_weight == 2.0
  assert hash(numpy_weights) == hash(StepConfig(r1_weight=2.0, gradient_penalty_weight=1.0))


def test_make_optimizer_refuses_rates_that_cannot_train_and_takes_traced_ones():
  from dcgan_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  for bad in (-2e-4, 0.0, float('nan'), '2e-4', True):
    with pytest.raises(UserError, match='learning rates must be positive numbers'):
      state_lib.make_optimizer(bad)
    with pytest.raises(UserError, match='learning rates must be positive numbers'):
      state_lib.make_schedule(bad)
  # optax.inject_hyperparams passes traced values inside jit: no check may read them. (The
  # betas' check used to fail there with a TracerBoolConversionError.)
  tx = optax.inject_hyperparams(state_lib.make_optimizer)(learning_rate=1e-3, b1=0.5)
  params = {'w': jnp.ones(3)}
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -1e-3, rtol=1e-4)


def test_an_empty_batch_is_refused_while_tracing(initial_state):
  """It ran: every metric NaN, G's parameters NaN and the step counter advanced."""
  with pytest.raises(UserError, match=r'The batch has no images \(shape \(0, 16, 16, 3\)\)'):
    jax.jit(make_train_step(G, D))(initial_state, _images(0), jax.random.key(1))


def test_shard_map_step_refuses_an_unplaced_state_and_keeps_it(initial_state):
  """A state on one device was moved to the mesh and its arrays donated (deleted) without a
  word; pmap already refused it."""
  step = DataParallelStep(G, D, StepConfig(), parallelism='shard_map')
  one_device = jax.device_put(initial_state, jax.devices()[0])
  with pytest.raises(UserError, match=r'not laid out for this step \(it sits on .*8 device\(s\).*'
                                      r'step.place_state\(state\) first'):
    step(one_device, step.place_batch(_images()), jax.random.key(1))
  assert not any(x.is_deleted() for x in jax.tree.leaves(one_device))
  # An unplaced batch that does not split over the devices: one line, not shard_map's message.
  with pytest.raises(UserError, match='batch_size 12 is not divisible by the 8 devices'):
    step(step.place_state(one_device), _images(12), jax.random.key(1))
  state, _ = step(step.place_state(one_device), _images(), jax.random.key(1))  # Placed: runs.
  state, _ = step(state, step.place_batch(_images()), jax.random.key(2))  # Its own output too.
  assert int(step.host_state(state).step) == 2
  # A batch or key committed to one device: jax's error named the state's step counter.
  on_one = jax.device_put(_images(), jax.devices()[0])
  with pytest.raises(UserError, match=r'The batch sits on .*0, but this step runs on 8 devices: '
                                      r'pass it through step.place_batch'):
    step(state, on_one, jax.random.key(3))
  with pytest.raises(UserError, match=r'The key sits on .*0, but this step runs on 8 devices'):
    step(state, step.place_batch(_images()),
         jax.device_put(jax.random.key(3), jax.devices()[0]))
  state, _ = step(state, jnp.asarray(_images()), jax.random.key(3))  # Uncommitted: runs.
  # A state laid out by a pmap step (a leading device axis).
  pmap_state = DataParallelStep(G, D, parallelism='pmap').place_state(initial_state)
  with pytest.raises(UserError, match=r'leading axis of 8 devices, as a pmap step.*'
                                      r'pmap_step.host_state\(state\)'):
    step(pmap_state, step.place_batch(_images()), jax.random.key(4))
  assert int(step.host_state(state).step) == 3


def test_place_batch_takes_label_lists_and_warns_about_unit_range_floats():
  g = Generator(image_size=16, channels=3, latent_dim=16, width=8, num_classes=10)
  d = Discriminator(image_size=16, channels=3, width=8, num_classes=10)
  step = DataParallelStep(g, d, StepConfig(), parallelism='shard_map')
  labels = [i % 10 for i in range(16)]
  placed = step.place_batch((_images(16), labels))  # Was an AttributeError ('list' ... shape).
  np.testing.assert_array_equal(np.asarray(placed[1]), labels)
  with pytest.raises(UserError, match='class indices in \\[0, 10\\)'):
    step.place_batch((_images(16), [10] * 16))
  with pytest.raises(UserError, match='got a sequence of 16 .*stack a list of images'):
    step.place_batch(list(_images(16)))
  # x / 255 without the `* 2 - 1`: inside tanh's range, so not refused, but named once.
  unit = _images(16).astype(np.float32) / 255
  with pytest.warns(UserWarning, match=r'float32 in \[0, .*\] but the generator makes \[-1, 1\] '
                                       r'\(tanh\).*x \* 2 - 1'):
    step.place_batch((unit, labels))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    step.place_batch((unit, labels))  # Once per step object.
    fresh = DataParallelStep(g, d, StepConfig(), parallelism='shard_map')
    fresh.place_batch((unit * 2 - 1, labels))  # Scaled right: no warning.


def test_library_warnings_name_the_users_line_on_every_call_path(monkeypatch):
  """A fixed stacklevel named one of our lines where the call came through DataParallelStep
  or from inside a traced step; the user's own line is the one they can change."""
  from dcgan_jax import train_step  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train_step, '_REPORTED_UNSYNCED_BATCH_NORMS', set())
  penalty = StepConfig(loss='wasserstein', gradient_penalty_weight=10.0)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    make_train_step(G, D, penalty)                       # Directly,
    DataParallelStep(G, D, penalty, parallelism='pmap')  # through the data-parallel step,
    step = DataParallelStep(G, D, StepConfig(), parallelism='shard_map')
    step.place_batch(_images(8).astype(np.float32) / 255)  # from a method of ours,
    generator = _small_generator(with_axis_name_field=False)
    plain = DataParallelStep(generator, D, parallelism='shard_map')
    plain(plain.place_state(create_gan_state(jax.random.key(0), generator, D)),
          plain.place_batch(_images(8)), jax.random.key(1))  # and while the step traces.
  messages = [str(w.message)[:40] for w in caught]
  assert len(caught) == 4, messages
  assert {pathlib.Path(w.filename).name for w in caught} == {'test_train_step.py'}, [
      (w.filename, w.lineno) for w in caught]


@pytest.fixture
def registry():
  """Registers custom losses for one test and removes them afterwards."""
  before = dict(losses.LOSSES)
  yield
  losses.LOSSES.clear()
  losses.LOSSES.update(before)


def test_registered_loss_drives_the_step(initial_state, registry):
  # The hinge objective under a new name gives the built-in hinge step exactly; a scaled copy
  # (2x both losses) reports twice the losses and moves the parameters differently.
  register_loss('my_hinge', losses.hinge_d_loss, losses.hinge_g_loss)
  register_loss('double_hinge', lambda r, f, label: 2 * losses.hinge_d_loss(r, f, label),
                lambda f: 2 * losses.hinge_g_loss(f))
  images, rng = _images(8), jax.random.key(5)
  results = {name: jax.jit(make_train_step(G, D, StepConfig(loss=name)))(initial_state, images,
                                                                         rng)
             for name in ('hinge', 'my_hinge', 'double_hinge')}
  (ref, ref_m), (mine, mine_m), (double, double_m) = results.values()
  for a, b in zip(_leaves(ref), _leaves(mine)):
    np.testing.assert_array_equal(a, b)
  assert float(double_m['d_loss']) == pytest.approx(2 * float(ref_m['d_loss']), rel=1e-5)
  assert float(double_m['g_loss']) == pytest.approx(2 * float(ref_m['g_loss']), rel=1e-3)
  assert float(double_m['d_grad_norm']) == pytest.approx(2 * float(ref_m['d_grad_norm']),
                                                         rel=1e-5)
  assert 'double_hinge' in str(pytest.raises(UserError, StepConfig, loss='nope').value)


@pytest.mark.parametrize('name,kwargs,message', [
    ('hinge', {}, "'hinge' is a built-in loss and cannot be replaced"),
    ('has space', {}, 'A loss name must be an identifier'),
    ('custom', {'g_loss': 3}, 'd_loss and g_loss must be callables'),
    ('two_args', {'d_loss': lambda real, fake: real.mean()},
     r'd_loss must take 3 positional arguments \(real_logits, fake_logits, real_label\); '
     r'<lambda>\(real, fake\) does not'),
    ('swapped', {'d_loss': losses.hinge_g_loss, 'g_loss': losses.hinge_d_loss},
     r'd_loss must take 3 positional arguments .*\(d_loss and g_loss swapped\?\)'),
])
def test_register_loss_rejects_bad_input(registry, name, kwargs, message):
  args = {'d_loss': losses.hinge_d_loss, 'g_loss': losses.hinge_g_loss, **kwargs}
  with pytest.raises(UserError, match=message):
    register_loss(name, **args)
  assert name not in losses.LOSSES or name == 'hinge'


def test_a_loss_that_is_not_a_scalar_is_named_while_tracing(initial_state, registry):
  register_loss('per_example', lambda real, fake, label: jax.nn.softplus(-real) + fake,
                losses.hinge_g_loss)
  with pytest.raises(UserError, match=r'per_example d_loss must return a scalar \(e.g. the mean '
                                      r'over the batch\); it returned shape \(8,\)'):
    jax.jit(make_train_step(G, D, StepConfig(loss='per_example')))(initial_state, _images(8),
                                                                   jax.random.key(0))
  # *args and functools.partial objects pass the signature check.
  register_loss('flexible', lambda *logits: losses.hinge_d_loss(*logits),
                functools.partial(losses.least_squares_g_loss))


def test_register_loss_twice_needs_overwrite(registry):
  register_loss('mine', losses.hinge_d_loss, losses.hinge_g_loss)
  with pytest.raises(UserError, match="'mine' is already registered; pass overwrite=True"):
    register_loss('mine', losses.least_squares_d_loss, losses.least_squares_g_loss)
  assert losses.get_loss('mine').d_loss is losses.hinge_d_loss  # Kept.
  register_loss('mine', losses.least_squares_d_loss, losses.least_squares_g_loss, overwrite=True)
  assert losses.get_loss('mine').d_loss is losses.least_squares_d_loss


def test_compiler_options_reach_the_step_program(initial_state):
  """XLA options compile into the step (a bad one fails at compile time); pmap takes none."""
  images, rng = _images(), jax.random.key(1)
  plain = DataParallelStep(G, D)
  tuned = DataParallelStep(G, D, compiler_options={'xla_gpu_graph_min_graph_size': 1})
  assert tuned.compiler_options == {'xla_gpu_graph_min_graph_size': 1}
  # A GPU-only option leaves the CPU program's results unchanged.
  ref = plain.host_state(plain(plain.place_state(initial_state), plain.place_batch(images),
                               rng)[0])
  got = tuned.host_state(tuned(tuned.place_state(initial_state), tuned.place_batch(images),
                               rng)[0])
  for ours, want in zip(_leaves(got), _leaves(ref)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(want))
  bad = DataParallelStep(G, D, compiler_options={'xla_no_such_option': 1})
  with pytest.raises(Exception, match='xla_no_such_option'):
    bad(bad.place_state(initial_state), bad.place_batch(images), rng)
  with pytest.raises(UserError, match="compiler_options need parallelism='shard_map'"):
    DataParallelStep(G, D, parallelism='pmap', compiler_options={'xla_gpu_graph_min_graph_size': 1})


def _fake_device(platform, version):
  return types.SimpleNamespace(platform=platform,
                               client=types.SimpleNamespace(platform_version=version))


def test_auto_compiler_options_follow_the_platform(initial_state, monkeypatch, caplog):
  """'auto' means the CUDA command-buffer options on NVIDIA GPUs only; an option this jaxlib
  rejects falls back to none with a warning; the CUDA set leaves the step's results as they are."""
  assert DataParallelStep(G, D).compiler_options == {}  # CPU here.
  assert DataParallelStep(G, D, parallelism='pmap').compiler_options == {}
  assert default_compiler_options([_fake_device('gpu', 'CUDA 13.0')]) == CUDA_COMPILER_OPTIONS
  assert default_compiler_options([_fake_device('gpu', 'PJRT C API\ncuda 13000')]) == (
      CUDA_COMPILER_OPTIONS)
  assert default_compiler_options([_fake_device('gpu', 'rocm 6.2')]) == {}
  assert default_compiler_options([_fake_device('tpu', 'TPU v5')]) == {}
  with pytest.raises(UserError, match="compiler_options must be 'auto'"):
    DataParallelStep(G, D, compiler_options='fast')
  # The CUDA set parses on any backend (a GPU-only option); on CPU it changes nothing.
  images, rng = _images(), jax.random.key(1)
  plain = DataParallelStep(G, D, compiler_options=None)
  cuda = DataParallelStep(G, D, compiler_options=CUDA_COMPILER_OPTIONS)
  ref = plain.host_state(plain(plain.place_state(initial_state), plain.place_batch(images),
                               rng)[0])
  got = cuda.host_state(cuda(cuda.place_state(initial_state), cuda.place_batch(images), rng)[0])
  for ours, want in zip(_leaves(got), _leaves(ref)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(want))
  # A jaxlib that does not know a command type: no options, not a step that cannot compile.
  monkeypatch.setattr(parallel, 'CUDA_COMPILER_OPTIONS',
                      {'xla_gpu_enable_command_buffer': 'FUSION,NO_SUCH_COMMAND'})
  with caplog.at_level(logging.WARNING):
    assert default_compiler_options([_fake_device('gpu', 'cuda 12.8')]) == {}
  assert 'NO_SUCH_COMMAND' in caplog.text and 'compiling without them' in caplog.text


def test_images_reach_the_models_range_and_other_integers_are_refused():
  from dcgan_jax.train_step import images_to_model_range  # pylint: disable=g-import-not-at-top
  pixels = np.array([[0, 128, 255]], np.uint8)
  np.testing.assert_allclose(images_to_model_range(pixels), [[-1.0, 128 / 127.5 - 1, 1.0]],
                             atol=1e-6)
  np.testing.assert_allclose(images_to_model_range(pixels, 'sigmoid'), [[0.0, 128 / 255, 1.0]],
                             atol=1e-6)
  scaled = np.array([[-0.5, 0.25]], np.float32)
  np.testing.assert_array_equal(images_to_model_range(scaled), scaled)  # Already in range.
  for dtype in (np.int32, np.uint16):  # Their range is unknown: no silent 0..255 pass-through.
    with pytest.raises(UserError, match='must be uint8 .* got ' + np.dtype(dtype).name):
      images_to_model_range(pixels.astype(dtype))
  # Anything but the two activations was taken as sigmoid: a custom G's 'Tanh' trained on
  # [0, 1] reals against [-1, 1] fakes without a word.
  with pytest.raises(UserError, match=r"output_activation must be one of tanh or sigmoid "
                                      r"\(got 'Tanh'\)"):
    images_to_model_range(pixels, 'Tanh')
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class MisspeltActivation(nn.Module):
    latent_dim: int = 16
    output_activation: str = 'Tanh'

    @nn.compact
    def __call__(self, z, train=True):
      return jnp.tanh(nn.Dense(16 * 16 * 3)(z)).reshape((-1, 16, 16, 3))

  for build in (lambda: make_train_step(MisspeltActivation(), D),
                lambda: DataParallelStep(MisspeltActivation(), D)):
    with pytest.raises(UserError, match=r"The generator MisspeltActivation has output_activation "
                                        r"'Tanh'; .* must be 'tanh' \(\[-1, 1\]\) or 'sigmoid'"):
      build()


def test_decaying_learning_rate_schedules_need_their_length():
  from dcgan_jax.state import make_schedule  # pylint: disable=g-import-not-at-top
  for kind in ('cosine', 'linear'):
    with pytest.raises(UserError, match=f'{kind} schedule decays over num_steps'):
      make_schedule(2e-4, kind)
    schedule = make_schedule(2e-4, kind, num_steps=100)
    assert float(schedule(0)) == pytest.approx(2e-4) and 0 < float(schedule(50)) < 2e-4
  assert float(make_schedule(2e-4)(10**6)) == pytest.approx(2e-4)  # Constant needs none.


def test_warmup_must_be_a_whole_number_of_steps():
  from dcgan_jax.state import make_schedule  # pylint: disable=g-import-not-at-top
  for bad in (-5, 2.5, True, '10'):
    with pytest.raises(UserError, match=r'warmup_steps must be a whole number >= 0'):
      make_schedule(1e-3, 'cosine', 100, warmup_steps=bad)
  schedule = make_schedule(1e-3, 'cosine', 100, warmup_steps=np.int64(10))
  assert float(schedule(0)) == 0.0 and float(schedule(100)) == pytest.approx(0.0, abs=1e-12)


def test_the_state_is_initialised_by_one_program_compiled_without_llvm_optimisation(monkeypatch):
  """On CPU, the one-off initialisation compiles at LLVM -O0 (8.4 s -> 1.2 s for the default
  config on 2 cores); inside another trace, where compiler options are refused, it still works.
  The values are flax's own initialisation to within float32 rounding."""
  import dcgan_jax.state as state_module  # pylint: disable=g-import-not-at-top
  options_seen = []

  class RecordingJax:
    def __getattr__(self, name):
      return getattr(jax, name)

    def jit(self, fun, **kwargs):
      options_seen.append(kwargs.get('compiler_options'))
      return jax.jit(fun, **kwargs)

  monkeypatch.setattr(state_module, 'jax', RecordingJax())
  key = jax.random.key(3)
  state = create_gan_state(key, G, D)
  assert options_seen == [{'xla_backend_optimization_level': 0}]  # CPU: the tests' backend.
  g_key, d_key = jax.random.split(key)
  z = jnp.zeros((2, G.latent_dim), jnp.float32)
  flax_g = jax.jit(lambda k: G.init(k, z, train=False))(g_key)['params']
  flax_d = jax.jit(lambda k: D.init(k, jnp.zeros((2, 16, 16, 3)), train=False))(d_key)['params']
  for ours, theirs in ((state.generator.params, flax_g), (state.discriminator.params, flax_d)):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2.5e-7)
  # Traced inside jax.eval_shape and jax.jit (where nested programs take no options).
  options_seen.clear()
  shapes = jax.eval_shape(lambda: create_gan_state(key, G, D))
  traced = jax.jit(lambda k: create_gan_state(k, G, D))(key)
  assert ([(x.shape, x.dtype) for x in jax.tree.leaves(shapes)]
          == [(x.shape, x.dtype) for x in jax.tree.leaves(state)])
  for a, b in zip(jax.tree.leaves(traced), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2.5e-7)
