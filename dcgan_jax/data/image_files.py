"""Image files in a directory tree or a .zip archive, decoded and squared with PIL.

Shared by the ``folder`` and hand-downloaded CelebA sources, which both turn a pile of image files
into a prepared tfds dataset once. This module imports neither TensorFlow nor JAX.

One file becomes one ``uint8 [image_size, image_size, channels]`` array (:func:`square_image`):
EXIF orientation applied; transparency composited onto white; grey replicated to RGB or colour
reduced to luma (ITU-R 601-2, PIL's ``convert('L')``); the centred square of side
``min(crop_size or inf, width, height)`` cut out; that square resized to ``image_size`` with PIL's
bilinear filter, which widens its support when shrinking (antialiased), the same filter as the
``tf.image.resize(..., antialias=True)`` used for named tfds datasets.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from dcgan_jax.errors import UserError

# pytorch-fid's set of extensions (its fid_score.IMAGE_EXTENSIONS). Which files are read still
# differs from pytorch-fid in three ways, on purpose: subfolders are searched, the extension's
# case does not matter (a.PNG, b.JPG), and hidden files (.name) are left out. pytorch-fid reads
# only the top level, lower-case extensions, hidden files included.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff', '.ppm', '.pgm')
# Bump when the preprocessing below changes, so prepared datasets are rebuilt.
PREPROCESSING_VERSION = 1
_DECODE_CHUNK = 256
T = TypeVar('T')  # What a decode function gives for one file.


def _path_parts(relative_name: str) -> list[str]:
  """The folders and file of a name in a directory or zip, whichever separator the zip used,
  without ``.`` parts (zips made with ``zip -r ./images.zip ./cat ./dog`` name ``./cat/1.jpg``)."""
  return [part for part in relative_name.replace('\\', '/').split('/') if part not in ('', '.')]


def _other_extension(relative_name: str) -> str | None:
  """The lower-case extension of a visible file that is not read as an image, else None."""
  parts = _path_parts(relative_name)
  if (not parts or any(part.startswith('.') or part == '__MACOSX' for part in parts)
      or parts[-1].lower().endswith(IMAGE_EXTENSIONS)):
    return None
  return os.path.splitext(parts[-1])[1].lower() or '(none)'


def _is_image_name(relative_name: str) -> bool:
  """Whether a path inside the source looks like an image we should read."""
  parts = _path_parts(relative_name)
  # Hidden files and macOS zip metadata (`__MACOSX/`, `._name.jpg`) are not images even when
  # their extension says so; counting them as unreadable would only alarm the user.
  if any(part.startswith('.') or part == '__MACOSX' for part in parts):
    return False
  return parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def check_path(path: str, *, what: str = 'dataset_path', needs_images: bool = False) -> str:
  """Checks that ``path`` can be an image source, without opening any image.

  Args:
    path: a directory or a .zip file (``~`` is expanded).
    what: how error messages name the setting that gave ``path``.
    needs_images: also check that it holds an image file: a directory is searched only until
      the first one; a .zip's table of contents is read (a fraction of a second for CelebA's
      202,599 files).

  Returns:
    The absolute path.

  Raises:
    UserError: the path is empty, missing, neither a directory nor a .zip file, or (with
      ``needs_images``) holds no image file.
  """
  if not path:
    raise UserError(f'{what} is empty; set it to a directory or .zip file of images.')
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise UserError(f'{what} {path!r} does not exist; give a directory or .zip of images.')
  is_zip = os.path.isfile(path) and zipfile.is_zipfile(path)
  if not os.path.isdir(path) and not is_zip and path.lower().endswith('.zip'):
    raise UserError(f'{what} {path!r} is not a readable .zip file (damaged or cut short?); '
                    'give a directory or a complete .zip of images.')
  if not os.path.isdir(path) and not is_zip:
    raise UserError(f'{what} {path!r} is neither a directory nor a .zip file; '
                    'give a directory or .zip of images.')
  if needs_images:
    if is_zip:
      with zipfile.ZipFile(path) as archive:
        found = any(_is_image_name(name) for name in archive.namelist())
    else:
      found = next(_walk(path), None) is not None
    if not found:
      raise _no_images(what, path)
  return path


def _no_images(what: str, path: str) -> UserError:
  return UserError(f'{what} {path!r} holds no images; it must contain (in any subfolder) files '
                   f'ending in {", ".join(IMAGE_EXTENSIONS)}.')


class ImageFiles:
  """The image files under a directory (recursively) or inside a .zip archive.

  Attributes:
    path: the absolute directory or archive path.
    is_zip: whether ``path`` is a .zip archive.
    names: sorted relative names (``/``-separated) of the files with an image extension.
  """

  def __init__(self, path: str, *, what: str = 'dataset_path'):
    """Lists the images under ``path``.

    Args:
      path: a directory or a .zip file.
      what: how error messages name the setting that gave ``path``.

    Raises:
      UserError: the path is empty, missing, not a directory or .zip, or holds no images.
    """
    self.path = check_path(path, what=what)
    self.is_zip = not os.path.isdir(self.path)  # check_path let through a directory or a .zip.
    # Files passed over for their extension, by extension (e.g. {'.gif': 2, '.txt': 1}).
    self.other_files: collections.Counter = collections.Counter()
    if self.is_zip:
      with zipfile.ZipFile(self.path) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
      # An archive may hold a name twice (appended to); it is one image, read as zipfile does.
      self.names = sorted({i.filename for i in infos if _is_image_name(i.filename)})
      self.other_files.update(filter(None, map(_other_extension, {i.filename for i in infos})))
      self._stats = (os.path.getsize(self.path), os.stat(self.path).st_mtime_ns)
    else:
      entries = sorted(_walk(self.path, self.other_files))
      self.names = [name for name, _, _ in entries]
      self._stats = tuple(entries)
    if not self.names:
      raise _no_images(what, self.path)

  def fingerprint(self, *extra) -> str:
    """A short hash of the path, the files' names, sizes and times, and ``extra``.

    Args:
      *extra: anything else the prepared data depends on (image size, channels, ...).

    Returns:
      16 hex digits; it changes when a file is added, removed, resized or touched.
    """
    digest = hashlib.sha256()
    for item in (PREPROCESSING_VERSION, self.path, self.is_zip, self._stats, extra):
      digest.update(repr(item).encode())
    return digest.hexdigest()[:16]

  def label(self) -> str:
    """A readable, filesystem-safe name for the source (its base name)."""
    base = os.path.basename(self.path.rstrip(os.sep))
    if self.is_zip:
      base = os.path.splitext(base)[0]
    return re.sub(r'[^a-z0-9]+', '_', base.lower()).strip('_')[:40] or 'images'

  def read_all(self, names: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
    """Yields ``(name, bytes)`` for ``names`` in order; ``None`` bytes when a read fails."""
    if self.is_zip:
      with zipfile.ZipFile(self.path) as archive:
        for name in names:
          try:
            yield name, archive.read(name)
          # (Encrypted members raise RuntimeError; Deflate64 ones, NotImplementedError.)
          except (OSError, zipfile.BadZipFile, KeyError, ValueError, RuntimeError,
                  NotImplementedError):
            yield name, None
    else:
      for name in names:
        try:
          with open(os.path.join(self.path, name), 'rb') as f:
            yield name, f.read()
        except OSError:
          yield name, None


def _class_parts(names: Sequence[str]) -> list[list[str]]:
  """Path parts of each name below the top folder that every image shares (a zip's)."""
  parts = [_path_parts(name) for name in names]
  while parts and all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
    parts = [p[1:] for p in parts]
  return parts


def loose_images(names: Sequence[str]) -> list[str]:
  """The images that lie beside class folders rather than in one: empty unless at least two
  folders hold images (then the folder was meant to be labelled) and some image does not."""
  parts = _class_parts(names)
  if len({p[0] for p in parts if len(p) >= 2}) < 2:
    return []
  return [name for name, p in zip(names, parts) if len(p) < 2]


def class_folders(names: Sequence[str]) -> tuple[list[str], list[int]] | None:
  """Classes from folder names, as torchvision's ``ImageFolder`` reads them.

  An image's class is the first folder of its path (``cat/001.jpg``, ``cat/more/002.jpg``:
  class ``cat``). When every image sits under one and the same top folder, as in a zip of a
  folder, that folder is skipped first. Classes are numbered in sorted name order.

  Args:
    names: relative image paths (:attr:`ImageFiles.names`; ``/`` or ``\\`` separated).

  Returns:
    ``(class_names, labels)`` with one label per name, or None when some image lies outside
    any class folder or there are fewer than two classes (an unlabelled folder).
  """
  parts = _class_parts(names)
  if not parts or any(len(p) < 2 for p in parts):
    return None
  class_names = sorted({p[0] for p in parts})
  if len(class_names) < 2:
    return None
  index = {name: i for i, name in enumerate(class_names)}
  return class_names, [index[p[0]] for p in parts]


def source_fingerprint(path: str) -> str:
  """A short hash of what a local dataset source holds now, for caches derived from it.

  Args:
    path: a directory or .zip of images (hashed as :meth:`ImageFiles.fingerprint` hashes it,
      as for the prepared dataset), or another file, such as an ``array`` dataset's .npy/.npz
      (its size and modification time count).

  Returns:
    16 hex digits that change when an image is added, removed, rewritten or touched; '' for an
    empty ``path`` (a named tfds dataset), or one that cannot be read.
  """
  if not path:
    return ''
  try:
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path) or zipfile.is_zipfile(path):
      return ImageFiles(path).fingerprint()
    stat = os.stat(path)
  except (OSError, UserError):
    return ''
  return hashlib.sha256(repr((path, stat.st_size, stat.st_mtime_ns)).encode()).hexdigest()[:16]


