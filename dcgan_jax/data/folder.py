"""The ``folder`` source: any directory or .zip of JPEG/PNG/WebP/BMP/TIFF/PPM/PGM images, searched
recursively.

The images are squared (centre crop, antialiased resize), converted to the configured channels and
stored once as a tfds dataset with a single ``train`` split (see :mod:`dcgan_jax.data.prepared`).
Files that cannot be decoded are skipped and counted in the log; a folder that is missing, empty
or holds no readable image is a :class:`~dcgan_jax.errors.UserError`.

Class labels (for ``num_classes > 0``) come from the folder names, as torchvision's
``ImageFolder`` reads them: ``root/cat/1.jpg`` and ``root/dog/2.png`` are classes 0 and 1 (sorted
names; see :func:`~dcgan_jax.data.image_files.class_folders`). A folder with images outside any
class folder, or with a single class, has no labels.
"""
from __future__ import annotations

from dcgan_jax.data import image_files as image_files_lib
from dcgan_jax.data import prepared


def prepare_folder(path: str, *, image_size: int, channels: int, crop_size: int = 0,
                   data_dir: str | None = None):
  """Prepares (once) the images under ``path`` as a tfds dataset.

  Args:
    path: a directory (searched recursively) or a .zip archive.
    image_size: side of the stored squares.
    channels: 1 or 3.
    crop_size: centre-crop side before resizing (0: largest square).
    data_dir: tfds data directory; ``None`` for tfds' default.

  Returns:
    The prepared ``tfds.core.DatasetBuilder`` with one split, ``train``, whose examples are
    ``{'image': uint8 [image_size, image_size, channels], 'file_name': string}`` and, when the
    images sit in class folders, ``'label'`` (a ``ClassLabel`` named after the folders).

  Raises:
    UserError: ``path`` is missing or empty, or none of its images can be read.
  """
  files = image_files_lib.ImageFiles(path, what='The folder dataset_path')
  found = image_files_lib.class_folders(files.names)
  classes = None
  if found is not None:
    class_names, labels = found
    classes = (class_names, dict(zip(files.names, labels)))
  return prepared.prepare_image_files(
      files, kind='folder_images', splits={'train': files.names}, image_size=image_size,
      channels=channels, crop_size=crop_size, data_dir=data_dir, classes=classes)
