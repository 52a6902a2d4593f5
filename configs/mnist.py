r"""MNIST at 32x32 (28x28 digits resized), with the paper's model and optimiser settings.

Run it with (tfds downloads MNIST into --config.data_dir once):

  python -m dcgan_jax.main --config=configs/mnist.py --workdir=/tmp/dcgan_mnist

Overrides work as for every config, e.g. --config.num_epochs=5 --config.batch_size=256.
"""

import ml_collections

from dcgan_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """MNIST: 60,000 grey 28x28 digits, upsampled to 32x32."""
  # default.py beside this file, or the repository's: a copy made elsewhere (to start a
  # sweep) still loads.
  config = config_files.default_config(__file__)
  config.dataset = 'mnist'
  config.image_size = 32
  config.channels = 1
  # The DCGAN paper's model and Adam settings.
  config.generator_width = 64
  config.discriminator_width = 64
  config.upsample = 'transpose'
  config.batch_size = 128
  config.ema_decay = 0.999
  config.num_epochs = 20.0  # 9,375 steps.
  config.log_every_steps = 100
  config.checkpoint_every_steps = -1
  config.checkpoint_every_epochs = 1.0
  config.sample_every_steps = 1000
  config.quality_every_steps = 0  # The digits quality score is for dataset='digits' only.
  config.eval_every_steps = -1  # Inception FID every 5 epochs, when inception_weights is set.
  config.eval_every_epochs = 5.0
  return config
