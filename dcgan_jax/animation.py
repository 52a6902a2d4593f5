"""Animated GIFs of image grids (numpy and PIL only; nothing here needs JAX).

Used for the latent-space walks of ``dcgan_jax.sample --interpolate`` and for the training
progress animation ``<workdir>/samples/progress.gif`` made from the ``samples/step_*.png`` grids
at the end of a run.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from typing import Sequence

import numpy as np
from PIL import Image

from dcgan_jax import json_files
from dcgan_jax import write_errors

PROGRESS_GIF = 'progress.gif'
_STEP_PNG = re.compile(r'step_(\d+)\.png$')


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike,
             duration_ms: int | Sequence[int] = 200, loop: int = 0) -> None:
  """Writes uint8 frames as an animated GIF, atomically.

  Args:
    frames: uint8 images ``[H, W, C]`` (C in {1, 3}) of one shared size.
    path: The file to write; its directory is created if needed.
    duration_ms: Display time of each frame, or one per frame.
    loop: Number of repetitions; 0 loops forever.
  """
  if not frames:
    raise ValueError('A GIF needs at least one frame.')
  images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.gif', dir=directory)
  os.close(fd)
  try:
    # disposal=1 and no optimisation keep every frame a full picture, so PIL reports (and
    # viewers show) exactly one frame per input even where consecutive grids barely differ.
    with write_errors.naming(path):  # PIL's failed write or close names no file.
      images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:],
                     duration=duration_ms if isinstance(duration_ms, int) else list(duration_ms),
                     loop=loop, disposal=1, optimize=False)
    json_files.give_new_file_permissions(tmp)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def grid_step(path: str | os.PathLike) -> int | None:
  """The step of a ``step_XXXXXX.png`` grid, from its path; None for any other file."""
  match = _STEP_PNG.search(os.path.basename(os.fspath(path)))
  return int(match.group(1)) if match else None


def step_pngs(samples_dir: str | os.PathLike) -> list[str]:
  """The ``step_XXXXXX.png`` files of a samples directory, in step order."""
  paths = glob.glob(os.path.join(os.fspath(samples_dir), 'step_*.png'))
  numbered = [(step, p) for p in paths if (step := grid_step(p)) is not None]
  return [p for _, p in sorted(numbered)]


def write_progress_gif(samples_dir: str | os.PathLike, duration_ms: int = 300,
                       last_step: int | None = None) -> str | None:
  """Animates the sample grids of a run: ``<samples_dir>/progress.gif``, one frame per step.

  Args:
    samples_dir: A run's ``samples`` directory holding ``step_XXXXXX.png`` grids.
    duration_ms: Display time of each frame (the last one is held three times as long).
    last_step: The run's final step: a grid of a later step (an earlier, longer run's, which
      no resume or fresh start set aside) is no frame of it. None: every grid.

  Returns:
    The GIF's path, or None when there is no grid to animate.
  """
  paths = [p for p in step_pngs(samples_dir) if last_step is None or grid_step(p) <= last_step]
  if not paths:
    return None
  frames = []
  for path in paths:
    with Image.open(path) as image:
      frames.append(np.asarray(image.convert('RGB')))
  # Grids of one run share a size; should a run have changed num_sample_images on resume,
  # keep the frames that match the final grid rather than failing at the end of training.
  frames = [f for f in frames if f.shape == frames[-1].shape]
  # Hold the final samples longer before looping (a longer duration, not repeated frames, which
  # PIL would merge anyway).
  durations = [duration_ms] * (len(frames) - 1) + [3 * duration_ms]
  out = os.path.join(os.fspath(samples_dir), PROGRESS_GIF)
  save_gif(frames, out, duration_ms=durations)
  return out
