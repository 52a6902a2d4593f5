"""The GAN training state: two flax TrainStates (G and D), an optional EMA of G, and the step.

A GAN needs more than one ``TrainState``: each network has its own params, BatchNorm statistics
and optimizer. :class:`GANState` is a small pytree that holds both, so the whole thing can be
jitted, sharded, donated and checkpointed as one value.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from dcgan_jax.errors import UserError, finite_number, is_integer


class TrainState(train_state.TrainState):
  """A flax TrainState that also carries the network's BatchNorm running statistics."""

  batch_stats: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    """The ``{'params', 'batch_stats'}`` dict that ``Module.apply`` takes."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


class EMAState(struct.PyTreeNode):
  """Exponential moving averages of the generator's params and BatchNorm statistics."""

  params: Any
  batch_stats: Any

  @property
  def variables(self) -> dict[str, Any]:
    return {'params': self.params, 'batch_stats': self.batch_stats}


class GANState(struct.PyTreeNode):
  """Everything a GAN update reads and writes.

  Attributes:
    step: Number of generator updates done so far (int32 scalar).
    generator: G's TrainState (``apply_fn`` is ``Generator.apply``).
    discriminator: D's TrainState.
    ema: EMA of G's variables, or None when disabled.
  """

  step: jax.Array
  generator: TrainState
  discriminator: TrainState
  ema: EMAState | None = None

  def sampling_variables(self, use_ema: bool = True) -> dict[str, Any]:
    """Variables to sample from: the EMA ones when present and asked for, else G's own."""
    if use_ema and self.ema is not None:
      return self.ema.variables
    return self.generator.variables


Schedule = Callable[[jax.Array], jax.Array]


class AdaptiveAugmentState(GANState):
  """A :class:`GANState` that also carries ADA's augmentation probability.

  A class of its own rather than an optional field of GANState, so that the states (and the
  checkpoints) of runs without adaptive augmentation keep exactly their structure.

  Attributes:
    augment_probability: float32 scalar ``p`` with which each augmentation applies to each
      image; the train step adapts it (see :mod:`dcgan_jax.augment`).
  """

  augment_probability: jax.Array | None = None


def _check_learning_rate(learning_rate: Any) -> None:
  """A UserError unless a constant learning rate is a finite number > 0 (NaN, 0 or a negative
  rate would train on without an error: no updates, or gradient ascent)."""
  number = finite_number(learning_rate)
  if number is None or number <= 0:
    raise UserError(f'learning rates must be positive numbers, such as the paper\'s 2e-4 '
                    f'(got {learning_rate!r}).')


def make_schedule(learning_rate: float, kind: str = 'constant', num_steps: int = 0,
                  warmup_steps: int = 0) -> optax.Schedule:
  """A learning-rate schedule: 'constant', 'cosine' or 'linear' decay to 0, with linear warmup.

  Args:
    learning_rate: Peak learning rate.
    kind: 'constant', 'cosine' or 'linear'.
    num_steps: Total number of updates (needed by the decaying schedules).
    warmup_steps: Linear warmup from 0 over this many updates.
  """
  kinds = ('constant', 'cosine', 'linear')
  if kind not in kinds:
    raise UserError(f'lr_schedule must be one of constant, cosine or linear (got {kind!r}).')
  _check_learning_rate(learning_rate)
  if not is_integer(warmup_steps) or warmup_steps < 0:  # -5 stretched the decay by 5 steps.
    raise UserError(f'warmup_steps must be a whole number >= 0 (0: no warmup; got '
                    f'{warmup_steps!r}).')
  if kind != 'constant' and num_steps < 1:
    raise UserError(f'The {kind} schedule decays over num_steps updates; give num_steps >= 1 '
                    f'(got {num_steps}).')
  decay_steps = max(num_steps - warmup_steps, 1)
  if kind == 'constant':
    main = optax.constant_schedule(learning_rate)
  elif kind == 'cosine':
    main = optax.cosine_decay_schedule(learning_rate, decay_steps)
  else:
    main = optax.linear_schedule(learning_rate, 0.0, decay_steps)
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def make_optimizer(learning_rate: float | optax.Schedule = 2e-4, b1: float = 0.5,
                   b2: float = 0.999) -> optax.GradientTransformation:
  """Adam as the DCGAN paper tunes it (lr 2e-4, beta1 0.5); a schedule may replace the rate.

  Raises:
    UserError: a constant rate that is not a positive number, or a beta outside [0, 1) (Adam's
      moment averages would not decay).
  """
  # A schedule, or an array (optax.inject_hyperparams passes traced values), is not checked.
  if not callable(learning_rate) and not isinstance(learning_rate, jax.Array):
    _check_learning_rate(learning_rate)
  for name, beta in (('b1', b1), ('b2', b2)):  # (The config's fields are adam_b1, adam_b2.)
    if not isinstance(beta, jax.Array) and not 0.0 <= beta < 1.0:
      raise UserError(f'{name} (adam_{name}) must be in [0, 1) (got {beta!r}); the paper uses '
                      'b1=0.5, b2=0.999.')
  return optax.adam(learning_rate, b1=b1, b2=b2)


