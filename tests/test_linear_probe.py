"""Tests of the linear-probe pieces (dcgan_jax.evaluation.linear_probe): D's sown feature maps,
the paper's 4x4 max pooling, and the L2-SVM against scikit-learn's liblinear optimum.

The probe CLI on a trained run is tested in tests/test_sample_summary.py (which has one).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.svm import LinearSVC

from dcgan_jax import models
from dcgan_jax.evaluation import linear_probe


def _reference_pool(x, grid):
  """Max over each of grid x grid equal cells, in numpy loops."""
  n, h, w, c = x.shape
  out = np.empty((n, grid, grid, c), x.dtype)
  ch, cw = h // grid, w // grid
  for i in range(grid):
    for j in range(grid):
      out[:, i, j] = x[:, i * ch:(i + 1) * ch, j * cw:(j + 1) * cw].max(axis=(1, 2))
  return out.reshape(n, -1)


@pytest.mark.parametrize('grid', [1, 2, 4])
def test_pooled_features_max_pool_each_map_to_the_grid_and_concatenate(grid):
  rng = np.random.default_rng(0)
  maps = [rng.normal(size=(3, 16, 16, 2)), rng.normal(size=(3, 8, 8, 5)),
          rng.normal(size=(3, 4, 4, 7))]
  got = np.asarray(linear_probe.pooled_features([jnp.asarray(m) for m in maps], grid))
  want = np.concatenate([_reference_pool(m, grid) for m in maps], axis=1)
  assert got.shape == (3, grid * grid * 14)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pooled_features_refuse_a_grid_that_does_not_divide_a_map():
  with pytest.raises(ValueError, match='cannot be pooled to a 4x4 grid'):
    linear_probe.pooled_features([jnp.zeros((1, 6, 6, 2))], 4)


def test_discriminator_sows_every_block_without_changing_its_logits():
  disc = models.Discriminator(image_size=16, channels=1, width=4)
  images = jax.random.uniform(jax.random.key(1), (5, 16, 16, 1), minval=-1, maxval=1)
  variables = disc.init(jax.random.key(0), images, train=False)
  maps = linear_probe.discriminator_feature_maps(disc, variables, images)
  assert [m.shape for m in maps] == [(5, 8, 8, 4), (5, 4, 4, 8)]
  plain = disc.apply(variables, images, train=False)
  logits, _ = disc.apply(variables, images, train=False, mutable=['intermediates'])
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))
  # The last map is what the logit layer reads: its 4x4 kernel (no bias) gives the logits.
  kernel = variables['params']['logit']['kernel']
  by_hand = jnp.einsum('nhwc,hwco->n', maps[-1], kernel)
  np.testing.assert_allclose(np.asarray(by_hand), np.asarray(plain), rtol=1e-4, atol=1e-5)


def test_conditional_discriminator_features_do_not_depend_on_the_label():
  disc = models.Discriminator(image_size=8, channels=1, width=4, num_classes=3)
  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = disc.init(jax.random.key(0), images, train=False, labels=jnp.zeros(4, jnp.int32))
  features = linear_probe.feature_function(disc)
  a = np.asarray(features(variables, np.zeros((4, 8, 8, 1), np.uint8)))
  _, sown = disc.apply(variables, -jnp.ones((4, 8, 8, 1)), train=False,
                       labels=jnp.full((4,), 2, jnp.int32), mutable=['intermediates'])
  b = np.asarray(linear_probe.pooled_features([sown['intermediates']['block_0'][0]]))
  np.testing.assert_allclose(a, b, rtol=1e-6)  # uint8 0 is -1 in a tanh run's range.


def test_a_module_that_sows_nothing_is_refused_with_the_fix():

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]

  plain = Plain()
  variables = plain.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
  with pytest.raises(ValueError, match=r"sows no feature maps.*self.sow\('intermediates'"):
    linear_probe.discriminator_feature_maps(plain, variables, jnp.zeros((1, 4, 4, 1)))


@pytest.fixture(scope='module')
def digits():
  x, y = load_digits(return_X_y=True)
  return x.astype(np.float32), y.astype(np.int32)


def test_l2_svm_reaches_liblinears_optimum(digits):
  """Same objective as LinearSVC(loss='squared_hinge') with C = 1/(l2·N): liblinear's primal
  solver (its intercept made almost unpenalised by a large intercept_scaling) finds the same
  weights, and ours scores no worse on the objective."""
  x, y = digits[0][:500], digits[1][:500]  # One shape for this file's fits: one compilation.
  l2 = 1e-2
  ours = linear_probe.fit_l2_svm(x, y, 10, l2, tolerance=1e-6, max_iterations=2000)
  standardised = (x - ours.mean) / ours.scale
  theirs = LinearSVC(C=1 / (l2 * len(x)), loss='squared_hinge', dual=False, tol=1e-10,
                     intercept_scaling=100, max_iter=100_000).fit(standardised, y)
  targets = jnp.asarray(2 * np.eye(10)[y] - 1, jnp.float32)

  def objective(weights, bias):
    params = {'weights': jnp.asarray(weights, jnp.float32), 'bias': jnp.asarray(bias, jnp.float32)}
    return float(linear_probe.svm_objective(params, jnp.asarray(standardised), targets, l2))

  assert objective(ours.weights, ours.bias) <= objective(theirs.coef_.T, theirs.intercept_) + 1e-6
  scale = np.abs(theirs.coef_).max()
  np.testing.assert_allclose(ours.weights, theirs.coef_.T, atol=2e-3 * scale)
  np.testing.assert_array_equal(ours.predict(x), theirs.predict(standardised))
  assert ours.iterations < 2000


def test_select_l2_validates_each_penalty_then_refits_on_everything(digits):
  x, y = digits
  classifier, validation = linear_probe.select_l2(x[:500], y[:500], 10, (1e-3, 1e-1, 10.0),
                                                  seed=3)
  assert sorted(validation) == [1e-3, 1e-1, 10.0]
  best = max(validation.values())
  assert validation[classifier.l2] == best
  assert all(validation[l2] < best for l2 in validation if l2 > classifier.l2)  # Ties: larger.
  # Refitted on all 500, not on the 400 the validation kept: same as fitting them directly.
  direct = linear_probe.fit_l2_svm(x[:500], y[:500], 10, classifier.l2)
  np.testing.assert_allclose(classifier.weights, direct.weights, rtol=1e-5, atol=1e-6)
  assert classifier.accuracy(x[500:], y[500:]) > 0.85  # Pixels of sklearn's digits: ~0.9.


def test_zero_weights_fit_the_same_classifier_as_leaving_the_examples_out(digits):
  x, y = digits[0][:500], digits[1][:500]
  mask = (np.arange(500) % 3 != 0).astype(np.float32)
  weighted = linear_probe.fit_l2_svm(x, y, 10, 1e-1, example_weights=mask, tolerance=1e-6)
  sliced = linear_probe.fit_l2_svm(x[mask > 0], y[mask > 0], 10, 1e-1, tolerance=1e-6)
  np.testing.assert_allclose(weighted.mean, sliced.mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(weighted.scale, sliced.scale, rtol=1e-4)
  np.testing.assert_allclose(weighted.weights, sliced.weights, atol=1e-3 * np.abs(
      sliced.weights).max())


def test_select_l2_breaks_ties_towards_the_larger_penalty():
  rng = np.random.default_rng(0)
  y = np.arange(60) % 2
  x = rng.normal(size=(60, 3)).astype(np.float32) + 20.0 * y[:, None]  # Far apart: all right.
  classifier, validation = linear_probe.select_l2(x, y, 2, (1e-3, 1e-2, 1e-1))
  assert set(validation.values()) == {1.0}
  assert classifier.l2 == 1e-1


def test_holdout_indices_split_every_index_once_and_repeat_with_the_seed():
  kept, held = linear_probe.holdout_indices(101, 0.2, seed=5)
  assert len(held) == 20 and len(kept) == 81
  assert sorted(np.concatenate([kept, held]).tolist()) == list(range(101))
  again = linear_probe.holdout_indices(101, 0.2, seed=5)
  np.testing.assert_array_equal(held, again[1])
  assert not np.array_equal(held, linear_probe.holdout_indices(101, 0.2, seed=6)[1])
  assert len(linear_probe.holdout_indices(2, 0.01, seed=0)[1]) == 1  # At least one held out.


def test_fit_refuses_a_single_class_or_a_non_positive_penalty(digits):
  x, y = digits
  with pytest.raises(ValueError, match='at least 2 classes'):
    linear_probe.fit_l2_svm(x[:10], np.zeros(10, np.int32), 1, 1e-2)
  with pytest.raises(ValueError, match='l2 must be positive'):
    linear_probe.fit_l2_svm(x[:10], y[:10], 10, 0.0)
