"""Runs a module with process 0's sample grids refused by a full disk, for failure tests across
processes (in one process, tests/test_train.py patches PIL with pytest's monkeypatch).

  python tests/refused_write.py -m dcgan_jax.main <flags>

Every PNG that process 0 saves fails with ENOSPC, as PIL's own errors do (no file name); the
other processes write nothing there, so they go on to the next sync point.
"""
import errno
import os
import runpy
import sys


def install() -> None:
  """Makes process 0's ``PIL.Image.Image.save`` fail as on a full disk."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  original = Image.Image.save

  def save(self, *args, **kwargs):
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return original(self, *args, **kwargs)

  Image.Image.save = save


if __name__ == '__main__':
  install()
  assert sys.argv[1] == '-m', 'usage: refused_write.py -m MODULE [args]'
  target, sys.argv = sys.argv[2], [sys.argv[2]] + sys.argv[3:]
  runpy.run_module(target, run_name='__main__', alter_sys=True)
