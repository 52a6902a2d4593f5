"""dcgan_jax: a JAX/Flax functional training library for DCGANs.

The core (models, losses, state, train step, parallelism, evaluation) imports without
TensorFlow; the training program (``dcgan_jax.train``, ``dcgan_jax.data``) needs it.

Typical use::

  import jax
  from dcgan_jax import Generator, Discriminator, StepConfig, create_gan_state, make_train_step

  generator, discriminator = Generator(image_size=32, channels=1), Discriminator(32, 1)
  state = create_gan_state(jax.random.key(0), generator, discriminator)
  step = jax.jit(make_train_step(generator, discriminator, StepConfig()))
  state, metrics = step(state, real_uint8_images, jax.random.key(1))

Class-conditional: ``Generator(..., num_classes=10)`` and ``Discriminator(..., num_classes=10)``
take ``labels=``, and the step takes ``(images, labels)`` batches; ``ClassConditionalBatchNorm``
is the per-class-affine BatchNorm of ``Generator(..., conditioning='batchnorm')``, for your own
generators.
"""

import importlib

# The public names and their modules, imported on first use (PEP 562): `python -m
# dcgan_jax.main` then starts without JAX, so that its Ctrl-C handler is in place before JAX
# loads (a Ctrl-C inside JAX's import-time garbage-collection callback is otherwise dropped by
# Python, and the run trains to its end), and `--help` answers at once.
_EXPORTS = {
    'UserError': 'dcgan_jax.errors',
    'LOSSES': 'dcgan_jax.losses', 'get_loss': 'dcgan_jax.losses',
    'gradient_penalty': 'dcgan_jax.losses', 'r1_penalty': 'dcgan_jax.losses',
    'register_loss': 'dcgan_jax.losses',
    'ClassConditionalBatchNorm': 'dcgan_jax.models', 'Discriminator': 'dcgan_jax.models',
    'Generator': 'dcgan_jax.models', 'VALID_IMAGE_SIZES': 'dcgan_jax.models',
    'count_params': 'dcgan_jax.models',
    'DataParallelStep': 'dcgan_jax.parallel', 'make_mesh': 'dcgan_jax.parallel',
    'AdaptiveAugmentState': 'dcgan_jax.state', 'EMAState': 'dcgan_jax.state',
    'GANState': 'dcgan_jax.state', 'TrainState': 'dcgan_jax.state',
    'create_gan_state': 'dcgan_jax.state', 'make_optimizer': 'dcgan_jax.state',
    'StepConfig': 'dcgan_jax.train_step', 'make_train_step': 'dcgan_jax.train_step',
}


def __getattr__(name: str):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # Later lookups are plain attribute reads.
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))


__version__ = '0.1.0'

__all__ = sorted(_EXPORTS)
