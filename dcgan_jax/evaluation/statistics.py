"""Feature statistics and the three scores: FID, Inception Score and KID.

Everything that decides a reported number runs in float64: the network's float32 features are
accumulated into float64 sums, and the Fréchet distance's matrix square root, the IS softmax and
the KID kernels are computed in float64. JAX's 64-bit mode is switched on only inside these
functions (`jax.enable_x64` as a context manager), never for the rest of the program.

Features that are still on the device (a `jax.Array`, e.g. the extractor's `device_batches`) are
summed there, so a 50k-sample FID never copies features to the host nor runs 420 GFLOP of float64
BLAS on it: each batch's sum and Gram matrix of the features minus a fixed per-run shift (the
first batch's mean, so that the large common mean of Inception features does not cancel) are
computed in float32 at `Precision.HIGHEST` (never TF32) and added into float32 hi/lo pairs
(error-free "double-float" sums, about 48 significant bits). The host converts them to float64
only when the statistics are read, merged, gathered or saved.
"""
import contextlib
import os
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import numpy_files
from dcgan_jax.errors import UserError, is_integer, warn_user

# pytorch-fid's `--save-stats` files hold exactly these two arrays.
MEAN_KEY = 'mu'
COVARIANCE_KEY = 'sigma'
COUNT_KEY = 'num_samples'


