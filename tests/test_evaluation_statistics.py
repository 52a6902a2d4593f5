"""FID / IS / KID and feature statistics against pytorch-fid and independent numpy formulas."""
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import evaluation
from dcgan_jax.errors import UserError


def _features(rng, n, dim, rank=None, shift=0.0):
  """Non-negative, correlated features like Inception's (rank < dim -> rank-deficient)."""
  rank = rank or dim
  mixing = rng.normal(size=(rank, dim)) / np.sqrt(rank)
  return np.abs(rng.normal(size=(n, rank)) @ mixing + shift).astype(np.float32)


def _moments(features):
  return features.astype(np.float64).mean(0), np.cov(features, rowvar=False)


@pytest.mark.parametrize('n1,n2,dim', [(500, 400, 64), (40, 30, 64)],
                         ids=['full_rank', 'rank_deficient'])
def test_frechet_distance_matches_pytorch_fid(n1, n2, dim):
  fid_score = pytest.importorskip('pytorch_fid.fid_score')
  rng = np.random.default_rng(0)
  mu1, sigma1 = _moments(_features(rng, n1, dim))
  mu2, sigma2 = _moments(_features(rng, n2, dim, shift=0.3))
  expected = fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
  ours = evaluation.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert isinstance(ours, float)
  assert ours == pytest.approx(expected, rel=1e-6)
  assert ours > 0.1  # A real distance, not a trivially matching 0.


def test_frechet_distance_is_zero_for_identical_and_symmetric():
  rng = np.random.default_rng(1)
  mu1, sigma1 = _moments(_features(rng, 300, 32))
  mu2, sigma2 = _moments(_features(rng, 300, 32, shift=0.5))
  assert abs(evaluation.frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9
  # Fewer images than dimensions: rounding pushed the formula to about -5e-6, never below 0 now.
  for seed in range(3):
    mu, sigma = _moments(np.random.default_rng(seed).normal(size=(10, 64)))
    assert 0.0 <= evaluation.frechet_distance(mu, sigma, mu, sigma) < 1e-4
  assert evaluation.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
      evaluation.frechet_distance(mu2, sigma2, mu1, sigma1), rel=1e-9)


def test_frechet_distance_is_float64_jittable_and_leaves_x64_off():
  rng = np.random.default_rng(2)
  mu1, sigma1 = _moments(_features(rng, 200, 16))
  mu2, sigma2 = _moments(_features(rng, 200, 16, shift=0.2))
  assert not jax.config.jax_enable_x64
  value = evaluation.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert not jax.config.jax_enable_x64  # Not flipped for the rest of the program.
  assert jnp.zeros(1, jnp.float32).astype(float).dtype == jnp.float32
  with jax.enable_x64(True):
    jitted = jax.jit(evaluation.frechet_distance_jax)(
        *[jnp.asarray(a, jnp.float64) for a in (mu1, sigma1, mu2, sigma2)])
    assert jitted.dtype == jnp.float64
  assert float(jitted) == pytest.approx(value, rel=1e-12)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(UserError, match='shape'):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))



def test_frechet_distance_takes_two_feature_statistics():
  rng = np.random.default_rng(3)
  a = evaluation.FeatureStatistics().update(rng.normal(size=(40, 5)))
  b = evaluation.FeatureStatistics().update(rng.normal(1.0, 2.0, size=(40, 5)))
  expected = evaluation.frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
  assert expected > 1.0
  assert evaluation.frechet_distance(a, b) == expected
  with pytest.raises(UserError, match=r'two FeatureStatistics.*got FeatureStatistics, ndarray'):
    evaluation.frechet_distance(a, b.covariance)
  with pytest.raises(UserError, match='needs both means and both covariances'):
    evaluation.frechet_distance(a.mean, a.covariance)

def test_counts_that_are_not_integers_are_one_clear_error():
  """Were raw TypeErrors deep inside (splits=2.5, subset_size=100.0), or k=True ran as k=1."""
  features = np.random.default_rng(0).normal(size=(20, 4))
  with pytest.raises(UserError, match='splits must be an integer, got 2.5'):
    evaluation.inception_score(features, splits=2.5)
  with pytest.raises(UserError, match='must be integers, got 10.0 and 100'):
    evaluation.kernel_inception_distance(features, features, subset_size=10.0)
  with pytest.raises(UserError, match='k must be a positive integer \\(got True\\)'):
    evaluation.manifold_metrics(features, features, k=True)
  assert evaluation.inception_score(features, splits=np.int64(2))[0] > 0  # numpy ints are fine.


