"""Tests of the offline digits quality score (classifier, cache, Fréchet distance, coverage)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from dcgan_jax import quality
from dcgan_jax.errors import UserError

NUM_GENERATED = 1000  # What the training loop scores.


@pytest.fixture(scope='module')
def cache_dir(digits_classifier_cache):
  """The run's shared cache folder (tests/conftest.py), where one worker trained the classifier."""
  return digits_classifier_cache


@pytest.fixture(scope='module')
def scorer(cache_dir):
  """Loaded from the run's cache."""
  return quality.DigitsQuality.load_or_train(cache_dir)


@pytest.fixture
def no_training(monkeypatch):
  """Makes any attempt to train fail the test."""
  def fail():
    raise AssertionError('the classifier was retrained although a valid cache exists')
  monkeypatch.setattr(quality, 'train_classifier', fail)


@pytest.fixture
def fake_training(monkeypatch, scorer):
  """Replaces training by returning the module's trained params, and counts the calls."""
  calls = []
  params = {name: {k: np.asarray(v) for k, v in layer.items()}
            for name, layer in scorer.params.items()}
  def train():
    calls.append(1)
    return params
  monkeypatch.setattr(quality, 'train_classifier', train)
  return calls


def _real_subset(image_size, channels, num=NUM_GENERATED, seed=0):
  images = quality.real_digits_images(image_size, channels)
  chosen = np.random.default_rng(seed).choice(len(images), num, replace=False)
  return images[chosen]


def _noise(image_size, channels, num=NUM_GENERATED, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.0, (num, image_size, image_size, channels)).astype(np.float32)


def _cache_files(folder):
  return sorted(name for name in os.listdir(folder))


# --- Classifier and cache ----------------------------------------------------------------------


def test_held_out_accuracy_is_at_least_95_percent(scorer):
  assert scorer.held_out_accuracy >= 0.95


def test_held_out_real_digits_are_recognised_after_upscaling(scorer):
  images = quality.real_digits_images(32, 1)
  labels = quality.real_digit_labels()
  start = quality._held_out_start(len(labels))
  _, probabilities = scorer.features_and_probabilities(images[start:])
  assert np.mean(probabilities.argmax(-1) == labels[start:]) >= 0.95


def test_cache_hit_reloads_identical_params_without_training(scorer, cache_dir, no_training):
  files = _cache_files(cache_dir)
  assert len(files) == 1 and files[0].endswith(f'-{quality.recipe_hash()}.npz')  # No temp files.
  reloaded = quality.DigitsQuality.load_or_train(cache_dir)
  for name, layer in scorer.params.items():
    for key, value in layer.items():
      np.testing.assert_array_equal(np.asarray(reloaded.params[name][key]), np.asarray(value))
  assert reloaded.held_out_accuracy == scorer.held_out_accuracy


def test_recipe_change_changes_the_cache_file_name(monkeypatch):
  before = quality.recipe_hash()
  monkeypatch.setitem(quality.TRAINING_RECIPE, 'learning_rate',
                      quality.TRAINING_RECIPE['learning_rate'] * 2)
  assert quality.recipe_hash() != before


def _write_garbage(path):
  with open(path, 'wb') as f:
    f.write(b'not an npz file')


def _write_truncated(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def _write_wrong_names(path):
  np.savez(path, weights=np.zeros((3, 3), np.float32))


def _write_non_finite(path):
  with np.load(path) as archive:
    arrays = {key: archive[key] for key in archive.files}
  first = sorted(arrays)[0]
  arrays[first] = np.full_like(arrays[first], np.nan)
  np.savez(path, **arrays)


def _write_useless_weights(path):
  with np.load(path) as archive:
    arrays = {key: np.zeros_like(archive[key]) for key in archive.files}
  np.savez(path, **arrays)


@pytest.mark.parametrize('corrupt', [_write_garbage, _write_truncated, _write_wrong_names,
                                     _write_non_finite, _write_useless_weights])
def test_unusable_cache_file_is_retrained_with_a_warning(scorer, cache_dir, tmp_path,
                                                         fake_training, corrupt):
  name = _cache_files(cache_dir)[0]
  path = tmp_path / name
  path.write_bytes((cache_dir / name).read_bytes())
  corrupt(path)
  with pytest.warns(RuntimeWarning, match='unusable'):
    retrained = quality.DigitsQuality.load_or_train(tmp_path)
  assert len(fake_training) == 1
  assert retrained.held_out_accuracy == scorer.held_out_accuracy
  # The bad file was replaced by a good one: the next load needs no training.
  quality.DigitsQuality.load_or_train(tmp_path)
  assert len(fake_training) == 1
  assert _cache_files(tmp_path) == [name]


def test_unwritable_cache_dir_warns_and_still_scores(tmp_path, fake_training):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.warns(RuntimeWarning, match='Could not cache'):
    scorer = quality.DigitsQuality.load_or_train(blocker / 'cache')
  assert scorer.score(_real_subset(16, 1, num=200))['num_classes_covered'] == 10


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert quality.default_cache_dir() == os.path.join(str(tmp_path), 'dcgan_jax')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path))
  assert quality.default_cache_dir() == os.path.join(str(tmp_path), '.cache', 'dcgan_jax')


