"""Telling numpy's files from other files before numpy reads them (no JAX, no TensorFlow).

``numpy.load`` takes any file that is neither an ``.npy`` nor an ``.npz`` for a pickle, and
with ``allow_pickle=False`` its error advises passing ``allow_pickle=True``: wrong advice for a
damaged file or another format, and unsafe for a file from a stranger. Checking the first bytes
lets the caller say what the file really is.
"""
from __future__ import annotations

import os

# The first bytes of an .npz (a zip archive) and of an .npy file.
_ZIP_MAGIC = b'PK'
_NPY_MAGIC = b'\x93NUMPY'


def looks_like_numpy(path: str | os.PathLike) -> bool:
  """Whether the file starts as an ``.npy`` or ``.npz`` does.

  Raises:
    OSError: the file cannot be opened.
  """
  with open(path, 'rb') as f:
    return f.read(len(_NPY_MAGIC)).startswith((_ZIP_MAGIC, _NPY_MAGIC))
