r"""Samples from a trained run: an image grid, or walks through the latent space.

  python -m dcgan_jax.sample --workdir=/tmp/dcgan_digits --num=64 --out=grid.png \
      [--seed=0] [--ema|--noema] [--step=N] [--label=K] [--truncation=T]
  python -m dcgan_jax.sample --workdir=/tmp/dcgan_digits --interpolate --rows=4 --steps=8 \
      --out=walk.png [--gif_out=walk.gif] [--bounce|--nobounce]
  python -m dcgan_jax.sample --workdir=/tmp/dcgan_digits --num=50000 --out_dir=samples/
  python -m dcgan_jax.sample --workdir=/tmp/dcgan_faces --num=64 --seed=0 \
      --arithmetic="3,17,22 - 5,9,40 + 11,30,61" --out=arithmetic.png

``--out_dir`` writes ``--num`` samples as separate PNG files (``000000.png``, ...) into a new or
empty folder, for tools that score folders of images (``python -m dcgan_jax.fid``, pytorch-fid,
clean-fid, torch-fidelity). The latents are those of a grid with the same ``--num`` and
``--seed``.

The model is rebuilt from the config saved with the checkpoint, and the newest readable
checkpoint is used unless --step names one; a live training run may keep using the workdir.

A class-conditional run (``num_classes > 0``) draws the classes in turn (0, 1, ..., 0, 1, ...;
a grid then has one column per class, up to 16 classes) or, with ``--label=K``, class K only
(K is a number, or a name where the run saved its classes' names in ``classes.json``: a folder's
class folders, a tfds dataset with named classes);
each latent walk of ``--interpolate`` stays within one class (row ``r`` draws class
``r mod num_classes``, or K).

``--truncation=T`` (> 0) draws every latent coordinate from the standard normal truncated to
``[-T, T]`` (the "truncation trick" of BigGAN, Brock et al. 2019): smaller T trades variety for
typical-looking samples. The default, 0, draws the untruncated normal the generator was
trained on (and that FID is measured with).

``--interpolate`` draws ``rows`` pairs of random latents and walks from the first of each pair
to the second in ``steps`` points along the great circle between them (spherical interpolation,
"slerp": Gaussian latents concentrate near a sphere, and a straight line between two of them
passes through the unlikely low-norm interior). It writes

* ``--out``: a PNG grid, one walk per row, one step per column;
* ``--gif_out`` (default: ``--out`` with a .gif suffix): an animation whose frame ``t`` is the
  grid of every walk's image at step ``t``. With ``--bounce`` (default) the animation runs
  forward then back (``2 * steps - 2`` frames) so that its loop has no jump; with
  ``--nobounce`` it has ``steps`` frames and jumps back to the start.

``--arithmetic`` is the vector arithmetic of the DCGAN paper (Radford et al. 2016, §6.3:
"smiling woman - neutral woman + neutral man = smiling man"). Draw a grid first; pick a few
samples that show each concept by their index in it (row by row from 0, the grid of the same
``--num``, ``--seed`` and ``--truncation``); then ``--arithmetic`` with the same flags averages
the latents of each comma-separated group (one sample's latent is too noisy a concept, the
paper found three enough) and adds and subtracts the averages as written. It writes one row per
group: its samples, then the image of their mean latent (last column); and a last row: the
result's image, then variations of it with uniform noise in ``[-N, N]`` added to its latent
(``--arithmetic_noise``, the paper's 0.25). A class-conditional run needs ``--label=K``: every
image is then drawn as class K, as in the grid of ``--label=K``.

Mistakes (no checkpoint, a bad --num, ...) print one sentence on stderr and exit with status 2.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcgan_jax import animation
from dcgan_jax import checkpointing
from dcgan_jax import class_names
from dcgan_jax import cli_logging
from dcgan_jax import command_line
from dcgan_jax import generation
from dcgan_jax import models
from dcgan_jax import sample_grid
from dcgan_jax import write_errors
from dcgan_jax.errors import UserError, exit_with_user_error

MAX_NUM = 4096  # Images per grid; more make an unreadable picture and a slow PNG.
MAX_FILES = 1_000_000  # Images per --out_dir.
GRID_PADDING = 2  # Pixels between and around the images of every grid written here.
_CHUNK = 256  # Images per device per generator call (bounds memory for large --num).
_FILE_CHUNK = 4096  # Images generated before they are written, with --out_dir.


def check_truncation(truncation: float) -> None:
  """Raises a UserError unless ``truncation`` is 0 (off) or a positive, finite bound."""
  if not np.isfinite(truncation) or truncation < 0:
    raise UserError(f'--truncation must be 0 (off) or a positive bound such as 0.7 or 1.0 '
                    f'(got {truncation}).')


def latents(key: jax.Array, shape: tuple[int, ...], truncation: float = 0.0) -> jax.Array:
  """Standard normal latents ``float32 shape``; with ``truncation`` > 0, each coordinate is drawn
  from the normal truncated to ``[-truncation, truncation]``.

  Raises:
    UserError: a negative or non-finite ``truncation``.
  """
  check_truncation(truncation)
  if truncation == 0:
    return jax.random.normal(key, shape, jnp.float32)
  return jax.random.truncated_normal(key, -truncation, truncation, shape, jnp.float32)


def slerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
  """Spherical interpolation between latent vectors.

  Args:
    a: Start points ``[N, D]``.
    b: End points ``[N, D]``.
    t: Positions ``[T]`` in [0, 1] (0 gives ``a``, 1 gives ``b``).

  Returns:
    ``[N, T, D]``: the points at angle fraction ``t`` along the great circle from ``a`` to ``b``,
    with norms interpolated linearly between theirs. Where ``a`` and ``b`` point the same way
    (angle 0) this is linear interpolation. Opposite points (``b = -c * a``, angle pi, e.g. a
    walk from ``z`` to ``-z``) lie on many great circles: the walk takes the one through the
    coordinate axis closest to perpendicular to ``a`` (a straight line would pass through the
    origin, a latent the generator never saw).
  """
  a_norm = jnp.linalg.norm(a, axis=-1, keepdims=True)
  b_norm = jnp.linalg.norm(b, axis=-1, keepdims=True)
  a_unit, b_unit = a / a_norm, b / b_norm
  cos_omega = jnp.sum(a_unit * b_unit, axis=-1, keepdims=True)
  # The part of b's direction perpendicular to a's. Its length is sin(omega), and the angle from
  # atan2 stays accurate near 0 and pi, where arccos of the cosine is not (near pi the textbook
  # sin((1 - t) omega) / sin(omega) weights then blew up to thousands).
  b_across = b_unit - cos_omega * a_unit
  sin_omega = jnp.linalg.norm(b_across, axis=-1, keepdims=True)
  omega = jnp.arctan2(sin_omega, cos_omega)
  # Where b's direction is a's or its opposite, any perpendicular serves: the coordinate axis
  # least aligned with a, made perpendicular to it.
  axis = jax.nn.one_hot(jnp.argmin(jnp.abs(a_unit), axis=-1), a.shape[-1], dtype=a.dtype)
  axis_across = axis - jnp.sum(axis * a_unit, axis=-1, keepdims=True) * a_unit
  defined = sin_omega > 1e-6
  across = jnp.where(defined, b_across / jnp.where(defined, sin_omega, 1.0),
                     axis_across / jnp.linalg.norm(axis_across, axis=-1, keepdims=True))
  angle = omega[:, None, :] * t[None, :, None]
  unit = jnp.cos(angle) * a_unit[:, None, :] + jnp.sin(angle) * across[:, None, :]
  # Unit up to rounding, which the division by a small sin(omega) above magnifies.
  unit = unit / jnp.linalg.norm(unit, axis=-1, keepdims=True)
  norms = (1.0 - t[None, :, None]) * a_norm[:, None, :] + t[None, :, None] * b_norm[:, None, :]
  return norms * unit


# Fields load_generator needs to rebuild a run's models (the rest have defaults there).
_MODEL_FIELDS = ('image_size', 'channels', 'latent_dim', 'generator_width',
                 'discriminator_width')


def run_model_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a run's checkpoints were saved with, checked to hold its models' fields.

  Raises:
    UserError: the workdir does not exist or holds no run config, or the config lacks the
      models' fields (checkpoints of a custom loop, not of the training program).
  """
  config = ml_collections.ConfigDict(checkpointing.restore_config(workdir))
  missing = [name for name in _MODEL_FIELDS if name not in config]
  if missing:
    raise UserError(
        f'The checkpoints in {workdir} were saved with a config that lacks '
        f'{", ".join(missing)}: not a run of the training program (a custom loop?), whose '
        'models cannot be rebuilt from it. Restore such a state with '
        'dcgan_jax.checkpointing.Checkpointer(workdir).restore(target) and your own modules.')
  return config


