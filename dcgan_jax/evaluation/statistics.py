"""Feature statistics and the three scores: FID, Inception Score and KID.

Everything that decides a reported number runs in float64: the network's float32 features are
accumulated into float64 sums, and the Fréchet distance's matrix square root, the IS softmax and
the KID kernels are computed in float64. JAX's 64-bit mode is switched on only inside these
functions (`jax.enable_x64` as a context manager), never for the rest of the program.
"""
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax.errors import UserError

# pytorch-fid's `--save-stats` files hold exactly these two arrays.
MEAN_KEY = 'mu'
COVARIANCE_KEY = 'sigma'
COUNT_KEY = 'num_samples'


class FeatureStatistics:
  """Streaming mean and unbiased covariance of feature vectors, in float64.

  Keeps only sum(f) and sum(f^T f) (O(dim^2) memory), so 50k x 2048 features need never be held.
  Sums from several processes or shards add up exactly with `merge`.

  Example:
    stats = FeatureStatistics()
    for batch in batches:
      stats.update(extractor(batch)['pool'])
    stats.save('cifar10_train.npz')  # Loadable by pytorch-fid.
  """

  def __init__(self, dim: int | None = None):
    self.count = 0
    self._dim = dim
    self._sum = None
    self._outer_sum = None
    self._loaded = None  # (mean, covariance) of a file without sums.

  @property
  def dim(self) -> int | None:
    return self._dim

  def update(self, features: np.ndarray | jax.Array) -> 'FeatureStatistics':
    """Adds a batch of features.

    Args:
      features: [n, dim] (float32 from the network; accumulated in float64).

    Returns:
      self, for chaining.
    """
    if self._loaded is not None:
      raise UserError('Statistics loaded from a file without sample sums cannot be updated; '
                      'accumulate new features into a fresh FeatureStatistics.')
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or (self._dim is not None and features.shape[1] != self._dim):
      raise UserError(f'Features must be [n, {self._dim or "dim"}], got {features.shape}.')
    if self._sum is None:
      self._dim = features.shape[1]
      self._sum = np.zeros(self._dim, np.float64)
      self._outer_sum = np.zeros((self._dim, self._dim), np.float64)
    self.count += features.shape[0]
    self._sum += features.sum(axis=0)
    self._outer_sum += features.T @ features
    return self

  def merge(self, other: 'FeatureStatistics') -> 'FeatureStatistics':
    """Adds the samples summarised by `other` (e.g. another process's), returning self."""
    if other.count == 0:
      return self
    if self._loaded is not None or other._loaded is not None:  # pylint: disable=protected-access
      raise UserError('Statistics loaded from a file without sample sums cannot be merged.')
    if self._sum is None:
      self._dim = other.dim
      self._sum = np.zeros(self._dim, np.float64)
      self._outer_sum = np.zeros((self._dim, self._dim), np.float64)
    if other.dim != self._dim:
      raise UserError(f'Cannot merge {other.dim}-dim statistics into {self._dim}-dim ones.')
    self.count += other.count
    self._sum += other._sum  # pylint: disable=protected-access
    self._outer_sum += other._outer_sum  # pylint: disable=protected-access
    return self

  @property
  def mean(self) -> np.ndarray:
    """[dim] float64 mean."""
    if self._loaded is not None:
      return self._loaded[0]
    self._require(1)
    return self._sum / self.count

  @property
  def covariance(self) -> np.ndarray:
    """[dim, dim] float64 unbiased covariance (divides by n - 1, as np.cov does)."""
    if self._loaded is not None:
      return self._loaded[1]
    self._require(2)
    if self.count < self._dim:
      warnings.warn(
          f'Covariance of {self.count} samples in {self._dim} dimensions is rank-deficient; '
          f'FID needs at least {self._dim} samples and is comparable only at equal sample counts '
          f'(10,000+ recommended, 50,000 is the standard).', UserWarning, stacklevel=2)
    mean = self._sum / self.count
    covariance = (self._outer_sum - self.count * np.outer(mean, mean)) / (self.count - 1)
    return (covariance + covariance.T) / 2  # Exactly symmetric despite rounding.

  def _require(self, n: int) -> None:
    if self.count < n:
      raise UserError(f'Statistics need at least {n} samples, got {self.count}.')

  def save(self, path: str | os.PathLike, **metadata) -> None:
    """Writes `mu`, `sigma` (as pytorch-fid's `--save-stats`), the sample count and metadata.

    Args:
      path: target `.npz` file.
      **metadata: extra scalars or strings to record (e.g. preprocessing='pytorch_fid').
    """
    arrays = {MEAN_KEY: self.mean, COVARIANCE_KEY: self.covariance}
    if self.count:
      arrays[COUNT_KEY] = np.asarray(self.count, np.int64)
    for key, value in metadata.items():
      if key in arrays:
        raise UserError(f'Metadata key {key!r} is reserved.')
      arrays[key] = np.asarray(value)
    np.savez_compressed(path, **arrays)

  @classmethod
  def load(cls, path: str | os.PathLike) -> tuple['FeatureStatistics', dict[str, object]]:
    """Reads a statistics file (ours or pytorch-fid's `--save-stats` output).

    Returns:
      (statistics with `mean` and `covariance`, {metadata key: value}).

    Raises:
      UserError: missing file, or no `mu`/`sigma` arrays of matching shapes.
    """
    try:
      with np.load(path, allow_pickle=False) as archive:
        contents = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as e:
      raise UserError(f'Cannot read statistics from {path}: {e}') from None
    mean = contents.pop(MEAN_KEY, None)
    covariance = contents.pop(COVARIANCE_KEY, None)
    if (mean is None or covariance is None or mean.ndim != 1
        or covariance.shape != (mean.shape[0],) * 2):
      raise UserError(f'{path} is not a statistics file: it needs arrays mu [d] and sigma [d, d].')
    stats = cls(dim=mean.shape[0])
    stats.count = int(contents.pop(COUNT_KEY, 0))
    stats._loaded = (mean.astype(np.float64), covariance.astype(np.float64))
    metadata = {key: value.item() if value.ndim == 0 else value for key, value in contents.items()}
    return stats, metadata


