"""CelebA from hand-downloaded files (a fake img_align_celeba.zip), and tfds' failing download."""
import io
import socket
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip('tensorflow_datasets')

from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import celeba  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
from dcgan_jax.errors import UserError  # pylint: disable=g-import-not-at-top

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PARTITIONS = [0, 0, 0, 1, 1, 2]  # Images 000001..000006: 3 train, 2 validation, 1 test.


def _config(**overrides):
  config = load_config(_ROOT / 'configs/default.py')
  config.update(dict(dataset='celeb_a', image_size=16, channels=3), **overrides)
  return config


def _face(index: int) -> bytes:
  """A 178x218 JPEG: 20-pixel black bands above and below a centred 178x178 square whose inner
  108x108 square is white and whose ring is grey (level 40 + index)."""
  pixels = np.zeros((218, 178, 3), np.uint8)
  pixels[20:198] = 40 + index
  pixels[55:163, 35:143] = 255
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'JPEG', quality=98)
  return buffer.getvalue()


@pytest.fixture
def celeba_download(tmp_path):
  """What a user has after downloading: the zip and the partition file side by side."""
  root = tmp_path / 'celeba'
  root.mkdir()
  with zipfile.ZipFile(root / 'img_align_celeba.zip', 'w') as zf:
    for index in range(len(_PARTITIONS)):
      zf.writestr(f'img_align_celeba/{index + 1:06d}.jpg', _face(index))
  lines = [f'{index + 1:06d}.jpg {split}\n' for index, split in enumerate(_PARTITIONS)]
  (root / 'list_eval_partition.txt').write_text(''.join(lines))
  return root


@pytest.mark.parametrize('split,count', [('train', 3), ('validation', 2), ('test', 1)])
def test_partition_selects_the_split(celeba_download, tmp_path, split, count):
  config = _config(dataset_path=str(celeba_download / 'img_align_celeba.zip'), split=split,
                   data_dir=str(tmp_path / 'tfds'))
  images = input_pipeline.load_all_images(config)
  assert images.shape == (count, 16, 16, 3)
  # The grey ring levels (40 + index) identify which images landed in the split.
  ring_levels = sorted(int(round(level)) - 40 for level in images[:, 0, 8, 0])
  expected = [i for i, s in enumerate(_PARTITIONS) if ('train', 'validation', 'test')[s] == split]
  assert ring_levels == pytest.approx(expected, abs=2)


def test_crop_size_zooms_into_the_face(celeba_download, tmp_path):
  common = dict(dataset_path=str(celeba_download), data_dir=str(tmp_path / 'tfds'))
  full_square = input_pipeline.load_all_images(_config(**common))
  # The black bands are cropped away: the corners show the grey ring, not black.
  assert full_square[:, 0, 0].min() >= 30
  # The centre is white; the ring takes (178 - 108) / 2 / 178 ≈ 20% of each side.
  assert full_square[:, 8, 8].min() >= 245
  assert full_square[:, 2, 2].max() <= 60
  inner = input_pipeline.load_all_images(_config(crop_size=108, **common))
  assert inner.shape == full_square.shape
  assert inner.min() >= 235  # Only the white square remains.


def test_extracted_folder_without_partition_is_all_train(celeba_download, tmp_path):
  with zipfile.ZipFile(celeba_download / 'img_align_celeba.zip') as zf:
    zf.extractall(tmp_path / 'extracted')
  folder = tmp_path / 'extracted' / 'img_align_celeba'
  config = _config(dataset_path=str(folder), data_dir=str(tmp_path / 'tfds'), channels=1)
  info = input_pipeline.dataset_info(config)
  assert info.num_examples == len(_PARTITIONS)
  assert info.image_shape == (16, 16, 1)
  with pytest.raises(UserError, match="Split 'test' is not available.*train"):
    input_pipeline.dataset_info(_config(dataset_path=str(folder), split='test',
                                        data_dir=str(tmp_path / 'tfds')))


def test_bad_partition_line_is_a_user_error(celeba_download, tmp_path):
  (celeba_download / 'list_eval_partition.txt').write_text('000001.jpg 0\n000002.jpg seven\n')
  with pytest.raises(UserError, match='Line 2 of .*partition 0, 1 or 2'):
    input_pipeline.dataset_info(_config(dataset_path=str(celeba_download),
                                        data_dir=str(tmp_path / 'tfds')))


def test_kaggle_csv_partition_is_read(tmp_path):
  path = tmp_path / 'list_eval_partition.csv'
  path.write_text('image_id,partition\n000001.jpg,0\n000002.jpg,2\n')
  assert celeba.read_partition(str(path)) == {'000001.jpg': 0, '000002.jpg': 2}


def test_failed_tfds_download_explains_the_manual_route(tmp_path, monkeypatch):
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top

  def quota_exceeded(self, *args, **kwargs):
    # A simulated failure (no network): what tfds raises when Google Drive serves its quota page.
    raise download_manager.NonMatchingChecksumError('simulated: wrong checksum')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', quota_exceeded)
  # A machine with a network (this one may have none: see tests/test_data_network.py).
  monkeypatch.setattr(socket, 'getaddrinfo', lambda *args, **kwargs: [])
  config = _config(data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match='NonMatchingChecksumError') as caught:
    input_pipeline.dataset_info(config)
  message = str(caught.value)
  assert 'img_align_celeba.zip' in message and '--config.dataset_path' in message
  assert '\n' not in message