class FeatureStatistics:
  """Streaming mean and unbiased covariance of feature vectors, in float64.

  Keeps only sum(f) and sum(f^T f) (O(dim^2) memory), so 50k x 2048 features need never be held.
  Sums from several processes or shards add up exactly with `merge`.

  numpy features are accumulated on the host in float64. Features given as a `jax.Array` are
  accumulated on their devices without a host sync (see the module docstring; the result agrees
  with the float64 one to about 1e-7 to 1e-6 relative, the rounding of each batch's float32 Gram
  matrix) and folded into the float64 sums on first read.

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
    self._device = None  # _DeviceSums not yet folded into the float64 host sums.

  @property
  def dim(self) -> int | None:
    return self._dim

  def update(self, features: np.ndarray | jax.Array) -> 'FeatureStatistics':
    """Adds a batch of features.

    Args:
      features: [n, dim] (float32 from the network). numpy arrays are accumulated in float64 on
        the host; a `jax.Array` (not float64) is accumulated on its devices asynchronously.

    Returns:
      self, for chaining.
    """
    if self._loaded is not None:
      raise UserError('Statistics loaded from a file without sample sums cannot be updated; '
                      'accumulate new features into a fresh FeatureStatistics.')
    if np.ndim(features) != 2 or (self._dim is not None and np.shape(features)[1] != self._dim):
      raise UserError(f'Features must be [n, {self._dim or "dim"}], got {np.shape(features)}.')
    if isinstance(features, jax.Array) and features.dtype != np.float64:
      return self._update_device(features)
    features = np.asarray(features, dtype=np.float64)
    self._init_sums(features.shape[1])
    self.count += features.shape[0]
    self._sum += features.sum(axis=0)
    self._outer_sum += features.T @ features
    return self

  def _init_sums(self, dim: int) -> None:
    if self._sum is None:
      self._dim = dim
      self._sum = np.zeros(self._dim, np.float64)
      self._outer_sum = np.zeros((self._dim, self._dim), np.float64)

  def _update_device(self, features: jax.Array) -> 'FeatureStatistics':
    n = features.shape[0]
    self._dim = features.shape[1]
    if n == 0:
      return self
    if self._device is not None and self._device.devices != features.sharding.device_set:
      # One jitted program needs all its inputs on the same devices; features from elsewhere
      # start a new device accumulator (with its own shift) after folding in the current one.
      self._flush()
    if self._device is None:
      self._device = _DeviceSums.start(features)
    self._device.add(features)
    self.count += n
    return self

  def _flush(self) -> None:
    """Folds the device sums (if any) into the float64 host sums (one device->host copy)."""
    if self._device is None:
      return
    device, self._device = self._device, None
    shifted_sum, shifted_outer, shift = device.fetch()
    n = device.count
    # sum f = sum x + n c and sum f f^T = sum x x^T + (sum x) c^T + c (sum x)^T + n c c^T for
    # f = x + c; in float64 the re-added mean costs ~1e-16 * mean^2 / variance (negligible).
    self._init_sums(shift.shape[0])
    self._sum += shifted_sum + n * shift
    self._outer_sum += (shifted_outer + np.outer(shifted_sum, shift) + np.outer(shift, shifted_sum)
                        + n * np.outer(shift, shift))

  def _host_sums(self) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(sum f, sum f^T f) in float64 after folding in pending device sums."""
    self._flush()
    return self._sum, self._outer_sum

  def merge(self, other: 'FeatureStatistics') -> 'FeatureStatistics':
    """Adds the samples summarised by `other` (e.g. another process's), returning self."""
    if other.count == 0:
      return self
    if self._loaded is not None or other._loaded is not None:  # pylint: disable=protected-access
      raise UserError('Statistics loaded from a file without sample sums cannot be merged.')
    other_sum, other_outer = other._host_sums()  # pylint: disable=protected-access
    self._flush()
    if self._sum is not None and other.dim != self._dim:
      raise UserError(f'Cannot merge {other.dim}-dim statistics into {self._dim}-dim ones.')
    self._init_sums(other.dim)
    self.count += other.count
    self._sum += other_sum
    self._outer_sum += other_outer
    return self

  @property
  def mean(self) -> np.ndarray:
    """[dim] float64 mean."""
    if self._loaded is not None:
      return self._loaded[0]
    self._require(1)
    self._flush()
    return self._sum / self.count

  @property
  def covariance(self) -> np.ndarray:
    """[dim, dim] float64 unbiased covariance (divides by n - 1, as np.cov does)."""
    if self._loaded is not None:
      return self._loaded[1]
    self._require(2)
    if self.count <= self._dim:  # n samples span at most n - 1 dimensions around their mean.
      warn_user(
          f'Covariance of {self.count} samples in {self._dim} dimensions is rank-deficient; '
          f'FID needs more than {self._dim} samples and is comparable only at equal sample counts '
          f'(10,000+ recommended, 50,000 is the standard).')
    self._flush()
    mean = self._sum / self.count
    covariance = (self._outer_sum - self.count * np.outer(mean, mean)) / (self.count - 1)
    return (covariance + covariance.T) / 2  # Exactly symmetric despite rounding.

  def _require(self, n: int) -> None:
    if self.count < n:
      raise UserError(f'Statistics need at least {n} samples, got {self.count}.')

  def save(self, path: str | os.PathLike, **metadata) -> None:
    """Writes `mu`, `sigma` (as pytorch-fid's `--save-stats`), the sample count and metadata.

    The file is written to ``path`` exactly (numpy's own savez would add ``.npz`` to a name
    without it, and the file would not be where it was asked for), through a temporary file
    beside it: a reader, or a file already at ``path``, never sees half a file.

    Args:
      path: target file, conventionally ending in `.npz`.
      **metadata: extra scalars or strings to record (e.g. preprocessing='pytorch_fid').
    """
    checked = {}
    for key, value in metadata.items():  # Before anything is computed or written.
      if key in (MEAN_KEY, COVARIANCE_KEY, COUNT_KEY):
        raise UserError(f'Metadata key {key!r} is reserved.')
      array = np.asarray(os.fspath(value) if isinstance(value, os.PathLike) else value)
      if array.dtype.kind not in 'biufU':  # Object arrays would need pickle to load.
        raise UserError(f'Metadata {key}={value!r} cannot be saved; give numbers, strings or '
                        'numeric arrays.')
      checked[key] = array
    arrays = {MEAN_KEY: self.mean, COVARIANCE_KEY: self.covariance}
    if self.count:
      arrays[COUNT_KEY] = np.asarray(self.count, np.int64)
    path = os.fspath(path)
    tmp_path = f'{path}.tmp'
    try:
      with open(tmp_path, 'wb') as f:  # A file object: numpy adds no suffix to it.
        np.savez_compressed(f, **arrays, **checked)
      os.replace(tmp_path, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(tmp_path)
      raise

  @classmethod
  def load(cls, path: str | os.PathLike) -> tuple['FeatureStatistics', dict[str, object]]:
    """Reads a statistics file (ours or pytorch-fid's `--save-stats` output).

    Returns:
      (statistics with `mean` and `covariance`, {metadata key: value}).

    Raises:
      UserError: missing file, or no `mu`/`sigma` arrays of matching shapes.
    """
    not_statistics = (f'{path} is not a statistics file: it needs arrays mu [d] and sigma '
                      '[d, d] (an .npz, as pytorch-fid --save-stats writes)')
    try:
      is_numpy = numpy_files.looks_like_numpy(path)
    except OSError as e:
      raise UserError(f'Cannot read statistics from {path}: {e}') from None
    if not is_numpy:
      raise UserError(f'{not_statistics}; this file is not a NumPy file at all.')
    # A damaged or cut-short archive fails in zipfile or zlib, when opened or when read.
    damaged = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
      loaded = np.load(path, allow_pickle=False)
    except damaged as e:
      raise UserError(f'Cannot read statistics from {path} (damaged or cut short?): {e}') from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # A bare .npy array.
      raise UserError(f'{not_statistics}.')
    try:
      with loaded as archive:
        contents = {key: archive[key] for key in archive.files}
    except damaged as e:
      raise UserError(f'Cannot read statistics from {path} (damaged or cut short?): {e}') from None
    mean = contents.pop(MEAN_KEY, None)
    covariance = contents.pop(COVARIANCE_KEY, None)
    if (mean is None or covariance is None or mean.ndim != 1
        or covariance.shape != (mean.shape[0],) * 2
        or mean.dtype.kind not in 'fiu' or covariance.dtype.kind not in 'fiu'):
      raise UserError(f'{path} is not a statistics file: it needs arrays mu [d] and sigma [d, d].')
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(covariance))):
      raise UserError(f'{path} holds non-finite (NaN or infinite) statistics; make it again '
                      'from images.')
    stats = cls(dim=mean.shape[0])
    stats.count = int(contents.pop(COUNT_KEY, 0))
    stats._loaded = (mean.astype(np.float64), covariance.astype(np.float64))
    metadata = {key: value.item() if value.ndim == 0 else value for key, value in contents.items()}
    return stats, metadata


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Knuth's error-free sum: a + b == s + e exactly (adds only, so no FMA contraction applies)."""
  s = a + b
  b_virtual = s - a
  return s, (a - (s - b_virtual)) + (b - b_virtual)


