"""Linear probes of a discriminator's features: the DCGAN paper's test of what D has learned.

Radford et al. (2016, section 5.1) judge the representation a DCGAN learns by using the
discriminator as a fixed feature extractor: every conv layer's output is max-pooled to a 4×4
grid, flattened, and all layers are concatenated; a regularised linear L2-SVM trained on those
features classifies CIFAR-10 (82.8% with a D trained on ImageNet-1k). This module holds the
pieces, as pure functions on arrays:

* :func:`discriminator_feature_maps` / :func:`pooled_features`: D's per-block activations (what
  :class:`dcgan_jax.models.Discriminator` sows into the ``'intermediates'`` collection) and the
  paper's pooling;
* :func:`fit_l2_svm`: a one-vs-rest L2-SVM (squared hinge loss, L2 penalty) on standardised
  features, solved by full-batch L-BFGS (optax) on the device; the same objective as
  scikit-learn's ``LinearSVC(loss='squared_hinge')``, whose optimum the tests compare against;
* :func:`select_l2`: the penalty chosen on a held-out part of the training features.

The CLI that runs the whole protocol on a checkpoint is :mod:`dcgan_jax.probe`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The paper pools every layer's map to this many cells per side.
POOLED_GRID = 4
# Penalties tried by select_l2 (per-example mean loss on standardised features).
DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FEATURE_COLLECTION = 'intermediates'


def pooled_features(feature_maps: Sequence[jax.Array], grid: int = POOLED_GRID) -> jax.Array:
  """Max-pools each ``[N, H, W, C]`` map to ``[N, grid, grid, C]``; flattens and concatenates.

  Args:
    feature_maps: Maps whose sides are multiples of ``grid``.
    grid: Cells per side (the paper: 4).

  Returns:
    float32 ``[N, grid·grid·ΣC]``.

  Raises:
    ValueError: a map side that ``grid`` does not divide.
  """
  pooled = []
  for x in feature_maps:
    n, h, w, c = x.shape
    if h % grid or w % grid:
      raise ValueError(f'A {h}x{w} feature map cannot be pooled to a {grid}x{grid} grid; the '
                       f'grid must divide every side (use a grid of 1, 2 or 4).')
    cells = x.reshape(n, grid, h // grid, grid, w // grid, c).max(axis=(2, 4))
    pooled.append(cells.reshape(n, -1).astype(jnp.float32))
  return jnp.concatenate(pooled, axis=-1)


def discriminator_feature_maps(discriminator: Any, variables: dict[str, Any],
                               images: jax.Array) -> list[jax.Array]:
  """D's block activations for ``images`` (in D's input range), with running BN statistics.

  Args:
    discriminator: A module that sows its block outputs into ``'intermediates'`` (as
      :class:`dcgan_jax.models.Discriminator` does); a class-conditional one gets class 0,
      which changes only its logit, not the sown maps.
    variables: D's ``{'params', 'batch_stats'}``.
    images: ``[N, H, W, C]``.

  Returns:
    The sown maps, first block first.

  Raises:
    ValueError: the module sows nothing.
  """
  kwargs = {}
  if getattr(discriminator, 'num_classes', 0):
    kwargs['labels'] = jnp.zeros((images.shape[0],), jnp.int32)
  _, state = discriminator.apply(variables, images, train=False,
                                 mutable=[FEATURE_COLLECTION], **kwargs)
  sown = state.get(FEATURE_COLLECTION, {})
  if not sown:
    raise ValueError(f'{type(discriminator).__name__} sows no feature maps into '
                     f"{FEATURE_COLLECTION!r}; call self.sow('{FEATURE_COLLECTION}', "
                     "'block_<i>', x) after each block to probe it.")
  # Keys block_0, block_1, ...: sort by the block number, not as strings (block_10 < block_2).
  names = sorted(sown, key=lambda name: (len(name), name))
  return [sown[name][0] for name in names]


def feature_function(discriminator: Any, grid: int = POOLED_GRID,
                     output_activation: str = 'tanh') -> Callable[[Any, jax.Array], jax.Array]:
  """A jitted ``(variables, uint8 images) -> pooled features``.

  The images are mapped to the generator's output range (``[-1, 1]`` for tanh, ``[0, 1]`` for
  sigmoid), which is what D was trained on.
  """

  from dcgan_jax import train_step  # pylint: disable=g-import-not-at-top

  @jax.jit
  def features(variables, images):
    images = train_step.images_to_model_range(images, output_activation)
    return pooled_features(discriminator_feature_maps(discriminator, variables, images), grid)

  return features


def pixel_features(images: np.ndarray) -> np.ndarray:
  """The raw-pixel baseline: each image flattened, scaled to [0, 1] (float32 ``[N, H·W·C]``)."""
  images = np.asarray(images)
  return (images.reshape(len(images), -1).astype(np.float32) / 255.0)


@dataclasses.dataclass(frozen=True)
class LinearClassifier:
  """A fitted one-vs-rest linear classifier on standardised features.

  Attributes:
    mean, scale: The standardisation, ``(x - mean) / scale``, from the training features.
    weights: ``[F, num_classes]``.
    bias: ``[num_classes]``.
    l2: The penalty it was fitted with.
    iterations: L-BFGS iterations used.
  """
  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray
  bias: np.ndarray
  l2: float
  iterations: int

  def scores(self, features: Any) -> jax.Array:
    """Per-class margins ``[N, num_classes]``."""
    x = (jnp.asarray(features, jnp.float32) - self.mean) / self.scale
    return x @ self.weights + self.bias

  def predict(self, features: Any) -> np.ndarray:
    """The class of highest margin, int ``[N]``."""
    return np.asarray(jnp.argmax(self.scores(features), axis=-1))

  def accuracy(self, features: Any, labels: Any) -> float:
    """The fraction of ``labels`` predicted."""
    return float(np.mean(self.predict(features) == np.asarray(labels)))


def standardisation(features: Any, weights: Any = None) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and scale (the standard deviation; 1 for constant features).

  Args:
    features: ``[N, F]``.
    weights: ``[N]`` example weights (0 leaves an example out); None weighs all equally.
  """
  x = jnp.asarray(features, jnp.float32)
  w = jnp.ones((x.shape[0],), jnp.float32) if weights is None else jnp.asarray(weights,
                                                                               jnp.float32)
  w = w / jnp.sum(w)
  mean = w @ x
  std = jnp.sqrt(jnp.maximum(w @ (x - mean)**2, 0.0))
  return mean, jnp.where(std > 1e-6, std, 1.0)