def load_generator(workdir: str | os.PathLike, step: int | None = None,
                   use_ema: bool = True) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict,
                                                  int]:
  """Restores a run's generator for sampling.

  Args:
    workdir: A training run's directory.
    step: The checkpoint to use; None for the newest readable one.
    use_ema: Use the EMA weights when the run kept them (else G's own).

  Returns:
    ``(generator, variables, config, step)``: the flax module (``train=False`` sampling uses the
    running BatchNorm statistics), its variables, the run's config and the restored step.

  Raises:
    UserError: the workdir does not exist, holds no (readable) checkpoint, or has no such step,
      or its checkpoints were not saved by the training program (no run config).
  """
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top  # Builds the state layout.

  config = run_model_config(workdir)
  # The optimizer layout does not depend on the run length, so any num_train_steps restores.
  target = {'gan': train.create_train_state(config, jax.random.key(0), num_train_steps=1),
            'train_key': jax.random.key_data(jax.random.key(0))}
  with checkpointing.Checkpointer(workdir, read_only=True) as checkpointer:
    if checkpointer.latest_step() is None:
      raise UserError(f'The workdir {workdir} has no checkpoint yet; train first or pass the '
                      '--workdir of a run that saved one.')
    restored, _, restored_step = checkpointer.restore(target, step=step)
  variables = restored['gan'].sampling_variables(use_ema=use_ema)
  if restored['gan'].ema is None:
    weights = "the generator's own weights; the run kept no EMA"
  else:
    weights = 'EMA weights' if use_ema else "the generator's own weights, not the EMA"
  # Which checkpoint answered matters: the newest may be unreadable (the previous one is then
  # used) or a live run may have saved a newer one since the command started.
  logging.info('Sampling the checkpoint of step %d in %s (%s).', restored_step, workdir, weights)
  return models.generator_from_config(config), variables, config, int(restored_step)