def _add_double_float(hi: jax.Array, lo: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(hi, lo) + x for a float32 double-float value hi + lo (|lo| <= ulp(hi) / 2 afterwards)."""
  s, e = _two_sum(hi, x)
  e = e + lo
  new_hi = s + e  # Fast two-sum renormalisation (|e| is much smaller than |s|).
  return new_hi, e - (new_hi - s)


def _shifted_moments(features: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
  # Subtracting a mean-like shift first keeps the float32 Gram matrix from cancelling: for
  # Inception-like features (mean >> std) the raw f^T f loses ~log10(mean^2 / var) digits.
  x = features.astype(jnp.float32) - shift
  gram = jax.lax.dot_general(x, x, (((0,), (0,)), ((), ())),
                             precision=jax.lax.Precision.HIGHEST,
                             preferred_element_type=jnp.float32)
  return jnp.sum(x, axis=0), gram


@jax.jit
def _shift_of(features: jax.Array) -> jax.Array:
  return jnp.mean(features.astype(jnp.float32), axis=0)


@jax.jit
def _accumulate(sums: tuple[jax.Array, ...], features: jax.Array,
                shift: jax.Array) -> tuple[jax.Array, ...]:
  # One program per batch shape: the batch's shifted moments in float32 at HIGHEST precision,
  # then error-free additions into the running float32 hi/lo pairs.
  sum_hi, sum_lo, outer_hi, outer_lo = sums
  batch_sum, batch_outer = _shifted_moments(features, shift)
  sum_hi, sum_lo = _add_double_float(sum_hi, sum_lo, batch_sum)
  outer_hi, outer_lo = _add_double_float(outer_hi, outer_lo, batch_outer)
  return sum_hi, sum_lo, outer_hi, outer_lo


@jax.jit
def _zero_sums(shift: jax.Array) -> tuple[jax.Array, ...]:
  # Derived from `shift` so that the sums live on (and are sharded like) the features' devices.
  zeros = jnp.zeros_like(shift, jnp.float32)
  outer = zeros[:, None] * zeros[None, :]
  return zeros, zeros, outer, outer


class _DeviceSums:
  """Running sums of shifted features on the devices; nothing is copied to the host until fetch.

  Attributes:
    devices: the device set of the features (all batches must live there).
    count: number of feature vectors added.
  """

  def __init__(self, shift: jax.Array, devices: set[jax.Device]):
    self.shift = shift
    self.devices = devices
    self.count = 0
    self._sums = _zero_sums(shift)

  @classmethod
  def start(cls, features: jax.Array) -> '_DeviceSums':
    """A new accumulator whose shift is the mean of ``features`` (a fixed per-run constant)."""
    return cls(_shift_of(features), features.sharding.device_set)

  def add(self, features: jax.Array) -> None:
    self._sums = _accumulate(self._sums, features, self.shift)
    self.count += int(features.shape[0])

  def fetch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sum (f - c), sum (f - c)^T (f - c), c) in float64 on the host (waits for the device)."""
    sum_hi, sum_lo, outer_hi, outer_lo, shift = jax.device_get((*self._sums, self.shift))
    as64 = lambda a: np.asarray(a, np.float64)
    return (as64(sum_hi) + as64(sum_lo), as64(outer_hi) + as64(outer_lo), as64(shift))


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
  total, outer = stats._host_sums()  # pylint: disable=protected-access
  if total is None:  # This process saw no samples.
    total, outer = np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64)
  counts = np.asarray(multihost_utils.process_allgather(np.asarray(stats.count, np.int32)))
  sums, outers = _allgather_float64(total), _allgather_float64(outer)
  merged = FeatureStatistics(dim)
  for count, part_sum, part_outer in zip(counts.reshape(-1), sums, outers):
    part = FeatureStatistics(dim)
    part.count = int(count)
    part._sum, part._outer_sum = part_sum, part_outer  # pylint: disable=protected-access
    merged.merge(part)
  return merged


