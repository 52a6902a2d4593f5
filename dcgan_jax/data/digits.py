"""The ``digits`` dataset: scikit-learn's 1,797 real 8x8 handwritten digits as a tfds builder.

The images ship inside scikit-learn (``sklearn.datasets.load_digits``, the UCI "Optical
Recognition of Handwritten Digits" test set), so this source needs no network. Preparing it writes
a few hundred kilobytes under ``data_dir/digits/1.0.0`` in about a second.

Examples: ``{'image': uint8 [8, 8, 1], 'label': int64 in [0, 10)}``. The original pixel values are
ink counts 0..16; they are stored as ``round(value * 255 / 16)`` so that 16 is full white on black.
One split, ``train``, holds all 1,797 examples in scikit-learn's order; use tfds slicing (e.g.
``'train[:1500]'`` / ``'train[1500:]'``) for a held-out part. The input pipeline upsamples them to
``config.image_size`` (antialiased bilinear).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from dcgan_jax.data.prepared import LocalSourceLogs

NUM_EXAMPLES = 1797
NUM_CLASSES = 10
_MAX_INK = 16


def digit_images() -> tuple[np.ndarray, np.ndarray]:
  """Loads the digits from scikit-learn, scaled to 0..255.

  Returns:
    ``(images uint8 [1797, 8, 8, 1], labels int64 [1797])``.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  # Slow; load on demand.

  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / _MAX_INK)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


class Digits(LocalSourceLogs, tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits (offline)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # Nothing is downloaded, so there is no checksums file to look for. (Looking for it trips
  # tfds 4.9's `code_path` on Python >= 3.9 when `importlib_resources` is not installed.)
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('The 1,797 8x8 handwritten digits bundled with scikit-learn '
                     '(sklearn.datasets.load_digits), values scaled from 0..16 to 0..255.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
        # Keep scikit-learn's order so split slices mean the same examples as sklearn indices.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is local.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    images, labels = digit_images()
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image, 'label': label}
