"""The ``array`` dataset: images from one ``.npy`` / ``.npz`` file, read without TensorFlow.

For data a user already holds as a numpy array (a preprocessed dataset, a synthetic one, a
benchmark's), and for environments without TensorFlow: the array is loaded with numpy and kept on
the devices (device-resident sampling), so neither tensorflow nor tensorflow-datasets is imported.

The file holds ``uint8 [N, image_size, image_size, channels]`` (``[N, H, W]`` when channels is 1);
an ``.npz`` holds it under the key ``images`` or as its only array, and for class-conditional
training the classes under ``labels`` (integers ``[N]``). Images are used as they are: resize
and crop them beforehand. There are no splits: the whole array is split ``'train'`` (another
``split`` is refused, so that a slice is never silently ignored).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from dcgan_jax import numpy_files
from dcgan_jax.errors import UserError

NAME = 'array'
NPZ_KEY = 'images'
LABELS_KEY = 'labels'


def _expected(image_size: int, channels: int) -> str:
  return f'uint8 [N, {image_size}, {image_size}, {channels}]'


def load_array(path: str, image_size: int,
               channels: int) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads and checks the images of an ``array`` dataset.

  Args:
    path: the ``.npy`` or ``.npz`` file (``config.dataset_path``).
    image_size: the configured side; the array's height and width must equal it.
    channels: the configured channel count (1 or 3).

  Returns:
    ``(images, labels)``: ``uint8 [N, image_size, image_size, channels]`` (memory-mapped for
    ``.npy``) and the ``.npz``'s ``labels`` ``[N]``, or None when the file has none.

  Raises:
    UserError: no path, a missing or unreadable file, or arrays of the wrong shape or dtype.
  """
  expected = _expected(image_size, channels)
  if not path:
    raise UserError(f"dataset 'array' needs dataset_path: a .npy or .npz file of {expected}.")
  path = os.path.expanduser(path)  # As the folder sources do.
  if not os.path.isfile(path):
    state = 'is not a file' if os.path.exists(path) else 'does not exist'
    raise UserError(f'dataset_path {path!r} {state}; pass a .npy or .npz file of {expected}.')
  if not numpy_files.looks_like_numpy(path):
    raise UserError(f'{path!r} is not a numpy file (damaged, or another format); pass a .npy or '
                    f'.npz file of {expected} (np.save / np.savez).')
  try:
    if path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        labels = archive[LABELS_KEY] if LABELS_KEY in keys else None
        if labels is not None and NPZ_KEY not in keys:
          raise UserError(f'{path!r} holds labels; store the images beside them under the key '
                          f'{NPZ_KEY!r} (np.savez(path, {NPZ_KEY}=images, '
                          f'{LABELS_KEY}=labels)).')
        if NPZ_KEY not in keys and len(keys) != 1:
          raise UserError(f'{path!r} holds the arrays {keys}; store the images under the key '
                          f'{NPZ_KEY!r} (np.savez(path, {NPZ_KEY}=images)).')
        images = archive[NPZ_KEY if NPZ_KEY in keys else keys[0]]
    else:
      images, labels = np.load(path, mmap_mode='r', allow_pickle=False), None
  except UserError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f'Cannot read {path!r} as a numpy array ({type(e).__name__}: {e}); pass a '
                    f'.npy or .npz file of {expected} (np.save / np.savez).') from e
  stored_shape = images.shape  # What the user's array is (advice is about it).
  if images.ndim == 3 and channels == 1:
    images = images[..., None]
  shape_ok = (images.ndim == 4 and images.shape[1:] == (image_size, image_size, channels)
              and images.shape[0] >= 1)
  if images.dtype != np.uint8 or not shape_ok:
    # Say what to change: the element type alone, the channels alone, or the size.
    side = images.shape[1:3] == (image_size, image_size) if images.ndim >= 3 else False
    if images.ndim == 0 or images.shape[0] < 1:
      advice = 'It holds no images.'
    elif shape_ok and np.issubdtype(images.dtype, np.floating):
      advice = 'Only the type differs: ' + _float_advice(images)
    elif shape_ok and images.dtype == np.bool_:
      advice = 'Only the type differs: convert it with x.astype(np.uint8) * 255 (True is white).'
    elif shape_ok:
      advice = ('Only the type differs: convert it with x.astype(np.uint8) once its values are '
                'within 0..255.')
    elif side and images.ndim in (3, 4):
      have = 1 if images.ndim == 3 else images.shape[3]
      advice = f'Only the channels differ: set channels={have}' + (
          ', or repeat the grey channel: np.repeat(x.reshape(*x.shape[:3], 1), 3, axis=-1).'
          if have == 1 and channels == 3 else '.')
    else:
      advice = _shape_advice(stored_shape)
    raise UserError(f'{path!r} holds {images.dtype} {list(stored_shape)}; expected {expected} '
                    f'(values 0..255). {advice}')
  if labels is not None and (labels.shape != (images.shape[0],)
                             or not np.issubdtype(labels.dtype, np.integer)
                             or (labels.size and labels.min() < 0)):
    raise UserError(f'{path!r} holds labels {labels.dtype} {list(labels.shape)}; expected '
                    f'non-negative integers [{images.shape[0]}], one class per image.')
  return images, labels


