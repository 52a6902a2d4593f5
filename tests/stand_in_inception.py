"""A cheap, deterministic stand-in for the Inception extractor, for FID plumbing tests.

  python tests/stand_in_inception.py -m dcgan_jax.main <flags>   # FID hooks use the stand-in

Features are each image's mean and its row means: enough for statistics and a Fréchet distance,
without Inception weights or its compile time. tests/test_main_cli.py recomputes the expected
FID in-process with :func:`stand_in_features`.
"""
import runpy
import sys

import numpy as np


def stand_in_features(images: np.ndarray) -> dict[str, np.ndarray]:
  assert images.dtype == np.uint8, images.dtype
  pixels = images.astype(np.float32)
  return {'pool': np.concatenate([pixels.mean(axis=(1, 2, 3))[:, None],
                                  pixels.mean(axis=(2, 3))], axis=1)}


def install() -> None:
  """Makes ``InceptionExtractor.from_file`` return the stand-in."""
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  evaluation.InceptionExtractor.from_file = classmethod(
      lambda cls, path, **kwargs: stand_in_features)


if __name__ == '__main__':
  install()
  assert sys.argv[1] == '-m', 'usage: stand_in_inception.py -m MODULE [args]'
  target, sys.argv = sys.argv[2], [sys.argv[2]] + sys.argv[3:]
  runpy.run_module(target, run_name='__main__', alter_sys=True)