def _walk(root: str, others: collections.Counter | None = None
          ) -> Iterator[tuple[str, int, int]]:
  """Yields ``(relative name, size, mtime_ns)`` of the image files under ``root``; counts the
  other visible files' extensions into ``others``, if given.

  Linked folders are followed, each real folder once: a link back up the tree (``cat/loop ->
  ..``) would otherwise list every image again at each level, some 40 deep, under other classes.
  """
  stat = os.stat(root)
  seen = {(stat.st_dev, stat.st_ino)}
  for directory, subdirs, files in os.walk(root, followlinks=True):
    kept = []
    for d in sorted(subdirs):
      if d.startswith('.') or d == '__MACOSX':
        continue
      try:
        stat = os.stat(os.path.join(directory, d))
      except OSError:  # A broken link.
        continue
      if (stat.st_dev, stat.st_ino) not in seen:
        seen.add((stat.st_dev, stat.st_ino))
        kept.append(d)
    subdirs[:] = kept
    for file_name in files:
      full = os.path.join(directory, file_name)
      relative = os.path.relpath(full, root).replace(os.sep, '/')
      if _is_image_name(relative) and os.path.isfile(full):
        stat = os.stat(full)
        yield relative, stat.st_size, stat.st_mtime_ns
      elif others is not None and (extension := _other_extension(relative)):
        others[extension] += 1