def _float_advice(images: np.ndarray) -> str:
  """How to turn float images into uint8, by the range their values are in (the first 64
  images are looked at: the same advice for [0, 1], [-1, 1] and [0, 255] data turned the last
  white and clipped half of the middle one)."""
  head = np.asarray(images[:64])
  finite = head[np.isfinite(head)]
  if not finite.size:
    return 'its values are not finite (NaN or inf): check how the array was made.'
  nan_note = ('' if finite.size == head.size else
              'it holds NaN or inf values (np.nan_to_num(x) makes them 0); then, ')
  low, high = float(finite.min()), float(finite.max())
  if low >= 0 and high <= 1:
    advice = 'for values in [0, 1], np.clip(np.round(x * 255), 0, 255).astype(np.uint8).'
  elif low >= -1 and high <= 1:
    advice = ('for values in [-1, 1], np.clip(np.round((x + 1) * 127.5), 0, 255)'
              '.astype(np.uint8).')
  elif low >= 0 and high <= 255:
    advice = 'for values in [0, 255], np.clip(np.round(x), 0, 255).astype(np.uint8).'
  else:
    advice = (f'its values run from {low:g} to {high:g}: scale them to 0..255, then '
              'np.clip(np.round(x), 0, 255).astype(np.uint8).')
  return nan_note + advice


def _shape_advice(shape: tuple[int, ...]) -> str:
  """What to change when the array's shape is not the configured one."""
  from dcgan_jax import models  # pylint: disable=g-import-not-at-top  (jax, only on this path)

  if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[2] == shape[3] > 4:
    return ('The channels come first (N, C, H, W); np.transpose(x, (0, 2, 3, 1)) puts them '
            'last.')
  if len(shape) in (3, 4) and shape[1] == shape[2]:
    side = shape[1]
    if side in models.VALID_IMAGE_SIZES:
      return f'Set image_size={side} (and channels) to match, or resize the images.'
    larger = [size for size in models.VALID_IMAGE_SIZES if size > side]
    if larger:
      before, after = (larger[0] - side) // 2, (larger[0] - side + 1) // 2
      pad = ', '.join(['(0, 0)', f'({before}, {after})', f'({before}, {after})']
                      + ['(0, 0)'] * (len(shape) - 3))
      return (f'{side}x{side} is not a size the models take (4·2^k: 8 to 256): pad the images '
              f'to {larger[0]}x{larger[0]}, e.g. np.pad(x, ({pad})) (black borders, as for '
              'MNIST), or resize them.')
  return 'Resize the images to squares of a size the models take (8 to 256), or set image_size.'