def _allgather_float64(x: np.ndarray) -> np.ndarray:
  """``[num_processes, *x.shape]``: every process's ``x``, bit-exact in float64.

  JAX arrays are float32 unless x64 is enabled, so the float64 values travel as their raw bits.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  bits = np.ascontiguousarray(x, np.float64).view(np.uint32)
  return np.asarray(multihost_utils.process_allgather(bits)).view(np.float64)


def allgather_statistics(stats: FeatureStatistics, dim: int) -> FeatureStatistics:
  """The statistics of every process's samples, on every process.

  A collective: all processes must call it, each with the statistics of its own share of the
  samples (possibly none). The sums are added in process order, so every process gets the same
  result. With one process, ``stats`` comes back as it is.

  Args:
    stats: this process's statistics (not loaded from a file).
    dim: the feature dimension (needed where this process saw no samples).

  Returns:
    Statistics of all samples of all processes.
  """
  if jax.process_count() == 1:
    return stats
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if stats._loaded is not None:  # pylint: disable=protected-access
    raise UserError('Statistics loaded from a file without sample sums cannot be gathered.')
  empty = stats._sum is None  # pylint: disable=protected-access
  total = np.zeros(dim, np.float64) if empty else stats._sum  # pylint: disable=protected-access
  outer = (np.zeros((dim, dim), np.float64) if empty
           else stats._outer_sum)  # pylint: disable=protected-access
  counts = np.asarray(multihost_utils.process_allgather(np.asarray(stats.count, np.int32)))
  sums, outers = _allgather_float64(total), _allgather_float64(outer)
  merged = FeatureStatistics(dim)
  for count, part_sum, part_outer in zip(counts.reshape(-1), sums, outers):
    part = FeatureStatistics(dim)
    part.count = int(count)
    part._sum, part._outer_sum = part_sum, part_outer  # pylint: disable=protected-access
    merged.merge(part)
  return merged


def process_share(num: int) -> slice:
  """This process's contiguous share of ``num`` items (the shares cover them exactly once)."""
  index, count = jax.process_index(), jax.process_count()
  return slice(num * index // count, num * (index + 1) // count)


def frechet_distance_jax(mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array,
                         sigma2: jax.Array) -> jax.Array:
  """Fréchet distance between two Gaussians; pure jnp, jittable, in the inputs' dtype.

  FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), where
  tr sqrt(S1 S2) = sum_i sqrt(lambda_i(S1^1/2 S2 S1^1/2)) because S1 S2 is similar to that
  symmetric positive semi-definite matrix. Two symmetric eigendecompositions replace scipy's
  general `sqrtm`; they run on GPU and under jit. Eigenvalues that rounding pushes below zero are
  clipped. Call it with float64 inputs (inside `jax.enable_x64`): float32 is not accurate enough.

  Args:
    mu1, mu2: [d] means.
    sigma1, sigma2: [d, d] symmetric covariances.

  Returns:
    Scalar distance.
  """
  eigenvalues, eigenvectors = jnp.linalg.eigh(sigma1)
  sqrt_sigma1 = (eigenvectors * jnp.sqrt(jnp.clip(eigenvalues, 0))) @ eigenvectors.T
  product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
  product = (product + product.T) / 2
  trace_sqrt = jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(product), 0)))
  diff = mu1 - mu2
  return diff @ diff + jnp.trace(sigma1) + jnp.trace(sigma2) - 2 * trace_sqrt