def _inception_score_reference(logits, splits):
  """The original OpenAI / torch-fidelity formula (without shuffling), written out directly."""
  logits = logits.astype(np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  n = len(p)
  scores = []
  for k in range(splits):
    part = p[k * n // splits:(k + 1) * n // splits]
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize('n,splits', [(1000, 10), (103, 10), (50, 1)])
def test_inception_score_matches_reference_formula(n, splits):
  rng = np.random.default_rng(3)
  logits = (rng.normal(size=(n, 1008)) * 3).astype(np.float32)
  mean, std = evaluation.inception_score(logits, splits=splits)
  ref_mean, ref_std = _inception_score_reference(logits, splits)
  assert mean == pytest.approx(ref_mean, rel=1e-9)
  assert std == pytest.approx(ref_std, rel=1e-6, abs=1e-12)
  assert 1 < mean < 1008


def test_inception_score_bounds():
  # One confident class per sample, all classes equally used -> IS equals the number of classes.
  logits = np.full((100, 10), -50.0, np.float32)
  logits[np.arange(100), np.arange(100) % 10] = 50.0
  mean, std = evaluation.inception_score(logits, splits=10)
  assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
  # Identical predictions -> IS of 1.
  mean, _ = evaluation.inception_score(np.tile(logits[:1], (100, 1)), splits=10)
  assert mean == pytest.approx(1.0, abs=1e-9)


def _kid_reference(f1, f2, num_subsets, subset_size, seed):
  """Direct numpy KID: same subset draws, explicit double loops over i != j for the diagonals."""
  rng = np.random.RandomState(seed)
  d = f1.shape[1]
  mmds = []
  for _ in range(num_subsets):
    x = f1[rng.choice(len(f1), subset_size, replace=False)].astype(np.float64)
    y = f2[rng.choice(len(f2), subset_size, replace=False)].astype(np.float64)
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m = subset_size
    off_diagonal = ~np.eye(m, dtype=bool)
    mmds.append(k(x, x)[off_diagonal].mean() + k(y, y)[off_diagonal].mean() - 2 * k(x, y).mean())
  return np.mean(mmds), np.std(mmds)


def test_kernel_inception_distance_matches_numpy():
  rng = np.random.default_rng(4)
  f1 = _features(rng, 300, 48)
  f2 = _features(rng, 250, 48, shift=0.5)
  mean, std = evaluation.kernel_inception_distance(f1, f2, num_subsets=7, subset_size=100)
  ref_mean, ref_std = _kid_reference(f1, f2, 7, 100, 2020)
  assert mean == pytest.approx(ref_mean, rel=1e-9)
  assert std == pytest.approx(ref_std, rel=1e-6)
  assert mean > 3 * std  # The two sets really differ.
  # Unbiased: about zero for two independent samples of one distribution.
  g = _features(rng, 600, 48)
  same, _ = evaluation.kernel_inception_distance(g[:300], g[300:], num_subsets=30,
                                                 subset_size=100)
  assert abs(same) < mean / 10


def test_kernel_inception_distance_rejects_oversized_subsets():
  f = np.ones((10, 4), np.float32)
  with pytest.raises(UserError, match='subset_size'):
    evaluation.kernel_inception_distance(f, f, subset_size=1000)


def test_feature_statistics_stream_matches_np_cov():
  rng = np.random.default_rng(5)
  features = _features(rng, 700, 40, shift=3.0)  # Large mean: cancellation would show.
  stats = evaluation.FeatureStatistics()
  for batch in np.array_split(features, [1, 250, 256, 600]):
    stats.update(batch)
  assert stats.count == 700
  np.testing.assert_allclose(stats.mean, features.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-9,
                             atol=1e-12)
  assert stats.mean.dtype == np.float64 and stats.covariance.dtype == np.float64


def test_feature_statistics_merge_equals_single_stream():
  rng = np.random.default_rng(6)
  features = _features(rng, 300, 8)
  whole = evaluation.FeatureStatistics().update(features)
  merged = evaluation.FeatureStatistics().merge(
      evaluation.FeatureStatistics().update(features[:120])).merge(
          evaluation.FeatureStatistics().update(features[120:]))
  assert merged.count == 300
  np.testing.assert_allclose(merged.covariance, whole.covariance, rtol=1e-12)


def test_feature_statistics_warns_when_rank_deficient():
  stats = evaluation.FeatureStatistics().update(np.random.default_rng(7).normal(size=(10, 16)))
  with pytest.warns(UserWarning, match='rank-deficient'):
    _ = stats.covariance
  # As many samples as dimensions still span only dim - 1 of them around their mean.
  square = evaluation.FeatureStatistics().update(np.random.default_rng(7).normal(size=(16, 16)))
  with pytest.warns(UserWarning, match='rank-deficient'):
    assert np.linalg.matrix_rank(square.covariance) == 15
  full = evaluation.FeatureStatistics().update(np.random.default_rng(7).normal(size=(20, 16)))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    _ = full.covariance


def test_feature_statistics_rejects_bad_batches():
  stats = evaluation.FeatureStatistics().update(np.zeros((3, 5)))
  with pytest.raises(UserError):
    stats.update(np.zeros((3, 6)))
  with pytest.raises(UserError):
    evaluation.FeatureStatistics().mean  # pylint: disable=expression-not-assigned


def test_statistics_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(8)
  stats = evaluation.FeatureStatistics().update(_features(rng, 50, 12))
  path = tmp_path / 'stats.npz'
  stats.save(path, preprocessing='pytorch_fid', image_size=32)
  loaded, metadata = evaluation.FeatureStatistics.load(path)
  np.testing.assert_array_equal(loaded.mean, stats.mean)
  np.testing.assert_array_equal(loaded.covariance, stats.covariance)
  assert loaded.count == 50
  assert metadata == {'preprocessing': 'pytorch_fid', 'image_size': 32}
  with pytest.raises(UserError):
    loaded.update(np.zeros((2, 12)))
  # Metadata that only pickle could load was written, then the file refused: now refused first.
  stats.save(path, source=pathlib.Path('/data/real'))  # A path is saved as its string.
  assert evaluation.FeatureStatistics.load(path)[1] == {'source': '/data/real'}
  for bad in ({'source': None}, {'note': {'a': 1}}, {'mu': 1}):
    with pytest.raises(UserError, match='cannot be saved|is reserved'):
      stats.save(tmp_path / 'bad.npz', **bad)
    assert not (tmp_path / 'bad.npz').exists()


def test_statistics_are_saved_where_asked_and_whole(tmp_path, monkeypatch):
  stats = evaluation.FeatureStatistics().update(_features(np.random.default_rng(3), 20, 4))
  stats.save(tmp_path / 'stats')  # numpy's savez would have written stats.npz.
  assert sorted(p.name for p in tmp_path.iterdir()) == ['stats']
  np.testing.assert_array_equal(evaluation.FeatureStatistics.load(tmp_path / 'stats')[0].mean,
                                stats.mean)
  # A save that fails part-way (a full disk) leaves the earlier file whole and no leftovers.
  before = (tmp_path / 'stats').read_bytes()

  def fail(file, **arrays):
    file.write(b'PK half an archive')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(np, 'savez_compressed', fail)
  with pytest.raises(OSError, match='No space'):
    stats.save(tmp_path / 'stats')
  assert (tmp_path / 'stats').read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['stats']


def test_statistics_files_are_compatible_with_pytorch_fid(tmp_path):
  fid_score = pytest.importorskip('pytorch_fid.fid_score')
  rng = np.random.default_rng(9)
  stats = evaluation.FeatureStatistics().update(_features(rng, 80, 12))
  ours = tmp_path / 'ours.npz'
  stats.save(ours)
  # pytorch-fid reads .npz paths directly (its model and device are not used for them).
  mu, sigma = fid_score.compute_statistics_of_path(str(ours), None, 50, 12, 'cpu')
  np.testing.assert_array_equal(mu, stats.mean)
  np.testing.assert_array_equal(sigma, stats.covariance)
  # And the other way: a file written the way pytorch-fid's --save-stats writes it.
  theirs = tmp_path / 'theirs.npz'
  np.savez_compressed(theirs, mu=mu + 1, sigma=sigma * 2)
  loaded, metadata = evaluation.FeatureStatistics.load(theirs)
  np.testing.assert_array_equal(loaded.mean, mu + 1)
  np.testing.assert_array_equal(loaded.covariance, sigma * 2)
  assert metadata == {}


def test_statistics_load_rejects_other_files(tmp_path):
  path = tmp_path / 'other.npz'
  np.savez(path, weights=np.zeros(3))
  with pytest.raises(UserError, match='mu'):
    evaluation.FeatureStatistics.load(path)
  with pytest.raises(UserError):
    evaluation.FeatureStatistics.load(tmp_path / 'missing.npz')
  np.save(tmp_path / 'array.npy', np.zeros(3))  # One array, not an archive.
  with pytest.raises(UserError, match='not a statistics file'):
    evaluation.FeatureStatistics.load(tmp_path / 'array.npy')
  np.savez(path, mu=np.array(['a', 'b']), sigma=np.zeros((2, 2)))
  with pytest.raises(UserError, match='mu'):
    evaluation.FeatureStatistics.load(path)
  # A corrupt file would give FID nan: refused when read, with what to do.
  np.savez(path, mu=np.array([0.0, np.nan]), sigma=np.eye(2))
  with pytest.raises(UserError, match='non-finite .* make it again'):
    evaluation.FeatureStatistics.load(path)
  # A file cut short (an interrupted copy) and one that is no NumPy file at all: one sentence
  # each (zipfile's BadZipFile, and numpy's advice to allow pickles, are not it).
  evaluation.FeatureStatistics().update(np.eye(3)).save(path)
  whole = path.read_bytes()
  for size in (len(whole) // 2, 100):
    (tmp_path / 'cut.npz').write_bytes(whole[:size])
    with pytest.raises(UserError, match=r'cut.npz \(damaged or cut short\?\)'):
      evaluation.FeatureStatistics.load(tmp_path / 'cut.npz')
  (tmp_path / 'text.npz').write_text('mu, sigma\n')
  with pytest.raises(UserError, match='not a statistics file.*not a NumPy file at all') as caught:
    evaluation.FeatureStatistics.load(tmp_path / 'text.npz')
  assert 'pickle' not in str(caught.value)


def _relative_error(ours, expected):
  return np.abs(ours - expected).max() / np.abs(expected).max()


def test_device_statistics_match_float64_despite_a_large_mean():
  # Inception-like: the mean (5) dwarfs the spread (0.1). A float32 f^T f on the device would
  # cancel ~3.4 of float32's 7 digits; the shifted, double-float device sums must not.
  rng = np.random.default_rng(8)
  features = (5.0 + 0.1 * rng.standard_normal((2000, 64))).astype(np.float32)
  mean, covariance = _moments(features)
  naive = (features.T @ features - 2000 * np.outer(*[features.mean(0)] * 2)) / 1999
  assert _relative_error(naive, covariance) > 1e-4  # The test can tell the naive way apart.
  stats = evaluation.FeatureStatistics()
  for batch in np.array_split(features, [1, 250, 256, 1000, 1500]):  # Uneven, one single row.
    stats.update(jnp.asarray(batch))
  assert stats.count == 2000 and stats.dim == 64
  assert stats.mean.dtype == np.float64 and stats.covariance.dtype == np.float64
  assert _relative_error(stats.mean, mean) < 1e-7
  # What is left is each batch's float32 Gram matrix, rounded as XLA's dot kernel accumulates
  # it: 9.6e-7 on jax 0.10 (Eigen), 1.5e-6 on jax 0.12 (its XLA:CPU runs dots through
  # YNNPACK; numpy's float32 matmul rounds the same batches alike). The naive way is 8e-3 off.
  assert _relative_error(stats.covariance, covariance) < 3e-6
  np.testing.assert_array_equal(stats.covariance, stats.covariance.T)


def test_device_statistics_of_sharded_features_merge_with_host_ones(tmp_path):
  # As the extractor's device_batches gives them: batches sharded over the 8 local devices.
  mesh = jax.make_mesh((8,), ('batch',), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch'))
  rng = np.random.default_rng(9)
  features = _features(rng, 640, 48, shift=3.0)
  device = evaluation.FeatureStatistics()
  for batch in np.split(features[:320], 4):
    device.update(jax.device_put(batch, sharding))
  device.update(jnp.asarray(features[320:400]))  # Other devices: folded, then a new device sum.
  merged = device.merge(evaluation.FeatureStatistics().update(features[400:]))
  assert merged.count == 640
  mean, covariance = _moments(features)
  assert _relative_error(merged.mean, mean) < 1e-7
  assert _relative_error(merged.covariance, covariance) < 1e-6
  # One process: allgather returns the statistics themselves; saving reads the device sums.
  assert evaluation.allgather_statistics(merged, 48) is merged
  merged.save(tmp_path / 'stats.npz')
  loaded, _ = evaluation.FeatureStatistics.load(tmp_path / 'stats.npz')
  np.testing.assert_array_equal(loaded.covariance, merged.covariance)


def test_device_statistics_can_be_merged_into_host_ones():
  rng = np.random.default_rng(10)
  features = _features(rng, 200, 16, shift=2.0)
  host = evaluation.FeatureStatistics().update(features[:50])
  host.merge(evaluation.FeatureStatistics().update(jnp.asarray(features[50:])))
  host.update(jnp.asarray(features[:0]))  # An empty device batch changes nothing.
  assert host.count == 200
  mean, covariance = _moments(features)
  assert _relative_error(host.mean, mean) < 1e-7
  assert _relative_error(host.covariance, covariance) < 1e-6
  with pytest.raises(UserError, match=r'\[n, 16\]'):
    host.update(jnp.zeros((2, 15)))
