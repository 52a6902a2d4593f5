"""Image grids of generated samples, as numpy arrays and PNG files (numpy and PIL only).

The training loop tiles a fixed batch of generated images into one picture every few steps, so
the evolution of a run can be followed image by image (``samples/step_000500.png`` ...) and in
TensorBoard. Nothing here needs JAX.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
from PIL import Image

from dcgan_jax import json_files
from dcgan_jax import write_errors


def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Maps images in ``value_range`` to uint8 0..255 (values outside are clipped).

  Args:
    images: float ``[..., H, W, C]`` in ``value_range`` (e.g. a tanh generator's [-1, 1]); uint8
      input is returned unchanged.
    value_range: ``(low, high)`` of the input.

  Returns:
    uint8 array of the same shape.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  low, high = value_range
  if not high > low:
    raise ValueError(f'value_range must have high > low, got {value_range}.')
  unit = (images.astype(np.float32) - low) / (high - low)
  return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_grid(images: np.ndarray, num_columns: int | None = None, padding: int = 2,
              pad_value: int = 0, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Tiles a batch of images into one image, row by row.

  Args:
    images: ``[N, H, W, C]`` float in ``value_range`` or uint8, C in {1, 3, 4}.
    num_columns: images per row; None means the smallest square-ish layout
      (``ceil(sqrt(N))`` columns).
    padding: pixels of ``pad_value`` between images and around the border.
    pad_value: uint8 value of the padding.
    value_range: range of float input (see :func:`to_uint8`).

  Returns:
    uint8 ``[rows * (H + padding) + padding, columns * (W + padding) + padding, C]``; empty cells
    of the last row are left as padding.
  """
  images = to_uint8(images, value_range)
  if images.ndim != 4:
    raise ValueError(f'images must be [N, H, W, C], got shape {images.shape}.')
  n, height, width, channels = images.shape
  if n == 0:
    raise ValueError('images must hold at least one image.')
  columns = num_columns or math.ceil(math.sqrt(n))
  columns = max(1, min(columns, n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding,
                  channels), pad_value, np.uint8)
  for index in range(n):
    row, column = divmod(index, columns)
    top = padding + row * (height + padding)
    left = padding + column * (width + padding)
    grid[top:top + height, left:left + width] = images[index]
  return grid


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
  """Writes a uint8 ``[H, W, C]`` image as PNG, atomically (a reader never sees half a file).

  Args:
    image: uint8 ``[H, W, C]`` with C in {1, 3, 4}.
    path: the file to write; its directory is created if needed.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'image must be uint8 [H, W, 1|3|4], got {image.dtype} {image.shape}.')
  pil_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=directory, prefix='.tmp_', suffix='.png',
                                   delete=False) as f:
    tmp_path = f.name
  try:
    with write_errors.naming(path):  # PIL's failed write or close names no file.
      pil_image.save(tmp_path, format='PNG')
    json_files.give_new_file_permissions(tmp_path)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


# The most classes a grid shows as one column each (more would make it too wide to read).
MAX_CLASS_COLUMNS = 16


def columns_for_classes(num_classes: int) -> int | None:
  """Grid columns for samples whose classes cycle through ``num_classes`` (one per class),
  or None (the default near-square layout) when unconditional or too many classes."""
  return num_classes if 0 < num_classes <= MAX_CLASS_COLUMNS else None


def save_grid(images: np.ndarray, path: str | os.PathLike, num_columns: int | None = None,
              padding: int = 2, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Tiles ``images`` with :func:`make_grid`, writes the grid as a PNG and returns it.

  Args:
    images: ``[N, H, W, C]`` float in ``value_range`` or uint8.
    path: PNG file to write.
    num_columns: see :func:`make_grid`.
    padding: see :func:`make_grid`.
    value_range: see :func:`to_uint8`.

  Returns:
    The uint8 grid ``[H', W', C]`` that was written.
  """
  grid = make_grid(images, num_columns=num_columns, padding=padding, value_range=value_range)
  save_png(grid, path)
  return grid