_frechet_distance_jit = jax.jit(frechet_distance_jax)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The FID between two feature distributions, computed in float64.

  Args:
    mu1, mu2: [d] feature means.
    sigma1, sigma2: [d, d] unbiased feature covariances.

  Returns:
    The distance as a Python float.

  Raises:
    UserError: shapes disagree.
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise UserError(f'Means and covariances disagree in shape: {mu1.shape}, {sigma1.shape}, '
                    f'{mu2.shape}, {sigma2.shape}; both need [d] and [d, d].')
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64)) for a in (mu1, sigma1, mu2, sigma2)]
    return float(_frechet_distance_jit(*args))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """The Inception Score, as the original OpenAI code computes it.

  p(y|x) = softmax(logits) in float64; the samples are cut into `splits` consecutive parts
  (part i = [i N // splits, (i + 1) N // splits)), with no shuffling; each part scores
  exp(mean_x KL(p(y|x) || mean_x p(y|x))).

  Args:
    logits: [N, classes] logits WITHOUT the fc bias (the extractor's 'logits').
    splits: number of parts.

  Returns:
    (mean, population standard deviation) over the parts.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not 1 <= splits <= logits.shape[0]:
    raise UserError(f'Inception Score needs [N, classes] logits with N >= splits={splits}, '
                    f'got {logits.shape}.')
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  p = np.exp(log_p)
  n = logits.shape[0]
  scores = []
  for i in range(splits):
    part = slice(i * n // splits, (i + 1) * n // splits)
    part_p, part_log_p = p[part], log_p[part]
    log_marginal = np.log(part_p.mean(axis=0))
    kl = np.sum(part_p * (part_log_p - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _polynomial_mmd2(x: jax.Array, y: jax.Array) -> jax.Array:
  """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3; x and y: [m, d]."""
  m, d = x.shape
  kernel = lambda a, b: (a @ b.T / d + 1) ** 3
  k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
  within = (k_xx.sum() - jnp.trace(k_xx) + k_yy.sum() - jnp.trace(k_yy)) / (m * (m - 1))
  return within - 2 * k_xy.sum() / (m * m)


@jax.jit
def _kid_subsets(features1, features2, indices1, indices2):
  return jax.lax.map(lambda idx: _polynomial_mmd2(features1[idx[0]], features2[idx[1]]),
                     (indices1, indices2))


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
  """The Kernel Inception Distance (torch-fidelity's protocol), in float64.

  For each of `num_subsets` rounds, draws `subset_size` samples without replacement from each
  set (numpy RandomState(seed), in torch-fidelity's order) and computes the unbiased MMD^2 with
  the cubic polynomial kernel (a.b / d + 1)^3.

  Args:
    features1, features2: [N1, d] and [N2, d] pool features.
    num_subsets: number of rounds.
    subset_size: samples per set per round; at most min(N1, N2).
    seed: seed of the subset draws.

  Returns:
    (mean, population standard deviation) of the MMD^2 estimates.
  """
  features1, features2 = np.asarray(features1), np.asarray(features2)
  if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
    raise UserError(f'KID needs two [N, d] feature arrays, got {features1.shape} and '
                    f'{features2.shape}.')
  n = min(features1.shape[0], features2.shape[0])
  if not 2 <= subset_size <= n or num_subsets < 1:
    raise UserError(f'KID subset_size must be in [2, {n}] (the smaller sample count) and '
                    f'num_subsets >= 1, got {subset_size} and {num_subsets}.')
  rng = np.random.RandomState(seed)
  indices1, indices2 = [], []
  for _ in range(num_subsets):
    indices1.append(rng.choice(features1.shape[0], subset_size, replace=False))
    indices2.append(rng.choice(features2.shape[0], subset_size, replace=False))
  with jax.enable_x64(True):
    mmds = np.asarray(_kid_subsets(
        jnp.asarray(features1, jnp.float64), jnp.asarray(features2, jnp.float64),
        jnp.asarray(np.stack(indices1)), jnp.asarray(np.stack(indices2))))
  return float(mmds.mean()), float(mmds.std())