def _local_generator(generator: Any) -> generation.LocalGenerator:
  """One data-parallel sampler per generator (modules are hashable by their fields), so repeated
  :func:`generate` calls, as in a notebook, compile once (each call compiled anew: ~0.6 s for
  a 32x32 generator on CPU, more on an accelerator)."""
  try:
    return _cached_local_generator(generator)
  except TypeError:  # A module of one's own with an unhashable field: not cached.
    return generation.LocalGenerator(generator)


_cached_local_generator = functools.lru_cache(maxsize=8)(generation.LocalGenerator)


def generate(generator: Any, variables: dict[str, Any], z: jax.Array,
             labels: np.ndarray | None = None) -> np.ndarray:
  """Images ``float32 [N, H, W, C]`` for latents ``[N, latent_dim]`` (in chunks, train=False);
  a class-conditional generator also takes the classes ``[N]``.

  The latents are split over every local device, ``variables`` replicated there
  (:class:`dcgan_jax.generation.LocalGenerator`); the images are the ones one device would make.

  Raises:
    UserError: latents that are not floats of shape ``[N, latent_dim]`` (integer ones were
      used as they were: a handful of distinct values instead of Gaussian draws).
  """
  latent_dim = getattr(generator, 'latent_dim', None)
  dtype = getattr(z, 'dtype', None)
  if (dtype is None or not jnp.issubdtype(dtype, jnp.floating) or np.ndim(z) != 2
      or (latent_dim is not None and np.shape(z)[1] != latent_dim)):
    raise UserError(f'z must be floating latents of shape [N, {latent_dim or "latent_dim"}] '
                    f'(e.g. from sample.latents), got {dtype} {tuple(np.shape(z))}.')
  if np.shape(z)[0] == 0:
    raise UserError('z holds no latents (shape [0, ...]); give at least one.')
  num_classes = int(getattr(generator, 'num_classes', 0) or 0)
  if labels is not None:  # (generate runs eagerly: labels are concrete.)
    values = np.asarray(labels)
    # A class outside the model's one-hot range is all zeros there: an image of no class.
    if (values.shape != (np.shape(z)[0],) or not np.issubdtype(values.dtype, np.integer)
        or (num_classes and values.size and not 0 <= values.min() <= values.max() < num_classes)):
      raise UserError(f'labels must be integer classes [{np.shape(z)[0]}] in '
                      f'0..{num_classes - 1 if num_classes else "num_classes - 1"}, one per '
                      f'latent; got {values.dtype} {values.shape}'
                      + (f' with values {values.min()}..{values.max()}' if values.size
                         and np.issubdtype(values.dtype, np.number) else '') + '.')
  local = _local_generator(generator)
  return local(variables, z, labels, chunk_size=_CHUNK * local.num_devices)