def svm_objective(params: dict[str, jax.Array], x: jax.Array, targets: jax.Array,
                  l2: float, weights: jax.Array | None = None) -> jax.Array:
  """Mean over examples of the one-vs-rest squared hinge loss, plus ``l2/2·‖W‖²``.

  Args:
    params: ``{'weights': [F, K], 'bias': [K]}`` (the bias is not penalised).
    x: Standardised features ``[N, F]``.
    targets: ``±1`` per example and class ``[N, K]``.
    l2: The penalty.
    weights: ``[N]`` example weights of the mean; None weighs all equally.
  """
  margins = x @ params['weights'] + params['bias']
  hinge = jnp.sum(jnp.maximum(0.0, 1.0 - targets * margins)**2, axis=-1)
  data = jnp.mean(hinge) if weights is None else jnp.sum(weights * hinge) / jnp.sum(weights)
  return data + 0.5 * l2 * jnp.sum(params['weights']**2)


def _solve(x: jax.Array, targets: jax.Array, weights: jax.Array, l2: jax.Array,
           max_iterations: jax.Array,
           tolerance: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
  """Minimises :func:`svm_objective` by L-BFGS from zero; returns (params, iterations)."""
  params = {'weights': jnp.zeros((x.shape[1], targets.shape[1]), jnp.float32),
            'bias': jnp.zeros((targets.shape[1],), jnp.float32)}

  def objective(p):
    return svm_objective(p, x, targets, l2, weights)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    p, opt_state, _, count = carry
    value, grad = value_and_grad(p, state=opt_state)
    updates, opt_state = solver.update(grad, opt_state, p, value=value, grad=grad,
                                       value_fn=objective)
    return optax.apply_updates(p, updates), opt_state, optax.tree.norm(grad), count + 1

  def unfinished(carry):
    _, _, grad_norm, count = carry
    return (count < max_iterations) & (grad_norm > tolerance)

  init = (params, solver.init(params), jnp.asarray(jnp.inf, jnp.float32),
          jnp.asarray(0, jnp.int32))
  params, _, _, count = jax.lax.while_loop(unfinished, step, init)
  return params, count


# Everything but the shapes is traced: one compilation per feature shape, whatever the penalty,
# the stopping rule or the examples left out.
_solve_jit = jax.jit(_solve)


def fit_l2_svm(features: Any, labels: Any, num_classes: int, l2: float, *,
               example_weights: Any = None, max_iterations: int = 500,
               tolerance: float = 1e-5) -> LinearClassifier:
  """Fits a one-vs-rest L2-SVM to standardised ``features``.

  Args:
    features: ``[N, F]``.
    labels: Integer classes ``[N]`` in ``[0, num_classes)``.
    num_classes: K ≥ 2.
    l2: The penalty (> 0).
    example_weights: ``[N]`` weights of the examples in the loss and the standardisation;
      0/1 weights fit the 1s alone (same result as slicing them out, without a new
      compilation). None weighs all equally.
    max_iterations: L-BFGS iterations at most.
    tolerance: Stop once the gradient's norm is below this.

  Returns:
    The :class:`LinearClassifier`.
  """
  if num_classes < 2:
    raise ValueError(f'A classifier needs at least 2 classes (got {num_classes}).')
  if l2 <= 0:
    raise ValueError(f'l2 must be positive (got {l2}).')
  labels = jnp.asarray(labels, jnp.int32)
  weights = (jnp.ones(labels.shape, jnp.float32) if example_weights is None
             else jnp.asarray(example_weights, jnp.float32))
  mean, scale = standardisation(features, weights)
  x = (jnp.asarray(features, jnp.float32) - mean) / scale
  targets = 2.0 * jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) - 1.0
  params, count = _solve_jit(x, targets, weights, jnp.float32(l2), jnp.int32(max_iterations),
                             jnp.float32(tolerance))
  return LinearClassifier(mean=np.asarray(mean), scale=np.asarray(scale),
                          weights=np.asarray(params['weights']), bias=np.asarray(params['bias']),
                          l2=float(l2), iterations=int(count))


