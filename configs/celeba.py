r"""CelebA faces at 64x64, the DCGAN paper's setting (batch 128, Adam 2e-4 / beta1 0.5, width 64).

tfds' own celeb_a download (Google Drive) often fails with "quota exceeded", so download the
files by hand from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba.zip and,
optionally, list_eval_partition.txt for the train/validation/test split) and point
dataset_path at the zip, at the extracted img_align_celeba/ folder or at the folder holding them:

  python -m dcgan_jax.main --config=configs/celeba.py --workdir=/tmp/dcgan_celeba \
      --config.dataset_path=/data/celeba/img_align_celeba.zip

The images are centre-cropped (178x178 by default, see crop_size; 108 gives the tighter face crop
of many GAN papers) and resized to 64x64 once, stored as a tfds dataset under data_dir and
reused. With dataset_path empty, tfds' own builder is tried (it needs the network).
At 64x64 the prepared split (~162k images, ~2 GB uint8) is kept on the accelerator when it fits.
"""

import ml_collections

from dcgan_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """CelebA at 64x64 RGB with the paper's model and optimiser."""
  # default.py beside this file, or the repository's: a copy made elsewhere (to start a
  # sweep) still loads.
  config = config_files.default_config(__file__)
  config.dataset = 'celeb_a'
  config.dataset_path = ''  # img_align_celeba.zip, its extracted folder, or their folder.
  config.split = 'train'
  config.image_size = 64
  config.channels = 3
  config.crop_size = 0  # 0: the largest centred square (178x178); 108: a tighter face crop.
  # pytorch/examples' DCGAN: G 3,576,704 and D 2,765,568 parameters (its 4x4 kernels and 512-channel
  # first block differ from the paper's Figure 1; README.md lists what else, e.g. the EMA below).
  config.latent_dim = 100
  config.generator_width = 64
  config.discriminator_width = 64
  config.upsample = 'transpose'
  config.batch_size = 128
  config.g_learning_rate = 2e-4
  config.d_learning_rate = 2e-4
  config.adam_b1 = 0.5
  config.adam_b2 = 0.999
  config.ema_decay = 0.999  # Samples and evaluation only; 0 gives the paper's raw generator.
  config.num_epochs = 10.0  # ~12,700 steps over the 162,770 training images.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.sample_every_steps = 1000
  config.quality_every_steps = 0  # The digits quality score is for dataset='digits' only.
  config.eval_every_steps = -1  # Inception FID each epoch, when inception_weights is set.
  config.eval_every_epochs = 1.0
  return config
