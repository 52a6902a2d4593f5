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

from dcgan_jax.errors import UserError
from dcgan_jax.losses import LOSSES, get_loss, gradient_penalty, r1_penalty, register_loss
from dcgan_jax.models import (ClassConditionalBatchNorm, Discriminator, Generator,
                              VALID_IMAGE_SIZES, count_params)
from dcgan_jax.parallel import DataParallelStep, make_mesh
from dcgan_jax.state import (AdaptiveAugmentState, EMAState, GANState, TrainState, create_gan_state,
                             make_optimizer)
from dcgan_jax.train_step import StepConfig, make_train_step

__version__ = '0.1.0'

__all__ = [
    'AdaptiveAugmentState', 'ClassConditionalBatchNorm', 'DataParallelStep', 'Discriminator',
    'EMAState', 'GANState', 'Generator', 'LOSSES', 'StepConfig', 'TrainState', 'UserError',
    'VALID_IMAGE_SIZES', 'count_params', 'create_gan_state', 'get_loss', 'gradient_penalty',
    'make_mesh', 'make_optimizer', 'make_train_step', 'r1_penalty', 'register_loss',
]