def eight_bit_grey(image: Image.Image) -> Image.Image:
  """16/32-bit integer and floating-point grey images scaled to 8-bit 'L'; others as they are.

  PIL's ``convert('L')`` / ``convert('RGB')`` clip such images at 255 instead of scaling them,
  which turns a 16-bit photograph almost white, and truncate floats, which turns one in [0, 1]
  black. Floats are read as [0, 1] when they lie in it, else like 32-bit integers (0..255, or
  0..65535 when larger); NaN becomes 0.
  """
  if image.mode not in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    return image
  array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
  if image.mode == 'F' and array.size and array.min() >= 0.0 and array.max() <= 1.0:
    peak = 1.0
  else:
    peak = 65535.0 if image.mode.startswith('I;16') or array.max() > 255 else 255.0
  return Image.fromarray(np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8))


def printable_name(name: str) -> str:
  """A file or folder name as valid UTF-8 text: bytes that are not UTF-8 (os.walk hands them
  over as surrogates) become ``\\xNN`` escapes, so the name can be stored and logged."""
  return name.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
  """Converts any PIL mode to 'L' (channels=1) or 'RGB' (channels=3)."""
  image = eight_bit_grey(image)
  if image.mode == 'P' or 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'RGBa', 'La', 'PA'):
    rgba = image.convert('RGBA')
    # Transparent pixels carry arbitrary colour values; show them on white as a viewer would.
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, rgba)
  return image.convert('L' if channels == 1 else 'RGB')


def square_image(data: bytes, image_size: int, channels: int, crop_size: int = 0) -> np.ndarray:
  """Decodes one image file and turns it into a square of the configured size.

  :func:`square_image_and_size` also gives the file's own size.

  Args:
    data: the encoded file (JPEG, PNG, WebP, BMP, ...).
    image_size: side of the output square.
    channels: 1 (grey) or 3 (RGB).
    crop_size: side of the centred square cut out before resizing; 0 (or more than the short
      side) means the largest centred square.

  Returns:
    ``uint8 [image_size, image_size, channels]``.

  Raises:
    Exception: whatever PIL raises for an unreadable or truncated file.
  """
  return square_image_and_size(data, image_size, channels, crop_size)[0]


