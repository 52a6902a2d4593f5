"""Class-conditional models: one-hot G input or class-conditional BatchNorm, projection D,
labelled batches in the step, and the program around them (labelled data, training, resume,
sampling, scoring)."""
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from dcgan_jax import (DataParallelStep, Discriminator, Generator, StepConfig, UserError,
                       create_gan_state, make_train_step)
from dcgan_jax import data
from dcgan_jax import evaluate
from dcgan_jax import evaluation
from dcgan_jax import models
from dcgan_jax import quality
from dcgan_jax import run_checks
from dcgan_jax import sample
from dcgan_jax import sample_grid
from dcgan_jax import summary
from dcgan_jax import train
from dcgan_jax import train_hooks
from dcgan_jax.data import DeviceResidentSampler

CLASSES = 4
G = Generator(image_size=16, channels=3, latent_dim=16, width=8, num_classes=CLASSES)
G_CBN = Generator(image_size=16, channels=3, latent_dim=16, width=8, num_classes=CLASSES,
                  conditioning='batchnorm')
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


@pytest.mark.parametrize('conditioning', ['batchnorm', 'concat_batchnorm'])
def test_conditional_batchnorm_takes_each_examples_scale_and_offset_from_its_label(conditioning):
  g = Generator(image_size=16, channels=3, latent_dim=16, width=8, num_classes=CLASSES,
                conditioning=conditioning)
  variables = g.init(jax.random.key(0), jnp.zeros((2, 16)), train=False,
                     labels=jnp.zeros(2, jnp.int32))
  params, stats = variables['params'], variables['batch_stats']
  # The projection takes z alone, or z and the one-hot label; each hidden BatchNorm has one
  # scale and offset row per class.
  inputs = 16 if conditioning == 'batchnorm' else 16 + CLASSES
  assert params['project']['kernel'].shape == (inputs, 4 * 4 * 16)
  norms = sorted(k for k in params if k.startswith('ClassConditionalBatchNorm'))
  assert [params[k]['scale'].shape for k in norms] == [(CLASSES, 16), (CLASSES, 8)]
  assert not any(k.startswith('BatchNorm') for k in params)
  np.testing.assert_allclose(params[norms[0]]['scale'], 1.0, atol=0.1)  # N(1, 0.02).
  assert float(jnp.abs(params[norms[0]]['bias']).max()) == 0.0
  # Against G with plain BatchNorms and the same other layers (and input): class c's rows as
  # its BatchNorms' affine maps.
  plain = Generator(image_size=16, channels=3, latent_dim=16, width=8,
                    num_classes=0 if conditioning == 'batchnorm' else CLASSES)
  rng = np.random.RandomState(1)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(1.0, 0.5, p.shape), jnp.float32)
                        if p.ndim == 2 and p.shape[0] == CLASSES else p, params)
  stats = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32), stats)
  z = jax.random.normal(jax.random.key(2), (6, 16))

  def plain_variables(c):
    plain_params = {k: v for k, v in params.items() if k not in norms}
    plain_stats = {}
    for i, name in enumerate(norms):
      plain_params[f'BatchNorm_{i}'] = {k: params[name][k][c] for k in ('scale', 'bias')}
      plain_stats[f'BatchNorm_{i}'] = stats[name]['normalise']
    return {'params': plain_params, 'batch_stats': plain_stats}

  def plain_labels(labels):
    return {} if conditioning == 'batchnorm' else {'labels': labels}

  # Running statistics (sampling): each example follows its own class's affine maps.
  labels = jnp.array([0, 1, 2, 3, 1, 2])
  ours = g.apply({'params': params, 'batch_stats': stats}, z, train=False, labels=labels)
  for c in range(CLASSES):
    rows = np.asarray(labels) == c
    theirs = plain.apply(plain_variables(c), z, train=False, **plain_labels(labels))
    np.testing.assert_allclose(ours[rows], theirs[rows], atol=2e-5, err_msg=f'class {c}')
  # Batch statistics (training): a batch of one class is normalised as the plain G does it,
  # and the running statistics move alike.
  for c in (0, 3):
    ours, ours_stats = g.apply({'params': params, 'batch_stats': stats}, z, train=True,
                               labels=jnp.full((6,), c), mutable=['batch_stats'])
    theirs, their_stats = plain.apply(plain_variables(c), z, train=True, mutable=['batch_stats'],
                                      **plain_labels(jnp.full((6,), c)))
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    for i, name in enumerate(norms):
      np.testing.assert_allclose(ours_stats['batch_stats'][name]['normalise']['var'],
                                 their_stats['batch_stats'][f'BatchNorm_{i}']['var'], rtol=1e-5)
  # With running statistics, an example's label changes its own image and no other.
  relabelled = g.apply({'params': params, 'batch_stats': stats}, z, train=False,
                       labels=labels.at[1].set(0))
  ours = g.apply({'params': params, 'batch_stats': stats}, z, train=False, labels=labels)
  assert not np.allclose(relabelled[1], ours[1])
  np.testing.assert_array_equal(np.delete(relabelled, 1, 0), np.delete(ours, 1, 0))


