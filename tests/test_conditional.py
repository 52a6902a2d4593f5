"""Class-conditional models: one-hot G input, projection D, labelled batches in the step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dcgan_jax import (DataParallelStep, Discriminator, Generator, StepConfig, UserError,
                       create_gan_state, make_train_step)
from dcgan_jax import models

CLASSES = 4
G = Generator(image_size=16, channels=3, latent_dim=16, width=8, num_classes=CLASSES)
D = Discriminator(image_size=16, channels=3, width=8, num_classes=CLASSES)


def _batch(n=32, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.randint(0, 256, (n, 16, 16, 3)).astype(np.uint8),
          rng.randint(0, CLASSES, (n,)).astype(np.int32))


@pytest.fixture(scope='module')
def initial_state():
  return create_gan_state(jax.random.key(0), G, D, use_ema=True)


def test_generator_appends_one_hot_labels_to_z(initial_state):
  params = initial_state.generator.params
  assert params['project']['kernel'].shape == (16 + CLASSES, 4 * 4 * 16)
  variables = initial_state.generator.variables
  z = jnp.ones((CLASSES, 16))
  images = G.apply(variables, z, train=False, labels=jnp.arange(CLASSES))
  # Same z, different classes: different images.
  assert all(not np.allclose(images[0], images[i]) for i in range(1, CLASSES))
  # The label's one-hot code is an input of the projection: with its rows zeroed, the
  # conditional G is the unconditional G with the same layers.
  unconditional = Generator(image_size=16, channels=3, latent_dim=16, width=8)
  kernel, stats = params['project']['kernel'], variables['batch_stats']
  zero_rows = {'params': dict(params, project={'kernel': kernel.at[16:].set(0.0)}),
               'batch_stats': stats}
  plain = {'params': dict(params, project={'kernel': kernel[:16]}), 'batch_stats': stats}
  np.testing.assert_allclose(G.apply(zero_rows, z, train=False, labels=jnp.arange(CLASSES)),
                             unconditional.apply(plain, z, train=False), atol=1e-6)


def test_projection_discriminator_adds_the_label_embedding(initial_state):
  variables = initial_state.discriminator.variables
  images = jnp.asarray(_batch(CLASSES)[0], jnp.float32) / 127.5 - 1.0
  embedding = variables['params']['class_embedding']['embedding']
  assert embedding.shape == (CLASSES, 4 * 4 * 16)
  logits = D.apply(variables, images, train=False, labels=jnp.arange(CLASSES))
  # With the embedding zeroed, the conditional D is the unconditional D with the same layers.
  zeroed = {'params': dict(variables['params'],
                           class_embedding={'embedding': jnp.zeros_like(embedding)}),
            'batch_stats': variables['batch_stats']}
  plain_params = {k: v for k, v in variables['params'].items() if k != 'class_embedding'}
  plain = Discriminator(image_size=16, channels=3, width=8).apply(
      {'params': plain_params, 'batch_stats': variables['batch_stats']}, images, train=False)
  np.testing.assert_allclose(D.apply(zeroed, images, train=False, labels=jnp.arange(CLASSES)),
                             plain, atol=1e-6)
  # Each label moves the logit by the inner product of its embedding with the features.
  other = D.apply(variables, images, train=False, labels=jnp.zeros(CLASSES, jnp.int32))
  assert not np.allclose(logits[1:], other[1:])
  np.testing.assert_allclose(logits[0], other[0], atol=1e-6)


def test_labels_and_num_classes_must_agree(initial_state):
  z = jnp.zeros((2, 16))
  with pytest.raises(ValueError, match='class-conditional'):
    G.apply(initial_state.generator.variables, z, train=False)
  with pytest.raises(ValueError, match=r'labels must be integers of shape \[2\]'):
    G.apply(initial_state.generator.variables, z, train=False, labels=jnp.zeros(3, jnp.int32))
  plain = Generator(image_size=16, channels=3, latent_dim=16, width=8)
  with pytest.raises(ValueError, match='unconditional'):
    plain.init(jax.random.key(0), z, train=False, labels=jnp.zeros(2, jnp.int32))
  for bad in (-1, 2.5, True, '10'):
    with pytest.raises(UserError, match='num_classes must be 0'):
      Generator(num_classes=bad)
    with pytest.raises(UserError, match='num_classes must be 0'):
      Discriminator(num_classes=bad)
  with pytest.raises(UserError, match='the same classes'):
    make_train_step(G, Discriminator(image_size=16, channels=3, width=8, num_classes=3))


def test_step_needs_labels_exactly_when_conditional(initial_state):
  images, labels = _batch(8)
  with pytest.raises(ValueError, match=r'must be \(images, labels\)'):
    make_train_step(G, D)(initial_state, images, jax.random.key(0))
  plain_g = Generator(image_size=16, channels=3, latent_dim=16, width=8)
  plain_d = Discriminator(image_size=16, channels=3, width=8)
  plain_state = create_gan_state(jax.random.key(0), plain_g, plain_d)
  with pytest.raises(ValueError, match='models are unconditional'):
    make_train_step(plain_g, plain_d)(plain_state, (images, labels), jax.random.key(0))


@pytest.mark.parametrize('step_config', [
    StepConfig(),
    pytest.param(StepConfig(loss='wasserstein', gradient_penalty_weight=10.0, d_steps=2,
                            augment='translation'), marks=pytest.mark.slow),
], ids=['default', 'wgan_gp_augment'])
def test_conditional_step_is_the_same_on_one_and_eight_devices(initial_state, step_config):
  """Real labels are sharded with their images; generated labels are drawn for the global batch."""
  assert jax.device_count() == 8
  batch, rng = _batch(), jax.random.key(1)
  ref_state, ref_metrics = jax.jit(make_train_step(G, D, step_config))(initial_state, batch, rng)
  modes = ('shard_map', 'pmap') if step_config == StepConfig() else ('shard_map',)
  for mode in modes:
    step = DataParallelStep(G, D, step_config, parallelism=mode)
    state, metrics = step(step.place_state(initial_state), step.place_batch(batch), rng)
    host, metrics = step.host_state(state), step.host_metrics(metrics)
    for key, value in ref_metrics.items():
      assert metrics[key] == pytest.approx(float(value), abs=1e-5, rel=1e-5), (mode, key)
    for ours, ref in zip(jax.tree.leaves(host), jax.tree.leaves(ref_state)):
      np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=1e-5)
  # The class embedding and G's label rows are trained.
  emb = 'class_embedding'
  assert not np.array_equal(ref_state.discriminator.params[emb]['embedding'],
                            initial_state.discriminator.params[emb]['embedding'])
  assert not np.array_equal(ref_state.generator.params['project']['kernel'][16:],
                            initial_state.generator.params['project']['kernel'][16:])


def test_place_batch_checks_that_images_and_labels_match():
  step = DataParallelStep(G, D, StepConfig())
  images, labels = _batch(16)
  with pytest.raises(ValueError, match='same number of rows'):
    step.place_batch((images, labels[:8]))


def test_generator_learns_what_the_label_asks_for():
  """Two classes that differ only in brightness: after a short run, G draws each on demand."""
  g = Generator(image_size=8, channels=1, latent_dim=8, width=16, num_classes=2)
  d = Discriminator(image_size=8, channels=1, width=16, num_classes=2)
  adam = optax.adam(1e-3, b1=0.5)
  state = create_gan_state(jax.random.key(0), g, d, generator_tx=adam, discriminator_tx=adam)
  step = jax.jit(make_train_step(g, d))
  rng = np.random.RandomState(0)
  for i in range(120):
    labels = rng.randint(0, 2, (32,)).astype(np.int32)
    # Class 0: dark images (~40), class 1: bright ones (~215), with noise.
    images = np.clip(40 + 175 * labels[:, None, None, None] + rng.normal(0, 10, (32, 8, 8, 1)),
                     0, 255).astype(np.uint8)
    state, _ = step(state, (images, labels), jax.random.key(i))
  z = jax.random.normal(jax.random.key(99), (64, 8))
  variables = state.generator.variables
  dark = g.apply(variables, z, train=False, labels=jnp.zeros(64, jnp.int32))
  bright = g.apply(variables, z, train=False, labels=jnp.ones(64, jnp.int32))
  # tanh range: class 0 should sit near -0.69, class 1 near +0.69 (untrained: both ~0).
  assert float(jnp.mean(dark)) < -0.4 < 0.4 < float(jnp.mean(bright))
  assert float(jnp.mean(bright > dark)) > 0.9


def test_check_num_classes_returns_valid_values():
  assert models.check_num_classes(0) == 0
  assert models.check_num_classes(10) == 10
