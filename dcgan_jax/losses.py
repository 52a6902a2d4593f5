"""GAN objectives as pure functions of discriminator logits, plus gradient penalties.

Every loss takes the raw logits (no sigmoid inside the discriminator): the sigmoid
cross-entropies are computed with ``log_sigmoid``/``softplus``, which stay finite for any logit
and in bfloat16. The discriminator loss is the sum of a real and a fake term, each a mean over the
batch, as the DCGAN reference computes ``errD_real + errD_fake``.

Select objectives by name with :func:`get_loss`; penalties take a ``logits_fn`` so that they work
with any discriminator (and with BatchNorm in training mode).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from dcgan_jax.errors import UserError

Array = jax.Array


def _bce_with_logits(logits: Array, target: float | Array) -> Array:
  """Mean binary cross-entropy of ``sigmoid(logits)`` against ``target`` (a probability)."""
  logits = logits.astype(jnp.float32)
  return jnp.mean(-target * jax.nn.log_sigmoid(logits) - (1.0 - target) * jax.nn.log_sigmoid(-logits))


# --- Discriminator losses: (real_logits, fake_logits, real_label) -> scalar -----------------------

def non_saturating_d_loss(real_logits: Array, fake_logits: Array, real_label: float = 1.0) -> Array:
  """-log D(x) - log(1 - D(G(z))), with the real target optionally smoothed to ``real_label``."""
  return _bce_with_logits(real_logits, real_label) + _bce_with_logits(fake_logits, 0.0)


def hinge_d_loss(real_logits: Array, fake_logits: Array, real_label: float = 1.0) -> Array:
  """mean relu(1 - D(x)) + mean relu(1 + D(G(z))); ``real_label`` scales the real margin."""
  real_logits = real_logits.astype(jnp.float32)
  fake_logits = fake_logits.astype(jnp.float32)
  return jnp.mean(jax.nn.relu(real_label - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def least_squares_d_loss(real_logits: Array, fake_logits: Array, real_label: float = 1.0) -> Array:
  """LSGAN: 0.5 mean (D(x) - real_label)^2 + 0.5 mean D(G(z))^2 on the raw outputs."""
  real_logits = real_logits.astype(jnp.float32)
  fake_logits = fake_logits.astype(jnp.float32)
  return 0.5 * jnp.mean((real_logits - real_label) ** 2) + 0.5 * jnp.mean(fake_logits**2)


def wasserstein_d_loss(real_logits: Array, fake_logits: Array, real_label: float = 1.0) -> Array:
  """WGAN critic: mean D(G(z)) - mean D(x). ``real_label`` is ignored (no targets)."""
  del real_label
  return jnp.mean(fake_logits.astype(jnp.float32)) - jnp.mean(real_logits.astype(jnp.float32))


# --- Generator losses: fake_logits -> scalar ------------------------------------------------------

def non_saturating_g_loss(fake_logits: Array) -> Array:
  """-log D(G(z)): the paper's practical generator objective (strong early gradients)."""
  return _bce_with_logits(fake_logits, 1.0)


def minimax_g_loss(fake_logits: Array) -> Array:
  """log(1 - D(G(z))): the original minimax objective (saturates when D wins)."""
  return -_bce_with_logits(fake_logits, 0.0)


def hinge_g_loss(fake_logits: Array) -> Array:
  """-mean D(G(z))."""
  return -jnp.mean(fake_logits.astype(jnp.float32))


def least_squares_g_loss(fake_logits: Array) -> Array:
  """LSGAN: 0.5 mean (D(G(z)) - 1)^2."""
  return 0.5 * jnp.mean((fake_logits.astype(jnp.float32) - 1.0) ** 2)


class GANLoss(NamedTuple):
  """A named pair of discriminator and generator objectives."""

  name: str
  d_loss: Callable[..., Array]
  g_loss: Callable[[Array], Array]


LOSSES: dict[str, GANLoss] = {
    'non_saturating': GANLoss('non_saturating', non_saturating_d_loss, non_saturating_g_loss),
    'minimax': GANLoss('minimax', non_saturating_d_loss, minimax_g_loss),
    'hinge': GANLoss('hinge', hinge_d_loss, hinge_g_loss),
    'least_squares': GANLoss('least_squares', least_squares_d_loss, least_squares_g_loss),
    'wasserstein': GANLoss('wasserstein', wasserstein_d_loss, hinge_g_loss),
}


_BUILTIN_LOSSES = frozenset(LOSSES)


def _check_signature(role: str, function: Callable[..., Any], num_args: int, shown: str) -> None:
  """A UserError unless ``function`` takes ``num_args`` positional arguments."""
  try:
    signature = inspect.signature(function)
  except (TypeError, ValueError):  # Some builtins have none: let the call decide.
    return
  try:
    signature.bind(*range(num_args))
  except TypeError:
    raise UserError(f'{role} must take {num_args} positional argument'
                    f'{"s" if num_args > 1 else ""} {shown}; {getattr(function, "__name__", role)}'
                    f'{signature} does not (d_loss and g_loss swapped?).') from None