def test_generator_conditioning_must_be_known_and_needs_classes():
  with pytest.raises(UserError, match=r"generator_conditioning must be one of concat, batchnorm "
                                      r"or concat_batchnorm \(got 'film'\)"):
    Generator(num_classes=10, conditioning='film')
  for conditioning in ('batchnorm', 'concat_batchnorm'):
    with pytest.raises(UserError, match='needs num_classes > 0'):
      Generator(conditioning=conditioning)
  assert models.check_conditioning('concat', 0) == 'concat'


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


@pytest.mark.parametrize('step_config,conditioning', [
    (StepConfig(), 'concat'),
    pytest.param(StepConfig(loss='wasserstein', gradient_penalty_weight=10.0,
                            augment='translation'), 'batchnorm', marks=pytest.mark.slow),
], ids=['default', 'wgan_gp_augment_conditional_batchnorm'])
def test_conditional_step_is_the_same_on_one_and_eight_devices(initial_state, step_config,
                                                               conditioning):
  """Real labels are sharded with their images; generated labels are drawn for the global batch.

  With class-conditional BatchNorm in G, its statistics are still those of the global batch.
  """
  assert jax.device_count() == 8
  g = G if conditioning == 'concat' else G_CBN
  if conditioning != 'concat':
    initial_state = create_gan_state(jax.random.key(0), g, D, use_ema=True)
  batch, rng = _batch(), jax.random.key(1)
  ref_state, ref_metrics = jax.jit(make_train_step(g, D, step_config))(initial_state, batch, rng)
  modes = ('shard_map', 'pmap') if step_config == StepConfig() else ('shard_map',)
  for mode in modes:
    step = DataParallelStep(g, D, step_config, parallelism=mode)
    state, metrics = step(step.place_state(initial_state), step.place_batch(batch), rng)
    host, metrics = step.host_state(state), step.host_metrics(metrics)
    for key, value in ref_metrics.items():
      assert metrics[key] == pytest.approx(float(value), abs=1e-5, rel=1e-5), (mode, key)
    for ours, ref in zip(jax.tree.leaves(host), jax.tree.leaves(ref_state)):
      np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=1e-5)
  # The class embedding and G's label rows (or per-class BatchNorm rows) are trained.
  emb = 'class_embedding'
  assert not np.array_equal(ref_state.discriminator.params[emb]['embedding'],
                            initial_state.discriminator.params[emb]['embedding'])
  if conditioning == 'concat':
    assert not np.array_equal(ref_state.generator.params['project']['kernel'][16:],
                              initial_state.generator.params['project']['kernel'][16:])
  else:
    scales = (ref_state.generator.params['ClassConditionalBatchNorm_0']['scale'],
              initial_state.generator.params['ClassConditionalBatchNorm_0']['scale'])
    # Every class the global batch drew has moved (32 labels over 4 classes).
    assert np.all(np.any(np.asarray(scales[0]) != np.asarray(scales[1]), axis=1))


def test_place_batch_checks_that_images_and_labels_match():
  step = DataParallelStep(G, D, StepConfig())
  images, labels = _batch(16)
  with pytest.raises(ValueError, match='same number of rows'):
    step.place_batch((images, labels[:8]))