def sample_labels(config: ml_collections.ConfigDict, num: int,
                  label: int | None = None) -> np.ndarray | None:
  """The classes of ``num`` samples of the run: None when unconditional; else class ``label``
  for all, or with ``label`` None the classes in turn (:func:`models.cycled_labels`).

  Raises:
    UserError: a ``label`` for an unconditional run, or one outside ``[0, num_classes)``.
  """
  num_classes = int(config.get('num_classes', 0) or 0)
  models.check_label(label, num_classes)
  if label is None:
    return models.cycled_labels(num, num_classes)
  return np.full((num,), label, np.int32)


def _value_range(config: ml_collections.ConfigDict) -> tuple[float, float]:
  return models.output_range(config.output_activation)


def sample_grid_png(workdir: str, out: str, num: int = 64, seed: int = 0, use_ema: bool = True,
                    step: int | None = None, label: int | None = None,
                    truncation: float = 0.0) -> np.ndarray:
  """Writes a grid of ``num`` samples (``ceil(sqrt(num))`` columns) and returns it.

  A class-conditional run's grid shows class ``label``, or with None the classes in turn, one
  column each (up to 16 classes; see :func:`sample_labels`). ``truncation``: see
  :func:`latents`.

  Returns:
    The uint8 grid ``[H', W', C]`` written to ``out`` (see :func:`sample_grid.make_grid`).

  Raises:
    UserError: a bad ``num``, or see :func:`load_generator`.
  """
  if not 1 <= num <= MAX_NUM:
    more = (f'; --out_dir writes up to {MAX_FILES:,} separate files' if num > MAX_NUM else '')
    raise UserError(f'--num must be between 1 and {MAX_NUM} for a grid (got {num}){more}.')
  check_truncation(truncation)  # Before the restore (seconds).
  generator, variables, config, _ = load_generator(workdir, step, use_ema)
  labels = sample_labels(config, num, label)
  z = latents(jax.random.key(seed), (num, int(config.latent_dim)), truncation)
  images = generate(generator, variables, z, labels)
  columns = None
  if label is None:
    columns = sample_grid.columns_for_classes(int(config.get('num_classes', 0) or 0))
  return sample_grid.save_grid(images, out, num_columns=columns, padding=GRID_PADDING,
                               value_range=_value_range(config))


