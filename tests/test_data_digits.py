"""The embedded `digits` tfds builder and its resizing/channel conversion in the pipeline."""
import pathlib

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import digits  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _default_config(**overrides):
  config = load_config(_ROOT / 'configs/default.py')
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def test_builder_has_all_digits_of_ten_classes(data_dir):
  builder = tfds.builder('digits', data_dir=data_dir)
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == digits.NUM_EXAMPLES == 1797
  assert builder.info.features['label'].num_classes == 10
  examples = tfds.as_numpy(builder.as_dataset(split='train', batch_size=-1))
  assert examples['image'].shape == (1797, 8, 8, 1)
  assert examples['image'].dtype == np.uint8
  assert sorted(np.unique(examples['label'])) == list(range(10))
  assert np.bincount(examples['label']).min() >= 170  # About 180 of each class.
  # Stored in scikit-learn's order, 0..16 scaled to 0..255.
  images, labels = digits.digit_images()
  np.testing.assert_array_equal(examples['image'], images)
  np.testing.assert_array_equal(examples['label'], labels)
  assert examples['image'].max() == 255 and examples['image'].min() == 0


@pytest.mark.parametrize('image_size,channels', [(32, 1), (64, 3)])
def test_pipeline_upsamples_and_converts_channels(data_dir, image_size, channels):
  config = _default_config(data_dir=data_dir, image_size=image_size, channels=channels)
  info = input_pipeline.dataset_info(config)
  assert info.num_examples == 1797
  assert info.image_shape == (image_size, image_size, channels)
  assert info.num_bytes == 1797 * image_size * image_size * channels
  images = input_pipeline.load_all_images(config, max_examples=100)
  assert images.shape == (100, image_size, image_size, channels)
  assert images.dtype == np.uint8
  originals, _ = digits.digit_images()
  originals = originals[:100].astype(np.float64)
  # Bilinear upsampling keeps the average ink of each digit (edges clamp, hence the tolerance).
  np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), originals.mean(axis=(1, 2, 3)), atol=6)
  # Each 8x8 pixel becomes a block: the block centres reproduce the original contrast pattern.
  scale = image_size // 8
  centres = images[:, scale // 2::scale, scale // 2::scale, 0].astype(np.float64)
  assert np.corrcoef(centres.ravel(), originals[..., 0].ravel())[0, 1] > 0.95
  if channels == 3:  # Grey replicated.
    np.testing.assert_array_equal(images[..., 0], images[..., 1])
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