@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_labels_outside_the_classes_are_refused_before_they_turn_the_state_to_nan(
    initial_state, parallelism):
  """An embedding row that does not exist reads as NaN on the device; numpy labels are checked
  on the host (SVHN-style 1..10 labels for 10 classes are the usual slip)."""
  step = DataParallelStep(G, D, StepConfig(), parallelism=parallelism)
  images, labels = _batch(16)
  for bad, shown in ((labels + 1, r'\[1, 4\]'), (labels - 1, r'\[-1, 2\]')):
    with pytest.raises(UserError, match=rf'class indices in \[0, 4\) \(num_classes=4\); got '
                                        rf'values in {shown}'):
      step.place_batch((images, bad))
  with pytest.raises(UserError, match=r'integer class indices in \[0, 4\), got float32'):
    step.place_batch((images, labels.astype(np.float32)))
  # What the check prevents: the same labels placed as device arrays (not read back) poison
  # every parameter in one step.
  placed = (step.place_batch(images), step.place_batch(jnp.asarray(labels + 1)))
  state, _ = step(step.place_state(initial_state), placed, jax.random.key(0))
  assert not all(np.isfinite(x).all() for x in jax.tree.leaves(step.host_state(state).generator.params))


def test_labels_of_the_wrong_shape_or_type_are_one_clear_error(initial_state):
  images, labels = _batch(8)
  step = jax.jit(make_train_step(G, D))
  for bad in (labels[:, None], jax.nn.one_hot(labels, CLASSES), labels.astype(np.float32)):
    with pytest.raises(UserError, match=r'Labels must be integer class indices of shape \[N\] '
                                        r'for N images: got .* for images \(8, 16, 16, 3\)'):
      step(initial_state, (images, bad), jax.random.key(0))
  with pytest.raises(UserError, match=r'not a Python list; pass np.asarray\(labels, np.int32\)'):
    step(initial_state, (images, [int(x) for x in labels]), jax.random.key(0))


# Class-conditional BatchNorm learns the classes more slowly here: at 8x8 G has one BatchNorm,
# whose per-class offsets start at 0 and move by Adam's step size, while the one-hot rows of
# the projection act before the normalisation, which amplifies them. Measured (mean of bright
# minus mean of dark samples): 'concat' 1.30 after 120 steps; 'batchnorm' 0.71 after 120 and
# 1.00 after 240.
@pytest.mark.parametrize('conditioning,steps', [('concat', 120), ('batchnorm', 240)])
def test_generator_learns_what_the_label_asks_for(conditioning, steps):
  """Two classes that differ only in brightness: after a short run, G draws each on demand."""
  g = Generator(image_size=8, channels=1, latent_dim=8, width=16, num_classes=2,
                conditioning=conditioning)
  d = Discriminator(image_size=8, channels=1, width=16, num_classes=2)
  adam = optax.adam(1e-3, b1=0.5)
  state = create_gan_state(jax.random.key(0), g, d, generator_tx=adam, discriminator_tx=adam)
  step = jax.jit(make_train_step(g, d))
  rng = np.random.RandomState(0)
  for i in range(steps):
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


# ---- data, training program, sampling and scoring ---------------------------------------------

_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny_config(tfds_dir, **overrides):
  """configs/default.py conditional on the 10 digits, shrunk to seconds per run."""
  config = train.load_config(_ROOT / 'configs' / 'default.py')
  config.update(dict(
      data_dir=tfds_dir, image_size=8, generator_width=8, discriminator_width=8, latent_dim=8,
      batch_size=16, num_train_steps=4, log_every_steps=1, checkpoint_every_steps=0,
      sample_every_steps=0, quality_every_steps=0, num_sample_images=12, lr_schedule='constant',
      num_classes=10))
  config.update(overrides)
  return config