def class_labels_kwargs(module: flax.linen.Module, batch: int) -> dict[str, jax.Array]:
  """``{'labels': zeros [batch]}`` for a class-conditional module (``num_classes > 0``), else
  ``{}``: the extra argument an init or a shape probe must pass."""
  if getattr(module, 'num_classes', 0):
    return {'labels': jnp.zeros((batch,), jnp.int32)}
  return {}


def check_same_classes(generator: flax.linen.Module, discriminator: flax.linen.Module) -> int:
  """G's ``num_classes`` (0: unconditional), after checking that D has the same.

  Raises:
    UserError: the two modules disagree (a conditional G with an unconditional D, or the reverse).
  """
  num_classes = getattr(generator, 'num_classes', 0)
  if getattr(discriminator, 'num_classes', num_classes) != num_classes:
    raise UserError(f'The generator has num_classes={num_classes} but the discriminator '
                    f'{discriminator.num_classes}; conditional models need the same classes.')
  return num_classes


def check_module_interface(module: flax.linen.Module, role: str, conditional: bool) -> None:
  """A UserError when a module lacks what the step calls it with (instead of a flax traceback).

  Both networks are called with ``train=`` (and ``labels=`` when class-conditional); the
  generator's ``latent_dim`` sizes the latents. Modules whose ``__call__`` takes ``**kwargs``
  are left to decide.
  """
  name = type(module).__name__
  if not isinstance(module, flax.linen.Module):
    # An nnx.Module (or anything else) has no init/apply: it failed with an AttributeError.
    raise UserError(f'The {role} {name} must be a flax.linen Module (the step initialises and '
                    f'applies it functionally); got {type(module).__module__}.{name}.')
  if role == 'generator' and getattr(module, 'latent_dim', None) is None:
    raise UserError(f'The generator {name} needs a `latent_dim` attribute (the size of the '
                    'latents it maps to images).')
  try:
    parameters = inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return
  needed = ['train'] + (['labels'] if conditional else [])
  missing = [argument for argument in needed if argument not in parameters]
  if missing:
    raise UserError(f'The {role} {name} must take {" and ".join(f"{m}=" for m in missing)} in '
                    f'__call__: the step calls it with train=True/False'
                    f'{" and the class labels" if "labels" in missing else ""}.')