def square_image_and_size(data: bytes, image_size: int, channels: int,
                          crop_size: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
  """:func:`square_image`'s array and the image's ``(width, height)`` as stored (after its
  EXIF rotation), from which a preparation counts the images it upscaled or cut."""
  with Image.open(io.BytesIO(data)) as opened:
    opened.load()  # Decode fully now: truncated files fail here, not later.
    image = _to_channels(ImageOps.exif_transpose(opened), channels)
  width, height = image.size
  side = min(width, height) if crop_size <= 0 else min(crop_size, width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  if side != image_size:
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
  array = np.asarray(image, dtype=np.uint8)
  return array.reshape(image_size, image_size, channels), (width, height)


class SizeTally:
  """Counts the images a preparation had to upscale or cut to a square, for its log.

  An image smaller than ``image_size`` is enlarged, so it comes out blurrier than the rest (a GAN
  learns that blur too); a non-square one keeps only its centred square (with ``crop_size`` 0).
  """

  def __init__(self, image_size: int, crop_size: int = 0):
    self._image_size = image_size
    self._crop_size = crop_size
    self.count = self.upscaled = self.not_square = self.crop_upscaled = 0
    self.smallest: tuple[int, int] | None = None

  def add(self, size: tuple[int, int]) -> None:
    """Counts one image of ``(width, height)``."""
    width, height = size
    self.count += 1
    if min(width, height) < self._image_size:  # The image itself is too small.
      self.upscaled += 1
      if self.smallest is None or min(size) < min(self.smallest):
        self.smallest = size
    elif 0 < self._crop_size < self._image_size:  # Large enough, but its crop is not.
      self.crop_upscaled += 1
    if width != height and self._crop_size <= 0:
      self.not_square += 1

  def warnings(self, where: str) -> list[str]:
    """The enlarged images, as warnings ([] when none was)."""
    messages = []
    if self.upscaled:
      width, height = self.smallest
      messages.append(
          f'{_of(self.upscaled, self.count)} images of {where} {_are(self.upscaled)} smaller '
          f'than {self._image_size}x{self._image_size} and were enlarged to it (the smallest is '
          f'{width}x{height}), so they are blurrier than the others and G learns that blur '
          'too; leave them out, or lower image_size.')
    if self.crop_upscaled:
      messages.append(
          f'crop_size {self._crop_size} is smaller than image_size {self._image_size}: the '
          f'crops of {_of(self.crop_upscaled, self.count)} images of {where} were enlarged to '
          f'{self._image_size}x{self._image_size}, so they are blurry; raise crop_size, or '
          'lower image_size.')
    return messages

  def notes(self, where: str) -> list[str]:
    """The images cut to their centred square, as a note ([] when none was): what a folder of
    photos expects, and CelebA's documented preprocessing."""
    if not self.not_square:
      return []
    return [f'{_of(self.not_square, self.count)} images of {where} {_are(self.not_square)} not '
            'square: only their centred square is kept (the edges of the longer side are cut '
            'off; crop_size sets a tighter square).']


def _of(part: int, count: int) -> str:
  return f'{part:,} of the {count:,}'


def _are(count: int) -> str:
  return 'is' if count == 1 else 'are'


def decode_all(
    files: ImageFiles,
    names: Sequence[str],
    decode: Callable[[bytes], T],
    num_threads: int | None = None,
) -> Iterator[tuple[str, T | None, str | None]]:
  """Decodes ``names`` in order on a thread pool (PIL releases the GIL while decoding).

  Args:
    files: where the files live.
    names: which files, in the order wanted.
    decode: bytes -> a value (an array, or an array and a size), e.g. a
      ``functools.partial`` of :func:`square_image` or :func:`square_image_and_size`.
    num_threads: pool size; defaults to the number of CPUs.

  Yields:
    ``(name, decoded, None)``, or ``(name, None, reason)`` for a file that could not be read,
    with a few words on why (``'not a readable image'``, or too large for PIL).
  """

  def safe_decode(data: bytes | None) -> tuple[T | None, str | None]:
    if data is None:
      return None, 'the file cannot be read'
    try:
      return decode(data), None
    except Image.DecompressionBombError as error:
      # PIL refuses images over twice MAX_IMAGE_PIXELS (a guard against decompression bombs).
      return None, (f'too large for PIL to open ({str(error).split(",")[0]}); downscale it '
                    'first')
    except Exception:  # pylint: disable=broad-except  # Any other failure: unreadable file.
      return None, 'not a readable image'

  workers = num_threads or os.cpu_count() or 1
  reader = files.read_all(names)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    while True:
      # Bounded chunks keep memory flat for archives of hundreds of thousands of files.
      chunk = [item for _, item in zip(range(_DECODE_CHUNK), reader)]
      if not chunk:
        return
      results = pool.map(safe_decode, [data for _, data in chunk])
      for (name, _), (array, reason) in zip(chunk, results):
        yield name, array, reason