def test_digits_yield_their_labels_with_their_images(tfds_dir):
  config = tiny_config(tfds_dir)
  images, labels = data.load_all_images(config, with_labels=True)
  assert images.shape == (1797, 8, 8, 1) and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, quality.real_digit_labels())
  info = data.dataset_info(config)
  assert info.num_classes == 10
  data.check_num_classes(config, info)  # 10 == 10: fine.
  by_image = {image.tobytes(): label for image, label in zip(images, labels)}
  batch_images, batch_labels = next(data.create_train_iterator(config, start_step=3))
  assert batch_images.shape == (16, 8, 8, 1) and batch_labels.shape == (16,)
  # Shuffled, but every image still carries its own label (ambiguous duplicates aside).
  assert [by_image[i.tobytes()] for i in batch_images] == list(batch_labels)
  plain = next(data.create_train_iterator(tiny_config(tfds_dir, num_classes=0), start_step=3))
  np.testing.assert_array_equal(plain, batch_images)  # Labels do not change the order.


def test_num_classes_must_fit_the_dataset(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, num_classes=5)
  with pytest.raises(UserError, match="has 10 classes; set num_classes to 10"):
    data.check_num_classes(config, data.dataset_info(config))
  images = np.zeros((20, 8, 8, 1), np.uint8)
  np.save(tmp_path / 'plain.npy', images)
  config = tiny_config(tfds_dir, dataset='array', dataset_path=str(tmp_path / 'plain.npy'))
  with pytest.raises(UserError, match='has no class labels'):
    data.check_num_classes(config, data.dataset_info(config))
  np.savez(tmp_path / 'labelled.npz', images=images, labels=np.arange(20) % 12)
  config.dataset_path = str(tmp_path / 'labelled.npz')
  with pytest.raises(UserError, match='go up to 11; set num_classes to at least 12'):
    data.check_num_classes(config, data.dataset_info(config))
  config.num_classes = 12
  data.check_num_classes(config, data.dataset_info(config))
  loaded_images, loaded_labels = data.load_all_images(config, with_labels=True)
  np.testing.assert_array_equal(loaded_labels, np.arange(20) % 12)
  for bad, message in [(np.arange(19), r'expected non-negative integers \[20\]'),
                       (-np.ones(20, int), 'non-negative'),
                       (np.zeros(20, np.float32), 'integers')]:
    np.savez(tmp_path / 'bad.npz', images=images, labels=bad)
    with pytest.raises(UserError, match=message):
      data.dataset_info(tiny_config(tfds_dir, dataset='array',
                                    dataset_path=str(tmp_path / 'bad.npz')))
  np.savez(tmp_path / 'unnamed.npz', x=images, labels=np.zeros(20, int))
  with pytest.raises(UserError, match="under the key 'images'"):
    data.dataset_info(tiny_config(tfds_dir, dataset='array',
                                  dataset_path=str(tmp_path / 'unnamed.npz')))


def test_device_resident_batches_carry_the_labels_of_their_images():
  images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
  labels = (np.arange(40) % 7).astype(np.int32)
  sampler = DeviceResidentSampler(images, 16, seed=0, labels=labels)
  for step in (0, 1, 5):
    batch_images, batch_labels = sampler.batch(step)
    assert batch_labels.sharding == batch_images.sharding
    np.testing.assert_array_equal(np.asarray(batch_labels),
                                  np.asarray(batch_images)[:, 0, 0, 0] % 7)
  traced_images, traced_labels = sampler.batch(jnp.int32(5))
  np.testing.assert_array_equal(np.asarray(traced_labels), np.asarray(sampler.batch(5)[1]))


@pytest.mark.parametrize('device_resident,parallelism,steps_per_dispatch,conditioning',
                         [('always', 'shard_map', 2, 'batchnorm'),
                          ('never', 'shard_map', 1, 'concat'), ('always', 'pmap', 1, 'concat')])