def sample_files(workdir: str, out_dir: str, num: int, seed: int = 0, use_ema: bool = True,
                 step: int | None = None, label: int | None = None,
                 truncation: float = 0.0) -> list[str]:
  """Writes ``num`` samples as PNG files ``<out_dir>/000000.png``, ... and returns their paths.

  Images are generated and written a chunk at a time, so any ``num`` fits in memory. The latents
  (and a conditional run's classes) are the ones :func:`sample_grid_png` draws for the same
  ``num``, ``seed``, ``label`` and ``truncation``.

  Raises:
    UserError: a bad ``num``, an ``out_dir`` that is a file or holds anything already (nothing
      is overwritten), or see :func:`load_generator`.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if not 1 <= num <= MAX_FILES:
    raise UserError(f'--num must be between 1 and {MAX_FILES:,} with --out_dir (got {num}).')
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise UserError(f'--out_dir {out_dir} is a file; give a new or empty folder.')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise UserError(f'--out_dir {out_dir} is not empty; give a new or empty folder (nothing '
                    'is overwritten).')
  check_truncation(truncation)  # Before anything is read or made.
  generator, variables, config, _ = load_generator(workdir, step, use_ema)
  labels = sample_labels(config, num, label)  # Checked before the folder is made.
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f'Cannot create --out_dir {out_dir} ({e.strerror}).') from e
  z = latents(jax.random.key(seed), (num, int(config.latent_dim)), truncation)
  value_range = _value_range(config)
  digits = max(6, len(str(num - 1)))
  paths = []
  for start in range(0, num, _FILE_CHUNK):
    chunk_labels = None if labels is None else labels[start:start + _FILE_CHUNK]
    images = sample_grid.to_uint8(
        generate(generator, variables, z[start:start + _FILE_CHUNK], chunk_labels), value_range)
    for offset, image in enumerate(images):
      path = os.path.join(out_dir, f'{start + offset:0{digits}d}.png')
      # Whole files only, even when stopped (Ctrl-C, a full disk): a half-written PNG would
      # be scored, or crash the FID tool, and a rerun refuses the non-empty folder.
      tmp_path = os.path.join(out_dir, f'.{start + offset:0{digits}d}.png.tmp')
      try:
        with write_errors.naming(path):  # PIL's failed write or close names no file.
          Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
              tmp_path, format='PNG')
        os.replace(tmp_path, path)
      except BaseException:
        with contextlib.suppress(OSError):
          os.remove(tmp_path)
        raise
      paths.append(path)
  return paths


def interpolation(workdir: str, out: str, gif_out: str, rows: int = 4, steps: int = 8,
                  seed: int = 0, use_ema: bool = True, step: int | None = None,
                  bounce: bool = True, frame_ms: int = 150, label: int | None = None,
                  truncation: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
  """Writes latent walks as a PNG grid (rows = walks, columns = steps) and an animated GIF.

  Args:
    workdir: A training run's directory.
    out: The PNG to write.
    gif_out: The GIF to write.
    rows: Number of walks, each between two random latents.
    steps: Points per walk, both ends included (>= 2).
    seed: Seed of the random end points.
    use_ema: See :func:`load_generator`.
    step: See :func:`load_generator`.
    bounce: Animate forward then backward (``2 * steps - 2`` frames) instead of ``steps``.
    frame_ms: Display time of each GIF frame.
    label: A class-conditional run's class for every walk; None: row ``r`` walks within class
      ``r mod num_classes``.
    truncation: Draw the walks' end points truncated (see :func:`latents`).

  Returns:
    ``(grid, frames)``: the uint8 PNG grid and the GIF's uint8 frames.

  Raises:
    UserError: ``rows`` or ``steps`` out of range, or see :func:`load_generator`.
  """
  if not 1 <= rows <= MAX_NUM:
    raise UserError(f'--rows must be between 1 and {MAX_NUM} (got {rows}).')
  if not 2 <= steps <= 256:
    raise UserError(f'--steps must be between 2 and 256 (got {steps}).')
  if rows * steps > MAX_NUM:
    raise UserError(f'--rows times --steps must be at most {MAX_NUM} (got {rows * steps}).')
  check_truncation(truncation)
  generator, variables, config, _ = load_generator(workdir, step, use_ema)
  row_labels = sample_labels(config, rows, label)
  key_a, key_b = jax.random.split(jax.random.key(seed))
  shape = (rows, int(config.latent_dim))
  z = slerp(latents(key_a, shape, truncation), latents(key_b, shape, truncation),
            jnp.linspace(0.0, 1.0, steps))  # [rows, steps, latent]
  labels = None if row_labels is None else np.repeat(row_labels, steps)
  images = generate(generator, variables, z.reshape((rows * steps, -1)), labels)
  value_range = _value_range(config)
  grid = sample_grid.save_grid(images, out, num_columns=steps, padding=GRID_PADDING,
                               value_range=value_range)
  by_step = images.reshape((rows, steps) + images.shape[1:]).swapaxes(0, 1)  # [steps, rows, ...]
  order = list(range(steps)) + (list(range(steps - 2, 0, -1)) if bounce else [])
  frames = [sample_grid.make_grid(by_step[t], padding=GRID_PADDING, value_range=value_range)
            for t in order]
  animation.save_gif(frames, gif_out, duration_ms=frame_ms)
  return grid, frames


ARITHMETIC_NOISE = 0.25  # The DCGAN paper's scale of the noise around an arithmetic result.
_ARITHMETIC_SYNTAX = ("groups of sample indices joined by + and -, such as '3,17,22 - 5,9,40 + "
                      "11,30,61'")


def parse_arithmetic(expression: str, num: int) -> list[tuple[int, list[int]]]:
  """Parses a latent-arithmetic expression into ``[(sign, indices), ...]``.

  Args:
    expression: Groups of comma-separated sample indices joined by ``+`` and ``-`` (spaces are
      ignored; the first group may carry a sign), e.g. ``'3,17,22 - 5,9,40 + 11,30,61'``.
    num: Samples in the grid the indices point into; each index must be in ``[0, num)``.

  Returns:
    One ``(sign, indices)`` pair per group, sign +1 or -1, in the order written.

  Raises:
    UserError: an empty group, a token that is not an index, or an index outside the grid.
  """
  if re.search(r'\d\s+\d', expression):  # '1 2' would read as 12.
    raise UserError(f'--arithmetic {expression!r} has a space between two digits; separate the '
                    f'indices of a group with commas: {_ARITHMETIC_SYNTAX}.')
  text = re.sub(r'\s+', '', expression)
  if not text:
    raise UserError(f'--arithmetic is empty; give {_ARITHMETIC_SYNTAX}.')
  pieces = re.split(r'([+-])', text)  # [group, sign, group, sign, group, ...]
  signs = [1] + [1 if op == '+' else -1 for op in pieces[1::2]]
  groups = pieces[::2]
  if groups[0] == '' and len(groups) > 1:  # A leading sign applies to the first group.
    signs, groups = [signs[1]] + signs[2:], groups[1:]
  terms = []
  for sign, group in zip(signs, groups):
    indices = group.split(',')
    if not group or not all(i.isascii() and i.isdigit() for i in indices):
      raise UserError(f'--arithmetic {expression!r} has a group {group!r} that is not a list of '
                      f'sample indices; give {_ARITHMETIC_SYNTAX}.')
    values = [int(i) for i in indices]
    outside = [v for v in values if v >= num]
    if outside:
      raise UserError(f'--arithmetic index {outside[0]} is outside the grid of --num={num} '
                      f'samples (indices 0..{num - 1}, row by row); use the --num, --seed and '
                      '--truncation of the grid you picked them from.')
    terms.append((sign, values))
  return terms


def latent_arithmetic(workdir: str, out: str, expression: str, num: int = 64, seed: int = 0,
                      use_ema: bool = True, step: int | None = None, label: int | None = None,
                      truncation: float = 0.0,
                      noise: float = ARITHMETIC_NOISE) -> tuple[np.ndarray, jax.Array]:
  """Writes the DCGAN paper's latent vector arithmetic as a PNG grid (see the module docstring).

  Args:
    workdir: A training run's directory.
    out: The PNG to write.
    expression: Groups of sample indices joined by ``+`` and ``-`` (:func:`parse_arithmetic`).
    num: Samples of the grid the indices point into (its latents are drawn as
      :func:`sample_grid_png` draws them for ``num``, ``seed`` and ``truncation``).
    seed: That grid's seed.
    use_ema: See :func:`load_generator`.
    step: See :func:`load_generator`.
    label: The class of every image; required for a class-conditional run, refused otherwise.
    truncation: That grid's truncation (see :func:`latents`).
    noise: Half-width of the uniform noise added to the result's latent for its variations.

  Returns:
    ``(grid, result)``: the uint8 grid written to ``out`` (a row per group with its samples
    and, in the last column, its mean latent's image; a last row with the result's image and
    its variations) and the result's latent ``[latent_dim]``.

  Raises:
    UserError: a bad expression, ``num`` or ``noise``, a conditional run without ``label``, or
      see :func:`load_generator`.
  """
  if not 1 <= num <= MAX_NUM:
    raise UserError(f'--num must be between 1 and {MAX_NUM} (got {num}).')
  terms = parse_arithmetic(expression, num)
  if not np.isfinite(noise) or noise < 0:
    raise UserError(f'--arithmetic_noise must be >= 0 (the paper: {ARITHMETIC_NOISE}; got '
                    f'{noise}).')
  check_truncation(truncation)  # Everything checked before the restore (seconds).
  generator, variables, config, _ = load_generator(workdir, step, use_ema)
  if int(config.get('num_classes', 0) or 0) and label is None:
    raise UserError('--arithmetic in a class-conditional run needs --label=K: every image is '
                    'drawn as class K (pick the indices from the grid of --label=K).')
  z = latents(jax.random.key(seed), (num, int(config.latent_dim)), truncation)
  columns = max(len(indices) for _, indices in terms) + 1
  cells, result = [], jnp.zeros_like(z[0])
  for sign, indices in terms:
    mean = jnp.mean(z[jnp.asarray(indices)], axis=0)
    result = result + sign * mean
    blanks = [None] * (columns - 1 - len(indices))
    cells += [z[i] for i in indices] + blanks + [mean]
  # Variations: the result moved within a cube of half-width `noise` (a stream apart from the
  # grid's latents).
  offsets = jax.random.uniform(jax.random.fold_in(jax.random.key(seed), 1),
                               (columns - 1, z.shape[1]), minval=-noise, maxval=noise)
  cells += [result] + list(result + offsets)
  drawn = [i for i, cell in enumerate(cells) if cell is not None]
  labels = sample_labels(config, len(drawn), label)
  images = generate(generator, variables, jnp.stack([cells[i] for i in drawn]), labels)
  value_range = _value_range(config)
  grid_images = np.full((len(cells),) + images.shape[1:], value_range[0], np.float32)
  grid_images[drawn] = images  # Blank cells stay at the bottom of the range: black, as padding.
  grid = sample_grid.save_grid(grid_images, out, num_columns=columns, padding=GRID_PADDING,
                               value_range=value_range)
  return grid, result


def _define_flags(flag_values):
  from absl import flags  # pylint: disable=g-import-not-at-top

  def define(kind, name, default, help_text):
    getattr(flags, f'DEFINE_{kind}')(name, default, help_text, flag_values=flag_values)

  define('string', 'workdir', None, 'A training run\'s directory (its checkpoints are used).')
  define('string', 'out', 'samples.png', 'The PNG to write.')
  define('integer', 'num', 64, f'Images in the grid (1..{MAX_NUM}), or files with --out_dir '
         f'(1..{MAX_FILES:,}).')
  define('string', 'out_dir', '', 'Write --num samples as separate PNG files into this new or '
         'empty folder instead of a grid (e.g. for FID tools that read folders).')
  define('integer', 'seed', 0, 'Seed of the latent vectors.')
  define('bool', 'ema', True, 'Sample from the EMA weights when the run kept them.')
  define('integer', 'step', None, 'Checkpoint step to use; default: the newest.')
  define('bool', 'interpolate', False, 'Write latent-space walks (PNG grid and GIF) instead.')
  define('integer', 'rows', 4, 'With --interpolate: number of walks (grid rows).')
  define('integer', 'steps', 8, 'With --interpolate: points per walk, ends included (grid '
         'columns, GIF frames one way).')
  define('string', 'gif_out', '', 'With --interpolate: the GIF to write; default: --out with a '
         '.gif suffix.')
  define('bool', 'library_logs', False, 'Also print the logs of orbax and JAX start-up (hidden by '
         'default; warnings and errors show).')
  define('float', 'truncation', 0.0, 'Draw latents from the normal truncated to [-T, T] (the '
         'truncation trick; e.g. 0.7); 0 (default) draws the plain normal.')
  define('string', 'label', '', 'Class-conditional runs: draw only this class, by number or '
         "by name (the run's classes.json); default: the classes in turn (one grid column "
         'each).')
  define('string', 'arithmetic', '', 'Latent vector arithmetic of the DCGAN paper: groups of '
         'indices into the grid of the same --num/--seed/--truncation, joined by + and -, e.g. '
         '"3,17,22 - 5,9,40 + 11,30,61"; each group is averaged.')
  define('float', 'arithmetic_noise', ARITHMETIC_NOISE, 'With --arithmetic: half-width of the '
         'uniform noise added to the result for its variations.')
  define('bool', 'bounce', True, 'With --interpolate: the GIF walks forward then back '
         '(2*steps-2 frames) so it loops smoothly; --nobounce: steps frames.')


def main(argv: list[str] | None = None) -> None:
  """Command line (see the module docstring); mistakes exit 2 with one line on stderr."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag_values = flags.FlagValues()
  _define_flags(flag_values)

  fail = exit_with_user_error
  f = command_line.parse_workdir_flags(flag_values, argv, usage=__doc__)
  cli_logging.quiet_library_logs(not f.library_logs)
  logging.set_verbosity(logging.INFO)  # Says which checkpoint and weights were sampled.
  try:
    _check_flags_apply(flag_values)
    label = class_names.parse_label(f.label, f.workdir)
    if f.interpolate and f.out_dir:
      raise UserError('--out_dir writes separate samples; it cannot be combined with '
                      '--interpolate (which writes --out and --gif_out).')
    if f.arithmetic and (f.interpolate or f.out_dir):
      raise UserError('--arithmetic writes one grid to --out; it cannot be combined with '
                      '--interpolate or --out_dir.')
    gif_out = f.gif_out or os.path.splitext(f.out)[0] + '.gif'
    replaced = ''
    if not f.out_dir:  # Checked before the generator is restored and run.
      _check_output_file(f.out, '--out')
      if f.interpolate:
        _check_output_file(gif_out, '--gif_out')
      # Said, not refused: writing the same name again is how a grid is refreshed.
      existing = [p for p in [f.out] + ([gif_out] if f.interpolate else []) if os.path.isfile(p)]
      if existing:
        replaced = f' (replacing the earlier {" and ".join(existing)})'
    if f.arithmetic:
      latent_arithmetic(f.workdir, f.out, f.arithmetic, num=f.num, seed=f.seed, use_ema=f.ema,
                        step=f.step, label=label, truncation=f.truncation,
                        noise=f.arithmetic_noise)
      print(f"Wrote {f.out}{replaced}: a row per group (its samples, then their mean latent's "
            'image), then the result and its variations.')
    elif f.interpolate:
      interpolation(f.workdir, f.out, gif_out, rows=f.rows, steps=f.steps, seed=f.seed,
                    use_ema=f.ema, step=f.step, bounce=f.bounce, label=label,
                    truncation=f.truncation)
      print(f'Wrote {f.out} and {gif_out}{replaced}.')
    elif f.out_dir:
      paths = sample_files(f.workdir, f.out_dir, num=f.num, seed=f.seed, use_ema=f.ema,
                           step=f.step, label=label, truncation=f.truncation)
      print(f'Wrote {len(paths)} PNG files to {f.out_dir}.')
    else:
      sample_grid_png(f.workdir, f.out, num=f.num, seed=f.seed, use_ema=f.ema, step=f.step,
                      label=label, truncation=f.truncation)
      print(f'Wrote {f.out}{replaced}.')
  except UserError as e:
    fail(str(e))
  except KeyboardInterrupt:
    # Every file already written is whole (sample_files writes each atomically).
    command_line.exit_interrupted()
  except OSError as e:  # E.g. a full disk while writing.
    advice = ('free some disk space (or raise the quota or file-size limit)'
              if e.errno in write_errors.NO_SPACE else 'give a writable path')
    fail(f'Cannot write {e.filename or "the output"} ({e.strerror or e}); {advice}.')