def create_gan_state(rng: jax.Array, generator: flax.linen.Module,
                     discriminator: flax.linen.Module,
                     generator_tx: optax.GradientTransformation | None = None,
                     discriminator_tx: optax.GradientTransformation | None = None,
                     use_ema: bool = False,
                     augment_probability: float | None = None) -> GANState:
  """Initialises both networks and their optimizers.

  Args:
    rng: PRNG key.
    generator: A module mapping ``[N, latent_dim]`` to images (``latent_dim`` attribute
      required; with a ``num_classes`` attribute > 0 it also takes ``labels=``).
    discriminator: A module mapping images (and ``labels=`` if class-conditional) to logits
      ``[N]``.
    generator_tx: G's optimizer (default: :func:`make_optimizer`).
    discriminator_tx: D's optimizer (default: :func:`make_optimizer`).
    use_ema: Keep an EMA of G's params and statistics (initialised to G's own).
    augment_probability: The initial ``p`` of adaptive augmentation (ADA starts at 0): the
      state is then an :class:`AdaptiveAugmentState`. None (default) for a step without it.

  Returns:
    A :class:`GANState` (or :class:`AdaptiveAugmentState`) at step 0.
  """
  conditional = bool(check_same_classes(generator, discriminator))
  check_module_interface(generator, 'generator', conditional)
  # The step hands D the labels of a conditional G's batches.
  check_module_interface(discriminator, 'discriminator',
                         conditional or bool(getattr(discriminator, 'num_classes', 0)))
  generator_tx = generator_tx or make_optimizer()
  discriminator_tx = discriminator_tx or make_optimizer()
  # Modules with an axis_name cannot initialise outside a mapped context; init without it (the
  # variables are the same).
  if getattr(generator, 'axis_name', None) is not None:
    generator = generator.clone(axis_name=None)
  if getattr(discriminator, 'axis_name', None) is not None:
    discriminator = discriminator.clone(axis_name=None)

  def init(rng: jax.Array) -> GANState:
    g_rng, d_rng = jax.random.split(rng)
    z = jnp.zeros((2, generator.latent_dim), jnp.float32)
    g_labels = class_labels_kwargs(generator, 2)
    g_vars = generator.init(g_rng, z, train=False, **g_labels)
    images = jax.eval_shape(lambda v: generator.apply(v, z, train=False, **g_labels), g_vars)
    d_size = getattr(discriminator, 'image_size', None)
    d_channels = getattr(discriminator, 'channels', None)
    if d_size is not None and d_channels is not None and (
        tuple(images.shape[1:]) != (d_size, d_size, d_channels)):
      raise UserError(f"The generator makes images of shape {tuple(images.shape[1:])} but the "
                      f'discriminator takes ({d_size}, {d_size}, {d_channels}); give both the '
                      'same image_size and channels.')
    d_vars = discriminator.init(d_rng, jnp.zeros(images.shape, jnp.float32), train=False,
                                **class_labels_kwargs(discriminator, 2))
    g_state = TrainState.create(apply_fn=generator.apply, params=g_vars['params'],
                                tx=generator_tx, batch_stats=g_vars.get('batch_stats', {}))
    d_state = TrainState.create(apply_fn=discriminator.apply, params=d_vars['params'],
                                tx=discriminator_tx, batch_stats=d_vars.get('batch_stats', {}))
    ema = None
    if use_ema:
      ema = EMAState(params=g_state.params, batch_stats=g_state.batch_stats)
    fields = dict(step=jnp.zeros((), jnp.int32), generator=g_state, discriminator=d_state,
                  ema=ema)
    if augment_probability is None:
      return GANState(**fields)
    return AdaptiveAugmentState(
        **fields, augment_probability=jnp.asarray(augment_probability, jnp.float32))

  # One compiled program: run eagerly, every initializer and optimizer-state op would be
  # compiled on its own (seconds on CPU even for small models). Outputs are fresh buffers, so
  # the EMA does not alias G's params.
  options = _init_compiler_options()
  if options:
    try:
      return jax.jit(init, compiler_options=options)(rng)
    except ValueError as e:  # Traced inside another program (jax.eval_shape, jit): options are
      if 'compiler_options' not in str(e):  # for top-level programs only, and unneeded there.
        raise
  return jax.jit(init)(rng)


# XLA:CPU options for the one-off initialisation program. Its run takes milliseconds, but LLVM's
# full optimisation of its random-number code (threefry and erfinv for every initializer) was a
# large part of a short run's start: on 2 CPU cores, compiling it took 8.4 s for configs/default.py
# (of a 21 s 4-step run) and 11.3 s for celeba.py, and 1.2 s and 1.6 s at LLVM -O0 (whose
# program then ran in 18 and 560 ms). The values are those of the optimised program to within
# one float32 ulp (erfinv's polynomial rounds differently), as between any two XLA versions; the
# same seed still gives the same state on the same machine and versions. Accelerators keep their
# default: compiling there is not where their time goes.
_CPU_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def _init_compiler_options() -> dict[str, object] | None:
  return dict(_CPU_INIT_COMPILER_OPTIONS) if jax.default_backend() == 'cpu' else None
