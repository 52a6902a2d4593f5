"""Precision, recall, density and coverage: fidelity and diversity as separate numbers.

FID mixes two failures into one number: samples that do not look like the data (fidelity) and
data that the generator never makes (diversity, e.g. mode collapse). The k-nearest-neighbour
estimators below separate them. Each sample set stands for a manifold: the union of balls around
its points, each ball reaching the point's k-th nearest neighbour within its own set.

- precision (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric"): the fraction of
  generated samples inside the real manifold.
- recall (same paper): the fraction of real samples inside the generated manifold.
- density (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics"): how many real balls
  contain each generated sample, divided by k, averaged; about 1 when both sets come from one
  distribution, less robustly bounded than precision (it may exceed 1).
- coverage (same paper): the fraction of real balls that contain at least one generated sample.

Both papers use k = 3 (the default here) and VGG-16 features; :mod:`dcgan_jax.evaluate` computes
them on the Inception pool_3 features it already has, so report the feature space and the sample
counts with the numbers. As in each paper's reference code, a point lies inside a ball when its
distance is <= the radius for precision and recall (Kynkäänniemi et al.'s), and < the radius for
density and coverage (Naeem et al.'s ``prdc``): a set scored against itself then has density
exactly 1, where <= would count each point on its neighbours' ball edges too ((k + 1) / k).

Distances are computed on the device in chunks of rows (never the whole N x M matrix at once),
as squared Euclidean distances in float32 at ``Precision.HIGHEST`` (no TF32 rounding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax.errors import UserError, is_integer

DEFAULT_K = 3
# The names of manifold_metrics' results, in its order (also the keys callers report under).
METRICS = ('precision', 'recall', 'density', 'coverage')
_CHUNK = 1024


def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """[n, d] x [m, d] -> [n, m]; ||a||^2 + ||b||^2 - 2 a.b, clipped at 0 against rounding."""
  dots = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
  sq_a = jnp.sum(a * a, axis=1)[:, None]
  sq_b = jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(sq_a + sq_b - 2.0 * dots, 0.0)


@functools.partial(jax.jit, static_argnames='k')
def _kth_neighbour_chunk(rows: jax.Array, row_start: jax.Array, points: jax.Array,
                         k: int) -> jax.Array:
  """Squared distance from each row (points[row_start:...]) to its k-th nearest other point."""
  distances = _squared_distances(rows, points)
  # Exclude each point itself by index, not by a zero distance, so duplicates still count.
  own = row_start + jnp.arange(rows.shape[0])
  distances = distances.at[jnp.arange(rows.shape[0]), own].set(jnp.inf)
  smallest = -jax.lax.top_k(-distances, k)[0]  # Ascending.
  return smallest[:, k - 1]


@jax.jit
def _membership_chunk(rows: jax.Array, num_valid: jax.Array, centres: jax.Array,
                      radii: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Balls (centre, radius) against a chunk of points, of which the first ``num_valid`` are real
  rows (the rest padding).

  Returns:
    Per row: whether any ball holds it (distance <= radius: precision, recall), and how many
    hold it strictly (< radius: density); per ball: whether any valid row of the chunk lies
    strictly inside it (coverage).
  """
  distances = _squared_distances(rows, centres)
  inside = distances <= radii[None, :]
  strictly_inside = distances < radii[None, :]
  valid = jnp.arange(rows.shape[0]) < num_valid
  return (jnp.any(inside, axis=1), jnp.sum(strictly_inside, axis=1),
          jnp.any(strictly_inside & valid[:, None], axis=0))


def _chunks(x: jax.Array):
  """Row chunks of a fixed size (the last one zero-padded) and their true lengths."""
  n = x.shape[0]
  for start in range(0, n, _CHUNK):
    rows = x[start:start + _CHUNK]
    length = rows.shape[0]
    if length < _CHUNK and n > _CHUNK:  # One compiled shape for all chunks of a large set.
      rows = jnp.pad(rows, ((0, _CHUNK - length), (0, 0)))
    yield start, rows, length


def _kth_neighbour_radii(points: jax.Array, k: int) -> jax.Array:
  parts = [_kth_neighbour_chunk(rows, jnp.int32(start), points, k)[:length]
           for start, rows, length in _chunks(points)]
  return jnp.concatenate(parts)


def _membership(points: jax.Array, centres: jax.Array, radii: jax.Array):
  """``points`` against the balls: per point (inside any, how many strictly), per ball (holds
  any strictly)."""
  any_parts, count_parts = [], []
  ball_holds_any = jnp.zeros(centres.shape[0], bool)
  for _, rows, length in _chunks(points):
    inside_any, inside_count, holds = _membership_chunk(rows, jnp.int32(length), centres, radii)
    any_parts.append(inside_any[:length])
    count_parts.append(inside_count[:length])
    ball_holds_any = ball_holds_any | holds
  return jnp.concatenate(any_parts), jnp.concatenate(count_parts), ball_holds_any


def manifold_metrics(real_features, fake_features, k: int = DEFAULT_K) -> dict[str, float]:
  """Precision, recall, density and coverage of generated features against real ones.

  Args:
    real_features: [N, d] features of real images (numpy or jax).
    fake_features: [M, d] features of generated images.
    k: the neighbourhood size; each set needs more than k points.

  Returns:
    ``{'precision', 'recall', 'density', 'coverage'}`` as Python floats; all NaN when a
    feature is not finite.

  Raises:
    UserError: feature arrays of the wrong shape, or a set with k points or fewer.
  """
  real = jnp.asarray(real_features, jnp.float32)
  fake = jnp.asarray(fake_features, jnp.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise UserError(f'Precision/recall need two [N, d] feature arrays, got {real.shape} and '
                    f'{fake.shape}.')
  if not is_integer(k) or k < 1:
    raise UserError(f'k must be a positive integer (got {k!r}); the papers use 3.')
  if min(real.shape[0], fake.shape[0]) <= k:
    raise UserError(f'Precision/recall with k={k} need more than {k} samples in each set, got '
                    f'{real.shape[0]} real and {fake.shape[0]} generated.')
  k = int(k)
  if not (bool(jnp.isfinite(real).all()) and bool(jnp.isfinite(fake).all())):
    # Distances to NaN compare False, which read as "no sample inside any ball": all four
    # scores came out 0.0, a number; NaN says what FID, IS and KID say (from a diverged G).
    return {name: float('nan') for name in ('precision', 'recall', 'density', 'coverage')}
  real_radii = _kth_neighbour_radii(real, k)
  fake_radii = _kth_neighbour_radii(fake, k)
  fake_in_real, real_balls_per_fake, real_ball_covered = _membership(fake, real, real_radii)
  real_in_fake, _, _ = _membership(real, fake, fake_radii)
  # Counts are exact integers; divide on the host in float64 (a float32 mean would round).
  count = lambda x: int(np.sum(np.asarray(x), dtype=np.int64))
  return {
      'precision': count(fake_in_real) / fake.shape[0],
      'recall': count(real_in_fake) / real.shape[0],
      'density': count(real_balls_per_fake) / (k * fake.shape[0]),
      'coverage': count(real_ball_covered) / real.shape[0],
  }
