r"""Any folder (or .zip) of JPEG/PNG/WebP/BMP/TIFF/PPM/PGM images, searched recursively, at 64x64.

Run it with:

  python -m dcgan_jax.main --config=configs/folder.py --workdir=/tmp/dcgan_folder \
      --config.dataset_path=/path/to/images

The images are centre-cropped to squares, resized and converted to `channels` once, stored as a
tfds dataset under data_dir and reused; unreadable files are skipped and counted in the log.
Use --config.image_size=32 (or 128, ...) and --config.channels=1 for other shapes. With one
subfolder per class (path/cat/..., path/dog/...), --config.num_classes=2 trains class-conditional
models on them.
"""

import ml_collections

from dcgan_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """A user's image folder with the paper's model and optimiser."""
  # default.py beside this file, or the repository's: a copy made elsewhere (to start a
  # sweep) still loads.
  config = config_files.default_config(__file__)
  config.dataset = 'folder'
  config.dataset_path = ''  # Required: a directory or .zip of images.
  config.image_size = 64
  config.channels = 3
  config.generator_width = 64
  config.discriminator_width = 64
  config.upsample = 'transpose'
  config.batch_size = 128
  config.ema_decay = 0.999
  config.num_epochs = 25.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = -1
  config.checkpoint_every_epochs = 1.0
  config.sample_every_steps = -1
  config.sample_every_epochs = 1.0
  config.quality_every_steps = 0  # The digits quality score is for dataset='digits' only.
  return config