def test_conditional_run_resumes_bit_identically(tfds_dir, tmp_path, device_resident,
                                                 parallelism, steps_per_dispatch, conditioning):
  config = tiny_config(tfds_dir, device_resident=device_resident, parallelism=parallelism,
                       steps_per_dispatch=steps_per_dispatch, generator_conditioning=conditioning)
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  assert straight.discriminator.params['class_embedding']['embedding'].shape == (10, 4 * 4 * 8)
  g_params = straight.generator.params
  if conditioning == 'batchnorm':
    assert g_params['ClassConditionalBatchNorm_0']['scale'].shape == (10, 8)
  else:
    assert g_params['project']['kernel'].shape == (8 + 10, 4 * 4 * 8)
  config.num_train_steps = 2
  train.train_and_evaluate(config, tmp_path / 'resumed')
  config.num_train_steps = 4
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed')
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The final grid: 12 samples, the 10 classes one per column (2 rows), 8x8 images, padding 2.
  grid = np.asarray(Image.open(tmp_path / 'straight' / 'samples' / 'step_000004.png'))
  assert grid.shape[:2] == (2 + 2 * 10, 2 + 10 * 10)
  # Unconditional models cannot resume a conditional run: one line names the field.
  with pytest.raises(UserError, match='num_classes 10 -> 0'):
    train.train_and_evaluate(tiny_config(tfds_dir, num_classes=0, num_train_steps=6),
                             tmp_path / 'straight')
  other = {'concat': 'batchnorm', 'batchnorm': 'concat'}[conditioning]
  with pytest.raises(UserError, match=f"generator_conditioning '{conditioning}' -> '{other}'"):
    train.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=6,
                                         generator_conditioning=other), tmp_path / 'straight')


def test_sample_draws_the_classes_asked_for(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, num_train_steps=1)
  train.train_and_evaluate(config, tmp_path)
  grid = sample.sample_grid_png(str(tmp_path), str(tmp_path / 'grid.png'), num=20)
  assert grid.shape[:2] == (2 + 2 * 10, 2 + 10 * 10)  # One column per class.
  one_class = sample.sample_grid_png(str(tmp_path), str(tmp_path / 'seven.png'), num=4, label=7)
  generator, variables, _, _ = sample.load_generator(str(tmp_path))
  z = jax.random.normal(jax.random.key(0), (4, 8), jnp.float32)
  sevens = generator.apply(variables, z, train=False, labels=jnp.full((4,), 7))
  assert one_class.shape[:2] == (2 + 2 * 10, 2 + 2 * 10)
  np.testing.assert_array_equal(one_class[2:10, 2:10, 0],
                                sample_grid.to_uint8(np.asarray(sevens))[0, ..., 0])
  with pytest.raises(UserError, match=r'--label must be a class in 0\.\.9'):
    sample.sample_grid_png(str(tmp_path), str(tmp_path / 'x.png'), label=10)
  # Latent arithmetic draws every image as one class: the chosen samples are the label's grid's.
  with pytest.raises(UserError, match='needs --label=K'):
    sample.latent_arithmetic(str(tmp_path), str(tmp_path / 'x.png'), '0 - 1 + 2', num=4)
  arithmetic, _ = sample.latent_arithmetic(str(tmp_path), str(tmp_path / 'a.png'), '0 - 1 + 2',
                                           num=4, label=7)
  np.testing.assert_array_equal(arithmetic[:12, :12], one_class[:12, :12])  # Sample 0's cell.
  with pytest.raises(UserError, match='without labels'):
    sample.sample_labels(tiny_config(tfds_dir, num_classes=0), 4, label=1)
  assert sample.sample_labels(tiny_config(tfds_dir, num_classes=0), 4) is None
  np.testing.assert_array_equal(sample.sample_labels(config, 12), np.arange(12) % 10)
  # evaluate generates the classes in turn across its batches (of 8: a multiple of the 8
  # devices it splits them over).
  batches = list(evaluate.generate(generator, variables, 13, 8, 8, seed=3))
  z = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.key(3), j), (8,))
                 for j in range(8, 13)])  # Image j's latent comes from j alone.
  expected = generator.apply(variables, z, train=False, labels=jnp.arange(8, 13) % 10)
  np.testing.assert_allclose(np.asarray(batches[1]), np.asarray(expected), atol=1e-6)
  # The batch size changes no image (it used to draw each batch's latents from one key).
  one_batch = next(evaluate.generate(generator, variables, 13, 8, 13, seed=3))
  np.testing.assert_allclose(np.asarray(one_batch),
                             np.concatenate([np.asarray(b) for b in batches]), atol=1e-6)