# --- Scores ------------------------------------------------------------------------------------


@pytest.mark.parametrize('image_size, channels', [(32, 1), (32, 3), (8, 1), (64, 3)])
def test_real_digits_score_near_zero_and_cover_all_classes(scorer, image_size, channels):
  real = scorer.score(_real_subset(image_size, channels))
  noise = scorer.score(_noise(image_size, channels))
  assert 0.0 <= real['frechet_distance'] <= 0.05 * noise['frechet_distance']
  assert real['num_classes_covered'] == 10
  assert real['min_class_fraction'] >= quality.COVERAGE_THRESHOLD
  assert real['mean_confidence'] > 0.9
  np.testing.assert_allclose(real['class_fractions'].sum(), 1.0)


def test_all_real_digits_have_distance_zero(scorer):
  result = scorer.score(quality.real_digits_images(32, 1))
  assert result['frechet_distance'] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize('make_images', [
    lambda: _noise(32, 1),
    lambda: np.full((NUM_GENERATED, 32, 32, 1), -1.0, np.float32),  # Blank background.
    lambda: np.full((NUM_GENERATED, 32, 32, 3), 0.0, np.float32),  # Uniform grey.
], ids=['noise', 'black', 'grey'])
def test_noise_and_constant_images_score_badly(scorer, make_images):
  real = scorer.score(_real_subset(32, 1, seed=1))
  bad = scorer.score(make_images())
  assert bad['frechet_distance'] > 20 * max(real['frechet_distance'], 1e-3)
  assert bad['num_classes_covered'] <= 3
  assert bad['min_class_fraction'] == 0.0


def test_one_class_only_covers_one_class(scorer):
  images = quality.real_digits_images(32, 1)
  threes = images[quality.real_digit_labels() == 3]
  result = scorer.score(threes)
  assert result['num_classes_covered'] == 1
  assert result['class_fractions'].argmax() == 3
  assert result['frechet_distance'] > 20 * scorer.score(_real_subset(32, 1))['frechet_distance']


def test_precision_and_recall_tell_poor_digits_from_missing_ones(scorer):
  """In the classifier's feature space: real digits are faithful and diverse; one digit only
  is faithful (precision) but not diverse (recall, coverage); noise is neither."""
  images = quality.real_digits_images(32, 1)
  real = scorer.score(_real_subset(32, 1))
  threes = scorer.score(images[quality.real_digit_labels() == 3])
  noise = scorer.score(_noise(32, 1))
  assert real['precision'] > 0.95 and real['recall'] > 0.9 and real['coverage'] > 0.9
  assert threes['precision'] > 0.95 and threes['recall'] < 0.25 and threes['coverage'] < 0.2
  assert noise['precision'] < 0.1 and noise['recall'] < 0.1 and noise['density'] < 0.1
  # k = 3 needs more than 3 images; fewer score everything else and leave these out.
  tiny = scorer.score(_real_subset(32, 1, num=3))
  assert tiny['precision'] is None and tiny['coverage'] is None and tiny['num_classes_covered']


def test_uint8_and_float_inputs_score_the_same(scorer):
  images = _real_subset(16, 3, num=300)
  as_uint8 = scorer.score(images)
  as_tanh = scorer.score(images.astype(np.float32) / 127.5 - 1.0)
  as_unit = scorer.score(images.astype(np.float64) / 255.0, value_range=(0.0, 1.0))
  for other in (as_tanh, as_unit):
    assert other['frechet_distance'] == pytest.approx(as_uint8['frechet_distance'], rel=1e-3,
                                                      abs=1e-3)
    np.testing.assert_array_equal(other['class_fractions'], as_uint8['class_fractions'])
  # 0..255 as floats: clipped to [-1, 1] they scored as nearly all white; now refused.
  with pytest.raises(UserError, match=r'images are floats in \[0, 255\], far outside '
                     r'value_range \(-1, 1\); pass the range they are in, or uint8'):
    scorer.score(images.astype(np.float32))


