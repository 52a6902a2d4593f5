r"""CIFAR-10 at 32x32 RGB, with the paper's model and optimiser settings.

Run it with (tfds downloads CIFAR-10 into --config.data_dir once):

  python -m dcgan_jax.main --config=configs/cifar10.py --workdir=/tmp/dcgan_cifar10

With --config.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth the run also
reports Inception FID (against the training images) every 10 epochs.
"""

import ml_collections

from dcgan_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """CIFAR-10: 50,000 colour 32x32 images."""
  # default.py beside this file, or the repository's: a copy made elsewhere (to start a
  # sweep) still loads.
  config = config_files.default_config(__file__)
  config.dataset = 'cifar10'
  config.image_size = 32
  config.channels = 3
  config.generator_width = 64
  config.discriminator_width = 64
  config.upsample = 'transpose'
  config.batch_size = 128
  config.ema_decay = 0.999
  config.num_epochs = 100.0  # 39,063 steps.
  config.log_every_steps = 100
  config.checkpoint_every_steps = -1
  config.checkpoint_every_epochs = 5.0
  config.sample_every_steps = -1
  config.sample_every_epochs = 1.0
  config.quality_every_steps = 0  # The digits quality score is for dataset='digits' only.
  config.eval_every_steps = -1
  config.eval_every_epochs = 10.0
  config.eval_num_samples = 10_000
  return config
