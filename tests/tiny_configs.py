"""Configs for tests: the shipped configs with overrides, and the default shrunk to seconds."""
import pathlib

from dcgan_jax import train

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name='default', **overrides):
  """configs/<name>.py with overrides, locked as the command line's is."""
  return train.load_config(_ROOT / 'configs' / f'{name}.py', **overrides)


def tiny_config(data_dir, **overrides):
  """The default config shrunk to seconds per run: 8x8 digits, width 8, batch 16, 4 steps."""
  config = load_config()
  config.update(dict(
      data_dir=str(data_dir), image_size=8, generator_width=8, discriminator_width=8,
      latent_dim=8, batch_size=16, num_train_steps=4, log_every_steps=2,
      checkpoint_every_steps=2, sample_every_steps=2, quality_every_steps=0,
      num_sample_images=6, keep_checkpoints=3, lr_schedule='constant'))
  config.update(overrides)
  return config