def holdout_indices(num: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded split of ``range(num)`` into (kept, held out ``round(fraction·num)``, ≥ 1)."""
  if not 0 < fraction < 1:
    raise ValueError(f'The held-out fraction must be in (0, 1) (got {fraction}).')
  order = np.random.default_rng(seed).permutation(num)
  held = min(num - 1, max(1, int(round(fraction * num))))
  return np.sort(order[:num - held]), np.sort(order[num - held:])


def select_l2(features: Any, labels: Any, num_classes: int,
              l2_grid: Sequence[float] = DEFAULT_L2_GRID, *, validation_fraction: float = 0.2,
              seed: int = 0, **fit_kwargs) -> tuple[LinearClassifier, dict[float, float]]:
  """Chooses the penalty on held-out training features, then refits on all of them.

  Args:
    features, labels, num_classes: As for :func:`fit_l2_svm`.
    l2_grid: The penalties tried; one value skips the validation.
    validation_fraction: Part of the training features held out to compare penalties.
    seed: Seed of the held-out choice.
    **fit_kwargs: Passed to :func:`fit_l2_svm`.

  Returns:
    The classifier fitted on all ``features`` with the best penalty (ties go to the larger,
    simpler one), and each penalty's validation accuracy (empty with one penalty).
  """
  grid = sorted({float(l2) for l2 in l2_grid})
  validation = {}
  if len(grid) > 1:
    features, labels = np.asarray(features), np.asarray(labels)
    kept, held = holdout_indices(len(features), validation_fraction, seed)
    mask = np.zeros(len(features), np.float32)
    mask[kept] = 1.0  # The held-out rows weigh 0: same shapes as the final fit, one compilation.
    for l2 in grid:
      classifier = fit_l2_svm(features, labels, num_classes, l2, example_weights=mask,
                              **fit_kwargs)
      validation[l2] = classifier.accuracy(features[held], labels[held])
  best = max(grid, key=lambda l2: (validation.get(l2, 0.0), l2))
  return fit_l2_svm(features, labels, num_classes, best, **fit_kwargs), validation