def check_scalar_loss(role: str, loss: Any) -> Array:
  """Returns ``loss`` if it is a scalar; a UserError names the loss otherwise (while tracing)."""
  shape = getattr(loss, 'shape', None)
  if shape is None or tuple(shape) != ():
    raise UserError(f'{role} must return a scalar (e.g. the mean over the batch); it returned '
                    f'{"shape " + str(tuple(shape)) if shape is not None else type(loss).__name__}.')
  return loss


def register_loss(name: str, d_loss: Callable[..., Array], g_loss: Callable[[Array], Array],
                  *, overwrite: bool = False) -> GANLoss:
  """Makes a custom objective selectable by name (``StepConfig(loss=name)``, ``config.loss``).

  Registration lives in the Python process: register before building the step or calling
  ``dcgan_jax.train.train_and_evaluate`` (e.g. in the notebook or script that starts the run).

  Args:
    name: The name to select it by; built-in names cannot be replaced.
    d_loss: ``(real_logits, fake_logits, real_label) -> scalar``, minimised by D.
    g_loss: ``fake_logits -> scalar``, minimised by G.
    overwrite: Replace an objective registered earlier under ``name`` (e.g. when a notebook
      cell runs twice).

  Returns:
    The registered :class:`GANLoss`.

  Raises:
    UserError: a name that is not an identifier-like string, a built-in name, a name already
      registered (without ``overwrite``) or non-callable objectives.
  """
  if not isinstance(name, str) or not name.isidentifier():
    raise UserError(f'A loss name must be an identifier such as "my_loss" (got {name!r}).')
  if name in _BUILTIN_LOSSES:
    raise UserError(f'{name!r} is a built-in loss and cannot be replaced; pick another name.')
  if name in LOSSES and not overwrite:
    raise UserError(f'A loss named {name!r} is already registered; pass overwrite=True to '
                    'replace it.')
  if not callable(d_loss) or not callable(g_loss):
    raise UserError('d_loss and g_loss must be callables: d_loss(real_logits, fake_logits, '
                    'real_label) -> scalar and g_loss(fake_logits) -> scalar.')
  _check_signature('d_loss', d_loss, 3, '(real_logits, fake_logits, real_label)')
  _check_signature('g_loss', g_loss, 1, '(fake_logits)')
  LOSSES[name] = GANLoss(name, d_loss, g_loss)
  return LOSSES[name]


def get_loss(name: str) -> GANLoss:
  """Returns the objective called ``name``; unknown names raise a UserError listing valid ones."""
  if name not in LOSSES:
    names = list(LOSSES)
    raise UserError(f'loss must be one of {", ".join(names[:-1])} or {names[-1]} (got {name!r}); '
                    'a loss of your own must be registered (dcgan_jax.register_loss) in this '
                    'process before the step or run that uses it, also to resume a run.')
  return LOSSES[name]


# --- Penalties on the discriminator ---------------------------------------------------------------

def _per_example_grad_sq_norm(logits_fn: Callable[[Array], Array], images: Array) -> Array:
  # D scores each example independently of the others (up to BatchNorm's batch statistics, which
  # the usual implementations also differentiate through), so the gradient of the summed logits
  # holds each example's own input gradient.
  grads = jax.grad(lambda x: jnp.sum(logits_fn(x).astype(jnp.float32)))(images)
  grads = grads.astype(jnp.float32).reshape((images.shape[0], -1))
  return jnp.sum(grads**2, axis=-1)


def gradient_penalty(logits_fn: Callable[[Array], Array], real_images: Array, fake_images: Array,
                     rng: Array | None = None, eps: Array | None = None,
                     target_norm: float = 1.0) -> Array:
  """WGAN-GP penalty E[(||grad D(x_hat)|| - target)^2] on random interpolates (Gulrajani 2017).

  Args:
    logits_fn: Maps images ``[N, H, W, C]`` to logits ``[N]``.
    real_images: ``[N, H, W, C]``.
    fake_images: ``[N, H, W, C]``.
    rng: Key for the interpolation coefficients (one uniform draw per example).
    eps: The interpolation coefficients ``[N]`` themselves, instead of ``rng``.
    target_norm: The norm the gradient is pushed towards (1 in the paper).

  Returns:
    The scalar penalty, unweighted.
  """
  if eps is None:
    if rng is None:
      raise ValueError('gradient_penalty needs rng or eps.')
    eps = jax.random.uniform(rng, (real_images.shape[0],))
  eps = eps.reshape((real_images.shape[0],) + (1,) * (real_images.ndim - 1))
  interpolates = eps * real_images + (1.0 - eps) * fake_images
  sq_norm = _per_example_grad_sq_norm(logits_fn, interpolates)
  # sqrt has an infinite derivative at 0; the tiny offset keeps the gradient finite there.
  norm = jnp.sqrt(sq_norm + 1e-12)
  return jnp.mean((norm - target_norm) ** 2)


def r1_penalty(logits_fn: Callable[[Array], Array], real_images: Array) -> Array:
  """R1 penalty 0.5 * E[||grad D(x)||^2] on real data (Mescheder 2018), unweighted by gamma.

  The conventional weight is ``gamma``; the factor 0.5 here makes ``r1_weight = gamma`` give the
  paper's ``gamma / 2 * E||grad||^2``.
  """
  return 0.5 * jnp.mean(_per_example_grad_sq_norm(logits_fn, real_images))