# Flags that only one way of sampling reads: given for another, they used to do nothing without
# a word (--steps=150 for --step=150 sampled the newest checkpoint).
_INTERPOLATE_ONLY = ('rows', 'steps', 'gif_out', 'bounce')


def _check_flags_apply(flag_values) -> None:
  """Raises a UserError for a flag given on the command line that this way of sampling ignores."""
  given = lambda name: bool(flag_values[name].present)
  if not flag_values.interpolate:
    for name in _INTERPOLATE_ONLY:
      if given(name):
        hint = ' (to sample the checkpoint of a step, --step=N)' if name == 'steps' else ''
        raise UserError(f'--{name} applies to --interpolate only, which this command does not '
                        f'ask for{hint}; add --interpolate or leave --{name} out.')
  elif given('num'):
    raise UserError('--num does not apply to --interpolate, which draws --rows walks of '
                    '--steps points; leave --num out.')
  if flag_values.out_dir and given('out'):
    raise UserError('--out names the grid file, and --out_dir writes separate files instead; '
                    'give one of them.')
  if given('arithmetic_noise') and not flag_values.arithmetic:
    raise UserError('--arithmetic_noise applies to --arithmetic only; add --arithmetic or leave '
                    '--arithmetic_noise out.')


def _check_output_file(path: str, flag: str) -> None:
  """Raises a UserError when ``path`` cannot become the file ``flag`` names: empty, without the
  format's extension (.png for --out, .gif for --gif_out), a directory or another non-regular
  file (a device or pipe would be replaced, not written into), or in a folder that is missing
  or not writable."""
  extension = '.png' if flag == '--out' else '.gif'
  if not path or path.endswith((os.sep, '/')):
    raise UserError(f'{flag} {path!r} names no file; give a file name such as '
                    f"{'samples.png' if flag == '--out' else 'walk.gif'}.")
  if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
    raise UserError(f'{flag} {path} is not a regular file (a device or pipe); give a file '
                    'name.')
  if not os.path.isdir(path) and not path.lower().endswith(extension):
    raise UserError(f'{flag} {path}: the file is written as {extension[1:].upper()}; give a '
                    f'name ending in {extension}.')
  if os.path.isdir(path):
    raise UserError(f'{flag} {path} is a directory; give a file name such as '
                    f"{os.path.join(path, 'samples.png' if flag == '--out' else 'walk.gif')}.")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    # (The nearest existing path up from it: a file there was said not to exist.)
    above = folder
    while not os.path.exists(above) and os.path.dirname(above) != above:
      above = os.path.dirname(above)
    if not os.path.isdir(above):
      raise UserError(f'{flag} {path}: {above} is a file, not a folder; give a path in a '
                      'folder.')
    raise UserError(f'{flag} {path}: the folder {folder} does not exist; create it or give '
                    'another path.')
  if not os.access(folder, os.W_OK):
    raise UserError(f'{flag} {path}: the folder {folder} is not writable; give another path.')


if __name__ == '__main__':
  main()
