"""From ``config.dataset`` to a prepared tfds builder, a split and the image feature's name.

Sources:

* ``digits``: scikit-learn's 8x8 digits (:mod:`dcgan_jax.data.digits`), offline.
* ``folder``: a directory or .zip of images given by ``dataset_path`` (:mod:`.folder`).
* ``array``: a .npy/.npz file of images (:mod:`.array`; read by numpy, not through this module).
* ``celeb_a`` with a ``dataset_path``: hand-downloaded CelebA files (:mod:`.celeba`).
* any other tfds dataset with an image feature, by name (``mnist``, ``fashion_mnist``,
  ``cifar10``, ``celeb_a``, ``name/config:version``, ...), prepared into ``data_dir`` by tfds.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from absl import logging

from dcgan_jax.data import array
from dcgan_jax.data import image_files
from dcgan_jax.data import network
from dcgan_jax import errors
from dcgan_jax.errors import UserError

LOCAL_SOURCES = ('digits', 'folder', 'array')
# Named in the error for an unknown dataset; any other tfds image dataset works too.
TFDS_IMAGE_DATASETS = ('mnist', 'fashion_mnist', 'kmnist', 'emnist', 'cifar10', 'cifar100',
                       'svhn_cropped', 'celeb_a', 'stl10', 'oxford_flowers102', 'lsun')


@dataclasses.dataclass(frozen=True)
class Source:
  """A prepared dataset and what to read from it.

  Attributes:
    name: a readable name for logs (``'digits'``, ``'folder:/path'``, ``'mnist'``, ...).
    builder: the prepared ``tfds.core.DatasetBuilder``.
    split: the tfds split string to read (slices like ``'train[:90%]'`` allowed).
    image_key: the feature holding the image.
    crop_size: centre crop the pipeline still has to apply (0: largest square). Prepared
      sources (folder, CelebA files) were cropped when prepared, so theirs is 0.
  """
  name: str
  builder: Any
  split: str
  image_key: str = 'image'
  crop_size: int = 0

  @property
  def label_key(self) -> str | None:
    """The class-label feature (tfds' ``label``, a ``ClassLabel``), or None."""
    return LABEL_KEY if _label_classes(self.builder) else None

  @property
  def num_classes(self) -> int:
    """Classes of :attr:`label_key`; 0 without labels."""
    return _label_classes(self.builder)

  @property
  def class_names(self) -> tuple[str, ...]:
    """The names of the classes in label order (a folder's class folders, tfds' names;
    ``'0'``, ``'1'``, ... where the dataset names none); empty without labels."""
    if not self.num_classes:
      return ()
    return tuple(self.builder.info.features[LABEL_KEY].names)


LABEL_KEY = 'label'


def _label_classes(builder) -> int:
  """``num_classes`` of the builder's ``label`` feature when it is a ClassLabel, else 0."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  features = builder.info.features
  if isinstance(features, tfds.features.FeaturesDict) and LABEL_KEY in features:
    feature = features[LABEL_KEY]
    if isinstance(feature, tfds.features.ClassLabel):
      return int(feature.num_classes)
  return 0


def known_dataset_names() -> tuple[str, ...]:
  """The names listed when ``config.dataset`` is unknown."""
  return LOCAL_SOURCES + TFDS_IMAGE_DATASETS


def _unknown_dataset(name: str) -> UserError:
  return UserError(f'Unknown dataset {name!r}; use one of {", ".join(known_dataset_names())} '
                   'or the name of any other tensorflow-datasets image dataset.')


def _data_dir(config) -> str | None:
  data_dir = config.get('data_dir', '') or None
  if data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise UserError(f'data_dir {data_dir!r} is a file; give a directory for the prepared '
                    "datasets ('' means tfds' default, ~/tensorflow_datasets).")
  return data_dir


def filesystem_error(error: OSError, what: str, data_dir: str) -> UserError:
  """The one-line error for a prepared dataset that cannot be written into ``data_dir``."""
  return UserError(f'Cannot write the prepared {what} into {data_dir} '
                   f'({type(error).__name__}: {error.strerror or error}); set '
                   '--config.data_dir to a writable directory with free space.')


def _image_key(builder, name: str) -> str:
  """The name of the builder's image feature ('image' when there are several)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  features = builder.info.features
  if isinstance(features, tfds.features.FeaturesDict):
    image_keys = [key for key, feature in features.items()
                  if isinstance(feature, tfds.features.Image)]
    if 'image' in image_keys:
      return 'image'
    if image_keys:
      return image_keys[0]
  raise UserError(f'tfds dataset {name!r} has no image feature; use an image dataset such as '
                  f'{", ".join(TFDS_IMAGE_DATASETS)}.')


_SLICE_EXAMPLES = '"train[:90%]", "train[1000:]" or "train+test"'


def _check_split(builder, split: str, name: str) -> None:
  """Raises UserError unless every part of the split names a prepared split and selects examples.

  tfds itself reports a mistyped slice only when reading starts (a traceback), an empty one as
  "Instruction [] corresponds to no data!", and counts a reversed one (``train[5:2]``) as -3
  examples, which a sum of parts silently absorbs.
  """
  available = list(builder.info.splits.keys())
  if not available:  # Unknown before preparation (e.g. under tfds' mock_data): let tfds decide.
    return
  for part in (p.strip() for p in split.split('+')):
    base = re.split(r'[\[(]', part, maxsplit=1)[0]
    if base not in available:
      raise UserError(f'Split {split!r} is not available for dataset {name!r}; its splits are '
                      f'{", ".join(sorted(available))} (tfds slices like "train[:90%]" work).')
    try:
      num_examples = builder.info.splits[part].num_examples
    except (ValueError, KeyError, TypeError) as error:
      raise UserError(f'Split {split!r} of dataset {name!r} is not a valid tfds split '
                      f'({errors.first_line(error, "", max_chars=120)}); slices look like '
                      f'{_SLICE_EXAMPLES}, percentages within 0..100.') from None
    if num_examples <= 0:
      total = builder.info.splits[base].num_examples
      raise UserError(f'Split {part!r} of dataset {name!r} selects no examples ({base} has '
                      f'{total}); give a slice that selects some, such as {_SLICE_EXAMPLES}.')


def _prepare_named_tfds(name: str, data_dir: str | None):
  """Builds and prepares a tfds dataset by name, turning failures into UserErrors."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    raise _unknown_dataset(name) from None
  except ValueError as error:  # E.g. an unknown config or version of a known dataset.
    first_line = errors.first_line(error, '', max_chars=200)
    raise UserError(f'tfds cannot build dataset {name!r} ({first_line}); check the name, config '
                    'and version.') from None
  if builder.is_prepared():  # tfds would log 'Reusing dataset' at each of a run's calls.
    return builder
  network.check_download_hosts(builder, name, builder.data_dir)
  logging.info('Preparing tfds dataset %s into %s (once).', name, builder.data_dir)
  try:
    builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    first_line = errors.first_line(error, '', max_chars=200)
    raise UserError(f'tfds could not download or prepare {name!r} into {builder.data_dir} '
                    f'({type(error).__name__}: {first_line}); check the network or the '
                    'manual-download instructions of that dataset.') from error
  return builder


def warn_if_path_ignored(config, source: Source) -> None:
  """Warns when ``config.dataset_path`` is set for a dataset that does not read it.

  Forgetting ``dataset='folder'`` trained on the default digits without a word. Called once per
  run (by :func:`dcgan_jax.data.dataset_info`), once the dataset's name is known to be good.
  """
  dataset_path = str(config.get('dataset_path', '') or '')
  name = str(config.dataset).strip()
  if dataset_path and name not in ('folder', 'celeb_a'):
    logging.warning("dataset_path=%r is ignored for dataset %r: it is read for 'folder', "
                    "'celeb_a' and 'array'; set dataset='folder' to train on a folder of images.",
                    dataset_path, name)


def check_num_classes(wanted: int, name: str, num_classes: int) -> None:
  """Raises a UserError unless a dataset with ``num_classes`` labels (0: none) has ``wanted``."""
  if not wanted:
    return
  if not num_classes:
    raise UserError(f'num_classes is {wanted} but dataset {name!r} has no class labels; '
                    'use a labelled dataset (digits, mnist, fashion_mnist, cifar10, ..., a '
                    f'folder with one subfolder per class, or an array .npz with '
                    f'{array.LABELS_KEY!r}) or set num_classes to 0.')
  if num_classes != wanted:
    raise UserError(f'num_classes is {wanted} but dataset {name!r} has {num_classes} classes; '
                    f'set num_classes to {num_classes} (or 0 for unconditional training).')


def check_dataset_path(config) -> None:
  """Checks a folder or hand-downloaded CelebA ``dataset_path`` before anything is read.

  Only the path itself is looked at: it exists, is a directory or a .zip file, and holds an
  image file (a folder is searched until the first one); decoding the images happens in
  :func:`resolve_source`. A folder for class-conditional training (``num_classes > 0``) is
  listed, and its class subfolders counted. Needs no TensorFlow, so a mistyped path or an empty folder is
  reported before the seconds that loading it takes.

  Args:
    config: reads ``dataset``, ``dataset_path`` and ``data_dir``.

  Raises:
    UserError: the path is empty, missing, neither a directory nor a .zip file, or a folder
      source without an image file; or ``data_dir`` is a file.
  """
  name = str(config.dataset).strip()
  dataset_path = config.get('dataset_path', '')
  if name == 'folder':
    path = image_files.check_path(dataset_path, what='The folder dataset_path', needs_images=True)
    wanted = int(config.get('num_classes', 0) or 0)
    if wanted:
      # The labels are the folder names: checked here, not after minutes of decoding images.
      names = image_files.ImageFiles(path, what='The folder dataset_path').names
      found = image_files.class_folders(names)
      loose = image_files.loose_images(names) if not found else []
      if loose:  # Class folders, and images beside them: "no class labels" misled.
        raise UserError(f'num_classes is {wanted} but {len(loose)} image(s) of folder:'
                        f'{dataset_path} lie outside any class folder (e.g. {loose[0]!r}); move '
                        'them into a class folder or out of the dataset.')
      check_num_classes(wanted, f'folder:{dataset_path}', len(found[0]) if found else 0)
  elif name == 'celeb_a' and dataset_path:
    # The images may sit in a subfolder or a zip beside the partition file: left to celeba.
    image_files.check_path(dataset_path, what='The CelebA dataset_path')
  _data_dir(config)  # Not a file.


def resolve_source(config, *, split: str | None = None) -> Source:
  """Prepares (once) the dataset the config names and says what to read.

  Args:
    config: reads ``dataset``, ``data_dir``, ``dataset_path``, ``split``, ``image_size``,
      ``channels`` and ``crop_size``.
    split: overrides ``config.split``.

  Returns:
    The :class:`Source`.

  Raises:
    UserError: unknown dataset, bad path or split, or a failed download.
  """
  name = str(config.dataset).strip()
  data_dir = _data_dir(config)
  dataset_path = config.get('dataset_path', '')
  split = split or config.get('split', 'train') or 'train'
  image_size, channels = int(config.image_size), int(config.channels)
  crop_size = int(config.get('crop_size', 0))
  if channels not in (1, 3):
    raise UserError(f'channels is {channels}; use 1 (grey) or 3 (RGB).')
  if image_size <= 0:
    raise UserError(f'image_size is {image_size}; use a positive size such as 32 or 64.')
  if crop_size < 0:
    raise UserError(f'crop_size is {crop_size}; use 0 (largest centred square) or a positive side.')

  if name == 'folder':
    from dcgan_jax.data import folder  # pylint: disable=g-import-not-at-top
    builder = folder.prepare_folder(dataset_path, image_size=image_size, channels=channels,
                                    crop_size=crop_size, data_dir=data_dir)
    source = Source(f'folder:{dataset_path}', builder, split)
  elif name == 'celeb_a' and dataset_path:
    from dcgan_jax.data import celeba  # pylint: disable=g-import-not-at-top
    builder = celeba.prepare_celeba_files(dataset_path, image_size=image_size, channels=channels,
                                          crop_size=crop_size, data_dir=data_dir)
    source = Source(f'celeb_a:{dataset_path}', builder, split)
  elif name == 'digits':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from dcgan_jax.data import digits  # pylint: disable=g-import-not-at-top,unused-import
    builder = tfds.builder('digits', data_dir=data_dir)
    try:
      if not builder.is_prepared():  # (Prepared, tfds logs 'Reusing dataset' at each call.)
        builder.download_and_prepare()
    except OSError as error:
      # Another process may have prepared it at the same time (its rename came first).
      if not tfds.builder('digits', data_dir=data_dir).is_prepared():
        raise filesystem_error(error, 'digits dataset', builder.data_dir) from None
      builder = tfds.builder('digits', data_dir=data_dir)
    source = Source('digits', builder, split, crop_size=crop_size)
  elif not name or not re.fullmatch(r'[\w\-./:]+', name):
    raise _unknown_dataset(name)
  else:
    if name == 'celeb_a':
      from dcgan_jax.data import celeba  # pylint: disable=g-import-not-at-top
      builder = celeba.prepare_tfds_celeb_a(data_dir)
    else:
      builder = _prepare_named_tfds(name, data_dir)
    source = Source(name, builder, split, _image_key(builder, name), crop_size)
  _check_split(source.builder, split, name)
  return source
