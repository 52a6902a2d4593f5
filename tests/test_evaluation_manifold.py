"""Precision, recall, density and coverage against a brute-force numpy reference."""
import numpy as np
import pytest

from dcgan_jax import UserError
from dcgan_jax.evaluation import manifold


def _reference(real, fake, k):
  """The papers' definitions, written out with full float64 distance matrices: <= the radius in
  Kynkäänniemi et al.'s precision and recall, < in Naeem et al.'s density and coverage."""
  real, fake = real.astype(np.float64), fake.astype(np.float64)
  dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  rr, ff, fr = dist(real, real), dist(fake, fake), dist(fake, real)
  np.fill_diagonal(rr, np.inf)
  np.fill_diagonal(ff, np.inf)
  real_radius = np.sort(rr, axis=1)[:, k - 1]
  fake_radius = np.sort(ff, axis=1)[:, k - 1]
  inside_real = fr <= real_radius[None, :]  # [fake, real]
  inside_fake = fr.T <= fake_radius[None, :]  # [real, fake]
  strictly_inside_real = fr < real_radius[None, :]
  return {'precision': inside_real.any(1).mean(), 'recall': inside_fake.any(1).mean(),
          'density': strictly_inside_real.sum() / (k * len(fake)),
          'coverage': strictly_inside_real.any(0).mean()}


@pytest.mark.parametrize('n_real,n_fake,k', [(60, 45, 3), (30, 70, 1), (50, 50, 5)])
def test_matches_the_definitions(n_real, n_fake, k):
  rng = np.random.RandomState(n_real + k)
  real = rng.normal(size=(n_real, 16)).astype(np.float32)
  fake = (rng.normal(size=(n_fake, 16)) * 1.3 + 0.4).astype(np.float32)
  ours = manifold.manifold_metrics(real, fake, k=k)
  expected = _reference(real, fake, k)
  assert set(ours) == set(expected)
  for name in expected:
    assert ours[name] == pytest.approx(expected[name], abs=1e-9), name
  assert 0 < ours['precision'] < 1 and 0 < ours['recall'] < 1  # Neither trivially 0 nor 1.


def test_chunked_sets_match_the_definitions(monkeypatch):
  """Sets larger than a chunk, with a padded last chunk, give the same numbers."""
  monkeypatch.setattr(manifold, '_CHUNK', 16)
  rng = np.random.RandomState(1)
  real = rng.normal(size=(70, 8)).astype(np.float32)
  fake = rng.normal(size=(41, 8)).astype(np.float32) + 0.3
  ours = manifold.manifold_metrics(real, fake)
  for name, value in _reference(real, fake, 3).items():
    assert ours[name] == pytest.approx(value, abs=1e-9), name


def test_mode_collapse_keeps_precision_and_loses_recall():
  """Real data in 4 clusters; a generator that makes only one of them is faithful (precision,
  density) but not diverse (recall, coverage)."""
  rng = np.random.RandomState(0)
  centres = np.eye(4, 32) * 20
  real = (centres[rng.randint(0, 4, 400)] + rng.normal(size=(400, 32))).astype(np.float32)
  good = (centres[rng.randint(0, 4, 400)] + rng.normal(size=(400, 32))).astype(np.float32)
  collapsed = (centres[np.zeros(400, int)] + rng.normal(size=(400, 32))).astype(np.float32)
  off = (rng.normal(size=(400, 32)) + 10).astype(np.float32)
  good_m = manifold.manifold_metrics(real, good)
  collapsed_m = manifold.manifold_metrics(real, collapsed)
  off_m = manifold.manifold_metrics(real, off)
  # (k=3 balls of 400 points in 32 dimensions miss some of a same-distribution set: ~0.75.)
  assert good_m['precision'] > 0.65 and good_m['recall'] > 0.65 and good_m['coverage'] > 0.8
  assert 0.8 < good_m['density'] < 1.2
  assert collapsed_m['precision'] > 0.65 and collapsed_m['density'] > 0.8
  assert collapsed_m['recall'] < 0.3 and collapsed_m['coverage'] < 0.3
  assert off_m['precision'] == 0.0 and off_m['coverage'] == 0.0 and off_m['density'] == 0.0


def test_duplicated_points_are_their_own_neighbours():
  """A point's own index is excluded, not every zero distance: a set of exact pairs has k=1
  radii of 0, and an identical generated set then still lies inside for precision and recall
  (<=); density and coverage count points strictly inside (<), none for balls of radius 0, as
  Naeem et al.'s prdc does."""
  rng = np.random.RandomState(3)
  base = rng.normal(size=(20, 4)).astype(np.float32)
  real = np.concatenate([base, base])
  metrics = manifold.manifold_metrics(real, real.copy(), k=1)
  assert metrics == {'precision': 1.0, 'recall': 1.0, 'density': 0.0, 'coverage': 0.0}


@pytest.mark.parametrize('k', [1, 3, 5])
def test_a_set_against_itself_has_density_and_coverage_one(k):
  """Density (k + 1) / k came out for a set scored against itself: every point also sat on the
  edge of its k-th neighbour's ball. prdc gives 1 (and the paper's "about 1" for one
  distribution means this)."""
  real = np.random.RandomState(k).normal(size=(50, 8)).astype(np.float32)
  metrics = manifold.manifold_metrics(real, real.copy(), k=k)
  assert metrics == {'precision': 1.0, 'recall': 1.0, 'density': 1.0, 'coverage': 1.0}


@pytest.mark.parametrize('real_shape,fake_shape,k,message', [
    ((10, 4), (10, 5), 3, r'two \[N, d\] feature arrays'),
    ((10,), (10, 4), 3, r'two \[N, d\] feature arrays'),
    ((3, 4), (10, 4), 3, 'need more than 3 samples in each set, got 3 real'),
    ((10, 4), (10, 4), 0, 'k must be a positive integer'),
])
def test_bad_input_is_one_clear_error(real_shape, fake_shape, k, message):
  with pytest.raises(UserError, match=message):
    manifold.manifold_metrics(np.zeros(real_shape, np.float32), np.zeros(fake_shape, np.float32),
                              k=k)


def test_features_that_are_not_finite_give_nan_not_zeros():
  """Were 0.0 for all four (distances to NaN compare False), as if G had learnt nothing."""
  rng = np.random.default_rng(4)
  real, fake = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
  assert manifold.manifold_metrics(real, fake)['recall'] > 0
  fake[3, 2] = np.nan
  scores = manifold.manifold_metrics(real, fake)
  assert set(scores) == {'precision', 'recall', 'density', 'coverage'}
  assert all(np.isnan(v) for v in scores.values())
