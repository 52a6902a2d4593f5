"""CelebA, from files downloaded by hand or through tfds' own ``celeb_a`` builder.

tfds' ``celeb_a`` builder downloads from Google Drive, which often refuses with "quota exceeded":
tfds then fails with ``NonMatchingChecksumError`` (tensorflow/datasets issues 1482, 3544 and
5342). So ``dataset='celeb_a'`` with a ``dataset_path`` uses the files a user downloaded by hand
instead, with no network at all:

* ``img_align_celeba.zip``, or the folder ``img_align_celeba/`` extracted from it, or a folder
  holding either (given as ``dataset_path``);
* optionally ``list_eval_partition.txt`` (or Kaggle's ``list_eval_partition.csv``) in that folder
  or next to the zip/image folder, which assigns each image to ``train`` (0), ``validation`` (1)
  or ``test`` (2). Without it, all images form the ``train`` split.

DCGAN preprocessing, once, with PIL: centre crop of the 178x218 image (side ``crop_size``; 0 means
the full 178-pixel width) then antialiased resize to ``image_size``. The result is stored as a
tfds dataset under ``data_dir/celeba_files/`` (see :mod:`dcgan_jax.data.prepared`) and reused.
"""
from __future__ import annotations

import csv
import os
import posixpath

from absl import logging

from dcgan_jax.data import image_files as image_files_lib
from dcgan_jax.data import network
from dcgan_jax.data import prepared
from dcgan_jax import errors
from dcgan_jax.errors import UserError

PARTITION_FILES = ('list_eval_partition.txt', 'list_eval_partition.csv')
SPLIT_NAMES = ('train', 'validation', 'test')  # Partition ids 0, 1, 2.
_HAND_DOWNLOAD_HINT = ('download img_align_celeba.zip (and list_eval_partition.txt) by hand from '
                       'https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and set '
                       '--config.dataset_path to the zip or its folder')


def find_celeba_files(path: str) -> tuple[image_files_lib.ImageFiles, str | None]:
  """Locates the CelebA images and the optional partition file under ``path``.

  Args:
    path: ``img_align_celeba.zip``, the extracted ``img_align_celeba/`` folder, or a folder
      holding either of them.

  Returns:
    ``(images, partition file path or None)``.

  Raises:
    UserError: the path is missing or holds no images.
  """
  path = os.path.abspath(os.path.expanduser(path)) if path else path
  search_dirs = []
  images_path = path
  if path and os.path.isdir(path):
    search_dirs.append(path)
    for candidate in ('img_align_celeba.zip', 'img_align_celeba'):
      if os.path.exists(os.path.join(path, candidate)):
        images_path = os.path.join(path, candidate)
        break
  if images_path:
    # Next to the zip or the extracted folder (the usual layout of the download).
    search_dirs.append(os.path.dirname(images_path.rstrip(os.sep)))
  images = image_files_lib.ImageFiles(images_path, what='The CelebA dataset_path')
  for directory in search_dirs:
    for file_name in PARTITION_FILES:
      candidate = os.path.join(directory, file_name)
      if os.path.isfile(candidate):
        return images, candidate
  return images, None


def read_partition(partition_path: str) -> dict[str, int]:
  """Parses ``list_eval_partition.txt`` ("000001.jpg 0" lines) or its .csv variant.

  Returns:
    image file base name -> partition id (0 train, 1 validation, 2 test).

  Raises:
    UserError: a line is malformed or names an unknown partition.
  """
  partition = {}
  with open(partition_path, newline='') as f:
    if partition_path.endswith('.csv'):
      rows = [row for row in csv.reader(f) if row]
      if rows and not rows[0][-1].strip().isdigit():
        rows = rows[1:]  # Header: image_id,partition.
    else:
      rows = [line.split() for line in f if line.strip()]
  for line_number, row in enumerate(rows, start=1):
    if len(row) != 2 or row[1].strip() not in ('0', '1', '2'):
      raise UserError(f'Line {line_number} of {partition_path!r} is {" ".join(row)!r}; each line '
                      'must be an image file name and a partition 0, 1 or 2.')
    partition[row[0].strip()] = int(row[1])
  return partition