def test_digits_quality_reports_label_accuracy(digits_classifier_cache):
  scorer = quality.DigitsQuality.load_or_train(str(digits_classifier_cache))
  images = quality.real_digits_images(32, 1)[:500]
  labels = quality.real_digit_labels()[:500]
  right = scorer.score(images, labels=labels)['label_accuracy']
  wrong = scorer.score(images, labels=(labels + 1) % 10)['label_accuracy']
  assert right > 0.9 and wrong < 0.1
  assert 'label_accuracy' not in scorer.score(images)


def test_in_training_fid_scores_every_class(tfds_dir, tmp_path, monkeypatch):
  """The FID hook generates its samples with the classes in turn (a stand-in feature extractor
  keeps the test offline; the labels are checked where the hook hands them to the generator)."""
  seen = []

  def stand_in(images):
    seen.append(images.shape[0])
    return {'pool': np.stack([images.mean(axis=(1, 2, 3)), images.std(axis=(1, 2, 3))], 1)}

  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: stand_in))
  made = []
  original = train_hooks.Sampler.generate_uint8

  def recording(self, variables, z, labels=None, **kwargs):
    made.append(labels)
    return original(self, variables, z, labels, **kwargs)

  monkeypatch.setattr(train_hooks.Sampler, 'generate_uint8', recording)
  config = tiny_config(tfds_dir, inception_weights='stand_in.npz', eval_every_steps=2,
                       eval_num_samples=30)
  train.train_and_evaluate(config, tmp_path)
  best = json.loads((tmp_path / train_hooks.BEST_FID_FILE).read_text())
  assert np.isfinite(best['fid']) and seen == [30, 30, 30]  # Real once, then steps 2 and 4.
  assert len(made) == 2
  for labels in made:
    np.testing.assert_array_equal(labels, np.arange(30) % 10)


def test_objective_line_and_summary_name_the_conditioning(tfds_dir):
  config = tiny_config(tfds_dir)
  assert ('class-conditional on 10 classes (one-hot label appended to z, projection D)'
          in run_checks.describe_objective(config))
  assert ('class-conditional on 10 classes (class-conditional BatchNorm in G, projection D)'
          in run_checks.describe_objective(tiny_config(tfds_dir,
                                                       generator_conditioning='batchnorm')))
  assert 'class' not in run_checks.describe_objective(tiny_config(tfds_dir, num_classes=0))
  text = summary.summarize(config)
  assert 'class_embedding (Embed)' in text and f'{10 * 4 * 4 * 8:,}' in text
  # G's projection takes latent + classes inputs: (8 + 10) * 4*4*8 weights (8x8: one block).
  assert f'{(8 + 10) * 4 * 4 * 8:,}' in text


def test_classes_without_images_are_warned_about(caplog):
  """An array whose labels stop below num_classes, or a class folder whose images were all
  unreadable, leaves classes G is asked for with nothing real for D: said at every run."""
  with caplog.at_level(logging.WARNING):
    assert run_checks.warn_about_empty_classes(np.array([0, 1, 1, 3]), 4, 'array:x.npz') == [2]
  assert ('1 of the num_classes=4 classes have no images in dataset array:x.npz (class 2)'
          in caplog.text)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert run_checks.warn_about_empty_classes(np.arange(3), 15, 'd') == list(range(3, 15))
    assert run_checks.warn_about_empty_classes(np.arange(3), 3, 'd') == []
  assert '12 of the num_classes=15 classes' in caplog.text and '(class 3, 4, 5, 6, 7, 8, 9, 10, ' \
      '11, 12, ...)' in caplog.text
  assert caplog.text.count('have no images') == 1
  # A folder's class folders are named, with advice that can be followed (num_classes must be
  # the folders' count, so "set num_classes to K" was refused).
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert run_checks.warn_about_empty_classes(np.array([1, 2, 2, 3]), 4, 'folder:pets',
                                          ('bird', 'cat', 'dog', 'fish')) == [0]
  assert ("(class 0 'bird'): G learns to draw them with nothing real for D to compare them "
          'with. Add readable images to those class folders, or remove the folders') in caplog.text
