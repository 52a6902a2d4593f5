"""Turns image files into a tfds dataset under ``data_dir`` once, then reuses it.

The ``folder`` source and the hand-downloaded CelebA source decode, crop and resize every image a
single time with PIL (:mod:`dcgan_jax.data.image_files`) and store the squares as a tfds dataset;
training then reads small PNG records instead of decoding large JPEGs every epoch.

Each preparation gets its own builder config, named ``<source base name>_<fingerprint>``, where
the fingerprint hashes the source path, its files' names, sizes and modification times, and the
preprocessing settings (image size, channels, crop size). The data lands in
``data_dir/<kind>/<config name>/1.0.0``: a changed folder or setting is prepared anew; an
unchanged one is found there and reused without opening a single image.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence

from absl import logging

from dcgan_jax.data import image_files as image_files_lib
from dcgan_jax.errors import UserError

_VERSION = '1.0.0'
# How many unreadable files are named one by one in the log before only counting them.
_NAMED_FAILURES = 10


class LocalSourceLogs:
  """Mixin for tfds builders of local data (nothing downloaded): logs one line when the data
  is prepared instead of tfds' stdout banners.

  tfds prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)"
  before preparing any builder and "... downloaded and prepared ... Subsequent calls will
  reuse this data." after it, with print, so no logging setting hides them; for data read from
  a local folder or bundled with a package both are wrong, and our own log lines say what is
  prepared where. (They override tfds' private hooks; a tfds without them prints its banners.)
  """

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    logging.info('Prepared %s in %s.', self.name, self.data_dir)


def prepare_image_files(
    files: image_files_lib.ImageFiles,
    *,
    kind: str,
    splits: Mapping[str, Sequence[str]],
    image_size: int,
    channels: int,
    crop_size: int,
    data_dir: str | None,
    fingerprint_extra: tuple = (),
    description: str = '',
    classes: tuple[Sequence[str], Mapping[str, int]] | None = None,
):
  """Prepares (or finds already prepared) a tfds dataset of squared images.

  Args:
    files: the source directory or archive.
    kind: the builder name, the folder under ``data_dir`` (e.g. ``'folder_images'``).
    splits: split name -> names in ``files`` that form it.
    image_size: side of the stored squares.
    channels: 1 or 3.
    crop_size: centre-crop side before resizing (0: largest square).
    data_dir: tfds data directory; ``None`` for tfds' default.
    fingerprint_extra: anything else the split contents depend on (e.g. a partition file).
    description: one line stored in the dataset's info.
    classes: ``(class_names, label of each name)`` to store a ``label`` feature
      (``tfds.features.ClassLabel``), or None.

  Returns:
    The prepared ``tfds.core.DatasetBuilder``; its examples are
    ``{'image': uint8 [image_size, image_size, channels], 'file_name': string}``, and
    ``'label': int64`` with ``classes``.

  Raises:
    UserError: no file of some split could be read as an image.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class_names = list(classes[0]) if classes else None
  # Without classes the fingerprint is what it was before labels existed: those preparations
  # are still found.
  extra = (fingerprint_extra,) + ((('classes', class_names),) if class_names else ())
  fingerprint = files.fingerprint(kind, image_size, channels, crop_size, *extra,
                                  sorted((s, len(n)) for s, n in splits.items()))
  config = tfds.core.BuilderConfig(
      name=f'{files.label()}_{fingerprint}', version=_VERSION,
      description=description or f'Images from {files.path}')
  decode = functools.partial(image_files_lib.square_image_and_size, image_size=image_size,
                             channels=channels, crop_size=crop_size)

  class Builder(LocalSourceLogs, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One preparation: a fixed source and preprocessing (never registered by name)."""
    name = kind
    VERSION = tfds.core.Version(_VERSION)
    BUILDER_CONFIGS = [config]
    # Nothing is downloaded, so there is no checksums file to look for. (Looking for it trips
    # tfds 4.9's `code_path` on Python >= 3.9 when `importlib_resources` is not installed.)
    code_path = None

    def _info(self):
      features = {
          'image': tfds.features.Image(shape=(image_size, image_size, channels)),
          'file_name': tfds.features.Text(),
      }
      if class_names:
        features['label'] = tfds.features.ClassLabel(
            names=[image_files_lib.printable_name(c) for c in class_names])
      return tfds.core.DatasetInfo(
          builder=self,
          description=config.description,
          features=tfds.features.FeaturesDict(features),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download: the files are local.
      return {split: self._generate_examples(split, names) for split, names in splits.items()}

    def _generate_examples(self, split, names):
      failed = []
      per_class = [0] * len(class_names or ())
      sizes = image_files_lib.SizeTally(image_size, crop_size)
      for name, decoded, reason in image_files_lib.decode_all(files, names, decode):
        if decoded is None:
          failed.append((name, reason))
          if len(failed) <= _NAMED_FAILURES:
            logging.warning('Skipping %s in %s: %s.', image_files_lib.printable_name(name),
                            files.path, reason)
          continue
        image, size = decoded
        sizes.add(size)
        stored_name = image_files_lib.printable_name(name)  # tfds stores text as UTF-8.
        example = {'image': image, 'file_name': stored_name}
        if class_names:
          example['label'] = classes[1][name]
          per_class[example['label']] += 1
        yield stored_name, example
      if failed:
        logging.warning('Skipped %d of %d files of split %r in %s that could not be read as '
                        'images.', len(failed), len(names), split, files.path)
      where = f'split {split!r} in {files.path}'
      for message in sizes.warnings(where):
        logging.warning('%s', message)
      for message in sizes.notes(where):
        logging.info('%s', message)
      if len(failed) == len(names):
        first_name, first_reason = failed[0]
        raise UserError(f'None of the {len(names)} image files of split {split!r} in '
                        f'{files.path!r} could be read ({first_name}: {first_reason}); give a '
                        'source of valid JPEG, PNG, WebP, BMP, TIFF or PPM/PGM images.')
      empty = [c for c, count in zip(class_names or (), per_class) if count == 0]
      if empty:
        # A class-conditional run would teach G classes that D never sees real images of.
        logging.warning('Class folder(s) %s of split %r in %s hold no readable image; for '
                        'class-conditional training (num_classes > 0) remove them or add '
                        'images.', ', '.join(map(repr, empty)), split, files.path)

  builder = Builder(config=config.name, data_dir=data_dir)
  if not builder.is_prepared():
    logging.info('Preparing %d images from %s into %s (once).',
                 sum(len(n) for n in splits.values()), files.path, builder.data_dir)
    _note_other_preparations(builder.data_dir, config.name, config.description)
    if files.other_files:  # Passed over without a word they would look lost.
      counts = ', '.join(f'{count} {ext}' for ext, count in sorted(files.other_files.items()))
      logging.info('Passed over %d files that are not images by their extension (%s); read are '
                   '%s.', sum(files.other_files.values()), counts,
                   ' '.join(image_files_lib.IMAGE_EXTENSIONS))
  try:
    builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    # Another process (runs of a sweep started together) may have prepared the same images
    # first; tfds' final rename then fails here, and the copy there is complete and the same.
    finished = Builder(config=config.name, data_dir=data_dir)
    if finished.is_prepared():
      logging.info('Another process prepared the images of %s at the same time; using its '
                   'copy in %s.', files.path, finished.data_dir)
      return finished
    # tfds may wrap exceptions from the generator; surface our own message if one is inside.
    user_error = _find_in_chain(error, UserError)
    if user_error is not None:
      raise user_error from None
    os_error = _find_in_chain(error, OSError)
    if os_error is not None:  # Not a directory, read-only, full disk, ...
      from dcgan_jax.data import sources  # pylint: disable=g-import-not-at-top
      raise sources.filesystem_error(os_error, f'images of {files.path}',
                                     builder.data_dir) from None
    raise
  return builder


def _note_other_preparations(version_dir: str, name: str, description: str) -> None:
  """Logs the other prepared copies of the same source in ``data_dir``, with their size.

  Each change to a folder (or another image size) is prepared anew beside the older copies, and
  nothing removes those: a folder edited now and then fills the disk unseen. Whether an older
  copy is still wanted (another config's image size, a run still reading it) only the user
  knows, so this says where they are instead of deleting them.
  """
  kind_dir = os.path.dirname(os.path.dirname(version_dir))
  source = name.rsplit('_', 1)[0]
  others, total = [], 0
  try:
    entries = sorted(os.scandir(kind_dir), key=lambda e: e.name)
  except OSError:  # Not prepared before, or not a local path (gs://...).
    return
  for entry in entries:
    if entry.name == name or entry.name.rsplit('_', 1)[0] != source:
      continue
    info_path = os.path.join(entry.path, _VERSION, 'dataset_info.json')
    try:
      with open(info_path, encoding='utf-8') as f:
        if json.load(f).get('description') != description:
          continue  # Another source with the same base name.
    except (OSError, ValueError):
      continue
    others.append(entry.path)
    total += sum(os.path.getsize(os.path.join(root, file))
                 for root, _, files in os.walk(entry.path) for file in files)
  if others:
    logging.info('data_dir holds %d other preparation(s) of the same source (another image size '
                 'or channels, or its files as they were before a change), %.1f MB: %s. Delete '
                 'those that no config or run needs.', len(others), total / 1e6,
                 ', '.join(others))


def _find_in_chain(error: BaseException, kind: type[BaseException]) -> BaseException | None:
  """The first ``kind`` exception in an exception's cause/context chain, if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, kind):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None