def test_grey_and_rgb_copies_score_the_same(scorer):
  grey = _real_subset(32, 1, num=300)
  rgb = np.repeat(grey, 3, axis=-1)
  assert scorer.score(rgb)['frechet_distance'] == pytest.approx(
      scorer.score(grey)['frechet_distance'], rel=1e-4, abs=1e-4)


def test_feature_pass_compiles_once_per_image_shape(scorer):
  scorer.score(_noise(32, 1, num=300))
  compiled = quality._forward_jit._cache_size()
  scorer.score(_noise(32, 1, num=700, seed=1))
  assert quality._forward_jit._cache_size() == compiled


@pytest.mark.parametrize('images, message', [
    (np.zeros((10, 32, 32), np.float32), 'NHWC'),
    (np.zeros((10, 32, 32, 2), np.float32), 'NHWC'),
    (np.zeros((10, 12, 12, 1), np.float32), 'multiples of 8'),
    (np.zeros((1, 32, 32, 1), np.float32), 'at least 2'),
    (np.zeros((10, 32, 32, 1), np.int32), 'uint8'),
    (np.full((10, 32, 32, 1), np.nan, np.float32), 'NaN'),
])
def test_bad_images_raise_one_clear_user_error(scorer, images, message):
  with pytest.raises(UserError, match=message):
    scorer.score(images)


def test_real_digits_images_shape_range_and_order():
  images = quality.real_digits_images(16, 3)
  digits, labels = quality.load_real_digits()
  assert images.shape == (len(labels), 16, 16, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  # Nothing is lost at the extremes: blank cells stay 0, full ones reach 255.
  assert images.min() == 0 and images.max() == 255
  np.testing.assert_array_equal(quality.real_digits_images(8, 1)[..., 0],
                                np.round(digits * 255 / 16).astype(np.uint8))
  with pytest.raises(UserError, match='multiple of 8'):
    quality.real_digits_images(20, 1)
  with pytest.raises(UserError, match='channels'):
    quality.real_digits_images(32, 2)


@pytest.mark.parametrize('image_size', [16, 32, 64])
def test_upscaling_then_area_averaging_is_the_documented_blur(image_size):
  # The classifier is trained on this blur so that it reads real digits after the pipeline.
  images = quality.real_digits_images(image_size, 1).astype(np.float64)[..., 0]
  factor = image_size // 8
  grid = images.reshape(-1, 8, factor, 8, factor).mean(axis=(2, 4)) * 16 / 255
  digits, _ = quality.load_real_digits()
  np.testing.assert_allclose(grid, quality._upscale_blur(digits), atol=16 / 255)


# --- Fréchet distance --------------------------------------------------------------------------


def _random_covariance(rng, dim, rank):
  factor = rng.normal(size=(dim, rank))
  return factor @ factor.T / rank


@pytest.mark.parametrize('rank', [16, 5])  # Full rank and rank-deficient.
def test_frechet_distance_matches_scipy_sqrtm(rank):
  rng = np.random.default_rng(rank)
  mean1, mean2 = rng.normal(size=16), rng.normal(size=16)
  cov1, cov2 = _random_covariance(rng, 16, rank), _random_covariance(rng, 16, 16)
  expected = (np.sum((mean1 - mean2)**2) + np.trace(cov1) + np.trace(cov2)
              - 2 * np.trace(scipy.linalg.sqrtm(cov1 @ cov2).real))
  assert quality.frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_one_dimensional_gaussians():
  # In 1-D the distance is (m1 - m2)^2 + (s1 - s2)^2.
  distance = quality.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                                      np.array([[9.0]]))
  assert distance == pytest.approx(9.0 + 1.0)


def test_frechet_distance_of_identical_gaussians_is_zero():
  rng = np.random.default_rng(0)
  mean, cov = rng.normal(size=8), _random_covariance(rng, 8, 8)
  assert quality.frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize('image_size', [16, 32])
def test_real_digits_images_match_tensorflow_bilinear_upscaling(image_size):
  # The input pipeline enlarges the stored 8x8 uint8 digits with tf.image.resize (bilinear,
  # antialias=True); the scorer's reference must be exactly those images.
  tf = pytest.importorskip('tensorflow')
  digits, _ = quality.load_real_digits()
  stored = np.round(digits * (255 / 16)).astype(np.uint8)[..., None]
  resized = tf.image.resize(tf.cast(stored, tf.float32), (image_size, image_size),
                            method='bilinear', antialias=True)
  expected = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
  np.testing.assert_array_equal(quality.real_digits_images(image_size, 1), expected)


def test_module_imports_without_tensorflow_or_scikit_learn():
  code = ('import sys, dcgan_jax.quality; '
          'assert "tensorflow" not in sys.modules and "sklearn" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)