def allgather_rows(rows: np.ndarray, num_total: int) -> np.ndarray:
  """Every process's rows, in process order, on every process (a collective).

  Each process passes its :func:`process_share` of ``num_total`` rows (shares may differ by
  one); the result is all ``num_total`` rows. With one process, ``rows`` comes back as it is.
  """
  if jax.process_count() == 1:
    return rows
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  count = jax.process_count()
  sizes = [len(range(num_total)[_share(num_total, i, count)]) for i in range(count)]
  if rows.shape[0] != sizes[jax.process_index()]:
    raise ValueError(f'This process holds {rows.shape[0]} rows; its share of {num_total} is '
                     f'{sizes[jax.process_index()]}.')
  # process_allgather needs one shape everywhere: pad every share to the largest, then cut.
  padded = np.zeros((max(sizes),) + rows.shape[1:], rows.dtype)
  padded[:rows.shape[0]] = rows
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max, ...]
  return np.concatenate([gathered[i, :size] for i, size in enumerate(sizes)])


def _share(num: int, index: int, count: int) -> slice:
  return slice(num * index // count, num * (index + 1) // count)


def process_share(num: int) -> slice:
  """This process's contiguous share of ``num`` items (the shares cover them exactly once)."""
  return _share(num, jax.process_index(), jax.process_count())


def frechet_distance_jax(mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array,
                         sigma2: jax.Array) -> jax.Array:
  """Fréchet distance between two Gaussians; pure jnp, jittable, in the inputs' dtype.

  FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), where
  tr sqrt(S1 S2) = sum_i sqrt(lambda_i(S1^1/2 S2 S1^1/2)) because S1 S2 is similar to that
  symmetric positive semi-definite matrix. Two symmetric eigendecompositions replace scipy's
  general `sqrtm`; they run on GPU and under jit. Eigenvalues that rounding pushes below zero are
  clipped, and so is a result that rounding pushes below zero. Call it with float64 inputs
  (inside `jax.enable_x64`): float32 is not accurate enough.

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
  # A distance is never negative; rounding made it about -5e-6 for two identical rank-deficient
  # covariances (10 images of 64 features: fewer images than dimensions), printed as "-0.0000".
  return jnp.maximum(diff @ diff + jnp.trace(sigma1) + jnp.trace(sigma2) - 2 * trace_sqrt, 0.0)


_frechet_distance_jit = jax.jit(frechet_distance_jax)


def frechet_distance(mu1, sigma1, mu2=None, sigma2=None) -> float:
  """The FID between two feature distributions, computed in float64.

  Called either with the two distributions' moments, ``frechet_distance(mu1, sigma1, mu2,
  sigma2)`` (as pytorch-fid's ``calculate_frechet_distance``), or with two
  :class:`FeatureStatistics`, ``frechet_distance(real_stats, fake_stats)``.

  Args:
    mu1, mu2: [d] feature means (or ``mu1``, ``sigma1`` two FeatureStatistics).
    sigma1, sigma2: [d, d] unbiased feature covariances.

  Returns:
    The distance as a Python float.

  Raises:
    UserError: shapes disagree, or the two forms are mixed.
  """
  given = (mu1, sigma1, mu2, sigma2)
  if any(isinstance(a, FeatureStatistics) for a in given):
    if not (isinstance(mu1, FeatureStatistics) and isinstance(sigma1, FeatureStatistics)
            and mu2 is None and sigma2 is None):
      raise UserError('frechet_distance takes two FeatureStatistics, frechet_distance(a, b), '
                      'or four arrays, frechet_distance(mu1, sigma1, mu2, sigma2); got '
                      f'{", ".join(type(a).__name__ for a in given if a is not None)}.')
    mu1, sigma1, mu2, sigma2 = mu1.mean, mu1.covariance, sigma1.mean, sigma1.covariance
  elif mu2 is None or sigma2 is None:
    raise UserError('frechet_distance needs both means and both covariances, '
                    'frechet_distance(mu1, sigma1, mu2, sigma2), or two FeatureStatistics.')
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
  if not is_integer(splits):
    raise UserError(f'Inception Score splits must be an integer, got {splits!r} (10 is standard).')
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
  if not (is_integer(subset_size) and is_integer(num_subsets)):
    raise UserError(f'KID subset_size and num_subsets must be integers, got {subset_size!r} and '
                    f'{num_subsets!r}.')
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