def split_names(images: image_files_lib.ImageFiles,
                partition_path: str | None) -> dict[str, list[str]]:
  """Assigns the images to splits (all to ``train`` without a partition file).

  Raises:
    UserError: the partition file names none of the images.
  """
  if partition_path is None:
    return {'train': list(images.names)}
  partition = read_partition(partition_path)
  splits = {name: [] for name in SPLIT_NAMES}
  unlisted = 0
  for name in images.names:
    partition_id = partition.get(posixpath.basename(name))
    if partition_id is None:
      unlisted += 1
    else:
      splits[SPLIT_NAMES[partition_id]].append(name)
  if unlisted:
    logging.warning('%d of %d images in %s are not listed in %s and are left out.', unlisted,
                    len(images.names), images.path, partition_path)
  if unlisted == len(images.names):
    raise UserError(f'{partition_path!r} lists none of the {len(images.names)} images in '
                    f'{images.path!r}; give the partition file that belongs to these images.')
  return {split: names for split, names in splits.items() if names}


def prepare_celeba_files(path: str, *, image_size: int, channels: int = 3, crop_size: int = 0,
                         data_dir: str | None = None):
  """Prepares (once) hand-downloaded CelebA files as a tfds dataset.

  Args:
    path: see :func:`find_celeba_files`.
    image_size: side of the stored squares.
    channels: 1 or 3.
    crop_size: side of the centre crop of the 178x218 image; 0 means 178.
    data_dir: tfds data directory; ``None`` for tfds' default.

  Returns:
    The prepared ``tfds.core.DatasetBuilder``; splits ``train``/``validation``/``test`` with a
    partition file, else only ``train``; examples
    ``{'image': uint8 [image_size, image_size, channels], 'file_name': string}``.

  Raises:
    UserError: missing or empty path, bad partition file, or no readable image.
  """
  images, partition_path = find_celeba_files(path)
  splits = split_names(images, partition_path)
  partition_stamp = None
  if partition_path is not None:
    stat = os.stat(partition_path)
    partition_stamp = (partition_path, stat.st_size, stat.st_mtime_ns)
  logging.info('CelebA images: %s; partition file: %s.', images.path, partition_path or 'none')
  return prepared.prepare_image_files(
      images, kind='celeba_files', splits=splits, image_size=image_size, channels=channels,
      crop_size=crop_size, data_dir=data_dir, fingerprint_extra=(partition_stamp,),
      description=f'CelebA aligned faces from {images.path}')


def prepare_tfds_celeb_a(data_dir: str | None = None):
  """Prepares tfds' own ``celeb_a`` (downloads from Google Drive unless already prepared).

  Returns:
    The prepared ``tfds.core.DatasetBuilder``.

  Raises:
    UserError: the download failed (the usual outcome: Google Drive quota, issue 1482).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder('celeb_a', data_dir=data_dir)
  if builder.is_prepared():
    return builder
  network.check_download_hosts(builder, 'celeb_a', builder.data_dir, _HAND_DOWNLOAD_HINT)
  logging.warning(
      "Downloading CelebA with tfds' celeb_a builder from Google Drive. This often fails with "
      "'quota exceeded' / NonMatchingChecksumError (tensorflow/datasets issues 1482, 3544, "
      "5342); if it does, %s.", _HAND_DOWNLOAD_HINT)
  try:
    builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    # NonMatchingChecksumError (the quota page instead of the zip), DownloadError, OSError,
    # requests' connection errors, ...: whatever the form, the remedy is the same.
    first_line = errors.first_line(error, '', max_chars=200)
    raise UserError(f"tfds could not download celeb_a ({type(error).__name__}: {first_line}); "
                    f"{_HAND_DOWNLOAD_HINT}.") from error
  return builder
